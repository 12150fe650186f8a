"""Model builders. ``catnet`` is the reference network of DESIGN.md."""

from __future__ import annotations

import numpy as np

from .layers import BatchNorm2d, Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d, ReLU
from .model import Sequential

__all__ = ["catnet"]


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
