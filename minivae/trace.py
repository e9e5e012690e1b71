"""Gradient tracing during training: per-parameter gradient norms and update-to-weight ratios.

The training loop calls these every N steps and appends the result, with the step number, as a
line of ``metrics.jsonl``; ``minivae.viz.plot_grad_norms`` draws the ``grad_norm/...`` and
``update_ratio/...`` series. What to look for:

* gradient norms that shrink by orders of magnitude towards the input layers (vanishing), or
  jump up by orders of magnitude (an exploding step, often before a NaN);
* update ratios ||delta W|| / ||W||: around 1e-3 per step is the classic healthy value; 1e-1 means
  the weights are being rewritten each step, 1e-6 that a layer has stopped learning.

The posterior-collapse summary (KL per latent dimension, active units) is ``minivae.analysis``.

Example (the lines the trainer adds; ``before`` is taken just before ``optimizer.step()``)::

    before = snapshot(model)
    optimizer.step()
    record = {"step": step, **gradient_norms(model), **update_ratios(before, snapshot(model))}
"""
import numpy as np

from .backend import get_array_module
from .nn import Module

# The key prefixes of the records, which ``minivae.viz.plot_grad_norms`` looks for.
GRAD_PREFIX = "grad_norm/"
RATIO_PREFIX = "update_ratio/"


def _norm(array):
    """Euclidean norm of a backend array (NumPy or CuPy) as a Python float, accumulated in float64."""
    xp = get_array_module(array)
    return float(xp.sqrt(xp.sum(xp.square(array.astype(np.float64)))))


def gradient_norms(model):
    """``{"grad_norm/<parameter name>": ||grad||_2}`` for every parameter that has a gradient.

    Call it after ``loss.backward()`` and before the gradients are cleared; parameters without a
    gradient (unused in this step) are left out rather than reported as 0.
    """
    return {GRAD_PREFIX + name: _norm(p.grad) for name, p in model.named_parameters()
            if p.grad is not None}


def snapshot(model):
    """``{parameter name: copy of its data}`` for every parameter that requires a gradient: the
    "before" (or "after") of ``update_ratios``.

    A frozen parameter (``requires_grad`` False, such as M1+M2's M1) is left out, as
    ``gradient_norms`` leaves it out: no optimizer moves it, and its ratio would be 0 at every step.
    """
    return {name: p.data.copy() for name, p in model.named_parameters() if p.requires_grad}


def update_ratios(before, after):
    """``{"update_ratio/<name>": ||after - before|| / ||before||}`` for every name in both snapshots.

    ``before`` and ``after`` are ``snapshot(model)`` results (name -> array), or a model for
    ``after``. When ``before`` is all zeros (a zero-initialized bias at step 0) the ratio is taken
    against ``after`` instead, and it is 0 when both are zero, so no value is infinite.
    """
    if isinstance(after, Module):
        after = {name: p.data for name, p in after.named_parameters()}
    out = {}
    for name, old in before.items():
        if name not in after:
            continue
        new = after[name]
        delta = _norm(new - old)
        scale = _norm(old) or _norm(new)
        out[RATIO_PREFIX + name] = delta / scale if scale > 0 else 0.0
    return out
