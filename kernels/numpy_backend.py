"""Backend ``numpy``: vectorised kernels — im2col + one BLAS matrix product, stride tricks.

Compare with ``python_backend.py``: the arithmetic is identical, but the loops moved out of the
interpreter.

* **Convolution is a matrix product.** Every output pixel is a dot product between one
  flattened C x R x S input patch and one flattened filter. Lay all patches side by side
  as the columns of a matrix (``im2col``) and the whole layer becomes a single
  ``(K, C*R*S) @ (C*R*S, N*Ho*Wo)`` GEMM, which BLAS runs with SIMD, cache blocking and
  threads. On catnet's thin layers (K = 16-64 rows, a 27-576-deep reduction) that product
  reaches only 14-45% of the machine's peak (docs/ladder.md): square GEMMs are what BLAS
  is tuned for.
* **Stride tricks make the patch matrix a view.** ``as_strided`` describes the 6-d array
  ``patches[n, c, r, s, i, j] = xpad[n, c, i*sh + r*dh, j*sw + s*dw]`` without copying; the
  single copy happens when BLAS needs it contiguous. Its cost is memory: the column matrix is
  R*S times larger than x (9x for 3x3), and that traffic is what faster backends avoid.
* **Backward is two more GEMMs.** ``dW = dY @ cols^T`` and ``dcols = W^T @ dY``; ``col2im``
  then adds each column back to the input positions it was read from (the adjoint of
  ``im2col``), with one vectorised slice-add per (r, s) tap instead of a loop per pixel.
* **Pooling** uses the same strided window view; ``argmax`` over the flattened window keeps the
  contract's tie rule for free (``np.argmax`` returns the *first* maximum and treats NaN as the
  maximum).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._geometry import Conv2dGeometry, Pool2dGeometry
from ._norm import dx_constants

NAME = "numpy"
DESCRIPTION = "vectorised numpy: im2col/col2im with stride tricks + one BLAS GEMM"


#: Largest padded copy _pad builds (im2col, pooling): a padding of 2**39 asks for exabytes.
PAD_BYTES_MAX = 1 << 32


def _pad(x: np.ndarray, ph: int, pw: int, value: float = 0.0) -> np.ndarray:
    """x (N,C,H,W) -> (N,C,H+2ph,W+2pw), border filled with ``value``; no copy when no padding."""
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    size = n * c * (h + 2 * ph) * (w + 2 * pw) * x.itemsize
    if size > PAD_BYTES_MAX:  # the other backends never build the padded copy
        raise ValueError(
            f"padding ({ph}, {pw}): the numpy backend would build a padded copy of {size / 2**30:.3g} GiB "
            f"(more than {PAD_BYTES_MAX / 2**30:g} GiB); use the cython backend for such paddings"
        )
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph : ph + h, pw : pw + w] = x
    return out


def _windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int) -> np.ndarray:
    """Read-only strided view v[n, c, r, s, i, j] = xp[n, c, i*sh + r*dh, j*sw + s*dw] (no copy)."""
    sn, sc, sy, sx = xp.strides
    return as_strided(
        xp,
        shape=(xp.shape[0], xp.shape[1], kh, kw, ho, wo),
        strides=(sn, sc, sy * dh, sx * dw, sy * sh, sx * sw),
        writeable=False,
    )


def _im2col(x: np.ndarray, g: Conv2dGeometry) -> np.ndarray:
    """x (N,C,H,W) -> cols (C*R*S, N*Ho*Wo), contiguous: the one real copy of im2col."""
    v = _windows(_pad(x, g.ph, g.pw), g.r, g.s, g.sh, g.sw, g.dh, g.dw, g.ho, g.wo)
    # (N,C,R,S,Ho,Wo) -> (C,R,S,N,Ho,Wo): rows index a filter tap, columns an output pixel.
    return np.ascontiguousarray(v.transpose(1, 2, 3, 0, 4, 5)).reshape(g.c * g.r * g.s, g.n * g.ho * g.wo)


def _scatter_add_windows(
    dxp: np.ndarray, contrib: np.ndarray, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int
) -> None:
    """Adjoint of ``_windows``: dxp[n, c, i*sh + r*dh, j*sw + s*dw] += contrib[n, c, r, s, i, j].

    One strided slice-add per (r, s) tap: positions within one tap never collide (distinct
    i, j map to distinct rows/cols), so plain ``+=`` on the slice is exact.
    """
    kh, kw = contrib.shape[2], contrib.shape[3]
    for r in range(kh):
        for s in range(kw):
            rows = slice(r * dh, r * dh + sh * (ho - 1) + 1, sh)
            cols = slice(s * dw, s * dw + sw * (wo - 1) + 1, sw)
            dxp[:, :, rows, cols] += contrib[:, :, r, s]


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """y (N,K,Ho,Wo) = W (K, CRS) @ im2col(x) (CRS, N*Ho*Wo), plus bias."""
    cols = _im2col(x, g)
    y = w.reshape(g.k, -1) @ cols  # (K, N*Ho*Wo): the single GEMM
    if b is not None:
        y += b[:, None]
    return np.ascontiguousarray(y.reshape(g.k, g.n, g.ho, g.wo).transpose(1, 0, 2, 3))


def conv2d_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dW = dY (K, N*Ho*Wo) @ cols^T; dcols = W^T @ dY, then col2im -> dx. From dy (N,K,Ho,Wo),
    x (N,C,H,W), w (K,C,R,S); returns (dx (N,C,H,W) or None, dw (K,C,R,S), db (K,)), x's dtype."""
    dy_mat = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(g.k, -1)  # (K, N*Ho*Wo)
    db = dy_mat.sum(axis=1)
    dw = (dy_mat @ _im2col(x, g).T).reshape(g.w_shape)
    if not need_dx:
        return None, dw, db
    dcols = w.reshape(g.k, -1).T @ dy_mat  # (CRS, N*Ho*Wo)
    # col2im. Accumulate in (C, N, H, W) order so that each tap's block dcols[c, r, s] is a
    # contiguous (N, Ho, Wo) slab: the strided slice-adds then read memory sequentially
    # (about 20% faster than reading through an (N, C, ...) transposed view, measured on catnet).
    contrib = dcols.reshape(g.c, g.r, g.s, g.n, g.ho, g.wo).transpose(0, 3, 1, 2, 4, 5)
    dxp = np.zeros((g.c, g.n, g.h + 2 * g.ph, g.w + 2 * g.pw), dtype=x.dtype)
    _scatter_add_windows(dxp, contrib, g.sh, g.sw, g.dh, g.dw, g.ho, g.wo)
    dx = np.ascontiguousarray(dxp[:, :, g.ph : g.ph + g.h, g.pw : g.pw + g.w].transpose(1, 0, 2, 3))
    return dx, dw, db


def _pool_windows(x: np.ndarray, g: Pool2dGeometry, pad_value: float) -> np.ndarray:
    """Window view (N, C, Ho, Wo, kh*kw) of the padded input (one copy for the reshape)."""
    v = _windows(_pad(x, g.ph, g.pw, pad_value), g.kh, g.kw, g.sh, g.sw, 1, 1, g.ho, g.wo)
    return v.transpose(0, 1, 4, 5, 2, 3).reshape(g.n, g.c, g.ho, g.wo, g.kh * g.kw)


def _depthwise_taps(xp: np.ndarray, g: Conv2dGeometry):
    """(r, s, view) for every filter tap: view[n, k, i, j] = xp[n, k, i*sh + r*dh, j*sw + s*dw]."""
    for r in range(g.r):
        for s in range(g.s):
            rows = slice(r * g.dh, r * g.dh + (g.ho - 1) * g.sh + 1, g.sh)
            cols = slice(s * g.dw, s * g.dw + (g.wo - 1) * g.sw + 1, g.sw)
            yield r, s, (slice(None), slice(None), rows, cols)


def _per_output_channel(xp: np.ndarray, g: Conv2dGeometry) -> np.ndarray:
    """(N,C,..) -> (N,K,..): output channel k reads input channel k // (K/C)."""
    m = g.k // g.c
    return xp if m == 1 else np.repeat(xp, m, axis=1)


def depthwise_conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """Depthwise (groups = C): no sum over channels, so no GEMM to hand it to. Instead one
    whole-array multiply-add per filter tap (R*S of them), each over every image and channel at
    once. x (N,C,H,W), w (K,1,R,S), b (K,) or None, one float dtype -> y (N,K,Ho,Wo), same dtype."""
    xp = _per_output_channel(_pad(x, g.ph, g.pw), g)
    y = np.zeros(g.y_shape, x.dtype)
    with np.errstate(invalid="ignore"):  # 0 * inf in the padding is NaN by contract, not a mistake
        for r, s, taps in _depthwise_taps(xp, g):
            y += w[:, 0, r, s][None, :, None, None] * xp[taps]
    if b is not None:
        y += b[None, :, None, None]
    return y


def depthwise_conv2d_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """dy (N,K,Ho,Wo), x (N,C,H,W), w (K,1,R,S), one float dtype -> (dx (N,C,H,W) or None,
    dw (K,1,R,S), db (K,)), same dtype. Per tap: dW[k, 0, r, s] = sum of dy * that tap's view of
    x; dx gets dy * w added back to the same view of a padded gradient (the adjoint), whose
    padding is then cut off."""
    xp = _per_output_channel(_pad(x, g.ph, g.pw), g)
    dw = np.empty_like(w)
    dxp = np.zeros(xp.shape, x.dtype) if need_dx else None
    with np.errstate(invalid="ignore"):  # as in the forward
        for r, s, taps in _depthwise_taps(xp, g):
            dw[:, 0, r, s] = np.einsum("nkij,nkij->k", dy, xp[taps])
            if dxp is not None:
                dxp[taps] += dy * w[:, 0, r, s][None, :, None, None]
    db = dy.sum(axis=(0, 2, 3))
    if dxp is None:
        return None, dw, db
    m = g.k // g.c
    if m > 1:  # the M output channels of one input channel each sent it a gradient
        dxp = dxp.reshape(g.n, g.c, m, *dxp.shape[2:]).sum(axis=2)
    return np.ascontiguousarray(dxp[:, :, g.ph : g.ph + g.h, g.pw : g.pw + g.w]), dw, db


def max_pool2d_forward(x: np.ndarray, g: Pool2dGeometry) -> tuple[np.ndarray, np.ndarray]:
    """y (N,C,Ho,Wo) = window max; argmax int64 = flat h*W + w of the first maximum (NaN wins)."""
    win = _pool_windows(x, g, -np.inf)
    pos = win.argmax(axis=-1)  # first maximum in row-major window order; first NaN if any
    y = np.take_along_axis(win, pos[..., None], axis=-1)[..., 0]
    i = np.arange(g.ho)[:, None]
    j = np.arange(g.wo)[None, :]
    h = i * g.sh - g.ph + pos // g.kw
    ww = j * g.sw - g.pw + pos % g.kw
    if g.ph or g.pw:
        # Padding is -inf, so it can only tie with a window whose real values are all -inf;
        # the contract says padding never wins, so the first real element takes it.
        in_pad = (h < 0) | (h >= g.h) | (ww < 0) | (ww >= g.w)
        if in_pad.any():
            h = np.where(in_pad, np.maximum(i * g.sh - g.ph, 0), h)
            ww = np.where(in_pad, np.maximum(j * g.sw - g.pw, 0), ww)
    argmax = (h * g.w + ww).astype(np.int64)
    return np.ascontiguousarray(y), np.ascontiguousarray(argmax)


def max_pool2d_backward(dy: np.ndarray, argmax: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """dx (N,C,H,W): scatter-add dy to the winners with one ``bincount`` over global indices."""
    plane = g.h * g.w
    offsets = (np.arange(g.n * g.c, dtype=np.int64) * plane).reshape(g.n, g.c, 1, 1)
    flat = (argmax + offsets).ravel()
    # bincount sums colliding indices (overlapping windows) correctly, unlike fancy-index +=.
    dx = np.bincount(flat, weights=dy.ravel(), minlength=g.n * g.c * plane)
    return dx.astype(dy.dtype, copy=False).reshape(g.x_shape)


def avg_pool2d_forward(x: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """x (N,C,H,W) -> y (N,C,Ho,Wo), x's dtype: window sum / (kh*kw) over the zero-padded input."""
    v = _windows(_pad(x, g.ph, g.pw, 0.0), g.kh, g.kw, g.sh, g.sw, 1, 1, g.ho, g.wo)
    # One whole-array add per tap (v[:, :, r, s] is a strided (N, C, Ho, Wo) view). Reducing
    # the 6-d view over its axes (2, 3) in one call makes numpy run a tiny inner loop per
    # window instead: 22 ms vs 1.9 ms on catnet's first pool (32, 16, 64, 64), one thread.
    y = v[:, :, 0, 0].copy()
    for r in range(g.kh):
        for s in range(g.kw):
            if r or s:
                y += v[:, :, r, s]
    y /= g.kh * g.kw
    return y


def avg_pool2d_backward(dy: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """dy (N,C,Ho,Wo) -> dx (N,C,H,W), dy's dtype: every window spreads dy / (kh*kw) over its
    positions; the padding's share is dropped."""
    share = dy / (g.kh * g.kw)
    contrib = np.broadcast_to(share[:, :, None, None], (g.n, g.c, g.kh, g.kw, g.ho, g.wo))
    dxp = np.zeros((g.n, g.c, g.h + 2 * g.ph, g.w + 2 * g.pw), dtype=dy.dtype)
    _scatter_add_windows(dxp, contrib, g.sh, g.sw, 1, 1, g.ho, g.wo)
    return np.ascontiguousarray(dxp[:, :, g.ph : g.ph + g.h, g.pw : g.pw + g.w])


def relu_forward(x: np.ndarray) -> np.ndarray:
    """y = max(x, 0), any shape, x's dtype. np.maximum propagates NaN (unlike ``x * (x > 0)``,
    which would turn NaN into 0 or NaN*0). ``out=`` keeps a 0-d input an array (np.maximum
    alone returns a numpy scalar for it)."""
    return np.maximum(x, 0, out=np.empty_like(x))


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx = dy where x > 0 else 0; dy, x and dx of one shape and dtype."""
    return np.where(x > 0, dy, 0).astype(dy.dtype, copy=False)


# ------------------------------------------------------------------------------ batch norm
# The arrays are viewed as (N, C, H*W): every reduction then runs along contiguous rows (numpy's
# pairwise / SIMD loops), and the N per-image row sums of a channel are added in float64.
# Reducing over axes (0, 2, 3) at once, as x.mean / x.var do, strides through memory and
# allocates more temporaries.


def _channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (C,): sum over n, s of a[n, c, s] * b[n, c, s].

    The products are materialised and summed with numpy's pairwise summation. ``np.einsum`` would
    skip the temporary (2x faster) but accumulates each row in float32 in order: a relative error
    of 1e-4 on a channel of 3 million values, against 3e-8 here (measured)."""
    return np.multiply(a, b).sum(axis=2).sum(axis=0, dtype=np.float64)


@np.errstate(invalid="ignore")  # inf - inf = NaN is data here (the contract), not a warning
def batch_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, mean: np.ndarray | None, var: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y (N,C,H,W), mean, var (C,) float64: batch statistics when mean is None (two passes)."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    if mean is None:
        m = n * x3.shape[2]
        mean = x3.sum(axis=2).sum(axis=0, dtype=np.float64) / m
        y = x3 - mean.astype(x.dtype)[:, None]
        var = _channel_dot(y, y) / m
    else:
        y = x3 - mean.astype(x.dtype)[:, None]
    y *= (weight / np.sqrt(var + eps)).astype(x.dtype)[:, None]
    y += bias[:, None]
    return y.reshape(x.shape), mean, var


@np.errstate(invalid="ignore")
def batch_norm_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float, training: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (N,C,H,W), dweight, dbias (C,) in x's dtype; dx = (dy - k0 - (x - mean) * k1) * scale."""
    n, c = x.shape[:2]
    g = dy.reshape(n, c, -1)
    centred = x.reshape(n, c, -1) - mean.astype(x.dtype)[:, None]
    sum_dy = g.sum(axis=2).sum(axis=0, dtype=np.float64)
    k0, k1, scale, dweight = dx_constants(weight, var, eps, sum_dy, _channel_dot(g, centred), g.shape[0] * g.shape[2],
                                          training)
    if training:
        dx = centred  # reused: (x - mean) * k1 + k0, then dy minus that
        dx *= k1.astype(x.dtype)[:, None]
        dx += k0.astype(x.dtype)[:, None]
        np.subtract(g, dx, out=dx)
    else:
        dx = g.copy()
    dx *= scale.astype(x.dtype)[:, None]
    return dx.reshape(x.shape), dweight.astype(x.dtype), sum_dy.astype(x.dtype)
