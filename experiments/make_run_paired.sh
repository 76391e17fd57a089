#!/usr/bin/env bash
# The README's main job (the prune command `make run` runs) on two checkouts, one after the
# other on this machine, then each run's wall and CPU time, peak memory and the perplexity
# change window by window with its 95 % paired interval:
#   bash experiments/make_run_paired.sh BASE_TREE NEW_TREE OUT
# OUT must not exist. Both trees run with the same Python ($PYTHON, default `python`).
# CORES=1: the two runs at the same time instead, each pinned to one core of its own (taskset),
# so that whatever else the machine does falls on both alike.
set -e
[ $# -eq 3 ] || { echo "usage: $0 BASE_TREE NEW_TREE OUT" >&2; exit 2; }
[ ! -e "$3" ] || { echo "$3 exists: name a new directory" >&2; exit 2; }
O=$(realpath -m "$3"); mkdir -p "$O"
PY=${PYTHON:-python}
run() {  # run NAME TREE [CORE]
  local tree pin=(); tree=$(realpath "$2")
  [ -z "$3" ] || pin=(taskset -c "$3")
  (cd "$tree" && PYTHONPATH=$tree "${pin[@]}" /usr/bin/time -v "$PY" -m tyrjax.cli prune --method tyr --sparsity 0.5 \
      --preset quick --out "$O/$1") > "$O/$1.log" 2>&1 || { tail -20 "$O/$1.log" >&2; exit 1; }
  echo "$1 ($(git -C "$tree" rev-parse --short HEAD)): $(grep -E 'Elapsed \(wall|User time|System time|Maximum resident' \
      "$O/$1.log" | sed 's/^\s*//' | paste -sd';')"
}
if [ "${CORES:-}" = 1 ]; then
  run base "$1" 0 & b=$!; run new "$2" 1 & n=$!; wait "$b"; wait "$n"
else
  run base "$1"
  run new "$2"
fi
PYTHONPATH=$(realpath "$2") "$PY" -m tyrjax.cli report --out "$O/report" "$O/base" "$O/new"
