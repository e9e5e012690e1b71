"""Seeded minibatches and labelled subsets.

Epoch ``e`` of a run with seed ``s`` is a pure function of ``(s, e)``: its order is
``epoch_permutation(n, seed=s, epoch=e)`` and its binarization the training stream keyed by
``(s, 'train', e)``. No generator state is carried from one epoch to the next, so resuming at epoch
``e`` reproduces exactly the batches an uninterrupted run would have seen.

To avoid work per step, an epoch is materialised once: the examples are gathered in the epoch's
order into one preallocated float32 buffer (``np.take(..., out=)``), binarized in place, and the
batches are yielded as *views* of consecutive rows. A batch therefore stays valid only until the
same buffer is filled again (the next epoch of the same ``MinibatchLoader``); copy it if you keep
it longer.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from . import _rng
from .binarization import binarize_inplace


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` examples in epoch ``epoch`` (int64 permutation of ``range(n)``)."""
    return _rng.generator(seed, _rng.STREAM_SHUFFLE, epoch).permutation(n).astype(np.int64, copy=False)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of minibatches per epoch for ``n`` examples."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_minibatches(
    x: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = False,
    y: np.ndarray | None = None,
    binarize: bool = False,
    buffer: np.ndarray | None = None,
) -> Iterator:
    """Yield the minibatches of one epoch, deterministically in ``(seed, epoch)``.

    Each example appears exactly once per epoch (all but the final ``n % batch_size`` when
    ``drop_last``). ``binarize=True`` replaces the intensities by the epoch's Bernoulli draw
    (dynamic binarization of the training set). Yields ``xb`` or, when ``y`` is given,
    ``(xb, yb)``.

    Batches are views into one epoch buffer: ``buffer`` (float32, same shape as ``x``) when
    given, reused across calls, otherwise a buffer allocated for this epoch. With
    ``shuffle=False`` and ``binarize=False`` the batches are views of ``x`` itself (no copy).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, D), got shape {x.shape}")
    n = x.shape[0]
    nb = num_batches(n, batch_size, drop_last)
    if y is not None:
        y = np.asarray(y)
        if y.shape[0] != n:
            raise ValueError(f"x has {n} rows but y has {y.shape[0]}")
    _rng.check_seed(seed)
    _rng.check_seed(epoch, "epoch")

    perm = epoch_permutation(n, seed=seed, epoch=epoch) if shuffle else None
    if perm is None and not binarize:
        data = x  # nothing to reorder or draw: serve views of the caller's array
    else:
        if buffer is None:
            buffer = np.empty(x.shape, dtype=np.float32)
        elif buffer.shape != x.shape or buffer.dtype != np.float32 or not buffer.flags.c_contiguous:
            raise ValueError(f"buffer must be a C-contiguous float32 array of shape {x.shape}")
        if perm is None:
            np.copyto(buffer, x, casting="same_kind")
        elif x.dtype == np.float32:
            # mode="clip": the indices are a permutation, so in range; "raise" would make NumPy
            # buffer the output internally, a hidden full-size temporary.
            np.take(x, perm, axis=0, out=buffer, mode="clip")
        else:
            np.copyto(buffer, x[perm], casting="same_kind")
        if binarize:
            rng = _rng.generator(seed, _rng.STREAM_BINARIZE, _rng.split_code("train"), epoch)
            binarize_inplace(buffer, rng)
        data = buffer
    labels = None if y is None else (y if perm is None else y[perm])

    for b in range(nb):
        sl = slice(b * batch_size, min((b + 1) * batch_size, n))
        if labels is None:
            yield data[sl]
        else:
            yield data[sl], labels[sl]


class MinibatchLoader:
    """Epoch-indexed minibatches of one array, with one buffer reused across epochs.

    ``loader.epoch(e)`` yields the batches of epoch ``e`` (see ``iterate_minibatches``); the
    result depends only on ``(seed, e)``, so a run resumed at epoch ``e`` calls
    ``loader.epoch(e)`` and continues bit for bit. Defaults suit VAE training on MNIST:
    shuffled, dynamically binarized. Batches are views into the loader's buffer, overwritten
    when the next epoch starts.

    Example::

        loader = MinibatchLoader(data.x_train, 100, seed=cfg.seed)
        for epoch in range(start_epoch, epochs):
            for xb in loader.epoch(epoch):
                ...
    """

    def __init__(
        self,
        x: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        y: np.ndarray | None = None,
        shuffle: bool = True,
        binarize: bool = True,
        drop_last: bool = False,
    ):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (N, D), got shape {x.shape}")
        if binarize and x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise ValueError("binarize=True needs intensities in [0, 1]")
        # One conversion up front, so that every epoch can gather with np.take(out=) directly.
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = None if y is None else np.asarray(y)
        self.batch_size = int(batch_size)
        self.seed = _rng.check_seed(seed)
        self.shuffle = bool(shuffle)
        self.binarize = bool(binarize)
        self.drop_last = bool(drop_last)
        num_batches(len(self.x), self.batch_size, self.drop_last)  # validates batch_size
        self._buffer = None

    def __len__(self) -> int:
        """Number of minibatches per epoch."""
        return num_batches(len(self.x), self.batch_size, self.drop_last)

    @property
    def num_examples(self) -> int:
        """Number of examples per epoch actually served (excludes the dropped tail)."""
        return len(self) * self.batch_size if self.drop_last else len(self.x)

    def epoch(self, epoch: int) -> Iterator:
        """Iterator over the minibatches of epoch ``epoch`` (``xb`` or ``(xb, yb)``)."""
        if (self.shuffle or self.binarize) and self._buffer is None:
            self._buffer = np.empty(self.x.shape, dtype=np.float32)
        return iterate_minibatches(
            self.x, self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
            drop_last=self.drop_last, y=self.y, binarize=self.binarize, buffer=self._buffer,
        )


def balanced_labelled_subset(labels: np.ndarray, n_labelled: int = 100, *, seed: int) -> np.ndarray:
    """Indices of ``n_labelled`` examples, the same number from every class, chosen by ``seed``.

    For the semi-supervised M2 model (Kingma et al. 2014 use 100, 600, 1000, 3000 labels on
    MNIST). ``n_labelled`` must be a multiple of the number of classes present in ``labels``.
    Returns sorted int64 indices into ``labels``; the same ``(labels, n_labelled, seed)`` always
    gives the same subset.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    classes = np.unique(labels)
    if n_labelled <= 0 or n_labelled % len(classes):
        raise ValueError(f"n_labelled={n_labelled} is not a positive multiple of the {len(classes)} classes")
    per_class = n_labelled // len(classes)
    rng = _rng.generator(seed, _rng.STREAM_LABELLED)
    chosen = []
    for c in classes:  # sorted order, so the draws are assigned to classes reproducibly
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c!r} has {len(idx)} examples, fewer than the {per_class} asked for")
        chosen.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(chosen)).astype(np.int64, copy=False)
