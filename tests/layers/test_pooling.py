"""Tests of pooling against NumPy loops, and of resizing."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import layers


def numpy_pool(x, window, strides, pads, reduce, fill):
  """Direct-loop pooling reference; ``fill`` marks padded cells, which ``reduce`` must skip."""
  ndim = x.ndim - 2
  x = np.pad(x.astype(np.float64), [(0, 0)] + list(pads) + [(0, 0)], constant_values=np.nan)
  out_shape = [(x.shape[1 + d] - window[d]) // strides[d] + 1 for d in range(ndim)]
  out = np.zeros((x.shape[0], *out_shape, x.shape[-1]))
  for pos in itertools.product(*[range(n) for n in out_shape]):
    sl = tuple(slice(p * s, p * s + w) for p, s, w in zip(pos, strides, window))
    patch = x[(slice(None),) + sl + (slice(None),)].reshape(x.shape[0], -1, x.shape[-1])
    out[(slice(None),) + pos] = reduce(patch, fill)
  return out


def _max(p, _):
  return np.nanmax(p, axis=1)


def _min(p, _):
  return np.nanmin(p, axis=1)


def _mean_all(p, _):
  return np.nansum(p, axis=1) / p.shape[1]


def _mean_valid(p, _):
  return np.nanmean(p, axis=1)


def _l3(p, _):
  return np.nansum(np.abs(p) ** 3, axis=1) ** (1 / 3)


def rand(shape):
  return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


CASES = [
    # spatial shape, window, strides, padding
    ((9,), (3,), None, "valid"),
    ((9,), (2,), 1, "same"),
    ((7, 8), (2, 2), None, "valid"),
    ((7, 8), (3, 3), 2, "same"),
    ((6, 7), (2, 3), (1, 2), "full"),
    ((6, 6), (3, 3), 2, 1),
    ((5, 6), (2, 2), 1, ((1, 0), (0, 1))),
    ((4, 5, 6), (2, 2, 3), 2, "same"),
]


class PoolingTest(parameterized.TestCase):

  @parameterized.parameters(*CASES)
  def test_against_numpy(self, spatial, window, strides, padding):
    x = rand((2, *spatial, 3))
    ndim = len(spatial)
    s = window if strides is None else layers.arithmetic.as_tuple("s", strides, ndim)
    specs = layers.arithmetic.per_dim_padding(padding, ndim)
    pads = [layers.resolve_padding(n, w, si, p) for n, w, si, p in zip(spatial, window, s, specs)]
    checks = [
        (layers.max_pool(x, window, strides, padding), _max),
        (layers.min_pool(x, window, strides, padding), _min),
        (layers.avg_pool(x, window, strides, padding), _mean_all),
        (layers.avg_pool(x, window, strides, padding, count_include_pad=False), _mean_valid),
        (layers.lp_pool(x, window, strides, padding, p=3), _l3),
    ]
    for got, reduce in checks:
      want = numpy_pool(x, window, s, pads, reduce, None)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=reduce.__name__)
      for n, w, si, p, o in zip(spatial, window, s, specs, got.shape[1:-1]):
        self.assertEqual(o, layers.conv_output_size(n, w, si, p))

  @parameterized.parameters("max_pool", "min_pool", "avg_pool", "lp_pool")
  def test_differentiable_under_jit(self, name):
    pool = getattr(layers, name)
    x = rand((2, 6, 6, 3))
    grad = jax.jit(jax.grad(lambda v: pool(v, (2, 2), padding="same").sum()))(x)
    self.assertEqual(grad.shape, x.shape)
    if name in ("max_pool", "min_pool"):
      # Each non-overlapping window passes its gradient to exactly one input.
      np.testing.assert_allclose(np.asarray(grad).sum(), 2 * 3 * 3 * 3)
      self.assertEqual(int((np.asarray(grad) != 0).sum()), 2 * 3 * 3 * 3)
    if name == "avg_pool":
      np.testing.assert_allclose(grad, np.full(x.shape, 0.25), rtol=1e-6)

  def test_global_pools(self):
    x = rand((2, 4, 5, 3))
    np.testing.assert_allclose(layers.global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(layers.global_max_pool(x), x.max(axis=(1, 2)))
    self.assertEqual(layers.global_avg_pool(x, keepdims=True).shape, (2, 1, 1, 3))
    self.assertEqual(layers.global_max_pool(rand((2, 3, 3)), keepdims=False).shape, (2, 3))

  def test_bfloat16(self):
    x = jnp.asarray(rand((1, 4, 4, 2)), jnp.bfloat16)
    self.assertEqual(layers.max_pool(x, (2, 2)).dtype, jnp.bfloat16)
    self.assertEqual(layers.avg_pool(x, (2, 2), padding="same").dtype, jnp.bfloat16)

  @parameterized.named_parameters(
      ("window_rank", dict(window=(2, 2, 2)), "window"),
      ("window_too_large", dict(window=(5, 5)), "kernel_size=5"),
      ("zero_stride", dict(window=(2, 2), strides=0), "strides"),
      ("unknown_padding", dict(window=(2, 2), padding="wrap"), "padding"),
      ("circular", dict(window=(2, 2), padding="circular"), "circular"),
  )
  def test_bad_input(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      layers.max_pool(jnp.ones((1, 4, 4, 1)), **kwargs)

  def test_lp_pool_rejects_non_positive_p(self):
    with self.assertRaisesRegex(ValueError, "p must be positive"):
      layers.lp_pool(jnp.ones((1, 4, 4, 1)), (2, 2), p=0)


class AdaptiveAvgPoolTest(parameterized.TestCase):

  @parameterized.parameters(((10, 13), (7, 7)), ((2, 3), (4, 4)), ((7, 7), (7, 7)),
                            ((9, 5), (4, 2)))
  def test_adaptive_avg_pool_matches_torch_bins(self, size, bins):
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    expected = np.zeros((2, *bins, 3), np.float32)
    for i in range(bins[0]):
      for j in range(bins[1]):
        h0, h1 = (i * size[0]) // bins[0], -(-(i + 1) * size[0] // bins[0])
        w0, w1 = (j * size[1]) // bins[1], -(-(j + 1) * size[1] // bins[1])
        expected[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    np.testing.assert_allclose(layers.adaptive_avg_pool(jnp.asarray(x), bins), expected,
                               rtol=1e-6, atol=1e-6)


class ResizeTest(absltest.TestCase):

  def test_bilinear_matches_half_pixel_reference(self):
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 4, 1)
    y = layers.resize(x, (1, 8))
    # Half-pixel centres with edge clamping (PyTorch align_corners=False).
    want = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]
    np.testing.assert_allclose(y[0, 0, :, 0], want, rtol=1e-6)

  def test_nearest_keeps_labels(self):
    labels = np.array([[0, 1], [2, 3]], np.float32)[None, :, :, None]
    y = layers.resize(labels, (4, 4), method="nearest")
    self.assertEqual(set(np.unique(y).tolist()), {0.0, 1.0, 2.0, 3.0})

  def test_bad_method(self):
    with self.assertRaisesRegex(ValueError, "method"):
      layers.resize(jnp.ones((1, 2, 2, 1)), (4, 4), method="bicubic")


if __name__ == "__main__":
  absltest.main()
