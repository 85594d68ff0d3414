"""Classic baselines: toy cases with known answers, ranks vs brute force, BM25 vs a numpy Lucene BM25,
SASRec catalogue scores vs `score_candidates`, TF-IDF query fold-in, and the workdir evaluation."""
import math
import types

import jax
import numpy as np
import pytest

from gensar_jax.config import load_config
from gensar_jax.data.negatives import BM25Index, bm25_tokenize
from gensar_jax.data.splits import TEST, TRAIN, VALID
from gensar_jax.embed import sasrec, tfidf
from gensar_jax.eval import baselines
from gensar_jax.io_utils import DataError, save_arrays


def _brute_force_ranks(scores, targets):
  """Per row, how many items score >= the target, minus one (a plain loop)."""
  out = []
  for row, target in zip(scores, targets):
    out.append(sum(1 for value in row if value >= row[target]) - 1)
  return np.array(out)


def test_catalogue_ranks_match_brute_force_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(30, 12)).astype(np.float32)  # many ties
  targets = rng.integers(0, 12, size=30)
  expected = _brute_force_ranks(scores, targets)
  np.testing.assert_array_equal(baselines.catalogue_ranks(scores, targets), expected)
  row_index = rng.integers(0, 5, size=30)
  shared = scores[:5]
  np.testing.assert_array_equal(baselines.catalogue_ranks_by_row(shared, row_index, targets),
                                _brute_force_ranks(shared[row_index], targets))


def test_popularity_order_and_pessimistic_ties():
  # Counts: item 0 -> 3, item 1 -> 1, item 2 -> 0, item 3 -> 1, item 4 -> 2.
  popularity = baselines.popularity_scores(np.array([0, 0, 0, 1, 3, 4, 4]), 5)
  np.testing.assert_array_equal(popularity, [3, 1, 0, 1, 2])
  candidates = np.array([[0, 1, 2], [4, 0, 2], [1, 3, 2], [2, 0, 1]])
  result = baselines.row_protocol_metrics(popularity[None], np.zeros(4, np.int64), candidates)
  # Sampled ranks: 0, 1, 1 (tie with item 3), 2. Full ranks: 0, 1, 3 (item 1 ties with 3), 4.
  assert result["sampled"]["HR@1"] == pytest.approx(0.25)
  assert result["sampled"]["NDCG@5"] == pytest.approx((1 + 2 / math.log2(3) + 1 / math.log2(4)) / 4)
  assert result["full"]["HR@1"] == pytest.approx(0.25)
  assert result["full"]["NDCG@5"] == pytest.approx(
      (1 + 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)) / 4)
  with pytest.raises(ValueError, match=r"\[0, 5\)"):
    baselines.popularity_scores(np.array([5]), 5)


def test_training_purchases_drop_held_out_events_of_both_tasks():
  # Rec events 0..6 buy items 10..16; search sessions click the purchases of rec events 1, 4 and 6.
  dataset = types.SimpleNamespace(rec_item=np.arange(10, 17), search_purchase=np.array([1, 4, 6]))
  rec = types.SimpleNamespace(event=np.array([2, 3, 5, 6]), split=np.array([TRAIN, TRAIN, VALID, TEST]))
  search = types.SimpleNamespace(event=np.array([0, 1, 2]), split=np.array([TRAIN, TEST, VALID]))
  items = baselines.training_purchase_items(dataset, {"rec": rec, "search": search})
  # Held out: rec events 5, 6 (rec validation/test) and 4, 6 (clicks of search sessions 1 and 2).
  np.testing.assert_array_equal(items, [10, 11, 12, 13])


def _numpy_lucene_bm25(docs, query, k1=0.9, b=0.4):
  """Reference Lucene BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)) times the saturated,
  length-normalized tf (Lucene drops Okapi's constant (k1 + 1) factor)."""
  tokens = [bm25_tokenize(d) for d in docs]
  num_docs = len(tokens)
  average = np.mean([len(t) for t in tokens])
  scores = np.zeros(num_docs)
  for term in set(bm25_tokenize(query)):
    df = sum(term in t for t in tokens)
    if df == 0:
      continue
    idf = math.log(1 + (num_docs - df + 0.5) / (df + 0.5))
    for i, doc in enumerate(tokens):
      tf = doc.count(term)
      scores[i] += idf * tf / (tf + k1 * (1 - b + b * len(doc) / average))
  return scores


def test_bm25_catalogue_scores_obvious_winner_and_reference():
  items = ["red apple fruit basket", "blue sports car model", "green apple pie recipe book",
           "office stapler black", "blue ink pen", "paper clips box of 100"]
  queries = ["blue car", "apple pie", "stapler", "nothing matches here"]
  scores = baselines.bm25_catalogue_scores(BM25Index(items), queries, batch_size=3)
  assert scores.shape == (4, 6)
  assert scores[:3].argmax(axis=1).tolist() == [1, 2, 3]
  reference = np.stack([_numpy_lucene_bm25(items, q) for q in queries])
  np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-6)
  assert (scores[3] == 0).all()
  # Both protocols: "blue car" -> item 1 first; the unmatched query's target ties with every item.
  candidates = np.array([[1, 4, 0], [5, 0, 1]])
  result = baselines.row_protocol_metrics(scores, np.array([0, 3]), candidates)
  assert result["sampled"]["HR@1"] == 0.5 and result["full"]["HR@1"] == 0.5
  assert result["sampled"]["HR@5"] == 1.0 and result["full"]["HR@5"] == 0.5  # full rank of item 5: 5


def test_cosine_scores_with_hand_set_embeddings():
  items = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
  queries = np.array([[0.0, 5.0], [2.0, 0.1], [1.0, 1.0]])
  scores = baselines.cosine_scores(queries, items)
  assert scores.argmax(axis=1).tolist() == [1, 0, 2]
  norms = np.linalg.norm(items, axis=1)
  reference = (queries @ items.T) / np.linalg.norm(queries, axis=1)[:, None] / np.where(norms > 0, norms, 1)
  np.testing.assert_allclose(scores, reference, rtol=1e-6)
  assert (scores[:, 3] == 0).all()


def test_tfidf_fold_in_maps_item_texts_onto_their_embeddings():
  items = ["red apple fruit basket", "blue sports car model", "green apple pie recipe book",
           "office stapler black", "blue ink pen", "paper clips box of 100", "black pen and red pen"]
  dim = 4
  item_embeddings = tfidf.tfidf_svd_embeddings(items, dim, seed=3)
  folded = baselines.tfidf_query_embeddings(items, items, dim, seed=3)
  np.testing.assert_allclose(folded, item_embeddings, atol=1e-5)
  queries = baselines.tfidf_query_embeddings(["blue car", "zzz unknown"], items, dim, seed=3)
  assert np.linalg.norm(queries[0]) == pytest.approx(1.0, abs=1e-5)
  assert (queries[1] == 0).all()


def _random_sasrec(num_items=15, max_len=6, seed=0):
  arch = dict(num_items=num_items, hidden_dim=8, num_blocks=1, num_heads=2, max_len=max_len)
  module = sasrec.SASRecModule(dropout=0.0, **arch)
  params = module.init(jax.random.PRNGKey(seed), np.zeros((1, max_len), np.int32))["params"]
  return sasrec.SASRecParams(params=params, **arch)


def test_sasrec_catalogue_scores_and_ranks():
  model = _random_sasrec()
  rng = np.random.default_rng(1)
  histories = sasrec.right_aligned([rng.integers(0, 15, size=n) for n in (1, 3, 6, 8, 2)], 7)
  scores = baselines.sasrec_catalogue_scores(model, histories, batch_size=2)
  assert scores.shape == (5, 15)
  candidates = rng.integers(0, 15, size=(5, 4))
  np.testing.assert_allclose(np.take_along_axis(scores, candidates, axis=1),
                             sasrec.score_candidates(model, histories, candidates, batch_size=4), rtol=1e-5,
                             atol=1e-6)
  targets = rng.integers(0, 15, size=5)
  np.testing.assert_array_equal(baselines.sasrec_catalogue_ranks(model, histories, targets, batch_size=3),
                                _brute_force_ranks(scores, targets))
  with pytest.raises(ValueError, match="targets"):
    baselines.sasrec_catalogue_ranks(model, histories, np.array([0, 1, 2, 3, 15]))


def test_format_table_lists_every_row():
  metrics = {"HR@1": 0.1, "HR@5": 0.2, "NDCG@5": 0.15, "HR@10": 0.3, "NDCG@10": 0.2}
  table = baselines.format_table({"popularity": {"rec": {"sampled": metrics, "full": metrics},
                                                 "search": {"sampled": metrics, "full": metrics}},
                                  "bm25": {"search": {"sampled": metrics, "full": metrics}}})
  assert len(table.splitlines()) == 2 + 6
  assert "| search | full | bm25 | 0.1000 | 0.2000 | 0.1500 | 0.3000 | 0.2000 |" in table


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
  from gensar_jax.stages import STAGES, run_stage
  workdir = tmp_path_factory.mktemp("baselines")
  config = load_config("tiny", [])
  run_stage(STAGES["prepare"], config, workdir)
  return workdir, config


def test_evaluate_baselines_prepare_only_methods_and_bad_input(tiny_prepared):
  workdir, config = tiny_prepared
  results = baselines.evaluate_baselines(workdir, config, split="validation", methods=["popularity", "bm25"])
  assert set(results) == {"popularity", "bm25"}
  assert set(results["popularity"]) == {"rec", "search"} and set(results["bm25"]) == {"search"}
  for per_task in results.values():
    for per_protocol in per_task.values():
      # Same scores, candidates a subset of the catalogue: the full rank is never better.
      for key in ("HR@1", "HR@5", "HR@10"):
        assert per_protocol["full"][key] <= per_protocol["sampled"][key]
  with pytest.raises(ValueError, match="unknown methods"):
    baselines.evaluate_baselines(workdir, config, methods=["random"])
  with pytest.raises(ValueError, match="split"):
    baselines.evaluate_baselines(workdir, config, split="train", methods=["popularity"])
  with pytest.raises(DataError, match="embed"):
    baselines.evaluate_baselines(workdir, config, methods=["sasrec"])


def test_evaluate_baselines_rejects_mismatched_negatives(tiny_prepared, tmp_path):
  from gensar_jax.data.prepare import load_prepared
  from gensar_jax.stages import output_dir
  prepared = load_prepared(output_dir(tiny_prepared[0], "prepare"))
  prepared.negatives["search_test"] = prepared.negatives["search_test"][:-1]
  with pytest.raises(DataError, match="search_test has shape"):
    baselines.split_inputs(prepared, "search", "test")


@pytest.mark.slow
def test_evaluate_baselines_on_tiny_workdir(tiny_prepared):
  from gensar_jax.io_utils import read_json
  from gensar_jax.stages import STAGES, output_dir, run_stage
  workdir, config = tiny_prepared
  run_stage(STAGES["embed"], config, workdir)
  results = baselines.evaluate_baselines(workdir, config, split="test")
  assert {m: set(t) for m, t in results.items()} == {
      "popularity": {"rec", "search"}, "bm25": {"search"}, "dense": {"search"}, "sasrec": {"rec"},
      "sasrec_bce": {"rec"}}
  for per_task in results.values():
    for per_protocol in per_task.values():
      assert set(per_protocol) == {"sampled", "full"}
      for metrics in per_protocol.values():
        assert set(metrics) == {"HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
  # The sampled SASRec numbers are the ones the embed stage reported on the same test candidates.
  expected = read_json(output_dir(workdir, "embed") / "stats.json")["sasrec"]["test"]
  for key, value in expected.items():
    assert results["sasrec"]["rec"]["sampled"][key] == pytest.approx(value)
  # Dense embeddings of the wrong width are reported with the file at fault.
  save_arrays(output_dir(workdir, "embed") / "embeddings.npz", semantic=np.zeros((3, 4), np.float32),
              collab=np.zeros((3, 4), np.float32))
  with pytest.raises(DataError, match="embeddings.npz"):
    baselines.evaluate_baselines(workdir, config, methods=["dense"])
