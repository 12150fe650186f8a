"""``fastconv info``: backends, threads, OpenMP, BLAS and library versions."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

NAME = "info"
HELP = "show backends (and why any is unavailable), threads, OpenMP, BLAS and versions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the same facts as JSON")


def collect() -> dict:
    """Everything ``fastconv info`` prints, as a dict."""
    import numpy as np

    import fastconv
    from fastconv import kernels
    from fastconv.kernels import _threads

    info: dict = {
        "fastconv": fastconv.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "backends": kernels.available_backends(),
        "unavailable": kernels.backend_errors(),
        "default_backend": _or_error(kernels.get_default_backend),
        "threads": _or_error(kernels.get_num_threads),
        "cpus": _threads.cpu_count(),
    }
    try:
        from fastconv.kernels import _openmp

        info["openmp"] = (
            f"yes (OpenMP {_openmp.openmp_version()}, {_openmp.get_max_threads()} threads)"
            if _openmp.openmp_enabled()
            else "no: Cython kernels were compiled without OpenMP and run serially"
        )
    except ImportError as exc:
        info["openmp"] = f"unknown: Cython extensions not built ({exc})"
    if "cython" in info["backends"]:
        from fastconv.kernels import cython_backend

        # which compiled copy of cython_conv.pyx runs: the AVX2+FMA one needs a CPU that has both
        info["cython_simd"] = f"{cython_backend._conv.simd()} (FASTCONV_CYTHON_SIMD=sse2 forces the baseline build)"
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = "not installed"
    try:
        import Cython

        info["cython"] = Cython.__version__
    except ImportError:
        info["cython"] = "not installed (only needed to build)"
    # Every BLAS loaded in this process, numpy's first: numpy's runs the numpy backend's products
    # with fastconv's thread count; SciPy's (called through scipy.linalg.cython_blas) runs the
    # cython backend's GEMM tiles, one per OpenMP thread, so cython_backend keeps it at 1 thread
    # on purpose (numba's im2col rung reaches it too).
    blas = [d for d in _threads.blas_info() if d.get("user_api") == "blas"]
    blas.sort(key=lambda d: (_blas_owner(d) != "numpy", _blas_owner(d), str(d.get("filepath"))))
    info["blas"] = [
        f"{d.get('internal_api')} {d.get('version')} ({_blas_owner(d)}: {d.get('threading_layer', '?')}, "
        f"{d.get('num_threads')} threads, arch {d.get('architecture', '?')})"
        for d in blas
    ]
    return info


def _or_error(setting):
    """The setting, or what is wrong with it: info is where a user looks when a bad
    FASTCONV_BACKEND / FASTCONV_NUM_THREADS makes every other command fail."""
    try:
        return setting()
    except ValueError as exc:
        return f"error: {exc}"


def _blas_owner(d: dict) -> str:
    """The package that shipped a BLAS library, from its path: 'numpy' for
    .../site-packages/numpy.libs/libscipy_openblas64_.so (or numpy/.libs/), 'system' outside
    site-packages (a distribution's or conda's shared BLAS)."""
    parts = Path(str(d.get("filepath", ""))).parts
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages") and i + 2 < len(parts):
            package = parts[i + 1]
            return package[: -len(".libs")] if package.endswith(".libs") else package
    return "system"


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "unavailable":
            for name, why in value.items():
                print(f"{'unavailable':<16} {name}: {why}")
            continue
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        print(f"{key:<16} {value}")
    return 0
