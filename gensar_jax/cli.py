"""The `gensar` command: one entry point for every pipeline stage.

  gensar prepare --config configs/synthetic.py [--workdir runs/synthetic] [--set data.num_negatives=49]
  gensar stats   --config configs/office.py
  gensar run     --config configs/synthetic.py     # every stage whose outputs are missing or stale
  gensar reproduce --config configs/office.py [--suite main|ablations|all]
  gensar fetch   --config configs/electronics.py   # the raw files into data.raw_dir / data.query_dir
  gensar search "wireless mouse" --user 42 --config configs/office.py;  gensar recommend --user 42 ...
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from gensar_jax import inputs, parallel, stages
from gensar_jax.config import load_config
from gensar_jax.io_utils import DataError, as_path, read_json

log = logging.getLogger("gensar")


def _common_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", required=True, help="configs/<name>.py, or just <name>")
  p.add_argument("--workdir", default=None,
                 help="output root: a local path, a shared mount or a gs:// URI (default runs/<config name>)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="dotted config override, repeatable, e.g. --set data.num_negatives=49")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="gensar", description="GenSAR in JAX: stages of the pipeline.")
  sub = parser.add_subparsers(dest="command", required=True)
  for name, stage in stages.STAGES.items():
    _common_args(sub.add_parser(name, help=stage.summary))
  _common_args(sub.add_parser("run", help="run every stage whose outputs are missing or stale"))
  _common_args(sub.add_parser("stats", help="print the prepared dataset's statistics table"))
  _common_args(sub.add_parser("fetch", help="download the raw files the config reads (Amazon 2014 reviews and "
                                            "metadata, Ai et al. query files) into data.raw_dir / data.query_dir"))
  from gensar_jax.reproduce import add_reproduce_args
  reproduce = sub.add_parser("reproduce", help="GenSAR, its variants and the classic baselines on one protocol "
                                               "-> <workdir>/reproduce/ (tables.md, results.json, tradeoff.png)")
  _common_args(reproduce)
  add_reproduce_args(reproduce)
  plan = sub.add_parser("plan", help="compile every stage's programs for the config's TPU slice on this machine (no "
                                     "TPU needed): memory, FLOPs, collectives, time per stage and days for the "
                                     "whole pipeline -> <workdir>/plan/plan.json")
  _common_args(plan)
  plan.add_argument("--topology", default=None, help="TPU slice, e.g. v5e:8x8 (default: the config's plan.topology)")
  plan.add_argument("--programs", default=None,
                    help="comma-separated subset of the plan's programs (gensar_jax.plan.PROGRAMS: every stage's, "
                         "e.g. train_step,beam_search_sampled); the total is then labelled partial")
  search = sub.add_parser("search", help="personalized search with a trained model")
  search.add_argument("query")
  recommend = sub.add_parser("recommend", help="next-item recommendation with a trained model")
  for p in (search, recommend):
    _common_args(p)
    p.add_argument("--user", default=None, help="user id as in the source data (their history is used)")
    p.add_argument("--history", default=None,
                   help="comma-separated purchased item ids, oldest first (instead of --user)")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (>= 1)")
  return parser


def format_stats_table(stats: dict) -> str:
  """Markdown dataset statistics table like a paper's."""
  rows = [("Users", stats["users"]), ("Items", stats["items"]), ("Queries", stats["queries"]),
          ("Rec. interactions", stats["rec_interactions"]), ("Search interactions", stats["search_interactions"])]
  for task, label in (("rec", "Rec."), ("search", "Search")):
    rows += [(f"{label} users (kept)", stats[f"{task}_users"]),
             (f"{label} train / valid / test", f"{stats[f'{task}_train']:,} / {stats[f'{task}_validation']:,} / "
                                              f"{stats[f'{task}_test']:,}"),
             (f"{label} avg. history (rec + search)",
              f"{stats[f'{task}_avg_rec_history']:.2f} + {stats[f'{task}_avg_search_history']:.2f}")]
  rows.append(("Negatives per val/test event", ", ".join(map(str, stats["negatives_per_event"]))))
  lines = ["| statistic | value |", "| --- | --- |"]
  lines += [f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |" for k, v in rows]
  return "\n".join(lines)


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
  return value


def quiet_library_chatter() -> None:
  """Results go to stdout; our log and progress bars to stderr; other libraries' notices are dropped
  (jax's "Unable to initialize backend 'tpu'" on a CPU machine, tfds' "Downloading and preparing")."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                      stream=sys.stderr)
  for name in ("jax._src.xla_bridge", "absl", "tensorflow_datasets", "orbax", "orbax.checkpoint", "grain",
               "etils", "jax._src.distributed", "tensorboardX", "fsspec", "gcsfs", "google"):
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:
    pass


def check_upstream_fresh(names, config, workdir: Path, command: str) -> None:
  """Refuses to run `command` on stage outputs that are stale for this config (the eval settings aside,
  which `gensar eval` may change freely), naming what changed and what to run."""
  for name in stages.upstream(names):
    if stages.read_record(workdir / name) is None:
      raise DataError(f"`gensar {command}` needs {workdir / name}, which has no completed output; run `gensar run "
                      f"--config {config.name} --workdir {workdir}` (or `gensar {name}` and the stages before it)")
    changes = [c for c in stages.explain_changes(stages.STAGES[name], config, workdir) if not c.startswith("config eval.")]
    if changes:
      raise DataError(f"{workdir / name} is stale for this config ({'; '.join(changes)}); `gensar {command}` would "
                      f"read it. Run `gensar run --config {config.name} --workdir {workdir}` to bring every stage "
                      "up to date.")


def _print_run_result(workdir, seconds: float) -> None:
  if stages.read_record(workdir / "eval") is not None:
    eval_dir = stages.output_dir(workdir, "eval")
    split = read_json(eval_dir / "stats.json").get("split", "?")
    print(f"GenSAR metrics ({split} split) from {eval_dir / 'metrics.md'}:\n")
    print((eval_dir / "metrics.md").read_text())
  print(f"total time {seconds:.0f} s; outputs in {workdir}")


def main(argv: list[str] | None = None) -> int:
  quiet_library_chatter()
  args = build_parser().parse_args(argv)
  start = time.time()
  try:
    # First, before anything touches a device: every process of a multi-host job joins the job here.
    if args.command not in ("plan", "fetch"):   # plan compiles for a slice it is not on; fetch uses no device
      parallel.maybe_initialize_distributed()
    config = load_config(args.config, args.set)
    workdir = as_path(args.workdir or Path("runs") / config.name)
    if args.command == "fetch":
      from gensar_jax.data.fetch import fetch
      for path in fetch(config):
        print(path)
      return 0
    if args.command == "reproduce":
      from gensar_jax.reproduce import reproduce_main
      stages.check_workdir(workdir)
      inputs.preflight(config)
      reproduce_main(config, workdir, args.suite)
      out = workdir / "reproduce"
      print((out / "tables.md").read_text())
      print(f"tables: {out / 'tables.md'}\nresults: {out / 'results.json'}\nplot: {out / 'tradeoff.png'}\n"
            f"total time {time.time() - start:.0f} s")
      return 0
    if args.command == "plan":   # exit 3 when a program does not fit (launch/tpu_pod.sh stops on it)
      from gensar_jax.plan import format_plan, plan
      programs = tuple(p.strip() for p in args.programs.split(",")) if args.programs else None
      report = plan(config, workdir, args.topology, **({"programs": programs} if programs else {}))
      print(format_plan(report))
      print(f"plan: {workdir / 'plan' / 'plan.json'}")
      return 0 if report["fits"] else 3
    if args.command in ("search", "recommend"):
      from gensar_jax.api import GenSAR, format_results
      model = GenSAR.load(workdir)
      history = [i.strip() for i in args.history.split(",") if i.strip()] if args.history is not None else None
      results = (model.search(args.query, history, k=args.k, user=args.user) if args.command == "search"
                 else model.recommend(history, k=args.k, user=args.user))
      print(format_results(results))
      return 0
    if args.command == "stats":
      print(format_stats_table(read_json(stages.output_dir(workdir, "prepare") / "stats.json")))
      return 0
    stages.check_workdir(workdir)
    todo = list(stages.STAGES) if args.command == "run" else [args.command]
    if args.command != "run":
      check_upstream_fresh(stages.STAGES[args.command].deps, config, workdir, args.command)
    else:
      inputs.preflight(config, inputs.stages_to_run(config, workdir))
    for name in todo:
      stage = stages.STAGES[name]
      if args.command == "run" and stages.is_fresh(stage, config, workdir):
        log.info("%s: up to date in %s, skipped", name, workdir / name)
        continue
      t0 = time.time()
      stats = stages.run_stage(stage, config, workdir)
      log.info("%s: done in %.1fs -> %s", name, time.time() - t0, stages.output_dir(workdir, name))
      if name == "prepare" and parallel.is_primary():
        print(format_stats_table(stats))
    if args.command == "run" and parallel.is_primary():
      _print_run_result(workdir, time.time() - start)
  except (DataError, FileNotFoundError, KeyError, ValueError, parallel.PrimaryFailed) as e:
    log.error("%s", e.args[0] if isinstance(e, KeyError) and e.args else e)   # KeyError's str() adds quotes
    return 2
  except OSError as e:                      # a full disk, a read-only or vanished directory, ...
    log.error("%s%s", f"{e.filename}: " if e.filename else "", e.strerror or e)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
