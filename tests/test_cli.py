"""The train / evaluate / predict / demo commands, run in-process through fastconv.cli.main."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import cli
from fastconv.train import BUNDLED_MODEL

#: CLI options of a tiny, fast training run on the 16x16 stripes folder (later options win)
TINY = "--image-size 16 --epochs 2 --width 4 --no-refit --quiet"
SAMPLES = Path(__import__("skimage.data").data.__file__).resolve().parent


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "predict", "demo"):
        assert re.search(rf"^\s+{name}\s+\S", out, re.MULTILINE), f"{name} missing from --help"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("train", ["--epochs", "default 0.0005 when", "0.002 from random", "(default: auto)",
                   "--out", "runs/catnet", "--val-fraction", "(default: 0.2)"]),
        ("evaluate", ["--model", "bundled", "--data", "catvnoncat"]),
        ("predict", ["--model", "bundled"]),
        ("demo", ["scikit-image", "--repeats", "(default: 5)"]),
    ],
)
def test_subcommand_help_states_defaults(capsys, command, expected):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in expected:
        assert text in out, f"{command} --help lacks {text!r}"
    assert "default" in out


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_subcommand_help_never_shows_default_none(capsys, command):
    # Options whose default is computed at run time describe it in words; "(default: None)"
    # next to "default: the bundled model" would contradict the text. On/off flags say nothing.
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: None" not in out and "(default: False)" not in out and "(default: [])" not in out
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    valued = [a for a in sub.choices[command]._actions
              if a.nargs != 0 and a.default not in (None, [], argparse.SUPPRESS)]
    for action in valued:  # every option with a fixed default states it
        assert f"(default: {action.default})" in out, (command, action.option_strings)
    assert valued or command == "info"  # info has flags only


def _independent_predictions(model_path: Path, x_nhwc_uint8: np.ndarray) -> np.ndarray:
    """Predicted labels computed here from the raw file: normalise with the stored statistics,
    average the logits of the image and its mirror when the file says so, threshold at 0."""
    model, meta = fastconv.model.load_with_metadata(model_path)
    x = x_nhwc_uint8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    mean = np.array(meta["normalizer"]["mean"], np.float32)[None, :, None, None]
    std = np.array(meta["normalizer"]["std"], np.float32)[None, :, None, None]
    z = (x - mean) / std
    logits = model.forward(np.ascontiguousarray(z))[:, 0].astype(np.float64)
    if meta["tta"]:
        logits = 0.5 * (logits + model.forward(np.ascontiguousarray(z[..., ::-1]))[:, 0])
    return (logits > 0).astype(np.int64)


def test_evaluate_bundled_model_on_catvnoncat_test_split(capsys, data_dir):
    import h5py

    with h5py.File(data_dir / "catvnoncat" / "test_catvnoncat.h5", "r") as f:
        x, y = f["test_set_x"][()], f["test_set_y"][()].astype(np.int64)
    pred = _independent_predictions(BUNDLED_MODEL, x)
    code, out, _ = run_cli(capsys, "evaluate", "--data", str(data_dir / "catvnoncat"))
    assert code == 0
    assert f"accuracy: {np.mean(pred == y):.3f}" in out
    tp = int(np.sum((pred == 1) & (y == 1)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    assert f"precision: {tp / max(tp + fp, 1):.3f}" in out
    row_cat = next(line for line in out.splitlines() if line.startswith("cat "))
    assert row_cat.split()[1:] == [str(int(np.sum((y == 1) & (pred == 0)))), str(tp)]
    assert "samples: 50" in out


def test_evaluate_split_all_on_catvnoncat_says_it_is_the_training_file(capsys, data_dir):
    code, out, _ = run_cli(capsys, "evaluate", "--data", str(data_dir / "catvnoncat"), "--split", "all")
    assert code == 0
    assert "data: catvnoncat training file (train + val), 209 images" in out


def test_evaluate_json(capsys, data_dir):
    import h5py

    with h5py.File(data_dir / "catvnoncat" / "test_catvnoncat.h5", "r") as f:
        x, y = f["test_set_x"][()], f["test_set_y"][()].astype(np.int64)
    pred = _independent_predictions(BUNDLED_MODEL, x)
    code, out, _ = run_cli(capsys, "evaluate", "--data", str(data_dir / "catvnoncat"), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["classes"] == ["non-cat", "cat"]
    assert doc["confusion_matrix"] == [[int(np.sum((y == t) & (pred == p))) for p in (0, 1)] for t in (0, 1)]
    assert doc["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    tp, fp, fn = (int(np.sum((pred == a) & (y == b))) for a, b in ((1, 1), (1, 0), (0, 1)))
    assert doc["precision"] == pytest.approx(tp / max(tp + fp, 1), abs=1e-12)
    assert doc["recall"] == pytest.approx(tp / max(tp + fn, 1), abs=1e-12)
    assert doc["tta"] is True


def test_predict_folder_with_bad_files(capsys, tmp_path):
    shutil.copy(SAMPLES / "chelsea.png", tmp_path / "chelsea.png")
    shutil.copy(SAMPLES / "coffee.png", tmp_path / "coffee.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    code, out, err = run_cli(capsys, "predict", str(tmp_path))
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("chelsea.png", "coffee.png")):
        m = re.fullmatch(rf".*{name}: (cat|non-cat) (\d+\.\d)%", line)
        assert m, line
        assert 50.0 <= float(m.group(2)) <= 100.0  # the predicted class has the larger probability
    assert "broken.jpg: error: not a readable image" in err
    assert "pip install" not in err  # imageio's plugin advice is not for a broken file
    assert "notes.txt" in err and "not an image" in err
    assert "gone.jpg: error: broken symbolic link" in err


# imageio's DICOM plugin announces its deprecation when asked to read a non-image file
@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning")
def test_predict_nothing_readable_fails(capsys, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"nope")
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "broken.png"), str(tmp_path / "missing.jpg"))
    assert code != 0
    assert out == ""
    assert "broken.png" in err and "missing.jpg" in err


def test_demo_classifies_the_sample_photos(capsys):
    code, out, _ = run_cli(capsys, "demo", "--no-python", "--repeats", "2")
    assert code == 0
    rows = {m.group(1): m for m in re.finditer(r"^\s+(\w+)\s+(cat|non-cat)\s+(\d+\.\d)%\s+expected (\S+)", out, re.M)}
    assert {"chelsea", "coffee", "astronaut", "rocket"} <= set(rows)
    for m in rows.values():
        assert 50.0 <= float(m.group(3)) <= 100.0
    assert rows["chelsea"].group(4) == "cat" and rows["coffee"].group(4) == "non-cat"
    assert rows["chelsea"].group(2) == "cat"  # the bundled model gets the cat right (checked after training)
    for backend in fastconv.available_backends():
        if backend != "python":
            assert re.search(rf"^\s+{backend}\s+\d+\.\d+ ms\s+[\d.e+-]+ GFLOP/s", out, re.M), backend


def _write_stripes_folder(root: Path, n: int = 24) -> None:
    from skimage.io import imsave
    from test_train import stripes  # tests/ is on sys.path under pytest

    x, y = stripes(n, seed=5)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / ("vertical" if label else "horizontal")
        folder.mkdir(parents=True, exist_ok=True)
        imsave(folder / f"{i}.png", (img.transpose(1, 2, 0) * 255).astype(np.uint8), check_contrast=False)
    (root / "vertical" / "README.txt").write_text("not an image")


def test_train_on_a_folder_then_evaluate_its_validation_split(capsys, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    code, stdout, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split())
    assert code == 0, err
    assert "README.txt" in err  # skipped files are named
    for name in ("model.npz", "history.json", "history.csv", "curves.png"):
        assert (out / name).is_file()
    meta = fastconv.model.load_with_metadata(out / "model.npz")[1]
    assert meta["classes"] == ["horizontal", "vertical"]
    assert meta["image_size"] == 16 and meta["tta"] is True
    assert meta["config"]["epochs"] == 2 and meta["config"]["seed"] == 0
    assert set(meta["normalizer"]) == {"mean", "std"}
    code, stdout, _ = run_cli(
        capsys, "evaluate", "--model", str(out / "model.npz"), "--data", str(data), "--split", "val", "--json"
    )
    assert code == 0
    doc = json.loads(stdout)
    hist = json.loads((out / "history.json").read_text())
    best = hist["epochs"][hist["best_epoch"] - 1]
    assert doc["accuracy"] == pytest.approx(best["val_accuracy"])  # the same held-out images
    assert sum(map(sum, doc["confusion_matrix"])) == 4  # round(0.2 * 12) = 2 per class, 2 classes


def test_evaluate_refuses_to_recreate_a_split_on_other_data(capsys, tmp_path):
    # --split val re-creates the training run's split; on another folder (here: a part of the
    # training folder, all of whose images were trained on) it would report "held-out" accuracy
    # on trained images
    data, out, part = tmp_path / "data", tmp_path / "run", tmp_path / "part"
    _write_stripes_folder(data)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split())
    assert code == 0, err
    for cls in ("horizontal", "vertical"):
        (part / cls).mkdir(parents=True)
        for f in sorted((data / cls).glob("*.png"))[:3]:
            (part / cls / f.name).write_bytes(f.read_bytes())
    for split in ("val", "train"):
        args = ("evaluate", "--model", str(out / "model.npz"), "--data", str(part), "--split", split)
        code, _, err = run_cli(capsys, *args)
        assert code == 1 and "was trained on 24 images" in err and "has 6" in err
    code, _, err = run_cli(capsys, "evaluate", "--model", str(out / "model.npz"), "--data", str(part), "--split", "all")
    assert code == 0, err
    # the bundled catvnoncat model on a cat / not-cat folder: another dataset altogether
    for old, new in (("vertical", "cat"), ("horizontal", "not-cat")):
        (part / old).rename(part / new)
    code, _, err = run_cli(capsys, "evaluate", "--data", str(part), "--split", "train")
    assert code == 1 and "was trained on catvnoncat, not on" in err


@pytest.mark.parametrize("refit", ["--refit", "--no-refit"])
def test_train_prints_an_evaluate_command_that_works(capsys, tmp_path, refit):
    # After a refit, model.npz has trained on the validation images and evaluate refuses its
    # validation split; the hint must name the checkpoint that held them out.
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    code, stdout, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split(), refit)
    assert code == 0, err
    hint = re.search(r"^next: fastconv (evaluate .*)$", stdout, re.MULTILINE)
    assert hint, stdout
    argv = shlex.split(hint.group(1))
    assert argv[argv.index("--model") + 1].endswith("model_val.npz" if refit == "--refit" else "model.npz")
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "accuracy:" in stdout


def test_train_cv_reports_pooled_held_out_scores_and_writes_them(capsys, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    code, stdout, err = run_cli(
        capsys, "train", "--data", str(data), "--out", str(out), *TINY.split(), "--cv", "3", "--cv-repeats", "2"
    )
    assert code == 0, err
    assert not (out / "model.npz").exists()  # cross-validation trains no model to ship
    doc = json.loads((out / "cv.json").read_text())
    assert doc["folds"] == 3 and doc["repeats"] == 2 and len(doc["predictions"]["y"]) == 48
    z = np.array(doc["predictions"]["logits"])[:, 0]
    yy = np.array(doc["predictions"]["y"])
    assert doc["accuracy"] == pytest.approx(np.mean((z > 0) == (yy == 1)))
    assert f"accuracy: {doc['accuracy']:.3f}" in stdout
    assert "accuracy per repetition:" in stdout and "true \\ predicted" in stdout
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split(), "--cv", "11")
    assert code != 0 and "from 2 to 10, got 11" in err
    # a second recipe on the same folds, paired with the first run's predictions
    out2 = tmp_path / "run2"
    code, stdout, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out2), *TINY.split(), "--cv", "3",
                                "--cv-repeats", "2", "--lr", "1e-6", "--compare", str(out / "cv.json"))
    assert code == 0, err
    assert "folds differ" not in err  # same folds and seed: no note
    doc2 = json.loads((out2 / "cv.json").read_text())
    right1 = (z > 0) == (yy == 1)
    right2 = (np.array(doc2["predictions"]["logits"])[:, 0] > 0) == (yy == 1)
    assert doc2["compare"]["ours_only"] == int(np.sum(right2 & ~right1))
    assert doc2["compare"]["theirs_only"] == int(np.sum(right1 & ~right2))
    assert f"exact McNemar p = {doc2['compare']['p_value']:.3g}" in stdout
    # other folds still pair by image, with a note that the comparison is less sensitive
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run3"), *TINY.split(),
                           "--cv", "2", "--cv-repeats", "2", "--compare", str(out / "cv.json"))
    assert code == 0 and "used 3 folds and seed 0, this run 2 and 0" in err and "folds differ" in err
    for bad, words in ((["--compare", str(out / "cv.json")], "needs --cv"),
                       (["--cv", "3", "--compare", str(tmp_path / "missing.json")], "cannot read it")):
        code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out2), *TINY.split(), *bad)
        assert code != 0 and words in err


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the divergence prints no numpy warnings, only its message
def test_train_with_a_huge_learning_rate_stops_cleanly(capsys, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    huge = "--epochs 20 --optimizer sgd --lr 1e12 --warmup-epochs 0 --dropout 0"
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split(), *huge.split())
    assert code == 1
    assert "became" in err and "smaller --lr" in err


def test_evaluate_rejects_a_model_of_another_architecture(capsys, tmp_path):
    from fastconv.layers import Flatten, Linear
    from fastconv.model import Sequential

    path = tmp_path / "mlp.npz"
    Sequential(Flatten(), Linear(12, 1)).save(path, metadata={"note": "not a classifier"})
    code, _, err = run_cli(capsys, "evaluate", "--model", str(path))
    assert code == 1
    assert "not a fastconv classifier file" in err


def test_the_bundled_model_evaluates_a_cat_not_cat_folder(capsys, tmp_path):
    """README names the negative folder not-cat/; catvnoncat calls it non-cat. Both mean "not a
    cat", so the bundled model scores such a folder, and says how it matched the names."""
    from fastconv.data import load_image
    from fastconv.train import Classifier

    truth = {"chelsea.png": 1, "coffee.png": 0, "astronaut.png": 0, "rocket.jpg": 0}
    for name, label in truth.items():
        folder = tmp_path / ("cat" if label else "not-cat")
        folder.mkdir(exist_ok=True)
        shutil.copy(SAMPLES / name, folder / name)
    code, out, err = run_cli(capsys, "evaluate", "--data", str(tmp_path), "--json")
    assert code == 0, err
    assert "'not-cat' is the model's 'non-cat'" in err
    doc = json.loads(out)
    clf = Classifier.load(BUNDLED_MODEL)
    pred = clf.predict(np.stack([load_image(SAMPLES / n, clf.image_size) for n in truth]))
    assert doc["accuracy"] == pytest.approx(np.mean(pred == np.array(list(truth.values()))))
    assert sum(map(sum, doc["confusion_matrix"])) == 4


def test_demo_accepts_a_cat_model_whose_negative_class_is_not_cat(capsys, tmp_path):
    model, meta = fastconv.model.load_with_metadata(BUNDLED_MODEL)
    meta["classes"] = ["not-cat", "cat"]  # what a model trained on a cat/ + not-cat/ folder stores
    model.save(tmp_path / "m.npz", metadata=meta)
    code, out, _ = run_cli(capsys, "demo", "--no-bench", "--model", str(tmp_path / "m.npz"))
    assert code == 0
    code0, out0, _ = run_cli(capsys, "demo", "--no-bench")
    assert code0 == 0
    tally = re.search(r"(\d+)/(\d+) as expected", out)
    assert tally and tally.group(0) == re.search(r"\d+/\d+ as expected", out0).group(0)
    assert "expected not-cat" in out and "expected non-cat" not in out


def test_threads_beyond_the_limit_name_the_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--threads", "100000"])
    assert exc.value.code == 2
    assert "argument --threads: expected an int from 1 to" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--batch-size", "-3", "x.jpg"],
        ["predict", "--batch-size", "0", "x.jpg"],
        ["evaluate", "--batch-size", "-1"],
        ["demo", "--repeats", "0"],
        ["train", "--image-size", "0"],
        ["train", "--epochs", "0"],
        ["train", "--threads", "0"],
        ["train", "--width", "0"],
        ["train", "--batch-size", "-4"],
        ["pictures", "--image-size", "-2"],
        ["bench", "--repeats", "two"],
    ],
)
def test_counts_and_sizes_must_be_positive(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2  # argparse's usage error, before any work
    err = capsys.readouterr().err
    assert f"argument {argv[1]}: expected a positive integer, got '{argv[2]}'" in err


@pytest.mark.parametrize("value", ["heavy", "0", "-2", "inf", "nan"])
def test_pos_weight_is_balanced_or_a_positive_number(capsys, value):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--pos-weight", value])
    assert exc.value.code == 2
    assert f"argument --pos-weight: expected 'balanced' or a positive number, got '{value}'" in capsys.readouterr().err


def test_pictures_rejects_an_image_size_the_model_cannot_take(capsys, tmp_path):
    code, _, err = run_cli(capsys, "pictures", "--image-size", "32", "--out", str(tmp_path))
    assert code == 1
    assert "does not take 32x32 images" in err and "trained at 64x64" in err


def test_evaluate_rejects_data_with_other_classes(capsys, tmp_path, data_dir):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    assert run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split(), "--epochs", "1")[0] == 0
    model = str(out / "model.npz")
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", str(data_dir / "catvnoncat"))
    assert code == 1
    assert "classes" in err  # catvnoncat's classes are not the model's


def test_refit_model_files_and_no_fake_validation_metrics(capsys, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split(), "--refit")
    assert code == 0, err
    assert (out / "model_val.npz").is_file() and (out / "history_refit.csv").is_file()
    assert fastconv.model.load_with_metadata(out / "model.npz")[1]["train_size"] == 24  # every image
    code, _, err = run_cli(capsys, "evaluate", "--model", str(out / "model.npz"), "--data", str(data), "--split", "val")
    assert code == 1 and "not held out" in err


def test_info_reports_what_this_process_really_uses(capsys):
    import fastconv.kernels as K
    from fastconv.kernels import _openmp

    code, out, _ = run_cli(capsys, "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["backends"] == K.available_backends()
    assert info["default_backend"] == K.get_default_backend()
    assert info["threads"] == K.get_num_threads()
    assert info["openmp"].startswith("yes" if _openmp.openmp_enabled() else "no")
    if "cython" in info["backends"]:
        from fastconv.kernels import cython_backend

        assert info["cython_simd"].split()[0] == cython_backend._conv.simd()
        assert cython_backend._conv.simd() in ("sse2", "avx2+fma")


@pytest.mark.parametrize(
    "path, owner",
    [("/v/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_.so", "numpy"),
     ("/v/lib/python3.11/site-packages/numpy/.libs/libopenblas.so", "numpy"),
     ("/usr/lib/python3/dist-packages/scipy.libs/libopenblas.so", "scipy"),
     ("/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "system"), ("/opt/conda/lib/libmkl_rt.so", "system")],
)  # fmt: skip
def test_info_names_the_package_that_shipped_a_blas(path, owner):
    from fastconv.commands.info import _blas_owner

    assert _blas_owner({"filepath": path}) == owner


def test_info_lists_numpys_blas_first_and_names_each_owner(monkeypatch, capsys):
    # fastconv's matrix products go through numpy's BLAS; SciPy's (loaded by scikit-image) may be
    # listed before it by load order, with a thread count of its own
    from fastconv.kernels import _threads

    libs = [
        {"user_api": "blas", "internal_api": "openblas", "version": "0.3.30", "num_threads": 1,
         "filepath": "/x/site-packages/scipy.libs/libscipy_openblas.so"},
        {"user_api": "openmp", "internal_api": "openmp", "filepath": "/usr/lib/libgomp.so.1"},
        {"user_api": "blas", "internal_api": "openblas", "version": "0.3.31", "num_threads": 2,
         "filepath": "/x/site-packages/numpy.libs/libscipy_openblas64_.so"},
    ]  # fmt: skip
    monkeypatch.setattr(_threads, "blas_info", lambda: libs)
    code, out, _ = run_cli(capsys, "info", "--json")
    assert code == 0
    blas = json.loads(out)["blas"]
    assert len(blas) == 2
    assert blas[0].startswith("openblas 0.3.31 (numpy:") and "2 threads" in blas[0]
    assert blas[1].startswith("openblas 0.3.30 (scipy:") and "1 threads" in blas[1]
    code, out, _ = run_cli(capsys, "info")
    line = next(x for x in out.splitlines() if x.startswith("blas"))
    assert line.index("(numpy:") < line.index("(scipy:")


@pytest.mark.parametrize("flag", ["--no-batchnorm", "--width=8"])
def test_design_catnet_trains_on_catvnoncat_from_random_weights(capsys, data_dir, tmp_path, flag):
    # 'auto' picks the bundled backbone only for the architecture it fits (width 16, BatchNorm);
    # DESIGN.md's plain catnet (and other widths) start from random weights instead of failing
    args = ("train", "--data", str(data_dir / "catvnoncat"), "--epochs", "1", "--no-refit", flag)
    code, _, err = run_cli(capsys, *args, "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "conv layers from random initialisation" in err
    meta = fastconv.model.load_with_metadata(tmp_path / "run" / "model.npz")[1]
    assert meta["init"] is None


def test_train_arch_resnet_trains_loads_and_evaluates(capsys, data_dir, tmp_path):
    """--arch resnet: the same recipe on zoo.resnet (residual blocks, width --width), from random
    weights ('auto' has no backbone for it); the file loads as that network and evaluates."""
    args = ("train", "--data", str(data_dir / "catvnoncat"), "--epochs", "1", "--no-refit", "--arch", "resnet",
            "--width", "4", "--out", str(tmp_path / "run"))  # fmt: skip
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "training resnet" in err and "conv layers from random initialisation" in err
    model, meta = fastconv.model.load_with_metadata(tmp_path / "run" / "model.npz")
    assert meta["architecture"] == "resnet" and meta["init"] is None and meta["config"]["arch"] == "resnet"
    want = fastconv.zoo.resnet(widths=(4, 8, 16), dropout=0.5).architecture()
    assert model.architecture() == want
    code, out, err = run_cli(capsys, "evaluate", "--model", str(tmp_path / "run" / "model.npz"),
                             "--data", str(data_dir / "catvnoncat"), "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["images"] == 50
    code, out, err = run_cli(capsys, *args[:-2], "--refit", "--out", str(tmp_path / "refit"))
    assert code == 0 and "refit: training a fresh resnet on all 209 images" in out + err
    for extra, words in [(("--no-batchnorm",), "--no-batchnorm (batchnorm=False) applies to catnet only"),
                         (("--init", "pretrained"), "the bundled backbone is a catnet's, not a resnet's")]:  # fmt: skip
        code, _, err = run_cli(capsys, *args, *extra)
        assert code == 1 and words in err


BAD_ENVIRONMENT = [
    ("FASTCONV_BACKEND", "nonsense", "FASTCONV_BACKEND='nonsense'"),
    ("FASTCONV_NUM_THREADS", "0", "FASTCONV_NUM_THREADS"),
]


@pytest.mark.parametrize("var,value,message", BAD_ENVIRONMENT)
def test_bad_environment_is_named_not_blamed_on_the_model(capsys, monkeypatch, tmp_path, var, value, message):
    from fastconv.kernels import _registry, _threads
    from skimage.io import imsave

    monkeypatch.setenv(var, value)
    monkeypatch.setattr(_registry, "_default", None)  # resolved afresh from the environment
    monkeypatch.setattr(_threads, "_num_threads", None)
    image = tmp_path / "x.png"
    imsave(image, np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    code, _, err = run_cli(capsys, "predict", str(image))
    assert code == 1 and message in err and "catnet.npz" not in err
    # info, where a user looks next, reports it instead of failing
    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "error: " in out and message in out


def test_data_naming_the_other_splits_file_or_a_stray_file_is_refused(capsys, data_dir, tmp_path):
    # one .h5 path stands for its folder; naming the other split's file used to train or
    # evaluate silently on the split the user did not name
    folder = data_dir / "catvnoncat"
    code, _, err = run_cli(capsys, "train", "--data", str(folder / "test_catvnoncat.h5"), "--out", str(tmp_path / "r"))
    assert code == 1 and "names the test split's file, but this reads the train split" in err
    assert not (tmp_path / "r").exists()
    code, _, err = run_cli(capsys, "evaluate", "--data", str(folder / "train_catvnoncat.h5"))
    assert code == 1 and "names the train split's file, but this reads the test split" in err
    code, out, _ = run_cli(capsys, "evaluate", "--data", str(folder / "test_catvnoncat.h5"), "--json")
    assert code == 0 and json.loads(out)["data"] == "catvnoncat test split" and json.loads(out)["images"] == 50
    args = ("evaluate", "--data", str(folder / "train_catvnoncat.h5"), "--split", "all", "--json")
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "training file" in json.loads(out)["data"]
    code, _, err = run_cli(capsys, "train", "--data", str(folder / "SHA256SUMS"), "--out", str(tmp_path / "r"))
    assert code == 1 and "got another file" in err


def test_summary_names_the_last_epoch_too_and_stars_only_validation_bests(capsys, tmp_path):
    # the best of many epochs on a small validation split flatters; the summary also gives the
    # last epoch's, and '*' marks a new best on validation, never the refit's epochs (no validation)
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    flags = "--image-size 16 --epochs 4 --width 4 --refit".split()
    code, stdout, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *flags)
    assert code == 0, err
    hist = json.loads((out / "history.json").read_text())
    last = hist["epochs"][-1]
    assert ("last epoch: val_accuracy" in stdout) == (hist["best_epoch"] != last["epoch"])
    if hist["best_epoch"] != last["epoch"]:
        assert f"last epoch: val_accuracy {last['val_accuracy']:.3f}" in stdout
    epoch_lines = [line for line in (stdout + err).splitlines() if line.startswith("epoch ")]
    n = len(hist["epochs"])
    assert len(epoch_lines) == 2 * n  # the validation run, then the refit
    assert not any(line.endswith("*") for line in epoch_lines[n:])
    assert any(line.endswith("*") for line in epoch_lines[:n])


def test_evaluating_a_small_image_model_on_catvnoncat_says_to_pass_a_folder(capsys, tmp_path, data_dir):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    for old, new in (("vertical", "cat"), ("horizontal", "not-cat")):  # a cat / not-cat model, 16x16
        (data / old).rename(data / new)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split())
    assert code == 0, err
    catvnoncat = str(data_dir / "catvnoncat")
    code, _, err = run_cli(capsys, "evaluate", "--model", str(out / "model.npz"), "--data", catvnoncat)
    assert code == 1 and "takes 16x16 images" in err and "holds 64x64 ones: pass --data FOLDER" in err


def test_out_naming_a_file_and_model_naming_a_folder_are_refused_clearly(capsys, tmp_path):
    stray = tmp_path / "notes.txt"
    stray.write_text("keep me")
    code, _, err = run_cli(capsys, "train", "--out", str(stray), "--epochs", "1")
    assert code == 1 and f"--out {stray}: expected a folder" in err and stray.read_text() == "keep me"
    code, _, err = run_cli(capsys, "evaluate", "--model", str(tmp_path))
    assert code == 1 and "a folder, not a model file" in err


def test_early_stopping_is_reported_when_it_happens_before_the_refit(capsys, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    flags = "--image-size 16 --epochs 20 --width 4 --refit --patience 1 --optimizer sgd --lr 1e-30 --warmup-epochs 0"
    code, stdout, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *flags.split())
    assert code == 0, err
    lines = (stdout + err).splitlines()
    stop = [i for i, line in enumerate(lines) if line.startswith("early stopping after epoch")]
    assert len(stop) == 1  # once, not again at the end
    n = len(json.loads((out / "history.json").read_text())["epochs"])
    epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(epochs) == 2 * n and epochs[n - 1] < stop[0] < epochs[n]  # between the two runs


def test_evaluate_split_of_a_model_trained_through_the_python_api(capsys, tmp_path, data_dir):
    # train_classifier() records dataset "" unless told; its catvnoncat model's split is re-created
    from fastconv.data import load_catvnoncat
    from fastconv.train import TrainConfig, train_classifier

    ds = load_catvnoncat(data_dir / "catvnoncat", download=False)
    config = TrainConfig(epochs=1, refit=False, init=None, width=4, batchnorm=False)
    train_classifier(ds.x_train, ds.y_train, ds.classes, config, out_dir=tmp_path / "api", progress=False)
    model = str(tmp_path / "api" / "model.npz")
    catvnoncat = str(data_dir / "catvnoncat")
    code, out, err = run_cli(capsys, "evaluate", "--model", model, "--data", catvnoncat, "--split", "val")
    assert code == 0, err
    assert "catvnoncat val split, 41 images" in out  # round(0.2 * 209), as the run held out


def test_evaluate_split_knows_a_moved_copy_from_another_folder_of_the_same_size(capsys, tmp_path):
    import shutil

    from fastconv.commands.evaluate import _check_same_training_data
    from fastconv.train import load_dataset

    data, out = tmp_path / "data", tmp_path / "run"
    _write_stripes_folder(data)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(out), *TINY.split())
    assert code == 0, err
    model = str(out / "model.npz")
    shutil.copytree(data, tmp_path / "copy")  # the same images elsewhere: the same split
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", str(tmp_path / "copy"), "--split", "val")
    assert code == 0 and "note:" not in err, err
    # as many images, but one of them is another picture: not the data it was trained on
    other = tmp_path / "other"
    shutil.copytree(data, other)
    first = sorted((other / "vertical").glob("*.png"))[0]
    first.write_bytes(sorted((other / "horizontal").glob("*.png"))[0].read_bytes())
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", str(other), "--split", "val")
    assert code == 1 and "was trained on other images than" in err and "--split all" in err
    # a file from before the SHA-256 was recorded: a same-size folder elsewhere gets a note
    meta = fastconv.model.load_with_metadata(out / "model.npz")[1]
    del meta["data_sha256"]
    _check_same_training_data(model, meta, load_dataset(other, 16))
    assert "only held out if this is the same folder" in capsys.readouterr().err
    _check_same_training_data(model, meta, load_dataset(data, 16))
    assert "note:" not in capsys.readouterr().err
