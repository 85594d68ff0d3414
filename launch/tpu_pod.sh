#!/usr/bin/env bash
# Train GenSAR on a multi-host Cloud TPU VM slice (e.g. v4-32, v5litepod-64): one process per host.
#
#   launch/tpu_pod.sh setup TPU_NAME ZONE                 # copy this repo to every worker, install it
#   launch/tpu_pod.sh train TPU_NAME ZONE CONFIG [--set k=v ...]   # run `gensar train` on all workers
#   launch/tpu_pod.sh stop  TPU_NAME ZONE                 # kill a running training on all workers
#
# Each worker runs the same command; gensar_jax.parallel.maybe_initialize_distributed() sees
# GENSAR_DISTRIBUTED=auto and calls jax.distributed.initialize(), which finds the coordinator and the
# process ids from the TPU metadata. Data must be readable on every host (same path on each VM, or
# gs://), and the work directory must be shared (gs://bucket/...) so Orbax checkpoints land in one place.
# Suggested meshes (global batch 8192): v4-32 (16 chips, 4 hosts): parallel.mesh_shape={"data": 16,
# "fsdp": 1, "model": 1}, 512 rows per chip; v5litepod-64 (64 chips, 16 hosts): {"data": 64, ...},
# 128 rows per chip. t5-small (60M params) needs no model or fsdp sharding.
set -euo pipefail

action=${1:?"usage: $0 setup|train|stop TPU_NAME ZONE [CONFIG overrides...]"}
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
      pip install -U 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html && pip install -e ."
    ;;
  train)
    config=${1:?CONFIG}
    shift
    overrides=$(printf ' %q' "$@")
    log="train_$(date +%Y%m%d_%H%M%S).log"
    # nohup: the run survives a dropped ssh session; each worker logs locally, process 0 shows progress.
    ssh_all "cd $remote_dir && GENSAR_DISTRIBUTED=auto nohup gensar train --config $config$overrides > $log 2>&1 &
      sleep 5; tail -n 5 $log"
    echo "started; follow with: gcloud compute tpus tpu-vm ssh $tpu --zone $zone --worker=0 --command 'tail -f $remote_dir/$log'"
    ;;
  stop)
    ssh_all "pkill -f 'gensar train' || true"
    ;;
  *)
    echo "unknown action $action (expected setup, train or stop)" >&2
    exit 2
    ;;
esac
