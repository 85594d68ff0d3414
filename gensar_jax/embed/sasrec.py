"""SASRec (Kang & McAuley, 2018) in Flax: the collaborative item embeddings and a recommendation baseline.

Each user's training sequence (item ids in [0, num_items)) is cut to its last max_len + 1 items; the
model reads the first max_len of them right-aligned (left padding) and predicts every next item under
causal self-attention. Item ids are shifted by one inside the model so that token 0 is padding. The
item embedding table is shared between input and output, so `item_embeddings` is the collaborative
embedding float32[num_items, hidden_dim].

Loss (`loss`): "softmax" (default), cross-entropy over the full item table. With a few thousand to tens
of thousands of items this is cheap on an accelerator and trains better than SASRec's original binary
loss with one negative (Klenitskiy & Vasilev, RecSys 2023). For very large catalogues
`num_negatives > 0` switches to a sampled softmax over that many uniform negatives shared by the batch
(uniform proposals need no logQ correction; negatives equal to the target are masked).
"bce": SASRec's own binary cross-entropy (Kang & McAuley; UniSAR trains its recommenders this way): at each
position one logit for the next item (label 1) and one for each of `bce_negatives` negatives (label 0), the
negatives drawn uniformly, independently per position, from the items absent from the user's training
sequence (SASRec's sampler); the loss is the mean over positions of -log sigmoid(positive) - mean over
negatives of log(1 - sigmoid(negative)), i.e. SASRec's mean positive BCE + mean negative BCE.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from gensar_jax.config_schema import Field, Section, at_least, fraction, one_of, positive, whole_at_least
from gensar_jax.eval.metrics import ranking_metrics, ranks_from_scores
from gensar_jax.io_utils import DataError, load_arrays, save_arrays

logger = logging.getLogger(__name__)

PAD = -1  # padding in the item-id histories this module accepts


LOSSES = ("softmax", "bce")

# The `embed.sasrec` section (the `embed` stage and the SASRec baselines).
SASREC_SCHEMA = Section(dict(
    hidden_dim=Field(64, whole_at_least(1)),
    num_blocks=Field(2, whole_at_least(1)),
    num_heads=Field(1, whole_at_least(1)),
    max_len=Field(50, whole_at_least(1)),
    dropout=Field(0.5, fraction(True, False)),   # Office (5k users): 0.5 beat 0.2 on validation NDCG@10 (0.376 vs 0.354)
    batch_size=Field(128, whole_at_least(1)),
    epochs=Field(40, whole_at_least(1)),   # the best validation epoch is returned
    learning_rate=Field(3e-3, positive()),
    weight_decay=Field(1e-4, at_least(0.0)),
    grad_clip=Field(1.0, positive()),
    # softmax: cross-entropy over the items | bce: SASRec's binary loss (module docstring)
    loss=Field("softmax", one_of(*LOSSES), unrecorded="softmax"),
    num_negatives=Field(0, whole_at_least(0)),   # loss=softmax: 0 = full softmax over all items; > 0 = sampled softmax
    # loss=bce: sampled negatives per position (SASRec and UniSAR: 1)
    bce_negatives=Field(1, at_least(1), unrecorded=1),
    eval_every=Field(5, whole_at_least(0)),   # epochs between validation checks when validation data is given (0 = never)
    eval_batch_size=Field(256, whole_at_least(1)),
))


def sasrec_config() -> ml_collections.ConfigDict:
  """Defaults of the `embed.sasrec` section."""
  return SASREC_SCHEMA.defaults()


class SASRecBlock(nn.Module):
  """Pre-LN causal self-attention block with a two-layer ReLU feed-forward."""
  hidden_dim: int
  num_heads: int
  dropout: float

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
    """x: float[b, L, d]; mask: bool[b, 1, L, L] (query may attend key)."""
    y = nn.LayerNorm(name="attention_norm")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=self.hidden_dim, dropout_rate=self.dropout,
        deterministic=deterministic, name="attention")(y, y, mask=mask)
    x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = nn.LayerNorm(name="ffn_norm")(x)
    y = nn.relu(nn.Dense(self.hidden_dim, name="ffn_in")(y))
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = nn.Dense(self.hidden_dim, name="ffn_out")(y)
    return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)


class SASRecModule(nn.Module):
  """Right-aligned token ids int32[b, L <= max_len] (0 = padding, item i = i + 1) -> states float32[b, L, d]."""
  num_items: int
  hidden_dim: int
  num_blocks: int
  num_heads: int
  max_len: int
  dropout: float

  def setup(self):
    self.item_embedding = nn.Embed(self.num_items + 1, self.hidden_dim, name="item_embedding")
    self.position_embedding = nn.Embed(self.max_len, self.hidden_dim, name="position_embedding")
    self.blocks = [SASRecBlock(self.hidden_dim, self.num_heads, self.dropout, name=f"block_{i}")
                   for i in range(self.num_blocks)]
    self.final_norm = nn.LayerNorm(name="final_norm")
    self.embed_dropout = nn.Dropout(self.dropout)

  def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
    # Right alignment: the most recent item is always at position max_len - 1, so a window shorter
    # than max_len (left padding trimmed) gives the same states as the full padded one.
    valid = (tokens > 0)[..., None]
    positions = self.max_len - tokens.shape[1] + jnp.arange(tokens.shape[1])[None, :]
    x = self.item_embedding(tokens) * np.sqrt(self.hidden_dim) + self.position_embedding(positions)
    x = self.embed_dropout(x, deterministic=deterministic) * valid
    mask = nn.combine_masks(nn.make_causal_mask(tokens), nn.make_attention_mask(tokens > 0, tokens > 0))
    for block in self.blocks:
      x = block(x, mask, deterministic) * valid
    return self.final_norm(x)


@flax.struct.dataclass
class SASRecParams:
  """Trained SASRec: the parameter pytree plus the static architecture needed to apply it."""
  params: Any
  num_items: int = flax.struct.field(pytree_node=False)
  hidden_dim: int = flax.struct.field(pytree_node=False)
  num_blocks: int = flax.struct.field(pytree_node=False)
  num_heads: int = flax.struct.field(pytree_node=False)
  max_len: int = flax.struct.field(pytree_node=False)

  def architecture(self) -> dict:
    return {"num_items": self.num_items, "hidden_dim": self.hidden_dim, "num_blocks": self.num_blocks,
            "num_heads": self.num_heads, "max_len": self.max_len}


def _module(arch: dict, dropout: float = 0.0) -> SASRecModule:
  return SASRecModule(dropout=dropout, **arch)


def training_windows(train_sequences: Sequence[np.ndarray], num_items: int,
                     max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-aligned (inputs, targets) token windows from the last max_len + 1 items of each sequence.

  Returns int32[n, max_len] twice (tokens = item id + 1, 0 = padding); sequences shorter than 2 items
  contribute no window. Raises DataError for ids outside [0, num_items).
  """
  inputs, targets = [], []
  for user, seq in enumerate(train_sequences):
    seq = np.asarray(seq, np.int64)
    if seq.ndim != 1:
      raise DataError(f"train_sequences[{user}]: expected a 1-D array of item ids, got shape {seq.shape}")
    if seq.size and (seq.min() < 0 or seq.max() >= num_items):
      raise DataError(f"train_sequences[{user}]: item ids must be in [0, {num_items}), "
                      f"got range [{seq.min()}, {seq.max()}]")
    if seq.size < 2:
      continue
    window = seq[-(max_len + 1):] + 1
    row_in = np.zeros(max_len, np.int32)
    row_out = np.zeros(max_len, np.int32)
    row_in[max_len - (window.size - 1):] = window[:-1]
    row_out[max_len - (window.size - 1):] = window[1:]
    inputs.append(row_in)
    targets.append(row_out)
  if not inputs:
    raise DataError("train_sequences: no sequence has 2 or more items; nothing to train on")
  return np.stack(inputs), np.stack(targets)


def length_buckets(max_len: int, min_len: int = 8) -> tuple[int, ...]:
  """Window lengths training compiles for: powers of two from min_len, then max_len."""
  buckets, length = [], min_len
  while length < max_len:
    buckets.append(length)
    length *= 2
  return tuple(buckets) + (max_len,)


def epoch_batches(row_bucket: np.ndarray, buckets: Sequence[int], batch_size: int,
                  rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
  """One epoch's batches: (rows int64[batch_size], -1 = empty slot; window width), shuffled.

  Rows are shuffled within each length bucket, cut into batches, and the batch order is shuffled.
  """
  batches = []
  for index, width in enumerate(buckets):
    rows = rng.permutation(np.flatnonzero(row_bucket == index))
    rows = np.pad(rows, (0, (-rows.size) % batch_size), constant_values=-1)
    batches.extend((rows[lo:lo + batch_size], width) for lo in range(0, rows.size, batch_size))
  return [batches[i] for i in rng.permutation(len(batches))]


# Padding of `window_seen_items` rows: larger than any item id, so it sorts last and is never counted.
_NOT_AN_ITEM = np.int32(2**30)


def window_seen_items(train_sequences: Sequence[np.ndarray]) -> np.ndarray:
  """Each training window's user's distinct items, sorted: int32[n, M] padded with a value above every
  item id; rows match `training_windows` (sequences of 2 or more items)."""
  sets = [np.unique(np.asarray(seq, np.int64)) for seq in train_sequences if len(seq) >= 2]
  out = np.full((len(sets), max((len(s) for s in sets), default=1)), _NOT_AN_ITEM, np.int32)
  for row, items in enumerate(sets):
    out[row, :items.size] = items
  return out


def sample_unseen(key: jax.Array, seen: jax.Array, num_items: int, shape: tuple[int, ...]) -> jax.Array:
  """Item ids uniform over [0, num_items) minus each row's `seen` items: int32[b, *shape].

  seen: int32[b, M] distinct sorted item ids, padded with a value >= 2**30 (`window_seen_items`). The r-th
  unseen item (0-based) is r + #{j : seen[j] - j <= r}, so one uniform draw below the number of unseen
  items gives an exactly uniform unseen item, with no rejection loop.
  """
  seen = jnp.asarray(seen, jnp.int32)
  unseen = num_items - jnp.sum(seen < num_items, axis=1)                    # [b]
  ranks = jax.random.randint(key, (seen.shape[0], *shape), 0,
                             unseen.reshape((-1,) + (1,) * len(shape)))
  shifted = seen - jnp.arange(seen.shape[1], dtype=jnp.int32)              # non-decreasing per row
  flat = ranks.reshape(seen.shape[0], -1)
  skipped = jnp.sum(shifted[:, None, :] <= flat[:, :, None], axis=-1)
  return (flat + skipped).reshape(ranks.shape).astype(jnp.int32)


def sampled_bce_losses(hidden: jax.Array, table: jax.Array, targets: jax.Array, negatives: jax.Array) -> jax.Array:
  """SASRec's binary cross-entropy per position: float32[b, w].

  hidden: float[b, w, d] states; table: float[num_items + 1, d] token embeddings (row 0 = padding);
  targets: int32[b, w] next-item tokens; negatives: int32[b, w, K] negative tokens. Each position gives
  -log sigmoid(<h, e_target>) - mean_k log(1 - sigmoid(<h, e_negative_k>)).
  """
  positive = jnp.sum(hidden * table[targets], axis=-1)                    # [b, w]
  negative = jnp.einsum("bwd,bwkd->bwk", hidden, table[negatives])         # [b, w, K]
  return jax.nn.softplus(-positive) + jnp.mean(jax.nn.softplus(negative), axis=-1)


def _loss_fn(params, module, tokens, targets, negatives, dropout_key, loss="softmax"):
  """Mean next-item loss over valid positions. loss "softmax": negatives int32[K] tokens (sampled softmax)
  or None (full); loss "bce": negatives int32[b, w, K] tokens."""
  hidden = module.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": dropout_key})
  table = params["item_embedding"]["embedding"]
  weights = (targets > 0).astype(jnp.float32)
  if loss == "bce":
    losses = sampled_bce_losses(hidden, table, targets, negatives)
  elif negatives is None:
    logits = hidden @ table[1:].T  # [b, L, num_items]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(targets - 1, 0))
  else:
    positive = jnp.sum(hidden * table[targets], axis=-1, keepdims=True)
    negative = hidden @ table[negatives].T  # [b, L, K]
    negative = jnp.where(negatives[None, None, :] == targets[..., None], -jnp.inf, negative)
    logits = jnp.concatenate([positive, negative], axis=-1)
    losses = -jax.nn.log_softmax(logits, axis=-1)[..., 0]
  total = jnp.sum(losses * weights)
  count = jnp.sum(weights)
  return total / jnp.maximum(count, 1.0), (total, count)


@functools.lru_cache(maxsize=8)
def training_fns(arch_items: tuple, hyper_items: tuple):
  """(module, optimizer, jitted train step) for one architecture and set of hyper-parameters.

  Cached so that repeated trainings (seeds, tests) reuse the compiled step.
  """
  hyper = dict(hyper_items)
  num_items = dict(arch_items)["num_items"]
  module = _module(dict(arch_items), hyper["dropout"])
  optimizer = optax.chain(optax.clip_by_global_norm(hyper["grad_clip"]),
                          optax.adamw(hyper["learning_rate"], weight_decay=hyper["weight_decay"]))
  loss, num_negatives, bce_negatives = hyper["loss"], hyper["num_negatives"], hyper["bce_negatives"]

  @jax.jit
  def train_step(params, opt_state, tokens, step_targets, seen, step_key):
    """One AdamW step on a batch of right-aligned windows int32[b, w]; `seen` int32[b, M]: each row's user's
    items (`window_seen_items`, read by loss "bce"). Returns loss sum and count."""
    dropout_key, negative_key = jax.random.split(step_key)
    negatives = None
    if loss == "bce":
      negatives = sample_unseen(negative_key, seen, num_items, (tokens.shape[1], bce_negatives)) + 1
    elif num_negatives > 0:
      negatives = jax.random.randint(negative_key, (num_negatives,), 1, num_items + 1)
    grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
    (_, (total, count)), grads = grad_fn(params, module, tokens, step_targets, negatives, dropout_key, loss)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, total, count

  return module, optimizer, train_step


@functools.lru_cache(maxsize=8)
def _scoring_fn(arch_items: tuple):
  module = _module(dict(arch_items))

  @jax.jit
  def score(params, tokens, candidate_tokens):
    hidden = module.apply({"params": params}, tokens)[:, -1]  # state after the most recent item
    candidates = params["item_embedding"]["embedding"][candidate_tokens]  # [b, C, d]
    return jnp.einsum("bd,bcd->bc", hidden, candidates)

  return score


def score_candidates(model: SASRecParams, histories: np.ndarray, candidates: np.ndarray,
                     batch_size: int = 256) -> np.ndarray:
  """Dot-product scores of candidate items after each history.

  Args:
    model: trained SASRec.
    histories: int[n, h] item ids, right-aligned (most recent last), padded with -1 on the left;
      only the last max_len columns are read.
    candidates: int[n, C] item ids in [0, num_items).
  Returns:
    float32[n, C], higher is better.
  """
  histories = np.asarray(histories)
  candidates = np.asarray(candidates)
  if histories.ndim != 2 or candidates.ndim != 2 or histories.shape[0] != candidates.shape[0]:
    raise ValueError(f"histories [n, h] and candidates [n, C] must share n; got {histories.shape} "
                     f"and {candidates.shape}")
  if candidates.size and (candidates.min() < 0 or candidates.max() >= model.num_items):
    raise ValueError(f"candidates must be item ids in [0, {model.num_items}), got range "
                     f"[{candidates.min()}, {candidates.max()}]")
  if histories.size and (histories.min() < PAD or histories.max() >= model.num_items):
    raise ValueError(f"histories must hold item ids in [0, {model.num_items}) or {PAD} padding")
  n, length = histories.shape
  tokens = np.zeros((n, model.max_len), np.int32)
  keep = min(length, model.max_len)
  tokens[:, model.max_len - keep:] = histories[:, length - keep:] + 1
  score = _scoring_fn(tuple(sorted(model.architecture().items())))
  out = np.zeros(candidates.shape, np.float32)
  for lo in range(0, n, batch_size):
    rows = slice(lo, min(lo + batch_size, n))
    pad = batch_size - (rows.stop - rows.start)
    batch_tokens = np.pad(tokens[rows], ((0, pad), (0, 0)))
    batch_candidates = np.pad(candidates[rows] + 1, ((0, pad), (0, 0)))
    out[rows] = np.asarray(score(model.params, batch_tokens, batch_candidates))[:rows.stop - rows.start]
  return out


def item_embeddings(model: SASRecParams) -> np.ndarray:
  """Collaborative item embeddings float32[num_items, hidden_dim] (row i = item i)."""
  return np.asarray(model.params["item_embedding"]["embedding"][1:], np.float32)


def training_hyper(cfg: ml_collections.ConfigDict) -> dict:
  """The hyper-parameters of an `embed.sasrec` section that the compiled train step depends on."""
  hyper = {"dropout": float(cfg.dropout), "learning_rate": float(cfg.learning_rate),
           "weight_decay": float(cfg.weight_decay), "grad_clip": float(cfg.grad_clip),
           "num_negatives": int(cfg.num_negatives), "loss": cfg.get("loss", "softmax"),
           "bce_negatives": int(cfg.get("bce_negatives", 1))}
  return hyper


def train_sasrec(train_sequences: Sequence[np.ndarray], num_items: int, cfg: ml_collections.ConfigDict,
                 seed: int = 0, validation: tuple[np.ndarray, np.ndarray] | None = None,
                 progress: bool = True) -> SASRecParams:
  """Trains SASRec on training sequences only; deterministic for a given seed.

  Args:
    train_sequences: per user, int item ids in [0, num_items) in time order.
    num_items: size of the item table.
    cfg: the `sasrec_config()` section.
    validation: optional (histories int[n, h] right-aligned with -1 padding, candidates int[n, C]
      with the target in column 0). Every cfg.eval_every epochs the validation NDCG@10 is computed
      and the best parameters are returned.
  Returns:
    SASRecParams.
  """
  arch = {"num_items": int(num_items), "hidden_dim": int(cfg.hidden_dim),
          "num_blocks": int(cfg.num_blocks), "num_heads": int(cfg.num_heads), "max_len": int(cfg.max_len)}
  if arch["hidden_dim"] % arch["num_heads"]:
    raise ValueError(f"sasrec.hidden_dim {cfg.hidden_dim} must be divisible by num_heads {cfg.num_heads}")
  inputs, targets = training_windows(train_sequences, num_items, arch["max_len"])
  hyper = training_hyper(cfg)
  if hyper["loss"] == "bce":
    seen = window_seen_items(train_sequences)
    if (seen < num_items).sum(axis=1).max() >= num_items:
      raise DataError("train_sequences: a user has every item in the catalogue; loss=bce has no negative to draw")
  else:
    seen = np.zeros((inputs.shape[0], 1), np.int32)   # read by loss=bce only
  module, optimizer, train_step = training_fns(tuple(sorted(arch.items())), tuple(sorted(hyper.items())))
  key = jax.random.PRNGKey(seed)
  init_key, key = jax.random.split(key)
  params = module.init(init_key, jnp.zeros((1, arch["max_len"]), jnp.int32))["params"]
  opt_state = optimizer.init(params)

  batch_size = int(cfg.batch_size)
  num_rows = inputs.shape[0]
  # Batches hold windows of similar length, trimmed to a length bucket: most users' sequences are far
  # shorter than max_len, and the trimmed left padding would only cost compute (results are equal).
  buckets = length_buckets(arch["max_len"])
  window_lengths = (targets > 0).sum(axis=1)
  row_bucket = np.searchsorted(np.asarray(buckets), window_lengths)
  shuffle_rng = np.random.default_rng(seed)
  best = (-np.inf, params, 0)
  start = time.perf_counter()
  epochs = tqdm.trange(int(cfg.epochs), desc="sasrec", unit="epoch", disable=not progress)
  for epoch in epochs:
    totals, counts = [], []
    for rows, width in epoch_batches(row_bucket, buckets, batch_size, shuffle_rng):
      real = rows >= 0
      batch_in = np.where(real[:, None], inputs[np.maximum(rows, 0), -width:], 0)
      batch_out = np.where(real[:, None], targets[np.maximum(rows, 0), -width:], 0)
      key, step_key = jax.random.split(key)
      params, opt_state, total, count = train_step(params, opt_state, batch_in, batch_out,
                                                   seen[np.maximum(rows, 0)], step_key)
      totals.append(total)
      counts.append(count)
    epoch_loss = float(np.sum(jax.device_get(totals)) / max(np.sum(jax.device_get(counts)), 1.0))
    message = f"sasrec epoch {epoch + 1}/{cfg.epochs}: loss {epoch_loss:.4f}"
    if validation is not None and cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0
                                                          or epoch + 1 == cfg.epochs):
      current = SASRecParams(params=params, **arch)
      metrics = ranking_metrics(ranks_from_scores(
          score_candidates(current, validation[0], validation[1], int(cfg.eval_batch_size)), 0))
      message += f", valid NDCG@10 {metrics['NDCG@10']:.4f} HR@10 {metrics['HR@10']:.4f}"
      if metrics["NDCG@10"] > best[0]:
        best = (metrics["NDCG@10"], params, epoch + 1)
    logger.info(message)
    epochs.set_postfix(loss=f"{epoch_loss:.4f}")
  if validation is not None and cfg.eval_every > 0:
    params = best[1]
    logger.info("sasrec: kept epoch %d (valid NDCG@10 %.4f)", best[2], best[0])
  logger.info("sasrec trained on %d sequences, %d items, %d epochs in %.1fs", num_rows, num_items,
              cfg.epochs, time.perf_counter() - start)
  return SASRecParams(params=jax.device_get(params), **arch)


def save_sasrec(path, model: SASRecParams) -> None:
  """Writes parameters and architecture to one .npz (atomically)."""
  flat = {"/".join(k.key for k in path_keys): np.asarray(v)
          for path_keys, v in jax.tree_util.tree_flatten_with_path(model.params)[0]}
  save_arrays(path, architecture=np.array(json.dumps(model.architecture())),
              **{f"params/{k}": v for k, v in flat.items()})


def load_sasrec(path) -> SASRecParams:
  """Reads a file written by save_sasrec."""
  arrays = load_arrays(path)
  if "architecture" not in arrays:
    raise DataError(f"{path}: no 'architecture' entry; not a SASRec file written by save_sasrec")
  params: dict = {}
  for name, value in arrays.items():
    if not name.startswith("params/"):
      continue
    node = params
    *parents, leaf = name.split("/")[1:]
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return SASRecParams(params=params, **json.loads(str(arrays["architecture"])))


# ---------------------------------------------------------------- leave-one-out evaluation


def right_aligned(sequences: Sequence[np.ndarray], length: int) -> np.ndarray:
  """int32[n, length]: the last `length` ids of each sequence, right-aligned, padded with -1."""
  out = np.full((len(sequences), length), PAD, np.int32)
  for row, seq in enumerate(sequences):
    tail = np.asarray(seq)[-length:] if length else np.zeros(0)
    out[row, length - tail.size:] = tail
  return out


def uniform_negatives(seen: Sequence[np.ndarray], num_items: int, num_negatives: int,
                      rng: np.random.Generator) -> np.ndarray:
  """int32[n, num_negatives]: distinct uniform item ids per row, none of them in that row's `seen`."""
  out = np.zeros((len(seen), num_negatives), np.int32)
  for row, items in enumerate(seen):
    excluded = set(np.asarray(items).tolist())
    if num_items - len(excluded) < num_negatives:
      raise ValueError(f"row {row}: only {num_items - len(excluded)} unseen items for "
                       f"{num_negatives} negatives")
    chosen: list[int] = []
    taken = set(excluded)
    while len(chosen) < num_negatives:
      for item in rng.integers(0, num_items, size=2 * num_negatives).tolist():
        if item not in taken:
          taken.add(item)
          chosen.append(item)
          if len(chosen) == num_negatives:
            break
    out[row] = chosen
  return out


def leave_one_out(sequences: Sequence[np.ndarray], num_items: int, max_len: int,
                  num_negatives: int = 99, seed: int = 0) -> dict[str, Any]:
  """Leave-one-out split with sampled candidates (target in column 0, then uniform unseen negatives).

  Users with fewer than 3 items are skipped. Returns train sequences (all but the last 2 items) and,
  for "valid" (target = second to last) and "test" (target = last), histories int32[n, max_len]
  (right-aligned, -1 padded) and candidates int32[n, 1 + num_negatives].
  """
  kept = [np.asarray(s, np.int64) for s in sequences if len(s) >= 3]
  rng = np.random.default_rng(seed)
  split: dict[str, Any] = {"train": [s[:-2] for s in kept]}
  for name, cut in (("valid", 2), ("test", 1)):
    histories = right_aligned([s[:-cut] for s in kept], max_len)
    targets = np.array([s[-cut] for s in kept], np.int32)
    negatives = uniform_negatives(kept, num_items, num_negatives, rng)
    split[name] = {"histories": histories, "candidates": np.concatenate([targets[:, None], negatives], 1)}
  return split


def evaluate_sasrec_leave_one_out(sequences: Sequence[np.ndarray], num_items: int,
                                  cfg: ml_collections.ConfigDict, seed: int = 0,
                                  num_negatives: int = 99, progress: bool = True) -> dict[str, Any]:
  """Trains on the leave-one-out training split (validation picks the epoch) and reports test metrics.

  Returns {"test": {HR@1, HR@5, NDCG@5, HR@10, NDCG@10}, "valid": {...}, "train_seconds": float,
  "num_users": int, "model": SASRecParams}.
  """
  split = leave_one_out(sequences, num_items, int(cfg.max_len), num_negatives, seed)
  validation = (split["valid"]["histories"], split["valid"]["candidates"])
  start = time.perf_counter()
  model = train_sasrec(split["train"], num_items, cfg, seed, validation=validation, progress=progress)
  train_seconds = time.perf_counter() - start
  result: dict[str, Any] = {"train_seconds": train_seconds, "num_users": len(split["train"]), "model": model}
  for name in ("valid", "test"):
    scores = score_candidates(model, split[name]["histories"], split[name]["candidates"],
                              int(cfg.eval_batch_size))
    result[name] = ranking_metrics(ranks_from_scores(scores, target_column=0))
  logger.info("sasrec leave-one-out: %d users, test HR@10 %.4f NDCG@10 %.4f, trained in %.0fs",
              result["num_users"], result["test"]["HR@10"], result["test"]["NDCG@10"], train_seconds)
  return result
