"""What a plan advises: the config change that makes a program fit, a faster dropout-mask generator, programs
with little HBM headroom."""
from __future__ import annotations

from typing import Mapping

import ml_collections

from gensar_jax.plan.chips import GIB
from gensar_jax.plan.programs import REGISTRY, config_field
from gensar_jax.plan.tables import format_duration


def advice(name: str, result: dict, rows_per_device: int, config: ml_collections.ConfigDict,
           mesh_shape: Mapping[str, int]) -> list[str]:
  """What would fit, for a program over the device's HBM (`result["hbm_capacity_bytes"]`).

  The largest per-device batch is a linear extrapolation from this one compile: fixed bytes
  (arguments, outputs, code) plus temporaries proportional to the rows.
  """
  program = REGISTRY.get(name)
  section = program.train_section if program else None
  if result.get("error"):
    key = program.batch_field if program else None
    return [f"{name} cannot run as configured: {result['error']}" + (f"; change {key}." if key else ".")]
  mem, capacity = result["memory"], result["hbm_capacity_bytes"]
  fixed = mem["peak_bytes"] - mem["temp_bytes"]
  per_row = mem["temp_bytes"] / max(rows_per_device, 1)
  largest = int((capacity - fixed) // per_row) if per_row > 0 else rows_per_device
  notes = []
  if not result["fits"]:
    notes.append(f"{name} does not fit: {mem['peak_bytes'] / GIB:.1f} GiB peak per device against "
                 f"{capacity / GIB:.1f} GiB of HBM ({rows_per_device} rows per device).")
    if section:
      train = config_field(config, section)
      accum = 1
      while accum < rows_per_device and rows_per_device // accum > max(largest, 0):
        accum *= 2
      notes.append(f"About {max(largest, 0)} rows per device would fit (temporaries linear in the rows); keep the "
                   f"global batch with --set {section}.grad_accum_steps={accum * int(train.grad_accum_steps)}"
                   + (f" or --set {section}.bf16=True." if not train.bf16 else "."))
    elif program:
      notes.append(f"About {max(largest, 0)} rows per device would fit: lower {program.batch_field}.")
  state = mem["argument_bytes"]
  if section and mesh_shape.get("fsdp", 1) == 1 and state > 0.25 * capacity:
    notes.append(f"Parameters and optimizer state take {state / GIB:.1f} GiB per device, replicated: shard them "
                 "over the data axis with parallel.mesh_shape fsdp > 1 (FSDP).")
  return notes


def dropout_advice(comparison: dict, num_steps: int) -> list[str]:
  """A note when another dropout-mask generator gives a shorter estimated train step than the config's."""
  own, best, gens = comparison["configured"], comparison["cheapest"], comparison["generators"]
  if best is None or best == own or gens[own].get("step_s") is None:
    return []
  saved = (gens[own]["step_s"] - gens[best]["step_s"]) * num_steps
  depth = comparison.get("layers")
  where = f" at {depth[0]}+{depth[1]} layers" if depth else ""
  return [f"train.dropout_rng={best} gives a shorter estimated train step than {own}{where} "
          f"({format_duration(gens[best]['step_s'], 4)} against {format_duration(gens[own]['step_s'], 4)}, "
          f"{format_duration(saved)} less over the budget at that depth): --set train.dropout_rng={best}."]


def tight_advice(programs: Mapping[str, dict], tight_fraction: float) -> list[str]:
  """A note for each program that fits with more than `tight_fraction` of the chip's HBM."""
  return [f"{name} is tight: {p['hbm_fraction']:.0%} of HBM; XLA and the runtime keep some HBM for themselves, so "
          "expect little headroom." for name, p in programs.items() if p["fits"] and p["hbm_fraction"] > tight_fraction]
