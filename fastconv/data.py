"""Data for the cat / not-cat classifier: finding, downloading and loading it, splitting,
normalising and augmenting it.

Every array this module returns is NCHW: images are ``float32`` of shape ``(N, 3, H, W)`` with
values in ``[0, 1]``, labels are ``int64`` of shape ``(N,)``.

Two sources are supported:

* **catvnoncat** (the default dataset): two HDF5 files, ``train_catvnoncat.h5`` (209 images) and
  ``test_catvnoncat.h5`` (50 images), 64x64 RGB, label 1 = cat. :func:`find_catvnoncat` looks for
  them in the ``data`` argument (``--data``), then ``$FASTCONV_DATA``, then the user cache
  (:func:`cache_dir`), and otherwise downloads them from :data:`CATVNONCAT_MIRRORS`. Every file is
  checked against :data:`CATVNONCAT_SHA256` before it is used.
* **an image folder**: one subfolder per class (e.g. ``cat/`` and ``not-cat/``), read by
  :func:`load_image_folder`. Unreadable and non-image files are skipped and named, never fatal.

Errors about data (missing, corrupt, unreachable) are :class:`DataError`, a ``ValueError``;
download failures are :class:`DownloadError`, which is also a ``RuntimeError``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import atomic_savez, atomic_write

__all__ = [
    "CATVNONCAT_FILES",
    "CATVNONCAT_MIRRORS",
    "CATVNONCAT_SHA256",
    "IMAGE_EXTENSIONS",
    "Augmenter",
    "CatDataset",
    "DataError",
    "DataWarning",
    "Dataset",
    "DownloadError",
    "FolderDataset",
    "Normalizer",
    "cache_dir",
    "catvnoncat_mirrors",
    "download",
    "find_catvnoncat",
    "is_cat_vs_rest",
    "is_catvnoncat_path",
    "iterate_minibatches",
    "load_catvnoncat",
    "load_image",
    "load_image_folder",
    "order_classes",
    "same_task",
    "sha256_file",
    "train_val_split",
]


class DataError(ValueError):
    """Data is missing, corrupt or malformed. The message names the file and says how to fix it."""


class DataWarning(UserWarning):
    """Some files were skipped (unreadable, not images); the data is still usable."""


class DownloadError(DataError, RuntimeError):
    """Every mirror failed; the message lists each URL with its failure and how to get the data."""


# --------------------------------------------------------------------------------------------
# catvnoncat: checksums, mirrors, cache
# --------------------------------------------------------------------------------------------

CATVNONCAT_SHA256: dict[str, str] = {
    "train_catvnoncat.h5": "fbe56ab67c3ae28d564e3a644189117976d6b31af0a3ce9bb17dbf22908af242",
    "test_catvnoncat.h5": "6a9d39ce52fa85953c5834695b8534a30ed8cfd54971fb2f080b5a24d002b951",
}
CATVNONCAT_FILES: tuple[str, ...] = tuple(CATVNONCAT_SHA256)

# Base URLs; each file is fetched as base + "/" + filename. Pinned to commits so a mirror cannot
# silently change under us (the SHA-256 check would catch it anyway). Override with
# FASTCONV_MIRRORS=url1,url2 (replaces this list; file:// URLs work too).
CATVNONCAT_MIRRORS: list[str] = [
    "https://raw.githubusercontent.com/Kulbear/deep-learning-coursera/"
    "8ef9dd4fd4a627217d4ff31e63b661dbb3db9150/Neural%20Networks%20and%20Deep%20Learning/datasets",
    "https://raw.githubusercontent.com/ramakris/coursera-deeplearning/b1c8f954b5711f918c75f764138837bbe1b3f7fc/datasets",
    "https://raw.githubusercontent.com/Youngyi/DeepLearning/dff21304241c5e651d4a6680cba6e23c3990e915/datasets",
]

_CATVNONCAT_SUBDIR = "catvnoncat"
_CHUNK = 1 << 16


def cache_dir() -> Path:
    """The user cache folder: ``$FASTCONV_CACHE``, else ``$XDG_CACHE_HOME/fastconv``, else
    ``~/.cache/fastconv``. Not created here."""
    explicit = os.environ.get("FASTCONV_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastconv"


def catvnoncat_mirrors() -> list[str]:
    """The mirror base URLs in the order they are tried: ``$FASTCONV_MIRRORS`` (comma-separated)
    when set, else :data:`CATVNONCAT_MIRRORS`."""
    raw = os.environ.get("FASTCONV_MIRRORS", "")
    env = [u.strip() for u in raw.split(",") if u.strip()]
    return env or list(CATVNONCAT_MIRRORS)


def _how_to_get_data() -> str:
    files = " and ".join(CATVNONCAT_FILES)
    return (
        f"How to get the data: obtain {files} (SHA-256 sums in fastconv.data.CATVNONCAT_SHA256) and either "
        f"pass --data DIR (the folder holding them, or its parent containing catvnoncat/), set FASTCONV_DATA=DIR, "
        f"or place them in {cache_dir() / _CATVNONCAT_SUBDIR}. To download from other mirrors, set "
        f"FASTCONV_MIRRORS=URL1,URL2 (each file is fetched as URL/filename)."
    )


# (resolved path, mtime_ns, size) -> hex digest: hashing is cheap, but callers may resolve often.
_digest_cache: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file (memoised per path, mtime and size)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    digest = _digest_cache.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = _digest_cache[key] = h.hexdigest()
    return digest


def _verify(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise DataError(
            f"{path}: checksum mismatch (the file is corrupt, truncated or a different file).\n"
            f"  expected SHA-256 {expected}\n  got      SHA-256 {got}\n{_how_to_get_data()}"
        )


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


def _fetch(url: str, final: Path, sha256: str, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``final`` through fastconv._io.atomic_write, verifying before the rename.

    Size and checksum are checked inside the write callback, so a short or corrupt transfer
    raises before the rename: the temporary file is removed and no complete-looking file is left.
    """
    from fastconv import __version__

    def write(out) -> None:
        request = urllib.request.Request(url, headers={"User-Agent": f"fastconv/{__version__}"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected_size = int(length) if length and length.isdigit() else None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=expected_size, unit="B", unit_scale=True, desc=final.name, file=sys.stderr)
            h = hashlib.sha256()
            size = 0
            try:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
        if expected_size is not None and size != expected_size:
            raise DataError(f"incomplete transfer: received {size} of {expected_size} bytes")
        got = h.hexdigest()
        if got != sha256:
            raise DataError(f"checksum mismatch: expected SHA-256 {sha256}, got {got} ({size} bytes)")

    atomic_write(final, write)


def download(
    url_list: str | Sequence[str],
    filename: str,
    dest_dir: str | Path,
    sha256: str,
    timeout: float = 30,
    progress: bool = False,
) -> Path:
    """Download ``filename`` from the first mirror that serves it intact; return ``dest_dir/filename``.

    Each base URL in ``url_list`` is tried in order as ``base + "/" + filename`` (urllib only,
    so http, https and file URLs work). The body is streamed to a temporary file in ``dest_dir``,
    its SHA-256 compared with ``sha256``, and only then renamed to the final name with
    ``os.replace`` (atomic). Raises :class:`DownloadError` listing every URL and why it failed.
    """
    urls = [url_list] if isinstance(url_list, str) else list(url_list)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / filename
    failures: list[str] = []
    for base in urls:
        url = base.rstrip("/") + "/" + filename
        try:
            _fetch(url, final, sha256.lower(), timeout, progress)
            return final
        except (OSError, http.client.HTTPException, ValueError) as e:
            # URLError/HTTPError/timeouts are OSError; IncompleteRead is HTTPException;
            # a malformed URL or our own DataError is ValueError.
            plain_url_error = isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
            reason = e.reason if plain_url_error else e
            failures.append(f"  {url}: {type(e).__name__}: {reason}")
    tried = "\n".join(failures) if failures else "  (no mirror URLs configured)"
    raise DownloadError(f"could not download {filename} into {dest}; tried:\n{tried}\n{_how_to_get_data()}")


_download_file = download  # find_catvnoncat's ``download`` flag shadows the function's name


# --------------------------------------------------------------------------------------------
# finding catvnoncat
# --------------------------------------------------------------------------------------------


def _catvnoncat_folder(p: Path) -> Path:
    """Map the accepted forms (the folder, its parent holding catvnoncat/, one .h5 file) to the folder."""
    if p.is_file():
        if p.name not in CATVNONCAT_FILES:
            raise DataError(
                f"{p}: expected a folder (catvnoncat's, or one with a subfolder per class) or one of "
                f"{', '.join(CATVNONCAT_FILES)}, got another file"
            )
        return p.parent
    if any((p / f).exists() for f in CATVNONCAT_FILES):
        return p
    if (p / _CATVNONCAT_SUBDIR).is_dir():
        return p / _CATVNONCAT_SUBDIR
    return p


def require_split_file(data: str | Path | None, wanted: str, hint: str) -> None:
    """A ``--data`` naming one catvnoncat file stands for its folder; naming the *other* split's
    file than the command reads (``wanted``: 'train' or 'test') would silently use the wrong
    images, so it raises DataError with ``hint`` (what to pass instead)."""
    if data is None:
        return
    p = Path(data).expanduser()
    if p.name in CATVNONCAT_FILES and not p.name.startswith(wanted + "_"):
        split = p.name.split("_")[0]
        raise DataError(f"--data {p} names the {split} split's file, but this reads the {wanted} split: {hint}")


def is_catvnoncat_path(data: str | Path | None) -> bool:
    """True for None (the default dataset) and for any form :func:`find_catvnoncat` accepts that
    holds at least one of the two files, or names a ``.h5`` file; False otherwise (e.g. a
    class-folder tree for :func:`load_image_folder`)."""
    if data is None:
        return True
    p = Path(data).expanduser()
    if p.suffix == ".h5":
        return True
    folder = _catvnoncat_folder(p)
    return any((folder / f).is_file() for f in CATVNONCAT_FILES)


def _check_folder(folder: Path, origin: str, verify: bool) -> Path:
    missing = [f for f in CATVNONCAT_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{origin}: {folder} does not contain {' and '.join(missing)}.\n{_how_to_get_data()}")
    if verify:
        for name, digest in CATVNONCAT_SHA256.items():
            _verify(folder / name, digest)
    return folder


def find_catvnoncat(
    data: str | Path | None = None,
    download: bool = True,
    *,
    verify: bool = True,
    mirrors: Sequence[str] | None = None,
    progress: bool = False,
) -> Path:
    """The folder holding ``train_catvnoncat.h5`` and ``test_catvnoncat.h5``, checksums verified.

    Resolution order:

    1. ``data`` (``--data``): the folder itself, its parent containing ``catvnoncat/``, or the
       path of one of the two files. Given explicitly, it must hold the files (a typo never
       triggers a download).
    2. ``$FASTCONV_DATA`` in the same forms; skipped if it does not hold the files (it may point
       at a data root for other datasets), but files found there must verify.
    3. ``cache_dir()/catvnoncat``.
    4. A download into the cache from ``mirrors`` (default :func:`catvnoncat_mirrors`) when
       ``download`` is true. Cached files that fail verification are downloaded again.

    ``verify=False`` skips the checksum of files found locally (downloads are always verified).
    Raises :class:`DataError` (:class:`DownloadError` when the network fails) naming the file,
    the expected and actual hash, and how to get the data.
    """
    if data is not None:
        p = Path(data).expanduser()
        if not p.exists():
            raise DataError(f"data path {p} does not exist.\n{_how_to_get_data()}")
        return _check_folder(_catvnoncat_folder(p), f"data path {p}", verify)

    notes = []
    env = os.environ.get("FASTCONV_DATA")
    if env:
        try:
            folder = _catvnoncat_folder(Path(env).expanduser())
        except DataError:  # a stray file: skipped like any place without the files (it is not --data)
            folder = None
        if folder is not None and all((folder / f).is_file() for f in CATVNONCAT_FILES):
            return _check_folder(folder, f"FASTCONV_DATA={env}", verify)
        notes.append(f"FASTCONV_DATA={env} holds no catvnoncat files")

    cached = cache_dir() / _CATVNONCAT_SUBDIR
    needed = []
    for name, digest in CATVNONCAT_SHA256.items():
        path = cached / name
        if not path.is_file():
            needed.append(name)
        elif verify and sha256_file(path) != digest:
            if not download:
                _verify(path, digest)  # raises with expected vs got
            needed.append(name)
    if not needed:
        return cached
    if not download:
        note = "; ".join([*notes, f"{cached} lacks {' and '.join(needed)}"])
        raise DataError(f"catvnoncat not found ({note}) and downloading is disabled.\n{_how_to_get_data()}")
    urls = list(mirrors) if mirrors is not None else catvnoncat_mirrors()
    for name in needed:
        _download_file(urls, name, cached, CATVNONCAT_SHA256[name], progress=progress)
    return cached


# --------------------------------------------------------------------------------------------
# catvnoncat loading
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class CatDataset:
    """The catvnoncat train and test splits.

    ``x_train`` float32 (209, 3, 64, 64) in [0, 1] NCHW, ``y_train`` int64 (209,) with 1 = cat,
    ``x_test`` float32 (50, 3, 64, 64), ``y_test`` int64 (50,), ``classes`` = ["non-cat", "cat"]
    (index = label), ``folder`` the directory the files were read from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str] = field(default_factory=lambda: ["non-cat", "cat"])
    folder: Path | None = None

    def __repr__(self) -> str:
        return (
            f"CatDataset(train={self.x_train.shape}, {int(self.y_train.sum())} positive; "
            f"test={self.x_test.shape}, {int(self.y_test.sum())} positive; classes={self.classes}; "
            f"folder={self.folder})"
        )


Dataset = CatDataset


def _read_catvnoncat_h5(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read ``{split}_set_x`` (N,64,64,3 uint8) and ``{split}_set_y`` from one file -> NCHW float32, int64."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (f"{split}_set_x", f"{split}_set_y") if k not in f]
            if missing:
                raise DataError(f"{path}: not a catvnoncat {split} file (missing datasets {missing}; has {list(f)})")
            raw_x = np.asarray(f[f"{split}_set_x"][()])
            raw_y = np.asarray(f[f"{split}_set_y"][()])
            raw_classes = f["list_classes"][()] if "list_classes" in f else [b"non-cat", b"cat"]
    except DataError:
        raise
    except Exception as e:  # h5py raises OSError for truncated files, others for odd content
        raise DataError(
            f"{path}: cannot read HDF5 file ({type(e).__name__}: {e}); it is truncated or corrupt.\n"
            f"{_how_to_get_data()}"
        ) from e
    if raw_x.ndim != 4 or raw_x.shape[3] != 3 or raw_x.dtype != np.uint8:
        raise DataError(f"{path}: {split}_set_x should be uint8 (N, H, W, 3), got {raw_x.dtype} {raw_x.shape}")
    y = raw_y.reshape(-1).astype(np.int64)
    if y.shape[0] != raw_x.shape[0]:
        raise DataError(f"{path}: {raw_x.shape[0]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() > 1):
        raise DataError(f"{path}: labels must be 0 or 1, found values in [{y.min()}, {y.max()}]")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw_classes]
    # uint8 NHWC -> float32 NCHW in [0, 1]; the /255 is exact enough in float32.
    x = np.ascontiguousarray(raw_x.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
    return x, y, classes


def load_catvnoncat(
    data: str | Path | None = None,
    download: bool = True,
    *,
    verify: bool = True,
    mirrors: Sequence[str] | None = None,
    progress: bool = False,
) -> CatDataset:
    """Find (see :func:`find_catvnoncat`), verify and load catvnoncat as a :class:`CatDataset`.

    A truncated or corrupt HDF5 file raises :class:`DataError` naming the file.
    """
    folder = find_catvnoncat(data, download=download, verify=verify, mirrors=mirrors, progress=progress)
    x_train, y_train, classes = _read_catvnoncat_h5(folder / "train_catvnoncat.h5", "train")
    x_test, y_test, _ = _read_catvnoncat_h5(folder / "test_catvnoncat.h5", "test")
    return CatDataset(x_train, y_train, x_test, y_test, classes, folder)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------

# Files with other suffixes are skipped (and named) without trying every imageio plugin on them.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)


def _size_pair(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (str, bytes)):
        raise TypeError(f"image_size must be an int, a (height, width) pair or None, got {image_size!r}")
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        pair = (int(image_size), int(image_size))
    else:
        try:
            pair = tuple(int(v) for v in image_size)  # type: ignore[union-attr]
        except TypeError:
            raise TypeError(f"image_size must be an int, a (height, width) pair or None, got {image_size!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"image_size must be a positive int or a (height, width) pair, got {image_size!r}")
    return pair  # type: ignore[return-value]


def _to_rgb_float(img: np.ndarray) -> np.ndarray:
    """Any decoded image (H,W) / (H,W,1..4) / (frames,H,W,C), any dtype -> float32 (H, W, 3) in [0, 1]."""
    from skimage.util import img_as_float

    if img.ndim == 4:  # animated GIF / multi-page TIFF: the first frame
        img = img[0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4)):
        raise DataError(f"unsupported image layout {img.shape}")
    if img.dtype.kind == "i" and img.size and img.min() >= 0 and img.max() <= 65535:
        # Some decoders hand 16-bit greyscale back as int32; img_as_float would map int32's range.
        img = img.astype(np.uint16)
    f = img_as_float(img)  # uint8/uint16/bool/float -> float in [0, 1] (floats passed through)
    f = np.nan_to_num(f, nan=0.0, posinf=1.0, neginf=0.0)
    f = np.clip(f, 0.0, 1.0)
    if f.ndim == 2:
        f = f[:, :, None]
    channels = f.shape[2]
    if channels in (2, 4):  # grey+alpha or RGBA: composite on white so transparency is not black
        alpha = f[:, :, -1:]
        f = f[:, :, :-1] * alpha + (1.0 - alpha)
    if f.shape[2] == 1:
        f = np.repeat(f, 3, axis=2)
    return f.astype(np.float32, copy=False)


def _center_crop_to_aspect(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The largest centred window of ``img`` (H, W, C) with aspect ratio ``out_h : out_w``."""
    h, w = img.shape[:2]
    if h * out_w > w * out_h:  # too tall
        ch = max(1, round(w * out_h / out_w))
        top = (h - ch) // 2
        return img[top : top + ch]
    cw = max(1, round(h * out_w / out_h))
    left = (w - cw) // 2
    return img[:, left : left + cw]


def _decode(p: Path, imread) -> np.ndarray:
    """The decoded pixels of ``p`` as scikit-image's ``imread`` returns them, except CMYK.

    A CMYK JPEG or TIFF (print-shop output, some scanners) also decodes to 4 channels, which
    :func:`_to_rgb_float` would read as RGBA: the K (black) channel taken as opacity makes the
    picture white. Pillow (which scikit-image's reader uses underneath) names the mode and
    converts CMYK to RGB properly, so 4-channel results are checked with it."""
    img = np.asarray(imread(p))
    if img.ndim == 3 and img.shape[2] == 4:
        from PIL import Image

        try:
            with Image.open(p) as im:
                if im.mode == "CMYK":
                    img = np.asarray(im.convert("RGB"))
        except OSError:  # a format Pillow cannot open: keep scikit-image's decoding
            pass
    return img


def load_image(path: str | Path, image_size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image file with scikit-image into float32 ``(3, H, W)`` in ``[0, 1]``.

    * greyscale -> the value copied to 3 channels; grey+alpha and RGBA -> composited on white
      (identical to dropping alpha for opaque images); palette images arrive as RGB;
      8/16-bit, bool and float images are scaled to [0, 1] by ``skimage.util.img_as_float``
      (floats are clipped to [0, 1], NaN -> 0); animated images -> the first frame; CMYK
      (JPEG, TIFF) -> converted to RGB by Pillow.
    * ``image_size`` None keeps the native size. An int S or a pair (H, W) first **centre-crops**
      to the target aspect ratio (so photos are not squashed), then resizes with
      ``skimage.transform.resize(..., anti_aliasing=True)`` (bilinear). An image already of
      the target size is returned unchanged.

    Raises :class:`DataError` naming the file if it cannot be decoded.
    """
    from skimage import io
    from skimage.transform import resize

    size = _size_pair(image_size)
    p = Path(path)
    try:
        img = _to_rgb_float(_decode(p, io.imread))
    except DataError as e:
        raise DataError(f"{p}: {e}") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        # imageio appends "pip install imageio[...]" advice for files it has no reader for; a text
        # file named .jpg needs no video plugin, so only the first line of the reason is kept.
        reason = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{p}: not a readable image ({type(e).__name__}{': ' + reason if reason else ''})") from e
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise DataError(f"{p}: empty image {img.shape}")
    if size is not None and img.shape[:2] != size:
        img = _center_crop_to_aspect(img, *size)
        # Big reductions: average whole blocks first (a box filter, itself anti-aliasing) so the
        # Gaussian of resize stays small; a 1600x1200 photo -> 64x64 then costs ms, not seconds.
        block = min(img.shape[0] // size[0], img.shape[1] // size[1]) // 2
        if block >= 2:
            bh, bw = img.shape[0] // block, img.shape[1] // block
            img = img[: bh * block, : bw * block].reshape(bh, block, bw, block, 3).mean(axis=(1, 3))
        img = resize(img, (*size, 3), order=1, mode="reflect", anti_aliasing=True, preserve_range=True)
        img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def order_classes(names: Sequence[str]) -> list[str]:
    """Label order of class folders: sorted by name, then ``cat`` (case-insensitive), if present,
    moved to index 1 so it is the positive class of a binary problem (["not-cat", "cat"])."""
    ordered = sorted(names)
    cats = [n for n in ordered if n.lower() == "cat"]
    if cats and len(ordered) >= 2:
        ordered.remove(cats[0])
        ordered.insert(1, cats[0])
    return ordered


def is_cat_vs_rest(classes: Sequence[str]) -> bool:
    """True for a binary label set whose positive class (index 1) is ``cat`` (any case).

    catvnoncat's ``["non-cat", "cat"]`` and a folder tree's ``["not-cat", "cat"]`` are the same task:
    the negative class is "everything that is not a cat", whatever its folder is called."""
    return len(classes) == 2 and str(classes[1]).lower() == "cat"


def same_task(data_classes: Sequence[str], model_classes: Sequence[str]) -> bool:
    """Whether a model trained on ``model_classes`` can be scored on data labelled ``data_classes``:
    the same names in the same order, or both cat-vs-rest (:func:`is_cat_vs_rest`)."""
    return list(data_classes) == list(model_classes) or (
        is_cat_vs_rest(data_classes) and is_cat_vs_rest(model_classes)
    )


@dataclass(repr=False)
class FolderDataset:
    """Images read from a class-folder tree.

    ``x`` float32 (N, 3, S, S) in [0, 1] NCHW; ``y`` int64 (N,), an index into ``classes``;
    ``classes`` the class-folder names (see :func:`order_classes`); ``paths`` the N image files in
    the order of ``x``; ``skipped`` (path, reason) for every file that was not loaded.
    """

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        counts = ", ".join(f"{c}: {int((self.y == i).sum())}" for i, c in enumerate(self.classes))
        return f"FolderDataset(x={self.x.shape}, {counts}; skipped {len(self.skipped)})"


def _list_files(folder: Path) -> list[Path]:
    """Non-hidden files under ``folder`` (recursively), sorted for a deterministic order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


_FOLDER_CACHE_VERSION = 2  # 2: paths stored relative to the root; inode and ctime in the key
# Resized images are stored as float32 (uint8 would change them); past this size the disk cost
# outweighs a re-decode. CIFAR's 10,000 images take 31 MB at 32x32, 491 MB resized to 64x64.
_FOLDER_CACHE_MAX_BYTES = 1 << 30


def _folder_cache_path(root: Path, size: tuple[int, int], names: list[str], files: list[Path]) -> Path:
    """Cache file for this exact tree: keyed by root, size, class order and every file's name, size, mtime."""
    import json

    h = hashlib.sha256()
    h.update(json.dumps([_FOLDER_CACHE_VERSION, str(root.resolve()), size, names]).encode())
    for f in files:
        try:
            st = f.stat()
            # ctime and inode too: `cp -p` / `rsync -t` give a changed file its old size and mtime
            stamp = f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
        except OSError:  # a broken symlink or a file gone meanwhile: decoding names it as skipped
            stamp = "unreadable"
        h.update(f"\0{f.relative_to(root)}\0{stamp}".encode())
    return cache_dir() / "folders" / f"{root.name or 'root'}-{size[0]}x{size[1]}-{h.hexdigest()[:20]}.npz"


def _save_folder_cache(path: Path, ds: FolderDataset, root: Path) -> None:
    """Atomic write (fastconv._io.atomic_savez). Pixels go in as uint8 when that is lossless
    (8-bit images at their native size), which makes the file 4x smaller. Paths are stored
    relative to ``root``, so the same tree named another way (``tiny`` from one folder,
    ``/abs/tiny`` from another) gets paths that exist from where it was named."""

    q = np.rint(ds.x * np.float32(255.0)).astype(np.uint8)
    x = q if np.array_equal(q.astype(np.float32) / np.float32(255.0), ds.x) else ds.x
    if x.nbytes > _FOLDER_CACHE_MAX_BYTES:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(
        path,
        {
            "x": x, "y": ds.y, "classes": np.array(ds.classes, dtype=str),
            "paths": np.array([os.path.relpath(p, root) for p in ds.paths], dtype=str),
            "skipped": np.array([(os.path.relpath(p, root), r) for p, r in ds.skipped], dtype=str).reshape(-1, 2),
        },
    )  # fmt: skip


def _load_folder_cache(path: Path, root: Path) -> FolderDataset | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x = z["x"]
            x = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
            return FolderDataset(
                x, z["y"].astype(np.int64), z["classes"].tolist(), [str(root / p) for p in z["paths"].tolist()],
                [(str(root / a), str(b)) for a, b in z["skipped"]],
            )  # fmt: skip
    except Exception:  # a damaged cache entry is rebuilt, never fatal
        return None


def _warn_skipped(root: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        shown = "\n".join(f"  {p}: {r}" for p, r in skipped[:50])
        more = f"\n  ... and {len(skipped) - 50} more (see .skipped)" if len(skipped) > 50 else ""
        warnings.warn(f"{root}: skipped {len(skipped)} file(s):\n{shown}{more}", DataWarning, stacklevel=3)


def load_image_folder(
    root: str | Path,
    image_size: int | tuple[int, int] = 64,
    classes: Sequence[str] | None = None,
    *,
    workers: int | None = None,
    cache: bool = True,
) -> FolderDataset:
    """Load a tree with one subfolder per class (``root/cat/*.jpg``, ``root/not-cat/*.png``, ...).

    Every image is read by :func:`load_image` at ``image_size`` (centre crop + resize). Class
    order: ``classes`` when given (those subfolders only, label = position), else
    :func:`order_classes` of all non-hidden subfolders. Files with a non-image suffix or that fail
    to decode are listed in ``skipped`` with the reason and reported in one warning; they never
    abort the load. Decoding runs on ``workers`` threads (default: ``fastconv.get_num_threads()``).

    With ``cache`` the decoded arrays are kept in ``cache_dir()/folders/`` keyed by the folder,
    the size, the class order and every file's name, size and mtime (so any change rebuilds it);
    a second load of 10,000 CIFAR images then takes a fraction of a second instead of seconds.
    Pixel arrays over 1 GiB are not cached.

    Raises :class:`DataError` when ``root`` is missing or not a folder, when it has fewer than two
    class subfolders, or when a class folder yields no readable image.
    """
    root = Path(root).expanduser()
    size = _size_pair(image_size)
    if size is None:
        raise ValueError("load_image_folder needs an image_size: every image must have the same shape")
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected a folder with one subfolder per class (e.g. cat/, not-cat/)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        names = order_classes(found)
    else:
        names = [str(c) for c in classes]
        absent = [c for c in names if c not in found]
        if absent:
            raise DataError(f"{root}: class folder(s) {absent} not found; subfolders present: {found}")
    if len(names) < 2:
        what = f"only one ({names[0]}/)" if names else "none"
        raise DataError(
            f"{root}: expected one subfolder per class and at least two classes (e.g. cat/ and not-cat/), found {what}"
        )

    listing = [(label, f) for label, name in enumerate(names) for f in _list_files(root / name)]
    cache_path = _folder_cache_path(root, size, names, [f for _, f in listing]) if cache else None
    if cache_path is not None and cache_path.is_file():
        cached = _load_folder_cache(cache_path, root)
        if cached is not None:
            _warn_skipped(root, cached.skipped)
            return cached

    skipped: list[tuple[str, str]] = []
    jobs: list[tuple[Path, int]] = []
    for label, f in listing:
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            jobs.append((f, label))
        else:
            skipped.append((str(f), f"not an image file (suffix {f.suffix or '(none)'!r})"))

    def read(job: tuple[Path, int]) -> np.ndarray | str:
        try:
            return load_image(job[0], size)
        except DataError as e:
            return str(e).removeprefix(f"{job[0]}: ")

    if workers is None:
        from fastconv.kernels import get_num_threads

        workers = get_num_threads()
    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(read, jobs, chunksize=64))
    else:
        results = [read(j) for j in jobs]

    images, labels, paths = [], [], []
    for (f, label), res in zip(jobs, results):
        if isinstance(res, str):
            skipped.append((str(f), res))
        else:
            images.append(res)
            labels.append(label)
            paths.append(str(f))
    y = np.asarray(labels, dtype=np.int64)
    empty = [names[i] for i in range(len(names)) if not np.any(y == i)]
    if empty:
        parts = []
        for name in empty:
            bad = [Path(p).name for p, _ in skipped if Path(p).is_relative_to(root / name)]
            more = " ..." if len(bad) > 5 else ""
            parts.append(f"{name}/ has {len(bad)} file(s), none readable: {', '.join(bad[:5])}{more}" if bad
                         else f"{name}/ has no files")
        raise DataError(f"{root}: every class folder needs a readable image; " + "; ".join(parts))
    _warn_skipped(root, skipped)
    ds = FolderDataset(np.stack(images).astype(np.float32, copy=False), y, names, paths, skipped)
    if cache_path is not None:
        try:
            _save_folder_cache(cache_path, ds, root)
        except OSError as e:  # a read-only or full cache must not stop training
            warnings.warn(f"could not write the decoded-image cache {cache_path}: {e}", stacklevel=2)
    return ds


# --------------------------------------------------------------------------------------------
# splitting, normalising, batching
# --------------------------------------------------------------------------------------------


def data_digest(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of a data set as training saw it: x (N, ...) as float32 and y (N,) as int64, in
    order, with their shapes. ``fastconv train`` records it, so that ``evaluate --split
    train/val`` can tell the very same images (wherever they were moved) from others."""
    h = hashlib.sha256()
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    h.update(repr((x.shape, y.shape)).encode())
    h.update(memoryview(x).cast("B"))
    h.update(memoryview(y).cast("B"))
    return h.hexdigest()


def train_val_split(
    x: np.ndarray, y: np.ndarray, val_fraction: float = 0.2, seed: int = 0, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` into ``(x_train, y_train, x_val, y_val)``, disjoint, seeded.

    With ``stratify`` each class contributes ``round(val_fraction * n_class)`` examples to the
    validation set (at most ``n_class - 1``, so every class stays in training); otherwise
    ``round(val_fraction * N)`` random examples. Both parts keep the original relative order.
    ``val_fraction`` in [0, 1).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    n = len(y)
    is_val = np.zeros(n, dtype=bool)
    if stratify:
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            k = min(round(val_fraction * len(idx)), len(idx) - 1)
            is_val[rng.permutation(idx)[:k]] = True
    else:
        is_val[rng.permutation(n)[: round(val_fraction * n)]] = True
    return x[~is_val], y[~is_val], x[is_val], y[is_val]


def stratified_folds(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number int64 (N,) in [0, folds) of each example, for k-fold cross-validation.

    Each class is shuffled (``np.random.default_rng(seed)``, classes in ascending order) and dealt
    round-robin to folds 0, 1, ..., so every fold holds within one of the same number of each
    class. ``folds`` >= 2 and at most the size of the smallest class (every fold then holds out
    at least one example of each class and every training part keeps all classes).
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y: expected a non-empty 1-D array of class labels, got shape {y.shape}")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds: expected an int >= 2, got {folds!r}")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < folds:
        raise ValueError(
            f"{folds}-fold cross-validation needs at least {folds} examples of every class; "
            f"class {classes[counts.argmin()].item()} has {counts.min()}"
        )
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for c in classes:
        idx = np.flatnonzero(y == c)
        fold[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % folds
    return fold


class Normalizer:
    """Per-channel standardisation ``(x - mean) / std`` for NCHW batches.

    ``mean`` and ``std`` are float32 ``(C,)``, fitted on training images and saved in the model
    file through :meth:`to_dict` / :meth:`from_dict` (plain JSON lists). A constant channel gets
    ``std = 1`` so it never divides by zero.
    """

    def __init__(
        self, mean: Sequence[float] | np.ndarray | None = None, std: Sequence[float] | np.ndarray | None = None
    ):
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None:
            m = np.asarray(mean, dtype=np.float32).reshape(-1)
            s = np.asarray(std, dtype=np.float32).reshape(-1)
            if m.shape != s.shape or m.size == 0:
                raise ValueError(f"mean and std must be equal-length non-empty lists, got {m.shape} and {s.shape}")
            if not (np.all(np.isfinite(m)) and np.all(np.isfinite(s)) and np.all(s > 0)):
                raise ValueError(f"mean must be finite and std finite and positive, got mean={m}, std={s}")
            self.mean, self.std = m, s

    def fit(self, x: np.ndarray) -> Normalizer:
        """Statistics of ``x`` (N, C, H, W) over N, H and W (accumulated in float64); returns self."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(f"Normalizer.fit expects a non-empty (N, C, H, W) array, got shape {x.shape}")
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x.std(axis=(0, 2, 3), dtype=np.float64)
        std[~(std > 1e-12)] = 1.0
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
        return self

    def _stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.std is None:
            raise RuntimeError("Normalizer is not fitted: call fit(x) or build it from_dict()")
        if x.ndim not in (3, 4) or x.shape[-3] != self.mean.size:
            raise ValueError(f"expected (N, {self.mean.size}, H, W) or ({self.mean.size}, H, W), got {x.shape}")
        shape = (-1, 1, 1)
        return self.mean.reshape(shape), self.std.reshape(shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalised copy of ``x`` ((N, C, H, W) or (C, H, W)); float32 stays float32, float64 stays float64."""
        x = np.asarray(x)
        mean, std = self._stats(x)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
        return ((x - mean) / std).astype(dtype, copy=False)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Undo :meth:`__call__`."""
        x = np.asarray(x)
        mean, std = self._stats(x)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
        return (x * std + mean).astype(dtype, copy=False)

    def to_dict(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}`` as plain floats (JSON-able)."""
        if self.mean is None or self.std is None:
            raise RuntimeError("Normalizer is not fitted")
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on missing keys or bad values."""
        try:
            return cls(d["mean"], d["std"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"normalizer metadata must be {{'mean': [...], 'std': [...]}}, got {d!r}") from e

    def __repr__(self) -> str:
        if self.mean is None:
            return "Normalizer(unfitted)"
        return f"Normalizer(mean={self.mean.round(4).tolist()}, std={self.std.round(4).tolist()})"


def iterate_minibatches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x[idx], y[idx])`` batches of ``batch_size`` covering every example once.

    ``shuffle`` permutes with ``rng`` (pass a seeded generator for reproducibility; None draws
    an unseeded one). Unshuffled batches are views of ``x`` and ``y``: do not write into them.
    ``drop_last`` drops a final batch smaller than ``batch_size``.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(y)
    stop = n - n % batch_size if drop_last else n
    if shuffle:
        order = (rng if rng is not None else np.random.default_rng()).permutation(n)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
    else:
        for start in range(0, stop, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------


class Augmenter:
    """Seeded random augmentation of NCHW batches; every image gets its own random draw.

    * ``hflip``: mirror left-right with probability ``hflip_prob`` (0.5; 1.0 flips every image).
    * ``max_shift``: translate by a random whole number of pixels in [-max_shift, max_shift] on
      each axis; borders are filled by reflection (``np.pad(mode="reflect")`` + random crop).
    * ``max_rotation`` (degrees) and ``scale`` (zoom range, > 1 enlarges): a random rotation in
      [-max_rotation, max_rotation] and zoom in ``scale``, sampled bilinearly about the image
      centre with reflected borders; the shift is folded into the same affine map.

    Cost per batch of 32 x 3 x 64 x 64 float32 on the 2-core dev VM (best of 200; medians were
    2-3x higher with the machine heavily shared): flips + shifts 0.5 ms; with rotation/zoom (the
    defaults) one vectorised bilinear warp of the whole batch, 3 ms. ``max_rotation=0,
    scale=None`` selects the cheap path.

    ``__call__(batch, rng)`` is deterministic given the generator state: the same state gives
    the same output. Without ``rng`` the augmenter's own generator (seeded by ``seed``) is used.
    The input is never modified; the output has its shape and dtype. A positive angle turns the
    picture counter-clockwise as displayed (row 0 at the top), like ``np.rot90``. One instance
    keeps scratch buffers between calls, so do not share it between threads.
    """

    def __init__(
        self,
        hflip: bool = True,
        max_shift: int = 4,
        max_rotation: float = 10.0,
        scale: tuple[float, float] | None = (0.9, 1.1),
        seed: int | None = None,
        hflip_prob: float = 0.5,
    ):
        if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) or max_shift < 0:
            raise ValueError(f"max_shift must be a non-negative int (pixels), got {max_shift!r}")
        if not max_rotation >= 0:
            raise ValueError(f"max_rotation must be >= 0 degrees, got {max_rotation!r}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob!r}")
        if scale is not None:
            lo, hi = (float(v) for v in scale)
            if not 0 < lo <= hi:
                raise ValueError(f"scale must be a (low, high) zoom range with 0 < low <= high, got {scale!r}")
            scale = (lo, hi)
            if lo == hi == 1.0:
                scale = None
        self.hflip = bool(hflip)
        self.hflip_prob = float(hflip_prob)
        self.max_shift = int(max_shift)
        self.max_rotation = float(max_rotation)
        self.scale = scale
        self.rng = np.random.default_rng(seed)
        self._workspace: dict = {}

    @property
    def warps(self) -> bool:
        """True when rotation or zoom is on (the bilinear path)."""
        return self.max_rotation > 0 or self.scale is not None

    def __repr__(self) -> str:
        return (
            f"Augmenter(hflip={self.hflip}, hflip_prob={self.hflip_prob}, max_shift={self.max_shift}, "
            f"max_rotation={self.max_rotation}, scale={self.scale})"
        )

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Augmented copy of ``batch`` (N, C, H, W), same dtype (float32 or float64; others -> float32)."""
        x = np.asarray(batch)
        if x.ndim != 4:
            raise ValueError(f"Augmenter expects an (N, C, H, W) batch, got shape {x.shape}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        rng = self.rng if rng is None else rng
        n = x.shape[0]
        if n == 0:
            return x.copy()
        # Draw in a fixed order so one generator state always gives one result.
        flip = rng.random(n) < self.hflip_prob if self.hflip else np.zeros(n, dtype=bool)
        s = self.max_shift
        shifts = rng.integers(-s, s + 1, size=(n, 2)) if s > 0 else np.zeros((n, 2), dtype=np.int64)
        if self.warps and min(x.shape[2:]) >= 2:
            r = self.max_rotation
            angles = rng.uniform(-r, r, size=n) if r > 0 else np.zeros(n)
            zooms = rng.uniform(*self.scale, size=n) if self.scale is not None else np.ones(n)
            return _affine_warp(x, np.deg2rad(angles), zooms, shifts, flip, self._workspace)
        out = _shift(x, shifts) if s > 0 else x.copy()
        out[flip] = out[flip, :, :, ::-1]
        return out


def _shift(x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``out[i, :, r, c] = x[i, :, r - dy_i, c - dx_i]`` with reflected borders; ``shifts`` (N, 2) ints."""
    n, _, h, w = x.shape
    s = int(np.abs(shifts).max()) if shifts.size else 0
    if s == 0:
        return x.copy()
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2s+1, 2s+1, H, W)
    return np.ascontiguousarray(windows[np.arange(n), :, s - shifts[:, 0], s - shifts[:, 1]])


def _reflect_into(c: np.ndarray, n: int) -> np.ndarray:
    """Mirror coordinates (in place) into [0, n-1] as ``np.pad(mode="reflect")`` does."""
    if c.min() >= -(n - 1) and c.max() <= 2 * (n - 1):
        # One bounce suffices for overshoots up to n-1 (every ordinary draw): two cheap passes.
        np.abs(c, out=c)
        np.minimum(c, 2 * (n - 1) - c, out=c)
    else:  # huge zooms-out or shifts: the general, periodic form (a float modulo, ~10x dearer)
        period = 2 * (n - 1)
        np.abs(c, out=c)
        np.mod(c, period, out=c)
        np.minimum(c, period - c, out=c)
    return np.clip(c, 0, n - 1, out=c)


def _affine_warp(
    x: np.ndarray,
    angles: np.ndarray,
    zooms: np.ndarray,
    shifts: np.ndarray,
    flips: np.ndarray | None = None,
    workspace: dict | None = None,
) -> np.ndarray:
    """Mirror (where ``flips``), rotate by ``angles`` (radians), zoom by ``zooms`` about the centre,
    then translate by integer ``shifts`` (N, 2); bilinear, borders reflected as
    ``np.pad(mode="reflect")``. ``x`` float32/float64 (N, C, H, W) with H, W >= 2.

    Vectorised over the batch: one flat gather per bilinear corner for all images and channels.
    Bilinear sampling at a reflected coordinate equals sampling the reflect-padded image, and
    reflecting coordinates is cheaper than padding the batch. Temporaries live in ``workspace``
    (reused between calls of one Augmenter) because fresh multi-megabyte arrays cost more in
    page faults than the arithmetic (measured: ~1.4 ms per MB on the dev VM).
    """
    n, c, h, w = x.shape
    hw = h * w
    wdt = x.dtype
    key = (n, c, h, w, wdt.str)
    ws = workspace.get(key) if workspace is not None else None
    if ws is None:
        ws = {
            "sr": np.empty((n, h, w), wdt), "sc": np.empty((n, h, w), wdt),
            "r0": np.empty((n, h, w), np.intp), "c0": np.empty((n, h, w), np.intp),
            "idx": np.empty((n, c, hw), np.intp), "tmp": np.empty((n, c, hw), wdt), "bot": np.empty((n, c, hw), wdt),
        }  # fmt: skip
        if workspace is not None:
            if len(workspace) >= 4:  # a full batch and a last partial one are the usual pair
                workspace.clear()
            workspace[key] = ws
    sr, sc, r0, c0 = ws["sr"], ws["sc"], ws["r0"], ws["c0"]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows = (np.arange(h, dtype=wdt) - cy)[None, :, None] - shifts[:, 0, None, None].astype(wdt)
    cols = (np.arange(w, dtype=wdt) - cx)[None, None, :] - shifts[:, 1, None, None].astype(wdt)
    # Inverse map: output pixel -> source position = R(-angle) (out - centre - shift) / zoom + centre.
    cos = (np.cos(angles) / zooms).astype(wdt)[:, None, None]
    sin = (np.sin(angles) / zooms).astype(wdt)[:, None, None]
    np.multiply(cos, rows, out=sr)
    sr += sin * cols
    sr += wdt.type(cy)
    np.multiply(cos, cols, out=sc)
    sc -= sin * rows
    sc += wdt.type(cx)
    if flips is not None and flips.any():
        # Sampling the mirrored image at column q = sampling the image at w-1-q.
        sc[flips] = (w - 1) - sc[flips]
    _reflect_into(sr, h)
    _reflect_into(sc, w)
    # Truncation is floor here (coords >= 0); capping the corner at size-2 keeps its right/lower
    # neighbour inside the same image row/plane, with weight 1 on it at the far edge.
    np.copyto(r0, sr, casting="unsafe")
    np.minimum(r0, h - 2, out=r0)
    np.copyto(c0, sc, casting="unsafe")
    np.minimum(c0, w - 2, out=c0)
    np.subtract(sr, r0, out=sr, casting="unsafe")
    np.subtract(sc, c0, out=sc, casting="unsafe")
    r0 *= w
    r0 += c0
    idx = ws["idx"]
    np.add(r0.reshape(n, 1, hw), (np.arange(n * c, dtype=np.intp) * hw).reshape(n, c, 1), out=idx)
    wr, wc = sr.reshape(n, 1, hw), sc.reshape(n, 1, hw)
    flat = np.ascontiguousarray(x).reshape(-1)
    tmp, bot = ws["tmp"], ws["bot"]
    top = np.empty((n, c, hw), wdt)
    # Shifted views of the flat buffer give the other three corners without more index arrays;
    # mode="clip" avoids take's buffered bounds check (indices are in range by construction).
    flat.take(idx, out=top, mode="clip")
    flat[1:].take(idx, out=tmp, mode="clip")
    tmp -= top
    tmp *= wc
    top += tmp
    flat[w:].take(idx, out=bot, mode="clip")
    flat[w + 1 :].take(idx, out=tmp, mode="clip")
    tmp -= bot
    tmp *= wc
    bot += tmp
    bot -= top
    bot *= wr
    top += bot
    return top.reshape(n, c, h, w)
