"""k-means and Sinkhorn against float64 numpy references."""
import jax
import jax.numpy as jnp
import numpy as np

import identifiers_reference as ref
from gensar_jax.identifiers import kmeans as km
from gensar_jax.identifiers.sinkhorn import sinkhorn_assign, sinkhorn_log_plan


def _biased_distances(rng, rows, codes):
  """Distances where a few codes are near every row, so argmin is badly unbalanced."""
  points = rng.normal(size=(rows, 8))
  centers = rng.normal(size=(codes, 8)) * np.linspace(0.1, 3.0, codes)[:, None]
  return ref.squared_distances(points, centers).astype(np.float32)


def test_sinkhorn_matches_float64_reference_at_reference_epsilon():
  rng = np.random.default_rng(0)
  distances = _biased_distances(rng, 96, 16)
  expected_plan = ref.sinkhorn_plan(distances, 0.003, 50)
  expected = expected_plan.argmax(1)
  ours = np.asarray(sinkhorn_assign(jnp.asarray(distances), 0.003, 50))
  # Rows whose best two reference entries differ by less than 0.1% are float32 near-ties.
  top2 = np.sort(expected_plan, axis=1)[:, -2:]
  clear = top2[:, 1] > top2[:, 0] * 1.001
  assert clear.mean() > 0.8
  np.testing.assert_array_equal(ours[clear], expected[clear])
  # The log plan itself equals log(Q) up to the global constant.
  log_plan = np.asarray(sinkhorn_log_plan(jnp.asarray(distances), 0.003, 50), np.float64)
  finite = expected_plan > 1e-30
  shift = np.median(log_plan[finite] - np.log(expected_plan[finite]))
  np.testing.assert_allclose(log_plan[finite] - shift, np.log(expected_plan[finite]), atol=2e-2)


def test_sinkhorn_balances_the_assignment():
  rng = np.random.default_rng(1)
  rows, codes = 512, 16
  distances = _biased_distances(rng, rows, codes)
  argmin_counts = np.bincount(distances.argmin(1), minlength=codes)
  ours = np.asarray(sinkhorn_assign(jnp.asarray(distances), 0.003, 50))
  counts = np.bincount(ours, minlength=codes)
  assert argmin_counts.max() > 3 * rows / codes  # the input is badly unbalanced
  assert counts.min() >= 0.5 * rows / codes and counts.max() <= 1.5 * rows / codes, counts


def test_sinkhorn_epsilon_zero_and_no_iterations_are_argmin():
  rng = np.random.default_rng(2)
  distances = jnp.asarray(_biased_distances(rng, 64, 32))
  argmin = np.asarray(distances).argmin(1)
  np.testing.assert_array_equal(np.asarray(sinkhorn_assign(distances, 0.0, 50)), argmin)
  np.testing.assert_array_equal(np.asarray(sinkhorn_assign(distances, 0.003, 0)), argmin)


def test_sinkhorn_masked_rows_do_not_change_valid_rows():
  rng = np.random.default_rng(3)
  distances = _biased_distances(rng, 40, 8)
  padded = np.concatenate([distances, rng.uniform(-100, 100, size=(24, 8)).astype(np.float32)])
  mask = np.arange(64) < 40
  plain = np.asarray(sinkhorn_assign(jnp.asarray(distances), 0.003, 50))
  masked = np.asarray(sinkhorn_assign(jnp.asarray(padded), 0.003, 50, jnp.asarray(mask)))
  np.testing.assert_array_equal(masked[:40], plain)
  np.testing.assert_array_equal(masked[40:], padded[40:].argmin(1))


def _blobs(rng, clusters=8, per_cluster=40, dim=4):
  centers = rng.normal(size=(clusters, dim)) * 6
  return (centers[:, None, :] + rng.normal(size=(clusters, per_cluster, dim))).reshape(-1, dim).astype(np.float32)


def test_lloyd_matches_numpy_from_the_same_start():
  rng = np.random.default_rng(4)
  points = _blobs(rng)
  start = points[rng.choice(len(points), 8, replace=False)]
  ours = np.asarray(km.lloyd(jnp.asarray(points), jnp.asarray(start), 5, tolerance=0.0))
  np.testing.assert_allclose(ours, ref.lloyd(points, start, 5), atol=1e-4)


def test_kmeans_not_worse_than_random_initialization_and_deterministic():
  rng = np.random.default_rng(5)
  points = _blobs(rng)
  ours = np.asarray(km.kmeans(jax.random.PRNGKey(0), jnp.asarray(points), 8, 100))
  again = np.asarray(km.kmeans(jax.random.PRNGKey(0), jnp.asarray(points), 8, 100))
  np.testing.assert_array_equal(ours, again)
  ours_objective = ref.objective(points, ours)
  random_objectives = []
  for seed in range(5):
    start = points[np.random.default_rng(seed).choice(len(points), 8, replace=False)]
    random_objectives.append(ref.objective(points, ref.lloyd(points, start, 100)))
    assert ours_objective <= random_objectives[-1] * (1 + 1e-4)
  assert ours_objective < np.mean([ref.objective(points, points[np.random.default_rng(s).choice(len(points), 8)])
                                   for s in range(5)])
  # On well-separated blobs k-means++ reaches the optimum: one centre per blob.
  assert len(set(ref.squared_distances(ours, points[::40]).argmin(1))) == 8


def test_kmeans_ignores_masked_rows_and_reseeds_empty_clusters():
  rng = np.random.default_rng(6)
  points = _blobs(rng, clusters=4, per_cluster=20)
  garbage = np.full((16, points.shape[1]), 1e6, np.float32)
  padded = jnp.asarray(np.concatenate([points, garbage]))
  mask = jnp.arange(96) < 80
  centers = np.asarray(km.kmeans(jax.random.PRNGKey(1), padded, 6, 50, mask))
  assert np.abs(centers).max() < 100
  # Two identical starting centres: one cluster starts empty and must be re-seeded onto data.
  start = np.stack([points[0], points[0], points[25], points[45], points[65], points[70]])
  centers = np.asarray(km.lloyd(jnp.asarray(points), jnp.asarray(start), 20))
  counts = np.bincount(ref.squared_distances(points, centers).argmin(1), minlength=6)
  assert (counts > 0).all(), counts
