"""Training FLOPs of the T5 step (`train/flops.py`) against the program itself, and the device peaks for MFU."""
import types

import jax
import numpy as np
import pytest
from jax.extend import core as jax_core

from gensar_jax import parallel
from gensar_jax.model.t5 import T5Config
from gensar_jax.train import state as state_lib
from gensar_jax.train import step as step_lib
from gensar_jax.train.flops import device_peak_flops, forward_flops, train_step_flops
from gensar_jax.train.loop import peak_flops_per_second


def _dot_flops(jaxpr, repeat: int = 1) -> int:
  """2 x (output elements) x (contracted size) summed over every dot_general of `jaxpr`, inner jaxprs
  included (a scan's body `length` times)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += repeat * 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contract]))
    times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        inner = getattr(sub, "jaxpr", sub)
        if isinstance(inner, jax_core.Jaxpr):
          total += _dot_flops(inner, repeat * times)
  return total


def _step_and_state(cfg: T5Config, grad_accum_steps: int = 1):
  train_cfg = state_lib.train_config()
  train_cfg.grad_accum_steps = grad_accum_steps
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "model": 1}, jax.devices()[:1])
  rules = parallel.rules_tuple(parallel.parallel_config().logical_axis_rules)
  optimizer = state_lib.make_optimizer(train_cfg)
  shardings = state_lib.state_shardings(cfg, optimizer, mesh, rules)
  step = step_lib.make_train_step(cfg, train_cfg, optimizer, mesh, rules, shardings)
  state, _ = state_lib.create_train_state(cfg, optimizer, mesh, rules, jax.random.key(0))
  return step, state, mesh, rules


def _batch(rows: int, input_len: int, target_len: int) -> dict:
  ones = lambda length: np.ones((rows, length), np.int32)   # noqa: E731
  return {"encoder_input_tokens": ones(input_len), "decoder_input_tokens": ones(target_len),
          "decoder_target_tokens": ones(target_len), "decoder_loss_weights": ones(target_len).astype(np.float32)}


@pytest.mark.parametrize("feed_forward,tied,accum", [("relu", True, 1), ("gated-gelu", False, 2)])
def test_formula_equals_every_matmul_of_the_train_step(feed_forward, tied, accum):
  """Brute force: every dot_general in the jitted step's program (forward, backward, optimizer; the
  micro-batch scan counted per iteration) adds up to the formula exactly."""
  cfg = T5Config.tiny(96, feed_forward=feed_forward, tie_word_embeddings=tied, num_decoder_layers=3)
  step, state, mesh, rules = _step_and_state(cfg, accum)
  rows, input_len, target_len = 4, 12, 5
  with parallel.mesh_and_rules(mesh, rules):
    jaxpr = jax.make_jaxpr(step.jitted)(state, _batch(rows, input_len, target_len))
  assert _dot_flops(jaxpr.jaxpr) == train_step_flops(cfg, rows, input_len, target_len)


def test_formula_against_xla_cost_analysis():
  """XLA's CPU cost analysis counts elementwise work too, so it is at least the matmul count and, for a
  model whose matmuls dominate (d_model 128, 64 input positions), within 10% of it."""
  cfg = T5Config.tiny(1024, d_model=128, num_heads=4, d_kv=32, d_ff=512, dropout_rate=0.0)
  step, state, mesh, rules = _step_and_state(cfg)
  rows, input_len, target_len = 8, 64, 8
  with parallel.mesh_and_rules(mesh, rules):
    compiled = step.jitted.lower(state, _batch(rows, input_len, target_len)).compile()
  ratio = compiled.cost_analysis()["flops"] / train_step_flops(cfg, rows, input_len, target_len)
  assert 1.0 <= ratio <= 1.10, ratio


def test_t5_small_is_six_times_params_times_tokens_plus_attention():
  """The t5-small shape at 512 input and 64 target positions: the weight term is 6 x (encoder weights x
  input positions + decoder weights x target positions + cross k/v x input positions + output layer)."""
  cfg = T5Config.small(32128)
  d, a, f, v = 512, 512, 2048, 32128
  encoder_weights = 6 * (4 * d * a + 2 * d * f)
  decoder_weights = 6 * (6 * d * a + 2 * d * f)
  cross_kv = 6 * 2 * d * a
  weights = 6 * (512 * encoder_weights + 64 * decoder_weights + 512 * cross_kv + 64 * d * v)
  attention = 3 * 4 * a * 6 * (512 ** 2 + 64 ** 2 + 64 * 512)
  assert train_step_flops(cfg, 1, 512, 64) == weights + attention == 3 * forward_flops(cfg, 512, 64)


def test_device_peaks():
  assert device_peak_flops("TPU v5 lite") == 197e12
  assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert device_peak_flops("cpu") is None
  devices = [types.SimpleNamespace(device_kind="TPU v5 lite")] * 8
  assert peak_flops_per_second(devices) == 8 * 197e12
  assert peak_flops_per_second([types.SimpleNamespace(device_kind="cpu")]) is None
