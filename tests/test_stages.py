"""Stages through the CLI on the tiny config: caching, Orbax persistence, end-to-end outputs."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from gensar_jax import cli, stages
from gensar_jax.identifiers.stage import load_rqvae_params
from gensar_jax.io_utils import DataError, load_arrays


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory) -> Path:
  """The tiny config's whole pipeline, run once for the end-to-end tests below. They run in file order:
  the last two change the workdir (an interrupted re-run of train, a new prepare)."""
  workdir = tmp_path_factory.mktemp("pipeline") / "tiny"
  assert cli.main(["run", "--config", "tiny", "--workdir", str(workdir)]) == 0
  return workdir


def _out(workdir: Path, stage: str) -> Path:
  return stages.output_dir(workdir, stage)


@pytest.mark.slow
def test_pipeline_commits_every_stage_and_learns(tiny_workdir):
  for stage in ("prepare", "embed", "index", "doc2query", "train", "eval"):
    assert (tiny_workdir / stage / "fingerprint.json").exists(), stage
  train = json.loads((_out(tiny_workdir, "train") / "stats.json").read_text())
  assert train["probe_loss_after"] < train["probe_loss_before"]         # learning happened
  metrics = json.loads((_out(tiny_workdir, "eval") / "metrics.json").read_text())
  for task in ("rec", "search"):
    for protocol in ("sampled", "full"):
      assert 0.0 <= metrics[task][protocol]["HR@10"] <= 1.0


@pytest.mark.slow
def test_index_saves_rqvae_params_in_orbax_and_npz_alike(tiny_workdir):
  index_stats = json.loads((_out(tiny_workdir, "index") / "stats.json").read_text())
  assert index_stats["shared_prefix_consistent"]
  restored = load_rqvae_params(_out(tiny_workdir, "index") / "rqvae")
  flat = load_arrays(_out(tiny_workdir, "index") / "rqvae_params.npz")
  leaves = {"/".join(str(k.key) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
  assert leaves.keys() == flat.keys()
  for name, value in flat.items():
    np.testing.assert_array_equal(leaves[name], value)


@pytest.mark.slow
def test_doc2query_pseudo_queries_are_text_for_every_item(tiny_workdir):
  pseudo = load_arrays(_out(tiny_workdir, "doc2query") / "pseudo_queries.npz")["tokens"]
  import sentencepiece as spm
  spm_model = os.fspath(_out(tiny_workdir, "prepare") / "spm.model")
  pieces = spm.SentencePieceProcessor(model_file=spm_model).get_piece_size()
  assert 0 < pseudo.max() < pieces      # text only: ids inside the SentencePiece vocabulary
  assert pseudo.shape[:2] == (json.loads((_out(tiny_workdir, "prepare") / "stats.json").read_text())["items"], 2)


@pytest.mark.slow
def test_second_run_recomputes_nothing(tiny_workdir):
  before = {s: os.stat(_out(tiny_workdir, s) / "stats.json").st_mtime_ns for s in ("prepare", "train", "eval")}
  assert cli.main(["run", "--config", "tiny", "--workdir", str(tiny_workdir)]) == 0
  assert before == {s: os.stat(_out(tiny_workdir, s) / "stats.json").st_mtime_ns for s in ("prepare", "train", "eval")}


@pytest.mark.slow
def test_api_recommends_and_searches_for_a_known_user(tiny_workdir):
  from gensar_jax.api import GenSAR
  model = GenSAR.load(tiny_workdir)
  user = model.data.prepared.dataset.user_ids[3]
  recs = model.recommend(user=user, k=5)
  assert len(recs) == 5 and [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
  num_items = model.data.prepared.dataset.num_items
  assert all(0 <= r.item < num_items for r in recs) and len({r.item for r in recs}) == 5
  found = model.search(model.data.prepared.dataset.queries[0], user=user, k=3)
  assert len(found) == 3 and len(model.search("anything at all", k=2)) == 2
  with pytest.raises(ValueError, match="empty query"):
    model.search("  ")
  with pytest.raises(KeyError, match="unknown user"):
    model.recommend(user="no-such-user")


@pytest.mark.slow
def test_api_takes_an_explicit_history_of_item_ids(tiny_workdir):
  from gensar_jax.api import GenSAR
  model = GenSAR.load(tiny_workdir)
  user = model.data.prepared.dataset.user_ids[3]
  # The last data.history_len purchases, as feed events.
  catalog = model.data.prepared.dataset.catalog
  ids = [catalog.item_ids[i] for i in (4, 2, 9, 7, 1, 5, 3)]
  arrays = model.item_history(ids)
  np.testing.assert_array_equal(arrays["hist_item"], [4, 2, 9, 7, 1, 5, 3][-model.config.data.history_len:])
  assert set(arrays["hist_query"]) == {-1}
  recs = model.recommend(ids, k=4)
  assert len(recs) == 4 and len(model.search("anything at all", ids, k=2)) == 2
  with pytest.raises(KeyError, match=r"unknown items \['nope'\]"):
    model.recommend([ids[0], "nope"])
  with pytest.raises(ValueError, match="history is empty"):
    model.recommend([])
  with pytest.raises(ValueError, match="not both"):
    model.search("x", ids, user=user)
  with pytest.raises(ValueError, match="needs a history"):
    model.recommend()


@pytest.mark.slow
def test_cli_recommends_from_a_history_and_refuses_an_empty_workdir(tiny_workdir, tmp_path):
  from gensar_jax.api import GenSAR
  catalog = GenSAR.load(tiny_workdir).data.prepared.dataset.catalog
  ids = [catalog.item_ids[i] for i in (4, 2, 9)]
  assert cli.main(["recommend", "--config", "tiny", "--workdir", str(tiny_workdir), "--history", ",".join(ids)]) == 0
  assert cli.main(["recommend", "--config", "tiny", "--workdir", str(tmp_path / "none"), "--user", "x"]) == 2


@pytest.mark.slow
def test_killed_rerun_of_train_keeps_the_trained_model(tiny_workdir):
  """A re-run of a changed training config killed half-way leaves the trained model intact."""
  from gensar_jax.api import GenSAR
  workdir = tiny_workdir
  trained = stages.output_dir(workdir, "train")
  model_bytes = {p.relative_to(workdir): p.read_bytes() for p in Path(trained).rglob("*") if p.is_file()}
  record = (workdir / "train" / "fingerprint.json").read_text()
  killed = subprocess.Popen([sys.executable, "-m", "gensar_jax.cli", "train", "--config", "tiny", "--workdir",
                             str(workdir), "--set", "train.learning_rate=0.002", "--set", "train.checkpoint_every=3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  rerun_checkpoints = lambda: [p for p in workdir.glob("train/run-*/checkpoints/*/_CHECKPOINT_METADATA")  # noqa: E731
                               if trained.name not in p.parts]
  while not rerun_checkpoints() and time.time() < deadline:
    assert killed.poll() is None, "the re-run ended before it was interrupted"
    time.sleep(0.5)
  killed.kill()
  killed.wait()
  assert {p.relative_to(workdir): p.read_bytes() for p in Path(trained).rglob("*") if p.is_file()} == model_bytes
  assert (workdir / "train" / "fingerprint.json").read_text() == record
  unfinished = [p for p in (workdir / "train").glob("run-*") if p.name != trained.name]
  assert len(unfinished) == 1 and (unfinished[0] / "checkpoints").is_dir()   # the unfinished run is kept to resume
  model = GenSAR.load(workdir)
  assert model.recommend(user=model.data.prepared.dataset.user_ids[3], k=2)


@pytest.mark.slow
def test_a_new_tokenizer_makes_the_model_stale_and_keeps_the_metrics(tiny_workdir):
  """A prepared dataset with another tokenizer makes the model stale: eval, search and recommend refuse
  (saying what changed), and the good metrics stay."""
  from gensar_jax.api import GenSAR
  workdir = tiny_workdir
  metrics_text = (stages.output_dir(workdir, "eval") / "metrics.json").read_text()
  assert cli.main(["prepare", "--config", "tiny", "--workdir", str(workdir), "--set", "data.vocab_size=550"]) == 0
  with pytest.raises(DataError, match=r"the outputs train/ read do not belong together: embed/ was built from a "
                                      r"prepare/ .*config data.vocab_size: 600 -> 550"):
    GenSAR.load(workdir)
  assert cli.main(["eval", "--config", "tiny", "--workdir", str(workdir), "--set", "data.vocab_size=550"]) == 2
  assert cli.main(["eval", "--config", "tiny", "--workdir", str(workdir)]) == 2
  assert cli.main(["search", "pens", "--config", "tiny", "--workdir", str(workdir)]) == 2
  assert (stages.output_dir(workdir, "eval") / "metrics.json").read_text() == metrics_text
