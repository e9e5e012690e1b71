"""CuPy-only code: the CUDA kernels of ``kernels/*.cu``, compiled with NVRTC at first use
through ``cupy.RawModule``, and their launch wrappers.

Importing this package does not need CuPy (``minivae.gpu.is_available()`` says whether the
GPU path can run, ``minivae.gpu.require()`` raises one clear error when it cannot); nothing
outside ``minivae.gpu`` imports CuPy, and ``import minivae`` never imports this package.

The noise of the GPU kernels is addressed like ``minivae.random`` (seed, offset, stream,
element index): the same address gives the same Philox words on both devices, bit for bit,
and the same normals to a few float32 ulps.
"""
from ._source import KERNEL_FILES, NVRTC_OPTIONS, kernel_dir, kernel_source, nvrtc_compile
from .kernels import (
    adam_update,
    get_function,
    is_available,
    kl_normal_std_backward,
    kl_normal_std_forward,
    normal,
    philox_words,
    reparameterize_backward,
    reparameterize_forward,
    reparameterize_kl_backward,
    reparameterize_kl_forward,
    require,
    uniform,
)

__all__ = [
    "KERNEL_FILES", "NVRTC_OPTIONS", "kernel_dir", "kernel_source", "nvrtc_compile",
    "get_function", "is_available", "require",
    "philox_words", "normal", "uniform",
    "reparameterize_forward", "reparameterize_backward",
    "kl_normal_std_forward", "kl_normal_std_backward",
    "reparameterize_kl_forward", "reparameterize_kl_backward", "adam_update",
]
