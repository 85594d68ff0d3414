"""Identifier assignment (`gensar index`): argmin codes, Sinkhorn collision resolution, optional
disambiguation level, inverse maps and statistics.

Collision resolution follows the reference: for each group of items sharing a full ID, only that
group is re-encoded with Sinkhorn on the view's last specific level (every earlier level is argmin
and per item, so it cannot change); up to `resolve_rounds` rounds, separately for each view. Unlike the
reference, the round with the fewest collisions is kept, so resolution never increases collisions.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gensar_jax.identifiers import rqvae
from gensar_jax.identifiers import rqvae_train
from gensar_jax.identifiers.kmeans import squared_distances
from gensar_jax.identifiers.sinkhorn import sinkhorn_assign
from gensar_jax.io_utils import DataError, as_path, save_arrays, write_json

logger = logging.getLogger(__name__)

VIEWS = ("semantic", "collab")


# ----------------------------------------------------------------------------- input checks

def validate_embeddings(embeddings: dict[str, Any], num_items: int, sources: dict[str, str] | None = None,
                        codebook_size: int | None = None) -> dict[str, np.ndarray]:
  """Checks item embeddings {view: f32[num_items, d]}: 2-D, one row per item, finite, non-zero rows.

  `sources` names the file of each view for the error message. Raises DataError.
  """
  sources = sources or {}
  checked = {}
  for view, values in embeddings.items():
    where = sources.get(view, f"{view} embeddings")
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2:
      raise DataError(f"{where}: expected a 2-D array [num_items, dim], got shape {array.shape}")
    if array.shape[0] != num_items:
      raise DataError(f"{where}: {array.shape[0]} rows, expected one per item ({num_items} items)")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
      raise DataError(f"{where}: row {bad[0]} (and {bad.size - 1} more) holds NaN or infinite values")
    zero = np.flatnonzero(np.linalg.norm(array, axis=1) == 0)
    if zero.size:
      raise DataError(f"{where}: row {zero[0]} (and {zero.size - 1} more) has zero norm")
    checked[view] = array
  if codebook_size is not None and codebook_size > num_items:
    raise DataError(f"identifiers.codebook_size={codebook_size} is larger than the number of items "
                    f"({num_items}); use a smaller codebook")
  return checked


# ----------------------------------------------------------------------------- collisions

def id_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Groups items by identifier: codes int32[N, L] -> (ids int32[num_ids, L] sorted lexicographically,
  group of each item int64[N], items per id int64[num_ids])."""
  ids, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
  return ids.astype(np.int32), inverse.reshape(-1), counts


def num_collisions(codes: np.ndarray) -> int:
  """Items minus distinct identifiers."""
  return int(codes.shape[0] - np.unique(codes, axis=0).shape[0]) if codes.shape[0] else 0


def colliding_groups(codes: np.ndarray) -> list[np.ndarray]:
  """Item indices (ascending) of every identifier held by more than one item."""
  _, inverse, counts = id_groups(codes)
  order = np.argsort(inverse, kind="stable")
  boundaries = np.cumsum(counts)[:-1]
  return [group for group in np.split(order, boundaries) if group.size > 1]


def _bucket(n: int) -> int:
  """Next power of two, so padded group batches reuse a few compiled shapes."""
  return 1 << max(0, (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("epsilon", "num_iters"))
def _sinkhorn_groups(residuals: jax.Array, mask: jax.Array, codebook: jax.Array, epsilon: float,
                     num_iters: int) -> jax.Array:
  """residuals f32[G, S, D], mask bool[G, S], codebook f32[K, D] -> codes int32[G, S], one Sinkhorn per group."""
  distances = jax.vmap(squared_distances, in_axes=(0, None))(residuals, codebook)
  return jax.vmap(lambda d, m: sinkhorn_assign(d, epsilon, num_iters, m))(distances, mask)


def reencode_groups(groups: list[np.ndarray], last_residuals: np.ndarray, last_codebook: np.ndarray,
                    epsilon: float, num_iters: int) -> list[np.ndarray]:
  """Sinkhorn codes of the last level for each group of items, each group balanced on its own."""
  size = _bucket(max(g.size for g in groups))
  count = _bucket(len(groups))
  indices = np.zeros((count, size), np.int64)
  mask = np.zeros((count, size), bool)
  mask[:, 0] = True  # padding groups hold one valid row (item 0) and are discarded
  for i, group in enumerate(groups):
    indices[i, :group.size] = group
    mask[i, :group.size] = True
  codes = np.asarray(_sinkhorn_groups(jnp.asarray(last_residuals[indices]), jnp.asarray(mask),
                                      jnp.asarray(last_codebook), float(epsilon), int(num_iters)))
  return [codes[i, :group.size] for i, group in enumerate(groups)]


def resolve_collisions(codes: np.ndarray, last_residuals: np.ndarray, last_codebook: np.ndarray,
                       epsilon: float, num_iters: int, max_rounds: int) -> tuple[np.ndarray, list[int]]:
  """Reference collision resolution on one view.

  codes int32[N, L] (argmin), last_residuals f32[N, D] (what enters the last level), last_codebook
  f32[K, D]. Each round re-encodes every colliding group's last code with Sinkhorn; stops when no ID
  is shared or after `max_rounds`. Returns the codes of the round with the fewest collisions (never
  more than the input) and the collision count after each round run.
  """
  codes = np.array(codes, dtype=np.int32, copy=True)
  best_codes, best_count = codes.copy(), num_collisions(codes)
  counts = []
  for _ in range(max_rounds):
    groups = colliding_groups(codes)
    if not groups:
      break
    for group, new_codes in zip(groups, reencode_groups(groups, last_residuals, last_codebook, epsilon, num_iters)):
      codes[group, -1] = new_codes
    counts.append(num_collisions(codes))
    if counts[-1] < best_count:
      best_codes, best_count = codes.copy(), counts[-1]
  return best_codes, counts


def append_disambiguation_level(codes: np.ndarray, num_codes: int | None = None) -> np.ndarray:
  """Appends each item's rank (0, 1, ...) among the items sharing its ID, in item order:
  int32[N, L] -> int32[N, L + 1], all rows distinct. The tokenizer gives that level `num_codes`
  tokens (the codebook size), so more items on one ID than that is an error."""
  _, inverse, counts = id_groups(codes)
  if num_codes is not None and counts.max(initial=0) > num_codes:
    raise ValueError(f"{int(counts.max())} items share one identifier, more than the {num_codes} codes of the "
                     "disambiguation level; use more levels or a larger codebook_size")
  order = np.argsort(inverse, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.empty(codes.shape[0], np.int64)
  rank[order] = np.arange(codes.shape[0]) - starts[inverse[order]]
  return np.concatenate([codes, rank[:, None]], axis=1).astype(np.int32)


def inverse_map(codes: np.ndarray) -> dict[str, np.ndarray]:
  """Identifier -> items, in CSR form: ids int32[num_ids, L] (sorted), offsets int32[num_ids + 1],
  items int32[N]; the items of ids[j] are items[offsets[j]:offsets[j + 1]] (ascending)."""
  ids, inverse, counts = id_groups(codes)
  order = np.argsort(inverse, kind="stable")
  offsets = np.concatenate([[0], np.cumsum(counts)])
  return {"ids": ids, "offsets": offsets.astype(np.int32), "items": order.astype(np.int32)}


# ----------------------------------------------------------------------------- statistics

def code_usage(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
  """Utilization (fraction of codes used) and perplexity (exp of the usage entropy) of one level."""
  counts = np.bincount(codes, minlength=codebook_size).astype(np.float64)
  probabilities = counts[counts > 0] / counts.sum()
  return {"utilization": float((counts > 0).sum() / codebook_size),
          "perplexity": float(np.exp(-(probabilities * np.log(probabilities)).sum()))}


def view_stats(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
  """Collision figures of one view before and after resolution."""
  _, _, counts = id_groups(after)
  _, _, counts_before = id_groups(before)
  n = max(after.shape[0], 1)
  return {"collision_rate_before": num_collisions(before) / n, "collision_rate_after": num_collisions(after) / n,
          "items_sharing_an_id_before": int(counts_before[counts_before > 1].sum()),
          "items_sharing_an_id_after": int(counts[counts > 1].sum()),
          "max_items_per_id_after": int(counts.max()) if counts.size else 0, "num_ids": int(counts.size)}


def shared_prefix_consistent(semantic_codes: np.ndarray, collab_codes: np.ndarray, num_shared_levels: int) -> bool:
  """Whether every item's two IDs agree on their first `num_shared_levels` codes."""
  return bool(np.array_equal(semantic_codes[:, :num_shared_levels], collab_codes[:, :num_shared_levels]))


# ----------------------------------------------------------------------------- stage

@dataclasses.dataclass
class IdentifierIndex:
  """Final identifiers: codes {view: int32[N, L (+1 with disambiguation)]} and stats.json content."""
  codes: dict[str, np.ndarray]
  argmin_codes: dict[str, np.ndarray]
  stats: dict[str, Any]
  training: rqvae_train.RQVAETrainResult | None
  params: rqvae.Params


def assign_identifiers(params: rqvae.Params, spec: rqvae.RQVAESpec, embeddings: dict[str, np.ndarray],
                       config: ml_collections.ConfigDict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
  """Codes of all items for both views: argmin, Sinkhorn resolution, optional disambiguation level.

  Returns (final codes, argmin codes, stats). Single-view models give both views the same ID.
  """
  argmin_codes, last_residuals = rqvae_train.encode_items(params, spec, embeddings)
  final, rounds = {}, {}
  for view in spec.views:
    last_codebook = np.asarray(params["codebooks"][view][-1])
    final[view], rounds[view] = resolve_collisions(
        argmin_codes[view], last_residuals[view], last_codebook, config.resolve_sinkhorn_epsilon,
        spec.sinkhorn_iters, config.resolve_rounds)
  argmin_codes = {view: rqvae.view_codes(argmin_codes, view) for view in VIEWS}
  final = {view: rqvae.view_codes(final, view) for view in VIEWS}
  resolved = dict(final)
  if config.disambiguation_level:
    final = {view: append_disambiguation_level(codes, spec.codebook_size) for view, codes in final.items()}
  names = rqvae.level_names(spec)
  stats: dict[str, Any] = {"num_items": int(next(iter(final.values())).shape[0]), "mode": spec.mode,
                           "num_levels": int(final["semantic"].shape[1]), "codebook_size": spec.codebook_size,
                           "views": {}, "levels": {}}
  for view in VIEWS:
    source = view if view in spec.views else spec.views[0]
    stats["views"][view] = {**view_stats(argmin_codes[view], resolved[view]),
                            "resolve_rounds_run": len(rounds[source]), "collisions_per_round": rounds[source]}
    if config.disambiguation_level:
      stats["views"][view]["disambiguation_codes"] = int(final[view][:, -1].max()) + 1
      stats["views"][view]["collision_rate_final"] = num_collisions(final[view]) / max(final[view].shape[0], 1)
    for level, name in enumerate(names[view] if spec.mode == "dual" else names[source]):
      stats["levels"].setdefault(name, code_usage(resolved[view][:, level], spec.codebook_size))
  stats["shared_prefix_consistent"] = shared_prefix_consistent(final["semantic"], final["collab"],
                                                               spec.num_shared_levels)
  stats["collision_rate_after"] = float(np.mean([stats["views"][v]["collision_rate_after"] for v in VIEWS]))
  return final, argmin_codes, stats


def build_identifiers(embeddings: dict[str, Any], config: ml_collections.ConfigDict, num_items: int,
                      sources: dict[str, str] | None = None, progress: bool = True) -> IdentifierIndex:
  """The whole identifier stage on arrays: validate embeddings, train the RQ-VAE, assign codes.

  embeddings: {"semantic": f32[N, d_s], "collab": f32[N, d_c]} (single-view modes need only theirs).
  """
  views = VIEWS if config.mode == "dual" else (config.mode,)
  missing = [v for v in views if embeddings.get(v) is None]
  if missing:
    raise DataError(f"identifiers.mode={config.mode!r} needs {missing} embeddings")
  checked = validate_embeddings({v: embeddings[v] for v in views}, num_items, sources, config.codebook_size)
  spec = rqvae.spec_from_config(config, *(checked[v].shape[1] if v in checked else None for v in VIEWS))
  training = rqvae_train.train_rqvae(checked, config, spec, progress=progress)
  codes, argmin_codes, stats = assign_identifiers(training.params, spec, checked, config)
  stats["training"] = {"best_collision_rate": training.best_collision_rate,
                       "best_collision_epoch": training.best_collision_epoch, "best_loss": training.best_loss,
                       "best_loss_epoch": training.best_loss_epoch, "selected_by": config.select_by}
  logger.info("index: %d items, collision rate semantic %.4f -> %.4f, collab %.4f -> %.4f",
              num_items, stats["views"]["semantic"]["collision_rate_before"],
              stats["views"]["semantic"]["collision_rate_after"], stats["views"]["collab"]["collision_rate_before"],
              stats["views"]["collab"]["collision_rate_after"])
  return IdentifierIndex(codes=codes, argmin_codes=argmin_codes, stats=stats, training=training,
                         params=training.params)


def flatten_params(params: rqvae.Params, prefix: str = "") -> dict[str, np.ndarray]:
  """{"semantic_encoder/layer_0/kernel": array, ...} for npz storage."""
  flat = {}
  for name, value in params.items():
    if isinstance(value, dict):
      flat.update(flatten_params(value, f"{prefix}{name}/"))
    else:
      flat[f"{prefix}{name}"] = np.asarray(value)
  return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> rqvae.Params:
  """Inverse of `flatten_params`."""
  params: rqvae.Params = {}
  for path, value in flat.items():
    node = params
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = jnp.asarray(value)
  return params


def write_identifiers(out_dir: str | Path, index: IdentifierIndex) -> None:
  """Writes codes.npz (semantic_codes, collab_codes, argmin codes and the identifier -> items maps as
  <view>_ids / <view>_id_offsets / <view>_id_items), rqvae_params.npz, history.json and stats.json."""
  out_dir = as_path(out_dir)
  arrays = {}
  for view in VIEWS:
    arrays[f"{view}_codes"] = index.codes[view]
    arrays[f"{view}_argmin_codes"] = index.argmin_codes[view]
    inverse = inverse_map(index.codes[view])
    arrays[f"{view}_ids"] = inverse["ids"]
    arrays[f"{view}_id_offsets"] = inverse["offsets"]
    arrays[f"{view}_id_items"] = inverse["items"]
  save_arrays(out_dir / "codes.npz", **arrays)
  save_arrays(out_dir / "rqvae_params.npz", **flatten_params(index.params))
  if index.training is not None:
    write_json(out_dir / "history.json", index.training.history)
  write_json(out_dir / "stats.json", index.stats)
