"""The paper's Electronics setup on a TPU v5e-64 slice (64 chips, 16 hosts), 128 rows per chip, bfloat16.

Effective batch 8192 as the reference. `gensar plan --config configs/tpu_v5e_64.py` compiles it for the
slice on any machine; launch with launch/tpu_pod.sh, which runs the plan first.
"""
from electronics import pod_config


# Fused attention with counter-hash dropout masks (which fused attention draws): the plan's train step moves 92
# instead of 154 GB per chip and step, 113 instead of 189 ms, MFU 56% instead of 37%, peak 10.6 instead of
# 14.3 GiB (results/plan/attention/tpu_v5e_64-{dense,fused}.json: the dense step with threefry masks, the
# recorded plan's, against this preset's; docs/pods.md). The other stages' figures in
# results/plan/tpu_v5e_64.json are from dense attention with threefry masks.
def get_config():
  config = pod_config("tpu_v5e_64", "v5e:8x8", 64, dropout_rng="hash")
  config.model.attention = "fused"
  return config
