"""The paper's Electronics setup on one TPU v5e-8 host (v5litepod-8: 8 chips of 16 GiB, a single VM): 1024
rows per chip in 8 micro-batches of 128 (the per-chip program of tpu_v5e_64), bfloat16.

Why this is the cheapest preset for the paper's budget: the tpu_v5e_64 plan (results/plan/) puts the
train step on HBM bandwidth (bytes / bandwidth > FLOPs / peak), and among the chips in plan.CHIPS v5e
has the most HBM bandwidth per list-price dollar (v5p, v6e and v4 follow), so a step costs least on v5e;
any v5e slice then needs about the same chip-hours, and one host adds no multi-host launch and no
gradient traffic between hosts (it takes about 8 times the v5e-64's days). Its own plan was not run on
this project's 2-core machine before the change was handed in; run
`gensar plan --config configs/tpu_v5e_8.py` (launch/tpu_pod.sh runs it before launching).
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
