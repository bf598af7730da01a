"""Tests of the sharded input pipeline: order, padding, resume, on-device mode, 4 devices."""

import json
import os
import subprocess
import sys
import textwrap

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from seg_jax import data
from seg_jax.data import pipeline
from tests.data import fixtures

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def _source(n=10, h=8, w=12):
  images = np.zeros((n, h, w, 3), np.uint8)
  images[..., 0] = np.arange(n, dtype=np.uint8)[:, None, None]
  labels = np.broadcast_to((np.arange(n) % 6).astype(np.uint8)[:, None, None], (n, h, w)).copy()
  return data.ArraySource(images, labels)


def _sharding():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _ids(batch):
  return np.asarray(batch["image"])[:, 0, 0, 0].tolist()


class PipelineTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_epochs_cover_source_and_reshuffle(self, keep_on_device):
    p = pipeline.InputPipeline(_source(), global_batch_size=5, sharding=_sharding(), seed=0,
                               num_epochs=2, keep_on_device=keep_on_device)
    batches = list(p)
    self.assertLen(batches, 4)
    ids = sum((_ids(b) for b in batches), [])
    self.assertCountEqual(ids[:10], range(10))
    self.assertCountEqual(ids[10:], range(10))
    self.assertNotEqual(ids[:10], ids[10:])
    self.assertNotEqual(ids[:10], list(range(10)))
    b = batches[0]
    self.assertEqual(b["image"].dtype, np.uint8)
    self.assertEqual(b["label"].dtype, np.uint8)
    self.assertEqual(b["image"].shape, (5, 8, 12, 3))
    self.assertEqual(b["label"].shape, (5, 8, 12))
    np.testing.assert_array_equal(np.asarray(b["label"])[:, 0, 0], np.array(_ids(b)) % 6)
    self.assertTrue(np.all(np.asarray(b["valid"])))

  def test_host_and_device_modes_agree(self):
    kw = dict(global_batch_size=4, sharding=_sharding(), seed=7, num_epochs=3)
    host = [_ids(b) for b in pipeline.InputPipeline(_source(), **kw)]
    device = [_ids(b) for b in pipeline.InputPipeline(_source(), keep_on_device=True, **kw)]
    self.assertEqual(host, device)

  @parameterized.parameters(False, True)
  def test_padding_marks_valid_examples(self, keep_on_device):
    p = pipeline.InputPipeline(_source(), global_batch_size=4, sharding=_sharding(), seed=0,
                               shuffle=False, num_epochs=1, drop_remainder=False,
                               keep_on_device=keep_on_device)
    batches = list(p)
    self.assertLen(batches, 3)
    self.assertEqual(len(p), 3)
    self.assertEqual(_ids(batches[0]), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(batches[2]["valid"]), [True, True, False, False])
    self.assertEqual(_ids(batches[2])[:2], [8, 9])
    np.testing.assert_array_equal(np.asarray(batches[2]["image"])[2:], 0)
    dropped = pipeline.InputPipeline(_source(), global_batch_size=4, sharding=_sharding(),
                                     seed=0, shuffle=False, num_epochs=1)
    self.assertLen(list(dropped), 2)

  @parameterized.parameters(False, True)
  def test_resume_from_saved_state_yields_same_batches(self, keep_on_device):
    kw = dict(global_batch_size=3, sharding=_sharding(), seed=11, keep_on_device=keep_on_device)
    reference = pipeline.InputPipeline(_source(), **kw)
    expected = [_ids(next(reference)) for _ in range(8)]
    first = pipeline.InputPipeline(_source(), **kw)
    for _ in range(5):
      next(first)
    state = json.loads(json.dumps(first.get_state()))
    resumed = pipeline.InputPipeline(_source(), **kw)
    resumed.set_state(state)
    self.assertEqual([_ids(next(resumed)) for _ in range(3)], expected[5:])
    other_seed = pipeline.InputPipeline(_source(), **dict(kw, seed=12))
    with self.assertRaisesRegex(ValueError, "seed"):
      other_seed.set_state(state)

  def test_synthetic_source(self):
    ds = data.get_dataset(fixtures.data_config(image_size=(16, 24), num_train=4, num_val=1,
                                               num_test=1))
    p = pipeline.InputPipeline(ds.train, global_batch_size=2, sharding=_sharding(), seed=0,
                               shuffle=False, num_epochs=1)
    b = next(p)
    np.testing.assert_array_equal(np.asarray(b["image"])[1], ds.train[1]["image"])
    np.testing.assert_array_equal(np.asarray(b["label"])[0], ds.train[0]["label"])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "empty"):
      pipeline.InputPipeline(data.ArraySource(np.zeros((0, 2, 2, 3), np.uint8),
                                              np.zeros((0, 2, 2), np.uint8)),
                             global_batch_size=2, sharding=_sharding(), seed=0)
    with self.assertRaisesRegex(ValueError, "global_batch_size 0"):
      pipeline.InputPipeline(_source(), global_batch_size=0, sharding=_sharding(), seed=0)

  def test_four_host_devices_shard_the_batch(self):
    script = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, numpy as np
        from seg_jax import data
        from seg_jax.data import pipeline
        n = 10
        images = np.zeros((n, 8, 8, 3), np.uint8)
        images[..., 0] = np.arange(n, dtype=np.uint8)[:, None, None]
        src = data.ArraySource(images, np.zeros((n, 8, 8), np.uint8))
        mesh = jax.make_mesh((4,), ("data",))
        sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        for keep in (False, True):
          p = pipeline.InputPipeline(src, global_batch_size=8, sharding=sh, seed=0,
                                     shuffle=False, num_epochs=1, drop_remainder=False,
                                     keep_on_device=keep)
          b = list(p)
          img = b[0]["image"]
          assert len(jax.devices()) == 4
          assert img.shape == (8, 8, 8, 3), img.shape
          assert img.sharding.spec == jax.sharding.PartitionSpec("data"), img.sharding
          shards = sorted((s.index[0].start, s.data.shape[0], int(s.data[0, 0, 0, 0]))
                          for s in img.addressable_shards)
          assert shards == [(0, 2, 0), (2, 2, 2), (4, 2, 4), (6, 2, 6)], shards
          assert np.asarray(b[1]["valid"]).tolist() == [True, True] + [False] * 6
          assert len({s.device for s in b[1]["label"].addressable_shards}) == 4
        print("OK")
        """)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO))
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn("OK", out.stdout)


if __name__ == "__main__":
  absltest.main()
