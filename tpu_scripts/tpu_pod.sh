#!/usr/bin/env bash
# Týr on a Cloud TPU pod slice (default: Llama-3.1-70B, --preset paper, on a v5p-64).
#
#   tpu_scripts/tpu_pod.sh create     Filestore share (the run storage) + a queued spot/on-demand TPU slice
#   tpu_scripts/tpu_pod.sh install    mount the share and install tyrjax + jax[tpu] on every worker
#   tpu_scripts/tpu_pod.sh download   fetch the checkpoint into the share once (needs $HF_DIR/token, see README)
#   tpu_scripts/tpu_pod.sh launch     start `tyrjax prune` on every worker (resumes when RUN_DIR/work exists)
#   tpu_scripts/tpu_pod.sh status     slice state, the run's progress, the last log lines
#   tpu_scripts/tpu_pod.sh watch      until the run is done: recreate + install + launch after a preemption
#   tpu_scripts/tpu_pod.sh fetch      copy RUN_DIR (without work/) to ./runs/RUN_NAME
#   tpu_scripts/tpu_pod.sh delete     delete the slice (the share and its runs stay; DELETE_STORAGE=1 removes it)
set -euo pipefail

: "${ZONE:=us-east5-a}"
: "${TPU_NAME:=tyrjax-v5p-64}"
: "${ACCELERATOR:=v5p-64}"
: "${RUNTIME:=v2-alpha-tpuv5}"
: "${SPOT:=1}"                       # 1: spot capacity (preemptible, cheaper); 0: on demand
: "${MESH:=fsdp=4,tensor=8}"         # 32 chips; see the memory plan in README.md
: "${MODEL:=meta-llama/Llama-3.1-70B}"
: "${RUN_NAME:=llama-3.1-70b-tyr}"
: "${FILESTORE:=tyrjax-runs}"
: "${FILESTORE_TIER:=BASIC_SSD}"
: "${FILESTORE_CAPACITY:=5TB}"       # 4 fp32 supernets of the 70B are 3.5 TB (memory plan)
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

gc_tpu() { gcloud compute tpus "$@" --zone="$ZONE" --project="$PROJECT"; }
on_workers() { gc_tpu tpu-vm ssh "$TPU_NAME" --worker="$1" --command="$2"; }

filestore_ip() {
    gcloud filestore instances describe "$FILESTORE" --zone="$ZONE" --project="$PROJECT" \
        --format='value(networks[0].ipAddresses[0])'
}

slice_state() {
    # READY, CREATING, PREEMPTED, ... or MISSING when there is no node.
    gc_tpu tpu-vm describe "$TPU_NAME" --format='value(state)' 2>/dev/null || echo MISSING
}

create_storage() {
    if gcloud filestore instances describe "$FILESTORE" --zone="$ZONE" --project="$PROJECT" >/dev/null 2>&1; then
        log "Filestore $FILESTORE exists"
        return
    fi
    log "creating Filestore $FILESTORE ($FILESTORE_TIER, $FILESTORE_CAPACITY)"
    gcloud filestore instances create "$FILESTORE" --zone="$ZONE" --project="$PROJECT" --tier="$FILESTORE_TIER" \
        --file-share=name=tyrjax,capacity="$FILESTORE_CAPACITY" --network=name=default
}

create_slice() {
    local spot=()
    [[ "$SPOT" == 1 ]] && spot=(--spot)
    log "queueing $ACCELERATOR slice $TPU_NAME (spot=$SPOT)"
    gc_tpu queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" \
        --runtime-version="$RUNTIME" "${spot[@]}"
    until [[ "$(slice_state)" == READY ]]; do
        local qr
        qr="$(gc_tpu queued-resources describe "$TPU_NAME" --format='value(state.state)' 2>/dev/null || true)"
        [[ "$qr" == FAILED ]] && die "queued resource $TPU_NAME FAILED; see 'gcloud compute tpus queued-resources describe $TPU_NAME'"
        log "waiting for the slice (queued resource: ${qr:-unknown})"
        sleep 60
    done
    log "slice $TPU_NAME is READY"
}

delete_slice() {
    gc_tpu queued-resources delete "$TPU_NAME" --force --quiet 2>/dev/null || true
    while gc_tpu queued-resources describe "$TPU_NAME" >/dev/null 2>&1; do
        sleep 20
    done
}

cmd_install() {
    local wheel
    wheel="$(build_wheel)"
    gc_tpu tpu-vm scp "$wheel" "$SCRIPTS_DIR/worker_setup.sh" "$TPU_NAME:/tmp/" --worker=all
    on_workers all "bash /tmp/worker_setup.sh tpu $(filestore_ip):/tyrjax $MOUNT /tmp/$(basename "$wheel")"
}

cmd_download() {
    on_workers 0 "$(download_command)"
}

cmd_launch() {
    # Every host joins one JAX process group detected from the TPU environment (--coordinator auto).
    on_workers all "$(launch_command "$MESH" --coordinator auto)"
    log "launched; logs in $RUN_DIR/logs on the share"
}

run_done() { on_workers 0 "test -f $RUN_DIR/metrics.json" >/dev/null 2>&1; }
run_alive() { on_workers 0 "$(alive_command)" >/dev/null 2>&1; }

cmd_status() {
    log "slice $TPU_NAME: $(slice_state)"
    if [[ "$(slice_state)" == READY ]]; then
        on_workers 0 "ls $RUN_DIR/work 2>/dev/null; tail -n 5 $RUN_DIR/logs/*.log 2>/dev/null | tail -n 20" || true
    fi
}

cmd_watch() {
    # Preemption deletes a spot slice's VMs; the share keeps RUN_DIR, so recreating the slice and
    # rerunning the same command resumes the supernet build and the search where they stopped.
    local relaunches=0
    while true; do
        local state
        state="$(slice_state)"
        if [[ "$state" == READY ]] && run_done; then
            log "run finished: $RUN_DIR/metrics.json"
            return
        fi
        if [[ "$state" != READY && "$state" != CREATING ]]; then
            log "slice is $state: recreating it"
            delete_slice
            create_slice
            cmd_install
            state=READY
        fi
        if [[ "$state" == READY ]] && ! run_alive; then
            ((relaunches < MAX_RELAUNCHES)) || die "relaunched $MAX_RELAUNCHES times; look at the logs in $RUN_DIR/logs"
            relaunches=$((relaunches + 1))
            log "the run is not running: launch $relaunches"
            on_workers all "$(stop_command)"
            cmd_launch
        fi
        sleep "$POLL_S"
    done
}

cmd_fetch() {
    on_workers 0 "$(fetch_command)"
    mkdir -p "runs/$RUN_NAME"
    gc_tpu tpu-vm scp "$TPU_NAME:/tmp/$RUN_NAME.tgz" "runs/$RUN_NAME.tgz" --worker=0
    tar -C "runs/$RUN_NAME" -xzf "runs/$RUN_NAME.tgz"
    log "results in runs/$RUN_NAME"
}

cmd_delete() {
    delete_slice
    if [[ "${DELETE_STORAGE:-0}" == 1 ]]; then
        gcloud filestore instances delete "$FILESTORE" --zone="$ZONE" --project="$PROJECT" --quiet
    fi
}

require_project
case "${1:-}" in
    create) create_storage; create_slice ;;
    install) cmd_install ;;
    download) cmd_download ;;
    launch) cmd_launch ;;
    status) cmd_status ;;
    watch) cmd_watch ;;
    fetch) cmd_fetch ;;
    delete) cmd_delete ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
