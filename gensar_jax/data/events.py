"""From purchases to recommendation events and search sessions (docs/method.md, Data).

Every purchase is a recommendation event. A purchase whose item has a query (generated from its
category path the Ai et al. way, or a real Ai et al. query for that user and item) also forms a
search session at the same time: one query, one click.
"""
from __future__ import annotations

import logging

import numpy as np

from gensar_jax.data.loaders import RawData
from gensar_jax.data.schema import SARDataset
from gensar_jax.data.text import normalize_query, query_from_category_path
from gensar_jax.io_utils import DataError

log = logging.getLogger(__name__)


def item_queries_from_categories(category_paths: list[list[tuple[str, ...]]], min_levels: int = 2,
                                 singular: bool = False) -> list[list[str]]:
  """Per item, its distinct Ai et al. queries (one per category path with >= min_levels levels; words
  singularized when `singular`)."""
  out = []
  for paths in category_paths:
    queries = [query_from_category_path(p, min_levels, singular) for p in paths]
    out.append(list(dict.fromkeys(q for q in queries if q)))
  return out


def unmatched_qrels(raw: RawData, qrels_lines: dict[tuple[str, str], list]) -> dict:
  """The qrels lines whose (user, item) is not a purchase in `raw`: {"lines": all lines, "unmatched",
  "unknown_user", "unknown_item", "not_purchased" (counts), "first": "file:line" of the first or None}.

  qrels_lines: {(source user id, source item id): [line count, first "file:line"]} (`loaders.load_ai_queries`).
  """
  users, items = raw.user_ids, raw.catalog.item_ids
  purchased = {(users[u], items[i]) for u, i in zip(raw.purchases.user.tolist(), raw.purchases.item.tolist())}
  known_users, known_items = set(users), set(items)
  out = {"lines": 0, "unmatched": 0, "unknown_user": 0, "unknown_item": 0, "not_purchased": 0, "first": None}
  for (user, item), (count, first) in qrels_lines.items():   # pairs in the order of their first line
    out["lines"] += count
    if (user, item) in purchased:
      continue
    kind = ("unknown_user" if user not in known_users else "unknown_item" if item not in known_items
            else "not_purchased")
    out[kind] += count
    out["unmatched"] += count
    out["first"] = out["first"] or first
  return out


def check_qrels_match(raw: RawData, qrels_lines: dict[tuple[str, str], list], name: str) -> dict:
  """Warns with the count and the first file:line when qrels lines name users or items absent from the
  reviews (they give no search session); raises DataError when no line matches a purchase."""
  found = unmatched_qrels(raw, qrels_lines)
  if not found["unmatched"]:
    return found
  detail = (f"{found['unknown_user']:,} with a user absent from the reviews, {found['unknown_item']:,} with an "
            f"item absent from them, {found['not_purchased']:,} with a pair the reviews do not have; first at "
            f"{found['first']}")
  if found["unmatched"] == found["lines"]:
    raise DataError(f"{name}: none of the {found['lines']:,} qrels lines matches a purchase of the reviews ({detail}); "
                    "check that data.query_dir holds the query files of this dataset (data.name)")
  log.warning("%s: %d of %d qrels lines match no purchase and are ignored (%s)", name, found["unmatched"],
              found["lines"], detail)
  return found


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
    if not any(candidates):
      example = next(iter(user_item_queries), None)
      raise DataError(f"{name}: the data yields no search sessions: none of the {len(p):,} purchases (users like "
                      f"{users[0]!r}, items like {items[0]!r}) is among the {len(user_item_queries):,} (user, item) "
                      f"pairs of the query files (e.g. {example}); check that data.query_dir is for this dataset")
  else:
    candidates = [item_queries[i] for i in p.item.tolist()]
    if not any(candidates):
      raise DataError(f"{name}: the data yields no search sessions: queries are generated from category paths "
                      "(Ai et al.), and no purchased item has a category path of at least 2 levels; give the "
                      "items categories or real queries (data.query_dir)")
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
  if not rows:
    with_query = sum(1 for cands in candidates if cands)
    why = (f"{with_query:,} of {len(p):,} purchases have a query, and data.search_fraction={search_fraction} "
           "drew none of them" if with_query else f"none of the {len(p):,} purchases has a query")
    raise DataError(f"{name}: the data yields no search sessions: {why}")
  rows = np.asarray(rows, dtype=np.int64)
  dataset = SARDataset(
      name=name, catalog=raw.catalog, user_ids=raw.user_ids, queries=vocab,
      rec_user=p.user.astype(np.int32), rec_item=p.item.astype(np.int32), rec_time=p.time.astype(np.int64),
      search_user=p.user[rows].astype(np.int32), search_query=np.asarray([qid[q] for q in texts], dtype=np.int32),
      search_item=p.item[rows].astype(np.int32), search_time=p.time[rows].astype(np.int64),
      search_purchase=rows, duplicates_dropped=dict(raw.duplicates), rec_rating=p.rating)
  dataset.validate()
  return dataset
