#!/usr/bin/env bash
# Phase 6 (grow the PTM pool), for each seed into one folder:
#   phase6_stage1   WSA-2 (experiment=phase4_wsa2) for half the budget
#   phase6_grow     that run grown to WSA-3 (experiment=phase6_grow init_from=<stage 1>) for the other half
#   phase6_scratch  WSA-3 (experiment=phase4_wsa3) from scratch for the whole budget
# then prints the report command. Rerun with the same OUT to continue: finished runs return at once, others resume.
#   scripts/phase6_grow.sh                                              # budget 12288 (CPU default), seeds 0 1 2
#   BUDGET=1000000 SEEDS="0 1 2 3 4" scripts/phase6_grow.sh scale=gpu device=cuda   # arguments go to every run
set -euo pipefail
BUDGET=${BUDGET:-12288}  # env steps of the whole comparison (algo.total_timesteps of the scratch arm)
SEEDS=${SEEDS:-0 1 2}
OUT=${OUT:-multirun/phase6/$(date +%Y-%m-%d_%H-%M-%S)}
PYTHON=${PYTHON:-python}
HALF=$((BUDGET / 2))
for seed in $SEEDS; do
  stage1="$OUT/phase6_stage1_seed$seed"
  "$PYTHON" -m wsa_lab experiment=phase4_wsa2 name=phase6_stage1 phase=phase6 seed="$seed" \
    algo.total_timesteps="$HALF" hydra.run.dir="$stage1" "$@"
  "$PYTHON" -m wsa_lab experiment=phase6_grow seed="$seed" algo.total_timesteps="$HALF" init_from="$stage1" \
    hydra.run.dir="$OUT/phase6_grow_seed$seed" "$@"
  "$PYTHON" -m wsa_lab experiment=phase4_wsa3 name=phase6_scratch phase=phase6 seed="$seed" \
    algo.total_timesteps="$BUDGET" hydra.run.dir="$OUT/phase6_scratch_seed$seed" "$@"
done
echo "phase 6 done; compare the arms with: $PYTHON -m wsa_lab.report $OUT"
