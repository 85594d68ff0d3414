"""`gensar plan`: compile a config's programs for its TPU slice on any machine, before renting it.

Deviceless ahead-of-time compilation: `jax.experimental.topologies.get_topology_desc` (libtpu, from
`pip install -e ".[tpu]"`) describes the slice's devices without hardware; the config's mesh is built on
them with `parallel.make_mesh` and the real programs of every stage are lowered with abstract inputs
(`jax.ShapeDtypeStruct` with their `NamedSharding`s) and compiled by the TPU compiler:

  - embed: `text_encoder` (`embed.text_encoder.BertEncoder` + pooling, one batch at the longest
    length bucket) and `sasrec_train_step` (`embed.sasrec`'s jitted AdamW step), each on one chip;
  - index: `rqvae_train_step` (`identifiers.rqvae_train.make_train_epoch` over one batch), one chip;
  - doc2query: `doc2query_train_step` (`train.step.make_train_step` at doc2query's batch, lengths and
    SentencePiece vocabulary, on the slice) and `doc2query_sampling` (`decode.sampling.generate`, one
    chip per host);
  - train: `train_step` at the global batch, sequence lengths, dtype and optimizer state of the config,
    under each dropout-mask generator of `plan.dropout_rngs`;
  - validation and test: `beam_search_sampled` / `beam_search_full`, the constrained beam search
    (`decode.beam_search.search`) over per-query candidate tries and over the catalogue trie of
    `plan.num_items` items (random codes of the config's identifier shape).

For each program: per-device memory (`memory_analysis`), FLOPs and bytes (`cost_analysis`), the
collectives of the optimized HLO, and a roofline time per call from the chip figures in `CHIPS`. The
calls each stage makes follow the stages' own rules (`stage_calls`), so the pipeline's days, chip-hours
and list price (`pipeline_estimate`) cover every stage. Nothing is allocated: every input is abstract.
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

from gensar_jax import parallel
from gensar_jax.config import section_with_defaults
from gensar_jax.data.tokenizer import BEHAVIOUR_TOKENS, levels_from_config
from gensar_jax.io_utils import as_path, write_json
from gensar_jax.plan.hlo import (COLLECTIVE_KINDS, collective_traffic, count_while_loops,  # noqa: F401
                                 parse_collectives, shape_bytes, term_breakdown)
from gensar_jax.model.decoding import T5Decoding
from gensar_jax.model.t5 import T5Config, init_params, t5_config_from_section

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


PROGRAMS = ("text_encoder", "sasrec_train_step", "rqvae_train_step", "doc2query_train_step", "doc2query_sampling",
            "train_step", "beam_search_sampled", "beam_search_full")

# The pipeline's stages in order, each with the programs whose calls make up its time.
STAGES = (("embed", ("text_encoder", "sasrec_train_step")),
          ("index", ("rqvae_train_step",)),
          ("doc2query", ("doc2query_train_step", "doc2query_sampling")),
          ("train", ("train_step",)),
          ("validation", ("beam_search_sampled",)),
          ("test", ("beam_search_sampled", "beam_search_full")))

# Where a program runs: the whole slice (sharded over the mesh), one chip on every host (each host
# takes its share of the catalogue; wall time is one host's share), or a single chip.
SLICE, CHIP_PER_HOST, ONE_CHIP = "slice", "one chip per host", "one chip"
PLACEMENT = {"text_encoder": CHIP_PER_HOST, "sasrec_train_step": ONE_CHIP, "rqvae_train_step": ONE_CHIP,
             "doc2query_train_step": SLICE, "doc2query_sampling": CHIP_PER_HOST, "train_step": SLICE,
             "beam_search_sampled": SLICE, "beam_search_full": SLICE}

# Dropout-mask generators `train.dropout_rng` accepts (`model.t5.DROPOUT_RNGS`).
DROPOUT_RNGS = ("threefry", "hash")

# The text encoder's shape when `embed.text.model_dir` names a directory that is not on this machine:
# BAAI/bge-base-en-v1.5's config.json (the reference's encoder; the BERT-base shape).
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12)



def plan_config() -> ml_collections.ConfigDict:
  """Defaults of the `plan` config section (the pod presets set `topology`)."""
  c = ml_collections.ConfigDict()
  c.topology = ""                 # e.g. "v5e:8x8" (64 chips); `gensar plan --topology` overrides
  # The paper's Electronics counts (docs/method.md, Data), used when <workdir>/prepare/stats.json is absent.
  c.num_items = 62_882
  c.num_users = 192_403
  c.rec_train_rows = 930_387
  c.rec_validation_rows = 168_258
  c.rec_test_rows = 168_258
  c.search_train_rows = 698_802
  c.search_validation_rows = 191_566
  c.search_test_rows = 191_566
  c.num_candidates = 100          # sampled protocol: target + 99 negatives
  c.tight_fraction = 0.9          # a program above this share of HBM is reported as tight
  # The train step is compiled under each of these dropout-mask generators (train.dropout_rng); the
  # config's own is always compiled and is the one the estimate uses. () compiles only the config's.
  c.dropout_rngs = DROPOUT_RNGS
  # Encoder and decoder layers of the comparison's train steps (0: the config's model). Fewer layers
  # compare the same per-layer masks in a fraction of the compile time (every generator, the config's
  # included, is then compiled at that depth); the estimate always uses the config's full train step.
  c.dropout_compare_layers = 0
  # SASRec trains on windows cut to length buckets; its step is compiled at this width (0: the bucket
  # holding the mean training window, rec_train_rows / num_users - 1 items).
  c.sasrec_window = 0
  # JAX's persistent compilation cache: a second plan of the same programs loads them instead of
  # compiling. "" uses $GENSAR_COMPILATION_CACHE, else ~/.cache/gensar/xla; "off" disables it.
  c.compilation_cache = ""
  return c


def compilation_cache_dir(setting: str) -> str | None:
  """The persistent compilation cache directory for `plan.compilation_cache` (None when "off")."""
  if setting == "off":
    return None
  return setting or os.environ.get("GENSAR_COMPILATION_CACHE") or str(Path.home() / ".cache" / "gensar" / "xla")


def use_compilation_cache(setting: str) -> None:
  """Points JAX's persistent compilation cache at `compilation_cache_dir(setting)`, caching every program
  whatever its compile time or size (deviceless TPU programs included)."""
  directory = compilation_cache_dir(setting)
  if directory is None:
    return
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
  breakdown = term_breakdown(hlo, repeat, getattr(compiled, "unoptimized_hlo", None), num_devices)
  for figures in breakdown.values():
    figures["bytes"] *= per_chip
    figures["flops"] *= per_chip
  return {"memory": memory, "breakdown": breakdown, "hbm_capacity_bytes": chip.hbm_bytes,
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
  """(compiled program, seconds). The compiled object carries its lowering's unoptimized HLO text
  (`unoptimized_hlo`, for the FLOPs of `term_breakdown`)."""
  t0 = time.perf_counter()
  log.info("plan: compiling %s ...", name)
  lowered = lower()
  compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
  seconds = time.perf_counter() - t0
  log.info("plan: %s compiled in %.1fs", name, seconds)
  return _WithLowering(compiled, lowered.as_text(dialect="hlo", debug_info=True)), seconds


class _WithLowering:
  """A compiled program and the unoptimized HLO text of its lowering."""

  def __init__(self, compiled, unoptimized_hlo: str):
    self._compiled, self.unoptimized_hlo = compiled, unoptimized_hlo

  def __getattr__(self, name):
    return getattr(self._compiled, name)


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
  """`beam_search.search.lower(...)` on `beam_search.abstract_inputs`: queries over the mesh's data axis,
  tables laid out as `constrained_beam_search` lays them."""
  from gensar_jax.decode import beam_search
  tokens, abstract_tables = beam_search.abstract_inputs(mesh, batch, input_len, tables)
  return beam_search.search.lower(params, tokens, abstract_tables, decoder=T5Decoding(model_cfg),
                                  num_beams=num_beams)


def _sampling_args(cfg: ml_collections.ConfigDict) -> dict:
  s = cfg.sampling
  return dict(max_length=int(cfg.max_query_len), num_samples=int(cfg.num_pseudo_queries),
              greedy=s.method == "greedy", temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p))


def lower_sampling(model_cfg: T5Config, doc2query_cfg: ml_collections.ConfigDict, device):
  """`sampling.generate.lower(...)` on one device, as the doc2query stage runs it (no mesh)."""
  from gensar_jax.decode import sampling
  mesh = parallel.make_mesh({"data": 1}, [device])
  params = abstract_params(model_cfg, mesh, ())
  tokens, rng = sampling.abstract_inputs(mesh, int(doc2query_cfg.sampling.batch_size),
                                         int(doc2query_cfg.max_input_len))
  return sampling.generate.lower(params, tokens, rng, decoder=T5Decoding(model_cfg), **_sampling_args(doc2query_cfg))


def lower_sampling_step(model_cfg: T5Config, doc2query_cfg: ml_collections.ConfigDict, device):
  """One iteration of the sampling loop (decoder step + filtered categorical draw) at the same shapes:
  XLA's cost analysis counts `generate`'s while-loop body once, this measures what each token adds."""
  from gensar_jax.decode.sampling import filter_logits
  mesh = parallel.make_mesh({"data": 1}, [device])
  rep = parallel.replicated(mesh)
  params = abstract_params(model_cfg, mesh, ())
  batch, hyps = int(doc2query_cfg.sampling.batch_size), int(doc2query_cfg.num_pseudo_queries)
  length, max_length = int(doc2query_cfg.max_input_len), int(doc2query_cfg.max_query_len)
  decoder = T5Decoding(model_cfg)
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  encoded = _on_device(jax.eval_shape(decoder.encode, params, tokens), device)
  cache = _on_device(jax.eval_shape(lambda: decoder.init_cache(batch, hyps, max_length)), device)
  last = jax.ShapeDtypeStruct((batch, hyps), jnp.int32, sharding=rep)
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
  s = doc2query_cfg.sampling

  def body(params, encoded, last, cache, rng):
    logits, cache = decoder.tokens_to_logits(params, encoded)(last, 1, cache)
    chosen = jax.random.categorical(rng, filter_logits(logits, float(s.temperature), int(s.top_k), float(s.top_p)))
    return chosen, jax.nn.log_softmax(logits, axis=-1).max(axis=-1), cache

  return jax.jit(body).lower(params, encoded, last, cache, rng)


def _one_device_mesh(device) -> jax.sharding.Mesh:
  return parallel.make_mesh({"data": 1}, [device])


def _on_device(tree, device):
  """Abstract copies of `tree` (arrays or ShapeDtypeStructs) placed on `device` (a jit with no mesh)."""
  rep = parallel.replicated(_one_device_mesh(device))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def text_encoder_shape(text_cfg: ml_collections.ConfigDict):
  """(BertConfig, where it came from) of the `embed.text` encoder: its directory's config.json, the packaged
  all-MiniLM-L6-v2 without a directory, else (a directory not on this machine) the BERT-base shape of
  bge-base-en-v1.5 (`BERT_BASE`)."""
  from gensar_jax.embed.text_encoder import BertConfig, default_model_dir
  try:
    model_dir = Path(text_cfg.model_dir) if text_cfg.model_dir else default_model_dir()
  except FileNotFoundError:
    model_dir = None
  if model_dir is not None and (model_dir / "config.json").exists():
    return BertConfig.from_json(model_dir / "config.json"), str(model_dir / "config.json")
  return BertConfig(**BERT_BASE), (f"{text_cfg.model_dir or 'the default encoder'} is not on this machine: "
                                   "the BERT-base shape of bge-base-en-v1.5 (plan.BERT_BASE)")


def lower_text_encoder(bert_cfg, text_cfg: ml_collections.ConfigDict, device):
  """The embed stage's encoder call (`SentenceEncoder._encode_batch`: `BertEncoder`, pooling, L2 norm) on one
  device for a batch int32[embed.text.batch_size, L] at the longest length L the stage pads to (its
  max_seq_length, capped by the position table): an upper bound per batch."""
  from gensar_jax.embed.text_encoder import BertEncoder, l2_normalize, pool_tokens
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[text_cfg.dtype]
  model = BertEncoder(bert_cfg, dtype=dtype)
  batch, length = int(text_cfg.batch_size), min(int(text_cfg.max_seq_length), bert_cfg.max_position_embeddings)
  pooling = text_cfg.get("pooling") or "mean"
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  params = jax.eval_shape(lambda t: model.init(jax.random.key(0), t, t, t)["params"], tokens)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), params)   # cast as the encoder does

  def encode_batch(params, input_ids, attention_mask, token_type_ids):
    hidden = model.apply({"params": params}, input_ids, attention_mask, token_type_ids)
    return l2_normalize(pool_tokens(hidden, attention_mask, pooling))

  return jax.jit(encode_batch).lower(*_on_device((params, tokens, tokens, tokens), device))


def sasrec_width(sasrec_cfg: ml_collections.ConfigDict, plan_cfg: ml_collections.ConfigDict, counts: Mapping) -> int:
  """Window width of SASRec's compiled step: `plan.sasrec_window`, else the length bucket
  (`embed.sasrec.length_buckets`) holding the mean training window (training items per user - 1)."""
  from gensar_jax.embed.sasrec import length_buckets
  buckets = length_buckets(int(sasrec_cfg.max_len))
  if int(plan_cfg.sasrec_window) > 0:
    return min(int(plan_cfg.sasrec_window), int(sasrec_cfg.max_len))
  mean_window = counts["rec_train"] / max(counts["users"], 1) - 1
  return next(b for b in buckets if b >= min(mean_window, buckets[-1]))


def lower_sasrec_step(sasrec_cfg: ml_collections.ConfigDict, num_items: int, width: int, device):
  """The embed stage's SASRec train step (`sasrec.training_fns`' jitted AdamW step) on one device for a
  batch of windows int32[embed.sasrec.batch_size, width]."""
  from gensar_jax.embed import sasrec
  arch = {"num_items": int(num_items), "hidden_dim": int(sasrec_cfg.hidden_dim),
          "num_blocks": int(sasrec_cfg.num_blocks), "num_heads": int(sasrec_cfg.num_heads),
          "max_len": int(sasrec_cfg.max_len)}
  hyper = sasrec.training_hyper(sasrec_cfg)
  module, optimizer, train_step = sasrec.training_fns(tuple(sorted(arch.items())), tuple(sorted(hyper.items())))
  params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, arch["max_len"]), jnp.int32))
                          ["params"])
  opt_state = jax.eval_shape(optimizer.init, params)
  tokens = jax.ShapeDtypeStruct((int(sasrec_cfg.batch_size), int(width)), jnp.int32)
  # Each row's user's items (read by loss=bce; a user's window holds up to max_len + 1 of them).
  seen = jax.ShapeDtypeStruct((int(sasrec_cfg.batch_size), arch["max_len"] + 1 if hyper["loss"] == "bce" else 1),
                              jnp.int32)
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  return train_step.lower(*_on_device((params, opt_state, tokens, tokens, seen, key), device))


def lower_rqvae_step(identifiers_cfg: ml_collections.ConfigDict, semantic_dim: int, collab_dim: int,
                     steps_per_epoch: int, device):
  """One RQ-VAE optimizer step as the index stage runs it: `rqvae_train.make_train_epoch`'s jitted epoch
  over `identifiers.batch_size` items (one batch: one step of its scan), every view of the config's mode
  in the one model, on one device."""
  from gensar_jax.identifiers import rqvae, rqvae_train
  spec = rqvae.spec_from_config(identifiers_cfg, semantic_dim, collab_dim)
  batch = int(identifiers_cfg.batch_size)
  optimizer = rqvae_train.make_optimizer(identifiers_cfg, steps_per_epoch)
  train_epoch = rqvae_train.make_train_epoch(spec, optimizer, batch)
  params = jax.eval_shape(lambda: rqvae.init_params(jax.random.PRNGKey(0), spec))
  opt_state = jax.eval_shape(optimizer.init, params)
  inputs = {view: jax.ShapeDtypeStruct((batch, dim), jnp.float32) for view, dim in spec.input_dims}
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  return train_epoch.lower(*_on_device((params, opt_state, inputs, key), device))


# ------------------------------------------------------------------------------------------ budget

COUNT_KEYS = ("items", "users", "rec_train", "rec_validation", "rec_test", "search_train", "search_validation",
              "search_test")


def dataset_counts(plan_cfg: ml_collections.ConfigDict, workdir: Path | None) -> tuple[dict[str, int], str]:
  """Items, users and rows per task and split ({"items", "users", "rec_train", ..., "search_test"}) and where
  they came from: the prepared dataset's stats when `<workdir>/prepare/stats.json` exists, else the `plan`
  section (the paper's Electronics counts)."""
  from gensar_jax import stages
  from gensar_jax.io_utils import read_json
  prepared = workdir is not None and stages.read_record(as_path(workdir) / "prepare") is not None
  stats_path = stages.output_dir(workdir, "prepare") / "stats.json" if prepared else None
  if stats_path is not None:
    stats = read_json(stats_path)
    return {k: int(stats[k]) for k in COUNT_KEYS}, str(stats_path)
  fields = {"items": "num_items", "users": "num_users"}
  return ({k: int(plan_cfg[fields.get(k, f"{k}_rows")]) for k in COUNT_KEYS},
          "the plan section's counts (the paper's Electronics)")


def epoch_examples(config: ml_collections.ConfigDict, counts: Mapping[str, int]) -> int:
  """Examples per training epoch of the task mixture (`tasks.sizes`; -1 = every training row of the task)."""
  full = {"nrip": counts["rec_train"], "nsip": counts["search_train"], "nsqp": counts["search_train"],
          "desc2id": counts["items"], "id2desc": counts["items"], "adhoc": counts["items"]}
  return sum(full[task] if int(size) < 0 else int(size) for task, size in config.tasks.sizes.items())


def validations(num_steps: int, eval_every: int) -> int:
  """Validations of a training run: at every multiple of eval_every and at the last step (`train.loop`)."""
  return math.ceil(num_steps / eval_every) if eval_every > 0 else 0


def training_budget(config: ml_collections.ConfigDict, examples: int) -> dict:
  """Steps of the config's training run (`train.num_steps`, else `train.num_epochs` epochs), as the
  train stage counts them, and its validations."""
  from gensar_jax.train.stage import planned_steps
  num_steps, _ = planned_steps(config.train, examples)
  batch = int(config.train.batch_size)
  return {"epoch_examples": examples, "global_batch": batch, "steps_per_epoch": max(examples // batch, 1),
          "num_steps": num_steps, "validations": validations(num_steps, int(config.train.eval_every))}


def _batches(rows: int, batch: int) -> int:
  return math.ceil(rows / batch)


def _eval_rows(rows: int, limit) -> int:
  return rows if limit is None or int(limit) <= 0 else min(rows, int(limit))


def stage_calls(config: ml_collections.ConfigDict, counts: Mapping[str, int], hosts: int) -> list[dict]:
  """Calls of each stage's programs for the whole pipeline, by the stages' own rules:
  [{"stage", "program", "calls", "placement", "rule"}], in `STAGES` order.

  `calls` are what one chip runs in sequence: a program on one chip per host counts one host's share of the
  catalogue (`ceil(items / hosts)` items), a program on the slice or one chip counts every call.
  """
  from gensar_jax.eval.stage import TASKS
  from gensar_jax.identifiers.rqvae import identifiers_config
  from gensar_jax.train.stage import planned_steps
  # Text encoder (`SentenceEncoder.encode`) and doc2query sampling (`generate_text_batched`): fixed-size
  # batches of the items, the last one padded; each host takes its share of the catalogue.
  items, per_host = counts["items"], _batches(counts["items"], hosts)
  text, sas, d2q = config.embed.text, config.embed.sasrec, config.doc2query
  ids = section_with_defaults(config, "identifiers", identifiers_config())
  # SASRec (`sasrec.train_sasrec`): one window per user (`training_windows`; users with fewer than two
  # training items have none) in batches of each length bucket (`epoch_batches`: up to one more partial
  # batch per bucket than counted here).
  sas_steps = int(sas.epochs) * _batches(counts["users"], int(sas.batch_size))
  # RQ-VAE (`rqvae_train.epoch_batches`): ceil(items / batch) steps per epoch, both views in one model.
  rq_steps = int(ids.epochs) * _batches(items, int(ids.batch_size))
  # doc2query and train: the stages' own step count (`train.stage.planned_steps`).
  d2q_steps, _ = planned_steps(d2q.train, counts["search_train"])
  examples = epoch_examples(config, counts)
  train_steps, _ = planned_steps(config.train, examples)
  # Validation (`eval.stage.make_validation_fn`): eval.validation_rows rows of each task, sampled protocol;
  # test (`eval.stage.run_eval`): every eval.split row of each task (eval.limit), once per protocol.
  num_validations = validations(train_steps, int(config.train.eval_every))
  eval_batch = int(config.eval.batch_size)
  valid = {t: min(int(config.eval.validation_rows), counts[f"{t}_validation"]) for t in TASKS}
  per_validation = sum(_batches(valid[t], eval_batch) for t in TASKS)
  split, limit = str(config.eval.get("split", "test")), config.eval.get("limit")
  tested = {t: _eval_rows(counts[f"{t}_{split}"], limit) for t in TASKS}
  test_batches = sum(_batches(tested[t], eval_batch) for t in TASKS)
  hosts_text = f"{items:,} items over {hosts} host(s): {per_host:,} per host"
  rows = [
      ("embed", "text_encoder", _batches(per_host, int(text.batch_size)),
       f"{hosts_text}, batches of embed.text.batch_size {int(text.batch_size)}"),
      ("embed", "sasrec_train_step", sas_steps,
       f"embed.sasrec.epochs {int(sas.epochs)} x ceil({counts['users']:,} users' windows / batch "
       f"{int(sas.batch_size)})"),
      ("index", "rqvae_train_step", rq_steps,
       f"identifiers.epochs {int(ids.epochs)} x ceil({items:,} items / batch {int(ids.batch_size)}), one model for "
       f"the {ids.mode} identifiers"),
      ("doc2query", "doc2query_train_step", d2q_steps,
       f"doc2query.train: {d2q_steps:,} steps of {int(d2q.train.batch_size)} over {counts['search_train']:,} search "
       "training pairs"),
      ("doc2query", "doc2query_sampling", _batches(per_host, int(d2q.sampling.batch_size)),
       f"{hosts_text}, batches of doc2query.sampling.batch_size {int(d2q.sampling.batch_size)}"),
      ("train", "train_step", train_steps, f"{train_steps:,} steps of {int(config.train.batch_size):,} "
       f"over epochs of {examples:,} examples"),
      ("validation", "beam_search_sampled", num_validations * per_validation,
       f"{num_validations} validations x ({' + '.join(f'{valid[t]:,} {t}' for t in TASKS)} rows in batches of "
       f"{eval_batch})"),
  ]
  for protocol in config.eval.protocols:
    rows.append(("test", f"beam_search_{protocol}", test_batches,
                 f"{' + '.join(f'{tested[t]:,} {t}' for t in TASKS)} {split} rows in batches of {eval_batch}, "
                 f"{protocol} protocol"))
  return [{"stage": stage, "program": program, "calls": calls, "placement": PLACEMENT[program], "rule": rule}
          for stage, program, calls, rule in rows]


def pipeline_estimate(calls: list[dict], programs: Mapping[str, dict], devices: int,
                      usd_per_chip_hour: float | None) -> dict:
  """Time of the whole pipeline from `stage_calls` rows and compiled `programs` ({name: analyze result}).

  Each row's seconds = its program's roofline time per call x calls; a stage's time is the sum of its
  rows; the slice is held for every stage, so chip-hours are the total hours x the slice's devices.
  Rows whose program was not compiled (or has no time) are left out and make the total partial.
  """
  rows, stages, missing = [], {}, []
  for row in calls:
    roof = (programs.get(row["program"]) or {}).get("roofline")
    seconds = roof["step_s"] * row["calls"] if roof else None
    rows.append(dict(row, step_s=roof["step_s"] if roof else None, seconds=seconds))
    stage = stages.setdefault(row["stage"], {"seconds": 0.0, "complete": True})
    if seconds is None:
      stage["complete"] = False
      missing.append(row["program"])
    else:
      stage["seconds"] += seconds
  total = sum(stage["seconds"] for stage in stages.values())
  for stage in stages.values():
    stage["hours"] = stage["seconds"] / 3600
  chip_hours = total / 3600 * devices
  return {"rows": rows, "stages": stages, "total_s": total, "days": total / 86400, "chip_hours": chip_hours,
          "list_price_usd": chip_hours * usd_per_chip_hour if usd_per_chip_hour is not None else None,
          "partial": bool(missing), "missing_programs": sorted(set(missing))}


# ------------------------------------------------------------------------------------------ advice

# Per program: the config section of its train settings (grad_accum_steps, bf16) or its batch-size field.
_TRAIN_SECTIONS = {"train_step": "train", "doc2query_train_step": "doc2query.train"}
_BATCH_FIELDS = {"beam_search_sampled": "eval.batch_size", "beam_search_full": "eval.batch_size",
                 "doc2query_sampling": "doc2query.sampling.batch_size", "text_encoder": "embed.text.batch_size",
                 "sasrec_train_step": "embed.sasrec.batch_size", "rqvae_train_step": "identifiers.batch_size"}


def _section(config: ml_collections.ConfigDict, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def advice(name: str, result: dict, rows_per_device: int, config: ml_collections.ConfigDict,
           mesh_shape: Mapping[str, int]) -> list[str]:
  """What would fit, for a program over the device's HBM (`result["hbm_capacity_bytes"]`).

  The largest per-device batch is a linear extrapolation from this one compile: fixed bytes
  (arguments, outputs, code) plus temporaries proportional to the rows.
  """
  if result.get("error"):
    key = f"{_TRAIN_SECTIONS.get(name, 'train')}.batch_size" if name in _TRAIN_SECTIONS else _BATCH_FIELDS.get(name)
    return [f"{name} cannot run as configured: {result['error']}" + (f"; change {key}." if key else ".")]
  mem, capacity = result["memory"], result["hbm_capacity_bytes"]
  fixed = mem["peak_bytes"] - mem["temp_bytes"]
  per_row = mem["temp_bytes"] / max(rows_per_device, 1)
  largest = int((capacity - fixed) // per_row) if per_row > 0 else rows_per_device
  notes = []
  if not result["fits"]:
    notes.append(f"{name} does not fit: {mem['peak_bytes'] / GIB:.1f} GiB peak per device against "
                 f"{capacity / GIB:.1f} GiB of HBM ({rows_per_device} rows per device).")
    if name in _TRAIN_SECTIONS:
      section = _TRAIN_SECTIONS[name]
      train = _section(config, section)
      accum = 1
      while accum < rows_per_device and rows_per_device // accum > max(largest, 0):
        accum *= 2
      notes.append(f"About {max(largest, 0)} rows per device would fit (temporaries linear in the rows); keep the "
                   f"global batch with --set {section}.grad_accum_steps={accum * int(train.grad_accum_steps)}"
                   + (f" or --set {section}.bf16=True." if not train.bf16 else "."))
    elif name in _BATCH_FIELDS:
      notes.append(f"About {max(largest, 0)} rows per device would fit: lower {_BATCH_FIELDS[name]}.")
  state = mem["argument_bytes"]
  if name in _TRAIN_SECTIONS and mesh_shape.get("fsdp", 1) == 1 and state > 0.25 * capacity:
    notes.append(f"Parameters and optimizer state take {state / GIB:.1f} GiB per device, replicated: shard them "
                 "over the data axis with parallel.mesh_shape fsdp > 1 (FSDP).")
  return notes


@dataclasses.dataclass(frozen=True)
class Target:
  """What every program of one plan is compiled against: the config, the slice and the dataset counts."""
  config: ml_collections.ConfigDict
  plan_cfg: ml_collections.ConfigDict
  model_cfg: T5Config
  train_cfg: ml_collections.ConfigDict      # config.train with num_steps of the budget
  mesh: jax.sharding.Mesh
  mesh_shape: Mapping[str, int]
  rules: tuple
  devices: list
  chip: Chip
  counts: Mapping[str, int]

  @property
  def options(self) -> dict | None:
    return GPU_COMPILER_OPTIONS if self.chip.name in GPUS else None


def _analyze_one_device(compiled, target: Target, lower_on: Callable[[Any], Any]) -> dict:
  """`analyze` for a program jitted on one device (no mesh); `lower_on(device)` lowers it again for the
  CPU cost fallback."""
  return analyze(compiled, target.chip, 1, fallback_cost=lambda: cpu_cost(lower_on, 1))


def compile_train_step(name: str, target: Target, model_cfg: T5Config, train_cfg: ml_collections.ConfigDict,
                       batch: int, input_len: int, target_len: int) -> tuple[dict, int]:
  """A T5 train step (`train.step.make_train_step`) on the slice: (its `analyze` result, rows per device).
  A batch that does not divide over the mesh's batch axes gives an error result instead of a compile."""
  shape = {k: int(v) for k, v in target.mesh.shape.items()}
  batch_axes = shape["data"] * shape["fsdp"]
  rows = batch // batch_axes * target.chip.tensorcores
  if batch % batch_axes:
    return error_result(f"batch {batch} does not divide over the mesh's batch axes data x fsdp = {batch_axes} "
                        "(compile devices)", target.chip), rows
  def lower(on_mesh):
    return lower_train_step(model_cfg, train_cfg, on_mesh, target.rules, batch, input_len, target_len)
  compiled, seconds = _timed_compile(name, lambda: lower(target.mesh), target.options)
  result = analyze(compiled, target.chip, len(target.devices), repeat=float(train_cfg.grad_accum_steps),
                   per_chip=target.chip.tensorcores,
                   fallback_cost=lambda: cpu_cost(lambda cpu: lower(_cpu_mesh(cpu)), len(target.devices)))
  result["compile_seconds"] = round(seconds, 1)
  return result, rows


def error_result(message: str, chip: Chip) -> dict:
  """A program that cannot be compiled as configured (not a memory misfit): no figures, does not fit."""
  return {"error": message, "memory": None, "hbm_capacity_bytes": chip.hbm_bytes, "hbm_fraction": None,
          "fits": False, "flops": None, "bytes_accessed": None, "ici_traffic_bytes": None, "collectives": [],
          "roofline": None}


def _compile_train_program(name: str, target: Target) -> tuple[dict, int]:
  config = target.config
  if name == "train_step":
    return compile_train_step(name, target, target.model_cfg, target.train_cfg, int(config.train.batch_size),
                              int(config.tasks.max_input_len), int(config.tasks.max_target_len))
  # doc2query_train_step: the same step with doc2query's train section, batch, lengths and the SentencePiece
  # vocabulary (the doc2query model only ever reads and writes text).
  from gensar_jax.train.stage import planned_steps
  d2q = config.doc2query
  train_cfg = ml_collections.ConfigDict(d2q.train.to_dict())
  train_cfg.num_steps = planned_steps(d2q.train, target.counts["search_train"])[0]
  model_cfg = t5_config_from_section(config.model, int(config.data.vocab_size))
  return compile_train_step(name, target, model_cfg, train_cfg, int(d2q.train.batch_size), int(d2q.max_input_len),
                            int(d2q.max_query_len))


def _compile_beam_search(name: str, target: Target) -> tuple[dict, int]:
  config, model_cfg, chip = target.config, target.model_cfg, target.chip
  eval_batch, num_beams = int(config.eval.batch_size), int(config.eval.num_beams)
  _, semantic_levels, _ = levels_from_config(config.identifiers)
  codebook = int(config.identifiers.codebook_size)
  catalogue, per_query = synthetic_tries(int(target.counts["items"]), len(semantic_levels), codebook, eval_batch,
                                         int(target.plan_cfg.num_candidates),
                                         model_cfg.vocab_size - len(semantic_levels) * codebook)
  tables = per_query if name == "beam_search_sampled" else catalogue
  def lower(on_mesh):
    params = abstract_params(model_cfg, on_mesh, target.rules)
    return lower_beam_search(model_cfg, params, tables, on_mesh, eval_batch, int(config.tasks.max_input_len),
                             num_beams)
  compiled, seconds = _timed_compile(name, lambda: lower(target.mesh), target.options)
  result = analyze(compiled, chip, len(target.devices), per_chip=chip.tensorcores,
                   fallback_cost=lambda: cpu_cost(lambda cpu: lower(_cpu_mesh(cpu)), len(target.devices)))
  result["compile_seconds"] = round(seconds, 1)
  return result, eval_batch // int(target.mesh.shape["data"]) * chip.tensorcores


def _compile_sampling(name: str, target: Target) -> tuple[dict, int]:
  config, chip, device = target.config, target.chip, target.devices[0]
  d2q = config.doc2query
  d2q_cfg = t5_config_from_section(config.model, int(config.data.vocab_size))
  compiled, seconds = _timed_compile(name, lambda: lower_sampling(d2q_cfg, d2q, device), target.options)
  step_compiled, step_seconds = _timed_compile(name + " (one token)", lambda: lower_sampling_step(
      d2q_cfg, d2q, device), target.options)
  result = _analyze_one_device(compiled, target, lambda cpu: lower_sampling(d2q_cfg, d2q, cpu))
  token = _analyze_one_device(step_compiled, target, lambda cpu: lower_sampling_step(d2q_cfg, d2q, cpu))
  extra = int(d2q.max_query_len) - 1     # loop iterations beyond the one XLA counted (upper bound)
  result["flops"] += extra * token["flops"]
  result["bytes_accessed"] += extra * token["bytes_accessed"]
  result["roofline"] = roofline(result["flops"], result["bytes_accessed"], 0.0, chip)
  result["per_token"] = {"flops": token["flops"], "bytes_accessed": token["bytes_accessed"]}
  result["loop_repeat"] = f"+{extra} decoder steps (max_query_len, no early stop)"
  result["compile_seconds"] = round(seconds + step_seconds, 1)
  return result, int(d2q.sampling.batch_size)


def _compile_embed_program(name: str, target: Target) -> tuple[dict, int]:
  config, device = target.config, target.devices[0]
  bert_cfg, source = text_encoder_shape(config.embed.text)
  if name == "text_encoder":
    lower = lambda dev: lower_text_encoder(bert_cfg, config.embed.text, dev)
    rows, note = int(config.embed.text.batch_size), {"encoder_shape": source}
  elif name == "sasrec_train_step":
    width = sasrec_width(config.embed.sasrec, target.plan_cfg, target.counts)
    lower = lambda dev: lower_sasrec_step(config.embed.sasrec, target.counts["items"], width, dev)
    rows, note = int(config.embed.sasrec.batch_size), {"window": width}
  else:   # rqvae_train_step
    from gensar_jax.identifiers.rqvae import identifiers_config
    ids = section_with_defaults(config, "identifiers", identifiers_config())
    steps_per_epoch = math.ceil(target.counts["items"] / int(ids.batch_size))
    lower = lambda dev: lower_rqvae_step(ids, bert_cfg.hidden_size, int(config.embed.sasrec.hidden_dim),
                                         steps_per_epoch, dev)
    rows, note = int(ids.batch_size), {"input_widths": {"semantic": bert_cfg.hidden_size,
                                                        "collab": int(config.embed.sasrec.hidden_dim)}}
  compiled, seconds = _timed_compile(name, lambda: lower(device), target.options)
  result = _analyze_one_device(compiled, target, lower)
  result.update(note, compile_seconds=round(seconds, 1))
  return result, rows


_COMPILERS = {"text_encoder": _compile_embed_program, "sasrec_train_step": _compile_embed_program,
              "rqvae_train_step": _compile_embed_program, "doc2query_train_step": _compile_train_program,
              "doc2query_sampling": _compile_sampling, "train_step": _compile_train_program,
              "beam_search_sampled": _compile_beam_search, "beam_search_full": _compile_beam_search}


def compile_program(name: str, target: Target) -> tuple[dict, int]:
  """Compiles one program of the plan; returns (its `analyze` result, rows per exposed device). A program
  the compiler refuses for lack of HBM gives a misfit result (`compile_failure`)."""
  if name not in _COMPILERS:
    raise ValueError(f"unknown program {name!r}; expected one of {PROGRAMS}")
  try:
    return _COMPILERS[name](name, target)
  except jax.errors.JaxRuntimeError as e:
    result = compile_failure(e, target.chip, target.chip.tensorcores)
    if result is None:
      raise
    log.warning("plan: %s does not compile: %s", name, result["compile_error"])
    return result, _nominal_rows(name, target)


def _nominal_rows(name: str, target: Target) -> int:
  """Rows per device of a program as configured (for a program whose compile failed)."""
  c, shape = target.config, target.mesh_shape
  return {"train_step": int(c.train.batch_size) // (shape["data"] * shape["fsdp"]),
          "doc2query_train_step": int(c.doc2query.train.batch_size) // (shape["data"] * shape["fsdp"]),
          "doc2query_sampling": int(c.doc2query.sampling.batch_size), "text_encoder": int(c.embed.text.batch_size),
          "sasrec_train_step": int(c.embed.sasrec.batch_size), "rqvae_train_step": int(c.identifiers.batch_size)
          }.get(name, int(c.eval.batch_size) // shape["data"])


def generator_summary(result: dict) -> dict:
  """The figures of one train-step compile that the dropout-generator comparison reports."""
  if result.get("roofline") is None:
    return {"error": result.get("error") or result.get("compile_error"), "fits": False}
  r = result["roofline"]
  return {"step_s": r["step_s"], "bound": r["bound"], "mfu": r["mfu"], "flops": result["flops"],
          "bytes_accessed": result["bytes_accessed"], "ici_traffic_bytes": result["ici_traffic_bytes"],
          "peak_bytes": result["memory"]["peak_bytes"], "fits": result["fits"],
          "compile_seconds": result.get("compile_seconds")}


def cheapest_generator(generators: Mapping[str, dict]) -> str | None:
  """The generator with the shortest estimated step among those that compiled and fit (ties: fewer FLOPs,
  the work the roofline's bound hides); None when none did."""
  ok = {g: s for g, s in generators.items() if s.get("step_s") is not None and s.get("fits")}
  return min(ok, key=lambda g: (ok[g]["step_s"], ok[g]["flops"])) if ok else None


def compare_dropout_rngs(target: Target, configured: dict, generators: tuple[str, ...], layers: int = 0) -> dict:
  """The train step under each dropout-mask generator (`train.dropout_rng`): {"configured", "layers",
  "generators": {name: generator_summary}, "cheapest"}. At the config's depth (`layers` 0; "layers": None)
  `configured` is the config's own train-step result (not recompiled); with `layers` > 0 every generator is
  compiled with that many encoder and decoder layers. A generator that cannot trace at these shapes (e.g. the hash's
  2**32-element limit) is reported with its error."""
  config = target.config
  own = str(target.train_cfg.get("dropout_rng", "threefry"))
  model_cfg = target.model_cfg
  out = {}
  if layers > 0:
    model_cfg = model_cfg.replace(num_encoder_layers=int(layers), num_decoder_layers=int(layers))
  else:
    out[own] = generator_summary(configured)
  for generator in dict.fromkeys((own, *generators)):
    if generator in out:
      continue
    if generator not in DROPOUT_RNGS:
      raise ValueError(f"plan.dropout_rngs: {generator!r} is not one of {DROPOUT_RNGS}")
    train_cfg = ml_collections.ConfigDict(target.train_cfg.to_dict())
    train_cfg.dropout_rng = generator
    depth = f", {layers}+{layers} layers" if layers > 0 else ""
    try:
      result, _ = compile_train_step(f"train_step (dropout_rng={generator}{depth})", target, model_cfg, train_cfg,
                                     int(config.train.batch_size), int(config.tasks.max_input_len),
                                     int(config.tasks.max_target_len))
    except ValueError as e:
      result = error_result(str(e), target.chip)
    except jax.errors.JaxRuntimeError as e:
      result = compile_failure(e, target.chip, target.chip.tensorcores)
      if result is None:
        raise
    out[generator] = generator_summary(result)
  return {"configured": own, "layers": [int(layers), int(layers)] if layers > 0 else None,
          "generators": out, "cheapest": cheapest_generator(out)}


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
  """Compiles `programs` for the config's slice and returns the report (see the module docstring).
  A subset of `PROGRAMS` gives a partial estimate (`estimate["partial"]`, with the programs it lacks)."""
  plan_cfg = section_with_defaults(config, "plan", plan_config())
  topology = topology or plan_cfg.topology
  if not topology:
    raise ValueError(f"config {config.name!r} names no slice to plan for: pass --topology (e.g. v5e:8x8, v4:2x2x4, "
                     "h100:8), or give the config a plan section with plan.topology as configs/tpu_v5e_64.py does")
  unknown = [p for p in programs if p not in PROGRAMS]
  if unknown:
    raise ValueError(f"unknown program(s) {unknown}; expected a subset of {PROGRAMS}")
  use_compilation_cache(plan_cfg.compilation_cache)
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
  counts, counts_source = dataset_counts(plan_cfg, workdir)
  budget = training_budget(config, epoch_examples(config, counts))
  exposed = len(devices) // chip.tensorcores
  hosts = slice_hosts(topology, exposed)
  train_cfg = ml_collections.ConfigDict(config.train.to_dict())
  train_cfg.num_steps = budget["num_steps"]
  report: dict[str, Any] = {
      "config": config.name, "topology": topology, "chip": dataclasses.asdict(chip),
      "devices": exposed, "tensorcores": len(devices), "mesh": mesh_shape, "hosts": hosts, "jax": jax.__version__,
      "compiler": libtpu_available()[1] if chip.name not in GPUS else "jax-cuda12-plugin",
      "model": {"vocab_size": vocab, "d_model": model_cfg.d_model, "layers": [model_cfg.num_encoder_layers,
                model_cfg.num_decoder_layers], "bf16_training": bool(config.train.bf16),
                "dropout_rng": str(train_cfg.get("dropout_rng", "threefry")), "attention": model_cfg.attention,
                "loss_chunks": int(train_cfg.get("loss_chunks", 1))},
      "shapes": {"global_batch": batch, "rows_per_device": batch // batch_axes, "input_len": input_len,
                 "target_len": target_len, "grad_accum_steps": int(config.train.grad_accum_steps)},
      "counts": dict(counts, source=counts_source),
      "budget": dict(budget, epoch_source=counts_source), "programs": {}, "advice": []}
  eval_batch = int(config.eval.batch_size)
  if eval_batch % mesh_shape["data"]:
    raise ValueError(f"eval.batch_size {eval_batch} is not divisible by the mesh's data axis ({mesh_shape['data']})")
  target = Target(config, plan_cfg, model_cfg, train_cfg, mesh, mesh_shape, rules, devices, chip, counts)
  for name in programs:
    result, rows = compile_program(name, target)
    result["rows_per_device"] = rows
    result["placement"] = PLACEMENT[name]
    report["programs"][name] = result
    report["advice"] += advice(name, result, rows, config, mesh_shape)
  if "train_step" in report["programs"] and tuple(plan_cfg.dropout_rngs):
    report["dropout_rng"] = compare_dropout_rngs(target, report["programs"]["train_step"], tuple(plan_cfg.dropout_rngs),
                                                 int(plan_cfg.dropout_compare_layers))
    report["advice"] += dropout_advice(report["dropout_rng"], budget["num_steps"])
  report["estimate"] = estimate(report, config, counts, hosts)
  report["fits"] = all(p["fits"] for p in report["programs"].values())
  for name, p in report["programs"].items():
    if p["fits"] and p["hbm_fraction"] > float(plan_cfg.tight_fraction):
      report["advice"].append(f"{name} is tight: {p['hbm_fraction']:.0%} of HBM; XLA and the runtime keep some "
                              "HBM for themselves, so expect little headroom.")
  if workdir is not None:
    write_json(as_path(workdir) / "plan" / "plan.json", report)
  return report


def dropout_advice(comparison: dict, num_steps: int) -> list[str]:
  """A note when another dropout-mask generator gives a shorter estimated train step than the config's."""
  own, best, gens = comparison["configured"], comparison["cheapest"], comparison["generators"]
  if best is None or best == own or gens[own].get("step_s") is None:
    return []
  saved = (gens[own]["step_s"] - gens[best]["step_s"]) * num_steps
  depth = comparison.get("layers")
  where = f" at {depth[0]}+{depth[1]} layers" if depth else ""
  return [f"train.dropout_rng={best} gives a shorter estimated train step than {own}{where} "
          f"({format_duration(gens[best]['step_s'], 4)} against {format_duration(gens[own]['step_s'], 4)}, "
          f"{format_duration(saved)} less over the budget at that depth): --set train.dropout_rng={best}."]


def estimate(report: dict, config: ml_collections.ConfigDict, counts: Mapping[str, int], hosts: int) -> dict:
  """The whole pipeline's time: every stage's calls (`stage_calls`) x its programs' roofline time per call
  (`pipeline_estimate`), plus the training figures (step, MFU, epoch, one validation, input rate per host)."""
  programs, budget = report["programs"], report["budget"]
  out: dict[str, Any] = pipeline_estimate(stage_calls(config, counts, hosts), programs, report["devices"],
                                          report["chip"]["usd_per_chip_hour"])
  out["programs_compiled"] = list(programs)
  timed = {k: v for k, v in programs.items() if v.get("roofline")}
  if "train_step" in timed:
    step_s = timed["train_step"]["roofline"]["step_s"]
    out.update(step_s=step_s, mfu=timed["train_step"]["roofline"]["mfu"],
               epoch_s=step_s * budget["steps_per_epoch"], train_s=step_s * budget["num_steps"],
               host_examples_per_s=budget["global_batch"] / hosts / step_s)
  validation = next((r for r in out["rows"] if r["stage"] == "validation"), None)
  if validation and validation["seconds"] is not None and budget["validations"]:
    out["validation_s"] = validation["seconds"] / budget["validations"]
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


def _program_row(name: str, p: dict) -> str:
  m, r = p["memory"], p["roofline"]
  if p.get("error"):
    return f"| {name} | {p['rows_per_device']} | - | - | - | - | NO ({p['error']}) | - | - | - | - | - | - |"
  if r is None:
    return (f"| {name} | {p['rows_per_device']} | - | {_gib(m['temp_bytes'])} | {_gib(m['peak_bytes'])} | "
            f"{p['hbm_fraction']:.0%} | NO (compiler: out of HBM) | - | - | - | - | - | - |")
  return (f"| {name} | {p['rows_per_device']} | {_gib(m['argument_bytes'])} | {_gib(m['temp_bytes'])} | "
          f"{_gib(m['peak_bytes'])} | {p['hbm_fraction']:.0%} | {'yes' if p['fits'] else 'NO'} | "
          f"{p['flops'] / 1e12:.3f} | {p['bytes_accessed'] / 1e9:.2f} | {format_collectives(p['collectives'])} "
          f"| {_duration(r['step_s'])} | {r['bound']} | {r['mfu']:.0%} |")


def format_stages(est: dict, devices: int) -> list[str]:
  """The per-stage table of a pipeline estimate: each program's calls and time, each stage's total."""
  lines = ["| stage | program | runs on | calls | est. per call | total | how the calls are counted |",
           "| --- | --- | --- | ---: | ---: | ---: | --- |"]
  for stage, _ in STAGES:
    rows = [r for r in est["rows"] if r["stage"] == stage]
    for r in rows:
      lines.append(f"| {stage} | {r['program']} | {r['placement']} | {r['calls']:,} | {_duration(r['step_s'])} | "
                   f"{_duration(r['seconds']) if r['seconds'] is not None else 'not compiled'} | {r['rule']} |")
    totals = est["stages"].get(stage)
    if totals is not None:
      lines.append(f"| **{stage}** | | | | | **{_duration(totals['seconds'])}**"
                   f"{'' if totals['complete'] else ' (partial)'} | |")
  price = est["list_price_usd"]
  scope = (f"PARTIAL pipeline (programs not compiled: {', '.join(est['missing_programs'])})" if est["partial"]
           else "whole pipeline")
  whole = (f"{scope}: {est['days']:.2f} days, {est['chip_hours']:,.0f} chip-hours (the slice's {devices} chips held "
           "throughout)" + (f", about ${price:,.0f} at list price" if price is not None else ""))
  return lines + ["", whole]


def format_dropout(comparison: dict) -> list[str]:
  lines = ["| train.dropout_rng | est. step | bound | TFLOP/dev | GB accessed | peak GiB | fits |",
           "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
  for name, g in comparison["generators"].items():
    tag = " (config)" if name == comparison["configured"] else ""
    if g.get("step_s") is None:
      lines.append(f"| {name}{tag} | - | - | - | - | - | NO ({g.get('error')}) |")
      continue
    lines.append(f"| {name}{tag} | {_duration(g['step_s'], 4)} | {g['bound']} | {g['flops'] / 1e12:.3f} | "
                 f"{g['bytes_accessed'] / 1e9:.2f} | {_gib(g['peak_bytes'])} | {'yes' if g['fits'] else 'NO'} |")
  depth = comparison.get("layers")
  lines.append(f"cheapest dropout-mask generator on {comparison.get('chip', 'this chip')}: {comparison['cheapest']}; "
               f"the config uses {comparison['configured']}"
               + (f" (train steps compiled with {depth[0]}+{depth[1]} layers)" if depth else ""))
  return lines


def format_plan(report: dict) -> str:
  """A readable report of a `plan`: the programs, the dropout-generator comparison, the per-stage table."""
  chip, est = report["chip"], report["estimate"]
  lines = [f"gensar plan: {report['config']} on {report['topology']} ({report['devices']} x {chip['name']} devices, "
           f"{_gib(chip['hbm_bytes'])} GiB HBM each, {report['hosts']} host(s)), mesh {report['mesh']}, "
           f"jax {report['jax']}, compiler {report['compiler']}",
           f"global batch {report['shapes']['global_batch']} ({report['shapes']['rows_per_device']} rows per "
           f"device), input {report['shapes']['input_len']}, target {report['shapes']['target_len']}, "
           f"bf16 training {report['model']['bf16_training']}, vocabulary {report['model']['vocab_size']}, "
           f"dropout masks {report['model']['dropout_rng']}", "",
           "| program | rows/dev | args GiB | temps GiB | peak GiB | HBM | fits | TFLOP/dev | GB accessed | "
           "collectives | est. time | bound | MFU |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | --- | ---: |"]
  lines += [_program_row(name, p) for name, p in report["programs"].items()]
  if report.get("dropout_rng"):
    lines += [""] + format_dropout(dict(report["dropout_rng"], chip=chip["name"]))
  b = report["budget"]
  lines += ["", f"budget: {b['num_steps']:,} steps ({b['steps_per_epoch']} per epoch of {b['epoch_examples']:,} "
                f"examples), {b['validations']} validations; counts from {report['counts']['source']}", ""]
  lines += format_stages(est, report["devices"])
  if "step_s" in est:
    lines.append(f"training: {_duration(est['step_s'])} per step, {_duration(est['epoch_s'])} per epoch, "
                 f"{_duration(est['train_s'])} for the budget; one validation {_duration(est.get('validation_s'))}")
  if "host_examples_per_s" in est:
    lines.append(f"input pipeline: each of the {report['hosts']} hosts must feed {est['host_examples_per_s']:,.0f} "
                 "examples/s to keep up")
  lines.append("roofline: max(FLOPs / peak, bytes / HBM bandwidth) + collective traffic / ICI bandwidth; an "
               "estimate from published chip figures, not a measurement")
  lines.append("FITS" if report["fits"] else "DOES NOT FIT")
  lines += [f"- {a}" for a in report["advice"]]
  return "\n".join(lines)
