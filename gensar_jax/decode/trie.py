"""Dense, level-wise trie tables over item identifiers, for constrained decoding under `jax.jit`.

An identifier is `num_levels` codes, each in [0, codebook_size); the decoder emits a forced behaviour
token (when the model was trained with them; `NO_BEHAVIOUR_TOKEN` = none, the trie then starts at the
first code) and then one token per level (token of level l, code c = `token_offsets[l] + c`).

Layout (per level, rectangular int32 arrays, built with sort/unique per level, no loop over items):
  - depth d nodes (d = 0..L-1) are the distinct code prefixes of length d; node 0 of depth 0 is the
    root (the state after the behaviour token). Nodes of a depth are numbered in lexicographic order,
    so the children of one node are a contiguous run of the next depth's nodes.
  - `child_codes[d]: int32[T, N_d, F_d]`: the codes of a node's children, ascending, padded with -1;
    F_d is the largest fan-out at depth d (at most codebook_size). The child reached by column j is
    node `child_starts[d][t, node] + j` of depth d + 1 (a leaf when d = L - 1).
  - leaves (full identifiers) map to items CSR-style: the items of leaf f of table t are
    `leaf_items[t, leaf_item_ptr[t, f]:leaf_item_ptr[t, f + 1]]` (several items may share an ID).
  T = 1 for a catalogue-wide table, T = n for a batch of per-example candidate tables (stacked,
padded). Storing a node's children by fan-out rather than by code keeps memory proportional to the
trie's edges: a 1M-item catalogue with 4 levels of 256 codes needs tens of MB, where a
`[num_nodes, codebook_size]` table would need about 1 GB; the decoder's top-k also runs over F_d
children per beam instead of the whole code slice.
"""
from __future__ import annotations

import logging
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gensar_jax.io_utils import DataError

logger = logging.getLogger(__name__)

NO_BEHAVIOUR_TOKEN = -1   # decoding starts at the first code (models trained without behaviour tokens)


@flax.struct.dataclass
class TrieTables:
  """Trie tables for T tries (T = 1: one catalogue trie shared by all queries; T = batch: one per query).

  child_codes: tuple over depth d of int32[T, N_d, F_d], children's codes, -1 = none.
  child_starts: tuple over depth d of int32[T, N_d], node index (depth d + 1) of column 0's child.
  leaf_item_ptr: int32[T, num_leaves + 1], CSR offsets into leaf_items.
  leaf_items: int32[T, R], item ids grouped by leaf (ascending within a leaf), -1 = padding.
  behaviour_token: int32[], the forced first token (NO_BEHAVIOUR_TOKEN: none); token_offsets: int32[L],
    vocabulary id of code 0 per level. Both are arrays (not compile-time constants), so
    recommendation and search tables of the same shapes share one compiled search.
  has_behaviour_token: whether decoding forces `behaviour_token` before the codes (static: it
    changes the number of decoding steps).
  """
  child_codes: tuple
  child_starts: tuple
  leaf_item_ptr: jnp.ndarray
  leaf_items: jnp.ndarray
  behaviour_token: jnp.ndarray
  token_offsets: jnp.ndarray
  codebook_size: int = flax.struct.field(pytree_node=False)
  max_items_per_leaf: int = flax.struct.field(pytree_node=False)
  has_behaviour_token: bool = flax.struct.field(pytree_node=False, default=True)

  @property
  def num_levels(self) -> int:
    return len(self.child_codes)

  @property
  def num_tries(self) -> int:
    return int(self.leaf_items.shape[0])

  @property
  def nbytes(self) -> int:
    return int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(self)))

  def shapes(self) -> dict[str, tuple[int, ...]]:
    out = {f"child_codes[{d}]": tuple(a.shape) for d, a in enumerate(self.child_codes)}
    out["leaf_items"] = tuple(self.leaf_items.shape)
    return out


def _validate_codes(codes: np.ndarray, codebook_size: int, token_offsets: Sequence[int]) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[1] == 0:
    raise DataError(f"identifier codes: expected int[num_items, num_levels], got shape {codes.shape}")
  if not np.issubdtype(codes.dtype, np.integer):
    raise DataError(f"identifier codes: expected integers, got dtype {codes.dtype}")
  if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
    raise DataError(f"identifier codes: values must lie in [0, {codebook_size}), "
                    f"got range [{codes.min()}, {codes.max()}]")
  if len(token_offsets) != codes.shape[1]:
    raise ValueError(f"token_offsets has {len(token_offsets)} entries for {codes.shape[1]} identifier levels")
  return codes.astype(np.int64)


def _build(group: np.ndarray, codes: np.ndarray, items: np.ndarray, num_tries: int, behaviour_token: int,
           token_offsets: Sequence[int], codebook_size: int, max_rows_per_trie: int | None) -> TrieTables:
  """Tables for rows (group[r], codes[r], items[r]); rows need not be sorted or unique.

  With `max_rows_per_trie` = R, shapes are the bounds for any R items (N_d <= min(R, codebook^d),
  F_d <= min(R, codebook), R leaves), so every batch compiles to the same program; else tight.
  """
  num_levels = codes.shape[1]
  if max_rows_per_trie is None:
    pad_nodes = pad_fanout = pad_rows = lambda depth, x: max(int(x), 1)
  else:
    bound = max(int(max_rows_per_trie), 1)
    pad_nodes = lambda depth, x: min(bound, codebook_size ** depth)
    pad_fanout = lambda depth, x: min(bound, codebook_size)
    pad_rows = lambda depth, x: bound
  # Drop repeated (trie, item) rows, then sort rows by (trie, code_0, ..., code_{L-1}, item).
  order = np.lexsort((items, *codes.T[::-1], group))
  group, codes, items = group[order], codes[order], items[order]
  keep = np.ones(len(items), bool)
  keep[1:] = (group[1:] != group[:-1]) | (items[1:] != items[:-1])
  group, codes, items = group[keep], codes[keep], items[keep]
  num_rows = len(items)

  # node_of_row[d][r]: global id of the depth-d node on row r's path; depth 0 nodes are the T roots.
  new_node = np.ones(num_rows, bool)
  new_node[1:] = group[1:] != group[:-1]
  node_of_row = [group]
  for d in range(num_levels):
    changed = np.ones(num_rows, bool)
    changed[1:] = codes[1:, d] != codes[:-1, d]
    new_node = new_node | changed
    node_of_row.append(np.cumsum(new_node) - 1)
  first_row = [np.flatnonzero(np.r_[True, node_of_row[d][1:] != node_of_row[d][:-1]]) if num_rows
               else np.zeros(0, np.int64) for d in range(num_levels + 1)]
  # Per depth: each node's trie and local index (global id minus the trie's first global id).
  node_group = [np.arange(num_tries)] + [group[first_row[d]] for d in range(1, num_levels + 1)]
  nodes_per_trie = [np.bincount(g, minlength=num_tries) for g in node_group]
  first_node_of_trie = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in nodes_per_trie]
  local = [np.arange(len(g)) - first_node_of_trie[d][g] for d, g in enumerate(node_group)]

  child_codes, child_starts = [], []
  for d in range(num_levels):
    parent = node_of_row[d][first_row[d + 1]]        # parent global id of every depth-(d+1) node
    code = codes[first_row[d + 1], d]
    num_parents = len(node_group[d])
    fanout = np.bincount(parent, minlength=num_parents)
    start_global = np.searchsorted(parent, np.arange(num_parents), side="left")
    column = np.arange(len(parent)) - start_global[parent]
    n_pad = pad_nodes(d, nodes_per_trie[d].max())
    f_pad = pad_fanout(d, fanout.max() if fanout.size else 0)
    table = np.full((num_tries, n_pad, f_pad), -1, np.int32)
    table[node_group[d + 1], local[d][parent], column] = code
    starts = np.zeros((num_tries, n_pad), np.int32)
    # Local index (within the trie) of the first child; childless nodes get 0 (never read: codes are -1).
    starts[node_group[d], local[d]] = np.where(
        fanout > 0, start_global - first_node_of_trie[d + 1][node_group[d]], 0)
    child_codes.append(table)
    child_starts.append(starts)

  # Leaves -> items, CSR per trie, offsets local to the trie's rows.
  rows_per_trie = np.bincount(group, minlength=num_tries)
  first_row_of_trie = np.concatenate([[0], np.cumsum(rows_per_trie)[:-1]])
  leaf_pad = pad_rows(num_levels, nodes_per_trie[num_levels].max())
  leaf_item_ptr = np.zeros((num_tries, leaf_pad + 1), np.int32)
  leaf_item_ptr[:] = rows_per_trie[:, None]                     # padding leaves are empty
  leaf_first = first_row[num_levels]
  leaf_item_ptr[node_group[num_levels], local[num_levels]] = leaf_first - first_row_of_trie[group[leaf_first]]
  leaf_items = np.full((num_tries, pad_rows(num_levels, rows_per_trie.max())), -1, np.int32)
  leaf_items[group, np.arange(num_rows) - first_row_of_trie[group]] = items
  leaf_sizes = np.diff(np.r_[leaf_first, num_rows]) if num_rows else np.zeros(1, np.int64)
  return TrieTables(
      child_codes=tuple(child_codes), child_starts=tuple(child_starts),
      leaf_item_ptr=leaf_item_ptr, leaf_items=leaf_items, behaviour_token=np.int32(behaviour_token),
      token_offsets=np.asarray(token_offsets, np.int32), codebook_size=int(codebook_size),
      max_items_per_leaf=int(leaf_sizes.max()), has_behaviour_token=_check_behaviour_token(behaviour_token))


def _check_behaviour_token(behaviour_token: int) -> bool:
  """True for a vocabulary id, False for NO_BEHAVIOUR_TOKEN."""
  if behaviour_token == NO_BEHAVIOUR_TOKEN:
    return False
  if behaviour_token < 0:
    raise ValueError(f"behaviour_token: expected a vocabulary id or NO_BEHAVIOUR_TOKEN ({NO_BEHAVIOUR_TOKEN}), "
                     f"got {behaviour_token}")
  return True


def build_catalogue_trie(codes: np.ndarray, behaviour_token: int, token_offsets: Sequence[int],
                         codebook_size: int) -> TrieTables:
  """One trie over every item (T = 1); item i has identifier `codes[i]`.

  Args:
    codes: int[num_items, num_levels], codes in [0, codebook_size).
    behaviour_token: vocabulary id decoded first (forced), e.g. `<rec_item>`; NO_BEHAVIOUR_TOKEN = none.
    token_offsets: per level, the vocabulary id of code 0.
  """
  codes = _validate_codes(codes, codebook_size, token_offsets)
  num_items = codes.shape[0]
  tables = _build(np.zeros(num_items, np.int64), codes, np.arange(num_items), 1, behaviour_token,
                  token_offsets, codebook_size, max_rows_per_trie=None)
  logger.info("catalogue trie: %d items, %d leaves, fan-outs %s, %.1f MB", num_items,
              int((np.diff(tables.leaf_item_ptr[0]) > 0).sum()),
              [int(t.shape[2]) for t in tables.child_codes], tables.nbytes / 2**20)
  return tables


def build_candidate_tries(candidates: np.ndarray, codes: np.ndarray, behaviour_token: int,
                          token_offsets: Sequence[int], codebook_size: int,
                          fixed_shapes: bool = True) -> TrieTables:
  """One small trie per example over its candidate items, stacked with padding (T = n).

  Args:
    candidates: int[n, C] item ids (rows into `codes`), -1 = no candidate; repeats are merged.
    codes: int[num_items, num_levels] identifier table.
    fixed_shapes: size the tables by their bounds for C candidates (not by this batch's
      content), so every batch of C candidates runs the same compiled search.
  """
  codes = _validate_codes(codes, codebook_size, token_offsets)
  candidates = np.asarray(candidates)
  if candidates.ndim != 2 or not np.issubdtype(candidates.dtype, np.integer):
    raise DataError(f"candidates: expected int[num_examples, num_candidates], got {candidates.dtype} "
                    f"{candidates.shape}")
  if candidates.size and (candidates.min() < -1 or candidates.max() >= codes.shape[0]):
    raise DataError(f"candidates: item ids must lie in [0, {codes.shape[0]}) or be -1 (none), "
                    f"got range [{candidates.min()}, {candidates.max()}]")
  example, column = np.nonzero(candidates >= 0)
  items = candidates[example, column].astype(np.int64)
  return _build(example.astype(np.int64), codes[items], items, candidates.shape[0], behaviour_token,
                token_offsets, codebook_size, candidates.shape[1] if fixed_shapes else None)
