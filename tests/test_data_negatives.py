"""Negatives: recommendation samples are valid and distinct; BM25 agrees with a direct numpy BM25."""
import math
from collections import Counter

import numpy as np
import pytest

from gensar_jax.data.negatives import BM25Index, bm25_tokenize, sample_rec_negatives, search_negatives

CORPUS = [
    "wireless optical mouse with usb receiver", "mechanical keyboard with blue switches",
    "usb c charging cable braided", "wireless keyboard and mouse combo", "ergonomic office chair mesh back",
    "standing desk converter", "laser printer toner cartridge black", "ballpoint pens blue ink pack of twelve",
    "gel pens assorted colors", "printer paper letter size ream", "stapler heavy duty", "mouse pad with wrist rest",
]


def _reference_bm25(corpus, query, k1=1.5, b=0.75):
  """Okapi BM25 (Lucene idf), computed term by term."""
  docs = [bm25_tokenize(d) for d in corpus]
  n, avgdl = len(docs), sum(len(d) for d in docs) / len(docs)
  df = Counter(t for d in docs for t in set(d))
  scores = []
  for d in docs:
    tf = Counter(d)
    s = 0.0
    for t in bm25_tokenize(query):
      if t not in tf:
        continue
      idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
      s += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    scores.append(s)
  return np.asarray(scores)


@pytest.mark.parametrize("query", ["wireless mouse", "blue pens", "usb cable", "printer", "office desk chair"])
def test_bm25_matches_direct_computation(query):
  index = BM25Index(CORPUS)
  docs, scores = index.top_items([query], k=len(CORPUS))
  ref = _reference_bm25(CORPUS, query)
  found = docs[0] >= 0
  assert set(docs[0][found]) == set(np.flatnonzero(ref > 0))
  np.testing.assert_allclose(scores[0][found], ref[docs[0][found]], rtol=1e-5)
  assert (np.diff(scores[0][found]) <= 1e-7).all()


def test_search_negatives_remove_target_and_top_up():
  index = BM25Index(CORPUS)
  queries = ["wireless mouse", "stapler"]
  query = np.asarray([0, 0, 1], np.int32)
  target = np.asarray([0, 5, 10], np.int32)
  negs, topup = search_negatives(query, target, queries, index, k=6, rng=np.random.default_rng(0))
  assert negs.shape == (3, 6)
  for row in range(3):
    assert target[row] not in negs[row] and len(set(negs[row])) == 6 and (negs[row] >= 0).all()
  ranked = [i for i in index.top_items(["wireless mouse"], 12)[0][0] if i >= 0]
  assert negs[0].tolist()[:len(ranked) - 1] == [i for i in ranked if i != 0][:6]   # BM25 order first
  assert negs[1].tolist()[:3] == [i for i in ranked if i != 5][:3]
  assert topup > 0      # "stapler" matches one item only: the rest are random top-ups


@pytest.mark.parametrize("popularity", [False, True])
def test_rec_negatives_are_unseen_and_distinct(popularity):
  rng = np.random.default_rng(0)
  num_items, k = 50, 20
  user = np.repeat(np.arange(10), 3).astype(np.int32)
  seen = {u: set(rng.choice(num_items, 25, replace=False).tolist()) for u in range(10)}
  keys = np.sort(np.asarray([u * num_items + i for u, s in seen.items() for i in s], np.int64))
  weights = np.arange(1, num_items + 1, dtype=np.float64) if popularity else None
  negs = sample_rec_negatives(user, keys, num_items, k, np.random.default_rng(1), weights)
  assert negs.shape == (30, k)
  for row, u in enumerate(user):
    assert len(set(negs[row].tolist())) == k and not (set(negs[row].tolist()) & seen[int(u)])
  again = sample_rec_negatives(user, keys, num_items, k, np.random.default_rng(1), weights)
  np.testing.assert_array_equal(negs, again)


def test_rec_negatives_fail_clearly_when_impossible():
  keys = np.arange(10, dtype=np.int64)   # user 0 saw all 10 items
  with pytest.raises(ValueError, match="too few items they never interacted with"):
    sample_rec_negatives(np.zeros(1, np.int32), keys, 10, 3, np.random.default_rng(0))
