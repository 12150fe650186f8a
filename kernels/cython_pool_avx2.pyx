# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# (The directives must be repeated here: they only take effect at the top of the compiled file.)
"""cython_pool.pyx compiled a second time, with ``-mavx2`` (setup.py), like cython_norm_avx2.

Eight float32 compares and selects per instruction instead of four in the branch-free max
pool, and wider copies everywhere. No FMA (``-ffp-contract=off``; pooling has no multiply-add
anyway): comparisons, selects and the average's float64 sums are exact operations, so both
builds give bit-identical results. ``cython_backend`` imports it only when
``cython_conv.cpu_has_avx2_fma()`` said the CPU has AVX2; the baseline build runs everywhere.
"""

include "cython_pool.pyx"
