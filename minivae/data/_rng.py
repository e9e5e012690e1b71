"""Seeded random draws for the data pipeline, of two kinds for two jobs.

* **The training data of each epoch** (its order and its dynamic binarization) comes from
  Philox: ``minivae.random`` on the CPU, ``minivae.gpu`` on the GPU, which compute the same
  words from the same address ``(seed, offset = epoch, stream)``. So a run whose training set
  lives on the GPU sees the very batches and bits of a run on the CPU, and epoch ``e`` is a pure
  function of ``(seed, e)``: a resumed run sees exactly the epochs of an uninterrupted one
  without any RNG state to save.
* **The fixed draws** (the one binarization of the validation set and of the test set, the choice
  of labelled examples) are made once per run, on the CPU, by NumPy's PCG64 seeded with
  ``np.random.SeedSequence([seed, stream, ...])``. They stay what the recorded results were
  scored with: changing them would change every reported number.
"""

from __future__ import annotations

import numpy as np

from .. import random, streams
from ..checks import check_integer

# Stream identifiers of the PCG64 draws (named in minivae.streams): distinct integers, so the
# evaluation bits and the labelled-subset choice are independent streams for one seed.
STREAM_BINARIZE = streams.DATA_BINARIZE
STREAM_LABELLED = streams.DATA_LABELLED

# Split identifiers inside the evaluation binarization stream: validation and test get their own
# fixed draws, independent of each other.
SPLIT_CODES = {"valid": 1, "test": 2}


def check_seed(seed, name: str = "seed") -> int:
    """Return ``seed`` as a Python int, rejecting what the generators would mis-handle.

    A float seed (``1.0``) or ``None`` would either fail deep inside NumPy or, for None, silently
    draw fresh OS entropy and break reproducibility, so both are refused here with a clear
    message, as are negative numbers and numbers of more than 64 bits (a Philox key).
    """
    seed = check_integer(seed, name, minimum=0)
    if seed >= 2**64:
        raise ValueError(f"{name} must be below 2**64, got {seed}")
    return seed


def generator(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A fresh ``Generator(PCG64)`` determined by ``(seed, stream, *keys)`` and nothing else."""
    entropy = [check_seed(seed)] + [int(stream)] + [check_seed(k, "key") for k in keys]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def split_code(split: str) -> int:
    """Integer code of an evaluation split name ('valid' or 'test')."""
    try:
        return SPLIT_CODES[split]
    except KeyError:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}") from None


def philox_words(n: int, seed: int, epoch: int, stream: int, device: str = "cpu"):
    """Words 0 .. n-1 (uint32) of the Philox draw ``(seed, offset=epoch, stream)`` on ``device``."""
    if device == "gpu":
        from .. import gpu  # deferred: it imports CuPy

        return gpu.philox_words(n, seed, epoch, stream)
    return random.philox_words(n, seed, epoch, stream)


def philox_uniform(n: int, seed: int, epoch: int, stream: int, device: str = "cpu"):
    """Float32 uniforms 0 .. n-1 of the Philox draw ``(seed, offset=epoch, stream)`` on ``device``
    (``minivae.random``'s transform, exact on both devices)."""
    if device == "gpu":
        from .. import gpu  # deferred: it imports CuPy

        return gpu.uniform((n,), seed, epoch, np.float32, stream)
    return random.uniform((n,), seed, epoch, np.float32, stream)
