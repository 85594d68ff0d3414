"""Data pipeline throughput: synthetic world generation at scale, prepare per config, batch assembly.

  python -m benchmarks.data_pipeline [--items 100000 --users 100000 --repeats 5]

Targets: 100k items / 1M events generated in under a minute; the default
synthetic config prepared in under 30 s, tiny in under 5 s. Baseline in the same run: reading the
prepared samples back (the floor any pipeline pays) next to building batches from them.
Every part runs as a pinned worker of `benchmarks/harness.py` (1 thread and all cores, interleaved
calls, median/min/max). Results: results/benchmarks/data_pipeline.json.
"""
from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

from benchmarks import harness
from benchmarks.prepared import random_code_task_data
from gensar_jax.config import load_config
from gensar_jax.data import pipeline
from gensar_jax.data.events import sar_from_purchase_queries
from gensar_jax.data.prepare import prepare
from gensar_jax.data.splits import build_task_samples
from gensar_jax.data.synthetic import WorldSpec, generate_world

BATCH = 64
PARTS = ("world", "prepare_tiny", "prepare_synthetic", "grain_batches", "record_reads")


def make_world(spec: dict) -> harness.Workload:
  """One call = generating the synthetic world, pairing queries and building histories + splits."""
  def run():
    raw, queries = generate_world(WorldSpec(num_items=spec["items"], num_users=spec["users"],
                                            mean_sequence_length=11.5))
    data = sar_from_purchase_queries(raw, "bench", queries)
    rec, search = build_task_samples(data)
    return {"items": len(raw.catalog), "purchases": len(raw.purchases), "rec": len(rec), "search": len(search)}
  return harness.Workload(run, {})


def make_prepare(spec: dict) -> harness.Workload:
  """One call = `prepare` of the named config into a fresh temporary directory."""
  config = load_config(spec["config"])

  def run():
    with tempfile.TemporaryDirectory() as tmp:
      prepare(config, Path(tmp) / "prepare")
  return harness.Workload(run, {"config": spec["config"]})


def _task_data(workdir: Path):
  """The prepared synthetic config's task data with random identifiers (workdir removed at exit)."""
  atexit.register(shutil.rmtree, workdir, True)
  config = load_config("synthetic")
  return config, random_code_task_data(workdir, config)


def make_batches(spec: dict) -> harness.Workload:
  """One call = `spec['batches']` grain training batches of 64 from a fresh iterator over the synthetic
  config's mixture (start-up included). A persistent iterator would keep reading ahead in background
  threads during the other sides' calls, on the same pinned CPUs, which made the first harness run of
  this part meaningless; the iterator is dropped at the end of each call instead."""
  tmp = tempfile.mkdtemp()
  config, task_data = _task_data(Path(tmp))
  mixture = task_data.mixture(config.tasks.sizes.to_dict(), 1, 0)

  def run():
    it = pipeline.make_train_iterator(mixture, BATCH)
    for _ in range(spec["batches"]):
      next(it)
    del it
  return harness.Workload(run, {"examples_per_call": spec["batches"] * BATCH})


def make_record_reads(spec: dict) -> harness.Workload:
  """The floor any pipeline pays: reading as many raw rec records as the batches hold."""
  tmp = tempfile.mkdtemp()
  _, task_data = _task_data(Path(tmp))
  source = task_data.sources["rec_train"]
  count = spec["batches"] * BATCH
  return harness.Workload(harness.discard(lambda: [source[i % len(source)] for i in range(count)]),
                          {"examples_per_call": count})


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--items", type=int, default=100_000)
  parser.add_argument("--users", type=int, default=100_000)
  parser.add_argument("--batches", type=int, default=50)
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
  harness.common_arguments(parser)
  args = parser.parse_args()
  spec = {"items": args.items, "users": args.users, "batches": args.batches}
  sides = {"world": ("benchmarks.data_pipeline:make_world", spec),
           "prepare_tiny": ("benchmarks.data_pipeline:make_prepare", {"config": "tiny"}),
           "prepare_synthetic": ("benchmarks.data_pipeline:make_prepare", {"config": "synthetic"}),
           "grain_batches": ("benchmarks.data_pipeline:make_batches", spec),
           "record_reads": ("benchmarks.data_pipeline:make_record_reads", spec)}
  parts = args.parts.split(",")
  unknown = sorted(set(parts) - set(sides))
  if unknown:
    parser.error(f"--parts: unknown {unknown}; choose from {sorted(sides)}")
  sides = {name: side for name, side in sides.items() if name in parts}
  ratios = ({"batches_over_record_reads": ("grain_batches", "record_reads")}
            if {"grain_batches", "record_reads"} <= set(sides) else {})
  harness.compare("data_pipeline", sides, ratios=ratios,
                  settings={**spec, "batch": BATCH}, **harness.harness_options(args))


if __name__ == "__main__":
  main()
