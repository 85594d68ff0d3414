"""Histories and splits the way the reference builds them (docs/method.md, Tasks and Data).

For each event: the last `history_len` recommendation items and the last `history_len` search sessions
before it, merged by time. Ordering rule at equal times: recommendation events come first, and a search
session does not count its own purchase as history.

`reference_history=True` reproduces the leakage of the authors' history building (docs/differences.md)
that we close by default. The authors keep each user's purchases in (time, rating) order (a stable sort,
so sources without review ratings keep their source order) and count history entries in that order:
(a) a search session's recommendation history is every purchase up to its time, in (time, rating) order,
less the last of them only when that last one's item is the session's click, so with several same-time
purchases its target can stay in its input; (b) a recommendation event at source position j of its user
gets the first j purchases in (time, rating) order (the counter taken in (time, rating) order is pasted by
position onto rows in source order), so a same-time purchase listed later but rated lower sits in the
history of the one listed before it, and the test row (the last listed) can see its own target;
(c) training rows of one task whose purchase is an evaluation target of the other are kept.

Kept: events with at least one earlier rec and one earlier search event; per task, users with at least
`min_events` kept events. Split: leave-one-out per user (the last listed -> test, the one before ->
validation) or chronological 8:1:1.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from gensar_jax.data.schema import SARDataset

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")
REC, SEARCH, PAD = 0, 1, -1


@dataclasses.dataclass
class TaskSamples:
  """Kept events of one task (rows sorted by user, time).

  event: int64[n] index into the task's event arrays; user, item, query: int32[n] (query -1 for rec);
  time: int64[n]; split: int8[n]; hist_kind: int8[n, H] (REC, SEARCH, PAD); hist_item, hist_query:
  int32[n, H] (-1 where absent), oldest first, padding at the end; H = 2 * history_len.
  """
  event: np.ndarray
  user: np.ndarray
  item: np.ndarray
  query: np.ndarray
  time: np.ndarray
  split: np.ndarray
  hist_kind: np.ndarray
  hist_item: np.ndarray
  hist_query: np.ndarray

  def __len__(self) -> int:
    return len(self.event)

  def take(self, rows: np.ndarray) -> "TaskSamples":
    return TaskSamples(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))

  def split_rows(self, split: int) -> np.ndarray:
    return np.flatnonzero(self.split == split)


def _event_keys(user: np.ndarray, time: np.ndarray, time_min: int) -> np.ndarray:
  """int64 keys ordering events by (user, time)."""
  offset = time.astype(np.int64) - time_min
  if offset.size and offset.max() >= 1 << 34:
    raise ValueError("timestamps span more than 2**34 units; rescale them")
  return (user.astype(np.int64) << 34) | offset


def _window(end: np.ndarray, start: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices end-size..end-1 per row and whether each is >= start. Shapes int64[n, size], bool[n, size]."""
  idx = end[:, None] - size + np.arange(size)[None, :]
  return np.maximum(idx, 0), idx >= start[:, None]


def _last_valid(idx: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Keeps the last k valid columns of each row, order preserved."""
  order = np.argsort(valid.astype(np.int8), axis=1, kind="stable")
  idx = np.take_along_axis(idx, order, axis=1)[:, -k:]
  valid = np.take_along_axis(valid, order, axis=1)[:, -k:]
  return idx, valid


def _merge_histories(rec_idx, rec_valid, src_idx, src_valid, data: SARDataset):
  """Merges rec and search windows by (time, rec first) into left-aligned arrays (padding at the end)."""
  n, k = rec_idx.shape
  kind = np.concatenate([np.full((n, k), REC), np.full((n, k), SEARCH)], axis=1).astype(np.int8)
  valid = np.concatenate([rec_valid, src_valid], axis=1)
  time = np.concatenate([data.rec_time[rec_idx], data.search_time[src_idx]], axis=1)
  item = np.concatenate([data.rec_item[rec_idx], data.search_item[src_idx]], axis=1)
  query = np.concatenate([np.full((n, k), -1, np.int32), data.search_query[src_idx]], axis=1)
  sort_key = np.where(valid, time * 2 + kind, np.iinfo(np.int64).max)
  order = np.argsort(sort_key, axis=1, kind="stable")
  valid = np.take_along_axis(valid, order, axis=1)
  kind = np.where(valid, np.take_along_axis(kind, order, axis=1), PAD).astype(np.int8)
  item = np.where(valid, np.take_along_axis(item, order, axis=1), -1).astype(np.int32)
  query = np.where(valid & (kind == SEARCH), np.take_along_axis(query, order, axis=1), -1).astype(np.int32)
  return kind, item, query


SPLIT_METHODS = ("leave_one_out", "chronological")


def _assign_splits(user: np.ndarray, time: np.ndarray, method: str) -> np.ndarray:
  """int8[n] split per kept row (rows sorted by user, time)."""
  n = len(user)
  split = np.full(n, TRAIN, np.int8)
  if method == "leave_one_out":
    user_end = np.searchsorted(user, user, side="right")
    from_end = user_end - np.arange(n) - 1
    split[from_end == 1] = VALID
    split[from_end == 0] = TEST
  elif method == "chronological":
    order = np.lexsort((np.arange(n), user, time))
    cut_train, cut_valid = int(round(0.8 * n)), int(round(0.9 * n))
    split[order[cut_train:cut_valid]] = VALID
    split[order[cut_valid:]] = TEST
  else:
    raise ValueError(f"unknown split method {method!r}; expected 'leave_one_out' or 'chronological'")
  return split


def _filter_and_split(event, user, item, query, time, keep, hist, min_events, split_method) -> TaskSamples:
  rows = np.flatnonzero(keep)
  per_user = np.bincount(user[rows], minlength=user.max() + 1 if len(user) else 0)
  rows = rows[per_user[user[rows]] >= min_events]
  kind, hist_item, hist_query = (h[rows] for h in hist)
  split = _assign_splits(user[rows], time[rows], split_method)
  return TaskSamples(event=event[rows], user=user[rows], item=item[rows], query=query[rows], time=time[rows],
                     split=split, hist_kind=kind, hist_item=hist_item, hist_query=hist_query)


def reference_purchase_order(user: np.ndarray, time: np.ndarray, rating: np.ndarray | None) -> np.ndarray:
  """The authors' order of rec events: by (user, time, rating), ties in source order (a stable sort; NaN
  ratings last); without ratings the source order.

  Args:
    user, time: [n] rec events sorted by (user, time, source order); rating: float[n] or None.
  Returns:
    int64[n] event indices: position p holds the event at that place of the (user, time, rating) order
    (each user keeps the same span of positions as in source order).
  """
  n = len(user)
  if rating is None:
    return np.arange(n, dtype=np.int64)
  return np.lexsort((np.arange(n), rating, time, user)).astype(np.int64)


def purchases_up_to(data: SARDataset, user: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The rec events of each (user, time) at or before that time: positions [start, stop) in the rec arrays.

  Args:
    user: int[n]; time: int64[n].
  Returns:
    (start, stop) int64[n] each.
  """
  time_min = int(min(data.rec_time.min(initial=0), np.asarray(time).min(initial=0)))
  rec_key = _event_keys(data.rec_user, data.rec_time, time_min)
  start = np.searchsorted(data.rec_user, user, side="left")
  stop = np.searchsorted(rec_key, _event_keys(np.asarray(user), np.asarray(time), time_min), side="right")
  return start.astype(np.int64), stop.astype(np.int64)


def build_task_samples(data: SARDataset, *, history_len: int = 5, min_events: int = 3,
                       split_method: str = "leave_one_out", reference_history: bool = False
                       ) -> tuple[TaskSamples, TaskSamples]:
  """Recommendation and search samples with histories and splits. Returns (rec, search).

  reference_history: the authors' history building with its leaks (see the module docstring).
  """
  k = history_len
  time_min = int(min(data.rec_time.min(initial=0), data.search_time.min(initial=0)))
  rec_key = _event_keys(data.rec_user, data.rec_time, time_min)
  src_key = _event_keys(data.search_user, data.search_time, time_min)
  if (np.diff(rec_key) < 0).any() or (np.diff(src_key) < 0).any():
    raise ValueError("events must be sorted by (user, time)")
  n_rec, n_src = len(rec_key), len(src_key)

  # Recommendation events: earlier rec events in order; search sessions strictly earlier in time.
  # With reference_history the rec entries are read through the authors' (time, rating) order (b).
  order = (reference_purchase_order(data.rec_user, data.rec_time, data.rec_rating) if reference_history
           else np.arange(n_rec, dtype=np.int64))
  rec_pos = np.arange(n_rec)
  rec_start = np.searchsorted(data.rec_user, data.rec_user, side="left")
  r_idx, r_valid = _window(rec_pos, rec_start, k)
  r_idx = order[r_idx]
  user_src_start = np.searchsorted(data.search_user, data.rec_user, side="left")
  src_end = np.searchsorted(src_key, rec_key, side="left")
  s_idx, s_valid = _window(src_end, user_src_start, k)
  rec_hist = _merge_histories(r_idx, r_valid, s_idx, s_valid, data)
  rec_keep = (rec_pos > rec_start) & (src_end > user_src_start)

  # Search sessions: rec events up to and including their time except their own purchase; earlier sessions.
  src_pos = np.arange(n_src)
  own_start = np.searchsorted(data.rec_user, data.search_user, side="left")
  rec_end = np.searchsorted(rec_key, src_key, side="right")
  if reference_history:    # (a): the last purchase in (time, rating) order is dropped when its item is the click
    last = order[np.maximum(rec_end - 1, 0)]
    rec_end_hist = rec_end - ((rec_end > own_start) & (data.rec_item[last] == data.search_item))
    r_idx, r_valid = _window(rec_end_hist, own_start, k)
    r_idx = order[r_idx]
    num_rec_before = rec_end_hist - own_start
  else:
    r_idx, r_valid = _window(rec_end, own_start, k + 1)
    r_valid &= r_idx != data.search_purchase[:, None]
    r_idx, r_valid = _last_valid(r_idx, r_valid, k)
    num_rec_before = rec_end - own_start - 1
  src_start = np.searchsorted(data.search_user, data.search_user, side="left")
  s_idx, s_valid = _window(src_pos, src_start, k)
  src_hist = _merge_histories(r_idx, r_valid, s_idx, s_valid, data)
  src_keep = (num_rec_before > 0) & (src_pos > src_start)

  rec = _filter_and_split(rec_pos, data.rec_user, data.rec_item, np.full(n_rec, -1, np.int32), data.rec_time,
                          rec_keep, rec_hist, min_events, split_method)
  search = _filter_and_split(src_pos, data.search_user, data.search_item, data.search_query, data.search_time,
                             src_keep, src_hist, min_events, split_method)
  return (rec, search) if reference_history else drop_cross_task_leaks(data, rec, search)


def drop_cross_task_leaks(data: SARDataset, rec: TaskSamples, search: TaskSamples) -> tuple[TaskSamples, TaskSamples]:
  """Removes training rows of one task whose purchase is an evaluation target of the other.

  A search session's click is also a purchase, i.e. a rec event. Without this, a rec training row could
  teach the model the very purchase a search test row asks for (and vice versa). When every purchase
  is a search session (the reference setting), the held-out events of both tasks coincide and nothing
  is dropped.
  """
  search_held_out = data.search_purchase[search.event[search.split != TRAIN]]
  rec_held_out = rec.event[rec.split != TRAIN]
  rec_keep = (rec.split != TRAIN) | ~np.isin(rec.event, search_held_out)
  search_keep = (search.split != TRAIN) | ~np.isin(data.search_purchase[search.event], rec_held_out)
  return rec.take(np.flatnonzero(rec_keep)), search.take(np.flatnonzero(search_keep))
