"""catnet's four conv layers, forward + backward (with dx), timed for ONE backend per process.

    python benchmarks/isolated_conv.py cython      # or numpy, numba; batch 32, float32, 2 threads

Why it exists: `fastconv bench` interleaves engines round by round in one process. On a 2-core
machine a thread pool that spin-waits after its work (OpenBLAS under numpy, libgomp under the
Cython kernels, torch's OpenMP) can steal the cores from the engine timed next, so a ratio could
depend on which engines shared the run (measured: cython conv4 8.8 ms alone, 16.3 ms when
interleaved with numpy only). `fastconv bench` now pauses before every sample (`--settle`);
this script is the independent check of that: one backend per process, no other pool to
disturb it. Compare its medians with the interleaved report before trusting a close ratio.
"""

from __future__ import annotations

import statistics
import sys
import time

from fastconv import bench
from fastconv import kernels as K


def main(backend: str, repeats: int = 25, threads: int = 2) -> None:
    """Median fwd+bwd time of each catnet conv layer (bench.CONV_WORKLOADS, the same inputs and
    body as `fastconv bench`'s conv_fwd_bwd), one call per sample, after one warm-up call."""
    K.set_num_threads(threads)
    for wl in bench.CONV_WORKLOADS:
        fn = bench.make_case("conv_fwd_bwd", wl, backend).fn
        fn()  # warm-up: compilation (numba), first-touch page faults
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(f"{backend:<8} {wl.name}  fwd+bwd median {statistics.median(times) * 1e3:8.2f} ms  ({repeats} runs)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else K.get_default_backend())
