#!/usr/bin/env python
"""Training throughput of the CPU budget model on Office-shaped data: batches padded to the maximum
with flax's threefry dropout masks (no buckets), length-bucketed batches (`tasks.length_buckets`, the
budget configs' default) with threefry masks, and bucketed batches with counter-hash masks
(`train.dropout_rng=hash`, the default); same model, same batches, the config's loss normalisation
(`train.loss_normalizer`). A fourth side without dropout is the floor that tells what the masks cost; a
fifth adds target buckets (8 and max_target_len: identifier targets are 7 tokens, only id2desc's text
needs 20).

One call = `--steps` training steps, each taking the next batch from the grain iterator (host-side batch
building included) and running the jitted train step (forward, backward, clipping, AdamW). The data is the
Office config's prepared dataset with random identifier codes (the placeholder codes of the doc2query
stage): identifier tokens have the same count per item as real codes, so every example has its real
length. Model and batch: configs/office.py (2+2-layer T5, d_model 128, batch 128, inputs up to 192,
targets up to 20). Before the timed calls each side runs a step on every batch shape its timed calls will
meet (compilation excluded). Each call returns the real and padded token counts of its batches, so the
padding fraction is measured on exactly the timed batches. FLOPs per call: XLA's cost analysis of each
compiled batch shape, averaged over the planned calls' batches. Sides run as pinned workers of
`benchmarks/harness.py` (interleaved calls, median/min/max, load). Results:
results/benchmarks/train_throughput.json.

  python -m benchmarks.train_throughput --workdir /tmp/office_bench --threads 2 [--steps 3 --repeats 5]
"""
from __future__ import annotations

import argparse

from benchmarks import harness
from benchmarks.prepared import random_code_task_data

TARGET_BUCKETS = (8,)   # identifiers need 6 tokens + EOS; only text targets (id2desc) need max_target_len


def _task_data(workdir: str, config_name: str):
  """(config, TaskData) of a prepared workdir with random identifier codes."""
  from gensar_jax.config import load_config
  config = load_config(config_name)
  return config, random_code_task_data(workdir, config)


def padding_counts(batch: dict) -> dict:
  """Real and padded token counts of one batch (encoder inputs; decoder targets incl. EOS)."""
  enc, weights = batch["encoder_input_tokens"], batch["decoder_loss_weights"]
  return {"encoder_tokens": int((enc != 0).sum()), "encoder_slots": int(enc.size),
          "decoder_tokens": int((weights > 0).sum()), "decoder_slots": int(weights.size)}


def make_side(spec: dict) -> harness.Workload:
  """The training loop's inner work for one side (bucketed or padded to the maximum)."""
  import jax

  from gensar_jax import parallel
  from gensar_jax.data.pipeline import make_train_iterator
  from gensar_jax.model.hf_import import build_model
  from gensar_jax.train import state as state_lib
  from gensar_jax.train import step as step_lib
  from gensar_jax.train.stage import with_expected_tokens
  config, td = _task_data(spec["workdir"], spec["config"])
  config.train.dropout_rng = spec.get("dropout_rng", "threefry")
  config.model.dropout_rate = spec.get("dropout_rate", config.model.dropout_rate)
  tasks = config.tasks
  tasks.target_buckets = tuple(spec.get("target_buckets", tasks.target_buckets))
  buckets = (tuple(tasks.length_buckets), tuple(tasks.target_buckets)) if spec["bucketed"] else ((), ())
  batch = int(config.train.batch_size)
  source = td.mixture(tasks.sizes.to_dict(), 2, int(config.seed))
  config = with_expected_tokens(config, source, int(config.seed))

  def iterator():
    return make_train_iterator(source, batch, 0, 1, *buckets, int(tasks.bucket_window))

  model_cfg, params = build_model(config.model, td.vocab_size, jax.random.key(0))
  model_cfg = state_lib.model_config_for_training(model_cfg, config.train)
  rules = parallel.rules_tuple(config.parallel.logical_axis_rules)
  mesh = parallel.make_mesh(config.parallel.mesh_shape)
  optimizer = state_lib.make_optimizer(config.train)
  holder = {}
  holder["state"], shardings = state_lib.create_train_state(model_cfg, optimizer, mesh, rules, jax.random.key(0),
                                                            params)
  train_step = step_lib.make_train_step(model_cfg, config.train, optimizer, mesh, rules, shardings)
  planned = spec["steps"] * (spec["repeats"] + spec["warmup"])
  ahead = iterator()
  shapes, sequence = {}, []
  for _ in range(planned):          # compile every shape the timed calls will meet (same seed: same batches)
    b = next(ahead)
    sequence.append((b["encoder_input_tokens"].shape, b["decoder_input_tokens"].shape))
    shapes.setdefault(sequence[-1], b)
  flops = {}
  for shape, b in shapes.items():
    global_batch = parallel.host_local_batch_to_global({k: b[k] for k in step_lib.BATCH_KEYS}, mesh, rules)
    with parallel.mesh_and_rules(mesh, rules):
      flops[shape] = harness.xla_flops(train_step.jitted.lower(holder["state"], global_batch).compile())
    holder["state"], m = train_step(holder["state"], global_batch)
    jax.block_until_ready(m)
  it = iterator()

  def run():
    counts = []
    for _ in range(spec["steps"]):
      b = next(it)
      counts.append(padding_counts(b))
      holder["state"], m = train_step(holder["state"], parallel.host_local_batch_to_global(
          {k: b[k] for k in step_lib.BATCH_KEYS}, mesh, rules))
    jax.block_until_ready(m)
    return {k: sum(c[k] for c in counts) for k in counts[0]}

  info = {"examples_per_call": spec["steps"] * batch, "batch": batch, "compiled_shapes": sorted(
      [list(s[0]), list(s[1])] for s in shapes), "length_buckets": list(buckets[0]),
      "target_buckets": list(buckets[1]), "bucket_window": int(tasks.bucket_window),
      "max_input_len": int(tasks.max_input_len), "max_target_len": int(tasks.max_target_len),
      "dropout_rng": config.train.dropout_rng, "dropout_rate": float(config.model.dropout_rate),
      "target_buckets_config": list(tasks.target_buckets)}
  if all(flops.values()):
    info["flops_per_call"] = sum(flops[s] for s in sequence) / (spec["repeats"] + spec["warmup"])
    info["flops_source"] = "XLA cost_analysis per batch shape, averaged over the planned calls"
  return harness.Workload(run, info)


def derive(run: dict) -> dict:
  """Examples/s (median call) and padding fractions over the timed calls, per side."""
  out = {}
  for label, side in run["sides"].items():
    if "outputs" not in side:
      continue
    total = {k: sum(o[k] for o in side["outputs"]) for k in side["outputs"][0]}
    out[label] = {"examples_per_second_median": side["info"]["examples_per_call"] / side["median"],
                  "examples_per_second_best": side["info"]["examples_per_call"] / side["min"],
                  "encoder_padding_fraction": 1 - total["encoder_tokens"] / total["encoder_slots"],
                  "decoder_padding_fraction": 1 - total["decoder_tokens"] / total["decoder_slots"],
                  "seconds_per_step_median": side["median"] / (side["info"]["examples_per_call"] /
                                                               side["info"]["batch"])}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="/tmp/office_bench", help="prepared there when missing")
  parser.add_argument("--config", default="office")
  parser.add_argument("--steps", type=int, default=3, help="train steps per timed call")
  harness.common_arguments(parser)
  args = parser.parse_args()
  base = {"workdir": args.workdir, "config": args.config, "steps": args.steps, "repeats": args.repeats,
          "warmup": args.warmup}
  sides = {"padded": ("benchmarks.train_throughput:make_side", {**base, "bucketed": False}),
           "bucketed": ("benchmarks.train_throughput:make_side", {**base, "bucketed": True}),
           "bucketed_hash": ("benchmarks.train_throughput:make_side", {**base, "bucketed": True,
                                                                        "dropout_rng": "hash"}),
           "bucketed_no_dropout": ("benchmarks.train_throughput:make_side", {**base, "bucketed": True,
                                                                              "dropout_rate": 0.0}),
           "bucketed_hash_targets": ("benchmarks.train_throughput:make_side", {
               **base, "bucketed": True, "dropout_rng": "hash", "target_buckets": TARGET_BUCKETS})}
  ratios = {"bucketed_speedup": ("padded", "bucketed"), "hash_dropout_speedup": ("bucketed", "bucketed_hash"),
            "total_speedup": ("padded", "bucketed_hash"),
            "threefry_dropout_cost": ("bucketed", "bucketed_no_dropout"),
            "hash_dropout_cost": ("bucketed_hash", "bucketed_no_dropout"),
            "target_buckets_speedup": ("bucketed_hash", "bucketed_hash_targets"),
            "total_speedup_with_target_buckets": ("padded", "bucketed_hash_targets")}
  harness.compare("train_throughput", sides, ratios=ratios,
                  settings={**base, "call": f"{args.steps} train steps incl. host batch building"},
                  derive=derive, **harness.harness_options(args))


if __name__ == "__main__":
  main()
