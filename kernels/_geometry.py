"""Argument normalisation and shape arithmetic: the one place where they live.

Every backend receives a :class:`Conv2dGeometry` or :class:`Pool2dGeometry` that was built
here, so no backend ever recomputes an output size or re-parses ``stride=2`` vs ``(2, 2)``.

Output size (PyTorch's convention, floor mode)::

    Ho = floor((H + 2*ph - dh*(R - 1) - 1) / sh) + 1
    Wo = floor((W + 2*pw - dw*(S - 1) - 1) / sw) + 1
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

from ._validate import as_flag

IntOrPair = int | tuple[int, int]


def normalize_pair(value: object, name: str, *, minimum: int) -> tuple[int, int]:
    """Turn ``value`` (an int or a pair of ints) into ``(int, int)``, each >= ``minimum``.

    Raises ``TypeError`` for anything that is not an integer (floats, strings, bools,
    ``None``) and ``ValueError`` for wrong lengths or values below ``minimum``; the message
    names the argument, what was expected and what was given.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"{name}: expected an int or a pair of ints, got a sequence of length {len(value)}: {value!r}"
            )
        items = tuple(value)
    else:
        items = (value, value)
    out = []
    for item in items:
        # bool is an int subclass; `stride=True` is almost surely a bug, so reject it.
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(
                f"{name}: expected an int or a pair of ints, got {value!r} ({type(item).__name__})"
            )
        item = int(item)
        if item < minimum:
            kind = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{name}: expected {kind} integers, got {value!r}")
        out.append(item)
    return out[0], out[1]


def conv_padding(
    padding: object, kernel_size: IntOrPair, stride: IntOrPair = 1, dilation: IntOrPair = 1
) -> tuple[int, int]:
    """Conv padding as ``(ph, pw)``: an int or pair, or PyTorch's strings ``"valid"`` (none) and
    ``"same"`` (output size = input size: stride 1, padding dilation*(k-1)/2 on each side, which
    must be a whole number since padding here is the same on both sides of an axis)."""
    if not isinstance(padding, str):
        return normalize_pair(padding, "padding", minimum=0)
    if padding == "valid":
        return 0, 0
    if padding != "same":
        raise ValueError(f"padding: expected an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    if normalize_pair(stride, "stride", minimum=1) != (1, 1):
        raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride {stride!r}")
    kh, kw = normalize_pair(kernel_size, "kernel_size", minimum=1)
    dh, dw = normalize_pair(dilation, "dilation", minimum=1)
    total = (dh * (kh - 1), dw * (kw - 1))
    if total[0] % 2 or total[1] % 2:
        raise ValueError(
            f"padding='same' with kernel {(kh, kw)} and dilation {(dh, dw)} needs {total} padded rows/columns, "
            "which cannot be split evenly between both sides; use an odd kernel or explicit padding"
        )
    return total[0] // 2, total[1] // 2


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution / pooling along one axis (floor mode)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class Conv2dGeometry:
    """Every size a conv2d kernel needs, validated and normalised.

    x: (n, c, h, w); weight: (k, c / groups, r, s); y: (n, k, ho, wo).
    stride (sh, sw), padding (ph, pw), dilation (dh, dw); a stride along an axis with one output,
    or a dilation along an axis of kernel size 1, is stored as 1 (it cannot change the result).
    ``groups`` splits the channels into independent convolutions (output channels
    [j*k/groups, (j+1)*k/groups) see input channels [j*c/groups, (j+1)*c/groups)); backends'
    ``conv2d_*`` only ever receive groups = 1, ``depthwise_conv2d_*`` groups = c.
    """

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    ho: int
    wo: int
    groups: int = 1

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c // self.groups, self.r, self.s)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.ho, self.wo)

    @property
    def flops(self) -> int:
        """Forward FLOP (multiply + add counted as 2): 2*N*K*Ho*Wo*(C/groups)*R*S. Backward is twice this."""
        return 2 * self.n * self.k * self.ho * self.wo * (self.c // self.groups) * self.r * self.s


def conv2d_geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Conv2dGeometry:
    """Validate a conv2d problem and compute its output size.

    ``x_shape`` is (N, C, H, W), ``w_shape`` is (K, C / groups, R, S). N may be 0 (an empty
    batch); every other size must be positive; ``groups`` must divide C and K.
    """
    sh, sw = normalize_pair(stride, "stride", minimum=1)
    dh, dw = normalize_pair(dilation, "dilation", minimum=1)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups: expected a positive int, got {groups!r} ({type(groups).__name__})")
    if groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    groups = int(groups)
    if len(x_shape) != 4:
        raise ValueError(f"x: expected a 4-d array (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"weight: expected a 4-d array (K, C, R, S), got shape {tuple(w_shape)}")
    n, c, h, w = (int(v) for v in x_shape)
    k, cw, r, s = (int(v) for v in w_shape)
    _require_positive("x", (c, h, w), ("C", "H", "W"), x_shape)
    _require_positive("weight", (k, cw, r, s), ("K", "C", "R", "S"), w_shape)
    ph, pw = conv_padding(padding, (r, s), (sh, sw), (dh, dw))
    if c % groups or k % groups:
        raise ValueError(
            f"groups: expected a divisor of the input channels ({c}, x of shape {tuple(x_shape)}) and of the "
            f"output channels ({k}, weight of shape {tuple(w_shape)}), got {groups}"
        )
    if cw * groups != c:
        per = "" if groups == 1 else f": its {c} channels / groups {groups}"
        raise ValueError(
            f"weight: expected {c // groups} input channels (x of shape {tuple(x_shape)}{per}), "
            f"got weight of shape {tuple(w_shape)} with {cw}"
        )
    eff_r, eff_s = dh * (r - 1) + 1, dw * (s - 1) + 1
    if eff_r > h + 2 * ph or eff_s > w + 2 * pw:
        raise ValueError(
            f"weight: kernel {r}x{s} with dilation ({dh}, {dw}) spans {eff_r}x{eff_s}, larger than the "
            f"padded input {h + 2 * ph}x{w + 2 * pw} (x {h}x{w}, padding ({ph}, {pw}))"
        )
    _require_index_range(h + 2 * ph, w + 2 * pw, (ph, pw))
    ho = conv_output_size(h, r, sh, ph, dh)
    wo = conv_output_size(w, s, sw, pw, dw)
    # A stride never used (one output along that axis) or a dilation never used (kernel size 1)
    # is stored as 1: same result, and no backend ever sees a huge-but-irrelevant value.
    sh, sw = (1 if ho == 1 else sh), (1 if wo == 1 else sw)
    dh, dw = (1 if r == 1 else dh), (1 if s == 1 else dw)
    return Conv2dGeometry(n, c, h, w, k, r, s, sh, sw, ph, pw, dh, dw, ho, wo, groups)


@dataclass(frozen=True)
class Pool2dGeometry:
    """Every size a pooling kernel needs: x (n, c, h, w) -> y (n, c, ho, wo).

    window (kh, kw), stride (sh, sw), padding (ph, pw) with ph <= kh // 2 and pw <= kw // 2,
    which guarantees every window holds at least one real (non-padding) input element.
    """

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    ho: int
    wo: int

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.ho, self.wo)

    @property
    def is_2x2_stride2(self) -> bool:
        """2x2 windows, stride 2, no padding (catnet's pools): non-overlapping windows, for which
        the numba and cython backends have dedicated loops."""
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (2, 2, 2, 2, 0, 0)


def pool_ceil_extension(size: int, kernel: int, stride: int, padding: int) -> int:
    """Rows (or columns) to append to an input so that floor-mode pooling gives PyTorch's
    ``ceil_mode=True`` output length along that axis.

    Ceil mode keeps a last window that would hang over the padded end, except that (PyTorch's
    rule) a window must start inside the input or its leading padding. Appending that overhang
    to the input turns the problem back into floor mode, so no backend knows about ceil mode:
    max pooling appends copies of the edge (a copy never wins: the element it copies comes first
    in window order and ties go to the first), average pooling appends zeros and corrects the
    divisor (:func:`pool_window_counts`).
    """
    out = -(-(size + 2 * padding - kernel) // stride) + 1  # ceil division
    if (out - 1) * stride >= size + padding:
        out -= 1
    return max(0, (out - 1) * stride + kernel - (size + 2 * padding))


def pool_window_counts(size: int, kernel: int, stride: int, padding: int, out: int, include_pad: bool) -> list[int]:
    """How many elements of each of the ``out`` windows along one axis count in an average's
    divisor (PyTorch's rule): those inside the padded input when ``include_pad`` (a ceil-mode
    overhang does not count), else only those inside the input itself."""
    counts = []
    for i in range(out):
        start = i * stride - padding
        end = min(start + kernel, size + padding)
        if not include_pad:
            start, end = max(start, 0), min(end, size)
        counts.append(end - start)
    return counts


def pool2d_geometry(
    x_shape: tuple[int, ...],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
) -> Pool2dGeometry:
    """Validate a pooling problem and compute its output size.

    ``stride=None`` means stride = kernel_size (PyTorch's default). Padding may be at most half
    the window (PyTorch's rule), so a window never lies entirely in the padding.

    With ``ceil_mode`` the output length rounds up (PyTorch's ``ceil_mode=True``) and the
    geometry returned is that of the floor-mode problem the backends solve: ``h`` and ``w``
    include the rows and columns :func:`pool_ceil_extension` appends to the input.
    """
    kh, kw = normalize_pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = (kh, kw) if stride is None else normalize_pair(stride, "stride", minimum=1)
    ph, pw = normalize_pair(padding, "padding", minimum=0)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(
            f"padding: expected at most half the kernel size ({kh // 2}, {kw // 2}) for kernel "
            f"({kh}, {kw}), got ({ph}, {pw})"
        )
    if len(x_shape) != 4:
        raise ValueError(f"x: expected a 4-d array (N, C, H, W), got shape {tuple(x_shape)}")
    n, c, h, w = (int(v) for v in x_shape)
    _require_positive("x", (c, h, w), ("C", "H", "W"), x_shape)
    given_h, given_w = h, w
    if as_flag("ceil_mode", ceil_mode):
        h += pool_ceil_extension(h, kh, sh, ph)
        w += pool_ceil_extension(w, kw, sw, pw)
    if kh > h + 2 * ph or kw > w + 2 * pw:  # (in ceil mode: not even a partial window fits)
        raise ValueError(
            f"kernel_size: window ({kh}, {kw}) is larger than the padded input "
            f"{given_h + 2 * ph}x{given_w + 2 * pw} (x {given_h}x{given_w}, padding ({ph}, {pw}))"
        )
    _require_index_range(h + 2 * ph, w + 2 * pw, (ph, pw))
    ho = conv_output_size(h, kh, sh, ph, 1)
    wo = conv_output_size(w, kw, sw, pw, 1)
    sh, sw = (1 if ho == 1 else sh), (1 if wo == 1 else sw)  # unused strides stored as 1
    return Pool2dGeometry(n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo)


# Largest padded extent any backend indexes. Every used stride, dilation and window is at most the
# padded extent (checked above), so this one bound keeps all index arithmetic far from int64
# overflow in compiled code (i*stride + r*dilation < 2**62).
INDEX_LIMIT = 2**60


def _require_index_range(padded_h: int, padded_w: int, padding: tuple[int, int]) -> None:
    if max(padded_h, padded_w) >= INDEX_LIMIT:
        raise ValueError(
            f"padding: expected a padded input smaller than 2**60 along each axis, got padding {padding} "
            f"(padded size {padded_h}x{padded_w})"
        )


def _require_positive(name: str, sizes: tuple[int, ...], labels: tuple[str, ...], shape) -> None:
    for size, label in zip(sizes, labels):
        if size <= 0:
            raise ValueError(
                f"{name}: expected a positive size for {label}, got shape {tuple(shape)}"
            )


def flat_plane_sizes(g: Conv2dGeometry) -> tuple[int, int, int]:
    """(wp, plane, wide) of the flat padded-plane layout at stride 1 (the depthwise kernels of
    numba and cython, docs/cython.md): rows wp = W + 2*pw wide; a padded plane of ``plane``
    elements, enough for the last tap's offset (R-1)*dh*wp + (S-1)*dw plus a ``wide`` = Ho*wp
    run; the output (or dy) laid out in Ho rows of wp."""
    wp = g.w + 2 * g.pw
    return wp, (g.h + 2 * g.ph) * wp + (g.s - 1) * g.dw, g.ho * wp


def padding_written_out(g: Conv2dGeometry) -> Conv2dGeometry:
    """The same convolution on its input with the zero padding made part of it (H + 2ph, W + 2pw,
    no padding): what a kernel that pads the array itself must be told."""
    return replace(g, h=g.h + 2 * g.ph, w=g.w + 2 * g.pw, ph=0, pw=0)


def check_in_bounds(g: Conv2dGeometry | Pool2dGeometry) -> None:
    """Raise ``ValueError`` unless every window ``g`` describes lies inside its padded input.

    This is the condition under which a compiled kernel, which indexes without checks, stays in
    bounds. Geometries made by :func:`conv2d_geometry` / :func:`pool2d_geometry` always satisfy
    it; it guards hand-made ones passed straight to a backend (``get_backend(name).<op>``).
    """
    if not isinstance(g, (Conv2dGeometry, Pool2dGeometry)):
        raise TypeError(f"geometry: expected a Conv2dGeometry or Pool2dGeometry, got {type(g).__name__}")
    fields = vars(g)
    bad = {k: v for k, v in fields.items() if isinstance(v, bool) or not isinstance(v, int)}
    if bad:
        raise TypeError(f"geometry: expected int fields, got {bad}")
    if g.n < 0 or min(v for k, v in fields.items() if k not in ("n", "ph", "pw")) < 1 or min(g.ph, g.pw) < 0:
        raise ValueError(f"geometry: expected n, ph, pw >= 0 and every other field >= 1, got {g}")
    if isinstance(g, Conv2dGeometry):
        span_h, span_w = g.dh * (g.r - 1) + 1, g.dw * (g.s - 1) + 1
        if g.c % g.groups or g.k % g.groups:
            raise ValueError(f"geometry: groups must divide c and k: {g}")
    else:
        span_h, span_w = g.kh, g.kw
        if 2 * g.ph > g.kh or 2 * g.pw > g.kw:  # the max kernels start from a real element
            raise ValueError(f"geometry: padding larger than half the window: {g}")
    _require_index_range(g.h + 2 * g.ph, g.w + 2 * g.pw, (g.ph, g.pw))
    if (g.ho - 1) * g.sh + span_h > g.h + 2 * g.ph or (g.wo - 1) * g.sw + span_w > g.w + 2 * g.pw:
        raise ValueError(f"geometry: its last window reaches past the padded input: {g}")
