"""Training loop and inference for image classifiers built from :mod:`fastconv` layers.

* :class:`TrainConfig` holds every training hyperparameter with the defaults that
  ``fastconv train`` uses (how they were chosen: ``docs/training.md``).
* :func:`fit` trains a model on preloaded float32 images (N, C, H, W) in [0, 1]: seeded
  mini-batches, augmentation per batch, normalisation, AdamW (or SGD/Adam), a cosine learning
  rate with warm-up, validation every epoch, the best checkpoint saved atomically, early stopping,
  history as JSON and CSV, curves as PNG, and a clean stop on a non-finite loss.
* :func:`train_classifier` is what ``fastconv train`` runs: split, fit normaliser, build the
  network (catnet or a ResNet), :func:`fit`.
* :class:`Classifier` loads a model file written here (weights + normalisation + class names +
  image size + test-time-augmentation flag) and predicts probabilities.

Reproducibility: in :func:`train_classifier` (``fastconv train``) one ``seed`` drives the model
initialisation, dropout masks, shuffling, augmentation and the validation split, so the same
seed, data, backend and thread count give the same history. :func:`fit` on a model of your own
seeds shuffling, augmentation and any Dropout built without a seed; the initial weights are the
model's (layers take ``rng=``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from . import metrics
from ._io import atomic_write_bytes

__all__ = [
    "Classifier",
    "FitResult",
    "TrainConfig",
    "TrainingDiverged",
    "fit",
    "predict_logits",
    "train_classifier",
]

#: the pretrained catnet shipped with the package (see docs/training.md for the command that made it)
BUNDLED_MODEL = Path(__file__).resolve().parent / "weights" / "catnet.npz"
#: catnet (BatchNorm, width 16) pretrained on the 10,000 CIFAR-10 cat / not-cat images upsampled to
#: 64x64, labelled with their ten CIFAR-10 classes (ten logits: richer features than cat/not-cat
#: alone, chosen on validation); ``TrainConfig.init`` copies its feature layers (docs/training.md
#: has the command that made it)
PRETRAINED_BACKBONE = Path(__file__).resolve().parent / "weights" / "catnet_cifar_backbone.npz"

#: peak learning rates when ``TrainConfig.lr`` is None: from random weights, and when fine-tuning a
#: pretrained backbone (a smaller step keeps what it learnt; chosen on validation, docs/training.md)
LR_SCRATCH = 2e-3
LR_FINETUNE = 5e-4

#: the networks ``TrainConfig.arch`` (``fastconv train --arch``) names: builders in fastconv.zoo
ARCHITECTURES = ("catnet", "resnet")

MODEL_FILE = "model.npz"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"

#: per-epoch history columns, in CSV order
#: datasets with more images than this train for LARGE_DATASET_EPOCHS, without refit, by default (``fastconv train``)
LARGE_DATASET = 2000
LARGE_DATASET_EPOCHS = 10

HISTORY_FIELDS: tuple[str, ...] = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "seconds",
)


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (the defaults are those of ``fastconv train``).

    Epochs count passes over the training split. ``warmup_epochs`` of linear warm-up precede a
    cosine decay to ``min_lr`` at the last epoch (a run of ``warmup_epochs`` or fewer epochs is all
    warm-up: it ends at the peak rate). ``optimizer``: ``"adamw"``, ``"adam"`` or ``"sgd"`` (always
    with Nesterov momentum ``momentum``); weight decay skips biases and BatchNorm. ``patience``
    epochs without a better validation score stop the run early (0 = never). ``monitor``:
    ``"val_accuracy"`` (ties broken by the lower validation loss) or ``"val_loss"``. ``tta``:
    average the predictions on the image and its horizontal mirror at evaluation time (stored in the
    model file). ``init``: where the feature layers start from — ``None`` (random, He
    initialisation), ``"pretrained"`` (the bundled CIFAR-10 backbone), a model file path, or
    ``"auto"``: pretrained for catvnoncat, random for any other dataset (resolved by
    :func:`train_classifier`). ``pos_weight`` (binary models): weight of the positive class in the
    training loss (validation loss and metrics stay unweighted); ``"balanced"`` = negatives /
    positives of the labels :func:`fit` trains on; None = 1. ``average_epochs``: 0 = off; N > 0 =
    the model :func:`fit` returns and saves is the uniform average of the weights after every
    optimizer step of the last N epochs, its BatchNorm statistics recomputed on the training images
    (stochastic weight averaging, Izmailov et al. 2018); needs ``patience`` 0. ``arch``: the
    network, ``"catnet"`` (DESIGN.md's, ``width`` channels in its first conv, BatchNorm when
    ``batchnorm``) or ``"resnet"`` (:func:`fastconv.zoo.resnet`, a ResNet-8 with stage widths
    ``width`` x (1, 2, 4); no bundled backbone, so ``init`` "auto" means random for it); both
    put ``dropout`` before their linear layer.
    """

    epochs: int = 60
    batch_size: int = 32
    lr: float | None = None  # None: LR_SCRATCH, or LR_FINETUNE when the conv layers start from a backbone
    optimizer: str = "adamw"  # adamw | adam | sgd (Nesterov)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    min_lr: float = 0.0
    val_fraction: float = 0.2
    patience: int = 0
    monitor: str = "val_accuracy"
    seed: int = 0
    hflip: bool = True
    max_shift: int = 4
    max_rotation: float = 10.0  # degrees
    scale: float = 0.1  # random zoom in [1 - scale, 1 + scale]
    dropout: float = 0.5
    width: int = 16
    batchnorm: bool = True
    label_smoothing: float = 0.0
    pos_weight: float | str | None = None  # binary only: weight of the positive class in BCE; "balanced"
    tta: bool = True
    refit: bool = True
    init: str | None = "auto"
    backend: str | None = None
    average_epochs: int = 0
    arch: str = "catnet"  # catnet | resnet (zoo.resnet: residual blocks, always BatchNorm)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in ("warmup_epochs", "patience", "max_shift", "seed", "width", "average_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if self.average_epochs > self.epochs:
            raise ValueError(f"average_epochs: expected at most epochs ({self.epochs}), got {self.average_epochs}")
        if self.average_epochs and self.patience:
            raise ValueError(
                f"average_epochs {self.average_epochs} needs the whole schedule: set patience to 0 "
                f"(got {self.patience})"
            )
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a number in [0, 1), got {self.val_fraction!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.scale < 1.0 or not self.max_rotation >= 0:
            raise ValueError(
                f"scale must be in [0, 1) and max_rotation >= 0, got {self.scale!r}, {self.max_rotation!r}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1), got {self.label_smoothing!r}")
        check_pos_weight(self.pos_weight)
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise ValueError(f"optimizer: expected 'adamw', 'adam' or 'sgd', got {self.optimizer!r}")
        if self.init is not None and not isinstance(self.init, (str, os.PathLike)):
            raise ValueError(f"init: expected 'auto', 'pretrained', a model file path or None, got {self.init!r}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch: expected one of {list(ARCHITECTURES)}, got {self.arch!r}")
        if self.arch == "resnet" and not self.batchnorm:
            raise ValueError("arch 'resnet' always has BatchNorm (its blocks need it): --no-batchnorm "
                             "(batchnorm=False) applies to catnet only")
        if self.monitor not in ("val_accuracy", "val_loss"):
            raise ValueError(f"monitor: expected 'val_accuracy' or 'val_loss', got {self.monitor!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; ``result`` holds the history up to that point.

    The best checkpoint saved before the divergence (if any) is left untouched.
    """

    def __init__(self, message: str, result: FitResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class FitResult:
    """What :func:`fit` returns. ``history``: one dict per finished epoch (``HISTORY_FIELDS``)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0 = no checkpoint
    best_score: float = float("nan")
    stopped: str = "completed"  # completed | early_stopping | diverged
    message: str = ""
    seconds: float = 0.0
    checkpoint: Path | None = None
    #: with ``config.average_epochs``: first and last epoch averaged, optimizer steps averaged, and
    #: the averaged model's validation loss / accuracy / F1 (NaN without a validation split)
    averaged: dict | None = None


# ---------------------------------------------------------------------------------------------
# small helpers


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Split by sign so that exp never overflows.
    out = np.empty_like(z, dtype=np.float64)
    z = z.astype(np.float64)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logits_to_proba(logits: np.ndarray) -> np.ndarray:
    """Class probabilities float64 (N, C) from logits (N, 1) (binary: [1 - p, p]) or (N, C)."""
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (N, outputs), got {logits.shape}")
    if logits.shape[1] == 1:
        p = _sigmoid(logits[:, 0])
        return np.stack([1.0 - p, p], axis=1)
    return _softmax(logits)


def predict_logits(model, x: np.ndarray, batch_size: int = 128, tta: bool = False) -> np.ndarray:
    """Logits of ``model`` (a :class:`~fastconv.model.Sequential`) in eval mode for normalised
    inputs x (N, C, H, W), in batches.

    With ``tta`` the result averages the logits of each image and its horizontal mirror.
    Returns float (N, outputs). Runs inside ``model.evaluating()``: the train/eval mode and what
    a pending forward kept for backward are as before afterwards.
    """
    with model.evaluating():
        outs = []
        for i in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[i : i + batch_size])
            out = np.asarray(model(xb), dtype=np.float64)
            if tta:
                out = 0.5 * (out + np.asarray(model(np.ascontiguousarray(xb[..., ::-1])), dtype=np.float64))
            outs.append(out)
    if not outs:
        return np.zeros((0, *model.output_shape(x.shape[1:])), dtype=np.float64)
    return np.concatenate(outs)


def _num_outputs(model, sample: np.ndarray) -> int:
    """Logits per image of ``model``: the width of its output for ``sample``, a batch of one model
    input (run in eval mode inside ``model.evaluating()``, so nothing about the model changes).
    One for a binary (sigmoid) model, one per class otherwise. A real forward, not shape
    arithmetic: any layer may come last, and a custom layer need not describe its output shape."""
    with model.evaluating():
        out = np.asarray(model(np.ascontiguousarray(sample)))
    if out.ndim != 2 or out.shape[1] < 1:
        raise ValueError(
            f"the model's output for a batch of one input of shape {tuple(sample.shape[1:])} has shape {out.shape}; "
            "training and prediction need one vector of logits per image (N, outputs): end the model with Flatten "
            "(and Linear)"
        )
    return int(out.shape[1])


def _check_labels(name: str, y: np.ndarray, n: int, num_outputs: int) -> np.ndarray:
    """y as int64 (n,), every label a class index the model's outputs can score."""
    y = np.asarray(y)
    classes = max(num_outputs, 2)
    if y.shape != (n,) or not (y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0))):
        raise ValueError(
            f"{name}: expected {n} integer class indices (one per image), got {y.dtype} of shape {y.shape}"
        )
    if n and not (0 <= y.min() and y.max() < classes):
        raise ValueError(
            f"{name}: class indices must lie in [0, {classes}) for a model with {num_outputs} output(s), "
            f"got {int(y.min())}..{int(y.max())}"
        )
    return y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# training


def _make_optimizer(model, config: TrainConfig):
    from . import optim

    params = model.parameters()
    lr = resolve_lr(config.lr, None)  # fit() alone knows of no backbone: train_classifier resolves it
    if config.optimizer == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    return optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay)


def _make_loss(num_outputs: int, label_smoothing: float = 0.0, pos_weight: float | None = None):
    """Binary cross-entropy for one logit (smoothing is applied to its targets; ``pos_weight``
    weighs the positive class), softmax CE otherwise."""
    from . import losses

    if num_outputs == 1:
        return losses.BCEWithLogitsLoss(pos_weight=pos_weight)
    if pos_weight is not None:
        raise ValueError(f"pos_weight: applies to a binary model with one logit, not to {num_outputs} outputs")
    return losses.CrossEntropyLoss(label_smoothing)


def check_pos_weight(value: object) -> float | str | None:
    """``value`` if it is a valid ``TrainConfig.pos_weight`` — None, ``"balanced"`` or a positive
    finite number — else a ValueError saying so (``--pos-weight`` parses through it too)."""
    if value is None or value == "balanced":
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(f"pos_weight: expected None, 'balanced' or a positive number, got {value!r}")
    return value


def resolve_pos_weight(pos_weight: float | str | None, y: np.ndarray) -> float | None:
    """``TrainConfig.pos_weight`` as a number: ``"balanced"`` = negatives / positives in ``y``
    (int64 (N,) labels 0/1), so that both classes weigh the same in the training loss."""
    if pos_weight != "balanced":
        return None if pos_weight is None else float(pos_weight)
    positives = int(np.count_nonzero(y == 1))
    if positives == 0 or positives == len(y):
        raise ValueError(f"pos_weight 'balanced': the training labels hold {positives} of {len(y)} positives")
    return (len(y) - positives) / positives


def _targets(y: np.ndarray, num_outputs: int, smoothing: float, dtype) -> np.ndarray:
    """Loss targets: float (N, 1) for a binary (one-logit) model, smoothed towards 0.5 by
    ``smoothing``; int64 (N,) class indices otherwise (CrossEntropyLoss smooths those itself)."""
    if num_outputs == 1:
        t = y.astype(dtype).reshape(-1, 1)
        if smoothing:
            t = t * (1.0 - smoothing) + 0.5 * smoothing
        return t
    return y.astype(np.int64)


def _predicted(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return logits.argmax(axis=1).astype(np.int64)


def _progress(total: int, enabled: bool | None):
    """A tqdm bar on stderr: ``enabled=None`` shows it only when stderr is a terminal."""
    from tqdm.auto import tqdm

    disable = (not enabled) if enabled is not None else not sys.stderr.isatty()
    return tqdm(total=total, unit="batch", file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False)


def _score(record: dict, monitor: str) -> tuple[float, float]:
    """Larger is better; accuracy ties are broken by the lower validation loss."""
    if monitor == "val_loss":
        return (-record["val_loss"], 0.0)
    return (record["val_accuracy"], -record["val_loss"])


def fit(
    model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: TrainConfig | None = None,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    out_dir: str | os.PathLike | None = None,
    metadata: dict | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``model`` (a :class:`~fastconv.model.Sequential`) in place.

    x_train: float32 (N, C, H, W) raw images in [0, 1]; y_train: int64 (N,) class indices.
    ``transform`` (e.g. a fitted :class:`~fastconv.data.Normalizer`) maps a batch of raw
    images to model inputs, after augmentation. x_val/y_val (raw, same layout) are evaluated
    after every epoch; without them the last epoch is "best".

    With ``out_dir``: ``model.npz`` (best checkpoint by ``config.monitor``, written atomically
    with ``metadata`` plus the epoch and validation scores), ``history.json``, ``history.csv``
    (rewritten atomically after every epoch) and ``curves.png`` (written when the run ends).

    ``progress``: True/False forces the tqdm bar on/off; None shows it when stderr is a terminal.
    ``log`` receives one line per epoch (e.g. ``print``); None = silent.

    Raises :class:`TrainingDiverged` when the training or validation loss is not finite: the
    run stops at once, the history so far is written, the last good checkpoint is kept.
    """
    from .data import Augmenter, iterate_minibatches

    config = config or TrainConfig()
    transform = transform or (lambda a: a)
    if (x_val is None) != (y_val is None):
        raise ValueError("x_val and y_val: give both (validation every epoch) or neither")
    x_train = np.asarray(x_train)
    if x_train.ndim < 2:
        raise ValueError(f"x_train: expected a batch of inputs (N, ...), got shape {x_train.shape}")
    if len(x_train) == 0:
        raise ValueError("no training images")
    num_outputs = _num_outputs(model, transform(x_train[:1]))  # what the model is given, after transform
    y_train = _check_labels("y_train", y_train, len(x_train), num_outputs)
    has_val = x_val is not None and len(x_val) > 0
    if has_val:
        x_val = np.asarray(x_val)
        if x_val.shape[1:] != x_train.shape[1:]:
            raise ValueError(f"x_val: expected images of shape {x_train.shape[1:]} like x_train, got {x_val.shape[1:]}")
        y_val = _check_labels("y_val", y_val, len(x_val), num_outputs)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    dtype = model.dtype
    if config.backend is not None:
        model.set_backend(config.backend)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))
    # A Dropout built without a seed would draw its masks from OS entropy and make the run
    # unrepeatable; it gets a stream of config.seed. Seeded ones (catnet's) keep their own.
    unseeded = [layer for layer in model.modules() if getattr(layer, "seeded", True) is False]
    for layer, child in zip(unseeded, np.random.SeedSequence([config.seed, 2]).spawn(len(unseeded))):
        layer.reseed(child)
        layer.seeded = False  # still the run's to seed: the next fit() seeds it from its own config
    augment = Augmenter(
        hflip=config.hflip,
        max_shift=config.max_shift,
        max_rotation=config.max_rotation,
        scale=(1.0 - config.scale, 1.0 + config.scale) if config.scale else None,
    )
    loss_fn = _make_loss(num_outputs, config.label_smoothing, resolve_pos_weight(config.pos_weight, y_train))
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    from .optim import CosineSchedule

    schedule = CosineSchedule(
        optimizer,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=min(config.warmup_epochs, config.epochs) * steps_per_epoch,
        min_lr=config.min_lr,
    )
    val_inputs = transform(x_val) if has_val else None

    result = FitResult()
    best_key: tuple[float, float] | None = None
    since_best = 0
    averager = WeightAverage(model.parameters()) if config.average_epochs else None
    t_start = time.perf_counter()
    bar = _progress(config.epochs * steps_per_epoch, progress)
    try:
        for epoch in range(1, config.epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            lr_epoch = optimizer.lr
            loss_sum, correct, seen = 0.0, 0, 0
            # overflow / NaN inside a diverging step would print numpy warnings (with source lines)
            # before the clear message below; the loss and state checks are what stop the run
            with np.errstate(over="ignore", invalid="ignore"):
                for step, (xb, yb) in enumerate(
                    iterate_minibatches(x_train, y_train, config.batch_size, rng, shuffle=True, drop_last=False)
                ):
                    inputs = np.ascontiguousarray(transform(augment(xb, rng)), dtype=dtype)
                    logits = model(inputs)
                    loss = float(loss_fn.forward(logits, _targets(yb, num_outputs, config.label_smoothing, dtype)))
                    if not math.isfinite(loss):
                        _diverged(result, out, f"the loss became {loss} at epoch {epoch}, batch {step + 1} "
                                  f"(learning rate {optimizer.lr:.3g})")  # fmt: skip
                    model.zero_grad()
                    model.backward(loss_fn.backward())
                    optimizer.step()
                    schedule.step()
                    if averager is not None and epoch > config.epochs - config.average_epochs:
                        averager.add()
                    loss_sum += loss * len(yb)
                    correct += int((_predicted(np.asarray(logits)) == yb).sum())
                    seen += len(yb)
                    bar.update(1)
                    postfix = {"epoch": epoch, "loss": f"{loss_sum / seen:.3f}", "acc": f"{correct / seen:.3f}"}
                    bar.set_postfix(postfix, refresh=False)

            # A finite loss does not make finite weights: BatchNorm's running variance can overflow
            # to inf while the batch statistics stay usable. A checkpoint must be loadable and sane.
            bad = _non_finite_state(model)
            if bad:
                _diverged(result, out, f"{bad} became non-finite at epoch {epoch}")
            record = {
                "epoch": epoch,
                "lr": lr_epoch,
                "train_loss": loss_sum / seen,
                "train_accuracy": correct / seen,
                "val_loss": float("nan"),
                "val_accuracy": float("nan"),
                "val_f1": float("nan"),
            }
            if has_val:
                record.update(_validation_scores(model, val_inputs, y_val, config.tta))
                vloss = record["val_loss"]
                if not math.isfinite(vloss):
                    _diverged(result, out, f"the validation loss became {vloss} at epoch {epoch}")
            record["seconds"] = time.perf_counter() - t_epoch
            result.history.append(record)

            key = _score(record, config.monitor) if has_val else (float(epoch), 0.0)
            if best_key is None or key > best_key:
                best_key, since_best = key, 0
                result.best_epoch = epoch
                result.best_score = record[config.monitor] if has_val else float("nan")
                if out is not None:
                    _save_checkpoint(model, out / MODEL_FILE, metadata, config, record)
                    result.checkpoint = out / MODEL_FILE
            else:
                since_best += 1
            if log is not None:
                line = (
                    f"epoch {epoch:3d}/{config.epochs}  lr {lr_epoch:.2e}  loss {record['train_loss']:.4f}  "
                    f"acc {record['train_accuracy']:.3f}"
                )
                if has_val:
                    line += f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.3f}"
                line += "  *" if has_val and result.best_epoch == epoch else ""  # new best on validation
                if bar.disable:
                    log(line)
                else:
                    bar.write(line, file=sys.stderr)  # keeps the bar at the bottom of the terminal
            if out is not None:
                # JSON/CSV after every epoch (cheap); the PNG (~0.3 s to render) once at the end.
                _write_history(out, result, config, curves=False)
            if config.patience and has_val and since_best >= config.patience:
                result.stopped = "early_stopping"
                result.message = (
                    f"early stopping after epoch {epoch}: no better {config.monitor} for {config.patience} epoch"
                    f"{'s' if config.patience != 1 else ''}"
                )
                if log is not None:
                    log(result.message)  # now, in order: a refit's epochs may follow
                break
    except _Diverged:
        result.seconds = time.perf_counter() - t_start
        if out is not None:
            _write_history(out, result, config)
        raise TrainingDiverged(result.message, result) from None
    finally:
        bar.close()
    if averager is not None and averager.count:
        _use_average(model, averager, x_train, transform, config)
        scores = _validation_scores(model, val_inputs, y_val, config.tta) if has_val else {}
        first = config.epochs - config.average_epochs + 1
        result.averaged = {"first_epoch": first, "last_epoch": len(result.history), "steps": averager.count,
                           "val_loss": float("nan"), "val_accuracy": float("nan"), "val_f1": float("nan"), **scores}
        if log is not None:
            log(f"weight average of epochs {first}-{len(result.history)} ({averager.count} steps)"
                + (f": val_loss {scores['val_loss']:.4f}  val_acc {scores['val_accuracy']:.3f}" if scores else ""))
        if out is not None:
            # The average replaces the best epoch's checkpoint: it is the model this run produces.
            record = {"epoch": len(result.history), **result.averaged}
            meta = dict(metadata or {}, averaged=_json_floats(result.averaged))
            _save_checkpoint(model, out / MODEL_FILE, meta, config, record)
            result.checkpoint = out / MODEL_FILE
    result.seconds = time.perf_counter() - t_start
    if out is not None:
        _write_history(out, result, config)
    return result


class WeightAverage:
    """Running float64 sum of a list of Parameters' values (``add`` after each optimizer step);
    ``mean(i)`` is parameter i's uniform average over the ``count`` additions."""

    def __init__(self, params: Sequence) -> None:
        self.params = list(params)
        self.sums = [np.zeros(p.data.shape, np.float64) for p in self.params]
        self.count = 0

    def add(self) -> None:
        for total, p in zip(self.sums, self.params):
            total += p.data
        self.count += 1

    def mean(self, i: int) -> np.ndarray:
        return self.sums[i] / self.count


def _use_average(model, averager: WeightAverage, x_train, transform, config: TrainConfig) -> None:
    """Load the averaged weights into ``model`` and recompute its BatchNorm statistics.

    The running statistics collected during training belong to the individual weights, not to
    their average, so they are recomputed by one pass over the un-augmented training images.
    """
    for i, p in enumerate(averager.params):
        p.data[...] = averager.mean(i).astype(p.data.dtype)
    recompute_batchnorm(model, x_train, config.batch_size, transform=transform)


def recompute_batchnorm(
    model, inputs: np.ndarray, batch_size: int = 32, *, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> None:
    """Set every BatchNorm2d's running mean / variance to the average of the batch statistics of
    ``inputs`` ((N, C, H, W) model inputs, or raw images mapped by ``transform`` one batch at a
    time) in batches of ``batch_size``: batch b enters with momentum 1 / (b + 1), an equally
    weighted cumulative average. Leaves the model in eval mode; the layers' momentum is restored."""
    from .layers import BatchNorm2d

    bns = [layer for layer in model.modules() if isinstance(layer, BatchNorm2d)]
    if not bns:
        return
    dtype = model.dtype
    saved = [bn.momentum for bn in bns]
    model.train()
    try:
        for b, i in enumerate(range(0, len(inputs), batch_size)):
            for bn in bns:
                bn.momentum = 1.0 / (b + 1)
            xb = inputs[i : i + batch_size]
            model(np.ascontiguousarray(transform(xb) if transform is not None else xb, dtype=dtype))
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
        model.eval()


def _validation_scores(model, val_inputs: np.ndarray, y_val: np.ndarray, tta: bool) -> dict:
    """Validation loss (plain, unsmoothed), accuracy and F1 (binary, or macro over classes) of ``model``."""
    dtype = model.dtype
    vlogits = predict_logits(model, val_inputs, tta=tta)
    num_outputs = vlogits.shape[1]
    vloss = float(_make_loss(num_outputs).forward(vlogits.astype(dtype), _targets(y_val, num_outputs, 0.0, dtype)))
    vpred = _predicted(vlogits)
    avg = "binary" if max(num_outputs, 2) == 2 else "macro"
    return {"val_loss": vloss, "val_accuracy": metrics.accuracy(y_val, vpred),
            "val_f1": metrics.precision_recall_f1(y_val, vpred, average=avg)[2]}


class _Diverged(Exception):
    pass


def _diverged(result: FitResult, out: Path | None, what: str) -> NoReturn:
    """Mark ``result`` as diverged with the message 'training stopped: <what>; ...' and raise."""
    result.stopped = "diverged"
    result.message = f"training stopped: {what}; try a smaller --lr. " + _kept_message(result, out)
    raise _Diverged


def _kept_message(result: FitResult, out: Path | None) -> str:
    if result.best_epoch and out is not None:
        return f"The last good checkpoint (epoch {result.best_epoch}) is kept at {out / MODEL_FILE}."
    if result.best_epoch:
        return f"The last good epoch was {result.best_epoch}."
    return "No checkpoint was saved (no epoch finished with a finite loss)."


#: TrainConfig fields that fit() does not use: they say how ``fastconv train`` built the model and
#: split the data, which fit() receives ready-made.
_RECIPE_ONLY_FIELDS = ("val_fraction", "dropout", "width", "batchnorm", "refit", "init", "arch")


def _non_finite_state(model) -> str:
    """The first parameter or buffer of ``model`` holding NaN or inf (its state key), or ''."""
    for key, arr in model._state_entries():
        if not np.isfinite(arr).all():
            return f"{key} ({type(model.layers[int(key.split('.', 1)[0])]).__name__})"
    return ""


def _save_checkpoint(model, path: Path, metadata: dict | None, config: TrainConfig, record: dict) -> None:
    meta = dict(metadata or {})
    if "config" not in meta:  # fit() called directly: record what it used, not defaults of fields it ignores
        meta["fit_config"] = {k: v for k, v in config.to_dict().items() if k not in _RECIPE_ONLY_FIELDS}
    meta.setdefault("tta", config.tta)
    meta["epoch"] = record["epoch"]
    meta["val_accuracy"] = _json_float(record["val_accuracy"])
    meta["val_loss"] = _json_float(record["val_loss"])
    model.save(path, metadata=meta)


def _json_float(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def _json_floats(d: dict) -> dict:
    """``d`` with its float values made JSON-safe (NaN / inf -> None)."""
    return {k: (_json_float(v) if isinstance(v, float) else v) for k, v in d.items()}


def _write_history(out: Path, result: FitResult, config: TrainConfig, curves: bool = True) -> None:
    doc = {
        "config": config.to_dict(),
        "best_epoch": result.best_epoch,
        "best_score": _json_float(result.best_score),
        "monitor": config.monitor,
        "stopped": result.stopped,
        "message": result.message,
        "seconds": result.seconds,
        "averaged": None if result.averaged is None else _json_floats(result.averaged),
        "epochs": [_json_floats(r) for r in result.history],
    }
    atomic_write_bytes(out / HISTORY_JSON, (json.dumps(doc, indent=2) + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(HISTORY_FIELDS), lineterminator="\n")
    writer.writeheader()
    for r in result.history:
        writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    atomic_write_bytes(out / HISTORY_CSV, buf.getvalue().encode())
    if curves and result.history:
        # fit's own checkpoint of the marked epoch is model.npz (none when it ships a weight
        # average); train_classifier relabels it model_val.npz once a refit has replaced model.npz
        kept = None if result.averaged is not None else MODEL_FILE
        atomic_write_bytes(out / CURVES_PNG, plot_curves(result.history, result.best_epoch, kept))


def plot_curves(history: Sequence[dict], best_epoch: int = 0, kept: str | None = None) -> bytes:
    """PNG bytes: loss (left) and accuracy (right), train and validation, against the epoch;
    a dotted line at ``best_epoch``, labelled with the file ``kept`` that holds it when given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    for ax, key, title in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("loss", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], label="train (augmented)")
        val = [r[f"val_{key}"] for r in history]
        if any(math.isfinite(v) for v in val):
            ax.plot(epochs, val, label="validation")
        if best_epoch:
            where = f" ({kept})" if kept else ""
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}{where}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5" ticks on short runs
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the classifier pipeline used by the CLI


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    dataset: str = "",
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[object, FitResult]:
    """Split (stratified, seeded), fit the normaliser on the training part, build ``config.arch`` and :func:`fit`.

    x: float32 (N, 3, S, S) in [0, 1]; y: int64 (N,) indices into ``classes``. Two classes give
    one output logit (binary cross-entropy), more give one logit per class.

    With ``config.refit`` (and a validation split) a second run follows the validation run: a
    fresh network, same seed and recipe, trained on *all* N images for as many epochs as the
    validation run trained (``config.epochs``, or fewer when early stopping ended it; the schedule
    is then fitted to that count), normaliser refitted on all images; its last epoch
    becomes ``model.npz``. The validation run's best checkpoint is kept as ``model_val.npz`` and
    its history as ``history.json``/``.csv``/``curves.png``; the refit's history is
    ``history_refit.json``/``.csv``.

    Returns the final model (reloaded from ``model.npz`` when ``out_dir`` is given) and the
    :class:`FitResult` of the validation run (of the only run when there is no validation split).
    """
    from .data import data_digest, train_val_split

    config = _resolved(config, x, classes, dataset)
    digest = data_digest(x, y)  # what evaluate --split train/val must be given to re-create the split
    if config.val_fraction > 0:
        x_tr, y_tr, x_va, y_va = train_val_split(x, y, val_fraction=config.val_fraction, seed=config.seed)
    else:
        x_tr, y_tr, x_va, y_va = x, y, None, None
    out = Path(out_dir) if out_dir is not None else None
    model, normalizer, metadata = _new_classifier(x_tr, classes, config, dataset)
    metadata.update(val_size=0 if x_va is None else len(x_va), data_sha256=digest)
    kw = dict(progress=progress, log=log)
    result = fit(model, x_tr, y_tr, x_va, y_va, config, transform=normalizer, out_dir=out, metadata=metadata, **kw)
    if not (config.refit and x_va is not None):
        if result.checkpoint is not None:
            from .model import load_with_metadata

            model, _ = load_with_metadata(result.checkpoint)
        return model, result

    # The refit trains as many epochs as the validation run did: all of them, or fewer when early
    # stopping ended it (then its schedule is fitted to that count).
    ran = len(result.history)
    if ran < config.epochs:
        config = dataclasses.replace(config, epochs=ran, patience=0, warmup_epochs=min(config.warmup_epochs, ran))
    if log is not None:
        log(f"refit: training a fresh {config.arch} on all {len(x)} images for {config.epochs} epoch"
            f"{'s' if config.epochs != 1 else ''}")
    model, normalizer, metadata = _new_classifier(x, classes, config, dataset)
    best = result.history[result.best_epoch - 1]
    metadata.update(
        val_size=0,
        data_sha256=digest,
        refit=True,
        validation_run={"best_epoch": result.best_epoch, "val_accuracy": best["val_accuracy"],
                        "val_loss": best["val_loss"], "train_size": len(x_tr), "val_size": len(x_va)},
    )  # fmt: skip
    refit_dir = out / ".refit" if out is not None else None
    try:
        refit = fit(model, x, y, None, None, config, transform=normalizer, out_dir=refit_dir, metadata=metadata, **kw)
    except TrainingDiverged as exc:
        # model.npz is still the validation run's checkpoint; the refit's partial files go.
        if refit_dir is not None:
            shutil.rmtree(refit_dir, ignore_errors=True)
        kept = f" {out / MODEL_FILE} is still the validation run's best checkpoint." if out is not None else ""
        first = str(exc).split(" The last good", 1)[0].split(" No checkpoint", 1)[0]
        raise TrainingDiverged(f"refit on all images: {first}{kept}", exc.result) from None
    if out is not None:
        # Validation run's checkpoint -> model_val.npz (a copy first, so that a model.npz exists
        # at every moment); then the refit model replaces model.npz.
        atomic_write_bytes(out / "model_val.npz", (out / MODEL_FILE).read_bytes())
        os.replace(refit_dir / MODEL_FILE, out / MODEL_FILE)
        if result.checkpoint is not None:
            result.checkpoint = out / "model_val.npz"
        os.replace(refit_dir / HISTORY_JSON, out / "history_refit.json")
        os.replace(refit_dir / HISTORY_CSV, out / "history_refit.csv")
        kept = None if result.averaged is not None else "model_val.npz"  # the marked epoch's file now
        atomic_write_bytes(out / CURVES_PNG, plot_curves(result.history, result.best_epoch, kept))
        for leftover in refit_dir.iterdir():
            leftover.unlink()
        refit_dir.rmdir()
    result.seconds += refit.seconds
    return model, result


def _resolved(config: TrainConfig | None, x: np.ndarray, classes: Sequence[str], dataset: str) -> TrainConfig:
    """A copy of ``config`` with ``init`` and ``lr`` resolved for ``dataset``, after checking the images."""
    config = dataclasses.replace(config or TrainConfig())
    config.init = resolve_init(config.init, dataset, width=config.width, batchnorm=config.batchnorm, arch=config.arch)
    config.lr = resolve_lr(config.lr, config.init)
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"x: expected square images (N, C, S, S), got shape {x.shape}")
    if len(classes) < 2:
        raise ValueError(f"need at least two classes to train a classifier, got {list(classes)}")
    return config


# Fold draws use their own seed stream (seed + CV_FOLD_SEED_OFFSET), apart from the run seeds.
CV_FOLD_SEED_OFFSET = 1000
CV_MAX_FOLDS = 10


@dataclass
class CVResult:
    """What :func:`cross_validate` returns: every held-out prediction, M = repeats * N of them.

    ``index`` int64 (M,): the image (row of ``x``) each prediction is for — every image once per
    repetition; ``repeat``, ``fold`` int64 (M,); ``y`` int64 (M,) its label; ``logits`` float64
    (M, outputs) from the last-epoch model of the one fold that held the image out (flip-averaged
    when ``config.tta``). ``fold_seconds``: training time of each fold, in order.
    """

    classes: list[str]
    folds: int
    repeats: int
    config: TrainConfig
    index: np.ndarray
    repeat: np.ndarray
    fold: np.ndarray
    y: np.ndarray
    logits: np.ndarray
    fold_seconds: list[float] = field(default_factory=list)

    def predicted(self) -> np.ndarray:
        """Predicted class int64 (M,) of every held-out prediction."""
        return _predicted(self.logits)

    def report(self) -> metrics.Report:
        """Accuracy, precision, recall, F1 (binary: of class 1) and confusion matrix, pooled over all M."""
        return metrics.classification_report(self.y, self.predicted(), self.classes)

    def loss(self) -> float:
        """Mean cross-entropy (binary: BCE on the logit) of the M held-out predictions: the
        validation loss of :func:`fit`, computed in float64."""
        outputs = self.logits.shape[1]
        return _make_loss(outputs).forward(self.logits, _targets(self.y, outputs, 0.0, np.float64))

    def repeat_accuracies(self) -> list[float]:
        """Accuracy of each repetition alone (each covers every image once)."""
        hit = self.predicted() == self.y
        return [float(hit[self.repeat == r].mean()) for r in range(self.repeats)]

    def to_dict(self) -> dict:
        """JSON-ready: the pooled scores, the recipe and every held-out prediction."""
        rep = self.report()
        return {
            "folds": self.folds,
            "repeats": self.repeats,
            "classes": list(self.classes),
            "accuracy": rep.accuracy,
            "loss": self.loss(),
            "precision": rep.precision,
            "recall": rep.recall,
            "f1": rep.f1,
            "average": rep.average,
            "confusion_matrix": rep.confusion.tolist(),
            "repeat_accuracies": self.repeat_accuracies(),
            "fold_seconds": [round(t, 3) for t in self.fold_seconds],
            "config": self.config.to_dict(),
            "predictions": {
                "index": self.index.tolist(),
                "repeat": self.repeat.tolist(),
                "fold": self.fold.tolist(),
                "y": self.y.tolist(),
                "logits": self.logits.tolist(),
            },
        }


def compare_cv(ours: CVResult, theirs: dict, name: str = "the other run") -> dict:
    """Paired comparison of two cross-validations of the same images (``theirs``: a loaded
    ``cv.json``, i.e. :meth:`CVResult.to_dict`). Predictions pair up by (repetition, image).

    Returns ``{"n", "ours_only", "theirs_only", "p_value", "accuracy_difference"}``: the
    predictions only this run / only the other got right and the exact McNemar p-value
    (:func:`~fastconv.metrics.mcnemar`). Same seed, folds and repetitions pair each image's
    predictions from models trained on the same other images, the most sensitive comparison.
    ValueError (naming ``name``) unless both cover the same images with the same labels.
    """
    try:
        p = theirs["predictions"]
        key_t = {(int(r), int(i)): k for k, (r, i) in enumerate(zip(p["repeat"], p["index"]))}
        y_t = np.asarray(p["y"], dtype=np.int64)
        logits_t = np.asarray(p["logits"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not a cv.json written by 'fastconv train --cv' ({exc})") from None
    keys = list(zip(ours.repeat.tolist(), ours.index.tolist()))
    if set(keys) != set(key_t) or logits_t.ndim != 2 or logits_t.shape[1] != ours.logits.shape[1]:
        raise ValueError(
            f"{name}: its predictions are not for the same images: {len(key_t)} (repetition, image) pairs "
            f"vs {len(keys)} here; use the same data, --cv-repeats and number of classes"
        )
    order = np.array([key_t[k] for k in keys])
    if not np.array_equal(y_t[order], ours.y):
        raise ValueError(f"{name}: the same images carry other labels there; it is another data set")
    ours_right = ours.predicted() == ours.y
    theirs_right = _predicted(logits_t[order]) == ours.y
    ours_only, theirs_only, p_value = metrics.mcnemar(ours_right, theirs_right)
    return {
        "n": len(keys),
        "ours_only": ours_only,
        "theirs_only": theirs_only,
        "p_value": p_value,
        "accuracy_difference": float(ours_right.mean() - theirs_right.mean()),
    }


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    config: TrainConfig | None = None,
    *,
    folds: int = 5,
    repeats: int = 1,
    dataset: str = "",
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> CVResult:
    """Stratified k-fold cross-validation of the training recipe ``config`` on ``(x, y)``.

    x: float32 (N, 3, S, S) in [0, 1]; y: int64 (N,). Repetition r (0 <= r < ``repeats``) uses
    seed s = config.seed + r: folds from :func:`~fastconv.data.stratified_folds` with seed
    s + CV_FOLD_SEED_OFFSET, and fold f trains a fresh network (same init rule, normaliser and
    recipe as :func:`train_classifier`, no validation split, no refit) with run seed 10*s + f on
    the other folds for ``config.epochs`` epochs, then predicts the held-out fold with its
    last-epoch weights. So ``repeats=2`` at seed 0 is the union of ``repeats=1`` at seeds 0 and 1.
    Every image is predicted once per repetition by a model that never saw it: a less noisy
    yardstick than one validation split when the data set is small (209 images: 41 validation
    images put accuracy in steps of 2.4 points). ``folds``: 2 to CV_MAX_FOLDS (10).
    """
    from .data import stratified_folds

    config = _resolved(config, x, classes, dataset)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= CV_MAX_FOLDS:
        raise ValueError(f"folds (--cv): expected an int from 2 to {CV_MAX_FOLDS}, got {folds!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats (--cv-repeats): expected a positive int, got {repeats!r}")
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels")
    parts: dict[str, list[np.ndarray]] = {"index": [], "repeat": [], "fold": [], "logits": []}
    seconds: list[float] = []
    for r in range(repeats):
        s = config.seed + r
        fold_of = stratified_folds(y, folds, seed=s + CV_FOLD_SEED_OFFSET)
        for f in range(folds):
            held = fold_of == f
            run = dataclasses.replace(config, seed=10 * s + f, val_fraction=0.0, refit=False)
            model, normalizer, _ = _new_classifier(x[~held], classes, run, dataset)
            result = fit(model, x[~held], y[~held], None, None, run, transform=normalizer, progress=progress)
            model.eval()
            logits = predict_logits(model, normalizer(x[held]), tta=run.tta).astype(np.float64)
            parts["index"].append(np.flatnonzero(held))
            parts["repeat"].append(np.full(int(held.sum()), r))
            parts["fold"].append(np.full(int(held.sum()), f))
            parts["logits"].append(logits)
            seconds.append(result.seconds)
            if log is not None:
                hit = float((_predicted(logits) == y[held]).mean())
                log(f"repeat {r + 1}/{repeats} fold {f + 1}/{folds}: {int(held.sum())} held out, "
                    f"accuracy {hit:.3f}, {result.seconds:.1f} s")  # fmt: skip
    index = np.concatenate(parts["index"]).astype(np.int64)
    return CVResult(
        classes=[str(c) for c in classes],
        folds=int(folds),
        repeats=int(repeats),
        config=config,
        index=index,
        repeat=np.concatenate(parts["repeat"]).astype(np.int64),
        fold=np.concatenate(parts["fold"]).astype(np.int64),
        y=y[index].astype(np.int64),
        logits=np.concatenate(parts["logits"]),
        fold_seconds=seconds,
    )


#: the architecture of the bundled backbone (PRETRAINED_BACKBONE): catnet's default width, BatchNorm
BACKBONE_WIDTH, BACKBONE_BATCHNORM = 16, True


def resolve_init(
    init: str | os.PathLike | None,
    dataset: str,
    *,
    width: int = BACKBONE_WIDTH,
    batchnorm: bool = BACKBONE_BATCHNORM,
    arch: str = "catnet",
) -> str | None:
    """The model file whose feature layers start a run (``TrainConfig.init``), or None for random.

    ``"auto"``: the bundled CIFAR-10 backbone for catvnoncat when catnet has the backbone's
    architecture (``width`` 16, ``batchnorm``), None otherwise — for any other dataset too (a
    user's own folder may hold CIFAR images themselves, whose validation split the backbone
    has seen). ``"pretrained"``: the bundled backbone (a catnet of another width or without
    BatchNorm is then refused when its layers are compared). ``"none"``/None: random. Anything
    else is a path, which must exist. The backbone is a catnet's: with ``arch`` "resnet", "auto"
    is random and "pretrained" is refused.
    """
    if init is None or str(init).lower() == "none":
        return None
    if init == "auto":
        fits = arch == "catnet" and width == BACKBONE_WIDTH and bool(batchnorm) == BACKBONE_BATCHNORM
        return str(PRETRAINED_BACKBONE) if dataset == "catvnoncat" and fits else None
    if init == "pretrained":
        if arch != "catnet":
            raise ValueError(f"init 'pretrained': the bundled backbone is a catnet's, not a {arch}'s; "
                             "use 'none' or a model file of this architecture")  # fmt: skip
        return str(PRETRAINED_BACKBONE)
    if not Path(init).is_file():
        raise FileNotFoundError(
            f"init: model file {init} not found (expected 'auto', 'pretrained', 'none' or a model file path)"
        )
    return str(init)


def resolve_lr(lr: float | None, init: str | None) -> float:
    """``TrainConfig.lr``, or when it is None the default peak rate: LR_FINETUNE when the conv
    layers start from a backbone (``init``, as resolved by :func:`resolve_init`), else LR_SCRATCH."""
    if lr is not None:
        return lr
    return LR_FINETUNE if init else LR_SCRATCH


def _new_classifier(x_fit: np.ndarray, classes: Sequence[str], config: TrainConfig, dataset: str):
    """(catnet, Normalizer, model-file metadata) for one training run.

    With ``config.init`` (a path, see :func:`resolve_init`) the feature layers are copied from
    that file and its normaliser is kept, since the first conv's weights and the BatchNorm
    statistics were learnt on inputs normalised that way; otherwise the normaliser is fitted on ``x_fit``.
    """
    from . import zoo
    from .data import Normalizer

    outputs = 1 if len(classes) == 2 else len(classes)
    if config.arch == "resnet":
        w = config.width
        model = zoo.resnet(in_channels=x_fit.shape[1], num_outputs=outputs, widths=(w, 2 * w, 4 * w),
                           dropout=config.dropout, seed=config.seed, backend=config.backend)  # fmt: skip
    else:
        model = zoo.catnet(
            in_channels=x_fit.shape[1],
            image_size=x_fit.shape[2],
            num_outputs=outputs,
            dropout=config.dropout,
            width=config.width,
            batchnorm=config.batchnorm,
            seed=config.seed,
            backend=config.backend,
        )
    normalizer = None
    init = None
    if config.init is not None:
        backbone_meta = model.load_backbone(config.init)
        if "normalizer" in backbone_meta:
            normalizer = Normalizer.from_dict(backbone_meta["normalizer"])
        init = {"file": Path(config.init).name, "dataset": backbone_meta.get("dataset", "")}
    if normalizer is None:
        normalizer = Normalizer().fit(x_fit)
    metadata = {
        "kind": "fastconv-classifier",
        "architecture": config.arch,
        "classes": [str(c) for c in classes],
        "image_size": int(x_fit.shape[2]),
        "normalizer": normalizer.to_dict(),
        "tta": bool(config.tta),
        "config": config.to_dict(),
        "dataset": dataset,
        "train_size": len(x_fit),
        "refit": False,
        "init": init,
    }
    return model, normalizer, metadata


@dataclass
class LoadedData:
    """Images for training or evaluation. ``x`` float32 (N, 3, S, S) in [0, 1]; ``y`` int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    name: str  # "catvnoncat" or the folder path
    kind: str  # "catvnoncat" | "folder"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    x_test: np.ndarray | None = None  # catvnoncat only
    y_test: np.ndarray | None = None


def load_dataset(data: str | os.PathLike | None, image_size: int | None = None) -> LoadedData:
    """catvnoncat (``data`` None or a path holding its files) or a class-folder tree resized to
    ``image_size`` (default 64). catvnoncat images are 64x64; another ``image_size`` is rejected."""
    from .data import is_catvnoncat_path, load_catvnoncat, load_image_folder

    if is_catvnoncat_path(data):
        if image_size not in (None, 64):
            raise ValueError(f"catvnoncat images are 64x64; --image-size {image_size} applies to image folders only")
        ds = load_catvnoncat(data)
        return LoadedData(
            ds.x_train, ds.y_train, list(ds.classes), "catvnoncat", "catvnoncat", x_test=ds.x_test, y_test=ds.y_test
        )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped files are reported by the caller from .skipped
        fd = load_image_folder(data, image_size=image_size or 64)
    return LoadedData(fd.x, fd.y, list(fd.classes), str(data), "folder", skipped=list(fd.skipped))


@dataclass
class Classifier:
    """A trained model with what it needs to classify raw images.

    ``predict_proba(x)``: x float32 (N, 3, S, S) in [0, 1] (S = ``image_size``) -> float64 (N, C)
    class probabilities (columns in ``classes`` order).
    """

    model: object
    classes: tuple[str, ...]
    image_size: int
    normalizer: object
    tta: bool = False
    metadata: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | None = None) -> Classifier:
        """Load a model file written by ``fastconv train``; a clear ValueError if it is not one."""
        from .data import Normalizer
        from .model import load_with_metadata

        model, meta = load_with_metadata(path)
        missing = [k for k in ("classes", "image_size", "normalizer") if k not in (meta or {})]
        if missing:
            raise ValueError(
                f"{path}: not a fastconv classifier file (its metadata lacks {', '.join(missing)}); "
                "model files written by 'fastconv train' have them"
            )
        classes = tuple(str(c) for c in meta["classes"])
        # the environment and the backend first: their errors are theirs, not the file's (the
        # wrapper below would blame a bad FASTCONV_BACKEND or FASTCONV_NUM_THREADS on the model)
        from . import kernels

        kernels.get_num_threads()
        if backend is not None:
            model.set_backend(backend)
        else:
            kernels.get_default_backend()
        try:
            size = int(meta["image_size"])
            outputs = _num_outputs(model, np.zeros((1, 3, size, size), model.dtype))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: its model does not classify the {meta['image_size']!r}x{meta['image_size']!r} RGB images "
                f"its metadata names ({exc})"
            ) from None
        # Two classes: one logit (sigmoid, as fastconv train builds it) or two (softmax, e.g. fit()
        # on a model ending in Linear(..., 2)); more classes: one logit each.
        if outputs not in ((1, 2) if len(classes) == 2 else (len(classes),)):
            expected = "1 or 2 outputs" if len(classes) == 2 else f"{len(classes)} outputs"
            raise ValueError(
                f"{path}: the file names {len(classes)} classes, so the model needs {expected}; it has {outputs}"
            )
        model.eval()
        return cls(
            model=model,
            classes=classes,
            image_size=int(meta["image_size"]),
            normalizer=Normalizer.from_dict(meta["normalizer"]),
            tta=bool(meta.get("tta", False)),
            metadata=meta,
        )

    def check_input(self, x: np.ndarray) -> None:
        s = self.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"images of shape (N, 3, {s}, {s}) expected by this model (image size {s}), got {x.shape}")

    def predict_proba(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        self.check_input(x)
        dtype = self.model.dtype
        inputs = np.ascontiguousarray(self.normalizer(x), dtype=dtype)
        return logits_to_proba(predict_logits(self.model, inputs, batch_size=batch_size, tta=self.tta))

    def predict(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Predicted class indices int64 (N,)."""
        return self.predict_proba(x, batch_size).argmax(axis=1).astype(np.int64)
