"""Every benchmark body runs once on a tiny shape and its output is checked, so the benchmark
suites (benchmarks/) and ``fastconv bench`` cannot rot. No timing is asserted.

The expected values come from small float64 references written here with numpy
(padding + sliding windows + einsum, explicit loops for max pooling), independent of every backend.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import fastconv.kernels as K
import numpy as np
import pytest

from fastconv import bench
from fastconv.cli import main

BACKENDS, _, COMPARE = bench.suite_engines()
ENGINES = BACKENDS + COMPARE + bench.ladder_rungs(BACKENDS)

# Non-square, odd sizes: a transposed index or an off-by-one border shows up.
TINY = {
    "conv": bench.ConvWorkload("tiny", 2, 3, 7, 6, 4),
    "pool": bench.PoolWorkload("tiny", 2, 3, 6, 4),
    "relu": bench.EltWorkload("tiny", 2, 3, 4, 5),
    "bn": bench.EltWorkload("tiny", 2, 3, 4, 5),
}


# ---- independent float64 references -------------------------------------------------------


def ref_conv_forward(x, w, b, p):
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    r, s = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, s), axis=(2, 3))  # n c i j r s
    return np.einsum("ncijrs,kcrs->nkij", win, w.astype(np.float64)) + b.astype(np.float64)[None, :, None, None]


def ref_conv_backward(dy, x, w, p):
    dy, x, w = (a.astype(np.float64) for a in (dy, x, w))
    r, s = w.shape[2:]
    ho, wo = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, s), axis=(2, 3))
    dw = np.einsum("nkij,ncijrs->kcrs", dy, win)
    dxp = np.zeros_like(xp)
    for i in range(r):
        for j in range(s):
            dxp[:, :, i : i + ho, j : j + wo] += np.einsum("nkhw,kc->nchw", dy, w[:, :, i, j])
    return dxp[:, :, p : p + x.shape[2], p : p + x.shape[3]], dw, dy.sum(axis=(0, 2, 3))


def ref_maxpool_forward(x, k):
    n, c, h, w = x.shape
    y = np.empty((n, c, h // k, w // k))
    arg = np.empty(y.shape, np.int64)
    for idx in np.ndindex(*y.shape):
        a, b, i, j = idx
        window = [(x[a, b, i * k + u, j * k + v], (i * k + u) * w + j * k + v) for u in range(k) for v in range(k)]
        y[idx], arg[idx] = max(window, key=lambda t: t[0])  # max() keeps the first of equal keys
    return y, arg


def ref_maxpool_backward(dy, argmax, shape):
    dx = np.zeros(shape)
    planes = dx.reshape(shape[0], shape[1], -1)
    for a, b, i, j in np.ndindex(*dy.shape):
        planes[a, b, argmax[a, b, i, j]] += dy[a, b, i, j]
    return dx


def reference(kernel, case):
    inp, wl = case.inputs, case.workload
    x = inp["x"]
    if kernel == "conv_fwd":
        return (ref_conv_forward(x, inp["w"], inp["b"], wl.padding),)
    if kernel == "conv_bwd":
        return ref_conv_backward(inp["dy"], x, inp["w"], wl.padding)
    if kernel == "conv_fwd_bwd":
        return (
            ref_conv_forward(x, inp["w"], inp["b"], wl.padding),
            *ref_conv_backward(inp["dy"], x, inp["w"], wl.padding),
        )
    k = getattr(wl, "kernel", None)
    if kernel == "maxpool_fwd":
        return ref_maxpool_forward(x, k)
    if kernel == "maxpool_bwd":
        return (ref_maxpool_backward(inp["dy"], inp["argmax"], x.shape),)
    if kernel == "avgpool_fwd":
        n, c, h, w = x.shape
        return (x.astype(np.float64).reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5)),)
    if kernel == "avgpool_bwd":
        return (np.repeat(np.repeat(inp["dy"].astype(np.float64) / (k * k), k, axis=2), k, axis=3),)
    if kernel == "relu_fwd":
        return (np.maximum(x, 0),)
    if kernel.startswith("bn_"):
        return ref_batch_norm(kernel, inp)
    return (np.where(x > 0, inp["dy"], 0),)


def ref_batch_norm(kernel, inp):
    """The textbook formulas in float64; backward from the chain rule through the batch statistics."""
    x, dy, w, b = (inp[k].astype(np.float64) for k in ("x", "dy", "w", "b"))
    axes, c = (0, 2, 3), (None, slice(None), None, None)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    xhat = (x - mean[c]) / np.sqrt(var[c] + bench.BN_EPS)
    if kernel == "bn_fwd":
        return xhat * w[c] + b[c], mean, var
    dxhat = dy * w[c]
    dx = (dxhat - dxhat.mean(axis=axes)[c] - xhat * (dxhat * xhat).mean(axis=axes)[c]) / np.sqrt(var[c] + bench.BN_EPS)
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


def _cases():
    for kernel in bench.KERNELS:
        for engine in ENGINES:
            if ":" in engine:
                if kernel == "conv_fwd":  # ladder rungs: conv forward only, float32 (what is benchmarked)
                    yield pytest.param(kernel, engine, np.float32, id=f"{kernel}-{engine}-float32")
                continue
            for dtype in (np.float32, np.float64):
                yield pytest.param(kernel, engine, dtype, id=f"{kernel}-{engine}-{np.dtype(dtype).name}")


@pytest.mark.parametrize(("kernel", "engine", "dtype"), list(_cases()))
def test_kernel_body_computes_the_reference(kernel, engine, dtype):
    wl = TINY[bench.KERNELS[kernel][0]]
    case = bench.make_case(kernel, wl, engine, dtype, seed=3)
    got = case.result()
    want = reference(kernel, case)
    assert len(got) == len(want)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if np.issubdtype(w.dtype, np.integer):
            np.testing.assert_array_equal(g, w)  # argmax: exact
        else:
            # batch norm's statistics are float64 in the contract (torch keeps x's dtype)
            assert g.dtype == dtype or (kernel == "bn_fwd" and g.shape == (wl.c,))
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def test_maxpool_backward_inputs_are_a_real_forward_argmax():
    """make_inputs feeds maxpool_bwd the argmax of the same x (first maximum wins on ties)."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = x[0, 0, 0, 1] = 5  # a tie in the first window: row-major first is (0, 1)
    assert bench._window_argmax(x, 2)[0, 0, 0, 0] == 1
    inp = bench.make_inputs("maxpool_bwd", TINY["pool"], np.float64, seed=1)
    np.testing.assert_array_equal(inp["argmax"], ref_maxpool_forward(inp["x"], 2)[1])


def test_workloads_are_the_catnet_layers():
    """The per-kernel workloads are exactly the conv and pool inputs of zoo.catnet at batch 32."""
    from fastconv import zoo
    from fastconv.layers import Conv2d, MaxPool2d

    model = zoo.catnet()
    convs, pools = [], []
    for i, layer in enumerate(model.layers):
        shape = (bench.BATCH, *_shape_before(model, i))
        if isinstance(layer, Conv2d):
            convs.append((*shape, layer.out_channels, layer.kernel_size, layer.padding))
        elif isinstance(layer, MaxPool2d):
            pools.append(shape)
    assert convs == [(w.n, w.c, w.h, w.w, w.k, (w.r, w.r), (w.padding,) * 2) for w in bench.CONV_WORKLOADS]
    assert pools == [(w.n, w.c, w.h, w.w) for w in bench.POOL_WORKLOADS]
    assert bench.kernel_flops("conv_fwd", bench.CONV_WORKLOADS[1]) == 2 * 32 * 16 * 64 * 64 * 16 * 9
    assert bench.kernel_flops("conv_bwd", bench.CONV_WORKLOADS[1]) == 2 * bench.kernel_flops(
        "conv_fwd", bench.CONV_WORKLOADS[1]
    )


def _shape_before(model, i):
    from fastconv.model import Sequential

    return (3, 64, 64) if i == 0 else Sequential(*model.layers[:i]).output_shape((3, 64, 64))


# ---- the catnet step -------------------------------------------------------------------------

STEP = {"batch": 2, "image_size": 8, "seed": 4}


def _step_params(engine, impl="kernels", dropout=False, steps=1):
    case = bench.make_catnet_step(engine, dtype=np.float64, impl=impl, dropout=dropout, **STEP)
    losses = [case.fn() for _ in range(steps)]
    return case.params(), losses


@functools.cache
def _python_reference(dropout: bool, steps: int):
    """The kernel-level step on the python backend, computed once per session (it takes seconds)."""
    return _step_params("python", "kernels", dropout=dropout, steps=steps)


STEP_ENGINES = [("kernels", b) for b in BACKENDS] + [("model", b) for b in BACKENDS] + [("torch", e) for e in COMPARE]


@pytest.mark.parametrize(("impl", "engine"), STEP_ENGINES, ids=[f"{i}-{e}" for i, e in STEP_ENGINES])
def test_catnet_step_matches_across_implementations(impl, engine):
    """Without dropout the kernel-level step, the model-API step and torch compute the same update;
    the kernel-level step on the python backend (the reference loops) is the yardstick."""
    want, want_losses = _python_reference(False, 2)
    got, losses = _step_params(engine, impl, steps=2)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-7, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-9)


@pytest.mark.parametrize("engine", BACKENDS)
def test_catnet_step_with_dropout_matches_python(engine):
    """With dropout (the benchmark default) every backend draws the same masks, so it matches python."""
    want, _ = _python_reference(True, 1)
    got, _ = _step_params(engine, dropout=True)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-7, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("impl", ["kernels", "model"])
def test_catnet_step_descends(impl):
    """Repeating the step on one batch lowers the loss: the update goes downhill."""
    _, losses = _step_params("numpy", impl, steps=6)
    assert losses[-1] < losses[0]
    assert all(math.isfinite(v) for v in losses)


def test_catnet_step_rejects_bad_arguments():
    with pytest.raises(ValueError, match="impl"):
        bench.make_catnet_step("numpy", 2, 8, impl="nope")
    with pytest.raises(ValueError, match="multiple of 8"):
        bench.catnet_params(image_size=12)


# ---- timing harness, report, CLI ----------------------------------------------------------------


def test_interleaved_medians_rotates_order_and_caps_slow_engines():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    out = bench.interleaved_medians(fns, repeats=4, min_sample_s=0.0, max_repeats={"c": 2})
    # warm-up + calibration per engine, then rounds 1..3 starting at a rotating position
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert calls[6:] == ["b", "c", "a", "a", "b", "a", "b"]  # c stops after its 2 samples
    assert {k: n for k, (_, n) in out.items()} == {"a": 4, "b": 4, "c": 2}


def test_interleaved_medians_pauses_untimed_before_every_sample(monkeypatch):
    # Every timed sample (calibration included) is preceded by one settle of that function, with
    # a re-warm unless the function is cold; the pause is outside the clock.
    events = []
    monkeypatch.setattr(bench, "settle", lambda s, fn, rewarm: events.append(("settle", s, fn, rewarm)))
    fns = {name: (lambda name=name: events.append(("call", name))) for name in ("a", "b")}
    bench.interleaved_medians(fns, repeats=3, min_sample_s=0.0, settle_s=0.05, warmup=False, cold={"b"})
    calls = [i for i, e in enumerate(events) if e[0] == "call"]
    assert len(calls) == 6
    for i in calls:
        name = events[i][1]
        assert events[i - 1] == ("settle", 0.05, fns[name], name != "b")
    monkeypatch.undo()
    out = bench.interleaved_medians({"x": lambda: None}, repeats=3, min_sample_s=0.0, settle_s=0.05, warmup=False)
    assert out["x"][0] < 0.01


def test_settle_sleeps_then_rewarms_for_rewarm_s(monkeypatch):
    slept, calls = [], []
    monkeypatch.setattr(bench.time, "sleep", slept.append)
    bench.settle(0.2, lambda: calls.append(bench.time.perf_counter()), rewarm=True)
    assert slept == [0.2] and calls[-1] - calls[0] >= 0.5 * bench.REWARM_S
    assert calls[-1] - calls[0] < bench.REWARM_S + 0.05
    calls.clear()
    bench.settle(0.2, lambda: calls.append(1), rewarm=False)
    bench.settle(0.0, lambda: calls.append(1), rewarm=True)
    assert calls == [] and slept == [0.2, 0.2]


def test_bench_config_settles_by_default():
    assert bench.BenchConfig(backends=["numpy"]).resolved().settle_s == bench.SETTLE_S > 0
    assert bench.BenchConfig(backends=["numpy"], settle_s=0.0).resolved().settle_s == 0.0


def _synthetic_report():
    wl = bench.CONV_WORKLOADS[0]
    flops = bench.kernel_flops("conv_fwd", wl)
    results = [
        {"kernel": "conv_fwd", "workload": wl.name, "label": wl.label, "engine": e, "ms": ms, "timed_batch": tb,
         "batch": 32, "scaled": tb != 32, "samples": 3, "flops": flops, "bytes": 0}
        for e, ms, tb in (("python", 40000.0, 1), ("numpy", 20.0, 32), ("numba", 5.0, 32))
    ]  # fmt: skip
    bench._derive(results, peak=100.0)
    return {
        "title": "fastconv bench", "created": "2026-01-01 00:00:00 UTC", "mode": "quick", "dtype": "float32",
        "repeats": 3, "peak_gflops": 100.0, "peak_samples_gflops": [100.0], "peak_method": "synthetic",
        "machine": {"cpu": "Test CPU", "simd": ["avx2"], "cores": 2, "threads": 2, "blas": ["openblas"],
                    "platform": "linux", "versions": {"numpy": "2"}},
        "engines": ["python", "numpy", "numba"], "rungs": [], "results": results,
        "catnet_step": [{"impl": "kernels", "engine": "numpy", "ms": 320.0, "images_per_s": 100.0, "timed_batch": 32,
                         "scaled": False, "samples": 3, "vs_numpy": 1.0}],
        "compile": {"in_process_warmup_s": {}}, "notes": [], "elapsed_s": 1.0,
    }  # fmt: skip


def test_derived_columns_and_table():
    report = _synthetic_report()
    numba = report["results"][2]
    gflops = bench.kernel_flops("conv_fwd", bench.CONV_WORKLOADS[0]) / 5e-3 / 1e9
    assert numba["gflops"] == pytest.approx(gflops)
    assert numba["pct_peak"] == pytest.approx(gflops)  # peak is 100 GFLOP/s
    assert numba["vs_python"] == pytest.approx(8000.0)
    assert numba["vs_numpy"] == pytest.approx(4.0)
    text = bench.format_report(report)
    assert "Test CPU" in text and "100.0 GFLOP/s" in text
    assert "8,000x" in text and "4.00x" in text
    assert "untimed pause" not in text  # the synthetic report predates the pause: nothing claimed
    assert "0.15 s untimed pause before each sample" in bench.format_report({**report, "settle_s": 0.15})
    assert "40000*" in text and "scaled per image" in text  # the python row says it was scaled


def test_cli_renders_saved_report_plots_and_docs(tmp_path, capsys):
    """--from-json re-renders without measuring: table, PNG charts and the generated doc sections."""
    report_path = tmp_path / "bench.json"
    bench.write_json(_synthetic_report(), report_path)
    md = tmp_path / "ladder.md"
    md.write_text(
        "# From naive loops to <!-- bench:best_gflops -->?<!-- /bench:best_gflops --> GFLOP/s\n"
        "<!-- bench:table kernel=conv_fwd -->\nold\n<!-- /bench:table -->\n"
        "numba vs numpy: <!-- bench:value kernel=conv_fwd workload=conv1 engine=numba field=vs_numpy -->"
        "?<!-- /bench:value -->\n"
        "<!-- code:kernels/python_backend.py::relu_backward -->\n"
        "<!-- /code:kernels/python_backend.py::relu_backward -->\n"
    )
    rc = main(["bench", "--from-json", str(report_path), "--plot", str(tmp_path / "img"), "--docs", str(md)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Test CPU" in out
    import matplotlib.image

    img = matplotlib.image.imread(tmp_path / "img" / "speedup_conv_fwd.png")
    assert img.shape[:2] == (500, 1000)  # figsize 10x5 in at 100 dpi
    assert (tmp_path / "img" / "peak_conv_fwd.png").is_file()
    text = md.read_text()
    gflops = bench.kernel_flops("conv_fwd", bench.CONV_WORKLOADS[0]) / 5e-3 / 1e9
    assert f"From naive loops to <!-- bench:best_gflops -->{gflops:.0f}<!-- /bench:best_gflops --> GFLOP/s" in text
    assert "old" not in text and "| **conv1 (32,3,64,64)->16 3x3p1** | python | 40000\\* |" in text
    assert "|  | numba | 5.000 |" in text
    assert "numba vs numpy: <!-- bench:value" in text and "-->4.00x<!--" in text
    assert "def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:" in text
    # idempotent: filling again changes nothing
    before = text
    bench.fill_docs(md, bench.load_json(report_path))
    assert md.read_text() == before


def test_cli_rejects_unknown_backend_and_bad_report(tmp_path, capsys):
    assert main(["bench", "--backends", "numpy,nope", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "available" in err
    assert main(["bench", "--settle", "-0.1", "--no-progress"]) == 1
    assert "--settle: expected a number of seconds >= 0, got -0.1" in capsys.readouterr().err
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["bench", "--from-json", str(bad)]) == 1
    assert "not a fastconv bench report" in capsys.readouterr().err
    bad.write_text("not json at all")
    assert main(["bench", "--from-json", str(bad)]) == 1
    assert f"{bad}: not a fastconv bench report (not JSON" in capsys.readouterr().err


def test_compare_torch_missing_is_a_note(monkeypatch):
    """Without torch, --compare torch is not an error: the report carries a clear note instead."""
    monkeypatch.setattr(bench, "torch_available", lambda: False)
    monkeypatch.setattr(bench, "KERNELS", {})  # measure nothing but the bookkeeping
    monkeypatch.setattr(bench, "QUICK_KERNELS", ())
    monkeypatch.setattr(bench, "measure_peak", lambda *a, **k: 1.0)
    monkeypatch.setattr(bench, "make_catnet_step", _tiny_step)
    report = bench.run_benchmarks(bench.BenchConfig(backends=["numpy"], compare=["torch"], repeats=1, progress=False))
    assert "torch" not in report["engines"]
    assert any("PyTorch is not installed" in n for n in report["notes"])
    assert {s["engine"] for s in report["catnet_step"]} == {"numpy"}


_real_make_catnet_step = bench.make_catnet_step


def _tiny_step(engine, batch, dtype=np.float32, impl="kernels", **_):
    return _real_make_catnet_step(engine, 2, image_size=8, dtype=dtype, impl=impl)


def test_atomic_json_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "r.json"
    bench.write_json(_synthetic_report(), path)
    bench.write_json(_synthetic_report(), path)
    assert bench.load_json(path)["peak_gflops"] == 100.0
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_thread_setting_reaches_blas():
    from threadpoolctl import threadpool_info

    before = K.get_num_threads()
    try:
        bench._set_threads(1, ["numpy"])
        assert all(d["num_threads"] == 1 for d in threadpool_info() if d["user_api"] == "blas")
    finally:
        K.set_num_threads(before)


def test_openmp_runtime_detection_sees_the_kernels_runtime():
    """import_torch's report of torch's wait policy rests on this detection: once the Cython
    kernels (built with OpenMP) have run, a runtime is mapped and PASSIVE cannot apply to torch."""
    from pathlib import Path

    from fastconv.kernels import _openmp

    if not Path("/proc/self/maps").exists() or not _openmp.openmp_enabled():
        pytest.skip("needs Linux /proc and Cython kernels built with OpenMP")
    K.set_num_threads(K.get_num_threads())  # loads the kernels' OpenMP runtime
    assert bench._openmp_runtime_loaded()


def test_report_columns_never_touch():
    """A 7-character GB/s value (naive python's 0.00866) once ran into the '-' of the %peak
    column and read as negative; the published report renders with a gap between all columns."""
    from pathlib import Path

    report = bench.load_json(Path(__file__).resolve().parents[1] / "docs" / "bench.json")
    text = bench.format_report(report)
    glued = [line for line in text.splitlines() if re.search(r"(?<=\s)-\d", line)]
    assert not glued, glued[:3]
    assert re.search(r"^fastconv\.kernels ops\s+python\s+\S+\s+0\.0\d+\s", text, re.MULTILINE)  # images/s, not 0.0


def test_the_committed_ladder_is_what_its_report_and_sources_generate(tmp_path):
    """docs/ladder.md quotes kernel code from the real sources and numbers from docs/bench.json;
    regenerating it from those must change nothing, so an edited kernel whose excerpt was not
    re-synced (fill_docs) fails here instead of teaching stale code."""
    root = Path(__file__).resolve().parents[1]
    committed = (root / "docs" / "ladder.md").read_text(encoding="utf-8")
    copy = tmp_path / "ladder.md"
    copy.write_text(committed, encoding="utf-8")
    bench.fill_docs(copy, bench.load_json(root / "docs" / "bench.json"), root=root)
    regenerated = copy.read_text(encoding="utf-8")
    if regenerated != committed:
        import difflib

        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), regenerated.splitlines(True), n=1))[:40])
        fix = "fastconv bench --from-json docs/bench.json --docs docs/ladder.md"
        pytest.fail(f"docs/ladder.md is out of date; re-render it (no measuring) with `{fix}`:\n" + diff)
