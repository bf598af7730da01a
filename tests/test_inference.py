"""Tests of seg_jax.inference: sliding windows, blending, TTA, scales, sizes, dataset info."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import inference
from seg_jax import models
from seg_jax.data import augment
from tests import test_train

MEAN = (120.0, 110.0, 100.0)
STD = (50.0, 45.0, 40.0)


class ConvStack(nn.Module):
  """Stride-1 convolutions with zero padding: translation-equivariant, receptive field
  `depth * (kernel - 1) + 1`. `symmetric` makes each kernel invariant under flips and
  transposition, so the model commutes with flips and quarter turns."""

  num_classes: int = 3
  features: int = 4
  depth: int = 3
  kernel: int = 3
  symmetric: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    for i in range(self.depth):
      out = self.num_classes if i == self.depth - 1 else self.features
      k = self.param(f"kernel{i}", nn.initializers.normal(0.5),
                     (self.kernel, self.kernel, x.shape[-1], out))
      if self.symmetric:
        k = (k + k[::-1] + k[:, ::-1] + k[::-1, ::-1]) / 4
        k = (k + k.transpose(1, 0, 2, 3)) / 2
      x = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = x + self.param(f"bias{i}", nn.initializers.normal(0.1), (out,))
      if i < self.depth - 1:
        x = jnp.tanh(x)
    return x


def _init(model, seed=0):
  return model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)), train=False)


def _random_variables(model, seed=0):
  """Random variables shaped by `model.init` without compiling it (slow for real models).

  Kernels are scaled by their fan-in; BatchNorm statistics are positive.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))

  def draw(collection, s):
    if collection == "batch_stats":
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    scale = 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
    return rng.uniform(-scale, scale, s.shape).astype(s.dtype) * np.sqrt(3)

  return {c: jax.tree.map(functools.partial(draw, c), tree) for c, tree in shapes.items()}


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _whole(model, variables, image):
  """Softmax of one forward pass over the whole normalised image."""
  x = augment.normalize(image[None], MEAN, STD)
  return np.asarray(jax.nn.softmax(model.apply(variables, x, train=False), axis=-1))[0]


def _predict(model, variables, image, **kwargs):
  kwargs.setdefault("window", image.shape[:2])
  return inference.predict(model, variables, image, mean=MEAN, std=STD, **kwargs)


class SlideTest(parameterized.TestCase):

  @parameterized.parameters("resize", "slide")
  def test_one_window_equals_whole_image_pass(self, mode):
    model = models.create("asym_unet", num_classes=6, **test_train.TINY_KWARGS["asym_unet"])
    variables = _random_variables(model)
    image = _image(40, 56)
    np.testing.assert_allclose(_predict(model, variables, image, mode=mode),
                               _whole(model, variables, image), atol=1e-6)

  def test_crop_blend_equals_whole_image_pass_when_overlap_exceeds_receptive_field(self):
    model = ConvStack(depth=3)  # receptive field 7
    variables = _init(model)
    image = _image(70, 90)
    whole = _whole(model, variables, image)
    # Overlaps of 9 and 12 pixels; 3x3 windows in batches of 4, the last batch padded.
    kwargs = dict(mode="slide", window=(32, 40), overlap=0.3, batch_size=4)
    np.testing.assert_allclose(_predict(model, variables, image, blend="crop", **kwargs), whole,
                               atol=1e-6)
    # Averaging blends mix in predictions made next to window borders, which differ.
    for blend in ("uniform", "smooth"):
      self.assertGreater(
          np.abs(_predict(model, variables, image, blend=blend, **kwargs) - whole).max(), 1e-3)

  @parameterized.parameters("uniform", "smooth", "crop")
  def test_pointwise_model_any_blend_equals_whole_image_pass(self, blend):
    model = ConvStack(depth=2, kernel=1)
    variables = _init(model)
    image = _image(50, 61)
    np.testing.assert_allclose(
        _predict(model, variables, image, mode="slide", window=(32, 32), overlap=0.5,
                 blend=blend), _whole(model, variables, image), atol=1e-6)

  @parameterized.parameters(("slide", (1001, 1517)), ("resize", (1001, 1517)),
                            ("slide", (21, 27)))
  def test_output_has_the_image_size(self, mode, size):
    model = ConvStack(depth=2, features=2)
    probs = _predict(model, _init(model), _image(*size), mode=mode, window=(64, 96),
                     batch_size=16)
    self.assertEqual(probs.shape, (*size, 3))
    self.assertEqual(probs.dtype, np.float32)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)

  def test_images_of_other_sizes_reuse_the_compilation(self):
    model = ConvStack(depth=1)
    variables = _init(model)
    kwargs = dict(mode="slide", window=(32, 32), batch_size=2)
    _predict(model, variables, _image(50, 70), **kwargs)
    compiled = inference._window_probs._cache_size()
    _predict(model, variables, _image(97, 41), **kwargs)
    self.assertEqual(inference._window_probs._cache_size(), compiled)

  def test_progress_counts_every_window_of_every_scale(self):
    model = ConvStack(depth=1)
    calls = []
    _predict(model, _init(model), _image(50, 60), mode="slide", window=(32, 32), overlap=0.0,
             scales=(1.0, 0.5), batch_size=3, progress=lambda d, t: calls.append((d, t)))
    # scale 1: 2x2 windows in two batches; scale 0.5: 25x30, padded to one window.
    self.assertEqual(calls, [(3, 5), (4, 5), (5, 5)])

  def test_scales_average_the_rescaled_predictions(self):
    model = ConvStack(depth=2)
    variables = _init(model)
    image = _image(40, 60)
    kwargs = dict(mode="slide", window=(32, 32))
    both = _predict(model, variables, image, scales=(1.0, 1.5), **kwargs)
    one = _predict(model, variables, image, scales=(1.0,), **kwargs)
    other = _predict(model, variables, image, scales=(1.5,), **kwargs)
    np.testing.assert_allclose(both, (one + other) / 2, atol=1e-6)
    self.assertGreater(np.abs(one - other).max(), 1e-3)


def _turn(image, k, flip):
  image = image[:, ::-1] if flip else image
  return np.rot90(image, k)


def _unturn(probs, k, flip):
  probs = np.rot90(probs, -k)
  return probs[:, ::-1] if flip else probs


class TTATest(parameterized.TestCase):

  @parameterized.product(tta=("flips", "flips_rot90"), mode=("resize", "slide"))
  def test_equivariant_model_is_unchanged_by_tta(self, tta, mode):
    model = ConvStack(symmetric=True)
    variables = _init(model)
    image = _image(48, 72)  # non-square windows: quarter turns run at (W, H)
    kwargs = dict(mode=mode, window=(32, 40) if mode == "slide" else (48, 72))
    np.testing.assert_allclose(_predict(model, variables, image, tta=tta, **kwargs),
                               _predict(model, variables, image, tta="none", **kwargs),
                               atol=1e-6)

  @parameterized.parameters("flips", "flips_rot90")
  def test_tta_averages_predictions_of_turned_images_turned_back(self, tta):
    model = ConvStack()
    variables = _init(model)
    image = _image(40, 56)
    expected = np.mean([
        _unturn(_predict(model, variables, np.ascontiguousarray(_turn(image, k, flip))), k, flip)
        for k, flip in inference.TTA_TRANSFORMS[tta]], axis=0)
    got = _predict(model, variables, image, tta=tta)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    self.assertGreater(np.abs(got - _predict(model, variables, image)).max(), 1e-3)


class CallableTest(parameterized.TestCase):

  @parameterized.parameters("none", "flips_rot90")
  def test_a_callable_of_raw_windows_predicts_as_the_model(self, tta):
    model = ConvStack(depth=1)
    variables = _init(model)

    def logits(windows):  # what an exported artifact computes: normalisation inside
      return model.apply(variables, augment.normalize(windows, MEAN, STD), train=False)

    image = _image(50, 70)
    kwargs = dict(mode="slide", window=(32, 40), tta=tta, scales=(1.0, 1.5), batch_size=3)
    np.testing.assert_allclose(inference.predict(jax.jit(logits), None, image, **kwargs),
                               _predict(model, variables, image, **kwargs), atol=1e-6)


class ArgumentsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("four_channels", dict(image=np.zeros((40, 40, 4), np.uint8)), "(40, 40, 4)"),
      ("greyscale", dict(image=np.zeros((40, 40), np.uint8)), "(40, 40)"),
      ("float", dict(image=np.zeros((40, 40, 3), np.float32)), "float32"),
      ("mode", dict(mode="tile"), "'tile'"),
      ("blend", dict(blend="gauss"), "'gauss'"),
      ("tta", dict(tta="rot"), "'rot'"),
      ("overlap", dict(overlap=1.0), "overlap"),
      ("scales", dict(scales=(0.0,)), "scales"),
      ("window", dict(window=(0, 32)), "window"),
      ("std", dict(std=(1.0, 0.0, 1.0)), "std"),
  )
  def test_bad_argument_is_named(self, override, expected):
    kwargs = dict(image=np.zeros((40, 40, 3), np.uint8), mean=MEAN, std=STD, window=(32, 32))
    kwargs.update(override)
    model = ConvStack(depth=1)
    with self.assertRaisesRegex(ValueError, expected.replace("(", r"\(").replace(")", r"\)")):
      inference.predict(model, None, **kwargs)


if __name__ == "__main__":
  absltest.main()
