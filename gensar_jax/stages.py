"""Pipeline stages: each reads its inputs from `<workdir>/<dep>/` and writes `<workdir>/<stage>/` with
`stats.json`, `config.json` and `fingerprint.json`; `run` skips a stage whose fingerprint (a hash of the
config values it reads, of its raw input files' contents and of its inputs' fingerprints) is unchanged.

Safety (README "Safety"):
  - A stage whose inputs or config changed builds its new output in `<workdir>/.<stage>.partial-<fp>/`
    and swaps it in by two renames only when it succeeded: a failed or interrupted re-run leaves the
    previous output as it was (an unfinished training run stays in its partial directory and resumes
    when the same config runs again).
  - `fingerprint.json` records what the output was built from (config values, raw files' sizes and
    hashes, and each input stage's record); `check_consistent` refuses outputs that no longer belong
    together (a model trained on another prepared dataset) and `explain_changes` says what changed.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import ml_collections

from gensar_jax.io_utils import DataError, fingerprint, read_json, to_json, write_json

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  config_keys: tuple[str, ...]            # config sections or dotted fields the stage reads
  deps: tuple[str, ...]
  # (config, out_dir, fingerprint) -> stats. Long stages use the fingerprint to tell a resumable run
  # of the same inputs from a stale one.
  run: Callable[[ml_collections.ConfigDict, Path, str], dict]
  summary: str


def _prepare(config, out_dir, fingerprint):
  from gensar_jax.data.prepare import prepare
  return prepare(config, out_dir)


def _embed(config, out_dir, fingerprint):
  from gensar_jax.embed.stage import run_embed
  return run_embed(config, out_dir)


def _index(config, out_dir, fingerprint):
  from gensar_jax.identifiers.stage import run_index
  return run_index(config, out_dir)


def _doc2query(config, out_dir, fingerprint):
  from gensar_jax.train.stage import run_doc2query
  return run_doc2query(config, out_dir, fingerprint)


def _train(config, out_dir, fingerprint):
  from gensar_jax.train.stage import run_train
  return run_train(config, out_dir, fingerprint)


def _eval(config, out_dir, fingerprint):
  from gensar_jax.eval.stage import run_eval
  return run_eval(config, out_dir)


# Order matters: `run` executes stages in this order.
STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("prepare", ("seed", "data"), (), _prepare,
          "raw data -> events, histories, splits, negatives, tokenizer, ArrayRecord samples"),
    Stage("embed", ("seed", "embed"), ("prepare",), _embed,
          "semantic (text encoder) and collaborative (SASRec) item embeddings"),
    Stage("index", ("identifiers",), ("embed",), _index, "RQ-VAE dual identifiers with collision resolution"),
    # doc2query reads item text and queries only (its vocabulary is the SentencePiece one).
    Stage("doc2query", ("seed", "tasks.max_text_tokens", "model", "doc2query", "parallel"), ("prepare",),
          _doc2query,
          "item text -> query model and pseudo-queries for ad-hoc search"),
    # Of the eval section, training reads only what its validation hook uses.
    Stage("train", ("seed", "tasks", "model", "train", "parallel", "eval.num_beams", "eval.validation_rows",
                    "eval.ties.sampled"),
          ("prepare", "index", "doc2query"),
          _train, "multi-task T5 training with validation-based model selection"),
    Stage("eval", ("eval",), ("train",), _eval, "constrained beam search evaluation (sampled + full catalogue)"),
]}


MIN_FREE_BYTES = int(os.environ.get("GENSAR_MIN_FREE_MB", "100")) * 2**20
HASH_BLOCK = 1 << 20


# ------------------------------------------------------------------------------------ records

def raw_input_files(stage: Stage, config: ml_collections.ConfigDict) -> list[Path]:
  """The raw files a stage reads from outside the workdir (only `prepare` has any)."""
  if stage.name != "prepare":
    return []
  from gensar_jax.data.loaders import source_files
  return source_files(config.data)


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(HASH_BLOCK):
      h.update(block)
  return h.hexdigest()


def file_records(paths: list[Path], known: dict | None = None) -> dict[str, dict]:
  """{path: {size, mtime_ns, sha256}}; a file whose size and mtime match `known` keeps its recorded hash."""
  out = {}
  for path in paths:
    st = path.stat()
    old = (known or {}).get(str(path))
    if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
      digest = old["sha256"]
    else:
      digest = _sha256(path)
    out[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
  return out


# Fields that change how fast a stage runs, never what it writes: left out of the records and fingerprints.
SPEED_ONLY_KEYS = ("tasks.pipeline_workers",)
# Fields added after results were recorded, at the value that reproduces them: left out of records and
# fingerprints while they hold it, so the earlier runs stay fresh (any other value is recorded).
LATE_FIELD_DEFAULTS = {"train.dropout_rng": "threefry", "train.early_stopping_patience": 0,
                       "doc2query.train.dropout_rng": "threefry", "doc2query.train.early_stopping_patience": 0}


def _drop_field(value: dict, path: str, only_if=None, check: bool = False) -> None:
  """Removes `path` (dotted, relative to `value`) from the nested dict `value`; with `check`, only when it
  equals `only_if`."""
  *parents, name = path.split(".")
  for part in parents:
    value = value.get(part)
    if not isinstance(value, dict):
      return
  if name in value and (not check or value[name] == only_if):
    value.pop(name)


def _config_value(config: ml_collections.ConfigDict, key: str):
  value = config
  for part in key.split("."):
    value = value.get(part) if value is not None else None
  if not isinstance(value, ml_collections.ConfigDict):
    return value
  value = value.to_dict()
  for field in SPEED_ONLY_KEYS:
    if field.startswith(key + "."):
      _drop_field(value, field[len(key) + 1:])
  for field, default in LATE_FIELD_DEFAULTS.items():
    if field.startswith(key + "."):
      _drop_field(value, field[len(key) + 1:], default, check=True)
  return value


def read_record(stage_dir: Path) -> dict | None:
  """The stage directory's `fingerprint.json`, or None if the stage never completed there."""
  path = Path(stage_dir) / "fingerprint.json"
  return read_json(path) if path.exists() else None


def stage_record(stage: Stage, config: ml_collections.ConfigDict, workdir: Path) -> dict:
  """What `<workdir>/<stage>` built from this config would depend on, and its fingerprint."""
  workdir = Path(workdir)
  values = json.loads(to_json({key: _config_value(config, key) for key in stage.config_keys}))   # as recorded
  previous = read_record(workdir / stage.name) or {}
  inputs = file_records(raw_input_files(stage, config), previous.get("inputs"))
  deps = {}
  for dep in stage.deps:
    record = read_record(workdir / dep)
    if record is None:
      raise DataError(f"stage {stage.name!r} needs {workdir / dep}: run `gensar {dep}` first")
    deps[dep] = {k: record[k] for k in ("fingerprint", "config", "inputs", "written") if k in record}
  parts = [stage.name, *(values[key] for key in stage.config_keys)]
  if inputs:
    parts.append({path: r["sha256"] for path, r in inputs.items()})
  parts += [d["fingerprint"] for d in deps.values()]
  return {"fingerprint": fingerprint(*parts), "stage": stage.name, "config": values, "inputs": inputs,
          "deps": deps}


def stage_fingerprint(stage: Stage, config: ml_collections.ConfigDict, workdir: Path) -> str:
  return stage_record(stage, config, workdir)["fingerprint"]


def is_fresh(stage: Stage, config, workdir: Path) -> bool:
  record = read_record(Path(workdir) / stage.name)
  if record is None or any(read_record(Path(workdir) / d) is None for d in stage.deps):
    return False
  return record["fingerprint"] == stage_fingerprint(stage, config, workdir)


def _short(value, width: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= width else text[:width - 3] + "..."


def _flat(prefix: str, value) -> dict:
  if isinstance(value, dict):
    return {k: v for key, sub in value.items() for k, v in _flat(f"{prefix}.{key}", sub).items()}
  return {prefix: value}


def diff_records(old: dict, new: dict) -> list[str]:
  """Human-readable differences between two records of one stage (config values, raw files, inputs)."""
  changes = []
  old_cfg = {k: v for key, value in (old.get("config") or {}).items() for k, v in _flat(key, value).items()}
  new_cfg = {k: v for key, value in (new.get("config") or {}).items() for k, v in _flat(key, value).items()}
  for key in sorted(set(old_cfg) | set(new_cfg)):
    if old_cfg.get(key, "<unset>") != new_cfg.get(key, "<unset>"):
      changes.append(f"config {key}: {_short(old_cfg.get(key, '<unset>'))} -> {_short(new_cfg.get(key, '<unset>'))}")
  old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
  for path in sorted(set(old_in) | set(new_in)):
    if path not in new_in:
      changes.append(f"raw file {path} is no longer read")
    elif path not in old_in:
      changes.append(f"raw file {path} is new")
    elif old_in[path]["sha256"] != new_in[path]["sha256"]:
      changes.append(f"raw file {path} changed (size {old_in[path]['size']:,} -> {new_in[path]['size']:,} bytes, "
                     "content hash differs)")
  for dep in sorted(set(old.get("deps") or {}) | set(new.get("deps") or {})):
    was, now = (old.get("deps") or {}).get(dep), (new.get("deps") or {}).get(dep)
    if (was or {}).get("fingerprint") != (now or {}).get("fingerprint"):
      inner = diff_records(was or {}, now or {})
      changes.append(f"input stage {dep}/ was rebuilt" + (f" ({'; '.join(inner)})" if inner else ""))
  return changes


def explain_changes(stage: Stage, config, workdir: Path) -> list[str]:
  """Why `<workdir>/<stage>` is not fresh for `config` ([] when it is)."""
  record = read_record(Path(workdir) / stage.name)
  if record is None:
    return [f"{Path(workdir) / stage.name} has no completed output"]
  return diff_records(record, stage_record(stage, config, workdir))


def upstream(names) -> list[str]:
  """The stages `names` read, directly or through other stages, in pipeline order (`names` included)."""
  wanted, todo = set(), list(names)
  while todo:
    name = todo.pop()
    if name not in wanted:
      wanted.add(name)
      todo.extend(STAGES[name].deps)
  return [name for name in STAGES if name in wanted]


def check_consistent(workdir: Path, names) -> None:
  """Raises DataError unless every stage output that `names` read was built from the outputs now on disk
  (e.g. the model in train/ from the tokenizer in prepare/ and the codes in index/)."""
  workdir = Path(workdir)
  for name in upstream(names):
    record = read_record(workdir / name)
    if record is None:
      raise DataError(f"{workdir / name}: no completed output; run `gensar {name}` (or `gensar run`) first")
    for dep, built_from in (record.get("deps") or {}).items():
      if not isinstance(built_from, dict):     # a record written before provenance was kept
        continue
      now = read_record(workdir / dep)
      if now is None or now["fingerprint"] != built_from["fingerprint"]:
        changed = diff_records(built_from, now or {})
        wanted = "/, ".join(names)
        raise DataError(
            f"{workdir}: the outputs {wanted}/ read do not belong together: {name}/ was built from a {dep}/ that "
            "has since been replaced" + (f" ({'; '.join(changed)})" if changed else "")
            + f". Run `gensar run --config <config> --workdir {workdir}` to rebuild {name}/ and what follows it.")


# ------------------------------------------------------------------------------------ running

def check_workdir(workdir: Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
  """Raises DataError before any work if `workdir` is a file, cannot be written, or its disk is full."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise DataError(f"workdir {workdir} is a file, not a directory; give --workdir a directory path")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
      pass
  except OSError as e:
    raise DataError(f"workdir {workdir} is not writable ({e.strerror or e}); give --workdir a writable "
                    "directory") from None
  free = shutil.disk_usage(workdir).free
  if free < min_free_bytes:
    raise DataError(f"workdir {workdir}: only {free / 2**20:.0f} MiB free on its disk; the stages need at least "
                    f"{min_free_bytes / 2**20:.0f} MiB (GENSAR_MIN_FREE_MB sets the threshold)")


def _partial_dir(workdir: Path, name: str, fp: str) -> Path:
  return workdir / f".{name}.partial-{fp}"


def _previous_dir(workdir: Path, name: str) -> Path:
  return workdir / f".{name}.previous"


def _recover_interrupted_swap(workdir: Path, name: str) -> None:
  """A swap stopped between its two renames: put the previous output back."""
  out_dir, previous = workdir / name, _previous_dir(workdir, name)
  if previous.is_dir() and not out_dir.exists() and not out_dir.is_symlink():
    try:
      os.replace(previous, out_dir)
    except FileNotFoundError:        # another process of a multi-host run restored it first
      return
    log.warning("%s: restored the previous output (a swap was interrupted)", out_dir)


def _swap_in(new_dir: Path, out_dir: Path) -> None:
  """Makes `new_dir` the stage's output; the previous output (or a symlink to a shared one) is dropped
  only after the new one is in place."""
  previous = _previous_dir(out_dir.parent, out_dir.name)
  shutil.rmtree(previous, ignore_errors=True)
  if out_dir.is_symlink():
    out_dir.unlink()
  elif out_dir.exists():
    os.replace(out_dir, previous)
  os.replace(new_dir, out_dir)
  shutil.rmtree(previous, ignore_errors=True)


def _primary_then_sync(action: Callable[[], None]) -> None:
  """Runs `action` on process 0 only, with the other processes waiting (multi-host runs)."""
  jax = sys.modules.get("jax")
  multi = jax is not None and jax.process_count() > 1
  if not multi or jax.process_index() == 0:
    action()
  if multi:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("gensar stage output")


def run_stage(stage: Stage, config, workdir: Path) -> dict:
  """Runs one stage. Its output replaces `<workdir>/<stage>` only once it is complete (see module doc)."""
  workdir = Path(workdir)
  check_workdir(workdir)
  for name in upstream([stage.name]):
    _recover_interrupted_swap(workdir, name)
  check_consistent(workdir, stage.deps)
  record = stage_record(stage, config, workdir)
  fp = record["fingerprint"]
  out_dir = workdir / stage.name
  current = read_record(out_dir)
  in_place = current is not None and current["fingerprint"] == fp and not out_dir.is_symlink()
  target = out_dir if in_place else _partial_dir(workdir, stage.name, fp)
  if not in_place and current is not None:
    log.info("%s: building the new output in %s; the current %s/ stays until it succeeds (changed: %s)",
             stage.name, target.name, stage.name, "; ".join(diff_records(current, record)) or "?")
  try:
    stats = stage.run(config, target, fp)
  except BaseException:
    if not in_place and target.is_dir() and not (target / "checkpoints").is_dir():
      shutil.rmtree(target, ignore_errors=True)
    elif not in_place and target.is_dir():
      log.warning("%s: stopped; its unfinished run is kept in %s and resumes when the same config runs again "
                  "(the previous %s/ is unchanged)", stage.name, target, stage.name)
    raise
  record["written"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

  def finish():
    write_json(target / "fingerprint.json", record)
    if not in_place:
      _swap_in(target, out_dir)
  _primary_then_sync(finish)
  return stats
