#!/usr/bin/env python
"""Runs one command as N cooperating JAX processes on this machine (CPU devices, coordinator on 127.0.0.1).

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
`gensar_jax.parallel.maybe_initialize_distributed`), JAX_PLATFORMS=cpu and
`--devices_per_process` simulated CPU devices. With `--scratch_root DIR`, process i runs in
`DIR/process_<i>/cwd` with HOME and TMPDIR of its own there, like a host of a slice with its own disk: what
it shares with the others goes through the workdir (a shared directory or a `gs://` bucket). Output of
process i goes to `<log_dir>/process_<i>.log` (and, for process 0, to this terminal too). The exit status is
the first non-zero status, if any; when one process fails the others are killed, as a slice's job would be.

  python launch/local_multiprocess.py --num_processes 2 -- gensar train --config tiny
  python launch/local_multiprocess.py -n 2 --scratch_root /tmp/hosts -- gensar run --config tiny --workdir gs://b/r
  python launch/local_multiprocess.py -n 2 --devices_per_process 4 -- python my_script.py
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def scratch_dirs(scratch_root: str | os.PathLike, process_id: int) -> dict[str, Path]:
  """{"cwd", "home", "tmp"}: process `process_id`'s own directories under `scratch_root` (created)."""
  base = Path(scratch_root) / f"process_{process_id}"
  dirs = {name: base / name for name in ("cwd", "home", "tmp")}
  for path in dirs.values():
    path.mkdir(parents=True, exist_ok=True)
  return dirs


def process_env(base: dict, coordinator: str, num_processes: int, process_id: int, devices_per_process: int,
                scratch: dict[str, Path] | None = None) -> dict:
  env = dict(base)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
  env.update(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
  if scratch is not None:
    env.update(HOME=str(scratch["home"]), TMPDIR=str(scratch["tmp"]))
  return env


def start(command: list[str], num_processes: int, devices_per_process: int = 1, log_dir: str | None = None,
          cwd: str | None = None, scratch_root: str | None = None) -> tuple[list[subprocess.Popen], Path]:
  """Starts the processes; returns them and the log directory. `wait` collects them."""
  if not command:
    raise ValueError("no command given (put it after --)")
  log_path = Path(log_dir or tempfile.mkdtemp(prefix="gensar_multiprocess_"))
  log_path.mkdir(parents=True, exist_ok=True)
  coordinator = f"127.0.0.1:{free_port()}"
  procs = []
  for pid in range(num_processes):
    scratch = scratch_dirs(scratch_root, pid) if scratch_root else None
    env = process_env(os.environ, coordinator, num_processes, pid, devices_per_process, scratch)
    with open(log_path / f"process_{pid}.log", "w") as log:
      procs.append(subprocess.Popen(command, env=env, cwd=scratch["cwd"] if scratch else cwd, stdout=log,
                                    stderr=subprocess.STDOUT))
  return procs, log_path


def run(command: list[str], num_processes: int, devices_per_process: int = 1, log_dir: str | None = None,
        timeout: float | None = None, cwd: str | None = None, echo_first: bool = True,
        scratch_root: str | None = None) -> int:
  """Starts the processes, waits for all; kills the rest when one fails or the timeout passes."""
  procs, log_path = start(command, num_processes, devices_per_process, log_dir, cwd, scratch_root)
  return wait(procs, log_path, timeout, echo_first)


def wait(procs: list[subprocess.Popen], log_path: Path, timeout: float | None = None, echo_first: bool = True) -> int:
  """Waits for every process; kills the rest when one fails or the timeout passes. Returns the exit status."""
  num_processes = len(procs)
  deadline = None if timeout is None else time.monotonic() + timeout
  status = 0
  try:
    while [p.poll() for p in procs].count(None):      # poll every process (any() would stop at the first)
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed or (deadline is not None and time.monotonic() > deadline):
        status = failed[0] if failed else 124
        break
      time.sleep(0.2)
    else:
      status = next((p.returncode for p in procs if p.returncode), 0)
  finally:
    for p in procs:  # only the processes this launcher started
      if p.poll() is None:
        p.kill()
        p.wait()
  if echo_first or status:
    for pid in range(num_processes) if status else [0]:
      text = (log_path / f"process_{pid}.log").read_text(errors="replace")
      sys.stderr.write(f"----- process {pid} ({log_path / f'process_{pid}.log'}) -----\n{text[-6000:]}\n")
  return status


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  command = []
  if "--" in argv:
    split = argv.index("--")
    argv, command = argv[:split], argv[split + 1:]
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("-n", "--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--log_dir", default=None)
  parser.add_argument("--timeout", type=float, default=None, help="seconds before all processes are killed")
  parser.add_argument("--scratch_root", default=None,
                      help="give process i its own cwd, HOME and TMPDIR under DIR/process_<i>/ (a host's own disk)")
  args = parser.parse_args(argv)
  return run(command, args.num_processes, args.devices_per_process, args.log_dir, args.timeout,
             scratch_root=args.scratch_root)


if __name__ == "__main__":
  sys.exit(main())
