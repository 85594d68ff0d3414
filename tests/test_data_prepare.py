"""The prepare stage end to end: outputs, determinism, bad input, and the CLI."""
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from gensar_jax import cli
from gensar_jax.config import apply_overrides, load_config
from gensar_jax.data.prepare import prepare
from gensar_jax.io_utils import DataError


def _digest(directory: Path) -> dict:
  directory = Path(directory)
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def test_prepare_tiny_is_byte_identical_across_runs(tmp_path, tiny_prepared):
  prepare(load_config("tiny"), tmp_path / "a")
  assert _digest(tmp_path / "a") == _digest(tiny_prepared.directory)
  stats = json.loads((tmp_path / "a" / "stats.json").read_text())
  assert stats["negatives_per_event"] == [19]
  assert stats["rec_validation"] == stats["rec_test"] == stats["rec_users"]


def test_prepared_negatives_exclude_targets_and_history(tiny_prepared):
  data, rec = tiny_prepared.dataset, tiny_prepared.samples["rec"]
  test_rows = rec.split_rows(2)
  negs = tiny_prepared.negatives["rec_test"]
  assert negs.shape == (len(test_rows), 19)
  later_drawn = 0
  for split, name in ((1, "rec_validation"), (2, "rec_test")):
    for n, r in enumerate(rec.split_rows(split)):
      # The reference's exclusion (default): the user's history up to and including the event.
      user_events = np.flatnonzero(data.rec_user == rec.user[r])
      history = set(data.rec_item[user_events[user_events <= rec.event[r]]].tolist())
      later = set(data.rec_item[user_events[user_events > rec.event[r]]].tolist()) - history
      drawn = set(tiny_prepared.negatives[name][n].tolist())
      assert not history & drawn
      later_drawn += bool(later & drawn)
  assert later_drawn > 0, "later purchases of the user may be drawn (reference rule)"
  src = tiny_prepared.samples["search"]
  snegs = tiny_prepared.negatives["search_test"]
  assert (snegs != src.item[src.split_rows(2)][:, None]).all()


def _write_office_like(tmp_path, inter):
  items = {str(i): {"title": f"item {i}", "description": "", "categories": "Office Electronics, Phones"}
           for i in range(30)}
  with gzip.open(tmp_path / "Toy.item.json.gz", "wt") as f:
    json.dump(items, f)
  (tmp_path / "Toy.inter.json").write_text(json.dumps(inter))


def _lcrec_config(tmp_path):
  return apply_overrides(load_config("tiny"), ["data.source=lcrec", f"data.raw_dir={tmp_path}", "data.name=Toy",
                                                "data.num_negatives=5", "data.vocab_size=400"])


def test_empty_after_filtering_is_a_clear_error_and_writes_nothing(tmp_path):
  _write_office_like(tmp_path, {"u": [0, 1, 2]})          # one user with 3 purchases: nothing survives
  out = tmp_path / "work" / "prepare"
  with pytest.raises(DataError, match="no rec train samples left after filtering"):
    prepare(_lcrec_config(tmp_path), out)
  assert not out.exists() and not any(p.name.startswith(".prepare") for p in out.parent.glob(".*"))


def test_prepare_failure_keeps_previous_output(tmp_path):
  _write_office_like(tmp_path, {f"u{u}": list(range(u, u + 8)) for u in range(12)})
  out = tmp_path / "work" / "prepare"
  prepare(_lcrec_config(tmp_path), out)
  before = _digest(out)
  (tmp_path / "Toy.inter.json").write_text('{"u0": [0, 1,')
  with pytest.raises(DataError, match=r"Toy.inter.json:1: invalid JSON"):
    prepare(_lcrec_config(tmp_path), out)
  assert _digest(out) == before


def test_cli_prepare_and_stats(tmp_path, capsys):
  workdir = tmp_path / "w"
  assert cli.main(["prepare", "--config", "tiny", "--workdir", str(workdir), "--set", "data.num_negatives=9"]) == 0
  assert "Negatives per val/test event | 9" in capsys.readouterr().out
  assert cli.main(["stats", "--config", "tiny", "--workdir", str(workdir)]) == 0
  assert "| Users | 150 |" in capsys.readouterr().out
  from gensar_jax import stages
  config = load_config("tiny", ["data.num_negatives=9"])
  assert stages.is_fresh(stages.STAGES["prepare"], config, workdir)
  assert not stages.is_fresh(stages.STAGES["prepare"], load_config("tiny"), workdir)   # other config
  assert not stages.is_fresh(stages.STAGES["embed"], config, workdir)                  # never ran


def test_cli_reports_bad_overrides_and_configs(tmp_path):
  assert cli.main(["prepare", "--config", "tiny", "--workdir", str(tmp_path), "--set", "data.num_negativs=9"]) == 2
  assert cli.main(["prepare", "--config", "nope", "--workdir", str(tmp_path)]) == 2
  assert cli.main(["prepare", "--config", "tiny", "--workdir", str(tmp_path), "--set", "data.source=csv"]) == 2
  with pytest.raises(KeyError, match="no config field 'data.nope'"):
    apply_overrides(load_config("tiny"), ["data.nope=1"])
  with pytest.raises(ValueError, match="expected KEY=VALUE"):
    apply_overrides(load_config("tiny"), ["data.num_negatives"])


@pytest.mark.slow
def test_office_prepare_real_data(tmp_path, shared_data):
  stats = prepare(load_config("office"), tmp_path / "prepare")
  assert stats["users"] == 4905 and 2400 <= stats["items"] <= 2420
  assert stats["rec_test"] == stats["rec_validation"] == 4905
  assert stats["search_test"] > 4000 and stats["negatives_per_event"] == [99]


def test_real_queries_need_both_qrels_and_a_query_dir(shared_data):
  """data.queries=real (the electronics default) refuses a missing query_dir and a partial download: the
  shared Electronics folder lacks train.qrels.gz."""
  from gensar_jax.data.prepare import query_source
  config = load_config("electronics").data
  with pytest.raises(DataError, match="data.queries='real' needs data.query_dir"):
    query_source(config)
  config.query_dir = str(shared_data / "amazon_product_search_ai2017" / "Electronics")
  with pytest.raises(DataError, match="no train.qrels"):
    query_source(config)
  config.query_dir = str(shared_data / "amazon_product_search_ai2017" / "Cell_Phones_and_Accessories")
  assert query_source(config) == "real"
  config.queries = "generated"
  assert query_source(config) == "generated"
  config.queries, config.query_dir = "auto", ""
  assert query_source(config) == "generated"


def test_array_samples_serve_the_arrayrecord_records_in_their_order(tiny_prepared):
  """A bucket workdir has no ArrayRecord files: the sources built from the sample arrays must give the same
  records (keys, values, types) in the same order."""
  from gensar_jax.data.storage import array_samples
  stored = tiny_prepared.sample_sources()                 # the ArrayRecord files of a local workdir
  from_arrays = array_samples(tiny_prepared.samples, tiny_prepared.negatives)
  assert set(stored) == set(from_arrays)
  for split, source in stored.items():
    rows = list(range(len(source)))
    assert len(from_arrays[split]) == len(source)
    for a, b in zip(source.__getitems__(rows), from_arrays[split].__getitems__(rows)):
      assert a.keys() == b.keys(), split
      for key in a:
        assert type(a[key]) is type(b[key]) and np.array_equal(a[key], b[key]), (split, key)
        assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, (split, key)


@pytest.mark.parametrize("stage, override", [("prepare", "data.negative_pools=all_events"),
                                             ("prepare", "data.reference_history=true"),
                                             ("train", "tasks.item_pool=catalogue"),
                                             ("train", "tasks.with_replacement=nsip,desc2id,id2desc")])
def test_data_switches_are_in_their_stage_fingerprint(dependency_records, stage, override):
  from gensar_jax.stages import STAGES, stage_fingerprint
  workdir = dependency_records(stage)
  before = stage_fingerprint(STAGES[stage], load_config("tiny"), workdir)
  assert stage_fingerprint(STAGES[stage], load_config("tiny", [override]), workdir) != before
