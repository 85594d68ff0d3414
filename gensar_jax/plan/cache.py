"""The plan's cache of compiled programs: what the plan reads from a compile (the optimized HLO text, XLA's
cost and memory analyses), keyed by the lowered program, the compile options, the target devices and the
compiler versions.

JAX's persistent compilation cache does not serve here: it stores executables, and a deviceless TPU
executable cannot be loaded back without a TPU client. A second plan of the same programs lowers each one
(seconds), finds its entry and skips the compile (minutes).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax

from gensar_jax.io_utils import write_bytes

log = logging.getLogger(__name__)

MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes")
_directory: Path | None = None


def cache_dir(setting: str) -> Path | None:
  """The cache directory for `plan.compilation_cache`: the setting, else $GENSAR_COMPILATION_CACHE, else
  ~/.cache/gensar/plan; None when "off"."""
  if setting == "off":
    return None
  return Path(setting or os.environ.get("GENSAR_COMPILATION_CACHE") or Path.home() / ".cache" / "gensar" / "plan")


def use(setting: str) -> None:
  """Sets the cache directory of this process's plans (see `cache_dir`)."""
  global _directory
  _directory = cache_dir(setting)


@dataclasses.dataclass(frozen=True)
class CompiledAnalysis:
  """The parts of a compiled program the plan reads, with the compiled object's method names."""
  optimized_hlo: str
  cost: dict
  memory: dict
  unoptimized_hlo: str

  def as_text(self) -> str:
    return self.optimized_hlo

  def cost_analysis(self) -> dict:
    return dict(self.cost)

  def memory_analysis(self):
    return type("MemoryStats", (), dict(self.memory))()

  @classmethod
  def of(cls, compiled, unoptimized_hlo: str) -> "CompiledAnalysis":
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):     # older jax: one dict per program
      cost = cost[0] if cost else {}
    memory = compiled.memory_analysis()
    return cls(compiled.as_text(), {k: float(v) for k, v in dict(cost or {}).items()},
               {f: int(getattr(memory, f)) for f in MEMORY_FIELDS}, unoptimized_hlo)


def program_key(lowered_text: str, options: dict | None, devices: list) -> str:
  """SHA-256 of what decides a compile's result: the lowered program, the options, the devices' kind and
  count, and the jax and compiler versions."""
  from gensar_jax.plan.topology import libtpu_available
  parts = [lowered_text, json.dumps(options or {}, sort_keys=True), devices[0].device_kind, str(len(devices)),
           jax.__version__, libtpu_available()[1]]
  return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def load(key: str) -> CompiledAnalysis | None:
  if _directory is None:
    return None
  path = _directory / f"{key}.json.gz"
  try:
    return CompiledAnalysis(**json.loads(gzip.decompress(path.read_bytes())))
  except FileNotFoundError:
    return None
  except (OSError, ValueError, TypeError) as e:   # a damaged entry is compiled again (and rewritten)
    log.warning("plan cache: ignoring %s (%s)", path, e)
    return None


def store(key: str, analysis: CompiledAnalysis) -> None:
  """Writes the entry whole (a rename); a cache that cannot be written only logs."""
  if _directory is None:
    return
  try:
    _directory.mkdir(parents=True, exist_ok=True)
    write_bytes(_directory / f"{key}.json.gz", gzip.compress(json.dumps(dataclasses.asdict(analysis)).encode()))
  except OSError as e:
    log.warning("plan cache: could not write %s (%s)", _directory, e)


def compile_or_load(lowered, options: dict | None, devices: list) -> tuple[Any, bool]:
  """(`CompiledAnalysis` of `lowered`, whether it came from the cache)."""
  unoptimized = lowered.as_text(dialect="hlo", debug_info=True)
  key = program_key(lowered.as_text(), options, devices)
  cached = load(key)
  if cached is not None:
    return cached, True
  compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
  analysis = CompiledAnalysis.of(compiled, unoptimized)
  store(key, analysis)
  return analysis, False
