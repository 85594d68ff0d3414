"""From purchases to recommendation events and search sessions (METHOD.md section 5).

Every purchase is a recommendation event. A purchase whose item has a query (generated from its
category path the Ai et al. way, or a real Ai et al. query for that user and item) also forms a
search session at the same time: one query, one click.
"""
from __future__ import annotations

import numpy as np

from gensar_jax.data.loaders import RawData
from gensar_jax.data.schema import SARDataset
from gensar_jax.data.text import normalize_query, query_from_category_path


def item_queries_from_categories(category_paths: list[list[tuple[str, ...]]], min_levels: int = 2,
                                 singular: bool = False) -> list[list[str]]:
  """Per item, its distinct Ai et al. queries (one per category path with >= min_levels levels; words
  singularized when `singular`)."""
  out = []
  for paths in category_paths:
    queries = [query_from_category_path(p, min_levels, singular) for p in paths]
    out.append(list(dict.fromkeys(q for q in queries if q)))
  return out


def build_sar_dataset(raw: RawData, name: str, *, search_fraction: float = 1.0, seed: int = 0,
                      item_queries: list[list[str]] | None = None,
                      user_item_queries: dict[tuple[str, str], list[str]] | None = None,
                      singular_queries: bool = False) -> SARDataset:
  """Pairs purchases with queries.

  Args:
    raw: loader output.
    search_fraction: share of query-bearing purchases that become search sessions (reference: all).
    item_queries: per item, candidate queries (e.g. from category paths).
    user_item_queries: real queries per (source user id, source item id) (Ai et al. qrels); when given,
      they replace `item_queries`.
    singular_queries: singularize and de-duplicate the words of generated and real queries (the
      reference's handling of the Ai et al. queries; see `text.singularize`).
  A purchase with several candidate queries gets one drawn with the seeded generator.
  """
  if item_queries is None and user_item_queries is None:
    item_queries = item_queries_from_categories(raw.category_paths, singular=singular_queries)
  if user_item_queries is not None and singular_queries:
    user_item_queries = {pair: [normalize_query(q, singular=True) for q in queries]
                         for pair, queries in user_item_queries.items()}
  p = raw.purchases
  if user_item_queries is not None:
    users, items = raw.user_ids, raw.catalog.item_ids
    candidates = [user_item_queries.get((users[u], items[i]), []) for u, i in zip(p.user.tolist(), p.item.tolist())]
  else:
    candidates = [item_queries[i] for i in p.item.tolist()]
  return sar_from_purchase_queries(raw, name, candidates, search_fraction=search_fraction, seed=seed)


def sar_from_purchase_queries(raw: RawData, name: str, candidates: list[list[str]], *,
                              search_fraction: float = 1.0, seed: int = 0) -> SARDataset:
  """Builds the dataset from candidate queries per purchase (empty list = no search session)."""
  rng = np.random.default_rng(seed)
  p = raw.purchases
  draws = rng.random(len(p))
  picks = rng.random(len(p))
  rows, texts = [], []
  for j, cands in enumerate(candidates):
    if cands and draws[j] < search_fraction:
      rows.append(j)
      texts.append(cands[int(picks[j] * len(cands))])
  vocab = sorted(set(texts))
  qid = {q: k for k, q in enumerate(vocab)}
  rows = np.asarray(rows, dtype=np.int64)
  dataset = SARDataset(
      name=name, catalog=raw.catalog, user_ids=raw.user_ids, queries=vocab,
      rec_user=p.user.astype(np.int32), rec_item=p.item.astype(np.int32), rec_time=p.time.astype(np.int64),
      search_user=p.user[rows].astype(np.int32), search_query=np.asarray([qid[q] for q in texts], dtype=np.int32),
      search_item=p.item[rows].astype(np.int32), search_time=p.time[rows].astype(np.int64),
      search_purchase=rows)
  dataset.validate()
  return dataset
