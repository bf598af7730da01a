#!/usr/bin/env bash
# Fills .gpu_carry/ (ignored by git) with what benchmarks/gpu_vs_torch.sh needs on a GPU machine
# that receives only the repository: a copy of ../shared/bench/torch_anchor.py, and wheels
# (Python 3.12, x86-64) of seg_jax's dependencies that the lent GPU machines lack (they have
# jax, flax, optax, orbax, numpy, absl, matplotlib, pillow, torch and torchvision).
#
#   benchmarks/gpu_carry.sh      # then carry .gpu_carry with the call that runs gpu_vs_torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu_carry/wheels
cp ../shared/bench/torch_anchor.py .gpu_carry/
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu_carry/wheels \
    grain==0.2.18 array-record==0.8.6 portpicker ml-collections==1.1.0 tensorboardX==2.6.5
ls -l .gpu_carry .gpu_carry/wheels
