"""Numba depthwise convolution kernels (groups = C): each output channel k filters one input
channel, c = k // M (M = K / C filters per input channel).

There is no sum over channels, so nothing for a matrix product (and only R*S multiply-adds per
output): ~2*R*S flops per output element, close to memory-bound, like pooling. The kernels are
built like the rung-2 conv plane (``_numba_conv._fwd_plane``) and the pooling ones:

* one ``prange`` task per plane (forward: an output plane; dx: an input plane, which only its
  own M output channels touch; dW: an output channel), so threads never write the same element;
* tap by tap over whole output rows, so the innermost loop runs along a row: with stride 1 it
  is contiguous and LLVM vectorises it (a literal stride; a runtime one gives scalar code);
* the valid output columns of a tap computed once (``_valid_cols``), and row views that start
  at the first valid element, so indices are provably >= 0 and Numba's negative-index test
  leaves the loop; taps in the padding are skipped (no padded copy of x);
* dW's sums over N*Ho*Wo products are a reduction: one running sum would wait ~4 cycles per
  add. The row kernels keep a float64 accumulator per output column (``lanes``), so the inner
  loop is independent across columns and vectorises without reassociating anything; the flat
  kernel's dot products (``_dot``) let LLVM reassociate in a fixed order instead.

Skipping a padding tap is exact unless the weight (forward) or dy (dW) is inf or NaN, where the
zero padding would contribute 0 * inf = NaN; numba_backend writes the padding out for those.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._numba_conv import _FMA, _valid_cols


@njit(cache=True, parallel=True, fastmath=_FMA)
def depthwise_fwd(x, w, b, sh, sw, ph, pw, dh, dw, y):
    """y (N,K,Ho,Wo) = b[k] + sum over taps (r, s) of w[k, 0, r, s] * x[n, k // M, i*sh - ph + r*dh,
    j*sw - pw + s*dw], skipping taps in the padding; x (N,C,H,W), w (K,1,R,S), b (K,)."""
    n_, c_, h_, w_ = x.shape
    k_, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    r_, s_ = w.shape[2], w.shape[3]
    m = k_ // c_
    for t in prange(n_ * k_):
        n = t // k_
        k = t - n * k_
        c = k // m
        yk = y[n, k]
        yk[:, :] = b[k]
        for r in range(r_):
            for s in range(s_):
                wv = w[k, 0, r, s]
                off = s * dw - pw
                lo, hi = _valid_cols(off, sw, w_, wo)
                for i in range(ho):
                    h = i * sh - ph + r * dh
                    if h < 0 or h >= h_:
                        continue
                    yrow = yk[i, lo:hi]
                    xrow = x[n, c, h, lo * sw + off :]
                    if sw == 1:
                        for j in range(hi - lo):
                            yrow[j] += wv * xrow[j]
                    else:
                        for j in range(hi - lo):
                            yrow[j] += wv * xrow[j * sw]


@njit(cache=True, parallel=True, fastmath=_FMA)
def depthwise_bwd_dx(dy, w, sh, sw, ph, pw, dh, dw, dx):
    """dx (N,C,H,W) = the adjoint of depthwise_fwd for dy (N,K,Ho,Wo) and w (K,1,R,S), one float
    dtype: every tap sends dy * w back to the input element it read."""
    n_, c_, h_, w_ = dx.shape
    k_, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    r_, s_ = w.shape[2], w.shape[3]
    m = k_ // c_
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        dx[n, c, :, :] = 0
        for q in range(m):
            k = c * m + q
            for r in range(r_):
                for s in range(s_):
                    wv = w[k, 0, r, s]
                    off = s * dw - pw
                    lo, hi = _valid_cols(off, sw, w_, wo)
                    for i in range(ho):
                        h = i * sh - ph + r * dh
                        if h < 0 or h >= h_:
                            continue
                        grow = dy[n, k, i, lo:hi]
                        dst = dx[n, c, h, lo * sw + off :]
                        if sw == 1:
                            for j in range(hi - lo):
                                dst[j] += wv * grow[j]
                        else:
                            for j in range(hi - lo):
                                dst[j * sw] += wv * grow[j]


@njit(cache=True, parallel=True)
def depthwise_bwd_w(dy, x, sh, sw, ph, pw, dh, dw, dwt, db):
    """dwt (K,1,R,S) and db (K,), float64: dwt[k, 0, r, s] = sum over n, i, j of dy[n, k, i, j]
    times the input element tap (r, s) read (padding skipped), db[k] = sum of dy[:, k]."""
    n_, c_, h_, w_ = x.shape
    k_, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    r_, s_ = dwt.shape[2], dwt.shape[3]
    m = k_ // c_
    for k in prange(k_):
        c = k // m
        lanes = np.zeros(wo)  # float64 partial sums, one per output column
        for n in range(n_):
            for i in range(ho):
                grow = dy[n, k, i]
                for j in range(wo):
                    lanes[j] += grow[j]
        db[k] = lanes.sum()
        for r in range(r_):
            for s in range(s_):
                off = s * dw - pw
                lo, hi = _valid_cols(off, sw, w_, wo)
                lanes[:] = 0.0
                for n in range(n_):
                    for i in range(ho):
                        h = i * sh - ph + r * dh
                        if h < 0 or h >= h_:
                            continue
                        grow = dy[n, k, i, lo:hi]
                        xrow = x[n, c, h, lo * sw + off :]
                        if sw == 1:
                            for j in range(hi - lo):
                                lanes[j] += grow[j] * xrow[j]
                        else:
                            for j in range(hi - lo):
                                lanes[j] += grow[j] * xrow[j * sw]
                dwt[k, 0, r, s] = lanes.sum()


# ------------------------------------------------------------ stride 1: flat padded planes
# As cython_depthwise.pyx explains: a row of 8-32 outputs is too short a loop. At stride 1 each
# task pads its plane into rows wp = W + 2*pw wide and computes Ho rows of that width (the last
# wp - Wo columns of each are garbage, never copied out), so that tap (r, s) is the constant
# offset r*dh*wp + s*dw and one loop runs over the whole plane per tap. Each task allocates its
# own buffers. The padding is real zeros (0 * inf = NaN comes out as the contract says); the
# garbage columns' zeros must not meet an inf weight (dx) or inf/NaN in x (dW): numba_backend
# sends those calls to the row kernels above.


@njit(cache=True, inline="always")
def _pad_into(src, dst, ph, pw, wp):
    """dst (flat, zeroed by the caller) <- the (H, W) plane src at row ph, column pw, rows wp apart."""
    h_, w_ = src.shape
    for h in range(h_):
        base = (h + ph) * wp + pw
        dst[base : base + w_] = src[h]


@njit(cache=True, inline="always")
def _flat_sizes(h_, w_, s_, ho, ph, pw, dw):
    """(wp, plane, q_n) of the flat layout, as _geometry.flat_plane_sizes: rows wp wide, the padded
    plane (+ (S-1)*dw so that the last tap's reads stay inside), Ho wide output rows."""
    wp = w_ + 2 * pw
    return wp, (h_ + 2 * ph) * wp + (s_ - 1) * dw, ho * wp


@njit(cache=True, parallel=True, fastmath=_FMA)
def depthwise_fwd_flat(x, w, b, ph, pw, dh, dw, y):
    """y (N,K,Ho,Wo) as depthwise_fwd, stride 1, through flat padded planes."""
    n_, c_, h_, w_ = x.shape
    k_, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    r_, s_ = w.shape[2], w.shape[3]
    m = k_ // c_
    wp, plane, q_n = _flat_sizes(h_, w_, s_, ho, ph, pw, dw)
    for t in prange(n_ * k_):
        n = t // k_
        k = t - n * k_
        xp = np.zeros(plane, x.dtype)
        _pad_into(x[n, k // m], xp, ph, pw, wp)
        out = np.empty(q_n, x.dtype)
        out[:] = b[k]
        for r in range(r_):
            for s in range(s_):
                wv = w[k, 0, r, s]
                src = xp[r * dh * wp + s * dw :]
                for q in range(q_n):
                    out[q] += wv * src[q]
        for i in range(ho):
            y[n, k, i, :] = out[i * wp : i * wp + wo]


@njit(cache=True, parallel=True, fastmath=_FMA)
def depthwise_bwd_dx_flat(dy, w, ph, pw, dh, dw, dx):
    """dx (N,C,H,W) as depthwise_bwd_dx, stride 1, every weight finite: dy in wide rows (zeros
    in the garbage columns), scattered to a padded plane per tap, the padding cut off."""
    n_, c_, h_, w_ = dx.shape
    k_, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    r_, s_ = w.shape[2], w.shape[3]
    m = k_ // c_
    wp, plane, q_n = _flat_sizes(h_, w_, s_, ho, ph, pw, dw)
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        acc = np.zeros(plane, dx.dtype)
        wide = np.zeros(q_n, dx.dtype)
        for q_m in range(m):
            k = c * m + q_m
            for i in range(ho):
                wide[i * wp : i * wp + wo] = dy[n, k, i]
            for r in range(r_):
                for s in range(s_):
                    wv = w[k, 0, r, s]
                    dst = acc[r * dh * wp + s * dw :]
                    for q in range(q_n):
                        dst[q] += wv * wide[q]
        for h in range(h_):
            base = (h + ph) * wp + pw
            dx[n, c, h, :] = acc[base : base + w_]


@njit(cache=True, fastmath={"reassoc"})
def _dot(a, b, length):
    """sum_q a[q] * b[q] (q < length) in float64. One running sum waits ~4 cycles per add;
    ``reassoc`` lets LLVM keep several vector partial sums instead: a fixed order chosen at
    compile time (the same bits on every call and thread), not the sequential one."""
    total = 0.0
    for q in range(length):
        total += np.float64(a[q]) * b[q]
    return total


@njit(cache=True, fastmath={"reassoc"})
def _sum(a, length):
    """sum_q a[q] (q < length) in float64, reassociated as _dot is."""
    total = 0.0
    for q in range(length):
        total += np.float64(a[q])
    return total


@njit(cache=True, parallel=True)
def depthwise_bwd_w_flat(dy, x, ph, pw, dh, dw, dwt, db):
    """dwt (K,1,R,S), db (K,), float64, as depthwise_bwd_w, stride 1. Per image, tap (r, s)'s
    share is one dot product of the wide dy plane with the padded x plane shifted by the tap's
    offset (both small enough for L1, _dot). An inf/NaN in x meets a garbage column's zero dy
    here (0 * inf = NaN where the reference has none): numba_backend checks dW afterwards."""
    n_, c_, h_, w_ = x.shape
    k_, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    r_, s_ = dwt.shape[2], dwt.shape[3]
    m = k_ // c_
    wp, plane, q_n = _flat_sizes(h_, w_, s_, ho, ph, pw, dw)
    for k in prange(k_):
        c = k // m
        xp = np.zeros(plane, x.dtype)  # borders stay zero: each image rewrites the interior only
        wide = np.zeros(q_n, dy.dtype)  # likewise the garbage columns
        sums = np.zeros(r_ * s_)
        total = 0.0
        for n in range(n_):
            _pad_into(x[n, c], xp, ph, pw, wp)
            for i in range(ho):
                wide[i * wp : i * wp + wo] = dy[n, k, i]
            total += _sum(wide, q_n)  # the garbage columns' zeros add nothing
            for r in range(r_):
                for s in range(s_):
                    sums[r * s_ + s] += _dot(wide, xp[r * dh * wp + s * dw :], q_n)
        db[k] = total
        for r in range(r_):
            for s in range(s_):
                dwt[k, 0, r, s] = sums[r * s_ + s]
