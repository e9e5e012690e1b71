"""Matrix products that a CUDA graph can capture: cuBLAS ``gemm`` called through ctypes.

Why this module exists. CuPy refuses every cuBLAS call while a stream is being captured
(``cupy.matmul``, ``@`` and even ``cupy_backends.cuda.libs.cublas.sgemm`` raise
``NotImplementedError: calling cuBLAS API during stream capture is currently unsupported``).
cuBLAS itself captures fine: ``cublasSgemm_v2`` with a handle of its own, its stream set to the
capturing stream (``cublasSetStream_v2``) and its workspace allocated before the capture
(``cublasSetWorkspace_v2``, set again after every ``cublasSetStream_v2``, which resets it to
cuBLAS's own pool) records its kernels into the graph like any other launch.

Why ctypes rather than a package. The maintained bindings that reach the same C functions are
nvmath-python (``nvmath.bindings.cublas`` / ``cublasLt``; version 1.0.1 is a 5.6 MB wheel that
also requires cuda-bindings, cuda-core and cuda-pathfinder) and cuda-python (whose
``cuda.bindings`` cover the driver, runtime and NVRTC, not cuBLAS). Neither comes with CuPy or
PyTorch, so using them would add three or four packages to ``minivae[gpu]`` for six C calls,
and a GPU machine without the internet could not run graph mode at all. Six ``ctypes``
declarations against the ``libcublas`` that CuPy's own CUDA install already ships are smaller
than any of those and are tested here with a fake library.

Row-major mapping. cuBLAS is column-major; a C-contiguous (r, c) array read column-major is its
transpose. So ``C = op(A) @ op(B)`` (all row-major, C of shape (m, n)) is computed as the
column-major product ``C^T = op(B)^T @ op(A)^T``:
``gemm(op_b, op_a, n, m, k, alpha, B, ldb = B.shape[1], A, lda = A.shape[1], beta, C, ldc = n)``.

Finding the library, in order: ``$MINIVAE_CUBLAS`` (a file); the NVIDIA pip packages on
``sys.path`` (``nvidia/cu13/lib``, ``nvidia/cublas/lib``); ``$CUDA_PATH`` / ``$CUDA_HOME``;
``/usr/local/cuda``; the loader's search (``ldconfig``). The soname of CuPy's CUDA major version
is tried first. :func:`load_library` raises one ``RuntimeError`` listing what it tried.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

import numpy as np

try:  # CuPy is optional: this module imports without it (the tests use a fake library)
    import cupy as cp
except ImportError:  # pragma: no cover - exercised on machines without CuPy
    cp = None

__all__ = ["Gemm", "load_library", "library_candidates"]

_OP_N, _OP_T = 0, 1  # cublasOperation_t
_STATUS = {0: "SUCCESS", 1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE",
           8: "ARCH_MISMATCH", 11: "MAPPING_ERROR", 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR",
           15: "NOT_SUPPORTED", 16: "LICENSE_ERROR"}
_INT_MAX = 2 ** 31 - 1
# (dtype objects: comparing with one is ~50x cheaper than reading a dtype's .name, a cost paid
# on every product of every step)
_SINGLE, _DOUBLE = np.dtype(np.float32), np.dtype(np.float64)
#: Bytes of the workspace each handle gets before any capture (cuBLAS must not allocate one
#: while a graph is being captured); 32 MiB is NVIDIA's advice for Hopper.
WORKSPACE_BYTES = 32 << 20


def _cuda_major():
    try:
        return cp.cuda.runtime.runtimeGetVersion() // 1000
    except Exception:
        return None


def library_candidates(major=None):
    """Paths (or sonames) of libcublas to try, most specific first (see the module docstring)."""
    names = ([f"libcublas.so.{major}"] if major else []) + ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    out = []
    env = os.environ.get("MINIVAE_CUBLAS")
    if env:
        out.append(env)
    dirs = []
    for entry in sys.path:
        dirs += sorted(glob.glob(os.path.join(entry or ".", "nvidia", "cu*", "lib")))
        dirs.append(os.path.join(entry or ".", "nvidia", "cublas", "lib"))
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], "lib64"))
    dirs.append("/usr/local/cuda/lib64")
    for name in names:
        out += [os.path.join(d, name) for d in dirs if os.path.isfile(os.path.join(d, name))]
    found = ctypes.util.find_library("cublas")
    out += [found] if found else []
    out += names  # the dynamic loader's own search (LD_LIBRARY_PATH, ldconfig's cache)
    return list(dict.fromkeys(out))


def load_library(candidates=None):
    """The first libcublas of ``candidates`` (default :func:`library_candidates`) that loads,
    as a ``ctypes.CDLL`` with the six functions declared; one clear error if none does."""
    tried = []
    for path in library_candidates(_cuda_major()) if candidates is None else candidates:
        try:
            lt = os.path.join(os.path.dirname(path), os.path.basename(path).replace("cublas", "cublasLt"))
            if os.path.dirname(path) and os.path.isfile(lt):  # its companion, from the same folder
                ctypes.CDLL(lt, mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(path)
            _declare(lib)
        except OSError as exc:
            tried.append(f"{path} ({exc})")
            continue
        except AttributeError as exc:  # another library, or a cuBLAS older than the functions declared
            tried.append(f"{path} (loads, but lacks a function minivae calls: {exc})")
            continue
        return lib
    raise RuntimeError(
        "minivae.gpu.cublas: libcublas was not found or did not load; tried "
        + ("; ".join(tried) or "nothing")
        + ". Install the CUDA toolkit or the nvidia-cublas pip package that matches CuPy, "
        "or set MINIVAE_CUBLAS to the library's path.")


def _declare(lib):
    p, i, c = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    sigs = {
        "cublasCreate_v2": [ctypes.POINTER(p)], "cublasDestroy_v2": [p],
        "cublasSetStream_v2": [p, p], "cublasSetWorkspace_v2": [p, p, c],
        "cublasSgemm_v2": [p, i, i, i, i, i, p, p, i, p, i, p, p, i],
        "cublasDgemm_v2": [p, i, i, i, i, i, p, p, i, p, i, p, p, i],
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"{what} failed: CUBLAS_STATUS_{_STATUS.get(status, status)}")


def _device_pointer(x):
    return x.data.ptr


def _current_stream():
    return cp.cuda.get_current_stream().ptr


class Gemm:
    """A cuBLAS handle of its own for row-major CuPy matrix products, capturable in a CUDA graph.

    Create it (and call it once) before a capture: the handle and its workspace are allocated
    here. Each call runs on CuPy's current stream, so inside ``with stream:`` during
    ``stream.begin_capture()`` it is recorded into the graph. ``alpha`` and ``beta`` are read
    at the call (host pointer mode): a captured product keeps the values it was captured with.
    """

    def __init__(self, library=None, workspace_bytes=WORKSPACE_BYTES):
        if library is None and cp is None:
            raise RuntimeError("minivae.gpu.cublas needs CuPy")
        self._lib = load_library() if library is None else library
        handle = ctypes.c_void_p()
        _check(self._lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate_v2")
        self._handle = handle
        self._workspace = None
        if workspace_bytes:
            self._workspace = cp.empty(workspace_bytes, dtype=cp.uint8)  # kept alive with the handle
            self._set_workspace()

    def _set_workspace(self):
        ws = self._workspace
        _check(self._lib.cublasSetWorkspace_v2(self._handle, _device_pointer(ws), ws.size), "cublasSetWorkspace_v2")

    def close(self):
        """Destroy the handle (idempotent)."""
        if getattr(self, "_handle", None) is not None:
            self._lib.cublasDestroy_v2(self._handle)
            self._handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def gemm(self, a, b, out, transa=False, transb=False, alpha=1.0, beta=0.0):
        """``out = alpha * op(a) @ op(b) + beta * out`` for C-contiguous float32 or float64
        2-D arrays of one dtype, ``op(x)`` being ``x.T`` when ``trans*`` is true; returns ``out``."""
        if self._handle is None:
            raise RuntimeError("Gemm: the handle was closed")
        if cp is not None and not all(isinstance(x, cp.ndarray) for x in (a, b, out)):
            raise TypeError("Gemm.gemm: a, b and out must be CuPy arrays")
        for name, x in (("a", a), ("b", b), ("out", out)):
            if x.ndim != 2:
                raise ValueError(f"Gemm.gemm: {name} must be 2-D, got shape {x.shape}")
            if not x.flags.c_contiguous:
                raise ValueError(f"Gemm.gemm: {name} must be C-contiguous")
            if x.dtype != a.dtype:
                raise TypeError(f"Gemm.gemm: {name} has dtype {x.dtype}, a has {a.dtype}")
        if a.dtype not in (_SINGLE, _DOUBLE):
            raise TypeError(f"Gemm.gemm: dtype must be float32 or float64, got {a.dtype}")
        m, k = a.shape[::-1] if transa else a.shape
        kb, n = b.shape[::-1] if transb else b.shape
        if kb != k or out.shape != (m, n):
            raise ValueError(f"Gemm.gemm: shapes {a.shape}{'.T' if transa else ''} @ "
                             f"{b.shape}{'.T' if transb else ''} -> {out.shape} do not match")
        if max(m, n, k, a.shape[1], b.shape[1]) > _INT_MAX:
            raise ValueError("Gemm.gemm: a dimension exceeds cuBLAS's 32-bit int")
        if m == 0 or n == 0:
            return out
        single = a.dtype == _SINGLE
        scalar = ctypes.c_float if single else ctypes.c_double
        fn = self._lib.cublasSgemm_v2 if single else self._lib.cublasDgemm_v2
        _check(self._lib.cublasSetStream_v2(self._handle, _current_stream()), "cublasSetStream_v2")
        if self._workspace is not None:  # cublasSetStream resets the workspace to cuBLAS's own pool
            self._set_workspace()
        # column-major: out^T (n, m) = op(b)^T (n, k) @ op(a)^T (k, m), see the module docstring
        _check(fn(self._handle, _OP_T if transb else _OP_N, _OP_T if transa else _OP_N, n, m, k,
                  ctypes.byref(scalar(alpha)), _device_pointer(b), max(1, b.shape[1]),
                  _device_pointer(a), max(1, a.shape[1]), ctypes.byref(scalar(beta)),
                  _device_pointer(out), max(1, n)),
               "cublasSgemm_v2" if single else "cublasDgemm_v2")
        return out
