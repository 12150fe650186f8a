"""Backend ``python``: the naive reference, one output element at a time.

Read this file first. Every other backend computes exactly these sums, only faster. The loops
here follow the mathematical definition as literally as possible:

* conv forward: for every output element, walk the C x R x S window and accumulate.
* conv backward: every forward multiply-add ``y += x * w`` contributes ``dy * w`` to ``dx``
  and ``dy * x`` to ``dw``; we replay the same loops and scatter those contributions.
* pooling: walk each window; skip positions that fall into the zero padding.

Arrays arrive already validated by ``fastconv.kernels`` (C-contiguous, one float dtype) with
a geometry object ``g`` that holds every size, so there are no checks here. Accumulation is
done in Python floats (float64), then stored in the array's dtype: this is the most accurate
backend, which is what a reference should be.

Speed: each multiply-add costs an interpreted loop iteration plus several numpy scalar
indexings: ~500 ns per multiply-add, i.e. about 4 million FLOP/s (0.0035-0.0047 GFLOP/s in
docs/bench.json), tens of thousands of times below the hardware. That gap is what the other backends close.
"""

from __future__ import annotations

import math

import numpy as np

from ._geometry import Conv2dGeometry, Pool2dGeometry

NAME = "python"
DESCRIPTION = "naive nested Python loops (the reference)"


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """y (N,K,Ho,Wo), x's dtype, = bias[k] + sum over (c, r, s) of x[window] * w, from x (N,C,H,W),
    w (K,C,R,S) and b (K,) or None; each sum accumulated in a Python float (float64)."""
    y = np.zeros(g.y_shape, dtype=x.dtype)
    for n in range(g.n):
        for k in range(g.k):
            for i in range(g.ho):
                for j in range(g.wo):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(g.c):
                        for r in range(g.r):
                            # Row of the input this tap reads; it may lie in the padding.
                            h = i * g.sh - g.ph + r * g.dh
                            for s in range(g.s):
                                ww = j * g.sw - g.pw + s * g.dw
                                # Zero padding: a tap outside the input reads 0.0, which is
                                # multiplied like any value (0 * inf = NaN, as in PyTorch and
                                # in every kernel that pads), not skipped.
                                inside = 0 <= h < g.h and 0 <= ww < g.w
                                xv = float(x[n, c, h, ww]) if inside else 0.0
                                acc += xv * float(w[k, c, r, s])
                    y[n, k, i, j] = acc
    return y


def conv2d_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Replay the forward loops; each tap ``y[n,k,i,j] += x[n,c,h,ww] * w[k,c,r,s]`` sends
    ``dy[n,k,i,j] * w[k,c,r,s]`` to ``dx[n,c,h,ww]`` and ``dy[n,k,i,j] * x[n,c,h,ww]`` to
    ``dw[k,c,r,s]``. Returns dx (N,C,H,W) or None, dw (K,C,R,S), db (K,)."""
    # Accumulate in float64 whatever the input dtype, then cast once at the end.
    dx = np.zeros(g.x_shape, dtype=np.float64) if need_dx else None
    dw = np.zeros(g.w_shape, dtype=np.float64)
    db = np.zeros((g.k,), dtype=np.float64)
    for n in range(g.n):
        for k in range(g.k):
            for i in range(g.ho):
                for j in range(g.wo):
                    grad = float(dy[n, k, i, j])
                    db[k] += grad  # the bias is added to every output element of channel k
                    for c in range(g.c):
                        for r in range(g.r):
                            h = i * g.sh - g.ph + r * g.dh
                            for s in range(g.s):
                                ww = j * g.sw - g.pw + s * g.dw
                                inside = 0 <= h < g.h and 0 <= ww < g.w
                                # the padding's zeros take part in dW as in the forward
                                dw[k, c, r, s] += grad * (float(x[n, c, h, ww]) if inside else 0.0)
                                if dx is not None and inside:  # padding has no gradient to keep
                                    dx[n, c, h, ww] += grad * float(w[k, c, r, s])
    dtype = x.dtype
    return (None if dx is None else dx.astype(dtype)), dw.astype(dtype), db.astype(dtype)


def depthwise_conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, g: Conv2dGeometry) -> np.ndarray:
    """Depthwise convolution (groups = C): conv2d_forward without the sum over input channels.

    x (N,C,H,W), w (K,1,R,S) with K = C*M, b (K,) or None -> y (N,K,Ho,Wo), x's dtype. Output
    channel k filters input channel k // M alone (M = K / C filters per input channel)."""
    m = g.k // g.c
    y = np.zeros(g.y_shape, dtype=x.dtype)
    for n in range(g.n):
        for k in range(g.k):
            c = k // m  # the one input channel this output channel reads
            for i in range(g.ho):
                for j in range(g.wo):
                    acc = 0.0 if b is None else float(b[k])
                    for r in range(g.r):
                        h = i * g.sh - g.ph + r * g.dh
                        for s in range(g.s):
                            ww = j * g.sw - g.pw + s * g.dw
                            inside = 0 <= h < g.h and 0 <= ww < g.w
                            xv = float(x[n, c, h, ww]) if inside else 0.0  # padding: a zero that multiplies
                            acc += xv * float(w[k, 0, r, s])
                    y[n, k, i, j] = acc
    return y


def depthwise_conv2d_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, g: Conv2dGeometry, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The depthwise forward's loops replayed, as conv2d_backward replays conv2d_forward's.
    dy (N,K,Ho,Wo), x (N,C,H,W), w (K,1,R,S), one float dtype. Returns dx (N,C,H,W) or None,
    dw (K,1,R,S), db (K,) in x's dtype (summed in Python floats)."""
    m = g.k // g.c
    dx = np.zeros(g.x_shape, dtype=np.float64) if need_dx else None
    dw = np.zeros(g.w_shape, dtype=np.float64)
    db = np.zeros((g.k,), dtype=np.float64)
    for n in range(g.n):
        for k in range(g.k):
            c = k // m
            for i in range(g.ho):
                for j in range(g.wo):
                    grad = float(dy[n, k, i, j])
                    db[k] += grad
                    for r in range(g.r):
                        h = i * g.sh - g.ph + r * g.dh
                        for s in range(g.s):
                            ww = j * g.sw - g.pw + s * g.dw
                            inside = 0 <= h < g.h and 0 <= ww < g.w
                            dw[k, 0, r, s] += grad * (float(x[n, c, h, ww]) if inside else 0.0)
                            if dx is not None and inside:
                                dx[n, c, h, ww] += grad * float(w[k, 0, r, s])
    dtype = x.dtype
    return (None if dx is None else dx.astype(dtype)), dw.astype(dtype), db.astype(dtype)


def max_pool2d_forward(x: np.ndarray, g: Pool2dGeometry) -> tuple[np.ndarray, np.ndarray]:
    """x (N,C,H,W) -> y (N,C,Ho,Wo), x's dtype: the max of each window; argmax (N,C,Ho,Wo) int64:
    flat index h*W + w of the winner.

    The first maximum in row-major window order wins a tie (we only replace on a strictly
    greater value). NaN beats any number, and the first NaN wins, so NaN propagates.
    """
    y = np.empty(g.y_shape, dtype=x.dtype)
    argmax = np.empty(g.y_shape, dtype=np.int64)
    for n in range(g.n):
        for c in range(g.c):
            for i in range(g.ho):
                for j in range(g.wo):
                    best = -math.inf
                    best_idx = -1
                    for r in range(g.kh):
                        h = i * g.sh - g.ph + r
                        if h < 0 or h >= g.h:
                            continue  # padding never wins
                        for s in range(g.kw):
                            ww = j * g.sw - g.pw + s
                            if ww < 0 or ww >= g.w:
                                continue
                            v = float(x[n, c, h, ww])
                            # best_idx < 0: the first real element always takes the lead, even -inf.
                            if best_idx < 0 or v > best or (math.isnan(v) and not math.isnan(best)):
                                best = v
                                best_idx = h * g.w + ww
                    y[n, c, i, j] = best
                    argmax[n, c, i, j] = best_idx
    return y, argmax


def max_pool2d_backward(dy: np.ndarray, argmax: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """dy and argmax (N,C,Ho,Wo) -> dx (N,C,H,W), dy's dtype (summed in float64): each dy element
    goes to its window's winner; overlapping windows add up."""
    dx = np.zeros(g.x_shape, dtype=np.float64)
    for n in range(g.n):
        for c in range(g.c):
            for i in range(g.ho):
                for j in range(g.wo):
                    idx = int(argmax[n, c, i, j])
                    h, ww = divmod(idx, g.w)
                    dx[n, c, h, ww] += float(dy[n, c, i, j])
    return dx.astype(dy.dtype)


def avg_pool2d_forward(x: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """y (N,C,Ho,Wo) = window sum / (kh*kw); padded zeros count in the divisor."""
    y = np.empty(g.y_shape, dtype=x.dtype)
    divisor = g.kh * g.kw
    for n in range(g.n):
        for c in range(g.c):
            for i in range(g.ho):
                for j in range(g.wo):
                    acc = 0.0
                    for r in range(g.kh):
                        h = i * g.sh - g.ph + r
                        if h < 0 or h >= g.h:
                            continue
                        for s in range(g.kw):
                            ww = j * g.sw - g.pw + s
                            if 0 <= ww < g.w:
                                acc += float(x[n, c, h, ww])
                    y[n, c, i, j] = acc / divisor
    return y


def avg_pool2d_backward(dy: np.ndarray, g: Pool2dGeometry) -> np.ndarray:
    """dx (N,C,H,W): each dy element is shared equally (1/(kh*kw)) by its window's real inputs."""
    dx = np.zeros(g.x_shape, dtype=np.float64)
    divisor = g.kh * g.kw
    for n in range(g.n):
        for c in range(g.c):
            for i in range(g.ho):
                for j in range(g.wo):
                    share = float(dy[n, c, i, j]) / divisor
                    for r in range(g.kh):
                        h = i * g.sh - g.ph + r
                        if h < 0 or h >= g.h:
                            continue
                        for s in range(g.kw):
                            ww = j * g.sw - g.pw + s
                            if 0 <= ww < g.w:
                                dx[n, c, h, ww] += share
    return dx.astype(dy.dtype)


def relu_forward(x: np.ndarray) -> np.ndarray:
    """y = x where x > 0, else 0, any shape, x's dtype; NaN stays NaN (``x != x`` is the NaN test)."""
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    for i in range(flat.size):
        v = float(flat[i])
        y[i] = v if (v > 0.0 or v != v) else 0.0
    return y.reshape(x.shape)


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx = dy where x > 0, else 0; dy and x of one shape and dtype, dx the same (the derivative at
    exactly 0 is taken as 0, like PyTorch)."""
    fdy, fx = dy.reshape(-1), x.reshape(-1)
    dx = np.empty_like(fdy)
    for i in range(fdy.size):
        dx[i] = fdy[i] if fx[i] > 0.0 else 0.0
    return dx.reshape(x.shape)


def batch_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, mean: np.ndarray | None, var: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = (x - mean) / sqrt(var + eps) * weight + bias per channel; batch statistics when mean is None.

    x (N, C, H, W) and weight, bias (C,) of one dtype; mean, var (C,) float64 or None. Returns
    y (N, C, H, W) in x's dtype and the mean, var (C,) float64 that were used.

    The definition, channel by channel: sum the M = N*H*W values for the mean, then the squares
    of their distances from it for the (biased) variance, then normalise every value.
    """
    n, c, h, w = x.shape
    if mean is None:
        m = n * h * w
        mean, var = np.zeros(c), np.zeros(c)
        for ch in range(c):
            total = 0.0
            for i in range(n):
                for p in range(h):
                    for q in range(w):
                        total += float(x[i, ch, p, q])
            mu = total / m
            squares = 0.0
            for i in range(n):
                for p in range(h):
                    for q in range(w):
                        d = float(x[i, ch, p, q]) - mu
                        squares += d * d
            mean[ch], var[ch] = mu, squares / m
    y = np.empty_like(x)
    for ch in range(c):
        mu, invstd = float(mean[ch]), 1.0 / math.sqrt(float(var[ch]) + eps)
        gamma, beta = float(weight[ch]), float(bias[ch])
        for i in range(n):
            for p in range(h):
                for q in range(w):
                    y[i, ch, p, q] = (float(x[i, ch, p, q]) - mu) * invstd * gamma + beta
    return y, mean, var


def batch_norm_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float, training: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (N, C, H, W), dweight, dbias (C,), all in x's dtype, of batch_norm_forward
    (mean, var (C,) float64: the statistics the forward used).

    With xhat = (x - mean) * invstd: y = weight * xhat + bias gives dbias = sum(dy) and
    dweight = sum(dy * xhat). dx = weight * invstd * dy, plus, when mean and var were the batch's
    own (``training``), the paths through them: every x moves the mean (-sum(dy) / M) and the
    variance (-xhat * sum(dy * xhat) / M).
    """
    n, c, h, w = x.shape
    m = n * h * w
    dx = np.empty_like(x)
    dweight, dbias = np.zeros(c, x.dtype), np.zeros(c, x.dtype)
    for ch in range(c):
        mu, invstd = float(mean[ch]), 1.0 / math.sqrt(float(var[ch]) + eps)
        sum_dy = sum_dy_xhat = 0.0
        for i in range(n):
            for p in range(h):
                for q in range(w):
                    g = float(dy[i, ch, p, q])
                    sum_dy += g
                    sum_dy_xhat += g * (float(x[i, ch, p, q]) - mu) * invstd
        dbias[ch], dweight[ch] = sum_dy, sum_dy_xhat
        scale = float(weight[ch]) * invstd
        for i in range(n):
            for p in range(h):
                for q in range(w):
                    g = float(dy[i, ch, p, q])
                    if training:
                        xhat = (float(x[i, ch, p, q]) - mu) * invstd
                        g = g - sum_dy / m - xhat * sum_dy_xhat / m
                    dx[i, ch, p, q] = scale * g
    return dx, dweight, dbias
