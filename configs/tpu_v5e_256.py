"""The paper's Electronics setup on a full TPU v5e pod (v5e-256: 256 chips, 64 hosts), 32 rows per chip,
bfloat16.

Effective batch 8192 as the reference. `gensar plan --config configs/tpu_v5e_256.py` compiles it for
the slice on any machine; launch with launch/tpu_pod.sh, which runs the plan first.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from electronics import get_config as electronics_config  # noqa: E402

from gensar_jax.plan import plan_config  # noqa: E402


def get_config():
  config = electronics_config()
  config.name = "tpu_v5e_256"
  config.parallel.mesh_shape.update(dict(data=256, fsdp=1, model=1))
  config.train.batch_size = 8192
  config.train.bf16 = True
  config.eval.batch_size = 256
  config.plan = plan_config()
  config.plan.topology = "v5e:16x16"
  return config
