"""Loss functions on logits: mean loss as a Python float, gradient with respect to the logits.

``loss = criterion(logits, targets)`` (``__call__`` = ``forward``) caches what ``backward()``
needs; ``backward()`` returns dloss/dlogits with the shape and dtype of ``logits``.
Both losses are computed in a numerically stable way: no exp of a large positive number,
no log of 0, so logits of +-1e4 give finite losses and gradients.
"""

from __future__ import annotations

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


def _float_logits(name: str, logits: object) -> np.ndarray:
    if not isinstance(logits, np.ndarray) or logits.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float numpy array of logits, got {getattr(logits, 'dtype', type(logits))}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one sample, got shape {logits.shape}")
    return logits


class BCEWithLogitsLoss:
    """Binary cross-entropy on logits (PyTorch ``nn.BCEWithLogitsLoss``, mean reduction).

    logits: (N, 1) or (N,) float; targets: (N,) or (N, 1) in [0, 1] (normally {0, 1}).
    ``loss_i = -[pos_weight * t * log(sigmoid(z)) + (1 - t) * log(1 - sigmoid(z))]``, computed as
    ``pos_weight * t * softplus(-z) + (1 - t) * softplus(z)`` with a stable softplus.
    ``pos_weight`` > 1 raises the weight of positive examples (for imbalanced classes).
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        if pos_weight is not None and not pos_weight > 0:
            raise ValueError(f"pos_weight: expected a positive number, got {pos_weight!r}")
        self.pos_weight = None if pos_weight is None else float(pos_weight)
        self._grad: np.ndarray | None = None

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
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
        self._grad = (((1 - t) * s - pw * t * (1 - s)) / n).astype(z.dtype, copy=False)
        return float(losses.mean(dtype=np.float64))

    __call__ = forward

    def backward(self) -> np.ndarray:
        """dloss/dlogits, the shape and dtype of the last logits."""
        if self._grad is None:
            raise RuntimeError("BCEWithLogitsLoss.backward called before forward")
        return self._grad


class CrossEntropyLoss:
    """Softmax cross-entropy (PyTorch ``nn.CrossEntropyLoss``, mean reduction).

    logits: (N, C) float; labels: (N,) integers in [0, C). With ``label_smoothing`` = eps the
    target distribution is ``(1 - eps) * onehot + eps / C``, as in PyTorch.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self._grad: np.ndarray | None = None

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
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
        q = np.full((n, c), self.label_smoothing / c, dtype=logits.dtype)
        q[np.arange(n), y] += 1.0 - self.label_smoothing
        loss = -(q * logp).sum(axis=1).mean(dtype=np.float64)
        self._grad = ((np.exp(logp) - q) / n).astype(logits.dtype, copy=False)
        return float(loss)

    __call__ = forward

    def backward(self) -> np.ndarray:
        """dloss/dlogits, shape (N, C), the dtype of the last logits."""
        if self._grad is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        return self._grad
