"""Tests of the TFDS builders: array_record files read back with tfds.data_source, no TensorFlow."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import jax
import numpy as np

from seg_jax import data
from seg_jax import steps
from seg_jax.data import pipeline
from seg_jax.data import tfds_builders
from tests import test_train
from tests.data import fixtures

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def _build_and_read_script(tmp, root):
  """A program that builds both TFDS datasets into `tmp`/tfds and reads them back."""
  return textwrap.dedent(f"""
        import sys, json
        import numpy as np
        import tensorflow_datasets as tfds
        from seg_jax.data import tfds_builders, prepare
        data_dir = {tmp!r} + "/tfds"
        cfg = tfds_builders.SyntheticAerialConfig(
            name="tiny", image_size=(16, 24), num_train=3, num_val=2, num_test=1, seed=2)
        b = tfds_builders.SyntheticAerial(config=cfg, data_dir=data_dir,
                                          file_format="array_record")
        b.download_and_prepare()
        syn = b.as_data_source()
        from seg_jax.data.tfds_builders import dubai_aerial
        cfg = tfds_builders.DubaiAerialConfig(name="tiny", prep="resize", image_size=(16, 24),
                                              patch_size=256, patch_overlap=0,
                                              **dubai_aerial.READING)
        b = tfds_builders.DubaiAerial(config=cfg, data_dir=data_dir,
                                      file_format="array_record")
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir={root!r}))
        path = prepare.prepare("dubai_aerial/patches_256", data_dir, {root!r})
        src = tfds.data_source("dubai_aerial/tiny", data_dir=data_dir)
        out = {{
            "syn_len": [len(syn[s]) for s in ("train", "val", "test")],
            "dubai_len": [len(src[s]) for s in ("train", "val", "test")],
            "dubai_names": sorted(src["train"][i]["name"].decode() for i in range(2)),
            "tf": "tensorflow" in sys.modules,
        }}
        np.savez({tmp!r} + "/out.npz", syn0=syn["train"][0]["image"],
                 syn_label=syn["val"][1]["label"],
                 **{{"dubai_" + src["train"][i]["name"].decode().replace("/", "_"):
                     src["train"][i]["label"] for i in range(2)}})
        print(json.dumps(out))
        """)


class TfdsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

  def test_builders_prepare_and_read_without_tensorflow(self):
    root = os.path.join(self.tmp, "raw")
    fixtures.make_tile_layout(root)
    # A fresh process shows that neither building nor reading imports TensorFlow.
    script = _build_and_read_script(self.tmp, root)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    self.assertEqual(run.returncode, 0, run.stderr[-3000:])
    out = json.loads(run.stdout.strip().splitlines()[-1])
    self.assertFalse(out["tf"])
    self.assertEqual(out["syn_len"], [3, 2, 1])
    self.assertEqual(out["dubai_len"], [2, 2, 2])
    self.assertEqual(out["dubai_names"], ["tile2/image_part_001", "tile2/image_part_002"])
    arrays = np.load(os.path.join(self.tmp, "out.npz"))
    np.testing.assert_array_equal(arrays["syn0"], data.synthetic.generate(2, 0, (16, 24))[0])
    np.testing.assert_array_equal(
        arrays["syn_label"],
        data.synthetic.generate(2, data.synthetic.SPLIT_OFFSETS["val"] + 1, (16, 24))[1])
    ds = data.get_dataset(fixtures.data_config(name="dubai_aerial", root=root, image_size=(16, 24)))
    np.testing.assert_array_equal(arrays["dubai_tile2_image_part_002"], ds.train[1]["label"])
    self.check_prepared(ds)

  def check_prepared(self, ds):
    """The prepared datasets read back as the folder dataset `ds` reads, batched."""
    prepared = tfds_builders.load_prepared("dubai_aerial/tiny", os.path.join(self.tmp, "tfds"))
    np.testing.assert_allclose(prepared.mean, ds.mean, rtol=1e-6)
    np.testing.assert_allclose(prepared.std, ds.std, rtol=1e-6)
    self.assertEqual(prepared.class_names, ds.class_names)
    self.assertEqual(prepared.palette, ds.palette)
    self.assertEqual(prepared.image_size, (16, 24))
    self.assertAlmostEqual(prepared.training_scale, ds.training_scale, places=6)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    batches = pipeline.InputPipeline(
        prepared.train, global_batch_size=2, sharding=jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec("data")), seed=0, shuffle=False, num_epochs=1)
    batch = next(batches)
    self.assertCountEqual(
        [np.asarray(batch["label"])[i].tobytes() for i in range(2)],
        [ds.train[i]["label"].tobytes() for i in range(2)])
    patches = tfds_builders.load_prepared("dubai_aerial/patches_256",
                                          os.path.join(self.tmp, "tfds"))
    # Fixture images are smaller than a patch: one padded patch per image.
    self.assertLen(patches.train, 2)
    self.assertEqual(patches.training_scale, 1.0)
    self.assertEqual(patches.train[0]["label"].shape, (256, 256))

  def test_trainer_trains_a_step_from_a_prepared_dataset(self):
    data_dir = os.path.join(self.tmp, "tfds")
    builder = tfds_builders.SyntheticAerial(
        config=tfds_builders.SyntheticAerialConfig(
            name="tiny", image_size=(32, 32), num_train=4, num_val=2, num_test=2, seed=3),
        data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    config = test_train.tiny_config(**{"data.name": "tfds:synthetic_aerial/tiny",
                                       "data.tfds_dir": data_dir})
    trainer = steps.Trainer(config)  # reads the dataset through data.get_dataset(config.data)
    self.assertEqual((len(trainer.dataset.train), len(trainer.dataset.val)), (4, 2))
    self.assertEqual(trainer.dataset.image_size, (32, 32))
    # The builder stores examples in its own order.
    self.assertCountEqual([trainer.dataset.train[i]["label"].tobytes() for i in range(4)],
                          [data.synthetic.generate(3, i, (32, 32))[1].tobytes() for i in range(4)])
    np.testing.assert_allclose(trainer.dataset.mean, builder.info.metadata["mean"], rtol=1e-6)
    state = trainer.initial_state()
    state, metrics = trainer.train_step(state, next(trainer.train_pipeline()),
                                        jax.random.key(1))
    self.assertEqual(int(state.step), 1)
    self.assertTrue(np.isfinite(float(metrics["loss"])))

  def test_tfds_names_and_fields_are_checked(self):
    data_dir = os.path.join(self.tmp, "empty")
    for name, error in (("tfds:", "data.name"),
                        ("tfds:no_such_dataset", "'no_such_dataset' not found.*seg_jax.data.prepare"),
                        ("tfds:synthetic_aerial/nope", "'synthetic_aerial/nope' not found"),
                        ("tfds:synthetic_aerial", "'synthetic_aerial' is not prepared under "
                                                  f"{data_dir}.*--dataset=synthetic_aerial")):
      with self.subTest(name), self.assertRaisesRegex(ValueError, error):
        data.get_dataset(fixtures.data_config(name=name, tfds_dir=data_dir))
    with self.assertRaisesRegex(ValueError, "data.tfds_dir"):
      data.get_dataset(fixtures.data_config(name="tfds:synthetic_aerial", tfds_dir=""))
    with self.assertRaisesRegex(ValueError, "data.palette"):
      data.get_dataset(fixtures.data_config(name="tfds:synthetic_aerial", palette="p.json"))

  def test_ignore_index_must_match_the_prepared_one(self):
    data_dir = os.path.join(self.tmp, "tfds")
    tfds_builders.SyntheticAerial(
        config=tfds_builders.SyntheticAerialConfig(
            name="tiny", image_size=(16, 16), num_train=2, num_val=1, num_test=1, seed=0),
        data_dir=data_dir, file_format="array_record").download_and_prepare()
    with self.assertRaisesRegex(ValueError, "data.ignore_index=250 but .* ignore_index=255"):
      data.get_dataset(fixtures.data_config(name="tfds:synthetic_aerial/tiny",
                                            tfds_dir=data_dir, ignore_index=250))


if __name__ == "__main__":
  absltest.main()
