"""TensorBoard, the viewer the README names, reads the event files a run writes.

seg_jax writes events with tensorboardX (no TensorFlow); `tensorboard` is a separate package,
installed by the `tensorboard` extra (and the test extra). Its own reader must find every scalar
and image a run logs, at their steps.
"""

import tempfile

from absl.testing import absltest
import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from seg_jax import workdir as workdir_lib


class TensorBoardTest(absltest.TestCase):

  def test_tensorboard_reads_a_runs_scalars_and_images(self):
    run_dir = workdir_lib.RunDir(tempfile.mkdtemp())
    run_dir.makedirs()
    writer = run_dir.metric_writer()
    for step in (1, 2):
      writer.scalars(step, {"train/loss": 1.0 / step, "val/miou": 0.25 * step})
    writer.images(2, {"val/prediction_0": np.full((8, 12, 3), 200, np.uint8)})
    writer.close()
    events = event_accumulator.EventAccumulator(run_dir.path, size_guidance={"images": 0})
    events.Reload()
    self.assertCountEqual(events.Tags()["scalars"], ["train/loss", "val/miou"])
    self.assertEqual([(e.step, e.value) for e in events.Scalars("val/miou")],
                     [(1, 0.25), (2, 0.5)])
    (image,) = events.Images("val/prediction_0")
    self.assertEqual((image.step, image.width, image.height), (2, 12, 8))


if __name__ == "__main__":
  absltest.main()
