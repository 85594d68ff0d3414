"""Electronics-scale rehearsal on this CPU: a synthetic world with the paper's Electronics counts
(62,882 items, 192,403 users, ~1.3M purchases) through `prepare`, `embed` and `index`, and the grain
pipeline's examples/s per host against what one TPU host must feed at the plan's step time.

  python benchmarks/electronics_rehearsal.py [--workdir /tmp/electronics_rehearsal] [--parts prepare,text,...]

Each part runs in its own process; the parent records its wall time and peak RSS (`os.wait4`). Long
loops are timed on a part and extrapolated, and the JSON says so for each: the text encoder on a
random sample of the item texts, SASRec (40 epochs) on one epoch over a random 2% of the users, the
RQ-VAE (500 epochs) on a few epochs plus one evaluation. Writes results/benchmarks/electronics_rehearsal.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "benchmarks" / "electronics_rehearsal.json"
PARTS = ("prepare", "text", "sasrec", "rqvae", "pipeline")
# Electronics 5-core counts (docs/method.md, Data).
ELECTRONICS = {"items": 62_882, "users": 192_403, "purchases": 1_300_000}
REHEARSAL_MEAN_SEQUENCE_LENGTH = 8.0     # WorldSpec's parameter that yields ~1.30M purchases (see rehearsal_config)


def rehearsal_config():
  """configs/electronics.py (the paper's settings) on a synthetic world of Electronics' size: 1.30M purchases
  of 61,703 items by 192,403 users (5-core: at least 5 each).

  `WorldSpec.mean_sequence_length` is not the mean of the result: lengths are drawn as min + Geometric(1 /
  (mean - min)) - 1, which averages mean - 1, and immediate repeats are dropped afterwards. 8.0 gives
  1,301,234 purchases for these counts (1.30M / 192,403 = 6.76 gave 1.06M)."""
  from gensar_jax.config import load_config
  config = load_config("electronics")
  config.name = "electronics_rehearsal"
  config.data.source = "synthetic"
  config.data.raw_dir = ""
  config.data.queries = "generated"      # the synthetic world's queries (no Ai et al. files)
  config.model.pretrained_dir = ""       # the prepared SentencePiece model (t5-small's is not on this machine)
  config.data.synthetic.update(dict(num_items=ELECTRONICS["items"], num_users=ELECTRONICS["users"],
                                    mean_sequence_length=REHEARSAL_MEAN_SEQUENCE_LENGTH,
                                    min_sequence_length=5, max_sequence_length=60))
  return config


# ------------------------------------------------------------------------------------------ parts (child)

def part_prepare(workdir: Path) -> dict:
  """The whole `prepare` stage (world, histories, splits, BM25 negatives, SentencePiece, ArrayRecords)."""
  from gensar_jax import stages
  config = rehearsal_config()
  stats = stages.run_stage(stages.STAGES["prepare"], config, workdir)
  keys = ("users", "items", "queries", "rec_interactions", "rec_train", "search_train", "rec_validation",
          "search_validation")
  return {"measured": "whole stage", "stats": {k: stats[k] for k in keys if k in stats}}


def _prepared(workdir: Path):
  from gensar_jax import stages
  from gensar_jax.data.prepare import load_prepared
  return load_prepared(stages.output_dir(workdir, "prepare"))


# Per-token FLOPs of a BERT encoder ~ layers * hidden^2 (feed-forward 4 x hidden): bge-base-en-v1.5 (the
# reference encoder, configs/electronics.py; 12 x 768) over all-MiniLM-L6-v2 (packaged; 6 x 384).
BGE_OVER_MINILM_FLOPS = (12 * 768 ** 2) / (6 * 384 ** 2)


def part_text(workdir: Path, sample: int) -> dict:
  """The packaged MiniLM at the embed stage's batch size and 256-token cap on a random sample of the
  catalogue's texts, extrapolated linearly to every item (compiling the length buckets is included).
  The reference encoder (bge-base-en-v1.5) is not on this machine: its time is estimated from MiniLM's
  by the per-token FLOP ratio (`BGE_OVER_MINILM_FLOPS`)."""
  import numpy as np
  from gensar_jax.embed.text_encoder import load_sentence_encoder
  config = rehearsal_config()
  data = _prepared(workdir).dataset
  rng = np.random.default_rng(0)
  rows = rng.choice(data.num_items, min(sample, data.num_items), replace=False)
  texts = [data.catalog.text(int(i)) for i in rows]
  cfg = config.embed.text
  t0 = time.perf_counter()
  encoder = load_sentence_encoder(None, cfg.max_seq_length, cfg.min_bucket_length, cfg.dtype)
  load_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  encoder.encode(texts, batch_size=int(cfg.batch_size), progress=False)
  sample_s = time.perf_counter() - t0
  per_item = sample_s / len(texts)
  return {"measured": f"{len(texts)} of {data.num_items} item texts (random sample), extrapolated linearly",
          "sample_items": len(texts), "sample_seconds": round(sample_s, 1), "load_seconds": round(load_s, 1),
          "mean_words_per_text": round(float(np.mean([len(t.split()) for t in texts])), 1),
          "encoder": "all-MiniLM-L6-v2 (packaged); the reference's bge-base-en-v1.5 is not on this machine",
          "extrapolated_seconds": round(load_s + per_item * data.num_items, 1),
          "bge_base_estimate_seconds": round(per_item * data.num_items * BGE_OVER_MINILM_FLOPS, 1),
          "bge_base_estimate": f"MiniLM's per-item time x {BGE_OVER_MINILM_FLOPS:.0f} (per-token FLOPs, 12x768 vs 6x384)"}


def part_sasrec(workdir: Path, fraction: float) -> dict:
  """SASRec at the embed stage's settings (full softmax over the catalogue) on random subsets of the real
  training sequences: one epoch over a small subset (compile), then one epoch over `fraction` of the
  users and validation scoring of as many rows, timed and extrapolated to every user,
  `embed.sasrec.epochs` epochs and their validations."""
  import ml_collections
  import numpy as np
  from gensar_jax.data.splits import VALID
  from gensar_jax.embed import sasrec
  from gensar_jax.embed.stage import rec_eval_inputs, rec_training_sequences
  config = rehearsal_config()
  prepared = _prepared(workdir)
  num_items = prepared.dataset.num_items
  cfg = ml_collections.ConfigDict(config.embed.sasrec.to_dict())
  sequences = rec_training_sequences(prepared)
  full_epochs, eval_every = int(cfg.epochs), int(cfg.eval_every)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(sequences))
  timed_users = max(int(len(sequences) * fraction), int(cfg.batch_size))
  warm = [sequences[i] for i in order[:int(cfg.batch_size) * 4]]
  timed = [sequences[i] for i in order[-timed_users:]]
  cfg.epochs, cfg.eval_every = 1, 0
  t0 = time.perf_counter()
  sasrec.train_sasrec(warm, num_items, cfg, seed=0, progress=False)          # compiles the length buckets
  warm_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  model = sasrec.train_sasrec(timed, num_items, cfg, seed=0, progress=False)
  timed_s = time.perf_counter() - t0
  per_epoch = timed_s * len(sequences) / timed_users
  histories, candidates = rec_eval_inputs(prepared, VALID, int(cfg.max_len))
  rows = min(len(histories), timed_users)
  t0 = time.perf_counter()
  sasrec.score_candidates(model, histories[:rows], candidates[:rows], int(cfg.eval_batch_size))
  eval_s = (time.perf_counter() - t0) * len(histories) / rows
  validations = math.ceil(full_epochs / eval_every) if eval_every > 0 else 0
  return {"measured": f"one epoch over {timed_users:,} of {len(sequences):,} users (random) after a compile run, and "
                      f"validation scoring of {rows:,} of {len(histories):,} rows; extrapolated to every user, "
                      f"{full_epochs} epochs and {validations} validations",
          "users": len(sequences), "items": num_items, "timed_users": timed_users,
          "timed_epoch_seconds": round(timed_s, 1), "compile_run_seconds": round(warm_s, 1),
          "seconds_per_full_epoch": round(per_epoch, 1), "validation_seconds": round(eval_s, 1),
          "full_softmax_logits_per_batch_gib": round(int(cfg.batch_size) * int(cfg.max_len) * num_items * 4 / 2 ** 30,
                                                     2),
          "extrapolated_seconds": round(per_epoch * full_epochs + eval_s * validations, 1)}


def _embedding_table(num_items: int, seed: int = 0) -> dict:
  """Clustered unit-norm 384-d 'text' and 64-d 'collaborative' vectors of the embed stage's widths."""
  import numpy as np
  rng = np.random.default_rng(seed)
  topics = rng.normal(size=(64, 384))
  semantic = topics[rng.integers(0, 64, num_items)] + 0.5 * rng.normal(size=(num_items, 384))
  semantic /= np.linalg.norm(semantic, axis=1, keepdims=True)
  return {"semantic": semantic.astype(np.float32), "collab": (0.3 * rng.normal(size=(num_items, 64))).astype(np.float32)}


def part_rqvae(epochs: int) -> dict:
  """The RQ-VAE at the index stage's settings on 62,882 items (clustered vectors): one compile epoch, then
  `epochs` epochs and one evaluation (encode + collision rate) timed, extrapolated to `identifiers.epochs`
  with an evaluation every `identifiers.eval_every_epochs`."""
  import jax
  import numpy as np
  from benchmarks.rqvae import epoch_setup
  from gensar_jax.identifiers import rqvae, rqvae_train
  config = rehearsal_config().identifiers
  num_items = ELECTRONICS["items"]
  spec = rqvae.spec_from_config(config, 384, 64)
  train_epoch, params, opt_state, inputs = epoch_setup(config, _embedding_table(num_items))
  t0 = time.perf_counter()
  params, opt_state, losses = train_epoch(params, opt_state, inputs, jax.random.PRNGKey(2))
  jax.block_until_ready(losses)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for epoch in range(epochs):
    params, opt_state, losses = train_epoch(params, opt_state, inputs, jax.random.PRNGKey(3 + epoch))
  jax.block_until_ready(losses)
  per_epoch = (time.perf_counter() - t0) / epochs
  encoder = rqvae_train.make_encoder(spec)
  rqvae_train.encode_items(params, spec, inputs, encoder=encoder)       # compile
  t0 = time.perf_counter()
  codes, _ = rqvae_train.encode_items(params, spec, inputs, encoder=encoder)
  rqvae_train.mean_collision_rate({k: np.asarray(v) for k, v in codes.items()})
  eval_s = time.perf_counter() - t0
  full, every = int(config.epochs), int(config.eval_every_epochs)
  return {"measured": f"{epochs} epochs (after one compile epoch) and one evaluation timed; extrapolated to {full} "
                      f"epochs with an evaluation every {every}",
          "items": num_items, "batch_size": int(config.batch_size), "compile_epoch_seconds": round(compile_s, 1),
          "seconds_per_epoch": round(per_epoch, 2), "evaluation_seconds": round(eval_s, 2),
          "extrapolated_seconds": round(compile_s + per_epoch * (full - 1) + eval_s * (full // every), 1)}


def part_pipeline(workdir: Path, batches: int, repeats: int = 3, workers: int = 2) -> dict:
  """grain batches of the task mixture (random identifiers) at one host's share of the global batch of the
  plans in results/plan/, against the rows per second that host must feed.

  Interleaved in one process, `repeats` times each on fresh batches: building a batch synchronously with one
  stored-sample read per example (the pipeline before batched reads) and with the batched reads of
  `PaddedBatches`; examples per wall second and per CPU second of this process. Then the iterator the
  trainer uses with `workers` grain worker processes (after a warm-up of 2 batches per worker)."""
  import numpy as np
  from gensar_jax.data import pipeline
  from gensar_jax.data.task_data import load_task_data
  config = rehearsal_config()
  n = _prepared(workdir).dataset.num_items
  rng = np.random.default_rng(0)
  codes = rng.integers(0, config.identifiers.codebook_size, (n, 4)).astype(np.int32)
  task_data = load_task_data(workdir, config, codes={"semantic": codes, "collab": codes}, with_pseudo_queries=False)
  source = task_data.mixture(config.tasks.sizes.to_dict(), 1, 0)
  plans = feed_requirements(int(config.train.batch_size))
  host_batch = min((p["rows_per_host"] for p in plans), default=512)
  padded = pipeline.PaddedBatches(source, host_batch)

  def one_read_per_example(k):
    indices = range(k * host_batch, (k + 1) * host_batch)
    return pipeline.stack_features([pipeline.example_features(source.builder, i, *source.example(i)) for i in indices])

  sides = {"one_read_per_example": one_read_per_example, "batched_reads": padded.__getitem__}
  times = {name: {"wall": [], "cpu": []} for name in sides}
  next_batch = 1                                       # batch 0: start-up (readers, first reads)
  padded[0]
  for _ in range(repeats):
    for name, build in sides.items():
      w0, c0 = time.perf_counter(), time.process_time()
      for k in range(next_batch, next_batch + batches):
        build(k)
      times[name]["wall"].append(time.perf_counter() - w0)
      times[name]["cpu"].append(time.process_time() - c0)
      next_batch += batches
  examples = batches * host_batch
  rates = {name: {"examples_per_s": round(examples / float(np.median(t["wall"])), 1),
                  "examples_per_cpu_s": round(examples / float(np.median(t["cpu"])), 1),
                  "wall_seconds": [round(x, 2) for x in t["wall"]]} for name, t in times.items()}
  it = pipeline.make_train_iterator(source, host_batch, workers=workers)
  for _ in range(2 * workers):
    next(it)
  w0 = time.perf_counter()
  for _ in range(batches * repeats):
    next(it)
  rates[f"{workers}_worker_processes"] = {"examples_per_s": round(batches * repeats * host_batch / (time.perf_counter() - w0), 1)}
  per_core = rates["batched_reads"]["examples_per_cpu_s"]
  for p in plans:
    p["pipeline_examples_per_s"] = rates[f"{workers}_worker_processes"]["examples_per_s"]
    p["headroom"] = round(p["pipeline_examples_per_s"] / p["required_examples_per_s"], 2) if p["required_examples_per_s"] else None
    p["cores_needed"] = math.ceil(p["required_examples_per_s"] / per_core)
  return {"measured": f"{repeats} x {batches} batches of {host_batch} rows per side, interleaved, then "
                      f"{batches * repeats} batches from {workers} grain worker processes, on this {os.cpu_count()}-core CPU",
          "epoch_examples": len(source), "host_batch": host_batch, "workers": workers, "sides": rates,
          "examples_per_s": rates[f"{workers}_worker_processes"]["examples_per_s"],
          "examples_per_cpu_s": per_core, "load_average_at_start": round(os.getloadavg()[0], 1),
          "against_plans": plans}


def feed_requirements(global_batch: int) -> list[dict]:
  """Per plan in results/plan/: hosts, rows per host per step and the examples/s one host must feed at
  the plan's estimated step time."""
  from gensar_jax.plan import slice_hosts
  out = []
  for path in sorted((ROOT / "results" / "plan").glob("*.json")):
    plan = json.loads(path.read_text())
    step_s = plan.get("estimate", {}).get("step_s")
    if not step_s:
      continue
    hosts = plan.get("hosts") or slice_hosts(plan["topology"], plan["devices"])
    rows = plan["shapes"]["global_batch"] // hosts
    out.append({"plan": path.stem, "hosts": hosts, "rows_per_host": rows, "step_s": step_s,
                "required_examples_per_s": round(rows / step_s, 1)})
  return out


# ------------------------------------------------------------------------------------------ parent

def run_part(part: str, args) -> dict:
  """Runs one part in a child process; its JSON plus wall seconds and peak RSS."""
  cmd = [sys.executable, __file__, "--child", part, "--workdir", str(args.workdir), "--text_sample",
         str(args.text_sample), "--sasrec_fraction", str(args.sasrec_fraction), "--rqvae_epochs", str(args.rqvae_epochs),
         "--batches", str(args.batches)]
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  if status != 0:
    raise RuntimeError(f"rehearsal part {part} failed (status {status}); output tail: {out[-2000:]}")
  result = json.loads(out.strip().splitlines()[-1])
  result.update(part=part, wall_seconds=round(wall, 1), peak_rss_gib=round(usage.ru_maxrss / 2 ** 20, 2),
                cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1), load_average_at_end=round(os.getloadavg()[0], 1))
  print(json.dumps(result), flush=True)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", type=Path, default=Path("/tmp/electronics_rehearsal"))
  parser.add_argument("--parts", default=",".join(PARTS))
  parser.add_argument("--text_sample", type=int, default=2000)
  parser.add_argument("--sasrec_fraction", type=float, default=0.02)
  parser.add_argument("--rqvae_epochs", type=int, default=3)
  parser.add_argument("--batches", type=int, default=4, help="pipeline: batches per timed repeat")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = {"prepare": lambda: part_prepare(args.workdir), "text": lambda: part_text(args.workdir, args.text_sample),
              "sasrec": lambda: part_sasrec(args.workdir, args.sasrec_fraction),
              "rqvae": lambda: part_rqvae(args.rqvae_epochs),
              "pipeline": lambda: part_pipeline(args.workdir, args.batches)}[args.child]()
    print(json.dumps(result))
    return
  parts = [p for p in args.parts.split(",") if p]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise SystemExit(f"--parts: unknown {unknown}; expected some of {PARTS}")
  previous = json.loads(OUT.read_text()) if OUT.exists() else {"parts": {}}
  results = dict(previous.get("parts", {}))
  for part in parts:
    results[part] = run_part(part, args)
    report = {"world": ELECTRONICS, "machine": f"{os.cpu_count()} CPU cores (shared with other jobs while measured)",
              "note": "wall seconds and peak RSS per part, each in its own process; 'extrapolated_seconds' is the "
                      "stage's full length estimated from the timed part ('measured' says what was timed)",
              "parts": results}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
