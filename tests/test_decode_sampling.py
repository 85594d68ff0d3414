"""Unconstrained decoding against independent references: step-by-step argmax with `T5.__call__`,
HF greedy `generate`, and numpy top-k/top-p distributions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensar_jax.decode.sampling import filter_logits, generate_text
from gensar_jax.model.hf_import import params_from_hf_state_dict
from gensar_jax.model.decoding import T5Decoding
from gensar_jax.model.t5 import T5, T5Config

VOCAB = 40
CONFIG = T5Config.tiny(VOCAB, dropout_rate=0.0, feed_forward="gated-gelu", tie_word_embeddings=False)
MAX_LENGTH = 8


@pytest.fixture(scope="module")
def hf_model():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(7)
  hf_config = transformers.T5Config(
      vocab_size=VOCAB, d_model=CONFIG.d_model, d_kv=CONFIG.d_kv, d_ff=CONFIG.d_ff,
      num_layers=CONFIG.num_encoder_layers, num_decoder_layers=CONFIG.num_decoder_layers,
      num_heads=CONFIG.num_heads, relative_attention_num_buckets=CONFIG.relative_attention_num_buckets,
      relative_attention_max_distance=CONFIG.relative_attention_max_distance, dropout_rate=0.0,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
      eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  # An untied random head (a tied random T5 just repeats its input token); EOS made likely enough
  # that some rows stop early and others run to max_length.
  model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, CONFIG.d_model) * 0.5)
  with torch.no_grad():
    model.lm_head.weight[1].mul_(1.5)
  return model


@pytest.fixture(scope="module")
def params(hf_model):
  return params_from_hf_state_dict({k: v.numpy() for k, v in hf_model.state_dict().items()}, CONFIG)


def encoder_tokens(batch, seed):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, VOCAB, size=(batch, 6)).astype(np.int32)
  tokens[0, 4:] = 0
  return tokens


def reference_greedy(params, enc):
  """Argmax continuation, re-running the full teacher-forced model on the growing prefix (the
  decoder is causal, so the prefix is padded to MAX_LENGTH and one compiled forward serves all steps)."""
  forward = jax.jit(lambda p, e, d: T5(CONFIG).apply({"params": p}, e, d))
  decoder_inputs = np.zeros((len(enc), MAX_LENGTH + 1), np.int32)
  log_probs = np.zeros(len(enc))
  for i in range(MAX_LENGTH):
    logits = np.asarray(forward(params, jnp.asarray(enc), jnp.asarray(decoder_inputs[:, :MAX_LENGTH])))[:, i]
    nxt = logits.argmax(-1)
    log_probs += np.asarray(jax.nn.log_softmax(logits))[np.arange(len(enc)), nxt]
    decoder_inputs[:, i + 1] = nxt
  return decoder_inputs[:, 1:], log_probs


def test_greedy_matches_step_by_step_teacher_forcing_and_hf(params, hf_model):
  torch = pytest.importorskip("torch")
  enc = encoder_tokens(6, seed=0)
  out = generate_text(params, T5Decoding(CONFIG), enc, MAX_LENGTH)
  tokens = np.asarray(out.tokens)[:, 0]
  expected, expected_log_probs = reference_greedy(params, enc)
  lengths = np.asarray(out.lengths)[:, 0]
  for row in range(len(enc)):
    eos = np.flatnonzero(expected[row] == CONFIG.eos_id)
    n = eos[0] + 1 if eos.size else MAX_LENGTH
    assert lengths[row] == n
    np.testing.assert_array_equal(tokens[row, :n], expected[row, :n])
    assert np.all(tokens[row, n:] == CONFIG.pad_id)
  assert 1 <= (lengths < MAX_LENGTH).sum() < len(enc), "expected some rows to stop at EOS, some not"
  full = lengths == MAX_LENGTH
  np.testing.assert_allclose(np.asarray(out.log_probs)[full, 0], expected_log_probs[full], atol=1e-4)
  with torch.no_grad():
    hf = hf_model.generate(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc != 0),
                           do_sample=False, num_beams=1, max_new_tokens=MAX_LENGTH).numpy()[:, 1:]
  hf = np.pad(hf, ((0, 0), (0, MAX_LENGTH - hf.shape[1])))
  np.testing.assert_array_equal(tokens, hf)


def test_top_k_one_sampling_is_greedy_and_seeds_reproduce(params):
  enc = encoder_tokens(4, seed=1)
  greedy = generate_text(params, T5Decoding(CONFIG), enc, MAX_LENGTH)
  sampled = generate_text(params, T5Decoding(CONFIG), enc, MAX_LENGTH, method="sample", num_samples=3, top_k=1,
                          temperature=0.7, rng=jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(sampled.tokens),
                                np.repeat(np.asarray(greedy.tokens), 3, axis=1))
  a = generate_text(params, T5Decoding(CONFIG), enc, MAX_LENGTH, method="sample", num_samples=3, rng=jax.random.key(4))
  b = generate_text(params, T5Decoding(CONFIG), enc, MAX_LENGTH, method="sample", num_samples=3, rng=jax.random.key(4))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert len({tuple(t) for t in np.asarray(a.tokens).reshape(-1, MAX_LENGTH)}) > 3, "samples should differ"


def numpy_filtered_probs(logits, temperature, top_k, top_p):
  """Reference sampling distribution over one row of logits (float64)."""
  z = np.asarray(logits, np.float64) / temperature
  keep = np.ones_like(z, bool)
  if top_k:
    keep &= z >= np.sort(z)[::-1][top_k - 1]
  z = np.where(keep, z, -np.inf)
  p = np.exp(z - z.max())
  p /= p.sum()
  if top_p < 1:
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    nucleus = order[before < top_p]
    keep_p = np.zeros_like(keep)
    keep_p[nucleus] = True
    keep_p |= p >= p[nucleus].min()
    p = np.where(keep_p, p, 0.0)
    p /= p.sum()
  return p


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 5, 1.0), (1.3, 0, 0.6), (1.0, 8, 0.8)])
def test_filter_logits_matches_numpy(temperature, top_k, top_p):
  logits = np.random.default_rng(2).normal(size=(5, 30)) * 2
  filtered = np.asarray(filter_logits(jnp.asarray(logits, jnp.float32), temperature, top_k, top_p))
  for row in range(5):
    expected = numpy_filtered_probs(logits[row], temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isfinite(filtered[row]), expected > 0)
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(filtered[row])), expected, atol=1e-5)


def test_first_token_frequencies_follow_the_filtered_distribution(params):
  enc = encoder_tokens(1, seed=3)
  num_samples = 3000
  out = generate_text(params, T5Decoding(CONFIG), enc, 1, method="sample", num_samples=num_samples, temperature=1.5,
                      top_p=0.9, rng=jax.random.key(5))
  first_logits = np.asarray(T5(CONFIG).apply({"params": params}, jnp.asarray(enc), jnp.zeros((1, 1), jnp.int32)))[0, 0]
  expected = numpy_filtered_probs(first_logits, 1.5, 0, 0.9)
  counts = np.bincount(np.asarray(out.tokens)[0, :, 0], minlength=VOCAB)
  assert np.all(counts[expected == 0] == 0), "tokens outside the nucleus were sampled"
  total_variation = 0.5 * np.abs(counts / num_samples - expected).sum()
  assert total_variation < 0.06, total_variation


def test_bad_arguments_are_rejected(params):
  enc = encoder_tokens(2, seed=0)
  with pytest.raises(ValueError, match="needs rng"):
    generate_text(params, T5Decoding(CONFIG), enc, 4, method="sample")
  with pytest.raises(ValueError, match="num_samples=2"):
    generate_text(params, T5Decoding(CONFIG), enc, 4, num_samples=2)
  with pytest.raises(ValueError, match="method"):
    generate_text(params, T5Decoding(CONFIG), enc, 4, method="beam")
  with pytest.raises(ValueError, match="top_p"):
    generate_text(params, T5Decoding(CONFIG), enc, 4, method="sample", top_p=0.0, rng=jax.random.key(0))


def test_batched_generation_equals_one_call(params):
  from gensar_jax.decode.sampling import generate_text_batched
  enc = encoder_tokens(5, seed=6)
  whole = generate_text(params, T5Decoding(CONFIG), enc, MAX_LENGTH)
  batched = generate_text_batched(params, T5Decoding(CONFIG), enc, MAX_LENGTH, batch_size=2)
  for field in ("tokens", "lengths", "log_probs"):
    np.testing.assert_allclose(getattr(batched, field), np.asarray(getattr(whole, field)), atol=1e-5)
  sampled = generate_text_batched(params, T5Decoding(CONFIG), enc, MAX_LENGTH, batch_size=2, method="sample",
                                  num_samples=2, seed=1)
  assert sampled.tokens.shape == (5, 2, MAX_LENGTH)
  again = generate_text_batched(params, T5Decoding(CONFIG), enc, MAX_LENGTH, batch_size=2, method="sample",
                                num_samples=2, seed=1)
  np.testing.assert_array_equal(sampled.tokens, again.tokens)
