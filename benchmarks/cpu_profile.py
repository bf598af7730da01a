r"""Where a CPU train step's time goes, by kind of operation: seg_jax (XLA) beside PyTorch.

  python -m benchmarks.cpu_profile                                  # unet_dubai; PyTorch eager
                                                                    # too where torch is installed
  python -m benchmarks.cpu_profile --cases=asym_unet_dubai --torch=eager,eager_channels_last
  python -m benchmarks.cpu_profile --toy --torch=                   # toy model, seg_jax only

The steps are those of `benchmarks.cpu_vs_torch` (its cases, built by `seg_jax_worker.prepare`
and `torch_worker.build`), run in this process after `--warmup` steps. seg_jax: `jax.profiler.trace` around `--steps` steps gives the
duration of every executed HLO instruction (one "thunk" of XLA:CPU's runtime) on whichever
thread ran it; each instruction of the compiled step (`.compile().as_text()`) gets a kind from
what it computes (`hlo_kind`). PyTorch: `torch.profiler` gives the self time of every aten
operator (`torch_kind`). Both runtimes spread work over threads differently (XLA runs independent
instructions side by side; PyTorch runs one operator at a time over OpenMP threads), so a kind's
time is shown as its share of the profiled time and as that share of the untraced wall-clock
step (timed over `--steps` steps before profiling): "ms/step" is a share of the step, not a
duration measured on its own. Shares can be taken on a busy machine; the wall-clock step cannot
(the load average is printed).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags

from benchmarks import cpu_vs_torch
from benchmarks import seg_jax_worker

KINDS = (
    "conv forward",
    "conv input gradient",
    "conv kernel gradient",
    "conv gradients (PyTorch: input and kernel in one op)",
    "transposed conv forward",
    "transposed conv gradients",
    "matmul (dot)",
    "max pool forward + gradient",
    "batch norm + ReLU (elementwise and reductions)",
    "copies and transposes",
    "loss",
    "clip + AdamW update",
    "other",
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.-]+)\s*=\s*(.*?)\s([\w-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.-]+)\s.*\{$")


def _computations(hlo: str) -> tuple[dict[str, list[tuple[str, str, str]]], str]:
  """{computation: [(instruction, opcode, rest of line)]} of an HLO module's text, and the
  entry computation's name."""
  comps, entry, current = {}, "", None
  for line in hlo.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = comps.setdefault(head.group(1), [])
      if line.startswith("ENTRY"):
        entry = head.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      current.append((m.group(1), m.group(3), m.group(4)))
  return comps, entry


def _called(comps, rest: str, seen=None) -> list[tuple[str, str, str]]:
  """Instructions of the computations a line calls (`calls=`), recursively."""
  seen = set() if seen is None else seen
  out = []
  for name in re.findall(r"calls=%([\w.-]+)", rest):
    if name not in seen and name in comps:
      seen.add(name)
      for instr in comps[name]:
        out.append(instr)
        out.extend(_called(comps, instr[2], seen))
  return out


def _conv_kind(rest: str, backward: bool) -> str:
  """The kind of one HLO convolution from its window: a kernel gradient convolves over the
  whole image (window larger than any kernel); an lhs dilation is a transposed convolution, and
  the kernel gradient of one (or of a strided conv) carries an rhs dilation; the input gradient
  of a transposed conv is a strided convolution."""
  window = re.search(r"window=\{([^}]*)\}", rest)
  window = window.group(1) if window else ""
  size = re.search(r"size=([\dx]+)", window)
  big = size is not None and max(int(v) for v in size.group(1).split("x")) > 8
  if "lhs_dilate" in window:
    return "transposed conv gradients" if backward else "transposed conv forward"
  if big:
    return "transposed conv gradients" if "rhs_dilate" in window else "conv kernel gradient"
  if backward:
    return "transposed conv gradients" if "stride=" in window else "conv input gradient"
  return "conv forward"


def hlo_kind(hlo: str) -> dict[str, str]:
  """{entry instruction: kind} of a compiled train step's HLO text (`KINDS`)."""
  comps, entry = _computations(hlo)
  kinds = {}
  for name, opcode, rest in comps[entry]:
    inner = [(name, opcode, rest)] + _called(comps, rest)
    opcodes = {op for _, op, _ in inner}
    op_names = " ".join(re.findall(r'op_name="([^"]*)"', " ".join(r for _, _, r in inner)))
    backward = "transpose(jvp(" in op_names
    conv = next((r for _, op, r in inner if op == "convolution"), None)
    if conv is not None:
      kind = _conv_kind(conv, backward)
    elif "dot" in opcodes:
      kind = "matmul (dot)"
    elif opcodes & {"reduce-window", "select-and-scatter", "scatter"} or "reduce_window" in op_names:
      kind = "max pool forward + gradient"
    elif opcodes & {"iota"} and not op_names:
      kind = "max pool forward + gradient"  # argmax indices of the select-and-scatter expansion
    elif "transpose" in opcodes:
      kind = "copies and transposes"
    elif "SegmentationModel" in op_names and re.search(r"/(bn|norm)/|relu|select_n", op_names):
      kind = "batch norm + ReLU (elementwise and reductions)"
    elif opcodes <= {"copy", "transpose", "parameter", "bitcast", "reverse", "fusion"} and (
        opcodes & {"copy", "transpose", "reverse"}):
      kind = "copies and transposes"
    elif "log_softmax" in op_names or "SegmentationModel" not in op_names and re.search(
        r"jvp\(\)|convert_element_type|take_along_axis", op_names):
      kind = "loss"
    elif "SegmentationModel" not in op_names and (
        re.search(r"state_(opt_state|params)", rest)
        or re.search(r"sqrt|div|mul|add|sub|reduce", op_names)):
      kind = "clip + AdamW update"
    else:
      kind = "other"
    kinds[name] = kind
  return kinds


def torch_kind(name: str, shapes: Sequence[Sequence[int]]) -> str:
  """The kind of an aten operator given its input shapes (`KINDS`)."""
  if name == "aten::convolution_backward":
    grad_out, inputs = shapes[0], shapes[1]
    up = len(grad_out) > 2 and len(inputs) > 2 and grad_out[-1] > inputs[-1]
    return "transposed conv gradients" if up else "conv gradients (PyTorch: input and kernel in one op)"
  if "convolution" in name:
    inputs, weight = shapes[0], shapes[1]
    transposed = len(weight) > 2 and "transpose" in name or (
        name == "aten::_convolution" and len(weight) == 4 and weight[0] == inputs[1]
        and weight[-1] == 2)
    return "transposed conv forward" if transposed else "conv forward"
  if "max_pool" in name:
    return "max pool forward + gradient"
  if re.search(r"batch_norm|clamp_min|threshold_backward|relu", name):
    return "batch norm + ReLU (elementwise and reductions)"
  if re.search(r"softmax|nll_loss", name):
    return "loss"
  if re.search(r"lerp_|addcdiv_|addcmul_|sqrt|_foreach|norm|mul_|div_|add_|clamp", name):
    return "clip + AdamW update"
  if name in ("aten::copy_", "aten::cat", "aten::contiguous", "aten::clone", "aten::split"):
    return "copies and transposes"
  if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
    return "matmul (dot)"
  return "other"


def profile_seg_jax(case: dict[str, Any], warmup: int,
                    steps: int) -> tuple[float, dict[tuple[str, str], float]]:
  """Wall seconds per step and {(kind, instruction): traced seconds per step} of seg_jax's
  train step."""
  import jax  # pylint: disable=g-import-not-at-top

  _, _, trainer, state, batch, key = seg_jax_worker.prepare(case)
  kinds = hlo_kind(trainer.train_step.lower(state, batch, key).compile().as_text())

  def run(n):
    nonlocal state
    for _ in range(n):
      state, metrics = trainer.train_step(state, batch, key)
    jax.block_until_ready((state, metrics))

  run(warmup)
  start = time.perf_counter()
  run(steps)
  wall = (time.perf_counter() - start) / steps
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      run(steps)
    path, = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  seconds = collections.Counter()
  for e in events:
    op = e.get("args", {}).get("hlo_op")
    if e.get("ph") == "X" and op in kinds and "train_step" in e["args"].get("hlo_module", ""):
      seconds[kinds[op], op] += e["dur"] / 1e6 / steps
  return wall, dict(seconds)


def profile_torch(case: dict[str, Any], variant: str, seg_jax_info: Mapping[str, Any],
                  warmup: int, steps: int) -> tuple[float, dict[tuple[str, str], float]]:
  """Wall seconds per step and {(kind, operator and shapes): self seconds per step} of the
  PyTorch twin's step."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_worker  # pylint: disable=g-import-not-at-top

  step, _ = torch_worker.build({"case": case, "variant": variant, "seg_jax": seg_jax_info})
  for _ in range(warmup):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  wall = (time.perf_counter() - start) / steps
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                              record_shapes=True) as prof:
    for _ in range(steps):
      step()
  seconds = collections.Counter()
  for avg in prof.key_averages(group_by_input_shape=True):
    shapes = [list(v) for v in avg.input_shapes if v]
    seconds[torch_kind(avg.key, avg.input_shapes), f"{avg.key} {shapes}"] += (
        avg.self_cpu_time_total / 1e6 / steps)
  return wall, dict(seconds)


def by_kind(ops: Mapping[tuple[str, str], float]) -> dict[str, float]:
  """{kind: seconds} of {(kind, op): seconds}."""
  out = collections.Counter()
  for (kind, _), seconds in ops.items():
    out[kind] += seconds
  return dict(out)


def table(columns: Mapping[str, tuple[float, Mapping[str, float]]]) -> str:
  """Markdown: per kind, ms/step (the kind's share of the wall-clock step) and share per side.

  `columns` is {side: (wall seconds per step, {kind: profiled seconds per step})}.
  """
  head = " | ".join(f"{side} ms/step | {side} share" for side in columns)
  lines = [f"| kind | {head} |", "| --- |" + " --- | --- |" * len(columns)]
  totals = {side: sum(kinds.values()) or 1.0 for side, (_, kinds) in columns.items()}
  for kind in KINDS:
    if not any(kinds.get(kind) for _, kinds in columns.values()):
      continue
    cells = []
    for side, (wall, kinds) in columns.items():
      share = kinds.get(kind, 0.0) / totals[side]
      cells.append(f"{1e3 * wall * share:.0f} | {100 * share:.1f} %")
    lines.append(f"| {kind} | " + " | ".join(cells) + " |")
  walls = " | ".join(f"{1e3 * wall:.0f} | 100 %" for wall, _ in columns.values())
  lines.append(f"| whole step (wall clock, untraced) | {walls} |")
  traced = " | ".join(f"{1e3 * totals[side]:.0f} | " for side in columns)
  lines.append(f"| profiled operations (sum over threads, traced) | {traced} |")
  return "\n".join(lines)


def run(cases: Sequence[str], variants: Sequence[str], warmup: int = 2, steps: int = 3,
        toy: bool = False, top: int = 0, ynnpack: bool | None = None) -> None:
  """Prints, per case, the table of kinds (`table`) and each side's `top` largest operations;
  `ynnpack` sets seg_jax's `train.xla_cpu_ynnpack` (None: the config's)."""
  for name in cases:
    case = {**cpu_vs_torch.CASES[name], "toy": toy, "ynnpack": ynnpack}
    print(f"\n{name}: {case['config']}; load average {os.getloadavg()[0]:.2f}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    sides = {"seg_jax": profile_seg_jax(case, warmup, steps)}
    if variants:
      _, info = seg_jax_worker.build({"case": case})
      for variant in variants:
        sides[f"torch {variant}"] = profile_torch(case, variant, info, warmup, steps)
    print(table({side: (wall, by_kind(ops)) for side, (wall, ops) in sides.items()}))
    wall, ops = sides["seg_jax"]
    if untraced_convolutions(ops, wall):
      print("seg_jax's convolutions are not in its trace (XLA:CPU runs them as asynchronous Eigen "
            "tasks when YNNPACK fusions are off): its split by kind is void; rerun with --ynnpack")
    for side, (_, ops) in sides.items():
      if top:
        print(f"\n{side}: the {top} largest operations, ms per step (profiled)")
      for (kind, op), seconds in sorted(ops.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {1e3 * seconds:8.1f}  {kind:48s} {op[:110]}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}", flush=True)


def untraced_convolutions(ops: Mapping[tuple[str, str], float], wall: float) -> bool:
  """Whether the traced convolutions of a step (`profile_seg_jax`) are under 5 % of its wall
  time: XLA:CPU does not trace the convolutions it runs on Eigen's thread pool."""
  return sum(s for (kind, _), s in ops.items() if kind.startswith("conv")) < 0.05 * wall


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  run(f.cases, f.torch, f.warmup, f.steps, f.toy, f.top, True if f.ynnpack else None)


def _torch_installed() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec("torch") is not None


def define_flags() -> None:
  """This command's flags."""
  flags.DEFINE_list("cases", ["unet_dubai"], f"Cases, of {list(cpu_vs_torch.CASES)}.")
  flags.DEFINE_list("torch", ["eager"] if _torch_installed() else [],
                    "PyTorch variants (benchmarks.torch_worker.VARIANTS); empty: seg_jax only.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps before timing and profiling (compiles).")
  flags.DEFINE_integer("steps", 3, "Steps timed, then steps profiled, per side.")
  flags.DEFINE_bool("toy", False, "Toy models at batch 2 of 32x64 (a dry run).")
  flags.DEFINE_integer("top", 0, "Also list this many of each side's largest operations.")
  flags.DEFINE_bool("ynnpack", False, "Compile seg_jax's step with XLA:CPU's YNNPACK fusions "
                    "(train.xla_cpu_ynnpack), whose convolutions the profiler traces.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
