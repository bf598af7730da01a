"""The layout rules of the code base: short functions, imports one way, one owner of a run folder."""

import ast
import os

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED = ("seg_jax", "experiments", "benchmarks", "tests")
MAX_FUNCTION_LINES = 60
MAX_LOOP_LINES = 450
# The training loop and what only training needs; prediction and weight import never need them.
LOOP = ("seg_jax.train", "seg_jax.steps", "seg_jax.replicas", "seg_jax.outputs",
        "seg_jax.evaluate", "seg_jax.watchdog", "seg_jax.checks")
WITHOUT_LOOP = ("seg_jax.predict", "seg_jax.inference", "seg_jax.init_from", "seg_jax.weights",
                "seg_jax.export", "seg_jax.artifact")
# File names of a run folder: seg_jax.workdir is their one owner.
RUN_FILES = ("config.json", "dataset.json", "metrics.jsonl", "final_metrics.json",
             "eval_test.json", "confusion_matrix", "checkpoints_unreadable")


def _python_files(*roots):
  for root in roots:
    for folder, _, names in os.walk(os.path.join(REPO, root)):
      for name in sorted(names):
        if name.endswith(".py"):
          yield os.path.join(folder, name)


def _module(path):
  name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
  return name[:-len(".__init__")] if name.endswith(".__init__") else name


def _import_graph():
  """{module: seg_jax modules it imports (lazy imports included)} over the package."""
  paths = {_module(p): p for p in _python_files("seg_jax")}
  graph = {}
  for module, path in paths.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:
          child = f"{node.module}.{alias.name}"
          deps.add(child if child in paths else node.module)
    graph[module] = {d for d in deps if d in paths and d != module}
  return graph


def _reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    for dep in graph.get(todo.pop(), ()):
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


def _docstrings(tree):
  """ids of the string constants that are docstrings (a module's, class's or function's)."""
  ids = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        ids.add(id(body[0].value))
  return ids


class ArchitectureTest(absltest.TestCase):

  def test_the_loop_is_short(self):
    with open(os.path.join(REPO, "seg_jax", "train.py")) as f:
      self.assertLess(len(f.readlines()), MAX_LOOP_LINES)

  def test_no_function_is_long(self):
    long = []
    for path in _python_files(*CHECKED):
      with open(path) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
          lines = node.end_lineno - node.lineno + 1
          if lines > MAX_FUNCTION_LINES:
            long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} ({lines})")
    self.assertEqual(long, [])

  def test_no_import_cycle(self):
    graph = _import_graph()
    self.assertEqual([m for m in sorted(graph) if m in _reachable(graph, m)], [])

  def test_prediction_and_weight_import_need_no_loop(self):
    graph = _import_graph()
    for module in WITHOUT_LOOP:
      self.assertEqual(sorted(_reachable(graph, module) & set(LOOP)), [], module)

  def test_models_know_no_run_folder(self):
    # A command in seg_jax/models that reads a run folder does so through seg_jax.cli.
    graph = _import_graph()
    self.assertEqual([m for m in sorted(graph) if m.startswith("seg_jax.models")
                      and "seg_jax.workdir" in graph[m]], [])

  def test_run_folder_file_names_have_one_owner(self):
    owner = os.path.join(REPO, "seg_jax", "workdir.py")
    found = []
    for path in _python_files("seg_jax", "experiments", "benchmarks"):
      if path == owner:
        continue
      with open(path) as f:
        tree = ast.parse(f.read())
      docstrings = _docstrings(tree)
      for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and any(n in node.value for n in RUN_FILES)):
          found.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.value!r:.60}")
    self.assertEqual(found, [])


if __name__ == "__main__":
  absltest.main()
