"""Embedding benchmarks on Amazon Office 2014 (2,420 items, 4,905 users), with same-run baselines.

  python -m benchmarks.embed text    # Flax MiniLM vs sentence-transformers (torch CPU): time + parity
  python -m benchmarks.embed sasrec  # SASRec leave-one-out (99 uniform negatives) vs popularity
  python -m benchmarks.embed all --set epochs=40 --set learning_rate=0.002

`text` runs on `benchmarks/harness.py` (pinned workers, same threads on every side, interleaved calls)
and writes results/benchmarks/embed_text.json; `sasrec` is a quality benchmark (no timing
comparison) and prints one JSON line.
"""
from __future__ import annotations

import argparse
import gzip
import html
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
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


def _texts(spec: dict) -> list[str]:
  """The Office item texts, the first `spec['items']` of them when given."""
  texts = office_texts(Path(spec["data_dir"]))
  return texts[:spec["items"]] if spec.get("items") else texts


def make_flax(spec: dict) -> harness.Workload:
  """Our Flax MiniLM encoder; one call = encoding every text. The setup's first encode (compiles
  every length bucket) is saved for the parity check."""
  texts = _texts(spec)
  encoder = text_encoder.load_sentence_encoder()
  start = time.perf_counter()
  first = encoder.encode(texts, batch_size=spec["batch_size"], progress=False)
  np.save(Path(spec["outputs_dir"]) / "flax.npy", first)
  info = {"items_per_call": len(texts), "first_call_seconds_with_compile": time.perf_counter() - start}
  return harness.Workload(harness.discard(lambda: encoder.encode(texts, batch_size=spec["batch_size"], progress=False)),
                          info)


def make_sentence_transformers(spec: dict) -> harness.Workload:
  """The reference: sentence-transformers (torch CPU) on the same model directory."""
  import sentence_transformers
  texts = _texts(spec)
  model = sentence_transformers.SentenceTransformer(str(text_encoder.default_model_dir()), device="cpu")
  encode = lambda: model.encode(texts, batch_size=spec["batch_size"], normalize_embeddings=True)
  np.save(Path(spec["outputs_dir"]) / "reference.npy", encode())
  return harness.Workload(harness.discard(encode), {"items_per_call": len(texts)})


def make_tfidf(spec: dict) -> harness.Workload:
  """TF-IDF + SVD to 384 dimensions (the text-free fallback), same texts."""
  texts = _texts(spec)
  return harness.Workload(harness.discard(lambda: tfidf.tfidf_svd_embeddings(texts, 384, seed=0)),
                          {"items_per_call": len(texts)})


def text_parity(outputs_dir: Path) -> dict:
  """Minimum cosine between our embeddings and sentence-transformers' (setup calls of both)."""
  ours, reference = np.load(outputs_dir / "flax.npy"), np.load(outputs_dir / "reference.npy")
  return {"min_cosine_vs_sentence_transformers": float((ours * reference).sum(1).min())}


def bench_text(args: argparse.Namespace) -> dict:
  """Flax vs sentence-transformers vs TF-IDF on the harness; writes results/benchmarks/embed_text.json."""
  with tempfile.TemporaryDirectory() as outputs_dir:
    spec = {"data_dir": str(args.data_dir), "batch_size": args.batch_size, "items": args.items,
            "outputs_dir": outputs_dir}
    sides = {"ours": ("benchmarks.embed:make_flax", spec),
             "reference": ("benchmarks.embed:make_sentence_transformers", spec),
             "tfidf_svd": ("benchmarks.embed:make_tfidf", spec)}
    return harness.compare("embed_text", sides, ratios={"ours_speedup_vs_sentence_transformers": ("reference", "ours")},
                           settings={k: v for k, v in spec.items() if k != "outputs_dir"},
                           derive=lambda run: text_parity(Path(outputs_dir)), **harness.harness_options(args))


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
  parser.add_argument("--items", type=int, default=None, help="text: encode only the first N items")
  harness.common_arguments(parser)
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  if args.part in ("text", "all"):
    bench_text(args)
  if args.part in ("sasrec", "all"):
    print(json.dumps(bench_sasrec(args.data_dir, args.set, args.seed)), flush=True)


if __name__ == "__main__":
  main()
