"""Negatives for the sampled evaluation protocol (docs/method.md, Evaluation protocol).

Recommendation (reference defaults): items drawn in proportion to popularity (their share of the
kept recommendation rows), excluding the user's history up to and including the evaluated event (later
purchases may be drawn); options: uniform draws, and excluding everything the user ever bought.
Search: the top BM25 hits of the query over item text (title + description), target removed (hard
negatives), topped up when BM25 returns too few with items drawn by their share of the kept search rows,
excluding the user's purchases up to the session (or uniform draws). The pools are chosen in
`prepare.build_negatives` (`data.negative_pools`).
BM25 defaults are Pyserini's (Lucene BM25, k1 = 0.9, b = 0.4, English analyzer: lowercase, possessive
"'s" removed, Lucene's 33 English stopwords, Porter stemming), via bm25s and PyStemmer.
"""
from __future__ import annotations

import logging
import re

import bm25s
import bm25s.stopwords
import numpy as np
import Stemmer

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)
_TOKEN = re.compile(r"[a-z0-9]+")
_POSSESSIVE = re.compile(r"['\u2019]s\b")
ANALYZERS = ("english", "plain")
LUCENE_ENGLISH_STOPWORDS = frozenset(bm25s.stopwords.STOPWORDS_EN)   # Lucene's EnglishAnalyzer set (33 words)
_PORTER = Stemmer.Stemmer("porter")    # the original Porter algorithm, as Lucene's PorterStemFilter


def bm25_tokenize(text: str, analyzer: str = "english") -> list[str]:
  """Tokens of `text` for BM25 (the same analyzer for items and queries).

  "english" (Pyserini's default analyzer): lowercase alphanumeric runs, possessive "'s" dropped,
  Lucene's English stopwords removed, Porter-stemmed. "plain": lowercase alphanumeric runs.
  """
  if analyzer == "plain":
    return _TOKEN.findall(text.lower())
  if analyzer != "english":
    raise ValueError(f"BM25 analyzer {analyzer!r}: expected one of {ANALYZERS}")
  tokens = [t for t in _TOKEN.findall(_POSSESSIVE.sub("", text.lower())) if t not in LUCENE_ENGLISH_STOPWORDS]
  return _PORTER.stemWords(tokens)


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


def interacted_keys(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
  """Exclusion keys "everything the user ever interacted with" for `sample_rec_negatives` (each
  evaluation row's owner is then its user).

  Args:
    user, item: int[m] all interactions.
  Returns:
    sorted unique int64 keys `user * num_items + item`.
  """
  return np.unique(np.asarray(user, np.int64) * num_items + item)


def span_keys(start: np.ndarray, stop: np.ndarray, rec_item: np.ndarray, num_items: int,
              order: np.ndarray | None = None) -> np.ndarray:
  """Exclusion keys of the rec events at positions [start[r], stop[r]) for each row r.

  Args:
    start, stop: int[n] position ranges; rec_item: int[m] item of each rec event.
    order: int64[m] event at each position (None: position p is event p).
  Returns:
    sorted unique int64 keys `row * num_items + item` (the owner of row r is r).
  """
  start = np.asarray(start, np.int64)
  length = np.maximum(np.asarray(stop, np.int64) - start, 0)
  row = np.repeat(np.arange(len(start), dtype=np.int64), length)
  position = np.repeat(start, length) + np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
  events = position if order is None else np.asarray(order, np.int64)[position]
  return np.unique(row * num_items + np.asarray(rec_item, np.int64)[events])


def history_keys(event: np.ndarray, rec_user: np.ndarray, rec_item: np.ndarray, num_items: int,
                 order: np.ndarray | None = None) -> np.ndarray:
  """Exclusion keys of the reference: each evaluation row's user history up to and including its event.

  Args:
    event: int[n] index of each evaluation row's event in the rec arrays (sorted by user, time).
    rec_user, rec_item: int[m] recommendation events.
    order: the user's earlier events are read through this order (`splits.reference_purchase_order`:
      the authors' (time, rating) list, of which an event at source position j sees the first j); None
      reads them in source order.
  Returns:
    sorted unique int64 keys `row * num_items + item` (the owner of evaluation row r is r).
  """
  event = np.asarray(event, np.int64)
  start = np.searchsorted(rec_user, rec_user[event], side="left")
  earlier = span_keys(start, event, rec_item, num_items, order)
  own = np.arange(len(event), dtype=np.int64) * num_items + np.asarray(rec_item, np.int64)[event]
  return np.union1d(earlier, own)


def sample_rec_negatives(owner: np.ndarray, forbidden_keys: np.ndarray, num_items: int, k: int,
                         rng: np.random.Generator, popularity: np.ndarray | None = None) -> np.ndarray:
  """k distinct items per row, none of them forbidden for the row's owner.

  Args:
    owner: int[n] per evaluation row, the key owner (its user with `interacted_keys`, its row index
      with `history_keys`).
    forbidden_keys: sorted int64 keys `owner * num_items + item` of the excluded (owner, item) pairs.
    popularity: float[num_items] sampling weights (None = uniform).
  Returns:
    int32[n, k].
  """
  n = len(owner)
  if n == 0:
    return np.zeros((0, k), np.int32)
  p = None if popularity is None else popularity / popularity.sum()
  out = np.full((n, k), -1, np.int32)
  todo = np.arange(n)
  for _ in range(64):
    m = max(2 * k, k + 16)
    cand = rng.choice(num_items, size=(len(todo), m), p=p).astype(np.int64)
    keys = owner[todo, None].astype(np.int64) * num_items + cand
    forbidden = _is_forbidden(keys, forbidden_keys)
    prev = out[todo]
    merged = np.concatenate([prev, cand.astype(np.int32)], axis=1)
    forbid = np.concatenate([np.zeros_like(prev, bool), forbidden], axis=1)
    filled, complete = _fill_rows(merged, forbid, k)
    out[todo] = filled
    todo = todo[~complete]
    if not len(todo):
      return out
  raise ValueError(f"cannot sample {k} negatives for {len(todo)} rows: too few items they never interacted with")


class BM25Index:
  """BM25 (Lucene variant) over item texts, via the bm25s library.

  Defaults are Pyserini's: k1 = 0.9, b = 0.4, the "english" analyzer (see `bm25_tokenize`); the
  earlier settings of this project were k1 = 1.5, b = 0.75, analyzer "plain".
  """

  def __init__(self, item_texts: list[str], k1: float = 0.9, b: float = 0.4, analyzer: str = "english"):
    self.num_items = len(item_texts)
    self.analyzer = analyzer
    self.retriever = bm25s.BM25(k1=float(k1), b=float(b), method="lucene")
    self.retriever.index([bm25_tokenize(t, analyzer) for t in item_texts], show_progress=False)

  @classmethod
  def from_config(cls, item_texts: list[str], data_cfg) -> "BM25Index":
    """The index of a `data` config section (`bm25_k1`, `bm25_b`, `bm25_analyzer`)."""
    return cls(item_texts, k1=data_cfg.get("bm25_k1", 0.9), b=data_cfg.get("bm25_b", 0.4),
               analyzer=data_cfg.get("bm25_analyzer", "english"))

  def top_items(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """int32[num_queries, k] item ids ranked by BM25 (-1 where the score is 0) and their float scores."""
    k = min(k, self.num_items)
    tokens = [bm25_tokenize(q, self.analyzer) or ["<empty>"] for q in queries]
    docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    docs = np.asarray(docs, dtype=np.int32)
    scores = np.asarray(scores, dtype=np.float32)
    return np.where(scores > 0, docs, -1), scores


def _is_forbidden(keys: np.ndarray, forbidden_keys: np.ndarray | None) -> np.ndarray:
  """Whether each of `keys` is in the sorted `forbidden_keys` (None or empty: none is)."""
  if forbidden_keys is None or not len(forbidden_keys):
    return np.zeros(keys.shape, bool)
  pos = np.clip(np.searchsorted(forbidden_keys, keys), 0, len(forbidden_keys) - 1)
  return forbidden_keys[pos] == keys


def search_negatives(query: np.ndarray, target: np.ndarray, queries: list[str], index: BM25Index, k: int,
                     rng: np.random.Generator, popularity: np.ndarray | None = None,
                     forbidden_keys: np.ndarray | None = None) -> tuple[np.ndarray, float]:
  """Top-k BM25 items for each event's query without its target, topped up with random items.

  Args:
    query: int32[n] query id per evaluation event; target: int32[n] clicked item.
    popularity: float[num_items] top-up sampling weights (the reference's); None = uniform.
    forbidden_keys: sorted int64 keys `row * num_items + item` that no top-up may be (the reference: the
      user's purchases up to the session); the BM25 hits are kept even when they are such items.
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
  p = None if popularity is None else popularity / popularity.sum()
  bm25_count = (out >= 0).sum()
  todo = np.flatnonzero(~complete)
  for _ in range(64):
    if not len(todo):
      break
    size = (len(todo), 2 * k + 16)
    rand = rng.integers(0, index.num_items, size=size) if p is None else rng.choice(index.num_items, size=size, p=p)
    merged = np.concatenate([out[todo], rand.astype(np.int32)], axis=1)
    forbid_rand = (rand == target[todo, None]) | _is_forbidden(todo[:, None] * index.num_items + rand, forbidden_keys)
    forbid = np.concatenate([np.zeros_like(out[todo], bool), forbid_rand], axis=1)
    filled, complete = _fill_rows(merged.astype(np.int64), forbid, k)
    out[todo] = filled
    todo = todo[~complete]
  if len(todo):
    raise ValueError(f"cannot top up {k} search negatives for {len(todo)} rows: too few items in the top-up pool "
                     f"of the {index.num_items}-item catalogue outside BM25's hits and the excluded items")
  return out, float(1.0 - bm25_count / out.size)
