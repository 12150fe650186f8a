"""Losses: values against the textbook formulas, gradients against central differences,
stability at extreme logits, and PyTorch as an extra oracle when installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernel_oracles import numerical_gradient

from fastconv.losses import BCEWithLogitsLoss, CrossEntropyLoss, sigmoid, softmax


def test_bce_matches_the_formula_on_moderate_logits():
    z = np.array([[-2.0], [0.0], [3.0], [0.5]])
    t = np.array([0, 1, 1, 0])
    p = 1 / (1 + np.exp(-z[:, 0]))
    expected = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    loss = BCEWithLogitsLoss()
    assert loss(z, t) == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(loss.backward(), ((p - t) / 4).reshape(4, 1), rtol=1e-14)
    assert loss.backward().shape == (4, 1)


def test_bce_hand_value():
    # z = 0: sigmoid = 1/2, loss = log 2 for either label.
    assert BCEWithLogitsLoss()(np.zeros(3), np.array([0, 1, 1])) == pytest.approx(math.log(2), rel=1e-15)


def test_bce_is_stable_at_extreme_logits():
    z = np.array([1000.0, -1000.0, 1000.0, -1000.0], np.float32)
    t = np.array([1, 0, 0, 1])
    loss = BCEWithLogitsLoss()
    # Right answers cost ~0, confidently wrong ones cost |z|.
    assert loss(z, t) == pytest.approx((0 + 0 + 1000 + 1000) / 4, rel=1e-6)
    g = loss.backward()
    assert g.dtype == np.float32 and np.isfinite(g).all()
    np.testing.assert_allclose(g, [0, 0, 0.25, -0.25], atol=1e-7)


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_bce_gradient_vs_finite_differences(rng, pos_weight):
    z = rng.standard_normal((6, 1)) * 3
    t = rng.integers(0, 2, 6)
    loss = BCEWithLogitsLoss(pos_weight=pos_weight)
    loss(z, t)
    analytic = loss.backward().copy()
    numeric = numerical_gradient(lambda: loss(z, t), z)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-10)


def test_bce_pos_weight_scales_positive_terms():
    z, t = np.array([0.3, -0.7]), np.array([1, 0])
    plain = np.array([math.log1p(math.exp(-0.3)), math.log1p(math.exp(-0.7))])
    assert BCEWithLogitsLoss(pos_weight=2.5)(z, t) == pytest.approx((2.5 * plain[0] + plain[1]) / 2, rel=1e-14)


def test_bce_input_checks():
    loss = BCEWithLogitsLoss()
    with pytest.raises(ValueError, match="targets"):
        loss(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss(np.zeros(2), np.array([0, 2]))
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        loss(np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(TypeError, match="float"):
        loss(np.zeros(2, np.int64), np.zeros(2))
    with pytest.raises(RuntimeError, match="before forward"):
        BCEWithLogitsLoss().backward()


def test_cross_entropy_matches_the_formula(rng):
    z = rng.standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2])
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = CrossEntropyLoss()
    assert loss(z, y) == pytest.approx(-logp[np.arange(5), y].mean(), rel=1e-14)
    onehot = np.eye(4)[y]
    np.testing.assert_allclose(loss.backward(), (np.exp(logp) - onehot) / 5, rtol=1e-13)


def test_cross_entropy_uniform_logits_cost_log_c():
    assert CrossEntropyLoss()(np.zeros((2, 10)), np.array([3, 7])) == pytest.approx(math.log(10), rel=1e-15)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_gradient_vs_finite_differences(rng, smoothing):
    z = rng.standard_normal((4, 3)) * 2
    y = rng.integers(0, 3, 4)
    loss = CrossEntropyLoss(label_smoothing=smoothing)
    loss(z, y)
    analytic = loss.backward().copy()
    np.testing.assert_allclose(analytic, numerical_gradient(lambda: loss(z, y), z), rtol=1e-7, atol=1e-10)


def test_cross_entropy_stable_at_extreme_logits():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]], np.float32)
    loss = CrossEntropyLoss()
    assert loss(z, np.array([0, 0])) == pytest.approx(1e4 / 2, rel=1e-6)
    assert np.isfinite(loss.backward()).all()


def test_cross_entropy_input_checks():
    with pytest.raises(ValueError, match=r"values in \[0, 3\)"):
        CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="integer"):
        CrossEntropyLoss()(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        CrossEntropyLoss()(np.zeros(3), np.array([0, 1, 2]))


def test_sigmoid_and_softmax_helpers():
    z = np.array([-800.0, -1.0, 0.0, 2.0, 800.0])
    np.testing.assert_allclose(sigmoid(z), [0.0, 1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-2)), 1.0], atol=1e-300)
    s = softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]]))
    np.testing.assert_allclose(s, [[0.5, 0.5], [0.25, 0.75]], rtol=1e-14)


def test_losses_match_torch(rng):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((6, 1)) * 4
    t = rng.integers(0, 2, 6)
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0], dtype=torch.float64))(
        zt, torch.tensor(t, dtype=torch.float64).reshape(6, 1)
    )
    ref.backward()
    ours = BCEWithLogitsLoss(pos_weight=2.0)
    assert ours(z, t) == pytest.approx(ref.item(), rel=1e-13)
    np.testing.assert_allclose(ours.backward(), zt.grad.numpy(), rtol=1e-12)

    z = rng.standard_normal((5, 4)) * 3
    y = rng.integers(0, 4, 5)
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(zt, torch.tensor(y))
    ref.backward()
    ours = CrossEntropyLoss(label_smoothing=0.1)
    assert ours(z, y) == pytest.approx(ref.item(), rel=1e-13)
    np.testing.assert_allclose(ours.backward(), zt.grad.numpy(), rtol=1e-12)
