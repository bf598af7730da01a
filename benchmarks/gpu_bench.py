r"""seg_jax's real train step on one GPU, the figures `benchmarks/gpu_vs_torch.sh` sets beside PyTorch.

  python -m benchmarks.gpu_bench --out=DIR            # appends JSON lines to DIR/seg_jax.jsonl
  python -m benchmarks.gpu_bench --out=DIR --report   # table of DIR/seg_jax.jsonl + DIR/torch.jsonl
  python -m benchmarks.gpu_bench --out=DIR --toy      # tiny models, a few steps: a CPU dry run

Each model is built through the registry and trained by `steps.Trainer.train_step` (augmentation,
loss, AdamW; bfloat16 compute) on random uint8 batches held on the device
(`data.keep_on_device`). Per model it records: time from building the Trainer to the end of the
first step and the compile time of the train step, once into an empty persistent compilation
cache ("cold") and once more with a second Trainer over that cache ("cached"); images/s of the
bare step; model TFLOP/s from the convolutions and matrix products of the step's jaxpr
(`seg_jax.models.summary.matmul_flops`; XLA's GPU cost analysis is not used) and the share of the
card's dense bf16 peak (MFU). For the proposal it also times the training loop as
`seg_jax.main` runs it against the bare step (`benchmarks.loop_bench`), with the logging,
evaluation and checkpoint intervals of configs/gpu_asym_unet.py.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

from absl import flags
import jax
import ml_collections

from benchmarks import common
from benchmarks import loop_bench
from seg_jax import cli
from seg_jax import compilation
from seg_jax import config_files
from seg_jax import models
from seg_jax import steps as steps_lib
from seg_jax import workdir as workdir_lib
from seg_jax.models import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
SEG_JAX_JSONL, TORCH_JSONL = "seg_jax.jsonl", "torch.jsonl"


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_string("out", None, "Folder of the JSON lines.", required=True)
  flags.DEFINE_bool("toy", False, "Tiny models and images, a few steps (CPU dry run).")
  flags.DEFINE_bool("report", False, "Only print the table of the JSON lines in --out.")
  flags.DEFINE_list("models", ["unet", "deeplabv3_resnet50", "asym_unet"],
                    "Which models (keys of MODELS) to time.")
  flags.DEFINE_integer("bare_steps", 20, "Timed bare steps per model (after 3 warm-up steps).")
  flags.DEFINE_integer(
      "loop_steps", 0, "Steps of the proposal's loop and bare-step blocks (0: its eval_every).")

# The models of the comparison: registry name and fields, batch and (H, W), the PyTorch model
# of ../shared/bench/torch_anchor.py with the same layers (None: no PyTorch twin).
MODELS = {
    # The registry's unet: base width 64, depth 4 (31,037,958 parameters).
    "unet": dict(name="unet", kwargs=None, batch=64, size=(144, 256), torch="unet"),
    # torchvision's deeplabv3_resnet50: output stride 8, ASPP rates 12/24/36, a 3x3 head conv.
    "deeplabv3_resnet50": dict(name="deeplabv3_resnet50", kwargs=None, batch=16,
                               size=(512, 512), torch="deeplabv3_resnet50"),
    "asym_unet": dict(name="asym_unet", kwargs=None, batch=64, size=(144, 256), torch=None),
}
_TOY_RESNET = {"width": 2, "stage_sizes": (1, 1, 1, 1)}
TOY_MODELS = {
    "unet": dict(MODELS["unet"], kwargs=dict(backbone_kwargs={"widths": (4, 8, 16)}), batch=2,
                 size=(32, 64)),
    "deeplabv3_resnet50": dict(
        MODELS["deeplabv3_resnet50"], batch=2, size=(64, 64),
        kwargs=dict(backbone_kwargs=_TOY_RESNET, neck_kwargs={"features": 8},
                    head_kwargs={"features": 8})),
    "asym_unet": dict(MODELS["asym_unet"], batch=2, size=(32, 64), kwargs=dict(
        backbone_kwargs={"widths": (4, 8, 8), "blocks": 1, "se_reduction": 2},
        neck_kwargs={"features": 8}, decoder_kwargs={"widths": (8, 4)})),
}
# Dense bfloat16 peak TFLOP/s by device kind (vendor data sheets), for MFU.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))
# The proposal's GPU config: widths, intervals, batch.
GPU_CONFIG = os.path.join(REPO, "configs", "gpu_asym_unet.py")


def peak_tflops(device: jax.Device) -> float | None:
  """Dense bf16 peak of `device` if it is a GPU listed in PEAK_TFLOPS."""
  for kind, tflops in PEAK_TFLOPS:
    if kind in device.device_kind:
      return tflops
  return None


def model_config(spec: dict, cache: str) -> ml_collections.ConfigDict:
  """configs/gpu_asym_unet.py (bf16, AdamW, data on the device) with the model of `spec`."""
  config = config_files.load_module(GPU_CONFIG).get_config()
  config.model.name = spec["name"]
  if spec["kwargs"] is not None:
    config.model.kwargs = ml_collections.ConfigDict(spec["kwargs"])
  config.data.image_size = spec["size"]
  config.train.global_batch_size = config.eval.global_batch_size = spec["batch"]
  config.train.compilation_cache_dir = cache
  config.optim.name = "adamw"
  return config


def first_step(config, dataset) -> tuple[steps_lib.Trainer, dict, float, compilation.CompileLog]:
  """Builds a Trainer and runs one step; returns it, the state, batch, seconds and compiles."""
  compilation.use_persistent_cache(config.train.compilation_cache_dir)
  start = time.perf_counter()
  with compilation.CompileLog() as log:
    trainer = steps_lib.Trainer(config, dataset)
    state = trainer.initial_state()
    batch = next(trainer.train_pipeline())
    key = trainer.step_key()
    state, metrics = trainer.train_step(state, batch, key)
    jax.block_until_ready(metrics)
  return trainer, {"state": state, "batch": batch, "key": key}, time.perf_counter() - start, log


def bench_model(key: str, spec: dict, bare_steps: int) -> dict:
  """The figures of one model (see the module docstring), its step timed over `bare_steps`."""
  config = model_config(spec, tempfile.mkdtemp())
  config.lock()
  batch_size = spec["batch"]
  dataset = common.random_dataset(spec["size"], 2 * batch_size, batch_size)
  record = {"framework": "seg_jax", "model": key, "batch": batch_size,
            "height": spec["size"][0], "width": spec["size"][1], "torch_model": spec["torch"],
            "device": jax.devices()[0].device_kind, "jax": jax.__version__}
  for attempt in ("cold", "cached"):
    trainer, args, seconds, log = first_step(config, dataset)
    record[f"first_step_{attempt}_s"] = round(seconds, 2)
    record[f"compile_{attempt}_s"] = round(log.seconds["jit(train_step)"], 2)
    record[f"cache_hits_{attempt}"] = sum(log.cache_hits.values())
  record["params"] = models.count_params({"params": args["state"].params})
  flops = summary.matmul_flops(trainer.train_step, args["state"], args["batch"], args["key"])
  state = args["state"]
  for _ in range(3):
    state, metrics = trainer.train_step(state, args["batch"], args["key"])
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(bare_steps):
    state, metrics = trainer.train_step(state, args["batch"], args["key"])
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / bare_steps
  record.update(step_ms=round(step_s * 1e3, 2), images_per_s=round(batch_size / step_s, 1),
                model_tflops_per_s=round(flops / step_s / 1e12, 1),
                gflops_per_step=round(flops / 1e9, 1))
  peak = peak_tflops(jax.devices()[0])
  if peak:
    record["mfu"] = round(flops / step_s / 1e12 / peak, 3)
  return record


def bench_loop(spec: dict, toy: bool, loop_steps: int = 0) -> dict:
  """The proposal's training loop against its bare step, one block each, at the config's
  intervals (`loop_steps` per block; 0: the config's eval_every, 4 for a toy)."""
  config = model_config(spec, tempfile.mkdtemp())
  steps = loop_steps or (4 if toy else config.train.eval_every)
  config.train.num_steps = steps
  if toy:
    config.train.log_every, config.train.eval_every, config.train.checkpoint_every = 2, 4, 4
  config.lock()
  compilation.use_persistent_cache(config.train.compilation_cache_dir)
  batch_size = spec["batch"]
  trainer = steps_lib.Trainer(config, common.random_dataset(spec["size"], 16 * batch_size,
                                                     4 * batch_size))
  root = tempfile.mkdtemp()
  try:
    loop_bench.loop(trainer, root)  # compiles the loop's functions
    bare = loop_bench.bare_steps(trainer, steps)
    full = loop_bench.loop(trainer, root)
  finally:
    shutil.rmtree(root)
  c = config.train
  return {"framework": "seg_jax", "model": "asym_unet_loop", "batch": batch_size,
          "steps": steps, "log_every": c.log_every, "eval_every": c.eval_every,
          "checkpoint_every": c.checkpoint_every, "bare_images_per_s":
          round(steps * batch_size / bare, 1), "loop_images_per_s":
          round(steps * batch_size / full, 1), "loop_over_bare": round(bare / full, 3),
          "device": jax.devices()[0].device_kind}


def report(out: str) -> None:
  """Prints the table of seg_jax.jsonl against torch.jsonl."""
  ours = workdir_lib.read_jsonl(os.path.join(out, SEG_JAX_JSONL))
  torch = {(r["model"], r["framework"]): r
           for r in workdir_lib.read_jsonl(os.path.join(out, TORCH_JSONL))}
  print("| model | batch x HxW | PyTorch eager img/s | torch.compile img/s | seg_jax img/s | "
        "seg_jax / eager | seg_jax TFLOP/s (MFU) | PyTorch eager TFLOP/s | first step cold / "
        "cached (s) | train-step compile cold / cached (s) |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in ours:
    if "images_per_s" not in r:
      continue
    eager = torch.get((r["torch_model"], "torch"), {})
    compiled = torch.get((r["torch_model"], "torch+compile"), {})
    ratio = (f"{r['images_per_s'] / eager['images_per_s']:.2f}x" if eager else "-")
    mfu = f" ({r['mfu']:.0%})" if "mfu" in r else ""
    print(f"| {r['model']} | {r['batch']} x {r['height']}x{r['width']} | "
          f"{eager.get('images_per_s', '-')} | {compiled.get('images_per_s', '-')} | "
          f"{r['images_per_s']} | {ratio} | {r['model_tflops_per_s']}{mfu} | "
          f"{eager.get('model_tflops_per_s', '-')} | {r['first_step_cold_s']} / "
          f"{r['first_step_cached_s']} | {r['compile_cold_s']} / {r['compile_cached_s']} |")
  for r in ours:
    if "loop_over_bare" in r:
      print(f"\nasym_unet loop vs bare step ({r['steps']} steps per block, batch {r['batch']}, "
            f"log/eval/checkpoint every {r['log_every']}/{r['eval_every']}/"
            f"{r['checkpoint_every']}): bare {r['bare_images_per_s']} img/s, loop "
            f"{r['loop_images_per_s']} img/s, loop/bare {r['loop_over_bare']}")
  devices = {r["device"] for r in ours} | {r["device"] for r in torch.values()}
  print(f"\ndevices: {sorted(devices)}; jax {sorted({r.get('jax') for r in ours} - {None})}, "
        f"torch {sorted({r['torch'] for r in torch.values()})}")


def run(out: str, keys: Sequence[str], toy: bool, bare_steps: int, loop_steps: int = 0) -> None:
  """Times the models `keys` (of TOY_MODELS with `toy`, else MODELS) and appends their records,
  and the proposal's loop record, to `out`/seg_jax.jsonl."""
  os.makedirs(out, exist_ok=True)
  table = TOY_MODELS if toy else MODELS
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)
  for key in keys:
    records = [bench_model(key, table[key], bare_steps)]
    if key == "asym_unet":
      records.append(bench_loop(table[key], toy, loop_steps))
    for record in records:
      with open(os.path.join(out, SEG_JAX_JSONL), "a") as f:
        f.write(json.dumps(record) + "\n")
      print(json.dumps(record), flush=True)
    gc.collect()
    jax.clear_caches()


def main(argv: Sequence[str]) -> None:
  """Runs the models of --models, or prints the table with --report."""
  del argv
  if FLAGS.report:
    report(FLAGS.out)
  else:
    run(FLAGS.out, FLAGS.models, FLAGS.toy, FLAGS.bare_steps, FLAGS.loop_steps)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
