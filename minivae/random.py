"""Philox4x32-10 counter-based random numbers in vectorized NumPy.

This module is the CPU twin of the GPU generator in ``kernels/philox.cuh`` and
``kernels/vae_math.cuh``: both compute the same 32-bit words, bit for bit, from the
same (seed, offset, stream, element index), and then apply the same float transforms.

Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC 2011; the Random123 library) maps a 128-bit counter ``(c0, c1, c2, c3)``
and a 64-bit key ``(k0, k1)`` to 128 random bits. One round is::

    hi0, lo0 = mulhilo(0xD2511F53, c0)        # 32x32 -> 64-bit product, high and low words
    hi1, lo1 = mulhilo(0xCD9E8D57, c2)
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

and between rounds the key is bumped by the Weyl constants ``k0 += 0x9E3779B9``,
``k1 += 0xBB67AE85`` (mod 2**32). Ten rounds are applied.

Addressing convention (one convention, everywhere)
--------------------------------------------------
A random number is addressed by ``(seed, offset, stream, i)``:

* ``seed``   -- 64-bit key: ``key = (seed & 0xFFFFFFFF, seed >> 32)``;
* ``offset`` -- 64-bit draw number (one *draw* = one array of noise); a
  :class:`Generator` increments it by one per draw, so successive draws never overlap;
* ``stream`` -- 32-bit sub-stream for independent noise with the same seed and offset
  (default 0);
* ``i``      -- flat (C-order) index of the element inside the draw, ``0 <= i < 2**34``.

Element ``i`` takes word ``i % 4`` of the Philox block at counter::

    counter = (i // 4, offset & 0xFFFFFFFF, offset >> 32, stream)

so any slice of a draw can be regenerated from its indices alone, without storing the
noise, and a GPU thread can compute element ``i`` from ``(seed, offset, stream, i)``.

Float transforms
----------------
* **uniform, float32**: ``u = ((w >> 9) + 0.5) * 2**-23``: the top 23 bits of the word,
  centred in their bin. Every value is exact in float32 and lies in
  ``[2**-24, 1 - 2**-24]``: strictly inside (0, 1), so ``log(u)`` and ``log(1 - u)`` are
  always finite.
* **uniform, float64**: ``u = (w + 0.5) * 2**-32``: all 32 bits, exact in float64, in
  ``[2**-33, 1 - 2**-33]``. (One word per element for both dtypes, so an element's
  address does not depend on the dtype; float64 uniforms have a resolution of 2**-32.)
* **standard normal** (Box-Muller): the four words of one Philox block give four
  normals, as two pairs ``(w0, w1)`` and ``(w2, w3)``. For a pair ``(wa, wb)`` with
  uniforms ``u1 = U(wa)``, ``u2 = U(wb)`` of the target dtype::

      r = sqrt(-2 log u1),  theta = 2 pi u2   (sin and cos as sincospi(2 u2): exact reduction)
      n_a = r * cos(theta),  n_b = r * sin(theta)

  so element ``i`` is ``r cos(theta)`` when ``i`` is even and ``r sin(theta)`` when odd.
  The tails are cut where ``u1`` is smallest: ``|n| <= 5.77`` in float32 and ``<= 6.77``
  in float64 (probability of exceeding them under N(0,1): about 8e-9 and 1e-11).
  NumPy computes ``r``, ``cos`` and ``sin`` in float64 (from the exact uniforms of the
  target dtype) and rounds once at the end, so it is the accurate reference; the float32
  GPU code computes them in float32 (logf, sqrtf, sincospif) and agrees to a few float32
  ulps. The words and the uniforms are bit-identical on both sides.
* **Gumbel**: ``g = -log(-log(u))`` with the uniform above, both logs in float64 and the result
  rounded once to the target dtype. The GPU kernel (``minivae.gpu.gumbel``) computes the same
  recipe; built for the host, it gives NumPy's float32 samples bit for bit (all 2**23 of them)
  and float64 ones to an ulp of ``max(1, |g|)`` (the two libraries' logs differ by an ulp now and
  then, and near ``u = 1/e`` the outer log turns that into many ulps of a ``g`` near 0).

Public API
----------
``philox4x32(counter, key, rounds=10)``, ``philox_words(n, seed, offset, stream, start)``,
``uniform_from_words``, ``normal_from_words``, ``uniform(shape, seed, offset)``,
``normal(shape, seed, offset)``, ``gumbel(...)``, ``normal_at(indices, ...)``,
:class:`Noise` (the address of one draw) and :class:`Generator` (a seed plus an advancing
offset, with a JSON-able ``state_dict``). All of them compute on the CPU; on the GPU the same
draws come from ``minivae.gpu.normal`` / ``uniform`` / ``gumbel`` (the same words), and the
reparameterization kernels generate them in registers from a :class:`Noise`.

Every draw is computed from its address when it is asked for: nothing is kept between calls.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .checks import check_integer, check_sequence

__all__ = [
    "PHILOX_M4x32_0", "PHILOX_M4x32_1", "PHILOX_W32_0", "PHILOX_W32_1",
    "MAX_ELEMENTS", "philox4x32", "philox_words", "uniform_from_words",
    "normal_from_words", "uniform", "normal", "gumbel", "normal_at",
    "Noise", "Generator", "check_address", "check_dtype", "check_elements", "check_shape",
]

# Random123 constants (philox.h)
PHILOX_M4x32_0 = 0xD2511F53
PHILOX_M4x32_1 = 0xCD9E8D57
PHILOX_W32_0 = 0x9E3779B9
PHILOX_W32_1 = 0xBB67AE85

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
#: The element index lives in a 32-bit counter word as ``i // 4``: at most 2**34 elements per draw.
MAX_ELEMENTS = 1 << 34

#: Elements per slice of a large draw of words (see ``philox_words``).
_SLICE = 1 << 18

_TWO_POW_M23 = 1.0 / (1 << 23)
_TWO_POW_M32 = 1.0 / (1 << 32)


def _check_word(name: str, value, bits: int) -> int:
    """``value`` as a Python int in [0, 2**bits), for a word of a draw's address.

    A float, a bool or a string is refused (``check_integer``: TypeError) rather than taken for
    the integer it equals or is read as: seed 2.0 or True would name another generator's noise
    than the user meant, without a word."""
    v = check_integer(value, name, minimum=0)
    if v >> bits:
        raise ValueError(f"{name} must be an integer in [0, 2**{bits}), got {value!r}")
    return v


def check_address(seed, offset, stream) -> tuple[int, int, int]:
    """The address of a draw as Python ints: ``seed`` and ``offset`` words of 64 bits, ``stream``
    of 32 (``_check_word``). The GPU kernels' wrappers check theirs here too, so one address
    names one draw on both devices."""
    return _check_word("seed", seed, 64), _check_word("offset", offset, 64), _check_word("stream", stream, 32)


def check_elements(n: int, start=0) -> int:
    """``start`` as a Python int, once elements ``start ... start + n - 1`` are known to lie in a
    draw (at most ``MAX_ELEMENTS``)."""
    start = check_integer(start, "start", minimum=0)
    if start + n > MAX_ELEMENTS:
        raise ValueError(f"a draw holds at most 2**34 elements, asked for elements [{start}, {start + n})")
    return start


def check_dtype(dtype) -> np.dtype:
    """``dtype`` as a NumPy dtype, refused (TypeError) unless float32 or float64: the dtypes a
    draw comes in, on the CPU and in the GPU kernels. None is refused too: NumPy reads it as
    float64, the dtype a draw that left it out by mistake would silently come in."""
    if dtype is None:
        raise TypeError("dtype must be float32 or float64, got None")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_shape(shape) -> tuple[int, ...]:
    """``shape``, an integer or a sequence of them, as a tuple of Python ints >= 0.

    Each size goes through ``check_integer``: converted with int(), a size 2.5 would become 2
    and the string "23" the shape (2, 3), without a word. A 0-d array is one size, as NumPy's
    shapes take it (iterating over it fails)."""
    if isinstance(shape, np.ndarray) and shape.ndim == 0:
        shape = shape.item()
    sizes = (shape,) if isinstance(shape, numbers.Integral) else check_sequence(shape, "shape", "integers")
    return tuple(check_integer(s, f"shape[{i}]", minimum=0) for i, s in enumerate(sizes))


# ---------------------------------------------------------------------------------------
# The bijection
# ---------------------------------------------------------------------------------------

def _check_words(a, owner, name):
    """Refuse the array ``a``, argument ``name`` of ``owner`` (both named in the message), unless
    it holds 32-bit words: integers in [0, 2**32). The cast to uint32 would truncate a float and
    wrap a negative or larger integer around, without a word. A uint32 array needs no look at
    its values."""
    if a.dtype == np.uint32:
        return
    if a.dtype.kind not in "ui":
        raise TypeError(f"{owner}: {name} must hold integers, got {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > _MASK32):
        raise ValueError(f"{owner}: {name} must hold values in [0, 2**32) (32-bit words), got values "
                         f"from {a.min()} to {a.max()}")


def philox4x32(counter, key, rounds: int = 10) -> np.ndarray:
    """Philox4x32 with ``rounds`` rounds (10 is the standard Philox4x32-10).

    ``counter``: unsigned integers of shape ``(..., 4)``; ``key``: shape ``(..., 2)``;
    the leading dimensions broadcast. Returns uint32 of shape ``(..., 4)``. Values must
    fit in 32 bits. Products are formed exactly in uint64 and split into high and low words.
    """
    c = np.asarray(counter)
    k = np.asarray(key)
    if c.shape[-1:] != (4,) or k.shape[-1:] != (2,):
        raise ValueError(f"philox4x32: counter must have shape (..., 4) and key (..., 2), "
                         f"got {c.shape} and {k.shape}")
    rounds = check_integer(rounds, "rounds", minimum=0)
    _check_words(c, "philox4x32", "counter")
    _check_words(k, "philox4x32", "key")
    c = c.astype(np.uint64)
    k = k.astype(np.uint64)
    shape = np.broadcast_shapes(c.shape[:-1], k.shape[:-1])
    x = np.empty((2,) + shape, dtype=np.uint64)
    lo = np.empty_like(x)
    x[0], x[1], lo[0], lo[1] = c[..., 0], c[..., 2], c[..., 3], c[..., 1]
    k = np.moveaxis(k, -1, 0)  # (2, ...): the key words, aligned with x's trailing axes
    keys = _round_keys(k.reshape((2,) + (1,) * (len(shape) - (k.ndim - 1)) + k.shape[1:]), rounds)
    x, y = _rounds(x, lo, keys)
    return np.stack([x[0], y[0], x[1], y[1]], axis=-1).astype(np.uint32)


_MULT = np.array([[PHILOX_M4x32_0], [PHILOX_M4x32_1]], dtype=np.uint64)
_WEYL = np.array([[PHILOX_W32_0], [PHILOX_W32_1]], dtype=np.uint64)


def _round_keys(key: np.ndarray, rounds: int) -> np.ndarray:
    """The keys of rounds 0 ... rounds - 1 from a (2, ...) uint64 key: (rounds, 2, ...), round r's
    key being (k0 + r W0, k1 + r W1) mod 2**32 (the key is bumped by the Weyl constants between
    rounds). All at once: per round, two tiny array operations cost about what the round does."""
    r = np.arange(rounds, dtype=np.uint64).reshape((-1,) + (1,) * key.ndim)
    weyl = _WEYL.reshape((2,) + (1,) * (key.ndim - 1))
    return (key + r * weyl) & np.uint64(_MASK32)  # < 2**32 (rounds + 1): no uint64 overflow


def _seed_round_keys(seed: int) -> np.ndarray:
    """The ten round keys of a draw's 64-bit seed: (10, 2, 1)."""
    return _round_keys(np.array([[seed & _MASK32], [seed >> 32]], dtype=np.uint64), 10)


def _rounds(x: np.ndarray, lo: np.ndarray, keys: np.ndarray):
    """Philox4x32's rounds on uint64 arrays holding 32-bit words: ``x`` the two multiplied words
    (c0, c2) and ``lo`` the two others in swapped order, (c3, c1), both (2, ...), and one key
    per round from ``keys`` (each broadcasting against them). Both arrays are overwritten;
    returns the final ((c0, c2), (c1, c3)).

    Stacking the words makes a round five whole-array operations. With hi and lo the high and
    low words of the products (M0 c0, M1 c2) and swap() exchanging the two rows, a round is
        (c0, c2) <- swap(hi) ^ (c1, c3) ^ (k0, k1);   (c1, c3) <- swap(lo)
    so the first line is swap(hi ^ lo_previous) ^ k: the xor of hi and lo runs on contiguous
    rows and only the last operation reads a swapped (row-reversed) view, which for a small
    draw costs twice as much to set up. Keeping (c1, c3) swapped is why ``lo`` comes that way.
    """
    mult = _MULT.reshape((2,) + (1,) * (x.ndim - 1))
    mask, s32 = np.uint64(_MASK32), np.uint64(32)
    lo_prev, lo = lo, np.empty_like(x)
    hi = np.empty_like(x)
    for key in keys:
        np.multiply(x, mult, out=lo)  # < 2**64: exact
        np.right_shift(lo, s32, out=hi)
        np.bitwise_and(lo, mask, out=lo)
        np.bitwise_xor(hi, lo_prev, out=hi)
        np.bitwise_xor(hi[::-1], key, out=x)
        lo, lo_prev = lo_prev, lo
    return x, lo_prev[::-1]


def _blocks(first_chunk: int, n_chunks: int, seed: int, offset: int, stream: int) -> np.ndarray:
    """Philox blocks for chunks ``first_chunk ... first_chunk + n_chunks - 1`` of draw
    (seed, offset, stream): uint32 (n_chunks, 4)."""
    if first_chunk + n_chunks > (MAX_ELEMENTS >> 2):
        raise ValueError("a draw holds at most 2**34 elements (element index overflow)")
    x = np.empty((2, n_chunks), dtype=np.uint64)
    lo = np.empty_like(x)
    x[0] = np.arange(first_chunk, first_chunk + n_chunks, dtype=np.uint64)
    x[1], lo[0], lo[1] = offset >> 32, stream, offset & _MASK32
    x, y = _rounds(x, lo, _seed_round_keys(seed))
    out = np.empty((n_chunks, 4), dtype=np.uint32)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = x[0], y[0], x[1], y[1]
    return out


def philox_words(n: int, seed: int, offset: int = 0, stream: int = 0, start: int = 0) -> np.ndarray:
    """The raw words of elements ``start ... start + n - 1`` of draw (seed, offset, stream).

    Element ``i`` is word ``i % 4`` of ``philox4x32((i // 4, offset_lo, offset_hi, stream),
    (seed_lo, seed_hi))``. Returns uint32 of shape (n,).
    """
    seed, offset, stream = check_address(seed, offset, stream)
    n = check_integer(n, "n", minimum=0)
    start = check_elements(n, start)
    out = np.empty(n, dtype=np.uint32)
    # A slice at a time: the ten rounds then run on working arrays that stay in the CPU's cache
    # (a slice of 2**18 elements keeps about 8 MB in flight), which makes a draw of millions of
    # words about 2.5 times faster than one pass over the whole range.
    for lo in range(start, start + n, _SLICE):
        hi = min(lo + _SLICE, start + n)
        c_first, c_last = lo // 4, (hi - 1) // 4
        words = _blocks(c_first, c_last - c_first + 1, seed, offset, stream).reshape(-1)
        out[lo - start:hi - start] = words[lo - 4 * c_first:hi - 4 * c_first]
    return out


# ---------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------

def uniform_from_words(words, dtype=np.float32) -> np.ndarray:
    """Map uint32 words to uniforms strictly inside (0, 1) (see the module docstring). ``words``
    are integers in [0, 2**32) (``_check_words``)."""
    dt = check_dtype(dtype)
    w = np.asarray(words)
    _check_words(w, "uniform_from_words", "words")
    w = w.astype(np.uint32, copy=False)
    if dt == np.float32:
        # (w >> 9) < 2**23, so (w >> 9) + 0.5 needs 24 significant bits: exact in float32.
        return ((w >> np.uint32(9)).astype(np.float32) + np.float32(0.5)) * np.float32(_TWO_POW_M23)
    return (w.astype(np.float64) + 0.5) * _TWO_POW_M32


def _sincospi(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin(pi x), cos(pi x) in float64 with an exact argument reduction.

    ``x`` is folded to ``r = x - k`` in [-1/2, 1/2] (``k`` the nearest integer; the
    subtraction is exact), as in the host build of ``kernels/vae_math.cuh``: no rounded 2 pi
    and no loss for large arguments, and sin keeps its relative accuracy near its zeros. Near
    the zeros of cos (r = +-1/2) the error is absolute, about 1e-16 (pi r is rounded), where
    CUDA's ``sincospi`` reduces to a quarter period and stays relative; for Box-Muller, whose
    normals are r cos(theta), the absolute error is what counts.
    """
    x = np.asarray(x, dtype=np.float64)
    k = np.floor(x + 0.5)
    t = np.pi * (x - k)
    sign = 1.0 - 2.0 * (k - 2.0 * np.floor(0.5 * k))  # k mod 2, exact; np.mod is ~10x slower
    return sign * np.sin(t), sign * np.cos(t)


def normal_from_words(words, dtype=np.float32) -> np.ndarray:
    """Box-Muller on whole Philox blocks: uint32 (..., 4) -> normals (..., 4).

    Pairs (w0, w1) and (w2, w3): ``n0 = r cos(theta)``, ``n1 = r sin(theta)`` with
    ``r = sqrt(-2 log U(w0))`` and ``theta = 2 pi U(w1)`` (likewise n2, n3), ``U`` the
    uniform of the target dtype. sin and cos are sincospi(2 U(w1)) (``2 U`` is exact); the
    arithmetic is done in float64 and rounded once to the target dtype. ``words`` are integers in
    [0, 2**32) (``_check_words``).
    """
    dt = check_dtype(dtype)
    w = np.asarray(words)
    _check_words(w, "normal_from_words", "words")
    w = w.astype(np.uint32, copy=False)
    if w.shape[-1:] != (4,):
        raise ValueError(f"normal_from_words expects words of shape (..., 4), got {w.shape}")
    u = uniform_from_words(w, dt).astype(np.float64)  # exact
    r = np.sqrt(-2.0 * np.log(u[..., 0::2]))
    s, c = _sincospi(2.0 * u[..., 1::2])
    out = np.empty(w.shape, dtype=np.float64)
    out[..., 0::2] = r * c
    out[..., 1::2] = r * s
    return out.astype(dt, copy=False)


# ---------------------------------------------------------------------------------------
# Draws addressed by (seed, offset, stream)
# ---------------------------------------------------------------------------------------

def _range_normals(start: int, n: int, seed: int, offset: int, stream: int, dt) -> np.ndarray:
    """Elements ``start ... start + n - 1`` of draw (seed, offset, stream): (n,)."""
    if n == 0:
        return np.empty(0, dtype=dt)
    c_first = start // 4
    c_last = (start + n - 1) // 4
    blocks = _blocks(c_first, c_last - c_first + 1, seed, offset, stream)
    lo = start - 4 * c_first
    return normal_from_words(blocks, dt).reshape(-1)[lo:lo + n]


def _check_draw(shape, seed, offset, stream, start):
    shape = check_shape(shape)
    n = math.prod(shape)
    start = check_elements(n, start)
    return (shape, n, *check_address(seed, offset, stream), start)


def normal(shape, seed: int, offset: int = 0, dtype=np.float32, stream: int = 0,
           start: int = 0) -> np.ndarray:
    """Standard normals of draw (seed, offset, stream), elements ``start ... start + size - 1``
    in C order, reshaped to ``shape``. ``normal((B, D), s, o)[b, d]`` is element ``b*D + d``,
    exactly what the GPU kernels compute for a (B, D) array with the same seed and offset."""
    shape, n, seed, offset, stream, start = _check_draw(shape, seed, offset, stream, start)
    return _range_normals(start, n, seed, offset, stream, check_dtype(dtype)).reshape(shape)


def uniform(shape, seed: int, offset: int = 0, dtype=np.float32, stream: int = 0,
            start: int = 0) -> np.ndarray:
    """Uniforms strictly inside (0, 1) of draw (seed, offset, stream); see :func:`normal`."""
    shape, n, seed, offset, stream, start = _check_draw(shape, seed, offset, stream, start)
    words = philox_words(n, seed, offset, stream, start)
    return uniform_from_words(words, dtype).reshape(shape)


def gumbel(shape, seed: int, offset: int = 0, dtype=np.float32, stream: int = 0,
           start: int = 0) -> np.ndarray:
    """Standard Gumbel samples ``-log(-log(u))`` (computed in float64, rounded once)."""
    dt = check_dtype(dtype)
    u = uniform(shape, seed, offset, dt, stream, start).astype(np.float64)
    return (-np.log(-np.log(u))).astype(dt, copy=False)


def normal_at(indices, seed: int, offset: int = 0, dtype=np.float32, stream: int = 0) -> np.ndarray:
    """The normals of arbitrary flat element indices of a draw (any integer array shape; an
    empty sequence gives an empty array)."""
    seed, offset, stream = check_address(seed, offset, stream)
    dt = check_dtype(dtype)
    idx = np.asarray(indices)
    if idx.size == 0:  # np.asarray([]) is float64: no index to refuse, no normal to draw
        return np.empty(idx.shape, dtype=dt)
    if idx.dtype.kind not in "ui":
        raise TypeError(f"indices must be integers, got an array of dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= MAX_ELEMENTS):
        raise ValueError("indices must be in [0, 2**34)")
    idx = idx.astype(np.uint64)
    ctr = np.empty(idx.shape + (4,), dtype=np.uint64)
    ctr[..., 0] = idx >> np.uint64(2)
    ctr[..., 1] = offset & _MASK32
    ctr[..., 2] = offset >> 32
    ctr[..., 3] = stream
    key = np.array([seed & _MASK32, seed >> 32], dtype=np.uint64)
    vals = normal_from_words(philox4x32(ctr, key), dt)
    lane = (idx & np.uint64(3)).astype(np.intp)
    return np.take_along_axis(vals, lane[..., None], axis=-1)[..., 0]


@dataclass(frozen=True)
class Noise:
    """The address of one draw of noise: ``(seed, offset, stream)``.

    A ``Noise`` is what the ops take instead of an eps array: on the CPU it is
    materialized with :meth:`normal`; on the GPU the kernels regenerate it in registers
    from the same address (forward and backward), so it is never stored. Calling it twice
    gives the same numbers (which is what finite-difference gradient checks need).

    ``offset_from`` (GPU only): a CuPy uint64 array of one value, added to ``offset`` when a
    kernel runs. A CUDA graph freezes the arguments of the kernels it captures; a captured
    training step therefore names its draws by an offset in device memory, which the step
    advances, so that each replay draws new noise. Such a draw exists only on the GPU: the
    CPU methods below refuse it.
    """

    seed: int
    offset: int = 0
    stream: int = 0
    offset_from: object = field(default=None, compare=False)

    def __post_init__(self):
        # Kept as Python ints (a NumPy integer given is converted), like a Generator's state.
        address = check_address(self.seed, self.offset, self.stream)
        for name, value in zip(("seed", "offset", "stream"), address):
            object.__setattr__(self, name, value)
        f = self.offset_from
        if f is not None and (getattr(f, "dtype", None) != np.uint64 or getattr(f, "size", 0) != 1):
            raise TypeError(f"offset_from must be a device array of one uint64, got {f!r}")

    def _host_address(self):
        if self.offset_from is not None:
            raise ValueError("this draw's offset lives in device memory (offset_from): only the GPU "
                             "kernels can generate it")
        return self.seed, self.offset

    def normal(self, shape, dtype=np.float32, start: int = 0):
        """The standard normals of this draw (see :func:`normal`)."""
        seed, offset = self._host_address()
        return normal(shape, seed, offset, dtype, self.stream, start)

    def uniform(self, shape, dtype=np.float32, start: int = 0):
        """The uniforms of this draw (see :func:`uniform`)."""
        seed, offset = self._host_address()
        return uniform(shape, seed, offset, dtype, self.stream, start)

    def gumbel(self, shape, dtype=np.float32, start: int = 0):
        """The Gumbel samples of this draw (see :func:`gumbel`)."""
        seed, offset = self._host_address()
        return gumbel(shape, seed, offset, dtype, self.stream, start)


class Generator:
    """A seed and an offset that advances by one per draw, so draws never overlap.

    >>> g = Generator(1234)
    >>> a = g.normal((2, 3)); b = g.normal((2, 3))   # offsets 0 and 1
    >>> state = g.state_dict()                        # {"seed": 1234, "offset": 2, "stream": 0}

    ``state_dict()`` holds plain ints (JSON-able); ``load_state_dict`` restores it, so a
    resumed training run draws exactly the noise of an uninterrupted one. ``next_noise()``
    reserves one draw and returns its :class:`Noise` address (what the GPU path uses).
    """

    def __init__(self, seed: int = 0, offset: int = 0, stream: int = 0):
        self._seed, self._offset, self._stream = check_address(seed, offset, stream)

    @property
    def seed(self) -> int:
        """The 64-bit seed every draw of this generator uses (the Philox key)."""
        return self._seed

    @property
    def offset(self) -> int:
        """The offset the next draw will use."""
        return self._offset

    @property
    def stream(self) -> int:
        """The 32-bit stream number of every draw (named in ``minivae.streams``), which keeps
        generators of one seed that serve different purposes apart."""
        return self._stream

    def next_noise(self) -> Noise:
        """Reserve the next draw and return its address."""
        if self._offset >= _MASK64:
            raise OverflowError("Generator offset exhausted (2**64 draws)")
        noise = Noise(self._seed, self._offset, self._stream)
        self._offset += 1
        return noise

    def use_next_noise(self, use):
        """``use(noise)`` for the next draw's :class:`Noise`, whose result it returns. When
        ``use`` raises (an op that refuses its inputs), the draw is given back: a refused call
        uses up no offset, so the call that corrects it draws the noise that a run without the
        mistake draws."""
        offset = self._offset
        try:
            return use(self.next_noise())
        except Exception:
            self._offset = offset
            raise

    def _draw(self, kind, shape, dtype):
        """The ``kind`` draw ("normal", "uniform" or "gumbel") of the next :class:`Noise`; a
        refused one (its shape or dtype) uses up no offset (``use_next_noise``)."""
        return self.use_next_noise(lambda noise: getattr(noise, kind)(shape, dtype))

    def normal(self, shape, dtype=np.float32):
        """Standard normals of the next draw."""
        return self._draw("normal", shape, dtype)

    def uniform(self, shape, dtype=np.float32):
        """Uniforms of the next draw."""
        return self._draw("uniform", shape, dtype)

    def gumbel(self, shape, dtype=np.float32):
        """Gumbel samples of the next draw."""
        return self._draw("gumbel", shape, dtype)

    def state_dict(self) -> dict:
        """``{"seed", "offset", "stream"}`` as plain ints (JSON-able): where the next draw is."""
        return {"seed": self._seed, "offset": self._offset, "stream": self._stream}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a ``state_dict()``): the next draw is the one it names.

        "seed" and "offset" are required (KeyError otherwise), "stream" defaults to 0, and any
        other key is refused (ValueError): a misspelt "stream" would otherwise leave stream 0.
        Each value is checked as in the constructor, all of them before any is applied, so a
        refused state leaves the generator as it was."""
        if not isinstance(state, Mapping):
            raise TypeError(f"Generator state must be a dict (a state_dict()), got {state!r}")
        missing = {"seed", "offset"} - set(state)
        if missing:
            raise KeyError(f"Generator state is missing {sorted(missing)}")
        unknown = set(state) - {"seed", "offset", "stream"}
        if unknown:
            raise ValueError(f"Generator state has unknown keys {sorted(map(str, unknown))}: "
                             "it holds 'seed', 'offset' and 'stream'")
        self._seed, self._offset, self._stream = check_address(state["seed"], state["offset"],
                                                               state.get("stream", 0))

    def __repr__(self) -> str:
        return f"Generator(seed={self._seed}, offset={self._offset}, stream={self._stream})"


def use_noise(noise, use):
    """``use(noise)`` for a :class:`Noise`; for a :class:`Generator`, ``use`` of its next draw,
    which the generator takes back when ``use`` raises (``Generator.use_next_noise``): a call
    refused by what it draws for uses up no offset."""
    if isinstance(noise, Generator):
        return noise.use_next_noise(use)
    return use(noise)
