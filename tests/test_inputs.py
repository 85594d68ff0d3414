"""Inputs by name: hub model names resolved from a pre-filled HF cache."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from gensar_jax import inputs
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
