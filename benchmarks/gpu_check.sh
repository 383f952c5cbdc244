#!/usr/bin/env bash
# GPU check (issue 5), one prepared script for a lent CUDA machine without network access:
#   1. a short run of the ResNet18 preset on CUDA (the embedded digits as 3 x 32 x 32 images: no files,
#      no downloads), 2. the NC-tracking benchmark on that model, 3. the metrics benchmark on the GPU,
#   3b. the batched UFM benchmark on the GPU (BATCH runs, default 1000, STEPS steps, default 30000).
# Outputs (logs, metrics.csv, summary.json of the run) go to $OUT (default ./gpu_check_out).
# Budget: < 4 minutes on an H100 including the install; every step has its own timeout.
# Dry run on a CPU: DEV=cpu EPOCHS=1 QUICK=--quick BATCH=8 STEPS=300 EXTRA="--counts 3,3 --test-per-class 2" \
#   BENCH="--set counts=3,3 --set test_per_class=2" SKIP_INSTALL=1 OUT=/tmp/gc bash benchmarks/gpu_check.sh
set -u
DEV="${DEV:-cuda}"
EPOCHS="${EPOCHS:-30}"
QUICK="${QUICK:-}"
EXTRA="${EXTRA:-}"
BENCH="${BENCH:-}"
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$(date +%s)
BUDGET="${BUDGET:-225}"  # seconds for the whole script: every step gets min(its limit, what is left)
step() { echo; echo "=== $* ($(( $(date +%s) - start )) s)"; }
limit() { local left=$(( BUDGET - ($(date +%s) - start) )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
run() {  # run LIMIT CMD...: with a timeout, skipped when under 15 s are left
  local t; t=$(limit "$1"); shift
  if [ "$t" -lt 15 ]; then echo "skipped: the time budget is spent"; return 0; fi
  timeout "$t" "$@"; local rc=$?; echo "exit status $rc"; return 0
}

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" \
  || { echo "torch does not import; installing it needs the network, which this machine lacks"; \
       pip install -q torch || exit 1; }

step "install nclab (no dependencies, no build isolation: works offline)"
if [ -n "${SKIP_INSTALL:-}" ] || ! pip install -q -e . --no-deps --no-build-isolation; then
  echo "not installed (SKIP_INSTALL or pip failed); running from the source tree instead"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import click, tqdm, scipy, numpy, nclab.cli; print('nclab imports')" || {
  echo "missing dependencies; trying pip (may fail offline)"; pip install -q click tqdm scipy numpy matplotlib || true; }

step "1. ResNet18 preset on $DEV: digits (1437 train / 360 test images, 3 x 32 x 32), $EPOCHS epochs"
RUN=/tmp/nclab-gpu-resnet18
run 80 python -m nclab train --preset paper-resnet18-cifar10 --dataset digits --size 32 --channels 3 \
  --epochs "$EPOCHS" --eval-batch-size 2048 --device "$DEV" $EXTRA --out "$RUN" --overwrite --no-progress --json \
  > "$OUT/resnet18.txt"
cat "$OUT/resnet18.txt"
cp "$RUN"/summary.json "$RUN"/metrics.csv "$RUN"/config.json "$RUN"/environment.json "$OUT"/ 2>/dev/null || true
python - "$RUN" <<'EOF' || true
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
a, b = s["initial"], s["final"]
print(f"status {s['status']}, {s['epoch']} epochs, {s['seconds_per_epoch'] * 1e3:.0f} ms/epoch, NC row "
      f"{s['track_fraction'] * 100:.1f}% of an epoch; NC1 head input {a['nc1_L1']:.3g} -> {b['nc1_L1']:.3g}, "
      f"last layer {a['nc1_L3']:.3g} -> {b['nc1_L3']:.3g}; train acc {b['train_acc']:.3f}, test acc {b['test_acc']:.3f}")
EOF

step "1b. the same with Adam 1e-3 (the CPU presets' optimizer)"
run 60 python -m nclab train --preset paper-resnet18-cifar10 --dataset digits --size 32 --channels 3 \
  --epochs "$EPOCHS" --optimizer adam --lr 1e-3 --device "$DEV" $EXTRA --out "$RUN-adam" --overwrite --no-progress \
  > "$OUT/resnet18_adam.txt"
cat "$OUT/resnet18_adam.txt"

step "2. NC tracking cost and throughput vs a plain loop, ResNet18 on $DEV"
run 60 python benchmarks/train.py --preset paper-resnet18-cifar10 --reps 5 --set device="$DEV" \
  --set dataset=digits --set size=32 --set channels=3 $BENCH | tee "$OUT/train_benchmark.txt"

step "3. metrics benchmark on $DEV"
run 90 python benchmarks/metrics.py --device "$DEV" $QUICK | tee "$OUT/metrics_benchmark.txt"

step "3b. batched UFM on $DEV (issue 12): ${BATCH:-1000} paper runs (M = 3, ${STEPS:-30000} steps) vs sequential"
run 150 python benchmarks/simulate.py --no-single --batch "${BATCH:-1000}" --sequential 2 --steps "${STEPS:-30000}" \
  --device "$DEV" | tee "$OUT/simulate_batched.txt"

step "4. CUDA tests (skipped on a CPU)"
if python -m pytest --version >/dev/null 2>&1; then
  run 60 python -m pytest -q -rs tests/test_train.py -k cuda tests/test_ufm_cuda.py | tee "$OUT/cuda_tests.txt"
else
  echo "pytest is not installed; skipped"
fi

step "done"
