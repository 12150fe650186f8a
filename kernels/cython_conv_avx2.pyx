# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# (The directives must be repeated here: they only take effect at the top of the compiled file,
# and the ones inside the included file below are then plain comments. Same reasoning as there.)
"""cython_conv.pyx compiled a second time, with ``-mavx2 -mfma`` (setup.py).

The same source, so the same kernels, but gcc may now use 32-byte AVX registers and fused
multiply-adds: the direct kernels' register blocks hold twice as many pixels per instruction.
Code built this way would crash with an illegal instruction on a CPU without AVX2 (any of it,
module set-up included), so ``cython_backend`` imports this module only after
``cython_conv.cpu_has_avx2_fma()`` said the CPU has both; the baseline build runs everywhere.
"""

include "cython_conv.pyx"
