"""The paper's Electronics setup on a TPU v4-32 slice: 16 chips in megacore mode (16 devices of 32 GiB,
not 32 TensorCores), 4 hosts, 512 rows per device in 4 micro-batches of 128, bfloat16 compute.

Effective batch 8192 as the reference. `gensar plan --config configs/tpu_v4_32.py` compiles it for the
slice on any machine. The earlier preset (float32, 512 rows per device at once) does not fit: even in
bfloat16, 512 rows on one TensorCore made the TPU compiler ask for 59 GB of temporaries against the
core's 15.25 GB (attention probabilities of 512-token inputs and the 33.5k-token logits are the bulk,
about 0.1 GB per row); launch with launch/tpu_pod.sh, which runs the plan first.
"""
from electronics import pod_config


# Dropout masks from threefry, the generator its recorded plan (results/plan/tpu_v4_32.json) compiled; the
# generators are not compared on v4 (a v4-32 train step takes tens of minutes to compile on a CPU).
def get_config():
  return pod_config("tpu_v4_32", "v4:2x2x4", 16, grad_accum_steps=4,   # 128 rows per device (64 per TensorCore)
                    eval_batch_size=64, dropout_rng="threefry")
