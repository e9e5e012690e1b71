"""Array backends: NumPy on the CPU, CuPy on the GPU.

Every op asks ``get_array_module(x)`` for the module that owns its arrays, so one piece of code
serves both devices. CuPy is imported only when a GPU array is seen or a GPU is asked for:
``import minivae`` needs NumPy alone.

The dtype policy: Python floats (and lists holding one) become ``get_default_dtype()`` (float32,
as in PyTorch); Python integers and booleans stay integer or boolean, and an op computes on them
in the float dtype of its other inputs, else the default dtype; NumPy float arrays keep their
dtype; an op never mixes float32 and float64 silently.
"""
import math
import os
import sys

import numpy as np

# Under NumPy 1's value-based casting float32 arithmetic with Python scalars gives float64, which
# the engine would refuse only in the middle of a backward pass
if int(np.__version__.split(".")[0]) < 2:
    raise ImportError(f"minivae needs NumPy >= 2.0, found NumPy {np.__version__}: pip install 'numpy>=2'")

DEVICES = ("cpu", "gpu")
_default_dtype = np.dtype(np.float32)


class DeviceError(RuntimeError):
    """Raised when a GPU is asked for but cannot be used, or devices are mixed in one op."""


def get_default_dtype():
    """Return the float dtype given to tensors made from Python floats, and to ops on integer or
    boolean inputs alone (float32 by default)."""
    return _default_dtype


def set_default_dtype(dtype):
    """Set the float dtype of ``get_default_dtype``; only float32 and float64 are allowed."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"default dtype must be float32 or float64, got {dtype}")
    _default_dtype = dtype


def is_gpu_array(array):
    """True when ``array`` is a CuPy ndarray (checked without importing CuPy; a NumPy array,
    the common case, is told by its type alone)."""
    return type(array) is not np.ndarray and type(array).__module__.startswith("cupy")


def is_array(value):
    """True when ``value`` is a NumPy or CuPy ndarray: what can be written in place. A NumPy
    scalar (no memory to write into) or a Tensor (an op's input, not an array) is not."""
    return isinstance(value, np.ndarray) or is_gpu_array(value)


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if type(a) is not np.ndarray and is_gpu_array(a):  # the common NumPy case costs one check
            return sys.modules["cupy"]
    return np


def as_rows(array):
    """``array`` (..., n) as a 2-D (rows, n) array, its leading axes flattened into rows (a view
    when ``array`` is C-contiguous). The number of rows is computed, not inferred with -1,
    because reshape cannot infer it when n is 0."""
    return array.reshape(math.prod(array.shape[:-1]), array.shape[-1])


def device_of(array):
    """Return ``"gpu"`` for a CuPy array and ``"cpu"`` otherwise."""
    return "gpu" if is_gpu_array(array) else "cpu"


def cupy_module():
    """Import and return CuPy, or raise one clear DeviceError saying why the GPU cannot be used."""
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(
            "the GPU was asked for but CuPy is not installed: pip install 'minivae[gpu]' "
            "(needs an NVIDIA GPU and CUDA driver)") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA raises several driver-specific error types
        raise DeviceError(f"the GPU was asked for but CUDA reports no usable device: {exc}") from exc
    if count < 1:
        raise DeviceError("the GPU was asked for but CUDA reports no device")
    return cupy


def gpu_model():
    """The name of the current CUDA device, as its driver gives it (e.g. "NVIDIA H100 80GB HBM3");
    ``cupy_module``'s DeviceError when the GPU cannot be used."""
    cuda = cupy_module().cuda
    name = cuda.runtime.getDeviceProperties(cuda.runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def device_name(device=None):
    """The name ``device`` stands for, "cpu", "gpu" or "auto", without checking that it can be
    used: any case, "cuda" for "gpu"; None (or "") reads ``$MINIVAE_DEVICE`` (default "cpu").
    Anything that is no name is refused (TypeError), an unknown name too (ValueError)."""
    if device is None or device == "":
        device = os.environ.get("MINIVAE_DEVICE") or "cpu"
    if not isinstance(device, str):  # 0 would read as "not given", 1 fail in .lower()
        raise TypeError(f"device must be a name, 'cpu', 'gpu' or 'auto', got {device!r}")
    device = "gpu" if device.lower() == "cuda" else device.lower()
    if device not in DEVICES + ("auto",):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'gpu' or 'auto'")
    return device


def resolve_device(device=None):
    """Turn ``device`` (None, "cpu", "gpu", "cuda" or "auto": see ``device_name``) into "cpu" or
    "gpu", checking that it can be used (``DeviceError`` when "gpu" cannot); "auto" picks the GPU
    when CuPy and a device are available."""
    device = device_name(device)
    if device == "auto":
        try:
            cupy_module()
            return "gpu"
        except DeviceError:
            return "cpu"
    if device == "gpu":
        cupy_module()
    return device


def to_device(array, device):
    """Return ``array`` on ``device`` ("cpu" or "gpu"), copying only when it lives elsewhere."""
    device = resolve_device(device)
    if device == "gpu":
        return cupy_module().asarray(array)
    if is_gpu_array(array):
        return array.get()
    return np.asarray(array)
