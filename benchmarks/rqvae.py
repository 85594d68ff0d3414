"""RQ-VAE training throughput (items x epochs per second) with the reference settings.

Measures our training epoch (one jitted `lax.scan` over the shuffled batches) against a baseline
measured in the same run: a PyTorch eager re-implementation of the reference training loop (Python
loop over batches, float64 exp-domain Sinkhorn on the last specific levels, AdamW + linear schedule +
clipping), on synthetic tables of Office size (2,420 items) and Electronics size (62,882 items), with
384-d semantic and 64-d collaborative inputs.

Both sides run as pinned worker processes of `benchmarks/harness.py` (same affinity and thread count,
1 thread and all cores, interleaved epochs, median/min/max, matmul peak in the same run); one timed
call is one epoch. Results: results/benchmarks/rqvae_<size>.json.

  python -m benchmarks.rqvae                      # both sizes
  python -m benchmarks.rqvae --sizes office --repeats 5
"""
from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np
import torch

from benchmarks import harness
from gensar_jax.identifiers import rqvae, rqvae_train

SIZES = {"office": 2420, "electronics": 62882}


def synthetic_table(num_items: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Clustered unit-norm 384-d 'text' vectors and 64-d 'collaborative' vectors."""
  rng = np.random.default_rng(seed)
  topics = rng.normal(size=(64, 384))
  semantic = topics[rng.integers(0, 64, num_items)] + 0.5 * rng.normal(size=(num_items, 384))
  semantic /= np.linalg.norm(semantic, axis=1, keepdims=True)
  collab = 0.3 * rng.normal(size=(num_items, 64))
  return {"semantic": semantic.astype(np.float32), "collab": collab.astype(np.float32)}


def epoch_setup(config, table: dict[str, np.ndarray]):
  """(train_epoch, params, opt_state, inputs) of our RQ-VAE on `table` ({view: float32[items, dim]}),
  initialised as the index stage does (k-means codebooks on the first batch)."""
  num_items = table["semantic"].shape[0]
  model_spec = rqvae.spec_from_config(config, 384, 64)
  inputs = {view: jax.numpy.asarray(values) for view, values in table.items()}
  params = rqvae.init_params(jax.random.PRNGKey(0), model_spec)
  first = {view: values[:config.batch_size] for view, values in inputs.items()}
  params = rqvae.init_codebooks(jax.random.PRNGKey(1), params, model_spec, first, None, config.kmeans_iters)
  optimizer = rqvae_train.make_optimizer(config, math.ceil(num_items / config.batch_size))
  opt_state = optimizer.init(params)
  return rqvae_train.make_train_epoch(model_spec, optimizer, config.batch_size), params, opt_state, inputs


def make_ours(spec: dict) -> harness.Workload:
  """Our jitted RQ-VAE epoch (one `lax.scan` over the shuffled batches); one call = one epoch."""
  config = rqvae.identifiers_config()  # the reference settings
  train_epoch, params, opt_state, inputs = epoch_setup(config, synthetic_table(SIZES[spec["size"]]))
  info = epoch_flops(train_epoch, params, opt_state, inputs, config.batch_size)
  start = time.perf_counter()
  state = {"params": params, "opt_state": opt_state, "epoch": 0}
  state["params"], state["opt_state"], losses = train_epoch(params, opt_state, inputs, jax.random.PRNGKey(2))
  jax.block_until_ready(losses)
  info["compile_seconds"] = time.perf_counter() - start

  def run():
    state["epoch"] += 1
    state["params"], state["opt_state"], losses = train_epoch(state["params"], state["opt_state"], inputs,
                                                              jax.random.PRNGKey(2 + state["epoch"]))
    jax.block_until_ready(losses)
  return harness.Workload(run, {**info, "items_per_call": next(iter(inputs.values())).shape[0]})


def epoch_flops(train_epoch, params, opt_state, inputs, batch_size: int) -> dict:
  """FLOPs of one epoch: XLA's cost analysis counts a scan body once, so the one-batch epoch's FLOPs
  (one scan step) are multiplied by the number of steps; the full epoch's raw figure is kept too."""
  num_items = next(iter(inputs.values())).shape[0]
  steps = math.ceil(num_items / batch_size)
  one_batch = {view: values[:batch_size] for view, values in inputs.items()}
  key = jax.random.PRNGKey(0)
  per_step = harness.xla_flops(train_epoch.lower(params, opt_state, one_batch, key).compile())
  whole = harness.xla_flops(train_epoch.lower(params, opt_state, inputs, key).compile())
  return {"flops_per_call": None if per_step is None else per_step * steps, "steps_per_epoch": steps,
          "flops_one_batch_epoch": per_step, "flops_full_epoch_as_reported": whole,
          "flops_source": "XLA cost_analysis of a one-batch epoch x steps per epoch (scan body counted once)"}


class TorchReference(torch.nn.Module):
  """The reference model's training computation, eager PyTorch (baseline only)."""

  def __init__(self, config, dims: dict[str, int]):
    super().__init__()
    self.config = config
    self.views = tuple(dims)
    self.latent = config.latent_dim

    def mlp(sizes):
      layers = []
      for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = torch.nn.Linear(a, b)
        torch.nn.init.xavier_normal_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
          layers.append(torch.nn.ReLU())
      return torch.nn.Sequential(*layers)

    self.encoders = torch.nn.ModuleDict({v: mlp([d, *config.hidden_dims, self.latent]) for v, d in dims.items()})
    self.decoders = torch.nn.ModuleDict({v: mlp([self.latent, *config.hidden_dims[::-1], d]) for v, d in dims.items()})
    k = config.codebook_size
    self.shared = torch.nn.Parameter(torch.randn(config.num_shared_levels, k, 2 * self.latent) * 0.1)
    self.specific = torch.nn.ParameterDict(
        {v: torch.nn.Parameter(torch.randn(config.num_specific_levels, k, self.latent) * 0.1) for v in dims})

  def quantize(self, residual, codebook, sinkhorn):
    d = (residual.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None] - 2 * residual @ codebook.T).detach()
    if sinkhorn:
      middle = (d.max() + d.min()) / 2
      q = torch.exp(-((d - middle) / (d.max() - middle + 1e-5)).double() / self.config.sinkhorn_epsilon)
      q /= q.sum()
      for _ in range(self.config.sinkhorn_iters):
        q /= q.sum(1, keepdim=True) * q.shape[0]
        q /= q.sum(0, keepdim=True) * q.shape[1]
      codes = q.argmax(1)
    else:
      codes = d.argmin(1)
    selected = codebook[codes]
    loss = torch.mean((selected - residual.detach()) ** 2) + self.config.beta * torch.mean((selected.detach() - residual) ** 2)
    return residual + (selected - residual).detach(), loss

  def forward(self, batch):
    z = torch.cat([self.encoders[v](batch[v]) for v in self.views], 1)
    residual, total, losses = z, torch.zeros_like(z), []
    for level in range(self.shared.shape[0]):
      quantized, loss = self.quantize(residual, self.shared[level], False)
      residual, total = residual - quantized, total + quantized
      losses.append(loss)
    recon = 0
    for i, v in enumerate(self.views):
      r, s = residual[:, i * self.latent:(i + 1) * self.latent], total[:, i * self.latent:(i + 1) * self.latent]
      for level in range(self.specific[v].shape[0]):
        quantized, loss = self.quantize(r, self.specific[v][level], level == self.specific[v].shape[0] - 1)
        r, s = r - quantized, s + quantized
        losses.append(loss)
      recon = recon + torch.mean((self.decoders[v](s) - batch[v]) ** 2)
    return recon + self.config.quant_loss_weight * torch.stack(losses).mean()


def make_reference(spec: dict) -> harness.Workload:
  """The eager PyTorch reference loop; one call = one epoch (one warm-up batch made in setup)."""
  config = rqvae.identifiers_config()
  table = synthetic_table(SIZES[spec["size"]])
  torch.manual_seed(0)
  model = TorchReference(config, {v: x.shape[1] for v, x in table.items()})
  data = {v: torch.from_numpy(x) for v, x in table.items()}
  num_items = table["semantic"].shape[0]
  steps = math.ceil(num_items / config.batch_size)
  optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
  warmup, total = config.warmup_epochs * steps, config.epochs * steps
  schedule = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup)))

  def run_epoch(limit=None):
    order = torch.randperm(num_items)
    for b in range(steps if limit is None else limit):
      index = order[b * config.batch_size:(b + 1) * config.batch_size]
      optimizer.zero_grad()
      loss = model({v: x[index] for v, x in data.items()})
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
      optimizer.step()
      schedule.step()

  run_epoch(limit=1)
  return harness.Workload(run_epoch, {"items_per_call": num_items})


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
  harness.common_arguments(parser)
  args = parser.parse_args()
  config = rqvae.identifiers_config()
  for name in args.sizes:
    spec = {"size": name}
    settings = {"size": name, "items": SIZES[name], "batch_size": config.batch_size,
                "codebook_size": config.codebook_size, "shared_levels": config.num_shared_levels,
                "specific_levels": config.num_specific_levels, "sinkhorn_epsilon": config.sinkhorn_epsilon,
                "sinkhorn_iters": config.sinkhorn_iters, "call": "one training epoch"}
    harness.compare(f"rqvae_{name}", {"ours": ("benchmarks.rqvae:make_ours", spec),
                                      "reference": ("benchmarks.rqvae:make_reference", spec)},
                    ratios={"ours_speedup_vs_torch_reference": ("reference", "ours")}, settings=settings,
                    **harness.harness_options(args))


if __name__ == "__main__":
  main()
