"""Benchmark harness: NDJSON streaming baselines and the framework, as same-run ratios.

Run it with ``python -m bench`` (see ``python -m bench --help``). Every measurement runs
in its own process on 127.0.0.1: servers pinned to CPU 0, clients to CPU 1 (when the
machine has two cores). Results go to ``bench/results/*.json`` and ``docs/performance.md``.
"""
