"""The `index` stage: RQ-VAE dual identifiers from the `embed` stage's item embeddings.

Outputs under `<workdir>/index/`: codes.npz (semantic_codes, collab_codes int32[N, L], argmin codes,
identifier -> items maps), rqvae_params.npz, history.json, stats.json, config.json.
"""
from __future__ import annotations

import logging
from pathlib import Path

import ml_collections
import numpy as np

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
    write_json(tmp / "config.json", config.to_dict())
  return index.stats


def load_codes(index_dir: Path) -> dict[str, np.ndarray]:
  """{"semantic": int32[N, L], "collab": int32[N, L]} written by the index stage."""
  arrays = load_arrays(Path(index_dir) / "codes.npz")
  return {"semantic": arrays["semantic_codes"], "collab": arrays["collab_codes"]}
