"""Fused attention (Pallas kernel, interpret mode on CPU) against an independent numpy attention with the same
counter-hash dropout masks, and against the dense T5 path in forward and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensar_jax import parallel
from gensar_jax.model import fused_attention as fa
from gensar_jax.model import hash_dropout
from gensar_jax.model.t5 import T5, T5Config, init_params

# float32 on CPU: the kernel and the reference sum in different orders.
ATOL = 2e-5


def _numpy_fmix32(h):
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> np.uint32(13))
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> np.uint32(16))


def numpy_attention(q, k, v, bias, key_mask, rate, seeds):
  """q: [B, H, T, d], k/v: [B, H, S, d], bias [H, T, S] or None, key_mask bool[B, S]: softmax attention with
  inverted dropout, the mask of element (b, h, t, s) from the murmur3 finalizer of its flat index."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scores = np.einsum("bhtd,bhsd->bhts", q, k)
  if bias is not None:
    scores = scores + np.asarray(bias, np.float64)[None]
  scores = np.where(key_mask[:, None, None, :], scores, np.finfo(np.float32).min)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  if rate:
    s0, s1 = (np.uint32(x) for x in np.asarray(seeds).view(np.uint32))
    with np.errstate(over="ignore"):
      index = np.arange(probs.size, dtype=np.uint32).reshape(probs.shape)
      bits = _numpy_fmix32(_numpy_fmix32(index ^ s0) + s1)
    keep = bits >= np.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))
    probs = np.where(keep, probs / (1.0 - rate), 0.0)
  return np.einsum("bhts,bhsd->bhtd", probs, v)


def dense_attention(q, k, v, bias, key_mask, rate, key):
  """The dense path's arithmetic (t5.Attention.attend with hash dropout), heads first."""
  from gensar_jax.model.t5 import hash_keep_mask
  scores = jnp.einsum("bhtd,bhsd->bhts", q, k)
  if bias is not None:
    scores = scores + bias[None]
  scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  if rate:
    probs = jax.lax.select(hash_keep_mask(key, probs.shape, rate), probs / (1.0 - rate), jnp.zeros_like(probs))
  return jnp.einsum("bhts,bhsd->bhtd", probs, v)


def _inputs(batch=3, heads=2, t_len=16, s_len=24, d_kv=8, seed=0):
  ks = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(ks[0], (batch, heads, t_len, d_kv))
  k = jax.random.normal(ks[1], (batch, heads, s_len, d_kv))
  v = jax.random.normal(ks[2], (batch, heads, s_len, d_kv))
  bias = jax.random.normal(ks[3], (heads, t_len, s_len))
  lengths = np.array([s_len, 10, 1, 5][:batch])
  key_mask = np.arange(s_len)[None, :] < lengths[:, None]
  return q, k, v, bias, jnp.asarray(key_mask), ks[4]


@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_equals_numpy_reference(rate, with_bias):
  q, k, v, bias, key_mask, key = _inputs()
  bias = bias if with_bias else None
  seeds = fa.dropout_seeds(key)
  out = jax.jit(fa.fused_attention, static_argnums=5)(q, k, v, bias, key_mask, rate, seeds)
  expected = numpy_attention(q, k, v, bias, np.asarray(key_mask), rate, np.asarray(seeds))
  np.testing.assert_allclose(np.asarray(out), expected, atol=ATOL)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_gradients_equal_dense(rate):
  q, k, v, bias, key_mask, key = _inputs()
  weights = jax.random.normal(jax.random.key(9), q.shape)
  fused = lambda *x: jnp.sum(fa.fused_attention(*x, key_mask, rate, fa.dropout_seeds(key)) * weights)  # noqa: E731
  dense = lambda *x: jnp.sum(dense_attention(*x, key_mask, rate, key) * weights)  # noqa: E731
  got = jax.jit(jax.grad(fused, argnums=(0, 1, 2, 3)))(q, k, v, bias)
  want = jax.grad(dense, argnums=(0, 1, 2, 3))(q, k, v, bias)
  for name, g, w in zip("q k v bias".split(), got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5, err_msg=name)


def test_bfloat16_close_to_float32():
  q, k, v, bias, key_mask, _ = _inputs()
  attend = jax.jit(fa.fused_attention)
  out32 = attend(q, k, v, bias, key_mask)
  out16 = attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)), bias, key_mask)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32), atol=0.1)


def _model_loss(cfg, params, x, y):
  logits = T5(cfg).apply({"params": params}, x, y, deterministic=False, rngs={"dropout": jax.random.key(1)})
  return jnp.mean(jnp.square(logits))


def _tokens(batch=4):
  rng = np.random.RandomState(0)
  x = rng.randint(2, 100, (batch, 12))
  x[1, 7:] = 0
  x[-1, 2:] = 0
  return jnp.asarray(x), jnp.asarray(rng.randint(2, 100, (batch, 5)))


def test_t5_fused_equals_dense_with_dropout():
  """The whole model in training mode: the fused kernel draws the dense path's hash masks."""
  cfg = T5Config.tiny(100, dropout_rng="hash", dropout_rate=0.2, num_heads=2, num_encoder_layers=1,
                      num_decoder_layers=1)
  params = init_params(cfg, jax.random.key(0))
  x, y = _tokens(batch=2)
  loss_and_grads = jax.jit(jax.value_and_grad(_model_loss, argnums=1), static_argnums=0)
  dense_loss, dense_grads = loss_and_grads(cfg, params, x, y)
  fused_loss, fused_grads = loss_and_grads(cfg.replace(attention="fused"), params, x, y)
  np.testing.assert_allclose(float(fused_loss), float(dense_loss), rtol=1e-5)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(fused_grads), jax.tree_util.tree_leaves(dense_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_t5_fused_sharded_equals_dense():
  """Under a data x model mesh the kernel runs per device (shard_map) with global mask indices."""
  cfg = T5Config.tiny(100, dropout_rng="hash", dropout_rate=0.2)
  params = init_params(cfg, jax.random.key(0))
  x, y = _tokens()
  mesh = parallel.make_mesh({"data": 2, "model": 2}, jax.devices()[:4])
  rules = parallel.DEFAULT_LOGICAL_AXIS_RULES
  with parallel.mesh_and_rules(mesh, rules):
    dense = jax.jit(jax.value_and_grad(_model_loss, argnums=1), static_argnums=0)(cfg, params, x, y)
    fused = jax.jit(jax.value_and_grad(_model_loss, argnums=1), static_argnums=0)(
        cfg.replace(attention="fused"), params, x, y)
  np.testing.assert_allclose(float(fused[0]), float(dense[0]), rtol=1e-5)
  for g, w in zip(jax.tree_util.tree_leaves(fused[1]), jax.tree_util.tree_leaves(dense[1])):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_fused_refuses_threefry_dropout():
  cfg = T5Config.tiny(100, dropout_rate=0.2, attention="fused")
  params = init_params(cfg.replace(attention="dense"), jax.random.key(0))
  x, y = _tokens()
  with pytest.raises(ValueError, match="dropout_rng='hash'"):
    _model_loss(cfg, params, x, y)


def test_hash_index_blocks_beyond_uint32():
  """Arrays of 2**32 elements or more: rows are grouped in blocks of whole rows under 2**32 elements; the
  index within a block restarts and the block number enters through the second seed word."""
  row_size = 3 * 2 ** 30                        # one row per block
  assert hash_dropout.rows_per_block(row_size) == 1
  first, block = hash_dropout.row_words(jnp.arange(3), row_size)
  np.testing.assert_array_equal(np.asarray(first), [0, 0, 0])
  np.testing.assert_array_equal(np.asarray(block), np.array([0, 1, 2], np.uint64) * hash_dropout.GOLDEN % 2 ** 32)
  first, block = hash_dropout.row_words(jnp.arange(6), 2 ** 30)   # four rows per block
  np.testing.assert_array_equal(np.asarray(first), np.array([0, 1, 2, 3, 0, 1], np.uint64) * 2 ** 30)
  assert np.asarray(block)[:4].tolist() == [0] * 4 and np.asarray(block)[4] == hash_dropout.GOLDEN
  seeds = hash_dropout.seeds_from_key(jax.random.key(0))
  same_index = hash_dropout.keep_bits(jnp.arange(1000, dtype=jnp.uint32), block[0], *seeds)
  next_block = hash_dropout.keep_bits(jnp.arange(1000, dtype=jnp.uint32), block[4], *seeds)
  assert np.mean(np.asarray(same_index) == np.asarray(next_block)) < 0.01
  with pytest.raises(ValueError, match="per row"):
    hash_dropout.rows_per_block(2 ** 32)


def test_blocks_beyond_the_vmem_budget_are_refused():
  fa.check_fits(512, 512)
  with pytest.raises(ValueError, match="model.attention='dense'"):
    fa.check_fits(2048, 2048)


def test_hash_blocks_of_a_large_array_are_the_row_formula():
  """The blocked index (arrays of 2**32 elements or more) and the flat one agree on arrays below 2**32: block
  0, index r * row_size + i (the mask of a small array from the row formula, written out)."""
  shape, rate = (6, 3, 50), 0.3
  key = jax.random.key(5)
  seeds = hash_dropout.seeds_from_key(key)
  first, block = hash_dropout.row_words(jnp.arange(shape[0]), 150)
  index = first[:, None, None] + jnp.arange(150, dtype=jnp.uint32).reshape(1, 3, 50)
  by_rows = hash_dropout.keep_bits(index, block[:, None, None], *seeds) >= hash_dropout.threshold(rate)
  np.testing.assert_array_equal(np.asarray(by_rows), np.asarray(hash_dropout.hash_keep_mask(key, shape, rate)))


def test_decoding_runs_dense_attention():
  from gensar_jax.model.decoding import T5Decoding
  cfg = T5Config.tiny(100, attention="fused")
  assert T5Decoding(cfg).config.attention == "dense" and T5Decoding(cfg) == T5Decoding(cfg.replace(attention="dense"))
