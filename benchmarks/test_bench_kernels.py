"""Every kernel x every engine on catnet's workloads (batch 32), plus the small shapes for python.

Grouped by kernel + workload, so ``pytest benchmarks/ --benchmark-only`` prints one table per
group with the backends side by side. Bodies: :func:`fastconv.bench.make_case`.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import bench

BACKENDS, ENGINES_CATNET, COMPARE = bench.suite_engines()


def _params():
    for kernel in bench.KERNELS:
        for wl in bench.workloads_for(kernel, full=True):
            engines = BACKENDS if wl.name == "small" else ENGINES_CATNET
            for engine in [*engines, *COMPARE]:
                yield pytest.param(kernel, wl, engine, id=f"{kernel}-{wl.name}-{engine}")
    rungs = bench.ladder_rungs(BACKENDS)
    for wl in bench.CONV_WORKLOADS:
        for rung in rungs:
            yield pytest.param("conv_fwd", wl, rung, id=f"conv_fwd-{wl.name}-{rung}")


@pytest.mark.parametrize(("kernel", "wl", "engine"), list(_params()))
def test_kernel(benchmark, bench_group, kernel, wl, engine):
    bench_group(kernel, wl.label)
    case = bench.make_case(kernel, wl, engine, np.float32)
    benchmark.extra_info.update(
        engine=engine,
        flops=bench.kernel_flops(kernel, wl),
        bytes=bench.kernel_bytes(kernel, wl, 4),
    )
    benchmark(case.fn)
