"""Evaluation: the ELBO, the importance-sampled log-likelihood estimate and a classifier's error.

log p(x) ~ log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x) (Burda et al. 2015), the number
papers report as test NLL with k = 5000. The k samples are drawn in chunks and combined with a
running log-sum-exp, so memory stays bounded by ``chunk_rows`` decoder rows whatever k is (by
``batch_size`` rows where that is larger: a chunk holds at least one sample per example). That
makes the chunks one estimate only if each of a model's importance samples is drawn on its own
(``log_weights`` shares no noise among the samples of one call, a chunk; ``models.base``).
M1+M2 estimates log p(z1) of its M2 at M1's features instead of log p(x) (``models.m1m2``).

The estimate is only as good as its weights are even: when a few of the k samples carry nearly
all the weight, log p(x) is typically underestimated by more than the spread over the images
shows. So each example's effective sample size (sum w)^2 / sum w^2 (Kong 1992) is computed from
the same weights: k for equal weights, near 1 when one sample dominates.

Every evaluator takes x as an (N, x_dim) array (NumPy or CuPy) or Tensor of intensities in [0, 1],
binary images for the log-likelihood to be one (``minivae.data.binarize_eval`` makes them), and
converts it to the model's float dtype (``as_model_input``).
"""
import math

import numpy as np

from . import streams
from .autograd import Tensor, tensor
from .backend import get_array_module, to_device
from .checks import check_integer, check_intensities, plain_array
from .distributions import check_labels
from .models.base import require
from .nn import evaluating
from .random import Generator, Noise

#: The seed of the evaluation's noise when none is given: every score of a model uses the same draws.
EVAL_SEED = 12345


def logmeanexp(a, axis=0):
    """log(mean(exp(a))) along ``axis`` without overflow or underflow (NumPy or CuPy array)."""
    xp = get_array_module(a)
    m = a.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):  # an all -inf slice is log(0) = -inf, as it should be
        out = m + xp.log(xp.exp(a - m).mean(axis=axis, keepdims=True))
    return out.squeeze(axis)


def host_array(x, name):
    """``x`` (a NumPy or CuPy array, a Tensor, or anything ``np.asarray`` takes) as a NumPy array
    on the host: a Tensor's data is taken, and an array on the GPU is copied to the host (NumPy
    cannot read a CuPy array: CuPy refuses with a TypeError; nor a Tensor, which it would read as
    a sequence, one indexing op per element, failing on a shape error). A masked array is refused
    and an np.matrix made plain (``plain_array``, naming ``name``)."""
    return to_device(x.data if isinstance(x, Tensor) else plain_array(x, name), "cpu")


def as_model_input(model, x):
    """``x`` checked and converted once per call of an evaluator: a NumPy (B, ``model.x_dim``)
    array, B >= 1, of intensities in [0, 1] (``check_intensities``), in the model's float dtype.
    A Tensor's data is taken, and images on the GPU are brought to the host, as the labels are
    (``host_array``).

    A single image (x_dim,) would otherwise be taken as x_dim examples of one pixel and a
    (B, 28, 28) batch fail deep inside an op; uint8 pixels 0..255 would be scored as if they
    were bits; and the ops refuse to mix float32 images with a float64 model.
    """
    x = host_array(x, "x")
    if x.ndim != 2 or x.shape[1] != model.x_dim:
        hint = ("" if x.ndim == 2 else
                "; reshape one image with x.reshape(1, -1), a batch of images with x.reshape(len(x), -1)")
        raise ValueError(f"x must be a batch of shape (B, {model.x_dim}), got shape {x.shape}{hint}")
    if len(x) == 0:
        raise ValueError(f"x has no examples (shape {x.shape}): there is nothing to evaluate")
    check_intensities(x, use="the evaluation")
    return x.astype(next(iter(model.parameters())).dtype, copy=False)


def _batches(n, batch_size):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _progress(iterable, total, desc, enabled):
    if enabled:
        try:
            from tqdm.auto import tqdm
            return tqdm(iterable, total=total, desc=desc, leave=False)
        except ImportError:
            pass
    return iterable


def log_likelihood(model, x, k=5000, noise=None, batch_size=100, chunk_rows=25000, progress=False):
    """Per-example importance-sampled estimates of log p(x) (a NumPy float64 array of length N;
    for M1+M2, of log p(z1) under its M2): the first of :func:`log_likelihood_and_ess`."""
    return log_likelihood_and_ess(model, x, k, noise, batch_size, chunk_rows, progress)[0]


def log_likelihood_and_ess(model, x, k=5000, noise=None, batch_size=100, chunk_rows=25000, progress=False):
    """Per-example importance-sampled estimates of log p(x) and the effective sample sizes of
    their weights, (sum w)^2 / sum w^2 in [1, k] (two NumPy float64 arrays of length N).

    ``model.log_weights(x, k, noise)`` gives (k, B) log-weights, k independent samples per
    example; they are drawn ``chunk_rows // batch_size`` samples at a time (at least one, so a
    chunk has max(chunk_rows, batch_size) decoder rows at most) and merged by
    log-sum-exp (of the weights, and of their squares for the effective sample size). Each chunk
    draws the generator's next numbers, so another ``batch_size`` or ``chunk_rows`` gives another,
    equally valid, draw of the same estimate; the defaults (which ``minivae eval`` and the trainer
    use) repeat exactly. ``noise`` must move on from chunk to chunk: a ``Generator`` (default: the
    evaluation's, ``EVAL_SEED``), not one fixed ``Noise`` address, which would give every chunk
    the same samples. ``k``, ``batch_size`` and ``chunk_rows`` are integers of at least 1 (a
    fractional k would draw floor(k) samples per chunk but divide by k).
    """
    k = check_integer(k, "k", minimum=1)
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    chunk_rows = check_integer(chunk_rows, "chunk_rows", minimum=1)
    x = as_model_input(model, x)
    if isinstance(noise, Noise):
        raise TypeError("log_likelihood needs noise that moves on from chunk to chunk (a Generator): "
                        "a Noise gives every chunk the same samples, so k of them would count a few "
                        "samples several times")
    if noise is None:  # not ``noise or``: a falsy mistake such as 0 is the model's to refuse
        noise = Generator(seed=EVAL_SEED, stream=streams.EVAL_LOG_LIKELIHOOD)
    device = next(iter(model.parameters())).device
    ll, ess = np.empty(len(x)), np.empty(len(x))
    per_chunk = max(1, min(k, chunk_rows // batch_size))
    with evaluating(model):
        for sl in _progress(_batches(len(x), batch_size), math.ceil(len(x) / batch_size),
                            f"log-likelihood, k={k}", progress):
            xb = tensor(to_device(x[sl], device))
            total = total_sq = None  # log sum w, log sum w^2 over the samples so far
            done = 0
            while done < k:
                kc = min(per_chunk, k - done)
                log_w = model.log_weights(xb, kc, noise).data.astype(np.float64)
                xp = get_array_module(log_w)
                lse = logmeanexp(log_w, axis=0) + math.log(kc)
                lse_sq = logmeanexp(2 * log_w, axis=0) + math.log(kc)
                total = lse if total is None else xp.logaddexp(total, lse)
                total_sq = lse_sq if total_sq is None else xp.logaddexp(total_sq, lse_sq)
                done += kc
            ll[sl] = to_device(total - math.log(k), "cpu")
            ess[sl] = to_device(xp.exp(2 * total - total_sq), "cpu")
    return ll, ess


def elbo(model, x, noise=None, batch_size=500):
    """Per-example ELBO and its (reconstruction, KL) parts, as NumPy arrays: ``model.elbo``, so
    averaged over the model's ``mc_samples`` draws; ``batch_size`` an integer of at least 1."""
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    x = as_model_input(model, x)
    if noise is None:
        noise = Generator(seed=EVAL_SEED, stream=streams.EVAL_ELBO)
    device = next(iter(model.parameters())).device
    rec, kl, bound = (np.empty(len(x)) for _ in range(3))
    with evaluating(model):
        for sl in _batches(len(x), batch_size):
            xb = tensor(to_device(x[sl], device))
            r, k = model.elbo(xb, noise)
            rec[sl], kl[sl] = r.numpy(), k.numpy()
            bound[sl] = rec[sl] - kl[sl]
    return bound, rec, kl


def nll_summary(ll, ess=None):
    """Mean test NLL and its standard error over the images, from per-image log-likelihoods
    (None from one image: no spread to estimate it from); with their effective sample sizes
    ``ess`` also the median and the smallest of those. ``ll`` is one value per image, shape (N,)
    with N >= 1 (no images have no mean), and ``ess`` has the same shape."""
    ll = np.asarray(ll, dtype=np.float64)
    if ll.ndim != 1 or len(ll) == 0:
        raise ValueError(f"nll_summary: ll must hold one log-likelihood per image, shape (N,) with N >= 1, "
                         f"got shape {ll.shape}")
    if ess is not None and np.shape(ess) != ll.shape:
        raise ValueError(f"nll_summary: ess must hold one effective sample size per image, shape {ll.shape} "
                         f"like ll, got shape {np.shape(ess)}")
    stderr = float(ll.std(ddof=1) / np.sqrt(len(ll))) if len(ll) > 1 else None
    out = {"test_nll": float(-ll.mean()), "test_nll_stderr": stderr}
    if ess is not None:
        out.update(ess_median=float(np.median(ess)), ess_min=float(np.min(ess)))
    return out


def _host_labels(model, labels, n):
    """``labels`` for ``n`` examples as a NumPy array of class indices of ``model``, checked
    (``check_labels``). Labels on the GPU are brought to the host first: ``check_labels`` would
    not read their values there, and the evaluation compares them with the predictions on the
    host anyway (``host_array``)."""
    return check_labels(host_array(labels, "labels"), model.num_classes, n=n)


def classification_error(model, x, labels, batch_size=500):
    """The fraction of the examples of ``x`` (NumPy (N, D)) whose ``model.classify`` differs from
    ``labels``: (1/N) sum_n [argmax_y q(y | x_n) != y_n], in eval mode and in batches of
    ``batch_size`` (an integer of at least 1). ``labels`` are N integer class indices in
    [0, ``model.num_classes``), shape (N,) (``check_labels``): a column (N, 1) would be compared
    with every prediction, giving errors above 1, and one-hot rows fail to broadcast."""
    require(model, "classifies", "a classification error")
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    x = as_model_input(model, x)
    labels = _host_labels(model, labels, n=len(x))
    device = next(iter(model.parameters())).device
    wrong = 0
    with evaluating(model):
        for start in range(0, len(x), batch_size):
            xb = tensor(to_device(x[start:start + batch_size], device))
            predicted = to_device(model.classify(xb), "cpu")
            wrong += int((predicted != labels[start:start + batch_size]).sum())
    return wrong / len(x)


def test_set_scores(model, x_test, y_test, k, progress=False):
    """What ``minivae eval`` reports for a model on binarized test images ``x_test``: the number
    of images, k, the mean ELBO, the k-sample NLL and its standard error, the likelihood it is
    the minus of (``model.estimated_log_likelihood``), the median and smallest effective sample
    size of its weights, and (for a model that ``classifies``) the classification error against
    ``y_test``. ``k`` is an integer of at least 1."""
    # k, the images and the labels before the ELBO's pass: the labels, scored last, were
    # refused after both passes over the images.
    k = check_integer(k, "k", minimum=1)
    x_test = as_model_input(model, x_test)
    if model.classifies:
        y_test = _host_labels(model, y_test, n=len(x_test))
    bound, _, _ = elbo(model, x_test)
    ll, ess = log_likelihood_and_ess(model, x_test, k=k, progress=progress)
    scores = {"n_test": len(x_test), "k": k, "test_elbo": float(bound.mean()), **nll_summary(ll, ess),
              "likelihood": model.estimated_log_likelihood}
    if model.classifies:
        scores["test_error"] = classification_error(model, x_test, y_test)
    return scores
