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
from gensar_jax.data.storage import open_samples
from gensar_jax.data.synthetic import WorldSpec, generate_world
from gensar_jax.data.tasks import ExampleBuilder
from gensar_jax.data.tokenizer import GenSARTokenizer, identifier_levels


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
      _, t = _timed(prepare, load_config(name), Path(tmp) / name)
      print(f"prepare {name}: {t:.1f}s (target < {5 if name == 'tiny' else 30}s)")
    prepared = load_prepared(Path(tmp) / "synthetic")
    cfg = load_config("synthetic").tasks
    levels, sem, col = identifier_levels(2, 2)
    size = load_config("synthetic").identifiers.codebook_size
    tok = GenSARTokenizer(prepared.sp_model, levels, size)
    n = prepared.dataset.num_items
    rng = np.random.default_rng(0)
    codes = rng.integers(0, size, (n, 4)).astype(np.int32)
    builder = ExampleBuilder(tok, [prepared.dataset.catalog.text(i) for i in range(n)], prepared.dataset.queries,
                             codes, codes, sem, col, max_input_len=cfg.max_input_len,
                             max_target_len=cfg.max_target_len)
    sources = open_samples(prepared.tfds_dir)
    available = {"nrip": len(sources["rec_train"]), "nsip": len(sources["search_train"]),
                 "nsqp": len(sources["search_train"]), "desc2id": n, "id2desc": n}
    src = pipeline.MixtureSource(builder, pipeline.default_fetchers(sources), available, cfg.sizes.to_dict(), 1, 0)
    batch = 64
    it = pipeline.make_train_iterator(src, batch)
    _, t_batches = _timed(lambda: [next(it) for _ in range(args.batches)])
    rec_src = sources["rec_train"]
    _, t_read = _timed(lambda: [rec_src[i % len(rec_src)] for i in range(args.batches * batch)])
    eps = args.batches * batch / t_batches
    print(f"grain batches: {eps:,.0f} examples/s; raw record reads: {args.batches * batch / t_read:,.0f} records/s; "
          f"assembly costs {t_batches / t_read:.1f}x a bare read")


if __name__ == "__main__":
  main()
