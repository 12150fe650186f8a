"""The catnet step (forward + backward + SGD update, batch 32, 64x64x3 float32) per engine.

Two definitions of the step, each grouped on its own: ``kernels`` (catnet written directly on
fastconv.kernels ops, no model code) and ``model`` (the fastconv model API: zoo.catnet,
BCEWithLogitsLoss, SGD); torch autograd joins both groups when installed. Bodies:
:func:`fastconv.bench.make_catnet_step`.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import bench

BACKENDS, ENGINES_CATNET, COMPARE = bench.suite_engines()

IMPLS = ["kernels"] + ([] if bench.model_api_available() else ["model"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("engine", ENGINES_CATNET + COMPARE)
def test_catnet_step(benchmark, bench_group, impl, engine):
    bench_group("catnet step", impl, f"batch {bench.BATCH}")
    step = bench.make_catnet_step(engine, bench.BATCH, dtype=np.float32, impl=impl)
    benchmark.extra_info.update(engine=engine, impl=impl, batch=bench.BATCH)
    loss = benchmark(step.fn)
    assert np.isfinite(loss)
