"""Two JAX processes (jax.distributed on 127.0.0.1, one CPU device each) train like one process.

The test starts `launch/local_multiprocess.py`, which runs this file in worker mode twice. Each
worker feeds its half of every global batch through the full training loop (sharded step, Orbax
checkpoint written by both processes); process 0 writes the final params. A single-process run on
the whole batches must give the same params.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
VOCAB, BATCH, STEPS = 24, 8, 2


def _setup():
  import ml_collections

  from gensar_jax import parallel
  from gensar_jax.model.t5 import T5Config
  from gensar_jax.train import state as state_lib
  train_cfg = state_lib.train_config()
  train_cfg.num_steps = 10
  train_cfg.log_every = 1
  train_cfg.async_checkpointing = False
  config = ml_collections.ConfigDict({"train": train_cfg, "parallel": parallel.parallel_config()})
  model_cfg = T5Config.tiny(VOCAB, num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1)
  return config, model_cfg


def _flat_params(params):
  import jax
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return {jax.tree_util.keystr(path): np.asarray(value) for path, value in leaves}


def worker(out_dir: str) -> None:
  from gensar_jax import parallel
  assert parallel.maybe_initialize_distributed(), "expected the launcher's JAX_COORDINATOR_ADDRESS"
  import jax
  from jax.experimental import multihost_utils

  from gensar_jax.train.loop import train
  from toy_data import toy_copy_dataset
  assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.device_count())
  config, model_cfg = _setup()
  batches = iter(toy_copy_dataset(VOCAB, BATCH, seed=3, process_index=jax.process_index(),
                                  process_count=jax.process_count()))
  result = train(config, model_cfg, batches, STEPS, Path(out_dir) / "work")
  params = multihost_utils.process_allgather(result.state.params, tiled=True)
  if jax.process_index() == 0:
    np.savez(Path(out_dir) / "params.npz", **_flat_params(params))


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  command = [sys.executable, str(ROOT / "launch" / "local_multiprocess.py"), "--num_processes", "2",
             "--devices_per_process", "1", "--timeout", "400", "--log_dir", str(tmp_path / "logs"), "--",
             sys.executable, str(Path(__file__).resolve()), "worker", str(tmp_path)]
  completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=450)
  assert completed.returncode == 0, completed.stderr[-8000:]
  assert (tmp_path / "work" / "checkpoints" / str(STEPS)).is_dir()

  import jax

  from gensar_jax import parallel
  from gensar_jax.train.loop import train
  from toy_data import toy_copy_dataset
  config, model_cfg = _setup()
  mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
  single = train(config, model_cfg, iter(toy_copy_dataset(VOCAB, BATCH, seed=3)), STEPS, tmp_path / "single",
                 mesh=mesh)
  expected = _flat_params(single.state.params)
  with np.load(tmp_path / "params.npz") as got:
    assert sorted(got.files) == sorted(expected)
    for key, value in expected.items():
      np.testing.assert_allclose(got[key], value, atol=1e-5, rtol=1e-5, err_msg=key)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
  worker(sys.argv[2])
