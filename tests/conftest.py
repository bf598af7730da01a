"""Test-wide settings: quick XLA compiles, and seg_jax's per-user caches in .cache/.

Every test process, and every command a test starts, uses the repository's .cache/ as
$XDG_CACHE_HOME, so tests share compiled programs but leave the user's own caches alone.

Compiling dominates the suite's time on a CPU, so tests compile with XLA's backend optimisations
off (LLVM level 0, no expensive passes) and with XLA's older CPU fusion emitters: the tiny
asym_unet's train step compiles in 2.3 s instead of 4.3 s (and 10-15 s at XLA's defaults;
`python -m benchmarks.compile_bench --configs=tests/train_testing.py:asym_unet --in_process`).
Each program's machine code is also generated as one piece: XLA otherwise splits it into parts
compiled on parallel threads, which shortens one compile's wall time but costs more CPU, and the
suite's two workers keep both cores busy anyway (process CPU time of `.compile()` of the tiny
train steps on the 2-core CPU, 3 repetitions: the DeepLabV3+/Xception one 6.1-7.7 s split,
4.5-5.8 s whole; UNet++ 4.0-5.5 s, 3.1-3.5 s). The
programs compute the same functions; tests compare programs compiled alike, or compare with
references to float tolerance.

`--cpu_times=N` prints the N tests and the N test modules that used the most CPU time, with the
commands they start: on a shared machine a better measure of a test's cost than its wall time.
"""

import os
import resource

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["XDG_CACHE_HOME"] = os.path.join(REPO, ".cache")
QUICK_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                       "--xla_cpu_use_fusion_emitters=false "
                       "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), QUICK_COMPILE_FLAGS]))

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from seg_jax import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position

compilation.use_persistent_cache(default.get_config().train.compilation_cache_dir)

_CPU_START = pytest.StashKey[float]()


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: over ~10 s on 2 cores (training subprocesses, reference models), each "
      "saying why; still part of the suite, deselect with -m 'not slow' while iterating")
  config.addinivalue_line(
      "markers", "gcs: against a local Cloud Storage server (fake-gcs-server, started by the "
      "test module itself); part of the suite")


def pytest_collection_modifyitems(session, config, items):
  """Runs the modules that hold a `slow` test first (each module's order kept), so that with
  `-n 2` the long tests start early and short ones fill the end, instead of one worker
  finishing a long test alone."""
  del session, config
  slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_modules)


def pytest_addoption(parser):
  parser.addoption("--cpu_times", type=int, default=0, metavar="N",
                   help="print the N tests and the N modules that used the most CPU time (the test "
                   "process and the commands it starts, setup to teardown) and the suite's total")


def _cpu_seconds() -> float:
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  item.stash[_CPU_START] = _cpu_seconds()
  yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  if call.when == "teardown":
    outcome.get_result().user_properties.append(("cpu", _cpu_seconds() - item.stash[_CPU_START]))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  del exitstatus
  count = config.getoption("cpu_times")
  if not count:
    return
  times = [(dict(report.user_properties)["cpu"], report.nodeid)
           for reports in terminalreporter.stats.values() for report in reports
           if getattr(report, "when", None) == "teardown"
           and "cpu" in dict(getattr(report, "user_properties", ()))]
  terminalreporter.write_sep("=", f"CPU time of the {count} costliest tests")
  for seconds, nodeid in sorted(times, reverse=True)[:count]:
    terminalreporter.write_line(f"{seconds:7.1f}s {nodeid}")
  terminalreporter.write_line(f"{sum(s for s, _ in times):7.1f}s in all {len(times)} tests")
  modules = {}
  for seconds, nodeid in times:
    module = nodeid.split("::")[0]
    total, n = modules.get(module, (0.0, 0))
    modules[module] = (total + seconds, n + 1)
  terminalreporter.write_sep("=", f"CPU time of the {count} costliest modules")
  for module, (seconds, n) in sorted(modules.items(), key=lambda kv: -kv[1][0])[:count]:
    terminalreporter.write_line(f"{seconds:7.1f}s {module} ({n} tests)")
