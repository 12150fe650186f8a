"""Per-channel constants of the batch-norm backward, shared by the fused (numba, cython) kernels.

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
