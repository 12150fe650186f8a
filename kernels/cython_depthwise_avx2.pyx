# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# (The directives must be repeated here: they only take effect at the top of the compiled file.)
"""cython_depthwise.pyx compiled a second time, with ``-mavx2`` (setup.py), like cython_pool_avx2.

Eight float32 multiply-adds per instruction pair instead of four in the flat loops. No FMA
(``-ffp-contract=off``): each multiply and add rounds as in the baseline build, so both builds
give bit-identical results. ``cython_backend`` imports it only when
``cython_conv.cpu_has_avx2_fma()`` said the CPU has AVX2; the baseline build runs everywhere.
"""

include "cython_depthwise.pyx"
