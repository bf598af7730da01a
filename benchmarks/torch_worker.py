"""The PyTorch side of `benchmarks.cpu_vs_torch`: the twin model's train step, in a worker process.

  python -m benchmarks.torch_worker    # started by benchmarks.cpu_vs_torch (`step_protocol`)

The step does what seg_jax's does (`benchmarks.seg_jax_worker`), with the numbers the seg_jax
worker reports: uint8 images cast and normalised inside the step, the twin's forward pass
(`benchmarks.torch_models`), mean cross-entropy over the pixels that are not `ignore_index`,
backward, gradient clipping to the global norm, AdamW with weight decay on kernels only (tensors
of more than one dimension, seg_jax's mask) at a constant learning rate. `torch.optim.AdamW` is
left at its defaults (for CPU tensors: one tensor at a time, no foreach or fused kernel), as a
user would. Variants (`VARIANTS`): eager or `torch.compile` (default mode; the optimizer stays
eager), NCHW or channels_last.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import step_protocol
from benchmarks import torch_models

# name: (torch.compile the model, channels_last memory format)
VARIANTS = {"eager": (False, False), "eager_channels_last": (False, True),
            "compile": (True, False), "compile_channels_last": (True, True)}


def adamw(model: torch.nn.Module, o: dict[str, Any]) -> torch.optim.AdamW:
  """AdamW with seg_jax's hyperparameters and weight decay on tensors of more than one dimension."""
  decay = [p for p in model.parameters() if p.ndim > 1]
  rest = [p for p in model.parameters() if p.ndim <= 1]
  return torch.optim.AdamW(
      [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
      lr=o["learning_rate"], betas=(o["b1"], o["b2"]), eps=o["eps"])


def build(spec: dict[str, Any]) -> tuple[step_protocol.Step, dict[str, Any]]:
  """The train step of the twin of `spec["seg_jax"]` (the seg_jax worker's reply)."""
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  ref, (compiled, channels_last) = spec["seg_jax"], VARIANTS[spec["variant"]]
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = torch_models.build(ref["settings"], spec["case"]["bands"], ref["num_classes"])
  model = model.to(memory_format=fmt).train()
  opt = adamw(model, ref["optimizer"])
  params = list(model.parameters())
  forward = torch.compile(model) if compiled else model
  generator = torch.Generator().manual_seed(0)
  shape = (ref["batch"], spec["case"]["bands"], *ref["size"])
  images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
  images = images.contiguous(memory_format=fmt)
  labels = torch.randint(0, ref["num_classes"], (shape[0], *shape[2:]), generator=generator)
  mean = torch.tensor(ref["mean"]).view(1, -1, 1, 1)
  std = torch.tensor(ref["std"]).view(1, -1, 1, 1)
  clip = ref["optimizer"]["grad_clip_norm"]

  def step():
    logits = forward((images.float() - mean) / std)
    loss = F.cross_entropy(logits, labels, ignore_index=ref["ignore_index"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()

  info = {"params": torch_models.count_params(model), "torch_threads": torch.get_num_threads(),
          "version": f"torch {torch.__version__}"}
  return step, info


if __name__ == "__main__":
  step_protocol.serve(build)
