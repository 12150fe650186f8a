"""Backend registry, default backend, thread setting and packaging facts."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import fastconv.kernels as K
import numpy as np
import pytest
from fastconv.kernels import _registry, _threads

import fastconv


def test_reference_backends_always_available():
    assert {"python", "numpy"} <= set(K.available_backends())
    built_in = {"python", "numpy", "numba", "cython"}  # these have every function, the optional pair too
    for name in K.available_backends():
        module = K.get_backend(name)
        assert module.NAME == name
        wanted = [f for f in K.BACKEND_FUNCTIONS if name in built_in or f not in K.OPTIONAL_FUNCTIONS]
        assert all(callable(getattr(module, f)) for f in wanted)


def test_no_top_level_kernels_package(tmp_path):
    """PyPI has an unrelated package called `kernels`: ours lives only at fastconv.kernels.

    Run from an empty folder, so the source tree's own kernels/ folder is not on sys.path."""
    assert fastconv.kernels.__name__ == "fastconv.kernels"
    code = "import importlib.util, fastconv.kernels; print(importlib.util.find_spec('kernels'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def test_unknown_and_wrong_type_backend_names():
    with pytest.raises(ValueError, match=r"backend: expected one of \[.*'python'.*\], got 'gpu'"):
        K.get_backend("gpu")
    with pytest.raises(TypeError, match=r"backend: expected a backend name \(str\), got int"):
        K.get_backend(3)


def test_register_backend_is_picked_up_and_validated(monkeypatch):
    monkeypatch.setattr(_registry, "_KNOWN", dict(_registry._KNOWN))
    monkeypatch.setattr(_registry, "_loaded", dict(_registry._loaded))
    incomplete = types.ModuleType("incomplete")
    with pytest.raises(TypeError, match=r"lacks contract functions: \['conv2d_forward'"):
        K.register_backend("incomplete", incomplete)
    alias = types.ModuleType("alias")
    for f in K.BACKEND_FUNCTIONS:
        setattr(alias, f, getattr(K.get_backend("numpy"), f))
    alias.NAME = "alias"
    K.register_backend("alias", alias)
    assert "alias" in K.available_backends()
    x = np.ones((1, 1, 3, 3))
    np.testing.assert_array_equal(K.relu_forward(-x, backend="alias"), np.zeros_like(x))


def test_backend_without_depthwise_kernels_runs_groups_channel_by_channel(monkeypatch):
    """The depthwise pair is optional (OPTIONAL_FUNCTIONS): without it, groups = C runs as one
    groups = 1 conv call per channel, with the reference's results; half of the pair is refused."""
    monkeypatch.setattr(_registry, "_KNOWN", dict(_registry._KNOWN))
    monkeypatch.setattr(_registry, "_loaded", dict(_registry._loaded))
    real = K.get_backend("numpy")
    calls = []
    plain = types.ModuleType("plain")
    for f in K.BACKEND_FUNCTIONS:
        if f not in K.OPTIONAL_FUNCTIONS:
            setattr(plain, f, getattr(real, f))
    plain.conv2d_forward = lambda x, w, b, g: calls.append("fwd") or real.conv2d_forward(x, w, b, g)
    plain.conv2d_backward = lambda dy, x, w, g, nd: calls.append("bwd") or real.conv2d_backward(dy, x, w, g, nd)
    plain.NAME = "plain"
    K.register_backend("plain", plain)
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((6, 1, 3, 3)), rng.standard_normal(6)
    args = (1, 1, 1, 3)  # stride, padding, dilation, groups = C: depthwise with multiplier 2
    y = K.conv2d_forward(x, w, b, *args, backend="plain")
    np.testing.assert_allclose(y, K.conv2d_forward(x, w, b, *args, backend="python"), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(K.conv2d_backward(dy, x, w, *args, backend="plain"),
                         K.conv2d_backward(dy, x, w, *args, backend="python")):  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert calls == ["fwd"] * 3 + ["bwd"] * 3
    half = types.ModuleType("half")
    for f in K.BACKEND_FUNCTIONS:
        if f != "depthwise_conv2d_backward":
            setattr(half, f, getattr(real, f))
    with pytest.raises(TypeError, match=r"\['depthwise_conv2d_forward'\] but not \['depthwise_conv2d_backward'\]"):
        K.register_backend("half", half)


def test_unimportable_backend_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(_registry, "_KNOWN", dict(_registry._KNOWN))
    monkeypatch.setattr(_registry, "_errors", dict(_registry._errors))
    K.register_backend("ghost", "fastconv.kernels.does_not_exist")
    assert "ghost" not in K.available_backends()
    assert "ModuleNotFoundError" in K.backend_errors()["ghost"]
    with pytest.raises(ValueError, match=r"backend: 'ghost' is not available on this machine"):
        K.get_backend("ghost")


def test_default_backend_set_and_env(monkeypatch):
    monkeypatch.setattr(_registry, "_default", None)
    monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    assert K.get_default_backend() == K.available_backends()[0]  # the fastest available
    K.set_default_backend("python")
    assert K.get_default_backend() == "python"
    with pytest.raises(ValueError, match="backend: expected one of"):
        K.set_default_backend("nope")
    assert K.get_default_backend() == "python"  # a failed set changes nothing
    monkeypatch.setattr(_registry, "_default", None)
    monkeypatch.setenv("FASTCONV_BACKEND", "numpy")
    assert K.get_default_backend() == "numpy"
    monkeypatch.setattr(_registry, "_default", None)
    monkeypatch.setenv("FASTCONV_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"FASTCONV_BACKEND='bogus': backend: expected one of .* got 'bogus'"):
        K.get_default_backend()
    monkeypatch.setattr(_registry, "_default", None)


def test_ops_use_the_default_backend(monkeypatch):
    calls = []
    real = K.get_backend("numpy")
    spy = types.ModuleType("spy")
    for f in K.BACKEND_FUNCTIONS:
        setattr(spy, f, getattr(real, f))
    spy.relu_forward = lambda x: calls.append(x.shape) or real.relu_forward(x)
    monkeypatch.setattr(_registry, "_KNOWN", dict(_registry._KNOWN))
    monkeypatch.setattr(_registry, "_loaded", dict(_registry._loaded))
    monkeypatch.setattr(_registry, "_default", None)
    K.register_backend("spy", spy)
    K.set_default_backend("spy")
    K.relu_forward(np.ones((2, 3)))
    assert calls == [(2, 3)]
    monkeypatch.setattr(_registry, "_default", None)


def test_set_num_threads_validates_and_governs_blas(monkeypatch):
    before = K.get_num_threads()
    with pytest.raises(ValueError, match=r"n: expected an int from 1 to \d+ .*got 0"):
        K.set_num_threads(0)
    # OpenMP starts every thread asked for: 200,000 segfaulted libgomp. Refused, state unchanged.
    for huge in (200_000, 2**31, _threads.max_threads() + 1):
        with pytest.raises(ValueError, match=rf"from 1 to {_threads.max_threads()} .*got {huge}"):
            K.set_num_threads(huge)
        assert K.get_num_threads() == before
    assert _threads.max_threads() >= max(64, 4 * (os.cpu_count() or 1))
    with pytest.raises(TypeError, match=r"n: expected a positive int, got 1.5"):
        K.set_num_threads(1.5)
    seen = []
    monkeypatch.setattr(_threads, "_hooks", [])
    K.register_thread_hook(seen.append)
    try:
        K.set_num_threads(np.int64(1))  # numpy integers are ints (as for stride, padding)
        assert K.get_num_threads() == 1 and type(K.get_num_threads()) is int
        assert seen[-1] == 1
        blas = [d for d in _threads.blas_info() if d.get("user_api") == "blas"]
        assert blas and all(d["num_threads"] == 1 for d in blas)
    finally:
        K.set_num_threads(before)


def test_num_threads_from_environment():
    code = "import fastconv.kernels as k; print(k.get_num_threads())"
    env = dict(os.environ, FASTCONV_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    env["FASTCONV_NUM_THREADS"] = "many"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "FASTCONV_NUM_THREADS: expected a positive integer, got 'many'" in bad.stderr
    env["FASTCONV_NUM_THREADS"] = "200000"  # a segfault in libgomp before the cap
    code = "import numpy as np, fastconv.kernels as k; k.relu_forward(np.zeros(2**20, np.float32), backend='cython')"
    huge = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert huge.returncode == 1 and "FASTCONV_NUM_THREADS: expected an int from 1 to" in huge.stderr


def test_openmp_build_is_reported():
    """setup.py compiles kernels/_openmp.pyx; it reports what the compiler actually did."""
    from fastconv.kernels import _openmp

    assert isinstance(_openmp.openmp_enabled(), bool)
    if _openmp.openmp_enabled():
        assert _openmp.openmp_version() >= 200805  # OpenMP 3.0 or newer
    else:
        assert _openmp.get_max_threads() == 1


def test_an_unknown_cython_simd_choice_is_reported_not_ignored():
    code = "import fastconv.kernels as k; k.available_backends(); print(k.backend_errors().get('cython', ''))"
    env = dict(os.environ, FASTCONV_CYTHON_SIMD="bogus")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "FASTCONV_CYTHON_SIMD: expected 'sse2', 'avx2' or unset, got 'bogus'" in out.stdout
