"""grain input pipeline: a per-epoch task mixture of padded int32 T5 batches.

Each epoch samples every task's rows according to `sizes` (the reference's unbalanced mixture: every
recommendation row once, a sample of search rows, a few of each auxiliary task), shuffled together.
Example i depends only on (seed, i): deterministic for a seed, shardable per host without overlap
(host h of n takes examples h, h+n, ...), and the iterator state can be saved and restored.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import grain
import numpy as np

from gensar_jax.data.tasks import TASKS, ExampleBuilder

ALL_ROWS = -1


def sample_epoch(available: Mapping[str, int], sizes: Mapping[str, int], seed: int, epoch: int,
                 with_replacement: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
  """One epoch's plan: (task index int8[n], row int64[n]), shuffled.

  sizes[task] = ALL_ROWS takes every row once. Tasks in `with_replacement` draw their n rows uniformly
  with replacement (the reference's NSIP, Desc2ID and ID2Desc samples); the others take n <= available
  rows without replacement, or every row topped up with replacement when n > available. Tasks with size
  0 or no rows are skipped.
  """
  rng = np.random.default_rng([seed, epoch])
  tasks, rows = [], []
  for t, task in enumerate(TASKS):
    n_avail, want = int(available.get(task, 0)), int(sizes.get(task, 0))
    if n_avail == 0 or want == 0:
      continue
    if want == ALL_ROWS:
      chosen = np.arange(n_avail)
    elif task in with_replacement:
      chosen = np.sort(rng.integers(0, n_avail, want))
    elif want <= n_avail:
      chosen = np.sort(rng.choice(n_avail, size=want, replace=False))
    else:
      chosen = np.concatenate([np.arange(n_avail), rng.integers(0, n_avail, want - n_avail)])
    tasks.append(np.full(len(chosen), t, np.int8))
    rows.append(chosen.astype(np.int64))
  if not tasks:
    raise ValueError(f"the task mixture is empty: sizes {dict(sizes)}, available rows {dict(available)}")
  order = rng.permutation(sum(len(r) for r in rows))
  return np.concatenate(tasks)[order], np.concatenate(rows)[order]


def example_view(rng: np.random.Generator) -> int:
  """Identifier view of a desc2id / id2desc example: 0 semantic, 1 collaborative, drawn from the
  example's own generator (seeded by the example index), so every item is paired with both of its
  identifiers over the epochs (the reference alternates the view with the sample index)."""
  return int(rng.integers(2))


class MixtureSource:
  """Random-access source of training examples over `num_epochs` epochs (grain data source protocol).

  Args:
    builder: the ExampleBuilder (tokens and identifier tables).
    fetch: task -> (row -> record) for the task's stored samples (see `default_fetchers`).
    available: rows per task; sizes: rows per task per epoch; with_replacement: tasks whose rows are
      drawn with replacement (see `sample_epoch`).
  """

  def __init__(self, builder: ExampleBuilder, fetch: Mapping[str, Callable[[int], dict]],
               available: Mapping[str, int], sizes: Mapping[str, int], num_epochs: int, seed: int,
               pseudo_queries: Sequence[Sequence[np.ndarray]] | None = None, with_replacement: Sequence[str] = ()):
    self.builder, self.fetch, self.seed = builder, fetch, seed
    self.available, self.sizes, self.num_epochs = dict(available), dict(sizes), num_epochs
    unknown = sorted(set(with_replacement) - set(TASKS))
    if unknown:
      raise ValueError(f"tasks.with_replacement: unknown tasks {unknown}; expected some of {TASKS}")
    self.with_replacement = tuple(with_replacement)
    self.pseudo_queries = pseudo_queries
    self.epoch_len = len(self._plan(0)[0])

  @functools.lru_cache(maxsize=4)
  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    return sample_epoch(self.available, self.sizes, self.seed, epoch, self.with_replacement)

  def __len__(self) -> int:
    return self.epoch_len * self.num_epochs

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    epoch, pos = divmod(int(index), self.epoch_len)
    task_ids, rows = self._plan(epoch)
    task, row = TASKS[int(task_ids[pos])], int(rows[pos])
    rng = np.random.default_rng([self.seed, 1, int(index)])
    template = int(rng.integers(10))
    record = self.fetch[task](row)
    if task == "adhoc":
      options = self.pseudo_queries[row]
      record = {"item": row, "pseudo_query": options[int(rng.integers(len(options)))]}
    view = example_view(rng) if task in ("desc2id", "id2desc") else 0
    inputs, targets = self.builder.build(task, record, template=template, view=view)
    features = self.builder.to_features(inputs, targets)
    features["task"] = np.int32(TASKS.index(task))
    features["example_index"] = np.int64(index)
    return features

  def __repr__(self) -> str:
    return f"MixtureSource(epochs={self.num_epochs}, epoch_len={self.epoch_len}, sizes={self.sizes})"


def default_fetchers(sources: Mapping[str, object]) -> dict[str, Callable[[int], dict]]:
  """Stored-sample fetchers per task from the `{rec,search}_train` data sources."""
  rec, search = sources["rec_train"], sources["search_train"]
  item = lambda row: {"item": row}  # noqa: E731
  return {"nrip": rec.__getitem__, "nsip": search.__getitem__, "nsqp": search.__getitem__,
          "desc2id": item, "id2desc": item, "adhoc": item}


def make_train_iterator(source: MixtureSource, global_batch_size: int, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
  """This host's iterator of batches (dicts of int32/float32 [per_host_batch, ...] arrays)."""
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  return iter(ds.to_iter_dataset())


SUBSET_RULES = ("most_recent", "random")


def subset_rows(time: np.ndarray, limit: int | None, rule: str, seed: int = 0) -> np.ndarray:
  """Positions of an evaluation subset of `limit` rows, ascending (all rows when limit is None or >= n).

  rule "most_recent": the `limit` rows with the latest times (the reference's rule; equal times are
  broken by position, later first); "random": a uniform sample without replacement seeded by `seed`
  (for sources without timestamps, where "time" is a position in the user's list).

  Args:
    time: int64[n] event time per row.
  Returns:
    int64[min(limit, n)].
  """
  n = len(time)
  if limit is None or limit >= n:
    return np.arange(n)
  if rule == "most_recent":
    chosen = np.lexsort((np.arange(n), np.asarray(time)))[n - limit:]
  elif rule == "random":
    chosen = np.random.default_rng([seed, 11]).choice(n, size=limit, replace=False)
  else:
    raise ValueError(f"subset rule {rule!r}: expected one of {SUBSET_RULES}")
  return np.sort(chosen).astype(np.int64)


def eval_features(builder: ExampleBuilder, source, task: str, limit: int | None = None,
                  subset_rule: str = "most_recent", seed: int = 0) -> dict[str, np.ndarray]:
  """Template-0 encoder inputs for evaluation rows of one task ("nrip" or "nsip"), ordered by row.

  limit: keep a subset of this many rows chosen by `subset_rows(time, limit, subset_rule, seed)`.
  Returns encoder_input_tokens int32[n, S], target int32[n], negatives int32[n, K], row int64[n], user int32[n].
  """
  n = len(source)
  records = [source[i] for i in range(n)]
  records.sort(key=lambda r: int(r["row"]))
  if limit is not None:
    keep = subset_rows(np.asarray([int(r["time"]) for r in records], np.int64), int(limit), subset_rule, seed)
    records = [records[i] for i in keep]
  enc = np.stack([builder.to_features(builder.build(task, r)[0], np.zeros(0, np.int32))["encoder_input_tokens"]
                  for r in records]) if records else np.zeros((0, builder.max_input_len), np.int32)
  return {"encoder_input_tokens": enc,
          "target": np.asarray([int(r["item"]) for r in records], np.int32),
          "negatives": np.stack([r["negatives"] for r in records]).astype(np.int32) if records else
                       np.zeros((0, 0), np.int32),
          "row": np.asarray([int(r["row"]) for r in records], np.int64),
          "user": np.asarray([int(r["user"]) for r in records], np.int32)}
