"""`gensar plan`: HLO parsing, the roofline and the stages' call counts by hand; deviceless TPU compiles of a
matmul, the tiny train step, the beam search and every stage's programs on a 4-chip v5e topology (need
libtpu: `pip install -e ".[tpu]"`)."""
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from workdir_fixtures import committed_stage
from jax.sharding import NamedSharding, PartitionSpec

from gensar_jax import parallel, plan
from gensar_jax.model.t5 import DROPOUT_RNGS, T5Config, count_params, init_params
from gensar_jax.plan.advice import advice, dropout_advice, tight_advice
from gensar_jax.plan.analysis import analyze, compile_failure, roofline
from gensar_jax.plan.budget import (dataset_counts, epoch_examples, estimate, pipeline_estimate, stage_calls,
                                    validations)
from gensar_jax.plan.chips import GIB
from gensar_jax.plan.dropout import cheapest_generator, compare_dropout_rngs
from gensar_jax.plan.hlo import parse_collectives, shape_bytes
from gensar_jax.plan.lowering import abstract_params, lower_beam_search, lower_train_step, synthetic_tries
from gensar_jax.plan.programs import Target, config_field, nominal_rows
from gensar_jax.plan.report import vocab_size
from gensar_jax.plan.topology import libtpu_available, plan_mesh, topology_devices
from gensar_jax.train import state as state_lib

HAVE_LIBTPU, LIBTPU_WHY = libtpu_available()
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
  assert shape_bytes("(f32[8,4]{1,0}, bf16[2])") == 8 * 4 * 4 + 2 * 2
  assert shape_bytes("s32[]") == 4


def test_parse_collectives_counts_async_pairs_once_with_ring_traffic():
  found = {c["kind"]: c for c in parse_collectives(HLO, 4)}
  reduce, gather = found["all-reduce"], found["all-gather"]
  assert reduce["count"] == 2 and reduce["bytes"] == 256 * 128 * 4 + 2 * 4 + 4
  # ring all-reduce sends 2(n-1)/n of the array: n = 4 for the first, n = 2 for the tuple.
  assert reduce["traffic_bytes"] == pytest.approx(1.5 * 256 * 128 * 4 + 1.0 * 12)
  assert gather["count"] == 1 and gather["bytes"] == 32 * 16 * 2
  assert gather["traffic_bytes"] == pytest.approx(0.75 * 32 * 16 * 2)


def test_roofline_takes_the_slower_of_compute_and_memory_plus_collectives():
  chip = plan.CHIPS["TPU v5 lite"]
  r = roofline(flops=197e12, hbm_bytes=819e9 / 2, ici_bytes=400e9 / 4, chip=chip)
  assert r["compute_s"] == pytest.approx(1.0) and r["hbm_s"] == pytest.approx(0.5)
  assert r["step_s"] == pytest.approx(1.25) and r["bound"] == "compute" and r["mfu"] == pytest.approx(0.8)


def test_advice_names_the_misfit_and_what_would_fit():
  memory = {"argument_bytes": 1 * GIB, "output_bytes": 1 * GIB, "alias_bytes": 1 * GIB,
            "temp_bytes": 16 * GIB, "code_bytes": 0}
  memory["peak_bytes"] = 17 * GIB
  result = {"memory": memory, "fits": False, "hbm_capacity_bytes": 10 * GIB}
  config = ml_collections.ConfigDict({"train": {"bf16": False, "grad_accum_steps": 1}})
  notes = advice("train_step", result, 512, config, {"data": 8, "fsdp": 1})
  assert "train_step does not fit: 17.0 GiB peak per device against 10.0 GiB" in notes[0]
  # (10 - 1) GiB of room at 16 GiB / 512 rows -> 288 rows, so two micro-batches keep the global batch.
  assert "About 288 rows per device" in notes[1] and "grad_accum_steps=2" in notes[1] and "bf16" in notes[1]


def test_compile_failure_turns_the_compilers_out_of_memory_into_a_misfit():
  error = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                       "temporaries (59.16G) exceeds available HBM (15.25G).\nmore")
  result = compile_failure(error, plan.CHIPS["TPU v4"], per_chip=2)
  assert not result["fits"] and result["memory"]["temp_bytes"] == int(2 * 59.16 * GIB)
  assert result["hbm_capacity_bytes"] == pytest.approx(2 * 15.25 * GIB) and result["roofline"] is None
  notes = advice("train_step", dict(result), 512, ml_collections.ConfigDict(
      {"train": {"bf16": True, "grad_accum_steps": 1}}), {"data": 16, "fsdp": 1})
  assert "does not fit: 118.3 GiB" in notes[0] and "grad_accum_steps=4" in notes[1]
  assert compile_failure(RuntimeError("INTERNAL: something else"), plan.CHIPS["TPU v4"], 2) is None


def test_each_registered_program_names_its_batch_field_and_rows_per_device():
  # Batches as the stages split them: train steps over data x fsdp, the beam search over data, the rest on one chip.
  from gensar_jax.config import load_config
  config = load_config("tiny")
  for i, field in enumerate(["train", "doc2query.train", "doc2query.sampling", "embed.text", "embed.sasrec",
                             "identifiers", "eval"]):
    config_field(config, field).batch_size = 2 ** 10 * (i + 1)
  target = Target(config, plan.plan_config(), None, None, None, {"data": 4, "fsdp": 2, "model": 1}, (), [], None, {})
  expected = {"train_step": 2 ** 10 // 8, "doc2query_train_step": 2 * 2 ** 10 // 8,
              "doc2query_sampling": 3 * 2 ** 10, "text_encoder": 4 * 2 ** 10, "sasrec_train_step": 5 * 2 ** 10,
              "rqvae_train_step": 6 * 2 ** 10, "beam_search_sampled": 7 * 2 ** 10 // 4,
              "beam_search_full": 7 * 2 ** 10 // 4}
  assert {name: nominal_rows(name, target) for name in plan.PROGRAMS} == expected
  # The registry holds the stages' programs in pipeline order.
  assert plan.PROGRAMS == tuple(dict.fromkeys(name for _, names in plan.STAGES for name in names))
  # A program that cannot run as configured names the field to change.
  for name, field in [("train_step", "train.batch_size"), ("doc2query_train_step", "doc2query.train.batch_size"),
                      ("beam_search_full", "eval.batch_size"), ("rqvae_train_step", "identifiers.batch_size")]:
    assert advice(name, {"error": "x"}, 1, config, {}) == [f"{name} cannot run as configured: x; change {field}."]
  assert advice("elsewhere", {"error": "x"}, 1, config, {}) == ["elsewhere cannot run as configured: x."]


def test_only_programs_that_fit_above_the_tight_fraction_are_tight():
  programs = {"a": {"fits": True, "hbm_fraction": 0.95}, "b": {"fits": True, "hbm_fraction": 0.9},
              "c": {"fits": False, "hbm_fraction": 1.5}}
  assert tight_advice(programs, 0.9) == ["a is tight: 95% of HBM; XLA and the runtime keep some HBM for themselves, "
                                         "so expect little headroom."]


def test_epoch_examples_follow_the_task_sizes():
  config = ml_collections.ConfigDict({"tasks": {"sizes": {"nrip": -1, "nsip": 100_000, "nsqp": 1000}}})
  counts, source = dataset_counts(plan.plan_config(), None)
  assert epoch_examples(config, counts) == 930_387 + 100_000 + 1000 and "Electronics" in source
  assert counts["items"] == 62_882 and counts["users"] == 192_403 and counts["search_test"] == 191_566


def test_dataset_counts_prefer_the_prepared_stats(tmp_path):
  stats = {"items": 10, "users": 7, "rec_train": 30, "rec_validation": 5, "rec_test": 6, "search_train": 20,
           "search_validation": 3, "search_test": 4, "queries": 2}
  output = committed_stage(tmp_path, "prepare")
  (output / "stats.json").write_text(json.dumps(stats))
  counts, source = dataset_counts(plan.plan_config(), tmp_path)
  assert counts == {k: v for k, v in stats.items() if k != "queries"} and source == str(output / "stats.json")
  _, source = dataset_counts(plan.plan_config(), tmp_path / "elsewhere")      # no prepared dataset there
  assert source.startswith("the plan section's counts")


def test_validations_count_every_multiple_and_the_last_step():
  # train.loop validates when step % eval_every == 0 or at the last step.
  assert validations(25_200, 2000) == 13 and validations(4000, 2000) == 2
  assert validations(1, 2000) == 1 and validations(500, 0) == 0


# ------------------------------------------------------------------------------------ stage counts

COUNTS = {"items": 1000, "users": 700, "rec_train": 5000, "rec_validation": 300, "rec_test": 301,
          "search_train": 4000, "search_validation": 250, "search_test": 251}


def _pipeline_config():
  from gensar_jax.config import load_config
  config = load_config("tiny")
  config.embed.text.batch_size = 64
  config.embed.sasrec.update(dict(epochs=3, batch_size=128))
  config.identifiers.update(dict(epochs=7, batch_size=256))
  config.doc2query.train.update(dict(num_steps=-1, num_epochs=2, batch_size=16))
  config.doc2query.sampling.batch_size = 32
  config.train.update(dict(num_steps=-1, num_epochs=2, batch_size=16, eval_every=100))
  config.eval.update(dict(batch_size=16, validation_rows=100, protocols=("sampled", "full")))
  return config


def test_stage_calls_follow_the_stages_rules():
  config = _pipeline_config()
  calls = {(r["stage"], r["program"]): r for r in stage_calls(config, COUNTS, hosts=3)}
  # The catalogue is split over the hosts (ceil(1000 / 3) = 334 items each), one chip per host.
  assert calls["embed", "text_encoder"]["calls"] == math.ceil(334 / 64) == 6
  assert calls["doc2query", "doc2query_sampling"]["calls"] == math.ceil(334 / 32) == 11
  assert calls["embed", "text_encoder"]["placement"] == "one chip per host"
  # SASRec: epochs x batches of one window per user; RQ-VAE: epochs x batches of the catalogue; one chip each.
  assert calls["embed", "sasrec_train_step"]["calls"] == 3 * math.ceil(700 / 128) == 18
  assert calls["index", "rqvae_train_step"]["calls"] == 7 * math.ceil(1000 / 256) == 28
  assert calls["index", "rqvae_train_step"]["placement"] == "one chip"
  assert calls["embed", "sasrec_train_step"]["placement"] == "one chip"
  # doc2query: 2 epochs of the 4,000 search training pairs in batches of 16, on the slice.
  assert calls["doc2query", "doc2query_train_step"]["calls"] == 2 * (4000 // 16) == 500
  # train: tiny's task mixture (every rec training row + 300 + 4 x 50) for 2 epochs of batch 16.
  examples = 5000 + 300 + 50 + 50 + 50 + 50
  steps = 2 * (examples // 16)
  assert calls["train", "train_step"]["calls"] == steps == 686
  # validation: ceil(686 / 100) = 7 validations of 100 rec + 100 search rows in batches of 16.
  assert calls["validation", "beam_search_sampled"]["calls"] == 7 * 2 * math.ceil(100 / 16) == 98
  # test: every test row of both tasks, once per protocol.
  test = math.ceil(301 / 16) + math.ceil(251 / 16)
  assert calls["test", "beam_search_sampled"]["calls"] == calls["test", "beam_search_full"]["calls"] == test == 35
  assert [r["stage"] for r in stage_calls(config, COUNTS, 3)] == [
      "embed", "embed", "index", "doc2query", "doc2query", "train", "validation", "test", "test"]


def test_stage_calls_one_host_and_an_eval_limit():
  config = _pipeline_config()
  config.eval.update(dict(limit=40, protocols=("sampled",)))
  calls = {(r["stage"], r["program"]): r["calls"] for r in stage_calls(config, COUNTS, hosts=1)}
  assert calls["embed", "text_encoder"] == math.ceil(1000 / 64)
  assert calls["test", "beam_search_sampled"] == 2 * math.ceil(40 / 16) and ("test", "beam_search_full") not in calls


def _fake_programs(**step_s):
  return {name: {"roofline": {"step_s": s}} for name, s in step_s.items()}


STEP_S = dict(text_encoder=0.5, sasrec_train_step=0.01, rqvae_train_step=0.002, doc2query_train_step=0.05,
              doc2query_sampling=2.0, train_step=1.5, beam_search_sampled=0.3, beam_search_full=0.4)


def test_pipeline_days_are_the_sum_of_the_stages():
  config = _pipeline_config()
  calls = stage_calls(config, COUNTS, hosts=3)
  est = pipeline_estimate(calls, _fake_programs(**STEP_S), devices=8, usd_per_chip_hour=1.2)
  by_hand = sum(STEP_S[r["program"]] * r["calls"] for r in calls)
  assert est["total_s"] == pytest.approx(by_hand)
  assert est["total_s"] == pytest.approx(sum(s["seconds"] for s in est["stages"].values()))
  assert est["days"] == pytest.approx(by_hand / 86400) and not est["partial"]
  assert est["chip_hours"] == pytest.approx(by_hand / 3600 * 8)
  assert est["list_price_usd"] == pytest.approx(by_hand / 3600 * 8 * 1.2)
  assert set(est["stages"]) == {"embed", "index", "doc2query", "train", "validation", "test"}
  test = [r for r in calls if r["stage"] == "test"]
  assert est["stages"]["test"]["seconds"] == pytest.approx(0.3 * test[0]["calls"] + 0.4 * test[1]["calls"])


def test_a_subset_of_programs_gives_a_partial_pipeline():
  calls = stage_calls(_pipeline_config(), COUNTS, hosts=1)
  est = pipeline_estimate(calls, _fake_programs(train_step=1.5, beam_search_sampled=0.3), 8, None)
  assert est["partial"] and est["list_price_usd"] is None
  assert est["missing_programs"] == sorted(["text_encoder", "sasrec_train_step", "rqvae_train_step",
                                             "doc2query_train_step", "doc2query_sampling", "beam_search_full"])
  assert est["stages"]["train"]["complete"] and not est["stages"]["test"]["complete"]
  assert not est["stages"]["embed"]["complete"] and est["stages"]["embed"]["seconds"] == 0.0
  # A program that was compiled but did not fit has no time either.
  programs = _fake_programs(**STEP_S)
  programs["text_encoder"] = {"roofline": None}
  assert pipeline_estimate(calls, programs, 8, None)["missing_programs"] == ["text_encoder"]


def _fake_report(programs: dict) -> dict:
  config = _pipeline_config()
  memory = {"argument_bytes": 1, "output_bytes": 1, "alias_bytes": 0, "temp_bytes": 1, "code_bytes": 0, "peak_bytes": 3}
  full = {name: {"memory": memory, "hbm_fraction": 0.1, "fits": True, "flops": 1e12, "bytes_accessed": 1e9,
                 "collectives": [], "rows_per_device": 4, "roofline": dict(p["roofline"], bound="memory", mfu=0.2)}
          for name, p in programs.items()}
  report = {"config": "tiny", "topology": "v5e:2x2", "chip": {"name": "v5e", "hbm_bytes": 16 * GIB,
            "usd_per_chip_hour": 1.2}, "devices": 4, "hosts": 1, "mesh": {"data": 4}, "jax": "x", "compiler": "y",
            "shapes": {"global_batch": 16, "rows_per_device": 4, "input_len": 96, "target_len": 24},
            "model": {"bf16_training": False, "vocab_size": 700, "dropout_rng": "threefry"},
            "counts": dict(COUNTS, source="test"), "programs": full, "fits": True, "advice": [],
            "budget": {"num_steps": 686, "steps_per_epoch": 343, "epoch_examples": 5500, "validations": 7,
                       "global_batch": 16}}
  report["estimate"] = estimate(report, config, COUNTS, 1)
  return report


def test_the_report_lists_every_stage_and_the_whole_pipeline():
  text = plan.format_plan(_fake_report(_fake_programs(**STEP_S)))
  for stage, programs in plan.STAGES:
    assert f"| **{stage}** |" in text
    for program in programs:
      assert f"| {stage} | {program} |" in text
  assert "whole pipeline:" in text and "PARTIAL" not in text and "(partial)" not in text


def test_the_report_labels_a_subset_as_partial():
  text = plan.format_plan(_fake_report(_fake_programs(train_step=1.5)))
  assert "PARTIAL pipeline (programs not compiled: beam_search_full, beam_search_sampled, doc2query_sampling" in text
  assert "| **train** | | | | | **" in text and "| **embed** | | | | | **0.0 ms** (partial)" in text
  assert "whole pipeline:" not in text


def test_cheapest_generator_takes_the_shortest_step_that_fits_then_fewer_flops():
  gens = {"threefry": {"step_s": 1.0, "flops": 5.0, "fits": True}, "hash": {"step_s": 0.9, "flops": 6.0, "fits": True}}
  assert cheapest_generator(gens) == "hash"
  gens["hash"]["step_s"] = 1.0
  assert cheapest_generator(gens) == "threefry"
  gens["threefry"]["fits"] = False
  assert cheapest_generator(gens) == "hash"
  assert cheapest_generator({"hash": {"error": "too large", "fits": False}}) is None


def test_dropout_advice_names_the_cheaper_generator():
  comparison = {"configured": "threefry", "cheapest": "hash",
                "generators": {"threefry": {"step_s": 1.0}, "hash": {"step_s": 0.75}}}
  notes = dropout_advice(comparison, 100)
  assert "train.dropout_rng=hash" in notes[0] and "25.00 s less" in notes[0]
  assert dropout_advice(dict(comparison, cheapest="threefry"), 100) == []


def test_a_generator_that_cannot_trace_is_reported_not_raised(monkeypatch):
  # A mask generator whose tracing fails (here: the hash's per-row index limit, forced on every mask) is
  # recorded with its error; the comparison goes on with the others (nothing is compiled or allocated for it).
  from gensar_jax.config import load_config
  from gensar_jax.model import t5

  def too_long(key, shape, rate):
    raise ValueError(f"hash dropout: rows of {shape} elements; the uint32 index supports fewer than 2**32")
  monkeypatch.setattr(t5, "hash_keep_mask", too_long)
  config = load_config("tiny", ["train.dropout_rng=threefry"])
  model_cfg = _tiny_model()
  cpu = jax.devices("cpu")[:1]
  mesh = parallel.make_mesh({"data": 1}, cpu)
  train_cfg = ml_collections.ConfigDict(config.train.to_dict())
  target = Target(config, plan.plan_config(), model_cfg, train_cfg, mesh, {"data": 1, "fsdp": 1, "model": 1},
                  parallel.DEFAULT_LOGICAL_AXIS_RULES, cpu, plan.CHIPS["TPU v5 lite"], COUNTS)
  configured = {"roofline": {"step_s": 1.0, "bound": "memory", "mfu": 0.1}, "flops": 1.0, "bytes_accessed": 1.0,
                "ici_traffic_bytes": 0.0, "memory": {"peak_bytes": 1}, "fits": True}
  out = compare_dropout_rngs(target, configured, ("threefry", "hash"))
  assert out["configured"] == "threefry" and out["cheapest"] == "threefry"
  assert "2**32" in out["generators"]["hash"]["error"] and out["generators"]["hash"]["fits"] is False


# ------------------------------------------------------------------------------------ deviceless TPU

@pytest.fixture(scope="module")
def v5e_2x2():
  devices, chip = topology_devices("v5e:2x2")
  return devices, chip


@needs_libtpu
def test_megacore_slices_expose_one_device_per_chip_and_compile_per_core():
  devices, chip = topology_devices("v4:2x2x1")
  assert chip.name == "v4" and chip.tensorcores == 2 and len(devices) == 8      # 8 TensorCores, 4 chips
  config = ml_collections.ConfigDict({"parallel": {"mesh_shape": {"data": -1, "fsdp": 1, "model": 1}}})
  mesh, shape = plan_mesh(config, devices, chip)
  assert shape == {"data": 4, "fsdp": 1, "model": 1} and dict(mesh.shape)["data"] == 8
  config.parallel.mesh_shape.data = 8
  with pytest.raises(ValueError, match="does not fit the slice's 4 devices"):
    plan_mesh(config, devices, chip)


@needs_libtpu
def test_matmul_memory_and_flops_match_hand_computation(v5e_2x2):
  devices, chip = v5e_2x2
  mesh = parallel.make_mesh({"data": 4}, devices)
  m, k, n = 1024, 512, 256
  a = jax.ShapeDtypeStruct((m, k), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec(None, "data")))
  b = jax.ShapeDtypeStruct((k, n), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("data", None)))
  out = NamedSharding(mesh, PartitionSpec())
  compiled = jax.jit(lambda x, y: x @ y, out_shardings=out).lower(a, b).compile()
  result = analyze(compiled, chip, 4)
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
  compiled = lower_train_step(model_cfg, train_cfg, mesh, rules, batch, s, t).compile()
  result = analyze(compiled, chip, 4)
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
  catalogue, per_query = synthetic_tries(300, 3, 8, batch=8, num_candidates=10, offset=40)
  params = abstract_params(model_cfg, mesh, parallel.DEFAULT_LOGICAL_AXIS_RULES)
  # Per-query candidate tries (validation); the catalogue trie is compiled by the CLI test below.
  compiled = lower_beam_search(model_cfg, params, per_query, mesh, batch=8, input_len=12, num_beams=5).compile()
  result = analyze(compiled, chip, 4)
  assert result["fits"] and result["flops"] > 0
  assert result["memory"]["argument_bytes"] >= 4 * count_params(
      jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0))))
  assert per_query.leaf_items.shape[0] == 8 and np.asarray(catalogue.leaf_items).shape[0] == 1


@needs_libtpu
def test_gensar_plan_prints_the_table_and_writes_plan_json(tmp_path, capsys):
  from gensar_jax import cli
  status = cli.main(["plan", "--config", "tiny", "--topology", "v5e:2x2", "--workdir", str(tmp_path),
                     "--programs", "beam_search_full"])
  out = capsys.readouterr().out
  assert status == 0 and "| beam_search_full | 4 |" in out and "FITS" in out
  report = json.loads((tmp_path / "plan" / "plan.json").read_text())
  assert report["devices"] == 4 and report["hosts"] == 1 and report["mesh"]["data"] == 4
  full = report["programs"]["beam_search_full"]
  assert full["fits"] and full["flops"] > 0 and full["roofline"]["step_s"] > 0
  # One program of eight: the pipeline's total is labelled partial, in the table and in plan.json.
  assert "PARTIAL pipeline (programs not compiled: beam_search_sampled, doc2query_sampling" in out
  assert report["estimate"]["partial"] and "train_step" in report["estimate"]["missing_programs"]
  test = report["estimate"]["stages"]["test"]
  assert not test["complete"] and test["seconds"] > 0 and "dropout_rng" not in report


SMALL_STAGES = ["embed.text.max_seq_length=16", "embed.text.batch_size=8", "doc2query.sampling.batch_size=4",
                "doc2query.train.batch_size=8"]


@needs_libtpu
def test_every_stage_program_compiles_for_v5e_and_is_counted(tmp_path, capsys):
  from gensar_jax import cli
  names = "text_encoder,sasrec_train_step,rqvae_train_step,doc2query_train_step,doc2query_sampling"
  status = cli.main(["plan", "--config", "tiny", "--topology", "v5e:2x2", "--workdir", str(tmp_path),
                     "--programs", names, *[x for kv in SMALL_STAGES for x in ("--set", kv)]])
  out = capsys.readouterr().out
  report = json.loads((tmp_path / "plan" / "plan.json").read_text())
  assert status == 0, out
  for name in names.split(","):
    p = report["programs"][name]
    assert p["fits"] and p["flops"] > 0 and p["roofline"]["step_s"] > 0, name
  assert report["programs"]["text_encoder"]["placement"] == "one chip per host"
  assert report["programs"]["rqvae_train_step"]["placement"] == "one chip"
  assert report["programs"]["doc2query_train_step"]["placement"] == "slice"
  assert report["programs"]["doc2query_train_step"]["rows_per_device"] == 2    # 8 rows over 4 chips
  stages = report["estimate"]["stages"]
  assert stages["embed"]["complete"] and stages["index"]["complete"] and stages["doc2query"]["complete"]
  assert not stages["train"]["complete"] and report["estimate"]["partial"]
  rows = {r["program"]: r for r in report["estimate"]["rows"]}
  assert rows["text_encoder"]["seconds"] == pytest.approx(
      rows["text_encoder"]["calls"] * report["programs"]["text_encoder"]["roofline"]["step_s"])
  assert stages["embed"]["seconds"] == pytest.approx(rows["text_encoder"]["seconds"]
                                                     + rows["sasrec_train_step"]["seconds"])
  assert "| **index** |" in out and "| embed | text_encoder | one chip per host |" in out


@needs_libtpu
def test_a_batch_that_does_not_divide_over_the_slice_is_reported(tmp_path, capsys):
  from gensar_jax import cli
  status = cli.main(["plan", "--config", "tiny", "--topology", "v5e:2x2", "--workdir", str(tmp_path),
                     "--programs", "doc2query_train_step", "--set", "doc2query.train.batch_size=6"])
  out = capsys.readouterr().out
  assert status == 3 and "doc2query_train_step cannot run as configured: batch 6 does not divide" in out
  assert "change doc2query.train.batch_size" in out


@needs_libtpu
def test_the_train_step_is_compared_under_each_dropout_generator(tmp_path, capsys):
  from gensar_jax import cli
  status = cli.main(["plan", "--config", "tiny", "--topology", "v5e:2x2", "--workdir", str(tmp_path),
                     "--programs", "train_step", "--set", "train.dropout_rng=hash"])
  out = capsys.readouterr().out
  report = json.loads((tmp_path / "plan" / "plan.json").read_text())
  comparison = report["dropout_rng"]
  assert status == 0 and comparison["configured"] == "hash" and set(comparison["generators"]) == {"threefry", "hash"}
  assert comparison["generators"]["hash"]["step_s"] == report["programs"]["train_step"]["roofline"]["step_s"]
  assert comparison["generators"]["threefry"]["step_s"] > 0
  assert comparison["cheapest"] == cheapest_generator(comparison["generators"])
  assert f"cheapest dropout-mask generator on v5e: {comparison['cheapest']}; the config uses hash" in out
  assert "dropout masks hash" in out


@needs_libtpu
def test_the_dropout_comparison_can_compile_fewer_layers(tmp_path):
  from gensar_jax.config import load_config
  config = load_config("tiny")
  config.plan = plan.plan_config()
  config.plan.update(dict(topology="v5e:2x2", dropout_compare_layers=1))
  report = plan.plan(config, tmp_path, programs=("train_step",))
  comparison = report["dropout_rng"]
  assert comparison["layers"] == [1, 1] and set(comparison["generators"]) == {"threefry", "hash"}
  # Every generator is compiled at one layer each, the config's too: less work than the 2+2 model's step.
  configured = comparison["configured"]
  assert 0 < comparison["generators"][configured]["flops"] < report["programs"]["train_step"]["flops"]
  assert "(train steps compiled with 1+1 layers)" in plan.format_plan(report)


PRESETS = sorted(str(p) for pattern in ("tpu_*.py", "gpu_*.py")
                 for p in (Path(__file__).resolve().parent.parent / "configs").glob(pattern))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: Path(p).stem)
def test_pod_presets_use_a_dropout_generator_their_shapes_allow(preset):
  # The hash indexes a mask's elements in uint32 blocks of whole rows: one example's attention probabilities
  # (heads x input_len x input_len) must stay under 2**32 elements.
  from gensar_jax.config import load_config
  from gensar_jax.model.t5 import t5_config_from_section
  config = load_config(preset)
  assert config.train.dropout_rng in DROPOUT_RNGS
  if config.train.dropout_rng == "hash":
    heads = t5_config_from_section(config.model, vocab_size(config)).num_heads
    assert heads * config.tasks.max_input_len ** 2 < 2 ** 32


def test_slice_hosts():
  assert plan.slice_hosts("v5e:8x8", 64) == 16 and plan.slice_hosts("v6e:2x4", 8) == 1
  assert plan.slice_hosts("v4:2x2x4", 16) == 4 and plan.slice_hosts("h100:2x8", 16) == 2
  assert plan.slice_hosts("h100:8", 8) == 1


@needs_libtpu
def test_a_second_plan_loads_its_programs_from_the_plan_cache(tmp_path, monkeypatch):
  """What the plan reads from a compile is cached by program: the second plan of the same config compiles
  nothing (a compile would raise here) and reports the same figures."""
  from gensar_jax.config import load_config
  config = load_config("tiny")
  config.plan = plan.plan_config()
  config.plan.update(dict(topology="v5e:2x2", dropout_rngs=(), compilation_cache=str(tmp_path / "cache")))
  first = plan.plan(config, tmp_path / "a", programs=("train_step", "beam_search_sampled"))
  assert len(list((tmp_path / "cache").glob("*.json.gz"))) == 2

  def no_compile(*args, **kwargs):
    raise AssertionError("compiled although the plan cache holds the program")
  monkeypatch.setattr(jax.stages.Lowered, "compile", no_compile)
  second = plan.plan(config, tmp_path / "b", programs=("train_step", "beam_search_sampled"))
  for name in ("train_step", "beam_search_sampled"):
    a, b = (dict(r["programs"][name]) for r in (first, second))
    a.pop("compile_seconds"), b.pop("compile_seconds")
    assert a == b
  config.plan.compilation_cache = "off"
  with pytest.raises(AssertionError, match="compiled although"):
    plan.plan(config, tmp_path / "c", programs=("train_step",))
