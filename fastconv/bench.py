"""Measurement library behind ``fastconv bench``, the pytest-benchmark suites and docs/ladder.md.

What is measured (DESIGN.md, "How we measure"):

* **Workloads** are the layers of catnet at batch 32 (:data:`CONV_WORKLOADS`,
  :data:`POOL_WORKLOADS`, :data:`RELU_WORKLOADS`), plus small shapes on which the naive
  ``python`` backend finishes quickly (:data:`SMALL_WORKLOADS`).
* **Kernels** (:data:`KERNELS`): conv forward, conv backward (dx, dw, db), conv forward+backward,
  max/avg pooling forward and backward, relu forward and backward, batch norm forward and
  backward (:data:`BN_WORKLOADS`).
* **Timing**: one warm-up call per case (this is where Numba compiles or loads its cache), then
  ``repeats`` rounds; in each round every backend is timed once, in a rotating order, so that
  noise from other processes hits all backends alike. The figure is the median of the rounds.
  A sample repeats the call enough times to last at least ``min_sample_s``.
* **Peak**: the median GFLOP/s of a 2048x2048x2048 numpy matrix product in the benchmark
  dtype, measured in the same run at the same thread count. Conv kernels report GFLOP/s and
  % of that peak (forward: 2*N*K*Ho*Wo*C*R*S FLOP; backward twice that). Memory-bound kernels
  (pooling, relu, batch norm) report GB/s of compulsory traffic instead.
* **Naive python**: the ``python`` backend on a catnet workload runs on a batch of one image
  and its time is multiplied by the batch size ("scaled per image"); the report marks these.

Every benchmark body is a plain function: :func:`make_case` (one kernel on one workload with one
backend) and :func:`make_catnet_step` (one training step). ``benchmarks/`` times them with
pytest-benchmark and ``tests/test_bench_smoke.py`` runs each once on a tiny shape and checks
its output, so the bodies cannot rot.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fastconv import kernels as K
from fastconv.kernels import _threads

# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EltWorkload:
    """An activation x (n, c, h, w); as such, the workload of elementwise ops (relu). The conv and
    pool workloads extend it with their layer's parameters."""

    name: str
    n: int
    c: int
    h: int
    w: int

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.n},{self.c},{self.h},{self.w})"

    def with_batch(self, n: int):
        """The same workload with batch size ``n`` (naive python runs on 1 image)."""
        return replace(self, n=n)


@dataclass(frozen=True)
class ConvWorkload(EltWorkload):
    """A conv layer on x (n, c, h, w): k filters (k, c, r, r), stride 1, ``padding`` zeros."""

    k: int = 1
    r: int = 3
    padding: int = 1

    @property
    def geometry(self) -> K.Conv2dGeometry:
        return K.conv2d_geometry(self.x_shape, (self.k, self.c, self.r, self.r), 1, self.padding)

    @property
    def label(self) -> str:
        return f"{super().label}->{self.k} {self.r}x{self.r}p{self.padding}"


@dataclass(frozen=True)
class PoolWorkload(EltWorkload):
    """A pooling layer on x (n, c, h, w): window ``kernel`` x ``kernel``, stride = window."""

    kernel: int = 2

    @property
    def geometry(self) -> K.Pool2dGeometry:
        return K.pool2d_geometry(self.x_shape, self.kernel)

    @property
    def label(self) -> str:
        return f"{super().label} {self.kernel}x{self.kernel}"


Workload = ConvWorkload | PoolWorkload | EltWorkload

BATCH = 32
#: The four conv layers of catnet (DESIGN.md) at batch 32.
CONV_WORKLOADS: tuple[ConvWorkload, ...] = (
    ConvWorkload("conv1", BATCH, 3, 64, 64, 16),
    ConvWorkload("conv2", BATCH, 16, 64, 64, 16),
    ConvWorkload("conv3", BATCH, 16, 32, 32, 32),
    ConvWorkload("conv4", BATCH, 32, 16, 16, 64),
)
#: The three 2x2 max pools of catnet; avg pooling is measured on the first one.
POOL_WORKLOADS: tuple[PoolWorkload, ...] = (
    PoolWorkload("pool1", BATCH, 16, 64, 64),
    PoolWorkload("pool2", BATCH, 32, 32, 32),
    PoolWorkload("pool3", BATCH, 64, 16, 16),
)
#: relu on catnet's largest activation (after conv1 and conv2).
RELU_WORKLOADS: tuple[EltWorkload, ...] = (EltWorkload("act1", BATCH, 16, 64, 64),)
#: batch norm after catnet's convs (the default trainer's catnet has one per conv): conv1/conv2's
#: activation, conv3's, conv4's.
BN_WORKLOADS: tuple[EltWorkload, ...] = (
    EltWorkload("act1", BATCH, 16, 64, 64),
    EltWorkload("act3", BATCH, 32, 32, 32),
    EltWorkload("act4", BATCH, 64, 16, 16),
)
#: Small shapes on which every backend, naive python included, runs the full batch quickly.
SMALL_WORKLOADS: dict[str, Workload] = {
    "conv": ConvWorkload("small", 2, 3, 16, 16, 8),
    "pool": PoolWorkload("small", 2, 8, 16, 16),
    "relu": EltWorkload("small", 2, 8, 16, 16),
    "bn": EltWorkload("small", 2, 8, 16, 16),
}

#: kernel name -> (family, human description). The family selects the workloads.
KERNELS: dict[str, tuple[str, str]] = {
    "conv_fwd": ("conv", "conv2d forward"),
    "conv_bwd": ("conv", "conv2d backward (dx, dw, db)"),
    "conv_fwd_bwd": ("conv", "conv2d forward + backward"),
    "maxpool_fwd": ("pool", "max_pool2d forward (with argmax)"),
    "maxpool_bwd": ("pool", "max_pool2d backward"),
    "avgpool_fwd": ("pool", "avg_pool2d forward"),
    "avgpool_bwd": ("pool", "avg_pool2d backward"),
    "relu_fwd": ("relu", "relu forward"),
    "relu_bwd": ("relu", "relu backward"),
    "bn_fwd": ("bn", "batch norm forward (batch statistics)"),
    "bn_bwd": ("bn", "batch norm backward (dx, dweight, dbias)"),
}


def workloads_for(kernel: str, *, full: bool = True) -> list[Workload]:
    """The catnet workloads of ``kernel`` plus its small shape. ``full=False``: the quick subset."""
    family = KERNELS[kernel][0]
    if family == "conv":
        big: Sequence[Workload] = CONV_WORKLOADS if full else CONV_WORKLOADS[:2]
    elif family == "pool":
        big = POOL_WORKLOADS if full and kernel.startswith("max") else POOL_WORKLOADS[:1]
    elif family == "bn":
        big = BN_WORKLOADS if full else BN_WORKLOADS[:1]
    else:
        big = RELU_WORKLOADS
    return [SMALL_WORKLOADS[family], *big]


#: Kernels of the quick default (``fastconv bench`` without ``--full``).
QUICK_KERNELS: tuple[str, ...] = ("conv_fwd", "conv_bwd", "maxpool_fwd", "maxpool_bwd", "avgpool_fwd", "relu_fwd")


def kernel_flops(kernel: str, wl: Workload) -> int:
    """Arithmetic work in FLOP (multiply + add = 2); 0 for memory-bound kernels."""
    if not isinstance(wl, ConvWorkload):
        return 0
    fwd = wl.geometry.flops
    return {"conv_fwd": fwd, "conv_bwd": 2 * fwd, "conv_fwd_bwd": 3 * fwd}[kernel]


def kernel_bytes(kernel: str, wl: Workload, itemsize: int) -> int:
    """Compulsory memory traffic of a memory-bound kernel (each operand read or written once)."""
    if isinstance(wl, ConvWorkload):
        return 0
    n_in = wl.n * wl.c * wl.h * wl.w
    n_out = math.prod(wl.geometry.y_shape) if isinstance(wl, PoolWorkload) else n_in
    argmax = 8 * n_out  # int64 winner indices
    return {
        "maxpool_fwd": itemsize * (n_in + n_out) + argmax,
        "maxpool_bwd": itemsize * (n_out + n_in) + argmax,
        "avgpool_fwd": itemsize * (n_in + n_out),
        "avgpool_bwd": itemsize * (n_out + n_in),
        "relu_fwd": itemsize * 2 * n_in,
        "relu_bwd": itemsize * 3 * n_in,
        # the statistics need x before y can be written: the compulsory traffic is still x in, y out
        "bn_fwd": itemsize * 2 * n_in,
        "bn_bwd": itemsize * 3 * n_in,
    }[kernel]


# --------------------------------------------------------------------------------------------
# Benchmark bodies
# --------------------------------------------------------------------------------------------

COMPARE_ENGINES: tuple[str, ...] = ("torch",)
#: BatchNorm2d's default eps, used by the batch-norm benchmarks.
BN_EPS = 1e-5


@dataclass
class Case:
    """One kernel on one workload with one engine, inputs prepared.

    ``fn()`` is what gets timed; ``result()`` calls it once and returns its outputs as a tuple of
    numpy arrays (for conv_bwd: dx, dw, db; for maxpool_fwd: y, argmax; otherwise one array).
    ``inputs`` holds the numpy inputs, so a test can compute the expected outputs itself.
    """

    kernel: str
    workload: Workload
    engine: str
    inputs: dict[str, np.ndarray]
    fn: Callable[[], Any]
    to_numpy: Callable[[Any], tuple[np.ndarray, ...]] = field(default=lambda out: _as_tuple(out))

    def result(self) -> tuple[np.ndarray, ...]:
        return self.to_numpy(self.fn())


def _as_tuple(out: Any) -> tuple[np.ndarray, ...]:
    return tuple(out) if isinstance(out, tuple) else (out,)


def make_inputs(kernel: str, wl: Workload, dtype: np.dtype | type = np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs of ``kernel`` on ``wl`` (numpy arrays of ``dtype``; argmax int64).

    Pooling backward receives the argmax of a real forward pass, computed here with the numpy
    reshape trick (2x2 windows, stride 2), so the inputs do not depend on any backend.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    if isinstance(wl, ConvWorkload):
        g = wl.geometry
        scale = 1.0 / math.sqrt(g.c * g.r * g.s)
        inputs = {"x": rand(*g.x_shape), "w": (rand(*g.w_shape) * scale).astype(dtype), "b": rand(g.k)}
        if kernel != "conv_fwd":
            inputs["dy"] = rand(*g.y_shape)
        return inputs
    if isinstance(wl, PoolWorkload):
        g = wl.geometry
        inputs = {"x": rand(*g.x_shape)}
        if kernel.endswith("_bwd"):
            inputs["dy"] = rand(*g.y_shape)
        if kernel == "maxpool_bwd":
            inputs["argmax"] = _window_argmax(inputs["x"], wl.kernel)
        return inputs
    inputs = {"x": rand(wl.n, wl.c, wl.h, wl.w), "dy": rand(wl.n, wl.c, wl.h, wl.w)}
    if kernel.startswith("bn_"):
        inputs["w"], inputs["b"] = (1 + 0.1 * rand(wl.c)).astype(dtype), rand(wl.c)
        # the statistics the backward receives: the batch's own, computed here in float64
        inputs["mean"] = inputs["x"].mean(axis=(0, 2, 3), dtype=np.float64)
        inputs["var"] = inputs["x"].var(axis=(0, 2, 3), dtype=np.float64)
    return inputs


def _window_argmax(x: np.ndarray, k: int) -> np.ndarray:
    """Flat (h*W + w) argmax of non-overlapping k x k windows, first maximum wins (row-major)."""
    n, c, h, w = x.shape
    ho, wo = h // k, w // k
    win = x[:, :, : ho * k, : wo * k].reshape(n, c, ho, k, wo, k).transpose(0, 1, 2, 4, 3, 5)
    local = win.reshape(n, c, ho, wo, k * k).argmax(axis=-1)  # np.argmax returns the first maximum
    rows = np.arange(ho)[:, None] * k + local // k
    cols = np.arange(wo)[None, :] * k + local % k
    return (rows * w + cols).astype(np.int64)


def make_case(kernel: str, wl: Workload, engine: str, dtype: np.dtype | type = np.float32, seed: int = 0) -> Case:
    """The benchmark body of ``kernel`` on ``wl`` with ``engine`` (a fastconv backend, ``"torch"``,
    or ``"<backend>:<rung>"`` for a conv-forward rung of a backend's ``LADDER``)."""
    inputs = make_inputs(kernel, wl, dtype, seed)
    if engine == "torch":
        return _torch_case(kernel, wl, inputs)
    if ":" in engine:
        return _ladder_case(kernel, wl, engine, inputs)
    be = engine
    x = inputs["x"]
    if isinstance(wl, ConvWorkload):
        w, b, p = inputs["w"], inputs["b"], wl.padding
        dy = inputs.get("dy")
        if kernel == "conv_fwd":
            fn: Callable[[], Any] = lambda: K.conv2d_forward(x, w, b, 1, p, backend=be)  # noqa: E731
        elif kernel == "conv_bwd":
            fn = lambda: K.conv2d_backward(dy, x, w, 1, p, backend=be)  # noqa: E731
        else:

            def fn() -> tuple[np.ndarray, ...]:
                y = K.conv2d_forward(x, w, b, 1, p, backend=be)
                return (y, *K.conv2d_backward(dy, x, w, 1, p, backend=be))

    elif isinstance(wl, PoolWorkload):
        kk, dy = wl.kernel, inputs.get("dy")
        fn = {
            "maxpool_fwd": lambda: K.max_pool2d_forward(x, kk, backend=be),
            "maxpool_bwd": lambda: K.max_pool2d_backward(dy, inputs["argmax"], x.shape, backend=be),
            "avgpool_fwd": lambda: K.avg_pool2d_forward(x, kk, backend=be),
            "avgpool_bwd": lambda: K.avg_pool2d_backward(dy, x.shape, kk, backend=be),
        }[kernel]
    elif kernel.startswith("bn_"):
        dy, w, b, mean, var = (inputs[k] for k in ("dy", "w", "b", "mean", "var"))
        fn = {
            "bn_fwd": lambda: K.batch_norm_forward(x, w, b, BN_EPS, backend=be),
            "bn_bwd": lambda: K.batch_norm_backward(dy, x, w, mean, var, BN_EPS, True, backend=be),
        }[kernel]
    else:
        dy = inputs["dy"]
        fn = {
            "relu_fwd": lambda: K.relu_forward(x, backend=be),
            "relu_bwd": lambda: K.relu_backward(dy, x, backend=be),
        }[kernel]
    return Case(kernel, wl, engine, inputs, fn)


def ladder_rungs(backends: Iterable[str]) -> list[str]:
    """``"<backend>:<rung>"`` for every entry of a backend module's ``LADDER`` dict
    (rung name -> conv forward fn(x, w, b, g)), e.g. ``numba:naive``. Backends without one add nothing."""
    rungs = []
    for name in backends:
        if name in COMPARE_ENGINES:
            continue
        ladder = getattr(K.get_backend(name), "LADDER", None) or {}
        rungs += [f"{name}:{rung}" for rung in ladder]
    return rungs


def _ladder_case(kernel: str, wl: Workload, engine: str, inputs: dict[str, np.ndarray]) -> Case:
    if kernel != "conv_fwd" or not isinstance(wl, ConvWorkload):
        raise ValueError(f"engine {engine!r}: ladder rungs exist for conv_fwd only, got {kernel}")
    name, rung = engine.split(":", 1)
    fwd = K.get_backend(name).LADDER[rung]
    x, w, b, g = inputs["x"], inputs["w"], inputs["b"], wl.geometry
    # A rung is a raw backend function: it gets the arrays and geometry dispatch would give it.
    return Case(kernel, wl, engine, inputs, lambda: fwd(x, w, b, g))


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def import_torch():
    """Import torch for the comparison column, asking for its OpenMP threads to sleep when idle.

    By default OpenMP workers spin for a while after every parallel region; interleaved with our
    engines on 2 cores, torch's spinning steals the cores from whatever runs next (measured: numpy's
    BLAS conv backward 3-5x slower right after a torch op). OMP_WAIT_POLICY=PASSIVE is read once,
    when the process first loads an OpenMP runtime, so it is set just for torch's import (unless
    the user set it). It only takes effect when torch's import is what loads that runtime: PyTorch's
    wheel links libgomp.so.1, the soname the Cython kernels and Numba's omp layer use, so once
    fastconv's kernels have loaded the system libgomp, torch shares it and spins by default; when
    torch loads it first, our kernels share torch's runtime and its passive policy
    (:func:`torch_wait_policy` says which happened).
    """
    global _torch_wait_policy
    if "torch" not in sys.modules:
        if "OMP_WAIT_POLICY" in os.environ:
            _torch_wait_policy = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} set by the user"
        elif _openmp_runtime_loaded():
            _torch_wait_policy = (
                "default (spinning): torch shares the OpenMP runtime fastconv's kernels had already loaded, "
                "so OMP_WAIT_POLICY=PASSIVE could not apply"
            )
        else:
            _torch_wait_policy = "OMP_WAIT_POLICY=PASSIVE (its OpenMP threads sleep when idle)"
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            try:
                import torch
            finally:
                del os.environ["OMP_WAIT_POLICY"]
    import torch

    return torch


_torch_wait_policy = "unknown (torch was imported before fastconv.bench.import_torch)"


def torch_wait_policy() -> str:
    """How torch's OpenMP threads wait, as far as :func:`import_torch` could tell."""
    return _torch_wait_policy


def _openmp_runtime_loaded() -> bool:
    """Whether an OpenMP runtime (libgomp / libomp / libiomp) is mapped into this process (Linux);
    False where /proc/self/maps does not exist."""
    try:
        with open("/proc/self/maps") as f:
            return any(name in line for line in f for name in ("libgomp", "libomp", "libiomp"))
    except OSError:
        return False


def suite_engines() -> tuple[list[str], list[str], list[str]]:
    """Engines of the pytest-benchmark suites: (every available backend, the backends timed on catnet
    shapes = all but naive python, comparison engines = torch when importable and
    ``FASTCONV_BENCH_TORCH`` is not "0")."""
    backends = K.available_backends()
    compare = ["torch"] if torch_available() and os.environ.get("FASTCONV_BENCH_TORCH", "1") != "0" else []
    return backends, [b for b in backends if b != "python"], compare


def _torch_case(kernel: str, wl: Workload, inputs: dict[str, np.ndarray]) -> Case:
    """PyTorch CPU on the same inputs, through aten ops so that no autograd bookkeeping is timed."""
    torch = import_torch()
    import torch.nn.functional as F

    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    aten = torch.ops.aten
    x = t["x"]
    if isinstance(wl, ConvWorkload):
        p = [wl.padding, wl.padding]
        w, b, dy = t["w"], t["b"], t.get("dy")

        def bwd() -> tuple:
            return tuple(aten.convolution_backward(dy, x, w, [wl.k], [1, 1], p, [1, 1], False, [0, 0], 1, [True] * 3))

        if kernel == "conv_fwd":
            fn: Callable[[], Any] = lambda: F.conv2d(x, w, b, padding=p)  # noqa: E731
        elif kernel == "conv_bwd":
            fn = bwd
        else:
            fn = lambda: (F.conv2d(x, w, b, padding=p), *bwd())  # noqa: E731
    elif isinstance(wl, PoolWorkload):
        kk = [wl.kernel, wl.kernel]
        dy = t.get("dy")
        fn = {
            "maxpool_fwd": lambda: F.max_pool2d(x, kk, return_indices=True),
            "maxpool_bwd": lambda: aten.max_pool2d_with_indices_backward(
                dy, x, kk, kk, [0, 0], [1, 1], False, t["argmax"]
            ),
            "avgpool_fwd": lambda: F.avg_pool2d(x, kk),
            "avgpool_bwd": lambda: aten.avg_pool2d_backward(dy, x, kk, kk, [0, 0], False, True, None),
        }[kernel]
    elif kernel.startswith("bn_"):
        dy, w, b = t["dy"], t["w"], t["b"]
        mean = t["mean"].to(x.dtype)
        invstd = 1.0 / torch.sqrt(t["var"] + BN_EPS).to(x.dtype)

        def bn_fwd() -> tuple:
            y, m, rstd = aten.native_batch_norm(x, w, b, None, None, True, 0.0, BN_EPS)[:3]
            return y, m, 1.0 / rstd**2 - BN_EPS  # torch returns 1 / sqrt(var + eps); the contract var

        fn = {
            "bn_fwd": bn_fwd,
            "bn_bwd": lambda: aten.native_batch_norm_backward(
                dy, x, w, None, None, mean, invstd, True, BN_EPS, [True, True, True]
            ),
        }[kernel]
    else:
        dy = t["dy"]
        fn = {"relu_fwd": lambda: torch.relu(x), "relu_bwd": lambda: aten.threshold_backward(dy, x, 0)}[kernel]

    def to_numpy(out: Any) -> tuple[np.ndarray, ...]:
        return tuple(o.numpy() for o in _as_tuple(out))

    return Case(kernel, wl, "torch", inputs, fn, to_numpy)


# --------------------------------------------------------------------------------------------
# The catnet step
# --------------------------------------------------------------------------------------------

#: (in_channels, out_channels) of catnet's 3x3 pad-1 convs; a 2x2 max pool follows all but the first.
CATNET_CONVS: tuple[tuple[int, int], ...] = ((3, 16), (16, 16), (16, 32), (32, 64))
CATNET_POOL_AFTER: tuple[bool, ...] = (False, True, True, True)
STEP_LR = 0.01


def catnet_params(image_size: int = 64, dtype: np.dtype | type = np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised catnet parameters: conv{i}.weight (K,C,3,3), conv{i}.bias (K,),
    fc.weight (1, 64*(image_size/8)^2), fc.bias (1,)."""
    if image_size % 8:
        raise ValueError(f"image_size: expected a multiple of 8 (three 2x2 pools), got {image_size}")
    rng = np.random.default_rng(seed)
    params = {}
    for i, (c, k) in enumerate(CATNET_CONVS, 1):
        params[f"conv{i}.weight"] = (rng.standard_normal((k, c, 3, 3)) * math.sqrt(2.0 / (9 * c))).astype(dtype)
        params[f"conv{i}.bias"] = np.zeros(k, dtype)
    features = CATNET_CONVS[-1][1] * (image_size // 8) ** 2
    params["fc.weight"] = (rng.standard_normal((1, features)) * math.sqrt(1.0 / features)).astype(dtype)
    params["fc.bias"] = np.zeros(1, dtype)
    return params


def catnet_batch(batch: int, image_size: int = 64, dtype: np.dtype | type = np.float32, seed: int = 0):
    """A seeded batch: images (batch, 3, S, S) in [0, 1) and labels (batch,) in {0, 1}, both ``dtype``."""
    rng = np.random.default_rng(seed + 1)
    x = rng.random((batch, 3, image_size, image_size)).astype(dtype)
    y = (rng.random(batch) < 0.5).astype(dtype)
    return x, y


class KernelCatnet:
    """catnet trained directly on fastconv.kernels ops: the dependency-free "catnet step".

    ``step(x, y)`` = forward, binary cross-entropy on the logit (mean over the batch), backward,
    plain SGD update of ``params`` in place; returns the loss before the update. Dropout(0.5)
    masks come from a generator seeded at construction, so two instances with the same seed
    draw the same masks (and different backends can be compared step for step). The linear
    layer and the loss are numpy, identical for every backend.
    """

    def __init__(
        self, params: dict[str, np.ndarray], backend: str, lr: float = STEP_LR, seed: int = 0, dropout: bool = True
    ) -> None:
        self.params = params
        self.backend = backend
        self.lr = lr
        self.dropout = dropout
        self._rng = np.random.default_rng(seed + 2)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        p, be = self.params, self.backend
        caches = []
        a = x
        for i, pool in enumerate(CATNET_POOL_AFTER, 1):
            z = K.conv2d_forward(a, p[f"conv{i}.weight"], p[f"conv{i}.bias"], 1, 1, backend=be)
            r = K.relu_forward(z, backend=be)
            out, argmax = K.max_pool2d_forward(r, 2, backend=be) if pool else (r, None)
            caches.append((a, z, r.shape, argmax))
            a = out
        feats = a.reshape(a.shape[0], -1)
        keep = (self._rng.random(feats.shape) >= 0.5).astype(feats.dtype) * 2 if self.dropout else 1  # inverted
        h = feats * keep
        logit = h @ p["fc.weight"][0] + p["fc.bias"][0]
        # mean BCE-with-logits, written in the overflow-free form max(l,0) - l*y + log(1+exp(-|l|))
        loss = float(np.mean(np.maximum(logit, 0) - logit * y + np.log1p(np.exp(-np.abs(logit)))))
        dlogit = ((1 / (1 + np.exp(-logit)) - y) / len(y)).astype(x.dtype)
        grads = {"fc.weight": (dlogit @ h)[None, :], "fc.bias": np.array([dlogit.sum()], x.dtype)}
        da = ((np.outer(dlogit, p["fc.weight"][0]) * keep).reshape(a.shape)).astype(x.dtype)
        for i in range(len(CATNET_CONVS), 0, -1):
            a_in, z, r_shape, argmax = caches[i - 1]
            dr = K.max_pool2d_backward(da, argmax, r_shape, backend=be) if argmax is not None else da
            dz = K.relu_backward(dr, z, backend=be)
            da, grads[f"conv{i}.weight"], grads[f"conv{i}.bias"] = K.conv2d_backward(
                dz, a_in, p[f"conv{i}.weight"], 1, 1, need_dx=i > 1, backend=be
            )
        for name, g in grads.items():
            p[name] -= self.lr * g
        return loss


@dataclass
class StepCase:
    """One catnet training step with one engine: ``fn()`` runs it and returns the loss;
    ``params()`` returns the current parameters as numpy arrays (names as in :func:`catnet_params`)."""

    engine: str
    impl: str
    batch: int
    fn: Callable[[], float]
    params: Callable[[], dict[str, np.ndarray]]


def make_catnet_step(
    engine: str,
    batch: int = BATCH,
    image_size: int = 64,
    dtype: np.dtype | type = np.float32,
    seed: int = 0,
    impl: str = "kernels",
    dropout: bool = True,
) -> StepCase:
    """The catnet-step benchmark body. ``impl``: ``"kernels"`` (:class:`KernelCatnet` on backend
    ``engine``), ``"model"`` (the fastconv model API: zoo.catnet + BCEWithLogitsLoss + SGD), or
    ``engine="torch"`` (the same network with torch autograd and torch.optim.SGD). All start from
    :func:`catnet_params` with ``seed`` and train on :func:`catnet_batch`; learning rate STEP_LR.
    ``dropout=False`` leaves out the Dropout(0.5) layer, which makes the three implementations
    compute the same numbers (their dropout masks come from different generators)."""
    x, y = catnet_batch(batch, image_size, dtype, seed)
    params = catnet_params(image_size, dtype, seed)
    if engine == "torch":
        return _torch_step(params, x, y, batch, dropout)
    if impl == "model":
        return _model_step(engine, params, x, y, batch, image_size, dropout)
    if impl != "kernels":
        raise ValueError(f"impl: expected 'kernels' or 'model', got {impl!r}")
    net = KernelCatnet(params, engine, seed=seed, dropout=dropout)
    return StepCase(engine, "kernels", batch, lambda: net.step(x, y), lambda: net.params)


def model_api_available() -> str | None:
    """None when the fastconv model API (zoo, losses, optim) imports; else why not."""
    try:
        for mod in ("fastconv.zoo", "fastconv.losses", "fastconv.optim"):
            importlib.import_module(mod)
    except ImportError as exc:
        return f"fastconv model API not available ({exc})"
    return None


def _model_step(backend: str, params: dict[str, np.ndarray], x, y, batch: int, image_size: int, dropout: bool):
    why = model_api_available()
    if why:
        raise RuntimeError(why)
    from fastconv import losses, optim, zoo

    model = zoo.catnet(image_size=image_size, backend=backend, dtype=x.dtype, dropout=0.5 if dropout else 0.0)
    _load_catnet_params(model, params)
    model.train()
    loss_fn = losses.BCEWithLogitsLoss()
    opt = optim.SGD(model.parameters(), lr=STEP_LR)

    def step() -> float:
        model.zero_grad()
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        return loss

    return StepCase(backend, "model", batch, step, lambda: _catnet_params_of(model))


def _model_param_layers(model) -> list:
    return [layer for layer in model.layers if getattr(layer, "weight", None) is not None]


def _load_catnet_params(model, params: dict[str, np.ndarray]) -> None:
    layers = _model_param_layers(model)
    names = [f"conv{i}" for i in range(1, len(CATNET_CONVS) + 1)] + ["fc"]
    for layer, name in zip(layers, names, strict=True):
        layer.weight.data[...] = params[f"{name}.weight"].reshape(layer.weight.data.shape)
        layer.bias.data[...] = params[f"{name}.bias"]


def _catnet_params_of(model) -> dict[str, np.ndarray]:
    names = [f"conv{i}" for i in range(1, len(CATNET_CONVS) + 1)] + ["fc"]
    out = {}
    for layer, name in zip(_model_param_layers(model), names, strict=True):
        out[f"{name}.weight"] = np.array(layer.weight.data).reshape(layer.weight.data.shape)
        out[f"{name}.bias"] = np.array(layer.bias.data)
    return out


def _torch_step(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, batch: int, dropout: bool):
    torch = import_torch()
    from torch import nn

    layers: list[nn.Module] = []
    for (c, k), pool in zip(CATNET_CONVS, CATNET_POOL_AFTER):
        layers += [nn.Conv2d(c, k, 3, padding=1), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
    fc = nn.Linear(params["fc.weight"].shape[1], 1)
    layers += [nn.Flatten(), *([nn.Dropout(0.5)] if dropout else []), fc]
    net = nn.Sequential(*layers).to(torch.from_numpy(x).dtype)
    convs = [m for m in net if isinstance(m, nn.Conv2d)] + [fc]
    names = [f"conv{i}" for i in range(1, len(CATNET_CONVS) + 1)] + ["fc"]
    with torch.no_grad():
        for m, name in zip(convs, names):
            m.weight.copy_(torch.from_numpy(params[f"{name}.weight"]))
            m.bias.copy_(torch.from_numpy(params[f"{name}.bias"]))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=STEP_LR)
    loss_fn = nn.BCEWithLogitsLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(tx)[:, 0], ty)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def current() -> dict[str, np.ndarray]:
        out = {}
        for m, name in zip(convs, names):
            out[f"{name}.weight"] = m.weight.detach().numpy().copy()
            out[f"{name}.bias"] = m.bias.detach().numpy().copy()
        return out

    return StepCase("torch", "torch", batch, step, current)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


#: Untimed pause before every timed sample (see :func:`interleaved_medians`): longer than
#: OpenBLAS's default spin-wait (2**28 cycles, ~0.1 s), so the previous engine's idle threads
#: have gone to sleep before the next engine's clock starts.
SETTLE_S = 0.15


@dataclass
class BenchConfig:
    """Settings of one ``fastconv bench`` run (defaults = the quick run)."""

    full: bool = False
    backends: list[str] | None = None  # None: every available backend
    threads: int | None = None  # None: every core this process may use
    dtype: str = "float32"
    compare: list[str] = field(default_factory=list)
    repeats: int | None = None  # None: 5 quick, 15 full
    min_sample_s: float | None = None  # None: 0.02 quick, 0.05 full
    python_budget_s: float | None = None  # naive python per call (estimated) above this is skipped
    compile_time: bool | None = None  # measure Numba's cold compile (subprocess); None: only with full
    slow: tuple[float, int] | None = None  # None: calls over 0.3 s get 2 samples (quick) / 1.0 s get 5 (full)
    settle_s: float | None = None  # untimed pause before every sample; None: SETTLE_S
    progress: bool = True

    def resolved(self) -> BenchConfig:
        c = replace(self)
        c.repeats = c.repeats or (15 if c.full else 5)
        c.min_sample_s = c.min_sample_s or (0.05 if c.full else 0.02)
        c.python_budget_s = c.python_budget_s or (1e9 if c.full else 1.2)
        c.slow = c.slow or ((1.0, 5) if c.full else (0.3, 2))
        c.settle_s = SETTLE_S if c.settle_s is None else c.settle_s
        if c.compile_time is None:
            c.compile_time = c.full
        c.threads = c.threads or _threads.cpu_count()
        available = K.available_backends()
        if c.backends is None:
            c.backends = available
        else:
            unknown = [b for b in c.backends if b not in available]
            if unknown:
                raise ValueError(
                    f"--backends: {unknown} not available here; available: {available} "
                    f"(unavailable: {K.backend_errors()})"
                )
        return c


def _time_once(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` back-to-back calls, garbage collector paused."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number
    finally:
        if enabled:
            gc.enable()


#: After a settle pause, the function runs untimed for at least this long (at least once): on a
#: virtual machine an idle vCPU can take milliseconds to come back, which a 20 us kernel would
#: otherwise report as its own time.
REWARM_S = 0.01


def settle(seconds: float, fn: Callable[[], Any], rewarm: bool) -> None:
    """Sleep ``seconds`` (if > 0), then with ``rewarm`` run ``fn`` untimed for >= REWARM_S: the pause
    before every timed sample of :func:`interleaved_medians` and of the CPU-time loops in benchmarks/."""
    if seconds <= 0:
        return
    time.sleep(seconds)
    if rewarm:
        t0 = time.perf_counter()
        fn()
        while time.perf_counter() - t0 < REWARM_S:
            fn()


def interleaved_medians(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    min_sample_s: float,
    *,
    max_repeats: dict[str, int] | None = None,
    slow: tuple[float, int] | None = None,
    warmup: bool = True,
    cold: Iterable[str] = (),
    settle_s: float = 0.0,
    tick: Callable[[], None] | None = None,
) -> dict[str, tuple[float, int]]:
    """Median seconds per call of each function, timed round-robin.

    Each function is warmed up once (unless ``warmup=False``, it is capped at one repeat, or it is
    named in ``cold``: an interpreted function with nothing to compile or cache gains nothing),
    then calibrated so that a sample lasts >= ``min_sample_s``. Round ``i`` starts with a
    different function each time, so a burst of load elsewhere on the machine does not
    always fall on the same one. ``max_repeats[name]`` caps the rounds of slow functions;
    ``slow=(seconds, n)`` also caps at ``n`` samples every function whose calibration call took
    longer than ``seconds`` (its run-to-run spread is small next to its length, and the time budget
    of a quick run goes further on the fast, noisy ones).
    ``settle_s``: an untimed pause before every sample. Thread pools keep their threads
    spin-waiting for a while after a call returns (OpenBLAS ~0.1 s, libgomp less); on a machine
    with few cores those spinning threads steal cores from the function timed next, so without
    a pause each engine's time depends on which engine ran before it (measured on 2 cores:
    cython's conv4 fwd+bwd 17-20 ms timed right after numpy's, 9-11 ms after a 0.15 s pause,
    8.5-9 ms alone in its process). After the pause the function runs untimed for
    :data:`REWARM_S` (not the ``cold`` ones) so that its own threads are awake again.
    Returns name -> (median seconds per call, number of samples).
    """
    caps = dict(max_repeats or {})
    numbers: dict[str, int] = {}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        if warmup and caps.get(name, repeats) > 1 and name not in cold:
            fn()
        settle(settle_s, fn, rewarm=name not in cold)
        first = _time_once(fn, 1)
        samples[name].append(first)  # the calibration call is a valid sample too
        numbers[name] = max(1, math.ceil(min_sample_s / max(first, 1e-9)))
        if slow and first > slow[0]:
            caps[name] = min(caps.get(name, repeats), slow[1])
    order = list(fns)
    for rnd in range(1, repeats):
        shift = rnd % len(order)
        for name in order[shift:] + order[:shift]:
            if len(samples[name]) < caps.get(name, repeats):
                settle(settle_s, fns[name], rewarm=name not in cold)
                samples[name].append(_time_once(fns[name], numbers[name]))
        if tick:
            tick()
    return {name: (statistics.median(s), len(s)) for name, s in samples.items()}


def measure_peak(dtype: np.dtype | type = np.float32, size: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of a size^3 numpy matrix product in ``dtype`` (BLAS, current thread count)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)  # warm-up: BLAS thread pool start-up, page faults of `out`
    times = [_time_once(lambda: np.matmul(a, b, out=out), 1) for _ in range(repeats)]
    return 2 * size**3 / statistics.median(times) / 1e9


def python_cost_estimate_s(kernel: str, wl: Workload) -> float:
    """Rough seconds of one naive-python call on ``wl`` (~0.45 us per multiply-add / element),
    used only to decide whether the quick run can afford it."""
    if isinstance(wl, ConvWorkload):
        return kernel_flops(kernel, wl) / 2 * 0.45e-6 * (1.5 if kernel != "conv_fwd" else 1)
    return wl.n * wl.c * wl.h * wl.w * 0.45e-6


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and flags, cores, threads, BLAS (threadpoolctl) and library versions."""
    cpu, flags = "unknown", set()
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = m.group(1).strip() if m else platform.processor() or "unknown"
        fam, mod = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M), re.search(r"^model\s*:\s*(\d+)", text, re.M)
        if fam and mod:
            cpu += f" (family {fam.group(1)} model {mod.group(1)})"
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
    simd = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        with contextlib.suppress(OSError):
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            name = f"L{level}" + ("d" if kind == "Data" else "i" if kind == "Instruction" else "")
            caches[name] = (index / "size").read_text().strip()
    blas = [
        f"{d.get('internal_api')} {d.get('version')} ({d.get('threading_layer', '?')}, {d.get('architecture', '?')}, "
        f"from {Path(d.get('filepath', '?')).parent.name})"
        for d in _threads.blas_info()
        if d.get("user_api") == "blas"
    ]
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("numba", "Cython", "torch"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and mod in sys.modules:
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
        elif spec is not None and mod == "numba":
            import numba

            versions[mod] = numba.__version__
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "load_average_1min": load,
        "cpu": cpu,
        "simd": simd,
        "caches_per_core": caches,
        "cores": _threads.cpu_count(),
        "threads": threads,
        "blas": blas,
        "platform": platform.platform(),
        "versions": versions,
    }


@contextlib.contextmanager
def _progress(total: int, enabled: bool):
    if not enabled:
        yield lambda *a, **k: None, lambda *a, **k: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, file=sys.stderr, unit="round", leave=False, dynamic_ncols=True)
    try:
        yield (lambda: bar.update(1)), bar.set_description_str
    finally:
        bar.close()


def _set_threads(n: int, engines: Iterable[str]) -> None:
    K.set_num_threads(n)
    if "torch" in engines:
        import_torch().set_num_threads(n)


def warm_up_backends(backends: Iterable[str], dtype: np.dtype | type | None = None) -> dict[str, float]:
    """Call each backend module's ``compile_all()`` if it has one; seconds it took per backend.

    With Numba's on-disk cache warm this is the cache load; cold, it is the compilation. When
    ``compile_all`` accepts ``dtypes``, only ``dtype`` is compiled (half the cold cost)."""
    import inspect

    out = {}
    for name in backends:
        fn = getattr(K.get_backend(name), "compile_all", None)
        if callable(fn):
            kwargs = {}
            if dtype is not None and "dtypes" in inspect.signature(fn).parameters:
                kwargs["dtypes"] = (np.dtype(dtype).type,)
            t0 = time.perf_counter()
            fn(**kwargs)
            out[name] = time.perf_counter() - t0
    return out


_COMPILE_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fastconv.kernels as K
mod = K.get_backend(sys.argv[1])
t1 = time.perf_counter()
how = "compile_all()"
if callable(getattr(mod, "compile_all", None)):
    mod.compile_all()
else:
    how = "first call of each op, float32, tiny shape"
    x = np.ones((1, 2, 6, 6), np.float32); w = np.ones((2, 2, 3, 3), np.float32)
    y = K.conv2d_forward(x, w, None, 1, 1, backend=sys.argv[1])
    K.conv2d_backward(y, x, w, 1, 1, backend=sys.argv[1])
    p, a = K.max_pool2d_forward(x, 2, backend=sys.argv[1])
    K.max_pool2d_backward(p, a, x.shape, backend=sys.argv[1])
    K.avg_pool2d_backward(K.avg_pool2d_forward(x, 2, backend=sys.argv[1]), x.shape, 2, backend=sys.argv[1])
    K.relu_backward(x, K.relu_forward(x, backend=sys.argv[1]), backend=sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "compile_s": t2 - t1, "how": how}))
"""


def measure_compile_time(backend: str = "numba") -> dict[str, Any]:
    """Numba's compilation, apart from run time: two fresh subprocesses share an empty
    NUMBA_CACHE_DIR; the first compiles everything (cold), the second loads the cache (warm)."""
    with tempfile.TemporaryDirectory(prefix="fastconv-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = []
        for _ in ("cold", "warm"):
            proc = subprocess.run(
                [sys.executable, "-c", _COMPILE_PROBE, backend], env=env, capture_output=True, text=True, timeout=900
            )
            if proc.returncode != 0:
                return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {
        "method": f"fresh subprocess, empty NUMBA_CACHE_DIR, {runs[0]['how']}; then a second subprocess on that cache",
        "cold_compile_s": runs[0]["compile_s"],
        "cold_import_s": runs[0]["import_s"],
        "warm_load_s": runs[1]["compile_s"],
        "warm_import_s": runs[1]["import_s"],
    }


def run_benchmarks(config: BenchConfig | None = None) -> dict[str, Any]:
    """Run the benchmark described by ``config``; returns the report as a JSON-able dict."""
    cfg = (config or BenchConfig()).resolved()
    dtype = np.dtype(cfg.dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"--dtype: expected float32 or float64, got {cfg.dtype}")
    unknown = [c for c in cfg.compare if c not in COMPARE_ENGINES]
    if unknown:
        raise ValueError(f"--compare: expected one of {list(COMPARE_ENGINES)}, got {unknown}")
    notes: list[str] = []
    compare = list(cfg.compare)
    if "torch" in compare and not torch_available():
        notes.append("--compare torch: PyTorch is not installed here, so there is no torch column (pip install torch).")
        compare.remove("torch")
    engines = [*cfg.backends, *compare]
    _set_threads(cfg.threads, engines)
    if "torch" in compare:
        notes.append(
            f"torch {import_torch().__version__} CPU, torch.set_num_threads({cfg.threads}); its OpenMP "
            f"wait policy: {torch_wait_policy()}."
        )
    t_start = time.perf_counter()
    warm = warm_up_backends(cfg.backends, dtype)
    rungs = ladder_rungs(cfg.backends) if cfg.full else []  # the LADDER rungs: --full only

    kernels = list(KERNELS) if cfg.full else list(QUICK_KERNELS)
    plan = [(k, wl) for k in kernels for wl in workloads_for(k, full=cfg.full)]
    step_engines = [*cfg.backends, *compare]
    model_why = model_api_available()
    step_impls = [("torch" if e == "torch" else "kernels", e) for e in step_engines]
    if model_why is None:
        # the model-API step is the real training step; the quick run times only it (plus torch)
        model_steps = [("model", e) for e in cfg.backends if e != "python"]
        step_impls = model_steps + [i for i in step_impls if cfg.full or i[1] == "torch"]
    total = (len(plan) + 1) * max(cfg.repeats - 1, 1) + 1
    results: list[dict[str, Any]] = []
    peak_samples: list[float] = []
    with _progress(total, cfg.progress) as (tick, describe):
        describe("peak (matmul)")
        peak_samples.append(measure_peak(dtype, repeats=3 if not cfg.full else 7))
        tick()
        for kernel, wl in plan:
            describe(f"{kernel} {wl.name}")
            results += _bench_one(kernel, wl, cfg, dtype, engines, rungs, tick)
        describe("catnet step")
        steps = _bench_steps(step_impls, cfg, dtype, tick)
        peak_samples.append(measure_peak(dtype, repeats=3 if not cfg.full else 7))
    peak = statistics.median(peak_samples)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 1.5 * _threads.cpu_count():
        notes.append(
            f"load average {load:.1f} on {_threads.cpu_count()} cores at the end of the run: other processes "
            "competed for the CPU, so times are inflated and noisy (ratios within a round are fairer)."
        )
    _derive(results, peak)
    if model_why is not None:
        notes.append(f"catnet step via the model API skipped: {model_why}.")
    compile_info = {"in_process_warmup_s": warm}
    if cfg.compile_time and "numba" in cfg.backends:
        compile_info["numba"] = measure_compile_time("numba")
    return {
        "title": "fastconv bench",
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "full" if cfg.full else "quick",
        "dtype": dtype.name,
        "repeats": cfg.repeats,
        "settle_s": cfg.settle_s,
        "machine": machine_info(cfg.threads),
        "peak_gflops": peak,
        "peak_samples_gflops": peak_samples,
        "peak_method": f"median of numpy {dtype.name} 2048^3 matmul (BLAS), measured at start and end of this run",
        "engines": engines,
        "rungs": rungs,
        "results": results,
        "catnet_step": steps,
        "compile": compile_info,
        "notes": notes,
        "elapsed_s": time.perf_counter() - t_start,
    }


def _bench_one(kernel, wl, cfg, dtype, engines, rungs, tick) -> list[dict[str, Any]]:
    is_small = wl.name == "small"
    fns, batch_of, caps = {}, {}, {}
    for engine in engines + (rungs if kernel == "conv_fwd" else []):
        run_wl = wl
        if engine == "python":
            if not is_small:
                run_wl = wl.with_batch(1)  # scaled per image below
            if python_cost_estimate_s(kernel, run_wl) > cfg.python_budget_s:
                continue
            caps[engine] = 1 if not cfg.full else 2
        if engine.endswith(":naive") and not is_small:
            caps[engine] = 3  # a naive rung is slow; its medians need few samples
        fns[engine] = make_case(kernel, run_wl, engine, dtype).fn
        batch_of[engine] = run_wl.n
    timed = interleaved_medians(
        fns, cfg.repeats, cfg.min_sample_s, max_repeats=caps, slow=cfg.slow, cold={"python"}, settle_s=cfg.settle_s,
        tick=tick,
    )
    out = []
    for engine in engine_order(timed, rungs):
        sec, n_samples = timed[engine]
        scale = wl.n / batch_of[engine]
        out.append(
            {
                "kernel": kernel,
                "workload": wl.name,
                "label": wl.label,
                "engine": engine,
                "ms": sec * scale * 1e3,
                "timed_batch": batch_of[engine],
                "batch": wl.n,
                "scaled": scale != 1,
                "samples": n_samples,
                "flops": kernel_flops(kernel, wl),
                "bytes": kernel_bytes(kernel, wl, dtype.itemsize),
            }
        )
    return out


def _bench_steps(step_impls, cfg, dtype, tick) -> list[dict[str, Any]]:
    fns, batch_of, caps = {}, {}, {}
    for impl, engine in step_impls:
        batch = BATCH
        if engine == "python":
            if not cfg.full:
                continue  # minutes even at batch 1: only in --full
            batch, caps[f"{impl}:{engine}"] = 1, 1
        fns[f"{impl}:{engine}"] = make_catnet_step(engine, batch, dtype=dtype, impl=impl).fn
        batch_of[f"{impl}:{engine}"] = batch
    repeats = cfg.repeats if cfg.full else min(cfg.repeats, 3)
    cold = {k for k in fns if k.endswith(":python")}
    timed = interleaved_medians(
        fns, repeats, cfg.min_sample_s, max_repeats=caps, slow=cfg.slow, cold=cold, settle_s=cfg.settle_s, tick=tick
    )
    out = []
    for key, (sec, n) in timed.items():
        impl, engine = key.split(":", 1)
        ms = sec * BATCH / batch_of[key] * 1e3
        out.append(
            {
                "impl": impl,
                "engine": engine,
                "ms": ms,
                "images_per_s": BATCH / ms * 1e3,
                "timed_batch": batch_of[key],
                "scaled": batch_of[key] != BATCH,
                "samples": n,
            }
        )
    numpy_ms = {r["impl"]: r["ms"] for r in out if r["engine"] == "numpy"}
    for r in out:
        ref = numpy_ms.get(r["impl"]) or numpy_ms.get("model") or numpy_ms.get("kernels")
        r["vs_numpy"] = ref / r["ms"] if ref else None
    return out


def _derive(results: list[dict[str, Any]], peak: float) -> None:
    """Add GFLOP/s, % of peak, GB/s and the speedups vs python and numpy to each result."""
    by_key = {(r["kernel"], r["workload"], r["engine"]): r for r in results}
    for r in results:
        sec = r["ms"] / 1e3
        r["gflops"] = r["flops"] / sec / 1e9 if r["flops"] else None
        r["pct_peak"] = 100 * r["gflops"] / peak if r["gflops"] else None
        r["gbps"] = r["bytes"] / sec / 1e9 if r["bytes"] else None
        for ref in ("python", "numpy"):
            other = by_key.get((r["kernel"], r["workload"], ref))
            r[f"vs_{ref}"] = other["ms"] / r["ms"] if other else None


# --------------------------------------------------------------------------------------------
# Report: table, JSON, plots
# --------------------------------------------------------------------------------------------


def _fmt_rate(value: float | None) -> str:
    """GFLOP/s, % or GB/s: three significant digits below 10 (naive python is ~0.001 GFLOP/s)."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 10000 else f"{ms:.0f}"


def _fmt_x(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if ratio < 0.1:
        return f"{ratio:.2g}x"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x" if ratio < 100 else f"{ratio:,.0f}x"


def _settle_words(report: dict[str, Any]) -> str:
    pause = report.get("settle_s")  # reports written before the pause existed have none
    return f", {pause:g} s untimed pause before each sample" if pause else ""


def format_report(report: dict[str, Any]) -> str:
    """The report as fixed-width text: machine header, per-kernel table, catnet step, compile time."""
    m = report["machine"]
    lines = [
        f"fastconv bench ({report['mode']}, {report['dtype']}, median of up to {report['repeats']} interleaved "
        f"rounds after warm-up{_settle_words(report)}) {report['created']}",
        f"CPU      {m['cpu']}, {', '.join(m['simd']) or 'no AVX2'}; {m['cores']} cores; {m['threads']} threads; "
        f"caches/core {', '.join(f'{k} {v}' for k, v in m.get('caches_per_core', {}).items())}",
        f"BLAS     {'; '.join(m['blas']) or 'unknown'}",
        f"versions {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"peak     {report['peak_gflops']:.1f} GFLOP/s ({report['peak_method']})",
        "",
    ]
    header = (
        f"{'kernel':<13}{'workload':<32}{'engine':<18}{'ms':>10}{'GFLOP/s':>10}{'%peak':>8}{'GB/s':>9}"
        f"{'vs python':>11}{'vs numpy':>10}"
    )
    lines += [header, "-" * len(header)]
    any_scaled = False
    prev = None
    for r in report["results"]:
        key = (r["kernel"], r["workload"])
        if prev is not None and key[0] != prev[0]:
            lines.append("")
        ms = _fmt_ms(r["ms"]) + ("*" if r["scaled"] else "")
        any_scaled |= r["scaled"]
        lines.append(
            f"{r['kernel'] if key != prev else '':<13}{r['label'] if key != prev else '':<32}{r['engine']:<18}"
            f"{ms:>10}{_fmt_rate(r['gflops']):>10}{_fmt_rate(r['pct_peak']):>8}{_fmt_rate(r['gbps']):>9}"
            f"{_fmt_x(r['vs_python']):>11}{_fmt_x(r['vs_numpy']):>10}"
        )
        prev = key
    if any_scaled:
        lines += [
            "",
            "* naive python timed on a batch of 1 image and multiplied by the batch size (scaled per image);",
            "  'vs python' on those rows compares against that scaled time.",
        ]
    lines += [
        "",
        f"catnet step (DESIGN.md's catnet: forward + backward + SGD update, batch {BATCH}, 64x64x3, "
        f"{report['dtype']}; fastconv train's default adds BatchNorm and AdamW)",
        f"{'implementation':<34}{'engine':<10}{'ms':>10}{'images/s':>10}{'vs numpy':>10}",
    ]
    impl_names = {"kernels": "fastconv.kernels ops", "model": "model API (zoo.catnet)", "torch": "torch autograd"}
    for s in report["catnet_step"]:
        ms = _fmt_ms(s["ms"]) + ("*" if s["scaled"] else "")
        lines.append(
            f"{impl_names.get(s['impl'], s['impl']):<34}{s['engine']:<10}{ms:>10}"
            f"{_fmt_rate(s['images_per_s']):>10}{_fmt_x(s['vs_numpy']):>10}"
        )
    comp = report.get("compile", {})
    lines += ["", "compile / warm-up (not included in any time above)"]
    for name, sec in comp.get("in_process_warmup_s", {}).items():
        lines.append(
            f"  {name}: compile_all() for {report['dtype']} in this process {sec:.2f} s "
            "(compiles on a machine's first run, later only loads Numba's on-disk cache)"
        )
    numba_c = comp.get("numba")
    if numba_c and "error" not in numba_c:
        lines.append(
            f"  numba cold compile {numba_c['cold_compile_s']:.1f} s (+ import {numba_c['cold_import_s']:.2f} s); "
            f"warm cache load {numba_c['warm_load_s']:.2f} s (+ import {numba_c['warm_import_s']:.2f} s)"
        )
        lines.append(f"    method: {numba_c['method']}")
    elif numba_c:
        lines.append(f"  numba compile time: failed ({numba_c['error']})")
    elif "numba" in report["engines"]:
        lines.append("  numba cold compile time: not measured in the quick run (use --full or --compile-time)")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(f"elapsed {report['elapsed_s']:.1f} s")
    return "\n".join(lines)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see fastconv._io.atomic_write."""
    from fastconv._io import atomic_write_text as write

    write(path, text)


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Save the report as JSON, atomically."""
    atomic_write_text(path, json.dumps(report, indent=1, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a report written by :func:`write_json`."""
    with open(path, encoding="utf-8") as f:
        try:
            report = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a fastconv bench report (not JSON: {exc})") from None
    if not isinstance(report, dict) or "results" not in report or "peak_gflops" not in report:
        raise ValueError(f"{path}: not a fastconv bench report (no 'results' / 'peak_gflops')")
    return report


#: Order of engines on charts and in the ladder: the rungs climb from naive loops up.
def engine_order(engines: Iterable[str], rungs: Sequence[str] = ()) -> list[str]:
    """``engines`` sorted python, numpy, numba, cython, others, torch; a backend's LADDER rungs
    ("numba:naive", ...) just before the backend itself, in the order of ``rungs`` (LADDER order)."""
    base = ["python", "numpy", "numba", "cython"]

    def key(e: str) -> tuple[int, int, int, str]:
        name, _, rung = e.partition(":")
        rank = base.index(name) if name in base else len(base) + (name == "torch")
        at = list(rungs).index(e) if e in rungs else len(rungs)
        return (rank, 0 if rung else 1, at, e)

    return sorted(set(engines), key=key)


def plot_report(report: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """PNG charts: per kernel, speedup vs naive python (log scale) of every engine per workload;
    and % of peak per engine for each conv kernel. Returns the paths written."""
    from fastconv.viz import save_figure

    out = Path(out_dir)
    written = []
    results, peak = report["results"], report["peak_gflops"]
    for kernel in dict.fromkeys(r["kernel"] for r in results):
        rows = [r for r in results if r["kernel"] == kernel]
        if any(r["workload"] != "small" for r in rows):
            # the small shape exists for naive python; its sub-millisecond times say little here
            rows = [r for r in rows if r["workload"] != "small"]
        for metric, fname, ylabel, log in (
            ("vs_python", f"speedup_{kernel}.png", "speedup vs naive python loops (log scale)", True),
            ("pct_peak", f"peak_{kernel}.png", f"% of {report['dtype']} matmul peak ({peak:.0f} GFLOP/s)", False),
        ):
            if not any(r[metric] for r in rows):
                continue
            m = report["machine"]
            title = f"{KERNELS[kernel][1]} - {m['cpu']}, {m['threads']} threads, {report['dtype']}"
            fig = _bar_chart(rows, metric, ylabel, log, title, report.get("rungs", []))
            written.append(save_figure(fig, out / fname))
    return written


def _bar_chart(rows: list[dict[str, Any]], metric: str, ylabel: str, log: bool, title: str, rungs: Sequence[str]):
    """Grouped bars: one group per workload, one bar per engine (ladder order), value labels on top,
    legend below. 10 x 5 inches at 100 dpi = 1000 x 500 pixels."""
    import matplotlib
    from matplotlib.figure import Figure

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    engines = engine_order((r["engine"] for r in rows), rungs)
    fig = Figure(figsize=(10, 5), dpi=100)
    ax = fig.subplots()
    width = 0.8 / max(len(engines), 1)
    cmap = matplotlib.colormaps["viridis"].resampled(max(len(engines), 2))
    for i, engine in enumerate(engines):
        xs, ys = [], []
        for j, wl in enumerate(workloads):
            r = next((r for r in rows if r["workload"] == wl and r["engine"] == engine), None)
            if r and r[metric]:
                xs.append(j + (i - (len(engines) - 1) / 2) * width)
                ys.append(r[metric])
        bars = ax.bar(xs, ys, width, label=engine, color=cmap(i))
        for bar, y in zip(bars, ys):
            text = _fmt_x(y) if metric.startswith("vs_") else f"{y:.0f}%"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(workloads)), workloads)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(len(engines), 5), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.margins(y=0.3)
    fig.tight_layout()  # moves the axes inside the figure; the figure (pixel) size stays 800 x 450
    return fig


# --------------------------------------------------------------------------------------------
# docs/ladder.md: generated sections
# --------------------------------------------------------------------------------------------

_SECTION = re.compile(r"<!-- (bench|code):(\S+?)((?: [^>]*?)?) -->(.*?)<!-- /\1:\2 -->", re.S)


def fill_docs(md_path: str | os.PathLike, report: dict[str, Any], root: str | os.PathLike | None = None) -> int:
    """Regenerate every marked section of the markdown file ``md_path`` in place (atomically).

    Sections are ``<!-- bench:WHAT options -->...<!-- /bench:WHAT -->`` (numbers from ``report``:
    ``machine``, ``table kernel=K``, ``step``, ``compile``, ``best_gflops``,
    ``value kernel=K workload=W engine=E field=F``) and ``<!-- code:PATH::NAME from=RE to=RE -->
    ...<!-- /code:PATH::NAME -->`` (the definition of NAME quoted from the real source file PATH,
    relative to ``root``, default the repository root; optionally only the lines from the first
    match of ``from`` to the first later match of ``to``). Returns the number of sections filled.
    """
    import shlex

    path = Path(md_path)
    root = Path(root) if root else Path(__file__).resolve().parents[1]
    text = path.read_text(encoding="utf-8")
    count = 0

    def replace_section(m: re.Match) -> str:
        nonlocal count
        kind, what, raw = m.group(1), m.group(2), m.group(3)
        opts = dict(item.split("=", 1) for item in shlex.split(raw))
        body = _bench_section(what, opts, report) if kind == "bench" else _code_section(root, what, opts)
        count += 1
        inline = "\n" not in m.group(4)
        sep = "" if inline else "\n"
        return f"<!-- {kind}:{what}{raw} -->{sep}{body}{sep}<!-- /{kind}:{what} -->"

    atomic_write_text(path, _SECTION.sub(replace_section, text))
    return count


def _bench_section(what: str, opts: dict[str, str], report: dict[str, Any]) -> str:
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    star = "\\*"  # a literal asterisk in markdown
    if what == "machine":
        return (
            f"Run finished {report['created']} after {report['elapsed_s'] / 60:.0f} minutes, "
            f"on {m['cpu']} ({', '.join(m['simd'])}), {m['cores']} cores, "
            f"{m['threads']} threads, BLAS {'; '.join(m['blas'])}; {versions}. {report['dtype']}, "
            f"`fastconv bench` {report['mode']} mode, median of up to {report['repeats']} interleaved "
            f"rounds after warm-up{_settle_words(report)}. Peak = {report['peak_gflops']:.1f} GFLOP/s "
            f"({report['peak_method']}). "
            f"1-minute load average at the end of the run: {m.get('load_average_1min') or 0:.1f} on {m['cores']} cores."
        )
    if what == "best_gflops":
        best = [
            r["gflops"]
            for r in report["results"]
            if r["kernel"] == "conv_fwd" and r["gflops"] and r["engine"] != "torch"
        ]
        return f"{max(best):.0f}" if best else "n/a"
    if what == "value":
        r = next(
            (
                r
                for r in report["results"]
                if r["kernel"] == opts["kernel"] and r["workload"] == opts["workload"] and r["engine"] == opts["engine"]
            ),
            None,
        )
        value = None if r is None else r.get(opts["field"])
        if value is None:
            return "n/a"
        return _fmt_x(value) if opts["field"].startswith("vs_") else f"{value:.{int(opts.get('digits', 1))}f}"
    if what == "table":
        rows = [r for r in report["results"] if r["kernel"] == opts["kernel"]]
        lines = ["| workload | engine | ms | GFLOP/s | % peak | GB/s | vs python | vs numpy |", "|" + " --- |" * 8]
        for wl in dict.fromkeys(r["workload"] for r in rows):
            group = {r["engine"]: r for r in rows if r["workload"] == wl}
            for i, engine in enumerate(engine_order(group, report.get("rungs", []))):
                r = group[engine]
                label = f"**{r['label']}**" if i == 0 else ""  # once per workload: the table reads in blocks
                lines.append(
                    f"| {label} | {engine} | {_fmt_ms(r['ms'])}{star if r['scaled'] else ''} | "
                    f"{_fmt_rate(r['gflops'])} | {_fmt_rate(r['pct_peak'])} | {_fmt_rate(r['gbps'])} | "
                    f"{_fmt_x(r['vs_python'])} | {_fmt_x(r['vs_numpy'])} |"
                )
        if any(r["scaled"] for r in rows):
            lines += ["", "\\* naive python timed on 1 image and multiplied by the batch size (scaled per image)."]
        return "\n".join(lines)
    if what == "step":
        lines = ["| implementation | engine | ms per step | images/s | vs numpy |", "|" + " --- |" * 5]
        for s in report["catnet_step"]:
            lines.append(
                f"| {s['impl']} | {s['engine']} | {_fmt_ms(s['ms'])}{star if s['scaled'] else ''} | "
                f"{s['images_per_s']:.1f} | {_fmt_x(s['vs_numpy'])} |"
            )
        return "\n".join(lines)
    if what == "compile":
        c = report.get("compile", {}).get("numba")
        if not c or "error" in c:
            return "Numba compile time: not measured in this report (run with `--full` or `--compile-time`)."
        return (
            f"Numba cold compile: {c['cold_compile_s']:.1f} s; loading the same kernels from a warm cache: "
            f"{c['warm_load_s']:.2f} s (import of fastconv.kernels + numba: {c['warm_import_s']:.2f} s). "
            f"Method: {c['method']}."
        )
    raise ValueError(f"docs: unknown generated section 'bench:{what}'")


def quote_source(path: Path, name: str, start: str | None = None, stop: str | None = None) -> str:
    """The definition of ``name`` (``def``/``cdef``/``cpdef``/``class``, with decorators) in the
    file ``path`` (.py or .pyx), dedented; optionally only from the first line matching regex
    ``start`` to the first later line matching ``stop``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    head = re.compile(rf"^(\s*)(?:async\s+)?(?:c?p?def|class)\b[^\n]*?\b{re.escape(name)}\s*[(\[:]")
    i, m = next(((i, head.match(ln)) for i, ln in enumerate(lines) if head.match(ln)), (None, None))
    if m is None:
        raise ValueError(f"docs: no definition of {name!r} in {path}")
    indent = len(m.group(1))
    first = i
    while first > 0 and lines[first - 1].strip().startswith("@"):
        first -= 1
    end, depth = i, 0
    while end < len(lines):  # past the signature, which may span several lines
        depth += lines[end].count("(") + lines[end].count("[") - lines[end].count(")") - lines[end].count("]")
        end += 1
        if depth <= 0 and lines[end - 1].rstrip().endswith(":"):
            break
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    body = lines[first:end]
    while body and not body[-1].strip():
        body.pop()
    if start:
        j = next((k for k, ln in enumerate(body) if re.search(start, ln)), None)
        if j is None:
            raise ValueError(f"docs: {path}::{name}: no line matches from={start!r}")
        k = next((k for k in range(j, len(body)) if stop and re.search(stop, body[k])), len(body) - 1)
        body = body[j : k + 1]
    width = min(len(ln) - len(ln.lstrip()) for ln in body if ln.strip())
    return "\n".join(ln[width:] for ln in body)


def _code_section(root: Path, what: str, opts: dict[str, str]) -> str:
    file, _, name = what.partition("::")
    path = root / file
    if not path.is_file():
        return f"*({file} is not in this checkout)*"
    lang = "cython" if path.suffix == ".pyx" else "python"
    try:
        snippet = quote_source(path, name, opts.get("from"), opts.get("to"))
    except ValueError as exc:  # the source moved on: say so in the page instead of failing the run
        print(f"warning: {exc}", file=sys.stderr)
        return f"*(could not quote `{name}` from `{file}`: {exc}; update the marker in this page)*"
    return f"From `{file}`, `{name}`:\n\n```{lang}\n{snippet}\n```"
