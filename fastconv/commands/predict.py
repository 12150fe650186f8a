"""``fastconv predict``: classify image files or folders with a model file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastconv.commands import positive_int

NAME = "predict"
HELP = "classify image files or folders: prints 'photo.jpg: cat 93.1%%' per image"
DESCRIPTION = (
    "Classify images with a model file (default: the bundled pretrained catnet). Each argument is an "
    "image file or a folder (searched recursively, hidden files ignored). Every image is centre-cropped "
    "to a square and resized to the model's input size. One line per image: the predicted class and "
    "its probability. Files that cannot be read are named with the reason on stderr; the exit status "
    "is non-zero only when no image could be read."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders of images")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="model file; default: the bundled fastconv/weights/catnet.npz")
    parser.add_argument("--backend", default=None, help="kernel backend; default: the fastest available")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")


def collect_files(paths: list[str]) -> list[Path]:
    """The files named, plus every non-hidden file under each folder (sorted). Missing paths and
    non-image files are kept so that they are reported with a reason."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(
                f
                for f in sorted(p.rglob("*"))
                # a broken symlink is neither file nor folder: kept, so it is reported
                if (f.is_file() or (f.is_symlink() and not f.exists()))
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        else:
            out.append(p)
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from fastconv.data import IMAGE_EXTENSIONS, DataError, load_image
    from fastconv.train import BUNDLED_MODEL, Classifier

    clf = Classifier.load(args.model or BUNDLED_MODEL, backend=args.backend)
    files = collect_files(args.paths)
    images, names, bad = [], [], 0
    for f in files:
        if not f.exists():
            what = "broken symbolic link" if f.is_symlink() else "no such file or folder"
            print(f"{f}: error: {what}", file=sys.stderr)
            bad += 1
            continue
        if f.suffix.lower() not in IMAGE_EXTENSIONS and str(f) not in args.paths:
            print(f"{f}: error: not an image file (suffix {f.suffix or '(none)'!r})", file=sys.stderr)
            bad += 1
            continue
        try:
            images.append(load_image(f, clf.image_size))
            names.append(f)
        except DataError as exc:
            print(f"{f}: error: {str(exc).removeprefix(f'{f}: ')}", file=sys.stderr)
            bad += 1
    if not images:
        where = ", ".join(args.paths)
        print(f"fastconv predict: no readable image among {len(files)} file(s) in {where}", file=sys.stderr)
        return 1
    proba = clf.predict_proba(np.stack(images), batch_size=args.batch_size)
    for name, p in zip(names, proba):
        k = int(p.argmax())
        print(f"{name}: {clf.classes[k]} {100 * p[k]:.1f}%")
    if bad:
        print(f"{len(images)} image(s) classified, {bad} file(s) could not be read", file=sys.stderr)
    return 0
