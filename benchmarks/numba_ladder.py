"""The Numba backend against numpy and PyTorch on catnet's workloads, plus its conv ladder.

Usage (from the project root)::

    .venv/bin/python benchmarks/numba_ladder.py [--threads 2] [--repeats 9] [--no-ladder]

Prints, for float32 at batch 32 on ``--threads`` threads (Numba, BLAS and torch alike):

* the machine's peak: median GFLOP/s of a 2048^3 float32 numpy matmul, measured in this run;
* per catnet conv layer, forward + backward (dx, dw, db): median ms, GFLOP/s
  (3 * 2*N*K*Ho*Wo*C*R*S), % of peak, and numpy / torch time divided by numba's;
* max_pool2d 2x2 forward + backward on (32,16,64,64); the catnet training step;
* the ladder: every rung of ``numba_backend.LADDER`` on each layer's forward pass
  ("naive" runs one image and is scaled by the batch, marked ``*``).

All engines of a table row are timed round-robin (fastconv.bench.interleaved_medians), so
load from other processes hits them alike, with ``fastconv bench``'s untimed pause before every
sample (``--settle``): without it the previous engine's spin-waiting threads (OpenBLAS, libgomp)
take a core from the one being timed, and round-robin makes that bias systematic. On a machine
shared with other jobs, wall-clock medians at 2 threads mostly measure who got the cores;
``--clock cpu --threads 1`` instead reports the minimum CPU time (time.process_time) of each
engine on one thread, which is far less sensitive to load (it is the per-core efficiency, not
a 2-thread wall time).
Compilation happens in ``compile_all()`` before any timing and is reported on its own line.
Speed is never asserted anywhere; this only reports.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import fastconv.kernels as K
import numpy as np
from fastconv.kernels import numba_backend as nb

from fastconv import bench


def _conv_fwd_bwd(x: np.ndarray, w: np.ndarray, b: np.ndarray, dy: np.ndarray, backend: str) -> Callable[[], object]:
    def run() -> object:
        K.conv2d_forward(x, w, b, 1, 1, backend=backend)
        return K.conv2d_backward(dy, x, w, 1, 1, backend=backend)

    return run


def _torch_conv_fwd_bwd(x: np.ndarray, w: np.ndarray, b: np.ndarray, dy: np.ndarray) -> Callable[[], object]:
    import torch

    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def run() -> object:
        tx.grad = tw.grad = tb.grad = None
        torch.nn.functional.conv2d(tx, tw, tb, padding=1).backward(tdy)
        return tx.grad

    return run


def _maxpool(x: np.ndarray, backend: str) -> Callable[[], object]:
    def run() -> object:
        y, am = K.max_pool2d_forward(x, 2, backend=backend)
        return K.max_pool2d_backward(y, am, x.shape, backend=backend)

    return run


def _torch_maxpool(x: np.ndarray) -> Callable[[], object]:
    import torch

    tx = torch.from_numpy(x).requires_grad_(True)

    def run() -> object:
        tx.grad = None
        y = torch.nn.functional.max_pool2d(tx, 2)
        y.backward(y.detach())
        return tx.grad

    return run


def _min_cpu_times(fns: dict[str, Callable[[], object]], repeats: int, settle_s: float = 0.0) -> dict[str, float]:
    """Minimum process CPU seconds per call of each function, called round-robin (after one
    warm-up call each). Meaningful at one thread, where CPU time = time on the core.

    ``settle_s``: the pause (then a short untimed re-warm) of ``fastconv bench --settle`` before
    every timed call: process CPU time also counts the previous engine's spin-waiting threads."""
    best = {name: math.inf for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            bench.settle(settle_s, fn, rewarm=True)
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    return best


def _cpu_peak(repeats: int, size: int = 2048) -> float:
    """GFLOP/s of a size^3 float32 numpy matmul from its minimum CPU time (the --clock cpu peak)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    out = np.empty_like(a)
    sec = _min_cpu_times({"matmul": lambda: np.matmul(a, a, out=out)}, repeats)["matmul"]
    return 2 * size**3 / sec / 1e9


def _row(label: str, times: dict[str, float], flops: int, peak: float) -> str:
    t = times["numba"]
    cells = [f"{label:<22}", f"{t * 1e3:8.2f}"]
    if flops:
        gf = flops / t / 1e9
        cells += [f"{gf:7.1f}", f"{100 * gf / peak:6.1f}%"]
    else:
        cells += [f"{'-':>7}", f"{'-':>7}"]
    for other in ("numpy", "torch"):
        cells.append(f"{times[other] * 1e3:8.2f} {times[other] / t:5.2f}x" if other in times else f"{'-':>15}")
    return " ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--min-sample-s", type=float, default=0.05)
    parser.add_argument("--no-ladder", action="store_true", help="skip the ladder table")
    parser.add_argument(
        "--settle", type=float, default=bench.SETTLE_S, metavar="S",
        help=f"untimed pause before every sample, as in fastconv bench (default {bench.SETTLE_S} s; 0 = none)",
    )
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: interleaved wall-clock medians (default); cpu: minimum process CPU time per call",
    )
    args = parser.parse_args(argv)

    K.set_num_threads(args.threads)
    engines = [b for b in ("numba", "numpy") if b in K.available_backends()]
    has_torch = bench.torch_available()
    if has_torch:
        import torch

        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    nb.compile_all((np.float32,), ladder=not args.no_ladder)
    print(f"compile_all(float32{', ladder' if not args.no_ladder else ''}) in this process: "
          f"{time.perf_counter() - t0:.2f} s (compilation if the cache was cold, else cache load)")
    peak = bench.measure_peak(np.float32) if args.clock == "wall" else _cpu_peak(args.repeats)
    how = (f"median of {args.repeats} interleaved rounds" if args.clock == "wall"
           else f"minimum CPU time of {args.repeats} round-robin calls")
    how += f", {args.settle:g} s pause before each sample"
    print(f"threads {args.threads}; peak = 2048^3 float32 numpy matmul: {peak:.1f} GFLOP/s ({args.clock} clock); "
          f"{how}; ratios = other time / numba time; load average {os.getloadavg()[0]:.1f}")
    head = ["workload".ljust(22), f"{'numba ms':>8}", f"{'GFLOP/s':>7}", f"{'%peak':>7}"]
    print(" ".join([*head, f"{'numpy ms, ratio':>15}", f"{'torch ms, ratio':>15}"]))

    def timed(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        if args.clock == "cpu":
            return _min_cpu_times(fns, args.repeats, args.settle)
        res = bench.interleaved_medians(fns, args.repeats, args.min_sample_s, settle_s=args.settle)
        return {name: sec for name, (sec, _) in res.items()}

    for wl in bench.CONV_WORKLOADS:
        inp = bench.make_inputs("conv_fwd_bwd", wl)
        x, w, b, dy = inp["x"], inp["w"], inp["b"], inp["dy"]
        fns = {e: _conv_fwd_bwd(x, w, b, dy, e) for e in engines}
        if has_torch:
            fns["torch"] = _torch_conv_fwd_bwd(x, w, b, dy)
        g = wl.geometry
        print(_row(f"{wl.name} f+b {g.c}->{g.k} {g.h}x{g.w}", timed(fns), 3 * g.flops, peak))

    x = bench.make_inputs("maxpool_fwd", bench.POOL_WORKLOADS[0])["x"]
    fns = {e: _maxpool(x, e) for e in engines}
    if has_torch:
        fns["torch"] = _torch_maxpool(x)
    print(_row("maxpool2 f+b 16x64x64", timed(fns), 0, peak))

    steps = {e: bench.make_catnet_step(e).fn for e in engines}
    if has_torch:
        steps["torch"] = bench.make_catnet_step("torch").fn
    print(_row("catnet step (b=32)", timed(steps), 0, peak))

    if args.no_ladder:
        return 0
    print("\nladder, conv forward only (ms, GFLOP/s, % peak); * = one image timed, scaled x32")
    print(f"{'workload':<22} " + " ".join(f"{r:>22}" for r in nb.LADDER))
    for wl in bench.CONV_WORKLOADS:
        g = wl.geometry
        one = wl.with_batch(1)
        fns, scale = {}, {}
        for rung, fn in nb.LADDER.items():
            use = one if rung == "naive" else wl
            inp = bench.make_inputs("conv_fwd", use)
            fns[rung] = (lambda f=fn, i=inp, gg=use.geometry: f(i["x"], i["w"], i["b"], gg))
            scale[rung] = wl.n / use.n
        if args.clock == "cpu":
            res = _min_cpu_times(fns, 3, args.settle)
        else:
            med = bench.interleaved_medians(fns, 3, args.min_sample_s, max_repeats={"naive": 2}, settle_s=args.settle)
            res = {rung: sec for rung, (sec, _) in med.items()}
        cells = []
        for rung, sec in res.items():
            t = sec * scale[rung]
            gf = g.flops / t / 1e9
            mark = "*" if scale[rung] != 1 else " "
            cells.append(f"{t * 1e3:9.1f}{mark} {gf:5.1f} {100 * gf / peak:4.1f}%")
        print(f"{wl.name + ' fwd':<22} " + " ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
