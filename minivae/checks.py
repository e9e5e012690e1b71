"""Checks of arguments that several layers take (the data pipeline, the models, the evaluation),
so that one mistake gets one message wherever it is made."""
import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np


def check_integer(value, name: str, *, minimum: int) -> int:
    """Return ``value`` as a Python int of at least ``minimum``. A float, a string or a bool is
    refused (TypeError) rather than rounded or read as 0 or 1; a smaller number gets a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_sklearn_seed(seed) -> int:
    """``seed`` as a Python int in [0, 2**32), the seeds scikit-learn (and UMAP) take as
    ``random_state``: checked by the caller before the work it seeds, which would refuse a larger
    one only once it runs."""
    seed = check_integer(seed, "seed", minimum=0)
    if seed >= 2**32:
        raise ValueError(f"seed must be below 2**32 (scikit-learn's seeds), got {seed}")
    return seed


def check_real(value, name: str) -> float:
    """Return ``value`` as a Python float. A bool, a string or anything else that is no real
    number is refused (TypeError) rather than read as 0 or 1, or parsed."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def check_bool(value, name: str) -> bool:
    """Return ``value`` as a Python bool. Anything but True or False (NumPy's bools, np.True_
    and np.False_, are taken as those) is refused (TypeError) rather than read by its truth: the
    string "false" is true, and so is every number but 0, so a switch given as either would
    silently do the opposite or nothing."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value, name: str, choices: tuple):
    """Return ``value`` if it is one of ``choices`` (a setting named by a word, such as a
    likelihood); anything else gets a ValueError naming ``name``, the value and the choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


# Ranges for ``check_ranges``: (test, what the value must be). Each test is False for NaN, which
# fails every comparison (a test ``not v < 0`` would let it through), and for infinity, which no
# weight, rate or step size can be without turning a loss or a parameter into inf or NaN.
NON_NEGATIVE = (lambda v: 0 <= v < math.inf, ">= 0 and finite")
POSITIVE = (lambda v: 0 < v < math.inf, "> 0 and finite")
FINITE = (math.isfinite, "finite")
FRACTION = (lambda v: 0 <= v <= 1, "in [0, 1]")


def out_of_range(values: dict, ranges: dict) -> list:
    """A message for each of ``values`` (name -> real number) outside its range in ``ranges``
    (name -> (test, what the value must be)); a name without a range is not checked."""
    return [f"invalid {name} {value!r}: it must be {ranges[name][1]}"
            for name, value in values.items() if name in ranges and not ranges[name][0](value)]


def check_ranges(owner, ranges: dict, **values) -> None:
    """Check the real-valued settings ``values`` of ``owner`` (a class or function, named in the
    message): each must be a real number (``check_real``: TypeError otherwise) within its range
    in ``ranges`` (``out_of_range``); a ValueError names every value that is not."""
    for name, value in values.items():
        check_real(value, name)
    problems = out_of_range(values, ranges)
    if problems:
        raise ValueError(f"{owner.__name__}: " + "; ".join(problems))


def check_sequence(values, name: str, items: str) -> tuple:
    """Return ``values`` as a tuple. A string or a single value is refused (TypeError, saying
    that ``name`` must be a sequence of ``items``) rather than read as its characters or failing
    as "not iterable" further on."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of {items}, got {values!r}")
    return tuple(values)


def check_mapping(value, name: str, items: str) -> None:
    """Refuse a ``value`` that is no mapping (a list of arrays for a state_dict, say) with one
    TypeError saying that ``name`` must be a mapping of ``items``, before it is read by key."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of {items}, got {type(value).__name__}")


def check_sizes(values, name: str, *, allow_empty: bool = False) -> tuple:
    """Return ``values``, layer sizes such as a model's ``hidden`` widths, as a tuple of Python
    ints, each at least 1 (``check_integer``, naming it ``name[i]``).

    A string or a single number is refused (TypeError) rather than read as its characters or
    failing as "not iterable" inside a layer; an empty list gets a ValueError unless
    ``allow_empty`` (for a model whose structure needs no hidden layer).
    """
    sizes = tuple(check_integer(v, f"{name}[{i}]", minimum=1)
                  for i, v in enumerate(check_sequence(values, name, "integers")))
    if not sizes and not allow_empty:
        raise ValueError(f"{name} is empty: give at least one size")
    return sizes


def check_points(x, name: str) -> None:
    """Refuse an array that is not N >= 1 points of D coordinates, shape (N, D): a statistic
    over no points is NaN (a mean) or an error from deep inside (an SVD), naming nothing."""
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be (N, D) with N >= 1, got shape {x.shape}")


def plain_array(data, what: str):
    """``data`` itself, unless it is one of NumPy's array subclasses whose operations mean other
    things than an array's: an ``np.matrix`` becomes the plain array it views (with a matrix,
    ``*`` is a matrix product and a sum keeps two axes, so an op would give other numbers or
    fail inside NumPy); a masked array is refused (TypeError naming ``what``), since nothing here
    skips its masked entries: they would be read as the numbers stored under the mask (as
    ``np.asarray`` reads them, dropping the mask without a word)."""
    if isinstance(data, np.ma.MaskedArray):
        raise TypeError(f"{what} is a masked array, whose masked entries would be read as the "
                        "numbers under the mask; fill them first (a.filled(value))")
    if isinstance(data, np.matrix):
        return data.view(np.ndarray)
    return data


def check_float(x, name: str = "x", use: str = "binarization") -> None:
    """Refuse an array (NumPy or CuPy) whose dtype is not floating with a TypeError naming
    ``use``, what takes float intensities in [0, 1]: integer pixels 0..255 would be read as
    intensities up to 255, and a clip to [0, 1] or a Bernoulli draw turns them into 1s."""
    if x.dtype.kind != "f":
        hint = "; divide uint8 pixels by 255 first" if x.dtype.kind in "ui" else ""
        raise TypeError(f"{name} has dtype {x.dtype}: {use} takes float intensities in [0, 1]{hint}")


def check_intensities(x, name: str = "x", use: str = "binarization") -> None:
    """Refuse an array (NumPy or CuPy) that is not float intensities in [0, 1], naming ``use``,
    what takes them, in the message.

    Binarization (a Bernoulli draw) and a Bernoulli likelihood take anything without complaint:
    a draw turns NaN into 0s and 2.0 or uint8 pixels 0..255 into 1s (nearly all ink), and
    log p(x) of such pixels is no log-probability at all. So a floating dtype is required
    (``check_float``) and values in [0, 1] (ValueError naming NaN or the range found). One
    min and one max over the array: callers check once per dataset or call, not per batch.
    """
    check_float(x, name, use)
    if x.size == 0:
        return
    lo, hi = float(x.min()), float(x.max())  # a NaN anywhere makes both NaN
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} contains NaN: {use} takes intensities in [0, 1]")
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} has values in [{lo:g}, {hi:g}]: {use} takes intensities in [0, 1]")
