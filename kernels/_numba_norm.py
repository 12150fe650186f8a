"""Numba batch-normalisation kernels (float32/float64; compiled lazily per dtype, cached on disk).

Batch norm is memory-bound: per channel, a few passes over M = N*H*W values. The numpy backend
makes one pass per elementwise operation and a temporary array for most of them (six passes in
the forward, eight in the backward); these kernels fuse them into two passes each way:

* forward: (1) the channel's sum, then the sum of squared distances from its mean (the two-pass
  variance, which cannot cancel catastrophically as sum(x^2) - M*mean^2 can) — both read x only;
  (2) ``y = (x - mean) * a + bias`` with ``a = weight / sqrt(var + eps)`` folded once per channel;
* backward: (1) ``sum(dy)`` and ``sum(dy * (x - mean))`` in one read of dy and x; (2) dx from dy
  and x with three per-channel constants (``kernels/_norm.py``). xhat is never stored: recomputing ``x - mean`` costs
  one subtraction, storing it a full array of writes and reads.

Channels are independent, so ``prange`` gives each thread whole channels (each one N rows of
H*W contiguous values). Sums are float64. ``fastmath={"reassoc"}`` — and only that flag — lets
LLVM split a sum into SIMD lanes (a different order of the same additions: a rounding change,
not a semantic one; NaN and inf still propagate, which the 'nnan' / 'ninf' flags would break).
Without it each float64 addition waits for the previous one: ~4x slower.
"""

from __future__ import annotations

from numba import njit, prange


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def bn_stats(x, mean, var):
    """mean, var (C,) float64 <- the mean and biased variance of each channel of x (N, C, S)."""
    n, c, s = x.shape
    m = n * s
    for ch in prange(c):
        total = 0.0
        for i in range(n):
            for p in range(s):
                total += x[i, ch, p]
        mu = total / m
        squares = 0.0
        for i in range(n):
            for p in range(s):
                d = x[i, ch, p] - mu
                squares += d * d
        mean[ch] = mu
        var[ch] = squares / m


@njit(cache=True, parallel=True)
def bn_apply(x, scale, mean, bias, y):
    """y <- (x - mean) * scale + bias per channel; x, y (N, C, S), the rest (C,) of x's dtype."""
    n, c, s = x.shape
    for ch in prange(c):
        mu, a, b = mean[ch], scale[ch], bias[ch]
        for i in range(n):
            for p in range(s):
                y[i, ch, p] = (x[i, ch, p] - mu) * a + b


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def bn_grad_sums(dy, x, mean, sum_dy, sum_dy_xc):
    """sum_dy, sum_dy_xc (C,) float64 <- sums of dy and of dy * (x - mean) per channel (one pass)."""
    n, c, s = x.shape
    for ch in prange(c):
        mu = mean[ch]
        a = 0.0
        b = 0.0
        for i in range(n):
            for p in range(s):
                g = dy[i, ch, p]
                a += g
                b += g * (x[i, ch, p] - mu)
        sum_dy[ch] = a
        sum_dy_xc[ch] = b


@njit(cache=True, parallel=True)
def bn_dx(dy, x, mean, scale, k0, k1, dx):
    """dx <- (dy - k0 - (x - mean) * k1) * scale per channel; (N, C, S) arrays, (C,) constants."""
    n, c, s = x.shape
    for ch in prange(c):
        mu, a, b, d = mean[ch], scale[ch], k0[ch], k1[ch]
        for i in range(n):
            for p in range(s):
                dx[i, ch, p] = (dy[i, ch, p] - b - (x[i, ch, p] - mu) * d) * a
