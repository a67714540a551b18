"""Kernel-level GPU benchmarks (not installed with the package; run from the repository).

``python benchmarks/bench_attention.py`` (attention kernels) and ``python -m benchmarks.bench_llm``
(a whole model, prefill and decode) are the entry points; see ``benchmarks/README.md``.
"""
