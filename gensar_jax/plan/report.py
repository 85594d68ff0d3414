"""`gensar plan`'s report: the `plan` config section, and `plan`, which compiles a config's programs for its slice
and gathers their analyses, the dropout-generator comparison, the pipeline's estimate and the advice into one
dict (written to <workdir>/plan/plan.json)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections

from gensar_jax import parallel
from gensar_jax.config import section_with_defaults
from gensar_jax.config_schema import Field, Section, fraction, subset_of, text, whole_at_least
from gensar_jax.data.tokenizer import BEHAVIOUR_TOKENS, levels_from_config
from gensar_jax.io_utils import as_path, write_json
from gensar_jax.model.t5 import DROPOUT_RNGS, t5_config_from_section
from gensar_jax.plan.advice import advice, dropout_advice, tight_advice
from gensar_jax.plan.budget import dataset_counts, epoch_examples, estimate, training_budget
from gensar_jax.plan.chips import GPUS
from gensar_jax.plan.dropout import compare_dropout_rngs
from gensar_jax.plan.programs import PLACEMENT, PROGRAMS, Target, compile_program
from gensar_jax.plan import cache
from gensar_jax.plan.topology import libtpu_available, plan_mesh, slice_hosts, topology_devices


# The `plan` section (`gensar plan`; read by no stage). The pod presets set `topology`.
PLAN_SCHEMA = Section(dict(
    topology=Field("", text()),   # e.g. "v5e:8x8" (64 chips); `gensar plan --topology` overrides
    # The paper's Electronics counts (docs/method.md, Data), used when <workdir>/prepare/stats.json is absent.
    **{name: Field(count, whole_at_least(1)) for name, count in dict(
        num_items=62_882, num_users=192_403, rec_train_rows=930_387, rec_validation_rows=168_258,
        rec_test_rows=168_258, search_train_rows=698_802, search_validation_rows=191_566,
        search_test_rows=191_566).items()},
    num_candidates=Field(100, whole_at_least(2)),   # sampled protocol: target + 99 negatives
    tight_fraction=Field(0.9, fraction(False, True)),   # a program above this share of HBM is reported as tight
    # The train step is compiled under each of these dropout-mask generators (train.dropout_rng); the
    # config's own is always compiled and is the one the estimate uses. () compiles only the config's.
    dropout_rngs=Field(DROPOUT_RNGS, subset_of(*DROPOUT_RNGS, non_empty=False)),
    # Encoder and decoder layers of the comparison's train steps (0: the config's model). Fewer layers
    # compare the same per-layer masks in a fraction of the compile time (every generator, the config's
    # included, is then compiled at that depth); the estimate always uses the config's full train step.
    dropout_compare_layers=Field(0, whole_at_least(0)),
    # SASRec trains on windows cut to length buckets; its step is compiled at this width (0: the bucket
    # holding the mean training window, rec_train_rows / num_users - 1 items).
    sasrec_window=Field(0, whole_at_least(0)),
    # The plan's cache of compiled programs (`plan.cache`): a second plan of the same programs loads what it
    # needs instead of compiling. "" uses $GENSAR_COMPILATION_CACHE, else ~/.cache/gensar/plan; "off" disables it.
    compilation_cache=Field("", text()),
))


def plan_config() -> ml_collections.ConfigDict:
  """Defaults of the `plan` section."""
  return PLAN_SCHEMA.defaults()


def vocab_size(config: ml_collections.ConfigDict) -> int:
  """The GenSAR model's vocabulary: SentencePiece pieces + behaviour tokens + one token per level and code
  (`data.tokenizer.GenSARTokenizer`), with `data.vocab_size` pieces (SentencePiece's upper bound)."""
  levels, _, _ = levels_from_config(config.identifiers)
  return int(config.data.vocab_size) + len(BEHAVIOUR_TOKENS) + len(levels) * int(config.identifiers.codebook_size)


def plan(config: ml_collections.ConfigDict, workdir: Path | None = None, topology: str | None = None,
         programs: tuple[str, ...] = PROGRAMS) -> dict:
  """Compiles `programs` for the config's slice and returns the report (see `gensar_jax.plan`).
  A subset of `PROGRAMS` gives a partial estimate (`estimate["partial"]`, with the programs it lacks)."""
  plan_cfg = section_with_defaults(config, "plan", plan_config())
  topology = topology or plan_cfg.topology
  if not topology:
    raise ValueError(f"config {config.name!r} names no slice to plan for: pass --topology (e.g. v5e:8x8, v4:2x2x4, "
                     "h100:8), or give the config a plan section with plan.topology as configs/tpu_v5e_64.py does")
  unknown = [p for p in programs if p not in PROGRAMS]
  if unknown:
    raise ValueError(f"unknown program(s) {unknown}; expected a subset of {PROGRAMS}")
  cache.use(plan_cfg.compilation_cache)
  devices, chip = topology_devices(topology)
  mesh, mesh_shape = plan_mesh(config, devices, chip)
  rules = parallel.rules_tuple(config.parallel.logical_axis_rules)
  vocab = vocab_size(config)
  model_cfg = t5_config_from_section(config.model, vocab)
  batch = int(config.train.batch_size)
  input_len, target_len = int(config.tasks.max_input_len), int(config.tasks.max_target_len)
  batch_axes = mesh_shape["data"] * mesh_shape["fsdp"]
  if batch % batch_axes:
    raise ValueError(f"train.batch_size {batch} is not divisible by the mesh's batch axes data x fsdp = {batch_axes}")
  counts, counts_source = dataset_counts(plan_cfg, workdir)
  budget = training_budget(config, epoch_examples(config, counts))
  exposed = len(devices) // chip.tensorcores
  hosts = slice_hosts(topology, exposed)
  train_cfg = ml_collections.ConfigDict(config.train.to_dict())
  train_cfg.num_steps = budget["num_steps"]
  report: dict[str, Any] = {
      "config": config.name, "topology": topology, "chip": dataclasses.asdict(chip),
      "devices": exposed, "tensorcores": len(devices), "mesh": mesh_shape, "hosts": hosts, "jax": jax.__version__,
      "compiler": libtpu_available()[1] if chip.name not in GPUS else "jax-cuda12-plugin",
      "model": {"vocab_size": vocab, "d_model": model_cfg.d_model, "layers": [model_cfg.num_encoder_layers,
                model_cfg.num_decoder_layers], "bf16_training": bool(config.train.bf16),
                "dropout_rng": str(train_cfg.get("dropout_rng", "threefry")), "attention": model_cfg.attention,
                "loss_chunks": int(train_cfg.get("loss_chunks", 1))},
      "shapes": {"global_batch": batch, "rows_per_device": batch // batch_axes, "input_len": input_len,
                 "target_len": target_len, "grad_accum_steps": int(config.train.grad_accum_steps)},
      "counts": dict(counts, source=counts_source),
      "budget": dict(budget, epoch_source=counts_source), "programs": {}, "advice": []}
  eval_batch = int(config.eval.batch_size)
  if eval_batch % mesh_shape["data"]:
    raise ValueError(f"eval.batch_size {eval_batch} is not divisible by the mesh's data axis ({mesh_shape['data']})")
  target = Target(config, plan_cfg, model_cfg, train_cfg, mesh, mesh_shape, rules, devices, chip, counts)
  # The train step first: the longest compile and the program most likely not to fit, so a preflight learns
  # that first. The report lists the programs in `programs` order.
  compiled = {name: compile_program(name, target) for name in sorted(programs, key=lambda n: n != "train_step")}
  for name in programs:
    result, rows = compiled[name]
    result["rows_per_device"] = rows
    result["placement"] = PLACEMENT[name]
    report["programs"][name] = result
    report["advice"] += advice(name, result, rows, config, mesh_shape)
  if "train_step" in report["programs"] and tuple(plan_cfg.dropout_rngs):
    report["dropout_rng"] = compare_dropout_rngs(target, report["programs"]["train_step"], tuple(plan_cfg.dropout_rngs),
                                                 int(plan_cfg.dropout_compare_layers))
    report["advice"] += dropout_advice(report["dropout_rng"], budget["num_steps"])
  report["estimate"] = estimate(report, config, counts, hosts)
  report["fits"] = all(p["fits"] for p in report["programs"].values())
  report["advice"] += tight_advice(report["programs"], float(plan_cfg.tight_fraction))
  if workdir is not None:
    write_json(as_path(workdir) / "plan" / "plan.json", report)
  return report
