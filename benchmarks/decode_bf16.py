"""bfloat16 vs float32 constrained decoding on a trained GenSAR model.

  python -m benchmarks.decode_bf16 --workdir runs/office --config office [--limit 1000 --repeats 2]

Two questions, answered in one process pinned to one core at one thread (XLA's Eigen threads off):
(1) does XLA's CPU backend run bfloat16 dots on this CPU's bf16 units (avx512_bf16)? A 1024^3 matmul in
    both dtypes: GFLOP/s, and whether the optimized HLO converts the bf16 operands to f32 before the dot;
(2) what bf16 compute does to a trained model's decoding: the sampled-protocol test ranks of both tasks
    (`--limit` queries each, beam of the config) in both dtypes, interleaved `--repeats` times: queries/s
    (median, min, max), the fraction of queries whose target rank is identical, and both metric sets.
Parameters stay float32 either way (`T5Config.dtype` is the compute dtype). Writes
results/benchmarks/decode_bf16.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from benchmarks import harness

DTYPES = ("float32", "bfloat16")


def matmul_check(n: int = 1024, repeats: int = 7) -> dict:
  """GFLOP/s of an n^3 jitted matmul per dtype and whether XLA converts bf16 operands to f32."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  out = {}
  for dtype in DTYPES:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    compiled = matmul.lower(a, a).compile()
    compiled(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      compiled(a, a).block_until_ready()
      times.append(time.perf_counter() - start)
    hlo = compiled.as_text()
    out[dtype] = {"gflops": round(2 * n ** 3 / float(np.median(times)) / 1e9, 1),
                  "converts_operands_to_f32": dtype == "bfloat16" and "convert" in hlo and "bf16[" in hlo}
  out["bf16_over_f32_speed"] = round(out["bfloat16"]["gflops"] / out["float32"]["gflops"], 3)
  return out


def decode_check(workdir: Path, config_name: str, limit: int, repeats: int) -> dict:
  """Sampled-protocol test ranks of both tasks in float32 and bfloat16 compute, interleaved."""
  import numpy as np
  from gensar_jax import stages
  from gensar_jax.config import load_config
  from gensar_jax.data.task_data import load_task_data
  from gensar_jax.eval import stage as eval_stage
  from gensar_jax.eval.metrics import ranking_metrics
  from gensar_jax.model.export import load_model
  config = load_config(config_name)
  eval_cfg = eval_stage.eval_section(config)
  params, model_cfg = load_model(stages.output_dir(workdir, "train") / "model")
  task_data = load_task_data(workdir, config, with_pseudo_queries=False)
  queries = {task: eval_stage.eval_queries(task_data, task, "test", limit) for task in eval_stage.TASKS}
  rule = eval_stage.check_ties(eval_cfg.ties.to_dict())["sampled"]     # eval_section fills the defaults
  configs = {dtype: model_cfg.replace(dtype=dtype) for dtype in DTYPES}

  def ranks(dtype):
    return {task: eval_stage.rank_queries_all_ties(params, configs[dtype], q, "sampled",
                                                   num_beams=int(eval_cfg.num_beams),
                                                   batch_size=int(eval_cfg.batch_size), desc=f"{dtype} {task}")[rule]
            for task, q in queries.items()}

  batch = int(eval_cfg.batch_size)
  warm = {task: dataclasses.replace(q, encoder_tokens=q.encoder_tokens[:batch], targets=q.targets[:batch],
                                    candidates=q.candidates[:batch]) for task, q in queries.items()}
  for dtype in DTYPES:                       # compile both dtypes' searches before timing
    for q in warm.values():
      eval_stage.rank_queries_all_ties(params, configs[dtype], q, "sampled", num_beams=int(eval_cfg.num_beams),
                                       batch_size=batch)
  seconds = {dtype: [] for dtype in DTYPES}
  results = {}
  for _ in range(repeats):
    for dtype in DTYPES:
      start = time.perf_counter()
      results[dtype] = ranks(dtype)
      seconds[dtype].append(time.perf_counter() - start)
  total = sum(len(q) for q in queries.values())
  out = {"queries_per_task": {task: len(q) for task, q in queries.items()}, "num_beams": int(eval_cfg.num_beams),
         "tie_rule": rule, "model": {"d_model": model_cfg.d_model, "layers": [model_cfg.num_encoder_layers,
                                                                             model_cfg.num_decoder_layers]}}
  for dtype in DTYPES:
    out[dtype] = {"queries_per_s": {"median": round(total / float(np.median(seconds[dtype])), 2),
                                    "min": round(total / max(seconds[dtype]), 2),
                                    "max": round(total / min(seconds[dtype]), 2)},
                  "seconds": [round(s, 1) for s in seconds[dtype]],
                  "metrics": {task: ranking_metrics(r) for task, r in results[dtype].items()}}
  out["same_rank_fraction"] = {task: float(np.mean(results["float32"][task] == results["bfloat16"][task]))
                               for task in queries}
  out["bf16_over_f32_speed"] = round(out["bfloat16"]["queries_per_s"]["median"]
                                     / out["float32"]["queries_per_s"]["median"], 3)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", type=Path, required=True, help="a workdir with prepare, index and train done")
  parser.add_argument("--config", default="office")
  parser.add_argument("--limit", type=int, default=1000, help="test queries per task")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--cpu", type=int, default=0, help="the core to pin to")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if not args.child:                     # re-exec pinned, with the thread environment set before jax loads
    env = {**os.environ, **harness.thread_env(1)}
    cmd = ["taskset", "-c", str(args.cpu), sys.executable, "-m", "benchmarks.decode_bf16", "--child",
           "--workdir", str(args.workdir), "--config", args.config, "--limit", str(args.limit),
           "--repeats", str(args.repeats)]
    os.execvpe("taskset", cmd, env)
  report = {"machine": harness.machine_info(), "versions": harness.package_versions(), "git": harness.git_info(),
            "settings": {"threads": 1, "workdir": str(args.workdir), "config": args.config, "limit": args.limit,
                         "repeats": args.repeats, **harness.settings_check()},
            "load_average_at_start": round(os.getloadavg()[0], 2),
            "matmul": matmul_check(), "decode": decode_check(args.workdir, args.config, args.limit, args.repeats)}
  report["load_average_at_end"] = round(os.getloadavg()[0], 2)
  out = harness.RESULTS_DIR / "decode_bf16.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(report, indent=1) + "\n")
  tmp.replace(out)
  print(json.dumps({"matmul": report["matmul"], "decode": {k: v for k, v in report["decode"].items()
                                                         if k in ("same_rank_fraction", "bf16_over_f32_speed")}}))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
