"""Whole-model gradient check: a small catnet-like network in float64, loss = BCE (or CE) on its
logits; the backpropagated gradient of every parameter and of the input must equal central
finite differences of the loss.

Every single element is checked on the numpy backend (about 2,000 forward passes of a tiny
network: the compiled backends have a per-call overhead that makes that slow, and the python
reference is slow per FLOP). On *every* backend the check is also done directionally: for random
unit directions v over all parameters and the input together, ``<grad, v>`` must equal
``(L(theta + eps v) - L(theta - eps v)) / 2 eps`` (a wrong gradient element shows up in a random
projection with probability 1). The kernels themselves are checked element by element on every
backend in tests/test_conformance.py and tests/test_layers.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_oracles import numerical_gradient

from fastconv import (
    AvgPool2d,
    BatchNorm2d,
    BCEWithLogitsLoss,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    available_backends,
    catnet,
)

DT = np.float64
# Element-by-element checks run on numpy (fast per call); python when numpy is unavailable.
ELEMENTWISE_BACKEND = "numpy" if "numpy" in available_backends() else "python"


def small_net(batchnorm: bool) -> Sequential:
    """conv-ReLU-conv(stride 2)-[BN]-ReLU-maxpool-conv(dilation 2)-ReLU-avgpool-flatten-dropout-linear."""
    layers = [
        Conv2d(2, 3, 3, padding=1, dtype=DT, rng=1, init="torch"),
        ReLU(),
        Conv2d(3, 4, 3, stride=2, padding=1, bias=not batchnorm, dtype=DT, rng=2, init="torch"),
    ]
    if batchnorm:
        layers.append(BatchNorm2d(4, dtype=DT))
    layers += [
        ReLU(),
        MaxPool2d(2, stride=1),
        Conv2d(4, 4, 2, padding=1, dilation=2, dtype=DT, rng=3, init="torch"),
        ReLU(),
        AvgPool2d(2),
        Flatten(),
        Dropout(0.3, seed=4),
        Linear(4, 1, dtype=DT, rng=5),
    ]
    return Sequential(*layers)


def _setup(model: Sequential, backend: str, x: np.ndarray, targets: np.ndarray, loss_fn):
    model.set_backend(backend).train()

    def loss() -> float:
        model.reseed(7)  # the same dropout mask on every evaluation
        return loss_fn(model.forward(x), targets)

    model.zero_grad()
    loss()
    dx = model.backward(loss_fn.backward(), need_input_grad=True)
    return loss, dx


def _assert_close(analytic: np.ndarray, numeric: np.ndarray, what: str) -> None:
    # Loss is smooth except at ReLU/max kinks (which random data avoids by a wide margin); central
    # differences with eps = 1e-6 then agree to ~1e-9 relative to the largest gradient entry.
    scale = float(np.abs(numeric).max())
    err = float(np.abs(analytic - numeric).max())
    assert scale > 1e-6, f"{what}: gradient vanishes, the check would be vacuous"
    assert err <= 1e-6 * scale, f"{what}: max error {err:.3e} vs scale {scale:.3e}"


def _problem(rng, n=3, c=2, size=7):
    return rng.standard_normal((n, c, size, size)), np.array([0, 1, 1][:n])


@pytest.mark.parametrize("batchnorm", [False, True])
def test_whole_model_gradient_every_element(rng, batchnorm):
    model = small_net(batchnorm)
    x, t = _problem(rng)
    loss, dx = _setup(model, ELEMENTWISE_BACKEND, x, t, BCEWithLogitsLoss())
    _assert_close(dx, numerical_gradient(loss, x), "input")
    checked = 0
    for p in model.parameters():
        _assert_close(p.grad, numerical_gradient(loss, p.data), p.name)
        checked += p.size
    assert checked == model.num_parameters()


def test_whole_model_gradient_directional_every_backend(backend, rng):
    model = small_net(batchnorm=True)
    x, t = _problem(rng, n=2, size=6)
    loss, dx = _setup(model, backend, x, t, BCEWithLogitsLoss())
    arrays = [x] + [p.data for p in model.parameters()]
    grads = [dx] + [p.grad.copy() for p in model.parameters()]
    eps = 1e-6
    for _ in range(3):
        vs = [rng.standard_normal(a.shape) for a in arrays]
        norm = np.sqrt(sum(float((v * v).sum()) for v in vs))
        vs = [v / norm for v in vs]
        for a, v in zip(arrays, vs):
            a += eps * v
        plus = loss()
        for a, v in zip(arrays, vs):
            a -= 2 * eps * v
        minus = loss()
        for a, v in zip(arrays, vs):
            a += eps * v
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float((g * v).sum()) for g, v in zip(grads, vs))
        assert abs(analytic - numeric) <= 1e-6 * max(abs(numeric), 1e-3), (backend, analytic, numeric)


def test_catnet_gradient_with_cross_entropy(rng):
    """The real builder (tiny width and image), multi-class head, in float64."""
    model = catnet(image_size=8, width=2, num_outputs=3, batchnorm=True, seed=0, dtype=DT)
    x = rng.standard_normal((4, 3, 8, 8))
    loss, dx = _setup(model, ELEMENTWISE_BACKEND, x, np.array([0, 2, 1, 2]), CrossEntropyLoss(label_smoothing=0.1))
    _assert_close(dx, numerical_gradient(loss, x), "input")
    for p in model.parameters():
        _assert_close(p.grad, numerical_gradient(loss, p.data), p.name)
