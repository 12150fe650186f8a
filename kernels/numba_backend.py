"""Backend ``numba``: every op of the kernel contract as ``@njit`` kernels, parallel and cached.

The kernels live in ``_numba_conv.py`` (conv2d, with the optimisation ladder kept in code),
``_numba_pool.py`` (pooling, ReLU) and ``_numba_norm.py`` (batch norm's fused passes). This
module only allocates outputs, derives the few layout numbers a kernel needs from the geometry
``g`` and picks a kernel. Arrays arrive
validated by dispatch: C-contiguous, one dtype, float32 or float64 — exactly what the
kernels are compiled for, so nothing is re-checked here.

Compilation is lazy: importing this module compiles nothing. Each kernel is compiled on its
first call for a dtype and written to Numba's on-disk cache (``cache=True``), so later
processes only load machine code. :func:`compile_all` warms every kernel and reports how long
it took. Cache location: ``$NUMBA_CACHE_DIR`` when set; else ``kernels/__pycache__`` next to
this file when that is writable; else the user cache (``~/.cache/numba``, or
``$XDG_CACHE_HOME/numba``). A read-only install therefore still caches, in the user cache.

Threads: every call applies ``fastconv.kernels.get_num_threads()`` (capped at the size of
Numba's pool, fixed at start-up) to Numba's thread pool. Numba's setting is per calling
thread, so applying it at call time is what makes it hold in every thread that calls us.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numba
import numpy as np

from . import _numba_conv as cv
from . import _numba_depthwise as dwk
from . import _numba_norm as nl
from . import _numba_pool as pl
from . import _threads
from ._geometry import (
    Conv2dGeometry,
    Pool2dGeometry,
    conv2d_geometry,
    flat_plane_sizes,
    padding_written_out,
    pool2d_geometry,
)
from ._norm import fused_backward, fused_forward
from ._threads import get_num_threads

NAME = "numba"
DESCRIPTION = "Numba @njit kernels: flat padded-plane convolution, prange over planes, cached"

_MAX_THREADS = numba.config.NUMBA_NUM_THREADS


def _sync_threads(elements: int | None = None) -> None:
    # Memory-bound kernels (``elements`` given) stay on one thread below the threshold the
    # cython backend uses too: there a second thread saves microseconds and, on a busy machine,
    # can cost milliseconds waiting for a descheduled team-mate (see _threads).
    if elements is not None and elements < _threads.MEMORY_BOUND_PARALLEL_MIN:
        n = 1
    else:
        n = min(get_num_threads(), _MAX_THREADS)
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


def _bias(b: np.ndarray | None, g: Conv2dGeometry, dtype: np.dtype) -> np.ndarray:
    # A zero bias keeps one compiled signature per dtype; +0.0 changes no result.
    return np.zeros(g.k, dtype) if b is None else b


def _strides(g: Conv2dGeometry) -> tuple[int, int, int, int, int, int]:
    return g.sh, g.sw, g.ph, g.pw, g.dh, g.dw


# ---------------------------------------------------------------------------------- conv2d
def _tap_offsets(g: Conv2dGeometry, row_stride: int) -> np.ndarray:
    """Flat offset of tap (r, s) in a plane with rows ``row_stride`` apart, (R*S,) int64."""
    r = np.arange(g.r, dtype=np.int64)[:, None] * (g.dh * row_stride)
    s = np.arange(g.s, dtype=np.int64)[None, :] * g.dw
    return (r + s).reshape(-1)


_scratch_store = threading.local()
#: Largest work array _scratch hands out (padded planes of x or dy).
SCRATCH_BYTES_MAX = 1 << 32


def _scratch(role: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A C-contiguous work array of ``shape``/``dtype``, reused across calls of this thread.

    The padded copies of x and dy (~9 MB each on catnet's first layers) live only during one
    call. Allocating them fresh each time costs page faults whenever malloc hands back newly
    mapped memory, which in a training step (many large arrays of different sizes alive at
    once) is most of the time: ~1 ms per 9 MB. One buffer per role and per thread (so
    concurrent callers never share) that only grows; never returned to the caller."""
    size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for absurd paddings
    if size > SCRATCH_BYTES_MAX:
        raise ValueError(
            f"the numba backend would need a {size / 2**30:.3g} GiB work array ({role}, the padded planes) for "
            f"this padding / dilation; use the cython backend for sizes this large"
        )
    buf = getattr(_scratch_store, role, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, np.uint8)
        setattr(_scratch_store, role, buf)
    return buf[:size].view(dtype).reshape(shape)


def _padded_x(x: np.ndarray, g: Conv2dGeometry) -> tuple[np.ndarray, int]:
    """x zero-padded by (ph, pw), each plane flattened and followed by SLACK zeros:
    (N, C, Hp*Wp + SLACK) scratch, and Wp."""
    hp, wp = g.h + 2 * g.ph, g.w + 2 * g.pw
    xp = _scratch("xp", (g.n, g.c, hp * wp + cv.SLACK), x.dtype)
    cv.pad_flat(x, g.ph * wp + g.pw, wp, xp)
    return xp, wp


def conv_fwd_flat(x: np.ndarray, w: np.ndarray, b: np.ndarray, g: Conv2dGeometry) -> np.ndarray:
    """LADDER["flat"] (numba rung 5, ladder.md rung 5; stride 1 only): y (N,K,Ho,Wo) via flat padded
    planes (see _numba_conv)."""
    xp, wp = _padded_x(x, g)
    y = np.empty(g.y_shape, x.dtype)
    cv.flat_correlate(xp, w.reshape(g.k, g.c, g.r * g.s), _tap_offsets(g, wp), b, 0, wp, y)
    return y


def _explicitly_padded(x: np.ndarray, g: Conv2dGeometry) -> tuple[np.ndarray, Conv2dGeometry]:
    """x with its zero padding written out, and the same problem without padding.

    The strided kernels visit only taps that meet real input, which is exact as long as every
    weight and dy value is finite (a skipped tap would add 0). With an inf or NaN, zero padding
    means 0 * inf = NaN (the contract, the reference and PyTorch): then the zeros are made real."""
    return np.pad(x, ((0, 0), (0, 0), (g.ph, g.ph), (g.pw, g.pw))), padding_written_out(g)


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """y (N,K,Ho,Wo) = b + conv(x (N,C,H,W), w (K,C,R,S)), dtype of x."""
    _sync_threads()
    bias = _bias(b, g, x.dtype)
    if g.sh == 1 and g.sw == 1:
        return conv_fwd_flat(x, w, bias, g)  # padded planes: the zeros are real already
    if (g.ph or g.pw) and not np.isfinite(w).all():
        x, g = _explicitly_padded(x, g)
    y = np.empty(g.y_shape, x.dtype)
    cv.conv_fwd_parallel(x, w, bias, *_strides(g), y)
    return y


def conv2d_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dx (N,C,H,W) or None, dw (K,C,R,S), db (K,), all of x's dtype.

    dw and db are accumulated in float64 across the batch, then cast once."""
    _sync_threads()
    dtype = x.dtype
    dw64 = np.zeros((g.k, g.c, g.r * g.s), np.float64)
    db64 = np.zeros(g.k, np.float64)
    zero = dtype.type(0)
    if g.sh != 1 or g.sw != 1:
        _dw_generic(dy, x, g, zero, dw64, db64)
        dx = _dx_generic(dy, w, g) if need_dx else None
        return dx, dw64.reshape(g.w_shape).astype(dtype), db64.astype(dtype)

    xp, wp = _padded_x(x, g)
    hp = g.h + 2 * g.ph
    offs = _tap_offsets(g, wp)
    # dy laid out in rows of Wp (zeros in the Wp - Wo wrap-around columns) after `lead` zeros:
    # the margin that lets dx read dy[i - r*dh, j - s*dw] at non-negative flat indices.
    lead = int(offs[-1])
    dyb = _scratch("dyb", (g.n, g.k, lead + hp * wp + cv.SLACK), dtype)
    cv.pad_flat(dy, lead, wp, dyb)
    cv.flat_weight_grad(dyb, xp, offs, (g.ho - 1) * wp + g.wo, lead, zero, dw64, db64)
    if np.isnan(dw64).any():
        # The flat sums also pair the zero dy of wrap-around positions with real x values: an
        # inf there gives 0 * inf = NaN where the reference (valid pairs only) may be finite.
        # Rare (non-finite data), cheap to detect on the small dW: redo it pair by pair.
        dw64[...] = 0.0
        _dw_generic(dy, x, g, zero, dw64, db64)
    dx = None
    if need_dx and not np.isfinite(w).all():
        # Same for dx: zeros of the bordered dy times an infinite weight would give NaN.
        dx = _dx_generic(dy, w, g)
    elif need_dx:
        # dx = correlation of the bordered dy with the kernel flipped (offsets lead - off) and
        # transposed to (C, K, R*S); output element (h, w) sits at flat (h+ph)*Wp + w+pw.
        wt = np.ascontiguousarray(w.reshape(g.k, g.c, g.r * g.s).transpose(1, 0, 2))
        dx = np.empty(g.x_shape, dtype)
        cv.flat_correlate(dyb, wt, lead - offs, np.zeros(g.c, dtype), g.ph * wp + g.pw, wp, dx)
    return dx, dw64.reshape(g.w_shape).astype(dtype), db64.astype(dtype)


def _meets_padding(values: np.ndarray, g: Conv2dGeometry) -> bool:
    """Whether skipping padding taps would differ from multiplying their zeros: only when there
    is padding and ``values`` (the weights forward, dy for dW) hold an inf or NaN (0 * inf = NaN)."""
    return bool(g.ph or g.pw) and not np.isfinite(values).all()


#: Per-task buffers (bytes) above which the flat stride-1 depthwise kernels give way to the row
#: kernels (the same rule as the cython backend's).
DEPTHWISE_FLAT_MAX_BYTES = 1 << 26


def _depthwise_flat(g: Conv2dGeometry) -> bool:
    """Stride 1 and buffers within DEPTHWISE_FLAT_MAX_BYTES per task (counting float64): the flat
    padded-plane kernels."""
    if g.sh != 1 or g.sw != 1:
        return False
    _, plane, wide = flat_plane_sizes(g)
    return 8 * (plane + (g.r * g.s + 1) * wide) <= DEPTHWISE_FLAT_MAX_BYTES


def depthwise_conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """y (N,K,Ho,Wo) from x (N,C,H,W), w (K,1,R,S), b (K,) or None, one float dtype (groups = C;
    _numba_depthwise)."""
    _sync_threads(x.size)
    y = np.empty(g.y_shape, x.dtype)
    if _depthwise_flat(g):  # real zeros in the padding: 0 * inf = NaN comes out by itself
        dwk.depthwise_fwd_flat(x, w, _bias(b, g, x.dtype), g.ph, g.pw, g.dh, g.dw, y)
        return y
    if _meets_padding(w, g):
        x, g = _explicitly_padded(x, g)
    dwk.depthwise_fwd(x, w, _bias(b, g, x.dtype), *_strides(g), y)
    return y


def depthwise_conv2d_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx (N,C,H,W) or None, dw (K,1,R,S), db (K,)) for dy (N,K,Ho,Wo), x's dtype; groups = C. The flat
    kernels' garbage columns hold dy = 0, exact unless it meets an inf weight (dx) or an inf/NaN
    in x (dW): those take the row kernels (dW: redone when the flat result is non-finite and x
    holds an inf/NaN)."""
    _sync_threads(x.size)
    flat = _depthwise_flat(g)
    dx = None
    if need_dx:  # the padding has no gradient to keep: skipping its taps is exact here
        dx = np.empty(g.x_shape, x.dtype)
        if flat and np.isfinite(w).all():
            dwk.depthwise_bwd_dx_flat(dy, w, g.ph, g.pw, g.dh, g.dw, dx)
        else:
            dwk.depthwise_bwd_dx(dy, w, *_strides(g), dx)
    dw64, db64 = np.empty(g.w_shape, np.float64), np.empty(g.k, np.float64)
    if flat:
        dwk.depthwise_bwd_w_flat(dy, x, g.ph, g.pw, g.dh, g.dw, dw64, db64)
        # An inf/NaN in x meeting a garbage column's zero dy shows up as a non-finite dW: look at
        # the small dW on every call and at the whole of x only then (as the conv's flat dW does).
        flat = np.isfinite(dw64).all() or np.isfinite(x).all()
    if not flat:
        xw, gw = _explicitly_padded(x, g) if _meets_padding(dy, g) else (x, g)
        dwk.depthwise_bwd_w(dy, xw, *_strides(gw), dw64, db64)
    return dx, dw64.astype(x.dtype), db64.astype(x.dtype)


def _dw_generic(dy: np.ndarray, x: np.ndarray, g: Conv2dGeometry, zero, dw64: np.ndarray, db64: np.ndarray) -> None:
    """dw64, db64 += the pair-by-pair dW and db (valid output pixels x taps). With a non-finite
    dy the padding's zeros take part (0 * inf = NaN), so they are written out first."""
    if (g.ph or g.pw) and not np.isfinite(dy).all():
        x, g = _explicitly_padded(x, g)
    cv.conv_bwd_dw_generic(dy, x, *_strides(g), zero, dw64.reshape(g.w_shape), db64)


def _dx_generic(dy: np.ndarray, w: np.ndarray, g: Conv2dGeometry) -> np.ndarray:
    dx = np.zeros(g.x_shape, dy.dtype)
    cv.conv_bwd_dx_generic(dy, w, *_strides(g), dx)
    return dx


def _ladder_rung(kernel: Callable) -> Callable:
    def run(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
        _sync_threads()
        y = np.empty(g.y_shape, x.dtype)
        kernel(x, w, _bias(b, g, x.dtype), *_strides(g), y)
        return y

    run.__name__ = run.__qualname__ = kernel.__name__
    run.__doc__ = kernel.__doc__
    return run


def conv2d_forward_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """LADDER["naive"] (numba rung 1, ladder.md rung 2): the python reference's loops, jitted,
    serial. y (N,K,Ho,Wo)."""
    return _ladder_rung(cv.conv_fwd_naive)(x, w, b, g)


def _flat_rung(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    _sync_threads()
    return conv_fwd_flat(x, w, _bias(b, g, x.dtype), g)


# Every rung has conv2d_forward's signature (x, w, b_or_None, g) -> y, for the benchmarks.
# "flat" requires stride 1 (the backend falls back to "parallel" otherwise). Keys follow
# fastconv.bench.ladder_rungs, which names them "numba:<rung>".
LADDER: dict[str, Callable[..., np.ndarray]] = {
    "naive": conv2d_forward_naive,
    "reordered": _ladder_rung(cv.conv_fwd_reordered),
    "parallel": _ladder_rung(cv.conv_fwd_parallel),
    "im2col-blas": _ladder_rung(cv.conv_fwd_im2col_blas),
    "flat": _flat_rung,
}


# ---------------------------------------------------------------------------------- pooling
def max_pool2d_forward(x: np.ndarray, g: Pool2dGeometry) -> tuple[np.ndarray, np.ndarray]:
    """y (N,C,Ho,Wo) of x's dtype and argmax int64 (flat h*W + w of each window's winner)."""
    _sync_threads(x.size)
    y = np.empty(g.y_shape, x.dtype)
    argmax = np.empty(g.y_shape, np.int64)
    if g.is_2x2_stride2:
        pl.max_pool_fwd_2x2(x, y, argmax)
    else:
        pl.max_pool_fwd(x, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, y, argmax)
    return y, argmax


def max_pool2d_backward(dy: np.ndarray, argmax: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """dx (N,C,H,W): each dy element added at its window's winner."""
    _sync_threads(math.prod(g.x_shape))
    dx = np.zeros(g.x_shape, dy.dtype)
    pl.max_pool_bwd(dy, argmax, dx)
    return dx


def avg_pool2d_forward(x: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """y (N,C,Ho,Wo) = window sum / (kh*kw)."""
    _sync_threads(x.size)
    y = np.empty(g.y_shape, x.dtype)
    if g.is_2x2_stride2:
        pl.avg_pool_fwd_2x2(x, y)
    else:
        pl.avg_pool_fwd(x, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, y)
    return y


def avg_pool2d_backward(dy: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """dx (N,C,H,W): dy / (kh*kw) spread over each window's real inputs."""
    _sync_threads(math.prod(g.x_shape))
    if g.is_2x2_stride2:  # every element written by the kernel: no zeroing pass
        dx = np.empty(g.x_shape, dy.dtype)
        pl.avg_pool_bwd_2x2(dy, dx)
        return dx
    dx = np.zeros(g.x_shape, dy.dtype)
    pl.avg_pool_bwd(dy, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, dx)
    return dx


def relu_forward(x: np.ndarray) -> np.ndarray:
    """y = x where x > 0 else 0, NaN kept; any shape."""
    _sync_threads(x.size)
    y = np.empty_like(x)
    pl.relu_fwd(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx = dy where x > 0 else 0; any shape."""
    _sync_threads(x.size)
    dx = np.empty_like(dy)
    pl.relu_bwd(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


def batch_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, mean: np.ndarray | None, var: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y (N,C,H,W), mean, var (C,) float64: batch statistics when mean is None (kernels/_norm.py)."""
    _sync_threads(x.size)
    return fused_forward(nl.bn_stats, nl.bn_apply, x, weight, bias, eps, mean, var)


def batch_norm_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float, training: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (N,C,H,W), dweight, dbias (C,) in x's dtype (kernels/_norm.py)."""
    _sync_threads(x.size)
    return fused_backward(nl.bn_grad_sums, nl.bn_apply, nl.bn_dx, dy, x, weight, mean, var, eps, training)


# ---------------------------------------------------------------------------------- warm-up
def compile_all(dtypes: tuple = (np.float32, np.float64), *, ladder: bool = False) -> dict[str, float]:
    """Compile (or load from the cache) every kernel for each dtype; returns seconds per dtype.

    Calls each path on tiny inputs: stride-1 and strided conv forward/backward with and
    without dx, both pools (general and 2x2 / stride-2 kernels), ReLU, batch norm; with
    ``ladder=True`` also every LADDER rung. The first run on a machine measures compilation;
    later runs measure loading from the cache.
    """
    timings: dict[str, float] = {}
    for dt in dtypes:
        dtype = np.dtype(dt)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        x = rng.standard_normal((1, 2, 5, 5)).astype(dtype)
        w = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
        b = np.zeros(2, dtype)
        for stride in (1, 2):
            g = conv2d_geometry(x.shape, w.shape, stride, 1, 1)
            y = conv2d_forward(x, w, b, g)
            conv2d_backward(y, x, w, g, True)
            conv2d_backward(y, x, w, g, False)
            if ladder:
                for rung in LADDER.values():
                    if rung is not _flat_rung or stride == 1:
                        rung(x, w, b, g)
        wd = rng.standard_normal((4, 1, 3, 3)).astype(dtype)  # depthwise, 2 filters per channel
        for stride in (1, 2):  # the flat kernels, then the row ones
            dg = conv2d_geometry(x.shape, wd.shape, stride, 1, 1, groups=2)
            yd = depthwise_conv2d_forward(x, wd, None, dg)
            depthwise_conv2d_backward(yd, x, wd, dg, True)
        for padding in (1, 0):  # the general pooling kernels, then the 2x2 / stride-2 ones
            pg = pool2d_geometry(x.shape, 2, 2, padding)
            y, am = max_pool2d_forward(x, pg)
            max_pool2d_backward(y, am, pg)
            avg_pool2d_backward(avg_pool2d_forward(x, pg), pg)
        relu_backward(x, relu_forward(x))
        one = np.ones(2, dtype)
        y, mu, var = batch_norm_forward(x, one, one, 1e-5, None, None)
        batch_norm_backward(y, x, one, mu, var, 1e-5, True)
        timings[dtype.name] = time.perf_counter() - t0
    return timings
