"""The training loop on a tiny synthetic problem: learning, reproducibility, best checkpoint,
early stopping, NaN handling, history files, and the Classifier loader."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from fastconv import losses, zoo
from fastconv.data import Normalizer
from fastconv.model import Sequential, load_with_metadata
from fastconv.train import (
    HISTORY_FIELDS,
    Classifier,
    TrainConfig,
    TrainingDiverged,
    compare_cv,
    cross_validate,
    fit,
    predict_logits,
    train_classifier,
)

SIZE = 16


def stripes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (n, 3, 16, 16) in [0, 1]: label 1 = vertical stripes, 0 = horizontal, random
    period (2-4 px) and phase, plus noise. Mean brightness does not tell the classes apart."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    x = np.empty((n, 3, SIZE, SIZE), np.float32)
    coords = np.arange(SIZE)
    for i in range(n):
        period = rng.integers(2, 5)
        wave = 0.5 + 0.4 * np.sign(np.sin(2 * np.pi * (coords + rng.uniform(0, period)) / period))
        img = np.tile(wave, (SIZE, 1)) if y[i] == 1 else np.tile(wave[:, None], (1, SIZE))
        x[i] = img[None] + rng.normal(0, 0.1, (3, SIZE, SIZE))
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)


def tiny_config(**kw) -> TrainConfig:
    base = dict(epochs=8, batch_size=16, lr=0.01, warmup_epochs=1, val_fraction=0.25, max_shift=1, width=4, seed=0,
                max_rotation=0.0, scale=0.0, batchnorm=False, refit=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return stripes(96, seed=1)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    x, y = data
    model, result = train_classifier(x, y, ["horizontal", "vertical"], tiny_config(), out_dir=out, progress=False)
    return out, model, result


def test_learns_the_separable_problem(trained, data):
    out, _, result = trained
    assert result.stopped == "completed"
    assert len(result.history) == 8
    best = result.history[result.best_epoch - 1]
    assert best["val_accuracy"] >= 0.9
    # Fresh images the run never saw: the checkpoint generalises.
    x_new, y_new = stripes(64, seed=99)
    clf = Classifier.load(out / "model.npz")
    assert np.mean(clf.predict(x_new) == y_new) >= 0.9


def test_same_seed_same_history_other_seed_differs(data, trained):
    x, y = data
    _, _, first = trained
    _, again = train_classifier(x, y, ["horizontal", "vertical"], tiny_config(), progress=False)
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
    assert [[r[k] for k in keys] for r in again.history] == [[r[k] for k in keys] for r in first.history]
    _, other = train_classifier(x, y, ["horizontal", "vertical"], tiny_config(seed=1, epochs=2), progress=False)
    assert [r["train_loss"] for r in other.history] != [r["train_loss"] for r in first.history[:2]]


def test_checkpoint_is_the_best_validation_epoch(trained, data):
    out, _, result = trained
    hist = result.history
    # The best epoch: highest val accuracy, ties broken by the lower val loss (computed here).
    expected = max(hist, key=lambda r: (r["val_accuracy"], -r["val_loss"]))["epoch"]
    assert result.best_epoch == expected
    model, meta = load_with_metadata(out / "model.npz")
    assert meta["epoch"] == expected
    # Re-evaluate the saved weights on the same validation split, independently of fit().
    from fastconv.data import train_val_split

    x, y = data
    x_tr, _, x_va, y_va = train_val_split(x, y, val_fraction=0.25, seed=0)
    norm = Normalizer.from_dict(meta["normalizer"])
    np.testing.assert_allclose(norm.mean, x_tr.mean(axis=(0, 2, 3)), rtol=1e-5)
    z = predict_logits(model, norm(x_va), tta=True)[:, 0]
    loss = np.mean(np.logaddexp(0, z) - y_va * z)  # BCE on logits
    assert loss == pytest.approx(hist[expected - 1]["val_loss"], rel=1e-4)
    assert np.mean((z > 0) == y_va) == pytest.approx(hist[expected - 1]["val_accuracy"])


def test_history_files_are_valid(trained):
    out, _, result = trained
    doc = json.loads((out / "history.json").read_text())
    assert doc["best_epoch"] == result.best_epoch
    assert doc["stopped"] == "completed"
    assert [r["epoch"] for r in doc["epochs"]] == list(range(1, 9))
    assert doc["config"]["epochs"] == 8
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == HISTORY_FIELDS
    assert len(rows) == 8
    assert float(rows[-1]["train_loss"]) == pytest.approx(doc["epochs"][-1]["train_loss"])
    import matplotlib.image

    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporary files


def test_learning_rate_follows_warmup_then_cosine(trained):
    _, _, result = trained
    lrs = [r["lr"] for r in result.history]  # the lr at the first step of each epoch
    steps = math.ceil(72 / 16)  # 96 images, 24 held out
    total = 8 * steps
    assert lrs[0] == pytest.approx(0.01 / steps)  # warm-up step 1 of `steps`
    t = 2 * steps - steps  # first step of epoch 3, after one warm-up epoch
    assert lrs[2] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * t / (total - steps))))
    assert lrs[-1] < lrs[1]


def test_early_stopping(data, tmp_path):
    x, y = data
    # A vanishing SGD step leaves the weights unchanged, so validation never improves after epoch 1.
    cfg = tiny_config(epochs=20, optimizer="sgd", lr=1e-30, weight_decay=0.0, patience=3, warmup_epochs=0)
    _, result = train_classifier(x, y, ["h", "v"], cfg, out_dir=tmp_path, progress=False)
    assert result.stopped == "early_stopping"
    assert len(result.history) == 4
    assert result.best_epoch == 1
    assert json.loads((tmp_path / "history.json").read_text())["stopped"] == "early_stopping"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    x, y = data
    real_forward = losses.BCEWithLogitsLoss.forward
    calls = {"n": 0}
    steps_per_epoch = math.ceil(72 / 16)

    def poisoned(self, logits, targets):
        calls["n"] += 1
        value = real_forward(self, logits, targets)
        # training batches only (validation passes all 24 images at once): NaN in epoch 4
        return float("nan") if len(logits) != 24 and calls["n"] > 3 * (steps_per_epoch + 1) else value

    monkeypatch.setattr(losses.BCEWithLogitsLoss, "forward", poisoned)
    with pytest.raises(TrainingDiverged) as info:
        train_classifier(x, y, ["h", "v"], tiny_config(epochs=10), out_dir=tmp_path, progress=False)
    msg = str(info.value)
    assert "nan" in msg and "epoch 4" in msg and "last good checkpoint" in msg
    result = info.value.result
    assert len(result.history) == 3 and result.stopped == "diverged"
    monkeypatch.undo()
    model, meta = load_with_metadata(tmp_path / "model.npz")  # intact and loadable
    assert meta["epoch"] == result.best_epoch <= 3
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["stopped"] == "diverged" and len(doc["epochs"]) == 3


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the divergence prints no numpy warnings, only its message
def test_huge_learning_rate_diverges_with_clear_message(data, tmp_path):
    x, y = data
    cfg = tiny_config(epochs=30, optimizer="sgd", lr=1e12, warmup_epochs=0, dropout=0.0)
    with pytest.raises(TrainingDiverged, match=r"(loss became (nan|inf)|became non-finite).*smaller --lr"):
        train_classifier(x, y, ["h", "v"], cfg, out_dir=tmp_path, progress=False)


def test_classifier_rejects_a_model_file_without_classifier_metadata(tmp_path):
    from fastconv.layers import Flatten, Linear

    path = tmp_path / "other.npz"
    Sequential(Flatten(), Linear(3 * SIZE * SIZE, 1)).save(path)
    with pytest.raises(ValueError, match="not a fastconv classifier file"):
        Classifier.load(path)


def test_classifier_rejects_images_of_the_wrong_size(trained):
    out, _, _ = trained
    clf = Classifier.load(out / "model.npz")
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\)"):
        clf.predict(np.zeros((2, 3, 64, 64), np.float32))


def test_multiclass_uses_one_logit_per_class(tmp_path):
    x, y = stripes(48, seed=3)
    y3 = y.copy()
    y3[: len(y) // 3] = 2  # a third class: the model only needs the right output shape here
    model, _ = train_classifier(x, y3, ["a", "b", "c"], tiny_config(epochs=2), out_dir=tmp_path, progress=False)
    assert model.output_shape((3, SIZE, SIZE)) == (3,)
    proba = Classifier.load(tmp_path / "model.npz").predict_proba(x[:5])
    assert proba.shape == (5, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def _own_model(outputs: int, dropout_seed=None, rng=0) -> Sequential:
    from fastconv.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU

    return Sequential(Conv2d(3, 4, 3, padding=1, rng=rng), ReLU(), MaxPool2d(4), Flatten(),
                      Dropout(0.5, seed=dropout_seed), Linear(4 * 4 * 4, outputs, rng=rng + 1))  # fmt: skip


def test_fit_on_a_two_logit_model_writes_a_file_classifier_loads(data, tmp_path):
    # Two classes scored by two softmax logits (a user's own Linear(..., 2)) instead of one sigmoid logit.
    x, y = data
    norm = Normalizer().fit(x)
    meta = {"classes": ["h", "v"], "image_size": SIZE, "normalizer": norm.to_dict(), "tta": False}
    model = _own_model(2)
    fit(model, x, y, config=tiny_config(epochs=2), transform=norm, out_dir=tmp_path, metadata=meta, progress=False)
    clf = Classifier.load(tmp_path / "model.npz")
    proba = clf.predict_proba(x[:6])
    assert proba.shape == (6, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(x[:6]), proba.argmax(axis=1))
    three = tmp_path / "three.npz"
    _own_model(3).save(three, metadata=dict(meta, classes=["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match="names 4 classes, so the model needs 4 outputs; it has 3"):
        Classifier.load(three)


def test_fit_counts_outputs_from_the_models_output_shape_not_its_last_linear(data):
    # An all-convolutional model: its last layer with weights is a conv, its output 3 logits per image.
    from fastconv.layers import AvgPool2d, Conv2d, Flatten, Linear

    x, y = data
    y3 = (y + (np.arange(len(y)) % 3 == 0)) % 3
    model = Sequential(Conv2d(3, 3, 1, rng=0), AvgPool2d(SIZE), Flatten())
    result = fit(model, x, y3, x[:20], y3[:20], tiny_config(epochs=1), progress=False)
    assert np.isfinite(result.history[0]["val_loss"])
    # one logit per class: CrossEntropy over 3, whose loss at the start is near log 3, not a BCE
    assert abs(result.history[0]["train_loss"] - math.log(3)) < 0.5
    with pytest.raises(ValueError, match=r"input of shape \(3, 16, 16\) has shape \(1, 3, 1, 1\)"):
        fit(Sequential(Conv2d(3, 3, 1, rng=0), AvgPool2d(SIZE)), x, y3, config=tiny_config(epochs=1), progress=False)
    head_first = Sequential(Flatten(), Linear(3 * SIZE * SIZE, 2, rng=0))
    assert fit(head_first, x, y, config=tiny_config(epochs=1), progress=False).history


def test_fit_checks_labels_and_validation_pairs(data):
    x, y = data
    cfg = tiny_config(epochs=1)
    with pytest.raises(ValueError, match=r"y_train: class indices must lie in \[0, 2\)"):
        fit(_own_model(1), x, y + 1, config=cfg, progress=False)
    with pytest.raises(ValueError, match=r"y_train: expected 96 integer class indices"):
        fit(_own_model(1), x, y[:50], config=cfg, progress=False)
    with pytest.raises(ValueError, match="give both"):
        fit(_own_model(1), x, y, x[:10], None, cfg, progress=False)
    with pytest.raises(ValueError, match=r"y_val: class indices must lie in \[0, 3\)"):
        fit(_own_model(3), x, y, x[:10], np.full(10, 3), cfg, progress=False)
    # plain Python lists of labels are fine
    assert fit(_own_model(1), x, [int(v) for v in y], config=cfg, progress=False).history


def test_fit_counts_the_outputs_of_what_the_transform_hands_the_model(data):
    from fastconv.layers import Linear

    x, y = data  # (N, 3, 16, 16); the transform flattens, the model is a plain logistic regression
    model = Sequential(Linear(3 * SIZE * SIZE, 1, rng=0))
    result = fit(model, x, y, x[:10], y[:10], tiny_config(epochs=1),
                 transform=lambda a: a.reshape(len(a), -1), progress=False)  # fmt: skip
    assert np.isfinite(result.history[0]["val_loss"])


def test_every_fit_call_seeds_an_unseeded_dropout_from_its_own_config(data):
    x, y = data
    model = _own_model(1)
    fit(model, x, y, config=tiny_config(epochs=1), progress=False)
    state = model.state_dict()
    again = fit(model, x, y, config=tiny_config(epochs=1, seed=1), progress=False).history
    fresh = _own_model(1)
    fresh.load_state_dict(state)
    expected = fit(fresh, x, y, config=tiny_config(epochs=1, seed=1), progress=False).history
    assert [r["train_loss"] for r in again] == [r["train_loss"] for r in expected]


def test_fit_seeds_a_dropout_built_without_a_seed_from_the_config(data):
    x, y = data
    cfg = tiny_config(epochs=2)
    runs = [fit(_own_model(1), x, y, config=cfg, progress=False).history for _ in range(2)]
    assert [r["train_loss"] for r in runs[0]] == [r["train_loss"] for r in runs[1]]
    other = fit(_own_model(1), x, y, config=dataclasses.replace(cfg, seed=1), progress=False).history
    assert [r["train_loss"] for r in other] != [r["train_loss"] for r in runs[0]]
    # a Dropout seeded by its builder keeps its own stream: the run differs from the unseeded one's
    own = fit(_own_model(1, dropout_seed=7), x, y, config=cfg, progress=False).history
    assert [r["train_loss"] for r in own] != [r["train_loss"] for r in runs[0]]


def test_fit_seeds_an_unseeded_dropout_inside_a_residual_block(data):
    """The run's seed reaches a Dropout nested in a Residual block (Sequential.modules), so two
    runs of one config repeat each other exactly and another seed differs."""
    from fastconv.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Residual

    def model() -> Sequential:
        return Sequential(Conv2d(3, 4, 3, padding=1, rng=0), ReLU(),
                          Residual([Conv2d(4, 4, 3, padding=1, rng=1), Dropout(0.5)]), MaxPool2d(4), Flatten(),
                          Linear(4 * 4 * 4, 1, rng=2))  # fmt: skip

    x, y = data
    cfg = tiny_config(epochs=2)
    runs = [fit(model(), x, y, config=cfg, progress=False).history for _ in range(2)]
    assert [r["train_loss"] for r in runs[0]] == [r["train_loss"] for r in runs[1]]
    other = fit(model(), x, y, config=dataclasses.replace(cfg, seed=1), progress=False).history
    assert [r["train_loss"] for r in other] != [r["train_loss"] for r in runs[0]]


def test_a_direct_fit_records_no_network_setting_it_did_not_use(data, tmp_path):
    """fit() trains the model it is given: its checkpoint's fit_config leaves out the settings
    that only choose a network (arch, width, batchnorm, dropout), so a ResNet's file never
    claims arch 'catnet'."""
    x, y = data
    model = zoo.resnet(widths=(4, 8), seed=0)
    fit(model, x, y, x[:10], y[:10], tiny_config(epochs=1), out_dir=tmp_path, progress=False)
    meta = load_with_metadata(tmp_path / "model.npz")[1]
    assert not {"arch", "width", "batchnorm", "dropout"} & set(meta["fit_config"])
    assert meta["fit_config"]["epochs"] == 1


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")


def test_fit_without_validation_keeps_the_last_epoch(data, tmp_path):
    x, y = data
    model = zoo.catnet(image_size=SIZE, width=4, seed=0)
    cfg = tiny_config(epochs=2, val_fraction=0.0)
    result = fit(model, x, y, config=cfg, transform=Normalizer().fit(x), out_dir=tmp_path, progress=False)
    assert result.best_epoch == 2
    assert math.isnan(result.history[-1]["val_accuracy"])
    with open(tmp_path / "history.csv", newline="") as f:
        assert list(csv.DictReader(f))[-1]["val_accuracy"] == ""


def test_refit_trains_on_all_images_and_keeps_the_validation_checkpoint(data, tmp_path):
    x, y = data
    cfg = tiny_config(epochs=3, refit=True)
    model, result = train_classifier(x, y, ["h", "v"], cfg, out_dir=tmp_path, progress=False)
    final, meta = load_with_metadata(tmp_path / "model.npz")
    _, meta_val = load_with_metadata(tmp_path / "model_val.npz")
    assert meta["refit"] is True and meta_val["refit"] is False
    assert meta["train_size"] == 96 and meta_val["train_size"] == 72
    assert meta["validation_run"]["best_epoch"] == result.best_epoch == meta_val["epoch"]
    assert meta["epoch"] == 3  # the refit's last epoch, not a validation-selected one
    np.testing.assert_allclose(Normalizer.from_dict(meta["normalizer"]).mean, x.mean(axis=(0, 2, 3)), rtol=1e-5)
    refit_hist = json.loads((tmp_path / "history_refit.json").read_text())
    assert len(refit_hist["epochs"]) == 3 and refit_hist["epochs"][0]["val_accuracy"] is None
    assert len(json.loads((tmp_path / "history.json").read_text())["epochs"]) == 3
    assert not (tmp_path / ".refit").exists()
    assert result.checkpoint == tmp_path / "model_val.npz"  # where the validation run's best now is
    for a, b in zip(model.parameters(), final.parameters()):
        np.testing.assert_array_equal(a.data, b.data)  # the returned model is the shipped one


def test_refit_after_early_stopping_trains_as_many_epochs_as_the_validation_run(data, tmp_path):
    x, y = data
    cfg = tiny_config(epochs=20, refit=True, patience=1, lr=0.03)
    _, result = train_classifier(x, y, ["h", "v"], cfg, out_dir=tmp_path, progress=False)
    ran = len(result.history)
    assert result.stopped == "early_stopping" and ran < 20
    refit_hist = json.loads((tmp_path / "history_refit.json").read_text())
    assert len(refit_hist["epochs"]) == ran  # not the 20 the run was allowed
    assert load_with_metadata(tmp_path / "model.npz")[1]["epoch"] == ran


def test_a_diverging_refit_leaves_the_validation_checkpoint_and_no_hidden_folder(data, tmp_path, monkeypatch):
    import fastconv.train as T

    x, y = data
    real = T._non_finite_state
    calls = []

    def poisoned(model):
        calls.append(1)
        return "0.weight (Conv2d)" if len(calls) == 4 else real(model)  # the refit's first epoch

    monkeypatch.setattr(T, "_non_finite_state", poisoned)
    with pytest.raises(TrainingDiverged) as info:
        train_classifier(x, y, ["h", "v"], tiny_config(epochs=3, refit=True), out_dir=tmp_path, progress=False)
    msg = str(info.value)
    assert msg.startswith("refit on all images: training stopped: 0.weight (Conv2d) became non-finite at epoch 1")
    assert msg.endswith("model.npz is still the validation run's best checkpoint.") and ".refit" not in msg
    assert not (tmp_path / ".refit").exists()
    assert load_with_metadata(tmp_path / "model.npz")[1]["refit"] is False


def test_non_finite_weights_stop_training_even_when_the_loss_is_finite(data, tmp_path, monkeypatch):
    """BatchNorm's running variance can overflow while the loss stays finite; no checkpoint may
    hold it. Poisoned here in epoch 3; the kept checkpoint is from an earlier epoch and finite."""
    import fastconv.train as T

    x, y = data
    real = T._non_finite_state
    epochs_seen = []

    def poisoned(model):
        epochs_seen.append(1)
        if len(epochs_seen) == 3:
            bn = next(layer for layer in model.layers if hasattr(layer, "running_var"))
            bn.running_var[0] = np.inf
        return real(model)

    monkeypatch.setattr(T, "_non_finite_state", poisoned)
    with pytest.raises(TrainingDiverged, match=r"1\.running_var \(BatchNorm2d\) became non-finite at epoch 3"):
        train_classifier(x, y, ["h", "v"], tiny_config(epochs=6, batchnorm=True), out_dir=tmp_path, progress=False)
    model, meta = load_with_metadata(tmp_path / "model.npz")
    assert meta["epoch"] <= 2
    assert all(np.isfinite(arr).all() for arr in model.state_dict().values())


# ---------------------------------------------------------------------------------------------
# transfer learning: TrainConfig.init / Sequential.load_backbone


def _conv_state(model) -> dict[str, np.ndarray]:
    n = model.feature_layers()
    return {k: v for k, v in model.state_dict().items() if int(k.split(".")[0]) < n}


def test_load_backbone_copies_feature_layers_only_across_image_sizes(tmp_path):
    src = zoo.catnet(image_size=32, batchnorm=True, seed=1)
    bn = next(layer for layer in src.layers if type(layer).__name__ == "BatchNorm2d")
    bn.running_mean[:] = np.arange(bn.running_mean.size)  # buffers must travel too, not only parameters
    src.save(tmp_path / "src.npz", metadata={"dataset": "somewhere"})
    dst = zoo.catnet(image_size=64, batchnorm=True, seed=2)
    head_before = dst.layers[-1].weight.data.copy()
    meta = dst.load_backbone(tmp_path / "src.npz")
    assert meta["dataset"] == "somewhere"
    theirs, ours = _conv_state(src), _conv_state(dst)
    assert theirs.keys() == ours.keys() and any("running_mean" in k for k in ours)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    np.testing.assert_array_equal(dst.layers[-1].weight.data, head_before)  # the head keeps its own init


@pytest.mark.parametrize("other", [dict(width=8, batchnorm=True), dict(batchnorm=False)])
def test_load_backbone_rejects_other_feature_layers(tmp_path, other):
    zoo.catnet(**other).save(tmp_path / "other.npz")
    dst = zoo.catnet(batchnorm=True, seed=3)
    before = dst.state_dict()
    with pytest.raises(ValueError, match="feature layers differ"):
        dst.load_backbone(tmp_path / "other.npz")
    for key, value in dst.state_dict().items():
        np.testing.assert_array_equal(value, before[key])  # nothing modified


def test_resolve_init():
    from fastconv.train import PRETRAINED_BACKBONE, resolve_init

    assert resolve_init("auto", "catvnoncat") == str(PRETRAINED_BACKBONE)
    assert resolve_init("auto", "/photos/cats") is None
    # the backbone only fits catnet at its width with BatchNorm: DESIGN.md's plain catnet starts random
    assert resolve_init("auto", "catvnoncat", batchnorm=False) is None
    assert resolve_init("auto", "catvnoncat", width=8) is None
    assert resolve_init("pretrained", "/photos/cats") == str(PRETRAINED_BACKBONE)
    assert resolve_init("none", "catvnoncat") is None and resolve_init(None, "catvnoncat") is None
    with pytest.raises(FileNotFoundError, match=r"no-such\.npz"):
        resolve_init("no-such.npz", "catvnoncat")


def test_bundled_backbone_fits_the_default_catnet_at_any_image_size():
    from fastconv.train import PRETRAINED_BACKBONE

    for size in (64, 32):
        model = zoo.catnet(image_size=size, batchnorm=True, seed=0)
        random_init = _conv_state(model)
        meta = model.load_backbone(PRETRAINED_BACKBONE)
        changed = [k for k, v in _conv_state(model).items() if not np.array_equal(v, random_init[k])]
        assert len(changed) == len(random_init)
        assert set(meta["normalizer"]) >= {"mean", "std"}
    # docs/training.md: pretrained on the ten CIFAR-10 classes (cat + nine others), not cat/not-cat
    assert len(meta["classes"]) == 10 and "cat" in meta["classes"] and "dog" in meta["classes"]
    backbone, _ = load_with_metadata(PRETRAINED_BACKBONE)
    assert backbone.layers[-1].out_features == 10


def test_training_from_a_backbone_starts_from_its_weights_and_normaliser(data, tmp_path):
    x, y = data
    cfg = tiny_config(epochs=2, batchnorm=True, width=4)
    train_classifier(x, y, ["h", "v"], dataclasses.replace(cfg, init=None), out_dir=tmp_path / "a", progress=False)
    first, first_meta = load_with_metadata(tmp_path / "a" / "model.npz")
    # Zero epochs of learning would be ideal; lr ~ 0 is the closest: the weights stay where they started.
    cfg0 = dataclasses.replace(cfg, init=str(tmp_path / "a" / "model.npz"), lr=1e-12, weight_decay=0.0)
    model, _ = train_classifier(x[:40] * 0.5, y[:40], ["h", "v"], cfg0, out_dir=tmp_path / "b", progress=False)
    _, meta = load_with_metadata(tmp_path / "b" / "model.npz")
    assert meta["init"] == {"file": "model.npz", "dataset": ""}
    assert meta["normalizer"] == first_meta["normalizer"]  # not refitted on the (darker) new images
    for key, value in _conv_state(first).items():
        if "running" not in key:  # BatchNorm statistics keep moving in train mode
            np.testing.assert_allclose(_conv_state(model)[key], value, rtol=1e-6, atol=1e-9, err_msg=key)


def test_default_learning_rate_depends_on_the_start(data, tmp_path):
    from fastconv.train import LR_FINETUNE, LR_SCRATCH

    assert LR_FINETUNE < LR_SCRATCH
    x, y = data
    cfg = tiny_config(epochs=1, batchnorm=True, width=4, lr=None)
    train_classifier(x, y, ["h", "v"], cfg, out_dir=tmp_path / "a", progress=False)
    _, meta = load_with_metadata(tmp_path / "a" / "model.npz")
    assert meta["config"]["lr"] == LR_SCRATCH and meta["init"] is None
    cfg = dataclasses.replace(cfg, init=str(tmp_path / "a" / "model.npz"))
    train_classifier(x, y, ["h", "v"], cfg, out_dir=tmp_path / "b", progress=False)
    _, meta = load_with_metadata(tmp_path / "b" / "model.npz")
    assert meta["config"]["lr"] == LR_FINETUNE and meta["init"]["file"] == "model.npz"


def test_cross_validation_predicts_every_image_once_per_repetition_from_a_model_that_never_saw_it(
    data, monkeypatch
):
    import fastconv.train as T

    x, y = data
    x = x.copy()
    x[:, 0, 0, 0] = np.arange(len(x)) / len(x)  # pixel (0, 0) of channel 0 tags each image
    seen = []
    real_fit = T.fit

    def spy(model, x_train, *args, **kw):
        seen.append(set(np.rint(x_train[:, 0, 0, 0] * len(x)).astype(int).tolist()))
        return real_fit(model, x_train, *args, **kw)

    monkeypatch.setattr(T, "fit", spy)
    res = cross_validate(x, y, ["horizontal", "vertical"], tiny_config(epochs=2), folds=4, repeats=2)
    assert len(seen) == 8 and len(res.y) == 2 * len(x)
    for r in range(2):
        mine = res.repeat == r
        assert sorted(res.index[mine].tolist()) == list(range(len(x)))  # every image once
        for f in range(4):
            held = set(res.index[mine & (res.fold == f)].tolist())
            assert held and held.isdisjoint(seen[4 * r + f])  # its model never trained on it
            assert held | seen[4 * r + f] == set(range(len(x)))
    np.testing.assert_array_equal(res.y, y[res.index])
    # pooled scores, recomputed here from the held-out logits
    z = res.logits[:, 0]
    assert res.report().accuracy == pytest.approx(np.mean((z > 0) == (res.y == 1)))
    assert res.loss() == pytest.approx(np.mean(np.log1p(np.exp(-np.where(res.y == 1, z, -z)))))
    assert res.repeat_accuracies() == pytest.approx(
        [np.mean((z[res.repeat == r] > 0) == (res.y[res.repeat == r] == 1)) for r in range(2)]
    )


def test_cross_validation_repetitions_are_consecutive_seeds(data):
    x, y = data
    classes = ["horizontal", "vertical"]
    both = cross_validate(x, y, classes, tiny_config(epochs=2, seed=3), folds=3, repeats=2)
    second = cross_validate(x, y, classes, tiny_config(epochs=2, seed=4), folds=3, repeats=1)
    mine = both.repeat == 1
    np.testing.assert_array_equal(both.index[mine], second.index)
    np.testing.assert_array_equal(both.logits[mine], second.logits)
    assert not np.array_equal(both.index[~mine], second.index)  # repetition 0 drew other folds


def test_cross_validation_learns_the_separable_problem_and_rejects_bad_arguments(data):
    x, y = data
    res = cross_validate(x, y, ["horizontal", "vertical"], tiny_config(), folds=3)
    assert res.report().accuracy >= 0.9  # held-out images of a problem the model can learn
    d = res.to_dict()
    assert d["accuracy"] == res.report().accuracy and len(d["predictions"]["logits"]) == len(x)
    json.dumps(d)  # JSON-ready
    for folds in (1, 11):
        with pytest.raises(ValueError, match="folds"):
            cross_validate(x, y, ["horizontal", "vertical"], tiny_config(), folds=folds)
    with pytest.raises(ValueError, match="repeats"):
        cross_validate(x, y, ["horizontal", "vertical"], tiny_config(), folds=3, repeats=0)


def test_compare_cv_pairs_predictions_by_image_and_rejects_other_data(data):
    x, y = data
    classes = ["horizontal", "vertical"]
    a = cross_validate(x, y, classes, tiny_config(epochs=2), folds=3)
    b = cross_validate(x, y, classes, tiny_config(epochs=2, lr=1e-5), folds=3)  # barely trained
    doc = b.to_dict()
    # shuffle the other file's prediction order: pairing must go by (repetition, image), not position
    perm = np.random.default_rng(0).permutation(len(x))
    doc["predictions"] = {k: [v[i] for i in perm] for k, v in doc["predictions"].items()}
    c = compare_cv(a, doc)
    right_a = a.predicted() == a.y
    right_b = b.predicted() == b.y  # a and b list the images in the same order (same seed and folds)
    np.testing.assert_array_equal(a.index, b.index)
    assert c["ours_only"] == int(np.sum(right_a & ~right_b)) and c["theirs_only"] == int(np.sum(right_b & ~right_a))
    assert c["accuracy_difference"] == pytest.approx(right_a.mean() - right_b.mean())
    assert c["n"] == len(x) and 0.0 <= c["p_value"] <= 1.0
    assert compare_cv(a, a.to_dict())["p_value"] == 1.0  # identical runs: no discordant pairs
    flipped = a.to_dict()
    flipped["predictions"]["y"] = [1 - v for v in flipped["predictions"]["y"]]
    with pytest.raises(ValueError, match="other labels"):
        compare_cv(a, flipped)
    fewer = a.to_dict()
    fewer["predictions"] = {k: v[:-1] for k, v in fewer["predictions"].items()}
    with pytest.raises(ValueError, match="not for the same images"):
        compare_cv(a, fewer, name="fewer.json")
    with pytest.raises(ValueError, match=r"not a cv\.json"):
        compare_cv(a, {"accuracy": 0.9})


# --- weight averaging (TrainConfig.average_epochs) ---------------------------------------------


def test_weight_average_is_the_mean_of_the_last_epochs_steps_with_recomputed_batchnorm(data, tmp_path, monkeypatch):
    """The averaged run's weights equal the float64 mean of an identical plain run's weights
    after each step of the last N epochs (averaging must not change the trajectory), and its
    BatchNorm statistics are those of the averaged weights on the training images."""
    import fastconv.train as ftrain
    from fastconv.layers import BatchNorm2d
    from fastconv.train import recompute_batchnorm

    x, y = data
    norm = Normalizer().fit(x)
    cfg = dict(epochs=5, val_fraction=0.0, batchnorm=True)
    snapshots: list[list[np.ndarray]] = []
    make = ftrain._make_optimizer

    def recording(model, config):
        opt = make(model, config)
        inner = opt.step

        def step():
            inner()
            snapshots.append([p.data.astype(np.float64) for p in opt.params])

        opt.step = step
        return opt

    monkeypatch.setattr(ftrain, "_make_optimizer", recording)
    plain = zoo.catnet(image_size=SIZE, width=4, seed=0, batchnorm=True)
    fit(plain, x, y, config=tiny_config(**cfg), transform=norm, progress=False)
    monkeypatch.setattr(ftrain, "_make_optimizer", make)
    per_epoch = math.ceil(len(x) / 16)
    assert len(snapshots) == 5 * per_epoch

    avg = zoo.catnet(image_size=SIZE, width=4, seed=0, batchnorm=True)
    result = fit(avg, x, y, config=tiny_config(average_epochs=2, **cfg), transform=norm, out_dir=tmp_path,
                 progress=False)
    last = snapshots[3 * per_epoch:]
    assert result.averaged["steps"] == len(last) == 2 * per_epoch
    assert (result.averaged["first_epoch"], result.averaged["last_epoch"]) == (4, 5)
    for i, p in enumerate(avg.parameters()):
        expected = np.mean([s[i] for s in last], axis=0)
        np.testing.assert_allclose(p.data, expected, rtol=1e-6, atol=1e-7)
        assert not np.allclose(p.data, snapshots[-1][i]), "the average should differ from the last step"
    # Its running statistics: a fresh recomputation on the same weights gives the same values,
    # and they differ from the plain run's (collected along the trajectory, with momentum 0.1).
    bns = [layer for layer in avg.layers if isinstance(layer, BatchNorm2d)]
    stats = [(b.running_mean.copy(), b.running_var.copy()) for b in bns]
    recompute_batchnorm(avg, norm(x), 16)
    for b, (m, v) in zip(bns, stats):
        np.testing.assert_allclose(b.running_mean, m, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b.running_var, v, rtol=1e-6, atol=1e-6)
    plain_bn = next(layer for layer in plain.layers if isinstance(layer, BatchNorm2d))
    assert not np.allclose(plain_bn.running_mean, bns[0].running_mean, rtol=1e-3)
    # The checkpoint is the averaged model, and says so; the history records it.
    loaded, meta = load_with_metadata(tmp_path / "model.npz")
    for p, q in zip(loaded.parameters(), avg.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert meta["averaged"]["steps"] == 2 * per_epoch
    assert json.loads((tmp_path / "history.json").read_text())["averaged"]["first_epoch"] == 4


def test_recompute_batchnorm_averages_the_batch_statistics():
    from fastconv.layers import BatchNorm2d, Flatten, Linear
    from fastconv.train import recompute_batchnorm

    rng = np.random.default_rng(3)
    inputs = (rng.normal(size=(24, 3, 5, 4)) * [[[2.0]], [[0.5]], [[1.0]]] + [[[1.0]], [[-3.0]], [[0.0]]]).astype(
        np.float32
    )
    bn = BatchNorm2d(3, momentum=0.1)
    model = Sequential([bn, Flatten(), Linear(60, 1)])
    model.train()
    recompute_batchnorm(model, inputs, batch_size=8)
    batches = inputs.astype(np.float64).reshape(3, 8, 3, 5, 4)
    np.testing.assert_allclose(bn.running_mean, batches.mean(axis=(1, 3, 4)).mean(axis=0), rtol=1e-5)
    unbiased = batches.transpose(0, 2, 1, 3, 4).reshape(3, 3, -1).var(axis=2, ddof=1)
    np.testing.assert_allclose(bn.running_var, unbiased.mean(axis=0), rtol=1e-5)
    assert bn.momentum == 0.1 and not bn.training
    # The result does not depend on the statistics the layer had before.
    bn.running_mean[:] = 50.0
    recompute_batchnorm(model, inputs, batch_size=8)
    np.testing.assert_allclose(bn.running_mean, batches.mean(axis=(1, 3, 4)).mean(axis=0), rtol=1e-5)


def test_weight_averaging_config_is_checked():
    with pytest.raises(ValueError, match="average_epochs: expected at most epochs"):
        TrainConfig(epochs=10, average_epochs=11)
    with pytest.raises(ValueError, match="set patience to 0"):
        TrainConfig(epochs=10, average_epochs=5, patience=3)
    with pytest.raises(ValueError, match="average_epochs"):
        TrainConfig(average_epochs=-1)


# --- what fit() does inside one step (each test would fail on a plausible slip in the loop) ---


def _mirror_asymmetric_model(outputs: int = 1) -> Sequential:
    from fastconv.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU

    # no dropout, no BatchNorm: a step is a deterministic function of the batch
    return Sequential(Conv2d(3, 2, 3, rng=0), ReLU(), MaxPool2d(2), Flatten(), Linear(2 * 7 * 7, outputs, rng=1))


def test_tta_averages_the_logits_of_the_image_and_its_mirror(data, tmp_path):
    x, _ = data
    model = _mirror_asymmetric_model().astype(np.float64).eval()
    xs = x[:6].astype(np.float64)
    plain, mirrored = model(xs), model(np.ascontiguousarray(xs[..., ::-1]))
    assert np.abs(plain - mirrored).max() > 1e-3  # the model is not mirror-symmetric
    np.testing.assert_allclose(predict_logits(model, xs, tta=True), 0.5 * (plain + mirrored), rtol=1e-12)
    np.testing.assert_allclose(predict_logits(model, xs, tta=False), plain, rtol=1e-12)
    norm = Normalizer().fit(x)
    for tta in (True, False):
        path = tmp_path / f"tta{tta}.npz"
        model.save(path, metadata={"classes": ["h", "v"], "image_size": SIZE, "normalizer": norm.to_dict(), "tta": tta})
        z = 0.5 * (model(norm(xs)) + model(np.ascontiguousarray(norm(xs)[..., ::-1]))) if tta else model(norm(xs))
        p_cat = 1.0 / (1.0 + np.exp(-z[:, 0]))
        np.testing.assert_allclose(Classifier.load(path).predict_proba(xs)[:, 1], p_cat, rtol=1e-9)


def test_each_step_applies_the_gradient_of_its_own_augmented_batch(data, monkeypatch):
    """Records what fit feeds the model and the loss, and at every optimizer step recomputes the
    gradient of that batch alone on a copy of the weights: a missing zero_grad, augmentation not
    applied, smoothing ignored or the wrong optimizer would each break one assertion."""
    import fastconv.train as T
    from fastconv import optim

    x, y = data
    model = _mirror_asymmetric_model().astype(np.float64)
    norm = Normalizer().fit(x)
    cfg = tiny_config(epochs=2, max_shift=0, label_smoothing=0.2, lr=0.05, warmup_epochs=0, val_fraction=0.0)
    batch = {}
    first = model.layers[0]
    real_forward = first.forward

    def record_input(inp):
        if first.training:
            batch["x"] = inp.copy()
        return real_forward(inp)

    monkeypatch.setattr(first, "forward", record_input)
    real_loss = T._make_loss

    def make_loss(*args):
        loss = real_loss(*args)
        forward = loss.forward

        def record_targets(logits, targets):
            batch["t"] = np.array(targets, copy=True)
            return forward(logits, targets)

        loss.forward = record_targets
        return loss

    monkeypatch.setattr(T, "_make_loss", make_loss)
    steps = []
    real_make_optimizer = T._make_optimizer

    def make_optimizer(m, config):
        opt = real_make_optimizer(m, config)
        real_step = opt.step

        def step():
            clone = _mirror_asymmetric_model().astype(np.float64)
            clone.load_state_dict(m.state_dict())
            lf = losses.BCEWithLogitsLoss()
            lf.forward(clone(batch["x"]), batch["t"])
            clone.zero_grad()
            clone.backward(lf.backward())
            for p, q in zip(m.parameters(), clone.parameters()):
                np.testing.assert_allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12)
            steps.append((batch["x"], batch["t"]))
            real_step()

        opt.step = step
        steps.append(opt)
        return opt

    monkeypatch.setattr(T, "_make_optimizer", make_optimizer)
    fit(model, x, y, config=cfg, transform=norm, progress=False)
    opt, recorded = steps[0], steps[1:]
    assert type(opt) is optim.AdamW and opt.weight_decay == cfg.weight_decay
    assert len(recorded) == 2 * math.ceil(len(x) / cfg.batch_size)
    # smoothing 0.2 moves the binary targets to 0.1 and 0.9
    assert set(np.unique(np.concatenate([t for _, t in recorded]))) == {0.1, 0.9}
    # flip-only augmentation: every input is a normalised training image or its mirror, some mirrored
    plain = {img.tobytes() for img in norm(x).astype(np.float64)}
    flipped = {np.ascontiguousarray(img[..., ::-1]).tobytes() for img in norm(x).astype(np.float64)}
    rows = [img.tobytes() for xb, _ in recorded for img in xb]
    assert all(r in plain or r in flipped for r in rows)
    assert sum(r in flipped and r not in plain for r in rows) > len(rows) // 4


@pytest.mark.parametrize(
    "name, cls, extra", [("adamw", "AdamW", {}), ("adam", "Adam", {}), ("sgd", "SGD", {"nesterov": True})]
)
def test_the_configured_optimizer_is_built_with_the_configured_settings(name, cls, extra):
    import fastconv.train as T
    from fastconv import optim

    model = _mirror_asymmetric_model()
    opt = T._make_optimizer(model, TrainConfig(optimizer=name, lr=0.03, weight_decay=0.07, momentum=0.8))
    assert type(opt) is getattr(optim, cls)
    assert opt.lr == 0.03 and opt.weight_decay == 0.07
    assert opt.params == model.parameters()
    for key, value in extra.items():
        assert getattr(opt, key) == value
    if name == "sgd":
        assert opt.momentum == 0.8


@pytest.mark.parametrize("monitor, best", [("val_loss", 2), ("val_accuracy", 3)])
def test_the_monitor_decides_which_epoch_is_kept(data, tmp_path, monkeypatch, monitor, best):
    import fastconv.train as T

    # scripted validation scores on which the two monitors disagree (accuracy ties: lower loss)
    scores = iter([(0.90, 0.50), (0.85, 0.30), (0.95, 0.60), (0.95, 0.70)])
    monkeypatch.setattr(
        T, "_validation_scores",
        lambda *a, **k: dict(zip(("val_accuracy", "val_loss"), next(scores)), val_f1=0.5),
    )  # fmt: skip
    x, y = data
    _, result = train_classifier(x, y, ["h", "v"], tiny_config(epochs=4, monitor=monitor), out_dir=tmp_path,
                                 progress=False)  # fmt: skip
    assert result.best_epoch == best
    assert load_with_metadata(tmp_path / "model.npz")[1]["epoch"] == best


def test_pos_weight_balanced_weighs_the_classes_of_the_labels_fit_trains_on(data, monkeypatch):
    import fastconv.train as T

    x, y = data
    keep = np.flatnonzero((y == 0) | (np.arange(len(y)) % 3 == 0))  # fewer positives than negatives
    xs, ys = x[keep], y[keep]
    made = []
    real = T._make_loss

    def spy(*args):
        made.append(args)
        return real(*args)

    monkeypatch.setattr(T, "_make_loss", spy)
    fit(_own_model(1), xs, ys, xs[:8], ys[:8], tiny_config(epochs=1, pos_weight="balanced"), progress=False)
    negatives, positives = int(np.sum(ys == 0)), int(np.sum(ys == 1))
    assert positives < negatives
    assert made[0] == (1, 0.0, negatives / positives)  # the training loss
    assert all(len(args) == 1 for args in made[1:])  # validation loss: plain BCE
    made.clear()
    fit(_own_model(1), xs, ys, config=tiny_config(epochs=1, pos_weight=2.5), progress=False)
    assert made[0] == (1, 0.0, 2.5)
    with pytest.raises(ValueError, match="applies to a binary model"):
        fit(_own_model(3), xs, ys, config=tiny_config(epochs=1, pos_weight="balanced"), progress=False)
    with pytest.raises(ValueError, match="hold 0 of 5 positives"):
        T.resolve_pos_weight("balanced", np.zeros(5, np.int64))
    for bad in (0, -1.0, "heavy", float("inf"), True):
        with pytest.raises(ValueError, match="pos_weight"):
            TrainConfig(pos_weight=bad)


def test_pos_weight_scales_the_gradient_of_the_positive_examples(rng):
    # BCE with pos_weight w: dL/dz = (1 - t) s - w t (1 - s), per example, over N
    z, t = rng.standard_normal((6, 1)), np.array([1, 0, 1, 1, 0, 0.0])
    loss = losses.BCEWithLogitsLoss(pos_weight=3.0)
    loss.forward(z, t)
    s = 1 / (1 + np.exp(-z[:, 0]))
    np.testing.assert_allclose(loss.backward()[:, 0], ((1 - t) * s - 3.0 * t * (1 - s)) / 6, rtol=1e-12)


@pytest.mark.parametrize(
    "kw,label",
    [
        ({"refit": True}, "model_val.npz"),
        ({"refit": False}, "model.npz"),
        ({"refit": True, "val_fraction": 0.0}, "model.npz"),
        ({"refit": False, "average_epochs": 1}, None),
    ],
)
def test_curves_name_the_file_that_holds_the_marked_epoch(data, tmp_path, monkeypatch, kw, label):
    # with a refit model.npz is the refit's last epoch and the marked (best) epoch is model_val.npz;
    # without validation there is no refit; a weight average is no epoch's weights
    import fastconv.train as T

    calls = []
    monkeypatch.setattr(T, "plot_curves", lambda history, best, kept=None: calls.append(kept) or b"png")
    x, y = data
    train_classifier(x, y, ["horizontal", "vertical"], tiny_config(epochs=2, **kw), out_dir=tmp_path, progress=False)
    assert calls and calls[-1] == label
    assert (tmp_path / "model.npz").is_file() and (tmp_path / "model_val.npz").is_file() == (label == "model_val.npz")
