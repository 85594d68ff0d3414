"""Samples at rest: a TFDS builder writing ArrayRecord files, read back with `tfds` data sources
(random access, no TensorFlow).

Splits: `{rec,search}_{train,validation,test}`. Each record: user, item, query, time, the merged history
(hist_kind, hist_item, hist_query: int32[2 * history_len]) and negatives (int32[num_negatives] for
validation/test; empty for train).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from tensorflow_datasets.core import example_serializer, hashing, split_builder

from gensar_jax.data.splits import SPLIT_NAMES, TaskSamples

DATASET_NAME = "gensar_samples"


class GensarSamples(tfds.core.GeneratorBasedBuilder):
  """Prepared GenSAR samples. Built from arrays computed by `gensar prepare` (raw files are read by the
  loaders from the config's raw-data directory, the TFDS `manual_dir` role)."""

  VERSION = tfds.core.Version("1.0.0")
  name = DATASET_NAME

  def __init__(self, *, samples: dict[str, TaskSamples] | None = None,
               negatives: dict[str, np.ndarray] | None = None, history_size: int = 10, **kwargs):
    self._samples = samples or {}
    self._negatives = negatives or {}
    self._history_size = history_size
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    h = self._history_size
    return tfds.core.DatasetInfo(
        builder=self,
        description="GenSAR search and recommendation samples with histories and evaluation negatives.",
        features=tfds.features.FeaturesDict({
            "row": np.int64, "user": np.int32, "item": np.int32, "query": np.int32, "time": np.int64,
            "hist_kind": tfds.features.Tensor(shape=(h,), dtype=np.int32),
            "hist_item": tfds.features.Tensor(shape=(h,), dtype=np.int32),
            "hist_query": tfds.features.Tensor(shape=(h,), dtype=np.int32),
            "negatives": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {f"{task}_{split}": self._generate_examples(task, s, split)
            for task in self._samples for s, split in enumerate(SPLIT_NAMES)}

  def _generate_examples(self, task: str, split: int, split_name: str):
    samples = self._samples[task]
    rows = samples.split_rows(split)
    negatives = self._negatives.get(f"{task}_{split_name}")
    for n, r in enumerate(rows):
      yield int(r), {
          "row": int(r), "user": int(samples.user[r]), "item": int(samples.item[r]),
          "query": int(samples.query[r]), "time": int(samples.time[r]),
          "hist_kind": samples.hist_kind[r].astype(np.int32), "hist_item": samples.hist_item[r],
          "hist_query": samples.hist_query[r],
          "negatives": negatives[n] if negatives is not None else np.zeros(0, np.int32)}


class _DeterministicExampleSerializer(example_serializer.ExampleSerializer):
  """tf.train.Example serialization with sorted map keys (protobuf's default order varies per process)."""

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)


@contextlib.contextmanager
def _deterministic_serialization():
  """TFDS builds its serializer inside split_builder; swap in the deterministic one while writing."""
  original = split_builder.example_serializer.ExampleSerializer
  split_builder.example_serializer.ExampleSerializer = _DeterministicExampleSerializer
  try:
    yield
  finally:
    split_builder.example_serializer.ExampleSerializer = original


def write_samples(data_dir: Path, samples: dict[str, TaskSamples], negatives: dict[str, np.ndarray],
                  history_size: int) -> Path:
  """Writes ArrayRecord files under data_dir; returns the dataset version directory."""
  builder = GensarSamples(samples=samples, negatives=negatives, history_size=history_size,
                          data_dir=str(data_dir), file_format="array_record")
  tfds.disable_progress_bar()
  absl_logging.set_verbosity(absl_logging.WARNING)
  # tfds prints "Downloading and preparing ..." to stdout; stdout is for results (`gensar prepare | ...`).
  with _deterministic_serialization(), contextlib.redirect_stdout(sys.stderr):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return Path(builder.data_dir)


def stored_order(rows: np.ndarray, split_name: str) -> np.ndarray:
  """The positions of `rows` in the order TFDS stores them in a split's ArrayRecord files: sorted by the
  split-salted hash of each example's key (the row), as its shuffler writes them."""
  hasher = hashing.Hasher(split_name)
  return np.asarray(sorted(range(len(rows)), key=lambda n: hasher.hash_key(int(rows[n]))), np.int64)


class ArraySamples:
  """One split's records served from the prepared arrays: `source[i]` and `source.__getitems__(rows)` give
  the dicts the ArrayRecord files hold, in the same order (the same keys, values and dtypes)."""

  def __init__(self, samples: TaskSamples, split: int, split_name: str, negatives: np.ndarray | None):
    rows = samples.split_rows(split)
    self._samples, self._negatives = samples, negatives
    self._positions = stored_order(rows, split_name)        # record i is split row rows[positions[i]]
    self._rows = rows[self._positions]

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> dict:
    s, r, n = self._samples, int(self._rows[index]), int(self._positions[index])
    return {"row": r, "user": int(s.user[r]), "item": int(s.item[r]), "query": int(s.query[r]),
            "time": int(s.time[r]),
            "hist_kind": s.hist_kind[r].astype(np.int32), "hist_item": s.hist_item[r].astype(np.int32),
            "hist_query": s.hist_query[r].astype(np.int32),
            "negatives": (self._negatives[n].astype(np.int32) if self._negatives is not None
                          else np.zeros(0, np.int32))}

  def __getitems__(self, indices) -> list[dict]:
    return [self[i] for i in indices]


def array_samples(samples: dict[str, TaskSamples], negatives: dict[str, np.ndarray]) -> dict:
  """The sources of `open_samples`, built from the sample arrays instead of ArrayRecord files."""
  return {f"{task}_{name}": ArraySamples(s, split, f"{task}_{name}", negatives.get(f"{task}_{name}"))
          for task, s in samples.items() for split, name in enumerate(SPLIT_NAMES)}


def open_samples(version_dir: str | Path) -> dict:
  """Random-access sources per split: {"rec_train": source, ...}; `source[i]` is a dict of numpy values."""
  builder = tfds.builder_from_directory(str(version_dir))
  return builder.as_data_source()
