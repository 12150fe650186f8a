"""Timing of the cython backend against numpy, numba and PyTorch on the catnet workloads.

    .venv/bin/python benchmarks/cython_bench.py                 # batch 32, float32, 2 threads
    .venv/bin/python benchmarks/cython_bench.py --repeats 21 --threads 2 --dtype float32
    .venv/bin/python benchmarks/cython_bench.py --cpu-time          # 1 thread, CPU seconds

``--cpu-time`` times process CPU time on one thread instead of wall time: on a shared, loaded
machine wall-clock medians of multi-threaded code swing by 2-10x (a parallel region waits for
its slowest, descheduled thread), while single-thread CPU time stays within a few percent. It
measures efficiency, not parallel speed-up. (torch's CPU time includes any helper threads.)

Prints, per workload and engine: median ms, GFLOP/s and % of the measured matmul peak (conv
only), and the speed ratio vs numpy and vs torch (>1 = faster than that engine). Workloads:
conv forward+backward (dx, dw, db) on catnet's four layers, max_pool2d 2x2 forward+backward on
(32,16,64,64), and the whole catnet step (forward, BCE loss, backward, SGD; kernel-level
``KernelCatnet`` for fastconv backends, autograd + torch.optim for torch).

The bodies, the interleaved median timing and the peak measurement are fastconv.bench's, so
these figures are measured exactly like ``fastconv bench``; this script only selects the
issue-4 targets and adds the vs-torch column. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import numpy as np

from fastconv import bench as B
from fastconv import kernels as K


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-".rjust(len(format(0.0, spec)) + len(suffix)) if value is None else f"{value:{spec}}{suffix}"


def _cpu_medians(fns: dict, repeats: int) -> dict:
    """Like fastconv.bench.interleaved_medians, but one call per sample timed in process CPU time.

    Process CPU time counts every thread of the process, so each sample follows the same untimed
    pause as fastconv bench (B.SETTLE_S): the previous engine's spin-waiting threads must not be
    charged to this one."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            B.settle(B.SETTLE_S, fn, rewarm=True)
            t0 = time.process_time()
            fn()
            samples[name].append(time.process_time() - t0)
    return {name: (statistics.median(v), len(v)) for name, v in samples.items()}


def _cpu_peak(dtype: np.dtype) -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(dtype)
    return 2 * 2048**3 / _cpu_medians({"mm": lambda: a @ a}, 5)["mm"][0] / 1e9


def _fwd_bwd(cases: list[B.Case]):
    fns = [c.fn for c in cases]

    def run() -> None:
        for fn in fns:
            fn()

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--min-sample-s", type=float, default=0.05)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--engines", default=None, help="comma list (default: cython,numpy,numba if available,torch)")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, process CPU time (robust to machine load)")
    args = ap.parse_args(argv)
    if args.cpu_time:
        args.threads = 1
        medians = lambda fns, repeats, _min_s: _cpu_medians(fns, repeats)  # noqa: E731
        measure_peak = _cpu_peak
    else:
        medians = functools.partial(B.interleaved_medians, settle_s=B.SETTLE_S)
        measure_peak = functools.partial(B.measure_peak, repeats=5)

    dtype = np.dtype(args.dtype)
    wanted = ["cython", "numpy", "numba", "torch"] if args.engines is None else args.engines.split(",")
    available = K.available_backends()
    engines = [e for e in wanted if e in available or (e == "torch" and B.torch_available())]
    K.set_num_threads(args.threads)  # OpenMP, Numba and BLAS alike
    if "torch" in engines:
        # torch shares the libgomp our kernels loaded first, so its idle workers spin (the wait
        # policy cannot be changed any more); the settle pause before every sample keeps that
        # spinning out of the next engine's measurement
        B.import_torch().set_num_threads(args.threads)
    B.warm_up_backends([e for e in engines if e != "torch"])

    peaks = [measure_peak(dtype)]
    rows = []  # (workload, engine, seconds, flops)
    for wl in B.CONV_WORKLOADS:
        fns = {e: B.make_case("conv_fwd_bwd", wl, e, dtype).fn for e in engines}
        timed = medians(fns, args.repeats, args.min_sample_s)
        rows += [(f"conv fwd+bwd {wl.label}", e, timed[e][0], B.kernel_flops("conv_fwd_bwd", wl)) for e in engines]
    wl = B.POOL_WORKLOADS[0]
    fns = {e: _fwd_bwd([B.make_case(k, wl, e, dtype) for k in ("maxpool_fwd", "maxpool_bwd")]) for e in engines}
    timed = medians(fns, args.repeats, args.min_sample_s)
    rows += [(f"maxpool fwd+bwd {wl.label}", e, timed[e][0], 0) for e in engines]
    fns = {e: B.make_catnet_step(e, B.BATCH, dtype=dtype).fn for e in engines}
    timed = medians(fns, args.repeats, args.min_sample_s)
    rows += [("catnet step (batch 32, dropout)", e, timed[e][0], 0) for e in engines]
    peaks.append(measure_peak(dtype))
    peak = statistics.median(peaks)

    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"# cython_bench: {dtype.name}, {args.threads} threads, {clock}, median of {args.repeats} interleaved rounds")
    print(f"# peak (numpy {dtype.name} 2048^3 matmul, start/end): {peaks[0]:.0f} / {peaks[1]:.0f} GFLOP/s")
    info = B.machine_info(args.threads)
    print(f"# {info['cpu']}, simd {info['simd']}, {info['versions']}")
    if "cython" in engines:
        from fastconv.kernels import cython_backend

        print(f"# cython conv kernels: {cython_backend._conv.simd()} build (FASTCONV_CYTHON_SIMD=sse2 forces baseline)")
    print(f"{'workload':<58} {'engine':<7} {'ms':>8} {'GFLOP/s':>8} {'%peak':>6} {'vs numpy':>9} {'vs torch':>9}")
    by = {(w, e): s for w, e, s, _ in rows}
    for w, e, s, flops in rows:
        gf = flops / s / 1e9 if flops else None
        ratios = [by[(w, ref)] / s if (w, ref) in by else None for ref in ("numpy", "torch")]
        print(
            f"{w:<58} {e:<7} {s * 1e3:8.2f} {_fmt(gf, '8.1f')} {_fmt(gf and 100 * gf / peak, '6.1f')} "
            f"{_fmt(ratios[0], '8.2f', 'x')} {_fmt(ratios[1], '8.2f', 'x')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
