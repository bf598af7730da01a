#!/usr/bin/env bash
# Trains the proposal (asym_unet) and a plain U-Net on the Dubai aerial tiles with the same budget
# (configs/dubai.py: 300 steps, batch 8, 144x256) for seeds 0 and 1, one run after the other;
# after each run it evaluates the best-val checkpoint on the test split, then draws the seed-0
# curves. Outputs go to OUT_DIR/seed<seed>/<arch>/ (eval_test.json holds the test scores).
# Usage (from the repository root): experiments/dubai_proposal_vs_unet/run.sh [OUT_DIR]
set -euo pipefail
out=${1:-/tmp/dubai_proposal_vs_unet}
for seed in 0 1; do
  for arch in asym_unet unet; do
    workdir="$out/seed$seed/$arch"
    /usr/bin/time -f "$arch seed $seed wall %e s" python -m seg_jax.main \
        --config=configs/dubai.py:$arch --workdir="$workdir" --config.seed=$seed
    python -m seg_jax.main --config=configs/dubai.py:$arch --workdir="$workdir" \
        --config.seed=$seed --config.train.mode=eval --config.eval.split=test
  done
done
python - "$out/seed0" <<'PY'
import json, sys
from seg_jax import viz
out = sys.argv[1]
runs = {a: [json.loads(l) for l in open(f"{out}/{a}/metrics.jsonl")] for a in ("asym_unet", "unet")}
viz.save_curves(runs, f"{out}/curves.png")
print(f"wrote {out}/curves.png")
PY
