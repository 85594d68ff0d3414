"""What a compiled program costs on one chip: per-device memory, FLOPs, bytes and collectives from the compiler,
the roofline time per call from the chip's figures, and the results of programs that did not compile."""
from __future__ import annotations

import re
from typing import Any, Callable

import jax

from gensar_jax.plan.chips import Chip
from gensar_jax.plan.hlo import count_while_loops, parse_collectives, term_breakdown


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):     # older jax: one dict per program
    cost = cost[0] if cost else {}
  return dict(cost or {})


def memory_figures(compiled) -> dict:
  """Per-device bytes: arguments, outputs, aliased (donated), temporaries, generated code and peak.

  peak = arguments + outputs - aliased + temporaries + generated code (what the device holds while
  the program runs).
  """
  m = compiled.memory_analysis()
  figures = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
             "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
             "code_bytes": int(m.generated_code_size_in_bytes)}
  figures["peak_bytes"] = (figures["argument_bytes"] + figures["output_bytes"] - figures["alias_bytes"]
                           + figures["temp_bytes"] + figures["code_bytes"])
  return figures


def roofline(flops: float, hbm_bytes: float, ici_bytes: float, chip: Chip) -> dict:
  """Step-time estimate of one device: max(FLOPs / peak, bytes / HBM bandwidth) + ICI traffic / ICI
  bandwidth (collectives assumed not overlapped with compute: a conservative choice)."""
  compute, memory = flops / chip.peak_flops, hbm_bytes / chip.hbm_bandwidth
  ici = ici_bytes / chip.ici_bandwidth
  seconds = max(compute, memory) + ici
  return {"compute_s": compute, "hbm_s": memory, "ici_s": ici, "step_s": seconds,
          "bound": "compute" if compute >= memory else "memory",
          "mfu": compute / seconds if seconds > 0 else 0.0}


def analyze(compiled, chip: Chip, num_devices: int, repeat: float = 1.0, per_chip: int = 1,
            fallback_cost: Callable[[], dict] | None = None) -> dict:
  """Memory, cost, collectives and roofline of one compiled program, per chip.

  num_devices: compile devices (TensorCores). repeat: how many times the program's while-loop body
  really runs (1 = no loop; XLA counts a body once); FLOPs, bytes and collective traffic are scaled
  by it. per_chip: compile devices per chip (2 on megacore chips: both cores' figures are summed).
  fallback_cost: per-device cost when the compiler gives none (XLA's GPU compiler): see `cpu_cost`.
  """
  hlo = compiled.as_text()
  cost = _cost(compiled)
  source = "XLA cost analysis of the compiled program"
  if "flops" not in cost and fallback_cost is not None:
    cost, source = fallback_cost(), ("XLA CPU cost analysis of the unoptimized global program / devices "
                                     "(no fusion: bytes are an upper bound)")
  collectives = parse_collectives(hlo, num_devices)
  flops = float(cost.get("flops", 0.0)) * repeat * per_chip
  hbm = float(cost.get("bytes accessed", 0.0)) * repeat * per_chip
  ici = sum(c["traffic_bytes"] for c in collectives) * repeat * per_chip
  memory = {k: v * per_chip for k, v in memory_figures(compiled).items()}
  breakdown = term_breakdown(hlo, repeat, getattr(compiled, "unoptimized_hlo", None), num_devices)
  for figures in breakdown.values():
    figures["bytes"] *= per_chip
    figures["flops"] *= per_chip
  return {"memory": memory, "breakdown": breakdown, "hbm_capacity_bytes": chip.hbm_bytes,
          "hbm_fraction": memory["peak_bytes"] / chip.hbm_bytes, "fits": memory["peak_bytes"] <= chip.hbm_bytes,
          "flops": flops, "bytes_accessed": hbm, "ici_traffic_bytes": ici, "collectives": collectives,
          "while_loops": count_while_loops(hlo), "loop_repeat": repeat, "cost_source": source,
          "xla_optimal_seconds": float(cost["optimal_seconds"]) * repeat if "optimal_seconds" in cost else None,
          "roofline": roofline(flops, hbm, ici, chip)}


def cpu_cost(lower_on: Callable[[Any], Any], num_devices: int) -> dict:
  """Per-device FLOPs and bytes of a program from XLA's CPU cost analysis of its unoptimized global
  HLO (lowered on one CPU device, nothing compiled), divided by the devices that share the work."""
  cpu = jax.devices("cpu")[0]
  cost = dict(lower_on(cpu).cost_analysis() or {})
  return {"flops": float(cost.get("flops", 0.0)) / num_devices,
          "bytes accessed": float(cost.get("bytes accessed", 0.0)) / num_devices}


def error_result(message: str, chip: Chip) -> dict:
  """A program that cannot be compiled as configured (not a memory misfit): no figures, does not fit."""
  return {"error": message, "memory": None, "hbm_capacity_bytes": chip.hbm_bytes, "hbm_fraction": None,
          "fits": False, "flops": None, "bytes_accessed": None, "ici_traffic_bytes": None, "collectives": [],
          "roofline": None}


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def compile_failure(error: Exception, chip: Chip, per_chip: int) -> dict | None:
  """A program the TPU compiler refused for lack of HBM -> a misfit result with the compiler's figures
  (required temporaries, usable HBM), per chip; None for any other compile error."""
  text = str(error)
  match = re.search(r"\(([\d.]+)([KMGT]?)\)\s+exceeds available HBM \(([\d.]+)([KMGT]?)\)", text)
  if "RESOURCE_EXHAUSTED" not in text or not match:
    return None
  required = float(match.group(1)) * _UNITS[match.group(2)] * per_chip
  available = float(match.group(3)) * _UNITS[match.group(4)] * per_chip
  memory = {"argument_bytes": 0, "output_bytes": 0, "alias_bytes": 0, "temp_bytes": int(required), "code_bytes": 0,
            "peak_bytes": int(required)}
  return {"memory": memory, "hbm_capacity_bytes": available, "hbm_fraction": required / available, "fits": False,
          "compile_error": text.strip().splitlines()[0][:400], "flops": None, "bytes_accessed": None,
          "ici_traffic_bytes": None, "collectives": [], "roofline": None}
