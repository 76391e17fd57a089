# shellcheck shell=bash
# Settings and helpers shared by tpu_pod.sh and gpu_node.sh (sourced, not run).
# Every setting can be overridden from the environment, e.g. `ZONE=us-east5-a tpu_scripts/tpu_pod.sh create`.

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPTS_DIR/.." && pwd)"

: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${SPARSITY:=0.5}"
: "${PRESET:=paper}"
: "${CALIB_WINDOWS:=256}"     # 256 x 512 tokens: the paper preset's last search stage (131072 tokens)
: "${DTYPE:=bfloat16}"
: "${DATA:=shakespeare}"      # calibration corpus (see `tyrjax prune --help`)
: "${EXTRA_ARGS:=}"           # more `tyrjax prune` flags, e.g. "--eval-windows 64"
: "${MOUNT:=/mnt/tyrjax}"     # the persistent, shared run storage on every worker
: "${POLL_S:=300}"            # seconds between checks of `watch`
: "${MAX_RELAUNCHES:=20}"     # `watch` gives up after this many relaunches

RUN_DIR="$MOUNT/runs/$RUN_NAME"
HF_DIR="$MOUNT/hf"
VENV="\$HOME/tyrjax-venv"     # on the workers

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

require_project() {
    [[ -n "$PROJECT" ]] || die "no project: set PROJECT or run 'gcloud config set project ID'"
}

build_wheel() {
    # The tyrjax wheel of this checkout, built without dependencies (the workers install those).
    local out="$REPO_DIR/dist"
    rm -f "$out"/tyrjax-*.whl
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$out" "$REPO_DIR" >&2
    ls "$out"/tyrjax-*.whl
}

prune_command() {
    # The `tyrjax prune` line every worker runs; rerunning it with the same --out resumes the
    # supernets and searches from RUN_DIR/work. $1: the --mesh value; the rest: more flags.
    local mesh="$1"
    shift
    printf '%s ' "$VENV/bin/tyrjax"
    printf '%q ' prune --method tyr --preset "$PRESET" --model "$MODEL" --sparsity "$SPARSITY" --dtype "$DTYPE" \
        --data "$DATA" --calib-windows "$CALIB_WINDOWS" --mesh "$mesh" --out "$RUN_DIR" "$@"
    printf '%s' "$EXTRA_ARGS"
}

remote_env() {
    # Environment of the remote commands: the shared Hugging Face cache, read offline once filled.
    printf 'export HF_HOME=%q HF_HUB_OFFLINE=1; ' "$HF_DIR"
}

download_command() {
    # Fetch the checkpoint into the shared cache once (token from $HF_DIR/token, see README).
    printf 'export HF_HOME=%q; %s -c %q' "$HF_DIR" "$VENV/bin/python" \
        "from huggingface_hub import snapshot_download; print(snapshot_download('$MODEL', allow_patterns=['*.json', '*.safetensors', 'tokenizer*']))"
}

PIDFILE=/tmp/tyrjax-prune.pid  # on each worker

launch_command() {
    # Start the prune in the background, logging to RUN_DIR/logs/HOSTNAME.log. $@: prune_command's arguments.
    # shellcheck disable=SC2016  # $(hostname) and $! expand on the worker
    printf '%s mkdir -p %q && { nohup %s > %q/logs/$(hostname).log 2>&1 < /dev/null & echo $! > %q; }' \
        "$(remote_env)" "$RUN_DIR/logs" "$(prune_command "$@")" "$RUN_DIR" "$PIDFILE"
}

# shellcheck disable=SC2016  # $(cat ...) expands on the worker
alive_command() { printf 'test -f %q && kill -0 "$(cat %q)"' "$PIDFILE" "$PIDFILE"; }
# shellcheck disable=SC2016
stop_command() { printf 'if test -f %q; then kill "$(cat %q)" 2>/dev/null || true; rm -f %q; fi' "$PIDFILE" "$PIDFILE" "$PIDFILE"; }

fetch_command() {
    # A tarball of the run directory without the work directory (supernets, search states).
    printf 'tar -C %q --exclude=./work -czf /tmp/%q.tgz .' "$RUN_DIR" "$RUN_NAME"
}
