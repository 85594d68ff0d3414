"""The train step under each dropout-mask generator (`train.dropout_rng`): which one a slice runs fastest."""
from __future__ import annotations

from typing import Mapping

import jax
import ml_collections

from gensar_jax.plan.analysis import compile_failure, error_result
from gensar_jax.plan.programs import Target, compile_train_step


def generator_summary(result: dict) -> dict:
  """The figures of one train-step compile that the dropout-generator comparison reports."""
  if result.get("roofline") is None:
    return {"error": result.get("error") or result.get("compile_error"), "fits": False}
  r = result["roofline"]
  return {"step_s": r["step_s"], "bound": r["bound"], "mfu": r["mfu"], "flops": result["flops"],
          "bytes_accessed": result["bytes_accessed"], "ici_traffic_bytes": result["ici_traffic_bytes"],
          "peak_bytes": result["memory"]["peak_bytes"], "fits": result["fits"],
          "compile_seconds": result.get("compile_seconds")}


def cheapest_generator(generators: Mapping[str, dict]) -> str | None:
  """The generator with the shortest estimated step among those that compiled and fit (ties: fewer FLOPs,
  the work the roofline's bound hides); None when none did."""
  ok = {g: s for g, s in generators.items() if s.get("step_s") is not None and s.get("fits")}
  return min(ok, key=lambda g: (ok[g]["step_s"], ok[g]["flops"])) if ok else None


def compare_dropout_rngs(target: Target, configured: dict, generators: tuple[str, ...], layers: int = 0) -> dict:
  """The train step under each dropout-mask generator (`train.dropout_rng`): {"configured", "layers",
  "generators": {name: generator_summary}, "cheapest"}. At the config's depth (`layers` 0; "layers": None)
  `configured` is the config's own train-step result (not recompiled); with `layers` > 0 every generator is
  compiled with that many encoder and decoder layers. A generator that cannot trace at these shapes (e.g. the hash's
  2**32-element limit) is reported with its error."""
  config = target.config
  own = str(target.train_cfg.get("dropout_rng", "threefry"))
  model_cfg = target.model_cfg
  out = {}
  if layers > 0:
    model_cfg = model_cfg.replace(num_encoder_layers=int(layers), num_decoder_layers=int(layers))
  else:
    out[own] = generator_summary(configured)
  for generator in dict.fromkeys((own, *generators)):
    if generator in out:
      continue
    train_cfg = ml_collections.ConfigDict(target.train_cfg.to_dict())
    train_cfg.dropout_rng = generator
    depth = f", {layers}+{layers} layers" if layers > 0 else ""
    try:
      result, _ = compile_train_step(f"train_step (dropout_rng={generator}{depth})", target, model_cfg, train_cfg,
                                     int(config.train.batch_size), int(config.tasks.max_input_len),
                                     int(config.tasks.max_target_len))
    except ValueError as e:
      result = error_result(str(e), target.chip)
    except jax.errors.JaxRuntimeError as e:
      result = compile_failure(e, target.chip, target.chip.tensorcores)
      if result is None:
        raise
    out[generator] = generator_summary(result)
  return {"configured": own, "layers": [int(layers), int(layers)] if layers > 0 else None,
          "generators": out, "cheapest": cheapest_generator(out)}
