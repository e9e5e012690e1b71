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

    >>> dispatch.explain("KLNormalStd", mu, logvar_row)      # CuPy arrays of shapes (B, D), (D,)
    'xp code on CuPy: KLNormalStd's kernel takes mu and logvar of one shape, at least 1-D'

The table is keyed by name so that this package never imports the ops. Importing this module
does not import CuPy: the launches load ``minivae.gpu.kernels`` when a row runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..backend import get_array_module, is_gpu_array

__all__ = ["Kernel", "TABLE", "register", "select", "explain"]


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
def _kernels():
    from . import kernels  # deferred: it imports CuPy

    return kernels


def _broadcast_c(xp, a, shape):
    return xp.ascontiguousarray(xp.broadcast_to(a, shape))


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


register("ReparameterizeNoise", _reparameterize_forward, _reparameterize_backward,
         takes="mu and logvar that broadcast to the draw's shape (broadcast copies are made)")


def _same_shape_rows(mu, logvar, *rest, **params):
    return mu.shape == logvar.shape and mu.ndim >= 1


def _kl_forward(ctx, mu, logvar):
    ctx.save(mu, logvar)
    return _kernels().kl_normal_std_forward(mu, logvar)


def _kl_backward(ctx, g):
    need_mu, need_logvar = ctx.needs_input_grad
    dmu, dlogvar = _kernels().kl_normal_std_backward(g, *ctx.saved)
    return (dmu if need_mu else None), (dlogvar if need_logvar else None)


register("KLNormalStd", _kl_forward, _kl_backward, accepts=_same_shape_rows,
         takes="mu and logvar of one shape, at least 1-D")


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
    if gkl is not None and ctx.samples is not None:  # the KL's gradient reaches the first copy only
        first = get_array_module(gkl).zeros(mu.shape[:-1], dtype=gkl.dtype)
        first[0] = gkl
        gkl = first
    n = ctx.noise
    dmu, dlogvar = _kernels().reparameterize_kl_backward(gz, gkl, mu, logvar, n.seed, n.offset, n.stream,
                                                         offset_from=n.offset_from)
    # (S, B, D) gradients for (B, D) inputs: the engine sums them over the samples
    return (dmu if need_mu else None), (dlogvar if need_logvar else None)


register("ReparameterizeKL", _reparameterize_kl_forward, _reparameterize_kl_backward,
         accepts=_same_shape_rows,
         takes="mu and logvar of one shape, at least 1-D (S samples run on S broadcast copies)")


def _adam_update(p, g, m, v, vmax, work=None, **scalars):
    # work: the xp form's work arrays; the kernel needs none
    _kernels().adam_update(p, g, m, v, vmax, **scalars)


register("Adam", _adam_update,
         takes="C-contiguous parameter, moments and gradient of one shape and dtype: one launch "
               "over all of them")
