"""File I/O at the pipeline's edges, on a local disk, a shared mount or an object store (`gs://`).

Every path goes through `as_path` (an `etils.epath.Path`), so a URI is never read as a local relative
path. Files are written whole: locally under a temporary name renamed onto the target, on an object store
as one upload (an object becomes visible only when its upload completes). Nothing half-written is ever
visible under the final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def _no_listing_cache() -> None:
  """Processes of a job share the store: a directory listing cached by one is stale once another writes there,
  so gcsfs lists afresh every time (fsspec's per-protocol defaults)."""
  import fsspec.config
  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_no_listing_cache()


def is_uri(path: PathLike) -> bool:
  """Whether `path` names an object store or remote file system (`gs://bucket/...`), not a local path."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`: local paths and shared mounts as they are, `gs://` URIs through gcsfs."""
  return path if isinstance(path, epath.Path) else epath.Path(os.fspath(path))


def absolute(path: PathLike) -> epath.Path:
  """`path` made absolute (Orbax wants absolute paths); a URI is already (`epath`'s `absolute()` would put
  the working directory in front of it)."""
  path = as_path(path)
  return path if is_uri(path) else path.absolute()


def check_writable(directory: PathLike, what: str = "workdir") -> None:
  """Raises DataError, before any work, unless a probe file can be written and removed in `directory` (made if
  missing): a local path or mount that is not writable, a URI whose store cannot be reached (no credentials, no
  bucket, no gcsfs)."""
  directory = as_path(directory)
  probe = directory / f".write-test-{os.getpid()}-{os.urandom(4).hex()}"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    probe.unlink()
  except ImportError as e:
    raise DataError(f"{what} {directory}: no file system for this URI ({e}); `pip install gcsfs` (the `tpu` and "
                    "`gcs` extras bring it)") from None
  except Exception as e:  # noqa: BLE001 - a store's client errors all mean the same thing here
    if not is_uri(directory):
      if isinstance(e, OSError):
        raise DataError(f"{what} {directory} is not writable ({e.strerror or e}); give --{what} a writable "
                        "directory") from None
      raise
    raise DataError(f"{what} {directory}: cannot write there ({type(e).__name__}: {e}); check the bucket name "
                    "and the credentials (GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default "
                    "login`)") from None


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` whole: a reader sees the previous file or the new one, never a part."""
  path = as_path(path)
  if is_uri(path):
    path.write_bytes(data)       # one upload; the object appears only once it is complete
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def remove_tree(path: PathLike) -> None:
  """Removes a file or directory tree if it exists (local or on an object store)."""
  path = as_path(path)
  if is_uri(path):
    if path.is_dir():
      path.rmtree(missing_ok=True)
    elif path.exists():
      path.unlink(missing_ok=True)
    return
  if os.path.islink(path) or path.is_file():
    path.unlink(missing_ok=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


class DataError(ValueError):
  """Bad input data: the message names the file, line or field and what was expected."""


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, (Path, epath.Path)):
    return os.fspath(obj)
  raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
  return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary sibling path; renames it onto `path` only if the block succeeds.

  Works for local files, directories and symlinks (a rename is only atomic on a local or POSIX file system;
  stage outputs commit through their record instead, see `stages`). An existing `path` is replaced.
  """
  if is_uri(path):
    raise ValueError(f"{path}: atomic_path needs a local path; write object-store files with write_bytes")
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
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
  write_text(path, to_json(obj))


def read_json(path: str | os.PathLike) -> Any:
  path = as_path(path)
  try:
    return json.loads(path.read_bytes().decode("utf-8"))
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
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
    for name in sorted(arrays):
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(arrays[name]), allow_pickle=False)
  write_bytes(path, buffer.getvalue())


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
  path = as_path(path)
  if not path.exists():
    raise DataError(f"{path}: file not found (run the stage that writes it first)")
  try:
    source = io.BytesIO(path.read_bytes()) if is_uri(path) else os.fspath(path)
    with np.load(source, allow_pickle=False) as z:
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
