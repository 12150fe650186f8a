"""One thread setting for every backend: Numba, OpenMP (Cython) and BLAS (numpy).

Backends are compared on equal cores only if one number governs all three runtimes.
The setting comes from :func:`set_num_threads`, else ``FASTCONV_NUM_THREADS``, else the
number of cores this process may run on. BLAS is limited through ``threadpoolctl``; the
Numba and Cython backends register a hook here when they are imported and also read
:func:`get_num_threads` on each call, so the order of imports does not matter.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable

#: Element count from which the memory-bound kernels (ReLU, pooling, batch norm, depthwise
#: convolution) of the cython and numba backends use threads.
#: Below it a second thread saves too little (ReLU on 2**19 values: ~0.08 ms on one thread) to
#: pay for a parallel region. 2**19 is catnet's smallest activation, so all of catnet's are
#: threaded: the DESIGN catnet step at 2 threads on an idle machine was faster than with ReLU
#: and pooling serial in all 13 interleaved comparisons, by 0.3-6.4 ms (~39 against ~42 ms).
#: The price is on a busy machine, where every extra parallel region may wait for a descheduled
#: thread while its team-mate spins (beside two busy processes: 140-319 ms against 121-152 ms
#: serial); OMP_WAIT_POLICY=PASSIVE avoids it (~70 ms either way). docs/cython.md has the table.
#: Numba's small kernels behave the same way (ReLU on 4,096 values beside a busy process: 2.9 ms
#: on two threads against 0.15 ms on one). Read at each call (benchmarks and tests may change it).
MEMORY_BOUND_PARALLEL_MIN = 1 << 19

_hooks: list[Callable[[int], None]] = []
_num_threads: int | None = None
_blas_limiter = None


def cpu_count() -> int:
    """Cores this process may run on (respects taskset / cgroups affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    """The largest thread count accepted: 4x the machine's logical cores, and at least 64.

    OpenMP starts every thread it is asked for, each with its own stack: libgomp died with a
    segfault at 200,000 and stopped the process at 5,000 (thread creation failed), with no
    Python exception either way. Past the core count threads only take turns anyway."""
    return max(64, 4 * (os.cpu_count() or 1))


def _checked(n: object, what: str) -> int:
    if isinstance(n, bool):
        raise TypeError(f"{what}: expected a positive int, got {n!r} (bool)")
    try:
        n = operator.index(n)  # int and numpy integers, not floats or strings
    except TypeError:
        raise TypeError(f"{what}: expected a positive int, got {n!r} ({type(n).__name__})") from None
    if not 1 <= n <= max_threads():
        raise ValueError(
            f"{what}: expected an int from 1 to {max_threads()} (4x this machine's {os.cpu_count()} "
            f"logical cores, at least 64), got {n}"
        )
    return n


def _parse_env() -> int | None:
    raw = os.environ.get("FASTCONV_NUM_THREADS")
    if raw is None or raw.strip() == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"FASTCONV_NUM_THREADS: expected a positive integer, got {raw!r}") from None
    return _checked(n, "FASTCONV_NUM_THREADS")


def get_num_threads() -> int:
    """The thread count every backend uses (>= 1)."""
    global _num_threads
    if _num_threads is None:
        env = _parse_env()
        if env is not None:
            set_num_threads(env)
        else:
            _num_threads = cpu_count()
    return _num_threads  # type: ignore[return-value]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in Numba, OpenMP and BLAS alike.

    Raises ``TypeError``/``ValueError`` (and changes nothing) when ``n`` is not an int from 1 to
    :func:`max_threads`. Numba cannot use more threads than it was started with (the core
    count); it is capped there silently.
    """
    global _num_threads, _blas_limiter
    n = _checked(n, "n")
    _num_threads = n
    try:
        import threadpoolctl

        _blas_limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    try:  # OpenMP: one runtime per process, shared by every Cython extension
        from . import _openmp

        _openmp.set_num_threads(n)
    except ImportError:  # the Cython extensions were not built
        pass
    for hook in _hooks:
        hook(n)


def register_thread_hook(hook: Callable[[int], None]) -> None:
    """Called by a backend at import: ``hook(n)`` now and on every later change."""
    _hooks.append(hook)
    hook(get_num_threads())


def blas_info() -> list[dict]:
    """What threadpoolctl sees: BLAS / OpenMP libraries loaded, their versions and threads."""
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover
        return []
    return threadpoolctl.threadpool_info()
