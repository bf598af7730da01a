"""Tests of the `python -m seg_jax.models.summary` command."""

import json
import os
import subprocess
import sys

from absl.testing import absltest

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
# The proposal at its smallest widths, so the forward pass compiles in a moment.
TINY_ASYM_UNET = {"backbone_kwargs": {"widths": [4, 8], "blocks": 1, "se_reduction": 2},
                  "neck_kwargs": {"features": 4}, "decoder_kwargs": {"widths": [4]}}


class SummaryCommandTest(absltest.TestCase):

  def test_without_model_flag_summarises_the_proposal(self):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO))
    run = subprocess.run(
        [sys.executable, "-m", "seg_jax.models.summary", "--height=32", "--width=32",
         f"--kwargs={json.dumps(TINY_ASYM_UNET)}"],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    self.assertEqual(lines[0], "asym_unet at 1x32x32x3")
    self.assertIn(["total", "2,054"], [line.split() for line in lines])


if __name__ == "__main__":
  absltest.main()
