"""Shared fixtures: a seeded generator, input factories that keep values away from kinks, and a
stand-in libcublas for the cuBLAS binding and the dispatch table's dense-layer rows."""
import collections
import shutil
import subprocess
import types

import numpy as np
import pytest

from minivae import Tensor
from minivae.gradcheck_cases import away_from, distinct  # noqa: F401  (used by the tests)


@pytest.fixture
def rng():
    """A fresh, seeded generator per test, so every test is reproducible on its own."""
    return np.random.default_rng(1234)


@pytest.fixture
def t64(rng):
    """Factory: a float64 Tensor requiring grad, uniform in [low, high]."""
    def make(*shape, low=-1.0, high=1.0, requires_grad=True):
        return Tensor(rng.uniform(low, high, shape), requires_grad=requires_grad)
    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying why, where CuPy or a CUDA device is missing (they are
    deselected by default; ``pytest -m gpu`` selects them)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import minivae.gpu

    if not minivae.gpu.is_available():
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)


# ------------------------------------------------------------------------------ a stand-in libcublas
FAKE_CUBLAS = r"""
#include <stddef.h>
#include <stdlib.h>
static int handles = 0, last_stream = -1;
static size_t workspace = 0;
int cublasCreate_v2(void** h) { *h = (void*)(size_t)(0x1000 + ++handles); return 0; }
int cublasDestroy_v2(void* h) { (void)h; --handles; return 0; }
/* as cuBLAS documents it: setting the stream resets the workspace to the library's own pool */
int cublasSetStream_v2(void* h, void* s) { (void)h; last_stream = (int)(size_t)s; workspace = 0; return 0; }
int cublasSetWorkspace_v2(void* h, void* p, size_t n) { (void)h; (void)p; workspace = n; return 0; }
int fake_live_handles(void) { return handles; }
int fake_last_stream(void) { return last_stream; }
int fake_workspace(void) { return (int)workspace; }
/* Each C[i, j] is the sum of A[i, l] B[l, j] over l in order, as a dot product would give it,
   kept in a column of sums so that the loop over i runs innermost: the tests' 784 x 512 products
   then stream through A's columns instead of striding across them. */
#define GEMM(NAME, T)                                                                          \
int NAME(void* h, int ta, int tb, int m, int n, int k, const T* alpha, const T* A, int lda,    \
         const T* B, int ldb, const T* beta, T* C, int ldc) {                                  \
    (void)h;                                                                                   \
    if (ta < 0 || ta > 1 || tb < 0 || tb > 1 || m < 0 || n < 0 || k < 0) return 7;             \
    if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || lda < 1) return 7;              \
    T* acc = (T*)malloc(sizeof(T) * (size_t)(m > 0 ? m : 1));                                  \
    if (acc == NULL) return 3;                                                                 \
    for (int j = 0; j < n; ++j) {                                                              \
        for (int i = 0; i < m; ++i) acc[i] = 0;                                                \
        for (int l = 0; l < k; ++l) {                                                          \
            T b = tb ? B[j + l * ldb] : B[l + j * ldb];                                        \
            for (int i = 0; i < m; ++i) acc[i] += (ta ? A[l + i * lda] : A[i + l * lda]) * b;  \
        }                                                                                      \
        for (int i = 0; i < m; ++i)                                                            \
            C[i + j * ldc] = *alpha * acc[i] + (*beta == 0 ? 0 : *beta * C[i + j * ldc]);      \
    }                                                                                          \
    free(acc);                                                                                 \
    return 0;                                                                                  \
}
GEMM(cublasSgemm_v2, float)
GEMM(cublasDgemm_v2, double)
"""


@pytest.fixture(scope="module")
def fake_lib_path(tmp_path_factory):
    """A stand-in libcublas built with the C compiler: cuBLAS's signatures, and a naive
    column-major gemm on host memory (so NumPy arrays' addresses stand for device pointers)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler: cannot build the stand-in libcublas")
    d = tmp_path_factory.mktemp("fakecublas")
    (d / "fake.c").write_text(FAKE_CUBLAS)
    out = d / "libcublas.so.99"
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", str(d / "fake.c"), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return str(out)


#: One gemm call as the library received it (cuBLAS's column-major arguments, the scalars by
#: value, the pointers as addresses).
GemmCall = collections.namedtuple("GemmCall", "name transa transb m n k alpha A lda B ldb beta C ldc")


class RecordingLibrary:
    """A libcublas (``lib``, set when it is loaded) whose gemm calls are recorded in ``calls``
    before they run."""

    def __init__(self):
        self.lib, self.calls = None, []

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def cublasSgemm_v2(self, *args):
        return self._run("cublasSgemm_v2", args)

    def cublasDgemm_v2(self, *args):
        return self._run("cublasDgemm_v2", args)

    def _run(self, name, args):
        _, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc = args
        self.calls.append(GemmCall(name, ta, tb, m, n, k, alpha._obj.value, A, lda, B, ldb,
                                   beta._obj.value, C, ldc))
        return getattr(self.lib, name)(*args)


@pytest.fixture
def fake_cublas(fake_lib_path, monkeypatch):
    """The dense-layer rows of the dispatch table on the stand-in libcublas, with NumPy arrays
    standing for CuPy's (all on device 0; their addresses for device pointers). ``Gemm()``
    loads the library with ``cublas.load_library`` from ``$MINIVAE_CUBLAS``, as a user points
    to the real one, and gets it wrapped in the ``RecordingLibrary`` returned here. (The table
    takes arrays for CuPy's only where a test patches ``dispatch.is_gpu_array``.)"""
    from minivae.gpu import cublas, dispatch

    monkeypatch.setenv("MINIVAE_CUBLAS", fake_lib_path)
    monkeypatch.setattr(cublas, "cp", types.SimpleNamespace(ndarray=np.ndarray, empty=np.empty, uint8=np.uint8))
    monkeypatch.setattr(cublas, "_device_pointer", lambda x: x.ctypes.data)
    monkeypatch.setattr(cublas, "_current_stream", lambda: 7)
    monkeypatch.setattr(dispatch, "_current_device", lambda: 0)
    monkeypatch.setattr(dispatch, "_device", lambda a: 0)
    monkeypatch.setattr(dispatch, "_gemms", {})
    recording, load = RecordingLibrary(), cublas.load_library

    def load_and_record(candidates=None):
        recording.lib = load(candidates)
        return recording

    monkeypatch.setattr(cublas, "load_library", load_and_record)
    return recording
