# cython: language_level=3
"""Whether this build has OpenMP, and the OpenMP thread setting.

``_OPENMP`` is defined by the C compiler exactly when it compiles with ``-fopenmp``, so this
module reports the truth about the build rather than what setup.py intended.
"""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fc_openmp_enabled(void) { return 1; }
    static int fc_openmp_version(void) { return _OPENMP; }
    static int fc_get_max_threads(void) { return omp_get_max_threads(); }
    static void fc_set_num_threads(int n) { omp_set_num_threads(n); }
    #else
    static int fc_openmp_enabled(void) { return 0; }
    static int fc_openmp_version(void) { return 0; }
    static int fc_get_max_threads(void) { return 1; }
    static void fc_set_num_threads(int n) { (void)n; }
    #endif
    """
    int fc_openmp_enabled()
    int fc_openmp_version()
    int fc_get_max_threads()
    void fc_set_num_threads(int n)


def openmp_enabled() -> bool:
    """True when the Cython extensions were compiled with OpenMP."""
    return bool(fc_openmp_enabled())


def openmp_version() -> int:
    """The ``_OPENMP`` date macro (e.g. 201511 for OpenMP 4.5), or 0 without OpenMP."""
    return fc_openmp_version()


def get_max_threads() -> int:
    """OpenMP's current thread limit (1 without OpenMP)."""
    return fc_get_max_threads()


def set_num_threads(int n) -> None:
    """Set OpenMP's thread count for later parallel regions (no-op without OpenMP)."""
    if n < 1:
        raise ValueError(f"n: expected a positive int, got {n}")
    fc_set_num_threads(n)
