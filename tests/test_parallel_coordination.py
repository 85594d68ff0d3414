"""Process 0's work and its outcome reach the other processes of a job (jax.distributed on 127.0.0.1).

The test starts `launch/local_multiprocess.py`, which runs this file in worker mode as two processes.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker() -> None:
  from gensar_jax import parallel
  assert parallel.maybe_initialize_distributed(), "expected the launcher's JAX_COORDINATOR_ADDRESS"
  me = parallel.jax.process_index()
  calls = []
  first = parallel.value_from_primary("fingerprint", lambda: calls.append(1) or "first")
  second = parallel.value_from_primary("fingerprint", lambda: calls.append(2) or "second")   # the same name again
  assert (first, second) == ("first", "second") and calls == ([1, 2] if me == 0 else [])
  assert parallel.on_primary("build", lambda: "built") == ("built" if me == 0 else None)

  def fails():
    raise ValueError("no reviews in reviews.json.gz")
  try:
    parallel.on_primary("prepare", fails)
  except parallel.PrimaryFailed as e:            # the other processes learn process 0's error
    assert me != 0 and "process 0 failed in prepare (ValueError: no reviews in reviews.json.gz)" in str(e), e
  except ValueError:
    assert me == 0
  else:
    raise AssertionError("on_primary did not raise")
  print(f"process {me}: coordination ok", flush=True)


def test_process_zeros_results_and_errors_reach_every_process(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_FLAGS"))}
  env["PYTHONPATH"] = str(ROOT)
  command = [sys.executable, str(ROOT / "launch" / "local_multiprocess.py"), "--num_processes", "2",
             "--log_dir", str(tmp_path), "--timeout", "240", "--", sys.executable, __file__, "worker"]
  result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  logs = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
  assert result.returncode == 0, result.stderr[-4000:]
  for i, log in enumerate(logs):
    assert f"process {i}: coordination ok" in log, log[-2000:]


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
  worker()
