"""An MLP, a small CNN and the same CNN without weight sharing on majority-class Dubai patches.

  python -m seg_jax.sweep --config=configs/dubai_patches.py \
      --sweep=experiments/mlp_vs_cnn/sweep.py --workdir=/tmp/mlp_vs_cnn

Each setting is one classifier of configs/dubai_patches.py (`configs/dubai_patches.py:<name>`);
everything else (data, steps, batch, optimizer, augmentation) is the config's, the same for all.
`python -m experiments.mlp_vs_cnn.run` runs this sweep and the shift test on its runs.
"""

import os

from seg_jax import config_files

patches = config_files.load_module(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "dubai_patches.py"))


def get_sweep():
  return {"settings": {name: {"model.name": model, "model.kwargs": kwargs}
                       for name, (model, kwargs) in patches.ARCHITECTURES.items()},
          "seeds": [0, 1]}
