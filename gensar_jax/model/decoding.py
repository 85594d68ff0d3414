"""T5 bound for the decoders of `gensar_jax.decode`, which know no model class.

The decoders (`decode.beam_search`, `decode.sampling`) take a `tokens_to_logits(tokens, position, cache)`
function and its cache, as flax's and t5x's decoders do. `T5Decoding` makes them for a T5: the encoder and
the cross-attention keys/values run once per input (`encode`) and are shared by its hypotheses; each call
of `tokens_to_logits` runs one decoder position with a self-attention KV cache. It is a frozen dataclass, so
it can be a static argument of the jitted decoding programs.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp

from gensar_jax.decode import TokensToLogits
from gensar_jax.model.t5 import T5, CrossKV, SelfCache, T5Config, init_decoder_cache


@flax.struct.dataclass
class T5Encoded:
  """What the decoder reads of one batch of inputs: cross_kv per decoder layer (k, v), each [B, S, H, d_kv];
  encoder_mask bool[B, S] (True = real token)."""
  cross_kv: CrossKV
  encoder_mask: jax.Array


@dataclasses.dataclass(frozen=True)
class T5Decoding:
  """A T5 as the decoders see it: token ids, the encoder pass, the cache and `tokens_to_logits`.

  Decoding runs dense attention whatever `config.attention` says: the fused kernel's gain is the
  probabilities a training step keeps for its backward pass, which one encoder pass per batch does not
  keep, and the decoding programs are partitioned by XLA's SPMD partitioner, which cannot split a Pallas
  call (the train step runs the kernel per device under `shard_map`, on the mesh the stage sets)."""
  config: T5Config

  def __post_init__(self):
    if self.config.attention != "dense":
      object.__setattr__(self, "config", self.config.replace(attention="dense"))

  @property
  def start_id(self) -> int:
    return self.config.decoder_start_id

  @property
  def pad_id(self) -> int:
    return self.config.pad_id

  @property
  def eos_id(self) -> int:
    return self.config.eos_id

  def encode(self, params, encoder_tokens: jax.Array) -> T5Encoded:
    """encoder_tokens int32[B, S] (padded with `pad_id`) -> the encoder outputs the decoder attends to."""
    apply = functools.partial(T5(self.config).apply, {"params": params})
    encoded = apply(encoder_tokens, method=T5.encode)
    return T5Encoded(cross_kv=apply(encoded, method=T5.precompute_cross_kv),
                     encoder_mask=encoder_tokens != self.config.pad_id)

  def init_cache(self, batch: int, num_hyps: int, max_len: int) -> SelfCache:
    """Zeroed self-attention cache for `num_hyps` hypotheses per input (axis 1 of every leaf) and `max_len`
    positions, in the compute dtype."""
    return init_decoder_cache(self.config, batch, num_hyps, max_len, dtype=self.config.compute_dtype)

  def tokens_to_logits(self, params, encoded: T5Encoded) -> TokensToLogits:
    """The decoder on `encoded`: tokens int32[B, K] at `position`, cache -> (logits float32[B, K, V], cache)."""
    model = T5(self.config)

    def tokens_to_logits(tokens, position, cache):
      return model.apply({"params": params}, encoded.cross_kv, encoded.encoder_mask, tokens,
                         jnp.asarray(position, jnp.int32), cache, method=T5.decode_step)
    return tokens_to_logits
