"""The decoders take any `tokens_to_logits` function and its cache: a model-free toy decoder whose logits
depend on the whole prefix (through its cache), against brute-force enumeration in numpy."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from gensar_jax.decode import trie as trie_lib
from gensar_jax.decode.beam_search import beam_search, decode_length
from gensar_jax.decode.sampling import sample

VOCAB = 13
START, EOS, BEHAVIOUR = 0, 1, 2
OFFSETS = (3, 6, 9)                   # three levels of codebook 3
CODEBOOK = 3
RNG = np.random.default_rng(5)
TABLE = RNG.normal(size=(VOCAB, VOCAB)).astype(np.float32) * 2
MIX = RNG.normal(size=(VOCAB, VOCAB)).astype(np.float32) * 2


def toy_tokens_to_logits(tokens, position, cache):
  """logits = TABLE[token] + MIX[(sum of the prefix's tokens) % VOCAB]; the cache holds the prefix
  int32[B, K, L], so reordering hypotheses wrongly changes the scores."""
  prefix = jax.lax.dynamic_update_index_in_dim(cache, tokens, position, axis=2)
  return jnp.asarray(TABLE)[tokens] + jnp.asarray(MIX)[jnp.sum(prefix, axis=2) % VOCAB], prefix


def reference_log_prob(inputs, output):
  """log P(output | inputs) of the toy model at the last input position, in float64."""
  logits = TABLE[inputs[-1]].astype(np.float64) + MIX[sum(inputs) % VOCAB]
  return logits[output] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def reference_score(tokens):
  """Sum of the log-probs of `tokens` decoded after START."""
  inputs = [START]
  score = 0.0
  for token in tokens:
    score += reference_log_prob(inputs, token)
    inputs.append(int(token))
  return score


def test_beam_search_on_a_model_free_decoder_equals_brute_force():
  codes = np.array(list(itertools.product(range(CODEBOOK), repeat=3)))[RNG.permutation(27)[:12]]
  codes = np.concatenate([codes, codes[:1]])           # item 12 shares item 0's identifier
  tables = trie_lib.build_catalogue_trie(codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  batch, num_beams = 2, 12                             # >= the 12 identifiers: exhaustive
  cache = jnp.zeros((batch, 1, decode_length(tables)), jnp.int32)
  out = beam_search(toy_tokens_to_logits, cache, tables, START, num_beams)
  expected = {item: reference_score([BEHAVIOUR, *(codes[item] + np.asarray(OFFSETS))]) for item in range(len(codes))}
  for b in range(batch):                               # the toy model ignores the query: both rows agree
    items = np.asarray(out.items[b])
    found = items[items >= 0]
    assert sorted(found.tolist()) == list(range(len(codes)))
    np.testing.assert_allclose(np.asarray(out.item_scores[b])[:len(found)], [expected[i] for i in found], atol=1e-5)
    assert np.all(np.diff(np.asarray(out.item_scores[b])[:len(found)]) <= 1e-6)
    best = max(expected, key=expected.get)
    np.testing.assert_array_equal(np.asarray(out.sequences[b, 0]), [BEHAVIOUR, *(codes[best] + np.asarray(OFFSETS))])


def test_beam_search_with_few_beams_keeps_the_best_prefixes_level_by_level():
  """Beam 2 on the full 3-level tree: at each level the 2 best extensions of the kept prefixes (numpy)."""
  codes = np.array(list(itertools.product(range(CODEBOOK), repeat=3)))
  tables = trie_lib.build_catalogue_trie(codes, trie_lib.NO_BEHAVIOUR_TOKEN, OFFSETS, CODEBOOK)
  cache = jnp.zeros((1, 1, decode_length(tables)), jnp.int32)
  out = beam_search(toy_tokens_to_logits, cache, tables, START, 2)
  beams = [((), 0.0)]
  for level in range(3):
    grown = [(prefix + (OFFSETS[level] + c,), score + reference_log_prob([START, *prefix], OFFSETS[level] + c))
             for prefix, score in beams for c in range(CODEBOOK)]
    beams = sorted(grown, key=lambda b: -b[1])[:2]
  np.testing.assert_array_equal(np.asarray(out.sequences[0]), [list(p) for p, _ in beams])
  np.testing.assert_allclose(np.asarray(out.sequence_scores[0]), [s for _, s in beams], atol=1e-5)


def test_greedy_sampling_on_a_model_free_decoder_equals_a_numpy_walk():
  max_length, batch = 6, 3
  cache = jnp.zeros((batch, 1, max_length), jnp.int32)
  out = jax.jit(lambda c: sample(toy_tokens_to_logits, c, jax.random.key(0), start_id=START, pad_id=0, eos_id=EOS,
                                 max_length=max_length, greedy=True))(cache)
  inputs, tokens, log_prob = [START], [], 0.0
  while len(tokens) < max_length and (not tokens or tokens[-1] != EOS):
    logits = TABLE[inputs[-1]].astype(np.float64) + MIX[sum(inputs) % VOCAB]
    token = int(np.argmax(logits))
    log_prob += reference_log_prob(inputs, token)
    tokens.append(token)
    inputs.append(token)
  expected = tokens + [0] * (max_length - len(tokens))
  for b in range(batch):
    np.testing.assert_array_equal(np.asarray(out.tokens[b, 0]), expected)
    assert int(out.lengths[b, 0]) == len(tokens)
    np.testing.assert_allclose(float(out.log_probs[b, 0]), log_prob, atol=1e-5)
