"""``fastconv demo``: the bundled catnet on scikit-image's sample photos, then a quick backend race."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fastconv.commands import positive_int

NAME = "demo"
HELP = "classify scikit-image's sample photos with the bundled catnet and race the backends on one conv layer"
DESCRIPTION = (
    "No download and no data needed. Loads the pretrained catnet bundled with fastconv "
    "(fastconv/weights/catnet.npz, trained on catvnoncat by the command in docs/training.md), "
    "classifies scikit-image's sample photos (chelsea is a cat; the others are not) and prints each "
    "prediction with its probability and whether it matches. These photos are not in catvnoncat's "
    "style, so a mistake here is possible and is shown as such. Then it times catnet's first conv "
    "layer (3->16 channels, 64x64, 3x3, batch 32) forward on every available backend: median ms and "
    "GFLOP/s; the naive python backend runs one image and is scaled per image (and says so)."
)

#: (skimage.data file, expected label): colour photos shipped inside scikit-image (no download).
SAMPLES: tuple[tuple[str, str], ...] = (
    ("chelsea.png", "cat"),
    ("coffee.png", "non-cat"),
    ("astronaut.png", "non-cat"),
    ("rocket.jpg", "non-cat"),
    ("motorcycle_left.png", "non-cat"),
    ("hubble_deep_field.jpg", "non-cat"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="model file; default: the bundled fastconv/weights/catnet.npz")
    parser.add_argument("--backend", default=None, help="backend for the classification; default: the fastest")
    parser.add_argument("--no-bench", action="store_true", help="skip the backend comparison")
    parser.add_argument("--no-python", action="store_true",
                        help="leave the (slow, ~1-3 s) naive python backend out of the comparison")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per backend (median reported)")


def sample_path(name: str) -> Path:
    """Path of a sample image bundled inside scikit-image (skimage/data/<name>)."""
    import skimage.data

    return Path(skimage.data.__file__).resolve().parent / name


def classify_samples(clf) -> list[tuple[str, str, str, float]]:
    """[(sample name, expected, predicted, probability of the prediction)] for :data:`SAMPLES`."""
    import numpy as np

    from fastconv.data import load_image

    names, expected, images = [], [], []
    for fname, label in SAMPLES:
        path = sample_path(fname)
        if not path.is_file():
            continue  # an older scikit-image without this file: nothing is downloaded
        images.append(load_image(path, clf.image_size))
        names.append(Path(fname).stem)
        expected.append(label)
    if not images:
        raise FileNotFoundError("no scikit-image sample photo found (is scikit-image installed?)")
    proba = clf.predict_proba(np.stack(images))
    out = []
    for name, exp, p in zip(names, expected, proba):
        k = int(p.argmax())
        out.append((name, exp, clf.classes[k], float(p[k])))
    return out


def backend_race(repeats: int = 5, include_python: bool = True) -> list[tuple[str, float, float, str]]:
    """[(backend, median ms for batch 32, GFLOP/s, note)] for catnet's conv1 forward, fastest first.

    conv1 is the catnet layer on which the naive python backend is quickest (one image in ~1-3 s).
    """
    import fastconv
    from fastconv import bench

    wl = next(w for w in bench.CONV_WORKLOADS if w.name == "conv1")
    flops = bench.kernel_flops("conv_fwd", wl)
    backends = [b for b in fastconv.available_backends() if b != "python"]
    fns = {b: bench.make_case("conv_fwd", wl, b).fn for b in backends}
    # the pause keeps one engine's idle (spin-waiting) threads from slowing the next; see bench.SETTLE_S
    timed = bench.interleaved_medians(fns, repeats=repeats, min_sample_s=0.05, settle_s=bench.SETTLE_S)
    rows = [(b, 1e3 * t, flops / t / 1e9, "") for b, (t, _) in timed.items()]
    if include_python and "python" in fastconv.available_backends():
        one = wl.with_batch(1)
        fn = bench.make_case("conv_fwd", one, "python").fn
        t0 = time.perf_counter()
        fn()
        t = (time.perf_counter() - t0) * wl.n
        rows.append(("python", 1e3 * t, flops / t / 1e9, f"1 image timed once, x{wl.n} (scaled per image)"))
    return sorted(rows, key=lambda r: r[1])


def run(args: argparse.Namespace) -> int:
    from fastconv.data import is_cat_vs_rest
    from fastconv.train import BUNDLED_MODEL, Classifier

    t0 = time.perf_counter()
    model_path = args.model or BUNDLED_MODEL
    clf = Classifier.load(model_path, backend=args.backend)
    meta = clf.metadata
    print(f"fastconv demo: {meta.get('architecture') or 'model'} from {model_path}")
    trained = meta.get("dataset") or "?"
    print(f"  trained on {trained}, epoch {meta.get('epoch', '?')}, classes {list(clf.classes)}, "
          f"input {clf.image_size}x{clf.image_size}, test-time flip {'on' if clf.tta else 'off'}")
    print("\nscikit-image sample photos (not catvnoncat-style pictures, so mistakes are possible):")
    results = classify_samples(clf)
    width = max(len(r[0]) for r in results)
    right = 0
    for name, exp, pred, p in results:
        if is_cat_vs_rest(clf.classes):  # any binary cat model: its negative class may be called 'not-cat'
            ok = (pred == clf.classes[1]) == (exp == "cat")
            exp = clf.classes[1] if exp == "cat" else clf.classes[0]
        else:
            ok = pred == exp
        right += ok
        print(f"  {name:<{width}}  {pred:>8} {100 * p:5.1f}%   expected {exp:<8} {'ok' if ok else 'WRONG'}")
    print(f"  {right}/{len(results)} as expected")

    if not args.no_bench:
        import fastconv

        print(f"\nconv layer race: catnet conv1 forward (32x3x64x64, 3x3 kernels, 16 channels), "
              f"{fastconv.get_num_threads()} threads, median of {args.repeats}:")
        rows = backend_race(args.repeats, include_python=not args.no_python)
        naive = next((ms for name, ms, _, _ in rows if name == "python"), None)
        for name, ms, gflops, note in rows:
            speedup = f"{naive / ms:8.0f}x python" if naive and name != "python" else " " * 15
            print(f"  {name:<8} {ms:10.2f} ms  {gflops:8.3g} GFLOP/s  {speedup}  {note}".rstrip())
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0
