"""Launch wrappers for the CUDA kernels in ``kernels/*.cu`` (CuPy only).

Every function takes and returns CuPy arrays (float32 or float64, made C-contiguous here)
and plain Python ints for the noise address ``(seed, offset, stream)`` -- the same address
``minivae.random`` uses on the CPU, so ``reparameterize_forward(mu, lv, s, o)`` equals
``mu + exp(lv / 2) * minivae.random.normal(mu.shape, s, o, mu.dtype)`` to float rounding
(and the Philox words behind it bit for bit).

Row ops (KL, fused) reduce over the last axis, like ``F.kl_normal_std``: an array of shape
(..., D) is prod(shape[:-1]) rows of D elements, and the KL has shape ``shape[:-1]`` ((B, D)
gives (B,), (S, B, D) gives (S, B)).

Scalars are passed as NumPy scalars of the C types (``np.int64`` for ``long long``,
``np.uint64`` for ``unsigned long long``, ``np.uint32`` for ``unsigned int``): raw kernels
check nothing.
"""
from __future__ import annotations

import math
import threading

import numpy as np

from ..checks import check_integer
from ..random import check_address, check_dtype, check_elements, check_shape
from ._source import KERNEL_FILES, NVRTC_OPTIONS, kernel_source

try:  # CuPy is optional: minivae works on NumPy alone, and this module imports without it
    import cupy as cp
except ImportError as _exc:  # pragma: no cover - exercised on machines without CuPy
    cp = None
    _CUPY_IMPORT_ERROR = _exc
else:
    _CUPY_IMPORT_ERROR = None

__all__ = [
    "is_available", "require", "get_function",
    "philox_words", "normal", "uniform", "gumbel",
    "reparameterize_forward", "reparameterize_backward",
    "kl_normal_std_forward", "kl_normal_std_backward",
    "reparameterize_kl_forward", "reparameterize_kl_backward",
    "bernoulli_log_prob_forward", "bernoulli_log_prob_backward",
    "gaussian_log_prob_forward", "gaussian_log_prob_backward", "bias_act", "relu_grad", "bias_grad",
    "logsumexp_forward", "logsumexp_backward", "log_softmax_forward", "log_softmax_backward",
    "adam_update",
]

BLOCK = 256  # MV_BLOCK in kernels/device.cuh
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_NULL = np.uint64(0)  # a null pointer argument (8 bytes, like a device pointer)

_lock = threading.Lock()
_modules: dict = {}


def is_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


_ready = False


def require() -> None:
    """Raise one clear error when the GPU path cannot run (checked once, then cached)."""
    global _ready
    if _ready:
        return
    if cp is None:
        raise RuntimeError(
            "minivae.gpu needs CuPy: install it with `pip install 'minivae[gpu]'` "
            f"(cupy-cuda12x) on a machine with a CUDA GPU ({_CUPY_IMPORT_ERROR})")
    if not is_available():
        raise RuntimeError("minivae.gpu: CuPy is installed but no CUDA device is visible")
    _ready = True


def _module(filename: str):
    """The ``cupy.RawModule`` of ``kernels/<filename>``, compiled by NVRTC at first use (and
    cached on disk by CuPy, keyed by the inlined source and the options)."""
    require()
    dev = cp.cuda.runtime.getDevice()
    key = (filename, dev)
    mod = _modules.get(key)
    if mod is None:
        with _lock:
            mod = _modules.get(key)
            if mod is None:
                mod = cp.RawModule(code=kernel_source(filename), options=NVRTC_OPTIONS)
                _modules[key] = mod
    return mod


_FUNC_FILE = {
    "mv_philox_words": "random.cu", "mv_normal": "random.cu", "mv_uniform": "random.cu", "mv_gumbel": "random.cu",
    "mv_reparam_fwd": "reparam.cu", "mv_reparam_bwd": "reparam.cu",
    "mv_kl_fwd": "kl.cu", "mv_kl_bwd": "kl.cu",
    "mv_reparam_kl_fwd": "fused.cu", "mv_reparam_kl_bwd": "fused.cu",
    "mv_bernoulli_fwd": "bernoulli.cu", "mv_bernoulli_bwd": "bernoulli.cu",
    "mv_gaussian_fwd": "gaussian.cu", "mv_gaussian_bwd": "gaussian.cu",
    "mv_bias_act": "dense.cu", "mv_relu_grad": "dense.cu", "mv_bias_grad": "dense.cu",
    "mv_logsumexp_fwd": "logsumexp.cu", "mv_logsumexp_bwd": "logsumexp.cu",
    "mv_log_softmax_fwd": "logsumexp.cu", "mv_log_softmax_bwd": "logsumexp.cu",
    "mv_adam": "adam.cu",
    "mv_step_advance": "step.cu",
}
assert set(_FUNC_FILE.values()) <= set(KERNEL_FILES)


_functions: dict = {}


def get_function(base: str, dtype=None):
    """The kernel ``base`` (``base_f32``/``base_f64`` when a dtype is given), cached per device
    (launches at MNIST sizes are dominated by such Python overheads)."""
    name = base if dtype is None else f"{base}_{_SUFFIX[np.dtype(dtype)]}"
    key = (name, cp.cuda.runtime.getDevice())
    fn = _functions.get(key)
    if fn is None:
        fn = _functions[key] = _module(_FUNC_FILE[base]).get_function(name)
    return fn


# ------------------------------------------------------------------------------ helpers
_sm_count: dict = {}


def _max_grid() -> int:
    dev = cp.cuda.runtime.getDevice()
    n = _sm_count.get(dev)
    if n is None:
        n = _sm_count[dev] = cp.cuda.Device(dev).attributes["MultiProcessorCount"]
    return 32 * n  # grid-stride loops beyond this (8 resident 256-thread blocks x 4 waves)


def _address(seed, offset, stream):
    """The address of a draw as the kernels take it, checked as ``minivae.random`` checks it."""
    seed, offset, stream = check_address(seed, offset, stream)
    return np.uint64(seed), np.uint64(offset), np.uint32(stream)


def _device_words(x, name, dtype, size):
    """A device array argument read by a kernel (``size`` values of ``dtype``), or a null pointer
    for None."""
    if x is None:
        return _NULL
    if not isinstance(x, cp.ndarray) or x.dtype != dtype or x.size != size or not x.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous CuPy {np.dtype(dtype).name} array of {size} "
                         f"values, got {x!r}")
    return x


def _offset_from(x):
    return _device_words(x, "offset_from", np.uint64, 1)


def _float_array(x, name):
    require()
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"{name}: expected a CuPy array, got {type(x).__name__}")
    if x.dtype not in _SUFFIX:
        raise TypeError(f"{name}: dtype must be float32 or float64, got {x.dtype}")
    # (ascontiguousarray would turn a 0-d array into shape (1,))
    return x if x.flags.c_contiguous else cp.ascontiguousarray(x)


def _same(ref, x, name, shape=None):
    x = _float_array(x, name)
    if x.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {x.dtype} differs from {ref.dtype}")
    want = ref.shape if shape is None else shape
    if x.shape != want:
        raise ValueError(f"{name}: shape {x.shape} differs from {want}")
    return x


def _repeating(ref, a, name):
    """``a`` checked against ``ref``: the same dtype, and the shape of ``ref`` or of its trailing
    axes (a 0-d array: one value for all), C-contiguous. Returns ``a`` and the period with which
    its values repeat over the elements of ``ref`` (its size)."""
    a = _float_array(a, name)
    if a.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {a.dtype} differs from {ref.dtype}")
    if a.ndim > ref.ndim or a.shape != ref.shape[ref.ndim - a.ndim:]:
        raise ValueError(f"{name}: shape {a.shape} is not {ref.shape} or that of its trailing axes")
    return a, a.size


def _rows(x):
    """(rows, D, shape of the per-row result) of an array reduced over its last axis."""
    if x.ndim == 0:
        raise ValueError("row ops reduce over the last axis: a 0-d array has none")
    return math.prod(x.shape[:-1]), x.shape[-1], x.shape[:-1]


COLUMNS = 8  # MV_COLUMNS in kernels/chunks.cuh: the columns a block of a column reduction takes
#: The most columns one launch of a column reduction takes: a block per COLUMNS of them (its
#: kernels have no grid-stride loop), in a grid of at most 2**31 - 1 blocks, CUDA's limit.
MAX_COLUMNS = COLUMNS * (2**31 - 1)


def _column_launch(N, name, what="columns"):
    """(grid, block) of a column reduction over N columns: a block per MV_COLUMNS of them.

    More than MAX_COLUMNS are refused (ValueError naming the array ``name`` and ``what`` its
    columns are), before the caller allocates anything: CUDA refuses their grid only at the
    launch, with an error that names neither."""
    if N > MAX_COLUMNS:
        raise ValueError(f"{name}: one launch takes at most {MAX_COLUMNS} {what} ({COLUMNS} per block, "
                         f"2**31 - 1 blocks), got {N}")
    return (-(-N // COLUMNS),), (BLOCK,)


def _flat_launch(threads):
    """(grid, block) of a 1-D launch of ``threads`` threads: blocks of BLOCK, at most
    ``_max_grid()`` of them (the kernels' grid-stride loops cover the rest)."""
    return (max(1, min(-(-threads // BLOCK), _max_grid())),), (BLOCK,)


def _chunks(n):
    """Chunks (Philox blocks of 4 elements) of n elements: the threads of a flat noise kernel."""
    return (n + 3) // 4


TILE = 4096  # MV_TILE in kernels/chunks.cuh


def rows_per_tile(D: int) -> int:
    """Rows per tile of the forward row kernels: mv_row_tiling_of(D).rows of kernels/chunks.cuh
    (the most rows, a multiple of 4 / gcd(D, 4), that fit in TILE elements; at least one)."""
    m = 1 if D % 4 == 0 else (2 if D % 2 == 0 else 4)
    return max(1, TILE // (m * D) * m)


def _row_sums_out(rshape, D, dtype):
    """The output of a forward row kernel: left uninitialized when the kernel writes every row
    (D > 0; a memset would add B writes to its traffic), zeros for the empty sums of D = 0."""
    return cp.empty(rshape, dtype=dtype) if D else cp.zeros(rshape, dtype=dtype)


def _row_forward_launch(B, D):
    """(grid, block) of a forward row kernel: one block per tile, so that the hardware hands
    the tiles out as blocks finish (a grid-stride loop would give some blocks one tile more)."""
    return (max(1, min(-(-B // rows_per_tile(D)), 2 ** 31 - 1)),), (BLOCK,)


def _row_sums(base, rows_of, *inputs):
    """Launch the forward row kernel ``base`` (arguments: ``inputs``, then its output, B and D)
    over the rows of ``rows_of`` (..., D); returns its output, one value per row."""
    B, D, rshape = _rows(rows_of)
    out = _row_sums_out(rshape, D, rows_of.dtype)
    if B and D:
        get_function(base, rows_of.dtype)(*_row_forward_launch(B, D), (*inputs, out, np.int64(B), np.int64(D)))
    return out


# ------------------------------------------------------------------------------ generators
def philox_words(n: int, seed: int, offset: int = 0, stream: int = 0):
    """Raw words of elements 0 .. n-1 of the draw: uint32 (n,) (== minivae.random.philox_words)."""
    require()
    n = check_integer(n, "n", minimum=0)
    check_elements(n)
    out = cp.empty(n, dtype=cp.uint32)
    if n:
        s, o, st = _address(seed, offset, stream)
        get_function("mv_philox_words")(*_flat_launch(_chunks(n)), (out, np.int64(n), s, o, st))
    return out


def _generate(base, shape, seed, offset, dtype, stream, offset_from):
    """The draw of generator kernel ``base``, its shape and dtype checked as the CPU checks them
    (``offset_from``: see ``normal``)."""
    require()
    shape = check_shape(shape)
    dtype = check_dtype(dtype)
    n = math.prod(shape)
    check_elements(n)
    out = cp.empty(shape, dtype=dtype)
    if n:
        s, o, st = _address(seed, offset, stream)
        grid, block = _flat_launch(_chunks(n))
        get_function(base, dtype)(grid, block, (out, np.int64(n), s, o, _offset_from(offset_from), st))
    return out


def normal(shape, seed: int, offset: int = 0, dtype=np.float32, stream: int = 0, offset_from=None):
    """Standard normals of the draw (seed, offset, stream) on the GPU (== minivae.random.normal:
    the same words; float32 normals to a few ulps, the kernel's transform being in float32).
    ``offset_from`` (a CuPy uint64 array of one value, or None) adds its value to the offset
    when the kernel runs: the noise of a captured CUDA graph."""
    return _generate("mv_normal", shape, seed, offset, dtype, stream, offset_from)


def uniform(shape, seed: int, offset: int = 0, dtype=np.float32, stream: int = 0, offset_from=None):
    """Uniforms in (0, 1) of the draw (seed, offset, stream) on the GPU (== minivae.random.uniform,
    bit for bit; ``offset_from``: see ``normal``)."""
    return _generate("mv_uniform", shape, seed, offset, dtype, stream, offset_from)


def gumbel(shape, seed: int, offset: int = 0, dtype=np.float32, stream: int = 0, offset_from=None):
    """Standard Gumbel samples -log(-log(u)) of the draw (seed, offset, stream) on the GPU
    (== minivae.random.gumbel: u the uniform of ``dtype``, the logs in float64, rounded once;
    ``offset_from``: see ``normal``)."""
    return _generate("mv_gumbel", shape, seed, offset, dtype, stream, offset_from)


# ------------------------------------------------------------------------------ reparameterization
def reparameterize_forward(mu, logvar, seed: int, offset: int = 0, stream: int = 0, offset_from=None):
    """z = mu + exp(logvar / 2) * eps, eps = element i of the draw (seed, offset, stream),
    generated in registers (never stored). ``offset_from`` (a CuPy uint64 array of one value, or
    None) adds its value to the offset when the kernel runs: the noise of a captured CUDA graph."""
    mu = _float_array(mu, "mu")
    logvar = _same(mu, logvar, "logvar")
    n = mu.size
    check_elements(n)
    z = cp.empty_like(mu)
    if n:
        s, o, st = _address(seed, offset, stream)
        grid, block = _flat_launch(_chunks(n))
        get_function("mv_reparam_fwd", mu.dtype)(
            grid, block, (mu, logvar, z, np.int64(n), s, o, _offset_from(offset_from), st))
    return z


def reparameterize_backward(dz, logvar, seed: int, offset: int = 0, stream: int = 0,
                            copy_dmu: bool = False, offset_from=None):
    """Gradients of z = mu + exp(logvar / 2) * eps with eps regenerated from its address:
    returns ``(dmu, dlogvar)`` with ``dmu = dz`` (the same array unless ``copy_dmu``) and
    ``dlogvar = dz * eps * exp(logvar / 2) / 2`` (``offset_from``: see reparameterize_forward)."""
    logvar = _float_array(logvar, "logvar")
    dz = _same(logvar, dz, "dz")
    n = dz.size
    check_elements(n)
    dlogvar = cp.empty_like(dz)
    dmu = cp.empty_like(dz) if copy_dmu else None
    if n:
        s, o, st = _address(seed, offset, stream)
        grid, block = _flat_launch(_chunks(n))
        get_function("mv_reparam_bwd", dz.dtype)(
            grid, block, (dz, logvar, dmu if copy_dmu else _NULL, dlogvar, np.int64(n), s, o,
                          _offset_from(offset_from), st))
    return (dmu if copy_dmu else dz), dlogvar


# ------------------------------------------------------------------------------ KL to N(0, I)
def kl_normal_std_forward(mu, logvar):
    """kl[...] = sum over the last axis of (mu^2 + exp(logvar) - 1 - logvar) / 2: shape[:-1]."""
    mu = _float_array(mu, "mu")
    logvar = _same(mu, logvar, "logvar")
    return _row_sums("mv_kl_fwd", mu, mu, logvar)


def kl_normal_std_backward(gkl, mu, logvar):
    """dmu = gkl[..., None] * mu, dlogvar = gkl[..., None] * (exp(logvar) - 1) / 2
    (gkl: one value per row, shape[:-1])."""
    mu = _float_array(mu, "mu")
    logvar = _same(mu, logvar, "logvar")
    B, D, rshape = _rows(mu)
    gkl = _same(mu, gkl, "gkl", shape=rshape)
    dmu = cp.empty_like(mu)
    dlogvar = cp.empty_like(mu)
    if B and D:
        grid, block = _flat_launch(_chunks(B * D))
        get_function("mv_kl_bwd", mu.dtype)(
            grid, block, (gkl, mu, logvar, dmu, dlogvar, np.int64(B), np.int64(D)))
    return dmu, dlogvar


# ------------------------------------------------------------------------------ fused
def reparameterize_kl_forward(mu, logvar, seed: int, offset: int = 0, stream: int = 0, offset_from=None):
    """Both of the above in one pass: returns ``(z, kl)`` (``offset_from``: see
    reparameterize_forward)."""
    mu = _float_array(mu, "mu")
    logvar = _same(mu, logvar, "logvar")
    B, D, rshape = _rows(mu)
    check_elements(mu.size)
    z = cp.empty_like(mu)
    kl = _row_sums_out(rshape, D, mu.dtype)
    if B and D:
        s, o, st = _address(seed, offset, stream)
        grid, block = _row_forward_launch(B, D)
        get_function("mv_reparam_kl_fwd", mu.dtype)(
            grid, block, (mu, logvar, z, kl, np.int64(B), np.int64(D), s, o, _offset_from(offset_from), st))
    return z, kl


def reparameterize_kl_backward(dz, gkl, mu, logvar, seed: int, offset: int = 0, stream: int = 0,
                               offset_from=None):
    """Gradients of (z, kl) = reparameterize_kl_forward(mu, logvar, ...) in one pass:
    ``dmu = dz + gkl * mu``, ``dlogvar = dz * eps * exp(logvar / 2) / 2 + gkl * (exp(logvar) - 1) / 2``.
    ``dz`` or ``gkl`` may be None (no gradient reached that output)."""
    if dz is None and gkl is None:
        raise ValueError("reparameterize_kl_backward: dz and gkl are both None")
    if dz is None:
        return kl_normal_std_backward(gkl, mu, logvar)
    mu = _float_array(mu, "mu")
    logvar = _same(mu, logvar, "logvar")
    dz = _same(mu, dz, "dz")
    B, D, rshape = _rows(mu)
    check_elements(mu.size)
    if gkl is not None:
        gkl = _same(mu, gkl, "gkl", shape=rshape)
    dmu = cp.empty_like(mu)
    dlogvar = cp.empty_like(mu)
    if B and D:
        s, o, st = _address(seed, offset, stream)
        grid, block = _flat_launch(_chunks(B * D))
        get_function("mv_reparam_kl_bwd", mu.dtype)(
            grid, block, (dz, gkl if gkl is not None else _NULL, mu, logvar, dmu, dlogvar,
                          np.int64(B), np.int64(D), s, o, _offset_from(offset_from), st))
    return dmu, dlogvar


# ------------------------------------------------------------------------------ Bernoulli log-likelihood
def bernoulli_log_prob_forward(logits, x):
    """Per row of the last axis, sum of ``x l - softplus(l)`` (the Bernoulli log-likelihood of
    the targets ``x`` given the logits ``l``): shape ``logits.shape[:-1]``. ``x`` has the shape
    of ``logits`` or of its trailing axes (then it repeats over the leading ones)."""
    logits = _float_array(logits, "logits")
    x, xn = _repeating(logits, x, "x")
    return _row_sums("mv_bernoulli_fwd", logits, logits, x, np.int64(xn))


def bernoulli_log_prob_backward(g, logits, x):
    """d/dlogits of bernoulli_log_prob_forward(logits, x) for the upstream ``g`` (one value per
    row, ``logits.shape[:-1]``): ``g[..., None] * (x - sigmoid(logits))``."""
    logits = _float_array(logits, "logits")
    x, xn = _repeating(logits, x, "x")
    B, D, rshape = _rows(logits)
    g = _same(logits, g, "g", shape=rshape)
    d = cp.empty_like(logits)
    if B and D:
        grid, block = _flat_launch(_chunks(B * D))
        get_function("mv_bernoulli_bwd", logits.dtype)(
            grid, block, (g, logits, x, d, np.int64(B), np.int64(D), np.int64(xn)))
    return d


# ------------------------------------------------------------------------------ Gaussian log-density
def gaussian_log_prob_forward(x, mu, logvar):
    """Per row of the last axis, ``-(sum of log(2 pi) + logvar + (x - mu)^2 exp(-logvar)) / 2``
    (the log-density of x under N(mu, exp(logvar))): shape ``x.shape[:-1]``. ``mu`` and
    ``logvar`` have the shape of ``x`` or of its trailing axes (a 0-d array: one value)."""
    x = _float_array(x, "x")
    mu, mu_n = _repeating(x, mu, "mu")
    logvar, lv_n = _repeating(x, logvar, "logvar")
    return _row_sums("mv_gaussian_fwd", x, x, mu, np.int64(mu_n), logvar, np.int64(lv_n))


def gaussian_log_prob_backward(g, x, mu, logvar, needs=(True, True, True)):
    """The gradients of gaussian_log_prob_forward(x, mu, logvar) for the upstream ``g`` (one
    value per row): ``(dx, dmu, dlogvar)``, each of x's shape (the caller sums dmu and dlogvar
    over the axes mu and logvar repeat along), None where ``needs`` says no."""
    x = _float_array(x, "x")
    mu, mu_n = _repeating(x, mu, "mu")
    logvar, lv_n = _repeating(x, logvar, "logvar")
    B, D, rshape = _rows(x)
    g = _same(x, g, "g", shape=rshape)
    grads = [cp.empty_like(x) if need else None for need in needs]
    if B and D and any(needs):
        grid, block = _flat_launch(_chunks(B * D))
        get_function("mv_gaussian_bwd", x.dtype)(
            grid, block, (g, x, mu, np.int64(mu_n), logvar, np.int64(lv_n),
                          *(_NULL if d is None else d for d in grads), np.int64(B), np.int64(D)))
    return tuple(grads)


# ------------------------------------------------------------------------------ dense layers
def bias_act(x, b=None, relu=False, out=None):
    """``max(x + b, 0)`` in one launch: the bias ``b`` (N,) (or None) broadcast over the rows of
    ``x`` (..., N), then the ReLU when ``relu``; into ``out`` (a new array), or into ``x`` itself
    when ``out`` is None (in place: ``x`` must be C-contiguous). The same numbers as NumPy's
    ``x + b`` and ``maximum(., 0)``; returns the result."""
    require()
    if out is None:
        x = out = _in_place(x, x, "x")
    else:
        x = _float_array(x, "x")
        out = _in_place(x, out, "out")
    if x.dtype not in _SUFFIX:
        raise TypeError(f"x: dtype must be float32 or float64, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x: rows of at least one dimension, got a 0-d array")
    N = x.shape[-1]
    if b is not None:
        b = _same(x, b, "b", shape=(N,))
    n = x.size
    if n:
        get_function("mv_bias_act", x.dtype)(
            *_flat_launch(_chunks(n)),
            (x, _NULL if b is None else b, out, np.int64(n), np.int64(N), np.int32(relu)))
    return out


def relu_grad(g, y):
    """The gradient reaching a ReLU's input, ``g * (y > 0)``, from the upstream ``g`` and the
    ReLU's output ``y`` (one shape), in one launch: a new array."""
    y = _float_array(y, "y")
    g = _same(y, g, "g")
    d = cp.empty_like(y)
    n = y.size
    if n:
        get_function("mv_relu_grad", y.dtype)(*_flat_launch(_chunks(n)), (g, y, d, np.int64(n)))
    return d


def bias_grad(g, y=None):
    """A dense layer's bias gradient in one launch: the column sums of ``d`` over the rows of
    (..., N) arrays, ``d`` = ``g``, or behind a ReLU whose output is ``y``, ``d = g * (y > 0)``
    (written on the way, for the layer's products). Returns ``(d, db)``: ``d`` is ``g`` itself
    when ``y`` is None, a new array otherwise (NumPy's ``g * (y > 0)`` bit for bit); ``db`` (N,)
    is summed in the fixed order of kernels/chunks.cuh ("column reductions"), not NumPy's."""
    g = _float_array(g, "g")
    if g.ndim == 0:
        raise ValueError("g: rows of at least one dimension, got a 0-d array")
    R, N, _ = _rows(g)
    launch = _column_launch(N, "g")
    d = g
    if y is not None:
        y = _same(g, y, "y")
        d = cp.empty_like(g)
    db = cp.empty(N, dtype=g.dtype)
    if N:
        get_function("mv_bias_grad", g.dtype)(
            *launch,
            (g, _NULL if y is None else y, _NULL if y is None else d, db, np.int64(R), np.int64(N)))
    return d, db


# ------------------------------------------------------------------------------ log-sum-exp, log-softmax
def _columns(x):
    """(R, N) of an array reduced over its leading axis: R rows of N = the rest's size."""
    if x.ndim == 0:
        raise ValueError("x: a log-sum-exp over the leading axis needs at least one axis, got a 0-d array")
    return x.shape[0], math.prod(x.shape[1:])


def logsumexp_forward(x):
    """``log(sum(exp(x), axis=0))`` in one launch, in the stable form of
    ``minivae.ops.reduce.LogSumExp`` (shifted by the maximum where it is finite): shape
    ``x.shape[1:]``; ``x`` needs at least one row. The maximum and the sum of each column run in
    the fixed order of kernels/chunks.cuh ("column reductions").

    Returns ``(out, shift, log_sum)``, three arrays of ``out``'s shape: the result and its parts,
    ``out = shift + log_sum``, which ``logsumexp_backward`` takes."""
    x = _float_array(x, "x")
    R, N = _columns(x)
    if R == 0:
        raise ValueError("x: a log-sum-exp over an empty axis (zero rows) has no maximum")
    launch = _column_launch(N, "x")
    out = cp.empty(x.shape[1:], dtype=x.dtype)
    shift, log_sum = cp.empty_like(out), cp.empty_like(out)
    if N:
        get_function("mv_logsumexp_fwd", x.dtype)(
            *launch, (x, out, shift, log_sum, np.int64(R), np.int64(N)))
    return out, shift, log_sum


def logsumexp_backward(g, x, shift, log_sum):
    """The gradient of ``out, shift, log_sum = logsumexp_forward(x)`` for the upstream ``g``
    (``out``'s shape): ``g * exp((x - shift) - log_sum)``, broadcast over x's leading axis, in one
    launch: a new array. The parts are subtracted one at a time, as in
    ``minivae.ops.reduce.LogSumExp``: ``exp(x - out)`` would lose the log term to the rounding of
    ``out`` when the shift is large."""
    x = _float_array(x, "x")
    N = _columns(x)[1]
    g = _same(x, g, "g", shape=x.shape[1:])
    shift = _same(x, shift, "shift", shape=x.shape[1:])
    log_sum = _same(x, log_sum, "log_sum", shape=x.shape[1:])
    d = cp.empty_like(x)
    if x.size:
        get_function("mv_logsumexp_bwd", x.dtype)(
            *_flat_launch(_chunks(x.size)), (g, x, shift, log_sum, d, np.int64(x.size), np.int64(N)))
    return d


def log_softmax_forward(x):
    """``x - logsumexp(x)`` over the last axis (the classes of each row), in one launch, in the
    stable form of ``minivae.ops.reduce.LogSoftmax``: x's shape; each row needs a class. The
    maximum and the sum of each row run in the fixed order of kernels/chunks.cuh ("column
    reductions")."""
    x = _float_array(x, "x")
    B, C, _ = _rows(x)  # (the classes of each row are the row op's last axis)
    if C == 0:
        raise ValueError("x: a log-softmax over an empty last axis (no classes) has no maximum")
    launch = _column_launch(B, "x", "rows")
    out = cp.empty_like(x)
    if B:
        get_function("mv_log_softmax_fwd", x.dtype)(*launch, (x, out, np.int64(B), np.int64(C)))
    return out


def log_softmax_backward(g, out):
    """The gradient of ``out = log_softmax_forward(x)`` for the upstream ``g`` (one shape):
    ``g - exp(out) * sum(g)`` over the last axis, in one launch: a new array."""
    out = _float_array(out, "out")
    g = _same(out, g, "g")
    B, C, _ = _rows(out)
    launch = _column_launch(B, "out", "rows")
    d = cp.empty_like(out)
    if B and C:
        get_function("mv_log_softmax_bwd", out.dtype)(*launch, (g, out, d, np.int64(B), np.int64(C)))
    return d


# ------------------------------------------------------------------------------ Adam
def _in_place(ref, x, name):
    """An array updated in place: same dtype and shape as ``ref`` and C-contiguous (a copy
    made here would take the update and be thrown away)."""
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"{name}: expected a CuPy array, got {type(x).__name__}")
    if x.dtype != ref.dtype or x.shape != ref.shape:
        raise ValueError(f"{name}: {x.dtype} {x.shape} does not match the parameter's {ref.dtype} {ref.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: the kernel updates it in place, so it must be C-contiguous")
    return x


def adam_update(p, g, m, v, vmax, *, b1, b2, eps_s, neg_step, weight_decay=0.0, decay=None,
                step_scalars=None):
    """One Adam step of parameter ``p`` in place, with its moments ``m``, ``v`` (and the running
    maximum ``vmax`` of v with amsgrad; None otherwise): the GPU form of ``minivae.optim.Adam``'s
    update, the same numbers bit for bit.

    ``eps_s`` = eps sqrt(1 - b2^t), ``neg_step`` = -lr sqrt(1 - b2^t) / (1 - b1^t);
    ``weight_decay`` adds the coupled L2 term weight_decay * p to the gradient; ``decay`` (AdamW)
    multiplies p by it first instead. Each scalar is rounded to p's dtype here, as NumPy rounds
    a Python float next to an array of that dtype. ``step_scalars`` (a CuPy float64 array
    (eps_s, neg_step, decay), or None) replaces those three when the kernel runs: the step's
    scalars of a captured CUDA graph, rounded to p's dtype in the kernel in the same way.
    """
    require()
    p = _in_place(p, p, "p")
    if p.dtype not in _SUFFIX:
        raise TypeError(f"p: dtype must be float32 or float64, got {p.dtype}")
    g = _same(p, g, "g")
    m, v = _in_place(p, m, "exp_avg"), _in_place(p, v, "exp_avg_sq")
    if vmax is not None:
        vmax = _in_place(p, vmax, "max_exp_avg_sq")
    n = p.size
    if n:
        T = p.dtype.type
        get_function("mv_adam", p.dtype)(
            *_flat_launch(n),  # one thread per element
            (p, g, m, v, vmax if vmax is not None else _NULL, np.int64(n), T(b1), T(1 - b1), T(b2), T(1 - b2),
             T(eps_s), T(neg_step), T(weight_decay), T(1 if decay is None else decay),
             np.int32(vmax is not None), np.int32(decay is not None),
             _device_words(step_scalars, "step_scalars", np.float64, 3)))
