"""RQ-VAE training: k-means codebook init, one jitted scan per epoch, collision-rate model selection.

Reference schedule: AdamW (lr 1e-3, weight decay 1e-5), linear warm-up over 50 epochs then linear
decay to 0, global-norm clipping at 1.0, batch 1024 on shuffled items (last batch partial: here padded
and masked so every step has one shape), 500 epochs; every 10 epochs the collision rate over all items
(argmin codes) is measured and the parameters with the lowest one are kept, as are the lowest-loss ones.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from gensar_jax.identifiers import rqvae

logger = logging.getLogger(__name__)


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate per optimizer step: linear warm-up from 0 over `warmup_epochs`, then linear decay to
  0 at the last step ("linear") or constant ("constant"); as the reference's HF schedulers."""
  return _schedule(config.lr_schedule, float(config.learning_rate), int(config.warmup_epochs) * steps_per_epoch,
                   int(config.epochs) * steps_per_epoch)


def _schedule(kind: str, learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  if kind == "linear":
    after = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
  elif kind == "constant":
    after = optax.constant_schedule(learning_rate)
  else:
    raise ValueError(f"identifiers.lr_schedule={kind!r}: expected 'linear' or 'constant'")
  if warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (decoupled decay) or Adam (L2 added to the gradient, as torch's
  Adam(weight_decay)) on `make_schedule`. Equal settings return the same object, so jitted epochs that
  close over it are reused instead of recompiled."""
  return _optimizer(config.optimizer, config.lr_schedule, float(config.learning_rate), float(config.weight_decay),
                    int(config.warmup_epochs) * steps_per_epoch, int(config.epochs) * steps_per_epoch,
                    float(config.grad_clip_norm or 0.0))


@functools.lru_cache(maxsize=16)
def _optimizer(name: str, schedule_kind: str, learning_rate: float, weight_decay: float, warmup_steps: int,
               total_steps: int, grad_clip_norm: float) -> optax.GradientTransformation:
  schedule = _schedule(schedule_kind, learning_rate, warmup_steps, total_steps)
  if name == "adamw":
    optimizer = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
  elif name == "adam":
    optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                            optax.scale_by_learning_rate(schedule))
  else:
    raise ValueError(f"identifiers.optimizer={name!r}: expected 'adamw' or 'adam'")
  if grad_clip_norm > 0:
    optimizer = optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer)
  return optimizer


def epoch_batches(key: jax.Array, num_items: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A shuffled epoch as item indices int32[num_batches, batch_size] and a validity mask bool[...]."""
  num_batches = math.ceil(num_items / batch_size)
  order = jax.random.permutation(key, num_items)
  padded = jnp.zeros(num_batches * batch_size, jnp.int32).at[:num_items].set(order)
  mask = jnp.arange(num_batches * batch_size) < num_items
  return padded.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


@functools.lru_cache(maxsize=16)
def make_train_epoch(spec: rqvae.RQVAESpec, optimizer: optax.GradientTransformation, batch_size: int):
  """Returns jitted `train_epoch(params, opt_state, inputs, key) -> (params, opt_state, losses f32[3])`
  running every batch of one shuffled epoch in a `lax.scan`; losses are the batch means of
  (loss, recon_loss, quant_loss)."""
  grad_fn = jax.value_and_grad(rqvae.loss_fn, has_aux=True)

  def step(carry, batch):
    params, opt_state, inputs = carry
    indices, mask = batch
    batch_inputs = {view: values[indices] for view, values in inputs.items()}
    (loss, (recon_loss, quant_loss)), grads = grad_fn(params, spec, batch_inputs, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, inputs), jnp.stack([loss, recon_loss, quant_loss])

  @jax.jit
  def train_epoch(params, opt_state, inputs, key):
    num_items = next(iter(inputs.values())).shape[0]
    indices, mask = epoch_batches(key, num_items, batch_size)
    (params, opt_state, _), losses = jax.lax.scan(step, (params, opt_state, inputs), (indices, mask))
    return params, opt_state, jnp.mean(losses, axis=0)

  return train_epoch


@functools.lru_cache(maxsize=16)
def make_encoder(spec: rqvae.RQVAESpec):
  """Returns jitted `encode(params, chunk_inputs, mask) -> (codes, last_residuals)` per view with
  argmin assignment on every level (the reference's evaluation path)."""

  @jax.jit
  def encode(params, inputs, mask):
    out = rqvae.forward(params, spec, inputs, mask, use_sinkhorn=False)
    return out["codes"], out["last_residuals"]

  return encode


def encode_items(params: rqvae.Params, spec: rqvae.RQVAESpec, inputs: dict[str, Any],
                 chunk_size: int = 8192, encoder=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Argmin identifiers of all items: codes {view: int32[N, num_levels]} and the residual entering each
  view's last specific level {view: f32[N, latent]}, computed in fixed-size padded chunks."""
  num_items = next(iter(inputs.values())).shape[0]
  chunk = min(chunk_size, num_items)
  encoder = encoder or make_encoder(spec)
  codes = {view: [] for view in spec.views}
  residuals = {view: [] for view in spec.views}
  for start in range(0, num_items, chunk):
    stop = min(start + chunk, num_items)
    pad = chunk - (stop - start)
    part = {view: jnp.pad(jnp.asarray(values[start:stop]), ((0, pad), (0, 0))) for view, values in inputs.items()}
    mask = jnp.arange(chunk) < (stop - start)
    part_codes, part_residuals = encoder(params, part, mask)
    for view in spec.views:
      codes[view].append(np.asarray(part_codes[view])[:stop - start])
      residuals[view].append(np.asarray(part_residuals[view])[:stop - start])
  return ({view: np.concatenate(v).astype(np.int32) for view, v in codes.items()},
          {view: np.concatenate(v) for view, v in residuals.items()})


def collision_rate(codes: np.ndarray) -> float:
  """(items - distinct IDs) / items for codes int32[N, L] (the reference's definition)."""
  if codes.shape[0] == 0:
    return 0.0
  return float(codes.shape[0] - np.unique(codes, axis=0).shape[0]) / codes.shape[0]


def mean_collision_rate(codes: dict[str, np.ndarray]) -> float:
  """Mean over the model's views (dual: the mean of the semantic-ID and collaborative-ID rates)."""
  return float(np.mean([collision_rate(c) for c in codes.values()]))


@dataclasses.dataclass
class RQVAETrainResult:
  params: rqvae.Params  # the selected parameters (config.select_by)
  best_collision_params: rqvae.Params
  best_loss_params: rqvae.Params
  best_collision_rate: float
  best_collision_epoch: int
  best_loss: float
  best_loss_epoch: int
  history: list[dict[str, float]]


def train_rqvae(inputs: dict[str, np.ndarray], config: ml_collections.ConfigDict,
                spec: rqvae.RQVAESpec | None = None, progress: bool = True) -> RQVAETrainResult:
  """Trains the RQ-VAE on item embeddings {view: f32[N, d]} with the settings of `config`
  (an `identifiers_config()` section)."""
  if spec is None:
    spec = rqvae.spec_from_config(config, _width(inputs, "semantic"), _width(inputs, "collab"))
  inputs = {view: jnp.asarray(inputs[view], jnp.float32) for view in spec.views}
  num_items = next(iter(inputs.values())).shape[0]
  batch_size = int(config.batch_size)
  steps_per_epoch = math.ceil(num_items / batch_size)
  key = jax.random.PRNGKey(config.seed)
  init_key, kmeans_key, shuffle_key = jax.random.split(key, 3)
  params = rqvae.init_params(init_key, spec)
  # Codebooks are k-means-initialized on the first batch of the first epoch.
  first_indices, first_mask = epoch_batches(jax.random.fold_in(shuffle_key, 0), num_items, batch_size)
  first_batch = {view: values[first_indices[0]] for view, values in inputs.items()}
  params = rqvae.init_codebooks(kmeans_key, params, spec, first_batch, first_mask[0], config.kmeans_iters)
  optimizer = make_optimizer(config, steps_per_epoch)
  opt_state = optimizer.init(params)
  train_epoch = make_train_epoch(spec, optimizer, batch_size)
  encoder = make_encoder(spec)

  history: list[dict[str, float]] = []
  best = {"collision": (math.inf, -1, params), "loss": (math.inf, -1, params)}
  bar = tqdm(range(config.epochs), desc="rq-vae", unit="epoch", disable=not progress)
  for epoch in bar:
    params, opt_state, losses = train_epoch(params, opt_state, inputs, jax.random.fold_in(shuffle_key, epoch))
    if (epoch + 1) % config.eval_every_epochs:
      continue
    loss, recon_loss, quant_loss = (float(x) for x in np.asarray(losses))
    if not math.isfinite(loss):
      raise FloatingPointError(f"RQ-VAE training loss is {loss} at epoch {epoch + 1}")
    codes, _ = encode_items(params, spec, inputs, encoder=encoder)
    rates = {f"{view}_collision_rate": collision_rate(c) for view, c in codes.items()}
    rate = float(np.mean(list(rates.values())))
    history.append({"epoch": epoch + 1, "loss": loss, "recon_loss": recon_loss, "quant_loss": quant_loss,
                    "collision_rate": rate, **rates})
    if loss < best["loss"][0]:
      best["loss"] = (loss, epoch + 1, params)
    if rate < best["collision"][0]:
      best["collision"] = (rate, epoch + 1, params)
    bar.set_postfix(loss=f"{loss:.4f}", collision=f"{rate:.4f}")
  result = RQVAETrainResult(
      params=best[config.select_by][2], best_collision_params=best["collision"][2],
      best_loss_params=best["loss"][2], best_collision_rate=best["collision"][0],
      best_collision_epoch=best["collision"][1], best_loss=best["loss"][0], best_loss_epoch=best["loss"][1],
      history=history)
  logger.info("rq-vae: %d items, %d epochs, best collision rate %.4f at epoch %d (loss %.4f at epoch %d)",
              num_items, config.epochs, result.best_collision_rate, result.best_collision_epoch,
              result.best_loss, result.best_loss_epoch)
  return result


def _width(inputs: dict[str, Any], view: str) -> int | None:
  return None if inputs.get(view) is None else int(np.shape(inputs[view])[1])
