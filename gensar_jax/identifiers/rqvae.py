"""GenSAR's RQ-VAE with shared and specific codebooks, as pure functions over a parameter pytree.

Dual mode (the paper): z = concat(Encoder_s(v_s), Encoder_c(v_c)) is quantized by `num_shared_levels`
residual levels over the whole of z; the remaining residual is split into its semantic half and its
collaborative half, each quantized by `num_specific_levels` levels of its own. Semantic ID = shared
codes + semantic codes; collaborative ID = shared codes + collaborative codes.

Single-view modes ("semantic", "collab"; the TIGER-style baselines): one encoder/decoder and a plain
residual quantizer of `num_shared_levels + num_specific_levels` levels; both views get that one ID.

Parameter pytree (dual mode; single modes hold only their view's entries):
  {"semantic_encoder": {"layer_0": {"kernel": f32[d_s, 512], "bias": f32[512]}, ...},
   "semantic_decoder": {...}, "collab_encoder": {...}, "collab_decoder": {...},
   "codebooks": {"shared": f32[L_m, K, 2 * latent], "semantic": f32[L_n, K, latent],
                 "collab": f32[L_n, K, latent]}}
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from gensar_jax.config_schema import (Field, Section, at_least, boolean, one_of, positive, whole_at_least,
                                      wholes_at_least)
from gensar_jax.identifiers import kmeans as kmeans_lib
from gensar_jax.identifiers.sinkhorn import sinkhorn_assign

logger = logging.getLogger(__name__)

Params = dict[str, Any]
MODES = ("dual", "semantic", "collab")
SINKHORN_LEVELS = ("last_specific", "all_specific", "all", "none")


# The `identifiers` section, read by the `index` stage; defaults equal to the reference code's settings
# (docs/method.md, Identifiers).
IDENTIFIERS_SCHEMA = Section(dict(
    # "dual" (GenSAR), or "semantic" / "collab" for single-view identifiers (TIGER-style baselines).
    mode=Field("dual", one_of(*MODES)),
    # encoder d -> 512 -> 256 -> 128 -> 64 -> latent_dim
    hidden_dims=Field((512, 256, 128, 64), wholes_at_least(1, non_empty=False)),
    latent_dim=Field(32, whole_at_least(1)),   # per view; the shared levels quantize the 2 * latent_dim concatenation
    num_shared_levels=Field(2, at_least(0)),     # L_m
    num_specific_levels=Field(2, at_least(1)),   # L_n
    codebook_size=Field(256, at_least(2)),
    beta=Field(0.25, at_least(0.0)),           # commitment weight
    quant_loss_weight=Field(1.0, at_least(0.0)),
    sinkhorn_epsilon=Field(0.003, positive()),
    sinkhorn_iters=Field(50, whole_at_least(1)),
    sinkhorn_levels=Field("last_specific", one_of(*SINKHORN_LEVELS)),
    kmeans_iters=Field(100, whole_at_least(0)),
    # Training (reference: AdamW, linear decay after warm-up; paper text: Adam -> optimizer="adam").
    epochs=Field(500, at_least(1)),
    batch_size=Field(1024, at_least(1)),
    learning_rate=Field(1e-3, positive()),
    weight_decay=Field(1e-5, at_least(0.0)),
    # "adamw" (decoupled decay) or "adam" (L2 added to the gradient, torch Adam)
    optimizer=Field("adamw", one_of("adamw", "adam")),
    # "linear" (warm-up then linear decay to 0) or "constant" (after warm-up)
    lr_schedule=Field("linear", one_of("linear", "constant")),
    warmup_epochs=Field(50, whole_at_least(0)),
    grad_clip_norm=Field(1.0, at_least(0.0)),
    eval_every_epochs=Field(10, whole_at_least(1)),
    # keep the parameters with the lowest collision rate ("collision") or loss ("loss")
    select_by=Field("collision", one_of("collision", "loss")),
    seed=Field(2024, whole_at_least(0)),
    # Assignment: argmin, then up to resolve_rounds rounds of Sinkhorn re-encoding of colliding groups
    # on the last specific level, per view (0 disables). disambiguation_level appends one more code
    # (the item's rank among the items sharing its ID) so every ID is unique.
    resolve_rounds=Field(20, whole_at_least(0)),
    resolve_sinkhorn_epsilon=Field(0.003, positive()),
    disambiguation_level=Field(False, boolean()),
))


def identifiers_config() -> ml_collections.ConfigDict:
  """Defaults of the `identifiers` section."""
  return IDENTIFIERS_SCHEMA.defaults()


@dataclasses.dataclass(frozen=True)
class RQVAESpec:
  """Static shape and rule settings of one RQ-VAE (hashable: used as a jit static argument)."""
  mode: str
  input_dims: tuple[tuple[str, int], ...]  # ((view, embedding dim), ...) in latent order
  hidden_dims: tuple[int, ...]
  latent_dim: int
  num_shared_levels: int
  num_specific_levels: int
  codebook_size: int
  beta: float
  quant_loss_weight: float
  sinkhorn_epsilon: float
  sinkhorn_iters: int
  sinkhorn_levels: str

  @property
  def views(self) -> tuple[str, ...]:
    return tuple(view for view, _ in self.input_dims)

  @property
  def shared_dim(self) -> int:
    return self.latent_dim * len(self.views)

  @property
  def num_levels(self) -> int:
    """Length of one identifier (per view)."""
    return self.num_shared_levels + self.num_specific_levels

  @property
  def num_vq_layers(self) -> int:
    return self.num_shared_levels + self.num_specific_levels * len(self.views)

  def level_epsilons(self, group: str, use_sinkhorn: bool) -> tuple[float, ...]:
    """Sinkhorn epsilon per level of a codebook group ("shared" or a view); 0 means argmin."""
    count = self.num_shared_levels if group == "shared" else self.num_specific_levels
    if not use_sinkhorn or self.sinkhorn_levels == "none":
      return (0.0,) * count
    if self.sinkhorn_levels == "all" or (self.sinkhorn_levels == "all_specific" and group != "shared"):
      return (self.sinkhorn_epsilon,) * count
    if self.sinkhorn_levels == "last_specific" and group != "shared":
      return (0.0,) * (count - 1) + (self.sinkhorn_epsilon,)
    return (0.0,) * count


def level_names(spec: RQVAESpec) -> dict[str, list[str]]:
  """Token-style names of each view's levels, e.g. semantic: [shared_a, shared_b, semantic_a, ...]."""
  shared = [f"shared_{chr(ord('a') + i)}" for i in range(spec.num_shared_levels)]
  return {view: shared + [f"{view}_{chr(ord('a') + i)}" for i in range(spec.num_specific_levels)]
          for view in ("semantic", "collab")}


def spec_from_config(config: ml_collections.ConfigDict, semantic_dim: int | None,
                     collab_dim: int | None) -> RQVAESpec:
  """The RQ-VAE of an `identifiers` section (its values checked when the config loaded) for these embedding
  widths; a view the mode needs without embeddings is an error."""
  dims = {"semantic": semantic_dim, "collab": collab_dim}
  views = ("semantic", "collab") if config.mode == "dual" else (config.mode,)
  for view in views:
    if not dims[view] or dims[view] < 1:
      raise ValueError(f"identifiers.mode={config.mode!r} needs {view} embeddings, got width {dims[view]}")
  return RQVAESpec(
      mode=config.mode, input_dims=tuple((v, int(dims[v])) for v in views),
      hidden_dims=tuple(int(h) for h in config.hidden_dims), latent_dim=int(config.latent_dim),
      num_shared_levels=int(config.num_shared_levels), num_specific_levels=int(config.num_specific_levels),
      codebook_size=int(config.codebook_size), beta=float(config.beta),
      quant_loss_weight=float(config.quant_loss_weight), sinkhorn_epsilon=float(config.sinkhorn_epsilon),
      sinkhorn_iters=int(config.sinkhorn_iters), sinkhorn_levels=config.sinkhorn_levels)


# ----------------------------------------------------------------------------- parameters

def _init_mlp(key: jax.Array, dims: list[int]) -> Params:
  """Xavier-normal kernels (std sqrt(2 / (fan_in + fan_out)), untruncated as torch), zero biases."""
  layers = {}
  for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
    std = (2.0 / (fan_in + fan_out)) ** 0.5
    layers[f"layer_{i}"] = {
        "kernel": std * jax.random.normal(jax.random.fold_in(key, i), (fan_in, fan_out), jnp.float32),
        "bias": jnp.zeros((fan_out,), jnp.float32)}
  return layers


def init_params(key: jax.Array, spec: RQVAESpec) -> Params:
  """MLP weights (Xavier normal) and zero codebooks (filled by `init_codebooks` on the first batch)."""
  params: Params = {}
  for i, (view, dim) in enumerate(spec.input_dims):
    dims = [dim, *spec.hidden_dims, spec.latent_dim]
    params[f"{view}_encoder"] = _init_mlp(jax.random.fold_in(key, 2 * i), dims)
    params[f"{view}_decoder"] = _init_mlp(jax.random.fold_in(key, 2 * i + 1), dims[::-1])
  k = spec.codebook_size
  params["codebooks"] = {"shared": jnp.zeros((spec.num_shared_levels, k, spec.shared_dim), jnp.float32)}
  for view in spec.views:
    params["codebooks"][view] = jnp.zeros((spec.num_specific_levels, k, spec.latent_dim), jnp.float32)
  return params


def mlp(layers: Params, x: jax.Array) -> jax.Array:
  """ReLU between layers, none after the last: x f32[B, d_in] -> f32[B, d_out]."""
  count = len(layers)
  for i in range(count):
    x = x @ layers[f"layer_{i}"]["kernel"] + layers[f"layer_{i}"]["bias"]
    if i < count - 1:
      x = jax.nn.relu(x)
  return x


# ----------------------------------------------------------------------------- quantization

def _masked_mean(values: jax.Array, row_mask: jax.Array) -> jax.Array:
  """Mean of f32[B, D] over the valid rows and all dims (torch's mse 'mean' on the valid batch)."""
  weights = row_mask.astype(values.dtype)[:, None]
  return jnp.sum(values * weights) / (jnp.sum(weights) * values.shape[1])


def assign_codes(residual: jax.Array, codebook: jax.Array, epsilon: float, sinkhorn_iters: int,
                 row_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """residual f32[B, D], codebook f32[K, D] -> (codes int32[B], squared distances f32[B, K])."""
  distances = jax.lax.stop_gradient(kmeans_lib.squared_distances(residual, codebook))
  return sinkhorn_assign(distances, epsilon, sinkhorn_iters, row_mask), distances


def quantize_level(residual: jax.Array, codebook: jax.Array, epsilon: float, sinkhorn_iters: int,
                   beta: float, row_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One VQ layer -> (straight-through quantized f32[B, D], codes int32[B], loss f32[]).

  loss = MSE(e, sg(r)) + beta * MSE(sg(e), r); quantized = r + sg(e - r).
  """
  codes, _ = assign_codes(residual, codebook, epsilon, sinkhorn_iters, row_mask)
  selected = codebook[codes]
  codebook_loss = _masked_mean((selected - jax.lax.stop_gradient(residual)) ** 2, row_mask)
  commitment_loss = _masked_mean((jax.lax.stop_gradient(selected) - residual) ** 2, row_mask)
  quantized = residual + jax.lax.stop_gradient(selected - residual)
  return quantized, codes, codebook_loss + beta * commitment_loss


def _quantize_stack(codebooks: jax.Array, epsilons: tuple[float, ...], residual: jax.Array,
                    quantized_sum: jax.Array, spec: RQVAESpec, row_mask: jax.Array):
  """Residual quantization through codebooks f32[L, K, D]; returns the final residual, the sum of
  quantized vectors, codes int32[B, L], the per-layer losses, and the residual entering the last layer."""
  codes, losses, last_input = [], [], residual
  for level, epsilon in enumerate(epsilons):
    last_input = residual
    quantized, level_codes, loss = quantize_level(residual, codebooks[level], epsilon, spec.sinkhorn_iters,
                                                  spec.beta, row_mask)
    residual = residual - quantized
    quantized_sum = quantized_sum + quantized
    codes.append(level_codes)
    losses.append(loss)
  stacked = jnp.stack(codes, axis=1) if codes else jnp.zeros((residual.shape[0], 0), jnp.int32)
  return residual, quantized_sum, stacked, losses, last_input


def _row_mask(inputs: dict[str, jax.Array], row_mask: jax.Array | None) -> jax.Array:
  batch = next(iter(inputs.values())).shape[0]
  return jnp.ones(batch, bool) if row_mask is None else row_mask.astype(bool)


def forward(params: Params, spec: RQVAESpec, inputs: dict[str, jax.Array], row_mask: jax.Array | None = None,
            use_sinkhorn: bool = True) -> dict[str, Any]:
  """Full RQ-VAE pass on a batch.

  inputs: {"semantic": f32[B, d_s], "collab": f32[B, d_c]} (the views of `spec`); row_mask: bool[B].
  Returns {"loss", "recon_loss", "quant_loss": f32[], "codes": {view: int32[B, num_levels]},
  "reconstructions": {view: f32[B, d]}, "last_residuals": {view: f32[B, latent]}} where
  last_residuals is what enters each view's last specific level.
  """
  mask = _row_mask(inputs, row_mask)
  latents = [mlp(params[f"{view}_encoder"], inputs[view]) for view in spec.views]
  z = jnp.concatenate(latents, axis=1)
  residual, quantized_sum, shared_codes, losses, _ = _quantize_stack(
      params["codebooks"]["shared"], spec.level_epsilons("shared", use_sinkhorn), z, jnp.zeros_like(z),
      spec, mask)
  out = {"codes": {}, "reconstructions": {}, "last_residuals": {}}
  recon_loss = 0.0
  for i, view in enumerate(spec.views):
    part = slice(i * spec.latent_dim, (i + 1) * spec.latent_dim)
    _, view_sum, view_codes, view_losses, last_input = _quantize_stack(
        params["codebooks"][view], spec.level_epsilons(view, use_sinkhorn), residual[:, part],
        quantized_sum[:, part], spec, mask)
    losses += view_losses
    reconstruction = mlp(params[f"{view}_decoder"], view_sum)
    recon_loss = recon_loss + _masked_mean((reconstruction - inputs[view]) ** 2, mask)
    out["codes"][view] = jnp.concatenate([shared_codes, view_codes], axis=1)
    out["reconstructions"][view] = reconstruction
    out["last_residuals"][view] = last_input
  quant_loss = jnp.mean(jnp.stack(losses))
  out.update(loss=recon_loss + spec.quant_loss_weight * quant_loss, recon_loss=recon_loss, quant_loss=quant_loss)
  return out


def loss_fn(params: Params, spec: RQVAESpec, inputs: dict[str, jax.Array], row_mask: jax.Array):
  """Training objective with Sinkhorn on its configured levels: (loss, (recon_loss, quant_loss))."""
  out = forward(params, spec, inputs, row_mask, use_sinkhorn=True)
  return out["loss"], (out["recon_loss"], out["quant_loss"])


def view_codes(codes: dict[str, jax.Array], view: str) -> jax.Array:
  """The identifier of a view; single-view models serve both views with their one ID."""
  return codes[view] if view in codes else next(iter(codes.values()))


def init_codebooks(key: jax.Array, params: Params, spec: RQVAESpec, inputs: dict[str, jax.Array],
                   row_mask: jax.Array | None = None, kmeans_iters: int = 100) -> Params:
  """k-means initialization of every codebook on one batch, level by level (reference: each layer is
  clustered on the residual it receives in the first training batch, earlier layers already set).

  Needs at least `codebook_size` valid rows. Returns new params with filled codebooks.
  """
  mask = _row_mask(inputs, row_mask)
  num_valid = int(jnp.sum(mask))
  if num_valid < spec.codebook_size:
    raise ValueError(f"k-means initialization needs at least codebook_size={spec.codebook_size} items in "
                     f"the first batch, got {num_valid}")
  codebooks = {group: list(books) for group, books in params["codebooks"].items()}

  def fill(group: str, level: int, residual: jax.Array, epsilon: float) -> jax.Array:
    group_index = ("shared", *spec.views).index(group)
    centers = kmeans_lib.kmeans(jax.random.fold_in(key, 100 * group_index + level), residual,
                                spec.codebook_size, kmeans_iters, mask)
    codebooks[group][level] = centers
    codes, _ = assign_codes(residual, centers, epsilon, spec.sinkhorn_iters, mask)
    return residual - centers[codes]

  latents = [mlp(params[f"{view}_encoder"], inputs[view]) for view in spec.views]
  residual = jnp.concatenate(latents, axis=1)
  for level, epsilon in enumerate(spec.level_epsilons("shared", True)):
    residual = fill("shared", level, residual, epsilon)
  for i, view in enumerate(spec.views):
    view_residual = residual[:, i * spec.latent_dim:(i + 1) * spec.latent_dim]
    for level, epsilon in enumerate(spec.level_epsilons(view, True)):
      view_residual = fill(view, level, view_residual, epsilon)
  new_params = dict(params)
  new_params["codebooks"] = {
      group: (jnp.stack(books) if books else params["codebooks"][group]) for group, books in codebooks.items()}
  return new_params
