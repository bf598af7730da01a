"""Tests of the convolution arithmetic helpers."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from seg_jax import layers

PADDINGS = ("valid", "same", "full", 0, 1, 2, (0, 1), (2, 0), (1, 3))


def brute_force_output_size(size, kernel, stride, padding, dilation):
  """Counts kernel placements on an explicitly padded NumPy row."""
  lo, hi = padding
  padded = np.zeros(size + lo + hi)
  k_e = dilation * (kernel - 1) + 1
  return len(range(0, len(padded) - k_e + 1, stride))


class ConvOutputSizeTest(parameterized.TestCase):

  def test_exhaustive_grid_matches_placement_count_and_xla(self):
    """Sizes 1-12, kernels 1-5, strides 1-3, dilations 1-3, every padding."""
    for size, kernel, stride, dilation, padding in itertools.product(
        range(1, 13), range(1, 6), range(1, 4), range(1, 4), PADDINGS):
      k_e = dilation * (kernel - 1) + 1
      lo, hi = layers.resolve_padding(size, kernel, stride, padding, dilation)
      if size + lo + hi < k_e:
        with self.assertRaisesRegex(ValueError, "kernel_size"):
          layers.conv_output_size(size, kernel, stride, padding, dilation)
        continue
      got = layers.conv_output_size(size, kernel, stride, padding, dilation)
      self.assertEqual(got, brute_force_output_size(size, kernel, stride, (lo, hi), dilation),
                       (size, kernel, stride, dilation, padding))
      if padding == "same":
        self.assertEqual(got, -(-size // stride))
        # XLA's own SAME padding gives the same low/high split.
        xla = jax.lax.padtype_to_pads((size,), (k_e,), (stride,), "SAME")[0]
        self.assertEqual((lo, hi), tuple(xla), (size, kernel, stride, dilation))
      if padding == "full" and stride == 1:
        self.assertEqual(got, size + k_e - 1)

  def test_same_puts_extra_pixel_on_high_side(self):
    self.assertEqual(layers.resolve_padding(5, 2, 1, "same"), (0, 1))
    self.assertEqual(layers.resolve_padding(6, 4, 1, "same"), (1, 2))
    self.assertEqual(layers.resolve_padding(6, 3, 2, "same"), (0, 1))

  def test_transpose_size_inverts_conv_size(self):
    for size, kernel, stride, dilation, padding in itertools.product(
        range(1, 9), range(1, 6), range(1, 4), range(1, 3), ("valid", "same", "full", 1)):
      for output_padding in range(stride):
        try:
          out = layers.conv_transpose_output_size(size, kernel, stride, padding, dilation,
                                                  output_padding)
        except ValueError:
          continue
        self.assertEqual(layers.conv_output_size(out, kernel, stride, padding, dilation), size,
                         (size, kernel, stride, dilation, padding, output_padding))

  def test_transpose_size_examples(self):
    self.assertEqual(layers.conv_transpose_output_size(4, 2, 2), 8)
    self.assertEqual(layers.conv_transpose_output_size(4, 3, 2, "same"), 8)
    self.assertEqual(layers.conv_transpose_output_size(4, 3, 2, 1, output_padding=1), 8)
    self.assertEqual(layers.conv_transpose_output_size(4, 3, 1, "full"), 2)

  def test_receptive_field(self):
    self.assertEqual(layers.receptive_field([(3, 1)] * 2), (5, 1))
    self.assertEqual(layers.receptive_field([(7, 2), (3, 2)]), (11, 4))
    self.assertEqual(layers.receptive_field([(3, 1, 2), (3, 1, 4)]), (13, 1))
    # VGG-16 up to pool5: 13 convs 3x3 and 5 pools 2x2/2.
    vgg = [(3, 1)] * 2 + [(2, 2)] + [(3, 1)] * 2 + [(2, 2)] + ([(3, 1)] * 3 + [(2, 2)]) * 3
    self.assertEqual(layers.receptive_field(vgg), (212, 32))

  @parameterized.named_parameters(
      ("zero_stride", dict(size=5, kernel_size=3, stride=0), "stride"),
      ("negative_dilation", dict(size=5, kernel_size=3, dilation=-1), "dilation"),
      ("zero_kernel", dict(size=5, kernel_size=0), "kernel_size"),
      ("unknown_padding", dict(size=5, kernel_size=3, padding="reflect"), "padding"),
      ("negative_padding", dict(size=5, kernel_size=3, padding=-1), "padding"),
      ("kernel_too_large", dict(size=3, kernel_size=5), "kernel_size=5"),
      ("dilated_too_large", dict(size=5, kernel_size=3, dilation=3), "dilation=3"),
  )
  def test_bad_input(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      layers.conv_output_size(**kwargs)

  def test_bad_output_padding(self):
    with self.assertRaisesRegex(ValueError, "output_padding"):
      layers.conv_transpose_output_size(4, 3, 2, output_padding=2)

  def test_bad_receptive_field_layer(self):
    with self.assertRaisesRegex(ValueError, r"layers\[1\] stride"):
      layers.receptive_field([(3, 1), (3, 0)])


if __name__ == "__main__":
  absltest.main()
