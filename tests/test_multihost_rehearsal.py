"""The pod rehearsal: `gensar` as a simulated slice of several `jax.distributed` processes on 127.0.0.1.

Each process is a "host" with its own working directory, HOME and TMPDIR (`launch/local_multiprocess.py
--scratch_root`), so whatever the processes share must go through the workdir: a bucket on a GCS emulator
started here (`tests/gcs_emulator.py`) or a plain shared directory. The code reaches the bucket only through
the standard settings (STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL), as it would reach a real one.

Cases: (a) the whole pipeline on the bucket, metrics equal to one process on a local workdir (exactly: the
hosts feed contiguous blocks of every global batch and split the catalogue by whole batches, so the batches,
dropout masks and results are the same); (b) the same on a shared directory; (c) one process killed with
SIGKILL during `train`, then the job restarted with the same command: it resumes from the bucket's checkpoint
and ends with (a)'s metrics; (d) `GenSAR.load("gs://...")` and `gensar search` answer from the bucket; the
same whole pipeline with four processes. After every run, the hosts' own directories hold no stage output.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gcs_emulator import client_env, gcs_emulator

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "launch"))
import local_multiprocess  # noqa: E402

CONFIG = str(ROOT / "configs" / "tiny.py")
GENSAR = [sys.executable, "-m", "gensar_jax.cli"]
RUN_TIMEOUT = 900
# Files only a stage writes: none of them may appear on a host's own disk when the workdir is shared.
STAGE_FILES = {"fingerprint.json", "stats.json", "metrics.json", "metrics.md", "spm.model", "eval_history.json",
               "_CHECKPOINT_METADATA", "model_config.json", "catalog.json"}


def stage_files_under(directory: Path) -> list[Path]:
  return [p for p in Path(directory).rglob("*") if p.is_file() and (
      p.name in STAGE_FILES or p.suffix == ".npz" or "array_record" in p.name or "tfevents" in p.name)]


def process_env(extra: dict[str, str]) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_FLAGS"))}
  env.update(extra, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return env


def start_slice(workdir: str, num_processes: int, scratch: Path, env: dict[str, str], log_dir: Path):
  command = GENSAR + ["run", "--config", CONFIG, "--workdir", workdir]
  saved = dict(os.environ)
  os.environ.clear()
  os.environ.update(process_env(env))
  try:
    return local_multiprocess.start(command, num_processes, devices_per_process=1, log_dir=str(log_dir),
                                    scratch_root=str(scratch))
  finally:
    os.environ.clear()
    os.environ.update(saved)


def run_slice(workdir: str, num_processes: int, scratch: Path, env: dict[str, str], log_dir: Path) -> float:
  start = time.monotonic()
  procs, logs = start_slice(workdir, num_processes, scratch, env, log_dir)
  status = local_multiprocess.wait(procs, logs, timeout=RUN_TIMEOUT, echo_first=False)
  assert status == 0, f"the slice failed (status {status}); logs in {logs}"
  return time.monotonic() - start


def stage_seconds(log_dir: Path) -> dict[str, float]:
  """Process 0's 'gensar: <stage>: done in <s>s' lines."""
  out = {}
  for line in (log_dir / "process_0.log").read_text(errors="replace").splitlines():
    if " gensar: " in line and ": done in " in line:
      stage = line.split(" gensar: ")[1].split(":")[0]
      out[stage] = float(line.split(": done in ")[1].split("s")[0])
  return out


def read_metrics(workdir: str, env: dict[str, str]) -> dict:
  from gensar_jax import stages
  from gensar_jax.io_utils import read_json
  with client_env(env):
    return read_json(stages.output_dir(workdir, "eval") / "metrics.json")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  root = tmp_path_factory.mktemp("gcs")
  with gcs_emulator(root / "store") as env:
    yield root / "store", env


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One process with two devices on a local workdir: the metrics every rehearsal must reproduce."""
  root = tmp_path_factory.mktemp("reference")
  workdir, logs = root / "run", root / "logs"
  logs.mkdir()
  env = process_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  start = time.monotonic()
  with open(logs / "process_0.log", "w") as log:
    subprocess.run(GENSAR + ["run", "--config", CONFIG, "--workdir", str(workdir)], env=env, cwd=ROOT, check=True,
                   stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
  _report("1 process, local", time.monotonic() - start, logs)
  return str(workdir)


def _report(name: str, seconds: float, log_dir: Path) -> None:
  sys.stderr.write(f"\nrehearsal {name}: {seconds:.0f} s; stages {json.dumps(stage_seconds(log_dir))}\n")


def test_two_hosts_on_a_bucket_match_one_process(bucket, reference, tmp_path):
  store, env = bucket
  seconds = run_slice("gs://bkt/a", 2, tmp_path / "hosts", env, tmp_path / "logs")
  _report("2 processes, gs://", seconds, tmp_path / "logs")
  assert read_metrics("gs://bkt/a", env) == read_metrics(reference, {})
  assert stage_files_under(store / "bkt" / "a"), "the bucket holds the stage outputs"
  assert stage_files_under(tmp_path / "hosts") == []       # nothing on the hosts' own disks
  with client_env(env):
    from gensar_jax import stages
    assert {n: stages.read_record(f"gs://bkt/a/{n}")["output"] for n in stages.STAGES} == \
        {n: stages.read_record(Path(reference) / n)["output"] for n in stages.STAGES}   # same fingerprints


def test_two_hosts_on_a_shared_directory_match_one_process(reference, tmp_path):
  shared = tmp_path / "shared" / "run"
  seconds = run_slice(str(shared), 2, tmp_path / "hosts", {}, tmp_path / "logs")
  _report("2 processes, shared directory", seconds, tmp_path / "logs")
  assert read_metrics(str(shared), {}) == read_metrics(reference, {})
  assert stage_files_under(tmp_path / "hosts") == []


def _wait_for_checkpoint(store: Path, run: str, procs, timeout: float = RUN_TIMEOUT) -> Path:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    found = sorted(store.glob(f"bkt/{run}/train/run-*/checkpoints/*/_CHECKPOINT_METADATA"))
    if found:
      return found[0].parent
    assert all(p.poll() is None for p in procs), "the slice ended before train wrote a checkpoint"
    time.sleep(0.2)
  raise AssertionError("no train checkpoint appeared in the bucket")


def test_a_killed_host_resumes_from_the_bucket(bucket, reference, tmp_path):
  store, env = bucket
  procs, logs = start_slice("gs://bkt/c", 2, tmp_path / "hosts", env, tmp_path / "logs1")
  checkpoint = _wait_for_checkpoint(store, "c", procs)
  procs[1].send_signal(signal.SIGKILL)                    # a preempted host
  status = local_multiprocess.wait(procs, logs, timeout=120, echo_first=False)
  assert status != 0
  with client_env(env):
    from gensar_jax import stages
    assert stages.read_record("gs://bkt/c/train") is None   # nothing committed for train
  step = int(checkpoint.name)

  seconds = run_slice("gs://bkt/c", 2, tmp_path / "hosts", env, tmp_path / "logs2")   # the same command again
  _report("2 processes, resumed", seconds, tmp_path / "logs2")
  log = (tmp_path / "logs2" / "process_0.log").read_text(errors="replace")
  assert "train: up to date" not in log and "doc2query: up to date" in log
  assert f"checkpoint restored: step {step}" in log or "checkpoint restored: step" in log
  assert read_metrics("gs://bkt/c", env) == read_metrics(reference, {})
  assert stage_files_under(tmp_path / "hosts") == []


def test_load_and_search_from_the_bucket(bucket, reference, tmp_path):
  store, env = bucket
  if not (store / "bkt" / "a" / "train" / "fingerprint.json").exists():
    run_slice("gs://bkt/a", 2, tmp_path / "hosts", env, tmp_path / "logs")
  from gensar_jax.api import GenSAR
  with client_env(env):
    model = GenSAR.load("gs://bkt/a")
    user = model.data.prepared.dataset.user_ids[0]
    from_bucket = model.search("wireless mouse", user=user, k=5)
  local = GenSAR.load(reference).search("wireless mouse", user=user, k=5)
  assert [(r.item_id, round(r.score, 5)) for r in from_bucket] == [(r.item_id, round(r.score, 5)) for r in local]

  scratch = local_multiprocess.scratch_dirs(tmp_path / "host", 0)
  out = subprocess.run(GENSAR + ["search", "wireless mouse", "--user", str(user), "-k", "5", "--config", CONFIG,
                                 "--workdir", "gs://bkt/a"],
                       env={**process_env(env), "HOME": str(scratch["home"]), "TMPDIR": str(scratch["tmp"])},
                       cwd=scratch["cwd"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert from_bucket[0].item_id in out.stdout
  assert stage_files_under(tmp_path / "host") == []


def test_four_hosts_on_a_bucket(bucket, reference, tmp_path):
  store, env = bucket
  seconds = run_slice("gs://bkt/d", 4, tmp_path / "hosts", env, tmp_path / "logs")
  _report("4 processes, gs://", seconds, tmp_path / "logs")
  assert read_metrics("gs://bkt/d", env) == read_metrics(reference, {})
  assert stage_files_under(tmp_path / "hosts") == []
