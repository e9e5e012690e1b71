"""minivae.checks: the shared argument checks, at the edges of their ranges."""
import math
import re

import numpy as np
import pytest

from minivae.checks import (FINITE, FRACTION, NON_NEGATIVE, POSITIVE, check_choice, check_float,
                            check_integer, check_intensities, check_points, check_ranges, check_real,
                            check_sequence, out_of_range)


def owner():
    """The function the checked settings belong to, named in the messages."""


RANGES = {"rate": POSITIVE, "weight": NON_NEGATIVE, "shift": FINITE, "share": FRACTION}


@pytest.mark.parametrize("setting", [dict(rate=1e-300), dict(weight=0.0), dict(shift=-1e300),
                                     dict(share=0.0), dict(share=1.0)],
                         ids=["tiny rate", "zero weight", "large shift", "share 0", "share 1"])
def test_values_at_the_edges_of_their_ranges_are_taken(setting):
    check_ranges(owner, RANGES, **setting)


@pytest.mark.parametrize("setting, must", [
    (dict(rate=0.0), "> 0 and finite"), (dict(rate=math.inf), "> 0 and finite"),
    (dict(weight=-1e-300), ">= 0 and finite"), (dict(weight=math.inf), ">= 0 and finite"),
    (dict(shift=-math.inf), "finite"), (dict(share=1.5), r"in \[0, 1\]"),
    (dict(share=math.nan), r"in \[0, 1\]"),
], ids=["zero rate", "infinite rate", "negative weight", "infinite weight", "infinite shift",
        "share above 1", "NaN share"])
def test_values_outside_their_ranges_are_named(setting, must):
    (name, value), = setting.items()
    with pytest.raises(ValueError, match=rf"^owner: invalid {name} {value!r}: it must be {must}$"):
        check_ranges(owner, RANGES, **setting)


def test_values_outside_their_ranges_are_all_named_at_once():
    message = ("^owner: invalid rate 0.0: it must be > 0 and finite; "
               "invalid weight -1.0: it must be >= 0 and finite$")
    with pytest.raises(ValueError, match=message):
        check_ranges(owner, RANGES, rate=0.0, weight=-1.0)


def test_a_value_without_a_range_is_not_checked():
    assert out_of_range({"rate": -1.0, "label": -1.0}, RANGES) == [
        "invalid rate -1.0: it must be > 0 and finite"]


def test_numbers_come_back_as_python_numbers():
    # A NumPy scalar kept as such would reach a config written as JSON, which refuses np.int64.
    n, x = check_integer(np.int64(3), "n", minimum=0), check_real(np.float32(0.5), "x")
    assert (type(n), n) == (int, 3) and (type(x), x) == (float, 0.5)
    assert type(check_real(2, "x")) is float


def test_a_sequence_is_returned_as_a_tuple():
    assert check_sequence(iter([1, 2]), "hidden", "integers") == (1, 2)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), (0, 3)])
def test_points_are_one_or_more_rows_of_coordinates(shape):
    message = rf"^z must be \(N, D\) with N >= 1, got shape {re.escape(str(shape))}$"
    with pytest.raises(ValueError, match=message):
        check_points(np.zeros(shape), "z")


def test_complex_intensities_are_refused():
    with pytest.raises(TypeError, match=r"^x has dtype complex128: a picture takes float intensities"):
        check_float(np.zeros(3, dtype=complex), use="a picture")


def test_check_integer_takes_its_minimum():
    assert check_integer(np.int64(3), "n", minimum=3) == 3
    with pytest.raises(ValueError, match="^n must be at least 3, got 2$"):
        check_integer(2, "n", minimum=3)


def test_intensities_take_0_and_1_and_an_empty_array():
    check_intensities(np.array([0.0, 1.0], dtype=np.float32))
    check_intensities(np.zeros((0, 784), dtype=np.float32))  # no pixels: nothing out of range
    with pytest.raises(ValueError, match=r"^x has values in \[0, 1.5\]"):
        check_intensities(np.array([0.0, 1.5]))
    with pytest.raises(ValueError, match=r"^x has values in \[-0.5, 1\]"):
        check_intensities(np.array([-0.5, 1.0]))


@pytest.mark.parametrize("value", ["Gaussian", "", 1, None])
def test_check_choice_names_the_setting_the_value_and_the_choices(value):
    assert check_choice("gaussian", "likelihood", ("bernoulli", "gaussian")) == "gaussian"
    message = rf"^likelihood must be one of 'bernoulli', 'gaussian', got {re.escape(repr(value))}$"
    with pytest.raises(ValueError, match=message):
        check_choice(value, "likelihood", ("bernoulli", "gaussian"))
