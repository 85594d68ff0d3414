"""The pipeline's budget: the dataset's counts, the training run's steps, the calls each stage makes of each program
(by the stages' own rules) and the whole pipeline's time, chip-hours and list price from the programs' rooflines."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import ml_collections

from gensar_jax.config import section_with_defaults
from gensar_jax.io_utils import as_path
from gensar_jax.plan.programs import PLACEMENT

# The pipeline's stages in order, each with the programs whose calls make up its time.
STAGES = (("embed", ("text_encoder", "sasrec_train_step")),
          ("index", ("rqvae_train_step",)),
          ("doc2query", ("doc2query_train_step", "doc2query_sampling")),
          ("train", ("train_step",)),
          ("validation", ("beam_search_sampled",)),
          ("test", ("beam_search_sampled", "beam_search_full")))

COUNT_KEYS = ("items", "users", "rec_train", "rec_validation", "rec_test", "search_train", "search_validation",
              "search_test")


def dataset_counts(plan_cfg: ml_collections.ConfigDict, workdir: Path | None) -> tuple[dict[str, int], str]:
  """Items, users and rows per task and split ({"items", "users", "rec_train", ..., "search_test"}) and where
  they came from: the prepared dataset's stats when `<workdir>/prepare/stats.json` exists, else the `plan`
  section (the paper's Electronics counts)."""
  from gensar_jax import stages
  from gensar_jax.io_utils import read_json
  prepared = workdir is not None and stages.read_record(as_path(workdir) / "prepare") is not None
  stats_path = stages.output_dir(workdir, "prepare") / "stats.json" if prepared else None
  if stats_path is not None:
    stats = read_json(stats_path)
    return {k: int(stats[k]) for k in COUNT_KEYS}, str(stats_path)
  fields = {"items": "num_items", "users": "num_users"}
  return ({k: int(plan_cfg[fields.get(k, f"{k}_rows")]) for k in COUNT_KEYS},
          "the plan section's counts (the paper's Electronics)")


def epoch_examples(config: ml_collections.ConfigDict, counts: Mapping[str, int]) -> int:
  """Examples per training epoch of the task mixture (`tasks.sizes`; -1 = every training row of the task)."""
  full = {"nrip": counts["rec_train"], "nsip": counts["search_train"], "nsqp": counts["search_train"],
          "desc2id": counts["items"], "id2desc": counts["items"], "adhoc": counts["items"]}
  return sum(full[task] if int(size) < 0 else int(size) for task, size in config.tasks.sizes.items())


def validations(num_steps: int, eval_every: int) -> int:
  """Validations of a training run: at every multiple of eval_every and at the last step (`train.loop`)."""
  return math.ceil(num_steps / eval_every) if eval_every > 0 else 0


def training_budget(config: ml_collections.ConfigDict, examples: int) -> dict:
  """Steps of the config's training run (`train.num_steps`, else `train.num_epochs` epochs), as the
  train stage counts them, and its validations."""
  from gensar_jax.train.stage import planned_steps
  num_steps, _ = planned_steps(config.train, examples)
  batch = int(config.train.batch_size)
  return {"epoch_examples": examples, "global_batch": batch, "steps_per_epoch": max(examples // batch, 1),
          "num_steps": num_steps, "validations": validations(num_steps, int(config.train.eval_every))}


def _batches(rows: int, batch: int) -> int:
  return math.ceil(rows / batch)


def _eval_rows(rows: int, limit) -> int:
  return rows if limit is None or int(limit) <= 0 else min(rows, int(limit))


def stage_calls(config: ml_collections.ConfigDict, counts: Mapping[str, int], hosts: int) -> list[dict]:
  """Calls of each stage's programs for the whole pipeline, by the stages' own rules:
  [{"stage", "program", "calls", "placement", "rule"}], in `STAGES` order.

  `calls` are what one chip runs in sequence: a program on one chip per host counts one host's share of the
  catalogue (`ceil(items / hosts)` items), a program on the slice or one chip counts every call.
  """
  from gensar_jax.eval.metrics import TASKS
  from gensar_jax.identifiers.rqvae import identifiers_config
  from gensar_jax.train.stage import planned_steps
  # Text encoder (`SentenceEncoder.encode`) and doc2query sampling (`generate_text_batched`): fixed-size
  # batches of the items, the last one padded; each host takes its share of the catalogue.
  items, per_host = counts["items"], _batches(counts["items"], hosts)
  text, sas, d2q = config.embed.text, config.embed.sasrec, config.doc2query
  ids = section_with_defaults(config, "identifiers", identifiers_config())
  # SASRec (`sasrec.train_sasrec`): one window per user (`training_windows`; users with fewer than two
  # training items have none) in batches of each length bucket (`epoch_batches`: up to one more partial
  # batch per bucket than counted here).
  sas_steps = int(sas.epochs) * _batches(counts["users"], int(sas.batch_size))
  # RQ-VAE (`rqvae_train.epoch_batches`): ceil(items / batch) steps per epoch, both views in one model.
  rq_steps = int(ids.epochs) * _batches(items, int(ids.batch_size))
  # doc2query and train: the stages' own step count (`train.stage.planned_steps`).
  d2q_steps, _ = planned_steps(d2q.train, counts["search_train"])
  examples = epoch_examples(config, counts)
  train_steps, _ = planned_steps(config.train, examples)
  # Validation (`eval.stage.make_validation_fn`): eval.validation_rows rows of each task, sampled protocol;
  # test (`eval.stage.run_eval`): every eval.split row of each task (eval.limit), once per protocol.
  num_validations = validations(train_steps, int(config.train.eval_every))
  eval_batch = int(config.eval.batch_size)
  valid = {t: min(int(config.eval.validation_rows), counts[f"{t}_validation"]) for t in TASKS}
  per_validation = sum(_batches(valid[t], eval_batch) for t in TASKS)
  split, limit = str(config.eval.get("split", "test")), config.eval.get("limit")
  tested = {t: _eval_rows(counts[f"{t}_{split}"], limit) for t in TASKS}
  test_batches = sum(_batches(tested[t], eval_batch) for t in TASKS)
  hosts_text = f"{items:,} items over {hosts} host(s): {per_host:,} per host"
  rows = [
      ("embed", "text_encoder", _batches(per_host, int(text.batch_size)),
       f"{hosts_text}, batches of embed.text.batch_size {int(text.batch_size)}"),
      ("embed", "sasrec_train_step", sas_steps,
       f"embed.sasrec.epochs {int(sas.epochs)} x ceil({counts['users']:,} users' windows / batch "
       f"{int(sas.batch_size)})"),
      ("index", "rqvae_train_step", rq_steps,
       f"identifiers.epochs {int(ids.epochs)} x ceil({items:,} items / batch {int(ids.batch_size)}), one model for "
       f"the {ids.mode} identifiers"),
      ("doc2query", "doc2query_train_step", d2q_steps,
       f"doc2query.train: {d2q_steps:,} steps of {int(d2q.train.batch_size)} over {counts['search_train']:,} search "
       "training pairs"),
      ("doc2query", "doc2query_sampling", _batches(per_host, int(d2q.sampling.batch_size)),
       f"{hosts_text}, batches of doc2query.sampling.batch_size {int(d2q.sampling.batch_size)}"),
      ("train", "train_step", train_steps, f"{train_steps:,} steps of {int(config.train.batch_size):,} "
       f"over epochs of {examples:,} examples"),
      ("validation", "beam_search_sampled", num_validations * per_validation,
       f"{num_validations} validations x ({' + '.join(f'{valid[t]:,} {t}' for t in TASKS)} rows in batches of "
       f"{eval_batch})"),
  ]
  for protocol in config.eval.protocols:
    rows.append(("test", f"beam_search_{protocol}", test_batches,
                 f"{' + '.join(f'{tested[t]:,} {t}' for t in TASKS)} {split} rows in batches of {eval_batch}, "
                 f"{protocol} protocol"))
  return [{"stage": stage, "program": program, "calls": calls, "placement": PLACEMENT[program], "rule": rule}
          for stage, program, calls, rule in rows]


def pipeline_estimate(calls: list[dict], programs: Mapping[str, dict], devices: int,
                      usd_per_chip_hour: float | None) -> dict:
  """Time of the whole pipeline from `stage_calls` rows and compiled `programs` ({name: analyze result}).

  Each row's seconds = its program's roofline time per call x calls; a stage's time is the sum of its
  rows; the slice is held for every stage, so chip-hours are the total hours x the slice's devices.
  Rows whose program was not compiled (or has no time) are left out and make the total partial.
  """
  rows, stages, missing = [], {}, []
  for row in calls:
    roof = (programs.get(row["program"]) or {}).get("roofline")
    seconds = roof["step_s"] * row["calls"] if roof else None
    rows.append(dict(row, step_s=roof["step_s"] if roof else None, seconds=seconds))
    stage = stages.setdefault(row["stage"], {"seconds": 0.0, "complete": True})
    if seconds is None:
      stage["complete"] = False
      missing.append(row["program"])
    else:
      stage["seconds"] += seconds
  total = sum(stage["seconds"] for stage in stages.values())
  for stage in stages.values():
    stage["hours"] = stage["seconds"] / 3600
  chip_hours = total / 3600 * devices
  return {"rows": rows, "stages": stages, "total_s": total, "days": total / 86400, "chip_hours": chip_hours,
          "list_price_usd": chip_hours * usd_per_chip_hour if usd_per_chip_hour is not None else None,
          "partial": bool(missing), "missing_programs": sorted(set(missing))}


def estimate(report: dict, config: ml_collections.ConfigDict, counts: Mapping[str, int], hosts: int) -> dict:
  """The whole pipeline's time: every stage's calls (`stage_calls`) x its programs' roofline time per call
  (`pipeline_estimate`), plus the training figures (step, MFU, epoch, one validation, input rate per host)."""
  programs, budget = report["programs"], report["budget"]
  out: dict[str, Any] = pipeline_estimate(stage_calls(config, counts, hosts), programs, report["devices"],
                                          report["chip"]["usd_per_chip_hour"])
  out["programs_compiled"] = list(programs)
  timed = {k: v for k, v in programs.items() if v.get("roofline")}
  if "train_step" in timed:
    step_s = timed["train_step"]["roofline"]["step_s"]
    out.update(step_s=step_s, mfu=timed["train_step"]["roofline"]["mfu"],
               epoch_s=step_s * budget["steps_per_epoch"], train_s=step_s * budget["num_steps"],
               host_examples_per_s=budget["global_batch"] / hosts / step_s)
  validation = next((r for r in out["rows"] if r["stage"] == "validation"), None)
  if validation and validation["seconds"] is not None and budget["validations"]:
    out["validation_s"] = validation["seconds"] / budget["validations"]
  return out
