"""The catnet step (forward + backward + SGD update, batch 32, 64x64x3 float32) per engine.

Two definitions of the step: ``kernels`` (catnet written directly on fastconv.kernels ops, no
model code) and ``model`` (the fastconv model API: zoo.catnet, BCEWithLogitsLoss, SGD); plus
``torch`` (the same network with torch autograd) when it is installed. All in one group, so one
table compares them. Bodies: :func:`fastconv.bench.make_catnet_step`.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import bench

_, ENGINES_CATNET, COMPARE = bench.suite_engines()
IMPLS = ["kernels"] + ([] if bench.model_api_available() else ["model"])
CASES = [(impl, e) for impl in IMPLS for e in ENGINES_CATNET] + [("torch", e) for e in COMPARE]


@pytest.mark.parametrize(("impl", "engine"), CASES, ids=[f"{i}-{e}" if i != e else e for i, e in CASES])
def test_catnet_step(benchmark, bench_group, impl, engine):
    bench_group("catnet step", f"batch {bench.BATCH}")
    step = bench.make_catnet_step(engine, bench.BATCH, dtype=np.float32, impl=impl)
    benchmark.extra_info.update(engine=engine, impl=impl, batch=bench.BATCH)
    loss = benchmark(step.fn)
    assert np.isfinite(loss)
