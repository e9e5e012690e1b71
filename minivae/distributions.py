"""Sampling and categorical helpers that several models share.

The log-densities and KLs themselves are fused ops of ``minivae.functional``
(``gaussian_log_prob``, ``bernoulli_log_prob``, ``kl_normal_std``, ``kl_normal_normal``), which
the models call directly. Here:

* ``sample_bernoulli``: binary images from Bernoulli means, the one place models draw pixels;
* ``standard_normal``: a N(0, I) draw from the Philox generator, in a model's dtype and device;
* ``standard_gumbel``: a Gumbel(0, 1) draw from the Philox generator, in a model's dtype and
  device;
* ``one_hot``, ``check_labels``, ``check_label_count``, ``log_categorical``,
  ``log_uniform_categorical``: labels and the categorical distribution of the models with a
  discrete variable (M2, ADGM/SDGM, Gumbel-softmax).

The three draws are made where their arrays live (``_draw``): on the GPU by the kernels, so that
nothing is copied from the host and a training step captured as a CUDA graph can draw them.
"""
import math

import numpy as np

from . import functional as F
from .autograd import Tensor, tensor
from .backend import cupy_module, get_array_module, get_default_dtype, is_gpu_array, resolve_device
from .checks import check_float, check_integer, check_intensities, plain_array
from .random import use_noise


def _draw(kind, noise, shape, like):
    """The ``kind`` draw ("normal", "uniform" or "gumbel") of ``shape`` (an integer or a sequence
    of them) from the Philox generator ``noise`` (a ``Generator``: its next draw; or a ``Noise``),
    in the dtype of the array ``like`` and made where it lives.

    On the CPU the NumPy twin draws it (``minivae.random``); on the GPU the kernel of that name
    (``minivae.gpu.normal``, ``uniform``, ``gumbel``), from the same Philox words: uniforms and
    float32 Gumbel samples bit for bit, normals and float64 Gumbel samples to a few ulps (see
    ``minivae.random``). The kernel needs no copy from the host and reads the draw's offset from
    device memory where its ``Noise`` says so (``offset_from``: the draws of a captured training
    step).
    """
    if not is_gpu_array(like):
        return getattr(noise, kind)(shape, dtype=like.dtype)
    from . import gpu  # deferred: it imports CuPy

    def draw(address):
        return getattr(gpu, kind)(shape, address.seed, address.offset, like.dtype, address.stream,
                                  offset_from=address.offset_from)
    # A draw the kernel's wrapper refuses (its shape, its dtype, more than 2**34 elements) gives
    # a Generator its offset back, as on the CPU (Generator.normal and the others), so the
    # corrected call draws what it would have.
    return use_noise(noise, draw)


def sample_bernoulli(probs, noise):
    """Binary images drawn from the Bernoulli means ``probs`` (a NumPy or CuPy array): pixel j is
    1 where u_j < probs_j, u_j ~ Uniform[0, 1) from the Philox generator ``noise``, drawn where
    ``probs`` lives (``_draw``: the same uniforms on either device, so the same images).

    The means must be floats in [0, 1]: the draw would turn NaN (a diverged decoder) into 0s and
    a mean above 1 into 1s without a word. Means on the host are checked
    (``check_intensities``); means on the GPU are checked for their dtype only, since checking
    their values would read them back to the host at every call.
    """
    use = "a Bernoulli draw (sample_bernoulli)"
    if is_gpu_array(probs):
        check_float(probs, "probs", use)
    else:
        probs = np.asarray(probs)
        check_intensities(probs, "probs", use)
    return (_draw("uniform", noise, probs.shape, probs) < probs).astype(probs.dtype)


def standard_normal(noise, shape, like):
    """A standard normal array of ``shape`` (an integer or a sequence of them) from the Philox
    generator ``noise`` (a ``Generator``: its next draw; or a ``Noise``), in the dtype and device
    of ``like`` (a Tensor or an array): drawn there (``_draw``; on the GPU by ``minivae.gpu.normal``)."""
    return _draw("normal", noise, shape, like.data if isinstance(like, Tensor) else like)


def standard_gumbel(noise, shape, like):
    """Standard Gumbel samples -log(-log(u)) of ``shape`` (an integer or a sequence of them) from
    the Philox generator ``noise`` (a ``Generator``: its next draw; or a ``Noise``), in the dtype
    and device of ``like`` (a Tensor or an array): drawn there (``_draw``; on the CPU by
    ``minivae.random.gumbel``, on the GPU by ``minivae.gpu.gumbel``, which computes the same
    recipe from the same Philox words)."""
    return _draw("gumbel", noise, shape, like.data if isinstance(like, Tensor) else like)


def check_label_count(labels, n):
    """Refuse a label array whose length is not ``n``, the number of rows it labels.

    NumPy broadcasting would score every one of n rows with a single label without a word (and
    fail deep inside an op for other lengths). The length is known on the host for labels on
    either device, so this reads nothing back from the GPU.
    """
    if len(labels) != n:
        raise ValueError(f"{n} rows but {len(labels)} labels: give one label per row")


def check_labels(labels, num_classes, n=None):
    """``labels`` (an array on either device, a Tensor or a sequence) as an array of class
    indices (B,), checked: integers (a float label 2.5 would be cast to class 2 silently, or
    never equal a prediction), one axis (a column (B, 1) or one-hot rows (B, K) would broadcast
    against the B predictions or rows), ``n`` of them when ``n`` is given
    (``check_label_count``), and on the host values in [0, ``num_classes``).

    Labels already on the GPU are not checked for their values: that would read them back to the
    host at every step, which a training step captured as a CUDA graph cannot do; the trainer's
    come from labels it checked once (``Trainer``).
    """
    num_classes = check_integer(num_classes, "num_classes", minimum=1)
    labels = labels.data if isinstance(labels, Tensor) else labels
    labels = labels if is_gpu_array(labels) else np.asarray(plain_array(labels, "labels"))
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got an array of dtype {labels.dtype}")
    if not is_gpu_array(labels) and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be integers in [0, {num_classes}), got values from "
                         f"{labels.min()} to {labels.max()}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if n is not None:
        check_label_count(labels, n)
    return labels


def one_hot(labels, num_classes, like, n=None):
    """Integer labels (B,) as a constant (B, K) one-hot Tensor in ``like``'s dtype and device,
    the labels checked first (``check_labels``; ``n``, when given, is the number of rows they
    are for). Labels on the host are checked before they are copied to ``like``'s device.
    """
    labels = check_labels(labels, num_classes, n)
    xp = get_array_module(like.data)
    labels = xp.asarray(labels).astype(int)
    return tensor(xp.eye(num_classes, dtype=like.dtype)[labels])


def log_categorical(y_onehot, logits):
    """log Cat(y; softmax(logits)) per row = sum_k y_k log_softmax(logits)_k, classes on the last
    axis (log-softmax, never log(softmax), which underflows).

    The leading axes broadcast (the semi-supervised models score (B, K) labels against (S, B, K)
    logits); the class axes must be equal, since a (B, 1) ``y_onehot`` would broadcast too and
    sum the log-probabilities of all classes (ValueError naming both shapes)."""
    y_shape, shape = tuple(y_onehot.shape), tuple(logits.shape)
    if not y_shape or not shape or y_shape[-1] != shape[-1]:
        raise ValueError(f"log_categorical: y_onehot {y_shape} and logits {shape} must have the "
                         "same number of classes on their last axis")
    return F.sum(y_onehot * F.log_softmax(logits, axis=-1), axis=-1)


def log_uniform_categorical(batch_size, num_classes, dtype=None, device="cpu"):
    """The uniform prior over ``num_classes`` classes: a constant vector of -log K, shape (B,).

    Both sizes are checked as integers (``check_integer``): a float batch size 2.5 would give 2
    rows and 2.5 classes the log-density of no categorical distribution."""
    batch_size = check_integer(batch_size, "batch_size", minimum=0)
    num_classes = check_integer(num_classes, "num_classes", minimum=1)
    dtype = np.dtype(get_default_dtype() if dtype is None else dtype)
    if dtype.kind != "f":  # an integer -log K is cut to a wrong constant, e.g. -2 for 10 classes
        raise TypeError(f"log_uniform_categorical: dtype must be floating, got {dtype}")
    # Filled where it lives: no copy from the host at every step of a GPU training run.
    xp = cupy_module() if resolve_device(device) == "gpu" else np
    return Tensor(xp.full(batch_size, -math.log(num_classes), dtype=dtype))
