"""Sequential models: forward/backward through a list of layers, checkpoints in one ``.npz``.

Model file format (``format_version`` 1), a numpy ``.npz`` archive read with ``allow_pickle=False``:

===================  ===========================================================================
key                  content
===================  ===========================================================================
``format_version``   int64 scalar, currently 1
``architecture``     0-d unicode array: JSON list of ``{"type": <layer class>, "config": {...}}``
``metadata``         0-d unicode array: JSON object chosen by the caller (normalisation mean/std,
                     class names, image size, training history summary, ...)
``state/<name>``     one float array per state_dict entry, e.g. ``state/0.weight``
===================  ===========================================================================

Files are written atomically: into a temporary file in the destination folder, flushed to disk,
then renamed over the destination with ``os.replace``, so a crash never leaves a half-written
model where a good one used to be.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from . import kernels as K
from ._io import atomic_savez, atomic_write
from .layers import (
    LAYER_TYPES,
    ArchitectureError,
    Flatten,
    Layer,
    Parameter,
    Residual,
    _check_unique,
    deferred_init,
    seed_sequence,
    short_repr,
)

__all__ = [
    "FORMAT_VERSION",
    "Sequential",
    "atomic_savez",
    "atomic_write",
    "load",
    "load_with_metadata",
    "read_model_file",
]

FORMAT_VERSION = 1
_STATE_PREFIX = "state/"
_TOP_LEVEL_ENTRIES = ("format_version", "architecture", "metadata")
#: Largest total (unpacked) size of a model file's entries; catnet's is 0.1 MiB.
MAX_MODEL_BYTES = 1 << 30
PathLike = str | os.PathLike


class Sequential:
    """A chain of layers: ``y = layers[-1](...layers[1](layers[0](x)))``.

    ``forward(x)``: x is an array the first layer accepts (NCHW images for catnet); float input
    of the other precision is cast to the model's dtype. ``backward(dlogits)`` runs the chain in
    reverse, accumulates every parameter's ``.grad`` and returns the input gradient when
    ``need_input_grad=True`` (by default the first layer skips it: a third of a conv's backward work).
    """

    def __init__(self, *layers: Layer) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__}, expected a fastconv Layer")
        _check_unique(layers, "Sequential")
        self.layers: list[Layer] = list(layers)
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                if p.name == name:  # a layer's own name ("weight"); a layer shared with another model keeps its first
                    p.name = f"{i}.{name}"
        self.training = True

    # --- container protocol ----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    @overload
    def __getitem__(self, index: int) -> Layer: ...
    @overload
    def __getitem__(self, index: slice) -> Sequential: ...
    def __getitem__(self, index: int | slice) -> Layer | Sequential:
        """``model[i]`` is a layer; ``model[a:b]`` a Sequential of those same layer objects (shared,
        as in PyTorch: e.g. ``model[:-3]`` as a feature extractor that trains with the model)."""
        if isinstance(index, slice):
            part = Sequential(*self.layers[index])
            part.training = self.training  # its layers are in this model's mode
            return part
        return self.layers[index]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def modules(self) -> Iterator[Layer]:
        """Every layer, depth first, including those inside :class:`~fastconv.layers.Residual` blocks
        (``model.layers`` / iteration give the top level only)."""
        stack = list(reversed(self.layers))
        while stack:
            layer = stack.pop()
            yield layer
            stack.extend(reversed(layer.children()))

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"

    # --- computation -------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        """The dtype of the parameters (float32 unless converted with :meth:`astype`); of the
        buffers when there are no parameters (e.g. ``BatchNorm2d(affine=False)`` alone)."""
        for layer in self.layers:
            for p in layer.parameters():
                return p.data.dtype
        for layer in self.layers:
            for b in layer.buffers().values():
                return b.dtype
        return np.dtype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, ...) input batch -> output of the last layer (logits for catnet: (N, 1))."""
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.dtype != self.dtype:
            x = x.astype(self.dtype)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Eval-mode forward over ``x`` in batches (inside :meth:`evaluating`). Returns the stacked outputs."""
        with self.evaluating():
            outs = [self.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        if not outs:
            return np.zeros((0, *self.output_shape(x.shape[1:])), self.dtype)
        return np.concatenate(outs, axis=0)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[Sequential]:
        """``with model.evaluating():`` eval mode inside, and afterwards the model as it was found:
        each layer's train/eval mode and what the last forward kept for backward (the attributes
        each layer names in ``_cache_names``; a custom layer must name its own), so that
        ``model(xb); model.predict(xv); model.backward(dy)`` still gives xb's gradients. For
        gradients of an evaluation-mode forward (saliency), call ``model.eval(); model(x)`` instead."""
        was_training = self.training
        everything = list(self.modules())  # parents before children: a block's train() sets its
        modes = [layer.training for layer in everything]  # inner layers, then each gets its own back
        kept = [layer.cache() for layer in self.layers]
        self.eval()
        try:
            yield self
        finally:
            self.training = was_training
            for layer, mode in zip(everything, modes):
                layer.train(mode)
            for layer, cache in zip(self.layers, kept):
                layer.restore_cache(cache)

    def backward(self, dlogits: np.ndarray, *, need_input_grad: bool = False) -> np.ndarray | None:
        """Backpropagate ``dlogits`` (shape of the last forward output) through every layer.

        Parameter gradients are *accumulated* (call :meth:`zero_grad` between steps). Returns
        dx, the gradient with respect to the last forward input, or None unless ``need_input_grad``.
        """
        if not self.layers:
            return dlogits if need_input_grad else None
        # Only for this call: the layer may also sit inside another model (a shared feature
        # extractor or head) where it is not first and must pass its input gradient on.
        first = self.layers[0]
        kept = first.requires_input_grad
        first.requires_input_grad = bool(need_input_grad)
        try:
            dy: np.ndarray | None = dlogits
            for layer in reversed(self.layers):
                dy = layer.backward(dy)
        finally:
            first.requires_input_grad = kept
        return dy if need_input_grad else None

    # --- parameters and modes ------------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """(``"i.name"``, parameter) pairs, i = the layer's position in this model: the keys of :meth:`state_dict`."""
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers) for name, p in layer.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad.fill(0)

    def train(self, mode: bool = True) -> Sequential:
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    def set_backend(self, name: str | None) -> Sequential:
        """Run every layer on kernel backend ``name`` (None = the process default). Validated now."""
        if name is not None:
            K.get_backend(name)  # unknown or unavailable -> clear ValueError here, not mid-training
        for layer in self.layers:
            layer.backend = name
        return self

    def astype(self, dtype: object) -> Sequential:
        """Convert every parameter and buffer to float32/float64 in place; gradients are reset."""
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def reseed(self, seed: int | np.random.SeedSequence | np.random.Generator | None) -> Sequential:
        """Restart the random streams of stochastic layers (dropout, and Residual blocks holding
        them) from ``seed``, reproducibly."""
        ss = seed_sequence(seed)
        stochastic = [layer for layer in self.layers if hasattr(layer, "reseed")]
        for layer, child in zip(stochastic, ss.spawn(len(stochastic))):
            layer.reseed(child)
        return self

    # --- description -------------------------------------------------------------------
    def _per_sample_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(int(v) for v in input_shape)
        # No layer takes a 4-d per-sample input, so a 4-d shape must be NCHW with a batch size.
        return shape[1:] if len(shape) == 4 else shape

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape such as (3, 64, 64)."""
        shape = self._per_sample_shape(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def flops(self, input_shape: Sequence[int]) -> int:
        """Forward FLOP per sample (see each layer's ``flops``)."""
        return sum(row[3] for row in self._summary_rows(input_shape))

    def _summary_rows(
        self, input_shape: Sequence[int], prefix: str = ""
    ) -> list[tuple[str, tuple[int, ...], int, int]]:
        """(name, output shape, parameters, FLOPs) per layer; a Residual block as its branches'
        rows (``3.body.0: Conv2d(...)``, indented) and then one row for the sum."""
        shape = self._per_sample_shape(input_shape) if not prefix else tuple(input_shape)
        indent = "  " * (prefix.count(".") // 2)  # two spaces per level of nesting ("3.body.")
        rows = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Residual):  # the branches first: a shape error names the inner layer
                rows += layer.body._summary_rows(shape, f"{prefix}{i}.body.")
                if layer.shortcut is not None:
                    rows += layer.shortcut._summary_rows(shape, f"{prefix}{i}.shortcut.")
            try:
                out = layer.output_shape(shape)
            except ValueError as exc:
                raise ValueError(f"layer {prefix}{i} ({layer!r}) cannot take input shape {shape}: {exc}") from exc
            if isinstance(layer, Residual):
                added = "shortcut" if layer.shortcut is not None else "input"
                rows.append((f"{indent}{prefix}{i}: Residual: body + {added}", out, 0, math.prod(out)))
            else:
                params = sum(p.size for p in layer.parameters())
                rows.append((f"{indent}{prefix}{i}: {layer!r}", out, params, layer.flops(shape)))
            shape = out
        return rows

    def summary(self, input_shape: Sequence[int]) -> str:
        """A table with one row per layer: output shape, parameter count, forward FLOP per image; and totals.

        ``input_shape`` is per sample, e.g. ``(3, 64, 64)``; a 4-d shape is taken as NCHW and its batch size ignored.
        """
        rows = self._summary_rows(input_shape)
        header = ("layer", "output shape", "params", "FLOPs/image")
        cells = [(name, str(out), f"{p:,}", f"{f:,}") for name, out, p, f in rows]
        widths = [max(len(header[j]), *(len(c[j]) for c in cells)) if cells else len(header[j]) for j in range(4)]

        def fmt(c: Sequence[str]) -> str:
            return f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]:>{widths[3]}}"

        total_params = sum(r[2] for r in rows)
        total_flops = sum(r[3] for r in rows)
        rule = "-" * len(fmt(header))
        lines = [f"input: {self._per_sample_shape(input_shape)} per image, dtype {self.dtype}", rule, fmt(header), rule]
        lines += [fmt(c) for c in cells]
        lines += [
            rule,
            f"total parameters: {total_params:,}",
            f"forward FLOPs per image: {total_flops:,} ({total_flops / 1e6:.2f} MFLOP; a multiply-add counts 2)",
        ]
        return "\n".join(lines)

    def architecture(self) -> list[dict]:
        """JSON-able description: ``[{"type": "Conv2d", "config": {...}}, ...]``."""
        return [{"type": type(layer).__name__, "config": layer.config()} for layer in self.layers]

    @classmethod
    def from_architecture(cls, architecture: object, where: str = "") -> Sequential:
        """Build a model (freshly initialised) from :meth:`architecture` output. ValueError
        (:class:`~fastconv.layers.ArchitectureError`, naming the layer by its path, e.g.
        ``3.body.0``) on anything unknown; what the file held is shown cut to a line. ``where``:
        the path of the branch being built (Residual blocks)."""
        if not isinstance(architecture, list):
            raise ValueError(f"architecture{where and ' at ' + where.rstrip('.')}: expected a list of layers, "
                             f"got {type(architecture).__name__}")  # fmt: skip
        layers = []
        for i, entry in enumerate(architecture):
            at = f"{where}{i}"
            if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
                raise ArchitectureError(at, f"is not a {{'type': ..., 'config': ...}} object: {short_repr(entry)}")
            kind = entry["type"]
            if kind not in LAYER_TYPES:
                raise ArchitectureError(at, f"has unknown type {short_repr(kind)}; known: {sorted(LAYER_TYPES)}")
            config = entry.get("config", {})
            if not isinstance(config, dict):
                raise ArchitectureError(at, f"({kind}) config is not an object: {short_repr(config)}")
            try:
                layers.append(LAYER_TYPES[kind](**config))
            except ArchitectureError as exc:  # from inside a Residual block: prefix this layer's path
                raise ArchitectureError(f"{at}.{exc.where}", exc.reason) from None
            except (TypeError, ValueError) as exc:
                raise ArchitectureError(at, f"({kind}) has an invalid config {short_repr(config)}: {exc}") from exc
        return cls(*layers)

    # --- state ---------------------------------------------------------------------------
    def _state_entries(self) -> list[tuple[str, np.ndarray]]:
        """(state key, live array) for every parameter and buffer, in layer order."""
        out = []
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                out.append((f"{i}.{name}", p.data))
            for name, arr in layer.buffers().items():
                out.append((f"{i}.{name}", arr))
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer (e.g. BatchNorm running statistics), keyed ``"<layer>.<name>"``."""
        return {key: arr.copy() for key, arr in self._state_entries()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy ``state`` into the model's arrays (cast to the model's dtype).

        Raises ValueError listing missing and unexpected keys (when ``strict``) and any shape
        mismatch (always). Nothing is modified unless every check passes.
        """
        entries = self._state_entries()
        expected = {key for key, _ in entries}
        missing = [key for key, _ in entries if key not in state]
        unexpected = [key for key in state if key not in expected]
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for key, arr in entries:
            if key not in state:
                continue
            value = state[key]
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
                problems.append(f"{key}: expected a numeric array, got {getattr(value, 'dtype', type(value).__name__)}")
            elif value.shape != arr.shape:
                problems.append(f"{key}: shape mismatch, model has {arr.shape}, state has {value.shape}")
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for key, arr in entries:
            if key in state:
                np.copyto(arr, state[key], casting="unsafe")

    def save(self, path: PathLike, metadata: dict | None = None) -> Path:
        """Write architecture, weights and ``metadata`` (JSON-able; numpy arrays/scalars are converted
        to lists/numbers) to ``path`` as one .npz, atomically. Returns the path."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            "architecture": np.array(json.dumps(self.architecture())),
            "metadata": np.array(json.dumps(metadata or {}, default=_json_default)),
        }
        for key, arr in self.state_dict().items():
            arrays[_STATE_PREFIX + key] = arr
        atomic_savez(path, arrays)
        return path

    def load_weights(self, path: PathLike, strict: bool = True) -> dict:
        """Load the weights of a model file into this model; the file's architecture must equal ours.

        Returns the file's metadata. ValueError (naming the file) on another architecture or a bad file.
        """
        architecture, state, metadata = read_model_file(path)
        difference = _architecture_difference(architecture, self.architecture())
        if difference:
            raise ValueError(f"{path}: model file holds a different architecture than this model: {difference}")
        try:
            self.load_state_dict(state, strict=strict)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return metadata

    def feature_layers(self) -> int:
        """Number of leading layers that form the feature extractor: everything before the first
        Flatten (for catnet: the convs, BatchNorms, ReLUs and poolings), or all layers if there is none."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Flatten):
                return i
        return len(self.layers)

    def load_backbone(self, path: PathLike) -> dict:
        """Transfer learning: copy the feature extractor's weights (and BatchNorm statistics) from a
        model file; the layers from the first Flatten on (the classifier head) keep their initialisation.

        The file's layers before its first Flatten must equal ours (types and configs; dtype and
        seeds may differ), so a backbone pretrained at another image size or for other classes
        fits. Returns the file's metadata. ValueError naming the file on any mismatch; nothing is
        modified unless every check passes.
        """
        architecture, state, metadata = read_model_file(path)
        n = self.feature_layers()
        if not isinstance(architecture, list):
            raise ValueError(f"{path}: the file's architecture is not a list of layers")
        flat = [i for i, e in enumerate(architecture) if isinstance(e, dict) and e.get("type") == "Flatten"]
        theirs = flat[0] if flat else len(architecture)
        ours = self.architecture()[:n]
        difference = _architecture_difference(architecture[:theirs], ours)
        if difference:
            raise ValueError(f"{path}: its feature layers differ from this model's: {difference}")
        wanted = {key for key, _ in self._state_entries() if int(key.split(".", 1)[0]) < n}
        missing = sorted(wanted - set(state))
        if missing:
            raise ValueError(f"{path}: the file lacks feature-layer weights {missing}")
        try:
            self.load_state_dict({key: state[key] for key in wanted}, strict=False)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return metadata


# Config keys that do not change what a layer computes or which weights it holds.
_RUNTIME_KEYS = ("dtype", "seed")


def _describe(entry: dict) -> str:
    config = entry.get("config", {}) if isinstance(entry, dict) else {}
    if not isinstance(config, dict):  # a malformed file: shown as it is, so the comparison fails
        return short_repr(entry)
    kind = entry.get("type") if isinstance(entry, dict) else short_repr(entry)
    if kind == "Residual":  # its branches are compared layer by layer (_architecture_difference)
        body, short = config.get("body"), config.get("shortcut")
        count = len(short) if isinstance(short, list) else short_repr(short)
        return f"Residual(body: {len(body) if isinstance(body, list) else short_repr(body)} layers, " + (
            "identity shortcut)" if short is None else f"shortcut: {count} layers)")
    # an argument written out at its default (affine=True, groups=1) is the same architecture as
    # one left out: configs only record options that differ, other writers may not
    defaults = {}
    if isinstance(kind, str) and kind in LAYER_TYPES:
        params = inspect.signature(LAYER_TYPES[kind].__init__).parameters.values()
        defaults = {q.name: q.default for q in params if q.default is not inspect.Parameter.empty}
    args = ", ".join(
        f"{k}={v}"
        for k, v in config.items()
        if k not in _RUNTIME_KEYS and not (k in defaults and type(v) is type(defaults[k]) and v == defaults[k])
    )
    return f"{kind}({args})"


def _architecture_difference(theirs: object, ours: list[dict], where: str = "") -> str:
    """'' when the architectures match (ignoring dtype and seeds), else the first difference in one
    line. Residual blocks are compared branch by branch (``where``: the path to the branch)."""
    if not isinstance(theirs, list):
        return f"the file's architecture{where and ' at ' + where} is not a list of layers ({type(theirs).__name__})"
    for i, (a, b) in enumerate(zip(theirs, ours)):
        if b.get("type") == "Residual" and isinstance(a, dict) and a.get("type") == "Residual":
            mine, other = b["config"], a.get("config")
            if not isinstance(other, dict):
                return f"layer {where}{i} is {_describe(a)} in the file but a Residual block in this model"
            extra = sorted(set(other) - set(mine))
            if extra:
                return f"Residual block {where}{i} has unknown settings {short_repr(extra)} in the file"
            for branch in ("body", "shortcut"):
                if (mine.get(branch) is None) != (other.get(branch) is None):
                    has = "has" if other.get(branch) is not None else "has no"
                    return f"Residual block {where}{i} {has} {branch} in the file, unlike this model's"
                if mine.get(branch) is not None:
                    diff = _architecture_difference(other[branch], mine[branch], f"{where}{i}.{branch}.")
                    if diff:
                        return diff
        elif _describe(a) != _describe(b):
            return f"layer {where}{i} is {_describe(a)} in the file but {_describe(b)} in this model"
    if len(theirs) != len(ours):
        return f"the file has {len(theirs)} layers{where and ' at ' + where.rstrip('.')}, this model has {len(ours)}"
    return ""


def _json_default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"metadata: {type(obj).__name__} is not JSON serialisable")


# atomic_write / atomic_savez live in fastconv._io (one implementation for every writer);
# they stay importable from here.


def read_model_file(path: PathLike) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """Read and check a model file: returns (architecture, state dict, metadata).

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for anything
    that is not a complete fastconv model file (not an npz, truncated, pickled objects, missing
    or unreadable entries, unsupported format version, bad JSON).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a model file (expected an .npz written by save() or 'fastconv train')")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: not a fastconv model file (the file is empty)")
    with open(path, "rb") as f:
        head = f.read(6)
    # np.load falls back to unpickling anything that is neither a zip nor a .npy file; with
    # pickles refused, its error would call a JPEG "pickled data". Look at the magic bytes first.
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        raise ValueError(f"{path}: not a fastconv model file (not an .npz archive; it starts with {head!r})")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy file: one bare array
            raise ValueError("a single .npy array, not an .npz archive")
        with archive:
            # Only our entries are decompressed, and only after the sizes their zip headers declare
            # are added up: a small file can inflate to gigabytes (a "zip bomb").
            ours = [k for k in archive.files if k in _TOP_LEVEL_ENTRIES or k.startswith(_STATE_PREFIX)]
            declared = sum(archive.zip.getinfo(k + ".npy").file_size for k in ours)
            if declared > MAX_MODEL_BYTES:
                raise ValueError(
                    f"its entries unpack to {declared:,} bytes, more than the {MAX_MODEL_BYTES:,} "
                    "a model file may hold (fastconv.model.MAX_MODEL_BYTES)"
                )
            contents = {key: archive[key] for key in ours}
            entries = sorted(archive.files)  # all of them, for the error below
    except MemoryError as exc:  # an .npy header declaring a huge array
        raise ValueError(f"{path}: not a readable fastconv model file (an entry declares an array too large "
                         f"for memory: {exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a fastconv model file ({_reason(exc)})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path}: not a readable fastconv model file, corrupt or truncated ({exc})") from exc

    for key in ("format_version", "architecture", "metadata"):
        if key not in contents:
            raise ValueError(f"{path}: not a fastconv model file (no {key!r} entry; has {entries[:8]})")
    version = contents["format_version"]
    if version.shape != () or version.dtype.kind not in "iu":
        raise ValueError(f"{path}: format_version is not an integer scalar")
    if int(version) != FORMAT_VERSION:
        raise ValueError(
            f"{path}: model file format_version {int(version)} is not supported (this fastconv reads {FORMAT_VERSION})"
        )
    architecture = _json_entry(path, contents, "architecture")
    metadata = _json_entry(path, contents, "metadata")
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: metadata is not a JSON object")
    state = {key[len(_STATE_PREFIX) :]: arr for key, arr in contents.items() if key.startswith(_STATE_PREFIX)}
    return architecture, state, metadata


def _reason(exc: ValueError) -> str:
    msg = str(exc)
    if "pickle" in msg.lower():
        return f"it contains pickled Python objects, which are never loaded: {msg}"
    return msg


def _json_entry(path: Path, contents: dict[str, np.ndarray], key: str) -> object:
    value = contents[key]
    if value.shape != () or value.dtype.kind != "U":
        raise ValueError(f"{path}: {key} entry is not a JSON string (dtype {value.dtype}, shape {value.shape})")
    try:
        return json.loads(str(value))
    except (ValueError, RecursionError) as exc:  # also: nesting too deep, integers of > 4300 digits
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: {key} entry is not valid JSON ({reason})") from None


def load_with_metadata(path: PathLike, *, backend: str | None = None) -> tuple[Sequential, dict]:
    """Rebuild the model stored in ``path`` and return ``(model, metadata)``; the model is in eval mode."""
    architecture, state, metadata = read_model_file(path)
    try:
        # uninitialised layers: every value is overwritten by the strict load, or the load fails
        with deferred_init():
            model = Sequential.from_architecture(architecture)
        model.load_state_dict(state, strict=True)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except MemoryError as exc:  # even unfilled, a declared layer can exceed the address space
        raise ValueError(f"{path}: its architecture asks for layers too large for memory ({exc})") from None
    model.set_backend(backend)
    return model.eval(), metadata


def load(path: PathLike, *, backend: str | None = None) -> Sequential:
    """Rebuild the model stored in ``path`` by :meth:`Sequential.save` (eval mode). See the module docstring."""
    return load_with_metadata(path, backend=backend)[0]
