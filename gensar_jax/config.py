"""Configs: `configs/<name>.py` files whose `get_config()` returns an ml_collections.ConfigDict.

Overrides are dotted assignments, e.g. `--set data.num_negatives=49 --set train.num_steps=10`; each value
is parsed as its default's type (`coerce_like`): a value of another type is an error naming the key.
`check_config` then checks ranges and cross-field rules before any stage runs.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

import ml_collections

from gensar_jax import config_schema

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name_or_path: str) -> Path:
  """`synthetic`, `configs/synthetic.py` or any path to a config file."""
  path = Path(name_or_path)
  if path.suffix != ".py":
    path = CONFIG_DIR / f"{name_or_path}.py"
  if not path.exists():
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
    raise FileNotFoundError(f"config {name_or_path!r} not found at {path}; known configs: {known}")
  return path


_TRUE, _FALSE = ("true",), ("false",)


def _parse_literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return text


def _type_name(like) -> str:
  return "a tuple" if isinstance(like, tuple) else type(like).__name__


def coerce_like(value, like, where: str):
  """`value` converted to the type of the default `like`, or a ValueError naming `where` and the type.

  bool takes True/False (or the strings true/false in any case); int rejects fractions (a whole float
  such as 1e5 is taken); float takes ints; str takes anything textual; a tuple takes a list or tuple whose
  elements match the default's element types (int -> float where the default holds floats); None (no
  default) takes anything.
  """
  def fail():
    expected = "true or false" if isinstance(like, bool) else _type_name(like) + (
        f" like {like!r}" if like not in ((), "") else "")
    raise ValueError(f"{where}={value!r}: expected {expected}")
  if like is None:
    return value
  if isinstance(like, bool):
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
      return value.strip().lower() in _TRUE
    fail()
  if isinstance(like, int):
    if isinstance(value, bool):
      fail()
    if isinstance(value, int):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    fail()
  if isinstance(like, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    fail()
  if isinstance(like, str):
    return value if isinstance(value, str) else fail()
  if isinstance(like, tuple):
    if not isinstance(value, (list, tuple)):
      fail()
    if not like:
      return tuple(value)
    return tuple(_coerce_element(v, like, f"{where}[{i}]") for i, v in enumerate(value))
  return value


def _kind(value) -> object:
  return tuple(_kind(v) for v in value) if isinstance(value, tuple) else type(value)


def _coerce_element(value, like: tuple, where: str):
  """One element of a tuple field, checked against each kind of element the default tuple holds."""
  if value is None and any(e is None for e in like):
    return None
  first_error = None
  for example in {_kind(e): e for e in like if e is not None}.values():
    try:
      return coerce_like(value, example, where)
    except ValueError as e:
      first_error = first_error or e
  raise first_error or ValueError(f"{where}={value!r}: expected None")


def parse_override(raw: str, like, where: str):
  """The text of `--set where=raw` as a value of the default's type (see `coerce_like`)."""
  text = raw.strip()
  if isinstance(like, str):
    return text
  if isinstance(like, bool):
    return coerce_like(text if text.lower() in _TRUE + _FALSE else _parse_literal(text), like, where)
  value = _parse_literal(text)
  if isinstance(like, tuple) and isinstance(value, str) and like and all(isinstance(e, str) for e in like):
    value = tuple(part.strip() for part in text.split(",") if part.strip())   # a,b,c for a tuple of strings
  return coerce_like(value, like, where)


def field_parent(config: ml_collections.ConfigDict, key: str, where: str) -> tuple[ml_collections.ConfigDict, str]:
  """(the section holding dotted `key`, its last part); KeyError naming `where` and the missing section or field."""
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise KeyError(f"{where}: no config section {'.'.join(parents[:i + 1])!r}")
    node = node[part]
  if leaf not in node:
    raise KeyError(f"{where}: no config field {key!r}")
  return node, leaf


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `a.b.c=value` assignments, each parsed as the default's type; unknown keys and values of the
  wrong type are errors (typos must not pass silently)."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. data.num_negatives=49")
    key = key.strip()
    node, leaf = field_parent(config, key, f"override {item!r}")
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict):
      raise ValueError(f"override {item!r}: {key!r} is a config section; set its fields (e.g. {key}.<field>=...)")
    if old is None:    # a placeholder: None, or a value of its declared type
      declared = node.get_type(leaf)
      example = {int: 0, float: 0.0, str: "", bool: False}.get(declared)
      if raw.strip() == "None" or example is None:
        value = _parse_literal(raw.strip())
      else:
        try:
          value = parse_override(raw, example, f"--set {key}")
        except ValueError:
          raise ValueError(f"--set {key}={raw.strip()!r}: expected None or {declared.__name__}") from None
    else:
      value = parse_override(raw, old, f"--set {key}")
    with node.ignore_type():
      node[leaf] = value
  return config


# ------------------------------------------------------------------------------------ the schema

# Which stages read each section as a whole (fields read by further stages say so in their section), in the
# order stage fingerprints list them.
SECTION_READERS = {
    "data": ("prepare",), "tasks": ("train",), "identifiers": ("index",), "embed": ("embed",),
    "model": ("doc2query", "train"), "doc2query": ("doc2query",), "train": ("train",),
    "parallel": ("doc2query", "train"), "eval": ("eval",), "baselines": (), "reproduce": (), "plan": ()}


@functools.cache
def root_schema() -> config_schema.Section:
  """Every config field: the root fields and each section's schema, declared beside the code that reads it."""
  from gensar_jax.data.prepare import DATA_SCHEMA
  from gensar_jax.data.task_data import TASKS_SCHEMA
  from gensar_jax.embed.stage import EMBED_SCHEMA
  from gensar_jax.eval.baselines import BASELINES_SCHEMA
  from gensar_jax.eval.stage import EVAL_SCHEMA
  from gensar_jax.identifiers.rqvae import IDENTIFIERS_SCHEMA
  from gensar_jax.model.t5 import MODEL_SCHEMA
  from gensar_jax.parallel import PARALLEL_SCHEMA
  from gensar_jax.plan.report import PLAN_SCHEMA
  from gensar_jax.reproduce import REPRODUCE_SCHEMA
  from gensar_jax.train.stage import DOC2QUERY_SCHEMA
  from gensar_jax.train.state import TRAIN_SCHEMA
  sections = {
      "data": DATA_SCHEMA, "tasks": TASKS_SCHEMA,
      "identifiers": IDENTIFIERS_SCHEMA,       # RQ-VAE and identifier structure (docs/method.md, Identifiers)
      "embed": EMBED_SCHEMA,                   # text encoder + SASRec (collaborative embeddings)
      "model": MODEL_SCHEMA,                   # T5 shape (paper: t5-small) or a HF checkpoint to start from
      "doc2query": DOC2QUERY_SCHEMA,           # pseudo-queries for the ad-hoc search task
      "train": TRAIN_SCHEMA.with_defaults(num_steps=-1),   # reference: AdamW 1e-3, cosine, 1% warm-up, wd 1e-7
      "parallel": PARALLEL_SCHEMA,             # mesh and logical-axis rules
      "eval": EVAL_SCHEMA,                     # beam 30, sampled + full-catalogue protocols
      "baselines": BASELINES_SCHEMA,           # popularity, BM25, dense retrieval, SASRec
      "reproduce": REPRODUCE_SCHEMA,           # `gensar reproduce`: suites and identifier lengths
      "plan": PLAN_SCHEMA,                     # `gensar plan`: a config names it to plan a slice
  }
  return config_schema.Section({
      "name": config_schema.Field("", config_schema.text()),
      "seed": config_schema.Field(2024, config_schema.whole_at_least(0),
                                  read_by=("prepare", "embed", "doc2query", "train")),
      **{name: section.placed(SECTION_READERS[name], optional=name == "plan") for name, section in sections.items()},
  })


def base_config() -> ml_collections.ConfigDict:
  """The default config; each configs/<name>.py starts from it and overrides what differs."""
  return root_schema().defaults()


def value_rules() -> tuple[tuple[str, config_schema.Rule], ...]:
  """(dotted field, rule) of every field of the schema."""
  return tuple((key, field.rule) for key, field in root_schema().leaves())


def _lookup(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def unknown_fields(config: ml_collections.ConfigDict, schema: config_schema.Section, prefix: str = "") -> list[str]:
  """Dotted names of the config's fields and sections the schema does not declare (misspelled names)."""
  unknown = []
  for key in config:
    node = schema.fields.get(key)
    if node is None:
      unknown.append(f"{prefix}{key}")
    elif isinstance(node, config_schema.Section) and isinstance(config[key], ml_collections.ConfigDict):
      unknown += unknown_fields(config[key], node, f"{prefix}{key}.")
  return unknown


def check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks ranges, choices and cross-field rules; raises one ValueError listing every problem."""
  problems = [f"{key}: no such field (a misspelled name?)" for key in unknown_fields(config, root_schema())]
  for key, rule in value_rules():
    value = _lookup(config, key)
    if value is not _MISSING and not rule(value):
      problems.append(f"{key}={value!r}: expected {rule.expected}")
  for section in ("train", "doc2query.train"):
    steps, epochs = _lookup(config, f"{section}.num_steps"), _lookup(config, f"{section}.num_epochs")
    if steps is not _MISSING and epochs is not _MISSING and steps <= 0 and epochs < 1:
      problems.append(f"{section}.num_steps={steps!r} and {section}.num_epochs={epochs!r}: "
                      "expected num_steps > 0, or num_epochs >= 1 when num_steps <= 0")
    batch, accum = _lookup(config, f"{section}.batch_size"), _lookup(config, f"{section}.grad_accum_steps")
    if batch is not _MISSING and accum is not _MISSING and accum >= 1 and batch % accum:
      problems.append(f"{section}.batch_size={batch} is not a multiple of {section}.grad_accum_steps={accum}")
  for buckets, longest in (("length_buckets", "max_input_len"), ("target_buckets", "max_target_len")):
    widths, limit = _lookup(config, f"tasks.{buckets}"), _lookup(config, f"tasks.{longest}")
    if widths is _MISSING or limit is _MISSING:
      continue
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= limit]
    if bad:
      problems.append(f"tasks.{buckets}={tuple(widths)!r}: expected whole numbers between 1 and "
                      f"tasks.{longest}={limit} (bad: {bad})")
  for section in ("train", "doc2query.train"):
    patience, every = _lookup(config, f"{section}.early_stopping_patience"), _lookup(config, f"{section}.eval_every")
    if _MISSING not in (patience, every) and patience > 0 and every == 0:
      problems.append(f"{section}.early_stopping_patience={patience} with {section}.eval_every=0: early stopping "
                      "counts evaluations; expected eval_every > 0 or early_stopping_patience=0")
  for section in ("train", "doc2query.train"):
    metric, mode = _lookup(config, f"{section}.best_metric"), _lookup(config, f"{section}.best_mode")
    if mode == "min" and isinstance(metric, str) and metric.startswith("val/"):
      problems.append(f"{section}.best_mode='min' with {section}.best_metric={metric!r}: the validation reports HR "
                      "and NDCG, better when higher; expected best_mode='max'")
  workers, buckets = _lookup(config, "tasks.pipeline_workers"), _lookup(config, "tasks.length_buckets")
  if _MISSING not in (workers, buckets) and isinstance(workers, int) and workers > 0 and buckets:
    problems.append(f"tasks.pipeline_workers={workers} with tasks.length_buckets={tuple(buckets)!r}: bucketed "
                    "batches are built in the training process; expected pipeline_workers=0 or length_buckets=()")
  epochs, every = _lookup(config, "identifiers.epochs"), _lookup(config, "identifiers.eval_every_epochs")
  if _MISSING not in (epochs, every) and epochs < every:
    problems.append(f"identifiers.epochs={epochs} < identifiers.eval_every_epochs={every}: the RQ-VAE would never be "
                    "evaluated; expected epochs >= eval_every_epochs")
  items = _lookup(config, "data.synthetic.num_items")
  negatives = _lookup(config, "data.num_negatives")
  if _lookup(config, "data.source") == "synthetic" and _MISSING not in (items, negatives) and negatives >= items:
    problems.append(f"data.num_negatives={negatives}: expected fewer than the catalogue's "
                    f"data.synthetic.num_items={items}")
  if problems:
    name = config.get("name") or "config"
    raise ValueError(f"{name}: {len(problems)} invalid value(s):\n  " + "\n  ".join(problems))
  return config


def load_config(name_or_path: str, overrides: Iterable[str] = (), check: bool = True) -> ml_collections.ConfigDict:
  """Loads `get_config()` from a config file, applies overrides, fills `config.name` and (by default)
  checks every value (`check_config`) so that a stage never starts on a config that cannot work."""
  path = resolve_config_path(name_or_path)
  spec = importlib.util.spec_from_file_location(f"gensar_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  # A config imports the configs beside it by name (`from common import cpu_budget`).
  sys.path.insert(0, str(path.parent))
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  finally:
    sys.path.remove(str(path.parent))
  if not config.get("name"):
    config.name = path.stem
  config = apply_overrides(config, overrides)
  return check_config(config) if check else config


def section_with_defaults(config: ml_collections.ConfigDict, name: str,
                          defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.<name>` laid over `defaults` (a config written before a field existed still works);
  fields the defaults do not know are an error."""
  given = config.get(name) or {}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"config.{name}: unknown fields {unknown} (expected {sorted(defaults)})")
  for key in given:
    defaults[key] = given[key]
  return defaults
