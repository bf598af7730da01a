"""The shell commands of README.md and of the config docstrings: each parses as a shell line, and
each seg_jax command in them (also inside `gcloud ... --command="..."`) names only flags its module
defines, files that exist and config fields its config has.

Flags are read from the modules' source (their `flags.DEFINE_*` calls and the shared flags their
`cli.run` takes), so no command is started and no flag is defined in this process.
"""

import ast
import importlib
import os
import re
import shlex

from absl.testing import absltest

from seg_jax import cli
from seg_jax import config_files
from tests.train_testing import REPO

# absl's own flags that a command line may give.
ABSL_FLAGS = {"verbosity", "v", "logtostderr", "alsologtostderr", "stderrthreshold",
              "log_dir", "helpfull", "help", "flagfile"}
_SHELL_OPERATORS = re.compile(r"\s*(?:&&|\|\||;)\s*")


def bash_blocks(text: str) -> list[str]:
  """The bodies of the ```bash blocks of a Markdown text."""
  return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
  """The commands of a shell block as argument lists: continuation lines joined, comments
  dropped, `a && b` and `a; b` split, the `--command=` of gcloud ssh parsed as commands too."""
  out = []
  for line in block.replace("\\\n", " ").splitlines():
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    args = shlex.split(line, comments=True)  # ValueError: unbalanced quotes
    for part in _split(args):
      out.append(part)
      inner = [a.split("=", 1)[1] for a in part if a.startswith("--command=")]
      for text in inner:
        out += commands(text)
  return out


def _split(args: list[str]) -> list[list[str]]:
  parts, current = [], []
  for arg in args:
    if _SHELL_OPERATORS.fullmatch(arg):
      parts.append(current)
      current = []
    else:
      current.append(arg)
  return [p for p in parts + [current] if p]


def seg_jax_command(args: list[str]) -> tuple[str, list[str]] | None:
  """(module, its arguments) of `python[3] -m seg_jax.X ...`, else None."""
  for i, arg in enumerate(args[:-1]):
    if arg == "-m" and args[i + 1].startswith("seg_jax") and "python" in args[i - 1]:
      return args[i + 1], args[i + 2:]
  return None


def defined_flags(module: str) -> set[str]:
  """The flag names a seg_jax command module's `cli.run` accepts, read from its source."""
  path = importlib.util.find_spec(module).origin
  with open(path) as f:
    tree = ast.parse(f.read())
  names, shared = set(), set(cli.SHARED_FLAGS)
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
      continue
    if node.func.attr.startswith("DEFINE") and node.args and isinstance(node.args[0],
                                                                        ast.Constant):
      names.add(node.args[0].value)
    if node.func.attr == "run" and getattr(node.func.value, "id", "") == "cli":
      for keyword in node.keywords:
        if keyword.arg == "shared":
          shared = set(ast.literal_eval(keyword.value))
  bools = {f"no{n}" for n in names}
  return names | bools | shared | ABSL_FLAGS


def _config_fields(config) -> set[str]:
  out = set()
  for key, value in config.items():
    out.add(key)
    if hasattr(value, "items"):
      out |= {f"{key}.{sub}" for sub in _config_fields(value)}
  return out


def problems(args: list[str]) -> list[str]:
  """What a seg_jax command names that does not exist (unknown flags, files, config fields)."""
  found = seg_jax_command(args)
  if found is None:
    return []
  module, rest = found
  if importlib.util.find_spec(module) is None:
    return [f"no module {module}"]
  allowed = defined_flags(module)
  values = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in rest
                if a.startswith("--"))
  out = [f"{module}: {a!r} is not a --flag" for a in rest if not a.startswith("--")]
  config_file, *config_arg = values.get("config", os.path.join("configs", "default.py")).split(
      ":", 1)
  for name in ("config", "sweep"):
    if name in values and not os.path.isfile(os.path.join(REPO, values[name].split(":")[0])):
      out.append(f"{module}: --{name}={values[name]} does not exist")
  fields = None
  for name in values:
    if name.startswith("config."):
      if fields is None:
        fields = _config_fields(config_files.load_module(
            os.path.join(REPO, config_file)).get_config(*config_arg))
      if name[len("config."):] not in fields:
        out.append(f"{module}: --{name}: {config_file} has no such field")
    elif name not in allowed:
      out.append(f"{module}: --{name} is not a flag of {module}")
  return out


def _readme_commands() -> list[list[str]]:
  with open(os.path.join(REPO, "README.md")) as f:
    return [c for block in bash_blocks(f.read()) for c in commands(block)]


class ReadmeCommandsTest(absltest.TestCase):

  def test_every_seg_jax_command_names_existing_flags_files_and_fields(self):
    found = [c for c in _readme_commands() if seg_jax_command(c)]
    self.assertGreater(len(found), 15)
    self.assertEqual([p for c in found for p in problems(c)], [])

  def test_tpu_recipe_launches_with_a_bucket_workdir(self):
    launches = [c for c in _readme_commands() if seg_jax_command(c) and "--distributed" in c]
    self.assertTrue(launches)
    for command in launches:
      self.assertTrue(any(a.startswith("--workdir=gs://") for a in command), command)
    self.assertIn("--command=cd seg_jax && python3 -m seg_jax.main", " ".join(
        a for c in _readme_commands() if c[0] == "gcloud" for a in c))

  def test_tpu_config_docstring_names_its_launch_with_a_bucket_workdir(self):
    doc = importlib.import_module("configs.tpu_asym_unet").__doc__
    line = shlex.split(doc.strip().splitlines()[0])
    self.assertIn("--workdir=gs://my-seg-bucket/runs/tpu_asym_unet", line)
    self.assertEqual(problems(line), [])

  def test_a_flag_the_code_does_not_have_is_found(self):
    bad = commands('gcloud compute tpus tpu-vm ssh x --worker=all --command="cd seg_jax && '
                   'python3 -m seg_jax.main --workdir=gs://b/r --distribute '
                   '--config.train.num_step=2"\npython -m seg_jax.sweep --sweep=nosuch.py')
    self.assertEqual(sum((problems(c) for c in bad), []), [
        "seg_jax.main: --distribute is not a flag of seg_jax.main",
        "seg_jax.main: --config.train.num_step: configs/default.py has no such field",
        "seg_jax.sweep: --sweep=nosuch.py does not exist"])
    with self.assertRaises(ValueError):
      commands('python -m seg_jax.main --workdir="gs://b/r')


if __name__ == "__main__":
  absltest.main()
