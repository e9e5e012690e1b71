"""Gradient tracing during training: per-parameter gradient norms, update-to-weight ratios, and a
posterior-collapse summary (KL per latent dimension, active units).

The training loop calls these every N steps and appends the result, with the step number, as a
line of ``metrics.jsonl``; ``minivae.viz.plot_grad_norms`` draws the ``grad_norm/...`` and
``update_ratio/...`` series. What to look for:

* gradient norms that shrink by orders of magnitude towards the input layers (vanishing), or
  jump up by orders of magnitude (an exploding step, often before a NaN);
* update ratios ||delta W|| / ||W||: around 1e-3 per step is the classic healthy value; 1e-1 means
  the weights are being rewritten each step, 1e-6 that a layer has stopped learning;
* ``active_units``: latent dimensions whose posterior mean still varies with x (Burda et al. 2015,
  Cov_x(E_q[z_d | x]) > 1e-2). The others have collapsed to the prior: their ``kl_per_dim`` is ~0.

Example (the lines the trainer adds; ``before`` is taken just before ``optimizer.step()``)::

    before = snapshot(model)
    optimizer.step()
    record = {"step": step, **gradient_norms(model), **update_ratios(before, snapshot(model))}
"""
import numpy as np

from .backend import get_array_module, to_device
# The key prefixes the plots look for, and the activity threshold of Burda et al. 2015.
from .viz import ACTIVE_UNIT_THRESHOLD, GRAD_PREFIX, RATIO_PREFIX


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
    """``{parameter name: copy of its data}``: the "before" (or "after") of ``update_ratios``."""
    return {name: p.data.copy() for name, p in model.named_parameters()}


def update_ratios(before, after):
    """``{"update_ratio/<name>": ||after - before|| / ||before||}`` for every name in both snapshots.

    ``before`` and ``after`` are ``snapshot(model)`` results (name -> array), or a model for
    ``after``. When ``before`` is all zeros (a zero-initialized bias at step 0) the ratio is taken
    against ``after`` instead, and it is 0 when both are zero, so no value is infinite.
    """
    if hasattr(after, "named_parameters"):
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


def latent_summary(model, x, batch_size=500, threshold=ACTIVE_UNIT_THRESHOLD):
    """Posterior-collapse summary of ``model`` on the data ``x`` (an (N, x_dim) array):
    ``{"active_units": int, "kl_per_dim": [float, ...]}``.

    ``kl_per_dim[d]`` is the mean over x of KL(q(z_d | x) || N(0, 1)) (it sums to the ELBO's KL
    term); ``active_units`` counts the dimensions d with Cov_x(E_q[z_d | x]) > ``threshold``
    (Burda et al. 2015). The model is run in eval mode without a graph (``model.encode`` must
    return (mu, logvar)); a few thousand examples give a stable count.
    """
    from .viz import encode_dataset, kl_per_dimension, latent_activity

    dtype = next(iter(model.parameters())).dtype
    x = np.asarray(to_device(getattr(x, "data", x), "cpu"), dtype=dtype)
    mu, logvar = encode_dataset(model, x, batch_size=batch_size)
    kl = kl_per_dimension(mu, logvar)
    return {"active_units": int((latent_activity(mu) > threshold).sum()),
            "kl_per_dim": [float(v) for v in kl]}
