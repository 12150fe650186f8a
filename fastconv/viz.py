"""Pictures of a network: first-layer filters and the feature maps of every conv layer, as PNG grids.

Figures are built on :class:`matplotlib.figure.Figure` directly (the Agg canvas, no pyplot and no
global state), so this works on a machine without a display and from threads. Every grid has a
deterministic pixel size (:func:`grid_pixels`): ``COLUMNS`` panels per row of ``CELL_INCHES``
each, one row per ``COLUMNS`` channels plus ``TITLE_INCHES`` for the title, at ``DPI``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

COLUMNS = 8
CELL_INCHES = 1.0
TITLE_INCHES = 0.5
DPI = 100


def grid_shape(n: int, columns: int = COLUMNS) -> tuple[int, int]:
    """(rows, columns) of a grid holding ``n`` panels, at most ``columns`` per row."""
    if n < 1:
        raise ValueError(f"n: expected at least one panel, got {n}")
    cols = min(n, columns)
    return math.ceil(n / cols), cols


def grid_pixels(n: int, columns: int = COLUMNS) -> tuple[int, int]:
    """(height, width) in pixels of the PNG of an ``n``-panel grid."""
    rows, cols = grid_shape(n, columns)
    return round((rows * CELL_INCHES + TITLE_INCHES) * DPI), round(cols * CELL_INCHES * DPI)


def _grid_figure(panels: list[np.ndarray], title: str, cmap: str | None):
    from matplotlib.figure import Figure

    rows, cols = grid_shape(len(panels))
    height = rows * CELL_INCHES + TITLE_INCHES
    fig = Figure(figsize=(cols * CELL_INCHES, height), dpi=DPI)
    # Fixed margins (no tight_layout / bbox_inches="tight"): the pixel size must not depend on content.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - TITLE_INCHES / height, wspace=0.08, hspace=0.08)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, panel in zip(axes, panels):
        ax.imshow(panel, cmap=cmap, interpolation="nearest")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    return fig


def _unit_range(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (a constant array becomes 0.5)."""
    lo, hi = float(a.min()), float(a.max())
    return np.full(a.shape, 0.5) if hi <= lo else (a - lo) / (hi - lo)


def filters_figure(weight: np.ndarray, title: str = "first-layer filters"):
    """A grid of the K filters of a conv weight (K, C, R, S).

    With C == 3 each filter is shown as an RGB patch (each filter scaled to [0, 1] on its own, so
    the colour it responds to is visible); otherwise as the grey-scale mean over its C channels.
    """
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 4:
        raise ValueError(f"weight: expected a 4-d conv weight (K, C, R, S), got shape {weight.shape}")
    if weight.shape[1] == 3:
        panels = [_unit_range(w).transpose(1, 2, 0) for w in weight]
        cmap = None
    else:
        panels = [w.mean(axis=0) for w in weight]
        cmap = "gray"
    k, c, r, s = weight.shape
    return _grid_figure(panels, f"{title}: {k} filters {c}x{r}x{s}", cmap)


def feature_maps_figure(maps: np.ndarray, title: str):
    """A grid of the C feature maps (C, H, W) of one image, viridis, each map on its own scale."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps: expected (C, H, W) feature maps of one image, got shape {maps.shape}")
    return _grid_figure(list(maps), f"{title}: {maps.shape[0]} maps {maps.shape[1]}x{maps.shape[2]}", "viridis")


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at its own size and dpi, atomically; returns the path."""
    from fastconv.model import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))
    return path


def conv_feature_maps(model, x: np.ndarray) -> list[tuple[str, np.ndarray, bool]]:
    """Run ``model`` (a fastconv Sequential) in eval mode on one image x (1, C, H, W) and return,
    for every Conv2d layer in order, ``("conv<i>", maps (K, Ho, Wo), after_relu)``: when a ReLU
    follows the conv, directly or behind a BatchNorm2d (catnet's conv -> BN -> ReLU), the maps after
    that ReLU (what the next layer sees; after_relu True), else the raw conv output. Convs inside
    Residual blocks count too, body before shortcut, in the order they run."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x: expected one image (1, C, H, W), got shape {x.shape}")
    out: list[tuple[str, np.ndarray, bool]] = []
    with model.evaluating():
        _collect_maps(model.layers, x, out)
    return out


def _collect_maps(layers, x: np.ndarray, out: list[tuple[str, np.ndarray, bool]]) -> np.ndarray:
    """Forward ``layers`` on x, appending each conv's maps to ``out``; returns the output."""
    from fastconv.layers import BatchNorm2d, Conv2d, ReLU, Residual

    open_block = False  # True between a Conv2d and its ReLU (only BatchNorm2d may sit between)
    for layer in layers:
        if isinstance(layer, Residual):  # the block's own sum, from its branches as they run
            y = _collect_maps(layer.body.layers, x, out)
            x = y + (x if layer.shortcut is None else _collect_maps(layer.shortcut.layers, x, out))
            open_block = False
            continue
        x = layer.forward(x)
        if isinstance(layer, Conv2d):
            out.append((f"conv{len(out) + 1}", x[0], False))
            open_block = True
        elif isinstance(layer, ReLU) and open_block:
            out[-1] = (out[-1][0], x[0], True)
            open_block = False
        elif not isinstance(layer, BatchNorm2d):
            open_block = False
    return x


def write_pictures(model, image: np.ndarray, out_dir: str | os.PathLike) -> list[Path]:
    """PNGs for ``model`` on one preprocessed image (C, H, W): ``filters_conv1.png`` (the first
    conv layer's filters) and ``features_conv<i>.png`` per conv layer. Returns the paths written."""
    from fastconv.layers import Conv2d

    out = Path(out_dir)
    convs = [layer for layer in model.modules() if isinstance(layer, Conv2d)]
    if not convs:
        raise ValueError("model: has no Conv2d layer to draw")
    paths = [save_figure(filters_figure(convs[0].weight.data, "conv1"), out / "filters_conv1.png")]
    for name, maps, after_relu in conv_feature_maps(model, image[None]):
        title = f"{name} feature maps{' (after its ReLU: what the next layer sees)' if after_relu else ''}"
        paths.append(save_figure(feature_maps_figure(maps, title), out / f"features_{name}.png"))
    return paths
