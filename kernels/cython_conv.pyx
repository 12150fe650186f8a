# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# boundscheck/wraparound/initializedcheck are off, and cdivision on, ONLY because every caller goes
# through fastconv.kernels dispatch, which has already checked every shape, dtype and layout
# (kernels/_validate.py, kernels/_geometry.py), and cython_backend.py passes a geometry whose
# products fit in 64-bit signed arithmetic. Calling these functions directly with inconsistent
# shapes would read out of bounds: they are private (leading underscore in the backend module).
"""Cython conv2d kernels: per-tile im2col into a thread-local buffer + BLAS GEMM, in prange.

How this leaves the Python interpreter (check with ``cython -a``, see docs/cython.md):

* arguments are **typed memoryviews** (``const floating[:, :, :, ::1]``): the ``::1`` says
  C-contiguous, so an element access compiles to one pointer offset, no Python call;
* ``floating`` is a **fused type**: Cython emits a float32 and a float64 copy of every function,
  and the ``if floating is float`` branches are resolved at compile time (sgemm vs dgemm);
* every loop index is a C ``Py_ssize_t`` (64-bit: no int overflow on large sizes);
* the kernels are ``noexcept nogil``: no Python object is touched, so the GIL is released and
  OpenMP threads (``prange``) run them truly in parallel;
* the GEMM is SciPy's ``cython_blas`` (OpenBLAS, AVX2/FMA kernels chosen at run time). Our own
  loops are compiled with plain ``-O3`` (SSE2 only, for portable wheels), so the flop-heavy part
  goes to BLAS and our code only moves data.

Why this design (measured, see benchmarks/cython_bench.py): the numpy backend builds the *whole*
column matrix (R*S times the size of x, 75 MB for catnet's 16->16 layer) and pays for its
memory traffic. Here each task im2cols one tile of ~P output pixels of one image into a buffer
of ~256 KB that stays in L2, multiplies it straight away, and moves on; two OpenMP threads each
run single-threaded GEMMs on independent tiles, so there is no fork/join per GEMM either.

BLAS is Fortran (column-major). A row-major (M, N) matrix is a column-major (N, M) one, so the
row-major product C = A @ B is computed as the column-major product C^T = B^T @ A^T, i.e. by
passing the operands in swapped order with no transposition of memory.
"""

from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

import scipy.linalg.cython_blas

# SciPy's BLAS, fetched at import from the capsules scipy.linalg.cython_blas exports for
# cimport. This is what `from scipy.linalg.cython_blas cimport sgemm` does under the hood, but
# done at run time it needs no SciPy at *build* time (pip's isolated build env has none).
ctypedef void (*sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*) noexcept nogil
ctypedef void (*dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                         double*, double*, int*) noexcept nogil


cdef void* _blas_function(str name) except NULL:
    capsule = scipy.linalg.cython_blas.__pyx_capi__[name]
    return PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


cdef sgemm_t sgemm = <sgemm_t>_blas_function("sgemm")
cdef dgemm_t dgemm = <dgemm_t>_blas_function("dgemm")


cdef struct Geo:
    Py_ssize_t n, c, h, w, k, r, s, sh, sw, ph, pw, dh, dw, ho, wo


cdef inline Py_ssize_t _floordiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # b > 0. With cdivision, `/` truncates toward zero like C; round down for negative a.
    cdef Py_ssize_t q = a // b
    if a % b != 0 and a < 0:
        q -= 1
    return q


cdef inline void _gemm(char ta, char tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                       floating beta, floating* c, Py_ssize_t ldc) noexcept nogil:
    """Column-major C (m x n) = op(A) @ op(B) + beta*C. Sizes were checked to fit in a C int."""
    cdef int im = <int>m, in_ = <int>n, ik = <int>k
    cdef int ilda = <int>lda, ildb = <int>ldb, ildc = <int>ldc
    cdef floating one = 1
    if floating is float:
        sgemm(&ta, &tb, &im, &in_, &ik, &one, <float*>a, &ilda, <float*>b, &ildb, &beta, c, &ildc)
    else:
        dgemm(&ta, &tb, &im, &in_, &ik, &one, <double*>a, &ilda, <double*>b, &ildb, &beta, c, &ildc)


cdef inline void _col_range(const Geo* g, Py_ssize_t s, Py_ssize_t* jlo, Py_ssize_t* jhi) noexcept nogil:
    """Output columns j whose input column j*sw - pw + s*dw lies inside [0, W): [jlo, jhi)."""
    cdef Py_ssize_t off = s * g.dw - g.pw
    jlo[0] = min(g.wo, max(0, -_floordiv(off, g.sw)))  # ceil(-off / sw)
    jhi[0] = max(jlo[0], min(g.wo, _floordiv(g.w - 1 - off, g.sw) + 1))


cdef void _im2col_tile(const floating* xn, floating* col, Py_ssize_t p0, Py_ssize_t p1,
                       const Geo* g) noexcept nogil:
    """col (C*R*S, p1-p0) row-major: col[(c,r,s), p-p0] = x[c, h(i,r), w(j,s)] or 0 in the padding,
    for the output pixels p = i*Wo + j in [p0, p1) of one image xn (C, H, W)."""
    cdef Py_ssize_t P = p1 - p0
    cdef Py_ssize_t i0 = p0 // g.wo, i1 = (p1 - 1) // g.wo
    cdef Py_ssize_t c, r, s, i, j, h, ja, jb, a, b, jlo, jhi, off
    cdef floating* row
    cdef floating* dst
    cdef const floating* src
    for c in range(g.c):
        for r in range(g.r):
            for s in range(g.s):
                row = col + ((c * g.r + r) * g.s + s) * P
                _col_range(g, s, &jlo, &jhi)
                off = s * g.dw - g.pw
                for i in range(i0, i1 + 1):
                    # this tile's part of output row i: columns [ja, jb), stored at dst[ja:jb]
                    ja = max(0, p0 - i * g.wo)
                    jb = min(g.wo, p1 - i * g.wo)
                    dst = row + (i * g.wo - p0)
                    h = i * g.sh - g.ph + r * g.dh
                    if h < 0 or h >= g.h:
                        for j in range(ja, jb):
                            dst[j] = 0
                        continue
                    src = xn + (c * g.h + h) * g.w
                    a = min(max(ja, jlo), jb)
                    b = max(min(jb, jhi), a)
                    for j in range(ja, a):
                        dst[j] = 0
                    if g.sw == 1:
                        # contiguous copy: gcc turns this into memmove / vector loads
                        for j in range(a, b):
                            dst[j] = src[j + off]
                    else:
                        for j in range(a, b):
                            dst[j] = src[j * g.sw + off]
                    for j in range(b, jb):
                        dst[j] = 0


cdef void _col2im_tile(const floating* col, floating* dxn, Py_ssize_t p0, Py_ssize_t p1,
                       const Geo* g) noexcept nogil:
    """Adjoint of _im2col_tile: dx[c, h(i,r), w(j,s)] += col[(c,r,s), p-p0] (padding dropped)."""
    cdef Py_ssize_t P = p1 - p0
    cdef Py_ssize_t i0 = p0 // g.wo, i1 = (p1 - 1) // g.wo
    cdef Py_ssize_t c, r, s, i, j, h, ja, jb, a, b, jlo, jhi, off
    cdef const floating* row
    cdef const floating* src
    cdef floating* dst
    for c in range(g.c):
        for r in range(g.r):
            for s in range(g.s):
                row = col + ((c * g.r + r) * g.s + s) * P
                _col_range(g, s, &jlo, &jhi)
                off = s * g.dw - g.pw
                for i in range(i0, i1 + 1):
                    h = i * g.sh - g.ph + r * g.dh
                    if h < 0 or h >= g.h:
                        continue
                    ja = max(0, p0 - i * g.wo)
                    jb = min(g.wo, p1 - i * g.wo)
                    a = max(ja, jlo)
                    b = min(jb, jhi)
                    src = row + (i * g.wo - p0)
                    dst = dxn + (c * g.h + h) * g.w
                    if g.sw == 1:
                        for j in range(a, b):
                            dst[j + off] += src[j]
                    else:
                        for j in range(a, b):
                            dst[j * g.sw + off] += src[j]


cdef inline const floating* _columns(const floating* xn, floating* buf, Py_ssize_t p0,
                                     Py_ssize_t p1, bint pointwise, const Geo* g,
                                     Py_ssize_t* ld) noexcept nogil:
    """The column matrix (C*R*S, p1-p0) of output pixels [p0, p1) of image xn, row stride *ld:
    x itself for a pointwise conv, else im2col'ed into buf."""
    if pointwise:
        ld[0] = g.ho * g.wo
        return xn + p0
    _im2col_tile(xn, buf, p0, p1, g)
    ld[0] = p1 - p0
    return buf


cdef inline bint _is_pointwise(const Geo* g) noexcept nogil:
    # a 1x1 kernel with stride 1 and no padding: the column matrix IS x[n] viewed as (C, H*W).
    # Test the output size too, not just the stride: cython_backend resets the stride to 1
    # when there is a single output along an axis (found by tests/test_cython_safety.py).
    return (g.r == 1 and g.s == 1 and g.sh == 1 and g.sw == 1 and g.ph == 0 and g.pw == 0
            and g.ho == g.h and g.wo == g.w)


cdef Geo _geo(object g):
    cdef Geo out
    out.n, out.c, out.h, out.w = g.n, g.c, g.h, g.w
    out.k, out.r, out.s = g.k, g.r, g.s
    out.sh, out.sw, out.ph, out.pw, out.dh, out.dw = g.sh, g.sw, g.ph, g.pw, g.dh, g.dw
    out.ho, out.wo = g.ho, g.wo
    return out


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                   const floating[::1] b, floating[:, :, :, ::1] y, floating[:, ::1] buf,
                   floating[:, ::1] obuf, object geometry, Py_ssize_t tile, bint has_bias,
                   int num_threads):
    """y (N,K,Ho,Wo) = conv(x (N,C,H,W), w (K,C,R,S)) + b (K,) when has_bias.

    buf (num_threads, C*R*S*tile) is the per-thread im2col scratch, obuf (num_threads, tile*K)
    the per-thread GEMM output; tile = output pixels per task.
    """
    cdef Geo g = _geo(geometry)
    cdef Py_ssize_t howo = g.ho * g.wo, crs = g.c * g.r * g.s
    cdef Py_ssize_t ntiles = (howo + tile - 1) // tile
    cdef Py_ssize_t t, n, p0, p1, k, p, tid
    cdef bint pointwise = _is_pointwise(&g)
    cdef const floating* a
    cdef const floating* ob
    cdef floating* yk
    cdef floating bk
    cdef Py_ssize_t lda
    # One task = one tile of output pixels of one image; tasks write disjoint parts of y.
    for t in prange(g.n * ntiles, nogil=True, schedule="static", num_threads=num_threads):
        tid = threadid()
        n = t // ntiles
        p0 = (t % ntiles) * tile
        p1 = min(howo, p0 + tile)
        a = _columns(&x[n, 0, 0, 0], &buf[tid, 0], p0, p1, pointwise, &g, &lda)
        # out (P, K) = col^T (P, CRS) @ W^T (CRS, K), i.e. column-major out^T (K x P) = W @ col.
        # Computing y's tile (K, P) directly (m = P, n = K) is the same product, but SciPy's
        # OpenBLAS runs it ~2x slower when the small dimension K is `n` rather than `m`
        # (measured); transposing the small tile afterwards is cheaper than that.
        _gemm(c"T", c"T", g.k, p1 - p0, crs, &w[0, 0, 0, 0], crs, a, lda, 0, &obuf[tid, 0], g.k)
        ob = &obuf[tid, 0]
        for k in range(g.k):
            yk = &y[n, k, 0, 0] + p0
            bk = b[k] if has_bias else 0
            for p in range(p1 - p0):
                yk[p] = ob[p * g.k + k] + bk


def conv2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                    floating[:, ::1] dw_part, double[:, ::1] db_part, floating[:, ::1] buf,
                    floating[:, ::1] dbuf, object geometry, Py_ssize_t tile, bint need_dx,
                    int num_threads):
    """Accumulate dW^T into dw_part[thread] ((C*R*S, K) row-major each, zeroed by the caller), db into
    db_part[thread] (K each), and, when need_dx, write dx (N,C,H,W) completely.

    Race freedom: the loop runs over images; an image's dx is written only by the thread that
    owns the image, and dW/db contributions go to that thread's own partial buffer (the caller
    sums the partials). schedule="static" fixes which images each thread sums, so the result
    is bitwise reproducible for a given thread count.
    """
    cdef Geo g = _geo(geometry)
    cdef Py_ssize_t howo = g.ho * g.wo, crs = g.c * g.r * g.s
    cdef Py_ssize_t n, p0, p1, k, p, tid
    cdef bint pointwise = _is_pointwise(&g)
    cdef const floating* a
    cdef const floating* dyk
    cdef Py_ssize_t lda
    cdef double acc
    for n in prange(g.n, nogil=True, schedule="static", num_threads=num_threads):
        tid = threadid()
        if need_dx and not pointwise:
            memset(&dx[n, 0, 0, 0], 0, g.c * g.h * g.w * sizeof(floating))
        p0 = 0
        while p0 < howo:
            p1 = min(howo, p0 + tile)
            a = _columns(&x[n, 0, 0, 0], &buf[tid, 0], p0, p1, pointwise, &g, &lda)
            # dW^T (CRS, K) += col (CRS, P) @ dy[n][:, p0:p1]^T (P, K), i.e. column-major
            # (K x CRS) = dy_tile @ col^T. Transposed dW partials (the caller transposes their
            # sum once) because SciPy's OpenBLAS is ~2x faster with the small K as `m` (measured).
            _gemm(c"T", c"N", g.k, crs, p1 - p0, &dy[n, 0, 0, 0] + p0, howo, a, lda,
                  1, &dw_part[tid, 0], g.k)
            for k in range(g.k):
                dyk = &dy[n, k, 0, 0]
                acc = 0
                for p in range(p0, p1):
                    acc = acc + dyk[p]
                db_part[tid, k] += acc
            if need_dx:
                # dcol (CRS, P) = W^T (CRS, K) @ dy[n][:, p0:p1] (K, P), then scatter it back
                if pointwise:
                    _gemm(c"N", c"T", p1 - p0, crs, g.k, &dy[n, 0, 0, 0] + p0, howo,
                          &w[0, 0, 0, 0], crs, 0, &dx[n, 0, 0, 0] + p0, howo)
                else:
                    _gemm(c"N", c"T", p1 - p0, crs, g.k, &dy[n, 0, 0, 0] + p0, howo,
                          &w[0, 0, 0, 0], crs, 0, &dbuf[tid, 0], p1 - p0)
                    _col2im_tile(&dbuf[tid, 0], &dx[n, 0, 0, 0], p0, p1, &g)
            p0 = p1
