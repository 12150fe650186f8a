"""Layers: backward passes vs central differences (float64, every backend), forward semantics
against explicit formulas, shapes, initialisation, dropout and batch-norm behaviour."""

from __future__ import annotations

import json
import math
import re

import fastconv.kernels as K
import numpy as np
import pytest
from kernel_oracles import assert_gradient, distinct_values, numerical_gradient

import fastconv.layers as L
from fastconv.layers import AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU


def check_layer_gradients(layer: L.Layer, x: np.ndarray, rng: np.random.Generator, rtol: float = 1e-6) -> None:
    """Analytic dx and parameter grads of loss = sum(layer(x) * dy) vs central differences."""
    dy = rng.standard_normal(layer.forward(x).shape)
    for p in layer.parameters():
        p.zero_grad()
    dx = layer.backward(dy)

    def loss() -> float:
        return float(np.sum(layer.forward(x) * dy))

    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert_gradient(dx, numerical_gradient(loss, x), f"{layer!r} dx", rtol)
    for p in layer.parameters():
        assert_gradient(p.grad, numerical_gradient(loss, p.data), f"{layer!r} {p.name}", rtol)


CONV_CASES = [
    # (x shape, out channels, kernel, stride, padding, dilation, bias)
    ((2, 3, 5, 5), 2, 3, 1, 1, 1, True),
    ((1, 2, 6, 5), 3, 3, 2, 0, 1, True),
    ((2, 2, 5, 6), 2, (2, 3), (1, 2), (1, 0), 1, False),
    ((1, 1, 7, 7), 2, 3, 1, 2, 2, True),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"x{c[0]}-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-b{c[6]}")
def test_conv2d_gradients(backend, rng, case):
    shape, k, ks, stride, pad, dil, bias = case
    layer = Conv2d(shape[1], k, ks, stride, pad, dil, bias=bias, backend=backend, dtype=np.float64, rng=rng,
                   init="torch")  # fmt: skip
    check_layer_gradients(layer, rng.standard_normal(shape), rng)


def test_conv2d_first_layer_skips_input_gradient_but_keeps_weight_gradients(rng):
    layer = Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=rng)
    x, dy = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((2, 3, 5, 5))
    layer.forward(x)
    layer.backward(dy)
    full_dw = layer.weight.grad.copy()
    layer.weight.zero_grad()
    layer.requires_input_grad = False
    assert layer.backward(dy) is None
    np.testing.assert_array_equal(layer.weight.grad, full_dw)


def test_backward_accumulates_parameter_gradients(rng):
    layer = Linear(4, 3, dtype=np.float64, rng=rng)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    layer.forward(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-15)
    np.testing.assert_allclose(once, dy.T @ x, rtol=1e-12)


@pytest.mark.parametrize("make", [lambda: Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0),
                                  lambda: BatchNorm2d(2, dtype=np.float64)])  # fmt: skip
def test_every_layer_with_weights_accumulates_its_gradients(backend, rng, make):
    # Gradients add up over backward calls (zero_grad clears them): a kernel that assigned
    # dW/db (or dgamma/dbeta) instead of adding to .grad would lose all but the last call.
    layer = make()
    layer.backend = backend
    x = rng.standard_normal((2, 2, 5, 6))
    dy = rng.standard_normal(layer.forward(x).shape)
    layer.backward(dy)
    once = [p.grad.copy() for p in layer.parameters()]
    assert all(np.abs(g).max() > 0 for g in once)
    layer.backward(2 * dy)
    for p, g in zip(layer.parameters(), once):
        np.testing.assert_allclose(p.grad, 3 * g, rtol=1e-12, atol=1e-14)


def test_relu_gradients(backend, rng):
    layer = ReLU()
    layer.backend = backend
    check_layer_gradients(layer, distinct_values(rng, (2, 3, 4, 4)), rng)


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 1))])
def test_maxpool_gradients(backend, rng, kernel, stride, padding):
    layer = MaxPool2d(kernel, stride, padding)
    layer.backend = backend
    check_layer_gradients(layer, distinct_values(rng, (2, 2, 5, 6)), rng)


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 1))])
def test_avgpool_gradients(backend, rng, kernel, stride, padding):
    layer = AvgPool2d(kernel, stride, padding)
    layer.backend = backend
    check_layer_gradients(layer, rng.standard_normal((2, 2, 5, 6)), rng)


def test_flatten_and_linear_gradients(rng):
    check_layer_gradients(Flatten(), rng.standard_normal((3, 2, 2, 3)), rng)
    check_layer_gradients(Linear(6, 4, dtype=np.float64, rng=rng), rng.standard_normal((3, 6)), rng)
    check_layer_gradients(Linear(6, 2, bias=False, dtype=np.float64, rng=rng), rng.standard_normal((1, 6)), rng)


def test_dropout_gradient_uses_the_forward_mask(rng):
    layer = Dropout(0.4, seed=1)
    x = rng.standard_normal((4, 50))
    y = layer.forward(x)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    # y = x * mask, so dx = dy * mask = dy * y / x exactly where x != 0.
    np.testing.assert_allclose(dx, dy * y / x, rtol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(rng, training):
    layer = BatchNorm2d(3, dtype=np.float64)
    layer.weight.data[:] = rng.uniform(0.5, 2.0, 3)
    layer.bias.data[:] = rng.standard_normal(3)
    layer.running_mean[:] = rng.standard_normal(3)
    layer.running_var[:] = rng.uniform(0.5, 2.0, 3)
    layer.train(training)
    # Smooth but not linear: central differences carry an O(eps^2) truncation error, hence rtol 1e-5.
    check_layer_gradients(layer, rng.standard_normal((4, 3, 3, 2)) * 2 + 1, rng, rtol=1e-5)


# --- forward semantics ------------------------------------------------------------------


def test_linear_forward_is_x_times_weight_transposed_plus_bias(rng):
    layer = Linear(3, 2, dtype=np.float64, rng=rng)
    layer.weight.data[:] = [[1, 2, 3], [-1, 0, 0.5]]
    layer.bias.data[:] = [10, -10]
    y = layer.forward(np.array([[1.0, 1.0, 1.0], [2.0, 0.0, -2.0]]))
    np.testing.assert_allclose(y, [[16.0, -10.5], [6.0, -13.0]])


def test_linear_rejects_wrong_shape_and_dtype(rng):
    layer = Linear(3, 2, rng=rng)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3\)"):
        layer.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        layer.forward(np.zeros((2, 3), np.float64))


def test_conv2d_forward_matches_hand_computed_values():
    layer = Conv2d(1, 1, 2, bias=True, dtype=np.float64, rng=0)
    layer.weight.data[:] = [[[[1, 2], [3, 4]]]]
    layer.bias.data[:] = [0.5]
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    # y[i, j] = x[i,j] + 2 x[i,j+1] + 3 x[i+1,j] + 4 x[i+1,j+1] + 0.5
    np.testing.assert_allclose(layer.forward(x)[0, 0], [[27.5, 37.5], [57.5, 67.5]])


@pytest.mark.parametrize(
    "layer,in_shape",
    [
        (Conv2d(3, 4, 3, stride=2, padding=1), (3, 9, 8)),
        (Conv2d(2, 5, (3, 1), dilation=(2, 1)), (2, 8, 4)),
        (MaxPool2d(3, 2, 1), (2, 7, 6)),
        (AvgPool2d((2, 3)), (2, 7, 6)),
        (ReLU(), (2, 3, 3)),
        (Flatten(), (2, 3, 4)),
        (Linear(5, 3), (5,)),
        (Dropout(0.3), (4, 2, 2)),
        (BatchNorm2d(2), (2, 3, 3)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, L.Layer) else str(v),
)
def test_output_shape_matches_forward(layer, in_shape):
    x = np.random.default_rng(0).standard_normal((2, *in_shape)).astype(np.float32)
    assert layer.forward(x).shape[1:] == layer.output_shape(in_shape)


def test_layers_use_their_backend(monkeypatch, rng):
    """Every kernel op of a layer is dispatched with the layer's backend attribute."""
    seen = []

    def spy(op):
        real = getattr(L.K, op)

        def wrapper(*args, **kwargs):
            seen.append((op, kwargs["backend"]))
            return real(*args, **kwargs)

        return wrapper

    for op in ("conv2d_forward", "max_pool2d_forward", "relu_forward"):
        monkeypatch.setattr(L.K, op, spy(op))
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    for layer in (Conv2d(2, 2, 3, backend="python", rng=0), MaxPool2d(2), ReLU()):
        layer.backend = "python"
        layer.forward(x)
    assert seen == [("conv2d_forward", "python"), ("max_pool2d_forward", "python"), ("relu_forward", "python")]


def test_backward_before_forward_is_a_clear_error():
    for layer in (Conv2d(1, 1, 1, rng=0), ReLU(), MaxPool2d(2), AvgPool2d(2), Flatten(), Linear(2, 2, rng=0)):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.zeros((1, 1, 1, 1), np.float32))


def test_backward_names_a_dy_of_the_wrong_shape(rng):
    """numpy would broadcast a wrong dy (Dropout), fail on another array's shape (Linear,
    Flatten) or blame argmax (MaxPool2d); each layer says what it expected instead."""
    x4 = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    cases = [
        (MaxPool2d(2), x4, (2, 3, 2, 2)),
        (Flatten(), x4, (2, 48)),
        (Linear(48, 5, rng=0), rng.standard_normal((2, 48)).astype(np.float32), (2, 5)),
        (Dropout(0.5, seed=0), x4, x4.shape),
    ]
    for layer, x, out_shape in cases:
        layer.forward(x)
        bad = np.ones((1, *out_shape[1:]), np.float32)  # would broadcast for Dropout
        with pytest.raises(ValueError, match=rf"{type(layer).__name__}\.backward: expected dy of shape "
                                             rf"{re.escape(str(out_shape))}"):
            layer.backward(bad)


def test_dropout_rejects_non_float_input():
    for x in (np.ones((2, 2), np.int64), np.ones((2, 2), np.float16)):
        with pytest.raises(TypeError, match=f"Dropout: expected a float32 or float64 array, got {x.dtype}"):
            Dropout(0.5, seed=0).forward(x)


# --- construction, initialisation, config ---------------------------------------------


def test_conv2d_he_normal_init_statistics():
    layer = Conv2d(64, 64, 3, rng=0)
    fan_in = 64 * 9
    w = layer.weight.data
    assert w.dtype == np.float32 and w.shape == (64, 64, 3, 3)
    # 36864 samples: the sample std is within ~0.4% of the truth (1 sigma); 2% is a 5-sigma margin.
    assert abs(w.std() / math.sqrt(2 / fan_in) - 1) < 0.02
    assert abs(w.mean()) < 5 * math.sqrt(2 / fan_in) / math.sqrt(w.size)
    np.testing.assert_array_equal(layer.bias.data, 0)


def test_torch_style_init_bounds_and_seeding():
    a, b = Linear(100, 50, rng=3), Linear(100, 50, rng=3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert np.abs(a.weight.data).max() <= 0.1 and np.abs(a.weight.data).max() > 0.09
    assert not np.array_equal(a.weight.data, Linear(100, 50, rng=4).weight.data)
    with pytest.raises(ValueError, match="init"):
        Conv2d(1, 1, 1, init="xavier")


def test_parameters_flags_and_names():
    conv = Conv2d(2, 3, 3, rng=0)
    assert [(p.name, p.decay) for p in conv.parameters()] == [("weight", True), ("bias", False)]
    assert [p.name for p in Conv2d(2, 3, 3, bias=False, rng=0).parameters()] == ["weight"]
    bn = BatchNorm2d(4)
    assert [(p.name, p.decay) for p in bn.parameters()] == [("weight", False), ("bias", False)]
    assert sorted(bn.buffers()) == ["running_mean", "running_var"]
    for p in conv.parameters() + bn.parameters():
        assert p.grad.shape == p.data.shape and not p.grad.any()


@pytest.mark.parametrize(
    "layer",
    [
        Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 2), dilation=2, bias=False, dtype=np.float64, rng=0),
        MaxPool2d(3, 2, 1),
        AvgPool2d((2, 3), padding=(1, 1)),
        Linear(7, 2, bias=False, rng=0),
        Dropout(0.25, seed=4),
        BatchNorm2d(5, eps=1e-3, momentum=0.2, dtype=np.float64),
        BatchNorm2d(3, affine=False),
        Conv2d(6, 4, 3, groups=2, rng=0),
        ReLU(),
        Flatten(),
    ],
    ids=lambda v: type(v).__name__,
)
def test_config_is_json_and_rebuilds_the_same_layer(layer):
    config = json.loads(json.dumps(layer.config()))
    rebuilt = type(layer)(**config)
    assert rebuilt.config() == layer.config()
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in layer.parameters()]
    assert all(p.data.dtype == q.data.dtype for p, q in zip(rebuilt.parameters(), layer.parameters()))


@pytest.mark.parametrize(
    "make,error",
    [
        (lambda: Conv2d(0, 1, 3), ValueError),
        (lambda: Conv2d(1, 1, 0), ValueError),
        (lambda: Conv2d(1, 1, 3, dtype=np.int32), TypeError),
        (lambda: MaxPool2d(2, padding=2), ValueError),
        (lambda: Linear(3, -1), ValueError),
        (lambda: Dropout(1.5), ValueError),
        (lambda: BatchNorm2d(2, eps=0), ValueError),
        (lambda: BatchNorm2d(2, eps=True), ValueError),
        (lambda: BatchNorm2d(2, eps=float("inf")), ValueError),
        (lambda: BatchNorm2d(2, eps="1"), ValueError),
        (lambda: BatchNorm2d(2, momentum=True), ValueError),
        (lambda: BatchNorm2d(2, momentum=None), ValueError),
    ],
)
def test_bad_constructor_arguments_are_rejected(make, error):
    with pytest.raises(error):
        make()


def test_astype_converts_parameters_and_buffers():
    bn = BatchNorm2d(2).astype(np.float64)
    assert bn.weight.data.dtype == bn.weight.grad.dtype == bn.running_var.dtype == np.float64
    assert bn.dtype == np.float64


# --- dropout ------------------------------------------------------------------------------


def test_dropout_is_reproducible_with_a_seed_and_differs_across_seeds():
    x = np.ones((8, 100), np.float32)
    a, b, c = Dropout(0.5, seed=7), Dropout(0.5, seed=7), Dropout(0.5, seed=8)
    ya, yb = a.forward(x), b.forward(x)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, c.forward(x))
    assert not np.array_equal(ya, a.forward(x))  # a fresh mask on every call
    a.reseed(7)
    np.testing.assert_array_equal(a.forward(x), ya)


def test_dropout_eval_mode_is_the_identity():
    layer = Dropout(0.9, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(layer.backward(x), x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_inverted_scaling_statistics(p):
    n = 200_000
    y = Dropout(p, seed=11).forward(np.ones(n, np.float64))
    dropped = float(np.mean(y == 0))
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped - p) < 5 * sigma
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-15)
    # Inverted dropout keeps the expectation: mean(y) ~ 1 within 5 standard errors.
    assert abs(y.mean() - 1) < 5 * math.sqrt(p / (1 - p) / n)


def test_dropout_extremes_and_dtype():
    x = np.full((3, 4), 2.0, np.float32)
    np.testing.assert_array_equal(Dropout(0.0, seed=0).forward(x), x)
    y = Dropout(1.0, seed=0).forward(x)
    assert y.dtype == np.float32 and not y.any() and np.isfinite(y).all()


# --- batch norm -----------------------------------------------------------------------


def test_batchnorm_training_normalises_and_updates_running_statistics(rng):
    bn = BatchNorm2d(2, momentum=0.1, dtype=np.float64)
    x = rng.standard_normal((4, 2, 3, 3)) * np.array([3.0, 0.5]).reshape(1, 2, 1, 1) + np.array([1.0, -2.0]).reshape(
        1, 2, 1, 1
    )
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    # Normalised with the biased variance: per-channel variance of y is var / (var + eps).
    var = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), var / (var + 1e-5), rtol=1e-12)
    m = 4 * 3 * 3
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var * m / (m - 1), rtol=1e-12)


def test_batchnorm_eval_uses_running_statistics(rng):
    bn = BatchNorm2d(2, eps=1e-3, dtype=np.float64)
    bn.running_mean[:] = [1.0, -1.0]
    bn.running_var[:] = [4.0, 0.25]
    bn.weight.data[:] = [2.0, 3.0]
    bn.bias.data[:] = [0.5, 0.0]
    bn.eval()
    x = rng.standard_normal((3, 2, 2, 2))
    y = bn.forward(x)
    expected = (x - np.array([1.0, -1.0]).reshape(1, 2, 1, 1)) / np.sqrt(
        np.array([4.0, 0.25]).reshape(1, 2, 1, 1) + 1e-3
    ) * np.array([2.0, 3.0]).reshape(1, 2, 1, 1) + np.array([0.5, 0.0]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, [1.0, -1.0])  # eval never updates them


def test_batchnorm_rejects_single_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(2).forward(np.zeros((1, 2, 1, 1), np.float32))
    BatchNorm2d(2).eval().forward(np.zeros((1, 2, 1, 1), np.float32))  # fine in eval mode


def test_batchnorm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((5, 3, 4, 4))
    ours = BatchNorm2d(3, momentum=0.3, dtype=np.float64)
    ref = torch.nn.BatchNorm2d(3, momentum=0.3).double()
    for _ in range(2):
        y = ours.forward(x)
        yt = ref(torch.from_numpy(x))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=1e-12)
    ours.eval()
    ref.eval()
    np.testing.assert_allclose(ours.forward(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


GROUPED_CASES = [
    # (x shape, out channels, groups, kernel, stride, padding, dilation, bias)
    ((2, 6, 7, 5), 4, 2, 3, 2, 1, 1, True),
    ((1, 4, 6, 7), 8, 4, (3, 2), 1, (1, 0), 2, True),  # depthwise, channel multiplier 2
    ((2, 3, 5, 5), 3, 3, 1, 1, 0, 1, False),  # depthwise 1x1
    ((1, 6, 5, 6), 9, 3, 2, (1, 2), 1, 1, True),
    ((1, 5, 7, 6), 5, 5, 3, 1, 1, 1, True),  # depthwise 3x3, the MobileNet block's
    ((1, 3, 6, 9), 6, 3, (2, 3), (2, 1), (1, 1), (2, 1), False),  # depthwise, strided, dilated, multiplier 2
]


@pytest.mark.parametrize("case", GROUPED_CASES, ids=lambda c: f"x{c[0]}-k{c[1]}-g{c[2]}")
def test_grouped_conv_is_a_full_conv_with_block_diagonal_weights(backend, rng, case):
    # A torch-free oracle: groups g means output block j sees only input block j, i.e. an ungrouped
    # conv whose weight is zero outside the g diagonal blocks. Forward, dx, db and the diagonal
    # blocks of dW must agree with it on every backend.
    shape, k, g, ks, stride, pad, dil, bias = case
    c = shape[1]
    grouped = Conv2d(c, k, ks, stride, pad, dil, bias=bias, groups=g, dtype=np.float64, rng=rng, init="torch")
    grouped.backend = backend
    full = Conv2d(c, k, ks, stride, pad, dil, bias=bias, dtype=np.float64)
    full.backend = backend
    full.weight.data[:] = 0
    ci, co = c // g, k // g  # block j: output channels [j*co, (j+1)*co) x input channels [j*ci, (j+1)*ci)
    blocks = [(slice(j * ci, (j + 1) * ci), slice(j * co, (j + 1) * co)) for j in range(g)]
    for cs, kslice in blocks:
        full.weight.data[kslice, cs] = grouped.weight.data[kslice]
    if bias:
        full.bias.data[:] = grouped.bias.data
    x = rng.standard_normal(shape)
    y = grouped.forward(x)
    np.testing.assert_allclose(y, full.forward(x), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(grouped.backward(dy), full.backward(dy), rtol=1e-12, atol=1e-12)
    for cs, kslice in blocks:
        np.testing.assert_allclose(grouped.weight.grad[kslice], full.weight.grad[kslice, cs], rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(grouped.bias.grad, full.bias.grad, rtol=1e-12, atol=1e-12)
    assert grouped.weight.shape == (k, c // g, *K.normalize_pair(ks, "k", minimum=1))
    check_layer_gradients(grouped, x, rng)


def test_grouped_conv_first_layer_and_checks(rng):
    conv = Conv2d(4, 6, 3, padding=1, groups=2, dtype=np.float64, rng=0)
    conv.requires_input_grad = False  # a first layer: no dx, but the weights still learn
    x = rng.standard_normal((2, 4, 5, 5))
    y = conv.forward(x)
    assert conv.backward(np.ones_like(y)) is None and np.abs(conv.weight.grad).sum() > 0
    assert conv.output_shape((4, 5, 5)) == (6, 5, 5)
    assert conv.flops((4, 5, 5)) == 2 * 6 * 25 * 2 * 9  # (C / groups) * R * S per output
    assert sum(p.data.size for p in conv.parameters()) == 6 * 2 * 9 + 6
    with pytest.raises(ValueError, match=r"groups: expected a divisor of in_channels \(4\) and out_ch.* \(6\), got 4"):
        Conv2d(4, 6, 3, groups=4)
    with pytest.raises(TypeError, match="groups: expected a positive int"):
        Conv2d(4, 6, 3, groups=True)
    # PyTorch's positional order: (..., dilation, groups, bias)
    assert Conv2d(4, 6, 3, 1, 1, 1, 2).groups == 2
    with pytest.raises(TypeError, match="bias: expected True or False, got 2"):
        Conv2d(4, 6, 3, bias=2)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\), got \(2, 6, 5, 5\)"):
        conv.forward(rng.standard_normal((2, 6, 5, 5)))
    with pytest.raises(ValueError, match=r"expected 4 input channels"):
        conv.output_shape((6, 5, 5))
    conv.forward(x)
    with pytest.raises(ValueError, match=r"expected dy of shape \(N, 6, Ho, Wo\)"):
        conv.backward(np.ones((2, 4, 5, 5)))


def test_grouped_conv_saves_and_loads(tmp_path, rng):
    from fastconv import Sequential, load

    model = Sequential(Conv2d(4, 8, 3, padding=1, groups=4, rng=0), ReLU(), Conv2d(8, 2, 1, groups=2, rng=1))
    model.save(tmp_path / "g.npz")
    again = load(tmp_path / "g.npz")
    assert [getattr(layer, "groups", None) for layer in again.layers] == [4, None, 2]
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), again.forward(x))


def test_grouped_conv_matches_torch(rng):
    torch = pytest.importorskip("torch")
    conv = Conv2d(6, 9, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=3, dtype=np.float64, rng=0)
    x = rng.standard_normal((2, 6, 8, 7))
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(conv.weight.data, requires_grad=True)
    bt = torch.tensor(conv.bias.data, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=(2, 1), padding=1, dilation=(1, 2), groups=3)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.weight.grad, wt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.bias.grad, bt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_without_affine_is_the_plain_normalisation(backend, rng, training):
    # affine=False (PyTorch's option): no weight or bias, y = (x - mean) / sqrt(var + eps), with
    # the batch statistics in training and the running ones in eval; input gradients still flow.
    x = rng.standard_normal((4, 3, 3, 2)) * 2 + 1
    layer = BatchNorm2d(3, eps=1e-3, affine=False, dtype=np.float64)
    layer.backend = backend
    assert layer.weight is None and layer.bias is None and layer.parameters() == []
    layer.running_mean[:] = rng.standard_normal(3)
    layer.running_var[:] = rng.uniform(0.5, 2.0, 3)
    layer.train(training)
    mean = x.mean(axis=(0, 2, 3), keepdims=True) if training else layer.running_mean.reshape(1, 3, 1, 1)
    var = x.var(axis=(0, 2, 3), keepdims=True) if training else layer.running_var.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(layer.forward(x), (x - mean) / np.sqrt(var + 1e-3), rtol=1e-12, atol=1e-12)
    with_affine = BatchNorm2d(3, eps=1e-3, dtype=np.float64)  # gamma 1, beta 0: the same numbers
    with_affine.running_mean[:], with_affine.running_var[:] = layer.running_mean, layer.running_var
    with_affine.backend = backend
    with_affine.train(training)
    np.testing.assert_array_equal(with_affine.forward(x), layer.forward(x))
    dy = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(with_affine.backward(dy), layer.backward(dy))
    check_layer_gradients(layer, x, rng, rtol=1e-5)
    with pytest.raises(TypeError, match="affine"):
        BatchNorm2d(3, affine="no")


def test_batchnorm_without_affine_saves_loads_and_matches_torch(tmp_path, rng):
    from fastconv import Sequential, load

    model = Sequential(Conv2d(2, 3, 3, padding=1, rng=0), BatchNorm2d(3, affine=False), ReLU())
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    model.forward(x)  # running statistics move away from 0 / 1
    model.save(tmp_path / "m.npz")
    again = load(tmp_path / "m.npz")
    assert again.layers[1].affine is False and "1.weight" not in again.state_dict()
    model.eval(), again.eval()
    np.testing.assert_array_equal(model.forward(x), again.forward(x))
    torch = pytest.importorskip("torch")
    ours = BatchNorm2d(3, momentum=0.3, affine=False, dtype=np.float64)
    ref = torch.nn.BatchNorm2d(3, momentum=0.3, affine=False).double()
    xd = rng.standard_normal((5, 3, 4, 4))
    for _ in range(2):
        y, yt = ours.forward(xd), ref(torch.from_numpy(xd))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=1e-12)


def test_repr_shows_pairs_as_tuples_like_the_constructor_takes():
    assert repr(Conv2d(3, 5, (3, 2), padding=(1, 0), rng=0)) == "Conv2d(3, 5, (3, 2), padding=(1, 0))"
    assert repr(Conv2d(3, 5, 3, padding=1, rng=0)) == "Conv2d(3, 5, 3, padding=1)"


def test_zero_padding_semantics_match_torch():
    """The reference's zero padding (tests/test_conformance.py holds every backend to it) is
    PyTorch's: an infinite weight times a padded zero is NaN. Kept out of the ASan run's files,
    whose environment has no torch."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(12).standard_normal((1, 2, 5, 6))
    w = np.ones((3, 2, 3, 3))
    w[0, 1, 0, 0], w[2, 0, 2, 2] = np.inf, -np.inf
    for stride in (1, 2):
        want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), stride=stride, padding=1).numpy()
        with np.errstate(invalid="ignore"):
            got = K.conv2d_forward(x, w, None, stride, 1, backend="python")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


def test_conv2d_same_padding_keeps_the_size_and_saves_as_integers(tmp_path):
    from fastconv import Sequential, load

    layer = Conv2d(3, 4, 5, padding="same", dilation=2, rng=0)
    assert layer.padding == (4, 4) and layer.output_shape((3, 9, 11)) == (4, 9, 11)
    model = Sequential(layer)
    model.save(tmp_path / "m.npz")
    assert load(tmp_path / "m.npz").layers[0].padding == (4, 4)
    assert Conv2d(3, 4, 3, padding="valid").padding == (0, 0)
    with pytest.raises(ValueError, match="needs stride 1"):
        Conv2d(3, 4, 3, stride=2, padding="same")


def test_a_model_of_parameter_free_batchnorm_takes_its_dtype_from_the_buffers():
    from fastconv import Sequential
    from fastconv.model import _architecture_difference
    from fastconv.train import recompute_batchnorm

    model = Sequential(BatchNorm2d(3, affine=False)).astype(np.float64)
    assert model.dtype == np.float64
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    assert model.forward(x).dtype == np.float64
    recompute_batchnorm(model, x)
    np.testing.assert_allclose(model.layers[0].running_mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    # a file that writes an argument at its default describes the same architecture
    ours = [{"type": "BatchNorm2d", "config": BatchNorm2d(3).config()}]
    theirs = [{"type": "BatchNorm2d", "config": {**BatchNorm2d(3).config(), "affine": True}}]
    assert _architecture_difference(theirs, ours) == ""
    theirs[0]["config"]["affine"] = False
    assert "affine=False" in _architecture_difference(theirs, ours)


# ---- activations and adaptive pooling computed with numpy (LeakyReLU, Sigmoid, Tanh, AdaptiveAvgPool2d)


def _adaptive_oracle(x: np.ndarray, ho: int, wo: int) -> np.ndarray:
    """PyTorch's definition, window by window: output (i, j) averages rows
    [floor(i*H/Ho), ceil((i+1)*H/Ho)) and the columns likewise."""
    h, w = x.shape[2:]
    y = np.zeros((*x.shape[:2], ho, wo))
    for i in range(ho):
        for j in range(wo):
            r0, r1 = math.floor(i * h / ho), math.ceil((i + 1) * h / ho)
            c0, c1 = math.floor(j * w / wo), math.ceil((j + 1) * w / wo)
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y


@pytest.mark.parametrize(
    "shape, output_size, want",
    [((2, 3, 7, 5), 1, (1, 1)), ((1, 2, 7, 5), (3, 2), (3, 2)), ((2, 1, 5, 6), (None, 4), (5, 4)),
     ((1, 2, 3, 2), (5, 7), (5, 7)), ((1, 1, 6, 6), 3, (3, 3))],
)  # fmt: skip
def test_adaptive_avg_pool_is_pytorchs_window_rule(rng, shape, output_size, want):
    layer = L.AdaptiveAvgPool2d(output_size)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    np.testing.assert_allclose(y, _adaptive_oracle(x, *want), rtol=1e-13, atol=1e-15)
    assert layer.output_shape(shape[1:]) == (shape[1], *want)
    check_layer_gradients(layer, x, rng)
    assert layer.forward(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("layer", [L.LeakyReLU(), L.LeakyReLU(0.2), L.LeakyReLU(-1.5), L.Sigmoid(), L.Tanh()],
                         ids=repr)  # fmt: skip
def test_numpy_activations_gradients_and_dtypes(rng, layer):
    x = distinct_values(rng, (2, 3, 4, 5))  # no value within 1e-3 of LeakyReLU's kink
    check_layer_gradients(layer, x, rng)
    x32 = x.astype(np.float32)
    y = layer.forward(x32)
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32


def test_numpy_activations_and_adaptive_pool_match_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 7, 6)) * 30  # saturating tails and huge negatives
    x[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    pairs = [(L.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)), (L.Sigmoid(), torch.nn.Sigmoid()),
             (L.Tanh(), torch.nn.Tanh()), (L.AdaptiveAvgPool2d((4, 3)), torch.nn.AdaptiveAvgPool2d((4, 3))),
             (L.AdaptiveAvgPool2d((None, 5)), torch.nn.AdaptiveAvgPool2d((None, 5)))]  # fmt: skip
    for ours, ref in pairs:
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        y = ours.forward(x)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15, err_msg=repr(ours))
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=repr(ours))


def test_numpy_layers_save_load_and_refuse_bad_arguments(tmp_path, rng):
    from fastconv import Sequential, load

    model = Sequential(Conv2d(2, 4, 3, padding=1, rng=0), L.LeakyReLU(0.05), L.AdaptiveAvgPool2d((2, None)),
                       L.Tanh(), Flatten(), Linear(4 * 2 * 5, 1, rng=1), L.Sigmoid())  # fmt: skip
    model.save(tmp_path / "m.npz")
    again = load(tmp_path / "m.npz")
    x = rng.standard_normal((3, 2, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x), model.forward(x))
    assert again.layers[1].negative_slope == 0.05 and again.layers[2].output_size == (2, None)
    for make, error, words in [
        (lambda: L.LeakyReLU("0.1"), TypeError, "negative_slope: expected a finite number, got str"),
        (lambda: L.LeakyReLU(True), TypeError, "negative_slope: expected a finite number, got bool"),
        (lambda: L.LeakyReLU(float("inf")), ValueError, "negative_slope: expected a finite number"),
        (lambda: L.AdaptiveAvgPool2d(0), ValueError, "output_size: expected a positive int"),
        (lambda: L.AdaptiveAvgPool2d((2, 2, 2)), TypeError, "output_size: expected a positive int"),
        (lambda: L.AdaptiveAvgPool2d(2.5), TypeError, "output_size: expected a positive int"),
        (lambda: L.AdaptiveAvgPool2d(None), TypeError, "output_size: expected a positive int.*got None"),
    ]:
        with pytest.raises(error, match=words):
            make()
    with pytest.raises(TypeError, match="x: expected"):
        L.Tanh().forward(np.arange(4))  # integers: not a float array
    pool = L.AdaptiveAvgPool2d(2)
    pool.forward(rng.standard_normal((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"expected dy of shape \(1, 1, 2, 2\)"):
        pool.backward(np.ones((1, 1, 4, 4)))
    # float32 forward, float64 dy: refused by name, as ReLU and the kernels do, never cast silently
    for layer in (L.LeakyReLU(), L.Sigmoid(), L.Tanh(), L.AdaptiveAvgPool2d(2)):
        y = layer.forward(rng.standard_normal((1, 1, 4, 4)).astype(np.float32))
        with pytest.raises(TypeError, match=r"dy: expected dtype float32 .* got float64"):
            layer.backward(np.ones(y.shape))


@pytest.mark.parametrize("h, w, output_size", [(7, 5, 3), (3, 3, 5), (6, 6, 3), (4, 9, (None, 2)), (5, 5, 1)])
def test_adaptive_avg_pool_flops_count_every_window_element(h, w, output_size):
    """summary()'s FLOPs: one addition per window element, counted window by window (windows
    overlap, so an output larger than the input costs more than C*H*W)."""
    layer = L.AdaptiveAvgPool2d(output_size)
    _, ho, wo = layer.output_shape((2, h, w))
    count = 0
    for i in range(ho):
        for j in range(wo):
            rows = math.ceil((i + 1) * h / ho) - math.floor(i * h / ho)
            cols = math.ceil((j + 1) * w / wo) - math.floor(j * w / wo)
            count += rows * cols
    assert layer.flops((2, h, w)) == 2 * count
