"""Balanced code assignment by Sinkhorn-Knopp (the reference's last-level assignment rule).

The reference scales the distance matrix to [-1, 1], builds Q = exp(-d / epsilon) in float64 and
alternately normalizes rows (items) to 1/B and columns (codes) to 1/K, then takes each row's argmax.
With epsilon = 0.003, exp(1 / epsilon) overflows float32, so this runs the same iteration in the log
domain (row/column potentials), which is exact up to float32 rounding of the log values.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def center_distances(distances: jax.Array, row_mask: jax.Array | None = None) -> jax.Array:
  """Maps distances f32[B, K] affinely so that the valid rows span [-1, 1] (reference: centred by the
  midpoint of min and max, divided by half the range + 1e-5)."""
  if row_mask is None:
    low, high = jnp.min(distances), jnp.max(distances)
  else:
    low = jnp.min(jnp.where(row_mask[:, None], distances, jnp.inf))
    high = jnp.max(jnp.where(row_mask[:, None], distances, -jnp.inf))
  middle = (high + low) / 2
  amplitude = high - middle + 1e-5
  return (distances - middle) / amplitude


@functools.partial(jax.jit, static_argnames=("num_iters",))
def sinkhorn_log_plan(distances: jax.Array, epsilon: float, num_iters: int,
                      row_mask: jax.Array | None = None) -> jax.Array:
  """Log of the reference's transport plan Q (up to one global constant): f32[B, K].

  Each iteration normalizes every valid row to total 1/B then every column to 1/K, ending on the
  columns like the reference. Masked rows get -inf and do not count in B.
  """
  num_rows, num_codes = distances.shape
  mask = jnp.ones(num_rows, bool) if row_mask is None else row_mask.astype(bool)
  log_kernel = -center_distances(distances, mask) / epsilon
  log_kernel = jnp.where(mask[:, None], log_kernel, -jnp.inf)
  log_rows = jnp.log(jnp.sum(mask).astype(distances.dtype))
  log_codes = jnp.log(jnp.asarray(num_codes, distances.dtype))

  def iterate(_, potentials):
    _, column_potential = potentials
    row_potential = -log_rows - jax.nn.logsumexp(log_kernel + column_potential[None, :], axis=1)
    row_potential = jnp.where(mask, row_potential, -jnp.inf)
    column_potential = -log_codes - jax.nn.logsumexp(log_kernel + row_potential[:, None], axis=0)
    return row_potential, column_potential

  start = (jnp.where(mask, 0.0, -jnp.inf).astype(distances.dtype), jnp.zeros(num_codes, distances.dtype))
  row_potential, column_potential = jax.lax.fori_loop(0, num_iters, iterate, start)
  return log_kernel + row_potential[:, None] + column_potential[None, :]


def sinkhorn_assign(distances: jax.Array, epsilon: float, num_iters: int,
                    row_mask: jax.Array | None = None) -> jax.Array:
  """Balanced assignment: distances f32[B, K] -> codes int32[B].

  epsilon <= 0 means plain argmin (the reference's switch). Masked rows get argmin codes.
  """
  if epsilon <= 0:
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)
  plan = sinkhorn_log_plan(distances, epsilon, num_iters, row_mask)
  codes = jnp.argmax(plan, axis=-1).astype(jnp.int32)
  if row_mask is not None:
    codes = jnp.where(row_mask, codes, jnp.argmin(distances, axis=-1).astype(jnp.int32))
  return codes
