"""Runs whose workdir, data and predictions lie in a Cloud Storage bucket, against a real local
storage server (fake-gcs-server, `tests/gcs_testing.py`), never a mock.

One server serves the whole module; the commands the tests start find it through
STORAGE_EMULATOR_HOST, as a run on a TPU VM finds the real service.
"""

import collections
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
import pytest
import rasterio
import rasterio.transform
from tensorboard.backend.event_processing import event_accumulator

from seg_jax import artifact
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import export
from seg_jax import predict
from seg_jax import preemption
from seg_jax import replicas
from seg_jax import results
from seg_jax import storage
from seg_jax import sweep as sweep_lib
from seg_jax import train
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import palettes
from seg_jax.data import tfds_builders
from tests import gcs_testing
from tests import test_faults
from tests.data import fixtures
from tests.data import raster_fixtures
from tests.train_testing import REPO, tiny_config

pytestmark = pytest.mark.gcs
_EMULATOR = None


def setUpModule():
  global _EMULATOR
  _EMULATOR = gcs_testing.Emulator()
  _EMULATOR.start()
  _EMULATOR.create_bucket()


def tearDownModule():
  _EMULATOR.close()


def _final(workdir):
  return json.loads(storage.read_text(storage.join(workdir, workdir_lib.FINAL_METRICS)))


class StorageTest(absltest.TestCase):
  """`seg_jax.storage` on a bucket."""

  def test_files_folders_and_exclusive_create(self):
    folder = gcs_testing.new_prefix()
    self.assertFalse(storage.isdir(folder))
    path = storage.join(folder, "a", "b.json")
    storage.write_bytes(path, b"{}")
    self.assertTrue(storage.isdir(storage.join(folder, "a")))
    self.assertEqual(storage.listdir(folder), ["a"])
    self.assertEqual(storage.glob("*/*.json", folder), [path])
    storage.create(storage.join(folder, "lock"), b"1")
    with self.assertRaises(FileExistsError):
      storage.create(storage.join(folder, "lock"), b"2")
    storage.append(storage.join(folder, "log"), b"x\n")
    storage.append(storage.join(folder, "log"), b"y\n")
    self.assertEqual(storage.read_text(storage.join(folder, "log")), "x\ny\n")
    storage.move(storage.join(folder, "a"), storage.join(folder, "c"))
    self.assertEqual(storage.listdir(folder), ["c", "lock", "log"])
    self.assertFalse(storage.bucket_exists("gs://no-such-bucket/run"))

  def test_tensorboard_reads_the_events_in_the_bucket(self):
    run_dir = workdir_lib.RunDir(gcs_testing.new_prefix())
    writer = run_dir.metric_writer()
    writer.scalars(1, {"val/miou": 0.25})
    writer.flush()
    writer.scalars(2, {"val/miou": 0.5})
    writer.images(2, {"val/prediction_0": np.full((8, 12, 3), 200, np.uint8)})
    writer.close()
    self.assertEqual(run_dir.scalars("val/miou"), [(1, 0.25), (2, 0.5)])
    events = event_accumulator.EventAccumulator(run_dir.path, size_guidance={"images": 0})
    events.Reload()
    self.assertEqual([(e.step, e.value) for e in events.Scalars("val/miou")],
                     [(1, 0.25), (2, 0.5)])
    self.assertEqual(len(events.Images("val/prediction_0")), 1)


def _harness(workdir):
  """Starts the tiny training command of `test_faults` with the storage clients failing fast
  (`gcs_testing.fail_fast`)."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu")
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO, "tests", "gcs_testing.py"),
       "--config=tests/train_testing.py", f"--workdir={workdir}", *test_faults.OVERRIDES],
      cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _stop_server_at(proc, line_start):
  """Reads the stderr of `proc` to its end, stopping the server once a line holds
  `line_start`, and starts it again after; returns (exit code, stderr)."""
  lines = []
  try:
    for line in proc.stderr:
      lines.append(line)
      if line_start in line and _EMULATOR.running:
        _EMULATOR.stop()
    proc.wait(timeout=240)
  finally:
    if proc.poll() is None:
      proc.kill()
    _EMULATOR.start()
  return proc.returncode, "".join(lines)


_LOCAL = []


def local_run() -> str:
  """The workdir of the tiny command's run (test_faults.OVERRIDES) trained locally in this
  process (once): what the runs in the bucket must end like."""
  if not _LOCAL:
    _LOCAL.append(tempfile.mkdtemp())
    train.run(tiny_config(**{"train.num_steps": 6, "train.eval_every": 1,
                             "train.checkpoint_every": 4, "train.keep_checkpoints": 2}),
              _LOCAL[0])
  return _LOCAL[0]


def assert_same_as_local(test, run_dir, local, rtol=0.0):
  """Final metrics to 1e-6 (and `rtol`), every evaluation and TensorBoard value once, the
  outputs."""
  got = test_faults._flat_numbers(_final(run_dir.path))  # pylint: disable=protected-access
  expected = test_faults._flat_numbers(_final(local.path))  # pylint: disable=protected-access
  test.assertEqual(sorted(got), sorted(expected))
  np.testing.assert_allclose([got[k] for k in sorted(got)],
                             [expected[k] for k in sorted(expected)], atol=1e-6, rtol=rtol)
  test.assertEqual([r["step"] for r in run_dir.metrics()], [r["step"] for r in local.metrics()])
  logged = collections.Counter((v.tag, e.step) for p in run_dir.event_files()
                               for e in writers.read_events(p) for v in e.summary.value)
  test.assertEqual(max(logged.values()), 1, "a TensorBoard value was logged twice")
  test.assertEqual(set(logged), {(v.tag, e.step) for p in local.event_files()
                                 for e in writers.read_events(p) for v in e.summary.value})
  for name in (workdir_lib.CURVES, workdir_lib.CONFUSION_MATRIX, "predictions/step_6.png"):
    test.assertTrue(storage.isfile(run_dir.file(name)), name)


@pytest.mark.slow  # 3 training processes and one in this process (~30 s)
class RunInBucketTest(absltest.TestCase):
  """The tiny training command with --workdir=gs://...: killed, then cut off from its storage
  server, then resumed, it ends like a local run; then scored, predicted and exported."""

  def test_killed_and_cut_off_run_resumes_to_the_final_metrics_of_a_local_run(self):
    local = local_run()
    workdir = gcs_testing.new_prefix()
    code, err = test_faults.run_main(workdir, kill_at=("checkpoint", 2))
    self.assertEqual(code, -9, err[-3000:])
    self.assertFalse(storage.exists(storage.join(workdir, workdir_lib.FINAL_METRICS)))
    # Resumed, then the server stops while step 4 is logged (every step is evaluated and saved).
    code, err = _stop_server_at(_harness(workdir), "step 4/")
    self.assertEqual(code, errors.EXIT_WRITE_FAILED, err[-3000:])
    self.assertIn("resumed from step 2 in ", err)
    last = err.strip().splitlines()[-1]
    self.assertRegex(last, rf"^error \(write\): cannot (write|save a checkpoint in) {workdir}/")
    self.assertIn("once the storage answers again", last)
    code, err = test_faults.run_main(workdir)
    self.assertEqual(code, 0, err[-3000:])
    self.assertRegex(err, r"resumed from step [34] in ")
    run_dir = workdir_lib.RunDir(workdir)
    assert_same_as_local(self, run_dir, workdir_lib.RunDir(local))
    self._eval_only(run_dir)
    self._predict(run_dir)
    self._export(run_dir)

  def _eval_only(self, run_dir):
    config = run_dir.load_config().copy_and_resolve_references()
    config.train.mode = "eval"
    config.lock()
    train.run(config, run_dir.path)
    record = run_dir.eval_record("val")
    self.assertIsNotNone(record)
    self.assertEqual(record["step"], run_dir.best_step())

  def _predict(self, run_dir):
    images = gcs_testing.new_prefix("images")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)).save(
        buffer, format="PNG")
    storage.write_bytes(storage.join(images, "tile.png"), buffer.getvalue())
    with rasterio.MemoryFile() as scene, scene.open(
        driver="GTiff", width=48, height=40, count=3, dtype="uint8", crs="EPSG:32633",
        transform=rasterio.transform.from_origin(500000, 4000000, 1, 1)) as ds:
      ds.write(np.random.default_rng(1).integers(0, 256, (3, 40, 48), np.uint8))
      ds.close()
      storage.write_bytes(storage.join(images, "scene.tif"), scene.read())
    output = storage.join(run_dir.path, "predicted")
    code = predict.run(run_dir.path, images, output, checkpoint="best", window=None,
                       save_probs=False, mode="resize", overlap=0.25, blend="uniform",
                       tta="none", scales=(1.0,), batch_size=8)
    self.assertEqual(code, 0)
    self.assertEqual(storage.listdir(output), ["scene_classes.tif", "scene_overlay.png",
                                               "tile_mask.png", "tile_overlay.png"])
    with Image.open(io.BytesIO(storage.read_bytes(storage.join(output, "tile_mask.png")))) as im:
      self.assertEqual(im.size, (48, 40))
    with rasterio.open(storage.join(output, "scene_classes.tif"), opener=storage.open_file) as ds:
      self.assertEqual((ds.crs.to_string(), ds.width, ds.height), ("EPSG:32633", 48, 40))

  def _export(self, run_dir):
    output = storage.join(run_dir.path, "exported", "model.stablehlo")
    sidecar = export.export_workdir(run_dir.path, output, fmt="stablehlo")
    loaded = artifact.Artifact(output)
    self.assertEqual(loaded.sidecar, sidecar)


@pytest.mark.slow  # two training processes preempted, then resumed (four launches, ~30 s)
class MultiHostTest(absltest.TestCase):
  """Two processes (hosts) training into one bucket."""

  def test_sigterm_on_one_host_saves_the_same_step_on_both_and_both_resume_to_the_end(self):
    workdir = gcs_testing.new_prefix()
    step = test_faults.preempt_one_of_two(self, workdir)
    run_dir = workdir_lib.RunDir(workdir)
    self.assertEqual(run_dir.latest_step(), step)
    self.assertLess(step, 6)
    state = run_dir.file(f"checkpoints/{step}/state")
    self.assertEqual(storage.glob("ocdbt.process_*", state),
                     [storage.join(state, f"ocdbt.process_{i}") for i in (0, 1)])
    self.assertLen(run_dir.event_files(), 1)  # process 0 alone writes the run files
    self.assertEqual(run_dir.load_config().train.num_steps, 6)
    for code, err in test_faults.run_two_processes(workdir, test_faults.free_port()):
      self.assertEqual(code, 0, err[-3000:])
      self.assertIn(f"resumed from step {step}", err)
    self.assertEqual(storage.glob("*orbax-checkpoint-tmp*", run_dir.file("checkpoints")), [])
    # The reference ran in one process: two processes sum the loss across hosts in another
    # order, so float32 sums may differ in their last bits.
    assert_same_as_local(self, run_dir, workdir_lib.RunDir(local_run()), rtol=1e-5)


# The Dubai-layout folder dataset of tests/data/fixtures.py, read with the tiny config.
FOLDER_FIELDS = {"data.name": "dubai_aerial", "data.prep": "resize", "data.split": "image"}
_FOLDERS = {}


def folder_in_bucket() -> tuple[str, str]:
  """(local folder, its copy in the bucket) of a small Dubai-layout dataset (made once)."""
  if not _FOLDERS:
    local = tempfile.mkdtemp()
    fixtures.make_tile_layout(local, per_tile=3)
    _FOLDERS["local"], _FOLDERS["bucket"] = local, gcs_testing.new_prefix("data")
    gcs_testing.upload_tree(local, _FOLDERS["bucket"])
  return _FOLDERS["local"], _FOLDERS["bucket"]


class DataInBucketTest(absltest.TestCase):
  """A Dubai-layout folder copied into the bucket reads as it does locally (SweepInBucketTest
  trains on it)."""

  def test_folder_dataset_from_the_bucket(self):
    local, bucket = folder_in_bucket()
    from_disk, from_bucket = (
        data_lib.get_dataset(tiny_config(**FOLDER_FIELDS, **{"data.root": root}).data)
        for root in (local, bucket))
    for split in ("train", "val", "test"):
      np.testing.assert_array_equal(getattr(from_bucket, split).images,
                                    getattr(from_disk, split).images)
      np.testing.assert_array_equal(getattr(from_bucket, split).labels,
                                    getattr(from_disk, split).labels)


class RasterInBucketTest(absltest.TestCase):
  """GeoTIFFs in the bucket read window by window through fsspec, as they read from disk."""

  def test_raster_dataset_from_the_bucket(self):
    local = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    for n in range(4):
      image, label = raster_fixtures.scene(rng, bands=3, dtype="uint8", size=(16, 16))
      raster_fixtures.write(os.path.join(local, "images", f"{n}.tif"), image)
      raster_fixtures.write(os.path.join(local, "masks", f"{n}.tif"), label)
    with open(os.path.join(local, "classes.json"), "w") as f:
      json.dump(palettes.DUBAI_AERIAL.to_dict(), f)
    root = gcs_testing.new_prefix("rasters")
    gcs_testing.upload_tree(local, root)
    read = [data_lib.get_dataset(fixtures.data_config(
        name="raster", root=folder, palette=storage.join(folder, "classes.json"),
        split="image", prep="patches", patch_size=16)) for folder in (local, root)]
    for split in ("train", "val", "test"):
      disk, bucket = (getattr(d, split) for d in read)
      self.assertEqual(len(bucket), len(disk))
      for i in range(len(disk)):
        np.testing.assert_array_equal(bucket[i]["image"], disk[i]["image"])
        np.testing.assert_array_equal(bucket[i]["label"], disk[i]["label"])


class TfdsInBucketTest(absltest.TestCase):
  """A prepared TFDS dataset in the bucket is copied into data.cache_dir once and read there."""

  def test_prepared_tfds_dataset_from_the_bucket(self):
    local = tempfile.mkdtemp()
    tfds_builders.SyntheticAerial(
        config=tfds_builders.SyntheticAerialConfig(
            name="tiny", image_size=(16, 16), num_train=2, num_val=1, num_test=1, seed=0),
        data_dir=local, file_format="array_record").download_and_prepare()
    bucket = gcs_testing.new_prefix("tfds")
    gcs_testing.upload_tree(local, bucket)
    cache = tempfile.mkdtemp()
    read = [data_lib.get_dataset(fixtures.data_config(
        name="tfds:synthetic_aerial/tiny", tfds_dir=folder, cache_dir=cache))
            for folder in (local, bucket, bucket)]
    for split in ("train", "val", "test"):
      disk, *from_bucket = (getattr(d, split) for d in read)
      for source in from_bucket:
        self.assertEqual(len(source), len(disk))
        np.testing.assert_array_equal(source[0]["image"], disk[0]["image"])
        np.testing.assert_array_equal(source[0]["label"], disk[0]["label"])
    self.assertEqual(os.listdir(os.path.join(cache, "tfds")),
                     ["gs_test-bucket_" + bucket.split("/")[-1]])  # one copy, read twice


@pytest.mark.slow  # one tiny run trained here, then the sweep command (~15 s)
class SweepInBucketTest(absltest.TestCase):
  """A sweep whose folder and data are in the bucket trains, then skips its finished runs
  when run again."""

  def test_rerun_skips_finished_runs_and_writes_results(self):
    sweep_file = os.path.join(tempfile.mkdtemp(), "sweep.py")
    with open(sweep_file, "w") as f:
      f.write("def get_sweep():\n  return {'settings': {'base': {}}, 'seeds': [0]}\n")
    workdir = gcs_testing.new_prefix("sweep")
    fields = {**FOLDER_FIELDS, "data.root": folder_in_bucket()[1], "train.num_steps": 2}
    runs = sweep_lib.expand(tiny_config(**fields), sweep_lib.load_sweep(sweep_file), workdir)
    runner = sweep_lib.Runner(runs, workdir, max_replicas=1)
    runner.check()
    with preemption.PreemptionWatch() as preempt:
      self.assertTrue(runner.run(preempt))
    self.assertTrue(sweep_lib.trained(runs[0]))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "seg_jax.sweep", "--config=tests/train_testing.py",
         *(f"--config.{k}={v}" for k, v in fields.items()), f"--sweep={sweep_file}",
         f"--workdir={workdir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(done.returncode, 0, done.stderr[-3000:])
    self.assertIn("1 runs in this shard: 1 trained already, 0 to train", done.stderr)
    self.assertIn("base", storage.read_text(storage.join(workdir, results.RESULTS_CSV)))
    self.assertEqual(workdir_lib.RunDir(runs[0].workdir).final_record()["step"], 2)


class FaultTest(parameterized.TestCase):
  """What a run says when its bucket is missing or refuses to be written."""

  def test_missing_bucket_is_one_error_before_compiling(self):
    with self.assertRaisesRegex(errors.WorkdirError, "gs://no-such-bucket/run.*bucket"):
      train.run(tiny_config(), "gs://no-such-bucket/run")

  def test_bucket_path_without_write_permission_is_one_error_before_compiling(self):
    workdir = f"gs://{gcs_testing.BUCKET}/readonly_run"
    with gcs_testing.refusing_writes(_EMULATOR), \
        mock.patch.object(replicas, "create_trainer", wraps=replicas.create_trainer) as create:
      with self.assertRaisesRegex(errors.WorkdirError, (
          rf"^{workdir} is not writable \(Anonymous caller does not have storage.objects.create "
          r"access .*\): .*roles/storage.objectUser on the bucket")) as raised:
        train.run(tiny_config(), workdir)
    create.assert_not_called()
    self.assertNotIn("\n", str(raised.exception))

  @parameterized.named_parameters(
      ("missing_bucket", "gs://no-such-bucket/run", False, "its bucket does not exist"),
      ("bucket_without_write_permission", f"gs://{gcs_testing.BUCKET}/readonly_run", True,
       "is not writable .*storage.objects.create"))
  def test_on_the_command_line(self, workdir, writes_refused, reason):
    with (gcs_testing.refusing_writes(_EMULATOR) if writes_refused
          else contextlib.nullcontext()):
      done = subprocess.run(
          [sys.executable, "-m", "seg_jax.main", "--config=tests/train_testing.py",
           f"--workdir={workdir}"], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
          capture_output=True, text=True, timeout=120, check=False)
    self.assertEqual(done.returncode, errors.EXIT_USER_ERROR, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    self.assertRegex(lines[-1], rf"^error \(workdir\): .*{workdir}.*{reason}")
    self.assertNotIn("Traceback", done.stderr)


if __name__ == "__main__":
  absltest.main()
