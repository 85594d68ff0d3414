"""The tables and the figure of `gensar reproduce` (tables.md and tradeoff.png), from its results.json
(`reproduce.reproduce_main`): one table per task and protocol, the ablations, identifier lengths and
statistics, the wall times, and the quality/size trade-off plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from gensar_jax import stages
from gensar_jax.eval.metrics import PROTOCOLS, TABLE_METRICS, TASKS
from gensar_jax.io_utils import atomic_path
from gensar_jax.reproduce.methods import GENSAR, METHOD_NOTES

TASK_TITLES = {"rec": "Recommendation", "search": "Search"}
MISSING = "–"      # a metric a method does not address


def _cell(value: float | None, best: float | None) -> str:
  if value is None:
    return MISSING
  text = f"{value:.4f}"
  return f"**{text}**" if best is not None and value == best else text


def _table(header: Sequence[str], rows: Sequence[tuple[Sequence[str], Sequence[float | None]]],
           bold_best: bool = True) -> str:
  """Markdown table: `rows` = (label cells, numeric cells); the best value of each numeric column is bold."""
  num_labels = len(rows[0][0]) if rows else 0
  columns = list(zip(*[values for _, values in rows])) if rows else []
  best = [max((v for v in col if v is not None), default=None) if bold_best else None for col in columns]
  lines = ["| " + " | ".join(header) + " |",
           "| " + " | ".join(["---"] * num_labels + ["---:"] * (len(header) - num_labels)) + " |"]
  for labels, values in rows:
    lines.append("| " + " | ".join([*labels, *(_cell(v, b) for v, b in zip(values, best))]) + " |")
  return "\n".join(lines) + "\n"


def _value(row: Mapping[str, Any], task: str, protocol: str, metric: str) -> float | None:
  metrics = row["metrics"].get(task)
  return None if metrics is None else float(metrics[protocol][metric])


def task_table(rows: Sequence[Mapping[str, Any]], task: str, protocol: str) -> str:
  """One task under one protocol: a row per method, columns HR@1 HR@5 HR@10 NDCG@5 NDCG@10."""
  return _table(["Method", *TABLE_METRICS],
                [([row["name"]], [_value(row, task, protocol, m) for m in TABLE_METRICS]) for row in rows])


def ablation_table(rows: Sequence[Mapping[str, Any]], protocol: str) -> str:
  """Both tasks under one protocol: a row per method, HR@10 and NDCG@10 of each task."""
  header = ["Method"] + [f"{TASK_TITLES[t]} {m}" for t in TASKS for m in ("HR@10", "NDCG@10")]
  return _table(header, [([row["name"]], [_value(row, t, protocol, m) for t in TASKS for m in ("HR@10", "NDCG@10")])
                         for row in rows])


def _collisions(row: Mapping[str, Any], view: str) -> str:
  stats = row["identifiers"]["views"].get(view)
  if stats is None:
    return MISSING
  return f"{stats['collision_rate_before']:.4f} → {stats['collision_rate_after']:.4f}"


def identifier_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A row per generative method: identifier mode, codes per ID, collision rates of each view (argmin ->
  after resolution) and the share of each level's codebook in use."""
  header = ["Method", "identifiers", "codes per ID", "semantic collisions", "collab collisions", "codes in use per level"]
  body = []
  for row in rows:
    ids = row["identifiers"]
    usage = ", ".join(f"{level} {stats['utilization']:.0%}" for level, stats in ids.get("levels", {}).items())
    body.append(([row["name"], ids["mode"], str(ids["num_levels"]), _collisions(row, "semantic"),
                  _collisions(row, "collab"), usage or MISSING], []))
  return _table(header, body)


def _seconds_cell(entry: Mapping[str, Any] | None) -> str:
  if entry is None:
    return MISSING
  if entry["action"] == "shared":
    return "shared"
  return MISSING if entry["seconds"] is None else f"{entry['seconds']:,.0f}"


def _own_seconds(stage_times: Mapping[str, Mapping[str, Any]]) -> list[float]:
  """Recorded seconds of the stages a row computed itself (links to the reference's stages cost nothing)."""
  return [e["seconds"] for e in stage_times.values() if e["action"] != "shared" and e["seconds"] is not None]


def wall_time_table(rows: Sequence[Mapping[str, Any]], timings: Mapping[str, Mapping[str, Any]]) -> str:
  """Seconds per stage: the reference pipeline (whose stages the methods link to: "shared"), then a row per
  method; "total" adds the stages a row computed itself."""
  columns = [*stages.STAGES, "baseline"]
  entries = [("Reference pipeline", timings.get("reference", {}))]
  entries += [(row["name"], timings.get(row["slug"], {})) for row in rows]
  body = []
  for name, stage_times in entries:
    own = _own_seconds(stage_times)
    cells = [_seconds_cell(stage_times.get(column)) for column in columns]
    body.append(([name, *cells, f"{sum(own):,.0f}" if own else MISSING], []))
  return _table(["Method", *columns, "total"], body)


def identifier_length_table(rows: Sequence[Mapping[str, Any]], protocol: str) -> str:
  """A row per (L_m, L_n): codes per ID, collision rates (argmin -> after resolution) of both views,
  HR@10 and NDCG@10 of each task."""
  header = ["(L_m, L_n)", "codes per ID", "semantic collisions", "collab collisions"] + [
      f"{TASK_TITLES[t]} {m}" for t in TASKS for m in ("HR@10", "NDCG@10")]
  body = []
  for row in rows:
    num_shared, num_specific = row["identifier_lengths"]
    labels = [f"({num_shared}, {num_specific})", str(row["identifiers"]["num_levels"]),
              _collisions(row, "semantic"), _collisions(row, "collab")]
    body.append((labels, [_value(row, t, protocol, m) for t in TASKS for m in ("HR@10", "NDCG@10")]))
  return _table(header, body)


def _protocol_title(header: Mapping[str, Any], protocol: str) -> str:
  if protocol == "sampled":
    negatives = "/".join(str(n) for n in header["num_negatives"])
    return f"sampled protocol: target + {negatives} negatives"
  return f"full catalogue: {header['num_items']:,} items"


def format_tables(results: Mapping[str, Any]) -> str:
  """tables.md: a header, recommendation and search tables per protocol, the ablation and
  identifier-length tables when those methods ran, the identifiers of every generative method and the
  wall time of every stage (when `results` has "timings")."""
  header, rows = results["header"], results["methods"]
  model, training = header["model"], header["training"]
  lines = [f"# GenSAR reproduction: config `{header['config']}`, suite `{header['suite']}`", "",
           f"- config: `{header['config']}` (fingerprint {header['config_fingerprint']}), seed {header['seed']}, "
           f"{header['date']}",
           f"- model: T5 d_model {model['d_model']}, {model['num_encoder_layers']}+{model['num_decoder_layers']} layers, "
           f"{model['num_heads']} heads, d_ff {model['d_ff']}, vocabulary {model['vocab_size']:,}: "
           f"{model['num_params']:,} parameters",
           f"- training budget: {training['steps']:,} steps x {training['batch_size']} examples "
           f"({training['steps'] * training['batch_size']:,} examples)",
           f"- evaluation: {header['split']} split ("
           + ", ".join(f"{n:,} {task}" for task, n in header["num_queries"].items())
           + f" queries), beam {header['num_beams']}; a metric a method does not address shows {MISSING}", ""]
  main = [r for r in rows if r["group"] == "main"]
  if main:
    for protocol in PROTOCOLS:
      for task in TASKS:
        lines += [f"## {TASK_TITLES[task]} ({_protocol_title(header, protocol)})", "", task_table(main, task, protocol)]
    notes = [f"- {r['name']}: {METHOD_NOTES[r['slug']]}" for r in main if METHOD_NOTES.get(r["slug"])]
    lines += notes + [""] if notes else []
  reference = [r for r in rows if r["slug"] == GENSAR.slug]
  ablations = [r for r in rows if r["group"] == "ablation"]
  if ablations:
    for protocol in PROTOCOLS:
      lines += [f"## Ablations ({_protocol_title(header, protocol)})", "",
                ablation_table(reference + ablations, protocol)]
    notes = [f"- {r['name']}: {METHOD_NOTES[r['slug']]}" for r in ablations if METHOD_NOTES.get(r["slug"])]
    lines += notes + [""] if notes else []
  lengths = [r for r in rows if r["group"] == "identifier_length"]
  if lengths:
    for protocol in PROTOCOLS:
      lines += [f"## Identifier length ({_protocol_title(header, protocol)})", "",
                identifier_length_table(lengths, protocol)]
  generative = [r for r in rows if r["kind"] == "generative" and "identifiers" in r]
  if generative:
    lines += ["## Identifiers", "", identifier_table(generative)]
  if "timings" in results:
    total = sum(sum(_own_seconds(times)) for times in results["timings"].values())
    lines += [f"## Wall time (seconds; total {total / 60:,.1f} min)", "", wall_time_table(rows, results["timings"])]
  return "\n".join(lines)


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: Path) -> int:
  """tradeoff.png: search NDCG@10 against recommendation NDCG@10 (sampled protocol), one labelled point
  per method reported on both tasks (methods with equal values share one point) and a dotted line per
  single-task method (vertical for recommendation, horizontal for search). Returns the number of points."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  names_at: dict[tuple[float, float], list[str]] = {}   # methods sharing a run (e.g. GenSAR and (2, 2)) share a point
  for r in rows:
    if all(r["metrics"].get(t) for t in TASKS):
      xy = (_value(r, "rec", "sampled", "NDCG@10"), _value(r, "search", "sampled", "NDCG@10"))
      names_at.setdefault(xy, []).append(r["name"])
  points = [(" = ".join(names), rec, search) for (rec, search), names in names_at.items()]
  figure = Figure(figsize=(6.4, 4.8), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for name, rec, search in points:
    axes.scatter([rec], [search], s=36)
    axes.annotate(name, (rec, search), textcoords="offset points", xytext=(5, 4), fontsize=8)
  for r in rows:
    tasks = [t for t in TASKS if r["metrics"].get(t)]
    if len(tasks) == 1:
      value = _value(r, tasks[0], "sampled", "NDCG@10")
      line = axes.axvline if tasks[0] == "rec" else axes.axhline
      line(value, linestyle=":", linewidth=1, color="0.4")
      text_xy = (value, 0.02) if tasks[0] == "rec" else (0.02, value)
      transform = axes.get_xaxis_transform() if tasks[0] == "rec" else axes.get_yaxis_transform()
      axes.annotate(r["name"], text_xy, xycoords=transform, rotation=90 if tasks[0] == "rec" else 0,
                    fontsize=7, color="0.3", xytext=(2, 2), textcoords="offset points")
  axes.margins(0.2)                     # room for the labels of the outermost points
  axes.set_xlabel("Recommendation NDCG@10 (sampled)")
  axes.set_ylabel("Search NDCG@10 (sampled)")
  axes.set_title("Search / recommendation trade-off")
  axes.grid(alpha=0.3)
  figure.tight_layout()
  with atomic_path(path) as tmp:
    figure.savefig(tmp, format="png")
  return len(points)
