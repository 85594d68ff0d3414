"""The paper's Electronics setup on a 8-GPU node (80 GB cards): 1024 rows per GPU in 4 micro-batches of 256,
bfloat16. The plan found 1024 rows at once needing 148 GiB per GPU (results/plan/gpu_8x.json); 256 rows
need about a quarter. On 40 GB cards use --set train.grad_accum_steps=8.

Effective batch 8192 as the reference. Launch with launch/slurm_gpu.sbatch. `gensar plan --config
configs/gpu_8x.py` compiles it for 8 H100s on any machine (needs `pip install jax-cuda12-plugin`).
"""
from electronics import pod_config


# Dropout masks from threefry, the generator its recorded plan (results/plan/gpu_8x.json) compiled; the
# generators are not compared on the H100 (a gpu_8x train step takes tens of minutes to compile on a CPU).
def get_config():
  return pod_config("gpu_8x", "h100:8", 8, grad_accum_steps=4,   # 256 rows per GPU per micro-batch
                    eval_batch_size=32, dropout_rng="threefry")   # compiled for 8 H100s without a GPU   # `gensar plan` compiles for 8 H100s without a GPU (jax-cuda12-plugin)
