"""Fused attention: a Pallas kernel per (head, example) that keeps the scores and probabilities in on-chip
memory, with T5's relative position bias, a key padding mask and counter-hash dropout on the
probabilities.

Dense attention (`t5.Attention.attend`) writes the float32 scores [B, H, T, S], reads them for the
softmax, writes the probabilities, the dropout mask and their bfloat16 copy, and keeps the probabilities
for the backward pass: at T = S = 512 that is most of a T5 train step's memory traffic. Here one kernel
instance holds a whole [T, S] block of one head and example in VMEM: the forward pass writes only the
context [T, d_kv]; the backward pass recomputes the probabilities from q, k, v (as flash attention does)
and writes dq, dk, dv and the bias gradient, summed over the examples in the kernel. Sequences are
short here (T, S <= 512), so a whole row fits and no online softmax is needed; `check_fits` refuses
shapes whose block would not.

Dropout: the keep mask of element (b, h, t, s) is `hash_dropout`'s counter hash of its index in the
global [B, H, T, S] array, so the kernel drops exactly the elements dense attention with
`dropout_rng="hash"` drops, on any sharding. The kernel runs per device under `shard_map`; each
device offsets its indices by its first global example and head.

On a CPU the kernels run in Pallas' interpret mode (the equality tests); on TPU they compile with Mosaic.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from gensar_jax.model import hash_dropout

Array = jax.Array

# A [T, S] float32 block and its companions (scores, probabilities, their gradients) must stay well
# inside the smallest TPU scoped-VMEM default (16 MiB on v5e).
VMEM_BLOCK_BUDGET_BYTES = 12 * 2 ** 20
_LIVE_BLOCKS = 5  # float32 [T, S] arrays alive at once in the backward kernel


def check_fits(query_len: int, key_len: int) -> None:
  """Raises ValueError when a [query_len, key_len] attention block does not fit the VMEM budget."""
  need = _LIVE_BLOCKS * 4 * query_len * key_len
  if need > VMEM_BLOCK_BUDGET_BYTES:
    raise ValueError(f"model.attention='fused': a {query_len} x {key_len} attention block needs about "
                     f"{need / 2 ** 20:.0f} MiB of VMEM (budget {VMEM_BLOCK_BUDGET_BYTES / 2 ** 20:.0f} MiB); "
                     "use model.attention='dense' for sequences this long")


def _keep_mask(params_ref, shape: tuple[int, int], num_heads: int, rate: float) -> Array:
  """bool[T, S] keep mask of this kernel instance's (example, head) block (`hash_dropout`'s bits of its
  global indices). params_ref: int32 (seed0, seed1, first global head, then per local example the first
  index of its row within its block, then per local example its block word)."""
  t_len, s_len = shape
  example = pl.program_id(1)
  batch = (params_ref.shape[0] - 3) // 2
  head = (params_ref[2] + pl.program_id(0)).astype(jnp.uint32)
  first = params_ref[3 + example].astype(jnp.uint32) + head * jnp.uint32(t_len * s_len)
  rows = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
  cols = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
  bits = hash_dropout.keep_bits(first + rows * jnp.uint32(s_len) + cols,
                                params_ref[3 + batch + example].astype(jnp.uint32),
                                params_ref[0].astype(jnp.uint32), params_ref[1].astype(jnp.uint32))
  return bits >= hash_dropout.threshold(rate)


def _dot(a: Array, b: Array, contract: tuple[int, int]) -> Array:
  """a·b contracting a's axis contract[0] with b's axis contract[1], float32 accumulation."""
  return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                             preferred_element_type=jnp.float32)


def _probabilities(q, k, bias_ref, mask_ref):
  """Softmax probabilities float32[T, S] and the key mask bool[1, S] of one block."""
  scores = _dot(q, k, (1, 1))
  if bias_ref is not None:
    scores = scores + bias_ref[...].astype(jnp.float32)
  keys = mask_ref[...] > 0
  scores = jnp.where(keys, scores, jnp.finfo(jnp.float32).min)
  scores = scores - jnp.max(scores, axis=-1, keepdims=True)
  unnormalized = jnp.exp(scores)
  return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True), keys


def _forward_kernel(params_ref, q_ref, k_ref, v_ref, *refs, has_bias: bool, rate: float, num_heads: int):
  bias_ref, mask_ref, out_ref = refs if has_bias else (None,) + refs
  q, k, v = q_ref[...], k_ref[...], v_ref[...]
  probs, _ = _probabilities(q, k, bias_ref, mask_ref)
  if rate:
    keep = _keep_mask(params_ref, probs.shape, num_heads, rate)
    probs = jnp.where(keep, probs / (1.0 - rate), 0.0)
  out_ref[...] = _dot(probs.astype(v.dtype), v, (1, 0)).astype(out_ref.dtype)


def _backward_kernel(params_ref, q_ref, k_ref, v_ref, *refs, has_bias: bool, rate: float, num_heads: int):
  if has_bias:
    bias_ref, mask_ref, dout_ref, dq_ref, dk_ref, dv_ref, dbias_ref = refs
  else:
    bias_ref, dbias_ref = None, None
    mask_ref, dout_ref, dq_ref, dk_ref, dv_ref = refs
  q, k, v, dout = q_ref[...], k_ref[...], v_ref[...], dout_ref[...]
  probs, keys = _probabilities(q, k, bias_ref, mask_ref)
  dropped_grad = _dot(dout, v, (1, 1))  # d loss / d (dropped probabilities), [T, S]
  if rate:
    keep = _keep_mask(params_ref, probs.shape, num_heads, rate)
    dropped = jnp.where(keep, probs / (1.0 - rate), 0.0)
    probs_grad = jnp.where(keep, dropped_grad / (1.0 - rate), 0.0)
  else:
    dropped, probs_grad = probs, dropped_grad
  dv_ref[...] = _dot(dropped.astype(dout.dtype), dout, (0, 0)).astype(dv_ref.dtype)
  row = jnp.sum(probs * probs_grad, axis=-1, keepdims=True)
  scores_grad = jnp.where(keys, probs * (probs_grad - row), 0.0)  # masked keys get no gradient
  dq_ref[...] = _dot(scores_grad.astype(k.dtype), k, (1, 0)).astype(dq_ref.dtype)
  dk_ref[...] = _dot(scores_grad.astype(q.dtype), q, (0, 0)).astype(dk_ref.dtype)
  if has_bias:
    @pl.when(pl.program_id(1) == 0)
    def _():
      dbias_ref[...] = jnp.zeros_like(dbias_ref)
    dbias_ref[...] += scores_grad


def _interpret() -> bool:
  """Interpret mode unless the program is for TPU: the context mesh's devices (a deviceless TPU compile
  sets a mesh of TPU devices on a CPU host), else the default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  if device is not None:
    return device.platform != "tpu"
  return jax.default_backend() != "tpu"


def _specs(batch: int, heads: int, t_len: int, s_len: int, d_kv: int, has_bias: bool):
  """BlockSpecs over the grid (head, example) for q/k/v [B, H, len, d_kv], bias [H, T, S], mask [B, 1, S]."""
  def per_example(length):
    return pl.BlockSpec((None, None, length, d_kv), lambda h, b, params: (b, h, 0, 0))
  bias = [pl.BlockSpec((None, t_len, s_len), lambda h, b, params: (h, 0, 0))] if has_bias else []
  mask = pl.BlockSpec((None, 1, s_len), lambda h, b, params: (b, 0, 0))
  return per_example(t_len), per_example(s_len), bias, mask


def _forward_call(params, q, k, v, bias, mask, *, rate: float, num_heads: int):
  """params int32[4]; q [B, H, T, d]; k, v [B, H, S, d]; bias [H, T, S] or None; mask f32[B, 1, S]."""
  batch, heads, t_len, d_kv = q.shape
  s_len = k.shape[2]
  has_bias = bias is not None
  q_spec, kv_spec, bias_spec, mask_spec = _specs(batch, heads, t_len, s_len, d_kv, has_bias)
  kernel = functools.partial(_forward_kernel, has_bias=has_bias, rate=rate, num_heads=num_heads)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(heads, batch), in_specs=[q_spec, kv_spec, kv_spec, *bias_spec, mask_spec],
      out_specs=q_spec)
  flops = 4 * batch * heads * t_len * s_len * d_kv
  cost = pl.CostEstimate(flops=flops, transcendentals=batch * heads * t_len * s_len,
                         bytes_accessed=sum(x.size * x.dtype.itemsize for x in (q, k, v, mask, q))
                         + (bias.size * bias.dtype.itemsize if has_bias else 0))
  return pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
      cost_estimate=cost, interpret=_interpret())(params, q, k, v, *([bias] if has_bias else []), mask)


def _backward_call(params, q, k, v, bias, mask, dout, *, rate: float, num_heads: int):
  """-> (dq, dk, dv, dbias float32[H, T, S] summed over this device's examples, or None)."""
  batch, heads, t_len, d_kv = q.shape
  s_len = k.shape[2]
  has_bias = bias is not None
  q_spec, kv_spec, bias_spec, mask_spec = _specs(batch, heads, t_len, s_len, d_kv, has_bias)
  kernel = functools.partial(_backward_kernel, has_bias=has_bias, rate=rate, num_heads=num_heads)
  out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)]
  out_specs = [q_spec, kv_spec, kv_spec]
  if has_bias:
    out_shape.append(jax.ShapeDtypeStruct(bias.shape, jnp.float32))
    out_specs.append(bias_spec[0])
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(heads, batch),
      in_specs=[q_spec, kv_spec, kv_spec, *bias_spec, mask_spec, q_spec], out_specs=out_specs)
  # The bias gradient accumulates over the example axis of the grid: it must run in order.
  semantics = ("parallel", "arbitrary") if has_bias else ("parallel", "parallel")
  flops = 10 * batch * heads * t_len * s_len * d_kv
  cost = pl.CostEstimate(flops=flops, transcendentals=batch * heads * t_len * s_len,
                         bytes_accessed=2 * sum(x.size * x.dtype.itemsize for x in (q, k, v, dout))
                         + (2 * bias.size * 4 if has_bias else 0))
  grads = pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
      cost_estimate=cost, interpret=_interpret())(params, q, k, v, *([bias] if has_bias else []), mask, dout)
  return tuple(grads) if has_bias else (*grads, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _local_attention(params, q, k, v, bias, mask, rate, num_heads):
  return _forward_call(params, q, k, v, bias, mask, rate=rate, num_heads=num_heads)


def _local_forward(params, q, k, v, bias, mask, rate, num_heads):
  out = _forward_call(params, q, k, v, bias, mask, rate=rate, num_heads=num_heads)
  return out, (params, q, k, v, bias, mask)


def _local_backward(rate, num_heads, residuals, dout):
  params, q, k, v, bias, mask = residuals
  dq, dk, dv, dbias = _backward_call(params, q, k, v, bias, mask, dout, rate=rate, num_heads=num_heads)
  dbias = None if bias is None else dbias.astype(bias.dtype)
  params_grad = np.zeros(params.shape, jax.dtypes.float0)
  return params_grad, dq, dk, dv, dbias, jnp.zeros_like(mask)


_local_attention.defvjp(_local_forward, _local_backward)


def dropout_seeds(key: Array) -> Array:
  """int32[2]: the two seed words `hash_dropout.hash_keep_mask` draws from `key`."""
  return jax.lax.bitcast_convert_type(hash_dropout.seeds_from_key(key), jnp.int32)


def fused_attention(query: Array, key: Array, value: Array, bias: Array | None, key_mask: Array,
                    dropout_rate: float = 0.0, seeds: Array | None = None,
                    batch_axes: tuple[str, ...] | str | None = None, head_axis: str | None = None) -> Array:
  """Attention context without materialised probabilities, heads first.

  query: [B, H, T, d_kv]; key, value: [B, H, S, d_kv]; bias: [H, T, S] or None; key_mask: bool[B, S]
  (True = attend); dropout_rate > 0 needs `seeds` (`dropout_seeds`) -> [B, H, T, d_kv].
  batch_axes / head_axis: the mesh axes the batch and head dimensions are sharded over (of the context
  mesh set by `jax.set_mesh`); with either, the kernel runs per device under `shard_map`.
  """
  batch, heads, t_len, _ = query.shape
  check_fits(t_len, key.shape[2])
  rate = float(dropout_rate)
  if rate and seeds is None:
    raise ValueError("fused_attention: dropout_rate > 0 needs the dropout seeds")
  seeds = jnp.zeros((2,), jnp.int32) if seeds is None else seeds
  mask = key_mask.astype(jnp.float32)[:, None, :]

  def local(seeds, q, k, v, bias, mask):
    rows = _axis_offset(batch_axes, q.shape[0]) + jnp.arange(q.shape[0])
    first, block_word = hash_dropout.row_words(rows, heads * t_len * key.shape[2])
    as_int32 = lambda x: jax.lax.bitcast_convert_type(x, jnp.int32)  # noqa: E731
    params = jnp.concatenate([seeds, _axis_offset(head_axis, q.shape[1])[None].astype(jnp.int32),
                              as_int32(first), as_int32(block_word)])
    return _local_attention(params, q, k, v, bias, mask, rate, heads)

  if not batch_axes and not head_axis:
    return local(seeds, query, key, value, bias, mask)
  spec = jax.sharding.PartitionSpec
  qkv = spec(batch_axes or None, head_axis, None, None)
  in_specs = (spec(), qkv, qkv, qkv, spec() if bias is None else spec(head_axis, None, None),
              spec(batch_axes or None, None, None))
  return jax.shard_map(local, in_specs=in_specs, out_specs=qkv, check_vma=False)(
      seeds, query, key, value, bias, mask)


def _axis_offset(axes, local_size: int) -> Array:
  """The first global index of this device's block along a dimension sharded over `axes`."""
  if not axes:
    return jnp.zeros((), jnp.int32)
  return jax.lax.axis_index(axes) * local_size
