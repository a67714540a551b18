"""Kernel-level GPU benchmarks (not installed with the package; run from the repository).

``python benchmarks/bench_attention.py`` is the entry point; see ``benchmarks/README.md``.
"""
