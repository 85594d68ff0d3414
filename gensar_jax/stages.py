"""Pipeline stages: each reads its inputs from `<workdir>/<dep>/`, writes `<workdir>/<stage>/` atomically
with `stats.json` and `config.json`, and is skipped by `run` when its fingerprint (a hash of the config
sections it reads and of its inputs' fingerprints) has not changed.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import ml_collections

from gensar_jax.io_utils import fingerprint, read_json, write_json

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  config_keys: tuple[str, ...]            # config sections or dotted fields the stage reads
  deps: tuple[str, ...]
  # (config, out_dir, fingerprint) -> stats. Long stages use the fingerprint to tell a resumable run
  # of the same inputs from a stale one.
  run: Callable[[ml_collections.ConfigDict, Path, str], dict]
  summary: str


def _prepare(config, out_dir, fingerprint):
  from gensar_jax.data.prepare import prepare
  return prepare(config, out_dir)


def _embed(config, out_dir, fingerprint):
  from gensar_jax.embed.stage import run_embed
  return run_embed(config, out_dir)


def _index(config, out_dir, fingerprint):
  from gensar_jax.identifiers.stage import run_index
  return run_index(config, out_dir)


def _doc2query(config, out_dir, fingerprint):
  from gensar_jax.train.stage import run_doc2query
  return run_doc2query(config, out_dir, fingerprint)


def _train(config, out_dir, fingerprint):
  from gensar_jax.train.stage import run_train
  return run_train(config, out_dir, fingerprint)


def _eval(config, out_dir, fingerprint):
  from gensar_jax.eval.stage import run_eval
  return run_eval(config, out_dir)


# Order matters: `run` executes stages in this order.
STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("prepare", ("seed", "data"), (), _prepare,
          "raw data -> events, histories, splits, negatives, tokenizer, ArrayRecord samples"),
    Stage("embed", ("seed", "embed"), ("prepare",), _embed,
          "semantic (text encoder) and collaborative (SASRec) item embeddings"),
    Stage("index", ("identifiers",), ("embed",), _index, "RQ-VAE dual identifiers with collision resolution"),
    # doc2query reads item text and queries only (its vocabulary is the SentencePiece one).
    Stage("doc2query", ("seed", "tasks.max_text_tokens", "model", "doc2query", "parallel"), ("prepare",),
          _doc2query,
          "item text -> query model and pseudo-queries for ad-hoc search"),
    Stage("train", ("seed", "tasks", "model", "train", "parallel", "eval"), ("prepare", "index", "doc2query"),
          _train, "multi-task T5 training with validation-based model selection"),
    Stage("eval", ("eval",), ("train",), _eval, "constrained beam search evaluation (sampled + full catalogue)"),
]}


def stage_fingerprint(stage: Stage, config: ml_collections.ConfigDict, workdir: Path) -> str:
  parts = [stage.name]
  for key in stage.config_keys:
    value = config
    for part in key.split("."):
      value = value.get(part) if value is not None else None
    parts.append(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)
  for dep in stage.deps:
    parts.append(read_json(workdir / dep / "fingerprint.json")["fingerprint"])
  return fingerprint(*parts)


def is_fresh(stage: Stage, config, workdir: Path) -> bool:
  path = workdir / stage.name / "fingerprint.json"
  if not path.exists() or any(not (workdir / d / "fingerprint.json").exists() for d in stage.deps):
    return False
  return read_json(path)["fingerprint"] == stage_fingerprint(stage, config, workdir)


def run_stage(stage: Stage, config, workdir: Path) -> dict:
  for dep in stage.deps:
    if not (workdir / dep / "fingerprint.json").exists():
      raise FileNotFoundError(f"stage {stage.name!r} needs {workdir / dep}: run `gensar {dep}` first")
  out_dir = workdir / stage.name
  fp = stage_fingerprint(stage, config, workdir)
  stats = stage.run(config, out_dir, fp)
  write_json(out_dir / "fingerprint.json", {"fingerprint": fp})
  return stats
