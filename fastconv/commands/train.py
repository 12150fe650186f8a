"""``fastconv train``: train catnet (or, with --arch resnet, a ResNet-8) on catvnoncat (default) or on
a class-folder tree."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fastconv.commands import positive_int, thread_count

NAME = "train"
HELP = "train catnet (or a ResNet) on catvnoncat (default) or on an image folder; writes model.npz, history and curves"
DESCRIPTION = (
    "Train catnet (DESIGN.md, with BatchNorm after each conv) with the recipe of docs/training.md: AdamW, "
    "cosine learning rate with warm-up, flip/shift/rotation/zoom augmentation, dropout, a stratified "
    "validation split evaluated every epoch "
    "(the checkpoint with the best validation accuracy is kept as model_val.npz), then a refit of a fresh "
    "network on all training images for as many epochs as the validation run trained (model.npz), "
    "test-time flip averaging. The test "
    "split is never used here: run 'fastconv evaluate --model OUT/model.npz' afterwards. "
    "With --data pointing at a folder with one subfolder per class (e.g. cat/ and not-cat/) the same "
    "recipe trains on those images; datasets larger than 2,000 images default to fewer epochs and no refit. "
    "--arch resnet trains a ResNet-8 of residual blocks (fastconv.zoo.resnet) with the same recipe instead."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fastconv.train import ARCHITECTURES, LARGE_DATASET, LARGE_DATASET_EPOCHS, LR_FINETUNE, LR_SCRATCH, TrainConfig

    d = TrainConfig()
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="catvnoncat folder (or one of its .h5 files), or a class-folder tree of images; "
        "default: catvnoncat found via FASTCONV_DATA or the user cache, downloaded if absent",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        metavar="S",
        help="resize folder images to SxS (catvnoncat is 64x64); default 64",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder for model.npz, history.json, history.csv, curves.png; default runs/catnet "
        "(runs/resnet with --arch resnet)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"passes over the training split; default {d.epochs}, or {LARGE_DATASET_EPOCHS} "
        f"for datasets of more than {LARGE_DATASET} images",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seeds initialisation, dropout, shuffling, augmentation and the validation split",
    )
    parser.add_argument(
        "--backend", default=None, help="kernel backend (see 'fastconv info'); default: the fastest available"
    )
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="threads for kernels and BLAS; default: all cores")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="images per mini-batch")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate (after warm-up); default {LR_FINETUNE:g} when the conv layers start "
                        f"from a pretrained backbone (--init), {LR_SCRATCH:g} from random weights%(default).0s")
    parser.add_argument("--optimizer", choices=("adamw", "adam", "sgd"), default=d.optimizer,
                        help="adamw = decoupled weight decay; sgd = Nesterov momentum 0.9")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay,
                        help="weight decay (biases and BatchNorm parameters exempt)")
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=d.warmup_epochs,
        help="linear warm-up epochs before the cosine decay (capped at max(1, epochs // 5) for short runs; 0 = none)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="stratified fraction of the training images held out for validation (0 = none)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after this many epochs without a better validation score (0 = never)",
    )
    parser.add_argument("--dropout", type=float, default=d.dropout, help="dropout probability before the linear layer")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=d.arch,
                        help="the network: 'catnet' (DESIGN.md's, the default) or 'resnet' (fastconv.zoo.resnet: a "
                        "ResNet-8 of residual blocks, stage widths --width x 1, 2, 4, always BatchNorm, global average "
                        "pooling; no bundled backbone, so it starts from random weights unless --init names a "
                        "resnet model file)")
    parser.add_argument("--width", type=positive_int, default=d.width,
                        help="channels of catnet's first conv (16 in DESIGN.md), or resnet's first stage")
    parser.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=d.batchnorm,
                        help="BatchNorm2d after every conv (DESIGN.md's catnet has none; see docs/training.md)")
    parser.add_argument("--max-shift", type=int, default=d.max_shift, help="random shift augmentation, pixels")
    parser.add_argument("--max-rotation", type=float, default=d.max_rotation, help="random rotation, degrees")
    parser.add_argument("--scale", type=float, default=d.scale, help="random zoom in [1-scale, 1+scale]")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    parser.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                        help="label smoothing of the targets (0 = none)")
    parser.add_argument("--pos-weight", type=_pos_weight, default=d.pos_weight, metavar="W|balanced",
                        help="binary models: weight of the positive class (cat) in the training loss; 'balanced' = "
                        "negatives / positives of the training images, so both classes weigh the same; off by default "
                        "(every image weighs 1)")
    parser.add_argument(
        "--average-epochs", type=int, default=d.average_epochs, metavar="N",
        help="ship the uniform average of the weights over every step of the last N epochs, BatchNorm statistics "
        "recomputed on the training images (stochastic weight averaging; needs --patience 0); 0 = off: the "
        "best epoch's weights, or the refit's last epoch with --refit (docs/training.md has what it did in "
        "cross-validation)",
    )
    parser.add_argument(
        "--no-tta", action="store_true", help="no test-time flip averaging (stored in the model file; default on)"
    )
    parser.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                        help="after the validation run, train a fresh model on all images (validation included) "
                        "for as many epochs as the validation run trained (fewer if --patience stopped it) "
                        "and ship that as model.npz (the validation run's best "
                        f"checkpoint is kept as model_val.npz); default: on, off for datasets of more than "
                        f"{LARGE_DATASET} images")
    parser.add_argument(
        "--init",
        default=d.init,
        metavar="FROM",
        help="where the conv layers start: 'pretrained' = the bundled catnet backbone trained on the 10,000 "
        "CIFAR-10 cat/not-cat images with their ten CIFAR-10 class labels "
        "(fastconv/weights/catnet_cifar_backbone.npz; needs --width 16 and BatchNorm), "
        "'none' = random initialisation, or a model file whose layers before Flatten match; the classifier "
        "head always starts fresh; 'auto' = pretrained for catvnoncat at --width 16 with BatchNorm, none otherwise "
        "(other widths, --no-batchnorm, --arch resnet, image folders)",
    )
    parser.add_argument(
        "--cv", type=int, default=0, metavar="K",
        help="instead of training a model: stratified K-fold cross-validation of this recipe (K from 2 to 10) "
        "on the training images; every image is predicted once per repetition by the last-epoch model of "
        "the fold that held it out; prints pooled accuracy, loss, precision, recall, F1 and the confusion "
        "matrix and writes them, with every held-out logit, to OUT/cv.json (0 = off)",
    )
    parser.add_argument("--cv-repeats", type=int, default=1, metavar="R",
                        help="repetitions of --cv with fresh folds (repetition r uses seed --seed + r)")
    parser.add_argument("--compare", default=None, metavar="CV_JSON",
                        help="with --cv: pair every held-out prediction with the same image's in another run's "
                        "cv.json (same data, --seed, --cv and --cv-repeats: identical folds) and print how many "
                        "only each got right and the exact McNemar p-value; default: no comparison")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")


def run(args: argparse.Namespace) -> int:
    import fastconv
    from fastconv.data import require_split_file
    from fastconv.train import (
        LARGE_DATASET,
        LARGE_DATASET_EPOCHS,
        TrainConfig,
        TrainingDiverged,
        load_dataset,
        resolve_init,
        resolve_lr,
        train_classifier,
    )

    if args.threads is not None:
        fastconv.set_num_threads(args.threads)
    backend = args.backend or fastconv.get_default_backend()
    if backend not in fastconv.available_backends():
        raise ValueError(f"--backend {backend}: not available here (available: {fastconv.available_backends()})")

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    require_split_file(args.data, "train", "train never reads the test split; pass the folder holding both files")
    if args.out is None:
        args.out = f"runs/{args.arch}"
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: expected a folder (created if missing), got an existing file")
    other = _read_compare(args) if args.compare else None  # fail before minutes of training, not after
    t0 = time.perf_counter()
    data = load_dataset(args.data, args.image_size)
    for path, reason in data.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    n = len(data.y)
    counts = ", ".join(f"{c} {int((data.y == i).sum())}" for i, c in enumerate(data.classes))
    say(
        f"data: {data.name}: {n} images {data.x.shape[2]}x{data.x.shape[3]} ({counts}), "
        f"loaded in {time.perf_counter() - t0:.1f} s"
    )

    large = n > LARGE_DATASET
    epochs = args.epochs if args.epochs is not None else (LARGE_DATASET_EPOCHS if large else None)
    refit = args.refit if args.refit is not None else not large
    config = TrainConfig(
        **({"epochs": epochs} if epochs is not None else {}),
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        val_fraction=args.val_fraction,
        patience=args.patience,
        seed=args.seed,
        hflip=not args.no_flip,
        max_shift=args.max_shift,
        max_rotation=args.max_rotation,
        scale=args.scale,
        dropout=args.dropout,
        width=args.width,
        batchnorm=args.batchnorm,
        label_smoothing=args.label_smoothing,
        pos_weight=args.pos_weight,
        tta=not args.no_tta,
        refit=refit,
        init=args.init,
        backend=backend,
        average_epochs=args.average_epochs,
        arch=args.arch,
    )
    # fails early on a missing file
    init = resolve_init(config.init, data.name, width=config.width, batchnorm=config.batchnorm, arch=config.arch)
    config.lr = resolve_lr(config.lr, init)
    config.warmup_epochs = min(config.warmup_epochs, max(1, config.epochs // 5)) if config.warmup_epochs else 0
    say(
        f"training {config.arch}: {config.epochs} epoch{'s' if config.epochs != 1 else ''}, batch {config.batch_size}, "
        f"{config.optimizer} lr {config.lr:g}, "
        f"backend {backend}, {fastconv.get_num_threads()} threads, seed {config.seed}, "
        f"conv layers from {Path(init).name if init else 'random initialisation'} -> {args.out}"
    )
    out = Path(args.out)
    if args.cv:
        return _cross_validate(args, data, config, out, say, other)
    try:
        _, result = train_classifier(
            data.x,
            data.y,
            data.classes,
            config,
            out_dir=out,
            dataset=data.name,
            progress=False if args.quiet else None,
            log=None if args.quiet else _print_now,
        )
    except TrainingDiverged as exc:
        print(f"fastconv train: {exc}", file=sys.stderr)
        return 1
    best = result.history[result.best_epoch - 1] if result.best_epoch else None
    if result.message and result.stopped != "early_stopping":  # fit logged that when it happened
        say(result.message)
    if result.averaged is not None:
        best = result.averaged  # the model written is the average, not an epoch
        line = (f"done in {result.seconds:.1f} s: weight average of epochs {best['first_epoch']}-"
                f"{best['last_epoch']}")
    else:
        line = f"done in {result.seconds:.1f} s: best epoch {result.best_epoch}"
    if best is not None and config.val_fraction > 0:
        line += f", val_accuracy {best['val_accuracy']:.3f}, val_loss {best['val_loss']:.4f}"
        last = result.history[-1]
        if result.averaged is None and last is not best:
            # the best of many epochs on a small validation set flatters; the last epoch is what a
            # refit (which ships its last epoch) should be compared with
            line += (f" (the best of {len(result.history)} epochs; last epoch: val_accuracy "
                     f"{last['val_accuracy']:.3f}, val_loss {last['val_loss']:.4f})")
    written = ["model.npz", "history.json", "history.csv", "curves.png"]
    if config.refit and config.val_fraction > 0:
        ran = len(result.history)  # the refit trains as many epochs as the validation run did
        epochs = f"{ran} epoch{'s' if ran != 1 else ''}"
        line += f"; then refit on all {n} images for {epochs} -> model.npz"
        written += ["model_val.npz", "history_refit.json", "history_refit.csv"]
    print(line)
    print("wrote " + ", ".join(str(out / f) for f in written))
    print(f"next: {_evaluate_hint(out, data, config)}")
    return 0


def _pos_weight(text: str) -> float | str:
    """argparse ``type=`` for --pos-weight: 'balanced' or a positive number (train.check_pos_weight)."""
    from fastconv.train import check_pos_weight

    try:
        return check_pos_weight(text if text == "balanced" else float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'balanced' or a positive number, got {text!r}") from None


def _print_now(line: str) -> None:
    # flushed: per-epoch / per-fold lines must show up as they happen when stdout is a file or pipe
    print(line, flush=True)


def _read_compare(args: argparse.Namespace) -> dict:
    import json

    if not args.cv:
        raise ValueError("--compare needs --cv: it pairs two cross-validations' held-out predictions")
    try:
        other = json.loads(Path(args.compare).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--compare {args.compare}: cannot read it as a cv.json ({exc})") from None
    if not isinstance(other, dict) or "predictions" not in other:
        raise ValueError(f"--compare {args.compare}: not a cv.json written by 'fastconv train --cv'")
    theirs = (other.get("folds"), (other.get("config") or {}).get("seed"))
    if theirs != (args.cv, args.seed):
        # still a valid paired test (each image's predictions), but not between models trained on
        # the same other images, which is what makes it sensitive
        print(
            f"note: --compare {args.compare} used {theirs[0]} folds and seed {theirs[1]}, this run {args.cv} and "
            f"{args.seed}: predictions pair up by image, but their folds differ (a less sensitive comparison)",
            file=sys.stderr,
        )
    return other


def _cross_validate(args: argparse.Namespace, data, config, out: Path, say, other: dict | None) -> int:
    """``fastconv train --cv K``: pooled held-out scores, printed and written to OUT/cv.json."""
    import json

    from fastconv._io import atomic_write_text
    from fastconv.metrics import format_confusion
    from fastconv.train import compare_cv, cross_validate

    say(f"cross-validation: {args.cv} folds x {args.cv_repeats} repetition(s) of {config.epochs} epochs each")
    res = cross_validate(
        data.x, data.y, data.classes, config, folds=args.cv, repeats=args.cv_repeats, dataset=data.name,
        progress=False if args.quiet else None, log=None if args.quiet else _print_now,
    )  # fmt: skip
    rep = res.report()
    which = f"of {res.classes[1]}" if rep.average == "binary" else "macro"
    print(f"{len(res.y)} held-out predictions ({args.cv} folds x {args.cv_repeats}), last-epoch models, "
          f"{sum(res.fold_seconds):.0f} s of training")  # fmt: skip
    print(f"accuracy: {rep.accuracy:.3f}")
    print(f"loss: {res.loss():.4f}")
    print(f"precision {which}: {rep.precision:.3f}  recall: {rep.recall:.3f}  F1: {rep.f1:.3f}")
    if args.cv_repeats > 1:
        print("accuracy per repetition: " + ", ".join(f"{a:.3f}" for a in res.repeat_accuracies()))
    print(format_confusion(rep.confusion, res.classes))
    doc = res.to_dict()
    atomic_write_text(out / "cv.json", json.dumps(doc, indent=1) + "\n")  # kept even if --compare fails
    if other is not None:
        c = compare_cv(res, other, name=args.compare)
        print(f"paired with {args.compare} ({c['n']} predictions): accuracy {c['accuracy_difference']:+.3f}; "
              f"right only here {c['ours_only']}, only there {c['theirs_only']}; "
              f"exact McNemar p = {c['p_value']:.3g}")  # fmt: skip
        doc["compare"] = {"with": str(args.compare), **c}
        atomic_write_text(out / "cv.json", json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'cv.json'}")
    return 0


def _evaluate_hint(out: Path, data, config) -> str:
    """A `fastconv evaluate` command that works on what this run wrote: catvnoncat's test split for
    catvnoncat; for a folder, the held-out validation images, which after a refit only
    model_val.npz has not trained on (evaluate refuses model.npz's validation split then)."""
    from shlex import quote

    if data.kind != "folder":
        return f"fastconv evaluate --model {quote(str(out / 'model.npz'))}"
    if config.val_fraction <= 0:
        return f"fastconv evaluate --model {quote(str(out / 'model.npz'))} --data FOLDER_OF_NEW_IMAGES"
    model = "model_val.npz" if config.refit else "model.npz"
    return f"fastconv evaluate --model {quote(str(out / model))} --data {quote(str(data.name))} --split val"
