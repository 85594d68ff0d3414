"""Ranking metrics: HR@k and NDCG@k from the rank of the ground truth (one relevant item per query)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

DEFAULT_CUTOFFS = (1, 5, 10)
MISS = -1  # rank of a ground truth that was not retrieved at all
TASKS = ("rec", "search")        # the evaluated tasks: recommendation and personalised search
PROTOCOLS = ("sampled", "full")  # candidate lists (target + negatives, the paper's) and the whole catalogue
TABLE_METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")  # the columns of the results tables


def ranks_from_scores(scores: np.ndarray, target_column: int = 0) -> np.ndarray:
  """0-based rank of the target among candidates, pessimistic on ties.

  Args:
    scores: float[num_queries, num_candidates], higher is better.
    target_column: column of the ground truth (0 in the sampled protocol).
  Returns:
    int64[num_queries]: number of candidates scoring >= the target, minus one.
  """
  scores = np.asarray(scores)
  target = scores[:, target_column:target_column + 1]
  return (scores >= target).sum(axis=1).astype(np.int64) - 1


def ranks_from_retrieved(retrieved: np.ndarray, targets: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
  """0-based position of each target in its retrieved list, MISS (-1) when absent.

  Args:
    retrieved: int[num_queries, k] item ids in ranked order (-1 = padding).
    targets: int[num_queries].
    scores: optional float[num_queries, k], the retrieved items' scores (higher is better). When
      given, ties count pessimistically: a retrieved target's rank is the number of retrieved items
      scoring >= it, minus one (e.g. after every item that shares its identifier). Without scores,
      the target's first position.
  """
  retrieved = np.asarray(retrieved)
  hits = retrieved == np.asarray(targets)[:, None]
  found = hits.any(axis=1)
  first = hits.argmax(axis=1)
  if scores is None:
    return np.where(found, first, MISS).astype(np.int64)
  scores = np.asarray(scores)
  if scores.shape != retrieved.shape:
    raise ValueError(f"scores: expected the retrieved list's shape {retrieved.shape}, got {scores.shape}")
  target_scores = np.take_along_axis(scores, first[:, None], axis=1)
  pessimistic = (scores >= target_scores).sum(axis=1) - 1
  return np.where(found, pessimistic, MISS).astype(np.int64)


TIE_RULES = ("item", "identifier")


def ranks_by_identifier(retrieved: np.ndarray, targets: np.ndarray, beams: np.ndarray) -> np.ndarray:
  """The reference's tie rule: 0-based rank of the target's identifier among the decoded identifiers
  (one position per identifier, so items sharing the target's identifier do not push it down), MISS (-1)
  when the target was not retrieved.

  Args:
    retrieved: int[num_queries, k] item ids in ranked order (-1 = padding).
    targets: int[num_queries].
    beams: int[num_queries, k], the rank of the identifier (beam) each retrieved item came from.
  """
  retrieved, beams = np.asarray(retrieved), np.asarray(beams)
  if beams.shape != retrieved.shape:
    raise ValueError(f"beams: expected the retrieved list's shape {retrieved.shape}, got {beams.shape}")
  hits = retrieved == np.asarray(targets)[:, None]
  found = hits.any(axis=1)
  beam = np.take_along_axis(beams, hits.argmax(axis=1)[:, None], axis=1)[:, 0]
  return np.where(found, beam, MISS).astype(np.int64)


def ranking_metrics(ranks: np.ndarray, cutoffs: Sequence[int] = DEFAULT_CUTOFFS) -> dict[str, float]:
  """HR@k and NDCG@k (k > 1) averaged over queries; NDCG@1 equals HR@1 and is not repeated.

  Args:
    ranks: int[num_queries], 0-based rank of the single relevant item, MISS for not retrieved.
  """
  ranks = np.asarray(ranks, dtype=np.int64)
  if ranks.ndim != 1 or ranks.size == 0:
    raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
  found = ranks >= 0
  gains = np.where(found, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
  out: dict[str, float] = {}
  for k in cutoffs:
    in_top = found & (ranks < k)
    out[f"HR@{k}"] = float(in_top.mean())
    if k > 1:
      out[f"NDCG@{k}"] = float(np.where(in_top, gains, 0.0).mean())
  return out


def metric_names(cutoffs: Sequence[int] = DEFAULT_CUTOFFS) -> tuple[str, ...]:
  """The names `ranking_metrics` reports, in its order."""
  return tuple(name for k in cutoffs for name in (f"HR@{k}", *((f"NDCG@{k}",) if k > 1 else ())))


def validation_metric(task: str, name: str) -> str:
  """The trainer's name of one task's validation metric, e.g. "val/rec_NDCG@5"."""
  return f"val/{task}_{name}"


# The trainer's validation (`eval.stage.make_validation_fn`): every metric of both main tasks, and these means
# over `train.selection_tasks` (model selection: "val/ndcg5_mean", the reference's).
VALIDATION_MEANS = {"val/ndcg5_mean": "NDCG@5", "val/ndcg10_mean": "NDCG@10"}
# Every name the validation reports: what `train.best_metric` may name.
VALIDATION_METRICS = (*(validation_metric(task, name) for task in TASKS for name in metric_names()),
                      *VALIDATION_MEANS)


def mean_metrics(per_task: Mapping[str, Mapping[str, float]], key: str) -> float:
  """Average of one metric over tasks (model selection uses NDCG@5 over rec and search)."""
  return float(np.mean([m[key] for m in per_task.values()]))
