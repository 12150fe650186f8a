# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# boundscheck/wraparound/initializedcheck are off, and cdivision on, ONLY because every caller goes
# through fastconv.kernels dispatch, which has already checked every shape, dtype and layout,
# range-checked argmax against H*W (kernels/_validate.as_argmax), and guaranteed that every
# pooling window holds at least one real input element (padding <= kernel // 2). Called directly
# with inconsistent arguments these functions would read out of bounds.
"""Cython pooling kernels: memory-bound loops, one OpenMP task per (n, c) plane.

These ops do ~1 flop per byte, so speed means touching each byte once: no padded copy, no
window view materialised, no float64 temporaries (the numpy backend does all three). What
makes them leave the interpreter (``cython -a`` shows the inner loops white):

* typed, C-contiguous memoryviews (``floating[:, :, :, ::1]``) become raw pointers to a plane;
* all indices are ``Py_ssize_t``; the window is clamped to the input once per output, so the
  inner loops have no padding tests;
* ``noexcept nogil`` bodies inside ``prange``: planes are independent, so threads never write
  the same element (backward scatters stay inside their own plane: race-free by construction).
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset


cdef struct PGeo:
    Py_ssize_t n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo


cdef PGeo _pgeo(object g):
    cdef PGeo out
    out.n, out.c, out.h, out.w = g.n, g.c, g.h, g.w
    out.kh, out.kw, out.sh, out.sw, out.ph, out.pw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw
    out.ho, out.wo = g.ho, g.wo
    return out


# Below this many input elements a parallel region costs more than it saves.
cdef enum:
    PARALLEL_MIN = 32768


cdef inline bint _wins(floating v, floating best) noexcept nogil:
    # Strictly greater keeps the FIRST maximum on ties; a NaN beats any number but not an
    # earlier NaN, so the first NaN wins. (No -ffast-math: gcc keeps these NaN semantics.)
    return v > best or (v != v and best == best)


cdef void _max_plane(const floating* xp, floating* yp, int64_t* ap, const PGeo* g) noexcept nogil:
    cdef Py_ssize_t i, j, r, s, h0, w0, rlo, rhi, slo, shi, idx, best_idx
    cdef floating v, best
    if g.kh == 2 and g.kw == 2 and g.sh == 2 and g.sw == 2 and g.ph == 0 and g.pw == 0:
        # catnet's pool: fixed 4-element window, no clamping, unrolled in row-major order
        for i in range(g.ho):
            for j in range(g.wo):
                idx = 2 * i * g.w + 2 * j
                best = xp[idx]
                best_idx = idx
                if _wins(xp[idx + 1], best):
                    best = xp[idx + 1]
                    best_idx = idx + 1
                if _wins(xp[idx + g.w], best):
                    best = xp[idx + g.w]
                    best_idx = idx + g.w
                if _wins(xp[idx + g.w + 1], best):
                    best = xp[idx + g.w + 1]
                    best_idx = idx + g.w + 1
                yp[i * g.wo + j] = best
                ap[i * g.wo + j] = best_idx
        return
    for i in range(g.ho):
        h0 = i * g.sh - g.ph
        rlo = max(0, -h0)
        rhi = min(g.kh, g.h - h0)
        for j in range(g.wo):
            w0 = j * g.sw - g.pw
            slo = max(0, -w0)
            shi = min(g.kw, g.w - w0)
            # padding <= kernel // 2 guarantees rlo < rhi and slo < shi: a real element exists
            best_idx = (h0 + rlo) * g.w + w0 + slo
            best = xp[best_idx]
            for r in range(rlo, rhi):
                for s in range(slo, shi):
                    idx = (h0 + r) * g.w + w0 + s
                    v = xp[idx]
                    if _wins(v, best):
                        best = v
                        best_idx = idx
            yp[i * g.wo + j] = best
            ap[i * g.wo + j] = best_idx


def max_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                       int64_t[:, :, :, ::1] argmax, object geometry, int num_threads):
    """y, argmax (N,C,Ho,Wo) from x (N,C,H,W); argmax = flat h*W + w of the window's winner."""
    cdef PGeo g = _pgeo(geometry)
    cdef Py_ssize_t pl, hw = g.h * g.w, howo = g.ho * g.wo
    for pl in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=g.n * g.c * hw >= PARALLEL_MIN):
        _max_plane(&x[0, 0, 0, 0] + pl * hw, &y[0, 0, 0, 0] + pl * howo,
                   &argmax[0, 0, 0, 0] + pl * howo, &g)


def max_pool2d_backward(const floating[:, :, :, ::1] dy, const int64_t[:, :, :, ::1] argmax,
                        floating[:, :, :, ::1] dx, object geometry, int num_threads):
    """dx (N,C,H,W) = scatter-add of dy (N,C,Ho,Wo) to argmax (flat indices within each plane)."""
    cdef PGeo g = _pgeo(geometry)
    cdef Py_ssize_t pl, o, hw = g.h * g.w, howo = g.ho * g.wo
    cdef floating* dxp
    cdef const floating* dyp
    cdef const int64_t* ap
    for pl in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=g.n * g.c * hw >= PARALLEL_MIN):
        dxp = &dx[0, 0, 0, 0] + pl * hw
        dyp = &dy[0, 0, 0, 0] + pl * howo
        ap = &argmax[0, 0, 0, 0] + pl * howo
        # zeroing here (not np.zeros) makes the owning thread first-touch its plane
        memset(dxp, 0, hw * sizeof(floating))
        for o in range(howo):
            dxp[ap[o]] += dyp[o]


def avg_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                       object geometry, int num_threads):
    """y (N,C,Ho,Wo) = window sums / (kh*kw), accumulated in double; padding adds zeros."""
    cdef PGeo g = _pgeo(geometry)
    cdef Py_ssize_t pl, i, j, r, s, h0, w0, rlo, rhi, slo, shi, hw = g.h * g.w, howo = g.ho * g.wo
    cdef double acc, divisor = <double>(g.kh * g.kw)
    cdef const floating* xp
    cdef floating* yp
    for pl in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=g.n * g.c * hw >= PARALLEL_MIN):
        xp = &x[0, 0, 0, 0] + pl * hw
        yp = &y[0, 0, 0, 0] + pl * howo
        for i in range(g.ho):
            h0 = i * g.sh - g.ph
            rlo = max(0, -h0)
            rhi = min(g.kh, g.h - h0)
            for j in range(g.wo):
                w0 = j * g.sw - g.pw
                slo = max(0, -w0)
                shi = min(g.kw, g.w - w0)
                acc = 0
                for r in range(rlo, rhi):
                    for s in range(slo, shi):
                        acc = acc + xp[(h0 + r) * g.w + w0 + s]
                yp[i * g.wo + j] = <floating>(acc / divisor)


def avg_pool2d_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                        object geometry, int num_threads):
    """dx (N,C,H,W): each dy element adds dy / (kh*kw) to every real input of its window."""
    cdef PGeo g = _pgeo(geometry)
    cdef Py_ssize_t pl, i, j, r, s, h0, w0, rlo, rhi, slo, shi, hw = g.h * g.w, howo = g.ho * g.wo
    cdef double divisor = <double>(g.kh * g.kw)
    cdef floating share
    cdef const floating* dyp
    cdef floating* dxp
    for pl in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=g.n * g.c * hw >= PARALLEL_MIN):
        dyp = &dy[0, 0, 0, 0] + pl * howo
        dxp = &dx[0, 0, 0, 0] + pl * hw
        memset(dxp, 0, hw * sizeof(floating))
        for i in range(g.ho):
            h0 = i * g.sh - g.ph
            rlo = max(0, -h0)
            rhi = min(g.kh, g.h - h0)
            for j in range(g.wo):
                w0 = j * g.sw - g.pw
                slo = max(0, -w0)
                shi = min(g.kw, g.w - w0)
                share = <floating>(dyp[i * g.wo + j] / divisor)
                for r in range(rlo, rhi):
                    for s in range(slo, shi):
                        dxp[(h0 + r) * g.w + w0 + s] += share
