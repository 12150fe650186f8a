"""fastconv.kernels: the kernel contract, validation and dispatch to a backend.

Every op here validates and normalises its arguments *once*, then calls the chosen backend
(``backend=`` or the process default) with C-contiguous float32/float64 arrays of one dtype
and a geometry object. Layout: NCHW.

=====================  ==========================================  =============================
op                     inputs                                      returns
=====================  ==========================================  =============================
conv2d_forward         x (N,C,H,W), weight (K,C/groups,R,S),       y (N,K,Ho,Wo)
                       bias (K,), [groups]
conv2d_backward        dy (N,K,Ho,Wo), x, weight, [groups]         dx (N,C,H,W) | None,
                                                                   dw (K,C/groups,R,S), db (K,)
max_pool2d_forward     x, kernel_size, stride, padding,            y (N,C,Ho,Wo), argmax int64
                       [ceil_mode= (keyword)]
max_pool2d_backward    dy, argmax, input_shape                     dx (N,C,H,W)
avg_pool2d_forward     x, kernel_size, stride, padding, [ceil_mode, y
                       count_include_pad, divisor_override]
avg_pool2d_backward    dy, input_shape, kernel_size, stride, pad,  dx
                       [the same three]
relu_forward           x                                           y = max(x, 0)
relu_backward          dy, x                                       dx = dy where x > 0, else 0
batch_norm_forward     x, weight (C,), bias (C,), eps,             y, mean (C,), var (C,)
                       [mean (C,), var (C,)]
batch_norm_backward    dy, x, weight, mean, var, eps, training     dx, dweight (C,), dbias (C,)
=====================  ==========================================  =============================

* ``Ho = floor((H + 2p - d(R-1) - 1) / s) + 1``; stride/padding/dilation are ints or pairs.
* ``groups``: backends implement groups = 1 (``conv2d_*``) and groups = C, depthwise, weight
  (K, 1, R, S) (``depthwise_conv2d_*``, same arguments; optional for a third-party backend:
  ``OPTIONAL_FUNCTIONS``); other groupings, and groups = C on a backend without depthwise
  kernels, run here, one groups = 1 call per group.
* Pooling padding is at most half the window; padding never wins a max and counts as zeros
  in the average divisor (``count_include_pad=True``). PyTorch's ``ceil_mode``,
  ``count_include_pad=False`` and ``divisor_override`` are applied here, never in a backend:
  a ceil-mode overhang is appended to the input (edge copies for max, zeros for average) and an
  average's divisors are corrected per window, so backends only see floor-mode problems.
* ``argmax[n, c, i, j]`` is the flat index ``h * W + w`` of the winning input element in
  plane ``x[n, c]``. Ties: the first maximum in row-major window order wins. NaN wins over
  any number (the first NaN in window order), so NaN propagates as in PyTorch.
* Batch normalisation, per channel c over (n, h, w): ``y = (x - mean) / sqrt(var + eps) *
  weight + bias``. Without mean/var (training) they are the batch mean and *biased* variance
  (two passes: the variance sums squares of ``x - mean``); with them (inference: running
  statistics) they are used as given. mean and var are float64 in and out; every other output
  has x's dtype. Backward, with ``xhat = (x - mean) / sqrt(var + eps)`` and M = N*H*W:
  ``dbias = sum(dy)``, ``dweight = sum(dy * xhat)``, and ``dx = weight / sqrt(var + eps) *
  (dy - dbias / M - xhat * dweight / M)`` when the statistics were the batch's (``training``),
  else the same without the two mean terms.
* Outputs have the input dtype. float64 agrees with the ``python`` reference to ~1e-10
  relative; float32 agrees with float64 within the tolerance documented in ``tests/``.
* Conv padding is zeros that take part in the arithmetic: where an infinite or NaN weight
  (forward) or dy (dweight) meets a padded position, the product is NaN (0 * inf), in every
  backend as in PyTorch. Kernels that skip padded taps for speed (numba's strided ones) write
  the zeros out first when a weight or dy is not finite. dx has no padded entries to keep.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace

import numpy as np

from ._geometry import (
    Conv2dGeometry,
    IntOrPair,
    Pool2dGeometry,
    conv2d_geometry,
    conv_output_size,
    conv_padding,
    normalize_pair,
    pool2d_geometry,
    pool_window_counts,
)
from ._registry import (
    BACKEND_FUNCTIONS,
    OPTIONAL_FUNCTIONS,
    available_backends,
    backend_errors,
    backend_module,
    get_backend,
    get_default_backend,
    has_depthwise,
    known_backends,
    register_backend,
    set_default_backend,
)
from ._threads import get_num_threads, register_thread_hook, set_num_threads
from ._validate import as_argmax, as_divisor, as_flag, as_float_array, as_shape4, require_shape, same_dtype

__all__ = [
    "BACKEND_FUNCTIONS",
    "OPTIONAL_FUNCTIONS",
    "Conv2dGeometry",
    "Pool2dGeometry",
    "available_backends",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "backend_errors",
    "batch_norm_backward",
    "batch_norm_forward",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_geometry",
    "conv_output_size",
    "conv_padding",
    "get_backend",
    "get_default_backend",
    "get_num_threads",
    "known_backends",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "normalize_pair",
    "pool2d_geometry",
    "register_backend",
    "register_thread_hook",
    "relu_backward",
    "relu_forward",
    "set_default_backend",
    "set_num_threads",
]


def conv2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """2-d cross-correlation (what deep learning calls convolution), NCHW.

    x: (N, C, H, W), weight: (K, C / groups, R, S), bias: (K,) or None, all float32 or all
    float64. Returns y: (N, K, Ho, Wo) of the same dtype,
    ``y[n,k,i,j] = bias[k] + sum_{c,r,s} x[n, c, i*sh - ph + r*dh, j*sw - pw + s*dw] * weight[k,c,r,s]``
    with zero padding (groups = 1; with groups, c runs over the group's input channels and
    weight's second index counts from the group's first). ``padding`` also takes ``"valid"``
    (0) and ``"same"`` (Ho, Wo = H, W; see :func:`conv_padding`). ``groups`` as in PyTorch:
    output channels [j*K/g, (j+1)*K/g) see only input channels [j*C/g, (j+1)*C/g); ``groups = C``
    (depthwise) runs the backend's depthwise kernel, other groupings one backend call per group.
    """
    x = as_float_array("x", x, 4)
    weight = as_float_array("weight", weight, 4)
    if bias is not None:
        bias = as_float_array("bias", bias, 1)
    dtype = same_dtype(x=x, weight=weight, bias=bias)
    g = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    if bias is not None:
        require_shape("bias", bias, (g.k,), "one value per output channel K of weight")
    if g.n == 0:
        return np.zeros(g.y_shape, dtype)
    module = backend_module(backend)
    if g.groups == 1:
        return module.conv2d_forward(x, weight, bias, g)
    if g.groups == g.c and has_depthwise(module):
        return module.depthwise_conv2d_forward(x, weight, bias, g)
    one = _one_group(g)
    parts = [
        module.conv2d_forward(np.ascontiguousarray(x[:, cs]), weight[ks], None if bias is None else bias[ks], one)
        for cs, ks in _group_slices(g)
    ]
    return np.concatenate(parts, axis=1)


def conv2d_backward(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    need_dx: bool = True,
    backend: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of conv2d_forward: returns (dx, dweight, dbias).

    dy: (N, K, Ho, Wo), x: (N, C, H, W), weight: (K, C / groups, R, S), one float dtype.
    dx: (N, C, H, W), or None when ``need_dx=False`` (the first layer of a network does not
    need it, and skipping it saves a third of the work). dweight: weight's shape, dbias: (K,).
    """
    dy = as_float_array("dy", dy, 4)
    x = as_float_array("x", x, 4)
    weight = as_float_array("weight", weight, 4)
    dtype = same_dtype(dy=dy, x=x, weight=weight)
    need_dx = as_flag("need_dx", need_dx)
    g = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    require_shape("dy", dy, g.y_shape, "the conv2d output shape for x and weight")
    if g.n == 0:
        dx = np.zeros(g.x_shape, dtype) if need_dx else None
        return dx, np.zeros(g.w_shape, dtype), np.zeros((g.k,), dtype)
    module = backend_module(backend)
    if g.groups == 1:
        return module.conv2d_backward(dy, x, weight, g, need_dx)
    if g.groups == g.c and has_depthwise(module):
        return module.depthwise_conv2d_backward(dy, x, weight, g, need_dx)
    one = _one_group(g)
    part = np.ascontiguousarray
    grads = [
        module.conv2d_backward(part(dy[:, ks]), part(x[:, cs]), weight[ks], one, need_dx)
        for cs, ks in _group_slices(g)
    ]
    dx = np.concatenate([d for d, _, _ in grads], axis=1) if need_dx else None
    return dx, np.concatenate([w for _, w, _ in grads]), np.concatenate([b for _, _, b in grads])


def _group_slices(g: Conv2dGeometry) -> list[tuple[slice, slice]]:
    """(input channels, output channels) of each of the ``g.groups`` groups."""
    ci, co = g.c // g.groups, g.k // g.groups
    return [(slice(j * ci, (j + 1) * ci), slice(j * co, (j + 1) * co)) for j in range(g.groups)]


def _one_group(g: Conv2dGeometry) -> Conv2dGeometry:
    """The geometry of one group of ``g`` as an ungrouped convolution."""
    return replace(g, c=g.c // g.groups, k=g.k // g.groups, groups=1)


def _grown_to(x: np.ndarray, g: Pool2dGeometry, mode: str) -> np.ndarray:
    """x (N, C, H, W) extended at the bottom and right to the ceil-mode plane (g.h, g.w) that the
    floor-mode kernels pool: ``mode`` "edge" (max: copies never win) or "constant" (average: zeros)."""
    return np.pad(x, ((0, 0), (0, 0), (0, g.h - x.shape[2]), (0, g.w - x.shape[3])), mode=mode)


def max_pool2d_forward(
    x: np.ndarray,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    *,
    ceil_mode: bool = False,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling, NCHW. x: (N, C, H, W) float32/float64.

    Returns ``(y, argmax)``: y (N, C, Ho, Wo) of x's dtype, argmax (N, C, Ho, Wo) int64 flat
    indices ``h * W + w`` into each input plane. stride defaults to kernel_size. ``ceil_mode``
    rounds Ho and Wo up as PyTorch does (a last, partial window is kept).
    """
    x = as_float_array("x", x, 4)
    g = pool2d_geometry(x.shape, kernel_size, stride, padding, ceil_mode)
    if g.n == 0:
        return np.zeros(g.y_shape, x.dtype), np.zeros(g.y_shape, np.int64)
    h, w = x.shape[2:]
    if (g.h, g.w) == (h, w):
        return backend_module(backend).max_pool2d_forward(x, g)
    # Ceil mode: the backend pools x with its last row / column repeated into the overhang. A copy
    # never wins (the original is earlier in the window and ties go to the first), so every
    # argmax names a real element; it only has to be re-expressed in x's own plane width.
    grown = _grown_to(x, g, "edge")
    y, argmax = backend_module(backend).max_pool2d_forward(grown, g)
    rows, cols = np.divmod(argmax, g.w)
    return y, rows * w + cols


def max_pool2d_backward(
    dy: np.ndarray,
    argmax: np.ndarray,
    input_shape: tuple[int, int, int, int],
    *,
    backend: str | None = None,
) -> np.ndarray:
    """Gradient of max pooling: scatter-add ``dy`` to the winning positions.

    dy: (N, C, Ho, Wo) float, argmax: (N, C, Ho, Wo) integer indices in [0, H*W) as returned
    by max_pool2d_forward, input_shape: (N, C, H, W). Returns dx (N, C, H, W), dy's dtype.
    The pooling window is not an argument, so (Ho, Wo) is not checked against (H, W) (padding
    can make Ho exceed H): every dy value goes to the input position argmax names, and those
    are range-checked, so no dy shape can make a kernel write outside dx.
    """
    dy = as_float_array("dy", dy, 4)
    n, c, h, w = as_shape4("input_shape", input_shape)
    if (n, c) != dy.shape[:2]:
        raise ValueError(
            f"dy: expected batch and channels {(n, c)} to match input_shape {tuple(input_shape)}, "
            f"got dy of shape {dy.shape}"
        )
    if min(c, h, w) <= 0:
        raise ValueError(f"input_shape: expected positive C, H, W, got {tuple(input_shape)}")
    argmax = as_argmax("argmax", argmax, dy.shape, h * w)
    if n == 0:
        return np.zeros((n, c, h, w), dy.dtype)
    g = Pool2dGeometry(n, c, h, w, 1, 1, 1, 1, 0, 0, dy.shape[2], dy.shape[3])
    return backend_module(backend).max_pool2d_backward(dy, argmax, g)


def avg_pool2d_forward(
    x: np.ndarray,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """Average pooling, NCHW, with PyTorch's arguments and divisors.

    x: (N, C, H, W) float32/float64 -> y: (N, C, Ho, Wo), same dtype. The backends divide every
    window by kh * kw (padded zeros count); ``ceil_mode``, ``count_include_pad=False`` and
    ``divisor_override`` are applied here, as a per-window rescaling of that result.
    """
    x = as_float_array("x", x, 4)
    g, scale = _avg_pool_problem(x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    if g.n == 0:
        return np.zeros(g.y_shape, x.dtype)
    h, w = x.shape[2:]
    if (g.h, g.w) != (h, w):  # ceil mode: zeros in the overhang; the divisor ignores them
        x = _grown_to(x, g, "constant")
    y = backend_module(backend).avg_pool2d_forward(x, g)
    if scale is not None:
        y *= scale.astype(y.dtype)
    return y


def avg_pool2d_backward(
    dy: np.ndarray,
    input_shape: tuple[int, int, int, int],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """Gradient of avg_pool2d_forward (same arguments). dy: (N, C, Ho, Wo) -> dx: (N, C, H, W),
    dy's dtype."""
    dy = as_float_array("dy", dy, 4)
    shape = as_shape4("input_shape", input_shape)
    g, scale = _avg_pool_problem(shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    require_shape("dy", dy, g.y_shape, f"the pooled shape of input_shape {shape}")
    if g.n == 0:
        return np.zeros(shape, dy.dtype)
    if scale is not None:
        dy = dy * scale.astype(dy.dtype)
    dx = backend_module(backend).avg_pool2d_backward(dy, g)
    if g.x_shape != shape:  # ceil mode: drop the overhang's gradient
        dx = np.ascontiguousarray(dx[:, :, : shape[2], : shape[3]])
    return dx


def _avg_pool_problem(
    shape: tuple[int, ...],
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    padding: IntOrPair,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> tuple[Pool2dGeometry, np.ndarray | None]:
    """The floor-mode geometry the backend solves, and the (Ho, Wo) float64 factors that turn its
    ``sum / (kh * kw)`` into PyTorch's average (None when they are all 1, the common case)."""
    g = pool2d_geometry(shape, kernel_size, stride, padding, ceil_mode)
    count_include_pad = as_flag("count_include_pad", count_include_pad)
    area = g.kh * g.kw
    divisor_override = as_divisor("divisor_override", divisor_override)
    if divisor_override is not None:
        return g, (None if divisor_override == area else np.full((g.ho, g.wo), area / divisor_override))
    h, w = int(shape[2]), int(shape[3])
    rows = pool_window_counts(h, g.kh, g.sh, g.ph, g.ho, count_include_pad)
    cols = pool_window_counts(w, g.kw, g.sw, g.pw, g.wo, count_include_pad)
    if min(rows) == g.kh and min(cols) == g.kw:
        return g, None
    return g, area / np.outer(np.array(rows, np.float64), np.array(cols, np.float64))


def relu_forward(x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """y = max(x, 0) elementwise; any shape, float32/float64. NaN propagates."""
    x = as_float_array("x", x)
    if x.size == 0:
        return np.zeros(x.shape, x.dtype)
    return backend_module(backend).relu_forward(x)


def relu_backward(dy: np.ndarray, x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """dx = dy where x > 0, else 0. dy and x: same shape and float dtype."""
    dy = as_float_array("dy", dy)
    x = as_float_array("x", x)
    same_dtype(dy=dy, x=x)
    require_shape("dy", dy, x.shape, "the shape of x")
    if x.size == 0:
        return np.zeros(x.shape, x.dtype)
    return backend_module(backend).relu_backward(dy, x)


def _norm_args(
    x: np.ndarray, weight: np.ndarray, eps: float, mean: np.ndarray | None, var: np.ndarray | None, training: bool
) -> tuple[np.ndarray, float, np.ndarray | None, np.ndarray | None]:
    """Shared checks of the batch-norm ops: weight (C,) of x's dtype, eps, the statistics (C,)."""
    c = x.shape[1]
    if c == 0:  # statistics of no channel: nothing to normalise, and the kernels expect C >= 1
        raise ValueError(f"x: expected a positive size for C, got shape {x.shape}")
    weight = as_float_array("weight", weight, 1)
    same_dtype(x=x, weight=weight)
    require_shape("weight", weight, (c,), "one value per channel of x")
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real) or not (0 < eps < math.inf):
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    stats = []
    for name, value in (("mean", mean), ("var", var)):
        if value is None:
            stats.append(None)
            continue
        value = as_float_array(name, value, 1).astype(np.float64, copy=False)
        require_shape(name, value, (c,), "one value per channel of x")
        stats.append(value)
    if (stats[0] is None) != (stats[1] is None):
        raise ValueError("mean and var: expected both (given statistics) or neither (batch statistics)")
    if stats[1] is not None and bool(np.any(stats[1] < 0)):
        raise ValueError(f"var: expected variances >= 0, got a minimum of {float(np.nanmin(stats[1]))}")
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if training and m <= 1:
        raise ValueError(
            f"x: expected more than 1 value per channel for batch statistics (N*H*W > 1), got shape {x.shape}"
        )
    return weight, float(eps), stats[0], stats[1]


def batch_norm_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    eps: float = 1e-5,
    mean: np.ndarray | None = None,
    var: np.ndarray | None = None,
    *,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalisation, NCHW: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel.

    x: (N, C, H, W) float32/float64; weight, bias: (C,) of x's dtype. mean and var: both None to
    normalise with the batch statistics (training; needs N*H*W > 1), or both (C,) arrays (e.g.
    running statistics; var >= 0). Returns ``(y, mean, var)``: y (N, C, H, W) of x's dtype, and
    the float64 (C,) statistics used — the batch mean and *biased* variance when computed here.
    """
    x = as_float_array("x", x, 4)
    training = mean is None and var is None
    weight, eps, mean, var = _norm_args(x, weight, eps, mean, var, training)
    bias = as_float_array("bias", bias, 1)
    same_dtype(x=x, bias=bias)
    require_shape("bias", bias, (x.shape[1],), "one value per channel of x")
    if x.size == 0:
        return np.zeros(x.shape, x.dtype), mean, var
    return backend_module(backend).batch_norm_forward(x, weight, bias, eps, mean, var)


def batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float = 1e-5,
    training: bool = True,
    *,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient of batch_norm_forward. dy, x: (N, C, H, W), one float dtype; weight (C,); mean,
    var: the (C,) statistics the forward used; ``training``: True when they were x's batch
    statistics (they then depend on x, which adds two terms to dx). Returns ``(dx, dweight,
    dbias)``: (N, C, H, W) and (C,) twice, all of x's dtype."""
    dy = as_float_array("dy", dy, 4)
    x = as_float_array("x", x, 4)
    same_dtype(dy=dy, x=x)
    require_shape("dy", dy, x.shape, "the shape of x")
    training = as_flag("training", training)
    if mean is None or var is None:
        raise ValueError("mean and var: expected the (C,) statistics the forward pass used, got None")
    weight, eps, mean, var = _norm_args(x, weight, eps, mean, var, training)
    if x.size == 0:
        c = x.shape[1]
        return np.zeros(x.shape, x.dtype), np.zeros(c, x.dtype), np.zeros(c, x.dtype)
    return backend_module(backend).batch_norm_backward(dy, x, weight, mean, var, eps, training)
