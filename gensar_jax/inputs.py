"""Inputs by name, and their check before any stage runs.

`resolve_model_dir` turns a model setting (`embed.text.model_dir`, `model.pretrained_dir`) into a directory:
an existing local path or URI as it is, else a Hugging Face hub name (`owner/name`) from the standard HF
cache, downloaded there when the hub can be reached. `preflight` checks every raw file, query file and
model the stages about to run will read, and reports all problems in one error.
"""
from __future__ import annotations

import logging
import os
import re

from etils import epath

from gensar_jax.io_utils import DataError, as_path, is_uri

log = logging.getLogger(__name__)

# owner/name as the hub spells repository ids: letters, digits, '_', '-', '.', neither part starting with '.'.
HUB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_][A-Za-z0-9_.-]*")
# The files the loaders read from a model repository (weights in safetensors, configs, tokenizers); the
# rest of a hub repository (other frameworks' weights, ONNX exports) is not downloaded.
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt")
# Which stages read each model setting (`gensar reproduce`'s dense-retrieval baseline also reads the encoder).
MODEL_SETTINGS = {"embed.text.model_dir": ("embed",), "model.pretrained_dir": ("doc2query", "train", "eval")}


def is_hub_name(setting: str) -> bool:
  """Whether `setting` reads as a hub model name `owner/name` (no scheme, no leading `./`, `../` or `/`)."""
  return HUB_NAME.fullmatch(setting) is not None


def hf_cache_dir() -> str:
  """The HF hub cache huggingface_hub uses, read from the environment now: HF_HUB_CACHE, else HF_HOME/hub."""
  env = os.environ
  cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
  if not cache:
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    cache = os.path.join(home, "hub")
  return os.path.expandvars(os.path.expanduser(cache))


def hf_offline() -> bool:
  """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids reaching the hub."""
  value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
  return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_model_dir(setting: str | os.PathLike, what: str) -> epath.Path:
  """The model directory a setting names: an existing path (local or URI) as it is; else a hub name
  `owner/name` resolved with `huggingface_hub.snapshot_download` into the HF cache (from the cache alone
  when HF_HUB_OFFLINE is set); anything else as a path, for the loader to report.

  Raises DataError naming `what`, the model and the command that fetches it when a hub name cannot be had.
  """
  text = os.fspath(setting)
  path = as_path(text)
  if is_uri(text) or path.exists() or not is_hub_name(text):
    return path
  from huggingface_hub import snapshot_download
  from huggingface_hub.errors import RepositoryNotFoundError
  cache, offline = hf_cache_dir(), hf_offline()
  try:
    folder = snapshot_download(text, cache_dir=cache, local_files_only=offline, allow_patterns=list(MODEL_FILES))
  except RepositoryNotFoundError:
    raise DataError(f"{what}={text!r}: no directory {path.absolute()}, and the Hugging Face hub has no model "
                    f"{text!r} (or it is gated: `hf auth login`); set {what} to a local directory or a hub name "
                    "such as google-t5/t5-small") from None
  except (OSError, ValueError) as e:   # not in the cache, offline, the hub unreachable, an incomplete snapshot
    reason = "HF_HUB_OFFLINE is set" if offline else f"{type(e).__name__}: {str(e).splitlines()[0]}"
    raise DataError(f"{what}={text!r} is neither a directory ({path.absolute()} not found) nor a Hugging Face "
                    f"model in the cache {cache} ({reason}). The hub model: `hf download {text}` (into that cache; "
                    f"HF_HOME or HF_HUB_CACHE choose it); a directory: `hf download <owner/name> --local-dir "
                    f"{text}`") from None
  log.info("%s: Hugging Face model %s from %s", what, text, folder)
  return as_path(folder)


# ------------------------------------------------------------------------------------ preflight

def _file_problems(directory: epath.Path, groups: list[tuple[str, ...]], setting: str) -> list[str]:
  """Problems with the files `directory` must hold: per group of accepted names, one that exists and reads."""
  from gensar_jax.data.loaders import probe_file
  if not directory.is_dir():
    return [f"{directory}: directory not found ({setting}; expected {', '.join(g[0] for g in groups)} there)"]
  problems = []
  for names in groups:
    found = next((directory / name for name in names if (directory / name).exists()), None)
    if found is None:
      problems.append(f"{directory}: none of {list(names)} found ({setting})")
      continue
    try:
      probe_file(found)
    except DataError as e:
      problems.append(str(e))
  return problems


def data_problems(data) -> list[str]:
  """Problems with the raw files and query files a `data` config section reads (the loaders' file names)."""
  from gensar_jax.data.loaders import QUERY_FILE_NAMES, raw_file_names
  problems = []
  if data.source != "synthetic":
    if not data.get("raw_dir"):
      problems.append(f"data.raw_dir is empty: source {data.source!r} needs the directory with the raw files")
    else:
      problems += _file_problems(as_path(data.raw_dir), raw_file_names(data.source, data.name), "data.raw_dir")
  mode = data.get("queries", "auto")
  if mode == "real" or (mode == "auto" and data.get("query_dir")):
    if not data.get("query_dir"):
      problems.append("data.queries='real' needs data.query_dir: the directory of Ai et al.'s query files "
                      "(query_text.txt.gz, train.qrels.gz, test.qrels.gz), or set data.queries=generated")
    else:
      problems += _file_problems(as_path(data.query_dir), list(QUERY_FILE_NAMES), "data.query_dir")
  return problems


def _setting(config, dotted: str) -> str:
  value = config
  for part in dotted.split("."):
    value = value.get(part) if value is not None else None
  return value or ""


def model_dir_read(config, setting: str) -> epath.Path | None:
  """The directory a model setting makes its stages read: the setting resolved (`resolve_model_dir`), or for an
  empty `embed.text.model_dir` the packaged default encoder when it is installed; None when nothing is read
  (an empty `model.pretrained_dir`: a random initialisation; no default encoder: the TF-IDF fallback)."""
  value = _setting(config, setting)
  if value:
    return resolve_model_dir(value, setting)
  if setting == "embed.text.model_dir":
    from gensar_jax.embed.text_encoder import default_model_dir
    try:
      return as_path(default_model_dir())
    except FileNotFoundError:
      return None
  return None


def _model_problem(config, setting: str) -> str | None:
  """What is wrong with a model setting's directory, or None (an empty setting is the default model)."""
  value = _setting(config, setting)
  if not value:
    if setting == "embed.text.model_dir" and config.embed.text.get("fallback") == "error":
      from gensar_jax.embed.text_encoder import default_model_dir
      try:
        default_model_dir()
      except FileNotFoundError as e:
        return f"{setting} is empty and embed.text.fallback='error': {e}"
    return None
  try:
    directory = resolve_model_dir(value, setting)
  except DataError as e:
    return str(e)
  return None if directory.is_dir() else f"{setting}={value!r}: directory {directory} not found"


def input_problems(config, stage_names=None) -> list[str]:
  """Every problem with the inputs of `stage_names` (default: all stages and the baselines): the raw and
  query files (always: `run` fingerprints them even when `prepare` is up to date) and the model settings
  of the stages that read them."""
  problems = data_problems(config.data)
  for setting, readers in MODEL_SETTINGS.items():
    if stage_names is None or any(name in readers for name in stage_names):
      problem = _model_problem(config, setting)
      if problem:
        problems.append(problem)
  return problems


def preflight(config, stage_names=None) -> None:
  """Raises one DataError listing every input problem of `stage_names` (see `input_problems`)."""
  problems = input_problems(config, stage_names)
  if not problems:
    return
  hint = ""
  if config.data.source == "amazon2014" or config.data.get("query_dir"):
    hint = ("\n`gensar fetch` with the same --config and --set downloads the Amazon 2014 files and Ai et al.'s "
            "query files into data.raw_dir and data.query_dir")
  raise DataError(f"{len(problems)} input problem(s), found before any stage ran:\n  - " + "\n  - ".join(problems)
                  + hint)


def stages_to_run(config, workdir) -> list[str]:
  """The stages `gensar run` will run: the stale ones and every stage that reads from one of them."""
  from gensar_jax import stages
  todo: list[str] = []
  for name, stage in stages.STAGES.items():
    if any(dep in todo for dep in stage.deps):
      todo.append(name)
      continue
    try:
      fresh = stages.is_fresh(stage, config, workdir)
    except DataError:      # e.g. a raw file it fingerprints is missing: preflight reports that
      fresh = False
    if not fresh:
      todo.append(name)
  return todo
