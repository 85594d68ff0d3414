"""Configs: `configs/<name>.py` files whose `get_config()` returns an ml_collections.ConfigDict.

Overrides are dotted assignments, e.g. `--set data.num_negatives=49 --set train.steps=10`; values
are parsed as Python literals when possible (numbers, booleans, tuples, None), else kept as strings.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Iterable

import ml_collections

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


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `a.b.c=value` assignments; unknown keys are an error (typos must not pass silently)."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. data.num_negatives=49")
    *parents, leaf = key.strip().split(".")
    node = config
    for i, part in enumerate(parents):
      if part not in node:
        raise KeyError(f"override {item!r}: no config field {'.'.join(parents[:i + 1])!r}")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"override {item!r}: no config field {key!r}")
    value = _parse_value(raw.strip())
    old = node[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if isinstance(old, str) and not isinstance(value, str):
      value = raw.strip()
    if isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    with node.ignore_type():
      node[leaf] = value
  return config


def load_config(name_or_path: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `get_config()` from a config file, applies overrides, and fills `config.name`."""
  path = resolve_config_path(name_or_path)
  spec = importlib.util.spec_from_file_location(f"gensar_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if not config.get("name"):
    config.name = path.stem
  return apply_overrides(config, overrides)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return config.to_dict()


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
