"""The Results tables of docs/reproduction.md and the README's main-job table, rendered from
`results/<config>/results.json` (written by `gensar reproduce`).

  python -m benchmarks.results_report           # print the tables
  python -m benchmarks.results_report --write   # replace them in docs/reproduction.md and README.md between their markers

Each config's table sits between `<!-- results:<config>:start -->` and `<!-- results:<config>:end -->`:
a caption (catalogue, test queries, seed, commit-independent config fingerprint, date, wall time) and one
row per method of the main suite with HR@10 / NDCG@10 of both tasks (sampled protocol) and NDCG@10 on the
full catalogue; the best value of each column in bold. Where the results hold the ablations suite, its
tables (GenSAR and each ablation; one GenSAR per identifier length; each protocol, as tables.md writes
them) sit between `<!-- ablations:<config>:start -->` and `<!-- ablations:<config>:end -->`. The README's
quick start shows, between `<!-- main_job:<config>:start -->` and its end marker, the table the main job
(`gensar run --config configs/<config>.py`) prints: the suite's GenSAR row is that run (the reference
workdir). Where `results/<config>/variation/<run>/` holds the eval stage's config.json and metrics.json
of GenSAR retrained with other settings (one run named `defaults`), their table sits between
`<!-- variation:<config>:start -->` and its end marker. Nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.report import write_between_markers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
PAGE = ROOT / "docs" / "reproduction.md"
README = ROOT / "README.md"
MAIN_JOB = "synthetic"   # the config the README's quick start runs
COLUMNS = (("Rec HR@10", "rec", "sampled", "HR@10"), ("Rec NDCG@10", "rec", "sampled", "NDCG@10"),
           ("Search HR@10", "search", "sampled", "HR@10"), ("Search NDCG@10", "search", "sampled", "NDCG@10"),
           ("Rec NDCG@10 (full)", "rec", "full", "NDCG@10"), ("Search NDCG@10 (full)", "search", "full", "NDCG@10"))


def markers(name: str, part: str = "results") -> tuple[str, str]:
  return f"<!-- {part}:{name}:start -->", f"<!-- {part}:{name}:end -->"


def metric(method: dict, task: str, protocol: str, key: str) -> float | None:
  return method.get("metrics", {}).get(task, {}).get(protocol, {}).get(key)


def wall_seconds(report: dict, method: str | None = None) -> tuple[float, int]:
  """Every stage's wall time, summed over the methods (shared stages count once: they record 0 s), or over
  one method's stages; and how many stages have no recorded time (outputs made before the suite ran)."""
  timings = report.get("timings", {})
  entries = [stage for key, stages in timings.items() if method in (None, key) for stage in stages.values()]
  seconds = [e.get("seconds") for e in entries]
  return sum(s for s in seconds if s is not None), sum(s is None for s in seconds)


def wall_time_text(report: dict, method: str | None = None) -> str:
  """"N min of stage wall time", saying how many stages were not timed; "" for one method with untimed stages."""
  seconds, untimed = wall_seconds(report, method)
  if method is not None and untimed:
    return ""
  text = f"{seconds / 60:.0f} min of stage wall time"
  return text + (f" ({untimed} stages made before the suite ran, not timed)" if untimed else "")


def caption(report: dict) -> str:
  h = report["header"]
  queries = h["num_queries"]
  train = h.get("training", {})
  return (f"{h['num_items']:,} items; {queries['rec']:,} rec / {queries['search']:,} search test queries; "
          f"seed {h['seed']}; beam {h['num_beams']}; generative models: {train.get('steps', '?')} steps of "
          f"{train.get('batch_size', '?')} examples; config fingerprint `{h['config_fingerprint']}`, "
          f"{h['date']}; {wall_time_text(report)}")


def table(report: dict) -> str:
  methods = [m for m in report["methods"] if m.get("group", "main") == "main"]
  best = {}
  for title, task, protocol, key in COLUMNS:
    values = [v for m in methods if (v := metric(m, task, protocol, key)) is not None]
    best[title] = max(values) if values else None
  lines = ["| Method | " + " | ".join(c[0] for c in COLUMNS) + " |", "| --- |" + " ---: |" * len(COLUMNS)]
  for m in methods:
    cells = []
    for title, task, protocol, key in COLUMNS:
      value = metric(m, task, protocol, key)
      if value is None:
        cells.append("–")
      else:
        text = f"{value:.4f}"
        cells.append(f"**{text}**" if f"{value:.4f}" == f"{best[title]:.4f}" else text)
    lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def tie_rows(report: dict) -> list[str]:
  """Where a method's metrics also hold the other tie rule's figures ("<protocol>, one position per <rule>",
  written when the ranks differ): HR@10 / NDCG@10 under the configured rule and under the other one."""
  rows = []
  for m in report["methods"]:
    for task, by_protocol in m.get("metrics", {}).items():
      for key, other in by_protocol.items():
        protocol, sep, rule = key.partition(", one position per ")
        if not sep or protocol not in by_protocol:
          continue
        shown = by_protocol[protocol]
        rows.append(f"| {m['name']} | {task} ({protocol}) | {shown['HR@10']:.4f} / {shown['NDCG@10']:.4f} | "
                    f"{rule} | {other['HR@10']:.4f} / {other['NDCG@10']:.4f} |")
  return rows


def render(name: str) -> str:
  report = json.loads((RESULTS / name / "results.json").read_text())
  out = f"{caption(report)}\n\n{table(report)}"
  ties = tie_rows(report)
  if ties:
    out += ("\n\nTie rules, where negatives share the target's identifier (`eval.ties`; methods whose ranks do "
            "not change under the other rule are not listed):\n\n| Method | task (protocol) | HR@10 / NDCG@10 as "
            "configured | other rule: one position per | HR@10 / NDCG@10 |\n| --- | --- | ---: | --- | ---: |\n"
            + "\n".join(ties))
  return out


def ablations(report: dict) -> str | None:
  """The ablation and identifier-length tables (sampled protocol, then the full catalogue) of a report that ran
  the ablations suite."""
  from gensar_jax.reproduce import GENSAR
  from gensar_jax.reproduce.tables import ablation_table, identifier_length_table
  rows = report["methods"]
  reference = [r for r in rows if r["slug"] == GENSAR.slug]
  ablated = [r for r in rows if r.get("group") == "ablation"]
  lengths = [r for r in rows if r.get("group") == "identifier_length"]
  if not ablated and not lengths:
    return None
  parts = []
  for protocol, title in (("sampled", "sampled protocol"), ("full", "full catalogue")):
    if ablated:
      parts.append(f"Ablations ({title}):\n\n" + ablation_table(reference + ablated, protocol).strip())
    if lengths:
      parts.append(f"Identifier length ({title}):\n\n" + identifier_length_table(lengths, protocol).strip())
  return "\n\n".join(parts)


def main_job(report: dict) -> str:
  """The metrics table `gensar run` prints (the eval stage's metrics.md), from the report's GenSAR row."""
  from gensar_jax.eval.metrics import PROTOCOLS
  from gensar_jax.eval.stage import format_metrics_table
  from gensar_jax.reproduce import GENSAR
  gensar = next(m for m in report["methods"] if m["slug"] == GENSAR.slug)
  order = lambda key: (PROTOCOLS.index(key.partition(",")[0]), key)  # noqa: E731  (a tie rule's figures after its protocol)
  metrics = {task: {key: by_key[key] for key in sorted(by_key, key=order)} for task, by_key in gensar["metrics"].items()}
  h = report["header"]
  when = ", ".join(filter(None, [h["date"], wall_time_text(report, "reference")]))
  return (f"GenSAR, {h['split']} split; config fingerprint `{h['config_fingerprint']}`, {when} "
          f"(`results/{h['config']}`):\n\n{format_metrics_table(metrics).strip()}")


VARIATION_COLUMNS = tuple(c for c in COLUMNS if c[3] == "NDCG@10")


def variation(runs: dict[str, dict]) -> str:
  """GenSAR retrained with other settings on the same prepared data, beside the defaults' run.

  `runs`: {name: {"config": the eval stage's config.json, "metrics": its metrics.json}}, one named
  "defaults"; each other row lists the config fields where it differs from that one.
  """
  from gensar_jax.stages import flat_config
  defaults = flat_config(runs["defaults"]["config"])
  lines = ["| run | differs from the defaults in | " + " | ".join(c[0] for c in VARIATION_COLUMNS) + " |",
           "| --- | --- |" + " ---: |" * len(VARIATION_COLUMNS)]
  for name in ["defaults"] + sorted(set(runs) - {"defaults"}):
    fields = flat_config(runs[name]["config"])
    changed = ", ".join(f"`{key}={json.dumps(fields[key])}`" for key in sorted(fields) if fields[key] != defaults.get(key))
    cells = [f"{metric({'metrics': runs[name]['metrics']}, task, protocol, key):.4f}"
             for _, task, protocol, key in VARIATION_COLUMNS]
    lines.append(f"| {name} | {changed or '–'} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def recorded_variation(name: str) -> dict[str, dict] | None:
  """`results/<name>/variation/<run>/{config,metrics}.json`, or None where none are recorded."""
  dirs = sorted(p for p in (RESULTS / name / "variation").glob("*") if p.is_dir())
  if not dirs:
    return None
  return {d.name: {"config": json.loads((d / "config.json").read_text()),
                   "metrics": json.loads((d / "metrics.json").read_text())} for d in dirs}


def rendered_parts(name: str) -> dict[tuple[str, str], str]:
  """{(start, end) markers: body} of a config's results: the main table and, when they ran, the ablations and
  the retrained variations."""
  out = {markers(name): render(name)}
  ablation_body = ablations(json.loads((RESULTS / name / "results.json").read_text()))
  if ablation_body is not None:
    out[markers(name, "ablations")] = ablation_body
  runs = recorded_variation(name)
  if runs is not None:
    out[markers(name, "variation")] = variation(runs)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--write", action="store_true", help=f"write the tables into {PAGE.relative_to(ROOT)}")
  args = parser.parse_args()
  names = sorted(p.parent.name for p in RESULTS.glob("*/results.json"))
  rendered = {key: body for name in names for key, body in rendered_parts(name).items()}
  job = {markers(MAIN_JOB, "main_job"): main_job(json.loads((RESULTS / MAIN_JOB / "results.json").read_text()))}
  if args.write:
    shown = PAGE.read_text()
    write_between_markers(PAGE, {key: body + "\n" for key, body in rendered.items() if key[0] in shown})
    write_between_markers(README, {key: body + "\n" for key, body in job.items()})
  for (start, _), body in {**rendered, **job}.items():
    print(f"## {start}\n\n{body}\n")


if __name__ == "__main__":
  main()
