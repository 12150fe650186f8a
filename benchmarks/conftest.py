"""pytest-benchmark suites: ``pytest benchmarks/ --benchmark-only`` (see benchmarks/README.md).

Threads: every backend (and BLAS) uses ``FASTCONV_NUM_THREADS`` or, when unset, every core;
the session sets it once here so that all backends are compared on equal cores. The benchmark
bodies live in :mod:`fastconv.bench` (``make_case``, ``make_catnet_step``), where
tests/test_bench_smoke.py checks each of them on a tiny shape.
"""

from __future__ import annotations

import fastconv.kernels as K
import pytest

from fastconv import bench

BACKENDS, _, COMPARE = bench.suite_engines()


def pytest_configure(config):
    K.set_num_threads(K.get_num_threads())  # applies FASTCONV_NUM_THREADS / all cores to BLAS too
    if COMPARE:
        bench.import_torch().set_num_threads(K.get_num_threads())
    for backend in BACKENDS:
        compile_all = getattr(K.get_backend(backend), "compile_all", None)
        if callable(compile_all):
            compile_all()  # compile (or load from cache) before any timing


def pytest_report_header(config):
    return [
        f"fastconv benchmarks: backends {BACKENDS}, compare {COMPARE or 'none'}, "
        f"threads {K.get_num_threads()} (FASTCONV_NUM_THREADS)"
    ]


@pytest.fixture
def bench_group(benchmark):
    """Set ``benchmark.group`` (kernel + workload) so that engines line up side by side."""

    def set_group(*parts: str) -> None:
        benchmark.group = " ".join(parts)

    return set_group
