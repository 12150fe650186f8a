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


# ---- reduction and class weights


@pytest.mark.parametrize("make", [lambda **kw: BCEWithLogitsLoss(pos_weight=1.7, **kw), CrossEntropyLoss])
def test_sum_reduction_is_n_times_the_mean(rng, make):
    bce = isinstance(make(), BCEWithLogitsLoss)
    z = rng.standard_normal((5, 1) if bce else (5, 3)) * 2
    y = rng.integers(0, 2 if bce else 3, 5)
    mean, total = make(), make(reduction="sum")
    assert total(z, y) == pytest.approx(5 * mean(z, y), rel=1e-14)
    np.testing.assert_allclose(total.backward(), 5 * mean.backward(), rtol=1e-14)


def test_cross_entropy_class_weight_equals_repeating_that_class(rng):
    # PyTorch's weighted mean divides by the summed weights of the labels, so weight 2 on a
    # class is the same loss as listing each of its samples twice (and weight 0 as leaving it out).
    z = rng.standard_normal((6, 3)) * 2
    y = np.array([0, 2, 1, 2, 0, 1])
    weighted = CrossEntropyLoss(weight=[1.0, 0.0, 2.0])
    value = weighted(z, y)
    keep = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 2), np.flatnonzero(y == 2)])
    plain = CrossEntropyLoss()
    assert value == pytest.approx(plain(z[keep], y[keep]), rel=1e-13)
    # each original row's gradient = the sum over its copies
    expected = np.zeros_like(z)
    np.add.at(expected, keep, plain.backward())
    np.testing.assert_allclose(weighted.backward(), expected, rtol=1e-12, atol=1e-15)


def test_cross_entropy_unit_weights_change_nothing(rng):
    z = rng.standard_normal((4, 5)).astype(np.float32)
    y = rng.integers(0, 5, 4)
    a, b = CrossEntropyLoss(label_smoothing=0.1), CrossEntropyLoss(weight=np.ones(5), label_smoothing=0.1)
    assert a(z, y) == pytest.approx(b(z, y), rel=1e-6)
    assert b.backward().dtype == np.float32
    np.testing.assert_allclose(a.backward(), b.backward(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_cross_entropy_gradient_vs_finite_differences(rng, smoothing, reduction):
    z = rng.standard_normal((5, 4)) * 2
    y = rng.integers(0, 4, 5)
    loss = CrossEntropyLoss(weight=rng.random(4) + 0.2, label_smoothing=smoothing, reduction=reduction)
    loss(z, y)
    analytic = loss.backward().copy()
    # atol: central differences of a sum of logs lose ~1e-10 to cancellation on small entries
    np.testing.assert_allclose(analytic, numerical_gradient(lambda: loss(z, y), z), rtol=1e-6, atol=1e-9)


def test_reduction_and_weight_checks():
    for make in (BCEWithLogitsLoss, CrossEntropyLoss):
        with pytest.raises(ValueError, match="reduction: expected 'mean', 'sum' or 'none', got 'avg'"):
            make(reduction="avg")
    with pytest.raises(ValueError, match="weight: expected a"):
        CrossEntropyLoss(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="weight: expected a"):
        CrossEntropyLoss(weight=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="weight: expected a"):
        CrossEntropyLoss(weight=[1.0, float("nan")])
    with pytest.raises(ValueError, match="expected 3 class weights"):
        CrossEntropyLoss(weight=[1.0, 2.0])(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="weighted mean is undefined"):
        CrossEntropyLoss(weight=[0.0, 1.0])(np.zeros((2, 2)), np.array([0, 0]))
    # the summed loss of zero-weight samples is simply 0
    assert CrossEntropyLoss(weight=[0.0, 1.0], reduction="sum")(np.zeros((2, 2)), np.array([0, 0])) == 0.0
    with pytest.raises(TypeError, match="weight="):
        CrossEntropyLoss([1.0, 2.0])  # PyTorch's first positional argument; ours is label_smoothing
    w = np.array([1.0, 2.0])
    loss = CrossEntropyLoss(weight=w)
    w[1] = 100.0  # the loss keeps its own copy
    assert loss.weight[1] == 2.0


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_losses_match_torch(rng, smoothing, reduction):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((7, 4)) * 2
    y = rng.integers(0, 4, 7)
    w = rng.random(4) + 0.1
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=smoothing, reduction=reduction)(
        zt, torch.tensor(y)
    )
    ref.backward()
    ours = CrossEntropyLoss(weight=w, label_smoothing=smoothing, reduction=reduction)
    assert ours(z, y) == pytest.approx(ref.item(), rel=1e-13)
    np.testing.assert_allclose(ours.backward(), zt.grad.numpy(), rtol=1e-12, atol=1e-15)

    z = rng.standard_normal((6, 1)) * 3
    t = rng.integers(0, 2, 6)
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([0.6], dtype=torch.float64), reduction=reduction)(
        zt, torch.tensor(t, dtype=torch.float64).reshape(6, 1)
    )
    ref.backward()
    ours = BCEWithLogitsLoss(pos_weight=0.6, reduction=reduction)
    assert ours(z, t) == pytest.approx(ref.item(), rel=1e-13)
    np.testing.assert_allclose(ours.backward(), zt.grad.numpy(), rtol=1e-12, atol=1e-15)


# ---- reduction="none" and an upstream gradient


def _losses(kind, rng, n=6):
    if kind == "bce":
        loss = BCEWithLogitsLoss(pos_weight=1.7, reduction="none")
        return loss, rng.standard_normal((n, 1)) * 2, rng.integers(0, 2, n)
    loss = CrossEntropyLoss(label_smoothing=0.1, weight=rng.random(3) + 0.2, reduction="none")
    return loss, rng.standard_normal((n, 3)) * 2, rng.integers(0, 3, n)


@pytest.mark.parametrize("kind", ["bce", "ce"])
def test_per_sample_losses_are_the_one_sample_losses(rng, kind):
    loss, z, y = _losses(kind, rng)
    per = loss(z, y)
    assert per.dtype == np.float64 and per.shape == ((6, 1) if kind == "bce" else (6,))
    # each entry is the summed loss of that sample alone
    total = BCEWithLogitsLoss(pos_weight=1.7, reduction="sum") if kind == "bce" else CrossEntropyLoss(
        label_smoothing=0.1, weight=loss.weight, reduction="sum")  # fmt: skip
    for i in range(6):
        assert per.reshape(6)[i] == pytest.approx(total(z[i : i + 1], y[i : i + 1]), rel=1e-13)


@pytest.mark.parametrize("kind", ["bce", "ce"])
def test_per_sample_backward_is_the_gradient_of_a_weighted_sum(rng, kind):
    loss, z, y = _losses(kind, rng)
    g = rng.standard_normal(6)

    def weighted() -> float:
        return float(np.sum(loss(z, y).reshape(6) * g))

    loss(z, y)
    analytic = loss.backward(g).copy()
    assert analytic.shape == z.shape
    np.testing.assert_allclose(analytic, numerical_gradient(weighted, z), rtol=1e-6, atol=1e-9)
    # the mean is the weighted sum with weights 1 / N (CrossEntropyLoss with class weights: 1 / sum w[y])
    loss(z, y)
    if kind == "bce":
        mean, denom = BCEWithLogitsLoss(pos_weight=1.7), 6
    else:
        mean, denom = CrossEntropyLoss(label_smoothing=0.1, weight=loss.weight), loss.weight[y].sum()
    mean(z, y)
    np.testing.assert_allclose(loss.backward(np.full(6, 1 / denom)), mean.backward(), rtol=1e-13)
    # a number scales a reduced loss's gradient
    np.testing.assert_allclose(mean.backward(3.0), 3 * mean.backward(), rtol=1e-15)


@pytest.mark.parametrize("kind", ["bce", "ce"])
def test_per_sample_backward_needs_its_gradient(rng, kind):
    loss, z, y = _losses(kind, rng)
    loss(z, y)
    with pytest.raises(ValueError, match=r"backward needs their gradient: an array of shape \(6,\)"):
        loss.backward()
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(6,\).*, got shape \(5,\)"):
        loss.backward(np.ones(5))
    with pytest.raises(TypeError, match="grad: expected a numeric array"):
        loss.backward("x")
    if kind == "ce":  # its losses have shape (6,) only
        with pytest.raises(ValueError, match=r"got shape \(6, 1\)"):
            loss.backward(np.ones((6, 1)))
    else:  # a (6, 1) loss takes a (6,) or (6, 1) gradient
        np.testing.assert_array_equal(loss.backward(np.ones((6, 1))), loss.backward(np.ones(6)))
    reduced = type(loss)()
    reduced(z, y)
    for bad in (np.ones(6), "2", True):
        with pytest.raises(TypeError, match="its gradient is one number, got"):
            reduced.backward(bad)
    np.testing.assert_array_equal(reduced.backward(np.float64(2.0)), reduced.backward(2))


def test_per_sample_losses_match_torch(rng):
    torch = pytest.importorskip("torch")
    z, y, w, g = rng.standard_normal((7, 4)) * 2, rng.integers(0, 4, 7), rng.random(4) + 0.1, rng.standard_normal(7)
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=0.2, reduction="none")(zt, torch.tensor(y))
    ref.backward(torch.tensor(g))
    ours = CrossEntropyLoss(weight=w, label_smoothing=0.2, reduction="none")
    np.testing.assert_allclose(ours(z, y), ref.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(ours.backward(g), zt.grad.numpy(), rtol=1e-12, atol=1e-15)

    z, t = rng.standard_normal((6, 1)) * 3, rng.integers(0, 2, 6)
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([0.6], dtype=torch.float64), reduction="none")(
        zt, torch.tensor(t, dtype=torch.float64).reshape(6, 1)
    )
    ref.backward(torch.tensor(g[:6]).reshape(6, 1))
    ours = BCEWithLogitsLoss(pos_weight=0.6, reduction="none")
    np.testing.assert_allclose(ours(z, t), ref.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(ours.backward(g[:6]), zt.grad.numpy(), rtol=1e-12, atol=1e-15)
