"""The `index` stage: RQ-VAE dual identifiers from the `embed` stage's item embeddings.

Runs on process 0 of a multi-host job (see `stages.STAGES`). Outputs in the stage's output directory: codes.npz (semantic_codes, collab_codes int32[N, L], argmin codes,
identifier -> items maps), rqvae/ (Orbax checkpoint of the RQ-VAE parameters; rqvae_params.npz holds
the same arrays flat), history.json, stats.json, config.json.
"""
from __future__ import annotations

import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gensar_jax.identifiers.assign import build_identifiers, write_identifiers
from gensar_jax.io_utils import absolute, as_path, load_arrays, read_json, write_json

log = logging.getLogger(__name__)


def run_index(config: ml_collections.ConfigDict, workdir: Path, out_dir: Path) -> dict:
  from gensar_jax.stages import output_dir
  path = output_dir(workdir, "embed") / "embeddings.npz"
  embeddings = load_arrays(path)
  num_items = int(read_json(output_dir(workdir, "prepare") / "stats.json")["items"])  # the catalogue's size
  index = build_identifiers(embeddings, config.identifiers, num_items,
                            sources={view: f"{path}[{view}]" for view in embeddings})
  save_rqvae_params(out_dir / "rqvae", index.params)
  write_json(out_dir / "config.json", config.to_dict())
  write_identifiers(out_dir, index)           # stats.json last
  return index.stats


def _this_process_only() -> ocp.options.MultiprocessingOptions:
  """Orbax options for a checkpoint that this process alone writes or reads (the RQ-VAE runs on process 0 of a
  multi-host job; by default Orbax waits for every process)."""
  return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()},
                                            barrier_sync_key_prefix=f"process_{jax.process_index()}")


def save_rqvae_params(directory: Path, params) -> None:
  """RQ-VAE parameters as an Orbax checkpoint (restore with `load_rqvae_params`)."""
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
  checkpointer.save(absolute(directory), jax.device_get(params))
  checkpointer.wait_until_finished()
  checkpointer.close()


def load_rqvae_params(directory: Path):
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
  params = checkpointer.restore(absolute(directory))
  checkpointer.close()
  return params


def load_codes(index_dir: Path) -> dict[str, np.ndarray]:
  """{"semantic": int32[N, L], "collab": int32[N, L]} written by the index stage."""
  arrays = load_arrays(as_path(index_dir) / "codes.npz")
  return {"semantic": arrays["semantic_codes"], "collab": arrays["collab_codes"]}
