"""Pipeline stages: each reads its inputs from the committed outputs of the stages it depends on and writes
its own with `stats.json` and `config.json`; `run` skips a stage whose fingerprint (a hash of the config values
it reads, of the contents of the files it reads from outside the workdir: raw data and model directories, and
of its inputs' fingerprints) is unchanged.

Layout and commit (the same on a local disk, a shared mount and an object store such as `gs://`):
  - `<workdir>/<stage>/fingerprint.json` is the stage's record: what its output was built from (config
    values, the outside files' sizes and hashes, each input stage's record) and, under "output", the attempt
    directory that holds the output, `<workdir>/<stage>/run-<fingerprint>/`. Readers resolve a stage through
    its record (`output_dir`), never by listing.
  - A run writes its output into its attempt directory, and the output becomes visible only when the record
    naming it is written, last, as one file (a rename locally, one upload on an object store; no directory
    is ever renamed). A failed or interrupted run leaves the previous record, hence the previous output, as
    they were; an unfinished training run keeps its checkpoints in its attempt directory and resumes when
    the same config runs again. After a commit the replaced attempt is deleted.
  - `check_consistent` refuses outputs that no longer belong together (a model trained on another prepared
    dataset) and `explain_changes` says what changed.

Multi-host: a "primary" stage runs on process 0 while the other processes wait for its outcome; an "all" stage
runs on every process (each does its share, e.g. its batches of the catalogue or its rows of the global
batch); in both, process 0 alone writes the record.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
from typing import Callable

import ml_collections
from etils import epath

from gensar_jax import parallel
from gensar_jax.config import root_schema
from gensar_jax.config_schema import ABSENT
from gensar_jax.io_utils import (DataError, as_path, check_writable, fingerprint, is_uri, read_json, remove_tree,
                                  to_json, write_json)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  deps: tuple[str, ...]
  # (config, workdir, out_dir) -> stats: reads its inputs through `output_dir(workdir, dep)`, writes out_dir.
  run: Callable[[ml_collections.ConfigDict, epath.Path, epath.Path], dict]
  summary: str
  # "primary": process 0 runs it while the others wait; "all": every process runs it (see module doc).
  processes: str = "all"

  @property
  def config_keys(self) -> tuple[str, ...]:
    """The config sections and dotted fields the stage reads, as the config schema declares them."""
    return root_schema().stage_keys(self.name)


def _prepare(config, workdir, out_dir):
  from gensar_jax.data.prepare import prepare
  return prepare(config, out_dir)


def _embed(config, workdir, out_dir):
  from gensar_jax.embed.stage import run_embed
  return run_embed(config, workdir, out_dir)


def _index(config, workdir, out_dir):
  from gensar_jax.identifiers.stage import run_index
  return run_index(config, workdir, out_dir)


def _doc2query(config, workdir, out_dir):
  from gensar_jax.train.stage import run_doc2query
  return run_doc2query(config, workdir, out_dir)


def _train(config, workdir, out_dir):
  from gensar_jax.train.stage import run_train
  return run_train(config, workdir, out_dir)


def _eval(config, workdir, out_dir):
  from gensar_jax.eval.stage import run_eval
  return run_eval(config, workdir, out_dir)


# Order matters: `run` executes stages in this order.
STAGES: dict[str, Stage] = {s.name: s for s in [
    # Host-side work (parsing, splits, BM25 negatives, SentencePiece): process 0 alone.
    Stage("prepare", (), _prepare,
          "raw data -> events, histories, splits, negatives, tokenizer, ArrayRecord samples", "primary"),
    Stage("embed", ("prepare",), _embed,
          "semantic (text encoder) and collaborative (SASRec) item embeddings"),
    # The RQ-VAE is a few small matrices over N x d embeddings: its steps are latency-bound on one chip, and
    # data parallelism over hosts would add a cross-host all-reduce per step that costs more than the step.
    Stage("index", ("embed",), _index, "RQ-VAE dual identifiers with collision resolution", "primary"),
    # doc2query reads item text and queries only (its vocabulary is the SentencePiece one).
    Stage("doc2query", ("prepare",), _doc2query,
          "item text -> query model and pseudo-queries for ad-hoc search"),
    Stage("train", ("prepare", "index", "doc2query"), _train,
          "multi-task T5 training with validation-based model selection"),
    Stage("eval", ("train",), _eval, "constrained beam search evaluation (sampled + full catalogue)"),
]}


MIN_FREE_BYTES = int(os.environ.get("GENSAR_MIN_FREE_MB", "100")) * 2**20
HASH_BLOCK = 1 << 20


# ------------------------------------------------------------------------------------ records

def raw_input_files(stage: Stage, config: ml_collections.ConfigDict) -> list[epath.Path]:
  """The raw files a stage reads from outside the workdir (only `prepare` has any)."""
  if stage.name != "prepare":
    return []
  from gensar_jax.data.loaders import source_files
  return source_files(config.data)


def model_files(stage: Stage, config: ml_collections.ConfigDict) -> dict[str, epath.Path]:
  """The files of the model directories a stage reads (`inputs.MODEL_SETTINGS`, each resolved by
  `inputs.model_dir_read`: a hub name to its snapshot in the HF cache), as {"<setting>:<path in the
  directory>": file}: their contents enter its fingerprint, so a checkpoint replaced at the same path or hub
  name makes the stage stale, while the directory's location (a virtual environment, the HF cache) does not
  matter. Raises DataError naming the setting when its directory is missing."""
  from gensar_jax import inputs
  files = {}
  for setting, readers in inputs.MODEL_SETTINGS.items():
    if stage.name in readers:
      directory = inputs.model_dir_read(config, setting)
      if directory is not None:
        prefix = len(os.fspath(as_path(directory)).rstrip("/")) + 1
        files.update({f"{setting}:{os.fspath(path)[prefix:]}": path for path in directory_files(directory, setting)})
  return files


def directory_files(directory: epath.Path, setting: str) -> list[epath.Path]:
  """Every file under `directory` (recursively, sorted), but hidden ones and those under hidden directories
  (e.g. the `.cache/` that `hf download --local-dir` keeps). Raises DataError naming `setting` when it is
  not a directory."""
  directory = as_path(directory)
  if not directory.is_dir():
    raise DataError(f"{setting}: model directory {directory} not found")
  out, todo = [], [directory]
  while todo:
    for entry in todo.pop().iterdir():
      if entry.name.startswith("."):
        continue
      if entry.is_dir():
        todo.append(entry)
      elif entry.is_file():
        out.append(entry)
  return sorted(out, key=os.fspath)


def _sha256(path: epath.Path) -> str:
  h = hashlib.sha256()
  with as_path(path).open("rb") as f:
    while block := f.read(HASH_BLOCK):
      h.update(block)
  return h.hexdigest()


def _size_and_mtime_ns(path: epath.Path) -> tuple[int, int]:
  if is_uri(path):
    st = as_path(path).stat()
    return int(st.length), int(st.mtime * 1e9)
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


_HASHED: dict[tuple[str, int, int], str] = {}   # (path, size, mtime_ns) -> sha256, hashed by this process


def file_records(paths: list[epath.Path] | dict[str, epath.Path], known: dict | None = None) -> dict[str, dict]:
  """{name: {size, mtime_ns, sha256}} of files given as paths (named by their path) or as {name: path}; a file
  whose size and mtime match its entry in `known` (or a file this process hashed already) keeps that hash."""
  named = paths if isinstance(paths, dict) else {os.fspath(path): path for path in paths}
  out = {}
  for name, path in named.items():
    size, mtime_ns = _size_and_mtime_ns(path)
    old = (known or {}).get(name)
    seen = (os.fspath(path), size, mtime_ns)
    if old and old.get("size") == size and old.get("mtime_ns") == mtime_ns:
      digest = old["sha256"]
    elif seen in _HASHED:
      digest = _HASHED[seen]
    else:
      digest = _sha256(path)
    _HASHED[seen] = digest
    out[name] = {"size": size, "mtime_ns": mtime_ns, "sha256": digest}
  return out


def speed_only_keys() -> tuple[str, ...]:
  """Fields that change how fast a stage runs, never what it writes: left out of records and fingerprints."""
  return tuple(key for key, field in root_schema().leaves() if field.speed_only)


def unrecorded_values() -> dict[str, object]:
  """{field: value}: fields absent from recorded results' fingerprints, at the value that reproduces those
  results; left out of records and fingerprints while they hold it, so recorded runs stay fresh (any other
  value is recorded)."""
  return {key: field.unrecorded for key, field in root_schema().leaves() if field.unrecorded is not ABSENT}


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
  for field in speed_only_keys():
    if field.startswith(key + "."):
      _drop_field(value, field[len(key) + 1:])
  for field, default in unrecorded_values().items():
    if field.startswith(key + "."):
      _drop_field(value, field[len(key) + 1:], default, check=True)
  return value


RECORD = "fingerprint.json"


def read_record(stage_dir: epath.Path) -> dict | None:
  """The stage directory's record (`fingerprint.json`), or None if the stage never completed there."""
  path = as_path(stage_dir) / RECORD
  try:
    return read_json(path)
  except DataError:
    if path.exists():
      raise                      # there but unreadable: say so
    return None


def output_dir(workdir: epath.Path, name: str) -> epath.Path:
  """Where stage `name`'s committed output lives: the attempt directory its record names (a record without
  one, as older workdirs have, keeps its files beside the record). Raises DataError when it never completed."""
  stage_dir = as_path(workdir) / name
  record = read_record(stage_dir)
  if record is None:
    raise DataError(f"{stage_dir}: no completed output; run `gensar {name}` (or `gensar run`) first")
  return stage_dir / record["output"] if record.get("output") else stage_dir


def stage_record(stage: Stage, config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  """What `<workdir>/<stage>` built from this config would depend on, and its fingerprint."""
  workdir = as_path(workdir)
  values = json.loads(to_json({key: _config_value(config, key) for key in stage.config_keys}))   # as recorded
  previous = read_record(workdir / stage.name) or {}
  files = {os.fspath(path): path for path in raw_input_files(stage, config)}
  files.update(model_files(stage, config))
  inputs = file_records(files, previous.get("inputs"))
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


def stage_fingerprint(stage: Stage, config: ml_collections.ConfigDict, workdir: epath.Path) -> str:
  return stage_record(stage, config, workdir)["fingerprint"]


def is_fresh(stage: Stage, config, workdir: epath.Path) -> bool:
  workdir = as_path(workdir)
  record = read_record(workdir / stage.name)
  if record is None or any(read_record(workdir / d) is None for d in stage.deps):
    return False
  return record["fingerprint"] == stage_fingerprint(stage, config, workdir)


def _short(value, width: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= width else text[:width - 3] + "..."


def _flat(prefix: str, value) -> dict:
  if isinstance(value, dict):
    return {k: v for key, sub in value.items() for k, v in _flat(f"{prefix}.{key}", sub).items()}
  return {prefix: value}


def flat_config(config: dict) -> dict:
  """A nested config dict (a record's or a config.json's) as {dotted field: value}."""
  return {k: v for key, value in config.items() for k, v in _flat(key, value).items()}


def diff_records(old: dict, new: dict) -> list[str]:
  """Human-readable differences between two records of one stage (config values, outside files, inputs)."""
  changes = []
  old_cfg, new_cfg = flat_config(old.get("config") or {}), flat_config(new.get("config") or {})
  for key in sorted(set(old_cfg) | set(new_cfg)):
    if old_cfg.get(key, "<unset>") != new_cfg.get(key, "<unset>"):
      changes.append(f"config {key}: {_short(old_cfg.get(key, '<unset>'))} -> {_short(new_cfg.get(key, '<unset>'))}")
  old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
  for path in sorted(set(old_in) | set(new_in)):
    if path not in new_in:
      changes.append(f"input file {path} is no longer read")
    elif path not in old_in:
      changes.append(f"input file {path} is new")
    elif old_in[path]["sha256"] != new_in[path]["sha256"]:
      changes.append(f"input file {path} changed (size {old_in[path]['size']:,} -> {new_in[path]['size']:,} bytes, "
                     "content hash differs)")
  for dep in sorted(set(old.get("deps") or {}) | set(new.get("deps") or {})):
    was, now = (old.get("deps") or {}).get(dep), (new.get("deps") or {}).get(dep)
    if (was or {}).get("fingerprint") != (now or {}).get("fingerprint"):
      inner = diff_records(was or {}, now or {})
      changes.append(f"input stage {dep}/ was rebuilt" + (f" ({'; '.join(inner)})" if inner else ""))
  return changes


def explain_changes(stage: Stage, config, workdir: epath.Path) -> list[str]:
  """Why `<workdir>/<stage>` is not fresh for `config` ([] when it is)."""
  workdir = as_path(workdir)
  record = read_record(workdir / stage.name)
  if record is None:
    return [f"{workdir / stage.name} has no completed output"]
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


def check_consistent(workdir: epath.Path, names) -> None:
  """Raises DataError unless every stage output that `names` read was built from the outputs now on disk
  (e.g. the model in train/ from the tokenizer in prepare/ and the codes in index/)."""
  workdir = as_path(workdir)
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

def check_workdir(workdir: epath.Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
  """Raises DataError before any work if `workdir` is a file, cannot be written, or its disk is full; for a
  URI, if its store cannot be reached."""
  workdir = as_path(workdir)
  if not is_uri(workdir) and workdir.exists() and not workdir.is_dir():
    raise DataError(f"workdir {workdir} is a file, not a directory; give --workdir a directory path")
  check_writable(workdir)
  if is_uri(workdir):
    return
  free = shutil.disk_usage(workdir).free
  if free < min_free_bytes:
    raise DataError(f"workdir {workdir}: only {free / 2**20:.0f} MiB free on its disk; the stages need at least "
                    f"{min_free_bytes / 2**20:.0f} MiB (GENSAR_MIN_FREE_MB sets the threshold)")


def attempt_name(fingerprint: str) -> str:
  """The attempt directory of a run with this fingerprint: a rerun of the same inputs finds (and resumes) it."""
  return f"run-{fingerprint}"


def _resumable(attempt: epath.Path) -> bool:
  """Whether an uncommitted attempt holds training checkpoints worth resuming from."""
  return (attempt / "checkpoints").is_dir()


def _clean_stage_dir(stage_dir: epath.Path, keep: str, replaced: str | None) -> None:
  """After a commit: removes everything in `stage_dir` but the record, the committed attempt `keep` and
  unfinished training attempts of other configs (they resume when their config runs again); the attempt
  the commit `replaced` goes too."""
  for entry in stage_dir.iterdir():
    if entry.name in (RECORD, keep):
      continue
    if entry.name != replaced and entry.name.startswith("run-") and _resumable(entry):
      continue
    remove_tree(entry)


def _commit(stage_dir: epath.Path, record: dict, replaced: str | None) -> None:
  """Makes the attempt `record["output"]` the stage's output by writing the record (last), then cleans up."""
  write_json(stage_dir / RECORD, record)
  _clean_stage_dir(stage_dir, record["output"], replaced)


def run_stage(stage: Stage, config, workdir: epath.Path) -> dict:
  """Runs one stage into its attempt directory and commits it (see module doc). Every process of a
  multi-host job calls it; `stage.processes` says which of them do the work."""
  workdir = as_path(workdir)
  check_workdir(workdir)
  check_consistent(workdir, stage.deps)
  # Process 0 computes the record (hashing raw files is not repeated on every host); the others need only
  # its fingerprint, which names the attempt directory.
  record = stage_record(stage, config, workdir) if parallel.is_primary() else None
  fp = parallel.value_from_primary(f"{stage.name}/fingerprint", lambda: record["fingerprint"])
  stage_dir = workdir / stage.name
  current = read_record(stage_dir)
  in_place = current is not None and current["fingerprint"] == fp and bool(current.get("output"))
  attempt = current["output"] if in_place else attempt_name(fp)
  target = stage_dir / attempt
  if not in_place and current is not None and record is not None:
    log.info("%s: building the new output in %s; the current output stays until it succeeds (changed: %s)",
             stage.name, target, "; ".join(diff_records(current, record)) or "?")

  def start() -> None:
    if not in_place and target.exists() and not _resumable(target):
      remove_tree(target)          # left by a run killed before it could clean up
    target.mkdir(parents=True, exist_ok=True)

  def work() -> dict:
    try:
      return stage.run(config, workdir, target)
    except BaseException:
      if not in_place and parallel.is_primary():
        if _resumable(target):
          log.warning("%s: stopped; its unfinished run is kept in %s and resumes when the same config runs "
                      "again (the previous output is unchanged)", stage.name, target)
        else:
          remove_tree(target)
      raise

  parallel.on_primary(f"{stage.name}/{fp}/start", start)
  stats = parallel.on_primary(f"{stage.name}/{fp}/run", work) if stage.processes == "primary" else work()
  replaced = (current or {}).get("output")

  def commit() -> None:
    record.update(output=attempt,
                  written=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    _commit(stage_dir, record, replaced)
  parallel.on_primary(f"{stage.name}/{fp}/commit", commit)
  if stats is None:                # a primary stage, on the other processes
    stats = read_json(target / "stats.json")
  return stats
