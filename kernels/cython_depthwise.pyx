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
* at stride 1, flat padded planes (below): one loop over a whole plane per tap;
* otherwise rows: taps outside the input skipped, the valid output columns of a tap computed
  once per tap (``_cols``) instead of a padding test per element, so the innermost loop is a
  plain multiply-add along a row;
* the per-plane work in ``cdef ... noexcept nogil`` functions, whose locals are private to the
  thread that runs them.

Skipping a padding tap (the row kernels) is exact unless the weight (forward) or dy (dW) is inf
or NaN, where the zero padding would contribute 0 * inf = NaN: cython_backend then sets those
outputs to NaN afterwards (``_padding_hits``).

Shapes and dtypes: x (N, C, H, W), w (K, 1, R, S) with K = C*M, b (K,), y and dy (N, K, Ho, Wo),
all float32 or all float64 (``floating``); dW and db are accumulated and returned in float64.
"""

from cython cimport floating
from cython.parallel cimport prange, threadid


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
    """y (N,K,Ho,Wo) = b[k] + the taps of w[k, 0] (w: (K,1,R,S)) over x[n, k // M] (x: (N,C,H,W);
    padding taps skipped), all of one float dtype."""
    cdef DGeo g = _dgeo(geometry)
    if num_threads < 1:  # 0 would mean "all" to OpenMP, more threads than scratch rows
        raise ValueError(f"num_threads: expected a positive int, got {num_threads}")
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
    """dx (N,C,H,W) from dy (N,K,Ho,Wo) and w (K,1,R,S), one float dtype: each tap sends dy * w
    back to the input element it read."""
    cdef DGeo g = _dgeo(geometry)
    if num_threads < 1:  # 0 would mean "all" to OpenMP, more threads than scratch rows
        raise ValueError(f"num_threads: expected a positive int, got {num_threads}")
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
    if num_threads < 1:  # 0 would mean "all" to OpenMP, more threads than scratch rows
        raise ValueError(f"num_threads: expected a positive int, got {num_threads}")
    cdef Py_ssize_t k
    if lanes.shape[0] != g.k or lanes.shape[1] != g.wo:
        raise ValueError(f"lanes: expected shape ({g.k}, {g.wo}), got ({lanes.shape[0]}, {lanes.shape[1]})")
    for k in prange(g.k, nogil=True, schedule="static", num_threads=num_threads):
        _dw_channel(dy, x, dwt, db, &lanes[k, 0], &g, k)


# ------------------------------------------------------------ stride 1: flat padded planes
# Rows of 8-32 outputs make short vector loops whose set-up costs more than their arithmetic.
# With stride 1 a whole plane can be one loop per tap: copy the input plane into a zero-padded
# buffer with rows Wp = W + 2*pw wide, compute the output in rows of the same width ("wide":
# Ho rows of Wp, the last Wp - Wo of each row garbage), and tap (r, s) becomes the constant
# offset r*dh*Wp + s*dw: wide[q] += w[r, s] * xpad[q + offset] for every q at once. The same
# layout as the numba backend's rung 5 (docs/ladder.md), per plane. Each thread works in its own
# row of the scratch arrays (threadid()). Padding is real zeros here, so 0 * inf = NaN comes out
# as the contract says; the garbage columns are never copied out. Used by cython_backend only for
# stride 1 and when the scratch is small (DEPTHWISE_FLAT_MAX_BYTES there). The sizes are
# _geometry.flat_plane_sizes', recomputed here from the geometry so that the scratch arrays the
# caller passes can be checked against them before any index is used.

cdef void _pad_plane(const floating* src, floating* dst, const DGeo* g, Py_ssize_t wp,
                     Py_ssize_t length) noexcept nogil:
    # dst[0:length] = zeros with src's H x W plane at row ph, column pw of rows wp wide
    cdef Py_ssize_t i, h, j, base
    for i in range(length):
        dst[i] = 0
    for h in range(g.h):
        base = (h + g.ph) * wp + g.pw
        for j in range(g.w):
            dst[base + j] = src[h * g.w + j]


cdef void _copy_interior(const floating* src, floating* dst, const DGeo* g, Py_ssize_t wp) noexcept nogil:
    # src's H x W plane into dst at row ph, column pw of rows wp wide; the border is left as is
    cdef Py_ssize_t h, j, base
    for h in range(g.h):
        base = (h + g.ph) * wp + g.pw
        for j in range(g.w):
            dst[base + j] = src[h * g.w + j]


cdef inline void _axpy(floating* dst, const floating* src, floating a, Py_ssize_t length) noexcept nogil:
    # dst[q] += a * src[q]; a separate function so that gcc sees two distinct pointers and one
    # contiguous loop
    cdef Py_ssize_t q
    for q in range(length):
        dst[q] += a * src[q]


# A dot product or sum with one running total waits for each addition before the next (~4
# cycles each). Sixteen partial sums (acc[l] takes the terms q = l mod 16, in order) are sixteen
# independent chains that gcc keeps in two or four vector registers, without reordering any
# sum: the same bits with or without AVX2. Each call adds its sixteen partials to sixteen
# float64 running sums (``out16``, independent too, so that is vector work as well); they are
# added up once, at the very end. A single total per call would put a 16-add chain in every call
# and cost more than the products themselves on an 8x8 plane.

cdef inline void _dot16_add(double* out16, const floating* a, const floating* b, Py_ssize_t length) noexcept nogil:
    # out16[l] += sum over q = l (mod 16) of a[q] * b[q]
    cdef floating acc[16]
    cdef Py_ssize_t q, l, blocks = length - length % 16
    for l in range(16):
        acc[l] = 0
    for q in range(0, blocks, 16):
        for l in range(16):
            acc[l] += a[q + l] * b[q + l]
    for q in range(blocks, length):
        acc[q - blocks] += a[q] * b[q]
    for l in range(16):
        out16[l] += acc[l]


cdef inline void _sum16_add(double* out16, const floating* a, Py_ssize_t length) noexcept nogil:
    # out16[l] += sum over q = l (mod 16) of a[q]
    cdef floating acc[16]
    cdef Py_ssize_t q, l, blocks = length - length % 16
    for l in range(16):
        acc[l] = 0
    for q in range(0, blocks, 16):
        for l in range(16):
            acc[l] += a[q + l]
    for q in range(blocks, length):
        acc[q - blocks] += a[q]
    for l in range(16):
        out16[l] += acc[l]


cdef inline double _total16(const double* sums16) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t l
    for l in range(16):
        total += sums16[l]
    return total


cdef int _flat_sizes(const DGeo* g, int num_threads, str name, Py_ssize_t* wp, Py_ssize_t* plane,
                     Py_ssize_t* q_n) except -1:
    # What every flat kernel checks first, and the layout's sizes (see above): rows wp wide, the
    # padded plane (+ (S-1)*dw so that the last tap's reads stay inside), Ho wide output rows.
    if num_threads < 1:  # 0 would mean "all" to OpenMP, more threads than scratch rows
        raise ValueError(f"num_threads: expected a positive int, got {num_threads}")
    if g.sh != 1 or g.sw != 1:
        raise ValueError(f"{name}: stride 1 only")
    wp[0] = g.w + 2 * g.pw
    plane[0] = (g.h + 2 * g.ph) * wp[0] + (g.s - 1) * g.dw
    q_n[0] = g.ho * wp[0]
    return 0


def depthwise_forward_flat(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] wt,
                           const floating[::1] b, floating[:, :, :, ::1] y, floating[:, ::1] xpad,
                           floating[:, ::1] wide, object geometry, int num_threads):
    """y (N,K,Ho,Wo), stride 1; xpad (threads, Hp*Wp + (S-1)*dw) and wide (threads, Ho*Wp):
    scratch, one row per thread (shapes checked here)."""
    cdef DGeo g = _dgeo(geometry)
    cdef Py_ssize_t wp, plane, q_n
    cdef Py_ssize_t t, n, k, c, tid, r, s, q, i, j, off
    cdef floating wv
    cdef floating* out
    cdef const floating* src
    _flat_sizes(&g, num_threads, "depthwise_forward_flat", &wp, &plane, &q_n)
    if xpad.shape[0] < num_threads or xpad.shape[1] != plane or wide.shape[0] < num_threads \
            or wide.shape[1] != q_n:
        raise ValueError("depthwise_forward_flat: scratch arrays of the wrong shape")
    for t in prange(g.n * g.k, nogil=True, schedule="static", num_threads=num_threads):
        tid = threadid()
        n = t // g.k
        k = t - n * g.k
        c = k // g.m
        # the plane of x[n, c] is padded again for each of its M output channels: M is 1 in
        # MobileNet-style layers, and a task that owns its input copy needs no synchronisation
        _pad_plane(&x[n, c, 0, 0], &xpad[tid, 0], &g, wp, plane)
        out = &wide[tid, 0]
        for q in range(q_n):
            out[q] = b[k]
        for r in range(g.r):
            for s in range(g.s):
                wv = wt[k, 0, r, s]
                src = &xpad[tid, r * g.dh * wp + s * g.dw]
                for q in range(q_n):
                    out[q] += wv * src[q]
        for i in range(g.ho):
            for j in range(g.wo):
                y[n, k, i, j] = out[i * wp + j]


def depthwise_backward_dx_flat(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] wt,
                               floating[:, :, :, ::1] dx, floating[:, ::1] dxpad, floating[:, ::1] dywide,
                               object geometry, int num_threads):
    """dx (N,C,H,W), stride 1, every weight finite (a garbage column's 0 times an inf weight
    would land on a real input position); dxpad (threads, Hp*Wp + (S-1)*dw), dywide (threads,
    Ho*Wp): scratch. The adjoint of the flat forward: dxpad[q + offset] += w * dywide[q], with
    dy laid out in rows Wp wide and zeros in the garbage columns."""
    cdef DGeo g = _dgeo(geometry)
    cdef Py_ssize_t wp, plane, q_n
    cdef Py_ssize_t t, n, c, k, m_, tid, r, s, q, i, j, h
    cdef floating wv
    cdef floating* acc
    cdef floating* gw
    _flat_sizes(&g, num_threads, "depthwise_backward_dx_flat", &wp, &plane, &q_n)
    if dxpad.shape[0] < num_threads or dxpad.shape[1] != plane or dywide.shape[0] < num_threads \
            or dywide.shape[1] != q_n:
        raise ValueError("depthwise_backward_dx_flat: scratch arrays of the wrong shape")
    for t in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads):
        tid = threadid()
        n = t // g.c
        c = t - n * g.c
        acc = &dxpad[tid, 0]
        gw = &dywide[tid, 0]
        for q in range(plane):
            acc[q] = 0
        for m_ in range(g.m):
            k = c * g.m + m_
            for i in range(g.ho):
                for j in range(g.wo):
                    gw[i * wp + j] = dy[n, k, i, j]
                for j in range(g.wo, wp):
                    gw[i * wp + j] = 0
            for r in range(g.r):
                for s in range(g.s):
                    wv = wt[k, 0, r, s]
                    _axpy(acc + r * g.dh * wp + s * g.dw, gw, wv, q_n)
        for h in range(g.h):
            for j in range(g.w):
                dx[n, c, h, j] = acc[(h + g.ph) * wp + g.pw + j]


def depthwise_backward_w_flat(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                              double[:, :, :, ::1] dwt, double[::1] db, floating[:, ::1] xpad,
                              floating[:, ::1] dywide, double[:, ::1] sums, object geometry, int num_threads):
    """dwt (K,1,R,S), db (K,), float64, stride 1; scratch per thread: xpad (Hp*Wp + (S-1)*dw),
    dywide (Ho*Wp), sums ((R*S + 1)*16 float64: sixteen running sums per tap and for db). An
    inf/NaN in x meets a garbage column's zero dy here (0 * inf = NaN where the reference has
    none): the caller checks dW afterwards.

    Per image, tap (r, s)'s share of dW is one dot product of the wide dy plane with the padded
    x plane shifted by the tap's offset: both planes stay in L1 and each product is summed as
    soon as it is made (nothing is written back per position)."""
    cdef DGeo g = _dgeo(geometry)
    cdef Py_ssize_t wp, plane, q_n
    cdef Py_ssize_t taps = g.r * g.s
    cdef Py_ssize_t k, c, n, tid, r, s, q, i, j
    cdef double* acc
    cdef floating* gw
    _flat_sizes(&g, num_threads, "depthwise_backward_w_flat", &wp, &plane, &q_n)
    if xpad.shape[0] < num_threads or xpad.shape[1] != plane or dywide.shape[0] < num_threads \
            or dywide.shape[1] != q_n or sums.shape[0] < num_threads or sums.shape[1] != (taps + 1) * 16:
        raise ValueError("depthwise_backward_w_flat: scratch arrays of the wrong shape")
    for k in prange(g.k, nogil=True, schedule="static", num_threads=num_threads):
        tid = threadid()
        c = k // g.m
        gw = &dywide[tid, 0]
        acc = &sums[tid, 0]  # tap t's sixteen sums at acc + 16*t, db's after the last tap
        for q in range((taps + 1) * 16):
            acc[q] = 0
        # zeros once per channel: every image rewrites only the interior of xpad and the first Wo
        # columns of each dy row, so the padding and the garbage columns stay zero
        for q in range(plane):
            xpad[tid, q] = 0
        for q in range(q_n):
            gw[q] = 0
        for n in range(g.n):
            _copy_interior(&x[n, c, 0, 0], &xpad[tid, 0], &g, wp)
            for i in range(g.ho):
                for j in range(g.wo):
                    gw[i * wp + j] = dy[n, k, i, j]
            _sum16_add(acc + taps * 16, gw, q_n)  # the garbage columns' zeros add nothing
            for r in range(g.r):
                for s in range(g.s):
                    _dot16_add(acc + (r * g.s + s) * 16, gw, &xpad[tid, r * g.dh * wp + s * g.dw], q_n)
        db[k] = _total16(acc + taps * 16)
        for r in range(g.r):
            for s in range(g.s):
                dwt[k, 0, r, s] = _total16(acc + (r * g.s + s) * 16)
