#!/usr/bin/env bash
# GenSAR on a Cloud TPU VM slice (v5e-8, v5litepod-64, v4-32, ...): one gensar process per host, every host
# reading and writing one shared store (a gs:// workdir). Run from a checkout on your machine, with gcloud
# logged in; docs/pods.md "Run on a pod" walks through it from an empty project to the Electronics tables.
#
#   launch/tpu_pod.sh setup  TPU ZONE      # this checkout (with uncommitted edits to tracked files) to every worker
#                                          # in ~/gensar_jax, a .venv there (Python >= 3.11 through uv: the TPU VM
#                                          # images have 3.10, see launch/worker.sh) with the tpu extra; every
#                                          # later action runs inside that .venv
#   launch/tpu_pod.sh plan   TPU ZONE CONFIG [--set k=v ...]       # `gensar plan` on this machine (no TPU used),
#                                          # workdir runs/plan/<config> here (PLAN_WORKDIR), never the run's
#   launch/tpu_pod.sh fetch  TPU ZONE CONFIG --set data.raw_dir=gs://B/raw --set data.query_dir=gs://B/queries
#                                          # `gensar fetch` on worker 0, the files synced to those gs:// dirs
#   launch/tpu_pod.sh run    TPU ZONE CONFIG --workdir gs://B/RUN [--set k=v ...]
#                                          # plan here (exit 3 when a program does not fit; SKIP_PLAN=1 skips it),
#                                          # then `gensar run` on every worker, detached, one log per worker
#   launch/tpu_pod.sh train  TPU ZONE CONFIG --workdir gs://B/RUN [--set ...]   # `gensar train` alone, the same way
#   launch/tpu_pod.sh eval   TPU ZONE CONFIG --workdir gs://B/RUN [--set eval.split=test ...]
#   launch/tpu_pod.sh reproduce TPU ZONE CONFIG --workdir gs://B/RUN [--suite main] [--set ...]
#                                          # the bucket mounted with gcsfuse on every worker (reproduce links stages)
#   launch/tpu_pod.sh status TPU ZONE      # per worker: state, latest progress line, last log lines (STATUS_LINES);
#                                          # exit status worker 0's state: 0 finished, 10 running, 11 failed,
#                                          # 12 stopped or nothing started (a fresh VM), other: ssh failed
#   launch/tpu_pod.sh logs   TPU ZONE [WORKER]   # follow a worker's log (default 0; FOLLOW=0 prints and returns)
#   launch/tpu_pod.sh stop   TPU ZONE      # stop the gensar job on every worker
#
# Every worker runs the same command with GENSAR_DISTRIBUTED=auto: jax.distributed.initialize() finds the
# coordinator and process ids in the TPU metadata; process 0 runs the host-side stages while the others wait.
# Everything shared goes through the --workdir (and gs:// data dirs), passed unchanged to every worker. After a
# preemption, `setup` and the same `run` again resume: finished stages are skipped by their records in the
# bucket, training restarts from its last checkpoint there; nothing is deleted.
#
# Spot slices through a queued resource, re-created after each preemption (a v5e-8; for a v5e-64 use
# --accelerator-type v5litepod-64):
#
#   QR=gensar-qr TPU=gensar-v5e ZONE=us-west4-a RUN=gs://my-bucket/electronics CONFIG=configs/tpu_v5e_8.py
#   create() { gcloud compute tpus queued-resources create "$QR" --node-id "$TPU" --zone "$ZONE" \
#                --accelerator-type v5litepod-8 --runtime-version v2-alpha-tpuv5-lite --spot; }
#   launch/tpu_pod.sh plan "$TPU" "$ZONE" "$CONFIG" && create
#   while sleep 120; do
#     case $(gcloud compute tpus queued-resources describe "$QR" --zone "$ZONE" --format='value(state.state)') in
#       ACTIVE)
#         launch/tpu_pod.sh status "$TPU" "$ZONE" >/dev/null; state=$?
#         if [ $state = 0 ] || [ $state = 11 ]; then break; fi                       # finished, or failed: look
#         if [ $state = 12 ]; then launch/tpu_pod.sh setup "$TPU" "$ZONE" &&
#           SKIP_PLAN=1 launch/tpu_pod.sh run "$TPU" "$ZONE" "$CONFIG" --workdir "$RUN" --set ...; fi ;;
#       SUSPENDED|FAILED)                                                            # preempted: queue again
#         gcloud compute tpus queued-resources delete "$QR" --zone "$ZONE" --force --quiet && create ;;
#     esac
#   done
#
# Environment: PROJECT (gcloud --project), REMOTE_DIR (the checkout on the workers, default gensar_jax under
# the home directory), SETUP_EXTRA (default tpu), PLAN_WORKDIR, SKIP_PLAN=1, STATUS_LINES, LOG_LINES, FOLLOW.
set -euo pipefail

usage="usage: $0 setup|plan|fetch|run|train|eval|reproduce|status|logs|stop TPU ZONE [CONFIG --workdir gs://... --set k=v ...]"
action=${1:?$usage}
tpu=${2:?$usage}
zone=${3:?$usage}
shift 3
repo_root=$(cd "$(dirname "$0")/.." && pwd)
remote_dir=$(printf %q "${REMOTE_DIR:-gensar_jax}")
project_flag=()
if [[ -n ${PROJECT:-} ]]; then project_flag=(--project "$PROJECT"); fi

ssh_worker() {   # WORKER COMMAND: COMMAND on one worker (an index) or on all of them ("all")
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" ${project_flag[@]+"${project_flag[@]}"} --worker="$1" \
    --command "$2"
}

# COMMAND [FALLBACK]: a remote command running COMMAND in the workers' checkout, FALLBACK where there is none
# (a fresh VM; default: an error, exit status 12).
in_checkout() {
  # shellcheck disable=SC2016  # $(hostname) expands on the worker
  local fallback='echo "$(hostname): no checkout here: run setup" >&2; exit 12'
  if (($# > 1)); then fallback=$2; fi
  echo "if cd $remote_dir 2>/dev/null; then $1; else $fallback; fi"
}

quote() { printf ' %q' "$@"; }

# CONFIG [--workdir W] [--set k=v ...] [other gensar options]: sets config, workdir, sets (the --set pairs, for
# the plan too) and extra (the rest, e.g. reproduce's --suite).
config="" workdir="" sets=() extra=()
parse_job_args() {
  config=${1:?CONFIG (configs/<name>.py)}
  shift
  while (($#)); do
    case $1 in
      --workdir) workdir=${2:?--workdir needs a value}; shift 2 ;;
      --workdir=*) workdir=${1#--workdir=}; shift ;;
      --set) sets+=(--set "${2:?--set needs KEY=VALUE}"); shift 2 ;;
      --set=*) sets+=("$1"); shift ;;
      *) extra+=("$1"); shift ;;
    esac
  done
}

require_workdir() {
  if [[ -z $workdir ]]; then
    echo "$action needs --workdir: the run's shared store, e.g. --workdir gs://my-bucket/electronics" >&2
    exit 2
  fi
}

# `gensar plan` on this machine, in its own local workdir; returns its exit status (3: a program does not fit).
plan() {
  local name plan_workdir
  name=$(basename "$config" .py)
  plan_workdir=${PLAN_WORKDIR:-runs/plan/$name}
  (cd "$repo_root" && gensar plan --config "$config" --workdir "$plan_workdir" ${sets[@]+"${sets[@]}"})
}

check_plan() {
  [[ ${SKIP_PLAN:-0} == 1 ]] && return 0
  local status=0
  plan || status=$?
  if ((status == 3)); then
    echo "gensar plan: a program does not fit on this slice (table and advice above); not launching." >&2
    exit 3
  elif ((status != 0)); then
    echo "gensar plan failed (exit $status, see above); not launching. Install the compiler with" \
         "pip install -e '.[tpu]', or set SKIP_PLAN=1 to launch unchecked." >&2
    exit "$status"
  fi
}

# gensar ACTION on every worker, detached, with the same arguments everywhere.
start_job() {
  local name mount=""
  name=$action-$(date -u +%Y%m%d-%H%M%S)
  if [[ $action == reproduce ]]; then mount=" --mount"; fi
  ssh_worker all "$(in_checkout "launch/worker.sh start $name$mount$(quote env GENSAR_DISTRIBUTED=auto \
    gensar "$action" --config "$config" --workdir "$workdir" ${sets[@]+"${sets[@]}"} ${extra[@]+"${extra[@]}"})")"
  echo "started $name on every worker of $tpu; follow it with:"
  echo "  $0 status $tpu $zone        # each worker's state and latest progress line"
  echo "  $0 logs $tpu $zone [WORKER] # follow a worker's log"
}

case $action in
  setup)
    archive=$(mktemp -t gensar_jax.XXXXXX)
    # The checkout as it is: `git stash create` snapshots uncommitted edits of tracked files (HEAD when clean).
    ref=$(git -C "$repo_root" stash create)
    git -C "$repo_root" archive --format=tar.gz -o "$archive" "${ref:-HEAD}"
    gcloud compute tpus tpu-vm scp "$archive" "$tpu:gensar_jax.tar.gz" --zone "$zone" \
      ${project_flag[@]+"${project_flag[@]}"} --worker=all
    rm -f "$archive"
    ssh_worker all "mkdir -p $remote_dir && tar -xzf gensar_jax.tar.gz -C $remote_dir && rm gensar_jax.tar.gz && \
cd $remote_dir && launch/worker.sh setup $(printf %q "${SETUP_EXTRA:-tpu}")"
    ;;
  plan)
    parse_job_args "$@"
    plan
    ;;
  fetch)
    parse_job_args "$@"
    ssh_worker 0 "$(in_checkout "launch/worker.sh fetch$(quote gensar fetch --config "$config" \
      ${sets[@]+"${sets[@]}"} ${extra[@]+"${extra[@]}"})")"
    ;;
  run | train | eval | reproduce)
    parse_job_args "$@"
    require_workdir
    if [[ $action == run || $action == train ]]; then check_plan; fi
    start_job
    ;;
  status)
    # shellcheck disable=SC2016  # $(hostname) expands on the worker
    ssh_worker all "$(in_checkout "launch/worker.sh status $(printf %q "${STATUS_LINES:-5}")" \
      'echo "== $(hostname): none (no checkout here: run setup)"')" || true
    status=0
    word=$(ssh_worker 0 "$(in_checkout "launch/worker.sh state" 'echo none; exit 12')") || status=$?
    echo "worker 0: ${word:-unreachable}"
    exit "$status"
    ;;
  logs)
    follow=""
    if [[ ${FOLLOW:-1} == 0 ]]; then follow=" --no-follow"; fi
    ssh_worker "${1:-0}" "$(in_checkout "launch/worker.sh logs $(printf %q "${LOG_LINES:-100}")$follow")"
    ;;
  stop)
    ssh_worker all "$(in_checkout "launch/worker.sh stop")"
    ;;
  *)
    echo "unknown action $action; $usage" >&2
    exit 2
    ;;
esac
