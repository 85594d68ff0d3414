"""launch/tpu_pod.sh, launch/worker.sh and launch/slurm_gpu.sbatch against fake gcloud, srun and sbatch.

The fake `gcloud` records every call; `tpu-vm scp` copies into per-worker home directories and `tpu-vm ssh
--command X` runs X there with bash (each worker with its own HOME), so the scripts' remote commands really
run: the checkout is unpacked, worker.sh builds a (fake) virtual environment and starts a fake `gensar` that
records its arguments and environment and prints progress lines. `gs://` URIs map to a local directory.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TPU_POD = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "slurm_gpu.sbatch"
SCRIPTS = [TPU_POD, ROOT / "launch" / "worker.sh", SLURM, ROOT / ".ci" / "run"]
CONFIG = "configs/tpu_v5e_8.py"
RUN = "gs://bkt/electronics"

FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys
from pathlib import Path

args = sys.argv[1:]
log = Path(os.environ["FAKE_LOG"])
with open(log / "gcloud_calls.jsonl", "a") as f:
  f.write(json.dumps(args) + "\\n")
root, gcs = Path(os.environ["FAKE_TPU_ROOT"]), Path(os.environ["FAKE_GCS"])


def option(name):
  for i, arg in enumerate(args):
    if arg == name:
      return args[i + 1]
    if arg.startswith(name + "="):
      return arg.split("=", 1)[1]


def workers():
  chosen = option("--worker") or "0"
  return range(int(os.environ["FAKE_TPU_WORKERS"])) if chosen == "all" else [int(chosen)]


def home(i):
  path = root / f"worker-{{i}}"
  path.mkdir(parents=True, exist_ok=True)
  return path


def local(uri):
  return gcs / uri[len("gs://"):] if uri.startswith("gs://") else Path(uri)


if args[:3] == ["compute", "tpus", "tpu-vm"] and args[3] == "scp":
  for i in workers():
    shutil.copy(args[4], home(i) / args[5].split(":", 1)[1])
elif args[:3] == ["compute", "tpus", "tpu-vm"] and args[3] == "ssh":
  status = 0
  for i in workers():
    env = dict(os.environ, HOME=str(home(i)), FAKE_WORKER=str(i),
               PATH=os.environ["FAKE_WORKER_BIN"] + ":" + os.environ["PATH"])
    status = max(status, subprocess.run(["bash", "-c", option("--command")], cwd=home(i), env=env).returncode)
  sys.exit(status)
elif args[:2] == ["storage", "rsync"]:
  source, target = [local(a) for a in args[2:] if not a.startswith("-")]
  if not source.is_dir():
    sys.exit(1)
  shutil.copytree(source, target, dirs_exist_ok=True)
"""

# On the workers: python3 as far as worker.sh uses it (uv through pip, `uv venv`, `uv pip install`).
FAKE_PYTHON3 = """#!/usr/bin/env bash
echo "worker-$FAKE_WORKER python3 $*" >>"$FAKE_LOG/python3_calls"
case "$*" in
  "-m uv --version") [[ -f $HOME/.uv ]] ;;
  "-m pip install --user --quiet uv") touch "$HOME/.uv" ;;
  "-m uv venv --python "*)
    venv=${@: -1}
    mkdir -p "$venv/bin"
    venv=$(cd "$venv" && pwd)
    printf 'export VIRTUAL_ENV=%s\\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\\n' "$venv" >"$venv/bin/activate"
    printf '#!/usr/bin/env bash\\necho "gensar_jax (fake) on Python 3.11"\\n' >"$venv/bin/python"
    cp "$FAKE_GENSAR" "$venv/bin/gensar"
    chmod +x "$venv/bin/python" "$venv/bin/gensar" ;;
  "-m uv pip install "*) ;;
  *) exit 3 ;;
esac
"""

# The venv's gensar: records, prints progress lines (with a progress bar's carriage returns), may sleep or fail.
FAKE_GENSAR = """#!/usr/bin/env bash
echo "worker-${FAKE_WORKER:-none} venv=${VIRTUAL_ENV:-none} GENSAR_DISTRIBUTED=${GENSAR_DISTRIBUTED:-} gensar $*" \\
  >>"$FAKE_LOG/gensar_calls"
if [[ $1 == fetch ]]; then
  for arg; do
    case $arg in data.raw_dir=* | data.query_dir=*) mkdir -p "${arg#*=}"; echo data >"${arg#*=}/${arg%%=*}.gz" ;; esac
  done
  exit 0
fi
for step in 50 100; do
  printf 'train:  %s%%|#####     | %s/100\\r' "$step" "$step"
  echo "12:00:0${step:0:1} gensar_jax.train.loop: train step $step/100: loss 1.2345, 1,000 examples/s, 1.00 s/step, ETA 50.00 s"
done
sleep "${FAKE_GENSAR_SLEEP:-0}"
exit "${FAKE_GENSAR_RC:-0}"
"""

LOCAL_GENSAR = """#!/usr/bin/env bash
echo "gensar $*" >>"$FAKE_LOG/local_gensar_calls"
exit "${FAKE_PLAN_RC:-0}"
"""


def _script(path: Path, text: str) -> Path:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


class Pod:
  """A fake slice of `workers` TPU VMs, the local gcloud and gensar, and a fake bucket."""

  def __init__(self, tmp_path: Path, workers: int):
    self.tmp, self.log, self.root, self.gcs = tmp_path, tmp_path / "log", tmp_path / "vms", tmp_path / "gcs"
    for d in (self.log, self.root, self.gcs, tmp_path / "bin", tmp_path / "worker_bin"):
      d.mkdir()
    _script(tmp_path / "bin" / "gcloud", FAKE_GCLOUD.format(python=sys.executable))
    _script(tmp_path / "bin" / "gensar", LOCAL_GENSAR)
    _script(tmp_path / "worker_bin" / "python3", FAKE_PYTHON3)
    _script(tmp_path / "worker_bin" / "hostname", '#!/usr/bin/env bash\necho "fake-tpu-w-$FAKE_WORKER"\n')
    _script(tmp_path / "worker_bin" / "gcsfuse", '#!/usr/bin/env bash\necho "gcsfuse $*" >>"$FAKE_LOG/gcsfuse_calls"\n')
    _script(tmp_path / "worker_bin" / "sudo", "#!/usr/bin/env bash\nexit 99\n")
    self.env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", FAKE_LOG=str(self.log),
                    FAKE_TPU_ROOT=str(self.root), FAKE_GCS=str(self.gcs), FAKE_TPU_WORKERS=str(workers),
                    FAKE_WORKER_BIN=str(tmp_path / "worker_bin"),
                    FAKE_GENSAR=str(_script(tmp_path / "fake_gensar", FAKE_GENSAR)), SKIP_PLAN="0")
    self.env.pop("PLAN_WORKDIR", None)
    self.workers = workers

  def launch(self, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TPU_POD), *args], env={**self.env, **env}, capture_output=True, text=True,
                          timeout=120, cwd=self.tmp)

  def calls(self, name: str) -> list[str]:
    path = self.log / name
    return path.read_text().splitlines() if path.exists() else []

  def gcloud(self) -> list[list[str]]:
    return [json.loads(line) for line in self.calls("gcloud_calls.jsonl")]

  def checkout(self, worker: int) -> Path:
    return self.root / f"worker-{worker}" / "gensar_jax"

  def wait_finished(self, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all((self.checkout(i) / "logs" / "latest.rc").exists() for i in range(self.workers)):
      assert time.monotonic() < deadline, "the workers' jobs did not finish"
      time.sleep(0.1)

  def preempt(self) -> None:
    """The slice is gone (its jobs killed, its disks too); a new one comes up with empty disks."""
    self.kill_jobs()
    shutil.rmtree(self.root)
    self.root.mkdir()

  def kill_jobs(self) -> None:
    """Ends the fake jobs this test started (their own process groups, from worker.sh's pid files)."""
    for pid_file in self.root.glob("worker-*/gensar_jax/logs/job.pid"):
      pid = int(pid_file.read_text())
      try:
        os.killpg(pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def pod(tmp_path):
  pod = Pod(tmp_path, workers=2)
  yield pod
  pod.kill_jobs()


def _ssh_commands(pod: Pod) -> list[tuple[str, str]]:
  return [(next(a for a in c if a.startswith("--worker=")), c[c.index("--command") + 1])
          for c in pod.gcloud() if c[3] == "ssh"]


def _job_calls(pod: Pod, command: str, wait_for: int = 0) -> list[str]:
  """The fake gensar's records of `command`; waits until there are `wait_for` (detached jobs start late)."""
  deadline = time.monotonic() + 30
  while True:
    calls = [line for line in pod.calls("gensar_calls") if f" gensar {command} " in line]
    if len(calls) >= wait_for:
      return calls
    assert time.monotonic() < deadline, f"only {len(calls)} of {wait_for} gensar {command} calls"
    time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
  """Whether a process of group `pgid` still runs (zombies, which nobody may reap here, do not count)."""
  table = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True).stdout.split("\n")
  return any(row.split()[0] == str(pgid) and not row.split()[1].startswith("Z") for row in table if row.strip())


def test_setup_copies_the_checkout_and_builds_a_python_311_venv_with_the_tpu_extra(pod):
  result = pod.launch("setup", "my-tpu", "zone-a")
  assert result.returncode == 0, result.stderr
  (scp,) = [c for c in pod.gcloud() if c[3] == "scp"]
  assert scp[5] == "my-tpu:gensar_jax.tar.gz" and "--worker=all" in scp and scp[scp.index("--zone") + 1] == "zone-a"
  for worker in range(2):
    assert (pod.checkout(worker) / "launch" / "worker.sh").exists()
    calls = [c.split(" ", 1)[1] for c in pod.calls("python3_calls") if c.startswith(f"worker-{worker} ")]
    assert "python3 -m pip install --user --quiet uv" in calls
    assert "python3 -m uv venv --python 3.11 .venv" in calls
    assert "python3 -m uv pip install --python .venv/bin/python -e .[tpu]" in calls
  # Idempotent: a second setup keeps the venv and reinstalls the checkout.
  assert pod.launch("setup", "my-tpu", "zone-a").returncode == 0
  assert sum("uv venv" in c for c in pod.calls("python3_calls")) == 2


def test_run_starts_the_same_gensar_run_on_every_worker_inside_the_venv(pod):
  assert pod.launch("setup", "my-tpu", "zone-a").returncode == 0
  result = pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, "--set", "train.num_epochs=1")
  assert result.returncode == 0, result.stderr
  pod.wait_finished()
  runs = _job_calls(pod, "run")
  expected = f"GENSAR_DISTRIBUTED=auto gensar run --config {CONFIG} --workdir {RUN} --set train.num_epochs=1"
  assert sorted(line.split(" ", 2)[0] for line in runs) == ["worker-0", "worker-1"]
  for worker, line in zip((0, 1), sorted(runs)):
    assert line == f"worker-{worker} venv={pod.checkout(worker) / '.venv'} {expected}"
    assert (pod.checkout(worker) / "logs" / "latest.log").resolve().name.startswith("run-")
  # The plan ran here first, in its own local workdir: the run's gs:// workdir never reaches it.
  (plan,) = pod.calls("local_gensar_calls")
  assert plan == f"gensar plan --config {CONFIG} --workdir runs/plan/tpu_v5e_8 --set train.num_epochs=1"
  ((worker_flag, command),) = [c for c in _ssh_commands(pod) if "worker.sh start" in c[1]]
  assert worker_flag == "--worker=all"


@pytest.mark.parametrize("action", ["train", "eval"])
def test_train_and_eval_run_alone_on_every_worker(pod, action):
  pod.launch("setup", "my-tpu", "zone-a")
  result = pod.launch(action, "my-tpu", "zone-a", CONFIG, f"--workdir={RUN}", "--set", "eval.num_beams=50")
  assert result.returncode == 0, result.stderr
  calls = _job_calls(pod, action, wait_for=2)
  assert sorted(c.split(" ", 2)[2] for c in calls) == 2 * [
      f"GENSAR_DISTRIBUTED=auto gensar {action} --config {CONFIG} --workdir {RUN} --set eval.num_beams=50"]
  assert len(pod.calls("local_gensar_calls")) == (action == "train")          # only train plans first


def test_status_reports_each_worker_and_the_latest_progress_line(pod):
  pod.launch("setup", "my-tpu", "zone-a")
  pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1", FAKE_GENSAR_SLEEP="30")
  _job_calls(pod, "run", wait_for=2)
  running = pod.launch("status", "my-tpu", "zone-a")
  assert running.returncode == 10, running.stderr
  assert running.stdout.count("latest progress: ") == 2 and "fake-tpu-w-1: running" in running.stdout
  assert "worker 0: running" in running.stdout
  pod.launch("stop", "my-tpu", "zone-a")
  pod.kill_jobs()
  pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1")
  pod.wait_finished()
  done = pod.launch("status", "my-tpu", "zone-a", STATUS_LINES="3")
  assert done.returncode == 0, done.stdout + done.stderr
  progress = "latest progress: 12:00:01 gensar_jax.train.loop: train step 100/100: loss 1.2345, 1,000 examples/s"
  for worker in (0, 1):
    assert f"== fake-tpu-w-{worker}: finished, log {pod.checkout(worker) / 'logs' / 'run-'}" in done.stdout
  assert done.stdout.count(progress) == 2 and "worker 0: finished" in done.stdout
  assert "\r" not in done.stdout                     # progress-bar carriage returns become line breaks
  failed = pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1", FAKE_GENSAR_RC="2")
  assert failed.returncode == 0
  pod.wait_finished()
  assert pod.launch("status", "my-tpu", "zone-a").returncode == 11


def test_logs_print_a_workers_log(pod):
  pod.launch("setup", "my-tpu", "zone-a")
  pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1")
  pod.wait_finished()
  result = pod.launch("logs", "my-tpu", "zone-a", "1", FOLLOW="0")
  assert result.returncode == 0 and "train step 100/100: loss 1.2345" in result.stdout
  ((worker_flag, command),) = [c for c in _ssh_commands(pod) if "worker.sh logs" in c[1]]
  assert worker_flag == "--worker=1" and "launch/worker.sh logs 100 --no-follow;" in command


def test_stop_ends_the_job_on_every_worker(pod):
  pod.launch("setup", "my-tpu", "zone-a")
  pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1", FAKE_GENSAR_SLEEP="60")
  pids = [int((pod.checkout(i) / "logs" / "job.pid").read_text()) for i in range(2)]
  _job_calls(pod, "run", wait_for=2)
  assert all(_group_alive(pid) for pid in pids)
  result = pod.launch("stop", "my-tpu", "zone-a")
  assert result.returncode == 0, result.stderr
  assert not any(_group_alive(pid) for pid in pids)  # the job's process group is gone (the sleep included)
  status = pod.launch("status", "my-tpu", "zone-a")
  assert status.returncode == 12 and status.stdout.count(": stopped, log ") == 2
  # A second run is refused while one runs, and allowed after stop.
  pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1", FAKE_GENSAR_SLEEP="60")
  _job_calls(pod, "run", wait_for=4)
  again = pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1")
  assert again.stderr.count("a job is running here") == 2
  time.sleep(0.5)
  assert len(_job_calls(pod, "run")) == 4


def test_resume_after_a_preemption_reissues_the_same_command_and_deletes_nothing(pod):
  (pod.gcs / "bkt" / "electronics" / "train").mkdir(parents=True)
  checkpoint = pod.gcs / "bkt" / "electronics" / "train" / "checkpoint"
  checkpoint.write_text("step 1000")
  run = ("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, "--set", "data.raw_dir=gs://bkt/raw")
  pod.launch("setup", "my-tpu", "zone-a")
  assert pod.launch(*run, SKIP_PLAN="1", FAKE_GENSAR_SLEEP="60").returncode == 0
  first = sorted(_job_calls(pod, "run", wait_for=2))
  pod.preempt()
  fresh = pod.launch("status", "my-tpu", "zone-a")
  assert fresh.returncode == 12 and "worker 0: none" in fresh.stdout       # a new, empty VM: set up and run again
  assert pod.launch("setup", "my-tpu", "zone-a").returncode == 0
  assert pod.launch(*run, SKIP_PLAN="1").returncode == 0
  pod.wait_finished()
  assert sorted(_job_calls(pod, "run", wait_for=4)) == sorted(first * 2)      # identical, venv path included
  assert checkpoint.read_text() == "step 1000"
  commands = [" ".join(c) for c in pod.gcloud()] + [cmd for _, cmd in _ssh_commands(pod)]
  assert not any(word in command for command in commands for word in (" delete", "rm -r", "storage rm"))


def test_a_restarted_vm_keeps_the_earlier_log(pod):
  pod.launch("setup", "my-tpu", "zone-a")
  pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1", FAKE_GENSAR_SLEEP="60")
  pod.kill_jobs()                                   # the VM restarted: disk kept, process gone
  assert pod.launch("status", "my-tpu", "zone-a").returncode == 12
  time.sleep(1.1)                                   # the next job's log name (seconds) differs
  pod.launch("run", "my-tpu", "zone-a", CONFIG, "--workdir", RUN, SKIP_PLAN="1")
  pod.wait_finished()
  assert len(list((pod.checkout(0) / "logs").glob("run-*.log"))) == 2


def test_plan_uses_a_local_workdir_never_the_runs(pod):
  result = pod.launch("plan", "my-tpu", "zone-a", "configs/tpu_v5e_64.py", "--workdir", RUN, "--set", "plan.num_items=10")
  assert result.returncode == 0 and not pod.gcloud()
  assert pod.calls("local_gensar_calls") == [
      "gensar plan --config configs/tpu_v5e_64.py --workdir runs/plan/tpu_v5e_64 --set plan.num_items=10"]


def test_fetch_runs_on_worker_0_and_syncs_the_files_to_the_bucket(pod):
  pod.launch("setup", "my-tpu", "zone-a")
  result = pod.launch("fetch", "my-tpu", "zone-a", "configs/electronics.py", "--set", "data.raw_dir=gs://bkt/raw",
                      "--set", "data.query_dir=gs://bkt/queries")
  assert result.returncode == 0, result.stderr
  (fetch,) = _job_calls(pod, "fetch")
  stage = pod.root / "worker-0" / "gensar_fetch"
  assert fetch == (f"worker-0 venv={pod.checkout(0) / '.venv'} GENSAR_DISTRIBUTED= gensar fetch --config "
                   f"configs/electronics.py --set data.raw_dir={stage / 'raw_dir'} --set "
                   f"data.query_dir={stage / 'query_dir'}")
  assert (pod.gcs / "bkt" / "raw" / "data.raw_dir.gz").exists()
  assert (pod.gcs / "bkt" / "queries" / "data.query_dir.gz").exists()


def test_reproduce_mounts_the_bucket_and_passes_the_mounted_workdir(pod):
  pod.launch("setup", "my-tpu", "zone-a")
  result = pod.launch("reproduce", "my-tpu", "zone-a", "configs/electronics.py", "--workdir", RUN, "--suite", "main")
  assert result.returncode == 0, result.stderr
  pod.wait_finished()
  for worker in (0, 1):
    mount = pod.root / f"worker-{worker}" / "gensar_mnt" / "bkt"
    assert f"gcsfuse --implicit-dirs --metadata-cache-ttl-secs=0 bkt {mount}" in pod.calls("gcsfuse_calls")
    (line,) = [c for c in _job_calls(pod, "reproduce") if c.startswith(f"worker-{worker} ")]
    assert line.endswith(f"GENSAR_DISTRIBUTED=auto gensar reproduce --config configs/electronics.py "
                         f"--workdir {mount}/electronics --suite main")


@pytest.mark.parametrize("action", ["run", "eval", "reproduce"])
def test_jobs_need_a_workdir(pod, action):
  result = pod.launch(action, "my-tpu", "zone-a", CONFIG, "--set", "a.b=1")
  assert result.returncode == 2 and "needs --workdir" in result.stderr and not pod.gcloud()


# ------------------------------------------------------------------------------------------------- SLURM

FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $*" >>"$FAKE_LOG/srun_calls"
while [[ $1 == -* ]]; do shift; done
touch "$FAKE_LOG/srun_started"
"$@"
"""


@pytest.fixture
def cluster(tmp_path):
  """A fake SLURM (srun, scontrol), the fake python3 for the venv, a venv outside the checkout."""
  pod = Pod(tmp_path, workers=1)
  _script(tmp_path / "bin" / "srun", FAKE_SRUN)
  _script(tmp_path / "bin" / "scontrol", '#!/usr/bin/env bash\necho "scontrol $*" >>"$FAKE_LOG/scontrol_calls"\n')
  shutil.copy(tmp_path / "worker_bin" / "python3", tmp_path / "bin" / "python3")
  pod.env.update(GENSAR_VENV=str(tmp_path / "venv"), HOME=str(tmp_path), FAKE_WORKER="node", SLURM_JOB_ID="42",
                 SLURM_SUBMIT_DIR=str(ROOT))
  return pod


def _sbatch(cluster: Pod, *args: str, **env) -> subprocess.CompletedProcess:
  """What `sbatch launch/slurm_gpu.sbatch ARGS` runs on the job's first node."""
  return subprocess.run(["bash", str(SLURM), *args], env={**cluster.env, **env}, capture_output=True, text=True,
                        timeout=60, cwd=cluster.tmp)


def test_slurm_job_runs_gensar_once_per_node_and_requeues(cluster):
  assert "#SBATCH --requeue" in SLURM.read_text() and "#SBATCH --ntasks-per-node=1" in SLURM.read_text()
  setup = _sbatch(cluster, "setup")
  assert setup.returncode == 0, setup.stderr
  venv = cluster.tmp / "venv"
  assert f"worker-node python3 -m uv venv --python 3.11 {venv}" in cluster.calls("python3_calls")
  assert f"worker-node python3 -m uv pip install --python {venv}/bin/python -e .[gpu]" in cluster.calls("python3_calls")
  args = ("configs/gpu_8x.py", "--workdir", "gs://bkt/gpu", "--set", "train.num_epochs=1")
  first = _sbatch(cluster, *args)
  assert first.returncode == 0, first.stderr
  (srun,) = cluster.calls("srun_calls")
  assert srun == ("srun --kill-on-bad-exit=1 --ntasks-per-node=1 launch/worker.sh run gensar run --config "
                  "configs/gpu_8x.py --workdir gs://bkt/gpu --set train.num_epochs=1")
  (run,) = _job_calls(cluster, "run")
  assert run == (f"worker-node venv={venv} GENSAR_DISTRIBUTED= gensar run --config configs/gpu_8x.py "
                 "--workdir gs://bkt/gpu --set train.num_epochs=1")
  # A requeued job runs the script again with the same arguments: the same command, which resumes.
  requeued = _sbatch(cluster, *args, SLURM_RESTART_COUNT="1")
  assert requeued.returncode == 0 and "job 42 (restart 1): gensar run --config configs/gpu_8x.py" in requeued.stdout
  assert _job_calls(cluster, "run") == [run, run]


def test_slurm_requeues_itself_before_the_time_limit(cluster):
  _sbatch(cluster, "setup")
  output = cluster.tmp / "job.out"
  with open(output, "w") as out:
    job = subprocess.Popen(["bash", str(SLURM), "eval", "configs/gpu_8x.py", "--workdir", "/shared/run"],
                           env={**cluster.env, "FAKE_GENSAR_SLEEP": "30"}, cwd=cluster.tmp, start_new_session=True,
                           stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 30
    while not (cluster.log / "srun_started").exists():
      assert time.monotonic() < deadline
      time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)                 # what --signal=B:USR1@600 sends the batch shell
    job.wait(timeout=30)
  finally:
    os.killpg(job.pid, signal.SIGKILL)              # the fake job step (scontrol requeue would end it)
  assert cluster.calls("scontrol_calls") == ["scontrol requeue 42"] and "requeueing job 42" in output.read_text()
  assert _job_calls(cluster, "eval")[0].endswith("gensar eval --config configs/gpu_8x.py --workdir /shared/run")


@pytest.mark.parametrize("command", ["eval", "reproduce", "train"])
def test_slurm_runs_other_commands(cluster, command):
  _sbatch(cluster, "setup")
  result = _sbatch(cluster, command, "configs/gpu_8x.py", "--workdir", "/shared/run")
  assert result.returncode == 0, result.stderr
  (srun,) = cluster.calls("srun_calls")
  assert srun.endswith(f"launch/worker.sh run gensar {command} --config configs/gpu_8x.py --workdir /shared/run")


def test_slurm_fetch_runs_without_srun(cluster):
  _sbatch(cluster, "setup")
  raw = cluster.tmp / "shared" / "raw"
  result = _sbatch(cluster, "fetch", "configs/electronics.py", "--set", f"data.raw_dir={raw}")
  assert result.returncode == 0, result.stderr
  assert not cluster.calls("srun_calls") and (raw / "data.raw_dir.gz").exists()
  (fetch,) = _job_calls(cluster, "fetch")
  assert fetch.endswith(f"gensar fetch --config configs/electronics.py --set data.raw_dir={raw}")


def test_slurm_job_needs_a_workdir(cluster):
  result = _sbatch(cluster, "configs/gpu_8x.py", "--set", "a.b=1")
  assert result.returncode == 2 and "needs --workdir" in result.stderr and not cluster.calls("srun_calls")


# ---------------------------------------------------------------------------------------------- shellcheck

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
  if shutil.which("shellcheck") is None:
    if os.environ.get("CI"):        # .ci/run installs it: there a missing shellcheck is a failure, not a skip
      pytest.fail("shellcheck is not installed (.ci/run installs it with apt-get install shellcheck)")
    pytest.skip("shellcheck is not installed (apt-get install shellcheck); .ci/run installs it")
  result = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
