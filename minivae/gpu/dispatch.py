"""The dispatch table: which CUDA kernels run an op on CuPy arrays, and when.

Every op is written once, over ``xp`` (NumPy or CuPy), and that code is the reference. A row of
this table gives an op (by name: the ``Function`` class name, or ``"Adam"`` for the optimizer's
update) a CUDA implementation:

* ``forward(ctx, *arrays, **params)`` and ``backward(ctx, *grads)``: the launches, with the
  signatures of the op's own forward and backward (what forward saves on ``ctx`` is what this
  backward reads, so a node runs both halves on one path);
* ``takes``: the condition on the inputs under which the kernels apply, in words, and
  ``accepts(*arrays, **params)``: the same condition as a check.

``Function.apply`` asks ``select(name, *arrays, **params)`` when an input is a CuPy array: it gets
the row when the condition holds, and None otherwise, and then the op's xp code runs on CuPy, which
is correct, only slower. ``explain`` says which path an op takes for given inputs, and why::

    >>> print(dispatch.explain("KLNormalStd", mu, logvar_row))  # CuPy arrays of shapes (B, D), (D,)
    xp code on CuPy: KLNormalStd's kernel takes mu and logvar of one shape, at least 1-D, and one dtype, float32 or float64

The rows:

* ``ReparameterizeNoise``: z = mu + exp(logvar / 2) eps in one launch (``kernels/reparam.cu``);
  eps is generated in registers and regenerated in backward, never stored.
* ``KLNormalStd``: the KL of each row and its gradient (``kernels/kl.cu``).
* ``ReparameterizeKL``: both in one pass over mu and logvar (``kernels/fused.cu``).
* ``BernoulliLogProb``: the decoder's log-likelihood of each row of pixels, and its gradient
  (``kernels/bernoulli.cu``).
* ``GaussianLogProb``: the log-density of each row under a diagonal Gaussian, and its gradients
  (``kernels/gaussian.cu``).
* ``Matmul`` (2-D operands), ``Linear`` and ``LinearRelu``: the products x W, g W^T and x^T g on
  cuBLAS through ``minivae.gpu.cublas`` (transposes as cuBLAS flags, never copies); the bias and
  the ReLU in one launch on the product, in place, and the gradients of the ReLU and the bias
  (a column sum) in one more (``kernels/dense.cu``). CuPy's own
  matmul cannot be captured in a CUDA graph; running the same cuBLAS calls eagerly too is what
  makes a captured step give the eager step's bits. ``gemm_handle()`` is the cuBLAS handle of the
  current device, made at the first product; when libcublas cannot be loaded it raises that
  error (there is no silent fallback to ``cupy.matmul``).
* ``Relu`` (a ReLU that is not a dense layer's): one launch forward and one backward, on the
  dense layers' kernels.
* ``LogSumExp`` over the leading axis (the IWAE bound over its k samples) and ``LogSoftmax``
  over the last axis (a classifier's classes): one launch forward and one backward each
  (``kernels/logsumexp.cu``).
* ``"Adam"``: the optimizer's update of all parameters in one launch (``kernels/adam.cu``).

The table is keyed by name so that this package never imports the ops. Importing this module
does not import CuPy: the rows load ``minivae.gpu.kernels`` or ``minivae.gpu.cublas`` when they
run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..backend import as_rows, get_array_module, is_gpu_array

__all__ = ["Kernel", "TABLE", "register", "select", "explain", "gemm_handle"]


@dataclass(eq=False)
class Kernel:
    """One row of the table: the CUDA implementation of the op ``op`` (see the module docstring).

    A row has the interface of a Function (``forward``, ``backward``, ``__name__``), so the graph
    node of an op that ran on its kernels records the row that ran (compared and hashed by
    identity, like a Function class).
    """

    op: str
    forward: Callable
    backward: Callable | None
    takes: str
    accepts: Callable[..., bool]

    @property
    def __name__(self):
        """The op's name (what graphs and error messages show)."""
        return self.op


#: op name -> Kernel
TABLE: dict = {}


def register(op, forward, backward=None, *, takes, accepts=lambda *arrays, **params: True):
    """Add (or replace) the row of ``op``; returns it."""
    TABLE[op] = row = Kernel(op, forward, backward, takes, accepts)
    return row


def _decide(op, arrays, params):
    for a in arrays:
        if is_gpu_array(a):
            break
    else:
        return None, "xp code: no input is a CuPy array"
    row = TABLE.get(op)
    if row is None:
        return None, f"xp code on CuPy: {op} has no kernel in the table"
    if not row.accepts(*arrays, **params):
        return None, f"xp code on CuPy: {op}'s kernel takes {row.takes}"
    return row, f"kernel: {op}'s kernel takes {row.takes}"


def select(op, *arrays, **params):
    """The row of ``op`` when its kernels take these inputs (some of them CuPy arrays), else None."""
    for a in arrays:  # NumPy inputs, the common case, return at once
        if is_gpu_array(a):
            return _decide(op, arrays, params)[0]
    return None


def explain(op, *arrays, **params):
    """One line saying which path ``op`` takes for these inputs (its kernel or its xp code), and why."""
    return _decide(op, arrays, params)[1]


# ------------------------------------------------------------------------------ the rows
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # the dtypes of the kernels and of cuBLAS


def _kernels():
    from . import kernels  # deferred: it imports CuPy

    return kernels


def _contiguous(*arrays):
    # (a 0-d array is contiguous, and stays 0-d: ascontiguousarray would make it (1,))
    xp = get_array_module(*arrays)
    return [a if a.flags.c_contiguous else xp.ascontiguousarray(a) for a in arrays]


def _broadcast_c(xp, a, shape):
    (c,) = _contiguous(xp.broadcast_to(a, shape))
    return c


def _reparameterize_forward(ctx, mu, logvar, noise=None, shape=None):
    xp = get_array_module(mu, logvar)
    shape = np.broadcast_shapes(mu.shape, logvar.shape, () if shape is None else tuple(shape))
    ctx.noise = noise
    lv = _broadcast_c(xp, logvar, shape)
    ctx.save(lv)
    return _kernels().reparameterize_forward(_broadcast_c(xp, mu, shape), lv, noise.seed, noise.offset,
                                             noise.stream, offset_from=noise.offset_from)


def _reparameterize_backward(ctx, g):
    need_mu, need_logvar = ctx.needs_input_grad
    if not need_logvar:
        return g, None
    (lv,) = ctx.saved
    n = ctx.noise
    _, dlogvar = _kernels().reparameterize_backward(g, lv, n.seed, n.offset, n.stream, offset_from=n.offset_from)
    return (g if need_mu else None), dlogvar


def _one_float_dtype(mu, logvar, *rest, **params):
    return mu.dtype in _FLOATS and logvar.dtype == mu.dtype


register("ReparameterizeNoise", _reparameterize_forward, _reparameterize_backward, accepts=_one_float_dtype,
         takes="mu and logvar of one dtype, float32 or float64, that broadcast to the draw's shape "
               "(broadcast copies are made)")


def _same_shape_rows(mu, logvar, *rest, **params):
    return _one_float_dtype(mu, logvar) and mu.shape == logvar.shape and mu.ndim >= 1


def _kl_forward(ctx, mu, logvar):
    ctx.save(mu, logvar)
    return _kernels().kl_normal_std_forward(mu, logvar)


def _kl_backward(ctx, g):
    need_mu, need_logvar = ctx.needs_input_grad
    dmu, dlogvar = _kernels().kl_normal_std_backward(g, *ctx.saved)
    return (dmu if need_mu else None), (dlogvar if need_logvar else None)


register("KLNormalStd", _kl_forward, _kl_backward, accepts=_same_shape_rows,
         takes="mu and logvar of one shape, at least 1-D, and one dtype, float32 or float64")


def _reparameterize_kl_forward(ctx, mu, logvar, noise=None, samples=None):
    # S samples: the kernels run on S broadcast copies of the rows (element s*B*D + b*D + d of the
    # draw, as the xp code draws them), and the KL of the first copy is the op's per-row KL.
    xp = get_array_module(mu, logvar)
    ctx.noise, ctx.samples = noise, samples
    if samples is not None:
        shape = (int(samples),) + mu.shape
        mu, logvar = _broadcast_c(xp, mu, shape), _broadcast_c(xp, logvar, shape)
    ctx.save(mu, logvar)
    z, kl = _kernels().reparameterize_kl_forward(mu, logvar, noise.seed, noise.offset, noise.stream,
                                                 offset_from=noise.offset_from)
    return z, (kl if samples is None else kl[0])


def _reparameterize_kl_backward(ctx, gz, gkl):
    need_mu, need_logvar = ctx.needs_input_grad
    mu, logvar = ctx.saved
    if gkl is not None and ctx.samples is not None:
        # the KL's gradient reaches the first of the S copies only, the others get zeros (and
        # with one sample the first copy is all there is: gkl as it is, no launch)
        first = gkl.reshape((1,) + gkl.shape)
        if ctx.samples > 1:
            xp = get_array_module(gkl)
            gkl = xp.concatenate([first, xp.zeros((ctx.samples - 1,) + gkl.shape, dtype=gkl.dtype)])
        else:
            gkl = first
    n = ctx.noise
    dmu, dlogvar = _kernels().reparameterize_kl_backward(gz, gkl, mu, logvar, n.seed, n.offset, n.stream,
                                                         offset_from=n.offset_from)
    # (S, B, D) gradients for (B, D) inputs: the engine sums them over the samples
    return (dmu if need_mu else None), (dlogvar if need_logvar else None)


def _reparameterize_kl_accepts(mu, logvar, noise=None, samples=None):
    return _same_shape_rows(mu, logvar) and (samples is None or samples >= 1)


register("ReparameterizeKL", _reparameterize_kl_forward, _reparameterize_kl_backward,
         accepts=_reparameterize_kl_accepts,
         takes="mu and logvar of one shape, at least 1-D, and one dtype, float32 or float64 (S >= 1 "
               "samples run on S broadcast copies)")


def _repeats_over(ref, a):
    """``a`` has ref's dtype, and ref's shape or that of its trailing axes (0-d: one value): the
    kernels read it as values that repeat over ref's elements."""
    return a.dtype == ref.dtype and a.ndim <= ref.ndim and a.shape == ref.shape[ref.ndim - a.ndim:]


_REPEATING = ("of its shape or of its trailing axes (repeated over the leading ones; 0-d: one value "
              "for all)")


def _bernoulli_accepts(logits, x):
    return logits.ndim >= 1 and logits.dtype in _FLOATS and _repeats_over(logits, x)


def _bernoulli_forward(ctx, logits, x):
    logits, x = _contiguous(logits, x)
    ctx.save(logits, x)
    return _kernels().bernoulli_log_prob_forward(logits, x)


def _bernoulli_backward(ctx, g):
    logits, x = ctx.saved
    need_logits, need_x = ctx.needs_input_grad
    dlogits = _kernels().bernoulli_log_prob_backward(g, logits, x) if need_logits else None
    # d/dx = g l: the targets are data, so this is rare enough for the xp code (the engine sums
    # it over the samples when x repeats over them)
    return dlogits, (g[..., None] * logits if need_x else None)


register("BernoulliLogProb", _bernoulli_forward, _bernoulli_backward, accepts=_bernoulli_accepts,
         takes=f"float logits (..., D) and targets x of their dtype, {_REPEATING} (the images under "
               f"several samples' logits)")


def _gaussian_accepts(x, mu, logvar):
    return x.ndim >= 1 and x.dtype in _FLOATS and _repeats_over(x, mu) and _repeats_over(x, logvar)


def _gaussian_forward(ctx, x, mu, logvar):
    x, mu, logvar = _contiguous(x, mu, logvar)
    ctx.save(x, mu, logvar)
    return _kernels().gaussian_log_prob_forward(x, mu, logvar)


def _gaussian_backward(ctx, g):
    # each of x's shape: the engine sums dmu and dlogvar over the axes they were repeated along
    return _kernels().gaussian_log_prob_backward(g, *ctx.saved, needs=ctx.needs_input_grad)


register("GaussianLogProb", _gaussian_forward, _gaussian_backward, accepts=_gaussian_accepts,
         takes=f"float x (..., D), and mu and logvar of its dtype, {_REPEATING} (a sample's "
               f"parameters under several samples, or a standard normal's 0 and 0)")


def _an_axis(axis):
    """Whether ``axis`` is of a type the ops take for an axis: an integer (NumPy's too), not a
    bool (``minivae.ops.axes``). Another type is left to the xp code, which refuses it."""
    return isinstance(axis, (int, np.integer)) and not isinstance(axis, bool)


def _over_the_leading_axis(x, axis=None, keepdims=False):
    """Whether ``axis`` names x's leading axis alone (so the op reduces over its rows)."""
    if x.dtype not in _FLOATS or x.ndim == 0 or x.shape[0] == 0:
        return False
    if axis is None:
        return x.ndim == 1
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return len(axes) == 1 and _an_axis(axes[0]) and axes[0] in (0, -x.ndim)


def _logsumexp_forward(ctx, x, axis=None, keepdims=False):
    out, shift, log_sum = _kernels().logsumexp_forward(x)
    ctx.save(x, shift, log_sum)  # the parts, as the op's xp code: exp(x - out) loses the log term
    return out.reshape((1,) + out.shape) if keepdims else out


def _logsumexp_backward(ctx, g):
    x, shift, log_sum = ctx.saved
    return _kernels().logsumexp_backward(g.reshape(shift.shape), x, shift, log_sum)


register("LogSumExp", _logsumexp_forward, _logsumexp_backward, accepts=_over_the_leading_axis,
         takes="float32 or float64 x with at least one row, reduced over its leading axis alone")


def _over_the_last_axis(x, axis=-1):
    return (x.dtype in _FLOATS and x.ndim >= 1 and x.shape[-1] > 0
            and _an_axis(axis) and axis in (-1, x.ndim - 1))


def _log_softmax_forward(ctx, x, axis=-1):
    out = _kernels().log_softmax_forward(x)
    ctx.save(out)
    return out


def _log_softmax_backward(ctx, g):
    return _kernels().log_softmax_backward(g, ctx.saved[0])


register("LogSoftmax", _log_softmax_forward, _log_softmax_backward, accepts=_over_the_last_axis,
         takes="float32 or float64 x with at least one class, over its last axis")


def _adam_update(p, g, m, v, vmax, work=None, **scalars):
    # work: the xp form's work arrays; the kernel needs none
    _kernels().adam_update(p, g, m, v, vmax, **scalars)


register("Adam", _adam_update, accepts=lambda p, *moments: p.dtype in _FLOATS,
         takes="C-contiguous parameter, moments and gradient of one shape and dtype, float32 or "
               "float64: one launch over all of them")


# ------------------------------------------------------------------------------ dense layers on cuBLAS
# (in eager mode too, so that a captured step runs the very same gemm calls: see the module docstring)
def _cublas():
    from . import cublas  # deferred: it imports CuPy

    return cublas


def _current_device():
    """The id of the CUDA device CuPy launches on now."""
    return _cublas().cp.cuda.runtime.getDevice()


def _device(a):
    """The id of the CUDA device that holds the CuPy array ``a``."""
    return a.device.id


#: CUDA device id -> the cublas.Gemm of the rows below on that device. One handle per device, made
#: at the first product and kept: cuBLAS must not allocate while a stream is being captured, so
#: the handle and its workspace have to exist before any capture, and a captured graph goes on
#: using the workspace it was captured with, so they must outlive every graph.
_gemms: dict = {}


def gemm_handle():
    """The ``cublas.Gemm`` of the current CUDA device, created at its first use (an eager step
    before a capture creates it). Raises ``cublas.load_library``'s error, naming what was tried,
    when libcublas cannot be loaded: there is no silent fallback to ``cupy.matmul``, which a
    graph could not capture."""
    device = _current_device()
    gemm = _gemms.get(device)
    if gemm is None:
        gemm = _gemms[device] = _cublas().Gemm()
    return gemm


def _product_into(out, a, b, transa=False, transb=False):
    """``out = op(a) @ op(b)`` (``op(x)`` is ``x.T`` when ``trans*``: a flag for cuBLAS, never a
    copy), all three 2-D and C-contiguous; returns ``out``."""
    return gemm_handle().gemm(a, b, out, transa=transa, transb=transb)


_GEMM_OPERANDS = "C-contiguous float32 or float64 arrays of one dtype on the current CUDA device"


def _gemm_operands(*arrays):
    dtype, device = arrays[0].dtype, _current_device()
    return dtype in _FLOATS and all(
        a.dtype == dtype and a.flags.c_contiguous and _device(a) == device for a in arrays)


def _matmul_accepts(a, b):
    return a.ndim == b.ndim == 2 and a.shape[1] == b.shape[0] and _gemm_operands(a, b)


def _matmul_forward(ctx, a, b):
    ctx.save(a, b)
    xp = get_array_module(a)
    return _product_into(xp.empty((a.shape[0], b.shape[1]), a.dtype), a, b)


def _matmul_backward(ctx, g):
    a, b = ctx.saved
    need_a, need_b = ctx.needs_input_grad
    xp = get_array_module(g)
    g = xp.ascontiguousarray(g)  # an upstream gradient may be a broadcast view
    ga = _product_into(xp.empty_like(a), g, b, transb=True) if need_a else None  # g @ b^T
    gb = _product_into(xp.empty_like(b), a, g, transa=True) if need_b else None  # a^T @ g
    return ga, gb


register("Matmul", _matmul_forward, _matmul_backward, accepts=_matmul_accepts,
         takes=f"2-D a (m, k) and b (k, n), {_GEMM_OPERANDS} (batched products run the xp code)")


def _linear_accepts(x, W, b=None):
    return (x.ndim >= 1 and W.ndim == 2 and x.shape[-1] == W.shape[0]
            and (b is None or b.shape == (W.shape[1],))
            and _gemm_operands(x, W, *(() if b is None else (b,))))


def _linear_forward(ctx, x, W, b=None, relu=False):
    ctx.save(x, W)
    xp = get_array_module(x)
    out = xp.empty(x.shape[:-1] + (W.shape[1],), x.dtype)
    _product_into(as_rows(out), as_rows(x), W)
    if b is not None or relu:
        _kernels().bias_act(out, b, relu=relu)  # in place: out is a fresh array
    return out


def _dense_backward(ctx, g, y=None):
    """(d/dx, d/dW[, d/db]) of ``relu(x @ W + b)`` (the ReLU when its output ``y`` is given),
    x's leading axes flattened into rows: with d = g, or d = g * (y > 0) behind the ReLU, the
    products d @ W^T and x^T @ d and the column sums of d. The ReLU's gradient and the bias's
    take one launch together (``bias_grad``)."""
    x, W = ctx.saved[:2]
    needs = ctx.needs_input_grad
    xp = get_array_module(g)
    g = as_rows(xp.ascontiguousarray(g))  # an upstream gradient may be a broadcast view
    gb = None
    if len(needs) == 3 and needs[2]:
        g, gb = _kernels().bias_grad(g, None if y is None else as_rows(y))
    elif y is not None:
        g = _kernels().relu_grad(g, as_rows(y))
    gx = gW = None
    if needs[0]:
        gx = xp.empty_like(x)
        _product_into(as_rows(gx), g, W, transb=True)
    if needs[1]:
        gW = _product_into(xp.empty_like(W), as_rows(x), g, transa=True)
    return (gx, gW) if len(needs) == 2 else (gx, gW, gb)


def _linear_relu_forward(ctx, x, W, b=None):
    out = _linear_forward(ctx, x, W, b, relu=True)
    # Saved, not kept aside: the engine then guards it like any saved array, so a change made
    # through a detached view of the output is refused rather than read as another mask.
    ctx.save(*ctx.saved, out)
    return out


def _linear_relu_backward(ctx, g):
    # the ReLU's mask is read off its output here (the xp code keeps it from the forward)
    return _dense_backward(ctx, g, y=ctx.saved[2])


def _relu_forward(ctx, x):
    xp = get_array_module(x)
    out = _kernels().bias_act(x, relu=True, out=xp.empty(x.shape, x.dtype))
    ctx.save(out)  # guarded as a saved array (see _linear_relu_forward)
    return out


def _relu_backward(ctx, g):
    return _kernels().relu_grad(g, ctx.saved[0])  # the mask read off the output, as LinearRelu's


register("Relu", _relu_forward, _relu_backward, accepts=lambda x: x.ndim >= 1 and x.dtype in _FLOATS,
         takes="float32 or float64 x of at least one dimension")


_LINEAR_TAKES = (f"x of shape (..., in) (its rows flattened), W (in, out) and b (out,) or none, "
                 f"{_GEMM_OPERANDS}")
register("Linear", _linear_forward, _dense_backward, accepts=_linear_accepts, takes=_LINEAR_TAKES)
register("LinearRelu", _linear_relu_forward, _linear_relu_backward, accepts=_linear_accepts,
         takes=_LINEAR_TAKES)
