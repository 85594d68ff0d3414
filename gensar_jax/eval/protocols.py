"""Evaluation protocols for generative retrieval: sampled candidates (paper) and the full catalogue.

Sampled (reference protocol): each query has a candidate list (ground truth + 99 negatives); beam
search (beam 30) is constrained to the identifiers of that list through a per-query trie; the
ground truth's position among the decoded items is its rank, and a ground truth outside the beams is
a miss. Full catalogue: the same search constrained by one trie over every item.
Ties (items sharing the target's identifier) are ranked by one of two rules (`metrics.TIE_RULES`):
"identifier", the reference code's (the target counts at its identifier's rank, one position per
identifier) or "item", ours (the target ranks after every retrieved item scoring >= it, one
position per item). Both come from the same search.
Recommendation decodes collaborative identifiers after `<rec_item>`; search decodes semantic
identifiers after `<src_item>` (`TaskData.behaviour_token(task)` and `TaskData.token_offsets(view)`
give the token ids).
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
from tqdm.auto import tqdm

from gensar_jax import parallel
from gensar_jax.decode import trie as trie_lib
from gensar_jax.decode.beam_search import constrained_beam_search
from gensar_jax.eval.metrics import TIE_RULES, ranking_metrics, ranks_by_identifier, ranks_from_retrieved
from gensar_jax.io_utils import DataError
from gensar_jax.model.decoding import T5Decoding
from gensar_jax.model.t5 import T5Config

logger = logging.getLogger(__name__)


def to_host(x) -> np.ndarray:
  """A (possibly multi-process) array as one numpy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _check_inputs(encoder_tokens, targets, identifier_codes, candidates):
  encoder_tokens = np.asarray(encoder_tokens)
  targets = np.asarray(targets)
  if encoder_tokens.ndim != 2 or not np.issubdtype(encoder_tokens.dtype, np.integer):
    raise DataError(f"encoder tokens: expected int32[num_queries, length], got {encoder_tokens.dtype} "
                    f"{encoder_tokens.shape}")
  num_queries = encoder_tokens.shape[0]
  if targets.shape != (num_queries,) or not np.issubdtype(targets.dtype, np.integer):
    raise DataError(f"targets: expected int[{num_queries}] (one ground-truth item per query), got "
                    f"{targets.dtype} {targets.shape}")
  num_items = np.asarray(identifier_codes).shape[0]
  if num_queries and (targets.min() < 0 or targets.max() >= num_items):
    raise DataError(f"targets: item ids must lie in [0, {num_items}), got range [{targets.min()}, {targets.max()}]")
  if candidates is not None:
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or candidates.shape[0] != num_queries:
      raise DataError(f"candidates: expected int[{num_queries}, num_candidates], got shape {candidates.shape}")
    missing = np.flatnonzero(~(candidates == targets[:, None]).any(axis=1))
    if missing.size:
      raise DataError(f"candidates: the ground truth is missing from {missing.size} candidate lists "
                      f"(first rows {missing[:5].tolist()}); the sampled protocol ranks it among its candidates")
  return encoder_tokens.astype(np.int32), targets, candidates


def check_ties(ties: str) -> str:
  if ties not in TIE_RULES:
    raise ValueError(f"ties: expected one of {TIE_RULES}, got {ties!r}")
  return ties


def evaluate_ranking(params, config: T5Config, encoder_tokens: np.ndarray, targets: np.ndarray,
                     identifier_codes: np.ndarray, behaviour_token: int, token_offsets: Sequence[int],
                     codebook_size: int, candidates: np.ndarray | None = None, *, num_beams: int = 30,
                     batch_size: int = 32, mesh: jax.sharding.Mesh | None = None,
                     catalogue_tables: trie_lib.TrieTables | None = None,
                     name: str = "eval", ties: str = "item") -> tuple[dict[str, float], np.ndarray]:
  """HR/NDCG of constrained beam search under one tie rule (see `search_ranks` for the arguments).

  Returns:
    (metrics {"HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10"}, ranks int64[n], 0-based, -1 = miss).
  """
  ranks = search_ranks(params, config, encoder_tokens, targets, identifier_codes, behaviour_token, token_offsets,
                       codebook_size, candidates, num_beams=num_beams, batch_size=batch_size, mesh=mesh,
                       catalogue_tables=catalogue_tables, name=name)[check_ties(ties)]
  return ranking_metrics(ranks), ranks


def search_ranks(params, config: T5Config, encoder_tokens: np.ndarray, targets: np.ndarray,
                 identifier_codes: np.ndarray, behaviour_token: int, token_offsets: Sequence[int],
                 codebook_size: int, candidates: np.ndarray | None = None, *, num_beams: int = 30,
                 batch_size: int = 32, mesh: jax.sharding.Mesh | None = None,
                 catalogue_tables: trie_lib.TrieTables | None = None,
                 name: str = "eval") -> dict[str, np.ndarray]:
  """Ranks of the targets under constrained beam search (sampled protocol with `candidates`, full
  catalogue without), under both tie rules.

  Args:
    encoder_tokens: int32[n, S] prompts (padded with `config.pad_id`).
    targets: int[n] ground-truth item ids.
    identifier_codes: int[num_items, L] the view's identifiers (collaborative for recommendation,
      semantic for search).
    behaviour_token: the forced first token (`<rec_item>` or `<src_item>` id), or
      `trie.NO_BEHAVIOUR_TOKEN` for a model trained without behaviour tokens.
    token_offsets: int[L], vocabulary id of code 0 of each level of the view.
    candidates: int[n, C] item ids, the ground truth among them (column 0 in the paper), or None
      for the full catalogue.
    batch_size: queries per search; the last batch is padded. With a mesh, a multiple of its
      `data` axis.
    catalogue_tables: a prebuilt catalogue trie (full protocol), else built here.
  Returns:
    {"item": ranks, "identifier": ranks}, each int64[n], 0-based, -1 = miss.
  """
  encoder_tokens, targets, candidates = _check_inputs(encoder_tokens, targets, identifier_codes, candidates)
  if mesh is not None:
    parallel.data_sharding(mesh, batch_size, "batch_size")
  num_queries = len(targets)
  if num_queries == 0:
    raise DataError(f"{name}: no queries to evaluate")
  protocol = "full" if candidates is None else "sampled"
  if candidates is None:
    if catalogue_tables is None:
      catalogue_tables = trie_lib.build_catalogue_trie(identifier_codes, behaviour_token, token_offsets,
                                                       codebook_size)
    # Placed once (replicated over a mesh), not copied to the device with every batch.
    catalogue_tables = jax.device_put(
        catalogue_tables, None if mesh is None else parallel.replicated(mesh))
  decoder = T5Decoding(config)
  start_time = time.perf_counter()

  def dispatch(begin: int):
    """Starts the search for queries [begin, begin + batch_size) (padded); returns without waiting."""
    end = min(begin + batch_size, num_queries)
    tokens = np.full((batch_size, encoder_tokens.shape[1]), config.pad_id, np.int32)
    tokens[:end - begin] = encoder_tokens[begin:end]
    if candidates is None:
      tables = catalogue_tables
    else:
      batch_candidates = np.full((batch_size, candidates.shape[1]), -1, candidates.dtype)
      batch_candidates[:end - begin] = candidates[begin:end]
      tables = trie_lib.build_candidate_tries(batch_candidates, identifier_codes, behaviour_token, token_offsets,
                                              codebook_size)
    return begin, end, constrained_beam_search(params, decoder, tokens, tables, num_beams, mesh)

  ranks = {rule: np.empty(num_queries, np.int64) for rule in TIE_RULES}
  starts = range(0, num_queries, batch_size)
  pending = dispatch(0)
  for next_begin in tqdm([*starts[1:], None], desc=f"{name} ({protocol})", unit="batch",
                         disable=jax.process_index() != 0):
    # Build the next batch's tables on the host while the device decodes the current one.
    following = dispatch(next_begin) if next_begin is not None else None
    begin, end, output = pending
    retrieved = to_host(output.items)[:end - begin]
    scores = to_host(output.item_scores)[:end - begin]
    beams = to_host(output.item_beams)[:end - begin]
    # Ours: a target sharing its identifier with other items ranks after all of them (one position per
    # item). The reference's: the target counts at its identifier's rank (one position per identifier).
    ranks["item"][begin:end] = ranks_from_retrieved(retrieved, targets[begin:end], scores)
    ranks["identifier"][begin:end] = ranks_by_identifier(retrieved, targets[begin:end], beams)
    pending = following
  elapsed = time.perf_counter() - start_time
  for rule in TIE_RULES:
    metrics = ranking_metrics(ranks[rule])
    logger.info("%s (%s protocol, beam %d): %d queries in %.1fs, HR@10 %.4f NDCG@10 %.4f (one position per %s)",
                name, protocol, num_beams, num_queries, elapsed, metrics["HR@10"], metrics["NDCG@10"], rule)
  return ranks
