#!/usr/bin/env bash
# What launch/tpu_pod.sh (over ssh, on every TPU VM of a slice) and launch/slurm_gpu.sbatch (on a node) run in
# this checkout's directory: the virtual environment, one background gensar job per host with its log, and
# the job's state.
#
#   launch/worker.sh setup EXTRA                   # .venv with Python >= 3.11 (uv) and `pip install -e .[EXTRA]`
#   launch/worker.sh start NAME [--mount] CMD...   # CMD in .venv, detached: logs/NAME.log, its exit status in
#                                                  # logs/NAME.rc; --mount first mounts the bucket of a
#                                                  # `--workdir gs://B/...` argument (gcsfuse) and passes the path
#   launch/worker.sh run CMD...                    # CMD in .venv, in the foreground
#   launch/worker.sh fetch CMD...                  # `gensar fetch ...` with gs:// data dirs staged on this disk
#   launch/worker.sh state                         # one word, and the exit status below
#   launch/worker.sh status [LINES]                # state, the latest progress line, the log's last LINES lines
#   launch/worker.sh logs [LINES] [--no-follow]    # the latest job's log (followed by default)
#   launch/worker.sh stop                          # stop the job (its process group): TERM, then KILL
#
# State of the latest job (exit status): finished (0), running (10), failed (11: non-zero exit status),
# stopped (12: no exit status, e.g. stopped or the machine restarted), none (12: no job started here).
#
# Why uv: Cloud TPU VM images ship Ubuntu 22.04 with its Python 3.10 (cloud.google.com/tpu/docs/runtimes lists
# tpu-ubuntu2204-base for v4, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e for v6e; tpu-ubuntu2204-base has
# Python 3.10, github.com/pytorch/xla/pull/5294), and this project needs >= 3.11. `uv venv --python 3.11` uses
# a Python 3.11 already on the machine or downloads a managed build.
set -euo pipefail

cd "$(dirname "$0")/.."
venv=${GENSAR_VENV:-.venv}
python_version=${GENSAR_PYTHON:-3.11}
log_dir=${GENSAR_LOG_DIR:-logs}
pid_file=$log_dir/job.pid
stop_wait_s=${GENSAR_STOP_WAIT_S:-60}
PROGRESS='(train|doc2query) step [0-9,]+/[0-9,]+: loss'

die() { echo "worker.sh: $*" >&2; exit 2; }

activate() {
  [[ -f $venv/bin/activate ]] || die "no virtual environment at $PWD/$venv: run the setup action first"
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
}

uv() {
  if ! python3 -m uv --version >/dev/null 2>&1; then
    python3 -m pip install --user --quiet uv
  fi
  python3 -m uv "$@"
}

setup() {
  local extra=${1:?EXTRA, e.g. tpu or gpu}
  if [[ -x $venv/bin/python ]] && ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "worker.sh: $venv has Python < 3.11; creating it again" >&2
    rm -rf "$venv"
  fi
  [[ -x $venv/bin/python ]] || uv venv --python "$python_version" "$venv"
  uv pip install --python "$venv/bin/python" -e ".[$extra]"
  "$venv/bin/python" -c 'import sys, gensar_jax; print("gensar_jax", gensar_jax.__file__, "on Python", sys.version.split()[0])'
}

alive() { kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1") != Z* ]]; }   # a zombie has ended

job_pid() {   # the pid of the running job, if any (one that wrote its exit status is done)
  local pid
  [[ -f $pid_file && ! -f $log_dir/latest.rc ]] || return 1
  pid=$(<"$pid_file")
  alive "$pid" && echo "$pid"
}

# gcsfuse from Google's apt repository (cloud.google.com/storage/docs/cloud-storage-fuse/install).
install_gcsfuse() {
  local release
  release=$(lsb_release -c -s)
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$release main" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
}

mount_bucket() {   # gs://BUCKET/PATH -> the same object under a gcsfuse mount of BUCKET (printed)
  local uri=$1 bucket path mount
  bucket=${uri#gs://}; bucket=${bucket%%/*}
  path=${uri#gs://"$bucket"}
  mount=${GENSAR_MOUNT_ROOT:-$HOME/gensar_mnt}/$bucket
  command -v gcsfuse >/dev/null || install_gcsfuse >&2
  mkdir -p "$mount"
  # Metadata cache off: other hosts' writes are seen at once.
  mountpoint -q "$mount" || gcsfuse --implicit-dirs --metadata-cache-ttl-secs=0 "$bucket" "$mount" >&2
  echo "$mount$path"
}

start() {
  local name=${1:?NAME} mount=0 pid log rc
  shift
  if [[ ${1:-} == --mount ]]; then mount=1; shift; fi
  (($#)) || die "start $name: no command"
  if pid=$(job_pid); then
    die "a job is running here (pid $pid, $(readlink "$log_dir/latest.log")): wait for it or stop it first"
  fi
  local args=("$@") i
  if ((mount)); then
    for ((i = 0; i < ${#args[@]} - 1; i++)); do
      if [[ ${args[i]} == --workdir && ${args[i + 1]} == gs://* ]]; then args[i + 1]=$(mount_bucket "${args[i + 1]}"); fi
    done
  fi
  activate
  mkdir -p "$log_dir"
  log=$log_dir/$name.log rc=$log_dir/$name.rc
  rm -f "$rc"
  ln -sfn "$name.log" "$log_dir/latest.log"
  ln -sfn "$name.rc" "$log_dir/latest.rc"
  echo "$(date -u +%FT%TZ) $(hostname): ${args[*]}" >>"$log"
  # A session of its own (setsid): `stop` ends the job's whole process group; nohup: it outlives the ssh session.
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid nohup bash -c 'rc=$1; shift; "$@"; echo $? >"$rc"' job "$rc" "${args[@]}" >>"$log" 2>&1 </dev/null &
  echo $! >"$pid_file"
  echo "$(hostname): started pid $! -> $PWD/$log"
}

# `gensar fetch` writes to local directories: a gs:// data.raw_dir / data.query_dir is fetched into a local
# copy (synced down first, so verified files are not downloaded again) and synced up to the bucket after.
fetch() {
  local args=("$@") synced=() i setting uri local_dir
  local stage=${GENSAR_FETCH_DIR:-$HOME/gensar_fetch}
  for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ ${args[i]} =~ ^(--set=)?(data\.(raw_dir|query_dir))=(gs://.+)$ ]]; then
      setting=${BASH_REMATCH[2]} uri=${BASH_REMATCH[4]}
      local_dir=$stage/${setting#data.}
      mkdir -p "$local_dir"
      gcloud storage rsync --recursive "$uri" "$local_dir" 2>/dev/null || true    # nothing there yet
      args[i]=${BASH_REMATCH[1]}$setting=$local_dir
      synced+=("$local_dir" "$uri")
    fi
  done
  activate
  "${args[@]}"
  for ((i = 0; i < ${#synced[@]}; i += 2)); do
    gcloud storage rsync --recursive "${synced[i]}" "${synced[i + 1]}"
  done
}

state() {   # prints one word; returns the state's exit status (header)
  local rc_file=$log_dir/latest.rc
  if [[ ! -e $log_dir/latest.log ]]; then echo none; return 12; fi
  if job_pid >/dev/null; then echo running; return 10; fi
  if [[ -f $rc_file && $(<"$rc_file") == 0 ]]; then echo finished; return 0; fi
  if [[ -f $rc_file ]]; then echo "failed (exit status $(<"$rc_file"))"; return 11; fi
  echo stopped
  return 12
}

readable_log() {   # the latest log with progress-bar carriage returns as line breaks
  tail -c 1000000 "$log_dir/latest.log" | tr '\r' '\n' | grep -av '^[[:space:]]*$' || true
}

status() {
  local lines=${1:-5} word code=0 progress
  word=$(state) || code=$?
  if [[ ! -e $log_dir/latest.log ]]; then
    echo "== $(hostname): $word"
    return "$code"
  fi
  echo "== $(hostname): $word, log $PWD/$log_dir/$(readlink "$log_dir/latest.log")"
  progress=$(readable_log | grep -aE "$PROGRESS" | tail -n 1)
  echo "   latest progress: ${progress:--}"
  readable_log | tail -n "$lines" | sed 's/^/   | /'
  return "$code"
}

logs() {
  local lines=100 follow=1
  for arg in "$@"; do
    case $arg in
      --no-follow) follow=0 ;;
      *) lines=$arg ;;
    esac
  done
  [[ -e $log_dir/latest.log ]] || die "no log here yet ($PWD/$log_dir)"
  if ((follow)); then tail -n "$lines" -F "$log_dir/latest.log"; else readable_log | tail -n "$lines"; fi
}

stop() {
  local pid pgid waited=0
  if ! pid=$(job_pid); then echo "$(hostname): no job running"; return 0; fi
  pgid=$(ps -o pgid= -p "$pid" | tr -d ' ')
  # The job's own process group (setsid made it the leader), never the caller's.
  if [[ $pgid == "$pid" ]]; then kill -TERM -- "-$pgid" 2>/dev/null || true; else kill -TERM "$pid" || true; fi
  while alive "$pid" && ((waited < stop_wait_s)); do sleep 1; waited=$((waited + 1)); done
  if alive "$pid"; then
    if [[ $pgid == "$pid" ]]; then kill -KILL -- "-$pgid" 2>/dev/null || true; else kill -KILL "$pid" || true; fi
  fi
  echo "$(hostname): stopped pid $pid"
}

action=${1:?"usage: $0 setup|start|run|fetch|state|status|logs|stop ..."}
shift
case $action in
  setup) setup "$@" ;;
  start) start "$@" ;;
  run) activate; "$@" ;;
  fetch) fetch "$@" ;;
  state) state ;;
  status) status "$@" ;;
  logs) logs "$@" ;;
  stop) stop ;;
  *) die "unknown action $action" ;;
esac
