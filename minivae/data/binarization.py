"""Stochastic binarization of grey-level images (Bernoulli draws with the pixel as probability).

A pixel with intensity ``p`` in [0, 1] becomes 1 with probability ``p`` and 0 otherwise:
``bit = (u < p)`` with ``u ~ Uniform[0, 1)``. ``p = 0`` therefore never fires and ``p = 1`` always
does. The uniforms are float32 draws (multiples of 2**-24) from a PCG64 generator keyed by
``(seed, split, epoch)`` (see ``_rng.py``), so a draw is a pure function of those three numbers.

Protocol used by minivae (as in Burda et al. 2015, the IWAE paper):

* training split: *dynamic* binarization, a fresh draw every epoch, ``binarize(x, seed=s,
  epoch=e, split="train")``; the batch loader (``batching.py``) draws it for the shuffled epoch;
* validation and test splits: *one fixed* draw, ``binarize_eval(x, split)``, keyed by a constant
  seed (``EVAL_BINARIZATION_SEED``) that does not depend on the training seed, so that test
  numbers of runs with different training seeds are measured on the very same bits.
"""

from __future__ import annotations

import numpy as np

from . import _rng

# Seed of the fixed validation/test draws. A named constant, independent of the training seed, so
# every run is evaluated on the same binarized test set. Changing it changes reported numbers.
EVAL_BINARIZATION_SEED = 0

# Rows binarized per generator call: bounds the scratch buffer (4096 x 784 float32 = 12.8 MB)
# instead of allocating a second full-size array. PCG64 float32 draws are chunk-invariant (the
# same stream whatever the chunking), which the tests check.
CHUNK_ROWS = 4096


def binarize_inplace(buf: np.ndarray, rng: np.random.Generator, *, scratch: np.ndarray | None = None) -> np.ndarray:
    """Overwrite ``buf`` (float32 probabilities, shape (N, D)) with Bernoulli(buf) bits.

    Rows are processed in chunks of ``CHUNK_ROWS``; ``scratch`` (float32, shape (>=chunk, D)) may
    be passed to reuse one uniform buffer across calls. Returns ``buf``.
    """
    if buf.dtype != np.float32 or buf.ndim != 2:
        raise TypeError(f"binarize_inplace needs a 2-D float32 array, got {buf.dtype} {buf.shape}")
    n, d = buf.shape
    rows = min(CHUNK_ROWS, n) if n else 0
    if scratch is None or scratch.shape[0] < rows or scratch.shape[1:] != (d,) or scratch.dtype != np.float32:
        scratch = np.empty((rows, d), dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        u = scratch[: stop - start]
        rng.random(out=u, dtype=np.float32)
        # bit = u < p, written over p itself (same-position aliasing is safe for ufuncs); the
        # boolean result is cast to 0.0 / 1.0 float32.
        np.less(u, buf[start:stop], out=buf[start:stop], casting="unsafe")
    return buf


def binarize(x: np.ndarray, *, seed: int, epoch: int = 0, split: str = "train", out: np.ndarray | None = None) -> np.ndarray:
    """Bernoulli-binarize ``x`` (values in [0, 1], shape (N, D)) deterministically.

    The draw depends only on ``(seed, split, epoch)``: same triple, same bits; another epoch or
    split, an independent draw. Returns a float32 array of 0.0/1.0 (``out`` if given; ``out`` may
    be ``x`` itself for an in-place draw when ``x`` is float32). Values of ``x`` are not range
    checked here (that would cost a pass over the data each epoch); ``load_mnist`` guarantees [0, 1].

    ``binarize(x, seed=s, epoch=e)`` equals the batches of ``iterate_minibatches(x, ...,
    seed=s, epoch=e, shuffle=False, binarize=True)`` concatenated.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"binarize expects a 2-D array (N, D), got shape {x.shape}")
    if out is None:
        out = np.array(x, dtype=np.float32, order="C", copy=True)
    else:
        if out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {x.shape}")
        if out is not x:
            np.copyto(out, x, casting="same_kind")
    rng = _rng.generator(seed, _rng.STREAM_BINARIZE, _rng.split_code(split), epoch)
    return binarize_inplace(out, rng)


def binarize_eval(x: np.ndarray, split: str, *, seed: int = EVAL_BINARIZATION_SEED) -> np.ndarray:
    """The one fixed binarization of a validation or test set (``split`` is 'valid' or 'test').

    Equal to ``binarize(x, seed=seed, epoch=0, split=split)``. Call it once and keep the result:
    every evaluation of every run should see these same bits.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"binarize_eval is for the 'valid' or 'test' split, got {split!r}")
    return binarize(x, seed=seed, epoch=0, split=split)
