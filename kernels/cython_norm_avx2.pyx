# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# (The directives must be repeated here: they only take effect at the top of the compiled file.)
"""cython_norm.pyx compiled a second time, with ``-mavx2`` (setup.py), like cython_conv_avx2.

Four float64 lanes per register instead of two, and float32 -> float64 conversions of eight
values per instruction: the lane sums do half the instructions. No FMA (``-ffp-contract=off``):
every operation rounds as in the baseline build, so both give bit-identical results. ``cython_backend`` imports it
only when ``cython_conv.cpu_has_avx2_fma()`` said the CPU has both; the baseline build runs
everywhere.
"""

include "cython_norm.pyx"
