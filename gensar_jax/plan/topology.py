"""Where a plan compiles: the slice's compile devices without hardware (libtpu's topology description, or the CUDA
plugin's for GPUs), its hosts and the config's mesh on those devices."""
from __future__ import annotations

import os

import jax
import ml_collections

from gensar_jax import parallel
from gensar_jax.plan.chips import CHIPS, GPUS, Chip

# libtpu looks for Cloud TPU VM metadata when it loads; on any other machine that only prints warnings.
LIBTPU_QUIET_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-1", "TPU_WORKER_ID": "0",
                    "TPU_WORKER_HOSTNAMES": "localhost", "TPU_STDERR_LOG_LEVEL": "3", "TPU_MIN_LOG_LEVEL": "3",
                    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}  # compile-only: no hardware to guard


class LibtpuMissing(ValueError):
  """libtpu (the TPU compiler) is not installed: `pip install -e ".[tpu]"`."""


def quiet_libtpu() -> None:
  """Sets libtpu's metadata variables (unless already set) so it does not look for a TPU VM."""
  for key, value in LIBTPU_QUIET_ENV.items():
    os.environ.setdefault(key, value)


def libtpu_available() -> tuple[bool, str]:
  """(True, version) when libtpu is importable, else (False, why)."""
  try:
    from importlib.metadata import version
    return True, version("libtpu")
  except Exception as e:  # noqa: BLE001 -- any failure means "not installed"
    return False, f"libtpu is not installed ({type(e).__name__}); pip install -e '.[tpu]'"


def topology_devices(topology: str) -> tuple[list, Chip]:
  """The compile devices of a slice `topology` (e.g. "v5e:8x8", "v4:2x2x4") and its chip figures.

  The topology description lists one device per TensorCore. Chips with two (v4, v5p) run in megacore
  mode: the slice exposes one device per chip (a v4-32 is 16 devices of 32 GiB, not 32), while the TPU
  compiler targets single TensorCores (half the chip's HBM each); `plan_mesh` splits each megacore
  device's rows over its two cores, and `analyze` reports per chip.
  """
  if topology.partition(":")[0] in GPUS:
    return gpu_topology_devices(topology)
  ok, why = libtpu_available()
  if not ok:
    raise LibtpuMissing(f"gensar plan compiles for TPU without a TPU and needs libtpu: {why}")
  quiet_libtpu()
  from jax.experimental import topologies
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  except Exception as e:  # noqa: BLE001 -- libtpu's error text is the useful part
    raise ValueError(f"topology {topology!r}: libtpu cannot describe it ({e}); expected e.g. 'v5e:8x8', "
                     "'v4:2x2x4', 'v5p:2x2x4', 'v6e:4x4'") from None
  devices = list(desc.devices)
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise ValueError(f"topology {topology!r}: no chip figures for device kind {kind!r} (known: {sorted(CHIPS)})")
  return devices, CHIPS[kind]


def gpu_topology_devices(topology: str) -> tuple[list, Chip]:
  """Compile-only GPU devices for "h100:8" (one node of 8) or "h100:2x8" (2 nodes of 8), via the CUDA
  PJRT plugin (`pip install jax-cuda12-plugin==<jax version>`: no GPU, driver or CUDA libraries needed)."""
  import importlib.util
  kind, _, shape = topology.partition(":")
  nodes, _, per_node = shape.rpartition("x")
  if not per_node.isdigit() or (nodes and not nodes.isdigit()):
    raise ValueError(f"GPU topology {topology!r}: expected '{kind}:GPUS' or '{kind}:NODESxGPUS', e.g. '{kind}:8'")
  if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
    raise LibtpuMissing(f"GPU topology {topology!r} needs the CUDA compiler plugin: pip install "
                        f"jax-cuda12-plugin=={jax.__version__} (no GPU or CUDA libraries needed)")
  from jax.experimental import topologies
  target, chip = GPUS[kind]
  desc = topologies.get_topology_desc(platform="cuda", topology=f"1x{nodes or 1}x{per_node}", target_config=target)
  return list(desc.devices), chip


def slice_hosts(topology: str, chips: int) -> int:
  """Hosts (VMs, one process each) of a slice: TPU slices of up to 8 chips are one VM (v4-8: 4 chips,
  v5e/v6e-8: 8), larger ones have 4 chips per host; GPU topologies name their nodes ("h100:2x8")."""
  if topology.partition(":")[0] in GPUS:
    nodes = topology.partition(":")[2].rpartition("x")[0]
    return int(nodes) if nodes else 1
  return 1 if chips <= 8 else chips // 4


def plan_mesh(config: ml_collections.ConfigDict, devices: list, chip: Chip) -> tuple[jax.sharding.Mesh, dict]:
  """(compile mesh, the config's mesh shape on the slice's exposed devices).

  The config's `parallel.mesh_shape` must fit the devices the slice exposes (one per chip); on
  megacore chips the compile mesh has `chip.tensorcores` times the data axis, one entry per core.
  """
  exposed = len(devices) // chip.tensorcores
  try:
    shape = parallel.resolve_mesh_shape(parallel.full_mesh_shape(config.parallel.mesh_shape), exposed)
  except ValueError as e:
    raise ValueError(f"parallel.mesh_shape {dict(config.parallel.mesh_shape)} does not fit the slice's {exposed} "
                     f"devices: {e}") from None
  compile_shape = dict(shape, data=shape["data"] * chip.tensorcores)
  return parallel.make_mesh(compile_shape, devices), shape

