"""Loss functions on logits: the loss (a Python float, or per-sample losses with
``reduction="none"``) and its gradient with respect to the logits.

``loss = criterion(logits, targets)`` (``__call__`` = ``forward``) caches what ``backward()``
needs; ``backward()`` returns dloss/dlogits with the shape and dtype of ``logits``.
``reduction`` is ``"mean"`` (the default, as in PyTorch), ``"sum"`` over the batch, or
``"none"``: then the loss is a float64 array of per-sample losses and ``backward(grad)`` needs
the gradient with respect to that array (PyTorch's ``loss.backward(gradient)``), e.g. per-sample
weights of your own. ``backward(scale)`` of a reduced loss multiplies its gradient by a number.
Both losses are computed in a numerically stable way: no exp of a large positive number,
no log of 0, so logits of +-1e4 give finite losses and gradients.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "sigmoid", "softmax"]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow, same dtype as z (float arrays)."""
    e = np.exp(-np.abs(z))  # in (0, 1]: never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, stable (the row maximum is subtracted first)."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reduction(reduction: object) -> str:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    return str(reduction)


def _reduce(losses: np.ndarray, reduction: str, denom: float) -> float | np.ndarray:
    """The forward value: per-sample float64 losses as they are, or their sum / denom."""
    if reduction == "none":
        return losses.astype(np.float64)
    return float(losses.sum(dtype=np.float64) / (denom if reduction == "mean" else 1.0))


def _backward(
    name: str, per_sample: np.ndarray | None, denom: float, reduction: str, dtype: np.dtype, upstream: object
) -> np.ndarray:
    """dloss/dlogits from the per-sample gradient rows and the upstream gradient (if any).

    ``per_sample`` holds d(loss_i)/d(logits_i) (logits' shape, before casting); the reduced
    losses divide it by ``denom`` (mean) or 1 (sum). Without ``upstream`` this is the exact
    arithmetic of a plain ``backward()``, so training is unchanged by the option.
    """
    if per_sample is None:
        raise RuntimeError(f"{name}.backward called before forward")
    n = per_sample.shape[0]
    if reduction == "none":
        # the loss's own shape: (N,) for cross-entropy, the logits' (N,) or (N, 1) for BCE, whose
        # (N, 1) loss may also be given a gradient of shape (N,)
        shapes = {(n,), per_sample.shape} if per_sample.ndim == 2 and per_sample.shape[1] == 1 else {(n,)}
        want = " or ".join(str(s) for s in sorted(shapes, key=len))
        if upstream is None:
            raise ValueError(
                f"{name}.backward: reduction='none' gives one loss per sample, so backward needs their "
                f"gradient: an array of shape {want}, e.g. np.full({n}, 1 / {n}) for the mean"
            )
        kind = np.asarray(upstream).dtype.kind if isinstance(upstream, (np.ndarray, list, tuple)) else ""
        if kind not in ("f", "i", "u"):
            raise TypeError(f"{name}.backward: grad: expected a numeric array of shape {want}, got {upstream!r:.80}")
        g = np.asarray(upstream, dtype=np.float64)
        if g.shape not in shapes:
            raise ValueError(f"{name}.backward: expected a gradient of shape {want}, got shape {g.shape}")
        return (per_sample * g.reshape((n,) + (1,) * (per_sample.ndim - 1))).astype(dtype, copy=False)
    grad = (per_sample / (denom if reduction == "mean" else 1.0)).astype(dtype, copy=False)
    if upstream is None:
        return grad
    if isinstance(upstream, np.ndarray) and upstream.ndim == 0 and upstream.dtype.kind in "fiu":
        upstream = upstream.item()
    if isinstance(upstream, bool) or not isinstance(upstream, numbers.Real):
        shape = f"an array of shape {upstream.shape}" if isinstance(upstream, np.ndarray) else repr(upstream)
        raise TypeError(
            f"{name}.backward: grad: the loss is a number (reduction={reduction!r}), so its gradient is one "
            f"number, got {shape}"
        )
    return (grad * float(upstream)).astype(dtype, copy=False)


def _float_logits(name: str, logits: object) -> np.ndarray:
    if not isinstance(logits, np.ndarray) or logits.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float numpy array of logits, got {getattr(logits, 'dtype', type(logits))}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one sample, got shape {logits.shape}")
    return logits


class BCEWithLogitsLoss:
    """Binary cross-entropy on logits (PyTorch ``nn.BCEWithLogitsLoss``).

    logits: (N, 1) or (N,) float; targets: (N,) or (N, 1) in [0, 1] (normally {0, 1}).
    ``loss_i = -[pos_weight * t * log(sigmoid(z)) + (1 - t) * log(1 - sigmoid(z))]``, computed as
    ``pos_weight * t * softplus(-z) + (1 - t) * softplus(z)`` with a stable softplus.
    ``pos_weight`` > 1 raises the weight of positive examples (for imbalanced classes).
    ``reduction``: ``"mean"`` of the N terms (divided by N even with ``pos_weight``, as PyTorch
    does), their ``"sum"``, or ``"none"``: the terms, float64, the shape of ``logits``.
    """

    def __init__(self, pos_weight: float | None = None, reduction: str = "mean") -> None:
        if pos_weight is not None and not pos_weight > 0:
            raise ValueError(f"pos_weight: expected a positive number, got {pos_weight!r}")
        self.pos_weight = None if pos_weight is None else float(pos_weight)
        self.reduction = _reduction(reduction)
        self._rows: np.ndarray | None = None
        self._denom = 1.0
        self._dtype = np.dtype(np.float64)

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float | np.ndarray:
        logits = _float_logits("logits", logits)
        n = logits.shape[0]
        if logits.shape not in ((n,), (n, 1)):
            raise ValueError(f"logits: expected shape (N,) or (N, 1), got {logits.shape}")
        t = np.asarray(targets)
        if t.shape not in ((n,), (n, 1)):
            raise ValueError(f"targets: expected shape ({n},) to match logits {logits.shape}, got {t.shape}")
        t = t.reshape(logits.shape).astype(logits.dtype)
        if np.any((t < 0) | (t > 1)):
            raise ValueError("targets: expected values in [0, 1] (class labels 0 / 1)")
        z = logits
        # softplus(z) = log(1 + e^z) = max(z, 0) + log1p(e^-|z|), finite for every finite z.
        log1p_term = np.log1p(np.exp(-np.abs(z)))
        softplus_pos = np.maximum(z, 0) + log1p_term
        softplus_neg = np.maximum(-z, 0) + log1p_term
        pw = 1.0 if self.pos_weight is None else self.pos_weight
        losses = pw * t * softplus_neg + (1 - t) * softplus_pos
        s = sigmoid(z)
        # d/dz: (1 - t) * sigmoid(z) - pw * t * (1 - sigmoid(z)); equals sigmoid(z) - t when pw = 1.
        self._rows, self._denom, self._dtype = (1 - t) * s - pw * t * (1 - s), float(n), z.dtype
        return _reduce(losses, self.reduction, n)

    __call__ = forward

    def backward(self, grad: np.ndarray | float | None = None) -> np.ndarray:
        """dloss/dlogits, the shape and dtype of the last logits. ``grad``: the gradient with
        respect to the loss — required for ``reduction="none"`` (shape (N,)), else an optional
        number (default 1)."""
        return _backward("BCEWithLogitsLoss", self._rows, self._denom, self.reduction, self._dtype, grad)


class CrossEntropyLoss:
    """Softmax cross-entropy (PyTorch ``nn.CrossEntropyLoss``).

    logits: (N, C) float; labels: (N,) integers in [0, C). With ``label_smoothing`` = eps the
    target distribution is ``(1 - eps) * onehot + eps / C``, as in PyTorch.
    ``weight`` (keyword): optional (C,) non-negative class weights (for imbalanced classes), PyTorch's
    semantics: sample i's term ``-sum_c q_ic log p_ic`` becomes ``-sum_c w_c q_ic log p_ic`` (its
    own class's weight on the one-hot part, each class's weight on the smoothing part), and
    ``"mean"`` divides the sum by ``sum_i w[y_i]`` instead of N, so that weights 2 for a class
    equal listing its samples twice (where every sample's class weighs 0, PyTorch returns NaN;
    this raises ValueError instead). ``reduction``: ``"mean"``, ``"sum"`` or ``"none"`` (the N
    weighted terms, float64, shape (N,)).
    """

    def __init__(
        self, label_smoothing: float = 0.0, *, weight: np.ndarray | None = None, reduction: str = "mean"
    ) -> None:
        if isinstance(label_smoothing, (np.ndarray, list, tuple)):
            raise TypeError("label_smoothing: expected a number, got an array (class weights go in weight=...)")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
        if weight is not None:
            weight = np.array(weight, dtype=np.float64)  # a copy: later edits of the caller's array do not leak in
            if weight.ndim != 1 or weight.size == 0 or not np.all(np.isfinite(weight)) or np.any(weight < 0):
                raise ValueError(f"weight: expected a (C,) vector of finite weights >= 0, got {weight!r}")
        self.weight = weight
        self.label_smoothing = float(label_smoothing)
        self.reduction = _reduction(reduction)
        self._rows: np.ndarray | None = None
        self._denom = 1.0
        self._dtype = np.dtype(np.float64)

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float | np.ndarray:
        logits = _float_logits("logits", logits)
        if logits.ndim != 2:
            raise ValueError(f"logits: expected shape (N, C), got {logits.shape}")
        n, c = logits.shape
        y = np.asarray(labels)
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise ValueError(f"labels: expected {n} integer class indices, shape ({n},), got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() >= c:
            raise ValueError(f"labels: expected values in [0, {c}), got range [{y.min()}, {y.max()}]")
        shifted = logits - logits.max(axis=1, keepdims=True)
        logsumexp = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        logp = shifted - logsumexp
        eps = self.label_smoothing
        if self.weight is None:
            a = np.full((n, c), eps / c, dtype=logits.dtype)
            a[np.arange(n), y] += 1.0 - eps
            denom = float(n)
        else:
            if self.weight.shape != (c,):
                raise ValueError(
                    f"weight: expected {c} class weights to match logits {logits.shape}, got {self.weight.shape[0]}"
                )
            w = self.weight.astype(logits.dtype)
            # a[i, c]: the weight of -log p[i, c] in sample i's term
            a = np.broadcast_to(w * (eps / c), (n, c)).copy()
            a[np.arange(n), y] += (1.0 - eps) * w[y]
            denom = float(self.weight[y].sum())
            if denom == 0 and self.reduction == "mean":
                raise ValueError("weight: every sample's class has weight 0, so the weighted mean is undefined")
        # d/dz_ij of -sum_c a_ic log p_ic = (sum_c a_ic) p_ij - a_ij; without weights sum_c a_ic = 1
        # exactly in real numbers, so p - a is used (no rounding of eps/C*C + 1 - eps creeps in)
        p = np.exp(logp)
        if self.weight is not None:
            p *= a.sum(axis=1, keepdims=True)
        self._rows, self._denom, self._dtype = p - a, denom, logits.dtype
        return _reduce(-(a * logp).sum(axis=1), self.reduction, denom)

    __call__ = forward

    def backward(self, grad: np.ndarray | float | None = None) -> np.ndarray:
        """dloss/dlogits, shape (N, C), the dtype of the last logits. ``grad``: the gradient with
        respect to the loss — required for ``reduction="none"`` (shape (N,)), else an optional
        number (default 1)."""
        return _backward("CrossEntropyLoss", self._rows, self._denom, self.reduction, self._dtype, grad)
