"""Numba-specific behaviour: the conv ladder, the thread setting, the on-disk compile cache.

Correctness of the backend's contract functions is the conformance suite's job
(tests/test_conformance.py runs it over every backend, numba included). Here:

* every rung of ``numba_backend.LADDER`` agrees with the python reference (the naive rung
  bit for bit: it is the reference's loops with the same float64 accumulation);
* ``fastconv.set_num_threads`` reaches Numba, in the calling thread and in new threads, and
  the results do not depend on the thread count (no races, fixed reduction order);
* compiled kernels are written to the cache and loaded (not recompiled) by a new process;
* a read-only package directory still works and caches in the user cache directory.

The cache tests run subprocesses that compile only the small ReLU kernels (~1-2 s each).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import fastconv.kernels as K  # noqa: E402
from fastconv.kernels import _threads  # noqa: E402
from fastconv.kernels import numba_backend as nb  # noqa: E402
from fastconv.kernels import python_backend as ref  # noqa: E402

KERNELS_DIR = Path(nb.__file__).resolve().parent

# (x shape, w shape, stride, padding, dilation): odd sizes, non-square, strides 1-3, padding
# 0-2, dilation 1-2, batch 1, a 1x1 kernel and a kernel size that is not a multiple of 3 taps.
GEOMETRIES = [
    ((2, 3, 7, 9), (4, 3, 3, 3), 1, 1, 1),
    ((1, 2, 8, 6), (5, 2, 2, 3), 1, (2, 0), (2, 1)),
    ((2, 3, 9, 7), (3, 3, 3, 2), (2, 3), (1, 2), 1),
    ((1, 4, 5, 5), (2, 4, 1, 1), 1, 0, 1),
    ((2, 1, 10, 11), (7, 1, 5, 4), (3, 1), 2, (1, 2)),
]


def _problem(shape_x, shape_w, stride, padding, dilation, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape_x).astype(dtype)
    w = rng.standard_normal(shape_w).astype(dtype)
    b = rng.standard_normal(shape_w[0]).astype(dtype)
    g = K.conv2d_geometry(x.shape, w.shape, stride, padding, dilation)
    return x, w, b, g


@pytest.mark.parametrize("case", GEOMETRIES, ids=lambda c: f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_naive_rung_is_the_reference_bit_for_bit(case, dtype):
    # Same loops, same order, same float64 accumulator: any difference is a bug, not rounding.
    x, w, b, g = _problem(*case, dtype)
    for bias in (b, None):
        got = nb.LADDER["naive"](x, w, bias, g)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, ref.conv2d_forward(x, w, bias, g))


@pytest.mark.parametrize("case", GEOMETRIES, ids=lambda c: f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_ladder_rung_matches_the_reference(case, dtype):
    x, w, b, g = _problem(*case, dtype, seed=1)
    expected = ref.conv2d_forward(x, w, b, g).astype(np.float64)
    # float64: summation order only; float32: a few ulps of the sum of |x*w| per output.
    scale = ref.conv2d_forward(np.abs(x), np.abs(w), np.abs(b), g).astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    rungs = [name for name in nb.LADDER if name != "flat" or (g.sh, g.sw) == (1, 1)]
    assert {"naive", "reordered", "parallel", "im2col-blas"} <= set(rungs)
    for name in rungs:
        got = nb.LADDER[name](x, w, b, g)
        assert got.shape == g.y_shape and got.dtype == dtype, name
        assert np.all(np.abs(got - expected) <= tol * (scale + 1)), name


def test_flat_rung_and_strided_fallback_handle_big_channel_counts():
    # Channel counts that are not multiples of the 3-channel register block, on both paths.
    for stride in (1, 2):
        x, w, b, g = _problem((1, 5, 6, 7), (7, 5, 3, 3), stride, 1, 1, np.float64, seed=2)
        np.testing.assert_allclose(nb.conv2d_forward(x, w, b, g), ref.conv2d_forward(x, w, b, g), rtol=1e-12)
        dy = np.random.default_rng(3).standard_normal(g.y_shape)
        for got, exp in zip(nb.conv2d_backward(dy, x, w, g, True), ref.conv2d_backward(dy, x, w, g, True)):
            np.testing.assert_allclose(got, exp, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("where", ["x", "w"])
def test_infinities_match_the_reference_despite_the_flat_layout(where):
    # The flat kernels also compute wrap-around positions whose dy is zero; paired with an inf
    # in x (dW) or in w (dx) they would produce 0 * inf = NaN where the reference, which only
    # visits valid pairs, gives a number or +-inf. Edge columns are where this happens.
    rng = np.random.default_rng(5)
    x, w, _, g = _problem((2, 2, 6, 7), (4, 2, 3, 3), 1, 1, 1, np.float64, seed=5)
    if where == "x":
        x[0, 0, :, 0] = np.inf
        x[1, 1, 2, -1] = -np.inf
    else:
        w[1, 0, 1, 2] = np.inf
        w[3, 1, 0, 0] = -np.inf
    dy = rng.standard_normal(g.y_shape)
    with np.errstate(invalid="ignore"):  # the reference meets inf - inf too, as it should
        expected = ref.conv2d_backward(dy, x, w, g, True)
    for got, exp in zip(nb.conv2d_backward(dy, x, w, g, True), expected):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(exp))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(exp))
        finite = np.isfinite(exp)
        np.testing.assert_allclose(got[finite], exp[finite], rtol=1e-12)


@pytest.fixture
def restore_threads():
    before = K.get_num_threads()
    yield
    K.set_num_threads(before)


def test_set_num_threads_reaches_numba_in_this_and_other_threads(restore_threads):
    x = np.ones((2, 3, 4, 4), np.float32)
    w = np.ones((2, 3, 3, 3), np.float32)
    for n in (1, 2, 64):
        K.set_num_threads(n)
        K.conv2d_forward(x, w, None, 1, 1, backend="numba")
        assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
        # memory-bound kernels below the shared threshold keep to one thread (see _threads)
        K.relu_forward(x, backend="numba")
        assert numba.get_num_threads() == 1
    K.set_num_threads(2)
    big = np.ones(_threads.MEMORY_BOUND_PARALLEL_MIN, np.float32)
    K.relu_forward(big, backend="numba")
    assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    K.max_pool2d_backward(*K.max_pool2d_forward(x, 2), x.shape, backend="numba")
    assert numba.get_num_threads() == 1

    # Numba's setting is per calling thread: a fresh thread starts at the full pool size, so
    # the backend must apply fastconv's setting on each call, not once at import.
    K.set_num_threads(1)
    seen = []

    def worker():
        K.conv2d_forward(x, w, None, 1, 1, backend="numba")
        seen.append(numba.get_num_threads())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [1]


def test_results_do_not_depend_on_the_thread_count(restore_threads):
    # Every parallel kernel gives each task its own outputs and reduces in a fixed order, so
    # 1 and 2 threads must agree bit for bit (a race or a per-thread reduction would not).
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba was started with a single thread on this machine")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 4, 12, 10)).astype(np.float32)
    w = rng.standard_normal((7, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    dy = rng.standard_normal((5, 7, 12, 10)).astype(np.float32)
    results = []
    for n in (1, 2):
        K.set_num_threads(n)
        y = K.conv2d_forward(x, w, b, 1, 1, backend="numba")
        dx, dw, db = K.conv2d_backward(dy, x, w, 1, 1, backend="numba")
        p, am = K.max_pool2d_forward(y, 2, backend="numba")
        results.append((y, dx, dw, db, p, am, K.max_pool2d_backward(p, am, y.shape, backend="numba")))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


# ------------------------------------------------------------------ compile cache (subprocesses)
_PROBE = r"""
import json, sys, importlib
import numpy as np
nb = importlib.import_module(sys.argv[1])
pool = importlib.import_module(sys.argv[1].rsplit(".", 1)[0] + "._numba_pool")
x = np.array([[-1.0, 0.5], [np.nan, 2.0]], np.float32)
y = nb.relu_forward(x)
dx = nb.relu_backward(np.ones_like(x), x)
stats = {name: getattr(pool, name).stats for name in ("relu_fwd", "relu_bwd")}
print(json.dumps({
    "y": [None if v != v else float(v) for v in y.ravel()],
    "dx": dx.ravel().tolist(),
    "hits": sum(sum(s.cache_hits.values()) for s in stats.values()),
    "misses": sum(sum(s.cache_misses.values()) for s in stats.values()),
    "file": nb.__file__,
}))
"""


def _run_probe(module: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["y"] == [0.0, 0.5, None, 2.0]  # NaN stays NaN
    assert out["dx"] == [0.0, 1.0, 0.0, 1.0]
    return out


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(extra, PYTHONDONTWRITEBYTECODE="1")
    return env


def test_compiled_kernels_are_cached_and_reloaded_by_a_new_process(tmp_path):
    env = _clean_env(NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    first = _run_probe("fastconv.kernels.numba_backend", env)
    assert first["misses"] >= 2 and first["hits"] == 0  # compiled here, nothing to load
    index_files = list((tmp_path / "cache").rglob("_numba_pool.relu_f*.nbi"))
    assert index_files, "no cache index written under NUMBA_CACHE_DIR"
    second = _run_probe("fastconv.kernels.numba_backend", env)
    assert second["hits"] >= 2 and second["misses"] == 0  # loaded, not recompiled


def test_read_only_package_directory_caches_in_the_user_cache(tmp_path):
    # A copy of the kernels package whose directory cannot hold a __pycache__: a regular file
    # takes that name (this blocks it even for root, who ignores permission bits), and the
    # directory is made read-only for everyone else. Numba must fall back to the user cache.
    pkg = tmp_path / "site" / "rokernels"
    pkg.mkdir(parents=True)
    for src in KERNELS_DIR.glob("*.py"):
        shutil.copy2(src, pkg / src.name)
    (pkg / "__pycache__").write_text("not a directory\n")
    pkg.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    before = sorted(p.name for p in pkg.iterdir())
    user_cache = tmp_path / "xdg-cache"
    env = _clean_env(
        PYTHONPATH=str(tmp_path / "site"), XDG_CACHE_HOME=str(user_cache), HOME=str(tmp_path / "home")
    )
    try:
        first = _run_probe("rokernels.numba_backend", env)
        assert Path(first["file"]).parent == pkg  # the read-only copy was imported
        assert first["misses"] >= 2
        assert list(user_cache.rglob("_numba_pool.relu_f*.nbi")), "nothing cached in the user cache dir"
        assert sorted(p.name for p in pkg.iterdir()) == before  # nothing written in the package
        second = _run_probe("rokernels.numba_backend", env)
        assert second["hits"] >= 2 and second["misses"] == 0
    finally:
        pkg.chmod(stat.S_IRWXU)
