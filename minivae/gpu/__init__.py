"""CuPy-only code: the CUDA kernels of ``kernels/*.cu``, compiled with NVRTC at first use
through ``cupy.RawModule``, their launch wrappers (``minivae.gpu.kernels``) and the dispatch
table that maps ops to them (``minivae.gpu.dispatch``).

Importing this package does not import CuPy: the launch wrappers (``minivae.gpu.normal``,
``minivae.gpu.reparameterize_kl_forward``, ...) are loaded from ``minivae.gpu.kernels`` on their
first use, so the engine and the optimizer can consult the dispatch table on machines without
CuPy. ``minivae.gpu.is_available()`` says whether the GPU path can run and
``minivae.gpu.require()`` raises one clear error when it cannot; nothing outside ``minivae.gpu``
imports CuPy, and ``import minivae`` never imports the kernels.

The noise of the GPU kernels is addressed like ``minivae.random`` (seed, offset, stream,
element index): the same address gives the same Philox words on both devices, bit for bit,
and the same normals to a few float32 ulps.
"""
import importlib

from ._source import KERNEL_FILES, NVRTC_OPTIONS, kernel_dir, kernel_source, nvrtc_compile

#: The names ``minivae.gpu`` takes from ``minivae.gpu.kernels`` when they are first asked for.
_KERNEL_NAMES = (
    "adam_update", "bernoulli_log_prob_backward", "bernoulli_log_prob_forward", "bias_act", "bias_grad",
    "gaussian_log_prob_backward", "gaussian_log_prob_forward", "get_function", "gumbel", "is_available",
    "kl_normal_std_backward", "kl_normal_std_forward", "log_softmax_backward", "log_softmax_forward",
    "logsumexp_backward", "logsumexp_forward", "normal", "philox_words", "relu_grad",
    "reparameterize_backward", "reparameterize_forward", "reparameterize_kl_backward",
    "reparameterize_kl_forward", "require", "uniform",
)

__all__ = ["KERNEL_FILES", "NVRTC_OPTIONS", "kernel_dir", "kernel_source", "nvrtc_compile",
           *_KERNEL_NAMES]


def __getattr__(name):
    """The launch wrappers of ``minivae.gpu.kernels``, imported (with CuPy) on first use."""
    if name in _KERNEL_NAMES or name == "kernels":
        kernels = importlib.import_module(f"{__name__}.kernels")
        return kernels if name == "kernels" else getattr(kernels, name)
    raise AttributeError(f"module 'minivae.gpu' has no attribute {name!r}")
