"""Trie-constrained beam search over item identifiers, one `jax.jit` program per table shape.

Decoding is a fixed number of steps: position 0 forces the behaviour token, positions 1..L pick one
code per identifier level (without behaviour tokens, `tables.has_behaviour_token` False, positions
0..L-1 pick the codes: decoding follows the format the model was trained on). Scores follow the reference decoder (HF `generate` with
`prefix_allowed_tokens_fn`): log-softmax over the full vocabulary, disallowed tokens `-inf` after
it (allowed scores are not renormalized), a hypothesis' score is the sum of its token log-probs
(behaviour token included). Per step only the children of each beam's trie node enter the top-k,
never the whole vocabulary.

The search knows no model: it calls a `tokens_to_logits(tokens, position, cache)` function on the
decoder's cache (as flax's and t5x's decoders do; `model.decoding.T5Decoding` makes both for a T5, whose
encoder and cross-attention keys/values run once per query and are shared by the beams). The first two
positions (start -> behaviour token -> first code) run with a single hypothesis and the cache is tiled to
the beams afterwards.
Where a level has fewer valid prefixes than beams, the extra beams hold `-inf` and are reported as
padding (item -1), so the search is exact whenever `num_beams` >= the number of identifiers.
"""
from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from gensar_jax import parallel
from gensar_jax.decode import TokensToLogits
from gensar_jax.decode.trie import TrieTables


@flax.struct.dataclass
class BeamSearchOutput:
  """Ranked results per query (best first); padding is item -1 / token -1 / score -inf.

  items: int32[B, num_beams * max_items_per_leaf], items of the beams' identifiers in beam order
    (items sharing an identifier are adjacent, ascending, and get the identifier's score).
  item_scores: float32[B, num_beams * max_items_per_leaf].
  item_beams: int32[B, num_beams * max_items_per_leaf], the beam (= rank of the identifier among the
    decoded identifiers, 0-based) each item came from; -1 for padding.
  sequences: int32[B, num_beams, 1 + L], decoded tokens (behaviour token, then one per level);
    [B, num_beams, L] for tables without a behaviour token.
  sequence_scores: float32[B, num_beams], sum of the tokens' log-probs.
  """
  items: jax.Array
  item_scores: jax.Array
  item_beams: jax.Array
  sequences: jax.Array
  sequence_scores: jax.Array


def _rows(table: jax.Array, index: jax.Array) -> jax.Array:
  """table: [T, N, ...] with T = 1 (shared) or T = B; index: int[B, ...] -> table[t(b), index[b, ...]]."""
  if table.shape[0] == 1:
    return table[0][index]
  batch = jnp.arange(index.shape[0]).reshape((-1,) + (1,) * (index.ndim - 1))
  return table[batch, index]


def _expand(logits: jax.Array, beam_scores: jax.Array, nodes: jax.Array, child_codes: jax.Array,
            child_starts: jax.Array, token_offset: int, num_beams: int):
  """One trie level: the best `num_beams` (beam, child) pairs.

  logits: float32[B, K_in, V]; beam_scores: float32[B, K_in]; nodes: int32[B, K_in] (depth-d nodes).
  Returns scores [B, K], parent beam [B, K], code [B, K] (-1 for empty beams), child node [B, K].
  """
  batch, k_in, _ = logits.shape
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)                       # [B, K_in]
  codes = _rows(child_codes, nodes)                                         # [B, K_in, F]
  fanout = codes.shape[-1]
  token_logits = jnp.take_along_axis(logits, token_offset + jnp.maximum(codes, 0), axis=-1)
  candidate = beam_scores[..., None] + (token_logits - log_normalizer[..., None])
  candidate = jnp.where(codes >= 0, candidate, -jnp.inf).reshape(batch, k_in * fanout)
  if k_in * fanout < num_beams:
    candidate = jnp.pad(candidate, ((0, 0), (0, num_beams - k_in * fanout)), constant_values=-jnp.inf)
  scores, flat = jax.lax.top_k(candidate, num_beams)
  real = jnp.isfinite(scores)
  flat = jnp.where(real, flat, 0)
  parent, column = flat // fanout, flat % fanout
  code = jnp.where(real, jnp.take_along_axis(codes.reshape(batch, -1), flat, axis=1), -1)
  child = jnp.where(real, jnp.take_along_axis(_rows(child_starts, nodes), parent, axis=1) + column, 0)
  return scores, parent, code, child


def _gather_beams(tree, parent: jax.Array):
  """Reorders axis 1 (hypotheses) of every leaf [B, K, ...] by parent: int32[B, K]."""
  def gather(x):
    index = parent.reshape(parent.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)
  return jax.tree.map(gather, tree)


def decode_length(tables: TrieTables) -> int:
  """Decoder positions of one identifier: [behaviour token +] one per level (the cache's length)."""
  return int(tables.has_behaviour_token) + tables.num_levels


def beam_search(tokens_to_logits: TokensToLogits, cache, tables: TrieTables, start_id: int,
                num_beams: int) -> BeamSearchOutput:
  """The search, traceable (`search` jits it).

  tokens_to_logits: tokens int32[B, K] at `position`, cache -> (logits float32[B, K, V], cache).
  cache: the decoder's state for one hypothesis per query (axis 1 of every leaf, size 1) and at least
    `decode_length(tables)` positions; the search tiles and reorders it along axis 1.
  start_id: the decoder's start token.
  """
  batch = jax.tree.leaves(cache)[0].shape[0]
  num_levels = tables.num_levels

  # The first positions with one hypothesis: start -> [forced behaviour token ->] first code.
  prefix = int(tables.has_behaviour_token)
  logits, cache = tokens_to_logits(jnp.full((batch, 1), start_id, jnp.int32), 0, cache)
  tokens = []
  start_scores = jnp.zeros((batch, 1), jnp.float32)
  if prefix:
    start_scores = logits[:, :, tables.behaviour_token] - jax.nn.logsumexp(logits, axis=-1)
    logits, cache = tokens_to_logits(jnp.full((batch, 1), tables.behaviour_token, jnp.int32), 1, cache)
    tokens.append(jnp.full((batch, num_beams), tables.behaviour_token, jnp.int32))
  scores, _, code, nodes = _expand(logits, start_scores, jnp.zeros((batch, 1), jnp.int32),
                                   tables.child_codes[0], tables.child_starts[0], tables.token_offsets[0],
                                   num_beams)
  cache = jax.tree.map(lambda x: jnp.repeat(x, num_beams, axis=1), cache)
  tokens.append(jnp.where(code >= 0, code + tables.token_offsets[0], -1))
  for level in range(1, num_levels):
    logits, cache = tokens_to_logits(jnp.maximum(tokens[-1], 0), level + prefix, cache)
    scores, parent, code, nodes = _expand(logits, scores, nodes, tables.child_codes[level],
                                          tables.child_starts[level], tables.token_offsets[level], num_beams)
    if level + 1 < num_levels:
      cache = _gather_beams(cache, parent)
    tokens = [jnp.take_along_axis(t, parent, axis=1) for t in tokens]
    tokens.append(jnp.where(code >= 0, code + tables.token_offsets[level], -1))
  sequences = jnp.stack(tokens, axis=-1)
  real = jnp.isfinite(scores)
  sequences = jnp.where(real[..., None], sequences, -1)

  # Leaves -> items (several items may share an identifier), compacted to the front in beam order.
  per_leaf = max(tables.max_items_per_leaf, 1)
  begin = _rows(tables.leaf_item_ptr, nodes)
  end = _rows(tables.leaf_item_ptr, nodes + 1)
  slot = begin[..., None] + jnp.arange(per_leaf)                            # [B, K, M]
  present = real[..., None] & (slot < end[..., None])
  items = jnp.where(present, _rows(tables.leaf_items, jnp.where(present, slot, 0)), -1)
  item_scores = jnp.where(present, scores[..., None], -jnp.inf)
  item_beams = jnp.where(present, jnp.arange(num_beams, dtype=jnp.int32)[None, :, None], -1)
  order = jnp.argsort(~present.reshape(batch, -1), axis=1, stable=True)
  return BeamSearchOutput(
      items=jnp.take_along_axis(items.reshape(batch, -1), order, axis=1),
      item_scores=jnp.take_along_axis(item_scores.reshape(batch, -1), order, axis=1),
      item_beams=jnp.take_along_axis(item_beams.reshape(batch, -1), order, axis=1),
      sequences=sequences, sequence_scores=scores)


@functools.partial(jax.jit, static_argnames=("decoder", "num_beams"))
def search(params, encoder_tokens: jax.Array, tables: TrieTables, decoder, num_beams: int) -> BeamSearchOutput:
  """The jitted program: encoder once per query, then `beam_search` with the decoder's `tokens_to_logits`.

  decoder: a hashable model binding (`model.decoding.T5Decoding`) with `start_id`, `encode(params, tokens)`,
    `init_cache(batch, num_hyps, max_len)` and `tokens_to_logits(params, encoded)`.
  """
  tokens_to_logits = decoder.tokens_to_logits(params, decoder.encode(params, encoder_tokens))
  cache = decoder.init_cache(encoder_tokens.shape[0], 1, decode_length(tables))
  return beam_search(tokens_to_logits, cache, tables, decoder.start_id, num_beams)


def input_shardings(mesh: jax.sharding.Mesh, batch: int, tables: TrieTables) -> tuple[NamedSharding, TrieTables]:
  """(encoder tokens' sharding, tables' shardings: a `TrieTables` of shardings) of `search` over `mesh`:
  queries over the data axis (which must divide `batch`), per-query tables with their queries, a shared
  trie replicated."""
  by_query = parallel.data_sharding(mesh, batch)
  replicated = parallel.replicated(mesh)
  per_query = by_query if tables.num_tries == batch and batch > 1 else replicated
  table_shardings = tables.replace(
      child_codes=(per_query,) * tables.num_levels, child_starts=(per_query,) * tables.num_levels,
      leaf_item_ptr=per_query, leaf_items=per_query, behaviour_token=replicated, token_offsets=replicated)
  return by_query, table_shardings


def abstract_inputs(mesh: jax.sharding.Mesh, batch: int, input_len: int,
                    tables: TrieTables) -> tuple[jax.ShapeDtypeStruct, TrieTables]:
  """`search`'s (encoder_tokens, tables) as `ShapeDtypeStruct`s laid out by `input_shardings`: what
  `search.lower(params, *abstract_inputs(...), decoder=..., num_beams=...)` compiles."""
  token_sharding, table_shardings = input_shardings(mesh, batch, tables)
  abstract_tables = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=s),
                                 tables, table_shardings)
  return jax.ShapeDtypeStruct((batch, input_len), jnp.int32, sharding=token_sharding), abstract_tables


def constrained_beam_search(params, decoder, encoder_tokens, tables: TrieTables, num_beams: int = 30,
                            mesh: jax.sharding.Mesh | None = None) -> BeamSearchOutput:
  """Top identifiers (and their items) per query under trie constraints.

  Args:
    params: the model's parameters.
    decoder: the model bound for decoding (`model.decoding.T5Decoding(config)`).
    encoder_tokens: int32[B, S], padded with `decoder.pad_id`.
    tables: a catalogue trie (T = 1, shared) or per-example candidate tries (T = B).
    num_beams: beam width (reference: 30).
    mesh: when given, queries (and per-example tables) are sharded over its `data` axis; B must
      be divisible by that axis' size.
  """
  encoder_tokens = jnp.asarray(encoder_tokens, jnp.int32)
  if encoder_tokens.ndim != 2:
    raise ValueError(f"encoder_tokens: expected int32[batch, length], got shape {encoder_tokens.shape}")
  batch = encoder_tokens.shape[0]
  if tables.num_tries not in (1, batch):
    raise ValueError(f"tables hold {tables.num_tries} tries for a batch of {batch} queries "
                     "(expected 1 shared trie or one per query)")
  if num_beams < 1:
    raise ValueError(f"num_beams must be positive, got {num_beams}")
  if mesh is not None:
    token_sharding, table_shardings = input_shardings(mesh, batch, tables)
    encoder_tokens = jax.device_put(encoder_tokens, token_sharding)
    tables = jax.device_put(tables, table_shardings)
  return search(params, encoder_tokens, tables, decoder=decoder, num_beams=num_beams)
