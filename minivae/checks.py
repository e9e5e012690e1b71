"""Checks of arguments that several layers take (the data pipeline, the models, the evaluation),
so that one mistake gets one message wherever it is made."""
import numbers


def check_integer(value, name: str, *, minimum: int) -> int:
    """Return ``value`` as a Python int of at least ``minimum``. A float, a string or a bool is
    refused (TypeError) rather than rounded or read as 0 or 1; a smaller number gets a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)
