"""Depthwise 3x3 convolution (groups = C, padding 1), forward + backward with dx, every backend
interleaved in one run, beside the pre-kernel way (one ungrouped call per channel) and PyTorch.

    python benchmarks/depthwise.py            # one thread; batch 32, float32
    python benchmarks/depthwise.py 2          # two threads
    python benchmarks/depthwise.py 1 phases   # cython's forward / dW / dx+dW split instead

Prints median milliseconds per forward + backward (12 rounds after 3 warm-up rounds) and the
GFLOP/s they make: 2*N*K*Ho*Wo*R*S per forward, twice that for dx + dW, against numpy's float32
matmul peak measured in the same run (DESIGN.md's yardstick). The numbers in docs/cython.md
(depthwise section) come from this script.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from fastconv import kernels as K

SHAPES = [(32, 32), (64, 16), (128, 8)]  # (channels, height = width): MobileNet-like stages
BATCH, ROUNDS, WARMUP = 32, 15, 3


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _per_channel(x: np.ndarray, w: np.ndarray, backend: str) -> None:
    """The way groups ran before the depthwise kernels: one ungrouped conv per channel."""
    c = x.shape[1]
    parts = [np.ascontiguousarray(x[:, i : i + 1]) for i in range(c)]
    ys = [K.conv2d_forward(parts[i], w[i : i + 1], None, 1, 1, backend=backend) for i in range(c)]
    for i in range(c):
        K.conv2d_backward(ys[i], parts[i], w[i : i + 1], 1, 1, backend=backend)


def _cases(x: np.ndarray, w: np.ndarray, backends: list[str], torch, phases: bool) -> dict:
    """name -> a function running one forward + backward (or, with ``phases``, one phase of cython's)."""
    c = x.shape[1]
    if phases:
        y = K.conv2d_forward(x, w, None, 1, 1, 1, c, backend="cython")
        return {
            "forward": lambda: K.conv2d_forward(x, w, None, 1, 1, 1, c, backend="cython"),
            "dW": lambda: K.conv2d_backward(y, x, w, 1, 1, 1, c, need_dx=False, backend="cython"),
            "dx+dW": lambda: K.conv2d_backward(y, x, w, 1, 1, 1, c, backend="cython"),
        }

    def step(backend: str) -> None:
        y = K.conv2d_forward(x, w, None, 1, 1, 1, c, backend=backend)
        K.conv2d_backward(y, x, w, 1, 1, 1, c, backend=backend)

    cases = {b: (lambda b=b: step(b)) for b in backends}
    if "cython" in backends:
        cases["cython, one call per channel"] = lambda: _per_channel(x, w, "cython")
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_(True)
        wt = torch.from_numpy(w).requires_grad_(True)

        def torch_step() -> None:
            yt = torch.nn.functional.conv2d(xt, wt, None, 1, 1, 1, c)
            yt.backward(yt.detach())

        cases["torch"] = torch_step
    return cases


def main(threads: int = 1, phases: bool = False) -> None:
    K.set_num_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    from fastconv.bench import measure_peak

    rng = np.random.default_rng(0)
    backends = [b for b in ("numpy", "numba", "cython") if b in K.available_backends()]
    peak = measure_peak(np.float32)
    print(f"depthwise 3x3, padding 1, batch {BATCH}, float32, {threads} thread(s); median ms of "
          f"{'each phase' if phases else 'fwd+bwd'} (GFLOP/s); float32 matmul peak {peak:.0f} GFLOP/s")
    for c, hw in SHAPES:
        x = rng.standard_normal((BATCH, c, hw, hw), dtype=np.float32)
        w = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
        cases = _cases(x, w, backends, torch, phases)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(ROUNDS):  # interleaved: every case once per round
            for name, fn in cases.items():
                times[name].append(_timed(fn))
        fwd = 2 * BATCH * c * hw * hw * 9  # FLOP of one forward (stride 1, padding 1: Ho = H)
        work = {"forward": fwd, "dW": fwd, "dx+dW": 2 * fwd}
        cells = []
        for name, v in times.items():
            t = statistics.median(v[WARMUP:])
            cells.append(f"{name} {t * 1e3:.1f} ({work.get(name, 3 * fwd) / t / 1e9:.1f})")
        print(f"C={c} {hw}x{hw}: {' | '.join(cells)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, len(sys.argv) > 2 and sys.argv[2] == "phases")
