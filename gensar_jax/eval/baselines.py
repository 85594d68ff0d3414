"""Classic baselines of the paper's tables, scored on both evaluation protocols.

Methods and the tasks they apply to:
- popularity (rec, search): purchase counts over training events only. A purchase is held out when it
  is a recommendation validation/test event or the click of a search validation/test session, so no
  evaluated interaction counts towards its own target's popularity.
- bm25 (search): Lucene BM25 of the query over item text (`title + " " + description`), `BM25Index` with
  the `data.bm25_*` settings (Pyserini's by default: k1 0.9, b 0.4, English analyzer).
- dense (search): cosine between the query embedding, from the same sentence encoder as the stored
  semantic item embeddings (`embed.text`), and those embeddings. Without an encoder (the TF-IDF + SVD
  fallback of the embed stage) queries are folded into the items' SVD space.
- sasrec (rec): the embed stage's trained SASRec; history = every earlier purchase of the user.
- sasrec_bce (rec): a SASRec trained here as the embed stage trains its own (same `embed.sasrec` settings,
  training sequences, validation-chosen epoch and seed) but with SASRec's binary cross-entropy over the
  positive and `embed.sasrec.bce_negatives` sampled unseen negatives (`loss=bce`), the training of the
  recommenders in the authors' line of work (UniSAR); scored as sasrec.

Protocols: "sampled" ranks the target among its candidate list (target in column 0, then the prepared
negatives of the split) with `ranks_from_scores`; "full" ranks it among all N catalogue items. Both
are pessimistic on ties (a candidate scoring equal to the target ranks above it). Items of the user's
history are not removed from the full catalogue.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.sparse
from tqdm.auto import tqdm

from gensar_jax.config_schema import Field, Section, at_least, subset_of
from gensar_jax.data.negatives import BM25Index
from gensar_jax.data.prepare import Prepared, load_prepared
from gensar_jax.stages import output_dir
from gensar_jax.data.splits import SPLIT_NAMES, TRAIN
from gensar_jax.embed import sasrec, tfidf
from gensar_jax.embed.stage import load_embeddings, rec_eval_inputs, train_rec_sasrec
from gensar_jax.embed.text_encoder import load_sentence_encoder
from gensar_jax.eval.metrics import PROTOCOLS, ranking_metrics, ranks_from_scores
from gensar_jax.io_utils import DataError

log = logging.getLogger(__name__)

METHOD_TASKS = {"popularity": ("rec", "search"), "bm25": ("search",), "dense": ("search",), "sasrec": ("rec",),
                "sasrec_bce": ("rec",)}


# The `baselines` section (`gensar reproduce`; read by no stage).
BASELINES_SCHEMA = Section(dict(
    methods=Field(tuple(METHOD_TASKS), subset_of(*METHOD_TASKS)),   # popularity, bm25, dense, sasrec, sasrec_bce
    batch_size=Field(256, at_least(1)),   # queries or histories per full-catalogue scoring batch
))


def baselines_config() -> ml_collections.ConfigDict:
  """Defaults of the `baselines` section."""
  return BASELINES_SCHEMA.defaults()


# ---------------------------------------------------------------- ranking on both protocols


def catalogue_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """0-based rank of each target among all items, pessimistic on ties.

  Args:
    scores: float[n, num_items], higher is better; targets: int[n] item ids.
  Returns:
    int64[n]: number of items scoring >= the target, minus one.
  """
  scores = np.asarray(scores)
  target_scores = np.take_along_axis(scores, np.asarray(targets)[:, None], axis=1)
  return (scores >= target_scores).sum(axis=1).astype(np.int64) - 1


def catalogue_ranks_by_row(row_scores: np.ndarray, row_index: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """`catalogue_ranks` for rows that share score vectors (one per query, or one for popularity).

  Each distinct score row is sorted once; a target's rank is then a binary search.

  Args:
    row_scores: float[num_rows, num_items]; row_index: int[n] score row of each evaluated sample;
    targets: int[n] item ids.
  Returns:
    int64[n], pessimistic on ties.
  """
  row_scores = np.asarray(row_scores)
  row_index, targets = np.asarray(row_index), np.asarray(targets)
  num_items = row_scores.shape[1]
  target_scores = row_scores[row_index, targets]
  ranks = np.empty(len(targets), np.int64)
  order = np.argsort(row_index, kind="stable")
  distinct, starts = np.unique(row_index[order], return_index=True)
  for row, lo, hi in zip(distinct, starts, np.append(starts[1:], len(order))):
    members = order[lo:hi]
    sorted_row = np.sort(row_scores[row])
    below = np.searchsorted(sorted_row, target_scores[members], side="left")
    ranks[members] = num_items - below - 1
  return ranks


def row_protocol_metrics(row_scores: np.ndarray, row_index: np.ndarray,
                         candidates: np.ndarray) -> dict[str, dict[str, float]]:
  """Both protocols for a method whose scores depend on the row only (a query, or nothing).

  Args:
    row_scores: float[num_rows, num_items]; row_index: int[n];
    candidates: int[n, 1 + K], the target in column 0.
  Returns:
    {"sampled": metrics, "full": metrics}.
  """
  row_index = np.asarray(row_index)
  sampled = np.asarray(row_scores)[row_index[:, None], candidates]
  return {"sampled": ranking_metrics(ranks_from_scores(sampled, target_column=0)),
          "full": ranking_metrics(catalogue_ranks_by_row(row_scores, row_index, candidates[:, 0]))}


# ---------------------------------------------------------------- popularity


def training_purchase_items(dataset, samples) -> np.ndarray:
  """Items of the purchases that no evaluated sample can see: int32[m].

  Drops the recommendation validation/test events and the purchases that are the clicks of search
  validation/test sessions (`dataset.search_purchase`).

  Args:
    dataset: SARDataset (reads rec_item, search_purchase); samples: {"rec", "search"} -> TaskSamples.
  """
  held_out = np.zeros(len(dataset.rec_item), bool)
  rec, search = samples["rec"], samples["search"]
  held_out[rec.event[rec.split != TRAIN]] = True
  held_out[dataset.search_purchase[search.event[search.split != TRAIN]]] = True
  return np.asarray(dataset.rec_item)[~held_out]


def popularity_scores(items: np.ndarray, num_items: int) -> np.ndarray:
  """Purchase count per item: float32[num_items] from item ids int[m] in [0, num_items)."""
  items = np.asarray(items)
  if items.size and (items.min() < 0 or items.max() >= num_items):
    raise ValueError(f"popularity_scores: item ids must be in [0, {num_items}), got range "
                     f"[{items.min()}, {items.max()}]")
  return np.bincount(items, minlength=num_items).astype(np.float32)


# ---------------------------------------------------------------- BM25


def bm25_catalogue_scores(index: BM25Index, queries: Sequence[str], batch_size: int = 256,
                          progress: bool = False) -> np.ndarray:
  """BM25 score of every item for each query: float32[len(queries), num_items] (0 = no shared term)."""
  out = np.zeros((len(queries), index.num_items), np.float32)
  for lo in tqdm(range(0, len(queries), batch_size), desc="bm25", unit="batch", disable=not progress):
    docs, scores = index.top_items(list(queries[lo:lo + batch_size]), index.num_items)
    rows, cols = np.nonzero(docs >= 0)
    out[lo + rows, docs[rows, cols]] = scores[rows, cols]
  return out


# ---------------------------------------------------------------- dense retrieval


def cosine_scores(query_embeddings: np.ndarray, item_embeddings: np.ndarray) -> np.ndarray:
  """Cosine similarity float32[num_queries, num_items] (zero vectors score 0)."""
  def normalize(x):
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
  return normalize(query_embeddings) @ normalize(item_embeddings).T


def tfidf_query_embeddings(queries: Sequence[str], item_texts: Sequence[str], dim: int,
                           seed: int = 0) -> np.ndarray:
  """Queries folded into the TF-IDF + SVD space of `tfidf.tfidf_svd_embeddings(item_texts, dim, seed)`.

  With the items' tf-idf matrix M = U S V^T (truncated), item vectors are rows of U S = M V; a query
  becomes q V with q its tf-idf row under the items' vocabulary and idf. Returns float32[n, dim]
  with L2-normalized rows (zero rows for queries without a catalogue term); an item's own text
  folds onto its item embedding.
  """
  matrix, vocab = tfidf.tfidf_matrix(item_texts)
  num_docs = matrix.shape[0]
  term_index = {term: i for i, term in enumerate(vocab)}
  doc_freq = np.asarray((matrix > 0).sum(axis=0), np.float64).ravel()
  idf = np.log((1.0 + num_docs) / (1.0 + doc_freq)) + 1.0
  rows, cols, counts = [], [], []
  for row, query in enumerate(queries):
    terms, tf = np.unique([term_index[t] for t in tfidf.tokenize(query) if t in term_index], return_counts=True)
    rows.extend([row] * len(terms))
    cols.extend(terms.tolist())
    counts.extend(tf.tolist())
  query_matrix = scipy.sparse.csr_matrix((np.asarray(counts, np.float64), (rows, cols)),
                                         shape=(len(queries), len(vocab)))
  query_matrix = query_matrix @ scipy.sparse.diags(idf)
  out = np.zeros((len(queries), dim), np.float64)
  rank_dim = min(dim, num_docs, len(vocab))
  if rank_dim > 0:
    u, s = tfidf.truncated_svd(matrix, rank_dim, seed=seed)
    right = (matrix.T @ u) / np.where(s > 0, s, 1.0)  # V = M^T U S^-1: float64[num_terms, rank_dim]
    out[:, :rank_dim] = query_matrix @ right
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def encode_queries(queries: Sequence[str], item_texts: Sequence[str], text_cfg: ml_collections.ConfigDict,
                   seed: int) -> np.ndarray:
  """Query embeddings float32[n, d] in the space of the embed stage's semantic item embeddings.

  Uses the `embed.text` encoder; where the embed stage fell back to TF-IDF + SVD (no encoder
  installed), folds the queries into that space instead.
  """
  try:
    encoder = load_sentence_encoder(text_cfg.model_dir or None, text_cfg.max_seq_length,
                                    text_cfg.min_bucket_length, text_cfg.dtype, pooling=text_cfg.get("pooling") or None)
  except FileNotFoundError:
    if text_cfg.fallback != "tfidf":
      raise
    log.warning("baselines: no sentence encoder; folding queries into the TF-IDF + SVD item space")
    return tfidf_query_embeddings(queries, item_texts, int(text_cfg.fallback_dim), seed)
  return encoder.encode(list(queries), batch_size=int(text_cfg.batch_size))


# ---------------------------------------------------------------- SASRec over the whole catalogue


@functools.lru_cache(maxsize=4)
def _sasrec_catalogue_fns(arch_items: tuple) -> tuple[Callable, Callable]:
  """Jitted (scores, ranks) over all items for one SASRec architecture."""
  module = sasrec.SASRecModule(dropout=0.0, **dict(arch_items))

  def all_scores(params, tokens):
    states = module.apply({"params": params}, tokens)[:, -1]  # state after the most recent item
    return states @ params["item_embedding"]["embedding"][1:].T  # [b, num_items]

  def ranks(params, tokens, targets):
    scores = all_scores(params, tokens)
    target_scores = jnp.take_along_axis(scores, targets[:, None], axis=1)
    return jnp.sum(scores >= target_scores, axis=1) - 1

  return jax.jit(all_scores), jax.jit(ranks)


def _sasrec_tokens(model: sasrec.SASRecParams, histories: np.ndarray) -> np.ndarray:
  """Right-aligned item-id histories (-1 padding) -> model tokens int32[n, max_len] (item i = i + 1)."""
  histories = np.asarray(histories)
  if histories.ndim != 2:
    raise ValueError(f"histories must be int[n, h], got shape {histories.shape}")
  if histories.size and (histories.min() < sasrec.PAD or histories.max() >= model.num_items):
    raise ValueError(f"histories must hold item ids in [0, {model.num_items}) or {sasrec.PAD} padding")
  n, length = histories.shape
  keep = min(length, model.max_len)
  tokens = np.zeros((n, model.max_len), np.int32)
  tokens[:, model.max_len - keep:] = histories[:, length - keep:] + 1
  return tokens


def _sasrec_batches(model, histories, batch_size, extra=None, progress=False):
  """Yields (row slice, padded tokens int32[batch_size, max_len], padded extra) per batch."""
  tokens = _sasrec_tokens(model, histories)
  n = tokens.shape[0]
  for lo in tqdm(range(0, n, batch_size), desc="sasrec catalogue", unit="batch", disable=not progress):
    rows = slice(lo, min(lo + batch_size, n))
    pad = batch_size - (rows.stop - rows.start)
    padded_extra = None if extra is None else np.pad(extra[rows], (0, pad))
    yield rows, np.pad(tokens[rows], ((0, pad), (0, 0))), padded_extra


def sasrec_catalogue_scores(model: sasrec.SASRecParams, histories: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """SASRec scores of every item after each history: float32[n, num_items].

  Args:
    histories: int[n, h] item ids right-aligned (most recent last), -1 padding on the left.
  """
  all_scores, _ = _sasrec_catalogue_fns(tuple(sorted(model.architecture().items())))
  out = np.zeros((len(histories), model.num_items), np.float32)
  for rows, tokens, _ in _sasrec_batches(model, histories, batch_size):
    out[rows] = np.asarray(all_scores(model.params, tokens))[:rows.stop - rows.start]
  return out


def sasrec_catalogue_ranks(model: sasrec.SASRecParams, histories: np.ndarray, targets: np.ndarray,
                           batch_size: int = 256, progress: bool = False) -> np.ndarray:
  """0-based rank (pessimistic on ties) of each target among all items: int64[n]; the [n, N] scores
  stay on the device."""
  targets = np.asarray(targets, np.int32)
  if targets.shape != (len(histories),):
    raise ValueError(f"targets must be int[{len(histories)}], got shape {targets.shape}")
  if targets.size and (targets.min() < 0 or targets.max() >= model.num_items):
    raise ValueError(f"targets must be item ids in [0, {model.num_items})")
  _, ranks_fn = _sasrec_catalogue_fns(tuple(sorted(model.architecture().items())))
  out = np.zeros(len(targets), np.int64)
  for rows, tokens, batch_targets in _sasrec_batches(model, histories, batch_size, targets, progress):
    out[rows] = np.asarray(ranks_fn(model.params, tokens, batch_targets))[:rows.stop - rows.start]
  return out


# ---------------------------------------------------------------- evaluation on a workdir


def split_inputs(prepared: Prepared, task: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(candidates int32[n, 1 + K] with the target in column 0, query ids int32[n]; -1 for rec) of a split."""
  samples = prepared.samples[task]
  rows = samples.split_rows(SPLIT_NAMES.index(split))
  key = f"{task}_{split}"
  if key not in prepared.negatives:
    raise DataError(f"{prepared.directory / 'negatives.npz'}: no entry {key!r}")
  negatives = prepared.negatives[key]
  if negatives.ndim != 2 or negatives.shape[0] != len(rows):
    raise DataError(f"{prepared.directory / 'negatives.npz'}: {key} has shape {negatives.shape}, expected "
                    f"[{len(rows)}, K] (one row per {task} {split} sample)")
  candidates = np.concatenate([samples.item[rows][:, None], negatives], axis=1).astype(np.int32)
  return candidates, samples.query[rows]


def _query_rows(prepared: Prepared, split: str) -> tuple[np.ndarray, list[str], np.ndarray]:
  """Search samples of a split: (candidates, the distinct query texts, score row of each sample)."""
  candidates, query = split_inputs(prepared, "search", split)
  distinct, row_index = np.unique(query, return_inverse=True)
  return candidates, [prepared.dataset.queries[q] for q in distinct], row_index.reshape(-1)


def _popularity(prepared, workdir, config, cfg, split):
  data = prepared.dataset
  scores = popularity_scores(training_purchase_items(data, prepared.samples), data.num_items)[None]
  out = {}
  for task in METHOD_TASKS["popularity"]:
    candidates, _ = split_inputs(prepared, task, split)
    out[task] = row_protocol_metrics(scores, np.zeros(len(candidates), np.int64), candidates)
  return out


def _bm25(prepared, workdir, config, cfg, split):
  data = prepared.dataset
  candidates, query_texts, row_index = _query_rows(prepared, split)
  index = BM25Index.from_config([data.catalog.text(i) for i in range(data.num_items)], config.data)
  scores = bm25_catalogue_scores(index, query_texts, int(cfg.batch_size), progress=True)
  return {"search": row_protocol_metrics(scores, row_index, candidates)}


def _dense(prepared, workdir, config, cfg, split):
  data = prepared.dataset
  path = output_dir(workdir, "embed") / "embeddings.npz"
  semantic = load_embeddings(output_dir(workdir, "embed"))["semantic"]
  if semantic.ndim != 2 or semantic.shape[0] != data.num_items:
    raise DataError(f"{path}: semantic has shape {semantic.shape}, expected [{data.num_items}, d] "
                    f"(one row per catalogue item)")
  candidates, query_texts, row_index = _query_rows(prepared, split)
  item_texts = [data.catalog.text(i) for i in range(data.num_items)]
  query_embeddings = encode_queries(query_texts, item_texts, config.embed.text, int(config.seed))
  if query_embeddings.shape[1] != semantic.shape[1]:
    raise DataError(f"{path}: semantic embeddings are {semantic.shape[1]}-d but the embed.text encoder gives "
                    f"{query_embeddings.shape[1]}-d queries; rerun the embed stage with this config")
  scores = np.concatenate([cosine_scores(query_embeddings[lo:lo + int(cfg.batch_size)], semantic)
                           for lo in range(0, len(query_texts), int(cfg.batch_size))], axis=0)
  return {"search": row_protocol_metrics(scores, row_index, candidates)}


def _sasrec_metrics(prepared, model: sasrec.SASRecParams, cfg, split) -> dict:
  """{"rec": {"sampled", "full"}} of a SASRec: history = every earlier purchase of the user."""
  histories, candidates = rec_eval_inputs(prepared, SPLIT_NAMES.index(split), model.max_len)
  batch_size = int(cfg.batch_size)
  sampled = sasrec.score_candidates(model, histories, candidates, batch_size)
  full = sasrec_catalogue_ranks(model, histories, candidates[:, 0], batch_size, progress=True)
  return {"rec": {"sampled": ranking_metrics(ranks_from_scores(sampled, target_column=0)),
                  "full": ranking_metrics(full)}}


def _sasrec(prepared, workdir, config, cfg, split):
  path = output_dir(workdir, "embed") / "sasrec.npz"
  model = sasrec.load_sasrec(path)
  if model.num_items != prepared.dataset.num_items:
    raise DataError(f"{path}: SASRec has {model.num_items} items, the catalogue {prepared.dataset.num_items}")
  return _sasrec_metrics(prepared, model, cfg, split)


def sasrec_bce_config(sasrec_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `embed.sasrec` section with SASRec's binary cross-entropy (`loss=bce`), everything else as given."""
  cfg = ml_collections.ConfigDict(sasrec_cfg.to_dict())
  cfg.loss = "bce"
  return cfg


def _sasrec_bce(prepared, workdir, config, cfg, split):
  model = train_rec_sasrec(prepared, sasrec_bce_config(config.embed.sasrec), int(config.seed))
  return _sasrec_metrics(prepared, model, cfg, split)


_METHODS = {"popularity": _popularity, "bm25": _bm25, "dense": _dense, "sasrec": _sasrec, "sasrec_bce": _sasrec_bce}


def evaluate_baselines(workdir: str | Path, config: ml_collections.ConfigDict, split: str = "test",
                       methods: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
  """Scores the classic baselines on a workdir with `prepare/` (and `embed/` for dense and sasrec).

  Args:
    workdir: the pipeline's output root.
    config: the run's config; reads `baselines` (defaults: `baselines_config()`), `embed.text`, `seed`.
    split: "validation" or "test".
    methods: subset of popularity, bm25, dense, sasrec, sasrec_bce (default: config.baselines.methods).
  Returns:
    {method: {task ("rec"/"search"): {"sampled": metrics, "full": metrics}}}, metrics as `ranking_metrics`.
  """
  cfg = config.get("baselines")
  cfg = baselines_config() if cfg is None else cfg
  methods = tuple(cfg.methods if methods is None else methods)
  unknown = [m for m in methods if m not in _METHODS]
  if unknown:
    raise ValueError(f"baselines: unknown methods {unknown}; expected some of {list(_METHODS)}")
  if split not in SPLIT_NAMES[1:]:
    raise ValueError(f"baselines: split {split!r}, expected 'validation' or 'test'")
  prepared = load_prepared(output_dir(workdir, "prepare"))
  results = {}
  for method in methods:
    results[method] = _METHODS[method](prepared, workdir, config, cfg, split)
    summary = ", ".join(f"{task} {proto} {m['HR@10']:.4f}" for task, per_task in results[method].items()
                        for proto, m in per_task.items())
    log.info("baselines: %s %s HR@10: %s", method, split, summary)
  return results


def format_table(results: dict, metrics: Sequence[str] = ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10")) -> str:
  """Markdown table, one line per (task, protocol, method)."""
  lines = ["| task | protocol | method | " + " | ".join(metrics) + " |",
           "| --- | --- | --- | " + " | ".join("---:" for _ in metrics) + " |"]
  for task in ("rec", "search"):
    for protocol in PROTOCOLS:
      for method, per_task in results.items():
        if task in per_task:
          values = per_task[task][protocol]
          lines.append(f"| {task} | {protocol} | {method} | " + " | ".join(f"{values[k]:.4f}" for k in metrics) + " |")
  return "\n".join(lines)
