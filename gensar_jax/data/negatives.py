"""Negatives for the sampled evaluation protocol (METHOD.md section 4).

Recommendation: random items the user never interacted with (uniform, or popularity-weighted).
Search: the top BM25 hits of the query over item text (title + description), target removed (hard
negatives), topped up with random items when BM25 returns too few.
"""
from __future__ import annotations

import logging
import re

import bm25s
import numpy as np

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)
_TOKEN = re.compile(r"[a-z0-9]+")


def bm25_tokenize(text: str) -> list[str]:
  """Lowercased alphanumeric tokens (the same analyzer for items and queries)."""
  return _TOKEN.findall(text.lower())


def _fill_rows(candidates: np.ndarray, forbidden: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """First k entries per row that are not forbidden and not repeated. Returns (int32[n, k], complete bool[n])."""
  n, m = candidates.shape
  order = np.argsort(candidates, axis=1, kind="stable")
  sorted_c = np.take_along_axis(candidates, order, axis=1)
  dup_sorted = np.zeros_like(sorted_c, dtype=bool)
  dup_sorted[:, 1:] = sorted_c[:, 1:] == sorted_c[:, :-1]
  dup = np.empty_like(dup_sorted)
  np.put_along_axis(dup, order, dup_sorted, axis=1)
  ok = ~(dup | forbidden | (candidates < 0))
  rank = np.cumsum(ok, axis=1)
  out = np.full((n, k), -1, np.int32)
  rows, cols = np.nonzero(ok & (rank <= k))
  out[rows, rank[rows, cols] - 1] = candidates[rows, cols]
  return out, rank[:, -1] >= k


def sample_rec_negatives(user: np.ndarray, interacted_keys: np.ndarray, num_items: int, k: int,
                         rng: np.random.Generator, popularity: np.ndarray | None = None) -> np.ndarray:
  """k distinct items per row that the row's user never interacted with.

  Args:
    user: int32[n] user per evaluation event.
    interacted_keys: sorted int64 keys `user * num_items + item` of all the users' interactions.
    popularity: float[num_items] sampling weights (None = uniform).
  Returns:
    int32[n, k].
  """
  n = len(user)
  if n == 0:
    return np.zeros((0, k), np.int32)
  p = None if popularity is None else popularity / popularity.sum()
  out = np.full((n, k), -1, np.int32)
  todo = np.arange(n)
  for _ in range(64):
    m = max(2 * k, k + 16)
    cand = rng.choice(num_items, size=(len(todo), m), p=p).astype(np.int64)
    keys = user[todo, None].astype(np.int64) * num_items + cand
    pos = np.clip(np.searchsorted(interacted_keys, keys), 0, max(len(interacted_keys) - 1, 0))
    forbidden = interacted_keys[pos] == keys if len(interacted_keys) else np.zeros_like(keys, bool)
    prev = out[todo]
    merged = np.concatenate([prev, cand.astype(np.int32)], axis=1)
    forbid = np.concatenate([np.zeros_like(prev, bool), forbidden], axis=1)
    filled, complete = _fill_rows(merged, forbid, k)
    out[todo] = filled
    todo = todo[~complete]
    if not len(todo):
      return out
  raise ValueError(f"cannot sample {k} negatives for {len(todo)} users: too few items they never interacted with")


class BM25Index:
  """BM25 (Lucene variant, k1=1.5, b=0.75) over item texts, via the bm25s library."""

  def __init__(self, item_texts: list[str]):
    self.num_items = len(item_texts)
    self.retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    self.retriever.index([bm25_tokenize(t) for t in item_texts], show_progress=False)

  def top_items(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """int32[num_queries, k] item ids ranked by BM25 (-1 where the score is 0) and their float scores."""
    k = min(k, self.num_items)
    tokens = [bm25_tokenize(q) or ["<empty>"] for q in queries]
    docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    docs = np.asarray(docs, dtype=np.int32)
    scores = np.asarray(scores, dtype=np.float32)
    return np.where(scores > 0, docs, -1), scores


def search_negatives(query: np.ndarray, target: np.ndarray, queries: list[str], index: BM25Index, k: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """Top-k BM25 items for each event's query without its target, topped up with random items.

  Args:
    query: int32[n] query id per evaluation event; target: int32[n] clicked item.
  Returns:
    (int32[n, k], share of negatives that are random top-ups).
  """
  n = len(query)
  if n == 0:
    return np.zeros((0, k), np.int32), 0.0
  distinct, inverse = np.unique(query, return_inverse=True)
  hits, _ = index.top_items([queries[q] for q in distinct], k + 1)
  cand = hits[inverse]
  if cand.shape[1] < k + 1:
    cand = np.pad(cand, ((0, 0), (0, k + 1 - cand.shape[1])), constant_values=-1)
  out, complete = _fill_rows(cand.astype(np.int64), cand == target[:, None], k)
  bm25_count = (out >= 0).sum()
  todo = np.flatnonzero(~complete)
  for _ in range(64):
    if not len(todo):
      break
    rand = rng.integers(0, index.num_items, size=(len(todo), 2 * k + 16))
    merged = np.concatenate([out[todo], rand.astype(np.int32)], axis=1)
    forbid = merged == target[todo, None]
    filled, complete = _fill_rows(merged.astype(np.int64), forbid, k)
    out[todo] = filled
    todo = todo[~complete]
  if len(todo):
    raise ValueError(f"catalogue of {index.num_items} items is too small for {k} search negatives")
  return out, float(1.0 - bm25_count / out.size)
