"""`gensar reproduce`: GenSAR, its variants and the classic baselines on one prepared dataset and one
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
import copy
import dataclasses
import datetime
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from gensar_jax import stages
from gensar_jax.config import section_with_defaults
from gensar_jax.config_schema import Field, Rule, Section, one_of, satisfies, whole_at_least
from gensar_jax.eval.metrics import PROTOCOLS, TABLE_METRICS, TASKS
from gensar_jax.io_utils import DataError, atomic_path, fingerprint, is_uri, read_json, write_json, write_text

log = logging.getLogger(__name__)

SUITES = ("main", "ablations", "all")
TASK_TITLES = {"rec": "Recommendation", "search": "Search"}
MISSING = "–"
# Config sections every method must share: same data, embeddings, baselines and evaluation protocol.
SHARED_SECTIONS = ("seed", "data", "embed", "baselines", "eval")


def _level_pairs() -> Rule:
  pair = lambda p: isinstance(p, tuple) and len(p) == 2 and whole_at_least(0)(p[0]) and whole_at_least(1)(p[1])
  return satisfies(lambda v: isinstance(v, tuple) and bool(v) and all(pair(p) for p in v),
                   "a non-empty tuple of (shared levels >= 0, specific levels >= 1) pairs of whole numbers")


# The `reproduce` section (`gensar reproduce`; read by no stage).
REPRODUCE_SCHEMA = Section(dict(
    suite=Field("main", one_of(*SUITES)),   # the CLI's --suite overrides it
    identifier_lengths=Field(((1, 1), (2, 2), (3, 3)), _level_pairs()),   # (L_m, L_n) of the identifier-length table
))


def reproduce_config() -> ml_collections.ConfigDict:
  """Defaults of the `reproduce` section."""
  return REPRODUCE_SCHEMA.defaults()


def reproduce_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.reproduce` over `reproduce_config()` (unknown fields are an error)."""
  return section_with_defaults(config, "reproduce", reproduce_config())


# ----------------------------------------------------------------------------------------- methods

@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the tables.

  kind: "generative" (the pipeline under `overrides`, dotted config key -> value) or "baseline"
  (`baseline` names an `evaluate_baselines` method). group: "main", "ablation" or "identifier_length".
  tasks: the tasks the method is reported on (the others show "–").
  note: what the row measures, printed under its table (empty = the name says it).
  """
  name: str
  slug: str
  kind: str
  group: str
  tasks: tuple[str, ...] = TASKS
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  baseline: str | None = None
  note: str = ""


GENSAR = Method("GenSAR", "gensar", "generative", "main")

MAIN_METHODS = (
    GENSAR,
    Method("Semantic IDs (TIGER-style)", "semantic-ids", "generative", "main",
           overrides={"identifiers.mode": "semantic"}),
    Method("Collaborative IDs", "collab-ids", "generative", "main", overrides={"identifiers.mode": "collab"}),
    Method("GenSAR rec-only", "gensar-rec-only", "generative", "main", tasks=("rec",),
           overrides={"tasks.sizes.nsip": 0, "tasks.sizes.nsqp": 0, "tasks.sizes.adhoc": 0,
                      "train.selection_tasks": ("rec",)}),
    Method("GenSAR search-only", "gensar-search-only", "generative", "main", tasks=("search",),
           overrides={"tasks.sizes.nrip": 0, "train.selection_tasks": ("search",)}),
    Method("Popularity", "popularity", "baseline", "main", baseline="popularity"),
    Method("BM25", "bm25", "baseline", "main", tasks=("search",), baseline="bm25"),
    Method("Dense retrieval", "dense", "baseline", "main", tasks=("search",), baseline="dense"),
    Method("SASRec", "sasrec", "baseline", "main", tasks=("rec",), baseline="sasrec"),
    Method("SASRec (BCE, sampled negatives)", "sasrec-bce", "baseline", "main", tasks=("rec",),
           baseline="sasrec_bce",
           note="SASRec trained with its original binary cross-entropy over the positive and "
                "`embed.sasrec.bce_negatives` sampled unseen items (as the authors' line of work trains its "
                "recommenders), the SASRec row's other settings unchanged; the SASRec row trains with a softmax over "
                "the whole catalogue"),
)

ABLATION_METHODS = (
    Method("w/o query generation", "wo-query-generation", "generative", "ablation",
           overrides={"tasks.sizes.nsqp": 0}),
    Method("w/o desc<->ID", "wo-desc-id", "generative", "ablation",
           overrides={"tasks.sizes.desc2id": 0, "tasks.sizes.id2desc": 0}),
    Method("w/o behaviour tokens", "wo-behaviour-tokens", "generative", "ablation",
           overrides={"tasks.behaviour_tokens": False},
           note="trained and decoded without `<rec_item>`/`<src_query>`/`<src_item>`: histories lose the "
                "event-type markers and decoding starts at the first code (no forced behaviour token), so the "
                "row measures the tokens as input markers and as task prefixes of the target together"),
    Method("w/o pseudo-queries", "wo-pseudo-queries", "generative", "ablation", overrides={"tasks.sizes.adhoc": 0}),
)


# What a row measures, by slug (rows in results.json carry no Method objects).
METHOD_NOTES = {m.slug: m.note for m in MAIN_METHODS + ABLATION_METHODS if m.note}

def identifier_length_method(num_shared: int, num_specific: int) -> Method:
  """GenSAR with L_m shared and L_n specific identifier levels."""
  return Method(f"GenSAR (L_m, L_n) = ({num_shared}, {num_specific})", f"ids-{num_shared}-{num_specific}",
                "generative", "identifier_length",
                overrides={"identifiers.num_shared_levels": int(num_shared),
                           "identifiers.num_specific_levels": int(num_specific)})


def suite_methods(suite: str, identifier_lengths: Iterable[Sequence[int]] = ((1, 1), (2, 2), (3, 3)),
                  baselines: Sequence[str] | None = None) -> list[Method]:
  """The methods of a suite in table order.

  main: GenSAR, single-view identifiers, single-task GenSAR and the classic baselines; ablations:
  GenSAR (the reference row), the task/token ablations and one GenSAR per (L_m, L_n); all: both.
  `baselines` keeps only these `evaluate_baselines` methods (default: all of them).
  """
  if suite not in SUITES:
    raise ValueError(f"reproduce suite: expected one of {SUITES}, got {suite!r}")
  methods: list[Method] = []
  if suite in ("main", "all"):
    methods += [m for m in MAIN_METHODS if m.kind == "generative" or baselines is None or m.baseline in baselines]
  if suite in ("ablations", "all"):
    if GENSAR not in methods:
      methods.append(GENSAR)
    methods += ABLATION_METHODS
    methods += [identifier_length_method(*pair) for pair in identifier_lengths]
  return methods


def with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A deep copy of `config` with dotted-key overrides; unknown keys and shared sections are errors."""
  out = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    if (parents or [leaf])[0] in SHARED_SECTIONS:
      raise ValueError(f"method override {key!r}: the sections {SHARED_SECTIONS} are shared by every method "
                       "(same data and protocol)")
    node = out
    for i, part in enumerate(parents):
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise KeyError(f"method override {key!r}: no config section {'.'.join(parents[:i + 1])!r}")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"method override {key!r}: no config field {key!r}")
    with node.ignore_type():
      node[leaf] = value
  return out


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


# ---------------------------------------------------------------------------------------- tables

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
