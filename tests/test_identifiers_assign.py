"""Identifier assignment: collision resolution, disambiguation, inverse maps, stats, bad input, stage."""
import numpy as np
import pytest

import identifiers_reference as ref
from gensar_jax.identifiers import assign, rqvae
from gensar_jax.io_utils import DataError, load_arrays, read_json


def _brute_force_collisions(codes):
  return len(codes) - len({tuple(row) for row in codes.tolist()})


def test_collision_helpers_match_brute_force():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 3, size=(200, 3)).astype(np.int32)
  assert assign.num_collisions(codes) == _brute_force_collisions(codes)
  groups = {}
  for item, row in enumerate(codes.tolist()):
    groups.setdefault(tuple(row), []).append(item)
  expected = sorted(items for items in groups.values() if len(items) > 1)
  assert sorted(g.tolist() for g in assign.colliding_groups(codes)) == expected
  inverse = assign.inverse_map(codes)
  assert inverse["ids"].shape[0] == len(groups) and inverse["offsets"][-1] == 200
  for j, row in enumerate(inverse["ids"].tolist()):
    assert inverse["items"][inverse["offsets"][j]:inverse["offsets"][j + 1]].tolist() == groups[tuple(row)]
  assert [tuple(r) for r in inverse["ids"].tolist()] == sorted(groups)


def test_disambiguation_level_ranks_items_within_each_id():
  codes = np.array([[1, 2], [0, 0], [1, 2], [3, 1], [1, 2], [0, 0]], np.int32)
  extended = assign.append_disambiguation_level(codes)
  np.testing.assert_array_equal(extended[:, :2], codes)
  assert extended[:, 2].tolist() == [0, 0, 1, 0, 2, 1]
  assert assign.num_collisions(extended) == 0
  with pytest.raises(ValueError, match="3 items share one identifier, more than the 2 codes"):
    assign.append_disambiguation_level(codes, num_codes=2)


def test_reencoding_equals_one_float64_sinkhorn_per_group():
  rng = np.random.default_rng(1)
  residuals = rng.normal(size=(30, 4)).astype(np.float32)
  codebook = rng.normal(size=(16, 4)).astype(np.float32)
  groups = [np.array([0, 3, 7]), np.array([1, 2]), np.arange(10, 30)]
  ours = assign.reencode_groups(groups, residuals, codebook, 0.003, 50)
  for group, codes in zip(groups, ours):
    plan = ref.sinkhorn_plan(ref.squared_distances(residuals[group], codebook), 0.003, 50)
    top2 = np.sort(plan, axis=1)[:, -2:]
    clear = top2[:, 1] > top2[:, 0] * 1.001
    np.testing.assert_array_equal(codes[clear], plan.argmax(1)[clear])


def test_resolution_separates_a_group_argmin_cannot():
  # Four items whose last residuals all sit nearest code 0 but each is second-nearest a different code.
  codebook = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [5, 5]], np.float32)
  residuals = np.array([[0.3, 0], [0, 0.3], [-0.3, 0], [0, -0.3]], np.float32)
  codes = np.array([[4, 0], [4, 0], [4, 0], [4, 0], [2, 1]], np.int32)
  residuals = np.concatenate([residuals, [[5, 5]]]).astype(np.float32)
  assert (ref.squared_distances(residuals[:4], codebook).argmin(1) == 0).all()
  resolved, rounds = assign.resolve_collisions(codes, residuals, codebook, 0.003, 50, 20)
  assert assign.num_collisions(resolved) == 0 and len(rounds) == 1
  np.testing.assert_array_equal(resolved[:, 0], codes[:, 0])
  np.testing.assert_array_equal(resolved[4], codes[4])


def test_resolution_never_increases_collisions_and_terminates():
  rng = np.random.default_rng(2)
  for trial in range(4):
    codes = rng.integers(0, 4, size=(120, 3)).astype(np.int32)
    residuals = rng.normal(size=(120, 3)).astype(np.float32)
    residuals[:10] = residuals[0]  # identical items can never be told apart
    codes[:10] = codes[0]
    codebook = rng.normal(size=(8, 3)).astype(np.float32)
    before = assign.num_collisions(codes)
    resolved, rounds = assign.resolve_collisions(codes, residuals, codebook, 0.003, 50, max_rounds=5)
    assert assign.num_collisions(resolved) <= before
    assert assign.num_collisions(resolved) == min([before, *rounds])
    assert len(rounds) == 5  # the identical group never resolves, so every round runs
    np.testing.assert_array_equal(resolved[:, :-1], codes[:, :-1])
    assert len(set(resolved[:10, -1].tolist())) == 1


def test_code_usage_and_view_stats():
  usage = assign.code_usage(np.array([0, 0, 1, 3]), 8)
  assert usage["utilization"] == 3 / 8
  p = np.array([0.5, 0.25, 0.25])
  assert usage["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
  before = np.array([[0, 1], [0, 1], [0, 1], [2, 2]])
  after = np.array([[0, 1], [0, 3], [0, 1], [2, 2]])
  stats = assign.view_stats(before, after)
  assert stats["collision_rate_before"] == 0.5 and stats["collision_rate_after"] == 0.25
  assert stats["items_sharing_an_id_before"] == 3 and stats["items_sharing_an_id_after"] == 2
  assert stats["max_items_per_id_after"] == 2 and stats["num_ids"] == 3


def test_bad_embeddings_raise_clear_errors():
  good = np.ones((5, 3), np.float32)
  with pytest.raises(DataError, match=r"semantic.npy: 4 rows, expected one per item \(5 items\)"):
    assign.validate_embeddings({"semantic": good[:4]}, 5, {"semantic": "semantic.npy"})
  nan = good.copy()
  nan[2, 1] = np.nan
  with pytest.raises(DataError, match="collab embeddings: row 2 .*NaN"):
    assign.validate_embeddings({"collab": nan}, 5)
  zero = good.copy()
  zero[3] = 0
  with pytest.raises(DataError, match="row 3 .*zero norm"):
    assign.validate_embeddings({"semantic": zero}, 5)
  with pytest.raises(DataError, match="2-D"):
    assign.validate_embeddings({"semantic": good[0]}, 5)
  with pytest.raises(DataError, match="codebook_size=8 is larger than the number of items"):
    assign.validate_embeddings({"semantic": good}, 5, codebook_size=8)


def _tiny_index_config(**overrides):
  config = rqvae.identifiers_config()
  config.update(dict(hidden_dims=(16,), latent_dim=4, codebook_size=8, batch_size=64, epochs=10,
                     warmup_epochs=1, eval_every_epochs=5, kmeans_iters=20))
  config.update(overrides)
  return config


def _embeddings(num_items=96, seed=0):
  rng = np.random.default_rng(seed)
  return {"semantic": rng.normal(size=(num_items, 12)).astype(np.float32),
          "collab": rng.normal(size=(num_items, 6)).astype(np.float32)}


@pytest.mark.slow
def test_stage_dual_ids_share_prefixes_and_outputs_round_trip(tmp_path):
  embeddings = _embeddings()
  index = assign.build_identifiers(embeddings, _tiny_index_config(), 96, progress=False)
  semantic, collab = index.codes["semantic"], index.codes["collab"]
  assert semantic.shape == collab.shape == (96, 4) and semantic.dtype == np.int32
  np.testing.assert_array_equal(semantic[:, :2], collab[:, :2])  # shared prefix for every item
  assert index.stats["shared_prefix_consistent"]
  for view in ("semantic", "collab"):
    figures = index.stats["views"][view]
    assert figures["collision_rate_after"] <= figures["collision_rate_before"]
    assert figures["collision_rate_after"] == assign.num_collisions(index.codes[view]) / 96
    np.testing.assert_array_equal(index.codes[view][:, :-1], index.argmin_codes[view][:, :-1])
  assert set(index.stats["levels"]) == {"shared_a", "shared_b", "semantic_a", "semantic_b", "collab_a", "collab_b"}
  assign.write_identifiers(tmp_path / "index", index)
  arrays = load_arrays(tmp_path / "index" / "codes.npz")
  np.testing.assert_array_equal(arrays["semantic_codes"], semantic)
  np.testing.assert_array_equal(arrays["collab_codes"], collab)
  items = arrays["collab_id_items"]
  for j in range(arrays["collab_ids"].shape[0]):
    for item in items[arrays["collab_id_offsets"][j]:arrays["collab_id_offsets"][j + 1]]:
      np.testing.assert_array_equal(collab[item], arrays["collab_ids"][j])
  assert read_json(tmp_path / "index" / "stats.json")["views"]["semantic"]["num_ids"] == index.stats["views"]["semantic"]["num_ids"]
  params = assign.unflatten_params(load_arrays(tmp_path / "index" / "rqvae_params.npz"))
  np.testing.assert_array_equal(np.asarray(params["codebooks"]["shared"]), np.asarray(index.params["codebooks"]["shared"]))


def test_stage_semantic_only_variant_with_disambiguation_is_unique():
  embeddings = _embeddings()
  del embeddings["collab"]
  config = _tiny_index_config(mode="semantic", num_shared_levels=1, num_specific_levels=1, codebook_size=8,
                              disambiguation_level=True)
  index = assign.build_identifiers(embeddings, config, 96, progress=False)
  assert index.codes["semantic"].shape == (96, 3)
  np.testing.assert_array_equal(index.codes["semantic"], index.codes["collab"])
  assert assign.num_collisions(index.codes["semantic"]) == 0
  assert index.stats["views"]["semantic"]["collision_rate_after"] > 0  # 64 IDs for 96 items must collide
  assert index.stats["views"]["semantic"]["disambiguation_codes"] == index.codes["semantic"][:, -1].max() + 1 <= 8
  assert set(index.stats["levels"]) == {"shared_a", "semantic_a"}


def test_stage_rejects_bad_input():
  embeddings = _embeddings()
  embeddings["collab"] = embeddings["collab"][:90]
  with pytest.raises(DataError, match="collab.npy: 90 rows"):
    assign.build_identifiers(embeddings, _tiny_index_config(), 96, {"collab": "collab.npy"}, progress=False)
  with pytest.raises(DataError, match="needs \\['collab'\\] embeddings"):
    assign.build_identifiers({"semantic": _embeddings()["semantic"]}, _tiny_index_config(), 96, progress=False)


def test_two_item_groups_are_colliding_groups():
  """Most collisions in a large catalogue are pairs: every helper counts them (brute force over rows)."""
  codes = np.array([[0, 1], [2, 2], [0, 1], [3, 0], [2, 2], [1, 1], [2, 2]], np.int32)
  assert [g.tolist() for g in assign.colliding_groups(codes)] == [[0, 2], [1, 4, 6]]
  pairs_only = np.array([[5, 5], [1, 0], [5, 5], [0, 0]], np.int32)
  assert [g.tolist() for g in assign.colliding_groups(pairs_only)] == [[0, 2]]
  assert assign.num_collisions(pairs_only) == _brute_force_collisions(pairs_only) == 1
  rng = np.random.default_rng(3)
  codes = rng.integers(0, 16, size=(60, 2)).astype(np.int32)    # 256 IDs for 60 items: mostly pairs
  groups = {}
  for item, row in enumerate(codes.tolist()):
    groups.setdefault(tuple(row), []).append(item)
  expected = sorted(items for items in groups.values() if len(items) > 1)
  assert any(len(items) == 2 for items in expected)
  assert sorted(g.tolist() for g in assign.colliding_groups(codes)) == expected


def test_resolution_separates_a_two_item_group():
  # Two items nearest code 0 on the last level, second-nearest codes 1 and 2: Sinkhorn splits them.
  codebook = np.array([[0, 0], [1, 0], [0, 1], [5, 5]], np.float32)
  residuals = np.array([[0.3, 0], [0, 0.3], [5, 5]], np.float32)
  codes = np.array([[1, 0], [1, 0], [2, 3]], np.int32)
  assert (ref.squared_distances(residuals[:2], codebook).argmin(1) == 0).all()
  resolved, rounds = assign.resolve_collisions(codes, residuals, codebook, 0.003, 50, 20)
  assert assign.num_collisions(resolved) == 0 and rounds == [0]
  assert len(set(resolved[:2, 1].tolist())) == 2
  np.testing.assert_array_equal(resolved[:, 0], codes[:, 0])
  np.testing.assert_array_equal(resolved[2], codes[2])
