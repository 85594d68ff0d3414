"""Device meshes, logical-axis rules, shardings and multi-host initialisation.

Parameters and activations carry logical axis names ("batch", "embed", "mlp", ...); the rules map
them onto mesh axes ("data", "fsdp", "model"). A logical axis whose mesh axes are already used by an
earlier dimension of the same array stays unsharded (Flax's rule resolution), so "batch" -> (data,
fsdp) and "embed" -> fsdp coexist: parameters are sharded over fsdp, activations over the batch.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gensar_jax.config_schema import Field, Section, satisfies, whole_at_least

logger = logging.getLogger(__name__)

DATA_AXIS = "data"  # the mesh axis decoding spreads its queries over
MESH_AXES = (DATA_AXIS, "fsdp", "model")

DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("relpos_buckets", None),
)

_distributed_initialized = False


# The `parallel` section, read by the doc2query and train stages.
PARALLEL_SCHEMA = Section(dict(
    # -1 takes the remaining devices; the product must equal the number of devices.
    mesh_shape=Section({axis: Field(size, satisfies(lambda v: v == -1 or whole_at_least(1)(v),
                                                    "-1 (the remaining devices) or >= 1"))
                        for axis, size in zip(MESH_AXES, (-1, 1, 1))}),
    logical_axis_rules=Field(DEFAULT_LOGICAL_AXIS_RULES, satisfies(
        lambda v: isinstance(v, tuple) and all(isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str) for r in v),
        "a tuple of (logical axis name, mesh axes) pairs")),
))


def parallel_config() -> ml_collections.ConfigDict:
  """Defaults of the `parallel` section."""
  return PARALLEL_SCHEMA.defaults()


def maybe_initialize_distributed() -> bool:
  """Starts `jax.distributed` when the environment describes several processes; True if it did.

  `gensar` calls it first thing in every command. GENSAR_DISTRIBUTED=off keeps a process on its own.
  Sources, in order: JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID, optional
  JAX_LOCAL_DEVICE_IDS), GENSAR_DISTRIBUTED=auto (JAX's own cluster detection: Cloud TPU, SLURM,
  Open MPI, ...; set by launch/tpu_pod.sh), a SLURM job step with more than one task, a multi-host
  Cloud TPU slice (TPU_WORKER_HOSTNAMES with several hosts). Single-process runs are a no-op. Call it
  before any other JAX call that touches devices.
  """
  global _distributed_initialized
  if _distributed_initialized:
    return True
  env = os.environ
  kwargs: dict[str, Any] | None = None
  if env.get("GENSAR_DISTRIBUTED", "").lower() == "off":
    return False
  if env.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not env.get(k)]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not (set all three for multi-process)")
    kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env["JAX_PROCESS_ID"]))
    if env.get("JAX_LOCAL_DEVICE_IDS"):
      kwargs["local_device_ids"] = [int(x) for x in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
  elif env.get("GENSAR_DISTRIBUTED", "").lower() == "auto":
    kwargs = {}
  elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:
    kwargs = {}  # jax detects the coordinator, process count and id from SLURM variables
  elif len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    kwargs = {}  # Cloud TPU pod slice: auto-detected from the TPU metadata
  if kwargs is None:
    return False
  jax.distributed.initialize(**kwargs)
  _distributed_initialized = True
  logger.info("jax.distributed initialised: process %d of %d, %d local / %d global devices", jax.process_index(),
              jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# ------------------------------------------------------------------------------------ coordination

def is_primary() -> bool:
  """Whether this is process 0, the one that runs host-side work and writes shared files."""
  return jax.process_index() == 0


def barrier_timeout_ms() -> int:
  """How long a process waits for the others (GENSAR_BARRIER_TIMEOUT_S, default 24 h: a host-side stage
  of a large catalogue runs on process 0 alone while the others wait)."""
  return int(float(os.environ.get("GENSAR_BARRIER_TIMEOUT_S", 24 * 3600)) * 1000)


def _coordination_client():
  """The `jax.distributed` coordination client (key-value store and barriers), as Orbax uses it."""
  from jax._src import distributed
  client = distributed.global_state.client
  if client is None:
    raise RuntimeError("jax.distributed is not initialised; call maybe_initialize_distributed() first")
  return client


class PrimaryFailed(RuntimeError):
  """Process 0 failed in work the other processes were waiting for."""


_coordination_calls = itertools.count()


def _unique_key(name: str) -> str:
  """A coordination key unique within the job: every process makes the same calls in the same order, so the
  n-th call has the same key everywhere, and a name used twice (a stage run for several methods) never
  collides with its earlier use. Work that process 0 runs alone must therefore not call these functions."""
  return f"gensar/{next(_coordination_calls)}/{name}"


def value_from_primary(name: str, compute: Callable[[], str]) -> str:
  """`compute()` run on process 0 only, its string result given to every process (through the coordination
  service's key-value store; for small values such as a fingerprint)."""
  if jax.process_count() == 1:
    return compute()
  client, key = _coordination_client(), _unique_key(name) + "/value"
  on_primary(name, lambda: client.key_value_set(key, compute()))
  return client.blocking_key_value_get(key, barrier_timeout_ms())


def on_primary(name: str, work: Callable[[], Any]) -> Any:
  """Runs `work` on process 0 while the others wait, then returns its result on process 0 (None elsewhere).

  Process 0 publishes "ok" or its error under `name` in the coordination service; the others wait for it
  (GENSAR_BARRIER_TIMEOUT_S) and raise `PrimaryFailed` with process 0's message, so every process stops
  with the same reason instead of hanging at a barrier. `name` says what is waited for (see `_unique_key`).
  """
  if jax.process_count() == 1:
    return work()
  client, key = _coordination_client(), _unique_key(name)
  if is_primary():
    try:
      result = work()
    except BaseException as e:
      client.key_value_set(key, f"error: {type(e).__name__}: {e}")
      raise
    client.key_value_set(key, "ok")
    return result
  status = client.blocking_key_value_get(key, barrier_timeout_ms())
  if status != "ok":
    raise PrimaryFailed(f"process 0 failed in {name} ({status.removeprefix('error: ')})")
  return None


def process_batches(num_batches: int) -> range:
  """The batches this process computes when a loop over `num_batches` batches is split across processes
  (round robin: process p takes p, p + P, ...)."""
  return range(jax.process_index(), num_batches, jax.process_count())


def gather_process_batches(local: list, num_batches: int, template: Any) -> list:
  """Every process's results of `process_batches(num_batches)` -> all `num_batches` results in batch order,
  on every process. local: this process's results (pytrees of arrays shaped like `template`)."""
  if jax.process_count() == 1:
    return list(local)
  from jax.experimental import multihost_utils
  count = jax.process_count()
  per_process = -(-num_batches // count)
  padding = [jax.tree.map(np.zeros_like, template)] * (per_process - len(local))
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *(list(local) + padding))   # [per_process, ...]
  gathered = multihost_utils.process_allgather(stacked)                          # [count, per_process, ...]
  return [jax.tree.map(lambda x, b=b: np.asarray(x[b % count, b // count]), gathered) for b in range(num_batches)]


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Replaces one -1 entry by the remaining device count; checks the product."""
  shape = {str(k): int(v) for k, v in dict(mesh_shape).items()}
  free = [k for k, v in shape.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f"mesh_shape {shape}: at most one axis may be -1")
  if any(v == 0 or v < -1 for v in shape.values()):
    raise ValueError(f"mesh_shape {shape}: sizes must be positive or -1")
  fixed = math.prod(v for v in shape.values() if v != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh_shape {shape}: {num_devices} devices are not divisible by the fixed axes ({fixed})")
    shape[free[0]] = num_devices // fixed
  if math.prod(shape.values()) != num_devices:
    raise ValueError(f"mesh_shape {shape}: product {math.prod(shape.values())} != {num_devices} devices")
  return shape


def full_mesh_shape(mesh_shape: Mapping[str, int]) -> dict[str, int]:
  """`mesh_shape` with the standard axes (data, fsdp, model) it leaves out at size 1, standard axes first."""
  given = dict(mesh_shape)
  full = {axis: given.pop(axis, 1) for axis in MESH_AXES}
  full.update(given)
  return full


def make_mesh(mesh_shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with explicit `AxisType.Auto` axes, e.g. make_mesh({"data": -1, "fsdp": 1, "model": 1}).

  Standard axes (data, fsdp, model) that `mesh_shape` leaves out get size 1, so the default rules apply.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(full_mesh_shape(mesh_shape), len(devices))
  names = tuple(shape)
  axis_types = (AxisType.Auto,) * len(names)
  if len(devices) == jax.device_count() and set(devices) == set(jax.devices()):   # topology-aware order
    return jax.make_mesh(tuple(shape.values()), names, axis_types=axis_types, devices=devices)
  return Mesh(np.asarray(devices).reshape(tuple(shape.values())), names, axis_types=axis_types)


def rules_tuple(rules) -> tuple:
  """Config rules (tuples or lists from JSON/overrides) -> the tuple-of-pairs Flax expects."""
  out = []
  for pair in rules:
    if len(pair) != 2:
      raise ValueError(f"logical_axis_rules entry {pair!r}: expected (logical_name, mesh_axes)")
    name, target = pair
    out.append((str(name), tuple(target) if isinstance(target, (list, tuple)) else target))
  return tuple(out)


def logical_to_shardings(logical_specs, mesh: Mesh, rules) -> Any:
  """Pytree of logical `PartitionSpec`s -> pytree of `NamedSharding`s on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules_tuple(rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh, batch: int, what: str = "batch") -> NamedSharding:
  """Leading axis over the mesh's data axis, the rest replicated (decoding's queries); `what` (`batch` rows)
  names the value in the error raised when the axis does not divide `batch`."""
  size = mesh.shape[DATA_AXIS]
  if batch % size:
    raise ValueError(f"{what} {batch} is not divisible by the mesh's '{DATA_AXIS}' axis ({size})")
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
  """Leading axis over the mesh axes of logical "batch", the rest replicated."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules_tuple(rules))
  return NamedSharding(mesh, spec)


def host_local_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, rules=DEFAULT_LOGICAL_AXIS_RULES
                               ) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays sharded over "batch" (non-numeric entries are dropped).

  Every process passes the same number of rows; the global batch is their concatenation in process order.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind not in "biuf" or value.ndim == 0:
      continue
    sharding = batch_sharding(mesh, rules, value.ndim)
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


@contextlib.contextmanager
def mesh_and_rules(mesh: Mesh, rules) -> Iterator[None]:
  """Context in which Flax's logical constraints resolve to `mesh` with `rules` (needed while tracing)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_tuple(rules)):
    yield
