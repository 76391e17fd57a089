#!/usr/bin/env bash
# Týr on one multi-GPU node (default: Llama-3.1-8B, --preset paper, on an a3-highgpu-8g with 8×H100 80 GB).
# One process drives all 8 GPUs, so no distributed flags are needed. The memory plan
# (experiments/RESULTS.md, "Every phase inside the budget") puts every phase of the 70B on
# tensor=8 at or under 39.9 GB per device, so MODEL=meta-llama/Llama-3.1-70B fits such a node too.
#
#   tpu_scripts/gpu_node.sh create     the VM and a persistent data disk that outlives it (the run storage)
#   tpu_scripts/gpu_node.sh install    mount the disk and install tyrjax + jax[cuda12]
#   tpu_scripts/gpu_node.sh download   fetch the checkpoint onto the disk once (needs $HF_DIR/token, see README)
#   tpu_scripts/gpu_node.sh launch     start `tyrjax prune` (resumes when RUN_DIR/work exists)
#   tpu_scripts/gpu_node.sh status     VM state, the run's progress, the last log lines
#   tpu_scripts/gpu_node.sh watch      until the run is done: restart the VM and relaunch after a preemption
#   tpu_scripts/gpu_node.sh fetch      copy RUN_DIR (without work/) to ./runs/RUN_NAME
#   tpu_scripts/gpu_node.sh delete     delete the VM (the data disk stays; DELETE_STORAGE=1 removes it)
set -euo pipefail

: "${ZONE:=us-central1-a}"
: "${GPU_NAME:=tyrjax-8xh100}"
: "${MACHINE:=a3-highgpu-8g}"
: "${IMAGE_FAMILY:=common-cu128-ubuntu-2204-nvidia-570}"  # a Deep Learning VM image with the NVIDIA driver
: "${IMAGE_PROJECT:=deeplearning-platform-release}"
: "${SPOT:=1}"
: "${MESH:=tensor=8}"
: "${MODEL:=meta-llama/Llama-3.1-8B}"
: "${RUN_NAME:=llama-3.1-8b-tyr}"
: "${DATA_DISK_GB:=1000}"            # 4 supernets of the 8B (--keep-supernets): about 92 GB in bf16, 176 GB in fp32
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DISK="$GPU_NAME-data"
DEVICE=/dev/disk/by-id/google-tyrjax-data

gc() { gcloud compute "$@" --zone="$ZONE" --project="$PROJECT"; }
on_node() { gc ssh "$GPU_NAME" --command="$1"; }

node_state() {
    # RUNNING, TERMINATED (stopped, e.g. preempted), STOPPING, ... or MISSING.
    gc instances describe "$GPU_NAME" --format='value(status)' 2>/dev/null || echo MISSING
}

cmd_create() {
    local spot=()
    [[ "$SPOT" == 1 ]] && spot=(--provisioning-model=SPOT --instance-termination-action=STOP)
    local disk=(--create-disk="name=$DISK,size=${DATA_DISK_GB}GB,type=pd-ssd,auto-delete=no,device-name=tyrjax-data")
    if gc disks describe "$DISK" >/dev/null 2>&1; then  # reattach the disk of earlier runs
        disk=(--disk="name=$DISK,mode=rw,auto-delete=no,device-name=tyrjax-data")
    fi
    gc instances create "$GPU_NAME" --machine-type="$MACHINE" --image-family="$IMAGE_FAMILY" \
        --image-project="$IMAGE_PROJECT" --boot-disk-size=200GB --maintenance-policy=TERMINATE "${disk[@]}" "${spot[@]}"
    until on_node true 2>/dev/null; do
        log "waiting for ssh on $GPU_NAME"
        sleep 30
    done
}

cmd_install() {
    local wheel
    wheel="$(build_wheel)"
    gc scp "$wheel" "$SCRIPTS_DIR/worker_setup.sh" "$GPU_NAME:/tmp/"
    on_node "bash /tmp/worker_setup.sh gpu $DEVICE $MOUNT /tmp/$(basename "$wheel")"
}

cmd_download() {
    on_node "$(download_command)"
}

cmd_launch() {
    on_node "$(launch_command "$MESH")"
    log "launched; log in $RUN_DIR/logs on the data disk"
}

run_done() { on_node "test -f $RUN_DIR/metrics.json" >/dev/null 2>&1; }
run_alive() { on_node "$(alive_command)" >/dev/null 2>&1; }

cmd_status() {
    log "node $GPU_NAME: $(node_state)"
    if [[ "$(node_state)" == RUNNING ]]; then
        on_node "ls $RUN_DIR/work 2>/dev/null; tail -n 20 $RUN_DIR/logs/*.log 2>/dev/null; nvidia-smi --query-gpu=memory.used --format=csv" || true
    fi
}

cmd_watch() {
    # A preempted spot VM is stopped, not deleted: start it, remount the disk, rerun the command.
    local relaunches=0
    while true; do
        local state
        state="$(node_state)"
        case "$state" in
            MISSING) die "no VM $GPU_NAME; run create and install first" ;;
            TERMINATED | STOPPED | SUSPENDED)
                log "node is $state: starting it"
                gc instances start "$GPU_NAME"
                cmd_install
                state=RUNNING ;;
        esac
        if [[ "$state" == RUNNING ]]; then
            if run_done; then
                log "run finished: $RUN_DIR/metrics.json"
                return
            fi
            if ! run_alive; then
                ((relaunches < MAX_RELAUNCHES)) || die "relaunched $MAX_RELAUNCHES times; look at $RUN_DIR/logs"
                relaunches=$((relaunches + 1))
                log "the run is not running: launch $relaunches"
                cmd_launch
            fi
        fi
        sleep "$POLL_S"
    done
}

cmd_fetch() {
    on_node "$(fetch_command)"
    mkdir -p "runs/$RUN_NAME"
    gc scp "$GPU_NAME:/tmp/$RUN_NAME.tgz" "runs/$RUN_NAME.tgz"
    tar -C "runs/$RUN_NAME" -xzf "runs/$RUN_NAME.tgz"
    log "results in runs/$RUN_NAME"
}

cmd_delete() {
    gc instances delete "$GPU_NAME" --quiet
    if [[ "${DELETE_STORAGE:-0}" == 1 ]]; then
        gc disks delete "$DISK" --quiet
    fi
}

require_project
case "${1:-}" in
    create) cmd_create ;;
    install) cmd_install ;;
    download) cmd_download ;;
    launch) cmd_launch ;;
    status) cmd_status ;;
    watch) cmd_watch ;;
    fetch) cmd_fetch ;;
    delete) cmd_delete ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
