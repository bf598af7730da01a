"""`python -m seg_jax.main`: a user error is one line on stderr and exit code 2, no traceback."""

import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from seg_jax import errors
from seg_jax import workdir as workdir_lib
from tests.train_testing import REPO, tiny_config

TINY = f"--config={os.path.join(REPO, 'tests', 'train_testing.py')}"


def run_main(*args):
  """(exit code, stderr lines) of the command run from a folder outside the repository."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "seg_jax.main", *args], cwd=tempfile.gettempdir(),
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  return proc.returncode, proc.stderr.strip().splitlines()


class MainErrorsTest(absltest.TestCase):

  def assertOneLineError(self, code, lines, kind, *parts):
    self.assertEqual(code, errors.EXIT_USER_ERROR, lines)
    self.assertFalse(any("Traceback" in line for line in lines), lines)
    self.assertTrue(lines[-1].startswith(f"error ({kind}): "), lines[-1])
    for part in parts:
      self.assertIn(part, lines[-1])

  def test_misspelled_override(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    code, lines = run_main(TINY, f"--workdir={workdir}", "--config.train.num_step=1")
    self.assertLen(lines, 1)
    self.assertOneLineError(code, lines, "flags", "--config.train.num_step=1",
                            'Did you mean "num_steps" instead of "num_step"?')
    self.assertFalse(os.path.exists(workdir))

  def test_misspelled_override_with_verbosity_shows_the_traceback(self):
    code, lines = run_main(TINY, "--workdir=/tmp/unused", "--config.train.num_step=1",
                           "--verbosity=1")
    self.assertNotEqual(code, 0)
    self.assertTrue(any("Traceback" in line for line in lines))

  def test_config_file_that_fails_to_load(self):
    path = os.path.join(tempfile.mkdtemp(), "broken.py")
    with open(path, "w") as f:
      f.write("import no_such_module\n")
    code, lines = run_main(f"--config={path}", "--workdir=/tmp/unused")
    self.assertLen(lines, 1)
    self.assertOneLineError(code, lines, "flags", "cannot load --config",
                            "No module named 'no_such_module'")

  def test_config_error_found_before_training(self):
    workdir = tempfile.mkdtemp()
    code, lines = run_main(TINY, f"--workdir={workdir}", "--config.model.name=unet3d")
    self.assertOneLineError(code, lines, "config", "model.name must be one of", "'unet3d'")
    self.assertEqual(os.listdir(workdir), [])

  def test_workdir_of_another_run(self):
    workdir = tempfile.mkdtemp()
    workdir_lib.RunDir(workdir).save_config(tiny_config())
    code, lines = run_main(TINY, f"--workdir={workdir}", "--config.optim.learning_rate=0.01")
    self.assertOneLineError(code, lines, "workdir", "optim.learning_rate: 0.003 -> 0.01",
                            "use a new --workdir")
    self.assertEqual(os.listdir(workdir), ["config.json"])


class CommandsTest(absltest.TestCase):

  def test_one_process_imports_every_command(self):
    # Tests and experiment drivers import the commands' functions: their flags must not clash.
    proc = subprocess.run(
        [sys.executable, "-c", "import seg_jax.main, seg_jax.sweep, seg_jax.predict"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])


if __name__ == "__main__":
  absltest.main()
