"""SASRec: numpy forward reference, causality/alignment invariants, learning a sequential pattern."""
import jax
import numpy as np
import pytest

from gensar_jax.embed import sasrec
from gensar_jax.eval.metrics import ranking_metrics, ranks_from_scores
from gensar_jax.io_utils import DataError


NUM_ITEMS = 40  # one item count (and _tiny_cfg) for all trainings, so the compiled step is reused


def _tiny_cfg(**overrides):
  cfg = sasrec.sasrec_config()
  cfg.hidden_dim, cfg.num_heads, cfg.max_len, cfg.batch_size = 16, 2, 10, 32
  cfg.dropout, cfg.epochs, cfg.learning_rate, cfg.eval_every = 0.1, 2, 5e-3, 0
  cfg.update(overrides)
  return cfg


def _cyclic_sequences(num_users, num_items, rng):
  """Each user walks i, i+1, ... (mod num_items) from a random start."""
  starts = rng.integers(0, num_items, num_users)
  lengths = rng.integers(5, 13, num_users)
  return [(s + np.arange(n)) % num_items for s, n in zip(starts, lengths)]


def _init_model(num_items=12, hidden_dim=8, num_blocks=2, num_heads=2, max_len=6, seed=0):
  arch = dict(num_items=num_items, hidden_dim=hidden_dim, num_blocks=num_blocks, num_heads=num_heads,
              max_len=max_len)
  module = sasrec.SASRecModule(dropout=0.0, **arch)
  params = module.init(jax.random.PRNGKey(seed), np.zeros((1, max_len), np.int32))["params"]
  # Random LayerNorm affine parameters so the reference checks them too.
  leaves, tree = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_unflatten(tree, [np.asarray(x) + rng.normal(0, 0.3, np.shape(x)) for x in leaves])
  return module, params, arch


def _numpy_forward(params, tokens, max_len, num_heads):
  """Independent reference of the documented architecture (pre-LN blocks, causal + padding mask)."""
  def layer_norm(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]

  def dense(x, p):
    return x @ p["kernel"] + p["bias"]

  batch, length = tokens.shape
  d = params["item_embedding"]["embedding"].shape[1]
  valid = (tokens > 0)[..., None]
  positions = np.arange(max_len - length, max_len)
  x = params["item_embedding"]["embedding"][tokens] * np.sqrt(d) + params["position_embedding"]["embedding"][positions]
  x = x * valid
  allowed = np.tril(np.ones((length, length), bool))[None] & (tokens > 0)[:, None, :] & (tokens > 0)[:, :, None]
  block = 0
  while f"block_{block}" in params:
    p = params[f"block_{block}"]
    y = layer_norm(x, p["attention_norm"])
    att = p["attention"]
    q = np.einsum("bld,dhk->blhk", y, att["query"]["kernel"]) + att["query"]["bias"]
    k = np.einsum("bld,dhk->blhk", y, att["key"]["kernel"]) + att["key"]["bias"]
    v = np.einsum("bld,dhk->blhk", y, att["value"]["kernel"]) + att["value"]["bias"]
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(d // num_heads)
    logits = np.where(allowed[:, None], logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = np.einsum("bhqs,bshk->bqhk", weights, v)
    y = np.einsum("bqhk,hkd->bqd", context, att["out"]["kernel"]) + att["out"]["bias"]
    x = x + y
    y = layer_norm(x, p["ffn_norm"])
    x = (x + dense(np.maximum(dense(y, p["ffn_in"]), 0), p["ffn_out"])) * valid
    block += 1
  return layer_norm(x, params["final_norm"])


def test_forward_and_scores_match_numpy_reference():
  module, params, arch = _init_model()
  tokens = np.array([[0, 0, 3, 5, 7, 1], [0, 0, 0, 0, 0, 12], [2, 4, 6, 8, 10, 11]], np.int32)
  ours = np.asarray(jax.jit(module.apply)({"params": params}, tokens))
  reference = _numpy_forward(jax.device_get(params), tokens, arch["max_len"], arch["num_heads"])
  valid = tokens > 0
  np.testing.assert_allclose(ours[valid], reference[valid], atol=1e-4)

  model = sasrec.SASRecParams(params=params, **arch)
  histories = tokens - 1  # item ids, -1 padding
  candidates = np.array([[0, 1, 2], [11, 3, 3], [5, 0, 9]])
  table = sasrec.item_embeddings(model)
  assert table.shape == (12, 8) and table.dtype == np.float32
  expected = np.einsum("bd,bcd->bc", reference[:, -1], table[candidates])
  np.testing.assert_allclose(sasrec.score_candidates(model, histories, candidates, batch_size=2),
                             expected, atol=1e-4)
  # Longer histories are cut to the last max_len items, shorter ones padded on the left.
  longer = np.concatenate([np.full((3, 4), 5), histories], axis=1)
  np.testing.assert_allclose(sasrec.score_candidates(model, longer, candidates), expected, atol=1e-4)
  np.testing.assert_allclose(sasrec.score_candidates(model, histories[:, 2:], candidates)[[0, 1]],
                             expected[[0, 1]], atol=1e-4)


def test_causal_and_trimmed_windows_are_exact():
  module, params, _ = _init_model()
  tokens = np.array([[0, 0, 3, 5, 7, 1], [0, 9, 2, 4, 6, 8]], np.int32)
  apply = jax.jit(module.apply)
  full = np.asarray(apply({"params": params}, tokens))
  changed = tokens.copy()
  changed[:, -1] = 11
  prefix = np.asarray(apply({"params": params}, changed))
  np.testing.assert_allclose(prefix[:, :-1], full[:, :-1], atol=1e-6)
  assert not np.allclose(prefix[:, -1], full[:, -1])
  trimmed = np.asarray(apply({"params": params}, tokens[:1, 2:]))
  np.testing.assert_allclose(trimmed, full[:1, 2:], atol=1e-5)


def test_training_windows_right_aligned():
  inputs, targets = sasrec.training_windows([np.array([4, 1, 2]), np.array([7]), np.arange(8)], 9, 4)
  np.testing.assert_array_equal(inputs, [[0, 0, 5, 2], [4, 5, 6, 7]])
  np.testing.assert_array_equal(targets, [[0, 0, 2, 3], [5, 6, 7, 8]])
  with pytest.raises(DataError, match=r"train_sequences\[1\]: item ids must be in \[0, 9\)"):
    sasrec.training_windows([np.array([1, 2]), np.array([3, 9])], 9, 4)
  with pytest.raises(DataError, match="nothing to train"):
    sasrec.training_windows([np.array([1])], 9, 4)


def test_leave_one_out_split_and_negatives():
  sequences = [np.array([0, 1, 2, 3]), np.array([5, 6]), np.array([9, 8, 7])]
  split = sasrec.leave_one_out(sequences, 30, max_len=3, num_negatives=20, seed=0)
  assert [s.tolist() for s in split["train"]] == [[0, 1], [9]]
  np.testing.assert_array_equal(split["valid"]["histories"], [[-1, 0, 1], [-1, -1, 9]])
  np.testing.assert_array_equal(split["test"]["histories"], [[0, 1, 2], [-1, 9, 8]])
  for name, targets in (("valid", [2, 8]), ("test", [3, 7])):
    candidates = split[name]["candidates"]
    assert candidates.shape == (2, 21)
    np.testing.assert_array_equal(candidates[:, 0], targets)
    for row, seq in zip(candidates, (sequences[0], sequences[2])):
      assert len(set(row[1:].tolist())) == 20 and not set(row[1:].tolist()) & set(seq.tolist())
      assert row.min() >= 0 and row.max() < 30
  with pytest.raises(ValueError, match="unseen items"):
    sasrec.uniform_negatives([np.arange(25)], 30, 10, np.random.default_rng(0))


@pytest.mark.parametrize("num_negatives", [0, 6])
def test_learns_successor_pattern(num_negatives):
  rng = np.random.default_rng(0)
  sequences = _cyclic_sequences(200, NUM_ITEMS, rng)
  cfg = _tiny_cfg(epochs=12, num_negatives=num_negatives)
  result = sasrec.evaluate_sasrec_leave_one_out(sequences, NUM_ITEMS, cfg, seed=0, num_negatives=20,
                                                progress=False)
  assert result["test"]["HR@1"] > 0.9, result["test"]
  # A random scorer would reach HR@1 ~ 1/21; popularity carries no signal in a cyclic walk.
  assert result["model"].num_items == NUM_ITEMS


def test_deterministic_per_seed_and_roundtrip(tmp_path):
  rng = np.random.default_rng(1)
  sequences = _cyclic_sequences(64, NUM_ITEMS, rng)
  cfg = _tiny_cfg()
  first = sasrec.train_sasrec(sequences, NUM_ITEMS, cfg, seed=3, progress=False)
  second = sasrec.train_sasrec(sequences, NUM_ITEMS, cfg, seed=3, progress=False)
  other = sasrec.train_sasrec(sequences, NUM_ITEMS, cfg, seed=4, progress=False)
  np.testing.assert_array_equal(sasrec.item_embeddings(first), sasrec.item_embeddings(second))
  assert not np.allclose(sasrec.item_embeddings(first), sasrec.item_embeddings(other))

  path = tmp_path / "sasrec.npz"
  sasrec.save_sasrec(path, first)
  loaded = sasrec.load_sasrec(path)
  assert loaded.architecture() == first.architecture()
  histories = sasrec.right_aligned([s[:-1] for s in sequences[:5]], 10)
  candidates = np.tile(np.arange(NUM_ITEMS), (5, 1))
  np.testing.assert_array_equal(sasrec.score_candidates(loaded, histories, candidates),
                                sasrec.score_candidates(first, histories, candidates))


def test_validation_selects_best_epoch():
  rng = np.random.default_rng(2)
  sequences = _cyclic_sequences(120, NUM_ITEMS, rng)
  split = sasrec.leave_one_out(sequences, NUM_ITEMS, max_len=10, num_negatives=10, seed=0)
  validation = (split["valid"]["histories"], split["valid"]["candidates"])
  cfg = _tiny_cfg(epochs=4, eval_every=2)
  model = sasrec.train_sasrec(split["train"], NUM_ITEMS, cfg, seed=0, validation=validation, progress=False)
  chosen = ranking_metrics(ranks_from_scores(sasrec.score_candidates(model, *validation)))["NDCG@10"]
  for epochs in (2, 4):
    fixed = sasrec.train_sasrec(split["train"], NUM_ITEMS, _tiny_cfg(epochs=epochs), seed=0, progress=False)
    at_epoch = ranking_metrics(ranks_from_scores(sasrec.score_candidates(fixed, *validation)))["NDCG@10"]
    assert chosen >= at_epoch - 1e-9


def test_score_candidates_rejects_bad_ids():
  _, params, arch = _init_model()
  model = sasrec.SASRecParams(params=params, **arch)
  with pytest.raises(ValueError, match="candidates"):
    sasrec.score_candidates(model, np.zeros((1, 3), np.int32), np.array([[12]]))
  with pytest.raises(ValueError, match="histories"):
    sasrec.score_candidates(model, np.array([[-2, 1, 1]]), np.array([[1]]))
