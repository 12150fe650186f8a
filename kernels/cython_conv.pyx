# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# boundscheck/wraparound/initializedcheck are off, and cdivision on, ONLY because every caller goes
# through fastconv.kernels dispatch, which has already checked every shape, dtype and layout
# (kernels/_validate.py, kernels/_geometry.py), and cython_backend.py passes a geometry whose
# products fit in 64-bit signed arithmetic. Calling these functions directly with inconsistent
# shapes would read out of bounds: they are private (leading underscore in the backend module).
"""Cython conv2d kernels, two ways, side by side (cython_backend._use_direct picks one per call):

* **im2col + GEMM** (any stride/padding/dilation): per-tile im2col into a thread-local buffer
  and a SciPy BLAS GEMM on it, tiles in prange. The flops go to OpenBLAS.
* **direct** (stride 1, the "direct path" section below): zero-padded planes and a
  register-blocked loop nest written here, that gcc vectorises itself. Faster where the GEMM
  is skinny (catnet's 3->16 layer: a 27-deep reduction) and needs no im2col copy at all.

How this leaves the Python interpreter (check with ``cython -a``, see docs/cython.md):

* arguments are **typed memoryviews** (``const floating[:, :, :, ::1]``): the ``::1`` says
  C-contiguous, so an element access compiles to one pointer offset, no Python call;
* ``floating`` is a **fused type**: Cython emits a float32 and a float64 copy of every function,
  and the ``if floating is float`` branches are resolved at compile time (sgemm vs dgemm);
* every loop index is a C ``Py_ssize_t`` (64-bit: no int overflow on large sizes);
* the kernels are ``noexcept nogil``: no Python object is touched, so the GIL is released and
  OpenMP threads (``prange``) run them truly in parallel;
* the GEMM is SciPy's ``cython_blas`` (OpenBLAS, AVX2/FMA kernels chosen at run time). Our own
  loops are compiled with plain ``-O3`` for baseline x86-64 (SSE2, portable wheels) and a second
  time as ``cython_conv_avx2`` with ``-mavx2 -mfma`` (setup.py; loaded only on CPUs that have it).

Why the im2col path is tiled (measured, see benchmarks/cython_bench.py): the numpy backend
builds the *whole* column matrix (R*S times the size of x, 75 MB for catnet's 16->16 layer) and
pays for its memory traffic. Here each task im2cols one tile of ~P output pixels of one image
into a buffer of ~256 KB that stays in L2, multiplies it straight away, and moves on; two OpenMP
threads each run single-threaded GEMMs on independent tiles, so there is no fork/join per GEMM
either.

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
                                     Py_ssize_t p1, bint pointwise, const Geo* g) noexcept nogil:
    """The column matrix (C*R*S, p1-p0) of output pixels [p0, p1) of image xn, row stride
    _columns_ld(...): x itself for a pointwise conv, else im2col'ed into buf."""
    if pointwise:
        return xn + p0
    _im2col_tile(xn, buf, p0, p1, g)
    return buf


cdef inline Py_ssize_t _columns_ld(Py_ssize_t p0, Py_ssize_t p1, bint pointwise, const Geo* g) noexcept nogil:
    # Returned, not written through a pointer: inside a prange body Cython makes a variable
    # thread-private only when it is assigned there (the row stride differs for an image's
    # last, shorter tile, so a shared one was a race between threads).
    return g.ho * g.wo if pointwise else p1 - p0


cdef inline bint _is_pointwise(const Geo* g) noexcept nogil:
    # a 1x1 kernel with stride 1 and no padding: the column matrix IS x[n] viewed as (C, H*W).
    # Test the output size too, not just the stride: cython_backend resets the stride to 1
    # when there is a single output along an axis (found by tests/test_cython_safety.py).
    return (g.r == 1 and g.s == 1 and g.sh == 1 and g.sw == 1 and g.ph == 0 and g.pw == 0
            and g.ho == g.h and g.wo == g.w)


# ---------------------------------------------------------------- direct path (stride 1)
#
# For catnet's first layer the GEMM above is a poor fit: the reduction is only C*R*S = 27 deep
# and K = 16 wide, so OpenBLAS spends its time packing panels, and im2col writes 9 values per
# input value. The direct path instead computes the convolution in registers:
#
# * each image is copied once into zero-padded planes of width Wp (a per-thread buffer that stays
#   in L2), so tap (r, s) of output pixel (i, j) is plane[(i + r*dh)*Wp + j + s*dw]: for a run of
#   V consecutive outputs of one row, every tap is one *contiguous* load of V values at a constant
#   offset, with no padding tests in the loop;
# * the accumulators are a small fixed-size local array, acc[KO][V]: KO output channels times V
#   output pixels (2 SIMD registers wide). All loop bounds inside are compile-time constants, so
#   gcc vectorises the innermost loop (V pixels = 2 registers), unrolls the KO loop and keeps acc
#   in 2*KO SIMD registers for the whole C*R*S reduction: per tap it does 2 loads of x and KO
#   weight broadcasts for 2*KO multiply-adds, and acc is written to y once at the end. (A loop of
#   `y[p] += w * x[p]` instead loads and stores y per multiply-add.) One catch, measured: gcc's
#   -O3 first *completely unrolls* such small constant loops (pass "cunrolli"), turning acc into
#   scalar variables (64 of them when KO was 4) that the vectoriser never puts back into
#   registers: 19 ms instead of 2.4 ms for catnet's first layer. setup.py therefore compiles this file with
#   -fdisable-tree-cunrolli (when the compiler knows it); the loops are still unrolled, later,
#   after vectorisation. Check with `objdump -d`: the tap loop is 2 vmovups, 6 vbroadcastss and
#   12 vfmadd231ps on ymm registers, plus the load of the tap's offset.
# * nothing here is a reduction across SIMD lanes (each lane is its own output pixel), so gcc
#   vectorises it with plain -O3, without -ffast-math: results keep IEEE semantics (NaN/inf
#   propagate); only the summation order differs from the reference, like any BLAS.
#
# The weight gradient is a reduction (dW[k,c,r,s] = sum over pixels of dy * x): it keeps
# L = one register of independent partial sums per (channel, tap) in acc[KB][SB][L], which is
# again lane-parallel and needs no reassociation; the registers go to memory once per group of
# images and the L lanes are added up once per call (by the caller).
#
# SIMD width is fixed per build: this file is compiled twice (setup.py), once for baseline
# x86-64 (SSE2, 16-byte registers) and once, as cython_conv_avx2, with -mavx2 -mfma (32-byte
# registers, fused multiply-add); cython_backend imports the AVX2 build only when the CPU has it.

cdef extern from *:
    """
    #if defined(__AVX2__) && defined(__FMA__)
    #define FC_SIMD "avx2+fma"
    #define FC_VEC_BYTES 32
    #else
    #define FC_SIMD "sse2"
    #define FC_VEC_BYTES 16
    #endif
    /* 1 when this CPU (and OS) can run AVX2 + FMA code. libgcc's __builtin_cpu_supports reads
       CPUID and checks that the OS saves the YMM registers (XGETBV). */
    static int fc_cpu_has_avx2_fma(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    """
    enum: FC_VEC_BYTES
    const char* FC_SIMD
    int fc_cpu_has_avx2_fma() noexcept nogil

# KO output channels share each loaded input vector in the forward (and dx) kernel: 2*KO = 12
# accumulator registers + 2 loaded inputs + 1 broadcast weight fill 15 of the 16 SIMD registers
# (KO = 4 left 6 idle and did 8 multiply-adds per 2 loads instead of 12; KO = 6 measured 10%
# faster on catnet's conv4 and the same elsewhere, with bit-identical results: each output's sum
# runs in the same order). The dW kernel blocks KB output channels x SB taps = 12 accumulators
# too, but loads KB + SB vectors per step, so KB = 6 there would spill.
# MAXL = most lanes of any build (8 float32 in a 32-byte register), sizes the local arrays.
cdef enum:
    KO = 6
    KB = 4
    SB = 3
    MAXL = 8


def simd() -> str:
    """The SIMD instruction set this build of the kernels was compiled for: 'sse2' or 'avx2+fma'."""
    return FC_SIMD.decode()


def cpu_has_avx2_fma() -> bool:
    """True when this CPU can run the AVX2 + FMA build (cython_conv_avx2)."""
    return fc_cpu_has_avx2_fma() != 0


cdef void _pad_planes(const floating* src, Py_ssize_t nplanes, Py_ssize_t h, Py_ssize_t w,
                      floating* dst, Py_ssize_t plane, Py_ssize_t hp, Py_ssize_t wp,
                      Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """dst (nplanes, plane): plane q holds src[q] (h, w) at rows top.., columns left.. of an
    (hp, wp) grid of zeros, then zeros up to `plane` (>= hp*wp). top/left may be negative (the
    source is then cropped). Every element of dst is written once (no separate zero pass)."""
    cdef Py_ssize_t q, a, b, srow, blo, bhi
    cdef const floating* s
    cdef floating* d
    blo = min(wp, max(0, left))           # destination columns [blo, bhi) come from src
    bhi = max(blo, min(wp, left + w))
    for q in range(nplanes):
        d = dst + q * plane
        for a in range(hp):
            srow = a - top
            if srow < 0 or srow >= h:
                for b in range(wp):
                    d[b] = 0
            else:
                s = src + (q * h + srow) * w - left
                for b in range(blo):
                    d[b] = 0
                for b in range(blo, bhi):
                    d[b] = s[b]
                for b in range(bhi, wp):
                    d[b] = 0
            d += wp
        for b in range(hp * wp, plane):
            dst[q * plane + b] = 0


cdef void _correlate_image(const floating* inp, Py_ssize_t ci, Py_ssize_t plane, Py_ssize_t wp,
                           const floating* wpk, const Py_ssize_t* offs, Py_ssize_t ntaps,
                           const floating* bias, floating* out, Py_ssize_t co, Py_ssize_t ho,
                           Py_ssize_t wo) noexcept nogil:
    """out (co, ho, wo) = bias[o] + sum_{c < ci, t < ntaps} w[o, c, t] * inp[c*plane + i*wp + j + offs[t]].

    inp: ci zero-padded planes (see _pad_planes) with row stride wp; every index read is below
    ci*plane (the caller sizes plane = hp*wp + one block of V). wpk: weights packed as
    (ceil(co/KO), ci, ntaps, KO), zero past channel co, so the KO weights of one tap are adjacent.
    """
    cdef Py_ssize_t V = 2 * (FC_VEC_BYTES // sizeof(floating))   # output pixels per block
    cdef floating acc[KO * 2 * MAXL]
    cdef Py_ssize_t ob, i, jb, j0, c, t, kk, p, o, nout
    cdef const floating* src
    cdef const floating* xv
    cdef const floating* wv
    cdef floating* dst
    for ob in range((co + KO - 1) // KO):
        for i in range(ho):
            for jb in range((wo + V - 1) // V):
                j0 = jb * V
                for kk in range(KO):
                    o = min(ob * KO + kk, co - 1)
                    for p in range(V):
                        acc[kk * V + p] = bias[o]
                for c in range(ci):
                    src = inp + c * plane + i * wp + j0
                    wv = wpk + (ob * ci + c) * ntaps * KO
                    for t in range(ntaps):
                        xv = src + offs[t]
                        # KO*V multiply-adds on V loaded inputs and KO weights; constant bounds.
                        for kk in range(KO):
                            for p in range(V):
                                acc[kk * V + p] += wv[kk] * xv[p]
                        wv += KO
                # past wo, the block computed wrap-around garbage (next row's pixels): dropped
                nout = min(V, wo - j0)
                for kk in range(KO):
                    o = ob * KO + kk
                    if o < co:
                        dst = out + (o * ho + i) * wo + j0
                        for p in range(nout):
                            dst[p] = acc[kk * V + p]


cdef void _weight_grad_flat(const floating* dyp, Py_ssize_t k_, Py_ssize_t dplane, Py_ssize_t m,
                            const floating* xp, Py_ssize_t c_, Py_ssize_t plane,
                            const Py_ssize_t* offs, Py_ssize_t ntaps, floating* lanes,
                            Py_ssize_t nimg, Py_ssize_t dimg, Py_ssize_t ximg) noexcept nogil:
    """lanes (K, C, ntaps, MAXL) += the L-lane partial sums of sum_{g < nimg, q < m}
    dyp[g*dimg + k*dplane + q] * xp[g*ximg + c*plane + q + offs[t]] for nimg images whose
    padded planes lie dimg / ximg elements apart (lanes L.. stay 0; the caller adds them up).

    The lanes are added to memory, not summed across: a pass over catnet's 16x16 planes is
    only ~36 vector steps, and summing 12 registers lane by lane after each pass cost about
    as much again (measured). Summing the lanes once per call, after all images, is free.
    Several images per call keep the KB*SB sums in registers across all of them: one flush to
    memory per block and group instead of per block and image (on 16x16 planes the flushes
    and the zeroing were as many memory operations as a third of the loads of a pass).

    dyp holds dy (K, Ho, Wo) in rows of the padded input's width Wp with zeros in the Wp - Wo
    wrap-around columns, so flat position q = i*Wp + j pairs dy[k, i, j] with the input pixel of
    tap t of output (i, j), and m = (Ho-1)*Wp + Wo. The flat loop has no per-row overhead (catnet's
    16x16 layer has rows of just 2 AVX registers). dyp is zero from m to m rounded up to L lanes,
    and xp has slack past that, so every loaded vector is whole (no scalar remainder loop).
    The wrap-around zeros are multiplied by real x values: the caller redoes dW when an inf
    there makes a NaN (0 * inf) that the reference would not have."""
    cdef Py_ssize_t L = FC_VEC_BYTES // sizeof(floating)   # lanes of independent partial sums
    cdef Py_ssize_t nvec = (m + L - 1) // L
    cdef floating acc[KB * SB * MAXL]
    cdef floating* dst
    cdef const floating* d[KB]
    cdef const floating* xr[SB]
    cdef const floating* dg[KB]
    cdef const floating* xg[SB]
    cdef Py_ssize_t kb0, kb, c, tb, t0, q, kk, ss, p, gi
    for kb0 in range((k_ + KB - 1) // KB):
        kb = kb0 * KB
        # past the last channel / tap, a block re-reads the last one (those sums are not stored)
        for kk in range(KB):
            d[kk] = dyp + min(kb + kk, k_ - 1) * dplane
        for c in range(c_):
            for tb in range((ntaps + SB - 1) // SB):
                t0 = tb * SB
                for ss in range(SB):
                    xr[ss] = xp + c * plane + offs[min(t0 + ss, ntaps - 1)]
                for p in range(KB * SB * L):
                    acc[p] = 0
                for gi in range(nimg):
                    for kk in range(KB):
                        dg[kk] = d[kk] + gi * dimg
                    for ss in range(SB):
                        xg[ss] = xr[ss] + gi * ximg
                    # per L pixels: KB + SB loads, KB*SB multiply-adds into lane-wise partial sums
                    for q in range(nvec):
                        for kk in range(KB):
                            for ss in range(SB):
                                for p in range(L):
                                    acc[(kk * SB + ss) * L + p] += dg[kk][q * L + p] * xg[ss][q * L + p]
                for kk in range(KB):
                    for ss in range(SB):
                        if kb + kk < k_ and t0 + ss < ntaps:
                            dst = lanes + (((kb + kk) * c_ + c) * ntaps + t0 + ss) * MAXL
                            for p in range(L):
                                dst[p] += acc[(kk * SB + ss) * L + p]


cdef void _plane_sums(const floating* a, Py_ssize_t nplanes, Py_ssize_t m, double* out) noexcept nogil:
    """out[q] += sum of a[q*m : (q+1)*m], in 4 registers of lanes of partial sums (a single
    running sum would be one long dependency chain of additions: no SIMD, one add per ~3
    cycles; one register of lanes still waits ~3 cycles per add: 4 keep the adder busy)."""
    cdef Py_ssize_t L4 = 4 * (FC_VEC_BYTES // sizeof(floating))
    cdef Py_ssize_t mfull = m - m % L4
    cdef floating lane[4 * MAXL]
    cdef floating tot
    cdef const floating* row
    cdef Py_ssize_t q, j, p
    for q in range(nplanes):
        row = a + q * m
        for p in range(L4):
            lane[p] = 0
        for j in range(mfull // L4):
            for p in range(L4):
                lane[p] += row[j * L4 + p]
        tot = 0
        for p in range(L4):
            tot = tot + lane[p]
        for j in range(mfull, m):
            tot = tot + row[j]
        out[q] += tot


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
        a = _columns(&x[n, 0, 0, 0], &buf[tid, 0], p0, p1, pointwise, &g)
        lda = _columns_ld(p0, p1, pointwise, &g)
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
    """From dy (N,K,Ho,Wo), x (N,C,H,W) and w (K,C,R,S), one float type throughout: accumulate dW^T
    into dw_part[thread] ((C*R*S, K) row-major each, zeroed by the caller), db into
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
            a = _columns(&x[n, 0, 0, 0], &buf[tid, 0], p0, p1, pointwise, &g)
            lda = _columns_ld(p0, p1, pointwise, &g)
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


# ---------------------------------------------------------------- direct path: entry points

def padded_plane_size(hp, wp) -> int:
    """Elements per padded plane of an (hp, wp) grid: one output block (2*MAXL values) more, for
    the wrap-around reads of a row's last block (_correlate_image). Python ints: no overflow."""
    return hp * wp + 2 * MAXL


def input_grid(object geometry) -> tuple:
    """(Hp, Wp): the padded input planes of the direct kernels, the rows and columns that the
    outputs actually read: Ho + (R-1)*dh by Wo + (S-1)*dw. With stride 1 that is H + 2*ph by
    W + 2*pw, except where dispatch stored a stride of 1 because there is a single output along
    an axis: there a padding of 10**6 and a stride of 10**6 (one output) must not allocate
    10**6 padded rows (found by tests/test_cython_safety.py: a 4*10**12-element buffer)."""
    cdef Geo g = _geo(geometry)
    return g.ho + (g.r - 1) * g.dh, g.wo + (g.s - 1) * g.dw


def dx_grid(object geometry) -> tuple:
    """(Hq, Wq) = (H + (R-1)*dh, W + (S-1)*dw): the zero-padded dy planes that dx correlates
    (see conv2d_backward_direct). Python ints: no overflow."""
    cdef Geo g = _geo(geometry)
    return g.h + (g.r - 1) * g.dh, g.w + (g.s - 1) * g.dw


BLOCK_CHANNELS = KO  # output channels per register block: cython_backend packs weights by it
DW_LANES = MAXL  # lane partial sums per dW element in conv2d_backward_direct's dw_part


cdef Py_ssize_t _check_direct(object have, object nplanes, object hp, object wp,
                              object ntaps, object noffs, object rows, object need) except -1:
    # Cheap guards on what the caller allocated: a wrong scratch size would be an out-of-bounds
    # write. Python int arithmetic (object arguments), so a huge geometry cannot wrap around;
    # once the buffer is known to hold nplanes planes, every index into it fits Py_ssize_t.
    plane = padded_plane_size(hp, wp)
    if have < nplanes * plane or noffs != ntaps or rows < need:
        raise ValueError("conv2d direct kernel: scratch buffers do not match the geometry")
    return plane


def conv2d_forward_direct(const floating[:, :, :, ::1] x, const floating[::1] wpk,
                          const floating[::1] bias, const Py_ssize_t[::1] offs,
                          floating[:, :, :, ::1] y, floating[:, ::1] xbuf, object geometry,
                          int num_threads):
    """y (N,K,Ho,Wo) = bias (K,) + conv(x (N,C,H,W), w), stride 1, any padding / dilation.

    wpk: w (K, C, R*S) packed by cython_backend as (ceil(K/KO), C, R*S, KO); offs (R*S,):
    r*dh*Wp + s*dw; xbuf (threads, C * padded_plane_size(Hp, Wp)), (Hp, Wp) = input_grid.
    One task = one image: its thread pads it into xbuf[thread] (L2-sized) and computes all of
    y[n] from there; tasks write disjoint images, so there is nothing to synchronise.
    """
    cdef Geo g = _geo(geometry)
    cdef Py_ssize_t hp, wp, plane, n, tid
    hp, wp = input_grid(geometry)
    plane = _check_direct(xbuf.shape[1], g.c, hp, wp, g.r * g.s, offs.shape[0], xbuf.shape[0], num_threads)
    if wpk.shape[0] < (g.k + KO - 1) // KO * KO * g.c * g.r * g.s or bias.shape[0] < g.k:
        raise ValueError("conv2d direct kernel: packed weights do not match the geometry")
    for n in prange(g.n, nogil=True, schedule="static", num_threads=num_threads):
        tid = threadid()
        _pad_planes(&x[n, 0, 0, 0], g.c, g.h, g.w, &xbuf[tid, 0], plane, hp, wp, g.ph, g.pw)
        _correlate_image(&xbuf[tid, 0], g.c, plane, wp, &wpk[0], &offs[0], g.r * g.s, &bias[0],
                         &y[n, 0, 0, 0], g.k, g.ho, g.wo)


def conv2d_backward_direct(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                           const floating[::1] wtpk, const floating[::1] zeros,
                           const Py_ssize_t[::1] offs, const Py_ssize_t[::1] offs_dx,
                           floating[:, :, :, ::1] dx, floating[:, ::1] dw_part, double[:, ::1] db_part,
                           floating[:, ::1] xbuf, floating[:, ::1] dybuf, object geometry,
                           bint need_dx, Py_ssize_t group, int num_threads):
    """Stride-1 backward. Accumulates dW as lane partial sums (K, C, R*S, DW_LANES) into
    dw_part[thread] and db into db_part[thread] (float64), both zeroed by the caller, which sums
    the partials and the lanes; when need_dx writes dx (N,C,H,W) completely.

    dW: dy is laid out in rows of Wp (input_grid; see _weight_grad_flat) and correlated with
    the padded input planes, offs[t] = r*dh*Wp + s*dw as in the forward pass.

    dx is a forward correlation too: dx[c, h, w] = sum_{k,r,s} dy[k, h + ph - r*dh, w + pw - s*dw]
    * w[k, c, r, s]; with dy zero-padded into planes of Hq = H + (R-1)*dh rows of Wq = W + (S-1)*dw
    (top-left margin (R-1)*dh - ph, (S-1)*dw - pw, cropping when negative) this is the kernel of
    the forward pass on the flipped, transposed weights wtpk (packed (ceil(C/KO), K, R*S, KO))
    with offs_dx[t] = r*dh*Wq + s*dw; zeros (C,) is its bias. With "same" padding ((R-1)*dh =
    2*ph, (S-1)*dw = 2*pw, as in catnet) Wq = Wp and the dx layout serves dW as well, shifted by
    its margin: dy is then padded once per image, not twice.

    One task = ``group`` consecutive images (the last task may have fewer): its thread pads them
    all, then runs one dW pass over the group (see _weight_grad_flat), then dx image by image.
    xbuf (threads, group * C * padded_plane_size(Hp, Wp)), (Hp, Wp) = input_grid; dybuf
    (threads, group * K * qplane), qplane >= padded_plane_size of both layouts used: (Ho, Wp)
    for dW, (Hq, Wq) for dx.
    """
    cdef Geo g = _geo(geometry)
    cdef Py_ssize_t hp, wp, hq, wq
    hp, wp = input_grid(geometry)
    hq, wq = dx_grid(geometry)
    cdef Py_ssize_t top = (g.r - 1) * g.dh - g.ph, left = (g.s - 1) * g.dw - g.pw
    cdef Py_ssize_t ntaps = g.r * g.s
    cdef Py_ssize_t m = (g.ho - 1) * wp + g.wo
    if group < 1:
        raise ValueError(f"conv2d direct kernel: group must be >= 1, got {group}")
    cdef Py_ssize_t plane = _check_direct(xbuf.shape[1], (<object>group) * g.c, hp, wp, ntaps, offs.shape[0],
                                          xbuf.shape[0], num_threads)
    # the dy planes serve both layouts: each check proves dybuf holds group*K planes of its size
    cdef Py_ssize_t qplane = _check_direct(dybuf.shape[1], (<object>group) * g.k, g.ho, wp, ntaps, offs.shape[0],
                                           dybuf.shape[0], num_threads)
    cdef bint shared = need_dx and wq == wp and top >= 0 and left >= 0
    cdef Py_ssize_t ng, n0, nimg, gi, tid
    cdef Py_ssize_t ngroups = (g.n + group - 1) // group
    if dw_part.shape[0] < num_threads or dw_part.shape[1] < g.k * g.c * ntaps * MAXL \
            or db_part.shape[0] < num_threads or db_part.shape[1] < g.k:
        raise ValueError("conv2d direct kernel: gradient partials do not match the geometry")
    if need_dx:
        qplane = max(qplane, _check_direct(dybuf.shape[1], (<object>group) * g.k, hq, wq, ntaps, offs_dx.shape[0],
                                           dybuf.shape[0], num_threads))
        if wtpk.shape[0] < (g.c + KO - 1) // KO * KO * g.k * ntaps or zeros.shape[0] < g.c:
            raise ValueError("conv2d direct kernel: packed weights do not match the geometry")
    cdef Py_ssize_t ximg = g.c * plane, dimg = g.k * qplane
    for ng in prange(ngroups, nogil=True, schedule="static", num_threads=num_threads):
        tid = threadid()
        n0 = ng * group
        nimg = min(group, g.n - n0)
        for gi in range(nimg):
            _pad_planes(&x[n0 + gi, 0, 0, 0], g.c, g.h, g.w, &xbuf[tid, 0] + gi * ximg, plane, hp, wp,
                        g.ph, g.pw)
            if shared:
                _pad_planes(&dy[n0 + gi, 0, 0, 0], g.k, g.ho, g.wo, &dybuf[tid, 0] + gi * dimg, qplane,
                            hq, wq, top, left)
            else:
                _pad_planes(&dy[n0 + gi, 0, 0, 0], g.k, g.ho, g.wo, &dybuf[tid, 0] + gi * dimg, qplane,
                            g.ho, wp, 0, 0)
            _plane_sums(&dy[n0 + gi, 0, 0, 0], g.k, g.ho * g.wo, &db_part[tid, 0])
        if shared:
            _weight_grad_flat(&dybuf[tid, 0] + top * wq + left, g.k, qplane, m, &xbuf[tid, 0], g.c,
                              plane, &offs[0], ntaps, &dw_part[tid, 0], nimg, dimg, ximg)
        else:
            _weight_grad_flat(&dybuf[tid, 0], g.k, qplane, m, &xbuf[tid, 0], g.c, plane, &offs[0],
                              ntaps, &dw_part[tid, 0], nimg, dimg, ximg)
        if need_dx:
            for gi in range(nimg):
                if not shared:
                    _pad_planes(&dy[n0 + gi, 0, 0, 0], g.k, g.ho, g.wo, &dybuf[tid, 0] + gi * dimg,
                                qplane, hq, wq, top, left)
                _correlate_image(&dybuf[tid, 0] + gi * dimg, g.k, qplane, wq, &wtpk[0], &offs_dx[0],
                                 ntaps, &zeros[0], &dx[n0 + gi, 0, 0, 0], g.c, g.h, g.w)


def sum_dw_lanes(const floating[:, ::1] part, double[::1] out, int num_threads):
    """out[e] = sum over threads t < T and lanes l < DW_LANES of part[t, e*DW_LANES + l], in float64:
    the reduction of conv2d_backward_direct's dw_part (T, E*DW_LANES) to E = K*C*R*S sums.

    numpy's ``part.reshape(T, E, DW_LANES).sum(axis=(0, 2), dtype=float64)`` gives the same sums
    but runs a buffered, casting reduction over 8-element rows: on catnet's 32->64 layer it
    took 0.9 ms of a 3.4 ms dW pass at two threads. Here each output is one short loop."""
    cdef Py_ssize_t nthreads = part.shape[0], e, t, l, n = out.shape[0]
    cdef double s
    if n * MAXL > part.shape[1]:
        raise ValueError(f"sum_dw_lanes: {n} sums need {n * MAXL} partials per thread, got {part.shape[1]}")
    for e in prange(n, nogil=True, schedule="static", num_threads=num_threads):
        s = 0
        for t in range(nthreads):
            for l in range(MAXL):
                s = s + part[t, e * MAXL + l]
        out[e] = s
