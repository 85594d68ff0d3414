"""The "SASRec (BCE, sampled negatives)" baseline: trains its own SASRec with loss=bce from the embed.sasrec
settings, on the prepared data alone, and is cached apart from the SASRec row."""
import pytest

from gensar_jax.config import load_config
from gensar_jax.embed import sasrec
from gensar_jax.eval import baselines, metrics
from gensar_jax.io_utils import write_json
from gensar_jax import reproduce


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  from gensar_jax.stages import STAGES, run_stage
  workdir = tmp_path_factory.mktemp("sasrec_bce")
  config = load_config("tiny", ["embed.sasrec.epochs=2", "embed.sasrec.eval_every=1"])
  run_stage(STAGES["prepare"], config, workdir)
  return workdir, config


def test_sasrec_bce_baseline_runs_on_tiny_with_the_bce_loss(tiny_workdir, monkeypatch):
  workdir, config = tiny_workdir
  trained = []
  original = sasrec.train_sasrec

  def spy(sequences, num_items, cfg, *args, **kwargs):
    trained.append(cfg.to_dict())
    return original(sequences, num_items, cfg, *args, **kwargs)

  monkeypatch.setattr(sasrec, "train_sasrec", spy)
  results = baselines.evaluate_baselines(workdir, config, split="validation", methods=["sasrec_bce"])
  assert set(results) == {"sasrec_bce"} and set(results["sasrec_bce"]) == {"rec"}
  per_protocol = results["sasrec_bce"]["rec"]
  for values in per_protocol.values():
    assert all(0.0 <= v <= 1.0 for v in values.values())
  for key in ("HR@1", "HR@5", "HR@10"):
    assert per_protocol["full"][key] <= per_protocol["sampled"][key]
  # One training: the embed.sasrec section with loss=bce, nothing else changed; the config is untouched.
  expected = {**config.embed.sasrec.to_dict(), "loss": "bce"}
  assert trained == [expected] and config.embed.sasrec.loss == "softmax"


def test_sasrec_bce_row_is_cached_apart_from_sasrec(tmp_path, monkeypatch):
  config = load_config("tiny")
  calls = []

  def fake_evaluate(workdir, config, split="test", methods=None):
    calls.append(tuple(methods))
    value = 0.25 if methods == ["sasrec_bce"] else 0.5
    return {methods[0]: {"rec": {p: {"NDCG@10": value} for p in metrics.PROTOCOLS}}}

  monkeypatch.setattr(baselines, "evaluate_baselines", fake_evaluate)
  for stage in ("prepare", "embed"):
    write_json(tmp_path / stage / "fingerprint.json", {"fingerprint": stage})
  by_slug = {m.slug: m for m in reproduce.suite_methods("main")}
  timings = reproduce.Timings(tmp_path / "timings.json")
  bce = reproduce.baseline_metrics(by_slug["sasrec-bce"], config, tmp_path, tmp_path / "cache", timings)
  softmax = reproduce.baseline_metrics(by_slug["sasrec"], config, tmp_path, tmp_path / "cache", timings)
  assert calls == [("sasrec_bce",), ("sasrec",)]
  assert bce["rec"]["sampled"]["NDCG@10"] == 0.25 and softmax["rec"]["sampled"]["NDCG@10"] == 0.5
  assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["sasrec-bce.json", "sasrec.json"]
  # A change of its negatives count retrains it.
  changed = load_config("tiny", ["embed.sasrec.bce_negatives=3"])
  reproduce.baseline_metrics(by_slug["sasrec-bce"], changed, tmp_path, tmp_path / "cache", timings)
  assert calls[-1] == ("sasrec_bce",) and len(calls) == 3
  assert by_slug["sasrec-bce"].tasks == ("rec",) and by_slug["sasrec-bce"].note
