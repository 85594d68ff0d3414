"""T5 encoder-decoder in Flax Linen (v1.0 and v1.1 layouts) with a beam-friendly incremental decoder.

Layout (matches Hugging Face `T5ForConditionalGeneration` numerically):
- RMS layer norm (no mean subtraction, no bias), pre-norm residual blocks, no biases anywhere;
- attention scores are q.k without 1/sqrt(d_kv) scaling (folded into the initialisation);
- relative position buckets: one `[num_buckets, heads]` table per stack (encoder bidirectional,
  decoder causal), computed once and shared by every layer of that stack; cross-attention has none;
- v1.0: ReLU feed-forward, tied input/output embedding with logits scaled by d_model**-0.5;
  v1.1: gated-GELU (tanh approximation) feed-forward and an untied, unscaled `lm_head`.

Every parameter carries logical axis names ("vocab", "embed", "heads", "kv", "mlp",
"relpos_buckets"); activations are constrained with ("batch", "length", "embed"/"heads"/"mlp"/"vocab")
so the rules in `gensar_jax.parallel` decide the sharding. Parameters are float32; `dtype` sets the
compute dtype (softmax, layer-norm statistics and logits stay float32).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gensar_jax.config_schema import ABSENT, Field, Section, between, boolean, one_of, positive, text, whole_at_least
from gensar_jax.model import fused_attention
from gensar_jax.model.hash_dropout import hash_keep_mask  # noqa: F401 -- the dense masks, named here too

Array = jax.Array
SelfCache = tuple  # per decoder layer: {"k": [B, K, max_len, H, d_kv], "v": same}
CrossKV = tuple  # per decoder layer: (k, v), each [B, S, H, d_kv]


DROPOUT_RNGS = ("threefry", "hash")
ATTENTIONS = ("dense", "fused")


class Dropout(nn.Dropout):
  """flax `nn.Dropout` with a choice of mask generator (`T5Config.dropout_rng`). Named like flax's, so the
  "threefry" masks (keys from the module path) are the ones `nn.Dropout` draws."""
  rng_impl: str = "threefry"

  def __call__(self, inputs: Array, deterministic: bool | None = None, rng: Array | None = None) -> Array:
    if self.rng_impl == "threefry":
      return super().__call__(inputs, deterministic=deterministic, rng=rng)
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep = hash_keep_mask(self.make_rng(self.rng_collection) if rng is None else rng, inputs.shape, self.rate)
    return jax.lax.select(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs))

  def hash_seeds(self) -> Array:
    """int32[2]: the seeds `hash_keep_mask` would draw for this module's next mask (fused attention
    draws the same masks inside its kernel)."""
    return fused_attention.dropout_seeds(self.make_rng(self.rng_collection))


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int
  d_model: int = 512
  num_heads: int = 8
  d_kv: int = 64
  d_ff: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  # Where dropout masks come from: "threefry" (flax nn.Dropout: jax.random.bernoulli, one threefry hash per
  # element) or "hash" (`hash_keep_mask`: two murmur3 finalizer rounds of the element index, several times
  # cheaper on CPU). Both keep each element with probability 1 - dropout_rate; the masks differ.
  dropout_rng: str = "threefry"
  # Encoder self-attention and cross-attention: "dense" (scores and probabilities as arrays, the reference)
  # or "fused" (`fused_attention`: one kernel per head and example keeps them on chip; its dropout masks
  # are the "hash" masks, so it needs dropout_rng="hash" when dropout is on).
  attention: str = "dense"
  layer_norm_epsilon: float = 1e-6
  feed_forward: str = "relu"  # "relu" (T5 v1.0) or "gated-gelu" (v1.1)
  tie_word_embeddings: bool = True  # v1.0: tied + logits scaled by d_model**-0.5; v1.1: untied lm_head
  dtype: str = "float32"  # compute dtype; parameters stay float32
  pad_id: int = 0
  eos_id: int = 1
  decoder_start_id: int = 0

  def __post_init__(self):
    if self.feed_forward not in ("relu", "gated-gelu"):
      raise ValueError(f"T5Config.feed_forward: expected 'relu' or 'gated-gelu', got {self.feed_forward!r}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"T5Config.dtype: expected 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.dropout_rng not in DROPOUT_RNGS:
      raise ValueError(f"T5Config.dropout_rng: expected one of {DROPOUT_RNGS}, got {self.dropout_rng!r}")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"T5Config.attention: expected one of {ATTENTIONS}, got {self.attention!r}")
    if self.vocab_size <= 0:
      raise ValueError(f"T5Config.vocab_size must be positive, got {self.vocab_size}")

  @classmethod
  def tiny(cls, vocab_size: int, **overrides) -> "T5Config":
    """A 2+2 layer, d_model 32 model for tests."""
    base = dict(vocab_size=vocab_size, d_model=32, num_heads=4, d_kv=8, d_ff=64, num_encoder_layers=2,
                num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=20)
    return cls(**{**base, **overrides})

  @classmethod
  def small(cls, vocab_size: int, **overrides) -> "T5Config":
    """The t5-small shape (60M parameters at its 32128-token vocabulary)."""
    return cls(**{"vocab_size": vocab_size, **overrides})

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)


PRESETS = ("small", "tiny")     # T5Config.small (t5-small shape, the paper's backbone), T5Config.tiny (tests)
# Added token rows of a pretrained checkpoint (`hf_import.resize_vocab`).
NEW_TOKEN_INITS = ("torch_default", "mean_resizing")
SHAPE_FIELDS = ("d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "num_decoder_layers",
                "relative_attention_num_buckets", "relative_attention_max_distance")

# The `model` section (`t5_config_from_section`, `hf_import.build_model`), read by the doc2query and train stages.
MODEL_SCHEMA = Section(dict(
    preset=Field("small", one_of(*PRESETS)),
    feed_forward=Field("relu", one_of("relu", "gated-gelu")),   # "relu" (T5 v1.0) or "gated-gelu" (v1.1)
    tie_word_embeddings=Field(True, boolean()),
    dropout_rate=Field(0.1, between(0.0, 1.0)),
    # compute dtype; train.bf16=True switches training to bfloat16
    dtype=Field("float32", one_of("float32", "bfloat16")),
    # "dense" or "fused" (T5Config.attention): the same attention, the fused kernel without probabilities in HBM.
    attention=Field("dense", one_of(*ATTENTIONS), unrecorded="dense"),
    # A Hugging Face T5 checkpoint directory (config.json + model.safetensors or pytorch_model.bin) to start
    # from; "" trains from a random initialisation. Its shape overrides preset/feed_forward/tie_word_embeddings.
    pretrained_dir=Field("", text()),
    # Added token rows of a pretrained checkpoint (hf_import.resize_vocab): "torch_default" as the reference's
    # transformers 4.45.2 (embedding N(0, 1), untied head U(+-1/sqrt(d_model))) | "mean_resizing" (later releases).
    new_token_init=Field("torch_default", one_of(*NEW_TOKEN_INITS)),
    # `</s>` closes every encoder input, as the reference's HF T5 tokenizer appends it (kept under truncation).
    input_eos=Field(True, boolean()),
    # Shape overrides on top of the preset, e.g. {"d_model": 128, "num_encoder_layers": 2} (CPU budgets).
    shape=Section({**{name: Field(ABSENT, whole_at_least(1)) for name in SHAPE_FIELDS},
                   "layer_norm_epsilon": Field(ABSENT, positive())}),
))


def model_config() -> ml_collections.ConfigDict:
  """Defaults of the `model` section."""
  return MODEL_SCHEMA.defaults()


def t5_config_from_section(section: ml_collections.ConfigDict, vocab_size: int) -> T5Config:
  """`T5Config` for a `model` config section and the tokenizer's vocabulary size."""
  preset = {"small": T5Config.small, "tiny": T5Config.tiny}[section.preset]
  shape = section.shape.to_dict() if "shape" in section else {}
  return preset(vocab_size, feed_forward=section.feed_forward,
                                 tie_word_embeddings=bool(section.tie_word_embeddings),
                                 dropout_rate=float(section.dropout_rate), dtype=section.dtype,
                                 attention=str(section.get("attention", "dense")), **shape)


# --------------------------------------------------------------------------------------------------
# Relative position buckets (numpy: positions are static, so tables are built at trace time)
# --------------------------------------------------------------------------------------------------

def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """T5 bucket of `key_position - query_position`: int32 array of the same shape.

  Half the buckets are exact offsets, the rest grow logarithmically up to `max_distance`; in the
  bidirectional case the upper half of the buckets holds positive offsets. Float32 arithmetic, as in
  the reference implementation, so boundaries fall on the same buckets.
  """
  relative_position = np.asarray(relative_position, np.int64)
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
  else:
    distance = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  safe = np.maximum(distance, max_exact).astype(np.float32)
  log_ratio = np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * np.float32(num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return (buckets + np.where(is_small, distance, large)).astype(np.int32)


def _bias_from_table(table: Array, buckets) -> Array:
  """table: [num_buckets, H], buckets: int[...,] -> [H, ...]."""
  bias = jnp.take(table, buckets, axis=0)
  return jnp.moveaxis(bias, -1, 0)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------

def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def _param(module: nn.Module, name: str, init, shape: Sequence[int], axes: Sequence[str | None]):
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), jnp.float32)


def _constrain(x: Array, axes: Sequence[str | None]) -> Array:
  return nn.with_logical_constraint(x, tuple(axes))


class RMSNorm(nn.Module):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, statistics in float32."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (self.config.d_model,), ("embed",))
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = x32 * jax.lax.rsqrt(variance + self.config.layer_norm_epsilon)
    return (normed * scale).astype(self.config.compute_dtype)


class Attention(nn.Module):
  """Multi-head attention projections; q/k/v: [D, H, d_kv], o: [H, d_kv, D]."""
  config: T5Config

  def setup(self):
    cfg = self.config
    d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv
    self.q = _param(self, "q", _normal((d * k) ** -0.5), (d, h, k), ("embed", "heads", "kv"))
    self.k = _param(self, "k", _normal(d ** -0.5), (d, h, k), ("embed", "heads", "kv"))
    self.v = _param(self, "v", _normal(d ** -0.5), (d, h, k), ("embed", "heads", "kv"))
    self.o = _param(self, "o", _normal((h * k) ** -0.5), (h, k, d), ("heads", "kv", "embed"))
    self.dropout = Dropout(cfg.dropout_rate, rng_impl=cfg.dropout_rng)

  def project(self, x: Array, kernel: Array) -> Array:
    dtype = self.config.compute_dtype
    return jnp.einsum("...d,dhk->...hk", x.astype(dtype), kernel.astype(dtype))

  def key_value(self, x: Array) -> tuple[Array, Array]:
    """x: [B, S, D] -> (k, v), each [B, S, H, d_kv]."""
    k = _constrain(self.project(x, self.k), ("batch", "length", "heads", "kv"))
    v = _constrain(self.project(x, self.v), ("batch", "length", "heads", "kv"))
    return k, v

  def query(self, x: Array) -> Array:
    return self.project(x, self.q)

  def output(self, context: Array) -> Array:
    dtype = self.config.compute_dtype
    return jnp.einsum("...hk,hkd->...d", context.astype(dtype), self.o.astype(dtype))

  def attend(self, query_input: Array, key: Array, value: Array, mask: Array | None, bias: Array | None,
             deterministic: bool) -> Array:
    """Full attention. query_input: [B, T, D]; key/value: [B, S, H, d_kv]; mask: bool broadcastable to
    [B, H, T, S]; bias: [H, T, S] or None -> [B, T, D]."""
    q = _constrain(self.query(query_input), ("batch", "length", "heads", "kv"))
    scores = jnp.einsum("bthk,bshk->bhts", q, key).astype(jnp.float32)
    if bias is not None:
      scores = scores + bias[None].astype(jnp.float32)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = self.dropout(weights, deterministic=deterministic).astype(self.config.compute_dtype)
    context = jnp.einsum("bhts,bshk->bthk", weights, value.astype(self.config.compute_dtype))
    return _constrain(self.output(context), ("batch", "length", "embed"))

  def attend_step(self, query_input: Array, key: Array, value: Array, mask: Array, bias: Array | None) -> Array:
    """One decoder position for K hypotheses (no dropout). query_input: [B, K, D]; key/value: [B, K, L, H, d_kv]
    (one per hypothesis: the self-attention cache) or [B, L, H, d_kv] (shared by the hypotheses: the encoder's
    for cross-attention); mask: bool broadcastable to [B, K, H, L]; bias: [H, L] or None -> [B, K, D]."""
    dtype = self.config.compute_dtype
    keys = "bjlhd" if key.ndim == 5 else "blhd"
    scores = jnp.einsum(f"bjhd,{keys}->bjhl", self.query(query_input), key.astype(dtype)).astype(jnp.float32)
    if bias is not None:
      scores = scores + bias[None, None].astype(jnp.float32)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return self.output(jnp.einsum(f"bjhl,{keys}->bjhd", weights, value.astype(dtype)))

  def __call__(self, query_input: Array, key_input: Array, mask: Array | None, bias: Array | None,
               deterministic: bool) -> Array:
    key, value = self.key_value(key_input)
    return self.attend(query_input, key, value, mask, bias, deterministic)

  def attend_keys(self, query_input: Array, key_input: Array, key_mask: Array, bias: Array | None,
                  deterministic: bool) -> Array:
    """Attention under a key padding mask, dense or fused (`T5Config.attention`). query_input: [B, T, D];
    key_input: [B, S, D]; key_mask: bool[B, S]; bias: [H, T, S] or None -> [B, T, D]."""
    cfg = self.config
    if cfg.attention == "dense":
      return self(query_input, key_input, key_mask[:, None, None, :], bias, deterministic)
    dtype = cfg.compute_dtype
    heads_first = ("batch", "heads", "length", "kv")

    def project(x, kernel):
      return _constrain(jnp.einsum("bsd,dhk->bhsk", x.astype(dtype), kernel.astype(dtype)), heads_first)

    rate = 0.0 if deterministic else cfg.dropout_rate
    if rate and cfg.dropout_rng != "hash":
      raise ValueError("model.attention='fused' draws counter-hash dropout masks: set train.dropout_rng='hash' "
                       f"(T5Config.dropout_rng is {cfg.dropout_rng!r}) or model.dropout_rate=0")
    batch_axes, head_axis = nn.logical_to_mesh_axes(("batch", "heads"))
    context = fused_attention.fused_attention(
        project(query_input, self.q), project(key_input, self.k), project(key_input, self.v), bias, key_mask,
        rate, self.dropout.hash_seeds() if rate else None, batch_axes=batch_axes, head_axis=head_axis)
    out = jnp.einsum("bhtk,hkd->btd", context, self.o.astype(dtype))
    return _constrain(out, ("batch", "length", "embed"))


class FeedForward(nn.Module):
  """ReLU (v1.0) or gated-GELU (v1.1) MLP without biases."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    d, f = cfg.d_model, cfg.d_ff
    x = x.astype(dtype)
    if cfg.feed_forward == "relu":
      wi = _param(self, "wi", _normal(d ** -0.5), (d, f), ("embed", "mlp"))
      hidden = jax.nn.relu(x @ wi.astype(dtype))
    else:
      wi_0 = _param(self, "wi_0", _normal(d ** -0.5), (d, f), ("embed", "mlp"))
      wi_1 = _param(self, "wi_1", _normal(d ** -0.5), (d, f), ("embed", "mlp"))
      hidden = jax.nn.gelu(x @ wi_0.astype(dtype), approximate=True) * (x @ wi_1.astype(dtype))
    hidden = _constrain(hidden, ("batch", "length", "mlp"))
    hidden = Dropout(cfg.dropout_rate, rng_impl=cfg.dropout_rng)(hidden, deterministic=deterministic)
    wo = _param(self, "wo", _normal(f ** -0.5), (f, d), ("mlp", "embed"))
    return _constrain(hidden @ wo.astype(dtype), ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array, deterministic: bool) -> Array:
    """x: [B, S, D]; mask: bool[B, S] (True = real token); bias: [H, S, S] -> [B, S, D]."""
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate, rng_impl=cfg.dropout_rng)
    h = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
    h = Attention(cfg, name="attention").attend_keys(h, h, mask, bias, deterministic)
    x = x + dropout(h, deterministic=deterministic)
    h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    h = FeedForward(cfg, name="mlp")(h, deterministic)
    return x + dropout(h, deterministic=deterministic)


class DecoderLayer(nn.Module):
  """Self-attention (causal, relative bias), cross-attention, MLP; full-sequence and one-step paths."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.pre_self_attention_layer_norm = RMSNorm(cfg)
    self.self_attention = Attention(cfg)
    self.pre_cross_attention_layer_norm = RMSNorm(cfg)
    self.encoder_decoder_attention = Attention(cfg)
    self.pre_mlp_layer_norm = RMSNorm(cfg)
    self.mlp = FeedForward(cfg)
    self.dropout = Dropout(cfg.dropout_rate, rng_impl=cfg.dropout_rng)

  def __call__(self, x: Array, encoded: Array, self_mask: Array, cross_mask: Array, self_bias: Array,
               deterministic: bool) -> Array:
    """x: [B, T, D]; encoded: [B, S, D]; self_mask: bool broadcastable to [B, H, T, T]; cross_mask:
    bool[B, S]; self_bias: [H, T, T] -> [B, T, D]."""
    h = self.pre_self_attention_layer_norm(x)
    h = self.self_attention(h, h, self_mask, self_bias, deterministic)
    x = x + self.dropout(h, deterministic=deterministic)
    h = self.pre_cross_attention_layer_norm(x)
    h = self.encoder_decoder_attention.attend_keys(h, encoded, cross_mask, None, deterministic)
    x = x + self.dropout(h, deterministic=deterministic)
    h = self.pre_mlp_layer_norm(x)
    h = self.mlp(h, deterministic)
    return x + self.dropout(h, deterministic=deterministic)

  def cross_key_value(self, encoded: Array) -> tuple[Array, Array]:
    return self.encoder_decoder_attention.key_value(encoded)

  def step(self, x: Array, cross_k: Array, cross_v: Array, cross_mask: Array, cache: dict, step: Array,
           self_bias: Array) -> tuple[Array, dict]:
    """One position for K hypotheses. x: [B, K, D]; cross_k/v: [B, S, H, d_kv] (shared by the K
    hypotheses); cross_mask: bool[B, S]; cache k/v: [B, K, L, H, d_kv]; self_bias: [H, L] (keys beyond
    `step` are masked here)."""
    h = self.pre_self_attention_layer_norm(x)
    attn = self.self_attention
    k, v = attn.project(h, attn.k), attn.project(h, attn.v)  # [B, K, H, d_kv]
    cache_k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k[:, :, None].astype(cache["k"].dtype), step, 2)
    cache_v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v[:, :, None].astype(cache["v"].dtype), step, 2)
    visible = jnp.arange(cache_k.shape[2]) <= step
    x = x + attn.attend_step(h, cache_k, cache_v, visible, self_bias)

    h = self.pre_cross_attention_layer_norm(x)
    x = x + self.encoder_decoder_attention.attend_step(h, cross_k, cross_v, cross_mask[:, None, None, :], None)

    h = self.pre_mlp_layer_norm(x)
    x = x + self.mlp(h, True)
    return x, {"k": cache_k, "v": cache_v}


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, mask: Array, deterministic: bool) -> Array:
    """embedded: [B, S, D]; mask: bool[B, S] (True = real token) -> [B, S, D]."""
    cfg = self.config
    table = _param(self, "relative_attention_bias", _normal(cfg.d_model ** -0.5),
                   (cfg.relative_attention_num_buckets, cfg.num_heads), ("relpos_buckets", "heads"))
    length = embedded.shape[1]
    positions = np.arange(length)
    buckets = relative_position_bucket(positions[None, :] - positions[:, None], True,
                                       cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
    bias = _bias_from_table(table, buckets)  # [H, S, S]
    x = Dropout(cfg.dropout_rate, rng_impl=cfg.dropout_rng)(embedded, deterministic=deterministic)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, mask, bias, deterministic)
    x = RMSNorm(cfg, name="final_layer_norm")(x)
    return Dropout(cfg.dropout_rate, rng_impl=cfg.dropout_rng)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config

  def setup(self):
    cfg = self.config
    self.relative_attention_bias = _param(self, "relative_attention_bias", _normal(cfg.d_model ** -0.5),
                                          (cfg.relative_attention_num_buckets, cfg.num_heads),
                                          ("relpos_buckets", "heads"))
    self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers)]
    self.final_layer_norm = RMSNorm(cfg)
    self.dropout = Dropout(cfg.dropout_rate, rng_impl=cfg.dropout_rng)

  def _buckets(self, relative_position: np.ndarray) -> np.ndarray:
    cfg = self.config
    return relative_position_bucket(relative_position, False, cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance)

  def __call__(self, embedded: Array, encoded: Array, encoder_mask: Array, deterministic: bool) -> Array:
    """Teacher forcing. embedded: [B, T, D]; encoded: [B, S, D]; encoder_mask: bool[B, S] -> [B, T, D]."""
    length = embedded.shape[1]
    positions = np.arange(length)
    bias = _bias_from_table(self.relative_attention_bias, self._buckets(positions[None, :] - positions[:, None]))
    causal = jnp.asarray(positions[None, :] <= positions[:, None])[None, None]  # [1, 1, T, T]
    x = self.dropout(embedded, deterministic=deterministic)
    for layer in self.layers:
      x = layer(x, encoded, causal, encoder_mask, bias, deterministic)
    x = self.final_layer_norm(x)
    return self.dropout(x, deterministic=deterministic)

  def cross_key_values(self, encoded: Array) -> CrossKV:
    return tuple(layer.cross_key_value(encoded) for layer in self.layers)

  def step(self, embedded: Array, cross_kv: CrossKV, encoder_mask: Array, step: Array,
           cache: SelfCache) -> tuple[Array, SelfCache]:
    """embedded: [B, K, D] at position `step` -> ([B, K, D], new cache)."""
    max_len = cache[0]["k"].shape[2]
    # Bucket of (key - query) for query `step` and keys 0..max_len-1, from a static table over offsets.
    offsets = np.arange(-(max_len - 1), max_len)
    table = jnp.asarray(self._buckets(offsets))
    buckets = jnp.take(table, jnp.arange(max_len) - step + (max_len - 1))
    bias = _bias_from_table(self.relative_attention_bias, buckets)  # [H, L]
    x = embedded
    new_cache = []
    for layer, (cross_k, cross_v), layer_cache in zip(self.layers, cross_kv, cache):
      x, updated = layer.step(x, cross_k, cross_v, encoder_mask, layer_cache, step, bias)
      new_cache.append(updated)
    return self.final_layer_norm(x), tuple(new_cache)


class T5(nn.Module):
  """T5 encoder-decoder. Apply with `T5(cfg).apply({"params": params}, ..., method=T5.<method>)`."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = _param(self, "token_embedder", _normal(1.0), (cfg.vocab_size, cfg.d_model),
                                 ("vocab", "embed"))
    if not cfg.tie_word_embeddings:
      self.lm_head = _param(self, "lm_head", _normal(1.0), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)

  def _embed(self, tokens: Array) -> Array:
    # Gather the (vocab/fsdp-sharded) table once, then look up: a sharded-operand gather would
    # otherwise be resolved by replicating its output.
    table = _constrain(self.token_embedder, (None, None))
    return jnp.take(table, tokens, axis=0).astype(self.config.compute_dtype)

  def _logits(self, hidden: Array) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    if cfg.tie_word_embeddings:
      hidden = hidden * (cfg.d_model ** -0.5)
      logits = jnp.einsum("...d,vd->...v", hidden.astype(dtype), self.token_embedder.astype(dtype))
    else:
      logits = jnp.einsum("...d,dv->...v", hidden.astype(dtype), self.lm_head.astype(dtype))
    return logits.astype(jnp.float32)

  def encode(self, encoder_input_tokens: Array, deterministic: bool = True) -> Array:
    """encoder_input_tokens: int32[B, S] (pad masked) -> [B, S, D]."""
    tokens = _constrain(encoder_input_tokens, ("batch", "length"))
    embedded = _constrain(self._embed(tokens), ("batch", "length", "embed"))
    return self.encoder(embedded, tokens != self.config.pad_id, deterministic)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             deterministic: bool = True) -> Array:
    """Teacher-forced decoder: [B, S, D], int32[B, S], int32[B, T] -> float32[B, T, V]."""
    return self.logits(self.decode_hidden(encoded, encoder_input_tokens, decoder_input_tokens, deterministic))

  def decode_hidden(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
                    deterministic: bool = True) -> Array:
    """Teacher-forced decoder's final hidden states: [B, S, D], int32[B, S], int32[B, T] -> [B, T, D]."""
    embedded = _constrain(self._embed(decoder_input_tokens), ("batch", "length", "embed"))
    return self.decoder(embedded, encoded, encoder_input_tokens != self.config.pad_id, deterministic)

  def logits(self, hidden: Array) -> Array:
    """The output layer: hidden [B, T, D] -> float32 logits [B, T, V]."""
    return _constrain(self._logits(hidden), ("batch", "length", "vocab"))

  def hidden(self, encoder_input_tokens: Array, decoder_input_tokens: Array, deterministic: bool = True) -> Array:
    """Teacher forcing up to the output layer: int32[B, S], int32[B, T] -> [B, T, D]."""
    encoded = self.encode(encoder_input_tokens, deterministic)
    return self.decode_hidden(encoded, encoder_input_tokens, decoder_input_tokens, deterministic)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               deterministic: bool = True) -> Array:
    """Teacher forcing: int32[B, S], int32[B, T] -> logits float32[B, T, V]."""
    encoded = self.encode(encoder_input_tokens, deterministic)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, deterministic)

  def precompute_cross_kv(self, encoded: Array) -> CrossKV:
    """encoded: [B, S, D] -> per decoder layer (k, v), each [B, S, H, d_kv]."""
    return self.decoder.cross_key_values(encoded)

  def decode_step(self, cross_kv: CrossKV, encoder_mask: Array, tokens: Array, step: Array,
                  self_cache: SelfCache) -> tuple[Array, SelfCache]:
    """One decoder position for K hypotheses per example.

    cross_kv: from `precompute_cross_kv` (shared by the K hypotheses, not tiled); encoder_mask:
    bool[B, S]; tokens: int32[B, K] at position `step` (int32 scalar); self_cache: from
    `init_decoder_cache` -> (logits float32[B, K, V], new self_cache with k/v written at `step`).
    """
    embedded = self._embed(tokens)
    hidden, new_cache = self.decoder.step(embedded, cross_kv, encoder_mask, jnp.asarray(step, jnp.int32),
                                          self_cache)
    return self._logits(hidden), new_cache


def init_decoder_cache(config: T5Config, batch: int, num_hyps: int, max_len: int,
                       dtype: Any = jnp.float32) -> SelfCache:
  """Zeroed self-attention cache: per decoder layer {"k": [B, K, max_len, H, d_kv], "v": same}."""
  shape = (batch, num_hyps, max_len, config.num_heads, config.d_kv)
  return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
               for _ in range(config.num_decoder_layers))


def init_params(config: T5Config, rng: Array, encoder_length: int = 8, decoder_length: int = 4) -> dict:
  """Fresh float32 parameters (unboxed), initialised like Hugging Face's T5 (initializer_factor 1)."""
  variables = _init_variables(config, rng, encoder_length, decoder_length)
  return nn.meta.unbox(variables["params"])


def param_logical_axes(config: T5Config) -> dict:
  """Pytree of `PartitionSpec`s of logical axis names, same structure as `init_params`."""
  variables = jax.eval_shape(lambda: _init_variables(config, jax.random.key(0), 2, 2))
  return nn.get_partition_spec(variables)["params"]


def _init_variables(config: T5Config, rng: Array, encoder_length: int, decoder_length: int) -> dict:
  encoder_tokens = jnp.ones((1, encoder_length), jnp.int32)
  decoder_tokens = jnp.zeros((1, decoder_length), jnp.int32)
  return T5(config).init({"params": rng}, encoder_tokens, decoder_tokens, True)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
