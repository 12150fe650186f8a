# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# boundscheck/wraparound are off because every def function below checks, before its loops,
# that all arrays have the shapes the loops index (x's (N, C, S) and (C,) per channel); the
# backend passes views of arrays that fastconv.kernels dispatch has already validated.
"""Cython batch-normalisation kernels: two fused passes each way, per channel.

Read ``numpy_backend.batch_norm_*`` first: one numpy operation per formula term, each a full
pass over memory and most a temporary array. Batch norm does a handful of flops per value, so
memory traffic is its whole cost, and these kernels cut it to two passes each way:

* forward: ``batch_norm_stats`` reads x twice (sum, then the squared distances from the mean:
  the two-pass variance, which cannot cancel catastrophically as sum(x^2) - M*mean^2 can), then
  ``batch_norm_apply`` reads x and writes ``y = (x - mean) * scale + bias`` (``scale =
  weight / sqrt(var + eps)`` folded once per channel by the caller);
* backward: ``batch_norm_grad_sums`` reads dy and x once for sum(dy) and sum(dy * (x - mean)),
  then ``batch_norm_dx`` writes ``dx = (dy - k0 - (x - mean) * k1) * scale``. xhat is
  recomputed, never stored.

Sums are float64 in LANES independent accumulators, fed LANES consecutive values at a time: a
single accumulator would make every addition wait for the previous one (4 cycles each), and
gcc may not split one sum into SIMD lanes itself (that reorders the additions; only
-ffast-math would allow it, and it also breaks NaN handling). With a fixed-size lane array the
reordering is ours, written out, and gcc vectorises the lane loop (the conv module's
accumulator trick; setup.py builds this module with ``-fdisable-tree-cunrolli`` as well).

Threads: channels are independent, so ``prange`` hands each thread whole channels (each
channel's sums stay in one order, so the result does not depend on the thread count). Small
calls stay serial: the caller passes num_threads = 1 below kernels/_threads.py's
MEMORY_BOUND_PARALLEL_MIN (2**19 values, catnet's smallest batch-norm input). Two threads
measured ~2x faster on all three of catnet's (idle machine, AVX2 build: 0.77 / 1.53 ms forward
/ backward at 32x16x64x64 against 1.8 / 2.6 serial; 0.19 / 0.31 against 0.43 / 0.52 at
32x64x16x16).
"""

from cython cimport floating
from cython.parallel cimport prange

cdef enum:
    LANES = 8


cdef void _check(str name, object a, tuple shape) except *:
    if tuple(a.shape[:len(shape)]) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(a.shape[:len(shape)])}")


cdef void _stats(const floating[:, :, ::1] x, Py_ssize_t ch, double* mean, double* var) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], s = x.shape[2], body = s - s % LANES, i, p, q, l
    cdef double acc[LANES]
    cdef double total = 0.0, mu, d
    cdef const floating* row
    for l in range(LANES):
        acc[l] = 0.0
    for i in range(n):
        row = &x[i, ch, 0]
        for q in range(body // LANES):
            p = q * LANES
            for l in range(LANES):
                acc[l] += row[p + l]
        for p in range(body, s):
            total += row[p]
    for l in range(LANES):
        total += acc[l]
        acc[l] = 0.0
    mu = total / (n * s)
    total = 0.0
    for i in range(n):
        row = &x[i, ch, 0]
        for q in range(body // LANES):
            p = q * LANES
            for l in range(LANES):
                d = row[p + l] - mu
                acc[l] += d * d
        for p in range(body, s):
            d = row[p] - mu
            total += d * d
    for l in range(LANES):
        total += acc[l]
    mean[0] = mu
    var[0] = total / (n * s)


def batch_norm_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var, int num_threads):
    """mean, var (C,) float64 <- each channel's mean and biased variance over x (N, C, S), S >= 1."""
    cdef Py_ssize_t c = x.shape[1], ch
    _check("mean", mean, (c,))
    _check("var", var, (c,))
    if x.shape[0] < 1 or x.shape[2] < 1:
        raise ValueError(f"x: expected N >= 1 and S >= 1, got shape {(x.shape[0], x.shape[1], x.shape[2])}")
    for ch in prange(c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
        _stats(x, ch, &mean[ch], &var[ch])


def batch_norm_apply(const floating[:, :, ::1] x, const floating[::1] scale, const floating[::1] mean,
                     const floating[::1] bias, floating[:, :, ::1] y, int num_threads):
    """y (N, C, S) <- (x - mean) * scale + bias, with per-channel (C,) mean, scale, bias."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], s = x.shape[2], ch, i, p
    cdef floating mu, a, b
    cdef const floating* xr
    cdef floating* yr
    for name, arr in (("scale", scale), ("mean", mean), ("bias", bias)):
        _check(name, arr, (c,))
    _check("y", y, (n, c, s))
    if s == 0:
        return
    for ch in prange(c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
        mu = mean[ch]
        a = scale[ch]
        b = bias[ch]
        for i in range(n):
            xr = &x[i, ch, 0]
            yr = &y[i, ch, 0]
            for p in range(s):
                yr[p] = (xr[p] - mu) * a + b


cdef void _grad_sums(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, Py_ssize_t ch, floating mu,
                     double* sum_dy, double* sum_dy_xc) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], s = x.shape[2], body = s - s % LANES, i, p, q, l
    cdef double acc_g[LANES]
    cdef double acc_gx[LANES]
    cdef double tg = 0.0, tgx = 0.0
    cdef const floating* gr
    cdef const floating* xr
    for l in range(LANES):
        acc_g[l] = 0.0
        acc_gx[l] = 0.0
    for i in range(n):
        gr = &dy[i, ch, 0]
        xr = &x[i, ch, 0]
        for q in range(body // LANES):
            p = q * LANES
            for l in range(LANES):
                acc_g[l] += gr[p + l]
                acc_gx[l] += gr[p + l] * (xr[p + l] - mu)
        for p in range(body, s):
            tg += gr[p]
            tgx += gr[p] * (xr[p] - mu)
    for l in range(LANES):
        tg += acc_g[l]
        tgx += acc_gx[l]
    sum_dy[0] = tg
    sum_dy_xc[0] = tgx


def batch_norm_grad_sums(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const floating[::1] mean,
                         double[::1] sum_dy, double[::1] sum_dy_xc, int num_threads):
    """sum_dy, sum_dy_xc (C,) float64 <- per channel sum(dy) and sum(dy * (x - mean)); (N, C, S) inputs."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], s = x.shape[2], ch
    _check("dy", dy, (n, c, s))
    for name, arr in (("mean", mean), ("sum_dy", sum_dy), ("sum_dy_xc", sum_dy_xc)):
        _check(name, arr, (c,))
    if s == 0:
        sum_dy[:] = 0.0
        sum_dy_xc[:] = 0.0
        return
    for ch in prange(c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
        _grad_sums(dy, x, ch, mean[ch], &sum_dy[ch], &sum_dy_xc[ch])


def batch_norm_dx(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const floating[::1] mean,
                  const floating[::1] scale, const floating[::1] k0, const floating[::1] k1,
                  floating[:, :, ::1] dx, int num_threads):
    """dx (N, C, S) <- (dy - k0 - (x - mean) * k1) * scale, with per-channel (C,) constants."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], s = x.shape[2], ch, i, p
    cdef floating mu, a, b, d
    cdef const floating* gr
    cdef const floating* xr
    cdef floating* dr
    _check("dy", dy, (n, c, s))
    _check("dx", dx, (n, c, s))
    for name, arr in (("mean", mean), ("scale", scale), ("k0", k0), ("k1", k1)):
        _check(name, arr, (c,))
    if s == 0:
        return
    for ch in prange(c, nogil=True, schedule="static", num_threads=num_threads,
                     use_threads_if=num_threads > 1):
        mu = mean[ch]
        a = scale[ch]
        b = k0[ch]
        d = k1[ch]
        for i in range(n):
            gr = &dy[i, ch, 0]
            xr = &x[i, ch, 0]
            dr = &dx[i, ch, 0]
            for p in range(s):
                dr[p] = (gr[p] - b - (xr[p] - mu) * d) * a
