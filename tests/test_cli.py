"""Tests of seg_jax.cli: the flags, error line and exit codes every command shares."""

import os
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
from absl.testing import parameterized

from seg_jax import cli
from seg_jax import errors
from seg_jax import stored_config
from seg_jax import workdir as workdir_lib
from tests.train_testing import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("seg_jax.main", "seg_jax.sweep", "seg_jax.predict", "seg_jax.models.summary",
            "seg_jax.data.inspect", "seg_jax.data.prepare")


def run_python(script: str, *args: str) -> subprocess.CompletedProcess:
  """`python -c script args` from the repository root, on the CPU."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120, check=False)


def run_command(body: str, *args: str) -> subprocess.CompletedProcess:
  """A command whose `main(argv)` is `body`, run through `cli.run` with `args`."""
  return run_python(f"""
      from absl import flags
      from seg_jax import cli
      from seg_jax import errors

      def define_flags():
        flags.DEFINE_integer("count", 0, "A flag of the command.")

      def main(argv):
      {textwrap.indent(textwrap.dedent(body), "  ")}

      cli.run(main, define_flags=define_flags, shared=["workdir"], required=["workdir"])
      """, *args)


class ImportTest(absltest.TestCase):

  def test_importing_the_commands_defines_no_flag(self):
    # Libraries (absl logging, grain, orbax) define flags of their own; seg_jax defines none.
    proc = run_python(f"""
        import json
        from absl import flags
        import seg_jax.cli, {", ".join(COMMANDS)}
        ours = {{name for name in ("config", "workdir", "sweep", "input") if name in flags.FLAGS}}
        ours.update(m for m in flags.FLAGS.flags_by_module_dict() if m.startswith("seg_jax"))
        print(json.dumps(sorted(ours)))
        """)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertEqual(proc.stdout.strip(), "[]")

  def test_every_commands_flags_coexist_in_one_process(self):
    # A test or an experiment driver may define several commands' flags, some of them twice.
    proc = run_python(f"""
        import importlib
        from absl import flags
        from seg_jax import cli
        for _ in range(2):
          cli.define_shared_flags()
          for name in {COMMANDS!r}:
            importlib.import_module(name).define_flags()
        flags.FLAGS(["prog", "--workdir=w", "--sweep=s", "--input=i", "--num_images=1",
                     "--model=unet", "--dataset=d", "--distributed"])
        print(flags.FLAGS.workdir, flags.FLAGS.config, flags.FLAGS.model)
        """)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertEqual(proc.stdout.split(), ["w", "None", "unet"])


class RunTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("done", "return None", errors.EXIT_OK),
      ("some_failed", "return errors.EXIT_SOME_FAILED", errors.EXIT_SOME_FAILED),
      ("preempted", "return errors.EXIT_PREEMPTED", errors.EXIT_PREEMPTED))
  def test_exit_code_is_mains(self, body, code):
    proc = run_command(body, "--workdir=w")
    self.assertEqual(proc.returncode, code, proc.stderr[-2000:])
    self.assertEqual(proc.stderr, "")

  @parameterized.named_parameters(
      ("data", "raise errors.DataError('no images in\\n the folder')", ("--workdir=w",), "data",
       errors.EXIT_USER_ERROR, "no images in the folder (--verbosity=1 shows the traceback)"),
      ("non_finite", "raise errors.NonFiniteLossError('NaN at step 3')", ("--workdir=w",),
       "training",
       errors.EXIT_NON_FINITE, "NaN at step 3"),
      ("missing_flag", "return None", ("--count=1",), "flags", errors.EXIT_USER_ERROR,
       "--workdir"),
      ("unknown_flag", "return None", ("--workdir=w", "--cout=1"), "flags",
       errors.EXIT_USER_ERROR, "Unknown command line flag 'cout'"),
      ("bad_value", "return None", ("--workdir=w", "--count=x"), "flags",
       errors.EXIT_USER_ERROR, "--count"),
      ("positional", "return None", ("--workdir=w", "extra"), "flags", errors.EXIT_USER_ERROR,
       "unexpected arguments ['extra']"))
  def test_error_is_one_line(self, body, args, kind, code, expected):
    proc = run_command(body, *args)
    self.assertEqual(proc.returncode, code, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    self.assertLen(lines, 1, proc.stderr)
    self.assertStartsWith(lines[0], f"error ({kind}): ")
    self.assertIn(expected, lines[0])

  def test_verbosity_shows_the_traceback(self):
    proc = run_command("raise errors.DataError('no images')", "--workdir=w", "--verbosity=1")
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("Traceback", proc.stderr)
    self.assertIn("DataError: no images", proc.stderr)


class QuietLogsTest(absltest.TestCase):

  SCRIPT = """
      import os
      os.environ.pop("JAX_PLATFORMS")  # so that jax tries, and fails to start, a TPU backend
      import tempfile
      from absl import logging
      import jax
      import orbax.checkpoint as ocp
      from seg_jax import cli

      def main(argv):
        jax.devices()
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        ocp.CheckpointManager(tempfile.mkdtemp(), options=options)  # as eval-only and predict do
        logging.warning("a warning of the command")

      cli.run(main, shared=[])
      """
  CHATTER = ("CheckpointManagerOptions.read_only=True", "Given directory is read only",
             "Unable to initialize backend")

  def test_library_chatter_stays_out_unless_verbose(self):
    quiet = run_python(self.SCRIPT)
    self.assertEqual(quiet.returncode, 0, quiet.stderr[-2000:])
    self.assertIn("a warning of the command", quiet.stderr)
    for text in self.CHATTER:
      self.assertNotIn(text, quiet.stderr)
    verbose = run_python(self.SCRIPT, "--verbosity=1")
    for text in self.CHATTER:
      self.assertIn(text, verbose.stderr)


class DidYouMeanTest(parameterized.TestCase):

  @parameterized.parameters(
      ("--config.train.steps=100", "steps", "Did you mean --config.train.num_steps?"),
      ("--config.trian.num_steps=1", "trian", "Did you mean --config.train.num_steps?"),
      ("--config.optim.learning_rte=1", "learning_rte",
       "Did you mean --config.optim.learning_rate?"),
      ("--config.data.imagesize=(8,8)", "imagesize", "Did you mean --config.data.image_size?"),
      ("--config.model.kwargs.backbone_kwargs.see=1", "see",
       "Did you mean --config.model.kwargs.backbone_kwargs.se?"),
      ("--config.optim.lr=1", "lr", "see configs/default.py for every field"))
  def test_unknown_field_names_the_closest_fields(self, flag, missing, hint):
    argv = ["prog", f"--config={REPO}/configs/default.py", flag]
    # What ml_collections raises for the first unknown name of the path.
    message = cli._flag_error(AttributeError(KeyError(repr(missing))), argv)
    self.assertEqual(message, f"unknown config field {missing!r} in {flag}. {hint}")


class StoredConfigTest(absltest.TestCase):

  def test_a_run_folder_stands_in_for_a_missing_config(self):
    workdir = tempfile.mkdtemp()
    workdir_lib.RunDir(workdir).save_config(tiny_config())
    stored = f"--config={stored_config.__file__}:{workdir}"
    for args in ([f"--workdir={workdir}"], ["--workdir", workdir],
                 [f"--workdir={workdir}", "--config.train.mode=eval"]):
      self.assertEqual(cli.with_stored_config(["prog", *args]), ["prog", stored, *args])
    for args in ([f"--workdir={workdir}", "--config=configs/default.py"],  # given: kept
                 [f"--workdir={tempfile.mkdtemp()}"],  # no stored config
                 ["--config.train.mode=eval"]):  # no workdir
      self.assertEqual(cli.with_stored_config(["prog", *args]), ["prog", *args])
    self.assertEqual(stored_config.get_config(workdir).to_dict(), tiny_config().to_dict())


if __name__ == "__main__":
  absltest.main()
