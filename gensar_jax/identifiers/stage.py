"""The `index` stage: RQ-VAE dual identifiers from the `embed` stage's item embeddings.

Outputs under `<workdir>/index/`: codes.npz (semantic_codes, collab_codes int32[N, L], argmin codes,
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
from gensar_jax.io_utils import atomic_path, load_arrays, read_json, write_json

log = logging.getLogger(__name__)


def run_index(config: ml_collections.ConfigDict, out_dir: Path) -> dict:
  path = out_dir.parent / "embed" / "embeddings.npz"
  embeddings = load_arrays(path)
  num_items = int(read_json(out_dir.parent / "prepare" / "stats.json")["items"])  # the catalogue's size
  index = build_identifiers(embeddings, config.identifiers, num_items,
                            sources={view: f"{path}[{view}]" for view in embeddings})
  with atomic_path(out_dir) as tmp:
    tmp.mkdir(parents=True)
    write_identifiers(tmp, index)
    save_rqvae_params(tmp / "rqvae", index.params)
    write_json(tmp / "config.json", config.to_dict())
  return index.stats


def save_rqvae_params(directory: Path, params) -> None:
  """RQ-VAE parameters as an Orbax checkpoint (restore with `load_rqvae_params`)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(Path(directory).absolute(), jax.device_get(params))
  checkpointer.wait_until_finished()
  checkpointer.close()


def load_rqvae_params(directory: Path):
  checkpointer = ocp.StandardCheckpointer()
  params = checkpointer.restore(Path(directory).absolute())
  checkpointer.close()
  return params


def load_codes(index_dir: Path) -> dict[str, np.ndarray]:
  """{"semantic": int32[N, L], "collab": int32[N, L]} written by the index stage."""
  arrays = load_arrays(Path(index_dir) / "codes.npz")
  return {"semantic": arrays["semantic_codes"], "collab": arrays["collab_codes"]}
