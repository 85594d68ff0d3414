"""Independent float64 numpy references for the identifier tests (written from docs/method.md, Identifiers,
not from gensar_jax code): Sinkhorn in the exp domain as the reference code runs it, Lloyd, RQ-VAE."""
from __future__ import annotations

import numpy as np


def sinkhorn_plan(distances: np.ndarray, epsilon: float, num_iters: int) -> np.ndarray:
  """Reference Sinkhorn-Knopp in float64: scale distances to [-1, 1], Q = exp(-d / eps), then
  alternately rows to 1/B and columns to 1/K."""
  d = np.asarray(distances, np.float64)
  middle = (d.max() + d.min()) / 2
  amplitude = d.max() - middle + 1e-5
  q = np.exp(-((d - middle) / amplitude) / epsilon)
  q /= q.sum()
  rows, codes = q.shape
  for _ in range(num_iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= rows
    q /= q.sum(axis=0, keepdims=True)
    q /= codes
  return q * rows


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
  return ((x[:, None, :].astype(np.float64) - centers[None, :, :].astype(np.float64)) ** 2).sum(-1)


def lloyd(points: np.ndarray, centers: np.ndarray, num_iters: int) -> np.ndarray:
  """Plain Lloyd iterations (no empty clusters expected)."""
  centers = np.asarray(centers, np.float64).copy()
  for _ in range(num_iters):
    assignment = squared_distances(points, centers).argmin(1)
    for k in range(centers.shape[0]):
      if (assignment == k).any():
        centers[k] = points[assignment == k].mean(0)
  return centers


def objective(points: np.ndarray, centers: np.ndarray) -> float:
  return float(squared_distances(points, centers).min(1).sum())


def mlp(layers: dict, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  for i in range(len(layers)):
    x = x @ np.asarray(layers[f"layer_{i}"]["kernel"], np.float64) + np.asarray(layers[f"layer_{i}"]["bias"])
    if i < len(layers) - 1:
      x = np.maximum(x, 0.0)
  return x


def rqvae_forward(params: dict, inputs: dict, views: tuple[str, ...], latent_dim: int, beta: float,
                  quant_loss_weight: float, epsilons: dict[str, list[float]], sinkhorn_iters: int) -> dict:
  """RQ-VAE forward values: shared levels on concat(latents), split residual, specific levels per view.

  epsilons: {"shared": [...], view: [...]} per level (0 = argmin). Returns loss, recon_loss,
  quant_loss and codes {view: int[B, L]}.
  """
  def quantize(residual, codebook, epsilon):
    d = squared_distances(residual, codebook)
    codes = d.argmin(1) if epsilon <= 0 else sinkhorn_plan(d, epsilon, sinkhorn_iters).argmax(1)
    selected = np.asarray(codebook, np.float64)[codes]
    mse = ((selected - residual) ** 2).mean()
    return selected, codes, (1 + beta) * mse

  z = np.concatenate([mlp(params[f"{v}_encoder"], inputs[v]) for v in views], axis=1)
  residual, total, losses, shared_codes = z, np.zeros_like(z), [], []
  for level, epsilon in enumerate(epsilons["shared"]):
    selected, codes, loss = quantize(residual, params["codebooks"]["shared"][level], epsilon)
    residual, total = residual - selected, total + selected
    losses.append(loss)
    shared_codes.append(codes)
  recon, out_codes = 0.0, {}
  for i, view in enumerate(views):
    r = residual[:, i * latent_dim:(i + 1) * latent_dim]
    s = total[:, i * latent_dim:(i + 1) * latent_dim]
    codes_list = list(shared_codes)
    for level, epsilon in enumerate(epsilons[view]):
      selected, codes, loss = quantize(r, params["codebooks"][view][level], epsilon)
      r, s = r - selected, s + selected
      losses.append(loss)
      codes_list.append(codes)
    recon += ((mlp(params[f"{view}_decoder"], s) - inputs[view]) ** 2).mean()
    out_codes[view] = np.stack(codes_list, axis=1)
  quant = float(np.mean(losses))
  return {"loss": recon + quant_loss_weight * quant, "recon_loss": recon, "quant_loss": quant, "codes": out_codes}
