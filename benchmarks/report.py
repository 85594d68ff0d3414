"""Renders the benchmark tables of docs/performance.md from results/benchmarks/*.json (written by the harness).

Nothing is typed by hand: every figure comes from a result file, next to the commit, machine, thread
count and load it was measured under. Files without the harness' layout (no `runs`) are skipped.

  python -m benchmarks.report           # print the section
  python -m benchmarks.report --write   # replace it between the markers in docs/performance.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.harness import PEAK_SIDES, REPO, RESULTS_DIR

PAGE = REPO / "docs" / "performance.md"
BEGIN = "<!-- benchmarks:begin -->"
END = "<!-- benchmarks:end -->"
UNIT_KEYS = (("queries_per_call", "queries/s"), ("items_per_call", "items/s"), ("tokens_per_call", "tokens/s"),
             ("examples_per_call", "examples/s"))


def load_records(directory: Path) -> list[dict]:
  """Harness result files in `directory`, sorted by name."""
  records = []
  for path in sorted(directory.glob("*.json")):
    record = json.loads(path.read_text())
    if isinstance(record, dict) and isinstance(record.get("runs"), list) and "git" in record:
      records.append(record)
    else:
      print(f"report: skipping {path.name} (not a harness result)", file=sys.stderr)
  return records


def fmt(x: float) -> str:
  """Three significant digits below 100, whole numbers with thousands separators above."""
  if abs(x) >= 100:
    return f"{x:,.0f}"
  return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def commit_label(record: dict) -> str:
  """Short commit, with '+' when gensar_jax/ or benchmarks/ differed from it."""
  return record["git"]["commit"][:7] + ("+" if record["git"].get("dirty_files") else "")


def load_label(run: dict) -> str:
  """Share of the run's CPUs other processes took during its timed rounds (older records: the 1-minute load
  average before -> after the run)."""
  if "other_cpu_fraction" in run:
    return f"{100 * run['other_cpu_fraction']:.0f}% others"
  return f"load {run['load_1min_before']:.1f} -> {run['load_1min_after']:.1f}"


def throughput(side: dict) -> str:
  """Units per second at the median time, when the side says what one call processes."""
  for key, unit in UNIT_KEYS:
    if side["info"].get(key):
      return f"{fmt(side['info'][key] / side['median'])} {unit}"
  return ""


def roofline(side: dict) -> str:
  """Achieved GFLOP/s and its fraction of the run's matmul peak, when FLOPs per call are known."""
  if "achieved_gflops" not in side:
    return ""
  return f"{fmt(side['achieved_gflops'])} ({100 * side['fraction_of_peak']:.1f}%)"


CONTENDED_OTHER_CPU = 0.10   # others took more than this share of the run's CPUs during its timed rounds


def contended(record: dict, run: dict) -> bool:
  """Whether other work competed for the run's CPUs: others' share of them during the timed rounds (older
  records without it: the 1-minute load before the run exceeded the cores it left free)."""
  if "other_cpu_fraction" in run:
    return run["other_cpu_fraction"] > CONTENDED_OTHER_CPU
  return run["load_1min_before"] > record["machine"]["cores"] - run["threads"] + 0.5


def ratio_rows(records: list[dict]) -> list[str]:
  """One row per ratio per thread count; contended runs are marked (not speed claims)."""
  rows = []
  for record in records:
    for run in record["runs"]:
      for name, value in run.get("ratios", {}).items():
        slow, fast = record["ratio_definitions"][name]
        mark = " (contended)" if contended(record, run) else ""
        rows.append(f"| {record['name']} | {name} ({slow} / {fast}, medians) | {run['threads']} | "
                    f"**{value:.2f}x**{mark} | {load_label(run)} | {commit_label(record)} |")
  return rows


# Speed targets: (benchmark, ratio, target, our side in that ratio).
TARGETS = (("train_throughput", "total_speedup", 3.0, "bucketed_hash"),
           ("train_step", "ours_hash_speedup_vs_hf_torch", 1.5, "ours_hash"),
           ("rqvae_office", "ours_speedup_vs_torch_reference", 3.0, "ours"),
           ("rqvae_electronics", "ours_speedup_vs_torch_reference", 3.0, "ours"))


def target_rows(records: list[dict]) -> list[str]:
  """Per target and thread count: the measured ratio, and the FLOP rate our side would need to meet the
  target (its achieved GFLOP/s x target / ratio) as a share of the run's matmul peak; above 100% the target
  cannot be met by this program on this CPU, however well it is tuned."""
  rows = []
  by_name = {record["name"]: record for record in records}
  for name, ratio, target, ours in TARGETS:
    for run in by_name.get(name, {}).get("runs", []):
      side = run["sides"].get(ours, {})
      if ratio not in run.get("ratios", {}) or "achieved_gflops" not in side:
        continue
      needed = side["achieved_gflops"] * target / run["ratios"][ratio]
      rows.append(f"| {name} | {ratio} | {run['threads']} | {target:.1f}x | {run['ratios'][ratio]:.2f}x | "
                  f"{fmt(side['achieved_gflops'])} ({100 * side['fraction_of_peak']:.0f}%) | "
                  f"{fmt(needed)} ({100 * needed / run['matmul_peak_gflops']:.0f}%) |")
  return rows


def timing_rows(records: list[dict]) -> list[str]:
  """One row per side per thread count (matmul probes are summarised as the peak column)."""
  rows = []
  for record in records:
    for run in record["runs"]:
      for label, side in run["sides"].items():
        if label in PEAK_SIDES:
          continue
        rows.append(f"| {record['name']} | {label} | {run['threads']} | {fmt(side['median'])} "
                    f"[{fmt(side['min'])}, {fmt(side['max'])}] x{side['n']} | {side['cpu_over_wall_median']:.2f} | "
                    f"{throughput(side)} | "
                    f"{roofline(side)} | {fmt(run['matmul_peak_gflops'])} | {load_label(run)} |")
  return rows


def shown_value(value) -> str:
  """A derived figure as text: floats to three significant digits, dicts as 'key value' pairs."""
  if isinstance(value, dict):
    return ", ".join(f"{key} {shown_value(item)}" for key, item in value.items())
  return fmt(value) if isinstance(value, float) else str(value)


def derived_lines(records: list[dict]) -> list[str]:
  """Benchmark-specific figures (agreement, parity) per run."""
  lines = []
  for record in records:
    for run in record["runs"]:
      for key, value in run.get("derived", {}).items():
        lines.append(f"- {record['name']}, {run['threads']} thread(s): {key} = {shown_value(value)}")
  return lines


def provenance_lines(records: list[dict]) -> list[str]:
  """Which commit, machine and date produced each file."""
  lines = []
  for record in records:
    machine = record["machine"]
    settings = ", ".join(f"{key} {value}" for key, value in record.get("settings", {}).items())
    lines.append(f"- {record['name']}: commit {commit_label(record)}, {record['started_utc']}, "
                 f"{machine['cpu_model']} ({machine['cores']} cores), worker niceness {record['worker_niceness']}"
                 + (f"; workload: {settings}" if settings else ""))
  return lines


def render(records: list[dict]) -> str:
  """The Performance section's body (between the markers), Markdown."""
  if not records:
    raise ValueError("no harness results to report")
  out = ["Generated by `python -m benchmarks.report --write` from `results/benchmarks/*.json`; "
         "do not edit by hand. Both sides of every comparison ran as separate worker processes pinned "
         "to the same CPUs with the same thread count, in interleaved rounds after warm-up. Ratios are "
         "medians of the slower side over the faster; '+' after a commit means the working tree differed "
         "from it in gensar_jax/ or benchmarks/. CPU/wall: the side's median process CPU time over wall "
         "time per call (below the thread count when other processes took CPU). Others: the share of the run's "
         "CPUs that other processes used during its timed rounds (/proc/stat busy time minus the workers' own; "
         "older records show the 1-minute load average instead). (contended): others took more than 10% "
         "(older records: the load before the run exceeded the cores it left free), so other processes "
         "competed for its cores; "
         "such a ratio is not a speed claim, and at as many threads as cores it mostly shows how each library "
         "copes with oversubscription (torch's thread pool collapses, XLA's does not).", "",
         "| benchmark | ratio | threads | value | others | commit |", "| --- | --- | --- | --- | --- | --- |",
         *ratio_rows(records), "",
         "| benchmark | side | threads | seconds per call, median [min, max] x calls | CPU/wall | throughput | "
         "GFLOP/s (of matmul peak) | matmul peak GFLOP/s | others |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *timing_rows(records)]
  targets = target_rows(records)
  if targets:
    out += ["", "Targets: what our side reaches and what it would need to reach to meet each target, in GFLOP/s "
            "and as a share of the run's matmul peak.", "",
            "| benchmark | ratio | threads | target | measured | ours now (of peak) | ours at the target (of peak) |",
            "| --- | --- | --- | --- | --- | --- | --- |", *targets]
  derived = derived_lines(records)
  if derived:
    out += ["", *derived]
  out += ["", "Measured on:", *provenance_lines(records)]
  return "\n".join(out) + "\n"


def replace_between_markers(text: str, body: str, markers: tuple[str, str] = (BEGIN, END)) -> str:
  """`text` with everything between the two markers replaced by a newline and `body` (docs tables
  generated from result files: this section, benchmarks/plan_report.py, results_report.py, plateau_report.py)."""
  start_marker, end_marker = markers
  begin, end = text.find(start_marker), text.find(end_marker)
  if begin < 0 or end < begin:
    raise ValueError(f"the page needs the markers {start_marker} ... {end_marker} (in that order)")
  return text[:begin + len(start_marker)] + "\n" + body + text[end:]


def write_between_markers(page: Path, bodies: dict[tuple[str, str], str]) -> None:
  """Replaces, in the file `page`, the text between each (start, end) marker pair with its body."""
  text = page.read_text()
  for markers, body in bodies.items():
    try:
      text = replace_between_markers(text, body, markers)
    except ValueError as error:
      raise ValueError(f"{page}: {error}") from None
  page.write_text(text)
  print(f"updated {page}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--results", type=Path, default=RESULTS_DIR)
  parser.add_argument("--write", action="store_true", help=f"write the section into {PAGE.relative_to(REPO)}")
  args = parser.parse_args()
  body = render(load_records(args.results))
  if args.write:
    write_between_markers(PAGE, {(BEGIN, END): body})
  else:
    print(body, end="")


if __name__ == "__main__":
  main()
