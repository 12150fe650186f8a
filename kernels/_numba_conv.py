"""Numba conv2d kernels: the optimisation ladder, from the reference loops to the fast path.

Every function here is ``@njit(cache=True)``; it is compiled on its first call for a dtype
(float32 or float64 — the only dtypes dispatch lets through) and loaded from the on-disk cache
afterwards. Sizes are passed as plain ints (a geometry dataclass cannot enter nopython code);
outputs are preallocated by the caller in ``numba_backend``.

The ladder for the forward pass (see docs/numba.md for measurements). The numbers 1-5 below and
in the section comments count numba's steps only; docs/ladder.md numbers every engine in one
ladder (python 0, numpy 1, then these as its rungs 2-5 with im2col + BLAS an aside of rung 5,
cython 6-7) and names them by their ``numba_backend.LADDER`` key: naive, reordered, parallel,
im2col-blas, flat.

1. ``conv_fwd_naive``: the python reference's loops, unchanged, only jitted. Innermost loop is
   the S taps of one kernel row with two bounds checks per tap; no SIMD, no FMA (float64
   multiply, then add, like the reference).
2. ``conv_fwd_reordered``: the same sums, loops reordered so the innermost loop runs over the
   output row ``j`` with its valid range precomputed (no branch inside), reading ``x`` with
   unit stride when ``stride == 1``: LLVM can vectorise it (8 float32 per AVX2 register), and
   FMA contraction is allowed (``_fwd_plane`` has ``fastmath=_FMA``).
3. ``conv_fwd_parallel``: rung 2 with ``prange`` over (image, output channel): 2 cores.
4. ``conv_fwd_im2col_blas``: per image, unfold the windows into a (C*R*S, Ho*Wo) matrix and
   call BLAS sgemm through ``np.dot``. Good for large C*R*S; the matrix M = K rows is small in
   catnet, where OpenBLAS is far from its peak, and the unfold writes 9x the input.
5. ``conv_fwd_flat`` (in numba_backend.py, the one the backend uses when stride == 1; its kernel
   here is ``flat_correlate``): zero-pad each input plane once,
   then treat every padded plane as one flat vector. Output element (i, j) sits at flat position
   ``q = i*Wp + j`` and tap (r, s) reads ``xp[q + r*dh*Wp + s*dw]``: every tap becomes one long
   contiguous vector with a constant offset, with no padding branches and no short rows
   (the Wp - Wo wrap-around columns are computed and thrown away: 3 % extra work at 64x64).
   One pass of the inner loop handles 3 taps for 3 output channels, so each input load is
   shared by three channels and each accumulator load/store by three taps (9 FMAs per 3 + 3
   loads and 3 stores); the accumulator tiles (``_TILE`` floats per channel) stay in L1.
   The same kernel computes dx of the backward pass (a correlation of the zero-bordered dy with
   the flipped kernel) — see ``flat_correlate``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Accumulator tile of flat_correlate, in elements: 1024 float32 = 4 KiB per output channel, so
# the three channels' tiles (12 KiB) plus the input streams they read stay inside the 32 KiB L1d
# of a Zen4 core.
_TILE = 1024
# The flat loops run over a length rounded up to a multiple of _ROUND elements, so LLVM's
# vectorised body (8 float32 lanes x 4-fold unrolling = 32 elements) covers everything and
# its scalar remainder loop never runs: a remainder of up to 31 scalar iterations cost
# 10-25 % on catnet's rows (tiles of ~1000 and ~290 elements). Rounding to 64 instead was
# measured ~5-10 % slower on the 16x16 layer (more garbage: 286 -> 320). The extra
# elements are wrap-around garbage never copied out (forward, dx) or zeros of dy (dW); the
# caller gives every flat plane SLACK elements of zeros at the end so the reads stay inside.
_ROUND = 32
SLACK = _ROUND

# 'contract' lets LLVM fuse a*b + c into one FMA instruction (AVX2/FMA on this CPU). It only
# changes rounding (one rounding instead of two — more accurate), never NaN/inf propagation:
# we do NOT enable 'nnan'/'ninf'/'fast', which would let LLVM assume NaN never occurs.
_FMA = {"contract"}
# Reductions (dot products) only vectorise when the additions may be reassociated into
# several partial sums. Reordering a sum changes rounding, and could at most change which
# intermediate overflows; NaN inputs still give NaN (no 'nnan' flag).
_FMA_REASSOC = {"contract", "reassoc"}


# ---------------------------------------------------------------- rung 1: the reference, jitted
@njit(cache=True)
def conv_fwd_naive(x, w, b, sh, sw, ph, pw, dh, dw, y):
    """y (N,K,Ho,Wo) <- conv(x (N,C,H,W), w (K,C,R,S)) + b; python_backend's loops verbatim."""
    n_, c_, h_, w_ = x.shape
    k_, _, r_, s_ = w.shape
    ho, wo = y.shape[2], y.shape[3]
    for n in range(n_):
        for k in range(k_):
            for i in range(ho):
                for j in range(wo):
                    acc = np.float64(b[k])
                    for c in range(c_):
                        for r in range(r_):
                            h = i * sh - ph + r * dh
                            for s in range(s_):
                                ww = j * sw - pw + s * dw
                                inside = 0 <= h < h_ and 0 <= ww < w_
                                xv = np.float64(x[n, c, h, ww]) if inside else np.float64(0.0)
                                acc += xv * np.float64(w[k, c, r, s])
                    y[n, k, i, j] = acc


# ---------------------------------------------------------------- rung 2: contiguous inner loop
@njit(cache=True)
def _valid_cols(off, sw, w_, wo):
    """Output columns j whose tap column ``j*sw + off`` lies inside [0, W): returns [lo, hi).

    Also called by the kernels of _numba_pool.py. Numba's cache checks only the source file of
    the cached function, so after editing this function also touch _numba_pool.py (or clear
    the cache) or its cached pooling kernels keep the old copy."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = min(wo, (w_ - 1 - off) // sw + 1)
    return lo, max(lo, hi)


@njit(cache=True, fastmath=_FMA)
def _fwd_plane(x, w, b, n, k, sh, sw, ph, pw, dh, dw, yk):
    """One output plane yk = y[n, k] (Ho, Wo), accumulated tap by tap over whole output rows, from
    x (N,C,H,W), w (K,C,R,S) and b (K,) (zeros when the layer has no bias), all one float dtype."""
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    r_, s_ = w.shape[2], w.shape[3]
    ho, wo = yk.shape
    yk[:, :] = b[k]
    for c in range(c_):
        for r in range(r_):
            for s in range(s_):
                wv = w[k, c, r, s]
                off = s * dw - pw
                lo, hi = _valid_cols(off, sw, w_, wo)
                for i in range(ho):
                    h = i * sh - ph + r * dh
                    if h < 0 or h >= h_:
                        continue
                    # Views starting at the first valid element keep indices >= 0 provably,
                    # so Numba's negative-index wrap-around test disappears from the loop.
                    yrow = yk[i, lo:hi]
                    xrow = x[n, c, h, lo * sw + off:]
                    if sw == 1:
                        for j in range(hi - lo):
                            yrow[j] += wv * xrow[j]
                    else:
                        for j in range(hi - lo):
                            yrow[j] += wv * xrow[j * sw]


@njit(cache=True)
def conv_fwd_reordered(x, w, b, sh, sw, ph, pw, dh, dw, y):
    """Rung 2: y (N,K,Ho,Wo) from x (N,C,H,W), w (K,C,R,S), b (K,); serial, innermost loop
    contiguous over the output row (vectorisable)."""
    for n in range(x.shape[0]):
        for k in range(w.shape[0]):
            _fwd_plane(x, w, b, n, k, sh, sw, ph, pw, dh, dw, y[n, k])


# ---------------------------------------------------------------- rung 3: + threads
@njit(cache=True, parallel=True, fastmath=_FMA)
def conv_fwd_parallel(x, w, b, sh, sw, ph, pw, dh, dw, y):
    """Rung 3: rung 2 over ``prange`` of (image, output channel), same arrays and shapes; each
    task owns one output plane, so there is nothing to synchronise. Also the fallback for
    stride > 1."""
    k_ = w.shape[0]
    for t in prange(x.shape[0] * k_):
        n = t // k_
        k = t - n * k_
        _fwd_plane(x, w, b, n, k, sh, sw, ph, pw, dh, dw, y[n, k])


# ---------------------------------------------------------------- rung 4: im2col + BLAS
@njit(cache=True)
def _im2col(x, n, r_, s_, sh, sw, ph, pw, dh, dw, ho, wo, col):
    """col (C*R*S, Ho*Wo): row (c, r, s) holds the input pixel each output reads at that tap."""
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    for c in range(c_):
        for r in range(r_):
            for s in range(s_):
                row = col[(c * r_ + r) * s_ + s]
                off = s * dw - pw
                lo, hi = _valid_cols(off, sw, w_, wo)
                for i in range(ho):
                    h = i * sh - ph + r * dh
                    dst = row[i * wo:(i + 1) * wo]
                    if h < 0 or h >= h_:
                        dst[:] = 0.0
                        continue
                    dst[:lo] = 0.0
                    dst[hi:] = 0.0
                    for j in range(lo, hi):
                        dst[j] = x[n, c, h, j * sw + off]


@njit(cache=True)
def conv_fwd_im2col_blas(x, w, b, sh, sw, ph, pw, dh, dw, y):
    """Rung 4: per image, y[n] (K, Ho*Wo) = w (K, C*R*S) @ im2col(x[n]) through BLAS.

    Serial over images; BLAS itself runs on the fastconv thread count (threadpoolctl)."""
    n_, c_ = x.shape[0], x.shape[1]
    k_, _, r_, s_ = w.shape
    ho, wo = y.shape[2], y.shape[3]
    w2 = w.reshape(k_, c_ * r_ * s_)
    col = np.empty((c_ * r_ * s_, ho * wo), x.dtype)
    out = np.empty((k_, ho * wo), x.dtype)
    for n in range(n_):
        _im2col(x, n, r_, s_, sh, sw, ph, pw, dh, dw, ho, wo, col)
        np.dot(w2, col, out)
        yn = y[n].reshape(k_, ho * wo)
        for k in range(k_):
            bk = b[k]
            for p in range(ho * wo):
                yn[k, p] = out[k, p] + bk


# ---------------------------------------------------------------- rung 5: flat padded planes
@njit(cache=True, parallel=True)
def pad_flat(x, lead, row_stride, out):
    """out (N, C, L) <- zeros, with x[n, c, h, j] (N, C, H, W) stored at ``lead + h*row_stride + j``.

    ``out`` comes from np.empty: every element is written exactly once (the borders with zeros),
    which is cheaper than np.zeros followed by the copy."""
    n_, c_, h_, w_ = x.shape
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        dst = out[n, c]
        dst[:lead] = 0.0
        for h in range(h_):
            row = lead + h * row_stride
            dst[row:row + w_] = x[n, c, h]
            dst[row + w_:row + row_stride] = 0.0  # this row's right border + next row's left border
        dst[lead + h_ * row_stride:] = 0.0


@njit(cache=True)
def _round_up(m):
    return (m + _ROUND - 1) // _ROUND * _ROUND


@njit(cache=True, parallel=True, fastmath=_FMA)
def flat_correlate(inp, wt, offs, bias, start, row_stride, out):
    """out[n, o, i, j] = bias[o] + sum_{ci, t} wt[o, ci, t] * inp[n, ci, start + i*row_stride + j + offs[t]]

    inp (N, Ci, L) flat zero-padded planes; wt (Co, Ci, T) contiguous; offs (T,) int64 >= 0;
    out (N, Co, Ho, Wo). Every index read, plus SLACK, must be < L (the caller sizes ``inp``).

    Parallel over (image, triple of output channels): each task owns its output planes (no
    races). The flat range is cut into tiles of whole rows (~_TILE elements) accumulated in
    thread-local buffers that stay in L1. Register blocking: one pass of the inner loop
    handles 3 taps for 3 output channels, so per 8-float vector it does 3 input loads, 3
    accumulator loads and 3 stores for 9 FMAs (9 weights + 3 inputs + 3 sums fit the 16 AVX2
    registers). One channel and one tap per pass would be 2 loads + 1 store per FMA, bound by
    the L1 ports instead of the FMA units. Measured on catnet's layers (1 thread): 1 channel x
    3 taps ~36 GFLOP/s, 2 x 3 ~56, 3 x 3 ~58, 1 channel x 9 taps ~40.
    """
    n_, ci_ = inp.shape[0], inp.shape[1]
    co_, t_ = wt.shape[0], wt.shape[2]
    ho, wo = out.shape[2], out.shape[3]
    rows_per_tile = max(1, _TILE // row_stride)
    acc_len = _round_up((rows_per_tile - 1) * row_stride + wo)
    groups = (co_ + 2) // 3
    for task in prange(n_ * groups):
        n = task // groups
        o0 = (task - n * groups) * 3
        # Co not a multiple of 3: the last task repeats channel Co-1 (computed twice, same values).
        o1 = min(o0 + 1, co_ - 1)
        o2 = min(o0 + 2, co_ - 1)
        # Three separate buffers, not one (3, acc_len) array: measured ~10 % faster (LLVM
        # cannot prove slices of one array disjoint and keeps more runtime alias checks).
        acc0 = np.empty(acc_len, inp.dtype)
        acc1 = np.empty(acc_len, inp.dtype)
        acc2 = np.empty(acc_len, inp.dtype)
        for i0 in range(0, ho, rows_per_tile):
            i1 = min(ho, i0 + rows_per_tile)
            p0 = start + i0 * row_stride
            m = _round_up((i1 - i0 - 1) * row_stride + wo)
            a0 = acc0[:m]
            a1 = acc1[:m]
            a2 = acc2[:m]
            a0[:] = bias[o0]
            a1[:] = bias[o1]
            a2[:] = bias[o2]
            for ci in range(ci_):
                src = inp[n, ci]
                u = wt[o0, ci]
                v = wt[o1, ci]
                z = wt[o2, ci]
                t = 0
                while t + 3 <= t_:
                    u0, u1, u2 = u[t], u[t + 1], u[t + 2]
                    v0, v1, v2 = v[t], v[t + 1], v[t + 2]
                    z0, z1, z2 = z[t], z[t + 1], z[t + 2]
                    x0 = src[p0 + offs[t]:]
                    x1 = src[p0 + offs[t + 1]:]
                    x2 = src[p0 + offs[t + 2]:]
                    for p in range(m):
                        q0, q1, q2 = x0[p], x1[p], x2[p]
                        a0[p] += u0 * q0 + u1 * q1 + u2 * q2
                        a1[p] += v0 * q0 + v1 * q1 + v2 * q2
                        a2[p] += z0 * q0 + z1 * q1 + z2 * q2
                    t += 3
                if t_ - t == 2:
                    u0, u1, v0, v1, z0, z1 = u[t], u[t + 1], v[t], v[t + 1], z[t], z[t + 1]
                    x0 = src[p0 + offs[t]:]
                    x1 = src[p0 + offs[t + 1]:]
                    for p in range(m):
                        q0, q1 = x0[p], x1[p]
                        a0[p] += u0 * q0 + u1 * q1
                        a1[p] += v0 * q0 + v1 * q1
                        a2[p] += z0 * q0 + z1 * q1
                elif t_ - t == 1:
                    u0, v0, z0 = u[t], v[t], z[t]
                    x0 = src[p0 + offs[t]:]
                    for p in range(m):
                        q0 = x0[p]
                        a0[p] += u0 * q0
                        a1[p] += v0 * q0
                        a2[p] += z0 * q0
            for i in range(i0, i1):
                lo = (i - i0) * row_stride
                out[n, o0, i, :] = a0[lo:lo + wo]
                out[n, o1, i, :] = a1[lo:lo + wo]
                out[n, o2, i, :] = a2[lo:lo + wo]


@njit(cache=True, parallel=True, fastmath=_FMA_REASSOC)
def flat_weight_grad(dyb, xp, offs, m, lead, zero, dw_out, db_out):
    """dw_out (K, C, T) float64 += sum_n sum_{q < m} dyb[n, k, lead + q] * xp[n, c, q + offs[t]];
    db_out (K,) float64 <- sum of dy. dyb (N, K, lead + Hp*Wp + SLACK) holds dy in flat (Ho, Wp)
    rows after ``lead`` zeros, with zeros in the wrap-around columns, so they contribute nothing;
    xp (N, C, Hp*Wp + SLACK) holds x's zero-padded planes; offs (T,) are the taps' flat offsets.

    Parallel over triples of k: each task owns dw_out[k0:k0+3] and db_out[k0:k0+3], so there
    is no race and no per-thread copy to reduce. One pass over a plane computes 3 taps x 3
    output channels = 9 dot products from 3 dy loads + 3 x loads per vector (2 x 3 measured
    ~15 % slower). Each dot product runs in SIMD lanes of the array dtype (``zero`` is a 0 of
    that dtype: a Python 0.0 would make the sums float64 and halve the SIMD width) over one
    plane; per-plane results are summed in float64 so the batch sum does not lose precision.
    """
    n_, k_ = dyb.shape[0], dyb.shape[1]
    c_, t_ = xp.shape[1], offs.shape[0]
    m = _round_up(m)  # the extra q hit zeros of dyb (both buffers carry SLACK zeros at the end)
    groups = (k_ + 2) // 3
    for task in prange(groups):
        k0 = task * 3
        # K not a multiple of 3: the last group repeats k_-1; repeated sums are not stored.
        k1 = min(k0 + 1, k_ - 1)
        k2 = min(k0 + 2, k_ - 1)
        db = np.zeros(3, np.float64)
        for n in range(n_):
            d0 = dyb[n, k0, lead:lead + m]
            d1 = dyb[n, k1, lead:lead + m]
            d2 = dyb[n, k2, lead:lead + m]
            s0 = zero
            s1 = zero
            s2 = zero
            for q in range(m):
                s0 += d0[q]
                s1 += d1[q]
                s2 += d2[q]
            db[0] += s0
            db[1] += s1
            db[2] += s2
            for c in range(c_):
                src = xp[n, c]
                for t in range(0, t_, 3):
                    # Past the last tap a group re-reads tap t_-1; those sums are not stored.
                    ta = min(t + 1, t_ - 1)
                    tb = min(t + 2, t_ - 1)
                    x0 = src[offs[t]:]
                    x1 = src[offs[ta]:]
                    x2 = src[offs[tb]:]
                    e0 = e1 = e2 = f0 = f1 = f2 = h0 = h1 = h2 = zero
                    for q in range(m):
                        g0, g1, g2 = d0[q], d1[q], d2[q]
                        y0, y1, y2 = x0[q], x1[q], x2[q]
                        e0 += g0 * y0
                        e1 += g0 * y1
                        e2 += g0 * y2
                        f0 += g1 * y0
                        f1 += g1 * y1
                        f2 += g1 * y2
                        h0 += g2 * y0
                        h1 += g2 * y1
                        h2 += g2 * y2
                    _store3(dw_out[k0, c], t, ta, tb, e0, e1, e2)
                    if k1 != k0:
                        _store3(dw_out[k1, c], t, ta, tb, f0, f1, f2)
                    if k2 != k1:
                        _store3(dw_out[k2, c], t, ta, tb, h0, h1, h2)
        db_out[k0] = db[0]
        db_out[k1] = db[1]
        db_out[k2] = db[2]


@njit(cache=True)
def _store3(row, t, ta, tb, s0, s1, s2):
    """row[t] += s0, and row[t+1] += s1 / row[t+2] += s2 unless those taps were clamped repeats."""
    row[t] += s0
    if ta != t:
        row[ta] += s1
    if tb != ta:
        row[tb] += s2


# ---------------------------------------------------------------- generic backward (any stride)
@njit(cache=True, parallel=True, fastmath=_FMA)
def conv_bwd_dx_generic(dy, w, sh, sw, ph, pw, dh, dw, dx):
    """dx (N,C,H,W), zero-initialised by the caller, += dy (N,K,Ho,Wo) * w (K,C,R,S) scattered
    through every tap (any stride, padding, dilation).

    Parallel over (image, input channel): a task owns dx[n, c] and reads all of dy[n]."""
    n_, c_, h_, w_ = dx.shape
    k_, _, r_, s_ = w.shape
    ho, wo = dy.shape[2], dy.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        for k in range(k_):
            for r in range(r_):
                for s in range(s_):
                    wv = w[k, c, r, s]
                    off = s * dw - pw
                    lo, hi = _valid_cols(off, sw, w_, wo)
                    for i in range(ho):
                        h = i * sh - ph + r * dh
                        if h < 0 or h >= h_:
                            continue
                        dyrow = dy[n, k, i, lo:hi]
                        dxrow = dx[n, c, h, lo * sw + off:]
                        for j in range(hi - lo):
                            dxrow[j * sw] += wv * dyrow[j]


@njit(cache=True, parallel=True, fastmath=_FMA_REASSOC)
def conv_bwd_dw_generic(dy, x, sh, sw, ph, pw, dh, dw, zero, dw_out, db_out):
    """dw_out (K,C,R,S) float64 and db_out (K,) float64 for any stride/dilation.

    Parallel over k: each task owns dw_out[k] (no race); per (n, c, r, s, row) dot products."""
    n_, c_, h_, w_ = x.shape
    k_, _, r_, s_ = dw_out.shape
    ho, wo = dy.shape[2], dy.shape[3]
    for k in prange(k_):
        dbk = 0.0
        for n in range(n_):
            for i in range(ho):
                for j in range(wo):
                    dbk += dy[n, k, i, j]
            for c in range(c_):
                for r in range(r_):
                    for s in range(s_):
                        off = s * dw - pw
                        lo, hi = _valid_cols(off, sw, w_, wo)
                        acc = 0.0
                        for i in range(ho):
                            h = i * sh - ph + r * dh
                            if h < 0 or h >= h_:
                                continue
                            dyrow = dy[n, k, i, lo:hi]
                            xrow = x[n, c, h, lo * sw + off:]
                            part = zero
                            for j in range(hi - lo):
                                part += dyrow[j] * xrow[j * sw]
                            acc += part
                        dw_out[k, c, r, s] += acc
        db_out[k] = dbk
