"""Constrained decoding benchmarks; every ratio is against a baseline measured in the same run.

(a) reference way vs ours (same CPU, same random t5-small-shaped weights): HF `generate` with beam
    search and a `prefix_allowed_tokens_fn` over per-query prefix dicts, vs our jitted search over
    per-query trie tables; queries/s including the per-batch dict / table building. Target >= 10x.
(b) decode overhead: our whole constrained decode (encoder included) / a jitted encoder-only forward
    on the same batch. Target <= 3x.
(c) catalogue scaling: catalogue tries for 10k / 100k / 1M items (random 4-level IDs, codebook 256):
    build time, table bytes, decode queries/s. Target: 1M within 1.5x of 10k.
Batches alternate between the compared methods so that load changes hit both alike; medians are
reported. Example: `python benchmarks/decode.py --sections a,b --hf-batches 2`.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from gensar_jax.decode import trie as trie_lib
from gensar_jax.decode.beam_search import constrained_beam_search
from gensar_jax.model.t5 import T5, T5Config, init_params

SP_VOCAB = 32128                       # t5-small's vocabulary, then 3 behaviour + 6 x 256 ID tokens
CODEBOOK = 256
VOCAB = SP_VOCAB + 3 + 6 * CODEBOOK
BEHAVIOUR = SP_VOCAB + 2               # <src_item>
OFFSETS = tuple(SP_VOCAB + 3 + level * CODEBOOK for level in (0, 1, 2, 3))   # semantic ID levels


def model_config(name: str) -> T5Config:
  if name == "small":
    return T5Config.small(VOCAB, dropout_rate=0.0)
  if name == "mini":
    return T5Config(VOCAB, d_model=128, num_heads=4, d_kv=32, d_ff=512, num_encoder_layers=2,
                    num_decoder_layers=2, dropout_rate=0.0)
  raise ValueError(f"--model: expected 'small' or 'mini', got {name!r}")


def random_queries(rng, batch, length):
  tokens = rng.integers(3, SP_VOCAB, size=(batch, length)).astype(np.int32)
  for row, keep in enumerate(rng.integers(length // 2, length + 1, size=batch)):
    tokens[row, keep:] = 0
  return tokens


def timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return out, time.perf_counter() - start


def hf_model_and_params(config: T5Config, seed: int):
  import torch
  import transformers
  from gensar_jax.model.hf_import import params_from_hf_state_dict
  torch.manual_seed(seed)
  hf_config = transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
      num_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
      num_heads=config.num_heads, dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  params = params_from_hf_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, config)
  return model, jax.device_put(params)


def hf_generate(model, tokens, candidates, codes, num_beams):
  """The reference's way: per-query prefix dicts, HF beam search with prefix_allowed_tokens_fn."""
  import torch
  allowed = []
  for row in candidates:
    table = {}
    for code in codes[row]:
      seq = (0, BEHAVIOUR, *(int(c) + o for c, o in zip(code, OFFSETS)))
      for i in range(1, len(seq)):
        table.setdefault(seq[:i], set()).add(seq[i])
    allowed.append({k: sorted(v) for k, v in table.items()})

  def prefix_allowed_tokens_fn(batch_id, input_ids):
    return allowed[batch_id].get(tuple(input_ids.tolist()), [])

  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(tokens != 0),
                         num_beams=num_beams, num_return_sequences=num_beams, max_new_tokens=1 + len(OFFSETS),
                         do_sample=False, length_penalty=0.0, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                         output_scores=True, return_dict_in_generate=True)
  return out.sequences.numpy()[:, 1:].reshape(len(tokens), num_beams, -1)


def ours_candidates(params, config, tokens, candidates, codes, num_beams):
  tables = trie_lib.build_candidate_tries(candidates, codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  return constrained_beam_search(params, config, tokens, tables, num_beams)


def section_a_b(args, rng):
  import torch
  torch.set_num_threads(os.cpu_count())
  config = model_config(args.model)
  model, params = hf_model_and_params(config, seed=0)
  codes = rng.integers(0, CODEBOOK, size=(args.num_items, 4))
  batches = [(random_queries(rng, args.batch, args.input_length),
              np.stack([rng.choice(args.num_items, args.candidates, replace=False) for _ in range(args.batch)]))
             for _ in range(max(args.hf_batches, args.our_batches))]
  _, compile_s = timed(ours_candidates, params, config, *batches[0], codes, args.beams)
  encode = jax.jit(lambda p, t: T5(config).apply({"params": p}, t, method=T5.encode))
  timed(encode, params, batches[0][0])
  print(f"[setup] model {args.model} ({config.d_model}d, {config.num_encoder_layers}+{config.num_decoder_layers} "
        f"layers, vocab {VOCAB}), batch {args.batch}, beam {args.beams}, {args.candidates} candidates, input "
        f"{args.input_length}; our first call (compile) {compile_s:.1f}s; {jax.devices()[0].platform}, "
        f"{os.cpu_count()} cores", flush=True)
  ours_s, hf_s, encode_s, agree = [], [], [], []
  for i in range(max(args.hf_batches, args.our_batches)):
    tokens, candidates = batches[i]
    if i < args.our_batches:
      out, seconds = timed(ours_candidates, params, config, tokens, candidates, codes, args.beams)
      ours_s.append(seconds)
      encode_s.append(timed(encode, params, tokens)[1])
    if "a" in args.sections and i < args.hf_batches:
      hf_sequences, seconds = timed(hf_generate, model, tokens, candidates, codes, args.beams)
      hf_s.append(seconds)
      if i < args.our_batches:
        agree.append(np.mean(np.all(np.asarray(out.sequences)[:, 0] == hf_sequences[:, 0], axis=-1)))
      print(f"  batch {i}: HF {seconds:.2f}s, ours {ours_s[-1]:.3f}s", flush=True)
  ours_qps = args.batch / np.median(ours_s)
  if hf_s:
    hf_qps = args.batch / np.median(hf_s)
    print(f"(a) HF generate + prefix_allowed_tokens_fn: {hf_qps:.2f} queries/s ({len(hf_s)} batches); "
          f"ours: {ours_qps:.2f} queries/s ({len(ours_s)} batches) -> {ours_qps / hf_qps:.1f}x "
          f"(target >= 10x); top-beam tokens identical on {100 * np.mean(agree):.0f}% of queries", flush=True)
  print(f"(b) our constrained decode {np.median(ours_s):.3f}s / encoder-only forward {np.median(encode_s):.3f}s "
        f"per batch = {np.median(ours_s) / np.median(encode_s):.2f}x (target <= 3x)", flush=True)


def section_c(args, rng):
  config = model_config(args.catalogue_model)
  params = jax.jit(lambda key: init_params(config, key))(jax.random.key(0))
  tokens = [random_queries(rng, args.batch, args.input_length) for _ in range(args.our_batches)]
  results = {}
  for size in args.catalogue_sizes:
    codes = rng.integers(0, CODEBOOK, size=(size, 4))
    start = time.perf_counter()
    tables = trie_lib.build_catalogue_trie(codes, BEHAVIOUR, OFFSETS, CODEBOOK)
    build_s = time.perf_counter() - start
    tables = jax.device_put(tables)
    _, compile_s = timed(constrained_beam_search, params, config, tokens[0], tables, args.beams)
    results[size] = (build_s, tables.nbytes, compile_s, tables)
  # Decode timings interleaved across catalogue sizes (one batch each per round).
  seconds = {size: [] for size in args.catalogue_sizes}
  for batch in tokens:
    for size in args.catalogue_sizes:
      seconds[size].append(timed(constrained_beam_search, params, config, batch, results[size][3], args.beams)[1])
  base = args.batch / np.median(seconds[args.catalogue_sizes[0]])
  print(f"(c) catalogue scaling, model {args.catalogue_model}, batch {args.batch}, beam {args.beams}:")
  for size in args.catalogue_sizes:
    build_s, nbytes, compile_s, tables = results[size]
    qps = args.batch / np.median(seconds[size])
    print(f"  {size:>8} items: build {build_s:.2f}s, tables {nbytes / 2**20:.1f} MB "
          f"(fan-outs {[t.shape[2] for t in tables.child_codes]}), compile {compile_s:.1f}s, "
          f"{qps:.1f} queries/s = {base / qps:.2f}x the time of {args.catalogue_sizes[0]} items", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sections", default="a,b,c", help="comma-separated subset of a,b,c")
  parser.add_argument("--model", default="small", help="small (t5-small shape) or mini, for (a) and (b)")
  parser.add_argument("--catalogue-model", default="mini", help="model for (c): small or mini")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--beams", type=int, default=30)
  parser.add_argument("--candidates", type=int, default=100)
  parser.add_argument("--input-length", type=int, default=128)
  parser.add_argument("--num-items", type=int, default=10_000, help="catalogue the candidates come from in (a)")
  parser.add_argument("--hf-batches", type=int, default=2)
  parser.add_argument("--our-batches", type=int, default=3)
  parser.add_argument("--catalogue-sizes", default="10000,100000,1000000")
  args = parser.parse_args()
  args.sections = set(args.sections.split(","))
  args.catalogue_sizes = [int(s) for s in args.catalogue_sizes.split(",")]
  rng = np.random.default_rng(0)
  if args.sections & {"a", "b"}:
    section_a_b(args, rng)
  if "c" in args.sections:
    section_c(args, rng)


if __name__ == "__main__":
  main()
