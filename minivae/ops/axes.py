"""Axis arguments of the ops, checked in one place: an axis out of range or of the wrong type is
refused with an error that names the op, the axis and the number of dimensions, before NumPy
(or a silent ``axis % ndim``) sees it.

An axis is an integer (a Python or NumPy integer, not a bool; negatives count from the end), as
in NumPy.
"""
import operator


def _index(op, axis):
    """``axis`` as a Python int (NumPy integers accepted, floats, booleans and other types
    refused). A bool is an int to Python, but ``x.sum(True)``, meant as keepdims, would
    reduce axis 1; NumPy refuses it too."""
    try:
        index = operator.index(axis)
    except TypeError:
        index = None
    if index is None or isinstance(axis, bool):
        raise TypeError(f"{op}: an axis must be an integer, got {axis!r}")
    return index


def normalize_axis(op, axis, ndim):
    """One ``axis`` of an array of ``ndim`` dimensions as 0 .. ndim - 1 (negatives from the end)."""
    a = _index(op, axis)
    if not -ndim <= a < ndim:
        raise ValueError(f"{op}: axis {a} is invalid for an array of {ndim} dimensions "
                         f"(valid axes: {-ndim} .. {ndim - 1})")
    return a + ndim if a < 0 else a


def normalize_axes(op, axis, ndim):
    """``axis`` (None: every axis; one axis; or a tuple or list of axes) of an array of ``ndim``
    dimensions as a sorted tuple of distinct axes in 0 .. ndim - 1."""
    if axis is None:
        return tuple(range(ndim))
    axes = [_index(op, a) for a in axis] if isinstance(axis, (tuple, list)) else [_index(op, axis)]
    norm = sorted({a + ndim if a < 0 else a for a in axes})
    if any(not 0 <= a < ndim for a in norm) or len(norm) != len(axes):
        raise ValueError(f"{op}: axis {axis!r} is invalid (or repeated) for an array of {ndim} dimensions")
    return tuple(norm)
