#!/usr/bin/env python
"""Training-step throughput of our JAX T5 against Hugging Face PyTorch T5, same shapes, same run.

Both sides do one full optimizer step per iteration: forward, token cross-entropy over the decoder
targets, backward, global-norm clipping (1.0) and AdamW (lr 1e-3, weight decay 1e-7), dropout 0.1. Our
step runs twice: with threefry dropout masks (flax's, side "ours") and with hash masks
(`train.dropout_rng=hash`, side "ours_hash"); torch draws its masks from its own CPU generator.
Default shapes: t5-small (d_model 512, 6+6 layers, d_ff 2048) with the GenSAR vocabulary
(32,128 SentencePiece + 3 behaviour + 6 x 256 identifier tokens), batch 32, input 128, target 8.
Tokens/s counts input + target tokens. Both sides run as pinned worker processes of
`benchmarks/harness.py` (same affinity and thread count, 1 thread and all cores, interleaved steps,
median/min/max, matmul peak in the same run). Results: results/benchmarks/train_step.json.

  python -m benchmarks.train_step [--batch 32 --input_len 128 --target_len 8 --repeats 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import harness


def random_batch(batch: int, input_len: int, target_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  encoder = rng.integers(3, vocab, size=(batch, input_len)).astype(np.int32)
  targets = rng.integers(3, vocab, size=(batch, target_len)).astype(np.int32)
  targets[:, -1] = 1
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": encoder, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets, np.float32)}


def jax_step(args, batch):
  import jax

  from gensar_jax import parallel
  from gensar_jax.model.t5 import T5Config
  from gensar_jax.train import state as state_lib
  from gensar_jax.train import step as step_lib
  model_cfg = T5Config.small(args.vocab, dropout_rate=0.1, dtype="bfloat16" if args.bf16 else "float32",
                             dropout_rng=getattr(args, "dropout_rng", "threefry"))
  train_cfg = state_lib.train_config()
  train_cfg.num_steps = 1000
  train_cfg.warmup_fraction = 0.0
  rules = parallel.DEFAULT_LOGICAL_AXIS_RULES
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  optimizer = state_lib.make_optimizer(train_cfg)
  holder = {}
  holder["state"], shardings = state_lib.create_train_state(model_cfg, optimizer, mesh, rules, jax.random.key(0))
  train_step = step_lib.make_train_step(model_cfg, train_cfg, optimizer, mesh, rules, shardings)
  global_batch = parallel.host_local_batch_to_global(batch, mesh, rules)
  with parallel.mesh_and_rules(mesh, rules):
    compiled = train_step.jitted.lower(holder["state"], {k: global_batch[k] for k in step_lib.BATCH_KEYS}).compile()
  start = time.perf_counter()
  holder["state"], metrics = train_step(holder["state"], global_batch)
  jax.block_until_ready(metrics)
  info = {"compile_seconds": time.perf_counter() - start, "first_loss": float(metrics["loss"]),
          "flops_per_call": harness.xla_flops(compiled),
          "flops_source": "XLA cost_analysis of the jitted step (grad_accum_steps 1: no loop)"}

  def step():
    holder["state"], m = train_step(holder["state"], global_batch)
    jax.block_until_ready(m)
  return step, info


def torch_step(args, batch):
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=args.vocab, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                                 dropout_rate=0.1, feed_forward_proj="relu", decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config).to(args.device).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-7)
  tensors = {k: torch.tensor(v, dtype=torch.long, device=args.device) for k, v in batch.items()
             if k != "decoder_loss_weights"}
  autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      out = model(input_ids=tensors["encoder_input_tokens"],
                  attention_mask=tensors["encoder_input_tokens"] != 0,
                  decoder_input_ids=tensors["decoder_input_tokens"], labels=tensors["decoder_target_tokens"])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if args.device == "cuda":
      torch.cuda.synchronize()
  step()  # first step allocates optimizer state
  return step


def make_ours(spec: dict) -> harness.Workload:
  """Our jitted t5-small train step (one call = one optimizer step on the same batch)."""
  args = argparse.Namespace(**spec)
  step, info = jax_step(args, random_batch(args.batch, args.input_len, args.target_len, args.vocab))
  return harness.Workload(step, {**info, "tokens_per_call": args.batch * (args.input_len + args.target_len)})


def make_reference(spec: dict) -> harness.Workload:
  """HF PyTorch T5 + AdamW, eager (one call = one optimizer step on the same batch)."""
  args = argparse.Namespace(**spec)
  step = torch_step(args, random_batch(args.batch, args.input_len, args.target_len, args.vocab))
  return harness.Workload(step, {"tokens_per_call": args.batch * (args.input_len + args.target_len)})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--input_len", type=int, default=128)
  parser.add_argument("--target_len", type=int, default=8)
  parser.add_argument("--vocab", type=int, default=32128 + 3 + 6 * 256)
  parser.add_argument("--bf16", action="store_true")
  parser.add_argument("--device", default="cpu", help="torch device (cpu or cuda); JAX uses its default backend")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--name", default="train_step", help="results/benchmarks/<name>.json")
  harness.common_arguments(parser)
  args = parser.parse_args()
  spec = {k: getattr(args, k) for k in ("batch", "input_len", "target_len", "vocab", "bf16", "device")}
  sides = {"ours": ("benchmarks.train_step:make_ours", spec),
           "ours_hash": ("benchmarks.train_step:make_ours", {**spec, "dropout_rng": "hash"})}
  ratios = {"hash_dropout_speedup": ("ours", "ours_hash")}
  if not args.skip_torch:
    sides["reference"] = ("benchmarks.train_step:make_reference", spec)
    ratios["ours_speedup_vs_hf_torch"] = ("reference", "ours")
    ratios["ours_hash_speedup_vs_hf_torch"] = ("reference", "ours_hash")
  harness.compare(args.name, sides, ratios=ratios, settings={**spec, "model": "t5-small", "call": "one train step"},
                  **harness.harness_options(args))


if __name__ == "__main__":
  main()
