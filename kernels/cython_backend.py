"""Backend ``cython``: compiled kernels (kernels/cython_*.pyx) with typed memoryviews, nogil, OpenMP.

This module is the thin Python layer: it allocates outputs and per-thread scratch buffers,
picks the thread count, and calls the compiled kernels. The arithmetic lives in

* ``cython_conv.pyx``  conv2d forward/backward: direct register-blocked kernels on zero-padded
  planes where they win (stride 1, see ``_use_direct``), else per-tile im2col + SciPy
  ``cython_blas`` GEMM, tiles distributed over OpenMP threads, each calling a single-threaded
  GEMM. Compiled twice: for baseline x86-64 and, as ``cython_conv_avx2``, for AVX2 + FMA; the
  AVX2 build is used when the CPU has it (``_simd_module``);
* ``cython_pool.pyx``  max/avg pooling forward/backward, one OpenMP task per (n, c) plane;
  also built for AVX2 (bit-identical: compares, selects, exact sums) as ``cython_pool_avx2``;
* ``cython_depthwise.pyx``  depthwise convolution (groups = C), one OpenMP task per plane; also
  built for AVX2 (without FMA: bit-identical) as ``cython_depthwise_avx2``;
* ``cython_relu.pyx``  ReLU forward/backward over the flat array.
* ``cython_norm.pyx``  batch norm: two fused passes each way, float64 lane sums per channel;
  also built for AVX2 (without FMA: bit-identical) as ``cython_norm_avx2`` (``_simd_module``).

Safety: the compiled kernels run with bounds checks off, which is safe only because
``fastconv.kernels`` has validated every shape, dtype and layout before calling us. This layer
adds the one guarantee the compiled code needs beyond that (dispatch already keeps every index
below 2**60, see ``_geometry.INDEX_LIMIT``): every GEMM size fits BLAS's 32-bit ``int``
(otherwise a clear ValueError).

Threads: ``fastconv.kernels.get_num_threads()`` is read on each call and passed explicitly to
every ``prange``. Each OpenMP thread calls BLAS on its own tile, so SciPy's OpenBLAS must be
single-threaded (two threads each spawning BLAS threads would oversubscribe the cores); a
thread hook keeps it at 1. numpy's own BLAS (a different library) is not touched.
"""

from __future__ import annotations

import importlib
import os
from functools import partial

import numpy as np

from . import _openmp, cython_conv, cython_depthwise, cython_norm, cython_pool, cython_relu
from . import _threads as _threads_mod
from ._geometry import Conv2dGeometry, Pool2dGeometry, flat_plane_sizes
from ._norm import fused_backward, fused_forward
from ._threads import get_num_threads, register_thread_hook


def _simd_module(baseline, avx2_name: str):
    """The build of a kernel module to run: its AVX2 build (``avx2_name``: cython_conv_avx2, with
    FMA; cython_norm_avx2 and cython_pool_avx2, without) when the CPU has AVX2 + FMA and it was built, else the
    baseline x86-64 (SSE2) one, which runs anywhere.

    The AVX2 module is not even imported on other CPUs: its compiled code (module set-up
    included) may use AVX instructions, which would crash there. FASTCONV_CYTHON_SIMD=sse2
    forces the baseline builds (to compare the two); ``avx2`` or unset = the best the CPU has."""
    choice = os.environ.get("FASTCONV_CYTHON_SIMD", "").strip().lower()
    if choice not in ("", "sse2", "avx2"):
        raise ValueError(f"FASTCONV_CYTHON_SIMD: expected 'sse2', 'avx2' or unset, got {choice!r}")
    if choice != "sse2" and cython_conv.cpu_has_avx2_fma():
        try:
            return importlib.import_module(f"{__package__}.{avx2_name}")
        except ImportError:  # built without it (non-x86 compiler, or one without -mavx2)
            return baseline
    return baseline


_conv = _simd_module(cython_conv, "cython_conv_avx2")
_bn = _simd_module(cython_norm, "cython_norm_avx2")
_pool = _simd_module(cython_pool, "cython_pool_avx2")
_depthwise = _simd_module(cython_depthwise, "cython_depthwise_avx2")

NAME = "cython"
DESCRIPTION = (
    "Cython: typed memoryviews, nogil, OpenMP prange; conv = direct register-blocked kernels "
    f"({_conv.simd()} build) or per-tile im2col + SciPy cython_blas GEMM"
    + ("" if _openmp.openmp_enabled() else " (built without OpenMP: serial)")
)

# BLAS takes sizes and leading dimensions as 32-bit C ints.
_BLAS_INT_MAX = 2**31 - 1
# Scratch per thread per tile: ~256 KiB of float32, so the column tile and the GEMM's packed
# panels stay in the 1 MiB L2 (measured: larger tiles are slower, smaller ones pay per-call cost).
_TILE_ELEMENTS = 65536


def _scipy_blas_controllers() -> list:
    """threadpoolctl controllers of the BLAS library SciPy's cython_blas calls (not numpy's)."""
    try:
        import scipy
        import threadpoolctl
    except ImportError:  # pragma: no cover - scipy is a dependency of this backend
        return []
    scipy_dir = os.path.dirname(scipy.__file__)
    # wheels vendor it next to the package (scipy.libs/); conda/system builds link a shared
    # BLAS that numpy uses too, and limiting that one would slow numpy down: leave it alone.
    roots = (scipy_dir + ".libs" + os.sep, scipy_dir + os.sep)
    ctl = threadpoolctl.ThreadpoolController()
    return [lib for lib in ctl.lib_controllers if lib.filepath and lib.filepath.startswith(roots)]


_blas_libs = _scipy_blas_controllers()


def _single_threaded_blas(_n: int) -> None:
    # Runs at import and after every fastconv.set_num_threads (which sets all BLAS to n first).
    for lib in _blas_libs:
        lib.set_num_threads(1)


register_thread_hook(_single_threaded_blas)


def _threads(tasks: int) -> int:
    """OpenMP threads for a loop of ``tasks`` independent tasks (1 when built without OpenMP)."""
    if not _openmp.openmp_enabled():
        return 1
    return max(1, min(get_num_threads(), tasks))




def _threads_memory_bound(tasks: int, elements: int) -> int:
    """:func:`_threads`, but 1 below ``_threads.MEMORY_BOUND_PARALLEL_MIN`` elements (read at each
    call; the numba backend follows the same threshold)."""
    return _threads(tasks) if elements >= _threads_mod.MEMORY_BOUND_PARALLEL_MIN else 1


def _check_blas_sizes(g: Conv2dGeometry) -> None:
    """Raise ValueError when a GEMM size or leading dimension would not fit BLAS's C int.

    Called after the outputs are allocated, so a problem too big for memory gets numpy's
    MemoryError like every other backend, and only a problem that does fit in memory but not
    in 32-bit BLAS indexing (an image plane over 2**31 pixels) gets this error.
    """
    sizes = {"K": g.k, "C*R*S": g.c * g.r * g.s, "Ho*Wo": g.ho * g.wo, "H*W": g.h * g.w}
    too_big = {name: v for name, v in sizes.items() if v > _BLAS_INT_MAX}
    if too_big:
        raise ValueError(
            f"conv2d (cython backend): sizes {too_big} exceed the 32-bit BLAS limit {_BLAS_INT_MAX}; "
            "split the input into smaller images"
        )


def _tile(g: Conv2dGeometry) -> int:
    """Output pixels per task: fills ~_TILE_ELEMENTS of im2col scratch, at most one image."""
    return max(1, min(g.ho * g.wo, _TILE_ELEMENTS // (g.c * g.r * g.s)))


def _use_direct(g: Conv2dGeometry) -> bool:
    """Whether conv2d takes the direct (register-blocked) kernels instead of im2col + GEMM.

    The direct kernels need stride 1 (each tap is then a contiguous run of inputs). Measured
    (one thread, float32, AVX2 build, forward + backward), they win on every catnet layer
    (2.3x on the 3->16 one, 1.2-2x on the others, up to 256 channels at 16x16) and lose where
    * the kernel is 1x1: im2col + GEMM then needs no im2col at all (x *is* the column matrix),
      while the direct dW still pads x and dy (fwd+bwd 5.5 vs 4.5 ms on 64 channels at 32x32);
    * output rows are short (Wo < 16): a register block covers 16 pixels of a row (8 of them
      wasted when Wo = 8) and the dW sums are flushed more often than they run (8x8, 64
      channels: 7.9 vs 5.4 ms; 12x12: even);
    * the CPU lacks AVX2/FMA, so the baseline (SSE2) build runs: half the SIMD width and no
      fused multiply-add make the direct kernels 2-2.4x slower, while OpenBLAS still uses
      whatever the CPU has. Measured (forced to SSE2 here): direct 16.8 / 71 / 33 / 36 ms on
      catnet's four layers vs im2col + GEMM 16.6 / 53 / 23 / 20 ms.
    """
    return _direct_kernels_fast and g.r * g.s > 1 and g.wo >= 16 and _direct_applies(g)


_direct_kernels_fast = _conv.simd() != "sse2"


def _direct_applies(g: Conv2dGeometry) -> bool:
    """Whether the direct kernels can take this geometry at all: stride 1, and padded planes
    (the input's, and dy's for dx) of at most 4x the larger of the input and output planes.

    The size bound keeps out geometries where the planes would be mostly padding nobody reads
    past, e.g. a dilation of 2**59 with a single output row (rows 2**59 apart): allocating
    them is wasteful or impossible, and their element counts would overflow 64-bit index
    arithmetic. Computed with Python ints, so the test itself cannot overflow."""
    if g.sh != 1 or g.sw != 1:
        return False
    hp, wp = _conv.input_grid(g)  # Python ints: the products below cannot overflow
    hq, wq = _conv.dx_grid(g)
    bound = 4 * max(g.h * g.w, g.ho * g.wo)
    return hp * wp <= bound and hq * wq <= bound


def _tap_offsets(g: Conv2dGeometry, row_stride: int) -> np.ndarray:
    """(R*S,) flat offset r*dh*row_stride + s*dw of tap (r, s) in a padded plane, as C Py_ssize_t."""
    return (np.arange(g.r)[:, None] * (g.dh * row_stride) + np.arange(g.s)[None, :] * g.dw).reshape(-1).astype(np.intp)


def _pack(w3: np.ndarray) -> np.ndarray:
    """w3 (O, I, T) -> flat (ceil(O/KO), I, T, KO), zeros past channel O: the KO weights that one
    loaded input vector is multiplied by are adjacent (KO = cython_conv.BLOCK_CHANNELS)."""
    o, i, t = w3.shape
    kb = _conv.BLOCK_CHANNELS
    blocks = -(-o // kb)
    packed = np.zeros((blocks * kb, i, t), w3.dtype)
    packed[:o] = w3
    return packed.reshape(blocks, kb, i, t).transpose(0, 2, 3, 1).reshape(-1)


def _conv_forward_direct(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """y (N,K,Ho,Wo) by cython_conv.conv2d_forward_direct (stride 1; see _use_direct)."""
    y = np.empty(g.y_shape, x.dtype)
    nt = _threads(g.n)
    hp, wp = _conv.input_grid(g)
    xbuf = np.empty((nt, g.c * _conv.padded_plane_size(hp, wp)), x.dtype)
    bias = np.zeros(g.k, x.dtype) if b is None else b
    w3 = w.reshape(g.k, g.c, g.r * g.s)
    _conv.conv2d_forward_direct(x, _pack(w3), bias, _tap_offsets(g, wp), y, xbuf, g, nt)
    return y


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """y (N,K,Ho,Wo) from x (N,C,H,W), w (K,C,R,S), b (K,) or None; one float dtype."""
    if _use_direct(g):
        return _conv_forward_direct(x, w, b, g)
    y = np.empty(g.y_shape, x.dtype)
    _check_blas_sizes(g)
    tile = _tile(g)
    ntiles = -(-(g.ho * g.wo) // tile)
    nt = _threads(g.n * ntiles)
    buf = np.empty((nt, g.c * g.r * g.s * tile), x.dtype)
    obuf = np.empty((nt, tile * g.k), x.dtype)
    bias = np.empty(0, x.dtype) if b is None else b
    _conv.conv2d_forward(x, w, bias, y, buf, obuf, g, tile, b is not None, nt)
    return y


_DW_GROUP_BYTES = 1024 * 1024
_DW_GROUP_MAX = 4


def _dw_group(g: Conv2dGeometry, elements_per_image: int, itemsize: int, threads: int) -> int:
    """Images per dW pass of the direct backward: as many as keep their padded planes within
    _DW_GROUP_BYTES (L2-resident next to the thread's dW partials), at most _DW_GROUP_MAX, and
    no more than each thread has images (so both threads get work)."""
    fit = _DW_GROUP_BYTES // max(1, elements_per_image * itemsize)
    return int(max(1, min(_DW_GROUP_MAX, fit, -(-g.n // threads))))


def _conv_backward_direct(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray] | None:
    """The stride-1 backward of cython_conv.conv2d_backward_direct, or None when its dW holds a
    NaN: the flat dW sums also multiply the zero dy of wrap-around columns by real x values, so
    an inf in x can give 0 * inf = NaN where the reference (valid pairs only) is finite. Rare
    (non-finite data) and cheap to detect on the small dW; the caller then uses im2col + GEMM."""
    dtype = x.dtype
    nt = _threads(g.n)
    taps = g.r * g.s
    hp, wp = _conv.input_grid(g)
    hq, wq = _conv.dx_grid(g)
    qplane = _conv.padded_plane_size(g.ho, wp)
    if need_dx:
        qplane = max(qplane, _conv.padded_plane_size(hq, wq))
    plane = _conv.padded_plane_size(hp, wp)
    group = _dw_group(g, g.c * plane + g.k * qplane, dtype.itemsize, nt)
    xbuf = np.empty((nt, group * g.c * plane), dtype)
    dw_part = np.zeros((nt, g.k * g.c * taps * _conv.DW_LANES), dtype)
    db_part = np.zeros((nt, g.k), np.float64)
    if need_dx:
        dx = np.empty(g.x_shape, dtype)
        # dx correlates dy with the kernel flipped in (r, s) and transposed to (C, K)
        wt = _pack(np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(g.c, g.k, taps))
    else:
        dx = np.empty((0, 0, 0, 0), dtype)
        wt = np.empty(0, dtype)
    dybuf = np.empty((nt, group * g.k * qplane), dtype)
    _conv.conv2d_backward_direct(
        dy, x, wt, np.zeros(g.c, dtype), _tap_offsets(g, wp), _tap_offsets(g, wq),
        dx, dw_part, db_part, xbuf, dybuf, g, need_dx, group, nt,
    )  # fmt: skip
    # threads x lanes partial sums of each dW element, added up in float64
    dw64 = np.empty(g.k * g.c * taps, np.float64)
    # a second thread only from 8192 sums (catnet: conv4's 18,432; conv3's 4,608 stay on one):
    # below that the loop is a few µs
    _conv.sum_dw_lanes(dw_part, dw64, _threads(dw64.size // 4096))
    if np.isnan(dw64).any():
        return None
    return (dx if need_dx else None), dw64.astype(dtype).reshape(g.w_shape), db_part.sum(axis=0).astype(dtype)


def conv2d_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx (N,C,H,W) or None, dw (K,C,R,S), db (K,)) for dy (N,K,Ho,Wo); one float dtype."""
    # The direct dx multiplies w by the zero margin around dy; with an inf in w that is NaN where
    # the reference (which skips the margin) and im2col + GEMM give a number: use the latter.
    if _use_direct(g) and not (need_dx and not np.isfinite(w).all()):
        grads = _conv_backward_direct(dy, x, w, g, need_dx)
        if grads is not None:
            return grads
    dtype = x.dtype
    dx = np.empty(g.x_shape if need_dx else (0, 0, 0, 0), dtype)
    _check_blas_sizes(g)
    crs = g.c * g.r * g.s
    tile = _tile(g)
    nt = _threads(g.n)
    buf = np.empty((nt, crs * tile), dtype)
    dbuf = np.empty((nt, crs * tile if need_dx else 0), dtype)
    dw_part = np.zeros((nt, g.k * crs), dtype)
    db_part = np.zeros((nt, g.k), np.float64)
    _conv.conv2d_backward(dy, x, w, dx, dw_part, db_part, buf, dbuf, g, tile, need_dx, nt)
    # the partials hold dW transposed, (C*R*S, K): see cython_conv.conv2d_backward
    dw = np.ascontiguousarray(dw_part.sum(axis=0, dtype=dtype).reshape(crs, g.k).T).reshape(g.w_shape)
    db = db_part.sum(axis=0).astype(dtype)
    return (dx if need_dx else None), dw, db


#: Per-thread scratch (bytes) above which the flat stride-1 depthwise kernels give way to the row
#: kernels: a padded plane, the wide rows of y or dy, and dW's float64 lanes (R*S wide planes).
DEPTHWISE_FLAT_MAX_BYTES = 1 << 26


def _depthwise_flat(g: Conv2dGeometry) -> tuple[int, int] | None:
    """(padded plane length, wide plane length) when the flat kernels apply (stride 1, scratch
    within DEPTHWISE_FLAT_MAX_BYTES per thread, counting float64), else None."""
    if g.sh != 1 or g.sw != 1:
        return None
    _, plane, wide = flat_plane_sizes(g)
    return (plane, wide) if 8 * (plane + (g.r * g.s + 1) * wide) <= DEPTHWISE_FLAT_MAX_BYTES else None


def depthwise_conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """y (N,K,Ho,Wo) from x (N,C,H,W), w (K,1,R,S), b (K,) or None, one float dtype (groups = C)."""
    y = np.empty(g.y_shape, x.dtype)
    bias = np.zeros(g.k, x.dtype) if b is None else b
    threads = _threads_memory_bound(g.n * g.k, x.size)
    flat = _depthwise_flat(g)
    if flat is not None:  # real zeros in the padding: 0 * inf = NaN comes out by itself
        scratch = np.empty((threads, flat[0]), x.dtype), np.empty((threads, flat[1]), x.dtype)
        _depthwise.depthwise_forward_flat(x, w, bias, y, *scratch, g, threads)
        return y
    _depthwise.depthwise_forward(x, w, bias, y, g, threads)
    bad = ~np.isfinite(w[:, 0])
    if (g.ph or g.pw) and bad.any():
        # the row kernel skips padding taps, but an inf or NaN weight times a padded zero is NaN
        # (the contract): every output whose window puts such a weight on the padding is NaN
        hits = _padding_hits(g)
        for k in np.flatnonzero(bad.any(axis=(1, 2))):
            y[:, k][:, np.any(hits[bad[k]], axis=0)] = np.nan
    return y


def _padding_hits(g: Conv2dGeometry) -> np.ndarray:
    """(R, S, Ho, Wo) bool: where tap (r, s) of output (i, j) falls on the zero padding."""
    rows = np.arange(g.ho)[None, :] * g.sh - g.ph + np.arange(g.r)[:, None] * g.dh  # (R, Ho)
    cols = np.arange(g.wo)[None, :] * g.sw - g.pw + np.arange(g.s)[:, None] * g.dw  # (S, Wo)
    row_out, col_out = (rows < 0) | (rows >= g.h), (cols < 0) | (cols >= g.w)
    return row_out[:, None, :, None] | col_out[None, :, None, :]


def depthwise_conv2d_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx (N,C,H,W) or None, dw (K,1,R,S), db (K,)) for dy (N,K,Ho,Wo), x's dtype; groups = C.

    The flat kernels (stride 1) compute garbage columns with dy = 0 there: exact unless that zero
    meets an inf/NaN weight (dx) or x value (dW), so those go to the row kernels (dW: redone when
    the flat result is non-finite and x holds an inf/NaN)."""
    flat = _depthwise_flat(g)
    dx = None
    if need_dx:  # the padding has no gradient to keep: the row kernel's skipping is exact here
        dx = np.empty(g.x_shape, x.dtype)
        threads = _threads_memory_bound(g.n * g.c, x.size)
        if flat is not None and np.isfinite(w).all():
            scratch = np.empty((threads, flat[0]), x.dtype), np.empty((threads, flat[1]), x.dtype)
            _depthwise.depthwise_backward_dx_flat(dy, w, dx, *scratch, g, threads)
        else:
            _depthwise.depthwise_backward_dx(dy, w, dx, g, threads)
    dw64, db64 = np.empty(g.w_shape, np.float64), np.empty(g.k, np.float64)
    threads = _threads_memory_bound(g.k, x.size)
    if flat is not None:  # padding: real zeros, dy's NaN/inf meets them
        scratch = (np.empty((threads, flat[0]), x.dtype), np.empty((threads, flat[1]), x.dtype),
                   np.empty((threads, (g.r * g.s + 1) * 16)))  # fmt: skip
        _depthwise.depthwise_backward_w_flat(dy, x, dw64, db64, *scratch, g, threads)
        # An inf/NaN in x meeting a garbage column's zero dy shows up as a non-finite dW: look at
        # the small dW on every call and at the whole of x only then.
        if not np.isfinite(dw64).all() and not np.isfinite(x).all():
            flat = None
    if flat is None:
        lanes = np.empty((g.k, g.wo))
        _depthwise.depthwise_backward_w(dy, x, dw64, db64, lanes, g, threads)
        if g.ph or g.pw:
            bad = ~np.isfinite(dy).all(axis=0)  # (K, Ho, Wo): an inf/NaN dy somewhere in the batch
            if bad.any():  # it meets a padded zero in every tap that lands on the padding: NaN
                hits = _padding_hits(g)
                for k in np.flatnonzero(bad.any(axis=(1, 2))):
                    dw64[k, 0][np.any(hits & bad[k], axis=(2, 3))] = np.nan
    return dx, dw64.astype(x.dtype), db64.astype(x.dtype)


def max_pool2d_forward(x: np.ndarray, g: Pool2dGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(y, argmax int64) both (N,C,Ho,Wo); argmax = flat h*W + w, first max / first NaN wins."""
    y = np.empty(g.y_shape, x.dtype)
    argmax = np.empty(g.y_shape, np.int64)
    _pool.max_pool2d_forward(x, y, argmax, g, _threads_memory_bound(g.n * g.c, x.size))
    return y, argmax


def max_pool2d_backward(dy: np.ndarray, argmax: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """dx (N,C,H,W): dy scattered (added) to the argmax positions of each plane."""
    dx = np.empty(g.x_shape, dy.dtype)
    _pool.max_pool2d_backward(dy, argmax, dx, g, _threads_memory_bound(g.n * g.c, dx.size))
    return dx


def avg_pool2d_forward(x: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """y (N,C,Ho,Wo) = window sum / (kh*kw), padding counted as zeros."""
    y = np.empty(g.y_shape, x.dtype)
    _pool.avg_pool2d_forward(x, y, g, _threads_memory_bound(g.n * g.c, x.size))
    return y


def avg_pool2d_backward(dy: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """dx (N,C,H,W): each dy element spread as dy/(kh*kw) over its window's real inputs."""
    dx = np.empty(g.x_shape, dy.dtype)
    _pool.avg_pool2d_backward(dy, dx, g, _threads_memory_bound(g.n * g.c, dx.size))
    return dx


def relu_forward(x: np.ndarray) -> np.ndarray:
    """y = max(x, 0), any shape; NaN stays NaN."""
    y = np.empty_like(x)
    cython_relu.relu_forward(x.reshape(-1), y.reshape(-1), _threads_memory_bound(x.size, x.size))
    return y


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx = dy where x > 0 else 0, any shape."""
    dx = np.empty_like(x)
    cython_relu.relu_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1), _threads_memory_bound(x.size, x.size))
    return dx


def batch_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, mean: np.ndarray | None, var: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y (N,C,H,W), mean, var (C,) float64: batch statistics when mean is None (kernels/_norm.py)."""
    t = _threads_memory_bound(x.shape[1], x.size)
    return fused_forward(partial(_bn.batch_norm_stats, num_threads=t), partial(_bn.batch_norm_apply, num_threads=t),
                         x, weight, bias, eps, mean, var)


def batch_norm_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float, training: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (N,C,H,W), dweight, dbias (C,) in x's dtype (kernels/_norm.py)."""
    t = _threads_memory_bound(x.shape[1], x.size)
    return fused_backward(
        partial(_bn.batch_norm_grad_sums, num_threads=t),
        partial(_bn.batch_norm_apply, num_threads=t),
        partial(_bn.batch_norm_dx, num_threads=t),
        dy, x, weight, mean, var, eps, training,
    )
