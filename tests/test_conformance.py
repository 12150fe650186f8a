"""The conformance suite: every registered backend against the python reference, against
numerical gradients (float64), under property tests, and float32 vs float64.

Parameterised over ``fastconv.kernels.available_backends()`` (see conftest.py), so a backend
registered later is covered without editing this file. Tolerances: see kernel_oracles.py.
"""

from __future__ import annotations

import fastconv.kernels as K
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_oracles import (
    assert_gradient,
    assert_within,
    conv_bounds,
    distinct_values,
    numerical_gradient,
    scipy_conv_oracle,
)

# (x shape, w shape, stride, padding, dilation): odd sizes, non-square, batch 1, channels 1,
# asymmetric pairs, kernel == padded input, 1x1 kernels, the catnet 3x3/pad-1 pattern.
CONV_CASES = [
    ((2, 3, 7, 9), (4, 3, 3, 3), 1, 1, 1),
    ((1, 1, 5, 5), (1, 1, 5, 5), 1, 0, 1),
    ((3, 2, 8, 6), (2, 2, 1, 1), 2, 0, 1),
    ((2, 4, 9, 7), (3, 4, 3, 2), (2, 3), (1, 0), (2, 1)),
    ((1, 5, 6, 11), (2, 5, 2, 4), 3, 2, 2),
    ((2, 2, 4, 4), (3, 2, 3, 3), 1, 2, 1),
    ((4, 3, 10, 10), (5, 3, 4, 4), 2, 1, 1),
    ((1, 2, 3, 12), (2, 2, 3, 5), (1, 2), (0, 2), 1),
]

# Shapes that reach the paths the small cases above cannot (counted by a test audit: the cases
# above and the property tests never produce an output row of 16 or more): stride 1 with output
# rows of >= 16 pixels and a kernel larger than 1x1 take cython's register-blocked direct kernels
# (a row block of 16 pixels plus a tail, channels not a multiple of the 4-channel block);
# C*R*S*Ho*Wo > 65,536 splits one image into several im2col + GEMM tiles (stride 2).
WIDE_CONV_CASES = [
    ((2, 3, 4, 19), (5, 3, 2, 3), 1, (1, 2), (1, 2)),
    ((1, 2, 5, 37), (3, 2, 3, 3), 1, 1, 1),
    ((1, 8, 70, 70), (2, 8, 3, 3), 2, 1, 1),
]

POOL_CASES = [
    ((2, 3, 8, 8), 2, None, 0),
    ((1, 2, 7, 9), 3, 2, 1),
    ((3, 1, 5, 6), (2, 3), (1, 2), (1, 1)),
    ((2, 2, 9, 5), 3, 1, 0),
    ((1, 4, 6, 6), (3, 3), 3, 1),
    ((2, 1, 4, 7), (1, 2), None, (0, 1)),
    ((1, 2, 5, 5), 5, 1, 2),
]


def _rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONV_CASES)
def test_python_reference_matches_independent_scipy_oracle(rng, xs, ws, stride, padding, dilation):
    """The reference is checked too: against scipy.signal.correlate with a dilated kernel."""
    x, w, b = _rand(rng, xs), _rand(rng, ws), _rand(rng, (ws[0],))
    y = K.conv2d_forward(x, w, b, stride, padding, dilation, backend="python")
    np.testing.assert_allclose(y, scipy_conv_oracle(x, w, b, stride, padding, dilation), rtol=1e-12, atol=1e-12)


def test_python_reference_pooling_by_hand():
    """A 1x1x4x4 input worked out by hand: ties, padding and the divisor."""
    x = np.array([[1, 3, 3, 0], [2, 0, -1, -1], [5, 5, 4, 4], [5, 1, 4, 9]], dtype=np.float64)[None, None]
    y, idx = K.max_pool2d_forward(x, 2, backend="python")
    np.testing.assert_array_equal(y[0, 0], [[3, 3], [5, 9]])
    # Window (0,0): 3 at (0,1) wins. Window (1,0): four 5s tie -> first in row-major order, (2,0) = 8.
    np.testing.assert_array_equal(idx[0, 0], [[1, 2], [8, 15]])
    a = K.avg_pool2d_forward(x, 3, 1, 1, backend="python")
    # Top-left window covers padding + x[0:2, 0:2] = 1+3+2+0 = 6, divided by 9 (padding counts).
    assert a[0, 0, 0, 0] == pytest.approx(6 / 9)


# --------------------------------------------------------------------------- agreement with reference


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONV_CASES + WIDE_CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_matches_reference_float64(fast_backend, rng, xs, ws, stride, padding, dilation, with_bias):
    x, w = _rand(rng, xs), _rand(rng, ws)
    b = _rand(rng, (ws[0],)) if with_bias else None
    y_ref = K.conv2d_forward(x, w, b, stride, padding, dilation, backend="python")
    dy = _rand(rng, y_ref.shape)
    refs = K.conv2d_backward(dy, x, w, stride, padding, dilation, backend="python")
    y = K.conv2d_forward(x, w, b, stride, padding, dilation, backend=fast_backend)
    got = K.conv2d_backward(dy, x, w, stride, padding, dilation, backend=fast_backend)
    bounds = conv_bounds(x, w, b, dy, stride, padding, dilation, np.float64, two_sided=True)
    assert y.dtype == np.float64
    assert_within(y, y_ref, bounds[0], "y")
    for name, a, r, bound in zip(("dx", "dw", "db"), got, refs, bounds[1:]):
        assert a.dtype == np.float64
        assert_within(a, r, bound, name)


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONV_CASES[:4])
def test_conv_backward_without_dx(backend, rng, xs, ws, stride, padding, dilation):
    x, w = _rand(rng, xs), _rand(rng, ws)
    dy = _rand(rng, K.conv2d_geometry(xs, ws, stride, padding, dilation).y_shape)
    full = K.conv2d_backward(dy, x, w, stride, padding, dilation, backend=backend)
    dx, dw, db = K.conv2d_backward(dy, x, w, stride, padding, dilation, need_dx=False, backend=backend)
    assert dx is None
    np.testing.assert_array_equal(dw, full[1])
    np.testing.assert_array_equal(db, full[2])


@pytest.mark.parametrize("xs, k, s, p", POOL_CASES)
def test_pooling_matches_reference_float64(fast_backend, rng, xs, k, s, p):
    x = _rand(rng, xs)
    y_ref, idx_ref = K.max_pool2d_forward(x, k, s, p, backend="python")
    y, idx = K.max_pool2d_forward(x, k, s, p, backend=fast_backend)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert idx.dtype == np.int64
    dy = _rand(rng, y.shape)
    dx_ref = K.max_pool2d_backward(dy, idx_ref, xs, backend="python")
    dx = K.max_pool2d_backward(dy, idx, xs, backend=fast_backend)
    # Overlapping windows add several dy into one dx: only the summation order may differ.
    assert_within(dx, dx_ref, 4 * 2 * 2.0**-53 * K.max_pool2d_backward(np.abs(dy), idx, xs), "maxpool dx")
    a_ref = K.avg_pool2d_forward(x, k, s, p, backend="python")
    a = K.avg_pool2d_forward(x, k, s, p, backend=fast_backend)
    g = K.pool2d_geometry(xs, k, s, p)
    assert_within(a, a_ref, 2 * (g.kh * g.kw + 1) * 2.0**-53 * K.avg_pool2d_forward(np.abs(x), k, s, p), "avg y")
    da_ref = K.avg_pool2d_backward(dy, xs, k, s, p, backend="python")
    da = K.avg_pool2d_backward(dy, xs, k, s, p, backend=fast_backend)
    scale = K.avg_pool2d_backward(np.abs(dy), xs, k, s, p, backend="python")
    assert_within(da, da_ref, 2 * (g.kh * g.kw + 1) * 2.0**-53 * scale, "avg dx")


@pytest.mark.parametrize("xs", [(2, 3, 7, 9), (1, 2, 6, 5), (3, 1, 2, 2), (1, 1, 3, 3), (2, 2, 8, 8)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool_2x2_stride2_fast_path(fast_backend, rng, xs, dtype):
    """2x2 windows, stride 2, no padding (cython and numba have dedicated loops for it): odd
    heights and widths leave a last row / column in no window, whose dx must be 0. Those two sum
    in the reference's order, so they must agree to the bit; their compiled backward is also
    run on a NaN-filled dx to prove it writes every element (np.empty may hand out zeros)."""
    x = _rand(rng, xs, dtype)
    x.flat[::5] = -0.0
    y_ref = K.avg_pool2d_forward(x, 2, 2, 0, backend="python")
    y = K.avg_pool2d_forward(x, 2, 2, 0, backend=fast_backend)
    dy = _rand(rng, y.shape, dtype)
    dx_ref = K.avg_pool2d_backward(dy, xs, 2, 2, 0, backend="python")
    dx = K.avg_pool2d_backward(dy, xs, 2, 2, 0, backend=fast_backend)
    if fast_backend in ("cython", "numba"):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dx, dx_ref)
        filled = np.full(xs, np.nan, dtype)
        if fast_backend == "cython":
            from fastconv.kernels import cython_pool

            cython_pool.avg_pool2d_backward(dy, filled, K.pool2d_geometry(xs, 2, 2, 0), 1)
        else:
            from fastconv.kernels import _numba_pool

            _numba_pool.avg_pool_bwd_2x2(dy, filled)
        np.testing.assert_array_equal(filled, dx_ref)
    else:
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(y, y_ref, rtol=8 * eps, atol=8 * eps * np.abs(x).max())
        np.testing.assert_allclose(dx, dx_ref, rtol=8 * eps, atol=0)
    odd_h, odd_w = xs[2] % 2, xs[3] % 2
    if odd_h:
        assert not dx[:, :, -1, :].any()
    if odd_w:
        assert not dx[:, :, :, -1].any()


def test_relu_matches_reference(fast_backend, rng):
    x = _rand(rng, (2, 3, 5, 7))
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan]
    dy = _rand(rng, x.shape)
    np.testing.assert_array_equal(K.relu_forward(x, backend=fast_backend), K.relu_forward(x, backend="python"))
    np.testing.assert_array_equal(
        K.relu_backward(dy, x, backend=fast_backend), K.relu_backward(dy, x, backend="python")
    )


def test_relu_semantics(backend):
    x = np.array([-2.0, -0.0, 0.0, 1e-300, 3.0, np.inf, -np.inf, np.nan])
    y = K.relu_forward(x, backend=backend)
    np.testing.assert_array_equal(y, [0, 0, 0, 1e-300, 3.0, np.inf, 0, np.nan])
    dx = K.relu_backward(np.full_like(x, 2.0), x, backend=backend)
    np.testing.assert_array_equal(dx, [0, 0, 0, 2, 2, 2, 0, 0])


# --------------------------------------------------------------------------- numerical gradients


@pytest.mark.parametrize(
    "xs, ws, stride, padding, dilation",
    [((2, 2, 5, 4), (3, 2, 2, 3), 1, 1, 1), ((1, 3, 6, 7), (2, 3, 3, 2), (2, 1), (1, 2), (1, 2))],
)
def test_conv_gradients_numerically(backend, rng, xs, ws, stride, padding, dilation):
    x, w, b = _rand(rng, xs), _rand(rng, ws), _rand(rng, (ws[0],))
    y = K.conv2d_forward(x, w, b, stride, padding, dilation, backend=backend)
    gy = _rand(rng, y.shape)

    def loss() -> float:
        return float(np.sum(K.conv2d_forward(x, w, b, stride, padding, dilation, backend=backend) * gy))

    dx, dw, db = K.conv2d_backward(gy, x, w, stride, padding, dilation, backend=backend)
    assert_gradient(dx, numerical_gradient(loss, x), "dx")
    assert_gradient(dw, numerical_gradient(loss, w), "dw")
    assert_gradient(db, numerical_gradient(loss, b), "db")


@pytest.mark.parametrize("xs, k, s, p", [((2, 2, 5, 6), 2, 1, 1), ((1, 2, 7, 5), (3, 2), (2, 1), (1, 0))])
def test_pool_gradients_numerically(backend, rng, xs, k, s, p):
    x = distinct_values(rng, xs)
    y, idx = K.max_pool2d_forward(x, k, s, p, backend=backend)
    gy = _rand(rng, y.shape)

    def max_loss() -> float:
        return float(np.sum(K.max_pool2d_forward(x, k, s, p, backend=backend)[0] * gy))

    def avg_loss() -> float:
        return float(np.sum(K.avg_pool2d_forward(x, k, s, p, backend=backend) * gy))

    assert_gradient(K.max_pool2d_backward(gy, idx, xs, backend=backend), numerical_gradient(max_loss, x), "max dx")
    assert_gradient(
        K.avg_pool2d_backward(gy, xs, k, s, p, backend=backend), numerical_gradient(avg_loss, x), "avg dx"
    )


def test_relu_gradient_numerically(backend, rng):
    x = distinct_values(rng, (2, 3, 4, 5))  # no value within 1e-3 of the kink at 0
    gy = _rand(rng, x.shape)

    def loss() -> float:
        return float(np.sum(K.relu_forward(x, backend=backend) * gy))

    assert_gradient(K.relu_backward(gy, x, backend=backend), numerical_gradient(loss, x), "relu dx")


# --------------------------------------------------------------------------- float32 vs float64


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONV_CASES[:5] + WIDE_CONV_CASES)
def test_conv_float32_agrees_with_float64(backend, rng, xs, ws, stride, padding, dilation):
    x32, w32, b32 = _rand(rng, xs, np.float32), _rand(rng, ws, np.float32), _rand(rng, (ws[0],), np.float32)
    x64, w64, b64 = x32.astype(np.float64), w32.astype(np.float64), b32.astype(np.float64)
    y64 = K.conv2d_forward(x64, w64, b64, stride, padding, dilation, backend="python")
    dy32 = _rand(rng, y64.shape, np.float32)
    g64 = K.conv2d_backward(dy32.astype(np.float64), x64, w64, stride, padding, dilation, backend="python")
    y32 = K.conv2d_forward(x32, w32, b32, stride, padding, dilation, backend=backend)
    g32 = K.conv2d_backward(dy32, x32, w32, stride, padding, dilation, backend=backend)
    bounds = conv_bounds(x64, w64, b64, dy32, stride, padding, dilation, np.float32, two_sided=False)
    assert y32.dtype == np.float32 and all(a.dtype == np.float32 for a in g32)
    assert_within(y32, y64, bounds[0], "float32 y")
    for name, a, r, bound in zip(("dx", "dw", "db"), g32, g64, bounds[1:]):
        assert_within(a, r, bound, f"float32 {name}")


# (x shape, filters per input channel, kernel, stride, padding, dilation): depthwise = groups C
DEPTHWISE_CASES = [
    ((2, 3, 7, 9), 1, (3, 3), 1, 1, 1),  # MobileNet's 3x3
    ((1, 4, 6, 5), 2, (3, 2), (2, 1), (1, 0), (1, 2)),
    ((3, 2, 5, 5), 3, (1, 1), 1, 0, 1),
    ((1, 5, 9, 8), 1, (5, 5), 2, 2, 1),
    ((2, 1, 4, 6), 2, (2, 3), 1, (1, 1), 2),  # C = 1: depthwise and ungrouped at once
    ((1, 3, 19, 21), 1, (3, 3), 1, 1, 1),  # rows wider than a SIMD vector
]


def _depthwise(rng, xs, m, ks, dtype=np.float64):
    return _rand(rng, xs, dtype), _rand(rng, (xs[1] * m, 1, *ks), dtype), _rand(rng, (xs[1] * m,), dtype)


@pytest.mark.parametrize("xs, m, ks, stride, padding, dilation", DEPTHWISE_CASES)
def test_depthwise_conv_matches_reference_float64(fast_backend, rng, xs, m, ks, stride, padding, dilation):
    x, w, b = _depthwise(rng, xs, m, ks)
    args = (stride, padding, dilation, xs[1])
    y_ref = K.conv2d_forward(x, w, b, *args, backend="python")
    dy = _rand(rng, y_ref.shape)
    refs = K.conv2d_backward(dy, x, w, *args, backend="python")
    bounds = conv_bounds(x, w, b, dy, stride, padding, dilation, np.float64, two_sided=True, groups=xs[1])
    assert_within(K.conv2d_forward(x, w, b, *args, backend=fast_backend), y_ref, bounds[0], "y")
    got = K.conv2d_backward(dy, x, w, *args, backend=fast_backend)
    for name, a, r, bound in zip(("dx", "dw", "db"), got, refs, bounds[1:]):
        assert a.dtype == np.float64 and a.shape == r.shape
        assert_within(a, r, bound, name)
    dx, dw, _ = K.conv2d_backward(dy, x, w, *args, need_dx=False, backend=fast_backend)
    assert dx is None
    assert_within(dw, refs[1], bounds[2], "dw without dx")


@pytest.mark.parametrize("xs, m, ks, stride, padding, dilation", DEPTHWISE_CASES[:3])
def test_depthwise_conv_gradients_numerically(backend, rng, xs, m, ks, stride, padding, dilation):
    x, w, b = _depthwise(rng, xs, m, ks)
    args = (stride, padding, dilation, xs[1])
    gy = _rand(rng, K.conv2d_forward(x, w, b, *args, backend=backend).shape)

    def loss() -> float:
        return float(np.sum(K.conv2d_forward(x, w, b, *args, backend=backend) * gy))

    dx, dw, db = K.conv2d_backward(gy, x, w, *args, backend=backend)
    assert_gradient(dx, numerical_gradient(loss, x), "dx")
    assert_gradient(dw, numerical_gradient(loss, w), "dw")
    assert_gradient(db, numerical_gradient(loss, b), "db")


@pytest.mark.parametrize("xs, m, ks, stride, padding, dilation", DEPTHWISE_CASES)
def test_depthwise_conv_float32_agrees_with_float64(backend, rng, xs, m, ks, stride, padding, dilation):
    x32, w32, b32 = _depthwise(rng, xs, m, ks, np.float32)
    x64, w64, b64 = x32.astype(np.float64), w32.astype(np.float64), b32.astype(np.float64)
    args = (stride, padding, dilation, xs[1])
    y64 = K.conv2d_forward(x64, w64, b64, *args, backend="python")
    dy32 = _rand(rng, y64.shape, np.float32)
    g64 = K.conv2d_backward(dy32.astype(np.float64), x64, w64, *args, backend="python")
    y32 = K.conv2d_forward(x32, w32, b32, *args, backend=backend)
    g32 = K.conv2d_backward(dy32, x32, w32, *args, backend=backend)
    bounds = conv_bounds(x64, w64, b64, dy32, stride, padding, dilation, np.float32, two_sided=False, groups=xs[1])
    assert y32.dtype == np.float32 and all(a.dtype == np.float32 for a in g32)
    assert_within(y32, y64, bounds[0], "float32 y")
    for name, a, r, bound in zip(("dx", "dw", "db"), g32, g64, bounds[1:]):
        assert_within(a, r, bound, f"float32 {name}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's notes on the NaN/inf arithmetic asked for
@pytest.mark.parametrize("stride", [1, 2])  # cython: flat kernels at stride 1, row kernels at 2
def test_depthwise_padding_meets_inf_and_nan_as_the_contract_says(backend, rng, stride):
    """An inf weight times a padded zero is NaN (forward), so is an inf dy times one (dW); a
    NaN in x stays where it is read, and x's NaN/inf or a weight's inf reach dx/dW only through
    real pairs. The NaN positions must be the reference's."""
    xs, args = (2, 3, 5, 6), (stride, 1, 1, 3)
    x, w, b = _depthwise(rng, xs, 2, (3, 3))
    w[1, 0, 0, 0], w[4, 0, 2, 1] = np.inf, -np.inf
    x[0, 2, 3, 3] = np.nan
    y_ref = K.conv2d_forward(x, w, b, *args, backend="python")
    assert np.isnan(y_ref).any()
    assert_within(K.conv2d_forward(x, w, b, *args, backend=backend), y_ref, 1e-9 * (1 + np.abs(y_ref)), "y")
    dy = _rand(rng, y_ref.shape)
    dy[1, 5, 0, 0] = np.inf
    x[1, 0, 2, 4] = -np.inf
    refs = K.conv2d_backward(dy, x, w, *args, backend="python")
    assert np.isnan(refs[1]).any() and not np.isfinite(refs[0]).all()
    for name, a, r in zip(("dx", "dw", "db"), K.conv2d_backward(dy, x, w, *args, backend=backend), refs):
        assert_within(a, r, 1e-9 * (1 + np.abs(np.nan_to_num(r))), name)
    # finite x and w, an inf dy in a corner: dW is NaN exactly for the taps that put it on the
    # padding (the flat kernels at stride 1 and the row kernels' fix-up at 2 must both know)
    x, w, _ = _depthwise(rng, xs, 2, (3, 3))
    dy = _rand(rng, y_ref.shape)
    dy[0, 3, 0, 0] = np.inf
    refs = K.conv2d_backward(dy, x, w, *args, backend="python")
    assert np.isnan(refs[1][3]).any() and not np.isnan(refs[1][3]).all()
    for name, a, r in zip(("dx", "dw", "db"), K.conv2d_backward(dy, x, w, *args, backend=backend), refs):
        assert_within(a, r, 1e-9 * (1 + np.abs(np.nan_to_num(r))), name)
    # finite dy, one inf in x: every tap of that channel reads it through exactly one real pair,
    # so dW is +-inf there and never NaN (the flat kernels' garbage pairs must not leak a NaN in)
    x, w, _ = _depthwise(rng, xs, 2, (3, 3))
    x[1, 2, 2, 5] = np.inf  # the last column: the one the flat layout's wrap-around pairs read
    dy = _rand(rng, y_ref.shape)
    refs = K.conv2d_backward(dy, x, w, *args, backend="python")
    assert np.isinf(refs[1][4:6]).any() and not np.isnan(refs[1]).any()
    for name, a, r in zip(("dx", "dw", "db"), K.conv2d_backward(dy, x, w, *args, backend=backend), refs):
        assert_within(a, r, 1e-9 * (1 + np.abs(np.nan_to_num(r))), name)


_depthwise_problem = st.fixed_dictionaries(
    {
        "n": st.integers(1, 3),
        "c": st.integers(1, 4),
        "m": st.integers(1, 3),
        "r": st.integers(1, 4),
        "s": st.integers(1, 4),
        "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "extra": st.tuples(st.integers(0, 9), st.integers(0, 9)),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=_depthwise_problem)
def test_property_depthwise_conv_matches_reference(fast_backend, p):
    rng = np.random.default_rng(p["seed"])
    (dh, dw), (ph, pw) = p["dilation"], p["padding"]
    h = max(1, dh * (p["r"] - 1) + 1 - 2 * ph) + p["extra"][0]
    w_ = max(1, dw * (p["s"] - 1) + 1 - 2 * pw) + p["extra"][1]
    x, w, b = _depthwise(rng, (p["n"], p["c"], h, w_), p["m"], (p["r"], p["s"]))
    args = (p["stride"], p["padding"], p["dilation"], p["c"])
    y_ref = K.conv2d_forward(x, w, b, *args, backend="python")
    dy = _rand(rng, y_ref.shape)
    refs = K.conv2d_backward(dy, x, w, *args, backend="python")
    bounds = conv_bounds(x, w, b, dy, *args[:3], np.float64, two_sided=True, groups=p["c"])
    assert_within(K.conv2d_forward(x, w, b, *args, backend=fast_backend), y_ref, bounds[0], "y")
    for name, a, r, bound in zip(("dx", "dw", "db"), K.conv2d_backward(dy, x, w, *args, backend=fast_backend),
                                 refs, bounds[1:]):  # fmt: skip
        assert_within(a, r, bound, name)


@pytest.mark.parametrize("xs, k, s, p", POOL_CASES[:4])
def test_pool_float32_agrees_with_float64(backend, rng, xs, k, s, p):
    x32 = _rand(rng, xs, np.float32)
    x64 = x32.astype(np.float64)
    y32, i32 = K.max_pool2d_forward(x32, k, s, p, backend=backend)
    y64, i64 = K.max_pool2d_forward(x64, k, s, p, backend="python")
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(y32, y64)  # a max is exact: no rounding at all
    np.testing.assert_array_equal(i32, i64)
    a32 = K.avg_pool2d_forward(x32, k, s, p, backend=backend)
    a64 = K.avg_pool2d_forward(x64, k, s, p, backend="python")
    g = K.pool2d_geometry(xs, k, s, p)
    assert a32.dtype == np.float32
    assert_within(a32, a64, (g.kh * g.kw + 1) * 2.0**-24 * K.avg_pool2d_forward(np.abs(x64), k, s, p), "avg")


# --------------------------------------------------------------------------- ties, NaN, inf


def test_max_pool_ties_give_identical_gradients_across_backends(backend, rng):
    """Heavy ties (values from {0, 1, 2}), overlapping windows and padding: every backend must
    pick the same winners as the reference, hence produce bit-identical gradients."""
    x = rng.integers(0, 3, size=(2, 3, 9, 8)).astype(np.float64)
    x[0, 0] = 0.0  # a plane of all-equal values: the first real position wins everywhere
    for k, s, p in [(2, None, 0), (3, 1, 1), ((3, 2), (2, 1), (1, 1))]:
        y_ref, idx_ref = K.max_pool2d_forward(x, k, s, p, backend="python")
        y, idx = K.max_pool2d_forward(x, k, s, p, backend=backend)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(idx, idx_ref)
        dy = rng.integers(-3, 4, size=y.shape).astype(np.float64)  # integer grads: sums are exact
        np.testing.assert_array_equal(
            K.max_pool2d_backward(dy, idx, x.shape, backend=backend),
            K.max_pool2d_backward(dy, idx_ref, x.shape, backend="python"),
        )


def test_max_pool_padding_never_wins_even_against_minus_inf(backend):
    x = np.full((1, 1, 3, 3), -np.inf)
    y, idx = K.max_pool2d_forward(x, 3, 1, 1, backend=backend)
    assert np.all(y == -np.inf)
    # Each window's first real element (row-major) wins: for output (i, j) that is
    # (max(i-1, 0), max(j-1, 0)).
    expected = np.array([[max(i - 1, 0) * 3 + max(j - 1, 0) for j in range(3)] for i in range(3)])
    np.testing.assert_array_equal(idx[0, 0], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate(backend, dtype):
    x = np.ones((1, 2, 6, 6), dtype)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, 4] = np.inf
    w = np.ones((1, 2, 3, 3), dtype)
    y = K.conv2d_forward(x, w, None, 1, 0, 1, backend=backend)
    # Output (i, j) reads rows i..i+2, cols j..j+2: NaN exactly where (1,1) is inside.
    nan_mask = np.zeros((4, 4), bool)
    nan_mask[0:2, 0:2] = True
    np.testing.assert_array_equal(np.isnan(y[0, 0]), nan_mask)
    inf_only = (~nan_mask) & np.pad(np.ones((2, 2), bool), ((2, 0), (2, 0)))
    assert np.all(np.isposinf(y[0, 0][inf_only]))
    assert np.all(np.isfinite(y[0, 0][~nan_mask & ~inf_only]))
    my, idx = K.max_pool2d_forward(x, 2, backend=backend)
    assert np.isnan(my[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1 * 6 + 1  # NaN wins its window
    assert np.isposinf(my[0, 1, 2, 2])
    assert np.isnan(K.avg_pool2d_forward(x, 2, backend=backend)[0, 0, 0, 0])
    r = K.relu_forward(x, backend=backend)
    assert np.isnan(r[0, 0, 1, 1]) and np.isposinf(r[0, 1, 4, 4])


@pytest.mark.parametrize("where", ["w", "dy", "x"])
@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 1)])
@pytest.mark.parametrize("width", [9, 20])
def test_infinities_meet_zero_padding_as_zeros(backend, where, stride, padding, dilation, width):
    """Zero padding is real zeros: an infinite weight (forward) or dy (dW) times a padded 0 is
    NaN, in every backend as in the reference and PyTorch; dx has no padded entries to keep.
    Width 20 at stride 1 takes cython's direct kernels (output rows of >= 16 pixels)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 7, width))
    w = rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal(K.conv2d_forward(x, w, None, stride, padding, dilation, backend="numpy").shape)
    if where == "w":
        w[1, 2, 0, 0], w[3, 0, 2, 1] = np.inf, np.nan
    elif where == "dy":
        dy[0, 1, 0, 0], dy[1, 2, -1, -1] = np.inf, -np.inf
    else:
        x[0, 1, 0, 0], x[1, 2, -1, 3] = np.inf, np.nan
    args = (stride, padding, dilation)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = [K.conv2d_forward(x, w, None, *args, backend="python"),
                    *K.conv2d_backward(dy, x, w, *args, backend="python")]
        got = [K.conv2d_forward(x, w, None, *args, backend=backend),
               *K.conv2d_backward(dy, x, w, *args, backend=backend)]
    if where in ("w", "dy"):  # the case this is about: the padding's zeros do meet the infinity
        assert np.isnan(expected[0 if where == "w" else 2]).any()
    for name, g, e in zip(("y", "dx", "dw", "db"), got, expected):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=name)
        np.testing.assert_array_equal(np.isinf(g), np.isinf(e), err_msg=name)
        finite = np.isfinite(e)
        np.testing.assert_allclose(g[finite], e[finite], rtol=1e-10, atol=1e-10, err_msg=name)


# --------------------------------------------------------------------------- batch norm

# (N, C, H, W): H*W below, at and above the cython kernel's 8 summing lanes, batch 1, H or W 1.
BN_SHAPES = [(2, 3, 5, 7), (1, 2, 1, 9), (4, 1, 3, 3), (3, 5, 2, 1), (2, 3, 4, 8), (1, 2, 6, 17)]


def _bn_args(rng, shape, dtype=np.float64):
    x = rng.standard_normal(shape) * 2 + 3  # a mean of 3: the centring matters
    c = shape[1]
    return x.astype(dtype), _rand(rng, (c,), dtype), _rand(rng, (c,), dtype)


def _running_stats(rng, c):
    return rng.standard_normal(c), rng.uniform(0.1, 3.0, c)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_reference_is_the_textbook_formula(rng, shape):
    x, w, b = _bn_args(rng, shape)
    y, mean, var = K.batch_norm_forward(x, w, b, 1e-3, backend="python")
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)), rtol=1e-12)
    expected = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + 1e-3)
    np.testing.assert_allclose(y, expected * w[:, None, None] + b[:, None, None], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_matches_reference_float64(fast_backend, rng, shape):
    x, w, b = _bn_args(rng, shape)
    dy = _rand(rng, shape)
    ref = K.batch_norm_forward(x, w, b, backend="python")
    got = K.batch_norm_forward(x, w, b, backend=fast_backend)
    assert got[1].dtype == got[2].dtype == np.float64
    for name, g, r in zip(("y", "mean", "var"), got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12, err_msg=name)
    stats = _running_stats(rng, shape[1])
    np.testing.assert_allclose(
        K.batch_norm_forward(x, w, b, 1e-3, *stats, backend=fast_backend)[0],
        K.batch_norm_forward(x, w, b, 1e-3, *stats, backend="python")[0],
        rtol=1e-10,
        atol=1e-12,
    )
    for training, (mean, var) in ((True, ref[1:]), (False, stats)):
        got_g = K.batch_norm_backward(dy, x, w, mean, var, 1e-5, training, backend=fast_backend)
        ref_g = K.batch_norm_backward(dy, x, w, mean, var, 1e-5, training, backend="python")
        for name, g, r in zip(("dx", "dweight", "dbias"), got_g, ref_g):
            # dx sums to ~0 per channel in training (cancellation): tolerance scaled to the largest value
            np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-10 * np.abs(r).max(), err_msg=f"{name} {training}")


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_numerically(backend, rng, training):
    x, w, b = _bn_args(rng, (2, 3, 3, 4))
    stats = () if training else _running_stats(rng, 3)
    gy = _rand(rng, x.shape)

    def loss() -> float:
        # in training the statistics are recomputed from the perturbed x: their gradient paths count
        return float(np.sum(K.batch_norm_forward(x, w, b, 1e-5, *stats, backend=backend)[0] * gy))

    _, mean, var = K.batch_norm_forward(x, w, b, 1e-5, *stats, backend=backend)
    dx, dw, db = K.batch_norm_backward(gy, x, w, mean, var, 1e-5, training, backend=backend)
    assert_gradient(dx, numerical_gradient(loss, x), "batch norm dx")
    assert_gradient(dw, numerical_gradient(loss, w), "batch norm dweight")
    assert_gradient(db, numerical_gradient(loss, b), "batch norm dbias")


@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (2, 5, 7, 9)])
def test_batch_norm_float32_agrees_with_float64(backend, rng, shape):
    """Stated tolerance: every float32 output within 1e-5 of the largest magnitude of the float64
    result (the statistics: 1e-6 of the channel's mean / variance); measured errors are ~1e-7."""
    x32, w32, b32 = _bn_args(rng, shape, np.float32)
    dy32 = _rand(rng, shape, np.float32)
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x32, w32, b32, dy32))
    y64, m64, v64 = K.batch_norm_forward(x64, w64, b64, backend="python")
    y32, m32, v32 = K.batch_norm_forward(x32, w32, b32, backend=backend)
    assert y32.dtype == np.float32 and m32.dtype == v32.dtype == np.float64
    assert_within(y32, y64, 1e-5 * np.abs(y64).max(), "float32 y")
    assert_within(m32, m64, 1e-6 * np.abs(m64), "float32 mean")
    assert_within(v32, v64, 1e-6 * v64, "float32 var")
    for training in (True, False):
        g32 = K.batch_norm_backward(dy32, x32, w32, m64, v64, 1e-5, training, backend=backend)
        g64 = K.batch_norm_backward(dy64, x64, w64, m64, v64, 1e-5, training, backend="python")
        for name, a, r in zip(("dx", "dweight", "dbias"), g32, g64):
            assert a.dtype == np.float32
            assert_within(a, r, 1e-5 * np.abs(r).max(), f"float32 {name} {training}")


def test_batch_norm_nan_and_inf_propagate(backend, rng):
    x, w, b = _bn_args(rng, (2, 3, 3, 3))
    x[0, 0, 1, 1] = np.nan
    x[1, 2, 0, 0] = np.inf
    y, mean, var = K.batch_norm_forward(x, w, b, backend=backend)
    # batch statistics: a NaN or inf value makes its whole channel's mean / variance non-finite
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all() and not np.isfinite(y[:, 2]).any()
    assert np.isnan(mean[0]) and np.isposinf(mean[2]) and np.isfinite(mean[1])
    assert np.isnan(var[0]) and np.isfinite(var[1])
    ye = K.batch_norm_forward(x, w, b, 1e-5, *_running_stats(rng, 3), backend=backend)[0]
    # given statistics: only the non-finite values themselves
    assert np.isnan(ye[0, 0, 1, 1]) and np.isinf(ye[1, 2, 0, 0]) and np.isfinite(ye).sum() == ye.size - 2


_bn_problem = st.fixed_dictionaries(
    {
        "shape": st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 19)),
        "training": st.booleans(),
        "eps": st.sampled_from([1e-5, 1e-3, 0.5]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=_bn_problem)
def test_property_batch_norm_matches_reference(fast_backend, p):
    shape, training = p["shape"], p["training"]
    if training and shape[0] * shape[2] * shape[3] == 1:
        training = False  # batch statistics need two values per channel
    rng = np.random.default_rng(p["seed"])
    x, w, b = _bn_args(rng, shape)
    dy = _rand(rng, shape)
    stats = () if training else _running_stats(rng, shape[1])
    ref = K.batch_norm_forward(x, w, b, p["eps"], *stats, backend="python")
    got = K.batch_norm_forward(x, w, b, p["eps"], *stats, backend=fast_backend)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    ref_g = K.batch_norm_backward(dy, x, w, ref[1], ref[2], p["eps"], training, backend="python")
    got_g = K.batch_norm_backward(dy, x, w, ref[1], ref[2], p["eps"], training, backend=fast_backend)
    for g, r in zip(got_g, ref_g):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-10 * max(1.0, np.abs(r).max()))


# --------------------------------------------------------------------------- property tests

_conv_problem = st.fixed_dictionaries(
    {
        "n": st.integers(1, 4),
        "c": st.integers(1, 5),
        "k": st.integers(1, 5),
        "r": st.integers(1, 5),
        "s": st.integers(1, 5),
        "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "extra_h": st.integers(0, 4),
        "extra_w": st.integers(0, 5),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def _conv_arrays(p):
    rng = np.random.default_rng(p["seed"])
    # Smallest input the (dilated) kernel fits in, plus a random margin: H != W in general.
    h = max(1, p["dilation"][0] * (p["r"] - 1) + 1 - 2 * p["padding"][0]) + p["extra_h"]
    w = max(1, p["dilation"][1] * (p["s"] - 1) + 1 - 2 * p["padding"][1]) + p["extra_w"]
    x = rng.standard_normal((p["n"], p["c"], h, w))
    wt = rng.standard_normal((p["k"], p["c"], p["r"], p["s"]))
    b = rng.standard_normal(p["k"])
    return rng, x, wt, b


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=_conv_problem)
def test_property_conv_matches_reference(fast_backend, p):
    rng, x, w, b = _conv_arrays(p)
    args = (p["stride"], p["padding"], p["dilation"])
    y_ref = K.conv2d_forward(x, w, b, *args, backend="python")
    dy = rng.standard_normal(y_ref.shape)
    refs = K.conv2d_backward(dy, x, w, *args, backend="python")
    bounds = conv_bounds(x, w, b, dy, *args, np.float64, two_sided=True)
    assert_within(K.conv2d_forward(x, w, b, *args, backend=fast_backend), y_ref, bounds[0], "y")
    for name, a, r, bound in zip(("dx", "dw", "db"), K.conv2d_backward(dy, x, w, *args, backend=fast_backend), refs,
                                 bounds[1:]):
        assert_within(a, r, bound, name)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=_conv_problem)
def test_property_conv_gradient_directional(backend, p):
    """<grad, v> equals the directional central difference along random v (cheaper than
    per-element differences, and exact up to rounding because conv is bilinear)."""
    rng, x, w, b = _conv_arrays(p)
    args = (p["stride"], p["padding"], p["dilation"])
    gy = rng.standard_normal(K.conv2d_geometry(x.shape, w.shape, *args).y_shape)
    dx, dw, db = K.conv2d_backward(gy, x, w, *args, backend=backend)
    vx, vw, vb = rng.standard_normal(x.shape), rng.standard_normal(w.shape), rng.standard_normal(b.shape)
    eps = 1e-5

    def loss(t: float) -> float:
        return float(np.sum(K.conv2d_forward(x + t * vx, w + t * vw, b + t * vb, *args, backend=backend) * gy))

    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    analytic = float(np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb))
    # The loss is quadratic in t (x and w both move): central differences are then exact, so the
    # only error is rounding of loss(+-eps), about u * sum|terms| / eps.
    scale = float(np.sum(np.abs(gy) * K.conv2d_forward(np.abs(x) + np.abs(vx), np.abs(w) + np.abs(vw),
                                                       np.abs(b) + np.abs(vb), *args, backend="numpy")))
    assert abs(numeric - analytic) <= 1e-9 * scale / eps + 1e-9


_pool_problem = st.fixed_dictionaries(
    {
        "n": st.integers(1, 4),
        "c": st.integers(1, 5),
        "kh": st.integers(1, 5),
        "kw": st.integers(1, 5),
        "stride": st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
        "pfrac": st.tuples(st.integers(0, 2), st.integers(0, 2)),
        "extra_h": st.integers(0, 5),
        "extra_w": st.integers(0, 6),
        "ties": st.booleans(),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=_pool_problem)
def test_property_pooling_matches_reference(fast_backend, p):
    rng = np.random.default_rng(p["seed"])
    ph, pw = min(p["pfrac"][0], p["kh"] // 2), min(p["pfrac"][1], p["kw"] // 2)
    h = max(1, p["kh"] - 2 * ph) + p["extra_h"]
    w = max(1, p["kw"] - 2 * pw) + p["extra_w"]
    shape = (p["n"], p["c"], h, w)
    x = rng.integers(-2, 3, shape).astype(np.float64) if p["ties"] else rng.standard_normal(shape)
    args = ((p["kh"], p["kw"]), p["stride"], (ph, pw))
    y_ref, i_ref = K.max_pool2d_forward(x, *args, backend="python")
    y, idx = K.max_pool2d_forward(x, *args, backend=fast_backend)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, i_ref)
    dy = rng.integers(-4, 5, y.shape).astype(np.float64)  # integers: every summation order is exact
    np.testing.assert_array_equal(
        K.max_pool2d_backward(dy, idx, shape, backend=fast_backend),
        K.max_pool2d_backward(dy, i_ref, shape, backend="python"),
    )
    n_win = p["kh"] * p["kw"]
    scale = (n_win + 1) * 2 * 2.0**-53
    assert_within(
        K.avg_pool2d_forward(x, *args, backend=fast_backend),
        K.avg_pool2d_forward(x, *args, backend="python"),
        scale * K.avg_pool2d_forward(np.abs(x), *args, backend="python"),
        "avg y",
    )
    assert_within(K.avg_pool2d_backward(dy, shape, *args, backend=fast_backend),
                  K.avg_pool2d_backward(dy, shape, *args, backend="python"),
                  scale * K.avg_pool2d_backward(np.abs(dy), shape, *args, backend="python"), "avg dx")


# --------------------------------------------------------------------------- concurrent callers


def test_concurrent_calls_from_python_threads_give_the_serial_results(fast_backend):
    """A library user may call the kernels from several Python threads at once (a thread pool
    serving predictions). Scratch buffers (numba's thread-local padded planes, cython's
    per-call buffers) must not be shared between calls: six threads with six different shapes,
    each repeating its call, must reproduce the results computed one call at a time, bit for bit."""
    import threading

    rng = np.random.default_rng(5)
    jobs = []
    for i in range(6):
        shape = (3, 4, 9 + i, 18 + i)  # rows >= 16: cython's direct kernels and their buffers
        jobs.append((_rand(rng, shape, np.float32), _rand(rng, (5, 4, 3, 3), np.float32),
                     _rand(rng, (3, 5, 9 + i, 18 + i), np.float32), _rand(rng, (4,), np.float32)))  # fmt: skip

    def run(job):
        x, w, dy, gamma = job
        y = K.conv2d_forward(x, w, None, 1, 1, backend=fast_backend)
        grads = K.conv2d_backward(dy, x, w, 1, 1, backend=fast_backend)
        p, a = K.max_pool2d_forward(y, 2, backend=fast_backend)
        bn = K.batch_norm_forward(x, gamma, gamma, backend=fast_backend)
        return (y, *grads, p, a, K.max_pool2d_backward(p, a, y.shape, backend=fast_backend),
                K.relu_forward(y, backend=fast_backend), bn[0])  # fmt: skip

    expected = [run(job) for job in jobs]
    failures: list[str] = []

    def worker(k: int) -> None:
        try:
            for _ in range(8):
                for i, (got, want) in enumerate(zip(run(jobs[k]), expected[k])):
                    if not np.array_equal(got, want):
                        failures.append(f"thread {k}: output {i} differs")
                        return
        except Exception as exc:  # reported below, with the thread it came from
            failures.append(f"thread {k}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def test_same_and_valid_padding_are_the_explicit_paddings(backend, rng):
    x, w = _rand(rng, (2, 3, 7, 8)), _rand(rng, (4, 3, 5, 3))
    same = K.conv2d_forward(x, w, None, 1, "same", (1, 2), backend=backend)
    assert same.shape[2:] == x.shape[2:]
    np.testing.assert_array_equal(same, K.conv2d_forward(x, w, None, 1, (2, 2), (1, 2), backend=backend))
    np.testing.assert_array_equal(K.conv2d_forward(x, w, None, 2, "valid", backend=backend),
                                  K.conv2d_forward(x, w, None, 2, 0, backend=backend))  # fmt: skip
    dy = _rand(rng, same.shape)
    for a, b in zip(K.conv2d_backward(dy, x, w, 1, "same", (1, 2), backend=backend),
                    K.conv2d_backward(dy, x, w, 1, (2, 2), (1, 2), backend=backend)):  # fmt: skip
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("w_shape", "stride", "dilation", "match"),
    [((2, 1, 2, 3), 1, 1, r"needs \(1, 2\) padded rows"), ((2, 1, 3, 3), 2, 1, "needs stride 1"),
     ((2, 1, 3, 3), 1, 1, None)],
)  # fmt: skip
def test_same_padding_refuses_what_it_cannot_keep_the_size_of(w_shape, stride, dilation, match):
    x, w = np.zeros((1, 1, 5, 5)), np.zeros(w_shape)
    if match is None:
        with pytest.raises(ValueError, match="expected an int, a pair of ints, 'same' or 'valid', got 'full'"):
            K.conv2d_forward(x, w, None, stride, "full", dilation)
        return
    with pytest.raises(ValueError, match=match):
        K.conv2d_forward(x, w, None, stride, "same", dilation)
