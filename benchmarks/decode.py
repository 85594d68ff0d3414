"""Constrained decoding benchmarks; every ratio is against a baseline measured in the same run.

(a) reference way vs ours (same CPU, same random t5-small-shaped weights): HF `generate` with beam
    search and a `prefix_allowed_tokens_fn` over per-query prefix dicts, vs our jitted search over
    per-query trie tables; queries/s including the per-batch dict / table building. Target >= 10x.
(b) decode overhead: our whole constrained decode (encoder included) / a jitted encoder-only forward
    on the same batch. Target <= 3x.
(c) catalogue scaling: catalogue tries for 10k / 100k / 1M items (random 4-level IDs, codebook 256):
    build time, table bytes, decode queries/s. Target: 1M within 1.5x of 10k.
Every side runs in its own worker process via `benchmarks/harness.py` (same CPU affinity and thread
count on both sides, at 1 thread and at all cores; interleaved rounds; medians with min/max; the
matmul peak and FLOPs per call for the achieved fraction of peak). Each side makes one warm-up call
(compile / a two-query generate) in its setup, before the harness' own warm-up calls.
Results: results/benchmarks/decode.json (a, b) and decode_catalogue.json (c).

  python -m benchmarks.decode --sections a,b --repeats 5 --warmup 0
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import harness
from gensar_jax.decode import trie as trie_lib
from gensar_jax.decode.beam_search import constrained_beam_search
from gensar_jax.model.decoding import T5Decoding
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
  return constrained_beam_search(params, T5Decoding(config), tokens, tables, num_beams)


def make_batches(spec: dict):
  """The catalogue codes and `spec['batches']` (tokens, candidates) batches, identical in every worker."""
  rng = np.random.default_rng(spec.get("seed", 0))
  codes = rng.integers(0, CODEBOOK, size=(spec["num_items"], 4))
  batches = [(random_queries(rng, spec["batch"], spec["input_length"]),
              np.stack([rng.choice(spec["num_items"], spec["candidates"], replace=False)
                        for _ in range(spec["batch"])]))
             for _ in range(spec["batches"])]
  return codes, batches


def cycling(batches):
  """A callable returning the batches in turn (call i of every side sees batch i mod len)."""
  state = {"next": 0}

  def take():
    batch = batches[state["next"] % len(batches)]
    state["next"] += 1
    return batch
  return take


def make_reference(spec: dict) -> harness.Workload:
  """Side (a) baseline: HF generate + prefix_allowed_tokens_fn on a t5-small-shaped torch model."""
  config = model_config(spec["model"])
  model, _ = hf_model_and_params(config, seed=0)
  codes, batches = make_batches(spec)
  tokens, candidates = batches[0]
  hf_generate(model, tokens[:2], candidates[:2], codes, spec["beams"])   # warm-up on two queries
  take = cycling(batches)

  def run():
    tokens, candidates = take()
    return hf_generate(model, tokens, candidates, codes, spec["beams"])[:, 0].tolist()
  return harness.Workload(run, {"queries_per_call": spec["batch"]})


def make_ours(spec: dict) -> harness.Workload:
  """Our jitted constrained beam search (per-batch trie tables built inside the timed call)."""
  from gensar_jax.decode.beam_search import search
  config = model_config(spec["model"])
  _, params = hf_model_and_params(config, seed=0)   # the same weights as the reference side
  codes, batches = make_batches(spec)
  tokens, candidates = batches[0]
  tables = trie_lib.build_candidate_tries(candidates, codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  compiled = search.lower(params, jax.numpy.asarray(tokens), tables, decoder=T5Decoding(config),
                          num_beams=spec["beams"]).compile()
  _, compile_s = timed(ours_candidates, params, config, tokens, candidates, codes, spec["beams"])
  take = cycling(batches)

  def run():
    out = ours_candidates(params, config, *take(), codes, spec["beams"])
    return np.asarray(jax.block_until_ready(out).sequences)[:, 0].tolist()
  return harness.Workload(run, {"queries_per_call": spec["batch"], "flops_per_call": harness.xla_flops(compiled),
                                "flops_source": "XLA cost_analysis of the jitted search (no loops in it)",
                                "compile_seconds": compile_s})


def make_encoder_only(spec: dict) -> harness.Workload:
  """Section (b) reference: a jitted encoder-only forward on the same batches."""
  config = model_config(spec["model"])
  _, params = hf_model_and_params(config, seed=0)
  _, batches = make_batches(spec)
  encode = jax.jit(lambda p, t: T5(config).apply({"params": p}, t, method=T5.encode))
  compiled = encode.lower(params, batches[0][0]).compile()
  timed(encode, params, batches[0][0])
  take = cycling(batches)

  def run():
    jax.block_until_ready(encode(params, take()[0]))
  return harness.Workload(run, {"queries_per_call": spec["batch"], "flops_per_call": harness.xla_flops(compiled),
                                "flops_source": "XLA cost_analysis"})


def make_catalogue(spec: dict) -> harness.Workload:
  """Section (c): decode against a shared catalogue trie of `spec['size']` random 4-level IDs."""
  config = model_config(spec["model"])
  params = jax.jit(lambda key: init_params(config, key))(jax.random.key(0))
  rng = np.random.default_rng(spec.get("seed", 0))
  batches = [random_queries(rng, spec["batch"], spec["input_length"]) for _ in range(spec["batches"])]
  codes = rng.integers(0, CODEBOOK, size=(spec["size"], 4))
  start = time.perf_counter()
  tables = trie_lib.build_catalogue_trie(codes, BEHAVIOUR, OFFSETS, CODEBOOK)
  build_s = time.perf_counter() - start
  tables = jax.device_put(tables)
  _, compile_s = timed(constrained_beam_search, params, T5Decoding(config), batches[0], tables, spec["beams"])
  take = cycling(batches)

  def run():
    jax.block_until_ready(constrained_beam_search(params, T5Decoding(config), take(), tables, spec["beams"]))
  return harness.Workload(run, {"queries_per_call": spec["batch"], "build_seconds": build_s,
                                "table_bytes": int(tables.nbytes), "compile_seconds": compile_s})


def top_beam_agreement(run: dict) -> dict:
  """Fraction of queries whose top beam's tokens are identical on both sides, over the timed calls."""
  ours, reference = run["sides"]["ours"].get("outputs"), run["sides"].get("reference", {}).get("outputs")
  if not ours or not reference:
    return {}
  same = [a == b for ours_call, ref_call in zip(ours, reference) for a, b in zip(ours_call, ref_call)]
  return {"top_beam_identical_fraction": float(np.mean(same)), "queries_compared": len(same)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sections", default="a,b", help="'a,b' (reference, ours, encoder-only) and/or 'c'")
  parser.add_argument("--model", default="small", help="small (t5-small shape) or mini, for (a) and (b)")
  parser.add_argument("--catalogue-model", default="mini", help="model for (c): small or mini")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--beams", type=int, default=30)
  parser.add_argument("--candidates", type=int, default=100)
  parser.add_argument("--input-length", type=int, default=128)
  parser.add_argument("--num-items", type=int, default=10_000, help="catalogue the candidates come from in (a)")
  parser.add_argument("--batches", type=int, default=3, help="distinct batches, cycled through by every side")
  parser.add_argument("--catalogue-sizes", default="10000,100000,1000000")
  harness.common_arguments(parser)
  args = parser.parse_args()
  sections = set(args.sections.split(","))
  spec = {"model": args.model, "batch": args.batch, "beams": args.beams, "candidates": args.candidates,
          "input_length": args.input_length, "num_items": args.num_items, "batches": args.batches, "seed": 0}
  if sections & {"a", "b"}:
    sides = {"ours": ("benchmarks.decode:make_ours", spec)}
    ratios = {}
    if "a" in sections:
      sides["reference"] = ("benchmarks.decode:make_reference", spec)
      ratios["ours_speedup_vs_hf_generate"] = ("reference", "ours")
    if "b" in sections:
      sides["encoder_only"] = ("benchmarks.decode:make_encoder_only", spec)
      ratios["decode_over_encoder_only"] = ("ours", "encoder_only")
    harness.compare("decode", sides, ratios=ratios, settings=spec, derive=top_beam_agreement,
                    **harness.harness_options(args))
  if "c" in sections:
    sizes = [int(s) for s in args.catalogue_sizes.split(",")]
    catalogue = {f"catalogue_{size}": ("benchmarks.decode:make_catalogue",
                                       {**spec, "model": args.catalogue_model, "size": size}) for size in sizes}
    ratios = {f"catalogue_{size}_over_{sizes[0]}": (f"catalogue_{size}", f"catalogue_{sizes[0]}") for size in sizes[1:]}
    harness.compare("decode_catalogue", catalogue, ratios=ratios,
                    settings={**spec, "model": args.catalogue_model, "sizes": sizes}, **harness.harness_options(args))


if __name__ == "__main__":
  main()
