"""Running `gensar reproduce`: GenSAR, its variants and the classic baselines on one prepared dataset and one
evaluation protocol, written as the paper's tables.

The reference pipeline (the config as given) runs in `<workdir>/` like `gensar run`. Every other
generative method is the same config with a few overrides and runs in `<workdir>/reproduce/runs/<slug>/`;
a stage whose fingerprint there equals the one in `<workdir>/<stage>` is a symlink to it, so prepare and
embed are always shared, index is shared unless the identifiers change, and doc2query, train and eval
unless their inputs do. Outputs in `<workdir>/reproduce/`: tables.md, results.json, tradeoff.png and
timings.json (per-method per-stage wall times, written as the run goes).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import ml_collections

from gensar_jax import stages
from gensar_jax.eval.metrics import TASKS
from gensar_jax.io_utils import DataError, atomic_path, fingerprint, is_uri, read_json, write_json, write_text
from gensar_jax.reproduce.methods import SUITES, Method, reproduce_section, suite_methods, with_overrides
from gensar_jax.reproduce.tables import format_tables, plot_tradeoff

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ stage sharing

def _stage_fingerprint_on_disk(stage_dir: Path) -> str | None:
  record = stages.read_record(stage_dir)
  return record["fingerprint"] if record else None


def stage_action(stage: stages.Stage, config: ml_collections.ConfigDict, run_dir: Path, main_workdir: Path) -> str:
  """What a method's run directory needs for `stage` (its dependencies are already in `run_dir`).

  Returns "shared" (`<main_workdir>/<stage>` has the method's fingerprint: link it, or already linked),
  "fresh" (`run_dir` holds its own up-to-date copy) or "run".
  """
  wanted = stages.stage_fingerprint(stage, config, run_dir)
  local = run_dir / stage.name
  if local.is_dir() and not local.is_symlink() and _stage_fingerprint_on_disk(local) == wanted:
    return "fresh"
  return "shared" if _stage_fingerprint_on_disk(main_workdir / stage.name) == wanted else "run"


def link_stage(run_dir: Path, main_workdir: Path, stage_name: str) -> None:
  """Makes `<run_dir>/<stage_name>` a relative symlink to `<main_workdir>/<stage_name>` (replacing an old
  link, or a stale directory of the method's own)."""
  link = run_dir / stage_name
  target = Path(os.path.relpath((main_workdir / stage_name).resolve(), run_dir.resolve()))
  if link.is_symlink():
    if Path(os.readlink(link)) == target:
      return
    link.unlink()
  elif link.exists():
    with atomic_path(link) as tmp:      # the stale copy is removed only once the link is in place
      tmp.symlink_to(target, target_is_directory=True)
    return
  run_dir.mkdir(parents=True, exist_ok=True)
  link.symlink_to(target, target_is_directory=True)


def _unlink_if_symlink(path: Path) -> None:
  """A stage that must run in a method's directory never writes through a link into the main workdir."""
  if path.is_symlink():
    path.unlink()


class Timings:
  """Per-method per-stage wall times, saved to `path` (JSON) after every record."""

  def __init__(self, path: Path):
    self.path = Path(path)
    self.data: dict[str, dict[str, dict]] = read_json(self.path) if self.path.exists() else {}

  def record(self, key: str, stage: str, action: str, seconds: float | None) -> None:
    """action: "ran" or "shared" (`seconds` = this call's wall time), or "fresh" / "up to date" (outputs
    of an earlier call are kept, and so are their recorded seconds)."""
    if action in ("fresh", "up to date"):
      seconds = (self.data.get(key, {}).get(stage) or {}).get("seconds")
    self.data.setdefault(key, {})[stage] = {"action": action,
                                            "seconds": None if seconds is None else round(seconds, 2)}
    write_json(self.path, self.data)


def run_reference_pipeline(config: ml_collections.ConfigDict, workdir: Path, timings: Timings) -> None:
  """Every stage of the config as given in `<workdir>/`, skipping fresh ones (as `gensar run`)."""
  for name, stage in stages.STAGES.items():
    if stages.is_fresh(stage, config, workdir):
      timings.record("reference", name, "up to date", None)
      log.info("reproduce: reference %s up to date in %s", name, workdir / name)
      continue
    start = time.perf_counter()
    stages.run_stage(stage, config, workdir)
    timings.record("reference", name, "ran", time.perf_counter() - start)
    log.info("reproduce: reference %s done in %.1fs", name, time.perf_counter() - start)


def run_method(method: Method, config: ml_collections.ConfigDict, main_workdir: Path, run_dir: Path,
               timings: Timings) -> dict[str, str]:
  """Brings the method's run directory up to date stage by stage: {stage: "shared"|"fresh"|"ran"}."""
  run_dir.mkdir(parents=True, exist_ok=True)
  actions = {}
  for name, stage in stages.STAGES.items():
    action = stage_action(stage, config, run_dir, main_workdir)
    start = time.perf_counter()
    if action == "shared":
      link_stage(run_dir, main_workdir, name)
    elif action == "run":
      if name in ("prepare", "embed"):
        raise DataError(f"{main_workdir / name}: the reference {name} stage does not match method {method.name!r} "
                        "(methods must share the prepared data and embeddings)")
      _unlink_if_symlink(run_dir / name)
      stages.run_stage(stage, config, run_dir)
      action = "ran"
    actions[name] = action
    timings.record(method.slug, name, action, time.perf_counter() - start)
  return actions


# ------------------------------------------------------------------------------------ baselines

def baseline_metrics(method: Method, config: ml_collections.ConfigDict, workdir: Path, cache_dir: Path,
                     timings: Timings) -> dict:
  """{task: {protocol: metrics}} of a classic baseline on the reference workdir, cached by the fingerprint
  of its inputs (prepare, embed, the baselines/embed sections, seed, split)."""
  from gensar_jax.eval.baselines import evaluate_baselines

  split = config.eval.split
  key = fingerprint(method.baseline, split, config.seed, config.baselines.to_dict(), config.embed.to_dict(),
                    _stage_fingerprint_on_disk(workdir / "prepare"), _stage_fingerprint_on_disk(workdir / "embed"))
  path = cache_dir / f"{method.slug}.json"
  if path.exists() and read_json(path).get("fingerprint") == key:
    timings.record(method.slug, "baseline", "fresh", None)
    return read_json(path)["metrics"]
  start = time.perf_counter()
  metrics = evaluate_baselines(workdir, config, split=split, methods=[method.baseline])[method.baseline]
  timings.record(method.slug, "baseline", "ran", time.perf_counter() - start)
  write_json(path, {"fingerprint": key, "metrics": metrics})
  return metrics


# ---------------------------------------------------------------------------------- the command

def _identifier_summary(index_stats: Mapping[str, Any]) -> dict:
  """Collision figures and code usage of one method's identifiers (from index/stats.json)."""
  views = {view: {k: v for k, v in values.items() if k != "collisions_per_round"}
           for view, values in index_stats["views"].items()}
  return {"mode": index_stats["mode"], "num_levels": index_stats["num_levels"],
          "codebook_size": index_stats["codebook_size"], "collision_rate_after": index_stats["collision_rate_after"],
          "views": views, "levels": index_stats["levels"]}


def _generative_row(method: Method, run_dir: Path, split: str, config: ml_collections.ConfigDict) -> dict:
  eval_dir = stages.output_dir(run_dir, "eval")
  eval_stats = read_json(eval_dir / "stats.json")
  if eval_stats["split"] != split:
    raise DataError(f"{eval_dir / 'stats.json'}: split {eval_stats['split']!r}, expected {split!r}")
  metrics = read_json(eval_dir / "metrics.json")
  train = read_json(stages.output_dir(run_dir, "train") / "stats.json")
  return {"metrics": {task: metrics[task] for task in method.tasks},
          "identifiers": _identifier_summary(read_json(stages.output_dir(run_dir, "index") / "stats.json")),
          "identifier_lengths": [int(config.identifiers.num_shared_levels), int(config.identifiers.num_specific_levels)],
          "train": {k: train.get(k) for k in ("steps", "batch_size", "num_params", "selected_step", "seconds")},
          "workdir": str(run_dir)}


def _log_method(row: Mapping[str, Any], seconds: float) -> None:
  parts = []
  for task in TASKS:
    metrics = row["metrics"].get(task)
    if metrics:
      parts.append(f"{task} NDCG@10 {metrics['sampled']['NDCG@10']:.4f} (sampled) / "
                   f"{metrics['full']['NDCG@10']:.4f} (full)")
  log.info("reproduce: %s: %s in %.1fs", row["name"], ", ".join(parts), seconds)


def _header(config: ml_collections.ConfigDict, workdir: Path, suite: str) -> dict:
  prepare_stats = read_json(stages.output_dir(workdir, "prepare") / "stats.json")
  train = read_json(stages.output_dir(workdir, "train") / "stats.json")
  model = read_json(stages.output_dir(workdir, "train") / "model" / "model_config.json")
  eval_stats = read_json(stages.output_dir(workdir, "eval") / "stats.json")
  return {"config": config.name, "config_fingerprint": fingerprint(config.to_dict()), "suite": suite,
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "seed": int(config.seed), "split": config.eval.split, "num_beams": int(eval_stats["num_beams"]),
          "num_items": int(prepare_stats["items"]), "num_negatives": list(prepare_stats["negatives_per_event"]),
          "num_queries": eval_stats["num_queries"],
          "model": {"num_params": train["num_params"],
                    **{k: model[k] for k in ("d_model", "num_encoder_layers", "num_decoder_layers", "num_heads",
                                             "d_ff", "vocab_size")}},
          "training": {"steps": train["steps"], "batch_size": train["batch_size"]}}


def reproduce_main(config: ml_collections.ConfigDict, workdir: Path, suite: str | None = None) -> dict:
  """Runs a suite (default `config.reproduce.suite`) and writes `<workdir>/reproduce/`.

  Returns the content of results.json: {"header", "methods": [{name, slug, kind, group, tasks,
  overrides, metrics: {task: {protocol: metrics}}, ...}], "timings"}.
  """
  section = reproduce_section(config)
  suite = suite or section.suite
  if config.eval.get("limit") is not None:
    raise ValueError(f"config.eval.limit={config.eval.limit}: reproduce compares every method on all rows of the "
                     "split (the baselines have no row limit); unset it")
  if is_uri(workdir):
    raise DataError(f"workdir {workdir}: `gensar reproduce` needs a local or mounted workdir (its methods share "
                    "stage outputs through symbolic links); run it on a shared mount of the bucket (gcsfuse), or run "
                    "`gensar run` per method on the bucket")
  workdir = Path(workdir)
  out_dir = workdir / "reproduce"
  out_dir.mkdir(parents=True, exist_ok=True)
  timings = Timings(out_dir / "timings.json")
  methods = suite_methods(suite, section.identifier_lengths, tuple(config.baselines.methods))
  log.info("reproduce: suite %s, %d methods, reference workdir %s", suite, len(methods), workdir)
  run_reference_pipeline(config, workdir, timings)

  rows = []
  for method in methods:
    start = time.perf_counter()
    row = {"name": method.name, "slug": method.slug, "kind": method.kind, "group": method.group,
           "tasks": list(method.tasks), "overrides": dict(method.overrides)}
    if method.kind == "baseline":
      metrics = baseline_metrics(method, config, workdir, out_dir / "baselines", timings)
      row["metrics"] = {task: metrics[task] for task in method.tasks}
    else:
      method_config = with_overrides(config, method.overrides)
      run_dir = out_dir / "runs" / method.slug
      row["stages"] = run_method(method, method_config, workdir, run_dir, timings)
      stages.check_consistent(run_dir, ["eval"])     # never a table row from outputs that do not belong together
      row.update(_generative_row(method, run_dir, config.eval.split, method_config))
    rows.append(row)
    _log_method(row, time.perf_counter() - start)

  results = {"header": _header(config, workdir, suite), "methods": rows, "timings": timings.data}
  for row in rows:
    row["timings"] = timings.data.get(row["slug"], {})
  write_json(out_dir / "results.json", results)
  write_text(out_dir / "tables.md", format_tables(results))
  plotted = plot_tradeoff(rows, out_dir / "tradeoff.png")
  log.info("reproduce: %d methods -> %s (tables.md, results.json, tradeoff.png with %d points)", len(rows), out_dir,
           plotted)
  return results


def add_reproduce_args(parser: argparse.ArgumentParser) -> None:
  """`gensar reproduce` options (besides --config, --workdir, --set)."""
  parser.add_argument("--suite", choices=SUITES, default=None,
                      help="main: GenSAR, variants and baselines; ablations: task/token ablations and identifier "
                           "lengths; all: both (default: config.reproduce.suite, else main)")
