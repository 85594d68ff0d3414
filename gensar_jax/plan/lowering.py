"""Each program of the pipeline lowered as its stage runs it, on abstract inputs (`jax.ShapeDtypeStruct`s carrying
their shardings): the T5 train step, the constrained beam search, doc2query sampling (whole and one token), the text
encoder, SASRec's and the RQ-VAE's train steps. Nothing is allocated."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gensar_jax import parallel
from gensar_jax.model.decoding import T5Decoding
from gensar_jax.model.t5 import T5Config, init_params

# The text encoder's shape when `embed.text.model_dir` names a directory that is not on this machine:
# BAAI/bge-base-en-v1.5's config.json (the reference's encoder; the BERT-base shape).
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12)


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings` (same structure)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def lower_train_step(model_cfg: T5Config, train_cfg: ml_collections.ConfigDict, mesh, rules, batch: int,
                     input_len: int, target_len: int):
  """`make_train_step(...).jitted.lower(...)` on `step.abstract_inputs`: the program a run compiles."""
  from gensar_jax.train import state as state_lib
  from gensar_jax.train import step as step_lib
  model_cfg = state_lib.model_config_for_training(model_cfg, train_cfg)
  optimizer = state_lib.make_optimizer(train_cfg)
  shardings = state_lib.state_shardings(model_cfg, optimizer, mesh, rules)
  state, batch_spec = step_lib.abstract_inputs(model_cfg, optimizer, shardings, mesh, rules, batch, input_len,
                                               target_len)
  step = step_lib.make_train_step(model_cfg, train_cfg, optimizer, mesh, rules, shardings)
  with parallel.mesh_and_rules(mesh, rules):
    return step.jitted.lower(state, batch_spec)


def abstract_params(model_cfg: T5Config, mesh, rules) -> Any:
  """The model's float32 parameters, abstract, laid out by the logical rules (as during training)."""
  from gensar_jax.model.t5 import param_logical_axes
  shapes = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
  return abstract(shapes, parallel.logical_to_shardings(param_logical_axes(model_cfg), mesh, rules))


def synthetic_tries(num_items: int, num_levels: int, codebook_size: int, batch: int, num_candidates: int,
                    offset: int, seed: int = 0):
  """(catalogue trie, per-query candidate tries) over random codes int[num_items, num_levels]: the table
  shapes of a catalogue of that size (real codes are less uniform; the shapes are of the same order)."""
  from gensar_jax.decode import trie as trie_lib
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, codebook_size, (num_items, num_levels))
  offsets = [offset + level * codebook_size for level in range(num_levels)]
  catalogue = trie_lib.build_catalogue_trie(codes, offset - 1, offsets, codebook_size)
  candidates = np.stack([rng.choice(num_items, num_candidates, replace=False) for _ in range(batch)])
  per_query = trie_lib.build_candidate_tries(candidates, codes, offset - 1, offsets, codebook_size)
  return catalogue, per_query


def lower_beam_search(model_cfg: T5Config, params, tables, mesh, batch: int, input_len: int, num_beams: int):
  """`beam_search.search.lower(...)` on `beam_search.abstract_inputs`: queries over the mesh's data axis,
  tables laid out as `constrained_beam_search` lays them."""
  from gensar_jax.decode import beam_search
  tokens, abstract_tables = beam_search.abstract_inputs(mesh, batch, input_len, tables)
  return beam_search.search.lower(params, tokens, abstract_tables, decoder=T5Decoding(model_cfg),
                                  num_beams=num_beams)


def _sampling_args(cfg: ml_collections.ConfigDict) -> dict:
  s = cfg.sampling
  return dict(max_length=int(cfg.max_query_len), num_samples=int(cfg.num_pseudo_queries),
              greedy=s.method == "greedy", temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p))


def lower_sampling(model_cfg: T5Config, doc2query_cfg: ml_collections.ConfigDict, device):
  """`sampling.generate.lower(...)` on one device, as the doc2query stage runs it (no mesh)."""
  from gensar_jax.decode import sampling
  mesh = parallel.make_mesh({"data": 1}, [device])
  params = abstract_params(model_cfg, mesh, ())
  tokens, rng = sampling.abstract_inputs(mesh, int(doc2query_cfg.sampling.batch_size),
                                         int(doc2query_cfg.max_input_len))
  return sampling.generate.lower(params, tokens, rng, decoder=T5Decoding(model_cfg), **_sampling_args(doc2query_cfg))


def lower_sampling_step(model_cfg: T5Config, doc2query_cfg: ml_collections.ConfigDict, device):
  """One iteration of the sampling loop (decoder step + filtered categorical draw) at the same shapes:
  XLA's cost analysis counts `generate`'s while-loop body once, this measures what each token adds."""
  from gensar_jax.decode.sampling import filter_logits
  mesh = parallel.make_mesh({"data": 1}, [device])
  rep = parallel.replicated(mesh)
  params = abstract_params(model_cfg, mesh, ())
  batch, hyps = int(doc2query_cfg.sampling.batch_size), int(doc2query_cfg.num_pseudo_queries)
  length, max_length = int(doc2query_cfg.max_input_len), int(doc2query_cfg.max_query_len)
  decoder = T5Decoding(model_cfg)
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  encoded = _on_device(jax.eval_shape(decoder.encode, params, tokens), device)
  cache = _on_device(jax.eval_shape(lambda: decoder.init_cache(batch, hyps, max_length)), device)
  last = jax.ShapeDtypeStruct((batch, hyps), jnp.int32, sharding=rep)
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
  s = doc2query_cfg.sampling

  def body(params, encoded, last, cache, rng):
    logits, cache = decoder.tokens_to_logits(params, encoded)(last, 1, cache)
    chosen = jax.random.categorical(rng, filter_logits(logits, float(s.temperature), int(s.top_k), float(s.top_p)))
    return chosen, jax.nn.log_softmax(logits, axis=-1).max(axis=-1), cache

  return jax.jit(body).lower(params, encoded, last, cache, rng)


def one_device_mesh(device) -> jax.sharding.Mesh:
  """A one-device mesh (axis "data") on `device`."""
  return parallel.make_mesh({"data": 1}, [device])


def _on_device(tree, device):
  """Abstract copies of `tree` (arrays or ShapeDtypeStructs) placed on `device` (a jit with no mesh)."""
  rep = parallel.replicated(one_device_mesh(device))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def text_encoder_shape(text_cfg: ml_collections.ConfigDict):
  """(BertConfig, where it came from) of the `embed.text` encoder: its directory's config.json, the packaged
  all-MiniLM-L6-v2 without a directory, else (a directory not on this machine) the BERT-base shape of
  bge-base-en-v1.5 (`BERT_BASE`)."""
  from gensar_jax.embed.text_encoder import BertConfig, default_model_dir
  try:
    model_dir = Path(text_cfg.model_dir) if text_cfg.model_dir else default_model_dir()
  except FileNotFoundError:
    model_dir = None
  if model_dir is not None and (model_dir / "config.json").exists():
    return BertConfig.from_json(model_dir / "config.json"), str(model_dir / "config.json")
  return BertConfig(**BERT_BASE), (f"{text_cfg.model_dir or 'the default encoder'} is not on this machine: "
                                   "the BERT-base shape of bge-base-en-v1.5 (plan.BERT_BASE)")


def lower_text_encoder(bert_cfg, text_cfg: ml_collections.ConfigDict, device):
  """The embed stage's encoder call (`SentenceEncoder._encode_batch`: `BertEncoder`, pooling, L2 norm) on one
  device for a batch int32[embed.text.batch_size, L] at the longest length L the stage pads to (its
  max_seq_length, capped by the position table): an upper bound per batch."""
  from gensar_jax.embed.text_encoder import BertEncoder, l2_normalize, pool_tokens
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[text_cfg.dtype]
  model = BertEncoder(bert_cfg, dtype=dtype)
  batch, length = int(text_cfg.batch_size), min(int(text_cfg.max_seq_length), bert_cfg.max_position_embeddings)
  pooling = text_cfg.get("pooling") or "mean"
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  params = jax.eval_shape(lambda t: model.init(jax.random.key(0), t, t, t)["params"], tokens)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), params)   # cast as the encoder does

  def encode_batch(params, input_ids, attention_mask, token_type_ids):
    hidden = model.apply({"params": params}, input_ids, attention_mask, token_type_ids)
    return l2_normalize(pool_tokens(hidden, attention_mask, pooling))

  return jax.jit(encode_batch).lower(*_on_device((params, tokens, tokens, tokens), device))


def sasrec_width(sasrec_cfg: ml_collections.ConfigDict, plan_cfg: ml_collections.ConfigDict, counts: Mapping) -> int:
  """Window width of SASRec's compiled step: `plan.sasrec_window`, else the length bucket
  (`embed.sasrec.length_buckets`) holding the mean training window (training items per user - 1)."""
  from gensar_jax.embed.sasrec import length_buckets
  buckets = length_buckets(int(sasrec_cfg.max_len))
  if int(plan_cfg.sasrec_window) > 0:
    return min(int(plan_cfg.sasrec_window), int(sasrec_cfg.max_len))
  mean_window = counts["rec_train"] / max(counts["users"], 1) - 1
  return next(b for b in buckets if b >= min(mean_window, buckets[-1]))


def lower_sasrec_step(sasrec_cfg: ml_collections.ConfigDict, num_items: int, width: int, device):
  """The embed stage's SASRec train step (`sasrec.training_fns`' jitted AdamW step) on one device for a
  batch of windows int32[embed.sasrec.batch_size, width]."""
  from gensar_jax.embed import sasrec
  arch = {"num_items": int(num_items), "hidden_dim": int(sasrec_cfg.hidden_dim),
          "num_blocks": int(sasrec_cfg.num_blocks), "num_heads": int(sasrec_cfg.num_heads),
          "max_len": int(sasrec_cfg.max_len)}
  hyper = sasrec.training_hyper(sasrec_cfg)
  module, optimizer, train_step = sasrec.training_fns(tuple(sorted(arch.items())), tuple(sorted(hyper.items())))
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, arch["max_len"]), jnp.int32))
                          ["params"])
  opt_state = jax.eval_shape(optimizer.init, params)
  tokens = jax.ShapeDtypeStruct((int(sasrec_cfg.batch_size), int(width)), jnp.int32)
  # Each row's user's items (read by loss=bce; a user's window holds up to max_len + 1 of them).
  seen = jax.ShapeDtypeStruct((int(sasrec_cfg.batch_size), arch["max_len"] + 1 if hyper["loss"] == "bce" else 1),
                              jnp.int32)
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  return train_step.lower(*_on_device((params, opt_state, tokens, tokens, seen, key), device))


def lower_rqvae_step(identifiers_cfg: ml_collections.ConfigDict, semantic_dim: int, collab_dim: int,
                     steps_per_epoch: int, device):
  """One RQ-VAE optimizer step as the index stage runs it: `rqvae_train.make_train_epoch`'s jitted epoch
  over `identifiers.batch_size` items (one batch: one step of its scan), every view of the config's mode
  in the one model, on one device."""
  from gensar_jax.identifiers import rqvae, rqvae_train
  spec = rqvae.spec_from_config(identifiers_cfg, semantic_dim, collab_dim)
  batch = int(identifiers_cfg.batch_size)
  optimizer = rqvae_train.make_optimizer(identifiers_cfg, steps_per_epoch)
  train_epoch = rqvae_train.make_train_epoch(spec, optimizer, batch)
  params = jax.eval_shape(lambda: rqvae.init_params(jax.random.PRNGKey(0), spec))
  opt_state = jax.eval_shape(optimizer.init, params)
  inputs = {view: jax.ShapeDtypeStruct((batch, dim), jnp.float32) for view, dim in spec.input_dims}
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  return train_epoch.lower(*_on_device((params, opt_state, inputs, key), device))

