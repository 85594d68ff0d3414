"""launch/tpu_pod.sh runs `gensar plan` before touching the pod and stops when it reports a misfit."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "launch" / "tpu_pod.sh"


def _fake(bin_dir: Path, name: str, body: str) -> None:
  path = bin_dir / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _launch(tmp_path: Path, plan_status: int, *extra_env) -> tuple[subprocess.CompletedProcess, Path]:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  calls = tmp_path / "gcloud_calls"
  _fake(bin_dir, "gensar", f'echo "gensar $*" >> {tmp_path / "gensar_calls"}; exit {plan_status}\n')
  _fake(bin_dir, "gcloud", f'echo "gcloud $*" >> {calls}\n')
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PLAN_WORKDIR=str(tmp_path / "plan"))
  env.update(dict(extra_env))
  result = subprocess.run(["bash", str(SCRIPT), "train", "my-tpu", "zone-a", "configs/tpu_v5e_64.py",
                           "--workdir", "gs://bkt/run", "--set", "train.num_epochs=1"], env=env, capture_output=True,
                          text=True, timeout=30)
  return result, calls


@pytest.mark.parametrize("status", [3, 2])
def test_train_stops_before_the_pod_when_the_plan_fails(tmp_path, status):
  result, calls = _launch(tmp_path, status)
  assert result.returncode == status and not calls.exists()
  assert ("does not fit" if status == 3 else "not launching") in result.stderr
  # The plan runs here with its own workdir: the run's gs:// workdir never reaches it.
  assert (tmp_path / "gensar_calls").read_text() == (f"gensar plan --config configs/tpu_v5e_64.py --workdir "
                                                     f"{tmp_path / 'plan'} --set train.num_epochs=1\n")


def test_train_launches_after_a_fitting_plan(tmp_path):
  result, calls = _launch(tmp_path, 0)
  assert result.returncode == 0, result.stderr
  assert ("GENSAR_DISTRIBUTED=auto gensar train --config configs/tpu_v5e_64.py --workdir gs://bkt/run --set "
          "train.num_epochs=1") in calls.read_text()


def test_skip_plan_launches_without_planning(tmp_path):
  result, calls = _launch(tmp_path, 3, ("SKIP_PLAN", "1"))
  assert result.returncode == 0 and calls.exists() and not (tmp_path / "gensar_calls").exists()
