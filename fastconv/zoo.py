"""Model builders. ``catnet`` is the reference network of DESIGN.md."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np

from .layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d, ReLU, Residual
from .model import Sequential

__all__ = ["catnet", "resnet"]


def catnet(
    in_channels: int = 3,
    image_size: int = 64,
    num_outputs: int = 1,
    dropout: float = 0.5,
    batchnorm: bool = False,
    width: int = 16,
    seed: int | None = 0,
    backend: str | None = None,
    dtype: object = np.float32,
) -> Sequential:
    """The DESIGN.md catnet, for (N, in_channels, image_size, image_size) input -> (N, num_outputs) logits.

    With the defaults (width 16, 64x64 RGB, one logit)::

        conv3x3(3->16, pad 1) ReLU  conv3x3(16->16, pad 1) ReLU  maxpool2
        conv3x3(16->32, pad 1) ReLU maxpool2
        conv3x3(32->64, pad 1) ReLU maxpool2
        flatten  dropout(0.5)  linear(64*8*8 -> 1)

    ``width`` scales the channel counts (width, width, 2*width, 4*width). ``batchnorm=True``
    inserts BatchNorm2d after every conv (whose bias is then dropped, as BatchNorm's shift
    replaces it). ``dropout=0`` omits the dropout layer. ``image_size`` need not be a multiple
    of 8 (pooling floors), e.g. 32 for CIFAR-10. ``seed`` fixes the initial weights and the
    dropout masks (None: fresh entropy).
    """
    if image_size < 8:
        raise ValueError(f"image_size: expected at least 8 (three 2x2 poolings), got {image_size}")
    init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(init_seq)
    c1, c2, c3 = width, 2 * width, 4 * width

    def conv_block(cin: int, cout: int) -> list[Layer]:
        conv = Conv2d(cin, cout, 3, padding=1, bias=not batchnorm, backend=backend, dtype=dtype, rng=rng)
        return [conv, BatchNorm2d(cout, dtype=dtype), ReLU()] if batchnorm else [conv, ReLU()]

    features: list[Layer] = [
        *conv_block(in_channels, c1),
        *conv_block(c1, c1),
        MaxPool2d(2),
        *conv_block(c1, c2),
        MaxPool2d(2),
        *conv_block(c2, c3),
        MaxPool2d(2),
        Flatten(),
    ]
    flat = Sequential(*features).output_shape((in_channels, image_size, image_size))[0]
    head: list[Layer] = [Dropout(dropout, seed=dropout_seq)] if dropout > 0 else []
    head.append(Linear(flat, num_outputs, dtype=dtype, rng=rng))
    model = Sequential(*features, *head)
    return model.set_backend(backend)


def resnet(
    in_channels: int = 3,
    num_outputs: int = 1,
    widths: Iterable[int] = (16, 32, 64),
    blocks_per_stage: int = 1,
    dropout: float = 0.0,
    seed: int | None = 0,
    backend: str | None = None,
    dtype: object = np.float32,
) -> Sequential:
    """A small ResNet in the layout of He et al. 2016's CIFAR networks (section 4.2), built from
    :class:`Residual` blocks: (N, in_channels, H, W) -> (N, num_outputs) logits, any H, W >= 1.

    conv3x3(in -> widths[0]) BN ReLU; then one stage per width, each ``blocks_per_stage`` basic
    blocks (conv3x3 BN ReLU conv3x3 BN, plus the shortcut, then ReLU); every stage after the first
    starts with stride 2, halving H and W, and its first block's shortcut is a projection (1x1
    conv with that stride, BN: the paper's option B; its CIFAR experiments used option A, zero-padded
    identities) because the shape changes; then global average pooling and a linear layer.
    Weighted layers: 2 + 2 * blocks_per_stage * len(widths) (``blocks_per_stage=3`` is a ResNet-20,
    with option-B shortcuts; the default, 1, is a ResNet-8). Convs
    before a BatchNorm have no bias. ``dropout`` > 0 puts a Dropout before the linear layer (as in
    catnet; the paper has none). ``seed`` fixes the initial weights and the dropout masks (None:
    fresh entropy).
    """
    def positive(name: str, v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: expected a positive int, got {v!r} ({type(v).__name__})")
        if v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
        return int(v)

    in_channels, num_outputs = positive("in_channels", in_channels), positive("num_outputs", num_outputs)
    blocks_per_stage = positive("blocks_per_stage", blocks_per_stage)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Iterable):
        raise TypeError(f"widths: expected positive ints, one per stage, got {widths!r}")
    widths = tuple(positive("widths", w) for w in widths)
    if not widths:
        raise ValueError("widths: expected positive ints, one per stage, got none")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
    init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(init_seq)

    def conv(cin: int, cout: int, k: int, stride: int = 1) -> Conv2d:
        return Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False, dtype=dtype, rng=rng)

    def block(cin: int, cout: int, stride: int) -> list[Layer]:
        body = [conv(cin, cout, 3, stride), BatchNorm2d(cout, dtype=dtype), ReLU(),
                conv(cout, cout, 3), BatchNorm2d(cout, dtype=dtype)]  # fmt: skip
        shortcut = None if (stride, cin) == (1, cout) else [conv(cin, cout, 1, stride), BatchNorm2d(cout, dtype=dtype)]
        return [Residual(body, shortcut), ReLU()]

    layers: list[Layer] = [conv(in_channels, widths[0], 3), BatchNorm2d(widths[0], dtype=dtype), ReLU()]
    cin = widths[0]
    for stage, width in enumerate(widths):
        for b in range(blocks_per_stage):
            layers += block(cin, width, 2 if stage > 0 and b == 0 else 1)
            cin = width
    layers += [AdaptiveAvgPool2d(1), Flatten()]
    layers += [Dropout(dropout, seed=dropout_seq)] if dropout > 0 else []
    layers += [Linear(cin, num_outputs, dtype=dtype, rng=rng)]
    return Sequential(*layers).set_backend(backend)
