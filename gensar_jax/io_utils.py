"""Atomic file output and stage directories: nothing half-written is ever left behind."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class DataError(ValueError):
  """Bad input data: the message names the file, line or field and what was expected."""


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, Path):
    return str(obj)
  raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
  return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary sibling path; renames it onto `path` only if the block succeeds.

  Works for files and directories. An existing `path` is replaced.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
  shutil.rmtree(tmp)
  try:
    yield tmp
    if path.is_dir() and not path.is_symlink():
      old = path.with_name(f".{path.name}.old")
      shutil.rmtree(old, ignore_errors=True)
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, path)
  finally:
    if tmp.is_dir():
      shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
      tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
  write_text(path, to_json(obj))


def read_json(path: str | os.PathLike) -> Any:
  path = Path(path)
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text (byte offset {e.start}); expected a JSON file written by gensar") from None
  except RecursionError:
    raise DataError(f"{path}: JSON nested too deeply to parse") from None
  except IsADirectoryError:
    raise DataError(f"{path}: is a directory, expected a JSON file") from None


def save_arrays(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  """Writes an uncompressed .npz atomically; byte-identical for identical arrays (fixed zip timestamps)."""
  with atomic_path(path) as tmp:
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
      for name in sorted(arrays):
        info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
        with zf.open(info, "w", force_zip64=True) as f:
          np.lib.format.write_array(f, np.asarray(arrays[name]), allow_pickle=False)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
  path = Path(path)
  if not path.exists():
    raise DataError(f"{path}: file not found (run the stage that writes it first)")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
    # Never load it with pickling enabled (numpy's advice for object arrays): that would run its code.
    reason = "holds Python objects, not plain arrays" if "allow_pickle" in str(e) else f"{type(e).__name__}: {e}"
    raise DataError(f"{path}: damaged or not an array file written by gensar ({reason}); re-run the stage that "
                    "writes it") from None


def fingerprint(*parts: Any) -> str:
  """Stable short hash of JSON-serializable parts (config sections, input fingerprints)."""
  h = hashlib.sha256()
  for p in parts:
    h.update(json.dumps(p, sort_keys=True, default=_json_default).encode())
  return h.hexdigest()[:16]
