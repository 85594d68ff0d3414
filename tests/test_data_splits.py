"""Histories, filters and splits against a direct per-event reimplementation of the reference rules."""
import dataclasses

import numpy as np
import pytest

from gensar_jax.data.events import sar_from_purchase_queries
from gensar_jax.data.loaders import RawData
from gensar_jax.data.schema import Catalog, Purchases
from gensar_jax.data.splits import PAD, REC, SEARCH, TEST, TRAIN, VALID, build_task_samples
from authors_notebook import hand_made_dataset, notebook_replay_of


def _random_dataset(seed, num_users=40, num_items=30, max_len=14, time_range=6, ratings=False):
  rng = np.random.default_rng(seed)
  rows = []
  for u in range(num_users):
    n = rng.integers(1, max_len)
    times = np.sort(rng.integers(0, time_range, n))     # many equal timestamps
    rows += [(u, int(rng.integers(num_items)), int(t)) for t in times]
  arr = np.asarray(rows)
  catalog = Catalog([str(i) for i in range(num_items)], [f"t{i}" for i in range(num_items)], [""] * num_items,
                    [""] * num_items, [()] * num_items)
  rating = rng.integers(1, 6, len(arr)).astype(np.float32) if ratings else None
  raw = RawData(catalog, [str(u) for u in range(num_users)],
                Purchases(arr[:, 0].astype(np.int32), arr[:, 1].astype(np.int32), arr[:, 2], rating), [[]] * num_items)
  queries = [[f"q{int(i) % 7}"] if rng.random() < 0.6 else [] for i in arr[:, 1]]
  return sar_from_purchase_queries(raw, "rand", queries, seed=seed)


def _time_rating_order(data, events):
  """rec events sorted by (time, rating), ties in source order (no ratings: by time, then source order)."""
  rating = data.rec_rating if data.rec_rating is not None else np.zeros(len(data.rec_user))
  return sorted(events, key=lambda r: (data.rec_time[r], rating[r], r))


def _reference(data, history_len, min_events, reference_history=False):
  """Per-event loops straight from the written rules (with `reference_history`, the authors' rules of
  docs/differences.md, History leakage: (a) the last purchase in (time, rating) order dropped only when its item is the
  click, (b) rec histories from the (time, rating) order, (c) no cross-task drop)."""
  out = {}
  n_rec, n_src = len(data.rec_user), len(data.search_user)
  for task in ("rec", "search"):
    kept = []
    n = n_rec if task == "rec" else n_src
    for e in range(n):
      if task == "rec":
        u, t = data.rec_user[e], data.rec_time[e]
        recs = [r for r in range(n_rec) if data.rec_user[r] == u and r < e]
        if reference_history:    # (b): the first (source position) purchases in (time, rating) order
          own = [r for r in range(n_rec) if data.rec_user[r] == u]
          recs = _time_rating_order(data, own)[:own.index(e)]
        srcs = [s for s in range(n_src) if data.search_user[s] == u and data.search_time[s] < t]
        item, query = data.rec_item[e], -1
      else:
        u, t = data.search_user[e], data.search_time[e]
        recs = [r for r in range(n_rec) if data.rec_user[r] == u and data.rec_time[r] <= t]
        if not reference_history:
          recs = [r for r in recs if r != data.search_purchase[e]]
        else:                    # (a): the last in (time, rating) order goes when its item is the click
          recs = _time_rating_order(data, recs)
          if recs and data.rec_item[recs[-1]] == data.search_item[e]:
            recs = recs[:-1]
        srcs = [s for s in range(n_src) if data.search_user[s] == u and s < e]
        item, query = data.search_item[e], data.search_query[e]
      if not recs or not srcs:
        continue
      hist = [(data.rec_time[r], REC, data.rec_item[r], -1) for r in recs[-history_len:]]
      hist += [(data.search_time[s], SEARCH, data.search_item[s], data.search_query[s]) for s in srcs[-history_len:]]
      hist.sort(key=lambda h: (h[0], h[1]))
      kept.append((u, e, item, query, [h[1:] for h in hist]))
    counts = {}
    for k in kept:
      counts[k[0]] = counts.get(k[0], 0) + 1
    kept = [k for k in kept if counts[k[0]] >= min_events]
    splits = []
    for i, k in enumerate(kept):
      later = sum(1 for j in kept[i + 1:] if j[0] == k[0])
      splits.append(TEST if later == 0 else VALID if later == 1 else TRAIN)
    out[task] = (kept, splits)
  if reference_history:
    return out
  # Cross-task leaks: a training row whose purchase is the other task's evaluation target is dropped.
  rec_eval = {k[1] for k, sp in zip(*out["rec"]) if sp != TRAIN}
  search_eval = {int(data.search_purchase[k[1]]) for k, sp in zip(*out["search"]) if sp != TRAIN}
  out["rec"] = tuple(map(list, zip(*[(k, sp) for k, sp in zip(*out["rec"]) if sp != TRAIN or k[1] not in search_eval])))
  out["search"] = tuple(map(list, zip(*[(k, sp) for k, sp in zip(*out["search"])
                                        if sp != TRAIN or int(data.search_purchase[k[1]]) not in rec_eval])))
  return out


@pytest.mark.parametrize("seed, reference_history, ratings", [(0, False, False), (1, False, False), (2, False, True),
                                                              (0, True, False), (1, True, True), (2, True, True)])
def test_histories_and_splits_match_reference(seed, reference_history, ratings):
  data = _random_dataset(seed, ratings=ratings)
  rec, search = build_task_samples(data, history_len=3, min_events=3, reference_history=reference_history)
  ref = _reference(data, 3, 3, reference_history)
  for task, got in (("rec", rec), ("search", search)):
    kept, split = ref[task]
    assert len(got) == len(kept) > 0
    np.testing.assert_array_equal(got.event, [k[1] for k in kept])
    np.testing.assert_array_equal(got.user, [k[0] for k in kept])
    np.testing.assert_array_equal(got.item, [k[2] for k in kept])
    np.testing.assert_array_equal(got.query, [k[3] for k in kept])
    np.testing.assert_array_equal(got.split, split)
    for row, k in enumerate(kept):
      hist = k[4]
      n = len(hist)
      assert got.hist_kind[row, :n].tolist() == [h[0] for h in hist]
      assert got.hist_item[row, :n].tolist() == [h[1] for h in hist]
      assert got.hist_query[row, :n].tolist() == [h[2] for h in hist]
      assert (got.hist_kind[row, n:] == PAD).all() and (got.hist_item[row, n:] == -1).all()


def test_reference_history_reproduces_the_authors_leaks():
  """With data.reference_history, a search session whose purchase is not the last of its
  same-time purchases keeps it in its input (a), and rec training rows can be search evaluation targets (c)."""
  data = _random_dataset(4, num_users=60)
  ours_rec, ours_search = build_task_samples(data, history_len=5, min_events=3)
  rec, search = build_task_samples(data, history_len=5, min_events=3, reference_history=True)
  own_purchase_item = data.rec_item[data.search_purchase[search.event]]

  def own_in_history(s, own):
    return sum(own[r] in s.hist_item[r][s.hist_kind[r] == REC] for r in range(len(s)))
  leaks = own_in_history(search, own_purchase_item)
  assert leaks > own_in_history(ours_search, data.rec_item[data.search_purchase[ours_search.event]])
  search_eval = set(data.search_purchase[search.event[search.split != TRAIN]].tolist())
  assert any(e in search_eval for e in rec.event[rec.split == TRAIN].tolist())                  # (c)
  assert not any(e in set(data.search_purchase[ours_search.event[ours_search.split != TRAIN]].tolist())
                 for e in ours_rec.event[ours_rec.split == TRAIN].tolist())
  # (b): with review ratings, a same-time target rated above a later-listed purchase sits in its own history.
  rated = _random_dataset(4, num_users=60, ratings=True)
  unrated_rec, _ = build_task_samples(dataclasses.replace(rated, rec_rating=None), history_len=5, min_events=3,
                                      reference_history=True)
  rec, _ = build_task_samples(rated, history_len=5, min_events=3, reference_history=True)

  def target_in_history(s):
    return sum(s.item[r] in s.hist_item[r][s.hist_kind[r] == REC] for r in range(len(s)))
  assert target_in_history(rec) > target_in_history(unrated_rec)


def test_search_session_never_sees_its_own_purchase():
  data = _random_dataset(3)
  _, search = build_task_samples(data, history_len=5, min_events=1)
  own_item = data.search_item[search.event]
  purchase_time = data.rec_time[data.search_purchase[search.event]]
  # An own purchase can only appear in the rec history if the same item was bought again earlier.
  for row in range(len(search)):
    recs = search.hist_item[row][search.hist_kind[row] == REC]
    if own_item[row] in recs:
      u = search.user[row]
      same = (data.rec_user == u) & (data.rec_item == own_item[row]) & (data.rec_time <= purchase_time[row])
      assert same.sum() >= 2


def test_chronological_split_is_8_1_1():
  data = _random_dataset(4, num_users=80)
  rec, _ = build_task_samples(data, history_len=5, min_events=1, split_method="chronological")
  counts = np.bincount(rec.split, minlength=3) / len(rec)
  np.testing.assert_allclose(counts, [0.8, 0.1, 0.1], atol=0.02)
  assert rec.time[rec.split == TRAIN].max() <= rec.time[rec.split == TEST].min()


def _replay_rows(replay, task):
  return [row[:3] for row in replay[task]]


def _ours(samples):
  out = []
  for r in range(len(samples)):
    hist = [("rec" if k == REC else "src", int(i), int(q))
            for k, i, q in zip(samples.hist_kind[r], samples.hist_item[r], samples.hist_query[r]) if k != PAD]
    out.append((int(samples.event[r]), int(samples.split[r]), hist))
  return out


def test_reference_history_is_the_authors_notebook_replayed():
  """data.reference_history=true gives exactly the rows, splits and histories of the authors' notebook:
  (a) the search history's last purchase in (time, rating) order dropped only when its item is the click,
  (b) the (time, rating) counter pasted by position onto rows in source order, (c) no cross-task drop."""
  data = hand_made_dataset()
  rec, search = build_task_samples(data, history_len=5, min_events=3, reference_history=True)
  replay = notebook_replay_of(data)
  assert _ours(rec) == _replay_rows(replay, "rec")
  assert _ours(search) == _replay_rows(replay, "search")


def test_hand_made_users_show_each_leak():
  """The hand-made users exercise every leak: the authors' replay has them and the default closes them."""
  data = hand_made_dataset()
  replay = notebook_replay_of(data)
  rec = {row: (split, hist) for row, split, hist, _ in replay["rec"]}
  # (b) user 0 (source order 10, 11 (day 2, rated 5), 12 (day 2, rated 3), 13, 14, 15 (day 3, ratings 2, 5, 1)):
  # 12 is given [10, 12] and the test row 15 sees itself.
  assert [h[1] for h in rec[2][1] if h[0] == "rec"] == [10, 12]
  assert rec[5][0] == TEST and 15 in [h[1] for h in rec[5][1] if h[0] == "rec"]
  # (a) user 0's session on 15 keeps 15: the last purchase of day 3 in (time, rating) order is 14.
  search = {int(data.search_item[row]): hist for row, _, hist, _ in replay["search"]}
  assert 15 in [h[1] for h in search[15] if h[0] == "rec"]
  assert 14 not in [h[1] for h in search[14] if h[0] == "rec"]
  # (c) user 1's search validation item (24) is a rec training row (the last purchase has no session).
  src_eval = {int(data.search_item[row]) for row, split, _, _ in replay["search"] if split != TRAIN}
  rec_train = {int(data.rec_item[row]) for row, split, _, _ in replay["rec"] if split == TRAIN}
  assert 24 in src_eval & rec_train
  # The default has none of them.
  ours_rec, ours_search = build_task_samples(data, history_len=5, min_events=3)
  for r in range(len(ours_rec)):
    e = ours_rec.event[r]
    user_events = np.flatnonzero(data.rec_user == data.rec_user[e])
    assert set(ours_rec.hist_item[r][ours_rec.hist_kind[r] == REC]) <= set(data.rec_item[user_events[user_events < e]])
  for r in range(len(ours_search)):
    assert ours_search.item[r] not in ours_search.hist_item[r][ours_search.hist_kind[r] == REC]
  assert not (set(data.search_purchase[ours_search.event[ours_search.split != TRAIN]])
              & set(ours_rec.event[ours_rec.split == TRAIN]))
