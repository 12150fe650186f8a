"""README.md's Python examples run as written and do what their comments say."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import fastconv

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def _block(marker: str) -> str:
    found = [b for b in _blocks() if marker in b]
    assert len(found) == 1, f"expected one README python block containing {marker!r}, found {len(found)}"
    return found[0]


def _run(code: str) -> dict:
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_every_python_block_is_covered_below():
    markers = ("import fastconv.kernels as K", "fastconv.catnet(", "load_image_folder(", "def block(")
    blocks = _blocks()
    assert len(blocks) == len(markers), "a README python block was added: give it a test here"
    for block in blocks:
        assert sum(m in block for m in markers) == 1


def test_kernel_example():
    before = fastconv.get_num_threads()
    try:
        ns = _run(_block("import fastconv.kernels as K"))
    finally:
        fastconv.set_num_threads(before)
    assert ns["y"].shape == (32, 16, 64, 64)
    assert ns["dx"].shape == ns["x"].shape and ns["dw"].shape == ns["w"].shape and ns["db"].shape == (16,)
    # the documented call computes the convolution: one output pixel by hand (float64)
    x, w = ns["x"].astype(np.float64), ns["w"].astype(np.float64)
    want = np.sum(x[0, :, 9:12, 19:22] * w[5])
    np.testing.assert_allclose(ns["y"][0, 5, 10, 20], want, rtol=1e-5)


def test_model_api_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = _run(_block("fastconv.catnet("))
    assert np.isfinite(ns["loss"])
    loaded = fastconv.load(tmp_path / "my_model.npz")
    for (name, a), (_, b) in zip(ns["model"].state_dict().items(), loaded.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_resnet_example(capsys):
    """The ResNet example builds, prints a summary whose totals are the model's own, and runs
    forward and backward on a batch (3 blocks; the two that change shape have projections)."""
    from fastconv import Residual

    ns = _run(_block("def block("))
    model = ns["resnet"]
    blocks = [layer for layer in model.layers if isinstance(layer, Residual)]
    assert len(blocks) == 3 and [b.shortcut is None for b in blocks] == [True, False, False]
    out = capsys.readouterr().out
    assert f"total parameters: {model.num_parameters():,}" in out and f"{model.flops((3, 64, 64)):,}" in out
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 1)
    model.zero_grad()
    model.backward(np.ones_like(y))
    assert all(np.any(p.grad != 0) for p in model.parameters())


def _write_colour_folder(root: Path) -> None:
    from skimage.io import imsave

    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("green", 1), ("blue", 2)):
        (root / name).mkdir(parents=True)
        for i in range(20):  # odd sizes: the loader centre-crops and resizes to 32x32
            img = (rng.random((37, 45, 3)) * 90).astype(np.uint8)
            img[..., channel] += 150
            imsave(root / name / f"{i}.png", img, check_contrast=False)


def test_own_network_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    _write_colour_folder(tmp_path / "my_images")
    ns = _run(_block("load_image_folder("))
    out = capsys.readouterr().out
    assert ns["z"].shape == (len(ns["y_va"]), 3)
    assert "accuracy:" in out and "true \\ predicted" in out
    assert np.mean(ns["pred"] == ns["y_va"]) >= 0.9  # colour alone separates the classes
    # the checkpoint is a classifier file: the CLI's loader reads it and classifies an image
    from fastconv.data import load_image
    from fastconv.train import Classifier

    clf = Classifier.load(tmp_path / "run" / "model.npz")
    assert clf.classes == ("blue", "green", "red") and clf.image_size == 32
    img = load_image(tmp_path / "my_images" / "green" / "0.png", 32)[None]
    assert clf.classes[int(np.argmax(clf.predict_proba(img)[0]))] == "green"
    # fit() got the split and the model ready-made: the file records what fit used, and not
    # TrainConfig's defaults for the width, dropout or split of a network it did not build
    meta = clf.metadata
    assert "config" not in meta and meta["fit_config"]["epochs"] == 15 and meta["fit_config"]["lr"] == 2e-3
    assert not {"width", "dropout", "val_fraction", "batchnorm"} & set(meta["fit_config"])
    from fastconv import cli

    code = cli.main(["evaluate", "--model", "run/model.npz", "--data", "my_images", "--split", "val"])
    assert code == 1 and "does not record how its validation split was made" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", "run/model.npz", "--data", "my_images"]) == 0


def test_relative_links_and_named_docs_resolve():
    """Every relative Markdown link in README.md and docs/*.md points at a file of the repo, and
    every "DESIGN.md" the docs and help texts name exists (docs/DESIGN.md, a copy of the team's)."""
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    assert (ROOT / "docs" / "DESIGN.md").read_text().count("## The reference network: catnet") == 1
