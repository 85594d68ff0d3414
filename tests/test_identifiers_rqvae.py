"""RQ-VAE forward/loss against numpy, gradients against torch autograd, codebook init, schedule, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import identifiers_reference as ref
from gensar_jax.identifiers import rqvae, rqvae_train


def _tiny_config(**overrides):
  config = rqvae.identifiers_config()
  config.update(dict(hidden_dims=(16, 8), latent_dim=4, codebook_size=8, batch_size=64, epochs=20,
                     warmup_epochs=2, eval_every_epochs=5, kmeans_iters=20))
  config.update(overrides)
  return config


def _params_and_inputs(mode="dual", batch=32, seed=0):
  config = _tiny_config(mode=mode)
  spec = rqvae.spec_from_config(config, 12, 6)
  params = rqvae.init_params(jax.random.PRNGKey(seed), spec)
  rng = np.random.default_rng(seed)
  # Random codebooks at the scale of the latents so every level assigns non-trivially.
  params["codebooks"] = {group: jnp.asarray(rng.normal(size=books.shape).astype(np.float32) * 0.5)
                         for group, books in params["codebooks"].items()}
  inputs = {"semantic": rng.normal(size=(batch, 12)).astype(np.float32),
            "collab": rng.normal(size=(batch, 6)).astype(np.float32)}
  return spec, params, {view: inputs[view] for view in spec.views}


_jit_forward = jax.jit(rqvae.forward, static_argnums=1, static_argnames="use_sinkhorn")


def _reference(spec, params, inputs, use_sinkhorn):
  numpy_params = jax.tree.map(np.asarray, params)
  epsilons = {group: list(spec.level_epsilons(group, use_sinkhorn)) for group in ("shared", *spec.views)}
  return ref.rqvae_forward(numpy_params, inputs, spec.views, spec.latent_dim, spec.beta,
                           spec.quant_loss_weight, epsilons, spec.sinkhorn_iters)


@pytest.mark.parametrize("mode", ["dual", "semantic", "collab"])
@pytest.mark.parametrize("use_sinkhorn", [False, True])
def test_forward_and_loss_match_numpy(mode, use_sinkhorn):
  spec, params, inputs = _params_and_inputs(mode)
  ours = _jit_forward(params, spec, {v: jnp.asarray(x) for v, x in inputs.items()}, use_sinkhorn=use_sinkhorn)
  expected = _reference(spec, params, inputs, use_sinkhorn)
  for name in ("loss", "recon_loss", "quant_loss"):
    np.testing.assert_allclose(float(ours[name]), expected[name], rtol=1e-4, err_msg=name)
  for view in spec.views:
    np.testing.assert_array_equal(np.asarray(ours["codes"][view]), expected["codes"][view])
    assert ours["codes"][view].shape == (32, spec.num_levels)
  if mode == "dual":
    np.testing.assert_array_equal(np.asarray(ours["codes"]["semantic"][:, :2]),
                                  np.asarray(ours["codes"]["collab"][:, :2]))
  if use_sinkhorn:  # the last specific level really is balanced differently from argmin
    plain = _reference(spec, params, inputs, False)
    assert any((expected["codes"][v][:, -1] != plain["codes"][v][:, -1]).any() for v in spec.views)


def test_masked_rows_do_not_change_the_loss():
  spec, params, inputs = _params_and_inputs()
  plain = _jit_forward(params, spec, {v: jnp.asarray(x) for v, x in inputs.items()})
  padded = {v: jnp.asarray(np.concatenate([x, np.full((8, x.shape[1]), 50.0, np.float32)])) for v, x in inputs.items()}
  masked = _jit_forward(params, spec, padded, jnp.arange(40) < 32)
  np.testing.assert_allclose(float(masked["loss"]), float(plain["loss"]), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(masked["codes"]["semantic"][:32]), np.asarray(plain["codes"]["semantic"]))


def _torch_reference_loss(params, inputs, spec):
  """The reference model's structure in torch: MLPs, STE, residual - STE output, mean VQ loss."""
  tensors = jax.tree.map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True), params)

  def mlp(layers, x):
    for i in range(len(layers)):
      x = x @ layers[f"layer_{i}"]["kernel"] + layers[f"layer_{i}"]["bias"]
      if i < len(layers) - 1:
        x = torch.relu(x)
    return x

  def vq(residual, codebook):
    distances = ((residual[:, None, :] - codebook[None]) ** 2).sum(-1)
    selected = codebook[distances.argmin(1)]
    loss = torch.mean((selected - residual.detach()) ** 2) + spec.beta * torch.mean((selected.detach() - residual) ** 2)
    return residual + (selected - residual).detach(), loss

  xs = {v: torch.tensor(inputs[v], dtype=torch.float64) for v in spec.views}
  z = torch.cat([mlp(tensors[f"{v}_encoder"], xs[v]) for v in spec.views], dim=1)
  residual, total, losses = z, 0, []
  for level in range(spec.num_shared_levels):
    quantized, loss = vq(residual, tensors["codebooks"]["shared"][level])
    residual, total = residual - quantized, total + quantized
    losses.append(loss)
  recon = 0
  for i, v in enumerate(spec.views):
    r, s = residual[:, i * spec.latent_dim:(i + 1) * spec.latent_dim], total[:, i * spec.latent_dim:(i + 1) * spec.latent_dim]
    for level in range(spec.num_specific_levels):
      quantized, loss = vq(r, tensors["codebooks"][v][level])
      r, s = r - quantized, s + quantized
      losses.append(loss)
    recon = recon + torch.mean((mlp(tensors[f"{v}_decoder"], s) - xs[v]) ** 2)
  total_loss = recon + spec.quant_loss_weight * torch.stack(losses).mean()
  total_loss.backward()
  return total_loss.item(), jax.tree.map(lambda t: t.grad.numpy() if t.grad is not None else np.zeros(t.shape),
                                         tensors)


def test_gradients_match_torch_straight_through_reference():
  spec, params, inputs = _params_and_inputs()
  loss, grads = jax.jit(jax.value_and_grad(lambda p: rqvae.forward(
      p, spec, {v: jnp.asarray(x) for v, x in inputs.items()}, use_sinkhorn=False)["loss"]))(params)
  torch_loss, torch_grads = _torch_reference_loss(params, inputs, spec)
  np.testing.assert_allclose(float(loss), torch_loss, rtol=1e-5)
  flat_ours = jax.tree_util.tree_leaves_with_path(grads)
  flat_torch = dict(jax.tree_util.tree_leaves_with_path(torch_grads))
  for path, value in flat_ours:
    np.testing.assert_allclose(np.asarray(value), flat_torch[path], rtol=1e-3, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  assert np.abs(np.asarray(grads["codebooks"]["shared"][1])).sum() > 0  # later levels learn too


def test_init_codebooks_uses_kmeans_of_each_levels_residual():
  spec, params, _ = _params_and_inputs()
  rng = np.random.default_rng(7)
  batch = {"semantic": jnp.asarray(rng.normal(size=(64, 12)), jnp.float32),
           "collab": jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)}
  params = rqvae.init_params(jax.random.PRNGKey(0), spec)
  initialized = rqvae.init_codebooks(jax.random.PRNGKey(1), params, spec, batch)
  z = np.concatenate([ref.mlp(jax.tree.map(np.asarray, params[f"{v}_encoder"]), batch[v]) for v in spec.views], 1)
  first = np.asarray(initialized["codebooks"]["shared"][0])
  random_centers = z[rng.choice(64, spec.codebook_size, replace=False)]
  assert ref.objective(z, first) < ref.objective(z, random_centers)
  # Lloyd fixed point: every centre is the mean of the residuals assigned to it.
  assignment = ref.squared_distances(z, first).argmin(1)
  for k in range(spec.codebook_size):
    np.testing.assert_allclose(first[k], z[assignment == k].mean(0), atol=1e-3)
  out = _jit_forward(initialized, spec, batch, use_sinkhorn=False)
  for view in spec.views:
    codes = np.asarray(out["codes"][view])
    assert all(len(np.unique(codes[:, level])) == spec.codebook_size for level in range(spec.num_levels))
  with pytest.raises(ValueError, match="codebook_size=8"):
    rqvae.init_codebooks(jax.random.PRNGKey(1), params, spec, {v: x[:5] for v, x in batch.items()})


def test_schedule_matches_reference_warmup_then_linear_decay():
  config = _tiny_config(epochs=10, warmup_epochs=2, learning_rate=1e-3)
  schedule = rqvae_train.make_schedule(config, steps_per_epoch=3)
  warmup, total = 6, 30
  for step in range(total + 1):
    expected = 1e-3 * (step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup)))
    np.testing.assert_allclose(float(schedule(step)), expected, atol=1e-9)
  constant = rqvae_train.make_schedule(_tiny_config(lr_schedule="constant", warmup_epochs=2), 3)
  assert float(constant(0)) == 0.0 and float(constant(100)) == pytest.approx(1e-3)


def test_defaults_equal_the_reference_settings():
  config = rqvae.identifiers_config()
  assert (config.mode, tuple(config.hidden_dims), config.latent_dim) == ("dual", (512, 256, 128, 64), 32)
  assert (config.num_shared_levels, config.num_specific_levels, config.codebook_size) == (2, 2, 256)
  assert (config.beta, config.quant_loss_weight, config.sinkhorn_epsilon, config.sinkhorn_iters) == (0.25, 1.0, 0.003, 50)
  assert (config.epochs, config.batch_size, config.learning_rate, config.weight_decay) == (500, 1024, 1e-3, 1e-5)
  assert (config.optimizer, config.lr_schedule, config.warmup_epochs, config.grad_clip_norm) == ("adamw", "linear", 50, 1.0)
  assert (config.eval_every_epochs, config.seed, config.resolve_rounds, config.kmeans_iters) == (10, 2024, 20, 100)
  spec = rqvae.spec_from_config(config, 384, 64)
  assert spec.level_epsilons("shared", True) == (0.0, 0.0)
  assert spec.level_epsilons("semantic", True) == spec.level_epsilons("collab", True) == (0.0, 0.003)
  params = rqvae.init_params(jax.random.PRNGKey(0), spec)
  dims = [params["semantic_encoder"][f"layer_{i}"]["kernel"].shape for i in range(5)]
  assert dims == [(384, 512), (512, 256), (256, 128), (128, 64), (64, 32)]
  assert params["codebooks"]["shared"].shape == (2, 256, 64)
  assert params["codebooks"]["collab"].shape == (2, 256, 32)
  kernel = np.asarray(params["collab_encoder"]["layer_0"]["kernel"])
  assert kernel.std() == pytest.approx((2 / (64 + 512)) ** 0.5, rel=0.05) and np.abs(kernel).max() > 2.5 * kernel.std()


def test_training_selects_lowest_collision_parameters_and_is_seeded():
  rng = np.random.default_rng(3)
  inputs = {"semantic": rng.normal(size=(150, 12)).astype(np.float32),
            "collab": rng.normal(size=(150, 6)).astype(np.float32)}
  config = _tiny_config()
  result = rqvae_train.train_rqvae(inputs, config, progress=False)
  assert [h["epoch"] for h in result.history] == [5, 10, 15, 20]
  assert result.history[-1]["loss"] < result.history[0]["loss"]
  rates = [h["collision_rate"] for h in result.history]
  assert result.best_collision_rate == min(rates)
  assert result.best_collision_epoch == result.history[int(np.argmin(rates))]["epoch"]
  spec = rqvae.spec_from_config(config, 12, 6)
  codes, _ = rqvae_train.encode_items(result.params, spec, inputs, chunk_size=64)
  assert rqvae_train.mean_collision_rate(codes) == pytest.approx(result.best_collision_rate)
  again = rqvae_train.train_rqvae(inputs, config, progress=False)
  assert [h["loss"] for h in again.history] == [h["loss"] for h in result.history]
