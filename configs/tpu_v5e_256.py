"""The paper's Electronics setup on a full TPU v5e pod (v5e-256: 256 chips, 64 hosts), 32 rows per chip,
bfloat16.

Effective batch 8192 as the reference. `gensar plan --config configs/tpu_v5e_256.py` compiles it for
the slice on any machine; launch with launch/tpu_pod.sh, which runs the plan first.
"""
from electronics import pod_config


# Dropout masks from threefry, the generator its recorded plan (results/plan/tpu_v5e_256.json) compiled.
def get_config():
  return pod_config("tpu_v5e_256", "v5e:16x16", 256, dropout_rng="threefry")
