"""minivae.checks: the shared argument checks, at the edges of their ranges."""
import math

import numpy as np
import pytest

from minivae.checks import (FINITE, FRACTION, NON_NEGATIVE, POSITIVE, check_integer,
                            check_intensities, check_ranges)


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


def test_check_integer_takes_its_minimum():
    assert check_integer(np.int64(3), "n", minimum=3) == 3
    with pytest.raises(ValueError, match="^n must be at least 3, got 2$"):
        check_integer(2, "n", minimum=3)


def test_intensities_take_0_and_1_and_an_empty_array():
    check_intensities(np.array([0.0, 1.0], dtype=np.float32))
    check_intensities(np.zeros((0, 784), dtype=np.float32))  # no pixels: nothing out of range
    with pytest.raises(ValueError, match=r"^x has values in \[0, 1.5\]"):
        check_intensities(np.array([0.0, 1.5]))
