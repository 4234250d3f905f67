#!/usr/bin/env bash
# GPU checks, run on a CUDA machine from the repository root: the GPU tests, one CLI training run, and the
# bench (main arms at the default CPU-sized config and at scale=gpu, deterministic kernels on and off, the
# size / PTM-count sweeps). Each step has a time limit and a log; a failing step does not stop the next.
#
#   benchmarks/gpu_check.sh OUT_DIR            # with wsa_lab installed (pip install -e '.[test]')
#   DEVICE=cpu QUICK=1 benchmarks/gpu_check.sh /tmp/dry   # a dry run of every step on the CPU (seconds)
#   ONLY="tests train_compiled" benchmarks/gpu_check.sh OUT_DIR   # only the steps named
#
# Works offline: the bench makes same-shaped stand-in ImageNet files when the real ones are absent, and the
# CLI run uses them through paths.weights_dir. Results: OUT_DIR/steps.log (every step's output, in order) and
# the bench's OUT_DIR/gpu_*.json; the training run's folder is a temporary one (its summary is in the log).
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
bench="$(dirname "$0")/bench.py"  # beside this script
device=${DEVICE:-cuda}
quick=(); train_size=(algo.total_timesteps=4096)
if [[ ${QUICK:-0} == 1 ]]; then quick=(--quick); train_size=(algo.total_timesteps=64 algo.num_envs=4 algo.num_steps=8); fi
# stand-in weight files do not match torchvision's checksums: the loud opt-out
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS=1
failed=()
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: >"$out/steps.log"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, append its output to OUT_DIR/steps.log
  local name=$1 limit=$2 start rc; shift 2
  if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then return 0; fi
  start=$(date +%s)
  echo "== $name: $*" >>"$out/steps.log"
  timeout "$limit" "$@" >"$tmp/step.log" 2>&1; rc=$?
  cat "$tmp/step.log" >>"$out/steps.log"
  echo "== $name: rc=$rc in $(($(date +%s) - start)) s" | tee -a "$out/steps.log"
  tail -n "${TAIL:-12}" "$tmp/step.log"
  [[ $rc == 0 ]] || failed+=("$name")
}

if [[ $device == cuda* ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"; fi
$py -c "import torch, torchvision, torch_geometric; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'pyg', torch_geometric.__version__)" | tee -a "$out/gpu.txt"

weights="$tmp/stand_in_weights"
if $py - "$weights" <<'PY'
import sys, pathlib, torch
from wsa_lab.weights.files import weights_file_name
from wsa_lab.weights.names import RESNETS
folder = pathlib.Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
for model_type, entry in RESNETS.items():
    torch.manual_seed(0)
    torch.save(entry.builder(weights=None).state_dict(), folder / weights_file_name(model_type))
PY
then :; else echo "gpu_check: could not write the stand-in weight files (above)" >&2; exit 1; fi

step tests 240 $py -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
step train 90 $py -m wsa_lab experiment=phase3_hybrid device=$device "logger=[console,health]" \
  logger.console.progress_bar=false "${train_size[@]}" "paths.weights_dir=$weights" "hydra.run.dir=$tmp/run"
step train_compiled 180 $py -m wsa_lab experiment=phase3_hybrid device=$device "logger=[console]" \
  logger.console.progress_bar=false "${train_size[@]}" "paths.weights_dir=$weights" "hydra.run.dir=$tmp/run_compiled" \
  actor_critic.gpu.compile=true
for run in run run_compiled; do  # the runs' summaries (SPS, returns) into the log
  if [[ -f $tmp/$run/summary.json ]]; then echo "== $run/summary.json"; cat "$tmp/$run/summary.json"; fi >>"$out/steps.log"
done
step bench_arms 100 $py "$bench" --device "$device" "${quick[@]}" --only arms references --no-memory --out "$out/gpu_arms.json"
step bench_arms_nondeterministic 80 $py "$bench" --device "$device" "${quick[@]}" --only arms --no-memory \
  --out "$out/gpu_arms_nondeterministic.json" deterministic=false
step bench_scale_gpu 120 $py "$bench" --device "$device" "${quick[@]}" --only arms --repeats 3 --no-memory \
  --out "$out/gpu_scale_gpu.json" scale=gpu
step bench_scale_gpu_nondeterministic 120 $py "$bench" --device "$device" "${quick[@]}" --only arms --repeats 3 \
  --no-memory --out "$out/gpu_scale_gpu_nondeterministic.json" scale=gpu deterministic=false
step bench_profile 120 $py "$bench" --device "$device" "${quick[@]}" --only arms --repeats 1 --no-memory --profile \
  --out "$out/gpu_profile.json"
step bench_sweeps 150 $py "$bench" --device "$device" "${quick[@]}" --only nodes ptms checkpoint --no-memory \
  --out "$out/gpu_sweeps.json"

if ((${#failed[@]})); then echo "failed: ${failed[*]}"; exit 1; fi
echo "all GPU checks passed"
