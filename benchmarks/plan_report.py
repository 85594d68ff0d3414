"""The tables of docs/pods.md from measured files: the pod presets' plans (results/plan/*.json, written by
`gensar plan`), what they predict for each step of "Run on a pod", and the Electronics rehearsal
(results/benchmarks/electronics_rehearsal.json).

  python -m benchmarks.plan_report           # print the tables
  python -m benchmarks.plan_report --write   # and replace them in docs/pods.md between their markers

No number is typed by hand: every cell comes from those JSON files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.report import write_between_markers
from gensar_jax.plan import format_duration, slice_hosts

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "results" / "plan"
REHEARSAL = ROOT / "results" / "benchmarks" / "electronics_rehearsal.json"
PAGE = ROOT / "docs" / "pods.md"
MARKERS = {"plan": ("<!-- plan-table:start -->", "<!-- plan-table:end -->"),
           "attention": ("<!-- attention-table:start -->", "<!-- attention-table:end -->"),
           "pod-run": ("<!-- pod-run:start -->", "<!-- pod-run:end -->"),
           "rehearsal": ("<!-- rehearsal-table:start -->", "<!-- rehearsal-table:end -->")}
# The presets docs/pods.md "Run on a pod" walks through, in its order.
POD_RUN_PRESETS = ("tpu_v5e_8", "tpu_v5e_64", "gpu_8x")
GIB = 2 ** 30


def _duration(seconds: float | None) -> str:
  return format_duration(seconds, digits=1)


def _collectives(program: dict) -> str:
  items = program.get("collectives") or []
  return ", ".join(f"{c['count']}x {c['kind']} ({c['bytes'] / 2 ** 20:.0f} MiB)" for c in items) or "none"


def dropout_rows(path: Path, plan: dict) -> list[str]:
  """Markdown rows of a plan's dropout-mask comparison (one per generator compiled); [] when it compared
  fewer than two generators."""
  comparison = plan.get("dropout_rng") or {}
  gens = comparison.get("generators", {})
  if len(gens) < 2:
    return []
  depth = comparison.get("layers")
  where = (f"`{path.relative_to(ROOT)}` ({plan['chip']['name']}, train.dropout_rng={comparison['configured']}; "
           + (f"train steps of {depth[0]}+{depth[1]} layers)" if depth else "the full train step)"))
  rows = []
  for name, g in gens.items():
    cheapest = " (cheapest)" if name == comparison["cheapest"] else ""
    if g.get("step_s") is None:
      rows.append(f"| {where} | {name} | cannot run: {g.get('error')} | - | - | - |")
      continue
    rows.append(f"| {where} | {name}{cheapest} | {format_duration(g['step_s'], 4)} | {g['flops'] / 1e12:.1f} | "
                f"{g['bytes_accessed'] / 1e9:.1f} | {g['peak_bytes'] / GIB:.2f} |")
  return rows


def dropout_table(files: list[tuple[Path, dict]]) -> str:
  """The train step under each dropout-mask generator, from every plan that compared them."""
  rows = [row for path, plan in files for row in dropout_rows(path, plan)]
  if not rows:
    return ""
  return "\n".join(["| plan (chip; its config's generator; what was compiled) | train.dropout_rng | est. step | "
                    "TFLOP/chip/step | GB accessed | peak GiB |", "| --- | --- | ---: | ---: | ---: | ---: |", *rows])


def plan_row(plan: dict) -> str:
  """One markdown row: a preset's slice, train-step memory, cost, collectives, step estimate, dropout masks."""
  train = plan["programs"].get("train_step", {})
  beam = plan["programs"].get("beam_search_sampled", {})
  est, chip, shapes = plan.get("estimate", {}), plan["chip"], plan["shapes"]
  accum = max(shapes["grad_accum_steps"], 1)
  cells = [f"`{plan['config']}`",
           f"{plan['topology']}: {plan['devices']} x {chip['name']}, "
           f"{plan.get('hosts') or slice_hosts(plan['topology'], plan['devices'])} host(s)",
           f"{shapes['rows_per_device']} ({shapes['rows_per_device'] // accum} x {accum})",
           f"{train['memory']['peak_bytes'] / GIB:.1f} / {chip['hbm_bytes'] / GIB:.0f} "
           f"({'yes' if train.get('fits') else '**no**'})" if train.get("memory") else "-",
           f"{beam['memory']['peak_bytes'] / GIB:.1f}" if beam.get("memory") else "-",
           f"{train['flops'] / 1e12:.1f}" if train.get("flops") else "-",
           _collectives(train) if train else "-",
           _duration(est.get("step_s")),
           f"{est['mfu']:.0%}" if est.get("mfu") is not None else "-",
           plan["model"].get("dropout_rng", "threefry"), plan["model"].get("attention", "dense")]
  return "| " + " | ".join(cells) + " |"


HEADER = ("preset", "slice", "rows/chip (micro x accum)", "train step peak GiB / HBM (fits)",
          "validation beam search peak GiB", "train TFLOP/chip/step", "train step collectives", "est. step", "MFU",
          "dropout masks", "attention")

STAGE_NAMES = ("embed", "index", "doc2query", "train", "validation", "test")
PIPELINE_HEADER = ("preset", *STAGE_NAMES, "whole pipeline (days)", "chip-hours", "list price")


def pipeline_row(plan: dict) -> str:
  """One markdown row: hours per stage and the pipeline's days, chip-hours and price. A plan without the
  per-stage estimate (written before the plan counted every stage) shows its train + validation figures,
  labelled as such; a partial estimate (programs not compiled) is labelled partial."""
  est = plan.get("estimate", {})
  price = est.get("list_price_usd")
  if "stages" not in est:
    cells = [f"`{plan['config']}` (earlier plan: train + validation only)", "-", "-", "-",
             _duration(est.get("train_s")), _duration(est.get("all_validations_s")), "-",
             f"{est['budget_days']:.2f} (train + validation only)" if "budget_days" in est else "-",
             f"{est['chip_hours']:,.0f}" if "chip_hours" in est else "-",
             f"${price:,.0f}" if price is not None else "-"]
    return "| " + " | ".join(cells) + " |"
  stages = est["stages"]
  def stage_cell(name):
    stage = stages.get(name)
    if stage is None:
      return "-"
    return _duration(stage["seconds"]) + ("" if stage["complete"] else " (partial)")
  days = f"{est['days']:.2f}" + (f" (partial: {', '.join(est['missing_programs'])} not compiled)"
                                 if est["partial"] else "")
  cells = [f"`{plan['config']}`", *(stage_cell(s) for s in STAGE_NAMES), days, f"{est['chip_hours']:,.0f}",
           f"${price:,.0f}" if price is not None else "-"]
  return "| " + " | ".join(cells) + " |"


def presets_without_plan(plans: list[dict]) -> list[str]:
  """Configs with a `plan` section (configs/tpu_*.py, gpu_*.py) that have no results/plan/<name>.json."""
  planned = {p["config"] for p in plans}
  names = sorted(path.stem for pattern in ("tpu_*.py", "gpu_*.py") for path in (ROOT / "configs").glob(pattern))
  return [name for name in names if name not in planned]


def plan_table(plans: list[dict], comparisons: list[tuple[Path, dict]] = ()) -> str:
  """The presets' train steps, every stage of their pipelines, and the dropout-mask comparisons (from the
  presets' plans and the comparison runs in results/plan/dropout_rng/)."""
  lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
  lines += [plan_row(p) for p in plans]
  lines += ["", "Every stage of the pipeline (estimated time per stage on the slice; the slice is held for all of "
                "them, so chip-hours are the pipeline's hours x its chips):", "",
            "| " + " | ".join(PIPELINE_HEADER) + " |", "|" + " --- |" * len(PIPELINE_HEADER)]
  lines += [pipeline_row(p) for p in plans]
  missing = presets_without_plan(plans)
  if missing:
    lines += ["", "Not planned on this project's machine yet (a full-size train-step compile took 30 to 60 minutes "
                  "on its shared 2 cores): " + ", ".join(f"`{m}`" for m in missing) + "; "
                  + "; ".join(f"`gensar plan --config configs/{m}.py`" for m in missing[:1]) + " and so on."]
  budgets: dict[str, list[str]] = {}
  for plan in plans:
    b = plan["budget"]
    text = (f"{b['num_steps']:,} steps of {b['global_batch']:,} ({b['steps_per_epoch']} per epoch of "
            f"{b['epoch_examples']:,} examples), {b['validations']} validations; row counts from {b['epoch_source']}")
    budgets.setdefault(text, []).append(f"`{plan['config']}`")
  for text, names in budgets.items():
    lines += ["", f"Budget ({', '.join(names)}, the config's task mixture when planned): {text}."]
  dropout = dropout_table(list(comparisons))
  if dropout:
    lines += ["", "The train step under each dropout-mask generator (`plan.dropout_rngs`):", "", dropout]
  return "\n".join(lines)


def _price(plan: dict, seconds: float) -> str:
  """List price of the whole slice for `seconds` ("" where the chip has none)."""
  per_chip_hour = plan["chip"]["usd_per_chip_hour"]
  if per_chip_hour is None:
    return ""
  usd = per_chip_hour * plan["devices"] * seconds / 3600
  return f", ${usd:,.0f}" if usd >= 0.5 else ", under $1"


def _timed(plan: dict, seconds: float | None) -> str:
  return "not planned" if seconds is None else f"{_duration(seconds)}{_price(plan, seconds)}"


def more_trainings(suite: str = "main") -> int:
  """How many GenSAR models `gensar reproduce --suite <suite>` trains besides the one `gensar run` trained."""
  from gensar_jax.reproduce import suite_methods
  return sum(m.kind == "generative" for m in suite_methods(suite)) - 1


def pod_run_column(plan: dict) -> list[str]:
  """One preset's cells of the "Run on a pod" table, in `POD_RUN_ROWS` order. Plans with a per-stage estimate
  (`estimate.stages`) fill every row; older ones only training, validations and doc2query sampling."""
  est, budget, chip = plan.get("estimate", {}), plan["budget"], plan["chip"]
  price = chip["usd_per_chip_hour"]
  hosts = plan.get("hosts") or slice_hosts(plan["topology"], plan["devices"])
  slice_hour = (f"${price * plan['devices']:,.2f} per hour" if price is not None else "no list price")
  stages = est.get("stages") or {}
  stage_s = lambda name: stages[name]["seconds"] if name in stages else None  # noqa: E731
  train_s = stage_s("train") if stages else est.get("train_s")
  validations = stage_s("validation") if stages else est.get("all_validations_s")
  doc2query = stage_s("doc2query") if stages else est.get("doc2query_sampling_s")
  preparation = (stage_s("embed") or 0) + (stage_s("index") or 0) if {"embed", "index"} <= set(stages) else None
  if stages:
    total_s = est.get("total_s")
    total = (f"{_duration(total_s)}, {est['chip_hours']:,.0f} chip-hours{_price(plan, total_s)}"
             + (" (partial: not every stage was compiled)" if est.get("partial") else "")) if total_s else "not planned"
  else:
    total = (f"{_duration(est['budget_s'])}, {est['chip_hours']:,.0f} chip-hours{_price(plan, est['budget_s'])}, "
             "train and validations only" if "budget_s" in est else "not planned")
  extra = more_trainings()
  return [f"{plan['devices']} x {chip['name']}, {hosts} host(s): {slice_hour}",
          _timed(plan, preparation),
          _timed(plan, doc2query),
          _timed(plan, train_s) + (f" ({budget['num_steps']:,} steps of {_duration(est['step_s'])})"
                                   if train_s is not None else ""),
          _timed(plan, validations),
          _timed(plan, stage_s("test")),
          total,
          f"up to {_timed(plan, extra * train_s)} ({extra} x the training)" if train_s is not None else "not planned"]


POD_RUN_ROWS = ("the slice or node while it is up (`setup`, `fetch`, waiting), at list price",
                "`run`: `embed` and `index` (text encoder, SASRec, RQ-VAE)",
                "`run`: `doc2query` (training; pseudo-queries for the catalogue)",
                "`run`: training (`train` stage)",
                "`run`: validations during training",
                "`run` (and `eval`): the test split, both protocols",
                "`run`: the plan's total for the whole pipeline",
                "`reproduce --suite main`: the other GenSAR models")


def pod_run_table(plans: list[dict]) -> str:
  """What the plans predict for the steps of docs/pods.md "Run on a pod", one column per walked-through preset."""
  chosen = [next(p for p in plans if p["config"] == name) for name in POD_RUN_PRESETS
            if any(p["config"] == name for p in plans)]
  columns = [pod_run_column(p) for p in chosen]
  lines = ["| step | " + " | ".join(f"`{p['config']}` ({p['topology']})" for p in chosen) + " |",
           "|" + " --- |" * (len(chosen) + 1)]
  lines += [f"| {row} | " + " | ".join(column[i] for column in columns) + " |" for i, row in enumerate(POD_RUN_ROWS)]
  lines += ["", "Roofline estimates (lower bounds of the real times; \"How to read it\" under Before you rent a pod); "
                "\"not planned\": that program was not compiled for the preset (`gensar plan --programs ...`), or the "
                "plan predates the per-stage estimate. `prepare` runs on the host's CPU and is not planned: the "
                "Electronics-scale rehearsal measured it on this project's CPU."]
  return "\n".join(lines)


def _rehearsal_notes(name: str, part: dict) -> str:
  """The figures behind a part's extrapolation, from its JSON."""
  if name == "prepare":
    st = part["stats"]
    return (f"{st['users']:,} users, {st['items']:,} purchased items, {st['rec_interactions']:,} purchases, "
            f"{st['rec_train']:,} rec / {st['search_train']:,} search training rows")
  if name == "text":
    return (f"{part['sample_items'] / part['sample_seconds']:.1f} items/s with MiniLM; the reference's bge-base: "
            f"~{_duration(part['bge_base_estimate_seconds'])} ({part['bge_base_estimate']})")
  if name == "sasrec":
    return (f"{_duration(part['seconds_per_full_epoch'])} per epoch; full softmax over {part['items']:,} items: "
            f"{part['full_softmax_logits_per_batch_gib']} GiB of logits per batch")
  if name == "rqvae":
    return (f"{part['seconds_per_epoch']} s per epoch of {part['items']:,} items, {part['evaluation_seconds']} s per "
            "evaluation")
  if name == "pipeline":
    sides = part.get("sides")
    if not sides:
      return f"{part['examples_per_s']:,.0f} examples/s at {part['host_batch']} rows per batch"
    before, batched = sides["one_read_per_example"], sides["batched_reads"]
    return (f"{part['host_batch']} rows per batch; per CPU second: {before['examples_per_cpu_s']:,.0f} examples with "
            f"one stored-sample read per example (the earlier pipeline), {batched['examples_per_cpu_s']:,.0f} with "
            f"batched reads; {part['examples_per_s']:,.0f} examples/s from {part['workers']} worker processes")
  return ""


def rehearsal_table(report: dict) -> str:
  lines = ["| stage (part) | what was timed | wall time of the part | its CPU time (load at end) | peak RSS | "
           "full stage | figures |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
  for name, part in report["parts"].items():
    full = part.get("extrapolated_seconds", part["wall_seconds"] if part.get("measured") == "whole stage" else None)
    cpu = (f"{_duration(part['cpu_seconds'])} ({part['load_average_at_end']})" if "cpu_seconds" in part else "-")
    lines.append(f"| {name} | {part.get('measured', '')} | {_duration(part['wall_seconds'])} | {cpu} | "
                 f"{part['peak_rss_gib']:.1f} GiB | {_duration(full)} | {_rehearsal_notes(name, part)} |")
  pipe = report["parts"].get("pipeline")
  if pipe:
    lines.append("")
    lines.append("What one TPU host must feed at the plans' estimated step times, against this CPU's pipeline:")
    for p in pipe["against_plans"]:
      line = (f"- `{p['plan']}`: {p['required_examples_per_s']:,.0f} examples/s ({p['rows_per_host']} rows per host "
              f"every {_duration(p['step_s'])}, {p['hosts']} host(s)); the pipeline measured here gives "
              f"{p['headroom']}x that")
      if "cores_needed" in p:
        cores = p["cores_needed"]
        line += (f"; at {pipe['examples_per_cpu_s']:,.0f} examples per CPU second that is {cores} "
                 f"core{'s' if cores != 1 else ''} of the host (`tasks.pipeline_workers={cores}`)")
      lines.append(line)
  return "\n".join(lines)


# The breakdown's terms shown in the attention table, in order (the rest are summed under "rest").
SHOWN_TERMS = ("attention", "feed_forward", "output_layer_and_loss", "other")


def attention_row(path: Path, plan: dict) -> str:
  """One markdown row of a train-step plan: bytes, FLOPs, peak, step, MFU and the bytes of its breakdown's terms."""
  train = plan["programs"]["train_step"]
  roof = train["roofline"]
  breakdown = train.get("breakdown") or {}
  terms = [f"{breakdown[t]['bytes'] / 1e9:,.0f}" if t in breakdown else "-" for t in SHOWN_TERMS]
  rest = sum(v["bytes"] for t, v in breakdown.items() if t not in SHOWN_TERMS)
  cells = [f"`{plan['config']}`", f"`{path.relative_to(ROOT)}`", plan["model"].get("attention", "dense"),
           plan["model"].get("dropout_rng", "threefry"), f"{train['bytes_accessed'] / 1e9:,.0f}",
           f"{train['flops'] / 1e12:.1f}", f"{train['memory']['peak_bytes'] / GIB:.1f}", _duration(roof["step_s"]),
           f"{roof['mfu']:.0%}", *terms, f"{rest / 1e9:,.0f}" if breakdown else "-"]
  return "| " + " | ".join(cells) + " |"


ATTENTION_HEADER = ("preset", "plan", "model.attention", "dropout masks", "GB/chip/step", "TFLOP/chip/step",
                    "peak GiB", "est. step", "MFU", *(f"GB {t}" for t in SHOWN_TERMS), "GB rest")


def attention_table(files: list[tuple[Path, dict]]) -> str:
  """The train step with dense and fused attention, per preset (the files' order)."""
  lines = ["| " + " | ".join(ATTENTION_HEADER) + " |", "|" + " --- |" * len(ATTENTION_HEADER)]
  lines += [attention_row(path, plan) for path, plan in files if "train_step" in plan["programs"]]
  return "\n".join(lines)


def recorded_tables() -> dict[str, str]:
  """{name in MARKERS: table} rendered from the recorded plans and rehearsal (no rehearsal table without its file)."""
  paths = sorted(PLANS.glob("*.json"))
  plans = [json.loads(p.read_text()) for p in paths]
  comparisons = [(p, json.loads(p.read_text())) for p in [*paths, *sorted((PLANS / "dropout_rng").glob("*.json"))]]
  tables = {"plan": plan_table(plans, comparisons), "pod-run": pod_run_table(plans)}
  attention = [(p, json.loads(p.read_text())) for p in sorted((PLANS / "attention").glob("*.json"))]
  if attention:
    tables["attention"] = attention_table(attention)
  if REHEARSAL.exists():
    tables["rehearsal"] = rehearsal_table(json.loads(REHEARSAL.read_text()))
  return tables


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--write", action="store_true", help=f"write the tables into {PAGE.relative_to(ROOT)}")
  args = parser.parse_args()
  tables = recorded_tables()
  for body in tables.values():
    print(body, end="\n\n")
  if args.write:
    write_between_markers(PAGE, {MARKERS[name]: body + "\n" for name, body in tables.items()})


if __name__ == "__main__":
  main()
