"""fastconv: a small CNN engine whose kernels are written four ways, and a cat / not-cat classifier.

>>> import fastconv
>>> fastconv.kernels.available_backends()        # doctest: +SKIP
['cython', 'numba', 'numpy', 'python']
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

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "available_backends",
    "get_default_backend",
    "get_num_threads",
    "kernels",
    "set_default_backend",
    "set_num_threads",
]
