"""``fastconv bench``: time every kernel and the catnet step on every backend; print, save, plot."""

from __future__ import annotations

import argparse
import math

from fastconv.commands import positive_int

NAME = "bench"
HELP = "benchmark the kernels and the catnet step on every backend (GFLOP/s, %% of peak, speedups)"
DESCRIPTION = (
    "Time conv forward/backward, max/avg pooling, relu and (with --full) batch norm on catnet's layers "
    "(batch 32) and a whole catnet training step on every available backend, interleaved, median after "
    "warm-up. Reports ms, "
    "GFLOP/s, % of the float matmul peak measured in the same run, speedup vs naive python loops "
    "(run on 1 image and scaled per image on catnet shapes) and vs numpy. The quick default finishes "
    "in under a minute on 2 cores; --full measures every kernel and workload and Numba's cold compile."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fastconv.bench import SETTLE_S

    parser.add_argument(
        "--full",
        action="store_true",
        help="every kernel x every catnet workload, 15 rounds, naive python on every shape (batch 1, scaled), "
        "python catnet step, Numba cold-compile time (several minutes); default: the quick subset, 5 rounds",
    )
    parser.add_argument(
        "--backends",
        default=None,
        metavar="A,B",
        help="comma-separated backends to compare (default: every available backend)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="threads for Numba, OpenMP, BLAS (and torch) alike (default: every core this process may use)",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="array dtype")
    parser.add_argument(
        "--repeats", type=positive_int, default=None, metavar="R", help="rounds per case (default: 5; --full: 15)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="S",
        help="untimed pause in seconds before every timed sample, so that the thread pool of the engine "
        "timed before (OpenBLAS spin-waits ~0.1 s) is asleep when the next one starts "
        f"(default: {SETTLE_S:g}; 0 = none)",
    )
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="also save the report as JSON (atomic write)"
    )
    parser.add_argument(
        "--plot", default=None, metavar="DIR", help="write PNG charts (speedup ladder, %% of peak)"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        choices=("torch",),
        help="add a PyTorch CPU column (same threads); a clear note if torch is not installed",
    )
    parser.add_argument(
        "--compile-time",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure Numba's cold compile in fresh subprocesses (default: only with --full)",
    )
    parser.add_argument(
        "--docs",
        default=None,
        metavar="MARKDOWN",
        help="fill the generated sections of a markdown file (e.g. docs/ladder.md) from this report",
    )
    parser.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="do not measure: load a report saved with --json and print/plot/--docs it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from fastconv import bench

    if args.settle is not None and not (args.settle >= 0 and math.isfinite(args.settle)):
        raise ValueError(f"--settle: expected a number of seconds >= 0, got {args.settle}")
    if args.from_json:
        report = bench.load_json(args.from_json)
    else:
        backends = None
        if args.backends:
            backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        config = bench.BenchConfig(
            full=args.full,
            backends=backends,
            threads=args.threads,
            dtype=args.dtype,
            compare=list(dict.fromkeys(args.compare)),
            repeats=args.repeats,
            compile_time=args.compile_time,
            settle_s=args.settle,
            progress=not args.no_progress,
        )
        report = bench.run_benchmarks(config)
    print(bench.format_report(report))
    if args.json and not args.from_json:
        bench.write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        for path in bench.plot_report(report, args.plot):
            print(f"wrote {path}")
    if args.docs:
        n = bench.fill_docs(args.docs, report)
        print(f"updated {n} generated sections of {args.docs}")
    return 0
