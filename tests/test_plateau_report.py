"""benchmarks/plateau_report.py: finds only this config's run, renders the recorded history, and the section of
docs/reproduction.md is what it renders from results/office/plateau.json."""
from __future__ import annotations

import json

import pytest

from benchmarks import plateau_report
from gensar_jax import stages
from gensar_jax.config import load_config
from gensar_jax.io_utils import DataError


def _summary(test=None, status="in progress"):
  history = [{"step": s, "seconds": 60.0 * s, "train/loss": 3.0, "val/rec_HR@10": 0.2, "val/rec_NDCG@10": r,
              "val/search_HR@10": 0.3, "val/search_NDCG@10": q, "val/ndcg10_mean": (r + q) / 2}
             for s, r, q in ((100, 0.05, 0.10), (200, 0.09, 0.17), (300, 0.08, 0.16))]
  return {"config": "office_plateau", "train_fingerprint": "abc", "status": status, "batch_size": 128,
          "planned_steps": 1000, "epoch_examples": 12_800, "eval_every": 100, "patience": 2,
          "best_metric": "val/ndcg10_mean", "validation_rows": 1000, "last_step": 300, "hours": 5.0,
          "best": {"step": 200, "val/ndcg10_mean": 0.13, "val/rec_NDCG@10": 0.09, "val/search_NDCG@10": 0.17},
          "evaluations_since_best": 1, "history": history, "test": test,
          "baselines": [{"label": "SASRec", "metrics": {"rec": {"sampled": {"HR@10": 0.44, "NDCG@10": 0.24}}}}]}


def test_render_and_plot(tmp_path):
  body = plateau_report.render(_summary())
  assert "in progress at step 300 of 1,000 (3.0 epochs, 5.0 h of wall time" in body
  assert "at step 200 (2.0 epochs); 1 evaluation(s) since, patience 2" in body
  assert "| SASRec | 0.4400 | 0.2400 | – | – | – | – |" in body
  assert "has no test row yet" in body
  assert ("Over the last 2 evaluations (2.0 epochs) the mean validation NDCG@10 moved by +0.0450 (rec +0.0300, "
          "search +0.0600).") in body
  test = {"rec": {"sampled": {"HR@10": 0.3, "NDCG@10": 0.15}}, "search": {"sampled": {"HR@10": 0.4, "NDCG@10": 0.2}}}
  finished = plateau_report.render(_summary(test, "stopped early"))
  assert "| GenSAR, selected checkpoint (step 200) | 0.3000 | 0.1500 | 0.4000 | 0.2000 | – | – |" in finished
  assert "has no test row" not in finished
  assert ("On the test split the selected checkpoint's NDCG@10 is rec sampled 0.1500 (0.62x SASRec); "
          "search sampled 0.2000.") in finished
  plateau_report.plot_curve(_summary(), tmp_path / "curve.png")
  assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_earlier_run_is_compared_at_its_last_common_step(tmp_path):
  summary = _summary()
  assert plateau_report.earlier_comparison(summary) == ""
  earlier = {"config": "office_plateau", "planned_steps": 4000, "last_step": 250, "status": "in progress", "train_fingerprint": "def",
             "history": [{"step": s, "seconds": 1.0, "val/rec_NDCG@10": 0.01, "val/search_NDCG@10": 0.03,
                          "val/ndcg10_mean": m, "train/loss": 2.0} for s, m in ((100, 0.02), (200, 0.11), (250, 0.12))]}
  path = tmp_path / "earlier.json"
  path.write_text(json.dumps(earlier))
  summary["earlier"] = plateau_report.earlier_run(path)
  assert set(summary["earlier"]["history"][0]) == {"step", "val/rec_NDCG@10", "val/search_NDCG@10", "val/ndcg10_mean"}
  body = plateau_report.render(summary)
  assert ("an earlier run of the same model and data with a cosine horizon of 4,000 steps (`results/office/earlier.json`, "
          "recorded up to step 250); at step 200, its last step in common with this run, its mean validation "
          "NDCG@10 was 0.1100 against 0.1300 here.") in body
  plateau_report.plot_curve(summary, tmp_path / "curve.png")
  assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert plateau_report.earlier_run(tmp_path / "missing.json") is None
  (tmp_path / "bad.json").write_text(json.dumps({"history": []}))
  with pytest.raises(DataError, match="bad.json: not a plateau_report summary .missing config, planned_steps"):
    plateau_report.earlier_run(tmp_path / "bad.json")


def test_only_this_configs_run_is_read(tmp_path, dependency_records):
  config = load_config("tiny")
  dependency_records("train")
  with pytest.raises(DataError, match="no training run of tiny with its current inputs"):
    plateau_report.train_dir(config, tmp_path)
  fp = stages.stage_fingerprint(stages.STAGES["train"], config, tmp_path)
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "fingerprint.json").write_text(json.dumps({"fingerprint": "another run"}))
  with pytest.raises(DataError, match="no training run"):      # a finished run of other inputs is refused
    plateau_report.train_dir(config, tmp_path)
  partial = tmp_path / "train" / f"run-{fp}"
  partial.mkdir()
  (partial / "eval_history.json").write_text("[]")
  assert plateau_report.train_dir(config, tmp_path) == (partial, False)
  (tmp_path / "train" / "fingerprint.json").write_text(json.dumps({"fingerprint": fp, "output": f"run-{fp}"}))
  assert plateau_report.train_dir(config, tmp_path) == (partial, True)


def test_docs_plateau_section_is_the_recorded_summary():
  path = plateau_report.RESULTS / "plateau.json"
  assert path.exists(), "results/office/plateau.json is part of the repository"
  page = plateau_report.PAGE.read_text()
  start, end = plateau_report.MARKERS
  shown = page.split(start, 1)[1].split(end, 1)[0].strip()
  assert shown == plateau_report.render(json.loads(path.read_text())).strip()
