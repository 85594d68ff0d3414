"""The `eval` stage and the trainer's validation hook: constrained beam search over both main tasks.

Recommendation decodes collaborative identifiers after `<rec_item>`, search decodes semantic
identifiers after `<src_item>` (template-0 prompts). Two protocols: "sampled" ranks the target
among its prepared candidates (target + negatives, the paper's protocol), "full" among the whole
catalogue. A target outside the beams is a miss. A target sharing its identifier with other retrieved
items counts at its identifier's rank under the "identifier" tie rule (the reference's, default for
"sampled") or after all of them under the "item" rule (ours, default for "full"); `eval.ties` switches
them, and metrics.json also reports the other rule's figures under "<protocol>, one position per <rule>"
when they differ. Validation and `eval.limit` subsets are the most recent rows where the source has
timestamps (the reference's rule), else a seeded random sample.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gensar_jax import parallel
from gensar_jax.config import section_with_defaults
from gensar_jax.config_schema import Field, Section, at_least, one_of, satisfies, subset_of
from gensar_jax.data.pipeline import eval_features
from gensar_jax.data.task_data import MAIN_TASKS, TaskData, load_task_data
from gensar_jax.decode import trie as trie_lib
from gensar_jax.eval import protocols
from gensar_jax.eval.metrics import (PROTOCOLS, TABLE_METRICS, TASKS, TIE_RULES, VALIDATION_MEANS, mean_metrics,
                                     ranking_metrics, validation_metric)
from gensar_jax.io_utils import DataError, write_json, write_text
from gensar_jax.model.export import load_model, load_model_extra
from gensar_jax.model.t5 import T5Config

logger = logging.getLogger(__name__)

SPLITS = ("validation", "test")


# The `eval` section, read by the `eval` stage; the training stage's validation reads num_beams,
# validation_rows and the sampled protocol's tie rule.
EVAL_SCHEMA = Section(dict(
    # reference beam width; a target outside the beams is a miss
    num_beams=Field(30, at_least(10), read_by=("train",)),   # >= 10: HR@10 and NDCG@10 rank the 10 best beams
    batch_size=Field(32, at_least(1)),       # queries per jitted search (a multiple of the mesh's data axis)
    protocols=Field(PROTOCOLS, subset_of(*PROTOCOLS)),   # candidate lists (paper) and the whole catalogue
    split=Field("test", one_of(*SPLITS)),    # split evaluated by the stage: "validation" or "test"
    # Validation hook: N validation rows per task, the most recent by time (reference) where the source has
    # timestamps, else a seeded random sample.
    validation_rows=Field(10_000, at_least(1), read_by=("train",)),
    # stage: N rows per task, same rule (None = all)
    limit=Field(None, satisfies(lambda v: v is None or v >= 1, "None (every row) or >= 1"), placeholder=int),
    # Tie rule per protocol: "identifier" (reference: one position per identifier) or "item" (ours: the
    # target ranks after every item sharing its identifier).
    ties=Section(dict(sampled=Field("identifier", one_of(*TIE_RULES), read_by=("train",)),
                      full=Field("item", one_of(*TIE_RULES)))),
))


def eval_section_config() -> ml_collections.ConfigDict:
  """Defaults of the `eval` section."""
  return EVAL_SCHEMA.defaults()


def subset_rule(task_data: TaskData) -> str:
  """Rule of the evaluation subsets: "most_recent" where the source has timestamps, else "random"."""
  return "most_recent" if task_data.prepared.has_timestamps else "random"


def _check_protocols(protocols: Sequence[str] | str) -> tuple[str, ...]:
  protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
  unknown = [p for p in protocols if p not in PROTOCOLS]
  if unknown or not protocols:
    raise ValueError(f"eval.protocols: expected a non-empty subset of {PROTOCOLS}, got {protocols}")
  return protocols


@dataclasses.dataclass(frozen=True)
class EvalQueries:
  """Evaluation inputs of one task, in row order.

  encoder_tokens: int32[n, S] template-0 prompts; targets: int32[n] item ids; candidates:
  int32[n, 1 + K] (target, then its prepared negatives); codes: int[num_items, L] identifiers of
  the decoded view; token_offsets: int32[L] vocabulary id of code 0 per level.
  """
  task: str
  encoder_tokens: np.ndarray
  targets: np.ndarray
  candidates: np.ndarray
  codes: np.ndarray
  behaviour_token: int
  token_offsets: np.ndarray
  codebook_size: int

  def __len__(self) -> int:
    return len(self.targets)


def eval_queries(task_data: TaskData, task: str, split: str, limit: int | None = None) -> EvalQueries:
  """Features of `limit` rows (all when None) of `<task>_<split>` ("rec"/"search", "validation"/"test"),
  chosen by `subset_rule(task_data)`."""
  if task not in TASKS:
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
  if split not in SPLITS:
    raise ValueError(f"eval.split: expected one of {SPLITS}, got {split!r}")
  sample_task, view = MAIN_TASKS[task]
  features = eval_features(task_data.builder, task_data.sources[f"{task}_{split}"], sample_task,
                           None if limit is None or limit <= 0 else int(limit), subset_rule(task_data))
  if not len(features["target"]):
    raise DataError(f"{task}_{split}: no evaluation rows in the prepared dataset")
  targets = features["target"]
  return EvalQueries(
      task=task, encoder_tokens=features["encoder_input_tokens"], targets=targets,
      candidates=np.concatenate([targets[:, None], features["negatives"]], axis=1).astype(np.int32),
      codes=task_data.codes[view], behaviour_token=int(task_data.behaviour_token(task)),
      token_offsets=np.asarray(task_data.token_offsets(view), np.int32),
      codebook_size=int(task_data.tokenizer.codebook_size))


def _on_mesh(params, mesh: jax.sharding.Mesh):
  """Parameters not already laid out on the mesh's devices are replicated onto it (others are kept)."""
  devices = set(mesh.devices.flat)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda x: x if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices
                      else jax.device_put(x, replicated), params)


def catalogue_tables(queries: EvalQueries, mesh: jax.sharding.Mesh | None = None) -> trie_lib.TrieTables:
  """The task's catalogue trie, placed on the device(s) once (replicated over a mesh)."""
  tables = trie_lib.build_catalogue_trie(queries.codes, queries.behaviour_token, queries.token_offsets,
                                         queries.codebook_size)
  return jax.device_put(tables, None if mesh is None else NamedSharding(mesh, PartitionSpec()))


DEFAULT_TIES = EVAL_SCHEMA.defaults().ties.to_dict()     # {protocol: tie rule}


def check_ties(ties: Mapping[str, str]) -> dict[str, str]:
  """{protocol: tie rule} for both protocols, each in `metrics.TIE_RULES` (missing ones: DEFAULT_TIES)."""
  ties = dict(ties)
  unknown = sorted(set(ties) - set(PROTOCOLS))
  bad = {p: r for p, r in ties.items() if r not in TIE_RULES}
  if unknown or bad:
    raise ValueError(f"eval.ties: expected {{protocol: rule}} with protocols in {PROTOCOLS} and rules in {TIE_RULES}, "
                     f"got {ties}")
  return {**DEFAULT_TIES, **ties}


def other_ties_key(protocol: str, rule: str) -> str:
  """metrics.json key of a protocol's figures under the tie rule that is not its configured one."""
  return f"{protocol}, one position per {rule}"


def rank_queries_all_ties(params, model_cfg: T5Config, queries: EvalQueries, protocol: str, *, num_beams: int,
                          batch_size: int, mesh: jax.sharding.Mesh | None = None,
                          tables: trie_lib.TrieTables | None = None, desc: str = "eval") -> dict[str, np.ndarray]:
  """0-based rank of every target (-1 = not among the beams' items) under both tie rules.

  Args:
    protocol: "sampled" (per-query tries over `queries.candidates`) or "full" (one catalogue trie:
      `tables` when given, else built here).
    batch_size: queries per search; the last batch is padded. With a mesh, a multiple of its data axis.
  Returns:
    {"item": int64[n], "identifier": int64[n]}.
  """
  _check_protocols((protocol,))
  if mesh is not None and batch_size % mesh.shape[parallel.DATA_AXIS]:
    raise ValueError(f"eval.batch_size {batch_size} is not divisible by the mesh's '{parallel.DATA_AXIS}' axis "
                     f"({mesh.shape[parallel.DATA_AXIS]})")
  if queries.behaviour_token >= model_cfg.vocab_size or queries.token_offsets.max() + queries.codebook_size > \
      model_cfg.vocab_size:
    raise DataError(f"model vocab_size {model_cfg.vocab_size} does not cover the identifier tokens (up to id "
                    f"{queries.token_offsets.max() + queries.codebook_size - 1}): the model was trained with "
                    "another tokenizer")
  if protocol == "full" and tables is None:
    tables = catalogue_tables(queries, mesh)
  if mesh is not None:
    params = _on_mesh(params, mesh)
  return protocols.search_ranks(
      params, model_cfg, queries.encoder_tokens, queries.targets, queries.codes, queries.behaviour_token,
      queries.token_offsets, queries.codebook_size, queries.candidates if protocol == "sampled" else None,
      num_beams=num_beams, batch_size=batch_size, mesh=mesh, catalogue_tables=tables, name=desc)


def rank_queries(params, model_cfg: T5Config, queries: EvalQueries, protocol: str, *, num_beams: int,
                 batch_size: int, mesh: jax.sharding.Mesh | None = None,
                 tables: trie_lib.TrieTables | None = None, desc: str = "eval", ties: str | None = None
                 ) -> np.ndarray:
  """int64[n] ranks under one tie rule (`ties`; None = the protocol's default in DEFAULT_TIES); see
  `rank_queries_all_ties`."""
  rule = protocols.check_ties(ties or DEFAULT_TIES[protocol])
  return rank_queries_all_ties(params, model_cfg, queries, protocol, num_beams=num_beams, batch_size=batch_size,
                               mesh=mesh, tables=tables, desc=desc)[rule]


def evaluate_queries(params, model_cfg: T5Config, queries: Mapping[str, EvalQueries],
                     protocols: Sequence[str] = PROTOCOLS, *, num_beams: int = 30, batch_size: int = 32,
                     mesh: jax.sharding.Mesh | None = None, desc: str = "eval",
                     ties: Mapping[str, str] = DEFAULT_TIES) -> dict[str, dict[str, dict]]:
  """{task: {protocol: {"HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10"}}} for prepared queries.

  `ties[protocol]` is the tie rule of `results[task][protocol]`; where the other rule gives different
  ranks, its metrics are added under `other_ties_key(protocol, rule)`. Each task's catalogue trie (full
  protocol) is built once per call.
  """
  protocols = _check_protocols(protocols)
  ties = check_ties(ties)
  results: dict[str, dict[str, dict]] = {}
  for task, task_queries in queries.items():
    results[task] = {}
    for protocol in protocols:
      start = time.perf_counter()
      tables = catalogue_tables(task_queries, mesh) if protocol == "full" else None
      ranks = rank_queries_all_ties(params, model_cfg, task_queries, protocol, num_beams=num_beams,
                                    batch_size=batch_size, mesh=mesh, tables=tables, desc=f"{desc} {task}")
      results[task][protocol] = ranking_metrics(ranks[ties[protocol]])
      for rule in TIE_RULES:
        if rule != ties[protocol] and not np.array_equal(ranks[rule], ranks[ties[protocol]]):
          results[task][other_ties_key(protocol, rule)] = ranking_metrics(ranks[rule])
      logger.debug("%s %s (%s): %d queries in %.1fs", desc, task, protocol, len(task_queries),
                   time.perf_counter() - start)
  return results


def evaluate_model(params, model_cfg: T5Config, task_data: TaskData, eval_cfg: ml_collections.ConfigDict,
                   split: str = "test", protocols: Sequence[str] = PROTOCOLS, limit: int | None = None,
                   mesh: jax.sharding.Mesh | None = None) -> dict[str, dict[str, dict]]:
  """HR/NDCG of both main tasks on `split`: {"rec": {protocol: metrics}, "search": {...}}.

  Uses `eval_cfg.num_beams`, `eval_cfg.batch_size` and `eval_cfg.ties`; `limit` keeps a subset of each
  task's rows (`subset_rule`).
  """
  queries = {task: eval_queries(task_data, task, split, limit) for task in TASKS}
  return evaluate_queries(params, model_cfg, queries, protocols, num_beams=int(eval_cfg.num_beams),
                          batch_size=int(eval_cfg.batch_size), mesh=mesh, desc=split, ties=_ties(eval_cfg))


def _ties(eval_cfg: ml_collections.ConfigDict) -> dict[str, str]:
  ties = eval_cfg.get("ties")
  return check_ties(ties.to_dict() if isinstance(ties, ml_collections.ConfigDict) else (ties or {}))


def make_validation_fn(task_data: TaskData, model_cfg: T5Config, eval_cfg: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh | None = None, selection_tasks: Sequence[str] = TASKS
                       ) -> Callable[[Any, int], dict[str, float]]:
  """The trainer's `EvalFn`: (params, step) -> {"val/rec_NDCG@5", "val/search_HR@10", ..., "val/ndcg5_mean",
  "val/ndcg10_mean"}.

  Sampled protocol (tie rule `eval_cfg.ties.sampled`) on `eval_cfg.validation_rows` validation rows of
  each task (the most recent where the source has timestamps, else a seeded random sample; features
  prepared once here); model selection uses "val/ndcg5_mean", NDCG@5 averaged over `selection_tasks`
  (both tasks, as the reference; a single-task model is selected on its own task).
  """
  rows = eval_cfg.validation_rows
  queries = {task: eval_queries(task_data, task, "validation", rows) for task in TASKS}
  num_beams, batch_size, ties = int(eval_cfg.num_beams), int(eval_cfg.batch_size), _ties(eval_cfg)
  logger.info("validation: %s rows (%s), sampled protocol, beam %d, one position per %s",
              " + ".join(f"{len(q)} {t}" for t, q in queries.items()),
              "most recent by time" if subset_rule(task_data) == "most_recent" else "seeded random sample: no timestamps",
              num_beams, ties["sampled"])

  def validate(params, step: int) -> dict[str, float]:
    results = evaluate_queries(params, model_cfg, queries, ("sampled",), num_beams=num_beams,
                               batch_size=batch_size, mesh=mesh, desc=f"validation step {step}", ties=ties)
    per_task = {task: results[task]["sampled"] for task in TASKS}
    out = {validation_metric(task, name): value for task, metrics in per_task.items()
           for name, value in metrics.items()}
    out.update({name: mean_metrics({t: per_task[t] for t in selection_tasks}, metric)
                for name, metric in VALIDATION_MEANS.items()})
    return out

  return validate


def format_metrics_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
  """Markdown table: one row per task x protocol, columns HR@1 HR@5 HR@10 NDCG@5 NDCG@10."""
  lines = ["| task | protocol | " + " | ".join(TABLE_METRICS) + " |",
           "| --- | --- | " + " | ".join("---:" for _ in TABLE_METRICS) + " |"]
  for task, by_protocol in metrics.items():
    for protocol, values in by_protocol.items():
      lines.append(f"| {task} | {protocol} | " + " | ".join(f"{values[m]:.4f}" for m in TABLE_METRICS) + " |")
  return "\n".join(lines) + "\n"


def eval_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.eval` over the defaults of `eval_section_config()` (unknown fields are an error)."""
  return section_with_defaults(config, "eval", eval_section_config())


def run_eval(config: ml_collections.ConfigDict, workdir: Path, out_dir: Path) -> dict:
  """The `eval` stage: the trained model of the `train` stage on `config.eval.split`.

  Writes `<out_dir>/{metrics.json, metrics.md, stats.json, config.json}` (process 0).
  """
  from gensar_jax.stages import output_dir
  eval_cfg = eval_section(config)
  mesh = parallel.make_mesh(config.parallel.mesh_shape) if "parallel" in config else None
  rules = config.parallel.logical_axis_rules if "parallel" in config else parallel.DEFAULT_LOGICAL_AXIS_RULES
  if mesh is not None and eval_cfg.batch_size % mesh.shape[parallel.DATA_AXIS]:
    raise ValueError(f"config.eval.batch_size {eval_cfg.batch_size} is not divisible by the mesh's "
                     f"'{parallel.DATA_AXIS}' axis ({mesh.shape[parallel.DATA_AXIS]}, config.parallel.mesh_shape)")
  model_dir = output_dir(workdir, "train") / "model"
  params, model_cfg = load_model(model_dir, mesh, rules)
  task_data = load_task_data(workdir, config, with_pseudo_queries=False)
  if model_cfg.vocab_size < task_data.vocab_size:
    raise DataError(f"{model_dir}: model vocab_size {model_cfg.vocab_size} < the tokenizer's {task_data.vocab_size} "
                    "(the model was trained on another prepared dataset; rerun `gensar train`)")
  split = eval_cfg.split
  queries = {task: eval_queries(task_data, task, split, eval_cfg.limit) for task in TASKS}
  start = time.perf_counter()
  metrics = evaluate_queries(params, model_cfg, queries, eval_cfg.protocols, num_beams=int(eval_cfg.num_beams),
                             batch_size=int(eval_cfg.batch_size), mesh=mesh, desc=split, ties=_ties(eval_cfg))
  seconds = time.perf_counter() - start
  for task, by_protocol in metrics.items():
    for protocol, values in by_protocol.items():
      logger.info("eval: %s %s (%s protocol, %d queries): HR@10 %.4f NDCG@10 %.4f", split, task, protocol,
                  len(queries[task]), values["HR@10"], values["NDCG@10"])
  stats = {"split": split, "protocols": list(eval_cfg.protocols), "num_beams": int(eval_cfg.num_beams),
           "ties": _ties(eval_cfg), "subset_rule": subset_rule(task_data) if eval_cfg.limit else "all rows",
           "num_queries": {task: len(q) for task, q in queries.items()}, "seconds": round(seconds, 1),
           "model": load_model_extra(model_dir), "metrics": metrics}
  if parallel.is_primary():
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "metrics.md", format_metrics_table(metrics))
    write_json(out_dir / "config.json", config.to_dict())
    write_json(out_dir / "stats.json", stats)
  return stats

