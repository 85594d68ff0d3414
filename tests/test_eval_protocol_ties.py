"""The tie rules through the protocols' ranking (`eval.ties`): with items sharing identifiers, "item" ranks the
target after every item scoring >= it (pessimistic, one position per item) and "identifier" at its
identifier's rank (the reference's); both against an exhaustive teacher-forced ranking in numpy."""
import jax
import numpy as np
import pytest

from gensar_jax.eval import protocols
from gensar_jax.model.t5 import init_params
from test_protocols_ranking import CODEBOOK, CONFIG, TASKS, numpy_metrics, teacher_forced_item_scores

NUM_ITEMS = 30


@pytest.fixture(scope="module")
def colliding():
  """30 items on 12 distinct identifiers (groups of 1 to 5 items); targets in colliding groups."""
  params = jax.jit(lambda key: init_params(CONFIG, key))(jax.random.key(3))
  params = jax.tree.map(lambda p: p * 2.0, params)           # sharper scores: no ties between identifiers
  rng = np.random.default_rng(4)
  all_ids = np.stack(np.meshgrid(*[np.arange(CODEBOOK)] * 4, indexing="ij"), -1).reshape(-1, 4)
  distinct = all_ids[rng.choice(len(all_ids), 12, replace=False)]
  codes = distinct[np.r_[np.arange(12), rng.integers(0, 12, NUM_ITEMS - 12)]]
  _, group, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
  shared = np.flatnonzero(counts[group.reshape(-1)] > 1)
  enc = rng.integers(2, 16, size=(8, 6)).astype(np.int32)
  targets = rng.choice(shared, size=8)
  candidates = np.stack([np.r_[t, rng.choice(np.delete(np.arange(NUM_ITEMS), t), 9, replace=False)] for t in targets])
  return params, codes, enc, targets, candidates


def _replayed_ranks(scores, codes, targets, pool_of):
  """Brute force over each query's pool: (item rule, identifier rule) 0-based ranks."""
  item_ranks, identifier_ranks = [], []
  for q, target in enumerate(targets):
    pool = np.unique(pool_of(q))
    item_ranks.append(int((scores[q, pool] >= scores[q, target]).sum()) - 1)      # after every tied item
    ids = {tuple(codes[i]): scores[q, i] for i in pool}
    identifier_ranks.append(sum(s > scores[q, target] for s in ids.values()))     # one position per ID
  return np.array(item_ranks), np.array(identifier_ranks)


@pytest.mark.parametrize("protocol", ["full", "sampled"])
def test_tie_rules_are_the_exhaustive_rankings(colliding, protocol):
  params, codes, enc, targets, candidates = colliding
  behaviour, offsets = TASKS["search"]
  scores = teacher_forced_item_scores(params, enc, codes, behaviour, offsets)
  pool = (lambda q: np.arange(NUM_ITEMS)) if protocol == "full" else (lambda q: candidates[q])
  expected = dict(zip(("item", "identifier"), _replayed_ranks(scores, codes, targets, pool)))
  assert (expected["item"] > expected["identifier"]).any(), "the fixture should make the two rules differ"
  for rule in ("item", "identifier"):
    metrics, ranks = protocols.evaluate_ranking(
        params, CONFIG, enc, targets, codes, behaviour, offsets, CODEBOOK,
        None if protocol == "full" else candidates, num_beams=12, batch_size=4, ties=rule)
    np.testing.assert_array_equal(ranks, expected[rule], err_msg=f"{protocol}, ties={rule}")
    for key, value in numpy_metrics(expected[rule]).items():
      assert metrics[key] == pytest.approx(value), f"{protocol}, ties={rule}: {key}"
