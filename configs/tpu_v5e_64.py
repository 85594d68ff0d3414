"""The paper's Electronics setup on a TPU v5e-64 slice (64 chips, 16 hosts), 128 rows per chip, bfloat16.

Effective batch 8192 as the reference. `gensar plan --config configs/tpu_v5e_64.py` compiles it for the
slice on any machine; launch with launch/tpu_pod.sh, which runs the plan first.
"""
from electronics import pod_config


# Dropout masks from threefry, the generator its recorded plan (results/plan/tpu_v5e_64.json) compiled.
def get_config():
  return pod_config("tpu_v5e_64", "v5e:8x8", 64, dropout_rng="threefry")
