"""Tolerances, numerical gradients and random problems shared by the kernel tests.

Tolerances (the reasoning, also stated in README.md)
----------------------------------------------------
A backend may sum in any order (BLAS blocks, threads split the work, FMA fuses), so results are
not bit-identical. Higham's bound for a sum of L products computed in any order in floating
point with unit roundoff u is::

    |computed - exact| <= gamma_L * sum(|a_i * b_i|),   gamma_L = L*u / (1 - L*u) ~ L*u

``scale`` below is that sum of absolute products, computed elementwise by running the same op
on |inputs| in float64. So the checks are:

* float64 backend vs the float64 python reference: ``|a - b| <= 2 * (L + 1) * u64 * scale``
  (both sides round; +1 for the bias), u64 = 2**-53 ~ 1.1e-16 — far tighter than the
  ~1e-10 relative DESIGN.md promises.
* float32 backend vs float64 reference on the *same* (float32-representable) inputs:
  ``|a - b| <= (L + 1) * u32 * scale + tiny``, u32 = 2**-24 ~ 6e-8. For catnet's widest
  layer (L = 32*3*3 = 288) that is ~1.7e-5 relative to the sum of absolute products; observed
  errors are one to two orders of magnitude smaller.

The bound is rigorous, so a correct backend cannot fail it, while any indexing bug gives
errors of the order of ``scale`` itself — a million times the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import fastconv.kernels as K
import numpy as np

U64 = 2.0**-53
U32 = 2.0**-24


def unit_roundoff(dtype) -> float:
    return U32 if np.dtype(dtype) == np.float32 else U64


def assert_within(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray | float, what: str) -> None:
    """Elementwise |actual - expected| <= bound, with NaN/inf required in the same places."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nonfinite = ~np.isfinite(expected)
    np.testing.assert_array_equal(
        np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN positions differ"
    )
    np.testing.assert_array_equal(actual[nonfinite], expected[nonfinite], err_msg=f"{what}: inf values differ")
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf: those places are checked above
        err = np.abs(actual - expected)[~nonfinite]
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)[~nonfinite]
    if err.size:
        worst = int(np.argmax(err - bound))
        assert np.all(err <= bound), (
            f"{what}: max error {err.max():.3e} exceeds its bound (worst element: error {err[worst]:.3e}, "
            f"bound {bound[worst]:.3e})"
        )


def conv_bounds(x, w, b, dy, stride, padding, dilation, dtype, *, two_sided: bool, groups: int = 1):
    """Error bounds for y, dx, dw, db of a conv problem (see module docstring)."""
    ax, aw = np.abs(x).astype(np.float64), np.abs(w).astype(np.float64)
    ab = None if b is None else np.abs(b).astype(np.float64)
    g = K.conv2d_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    u = unit_roundoff(dtype) * (2 if two_sided else 1)
    ys = K.conv2d_forward(ax, aw, ab, stride, padding, dilation, groups, backend="numpy")
    ady = np.abs(dy).astype(np.float64)
    dxs, dws, dbs = K.conv2d_backward(ady, ax, aw, stride, padding, dilation, groups, backend="numpy")
    tiny = np.finfo(dtype).tiny * 16
    l_fwd = (g.c // g.groups) * g.r * g.s + 1  # terms in one output's sum
    l_dx = (g.k // g.groups) * g.r * g.s
    l_dw = g.n * g.ho * g.wo
    return (
        l_fwd * u * ys + tiny,
        l_dx * u * dxs + tiny,
        l_dw * u * dws + tiny,
        l_dw * u * dbs + tiny,
    )


def numerical_gradient(f: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of scalar ``f()`` w.r.t. every element of ``array`` (float64, in place)."""
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def assert_gradient(analytic: np.ndarray, numeric: np.ndarray, what: str, rtol: float = 1e-6) -> None:
    """Central differences of a piecewise-linear function are exact up to rounding (~u*|f|/eps),
    so 1e-6 relative to the largest gradient entry is a safe yet sharp bound."""
    scale = max(1.0, float(np.abs(numeric).max()))
    err = float(np.abs(analytic - numeric).max())
    assert err <= rtol * scale, f"{what}: analytic vs numerical gradient differ by {err:.3e} (scale {scale:.3e})"


def distinct_values(rng: np.random.Generator, shape, dtype=np.float64, gap: float = 1e-3) -> np.ndarray:
    """Random values whose pairwise gaps are >= ``gap``: no ties and no kinks within eps of a
    finite-difference step (max pooling and ReLU are only piecewise linear)."""
    size = int(np.prod(shape))
    vals = (rng.permutation(size) - size / 2) * gap * 2 + rng.uniform(0, gap / 4, size)
    return vals.reshape(shape).astype(dtype)


def scipy_conv_oracle(x, w, b, stride, padding, dilation) -> np.ndarray:
    """Independent conv2d oracle built on scipy.signal.correlate: dilate the kernel with zeros,
    correlate the zero-padded input in 'valid' mode, then keep every stride-th output."""
    from scipy.signal import correlate

    sh, sw = K.normalize_pair(stride, "stride", minimum=1)
    ph, pw = K.normalize_pair(padding, "padding", minimum=0)
    dh, dw = K.normalize_pair(dilation, "dilation", minimum=1)
    kk, c, r, s = w.shape
    wd = np.zeros((kk, c, dh * (r - 1) + 1, dw * (s - 1) + 1))
    wd[:, :, ::dh, ::dw] = w
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = []
    for n in range(x.shape[0]):
        rows = []
        for k in range(kk):
            full = correlate(xp[n], wd[k], mode="valid", method="direct")[0]
            rows.append(full[::sh, ::sw] + (0.0 if b is None else b[k]))
        out.append(rows)
    return np.asarray(out)
