"""Meshes, logical-axis shardings, sharded train step = one device, restore onto another mesh."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec

from gensar_jax import parallel
from gensar_jax.model.t5 import T5, T5Config, init_params
from gensar_jax.train import state as state_lib
from gensar_jax.train import step as step_lib
from gensar_jax.train.checkpoint import Checkpointer, abstract_like
from toy_data import toy_copy_dataset

VOCAB = 32
RULES = parallel.DEFAULT_LOGICAL_AXIS_RULES


def _tiny(**overrides):
  """One encoder and one decoder layer: compile time dominates these tests."""
  return T5Config.tiny(VOCAB, num_encoder_layers=1, num_decoder_layers=1, **overrides)


def _train_cfg(**overrides):
  cfg = state_lib.train_config()
  cfg.num_steps = 10
  cfg.update(overrides)
  return cfg


def _mesh(shape, num_devices=None):
  return parallel.make_mesh(shape, jax.devices()[:num_devices] if num_devices else None)


def _batch(seed=0, rows=8):
  return next(iter(toy_copy_dataset(VOCAB, rows, encoder_length=10, decoder_length=4, seed=seed)))


def _host(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _run_steps(mesh, model_cfg, train_cfg, batches):
  optimizer = state_lib.make_optimizer(train_cfg)
  state, shardings = state_lib.create_train_state(model_cfg, optimizer, mesh, RULES, jax.random.key(7))
  step = step_lib.make_train_step(model_cfg, train_cfg, optimizer, mesh, RULES, shardings)
  metrics = None
  for batch in batches:
    state, metrics = step(state, parallel.host_local_batch_to_global(batch, mesh, RULES))
  return state, step_lib.metrics_to_host(metrics)


def test_resolve_mesh_shape():
  assert parallel.resolve_mesh_shape({"data": -1, "fsdp": 1, "model": 2}, 8) == {"data": 4, "fsdp": 1, "model": 2}
  with pytest.raises(ValueError, match="at most one axis"):
    parallel.resolve_mesh_shape({"data": -1, "model": -1}, 8)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.resolve_mesh_shape({"data": -1, "model": 3}, 8)
  with pytest.raises(ValueError, match="product"):
    parallel.resolve_mesh_shape({"data": 2, "model": 2}, 8)


def test_make_mesh_auto_axes_and_missing_axes_filled():
  mesh = parallel.make_mesh({"model": 2, "data": -1})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  small = parallel.make_mesh({"data": 2}, jax.devices()[:2])
  assert dict(small.shape) == {"data": 2, "fsdp": 1, "model": 1}


def test_param_shardings_follow_logical_rules():
  mesh = _mesh({"data": 2, "fsdp": 2, "model": 2})
  cfg = _tiny()
  optimizer = state_lib.make_optimizer(_train_cfg())
  shardings = state_lib.state_shardings(cfg, optimizer, mesh, RULES)
  assert shardings.params["decoder"]["layers_0"]["mlp"]["wi"].spec == PartitionSpec("fsdp", "model")
  assert shardings.params["token_embedder"].spec == PartitionSpec("model", "fsdp")
  assert shardings.params["encoder"]["layers_0"]["attention"]["o"].spec == PartitionSpec("model", None, "fsdp")
  assert shardings.step.spec == PartitionSpec()
  # Adam moments are laid out like their parameters.
  mu = shardings.opt_state[1][0].mu
  assert mu["decoder"]["layers_0"]["mlp"]["wi"].spec == PartitionSpec("fsdp", "model")
  # A batch's leading axis is split over data and fsdp; conflicting uses of fsdp are dropped.
  assert parallel.batch_sharding(mesh, RULES, 3).spec == PartitionSpec(("data", "fsdp"), None, None)


def test_host_local_batch_to_global_single_process():
  mesh = _mesh({"data": 4, "model": 2})
  batch = _batch()
  global_batch = parallel.host_local_batch_to_global(batch, mesh, RULES)
  for key, value in batch.items():
    np.testing.assert_array_equal(np.asarray(global_batch[key]), value)
  assert global_batch["encoder_input_tokens"].sharding.spec == PartitionSpec(("data", "fsdp"), None)
  assert len(global_batch["encoder_input_tokens"].addressable_shards) == 8


@pytest.mark.slow
def test_sharded_step_equals_one_device():
  model_cfg = _tiny(dropout_rate=0.1)  # dropout masks must not depend on the layout
  train_cfg = _train_cfg()
  batches = [_batch(seed) for seed in (0, 1)]
  one_state, one_metrics = _run_steps(_mesh({"data": 1}, 1), model_cfg, train_cfg, batches[:1])
  sharded_state, sharded_metrics = _run_steps(_mesh({"data": 4, "fsdp": 1, "model": 2}), model_cfg, train_cfg,
                                              batches[:1])
  for a, b in zip(_host(one_state), _host(sharded_state)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  for key in ("loss", "accuracy", "tokens", "grad_norm"):
    np.testing.assert_allclose(one_metrics[key], sharded_metrics[key], rtol=1e-5)
  wi = sharded_state.params["decoder"]["layers_0"]["mlp"]["wi"]
  assert wi.sharding.spec == PartitionSpec("fsdp", "model") and len(wi.addressable_shards) == 8


@pytest.mark.slow
def test_gradient_accumulation_equals_full_batch():
  model_cfg = _tiny(dropout_rate=0.0)
  batch = _batch(3)
  batch["decoder_loss_weights"] = batch["decoder_loss_weights"] * (np.arange(8)[:, None] % 3 > 0)  # uneven weights
  mesh = _mesh({"data": 2}, 2)
  full, full_metrics = _run_steps(mesh, model_cfg, _train_cfg(), [batch])
  accumulated, acc_metrics = _run_steps(mesh, model_cfg, _train_cfg(grad_accum_steps=2), [batch])
  for a, b in zip(_host(full), _host(accumulated)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(full_metrics["loss"], acc_metrics["loss"], rtol=1e-5)


def test_restore_onto_a_different_mesh(tmp_path):
  model_cfg = _tiny()
  optimizer = state_lib.make_optimizer(_train_cfg())
  mesh_a = _mesh({"data": 4, "model": 2})
  state, _ = state_lib.create_train_state(model_cfg, optimizer, mesh_a, RULES, jax.random.key(3))
  checkpointer = Checkpointer(tmp_path, async_save=False)
  checkpointer.save(5, state, config={"note": "mesh a"})
  checkpointer.wait()

  batch = _batch(4)
  enc, dec = jnp.asarray(batch["encoder_input_tokens"]), jnp.asarray(batch["decoder_input_tokens"])
  reference = np.asarray(T5(model_cfg).apply({"params": jax.device_get(state.params)}, enc, dec))
  abstract = jax.eval_shape(lambda: state)
  for shape, count in (({"data": 2, "fsdp": 2, "model": 2}, None), ({"data": 1}, 1)):
    mesh_b = _mesh(shape, count)
    shardings = state_lib.state_shardings(model_cfg, optimizer, mesh_b, RULES)
    restored, config = checkpointer.restore(abstract_like(shardings, abstract), step=5)
    assert config == {"note": "mesh a"}
    assert int(restored.step) == 0
    for a, b in zip(_host(state), _host(restored)):
      np.testing.assert_array_equal(a, b)
    wi = restored.params["decoder"]["layers_0"]["mlp"]["wi"]
    assert wi.sharding.mesh.shape == mesh_b.shape
    with parallel.mesh_and_rules(mesh_b, RULES):
      logits = jax.jit(lambda p: T5(model_cfg).apply({"params": p}, enc, dec))(restored.params)
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5, rtol=1e-5)
  checkpointer.close()


def test_single_process_initialization_is_a_no_op(monkeypatch):
  for key in ("JAX_COORDINATOR_ADDRESS", "GENSAR_DISTRIBUTED", "SLURM_NTASKS", "SLURM_STEP_ID",
              "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(key, raising=False)
  assert parallel.maybe_initialize_distributed() is False
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    parallel.maybe_initialize_distributed()


def test_fresh_init_matches_init_params():
  model_cfg = _tiny()
  optimizer = state_lib.make_optimizer(_train_cfg())
  state, _ = state_lib.create_train_state(model_cfg, optimizer, _mesh({"data": 2, "model": 4}), RULES,
                                          jax.random.key(11))
  for a, b in zip(_host(state.params), _host(init_params(model_cfg, jax.random.key(11)))):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)  # same draws; sharded erf_inv may differ by an ulp
