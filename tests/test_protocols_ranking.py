"""Evaluation protocols against an independent exhaustive ranking: every candidate (or catalogue
item) scored by teacher forcing with `T5.__call__`, ranked in numpy, HR/NDCG computed in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensar_jax.decode import trie as trie_lib
from gensar_jax.decode.beam_search import constrained_beam_search
from gensar_jax.eval import protocols
from gensar_jax.io_utils import DataError
from gensar_jax.model.decoding import T5Decoding
from gensar_jax.model.t5 import T5, T5Config, init_params

SP_VOCAB = 16
CODEBOOK = 3
VOCAB = SP_VOCAB + 3 + 6 * CODEBOOK
CONFIG = T5Config.tiny(VOCAB, dropout_rate=0.0)
NUM_ITEMS = 24
# Tokenizer layout: <rec_item>, <src_query>, <src_item> after SentencePiece, then 6 levels of codes;
# recommendation decodes collaborative IDs (levels 0, 1, 4, 5), search semantic IDs (levels 0-3).
ID_OFFSET = SP_VOCAB + 3
TASKS = {"recommendation": (SP_VOCAB, tuple(ID_OFFSET + l * CODEBOOK for l in (0, 1, 4, 5))),
         "search": (SP_VOCAB + 2, tuple(ID_OFFSET + l * CODEBOOK for l in (0, 1, 2, 3)))}


@pytest.fixture(scope="module")
def setup():
  params = jax.jit(lambda key: init_params(CONFIG, key))(jax.random.key(1))
  params = jax.tree.map(lambda p: p * 2.0, params)           # sharper, tie-free scores
  rng = np.random.default_rng(0)
  # Distinct identifiers (no ties), many shared prefixes: 24 of the 81 four-code IDs.
  all_ids = np.stack(np.meshgrid(*[np.arange(CODEBOOK)] * 4, indexing="ij"), -1).reshape(-1, 4)
  codes = all_ids[rng.choice(len(all_ids), NUM_ITEMS, replace=False)]
  enc = rng.integers(2, SP_VOCAB, size=(7, 6)).astype(np.int32)
  targets = rng.integers(0, NUM_ITEMS, size=7)
  candidates = np.stack([np.r_[t, rng.choice(np.delete(np.arange(NUM_ITEMS), t), 5, replace=False)]
                         for t in targets])
  return params, codes, enc, targets, candidates


def teacher_forced_item_scores(params, enc, codes, behaviour, offsets):
  """float64[n, num_items]: sequence log-prob of every item's identifier for every query."""
  tokens = np.concatenate([np.full((len(codes), 1), behaviour), codes + np.asarray(offsets)], axis=1)
  decoder_inputs = np.concatenate([np.zeros((len(codes), 1), np.int64), tokens[:, :-1]], axis=1)
  forward = jax.jit(lambda e, d: jax.nn.log_softmax(T5(CONFIG).apply({"params": params}, e, d), axis=-1))
  scores = []
  for row in enc:
    log_probs = np.asarray(forward(jnp.asarray(np.repeat(row[None], len(codes), 0)), jnp.asarray(decoder_inputs)),
                           np.float64)
    scores.append(np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0].sum(-1))
  return np.stack(scores)


def numpy_metrics(ranks):
  hit = lambda k: np.mean([0 <= r < k for r in ranks])
  ndcg = lambda k: np.mean([1 / np.log2(r + 2) if 0 <= r < k else 0.0 for r in ranks])
  return {"HR@1": hit(1), "HR@5": hit(5), "HR@10": hit(10), "NDCG@5": ndcg(5), "NDCG@10": ndcg(10)}


@pytest.mark.parametrize("task", ["recommendation", "search"])
def test_sampled_protocol_with_wide_beam_is_the_exhaustive_ranking(setup, task):
  params, codes, enc, targets, candidates = setup
  behaviour, offsets = TASKS[task]
  metrics, ranks = protocols.evaluate_ranking(params, CONFIG, enc, targets, codes, behaviour, offsets, CODEBOOK,
                                              candidates, num_beams=6, batch_size=3)
  scores = teacher_forced_item_scores(params, enc, codes, behaviour, offsets)
  expected = np.array([(scores[q, candidates[q]] > scores[q, targets[q]]).sum() for q in range(len(enc))])
  np.testing.assert_array_equal(ranks, expected)
  for key, value in numpy_metrics(expected).items():
    assert metrics[key] == pytest.approx(value)


def test_full_catalogue_protocol_with_wide_beam_is_the_exhaustive_ranking(setup):
  params, codes, enc, targets, _ = setup
  behaviour, offsets = TASKS["search"]
  metrics, ranks = protocols.evaluate_ranking(params, CONFIG, enc, targets, codes, behaviour, offsets, CODEBOOK,
                                              None, num_beams=NUM_ITEMS, batch_size=4)
  scores = teacher_forced_item_scores(params, enc, codes, behaviour, offsets)
  expected = (scores > scores[np.arange(len(enc)), targets][:, None]).sum(axis=1)
  np.testing.assert_array_equal(ranks, expected)
  for key, value in numpy_metrics(expected).items():
    assert metrics[key] == pytest.approx(value)


def test_target_outside_the_beams_is_a_miss(setup):
  params, codes, enc, targets, candidates = setup
  behaviour, offsets = TASKS["recommendation"]
  _, ranks = protocols.evaluate_ranking(params, CONFIG, enc, targets, codes, behaviour, offsets, CODEBOOK,
                                        candidates, num_beams=2, batch_size=4)
  # The same queries decoded directly: rank = position among the two beams' items, else -1.
  tables = trie_lib.build_candidate_tries(candidates, codes, behaviour, offsets, CODEBOOK)
  items = np.asarray(constrained_beam_search(params, T5Decoding(CONFIG), enc, tables, num_beams=2).items)
  expected = [list(items[q]).index(t) if t in items[q] else -1 for q, t in enumerate(targets)]
  np.testing.assert_array_equal(ranks, expected)
  assert (ranks == -1).any() and (ranks >= 0).any() and ranks.max() <= 1


def test_bad_inputs_are_rejected(setup):
  params, codes, enc, targets, candidates = setup
  behaviour, offsets = TASKS["search"]
  shifted = candidates.copy()
  shifted[2] = (shifted[2] + 1) % NUM_ITEMS                       # row 2 loses its ground truth ...
  shifted[2, shifted[2] == targets[2]] = (targets[2] + 2) % NUM_ITEMS  # ... for sure
  with pytest.raises(DataError, match=r"ground truth is missing from 1 candidate lists \(first rows \[2\]\)"):
    protocols.evaluate_ranking(params, CONFIG, enc, targets, codes, behaviour, offsets, CODEBOOK, shifted)
  with pytest.raises(DataError, match=r"targets: expected int\[7\]"):
    protocols.evaluate_ranking(params, CONFIG, enc, targets[:3], codes, behaviour, offsets, CODEBOOK)
  with pytest.raises(DataError, match="targets: item ids must lie in"):
    protocols.evaluate_ranking(params, CONFIG, enc, targets + NUM_ITEMS, codes, behaviour, offsets, CODEBOOK)


@pytest.mark.slow
@pytest.mark.parametrize("sampled", [True, False])
def test_protocols_sharded_over_data_axis_match_single_device(setup, sampled):
  params, codes, enc, targets, candidates = setup
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  behaviour, offsets = TASKS["search"]
  lists = candidates if sampled else None
  single = protocols.evaluate_ranking(params, CONFIG, enc, targets, codes, behaviour, offsets, CODEBOOK, lists,
                                      num_beams=4, batch_size=8)
  sharded = protocols.evaluate_ranking(params, CONFIG, enc, targets, codes, behaviour, offsets, CODEBOOK, lists,
                                       num_beams=4, batch_size=8, mesh=mesh)
  np.testing.assert_array_equal(sharded[1], single[1])
  assert sharded[0] == single[0]
