"""PyTorch twins of seg_jax's U-Net family, layer for layer, built from seg_jax's model settings.

`build(settings, bands, num_classes)` reads the fields `seg_jax.models.settings(name, ...)` gives
for a `SegmentationModel` (backbone `unet_encoder`, neck `aspp` or none, decoder `unet`, head
`conv`) and builds the same layers in PyTorch, NCHW, with seg_jax's module names: the state dict
key `backbone.stage0.conv0.conv.weight` is seg_jax's `params/backbone/stage0/conv0/conv/kernel`,
so parameter counts compare per module and `load_seg_jax_variables` copies a seg_jax model's
variables in. Settings this twin does not build (other norms or activations, bilinear upsampling,
decoder SE, separable ASPP, a head conv) raise ValueError rather than build something else.

Written in the style of ../shared/bench/torch_anchor.py (plain modules, functional ReLU); only
benchmarks/cpu_vs_torch.py's PyTorch worker and tests/test_cpu_benchmarks.py import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# Flax BatchNorm keeps momentum * running + (1 - momentum) * batch; PyTorch the opposite weight.
SEG_JAX_BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class Norm(nn.Module):
  """seg_jax.layers.Norm(kind="batch"): its one child is `bn`."""

  def __init__(self, channels: int):
    super().__init__()
    self.bn = nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=1 - SEG_JAX_BN_MOMENTUM)

  def forward(self, x):
    return self.bn(x)


class ConvNormAct(nn.Module):
  """3x3 (or 1x1) "same" conv without bias, BatchNorm, ReLU (seg_jax.layers.ConvNormAct)."""

  def __init__(self, cin: int, cout: int, kernel: int = 3, dilation: int = 1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                          bias=False)
    self.norm = Norm(cout)

  def forward(self, x):
    return F.relu(self.norm(self.conv(x)))


class SqueezeExcitation(nn.Module):
  """seg_jax.layers.SqueezeExcitation: mean over space, Dense-ReLU-Dense-sigmoid gate."""

  def __init__(self, channels: int, reduction: int, min_hidden: int = 8):
    super().__init__()
    hidden = max(channels // reduction, min(min_hidden, channels))
    self.reduce = nn.Linear(channels, hidden)
    self.expand = nn.Linear(hidden, channels)

  def forward(self, x):
    gate = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3))))))
    return x * gate[:, :, None, None]


class ConvStack(nn.Module):
  """`num_convs` ConvNormAct (children conv0, conv1, ...), then optional SE (child `se`)."""

  def __init__(self, cin: int, cout: int, num_convs: int, se_reduction: int | None = None):
    super().__init__()
    self.num_convs = num_convs
    for i in range(num_convs):
      self.add_module(f"conv{i}", ConvNormAct(cin if i == 0 else cout, cout))
    self.se = None if se_reduction is None else SqueezeExcitation(cout, se_reduction)

  def forward(self, x):
    for i in range(self.num_convs):
      x = getattr(self, f"conv{i}")(x)
    return x if self.se is None else self.se(x)


class UNetEncoder(nn.Module):
  """Stages stage0..stageN; stage i > 0 max-pools by 2 first. Returns every stage's output."""

  def __init__(self, bands: int, widths, blocks, se_reduction: int | None):
    super().__init__()
    self.num_stages = len(widths)
    for i, (width, num_convs) in enumerate(zip(widths, blocks)):
      self.add_module(f"stage{i}", ConvStack(bands if i == 0 else widths[i - 1], width,
                                             num_convs, se_reduction))

  def forward(self, x):
    features = []
    for i in range(self.num_stages):
      x = getattr(self, f"stage{i}")(x if i == 0 else F.max_pool2d(x, 2))
      features.append(x)
    return features


class ASPP(nn.Module):
  """seg_jax.layers.ASPP: 1x1, one dilated 3x3 per rate, image pooling; 1x1 projection, dropout."""

  def __init__(self, cin: int, features: int, rates, dropout_rate: float):
    super().__init__()
    self.num_rates = len(rates)
    self.conv1x1 = ConvNormAct(cin, features, kernel=1)
    for i, rate in enumerate(rates):
      self.add_module(f"atrous{i}", ConvNormAct(cin, features, dilation=rate))
    self.image_pool = ConvNormAct(cin, features, kernel=1)
    self.project = ConvNormAct((len(rates) + 2) * features, features, kernel=1)
    self.dropout = nn.Dropout(dropout_rate)

  def forward(self, x):
    branches = [self.conv1x1(x)]
    branches += [getattr(self, f"atrous{i}")(x) for i in range(self.num_rates)]
    pooled = self.image_pool(x.mean((2, 3), keepdim=True))
    branches.append(pooled.expand(-1, -1, *x.shape[2:]))
    return self.dropout(self.project(torch.cat(branches, 1)))


class Upsample2x(nn.Module):
  """2x2 stride-2 transposed conv with bias (seg_jax.models.unet.Upsample2x, "transpose")."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2)

  def forward(self, x):
    return self.conv(x)


class UNetDecoder(nn.Module):
  """Deepest first: up{i} by 2, concatenate [upsampled, skip], stage{i} conv stack."""

  def __init__(self, cin: int, skip_widths, widths, blocks):
    super().__init__()
    self.num_stages = len(widths)
    for i, (skip, width, num_convs) in enumerate(zip(skip_widths, widths, blocks)):
      self.add_module(f"up{i}", Upsample2x(cin, width))
      self.add_module(f"stage{i}", ConvStack(width + skip, width, num_convs))
      cin = width

  def forward(self, x, skips):
    for i, skip in enumerate(skips):
      x = getattr(self, f"up{i}")(x)
      x = getattr(self, f"stage{i}")(torch.cat([x, skip], 1))
    return x


class ClassifierHead(nn.Module):
  """seg_jax's ClassifierHead without a conv: dropout, then a 1x1 conv with bias (`classifier`)."""

  def __init__(self, cin: int, num_classes: int, dropout_rate: float):
    super().__init__()
    self.dropout = nn.Dropout(dropout_rate)
    self.classifier = nn.Conv2d(cin, num_classes, 1)

  def forward(self, x):
    return self.classifier(self.dropout(x))


class SegmentationModel(nn.Module):
  """backbone -> neck (optional) -> decoder -> head, as seg_jax's composition."""

  def __init__(self, backbone, neck, decoder, head):
    super().__init__()
    self.backbone = backbone
    self.neck = neck
    self.decoder = decoder
    self.head = head

  def forward(self, x):
    features = self.backbone(x)
    deepest = features[-1] if self.neck is None else self.neck(features[-1])
    return self.head(self.decoder(deepest, features[-2::-1]))


def _per_stage(value, num: int) -> tuple[int, ...]:
  return (value,) * num if isinstance(value, int) else tuple(value)


def _require(kwargs: Mapping[str, Any], part: str, **expected: Any) -> None:
  """Raises ValueError where `kwargs` sets a field to something this twin does not build."""
  for key, want in expected.items():
    if key in kwargs and kwargs[key] != want:
      raise ValueError(f"{part} {key}={kwargs[key]!r}: the PyTorch twin builds {want!r} only")


def _check_parts(settings: Mapping[str, Any]) -> None:
  parts = {p: settings.get(p, d) for p, d in
           (("backbone", "unet_encoder"), ("neck", "none"), ("decoder", "none"), ("head", "conv"))}
  if (parts["backbone"], parts["decoder"], parts["head"]) != ("unet_encoder", "unet", "conv") or (
      parts["neck"] not in ("aspp", "none")):
    raise ValueError(f"the PyTorch twin builds unet_encoder -> aspp|none -> unet -> conv, got "
                     f"{parts}")
  common = dict(norm="batch", act="relu")
  _require(settings.get("backbone_kwargs", {}), "backbone", dropout_rate=0.0, **common)
  _require(settings.get("neck_kwargs", {}), "neck", image_pooling=True, separable=False, **common)
  _require(settings.get("decoder_kwargs", {}), "decoder", upsample="transpose", se=False,
           skip_se=False, **common)
  _require(settings.get("head_kwargs", {}), "head", features=None, **common)


def build(settings: Mapping[str, Any], bands: int, num_classes: int) -> SegmentationModel:
  """The twin of `seg_jax.models.create(name, num_classes=..., **kw)` whose `settings` are
  `seg_jax.models.settings(name, **kw)`, for images of `bands` channels."""
  _check_parts(settings)
  b = settings.get("backbone_kwargs", {})
  widths = tuple(b["widths"])
  se = b.get("se_reduction", 16) if b.get("se", False) else None
  backbone = UNetEncoder(bands, widths, _per_stage(b.get("blocks", 2), len(widths)), se)
  deepest = widths[-1]
  neck = None
  if settings.get("neck", "none") == "aspp":
    n = settings.get("neck_kwargs", {})
    neck = ASPP(deepest, n.get("features", 256), tuple(n.get("rates", (6, 12, 18))),
                n.get("dropout_rate", 0.1))
    deepest = n.get("features", 256)
  d = settings.get("decoder_kwargs", {})
  skips = widths[-2::-1]
  dec_widths = skips if d.get("widths") is None else _per_stage(d["widths"], len(skips))
  decoder = UNetDecoder(deepest, skips, dec_widths, _per_stage(d.get("blocks", 2), len(skips)))
  head = ClassifierHead(dec_widths[-1], num_classes,
                        settings.get("head_kwargs", {}).get("dropout_rate", 0.0))
  return SegmentationModel(backbone, neck, decoder, head)


def count_params(model: nn.Module) -> int:
  """Trainable scalars (BatchNorm running statistics not counted, as in seg_jax)."""
  return sum(p.numel() for p in model.parameters())


def _seg_jax_array(variables: Mapping[str, Any], key: str) -> np.ndarray:
  """The seg_jax variable that state dict entry `key` of the twin holds, in seg_jax's layout."""
  *path, leaf = key.split(".")
  collection, name = {"weight": ("params", "kernel"), "bias": ("params", "bias"),
                      "running_mean": ("batch_stats", "mean"),
                      "running_var": ("batch_stats", "var")}[leaf]
  if path[-1] == "bn" and leaf == "weight":
    name = "scale"
  node = variables[collection]
  for part in path:
    node = node[part]
  return np.asarray(node[name])


def load_seg_jax_variables(model: SegmentationModel, variables: Mapping[str, Any]) -> None:
  """Copies seg_jax variables ({"params", "batch_stats"}) of the same settings into `model`."""
  modules = dict(model.named_modules())
  state = {}
  for key, tensor in model.state_dict().items():
    if key.endswith("num_batches_tracked"):
      continue
    array = _seg_jax_array(variables, key)
    module = modules[key.rsplit(".", 1)[0]]
    if key.endswith("weight") and isinstance(module, nn.ConvTranspose2d):
      array = array.transpose(2, 3, 0, 1)  # (kh, kw, in, out): seg_jax's is the adjoint conv's
    elif key.endswith("weight") and isinstance(module, nn.Conv2d):
      array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif key.endswith("weight") and isinstance(module, nn.Linear):
      array = array.T  # (in, out) -> (out, in)
    if array.shape != tuple(tensor.shape):
      raise ValueError(f"{key}: seg_jax shape {array.shape} does not fit {tuple(tensor.shape)}")
    state[key] = torch.from_numpy(np.array(array))  # a writable copy
  model.load_state_dict(state, strict=False)
