"""Jittable augmentation of uint8 batches on the accelerator; image and mask share every geometric transform.

Geometry (flips, rot90, scale + crop, rotation) is one affine map per example:
each output pixel reads the image bilinearly and the mask at the nearest
source pixel, so class values are never blended. Output pixels that map
outside the source get `ignore_index`. Flips and rot90 alone map pixel
centres onto pixel centres, so they permute pixels exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Rotation by k quarter turns in (y, x) coordinates, exact integers.
_ROT90 = np.array([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]]],
                  np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]], np.float32)
_LUMA = _RGB_TO_YIQ[0]
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _geometry(key, h: int, w: int, cfg):
  """Per-example (2x2 matrix, offset) mapping centred output (y, x) to centred source (y, x)."""
  # Seven keys, one unused, so that every draw stays tied to its key index.
  k_flip_h, k_flip_v, k_rot90, k_scale, k_angle, k_ty, _ = jax.random.split(key, 7)
  m = jnp.eye(2, dtype=jnp.float32)
  if cfg.rot90:
    # Quarter turns keep the shape only for square images; others get half turns.
    if h == w:
      k = jax.random.randint(k_rot90, (), 0, 4)
    else:
      k = 2 * jax.random.randint(k_rot90, (), 0, 2)
    m = jnp.asarray(_ROT90)[k] @ m
  if cfg.hflip:
    m = m * jnp.where(jax.random.bernoulli(k_flip_h), jnp.array([1., -1.]), 1.)[None, :]
  if cfg.vflip:
    m = m * jnp.where(jax.random.bernoulli(k_flip_v), jnp.array([-1., 1.]), 1.)[None, :]
  if cfg.rotate_degrees > 0:
    a = jnp.deg2rad(jax.random.uniform(k_angle, (), minval=-cfg.rotate_degrees,
                                       maxval=cfg.rotate_degrees))
    c, s = jnp.cos(a), jnp.sin(a)
    m = jnp.array([[c, -s], [s, c]]) @ m
  offset = jnp.zeros(2, jnp.float32)
  if cfg.scale_min != 1.0 or cfg.scale_max != 1.0:
    if not 0 < cfg.scale_min <= cfg.scale_max:
      raise ValueError(
          f"augment scale_min/scale_max must satisfy 0 < min <= max, got "
          f"{cfg.scale_min}, {cfg.scale_max}.")
    scale = jax.random.uniform(k_scale, (), minval=cfg.scale_min, maxval=cfg.scale_max)
    m = m / scale
    # A random crop of the zoomed image: the window stays inside the source when scale >= 1.
    room = jnp.maximum(1.0 - 1.0 / scale, 0.0) * jnp.array([(h - 1) / 2, (w - 1) / 2])
    offset = room * jax.random.uniform(k_ty, (2,), minval=-1.0, maxval=1.0)
  return m, offset


def _warp(image, label, m, offset, ignore_index: int):
  """Samples one image bilinearly and its label at the nearest pixel through (m, offset).

  `image` (H, W, C) and `label` (H, W) keep their stored dtype (uint8, or a raster's): each
  tap reads the narrow values and converts them to float32, and the label becomes int32 after
  the lookup. Returns (float32 image, int32 label).
  """
  h, w = label.shape
  cy, cx = (h - 1) / 2, (w - 1) / 2
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                        jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
  sy = m[0, 0] * yy + m[0, 1] * xx + offset[0] + cy
  sx = m[1, 0] * yy + m[1, 1] * xx + offset[1] + cx
  ny = jnp.round(sy).astype(jnp.int32)
  nx = jnp.round(sx).astype(jnp.int32)
  inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
  flat_label = label.reshape(-1)
  picked = flat_label[jnp.clip(ny, 0, h - 1) * w + jnp.clip(nx, 0, w - 1)].astype(jnp.int32)
  new_label = jnp.where(inside, picked, ignore_index)
  y0 = jnp.floor(sy)
  x0 = jnp.floor(sx)
  wy = (sy - y0)[..., None]
  wx = (sx - x0)[..., None]
  flat = image.reshape(-1, image.shape[-1])

  def tap(dy, dx):
    iy = jnp.clip(y0.astype(jnp.int32) + dy, 0, h - 1)
    ix = jnp.clip(x0.astype(jnp.int32) + dx, 0, w - 1)
    return flat[iy * w + ix].astype(jnp.float32)

  top = tap(0, 0) * (1 - wx) + tap(0, 1) * wx
  bottom = tap(1, 0) * (1 - wx) + tap(1, 1) * wx
  return top * (1 - wy) + bottom * wy, new_label


def _factor(key, amount: float):
  return jax.random.uniform(key, (), minval=max(0.0, 1.0 - amount), maxval=1.0 + amount)


def _colour_affine(key, channel_mean, cfg):
  """Brightness, contrast, saturation and hue jitter of one RGB image as one map x -> a @ x + o.

  Each step is affine in RGB, so composing them costs one pass over the pixels.
  `channel_mean` (3,) is the image's mean colour, which sets the contrast pivot.
  """
  k_b, k_c, k_s, k_h = jax.random.split(key, 4)
  a = jnp.eye(3, dtype=jnp.float32)
  o = jnp.zeros(3, jnp.float32)
  luma = jnp.asarray(_LUMA)
  if cfg.brightness > 0:
    f = _factor(k_b, cfg.brightness)
    a, o = f * a, f * o
  if cfg.contrast > 0:
    f = _factor(k_c, cfg.contrast)
    gray_mean = luma @ (a @ channel_mean + o)
    a, o = f * a, f * o + (1 - f) * gray_mean
  if cfg.saturation > 0:
    f = _factor(k_s, cfg.saturation)
    sat = f * jnp.eye(3) + (1 - f) * jnp.outer(jnp.ones(3), luma)
    a, o = sat @ a, sat @ o
  if cfg.hue > 0:
    angle = jax.random.uniform(k_h, (), minval=-cfg.hue, maxval=cfg.hue) * 2 * jnp.pi
    c, s = jnp.cos(angle), jnp.sin(angle)
    rot = jnp.array([[1., 0., 0.], [0., c, -s], [0., s, c]])
    hue = jnp.asarray(_YIQ_TO_RGB) @ rot @ jnp.asarray(_RGB_TO_YIQ)
    a, o = hue @ a, hue @ o
  return a, o


def _has_geometry(cfg) -> bool:
  """Whether `cfg` moves any pixel: a flip, rot90, a scale range other than 1 or a rotation."""
  return bool(cfg.hflip or cfg.vflip or cfg.rot90 or cfg.scale_min != 1.0 or
              cfg.scale_max != 1.0 or cfg.rotate_degrees != 0)


def has_colour_jitter(cfg) -> bool:
  """Whether `cfg` (a `data.augment` group) changes colours: brightness, contrast, saturation
  or hue."""
  return bool(cfg.enabled and (cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0
                               or cfg.hue > 0))


def _jitter_colours(images, keys, rgb, cfg):
  """Colour jitter of the red, green and blue channels `rgb` of float32 images (B, H, W, C)."""
  whole = tuple(rgb) == tuple(range(images.shape[-1]))  # an RGB image: no gather, no scatter
  colour = images if whole else images[..., list(rgb)]
  a, o = jax.vmap(lambda k, m: _colour_affine(k, m, cfg))(keys, colour.mean(axis=(1, 2)))
  # A weighted channel sum fuses into one pass; a dot of width 3 is slow on CPU.
  colour = sum(colour[..., k:k + 1] * a[:, None, None, :, k] for k in range(3))
  colour = colour + o[:, None, None, :]
  return colour if whole else images.at[..., list(rgb)].set(colour)


def augment_batch(images, labels, rng, aug_config, ignore_index: int = 255,
                  rgb: tuple[int, ...] = (0, 1, 2),
                  value_range: tuple[float, float] = (0.0, 255.0)):
  """Augments a batch: images (B, H, W, C), labels (B, H, W) -> (float32, int32).

  `aug_config` is the `data.augment` group; its values are read at trace time. Images are
  uint8 RGB (C = 3) or any bands of a raster; colour jitter changes the channels `rgb` (red,
  green, blue: () for none, and then it is refused), and the result is clipped to
  `value_range` ([0, 255] for uint8).
  """
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got {images.shape}.")
  if labels.shape != images.shape[:3]:
    raise ValueError(f"labels must be {images.shape[:3]}, got {labels.shape}.")
  if has_colour_jitter(aug_config) and len(rgb) != 3:
    raise ValueError("colour jitter (data.augment brightness, contrast, saturation, hue) "
                     "changes red, green and blue bands, and the data names none: set "
                     "data.rgb_bands, or turn the jitter off")
  if not aug_config.enabled:
    return images.astype(jnp.float32), labels.astype(jnp.int32)
  b, h, w, _ = images.shape
  keys = jax.random.split(rng, 2 * b + 1)
  geo_keys, colour_keys, noise_key = keys[:b], keys[b:2 * b], keys[2 * b]
  if _has_geometry(aug_config):
    m, offset = jax.vmap(lambda k: _geometry(k, h, w, aug_config))(geo_keys)
    images, labels = jax.vmap(lambda i, l, mm, o: _warp(i, l, mm, o, ignore_index))(
        images, labels, m, offset)
  else:
    # With every geometric option off the warp is the identity map: skip it.
    images = images.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
  if has_colour_jitter(aug_config):
    images = _jitter_colours(images, colour_keys, tuple(rgb), aug_config)
  if aug_config.noise_std > 0:
    # One draw for the whole batch: threefry inside vmap is several times slower on CPU.
    images = images + aug_config.noise_std * jax.random.normal(noise_key, images.shape)
  return jnp.clip(images, *value_range), labels


def normalize(images, mean, std):
  """(images - mean) / std per channel, as float32."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (jnp.asarray(images, jnp.float32) - mean) / std
