"""``fastconv pictures`` and fastconv.viz: the PNGs exist, are valid images of the documented size,
and show the right data (the feature maps are the model's real activations)."""

from __future__ import annotations

import fastconv.kernels as K
import matplotlib.image
import numpy as np
import pytest
from skimage import io

from fastconv import viz, zoo
from fastconv.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tiny_model(tmp_path, metadata=True):
    model = zoo.catnet(width=4, image_size=16, seed=1, backend="numpy")  # channels 4, 4, 8, 16
    path = tmp_path / "tiny.npz"
    meta = {"image_size": 16, "normalizer": {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.2]}} if metadata else {}
    model.save(path, metadata=meta)
    return model, path


def _read_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


# Documented size rule (fastconv.viz): 100 px per panel, at most 8 panels per row, +50 px title.
EXPECTED_PIXELS = {
    "filters_conv1.png": (150, 400),  # 4 filters: one row of 4
    "features_conv1.png": (150, 400),
    "features_conv2.png": (150, 400),
    "features_conv3.png": (150, 800),  # 8 maps: one full row
    "features_conv4.png": (250, 800),  # 16 maps: two rows of 8
}


def test_pictures_command_writes_pngs_of_the_expected_size(tmp_path, capsys):
    _, model_path = _tiny_model(tmp_path)
    out = tmp_path / "pics"
    assert main(["pictures", "--model", str(model_path), "--out", str(out)]) == 0  # default image: chelsea
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPECTED_PIXELS)
    for name, (h, w) in EXPECTED_PIXELS.items():
        img = _read_png(out / name)
        assert img.shape[:2] == (h, w), name
        assert io.imread(out / name).shape[:2] == (h, w)
        assert img[..., :3].std() > 0.01, f"{name} is blank"
    stdout = capsys.readouterr().out
    assert stdout.count("wrote ") == len(EXPECTED_PIXELS)


def test_pictures_with_own_image_and_model_without_metadata(tmp_path, capsys):
    _, model_path = _tiny_model(tmp_path, metadata=False)
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    io.imsave(photo, (rng.random((40, 30, 3)) * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "pics"
    rc = main(["pictures", "--model", str(model_path), "--image", str(photo), "--image-size", "16", "--out", str(out)])
    assert rc == 0
    assert "stores no normalisation statistics" in capsys.readouterr().out
    assert _read_png(out / "features_conv4.png").shape[:2] == (250, 800)


def test_pictures_reports_missing_files(tmp_path, capsys):
    _, model_path = _tiny_model(tmp_path)
    assert main(["pictures", "--model", str(tmp_path / "nope.npz"), "--out", str(tmp_path)]) == 1
    assert "nope.npz" in capsys.readouterr().err
    rc = main(["pictures", "--model", str(model_path), "--image", str(tmp_path / "none.jpg"), "--out", str(tmp_path)])
    assert rc == 1
    assert "none.jpg" in capsys.readouterr().err


def test_feature_maps_are_the_models_activations():
    """conv1's maps are relu(conv(x)) computed directly with the kernels; later maps have the
    channel counts and sizes of catnet's layers."""
    model = zoo.catnet(width=4, image_size=16, seed=2, backend="numpy")
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    maps = viz.conv_feature_maps(model, x)
    assert [(name, m.shape, relu) for name, m, relu in maps] == [
        ("conv1", (4, 16, 16), True),
        ("conv2", (4, 16, 16), True),
        ("conv3", (8, 8, 8), True),
        ("conv4", (16, 4, 4), True),
    ]
    conv1 = model.layers[0]
    want = np.maximum(K.conv2d_forward(x, conv1.weight.data, conv1.bias.data, 1, 1, backend="python"), 0)[0]
    np.testing.assert_allclose(maps[0][1], want, rtol=1e-5, atol=1e-6)
    assert model.training  # the mode is restored


def test_feature_maps_look_past_batchnorm_to_the_relu():
    """With BatchNorm (the trained default: conv -> BN -> ReLU) the maps are what the next layer
    sees, relu(bn(conv(x))), not the raw conv output."""
    model = zoo.catnet(width=4, image_size=16, seed=2, backend="numpy", batchnorm=True)
    rng = np.random.default_rng(4)
    bn = model.layers[1]
    bn.running_mean[:] = rng.standard_normal(4)  # non-trivial eval statistics
    bn.running_var[:] = rng.uniform(0.5, 2.0, 4)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    maps = viz.conv_feature_maps(model, x)
    assert [(name, relu) for name, _, relu in maps] == [(f"conv{i}", True) for i in range(1, 5)]
    conv1 = model.layers[0]
    assert conv1.bias is None  # BatchNorm's shift makes a conv bias redundant
    z = K.conv2d_forward(x, conv1.weight.data, None, 1, 1, backend="python")[0]
    scale = (bn.weight.data / np.sqrt(bn.running_var + bn.eps))[:, None, None]
    want = np.maximum((z - bn.running_mean[:, None, None]) * scale + bn.bias.data[:, None, None], 0)
    np.testing.assert_allclose(maps[0][1], want, rtol=1e-4, atol=1e-5)
    assert maps[0][1].min() >= 0


def test_feature_maps_reach_the_convs_inside_residual_blocks():
    """A ResNet-style model: every conv, top level or inside a block (body, then shortcut), gets
    its maps, computed from what reaches it (the shortcut's conv sees the block's input)."""
    from fastconv import BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Residual, Sequential

    model = Sequential(Conv2d(3, 4, 3, padding=1, rng=0), ReLU(),
                       Residual([Conv2d(4, 4, 3, padding=1, rng=1), BatchNorm2d(4), ReLU(), Conv2d(4, 6, 1, rng=2)],
                                [Conv2d(4, 6, 1, rng=3)]),
                       ReLU(), Flatten(), Linear(6 * 8 * 8, 1, rng=4))  # fmt: skip
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    maps = viz.conv_feature_maps(model, x)
    assert [(name, m.shape, relu) for name, m, relu in maps] == [
        ("conv1", (4, 8, 8), True), ("conv2", (4, 8, 8), True),
        ("conv3", (6, 8, 8), False), ("conv4", (6, 8, 8), False)]  # fmt: skip
    block = model.layers[2]
    h = np.maximum(model.layers[0].forward(x), 0)
    np.testing.assert_allclose(maps[3][1], block.shortcut.layers[0].forward(h)[0], rtol=1e-6)
    assert model.training and block.body.layers[1].training  # modes restored


def test_filter_grid_colours_and_grey(tmp_path):
    """RGB filters are drawn in colour; other channel counts as grey; the size follows the rule."""
    rng = np.random.default_rng(3)
    w = np.zeros((2, 3, 3, 3))
    w[0, 0] = 1.0  # a pure-red filter
    w[1] = rng.standard_normal((3, 3, 3))
    path = viz.save_figure(viz.filters_figure(w), tmp_path / "rgb.png")
    img = _read_png(path)
    assert img.shape[:2] == (150, 200)
    red = img[..., 0] - np.maximum(img[..., 1], img[..., 2])
    assert red.max() > 0.9  # the red filter shows up red
    grey = _read_png(viz.save_figure(viz.filters_figure(rng.standard_normal((5, 2, 3, 3))), tmp_path / "g.png"))
    assert grey.shape[:2] == (150, 500)
    np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=0.02)  # grey-scale panels (+ black title)


@pytest.mark.parametrize(("n", "expected"), [(1, (150, 100)), (8, (150, 800)), (9, (250, 800)), (64, (850, 800))])
def test_grid_pixels(n, expected):
    assert viz.grid_pixels(n) == expected


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="weight"):
        viz.filters_figure(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="maps"):
        viz.feature_maps_figure(np.zeros((2, 3, 3, 3)), "x")
    with pytest.raises(ValueError, match="one image"):
        viz.conv_feature_maps(zoo.catnet(width=4, image_size=16), np.zeros((2, 3, 16, 16), np.float32))
