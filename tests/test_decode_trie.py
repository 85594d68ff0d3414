"""Trie tables against brute-force prefix sets built with Python dicts."""
import collections

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from gensar_jax.decode import trie as trie_lib
from gensar_jax.io_utils import DataError


def brute_force_children(item_lists, codes):
  """{(trie, prefix tuple): set of next codes} and {(trie, full id): sorted items}, from Python sets."""
  children = collections.defaultdict(set)
  leaves = collections.defaultdict(set)
  for t, items in enumerate(item_lists):
    children[(t, ())]  # every trie has a root, even an empty one
    for item in items:
      ident = tuple(int(c) for c in codes[item])
      for d in range(len(ident)):
        children[(t, ident[:d])].add(ident[d])
      leaves[(t, ident)].add(int(item))
  return dict(children), {k: sorted(v) for k, v in leaves.items()}


def walk_tables(tables):
  """Reads every path back out of the tables: the same two dicts as brute_force_children."""
  children, leaves = {}, {}
  num_levels = tables.num_levels
  for t in range(tables.num_tries):
    frontier = [((), 0)]
    for d in range(num_levels):
      next_frontier = []
      for prefix, node in frontier:
        row = np.asarray(tables.child_codes[d][t, node])
        valid = row[row >= 0]
        assert np.all(row[len(valid):] == -1), "padding must follow the valid codes"
        assert np.all(np.diff(valid) > 0), "codes must be ascending and distinct"
        children[(t, prefix)] = set(int(c) for c in valid)
        start = int(tables.child_starts[d][t, node])
        next_frontier += [(prefix + (int(c),), start + j) for j, c in enumerate(valid)]
      frontier = next_frontier
    ptr = np.asarray(tables.leaf_item_ptr[t])
    for ident, leaf in frontier:
      items = np.asarray(tables.leaf_items[t, ptr[leaf]:ptr[leaf + 1]])
      leaves[(t, ident)] = [int(i) for i in items]
  return children, leaves


def test_catalogue_trie_matches_brute_force_with_shared_ids():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 3, size=(60, 3))     # 27 possible IDs for 60 items: many collisions
  tables = trie_lib.build_catalogue_trie(codes, behaviour_token=7, token_offsets=(10, 13, 16), codebook_size=3)
  expected = brute_force_children([np.arange(60)], codes)
  assert walk_tables(tables) == expected
  assert tables.max_items_per_leaf == max(len(v) for v in expected[1].values())
  assert tables.num_tries == 1 and tables.behaviour_token == 7
  np.testing.assert_array_equal(tables.token_offsets, [10, 13, 16])


def test_candidate_tries_with_padding_repeats_and_empty_rows():
  rng = np.random.default_rng(1)
  codes = rng.integers(0, 4, size=(40, 4))
  candidates = rng.integers(-1, 40, size=(6, 9))
  candidates[2] = -1                               # an example without candidates
  candidates[3, :3] = candidates[3, 3]              # repeated candidate
  tables = trie_lib.build_candidate_tries(candidates, codes, 5, (0, 4, 8, 12), 4)
  item_lists = [sorted(set(int(c) for c in row if c >= 0)) for row in candidates]
  assert walk_tables(tables) == brute_force_children(item_lists, codes)
  # Shapes are the bounds for 9 candidates over 4 codes, whatever the batch holds.
  assert [t.shape for t in tables.child_codes] == [(6, 1, 4), (6, 4, 4), (6, 9, 4), (6, 9, 4)]
  assert tables.leaf_items.shape == (6, 9) and tables.leaf_item_ptr.shape == (6, 10)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1), num_levels=st.integers(1, 4), codebook_size=st.integers(1, 5),
    num_items=st.integers(1, 30), num_examples=st.integers(1, 4), num_candidates=st.integers(1, 8),
    fixed_shapes=st.booleans())
def test_candidate_tries_property(seed, num_levels, codebook_size, num_items, num_examples, num_candidates,
                                  fixed_shapes):
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, codebook_size, size=(num_items, num_levels))
  candidates = rng.integers(-1, num_items, size=(num_examples, num_candidates))
  offsets = tuple(range(0, num_levels * codebook_size, codebook_size))
  tables = trie_lib.build_candidate_tries(candidates, codes, 0, offsets, codebook_size, fixed_shapes)
  item_lists = [sorted(set(int(c) for c in row if c >= 0)) for row in candidates]
  assert walk_tables(tables) == brute_force_children(item_lists, codes)


def test_bad_input_is_rejected_with_named_field():
  codes = np.zeros((3, 2), np.int32)
  with pytest.raises(DataError, match=r"identifier codes: values must lie in \[0, 4\)"):
    trie_lib.build_catalogue_trie(codes + 4, 0, (0, 4), 4)
  with pytest.raises(DataError, match="identifier codes: expected int"):
    trie_lib.build_catalogue_trie(np.zeros(3, np.int32), 0, (0, 4), 4)
  with pytest.raises(ValueError, match="token_offsets has 1 entries for 2"):
    trie_lib.build_catalogue_trie(codes, 0, (0,), 4)
  with pytest.raises(DataError, match="candidates: item ids must lie in"):
    trie_lib.build_candidate_tries(np.array([[0, 3]]), codes, 0, (0, 4), 4)


def test_million_item_catalogue_fits_in_tens_of_megabytes():
  rng = np.random.default_rng(2)
  codes = rng.integers(0, 256, size=(1_000_000, 4), dtype=np.int32)
  tables = trie_lib.build_catalogue_trie(codes, 0, (0, 256, 512, 768), 256)
  assert tables.nbytes < 200 * 2**20, tables.shapes()
  # Spot-check 200 items: each one's path exists and ends at a leaf holding it.
  for item in rng.integers(0, 1_000_000, size=200):
    node = 0
    for d in range(4):
      row = tables.child_codes[d][0, node]
      (j,) = np.flatnonzero(row == codes[item, d])
      node = tables.child_starts[d][0, node] + j
    ptr = tables.leaf_item_ptr[0]
    assert item in tables.leaf_items[0, ptr[node]:ptr[node + 1]]
