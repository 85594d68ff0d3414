"""Safety (docs/safety.md): typed and range-checked configs, re-runs that never lose the previous output,
provenance checks between stages, and one-line errors for damaged or duplicated input."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from etils import epath
from gcs_emulator import client_env

from gensar_jax import cli, stages
from gensar_jax import config as config_lib
from gensar_jax.config import apply_overrides, load_config
from gensar_jax.data import events, loaders
from gensar_jax.io_utils import DataError, load_arrays, read_json

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ config values

@pytest.mark.parametrize("override, key, expected", [
    ("tasks.behaviour_tokens=false", "tasks.behaviour_tokens", False),
    ("tasks.behaviour_tokens=TRUE", "tasks.behaviour_tokens", True),
    ("train.learning_rate=1e-3", "train.learning_rate", 1e-3),
    ("train.learning_rate=2", "train.learning_rate", 2.0),
    ("train.num_steps=1e3", "train.num_steps", 1000),
    ("data.synthetic.tree=[2, 3]", "data.synthetic.tree", (2, 3)),
    ("eval.protocols=sampled,full", "eval.protocols", ("sampled", "full")),
    ("eval.limit=7", "eval.limit", 7),
    ("eval.limit=None", "eval.limit", None),
    ("data.raw_dir=/data/x=1", "data.raw_dir", "/data/x=1"),
    ("parallel.logical_axis_rules=(('batch', 'data'), ('length', None))", "parallel.logical_axis_rules",
     (("batch", "data"), ("length", None))),
])
def test_overrides_take_the_type_of_their_default(override, key, expected):
  config = load_config("tiny", [override])
  value = config
  for part in key.split("."):
    value = value[part]
  assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("override, message", [
    ("tasks.behaviour_tokens=maybe", r"tasks.behaviour_tokens='maybe': expected true or false"),
    ("train.learning_rate=1e-3x", r"train.learning_rate='1e-3x': expected float"),
    ("train.num_steps=2.5", r"train.num_steps=2.5: expected int"),
    ("train.batch_size=true", r"train.batch_size='true': expected int"),
    ("data.synthetic.tree=(2, 'a')", r"data.synthetic.tree\[1\]='a': expected int"),
    ("data.synthetic.tree=5", r"data.synthetic.tree=5: expected a tuple"),
    ("eval.limit=abc", r"eval.limit='abc': expected None or int"),
    ("data=5", r"'data' is a config section"),
])
def test_overrides_of_the_wrong_type_name_key_value_and_type(override, message):
  with pytest.raises(ValueError, match=message):
    load_config("tiny", [override])


def test_check_config_lists_every_out_of_range_value():
  config = apply_overrides(load_config("tiny"), ["data.search_fraction=5", "eval.num_beams=5", "data.num_negatives=0",
                                                  "train.grad_accum_steps=3", "eval.split=tset",
                                                  "tasks.length_buckets=(32, 500)"])
  with pytest.raises(ValueError) as error:
    config_lib.check_config(config)
  text = str(error.value)
  for expected in ("data.search_fraction=5.0: expected between 0.0 and 1.0", "eval.num_beams=5: expected >= 10",
                   "data.num_negatives=0: expected >= 1", "train.batch_size=16 is not a multiple of "
                   "train.grad_accum_steps=3", "eval.split='tset': expected one of ['validation', 'test']",
                   "tasks.length_buckets=(32, 500): expected whole numbers between 1 and tasks.max_input_len=96"):
    assert expected in text
  for name in ("tiny", "synthetic", "office", "electronics"):
    config_lib.check_config(load_config(name))          # the shipped configs pass
  bucketed_workers = apply_overrides(load_config("synthetic"), ["tasks.pipeline_workers=2"])
  with pytest.raises(ValueError, match=r"tasks.pipeline_workers=2 with tasks.length_buckets=\(32, 64"):
    config_lib.check_config(bucketed_workers)
  with pytest.raises(ValueError, match=r"tasks.pipeline_workers=-1: expected >= 0"):
    load_config("tiny", ["tasks.pipeline_workers=-1"])
  with pytest.raises(ValueError, match=r"train.dropout_rng='philox': expected one of \['threefry', 'hash'\]"):
    load_config("tiny", ["train.dropout_rng=philox"])
  with pytest.raises(ValueError, match=r"train.early_stopping_patience=2 with train.eval_every=0"):
    load_config("tiny", ["train.early_stopping_patience=2", "train.eval_every=0"])
  config_lib.check_config(load_config("office_plateau"))


def test_cli_refuses_bad_values_before_any_work(tmp_path, caplog):
  workdir = tmp_path / "w"
  assert cli.main(["prepare", "--config", "tiny", "--workdir", str(workdir), "--set", "data.search_fraction=5"]) == 2
  assert "data.search_fraction=5.0" in caplog.text and not workdir.exists()
  with pytest.raises(SystemExit) as exit_:
    cli.main(["recommend", "--config", "tiny", "--workdir", str(workdir), "--user", "x", "-k", "-3"])
  assert exit_.value.code == 2


# ------------------------------------------------------------------------------ safe re-runs (fake stages)

def _fake_pipeline(monkeypatch, fail_in=None):
  """Two stages, `a` -> `b`, that write a file with their config value; `b` behaves like the training
  stage (checkpoints first, then the model) and can be made to fail half-way."""
  def run_a(config, workdir, out_dir):
    (out_dir / "value.txt").write_text(str(config.x))
    return {}

  def run_b(config, workdir, out_dir):
    (out_dir / "checkpoints").mkdir(exist_ok=True)
    (out_dir / "checkpoints" / f"step-{config.y}").write_text("state")
    if fail_in == "b":
      raise KeyboardInterrupt
    a_value = (stages.output_dir(workdir, "a") / "value.txt").read_text()
    (out_dir / "model.txt").write_text(f"model x={a_value} y={config.y}")
    return {}
  fake = {"a": stages.Stage("a", (), run_a, ""), "b": stages.Stage("b", ("a",), run_b, "")}
  monkeypatch.setattr(stages, "STAGES", fake)
  monkeypatch.setattr(stages, "root_schema", _fake_schema)
  return fake


def _fake_schema():
  """Stage `a` reads config field x, stage `b` reads y."""
  from gensar_jax.config_schema import Field, Section, whole
  return Section({"x": Field(0, whole(), read_by=("a",)), "y": Field(0, whole(), read_by=("b",))})


def _cfg(x, y):
  import ml_collections
  return ml_collections.ConfigDict({"x": x, "y": y})


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path):
  """A fresh workdir on a local disk, or in a bucket of the GCS emulator (the commit protocol is the same)."""
  if request.param == "local":
    yield tmp_path / "work"
    return
  env = request.getfixturevalue("gcs_emulator_env")
  with client_env(env):
    yield epath.Path(f"gs://bkt/{request.node.name.replace('[', '-').rstrip(']')}")


def _names(directory) -> list[str]:
  return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_failed_rerun_keeps_the_previous_output_and_resumes_later(store, monkeypatch):
  fake = _fake_pipeline(monkeypatch)
  for name in ("a", "b"):
    stages.run_stage(fake[name], _cfg(1, 10), store)
  first = stages.output_dir(store, "b")
  assert (first / "model.txt").read_text() == "model x=1 y=10"
  assert _names(store / "b") == ["fingerprint.json", first.name]

  fake = _fake_pipeline(monkeypatch, fail_in="b")      # a changed config, interrupted half-way
  with pytest.raises(KeyboardInterrupt):
    stages.run_stage(fake["b"], _cfg(1, 20), store)
  assert (stages.output_dir(store, "b") / "model.txt").read_text() == "model x=1 y=10"   # the previous model
  assert stages.is_fresh(fake["b"], _cfg(1, 10), store)
  attempt = store / "b" / stages.attempt_name(stages.stage_fingerprint(fake["b"], _cfg(1, 20), store))
  assert (attempt / "checkpoints" / "step-20").exists()                                  # unfinished work kept

  fake = _fake_pipeline(monkeypatch)                   # the same changed config again: resumes, then commits
  stages.run_stage(fake["b"], _cfg(1, 20), store)
  assert stages.output_dir(store, "b") == attempt
  assert (attempt / "model.txt").read_text() == "model x=1 y=20" and (attempt / "checkpoints" / "step-20").exists()
  assert _names(store / "b") == ["fingerprint.json", attempt.name]        # the replaced attempt is gone


def test_failed_stage_without_checkpoints_leaves_nothing_behind(store, monkeypatch):
  def boom(config, workdir, out_dir):
    (out_dir / "half.txt").write_text("half")
    raise RuntimeError("disk went away")
  stage = stages.Stage("a", (), boom, "")
  monkeypatch.setattr(stages, "STAGES", {"a": stage})
  monkeypatch.setattr(stages, "root_schema", _fake_schema)
  with pytest.raises(RuntimeError):
    stages.run_stage(stage, _cfg(1, 0), store)
  assert stages.read_record(store / "a") is None and _names(store / "a") == []


KILL_BETWEEN_WRITE_AND_COMMIT = """
import os, signal, sys
import ml_collections
from etils import epath
from gensar_jax import stages
from gensar_jax.config_schema import Field, Section, whole

def run_a(config, workdir, out_dir):
  (out_dir / "value.txt").write_text(str(config.x))
  return {}

stage = stages.Stage("a", (), run_a, "")
stages.STAGES = {"a": stage}
stages.root_schema = lambda: Section({"x": Field(0, whole(), read_by=("a",))})
if sys.argv[2] == "kill":     # after the output is written, before its record
  stages._commit = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
stages.run_stage(stage, ml_collections.ConfigDict({"x": int(sys.argv[3])}), epath.Path(sys.argv[1]))
"""


def test_kill_9_between_write_and_commit_keeps_the_previous_output(store):
  def run(mode: str, x: int) -> int:
    return subprocess.run([sys.executable, "-c", KILL_BETWEEN_WRITE_AND_COMMIT, os.fspath(store), mode, str(x)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300).returncode
  assert run("commit", 1) == 0
  good = stages.output_dir(store, "a")
  assert run("kill", 2) == -signal.SIGKILL
  assert stages.output_dir(store, "a") == good and (good / "value.txt").read_text() == "1"
  assert len(_names(store / "a")) == 3            # the record, the good attempt, the uncommitted one
  assert run("commit", 2) == 0                    # the next run rebuilds its attempt, commits, cleans up
  assert (stages.output_dir(store, "a") / "value.txt").read_text() == "2" and len(_names(store / "a")) == 2


def test_outputs_that_no_longer_belong_together_are_refused(tmp_path, monkeypatch):
  fake = _fake_pipeline(monkeypatch)
  for name in ("a", "b"):
    stages.run_stage(fake[name], _cfg(1, 10), tmp_path)
  stages.check_consistent(tmp_path, ["b"])
  stages.run_stage(fake["a"], _cfg(2, 10), tmp_path)       # `a` rebuilt: b/ was built from the old one
  with pytest.raises(DataError, match=r"the outputs b/ read do not belong together: b/ was built from a a/ that "
                                      r"has since been replaced \(config x: 1 -> 2\)"):
    stages.check_consistent(tmp_path, ["b"])
  assert stages.explain_changes(fake["b"], _cfg(2, 10), tmp_path) == ["input stage a/ was rebuilt (config x: 1 -> 2)"]
  assert stages.explain_changes(fake["b"], _cfg(1, 11), tmp_path)[0] == "config y: 10 -> 11"


def test_workdir_problems_are_found_before_any_work(tmp_path, monkeypatch):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(DataError, match="is a file, not a directory"):
    stages.check_workdir(a_file)
  with pytest.raises(DataError, match="is not writable"):
    stages.check_workdir(a_file / "sub")
  monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 5 << 20))
  with pytest.raises(DataError, match="only 5 MiB free"):
    stages.check_workdir(tmp_path / "w")


def test_a_workdir_uri_that_cannot_be_written_is_one_error_before_any_work(gcs_emulator_env, caplog):
  with client_env(gcs_emulator_env):
    stages.check_workdir("gs://bkt/fine")                                   # the emulator's bucket
    with pytest.raises(DataError, match=r"workdir gs://no-such-bucket/run: cannot write there .*credentials"):
      stages.check_workdir("gs://no-such-bucket/run")
    assert cli.main(["prepare", "--config", "tiny", "--workdir", "gs://no-such-bucket/run"]) == 2
  assert "gs://no-such-bucket/run: cannot write there" in caplog.text


# ------------------------------------------------------------------------------ provenance of raw files

def _write_lcrec(directory, titles):
  directory.mkdir(exist_ok=True)
  items = {str(i): {"title": t, "description": "", "categories": "Office, Pens"} for i, t in enumerate(titles)}
  with gzip.open(directory / "Toy.item.json.gz", "wt") as f:
    json.dump(items, f)
  (directory / "Toy.inter.json").write_text(json.dumps({"u": [0, 1]}))


def test_prepare_fingerprint_covers_the_raw_files_content(tmp_path):
  raw = tmp_path / "raw"
  _write_lcrec(raw, ["pen", "ink"])
  config = apply_overrides(load_config("tiny"), ["data.source=lcrec", f"data.raw_dir={raw}", "data.name=Toy"])
  prepare = stages.STAGES["prepare"]
  before = stages.stage_record(prepare, config, tmp_path)
  assert set(before["inputs"]) == {str(raw / "Toy.item.json.gz"), str(raw / "Toy.inter.json")}
  _write_lcrec(raw, ["pen", "red ink"])                      # same config, other content
  after = stages.stage_record(prepare, config, tmp_path)
  assert after["fingerprint"] != before["fingerprint"]
  assert any("Toy.item.json.gz changed" in c for c in stages.diff_records(before, after))


def test_speed_only_settings_leave_the_fingerprint_alone(tmp_path, dependency_records):
  """tasks.pipeline_workers changes how batches are built, not which: a trained model stays current."""
  train = stages.STAGES["train"]
  dependency_records("train")
  record = lambda overrides: stages.stage_record(train, load_config("tiny", overrides), tmp_path)  # noqa: E731
  base = record([])
  assert "pipeline_workers" not in base["config"]["tasks"]
  assert record(["tasks.pipeline_workers=4"])["fingerprint"] == base["fingerprint"]
  assert record(["tasks.bucket_window=4"])["fingerprint"] != base["fingerprint"]


def test_late_fields_at_their_default_leave_the_fingerprint_alone(tmp_path, dependency_records):
  """Fields absent from the recorded results' fingerprints (`Field.unrecorded`) are left out of a
  record while they hold the value that reproduces those results, so recorded runs stay current; any other
  value, a changed default included (train.dropout_rng is "hash" now), is recorded."""
  train = stages.STAGES["train"]
  dependency_records("train")
  record = lambda overrides: stages.stage_record(train, load_config("tiny", overrides), tmp_path)  # noqa: E731
  late = record(["train.dropout_rng=threefry", "train.loss_normalizer=batch_tokens"])
  assert "dropout_rng" not in late["config"]["train"] and "early_stopping_patience" not in late["config"]["train"]
  assert "loss_normalizer" not in late["config"]["train"]
  base = record([])
  assert base["config"]["train"]["dropout_rng"] == "hash" and base["fingerprint"] != late["fingerprint"]
  assert base["config"]["train"]["loss_normalizer"] == "expected_tokens"
  assert record(["train.early_stopping_patience=3"])["fingerprint"] != base["fingerprint"]
  doc2query = stages.STAGES["doc2query"]
  dependency_records("doc2query")
  d2q = lambda overrides: stages.stage_record(doc2query, load_config("tiny", overrides), tmp_path)  # noqa: E731
  assert "dropout_rng" not in d2q(["doc2query.train.dropout_rng=threefry"])["config"]["doc2query"]["train"]
  assert d2q([])["fingerprint"] != d2q(["doc2query.train.dropout_rng=threefry"])["fingerprint"]


# ------------------------------------------------------------------------------ damaged and duplicated input

def _gz_lines(path, lines):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def _amazon(tmp_path, reviews, meta):
  _gz_lines(tmp_path / "reviews_Toys_5.json.gz", [json.dumps(r) for r in reviews])
  _gz_lines(tmp_path / "meta_Toys.json.gz", [repr(m) for m in meta])
  return tmp_path


META = [{"asin": "B1", "title": "Ball", "categories": [["Toys", "Balls"]]},
        {"asin": "B2", "title": "Kite", "categories": [["Toys", "Kites"]]}]


def test_exact_duplicate_events_and_records_are_dropped_and_counted(tmp_path):
  review = {"reviewerID": "U1", "asin": "B1", "unixReviewTime": 10}
  raw = loaders.load_amazon2014(_amazon(tmp_path, [review, {**review, "asin": "B2", "unixReviewTime": 20}, review],
                                        [*META, META[0]]), "Toys")
  np.testing.assert_array_equal(raw.purchases.item, [0, 1])        # the target is not in its own history
  assert raw.duplicates == {"review_events": 1, "item_records": 1}


def test_conflicting_duplicates_are_refused_with_both_places(tmp_path):
  review = {"reviewerID": "U1", "asin": "B1", "unixReviewTime": 10}
  _amazon(tmp_path, [review], [*META, {**META[0], "title": "Another ball"}])
  with pytest.raises(DataError, match=r"meta_Toys.json.gz:3: item 'B1' already has a different metadata record "
                                      r"at .*meta_Toys.json.gz:1"):
    loaders.load_amazon2014(tmp_path, "Toys")
  items = '{"0": {"title": "pen"},\n "1": {"title": "ink"}}'
  (tmp_path / "Toy.item.json").write_text(items)
  (tmp_path / "Toy.inter.json").write_text('{"u": [0, 1],\n "v": [1],\n "u": [1, 0]}')
  with pytest.raises(DataError, match=r"key 'u' appears 2 times with different values \(lines 1, 3\)"):
    loaders.load_lcrec(tmp_path, "Toy")
  (tmp_path / "Toy.inter.json").write_text('{"u": [0, 1],\n "v": [1],\n "u": [0, 1]}')
  assert loaders.load_lcrec(tmp_path, "Toy").duplicates == {"user_lists": 1}


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:len(data) // 2], r"reviews_Toys_5.json.gz: damaged or truncated file after line"),
    (lambda data: b"not gzip at all" + data, r"reviews_Toys_5.json.gz: damaged or truncated file after line 0"),
])
def test_damaged_gzip_is_one_line_error_naming_the_file(tmp_path, damage, message):
  reviews = [{"reviewerID": f"U{i}", "asin": "B1", "unixReviewTime": i, "reviewText": "x" * 200} for i in range(2000)]
  _amazon(tmp_path, reviews, META)
  path = tmp_path / "reviews_Toys_5.json.gz"
  path.write_bytes(damage(path.read_bytes()))
  with pytest.raises(DataError, match=message):
    loaders.load_amazon2014(tmp_path, "Toys")


def test_non_utf8_and_deeply_nested_records_name_file_and_line(tmp_path):
  _amazon(tmp_path, [{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1}], META)
  with gzip.open(tmp_path / "reviews_Toys_5.json.gz", "ab") as f:
    f.write(b'{"reviewerID": "U\xff", "asin": "B1", "unixReviewTime": 2}\n')
  with pytest.raises(DataError, match=r"reviews_Toys_5.json.gz:2: not UTF-8 text"):
    loaders.load_amazon2014(tmp_path, "Toys")
  _amazon(tmp_path, [{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1}], META)
  with gzip.open(tmp_path / "reviews_Toys_5.json.gz", "at") as f:
    f.write("[" * 100_000 + "]" * 100_000 + "\n")
  with pytest.raises(DataError, match=r"reviews_Toys_5.json.gz:2: record nested too deeply"):
    loaders.load_amazon2014(tmp_path, "Toys")
  (tmp_path / "Toy.item.json").write_text("[" * 100_000 + "]" * 100_000)
  (tmp_path / "Toy.inter.json").write_text("{}")
  with pytest.raises(DataError, match=r"Toy.item.json: JSON nested too deeply"):
    loaders.load_lcrec(tmp_path, "Toy")


def test_empty_query_is_refused_with_file_and_line(tmp_path):
  _gz_lines(tmp_path / "query_text.txt.gz", ["red pen", "", "ink"])
  _gz_lines(tmp_path / "train.qrels.gz", ["U1_0 0 B1 1", "U1_1 0 B2 1"])
  with pytest.raises(DataError, match=r"train.qrels.gz:2: query id 1 refers to line 2 of .*query_text.txt.gz, "
                                      r"which is empty"):
    loaders.load_ai_queries(tmp_path)


def test_data_without_search_sessions_says_why(tmp_path):
  review = {"reviewerID": "U1", "asin": "B1", "unixReviewTime": 10}
  flat = [{"asin": "B1", "title": "Ball", "categories": [["Toys"]]}]
  raw = loaders.load_amazon2014(_amazon(tmp_path, [review], flat), "Toys")
  with pytest.raises(DataError, match="no search sessions: .*no purchased item has a category path of at least 2"):
    events.build_sar_dataset(raw, "Toys")
  with pytest.raises(DataError, match=r"no search sessions: none of the 1 purchases .* is among the 1 \(user, item\)"):
    events.build_sar_dataset(raw, "Toys", user_item_queries={("U9", "B1"): ["ball"]})


def test_damaged_array_files_are_clear_errors_never_unsafe_loads(tmp_path):
  path = tmp_path / "codes.npz"
  path.write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(DataError, match="codes.npz: damaged or not an array file written by gensar"):
    load_arrays(path)
  np.savez(path, codes=np.asarray([{"a": 1}], dtype=object))
  with pytest.raises(DataError, match="holds Python objects") as error:
    load_arrays(path)
  assert "allow_pickle" not in str(error.value)
  assert zipfile.is_zipfile(path)


# ------------------------------------------------------------------------------ output hygiene

def test_prepare_prints_only_its_table_on_stdout(tmp_path, capsys):
  assert cli.main(["prepare", "--config", "tiny", "--workdir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert out.startswith("| statistic | value |") and "Downloading" not in out
  assert read_json(stages.output_dir(tmp_path, "prepare") / "stats.json")["duplicates_dropped"] == {}
