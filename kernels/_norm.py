"""Batch norm around the fused (numba, cython) kernels: the per-channel constants of the backward
and the drivers both backends call with their own compiled kernels.

Their second pass computes ``dx = (dy - k0 - (x - mean) * k1) * scale``; this is the algebra that
turns the contract's formula into those three numbers per channel, kept in one place. scale is
applied last, as in the formula, so that an infinite weight gives +-inf, not inf - inf = NaN.
"""

from __future__ import annotations

import numpy as np


def dx_constants(
    weight: np.ndarray, var: np.ndarray, eps: float, sum_dy: np.ndarray, sum_dy_xc: np.ndarray, m: int, training: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(k0, k1, scale, dweight), float64 (C,), from the first pass's sums.

    sum_dy = sum(dy), sum_dy_xc = sum(dy * (x - mean)) per channel, over M = ``m`` values. With
    invstd = 1 / sqrt(var + eps) and xhat = (x - mean) * invstd: dweight = sum(dy * xhat) =
    sum_dy_xc * invstd, and dx = scale * (dy - sum_dy / M - xhat * dweight / M) with
    scale = weight * invstd, i.e. k0 = sum_dy / M and k1 = invstd * dweight / M. Without batch
    statistics (``training`` False) the two mean terms vanish: k0 = k1 = 0 (and the kernels
    then compute dy * scale alone, so that an inf in x cannot meet a 0).
    """
    invstd = 1.0 / np.sqrt(var + eps)
    scale = weight * invstd
    dweight = sum_dy_xc * invstd
    if not training:
        zero = np.zeros_like(scale)
        return zero, zero, scale, dweight
    return sum_dy / m, invstd * dweight / m, scale, dweight


# The fused backends (numba, cython) share everything around their four compiled kernels: the
# (N, C, H*W) views, the float64 statistics, the per-channel constants, the eval-mode shortcut.
# Each passes its kernels in; only the kernels differ between them.


def fused_forward(stats, apply, x, weight, bias, eps, mean, var):
    """y (N,C,H,W), mean, var (C,) float64 from two kernels over x3 = x viewed as (N, C, H*W):
    ``stats(x3, mean, var)`` fills the batch statistics (only when mean is None) and
    ``apply(x3, scale, mean, bias, y3)`` writes ``y3 = (x3 - mean) * scale + bias``."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    if mean is None:
        mean, var = np.empty(c), np.empty(c)
        stats(x3, mean, var)
    y = np.empty_like(x)
    apply(x3, (weight / np.sqrt(var + eps)).astype(x.dtype), mean.astype(x.dtype), bias, y.reshape(n, c, -1))
    return y, mean, var


def fused_backward(grad_sums, apply, dx_kernel, dy, x, weight, mean, var, eps, training):
    """dx (N,C,H,W), dweight, dbias (C,) in x's dtype from the kernels ``grad_sums(g3, x3, mean,
    sum_dy, sum_dy_xc)`` (one read of dy and x), then ``dx_kernel(g3, x3, mean, scale, k0, k1,
    dx3)`` (training) or ``apply(g3, scale, 0, 0, dx3)`` (given statistics)."""
    n, c = x.shape[:2]
    dt = x.dtype
    x3, g3 = x.reshape(n, c, -1), dy.reshape(n, c, -1)
    sum_dy, sum_dy_xc = np.empty(c), np.empty(c)
    mean_x = mean.astype(dt)
    grad_sums(g3, x3, mean_x, sum_dy, sum_dy_xc)
    k0, k1, scale, dweight = dx_constants(weight, var, eps, sum_dy, sum_dy_xc, n * x3.shape[2], training)
    dx = np.empty_like(x)
    dx3 = dx.reshape(n, c, -1)
    if training:
        dx_kernel(g3, x3, mean_x, scale.astype(dt), k0.astype(dt), k1.astype(dt), dx3)
    else:
        # dx = dy * scale alone: the fused formula's (x - mean) * 0 would turn an inf in x into NaN
        zero = np.zeros(c, dt)
        apply(g3, scale.astype(dt), zero, zero, dx3)
    return dx, dweight.astype(dt), sum_dy.astype(dt)
