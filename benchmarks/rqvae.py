"""RQ-VAE training throughput (items x epochs per second) with the reference settings.

Measures our training epoch (one jitted `lax.scan` over the shuffled batches) against a baseline
measured in the same run: a PyTorch eager re-implementation of the reference training loop (Python
loop over batches, float64 exp-domain Sinkhorn on the last specific levels, AdamW + linear schedule +
clipping), on synthetic tables of Office size (2,420 items) and Electronics size (62,882 items), with
384-d semantic and 64-d collaborative inputs.

  python benchmarks/rqvae.py                      # both sizes
  python benchmarks/rqvae.py --sizes office --epochs 20 --baseline-epochs 3
"""
from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np
import torch

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


def time_ours(table: dict[str, np.ndarray], config, epochs: int) -> float:
  """Seconds per epoch of our jitted epoch (compile excluded)."""
  num_items = table["semantic"].shape[0]
  spec = rqvae.spec_from_config(config, 384, 64)
  inputs = {view: jax.numpy.asarray(values) for view, values in table.items()}
  params = rqvae.init_params(jax.random.PRNGKey(0), spec)
  first = {view: values[:config.batch_size] for view, values in inputs.items()}
  params = rqvae.init_codebooks(jax.random.PRNGKey(1), params, spec, first, None, config.kmeans_iters)
  optimizer = rqvae_train.make_optimizer(config, math.ceil(num_items / config.batch_size))
  opt_state = optimizer.init(params)
  train_epoch = rqvae_train.make_train_epoch(spec, optimizer, config.batch_size)
  params, opt_state, losses = train_epoch(params, opt_state, inputs, jax.random.PRNGKey(2))
  jax.block_until_ready(losses)
  start = time.perf_counter()
  for epoch in range(epochs):
    params, opt_state, losses = train_epoch(params, opt_state, inputs, jax.random.PRNGKey(3 + epoch))
  jax.block_until_ready(losses)
  return (time.perf_counter() - start) / epochs


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


def time_torch_reference(table: dict[str, np.ndarray], config, epochs: int) -> float:
  """Seconds per epoch of the eager PyTorch reference loop (one warm-up batch excluded)."""
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
  start = time.perf_counter()
  for _ in range(epochs):
    run_epoch()
  return (time.perf_counter() - start) / epochs


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
  parser.add_argument("--epochs", type=int, default=10, help="timed epochs of ours (office); electronics uses 1/5")
  parser.add_argument("--baseline-epochs", type=int, default=2, help="timed epochs of the torch baseline (office)")
  parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the fastest of each is kept")
  parser.add_argument("--torch-threads", type=int, default=1,
                      help="intra-op threads of the baseline (1 was fastest on the shared 2-core dev machine)")
  args = parser.parse_args()
  torch.set_num_threads(args.torch_threads)
  config = rqvae.identifiers_config()  # the reference settings
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); batch {config.batch_size}, codebooks "
        f"{config.num_shared_levels}+{config.num_specific_levels}x2 of {config.codebook_size}, "
        f"Sinkhorn eps {config.sinkhorn_epsilon} x {config.sinkhorn_iters} iters on the last specific levels")
  print(f"{'table':<12} {'items':>7} {'ours s/epoch':>13} {'ours items*ep/s':>16} "
        f"{'torch s/epoch':>14} {'torch items*ep/s':>17} {'speed-up':>9} {'500 epochs (ours)':>18}")
  for name in args.sizes:
    num_items = SIZES[name]
    table = synthetic_table(num_items)
    scale = 1 if name == "office" else 5
    ours, baseline = math.inf, math.inf
    for _ in range(args.repeats):  # alternate, so load changes on a shared machine hit both alike
      ours = min(ours, time_ours(table, config, max(1, args.epochs // scale)))
      baseline = min(baseline, time_torch_reference(table, config, max(1, args.baseline_epochs // scale)))
    print(f"{name:<12} {num_items:>7} {ours:>13.3f} {num_items / ours:>16.0f} {baseline:>14.3f} "
          f"{num_items / baseline:>17.0f} {baseline / ours:>8.2f}x {500 * ours / 60:>15.1f} min", flush=True)


if __name__ == "__main__":
  main()
