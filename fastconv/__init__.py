"""fastconv: a small CNN engine whose kernels are written four ways, and a cat / not-cat classifier.

>>> import fastconv
>>> fastconv.kernels.available_backends()        # doctest: +SKIP
['numba', 'cython', 'numpy', 'python']

The model API (numpy arrays in and out, NCHW)::

    model = fastconv.catnet()                          # DESIGN.md's network, 64x64 RGB -> 1 logit
    loss_fn = fastconv.BCEWithLogitsLoss()
    opt = fastconv.AdamW(model.parameters(), lr=1e-3)
    model.zero_grad()
    loss = loss_fn(model(x), y)                        # x float32 (N, 3, 64, 64), y (N,) in {0, 1}
    model.backward(loss_fn.backward())
    opt.step()
    model.save("model.npz", metadata={"classes": ["not-cat", "cat"]})
    model = fastconv.load("model.npz")                 # no pickle; clear errors for bad files
"""

from __future__ import annotations

from . import kernels
from .kernels import (
    available_backends,
    get_default_backend,
    get_num_threads,
    set_default_backend,
    set_num_threads,
)
from .layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    Linear,
    MaxPool2d,
    Parameter,
    ReLU,
    Residual,
    Sigmoid,
    Tanh,
)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss
from .model import Sequential, load, load_with_metadata
from .optim import SGD, Adam, AdamW, CosineSchedule, StepSchedule
from .zoo import catnet

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BCEWithLogitsLoss",
    "BatchNorm2d",
    "Conv2d",
    "CosineSchedule",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Layer",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "Parameter",
    "ReLU",
    "Residual",
    "Sequential",
    "Sigmoid",
    "StepSchedule",
    "Tanh",
    "__version__",
    "available_backends",
    "catnet",
    "get_default_backend",
    "get_num_threads",
    "kernels",
    "load",
    "load_with_metadata",
    "set_default_backend",
    "set_num_threads",
]

# Submodules that pull in more (h5py, scikit-image, matplotlib) load on first use, so that
# ``import fastconv`` stays light and ``fastconv.train.fit`` still works without its own import.
_LAZY_SUBMODULES = ("bench", "data", "metrics", "train", "viz")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
