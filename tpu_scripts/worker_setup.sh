#!/usr/bin/env bash
# Runs on each worker (copied there by tpu_pod.sh / gpu_node.sh install): mounts the run storage
# and installs tyrjax with the JAX build for the accelerator into ~/tyrjax-venv (Python 3.11 via uv).
#
#   worker_setup.sh tpu|gpu STORAGE MOUNT WHEEL
#     STORAGE: IP:/share of an NFS server (Filestore), or /dev/disk/by-id/... of a persistent disk
set -euo pipefail

kind="$1" storage="$2" mount="$3" wheel="$4"
venv="$HOME/tyrjax-venv"

case "$kind" in
    tpu) jax_extra="jax[tpu]" ;;
    gpu) jax_extra="jax[cuda12]" ;;
    *) echo "worker_setup.sh: kind must be tpu or gpu, not '$kind'" >&2; exit 2 ;;
esac

mount_storage() {
    if mountpoint -q "$mount"; then
        return
    fi
    sudo mkdir -p "$mount"
    if [[ "$storage" == /dev/* ]]; then
        # A persistent disk: formatted on first use only, so a relaunch keeps its runs.
        if ! sudo blkid "$storage" >/dev/null 2>&1; then
            sudo mkfs.ext4 -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard "$storage"
        fi
        sudo mount -o discard,defaults "$storage" "$mount"
    else
        if ! command -v mount.nfs >/dev/null; then
            sudo apt-get update -qq && sudo apt-get install -y -qq nfs-common
        fi
        sudo mount -t nfs -o rw,hard,timeo=600 "$storage" "$mount"
    fi
    sudo chmod a+rwx "$mount"
}

install_tyrjax() {
    if ! command -v uv >/dev/null && [[ ! -x "$HOME/.local/bin/uv" ]]; then
        python3 -m pip install --quiet --user uv
    fi
    local uv
    uv="$(command -v uv || echo "$HOME/.local/bin/uv")"
    [[ -x "$venv/bin/python" ]] || "$uv" venv --quiet --python 3.11 "$venv"
    "$uv" pip install --quiet --python "$venv/bin/python" --upgrade "$jax_extra" "$wheel"
    "$venv/bin/python" -c "import jax, tyrjax; print('tyrjax', tyrjax.__version__, 'jax', jax.__version__)"
}

mount_storage
install_tyrjax
