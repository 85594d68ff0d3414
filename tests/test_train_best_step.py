"""One best-step rule: the checkpoint kept as best, `Checkpointer.best_step` and the loop's `best_evaluation`
(early stopping, the reported step) all pick the earliest of exactly tied best scores, as the authors' HF
Trainer does (`load_best_model_at_end`: the best checkpoint is replaced only on a strict improvement)."""
import numpy as np
import pytest

import jax
import ml_collections

from gensar_jax import parallel
from gensar_jax.model.t5 import T5Config
from gensar_jax.train import checkpoint as checkpoint_lib
from gensar_jax.train import state as state_lib
from gensar_jax.train.loop import best_evaluation, evaluations_since_best, train
from toy_data import toy_copy_dataset

VOCAB = 24


def _replayed_best(scored, mode):
  """HF Trainer's rule, replayed: scan the evaluations in step order and replace the best only when
  `np.greater` (`np.less` for "min") holds against it."""
  best = None
  for step, value in sorted(scored):
    if best is None or (value > best[1] if mode == "max" else value < best[1]):
      best = (step, value)
  return None if best is None else best[0]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_step_keeps_the_earliest_of_exact_ties(mode):
  rng = np.random.default_rng(0)
  for _ in range(200):
    steps = rng.choice(np.arange(1, 50), size=rng.integers(1, 8), replace=False)
    values = rng.integers(0, 3, size=len(steps)) / 2       # few distinct values: many exact ties
    scored = list(zip(steps.tolist(), values.tolist()))
    rng.shuffle(scored)
    expected = _replayed_best(scored, mode)
    assert checkpoint_lib.best_step(scored, mode) == expected
    history = [{"step": s, "m": v} for s, v in sorted(scored)]
    assert best_evaluation(history, "m", mode)["step"] == expected
  assert checkpoint_lib.best_step([], mode) is None
  with pytest.raises(ValueError, match=r"best_mode: expected one of \['max', 'min'\], got 'maximum'"):
    checkpoint_lib.best_step([(1, 0.5)], "maximum")


def _config(**overrides):
  train_cfg = state_lib.train_config()
  train_cfg.update(dict(num_steps=8, log_every=1, checkpoint_every=100, async_checkpointing=False,
                        keep_checkpoints=1, keep_best=1, best_metric="val/score", best_mode="max"))
  train_cfg.update(overrides)
  return ml_collections.ConfigDict({"train": train_cfg, "parallel": parallel.parallel_config()})


def _train(tmp_path, config, scores):
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "model": 1}, jax.devices()[:1])
  model = T5Config.tiny(VOCAB, num_encoder_layers=1, num_decoder_layers=1)
  return train(config, model, iter(toy_copy_dataset(VOCAB, 8)), 8, tmp_path,
               eval_fn=lambda params, step: {"val/score": scores[step]}, eval_every=2, mesh=mesh)


def test_a_tied_best_selects_and_keeps_the_earlier_step(tmp_path):
  """Steps 4 and 6 score exactly the same best value: step 4 is the best step of the loop, of the
  checkpointer and of the kept checkpoints (step 8 is kept as the latest)."""
  scores = {2: 0.1, 4: 0.9, 6: 0.9, 8: 0.2}
  result = _train(tmp_path, _config(), scores)
  assert result.best_step == 4
  assert best_evaluation(result.eval_history, "val/score", "max")["step"] == 4
  assert evaluations_since_best(result.eval_history, "val/score", "max") == 2
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [4, 8]


def test_a_best_metric_the_validation_does_not_report_stops_the_run(tmp_path):
  with pytest.raises(ValueError, match=r"train.best_metric='val/scroe': the validation at step 2 does not report "
                                       r"it; it reports \['val/score'\]"):
    _train(tmp_path, _config(best_metric="val/scroe"), {2: 0.1, 4: 0.9, 6: 0.9, 8: 0.2})
