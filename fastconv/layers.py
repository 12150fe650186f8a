"""Layers: parameters, forward and backward passes over numpy arrays (NCHW).

Every layer keeps what its backward pass needs from the *last* forward call (its "cache"),
accumulates parameter gradients into ``Parameter.grad`` (``+=``, so gradients of several
backward calls add up until ``zero_grad``) and returns the gradient with respect to its input.
The cache holds references, not copies (a copy of every activation would cost a training step
its memory traffic): changing an input array in place between forward and backward changes the
gradients (PyTorch refuses that through version counters; fastconv leaves it to the caller).
A layer names its cache in ``_cache_names``, so that :meth:`Sequential.evaluating` (behind
``Sequential.predict`` and ``fastconv.train.predict_logits``) can run other inputs between a
forward and its backward and put the cache back afterwards.
Convolution, pooling and ReLU arithmetic goes through :mod:`fastconv.kernels` (which validates
arguments once and dispatches to a backend); layers never loop over pixels.

Shapes given to :meth:`Layer.output_shape` and :meth:`Layer.flops` are *per sample*, without the
batch dimension: ``(C, H, W)`` for image layers, ``(F,)`` for :class:`Linear`.

Initialisation (documented choice):

* :class:`Conv2d`: He / Kaiming normal for ReLU networks, ``w ~ N(0, 2 / fan_in)`` with
  ``fan_in = C * R * S`` and zero bias (``init="he_normal"``, the default). Every conv in
  catnet feeds a ReLU, which is what this scaling is derived for: it keeps the activation
  variance constant with depth. ``init="torch"`` gives PyTorch's default instead
  (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias).
* :class:`Linear`: PyTorch's default ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` for weight
  and bias (``init="torch"``, the default): the classifier head feeds a sigmoid/softmax, where
  small initial logits are wanted. ``init="he_normal"`` is available.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import numbers
from collections.abc import Iterator, Sequence

import numpy as np

from . import kernels as K
from .kernels import IntOrPair, conv2d_geometry, conv_padding, normalize_pair, pool2d_geometry
from .kernels._validate import as_divisor, as_flag, as_float_array, same_dtype

__all__ = [
    "LAYER_TYPES",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Layer",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "Parameter",
    "ReLU",
    "Residual",
    "Sigmoid",
    "Tanh",
    "as_rng",
    "register_layer",
]

RngLike = np.random.Generator | int | np.random.SeedSequence | None


class Parameter:
    """A trainable array and its gradient.

    ``data``: the values (float32 or float64 ndarray). ``grad``: same shape and dtype, zero
    initialised, accumulated by backward passes. ``name``: ``"weight"`` inside a layer,
    ``"0.weight"`` once a :class:`~fastconv.model.Sequential` owns the layer. ``decay``:
    whether weight decay applies (False for biases and normalisation parameters).
    """

    __slots__ = ("data", "decay", "grad", "name")

    def __init__(self, data: np.ndarray, name: str = "", decay: bool = True) -> None:
        self.data = data
        self.grad = np.zeros(data.shape, data.dtype)  # calloc: pages are touched only when used
        self.name = name
        self.decay = bool(decay)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def size(self) -> int:
        return int(self.data.size)

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype}, decay={self.decay})"


def as_rng(rng: RngLike) -> np.random.Generator:
    """A Generator from a Generator (used as is), an int seed, a SeedSequence, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    if isinstance(rng, bool) or not isinstance(rng, numbers.Integral):
        raise TypeError(f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}")
    return np.random.default_rng(int(rng))


def seed_sequence(seed: RngLike) -> np.random.SeedSequence:
    """A SeedSequence (to spawn independent child streams) from what :func:`as_rng` takes: an int,
    None (fresh entropy), a SeedSequence (used as is) or a Generator (which advances by one draw)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(2**63)))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed: expected a numpy Generator, an int seed or None, got {type(seed).__name__}")
    return np.random.SeedSequence(None if seed is None else int(seed))


def _float_dtype(dtype: object) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def _positive_int(name: str, value: object) -> int:
    """TypeError for what is not an int (bools and floats included), ValueError for ints < 1: the
    same split as the kernels' argument checks (normalize_pair)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _pair_config(pair: tuple[int, int]) -> int | list[int]:
    """JSON form of a normalised pair: an int when both sides agree (the common case)."""
    return pair[0] if pair[0] == pair[1] else [pair[0], pair[1]]


def _image_shape(layer: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ValueError(f"{layer}: expected a per-sample input shape (C, H, W), got {shape}")
    return shape  # type: ignore[return-value]


_DEFERRED = contextvars.ContextVar("fastconv_deferred_init", default=False)


@contextlib.contextmanager
def deferred_init() -> Iterator[None]:
    """Layers built inside allocate their parameters and buffers *uninitialised* (``np.empty``:
    no random draws, no pages touched) — for a loader that overwrites every value next. A model
    file's declared architecture is then not filled with random numbers (possibly gigabytes of
    them, in a hostile file) before its shapes are compared with the file's arrays."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def _fill(shape: int | tuple[int, ...], value: float, dtype: np.dtype) -> np.ndarray:
    """np.full, or np.empty inside :func:`deferred_init`."""
    return np.empty(shape, dtype) if _DEFERRED.get() else np.full(shape, value, dtype)


def _init_weight_and_bias(
    shape: tuple[int, ...], bias: bool, init: str, dtype: np.dtype, rng: RngLike
) -> tuple[Parameter, Parameter | None]:
    """Weight of ``shape`` (out, in, ...) with fan_in = prod(shape[1:]), and an (out,) bias or None.

    ``"he_normal"``: w ~ N(0, 2 / fan_in), bias 0. ``"torch"``: w, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    if not isinstance(bias, (bool, np.bool_)):  # e.g. a groups count in bias's position
        raise TypeError(f"bias: expected True or False, got {bias!r}")
    if init not in ("he_normal", "torch"):
        raise ValueError(f"init: expected 'he_normal' or 'torch', got {init!r}")
    if _DEFERRED.get():
        return Parameter(np.empty(shape, dtype), "weight"), (
            Parameter(np.empty(shape[0], dtype), "bias", decay=False) if bias else None
        )
    gen = as_rng(rng)
    fan_in = math.prod(shape[1:])
    if init == "he_normal":
        w = gen.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        b = np.zeros(shape[0])
    elif init == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        w = gen.uniform(-bound, bound, shape)
        b = gen.uniform(-bound, bound, shape[0])
    else:
        raise ValueError(f"init: expected 'he_normal' or 'torch', got {init!r}")
    weight = Parameter(w.astype(dtype), "weight")
    return weight, (Parameter(b.astype(dtype), "bias", decay=False) if bias else None)


class Layer:
    """Base class. Subclasses implement forward/backward and, when they hold state, declare it.

    Attributes: ``training`` (train vs eval behaviour, e.g. dropout), ``backend`` (kernel
    backend name; None = ``fastconv.kernels`` default), ``requires_input_grad`` (False lets a
    first layer skip computing the gradient of its input; :class:`Sequential` sets it).
    """

    #: attribute names of Parameters (may be None, e.g. ``bias=False``), in state_dict order
    _param_names: tuple[str, ...] = ()
    #: attribute names of non-trainable arrays saved in state_dict (e.g. running statistics)
    _buffer_names: tuple[str, ...] = ()
    #: attribute names of what forward keeps for backward (saved and restored around an
    #: evaluation that runs between a forward and its backward: :meth:`Sequential.predict`)
    _cache_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.training = True
        self.backend: str | None = None
        self.requires_input_grad = True

    # --- computation -------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    # --- state ---------------------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, Parameter]]:
        out = []
        for name in self._param_names:
            p = getattr(self, name)
            if p is not None:
                out.append((name, p))
        return out

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def children(self) -> list[Layer]:
        """The layers inside this one (a :class:`Residual` block's branches); none for a plain layer."""
        return []

    def cache(self) -> dict[str, object]:
        """What the last forward kept for backward (see ``_cache_names``), to hand back to
        :meth:`restore_cache`."""
        return {name: getattr(self, name, None) for name in self._cache_names}

    def restore_cache(self, cache: dict[str, object]) -> None:
        for name, value in cache.items():
            setattr(self, name, value)

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state that belongs in a checkpoint (the live arrays, not copies)."""
        return {name: getattr(self, name) for name in self._buffer_names}

    def train(self, mode: bool = True) -> Layer:
        self.training = bool(mode)
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def astype(self, dtype: object) -> Layer:
        """Convert parameters and buffers to float32/float64 in place (gradients are reset)."""
        dt = _float_dtype(dtype)
        for p in self.parameters():
            p.data = p.data.astype(dt)
            p.grad = np.zeros_like(p.data)
        for name in self._buffer_names:
            setattr(self, name, getattr(self, name).astype(dt))
        if hasattr(self, "dtype"):
            self.dtype = dt
        return self

    # --- description ---------------------------------------------------------------------
    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(self)(**layer.config())`` rebuilds the architecture."""
        return {}

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (no batch dimension)."""
        return tuple(int(v) for v in input_shape)

    def flops(self, input_shape: Sequence[int]) -> int:
        """Forward floating-point operations per sample (a multiply-add counts 2)."""
        return 0

    def __repr__(self) -> str:
        # Show only the arguments that differ from the constructor defaults, like PyTorch does.
        params = inspect.signature(type(self).__init__).parameters
        parts = []
        for key, value in self.config().items():
            value = tuple(value) if isinstance(value, list) else value  # JSON's lists are pairs here
            default = params[key].default if key in params else inspect.Parameter.empty
            if default is inspect.Parameter.empty:
                parts.append(repr(value))
            elif value != default and not (key == "dtype" and np.dtype(value) == np.dtype(default)):
                parts.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _need_cache(self, cache: object) -> None:
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward (no cached input)")

    def _check_dy(self, dy: object, shape: Sequence[int]) -> None:
        """dy must have the shape of the last forward's output (else numpy would broadcast it or
        fail with a message about some other array)."""
        if not isinstance(dy, np.ndarray) or tuple(dy.shape) != tuple(shape):
            got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
            raise ValueError(
                f"{type(self).__name__}.backward: expected dy of shape {tuple(shape)} (the last forward's output), "
                f"got {got}"
            )


class Conv2d(Layer):
    """2-d convolution (cross-correlation), PyTorch's ``nn.Conv2d`` arguments.

    x: (N, in_channels, H, W) -> y: (N, out_channels, Ho, Wo), same float dtype as the weights.
    weight: (out_channels, in_channels / groups, R, S); bias: (out_channels,) or None. ``padding``:
    an int, a pair, ``"valid"`` or ``"same"`` (stride 1, odd effective kernel), stored as the pair
    of ints. ``groups`` = g splits the channels into g independent convolutions (PyTorch's
    semantics: output channels [j*K/g, (j+1)*K/g) see only input channels [j*C/g, (j+1)*C/g);
    g = in_channels is a depthwise convolution, which the built-in backends have kernels for; other
    groupings run the backend's convolution once per group).
    """

    _param_names = ("weight", "bias")
    _cache_names = ("_x",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair | str = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        backend: str | None = None,
        dtype: object = np.float32,
        rng: RngLike = None,
        init: str = "he_normal",
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.groups = _positive_int("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups: expected a divisor of in_channels ({self.in_channels}) and out_channels "
                f"({self.out_channels}), got {self.groups}"
            )
        self.kernel_size = normalize_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = normalize_pair(stride, "stride", minimum=1)
        self.dilation = normalize_pair(dilation, "dilation", minimum=1)
        self.padding = conv_padding(padding, self.kernel_size, self.stride, self.dilation)  # "same" -> ints
        self.backend = backend
        self.dtype = _float_dtype(dtype)
        # He/torch initialisation reads the fan-in from the shape: (C / groups) * R * S per output
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self.weight, self.bias = _init_weight_and_bias(shape, bias, init, self.dtype, rng)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, H, W) -> (N, K, Ho, Wo)."""
        self._check_input(x)
        self._x = x
        bias = None if self.bias is None else self.bias.data
        return K.conv2d_forward(x, self.weight.data, bias, *self._args(), backend=self.backend)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """dy: (N, K, Ho, Wo) -> dx (N, C, H, W), or None when ``requires_input_grad`` is False."""
        self._need_cache(self._x)
        if not isinstance(dy, np.ndarray) or dy.ndim != 4 or dy.shape[1] != self.out_channels:
            got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
            raise ValueError(f"Conv2d.backward: expected dy of shape (N, {self.out_channels}, Ho, Wo), got {got}")
        dx, dw, db = K.conv2d_backward(
            dy, self._x, self.weight.data, *self._args(), need_dx=self.requires_input_grad, backend=self.backend
        )
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def _args(self) -> tuple:
        return (self.stride, self.padding, self.dilation, self.groups)

    def _check_input(self, x: object) -> None:
        # the layer's own expectation, named before the kernels' more general shape checks
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x: expected a numpy.ndarray of float32 or float64, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d: expected input of shape (N, {self.in_channels}, H, W), got {x.shape}")

    def _geometry(self, input_shape: Sequence[int]) -> K.Conv2dGeometry:
        """The geometry of one image."""
        c, h, w = _image_shape("Conv2d", input_shape)
        if c != self.in_channels:
            raise ValueError(f"Conv2d: expected {self.in_channels} input channels, got input shape {(c, h, w)}")
        return conv2d_geometry((1, c, h, w), self.weight.shape, *self._args())

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        g = self._geometry(input_shape)
        return (g.k, g.ho, g.wo)

    def flops(self, input_shape: Sequence[int]) -> int:
        """2*K*Ho*Wo*(C/groups)*R*S per image (DESIGN.md); the bias add is not counted."""
        return self._geometry(input_shape).flops

    def config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": _pair_config(self.kernel_size),
            "stride": _pair_config(self.stride),
            "padding": _pair_config(self.padding),
            "dilation": _pair_config(self.dilation),
            "bias": self.bias is not None,
            # only when grouped: configs (and model files) of ungrouped convs stay as they were
            **({"groups": self.groups} if self.groups != 1 else {}),
            "dtype": self.dtype.name,
        }


class ReLU(Layer):
    """y = max(x, 0) elementwise, any shape."""

    _cache_names = ("_x",)

    def __init__(self) -> None:
        super().__init__()
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return K.relu_forward(x, backend=self.backend)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._need_cache(self._x)
        return K.relu_backward(dy, self._x, backend=self.backend)

    def flops(self, input_shape: Sequence[int]) -> int:
        """One comparison per element."""
        return math.prod(int(v) for v in input_shape)


class LeakyReLU(Layer):
    """y = x where x > 0, else negative_slope * x (PyTorch ``nn.LeakyReLU``); any shape, float32
    or float64, computed with numpy (no kernel: one vectorised expression). NaN stays NaN."""

    _cache_names = ("_x",)

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
            raise TypeError(f"negative_slope: expected a finite number, got {type(negative_slope).__name__}")
        if not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope: expected a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = as_float_array("x", x)
        self._x = x
        return np.where(x > 0, x, x * x.dtype.type(self.negative_slope))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy * 1 where x > 0, else dy * negative_slope (also at x = 0 and NaN, as PyTorch)."""
        self._need_cache(self._x)
        self._check_dy(dy, self._x.shape)
        dy = as_float_array("dy", dy)
        same_dtype(x=self._x, dy=dy)
        return np.where(self._x > 0, dy, dy * dy.dtype.type(self.negative_slope))

    def flops(self, input_shape: Sequence[int]) -> int:
        """A comparison and a multiply per element."""
        return 2 * math.prod(int(v) for v in input_shape)

    def config(self) -> dict:
        return {"negative_slope": self.negative_slope}


class _Saturating(Layer):
    """An elementwise activation whose derivative is a function of its output y (cached)."""

    _cache_names = ("_y",)

    def __init__(self) -> None:
        super().__init__()
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = self._f(as_float_array("x", x))
        return self._y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._need_cache(self._y)
        self._check_dy(dy, self._y.shape)
        dy = as_float_array("dy", dy)
        same_dtype(y=self._y, dy=dy)
        return dy * self._df(self._y)

    def flops(self, input_shape: Sequence[int]) -> int:
        """Counted as one operation per element (the exp / tanh is one library call)."""
        return math.prod(int(v) for v in input_shape)


class Sigmoid(_Saturating):
    """y = 1 / (1 + exp(-x)) elementwise (PyTorch ``nn.Sigmoid``), without overflow; any shape,
    float32/float64. dy/dx = y * (1 - y)."""

    @staticmethod
    def _f(x: np.ndarray) -> np.ndarray:
        from .losses import sigmoid

        return sigmoid(x)

    @staticmethod
    def _df(y: np.ndarray) -> np.ndarray:
        return y * (1 - y)


class Tanh(_Saturating):
    """y = tanh(x) elementwise (PyTorch ``nn.Tanh``); any shape, float32/float64. dy/dx = 1 - y**2."""

    @staticmethod
    def _f(x: np.ndarray) -> np.ndarray:
        return np.tanh(x)

    @staticmethod
    def _df(y: np.ndarray) -> np.ndarray:
        return 1 - y * y


class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed output size (PyTorch ``nn.AdaptiveAvgPool2d``):
    x (N, C, H, W) -> (N, C, Ho, Wo), float32/float64.

    ``output_size``: an int, or a pair whose entries may be None (keep that input size);
    ``AdaptiveAvgPool2d(1)`` is global average pooling. Output row i averages input rows
    [floor(i*H/Ho), ceil((i+1)*H/Ho)), likewise for columns, so the windows can differ by one in
    size and overlap (PyTorch's rule). Computed with numpy (no kernel): Ho + Wo window means.
    """

    _cache_names = ("_input_shape", "_dtype")

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        if output_size is None:  # PyTorch refuses it too: a size, or a pair that may hold None
            raise TypeError("output_size: expected a positive int or a pair of them (None: keep that size), got None")
        sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        what = f"output_size: expected a positive int or a pair of them (None: keep that size), got {output_size!r}"
        if len(sizes) != 2 or any(v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral))
                                  for v in sizes):  # fmt: skip
            raise TypeError(what)
        if any(v is not None and v < 1 for v in sizes):
            raise ValueError(what)
        self.output_size = tuple(None if v is None else int(v) for v in sizes)
        self._input_shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None

    def _sizes(self, h: int, w: int) -> tuple[int, int]:
        oh, ow = self.output_size
        return (h if oh is None else oh), (w if ow is None else ow)

    @staticmethod
    def _windows(size: int, out: int) -> list[tuple[int, int]]:
        """[start, end) of each of the ``out`` windows along an axis of ``size``."""
        return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = as_float_array("x", x, 4)
        n, c, h, w = x.shape
        if min(c, h, w) < 1:
            raise ValueError(f"AdaptiveAvgPool2d: expected positive C, H, W, got shape {x.shape}")
        self._input_shape, self._dtype = x.shape, x.dtype
        ho, wo = self._sizes(h, w)
        # rows, then columns: one mean per window (Ho + Wo numpy calls), so a NaN reaches only the
        # windows that hold it (a product with an averaging matrix would spread it: 0 * NaN = NaN)
        rows = np.empty((n, c, ho, w), x.dtype)
        for i, (lo, hi) in enumerate(self._windows(h, ho)):
            rows[:, :, i] = x[:, :, lo:hi].mean(axis=2)
        y = np.empty((n, c, ho, wo), x.dtype)
        for j, (lo, hi) in enumerate(self._windows(w, wo)):
            y[:, :, :, j] = rows[:, :, :, lo:hi].mean(axis=3)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Each dy value spread evenly over its window (the two steps of forward, reversed)."""
        self._need_cache(self._input_shape)
        n, c, h, w = self._input_shape
        ho, wo = self._sizes(h, w)
        self._check_dy(dy, (n, c, ho, wo))
        dy = as_float_array("dy", dy, 4)
        same_dtype(x=np.empty(0, self._dtype), dy=dy)  # x itself is not kept, only its dtype
        rows = np.zeros((n, c, ho, w), dy.dtype)
        for j, (lo, hi) in enumerate(self._windows(w, wo)):
            rows[:, :, :, lo:hi] += dy[:, :, :, j : j + 1] / dy.dtype.type(hi - lo)
        dx = np.zeros((n, c, h, w), dy.dtype)
        for i, (lo, hi) in enumerate(self._windows(h, ho)):
            dx[:, :, lo:hi] += rows[:, :, i : i + 1] / dy.dtype.type(hi - lo)
        return dx

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = _image_shape("AdaptiveAvgPool2d", input_shape)
        return (c, *self._sizes(h, w))

    def flops(self, input_shape: Sequence[int]) -> int:
        """One addition per element of every window, as for the fixed pools: C * (sum of the row
        windows' sizes) * (sum of the column windows' sizes). Windows overlap, so an output larger
        than the input counts more than C*H*W."""
        c, h, w = _image_shape("AdaptiveAvgPool2d", input_shape)
        ho, wo = self._sizes(h, w)
        return c * sum(b - a for a, b in self._windows(h, ho)) * sum(b - a for a, b in self._windows(w, wo))

    def config(self) -> dict:
        oh, ow = self.output_size
        return {"output_size": oh if oh == ow and oh is not None else [oh, ow]}


class _Pool2d(Layer):
    def __init__(
        self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0, ceil_mode: bool = False
    ) -> None:
        super().__init__()
        self.kernel_size = normalize_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else normalize_pair(stride, "stride", minimum=1)
        self.padding = normalize_pair(padding, "padding", minimum=0)
        self.ceil_mode = as_flag("ceil_mode", ceil_mode)
        # Validates padding <= kernel/2 now rather than at the first forward call.
        pool2d_geometry((1, 1, self.kernel_size[0], self.kernel_size[1]), self.kernel_size, self.stride, self.padding)
        self._input_shape: tuple[int, ...] | None = None

    def _geometry(self, input_shape: Sequence[int]) -> K.Pool2dGeometry:
        c, h, w = _image_shape(type(self).__name__, input_shape)
        return pool2d_geometry((1, c, h, w), self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        g = self._geometry(input_shape)
        return (g.c, g.ho, g.wo)

    def flops(self, input_shape: Sequence[int]) -> int:
        """One comparison (max) or addition (average) per window element: C*Ho*Wo*kh*kw."""
        g = self._geometry(input_shape)
        return g.c * g.ho * g.wo * g.kh * g.kw

    def config(self) -> dict:
        return {
            "kernel_size": _pair_config(self.kernel_size),
            "stride": _pair_config(self.stride),
            "padding": _pair_config(self.padding),
            # options only when set: files of floor-mode pools stay as they were
            **({"ceil_mode": True} if self.ceil_mode else {}),
        }


class MaxPool2d(_Pool2d):
    """Max pooling (PyTorch ``nn.MaxPool2d``): x (N, C, H, W) -> (N, C, Ho, Wo); stride defaults to
    kernel_size. ``ceil_mode=True`` rounds Ho, Wo up (keyword-only: PyTorch's fourth positional
    argument is a dilation, which this layer does not have)."""

    _cache_names = ("_argmax", "_input_shape")

    def __init__(
        self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0, *,
        ceil_mode: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self._argmax: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, self._argmax = K.max_pool2d_forward(
            x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode, backend=self.backend
        )
        self._input_shape = x.shape
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._need_cache(self._argmax)
        self._check_dy(dy, self._argmax.shape)
        return K.max_pool2d_backward(dy, self._argmax, self._input_shape, backend=self.backend)


class AvgPool2d(_Pool2d):
    """Average pooling (PyTorch ``nn.AvgPool2d``, same arguments): (N, C, H, W) -> (N, C, Ho, Wo).

    Each window's sum is divided by ``divisor_override`` if given, else by its element count:
    padded zeros included (``count_include_pad=True``) or not, a ``ceil_mode`` overhang never.
    """

    _cache_names = ("_input_shape",)

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = as_flag("count_include_pad", count_include_pad)
        self.divisor_override = as_divisor("divisor_override", divisor_override)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._input_shape = x.shape
        return K.avg_pool2d_forward(x, *self._args(), backend=self.backend)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._need_cache(self._input_shape)
        return K.avg_pool2d_backward(dy, self._input_shape, *self._args(), backend=self.backend)

    def _args(self) -> tuple:
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                self.divisor_override)  # fmt: skip

    def config(self) -> dict:
        config = super().config()
        if not self.count_include_pad:
            config["count_include_pad"] = False
        if self.divisor_override is not None:
            config["divisor_override"] = self.divisor_override
        return config


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...), like PyTorch's ``nn.Flatten()`` (start_dim=1)."""

    _cache_names = ("_input_shape",)

    def __init__(self) -> None:
        super().__init__()
        self._input_shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._input_shape = x.shape
        # the width spelled out: reshape(0, -1) cannot infer it for an empty batch
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._need_cache(self._input_shape)
        self._check_dy(dy, (self._input_shape[0], math.prod(self._input_shape[1:])))
        return dy.reshape(self._input_shape)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        return (math.prod(int(v) for v in input_shape),)


class Linear(Layer):
    """Fully connected layer, PyTorch layout: y = x @ weight.T + bias.

    x: (N, in_features) -> y: (N, out_features); weight: (out_features, in_features); bias: (out_features,).
    """

    _cache_names = ("_x",)

    _param_names = ("weight", "bias")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: object = np.float32,
        rng: RngLike = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.dtype = _float_dtype(dtype)
        shape = (self.out_features, self.in_features)
        self.weight, self.bias = _init_weight_and_bias(shape, bias, init, self.dtype, rng)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.in_features:
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"Linear: expected input of shape (N, {self.in_features}), got {shape}")
        if x.dtype != self.weight.data.dtype:
            raise TypeError(
                f"Linear: expected input dtype {self.weight.data.dtype} (the weights' dtype), got {x.dtype}"
            )
        self._x = x
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        self._need_cache(self._x)
        self._check_dy(dy, (self._x.shape[0], self.out_features))
        self.weight.grad += dy.T @ self._x
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
        return dy @ self.weight.data if self.requires_input_grad else None

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(int(v) for v in input_shape)
        if shape != (self.in_features,):
            raise ValueError(f"Linear: expected a per-sample input shape ({self.in_features},), got {shape}")
        return (self.out_features,)

    def flops(self, input_shape: Sequence[int]) -> int:
        """2*in_features*out_features per sample (the bias add is not counted, as for Conv2d)."""
        self.output_shape(input_shape)
        return 2 * self.in_features * self.out_features

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "dtype": self.dtype.name,
        }


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale the
    survivors by ``1 / (1 - p)`` so the expected output equals the input; identity in eval mode.

    Any shape, float32/float64. ``seed`` (int, SeedSequence, Generator or None) makes the masks
    reproducible; :meth:`reseed` restarts the stream. Without a seed the masks come from fresh OS
    entropy, unless :func:`fastconv.train.fit` seeds them from its ``TrainConfig.seed``.
    """

    _cache_names = ("_mask", "_passthrough")

    def __init__(self, p: float = 0.5, seed: RngLike = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.seed = seed if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) else None
        self.rng = as_rng(seed)
        self.seeded = seed is not None  # False: fit() gives the masks a stream of its run's seed
        self._mask: np.ndarray | None = None
        self._passthrough = False

    def reseed(self, seed: RngLike) -> None:
        self.rng = as_rng(seed)
        self.seeded = seed is not None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
            got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise TypeError(f"Dropout: expected a float32 or float64 array, got {got}")
        if not self.training or self.p == 0.0:
            self._mask, self._passthrough = None, True
            return x
        # rng.random draws in [0, 1): an element survives when its draw is >= p.
        mask = (self.rng.random(x.shape, dtype=x.dtype) >= self.p).astype(x.dtype)
        if self.p < 1.0:
            mask *= x.dtype.type(1.0 / (1.0 - self.p))
        self._mask, self._passthrough = mask, False
        return x * mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._passthrough:
            return dy
        self._need_cache(self._mask)
        self._check_dy(dy, self._mask.shape)
        return dy * self._mask

    def config(self) -> dict:
        return {"p": self.p, "seed": self.seed}


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel, PyTorch's ``nn.BatchNorm2d`` semantics.

    x: (N, C, H, W) -> same shape. Training: normalise with the batch mean and biased variance,
    and update ``running = (1 - momentum) * running + momentum * batch_stat`` (the running
    variance uses the unbiased batch variance, as PyTorch does). Eval: normalise with the running
    statistics. ``weight`` (gamma, ones) and ``bias`` (beta, zeros) are exempt from weight decay;
    with ``affine=False`` there are none (both None: pure normalisation, as in PyTorch).
    The arithmetic is the kernels' ``batch_norm_forward`` / ``batch_norm_backward`` on the
    layer's backend.
    """

    _cache_names = ("_cache",)

    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var")

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        *,
        dtype: object = np.float32,
    ) -> None:
        super().__init__()
        self.num_features = _positive_int("num_features", num_features)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < math.inf:
            raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
        self.eps = float(eps)
        self.momentum = float(momentum)
        if not isinstance(affine, (bool, np.bool_)):
            raise TypeError(f"affine: expected True or False, got {affine!r}")
        self.affine = bool(affine)
        self.dtype = _float_dtype(dtype)
        self.weight: Parameter | None = None
        self.bias: Parameter | None = None
        if self.affine:
            self.weight = Parameter(_fill(self.num_features, 1.0, self.dtype), "weight", decay=False)
            self.bias = Parameter(_fill(self.num_features, 0.0, self.dtype), "bias", decay=False)
        self.running_mean = _fill(self.num_features, 0.0, self.dtype)
        self.running_var = _fill(self.num_features, 1.0, self.dtype)
        # (x, mean, var, training): the float64 statistics the forward used, for backward
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray, bool] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != self.num_features:
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"BatchNorm2d: expected input of shape (N, {self.num_features}, H, W), got {shape}")
        if x.dtype != self.running_mean.dtype:
            raise TypeError(f"BatchNorm2d: expected input dtype {self.running_mean.dtype}, got {x.dtype}")
        gamma, beta = self._scale_shift()
        if self.training:
            # (the kernel rejects N*H*W <= 1: batch statistics need two values per channel)
            y, mean, var = K.batch_norm_forward(x, gamma, beta, self.eps, backend=self.backend)
            m = x.shape[0] * x.shape[2] * x.shape[3]
            mom = self.momentum
            self.running_mean *= 1.0 - mom
            self.running_mean += mom * mean
            self.running_var *= 1.0 - mom
            self.running_var += (mom * m / (m - 1)) * var
        else:
            y, mean, var = K.batch_norm_forward(
                x, gamma, beta, self.eps, self.running_mean, self.running_var, backend=self.backend
            )
        self._cache = (x, mean, var, self.training)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dx of dy's shape (N, C, H, W); adds to the weight and bias gradients."""
        self._need_cache(self._cache)
        x, mean, var, training = self._cache
        dx, dweight, dbias = K.batch_norm_backward(
            dy, x, self._scale_shift()[0], mean, var, self.eps, training, backend=self.backend
        )
        if self.affine:
            self.weight.grad += dweight
            self.bias.grad += dbias
        return dx

    def _scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """(gamma, beta) for the kernels: the parameters, or ones and zeros without ``affine``."""
        if self.affine:
            return self.weight.data, self.bias.data
        return np.ones(self.num_features, self.running_mean.dtype), np.zeros(self.num_features, self.running_mean.dtype)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = _image_shape("BatchNorm2d", input_shape)
        if c != self.num_features:
            raise ValueError(f"BatchNorm2d: expected {self.num_features} channels, got input shape {(c, h, w)}")
        return (c, h, w)

    def flops(self, input_shape: Sequence[int]) -> int:
        """2 per element (a folded scale and shift, as at inference)."""
        return 2 * math.prod(self.output_shape(input_shape))

    def config(self) -> dict:
        cfg = {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}
        if not self.affine:  # only when it differs: model files written before the option load unchanged
            cfg["affine"] = False
        return {**cfg, "dtype": self.dtype.name}


#: How deep Residual blocks may nest (a model file is data: its nesting must not exhaust the stack).
MAX_RESIDUAL_NESTING = 16
_NESTING = contextvars.ContextVar("fastconv_residual_nesting", default=0)


class ArchitectureError(ValueError):
    """A model architecture (from a file or :meth:`Sequential.from_architecture`) that cannot be
    built; ``where`` is the path to the layer at fault ("3", "3.body.0", ...), ``reason`` why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"architecture: layer {where} {reason}")
        self.where, self.reason = where, reason


def short_repr(value: object, limit: int = 120) -> str:
    """repr of what a file held, cut to ``limit`` characters: an error message stays a line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class Residual(Layer):
    """A skip connection, ResNet's building block (He et al. 2016): ``y = body(x) + shortcut(x)``.

    ``body``: the residual branch, a list of layers (or one layer, or a :class:`~fastconv.Sequential`),
    e.g. ``[Conv2d(16, 16, 3, padding=1), BatchNorm2d(16), ReLU(), Conv2d(16, 16, 3, padding=1),
    BatchNorm2d(16)]``. ``shortcut``: None for the identity (the body must then keep x's shape),
    or layers that bring x to the body's output shape when the body changes it (ResNet's
    projection: ``[Conv2d(16, 32, 1, stride=2, bias=False), BatchNorm2d(32)]``). The ReLU that
    follows the sum in ResNet is a separate layer after the block. Blocks may hold blocks, at
    most MAX_RESIDUAL_NESTING deep; a layer object may appear only once in a model (its forward
    cache would be overwritten by its second use).

    Parameters and buffers are named ``body.<i>.<name>`` / ``shortcut.<i>.<name>`` (state_dict keys
    ``<block>.body.<i>.<name>``); a model file stores the branches as nested architectures.
    Settings (train/eval, backend, dtype, seeds) given to the block reach every layer inside.
    """

    _cache_names = ("_out_shape",)

    def __init__(self, body: object, shortcut: object = None) -> None:
        depth = _NESTING.get()
        if depth >= MAX_RESIDUAL_NESTING:  # checked on the way down: a file's nesting never recurses further
            raise ValueError(f"Residual: blocks nest at most {MAX_RESIDUAL_NESTING} deep")
        token = _NESTING.set(depth + 1)
        try:
            self.body = _branch("body", body)
            self.shortcut = None if shortcut is None else _branch("shortcut", shortcut)
        finally:
            _NESTING.reset(token)
        self.depth = 1 + max((c.depth for c in self.children() if isinstance(c, Residual)), default=0)
        if self.depth > MAX_RESIDUAL_NESTING:  # blocks built one by one in code, then wrapped
            raise ValueError(f"Residual: blocks nest at most {MAX_RESIDUAL_NESTING} deep, this one {self.depth}")
        _check_unique(self.children(), "Residual")
        kept = [layer.backend for layer in self.children()]
        super().__init__()  # its ``self.backend = None`` would reach the layers inside: put theirs back
        for layer, backend in zip(self.children(), kept):
            layer.backend = backend
        self._out_shape: tuple[int, ...] | None = None

    def _branches(self) -> list[tuple[str, object]]:
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def children(self) -> list[Layer]:
        return [layer for _, branch in self._branches() for layer in branch.layers]

    @property
    def backend(self) -> str | None:
        return self._backend

    @backend.setter
    def backend(self, name: str | None) -> None:
        self._backend = name
        for layer in self.children():
            layer.backend = name

    def train(self, mode: bool = True) -> Residual:
        super().train(mode)
        for _, branch in self._branches():
            branch.train(mode)
        return self

    def astype(self, dtype: object) -> Residual:
        for _, branch in self._branches():
            branch.astype(dtype)
        return self

    def reseed(self, seed: RngLike) -> None:
        """Restart the branches' stochastic layers (dropout) from ``seed`` (see :meth:`Sequential.reseed`)."""
        for (_, branch), child in zip(self._branches(), seed_sequence(seed).spawn(2)):
            branch.reseed(child)

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return [(f"{name}.{key}", p) for name, branch in self._branches() for key, p in branch.named_parameters()]

    def buffers(self) -> dict[str, np.ndarray]:
        return {f"{name}.{i}.{key}": arr for name, branch in self._branches()
                for i, layer in enumerate(branch.layers) for key, arr in layer.buffers().items()}  # fmt: skip

    def cache(self) -> dict[str, object]:
        return {"_out_shape": self._out_shape, "layers": [layer.cache() for layer in self.children()]}

    def restore_cache(self, cache: dict[str, object]) -> None:
        self._out_shape = cache["_out_shape"]
        for layer, kept in zip(self.children(), cache["layers"]):
            layer.restore_cache(kept)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, ...) -> y = body(x) + shortcut(x), the body's output shape; every array one dtype
        (as for a bare layer: no branch casts x)."""
        y = _run(self.body, x)
        s = x if self.shortcut is None else _run(self.shortcut, x)
        if np.shape(s) != y.shape:
            raise ValueError(
                f"Residual: the body maps x of shape {np.shape(x)} to {y.shape} but the "
                f"{'identity shortcut' if self.shortcut is None else 'shortcut'} gives {np.shape(s)}; "
                "a body that changes the shape needs a shortcut that changes it the same way"
            )
        same_dtype(body_output=y, shortcut_output=s)
        self._out_shape = y.shape
        return y + s  # a new array: the body's last layer may keep its output for its backward

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """dy: the last forward's output shape -> dx, x's shape (None when the block is a model's
        first layer and its input gradient is not wanted). The sum hands dy unchanged to both
        branches, and dx is the sum of their input gradients (identity: dy itself) — the short
        path by which gradients reach the early layers of a deep network undiminished."""
        self._need_cache(self._out_shape)
        self._check_dy(dy, self._out_shape)
        need = self.requires_input_grad
        dx = self.body.backward(dy, need_input_grad=need)
        ds = dy if self.shortcut is None else self.shortcut.backward(dy, need_input_grad=need)
        return dx + ds if need else None

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        out = self.body.output_shape(input_shape)
        short = tuple(int(v) for v in input_shape) if self.shortcut is None else self.shortcut.output_shape(input_shape)
        if short != out:
            raise ValueError(f"Residual: the body gives {out} per sample but the shortcut {short}")
        return out

    def flops(self, input_shape: Sequence[int]) -> int:
        """The branches' FLOPs plus one addition per output element."""
        total = self.body.flops(input_shape) + math.prod(self.output_shape(input_shape))
        return total + (self.shortcut.flops(input_shape) if self.shortcut is not None else 0)

    def config(self) -> dict:
        return {"body": self.body.architecture(),
                "shortcut": None if self.shortcut is None else self.shortcut.architecture()}  # fmt: skip

    def __repr__(self) -> str:
        body = ", ".join(repr(layer) for layer in self.body.layers)
        short = "" if self.shortcut is None else f", shortcut=[{', '.join(repr(x) for x in self.shortcut.layers)}]"
        return f"Residual([{body}]{short})"


def _run(branch, x: np.ndarray) -> np.ndarray:
    """A branch's forward, layer by layer (Sequential.forward would cast x to the branch's dtype,
    float32 for a branch without parameters)."""
    for layer in branch.layers:
        x = layer.forward(x)
    return x


def _branch(name: str, value: object):
    """A Residual branch as a Sequential of its own, from layers or from a model file's
    architecture entries (dicts). Parameters that had no model name yet are named
    ``<name>.<i>.<param>``; a layer taken from another model keeps its first name."""
    from .model import Sequential

    if isinstance(value, Sequential):
        value = list(value.layers)
    elif isinstance(value, Layer):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"Residual: {name}: expected a list of layers, got {short_repr(value)}")
    if not value:
        raise ValueError(f"Residual: {name}: expected at least one layer, got an empty list")
    for i, v in enumerate(value):
        if not isinstance(v, (Layer, dict)):
            raise TypeError(f"Residual: {name}: item {i} is a {type(v).__name__}, expected a fastconv Layer")
    if all(isinstance(v, dict) for v in value):  # from a model file; an error names its path
        return Sequential.from_architecture(list(value), where=f"{name}.")
    if any(isinstance(v, dict) for v in value):
        raise TypeError(f"Residual: {name}: expected layers or architecture entries (dicts), not a mixture")
    fresh = {id(p) for layer in value for key, p in layer.named_parameters() if p.name == key}
    branch = Sequential(*value)
    for key, p in branch.named_parameters():
        if id(p) in fresh:
            p.name = f"{name}.{key}"
    return branch


def _check_unique(layers: Sequence[Layer], where: str) -> None:
    """A layer object may appear once: its second forward would overwrite what the first kept for
    backward, and its gradients would be wrong without any error."""
    seen: set[int] = set()
    stack = list(layers)
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            raise ValueError(f"{where}: the layer object {layer!r} appears twice (its forward cache would be "
                             "overwritten); build a new layer for each place")  # fmt: skip
        seen.add(id(layer))
        stack.extend(layer.children())


#: layer class name -> class; what :func:`fastconv.load` may instantiate from a model file.
LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (Conv2d, ReLU, LeakyReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Linear,
                Dropout, BatchNorm2d, Residual)
}  # fmt: skip


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Make a custom Layer subclass loadable from model files (usable as a class decorator).

    A custom layer that keeps arrays from forward for backward should list their attribute names
    in ``_cache_names``: :meth:`Sequential.evaluating` (``predict``, validation) puts exactly those
    back after an evaluation that runs between a forward and its backward."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_layer: expected a Layer subclass, got {cls!r}")
    LAYER_TYPES[cls.__name__] = cls
    return cls
