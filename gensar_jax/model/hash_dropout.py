"""Counter-hash dropout masks: each element's keep bit is a hash of its index, keyed by two words drawn from
a JAX key (like the Philox dropout of GPU frameworks, with fewer operations per element).

The index of element (r, i) of an array [R, ...] (row r, flat index i within the row of size `row_size`) is
split into two uint32 words: blocks of `rows_per_block(row_size)` rows share a block number
`r // rows_per_block`, and within a block the index `(r % rows_per_block) * row_size + i` is below 2**32.
bits = fmix32(fmix32(index ^ seed0) + (seed1 ^ block * GOLDEN)). Arrays of fewer than 2**32 elements are
one block (block 0), so their index is the plain flat index. Dense dropout (`t5.Dropout`, `hash_keep_mask`)
and the fused attention kernel (`fused_attention`) compute the same bits for the same global element.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

GOLDEN = 0x9E3779B9  # odd, so block -> block * GOLDEN is a bijection of uint32 with 0 -> 0


def fmix32(h: Array) -> Array:
  """murmur3's 32-bit finalizer: a bijection of uint32 whose output bits each depend on every input bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def rows_per_block(row_size: int) -> int:
  """Rows of `row_size` elements per index block: whole rows under 2**32 elements (at most 2**32 - 1 rows, the
  largest uint32, which changes nothing below 2**32 elements)."""
  if row_size >= 2 ** 32:
    raise ValueError(f"hash dropout: rows of {row_size} elements; the uint32 index supports fewer than 2**32 "
                     "per row")
  return min(2 ** 32 // max(row_size, 1), 2 ** 32 - 1)


def row_words(rows: Array, row_size: int) -> tuple[Array, Array]:
  """Global row indices int[...] -> (first index of each row within its block, block word), both uint32."""
  per_block = rows_per_block(row_size)
  rows = rows.astype(jnp.uint32)
  first = (rows % jnp.uint32(per_block)) * jnp.uint32(row_size)
  return first, (rows // jnp.uint32(per_block)) * jnp.uint32(GOLDEN)


def seeds_from_key(key: Array) -> Array:
  """uint32[2]: the two seed words a mask keyed by `key` uses."""
  return jax.random.bits(key, (2,), jnp.uint32)


def keep_bits(index: Array, block_word: Array, seed0: Array, seed1: Array) -> Array:
  """uint32 hash of (index within the block, block word) under the two seeds."""
  return fmix32(fmix32(index ^ seed0) + (seed1 ^ block_word))


def threshold(rate: float) -> Array:
  """Keep an element when its bits are >= this (probability 1 - rate)."""
  return jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))


def hash_keep_mask(key: Array, shape: tuple[int, ...], rate: float) -> Array:
  """bool[shape], True with probability 1 - rate, element (r, ...) hashed by its global index (module
  docstring). The indices are iotas, so under SPMD sharding every shard hashes its own global indices."""
  seeds = seeds_from_key(key)
  if not shape:
    return keep_bits(jnp.uint32(0), jnp.uint32(0), seeds[0], seeds[1]) >= threshold(rate)
  if int(np.prod(shape)) < 2 ** 32:    # one block: the flat index (fewer operations per element)
    return keep_bits(jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape), jnp.uint32(0), seeds[0],
                     seeds[1]) >= threshold(rate)
  row_size = int(np.prod(shape[1:]))
  first, block_word = row_words(jax.lax.broadcasted_iota(jnp.uint32, shape, 0), row_size)
  within_row = jax.lax.iota(jnp.uint32, row_size).reshape((1,) + tuple(shape[1:]))
  return keep_bits(first + within_row, block_word, seeds[0], seeds[1]) >= threshold(rate)
