"""Tests of correlate/convolve, Conv, ConvTranspose, SeparableConv and ConvNormAct."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

from seg_jax import layers

KEY = jax.random.key(0)


def numpy_conv(x, kernel, strides, pads, dilation, groups=1, circular=False):
  """Direct-loop reference: channels-last cross-correlation with groups."""
  ndim = x.ndim - 2
  mode = "wrap" if circular else "constant"
  x = np.pad(x, [(0, 0)] + list(pads) + [(0, 0)], mode=mode)
  kernel_size = kernel.shape[:ndim]
  cin_g, cout = kernel.shape[-2], kernel.shape[-1]
  cout_g = cout // groups
  out_shape = [(x.shape[1 + d] - dilation[d] * (kernel_size[d] - 1) - 1) // strides[d] + 1
               for d in range(ndim)]
  out = np.zeros((x.shape[0], *out_shape, cout))
  for pos in itertools.product(*[range(n) for n in out_shape]):
    for offs in itertools.product(*[range(k) for k in kernel_size]):
      idx = tuple(p * s + o * d for p, s, o, d in zip(pos, strides, offs, dilation))
      patch = x[(slice(None),) + idx]  # (N, Cin)
      for g in range(groups):
        xs = patch[:, g * cin_g:(g + 1) * cin_g]
        w = kernel[offs][:, g * cout_g:(g + 1) * cout_g]
        out[(slice(None),) + pos + (slice(g * cout_g, (g + 1) * cout_g),)] += xs @ w
  return out


def rand(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class CorrelateConvolveTest(parameterized.TestCase):

  @parameterized.product(shape=[(9,), (7, 8), (5, 6, 7)], kernel=[2, 3, 4],
                         mode=["valid", "same", "full"])
  def test_matches_scipy(self, shape, kernel, mode):
    x = rand(shape)
    w = rand((kernel,) * len(shape), seed=1)
    np.testing.assert_allclose(layers.correlate(x, w, mode), scipy.signal.correlate(x, w, mode),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layers.convolve(x, w, mode), scipy.signal.convolve(x, w, mode),
                               rtol=1e-5, atol=1e-5)

  def test_convolution_is_correlation_with_flipped_kernel(self):
    x, w = rand((8, 8)), rand((3, 2), seed=1)
    np.testing.assert_allclose(layers.convolve(x, w, "full"),
                               layers.correlate(x, w[::-1, ::-1], "full"), rtol=1e-6)
    self.assertFalse(np.allclose(layers.convolve(x, w), layers.correlate(x, w)))

  def test_stride_and_dilation_subsample_and_spread(self):
    x, w = rand((11,)), rand((3,), seed=1)
    dense = np.asarray(layers.correlate(x, w, "valid"))
    np.testing.assert_allclose(layers.correlate(x, w, "valid", stride=2), dense[::2], rtol=1e-6)
    for k in (2, 3, 4):
      w_k = rand((k,), seed=k)
      np.testing.assert_allclose(layers.correlate(x, w_k, "same", stride=3),
                                 scipy.signal.correlate(x, w_k, "same")[::3], rtol=1e-5,
                                 atol=1e-6)
    spread = np.zeros(5, np.float32)
    spread[::2] = w
    np.testing.assert_allclose(layers.correlate(x, w, "valid", dilation=2),
                               scipy.signal.correlate(x, spread, "valid"), rtol=1e-5, atol=1e-6)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "kernel rank"):
      layers.correlate(rand((5, 5)), rand((3,)))
    with self.assertRaisesRegex(ValueError, "kernel_size=4"):
      layers.correlate(rand((3,)), rand((4,)), "valid")
    with self.assertRaisesRegex(ValueError, "stride"):
      layers.convolve(rand((5,)), rand((3,)), stride=0)
    with self.assertRaisesRegex(ValueError, "padding"):
      layers.convolve(rand((5,)), rand((3,)), padding="mirror")


class ConvTest(parameterized.TestCase):

  @parameterized.parameters(
      # kernel_size, strides, dilation, padding, groups, input spatial shape
      ((3,), 1, 1, "valid", 1, (9,)),
      ((4,), 2, 1, "same", 1, (9,)),
      ((3,), 3, 2, "full", 1, (10,)),
      ((3, 3), 1, 1, "same", 1, (7, 8)),
      ((2, 4), 2, 1, "same", 1, (7, 9)),
      ((3, 3), 2, 2, 1, 1, (9, 8)),
      ((3, 2), (1, 2), (2, 1), ((2, 0), (1, 1)), 1, (8, 7)),
      ((3, 3), 1, 1, "circular", 1, (6, 5)),
      ((3, 3), 2, 1, "same", 2, (7, 7)),
      ((3, 3), 1, 3, "same", 4, (9, 9)),
      ((2, 3, 2), 1, 1, "same", 1, (4, 5, 3)),
      ((3, 3, 3), 2, 1, "full", 1, (4, 4, 5)),
  )
  def test_matches_numpy_loop(self, kernel_size, strides, dilation, padding, groups, spatial):
    ndim = len(kernel_size)
    x = rand((2, *spatial, 4))
    conv = layers.Conv(4, kernel_size, strides=strides, padding=padding, dilation=dilation,
                       groups=groups)
    variables = conv.init(KEY, x)
    got = conv.apply(variables, x)
    s = layers.arithmetic.as_tuple("s", strides, ndim)
    d = layers.arithmetic.as_tuple("d", dilation, ndim)
    specs = layers.arithmetic.per_dim_padding(padding, ndim)
    pads = [layers.resolve_padding(n, k, si, p, di)
            for n, k, si, p, di in zip(spatial, kernel_size, s, specs, d)]
    kernel = np.asarray(variables["params"]["kernel"])
    want = numpy_conv(x, kernel, s, pads, d, groups, circular=padding == "circular")
    want += np.asarray(variables["params"]["bias"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for n, k, si, p, di, o in zip(spatial, kernel_size, s, specs, d, got.shape[1:-1]):
      self.assertEqual(o, layers.conv_output_size(n, k, si, p, di))

  def test_output_shape_equals_formula_grid(self):
    """The layer's shape agrees with conv_output_size over the whole small grid (1D, traced)."""
    for size, kernel, stride, dilation, padding in itertools.product(
        range(1, 13), range(1, 6), range(1, 4), range(1, 4),
        ("valid", "same", "full", "circular", 1, (0, 2))):
      conv = layers.Conv(1, (kernel,), strides=stride, dilation=dilation, padding=padding)
      x = jax.ShapeDtypeStruct((1, size, 1), jnp.float32)
      try:
        expected = layers.conv_output_size(size, kernel, stride, padding, dilation)
      except ValueError:
        with self.assertRaises(ValueError):
          jax.eval_shape(conv.init_with_output, KEY, x)
        continue
      out, _ = jax.eval_shape(conv.init_with_output, KEY, x)
      self.assertEqual(out.shape, (1, expected, 1), (size, kernel, stride, dilation, padding))

  def test_depthwise_has_one_filter_per_channel(self):
    x = rand((1, 6, 6, 5))
    conv = layers.Conv(5, (3, 3), groups=5, use_bias=False)
    variables = conv.init(KEY, x)
    self.assertEqual(variables["params"]["kernel"].shape, (3, 3, 1, 5))
    # Changing channel 0 of the input changes only channel 0 of the output.
    delta = np.zeros_like(x)
    delta[..., 0] = 1.0
    diff = conv.apply(variables, x + delta) - conv.apply(variables, x)
    self.assertGreater(float(jnp.abs(diff[..., 0]).max()), 0)
    self.assertEqual(float(jnp.abs(diff[..., 1:]).max()), 0.0)

  @parameterized.parameters(jnp.float32, jnp.bfloat16)
  def test_dtypes(self, dtype):
    x = rand((2, 8, 8, 3))
    conv = layers.Conv(4, (3, 3), dtype=dtype)
    variables = conv.init(KEY, x)
    self.assertEqual(variables["params"]["kernel"].dtype, jnp.float32)
    y = conv.apply(variables, x)
    self.assertEqual(y.dtype, dtype)
    ref = layers.Conv(4, (3, 3)).apply(variables, x)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=0.05, atol=0.05)

  @parameterized.named_parameters(
      ("kernel_too_large", dict(features=2, kernel_size=(5, 5), padding="valid"), (1, 4, 4, 1),
       "kernel_size=5"),
      ("zero_stride", dict(features=2, kernel_size=(3, 3), strides=0), (1, 8, 8, 1), "strides"),
      ("negative_dilation", dict(features=2, kernel_size=(3, 3), dilation=-2), (1, 8, 8, 1),
       "dilation"),
      ("unknown_padding", dict(features=2, kernel_size=(3, 3), padding="reflect"), (1, 8, 8, 1),
       "reflect"),
      ("rank_mismatch", dict(features=2, kernel_size=(3, 3)), (1, 8, 1), "rank 4"),
      ("bad_groups", dict(features=2, kernel_size=(3, 3), groups=3), (1, 8, 8, 4), "groups=3"),
      ("four_d", dict(features=2, kernel_size=(1, 1, 1, 1)), (1, 2, 2, 2, 2, 1), "1, 2 or 3"),
  )
  def test_bad_input(self, kwargs, shape, message):
    with self.assertRaisesRegex(ValueError, message):
      layers.Conv(**kwargs).init(KEY, jnp.ones(shape))


class ConvTransposeTest(parameterized.TestCase):

  @parameterized.parameters(
      ((3,), 1, 1, "valid", 0, (6,)),
      ((3,), 2, 1, "valid", 1, (5,)),
      ((4,), 2, 1, "same", 0, (5,)),
      ((3,), 2, 1, "same", 1, (5,)),
      ((3,), 3, 2, "full", 2, (4,)),
      ((2, 2), 2, 1, "valid", 0, (4, 5)),
      ((3, 3), 2, 1, 1, 1, (4, 3)),
      ((3, 3), 2, 2, "same", 0, (3, 4)),
      ((3, 2), (2, 1), (1, 2), ((1, 0), (0, 1)), (1, 0), (3, 4)),
      ((2, 3, 3), 2, 1, "same", 0, (2, 3, 3)),
  )
  def test_adjoint_of_conv_and_shape(self, kernel_size, strides, dilation, padding,
                                     output_padding, spatial):
    ndim = len(kernel_size)
    tconv = layers.ConvTranspose(3, kernel_size, strides=strides, padding=padding,
                                 dilation=dilation, output_padding=output_padding,
                                 use_bias=False)
    y = rand((2, *spatial, 4))
    variables = tconv.init(KEY, y)
    x_hat = tconv.apply(variables, y)
    s = layers.arithmetic.as_tuple("s", strides, ndim)
    d = layers.arithmetic.as_tuple("d", dilation, ndim)
    ops = (tuple(output_padding) if isinstance(output_padding, tuple)
           else (output_padding,) * ndim)
    specs = layers.arithmetic.per_dim_padding(padding, ndim)
    expected = tuple(layers.conv_transpose_output_size(n, k, si, p, di, o)
                     for n, k, si, p, di, o in zip(spatial, kernel_size, s, specs, d, ops))
    self.assertEqual(x_hat.shape, (2, *expected, 3))
    conv = layers.Conv(4, kernel_size, strides=strides, padding=padding, dilation=dilation,
                       use_bias=False)
    kernel = jnp.swapaxes(variables["params"]["kernel"], -1, -2)
    x = rand(x_hat.shape, seed=2)
    conv_x = conv.apply({"params": {"kernel": kernel}}, x)
    self.assertEqual(conv_x.shape, y.shape)
    lhs = float(jnp.vdot(conv_x, y))
    rhs = float(jnp.vdot(x, x_hat))
    self.assertAlmostEqual(lhs, rhs, delta=1e-4 * max(1.0, abs(lhs)))

  @parameterized.parameters(
      ((2,), (4,)), ((2, 2), (5, 3)), ((3, 2), (2, 4)), ((1, 2), (3, 3)), ((2, 2, 2), (2, 3, 2)))
  def test_kernel_equal_to_stride_matches_the_dilated_convolution(self, kernel_size, spatial):
    # Such a layer is computed as a matmul and depth-to-space; its value and gradients must
    # equal those of the lhs-dilated convolution it replaces, with the same parameters.
    ndim = len(kernel_size)
    tconv = layers.ConvTranspose(4, kernel_size, strides=kernel_size)
    x = jnp.asarray(rand((2, *spatial, 3)))
    shapes = jax.tree.map(jnp.shape, tconv.init(KEY, x)["params"])
    self.assertEqual(shapes, {"kernel": (*kernel_size, 3, 4), "bias": (4,)})
    params = {"kernel": jnp.asarray(rand((*kernel_size, 3, 4), seed=1)),
              "bias": jnp.asarray(rand((4,), seed=2))}
    spatial_dims = "DHW"[-ndim:]

    def dilated(params, x):
      flipped = jnp.flip(params["kernel"], axis=tuple(range(ndim)))
      y = jax.lax.conv_general_dilated(
          x, flipped, (1,) * ndim, [(k - 1, k - 1) for k in kernel_size],
          lhs_dilation=kernel_size,
          dimension_numbers=(f"N{spatial_dims}C", f"{spatial_dims}IO", f"N{spatial_dims}C"))
      return y + params["bias"]

    def layer(params, x):
      return tconv.apply({"params": params}, x)

    cotangent = jnp.asarray(rand(dilated(params, x).shape, seed=3))
    for fn in (layer, dilated):
      self.assertEqual(fn(params, x).shape, (2, *(n * k for n, k in zip(spatial, kernel_size)), 4))
    got, got_vjp = jax.vjp(layer, params, x)
    want, want_vjp = jax.vjp(dilated, params, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(jax.tree.leaves(got_vjp(cotangent)), jax.tree.leaves(want_vjp(cotangent))):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)

  def test_stride_two_kernel_two_doubles(self):
    y = rand((1, 3, 5, 2))
    tconv = layers.ConvTranspose(2, (2, 2), strides=2)
    self.assertEqual(tconv.apply(tconv.init(KEY, y), y).shape, (1, 6, 10, 2))

  def test_bad_output_padding(self):
    with self.assertRaisesRegex(ValueError, "output_padding"):
      layers.ConvTranspose(2, (3, 3), strides=2, output_padding=2).init(KEY, jnp.ones((1, 4, 4, 1)))


class SeparableAndConvNormActTest(parameterized.TestCase):

  def test_separable_is_depthwise_then_pointwise(self):
    x = rand((2, 7, 9, 6))
    sep = layers.SeparableConv(10, (3, 3), strides=2, dilation=1)
    variables = sep.init(KEY, x)
    params = variables["params"]
    self.assertEqual(params["depthwise"]["kernel"].shape, (3, 3, 1, 6))
    self.assertEqual(params["pointwise"]["kernel"].shape, (1, 1, 6, 10))
    got = sep.apply(variables, x)
    depth = layers.Conv(6, (3, 3), strides=2, groups=6, use_bias=False).apply(
        {"params": params["depthwise"]}, x)
    want = layers.Conv(10, (1, 1), use_bias=False).apply({"params": params["pointwise"]}, depth)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    self.assertEqual(got.shape, (2, 4, 5, 10))

  def test_separable_mid_norm_uses_train_flag(self):
    x = rand((2, 8, 8, 4))
    sep = layers.SeparableConv(4, mid_norm="batch", mid_act="relu")
    variables = sep.init(KEY, x, train=False)
    _, updates = sep.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["mid_norm"]["bn"]["mean"]
    self.assertFalse(np.allclose(updates["batch_stats"]["mid_norm"]["bn"]["mean"], before))

  def test_separable_conv_norm_act(self):
    x = rand((2, 9, 9, 4))
    block = layers.SeparableConvNormAct(8, (3, 3), strides=2, dilation=1)
    variables = block.init(KEY, x, train=False)
    self.assertEqual(set(variables["params"]), {"conv", "norm"})
    self.assertIn("mid_norm", variables["params"]["conv"])
    y, _ = block.apply(variables, x, train=True, mutable=["batch_stats"])
    self.assertEqual(y.shape, (2, 5, 5, 8))
    self.assertGreaterEqual(float(y.min()), 0.0)

  @parameterized.parameters("batch", "group", "layer", "instance", "none")
  def test_conv_norm_act(self, norm):
    x = rand((2, 8, 8, 3))
    block = layers.ConvNormAct(32, (3, 3), strides=2, norm=norm, act="relu")
    variables = block.init(KEY, x, train=False)
    y, _ = block.apply(variables, x, train=True, mutable=["batch_stats"])
    self.assertEqual(y.shape, (2, 4, 4, 32))
    self.assertGreaterEqual(float(y.min()), 0.0)
    self.assertEqual("bias" in variables["params"]["conv"], norm == "none")

  def test_norm_given_by_its_fields(self):
    # A config can hold the group count: GroupNorm of 4 groups of 2 channels, no conv bias.
    x = rand((2, 6, 6, 4))
    for block in (layers.ConvNormAct(8, norm={"kind": "group", "num_groups": 4}),
                  layers.SeparableConvNormAct(8, norm={"kind": "group", "num_groups": 4})):
      variables = block.init(KEY, x, train=False)
      self.assertNotIn("batch_stats", variables)
      self.assertGreaterEqual(float(block.apply(variables, x, train=True).min()), 0.0)
    self.assertNotIn("bias", variables["params"]["conv"]["pointwise"])
    pre = layers.ConvNormAct(8, norm={"kind": "group", "num_groups": 4}, act="identity")
    y = np.asarray(pre.apply(pre.init(KEY, x, train=False), x, train=False))
    groups = y.reshape(2, 36, 4, 2).transpose(0, 2, 1, 3).reshape(2, 4, -1)
    np.testing.assert_allclose(groups.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(groups.std(-1), 1.0, atol=1e-2)
    none = layers.ConvNormAct(8, norm={"kind": "none"})
    self.assertIn("bias", none.init(KEY, x, train=False)["params"]["conv"])

  def test_conv_norm_act_injected_parts(self):
    x = rand((1, 5, 5, 2))
    block = layers.ConvNormAct(3, (1, 1), norm="none", act=lambda v: v * 0 + 7.0)
    y = block.apply(block.init(KEY, x, train=False), x, train=False)
    np.testing.assert_allclose(y, np.full((1, 5, 5, 3), 7.0))


class LocallyConnectedTest(parameterized.TestCase):

  @parameterized.parameters((1, "same", 1), (2, "same", 1), (1, "valid", 2), (2, 1, 1))
  def test_equals_conv_with_the_kernel_tiled(self, strides, padding, dilation):
    x = jax.random.normal(jax.random.key(1), (2, 9, 11, 3))
    conv = layers.Conv(4, (3, 3), strides=strides, padding=padding, dilation=dilation)
    local = layers.LocallyConnected(4, (3, 3), strides=strides, padding=padding,
                                    dilation=dilation)
    conv_vars = conv.init(jax.random.key(0), x)
    local_vars = local.init(jax.random.key(0), x)
    expected = conv.apply(conv_vars, x)
    kernel = conv_vars["params"]["kernel"]  # (kh, kw, C, F); patches are channel-major.
    flat = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, 4)
    positions = local_vars["params"]["kernel"].shape[:2]
    self.assertEqual(positions, expected.shape[1:3])
    tiled = jnp.broadcast_to(flat, positions + flat.shape)
    params = {"kernel": tiled, "bias": conv_vars["params"]["bias"]}
    np.testing.assert_allclose(local.apply({"params": params}, x), expected, rtol=1e-5,
                               atol=1e-5)

  def test_circular_padding_rejected(self):
    with self.assertRaisesRegex(ValueError, "circular"):
      layers.LocallyConnected(4, padding="circular").init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))

  def test_kernel_larger_than_input_rejected(self):
    with self.assertRaisesRegex(ValueError, "larger than the padded input"):
      layers.LocallyConnected(4, (5, 5), padding="valid").init(jax.random.key(0), jnp.zeros((1, 4, 8, 4)))

  def test_groups_rejected(self):
    with self.assertRaisesRegex(ValueError, "groups"):
      layers.LocallyConnected(4, groups=2).init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


if __name__ == "__main__":
  absltest.main()
