"""A trained model on disk: Orbax parameters + the T5Config as JSON + free-form metadata.

Layout of `<directory>` (written by `gensar train` to `<workdir>/train/model`):
  params/             Orbax StandardCheckpointer pytree of the T5 parameters
  model_config.json   the T5Config fields
  extra.json          metadata of the caller (selected step, validation metrics, ...)
The directory is staged beside its final path and renamed into place when complete, so a reader
never sees a half-written model. With several processes every process calls `save_model` (Orbax
writes each process's shards); process 0 writes the JSON files and renames.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Mapping

from etils import epath
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gensar_jax import parallel
from gensar_jax.io_utils import DataError, absolute, is_uri, to_json
from gensar_jax.model.t5 import T5Config, count_params, init_params, param_logical_axes

logger = logging.getLogger(__name__)

PARAMS_DIR = "params"
CONFIG_FILE = "model_config.json"
EXTRA_FILE = "extra.json"


def _sync(name: str) -> None:
  """Barrier across processes (no-op with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _replace_directory(staging: epath.Path, directory: epath.Path) -> None:
  """Moves `staging` onto `directory`, replacing an existing model."""
  if directory.exists():
    old = directory.parent / f".{directory.name}.old"
    if old.exists():
      old.rmtree()
    directory.rename(old)
    staging.rename(directory)
    old.rmtree()
  else:
    staging.rename(directory)


def save_model(directory: str | epath.PathLike, params: Any, model_cfg: T5Config,
               extra: Mapping[str, Any] | None = None) -> epath.Path:
  """Writes `params` (a T5 parameter pytree, host or sharded arrays) with `model_cfg` and `extra` (JSON-able).

  Returns the model directory. An existing model there is replaced only once the new one is complete (by
  renames: atomic on a local or POSIX disk; on an object store a new model goes straight to `directory`, which
  is inside a stage's uncommitted attempt directory).
  """
  directory = absolute(directory)
  direct = is_uri(directory) and not directory.exists()
  staging = directory if direct else directory.parent / f".{directory.name}.saving"
  is_primary = jax.process_index() == 0
  if is_primary:
    if staging.exists() and not direct:
      staging.rmtree()                      # left by an interrupted save
    directory.parent.mkdir(parents=True, exist_ok=True)
  _sync(f"save_model:{directory}:staging")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(staging / PARAMS_DIR, params)
  checkpointer.wait_until_finished()
  checkpointer.close()
  if is_primary:
    (staging / CONFIG_FILE).write_text(to_json(dataclasses.asdict(model_cfg)))
    (staging / EXTRA_FILE).write_text(to_json(dict(extra or {})))
    if not direct:
      _replace_directory(staging, directory)
  _sync(f"save_model:{directory}:done")
  logger.info("model saved: %d parameters -> %s", count_params(params), directory)
  return directory


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _require_model(directory: epath.Path) -> None:
  if not (directory / CONFIG_FILE).exists() or not (directory / PARAMS_DIR).exists():
    raise DataError(f"{directory}: no trained model (expected {CONFIG_FILE} and {PARAMS_DIR}/); "
                    "run `gensar train` first")


def load_model_config(directory: str | epath.PathLike) -> T5Config:
  """The T5Config stored with a model."""
  directory = absolute(directory)
  _require_model(directory)
  path = directory / CONFIG_FILE
  fields = _read_json(path)
  known = {f.name for f in dataclasses.fields(T5Config)}
  if not isinstance(fields, dict) or "vocab_size" not in fields:
    raise DataError(f"{path}: expected an object of T5Config fields with at least 'vocab_size'")
  unknown = sorted(set(fields) - known)
  if unknown:
    raise DataError(f"{path}: unknown T5Config fields {unknown} (expected a subset of {sorted(known)})")
  try:
    return T5Config(**fields)
  except (TypeError, ValueError) as e:
    raise DataError(f"{path}: invalid model configuration: {e}") from None


def load_model_extra(directory: str | epath.PathLike) -> dict:
  """The `extra` metadata saved with a model ({} when none was given)."""
  directory = absolute(directory)
  _require_model(directory)
  path = directory / EXTRA_FILE
  return _read_json(path) if path.exists() else {}


def load_model(directory: str | epath.PathLike, mesh: jax.sharding.Mesh | None = None,
               rules=parallel.DEFAULT_LOGICAL_AXIS_RULES) -> tuple[Any, T5Config]:
  """Reads a model written by `save_model`: (params, T5Config).

  Without a mesh the parameters land on the first local device; with a mesh they are laid out by
  their logical axes under `rules` (any mesh, whatever the mesh they were saved from).
  """
  directory = absolute(directory)
  model_cfg = load_model_config(directory)
  abstract = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  else:
    shardings = parallel.logical_to_shardings(param_logical_axes(model_cfg), mesh, rules)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
  checkpointer = ocp.StandardCheckpointer()
  try:
    params = checkpointer.restore(directory / PARAMS_DIR, target)
  except (ValueError, KeyError) as e:
    raise DataError(f"{directory / PARAMS_DIR}: parameters do not match {CONFIG_FILE} "
                    f"(vocab_size {model_cfg.vocab_size}, d_model {model_cfg.d_model}): {e}") from None
  finally:
    checkpointer.close()
  logger.info("model loaded: %d parameters (vocab %d, d_model %d) from %s", count_params(params),
              model_cfg.vocab_size, model_cfg.d_model, directory)
  return params, model_cfg
