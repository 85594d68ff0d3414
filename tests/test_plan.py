"""`gensar plan`: HLO parsing and the roofline by hand; deviceless TPU compiles of a matmul, the tiny
train step and the beam search on a 4-chip v5e topology (need libtpu: `pip install -e ".[tpu]"`)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from gensar_jax import parallel, plan
from gensar_jax.model.t5 import T5Config, count_params, init_params
from gensar_jax.train import state as state_lib

HAVE_LIBTPU, LIBTPU_WHY = plan.libtpu_available()
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason=f"deviceless TPU compile tests skipped: {LIBTPU_WHY}")

HLO = """
ENTRY %main {
  %p = f32[256,128]{1,0} parameter(0)
  %all-reduce.1 = f32[256,128]{1,0} all-reduce(%p), channel_id=1, replica_groups=[1,4]<=[4], to_apply=%add
  %ag-start = (bf16[8,16]{1,0}, bf16[32,16]{1,0}) all-gather-start(%x), replica_groups={{0,1,2,3}}, dimensions={0}
  %ag-done = bf16[32,16]{1,0} all-gather-done(%ag-start)
  ROOT %t = (f32[2]{0}, s32[]) all-reduce(%a, %b), replica_groups=[2,2]<=[4], to_apply=%add
}
"""


def test_shape_bytes():
  assert plan.shape_bytes("(f32[8,4]{1,0}, bf16[2])") == 8 * 4 * 4 + 2 * 2
  assert plan.shape_bytes("s32[]") == 4


def test_parse_collectives_counts_async_pairs_once_with_ring_traffic():
  found = {c["kind"]: c for c in plan.parse_collectives(HLO, 4)}
  reduce, gather = found["all-reduce"], found["all-gather"]
  assert reduce["count"] == 2 and reduce["bytes"] == 256 * 128 * 4 + 2 * 4 + 4
  # ring all-reduce sends 2(n-1)/n of the array: n = 4 for the first, n = 2 for the tuple.
  assert reduce["traffic_bytes"] == pytest.approx(1.5 * 256 * 128 * 4 + 1.0 * 12)
  assert gather["count"] == 1 and gather["bytes"] == 32 * 16 * 2
  assert gather["traffic_bytes"] == pytest.approx(0.75 * 32 * 16 * 2)


def test_roofline_takes_the_slower_of_compute_and_memory_plus_collectives():
  chip = plan.CHIPS["TPU v5 lite"]
  r = plan.roofline(flops=197e12, hbm_bytes=819e9 / 2, ici_bytes=400e9 / 4, chip=chip)
  assert r["compute_s"] == pytest.approx(1.0) and r["hbm_s"] == pytest.approx(0.5)
  assert r["step_s"] == pytest.approx(1.25) and r["bound"] == "compute" and r["mfu"] == pytest.approx(0.8)


def test_advice_names_the_misfit_and_what_would_fit():
  memory = {"argument_bytes": 1 * plan.GIB, "output_bytes": 1 * plan.GIB, "alias_bytes": 1 * plan.GIB,
            "temp_bytes": 16 * plan.GIB, "code_bytes": 0}
  memory["peak_bytes"] = 17 * plan.GIB
  result = {"memory": memory, "fits": False, "hbm_capacity_bytes": 10 * plan.GIB}
  config = ml_collections.ConfigDict({"train": {"bf16": False, "grad_accum_steps": 1}})
  notes = plan.advice("train_step", result, 512, config, {"data": 8, "fsdp": 1})
  assert "train_step does not fit: 17.0 GiB peak per device against 10.0 GiB" in notes[0]
  # (10 - 1) GiB of room at 16 GiB / 512 rows -> 288 rows, so two micro-batches keep the global batch.
  assert "About 288 rows per device" in notes[1] and "grad_accum_steps=2" in notes[1] and "bf16" in notes[1]


def test_compile_failure_turns_the_compilers_out_of_memory_into_a_misfit():
  error = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                       "temporaries (59.16G) exceeds available HBM (15.25G).\nmore")
  result = plan.compile_failure(error, plan.CHIPS["TPU v4"], per_chip=2)
  assert not result["fits"] and result["memory"]["temp_bytes"] == int(2 * 59.16 * plan.GIB)
  assert result["hbm_capacity_bytes"] == pytest.approx(2 * 15.25 * plan.GIB) and result["roofline"] is None
  notes = plan.advice("train_step", dict(result), 512, ml_collections.ConfigDict(
      {"train": {"bf16": True, "grad_accum_steps": 1}}), {"data": 16, "fsdp": 1})
  assert "does not fit: 118.3 GiB" in notes[0] and "grad_accum_steps=4" in notes[1]
  assert plan.compile_failure(RuntimeError("INTERNAL: something else"), plan.CHIPS["TPU v4"], 2) is None


def test_epoch_examples_follow_the_task_sizes():
  config = ml_collections.ConfigDict({"tasks": {"sizes": {"nrip": -1, "nsip": 100_000, "nsqp": 1000}}})
  total, source = plan.epoch_examples(config, plan.plan_config(), None)
  assert total == 930_387 + 100_000 + 1000 and "paper" in source


# ------------------------------------------------------------------------------------ deviceless TPU

@pytest.fixture(scope="module")
def v5e_2x2():
  devices, chip = plan.topology_devices("v5e:2x2")
  return devices, chip


@needs_libtpu
def test_megacore_slices_expose_one_device_per_chip_and_compile_per_core():
  devices, chip = plan.topology_devices("v4:2x2x1")
  assert chip.name == "v4" and chip.tensorcores == 2 and len(devices) == 8      # 8 TensorCores, 4 chips
  config = ml_collections.ConfigDict({"parallel": {"mesh_shape": {"data": -1, "fsdp": 1, "model": 1}}})
  mesh, shape = plan.plan_mesh(config, devices, chip)
  assert shape == {"data": 4, "fsdp": 1, "model": 1} and dict(mesh.shape)["data"] == 8
  config.parallel.mesh_shape.data = 8
  with pytest.raises(ValueError, match="does not fit the slice's 4 devices"):
    plan.plan_mesh(config, devices, chip)


@needs_libtpu
def test_matmul_memory_and_flops_match_hand_computation(v5e_2x2):
  devices, chip = v5e_2x2
  mesh = parallel.make_mesh({"data": 4}, devices)
  m, k, n = 1024, 512, 256
  a = jax.ShapeDtypeStruct((m, k), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec(None, "data")))
  b = jax.ShapeDtypeStruct((k, n), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("data", None)))
  out = NamedSharding(mesh, PartitionSpec())
  compiled = jax.jit(lambda x, y: x @ y, out_shardings=out).lower(a, b).compile()
  result = plan.analyze(compiled, chip, 4)
  # Each device multiplies its [m, k/4] x [k/4, n] blocks, then the partial products are all-reduced.
  assert result["flops"] == pytest.approx(2 * m * (k // 4) * n, rel=0.01)
  assert result["memory"]["argument_bytes"] == (m * k // 4 + k // 4 * n) * 2
  assert result["memory"]["output_bytes"] == m * n * 2
  reduce = {c["kind"]: c for c in result["collectives"]}["all-reduce"]
  assert reduce["bytes"] >= m * n * 2 and result["fits"]


def _tiny_model():
  return T5Config.tiny(64, num_encoder_layers=1, num_decoder_layers=1)


@needs_libtpu
def test_tiny_train_step_compiles_for_v5e_with_replicated_state_and_one_gradient_reduction(v5e_2x2):
  devices, chip = v5e_2x2
  mesh = parallel.make_mesh({"data": 4}, devices)
  rules = parallel.DEFAULT_LOGICAL_AXIS_RULES
  model_cfg = _tiny_model()
  train_cfg = state_lib.train_config()
  batch, s, t = 16, 12, 4
  compiled = plan.lower_train_step(model_cfg, train_cfg, mesh, rules, batch, s, t).compile()
  result = plan.analyze(compiled, chip, 4)
  param_bytes = 4 * count_params(jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0))))
  # Arguments: params + two Adam moments (float32, replicated) + the step + this device's batch rows.
  rows = batch // 4
  batch_bytes = rows * (s + 3 * t) * 4
  # (The TPU layout pads minor dimensions to 128 lanes, so d_model 32 arrays take up to 4x their size.)
  assert 3 * param_bytes + batch_bytes <= result["memory"]["argument_bytes"] <= 4 * (3 * param_bytes + batch_bytes)
  # The gradients (float32, one per parameter) are all-reduced over the data axis.
  reduced = sum(c["bytes"] for c in result["collectives"] if c["kind"] == "all-reduce")
  assert param_bytes <= reduced <= param_bytes + 4096
  # The tied output projection alone: forward 2*rows*t*d*V, backward twice that.
  assert result["flops"] >= 3 * 2 * rows * t * model_cfg.d_model * model_cfg.vocab_size
  assert result["fits"] and result["roofline"]["step_s"] > 0


@needs_libtpu
def test_tiny_beam_search_compiles_for_v5e(v5e_2x2):
  devices, chip = v5e_2x2
  mesh = parallel.make_mesh({"data": 4}, devices)
  model_cfg = _tiny_model()
  catalogue, per_query = plan.synthetic_tries(300, 3, 8, batch=8, num_candidates=10, offset=40)
  params = plan.abstract_params(model_cfg, mesh, parallel.DEFAULT_LOGICAL_AXIS_RULES)
  # Per-query candidate tries (validation); the catalogue trie is compiled by the CLI test below.
  compiled = plan.lower_beam_search(model_cfg, params, per_query, mesh, batch=8, input_len=12, num_beams=5).compile()
  result = plan.analyze(compiled, chip, 4)
  assert result["fits"] and result["flops"] > 0
  assert result["memory"]["argument_bytes"] >= 4 * count_params(
      jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0))))
  assert per_query.leaf_items.shape[0] == 8 and np.asarray(catalogue.leaf_items).shape[0] == 1


@needs_libtpu
def test_gensar_plan_prints_the_table_and_writes_plan_json(tmp_path, capsys):
  import json
  from gensar_jax import cli
  status = cli.main(["plan", "--config", "tiny", "--topology", "v5e:2x2", "--workdir", str(tmp_path),
                     "--programs", "beam_search_full"])
  out = capsys.readouterr().out
  assert status == 0 and "| beam_search_full | 4 |" in out and "FITS" in out
  report = json.loads((tmp_path / "plan" / "plan.json").read_text())
  assert report["devices"] == 4 and report["hosts"] == 1 and report["mesh"]["data"] == 4
  full = report["programs"]["beam_search_full"]
  assert full["fits"] and full["flops"] > 0 and full["roofline"]["step_s"] > 0


def test_slice_hosts():
  assert plan.slice_hosts("v5e:8x8", 64) == 16 and plan.slice_hosts("v6e:2x4", 8) == 1
  assert plan.slice_hosts("v4:2x2x4", 16) == 4 and plan.slice_hosts("h100:2x8", 16) == 2
  assert plan.slice_hosts("h100:8", 8) == 1
