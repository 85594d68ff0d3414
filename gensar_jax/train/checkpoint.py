"""Orbax checkpoints of the train state, the grain data-iterator state and the resolved config.

Layout: `<directory>/<step>/{state, data, config}`. Kept: the latest `keep` steps plus the best
`keep_best` by a metric (steps saved with that metric; `best_step_rank` orders them). Restoring takes
target shardings, so a checkpoint written on one mesh restores onto any other mesh (or device count).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from gensar_jax.io_utils import absolute

logger = logging.getLogger(__name__)


def is_checkpointable_iterator(iterator: Any) -> bool:
  """grain `DatasetIterator` / `DataLoaderIterator` (anything with get_state/set_state)."""
  return hasattr(iterator, "get_state") and hasattr(iterator, "set_state")


BEST_MODES = ("max", "min")


def best_step_rank(step: int, value: float, mode: str) -> tuple[float, int]:
  """Sort key of a scored step: larger is better. The best value wins ("max": highest, "min": lowest); on an
  exact tie the earlier step wins (the usual early-stopping rule: a later equal score is no improvement).

  The one rule behind `best_step`, the checkpoints `Checkpointer` keeps and the training loop's
  `best_evaluation` (early stopping, the reported best step).
  """
  if mode not in BEST_MODES:
    raise ValueError(f"best_mode: expected one of {list(BEST_MODES)}, got {mode!r}")
  return (float(value) if mode == "max" else -float(value)), -int(step)


def best_step(scored: Iterable[tuple[int, float]], mode: str) -> int | None:
  """The best of (step, value) pairs by `best_step_rank`, or None when there are none."""
  scored = list(scored)
  if not scored:
    return None
  return max(scored, key=lambda pair: best_step_rank(pair[0], pair[1], mode))[0]


class _KeepBestN(preservation_policy.PreservationPolicy):
  """Keeps the `n` best steps that recorded `metric`, ordered by `best_step_rank` (Orbax's BestN keeps the
  latest of tied steps; this keeps the step `best_step` selects)."""

  def __init__(self, metric: str, mode: str, n: int):
    self.metric, self.mode, self.n = metric, mode, n

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
    del context
    scored = [(info.step, info.metrics[self.metric]) for info in checkpoints
              if info.metrics is not None and self.metric in info.metrics]
    ranked = sorted(scored, key=lambda pair: best_step_rank(pair[0], pair[1], self.mode), reverse=True)
    keep = {step for step, _ in ranked[:self.n]}
    return [info.step in keep for info in checkpoints]


def abstract_like(shardings: Any, shapes: Any) -> Any:
  """Pytree of `jax.ShapeDtypeStruct` with the given shardings (restore targets)."""
  return jax.tree_util.tree_map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shardings, shapes)


class Checkpointer:
  """Saves and restores {train state, data iterator, config JSON} with Orbax's CheckpointManager."""

  def __init__(self, directory: str | Path | epath.Path, keep: int = 3, keep_best: int = 1,
               best_metric: str | None = None, best_mode: str = "max", async_save: bool = True):
    if best_mode not in BEST_MODES:
      raise ValueError(f"checkpoint best_mode: expected one of {list(BEST_MODES)}, got {best_mode!r}")
    self.directory = absolute(directory)  # local paths or gs://
    self.best_metric = best_metric
    self.best_mode = best_mode
    policies = [preservation_policy.LatestN(n=keep)]
    if best_metric and keep_best:
      policies.append(_KeepBestN(best_metric, best_mode, keep_best))
    tracking = {}
    if best_metric:  # makes Orbax write the metrics beside each step, so a restarted run still knows the best
      tracking = dict(best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode,
                      keep_checkpoints_without_metrics=True)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.AnyPreservationPolicy(policies), **tracking,
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the best recorded `best_metric` (the module's `best_step` rule: the earliest of
    exact ties), or None without such steps."""
    if not self.best_metric:
      return None
    scored = []
    for step in self.all_steps():
      metrics = self.manager.metrics(step)
      if metrics and self.best_metric in metrics:
        scored.append((step, float(metrics[self.best_metric])))
    return best_step(scored, self.best_mode)

  def save(self, step: int, state: Any, data_iterator: Any = None, config: Mapping | None = None,
           metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
    """Writes a checkpoint at `step` (asynchronously when enabled). `metrics` are recorded for
    best-checkpoint selection only when they contain `best_metric`."""
    items: dict[str, Any] = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None and is_checkpointable_iterator(data_iterator):
      import grain
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(dict(config))
    recorded = None
    if metrics is not None and self.best_metric and self.best_metric in metrics:
      recorded = {k: float(v) for k, v in metrics.items()}
    saved = self.manager.save(int(step), args=ocp.args.Composite(**items), metrics=recorded, force=force)
    if saved:
      logger.info("checkpoint saved: step %d -> %s", step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: int | None = None, data_iterator: Any = None) -> tuple[Any, dict | None]:
    """Restores the state onto the shardings in `abstract_state` (ShapeDtypeStructs, see `abstract_like`) and,
    when given, the iterator's position in place. Returns (state, config dict or None)."""
    self.manager.wait_until_finished()
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    step_dir = self.directory / str(step)
    items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_state)}
    if (step_dir / "config").exists():
      items["config"] = ocp.args.JsonRestore()
    if data_iterator is not None:
      if not is_checkpointable_iterator(data_iterator):
        raise TypeError(f"cannot restore the data position into {type(data_iterator).__name__}: it has no "
                        "get_state/set_state (use a grain DatasetIterator or DataLoaderIterator)")
      if not (step_dir / "data").exists():
        raise FileNotFoundError(f"{step_dir}: checkpoint has no data-iterator state to restore")
      import grain
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    logger.info("checkpoint restored: step %d from %s", step, self.directory)
    config = restored["config"] if "config" in items else None
    return restored["state"], config

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
