"""Stage fingerprints: every config field a stage reads changes its fingerprint (speed-only fields do not), and
the model directories a stage reads are fingerprinted by content, so a checkpoint replaced at the same path
or hub name makes the outputs built from it stale."""
import os

import ml_collections
import pytest

from gensar_jax import stages
from gensar_jax.config import load_config
from gensar_jax.io_utils import DataError
from workdir_fixtures import config_leaves

# Fields no stage reads: the run's name, `gensar plan`, `gensar reproduce` and its baselines.
READ_BY_NO_STAGE = ("name", "plan", "reproduce", "baselines")
# Fields that change how fast a stage runs, never what it writes (grain workers build the same batches).
SPEED_ONLY = ("tasks.pipeline_workers",)


def _under(leaf: str, key: str) -> bool:
  return leaf == key or leaf.startswith(key + ".")


def _other_value(value):
  """A value of the same type that differs from `value` (validity does not matter to a fingerprint)."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 1
  if isinstance(value, float):
    return value + 0.5
  if isinstance(value, str):
    return value + "x"
  if isinstance(value, tuple):
    return (*value, value[0]) if value else ("x",)
  if value is None:
    return 1
  raise TypeError(f"no other value for {value!r}")


def _with(config, leaf, value):
  config = ml_collections.ConfigDict(config.to_dict())
  *parents, name = leaf.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[name] = value
  return config


@pytest.fixture
def no_outside_files(monkeypatch):
  """Config values alone: no raw files or model directories are read (their contents are tested below)."""
  monkeypatch.setattr(stages, "raw_input_files", lambda stage, config: [])
  monkeypatch.setattr(stages, "model_files", lambda stage, config: {})


@pytest.mark.parametrize("config_name", ["tiny", "office", "electronics"])
def test_every_field_a_stage_reads_changes_its_fingerprint(config_name, tmp_path, dependency_records,
                                                          no_outside_files):
  config = load_config(config_name)
  for name in stages.STAGES:
    dependency_records(name)
  leaves = list(config_leaves(config))
  for name, stage in stages.STAGES.items():
    base = stages.stage_fingerprint(stage, config, tmp_path)
    read = [leaf for leaf in leaves if any(_under(leaf, key) for key in stage.config_keys)]
    assert read, f"{name}: reads no field of configs/{config_name}.py"
    for leaf in read:
      value = config
      for part in leaf.split("."):
        value = value[part]
      changed = stages.stage_fingerprint(stage, _with(config, leaf, _other_value(value)), tmp_path)
      if leaf in SPEED_ONLY:
        assert changed == base, f"{name}: speed-only {leaf} changed the fingerprint"
      else:
        assert changed != base, f"{name}: {leaf} ({value!r}) does not change the fingerprint"
    for leaf in set(leaves) - set(read):         # a field the stage does not read leaves it alone
      value = config
      for part in leaf.split("."):
        value = value[part]
      assert stages.stage_fingerprint(stage, _with(config, leaf, _other_value(value)), tmp_path) == base, \
          f"{name}: {leaf} changed the fingerprint but is not among its config_keys"


def test_speed_only_fields_are_the_listed_ones():
  assert stages.speed_only_keys() == SPEED_ONLY


@pytest.mark.parametrize("config_name", ["tiny", "office", "electronics"])
def test_every_field_is_read_by_a_stage_or_listed_as_read_by_none(config_name):
  config = load_config(config_name)
  keys = [key for stage in stages.STAGES.values() for key in stage.config_keys] + list(READ_BY_NO_STAGE)
  orphans = [leaf for leaf in config_leaves(config) if not any(_under(leaf, key) for key in keys)]
  assert orphans == []


# ------------------------------------------------------------------------------ model directories by content

def _write_checkpoint(directory, weights: bytes):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text('{"d_model": 8}')
  (directory / "model.safetensors").write_bytes(weights)
  (directory / "spiece.model").write_bytes(b"pieces")
  (directory / "1_Pooling").mkdir(exist_ok=True)
  (directory / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')


def _record(stage_name, config, workdir):
  return stages.stage_record(stages.STAGES[stage_name], config, workdir)


@pytest.mark.parametrize("setting, stage_names", [("model.pretrained_dir", ("doc2query", "train", "eval")),
                                                  ("embed.text.model_dir", ("embed",))])
def test_a_model_directory_is_fingerprinted_by_content(setting, stage_names, tmp_path, dependency_records):
  model = tmp_path / "checkpoint"
  _write_checkpoint(model, b"weights-1")
  config = load_config("tiny", [f"{setting}={model}"])
  for name in stage_names:
    workdir = dependency_records(name)
    before = _record(name, config, workdir)
    assert set(before["inputs"]) == {f"{setting}:{f}" for f in ("config.json", "model.safetensors", "spiece.model",
                                                                "1_Pooling/config.json")}
    # Hidden files (e.g. `hf download`'s .cache/) are not the checkpoint.
    (model / ".cache").mkdir(exist_ok=True)
    (model / ".cache" / "download.lock").write_text(name)
    assert _record(name, config, workdir)["fingerprint"] == before["fingerprint"]
    # Same bytes written again (a new mtime): still fresh.
    (model / "model.safetensors").write_bytes(b"weights-1")
    os.utime(model / "model.safetensors", ns=(1, 1))
    assert _record(name, config, workdir)["fingerprint"] == before["fingerprint"]
    # Another checkpoint at the same path, same size: stale, and the difference names the file.
    (model / "model.safetensors").write_bytes(b"weights-2")
    after = _record(name, config, workdir)
    assert after["fingerprint"] != before["fingerprint"], name
    assert any(f"input file {setting}:model.safetensors changed" in change
               for change in stages.diff_records(before, after))
    _write_checkpoint(model, b"weights-1")
  # Stages that do not read the setting are not affected by it.
  others = [n for n in stages.STAGES if n not in stage_names and n != "prepare"]
  for name in others:
    workdir = dependency_records(name)
    assert not any(key.startswith(setting) for key in _record(name, config, workdir)["inputs"])


def test_a_hub_name_is_fingerprinted_by_its_snapshot_in_the_cache(tmp_path, dependency_records, monkeypatch):
  cache = tmp_path / "hub"
  repo = cache / "models--someone--t5-mini"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text("a" * 40)
  snapshot = repo / "snapshots" / ("a" * 40)
  _write_checkpoint(snapshot, b"weights-1")
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  config = load_config("tiny", ["model.pretrained_dir=someone/t5-mini"])
  workdir = dependency_records("train")
  before = _record("train", config, workdir)
  assert before["inputs"]["model.pretrained_dir:model.safetensors"]["size"] == len(b"weights-1")
  (snapshot / "model.safetensors").write_bytes(b"weights-2")
  assert _record("train", config, workdir)["fingerprint"] != before["fingerprint"]


def test_the_default_encoder_is_fingerprinted_when_installed(tmp_path, dependency_records, monkeypatch):
  """An empty embed.text.model_dir reads the packaged encoder when installed (else the TF-IDF fallback)."""
  from gensar_jax.embed import text_encoder
  packaged = tmp_path / "package" / "model"
  _write_checkpoint(packaged, b"minilm")
  monkeypatch.setattr(text_encoder, "default_model_dir", lambda: packaged)
  config = load_config("tiny", ["embed.text.model_dir="])
  workdir = dependency_records("embed")
  installed = _record("embed", config, workdir)
  assert "embed.text.model_dir:model.safetensors" in installed["inputs"]

  def missing():
    raise FileNotFoundError("not installed")
  monkeypatch.setattr(text_encoder, "default_model_dir", missing)
  fallback = _record("embed", config, workdir)
  assert fallback["inputs"] == {} and fallback["fingerprint"] != installed["fingerprint"]


def test_a_missing_model_directory_is_an_error_naming_the_setting(tmp_path, dependency_records):
  config = load_config("tiny", [f"model.pretrained_dir={tmp_path / 'nowhere'}"])
  with pytest.raises(DataError, match="model.pretrained_dir"):
    _record("train", config, dependency_records("train"))


def test_outside_files_are_hashed_once(tmp_path, dependency_records, monkeypatch):
  model = tmp_path / "checkpoint"
  _write_checkpoint(model, b"weights-1")
  config = load_config("tiny", [f"model.pretrained_dir={model}"])
  hashed = []
  real = stages._sha256
  monkeypatch.setattr(stages, "_sha256", lambda path: hashed.append(str(path)) or real(path))
  workdir = dependency_records("train")
  _record("train", config, workdir)
  _record("doc2query", config, dependency_records("doc2query"))
  assert sorted(hashed) == sorted(set(hashed)) and len(hashed) <= 4


def test_a_model_directory_moved_elsewhere_keeps_the_fingerprint(tmp_path, dependency_records, monkeypatch):
  """Files are named within their directory: the same checkpoint in another virtual environment or HF cache
  (the setting's value unchanged) leaves the outputs fresh."""
  from gensar_jax.embed import text_encoder
  config = load_config("tiny", ["embed.text.model_dir="])
  workdir = dependency_records("embed")
  fingerprints = []
  for place in ("venv1", "venv2"):
    packaged = tmp_path / place / "model"
    _write_checkpoint(packaged, b"minilm")
    monkeypatch.setattr(text_encoder, "default_model_dir", lambda packaged=packaged: packaged)
    fingerprints.append(_record("embed", config, workdir)["fingerprint"])
  assert fingerprints[0] == fingerprints[1]
