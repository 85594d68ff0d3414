"""Training FLOPs of the T5 encoder-decoder, counted from its shapes, and the device peak for an MFU.

Per example with S input and T target positions (the padded lengths the step computes), d = d_model,
a = num_heads * d_kv, f = d_ff, m = 2 weight matrices per feed-forward block (ReLU, v1.0) or 3 (gated
GELU, v1.1), V the vocabulary, L_e / L_d encoder / decoder layers, the forward pass's matmuls cost

  F = 2 * (S * P_enc + T * P_dec + S * P_cross_kv + T * d * V) + 4 * a * (L_e * S^2 + L_d * (T^2 + T * S))

  P_enc      = L_e * (4 * d * a + m * d * f)          encoder weights, applied to each input position
  P_dec      = L_d * (4 * d * a + 2 * d * a + m * d * f)   decoder self-attention, cross q/o and MLP
  P_cross_kv = L_d * 2 * d * a                        cross-attention keys/values of the encoder output

(a multiply-add is 2 FLOPs; the second term is attention scores and context, T x T causal scores
included whole, as the step computes them). A training step is forward + backward, 3 F per example:
the usual 6 x params x tokens, with each weight matrix counted on the positions it is applied to,
plus attention. Embedding lookups, norms, softmax, dropout and the optimizer are left out (no matmuls).
"""
from __future__ import annotations

from gensar_jax.model.t5 import T5Config


def forward_flops(cfg: T5Config, input_len: int, target_len: int) -> int:
  """Matmul FLOPs of one example's forward pass (formula in the module docstring)."""
  s, t, d, a, f, v = input_len, target_len, cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
  m = 2 if cfg.feed_forward == "relu" else 3
  le, ld = cfg.num_encoder_layers, cfg.num_decoder_layers
  p_enc = le * (4 * d * a + m * d * f)
  p_dec = ld * (6 * d * a + m * d * f)
  p_cross_kv = ld * 2 * d * a
  weights = 2 * (s * p_enc + t * p_dec + s * p_cross_kv + t * d * v)
  attention = 4 * a * (le * s * s + ld * (t * t + t * s))
  return weights + attention


def train_step_flops(cfg: T5Config, rows: int, input_len: int, target_len: int) -> int:
  """Matmul FLOPs of one training step over `rows` examples: 3 x forward (backward costs two forwards)."""
  return 3 * rows * forward_flops(cfg, input_len, target_len)


def device_peak_flops(device_kind: str) -> float | None:
  """Dense bf16 FLOP/s of one device from `gensar_jax.plan`'s chip tables, or None (CPUs, unknown chips)."""
  from gensar_jax.plan import CHIPS, GPUS
  if device_kind in CHIPS:
    return CHIPS[device_kind].peak_flops
  for name, (_, chip) in GPUS.items():
    if name in device_kind.lower():      # e.g. "NVIDIA H100 80GB HBM3"
      return chip.peak_flops
  return None
