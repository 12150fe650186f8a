"""Safety of the compiled Cython kernels under arbitrary user input.

The Cython kernels run with bounds checks off, so a bad argument that slipped through to them
would read or write out of bounds (a segfault, which kills pytest and fails CI — that is the
real assertion here). Hypothesis generates valid and invalid arguments — any shape including
zeros, strides/paddings/dilations including 0, negatives, floats, huge values, dtypes from int
to complex to object, Fortran/strided/read-only/misaligned/byte-swapped arrays, mismatched
channels, out-of-range argmax — and drives them through the public API with
``backend="cython"``. Each call must either

* return the same result as the ``python`` reference on the same arguments (exactly for max
  pooling and relu, within float tolerance for sums), or
* raise a clean ValueError / TypeError / MemoryError, and then the reference rejects the same
  arguments with the same exception type. (The cython backend's one extra refusal, an image
  plane past BLAS's 32-bit ints, comes after allocating the output, so with huge paddings
  both fail allocation first with MemoryError.)

Sizes are kept small so that every accepted case can be checked against the naive reference;
"huge" parameters are chosen so that they either fail allocation at once or give tiny outputs
(e.g. padding 10**6 with stride 10**6), which exercises 64-bit index arithmetic.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
from pathlib import Path

import fastconv.kernels as K
import numpy as np
import pytest
from fastconv.kernels import _registry
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kernel_oracles import assert_within, conv_bounds

pytestmark = [
    pytest.mark.skipif("cython" not in K.available_backends(), reason="cython backend not built"),
    # NaN/inf inputs make the reference's scalar float arithmetic warn; that is expected here
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]



def _simd_builds() -> dict:
    """The builds of cython_conv.pyx this machine can run: 'sse2' always, 'avx2+fma' when built and supported."""
    if "cython" not in K.available_backends():
        return {}
    from fastconv.kernels import cython_conv

    builds = {cython_conv.simd(): cython_conv}
    if cython_conv.cpu_has_avx2_fma():
        with contextlib.suppress(ImportError):
            from fastconv.kernels import cython_conv_avx2

            builds[cython_conv_avx2.simd()] = cython_conv_avx2
    return builds


SIMD_BUILDS = _simd_builds()
# "auto": the backend's own choice of conv kernels (on this file's small shapes: im2col + GEMM),
# "gemm": im2col + GEMM forced.
# "direct-<simd>": every conv the direct kernels can take (stride 1, bounded padded planes) forced
# through those of that build, including shapes the backend would not send there for speed (rows
# shorter than a register block, 1x1 kernels, padding wider than the kernel, a single output
# row): their index arithmetic must hold anyway.
CONV_PATHS = ["auto", *(f"direct-{name}" for name in SIMD_BUILDS)]


@contextlib.contextmanager
def conv_path(path: str):
    from fastconv.kernels import cython_backend as cb

    saved = cb._conv, cb._use_direct
    if path == "gemm":
        cb._use_direct = lambda g: False
    elif path != "auto":
        cb._conv = SIMD_BUILDS[path.removeprefix("direct-")]
        cb._use_direct = cb._direct_applies  # without the speed rules of cb._use_direct
    try:
        yield
    finally:
        cb._conv, cb._use_direct = saved


CLEAN_ERRORS = (ValueError, TypeError, MemoryError)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FLOAT_DTYPES = [np.float32, np.float64, ">f4", ">f8"]  # byte-swapped ones are converted by dispatch
OTHER_DTYPES = [np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64, object]
LAYOUTS = ["C", "F", "strided", "readonly", "misaligned"]
HUGE = [10**6, 2**40, 2**62, 10**30]



def _param(minimum: int, usual: int = 3):
    """A stride (minimum 1) / padding (0) / dilation (1) argument: mostly valid ints or pairs
    (up to ``usual``), one time in ten out of range, absurdly large, or not an int at all."""
    ok = st.integers(minimum, usual)
    bad = st.one_of(
        st.integers(-3, minimum - 1),
        st.sampled_from(HUGE),
        st.tuples(ok, st.sampled_from(HUGE)),
        st.tuples(st.sampled_from(HUGE), st.sampled_from(HUGE)),
        st.sampled_from([1.0, 1.5, "1", None, True, (1,), (1, 1, 1), []]),
    )
    return _mostly(st.one_of(ok, st.tuples(ok, ok)), bad)


def _mostly(usual, unusual):
    # st.one_of does not pick its branches uniformly (it favours the simplest), so gate explicitly
    return st.sampled_from([True] * 9 + [False]).flatmap(lambda common: usual if common else unusual)


stride_p, padding_p, dilation_p = _param(1), _param(0), _param(1, usual=2)
size = _mostly(st.integers(1, 5), st.integers(0, 5))
kernel_size = _mostly(st.integers(1, 3), st.integers(0, 5))


def _make(data, shape, dtype, *, nan: bool = True) -> np.ndarray:
    """A random array of ``shape``/``dtype`` in a drawn memory layout (same values either way)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    # asarray: for shape () standard_normal returns a numpy scalar, whose astype(object) is a float
    values = np.asarray(rng.standard_normal(shape) * 3)
    if nan and values.size and np.dtype(dtype).kind == "f" and data.draw(st.booleans(), label="nan/inf"):
        flat = values.reshape(-1)
        flat[rng.integers(0, flat.size, 2)] = [np.nan, np.inf][rng.integers(0, 2)]
        values = flat.reshape(shape)
    if np.dtype(dtype) == np.dtype(object):
        return values.astype(object)
    dt = np.dtype(dtype)
    if dt.kind == "i":
        values = np.clip(values, -100, 100)
    elif dt.kind in "ub":
        values = np.abs(values) % 2 if dt.kind == "b" else np.abs(values)
    base = values.astype(dt)
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    if layout == "F":
        return np.asfortranarray(base)
    if layout == "strided" and base.ndim:
        wide = np.zeros((*base.shape[:-1], 2 * base.shape[-1]), dt)
        wide[..., ::2] = base
        return wide[..., ::2]
    if layout == "readonly":
        base.setflags(write=False)
        return base
    if layout == "misaligned" and dt.itemsize > 1 and base.size:
        raw = np.zeros(base.nbytes + 1, np.uint8)[1:]
        out = raw.view(dt).reshape(base.shape)
        out[...] = base
        return out
    return base


def _shape(data, ndim_ok: bool = True) -> tuple[int, ...]:
    ndim = 4 if ndim_ok else data.draw(st.sampled_from([0, 3, 5]), label="wrong ndim")
    return tuple(data.draw(st.lists(size, min_size=ndim, max_size=ndim), label="shape"))


def _dtype(data):
    return data.draw(_mostly(st.sampled_from(FLOAT_DTYPES), st.sampled_from(OTHER_DTYPES)), label="dtype")


def _rarely(data, label: str) -> bool:
    return data.draw(st.sampled_from([False] * 9 + [True]), label=label)


def _outcome(fn):
    try:
        return fn(), None
    except CLEAN_ERRORS as exc:  # anything else (or a crash) fails the test
        return None, exc


def _tolerance(result) -> float:
    arrays = result if isinstance(result, tuple) else (result,)
    return 2e-4 if any(a is not None and a.dtype == np.float32 for a in arrays) else 1e-9


def _same(got, ref, *, exact: bool = False) -> None:
    got_t = got if isinstance(got, tuple) else (got,)
    ref_t = ref if isinstance(ref, tuple) else (ref,)
    assert len(got_t) == len(ref_t)
    tol = _tolerance(ref)
    for g, r in zip(got_t, ref_t):
        if r is None:
            assert g is None
            continue
        assert g.shape == r.shape and g.dtype == r.dtype
        if exact or r.dtype.kind == "i":
            np.testing.assert_array_equal(g, r)
        else:
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol, equal_nan=True)


def _check(op, *args, exact: bool = False, **kwargs) -> None:
    """``op(*args, backend="cython")`` gives the reference's result or the reference's exception type."""
    got, err = _outcome(lambda: op(*args, backend="cython", **kwargs))
    ref, ref_err = _outcome(lambda: op(*args, backend="python", **kwargs))
    event(f"{op.__name__}: {'computed' if err is None else type(err).__name__}")  # --hypothesis-show-statistics
    if err is not None:
        assert ref_err is not None, f"cython raised {err!r}, the reference computed a result"
        assert type(err) is type(ref_err), f"cython raised {err!r}, the reference {ref_err!r}"
        return
    assert ref_err is None, f"cython computed a result, the reference raised {ref_err!r}"
    _same(got, ref, exact=exact)


@pytest.mark.parametrize("path", CONV_PATHS)
@SETTINGS
@given(st.data())
def test_conv2d_forward_any_arguments(path, data):
    dtype = _dtype(data)
    xs = _shape(data, ndim_ok=not _rarely(data, "wrong ndim"))
    x = _make(data, xs, dtype)
    c = data.draw(size, label="w channels") if len(xs) != 4 or _rarely(data, "channel mismatch") else xs[1]
    ws = (data.draw(size), c, data.draw(kernel_size), data.draw(kernel_size))
    w_dtype = np.float64 if _rarely(data, "mixed dtypes") else dtype
    w = _make(data, ws, w_dtype, nan=False)
    b = data.draw(st.sampled_from(["none", "ok", "ok", "wrong"]), label="bias")
    bias = None if b == "none" else _make(data, (ws[0] if b == "ok" else ws[0] + 1,), w.dtype, nan=False)
    stride, padding, dilation = data.draw(stride_p), data.draw(padding_p), data.draw(dilation_p)
    try:
        out = math.prod(K.conv2d_geometry(xs, ws, stride, padding, dilation).y_shape)
    except (ValueError, TypeError):
        out = 0
    if 10**5 < out < 2**40:
        # allocatable (memory is overcommitted: even GBs of y "succeed") but too big for the naive
        # reference, e.g. padding 10**6 on one axis with stride 1; past 2**40 elements both fail
        return
    with conv_path(path):
        _check(K.conv2d_forward, x, w, bias, stride, padding, dilation)


@pytest.mark.parametrize("path", CONV_PATHS)
@SETTINGS
@given(st.data())
def test_conv2d_backward_any_arguments(path, data):
    dtype = _dtype(data)
    xs = _shape(data)
    x = _make(data, xs, dtype)
    c = data.draw(size, label="w channels") if _rarely(data, "channel mismatch") else xs[1]
    ws = (data.draw(size), c, data.draw(kernel_size), data.draw(kernel_size))
    w = _make(data, ws, dtype, nan=False)
    stride, padding, dilation = data.draw(stride_p), data.draw(padding_p), data.draw(dilation_p)
    try:  # mostly a dy of the right shape (else backward is rejected before it starts)
        ys = K.conv2d_geometry(xs, ws, stride, padding, dilation).y_shape
        if _rarely(data, "wrong dy shape") or max(ys) > 1000:
            ys = _shape(data)
    except (ValueError, TypeError):
        ys = _shape(data)
    # No NaN/inf in dy: where a NaN gradient meets zero padding, dW differs legitimately between
    # the reference (skips padded taps) and im2col + GEMM (multiplies by the zeros: 0*NaN = NaN).
    dy = _make(data, ys, np.float64 if _rarely(data, "mixed dtypes") else dtype, nan=False)
    need_dx = data.draw(st.booleans(), label="need_dx")
    with conv_path(path):
        _check(K.conv2d_backward, dy, x, w, stride, padding, dilation, need_dx=need_dx)


groups_p = st.sampled_from(["depthwise"] * 8 + ["other", "bad"])


def _groups(data, c: int):
    """Mostly C (depthwise); sometimes another int, 0, a negative, a float or a bool."""
    kind = data.draw(groups_p, label="groups")
    if kind == "depthwise":
        return c
    if kind == "other":
        return data.draw(st.integers(1, 6), label="groups int")
    return data.draw(st.sampled_from([0, -1, 2.0, True, None, "2", 2**62]), label="groups bad")


@SETTINGS
@given(st.data())
def test_depthwise_conv_any_arguments(data):
    """Depthwise (groups = C) through the cython kernels: with NaN/inf anywhere (the contract's
    0 * inf = NaN where the padding meets an inf weight or dy must hold too), any shape, channel
    multiplier and stride/padding/dilation."""
    dtype = _dtype(data)
    xs = _shape(data)
    x = _make(data, xs, dtype)
    c = xs[1]
    mult = data.draw(st.integers(1, 3), label="filters per channel")
    cw = data.draw(size, label="w channels") if _rarely(data, "w channels not 1") else 1
    ws = (max(c, 1) * mult, cw, data.draw(kernel_size), data.draw(kernel_size))
    w = _make(data, ws, dtype)
    bias = _make(data, (ws[0],), dtype) if data.draw(st.booleans(), label="bias") else None
    stride, padding, dilation = data.draw(stride_p), data.draw(padding_p), data.draw(dilation_p)
    groups = _groups(data, c)
    try:
        ys = K.conv2d_geometry(xs, ws, stride, padding, dilation, groups).y_shape
    except (ValueError, TypeError):
        ys = _shape(data)
    if 10**4 < math.prod(ys) < 2**40:
        return  # allocatable but too big for the naive reference (see the conv2d test)
    _check(K.conv2d_forward, x, w, bias, stride, padding, dilation, groups)
    if math.prod(ys) > 10**4:  # a dy that large cannot be made: a small one, of the wrong shape
        ys = _shape(data)
    dy = _make(data, ys, dtype)
    need_dx = data.draw(st.booleans(), label="need_dx")
    _check(K.conv2d_backward, dy, x, w, stride, padding, dilation, groups, need_dx=need_dx)


@pytest.mark.parametrize("path", CONV_PATHS)
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_direct_conv_on_wide_rows_matches_numpy(path, data):
    """Shapes the direct kernels are chosen for (stride 1, rows of 16+ pixels: several register
    blocks per row, a partial last one), any padding / dilation / channel count, against the
    numpy backend in float64 (sizes too big for the naive reference). x may hold NaN/inf: the
    direct dW then falls back to im2col + GEMM where its wrap-around sums would differ."""
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    n, c, k = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    h, w = data.draw(st.integers(1, 8)), data.draw(st.integers(16, 40))
    r, s = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    padding = (data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4)))
    dilation = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    try:
        g = K.conv2d_geometry((n, c, h, w), (k, c, r, s), 1, padding, dilation)
    except ValueError:
        return  # kernel larger than the padded input
    x = _make(data, g.x_shape, dtype)
    wt = _make(data, g.w_shape, dtype, nan=False)
    b = _make(data, (k,), dtype, nan=False)
    dy = _make(data, g.y_shape, dtype, nan=False)
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, wt, b, dy))
    tol = 2e-4 if dtype == np.float32 else 1e-9
    with conv_path(path):
        y = K.conv2d_forward(x, wt, b, 1, padding, dilation, backend="cython")
        grads = K.conv2d_backward(dy, x, wt, 1, padding, dilation, backend="cython")
    ref = (K.conv2d_forward(x64, w64, b64, 1, padding, dilation, backend="numpy"),
           *K.conv2d_backward(dy64, x64, w64, 1, padding, dilation, backend="numpy"))  # fmt: skip
    # Finite x: the rigorous per-element rounding bound of kernel_oracles (a float32 result may
    # differ from the exact sum by (terms) x u x sum|terms|, the float64 reference by as much in
    # float64), far tighter than a flat tolerance. With NaN/inf in x: same NaN/inf places, and
    # the flat tolerance for the rest.
    bounds = (conv_bounds(x64, w64, b64, dy64, 1, padding, dilation, dtype, two_sided=dtype == np.float64)
              if np.isfinite(x).all() else None)  # fmt: skip
    for i, (got, want) in enumerate(zip((y, *grads), ref)):
        assert got.dtype == dtype
        if bounds is not None:
            assert_within(got, want, bounds[i], ("y", "dx", "dw", "db")[i])
            continue
        scale = max(1.0, float(np.nanmax(np.abs(np.where(np.isinf(want), 0, want)), initial=0)))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True)


_kernel_ok = st.integers(1, 4)
pool_kernel = _mostly(
    st.one_of(_kernel_ok, st.tuples(_kernel_ok, _kernel_ok)), st.sampled_from([-1, 0, 2.0, None, 10**30])
)
_pad_ok = st.integers(0, 1)
pool_padding = _mostly(st.one_of(_pad_ok, st.tuples(_pad_ok, _pad_ok)), st.sampled_from([-1, 2, 10**6, 1.0]))


@SETTINGS
@given(st.data())
def test_pooling_forward_any_arguments(data):
    x = _make(data, _shape(data, ndim_ok=not _rarely(data, "wrong ndim")), _dtype(data))
    if x.dtype.kind == "f" and x.size and data.draw(st.booleans(), label="ties"):
        x = np.round(x)  # many equal values: the first-maximum rule decides
    kernel = data.draw(pool_kernel)
    stride = data.draw(_mostly(st.one_of(st.none(), stride_p), stride_p))
    padding = data.draw(pool_padding)
    _check(K.max_pool2d_forward, x, kernel, stride, padding, exact=True)
    _check(K.avg_pool2d_forward, x, kernel, stride, padding)


@SETTINGS
@given(st.data())
def test_pooling_backward_any_arguments(data):
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    xs = tuple(data.draw(st.lists(st.integers(1, 5), min_size=4, max_size=4), label="x shape"))
    x = np.random.default_rng(0).standard_normal(xs).astype(dtype)
    kernel = data.draw(st.integers(1, 3))
    stride = data.draw(st.integers(1, 3))
    padding = data.draw(st.integers(0, kernel // 2))
    try:
        y, argmax = K.max_pool2d_forward(x, kernel, stride, padding, backend="python")
    except ValueError:  # window larger than the padded input
        return
    dy = _make(data, y.shape, data.draw(st.sampled_from([dtype, dtype, np.int32, np.float16])))
    how = data.draw(st.sampled_from(["ok", "out of range", "dtype", "layout", "input_shape"]), label="corruption")
    input_shape: object = xs
    if how == "out of range":
        argmax = argmax.copy()
        argmax.flat[data.draw(st.integers(0, argmax.size - 1))] = data.draw(
            st.sampled_from([-1, xs[2] * xs[3], 2**62, -(2**63)])
        )
    elif how == "dtype":
        argmax = argmax.astype(data.draw(st.sampled_from([np.int32, np.uint16, np.float64, np.int8, object])))
    elif how == "layout":
        argmax = np.asfortranarray(argmax)
    elif how == "input_shape":
        input_shape = data.draw(
            st.sampled_from(
                [
                    (xs[0], xs[1], xs[2] + 1, xs[3]),
                    (xs[0], xs[1] + 1, xs[2], xs[3]),
                    (xs[0], xs[1], -xs[2], xs[3]),
                    (xs[0], xs[1], 0, xs[3]),
                    (xs[0], xs[1], 2**62, 2**62),
                    (xs[0], xs[1], xs[2]),
                    (xs[0], xs[1], 1.5, xs[3]),
                ]
            )
        )
    _check(K.max_pool2d_backward, dy, argmax, input_shape)
    _check(K.avg_pool2d_backward, dy, input_shape, kernel, stride, padding)


@SETTINGS
@given(st.data())
def test_relu_any_arguments(data):
    ndim = data.draw(st.integers(0, 4))
    shape = tuple(data.draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    dtype = _dtype(data)
    x = _make(data, shape, dtype)
    _check(K.relu_forward, x, exact=True)
    other = shape if data.draw(st.integers(0, 4)) else (*shape, 1)
    dy = _make(data, other, data.draw(st.sampled_from([dtype, dtype, np.float64])))
    _check(K.relu_backward, dy, x, exact=True)


def test_large_relu_and_pool_cross_thread_chunks():
    """Above the pooling/relu kernels' parallel threshold (2**24 elements): many OpenMP tasks,
    an odd tail chunk, odd plane sizes."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 2049, 4099)).astype(np.float32)
    assert x.size > 2**24
    x[0, 0, :4, :4] = np.nan
    y = K.relu_forward(x, backend="cython")
    np.testing.assert_array_equal(y, np.where(np.isnan(x) | (x > 0), x, 0))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(K.relu_backward(dy, x, backend="cython"), np.where(x > 0, dy, 0))
    got, argmax = K.max_pool2d_forward(x, 2, backend="cython")
    # independent oracle: the four taps of each 2x2 window in row-major order, first max wins
    taps = np.stack([x[..., : 2 * 1024 : 2, : 2 * 2049 : 2], x[..., : 2 * 1024 : 2, 1 : 2 * 2049 : 2],
                     x[..., 1 : 2 * 1024 : 2, : 2 * 2049 : 2], x[..., 1 : 2 * 1024 : 2, 1 : 2 * 2049 : 2]])
    first = np.argmax(taps, axis=0)  # np.argmax: first maximum, NaN counts as the maximum
    np.testing.assert_array_equal(got, np.take_along_axis(taps, first[None], 0)[0])
    rows = 2 * np.arange(1024)[:, None] + first // 2
    cols = 2 * np.arange(2049)[None, :] + first % 2
    np.testing.assert_array_equal(argmax, rows * 4099 + cols)
    dx = K.max_pool2d_backward(np.ones_like(got), argmax, x.shape, backend="cython")
    assert dx.sum() == got.size and set(np.unique(dx)) <= {0.0, 1.0}


@pytest.mark.parametrize("x_shape", [(1, 2, 1, 2), (2, 3, 3, 1), (1, 1, 1, 1)])
def test_one_by_one_kernel_with_irrelevant_stride(x_shape):
    """Regression (found by the hypothesis tests above): a 1x1 kernel with stride 2 and a single
    output along an axis was mistaken for the copy-free stride-1 path, reading the wrong pixels."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((3, x_shape[1], 1, 1))
    y = K.conv2d_forward(x, w, None, 2, backend="cython")
    np.testing.assert_allclose(y, K.conv2d_forward(x, w, None, 2, backend="python"), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, ref in zip(
        K.conv2d_backward(dy, x, w, 2, backend="cython"), K.conv2d_backward(dy, x, w, 2, backend="python")
    ):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", ["gemm", *CONV_PATHS[1:]])
def test_parallel_conv_backward_is_race_free_and_reproducible(path):
    """Threads own whole images (dx) and private dW/db partials: with a fixed thread count the
    result is bitwise reproducible (a data race would make repeated runs differ), and it agrees
    with one thread up to summation order."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 3, 9, 20)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((7, 5, 9, 20)).astype(np.float32)
    before = K.get_num_threads()
    try:
        with conv_path(path):
            K.set_num_threads(2)
            runs = [K.conv2d_backward(dy, x, w, 1, 1, backend="cython") for _ in range(5)]
            K.set_num_threads(1)
            serial = K.conv2d_backward(dy, x, w, 1, 1, backend="cython")
    finally:
        K.set_num_threads(before)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b)
    ref = K.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), 1, 1, backend="python")
    for par, ser, r in zip(runs[0], serial, ref):
        np.testing.assert_allclose(par, r, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ser, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", CONV_PATHS)
def test_huge_dilation_with_a_single_output_row(path):
    """Regression: padding 2**58 and dilation 2**59 on H leave one output row whose two kernel
    rows are 2**59 apart (dispatch stores the stride as 1). Padded planes sized by padding or
    dilation would have 2**64 elements (a wrapped, negative size: ValueError where the
    reference computes): the direct kernels must not take it, or must size by what is read."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 1, 17))
    w = rng.standard_normal((3, 2, 2, 3))
    padding, dilation = (2**58, 1), (2**59, 1)
    with conv_path(path):
        y = K.conv2d_forward(x, w, None, 1, padding, dilation, backend="cython")
        grads = K.conv2d_backward(np.ones_like(y), x, w, 1, padding, dilation, backend="cython")
    ref_y = K.conv2d_forward(x, w, None, 1, padding, dilation, backend="python")
    ref_grads = K.conv2d_backward(np.ones_like(ref_y), x, w, 1, padding, dilation, backend="python")
    for got, ref in zip((y, *grads), (ref_y, *ref_grads)):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("group_max", [1, 2, 3, 4, 8])
def test_direct_backward_groups_of_images_agree(group_max, monkeypatch):
    """The direct backward runs its dW pass over groups of images (cython_backend._dw_group):
    any group size, including a short last group (7 images in groups of 2, 3, 4), gives the
    same gradients as the float64 reference, and dx does not depend on the grouping at all."""
    from fastconv.kernels import cython_backend as cb

    if not cb._direct_kernels_fast:
        pytest.skip("the direct kernels are not used on a CPU without AVX2 + FMA")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 5, 16, 16)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((7, 6, 16, 16)).astype(np.float32)
    monkeypatch.setattr(cb, "_DW_GROUP_BYTES", 1 << 40)
    before = K.get_num_threads()
    try:
        K.set_num_threads(1)
        monkeypatch.setattr(cb, "_DW_GROUP_MAX", 1)
        single = K.conv2d_backward(dy, x, w, 1, 1, backend="cython")
        monkeypatch.setattr(cb, "_DW_GROUP_MAX", group_max)
        assert cb._dw_group(K.conv2d_geometry(x.shape, w.shape, 1, 1), 1, 4, 1) == min(group_max, 7)
        grouped = K.conv2d_backward(dy, x, w, 1, 1, backend="cython")
    finally:
        K.set_num_threads(before)
    ref = K.conv2d_backward(*(a.astype(np.float64) for a in (dy, x, w)), 1, 1, backend="numpy")
    np.testing.assert_array_equal(grouped[0], single[0])
    for got, want in zip(grouped, ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_direct_backward_rejects_scratch_too_small_for_its_group():
    """conv2d_backward_direct checks its scratch against group * channels planes: buffers
    sized for one image with group=2 (an out-of-bounds write otherwise), or group < 1, raise."""
    from fastconv.kernels import cython_backend as cb

    conv = cb._conv
    x = np.zeros((3, 2, 4, 16), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    g = K.conv2d_geometry(x.shape, w.shape, 1, 1)
    dy = np.zeros(g.y_shape, np.float32)
    hp, wp = conv.input_grid(g)
    hq, wq = conv.dx_grid(g)
    plane = conv.padded_plane_size(hp, wp)
    qplane = max(conv.padded_plane_size(g.ho, wp), conv.padded_plane_size(hq, wq))
    kb = conv.BLOCK_CHANNELS
    wt = np.zeros(-(-2 // kb) * kb * 3 * 9, np.float32)  # dx's packed weights: (ceil(C/KB)*KB, K, R*S)
    args = (dy, x, wt, np.zeros(2, np.float32), cb._tap_offsets(g, wp), cb._tap_offsets(g, wq),
            np.empty(g.x_shape, np.float32), np.zeros((1, 3 * 2 * 9 * conv.DW_LANES), np.float32),
            np.zeros((1, 3)))  # fmt: skip
    one = (np.empty((1, 2 * plane), np.float32), np.empty((1, 3 * qplane), np.float32))
    conv.conv2d_backward_direct(*args, *one, g, True, 1, 1)  # sized for group 1: fine
    for group in (2, 0, -1):
        with pytest.raises(ValueError, match=r"group|scratch buffers"):
            conv.conv2d_backward_direct(*args, *one, g, True, group, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_sum_dw_lanes_adds_threads_and_lanes_in_float64(dtype, threads):
    """The lane reduction of the direct dW pass equals a float64 sum over threads and lanes
    (values chosen so that a float32 accumulator would lose the small ones), and partials
    too short for the requested sums raise instead of being read past their end."""
    from fastconv.kernels import cython_backend as cb

    conv = cb._conv
    lanes, sums = conv.DW_LANES, 1000
    rng = np.random.default_rng(3)
    part = (rng.standard_normal((threads, sums * lanes)) * 10.0 ** rng.integers(-6, 6, (threads, sums * lanes)))
    part = part.astype(dtype)
    out = np.empty(sums)
    conv.sum_dw_lanes(part, out, threads)
    want = part.astype(np.float64).reshape(threads, sums, lanes).sum(axis=(0, 2))
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12 * np.abs(part).max())
    with pytest.raises(ValueError, match=r"1001 sums need"):
        conv.sum_dw_lanes(part, np.empty(sums + 1), threads)


@SETTINGS
@given(st.data())
def test_batch_norm_any_arguments(data):
    dtype = _dtype(data)
    xs = _shape(data, ndim_ok=not _rarely(data, "wrong ndim"))
    x = _make(data, xs, dtype)
    c = xs[1] if len(xs) > 1 else 1
    wrong = _rarely(data, "wrong channel count")
    w = _make(data, (c + 1 if wrong else c,), data.draw(st.sampled_from([dtype, dtype, dtype, np.float64])))
    b = _make(data, (c,), dtype)
    training = data.draw(st.booleans(), label="training")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="stats seed"))
    mean, var = rng.standard_normal(c), rng.uniform(0, 2, c) * (-1 if _rarely(data, "negative var") else 1)
    stats = () if training else (mean, var)
    eps = data.draw(_mostly(st.sampled_from([1e-5, 0.1]), st.sampled_from([0.0, -1.0, float("nan"), "1"])))
    _check(K.batch_norm_forward, x, w, b, eps, *stats)
    dy = _make(data, xs if not _rarely(data, "dy shape") else (*xs, 1), dtype)
    _check(K.batch_norm_backward, dy, x, w, mean, var, eps, training)


def _module_builds(name: str) -> dict:
    """The builds of kernels/<name>.pyx this machine can run: 'sse2' always, 'avx2' when its
    AVX2 build (<name>_avx2, compiled without FMA) exists and the CPU supports it."""
    if "cython" not in K.available_backends():
        return {}
    from fastconv.kernels import cython_conv

    builds = {"sse2": importlib.import_module(f"fastconv.kernels.{name}")}
    if cython_conv.cpu_has_avx2_fma():
        with contextlib.suppress(ImportError):
            builds["avx2"] = importlib.import_module(f"fastconv.kernels.{name}_avx2")
    return builds


NORM_BUILDS = _module_builds("cython_norm")


def test_cython_norm_builds_agree():
    """The SSE2 and AVX2 builds of the batch-norm kernels compute bit-identical results."""
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((3, 4, 37)) + 2, rng.standard_normal((3, 4, 37))
    results = []
    for mod in NORM_BUILDS.values():
        m, v, sg, sgx = np.empty(4), np.empty(4), np.empty(4), np.empty(4)
        mod.batch_norm_stats(x, m, v, 1)
        mod.batch_norm_grad_sums(dy, x, m, sg, sgx, 1)
        results.append((m, v, sg, sgx))
    np.testing.assert_allclose(results[0][0], x.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(results[0][1], x.var(axis=(0, 2)), rtol=1e-12)
    for other in results[1:]:  # the AVX2 build is compiled without FMA: bit-identical
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


POOL_BUILDS = _module_builds("cython_pool")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, k, s, p", [((2, 3, 9, 37), 2, 2, 0), ((1, 2, 64, 600), 2, 2, 0),
                                            ((2, 2, 7, 8), 3, 2, 1), ((1, 3, 5, 6), (2, 3), 1, (1, 1))])
def test_cython_pool_builds_agree(dtype, shape, k, s, p):
    """Every build of the pooling kernels gives the python reference's max / argmax and
    bit-identical averages (compares, selects and float64 sums are exact: the AVX2 build must
    not change a bit), on planes with ties, NaN, -inf and rows longer than one 2x2 block."""
    rng = np.random.default_rng(11)
    x = rng.integers(-3, 4, shape).astype(dtype)  # small integers: many ties
    x.flat[::17] = np.nan
    x.flat[5::23] = -np.inf
    g = K.pool2d_geometry(shape, k, s, p)
    dy = rng.standard_normal(g.y_shape).astype(dtype)
    y_ref, a_ref = K.max_pool2d_forward(x, k, s, p, backend="python")
    avg_ref = K.avg_pool2d_forward(x, k, s, p, backend="python")
    davg_ref = K.avg_pool2d_backward(dy, shape, k, s, p, backend="python")
    dmax_ref = K.max_pool2d_backward(dy, a_ref, shape, backend="python")
    assert POOL_BUILDS
    got = {}
    for name, mod in POOL_BUILDS.items():
        y, a = np.empty(g.y_shape, dtype), np.empty(g.y_shape, np.int64)
        mod.max_pool2d_forward(x, y, a, g, 1)
        dx = np.empty(shape, dtype)
        mod.max_pool2d_backward(dy, a_ref, dx, g, 1)
        avg = np.empty(g.y_shape, dtype)
        mod.avg_pool2d_forward(x, avg, g, 1)
        davg = np.full(shape, np.nan, dtype)
        mod.avg_pool2d_backward(dy, davg, g, 1)
        got[name] = (y, a, dx, avg, davg)
        np.testing.assert_array_equal(y, y_ref, err_msg=name)
        np.testing.assert_array_equal(a, a_ref, err_msg=name)
        np.testing.assert_array_equal(avg, avg_ref, err_msg=name)
        # overlapping windows add several shares in x's dtype (the reference: float64)
        tol = 4 * np.finfo(dtype).eps * np.abs(dy).max()
        np.testing.assert_allclose(dx, dmax_ref, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(davg, davg_ref, rtol=0, atol=tol, err_msg=name)
    first = next(iter(got.values()))
    for name, arrays in got.items():
        for one, other in zip(first, arrays):
            np.testing.assert_array_equal(one, other, err_msg=f"{name} differs from sse2")


DEPTHWISE_BUILDS = _module_builds("cython_depthwise")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])  # the flat kernels, then the row kernels
def test_cython_depthwise_builds_agree(monkeypatch, dtype, stride):
    """Every build of the depthwise kernels gives the same bits (the AVX2 one is compiled without
    FMA), through the backend's routing, and agrees with the python reference."""
    from fastconv.kernels import cython_backend as cb

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 13, 37)).astype(dtype)  # rows longer than one AVX2 vector
    w = rng.standard_normal((8, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    args = (stride, 1, 1, 4)
    y_ref = K.conv2d_forward(x, w, b, *args, backend="python")
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    refs = K.conv2d_backward(dy, x, w, *args, backend="python")
    assert DEPTHWISE_BUILDS
    got = {}
    for name, mod in DEPTHWISE_BUILDS.items():
        monkeypatch.setattr(cb, "_depthwise", mod)
        got[name] = (K.conv2d_forward(x, w, b, *args, backend="cython"),
                     *K.conv2d_backward(dy, x, w, *args, backend="cython"))  # fmt: skip
        tol = 64 * np.finfo(dtype).eps
        for a, r in zip(got[name], (y_ref, *refs)):
            np.testing.assert_allclose(a, r, rtol=tol, atol=tol * np.abs(r).max(), err_msg=name)
    first = next(iter(got.values()))
    for name, arrays in got.items():
        for one, other in zip(first, arrays):
            np.testing.assert_array_equal(one, other, err_msg=f"{name} differs from sse2")


@pytest.mark.parametrize("build", list(NORM_BUILDS))
def test_cython_norm_kernels_check_shapes_themselves(build):
    """The kernels are importable, so they check the shapes they index even though dispatch has."""
    cython_norm = NORM_BUILDS[build]
    x, v3 = np.ones((2, 3, 4)), np.ones(3)
    with pytest.raises(ValueError, match=r"var: expected shape \(3,\), got \(2,\)"):
        cython_norm.batch_norm_stats(x, np.empty(3), np.empty(2), 1)
    with pytest.raises(ValueError, match=r"y: expected shape \(2, 3, 4\), got \(2, 3, 5\)"):
        cython_norm.batch_norm_apply(x, v3, v3, v3, np.empty((2, 3, 5)), 1)
    with pytest.raises(ValueError, match=r"bias: expected shape \(3,\)"):
        cython_norm.batch_norm_apply(x, v3, v3, np.ones(2), np.empty_like(x), 1)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3, 4\)"):
        cython_norm.batch_norm_grad_sums(np.ones((1, 3, 4)), x, v3, np.empty(3), np.empty(3), 1)
    with pytest.raises(ValueError, match=r"k1: expected shape \(3,\)"):
        cython_norm.batch_norm_dx(x, x, v3, v3, v3, np.ones(2), np.empty_like(x), 1)
    with pytest.raises(ValueError, match="expected N >= 1 and S >= 1"):
        cython_norm.batch_norm_stats(np.ones((2, 3, 0)), np.empty(3), np.empty(3), 1)


def test_large_batch_norm_crosses_the_parallel_threshold():
    """A large batch norm (2**24 values, far above MEMORY_BOUND_PARALLEL_MIN) on OpenMP threads."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 3, 1500, 2000), dtype=np.float32) + 2).astype(np.float32)
    assert x.size > 2**24
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    w, b = np.array([1.0, 2.0, -1.0], np.float32), np.array([0.0, 1.0, 2.0], np.float32)
    y, mean, var = K.batch_norm_forward(x, w, b, backend="cython")
    yr, mr, vr = K.batch_norm_forward(x, w, b, backend="numpy")
    np.testing.assert_allclose(mean, mr, rtol=1e-6)
    np.testing.assert_allclose(var, vr, rtol=1e-5)
    np.testing.assert_allclose(y, yr, rtol=1e-5, atol=1e-5)
    got = K.batch_norm_backward(dy, x, w, mean, var, backend="cython")
    ref = K.batch_norm_backward(dy, x, w, mean, var, backend="numpy")
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(np.abs(r).max()))


def test_memory_bound_kernels_on_threads_give_the_serial_bits(monkeypatch):
    """ReLU, pooling and batch norm take threads from _threads.MEMORY_BOUND_PARALLEL_MIN
    elements on: threads own whole planes / chunks / channels, so the threaded result must be
    bitwise the serial one (a race or a wrong plane offset would differ). The threshold is
    lowered so that small, odd-sized arrays take the threaded path."""
    from fastconv.kernels import _openmp, _threads
    from fastconv.kernels import cython_backend as cb

    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 5, 13, 11)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    dy_relu = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)

    def run():
        y, am = K.max_pool2d_forward(x, 3, 2, 1, backend="cython")
        a = K.avg_pool2d_forward(x, 2, 2, 1, backend="cython")
        bn, mean, var = K.batch_norm_forward(x, w, b, backend="cython")
        return [
            K.relu_forward(x, backend="cython"), K.relu_backward(dy_relu, x, backend="cython"),
            y, am, K.max_pool2d_backward(np.ones_like(y), am, x.shape, backend="cython"),
            a, K.avg_pool2d_backward(np.ones_like(a), x.shape, 2, 2, 1, backend="cython"),
            bn, mean, var, *K.batch_norm_backward(dy_relu, x, w, mean, var, backend="cython"),
        ]

    before = K.get_num_threads()
    try:
        K.set_num_threads(2)
        monkeypatch.setattr(_threads, "MEMORY_BOUND_PARALLEL_MIN", 64)
        assert cb._threads_memory_bound(15, x.size) == (2 if _openmp.openmp_enabled() else 1)
        assert cb._threads_memory_bound(15, 63) == 1
        threaded = run()
        monkeypatch.setattr(_threads, "MEMORY_BOUND_PARALLEL_MIN", 1 << 62)
        assert cb._threads_memory_bound(15, x.size) == 1
        serial = run()
    finally:
        K.set_num_threads(before)
    for got, want in zip(threaded, serial, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", [b for b in ("cython", "numba") if b in K.available_backends()])
def test_depthwise_kernels_on_threads_give_the_serial_bits(monkeypatch, backend):
    """The depthwise kernels are memory-bound too: threads own whole planes (forward, dx) or
    channels (dW), each with its own scratch (threadid()). Threaded must be bitwise serial, on the
    flat (stride 1) and row (stride 2) kernels, with a channel multiplier and NaN/inf about."""
    from fastconv.kernels import _threads

    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 5, 13, 11)).astype(np.float32)
    w = rng.standard_normal((15, 1, 3, 2)).astype(np.float32)
    b = rng.standard_normal(15).astype(np.float32)

    def run(x, w):
        out = []
        for stride in (1, 2):
            y = K.conv2d_forward(x, w, b, stride, 1, 1, 5, backend=backend)
            dy = np.cos(y)  # non-finite where y is
            out += [y, *K.conv2d_backward(dy, x, w, stride, 1, 1, 5, backend=backend)]
        return out

    x_bad, w_bad = x.copy(), w.copy()
    x_bad[1, 2, 4, 4], w_bad[7, 0, 0, 1] = np.nan, np.inf
    before = K.get_num_threads()
    try:
        K.set_num_threads(2)
        monkeypatch.setattr(_threads, "MEMORY_BOUND_PARALLEL_MIN", 64)
        threaded = run(x, w) + run(x_bad, w_bad)
        monkeypatch.setattr(_threads, "MEMORY_BOUND_PARALLEL_MIN", 1 << 62)
        serial = run(x, w) + run(x_bad, w_bad)
    finally:
        K.set_num_threads(before)
    for got, want in zip(threaded, serial, strict=True):
        np.testing.assert_array_equal(got, want)


def _prange_bodies(source: str):
    """(line number, body lines) of every ``for ... in prange(...)`` loop of a .pyx source."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*for .* in prange\(", line):
            indent = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and (lines[j - 1].rstrip().endswith((",", "(")) or not lines[j].strip()):
                j += 1  # the prange(...) call's continuation lines
            body = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                body.append(lines[j])
                j += 1
            yield i + 1, body


def test_no_prange_body_writes_a_shared_local_through_a_pointer():
    """Inside a prange body Cython makes a variable thread-private only when it is *assigned* in
    the body; a local passed as ``&name`` to a function that writes it stays shared between
    threads - a race (it broke the threaded average pool, and the GEMM path's row stride). So
    every ``&local`` in a prange body must also be assigned there. Geometry structs (g) are
    passed as const pointers and only read."""
    read_only = {"g"}
    offenders = []
    for pyx in sorted((Path(__file__).resolve().parents[1] / "kernels").glob("*.pyx")):
        for lineno, body in _prange_bodies(pyx.read_text(encoding="utf-8")):
            text = "\n".join(body)
            for name in set(re.findall(r"&(\w+)\b(?!\s*[\[.])", text)) - read_only:
                if not re.search(rf"^\s*{name}\s*=[^=]", text, re.MULTILINE):
                    offenders.append(f"{pyx.name}:{lineno}: &{name}")
    assert not offenders, offenders


# --- backends called directly: get_backend(name).<op>(arrays, geometry) -------------------


def _direct_call_cases():
    """(op, args, error type, message part): hand-made geometries or arrays that do not fit.
    Without the checks, several of these read or wrote out of bounds in compiled code."""
    import dataclasses

    f32 = np.float32
    x = np.ones((1, 1, 4, 4), f32)
    w = np.ones((1, 1, 3, 3), f32)
    g = K.conv2d_geometry(x.shape, w.shape, 1, 1)
    p = K.pool2d_geometry((1, 1, 2, 2), 2)
    return [
        ("conv2d_forward", (x, w, None, dataclasses.replace(g, ho=10)), ValueError, "last window reaches past"),
        ("conv2d_forward", (x, w, None, dataclasses.replace(g, h=40, ho=40)), ValueError, "shape (1, 1, 40, 4)"),
        ("conv2d_forward", (x, w, np.ones(5, f32), g), ValueError, "b: expected shape (1,)"),
        ("conv2d_forward", (x, w.astype(np.float64), None, g), TypeError, "weight: expected dtype float32 to match x"),
        ("conv2d_forward", (x, w, None, p), TypeError, "expected a Conv2dGeometry"),
        ("depthwise_conv2d_forward", (x, w, None, dataclasses.replace(g, wo=9)), ValueError, "last window reaches"),
        ("depthwise_conv2d_forward", (np.ones((1, 2, 4, 4), f32), np.ones((2, 1, 3, 3), f32), None,
                                      dataclasses.replace(g, c=2, k=2)), ValueError, "expected groups = 2"),
        ("depthwise_conv2d_backward", (x, x, np.ones((3, 1, 3, 3), f32), dataclasses.replace(g, k=3), True),
         ValueError, "dy: expected shape (1, 3, 4, 4)"),
        ("conv2d_forward", (np.ones((1, 2, 4, 4), f32), np.ones((2, 1, 3, 3), f32), None,
                            dataclasses.replace(g, c=2, k=2, groups=2)), ValueError, "expected groups = 1"),
        ("conv2d_backward", (np.ones((1, 1, 9, 9), f32), x, w, g, True), ValueError, "dy: expected shape (1, 1, 4, 4)"),
        ("max_pool2d_forward", (np.ones((1, 1, 1, 1), f32), p), ValueError, "x: expected shape (1, 1, 2, 2)"),
        ("max_pool2d_backward", (np.ones((1, 1, 1, 1), f32), np.full((1, 1, 1, 1), 10**9), p), ValueError,
         "expected indices in [0, 4)"),
        ("max_pool2d_backward", (np.ones((1, 1, 1, 1), f32), np.zeros((1, 1, 1, 1), np.int32), p), TypeError, "int64"),
        ("avg_pool2d_backward", (np.ones((1, 1, 1, 1), f32), dataclasses.replace(p, kh=1, ph=1)), ValueError,
         "padding larger than half"),
        ("avg_pool2d_forward", (np.ones((1, 1, 2, 2), f32), dataclasses.replace(p, ho=3)), ValueError, "reaches past"),
        ("relu_backward", (np.ones(3, f32), np.ones(5, f32)), ValueError,
         "dy: expected shape (5,) (x's shape), got (3,)"),
        ("relu_forward", (np.ones((4, 4), f32)[:, ::2],), ValueError, "C-contiguous"),
        ("batch_norm_forward", (x, np.ones(3, f32), np.zeros(1, f32), 1e-5, None, None), ValueError,
         "weight: expected shape (1,)"),
    ]  # fmt: skip


@pytest.mark.parametrize("backend", K.available_backends())
@pytest.mark.parametrize("case", range(len(_direct_call_cases())))
def test_direct_backend_calls_check_geometry_and_arrays(backend, case):
    op, args, error, words = _direct_call_cases()[case]
    if op in K.OPTIONAL_FUNCTIONS and not _registry.has_depthwise(K.backend_module(backend)):
        pytest.skip(f"backend {backend!r} was registered without the optional depthwise pair")
    with pytest.raises(error) as err:
        getattr(K.get_backend(backend), op)(*args)
    assert words in str(err.value)


def test_direct_backend_calls_with_valid_arguments_equal_dispatch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 9))
    w = rng.standard_normal((4, 3, 3, 2))
    g = K.conv2d_geometry(x.shape, w.shape, (2, 1), 1)
    for backend in K.available_backends():
        y = K.get_backend(backend).conv2d_forward(x, w, None, g)
        np.testing.assert_allclose(y, K.conv2d_forward(x, w, None, (2, 1), 1, backend="python"), rtol=1e-12)


@pytest.mark.parametrize("build", list(DEPTHWISE_BUILDS))
def test_compiled_depthwise_functions_refuse_bad_thread_counts_and_scratch(build):
    """Importable, so they check what they index themselves: num_threads < 1 (OpenMP would read
    0 as 'every core', more threads than the scratch has rows) and scratch of the wrong shape."""
    mod = DEPTHWISE_BUILDS[build]
    x, w, b = np.ones((1, 2, 4, 4)), np.ones((2, 1, 3, 3)), np.zeros(2)
    g = K.conv2d_geometry(x.shape, w.shape, 1, 1, 1, 2)
    y = np.empty(g.y_shape)
    with pytest.raises(ValueError, match="num_threads: expected a positive int, got 0"):
        mod.depthwise_forward(x, w, b, y, g, 0)
    with pytest.raises(ValueError, match="num_threads: expected a positive int, got 0"):
        mod.depthwise_forward_flat(x, w, b, y, np.empty((1, 100)), np.empty((1, 100)), g, 0)
    with pytest.raises(ValueError, match="scratch arrays of the wrong shape"):
        mod.depthwise_forward_flat(x, w, b, y, np.empty((1, 3)), np.empty((1, 24)), g, 1)
