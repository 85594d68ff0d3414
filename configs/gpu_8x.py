"""The paper's Electronics setup on a 8-GPU node (80 GB cards): 1024 rows per GPU in 4 micro-batches of 256,
bfloat16. The plan found 1024 rows at once needing 148 GiB per GPU (results/plan/gpu_8x.json); 256 rows
need about a quarter. On 40 GB cards use --set train.grad_accum_steps=8.

Effective batch 8192 as the reference. Launch with launch/slurm_gpu.sbatch. `gensar plan --config
configs/gpu_8x.py` compiles it for 8 H100s on any machine (needs `pip install jax-cuda12-plugin`).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from electronics import get_config as electronics_config  # noqa: E402

from gensar_jax.plan import plan_config  # noqa: E402


def get_config():
  config = electronics_config()
  config.name = "gpu_8x"
  config.parallel.mesh_shape.update(dict(data=8, fsdp=1, model=1))
  config.train.batch_size = 8192
  config.train.bf16 = True
  config.train.grad_accum_steps = 4      # 256 rows per GPU per micro-batch
  config.eval.batch_size = 32
  config.plan = plan_config()
  config.plan.topology = "h100:8"   # `gensar plan` compiles for 8 H100s without a GPU (jax-cuda12-plugin)
  return config
