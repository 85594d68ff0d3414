#!/usr/bin/env bash
# Train GenSAR on a multi-host Cloud TPU VM slice (e.g. v4-32, v5litepod-64): one process per host.
#
#   launch/tpu_pod.sh setup TPU_NAME ZONE                 # copy this repo to every worker, install it
#   launch/tpu_pod.sh plan  TPU_NAME ZONE CONFIG [--set k=v ...]   # `gensar plan` here only (no TPU used)
#   launch/tpu_pod.sh run   TPU_NAME ZONE CONFIG --workdir gs://BUCKET/RUN [--set k=v ...]
#                                                         # plan, then the whole pipeline (`gensar run`) on all workers
#   launch/tpu_pod.sh train TPU_NAME ZONE CONFIG --workdir gs://BUCKET/RUN [--set k=v ...]   # `gensar train` only
#   launch/tpu_pod.sh stop  TPU_NAME ZONE                 # kill a running gensar command on all workers
#
# `train` first runs `gensar plan` on this machine (deviceless compile for the config's slice, needs
# `pip install -e ".[tpu]"`; a few minutes on a laptop) and stops before touching the pod when a program
# does not fit in HBM or the config does not compile for the slice. SKIP_PLAN=1 skips that check.
#
# Each worker runs the same command; gensar_jax.parallel.maybe_initialize_distributed() sees
# GENSAR_DISTRIBUTED=auto and calls jax.distributed.initialize(), which finds the coordinator and the
# process ids from the TPU metadata. Data must be readable on every host (same path on each VM, or
# gs://), and the work directory must be shared (--workdir gs://bucket/...): every stage commits its output
# there, process 0 runs the host-side stages while the others wait, and Orbax checkpoints land in one place.
# After a preemption, the same `run` command resumes: finished stages are skipped, training restarts from its
# last checkpoint in the bucket.
# Presets (global batch 8192; README "Before you rent a pod" has their measured plans): configs/tpu_v4_32.py,
# tpu_v5e_64.py, tpu_v5e_256.py and the cheapest for the paper's budget. t5-small (60M params) needs no
# model or fsdp sharding: activations, not parameters, fill the HBM.
set -euo pipefail

action=${1:?"usage: $0 setup|plan|run|train|stop TPU_NAME ZONE [CONFIG --workdir gs://... overrides...]"}
tpu=${2:?TPU_NAME}
zone=${3:?ZONE}
shift 3
project_flag=()
if [[ -n "${PROJECT:-}" ]]; then project_flag=(--project "$PROJECT"); fi
remote_dir=${REMOTE_DIR:-gensar_jax}
repo_root=$(cd "$(dirname "$0")/.." && pwd)

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${project_flag[@]}" --worker=all --command "$1"
}

case "$action" in
  setup)
    archive=$(mktemp -t gensar_jax.XXXXXX.tar.gz)
    git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$tpu:gensar_jax.tar.gz" --zone "$zone" "${project_flag[@]}" --worker=all
    rm -f "$archive"
    ssh_all "mkdir -p $remote_dir && tar -xzf gensar_jax.tar.gz -C $remote_dir && cd $remote_dir && \
      pip install -e '.[tpu]'"
    ;;
  plan)
    config=${1:?CONFIG}
    shift
    (cd "$repo_root" && gensar plan --config "$config" --workdir "${PLAN_WORKDIR:-runs/plan}" "$@")
    ;;
  run|train)
    config=${1:?CONFIG}
    shift
    if [[ "${SKIP_PLAN:-0}" != 1 ]]; then
      status=0
      (cd "$repo_root" && gensar plan --config "$config" --workdir "${PLAN_WORKDIR:-runs/plan}" "$@") || status=$?
      if [[ $status -eq 3 ]]; then
        echo "gensar plan: a program does not fit on this slice (table and advice above); not launching." >&2
        exit 3
      elif [[ $status -ne 0 ]]; then
        echo "gensar plan failed (exit $status, see above); not launching. Install the compiler with" \
             "pip install -e '.[tpu]', or set SKIP_PLAN=1 to launch unchecked." >&2
        exit "$status"
      fi
    fi
    overrides=$(printf ' %q' "$@")
    log="${action}_$(date +%Y%m%d_%H%M%S).log"
    # nohup: the run survives a dropped ssh session; each worker logs locally, process 0 shows progress.
    ssh_all "cd $remote_dir && GENSAR_DISTRIBUTED=auto nohup gensar $action --config $config$overrides > $log 2>&1 &
      sleep 5; tail -n 5 $log"
    echo "started; follow with: gcloud compute tpus tpu-vm ssh $tpu --zone $zone --worker=0 --command 'tail -f $remote_dir/$log'"
    ;;
  stop)
    ssh_all "pkill -f 'gensar (run|train)' || true"
    ;;
  *)
    echo "unknown action $action (expected setup, plan, run, train or stop)" >&2
    exit 2
    ;;
esac
