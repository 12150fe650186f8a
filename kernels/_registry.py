"""Backend registry: which backends exist, which import here, and the process default.

A backend is a module that defines the functions of the kernel contract (see
``fastconv.kernels.BACKEND_FUNCTIONS``; those in ``OPTIONAL_FUNCTIONS`` may be left out) over
already-validated, C-contiguous arrays and a geometry object from
:mod:`fastconv.kernels._geometry`. Backends are imported lazily, the first time they are asked
for, so ``import fastconv`` does not pay for Numba's start-up unless Numba is used.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

# name -> module path.
_KNOWN: dict[str, str] = {
    "numba": "fastconv.kernels.numba_backend",
    "cython": "fastconv.kernels.cython_backend",
    "numpy": "fastconv.kernels.numpy_backend",
    "python": "fastconv.kernels.python_backend",
}
# Preference for the default backend, fastest first, as measured by `fastconv bench --full` on
# the catnet step (docs/ladder.md, 2 threads: cython 45 ms, numba 61 ms, numpy 197 ms per batch
# of 32). cython also has nothing to compile at run time (numba: ~1-1.5 min on a machine's first run).
PREFERENCE: tuple[str, ...] = ("cython", "numba", "numpy", "python")

BACKEND_FUNCTIONS: tuple[str, ...] = (
    "conv2d_forward",
    "conv2d_backward",
    "depthwise_conv2d_forward",
    "depthwise_conv2d_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "relu_forward",
    "relu_backward",
    "batch_norm_forward",
    "batch_norm_backward",
)

#: Contract functions a backend may leave out. Without the depthwise pair, groups = C runs as one
#: groups = 1 conv call per channel (correct, slower: each call is a tiny conv), as other
#: groupings always do. A backend defines both or neither.
OPTIONAL_FUNCTIONS: tuple[str, ...] = ("depthwise_conv2d_forward", "depthwise_conv2d_backward")

_loaded: dict[str, ModuleType] = {}
_errors: dict[str, str] = {}
_default: str | None = None


def register_backend(name: str, module: str | ModuleType) -> None:
    """Register a backend under ``name``: a module object or an importable module path.

    The conformance suite runs over every registered, importable backend.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if isinstance(module, ModuleType):
        _check_module(name, module)
        _loaded[name] = module
        _KNOWN[name] = module.__name__
    else:
        _KNOWN[name] = module
        _loaded.pop(name, None)
        _errors.pop(name, None)


def _check_module(name: str, module: ModuleType) -> None:
    missing = [f for f in BACKEND_FUNCTIONS if not callable(getattr(module, f, None))]
    required = [f for f in missing if f not in OPTIONAL_FUNCTIONS]
    if required:
        raise TypeError(f"backend {name!r} ({module.__name__}) lacks contract functions: {required}")
    if 0 < len(missing) < len(OPTIONAL_FUNCTIONS):
        raise TypeError(
            f"backend {name!r} ({module.__name__}) defines {sorted(set(OPTIONAL_FUNCTIONS) - set(missing))} "
            f"but not {missing}: the optional depthwise functions come as a pair, both or neither"
        )


def has_depthwise(module: ModuleType) -> bool:
    """Whether a (checked) backend module has its own depthwise kernels (OPTIONAL_FUNCTIONS)."""
    return callable(getattr(module, OPTIONAL_FUNCTIONS[0], None))


def _try_load(name: str) -> ModuleType | None:
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        module = importlib.import_module(_KNOWN[name])
        _check_module(name, module)
    except Exception as exc:  # an optional backend that cannot load is reported, not fatal
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _loaded[name] = module
    return module


def known_backends() -> list[str]:
    """Every registered backend name, importable here or not."""
    return list(_KNOWN)


def available_backends() -> list[str]:
    """Registered backends that import on this machine, fastest first."""
    order = [n for n in PREFERENCE if n in _KNOWN] + [n for n in _KNOWN if n not in PREFERENCE]
    return [n for n in order if _try_load(n) is not None]


def backend_errors() -> dict[str, str]:
    """Why each unavailable backend failed to import (name -> message)."""
    available_backends()
    return dict(_errors)


def get_backend(name: str | None = None) -> CheckedBackend:
    """The backend called ``name`` (default: the process default backend).

    Its contract functions take already-built geometry objects, so they can be called one
    backend at a time; each call is checked first (:class:`CheckedBackend`): a geometry or array
    that does not fit raises ``ValueError`` instead of reaching compiled code. The other
    attributes are the module's own (``NAME``, ``describe()``, ...).
    """
    return CheckedBackend(backend_module(name))


def backend_module(name: str | None = None) -> ModuleType:
    """The raw backend module: its functions trust their arguments, so only the dispatch
    functions of ``fastconv.kernels`` (which validated them) call it."""
    if name is None:
        name = get_default_backend()
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a backend name (str), got {type(name).__name__}")
    if name not in _KNOWN:
        raise ValueError(f"backend: expected one of {known_backends()}, got {name!r}")
    module = _try_load(name)
    if module is None:
        raise ValueError(f"backend: {name!r} is not available on this machine ({_errors[name]})")
    return module


def get_default_backend() -> str:
    """The default backend: set_default_backend(), else FASTCONV_BACKEND, else the fastest available."""
    global _default
    if _default is None:
        env = os.environ.get("FASTCONV_BACKEND", "").strip()
        if env:
            try:
                backend_module(env)
            except ValueError as e:  # say where the bad name came from
                raise ValueError(f"environment variable FASTCONV_BACKEND={env!r}: {e}") from None
            _default = env
        else:
            _default = available_backends()[0]
    return _default


def set_default_backend(name: str) -> None:
    """Make ``name`` the process-wide default backend (validated now)."""
    global _default
    backend_module(name)
    _default = name


# (arrays that must have the geometry's x / y / weight shape) for each contract function
_SHAPED = {
    "conv2d_forward": {"x": "x_shape", "weight": "w_shape"},
    "conv2d_backward": {"dy": "y_shape", "x": "x_shape", "weight": "w_shape"},
    "depthwise_conv2d_forward": {"x": "x_shape", "weight": "w_shape"},
    "depthwise_conv2d_backward": {"dy": "y_shape", "x": "x_shape", "weight": "w_shape"},
    "max_pool2d_forward": {"x": "x_shape"},
    "max_pool2d_backward": {"dy": "y_shape", "argmax": "y_shape"},
    "avg_pool2d_forward": {"x": "x_shape"},
    "avg_pool2d_backward": {"dy": "y_shape"},
}


class CheckedBackend:
    """A backend module whose contract functions check their arguments before running.

    Dispatch (``fastconv.kernels.conv2d_forward(...)`` etc.) validates everything and then calls
    the raw module, so this costs nothing there. Called directly, a compiled kernel would index
    with whatever geometry it is given; here the geometry must keep every window inside the
    input (:func:`~fastconv.kernels._geometry.check_in_bounds`), arrays must be C-contiguous
    float32/float64 of one dtype with the geometry's shapes, and max-pool indices must lie in
    their plane. The checks reuse the dispatch validators: one source of truth.
    """

    def __init__(self, module: ModuleType):
        self._module = module

    def __repr__(self) -> str:
        return f"<checked backend {getattr(self._module, 'NAME', self._module.__name__)!r}>"

    def __getattr__(self, attr: str):
        value = getattr(self._module, attr)
        if attr not in BACKEND_FUNCTIONS:
            return value

        def checked(*args, **kwargs):
            _check_direct_call(attr, value, args, kwargs)
            return value(*args, **kwargs)

        checked.__name__ = checked.__qualname__ = attr
        checked.__doc__ = value.__doc__
        return checked


def _check_direct_call(op: str, fn, args: tuple, kwargs: dict) -> None:
    import inspect

    import numpy as np

    from ._geometry import Conv2dGeometry, Pool2dGeometry, check_in_bounds
    from ._validate import FLOAT_DTYPES, as_argmax, require_shape, same_dtype

    bound = dict(inspect.signature(fn).bind(*args, **kwargs).arguments)
    if "w" in bound:  # backends call the conv weight w
        bound["weight"] = bound.pop("w")
    g = bound.get("g")
    if op.startswith(("conv2d", "depthwise_conv2d", "max_pool2d", "avg_pool2d")):
        want = Conv2dGeometry if "conv2d" in op else Pool2dGeometry
        if not isinstance(g, want):
            raise TypeError(f"{op}: g: expected a {want.__name__}, got {type(g).__name__}")
        check_in_bounds(g)
        # the kernels' own channel arithmetic: one group, or one group per input channel
        groups = 1 if op.startswith("conv2d") else g.c
        if want is Conv2dGeometry and g.groups != groups:
            raise ValueError(f"{op}: g: expected groups = {groups}, got a geometry with groups = {g.groups}")
    # Dispatch converts arrays (as_float_array); here they are passed on as given, so they must
    # already be what the kernel reads: C-contiguous float arrays (statistics: float64).
    data = {n: bound[n] for n in ("x", "dy", "weight", "b", "bias") if bound.get(n) is not None}
    stats = {n: bound[n] for n in ("mean", "var") if bound.get(n) is not None}
    for name, value in {**data, **stats}.items():
        if not isinstance(value, np.ndarray) or value.dtype not in FLOAT_DTYPES:
            got = f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
            raise TypeError(f"{op}: {name}: expected a float32/float64 numpy array, got {got}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{op}: {name}: expected a C-contiguous array")
    same_dtype(**data)
    if any(v.dtype != np.float64 for v in stats.values()):
        raise TypeError(f"{op}: mean and var: expected float64 statistics")
    why = "from the geometry"
    for name, attr in _SHAPED.get(op, {}).items():
        if name == "argmax":
            argmax = as_argmax("argmax", bound["argmax"], g.y_shape, g.h * g.w)
            if argmax is not bound["argmax"]:  # as_argmax made an int64 C-order copy the kernel would not see
                raise TypeError(f"{op}: argmax: expected a C-contiguous int64 array, got {bound['argmax'].dtype}")
        else:
            require_shape(name, bound[name], getattr(g, attr), why)
    if op in ("conv2d_forward", "depthwise_conv2d_forward") and "b" in data:
        require_shape("b", data["b"], (g.k,), "one bias per output channel of the geometry")
    if op in ("relu_backward", "batch_norm_backward"):
        require_shape("dy", bound["dy"], bound["x"].shape, "x's shape")
    if op.startswith("batch_norm"):
        x = bound["x"]
        if x.ndim != 4:
            raise ValueError(f"{op}: x: expected (N, C, H, W), got shape {x.shape}")
        for name, value in {**data, **stats}.items():
            if name in ("weight", "bias", "mean", "var"):
                require_shape(name, value, (x.shape[1],), "one value per channel of x")
