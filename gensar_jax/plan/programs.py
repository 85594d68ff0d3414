"""The plan's programs, one registered entry each (`REGISTRY`): how it is lowered and compiled against a `Target`
and analysed, where it runs (`placement`) and the config field of its batch. `compile_program` compiles one by name."""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable, Mapping

import jax
import ml_collections

from gensar_jax.config import section_with_defaults
from gensar_jax.data.tokenizer import levels_from_config
from gensar_jax.model.t5 import T5Config, t5_config_from_section
from gensar_jax.plan import cache
from gensar_jax.plan.analysis import analyze, compile_failure, cpu_cost, error_result, roofline
from gensar_jax.plan.chips import GPU_COMPILER_OPTIONS, GPUS, Chip
from gensar_jax.plan.lowering import (abstract_params, lower_beam_search, lower_rqvae_step, lower_sampling,
                                      lower_sampling_step, lower_sasrec_step, lower_text_encoder, lower_train_step,
                                      one_device_mesh, sasrec_width, synthetic_tries, text_encoder_shape)

log = logging.getLogger(__name__)

# Where a program runs: the whole slice (sharded over the mesh), one chip on every host (each host
# takes its share of the catalogue; wall time is one host's share), or a single chip.
SLICE, CHIP_PER_HOST, ONE_CHIP = "slice", "one chip per host", "one chip"


@dataclasses.dataclass(frozen=True)
class Target:
  """What every program of one plan is compiled against: the config, the slice and the dataset counts."""
  config: ml_collections.ConfigDict
  plan_cfg: ml_collections.ConfigDict
  model_cfg: T5Config
  train_cfg: ml_collections.ConfigDict      # config.train with num_steps of the budget
  mesh: jax.sharding.Mesh
  mesh_shape: Mapping[str, int]
  rules: tuple
  devices: list
  chip: Chip
  counts: Mapping[str, int]

  @property
  def options(self) -> dict | None:
    return GPU_COMPILER_OPTIONS if self.chip.name in GPUS else None


# ------------------------------------------------------------------------------------------ compiling

def _timed_compile(name: str, lower: Callable[[], Any], target: Target) -> tuple[Any, float]:
  """(what the plan reads from the compiled program, a `cache.CompiledAnalysis`; seconds), from the plan
  cache when this program was compiled before for the same devices."""
  t0 = time.perf_counter()
  log.info("plan: compiling %s ...", name)
  analysis, cached = cache.compile_or_load(lower(), target.options, target.devices)
  seconds = time.perf_counter() - t0
  log.info("plan: %s %s in %.1fs", name, "loaded from the plan cache" if cached else "compiled", seconds)
  return analysis, seconds


def _analyze_one_device(compiled, target: Target, lower_on: Callable[[Any], Any]) -> dict:
  """`analyze` for a program jitted on one device (no mesh); `lower_on(device)` lowers it again for the
  CPU cost fallback."""
  return analyze(compiled, target.chip, 1, fallback_cost=lambda: cpu_cost(lower_on, 1))


def _compile_on_one_device(name: str, target: Target, lower: Callable[[Any], Any], note: dict) -> dict:
  """Compiles `lower(device)` on the slice's first device and analyses it; `note` is added to the result."""
  compiled, seconds = _timed_compile(name, lambda: lower(target.devices[0]), target)
  result = _analyze_one_device(compiled, target, lower)
  result.update(note, compile_seconds=round(seconds, 1))
  return result


def compile_train_step(name: str, target: Target, model_cfg: T5Config, train_cfg: ml_collections.ConfigDict,
                       batch: int, input_len: int, target_len: int) -> tuple[dict, int]:
  """A T5 train step (`train.step.make_train_step`) on the slice: (its `analyze` result, rows per device).
  A batch that does not divide over the mesh's batch axes gives an error result instead of a compile."""
  shape = {k: int(v) for k, v in target.mesh.shape.items()}
  batch_axes = shape["data"] * shape["fsdp"]
  rows = batch // batch_axes * target.chip.tensorcores
  if batch % batch_axes:
    return error_result(f"batch {batch} does not divide over the mesh's batch axes data x fsdp = {batch_axes} "
                        "(compile devices)", target.chip), rows
  def lower(on_mesh):
    return lower_train_step(model_cfg, train_cfg, on_mesh, target.rules, batch, input_len, target_len)
  compiled, seconds = _timed_compile(name, lambda: lower(target.mesh), target)
  result = analyze(compiled, target.chip, len(target.devices), repeat=float(train_cfg.grad_accum_steps),
                   per_chip=target.chip.tensorcores,
                   fallback_cost=lambda: cpu_cost(lambda cpu: lower(one_device_mesh(cpu)), len(target.devices)))
  result["compile_seconds"] = round(seconds, 1)
  return result, rows


# ------------------------------------------------------------------------------------------ the programs

def _compile_text_encoder(name: str, target: Target) -> tuple[dict, int]:
  text = target.config.embed.text
  bert_cfg, source = text_encoder_shape(text)
  lower = lambda dev: lower_text_encoder(bert_cfg, text, dev)
  return _compile_on_one_device(name, target, lower, {"encoder_shape": source}), int(text.batch_size)


def _compile_sasrec_step(name: str, target: Target) -> tuple[dict, int]:
  sasrec = target.config.embed.sasrec
  width = sasrec_width(sasrec, target.plan_cfg, target.counts)
  lower = lambda dev: lower_sasrec_step(sasrec, target.counts["items"], width, dev)
  return _compile_on_one_device(name, target, lower, {"window": width}), int(sasrec.batch_size)


def _compile_rqvae_step(name: str, target: Target) -> tuple[dict, int]:
  from gensar_jax.identifiers.rqvae import identifiers_config
  config = target.config
  bert_cfg, _ = text_encoder_shape(config.embed.text)
  ids = section_with_defaults(config, "identifiers", identifiers_config())
  steps_per_epoch = math.ceil(target.counts["items"] / int(ids.batch_size))
  lower = lambda dev: lower_rqvae_step(ids, bert_cfg.hidden_size, int(config.embed.sasrec.hidden_dim),
                                       steps_per_epoch, dev)
  note = {"input_widths": {"semantic": bert_cfg.hidden_size, "collab": int(config.embed.sasrec.hidden_dim)}}
  return _compile_on_one_device(name, target, lower, note), int(ids.batch_size)


def _compile_doc2query_train_step(name: str, target: Target) -> tuple[dict, int]:
  """The train step with doc2query's train section, batch, lengths and the SentencePiece vocabulary (the
  doc2query model only ever reads and writes text)."""
  from gensar_jax.train.stage import planned_steps
  config = target.config
  d2q = config.doc2query
  train_cfg = ml_collections.ConfigDict(d2q.train.to_dict())
  train_cfg.num_steps = planned_steps(d2q.train, target.counts["search_train"])[0]
  model_cfg = t5_config_from_section(config.model, int(config.data.vocab_size))
  return compile_train_step(name, target, model_cfg, train_cfg, int(d2q.train.batch_size), int(d2q.max_input_len),
                            int(d2q.max_query_len))


def _compile_doc2query_sampling(name: str, target: Target) -> tuple[dict, int]:
  config, chip, device = target.config, target.chip, target.devices[0]
  d2q = config.doc2query
  d2q_cfg = t5_config_from_section(config.model, int(config.data.vocab_size))
  compiled, seconds = _timed_compile(name, lambda: lower_sampling(d2q_cfg, d2q, device), target)
  step_compiled, step_seconds = _timed_compile(name + " (one token)", lambda: lower_sampling_step(
      d2q_cfg, d2q, device), target)
  result = _analyze_one_device(compiled, target, lambda cpu: lower_sampling(d2q_cfg, d2q, cpu))
  token = _analyze_one_device(step_compiled, target, lambda cpu: lower_sampling_step(d2q_cfg, d2q, cpu))
  extra = int(d2q.max_query_len) - 1     # loop iterations beyond the one XLA counted (upper bound)
  result["flops"] += extra * token["flops"]
  result["bytes_accessed"] += extra * token["bytes_accessed"]
  result["roofline"] = roofline(result["flops"], result["bytes_accessed"], 0.0, chip)
  result["per_token"] = {"flops": token["flops"], "bytes_accessed": token["bytes_accessed"]}
  result["loop_repeat"] = f"+{extra} decoder steps (max_query_len, no early stop)"
  result["compile_seconds"] = round(seconds + step_seconds, 1)
  return result, int(d2q.sampling.batch_size)


def _compile_train_step(name: str, target: Target) -> tuple[dict, int]:
  config = target.config
  return compile_train_step(name, target, target.model_cfg, target.train_cfg, int(config.train.batch_size),
                            int(config.tasks.max_input_len), int(config.tasks.max_target_len))


def _compile_beam_search(name: str, target: Target, sampled: bool) -> tuple[dict, int]:
  """The constrained beam search over per-query candidate tries (`sampled`) or over the catalogue trie."""
  config, model_cfg, chip = target.config, target.model_cfg, target.chip
  eval_batch, num_beams = int(config.eval.batch_size), int(config.eval.num_beams)
  _, semantic_levels, _ = levels_from_config(config.identifiers)
  codebook = int(config.identifiers.codebook_size)
  catalogue, per_query = synthetic_tries(int(target.counts["items"]), len(semantic_levels), codebook, eval_batch,
                                         int(target.plan_cfg.num_candidates),
                                         model_cfg.vocab_size - len(semantic_levels) * codebook)
  tables = per_query if sampled else catalogue
  def lower(on_mesh):
    params = abstract_params(model_cfg, on_mesh, target.rules)
    return lower_beam_search(model_cfg, params, tables, on_mesh, eval_batch, int(config.tasks.max_input_len),
                             num_beams)
  compiled, seconds = _timed_compile(name, lambda: lower(target.mesh), target)
  result = analyze(compiled, chip, len(target.devices), per_chip=chip.tensorcores,
                   fallback_cost=lambda: cpu_cost(lambda cpu: lower(one_device_mesh(cpu)), len(target.devices)))
  result["compile_seconds"] = round(seconds, 1)
  return result, eval_batch // int(target.mesh.shape["data"]) * chip.tensorcores


@dataclasses.dataclass(frozen=True)
class Program:
  """One program of the plan.

  compile: (name, target) -> (its `analyze` result, rows per device). placement: SLICE, CHIP_PER_HOST or ONE_CHIP.
  batch_field: the dotted config field of its batch size; batch_axes: the mesh axes that batch is split over
  (() off the mesh). train_section: a train step's config section (its grad_accum_steps and bf16), else None.
  """
  compile: Callable[[str, Target], tuple[dict, int]]
  placement: str
  batch_field: str
  batch_axes: tuple[str, ...] = ()
  train_section: str | None = None


# In pipeline order.
REGISTRY: dict[str, Program] = {
    "text_encoder": Program(_compile_text_encoder, CHIP_PER_HOST, "embed.text.batch_size"),
    "sasrec_train_step": Program(_compile_sasrec_step, ONE_CHIP, "embed.sasrec.batch_size"),
    "rqvae_train_step": Program(_compile_rqvae_step, ONE_CHIP, "identifiers.batch_size"),
    "doc2query_train_step": Program(_compile_doc2query_train_step, SLICE, "doc2query.train.batch_size",
                                    ("data", "fsdp"), train_section="doc2query.train"),
    "doc2query_sampling": Program(_compile_doc2query_sampling, CHIP_PER_HOST, "doc2query.sampling.batch_size"),
    "train_step": Program(_compile_train_step, SLICE, "train.batch_size", ("data", "fsdp"), train_section="train"),
    "beam_search_sampled": Program(functools.partial(_compile_beam_search, sampled=True), SLICE, "eval.batch_size",
                                   ("data",)),
    "beam_search_full": Program(functools.partial(_compile_beam_search, sampled=False), SLICE, "eval.batch_size",
                                ("data",)),
}
PROGRAMS = tuple(REGISTRY)
PLACEMENT = {name: program.placement for name, program in REGISTRY.items()}


def config_field(config: ml_collections.ConfigDict, dotted: str):
  """`config`'s value at a dotted path, e.g. "doc2query.train.batch_size"."""
  for part in dotted.split("."):
    config = config[part]
  return config


def nominal_rows(name: str, target: Target) -> int:
  """Rows per device of a program as configured (for a program whose compile failed): its batch over its
  batch axes of the config's mesh."""
  program = REGISTRY[name]
  return int(config_field(target.config, program.batch_field)) // math.prod(
      target.mesh_shape[axis] for axis in program.batch_axes)


def compile_program(name: str, target: Target) -> tuple[dict, int]:
  """Compiles one program of the plan; returns (its `analyze` result, rows per exposed device). A program
  the compiler refuses for lack of HBM gives a misfit result (`compile_failure`)."""
  if name not in REGISTRY:
    raise ValueError(f"unknown program {name!r}; expected one of {PROGRAMS}")
  try:
    return REGISTRY[name].compile(name, target)
  except jax.errors.JaxRuntimeError as e:
    result = compile_failure(e, target.chip, target.chip.tensorcores)
    if result is None:
      raise
    log.warning("plan: %s does not compile: %s", name, result["compile_error"])
    return result, nominal_rows(name, target)
