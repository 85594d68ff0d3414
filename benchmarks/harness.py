"""Fair benchmark harness: every side of a comparison runs in its own worker process with the same CPU
affinity and the same thread count, set explicitly before any numeric library is imported.

A benchmark names its sides as `module:factory` strings. A factory takes a JSON-able spec dict and
returns a `Workload` (a `run()` callable doing one timed call, plus `info`: FLOPs per call, compile
time, units per call...). For each thread count (1 and all cores, reported separately) the harness

  * starts one worker per side (and one per matmul-peak probe) pinned with `os.sched_setaffinity` to the
    first `threads` CPUs, with torch intra-/inter-op threads, OMP/MKL/OpenBLAS threads and XLA's flags
    set to that count (XLA's CPU thread pool is sized from the affinity mask),
  * runs `warmup` untimed calls per side, then `repeats` interleaved rounds (A B A B ...),
  * records wall and process-CPU seconds per call, the 1-minute load average before and after each
    round, and the fp32 matmul peak (GFLOP/s, best of torch and XLA) measured in the same rounds,

and writes `results/benchmarks/<name>.json` with the git commit, package versions, CPU model, cores,
settings, raw times and load. Worker protocol: one JSON line per message on stdout; the parent sends
`run` / `quit` lines on stdin.

  python -m benchmarks.harness --self-check     # prints what each worker's thread settings became
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "results" / "benchmarks"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "sentence-transformers", "grain")
PEAK_SIDES = {"matmul_torch": "benchmarks.harness:matmul_torch", "matmul_jax": "benchmarks.harness:matmul_jax"}
MATMUL_N = 1024
MATMUL_CALLS = 4


@dataclasses.dataclass
class Workload:
  """One side of a comparison: `run()` performs one timed call (blocking until its results exist) and
  returns None or a small JSON-able digest of its output (recorded per call, e.g. for agreement checks)."""
  run: Callable[[], Any]
  info: dict = dataclasses.field(default_factory=dict)


def discard(fn: Callable[[], Any]) -> Callable[[], None]:
  """`fn` with its result dropped, for workloads whose output is not a small JSON-able digest."""
  def run() -> None:
    fn()
  return run


# ---------------------------------------------------------------------------------------------- statistics

def summarize(times: list[float]) -> dict:
  """Median, min and max of a list of timings (seconds)."""
  if not times:
    raise ValueError("summarize: no timings")
  return {"n": len(times), "median": statistics.median(times), "min": min(times), "max": max(times)}


def interleaved_order(labels: list[str], repeats: int) -> list[str]:
  """The order of timed calls: `repeats` rounds, each running every label once in the given order."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  return [label for _ in range(repeats) for label in labels]


# ---------------------------------------------------------------------------------------------- worker side

def thread_env(threads: int) -> dict[str, str]:
  """Environment variables that pin every numeric library of a worker to `threads` threads."""
  env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                         "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")}
  env["TF_NUM_INTEROP_THREADS"] = "1"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "multi_thread_eigen" not in f]
  flags.append(f"--xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'}")
  env["XLA_FLAGS"] = " ".join(flags)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
  return env


def apply_torch_threads(threads: int) -> None:
  """Sets torch's intra- and inter-op thread counts, when torch is installed."""
  try:
    import torch
  except ImportError:
    return
  torch.set_num_threads(threads)
  try:
    torch.set_num_interop_threads(threads)
  except RuntimeError:   # already set (only possible once per process); recorded by settings_check
    pass


def settings_check() -> dict:
  """What the worker's thread settings actually are (recorded next to every measurement)."""
  out = {"affinity": sorted(os.sched_getaffinity(0)), "os_threads": len(os.listdir("/proc/self/task")),
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if "torch" in sys.modules:
    torch = sys.modules["torch"]
    out.update(torch_threads=torch.get_num_threads(), torch_interop_threads=torch.get_num_interop_threads())
  if "jax" in sys.modules:
    out["jax_devices"] = [str(d) for d in sys.modules["jax"].devices()]
  return out


def load_factory(target: str) -> Callable[[dict], Workload]:
  """Resolves a `module:function` string."""
  module_name, _, function = target.partition(":")
  if not function:
    raise ValueError(f"expected 'module:function', got {target!r}")
  return getattr(importlib.import_module(module_name), function)


_CHANNEL = None


def _send(message: dict) -> None:
  _CHANNEL.write(json.dumps(message) + "\n")
  _CHANNEL.flush()


def _claim_stdout() -> None:
  """Keeps the real stdout for protocol messages and sends everything else printed to stderr."""
  global _CHANNEL
  _CHANNEL = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)
  sys.stdout = sys.stderr


def worker_main(target: str, threads: int, cpus: list[int], spec: dict) -> None:
  """Worker process: pin, set threads, build the workload, then time one call per `run` line."""
  _claim_stdout()
  os.sched_setaffinity(0, cpus)
  apply_torch_threads(threads)
  start = time.perf_counter()
  workload = load_factory(target)(spec)
  setup_seconds = time.perf_counter() - start
  _send({"ready": True, "info": workload.info, "setup_seconds": setup_seconds, "settings": settings_check()})
  for line in sys.stdin:
    command = line.strip()
    if command == "quit":
      return
    if command != "run":
      raise ValueError(f"worker: unknown command {command!r}")
    wall, cpu = time.perf_counter(), time.process_time()
    output = workload.run()
    _send({"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, "output": output})


# ---------------------------------------------------------------------------------------------- matmul peak

def matmul_torch(spec: dict) -> Workload:
  """fp32 [n, n] @ [n, n] in torch, `calls` times per run."""
  import torch
  n, calls = spec.get("n", MATMUL_N), spec.get("calls", MATMUL_CALLS)
  a, b = torch.randn(n, n), torch.randn(n, n)

  def run():
    for _ in range(calls):
      torch.mm(a, b)
  run()
  return Workload(run, {"flops_per_call": 2.0 * n ** 3 * calls, "flops_source": "counted (2 n^3 per matmul)"})


def matmul_jax(spec: dict) -> Workload:
  """fp32 [n, n] @ [n, n] jitted in JAX (XLA CPU), `calls` times per run."""
  import jax
  import jax.numpy as jnp
  n, calls = spec.get("n", MATMUL_N), spec.get("calls", MATMUL_CALLS)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()

  def run():
    for _ in range(calls):
      matmul(a, b).block_until_ready()
  return Workload(run, {"flops_per_call": 2.0 * n ** 3 * calls, "flops_source": "counted (2 n^3 per matmul)"})


def xla_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled XLA program from its cost analysis (None when unavailable).
  XLA counts a while loop's body once, whatever its trip count."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


# ---------------------------------------------------------------------------------------------- parent side

class Worker:
  """A running worker subprocess for one side at one thread count."""

  def __init__(self, label: str, target: str, spec: dict, threads: int, cpus: list[int], nice: int):
    env = {**os.environ, **thread_env(threads)}
    command = [sys.executable, "-m", "benchmarks.harness", "--worker", target, "--threads", str(threads),
               "--cpus", ",".join(map(str, cpus)), "--spec", json.dumps(spec)]
    if nice:
      command = ["nice", "-n", str(nice), *command]
    self.label = label
    self.process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
    self.ready = self._receive()

  def _receive(self) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"worker {self.label!r} exited (code {self.process.wait()}) without answering")
    return json.loads(line)

  def call(self) -> dict:
    """One timed call: {'seconds', 'cpu_seconds'}."""
    self.process.stdin.write("run\n")
    self.process.stdin.flush()
    return self._receive()

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.stdin.write("quit\n")
      self.process.stdin.flush()
    self.process.wait(timeout=120)


def cpu_busy_seconds(cpus: list[int]) -> float:
  """CPU seconds the given CPUs spent busy since boot, by anyone (from /proc/stat; 0.0 where it is absent)."""
  try:
    lines = Path("/proc/stat").read_text().splitlines()
  except OSError:
    return 0.0
  wanted = {f"cpu{c}" for c in cpus}
  ticks = 0
  for line in lines:
    fields = line.split()
    if fields and fields[0] in wanted:
      values = [int(v) for v in fields[1:]]
      ticks += sum(values[:8]) - values[3] - values[4]    # user nice system idle iowait irq softirq steal
  return ticks / os.sysconf("SC_CLK_TCK")


def run_at_threads(sides: dict[str, tuple[str, dict]], threads: int, repeats: int, warmup: int,
                   nice: int, log: Callable[[str], None] = print) -> dict:
  """Interleaved timing of every side (and the matmul-peak probes) at one thread count."""
  available = sorted(os.sched_getaffinity(0))
  if threads > len(available):
    raise ValueError(f"{threads} threads requested but only CPUs {available} are available")
  cpus = available[:threads]
  all_sides = {**sides, **{label: (target, {}) for label, target in PEAK_SIDES.items()}}
  load_before = os.getloadavg()[0]
  workers = {}
  try:
    for label, (target, spec) in all_sides.items():
      workers[label] = Worker(label, target, spec, threads, cpus, nice)
      log(f"[{threads} thr] {label}: ready in {workers[label].ready['setup_seconds']:.1f}s "
          f"{workers[label].ready['settings']}")
    warm = {label: [worker.call()["seconds"] for _ in range(warmup)] for label, worker in workers.items()}
    calls = {label: [] for label in workers}
    round_loads = []
    busy_start, wall_start = cpu_busy_seconds(cpus), time.perf_counter()
    for index, label in enumerate(interleaved_order(list(workers), repeats)):
      if index % len(workers) == 0:
        round_loads.append(os.getloadavg()[0])
      calls[label].append(workers[label].call())
      log(f"[{threads} thr] {label}: {calls[label][-1]['seconds']:.3f}s")
    busy, wall = cpu_busy_seconds(cpus) - busy_start, time.perf_counter() - wall_start
  finally:
    for worker in workers.values():
      worker.close()
  load_after = os.getloadavg()[0]
  result = {"threads": threads, "cpus": cpus, "repeats": repeats, "warmup": warmup,
            "order": interleaved_order(list(workers), repeats),
            "load_1min_before": load_before, "load_1min_after": load_after, "load_1min_per_round": round_loads,
            "sides": {}}
  # CPU time others took on the run's CPUs during the timed rounds: their busy time minus the workers' own.
  workers_cpu = sum(c["cpu_seconds"] for side in calls.values() for c in side)
  if busy > 0:
    result["other_cpu_fraction"] = max(busy - workers_cpu, 0.0) / (wall * len(cpus))
  for label, worker in workers.items():
    times = [c["seconds"] for c in calls[label]]
    cpu = [c["cpu_seconds"] for c in calls[label]]
    outputs = [c["output"] for c in calls[label]]
    result["sides"][label] = {"target": all_sides[label][0], "spec": all_sides[label][1], "times": times,
                              **({"outputs": outputs} if any(o is not None for o in outputs) else {}),
                              "cpu_times": cpu, "warmup_times": warm[label], **summarize(times),
                              "cpu_over_wall_median": statistics.median(c / t for c, t in zip(cpu, times)),
                              "info": worker.ready["info"], "setup_seconds": worker.ready["setup_seconds"],
                              "settings": worker.ready["settings"]}
  add_derived(result)
  return result


def add_derived(result: dict) -> None:
  """Adds the matmul peak and, per side with known FLOPs, achieved GFLOP/s and its fraction of the peak."""
  peaks = {label: result["sides"][label]["info"]["flops_per_call"] / result["sides"][label]["median"] / 1e9
           for label in PEAK_SIDES if label in result["sides"]}
  result["matmul_peak_gflops"] = max(peaks.values())
  result["matmul_peak_by_library_gflops"] = peaks
  for label, side in result["sides"].items():
    flops = side["info"].get("flops_per_call")
    if flops and label not in PEAK_SIDES:
      side["achieved_gflops"] = flops / side["median"] / 1e9
      side["fraction_of_peak"] = side["achieved_gflops"] / result["matmul_peak_gflops"]


def machine_info() -> dict:
  """CPU model, core count, Python and platform."""
  model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
  flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")), [])
  return {"cpu_model": model, "cores": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
          "avx512_bf16": "avx512_bf16" in flags, "python": platform.python_version(), "platform": platform.platform()}


def package_versions() -> dict:
  """Installed versions of the packages the benchmarks use (None when not installed)."""
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def git_info() -> dict:
  """HEAD commit and whether the code that runs (gensar_jax/, benchmarks/) differs from it."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
  dirty = git("status", "--porcelain", "--", "gensar_jax", "benchmarks")
  return {"commit": git("rev-parse", "HEAD"), "dirty_files": dirty.splitlines()}


def compare(name: str, sides: dict[str, tuple[str, dict]], *, threads_list: list[int] | None = None,
            repeats: int = 5, warmup: int = 1, nice: int = 0, ratios: dict[str, tuple[str, str]] | None = None,
            settings: dict | None = None, derive: Callable[[dict], dict] | None = None,
            output_dir: Path = RESULTS_DIR) -> dict:
  """Runs `sides` at each thread count and writes `<output_dir>/<name>.json`.

  Args:
    sides: label -> (`module:factory`, spec).
    threads_list: thread counts; default 1 and all available cores.
    ratios: ratio name -> (slower_label, faster_label): median(slower) / median(faster) per thread count.
    settings: workload settings recorded as they are.
    derive: optional run -> dict of benchmark-specific figures (e.g. output agreement), stored per run.
  """
  if repeats < 5:
    print(f"warning: {repeats} repeats (< 5) for {name}", file=sys.stderr)
  threads_list = threads_list or sorted({1, len(os.sched_getaffinity(0))})
  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  git = git_info()   # before the runs: what the workers import
  runs = [run_at_threads(sides, threads, repeats, warmup, nice) for threads in threads_list]
  for run in runs:
    run["ratios"] = {ratio: run["sides"][slow]["median"] / run["sides"][fast]["median"]
                     for ratio, (slow, fast) in (ratios or {}).items()}
    if derive:
      run["derived"] = derive(run)
  record = {"name": name, "started_utc": started,
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git, "machine": machine_info(), "versions": package_versions(),
            "settings": settings or {}, "ratio_definitions": ratios or {}, "worker_niceness": os.nice(0) + nice, "runs": runs}
  output_dir.mkdir(parents=True, exist_ok=True)
  path = output_dir / f"{name}.json"
  path.write_text(json.dumps(record, indent=1) + "\n")
  print(f"wrote {path}")
  return record


def common_arguments(parser: argparse.ArgumentParser) -> None:
  """The harness options every benchmark script accepts."""
  parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)")
  parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (>= 5)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side before the rounds")
  parser.add_argument("--nice", type=int, default=0, help="nice level of the workers")


def harness_options(args: argparse.Namespace) -> dict:
  """compare() keyword arguments from `common_arguments` options."""
  threads = [int(t) for t in args.threads.split(",")] if args.threads else None
  return {"threads_list": threads, "repeats": args.repeats, "warmup": args.warmup, "nice": args.nice}


def self_check(nice: int) -> None:
  """Starts the matmul probes at 1 thread and at all cores and prints their recorded settings."""
  for threads in sorted({1, len(os.sched_getaffinity(0))}):
    for label, target in PEAK_SIDES.items():
      worker = Worker(label, target, {}, threads, sorted(os.sched_getaffinity(0))[:threads], nice)
      call = worker.call()
      print(f"{threads} thread(s) {label}: {worker.ready['settings']}, cpu/wall {call['cpu_seconds'] / call['seconds']:.2f}")
      worker.close()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--worker", help="internal: run as a worker for this module:factory")
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--cpus", default="0")
  parser.add_argument("--spec", default="{}")
  parser.add_argument("--self-check", action="store_true")
  parser.add_argument("--nice", type=int, default=0)
  args = parser.parse_args()
  if args.worker:
    worker_main(args.worker, args.threads, [int(c) for c in args.cpus.split(",")], json.loads(args.spec))
  elif args.self_check:
    self_check(args.nice)
  else:
    parser.error("nothing to do: pass --self-check (benchmarks call compare())")


if __name__ == "__main__":
  main()
