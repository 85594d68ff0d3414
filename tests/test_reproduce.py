"""`gensar reproduce`: method overrides, stage sharing (fake stages), tables and plot on hand-made
results, baseline caching, and (slow) the main suite end to end on the tiny config."""
import dataclasses
import json
import os

import numpy as np
import pytest

from gensar_jax import reproduce, stages
from gensar_jax.eval import metrics
from gensar_jax.config import load_config
from gensar_jax.io_utils import DataError, read_json, write_json

METRICS = metrics.TABLE_METRICS


@pytest.fixture(scope="module")
def tiny_config():
  return load_config("tiny")


# ------------------------------------------------------------------------------------ overrides

def test_with_overrides_copies_and_sets_dotted_keys(tiny_config):
  out = reproduce.with_overrides(tiny_config, {"identifiers.mode": "semantic", "tasks.sizes.nsip": 0,
                                               "tasks.behaviour_tokens": False})
  assert (out.identifiers.mode, out.tasks.sizes.nsip, out.tasks.behaviour_tokens) == ("semantic", 0, False)
  assert (tiny_config.identifiers.mode, tiny_config.tasks.sizes.nsip, tiny_config.tasks.behaviour_tokens) == (
      "dual", 300, True)
  assert out.to_dict()["data"] == tiny_config.to_dict()["data"]


@pytest.mark.parametrize("key, error", [("tasks.sizes.nsipp", KeyError), ("task.sizes.nsip", KeyError),
                                        ("tasks.sizes.nsip.x", KeyError), ("data.num_negatives", ValueError),
                                        ("eval.num_beams", ValueError), ("seed", ValueError)])
def test_with_overrides_rejects_unknown_keys_and_shared_sections(tiny_config, key, error):
  with pytest.raises(error, match="method override"):
    reproduce.with_overrides(tiny_config, {key: 1})


def test_suites_list_the_paper_rows():
  main = reproduce.suite_methods("main")
  assert [m.name for m in main] == ["GenSAR", "Semantic IDs (TIGER-style)", "Collaborative IDs", "GenSAR rec-only",
                                    "GenSAR search-only", "Popularity", "BM25", "Dense retrieval", "SASRec",
                                    "SASRec (BCE, sampled negatives)"]
  by_name = {m.name: m for m in main}
  assert by_name["GenSAR rec-only"].overrides == {"tasks.sizes.nsip": 0, "tasks.sizes.nsqp": 0,
                                                  "tasks.sizes.adhoc": 0, "train.selection_tasks": ("rec",)}
  assert by_name["GenSAR rec-only"].tasks == ("rec",) and by_name["GenSAR search-only"].tasks == ("search",)
  assert by_name["GenSAR search-only"].overrides == {"tasks.sizes.nrip": 0, "train.selection_tasks": ("search",)}
  assert {m.baseline: m.tasks for m in main if m.kind == "baseline"} == {
      "popularity": ("rec", "search"), "bm25": ("search",), "dense": ("search",), "sasrec": ("rec",),
      "sasrec_bce": ("rec",)}
  ablations = reproduce.suite_methods("ablations", identifier_lengths=[(1, 1), (3, 2)])
  assert [m.slug for m in ablations] == ["gensar", "wo-query-generation", "wo-desc-id", "wo-behaviour-tokens",
                                         "wo-pseudo-queries", "ids-1-1", "ids-3-2"]
  assert ablations[-1].overrides == {"identifiers.num_shared_levels": 3, "identifiers.num_specific_levels": 2}
  everything = reproduce.suite_methods("all", baselines=("bm25",))
  slugs = [m.slug for m in everything]
  assert slugs.count("gensar") == 1 and len(slugs) == len(set(slugs))
  assert [m.baseline for m in everything if m.kind == "baseline"] == ["bm25"]
  with pytest.raises(ValueError, match="suite"):
    reproduce.suite_methods("paper")


def test_reproduce_section_rejects_unknown_fields(tiny_config):
  config = reproduce.with_overrides(tiny_config, {})
  config.reproduce = reproduce.reproduce_config()
  config.reproduce.suite = "all"
  assert reproduce.reproduce_section(config).suite == "all"
  config.reproduce.suites = "x"
  with pytest.raises(ValueError, match="config.reproduce: unknown fields"):
    reproduce.reproduce_section(config)


# ------------------------------------------------------------------------------ stage sharing

@pytest.fixture
def fake_stages(monkeypatch):
  """The real stage graph (config keys, deps) with runs that only write a stats.json; returns the call log."""
  calls = []

  def make_run(name):
    def run(config, workdir, out_dir):
      calls.append((name, out_dir))
      write_json(out_dir / "stats.json", {"stage": name, "attempt": out_dir.name})
      return {}
    return run

  monkeypatch.setattr(stages, "STAGES", {name: dataclasses.replace(s, run=make_run(name))
                                         for name, s in stages.STAGES.items()})
  return calls


def _actions(timings, key):
  return {stage: entry["action"] for stage, entry in timings.data[key].items()}


def test_variants_link_shared_stages_and_run_the_rest(tmp_path, tiny_config, fake_stages):
  main = tmp_path / "work"
  timings = reproduce.Timings(tmp_path / "timings.json")
  reproduce.run_reference_pipeline(tiny_config, main, timings)
  assert [name for name, _ in fake_stages] == list(stages.STAGES)
  fake_stages.clear()

  def run(method):
    config = reproduce.with_overrides(tiny_config, method.overrides)
    run_dir = main / "reproduce" / "runs" / method.slug
    return run_dir, reproduce.run_method(method, config, main, run_dir, timings)

  run_dir, actions = run(reproduce.GENSAR)
  assert set(actions.values()) == {"shared"} and not fake_stages
  for name in stages.STAGES:
    assert (run_dir / name).is_symlink() and (run_dir / name).resolve() == (main / name).resolve()
    assert not os.path.isabs(os.readlink(run_dir / name))          # relative: the workdir can move

  expected = {"semantic-ids": ("prepare", "embed", "doc2query"),      # identifiers change index, train, eval
              "gensar-rec-only": ("prepare", "embed", "index", "doc2query"),  # the task mixture: train on
              "ids-2-2": tuple(stages.STAGES)}                        # the defaults: everything shared
  methods = {m.slug: m for m in reproduce.suite_methods("all")}
  for slug, shared in expected.items():
    fake_stages.clear()
    run_dir, actions = run(methods[slug])
    assert actions == {s: "shared" if s in shared else "ran" for s in stages.STAGES}, slug
    assert [name for name, _ in fake_stages] == [s for s in stages.STAGES if s not in shared]
    assert all(out_dir.parent.parent == run_dir for _, out_dir in fake_stages)     # <run_dir>/<stage>/<attempt>
    for name in stages.STAGES:
      assert (run_dir / name).is_symlink() == (name in shared), (slug, name)
    assert _actions(timings, slug) == actions

  # A second pass recomputes nothing: own copies are fresh, links stay.
  fake_stages.clear()
  _, actions = run(methods["semantic-ids"])
  assert not fake_stages and actions == {s: "shared" if s in ("prepare", "embed", "doc2query") else "fresh"
                                         for s in stages.STAGES}
  seconds = timings.data["semantic-ids"]["train"]["seconds"]
  _, actions = run(methods["semantic-ids"])
  assert timings.data["semantic-ids"]["train"] == {"action": "fresh", "seconds": seconds} and seconds is not None
  assert read_json(tmp_path / "timings.json") == timings.data


def test_stale_links_are_replaced_without_touching_the_main_workdir(tmp_path, tiny_config, fake_stages):
  main = tmp_path / "work"
  timings = reproduce.Timings(tmp_path / "timings.json")
  reproduce.run_reference_pipeline(tiny_config, main, timings)
  run_dir = main / "reproduce" / "runs" / "x"
  reproduce.run_method(reproduce.GENSAR, tiny_config, main, run_dir, timings)
  main_index = read_json(stages.output_dir(main, "index") / "stats.json")
  fake_stages.clear()
  semantic = reproduce.with_overrides(tiny_config, {"identifiers.mode": "semantic"})
  actions = reproduce.run_method(reproduce.GENSAR, semantic, main, run_dir, timings)   # links are stale now
  assert actions["embed"] == "shared" and actions["index"] == "ran"
  assert not (run_dir / "index").is_symlink() and (stages.output_dir(run_dir, "index") / "stats.json").exists()
  assert read_json(stages.output_dir(main, "index") / "stats.json") == main_index
  assert read_json(main / "index" / "fingerprint.json")["fingerprint"] != \
      read_json(run_dir / "index" / "fingerprint.json")["fingerprint"]
  # Back to the reference config: the method's own stale copies give way to links again.
  fake_stages.clear()
  actions = reproduce.run_method(reproduce.GENSAR, tiny_config, main, run_dir, timings)
  assert set(actions.values()) == {"shared"} and not fake_stages
  assert all((run_dir / name).is_symlink() for name in stages.STAGES)
  assert not list(run_dir.glob(".*"))                                   # no temporary leftovers


def test_prepare_must_match_the_reference(tmp_path, tiny_config, fake_stages):
  main = tmp_path / "work"
  timings = reproduce.Timings(tmp_path / "timings.json")
  reproduce.run_reference_pipeline(tiny_config, main, timings)
  write_json(main / "prepare" / "fingerprint.json", {"fingerprint": "0" * 16})
  with pytest.raises(DataError, match="prepare stage does not match"):
    reproduce.run_method(reproduce.GENSAR, tiny_config, main, main / "reproduce" / "runs" / "gensar", timings)


def test_baselines_are_cached_by_their_inputs(tmp_path, tiny_config, monkeypatch):
  from gensar_jax.eval import baselines

  calls = []

  def fake_evaluate(workdir, config, split="test", methods=None):
    calls.append((split, tuple(methods)))
    return {methods[0]: {"search": {p: {m: 0.5 for m in METRICS} for p in metrics.PROTOCOLS}}}

  monkeypatch.setattr(baselines, "evaluate_baselines", fake_evaluate)
  for stage in ("prepare", "embed"):
    write_json(tmp_path / stage / "fingerprint.json", {"fingerprint": stage})
  method = {m.slug: m for m in reproduce.MAIN_METHODS}["bm25"]
  timings = reproduce.Timings(tmp_path / "timings.json")
  first = reproduce.baseline_metrics(method, tiny_config, tmp_path, tmp_path / "cache", timings)
  second = reproduce.baseline_metrics(method, tiny_config, tmp_path, tmp_path / "cache", timings)
  assert first == second and calls == [("test", ("bm25",))]
  changed = reproduce.with_overrides(tiny_config, {})
  changed.baselines.batch_size = 7
  reproduce.baseline_metrics(method, changed, tmp_path, tmp_path / "cache", timings)
  write_json(tmp_path / "prepare" / "fingerprint.json", {"fingerprint": "other"})
  reproduce.baseline_metrics(method, changed, tmp_path, tmp_path / "cache", timings)
  assert len(calls) == 3


def test_eval_limit_is_refused(tmp_path, tiny_config):
  config = reproduce.with_overrides(tiny_config, {})
  config.eval.limit = 10
  with pytest.raises(ValueError, match="eval.limit"):
    reproduce.reproduce_main(config, tmp_path)


# ------------------------------------------------------------------------------- tables, plot

def _metrics(rng):
  return {p: {m: float(v) for m, v in zip(METRICS, rng.uniform(size=len(METRICS)))} for p in metrics.PROTOCOLS}


def _identifiers(rng, num_levels):
  return {"mode": "dual", "num_levels": num_levels, "views": {v: {"collision_rate_before": float(rng.uniform()),
                                                  "collision_rate_after": float(rng.uniform())}
                                              for v in ("semantic", "collab")}}


def _hand_made_results(with_ablations: bool):
  rng = np.random.default_rng(0)
  rows = []
  for method in reproduce.suite_methods("all" if with_ablations else "main", identifier_lengths=[(1, 1), (2, 3)]):
    row = {"name": method.name, "slug": method.slug, "kind": method.kind, "group": method.group,
           "tasks": list(method.tasks), "metrics": {t: _metrics(rng) for t in method.tasks}}
    if method.group == "identifier_length":
      num_shared, num_specific = (int(method.overrides[f"identifiers.num_{k}_levels"]) for k in ("shared", "specific"))
      row.update(identifier_lengths=[num_shared, num_specific],
                 identifiers=_identifiers(rng, num_shared + num_specific))
    rows.append(row)
  header = {"config": "tiny", "config_fingerprint": "abc", "suite": "all", "date": "2025-01-01 00:00 UTC", "seed": 7,
            "split": "test", "num_beams": 8, "num_items": 1234, "num_negatives": [19],
            "num_queries": {"rec": 136, "search": 109},
            "model": {"num_params": 63776, "d_model": 32, "num_encoder_layers": 2, "num_decoder_layers": 2,
                      "num_heads": 4, "d_ff": 64, "vocab_size": 699},
            "training": {"steps": 124, "batch_size": 16}}
  return {"header": header, "methods": rows}


def _sections(markdown):
  """{"## title": [[cells of a body row], ...]} parsed back from the markdown."""
  sections, title = {}, None
  for line in markdown.splitlines():
    if line.startswith("## "):
      title = line[3:]
      sections[title] = []
    elif title and line.startswith("|") and not line.startswith("| ---"):
      sections[title].append([c.strip() for c in line.strip("|").split("|")])
  return sections


def _number(cell):
  return None if cell == "–" else float(cell.strip("*"))


def test_main_tables_match_the_results(tmp_path):
  results = _hand_made_results(with_ablations=False)
  text = reproduce.format_tables(results)
  assert "63,776 parameters" in text and "124 steps x 16 examples (1,984 examples)" in text and "seed 7" in text
  sections = _sections(text)
  titles = {(t, p): f"{reproduce.TASK_TITLES[t]} ({title})" for t in metrics.TASKS
            for p, title in (("sampled", "sampled protocol: target + 19 negatives"),
                             ("full", "full catalogue: 1,234 items"))}
  assert set(sections) == set(titles.values())
  rows = results["methods"]
  for (task, protocol), title in titles.items():
    header, *body = sections[title]
    assert header == ["Method", "HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]
    assert [cells[0] for cells in body] == [r["name"] for r in rows]
    for cells, row in zip(body, rows):
      values = [_number(c) for c in cells[1:]]
      if task in row["tasks"]:
        np.testing.assert_allclose(values, [row["metrics"][task][protocol][m] for m in METRICS], atol=5e-5)
      else:
        assert values == [None] * len(METRICS)
    for column in range(1, len(header)):               # exactly the best value of each column is bold
      cells = [cells[column] for cells in body]
      best = max(_number(c) for c in cells if c != "–")
      assert [c.startswith("**") for c in cells] == [c != "–" and _number(c) == best for c in cells]
  assert "Ablations" not in text and "Identifier length" not in text


def test_ablation_and_identifier_length_tables(tmp_path):
  results = _hand_made_results(with_ablations=True)
  sections = _sections(reproduce.format_tables(results))
  rows = {r["name"]: r for r in results["methods"]}
  header, *body = sections["Ablations (sampled protocol: target + 19 negatives)"]
  assert header == ["Method", "Recommendation HR@10", "Recommendation NDCG@10", "Search HR@10", "Search NDCG@10"]
  assert [c[0] for c in body] == ["GenSAR", "w/o query generation", "w/o desc<->ID", "w/o behaviour tokens",
                                  "w/o pseudo-queries"]
  for cells in body:
    m = rows[cells[0]]["metrics"]
    np.testing.assert_allclose([_number(c) for c in cells[1:]],
                               [m["rec"]["sampled"]["HR@10"], m["rec"]["sampled"]["NDCG@10"],
                                m["search"]["sampled"]["HR@10"], m["search"]["sampled"]["NDCG@10"]], atol=5e-5)
  text = reproduce.format_tables(results)
  assert "- w/o behaviour tokens: trained and decoded without" in text     # the row says what it measures
  header, *body = sections["Identifier length (full catalogue: 1,234 items)"]
  assert header[:4] == ["(L_m, L_n)", "codes per ID", "semantic collisions", "collab collisions"]
  assert [c[:2] for c in body] == [["(1, 1)", "2"], ["(2, 3)", "5"]]
  row = rows["GenSAR (L_m, L_n) = (2, 3)"]
  before, after = (float(x) for x in body[1][2].split(" → "))
  views = row["identifiers"]["views"]["semantic"]
  np.testing.assert_allclose([before, after], [views["collision_rate_before"], views["collision_rate_after"]],
                             atol=5e-5)
  np.testing.assert_allclose(_number(body[1][-1]), row["metrics"]["search"]["full"]["NDCG@10"], atol=5e-5)


def test_identifier_and_wall_time_tables():
  results = _hand_made_results(with_ablations=False)
  rng = np.random.default_rng(1)
  generative = [r for r in results["methods"] if r["kind"] == "generative"]
  for row in generative:
    row["identifiers"] = dict(_identifiers(rng, 4), levels={"shared_a": {"utilization": 0.25}, "collab_b": {"utilization": 1.0}})
  del generative[1]["identifiers"]["views"]["collab"]          # a semantic-only method has one view
  results["timings"] = {"reference": {"prepare": {"action": "ran", "seconds": 10.4},
                                      "train": {"action": "ran", "seconds": 100.0}},
                        "gensar": {"prepare": {"action": "shared", "seconds": 0.01},
                                   "train": {"action": "ran", "seconds": 50.2}},
                        "popularity": {"baseline": {"action": "fresh", "seconds": None}}}
  sections = _sections(reproduce.format_tables(results))
  header, *body = sections["Identifiers"]
  assert header[:3] == ["Method", "identifiers", "codes per ID"]
  assert [c[0] for c in body] == [r["name"] for r in generative]
  views = generative[0]["identifiers"]["views"]
  assert body[0][3:] == [f"{views[v]['collision_rate_before']:.4f} → {views[v]['collision_rate_after']:.4f}"
                         for v in ("semantic", "collab")] + ["shared_a 25%, collab_b 100%"]
  assert body[1][4] == "–"
  title = "Wall time (seconds; total 2.7 min)"               # 10.4 + 100 + 50.2 s; shared links cost nothing
  header, *body = sections[title]
  assert header == ["Method", *stages.STAGES, "baseline", "total"]
  cells = {c[0]: dict(zip(header[1:], c[1:])) for c in body}
  assert list(cells)[:2] == ["Reference pipeline", "GenSAR"] and len(body) == 1 + len(results["methods"])
  assert cells["Reference pipeline"]["prepare"] == "10" and cells["Reference pipeline"]["total"] == "110"
  assert cells["GenSAR"]["prepare"] == "shared" and cells["GenSAR"]["total"] == "50"
  assert cells["Popularity"]["baseline"] == "–" and cells["Popularity"]["total"] == "–"
  assert cells["BM25"]["prepare"] == "–"


def test_tradeoff_plot_has_a_point_per_two_task_method(tmp_path):
  rows = _hand_made_results(with_ablations=False)["methods"]
  path = tmp_path / "tradeoff.png"
  assert reproduce.plot_tradeoff(rows, path) == 4     # GenSAR, the two single-view variants, popularity
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert reproduce.plot_tradeoff(rows + [dict(rows[0], name="GenSAR again")], path) == 4


# ------------------------------------------------------------------------------- end to end

FAST_TINY = {"identifiers.epochs": 10, "identifiers.eval_every_epochs": 5, "embed.sasrec.epochs": 2,
             "doc2query.num_pseudo_queries": 1, "doc2query.train.num_steps": 8, "train.num_steps": 40,
             "train.eval_every": 0, "train.checkpoint_every": 40}


@pytest.mark.slow
def test_reproduce_main_suite_on_tiny(tmp_path):
  from gensar_jax.config import apply_overrides

  config = apply_overrides(load_config("tiny"), [f"{k}={v}" for k, v in FAST_TINY.items()])
  workdir = tmp_path / "tiny"
  results = reproduce.reproduce_main(config, workdir, "main")
  out = workdir / "reproduce"
  for name in ("tables.md", "results.json", "tradeoff.png", "timings.json"):
    assert (out / name).exists(), name
  saved = json.loads((out / "results.json").read_text())
  methods = [m.name for m in reproduce.suite_methods("main")]
  assert [r["name"] for r in saved["methods"]] == methods
  for row in saved["methods"]:
    for task in metrics.TASKS:
      if task in row["tasks"]:
        for protocol in metrics.PROTOCOLS:
          assert all(0.0 <= row["metrics"][task][protocol][m] <= 1.0 for m in METRICS), (row["name"], task)
      else:
        assert task not in row["metrics"]
  sections = _sections((out / "tables.md").read_text())
  wall_time = next(t for t in sections if t.startswith("Wall time"))
  assert len(sections) == 6 and "Identifiers" in sections
  for title, body in sections.items():
    if title not in ("Identifiers", wall_time):
      assert [cells[0] for cells in body[1:]] == methods
  assert [c[0] for c in sections["Identifiers"][1:]] == [m.name for m in reproduce.suite_methods("main")
                                                         if m.kind == "generative"]
  assert [c[0] for c in sections[wall_time][1:]] == ["Reference pipeline", *methods]
  # Shared stages are links into the reference workdir, never recomputed.
  timings = saved["timings"]
  assert all(timings["reference"][s]["action"] == "ran" for s in stages.STAGES)
  shared = {"gensar": tuple(stages.STAGES), "semantic-ids": ("prepare", "embed", "doc2query"),
            "collab-ids": ("prepare", "embed", "doc2query"),
            "gensar-rec-only": ("prepare", "embed", "index", "doc2query"),
            "gensar-search-only": ("prepare", "embed", "index", "doc2query")}
  for slug, names in shared.items():
    for stage in stages.STAGES:
      assert (out / "runs" / slug / stage).is_symlink() == (stage in names), (slug, stage)
      assert timings[slug][stage]["action"] == ("shared" if stage in names else "ran"), (slug, stage)
  gensar = {r["slug"]: r for r in saved["methods"]}["gensar"]
  assert gensar["metrics"] == read_json(stages.output_dir(workdir, "eval") / "metrics.json")
  assert results["header"]["training"] == {"steps": 40, "batch_size": 16}
  # A second call finds everything up to date.
  before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/stats.json")}
  again = reproduce.reproduce_main(config, workdir, "main")
  assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/stats.json")} == before
  assert all("ran" != entry["action"] for stages_ in again["timings"].values() for entry in stages_.values())
  assert [r["metrics"] for r in again["methods"]] == [r["metrics"] for r in saved["methods"]]
