"""The paper's Electronics setup on a TPU v4-32 slice (16 chips, 4 hosts), 512 rows per chip.

Effective batch 8192 as the reference. Launch with launch/tpu_pod.sh.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from electronics import get_config as electronics_config  # noqa: E402


def get_config():
  config = electronics_config()
  config.name = "tpu_v4_32"
  config.parallel.mesh_shape.update(dict(data=16, fsdp=1, model=1))
  config.train.batch_size = 8192
  config.train.bf16 = False
  config.eval.batch_size = 64
  return config
