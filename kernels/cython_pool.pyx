# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# boundscheck/wraparound/initializedcheck are off, and cdivision on, ONLY because every caller goes
# through fastconv.kernels dispatch, which has already checked every shape, dtype and layout,
# range-checked argmax against H*W (kernels/_validate.as_argmax), and guaranteed that every
# pooling window holds at least one real input element (padding <= kernel // 2). Called directly
# with inconsistent arguments these functions would read out of bounds.
"""Cython pooling kernels: memory-bound loops, one OpenMP task per (n, c) plane.

These ops do ~1 flop per byte, so speed means touching each byte once: no padded copy, no
materialised window array, no index arrays (the numpy backend's whole-array steps each make
another pass over memory). What
makes them leave the interpreter (``cython -a`` shows the inner loops white):

* typed, C-contiguous memoryviews (``floating[:, :, :, ::1]``) become raw pointers to a plane;
* all indices are ``Py_ssize_t``; the window is clamped to the input once per output, so the
  inner loops have no padding tests;
* ``noexcept nogil`` bodies inside ``prange``: planes are independent, so threads never write
  the same element (backward scatters stay inside their own plane: race-free by construction).
  The work on a plane is a ``cdef`` function whose locals are thread-private by construction:
  inside a ``prange`` body Cython privatises only variables *assigned* there, not ones written
  through a pointer (``_clamp(..., &lo, &hi)``), which shared them between threads.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memset


cdef struct PGeo:
    Py_ssize_t n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo


cdef PGeo _pgeo(object g):
    cdef PGeo out
    out.n, out.c, out.h, out.w = g.n, g.c, g.h, g.w
    out.kh, out.kw, out.sh, out.sw, out.ph, out.pw = g.kh, g.kw, g.sh, g.sw, g.ph, g.pw
    out.ho, out.wo = g.ho, g.wo
    return out


# The caller (cython_backend) passes num_threads = 1 for calls too small to be worth a second
# thread (_threads.MEMORY_BOUND_PARALLEL_MIN); then no OpenMP team is started.


cdef inline bint _is_2x2(const PGeo* g) noexcept nogil:
    # catnet's (and most CNNs') pooling: 2x2 windows, stride 2, no padding. The C twin of
    # Pool2dGeometry.is_2x2_stride2 (kernels/_geometry.py), needed here without the GIL.
    return g.kh == 2 and g.kw == 2 and g.sh == 2 and g.sw == 2 and g.ph == 0 and g.pw == 0


cdef inline void _clamp(Py_ssize_t start, Py_ssize_t k, Py_ssize_t size, Py_ssize_t* lo,
                        Py_ssize_t* hi) noexcept nogil:
    # taps [lo, hi) of a window starting at `start` (may be negative: padding) that lie in
    # [0, size); clamping once per window keeps the padding tests out of the inner loops
    lo[0] = max(0, -start)
    hi[0] = min(k, size - start)


cdef inline bint _wins(floating v, floating best) noexcept nogil:
    # Strictly greater keeps the FIRST maximum on ties; a NaN beats any number but not an
    # earlier NaN, so the first NaN wins. (No -ffast-math: gcc keeps these NaN semantics.)
    # Bitwise & and | instead of `and`/`or`: no short-circuit branch, so gcc can vectorise
    # the select in _step.
    return (v > best) | ((v != v) & (best == best))


cdef inline void _update(const floating* xp, Py_ssize_t idx, floating* best, Py_ssize_t* best_idx) noexcept nogil:
    cdef floating v = xp[idx]
    if _wins(v, best[0]):
        best[0] = v
        best_idx[0] = idx


cdef inline void _step(const floating* cand, floating* best, int32_t* code, int32_t tap,
                       Py_ssize_t n) noexcept nogil:
    # One tap of the window for n outputs at once, over contiguous arrays and with no branch in
    # the body: gcc -O3 vectorises it (a compare + and/andnot select on 4 floats per SSE2
    # instruction, 8 in the AVX2 build). Chaining three taps in one loop defeats gcc's
    # if-conversion, hence one loop per tap.
    cdef Py_ssize_t j
    cdef floating v, m
    cdef bint take
    for j in range(n):
        v = cand[j]
        m = best[j]
        take = _wins(v, m)
        best[j] = v if take else m
        code[j] = tap if take else code[j]


cdef enum:
    # outputs per block of the 2x2 max kernel: its scratch arrays (~11 KiB) stay in L1
    BLOCK = 256


cdef void _max_plane_2x2(const floating* xp, floating* yp, int64_t* ap, const PGeo* g) noexcept nogil:
    """One plane of a 2x2, stride-2, unpadded max pool.

    A scalar loop with `if v > best` per tap runs at ~10 ns per window on random data (branch
    mispredictions). Instead: de-interleave the windows' 4 taps into contiguous scratch arrays,
    then let _step select branch-free, tap by tap in row-major order (which keeps the tie and
    NaN rules), recording which tap won as a code 0..3 = (dr, ds) -> flat index.

    The plane's outputs are taken BLOCK at a time in flat order q = i*Wo + j, across row
    boundaries: catnet's later pools have rows of 16 and 8 outputs, and blocks of one row each
    left every pass over the scratch arrays a loop too short to vectorise well. Measured (AVX2
    build, one thread): one row per block 0.77 / 0.50 / 0.37 ms on (32,C,64/32/16) with C =
    16/32/64, across rows 0.70 / 0.35 / 0.27 ms.
    """
    cdef floating best[BLOCK]
    cdef floating b[BLOCK]
    cdef floating c[BLOCK]
    cdef floating d[BLOCK]
    cdef int32_t code[BLOCK]
    cdef int64_t at[BLOCK]           # flat input index of each window's top-left tap
    cdef Py_ssize_t m = g.ho * g.wo, q0 = 0, q, t, k, n, i, j, seg
    cdef const floating* r0
    cdef const floating* r1
    while q0 < m:
        n = min(<Py_ssize_t>BLOCK, m - q0)
        # gather, one row segment at a time (the inner loop has no row test)
        t = 0
        q = q0
        while t < n:
            i = q // g.wo
            j = q - i * g.wo
            seg = min(g.wo - j, n - t)
            r0 = xp + 2 * i * g.w
            r1 = r0 + g.w
            for k in range(seg):
                best[t + k] = r0[2 * (j + k)]
                b[t + k] = r0[2 * (j + k) + 1]
                c[t + k] = r1[2 * (j + k)]
                d[t + k] = r1[2 * (j + k) + 1]
                at[t + k] = 2 * i * g.w + 2 * (j + k)
            t += seg
            q += seg
        for t in range(n):
            code[t] = 0
        _step(b, best, code, 1, n)
        _step(c, best, code, 2, n)
        _step(d, best, code, 3, n)
        for t in range(n):
            yp[q0 + t] = best[t]
            ap[q0 + t] = at[t] + (code[t] >> 1) * g.w + (code[t] & 1)
        q0 += n


cdef void _max_plane(const floating* xp, floating* yp, int64_t* ap, const PGeo* g) noexcept nogil:
    cdef Py_ssize_t i, j, r, s, h0, w0, rlo, rhi, slo, shi, idx, best_idx
    cdef floating best
    if _is_2x2(g):
        _max_plane_2x2(xp, yp, ap, g)
        return
    for i in range(g.ho):
        h0 = i * g.sh - g.ph
        _clamp(h0, g.kh, g.h, &rlo, &rhi)
        for j in range(g.wo):
            w0 = j * g.sw - g.pw
            _clamp(w0, g.kw, g.w, &slo, &shi)
            # padding <= kernel // 2 guarantees rlo < rhi and slo < shi: a real element exists
            best_idx = (h0 + rlo) * g.w + w0 + slo
            best = xp[best_idx]
            for r in range(rlo, rhi):
                for s in range(slo, shi):
                    idx = (h0 + r) * g.w + w0 + s
                    _update(xp, idx, &best, &best_idx)
            yp[i * g.wo + j] = best
            ap[i * g.wo + j] = best_idx


def max_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                       int64_t[:, :, :, ::1] argmax, object geometry, int num_threads):
    """y, argmax (N,C,Ho,Wo) from x (N,C,H,W); argmax = flat h*W + w of the window's winner."""
    cdef PGeo g = _pgeo(geometry)
    cdef Py_ssize_t pl, hw = g.h * g.w, howo = g.ho * g.wo
    for pl in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
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
                     use_threads_if=num_threads > 1):
        dxp = &dx[0, 0, 0, 0] + pl * hw
        dyp = &dy[0, 0, 0, 0] + pl * howo
        ap = &argmax[0, 0, 0, 0] + pl * howo
        # zeroing here (not np.zeros) makes the owning thread first-touch its plane
        memset(dxp, 0, hw * sizeof(floating))
        for o in range(howo):
            dxp[ap[o]] += dyp[o]


cdef void _avg_plane_2x2(const floating* xp, floating* yp, const PGeo* g) noexcept nogil:
    """One plane of a 2x2, stride-2, unpadded average pool.

    The generic loop below clamps every window and runs two inner loops of 2 iterations each
    (~9 ns per output on catnet's first pool); here the window is four fixed loads. Summed in
    double in the generic loop's order (starting from 0, row by row), so the result is the
    same to the bit."""
    cdef Py_ssize_t i, j
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* yrow
    for i in range(g.ho):
        r0 = xp + 2 * i * g.w
        r1 = r0 + g.w
        yrow = yp + i * g.wo
        for j in range(g.wo):
            yrow[j] = <floating>(((((<double>0 + r0[2 * j]) + r0[2 * j + 1]) + r1[2 * j]) + r1[2 * j + 1]) / 4.0)


cdef void _avg_plane_2x2_backward(const floating* dyp, floating* dxp, const PGeo* g) noexcept nogil:
    """dx of one plane of a 2x2, stride-2, unpadded average pool: the windows do not overlap,
    so every input gets exactly one share, written (not added) without zeroing the plane
    first; the last row / column of an odd-sized plane is in no window and gets 0."""
    cdef Py_ssize_t i, j
    cdef floating share
    cdef floating* r0
    cdef floating* r1
    for i in range(g.ho):
        r0 = dxp + 2 * i * g.w
        r1 = r0 + g.w
        for j in range(g.wo):
            share = <floating>(dyp[i * g.wo + j] / 4.0)
            r0[2 * j] = share
            r0[2 * j + 1] = share
            r1[2 * j] = share
            r1[2 * j + 1] = share
        for j in range(2 * g.wo, g.w):
            r0[j] = 0
            r1[j] = 0
    if 2 * g.ho < g.h:  # odd height: the last row
        memset(dxp + 2 * g.ho * g.w, 0, (g.h - 2 * g.ho) * g.w * sizeof(floating))


cdef void _avg_plane(const floating* xp, floating* yp, const PGeo* g) noexcept nogil:
    """One plane of any average pool: window sums in double over the real inputs / (kh*kw)."""
    # A function per plane, not loops written inside the prange: its locals are private to
    # each thread by construction. (In a prange body Cython makes a variable thread-private
    # only when it is assigned there; rlo/rhi/slo/shi are written through pointers by _clamp,
    # so inline they were shared between threads - a race that read past planes.)
    cdef Py_ssize_t i, j, r, s, h0, w0, rlo, rhi, slo, shi
    cdef double acc, divisor = <double>(g.kh * g.kw)
    for i in range(g.ho):
        h0 = i * g.sh - g.ph
        _clamp(h0, g.kh, g.h, &rlo, &rhi)
        for j in range(g.wo):
            w0 = j * g.sw - g.pw
            _clamp(w0, g.kw, g.w, &slo, &shi)
            acc = 0
            for r in range(rlo, rhi):
                for s in range(slo, shi):
                    acc = acc + xp[(h0 + r) * g.w + w0 + s]
            yp[i * g.wo + j] = <floating>(acc / divisor)


cdef void _avg_plane_backward(const floating* dyp, floating* dxp, const PGeo* g) noexcept nogil:
    """dx of one plane of any average pool: each dy element adds dy / (kh*kw) to its window."""
    cdef Py_ssize_t i, j, r, s, h0, w0, rlo, rhi, slo, shi
    cdef double divisor = <double>(g.kh * g.kw)
    cdef floating share
    memset(dxp, 0, g.h * g.w * sizeof(floating))
    for i in range(g.ho):
        h0 = i * g.sh - g.ph
        _clamp(h0, g.kh, g.h, &rlo, &rhi)
        for j in range(g.wo):
            w0 = j * g.sw - g.pw
            _clamp(w0, g.kw, g.w, &slo, &shi)
            share = <floating>(dyp[i * g.wo + j] / divisor)
            for r in range(rlo, rhi):
                for s in range(slo, shi):
                    dxp[(h0 + r) * g.w + w0 + s] += share


def avg_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                       object geometry, int num_threads):
    """y (N,C,Ho,Wo) = window sums / (kh*kw), accumulated in double; padding adds zeros."""
    cdef PGeo g = _pgeo(geometry)
    cdef Py_ssize_t pl, hw = g.h * g.w, howo = g.ho * g.wo
    cdef bint fast = _is_2x2(&g)
    for pl in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
        if fast:
            _avg_plane_2x2(&x[0, 0, 0, 0] + pl * hw, &y[0, 0, 0, 0] + pl * howo, &g)
        else:
            _avg_plane(&x[0, 0, 0, 0] + pl * hw, &y[0, 0, 0, 0] + pl * howo, &g)


def avg_pool2d_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                        object geometry, int num_threads):
    """dx (N,C,H,W): each dy element adds dy / (kh*kw) to every real input of its window."""
    cdef PGeo g = _pgeo(geometry)
    cdef Py_ssize_t pl, hw = g.h * g.w, howo = g.ho * g.wo
    cdef bint fast = _is_2x2(&g)
    for pl in prange(g.n * g.c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
        if fast:
            _avg_plane_2x2_backward(&dy[0, 0, 0, 0] + pl * howo, &dx[0, 0, 0, 0] + pl * hw, &g)
        else:
            _avg_plane_backward(&dy[0, 0, 0, 0] + pl * howo, &dx[0, 0, 0, 0] + pl * hw, &g)
