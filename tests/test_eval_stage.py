"""The eval stage, the validation hook and model export, against independent references: every
identifier scored by teacher forcing with `T5.__call__`, ranked pessimistically in numpy."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from workdir_fixtures import committed_stage

from gensar_jax import parallel
from gensar_jax.config import check_config, load_config
from gensar_jax.data.task_data import load_task_data
from gensar_jax.eval import stage
from gensar_jax.data.pipeline import subset_rows
from gensar_jax.eval.metrics import MISS, ranks_by_identifier, ranks_from_retrieved
from gensar_jax.io_utils import DataError, save_arrays
from gensar_jax.model import export
from gensar_jax.model.t5 import T5, T5Config, init_params

NUM_ROWS = 5      # evaluation rows per task (the last ones of the split)
BATCH_SIZE = 3    # the last batch is padded


# --------------------------------------------------------------------------------------------------
# Pessimistic ties in ranks_from_retrieved
# --------------------------------------------------------------------------------------------------

def test_ranks_from_retrieved_counts_ties_pessimistically():
  retrieved = np.array([[5, 3, 7, 9, -1], [5, 3, 7, 9, -1], [5, 3, 7, 9, -1], [5, 3, 7, 9, -1]])
  scores = np.array([[-1.0, -2.0, -2.0, -2.0, -np.inf]] * 4)
  targets = np.array([3, 5, 9, 4])
  np.testing.assert_array_equal(ranks_from_retrieved(retrieved, targets), [1, 0, 3, MISS])
  np.testing.assert_array_equal(ranks_from_retrieved(retrieved, targets, scores), [3, 0, 3, MISS])
  with pytest.raises(ValueError, match="scores"):
    ranks_from_retrieved(retrieved, targets, scores[:, :3])


def test_ranks_from_retrieved_matches_a_loop_over_random_tied_lists():
  rng = np.random.default_rng(0)
  for _ in range(50):
    k = int(rng.integers(1, 12))
    scores = -np.sort(rng.integers(0, 4, size=k)).astype(np.float64)     # descending, many ties
    retrieved = rng.permutation(20)[:k]
    target = int(rng.integers(0, 20))
    expected = MISS
    if target in retrieved:
      position = int(np.flatnonzero(retrieved == target)[0])
      expected = max(j for j in range(k) if scores[j] == scores[position])
    assert ranks_from_retrieved(retrieved[None], np.array([target]), scores[None])[0] == expected


def test_ranks_by_identifier_counts_one_position_per_identifier():
  retrieved = np.array([[5, 3, 7, 9, -1]] * 4)
  beams = np.array([[0, 1, 1, 2, -1]] * 4)           # 3 and 7 share the second identifier
  targets = np.array([3, 7, 9, 4])
  np.testing.assert_array_equal(ranks_by_identifier(retrieved, beams=beams, targets=targets), [1, 1, 2, MISS])
  with pytest.raises(ValueError, match="beams"):
    ranks_by_identifier(retrieved, targets, beams[:, :3])


def test_subset_rows_most_recent_and_seeded_random():
  time = np.array([5, 1, 9, 9, 3, 7])
  np.testing.assert_array_equal(subset_rows(time, 3, "most_recent"), [2, 3, 5])
  np.testing.assert_array_equal(subset_rows(time, 10, "most_recent"), np.arange(6))
  a, b = subset_rows(time, 3, "random", seed=4), subset_rows(time, 3, "random", seed=4)
  np.testing.assert_array_equal(a, b)
  assert len(set(a.tolist())) == 3 and (np.diff(a) > 0).all()
  picks = {tuple(subset_rows(time, 3, "random", seed=s)) for s in range(20)}
  assert len(picks) > 5
  with pytest.raises(ValueError, match="most_recent"):
    subset_rows(time, 3, "latest")


# --------------------------------------------------------------------------------------------------
# Model export
# --------------------------------------------------------------------------------------------------

def _params_equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


def test_save_and_load_round_trip(tmp_path):
  config = T5Config.tiny(40, feed_forward="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
  params = init_params(config, jax.random.key(3))
  directory = tmp_path / "train" / "model"
  export.save_model(directory, params, config, {"step": 7, "val/ndcg5_mean": 0.25})
  loaded, loaded_config = export.load_model(directory)
  assert loaded_config == config
  assert _params_equal(params, loaded)
  assert export.load_model_extra(directory) == {"step": 7, "val/ndcg5_mean": 0.25}

  # Replacing a model leaves only the new one (no staging or old copies beside it).
  doubled = jax.tree.map(lambda x: 2 * x, params)
  export.save_model(directory, doubled, config)
  loaded, _ = export.load_model(directory)
  assert _params_equal(doubled, loaded)
  assert export.load_model_extra(directory) == {}
  assert sorted(p.name for p in directory.parent.iterdir()) == ["model"]

  # Onto a mesh: laid out by logical axes ("vocab", "mlp", "heads" -> model), same values.
  mesh = parallel.make_mesh({"data": 4, "model": 2})
  sharded, _ = export.load_model(directory, mesh)
  assert _params_equal(doubled, sharded)
  embedding = sharded["token_embedder"]
  assert embedding.sharding.mesh.shape == mesh.shape
  assert embedding.sharding.shard_shape(embedding.shape) == (config.vocab_size // 2, config.d_model)


def test_missing_or_broken_model_is_a_clear_error(tmp_path):
  with pytest.raises(DataError, match="gensar train"):
    export.load_model(tmp_path / "train" / "model")
  config = T5Config.tiny(40)
  export.save_model(tmp_path / "model", init_params(config, jax.random.key(0)), config)
  config_file = tmp_path / "model" / export.CONFIG_FILE
  fields = json.loads(config_file.read_text())
  config_file.write_text(json.dumps({**fields, "d_modle": 8}))
  with pytest.raises(DataError, match="d_modle"):
    export.load_model(tmp_path / "model")
  config_file.write_text(json.dumps({**fields, "d_model": 48}))   # params no longer match the config
  with pytest.raises(DataError, match="do not match"):
    export.load_model(tmp_path / "model")


# --------------------------------------------------------------------------------------------------
# evaluate_model on a tiny workdir with random parameters
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tiny_prepared, tmp_path_factory):
  """A workdir with the tiny prepared dataset, identifiers in which items collide (ties) and a random model.

  Identifiers take 3 values per level (81 IDs for ~200 items); the collaborative table is the
  semantic one with items permuted, so both catalogue tries have the same shapes (one compiled
  search) while every item has different identifiers in the two views.
  """
  workdir = tmp_path_factory.mktemp("eval_stage")
  committed_stage(workdir, "prepare", linked_to=tiny_prepared.directory)
  config = load_config("tiny")
  rng = np.random.default_rng(0)
  num_items = tiny_prepared.dataset.num_items
  base = rng.integers(0, 3, size=(num_items, 4)).astype(np.int32)
  permutation = rng.permutation(num_items)
  task_data = load_task_data(workdir, config, {"semantic": base, "collab": base[permutation]})
  # Every other evaluated row: its first negative gets the target's identifier.
  for task, index in (("rec", permutation), ("search", np.arange(num_items))):
    queries = stage.eval_queries(task_data, task, "test", NUM_ROWS)
    for row in range(0, NUM_ROWS, 2):
      base[index[queries.candidates[row, 1]]] = base[index[queries.targets[row]]]
  save_arrays(committed_stage(workdir, "index") / "codes.npz", semantic_codes=base, collab_codes=base[permutation])

  task_data = load_task_data(workdir, config)
  model_cfg = T5Config.tiny(task_data.vocab_size, dropout_rate=0.0)
  params = jax.jit(lambda key: init_params(model_cfg, key))(jax.random.key(1))
  params = jax.tree.map(lambda p: p * 2.0, params)     # sharper scores: no accidental float ties
  export.save_model(committed_stage(workdir, "train") / "model", params, model_cfg, {"step": 12})
  return workdir


@pytest.fixture(scope="module")
def model(workdir):
  """(task_data, model_cfg, params) as the eval stage loads them (the same compiled searches)."""
  params, model_cfg = export.load_model(workdir / "train" / "run-test" / "model")
  return load_task_data(workdir, load_config("tiny")), model_cfg, params


def teacher_forced_scores(params, model_cfg, encoder_tokens, codes, behaviour, offsets):
  """float64[n, num_items]: log-prob of `behaviour` + each item's identifier, one score per distinct ID."""
  unique, item_to_unique = np.unique(codes, axis=0, return_inverse=True)
  targets = np.concatenate([np.full((len(unique), 1), behaviour), unique + offsets], axis=1)
  decoder_inputs = np.concatenate([np.zeros((len(unique), 1), np.int64), targets[:, :-1]], axis=1)
  forward = jax.jit(lambda e, d: jax.nn.log_softmax(T5(model_cfg).apply({"params": params}, e, d), axis=-1))
  scores = []
  for row in encoder_tokens:
    log_probs = np.asarray(forward(jnp.asarray(np.repeat(row[None], len(unique), 0)), jnp.asarray(decoder_inputs)),
                           np.float64)
    scores.append(np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0].sum(-1))
  return np.stack(scores)[:, item_to_unique.reshape(-1)]


def pessimistic_ranks(scores, targets, candidates=None):
  """0-based rank: distinct candidates (all items when None) scoring >= the target, minus one."""
  ranks = []
  for q, target in enumerate(targets):
    pool = np.unique(candidates[q]) if candidates is not None else np.arange(scores.shape[1])
    ranks.append(int((scores[q, pool] >= scores[q, target]).sum()) - 1)
  return np.array(ranks)


def identifier_ranks(scores, targets, codes, candidates=None):
  """0-based rank of the target's identifier: distinct identifiers of the pool scoring above it (the
  reference's rule: one position per identifier)."""
  ranks = []
  for q, target in enumerate(targets):
    pool = np.unique(candidates[q]) if candidates is not None else np.arange(scores.shape[1])
    _, first = np.unique(codes[pool], axis=0, return_index=True)
    ranks.append(int((scores[q, pool[first]] > scores[q, target]).sum()))
  return np.array(ranks)


def numpy_metrics(ranks):
  hit = lambda k: np.mean([0 <= r < k for r in ranks])
  ndcg = lambda k: np.mean([1 / np.log2(r + 2) if 0 <= r < k else 0.0 for r in ranks])
  return {"HR@1": hit(1), "HR@5": hit(5), "HR@10": hit(10), "NDCG@5": ndcg(5), "NDCG@10": ndcg(10)}


@pytest.fixture(scope="module")
def reference(model):
  """Brute-force ranks of the last NUM_ROWS test rows: {task: {"sampled": int[n], "full": int[n]}}."""
  task_data, model_cfg, params = model
  out = {}
  for task in ("rec", "search"):
    queries = stage.eval_queries(task_data, task, "test", NUM_ROWS)
    scores = teacher_forced_scores(params, model_cfg, queries.encoder_tokens, queries.codes, queries.behaviour_token,
                                   queries.token_offsets)
    shared = [(queries.codes[np.unique(c)] == queries.codes[t]).all(axis=1).sum() - 1
              for t, c in zip(queries.targets, queries.candidates)]
    assert max(shared) >= 1, "the fixture should make targets share identifiers with candidates"
    # Default tie rules: the reference's (one position per identifier) for the sampled protocol, ours
    # (one position per item) for the full catalogue; "<protocol>/other" is the other rule.
    out[task] = {"sampled": identifier_ranks(scores, queries.targets, queries.codes, queries.candidates),
                 "sampled/other": pessimistic_ranks(scores, queries.targets, queries.candidates),
                 "full": pessimistic_ranks(scores, queries.targets),
                 "full/other": identifier_ranks(scores, queries.targets, queries.codes)}
  return out


def _exhaustive_beams(task_data) -> int:
  """Beams >= the distinct identifiers of the catalogue: the search is exhaustive in both protocols."""
  return max(len(np.unique(c, axis=0)) for c in task_data.codes.values())


def _eval_cfg(task_data):
  cfg = stage.eval_section_config()
  cfg.num_beams, cfg.batch_size, cfg.validation_rows = _exhaustive_beams(task_data), BATCH_SIZE, NUM_ROWS
  return cfg


def test_evaluate_model_with_wide_beams_is_the_brute_force_pessimistic_ranking(model, reference):
  task_data, model_cfg, params = model
  eval_cfg = _eval_cfg(task_data)
  results = stage.evaluate_model(params, model_cfg, task_data, eval_cfg, split="test", limit=NUM_ROWS)
  assert set(results) == {"rec", "search"}
  for task in ("rec", "search"):
    queries = stage.eval_queries(task_data, task, "test", NUM_ROWS)
    for protocol in ("sampled", "full"):
      ranks = stage.rank_queries(params, model_cfg, queries, protocol, num_beams=eval_cfg.num_beams,
                                 batch_size=BATCH_SIZE)
      np.testing.assert_array_equal(ranks, reference[task][protocol], err_msg=f"{task} {protocol}")
      metrics = results[task][protocol]
      assert set(metrics) == set(stage.TABLE_METRICS)
      assert all(0.0 <= v <= 1.0 for v in metrics.values())
      for key, value in numpy_metrics(reference[task][protocol]).items():
        assert metrics[key] == pytest.approx(value), f"{task} {protocol} {key}"
      other = {"sampled": "item", "full": "identifier"}[protocol]
      np.testing.assert_array_equal(
          stage.rank_queries(params, model_cfg, queries, protocol, num_beams=eval_cfg.num_beams, batch_size=BATCH_SIZE,
                             ties=other), reference[task][f"{protocol}/other"])
      assert results[task][stage.other_ties_key(protocol, other)] == pytest.approx(
          numpy_metrics(reference[task][f"{protocol}/other"]))


def test_eval_ties_switch_each_protocol_to_the_other_rule(model, reference):
  """eval.ties.sampled=item, eval.ties.full=identifier: each protocol's main figures follow the other
  brute-force rule, and the default rule's figures are reported beside them."""
  task_data, model_cfg, params = model
  eval_cfg = _eval_cfg(task_data)
  eval_cfg.ties.update(dict(sampled="item", full="identifier"))
  results = stage.evaluate_model(params, model_cfg, task_data, eval_cfg, split="test", limit=NUM_ROWS)
  for task in ("rec", "search"):
    for protocol, default in (("sampled", "identifier"), ("full", "item")):
      assert results[task][protocol] == pytest.approx(numpy_metrics(reference[task][f"{protocol}/other"]))
      assert results[task][stage.other_ties_key(protocol, default)] == pytest.approx(
          numpy_metrics(reference[task][protocol]))


def test_sharded_ranking_is_the_brute_force_ranking(model, reference):
  task_data, model_cfg, params = model
  queries = stage.eval_queries(task_data, "search", "test", NUM_ROWS)
  mesh = parallel.make_mesh({"data": 8})
  ranks = stage.rank_queries(params, model_cfg, queries, "sampled", num_beams=_exhaustive_beams(task_data),
                             batch_size=8, mesh=mesh)
  np.testing.assert_array_equal(ranks, reference["search"]["sampled"])
  with pytest.raises(ValueError, match="divisible"):
    stage.rank_queries(params, model_cfg, queries, "sampled", num_beams=8, batch_size=BATCH_SIZE, mesh=mesh)


def test_validation_fn_reports_sampled_validation_metrics_and_their_means(model):
  task_data, model_cfg, params = model
  eval_cfg = _eval_cfg(task_data)
  validate = stage.make_validation_fn(task_data, model_cfg, eval_cfg)
  metrics = validate(params, 0)
  for task in ("rec", "search"):
    queries = stage.eval_queries(task_data, task, "validation", NUM_ROWS)
    ranks = stage.rank_queries(params, model_cfg, queries, "sampled", num_beams=eval_cfg.num_beams,
                               batch_size=BATCH_SIZE)
    for key, value in numpy_metrics(ranks).items():
      assert metrics[f"val/{task}_{key}"] == pytest.approx(value)
  assert metrics["val/ndcg5_mean"] == pytest.approx((metrics["val/rec_NDCG@5"] + metrics["val/search_NDCG@5"]) / 2)
  assert metrics["val/ndcg10_mean"] == pytest.approx((metrics["val/rec_NDCG@10"] + metrics["val/search_NDCG@10"]) / 2)
  assert len(metrics) == 2 * 5 + 2
  search_only = stage.make_validation_fn(task_data, model_cfg, eval_cfg, selection_tasks=("search",))(params, 0)
  assert search_only["val/ndcg5_mean"] == pytest.approx(metrics["val/search_NDCG@5"])
  assert search_only["val/ndcg10_mean"] == pytest.approx(metrics["val/search_NDCG@10"])
  with pytest.raises(ValueError, match=r"train.selection_tasks=\('feed',\): expected a non-empty subset"):
    load_config("tiny", ["train.selection_tasks=feed"])         # refused when the config loads


def test_validation_rows_are_the_most_recent_where_the_source_has_timestamps(model):
  """The validation subset is the N most recent rows (tiny: synthetic, timestamped),
  not the last N rows (the highest user ids)."""
  task_data = model[0]
  assert task_data.prepared.has_timestamps and stage.subset_rule(task_data) == "most_recent"
  samples = task_data.prepared.samples["rec"]
  rows = samples.split_rows(1)
  by_recency = sorted(range(len(rows)), key=lambda i: (samples.time[rows[i]], i))
  expected = rows[sorted(by_recency[-10:])]
  assert not np.array_equal(expected, rows[-10:]), "the fixture should tell the two rules apart"
  queries = stage.eval_queries(task_data, "rec", "validation", 10)
  np.testing.assert_array_equal(queries.targets, samples.item[expected])


def test_the_loader_refuses_unknown_eval_fields_protocols_and_tie_rules():
  """The eval stage reads `eval` as the loader checked it (`check_config`); it does not check again."""
  config = load_config("tiny")
  config.eval.protocols = ("sampled", "everything")
  with pytest.raises(ValueError, match="eval.protocols"):
    check_config(config)
  config = load_config("tiny")
  config.eval.beams = 3
  with pytest.raises(ValueError, match="eval.beams: no such field"):
    check_config(config)
  config = load_config("tiny")
  config.eval.ties.sampled = "first"
  with pytest.raises(ValueError, match="eval.ties.sampled='first'"):
    check_config(config)


# --------------------------------------------------------------------------------------------------
# run_eval
# --------------------------------------------------------------------------------------------------

def test_run_eval_writes_metrics_tables_and_stats(workdir, model, reference, tmp_path):
  task_data, _, _ = model
  config = load_config("tiny")
  config.eval = stage.eval_section_config()
  # Queries are sharded over the data axis of config.parallel's mesh (all 8 simulated devices).
  config.eval.update(dict(limit=NUM_ROWS, batch_size=8, num_beams=_exhaustive_beams(task_data)))
  with pytest.raises(DataError, match="gensar train"):
    stage.run_eval(config, tmp_path, tmp_path / "eval")         # a workdir without a trained model
  out = workdir / "eval"
  stats = stage.run_eval(config, workdir, out)
  assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "metrics.md", "stats.json"]
  metrics = json.loads((out / "metrics.json").read_text())
  for task in ("rec", "search"):
    for protocol in ("sampled", "full"):
      assert metrics[task][protocol] == pytest.approx(numpy_metrics(reference[task][protocol]))
      other = {"sampled": "item", "full": "identifier"}[protocol]
      # Both tie rules are reported where they differ (the fixture's targets share identifiers).
      assert metrics[task][stage.other_ties_key(protocol, other)] == pytest.approx(
          numpy_metrics(reference[task][f"{protocol}/other"]))
  assert stats["metrics"] == metrics
  assert stats["ties"] == {"sampled": "identifier", "full": "item"}
  assert stats["num_queries"] == {"rec": NUM_ROWS, "search": NUM_ROWS}
  assert stats["model"] == {"step": 12}
  assert json.loads((out / "stats.json").read_text())["split"] == "test"
  table = (out / "metrics.md").read_text().splitlines()
  assert table[0] == "| task | protocol | HR@1 | HR@5 | HR@10 | NDCG@5 | NDCG@10 |"
  assert len(table) == 2 + 4 * 2          # task x protocol, each under both tie rules
  search_sampled = next(line for line in table if line.startswith("| search | sampled |"))
  cells = [float(c) for c in search_sampled.strip("|").split("|")[2:]]
  assert cells == pytest.approx([metrics["search"]["sampled"][m] for m in stage.TABLE_METRICS], abs=5e-5)
  assert json.loads((out / "config.json").read_text())["eval"]["limit"] == NUM_ROWS


def test_the_validation_tie_rule_is_part_of_the_training_fingerprint(tmp_path):
  """Model selection ranks validation rows with eval.ties.sampled, so changing it re-runs training."""
  from gensar_jax import stages
  from gensar_jax.io_utils import write_json
  for dep in stages.STAGES["train"].deps:
    (tmp_path / dep).mkdir()
    write_json(tmp_path / dep / "fingerprint.json", {"fingerprint": dep})
  config = load_config("tiny")
  before = stages.stage_fingerprint(stages.STAGES["train"], config, tmp_path)
  config.eval.ties.sampled = "item"
  assert stages.stage_fingerprint(stages.STAGES["train"], config, tmp_path) != before
  config.eval.ties.sampled, config.eval.ties.full = "identifier", "identifier"
  assert stages.stage_fingerprint(stages.STAGES["train"], config, tmp_path) == before   # eval-only setting


def test_progress_label_names_the_protocol_once(monkeypatch):
  """The label handed to the ranking is "<split> <task>": `protocols.search_ranks` appends " (<protocol>)" itself."""
  names = []

  def fake_search_ranks(*args, name, **kwargs):
    names.append(name)
    return {rule: np.zeros(2, np.int64) for rule in ("item", "identifier")}

  monkeypatch.setattr(stage.protocols, "search_ranks", fake_search_ranks)
  monkeypatch.setattr(stage, "catalogue_tables", lambda queries, mesh=None: None)
  queries = stage.EvalQueries(task="search", encoder_tokens=np.zeros((2, 4), np.int32), targets=np.zeros(2, np.int32),
                              candidates=np.zeros((2, 3), np.int32), codes=np.zeros((3, 2), np.int32),
                              behaviour_token=5, token_offsets=np.array([6, 10], np.int32), codebook_size=4)
  stage.evaluate_queries(None, T5Config(vocab_size=32), {"search": queries}, ("sampled", "full"), desc="test")
  assert names == ["test search", "test search"]
