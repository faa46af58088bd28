"""Benchmarks that print measured figures (docs/benchmarks.md).

Every script runs as a module from the checkout's root:

  python -m bench.<script> [flags]      # e.g. python -m bench.suite --list

and takes its shared parts (compiled memory, timing, config loading,
parameter and FLOP counts) from `bench.harness`, so that a figure with the
same name is computed by the same code in every script.
"""
