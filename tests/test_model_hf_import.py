"""HF checkpoint directories -> params (safetensors and .bin), config mapping, vocabulary growth."""
import json

import numpy as np
import pytest
from workdir_fixtures import committed_stage

import jax
import jax.numpy as jnp

from gensar_jax.io_utils import DataError
from gensar_jax.model.hf_import import (load_hf_checkpoint, params_from_hf_state_dict, resize_vocab,
                                        t5_config_from_hf)
from gensar_jax.model.t5 import T5, T5Config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 37


def _hf_model(feed_forward="relu", tied=True):
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=1,
                                 num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 dropout_rate=0.0, feed_forward_proj=feed_forward, tie_word_embeddings=tied,
                                 decoder_start_token_id=0)
  return transformers.T5ForConditionalGeneration(config).eval()


def _hf_logits(model, enc, dec):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc != 0),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("file_format", ["safetensors", "bin"])
def test_checkpoint_directory_round_trip(tmp_path, file_format):
  model = _hf_model("gated-gelu", tied=False)
  model.save_pretrained(tmp_path, safe_serialization=(file_format == "safetensors"))
  if file_format == "bin":  # transformers>=5 always writes safetensors; write the legacy file ourselves.
    for f in tmp_path.glob("*.safetensors"):
      f.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  cfg, params = load_hf_checkpoint(tmp_path, dropout_rate=0.0)
  assert (cfg.feed_forward, cfg.tie_word_embeddings, cfg.num_encoder_layers, cfg.num_decoder_layers) == (
      "gated-gelu", False, 2, 1)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, VOCAB, size=(2, 9)).astype(np.int32)
  enc[1, 5:] = 0
  dec = rng.integers(2, VOCAB, size=(2, 4)).astype(np.int32)
  dec[:, 0] = 0
  logits = T5(cfg).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec))
  np.testing.assert_allclose(np.asarray(logits), _hf_logits(model, enc, dec), atol=1e-4, rtol=1e-4)


def test_directory_without_weights_is_a_clear_error(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(_hf_model().config.to_dict()))
  with pytest.raises(DataError, match="no T5 weights found"):
    load_hf_checkpoint(tmp_path)
  with pytest.raises(DataError, match="config.json not found"):
    load_hf_checkpoint(tmp_path / "missing")


def test_state_dict_shape_mismatch_names_the_key():
  model = _hf_model()
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  cfg = t5_config_from_hf(model.config.to_dict())
  with pytest.raises(DataError, match="encoder.block.0.layer.0.SelfAttention.q.weight"):
    params_from_hf_state_dict(state, cfg.replace(d_kv=8))


def test_resize_vocab_matches_hugging_face_mean_resizing():
  model = _hf_model()
  cfg = t5_config_from_hf(model.config.to_dict(), dropout_rate=0.0)
  params = params_from_hf_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
  new_vocab = VOCAB + 9
  resized = resize_vocab(params, new_vocab, jax.random.key(0), init="mean_resizing")
  old = np.asarray(params["token_embedder"])
  new = np.asarray(resized["token_embedder"])
  assert new.shape == (new_vocab, cfg.d_model)
  np.testing.assert_array_equal(new[:VOCAB], old)
  # HF: new rows ~ N(mean, 1e-9 cov): within a few 1e-4.5 standard deviations of the old mean.
  model.resize_token_embeddings(new_vocab)
  hf_new = model.shared.weight.detach().numpy()[VOCAB:]
  mean = old.astype(np.float64).mean(axis=0)
  spread = np.sqrt(1e-9 * old.var(axis=0)).max()
  assert np.abs(new[VOCAB:] - mean).max() < 8 * spread
  assert np.abs(hf_new - mean).max() < 8 * spread
  assert np.abs(new[VOCAB:] - mean).max() > 0  # sampled, not the bare mean
  # Resized params run in a model with the larger vocabulary, old tokens unchanged.
  enc = jnp.asarray([[5, 6, new_vocab - 1, 0]])
  logits = T5(cfg.replace(vocab_size=new_vocab)).apply({"params": resized}, enc, jnp.zeros((1, 2), jnp.int32))
  assert logits.shape == (1, 2, new_vocab) and np.isfinite(np.asarray(logits)).all()


def test_resize_vocab_grows_untied_head():
  cfg = T5Config.tiny(VOCAB, tie_word_embeddings=False)
  from gensar_jax.model.t5 import init_params
  params = init_params(cfg, jax.random.key(0))
  resized = resize_vocab(params, VOCAB + 4, jax.random.key(1), init="mean_resizing")
  assert resized["lm_head"].shape == (cfg.d_model, VOCAB + 4)
  np.testing.assert_array_equal(resized["lm_head"][:, :VOCAB], np.asarray(params["lm_head"]))
  head_mean = np.asarray(params["lm_head"]).mean(axis=1)
  assert np.abs(resized["lm_head"][:, VOCAB:] - head_mean[:, None]).max() < 1e-2


def test_build_model_from_section(tmp_path):
  from gensar_jax.model.hf_import import build_model
  from gensar_jax.model.t5 import model_config
  section = model_config()
  section.preset = "tiny"
  cfg, params = build_model(section, 50, jax.random.key(0))
  assert cfg == T5Config.tiny(50, dropout_rate=0.1)
  assert params["token_embedder"].shape == (50, cfg.d_model)

  model = _hf_model()
  model.save_pretrained(tmp_path)
  section.pretrained_dir = str(tmp_path)
  section.dropout_rate = 0.0
  cfg, params = build_model(section, VOCAB + 5, jax.random.key(0))
  assert (cfg.vocab_size, cfg.d_model, cfg.num_decoder_layers, cfg.dropout_rate) == (VOCAB + 5, 16, 1, 0.0)
  np.testing.assert_array_equal(params["token_embedder"][:VOCAB], model.shared.weight.detach().numpy())
  from gensar_jax.config import load_config      # an unknown preset is refused when the config loads
  with pytest.raises(ValueError, match=r"model.preset='huge': expected one of \['small', 'tiny'\]"):
    load_config("tiny", ["model.preset=huge"])


def _write_pretrained_dir(directory, texts, extra_ids=4, spare_rows=3):
  """A HF-format T5 directory: random weights, a small SentencePiece model trained on `texts`
  (T5's special ids), `extra_ids` sentinels and `spare_rows` unused embedding rows (as t5-small's 28).
  Returns (the HF model, its SentencePiece processor)."""
  import io
  import sentencepiece as spm
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=proto, vocab_size=150,
                                 model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 hard_vocab_limit=False, num_threads=1, minloglevel=2)
  sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
  torch.manual_seed(3)
  config = transformers.T5Config(vocab_size=sp.get_piece_size() + extra_ids + spare_rows, d_model=16, d_kv=4,
                                 d_ff=24, num_layers=1, num_decoder_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 dropout_rate=0.0, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  model.save_pretrained(directory)
  (directory / "spiece.model").write_bytes(proto.getvalue())
  (directory / "tokenizer_config.json").write_text(json.dumps({"extra_ids": extra_ids}))
  return model, sp


def test_pretrained_dir_uses_the_checkpoints_tokenizer_and_keeps_its_embedding_rows(tmp_path, tiny_prepared):
  """With model.pretrained_dir, text is tokenized with the checkpoint's spiece.model, our
  tokens come after its pieces and sentinels, and a piece's embedding row is the checkpoint's row."""
  from gensar_jax.config import load_config
  from gensar_jax.data.task_data import load_task_data
  from gensar_jax.model.hf_import import build_model
  data = tiny_prepared.dataset
  texts = [data.catalog.text(i) for i in range(data.num_items)]
  checkpoint = tmp_path / "t5"
  model, sp = _write_pretrained_dir(checkpoint, texts)
  workdir = tmp_path / "work"
  workdir.mkdir()
  committed_stage(workdir, "prepare", linked_to=tiny_prepared.directory)
  config = load_config("tiny")
  config.model.pretrained_dir = str(checkpoint)
  rng = np.random.default_rng(0)
  codes = rng.integers(0, config.identifiers.codebook_size, (data.num_items, 4)).astype(np.int32)
  td = load_task_data(workdir, config, {"semantic": codes, "collab": codes}, with_pseudo_queries=False)
  assert td.tokenizer.rec_item_id == sp.get_piece_size() + 4          # after the pieces and the 4 sentinels
  ids = td.tokenizer.encode_text(texts[0])
  assert ids == sp.encode(texts[0])
  np.testing.assert_array_equal(td.builder.item_text_ids[0], ids[:config.tasks.max_text_tokens])
  _, params = build_model(config.model, td.vocab_size, jax.random.key(0))
  assert params["token_embedder"].shape[0] == td.vocab_size
  hf_rows = model.shared.weight.detach().numpy()
  known = sp.piece_to_id(sp.id_to_piece(ids[0]))
  np.testing.assert_array_equal(params["token_embedder"][known], hf_rows[known])
  np.testing.assert_array_equal(params["token_embedder"][ids], hf_rows[ids])


def test_pretrained_tokenizer_mismatch_is_a_clear_error(tmp_path, tiny_prepared):
  from gensar_jax.model.hf_import import pretrained_tokenizer
  texts = [tiny_prepared.dataset.catalog.text(i) for i in range(tiny_prepared.dataset.num_items)]
  _, sp = _write_pretrained_dir(tmp_path, texts, extra_ids=4, spare_rows=0)
  assert pretrained_tokenizer(tmp_path)[1] == sp.get_piece_size() + 4
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 10}))
  with pytest.raises(DataError, match="spiece.model: .* 10 sentinels .* vocab_size .* does not belong"):
    pretrained_tokenizer(tmp_path)
  (tmp_path / "spiece.model").unlink()
  with pytest.raises(DataError, match="spiece.model: not found"):
    pretrained_tokenizer(tmp_path)
