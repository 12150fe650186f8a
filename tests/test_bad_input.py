"""Bad input, one test per case, against every backend.

Each case is either computed correctly or rejected with a ValueError/TypeError whose message
names the argument, what was expected and what was given — before any backend (compiled or
not) sees it.
"""

from __future__ import annotations

import fastconv.kernels as K
import numpy as np
import pytest


def _conv_args(dtype=np.float64, n=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3, 6, 5)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    return x, w, b


def _pool_x(dtype=np.float64):
    return np.random.default_rng(1).standard_normal((2, 3, 6, 5)).astype(dtype)


def test_pool_padding_over_half_the_kernel(backend):
    x = _pool_x()
    with pytest.raises(ValueError, match=r"padding: expected at most half the kernel size .* got \(2, 2\)"):
        K.max_pool2d_forward(x, 3, 1, 2, backend=backend)
    with pytest.raises(ValueError, match=r"padding: expected at most half"):
        K.avg_pool2d_forward(x, (2, 4), 1, (1, 3), backend=backend)
    with pytest.raises(ValueError, match=r"padding: expected at most half"):
        K.avg_pool2d_backward(np.zeros((2, 3, 6, 5)), x.shape, 2, 1, 2, backend=backend)


def test_argmax_out_of_range(backend):
    x = _pool_x()
    y, idx = K.max_pool2d_forward(x, 2, backend=backend)
    for bad_value in (-1, 30, 10**12):
        bad = idx.copy()
        bad[1, 2, 0, 1] = bad_value
        with pytest.raises(ValueError, match=r"argmax: expected indices in \[0, 30\).*got values in"):
            K.max_pool2d_backward(np.ones_like(y), bad, x.shape, backend=backend)


def test_argmax_wrong_shape_and_dtype(backend):
    x = _pool_x()
    y, idx = K.max_pool2d_forward(x, 2, backend=backend)
    with pytest.raises(ValueError, match=r"argmax: expected shape \(2, 3, 3, 2\).*got \(2, 3, 3, 1\)"):
        K.max_pool2d_backward(np.ones_like(y), idx[..., :1], x.shape, backend=backend)
    with pytest.raises(TypeError, match=r"argmax: expected an integer dtype.*got float64"):
        K.max_pool2d_backward(np.ones_like(y), idx.astype(np.float64), x.shape, backend=backend)
    # A narrower integer type is fine: it is widened, and gives the same answer.
    np.testing.assert_array_equal(
        K.max_pool2d_backward(np.ones_like(y), idx.astype(np.int32), x.shape, backend=backend),
        K.max_pool2d_backward(np.ones_like(y), idx, x.shape, backend=backend),
    )


def test_dy_of_the_wrong_shape(backend):
    x, w, _ = _conv_args()
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 4, 4, 3\).*got \(2, 4, 4, 4\)"):
        K.conv2d_backward(np.zeros((2, 4, 4, 4)), x, w, backend=backend)
    px = _pool_x()
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3, 3, 2\).*got \(2, 3, 3, 3\)"):
        K.avg_pool2d_backward(np.zeros((2, 3, 3, 3)), px.shape, 2, backend=backend)
    with pytest.raises(ValueError, match=r"argmax: expected shape"):
        _, idx = K.max_pool2d_forward(px, 2, backend=backend)
        K.max_pool2d_backward(np.zeros((2, 3, 3, 3)), idx, px.shape, backend=backend)
    with pytest.raises(ValueError, match=r"dy: expected batch and channels \(2, 3\)"):
        K.max_pool2d_backward(np.zeros((2, 4, 3, 2)), np.zeros((2, 4, 3, 2), np.int64), px.shape, backend=backend)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3, 6, 5\)"):
        K.relu_backward(np.zeros((2, 3, 6, 4)), px, backend=backend)


def test_wrong_number_of_dimensions(backend):
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match=r"x: expected a 4-d array, got shape \(3, 6, 5\)"):
        K.conv2d_forward(x[0], w, b, backend=backend)
    with pytest.raises(ValueError, match=r"weight: expected a 4-d array, got shape \(4, 3, 3\)"):
        K.conv2d_forward(x, w[..., 0], b, backend=backend)
    with pytest.raises(ValueError, match=r"bias: expected a 1-d array, got shape \(4, 1\)"):
        K.conv2d_forward(x, w, b[:, None], backend=backend)
    with pytest.raises(ValueError, match=r"x: expected a 4-d array"):
        K.max_pool2d_forward(x[None], 2, backend=backend)
    with pytest.raises(ValueError, match=r"input_shape: expected a 4-tuple"):
        K.avg_pool2d_backward(np.zeros((2, 3, 3, 2)), (3, 6, 5), 2, backend=backend)


def test_bias_of_the_wrong_length(backend):
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\).*got \(3,\)"):
        K.conv2d_forward(x, w, b[:3], backend=backend)


def test_channel_mismatch_between_x_and_weight(backend):
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match=r"weight: expected 3 input channels.*got weight of shape \(4, 2, 3, 3\)"):
        K.conv2d_forward(x, w[:, :2].copy(), b, backend=backend)
    with pytest.raises(ValueError, match=r"weight: expected 3 input channels"):
        K.conv2d_backward(np.zeros((2, 4, 4, 3)), x, w[:, :2].copy(), backend=backend)


def test_kernel_larger_than_padded_input(backend):
    x, w, b = _conv_args()  # x is 6x5
    big = np.zeros((4, 3, 7, 3))
    with pytest.raises(ValueError, match=r"weight: kernel 7x3 .* larger than the padded input 6x5"):
        K.conv2d_forward(x, big, b, backend=backend)
    # Dilation counts: a 3x3 kernel at dilation 3 spans 7x7.
    with pytest.raises(ValueError, match=r"spans 7x7, larger than the padded input"):
        K.conv2d_forward(x, w, b, dilation=3, backend=backend)
    # ... and padding rescues it: 7 <= 6 + 2*1.
    assert K.conv2d_forward(x, big, b, padding=1, backend=backend).shape == (2, 4, 2, 5)
    with pytest.raises(ValueError, match=r"kernel_size: window \(7, 2\) is larger than the padded input"):
        K.max_pool2d_forward(x, (7, 2), backend=backend)


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [0, -1, (1, 0), (-2, 1)])
def test_zero_or_negative_stride_and_dilation(backend, name, value):
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match=rf"{name}: expected positive integers, got"):
        K.conv2d_forward(x, w, b, **{name: value}, backend=backend)
    if name == "stride":
        with pytest.raises(ValueError, match=r"stride: expected positive integers"):
            K.max_pool2d_forward(x, 2, value, backend=backend)


@pytest.mark.parametrize("value", [-1, (0, -1)])
def test_negative_padding(backend, value):
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match=r"padding: expected >= 0 integers, got"):
        K.conv2d_forward(x, w, b, padding=value, backend=backend)
    with pytest.raises(ValueError, match=r"padding: expected >= 0 integers"):
        K.avg_pool2d_forward(x, 2, 1, value, backend=backend)


@pytest.mark.parametrize("value", [1.0, 2.5, "2", None, True, (1, 1.5), [1, 2, 3], np.float64(2)])
def test_non_integer_sizes(backend, value):
    x, w, b = _conv_args()
    exc = ValueError if isinstance(value, list) else TypeError
    with pytest.raises(exc, match=r"stride: expected an int or a pair of ints"):
        K.conv2d_forward(x, w, b, stride=value, backend=backend)
    if value is not None:  # None means "stride = kernel_size" for pooling; test kernel_size instead
        with pytest.raises(exc, match=r"kernel_size: expected an int or a pair of ints"):
            K.max_pool2d_forward(x, value, backend=backend)
    # numpy integers are integers.
    assert K.conv2d_forward(x, w, b, stride=np.int64(2), backend=backend).shape == (2, 4, 2, 2)


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint8, np.bool_, np.float16, np.complex128, object, np.longdouble]
)
def test_unsupported_dtypes(backend, dtype):
    x, w, b = _conv_args()
    bad = x.astype(dtype)
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"x: expected dtype float32 or float64, got {name}"):
        K.conv2d_forward(bad, w, b, backend=backend)
    with pytest.raises(TypeError, match=rf"weight: expected dtype float32 or float64, got {name}"):
        K.conv2d_forward(x, w.astype(dtype), b, backend=backend)
    with pytest.raises(TypeError, match=r"x: expected dtype float32 or float64"):
        K.max_pool2d_forward(bad, 2, backend=backend)
    with pytest.raises(TypeError, match=r"x: expected dtype float32 or float64"):
        K.relu_forward(bad, backend=backend)


def test_not_an_array(backend):
    x, w, b = _conv_args()
    with pytest.raises(TypeError, match=r"x: expected a numpy.ndarray of float32 or float64, got list"):
        K.conv2d_forward(x.tolist(), w, b, backend=backend)


def test_mixed_float32_and_float64(backend):
    x, w, b = _conv_args()
    with pytest.raises(TypeError, match=r"weight: expected dtype float64 to match x, got float32"):
        K.conv2d_forward(x, w.astype(np.float32), b, backend=backend)
    with pytest.raises(TypeError, match=r"bias: expected dtype float32 to match x, got float64"):
        K.conv2d_forward(x.astype(np.float32), w.astype(np.float32), b, backend=backend)
    with pytest.raises(TypeError, match=r"x: expected dtype float32 to match dy, got float64"):
        K.conv2d_backward(np.zeros((2, 4, 4, 3), np.float32), x, w, backend=backend)
    with pytest.raises(TypeError, match=r"x: expected dtype float32 to match dy"):
        K.relu_backward(np.zeros(x.shape, np.float32), x, backend=backend)


def test_non_contiguous_and_fortran_arrays_are_computed_correctly(backend):
    x, w, b = _conv_args()
    dy = np.random.default_rng(2).standard_normal((2, 4, 4, 3))
    ref_y = K.conv2d_forward(x, w, b, backend=backend)
    ref_g = K.conv2d_backward(dy, x, w, backend=backend)
    def strided(a: np.ndarray) -> np.ndarray:
        """A non-contiguous view (every other element of a bigger buffer) with a's values."""
        big = np.zeros(tuple(2 * d for d in a.shape))
        big[::2, ::2, ::2, ::2] = a
        return big[::2, ::2, ::2, ::2]

    views = {
        "fortran": (np.asfortranarray(x), np.asfortranarray(w), np.asfortranarray(dy)),
        "strided": (strided(x), strided(w), strided(dy)),
        "byteswapped": (x.astype(x.dtype.newbyteorder(">")), w, dy),
    }
    for label, (xv, wv, dyv) in views.items():
        assert not (xv.flags.c_contiguous and xv.dtype.isnative), label
        np.testing.assert_array_equal(K.conv2d_forward(xv, wv, b, backend=backend), ref_y, err_msg=label)
        for got, ref in zip(K.conv2d_backward(dyv, xv, wv, backend=backend), ref_g):
            np.testing.assert_array_equal(got, ref, err_msg=label)
        ym, im = K.max_pool2d_forward(xv, 2, backend=backend)
        y0, i0 = K.max_pool2d_forward(x, 2, backend=backend)
        np.testing.assert_array_equal(ym, y0, err_msg=label)
        np.testing.assert_array_equal(im, i0, err_msg=label)
        np.testing.assert_array_equal(K.relu_forward(xv, backend=backend), K.relu_forward(x, backend=backend))


def test_non_contiguous_argmax_and_pool_gradients(backend):
    x = _pool_x()
    y, idx = K.max_pool2d_forward(x, 2, backend=backend)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    ref = K.max_pool2d_backward(dy, idx, x.shape, backend=backend)
    got = K.max_pool2d_backward(np.asfortranarray(dy), np.asfortranarray(idx), x.shape, backend=backend)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(
        K.avg_pool2d_backward(np.asfortranarray(dy), x.shape, 2, backend=backend),
        K.avg_pool2d_backward(dy, x.shape, 2, backend=backend),
    )


def test_empty_batch(backend):
    x, w, b = _conv_args(n=0)
    y = K.conv2d_forward(x, w, b, padding=1, backend=backend)
    assert y.shape == (0, 4, 6, 5) and y.dtype == x.dtype
    dx, dw, db = K.conv2d_backward(y, x, w, padding=1, backend=backend)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (4,)
    assert not dw.any() and not db.any()  # no images: no gradient
    py, idx = K.max_pool2d_forward(x, 2, backend=backend)
    assert py.shape == (0, 3, 3, 2) and idx.dtype == np.int64
    assert K.max_pool2d_backward(py, idx, x.shape, backend=backend).shape == x.shape
    assert K.avg_pool2d_backward(py, x.shape, 2, backend=backend).shape == x.shape
    assert K.relu_forward(x, backend=backend).shape == x.shape


def test_zero_sized_channels_or_spatial_dims_rejected(backend):
    with pytest.raises(ValueError, match=r"x: expected a positive size for C, got shape \(1, 0, 4, 4\)"):
        K.conv2d_forward(np.zeros((1, 0, 4, 4)), np.zeros((2, 0, 3, 3)), backend=backend)
    with pytest.raises(ValueError, match=r"weight: expected a positive size for K"):
        K.conv2d_forward(np.zeros((1, 1, 4, 4)), np.zeros((0, 1, 3, 3)), backend=backend)
    with pytest.raises(ValueError, match=r"x: expected a positive size for W"):
        K.max_pool2d_forward(np.zeros((1, 1, 4, 0)), 1, backend=backend)


def test_nan_and_inf_never_crash_in_backward(backend):
    x, w, _ = _conv_args()
    x[0, 0, 0, 0] = np.nan
    x[1, 2, 3, 3] = np.inf
    dy = np.ones((2, 4, 4, 3))
    dx, dw, db = K.conv2d_backward(dy, x, w, backend=backend)
    assert np.all(np.isfinite(dx))  # dx = dy * w: x's NaN never enters it
    assert np.isnan(dw).any() and np.all(np.isfinite(db))
    _, idx = K.max_pool2d_forward(x, 2, backend=backend)
    dxp = K.max_pool2d_backward(dy[:, :3, :3, :2], idx, x.shape, backend=backend)
    assert dxp[0, 0, 0, 0] == 1.0  # the NaN won its window and receives the gradient


def test_unknown_backend():
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match=r"backend: expected one of .* got 'cuda'"):
        K.conv2d_forward(x, w, b, backend="cuda")


def test_huge_but_irrelevant_stride_and_dilation_are_computed(backend):
    """One output along an axis makes its stride unused, a 1-wide kernel its dilation: such
    values, however large, must not reach (or overflow in) a backend."""
    x, w, b = _conv_args()  # x 6x5, w 3x3
    ref = K.conv2d_forward(x, w, b, stride=1, padding=0, backend="python")[:, :, :1, :1]
    np.testing.assert_allclose(K.conv2d_forward(x[:, :, :3, :3], w, b, stride=10**30, backend=backend), ref,
                               rtol=1e-12)
    one = w[:, :, :1, :1].copy()
    np.testing.assert_allclose(K.conv2d_forward(x, one, b, dilation=2**70, backend=backend),
                               K.conv2d_forward(x, one, b, backend="python"), rtol=1e-12)
    y, idx = K.max_pool2d_forward(x, (6, 5), stride=10**30, backend=backend)
    assert y.shape == (2, 3, 1, 1) and np.array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(idx[..., 0, 0], x.reshape(2, 3, -1).argmax(axis=-1))


def test_padding_beyond_the_index_range(backend):
    x, w, b = _conv_args()
    with pytest.raises(ValueError, match=r"padding: expected a padded input smaller than 2\*\*60.*got padding"):
        K.conv2d_forward(x, w, b, stride=2**62, padding=2**61, backend=backend)
    with pytest.raises(ValueError, match=r"padding: expected a padded input smaller than 2\*\*60"):
        K.avg_pool2d_forward(x, 2**62, 2**62, 2**61, backend=backend)


def test_batch_norm_bad_arguments(backend):
    x = np.ones((2, 3, 4, 4))
    w, b, zeros, ones = np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)
    cases = [
        (lambda: K.batch_norm_forward(x, np.ones(4), b), ValueError,
         r"weight: expected shape \(3,\) \(one value per channel of x\), got \(4,\)"),
        (lambda: K.batch_norm_forward(x, w, np.ones(2)), ValueError, r"bias: expected shape \(3,\)"),
        (lambda: K.batch_norm_forward(x, w.astype(np.float32), b), TypeError,
         "weight: expected dtype float64 to match x, got float32"),
        (lambda: K.batch_norm_forward(x, w, b, 0.0), ValueError, "eps: expected a finite number > 0, got 0.0"),
        (lambda: K.batch_norm_forward(x, w, b, float("nan")), ValueError, "eps: expected a finite number > 0"),
        (lambda: K.batch_norm_forward(x, w, b, 1e-5, zeros, None), ValueError, "mean and var: expected both"),
        (lambda: K.batch_norm_forward(x, w, b, 1e-5, zeros, -ones), ValueError,
         r"var: expected variances >= 0, got a minimum of -1.0"),
        (lambda: K.batch_norm_forward(x, w, b, 1e-5, np.zeros(2), ones), ValueError, r"mean: expected shape \(3,\)"),
        (lambda: K.batch_norm_forward(x[:1, :, :1, :1], w, b), ValueError,
         r"more than 1 value per channel for batch statistics \(N\*H\*W > 1\), got shape \(1, 3, 1, 1\)"),
        (lambda: K.batch_norm_forward(x[0], w, b), ValueError, r"x: expected a 4-d array, got shape \(3, 4, 4\)"),
        (lambda: K.batch_norm_backward(x[:, :, :2], x, w, zeros, ones), ValueError,
         r"dy: expected shape \(2, 3, 4, 4\) \(the shape of x\), got \(2, 3, 2, 4\)"),
        (lambda: K.batch_norm_backward(x, x, w, None, None), ValueError,
         "mean and var: expected the .C,. statistics the forward pass used, got None"),
        (lambda: K.batch_norm_backward(x, x, w, zeros, ones, 1e-5, 1), TypeError, "training: expected True or False"),
        (lambda: K.batch_norm_backward(x, x.astype(np.float32), w, zeros, ones), TypeError,
         "x: expected dtype float64 to match dy, got float32"),
        (lambda: K.batch_norm_backward(x[:1, :, :1, :1], x[:1, :, :1, :1], w, zeros, ones, 1e-5, True), ValueError,
         "more than 1 value per channel"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    # One value per channel is fine with given statistics (inference on a single 1x1 image).
    y, _, _ = K.batch_norm_forward(x[:1, :, :1, :1], w, b, 1e-5, zeros, ones, backend=backend)
    np.testing.assert_allclose(y, np.full((1, 3, 1, 1), 1 / np.sqrt(1 + 1e-5)))


def test_huge_windows_and_paddings_are_fast_or_refused_clearly():
    """A window of 2**40 over a 6x7 input is valid (one output, padding ignored by max): cython
    and numba visit only the taps that meet real input (numba used to loop 2**40 times), and the
    backends that would build padded copies refuse with the size instead of numpy's
    'array is too big' or an allocation of TiB."""
    x = _pool_x()
    ref_y, ref_a = K.max_pool2d_forward(x, 2**40, 2**40, 2**39, backend="cython")
    np.testing.assert_array_equal(ref_y[..., 0, 0], x.max(axis=(2, 3)))
    avg = K.avg_pool2d_forward(x, 401, 1, 200, backend="cython")
    for backend in {"numba", "cython"} & set(K.available_backends()):
        y, a = K.max_pool2d_forward(x, 2**40, 2**40, 2**39, backend=backend)
        np.testing.assert_array_equal(a, ref_a)
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_allclose(K.avg_pool2d_forward(x, 401, 1, 200, backend=backend), avg, rtol=1e-12)
    with pytest.raises(ValueError, match=r"padding \(549755813888, 549755813888\): the numpy backend would build"):
        K.max_pool2d_forward(x, 2**40, 2**40, 2**39, backend="numpy")
    if "numba" in K.available_backends():
        with pytest.raises(ValueError, match=r"numba backend would need a [\d.e+]+ GiB work array"):
            K.conv2d_forward(np.ones((1, 1, 1, 1)), np.ones((1, 1, 2, 1)), None, 1, (2**39, 0), (2**40, 1),
                             backend="numba")


def test_flags_masked_arrays_channels_and_numpy_scalars(backend):
    x, w, _ = _conv_args()
    dy = np.ones((2, 4, 6, 5))
    with pytest.raises(TypeError, match=r"need_dx: expected True or False, got 'no'"):
        K.conv2d_backward(dy, x, w, 1, 1, need_dx="no", backend=backend)  # a string is not False
    assert K.conv2d_backward(dy, x, w, 1, 1, need_dx=np.bool_(False), backend=backend)[0] is None
    with pytest.raises(TypeError, match=r"masked arrays are not supported"):
        K.relu_forward(np.ma.masked_less(x, 0), backend=backend)
    with pytest.raises(ValueError, match=r"x: expected a positive size for C"):
        K.batch_norm_forward(np.ones((2, 0, 3, 3)), np.ones(0), np.ones(0), backend=backend)
    xb = np.random.default_rng(2).standard_normal((2, 3, 4, 4))
    y_int_eps = K.batch_norm_forward(xb, np.ones(3), np.zeros(3), np.int64(1), backend=backend)[0]
    np.testing.assert_allclose(y_int_eps, K.batch_norm_forward(xb, np.ones(3), np.zeros(3), 1.0, backend=backend)[0])
    zero_d = K.relu_forward(np.array(-2.0), backend=backend)
    assert isinstance(zero_d, np.ndarray) and zero_d.shape == () and zero_d == 0
