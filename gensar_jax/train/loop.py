"""Generic training loop: sharded steps, periodic evaluation, Orbax checkpoints, exact resume.

Works with any iterator of host-local batches (dicts of numpy arrays, see `train/step.py`); a grain
`DatasetIterator`/`DataLoaderIterator` additionally has its position checkpointed, so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from etils import epath
import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from gensar_jax import parallel
from gensar_jax.io_utils import is_uri, write_bytes, write_text
from gensar_jax.model.t5 import T5Config, init_params
from gensar_jax.plan import format_duration
from gensar_jax.train import checkpoint as checkpoint_lib
from gensar_jax.train import flops as flops_lib
from gensar_jax.train import state as state_lib
from gensar_jax.train import step as step_lib

logger = logging.getLogger(__name__)

EvalFn = Callable[[Any, int], Mapping[str, float]]  # (params, step) -> metrics, e.g. {"val/ndcg5_mean": ...}


class TrainingDivergedError(FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState
  train_metrics: dict  # last logged training metrics
  eval_metrics: dict  # last evaluation metrics (empty without eval_fn)
  best_step: int | None
  checkpoint_dir: epath.Path
  final_step: int = 0  # the last step trained: num_steps, or earlier when early stopping ended the run
  stopped_early: bool = False
  eval_history: list = dataclasses.field(default_factory=list)  # one dict per evaluation (see EVAL_HISTORY)


def _sections(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """(train section, parallel section) of a full config, or a bare train section with default parallelism."""
  train_cfg = config.train if "train" in config else config
  parallel_cfg = config.parallel if "parallel" in config else parallel.parallel_config()
  return train_cfg, parallel_cfg


class _StoreEventFile:
  """A TensorBoard event file on an object store: objects cannot be appended to, so each flush uploads the
  whole file again (one object write, visible whole)."""

  def __init__(self, path: str):
    self.path, self.buffer = path, io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    write_bytes(self.path, self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _StoreEventFiles:
  """tensorboardX writer factory for URIs, through the project's file layer (gcsfs), so that TensorBoard reads
  the scalars from the shared store while the run goes on."""

  def open(self, path: str) -> _StoreEventFile:
    return _StoreEventFile(path)

  def directory_check(self, path: str) -> None:
    del path                    # object stores need no directories


class _ScalarWriter:
  """TensorBoard scalars, written by process 0 only (local disk or object store).

  Synchronous: `write` appends the events and flushes the file (on a store: uploads it) before it returns,
  so `tensorboard --logdir` sees every logged step while the run goes on. (tensorboardX's SummaryWriter
  queues events for a thread that flushes every two minutes.)
  """

  def __init__(self, logdir: epath.Path):
    self.events = None
    if jax.process_index() == 0:
      from tensorboardX import record_writer
      from tensorboardX.event_file_writer import EventsWriter
      logdir = os.fspath(logdir)
      if is_uri(logdir):
        record_writer.register_writer_factory(logdir.split("://")[0], _StoreEventFiles())
      record_writer.directory_check(logdir)
      self.events = EventsWriter(os.path.join(logdir, "events"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self.events is None:
      return
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2
    for name, value in scalars.items():
      self.events.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                              summary=summary.scalar(name, float(value))))
    self.events.flush()

  def close(self) -> None:
    if self.events is not None:
      self.events.close()
      self.events = None


_STEP_CACHE: dict = {}
_LOOP_ONLY_FIELDS = frozenset({"log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "keep_best",
                               "best_metric", "best_mode", "async_checkpointing", "early_stopping_patience"})
EVAL_HISTORY = "eval_history.json"  # in the workdir: [{"step", "seconds", "train/loss", <eval metrics>}, ...]


def format_progress(name: str, step: int, stop_step: int, loss: float, examples_per_s: float,
                    seconds_per_step: float, eta_s: float | None, mfu: float | None) -> str:
  """The plain progress line of a log step, e.g. `train step 1,200/25,200: loss 2.3456, 5,432 examples/s,
  1.51 s/step, ETA 10.08 h, MFU 31.2%` (no MFU where the device has no known peak, e.g. a CPU)."""
  parts = [f"loss {loss:.4f}", f"{examples_per_s:,.0f} examples/s", f"{format_duration(seconds_per_step)}/step",
           f"ETA {format_duration(eta_s)}"]
  if mfu is not None:
    parts.append(f"MFU {mfu:.1%}")
  return f"{name} step {step:,}/{stop_step:,}: " + ", ".join(parts)


def peak_flops_per_second(devices=None) -> float | None:
  """Summed dense bf16 peak of `devices` (default all of the job's; the mesh's in `train`), or None when one
  has no known peak (a CPU)."""
  peaks = [flops_lib.device_peak_flops(d.device_kind) for d in (devices or jax.devices())]
  return None if any(p is None for p in peaks) else float(sum(peaks))


class _Throughput:
  """Examples and matmul FLOPs (`train/flops.py`) of the steps since the last log step. MFU = those FLOPs /
  (their seconds x the summed dense bf16 peak of the mesh's devices), whatever dtype the step computes in."""

  def __init__(self, model_cfg: T5Config, peak: float | None):
    self.model_cfg, self.peak = model_cfg, peak
    self.restart()

  def restart(self) -> None:
    self.start, self.steps, self.examples, self.flops = time.perf_counter(), 0, 0, 0

  def add(self, rows: int, input_len: int, target_len: int) -> None:
    self.steps += 1
    self.examples += rows
    self.flops += flops_lib.train_step_flops(self.model_cfg, rows, input_len, target_len)

  def rates(self) -> tuple[float, float, float | None]:
    """(examples/s, seconds/step, MFU or None) over the window."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    mfu = self.flops / elapsed / self.peak if self.peak else None
    return self.examples / elapsed, elapsed / max(self.steps, 1), mfu


def read_eval_history(workdir, up_to_step: int | None = None) -> list[dict]:
  """The evaluations `train` recorded in `<workdir>/eval_history.json` (steps <= up_to_step), oldest first."""
  path = epath.Path(workdir) / EVAL_HISTORY
  if not path.exists():
    return []
  try:
    history = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
  return [entry for entry in history if up_to_step is None or entry["step"] <= up_to_step]


def _write_eval_history(workdir: epath.Path, history: list[dict]) -> None:
  """Whole-file write (`io_utils.write_text`), so an interruption leaves the previous history."""
  if jax.process_index() != 0:
    return
  write_text(workdir / EVAL_HISTORY, json.dumps(history, indent=1))


def best_evaluation(history: list[dict], metric: str, mode: str) -> dict | None:
  """The entry of `history` with the best `metric` ("max" or "min"; exact ties keep the earlier step: the rule
  of `checkpoint.best_step`, so it names the step the kept best checkpoint holds), or None when no entry has
  the metric."""
  step = checkpoint_lib.best_step(((entry["step"], entry[metric]) for entry in history if metric in entry), mode)
  return None if step is None else next(entry for entry in history if entry["step"] == step and metric in entry)


def evaluations_since_best(history: list[dict], metric: str, mode: str) -> int | None:
  """How many evaluations came after the best `metric` in `history`; None when no entry has the metric."""
  best = best_evaluation(history, metric, mode)
  if best is None:
    return None
  scored = [entry for entry in history if metric in entry]
  return len(scored) - 1 - next(i for i, entry in enumerate(scored) if entry is best)


def _step_setup(model_cfg: T5Config, train_cfg: ml_collections.ConfigDict, mesh, rules):
  """(optimizer, state shardings, jitted train step), reused by later `train` calls in this process with the
  same model, train section, mesh and rules (saves recompiling when a run is resumed or repeated)."""
  step_fields = {k: v for k, v in train_cfg.to_dict().items() if k not in _LOOP_ONLY_FIELDS}
  key = (model_cfg, repr(sorted(step_fields.items())), mesh, rules)
  if key not in _STEP_CACHE:
    optimizer = state_lib.make_optimizer(train_cfg)
    shardings = state_lib.state_shardings(model_cfg, optimizer, mesh, rules)
    step = step_lib.make_train_step(model_cfg, train_cfg, optimizer, mesh, rules, shardings)
    _STEP_CACHE.clear()  # keep one compiled step alive at a time
    _STEP_CACHE[key] = (optimizer, shardings, step)
  return _STEP_CACHE[key]


def train(config: ml_collections.ConfigDict, model_cfg: T5Config, train_iter: Iterator[Mapping[str, np.ndarray]],
          num_steps: int | None, workdir: str | Path | epath.Path, eval_fn: EvalFn | None = None,
          eval_every: int | None = None, initial_params: Any = None,
          mesh: jax.sharding.Mesh | None = None, name: str = "train") -> TrainResult:
  """Trains `model_cfg` on batches from `train_iter` until step `num_steps` (default train.num_steps).

  Resumes from the latest checkpoint in `<workdir>/checkpoints` (state and iterator position) when
  there is one; otherwise starts from `initial_params` (e.g. an imported HF checkpoint) or a fresh
  initialisation. The learning-rate schedule always spans `train.num_steps`, so stopping early and
  resuming later continues the same run. Checkpoints every `train.checkpoint_every` steps, at every
  evaluation and at the end; keeps the latest `train.keep_checkpoints` plus the best `train.keep_best` by
  `train.best_metric`. A NaN/inf loss raises `TrainingDivergedError`; nothing is saved after it.
  Every `train.log_every` steps process 0 logs one progress line (`format_progress`, labelled `name`) and
  writes the training scalars to `<workdir>/tensorboard`.
  """
  train_cfg, parallel_cfg = _sections(config)
  workdir = epath.Path(workdir)  # local path or gs://
  stop_step = int(train_cfg.num_steps if num_steps is None else num_steps)
  eval_every = int(train_cfg.eval_every if eval_every is None else eval_every)
  model_cfg = state_lib.model_config_for_training(model_cfg, train_cfg)
  rules = parallel.rules_tuple(parallel_cfg.logical_axis_rules)
  mesh = mesh if mesh is not None else parallel.make_mesh(parallel_cfg.mesh_shape)
  optimizer, shardings, train_step = _step_setup(model_cfg, train_cfg, mesh, rules)
  checkpointer = checkpoint_lib.Checkpointer(
      workdir / "checkpoints", keep=int(train_cfg.keep_checkpoints), keep_best=int(train_cfg.keep_best),
      best_metric=train_cfg.best_metric if eval_fn is not None else None, best_mode=train_cfg.best_mode,
      async_save=bool(train_cfg.async_checkpointing))
  saved_config = {"config": config.to_dict(), "model": dataclasses.asdict(model_cfg)}

  resume_step = checkpointer.latest_step()
  if resume_step is not None:
    abstract = jax.eval_shape(lambda: state_lib.TrainState(
        step=np.int32(0), params=init_params(model_cfg, jax.random.key(0)),
        opt_state=optimizer.init(init_params(model_cfg, jax.random.key(0)))))
    restore_iter = train_iter if checkpoint_lib.is_checkpointable_iterator(train_iter) else None
    state, _ = checkpointer.restore(checkpoint_lib.abstract_like(shardings, abstract), resume_step, restore_iter)
    if restore_iter is None:
      logger.warning("resumed at step %d but the data iterator has no state: batches will not match an "
                     "uninterrupted run", resume_step)
  else:
    state, _ = state_lib.create_train_state(model_cfg, optimizer, mesh, rules,
                                            jax.random.key(int(train_cfg.seed)), initial_params)
  start_step = int(jax.device_get(state.step))
  logger.info("training %s from step %d to %d on mesh %s (%d processes, %d devices)",
              "resumes" if resume_step is not None else "starts", start_step, stop_step, dict(mesh.shape),
              jax.process_count(), jax.device_count())

  history = read_eval_history(workdir, start_step) if eval_fn is not None else []
  patience = int(train_cfg.get("early_stopping_patience", 0))

  def patience_spent() -> bool:
    since = evaluations_since_best(history, train_cfg.best_metric, train_cfg.best_mode)
    return patience > 0 and since is not None and since >= patience

  stopped_early = patience_spent()
  if stopped_early:
    logger.info("early stopping was already met at step %d (%s not better for %d evaluations); not training on",
                start_step, train_cfg.best_metric, patience)
    stop_step = start_step
  run_start = time.perf_counter()
  writer = _ScalarWriter(workdir / "tensorboard")
  # A bar on a terminal only (disable=None): in a log file the progress lines below say the same.
  progress = tqdm(total=stop_step, initial=start_step, desc=name, unit="step",
                  disable=None if jax.process_index() == 0 else True, dynamic_ncols=True)
  last_good_step = resume_step
  train_metrics: dict = {}
  eval_metrics: dict = {}
  pending: tuple[int, dict] | None = None  # metrics of the last dispatched step, checked one step later
  log_every = max(int(train_cfg.log_every), 1)
  window = _Throughput(model_cfg, peak_flops_per_second(list(mesh.devices.flat)))

  def check(step: int, metrics: dict) -> dict:
    host = step_lib.metrics_to_host(metrics)
    if not math.isfinite(host["loss"]):
      checkpointer.wait()
      writer.close()
      progress.close()
      raise TrainingDivergedError(
          f"training loss is {host['loss']} at step {step} (grad norm {host['grad_norm']}); stopped. Last good "
          f"checkpoint: {'step ' + str(last_good_step) if last_good_step is not None else 'none'} in "
          f"{checkpointer.directory}. Lower train.learning_rate or check the data.")
    return host

  try:
    for step in range(start_step + 1, stop_step + 1):
      try:
        batch = next(train_iter)
      except StopIteration:
        raise ValueError(f"the training iterator ran out of batches before step {step} (of {stop_step}); "
                         "repeat the dataset or lower num_steps") from None
      if pending is not None:
        check(*pending)
      step_lib.check_batch(batch)
      global_batch = parallel.host_local_batch_to_global({k: batch[k] for k in step_lib.BATCH_KEYS}, mesh, rules)
      state, metrics = train_step(state, global_batch)
      pending = (step, metrics)
      progress.update(1)
      window.add(*global_batch["encoder_input_tokens"].shape, global_batch["decoder_input_tokens"].shape[1])

      is_eval = eval_fn is not None and eval_every > 0 and (step % eval_every == 0 or step == stop_step)
      is_save = step % int(train_cfg.checkpoint_every) == 0 or step == stop_step or is_eval
      if step % log_every == 0 or step == stop_step or is_save:
        train_metrics = check(*pending)
        pending = None
        examples_per_s, seconds_per_step, mfu = window.rates()
        train_metrics.update(steps_per_second=1.0 / seconds_per_step, examples_per_second=examples_per_s,
                             **({"mfu": mfu} if mfu is not None else {}))
        writer.write(step, {f"train/{k}": v for k, v in train_metrics.items()})
        progress.set_postfix(loss=f"{train_metrics['loss']:.4f}", lr=f"{train_metrics['learning_rate']:.2e}")
        if jax.process_index() == 0:
          per_step = (time.perf_counter() - run_start) / (step - start_step)   # compile and validations included
          logger.info("%s", format_progress(name, step, stop_step, train_metrics["loss"], examples_per_s,
                                            seconds_per_step, per_step * (stop_step - step), mfu))
      if is_eval:
        eval_metrics = {k: float(v) for k, v in eval_fn(state.params, step).items()}
        if train_cfg.best_metric not in eval_metrics:    # else no best checkpoint, no early stopping
          writer.close()
          progress.close()
          raise ValueError(f"train.best_metric={train_cfg.best_metric!r}: the validation at step {step} does not "
                           f"report it; it reports {sorted(eval_metrics)}")
        writer.write(step, eval_metrics)
        logger.info("step %d: eval %s", step, ", ".join(f"{k}={v:.4f}" for k, v in sorted(eval_metrics.items())))
        history.append({"step": step, "seconds": round(time.perf_counter() - run_start, 1),
                        "train/loss": train_metrics.get("loss"), **eval_metrics})
        _write_eval_history(workdir, history)
      if is_save:
        checkpointer.save(step, state, train_iter, saved_config, metrics=eval_metrics if is_eval else None,
                          force=True)
        last_good_step = step
      if step % log_every == 0 or step == stop_step or is_save:
        window.restart()      # the next window times training steps only, not this step's validation or save
      if is_eval and patience_spent():
        best_entry = best_evaluation(history, train_cfg.best_metric, train_cfg.best_mode)
        logger.info("early stopping at step %d: %s %.4f at step %d, not bettered in %d evaluations", step,
                    train_cfg.best_metric, best_entry[train_cfg.best_metric], best_entry["step"], patience)
        stopped_early, stop_step = True, step
        break
    if pending is not None:
      train_metrics = check(*pending)
  finally:
    checkpointer.wait()
  progress.close()
  writer.close()
  best = checkpointer.best_step()
  checkpointer.close()
  if train_metrics:
    logger.info("training done at step %d: loss %.4f, token accuracy %.4f", stop_step, train_metrics["loss"],
                train_metrics["accuracy"])
  return TrainResult(state=state, train_metrics=train_metrics, eval_metrics=eval_metrics, best_step=best,
                     checkpoint_dir=checkpointer.directory, final_step=stop_step, stopped_early=stopped_early,
                     eval_history=history)
