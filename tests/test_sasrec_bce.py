"""SASRec's binary cross-entropy with sampled unseen negatives (embed.sasrec.loss=bce): a numpy reference of
the loss, the sampler against enumeration and counts, and training on a cyclic walk."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensar_jax.config import load_config
from gensar_jax.embed import sasrec

from test_embed_sasrec import NUM_ITEMS, _cyclic_sequences, _tiny_cfg


def _numpy_bce(hidden, table, targets, negatives):
  """SASRec (Kang & McAuley) BCE as its reference code computes it: BCEWithLogits(pos logits, 1) averaged
  over valid positions plus BCEWithLogits(neg logits, 0) averaged over valid (position, negative) pairs."""
  sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
  valid = targets > 0
  pos = np.einsum("bwd,bwd->bw", hidden, table[targets])[valid]
  neg = np.einsum("bwd,bwkd->bwk", hidden, table[negatives])[valid]
  return -np.log(sigmoid(pos)).mean() - np.log(1.0 - sigmoid(neg)).mean()


@pytest.mark.parametrize("num_negatives", [1, 3])
def test_bce_loss_matches_numpy_reference(num_negatives):
  rng = np.random.default_rng(0)
  b, w, d, n = 3, 5, 4, 9
  hidden = rng.normal(size=(b, w, d)).astype(np.float32)
  table = rng.normal(size=(n + 1, d)).astype(np.float32)
  targets = rng.integers(1, n + 1, (b, w)).astype(np.int32)
  targets[0, :2] = 0                       # left padding
  negatives = rng.integers(1, n + 1, (b, w, num_negatives)).astype(np.int32)
  losses = np.asarray(sasrec.sampled_bce_losses(jnp.asarray(hidden), jnp.asarray(table), jnp.asarray(targets),
                                                jnp.asarray(negatives)))
  weights = targets > 0
  ours = (losses * weights).sum() / weights.sum()
  np.testing.assert_allclose(ours, _numpy_bce(hidden, table, targets, negatives), rtol=1e-5)


def test_bce_training_loss_is_the_reference_loss_on_the_model_states():
  """`_loss_fn` with loss=bce: the model's states and embedding table through the numpy reference."""
  arch = dict(num_items=NUM_ITEMS, hidden_dim=16, num_blocks=2, num_heads=2, max_len=10)
  module = sasrec.SASRecModule(dropout=0.0, **arch)
  params = module.init(jax.random.PRNGKey(0), np.zeros((1, 10), np.int32))["params"]
  rng = np.random.default_rng(1)
  tokens = rng.integers(1, NUM_ITEMS + 1, (4, 6)).astype(np.int32)
  tokens[1, :3] = 0
  targets = np.where(tokens > 0, rng.integers(1, NUM_ITEMS + 1, tokens.shape), 0).astype(np.int32)
  negatives = rng.integers(1, NUM_ITEMS + 1, (4, 6, 2)).astype(np.int32)
  loss, _ = sasrec._loss_fn(params, module, tokens, targets, negatives, jax.random.PRNGKey(0), "bce")
  hidden = np.asarray(module.apply({"params": params}, tokens))
  table = np.asarray(params["item_embedding"]["embedding"])
  np.testing.assert_allclose(float(loss), _numpy_bce(hidden, table, targets, negatives), rtol=1e-5)


def test_sample_unseen_enumerates_the_complement_and_is_uniform():
  num_items = 12
  seen_lists = [[0, 3, 4, 11], [5], [], list(range(1, 12))]
  seen = np.full((len(seen_lists), 11), 2**30, np.int32)
  for row, items in enumerate(seen_lists):
    seen[row, :len(items)] = items
  draws = np.asarray(sasrec.sample_unseen(jax.random.PRNGKey(0), jnp.asarray(seen), num_items, (4000,)))
  for row, items in enumerate(seen_lists):
    complement = sorted(set(range(num_items)) - set(items))
    counts = np.bincount(draws[row], minlength=num_items)
    assert set(np.flatnonzero(counts)) == set(complement)          # never a seen item, every unseen one
    expected = 4000 / len(complement)
    assert np.abs(counts[complement] - expected).max() < 5 * np.sqrt(expected)


def test_window_seen_items_match_the_training_windows():
  sequences = [np.array([3, 1, 3]), np.array([7]), np.array([2, 5, 2, 9, 5])]
  seen = sasrec.window_seen_items(sequences)
  inputs, _ = sasrec.training_windows(sequences, 10, 4)
  assert seen.shape[0] == inputs.shape[0] == 2
  np.testing.assert_array_equal(seen[0, :2], [1, 3])
  np.testing.assert_array_equal(seen[1, :3], [2, 5, 9])
  assert (seen[0, 2:] >= 2**30).all()


def test_bce_training_learns_successor_pattern():
  rng = np.random.default_rng(0)
  sequences = _cyclic_sequences(200, NUM_ITEMS, rng)
  cfg = _tiny_cfg(epochs=12, loss="bce")
  result = sasrec.evaluate_sasrec_leave_one_out(sequences, NUM_ITEMS, cfg, seed=0, num_negatives=20,
                                                progress=False)
  assert result["test"]["HR@1"] > 0.5, result["test"]


def test_bce_loss_falls_and_differs_from_softmax(caplog):
  rng = np.random.default_rng(1)
  sequences = _cyclic_sequences(64, NUM_ITEMS, rng)
  with caplog.at_level("INFO", logger="gensar_jax.embed.sasrec"):
    bce = sasrec.train_sasrec(sequences, NUM_ITEMS, _tiny_cfg(epochs=4, loss="bce"), seed=0, progress=False)
  losses = [float(r.getMessage().split("loss ")[1].split(",")[0]) for r in caplog.records if r.getMessage().startswith("sasrec epoch")]
  assert len(losses) == 4 and losses[-1] < losses[0]
  softmax = sasrec.train_sasrec(sequences, NUM_ITEMS, _tiny_cfg(epochs=4), seed=0, progress=False)
  assert not np.allclose(sasrec.item_embeddings(bce), sasrec.item_embeddings(softmax))
  with pytest.raises(ValueError, match=r"embed.sasrec.loss='bpr': expected one of \['softmax', 'bce'\]"):
    load_config("tiny", ["embed.sasrec.loss=bpr"])             # refused when the config loads


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_plan_lowers_the_train_step_of_either_loss(loss):
  from gensar_jax.plan.lowering import lower_sasrec_step
  lowered = lower_sasrec_step(_tiny_cfg(loss=loss), NUM_ITEMS, 8, jax.devices()[0])
  assert lowered.compile() is not None
