"""fastconv.data: catvnoncat loading and verification, image decoding, the class-folder loader,
splitting, normalisation, augmentation and mini-batches.

Expected values come from the files themselves (read with h5py / Pillow here), from the data
README, or from constructions whose answer is known by hand — never from fastconv.data's output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from skimage import io as skio

from fastconv import data as D

FILES = ("train_catvnoncat.h5", "test_catvnoncat.h5")


# --------------------------------------------------------------------------------------------
# catvnoncat
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cat_dir(data_dir) -> Path:
    return data_dir / "catvnoncat"


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """Neither FASTCONV_DATA nor the user's cache nor any reachable mirror is used."""
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTCONV_MIRRORS", "http://127.0.0.1:9/never")


def test_real_catvnoncat_loads_with_the_documented_shapes_and_counts(cat_dir):
    ds = D.load_catvnoncat(cat_dir, download=False)
    # The numbers documented in the data README.
    assert ds.x_train.shape == (209, 3, 64, 64) and ds.x_test.shape == (50, 3, 64, 64)
    assert ds.y_train.shape == (209,) and ds.y_test.shape == (50,)
    assert int(ds.y_train.sum()) == 72 and int(ds.y_test.sum()) == 33
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.classes == ["non-cat", "cat"]
    assert ds.folder == cat_dir

    # Cross-check against the HDF5 contents read directly.
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        with h5py.File(cat_dir / f"{split}_catvnoncat.h5", "r") as f:
            raw_x = f[f"{split}_set_x"][()]
            raw_y = f[f"{split}_set_y"][()]
            classes = [c.decode() for c in f["list_classes"][()]]
        assert classes == ds.classes
        np.testing.assert_array_equal(y, raw_y)
        # NHWC uint8 -> NCHW: pixel (i, row, col, channel) lands at x[i, channel, row, col].
        i, r, c = 7, 10, 33
        np.testing.assert_allclose(x[i, :, r, c], raw_x[i, r, c, :] / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_allclose(x, raw_x.transpose(0, 3, 1, 2) / 255.0, rtol=0, atol=1e-7)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.flags.c_contiguous


def test_every_accepted_form_of_the_data_path_resolves(data_dir, cat_dir):
    assert D.find_catvnoncat(data_dir, download=False) == cat_dir  # parent holding catvnoncat/
    assert D.find_catvnoncat(cat_dir, download=False) == cat_dir  # the folder itself
    assert D.find_catvnoncat(cat_dir / "test_catvnoncat.h5", download=False) == cat_dir  # one file


def test_is_catvnoncat_path_tells_the_two_kinds_of_data_apart(data_dir, cat_dir, tmp_path):
    assert D.is_catvnoncat_path(None)
    assert D.is_catvnoncat_path(data_dir) and D.is_catvnoncat_path(cat_dir)
    assert D.is_catvnoncat_path(cat_dir / "train_catvnoncat.h5")
    assert D.is_catvnoncat_path(tmp_path / "elsewhere" / "mine.h5")  # a file name says what it is
    assert not D.is_catvnoncat_path(data_dir / "cifar10-cat" / "train")
    assert not D.is_catvnoncat_path(tmp_path)


def test_fastconv_data_env_is_used_when_no_argument(data_dir, cat_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCONV_DATA", str(data_dir))
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "empty-cache"))
    assert D.find_catvnoncat(download=False) == cat_dir


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_fastconv_data_without_the_files_falls_through_to_the_cache(cat_dir, monkeypatch, tmp_path, kind):
    # FASTCONV_DATA may point at a data root for other things, even at a file: skipped, unlike --data
    other = tmp_path / "other-data"
    if kind == "folder":
        other.mkdir()
    else:
        other.write_text("notes")
    cache = tmp_path / "cache"
    shutil.copytree(cat_dir, cache / "catvnoncat")
    monkeypatch.setenv("FASTCONV_DATA", str(other))
    monkeypatch.setenv("FASTCONV_CACHE", str(cache))
    assert D.find_catvnoncat(download=False) == cache / "catvnoncat"
    stray = tmp_path / "stray.txt"
    stray.write_text("notes")
    with pytest.raises(D.DataError, match="got another file"):  # given as --data, a file is an error
        D.find_catvnoncat(stray, download=False)


def _copy_pair(cat_dir: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(cat_dir / name, dest / name)
    return dest


def test_checksum_verification_fails_clearly_on_a_modified_copy(cat_dir, tmp_path, no_env):
    folder = _copy_pair(cat_dir, tmp_path / "copy")
    target = folder / "train_catvnoncat.h5"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit in the pixel data
    target.write_bytes(bytes(raw))
    expected = (cat_dir / "SHA256SUMS").read_text().split("train_catvnoncat.h5")[0].split()[-1]
    got = hashlib.sha256(bytes(raw)).hexdigest()

    with pytest.raises(D.DataError) as err:
        D.load_catvnoncat(folder)
    msg = str(err.value)
    assert str(target) in msg
    assert expected in msg and got in msg
    assert "--data" in msg and "FASTCONV_DATA" in msg


def test_explicit_data_path_that_lacks_the_files_is_an_error_not_a_download(tmp_path, no_env):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(D.DataError, match=r"does not contain train_catvnoncat\.h5 and test_catvnoncat\.h5"):
        D.find_catvnoncat(empty)
    with pytest.raises(D.DataError, match="does not exist"):
        D.find_catvnoncat(tmp_path / "typo")
    only_train = tmp_path / "half"
    only_train.mkdir()
    (only_train / "train_catvnoncat.h5").write_bytes(b"x")
    with pytest.raises(D.DataError, match=r"does not contain test_catvnoncat\.h5"):
        D.find_catvnoncat(only_train)


@pytest.mark.parametrize("keep", [0, 1000, 300_000])
def test_truncated_hdf5_is_a_data_error_naming_the_file(cat_dir, tmp_path, no_env, keep):
    folder = _copy_pair(cat_dir, tmp_path / "copy")
    target = folder / "train_catvnoncat.h5"
    target.write_bytes(target.read_bytes()[:keep])
    # Verified: the checksum catches it.
    with pytest.raises(D.DataError, match="checksum mismatch") as err:
        D.load_catvnoncat(folder)
    assert str(target) in str(err.value)
    # Unverified: the HDF5 reader's failure is turned into a DataError naming the file.
    with pytest.raises(D.DataError, match="cannot read HDF5") as err:
        D.load_catvnoncat(folder, verify=False)
    assert str(target) in str(err.value)


def test_hdf5_without_the_expected_datasets_is_a_data_error(cat_dir, tmp_path, no_env):
    folder = _copy_pair(cat_dir, tmp_path / "copy")
    with h5py.File(folder / "test_catvnoncat.h5", "w") as f:
        f["images"] = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(D.DataError, match=r"not a catvnoncat test file.*test_set_x"):
        D.load_catvnoncat(folder, verify=False)


def test_hdf5_with_bad_labels_or_layout_is_rejected(cat_dir, tmp_path, no_env):
    folder = _copy_pair(cat_dir, tmp_path / "copy")
    with h5py.File(folder / "test_catvnoncat.h5", "w") as f:
        f["test_set_x"] = np.zeros((3, 64, 64, 3), np.uint8)
        f["test_set_y"] = np.array([0, 1, 2])
    with pytest.raises(D.DataError, match="labels must be 0 or 1"):
        D.load_catvnoncat(folder, verify=False)
    with h5py.File(folder / "test_catvnoncat.h5", "w") as f:
        f["test_set_x"] = np.zeros((3, 64, 64), np.uint8)
        f["test_set_y"] = np.array([0, 1, 1])
    with pytest.raises(D.DataError, match=r"uint8 \(N, H, W, 3\)"):
        D.load_catvnoncat(folder, verify=False)


# --------------------------------------------------------------------------------------------
# single images
# --------------------------------------------------------------------------------------------


def _save(path: Path, arr: np.ndarray) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "low contrast image"
        skio.imsave(path, arr, check_contrast=False)
    return path


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    img = D.load_image(_save(tmp_path / "g.png", g), None)
    assert img.shape == (3, 20, 30) and img.dtype == np.float32
    for ch in range(3):
        np.testing.assert_allclose(img[ch], g / 255.0, atol=1e-7)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[0, :, 3] = 255  # row 0 opaque -> red
    rgba[1, :, 3] = 0  # row 1 transparent -> white
    rgba[2:, :, 3] = 51  # 20% red over white -> (1, 0.8, 0.8)
    img = D.load_image(_save(tmp_path / "a.png", rgba), None)
    np.testing.assert_allclose(img[:, 0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(img[:, 1, 0], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(img[:, 3, 3], [1, 0.8, 0.8], atol=1e-6)


def test_grey_with_alpha(tmp_path):
    # 5x5, not 3x3: skimage.io.imread reads a (3, 3, 2) array as channels-first.
    la = np.zeros((5, 5, 2), np.uint8)
    la[..., 0] = 0  # black
    la[..., 1] = 255
    la[0, 0, 1] = 0  # one transparent pixel -> white
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    img = D.load_image(tmp_path / "la.png", None)
    assert img.shape == (3, 5, 5)
    np.testing.assert_allclose(img[:, 0, 0], 1.0)
    np.testing.assert_allclose(img[:, 1, 1], 0.0)


def test_sixteen_bit_png_is_scaled_by_65535(tmp_path):
    a = np.array([[0, 65535], [32768, 1000]], np.uint16)
    img = D.load_image(_save(tmp_path / "d.png", a), None)
    np.testing.assert_allclose(img[0], a / 65535.0, atol=1e-6)
    np.testing.assert_array_equal(img[0], img[2])


def test_palette_image_uses_its_palette(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    p = Image.fromarray(idx, mode="P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9)
    p.putpalette(palette)
    p.save(tmp_path / "p.png")
    img = D.load_image(tmp_path / "p.png", None)
    np.testing.assert_allclose(img[:, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(img[:, 0, 1], [0, 1, 0])
    np.testing.assert_allclose(img[:, 1, 0], [0, 0, 1])


def test_bilevel_and_float_images(tmp_path):
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "b.png")
    np.testing.assert_array_equal(D.load_image(tmp_path / "b.png", None)[1], [[1.0, 0.0]])
    f = np.array([[-0.5, 0.25, 2.0]], np.float32)
    _save(tmp_path / "f.tif", f)
    np.testing.assert_allclose(D.load_image(tmp_path / "f.tif", None)[0], [[0.0, 0.25, 1.0]])


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (40, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    img = D.load_image(tmp_path / "a.gif", None)
    assert img.shape == (3, 6, 6)
    np.testing.assert_allclose(img, 40 / 255.0, atol=1e-6)


def test_tiny_image_is_upscaled(tmp_path):
    img = D.load_image(_save(tmp_path / "one.png", np.array([[[10, 20, 30]]], np.uint8)), 16)
    assert img.shape == (3, 16, 16)
    for ch, v in enumerate((10, 20, 30)):
        np.testing.assert_allclose(img[ch], v / 255.0, atol=1e-6)


def test_large_nonsquare_image_is_centre_cropped_then_resized(tmp_path):
    # 300 x 900: left and right thirds red, the central 300x300 square blue.
    a = np.zeros((300, 900, 3), np.uint8)
    a[:, :300, 0] = 255
    a[:, 600:, 0] = 255
    a[:, 300:600, 2] = 255
    img = D.load_image(_save(tmp_path / "wide.png", a), 64)
    assert img.shape == (3, 64, 64) and img.dtype == np.float32
    np.testing.assert_allclose(img[2], 1.0, atol=1e-6)  # all blue: the red sides were cropped
    np.testing.assert_allclose(img[0], 0.0, atol=1e-6)
    # A (height, width) target crops to that aspect ratio instead.
    img2 = D.load_image(tmp_path / "wide.png", (16, 48))
    assert img2.shape == (3, 16, 48)
    assert img2[0, :, :8].min() > 0.99 and img2[2, :, 20:28].min() > 0.99


def test_downscaling_is_anti_aliased(tmp_path):
    # A one-pixel checkerboard averages to grey when anti-aliased (plain bilinear would alias).
    board = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    img = D.load_image(_save(tmp_path / "check.png", board), 16)
    assert abs(float(img.mean()) - 0.5) < 0.01
    assert float(img.std()) < 0.05


def test_unreadable_files_raise_a_data_error_naming_them(tmp_path, data_dir):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    good = next((data_dir / "cifar10-cat" / "train" / "cat").glob("*.jpg")).read_bytes()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(good[: len(good) // 3])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (txt, bad, empty, tmp_path / "missing.png"):
        with pytest.raises(D.DataError) as err:
            D.load_image(path, 32)
        assert str(path) in str(err.value)


def test_image_size_validation(tmp_path):
    p = _save(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    for bad in (0, -3, (4,), (4, 0)):
        with pytest.raises(ValueError):
            D.load_image(p, bad)
    with pytest.raises(TypeError):
        D.load_image(p, "64")


# --------------------------------------------------------------------------------------------
# class folders
# --------------------------------------------------------------------------------------------


@pytest.fixture
def messy_tree(tmp_path, data_dir) -> Path:
    """cat/: RGB, grey, RGBA, 16-bit, palette, 1x1, a large photo, a .txt and a corrupt .jpg;
    not-cat/: two RGB images and one in a nested folder."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    cat, other = root / "cat", root / "not-cat"
    cat.mkdir(parents=True)
    (other / "nested").mkdir(parents=True)
    _save(cat / "rgb.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    _save(cat / "grey.png", rng.integers(0, 256, (33, 33), dtype=np.uint8))
    _save(cat / "rgba.png", rng.integers(0, 256, (20, 20, 4), dtype=np.uint8))
    _save(cat / "deep.png", rng.integers(0, 65536, (25, 30), dtype=np.uint16))
    pal = Image.fromarray(rng.integers(0, 4, (12, 12), dtype=np.uint8), mode="P")
    pal.putpalette(list(range(256)) * 3)
    pal.save(cat / "palette.png")
    _save(cat / "tiny.png", np.array([[[1, 2, 3]]], np.uint8))
    _save(cat / "big.jpg", rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    (cat / "readme.txt").write_text("not an image")
    good = next((data_dir / "cifar10-cat" / "train" / "cat").glob("*.jpg")).read_bytes()
    (cat / "corrupt.jpg").write_bytes(good[:40])
    (cat / ".hidden.png").write_bytes(b"ignored")
    _save(other / "a.png", np.full((8, 8, 3), 10, np.uint8))
    _save(other / "b.jpg", np.full((64, 64, 3), 200, np.uint8))
    _save(other / "nested" / "c.png", np.full((9, 9, 3), 90, np.uint8))
    return root


def test_messy_folder_loads_every_readable_image_and_names_the_rest(messy_tree):
    with pytest.warns(D.DataWarning) as rec:
        ds = D.load_image_folder(messy_tree, image_size=24, cache=False)
    assert ds.classes == ["not-cat", "cat"]  # "cat" is the positive class, index 1
    assert ds.x.shape == (10, 3, 24, 24) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    names = {Path(p).name: int(label) for p, label in zip(ds.paths, ds.y)}
    assert names == {
        "rgb.png": 1, "grey.png": 1, "rgba.png": 1, "deep.png": 1, "palette.png": 1, "tiny.png": 1, "big.jpg": 1,
        "a.png": 0, "b.jpg": 0, "c.png": 0,
    }  # fmt: skip
    skipped = {Path(p).name: reason for p, reason in ds.skipped}
    assert set(skipped) == {"readme.txt", "corrupt.jpg"}
    assert ".txt" in skipped["readme.txt"]
    (message,) = [str(w.message) for w in rec if issubclass(w.category, D.DataWarning)]
    assert "readme.txt" in message and "corrupt.jpg" in message
    # Images of one uniform colour keep it after resizing.
    i = ds.paths.index(str(messy_tree / "not-cat" / "b.jpg"))
    np.testing.assert_allclose(ds.x[i], 200 / 255.0, atol=2 / 255)


def test_cmyk_images_and_broken_links(tmp_path, monkeypatch):
    """A CMYK JPEG keeps its colours (its K channel is not opacity) and a broken symbolic link is
    named and skipped, also on the cached path that fingerprints every file."""
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "tree"
    (root / "cat").mkdir(parents=True)
    (root / "not-cat").mkdir()
    Image.fromarray(np.full((20, 20, 3), (200, 40, 40), np.uint8)).convert("CMYK").save(root / "cat" / "cmyk.jpg")
    _save(root / "cat" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (root / "cat" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    _save(root / "not-cat" / "b.png", np.zeros((8, 8, 3), np.uint8))
    img = D.load_image(root / "cat" / "cmyk.jpg")
    np.testing.assert_allclose(img[:, 0, 0], np.array([200, 40, 40]) / 255, atol=6 / 255)
    for _ in range(2):  # the second load reads the cache written by the first
        with pytest.warns(D.DataWarning, match="gone.jpg"):
            ds = D.load_image_folder(root, image_size=8)
        assert sorted(Path(p).name for p in ds.paths) == ["b.png", "cmyk.jpg", "ok.png"]
        assert [Path(p).name for p, _ in ds.skipped] == ["gone.jpg"]
    i = [Path(p).name for p in ds.paths].index("cmyk.jpg")
    np.testing.assert_allclose(ds.x[i].mean(axis=(1, 2)), np.array([200, 40, 40]) / 255, atol=6 / 255)


def test_explicit_class_order_is_respected(messy_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = D.load_image_folder(messy_tree, 8, classes=["cat", "not-cat"], cache=False)
    assert ds.classes == ["cat", "not-cat"]
    assert sorted(Path(p).name for p, label in zip(ds.paths, ds.y) if label == 1) == ["a.png", "b.jpg", "c.png"]
    with pytest.raises(D.DataError, match="dog"):
        D.load_image_folder(messy_tree, 8, classes=["cat", "dog"], cache=False)


def test_class_order_rule():
    assert D.order_classes(["cat", "not-cat"]) == ["not-cat", "cat"]
    assert D.order_classes(["zebra", "cat"]) == ["zebra", "cat"]
    assert D.order_classes(["Cat", "dog"]) == ["dog", "Cat"]
    assert D.order_classes(["b", "a", "c"]) == ["a", "b", "c"]
    assert D.order_classes(["cat", "dog", "ant", "bee"]) == ["ant", "cat", "bee", "dog"]


def test_one_class_or_none_is_an_error_saying_what_is_expected(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(D.DataError, match=r"one subfolder per class.*at least two.*found none"):
        D.load_image_folder(root, cache=False)
    _save(root / "loose.png", np.zeros((4, 4, 3), np.uint8))  # images without class folders
    with pytest.raises(D.DataError, match="found none"):
        D.load_image_folder(root, cache=False)
    (root / "cat").mkdir()
    _save(root / "cat" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(D.DataError, match=r"at least two classes.*only one \(cat/\)"):
        D.load_image_folder(root, cache=False)


def test_missing_root_or_a_file_as_root(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_image_folder(tmp_path / "nope", cache=False)
    f = tmp_path / "file.png"
    f.write_bytes(b"")
    with pytest.raises(D.DataError, match="not a folder"):
        D.load_image_folder(f, cache=False)


def test_class_folder_without_readable_images_is_named(tmp_path):
    root = tmp_path / "r"
    (root / "cat").mkdir(parents=True)
    (root / "not-cat").mkdir()
    _save(root / "cat" / "x.png", np.zeros((4, 4, 3), np.uint8))
    (root / "not-cat" / "junk.jpg").write_bytes(b"junk")
    (root / "dog").mkdir()
    (root / "cat" / "notes.txt").write_text("skipped, but in a class that has an image")
    with pytest.raises(D.DataError) as err:
        D.load_image_folder(root, cache=False)
    msg = str(err.value)
    assert "not-cat/ has 1 file(s), none readable: junk.jpg" in msg and "dog/ has no files" in msg
    assert "notes.txt" not in msg  # the message is about the empty classes only


def test_decoded_folder_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "r"
    for cls, v in (("cat", 30), ("not-cat", 220)):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            _save(root / cls / f"{i}.png", np.full((10, 10, 3), v + i, np.uint8))
    first = D.load_image_folder(root, 8, workers=1)
    entries = list((tmp_path / "cache" / "folders").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz"  # no temporary file left
    again = D.load_image_folder(root, 8, workers=2)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.y, again.y)
    assert first.paths == again.paths and first.classes == again.classes
    assert again.x.dtype == np.float32

    # Changing one file changes the result (the cache is keyed by size and mtime).
    target = root / "cat" / "0.png"
    _save(target, np.full((10, 10, 3), 99, np.uint8))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = D.load_image_folder(root, 8)
    i = changed.paths.index(str(target))
    np.testing.assert_allclose(changed.x[i], 99 / 255.0, atol=1e-6)

    # A file rewritten with its old size and mtime (cp -p, rsync -t) is still noticed.
    st = target.stat()
    target.unlink()
    _save(target, np.full((10, 10, 3), 77, np.uint8))  # same size: a uniform PNG of the same shape
    assert target.stat().st_size == st.st_size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    same_stamp = D.load_image_folder(root, 8)
    np.testing.assert_allclose(same_stamp.x[same_stamp.paths.index(str(target))], 77 / 255.0, atol=1e-6)

    # The cached tree named another way (relative, from elsewhere) gets paths that exist from there.
    monkeypatch.chdir(tmp_path)
    relative = D.load_image_folder("r", 8)
    assert relative.paths[0].startswith("r" + os.sep) and all(os.path.exists(p) for p in relative.paths)
    np.testing.assert_array_equal(relative.x, same_stamp.x)

    # Arrays over the size cap are not written.
    monkeypatch.setattr(D, "_FOLDER_CACHE_MAX_BYTES", 100)
    shutil.rmtree(tmp_path / "cache" / "folders")
    D.load_image_folder(root, 8)
    assert not (tmp_path / "cache" / "folders").exists()
    monkeypatch.undo()
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    D.load_image_folder(root, 8)

    # A damaged cache file is rebuilt, not fatal.
    for entry in (tmp_path / "cache" / "folders").iterdir():
        entry.write_bytes(b"garbage")
    rebuilt = D.load_image_folder(root, 8)
    np.testing.assert_array_equal(rebuilt.x, same_stamp.x)


@pytest.mark.slow
def test_cifar_folder_loads_ten_thousand_images(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    root = data_dir / "cifar10-cat" / "train"
    ds = D.load_image_folder(root, image_size=32)
    assert ds.x.shape == (10_000, 3, 32, 32) and ds.x.dtype == np.float32
    assert ds.classes == ["not-cat", "cat"]
    assert int((ds.y == 1).sum()) == 5000 and int((ds.y == 0).sum()) == 5000
    assert ds.skipped == []
    for p, label in zip(ds.paths, ds.y):
        assert Path(p).parent.name == ds.classes[label]
    # Pixels equal an independent decode with Pillow (32x32 stays unresized).
    for i in (0, 4321, 9999):
        ref = np.asarray(Image.open(ds.paths[i]).convert("RGB"), dtype=np.float64) / 255.0
        np.testing.assert_allclose(ds.x[i], ref.transpose(2, 0, 1), atol=1e-6)
    cached = D.load_image_folder(root, image_size=32)
    np.testing.assert_array_equal(cached.x, ds.x)
    np.testing.assert_array_equal(cached.y, ds.y)


# --------------------------------------------------------------------------------------------
# split, normalizer, minibatches
# --------------------------------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_seeded():
    y = np.array([1] * 72 + [0] * 137)
    np.random.default_rng(1).shuffle(y)
    ids = np.arange(len(y))
    x = np.stack([ids, ids * 10], axis=1)  # rows stay tied to their label
    x_tr, y_tr, x_va, y_va = D.train_val_split(x, y, val_fraction=0.2, seed=3)
    assert (y_va == 1).sum() == 14 and (y_va == 0).sum() == 27  # round(0.2 * 72), round(0.2 * 137)
    assert len(y_tr) + len(y_va) == 209
    assert set(x_tr[:, 0]).isdisjoint(x_va[:, 0])
    assert set(x_tr[:, 0]) | set(x_va[:, 0]) == set(ids)
    np.testing.assert_array_equal(y_tr, y[x_tr[:, 0]])
    np.testing.assert_array_equal(y_va, y[x_va[:, 0]])
    np.testing.assert_array_equal(x_tr[:, 1], x_tr[:, 0] * 10)
    again = D.train_val_split(x, y, val_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[2], x_va)
    other = D.train_val_split(x, y, val_fraction=0.2, seed=4)
    assert not np.array_equal(other[2], x_va)


def test_stratified_folds_partition_each_class_evenly():
    y = np.array([1] * 72 + [0] * 137 + [2] * 11)
    np.random.default_rng(2).shuffle(y)
    fold = D.stratified_folds(y, 5, seed=7)
    assert fold.shape == y.shape and fold.dtype == np.int64
    assert set(fold.tolist()) == {0, 1, 2, 3, 4}  # each image in exactly one fold: a partition
    for c in (0, 1, 2):
        per_fold = np.bincount(fold[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)
    np.testing.assert_array_equal(D.stratified_folds(y, 5, seed=7), fold)
    assert not np.array_equal(D.stratified_folds(y, 5, seed=8), fold)


@pytest.mark.parametrize(("folds", "words"), [(1, "int >= 2"), (2.0, "int >= 2"), (True, "int >= 2"),
                                                (12, "class 2 has 11")])
def test_stratified_folds_reject_impossible_requests(folds, words):
    y = np.array([0] * 20 + [1] * 15 + [2] * 11)
    with pytest.raises(ValueError, match=words):
        D.stratified_folds(y, folds)


def test_split_without_stratification_and_edge_cases():
    y = np.array([0] * 95 + [1] * 5)
    x = np.arange(100)
    _, _, x_va, _ = D.train_val_split(x, y, val_fraction=0.3, seed=0, stratify=False)
    assert len(x_va) == 30
    # A class with one example stays in training.
    _, y_tr, _, y_va = D.train_val_split(np.arange(11), np.array([0] * 10 + [1]), 0.5, seed=0)
    assert 1 in y_tr and 1 not in y_va
    _, _, x_va0, _ = D.train_val_split(x, y, val_fraction=0.0)
    assert len(x_va0) == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            D.train_val_split(x, y, val_fraction=bad)
    with pytest.raises(ValueError):
        D.train_val_split(x[:5], y, 0.2)


def test_normalizer_fits_known_statistics_and_round_trips():
    x = np.empty((4, 2, 3, 3), np.float32)
    x[:2, 0], x[2:, 0] = 0.2, 0.6  # channel 0: mean 0.4, std 0.2
    x[:, 1] = 0.7  # channel 1 is constant: std falls back to 1
    norm = D.Normalizer().fit(x)
    np.testing.assert_allclose(norm.mean, [0.4, 0.7], atol=1e-7)
    np.testing.assert_allclose(norm.std, [0.2, 1.0], atol=1e-7)
    z = norm(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(z[0, 0], -1.0, atol=1e-6)
    np.testing.assert_allclose(z[3, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(z[:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(norm(x[1]), z[1], atol=1e-7)  # a single (C, H, W) image
    assert norm(x.astype(np.float64)).dtype == np.float64

    restored = D.Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(restored(x), z)
    np.testing.assert_allclose(restored.inverse(z), x, atol=1e-6)


def test_normalizer_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        D.Normalizer()(np.zeros((1, 3, 2, 2), np.float32))
    norm = D.Normalizer([0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="expected"):
        norm(np.zeros((1, 1, 2, 2), np.float32))
    for bad in ({"mean": [0.1]}, {"mean": [0.1], "std": [0.0]}, {"mean": [0.1, 0.2], "std": [1.0]}, None):
        with pytest.raises(ValueError):
            D.Normalizer.from_dict(bad)
    with pytest.raises(ValueError):
        D.Normalizer().fit(np.zeros((0, 3, 2, 2), np.float32))


def test_minibatches_cover_every_example_once_in_aligned_pairs():
    x = np.arange(10 * 2).reshape(10, 2)
    y = np.arange(10)
    batches = list(D.iterate_minibatches(x, y, 4, np.random.default_rng(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == list(range(10)) and not np.array_equal(seen, np.arange(10))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], yb * 2)
    again = np.concatenate([b[1] for b in D.iterate_minibatches(x, y, 4, np.random.default_rng(0))])
    np.testing.assert_array_equal(seen, again)
    assert [len(b[1]) for b in D.iterate_minibatches(x, y, 4, np.random.default_rng(0), drop_last=True)] == [4, 4]
    ordered = [b[1].tolist() for b in D.iterate_minibatches(x, y, 3, shuffle=False)]
    assert ordered == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            list(D.iterate_minibatches(x, y, bad))
    with pytest.raises(ValueError):
        list(D.iterate_minibatches(x, y[:5], 2))


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(7).random((6, 3, 12, 10), dtype=np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "cfg",
    [{}, {"max_rotation": 0, "scale": None}, {"hflip": False, "max_shift": 0}, {"max_shift": 0, "max_rotation": 0}],
)
def test_augmentation_is_reproducible_and_preserves_shape_dtype_and_input(batch, cfg, dtype):
    x = batch.astype(dtype)
    original = x.copy()
    aug = D.Augmenter(**cfg)
    a = aug(x, np.random.default_rng(5))
    b = aug(x, np.random.default_rng(5))
    c = aug(x, np.random.default_rng(6))
    assert a.shape == x.shape and a.dtype == dtype
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, x)
    np.testing.assert_array_equal(x, original)  # input untouched
    assert x.min() - 1e-6 <= a.min() and a.max() <= x.max() + 1e-6  # resampling never overshoots


def test_augmenter_own_seed():
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(D.Augmenter(seed=11)(x), D.Augmenter(seed=11)(x))
    assert not np.array_equal(D.Augmenter(seed=11)(x), D.Augmenter(seed=12)(x))


@pytest.mark.parametrize("warp", [False, True])
def test_flip_all_twice_is_identity(batch, warp):
    kwargs = {"max_rotation": 1e-9, "scale": None} if warp else {"max_rotation": 0, "scale": None}  # both code paths
    aug = D.Augmenter(hflip=True, hflip_prob=1.0, max_shift=0, **kwargs)
    once = aug(batch, np.random.default_rng(0))
    np.testing.assert_allclose(once, batch[:, :, :, ::-1], atol=1e-6)
    np.testing.assert_allclose(aug(once, np.random.default_rng(1)), batch, atol=1e-6)


def test_disabled_augmenter_is_identity(batch):
    aug = D.Augmenter(hflip=False, max_shift=0, max_rotation=0, scale=None)
    np.testing.assert_array_equal(aug(batch, np.random.default_rng(0)), batch)


def _reflect_shift(img: np.ndarray, dy: int, dx: int, s: int) -> np.ndarray:
    """out[r, c] = img[r - dy, c - dx] with numpy's reflect padding (the test's own reference)."""
    h, w = img.shape[-2:]
    p = np.pad(img, ((0, 0), (s, s), (s, s)), mode="reflect")
    return p[:, s - dy : s - dy + h, s - dx : s - dx + w]


@pytest.mark.parametrize("s", [3, 15])  # 15 > image size: borders reflect more than once
@pytest.mark.parametrize("warp", [False, True])
def test_shift_is_an_integer_translation_with_reflected_borders(batch, warp, s):
    kwargs = {"max_rotation": 1e-9, "scale": None} if warp else {"max_rotation": 0, "scale": None}
    out = D.Augmenter(hflip=False, max_shift=s, **kwargs)(batch, np.random.default_rng(2))
    used = set()
    for img, res in zip(batch, out):
        matches = [
            (dy, dx)
            for dy in range(-s, s + 1)
            for dx in range(-s, s + 1)
            if np.allclose(res, _reflect_shift(img, dy, dx, s), atol=1e-5)
        ]
        # Small shifts are identifiable; big ones can coincide modulo the reflection period.
        assert len(matches) == 1 if s < 5 else len(matches) >= 1
        used.add(matches[0])
    assert len(used) > 1  # each image draws its own shift


def test_rotation_by_quarter_and_half_turns_is_exact():
    x = np.random.default_rng(3).random((2, 3, 9, 9), dtype=np.float32)
    zero = np.zeros((2, 2), np.int64)
    half = D._affine_warp(x, np.full(2, np.pi), np.ones(2), zero)
    np.testing.assert_allclose(half, x[:, :, ::-1, ::-1], atol=1e-5)
    quarter = D._affine_warp(x, np.full(2, np.pi / 2), np.ones(2), zero)
    np.testing.assert_allclose(quarter, np.rot90(x, 1, axes=(2, 3)), atol=1e-5)


def test_zoom_keeps_the_centre_and_enlarges():
    # A centred bright square of side 5 in a 21x21 image: zoom 1.4 makes it about 7 wide.
    x = np.zeros((1, 1, 21, 21), np.float32)
    x[0, 0, 8:13, 8:13] = 1.0
    out = D._affine_warp(x, np.zeros(1), np.full(1, 1.4), np.zeros((1, 2), np.int64))
    assert out[0, 0, 10, 10] == pytest.approx(1.0)
    row = out[0, 0, 10]
    assert 6.5 <= row.sum() <= 7.5
    np.testing.assert_allclose(row, row[::-1], atol=1e-6)  # symmetric about the centre


def test_constant_images_stay_constant_under_any_warp():
    x = np.full((5, 3, 16, 16), 0.3, np.float32)
    out = D.Augmenter(max_rotation=30, scale=(0.7, 1.3), max_shift=6)(x, np.random.default_rng(0))
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_augmenter_argument_checks_and_edge_shapes():
    for kwargs in ({"max_shift": -1}, {"max_shift": 1.5}, {"max_rotation": -1}, {"scale": (1.2, 0.9)},
                   {"scale": (0, 1)}, {"hflip_prob": 1.5}):  # fmt: skip
        with pytest.raises(ValueError):
            D.Augmenter(**kwargs)
    aug = D.Augmenter()
    with pytest.raises(ValueError, match="N, C, H, W"):
        aug(np.zeros((3, 8, 8), np.float32), np.random.default_rng(0))
    assert aug(np.zeros((0, 3, 8, 8), np.float32), np.random.default_rng(0)).shape == (0, 3, 8, 8)
    one = aug(np.ones((2, 3, 1, 1), np.float32), np.random.default_rng(0))  # 1x1 images: nothing to warp
    np.testing.assert_array_equal(one, 1.0)
