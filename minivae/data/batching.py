"""Seeded minibatches and labelled subsets, on the CPU or on the GPU.

Epoch ``e`` of a run with seed ``s`` is a pure function of ``(s, e)``: its order is
``epoch_permutation(n, seed=s, epoch=e)`` and its bits ``binarize(x, seed=s, epoch=e)``, both
drawn from Philox, which gives the same words on both devices. No generator state is carried from
one epoch to the next, so resuming at epoch ``e`` reproduces exactly the batches an uninterrupted
run would have seen, and a loader whose images live on the GPU serves the very batches of one on
the CPU.

To avoid work per step, an epoch is materialised once: the images are binarized in a work
buffer, then gathered in the epoch's order into the epoch buffer (``take(..., out=)``), and the
batches are yielded as *views* of consecutive rows. A batch therefore stays valid only until the
same buffer is filled again (the next epoch of the same ``MinibatchLoader``); copy it if you keep
it longer.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .. import streams
from ..backend import device_of, get_array_module, resolve_device, to_device
from ..checks import check_bool, check_integer, check_intensities, plain_array
from . import _rng
from .binarization import EpochBits


def epoch_permutation(n: int, *, seed: int, epoch: int, device: str = "cpu"):
    """The order of the ``n`` examples in epoch ``epoch``: an int64 permutation of ``range(n)`` on
    ``device`` ("cpu" or "gpu", or another name ``backend.resolve_device`` takes), the same on both.

    Example ``i`` gets a 64-bit random key from two words of the Philox draw ``(seed, offset=epoch,
    stream=TRAIN_ORDER)``, and the examples are sorted by key. The key's lowest bits are replaced by
    ``i`` itself, which makes every key distinct: then any sorting algorithm, stable or not, on
    either device, gives the same order. (For n = 50,000 that leaves 48 random bits; two examples
    tie on them with probability about 4e-6 per epoch, and a tie keeps their original order.)
    """
    n = check_integer(n, "n", minimum=0)
    words = _rng.philox_words(2 * n, _rng.check_seed(seed), _rng.check_seed(epoch, "epoch"),
                              streams.TRAIN_ORDER, resolve_device(device))
    xp = get_array_module(words)
    pairs = words.reshape(n, 2).astype(xp.uint64)
    index_bits = (n - 1).bit_length() if n > 1 else 0
    keys = (((pairs[:, 0] << 32) | pairs[:, 1]) >> index_bits) << index_bits
    keys |= xp.arange(n, dtype=xp.uint64)
    return xp.argsort(keys).astype(xp.int64, copy=False)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of minibatches per epoch for ``n`` examples (TypeError / ValueError unless ``n`` is
    an integer of at least 0, ``batch_size`` a positive one and ``drop_last`` True or False)."""
    n = check_integer(n, "n", minimum=0)
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    return n // batch_size if check_bool(drop_last, "drop_last") else -(-n // batch_size)


def iterate_minibatches(x, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
                        drop_last: bool = False, y=None, binarize: bool = False) -> Iterator:
    """Yield the minibatches of one epoch, deterministically in ``(seed, epoch)``.

    One-off form of ``MinibatchLoader(x, batch_size, seed=seed, ...).epoch(epoch)`` (see there),
    on ``x``'s device; note that ``binarize`` is off by default here. Yields ``xb`` or, when ``y``
    is given, ``(xb, yb)``.
    """
    x = get_array_module(x).asarray(plain_array(x, "x"))
    loader = MinibatchLoader(x, batch_size, seed=seed, y=y, shuffle=shuffle, binarize=binarize,
                             drop_last=drop_last, device=device_of(x))
    return loader.epoch(epoch)


def _gather_rows(source, order, out):
    """``out[i] = source[order[i]]`` for a permutation ``order``, without a full-size temporary."""
    if isinstance(source, np.ndarray):
        # mode="clip": the indices are a permutation, so in range; NumPy's default "raise" would
        # buffer the output internally, a hidden full-size temporary.
        return np.take(source, order, axis=0, out=out, mode="clip")
    return source.take(order, axis=0, out=out)  # CuPy's take has no mode and writes out directly


class MinibatchLoader:
    """Epoch-indexed minibatches of one array, on the CPU or on the GPU.

    ``loader.epoch(e)`` yields the batches of epoch ``e``: each example exactly once (all but the
    final ``n % batch_size`` when ``drop_last``), in the order ``epoch_permutation(n, seed, e)``
    when ``shuffle``, as the bits ``binarize(x, seed, e)`` when ``binarize`` (dynamic
    binarization), else as given. The result depends only on ``(seed, e)``, so a run resumed at
    epoch ``e`` calls ``loader.epoch(e)`` and continues bit for bit; and it does not depend on
    the device: with ``device="gpu"`` the images are copied to the GPU once, the shuffle and the
    bits are drawn there, and the batches (CuPy arrays) equal the CPU loader's. Defaults suit
    VAE training on MNIST: shuffled, dynamically binarized; then ``x`` must hold float
    intensities in [0, 1] (checked once, here). ``shuffle``, ``binarize`` and ``drop_last`` are
    True or False (TypeError otherwise: ``shuffle="False"`` would shuffle).

    Batches are float32 whatever ``x``'s dtype (the images are converted once, here), views into
    the loader's epoch buffer, overwritten when the next epoch starts (with ``shuffle=False`` and
    ``binarize=False`` they are views of the float32 images).

    Example::

        loader = MinibatchLoader(data.x_train, 100, seed=cfg.seed)
        for epoch in range(start_epoch, epochs):
            for xb in loader.epoch(epoch):
                ...
    """

    def __init__(self, x, batch_size: int, *, seed: int, y=None, shuffle: bool = True,
                 binarize: bool = True, drop_last: bool = False, device: str = "cpu"):
        shuffle, binarize = check_bool(shuffle, "shuffle"), check_bool(binarize, "binarize")
        drop_last = check_bool(drop_last, "drop_last")
        self.device = resolve_device(device)
        xp = get_array_module(x)
        x = xp.asarray(plain_array(x, "x"))
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (N, D), got shape {x.shape}")
        if binarize:
            check_intensities(x)
        if y is not None:
            y = get_array_module(y).asarray(plain_array(y, "y"))  # a number or a generator: 0-d, refused below
            if y.ndim != 1 or len(y) != len(x):
                raise ValueError(f"y must hold one label per row of x, shape ({len(x)},), got shape {y.shape}")
        # One conversion up front, so that every epoch can gather with take(out=) directly.
        self.x = to_device(xp.ascontiguousarray(x, dtype=xp.float32), self.device)
        self.y = None if y is None else to_device(y, self.device)
        self.batch_size = check_integer(batch_size, "batch_size", minimum=1)
        self.seed = _rng.check_seed(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.bits = EpochBits(self.x, seed=self.seed) if binarize else None
        self._work = self._buffer = None

    @property
    def binarize(self) -> bool:
        """Whether the batches are the epoch's Bernoulli draw rather than the intensities."""
        return self.bits is not None

    def __len__(self) -> int:
        """Number of minibatches per epoch."""
        return num_batches(len(self.x), self.batch_size, self.drop_last)

    @property
    def num_examples(self) -> int:
        """Number of examples per epoch actually served (excludes the dropped tail)."""
        return len(self) * self.batch_size if self.drop_last else len(self.x)

    def epoch_data(self, epoch: int):
        """The whole epoch ``epoch`` as one array (N, D) in the order it is served, and its labels
        (None without ``y``): the loader's epoch buffer, or the images themselves when there is
        nothing to reorder or draw."""
        epoch = _rng.check_seed(epoch, "epoch")
        xp = get_array_module(self.x)
        perm = epoch_permutation(len(self.x), seed=self.seed, epoch=epoch, device=self.device) \
            if self.shuffle else None
        if perm is None and self.bits is None:
            return self.x, self.y
        if self._buffer is None:
            self._buffer = xp.empty_like(self.x)
        if perm is None:
            data = self.bits.draw(epoch, out=self._buffer)
        else:
            source = self.x
            if self.bits is not None:
                if self._work is None:
                    self._work = xp.empty_like(self.x)
                source = self.bits.draw(epoch, out=self._work)
            data = _gather_rows(source, perm, self._buffer)
        labels = None if self.y is None else (self.y if perm is None else self.y[perm])
        return data, labels

    def epoch(self, epoch: int) -> Iterator:
        """Iterator over the minibatches of epoch ``epoch`` (``xb`` or ``(xb, yb)``); a bad
        ``epoch`` is refused here, not at the first batch."""
        return self._batches(_rng.check_seed(epoch, "epoch"))

    def _batches(self, epoch):
        data, labels = self.epoch_data(epoch)
        n = len(self.x)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            yield data[sl] if labels is None else (data[sl], labels[sl])


def balanced_labelled_subset(labels: np.ndarray, n_labelled: int = 100, *, seed: int) -> np.ndarray:
    """Indices of ``n_labelled`` examples, the same number from every class, chosen by ``seed``.

    For the semi-supervised M2 model (Kingma et al. 2014 use 100, 600, 1000, 3000 labels on
    MNIST). ``n_labelled`` must be a multiple of the number of classes present in ``labels``.
    Returns sorted int64 indices into ``labels``; the same ``(labels, n_labelled, seed)`` always
    gives the same subset.
    """
    labels = np.asarray(plain_array(labels, "labels"))
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if len(labels) == 0:
        raise ValueError("labels is empty: there is no class to draw labelled examples from")
    if labels.dtype.kind not in "iub":
        # Class labels are integers; float labels (NaN among them) would each count as a class.
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    classes, counts = np.unique(labels, return_counts=True)
    n_labelled = check_integer(n_labelled, "n_labelled", minimum=1)
    if n_labelled % len(classes):
        raise ValueError(f"n_labelled={n_labelled} is not a positive multiple of the {len(classes)} classes")
    per_class = n_labelled // len(classes)
    fewest = int(counts.min())
    if fewest < per_class:
        smallest = classes[int(np.argmin(counts))]
        raise ValueError(f"n_labelled={n_labelled} asks for {per_class} examples of each class, but class "
                         f"{smallest.item()!r} has {fewest}; give at most {len(classes) * fewest} "
                         f"({len(classes)} classes x {fewest})")
    rng = _rng.generator(seed, _rng.STREAM_LABELLED)
    chosen = []
    for c in classes:  # sorted order, so the draws are assigned to classes reproducibly
        chosen.append(rng.permutation(np.flatnonzero(labels == c))[:per_class])
    return np.sort(np.concatenate(chosen)).astype(np.int64, copy=False)
