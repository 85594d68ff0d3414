"""Config schema: every config field is declared once, beside the code that reads it, with its default, the rule
its value must pass and its role in stage fingerprints.

A `Section` maps names to `Field`s and nested sections. From the root section (`config.root_schema`) derive:
the default config (`Section.defaults`), the value rules `config.check_config` applies (`Section.leaves`), the
config keys each pipeline stage fingerprints (`Section.stage_keys`), and the fields a fingerprint leaves out
(`Field.speed_only`, `Field.unrecorded`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import ml_collections


class _Absent:
  def __repr__(self) -> str:
    return "ABSENT"


# A field a config has only when it sets it (e.g. the shape overrides of `model.shape`).
ABSENT = _Absent()


# ------------------------------------------------------------------------------------------- rules

@dataclasses.dataclass(frozen=True)
class Rule:
  """`check(value) -> bool`, and what a value must be, as an error message says it."""
  check: Callable[[Any], bool]
  expected: str

  def __call__(self, value) -> bool:
    try:
      return bool(self.check(value))
    except TypeError:                     # e.g. "abc" >= 1
      return False


def _is_whole(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def at_least(low) -> Rule:
  return Rule(lambda v: v >= low, f">= {low}")


def between(low, high) -> Rule:
  return Rule(lambda v: low <= v <= high, f"between {low} and {high}")


def positive() -> Rule:
  return Rule(lambda v: v > 0, "> 0")


def fraction(closed_low: bool, closed_high: bool) -> Rule:
  """A value in [0, 1], (0, 1], [0, 1) or (0, 1)."""
  low_ok = (lambda v: v >= 0) if closed_low else (lambda v: v > 0)
  high_ok = (lambda v: v <= 1) if closed_high else (lambda v: v < 1)
  return Rule(lambda v: low_ok(v) and high_ok(v), f"in {'[' if closed_low else '('}0, 1{']' if closed_high else ')'}")


def one_of(*choices) -> Rule:
  return Rule(lambda v: v in choices, f"one of {list(choices)}")


def subset_of(*choices, non_empty: bool = True) -> Rule:
  return Rule(lambda v: isinstance(v, tuple) and (bool(v) or not non_empty) and set(v) <= set(choices),
              f"a{' non-empty' if non_empty else ''} subset of {list(choices)}")


def boolean() -> Rule:
  return Rule(lambda v: isinstance(v, bool), "true or false")


def text() -> Rule:
  return Rule(lambda v: isinstance(v, str), "a string")


def whole() -> Rule:
  return Rule(_is_whole, "a whole number")


def whole_at_least(low: int) -> Rule:
  return Rule(lambda v: _is_whole(v) and v >= low, f"a whole number >= {low}")


def wholes_at_least(low: int, non_empty: bool = True) -> Rule:
  """A tuple of whole numbers >= low."""
  return Rule(lambda v: isinstance(v, tuple) and (bool(v) or not non_empty) and
              all(_is_whole(x) and x >= low for x in v),
              f"a {'non-empty ' if non_empty else ''}tuple of whole numbers >= {low}")


def satisfies(check: Callable[[Any], bool], expected: str) -> Rule:
  """A rule of its own (e.g. "-1 (every row) or >= 0")."""
  return Rule(check, expected)


# ------------------------------------------------------------------------------------------- fields

@dataclasses.dataclass(frozen=True)
class Field:
  """One config field.

  default: its value in the default config; ABSENT: present only when a config sets it.
  rule: what any value must be (checked when a config loads).
  read_by: stages that read this field besides those reading its whole section (see `Section.read_by`).
  speed_only: changes how fast a stage runs, never what it writes: left out of stage fingerprints.
  unrecorded: a value at which fingerprints leave the field out: the field came after results were recorded,
    and this value reproduces them, so those results stay fresh (any other value is fingerprinted).
  placeholder: the type a None default may later take (an ml_collections placeholder).
  """
  default: Any
  rule: Rule
  read_by: tuple[str, ...] = ()
  speed_only: bool = False
  unrecorded: Any = ABSENT
  placeholder: type | None = None


@dataclasses.dataclass(frozen=True)
class Section:
  """Named fields and sections.

  read_by: the stages that read the whole section (set where the section is placed in the root, since a
    section may appear twice, as `train` does under `doc2query`).
  optional: left out of the default config; a command that reads it lays a config's values over its
    defaults (`config.section_with_defaults`).
  """
  fields: Mapping[str, "Field | Section"]
  read_by: tuple[str, ...] = ()
  optional: bool = False

  def defaults(self) -> ml_collections.ConfigDict:
    """The default values as a ConfigDict (ABSENT fields left out)."""
    config = ml_collections.ConfigDict()
    for name, node in self.fields.items():
      if isinstance(node, Section):
        if not node.optional:
          config[name] = node.defaults()
      elif node.placeholder is not None:
        config[name] = ml_collections.config_dict.placeholder(node.placeholder)
      elif node.default is not ABSENT:
        config[name] = node.default
    return config

  def with_defaults(self, **defaults) -> "Section":
    """The same fields with other defaults."""
    unknown = sorted(set(defaults) - set(self.fields))
    if unknown:
      raise KeyError(f"with_defaults: no fields {unknown}")
    return dataclasses.replace(self, fields={
        name: dataclasses.replace(node, default=defaults[name]) if name in defaults else node
        for name, node in self.fields.items()})

  def without(self, *names: str) -> "Section":
    return dataclasses.replace(self, fields={n: f for n, f in self.fields.items() if n not in names})

  def placed(self, read_by: tuple[str, ...] = (), optional: bool = False) -> "Section":
    """This section as placed in a parent: read as a whole by `read_by`, left out of the defaults if optional."""
    return dataclasses.replace(self, read_by=tuple(read_by), optional=optional)

  def leaves(self, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """(dotted name, field) of every field, in declaration order."""
    for name, node in self.fields.items():
      if isinstance(node, Section):
        yield from node.leaves(f"{prefix}{name}.")
      else:
        yield f"{prefix}{name}", node

  def node(self, dotted: str) -> "Field | Section | None":
    """The field or section at a dotted name, None if the schema has none."""
    node: Field | Section = self
    for part in dotted.split("."):
      if not isinstance(node, Section) or part not in node.fields:
        return None
      node = node.fields[part]
    return node

  def stage_keys(self, stage: str, prefix: str = "") -> tuple[str, ...]:
    """The config keys `stage` reads, in declaration order: a section it reads whole as one key, else the
    fields it reads one by one."""
    keys: list[str] = []
    for name, node in self.fields.items():
      if stage in node.read_by:
        keys.append(f"{prefix}{name}")
      elif isinstance(node, Section):
        keys.extend(node.stage_keys(stage, f"{prefix}{name}."))
    return tuple(keys)
