"""Training configuration, optimizer and the (sharded) train state."""
from __future__ import annotations

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from gensar_jax import parallel
from gensar_jax.config_schema import (Field, Section, at_least, between, boolean, fraction, one_of, positive,
                                      subset_of, whole, whole_at_least)
from gensar_jax.eval.metrics import TASKS, VALIDATION_METRICS
from gensar_jax.model.t5 import DROPOUT_RNGS, T5Config, init_params, param_logical_axes


SCHEDULES = ("cosine", "linear", "constant")
LOSS_NORMALIZERS = ("expected_tokens", "batch_tokens")

# The `train` section (reference code of GenSAR: HF Trainer settings), also `doc2query.train`.
TRAIN_SCHEMA = Section(dict(
    num_steps=Field(1000, whole()),   # <= 0: num_epochs decides (check_config)
    num_epochs=Field(200, whole_at_least(0)),   # used when num_steps <= 0 (reference: 200 epochs)
    batch_size=Field(256, at_least(1)),   # global batch (reference effective batch: 8192)
    seed=Field(2024, whole_at_least(0)),
    learning_rate=Field(1e-3, positive()),
    # "cosine" (linear warm-up, cosine to 0), "linear" or "constant" (after warm-up)
    schedule=Field("cosine", one_of(*SCHEDULES)),
    warmup_fraction=Field(0.01, between(0.0, 1.0)),   # warm-up steps = ceil(fraction * num_steps), as HF's warmup_ratio
    weight_decay=Field(1e-7, at_least(0.0)),   # AdamW, decoupled; not applied to layer-norm scales (as HF Trainer)
    adam_b1=Field(0.9, fraction(True, False)),
    adam_b2=Field(0.999, fraction(True, False)),
    adam_eps=Field(1e-8, positive()),
    max_grad_norm=Field(1.0, at_least(0.0)),
    label_smoothing=Field(0.0, fraction(True, False)),
    # The loss over this many slices of the target positions, each slice's logits recomputed in the backward
    # pass (`step.chunked_cross_entropy`): 1 = the whole [B, T, V] logits at once.
    loss_chunks=Field(1, at_least(1), unrecorded=1),
    # What the summed token losses of a step are divided by: "expected_tokens" (global batch x the mixture's
    # mean target tokens per example, measured once by the stage: every token weighs the same whatever batch
    # it lands in, so length bucketing leaves each task's share of the objective as random batches give it)
    # or "batch_tokens" (the step's own target tokens: a per-batch token mean).
    loss_normalizer=Field("expected_tokens", one_of(*LOSS_NORMALIZERS), unrecorded="batch_tokens"),
    bf16=Field(False, boolean()),   # bfloat16 compute (params and optimizer state stay float32)
    grad_accum_steps=Field(1, at_least(1)),   # micro-batches per step (the global batch is split row-strided)
    # Dropout mask generator (T5Config.dropout_rng): "hash" (`model.hash_dropout`: a counter hash of each
    # element's index, the masks fused attention draws too, several times cheaper than threefry on CPU) or
    # "threefry" (flax's nn.Dropout: jax.random.bernoulli). Same keep probability, other masks.
    dropout_rng=Field("hash", one_of(*DROPOUT_RNGS), unrecorded="threefry"),
    log_every=Field(50, at_least(1)),
    eval_every=Field(1000, at_least(0)),
    checkpoint_every=Field(1000, at_least(1)),
    keep_checkpoints=Field(3, at_least(1)),   # latest N kept ...
    keep_best=Field(1, whole_at_least(0)),   # ... plus the best N by `best_metric` (when an eval_fn reports it)
    # A name the trainer's validation reports (else no best checkpoint and no early stopping).
    best_metric=Field("val/ndcg5_mean", one_of(*VALIDATION_METRICS)),
    best_mode=Field("max", one_of("max", "min")),
    # Early stopping: stop once `best_metric` has not improved for this many evaluations in a row (0: never).
    # The learning-rate schedule still spans num_steps; the run keeps the best checkpoint.
    early_stopping_patience=Field(0, at_least(0), unrecorded=0),
    async_checkpointing=Field(True, boolean()),
    # Model selection: the mean validation NDCG@5 of these tasks.
    selection_tasks=Field(("rec", "search"), subset_of(*TASKS)),
))


def train_config() -> ml_collections.ConfigDict:
  """Defaults of the `train` section."""
  return TRAIN_SCHEMA.defaults()


@flax.struct.dataclass
class TrainState:
  """step: int32[]; params: model params; opt_state: optax state (mirrors params)."""
  step: jax.Array
  params: Any
  opt_state: Any


def warmup_steps(train_cfg: ml_collections.ConfigDict) -> int:
  return int(math.ceil(train_cfg.warmup_fraction * train_cfg.num_steps))


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to `learning_rate`, then cosine/linear decay to 0 at `num_steps` (or constant)."""
  total = int(train_cfg.num_steps)
  warm = min(warmup_steps(train_cfg), total)
  peak = float(train_cfg.learning_rate)
  if train_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warm, max(total, warm + 1), 0.0)
  if train_cfg.schedule == "linear":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warm, 1)),
                                 optax.linear_schedule(peak, 0.0, max(total - warm, 1))], [warm])
  if train_cfg.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warm, 1)), optax.constant_schedule(peak)],
                                [warm])
  raise ValueError(f"train.schedule: expected one of {SCHEDULES}, got {train_cfg.schedule!r}")


def _decay_mask(params) -> Any:
  """True for every parameter except layer-norm scales."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: k[-1] != "scale" for k in flat})


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW with the warm-up schedule."""
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.max_grad_norm) if train_cfg.max_grad_norm else optax.identity(),
      optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.adam_b1, b2=train_cfg.adam_b2,
                  eps=train_cfg.adam_eps, weight_decay=train_cfg.weight_decay, mask=_decay_mask))


def model_config_for_training(model_cfg: T5Config, train_cfg: ml_collections.ConfigDict) -> T5Config:
  return model_cfg.replace(dtype="bfloat16" if train_cfg.bf16 else model_cfg.dtype,
                           dropout_rng=str(train_cfg.get("dropout_rng", "threefry")))


def state_shardings(model_cfg: T5Config, optimizer: optax.GradientTransformation, mesh: Mesh, rules) -> TrainState:
  """`NamedSharding` for every leaf of the train state: params by their logical axes, optimizer moments
  like their params, counters replicated."""
  param_specs = param_logical_axes(model_cfg)
  param_shardings = parallel.logical_to_shardings(param_specs, mesh, rules)
  abstract_params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  replicated = parallel.replicated(mesh)
  opt_shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt, param_shardings,
                                        transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)


def create_train_state(model_cfg: T5Config, optimizer: optax.GradientTransformation, mesh: Mesh, rules,
                       rng: jax.Array, params: Any = None) -> tuple[TrainState, TrainState]:
  """A fresh (or given-params) train state laid out on `mesh`; returns (state, its shardings).

  Fresh parameters are initialised directly in their sharded layout (no full copy on one device).
  """
  shardings = state_shardings(model_cfg, optimizer, mesh, rules)

  def build(rng, params):
    if params is None:
      params = init_params(model_cfg, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  with parallel.mesh_and_rules(mesh, rules):
    if params is None:
      state = jax.jit(lambda r: build(r, None), out_shardings=shardings)(rng)
    else:
      params = jax.device_put(jax.tree_util.tree_map(jnp.asarray, nn.meta.unbox(params)), shardings.params)
      state = jax.jit(lambda p: build(None, p), in_shardings=(shardings.params,), out_shardings=shardings)(params)
  return state, shardings
