"""Array validation: dtype, dimensionality and memory layout, checked once at dispatch.

Policy (the same for every op and every backend):

* Only ``float32`` and ``float64`` are computed. Integer, bool, float16, complex and object
  arrays are rejected with ``TypeError``: silently promoting them would hide a bug in the
  caller, and a compiled kernel is only ever built for the two float types.
* All float arguments of one call must share a dtype; mixing float32 and float64 is a
  ``TypeError`` that names both arguments (a silent cast would change the precision the
  caller asked for).
* Non-contiguous, Fortran-ordered, misaligned or byte-swapped arrays are *converted* to a
  native C-contiguous copy: the result is computed correctly, and compiled kernels can assume
  a dense row-major buffer.
* NaN and inf are data, not errors: they propagate through every op.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(name: str, value: object, ndim: int | None = None) -> np.ndarray:
    """Return ``value`` as a native-endian, aligned, C-contiguous float32/float64 ndarray.

    Raises ``TypeError`` for a non-array or a dtype other than float32/float64 and
    ``ValueError`` when ``ndim`` is given and does not match.
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of float32 or float64, got {type(value).__name__}")
    if isinstance(value, np.ma.MaskedArray):  # a kernel would silently compute on the masked values
        raise TypeError(f"{name}: masked arrays are not supported; pass {name}.filled(value) or {name}.data")
    if type(value) is not np.ndarray:  # np.matrix, memmap, ...: the kernels see plain arrays
        value = np.asarray(value)
    if value.dtype.newbyteorder("=") not in FLOAT_DTYPES or value.dtype.kind != "f":
        raise TypeError(f"{name}: expected dtype float32 or float64, got {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {value.shape} ({value.ndim}-d)")
    native = value.dtype.newbyteorder("=")
    # np.require copies only when needed: a C-contiguous, aligned, native array passes through.
    return np.require(value, dtype=native, requirements=("C", "A"))


def same_dtype(**arrays: np.ndarray | None) -> np.dtype:
    """Check that every given (non-None) array has the same dtype and return it."""
    named = [(k, a) for k, a in arrays.items() if a is not None]
    first_name, first = named[0]
    for other_name, other in named[1:]:
        if other.dtype != first.dtype:
            raise TypeError(
                f"{other_name}: expected dtype {first.dtype} to match {first_name}, got {other.dtype} "
                "(mixing float32 and float64 is not allowed; cast explicitly)"
            )
    return first.dtype


def require_shape(name: str, array: np.ndarray, expected: tuple[int, ...], why: str) -> None:
    """Raise ``ValueError`` when ``array.shape != expected``; ``why`` says where it came from."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} ({why}), got {tuple(array.shape)}")


def as_shape4(name: str, value: object) -> tuple[int, int, int, int]:
    """Validate an ``input_shape`` argument: a sequence of four non-negative ints."""
    if not isinstance(value, (tuple, list)) or len(value) != 4:
        raise ValueError(f"{name}: expected a 4-tuple (N, C, H, W), got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected integer sizes, got {value!r}")
        if v < 0:
            raise ValueError(f"{name}: expected non-negative sizes, got {value!r}")
        out.append(int(v))
    return out[0], out[1], out[2], out[3]


def as_argmax(name: str, value: object, expected_shape: tuple[int, ...], plane_size: int) -> np.ndarray:
    """Validate max-pool winner indices: int64, ``expected_shape``, every value in [0, plane_size).

    The range check is an O(size) pass; it is what lets a compiled backward kernel scatter
    through these indices without bounds checks.
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of int64 indices, got {type(value).__name__}")
    if value.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype (int64 indices), got {value.dtype}")
    require_shape(name, value, expected_shape, "one index per output element of dy")
    if value.size:
        lo, hi = int(value.min()), int(value.max())
        if lo < 0 or hi >= plane_size:
            raise ValueError(
                f"{name}: expected indices in [0, {plane_size}) (flat positions in an input plane "
                f"of H*W = {plane_size}), got values in [{lo}, {hi}]"
            )
    return np.require(value, dtype=np.int64, requirements=("C", "A"))


def as_flag(name: str, value: object) -> bool:
    """A True/False switch (``need_dx``, ``training``): bool or numpy bool only, so that a string
    like ``"no"`` is not silently taken as True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def as_divisor(name: str, value: object) -> int | None:
    """None or a positive int (an average pool's ``divisor_override``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected None or a positive int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name}: expected None or a positive int, got {value!r}")
    return int(value)
