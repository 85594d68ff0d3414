"""The paper's Electronics setup on one TPU v5e-8 host (v5litepod-8: 8 chips of 16 GiB, a single VM): 1024
rows per chip in 8 micro-batches of 128 (the per-chip program of tpu_v5e_64), bfloat16.

Why this is the cheapest preset for the paper's budget: the tpu_v5e_64 plan (results/plan/) puts the
train step on HBM bandwidth (bytes / bandwidth > FLOPs / peak), and among the chips in plan.CHIPS v5e
has the most HBM bandwidth per list-price dollar (v5p, v6e and v4 follow), so a step costs least on v5e;
its plan (results/plan/tpu_v5e_8.json) costs the same as the v5e-64's within the estimate's precision and
less than v5e-256 or v4-32, and one host needs no multi-host launch (about half a day). Its train step is
tight (over 90% of HBM): `gensar plan` before launching (launch/tpu_pod.sh runs it).
"""
from electronics import pod_config


# Dropout masks from the counter hash: on v5e the plan's train step is 1.5274 s with it against 1.5364 s with
# threefry (99.7 against 110.8 TFLOP and 1240 against 1248 GB per chip and step; results/plan/dropout_rng/
# tpu_v5e_8.json, both compiled at this preset's full shapes).
# Fused attention (the probabilities stay on chip; it draws the hash masks): the plan's train step moves 746
# instead of 1240 GB per chip and step, 0.92 instead of 1.53 s, MFU 55% instead of 33%, peak 11.2 instead of
# 14.6 GiB (results/plan/attention/tpu_v5e_8-{dense,fused}.json, docs/pods.md).
def get_config():
  config = pod_config("tpu_v5e_8", "v5e:2x4", 8, grad_accum_steps=8,   # 128 rows per chip per micro-batch
                      dropout_rng="hash")
  config.model.attention = "fused"
  return config
