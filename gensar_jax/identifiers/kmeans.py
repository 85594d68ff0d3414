"""Jitted k-means (k-means++ seeding, Lloyd iterations) used to initialize RQ-VAE codebooks.

Rows can be masked out (`row_mask`), so padded batches of a fixed shape cluster only their valid rows.
Empty clusters are re-seeded with the valid points farthest from their current centre, as in
scikit-learn, so every returned centre sits on data.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def squared_distances(points: jax.Array, centers: jax.Array) -> jax.Array:
  """points: f32[n, d], centers: f32[k, d] -> f32[n, k] squared Euclidean distances (clamped at 0)."""
  cross = points @ centers.T
  distances = (jnp.sum(points**2, axis=1, keepdims=True) + jnp.sum(centers**2, axis=1)[None, :]
               - 2.0 * cross)
  return jnp.maximum(distances, 0.0)


def kmeans_objective(points: jax.Array, centers: jax.Array, row_mask: jax.Array | None = None) -> jax.Array:
  """Sum over valid points of the squared distance to the nearest centre (the k-means inertia)."""
  nearest = jnp.min(squared_distances(points, centers), axis=1)
  if row_mask is not None:
    nearest = jnp.where(row_mask, nearest, 0.0)
  return jnp.sum(nearest)


def _full_mask(points: jax.Array, row_mask: jax.Array | None) -> jax.Array:
  return jnp.ones(points.shape[0], bool) if row_mask is None else row_mask.astype(bool)


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_trials"))
def kmeans_plus_plus(key: jax.Array, points: jax.Array, num_clusters: int,
                     row_mask: jax.Array | None = None, num_trials: int | None = None) -> jax.Array:
  """Greedy k-means++ seeding (as scikit-learn): the first centre is a uniform valid point; each next
  one is the best, by resulting inertia, of `num_trials` candidates (default 2 + floor(ln k)) drawn
  with probability proportional to the squared distance to the nearest centre chosen so far.

  points: f32[n, d] -> centers: f32[num_clusters, d]. Needs at least `num_clusters` valid rows.
  """
  mask = _full_mask(points, row_mask)
  trials = num_trials or 2 + int(math.log(num_clusters))
  first_key, loop_key = jax.random.split(key)
  first = jax.random.categorical(first_key, jnp.where(mask, 0.0, -jnp.inf))
  centers = jnp.zeros((num_clusters, points.shape[1]), points.dtype).at[0].set(points[first])
  nearest = jnp.where(mask, jnp.sum((points - points[first]) ** 2, axis=1), 0.0)

  def add_center(i, carry):
    centers, nearest = carry
    # If every remaining weight is 0 (duplicate points), draw uniformly over valid points.
    logits = jnp.where(jnp.sum(nearest) > 0, jnp.log(nearest), jnp.where(mask, 0.0, -jnp.inf))
    candidates = jax.random.categorical(jax.random.fold_in(loop_key, i), logits, shape=(trials,))
    candidate_nearest = jnp.minimum(nearest[None, :], squared_distances(points, points[candidates]).T)
    candidate_nearest = jnp.where(mask[None, :], candidate_nearest, 0.0)
    best = jnp.argmin(jnp.sum(candidate_nearest, axis=1))
    return centers.at[i].set(points[candidates[best]]), candidate_nearest[best]

  centers, _ = jax.lax.fori_loop(1, num_clusters, add_center, (centers, nearest))
  return centers


@functools.partial(jax.jit, static_argnames=("num_iters",))
def lloyd(points: jax.Array, centers: jax.Array, num_iters: int,
          row_mask: jax.Array | None = None, tolerance: float = 1e-4) -> jax.Array:
  """Lloyd iterations from `centers` until no centre moves by more than `tolerance` times the mean
  per-dimension variance of the data (scikit-learn's stopping rule) or `num_iters` is reached.

  points: f32[n, d], centers: f32[k, d] -> f32[k, d].
  """
  mask = _full_mask(points, row_mask)
  weights = mask.astype(points.dtype)
  num_valid = jnp.sum(weights)
  mean = jnp.sum(points * weights[:, None], axis=0) / num_valid
  variance = jnp.sum(((points - mean) ** 2) * weights[:, None], axis=0) / num_valid
  threshold = tolerance * jnp.mean(variance)
  num_clusters = centers.shape[0]

  def update(centers):
    distances = squared_distances(points, centers)
    assignment = jnp.argmin(distances, axis=1)
    one_hot = jax.nn.one_hot(assignment, num_clusters, dtype=points.dtype) * weights[:, None]
    counts = jnp.sum(one_hot, axis=0)
    sums = one_hot.T @ points
    updated = sums / jnp.maximum(counts, 1.0)[:, None]
    # Re-seed empty clusters with the valid points farthest from their assigned centre.
    own_distance = jnp.where(mask, jnp.take_along_axis(distances, assignment[:, None], axis=1)[:, 0], -1.0)
    farthest_first = jnp.argsort(-own_distance)
    empty = counts == 0
    empty_rank = jnp.cumsum(empty) - 1
    reseeded = points[farthest_first[jnp.clip(empty_rank, 0, points.shape[0] - 1)]]
    return jnp.where(empty[:, None], reseeded, updated)

  def cond(carry):
    i, _, shift = carry
    return (i < num_iters) & (shift > threshold)

  def body(carry):
    i, centers, _ = carry
    new_centers = update(centers)
    return i + 1, new_centers, jnp.sum((new_centers - centers) ** 2)

  _, centers, _ = jax.lax.while_loop(cond, body, (0, centers, jnp.asarray(jnp.inf, points.dtype)))
  return centers


def kmeans(key: jax.Array, points: jax.Array, num_clusters: int, num_iters: int = 100,
           row_mask: jax.Array | None = None) -> jax.Array:
  """k-means++ seeding then Lloyd: points f32[n, d] -> centers f32[num_clusters, d]."""
  centers = kmeans_plus_plus(key, points, num_clusters, row_mask)
  return lloyd(points, centers, num_iters, row_mask)
