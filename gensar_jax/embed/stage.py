"""The `embed` stage: semantic item embeddings from the text encoder and collaborative ones from
SASRec trained on the recommendation training events. SASRec is also evaluated on the sampled
protocol (target + the prepared negatives), since it is a baseline of the final tables.

Multi-host: every process encodes its share of the catalogue's batches (`parallel.process_batches`), the
shares are gathered, and process 0 trains and evaluates SASRec alone while the others wait: SASRec is a
small model whose steps are latency-bound on one chip, where a cross-host all-reduce per step would cost more
than the step.

Outputs in the stage's output directory: embeddings.npz (semantic f32[N, d_s], collab f32[N, d_c]),
sasrec.npz, stats.json (with "semantic_encoder": the encoder directory and pooling, or the TF-IDF + SVD
fallback and why), config.json. A fallback is also printed as a warning when the stage ends.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np

from gensar_jax.config_schema import Section
from gensar_jax.data.prepare import Prepared, load_prepared
from gensar_jax.data.splits import TEST, TRAIN, VALID
from gensar_jax.embed import sasrec
from gensar_jax.embed.text_encoder import TEXT_ENCODER_SCHEMA, semantic_embeddings
from gensar_jax.eval.metrics import ranking_metrics, ranks_from_scores
from gensar_jax import parallel
from gensar_jax.io_utils import as_path, load_arrays, save_arrays, write_json

log = logging.getLogger(__name__)


# The `embed` section, read by the `embed` stage: text encoder and SASRec (collaborative embeddings).
EMBED_SCHEMA = Section(dict(text=TEXT_ENCODER_SCHEMA, sasrec=sasrec.SASREC_SCHEMA))


def rec_training_sequences(prepared: Prepared) -> list[np.ndarray]:
  """Per user, the purchased items in time order without the purchases evaluated by either task."""
  data, rec, search = prepared.dataset, prepared.samples["rec"], prepared.samples["search"]
  held_out = np.zeros(len(data.rec_user), bool)
  held_out[rec.event[rec.split != TRAIN]] = True
  held_out[data.search_purchase[search.event[search.split != TRAIN]]] = True
  keep = ~held_out
  users, items = data.rec_user[keep], data.rec_item[keep]
  bounds = np.searchsorted(users, np.arange(data.num_users + 1))
  return [items[bounds[u]:bounds[u + 1]] for u in range(data.num_users)]


def rec_eval_inputs(prepared: Prepared, split: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """SASRec inputs for rec samples of a split: (histories int32[n, max_len] right-aligned with every
  earlier purchase of the user, candidates int32[n, 1 + K]: target then the prepared negatives)."""
  data, rec = prepared.dataset, prepared.samples["rec"]
  rows = rec.split_rows(split)
  starts = np.searchsorted(data.rec_user, rec.user[rows])
  histories = sasrec.right_aligned([data.rec_item[s:e] for s, e in zip(starts, rec.event[rows])], max_len)
  name = {VALID: "rec_validation", TEST: "rec_test"}[split]
  candidates = np.concatenate([rec.item[rows][:, None], prepared.negatives[name]], axis=1)
  return histories, candidates.astype(np.int32)


def train_rec_sasrec(prepared: Prepared, cfg: ml_collections.ConfigDict, seed: int) -> sasrec.SASRecParams:
  """SASRec (`embed.sasrec` section `cfg`) on the recommendation training sequences, the epoch chosen by
  validation NDCG@10 on the rec validation samples (target + prepared negatives)."""
  validation = rec_eval_inputs(prepared, VALID, int(cfg.max_len))
  return sasrec.train_sasrec(rec_training_sequences(prepared), prepared.dataset.num_items, cfg, seed=seed,
                             validation=validation)


def run_embed(config: ml_collections.ConfigDict, workdir: Path, out_dir: Path) -> dict:
  from gensar_jax.stages import output_dir
  prepared = load_prepared(output_dir(workdir, "prepare"))
  data = prepared.dataset
  t0 = time.time()
  texts = [data.catalog.text(i) for i in range(data.num_items)]
  semantic, encoder_info = semantic_embeddings(texts, config.embed.text, seed=int(config.seed))
  t_text = time.time() - t0
  log.info("embed: %d item texts -> %d-d semantic embeddings in %.1fs", len(texts), semantic.shape[1], t_text)

  stats = {"num_items": data.num_items, "semantic_dim": int(semantic.shape[1]), "semantic_encoder": encoder_info,
           "text_seconds": round(t_text, 1)}
  return parallel.on_primary(f"embed/{out_dir.name}/sasrec", lambda: _collaborative(config, prepared, semantic,
                                                                                      stats, out_dir))


def _collaborative(config: ml_collections.ConfigDict, prepared: Prepared, semantic: np.ndarray, stats: dict,
                   out_dir: Path) -> dict:
  """Trains and evaluates SASRec, writes the stage's files; returns the stats."""
  cfg = config.embed.sasrec
  encoder_info = stats["semantic_encoder"]
  model = train_rec_sasrec(prepared, cfg, int(config.seed))
  collab = sasrec.item_embeddings(model)
  metrics = {}
  for split, name in ((VALID, "validation"), (TEST, "test")):
    histories, candidates = rec_eval_inputs(prepared, split, int(cfg.max_len))
    scores = sasrec.score_candidates(model, histories, candidates, int(cfg.eval_batch_size))
    metrics[name] = ranking_metrics(ranks_from_scores(scores, target_column=0))
  log.info("embed: SASRec %d-d collaborative embeddings; test HR@10 %.4f NDCG@10 %.4f (sampled protocol)",
           collab.shape[1], metrics["test"]["HR@10"], metrics["test"]["NDCG@10"])
  stats = {**stats, "collab_dim": int(collab.shape[1]), "sasrec": metrics}
  save_arrays(out_dir / "embeddings.npz", semantic=semantic.astype(np.float32), collab=collab.astype(np.float32))
  sasrec.save_sasrec(out_dir / "sasrec.npz", model)
  write_json(out_dir / "config.json", config.to_dict())
  write_json(out_dir / "stats.json", stats)
  warning = fallback_warning(encoder_info)
  if warning:
    log.warning(warning)
    print(f"WARNING: {warning}", file=sys.stderr, flush=True)
  return stats


def fallback_warning(encoder_info: dict) -> str | None:
  """The end-of-stage warning when the semantic embeddings are the TF-IDF + SVD fallback, else None."""
  if not encoder_info.get("fallback"):
    return None
  return (f"embed: the semantic embeddings are TF-IDF + SVD ({encoder_info['dim']}-d), not a sentence encoder "
          f"({encoder_info['fallback']}); identifiers and results are not comparable with the reference's "
          "bge-base-en-v1.5. Set embed.text.model_dir, or embed.text.fallback=error to make this an error.")


def load_embeddings(embed_dir: Path) -> dict[str, np.ndarray]:
  return load_arrays(as_path(embed_dir) / "embeddings.npz")
