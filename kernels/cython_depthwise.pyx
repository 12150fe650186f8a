# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# boundscheck/wraparound/initializedcheck are off, and cdivision on, ONLY because every caller goes
# through fastconv.kernels dispatch (or the checked backend wrapper), which has already checked
# every shape, dtype and layout against a geometry whose windows lie inside the padded input.
# Every index below is then in range: a tap's row h and column j*sw + off are tested or clamped
# to [0, H) and [0, W) before they are read or written.
"""Cython depthwise convolution (groups = C): output channel k filters input channel k // M.

The twin of kernels/_numba_depthwise.py, read side by side with python_backend's
``depthwise_conv2d_forward``: the same sums, with

* one OpenMP task per plane (forward and dW: an output channel; dx: an input plane, which only
  its own M output channels touch), so threads never write the same element;
* taps outside the input skipped, the valid output columns of a tap computed once per row
  (``_cols``) instead of a padding test per element, so the innermost loop is a plain
  multiply-add along a row, contiguous when the stride is 1 (gcc vectorises it);
* the per-plane work in ``cdef ... noexcept nogil`` functions, whose locals are private to the
  thread that runs them.

Skipping a padding tap is exact unless the weight (forward) or dy (dW) is inf or NaN, where the
zero padding would contribute 0 * inf = NaN; cython_backend routes those calls elsewhere.
"""

from cython cimport floating
from cython.parallel cimport prange


cdef struct DGeo:
    Py_ssize_t n, c, h, w, k, r, s, sh, sw, ph, pw, dh, dw, ho, wo, m


cdef DGeo _dgeo(object g):
    cdef DGeo out
    out.n, out.c, out.h, out.w, out.k = g.n, g.c, g.h, g.w, g.k
    out.r, out.s, out.sh, out.sw, out.ph, out.pw, out.dh, out.dw = g.r, g.s, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    out.ho, out.wo = g.ho, g.wo
    out.m = g.k // g.c
    return out


cdef inline void _cols(Py_ssize_t off, Py_ssize_t sw, Py_ssize_t w, Py_ssize_t wo,
                       Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    # output columns j in [lo, hi) whose tap column j*sw + off lies in [0, w)
    lo[0] = 0 if off >= 0 else (-off + sw - 1) // sw
    hi[0] = (w - 1 - off) // sw + 1 if w - 1 - off >= 0 else 0
    if hi[0] > wo:
        hi[0] = wo
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef void _fwd_plane(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] wt, floating bias,
                     floating[:, :, :, ::1] y, const DGeo* g, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    # Tap by tap over the whole plane: a tap's valid columns [lo, hi) are the same for every row,
    # so they are computed once per tap, not once per row (two integer divisions, which cost more
    # than the row's 16-32 multiply-adds).
    cdef Py_ssize_t c = k // g.m, i, j, r, s, h, off, lo, hi
    cdef floating wv
    cdef floating* row
    cdef const floating* src
    for i in range(g.ho):
        row = &y[n, k, i, 0]
        for j in range(g.wo):
            row[j] = bias
    for r in range(g.r):
        for s in range(g.s):
            off = s * g.dw - g.pw
            _cols(off, g.sw, g.w, g.wo, &lo, &hi)
            wv = wt[k, 0, r, s]
            for i in range(g.ho):
                h = i * g.sh - g.ph + r * g.dh
                if h < 0 or h >= g.h:
                    continue
                row = &y[n, k, i, 0]
                src = &x[n, c, h, 0]
                if g.sw == 1:  # contiguous: a loop gcc vectorises (a runtime stride stays scalar)
                    for j in range(lo, hi):
                        row[j] += wv * src[j + off]
                else:
                    for j in range(lo, hi):
                        row[j] += wv * src[j * g.sw + off]


def depthwise_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] wt,
                      const floating[::1] b, floating[:, :, :, ::1] y, object geometry, int num_threads):
    """y (N,K,Ho,Wo) = b[k] + the taps of w[k, 0] over x[n, k // M] (padding taps skipped)."""
    cdef DGeo g = _dgeo(geometry)
    cdef Py_ssize_t t, n, k
    for t in prange(g.n * g.k, nogil=True, schedule="static", num_threads=num_threads):
        n = t // g.k
        k = t - n * g.k
        _fwd_plane(x, wt, b[k], y, &g, n, k)


cdef void _dx_plane(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] wt,
                    floating[:, :, :, ::1] dx, const DGeo* g, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t q, k, i, j, r, s, h, off, lo, hi
    cdef floating wv
    cdef floating* dst
    cdef const floating* grad
    for h in range(g.h):
        for j in range(g.w):
            dx[n, c, h, j] = 0
    for q in range(g.m):
        k = c * g.m + q
        for r in range(g.r):
            for s in range(g.s):
                off = s * g.dw - g.pw
                _cols(off, g.sw, g.w, g.wo, &lo, &hi)
                wv = wt[k, 0, r, s]
                for i in range(g.ho):
                    h = i * g.sh - g.ph + r * g.dh
                    if h < 0 or h >= g.h:
                        continue
                    grad = &dy[n, k, i, 0]
                    dst = &dx[n, c, h, 0]
                    if g.sw == 1:
                        for j in range(lo, hi):
                            dst[j + off] += wv * grad[j]
                    else:
                        for j in range(lo, hi):
                            dst[j * g.sw + off] += wv * grad[j]


def depthwise_backward_dx(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] wt,
                          floating[:, :, :, ::1] dx, object geometry, int num_threads):
    """dx (N,C,H,W): each tap sends dy * w back to the input element it read."""
    cdef DGeo g = _dgeo(geometry)
    cdef Py_ssize_t t, n, c
    for t in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads):
        n = t // g.c
        c = t - n * g.c
        _dx_plane(dy, wt, dx, &g, n, c)


cdef void _dw_channel(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                      double[:, :, :, ::1] dwt, double[::1] db, double* lanes, const DGeo* g,
                      Py_ssize_t k) noexcept nogil:
    # A sum of N*Ho*Wo products with one running total waits ~4 cycles per addition (each add
    # needs the previous one). One float64 partial sum per output column (``lanes``, this
    # channel's own row of scratch) makes the inner loop independent across columns, so gcc
    # vectorises it without reordering any sum; the lanes are added up once per tap.
    cdef Py_ssize_t c = k // g.m, n, i, j, r, s, h, off, lo, hi
    cdef double acc
    cdef const floating* grad
    cdef const floating* src
    for j in range(g.wo):
        lanes[j] = 0
    for n in range(g.n):
        for i in range(g.ho):
            grad = &dy[n, k, i, 0]
            for j in range(g.wo):
                lanes[j] += grad[j]
    acc = 0
    for j in range(g.wo):
        acc += lanes[j]
    db[k] = acc
    for r in range(g.r):
        for s in range(g.s):
            off = s * g.dw - g.pw
            _cols(off, g.sw, g.w, g.wo, &lo, &hi)
            for j in range(g.wo):
                lanes[j] = 0
            for n in range(g.n):
                for i in range(g.ho):
                    h = i * g.sh - g.ph + r * g.dh
                    if h < 0 or h >= g.h:
                        continue
                    grad = &dy[n, k, i, 0]
                    src = &x[n, c, h, 0]
                    if g.sw == 1:
                        for j in range(lo, hi):
                            lanes[j] += <double>grad[j] * src[j + off]
                    else:
                        for j in range(lo, hi):
                            lanes[j] += <double>grad[j] * src[j * g.sw + off]
            acc = 0
            for j in range(g.wo):
                acc += lanes[j]
            dwt[k, 0, r, s] = acc


def depthwise_backward_w(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                         double[:, :, :, ::1] dwt, double[::1] db, double[:, ::1] lanes, object geometry,
                         int num_threads):
    """dwt (K,1,R,S), db (K,), float64 sums: one task per output channel; lanes (K, Wo) float64
    scratch (its row k belongs to channel k's task)."""
    cdef DGeo g = _dgeo(geometry)
    cdef Py_ssize_t k
    if lanes.shape[0] != g.k or lanes.shape[1] != g.wo:
        raise ValueError(f"lanes: expected shape ({g.k}, {g.wo}), got ({lanes.shape[0]}, {lanes.shape[1]})")
    for k in prange(g.k, nogil=True, schedule="static", num_threads=num_threads):
        _dw_channel(dy, x, dwt, db, &lanes[k, 0], &g, k)
