"""The plan as readable text: durations, the programs' table, the dropout-generator comparison and the per-stage
table of the pipeline's estimate (what `gensar plan` prints)."""
from __future__ import annotations

from gensar_jax.plan.budget import STAGES
from gensar_jax.plan.chips import GIB


def _gib(x: float) -> str:
  return f"{x / GIB:.2f}"


def format_duration(seconds: float | None, digits: int = 2) -> str:
  """A duration in the largest unit that keeps it >= 1 (d, h, min, s, ms); "-" for None.
  `digits`: decimals for d, h and s (minutes keep one, milliseconds one fewer)."""
  if seconds is None:
    return "-"
  if seconds >= 86400:
    return f"{seconds / 86400:.2f} d"
  if seconds >= 3600:
    return f"{seconds / 3600:.{digits}f} h"
  if seconds >= 60:
    return f"{seconds / 60:.1f} min"
  return f"{seconds * 1e3:.{max(digits - 1, 0)}f} ms" if seconds < 1 else f"{seconds:.{digits}f} s"


def format_collectives(collectives: list[dict]) -> str:
  return ", ".join(f"{c['count']}x {c['kind']} {c['bytes'] / 2**20:.1f} MiB" for c in collectives) or "none"


def _program_row(name: str, p: dict) -> str:
  m, r = p["memory"], p["roofline"]
  if p.get("error"):
    return f"| {name} | {p['rows_per_device']} | - | - | - | - | NO ({p['error']}) | - | - | - | - | - | - |"
  if r is None:
    return (f"| {name} | {p['rows_per_device']} | - | {_gib(m['temp_bytes'])} | {_gib(m['peak_bytes'])} | "
            f"{p['hbm_fraction']:.0%} | NO (compiler: out of HBM) | - | - | - | - | - | - |")
  return (f"| {name} | {p['rows_per_device']} | {_gib(m['argument_bytes'])} | {_gib(m['temp_bytes'])} | "
          f"{_gib(m['peak_bytes'])} | {p['hbm_fraction']:.0%} | {'yes' if p['fits'] else 'NO'} | "
          f"{p['flops'] / 1e12:.3f} | {p['bytes_accessed'] / 1e9:.2f} | {format_collectives(p['collectives'])} "
          f"| {format_duration(r['step_s'])} | {r['bound']} | {r['mfu']:.0%} |")


def format_stages(est: dict, devices: int) -> list[str]:
  """The per-stage table of a pipeline estimate: each program's calls and time, each stage's total."""
  lines = ["| stage | program | runs on | calls | est. per call | total | how the calls are counted |",
           "| --- | --- | --- | ---: | ---: | ---: | --- |"]
  for stage, _ in STAGES:
    rows = [r for r in est["rows"] if r["stage"] == stage]
    for r in rows:
      lines.append(f"| {stage} | {r['program']} | {r['placement']} | {r['calls']:,} | "
                   f"{format_duration(r['step_s'])} | "
                   f"{format_duration(r['seconds']) if r['seconds'] is not None else 'not compiled'} | {r['rule']} |")
    totals = est["stages"].get(stage)
    if totals is not None:
      lines.append(f"| **{stage}** | | | | | **{format_duration(totals['seconds'])}**"
                   f"{'' if totals['complete'] else ' (partial)'} | |")
  price = est["list_price_usd"]
  scope = (f"PARTIAL pipeline (programs not compiled: {', '.join(est['missing_programs'])})" if est["partial"]
           else "whole pipeline")
  whole = (f"{scope}: {est['days']:.2f} days, {est['chip_hours']:,.0f} chip-hours (the slice's {devices} chips held "
           "throughout)" + (f", about ${price:,.0f} at list price" if price is not None else ""))
  return lines + ["", whole]


def format_dropout(comparison: dict) -> list[str]:
  lines = ["| train.dropout_rng | est. step | bound | TFLOP/dev | GB accessed | peak GiB | fits |",
           "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
  for name, g in comparison["generators"].items():
    tag = " (config)" if name == comparison["configured"] else ""
    if g.get("step_s") is None:
      lines.append(f"| {name}{tag} | - | - | - | - | - | NO ({g.get('error')}) |")
      continue
    lines.append(f"| {name}{tag} | {format_duration(g['step_s'], 4)} | {g['bound']} | {g['flops'] / 1e12:.3f} | "
                 f"{g['bytes_accessed'] / 1e9:.2f} | {_gib(g['peak_bytes'])} | {'yes' if g['fits'] else 'NO'} |")
  depth = comparison.get("layers")
  lines.append(f"cheapest dropout-mask generator on {comparison.get('chip', 'this chip')}: {comparison['cheapest']}; "
               f"the config uses {comparison['configured']}"
               + (f" (train steps compiled with {depth[0]}+{depth[1]} layers)" if depth else ""))
  return lines


def format_plan(report: dict) -> str:
  """A readable report of a `plan`: the programs, the dropout-generator comparison, the per-stage table."""
  chip, est = report["chip"], report["estimate"]
  lines = [f"gensar plan: {report['config']} on {report['topology']} ({report['devices']} x {chip['name']} devices, "
           f"{_gib(chip['hbm_bytes'])} GiB HBM each, {report['hosts']} host(s)), mesh {report['mesh']}, "
           f"jax {report['jax']}, compiler {report['compiler']}",
           f"global batch {report['shapes']['global_batch']} ({report['shapes']['rows_per_device']} rows per "
           f"device), input {report['shapes']['input_len']}, target {report['shapes']['target_len']}, "
           f"bf16 training {report['model']['bf16_training']}, vocabulary {report['model']['vocab_size']}, "
           f"dropout masks {report['model']['dropout_rng']}", "",
           "| program | rows/dev | args GiB | temps GiB | peak GiB | HBM | fits | TFLOP/dev | GB accessed | "
           "collectives | est. time | bound | MFU |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | --- | ---: |"]
  lines += [_program_row(name, p) for name, p in report["programs"].items()]
  if report.get("dropout_rng"):
    lines += [""] + format_dropout(dict(report["dropout_rng"], chip=chip["name"]))
  b = report["budget"]
  lines += ["", f"budget: {b['num_steps']:,} steps ({b['steps_per_epoch']} per epoch of {b['epoch_examples']:,} "
                f"examples), {b['validations']} validations; counts from {report['counts']['source']}", ""]
  lines += format_stages(est, report["devices"])
  if "step_s" in est:
    lines.append(f"training: {format_duration(est['step_s'])} per step, {format_duration(est['epoch_s'])} per epoch, "
                 f"{format_duration(est['train_s'])} for the budget; "
                 f"one validation {format_duration(est.get('validation_s'))}")
  if "host_examples_per_s" in est:
    lines.append(f"input pipeline: each of the {report['hosts']} hosts must feed {est['host_examples_per_s']:,.0f} "
                 "examples/s to keep up")
  lines.append("roofline: max(FLOPs / peak, bytes / HBM bandwidth) + collective traffic / ICI bandwidth; an "
               "estimate from published chip figures, not a measurement")
  lines.append("FITS" if report["fits"] else "DOES NOT FIT")
  lines += [f"- {a}" for a in report["advice"]]
  return "\n".join(lines)
