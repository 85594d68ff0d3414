"""Data pipeline throughput: synthetic world generation at scale, prepare per config, batch assembly.

  python benchmarks/data_pipeline.py [--items 100000 --users 90000]

Targets (issue: dataset pipeline): 100k items / 1M events generated in under a minute; the default
synthetic config prepared in under 30 s, tiny in under 5 s. Baseline in the same run: reading the
prepared samples back (the floor any pipeline pays) next to building batches from them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from gensar_jax.config import load_config
from gensar_jax.data import pipeline
from gensar_jax.data.events import sar_from_purchase_queries
from gensar_jax.data.prepare import load_prepared, prepare
from gensar_jax.data.splits import build_task_samples
from gensar_jax.data.synthetic import WorldSpec, generate_world
from gensar_jax.data.task_data import load_task_data


def _timed(fn, *args, **kwargs):
  t = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - t


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--items", type=int, default=100_000)
  parser.add_argument("--users", type=int, default=100_000)
  parser.add_argument("--batches", type=int, default=50)
  args = parser.parse_args()

  (raw, queries), t_gen = _timed(generate_world, WorldSpec(num_items=args.items, num_users=args.users,
                                                           mean_sequence_length=11.5))
  data, t_pair = _timed(sar_from_purchase_queries, raw, "bench", queries)
  (rec, search), t_split = _timed(build_task_samples, data)
  print(f"world: {len(raw.catalog):,} items, {len(raw.purchases):,} purchases; generate {t_gen:.1f}s, "
        f"queries {t_pair:.1f}s, histories+splits {t_split:.1f}s ({len(rec):,} rec, {len(search):,} search samples); "
        f"total {t_gen + t_pair + t_split:.1f}s (target < 60s)")

  with tempfile.TemporaryDirectory() as tmp:
    for name in ("tiny", "synthetic"):
      _, t = _timed(prepare, load_config(name), Path(tmp) / name / "prepare")
      print(f"prepare {name}: {t:.1f}s (target < {5 if name == 'tiny' else 30}s)")
    config = load_config("synthetic")
    n = load_prepared(Path(tmp) / "synthetic" / "prepare").dataset.num_items
    rng = np.random.default_rng(0)
    codes = rng.integers(0, config.identifiers.codebook_size, (n, 4)).astype(np.int32)
    task_data = load_task_data(Path(tmp) / "synthetic", config, codes={"semantic": codes, "collab": codes})   # random identifiers
    src = task_data.mixture(config.tasks.sizes.to_dict(), 1, 0)
    sources = task_data.sources
    batch = 64
    # Baseline first: grain's iterator keeps prefetching in background threads once started.
    rec_src = sources["rec_train"]
    _, t_read = _timed(lambda: [rec_src[i % len(rec_src)] for i in range(args.batches * batch)])
    it = pipeline.make_train_iterator(src, batch)
    _, t_batches = _timed(lambda: [next(it) for _ in range(args.batches)])
    eps = args.batches * batch / t_batches
    print(f"grain batches: {eps:,.0f} examples/s; raw record reads: {args.batches * batch / t_read:,.0f} records/s; "
          f"building examples costs {t_batches / t_read:.1f}x reading the records")


if __name__ == "__main__":
  main()
