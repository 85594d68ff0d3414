"""Negatives: recommendation samples are valid and distinct; BM25 agrees with a direct numpy BM25."""
import math
from collections import Counter

import numpy as np
import pytest

from authors_notebook import hand_made_dataset, notebook_replay_of
from gensar_jax.config import load_config
from gensar_jax.data.negatives import (BM25Index, bm25_tokenize, history_keys, interacted_keys, sample_rec_negatives,
                                       search_negatives, span_keys)
from gensar_jax.data.prepare import build_negatives, negative_pools
from gensar_jax.data.splits import TEST, VALID, build_task_samples, purchases_up_to, reference_purchase_order

CORPUS = [
    "wireless optical mouse with usb receiver", "mechanical keyboard with blue switches",
    "usb c charging cable braided", "wireless keyboard and mouse combo", "ergonomic office chair mesh back",
    "standing desk converter", "laser printer toner cartridge black", "ballpoint pens blue ink pack of twelve",
    "gel pens assorted colors", "printer paper letter size ream", "stapler heavy duty", "mouse pad with wrist rest",
]


def _reference_bm25(corpus, query, k1=0.9, b=0.4, analyzer="english"):
  """Okapi BM25 (Lucene idf), computed term by term (Pyserini's k1, b by default)."""
  docs = [bm25_tokenize(d, analyzer) for d in corpus]
  n, avgdl = len(docs), sum(len(d) for d in docs) / len(docs)
  df = Counter(t for d in docs for t in set(d))
  scores = []
  for d in docs:
    tf = Counter(d)
    s = 0.0
    for t in bm25_tokenize(query, analyzer):
      if t not in tf:
        continue
      idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
      s += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    scores.append(s)
  return np.asarray(scores)


def test_english_analyzer_is_lucene_stopwords_and_porter():
  """Pyserini's default analyzer: Lucene's 33 English stopwords, possessives, original Porter stems."""
  assert bm25_tokenize("The user's Batteries and the Chargers, running!") == ["user", "batteri", "charger", "run"]
  assert bm25_tokenize("Generalization of relational cases") == ["gener", "relat", "case"]   # Porter, not Porter2
  assert bm25_tokenize("about these cables", "plain") == ["about", "these", "cables"]
  assert bm25_tokenize("about these cables") == ["about", "cabl"]     # "about" is no Lucene stopword
  with pytest.raises(ValueError, match="analyzer"):
    bm25_tokenize("x", "klingon")


@pytest.mark.parametrize("query", ["wireless mouse", "blue pens", "usb cable", "printer", "office desk chair",
                                   "printers and pen"])
def test_bm25_matches_direct_computation(query):
  """The default index is Lucene BM25 with k1 0.9, b 0.4 and the English analyzer."""
  index = BM25Index(CORPUS)
  docs, scores = index.top_items([query], k=len(CORPUS))
  ref = _reference_bm25(CORPUS, query)
  found = docs[0] >= 0
  assert set(docs[0][found]) == set(np.flatnonzero(ref > 0))
  np.testing.assert_allclose(scores[0][found], ref[docs[0][found]], rtol=1e-5)
  assert (np.diff(scores[0][found]) <= 1e-7).all()


def test_bm25_earlier_settings_stay_an_option():
  index = BM25Index(CORPUS, k1=1.5, b=0.75, analyzer="plain")
  docs, scores = index.top_items(["blue pens"], k=len(CORPUS))
  ref = _reference_bm25(CORPUS, "blue pens", k1=1.5, b=0.75, analyzer="plain")
  found = docs[0] >= 0
  np.testing.assert_allclose(scores[0][found], ref[docs[0][found]], rtol=1e-5)
  assert set(docs[0][found]) == set(np.flatnonzero(ref > 0))


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
  keys = interacted_keys(np.repeat(np.arange(10), 25), np.concatenate([sorted(seen[u]) for u in range(10)]), num_items)
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


def test_reference_exclusion_is_the_history_up_to_the_event_and_draws_follow_popularity():
  """As the reference, rec negatives exclude the user's items up to and including the event only (a later
  purchase may be a negative) and are drawn in proportion to popularity."""
  num_items, k = 40, 12
  rec_user = np.asarray([0, 0, 0, 0, 1, 1, 1], np.int32)
  rec_item = np.asarray([3, 5, 7, 9, 5, 11, 13], np.int32)
  event = np.asarray([1, 2, 5, 6])                    # evaluation rows: events of users 0, 0, 1, 1
  keys = history_keys(event, rec_user, rec_item, num_items)
  expected = {(0, 3), (0, 5), (1, 3), (1, 5), (1, 7), (2, 5), (2, 11), (3, 5), (3, 11), (3, 13)}
  assert set(zip(*np.divmod(keys, num_items))) == expected
  popularity = np.ones(num_items)
  popularity[[7, 9, 13]] = 200.0                      # later purchases of rows 0 and 2, heavily weighted
  rows = np.repeat(np.arange(4), 50)
  row_keys = np.unique([n * num_items + i for n, r in enumerate(rows) for (q, i) in expected if q == r])
  negs = sample_rec_negatives(np.arange(len(rows)), row_keys, num_items, k, np.random.default_rng(0), popularity)
  for n, r in enumerate(rows):
    assert not {i for (q, i) in expected if q == r} & set(negs[n].tolist())
    assert len(set(negs[n].tolist())) == k
  assert np.isin(negs[rows == 0], [7, 9]).any(axis=1).mean() > 0.9      # later purchases are drawn
  assert np.isin(negs[rows == 2], [13]).any(axis=1).mean() > 0.9
  others = negs[(rows == 1) | (rows == 3)]
  share = np.stack([(others == i).any(axis=1).mean() for i in range(num_items)])
  assert share[9] > 0.9 and np.median(share[share > 0]) < 0.5       # popular items dominate where allowed


# ----------------------------------------------------------------------------- the authors' pools, replayed

def _hand_made(reference_history):
  data = hand_made_dataset()
  rec, search = build_task_samples(data, history_len=5, min_events=3, reference_history=reference_history)
  return data, {"rec": rec, "search": search}


def _keys_by_row(keys, num_items, rows):
  owner, item = np.divmod(keys, num_items)
  return [set(item[owner == r].tolist()) for r in range(rows)]


def test_negative_pools_and_exclusions_are_the_authors():
  """The kept-row pools (`item_set`, `src_item_set` of the notebook) and the items each evaluation row never
  draws (`all_his[:counter]` and the positive), against the notebook replayed on hand-made users."""
  data, samples = _hand_made(reference_history=True)     # the notebook's own rows
  replay = notebook_replay_of(data)
  rec_pool, topup_pool = negative_pools(data, samples, "kept_rows")
  assert dict(enumerate(rec_pool)) == {i: float(Counter(replay["rec_pool"])[i]) for i in range(data.num_items)}
  assert dict(enumerate(topup_pool)) == {i: float(Counter(replay["search_pool"])[i]) for i in range(data.num_items)}
  order = reference_purchase_order(data.rec_user, data.rec_time, data.rec_rating)
  for split in (VALID, TEST):
    rec = samples["rec"].take(samples["rec"].split_rows(split))
    expected = [excluded for _, s, _, excluded in replay["rec"] if s == split]
    keys = history_keys(rec.event, data.rec_user, data.rec_item, data.num_items, order)
    assert _keys_by_row(keys, data.num_items, len(rec)) == expected
    src = samples["search"].take(samples["search"].split_rows(split))
    expected = [excluded for _, s, _, excluded in replay["search"] if s == split]
    start, stop = purchases_up_to(data, src.user, src.time)
    keys = span_keys(start, stop, data.rec_item, data.num_items)
    assert _keys_by_row(keys, data.num_items, len(src)) == expected
  # all_events: every rec event counts, for both pools.
  counts = np.bincount(data.rec_item, minlength=data.num_items)
  for pool in negative_pools(data, samples, "all_events"):
    np.testing.assert_array_equal(pool, counts)


def _authors_draw_probabilities(pool, excluded, num_items):
  """P(first draw = item) of `random.choice(pool)` repeated until the item is not excluded."""
  counts = Counter(i for i in pool if i not in excluded)
  total = sum(counts.values())
  return np.asarray([counts[i] / total for i in range(num_items)])


def test_search_top_ups_follow_the_authors_pool_and_skip_the_users_purchases():
  """Queries without BM25 hits: every negative is a top-up, drawn by its share of the kept search rows,
  never one of the user's purchases up to the session (the notebook's `SampleNegatives_src`)."""
  data, samples = _hand_made(reference_history=True)
  replay = notebook_replay_of(data)
  index = BM25Index([data.catalog.text(i) for i in range(data.num_items)])
  _, pool = negative_pools(data, samples, "kept_rows")
  src = samples["search"].take(samples["search"].split_rows(TEST))
  expected_excluded = [excluded for _, s, _, excluded in replay["search"] if s == TEST]
  copies = 20_000
  row = np.repeat(np.arange(len(src)), copies)
  start, stop = purchases_up_to(data, src.user[row], src.time[row])
  forbidden = span_keys(start, stop, data.rec_item, data.num_items)
  negs, topup = search_negatives(np.zeros(len(row), np.int32), src.item[row], ["zzz"], index, 1,
                                 np.random.default_rng(0), pool, forbidden)
  assert topup == 1.0
  for r, excluded in enumerate(expected_excluded):
    drawn = np.bincount(negs[row == r, 0], minlength=data.num_items) / copies
    expected = _authors_draw_probabilities(replay["search_pool"], excluded, data.num_items)
    assert not drawn[sorted(excluded)].any()
    assert 0.5 * np.abs(drawn - expected).sum() < 0.03


def test_rec_negatives_follow_the_authors_pool():
  """Rec negatives drawn by their share of the kept rec rows, never the row's `all_his[:counter]` or its
  target (the notebook's `SampleNegatives`), with the authors' (time, rating) history."""
  data, samples = _hand_made(reference_history=True)
  replay = notebook_replay_of(data)
  pool, _ = negative_pools(data, samples, "kept_rows")
  order = reference_purchase_order(data.rec_user, data.rec_time, data.rec_rating)
  rec = samples["rec"].take(samples["rec"].split_rows(TEST))
  expected_excluded = [excluded for _, s, _, excluded in replay["rec"] if s == TEST]
  copies = 20_000
  row = np.repeat(np.arange(len(rec)), copies)
  keys = history_keys(rec.event[row], data.rec_user, data.rec_item, data.num_items, order)
  negs = sample_rec_negatives(np.arange(len(row)), keys, data.num_items, 1, np.random.default_rng(0), pool)
  for r, excluded in enumerate(expected_excluded):
    drawn = np.bincount(negs[row == r, 0], minlength=data.num_items) / copies
    expected = _authors_draw_probabilities(replay["rec_pool"], excluded, data.num_items)
    assert 0.5 * np.abs(drawn - expected).sum() < 0.03


@pytest.mark.parametrize("reference_history", [False, True])
def test_prepared_negatives_use_the_kept_row_pools_by_default(reference_history):
  """`build_negatives` at the default `data.negative_pools=kept_rows`: every rec negative is an item of the
  kept rec rows, every search top-up one of the kept search rows and none of the user's purchases up to the
  session; `all_events` keeps the earlier pools (any purchased item; top-ups skip only the target)."""
  data, samples = _hand_made(reference_history)
  cfg = load_config("tiny").data
  cfg.num_negatives = 3
  cfg.reference_history = reference_history
  negs, topup = build_negatives(data, samples, cfg, seed=0)
  assert topup["test"] == 1.0                      # no query has a BM25 hit on the "t<i>" titles
  rec_items, search_items = set(samples["rec"].item.tolist()), set(samples["search"].item.tolist())
  for split, name in ((VALID, "validation"), (TEST, "test")):
    assert set(negs[f"rec_{name}"].ravel().tolist()) <= rec_items
    assert set(negs[f"search_{name}"].ravel().tolist()) <= search_items
    src = samples["search"].take(samples["search"].split_rows(split))
    for r in range(len(src)):
      bought = data.rec_item[(data.rec_user == src.user[r]) & (data.rec_time <= src.time[r])]
      assert not set(negs[f"search_{name}"][r].tolist()) & set(bought.tolist())
  cfg.negative_pools = "all_events"
  drawn = set()
  for seed in range(20):
    old, _ = build_negatives(data, samples, cfg, seed=seed)
    drawn |= set(old["search_test"].ravel().tolist())
    src = samples["search"].take(samples["search"].split_rows(TEST))
    assert (old["search_test"] != src.item[:, None]).all()
  assert drawn - search_items                      # other purchased items are drawn under all_events
  assert drawn <= set(data.rec_item.tolist())


def test_negative_pools_typo_is_refused_before_any_work():
  with pytest.raises(ValueError, match="data.negative_pools='kept': expected one of"):
    load_config("tiny", ["data.negative_pools=kept"])


def test_search_negatives_keep_the_authors_bm25_part():
  """`SampleNegatives_src`: the top k + 10 hits, the positive removed, the first k kept; the user's history is
  not removed from them (only from the top-ups)."""
  index = BM25Index(CORPUS)
  queries = ["wireless mouse", "blue pens", "usb cable", "printer", "keyboard"]
  k = 3
  query = np.repeat(np.arange(len(queries)), len(CORPUS)).astype(np.int32)
  target = np.tile(np.arange(len(CORPUS)), len(queries)).astype(np.int32)
  history = np.arange(8)              # every row's user bought items 0-7: top-ups come from 8-11 only
  forbidden = np.unique(np.arange(len(query))[:, None] * len(CORPUS) + history[None, :])
  negs, _ = search_negatives(query, target, queries, index, k, np.random.default_rng(0), None, forbidden)
  for row, (q, pos) in enumerate(zip(query, target)):
    hits = [int(d) for d in index.top_items([queries[q]], k + 10)[0][0] if d >= 0]
    authors = [d for d in hits if d != pos][:k]
    assert negs[row, :len(authors)].tolist() == authors
    assert not set(negs[row, len(authors):].tolist()) & (set(history.tolist()) | {int(pos)})
