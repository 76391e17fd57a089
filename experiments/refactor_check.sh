#!/usr/bin/env bash
# Small pruning jobs on the default model whose perplexities a refactor must not change:
#   bash experiments/refactor_check.sh TREE OUT   (TREE: a checkout; OUT: a new directory for the runs)
set -e
O=$(realpath -m "$2"); mkdir -p "$O"
cd "$1"; export PYTHONPATH=$PWD; PY=${PYTHON:-python}
$PY -m tyrjax.cli prune --method tyr --sparsity 0.5 --iterations 1 --generations 2 --offspring 8 --calib-windows 8 --eval-windows 2 --out "$O"/tyr > "$O"/tyr.log 2>&1
$PY -m tyrjax.cli prune --method flap --sparsity 0.5 --calib-windows 8 --eval-windows 2 --out "$O"/flap > "$O"/flap.log 2>&1
$PY -m tyrjax.cli sds --pruner sparsegpt --pattern 2:4 --steps 5 --calib-windows 4 --eval-windows 2 --out "$O"/sds > "$O"/sds.log 2>&1
for r in tyr flap sds; do $PY -c "import json,sys; m=json.load(open('$O/'+sys.argv[1]+'/metrics.json')); print(sys.argv[1], m['ppl'])" $r; done
