"""Backend registry: which backends exist, which import here, and the process default.

A backend is a module that defines the functions of the kernel contract (see
``fastconv.kernels.BACKEND_FUNCTIONS``) over already-validated, C-contiguous arrays and a
geometry object from :mod:`fastconv.kernels._geometry`. Backends are imported lazily, the
first time they are asked for, so ``import fastconv`` does not pay for Numba's start-up
unless Numba is used.
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
# the catnet step (docs/ladder.md, 2 threads: cython 47 ms, numba 54 ms, numpy 209 ms per batch
# of 32). cython also has nothing to compile at run time (numba: ~40 s on a machine's first run).
PREFERENCE: tuple[str, ...] = ("cython", "numba", "numpy", "python")

BACKEND_FUNCTIONS: tuple[str, ...] = (
    "conv2d_forward",
    "conv2d_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "relu_forward",
    "relu_backward",
    "batch_norm_forward",
    "batch_norm_backward",
)

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
    if missing:
        raise TypeError(f"backend {name!r} ({module.__name__}) lacks contract functions: {missing}")


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


def get_backend(name: str | None = None) -> ModuleType:
    """The backend module called ``name`` (default: the process default backend)."""
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
                get_backend(env)
            except ValueError as e:  # say where the bad name came from
                raise ValueError(f"environment variable FASTCONV_BACKEND={env!r}: {e}") from None
            _default = env
        else:
            _default = available_backends()[0]
    return _default


def set_default_backend(name: str) -> None:
    """Make ``name`` the process-wide default backend (validated now)."""
    global _default
    get_backend(name)
    _default = name
