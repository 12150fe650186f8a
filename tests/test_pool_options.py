"""PyTorch's pooling options: ``ceil_mode`` (max and average), ``count_include_pad`` and
``divisor_override`` (average).

They are applied once, in front of every backend (``fastconv.kernels``): a ceil-mode overhang is
appended to the input (edge copies for max, zeros for average) and average divisors are
corrected per window. So the oracle here is written from PyTorch's definition, window by window,
and shares no code with that front: every backend must agree with it, with numerical gradients,
with its own float64 result in float32, and (when installed) with PyTorch itself.
"""

from __future__ import annotations

import itertools
import math
import re

import fastconv.kernels as K
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_oracles import assert_gradient, assert_within, distinct_values, numerical_gradient

from fastconv import AvgPool2d, MaxPool2d, Sequential, load


def _out_len(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooling_output_shape, written as it is there (dilation 1)."""
    num = size + 2 * p - (k - 1) - 1 + (s - 1 if ceil else 0)
    out = math.floor(num / s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def oracle(x, k, s, p, ceil=False, count_include_pad=True, divisor_override=None):
    """Max (value, flat argmax) and average of every window, from PyTorch's CPU kernels' rules:
    a window is clipped to the input; the average's divisor is the override, or the window's
    size clipped to the padded input (count_include_pad) or to the input (not)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    ho, wo = _out_len(h, kh, sh, ph, ceil), _out_len(w, kw, sw, pw, ceil)
    assert ho >= 1 and wo >= 1
    ymax, arg, yavg = np.zeros((n, c, ho, wo)), np.zeros((n, c, ho, wo), np.int64), np.zeros((n, c, ho, wo))
    div = np.zeros((ho, wo))
    for i, j in itertools.product(range(ho), range(wo)):
        r0, c0 = i * sh - ph, j * sw - pw
        r1, c1 = min(r0 + kh, h + ph), min(c0 + kw, w + pw)
        pool_size = (r1 - r0) * (c1 - c0)
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        div[i, j] = divisor_override or (pool_size if count_include_pad else (r1 - r0) * (c1 - c0))
        for a, b in itertools.product(range(n), range(c)):
            best, where = -math.inf, -1
            for r, q in itertools.product(range(r0, r1), range(c0, c1)):
                v = x[a, b, r, q]
                if where < 0 or v > best or (math.isnan(v) and not math.isnan(best)):
                    best, where = v, r * w + q
            ymax[a, b, i, j], arg[a, b, i, j] = best, where
            yavg[a, b, i, j] = x[a, b, r0:r1, c0:c1].sum() / div[i, j]
    return ymax, arg, yavg, div


def oracle_avg_backward(dy, shape, k, s, p, div):
    """dx of the average: each dy spreads dy / divisor over the window's input elements."""
    dx = np.zeros(shape)
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    for i, j in itertools.product(range(dy.shape[2]), range(dy.shape[3])):
        r0, c0 = max(i * sh - ph, 0), max(j * sw - pw, 0)
        r1, c1 = min(i * sh - ph + kh, shape[2]), min(j * sw - pw + kw, shape[3])
        dx[:, :, r0:r1, c0:c1] += (dy[:, :, i, j] / div[i, j])[:, :, None, None]
    return dx


_problem = st.fixed_dictionaries(
    {
        "n": st.integers(1, 2),
        "c": st.integers(1, 3),
        "kh": st.integers(1, 4),
        "kw": st.integers(1, 4),
        "sh": st.integers(1, 3),
        "sw": st.integers(1, 3),
        "pfrac": st.tuples(st.integers(0, 2), st.integers(0, 2)),
        "extra_h": st.integers(0, 5),
        "extra_w": st.integers(0, 5),
        "ceil": st.booleans(),
        "count_include_pad": st.booleans(),
        "divisor": st.one_of(st.none(), st.integers(1, 7)),
        "ties": st.booleans(),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def _draw(p):
    ph, pw = min(p["pfrac"][0], p["kh"] // 2), min(p["pfrac"][1], p["kw"] // 2)
    # from one pixel short of the window (ceil mode can still fit one) to a few windows
    h = max(1, p["kh"] - 2 * ph - 1) + p["extra_h"]
    w = max(1, p["kw"] - 2 * pw - 1) + p["extra_w"]
    k, s, pad = (p["kh"], p["kw"]), (p["sh"], p["sw"]), (ph, pw)
    valid = _out_len(h, *k[:1], s[0], ph, p["ceil"]) >= 1 and _out_len(w, k[1], s[1], pw, p["ceil"]) >= 1
    valid = valid and (p["ceil"] or (h + 2 * ph >= k[0] and w + 2 * pw >= k[1]))
    return (p["n"], p["c"], h, w), k, s, pad, valid


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=_problem)
def test_property_every_backend_pools_as_pytorch_defines_it(backend, p):
    shape, k, s, pad, valid = _draw(p)
    rng = np.random.default_rng(p["seed"])
    x = rng.integers(-2, 3, shape).astype(np.float64) if p["ties"] else rng.standard_normal(shape)
    opts = (p["ceil"], p["count_include_pad"], p["divisor"])
    if not valid:  # a window that cannot fit: refused with the size arithmetic, as PyTorch does
        with pytest.raises(ValueError, match="kernel_size"):
            K.max_pool2d_forward(x, k, s, pad, ceil_mode=p["ceil"], backend=backend)
        with pytest.raises(ValueError, match="kernel_size"):
            K.avg_pool2d_forward(x, k, s, pad, *opts, backend=backend)
        return
    ymax, arg, yavg, div = oracle(x, k, s, pad, *opts)

    y, idx = K.max_pool2d_forward(x, k, s, pad, ceil_mode=p["ceil"], backend=backend)
    np.testing.assert_array_equal(y, ymax)
    np.testing.assert_array_equal(idx, arg)
    dy = rng.integers(-4, 5, y.shape).astype(np.float64)  # integers: every summation order is exact
    want = np.zeros(shape)
    np.add.at(want.reshape(shape[0], shape[1], -1), (*np.indices(arg.shape)[:2], arg), dy)
    np.testing.assert_array_equal(K.max_pool2d_backward(dy, idx, shape, backend=backend), want)

    bound = (k[0] * k[1] + 2) * 2 * 2.0**-53
    _, _, abs_avg, _ = oracle(np.abs(x), k, s, pad, *opts)
    assert_within(K.avg_pool2d_forward(x, k, s, pad, *opts, backend=backend), yavg, bound * abs_avg, "avg y")
    assert_within(
        K.avg_pool2d_backward(dy, shape, k, s, pad, *opts, backend=backend),
        oracle_avg_backward(dy, shape, k, s, pad, div),
        bound * oracle_avg_backward(np.abs(dy), shape, k, s, pad, div),
        "avg dx",
    )


@pytest.mark.parametrize(
    "shape, k, s, pad, opts",
    [
        ((2, 2, 5, 6), (2, 2), (2, 2), (0, 0), (True, True, None)),  # overhang on both axes
        ((1, 2, 7, 5), (3, 2), (2, 2), (1, 1), (True, False, None)),  # overhang + padding not counted
        ((1, 3, 4, 4), (3, 3), (1, 1), (1, 1), (False, False, None)),  # floor, padding not counted
        ((2, 1, 6, 5), (3, 3), (2, 2), (1, 0), (True, True, 5)),  # ceil + a fixed divisor
    ],
)
def test_pool_option_gradients_numerically(backend, rng, shape, k, s, pad, opts):
    x = distinct_values(rng, shape)
    y, idx = K.max_pool2d_forward(x, k, s, pad, ceil_mode=opts[0], backend=backend)
    gy = rng.standard_normal(y.shape)

    def max_loss() -> float:
        return float(np.sum(K.max_pool2d_forward(x, k, s, pad, ceil_mode=opts[0], backend=backend)[0] * gy))

    def avg_loss() -> float:
        return float(np.sum(K.avg_pool2d_forward(x, k, s, pad, *opts, backend=backend) * gy))

    assert_gradient(K.max_pool2d_backward(gy, idx, shape, backend=backend), numerical_gradient(max_loss, x), "max dx")
    assert_gradient(
        K.avg_pool2d_backward(gy, shape, k, s, pad, *opts, backend=backend), numerical_gradient(avg_loss, x), "avg dx"
    )


def test_pool_options_float32_agrees_with_float64(backend, rng):
    shape, k, s, pad, opts = (2, 3, 9, 7), (3, 3), (2, 2), (1, 1), (True, False, None)
    x32 = rng.standard_normal(shape).astype(np.float32)
    x64 = x32.astype(np.float64)
    y32, i32 = K.max_pool2d_forward(x32, k, s, pad, ceil_mode=True, backend=backend)
    y64, i64 = K.max_pool2d_forward(x64, k, s, pad, ceil_mode=True, backend="python")
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(y32, y64)  # a max is exact in any precision
    np.testing.assert_array_equal(i32, i64)
    a32 = K.avg_pool2d_forward(x32, k, s, pad, *opts, backend=backend)
    a64 = K.avg_pool2d_forward(x64, k, s, pad, *opts, backend="python")
    assert a32.dtype == np.float32
    # sum of 9 terms, a division and the divisor's correction: (9 + 3) roundings of float32
    bound = 12 * 2.0**-24 * K.avg_pool2d_forward(np.abs(x64), k, s, pad, *opts, backend="python")
    assert_within(a32, a64, bound, "avg float32")
    dy = rng.standard_normal(a32.shape).astype(np.float32)
    d32 = K.avg_pool2d_backward(dy, shape, k, s, pad, *opts, backend=backend)
    d64 = K.avg_pool2d_backward(dy.astype(np.float64), shape, k, s, pad, *opts, backend="python")
    assert d32.dtype == np.float32
    dbound = 12 * 2.0**-24 * K.avg_pool2d_backward(np.abs(dy).astype(np.float64), shape, k, s, pad, *opts)
    assert_within(d32, d64, dbound, "avg dx float32")


def test_nan_and_infinity_in_ceil_mode_max_pool_match_the_oracle(backend):
    """The overhang repeats the last row and column; a repeated NaN or -inf must not be reported
    as the winner (its argmax would name a position outside x)."""
    x = np.full((1, 1, 5, 5), -np.inf)
    x[0, 0, 4, 4] = np.nan
    x[0, 0, 0, 4] = 1.0
    ymax, arg, _, _ = oracle(x, (2, 2), (2, 2), (0, 0), True)
    y, idx = K.max_pool2d_forward(x, 2, ceil_mode=True, backend=backend)
    np.testing.assert_array_equal(y, ymax)
    np.testing.assert_array_equal(idx, arg)
    assert idx.max() < 25


def test_options_without_effect_take_the_unchanged_path():
    """Options at their PyTorch defaults, or without effect (no padding to leave out, a divisor
    equal to the window), need no rescaling: the backend's result is returned untouched, bit for
    bit what it was before the options existed. The rescaling is not even computed."""
    from fastconv.kernels import _avg_pool_problem

    for opts in [(False, True, None), (True, False, None), (False, False, 4)]:  # 8 = 4 windows of 2
        assert _avg_pool_problem((2, 3, 8, 8), 2, None, 0, *opts)[1] is None
    for opts in [(True, True, None), (False, False, None), (False, True, 3)]:  # each changes a divisor
        assert _avg_pool_problem((2, 3, 6, 6), 3, 2, 1, *opts)[1] is not None


def test_matches_pytorch_on_a_grid_including_what_it_refuses():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    checked = 0
    for h, w, k, s, p in itertools.product([1, 2, 3, 5, 6], [1, 4, 7], [1, 2, 3], [1, 2, 3], [0, 1]):
        if 2 * p > k:
            continue
        x = rng.standard_normal((2, 2, h, w))
        for ceil, cip, div in itertools.product([False, True], [True, False], [None, 3]):
            xt = torch.tensor(x, requires_grad=True)
            try:
                yt = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil, cip, div)
            except RuntimeError:
                with pytest.raises(ValueError, match="kernel_size"):
                    K.avg_pool2d_forward(x, k, s, p, ceil, cip, div)
                continue
            y = K.avg_pool2d_forward(x, k, s, p, ceil, cip, div)
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
            dy = rng.standard_normal(y.shape)
            (gt,) = torch.autograd.grad(yt, xt, torch.tensor(dy))
            dx = K.avg_pool2d_backward(dy, x.shape, k, s, p, ceil, cip, div)
            np.testing.assert_allclose(dx, gt.numpy(), rtol=1e-12, atol=1e-14)
            checked += 1
        for ceil in (False, True):
            xt = torch.tensor(x, requires_grad=True)
            try:
                yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, ceil_mode=ceil, return_indices=True)
            except RuntimeError:
                with pytest.raises(ValueError, match="kernel_size"):
                    K.max_pool2d_forward(x, k, s, p, ceil_mode=ceil)
                continue
            y, idx = K.max_pool2d_forward(x, k, s, p, ceil_mode=ceil)
            np.testing.assert_array_equal(y, yt.detach().numpy())
            np.testing.assert_array_equal(idx, it.numpy())
            checked += 1
    assert checked > 1000


# ------------------------------------------------------------------------------------ layers


def test_layers_take_pytorchs_arguments_and_shapes():
    # AvgPool2d's positional order is PyTorch's; MaxPool2d's ceil_mode is keyword-only, because
    # PyTorch's fourth positional argument there is a dilation this layer does not have.
    avg = AvgPool2d(3, 2, 1, True, False, 4)
    assert (avg.ceil_mode, avg.count_include_pad, avg.divisor_override) == (True, False, 4)
    with pytest.raises(TypeError):
        MaxPool2d(2, 2, 0, True)
    m = Sequential(MaxPool2d(2, ceil_mode=True), AvgPool2d(2, ceil_mode=True))
    assert m.output_shape((3, 5, 5)) == (3, 2, 2)  # 5 -> 3 -> 2; floor mode would give 2 -> 1
    assert MaxPool2d(2).output_shape((3, 5, 5)) == (3, 2, 2)
    y = m.forward(np.ones((1, 3, 5, 5), np.float32))
    assert y.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(y, 1.0)  # partial windows average what they hold, not zeros
    assert "ceil_mode=True" in repr(m[0]) and "divisor_override=4" in repr(avg)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: MaxPool2d(2, ceil_mode="yes"), TypeError, "ceil_mode: expected True or False, got 'yes'"),
        (lambda: AvgPool2d(2, count_include_pad=1), TypeError, "count_include_pad: expected True or False"),
        (lambda: AvgPool2d(2, divisor_override=0), ValueError, "divisor_override: expected None or a positive int"),
        (lambda: AvgPool2d(2, divisor_override=2.5), TypeError, "divisor_override: expected None or a positive int"),
        (lambda: K.avg_pool2d_forward(np.ones((1, 1, 4, 4)), 2, divisor_override=-1), ValueError, "got -1"),
        (lambda: K.max_pool2d_forward(np.ones((1, 1, 1, 1)), 3, 1, 1, ceil_mode="no"), TypeError, "ceil_mode"),
        # the sizes the caller gave, not the overhang-extended ones ceil mode works on
        (lambda: K.max_pool2d_forward(np.zeros((1, 1, 2, 1)), 3, (2, 1), ceil_mode=True), ValueError,
         "larger than the padded input 2x1 (x 2x1, padding (0, 0))"),
    ],
)
def test_bad_options_are_refused_with_what_was_expected(make, error, words):
    with pytest.raises(error, match=re.escape(words)):
        make()


def test_options_survive_save_and_load_and_default_files_are_unchanged(tmp_path, rng):
    model = Sequential(MaxPool2d(3, 2, 1, ceil_mode=True), AvgPool2d(2, 1, 1, True, False, 3))
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)
    model.save(tmp_path / "m.npz")
    again = load(tmp_path / "m.npz")
    assert [layer.config() for layer in again.layers] == [layer.config() for layer in model.layers]
    np.testing.assert_array_equal(again.forward(x), model.forward(x))
    # options at their defaults are not written: a catnet file stays byte for byte what it was
    assert MaxPool2d(2).config() == {"kernel_size": 2, "stride": 2, "padding": 0}
    assert AvgPool2d(2).config() == {"kernel_size": 2, "stride": 2, "padding": 0}
    # a model whose pools differ only in ceil mode is another architecture
    Sequential(MaxPool2d(3, 2, 1), AvgPool2d(2, 1, 1, True, False, 3)).save(tmp_path / "floor.npz")
    with pytest.raises(ValueError, match="ceil_mode"):
        model.load_weights(tmp_path / "floor.npz")
