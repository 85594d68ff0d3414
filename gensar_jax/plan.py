"""`gensar plan`: compile a config's programs for its TPU slice on any machine, before renting it.

Deviceless ahead-of-time compilation: `jax.experimental.topologies.get_topology_desc` (libtpu, from
`pip install -e ".[tpu]"`) describes the slice's devices without hardware; the config's mesh is built on
them with `parallel.make_mesh` and the real programs are lowered with abstract inputs
(`jax.ShapeDtypeStruct` with their `NamedSharding`s) and compiled by the TPU compiler:

  - `train_step`: `train.step.make_train_step` at the global batch, sequence lengths, dtype and
    optimizer state of the config;
  - `beam_search_sampled` / `beam_search_full`: the validation/eval constrained beam search
    (`decode.beam_search._search`) over per-query candidate tries (target + negatives) and over the
    catalogue trie of `plan.num_items` items (random codes of the config's identifier shape);
  - `doc2query_sampling`: `decode.sampling._generate` as the doc2query stage calls it (one device).

For each program: per-device memory (`memory_analysis`), FLOPs and bytes (`cost_analysis`), the
collectives of the optimized HLO, and a roofline step time from the chip figures in `CHIPS`; then the
training budget (steps, days, chip-hours, list price). Nothing is allocated: every input is abstract.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gensar_jax import parallel
from gensar_jax.config import section_with_defaults
from gensar_jax.data.tokenizer import BEHAVIOUR_TOKENS, levels_from_config
from gensar_jax.io_utils import write_json
from gensar_jax.model.t5 import T5, T5Config, init_decoder_cache, init_params, t5_config_from_section

log = logging.getLogger(__name__)

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

# libtpu looks for Cloud TPU VM metadata when it loads; on any other machine that only prints warnings.
LIBTPU_QUIET_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-1", "TPU_WORKER_ID": "0",
                    "TPU_WORKER_HOSTNAMES": "localhost", "TPU_STDERR_LOG_LEVEL": "3", "TPU_MIN_LOG_LEVEL": "3",
                    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}  # compile-only: no hardware to guard

class LibtpuMissing(ValueError):
  """libtpu (the TPU compiler) is not installed: `pip install -e ".[tpu]"`."""


PROGRAMS = ("train_step", "beam_search_sampled", "beam_search_full", "doc2query_sampling")

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def plan_config() -> ml_collections.ConfigDict:
  """Defaults of the `plan` config section (the pod presets set `topology`)."""
  c = ml_collections.ConfigDict()
  c.topology = ""                 # e.g. "v5e:8x8" (64 chips); `gensar plan --topology` overrides
  # The paper's Electronics counts (METHOD.md section 5), used when <workdir>/prepare/stats.json is absent.
  c.num_items = 62_882
  c.rec_train_rows = 930_387
  c.search_train_rows = 698_802
  c.num_candidates = 100          # sampled protocol: target + 99 negatives
  c.tight_fraction = 0.9          # a program above this share of HBM is reported as tight
  return c


# ------------------------------------------------------------------------------------------ topology

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


# ------------------------------------------------------------------------------------------ analysis

_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64|c64|c128)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(" + "|".join(COLLECTIVE_KINDS) +
                          r")(-start|-done)?\(", re.M)


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO result type, e.g. "(f32[8,4]{1,0}, bf16[2])" -> 132."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    total += _BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _group_size(line: str, num_devices: int) -> int:
  """Devices per replica group of a collective's HLO line (iota `[G,S]<=[N]` or explicit `{{..},..}`)."""
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if iota:
    return int(iota.group(2))
  explicit = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if explicit and explicit.group(1):
    return len(explicit.group(1).split(","))
  pairs = re.search(r"source_target_pairs=\{(.*?)\}\s*[,}]", line)
  if pairs:
    return 2
  return num_devices


def collective_traffic(kind: str, result_bytes: int, group: int) -> float:
  """Bytes one device sends for a collective whose result is `result_bytes` (ring algorithms).

  all-reduce 2(n-1)/n of the array; all-gather (n-1)/n of the gathered result; reduce-scatter (n-1)
  times its shard result; all-to-all (n-1)/n; collective-permute the whole result.
  """
  n = max(group, 1)
  if n == 1:
    return 0.0
  factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "reduce-scatter": float(n - 1),
            "all-to-all": (n - 1) / n, "collective-permute": 1.0}[kind]
  return factor * result_bytes


def parse_collectives(hlo_text: str, num_devices: int) -> list[dict]:
  """Collectives of an optimized HLO module: [{kind, count, bytes, traffic_bytes}] per kind.

  `bytes` sums the result arrays; `traffic_bytes` what one device sends (see `collective_traffic`).
  Asynchronous pairs count once (at their `-done`, whose result is the output). Collectives inside a
  while loop are counted once (as XLA's cost analysis counts loop bodies).
  """
  out: dict[str, dict] = {}
  lines = hlo_text.splitlines()
  for line in lines:
    match = _INSTRUCTION.match(line)
    if not match or match.group(3) == "-start":
      continue
    result, kind = match.group(1), match.group(2)
    size = shape_bytes(result)
    group = _group_size(line, num_devices)
    if match.group(3) == "-done":
      start = re.search(r"\(\s*%?([\w.\-]+)", line[match.end() - 1:])
      start_line = next((l for l in lines if start and re.match(rf"^\s*(?:ROOT\s+)?%?{re.escape(start.group(1))}\s*=",
                                                                  l)), "")
      group = _group_size(start_line, num_devices) if start_line else group
    entry = out.setdefault(kind, {"kind": kind, "count": 0, "bytes": 0, "traffic_bytes": 0.0})
    entry["count"] += 1
    entry["bytes"] += size
    entry["traffic_bytes"] += collective_traffic(kind, size, group)
  return sorted(out.values(), key=lambda e: -e["bytes"])


def count_while_loops(hlo_text: str) -> int:
  return len(re.findall(r"\bwhile\(", hlo_text))


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):     # older jax: one dict per program
    cost = cost[0] if cost else {}
  return dict(cost or {})


def memory_figures(compiled) -> dict:
  """Per-device bytes: arguments, outputs, aliased (donated), temporaries, generated code and peak.

  peak = arguments + outputs - aliased + temporaries + generated code (what the device holds while
  the program runs).
  """
  m = compiled.memory_analysis()
  figures = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
             "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
             "code_bytes": int(m.generated_code_size_in_bytes)}
  figures["peak_bytes"] = (figures["argument_bytes"] + figures["output_bytes"] - figures["alias_bytes"]
                           + figures["temp_bytes"] + figures["code_bytes"])
  return figures


def roofline(flops: float, hbm_bytes: float, ici_bytes: float, chip: Chip) -> dict:
  """Step-time estimate of one device: max(FLOPs / peak, bytes / HBM bandwidth) + ICI traffic / ICI
  bandwidth (collectives assumed not overlapped with compute: a conservative choice)."""
  compute, memory = flops / chip.peak_flops, hbm_bytes / chip.hbm_bandwidth
  ici = ici_bytes / chip.ici_bandwidth
  seconds = max(compute, memory) + ici
  return {"compute_s": compute, "hbm_s": memory, "ici_s": ici, "step_s": seconds,
          "bound": "compute" if compute >= memory else "memory",
          "mfu": compute / seconds if seconds > 0 else 0.0}


def analyze(compiled, chip: Chip, num_devices: int, repeat: float = 1.0, per_chip: int = 1,
            fallback_cost: Callable[[], dict] | None = None) -> dict:
  """Memory, cost, collectives and roofline of one compiled program, per chip.

  num_devices: compile devices (TensorCores). repeat: how many times the program's while-loop body
  really runs (1 = no loop; XLA counts a body once); FLOPs, bytes and collective traffic are scaled
  by it. per_chip: compile devices per chip (2 on megacore chips: both cores' figures are summed).
  fallback_cost: per-device cost when the compiler gives none (XLA's GPU compiler): see `cpu_cost`.
  """
  hlo = compiled.as_text()
  cost = _cost(compiled)
  source = "XLA cost analysis of the compiled program"
  if "flops" not in cost and fallback_cost is not None:
    cost, source = fallback_cost(), ("XLA CPU cost analysis of the unoptimized global program / devices "
                                     "(no fusion: bytes are an upper bound)")
  collectives = parse_collectives(hlo, num_devices)
  flops = float(cost.get("flops", 0.0)) * repeat * per_chip
  hbm = float(cost.get("bytes accessed", 0.0)) * repeat * per_chip
  ici = sum(c["traffic_bytes"] for c in collectives) * repeat * per_chip
  memory = {k: v * per_chip for k, v in memory_figures(compiled).items()}
  return {"memory": memory, "hbm_capacity_bytes": chip.hbm_bytes,
          "hbm_fraction": memory["peak_bytes"] / chip.hbm_bytes, "fits": memory["peak_bytes"] <= chip.hbm_bytes,
          "flops": flops, "bytes_accessed": hbm, "ici_traffic_bytes": ici, "collectives": collectives,
          "while_loops": count_while_loops(hlo), "loop_repeat": repeat, "cost_source": source,
          "xla_optimal_seconds": float(cost["optimal_seconds"]) * repeat if "optimal_seconds" in cost else None,
          "roofline": roofline(flops, hbm, ici, chip)}


def cpu_cost(lower_on: Callable[[Any], Any], num_devices: int) -> dict:
  """Per-device FLOPs and bytes of a program from XLA's CPU cost analysis of its unoptimized global
  HLO (lowered on one CPU device, nothing compiled), divided by the devices that share the work."""
  cpu = jax.devices("cpu")[0]
  cost = dict(lower_on(cpu).cost_analysis() or {})
  return {"flops": float(cost.get("flops", 0.0)) / num_devices,
          "bytes accessed": float(cost.get("bytes accessed", 0.0)) / num_devices}


# Deviceless GPU compiles cannot autotune Triton GEMM tilings (small dots fail to tile): use cuBLAS GEMMs.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def _timed_compile(name: str, lower: Callable[[], Any], options: dict | None = None) -> tuple[Any, float]:
  t0 = time.perf_counter()
  log.info("plan: compiling %s ...", name)
  compiled = lower().compile(compiler_options=options) if options else lower().compile()
  seconds = time.perf_counter() - t0
  log.info("plan: %s compiled in %.1fs", name, seconds)
  return compiled, seconds


# ------------------------------------------------------------------------------------------ programs

def vocab_size(config: ml_collections.ConfigDict) -> int:
  """The GenSAR model's vocabulary: SentencePiece pieces + behaviour tokens + one token per level and code
  (`data.tokenizer.GenSARTokenizer`), with `data.vocab_size` pieces (SentencePiece's upper bound)."""
  levels, _, _ = levels_from_config(config.identifiers)
  return int(config.data.vocab_size) + len(BEHAVIOUR_TOKENS) + len(levels) * int(config.identifiers.codebook_size)


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings` (same structure)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def train_batch_spec(batch: int, input_len: int, target_len: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The train step's batch: int32 tokens [B, S] / [B, T], float32 loss weights [B, T]."""
  return {"encoder_input_tokens": jax.ShapeDtypeStruct((batch, input_len), jnp.int32),
          "decoder_input_tokens": jax.ShapeDtypeStruct((batch, target_len), jnp.int32),
          "decoder_target_tokens": jax.ShapeDtypeStruct((batch, target_len), jnp.int32),
          "decoder_loss_weights": jax.ShapeDtypeStruct((batch, target_len), jnp.float32)}


def lower_train_step(model_cfg: T5Config, train_cfg: ml_collections.ConfigDict, mesh, rules, batch: int,
                     input_len: int, target_len: int):
  """`make_train_step(...).jitted.lower(...)` with abstract state and batch: the program a run compiles."""
  from gensar_jax.train import state as state_lib
  from gensar_jax.train import step as step_lib
  model_cfg = state_lib.model_config_for_training(model_cfg, train_cfg)
  optimizer = state_lib.make_optimizer(train_cfg)
  shardings = state_lib.state_shardings(model_cfg, optimizer, mesh, rules)
  shapes = jax.eval_shape(lambda: _fresh_state(model_cfg, optimizer))
  state = abstract(shapes, shardings)
  batch_sharding = parallel.batch_sharding(mesh, rules, 2)
  batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                for k, v in train_batch_spec(batch, input_len, target_len).items()}
  step = step_lib.make_train_step(model_cfg, train_cfg, optimizer, mesh, rules, shardings)
  with parallel.mesh_and_rules(mesh, rules):
    return step.jitted.lower(state, batch_spec)


def _fresh_state(model_cfg: T5Config, optimizer):
  from gensar_jax.train.state import TrainState
  params = init_params(model_cfg, jax.random.key(0))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def abstract_params(model_cfg: T5Config, mesh, rules) -> Any:
  """The model's float32 parameters, abstract, laid out by the logical rules (as during training)."""
  from gensar_jax.model.t5 import param_logical_axes
  shapes = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
  return abstract(shapes, parallel.logical_to_shardings(param_logical_axes(model_cfg), mesh, rules))


def synthetic_tries(num_items: int, num_levels: int, codebook_size: int, batch: int, num_candidates: int,
                    offset: int, seed: int = 0):
  """(catalogue trie, per-query candidate tries) over random codes int[num_items, num_levels]: the table
  shapes of a catalogue of that size (real codes are less uniform; the shapes are of the same order)."""
  from gensar_jax.decode import trie as trie_lib
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, codebook_size, (num_items, num_levels))
  offsets = [offset + level * codebook_size for level in range(num_levels)]
  catalogue = trie_lib.build_catalogue_trie(codes, offset - 1, offsets, codebook_size)
  candidates = np.stack([rng.choice(num_items, num_candidates, replace=False) for _ in range(batch)])
  per_query = trie_lib.build_candidate_tries(candidates, codes, offset - 1, offsets, codebook_size)
  return catalogue, per_query


def lower_beam_search(model_cfg: T5Config, params, tables, mesh, batch: int, input_len: int, num_beams: int):
  """`beam_search._search.lower(...)`: queries over the mesh's data axis, tables laid out as
  `constrained_beam_search` lays them (per-query tables with the queries, a shared trie replicated)."""
  from gensar_jax.decode import beam_search
  by_query = NamedSharding(mesh, PartitionSpec(beam_search.DATA_AXIS))
  replicated = parallel.replicated(mesh)
  per_query = by_query if tables.num_tries == batch and batch > 1 else replicated
  table_shardings = jax.tree.map(lambda _: replicated, tables).replace(
      child_codes=(per_query,) * tables.num_levels, child_starts=(per_query,) * tables.num_levels,
      leaf_item_ptr=per_query, leaf_items=per_query, behaviour_token=replicated, token_offsets=replicated)
  abstract_tables = abstract(jax.tree.map(np.asarray, tables), table_shardings)
  tokens = jax.ShapeDtypeStruct((batch, input_len), jnp.int32, sharding=by_query)
  return beam_search._search.lower(params, tokens, abstract_tables, config=model_cfg, num_beams=num_beams)


def _sampling_args(cfg: ml_collections.ConfigDict) -> dict:
  s = cfg.sampling
  return dict(max_length=int(cfg.max_query_len), num_samples=int(cfg.num_pseudo_queries),
              greedy=s.method == "greedy", temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p))


def lower_sampling(model_cfg: T5Config, doc2query_cfg: ml_collections.ConfigDict, device):
  """`sampling._generate.lower(...)` on one device, as the doc2query stage runs it (no mesh)."""
  from gensar_jax.decode import sampling
  mesh = parallel.make_mesh({"data": 1}, [device])
  params = abstract_params(model_cfg, mesh, ())
  batch = int(doc2query_cfg.sampling.batch_size)
  tokens = jax.ShapeDtypeStruct((batch, int(doc2query_cfg.max_input_len)), jnp.int32,
                                sharding=parallel.replicated(mesh))
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(mesh))
  return sampling._generate.lower(params, tokens, rng, config=model_cfg, **_sampling_args(doc2query_cfg))


def lower_sampling_step(model_cfg: T5Config, doc2query_cfg: ml_collections.ConfigDict, device):
  """One iteration of the sampling loop (decoder step + filtered categorical draw) at the same shapes:
  XLA's cost analysis counts `_generate`'s while-loop body once, this measures what each token adds."""
  from gensar_jax.decode.sampling import filter_logits
  mesh = parallel.make_mesh({"data": 1}, [device])
  rep = parallel.replicated(mesh)
  params = abstract_params(model_cfg, mesh, ())
  batch, hyps = int(doc2query_cfg.sampling.batch_size), int(doc2query_cfg.num_pseudo_queries)
  length, max_length = int(doc2query_cfg.max_input_len), int(doc2query_cfg.max_query_len)
  dtype = model_cfg.compute_dtype
  kv = jax.ShapeDtypeStruct((batch, length, model_cfg.num_heads, model_cfg.d_kv), dtype, sharding=rep)
  cross_kv = tuple((kv, kv) for _ in range(model_cfg.num_decoder_layers))
  cache = abstract(jax.eval_shape(lambda: init_decoder_cache(model_cfg, batch, hyps, max_length, dtype=dtype)),
                   jax.tree.map(lambda _: rep, jax.eval_shape(
                       lambda: init_decoder_cache(model_cfg, batch, hyps, max_length, dtype=dtype))))
  mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_, sharding=rep)
  last = jax.ShapeDtypeStruct((batch, hyps), jnp.int32, sharding=rep)
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
  s = doc2query_cfg.sampling

  def body(params, cross_kv, mask, last, cache, rng):
    logits, cache = T5(model_cfg).apply({"params": params}, cross_kv, mask, last, jnp.int32(1), cache,
                                        method=T5.decode_step)
    chosen = jax.random.categorical(rng, filter_logits(logits, float(s.temperature), int(s.top_k), float(s.top_p)))
    return chosen, jax.nn.log_softmax(logits, axis=-1).max(axis=-1), cache

  return jax.jit(body).lower(params, cross_kv, mask, last, cache, rng)


# ------------------------------------------------------------------------------------------ budget

def epoch_examples(config: ml_collections.ConfigDict, plan_cfg: ml_collections.ConfigDict,
                   workdir: Path | None) -> tuple[int, str]:
  """Examples per training epoch of the task mixture (`tasks.sizes`; -1 = every training row of the
  task) and where the row counts came from (the prepared dataset's stats, else the paper's counts)."""
  from gensar_jax.io_utils import read_json
  stats_path = Path(workdir) / "prepare" / "stats.json" if workdir else None
  if stats_path is not None and stats_path.exists():
    stats = read_json(stats_path)
    rec, search, source = int(stats["rec_train"]), int(stats["search_train"]), str(stats_path)
  else:
    rec, search = int(plan_cfg.rec_train_rows), int(plan_cfg.search_train_rows)
    source = "plan.rec_train_rows / plan.search_train_rows (the paper's Electronics counts)"
  full = {"nrip": rec, "nsip": search, "nsqp": search, "desc2id": int(plan_cfg.num_items),
          "id2desc": int(plan_cfg.num_items), "adhoc": int(plan_cfg.num_items)}
  total = 0
  for task, size in config.tasks.sizes.items():
    total += full[task] if int(size) < 0 else int(size)
  return total, source


def training_budget(config: ml_collections.ConfigDict, examples: int) -> dict:
  """Steps of the config's training run (`train.num_steps`, else `train.num_epochs` epochs), as the
  train stage counts them, and its validations."""
  from gensar_jax.train.stage import _steps
  num_steps, _ = _steps(config.train, examples)
  batch = int(config.train.batch_size)
  eval_every = int(config.train.eval_every)
  return {"epoch_examples": examples, "global_batch": batch, "steps_per_epoch": max(examples // batch, 1),
          "num_steps": num_steps, "validations": num_steps // eval_every if eval_every > 0 else 0}


# ------------------------------------------------------------------------------------------ advice

def advice(name: str, result: dict, rows_per_device: int, config: ml_collections.ConfigDict,
           mesh_shape: Mapping[str, int]) -> list[str]:
  """What would fit, for a program over the device's HBM (`result["hbm_capacity_bytes"]`).

  The largest per-device batch is a linear extrapolation from this one compile: fixed bytes
  (arguments, outputs, code) plus temporaries proportional to the rows.
  """
  mem, capacity = result["memory"], result["hbm_capacity_bytes"]
  fixed = mem["peak_bytes"] - mem["temp_bytes"]
  per_row = mem["temp_bytes"] / max(rows_per_device, 1)
  largest = int((capacity - fixed) // per_row) if per_row > 0 else rows_per_device
  notes = []
  if not result["fits"]:
    notes.append(f"{name} does not fit: {mem['peak_bytes'] / GIB:.1f} GiB peak per device against "
                 f"{capacity / GIB:.1f} GiB of HBM ({rows_per_device} rows per device).")
    if name == "train_step":
      accum = 1
      while accum < rows_per_device and rows_per_device // accum > max(largest, 0):
        accum *= 2
      notes.append(f"About {max(largest, 0)} rows per device would fit (temporaries linear in the rows); keep the "
                   f"global batch with --set train.grad_accum_steps={accum * int(config.train.grad_accum_steps)}"
                   + (" or --set train.bf16=True." if not config.train.bf16 else "."))
    elif name.startswith("beam_search") or name == "doc2query_sampling":
      key = "eval.batch_size" if name.startswith("beam_search") else "doc2query.sampling.batch_size"
      notes.append(f"About {max(largest, 0)} rows per device would fit: lower {key}.")
  state = mem["argument_bytes"]
  if name == "train_step" and mesh_shape.get("fsdp", 1) == 1 and state > 0.25 * capacity:
    notes.append(f"Parameters and optimizer state take {state / GIB:.1f} GiB per device, replicated: shard them "
                 "over the data axis with parallel.mesh_shape fsdp > 1 (FSDP).")
  return notes


def _compile_program(name: str, config, plan_cfg, model_cfg: T5Config, train_cfg, mesh, rules, devices: list,
                     chip: Chip) -> tuple[dict, int]:
  """Compiles one program of the plan; returns (its `analyze` result, rows per exposed device)."""
  per_chip = chip.tensorcores
  options = GPU_COMPILER_OPTIONS if chip.name in GPUS else None
  shape = {k: int(v) for k, v in mesh.shape.items()}
  input_len, target_len = int(config.tasks.max_input_len), int(config.tasks.max_target_len)
  eval_batch, num_beams = int(config.eval.batch_size), int(config.eval.num_beams)
  if name == "train_step":
    batch = int(config.train.batch_size)
    def lower(on_mesh):
      return lower_train_step(model_cfg, train_cfg, on_mesh, rules, batch, input_len, target_len)
    compiled, seconds = _timed_compile(name, lambda: lower(mesh), options)
    result = analyze(compiled, chip, len(devices), repeat=float(train_cfg.grad_accum_steps), per_chip=per_chip,
                     fallback_cost=lambda: cpu_cost(lambda cpu: lower(_cpu_mesh(cpu)), len(devices)))
    rows = batch // (shape["data"] * shape["fsdp"]) * per_chip
  elif name in ("beam_search_sampled", "beam_search_full"):
    _, semantic_levels, _ = levels_from_config(config.identifiers)
    codebook = int(config.identifiers.codebook_size)
    catalogue, per_query = synthetic_tries(int(plan_cfg.num_items), len(semantic_levels), codebook, eval_batch,
                                           int(plan_cfg.num_candidates),
                                           model_cfg.vocab_size - len(semantic_levels) * codebook)
    tables = per_query if name == "beam_search_sampled" else catalogue
    def lower(on_mesh):
      params = abstract_params(model_cfg, on_mesh, rules)
      return lower_beam_search(model_cfg, params, tables, on_mesh, eval_batch, input_len, num_beams)
    compiled, seconds = _timed_compile(name, lambda: lower(mesh), options)
    result = analyze(compiled, chip, len(devices), per_chip=per_chip,
                     fallback_cost=lambda: cpu_cost(lambda cpu: lower(_cpu_mesh(cpu)), len(devices)))
    rows = eval_batch // shape["data"] * per_chip
  elif name == "doc2query_sampling":
    d2q = config.doc2query
    d2q_cfg = t5_config_from_section(config.model, int(config.data.vocab_size))
    compiled, seconds = _timed_compile(name, lambda: lower_sampling(d2q_cfg, d2q, devices[0]), options)
    step_compiled, step_seconds = _timed_compile(name + " (one token)", lambda: lower_sampling_step(
        d2q_cfg, d2q, devices[0]), options)
    result = analyze(compiled, chip, 1, fallback_cost=lambda: cpu_cost(
        lambda cpu: lower_sampling(d2q_cfg, d2q, cpu), 1))
    token = analyze(step_compiled, chip, 1, fallback_cost=lambda: cpu_cost(
        lambda cpu: lower_sampling_step(d2q_cfg, d2q, cpu), 1))
    extra = int(d2q.max_query_len) - 1     # loop iterations beyond the one XLA counted (upper bound)
    result["flops"] += extra * token["flops"]
    result["bytes_accessed"] += extra * token["bytes_accessed"]
    result["roofline"] = roofline(result["flops"], result["bytes_accessed"], 0.0, chip)
    result["per_token"] = {"flops": token["flops"], "bytes_accessed": token["bytes_accessed"]}
    result["loop_repeat"] = f"+{extra} decoder steps (max_query_len, no early stop)"
    result["note"] = "one device, as the doc2query stage runs it (no mesh): every host repeats it"
    seconds += step_seconds
    rows = int(d2q.sampling.batch_size)
  else:
    raise ValueError(f"unknown program {name!r}; expected one of {PROGRAMS}")
  result["compile_seconds"] = round(seconds, 1)
  return result, rows


def _cpu_mesh(cpu_device) -> jax.sharding.Mesh:
  return parallel.make_mesh({"data": 1}, [cpu_device])


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def compile_failure(error: Exception, chip: Chip, per_chip: int) -> dict | None:
  """A program the TPU compiler refused for lack of HBM -> a misfit result with the compiler's figures
  (required temporaries, usable HBM), per chip; None for any other compile error."""
  text = str(error)
  match = re.search(r"\(([\d.]+)([KMGT]?)\)\s+exceeds available HBM \(([\d.]+)([KMGT]?)\)", text)
  if "RESOURCE_EXHAUSTED" not in text or not match:
    return None
  required = float(match.group(1)) * _UNITS[match.group(2)] * per_chip
  available = float(match.group(3)) * _UNITS[match.group(4)] * per_chip
  memory = {"argument_bytes": 0, "output_bytes": 0, "alias_bytes": 0, "temp_bytes": int(required), "code_bytes": 0,
            "peak_bytes": int(required)}
  return {"memory": memory, "hbm_capacity_bytes": available, "hbm_fraction": required / available, "fits": False,
          "compile_error": text.strip().splitlines()[0][:400], "flops": None, "bytes_accessed": None,
          "ici_traffic_bytes": None, "collectives": [], "roofline": None}


# ------------------------------------------------------------------------------------------ the plan

def plan(config: ml_collections.ConfigDict, workdir: Path | None = None, topology: str | None = None,
         programs: tuple[str, ...] = PROGRAMS) -> dict:
  """Compiles `programs` for the config's slice and returns the report (see the module docstring)."""
  plan_cfg = section_with_defaults(config, "plan", plan_config())
  topology = topology or plan_cfg.topology
  if not topology:
    raise ValueError(f"config {config.name!r} names no slice to plan for: pass --topology (e.g. v5e:8x8, v4:2x2x4, "
                     "h100:8), or give the config a plan section with plan.topology as configs/tpu_v5e_64.py does")
  devices, chip = topology_devices(topology)
  mesh, mesh_shape = plan_mesh(config, devices, chip)
  rules = parallel.rules_tuple(config.parallel.logical_axis_rules)
  vocab = vocab_size(config)
  model_cfg = t5_config_from_section(config.model, vocab)
  batch = int(config.train.batch_size)
  input_len, target_len = int(config.tasks.max_input_len), int(config.tasks.max_target_len)
  batch_axes = mesh_shape["data"] * mesh_shape["fsdp"]
  if batch % batch_axes:
    raise ValueError(f"train.batch_size {batch} is not divisible by the mesh's batch axes data x fsdp = {batch_axes}")
  examples, examples_source = epoch_examples(config, plan_cfg, workdir)
  budget = training_budget(config, examples)
  report: dict[str, Any] = {
      "config": config.name, "topology": topology, "chip": dataclasses.asdict(chip),
      "devices": len(devices) // chip.tensorcores, "tensorcores": len(devices), "mesh": mesh_shape,
      "hosts": slice_hosts(topology, len(devices) // chip.tensorcores), "jax": jax.__version__,
      "compiler": libtpu_available()[1] if chip.name not in GPUS else "jax-cuda12-plugin",
      "model": {"vocab_size": vocab, "d_model": model_cfg.d_model, "layers": [model_cfg.num_encoder_layers,
                model_cfg.num_decoder_layers], "bf16_training": bool(config.train.bf16)},
      "shapes": {"global_batch": batch, "rows_per_device": batch // batch_axes, "input_len": input_len,
                 "target_len": target_len, "grad_accum_steps": int(config.train.grad_accum_steps)},
      "budget": dict(budget, epoch_source=examples_source), "programs": {}, "advice": []}
  train_cfg = ml_collections.ConfigDict(config.train.to_dict())
  train_cfg.num_steps = budget["num_steps"]
  eval_batch, num_beams = int(config.eval.batch_size), int(config.eval.num_beams)
  if eval_batch % mesh_shape["data"]:
    raise ValueError(f"eval.batch_size {eval_batch} is not divisible by the mesh's data axis ({mesh_shape['data']})")
  per_chip = chip.tensorcores
  for name in programs:
    try:
      result, rows = _compile_program(name, config, plan_cfg, model_cfg, train_cfg, mesh, rules, devices, chip)
    except jax.errors.JaxRuntimeError as e:
      result = compile_failure(e, chip, per_chip)
      if result is None:
        raise
      log.warning("plan: %s does not compile: %s", name, result["compile_error"])
      rows = {"train_step": batch // batch_axes, "doc2query_sampling": int(config.doc2query.sampling.batch_size)
              }.get(name, eval_batch // mesh_shape["data"])
    result["rows_per_device"] = rows
    report["programs"][name] = result
    report["advice"] += advice(name, result, rows, config, mesh_shape)
  report["estimate"] = estimate(report, config, plan_cfg)
  report["fits"] = all(p["fits"] for p in report["programs"].values())
  for name, p in report["programs"].items():
    if p["fits"] and p["hbm_fraction"] > float(plan_cfg.tight_fraction):
      report["advice"].append(f"{name} is tight: {p['hbm_fraction']:.0%} of HBM; XLA and the runtime keep some "
                              "HBM for themselves, so expect little headroom.")
  if workdir is not None:
    write_json(Path(workdir) / "plan" / "plan.json", report)
  return report


def estimate(report: dict, config: ml_collections.ConfigDict, plan_cfg: ml_collections.ConfigDict) -> dict:
  """Training time for the whole budget: train steps + validations (sampled protocol on
  `eval.validation_rows` rows of each selection task), in days, chip-hours and list price."""
  programs, budget, chip = report["programs"], report["budget"], report["chip"]
  out: dict[str, Any] = {}
  programs = {k: v for k, v in programs.items() if v.get("roofline")}
  if "train_step" in programs:
    step_s = programs["train_step"]["roofline"]["step_s"]
    out.update(step_s=step_s, mfu=programs["train_step"]["roofline"]["mfu"],
               epoch_s=step_s * budget["steps_per_epoch"], train_s=step_s * budget["num_steps"],
               host_examples_per_s=budget["global_batch"] / report["hosts"] / step_s)
  if "beam_search_sampled" in programs:
    batches = math.ceil(int(config.eval.validation_rows) * len(config.train.selection_tasks)
                        / int(config.eval.batch_size))
    out["validation_s"] = programs["beam_search_sampled"]["roofline"]["step_s"] * batches
    out["all_validations_s"] = out["validation_s"] * budget["validations"]
  if "doc2query_sampling" in programs:
    batches = math.ceil(int(plan_cfg.num_items) / int(config.doc2query.sampling.batch_size))
    out["doc2query_sampling_s"] = programs["doc2query_sampling"]["roofline"]["step_s"] * batches
  if "train_s" in out:
    total = out["train_s"] + out.get("all_validations_s", 0.0)
    out["budget_s"] = total
    out["budget_days"] = total / 86400
    out["chip_hours"] = total / 3600 * report["devices"]
    price = chip["usd_per_chip_hour"]
    out["list_price_usd"] = out["chip_hours"] * price if price is not None else None
  return out


# ------------------------------------------------------------------------------------------ output

def _gib(x: float) -> str:
  return f"{x / GIB:.2f}"


def format_duration(seconds: float | None, digits: int = 2) -> str:
  """A duration in the largest unit that keeps it >= 1 (d, h, min, s, ms); "-" for None.
  `digits`: decimals for d, h and s (minutes keep one, milliseconds one fewer)."""
  if seconds is None:
    return "-"
  if seconds >= 86400:
    return f"{seconds / 86400:.2f} d"
  if seconds >= 3600:
    return f"{seconds / 3600:.{digits}f} h"
  if seconds >= 60:
    return f"{seconds / 60:.1f} min"
  return f"{seconds * 1e3:.{max(digits - 1, 0)}f} ms" if seconds < 1 else f"{seconds:.{digits}f} s"


_duration = format_duration


def format_collectives(collectives: list[dict]) -> str:
  return ", ".join(f"{c['count']}x {c['kind']} {c['bytes'] / 2**20:.1f} MiB" for c in collectives) or "none"


def format_plan(report: dict) -> str:
  """A readable table of a `plan` report."""
  chip, est = report["chip"], report["estimate"]
  lines = [f"gensar plan: {report['config']} on {report['topology']} ({report['devices']} x {chip['name']} devices, "
           f"{_gib(chip['hbm_bytes'])} GiB HBM each), mesh {report['mesh']}, jax {report['jax']}, "
           f"compiler {report['compiler']}",
           f"global batch {report['shapes']['global_batch']} ({report['shapes']['rows_per_device']} rows per "
           f"device), input {report['shapes']['input_len']}, target {report['shapes']['target_len']}, "
           f"bf16 training {report['model']['bf16_training']}, vocabulary {report['model']['vocab_size']}", "",
           "| program | rows/dev | args GiB | temps GiB | peak GiB | HBM | fits | TFLOP/dev | GB accessed | "
           "collectives | est. time | bound | MFU |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | --- | ---: |"]
  for name, p in report["programs"].items():
    m, r = p["memory"], p["roofline"]
    if r is None:
      lines.append(f"| {name} | {p['rows_per_device']} | - | {_gib(m['temp_bytes'])} | {_gib(m['peak_bytes'])} | "
                   f"{p['hbm_fraction']:.0%} | NO (compiler: out of HBM) | - | - | - | - | - | - |")
      continue
    lines.append(f"| {name} | {p['rows_per_device']} | {_gib(m['argument_bytes'])} | {_gib(m['temp_bytes'])} | "
                 f"{_gib(m['peak_bytes'])} | {p['hbm_fraction']:.0%} | {'yes' if p['fits'] else 'NO'} | "
                 f"{p['flops'] / 1e12:.3f} | {p['bytes_accessed'] / 1e9:.2f} | {format_collectives(p['collectives'])} "
                 f"| {_duration(r['step_s'])} | {r['bound']} | {r['mfu']:.0%} |")
  b = report["budget"]
  lines += ["", f"budget: {b['num_steps']:,} steps ({b['steps_per_epoch']} per epoch of {b['epoch_examples']:,} "
                f"examples), {b['validations']} validations"]
  if "budget_s" in est:
    lines.append(f"estimate: {_duration(est['step_s'])} per step, {_duration(est['epoch_s'])} per epoch, training "
                 f"{_duration(est['train_s'])} + validation {_duration(est.get('all_validations_s', 0.0))} = "
                 f"{est['budget_days']:.2f} days, {est['chip_hours']:,.0f} chip-hours"
                 + (f", about ${est['list_price_usd']:,.0f} at list price" if est["list_price_usd"] is not None else ""))
  if "host_examples_per_s" in est:
    lines.append(f"input pipeline: each of the {report['hosts']} hosts must feed {est['host_examples_per_s']:,.0f} "
                 "examples/s to keep up")
  if "doc2query_sampling_s" in est:
    lines.append(f"doc2query pseudo-queries for the catalogue on one device: {_duration(est['doc2query_sampling_s'])}")
  lines.append("roofline: max(FLOPs / peak, bytes / HBM bandwidth) + collective traffic / ICI bandwidth; an "
               "estimate from published chip figures, not a measurement")
  lines.append("FITS" if report["fits"] else "DOES NOT FIT")
  lines += [f"- {a}" for a in report["advice"]]
  return "\n".join(lines)
