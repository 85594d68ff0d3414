"""Training loop: learning, exact resume after a stop, NaN stop, best/latest checkpoint retention, the progress
line and the TensorBoard scalars a user follows while it runs."""
import logging
import math
import re
import struct

import numpy as np
import pytest

import jax
import ml_collections

from gensar_jax import parallel
from gensar_jax.model.t5 import T5Config
from gensar_jax.train import state as state_lib
from gensar_jax.train import loop as loop_lib
from gensar_jax.train.loop import (TrainingDivergedError, evaluations_since_best, format_progress,
                                   read_eval_history, train)
from toy_data import toy_copy_dataset

VOCAB = 24


def _full_config(num_steps=8, **train_overrides):
  train_cfg = state_lib.train_config()
  train_cfg.num_steps = num_steps
  train_cfg.log_every = 1
  train_cfg.checkpoint_every = 3
  train_cfg.async_checkpointing = False
  train_cfg.update(train_overrides)
  return ml_collections.ConfigDict({"train": train_cfg, "parallel": parallel.parallel_config()})


def _model(dropout_rate=0.1):
  """One encoder and one decoder layer: compile time dominates these tests."""
  return T5Config.tiny(VOCAB, num_encoder_layers=1, num_decoder_layers=1, dropout_rate=dropout_rate)


def _leaves(params):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _one_device_mesh():
  return parallel.make_mesh({"data": 1, "fsdp": 1, "model": 1}, jax.devices()[:1])


@pytest.mark.slow
def test_loss_decreases_on_copy_task(tmp_path):
  config = _full_config(num_steps=60, learning_rate=1e-2, checkpoint_every=60, log_every=10)
  batches = iter(toy_copy_dataset(VOCAB, 16, num_examples=16))
  result = train(config, _model(dropout_rate=0.0), batches, 60, tmp_path, mesh=_one_device_mesh())
  # Far below the loss of a uniform guess (log V): the model learned to copy its 16 examples.
  assert result.train_metrics["loss"] < 0.2 * math.log(VOCAB)
  assert result.train_metrics["accuracy"] > 0.9
  assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
  config = _full_config()
  straight_iter = iter(toy_copy_dataset(VOCAB, 8, seed=5))
  straight = train(config, _model(), straight_iter, 6, tmp_path / "straight", mesh=_one_device_mesh())

  first_iter = iter(toy_copy_dataset(VOCAB, 8, seed=5))
  # Stops ("killed") after the step-3 checkpoint; resumes on another mesh (8-way data parallel).
  train(config, _model(), first_iter, 3, tmp_path / "resumed", mesh=_one_device_mesh())
  fresh_iter = iter(toy_copy_dataset(VOCAB, 8, seed=5))  # a new process would build a new iterator
  resumed = train(config, _model(), fresh_iter, 6, tmp_path / "resumed")

  assert int(resumed.state.step) == 6
  for a, b in zip(_leaves(straight.state.params), _leaves(resumed.state.params)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
  for a, b in zip(_leaves(straight.state.opt_state), _leaves(resumed.state.opt_state)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
  # The data position was restored: both iterators continue with the same batch.
  assert fresh_iter.get_state() == straight_iter.get_state()
  np.testing.assert_array_equal(next(fresh_iter)["example_id"], next(straight_iter)["example_id"])


class _PoisonAfter:
  """Yields batches from `inner`; from the `bad_step`-th batch on, loss weights are NaN."""

  def __init__(self, inner, bad_step):
    self.inner, self.bad_step, self.count = inner, bad_step, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self.inner))
    self.count += 1
    if self.count >= self.bad_step:
      batch["decoder_loss_weights"] = np.full_like(batch["decoder_loss_weights"], np.nan)
    return batch


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
  config = _full_config(checkpoint_every=2)
  batches = _PoisonAfter(iter(toy_copy_dataset(VOCAB, 8)), bad_step=4)
  with pytest.raises(TrainingDivergedError, match=r"step 4.*Last good checkpoint: step 2"):
    train(config, _model(), batches, 8, tmp_path, mesh=_one_device_mesh())
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2]


def test_keeps_latest_and_best_checkpoints(tmp_path):
  config = _full_config(checkpoint_every=100, keep_checkpoints=1, keep_best=1,
                        best_metric="val/score", best_mode="max")
  scores = {2: 0.1, 4: 0.9, 6: 0.3, 8: 0.2}
  seen = []

  def eval_fn(params, step):
    seen.append(step)
    return {"val/score": scores[step]}

  result = train(config, _model(), iter(toy_copy_dataset(VOCAB, 8)), 8, tmp_path, eval_fn=eval_fn, eval_every=2,
                 mesh=_one_device_mesh())
  assert seen == [2, 4, 6, 8]
  assert result.best_step == 4
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [4, 8]


def test_evaluations_since_best():
  history = [{"step": 2, "m": 0.1}, {"step": 4, "m": 0.5}, {"step": 6, "m": 0.5}, {"step": 8, "m": 0.2}]
  assert evaluations_since_best(history, "m", "max") == 2      # a tie does not count as better
  assert evaluations_since_best(history, "m", "min") == 3
  assert evaluations_since_best(history[:2], "m", "max") == 0
  assert evaluations_since_best([{"step": 2}], "m", "max") is None


def test_early_stopping_after_patience_and_across_a_resume(tmp_path):
  """Scores peak at step 4; patience 2 stops at step 8. The run is interrupted at step 4 first: the
  resumed run continues the history, stops at the same step, and a third call trains no further."""
  config = _full_config(num_steps=20, checkpoint_every=100, early_stopping_patience=2, best_metric="val/score",
                        dropout_rng="hash")
  scores = {2: 0.1, 4: 0.9, 6: 0.3, 8: 0.85, 10: 0.95}
  seen = []

  def eval_fn(params, step):
    seen.append(step)
    return {"val/score": scores[step]}

  run = lambda stop: train(config, _model(), iter(toy_copy_dataset(VOCAB, 8)), stop, tmp_path,  # noqa: E731
                           eval_fn=eval_fn, eval_every=2, mesh=_one_device_mesh())
  first = run(4)
  assert (first.final_step, first.stopped_early) == (4, False)
  assert [e["step"] for e in read_eval_history(tmp_path)] == [2, 4]
  result = run(None)
  assert (result.final_step, result.stopped_early, result.best_step) == (8, True, 4)
  assert seen == [2, 4, 6, 8]
  history = read_eval_history(tmp_path)
  assert [e["step"] for e in history] == [2, 4, 6, 8] and history[1]["val/score"] == 0.9
  assert all(np.isfinite(e["train/loss"]) for e in history)
  again = run(None)
  assert (again.final_step, again.stopped_early) == (8, True) and seen == [2, 4, 6, 8]


def test_missing_batch_key_is_a_clear_error(tmp_path):
  config = _full_config()

  def batches():
    for batch in toy_copy_dataset(VOCAB, 8):
      yield {k: v for k, v in batch.items() if k != "decoder_loss_weights"}

  with pytest.raises(KeyError, match="decoder_loss_weights"):
    train(config, _model(), batches(), 2, tmp_path, mesh=_one_device_mesh())


PROGRESS = re.compile(r"train step (\d+)/(\d+): loss (\d+\.\d{4}), ([\d,]+) examples/s, [\d.]+ m?s/step, "
                      r"ETA ([\d.]+ m?s|[\d.]+ (min|h|d))(, MFU [\d.]+%)?$")


def test_progress_line_format():
  line = format_progress("train", 1200, 25200, 2.34567, 5432.1, 1.514, 36288.0, 0.3123)
  assert line == "train step 1,200/25,200: loss 2.3457, 5,432 examples/s, 1.51 s/step, ETA 10.08 h, MFU 31.2%"
  cpu = format_progress("doc2query", 3, 8, 0.5, 12.0, 0.25, 1.25, None)
  assert cpu == "doc2query step 3/8: loss 0.5000, 12 examples/s, 250.0 ms/step, ETA 1.25 s"


def test_progress_lines_every_log_step(tmp_path, caplog):
  """One line per `train.log_every` steps (and the last), process 0; no MFU on a CPU (no known peak)."""
  config = _full_config(log_every=2, checkpoint_every=100)
  with caplog.at_level(logging.INFO, logger="gensar_jax.train.loop"):
    train(config, _model(), iter(toy_copy_dataset(VOCAB, 8)), 5, tmp_path, mesh=_one_device_mesh())
  lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage() and "examples/s" in r.getMessage()]
  assert [PROGRESS.match(line).group(1, 2) for line in lines] == [("2", "5"), ("4", "5"), ("5", "5")], lines
  assert all("MFU" not in line for line in lines)
  assert float(PROGRESS.match(lines[-1]).group(3)) > 0


def _read_events(data: bytes) -> list:
  """The Event protos of a TFRecord event file (length, crc, payload, crc)."""
  from tensorboardX.proto import event_pb2
  events, offset = [], 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
    offset += 12 + length + 4
  return events


def _scalars(events) -> dict:
  return {(e.step, v.tag): v.simple_value for e in events for v in e.summary.value}


def test_scalars_are_readable_after_each_write_on_disk(tmp_path):
  """Each write reaches the event file before it returns (no background queue), so TensorBoard sees it."""
  writer = loop_lib._ScalarWriter(tmp_path / "tb")
  writer.write(5, {"train/loss": 1.5, "train/mfu": 0.25})
  (event_file,) = (tmp_path / "tb").iterdir()
  assert _scalars(_read_events(event_file.read_bytes())) == {(5, "train/loss"): 1.5, (5, "train/mfu"): 0.25}
  writer.write(10, {"train/loss": 1.25})
  assert _scalars(_read_events(event_file.read_bytes()))[(10, "train/loss")] == 1.25
  writer.close()


def test_scalars_are_uploaded_after_each_write_on_a_store(monkeypatch):
  """On a URI every write uploads the whole event file (object stores have no append)."""
  uploads = {}
  monkeypatch.setattr(loop_lib, "write_bytes", lambda path, data: uploads.__setitem__(path, data))
  writer = loop_lib._ScalarWriter("gs://bucket/run/train/run-x/tensorboard")
  writer.write(1, {"train/loss": 3.0})
  ((path, data),) = uploads.items()
  assert path.startswith("gs://bucket/run/train/run-x/tensorboard/events.out.tfevents.")
  assert _scalars(_read_events(data)) == {(1, "train/loss"): 3.0}
  writer.write(2, {"train/loss": 2.0})
  assert _scalars(_read_events(uploads[path])) == {(1, "train/loss"): 3.0, (2, "train/loss"): 2.0}
  writer.close()


def test_tensorboard_reads_the_scalars_from_a_bucket_while_the_run_goes_on(gcs_emulator_env):
  """`tensorboard --logdir gs://...` (TensorBoard without TensorFlow reads gs:// through gcsfs) sees every
  written step before the writer is closed."""
  pytest.importorskip("tensorboard", reason="TensorBoard is in the viz and test extras")
  from gcs_emulator import client_env
  from tensorboard.backend.event_processing import event_multiplexer
  with client_env(gcs_emulator_env):
    writer = loop_lib._ScalarWriter("gs://bkt/tb_check/train/run-x/tensorboard")
    writer.write(10, {"train/loss": 2.5, "train/mfu": 0.25})
    writer.write(20, {"train/loss": 2.0})
    runs = event_multiplexer.EventMultiplexer()
    runs.AddRunsFromDirectory("gs://bkt/tb_check/train")
    runs.Reload()
    assert [(e.step, e.value) for e in runs.Scalars("run-x/tensorboard", "train/loss")] == [(10, 2.5), (20, 2.0)]
    writer.close()
