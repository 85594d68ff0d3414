"""The paper's Electronics setup on one TPU v5e-8 host (v5litepod-8: 8 chips of 16 GiB, a single VM): 1024
rows per chip in 8 micro-batches of 128 (the per-chip program of tpu_v5e_64), bfloat16.

The cheapest way to the paper's budget among the planned presets (README "Before you rent a pod"): the
roofline puts this model's train step on HBM bandwidth, where v5e has the most bandwidth per list-price
dollar; every v5e slice then costs about the same chip-hours, and the smallest whole host adds no
multi-host launch or gradient traffic between hosts. Effective batch 8192 as the reference.
`gensar plan --config configs/tpu_v5e_8.py` compiles it for the slice on any machine; launch with
launch/tpu_pod.sh (one worker), which runs the plan first.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from electronics import get_config as electronics_config  # noqa: E402

from gensar_jax.plan import plan_config  # noqa: E402


def get_config():
  config = electronics_config()
  config.name = "tpu_v5e_8"
  config.parallel.mesh_shape.update(dict(data=8, fsdp=1, model=1))
  config.train.batch_size = 8192
  config.train.bf16 = True
  config.train.grad_accum_steps = 8      # 128 rows per chip per micro-batch, as tpu_v5e_64
  config.eval.batch_size = 256
  config.plan = plan_config()
  config.plan.topology = "v5e:2x4"
  return config
