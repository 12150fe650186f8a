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

from ._numba_conv import _valid_cols


@njit(cache=True, inline="always")
def _lead(v, best):
    """True when tap value v takes the lead from ``best`` (a real element already seen)."""
    return (v > best) | ((v != v) & (best == best))


@njit(cache=True, parallel=True)
def max_pool_fwd(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """y, argmax (N,C,Ho,Wo) <- max of each window of x (N,C,H,W) and its flat index h*W + w.

    Same rule as the reference: a tap takes the lead if no real element was seen yet
    (index < 0), if it is greater, or if it is the first NaN (NaN beats every number; a later
    NaN does not replace it). Taps are visited in row-major window order, so the first maximum
    wins a tie; padding taps are never visited, so padding never wins.

    Loop order: per output row, taps (r, s) outside and output columns j inside, with the
    running best of the whole row held in y/argmax's row. The per-window compare-and-select
    chain is a serial dependency (~10 cycles per tap); running it for 8 columns at once in
    SIMD lanes, with bitwise | & and conditional expressions that compile to blends instead of
    branches, made this kernel ~50x faster than one window at a time.
    """
    n_, c_, h_, w_ = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        for i in range(ho):
            best = y[n, c, i]
            idx = argmax[n, c, i]
            best[:] = -np.inf
            idx[:] = -1
            # only the taps that can meet real input: a 2**40-wide window over 6 rows visits 6
            # rows, not 2**40 (same taps in the same order as testing each one)
            for r in range(max(0, ph - i * sh), min(kh, h_ + ph - i * sh)):
                h = i * sh - ph + r
                for s in range(max(0, pw - (wo - 1) * sw), min(kw, w_ + pw)):
                    off = s - pw
                    lo, hi = _valid_cols(off, sw, w_, wo)
                    src = x[n, c, h, lo * sw + off:]
                    b = best[lo:hi]
                    ix = idx[lo:hi]
                    base = h * w_ + lo * sw + off
                    # A literal stride lets LLVM vectorise the strided loads (interleaved
                    # groups); with a runtime stride it emits scalar code. 2 is catnet's stride.
                    if sw == 2:
                        for j in range(hi - lo):
                            v = src[2 * j]
                            cur = b[j]
                            take = (ix[j] < 0) | _lead(v, cur)
                            b[j] = v if take else cur
                            ix[j] = base + 2 * j if take else ix[j]
                    else:
                        for j in range(hi - lo):
                            v = src[j * sw]
                            cur = b[j]
                            take = (ix[j] < 0) | _lead(v, cur)
                            b[j] = v if take else cur
                            ix[j] = base + j * sw if take else ix[j]


@njit(cache=True, parallel=True)
def max_pool_fwd_2x2(x, y, argmax):
    """max_pool_fwd for the 2x2 window, stride 2, no padding (catnet's pool), same rules: x
    (N,C,H,W) -> y (N,C,H//2,W//2) of x's dtype and argmax (same shape, int64, flat h*W + w).

    Per plane, the even and the odd input rows are first copied into two contiguous buffers
    (row copies, memcpy speed). Output q = i*Wo + j then reads top[2q], top[2q+1], bot[2q],
    bot[2q+1]: one loop over the whole plane instead of one per output row. The four taps are
    unrolled in window order (first element leads, three compare-and-selects), straight-line
    code that LLVM vectorises across q. With per-row loops, catnet's 16- and 8-wide rows were
    shorter than one unrolled vector iteration and ran in the scalar remainder loop: this is
    ~10x faster on (32,32,32,32) and (32,64,16,16), ~1.3x slower on (32,16,64,64).
    """
    n_, c_, w_ = x.shape[0], x.shape[1], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    m = ho * wo
    # Flat index in the input plane of each window's top-left element; the same for every plane.
    base = np.empty(m, np.int64)
    for i in range(ho):
        for j in range(wo):
            base[i * wo + j] = 2 * i * w_ + 2 * j
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        top = np.empty(2 * m, x.dtype)
        bot = np.empty(2 * m, x.dtype)
        for i in range(ho):
            top[2 * i * wo:2 * (i + 1) * wo] = x[n, c, 2 * i, :2 * wo]
            bot[2 * i * wo:2 * (i + 1) * wo] = x[n, c, 2 * i + 1, :2 * wo]
        yp = y[n, c].reshape(-1)
        ap = argmax[n, c].reshape(-1)
        for q in range(m):
            best = top[2 * q]
            at = base[q]
            v = top[2 * q + 1]
            take = _lead(v, best)
            best = v if take else best
            at = base[q] + 1 if take else at
            v = bot[2 * q]
            take = _lead(v, best)
            best = v if take else best
            at = base[q] + w_ if take else at
            v = bot[2 * q + 1]
            take = _lead(v, best)
            best = v if take else best
            at = base[q] + w_ + 1 if take else at
            yp[q] = best
            ap[q] = at


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

    Accumulates a float64 row like the reference (taps outside, columns inside: SIMD)."""
    n_, c_, h_, w_ = x.shape
    ho, wo = y.shape[2], y.shape[3]
    divisor = kh * kw
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        acc = np.empty(wo, np.float64)
        for i in range(ho):
            acc[:] = 0.0
            # only the taps that can meet real input: a 2**40-wide window over 6 rows visits 6
            # rows, not 2**40 (same taps in the same order as testing each one)
            for r in range(max(0, ph - i * sh), min(kh, h_ + ph - i * sh)):
                h = i * sh - ph + r
                for s in range(max(0, pw - (wo - 1) * sw), min(kw, w_ + pw)):
                    off = s - pw
                    lo, hi = _valid_cols(off, sw, w_, wo)
                    src = x[n, c, h, lo * sw + off:]
                    a = acc[lo:hi]
                    for j in range(hi - lo):
                        a[j] += src[j * sw]
            for j in range(wo):
                y[n, c, i, j] = acc[j] / divisor


@njit(cache=True, parallel=True)
def avg_pool_bwd(dy, kh, kw, sh, sw, ph, pw, dx):
    """dx (N,C,H,W), zero-initialised by the caller, += dy / (kh*kw) over each window's real inputs."""
    n_, c_, h_, w_ = dx.shape
    ho, wo = dy.shape[2], dy.shape[3]
    divisor = kh * kw
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        share = np.empty(wo, dx.dtype)
        for i in range(ho):
            for j in range(wo):
                share[j] = np.float64(dy[n, c, i, j]) / divisor
            # only the taps that can meet real input: a 2**40-wide window over 6 rows visits 6
            # rows, not 2**40 (same taps in the same order as testing each one)
            for r in range(max(0, ph - i * sh), min(kh, h_ + ph - i * sh)):
                h = i * sh - ph + r
                for s in range(max(0, pw - (wo - 1) * sw), min(kw, w_ + pw)):
                    off = s - pw
                    lo, hi = _valid_cols(off, sw, w_, wo)
                    dst = dx[n, c, h, lo * sw + off:]
                    sh_ = share[lo:hi]
                    for j in range(hi - lo):
                        dst[j * sw] += sh_[j]


@njit(cache=True, parallel=True)
def avg_pool_fwd_2x2(x, y):
    """avg_pool_fwd for the 2x2 window, stride 2, no padding: four fixed loads per output,
    summed in float64 in the reference's order (from 0, row by row), so equal to it to the bit.
    The general kernel's per-tap row passes over a float64 accumulator cost 3x more here."""
    n_, c_ = x.shape[0], x.shape[1]
    ho, wo = y.shape[2], y.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        for i in range(ho):
            top = x[n, c, 2 * i]
            bot = x[n, c, 2 * i + 1]
            for j in range(wo):
                acc = 0.0 + np.float64(top[2 * j])
                acc += np.float64(top[2 * j + 1])
                acc += np.float64(bot[2 * j])
                acc += np.float64(bot[2 * j + 1])
                y[n, c, i, j] = acc / 4.0


@njit(cache=True, parallel=True)
def avg_pool_bwd_2x2(dy, dx):
    """dx (N,C,H,W), uninitialised: the 2x2 / stride-2 windows do not overlap, so each input
    gets exactly one share, written directly; an odd plane's last row / column (in no window) 0."""
    n_, c_ = dx.shape[0], dx.shape[1]
    ho, wo = dy.shape[2], dy.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        for i in range(ho):
            top = dx[n, c, 2 * i]
            bot = dx[n, c, 2 * i + 1]
            for j in range(wo):
                share = np.float64(dy[n, c, i, j]) / 4.0
                top[2 * j] = share
                top[2 * j + 1] = share
                bot[2 * j] = share
                bot[2 * j + 1] = share
            top[2 * wo:] = 0
            bot[2 * wo:] = 0
        dx[n, c, 2 * ho:] = 0


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
