"""Constrained beam search against independent references: teacher-forced scoring of every
candidate with `T5.__call__`, brute-force trie membership, and Hugging Face `generate`."""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensar_jax.decode import trie as trie_lib
from gensar_jax.decode.beam_search import constrained_beam_search
from gensar_jax.model.decoding import T5Decoding
from gensar_jax.model.t5 import T5, T5Config, init_params

SP_VOCAB = 20
BEHAVIOUR = SP_VOCAB + 1              # `<src_query>` position; any behaviour token works
ID_OFFSET = SP_VOCAB + 3
CODEBOOK = 4
VOCAB = ID_OFFSET + 6 * CODEBOOK       # 47
OFFSETS = tuple(ID_OFFSET + level * CODEBOOK for level in (0, 1, 2, 3))   # shared_a, shared_b, semantic_a, semantic_b
CONFIG = T5Config.tiny(VOCAB, dropout_rate=0.0)


@pytest.fixture(scope="module")
def params():
  return jax.jit(lambda key: init_params(CONFIG, key))(jax.random.key(0))


def encoder_tokens(batch, length=7, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, VOCAB, size=(batch, length)).astype(np.int32)
  tokens[0, length - 2:] = 0            # padding in one row
  return tokens


def identifier_tokens(codes):
  """int[..., L] codes -> int[..., 1 + L] decoded tokens (behaviour token first)."""
  codes = np.asarray(codes)
  tokens = codes + np.asarray(OFFSETS)
  behaviour = np.full(codes.shape[:-1] + (1,), BEHAVIOUR)
  return np.concatenate([behaviour, tokens], axis=-1)


@jax.jit
def _teacher_forced_log_probs(params, enc, decoder_inputs):
  logits = T5(CONFIG).apply({"params": params}, enc, decoder_inputs)
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def reference_scores(params, enc, targets, chunk=32):
  """Teacher-forced sum of log-probs with `T5.__call__`: enc int[1, S], targets int[C, T] -> float64[C].

  Targets are scored in fixed chunks of 32 rows so that one compiled forward serves every test."""
  targets = np.asarray(targets)
  padded = np.concatenate([targets, np.repeat(targets[:1], -len(targets) % chunk, axis=0)])
  decoder_inputs = np.concatenate([np.zeros((len(padded), 1), np.int32), padded[:, :-1]], axis=1)
  scores = []
  for i in range(0, len(padded), chunk):
    log_probs = np.asarray(_teacher_forced_log_probs(
        params, jnp.asarray(np.repeat(enc, chunk, axis=0)), jnp.asarray(decoder_inputs[i:i + chunk], jnp.int32)))
    picked = np.take_along_axis(log_probs, padded[i:i + chunk, :, None], axis=-1)[..., 0]
    scores.append(picked.astype(np.float64).sum(-1))
  return np.concatenate(scores)[:len(targets)]


def check_against_reference(params, enc, out, codes, candidate_rows, num_beams):
  """Every result is a candidate, scored as teacher forcing scores it, best first; exact when
  num_beams >= the number of distinct identifiers."""
  items = np.asarray(out.items)
  item_scores = np.asarray(out.item_scores)
  for b, candidates in enumerate(candidate_rows):
    candidates = sorted(set(int(c) for c in candidates if c >= 0))
    found = items[b][items[b] >= 0]
    assert set(found) <= set(candidates)
    assert np.all(np.isneginf(item_scores[b][items[b] < 0]))
    assert np.all(items[b][len(found):] == -1), "padding must follow the results"
    num_ids = len({tuple(codes[c]) for c in candidates})
    expected = reference_scores(params, enc[b:b + 1], identifier_tokens(codes[candidates]))
    by_item = dict(zip(candidates, expected))
    np.testing.assert_allclose(item_scores[b][:len(found)], [by_item[i] for i in found], atol=2e-4)
    assert np.all(np.diff(item_scores[b][:len(found)]) <= 1e-6)
    num_found_ids = len({tuple(codes[i]) for i in found})
    assert num_found_ids == min(num_beams, num_ids)
    if num_beams >= num_ids:          # exhaustive: every candidate, ranked as teacher forcing ranks them
      assert sorted(found) == candidates
      np.testing.assert_allclose(np.sort(item_scores[b][:len(found)])[::-1], np.sort(expected)[::-1], atol=2e-4)


def test_exhaustive_beam_equals_teacher_forcing_on_candidate_lists(params):
  rng = np.random.default_rng(1)
  codes = rng.integers(0, CODEBOOK, size=(30, 4))
  codes[1, :3] = codes[0, :3]                  # shares a 3-code prefix with item 0
  codes[1, 3] = (codes[0, 3] + 1) % CODEBOOK
  codes[2] = codes[0]                          # shares the whole identifier with item 0
  codes[3, :1] = codes[0, :1]
  candidates = np.stack([rng.permutation(30)[:8] for _ in range(3)])
  candidates[0, :4] = [0, 1, 2, 3]
  candidates[1, -2:] = -1                      # shorter list
  tables = trie_lib.build_candidate_tries(candidates, codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  enc = encoder_tokens(3)
  out = constrained_beam_search(params, T5Decoding(CONFIG), enc, tables, num_beams=8)
  check_against_reference(params, enc, out, codes, candidates, num_beams=8)
  # Items sharing an identifier: adjacent, ascending, same score.
  row = list(np.asarray(out.items[0]))
  assert row.index(2) == row.index(0) + 1
  assert out.item_scores[0, row.index(0)] == out.item_scores[0, row.index(2)]
  # Sequences spell the identifiers of the items.
  for k in range(8):
    seq = np.asarray(out.sequences[2, k])
    if seq[0] >= 0:
      assert any(np.array_equal(seq, identifier_tokens(codes[c])) for c in candidates[2])


def test_without_behaviour_token_the_trie_starts_at_the_first_code(params):
  """A model trained without behaviour tokens decodes codes from position 0 (no forced
  `<rec_item>`/`<src_item>`), scored as teacher forcing scores the bare identifier."""
  rng = np.random.default_rng(11)
  codes = rng.integers(0, CODEBOOK, size=(20, 4))
  candidates = np.stack([rng.permutation(20)[:9] for _ in range(2)])
  tables = trie_lib.build_candidate_tries(candidates, codes, trie_lib.NO_BEHAVIOUR_TOKEN, OFFSETS, CODEBOOK)
  enc = encoder_tokens(2, seed=11)
  out = constrained_beam_search(params, T5Decoding(CONFIG), enc, tables, num_beams=9)
  assert out.sequences.shape == (2, 9, 4)
  for b in range(2):
    rows = sorted(set(candidates[b].tolist()))
    expected = reference_scores(params, enc[b:b + 1], codes[rows] + np.asarray(OFFSETS))
    items = np.asarray(out.items[b])
    found = items[items >= 0]
    assert sorted(found.tolist()) == rows
    np.testing.assert_allclose(np.asarray(out.item_scores[b])[:len(found)],
                               [dict(zip(rows, expected))[i] for i in found], atol=2e-4)
    for k in range(9):
      seq = np.asarray(out.sequences[b, k])
      assert (seq < 0).all() or any(np.array_equal(seq, codes[c] + np.asarray(OFFSETS)) for c in rows)


def test_level_with_fewer_prefixes_than_beams(params):
  # One first code for everybody, three identifiers, five beams: two empty beams, never reported.
  codes = np.array([[1, 0, 2, 3], [1, 0, 2, 0], [1, 3, 3, 3], [1, 3, 3, 3]])
  tables = trie_lib.build_catalogue_trie(codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  enc = encoder_tokens(2)
  out = constrained_beam_search(params, T5Decoding(CONFIG), enc, tables, num_beams=5)
  check_against_reference(params, enc, out, codes, [np.arange(4)] * 2, num_beams=5)
  assert np.all(np.asarray(out.items)[:, 4:] == -1)
  assert np.all(np.isneginf(np.asarray(out.sequence_scores)[:, 3:]))
  assert np.all(np.asarray(out.sequences)[:, 3:] == -1)


def test_narrow_beam_keeps_the_best_hypotheses(params):
  # Beam 3 over 40 items: results are a subset, scored exactly, and their count is the beam width.
  rng = np.random.default_rng(3)
  codes = rng.integers(0, CODEBOOK, size=(40, 4))
  tables = trie_lib.build_catalogue_trie(codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  enc = encoder_tokens(2, seed=3)
  out = constrained_beam_search(params, T5Decoding(CONFIG), enc, tables, num_beams=3)
  check_against_reference(params, enc, out, codes, [np.arange(40)] * 2, num_beams=3)


@hypothesis.settings(max_examples=10, deadline=None, derandomize=True)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), num_items=st.integers(1, 25), num_beams=st.sampled_from([2, 6]))
def test_decoded_ids_are_candidates_property(params, seed, num_items, num_beams):
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, CODEBOOK, size=(num_items, 4))
  candidates = rng.integers(-1, num_items, size=(2, 6))
  model_params = jax.tree.map(lambda p: p * rng.uniform(0.5, 3.0), params)   # random logits
  tables = trie_lib.build_candidate_tries(candidates, codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  enc = encoder_tokens(2, seed=seed % 1000)
  out = constrained_beam_search(model_params, T5Decoding(CONFIG), enc, tables, num_beams=num_beams)
  check_against_reference(model_params, enc, out, codes, candidates, num_beams)


def _sharded_matches_single_device(params, catalogue: bool):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(4)
  codes = rng.integers(0, CODEBOOK, size=(50, 4))
  candidates = rng.integers(0, 50, size=(8, 10))
  enc = encoder_tokens(8, seed=4)
  if catalogue:
    tables = trie_lib.build_catalogue_trie(codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  else:
    tables = trie_lib.build_candidate_tries(candidates, codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  single = constrained_beam_search(params, T5Decoding(CONFIG), enc, tables, num_beams=4)
  sharded = constrained_beam_search(params, T5Decoding(CONFIG), enc, tables, num_beams=4, mesh=mesh)
  assert len(sharded.items.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(sharded.items), np.asarray(single.items))
  np.testing.assert_allclose(np.asarray(sharded.item_scores), np.asarray(single.item_scores), atol=1e-5)


def test_per_example_tries_sharded_over_data_axis_match_single_device(params):
  _sharded_matches_single_device(params, catalogue=False)


@pytest.mark.slow
def test_catalogue_trie_replicated_over_data_axis_matches_single_device(params):
  _sharded_matches_single_device(params, catalogue=True)


def test_bad_arguments_are_rejected(params):
  codes = np.zeros((2, 4), np.int32)
  tables = trie_lib.build_candidate_tries(np.array([[0], [1], [0]]), codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  with pytest.raises(ValueError, match="3 tries for a batch of 2"):
    constrained_beam_search(params, T5Decoding(CONFIG), encoder_tokens(2), tables)
  with pytest.raises(ValueError, match="encoder_tokens"):
    constrained_beam_search(params, T5Decoding(CONFIG), np.zeros(5, np.int32), tables)


def hf_tiny_t5(config, seed):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(seed)
  hf_config = transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
      num_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
      num_heads=config.num_heads, relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance, dropout_rate=0.0,
      feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0,
      eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  with torch.no_grad():                        # sharper logits than the default init, fewer near-ties
    model.shared.weight.mul_(4.0)
  return model


def test_parity_with_hugging_face_generate():
  torch = pytest.importorskip("torch")
  from gensar_jax.model.hf_import import params_from_hf_state_dict
  model = hf_tiny_t5(CONFIG, seed=5)
  params = params_from_hf_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, CONFIG)
  rng = np.random.default_rng(5)
  codes = rng.integers(0, CODEBOOK, size=(60, 4))
  candidates = np.stack([rng.permutation(60)[:25] for _ in range(3)])
  enc = encoder_tokens(3, length=9, seed=5)
  num_beams = 6
  tables = trie_lib.build_candidate_tries(candidates, codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  ours = constrained_beam_search(params, T5Decoding(CONFIG), enc, tables, num_beams=num_beams)

  # prefix_allowed_tokens_fn over per-example dicts {decoded prefix: allowed next tokens}.
  allowed = []
  for row in candidates:
    table = {}
    for seq in identifier_tokens(codes[row]):
      seq = (0,) + tuple(int(t) for t in seq)
      for i in range(1, len(seq)):
        table.setdefault(seq[:i], set()).add(seq[i])
    allowed.append({k: sorted(v) for k, v in table.items()})

  def prefix_allowed_tokens_fn(batch_id, input_ids):
    return allowed[batch_id].get(tuple(input_ids.tolist()), [])

  with torch.no_grad():
    hf = model.generate(
        input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc != 0),
        num_beams=num_beams, num_return_sequences=num_beams, max_new_tokens=5, do_sample=False,
        length_penalty=0.0, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, output_scores=True,
        return_dict_in_generate=True)
  hf_sequences = hf.sequences.numpy()[:, 1:].reshape(3, num_beams, 5)
  hf_scores = hf.sequences_scores.numpy().reshape(3, num_beams)
  np.testing.assert_array_equal(np.asarray(ours.sequences), hf_sequences)
  np.testing.assert_allclose(np.asarray(ours.sequence_scores), hf_scores, atol=2e-4)


@pytest.mark.slow
def test_bfloat16_compute_decodes_valid_ids_with_close_scores(params):
  rng = np.random.default_rng(6)
  codes = rng.integers(0, CODEBOOK, size=(20, 4))
  candidates = rng.integers(0, 20, size=(2, 8))
  tables = trie_lib.build_candidate_tries(candidates, codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  enc = encoder_tokens(2, seed=6)
  bf16 = constrained_beam_search(params, T5Decoding(CONFIG.replace(dtype="bfloat16")), enc, tables, num_beams=8)
  for b in range(2):
    found = np.asarray(bf16.items[b])
    found = found[found >= 0]
    assert set(found) == set(candidates[b])            # beam 8 >= candidates: all of them
    expected = reference_scores(params, enc[b:b + 1], identifier_tokens(codes[found]))
    np.testing.assert_allclose(np.asarray(bf16.item_scores[b])[:len(found)], expected, atol=0.15)
