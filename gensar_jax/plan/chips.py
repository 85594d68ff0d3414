"""The accelerators a plan can target: published per-chip figures (`CHIPS` for TPUs, keyed by the device kind
the TPU compiler reports; `GPUS` by topology prefix, with the target description XLA's GPU compiler needs)."""
from __future__ import annotations

import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures of one accelerator generation (one *device* of the slice).

  peak_flops: dense bf16 FLOP/s; hbm_bytes: HBM capacity; hbm_bandwidth: bytes/s; ici_bandwidth:
  bidirectional inter-chip bytes/s per chip; usd_per_chip_hour: on-demand list price (us-central);
  tensorcores: TensorCores per chip (2 = megacore: the slice exposes one device per chip).
  """
  name: str
  peak_flops: float
  hbm_bytes: float
  hbm_bandwidth: float
  ici_bandwidth: float
  usd_per_chip_hour: float | None
  tensorcores: int = 1


# Keyed by the device_kind the TPU compiler reports. Sources (retrieved 2026):
#   v4:  cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s, two TensorCores
#        in megacore mode); ICI: 6 links x 50 GB/s (Jouppi et al., "TPU v4", ISCA 2023).
#   v5e: cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB at 819 GB/s, 400 GB/s bidirectional ICI).
#   v5p: cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GiB at 2765 GB/s, 1200 GB/s ICI, 2 cores).
#   v6e: cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB at 1638 GB/s, 800 GB/s ICI).
#   Prices: cloud.google.com/tpu/pricing, on-demand per chip-hour, us-central region.
CHIPS: dict[str, Chip] = {
    "TPU v4": Chip("v4", 275e12, 32 * GIB, 1200e9, 300e9, 3.22, tensorcores=2),
    "TPU v5 lite": Chip("v5e", 197e12, 16 * GIB, 819e9, 400e9, 1.20),
    "TPU v5": Chip("v5p", 459e12, 95 * GIB, 2765e9, 1200e9, 4.20, tensorcores=2),
    "TPU v6 lite": Chip("v6e", 918e12, 32e9, 1638e9, 800e9, 2.70),
}

# GPUs: XLA's GPU compiler compiles without a GPU given a target description (GpuTargetConfigProto, text):
# the device properties XLA's own spec file lists (openxla/xla xla/tools/hlo_opt/gpu_specs/h100_sxm.txtpb).
# Figures: NVIDIA H100 SXM datasheet (989 TFLOP/s dense bf16, 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s
# bidirectional); no list price (it varies by provider).
H100_TARGET_CONFIG = """gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84978434048 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
GPUS: dict[str, tuple[str, Chip]] = {
    "h100": (H100_TARGET_CONFIG, Chip("h100", 989e12, 84978434048, 3.35e12, 900e9, None)),
}

# Deviceless GPU compiles cannot autotune Triton GEMM tilings (small dots fail to tile): use cuBLAS GEMMs.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
