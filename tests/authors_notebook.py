"""The authors' data preparation (TengShi-RUC/GenSAR `data/process_raw.ipynb` and
`finetune/modules/data.py`), replayed with plain Python lists for the data tests, and a hand-made dataset
whose users have same-day purchases of different ratings.

Written from the notebook, not from our code: pandas' multi-column `sort_values` is a stable sort, which
Python's `sorted` reproduces.
"""
import numpy as np

from gensar_jax.data.events import sar_from_purchase_queries
from gensar_jax.data.loaders import RawData
from gensar_jax.data.schema import Catalog, Purchases


def notebook_replay(purchases, sessions, history_len=5, min_events=3):
  """Kept rows, splits, histories and negative-sampling inputs of the authors' notebook.

  purchases: (user, item, ts, rating) in `rec_inter` order (sorted by user, ts; ties in source order);
  sessions: (user, item, ts, query) in `src_inter` order.
  Returns {"rec"/"search": [(row index, split, history, excluded items)], "rec_pool"/"search_pool": item
  lists}: history a list of (kind, item, query) oldest first ("rec"/"src"); split 0/1/2 = train/validation/
  test; excluded the items `SampleNegatives` / `SampleNegatives_src` never draw as random negatives
  (`all_his[:counter]` and the positive); the pools the item lists they draw from (`item_set`, `src_item_set`:
  the items of the kept rows, one entry per row).
  """
  # cell 24: rec rows (score = rating) and search rows (score 10000) sorted by (user, ts, score).
  sar = [("rec", i, u, t, r) for i, (u, _, t, r) in enumerate(purchases)]
  sar += [("src", i, u, t, 10000) for i, (u, _, t, _) in enumerate(sessions)]
  sar.sort(key=lambda row: (row[2], row[3], row[4]))
  # cell 25: per-user lists in that order and the counters each row sees before being appended.
  rec_his, src_session_his, all_his, counters = {}, {}, {}, []
  for kind, i, u, t, _ in sar:
    for lists in (rec_his, src_session_his, all_his):
      lists.setdefault(u, [])
    cur_rec = len(rec_his[u])
    if kind == "src" and sessions[i][1] == rec_his[u][-1][0]:
      cur_rec -= 1
    counters.append((kind, i, u, t, cur_rec, len(src_session_his[u]), len(all_his[u])))
    if kind == "rec":
      rec_his[u].append((purchases[i][1], t))
      all_his[u].append(purchases[i][1])
    else:
      src_session_his[u].append(i)
      all_his[u].append(sessions[i][1])

  def history(u, n_rec, n_src):         # data.py get_merge_rec_src_session_prompt
    recs = [(t, ("rec", item, -1)) for item, t in rec_his[u][:n_rec][-history_len:]]
    srcs = [(sessions[s][2], ("src", sessions[s][1], sessions[s][3]))
            for s in src_session_his[u][:n_src][-history_len:]]
    return [h for _, h in sorted(recs + srcs, key=lambda x: x[0])]

  def filter_rows(rows):                # cells 32-34 / 51-53
    rows = [r for r in rows if r[1] != 0 and r[2] != 0]
    per_user = {}
    for r in rows:
      per_user.setdefault(r[4], []).append(r)
    return [r for r in rows if len(per_user[r[4]]) >= min_events]

  def split_rows(rows, item_of):        # cells 35-36 / 54-55, and the exclusions of cells 39 / 58
    out = []
    for n, r in enumerate(rows):
      later = sum(1 for s in rows[n + 1:] if s[4] == r[4])
      excluded = set(all_his[r[4]][:r[3]]) | {item_of(r[0])}
      out.append((r[0], 2 if later == 0 else 1 if later == 1 else 0, history(r[4], r[1], r[2]), excluded))
    return out

  # cells 30-31: the rec frame sorted by (user, ts) gets the counters of the rec rows sorted by (user, ts),
  # pasted by position.
  rec_frame = sorted(range(len(purchases)), key=lambda i: (purchases[i][0], purchases[i][2]))
  rec_counts = sorted([c for c in counters if c[0] == "rec"], key=lambda c: (c[2], c[3]))
  rec_rows = filter_rows([(i, c[4], c[5], c[6], purchases[i][0]) for i, c in zip(rec_frame, rec_counts)])
  # cells 46-50: search rows look their counters up by session id, then sort by (user, ts).
  by_session = {c[1]: c for c in counters if c[0] == "src"}
  src_frame = sorted(range(len(sessions)), key=lambda i: (sessions[i][0], sessions[i][2]))
  src_rows = filter_rows([(i, by_session[i][4], by_session[i][5], by_session[i][6], sessions[i][0])
                          for i in src_frame])
  return {"rec": split_rows(rec_rows, lambda i: purchases[i][1]),
          "search": split_rows(src_rows, lambda i: sessions[i][1]),
          "rec_pool": [purchases[r[0]][1] for r in rec_rows],       # cell 39: item_set
          "search_pool": [sessions[r[0]][1] for r in src_rows]}     # cell 58: src_item_set


def notebook_replay_of(data, history_len=5, min_events=3):
  """`notebook_replay` of a SARDataset with ratings (its rec events are `rec_inter`, its sessions `src_inter`)."""
  purchases = [(int(u), int(i), int(t), float(r)) for u, i, t, r in
               zip(data.rec_user, data.rec_item, data.rec_time, data.rec_rating)]
  sessions = [(int(u), int(i), int(t), int(q)) for u, i, t, q in
              zip(data.search_user, data.search_item, data.search_time, data.search_query)]
  return notebook_replay(purchases, sessions, history_len, min_events)


# (user, item, day, rating, query or None), in source order. Same-day purchases with different ratings;
# user 1's last purchase has no search session, so its search validation item is a rec training row (c).
HAND_MADE = [
    (0, 10, 1, 4.0, "a"), (0, 11, 2, 5.0, "b"), (0, 12, 2, 3.0, "c"), (0, 13, 3, 2.0, "d"), (0, 14, 3, 5.0, "a"),
    (0, 15, 3, 1.0, "b"),
    (1, 20, 1, 3.0, "c"), (1, 21, 2, 1.0, "d"), (1, 22, 2, 4.0, "a"), (1, 23, 2, 2.0, "b"), (1, 24, 4, 5.0, "c"),
    (1, 25, 5, 5.0, "d"), (1, 26, 6, 3.0, None),
    (2, 30, 1, 2.0, "a"), (2, 31, 1, 5.0, "b"), (2, 32, 2, 5.0, "c"), (2, 33, 2, 5.0, "d"), (2, 34, 3, 1.0, "a"),
    (2, 35, 3, 4.0, "b"), (2, 36, 4, 2.0, "c"),
    (3, 40, 1, 5.0, "d"), (3, 41, 2, 1.0, "a"), (3, 42, 3, 4.0, None), (3, 43, 3, 2.0, "b"), (3, 44, 3, 3.0, "c"),
]


def hand_made_dataset(rows=HAND_MADE, num_items=50, texts=None):
  """A SARDataset of `rows` ((user, item, day, rating, query or None) in source order); item i's title is
  `texts[i]` (default "t<i>")."""
  arr = np.asarray([r[:3] for r in rows])
  titles = list(texts) if texts is not None else [f"t{i}" for i in range(num_items)]
  catalog = Catalog([str(i) for i in range(num_items)], titles, [""] * num_items, [""] * num_items,
                    [()] * num_items)
  rating = np.asarray([r[3] for r in rows], np.float32)
  num_users = int(arr[:, 0].max()) + 1
  raw = RawData(catalog, [str(u) for u in range(num_users)],
                Purchases(arr[:, 0].astype(np.int32), arr[:, 1].astype(np.int32), arr[:, 2], rating),
                [[]] * num_items)
  return sar_from_purchase_queries(raw, "hand", [[r[4]] if r[4] else [] for r in rows])
