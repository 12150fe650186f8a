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

import numpy as np

from fastconv import kernels as K

#: name -> (in_channels, image size, out_channels); 3x3 kernels, padding 1 (DESIGN.md's catnet)
LAYERS = {"conv1": (3, 64, 16), "conv2": (16, 64, 16), "conv3": (16, 32, 32), "conv4": (32, 16, 64)}


def main(backend: str, repeats: int = 25, threads: int = 2) -> None:
    K.set_num_threads(threads)
    rng = np.random.default_rng(0)
    for name, (c, size, k) in LAYERS.items():
        x = rng.standard_normal((32, c, size, size), dtype=np.float32)
        w = rng.standard_normal((k, c, 3, 3), dtype=np.float32)
        b = np.zeros(k, np.float32)
        dy = rng.standard_normal((32, k, size, size), dtype=np.float32)

        times = []
        for i in range(repeats + 1):  # the first run warms up: compilation (numba), first-touch page faults
            t0 = time.perf_counter()
            K.conv2d_forward(x, w, b, 1, 1, backend=backend)
            K.conv2d_backward(dy, x, w, 1, 1, backend=backend)
            if i:
                times.append(time.perf_counter() - t0)
        print(f"{backend:<8} {name}  fwd+bwd median {statistics.median(times) * 1e3:8.2f} ms  ({repeats} runs)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else K.get_default_backend())
