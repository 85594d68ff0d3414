"""Hugging Face T5 checkpoints -> our Flax parameters; vocabulary growth for the added tokens.

A checkpoint directory holds `config.json` and `model.safetensors` (read with `safetensors`, no
torch) or `pytorch_model.bin` (needs torch). `params_from_hf_state_dict` is the pure converter that
the parity tests use on a randomly initialised `transformers.T5ForConditionalGeneration`.

HF layout -> ours (Linear weights are stored [out, in] in HF):
  shared.weight [V, D]                                   -> token_embedder [V, D]
  lm_head.weight [V, D] (v1.1)                           -> lm_head [D, V]
  {enc,dec}oder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, H]
                                                         -> {enc,dec}oder/relative_attention_bias
  *.{q,k,v}.weight [H*d_kv, D]                           -> [D, H, d_kv];  *.o.weight [D, H*d_kv] -> [H, d_kv, D]
  *.DenseReluDense.{wi, wi_0, wi_1}.weight [F, D] -> [D, F];  wo [D, F] -> [F, D]

With a checkpoint, the tokenizer is the checkpoint's own (`spiece.model` plus HF's `<extra_id_*>`
sentinels, `pretrained_tokenizer`), and our behaviour and identifier tokens are appended after it, as
`tokenizer.add_tokens` + `model.resize_token_embeddings(len(tokenizer))` do in the reference: every
piece keeps its pretrained embedding row.

New rows (`resize_vocab`, `model.new_token_init`): the reference pins transformers 4.45.2, whose
`PreTrainedModel._get_resized_embeddings` builds a fresh `nn.Embedding`, calls `self._init_weights` on it and
copies the old rows over; T5's `T5PreTrainedModel._init_weights` has no branch for a bare `nn.Embedding`
(its N(0, initializer_factor) embedding init runs only on the whole model), so new rows keep torch's
`nn.Embedding` initialisation, N(0, 1). An untied head (v1.1) goes through `_get_resized_lm_head`: a fresh
`nn.Linear(d_model, V)`, equally untouched by `_init_weights`, so new rows keep torch's `nn.Linear` init,
U(-1/sqrt(d_model), 1/sqrt(d_model)). "torch_default" (the default) draws new rows from those laws;
"mean_resizing" follows later transformers releases (`resize_token_embeddings(mean_resizing=True)`: the old
rows' mean plus 1e-9 of their covariance), which starts every added token almost at the same point.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import jax
import ml_collections
import numpy as np

from gensar_jax.inputs import resolve_model_dir
from gensar_jax.io_utils import DataError, as_path
from gensar_jax.model.t5 import NEW_TOKEN_INITS, T5Config, init_params, t5_config_from_section

logger = logging.getLogger(__name__)

# HF's T5Tokenizer default number of sentinel tokens (<extra_id_0> .. <extra_id_99>).
DEFAULT_EXTRA_IDS = 100

# Variance scale of HF's mean-resizing: new rows ~ N(mean, 1e-9 * covariance) of the old rows.
MEAN_RESIZING_EPSILON = 1e-9


def t5_config_from_hf(hf_config: Mapping, **overrides) -> T5Config:
  """Our `T5Config` from a HF `config.json` dict (v1.0 and v1.1 names)."""
  feed_forward = hf_config.get("feed_forward_proj", "relu")
  if feed_forward not in ("relu", "gated-gelu"):
    raise DataError(f"config.json: feed_forward_proj {feed_forward!r} is not supported (expected 'relu' or "
                    "'gated-gelu')")
  # transformers>=5 always ties the head to `shared` and records the v1.0 output scaling separately.
  scaled = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True))
  try:
    fields = dict(
        vocab_size=int(hf_config["vocab_size"]), d_model=int(hf_config["d_model"]),
        num_heads=int(hf_config["num_heads"]), d_kv=int(hf_config["d_kv"]), d_ff=int(hf_config["d_ff"]),
        num_encoder_layers=int(hf_config["num_layers"]),
        num_decoder_layers=int(hf_config.get("num_decoder_layers") or hf_config["num_layers"]),
        relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
        dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
        layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
        feed_forward=feed_forward, tie_word_embeddings=bool(scaled),
        pad_id=int(hf_config.get("pad_token_id", 0) or 0), eos_id=int(hf_config.get("eos_token_id", 1) or 1),
        decoder_start_id=int(hf_config.get("decoder_start_token_id", 0) or 0))
  except KeyError as e:
    raise DataError(f"config.json: missing field {e.args[0]!r} (expected a T5 config)") from None
  fields.update(overrides)
  return T5Config(**fields)


def _linear_in_out(weight: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(weight.T)


def params_from_hf_state_dict(state_dict: Mapping[str, np.ndarray], cfg: T5Config) -> dict:
  """HF `T5ForConditionalGeneration` state dict (numpy arrays) -> our float32 params pytree."""
  sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  d, h, dk = cfg.d_model, cfg.num_heads, cfg.d_kv

  def take(key: str, shape: tuple) -> np.ndarray:
    if key not in sd:
      raise DataError(f"HF state dict: missing {key!r} (expected a T5ForConditionalGeneration checkpoint "
                      f"matching {cfg})")
    value = sd[key]
    if value.shape != shape:
      raise DataError(f"HF state dict: {key!r} has shape {value.shape}, expected {shape} for {cfg}")
    return value

  def attention(prefix: str) -> dict:
    out = {name: _linear_in_out(take(f"{prefix}.{name}.weight", (h * dk, d))).reshape(d, h, dk)
           for name in ("q", "k", "v")}
    out["o"] = _linear_in_out(take(f"{prefix}.o.weight", (d, h * dk))).reshape(h, dk, d)
    return out

  def mlp(prefix: str) -> dict:
    names = ("wi",) if cfg.feed_forward == "relu" else ("wi_0", "wi_1")
    out = {n: _linear_in_out(take(f"{prefix}.DenseReluDense.{n}.weight", (cfg.d_ff, d))) for n in names}
    out["wo"] = _linear_in_out(take(f"{prefix}.DenseReluDense.wo.weight", (d, cfg.d_ff)))
    return out

  def norm(key: str) -> dict:
    return {"scale": take(key, (d,))}

  buckets = (cfg.relative_attention_num_buckets, h)
  encoder = {"relative_attention_bias": take(
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", buckets),
             "final_layer_norm": norm("encoder.final_layer_norm.weight")}
  for i in range(cfg.num_encoder_layers):
    p = f"encoder.block.{i}.layer"
    encoder[f"layers_{i}"] = {
        "pre_attention_layer_norm": norm(f"{p}.0.layer_norm.weight"),
        "attention": attention(f"{p}.0.SelfAttention"),
        "pre_mlp_layer_norm": norm(f"{p}.1.layer_norm.weight"),
        "mlp": mlp(f"{p}.1")}
  decoder = {"relative_attention_bias": take(
      "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", buckets),
             "final_layer_norm": norm("decoder.final_layer_norm.weight")}
  for i in range(cfg.num_decoder_layers):
    p = f"decoder.block.{i}.layer"
    decoder[f"layers_{i}"] = {
        "pre_self_attention_layer_norm": norm(f"{p}.0.layer_norm.weight"),
        "self_attention": attention(f"{p}.0.SelfAttention"),
        "pre_cross_attention_layer_norm": norm(f"{p}.1.layer_norm.weight"),
        "encoder_decoder_attention": attention(f"{p}.1.EncDecAttention"),
        "pre_mlp_layer_norm": norm(f"{p}.2.layer_norm.weight"),
        "mlp": mlp(f"{p}.2")}
  shared = take("shared.weight", (cfg.vocab_size, d))
  params = {"token_embedder": shared, "encoder": encoder, "decoder": decoder}
  if not cfg.tie_word_embeddings:
    head = sd.get("lm_head.weight", shared)  # transformers>=5 ties lm_head to `shared` and may omit it.
    if head.shape != (cfg.vocab_size, d):
      raise DataError(f"HF state dict: 'lm_head.weight' has shape {head.shape}, expected {(cfg.vocab_size, d)}")
    params["lm_head"] = _linear_in_out(head)
  return params


def load_hf_state_dict(checkpoint_dir: str | Path) -> dict[str, np.ndarray]:
  """Reads `model.safetensors` (preferred) or `pytorch_model.bin` from a HF checkpoint directory."""
  checkpoint_dir = as_path(checkpoint_dir)
  safetensors_path = checkpoint_dir / "model.safetensors"
  bin_path = checkpoint_dir / "pytorch_model.bin"
  if safetensors_path.exists():
    from safetensors.numpy import load
    return dict(load(safetensors_path.read_bytes()))
  if bin_path.exists():
    try:
      import torch
    except ImportError:
      raise DataError(f"{bin_path}: reading pytorch_model.bin needs torch (pip install torch), or convert the "
                      "checkpoint to model.safetensors") from None
    state = torch.load(str(bin_path), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  present = sorted(p.name for p in checkpoint_dir.iterdir()) if checkpoint_dir.is_dir() else "directory missing"
  raise DataError(f"{checkpoint_dir}: no T5 weights found (expected model.safetensors or pytorch_model.bin; "
                  f"found: {present}). Sharded checkpoints (*.index.json) are not supported.")


def load_hf_checkpoint(checkpoint_dir: str | Path, **config_overrides) -> tuple[T5Config, dict]:
  """A HF T5 checkpoint directory or hub name -> (T5Config, params). `config_overrides` e.g. dropout_rate, dtype."""
  checkpoint_dir = resolve_model_dir(checkpoint_dir, "model.pretrained_dir")
  cfg = t5_config_from_hf(read_hf_config(checkpoint_dir), **config_overrides)
  params = params_from_hf_state_dict(load_hf_state_dict(checkpoint_dir), cfg)
  logger.info("loaded HF T5 from %s: vocab %d, d_model %d, %d+%d layers", checkpoint_dir, cfg.vocab_size,
              cfg.d_model, cfg.num_encoder_layers, cfg.num_decoder_layers)
  return cfg, params


def read_hf_config(checkpoint_dir: str | Path) -> dict:
  """The `config.json` dict of a HF checkpoint directory (clear errors when missing or malformed)."""
  config_path = as_path(checkpoint_dir) / "config.json"
  if not config_path.exists():
    raise DataError(f"{checkpoint_dir}: config.json not found (expected a Hugging Face T5 checkpoint directory)")
  try:
    return json.loads(config_path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise DataError(f"{config_path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def pretrained_tokenizer(checkpoint_dir: str | Path) -> tuple[bytes, int]:
  """The checkpoint's own tokenizer: (its `spiece.model` bytes, the id our first added token gets).

  HF's T5Tokenizer numbers the SentencePiece pieces first, then `extra_ids` sentinels
  (`tokenizer_config.json`, default 100); added tokens follow. Raises DataError naming the file when
  `spiece.model` is missing, its special ids are not T5's (pad 0, eos 1), or it does not fit the
  checkpoint's embedding table (`config.json` vocab_size): a checkpoint/tokenizer mismatch.
  """
  import sentencepiece as spm

  checkpoint_dir = resolve_model_dir(checkpoint_dir, "model.pretrained_dir")
  spiece = checkpoint_dir / "spiece.model"
  if not spiece.exists():
    raise DataError(f"{spiece}: not found; model.pretrained_dir needs the checkpoint's own SentencePiece model "
                    "(a Hugging Face T5 directory ships it), or its pretrained embeddings would sit on other pieces")
  sp_model = spiece.read_bytes()
  try:
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
  except RuntimeError as e:
    raise DataError(f"{spiece}: not a SentencePiece model ({e})") from None
  if (sp.pad_id(), sp.eos_id()) != (0, 1):
    raise DataError(f"{spiece}: pad id {sp.pad_id()} and eos id {sp.eos_id()}, expected T5's 0 and 1")
  extra_ids = DEFAULT_EXTRA_IDS
  tokenizer_config = checkpoint_dir / "tokenizer_config.json"
  if tokenizer_config.exists():
    extra_ids = int(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("extra_ids", DEFAULT_EXTRA_IDS))
  size = sp.get_piece_size() + extra_ids
  rows = int(read_hf_config(checkpoint_dir).get("vocab_size", 0))
  if size > rows:
    raise DataError(f"{spiece}: {sp.get_piece_size()} pieces + {extra_ids} sentinels = {size} ids, but "
                    f"{checkpoint_dir / 'config.json'} has vocab_size {rows}: the tokenizer does not belong to "
                    "this checkpoint")
  return sp_model, size


def _mean_resized_rows(old_rows: np.ndarray, num_new: int, rng: jax.Array) -> np.ndarray:
  """`num_new` rows ~ N(mean(old), 1e-9 * cov(old)) (cov normalised by n); the mean itself when the
  covariance is not positive definite, as HF's `resize_token_embeddings(mean_resizing=True)`."""
  old = np.asarray(old_rows, np.float64)
  mean = old.mean(axis=0)
  centered = old - mean
  covariance = centered.T @ centered / old.shape[0]
  try:
    cholesky = np.linalg.cholesky(MEAN_RESIZING_EPSILON * covariance)
  except np.linalg.LinAlgError:
    return np.repeat(mean[None].astype(np.float32), num_new, axis=0)
  noise = np.asarray(jax.random.normal(rng, (num_new, old.shape[1]), np.float32), np.float64)
  return (mean + noise @ cholesky.T).astype(np.float32)


def _torch_default_rows(num_new: int, dim: int, rng: jax.Array, head: bool) -> np.ndarray:
  """`num_new` rows as transformers 4.45.2 leaves them after resizing (module docstring): N(0, 1) for the
  embedding table (torch's `nn.Embedding` init), U(-1/sqrt(dim), 1/sqrt(dim)) for an untied head (torch's
  `nn.Linear` init, kaiming-uniform with a = sqrt(5), fan_in = dim)."""
  if head:
    bound = 1.0 / np.sqrt(dim)
    return np.asarray(jax.random.uniform(rng, (num_new, dim), np.float32, -bound, bound))
  return np.asarray(jax.random.normal(rng, (num_new, dim), np.float32))


def resize_vocab(params: dict, new_vocab_size: int, rng: jax.Array, init: str = "torch_default") -> dict:
  """Grows (or truncates) `token_embedder` [V, D] (and an untied `lm_head` [D, V]) to `new_vocab_size`.

  Existing rows are kept; added rows follow `init` (one of `NEW_TOKEN_INITS`, see the module docstring):
  "torch_default" as transformers 4.45.2 (the reference's), "mean_resizing" as later releases' default.
  Remember to build the model with `cfg.replace(vocab_size=new_vocab_size)`.
  """
  if init not in NEW_TOKEN_INITS:
    raise ValueError(f"model.new_token_init={init!r}: expected one of {list(NEW_TOKEN_INITS)}")
  params = dict(params)
  embed = np.asarray(params["token_embedder"], np.float32)
  old_vocab = embed.shape[0]
  if new_vocab_size <= 0:
    raise ValueError(f"resize_vocab: new_vocab_size must be positive, got {new_vocab_size}")
  embed_rng, head_rng = jax.random.split(rng)
  if new_vocab_size <= old_vocab:
    params["token_embedder"] = embed[:new_vocab_size]
    if "lm_head" in params:
      params["lm_head"] = np.asarray(params["lm_head"], np.float32)[:, :new_vocab_size]
    return params
  added = new_vocab_size - old_vocab

  def new_rows(old_rows: np.ndarray, key: jax.Array, head: bool) -> np.ndarray:
    if init == "mean_resizing":
      return _mean_resized_rows(old_rows, added, key)
    return _torch_default_rows(added, old_rows.shape[1], key, head)

  params["token_embedder"] = np.concatenate([embed, new_rows(embed, embed_rng, False)], axis=0)
  if "lm_head" in params:
    head_rows = np.asarray(params["lm_head"], np.float32).T
    params["lm_head"] = np.concatenate([head_rows, new_rows(head_rows, head_rng, True)], axis=0).T
  logger.info("resized vocabulary %d -> %d (%d new rows, %s init)", old_vocab, new_vocab_size, added, init)
  return params


def build_model(section: ml_collections.ConfigDict, vocab_size: int, rng: jax.Array) -> tuple[T5Config, dict]:
  """(T5Config, params) for a `model` config section (`t5.model_config()`) and vocabulary size.

  With `pretrained_dir`, the checkpoint is imported and its vocabulary grown (or cut) to `vocab_size`
  with `resize_vocab` (added rows by `new_token_init`); the tokenizer is then the checkpoint's
  (`pretrained_tokenizer`, which `data.task_data.load_task_data` uses), so that shared ids mean the same
  pieces. Otherwise parameters are freshly initialised from `rng`.
  """
  if not section.pretrained_dir:
    cfg = t5_config_from_section(section, vocab_size)
    return cfg, init_params(cfg, rng)
  cfg, params = load_hf_checkpoint(section.pretrained_dir, dropout_rate=float(section.dropout_rate),
                                   dtype=section.dtype)
  if cfg.vocab_size != vocab_size:
    params = resize_vocab(params, vocab_size, rng, section.get("new_token_init", "torch_default"))
    cfg = cfg.replace(vocab_size=vocab_size)
  return cfg.replace(attention=str(section.get("attention", "dense"))), params
