"""The `gensar` command: one entry point for every pipeline stage.

  gensar prepare --config configs/synthetic.py [--workdir runs/synthetic] [--set data.num_negatives=49]
  gensar stats   --config configs/office.py
  gensar run     --config configs/synthetic.py     # every stage whose outputs are missing or stale
  gensar reproduce --config configs/office.py [--suite main|ablations|all]
  gensar search "wireless mouse" --user 42 --config configs/office.py;  gensar recommend --user 42 ...
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from gensar_jax import stages
from gensar_jax.config import load_config
from gensar_jax.io_utils import DataError

log = logging.getLogger("gensar")


def _common_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", required=True, help="configs/<name>.py, or just <name>")
  p.add_argument("--workdir", default=None, help="output root (default runs/<config name>)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="dotted config override, repeatable, e.g. --set data.num_negatives=49")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="gensar", description="GenSAR in JAX: stages of the pipeline.")
  sub = parser.add_subparsers(dest="command", required=True)
  for name, stage in stages.STAGES.items():
    _common_args(sub.add_parser(name, help=stage.summary))
  _common_args(sub.add_parser("run", help="run every stage whose outputs are missing or stale"))
  _common_args(sub.add_parser("stats", help="print the prepared dataset's statistics table"))
  from gensar_jax.reproduce import add_reproduce_args
  reproduce = sub.add_parser("reproduce", help="GenSAR, its variants and the classic baselines on one protocol "
                                               "-> <workdir>/reproduce/ (tables.md, results.json, tradeoff.png)")
  _common_args(reproduce)
  add_reproduce_args(reproduce)
  search = sub.add_parser("search", help="personalized search with a trained model")
  search.add_argument("query")
  recommend = sub.add_parser("recommend", help="next-item recommendation with a trained model")
  for p in (search, recommend):
    _common_args(p)
    p.add_argument("--user", default=None, help="user id as in the source data (their history is used)")
    p.add_argument("--history", default=None,
                   help="comma-separated purchased item ids, oldest first (instead of --user)")
    p.add_argument("-k", type=int, default=10, help="number of results")
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


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
  args = build_parser().parse_args(argv)
  try:
    config = load_config(args.config, args.set)
    workdir = Path(args.workdir or Path("runs") / config.name)
    if args.command == "reproduce":
      from gensar_jax.reproduce import reproduce_main
      reproduce_main(config, workdir, args.suite)
      print((workdir / "reproduce" / "tables.md").read_text())
      return 0
    if args.command in ("search", "recommend"):
      from gensar_jax.api import GenSAR, format_results
      model = GenSAR.load(workdir)
      history = [i.strip() for i in args.history.split(",") if i.strip()] if args.history is not None else None
      results = (model.search(args.query, history, k=args.k, user=args.user) if args.command == "search"
                 else model.recommend(history, k=args.k, user=args.user))
      print(format_results(results))
      return 0
    if args.command == "stats":
      from gensar_jax.io_utils import read_json
      print(format_stats_table(read_json(workdir / "prepare" / "stats.json")))
      return 0
    todo = list(stages.STAGES) if args.command == "run" else [args.command]
    for name in todo:
      stage = stages.STAGES[name]
      if args.command == "run" and stages.is_fresh(stage, config, workdir):
        log.info("%s: up to date in %s, skipped", name, workdir / name)
        continue
      t0 = time.time()
      stats = stages.run_stage(stage, config, workdir)
      log.info("%s: done in %.1fs -> %s", name, time.time() - t0, workdir / name)
      if name == "prepare":
        print(format_stats_table(stats))
  except (DataError, FileNotFoundError, KeyError, ValueError) as e:
    log.error("%s", e.args[0] if isinstance(e, KeyError) and e.args else e)   # KeyError's str() adds quotes
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
