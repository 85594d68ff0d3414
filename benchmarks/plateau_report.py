"""The Office learning curve: GenSAR trained until validation stops improving (`configs/office_plateau.py`).

  gensar run --config configs/office_plateau.py --workdir runs/office_plateau   # resumable; hours on a CPU
  python -m benchmarks.plateau_report --workdir runs/office_plateau [--write]

Reads the run's `eval_history.json` (finished: `<workdir>/train/`; in progress: the partial directory of
this config's train fingerprint, so a run of other inputs is refused), its test metrics once the eval stage
has finished, and SASRec / dense retrieval / the 400-step GenSAR from `results/office/results.json` (same
data section, checked). Writes `results/office/plateau.json` and `results/office/learning_curve.png`; with
`--write`, the section of docs/reproduction.md between `<!-- plateau:office:start -->` and `<!-- plateau:office:end -->`.
An earlier run of the same model and data with another horizon (`--earlier`, by default
`results/office/plateau_horizon20_partial.json`) is drawn beside the curve and compared at equal steps.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.report import write_between_markers
from gensar_jax import stages
from gensar_jax.config import load_config
from gensar_jax.data.task_data import load_task_data
from gensar_jax.io_utils import DataError, atomic_path, read_json, write_json
from gensar_jax.train.loop import EVAL_HISTORY, best_evaluation, evaluations_since_best

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "office"
PAGE = ROOT / "docs" / "reproduction.md"
MARKERS = ("<!-- plateau:office:start -->", "<!-- plateau:office:end -->")
CURVES = (("rec", "val/rec_NDCG@10"), ("search", "val/search_NDCG@10"), ("mean", "val/ndcg10_mean"))
EARLIER = RESULTS / "plateau_horizon20_partial.json"
BASELINES = (("GenSAR at the 400-step CPU budget", "GenSAR"), ("SASRec", "SASRec"), ("Dense retrieval", "Dense retrieval"))


def train_dir(config, workdir: Path) -> tuple[Path, bool]:
  """(directory of this config's training run, finished?): the committed output of `train` when its record
  has this config's fingerprint, else the in-progress attempt directory of that fingerprint; anything else
  is refused."""
  fp = stages.stage_fingerprint(stages.STAGES["train"], config, workdir)
  record = stages.read_record(workdir / "train")
  if record is not None and record["fingerprint"] == fp:
    return stages.output_dir(workdir, "train"), True
  partial = workdir / "train" / stages.attempt_name(fp)
  if (partial / EVAL_HISTORY).exists():
    return partial, False
  raise DataError(f"{workdir}: no training run of {config.name} with its current inputs (train fingerprint {fp}); "
                  f"run `gensar run --config configs/{config.name}.py --workdir {workdir}` first")


def earlier_run(path: Path | None) -> dict | None:
  """The mean validation curve of an earlier plateau.json (another horizon), or None without one."""
  if path is None or not path.exists():
    return None
  earlier = read_json(path)
  missing = [k for k in ("config", "planned_steps", "last_step", "status", "train_fingerprint", "history")
             if k not in earlier]
  if missing:
    raise DataError(f"{path}: not a plateau_report summary (missing {', '.join(missing)})")
  return {"file": path.name, "planned_steps": earlier["planned_steps"], "last_step": earlier["last_step"],
          "status": earlier["status"], "train_fingerprint": earlier["train_fingerprint"],
          "history": [{k: e[k] for k in ("step", "val/rec_NDCG@10", "val/search_NDCG@10", "val/ndcg10_mean")}
                      for e in earlier["history"]]}


def summarize(config, workdir: Path, baseline_report: dict, earlier: dict | None = None) -> dict:
  """Everything the curve, the table and the docs section need, as plain JSON."""
  run_dir, finished = train_dir(config, workdir)
  history = read_json(run_dir / EVAL_HISTORY)
  if not history:
    raise DataError(f"{run_dir / EVAL_HISTORY}: no evaluation recorded yet")
  t = config.train
  task_data = load_task_data(workdir, config)
  epoch_examples = task_data.mixture(config.tasks.sizes.to_dict(), 1, int(config.seed)).epoch_len
  metric = t.best_metric
  best = best_evaluation(history, metric, t.best_mode)
  since = evaluations_since_best(history, metric, t.best_mode)
  stopped = int(t.early_stopping_patience) > 0 and since >= int(t.early_stopping_patience)
  status = ("stopped early" if stopped else "reached the schedule's horizon" if history[-1]["step"] >= int(t.num_steps)
            else "in progress")
  test = None
  eval_record = stages.read_record(workdir / "eval")
  if finished and eval_record is not None and stages.is_fresh(stages.STAGES["eval"], config, workdir):
    test = read_json(stages.output_dir(workdir, "eval") / "metrics.json")
  baselines = []                      # a list: the JSON writer sorts dict keys
  for label, name in BASELINES:
    method = next((m for m in baseline_report["methods"] if m["name"] == name), None)
    if method is not None:
      baselines.append({"label": label, "metrics": method["metrics"]})
  return {
      "config": config.name, "train_fingerprint": stages.stage_fingerprint(stages.STAGES["train"], config, workdir),
      "status": status, "batch_size": int(t.batch_size), "planned_steps": int(t.num_steps),
      "epoch_examples": epoch_examples, "eval_every": int(t.eval_every), "patience": int(t.early_stopping_patience),
      "best_metric": metric, "validation_rows": int(config.eval.validation_rows),
      "last_step": history[-1]["step"], "hours": round(history[-1]["seconds"] / 3600, 2),
      "best": {k: best[k] for k in ("step", metric, "val/rec_NDCG@10", "val/search_NDCG@10")},
      "evaluations_since_best": since,
      "history": [{k: e.get(k) for k in ("step", "seconds", "train/loss", "val/rec_HR@10", "val/rec_NDCG@10",
                                          "val/search_HR@10", "val/search_NDCG@10", "val/ndcg10_mean")}
                  for e in history],
      "test": test, "baselines": baselines, "baseline_results": baseline_report["header"], "earlier": earlier,
  }


def epochs(summary: dict, step: int) -> float:
  return step * summary["batch_size"] / summary["epoch_examples"]


def plot_curve(summary: dict, path: Path) -> None:
  """learning_curve.png: validation NDCG@10 (sampled) of rec, search and their mean against epochs, the
  selected checkpoint marked."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(6.4, 4.4), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  x = [epochs(summary, e["step"]) for e in summary["history"]]
  for label, key in CURVES:
    axes.plot(x, [e[key] for e in summary["history"]], marker="o", markersize=3, linewidth=1.2,
              label=f"{label} NDCG@10", linestyle="--" if label == "mean" else "-")
  earlier = summary.get("earlier")
  if earlier:
    axes.plot([epochs(summary, e["step"]) for e in earlier["history"]],
              [e["val/ndcg10_mean"] for e in earlier["history"]], color="0.6", linestyle="--", linewidth=1,
              marker="x", markersize=3, label=f"mean, earlier run, {earlier['planned_steps']:,}-step horizon")
  best_epoch = epochs(summary, summary["best"]["step"])
  axes.axvline(best_epoch, color="0.4", linestyle=":", linewidth=1)
  axes.annotate(f"selected: step {summary['best']['step']}", (best_epoch, 0.02), xycoords=axes.get_xaxis_transform(),
                fontsize=7, color="0.3", xytext=(3, 0), textcoords="offset points")
  axes.set_xlabel(f"epochs ({summary['batch_size']} examples per step)")
  axes.set_ylabel(f"validation NDCG@10, sampled ({summary['validation_rows']} rows per task)")
  axes.set_title(f"GenSAR on Office: {summary['status']} at step {summary['last_step']}", fontsize=10)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  with atomic_path(path) as tmp:
    figure.savefig(tmp, format="png")


def _metric(metrics: dict | None, task: str, protocol: str, key: str = "NDCG@10") -> float | None:
  return (metrics or {}).get(task, {}).get(protocol, {}).get(key)


def _cell(metrics: dict | None, task: str, protocol: str, key: str) -> str:
  value = _metric(metrics, task, protocol, key)
  return "–" if value is None else f"{value:.4f}"


def trend(summary: dict, span: int = 4) -> str:
  """' Over the last k evaluations (e epochs) the mean ... moved by d.' (empty with a single evaluation)."""
  history, metric = summary["history"], summary["best_metric"]
  k = min(span, len(history) - 1)
  if k < 1:
    return ""
  first, last = history[-1 - k], history[-1]
  mean, rec, search = (last[key] - first[key] for key in (metric, "val/rec_NDCG@10", "val/search_NDCG@10"))
  return (f" Over the last {k} evaluations ({epochs(summary, last['step'] - first['step']):.1f} epochs) the mean "
          f"validation NDCG@10 moved by {mean:+.4f} (rec {rec:+.4f}, search {search:+.4f}).")


def earlier_comparison(summary: dict) -> str:
  """' An earlier run with a h-step horizon ... at step s: mean a here, b there.' (empty without one)."""
  earlier = summary.get("earlier")
  if not earlier:
    return ""
  here = {e["step"]: e for e in summary["history"]}
  common = [e for e in earlier["history"] if e["step"] in here]
  text = (f" The grey curve is an earlier run of the same model and data with a cosine horizon of "
          f"{earlier['planned_steps']:,} steps (`results/office/{earlier['file']}`, recorded up to step "
          f"{earlier['last_step']:,})")
  if not common:
    return text + "."
  step = common[-1]["step"]
  metric = "val/ndcg10_mean"
  return text + (f"; at step {step:,}, its last step in common with this run, its mean validation NDCG@10 was "
                 f"{common[-1][metric]:.4f} against {here[step][metric]:.4f} here.")


def versus_baselines(summary: dict) -> str:
  """'On the test split the selected checkpoint's ... ' ratios against the baseline rows (empty without a test)."""
  test = summary["test"]
  if not test:
    return ""
  rows = {b["label"]: b["metrics"] for b in summary["baselines"]}
  parts = []
  for task, protocol in (("rec", "sampled"), ("search", "sampled"), ("rec", "full"), ("search", "full")):
    ours = _metric(test, task, protocol)
    if ours is None:
      continue
    ratios = [f"{ours / theirs:.2f}x {label}" for label, metrics in rows.items()
              if (theirs := _metric(metrics, task, protocol))]
    parts.append(f"{task} {protocol} {ours:.4f}" + (f" ({', '.join(ratios)})" if ratios else ""))
  return "On the test split the selected checkpoint's NDCG@10 is " + "; ".join(parts) + "."


def render(summary: dict) -> str:
  """The section of docs/reproduction.md: what ran, where the curve stands, and the test table once there is one."""
  best = summary["best"]
  lines = [
      f"`configs/office_plateau.py` (train fingerprint `{summary['train_fingerprint']}`): {summary['status']} at "
      f"step {summary['last_step']:,} of {summary['planned_steps']:,} ({epochs(summary, summary['last_step']):.1f} "
      f"epochs, {summary['hours']} h of wall time since the run started, pauses included, on this 2-core CPU). "
      f"Best mean validation NDCG@10 "
      f"{best[summary['best_metric']]:.4f} (rec {best['val/rec_NDCG@10']:.4f}, search "
      f"{best['val/search_NDCG@10']:.4f}) at step {best['step']:,} ({epochs(summary, best['step']):.1f} epochs); "
      f"{summary['evaluations_since_best']} evaluation(s) since, patience {summary['patience']}.{trend(summary)}"
      f"{earlier_comparison(summary)}",
      "",
      f"![learning curve]({os.path.relpath(RESULTS / 'learning_curve.png', PAGE.parent)})",
      "",
      "| Method (test, sampled protocol) | Rec HR@10 | Rec NDCG@10 | Search HR@10 | Search NDCG@10 | "
      "Rec NDCG@10 (full) | Search NDCG@10 (full) |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  rows = [(f"GenSAR, selected checkpoint (step {best['step']:,})", summary["test"])] if summary["test"] else []
  rows += [(b["label"], b["metrics"]) for b in summary["baselines"]]
  for label, metrics in rows:
    lines.append(f"| {label} | " + " | ".join(_cell(metrics, task, protocol, key) for task, protocol, key in (
        ("rec", "sampled", "HR@10"), ("rec", "sampled", "NDCG@10"), ("search", "sampled", "HR@10"),
        ("search", "sampled", "NDCG@10"), ("rec", "full", "NDCG@10"), ("search", "full", "NDCG@10"))) + " |")
  if summary["test"]:
    lines += ["", versus_baselines(summary)]
  else:
    lines += ["", "The plateau model has no test row yet: the run has not finished (it continues from its last "
                  "checkpoint when the same command is run again)."]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, type=Path)
  parser.add_argument("--config", default="office_plateau")
  parser.add_argument("--results", default=RESULTS, type=Path, help="results/<config> with the baselines' results.json")
  parser.add_argument("--write", action="store_true", help=f"write the section into {PAGE.relative_to(ROOT)}")
  parser.add_argument("--earlier", default=EARLIER, type=Path, help="an earlier run's plateau.json to draw beside")
  args = parser.parse_args(argv)
  config = load_config(args.config)
  baseline_report = read_json(args.results / "results.json")
  reference = load_config(baseline_report["header"]["config"])
  if reference.data.to_dict() != config.data.to_dict():
    raise DataError(f"{args.results / 'results.json'}: its baselines ran on config {reference.name!r}, whose data "
                    f"section differs from {config.name!r}: the splits would not match")
  summary = summarize(config, args.workdir, baseline_report, earlier_run(args.earlier))
  write_json(args.results / "plateau.json", summary)
  plot_curve(summary, args.results / "learning_curve.png")
  body = render(summary)
  if args.write:
    write_between_markers(PAGE, {MARKERS: body})
  print(body)


if __name__ == "__main__":
  main()
