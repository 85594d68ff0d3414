"""grain input pipeline: a per-epoch task mixture of padded int32 T5 batches.

Each epoch samples every task's rows according to `sizes` (the reference's unbalanced mixture: every
recommendation row once, a sample of search rows, a few of each auxiliary task), shuffled together.
Example i depends only on (seed, i): deterministic for a seed, shardable per host without overlap
(host h of n takes examples h, h+n, ...), and the iterator state can be saved and restored.
Batches are random-access sources of whole host batches (`PaddedBatches`, or length-grouped within
windows and padded to one of a few bucket widths with `BucketedBatches`, so a step pays for little padding
with a bounded number of compiled shapes). A batch reads its stored samples in one batched ArrayRecord read
per task: a single-record read costs time that grows with the file (about tenfold from Office's 39k rows to
Electronics' 243k rows per shard; docs/pods.md, rehearsal), a batched one a small constant per record.
`workers` > 0 builds batches in grain worker processes (a pod host feeds its chips from several cores).
"""
from __future__ import annotations

import functools
import threading
from typing import Callable, Mapping, Sequence

import grain
import numpy as np
from absl import flags

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
    fetch: task -> (rows -> records) for the task's stored samples, one batched read per call (see
      `default_fetchers`).
    available: rows per task; sizes: rows per task per epoch; with_replacement: tasks whose rows are
      drawn with replacement (see `sample_epoch`).
  """

  def __init__(self, builder: ExampleBuilder, fetch: Mapping[str, Callable[[int], dict]],
               available: Mapping[str, int], sizes: Mapping[str, int], num_epochs: int, seed: int,
               pseudo_queries: Sequence[Sequence[np.ndarray]] | None = None, with_replacement: Sequence[str] = ()):
    self.builder, self.fetch, self.seed = builder, fetch, seed
    self.available, self.sizes, self.num_epochs = dict(available), dict(sizes), num_epochs
    self.with_replacement = tuple(with_replacement)
    self.pseudo_queries = pseudo_queries
    self.epoch_len = len(self._plan(0)[0])

  @functools.lru_cache(maxsize=4)
  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    return sample_epoch(self.available, self.sizes, self.seed, epoch, self.with_replacement)

  def __len__(self) -> int:
    return self.epoch_len * self.num_epochs

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Example `index` padded to the builder's max_input_len / max_target_len (see `example`)."""
    inputs, targets, task = self.example(index)
    return example_features(self.builder, int(index), inputs, targets, task)

  def example(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(input ids int32[n], target ids int32[m] without EOS, task index) of example `index`, unpadded."""
    return self.examples([index])[0]

  def examples(self, indices: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """`example(i)` for each of `indices`, reading each task's stored samples in one batched read."""
    planned = []
    for index in indices:
      epoch, pos = divmod(int(index), self.epoch_len)
      task_ids, rows = self._plan(epoch)
      planned.append((int(index), TASKS[int(task_ids[pos])], int(rows[pos])))
    records = {}
    for task in sorted({task for _, task, _ in planned}):
      rows = sorted({row for _, t, row in planned if t == task})
      records.update(zip(((task, row) for row in rows), self.fetch[task](rows)))
    return [self._build(index, task, row, records[task, row]) for index, task, row in planned]

  def _build(self, index: int, task: str, row: int, record: dict) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng([self.seed, 1, index])
    template = int(rng.integers(10))
    if task == "adhoc":
      item = int(record["item"])
      options = self.pseudo_queries[item]
      record = {"item": item, "pseudo_query": options[int(rng.integers(len(options)))]}
    view = example_view(rng) if task in ("desc2id", "id2desc") else 0
    inputs, targets = self.builder.build(task, record, template=template, view=view)
    return inputs, targets, TASKS.index(task)

  def __repr__(self) -> str:
    return f"MixtureSource(epochs={self.num_epochs}, epoch_len={self.epoch_len}, sizes={self.sizes})"


def expected_target_tokens(source, sample: int = 4096, seed: int = 0) -> float:
  """Mean loss-weighted target tokens per example of epoch 0 of `source` (a `MixtureSource`), over a seeded
  sample of `sample` of its examples (all of them when the epoch is smaller): the constant the train step's
  "expected_tokens" loss normalisation multiplies by the global batch."""
  epoch = source.epoch_len
  indices = np.arange(epoch) if epoch <= sample else np.sort(
      np.random.default_rng([seed, 11]).choice(epoch, sample, replace=False))
  tokens = [float(np.sum(source.builder.to_features(inputs, targets)["decoder_loss_weights"]))
            for inputs, targets, _ in source.examples(indices)]
  return float(np.mean(tokens))


def example_features(builder: ExampleBuilder, index: int, inputs: np.ndarray, targets: np.ndarray, task: int,
                     input_width: int | None = None, target_width: int | None = None) -> dict[str, np.ndarray]:
  """One example's training features (`ExampleBuilder.to_features` at the given pad widths) plus its
  `task` (int32) and global `example_index` (int64)."""
  features = builder.to_features(inputs, targets, input_width, target_width)
  features["task"] = np.int32(task)
  features["example_index"] = np.int64(index)
  return features


def default_fetchers(sources: Mapping[str, object], item_pools: Mapping[str, np.ndarray] | None = None
                     ) -> dict[str, Callable[[Sequence[int]], list]]:
  """Batched stored-sample fetchers per task (rows -> records) from the `{rec,search}_train` sources.

  item_pools: for the item tasks (desc2id, id2desc, adhoc), int[n] the item of each row (see
  `TaskData.item_pools`); a task without one reads row r as item r.
  """
  rec, search = _batched_reader(sources["rec_train"]), _batched_reader(sources["search_train"])

  def items(task):
    pool = None if item_pools is None else item_pools.get(task)
    if pool is None:
      return lambda rows: [{"item": int(row)} for row in rows]
    return lambda rows: [{"item": int(pool[row])} for row in rows]
  return {"nrip": rec, "nsip": search, "nsqp": search,
          **{task: items(task) for task in ("desc2id", "id2desc", "adhoc")}}


def _batched_reader(source) -> Callable[[Sequence[int]], list]:
  """rows -> records: the source's batched read (`__getitems__`, as TFDS data sources have) when it has one."""
  if hasattr(source, "__getitems__"):
    return lambda rows: list(source.__getitems__(list(rows))) if len(rows) else []
  return lambda rows: [source[row] for row in rows]


# Batches built ahead by background threads: a few suffice (building a batch is a small part of a step,
# benchmarks/data_pipeline.py) and more threads only compete with the step's own threads for the cores.
PREFETCH = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def make_train_iterator(source: MixtureSource, global_batch_size: int, process_index: int = 0,
                        process_count: int = 1, length_buckets: Sequence[int] = (),
                        target_buckets: Sequence[int] = (), bucket_window: int = 16,
                        workers: int = 0) -> grain.DatasetIterator:
  """This host's iterator of batches (dicts of int32/float32 [per_host_batch, ...] arrays).

  Without `length_buckets` every batch is padded to max_input_len x max_target_len and global batch k holds
  examples [k B, (k + 1) B); host h of n takes those = h mod n (`PaddedBatches`). With `length_buckets`,
  batches are length-grouped and padded to a bucket (see `BucketedBatches`). `workers` > 0 builds the
  batches in that many grain worker processes (same batches, same order); bucketed batches need every
  example of a window in one process, so they take no workers. The iterator state saves and restores the
  position either way.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
  if workers < 0:
    raise ValueError(f"pipeline workers must be >= 0, got {workers}")
  if length_buckets:
    if workers:
      raise ValueError("length-bucketed batches are built in the training process: set tasks.pipeline_workers=0 "
                       "or tasks.length_buckets=()")
    batches = BucketedBatches(source, global_batch_size, length_buckets, target_buckets, bucket_window,
                              process_index, process_count)
  else:
    batches = PaddedBatches(source, global_batch_size, process_index, process_count)
  dataset = grain.MapDataset.source(batches).to_iter_dataset(PREFETCH)
  if workers:
    if not flags.FLAGS.is_parsed():      # grain's worker processes read absl flags; our CLI parses argparse
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(dataset)


def host_block(global_batch: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch that host `process_index` of `process_count` feeds: one contiguous block, so the
  hosts' blocks in process order (`parallel.host_local_batch_to_global`) are the batch one process would feed,
  row for row (the same examples in the same rows, hence the same dropout masks)."""
  rows = global_batch // process_count
  return slice(process_index * rows, (process_index + 1) * rows)


class PaddedBatches:
  """Random-access source of this host's training batches padded to max_input_len x max_target_len
  (grain data source protocol): batch k holds this host's block (`host_block`) of the global examples
  k B, ..., (k + 1) B - 1, B the global batch; the examples that do not fill a last global batch are dropped."""

  def __init__(self, source: MixtureSource, global_batch_size: int, process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(f"global batch {global_batch_size} cannot be split over {process_count} processes "
                       f"(process {process_index})")
    self.source, self.batch_size = source, int(global_batch_size)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.num_batches = len(source) // self.batch_size

  def __len__(self) -> int:
    return self.num_batches

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    if not 0 <= int(k) < self.num_batches:
      raise IndexError(f"batch {k} out of range ({self.num_batches} batches)")
    indices = range(int(k) * self.batch_size, (int(k) + 1) * self.batch_size)[
        host_block(self.batch_size, self.process_index, self.process_count)]
    return stack_features([example_features(self.source.builder, i, *example)
                           for i, example in zip(indices, self.source.examples(indices))])

  def __repr__(self) -> str:
    return f"PaddedBatches(batch={self.batch_size}, host {self.process_index}/{self.process_count})"


def stack_features(features: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Per-example feature dicts -> one batch dict (each key stacked along a new leading axis)."""
  return {key: np.stack([f[key] for f in features]) for key in features[0]}


def bucket_widths(buckets: Sequence[int], max_len: int) -> np.ndarray:
  """The allowed pad widths: the buckets below `max_len`, then `max_len` (int64[k], ascending)."""
  if any(int(b) <= 0 for b in buckets):
    raise ValueError(f"length buckets must be positive, got {tuple(buckets)}")
  return np.unique(np.asarray([int(b) for b in buckets if int(b) < max_len] + [int(max_len)], np.int64))


def bucket_width(length: int, widths: np.ndarray) -> int:
  """The smallest of `widths` (ascending int64[k]) that holds `length` tokens."""
  position = int(np.searchsorted(widths, length))
  if position == len(widths):
    raise ValueError(f"a sequence of {length} tokens exceeds the largest pad width {int(widths[-1])}")
  return int(widths[position])


def window_batches(lengths: np.ndarray, batch_size: int, seed: int, window: int,
                   groups: np.ndarray | None = None) -> np.ndarray:
  """Length-grouped global batches of one window: the window's positions sorted by (group, length)
  (stable, so ties keep index order), cut into consecutive batches, the batches in a seeded random order.

  Args:
    lengths: int[W * B] encoder lengths of the window's examples, in example-index order.
    groups: optional int[W * B] sort keys ranked before the length (the target bucket of each example, so
      the few long targets share batches instead of widening most of them); None sorts by length only.
  Returns:
    int64[W, B] positions into `lengths`, one row per global batch.
  """
  if len(lengths) % batch_size:
    raise ValueError(f"a window of {len(lengths)} examples is not a whole number of batches of {batch_size}")
  keys = (np.asarray(lengths),) if groups is None else (np.asarray(lengths), np.asarray(groups))
  order = np.lexsort(keys).reshape(-1, batch_size)      # lexsort is stable; its last key sorts first
  return order[np.random.default_rng([seed, 7, window]).permutation(len(order))].astype(np.int64)


class BucketedBatches:
  """Random-access source of this host's length-grouped training batches (grain data source protocol).

  The global example stream is cut into windows of `window` global batches (window w holds examples
  [w W B, (w + 1) W B)). Within a window the examples are sorted by encoder length (by target bucket first
  when there are `target_buckets`) and cut into W global batches in a seeded order (`window_batches`), so
  each batch holds examples of similar length. A batch is
  padded to the smallest of `length_buckets` (plus max_input_len) that holds its longest input, and to the
  smallest of `target_buckets` (plus max_target_len) that holds its longest target: at most
  len(length widths) x len(target widths) batch shapes, i.e. compiled train steps.

  Every host builds the whole window (all hosts need every example's length to agree on the batches and
  their widths without communicating) and keeps positions h, h + n, ... of each global batch. Batch k
  depends only on (source, k), so the grain iterator state restores exactly. A window's examples are the
  same as without bucketing; only their grouping into batches and the pad widths differ. The examples that
  do not fill a last global batch are dropped, as without bucketing.
  """

  def __init__(self, source: MixtureSource, global_batch_size: int, length_buckets: Sequence[int],
               target_buckets: Sequence[int] = (), window: int = 16, process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(f"global batch {global_batch_size} cannot be split over {process_count} processes "
                       f"(process {process_index})")
    if window < 1:
      raise ValueError(f"bucket window must be >= 1 batch, got {window}")
    self.source, self.batch_size, self.window = source, int(global_batch_size), int(window)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.input_widths = bucket_widths(length_buckets, source.builder.max_input_len)
    self.target_widths = bucket_widths(target_buckets, source.builder.max_target_len)
    self.num_batches = len(source) // self.batch_size
    self._lock = threading.Lock()
    self._cache: dict[int, tuple] = {}

  def __len__(self) -> int:
    return self.num_batches

  def _window(self, w: int) -> tuple[list, np.ndarray]:
    """(examples of window w as `MixtureSource.example` tuples, int64[W_w, B] positions per global batch)."""
    with self._lock:
      if w not in self._cache:
        start = w * self.window * self.batch_size
        stop = min(start + self.window * self.batch_size, self.num_batches * self.batch_size)
        examples = self.source.examples(range(start, stop))
        lengths = np.asarray([len(e[0]) for e in examples])
        groups = None
        if len(self.target_widths) > 1:     # target buckets: group by target width first
          target_lengths = np.asarray([self.source.builder.target_length(e[1]) for e in examples])
          groups = np.searchsorted(self.target_widths, target_lengths)
        order = window_batches(lengths, self.batch_size, self.source.seed, w, groups)
        if len(self._cache) >= 2:
          self._cache.pop(min(self._cache))
        self._cache[w] = (examples, order)
      return self._cache[w]

  def global_batch(self, k: int) -> np.ndarray:
    """int64[B] example indices of global batch k (every host's shard together)."""
    w, j = divmod(int(k), self.window)
    return w * self.window * self.batch_size + self._window(w)[1][j]

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    if not 0 <= int(k) < self.num_batches:
      raise IndexError(f"batch {k} out of range ({self.num_batches} batches)")
    w, j = divmod(int(k), self.window)
    examples, order = self._window(w)
    rows = order[j]
    builder = self.source.builder
    input_width = bucket_width(max(len(examples[r][0]) for r in rows), self.input_widths)
    target_width = bucket_width(max(builder.target_length(examples[r][1]) for r in rows), self.target_widths)
    start = w * self.window * self.batch_size
    return stack_features([example_features(builder, start + int(r), *examples[r], input_width, target_width)
                           for r in rows[host_block(self.batch_size, self.process_index, self.process_count)]])

  def __repr__(self) -> str:
    return (f"BucketedBatches(batch={self.batch_size}, window={self.window}, widths={self.input_widths.tolist()} x "
            f"{self.target_widths.tolist()}, host {self.process_index}/{self.process_count})")


SUBSET_RULES = ("most_recent", "random")


def read_all(source, chunk: int = 65_536) -> list:
  """Every record of a random-access source, in order, in batched reads of `chunk` rows."""
  read = _batched_reader(source)
  return [record for start in range(0, len(source), chunk)
          for record in read(range(start, min(start + chunk, len(source))))]


def subset_rows(time: np.ndarray, limit: int | None, rule: str, seed: int = 0) -> np.ndarray:
  """Positions of an evaluation subset of `limit` rows, ascending (all rows when limit is None or >= n).

  rule "most_recent": the `limit` rows with the latest times (the reference's rule), equal times at the
  cutoff broken by position, later first (rows are in (user, time) order, so the higher user ids are kept;
  the reference sorts with pandas' default unstable quicksort, which leaves that order unspecified);
  "random": a uniform sample without replacement seeded by `seed`
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
  records = read_all(source)
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
