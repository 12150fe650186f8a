# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# boundscheck/wraparound/initializedcheck are off ONLY because fastconv.kernels dispatch has
# already checked that dy and x have the same shape, dtype and C-contiguous layout; the
# backend passes them flattened (views, no copy).
"""Cython ReLU kernels: flat arrays cut into chunks, one chunk per OpenMP task.

The loop bodies are branch-free selects over contiguous memory that touch no Python object
(typed 1-d memoryviews, ``Py_ssize_t`` indices, ``nogil``), so gcc -O3 vectorises them
(SSE2 compare + and/andnot) and ``cython -a`` shows them white.
"""

from cython cimport floating
from cython.parallel cimport prange

# One parallel region per call; the caller (cython_backend) passes num_threads = 1 for arrays
# too small to be worth a second thread (_threads.MEMORY_BOUND_PARALLEL_MIN), and then no team starts.
cdef enum:
    # Elements per task: 64 KiB of float32, a few microseconds of work, so handing out a task
    # costs nothing measurable, while catnet's smallest threaded activation (2**19 values)
    # still splits into 32 tasks to balance between the threads.
    CHUNK = 16384


def relu_forward(const floating[::1] x, floating[::1] y, int num_threads):
    """y = x where not (x <= 0) else 0: positive values and NaN pass, -0.0 and negatives give 0."""
    cdef Py_ssize_t size = x.shape[0], nchunks = (size + CHUNK - 1) // CHUNK, ch, i, hi
    cdef floating v
    for ch in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
        hi = min(size, (ch + 1) * CHUNK)
        for i in range(ch * CHUNK, hi):
            v = x[i]
            y[i] = 0 if v <= 0 else v


def relu_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx, int num_threads):
    """dx = dy where x > 0 else 0 (NaN in x gives 0, as `NaN > 0` is false)."""
    cdef Py_ssize_t size = x.shape[0], nchunks = (size + CHUNK - 1) // CHUNK, ch, i, hi
    cdef floating d
    for ch in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
        hi = min(size, (ch + 1) * CHUNK)
        for i in range(ch * CHUNK, hi):
            # dy[i] is loaded unconditionally: written as `dy[i] if x[i] > 0 else 0`, the load
            # sits on one branch only, gcc keeps the branch (it may not invent a load), and on
            # random signs every other element is a misprediction: 13 ms instead of ~0.5 ms on
            # catnet's largest activation. A select between two loaded values vectorises.
            d = dy[i]
            dx[i] = d if x[i] > 0 else 0
