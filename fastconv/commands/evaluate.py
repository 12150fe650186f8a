"""``fastconv evaluate``: accuracy, precision, recall, F1 and confusion matrix of a model file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastconv.commands import positive_int

NAME = "evaluate"
HELP = "accuracy, precision, recall, F1 and confusion matrix of a model on catvnoncat's test split or a folder"
DESCRIPTION = (
    "Evaluate a model file written by 'fastconv train' (default: the bundled pretrained catnet). "
    "--data defaults to the catvnoncat test split (50 images; never used by training). With --data "
    "pointing at a class-folder tree, every image is evaluated ('--split all'), or only the validation "
    "part that the model's training run held out ('--split val', recomputed from the seed and "
    "validation fraction stored in the model file)."
)

SPLITS = ("auto", "test", "train", "val", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="model file; default: the bundled fastconv/weights/catnet.npz")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="catvnoncat folder or a class-folder tree; default: catvnoncat (FASTCONV_DATA, "
                        "the user cache, or a download)")
    parser.add_argument("--split", choices=SPLITS, default="auto",
                        help="which images: auto = 'test' for catvnoncat, 'all' for a folder; 'train'/'val' "
                        "re-create the training run's split from the model file")
    parser.add_argument("--backend", default=None, help="kernel backend; default: the fastest available")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per forward pass")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead")


def _check_same_training_data(model_path: object, metadata: dict, data: object) -> None:
    """--split train/val re-create the training run's split: only meaningful on the very data the
    model was trained on. Model files record a SHA-256 of the training images and labels, which
    must match; older files only the dataset and how many images the run split, so a different
    dataset (or a folder of another size) is refused and a same-size folder elsewhere gets a
    note. Otherwise it would be split anyway and its 'held-out' images may well have been
    trained on."""
    only = "--split train/val re-create its split only on the data it was trained on (use --split all for other images)"
    recorded = metadata.get("dataset") or None  # train_classifier() called without a dataset name records ""
    sizes = (metadata.get("train_size"), metadata.get("val_size"))
    trained_on_catvnoncat = recorded == "catvnoncat"
    if recorded is not None and trained_on_catvnoncat != (data.kind == "catvnoncat"):
        raise ValueError(
            f"{model_path} was trained on {recorded}, not on {data.name}: {only}"
        )
    if all(isinstance(v, int) for v in sizes) and sum(sizes) != len(data.x):
        raise ValueError(
            f"{model_path} was trained on {sum(sizes)} images of {recorded or 'its data'}, but {data.name} has "
            f"{len(data.x)}: {only}"
        )
    digest = metadata.get("data_sha256")
    if isinstance(digest, str):  # files since this was recorded: the images themselves decide
        from fastconv.data import data_digest

        if data_digest(data.x, data.y) != digest:
            raise ValueError(
                f"{model_path} was trained on other images than {data.name}'s {len(data.x)} (the file records a "
                "SHA-256 of its training images and labels; another folder, changed files, or images decoded "
                f"differently by another scikit-image version all differ): {only}"
            )
        return
    if recorded and not trained_on_catvnoncat and Path(recorded).resolve() != Path(data.name).resolve():
        # same image count, another path: a moved copy (fine) or another folder (not held out)
        print(
            f"note: {model_path} was trained on {recorded}; re-creating its split on {data.name}, which has as many "
            "images: its held-out images are only held out if this is the same folder",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    from fastconv.data import is_catvnoncat_path, require_split_file, same_task, train_val_split
    from fastconv.metrics import classification_report
    from fastconv.train import BUNDLED_MODEL, Classifier, load_dataset

    reads = "test" if args.split in ("auto", "test") else "train"
    require_split_file(args.data, reads, "pass the folder holding both files, and --split to choose the images")
    model_path = args.model or BUNDLED_MODEL
    clf = Classifier.load(model_path, backend=args.backend)
    # Folder images are resized to the model's input size; catvnoncat is always 64x64.
    data = load_dataset(args.data, None if is_catvnoncat_path(args.data) else clf.image_size)
    for path, reason in data.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not same_task(data.classes, clf.classes):
        raise ValueError(
            f"the data's classes {data.classes} differ from the model's {list(clf.classes)} ({model_path})"
        )
    if data.kind == "catvnoncat" and clf.image_size != 64:
        where = "the default data, catvnoncat," if args.data is None else f"{args.data} (catvnoncat)"
        raise ValueError(
            f"{model_path} takes {clf.image_size}x{clf.image_size} images, but {where} holds 64x64 ones: "
            "pass --data FOLDER (one subfolder per class; images are resized to the model's size)"
        )
    if list(data.classes) != list(clf.classes):
        print(f"note: the data's {data.classes[0]!r} is the model's {clf.classes[0]!r} (not a cat)", file=sys.stderr)
    split = args.split
    if split == "auto":
        split = "test" if data.kind == "catvnoncat" else "all"
    if split == "test":
        if data.x_test is None:
            raise ValueError("--split test needs catvnoncat; for a folder use --split all or --split val")
        x, y = data.x_test, data.y_test
    elif split == "all":
        x, y = data.x, data.y
    else:
        cfg = clf.metadata.get("config")
        if not isinstance(cfg, dict):
            raise ValueError(
                f"{model_path} does not record how its validation split was made (a model saved by fit(), which "
                "receives its split ready-made; 'fastconv train' records it); evaluate images it never saw with "
                "--split all"
            )
        frac, seed = float(cfg.get("val_fraction", 0.0)), int(cfg.get("seed", 0))
        if split == "val" and clf.metadata.get("refit"):
            raise ValueError(
                f"{model_path} was refit on all images after its validation run, so its validation split is not "
                "held out; evaluate model_val.npz (the validation run's checkpoint) instead"
            )
        if frac <= 0:
            raise ValueError(f"{model_path} was trained without a validation split; use --split all or test")
        _check_same_training_data(model_path, clf.metadata, data)
        x_tr, y_tr, x_va, y_va = train_val_split(data.x, data.y, val_fraction=frac, seed=seed)
        x, y = (x_va, y_va) if split == "val" else (x_tr, y_tr)
    if split != "all":
        where = f"{data.name} {split} split"
    elif data.kind == "catvnoncat":  # 'all' of catvnoncat is its training file, not the test split
        where = f"{data.name} training file (train + val)"
    else:
        where = data.name
    pred = clf.predict(x, batch_size=args.batch_size)
    report = classification_report(y, pred, clf.classes)
    if args.json:
        doc = {"model": str(model_path), "data": where, "images": len(y), "tta": clf.tta, **report.to_dict()}
        print(json.dumps(doc, indent=2))
        return 0
    print(f"model: {model_path} (image size {clf.image_size}, test-time flip {'on' if clf.tta else 'off'})")
    print(f"data: {where}, {len(y)} images")
    print(report.format())
    return 0
