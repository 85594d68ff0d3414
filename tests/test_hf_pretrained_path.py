"""The pretrained path as the reference runs it (transformers 4.45.2): added token rows keep torch's default
initialisation, and every encoder input ends with `</s>` as HF's T5 tokenizer writes it."""
import numpy as np
import pytest
import scipy.stats
from workdir_fixtures import committed_stage

import jax

from gensar_jax.config import load_config
from gensar_jax.model.hf_import import build_model, params_from_hf_state_dict, resize_vocab, t5_config_from_hf

from test_model_hf_import import VOCAB, _hf_model, _write_pretrained_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ADDED = 3000


def _replay_4_45_new_rows(num_new: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """transformers 4.45.2's `_get_resized_embeddings` / `_get_resized_lm_head`, replayed with torch: a fresh
  `nn.Embedding` / `nn.Linear(dim, V)` whose init `T5PreTrainedModel._init_weights` leaves alone (it has no
  branch for bare modules); returns (embedding rows, head rows) [num_new, dim]."""
  torch.manual_seed(0)
  embedding = torch.nn.Embedding(num_new, dim).weight.detach().numpy()
  head = torch.nn.Linear(dim, num_new, bias=False).weight.detach().numpy()
  return embedding, head


def _scaled_checkpoint_params(tied: bool):
  """Params of a HF T5 whose rows are far from N(0, 1) (7x + 3), so added rows cannot borrow their law."""
  model = _hf_model("relu" if tied else "gated-gelu", tied=tied)
  cfg = t5_config_from_hf(model.config.to_dict(), dropout_rate=0.0)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  state["shared.weight"] = 7 * state["shared.weight"] + 3
  if not tied:
    state["lm_head.weight"] = 7 * state["lm_head.weight"] + 3
  return cfg, params_from_hf_state_dict(state, cfg)


@pytest.mark.parametrize("tied", [True, False])
def test_added_rows_follow_transformers_4_45(tied):
  cfg, params = _scaled_checkpoint_params(tied)
  resized = resize_vocab(params, VOCAB + ADDED, jax.random.key(0))
  np.testing.assert_array_equal(resized["token_embedder"][:VOCAB], params["token_embedder"])
  reference_embedding, reference_head = _replay_4_45_new_rows(ADDED, cfg.d_model)
  new_rows = resized["token_embedder"][VOCAB:]
  assert scipy.stats.ks_2samp(new_rows.ravel(), reference_embedding.ravel()).pvalue > 1e-3
  assert abs(new_rows.std() - 1.0) < 0.02 and abs(new_rows.mean()) < 0.02
  if not tied:
    np.testing.assert_array_equal(resized["lm_head"][:, :VOCAB], params["lm_head"])
    head_rows = resized["lm_head"][:, VOCAB:].T
    bound = 1 / np.sqrt(cfg.d_model)
    assert np.abs(head_rows).max() <= bound
    assert scipy.stats.ks_2samp(head_rows.ravel(), reference_head.ravel()).pvalue > 1e-3
    assert abs(head_rows.std() - bound / np.sqrt(3)) < 0.02 * bound


def test_mean_resizing_stays_behind_the_switch(tmp_path):
  model = _hf_model()
  model.save_pretrained(tmp_path)
  section = load_config("tiny").model
  section.pretrained_dir, section.dropout_rate = str(tmp_path), 0.0
  _, params = build_model(section, VOCAB + ADDED, jax.random.key(0))
  old = model.shared.weight.detach().numpy()
  assert abs(params["token_embedder"][VOCAB:].std() - 1.0) < 0.02          # default: torch_default
  section.new_token_init = "mean_resizing"
  _, params = build_model(section, VOCAB + ADDED, jax.random.key(0))
  spread = np.sqrt(1e-9 * old.var(axis=0)).max()
  assert np.abs(params["token_embedder"][VOCAB:] - old.mean(axis=0)).max() < 8 * spread
  with pytest.raises(ValueError, match="new_token_init"):
    resize_vocab({"token_embedder": old}, VOCAB + 2, jax.random.key(0), init="zeros")


@pytest.fixture
def pretrained_task_data(tmp_path, tiny_prepared):
  """(load(config) -> TaskData, the HF tokenizer of the checkpoint, the tiny config with model.pretrained_dir)."""
  from gensar_jax.data.task_data import load_task_data
  data = tiny_prepared.dataset
  checkpoint = tmp_path / "t5"
  _write_pretrained_dir(checkpoint, [data.catalog.text(i) for i in range(data.num_items)])
  workdir = tmp_path / "work"
  workdir.mkdir()
  committed_stage(workdir, "prepare", linked_to=tiny_prepared.directory)
  config = load_config("tiny")
  config.model.pretrained_dir = str(checkpoint)
  codes = np.random.default_rng(0).integers(0, config.identifiers.codebook_size, (data.num_items, 4)).astype(np.int32)

  def load(cfg):
    return load_task_data(workdir, cfg, {"semantic": codes, "collab": codes}, with_pseudo_queries=False)
  return load, transformers.T5Tokenizer.from_pretrained(str(checkpoint)), config


def test_encoder_inputs_end_with_eos_as_the_hf_tokenizer_writes_them(pretrained_task_data):
  load, hf_tokenizer, config = pretrained_task_data
  td = load(config)
  builder, texts = td.builder, [td.prepared.dataset.catalog.text(i) for i in range(3)]
  for text in texts:
    ids = td.tokenizer.encode_text(text)
    for max_len in (5, len(ids) + 1, len(ids) + 10):     # cut, exactly full, short
      expected = hf_tokenizer(text, max_length=max_len, truncation=True)["input_ids"]
      assert builder.encoder_text(ids, max_len).tolist() == expected
  assert hf_tokenizer.eos_token_id == 1 == td.tokenizer.sp.eos_id()
  # Every task's input: one `</s>`, last, within max_input_len, also when history or text is cut.
  rec, search = td.sources["rec_train"], td.sources["search_train"]
  records = [("nrip", rec[len(rec) - 1]), ("nsip", search[len(search) - 1]), ("nsqp", search[0]),
             ("desc2id", {"item": 0}), ("id2desc", {"item": 1}),
             ("adhoc", {"item": 2, "pseudo_query": np.asarray(td.tokenizer.encode_text("blue pen"), np.int32)})]
  cut = load_config("tiny")
  cut.model.pretrained_dir = config.model.pretrained_dir
  cut.tasks.max_input_len = 12
  for builder_ in (builder, load(cut).builder):
    for task, record in records:
      inputs, _ = builder_.build(task, record)
      assert inputs[-1] == 1 and (inputs == 1).sum() == 1 and len(inputs) <= builder_.max_input_len, task
  # A cut desc2id input is the uncut one cut as HF cuts: the first max_input_len - 1 tokens, then `</s>`.
  long = load_config("tiny")
  long.model.pretrained_dir, long.model.input_eos, long.tasks.max_input_len = config.model.pretrained_dir, False, 512
  whole, _ = load(long).builder.build("desc2id", {"item": 0})
  short, _ = load(cut).builder.build("desc2id", {"item": 0})
  assert short.tolist() == whole[:11].tolist() + [1]


def test_input_eos_false_keeps_inputs_without_eos(pretrained_task_data):
  load, _, config = pretrained_task_data
  config.model.input_eos = False
  builder = load(config).builder
  inputs, _ = builder.build("desc2id", {"item": 0})
  assert 1 not in inputs.tolist()
  assert builder.encoder_text(np.arange(2, 9), 4).tolist() == [2, 3, 4, 5]
