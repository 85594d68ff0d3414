"""The jitted, sharded training step: weighted token cross-entropy, clipping, AdamW.

Batch (from the grain pipeline): int32 `encoder_input_tokens[B, S]`, `decoder_input_tokens[B, T]`
(targets shifted right, starting with the decoder start id 0), `decoder_target_tokens[B, T]`,
`decoder_loss_weights[B, T]` (float32 or int32, 0 on padding); other keys are ignored.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from gensar_jax import parallel
from gensar_jax.model.t5 import T5, T5Config
from gensar_jax.train.state import TrainState, learning_rate_schedule

BATCH_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


def check_batch(batch: Mapping) -> None:
  """Clear error for a batch that misses keys or has inconsistent shapes."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise KeyError(f"training batch is missing {missing} (has {sorted(batch)}); expected keys {list(BATCH_KEYS)}")
  b = batch["encoder_input_tokens"].shape[0]
  t = batch["decoder_input_tokens"].shape
  for key in BATCH_KEYS[1:]:
    if batch[key].shape != t or batch[key].shape[0] != b:
      raise ValueError(f"training batch: {key} has shape {batch[key].shape}, expected {t} (batch {b}) like "
                       "decoder_input_tokens")


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """logits: float32[B, T, V], targets: int32[B, T], weights: float32[B, T] ->
  (sum of weighted losses, sum of weights, sum of weighted correct argmax predictions).

  With `label_smoothing` e the target distribution is (1 - e) one-hot + e uniform over the vocabulary
  (torch's `CrossEntropyLoss(label_smoothing=e)`, HF Trainer's label smoother).
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll + label_smoothing * (log_z - jnp.mean(logits, axis=-1))
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct * weights)


def loss_denominator(weight_sum: jax.Array, global_batch: int, tokens_per_example: float | None) -> jax.Array:
  """What a step's summed token losses (and gradients) are divided by: global_batch x tokens_per_example
  when given (a constant: each token weighs the same in every batch), else the batch's own target tokens
  (at least 1)."""
  if tokens_per_example:
    return jnp.asarray(global_batch * tokens_per_example, jnp.float32)
  return jnp.maximum(weight_sum, 1.0)


def chunked_cross_entropy(logits_fn: Callable[[jax.Array], jax.Array], hidden: jax.Array, targets: jax.Array,
                          weights: jax.Array, label_smoothing: float, chunks: int
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`weighted_cross_entropy` of `logits_fn(hidden)` computed over `chunks` slices of the target positions.

  hidden: [B, T, D]; targets: int32[B, T]; weights: float32[B, T]; logits_fn: [B, T/chunks, D] ->
  [B, T/chunks, V]. Each slice's logits are recomputed in the backward pass (`jax.checkpoint`), so only
  one slice's [B, T/chunks, V] logits exist at a time instead of the whole [B, T, V]. Same sums as the
  whole-logits loss (up to summation order).
  """
  batch, length = targets.shape
  if length % chunks:
    raise ValueError(f"train.loss_chunks={chunks} does not divide the {length} target positions")

  def split(x):  # [B, T, ...] -> [chunks, B, T / chunks, ...], the batch axis (and its sharding) kept
    return jnp.moveaxis(x.reshape((batch, chunks, length // chunks) + x.shape[2:]), 1, 0)

  @jax.checkpoint
  def chunk_sums(chunk):
    h, t, w = chunk
    with jax.named_scope("cross_entropy"):  # a term of `gensar plan`'s breakdown
      return weighted_cross_entropy(logits_fn(h), t, w, label_smoothing)

  sums = jax.lax.map(chunk_sums, (split(hidden), split(targets), split(weights)))
  return tuple(jnp.sum(s) for s in sums)


def _split_microbatches(batch: dict, num: int) -> dict:
  """[B, ...] -> [num, B // num, ...] taking rows num apart, so each device keeps its own rows."""
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f"batch of {x.shape[0]} rows is not divisible by grad_accum_steps={num}")
    return jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)
  return {k: split(v) for k, v in batch.items()}


def abstract_inputs(model_cfg: T5Config, optimizer: optax.GradientTransformation, shardings: TrainState, mesh: Mesh,
                    rules, batch: int, input_len: int, target_len: int) -> tuple[TrainState, dict]:
  """The step's arguments without data, laid out as `make_train_step` declares them: (state of
  ShapeDtypeStructs with `shardings`, batch {key: ShapeDtypeStruct}: int32 tokens [batch, input_len] /
  [batch, target_len], float32 loss weights [batch, target_len], over the mesh's batch axes)."""
  from gensar_jax.model.t5 import init_params

  def fresh():
    params = init_params(model_cfg, jax.random.key(0))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), jax.eval_shape(fresh),
                       shardings)
  rows = parallel.batch_sharding(mesh, rules, 2)
  shapes = {"encoder_input_tokens": ((batch, input_len), jnp.int32),
            "decoder_input_tokens": ((batch, target_len), jnp.int32),
            "decoder_target_tokens": ((batch, target_len), jnp.int32),
            "decoder_loss_weights": ((batch, target_len), jnp.float32)}
  return state, {k: jax.ShapeDtypeStruct(shape, dtype, sharding=rows) for k, (shape, dtype) in shapes.items()}


def make_train_step(model_cfg: T5Config, train_cfg: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules, shardings: TrainState) -> Callable[[TrainState, Mapping], tuple]:
  """Returns `step(state, batch) -> (new_state, metrics)`, one `jax.jit` with explicit in/out shardings.

  The state is donated. Metrics (replicated float32 scalars): loss (summed token losses over
  `loss_denominator`), accuracy (over the batch's target tokens), tokens, grad_norm, learning_rate. Dropout keys derive from (seed, step), so a resumed run
  draws the same masks.
  """
  model = T5(model_cfg)
  accum = int(train_cfg.grad_accum_steps)
  schedule_fn = learning_rate_schedule(train_cfg)
  base_key = jax.random.key(int(train_cfg.seed))
  label_smoothing = float(train_cfg.label_smoothing)
  batch_shardings = {k: parallel.batch_sharding(mesh, rules, 2) for k in BATCH_KEYS}
  replicated = parallel.replicated(mesh)

  loss_chunks = int(train_cfg.get("loss_chunks", 1))
  # train.loss_normalizer="expected_tokens" divides by a constant the stage measures and passes as
  # train.loss_tokens_per_example; a step built without it (plans, benchmarks) divides by the batch's tokens.
  tokens_per_example = (float(train_cfg.get("loss_tokens_per_example", 0.0))
                        if train_cfg.get("loss_normalizer", "batch_tokens") == "expected_tokens" else None)

  def loss_sums(params, batch, rng):
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"].astype(jnp.float32)
    if loss_chunks == 1:
      logits = model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                           deterministic=False, rngs={"dropout": rng})
      with jax.named_scope("cross_entropy"):  # a term of `gensar plan`'s breakdown
        loss_sum, weight_sum, correct = weighted_cross_entropy(logits, targets, weights, label_smoothing)
    else:
      hidden = model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                           deterministic=False, rngs={"dropout": rng}, method=T5.hidden)
      loss_sum, weight_sum, correct = chunked_cross_entropy(
          lambda h: model.apply({"params": params}, h, method=T5.logits), hidden, targets, weights,
          label_smoothing, loss_chunks)
    return loss_sum, (weight_sum, correct)

  grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

  def step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(base_key, state.step)
    if accum == 1:
      (loss_sum, (weight_sum, correct)), grads = grad_fn(state.params, batch, rng)
    else:
      micro = _split_microbatches(batch, accum)

      def body(carry, inputs):
        index, mb = inputs
        (l, (w, c)), g = grad_fn(state.params, mb, jax.random.fold_in(rng, index))
        acc_g, acc_l, acc_w, acc_c = carry
        return (jax.tree_util.tree_map(jnp.add, acc_g, g), acc_l + l, acc_w + w, acc_c + c), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
      init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
      (grads, loss_sum, weight_sum, correct), _ = jax.lax.scan(body, init, (jnp.arange(accum), micro))
    denom = loss_denominator(weight_sum, batch["decoder_target_tokens"].shape[0], tokens_per_example)
    with jax.named_scope("optimizer_update"):  # a term of `gensar plan`'s breakdown
      grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / denom, "accuracy": correct / jnp.maximum(weight_sum, 1.0), "tokens": weight_sum,
               "grad_norm": optax.tree.norm(grads), "learning_rate": schedule_fn(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  jitted = jax.jit(step, in_shardings=(shardings, batch_shardings), out_shardings=(shardings, replicated),
                   donate_argnums=(0,))

  def run(state: TrainState, batch: Mapping) -> tuple[TrainState, dict]:
    check_batch(batch)
    inputs = {k: batch[k] for k in BATCH_KEYS}
    with parallel.mesh_and_rules(mesh, rules):
      return jitted(state, inputs)

  run.jitted = jitted
  return run


def make_eval_loss_fn(model_cfg: T5Config, mesh: Mesh, rules, param_shardings) -> Callable:
  """`fn(params, batch) -> {"loss", "accuracy", "tokens"}` without dropout (validation loss)."""
  model = T5(model_cfg)
  batch_shardings = {k: parallel.batch_sharding(mesh, rules, 2) for k in BATCH_KEYS}

  def evaluate(params, batch):
    logits = model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    loss_sum, weight_sum, correct = weighted_cross_entropy(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"].astype(jnp.float32))
    denom = jnp.maximum(weight_sum, 1.0)
    return {"loss": loss_sum / denom, "accuracy": correct / denom, "tokens": weight_sum}

  jitted = jax.jit(evaluate, in_shardings=(param_shardings, batch_shardings),
                   out_shardings=parallel.replicated(mesh))

  def run(params, batch):
    check_batch(batch)
    with parallel.mesh_and_rules(mesh, rules):
      return jitted(params, {k: batch[k] for k in BATCH_KEYS})

  return run


def metrics_to_host(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in metrics.items()}
