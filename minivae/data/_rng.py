"""Seeded random streams for the data pipeline.

Every random decision the data pipeline makes (the shuffle of an epoch, the Bernoulli draw that
binarizes an epoch, the choice of labelled examples) comes from its own NumPy ``Generator`` whose
state is derived *only* from ``(seed, stream, ...)`` through ``np.random.SeedSequence``. Nothing is
drawn from a generator that lives across epochs, so epoch ``e`` of a resumed run sees exactly the
bits and the order that epoch ``e`` of an uninterrupted run saw, without saving any RNG state.

The bit generator is PCG64 (NumPy's default). The model's own noise (reparameterization epsilon)
goes through ``minivae.random`` (Philox, the CPU/GPU twin); the data pipeline runs on the CPU only,
so it has no need for a GPU twin and uses NumPy's tested generator instead.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import streams

# Stream identifiers (named in minivae.streams): distinct integers so that, for one seed, the
# shuffle, the binarization and the labelled-subset choice are statistically independent streams.
STREAM_SHUFFLE = streams.DATA_SHUFFLE
STREAM_BINARIZE = streams.DATA_BINARIZE
STREAM_LABELLED = streams.DATA_LABELLED

# Split identifiers inside the binarization stream: the training split gets a fresh draw per
# epoch, validation and test get their own fixed draws, independent of each other.
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


def check_seed(seed, name: str = "seed") -> int:
    """Return ``seed`` as a Python int, rejecting what SeedSequence would mis-handle.

    SeedSequence accepts only non-negative integers; a float seed (``1.0``) or ``None`` would
    either fail deep inside NumPy or, for None, silently draw fresh OS entropy and break
    reproducibility, so both are refused here with a clear message.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed}")
    return seed


def generator(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A fresh ``Generator(PCG64)`` determined by ``(seed, stream, *keys)`` and nothing else."""
    entropy = [check_seed(seed)] + [int(stream)] + [check_seed(k, "epoch/key") for k in keys]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def split_code(split: str) -> int:
    """Integer code of a split name ('train', 'valid' or 'test')."""
    try:
        return SPLIT_CODES[split]
    except KeyError:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}") from None
