"""Speed benchmarks: scripts that print figures (benchmarks/README.md), run from the repository
root as `python -m benchmarks.<name>`. Each uses seg_jax's public API only and has a smoke test
at toy size in tests/test_benchmarks.py, so a benchmark that no longer runs fails the suite."""
