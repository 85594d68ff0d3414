"""The paper's Electronics setup on a TPU v5e-64 slice (64 chips, 16 hosts), 128 rows per chip, bfloat16.

Effective batch 8192 as the reference. `gensar plan --config configs/tpu_v5e_64.py` compiles it for the
slice on any machine; launch with launch/tpu_pod.sh, which runs the plan first.
"""
from electronics import pod_config


# Dropout masks from threefry: the hash is the cheaper generator on v5e (1.5274 s against 1.5364 s per step in
# results/plan/dropout_rng/tpu_v5e_8.json) but cannot run here: 8192 rows per micro-batch make attention-dropout
# masks of 8192 x 8 x 512 x 512 elements, over the hash's 2**32 (the tpu_v5e_64 plan records the error).
def get_config():
  return pod_config("tpu_v5e_64", "v5e:8x8", 64)
