"""Numba pooling and ReLU kernels (float32/float64, compiled lazily per dtype, cached on disk).

Pooling is memory-bound: one pass over x, a few comparisons per element. What pays here is
(1) compiled loops instead of numpy's reshape/copy passes, (2) one output plane per ``prange``
task so both cores stream their own memory with no shared writes, (3) window bounds clipped
once per output row/column instead of a padding test per tap. No fastmath anywhere: the max
kernels rely on exact NaN comparisons.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _window(i, stride, pad, size, extent):
    """Window taps [lo, hi) of output index i that fall inside the input (padding never counts)."""
    start = i * stride - pad
    return max(0, -start), min(size, extent - start), start


@njit(cache=True, parallel=True)
def max_pool_fwd(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """y, argmax (N,C,Ho,Wo) <- max of each window of x (N,C,H,W) and its flat index h*W + w.

    Replaces the leader only on ``v > best`` (so the first maximum in row-major window order
    wins a tie) or when v is the first NaN (NaN beats every number; later NaNs do not replace
    it, since NaN > NaN is false and the leader is already NaN). The first real element always
    starts as leader, so a window of -inf still reports a real position; padding never wins.
    """
    n_, c_, h_, w_ = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        plane = x[n, c]
        for i in range(ho):
            rlo, rhi, h0 = _window(i, sh, ph, kh, h_)
            for j in range(wo):
                slo, shi, w0 = _window(j, sw, pw, kw, w_)
                best_idx = (h0 + rlo) * w_ + w0 + slo
                best = plane[h0 + rlo, w0 + slo]
                for r in range(rlo, rhi):
                    for s in range(slo, shi):
                        v = plane[h0 + r, w0 + s]
                        if v > best or (v != v and best == best):
                            best = v
                            best_idx = (h0 + r) * w_ + w0 + s
                y[n, c, i, j] = best
                argmax[n, c, i, j] = best_idx


@njit(cache=True, parallel=True)
def max_pool_bwd(dy, argmax, dx):
    """dx (N,C,H,W), zero-initialised by the caller, += dy at each window's winner.

    One plane per task, so overlapping windows (stride < kernel) add up without races. argmax
    was range-checked by dispatch."""
    n_, c_ = dx.shape[0], dx.shape[1]
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        flat = dx[n, c].reshape(-1)
        idx = argmax[n, c].reshape(-1)
        g = dy[n, c].reshape(-1)
        for p in range(g.size):
            flat[idx[p]] += g[p]


@njit(cache=True, parallel=True)
def avg_pool_fwd(x, kh, kw, sh, sw, ph, pw, y):
    """y (N,C,Ho,Wo) <- window sum / (kh*kw); padded zeros count in the divisor.

    Accumulates in float64 like the reference (windows are small: the cost is the load)."""
    n_, c_, h_, w_ = x.shape
    ho, wo = y.shape[2], y.shape[3]
    divisor = kh * kw
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        plane = x[n, c]
        for i in range(ho):
            rlo, rhi, h0 = _window(i, sh, ph, kh, h_)
            for j in range(wo):
                slo, shi, w0 = _window(j, sw, pw, kw, w_)
                acc = 0.0
                for r in range(rlo, rhi):
                    for s in range(slo, shi):
                        acc += plane[h0 + r, w0 + s]
                y[n, c, i, j] = acc / divisor


@njit(cache=True, parallel=True)
def avg_pool_bwd(dy, kh, kw, sh, sw, ph, pw, dx):
    """dx (N,C,H,W), zero-initialised by the caller, += dy / (kh*kw) over each window's real inputs."""
    n_, c_, h_, w_ = dx.shape
    ho, wo = dy.shape[2], dy.shape[3]
    divisor = kh * kw
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        plane = dx[n, c]
        for i in range(ho):
            rlo, rhi, h0 = _window(i, sh, ph, kh, h_)
            for j in range(wo):
                slo, shi, w0 = _window(j, sw, pw, kw, w_)
                share = np.float64(dy[n, c, i, j]) / divisor
                for r in range(rlo, rhi):
                    for s in range(slo, shi):
                        plane[h0 + r, w0 + s] += share


@njit(cache=True, parallel=True)
def relu_fwd(x, y):
    """y <- x where x > 0 or x is NaN, else 0; x, y flat (size,) arrays of one dtype."""
    for p in prange(x.size):
        v = x[p]
        y[p] = v if (v > 0 or v != v) else 0


@njit(cache=True, parallel=True)
def relu_bwd(dy, x, dx):
    """dx <- dy where x > 0, else 0 (a NaN x gives 0, like the reference); flat arrays."""
    for p in prange(x.size):
        dx[p] = dy[p] if x[p] > 0 else 0
