#!/usr/bin/env bash
# Trains the proposal (asym_unet) and a plain U-Net on the Dubai aerial tiles with the same budget
# (configs/dubai.py: 300 steps, batch 8, 144x256), one after the other, then draws their curves.
# Usage (from the repository root): experiments/dubai_proposal_vs_unet/run.sh [OUT_DIR]
set -euo pipefail
out=${1:-/tmp/dubai_proposal_vs_unet}
for arch in asym_unet unet; do
  /usr/bin/time -f "$arch wall %e s" python -m seg_jax.main \
      --config=configs/dubai.py:$arch --workdir="$out/$arch"
done
python - "$out" <<'PY'
import json, sys
from seg_jax import viz
out = sys.argv[1]
runs = {a: [json.loads(l) for l in open(f"{out}/{a}/metrics.jsonl")] for a in ("asym_unet", "unet")}
viz.save_curves(runs, f"{out}/curves.png")
print(f"wrote {out}/curves.png")
PY
