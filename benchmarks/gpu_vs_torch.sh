#!/usr/bin/env bash
# seg_jax against PyTorch on one GPU, every figure from the same run on the same card (about 8
# minutes on an H100): PyTorch eager (channels_last, bf16 autocast, AdamW) through
# torch_anchor.py, seg_jax's real train step through benchmarks.gpu_bench, then torch.compile
# while time is left, then the table (benchmarks/README.md explains the columns).
#
#   benchmarks/gpu_vs_torch.sh            # the comparison; results in $OUT (default /tmp/gpu_vs_torch)
#   benchmarks/gpu_vs_torch.sh --toy      # tiny models, a few steps: a dry run (no GPU needed)
#
# TORCH_ANCHOR: path of torch_anchor.py (default ../shared/bench/torch_anchor.py, else
#   .gpu_carry/torch_anchor.py: a copy of ../shared/bench for a machine that gets only the repo).
# .gpu_carry/wheels/*.whl, if present, are installed first into /tmp/seg_jax_site for Python
#   packages the machine lacks (grain, ml_collections, tensorboardX, ...).
# PYTHON (default python3), BUDGET_S (default 480: torch.compile runs only while time is left).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_vs_torch}
BUDGET_S=${BUDGET_S:-480}
TOY=""
[[ "${1:-}" == "--toy" ]] && TOY="--toy"
mkdir -p "$OUT"
rm -f "$OUT/seg_jax.jsonl" "$OUT/torch.jsonl"

if compgen -G ".gpu_carry/wheels/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/seg_jax_site .gpu_carry/wheels/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/seg_jax_site"
fi

ANCHOR=${TORCH_ANCHOR:-}
for candidate in ../shared/bench/torch_anchor.py .gpu_carry/torch_anchor.py; do
  [[ -z "$ANCHOR" && -f "$candidate" ]] && ANCHOR=$candidate
done
if "$PYTHON" -c "import torch, torchvision; assert torch.cuda.is_available()" 2> /dev/null; then
  [[ -n "$ANCHOR" ]] || { echo "torch_anchor.py not found: set TORCH_ANCHOR" >&2; exit 1; }
else
  echo "PyTorch with CUDA is not available here: only the seg_jax side runs"
  ANCHOR=""
fi
if [[ -n "$TOY" ]]; then
  TORCH_RUNS=("unet --batch 2 --height 32 --width 64 --steps 3 --warmup 1"
              "deeplabv3_resnet50 --batch 2 --height 64 --width 64 --steps 3 --warmup 1")
else
  TORCH_RUNS=("unet --batch 64 --height 144 --width 256"
              "deeplabv3_resnet50 --batch 16 --height 512 --width 512")
fi

torch_run() {  # torch_anchor.py arguments; appends its JSON line to torch.jsonl
  [[ -n "$ANCHOR" ]] || return 0
  echo "== torch_anchor.py --model $*"
  "$PYTHON" "$ANCHOR" --model "$@" | tee -a "$OUT/torch.jsonl"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2> /dev/null
for run in "${TORCH_RUNS[@]}"; do
  # shellcheck disable=SC2086  # each run is a list of arguments
  torch_run $run
done
echo "== seg_jax (benchmarks.gpu_bench) at ${SECONDS}s"
"$PYTHON" -m benchmarks.gpu_bench --out="$OUT" $TOY 2>&1 | grep -v "^W0\|^I0" | tee "$OUT/seg_jax.log"
for run in "${TORCH_RUNS[@]}"; do
  if (( SECONDS > BUDGET_S - 120 )); then
    echo "== torch.compile skipped: ${SECONDS}s of the ${BUDGET_S}s budget used"
    break
  fi
  # shellcheck disable=SC2086
  torch_run $run --compile
done
echo "== results after ${SECONDS}s"
"$PYTHON" -m benchmarks.gpu_bench --out="$OUT" --report | tee "$OUT/table.md"
