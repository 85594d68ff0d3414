"""Inputs by name (hub model names from a pre-filled HF cache) and the check of every input before a run."""
import gzip
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from gensar_jax import cli, inputs, stages
from gensar_jax.config import load_config
from gensar_jax.data import loaders, prepare
from gensar_jax.embed import text_encoder
from gensar_jax.io_utils import DataError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def hub_cache(cache: Path, repo_id: str, source_dir: Path, revision: str = REVISION) -> Path:
  """Writes `source_dir` into `cache` as huggingface_hub lays out a downloaded model: blobs named by their
  hash, `snapshots/<revision>/<file>` linking to them, `refs/main` naming the revision. Returns the snapshot."""
  repo = cache / ("models--" + repo_id.replace("/", "--"))
  snapshot = repo / "snapshots" / revision
  for file in sorted(p for p in source_dir.rglob("*") if p.is_file()):
    data = file.read_bytes()
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = snapshot / file.relative_to(source_dir)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(revision)
  return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
  cache = tmp_path / "hf" / "hub"
  cache.mkdir(parents=True)
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return cache


@pytest.mark.parametrize("setting, hub", [
    ("google-t5/t5-small", True), ("BAAI/bge-base-en-v1.5", True), (MINILM, True), ("org_1/m.v2", True),
    ("./google-t5/t5-small", False), ("/models/t5-small", False), ("../org/model", False), ("gs://bkt/model", False),
    ("org/model/extra", False), ("t5-small", False), ("org/", False), (".org/model", False)])
def test_hub_names_are_told_from_paths(setting, hub):
  assert inputs.is_hub_name(setting) is hub


def test_hub_name_loads_from_the_hf_cache_as_the_directory_does(offline_cache, tmp_path, monkeypatch):
  model_dir = text_encoder.default_model_dir()
  snapshot = hub_cache(offline_cache, MINILM, model_dir)
  from huggingface_hub import scan_cache_dir   # the layout is huggingface_hub's own
  repo, = scan_cache_dir(offline_cache).repos
  assert repo.repo_id == MINILM and [r.commit_hash for r in repo.revisions] == [REVISION]
  assert {f.file_name for f in next(iter(repo.revisions)).files} >= {"model.safetensors", "tokenizer.json"}

  assert inputs.resolve_model_dir(MINILM, "embed.text.model_dir") == snapshot
  texts = ["BIC Round Stic Ball Pen, Fine Point, Black", "Northwestern Bell Big-Button Corded Phone", ""]
  by_name = text_encoder.load_sentence_encoder(MINILM).encode(texts, progress=False)
  by_dir = text_encoder.load_sentence_encoder(model_dir).encode(texts, progress=False)
  np.testing.assert_array_equal(by_name, by_dir)

  monkeypatch.delenv("HF_HUB_CACHE")          # HF_HOME/hub is the cache when HF_HUB_CACHE is unset
  monkeypatch.setenv("HF_HOME", str(offline_cache.parent))
  assert inputs.resolve_model_dir(MINILM, "embed.text.model_dir") == snapshot


def test_a_hub_model_missing_from_the_cache_is_one_clear_error(offline_cache):
  with pytest.raises(DataError, match=r"embed.text.model_dir='BAAI/bge-base-en-v1.5' is neither a directory .* nor "
                                      r"a Hugging Face model in the cache .*hf/hub \(HF_HUB_OFFLINE is set\)\. The "
                                      r"hub model: `hf download BAAI/bge-base-en-v1.5`"):
    text_encoder.load_sentence_encoder("BAAI/bge-base-en-v1.5")
  cfg = text_encoder.text_encoder_config()
  cfg.model_dir = "BAAI/bge-base-en-v1.5"           # a named model never falls back to TF-IDF
  with pytest.raises(DataError, match="hf download BAAI/bge-base-en-v1.5"):
    text_encoder.semantic_embeddings(["a pen"], cfg)
  from gensar_jax.model.hf_import import load_hf_checkpoint, pretrained_tokenizer
  for load in (load_hf_checkpoint, pretrained_tokenizer):
    with pytest.raises(DataError, match=r"model.pretrained_dir='google-t5/t5-small' .* `hf download google-t5/t5-small`"):
      load("google-t5/t5-small")


def test_an_existing_directory_is_a_path_even_when_it_looks_like_a_hub_name(offline_cache, tmp_path, monkeypatch):
  (tmp_path / "org" / "model").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  assert inputs.resolve_model_dir("org/model", "model.pretrained_dir") == Path("org/model")
  assert inputs.resolve_model_dir(str(tmp_path / "absent"), "x") == tmp_path / "absent"   # the loader reports it


def test_pretrained_t5_by_hub_name(offline_cache, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from gensar_jax.model.hf_import import load_hf_checkpoint
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, decoder_start_token_id=0)
  transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
  hub_cache(offline_cache, "test-org/tiny-t5", tmp_path / "t5")
  cfg, params = load_hf_checkpoint("test-org/tiny-t5")
  cfg_dir, params_dir = load_hf_checkpoint(tmp_path / "t5")
  assert cfg == cfg_dir
  np.testing.assert_array_equal(params["token_embedder"], params_dir["token_embedder"])


# ------------------------------------------------------------------------------------ preflight

def _gz_lines(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))


def _amazon_config(tmp_path, *overrides):
  return ["--set", "data.source=amazon2014", "--set", "data.name=Toys", "--set", f"data.raw_dir={tmp_path / 'raw'}",
          *[arg for o in overrides for arg in ("--set", o)]]


def test_run_lists_every_input_problem_before_any_stage(tmp_path, offline_cache, caplog):
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "meta_Toys.json.gz").write_bytes(b"not gzip at all")
  _gz_lines(tmp_path / "queries" / "query_text.txt.gz", ["toy ball"])
  overrides = _amazon_config(tmp_path, f"data.query_dir={tmp_path / 'queries'}", "data.queries=real",
                             "embed.text.model_dir=no-org/no-model", f"model.pretrained_dir={tmp_path / 't5'}")
  workdir = tmp_path / "work"
  for command in ("run", "reproduce"):
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="gensar"):
      assert cli.main([command, "--config", "tiny", "--workdir", str(workdir), *overrides]) == 2
    message = caplog.records[-1].getMessage()
    assert message.startswith("6 input problem(s), found before any stage ran:")
    for expected in (f"{tmp_path / 'raw'}: none of ['reviews_Toys_5.json.gz', 'reviews_Toys_5.json'] found",
                     "meta_Toys.json.gz: damaged or truncated file",
                     "none of ['train.qrels.gz', 'train.qrels'] found (data.query_dir)",
                     "none of ['test.qrels.gz', 'test.qrels'] found (data.query_dir)",
                     "`hf download no-org/no-model`",
                     f"model.pretrained_dir={str(tmp_path / 't5')!r}: directory {tmp_path / 't5'} not found",
                     "`gensar fetch` with the same --config and --set downloads"):
      assert expected in message, expected
    assert not (workdir / "prepare").exists()


def test_data_problems_name_missing_directories_and_empty_files(tmp_path):
  data = load_config("tiny", ["data.source=lcrec", "data.name=Toy", f"data.raw_dir={tmp_path / 'absent'}",
                              f"data.query_dir={tmp_path / 'q'}"]).data
  assert inputs.data_problems(data) == [
      f"{tmp_path / 'absent'}: directory not found (data.raw_dir; expected Toy.item.json.gz, Toy.inter.json.gz there)",
      f"{tmp_path / 'q'}: directory not found (data.query_dir; expected query_text.txt.gz, train.qrels.gz, "
      "test.qrels.gz there)"]
  (tmp_path / "absent").mkdir()
  _gz_lines(tmp_path / "absent" / "Toy.item.json.gz", [])
  (tmp_path / "absent" / "Toy.inter.json").write_text("{}")
  assert inputs.data_problems(load_config("tiny", ["data.source=lcrec", "data.name=Toy",
                                                   f"data.raw_dir={tmp_path / 'absent'}"]).data) == [
      f"{tmp_path / 'absent' / 'Toy.item.json.gz'}: empty file"]
  assert inputs.data_problems(load_config("tiny").data) == []          # synthetic reads nothing


def test_models_are_checked_only_for_the_stages_that_will_run(tmp_path, monkeypatch, offline_cache):
  config = load_config("tiny", ["embed.text.model_dir=no-org/encoder", "model.pretrained_dir=no-org/t5"])
  monkeypatch.setattr(stages, "is_fresh", lambda stage, config, workdir: stage.name != "index")
  todo = inputs.stages_to_run(config, tmp_path)
  assert todo == ["index", "train", "eval"]              # doc2query reads prepare only, which is up to date
  problems = inputs.input_problems(config, todo)
  assert len(problems) == 1 and "model.pretrained_dir='no-org/t5'" in problems[0]
  assert len(inputs.input_problems(config)) == 2         # reproduce: every stage and the baselines
  monkeypatch.setattr(stages, "is_fresh", lambda stage, config, workdir: True)
  assert inputs.stages_to_run(config, tmp_path) == [] and inputs.input_problems(config, []) == []


# ------------------------------------------------------------------------------------ content gaps

def test_a_reviews_file_without_records_is_named(tmp_path):
  _gz_lines(tmp_path / "reviews_Toys_5.json.gz", ["", "  "])
  _gz_lines(tmp_path / "meta_Toys.json.gz", [repr({"asin": "B1", "title": "Ball"})])
  with pytest.raises(DataError, match=r"^no reviews in .*reviews_Toys_5.json.gz: expected one JSON review per line"):
    loaders.load_amazon2014(tmp_path, "Toys")
  _gz_lines(tmp_path / "Toys_5.json.gz", [])
  _gz_lines(tmp_path / "meta_Toys.json.gz", [json.dumps({"asin": "B1", "title": "Ball"})])
  with pytest.raises(DataError, match=r"^no reviews in .*Toys_5.json.gz"):
    loaders.load_amazon2018(tmp_path, "Toys")


def _toys(tmp_path, train, test):
  reviews = [("U1", "B1", 1), ("U1", "B2", 2), ("U2", "B1", 3)]
  _gz_lines(tmp_path / "raw" / "reviews_Toys_5.json.gz",
            [json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": t}) for u, a, t in reviews])
  _gz_lines(tmp_path / "raw" / "meta_Toys.json.gz",
            [repr({"asin": a, "title": a, "categories": [["Toys", "Balls"]]}) for a in ("B1", "B2")])
  _gz_lines(tmp_path / "q" / "query_text.txt.gz", ["toy ball", "toy kite"])
  _gz_lines(tmp_path / "q" / "train.qrels.gz", train)
  _gz_lines(tmp_path / "q" / "test.qrels.gz", test)
  return load_config("tiny", ["data.source=amazon2014", "data.name=Toys", f"data.raw_dir={tmp_path / 'raw'}",
                              f"data.query_dir={tmp_path / 'q'}"]).data


def test_qrels_lines_that_match_no_purchase_are_counted_and_named(tmp_path, caplog):
  data = _toys(tmp_path, ["U1_0 0 B1 1", "U9_0 0 B1 1", "U1_1 0 B7 1", "U9_1 0 B1 1"],
               ["U2_0 0 B1 1", "U2_1 0 B2 1"])
  with caplog.at_level(logging.WARNING):
    dataset = prepare.load_dataset(data, seed=0)
  assert len(dataset.search_user) == 2          # (U1, B1) and (U2, B1)
  warning, = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  # test.qrels.gz is read before train.qrels.gz (name order): its line 2 is (U2, B2), which U2 never bought.
  assert warning == ("Toys: 4 of 6 qrels lines match no purchase and are ignored (2 with a user absent from the "
                     "reviews, 1 with an item absent from them, 1 with a pair the reviews do not have; first at "
                     f"{tmp_path / 'q' / 'test.qrels.gz'}:2)")


def test_qrels_that_match_no_purchase_are_refused(tmp_path):
  data = _toys(tmp_path, ["U9_0 0 B1 1"], ["U8_1 0 B2 1"])
  with pytest.raises(DataError, match=r"Toys: none of the 2 qrels lines matches a purchase of the reviews \(2 with a "
                                      r"user absent .* first at .*test.qrels.gz:1\); check that data.query_dir"):
    prepare.load_dataset(data, seed=0)


@pytest.mark.slow        # about two minutes: the whole tiny pipeline
def test_run_reads_a_hub_named_encoder_from_the_cache(offline_cache, tmp_path):
  snapshot = hub_cache(offline_cache, MINILM, text_encoder.default_model_dir())
  workdir = tmp_path / "work"
  assert cli.main(["run", "--config", "tiny", "--workdir", str(workdir), "--set", f"embed.text.model_dir={MINILM}",
                   "--set", "embed.sasrec.epochs=1"]) == 0
  assert stages.read_record(workdir / "eval") is not None
  stats = json.loads((stages.output_dir(workdir, "embed") / "stats.json").read_text())
  assert stats["semantic_encoder"]["encoder"] == str(snapshot) and stats["semantic_encoder"]["fallback"] is None
