"""Inputs by name.

`resolve_model_dir` turns a model setting (`embed.text.model_dir`, `model.pretrained_dir`) into a directory:
an existing local path or URI as it is, else a Hugging Face hub name (`owner/name`) from the standard HF
cache, downloaded there when the hub can be reached.
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
