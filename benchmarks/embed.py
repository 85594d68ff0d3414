"""Embedding benchmarks on Amazon Office 2014 (2,420 items, 4,905 users), with same-run baselines.

  python benchmarks/embed.py text    # Flax MiniLM vs sentence-transformers (torch CPU): time + parity
  python benchmarks/embed.py sasrec  # SASRec leave-one-out (99 uniform negatives) vs popularity
  python benchmarks/embed.py all --set epochs=40 --set learning_rate=0.002

Prints one JSON line per part.
"""
from __future__ import annotations

import argparse
import gzip
import html
import json
import logging
import time
from pathlib import Path

import numpy as np

from gensar_jax.config import apply_overrides
from gensar_jax.embed import sasrec, text_encoder, tfidf
from gensar_jax.eval.metrics import ranking_metrics, ranks_from_scores

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_office_2014"


def office_texts(data_dir: Path) -> list[str]:
  items = json.load(gzip.open(data_dir / "Office.item.json.gz"))
  return [html.unescape(f"{items[str(i)]['title']} {items[str(i)]['description']}".strip())
          for i in range(len(items))]


def office_sequences(data_dir: Path) -> list[np.ndarray]:
  users = json.load(gzip.open(data_dir / "Office.inter.json.gz"))
  return [np.asarray(users[str(u)], np.int64) for u in range(len(users))]


def bench_text(data_dir: Path, batch_size: int) -> dict:
  texts = office_texts(data_dir)
  encoder = text_encoder.load_sentence_encoder()
  start = time.perf_counter()
  ours = encoder.encode(texts, batch_size=batch_size)
  ours_seconds = time.perf_counter() - start
  start = time.perf_counter()
  again = encoder.encode(texts, batch_size=batch_size, progress=False)
  ours_warm_seconds = time.perf_counter() - start

  import sentence_transformers
  model = sentence_transformers.SentenceTransformer(str(text_encoder.default_model_dir()), device="cpu")
  start = time.perf_counter()
  reference = model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
  torch_seconds = time.perf_counter() - start

  start = time.perf_counter()
  tfidf.tfidf_svd_embeddings(texts, 384, seed=0)
  tfidf_seconds = time.perf_counter() - start
  cosine = (ours * reference).sum(1)
  return {"part": "text", "items": len(texts), "dim": int(ours.shape[1]),
          "flax_seconds_with_compile": round(ours_seconds, 1), "flax_seconds_warm": round(ours_warm_seconds, 1),
          "sentence_transformers_torch_seconds": round(torch_seconds, 1),
          "speed_ratio_torch_over_flax_warm": round(torch_seconds / ours_warm_seconds, 2),
          "min_cosine_vs_sentence_transformers": float(cosine.min()),
          "warm_rerun_identical": bool(np.array_equal(ours, again)),
          "tfidf_svd_384_seconds": round(tfidf_seconds, 1)}


def popularity_metrics(split: dict, num_items: int) -> dict:
  counts = np.bincount(np.concatenate(split["train"]), minlength=num_items).astype(np.float64)
  rng = np.random.default_rng(0)  # random tie-break so ties are not counted as misses
  candidates = split["test"]["candidates"]
  scores = counts[candidates] + rng.uniform(0, 1e-3, candidates.shape)
  return ranking_metrics(ranks_from_scores(scores, target_column=0))


def bench_sasrec(data_dir: Path, overrides: list[str], seed: int) -> dict:
  cfg = apply_overrides(sasrec.sasrec_config(), overrides)
  sequences = office_sequences(data_dir)
  num_items = int(max(s.max() for s in sequences)) + 1
  result = sasrec.evaluate_sasrec_leave_one_out(sequences, num_items, cfg, seed=seed)
  split = sasrec.leave_one_out(sequences, num_items, int(cfg.max_len), 99, seed)
  baseline = popularity_metrics(split, num_items)
  rounded = lambda m: {k: round(v, 4) for k, v in m.items()}
  return {"part": "sasrec", "users": result["num_users"], "items": num_items, "config": cfg.to_dict(),
          "train_seconds": round(result["train_seconds"], 1), "valid": rounded(result["valid"]),
          "test": rounded(result["test"]), "popularity_test": rounded(baseline),
          "hr10_ratio_over_popularity": round(result["test"]["HR@10"] / baseline["HR@10"], 2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("part", choices=["text", "sasrec", "all"])
  parser.add_argument("--data_dir", type=Path, default=DATA_DIR)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--set", action="append", default=[], help="sasrec config override, e.g. epochs=40")
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  if args.part in ("text", "all"):
    print(json.dumps(bench_text(args.data_dir, args.batch_size)), flush=True)
  if args.part in ("sasrec", "all"):
    print(json.dumps(bench_sasrec(args.data_dir, args.set, args.seed)), flush=True)


if __name__ == "__main__":
  main()
