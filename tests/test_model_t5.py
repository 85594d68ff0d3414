"""T5: parity with Hugging Face on the same weights, incremental decoding = teacher forcing."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from gensar_jax.model.hf_import import params_from_hf_state_dict
import flax.linen as nn

from gensar_jax.model.t5 import (T5, Attention, Dropout, T5Config, hash_keep_mask, init_decoder_cache, init_params,
                               relative_position_bucket)

VOCAB = 61


def _random_tokens(rng: np.random.Generator, batch: int, length: int, pad_tail: bool) -> np.ndarray:
  tokens = rng.integers(2, VOCAB, size=(batch, length)).astype(np.int32)
  if pad_tail:  # variable lengths: rows end in padding (id 0)
    for row, keep in enumerate(rng.integers(3, length + 1, size=batch)):
      tokens[row, keep:] = 0
  return tokens


def _hf_model(cfg: T5Config, seed: int):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(seed)
  hf_config = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads,
      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance, dropout_rate=0.0,
      layer_norm_epsilon=cfg.layer_norm_epsilon, feed_forward_proj=cfg.feed_forward,
      tie_word_embeddings=cfg.tie_word_embeddings, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  if not cfg.tie_word_embeddings:
    # transformers>=5 shares lm_head with `shared` even for v1.1; give it its own weights to test the untied head.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model) * 0.3)
  # Non-trivial layer-norm scales (HF initialises them to 1).
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model


@pytest.mark.parametrize("feed_forward,tied", [("relu", True), ("gated-gelu", False)])
def test_logits_match_hugging_face(feed_forward, tied):
  torch = pytest.importorskip("torch")
  cfg = T5Config.tiny(VOCAB, feed_forward=feed_forward, tie_word_embeddings=tied, dropout_rate=0.0)
  model = _hf_model(cfg, seed=3)
  rng = np.random.default_rng(0)
  # Lengths beyond max_distance exercise the logarithmic buckets and their clipping.
  enc = _random_tokens(rng, 3, 27, pad_tail=True)
  dec = _random_tokens(rng, 3, 23, pad_tail=False)
  dec[:, 0] = cfg.decoder_start_id
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc != 0),
                     decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = params_from_hf_state_dict(state, cfg)
  logits = T5(cfg).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec))
  assert logits.shape == (3, 23, VOCAB)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=1e-4)


def test_relative_position_bucket_matches_hugging_face():
  torch = pytest.importorskip("torch")
  from transformers.models.t5.modeling_t5 import T5Attention
  offsets = np.arange(-300, 301)
  for bidirectional in (True, False):
    for buckets, distance in ((32, 128), (8, 20)):
      expected = T5Attention._relative_position_bucket(torch.tensor(offsets), bidirectional, buckets, distance)
      got = relative_position_bucket(offsets, bidirectional, buckets, distance)
      np.testing.assert_array_equal(got, expected.numpy())


@pytest.mark.parametrize("feed_forward,tied", [("relu", True), ("gated-gelu", False)])
def test_decode_step_reproduces_teacher_forcing(feed_forward, tied):
  cfg = T5Config.tiny(VOCAB, feed_forward=feed_forward, tie_word_embeddings=tied)
  params = init_params(cfg, jax.random.key(1))
  model = T5(cfg)
  rng = np.random.default_rng(1)
  batch, num_hyps, length, max_len = 2, 3, 6, 9
  enc = _random_tokens(rng, batch, 11, pad_tail=True)
  hyps = _random_tokens(rng, batch * num_hyps, length, pad_tail=False).reshape(batch, num_hyps, length)
  hyps[..., 0] = 0
  # Reference: teacher forcing with the encoder input tiled over the hypotheses.
  expected = model.apply({"params": params}, jnp.asarray(np.repeat(enc, num_hyps, axis=0)),
                         jnp.asarray(hyps.reshape(batch * num_hyps, length)))
  expected = np.asarray(expected).reshape(batch, num_hyps, length, VOCAB)

  encoded = model.apply({"params": params}, jnp.asarray(enc), method=T5.encode)
  cross_kv = model.apply({"params": params}, encoded, method=T5.precompute_cross_kv)
  assert len(cross_kv) == cfg.num_decoder_layers
  assert cross_kv[0][0].shape == (batch, 11, cfg.num_heads, cfg.d_kv)
  cache = init_decoder_cache(cfg, batch, num_hyps, max_len)
  step_fn = jax.jit(lambda c, t, s: model.apply({"params": params}, cross_kv, jnp.asarray(enc != 0), t, s, c,
                                                method=T5.decode_step))
  for t in range(length):
    logits, cache = step_fn(cache, jnp.asarray(hyps[:, :, t]), jnp.int32(t))
    assert logits.shape == (batch, num_hyps, VOCAB) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), expected[:, :, t], atol=1e-5, rtol=1e-5)
  assert cache[0]["k"].shape == (batch, num_hyps, max_len, cfg.num_heads, cfg.d_kv)


def test_reordering_cache_along_hypotheses_equals_reordered_prefixes():
  cfg = T5Config.tiny(VOCAB)
  params = init_params(cfg, jax.random.key(2))
  model = T5(cfg)
  rng = np.random.default_rng(2)
  enc = _random_tokens(rng, 2, 7, pad_tail=True)
  hyps = rng.integers(2, VOCAB, size=(2, 3, 4)).astype(np.int32)
  hyps[..., 0] = 0
  encoded = model.apply({"params": params}, jnp.asarray(enc), method=T5.encode)
  cross_kv = model.apply({"params": params}, encoded, method=T5.precompute_cross_kv)
  mask = jnp.asarray(enc != 0)

  def run(tokens, cache, start):
    for t in range(start, tokens.shape[-1]):
      logits, cache = model.apply({"params": params}, cross_kv, mask, jnp.asarray(tokens[:, :, t]), jnp.int32(t),
                                  cache, method=T5.decode_step)
    return logits, cache

  _, cache = run(hyps[..., :2], init_decoder_cache(cfg, 2, 3, 4), 0)
  order = np.array([[2, 2, 0], [1, 0, 1]])  # beam parents per example
  reordered = jax.tree_util.tree_map(lambda x: jnp.take_along_axis(x, order[:, :, None, None, None], axis=1), cache)
  new_hyps = np.take_along_axis(hyps, order[:, :, None], axis=1)
  got, _ = run(new_hyps, reordered, 2)
  expected, _ = run(new_hyps, init_decoder_cache(cfg, 2, 3, 4), 0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_attend_step_equals_full_attention_for_shared_and_per_hypothesis_keys():
  """`Attention.attend_step` (the one-position path of the decoder) gives `Attention.attend`'s output, with
  keys shared by the hypotheses (cross-attention) and with one copy per hypothesis (the self-attention cache)."""
  cfg = T5Config.tiny(VOCAB, dropout_rate=0.0)
  rng = np.random.default_rng(3)
  batch, hyps, length = 2, 3, 5
  queries = jnp.asarray(rng.normal(size=(batch, hyps, cfg.d_model)), jnp.float32)
  keys_in = jnp.asarray(rng.normal(size=(batch, length, cfg.d_model)), jnp.float32)
  mask = jnp.asarray([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
  bias = jnp.asarray(rng.normal(size=(cfg.num_heads, length)), jnp.float32)
  attention = Attention(cfg)
  variables = attention.init(jax.random.key(0), queries, keys_in, None, None, True)
  key, value = attention.apply(variables, keys_in, method=Attention.key_value)
  full = attention.apply(variables, queries, key, value, mask, jnp.broadcast_to(bias[:, None], (cfg.num_heads, hyps,
                         length)), True, method=Attention.attend)
  shared = attention.apply(variables, queries, key, value, mask, bias, method=Attention.attend_step)
  tiled = [jnp.repeat(x[:, None], hyps, axis=1) for x in (key, value)]
  per_hypothesis = attention.apply(variables, queries, *tiled, mask, bias, method=Attention.attend_step)
  np.testing.assert_allclose(np.asarray(shared), np.asarray(full), atol=1e-5)
  np.testing.assert_allclose(np.asarray(per_hypothesis), np.asarray(full), atol=1e-5)


def test_dropout_active_only_when_not_deterministic():
  cfg = T5Config.tiny(VOCAB, dropout_rate=0.3)
  params = init_params(cfg, jax.random.key(3))
  enc = jnp.asarray(_random_tokens(np.random.default_rng(3), 2, 5, pad_tail=False))
  dec = jnp.zeros((2, 3), jnp.int32)
  model = T5(cfg)
  a = model.apply({"params": params}, enc, dec, True)
  b = model.apply({"params": params}, enc, dec, True)
  c = model.apply({"params": params}, enc, dec, False, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_bfloat16_compute_close_to_float32():
  cfg = T5Config.tiny(VOCAB)
  params = init_params(cfg, jax.random.key(4))
  enc = jnp.asarray(_random_tokens(np.random.default_rng(4), 2, 9, pad_tail=True))
  dec = jnp.zeros((2, 4), jnp.int32)
  full = T5(cfg).apply({"params": params}, enc, dec)
  half = T5(cfg.replace(dtype="bfloat16")).apply({"params": params}, enc, dec)
  assert half.dtype == jnp.float32
  scale = np.abs(np.asarray(full)).max()
  assert np.abs(np.asarray(full) - np.asarray(half)).max() < 0.05 * scale


def test_params_carry_logical_axes():
  from gensar_jax.model.t5 import param_logical_axes
  cfg = T5Config.tiny(VOCAB, tie_word_embeddings=False, feed_forward="gated-gelu")
  axes = param_logical_axes(cfg)
  params = init_params(cfg, jax.random.key(0))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert tuple(axes["token_embedder"]) == ("vocab", "embed")
  assert tuple(axes["lm_head"]) == ("embed", "vocab")
  assert tuple(axes["decoder"]["layers_0"]["mlp"]["wi_0"]) == ("embed", "mlp")
  assert tuple(axes["encoder"]["relative_attention_bias"]) == ("relpos_buckets", "heads")


def test_config_validation():
  with pytest.raises(ValueError, match="feed_forward"):
    T5Config(vocab_size=10, feed_forward="swish")
  with pytest.raises(ValueError, match="dtype"):
    T5Config(vocab_size=10, dtype="float16")


def test_hash_keep_mask_statistics():
  """Keep rate, independence of neighbouring elements and of masks under different keys, determinism."""
  rate, shape = 0.1, (64, 4, 40, 100)                 # 1,024,000 elements
  mask = np.asarray(hash_keep_mask(jax.random.key(3), shape, rate))
  n = mask.size
  sigma = np.sqrt(rate * (1 - rate) / n)
  assert abs((1 - mask.mean()) - rate) < 5 * sigma
  dropped = ~mask.reshape(-1)
  both = (dropped[1:] & dropped[:-1]).mean()           # neighbours along the last axis and across rows
  assert abs(both - rate ** 2) < 5 * np.sqrt(rate ** 2 * (1 - rate ** 2) / n)
  for axis in range(mask.ndim):                        # no axis carries a pattern: per-slice drop rates
    per_slice = 1 - mask.mean(axis=tuple(a for a in range(mask.ndim) if a != axis))
    slice_sigma = np.sqrt(rate * (1 - rate) / (n / shape[axis]))
    assert np.all(np.abs(per_slice - rate) < 6 * slice_sigma)
  other = np.asarray(hash_keep_mask(jax.random.key(4), shape, rate))
  assert abs(np.corrcoef(mask.reshape(-1), other.reshape(-1))[0, 1]) < 5 / np.sqrt(n)
  np.testing.assert_array_equal(mask, np.asarray(hash_keep_mask(jax.random.key(3), shape, rate)))
  assert np.asarray(hash_keep_mask(jax.random.key(3), (1000,), 0.0)).all()


@pytest.mark.parametrize("rng_impl", ["threefry", "hash"])
def test_dropout_module(rng_impl):
  """"threefry" is flax's nn.Dropout exactly (recorded runs keep their masks); "hash" scales kept
  elements by 1 / (1 - rate) and zeroes the others."""
  x = jnp.arange(1, 2001, dtype=jnp.float32).reshape(40, 50)
  key = jax.random.key(7)
  ours = Dropout(0.25, rng_impl=rng_impl).apply({}, x, deterministic=False, rng=key)
  if rng_impl == "threefry":
    np.testing.assert_array_equal(ours, nn.Dropout(0.25).apply({}, x, deterministic=False, rng=key))
  else:
    keep = np.asarray(hash_keep_mask(key, x.shape, 0.25))
    np.testing.assert_allclose(ours, np.where(keep, np.asarray(x) / 0.75, 0.0), rtol=1e-6)
  np.testing.assert_array_equal(Dropout(0.25, rng_impl=rng_impl).apply({}, x, deterministic=True), x)
