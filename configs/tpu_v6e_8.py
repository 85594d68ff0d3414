"""The paper's Electronics setup on one TPU v6e-8 host (8 Trillium chips of 32 GB, a single VM): 1024
rows per chip in 8 micro-batches of 128, bfloat16. v6e has the lowest list price per bf16 FLOP; whether
that makes it the cheapest way to the paper's budget depends on whether the step is compute- or
HBM-bound: the tpu_v5e_64 plan finds it HBM-bound, where v5e gives more bandwidth per dollar (see
configs/tpu_v5e_8.py). Its own plan is results/plan/tpu_v6e_8.json.

Effective batch 8192 as the reference. `gensar plan --config configs/tpu_v6e_8.py` compiles it for the
slice on any machine; launch with launch/tpu_pod.sh (one worker), which runs the plan first.
"""
from electronics import pod_config


# Dropout masks from the counter hash: on v6e the plan's train step of 1+1 layers (this preset's rows and
# lengths) is 168.99 ms with it against 184.02 ms with threefry (23.7 against 26.0 TFLOP and 271 against 295
# GB per chip and step; results/plan/tpu_v6e_8.json, plan.dropout_compare_layers=1: a full-depth threefry
# step takes hours to compile on a CPU). Full depth, the hash step is 742 ms; a full-depth threefry plan of
# this preset (same jax and libtpu) estimated 843 ms.
#
# Fused attention: the plan's train step moves 817 instead of 1205 GB per chip and step, 505 instead of 742 ms,
# MFU 21% instead of 16%, peak 11.2 instead of 14.9 GiB (results/plan/attention/tpu_v6e_8-{dense,fused}.json,
# docs/pods.md); v6e's FLOP/s per byte of HBM bandwidth leaves its step memory-bound all the same.
def get_config():
  config = pod_config("tpu_v6e_8", "v6e:2x4", 8, grad_accum_steps=8,   # 128 rows per chip per micro-batch
                      dropout_rng="hash")
  config.model.attention = "fused"
  config.plan.dropout_compare_layers = 1   # the comparison's steps at 1+1 layers (see above)
  return config
