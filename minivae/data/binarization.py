"""Stochastic binarization of grey-level images (Bernoulli draws with the pixel as probability).

A pixel with intensity ``p`` in [0, 1] becomes 1 with probability ``p`` and 0 otherwise:
``bit = (u < p)`` with ``u`` uniform in (0, 1). ``p = 0`` therefore never fires and ``p = 1``
always does.

Protocol used by minivae (as in Burda et al. 2015, the IWAE paper):

* training split: *dynamic* binarization, a fresh draw every epoch, ``binarize(x, seed=s,
  epoch=e)``, on the CPU or on the GPU (``EpochBits``; the batch loader, ``batching.py``, draws
  it once per epoch);
* validation and test splits: *one fixed* draw, ``binarize_eval(x, split)``, keyed by a constant
  seed (``EVAL_BINARIZATION_SEED``) that does not depend on the training seed, so that test
  numbers of runs with different training seeds are measured on the very same bits.

The training draw of epoch ``e`` uses Philox (see ``_rng.py``), the same words on both devices.
Only pixels strictly between 0 and 1 need a random number, as 0 and 1 give the same bit whatever
the draw; on MNIST they are 19% of the pixels. So the ``k``-th such pixel of the array (in C
order) takes the ``k``-th float32 uniform of the draw ``(seed, offset=e, stream=TRAIN_BITS)``:
a draw five times smaller than one number per pixel, which keeps an epoch's binarization on two
CPU cores at about a tenth of a second.

The fixed evaluation draws use float32 uniforms from a PCG64 generator keyed by
``(EVAL_BINARIZATION_SEED, split)``, made once on the CPU.
"""

from __future__ import annotations

import numpy as np

from .. import streams
from ..backend import device_of, get_array_module
from ..checks import check_intensities, plain_array
from . import _rng

# Seed of the fixed validation/test draws. A named constant, independent of the training seed, so
# every run is evaluated on the same binarized test set. Changing it changes reported numbers.
EVAL_BINARIZATION_SEED = 0

# Rows of a fixed draw binarized per generator call: bounds the scratch buffer (4096 x 784
# float32 = 12.8 MB) instead of allocating a second full-size array. PCG64 float32 draws are
# chunk-invariant (the same stream whatever the chunking), which the tests check.
CHUNK_ROWS = 4096


def _check_images(x, name="x"):
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")


class EpochBits:
    """The dynamic binarization of one array (N, D), epoch after epoch, on its device.

    Finds the pixels strictly between 0 and 1 once (their positions and intensities); each
    ``draw(epoch)`` then costs one Philox draw over those pixels and one scatter. ``x`` may be a
    NumPy or a CuPy array, with values in [0, 1] (not checked here: ``binarize`` and
    ``MinibatchLoader`` check it, once, with ``check_intensities``).
    """

    def __init__(self, x, *, seed: int):
        xp = get_array_module(x)
        _check_images(x)
        self.x = xp.ascontiguousarray(x, dtype=xp.float32)
        self.seed = _rng.check_seed(seed)
        self.device = device_of(self.x)
        flat = self.x.reshape(-1)
        self.where = xp.flatnonzero((flat > 0) & (flat < 1))
        self.p = flat[self.where]

    def draw(self, epoch: int, out=None):
        """The bits of epoch ``epoch``: float32 0.0/1.0 of ``x``'s shape, in ``out`` when given
        (a C-contiguous float32 array on ``x``'s device; it may be ``x`` itself)."""
        xp = get_array_module(self.x)
        epoch = _rng.check_seed(epoch, "epoch")
        if out is None:
            out = xp.empty_like(self.x)
        elif (out.shape != self.x.shape or out.dtype != np.float32 or not out.flags.c_contiguous
              or device_of(out) != self.device):
            raise ValueError(f"out must be a C-contiguous float32 array of shape {self.x.shape} "
                             f"on the {self.device}")
        xp.greater_equal(self.x, 1, out=out)  # the sure bits: 1 where p = 1, else 0 for now
        u = _rng.philox_uniform(len(self.p), self.seed, epoch, streams.TRAIN_BITS, self.device)
        out.reshape(-1)[self.where] = u < self.p
        return out


def binarize(x, *, seed: int, epoch: int = 0, out=None):
    """The training binarization of ``x`` (values in [0, 1], shape (N, D)) in epoch ``epoch``.

    The bits depend only on ``(x, seed, epoch)``, and are the same on the CPU (NumPy ``x``) and
    on the GPU (CuPy ``x``). Returns float32 0.0/1.0 on ``x``'s device (``out`` if given; it may
    be ``x`` itself). ``binarize(x, seed=s, epoch=e)`` equals the batches of
    ``iterate_minibatches(x, ..., seed=s, epoch=e, shuffle=False, binarize=True)`` concatenated.
    Raises TypeError / ValueError for values that are not float intensities in [0, 1]; a nested
    list is taken as a NumPy array, as ``binarize_eval`` takes it.
    """
    x = get_array_module(x).asarray(plain_array(x, "x"))
    check_intensities(x)
    return EpochBits(x, seed=seed).draw(epoch, out)


def _fixed_bits_inplace(buf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Overwrite ``buf`` (float32 probabilities, (N, D)) with Bernoulli(buf) bits drawn from ``rng``,
    ``CHUNK_ROWS`` rows per call. Returns ``buf``."""
    n, d = buf.shape
    scratch = np.empty((min(CHUNK_ROWS, n), d), dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        u = scratch[: stop - start]
        rng.random(out=u, dtype=np.float32)
        # bit = u < p, written over p itself (same-position aliasing is safe for ufuncs)
        np.less(u, buf[start:stop], out=buf[start:stop])
    return buf


def binarize_eval(x: np.ndarray, split: str, *, seed: int = EVAL_BINARIZATION_SEED) -> np.ndarray:
    """The one fixed binarization of a validation or test set (``split`` is 'valid' or 'test').

    Float32 0.0/1.0 on the CPU, from PCG64 keyed by ``(seed, split)``. Call it once and keep the
    result: every evaluation of every run should see these same bits. Raises TypeError /
    ValueError for values that are not float intensities in [0, 1].
    """
    if not isinstance(split, str) or split not in _rng.SPLIT_CODES:  # a list is no dict key
        raise ValueError(f"binarize_eval is for the 'valid' or 'test' split, got {split!r}")
    x = np.asarray(plain_array(x, "x"))
    _check_images(x)
    check_intensities(x)
    rng = _rng.generator(seed, _rng.STREAM_BINARIZE, _rng.split_code(split), 0)
    return _fixed_bits_inplace(np.array(x, dtype=np.float32, order="C", copy=True), rng)
