"""minivae.gpu.cublas without a GPU: the ctypes calls go to a stand-in libcublas built with the C
compiler (``fake_lib_path`` in conftest.py: a naive column-major gemm on host memory, with
cuBLAS's own signatures), so the argument order of the row-major -> column-major mapping, the
leading dimensions, the scalars passed by reference and the handle's life are all checked against
NumPy. (The same calls on the real library, inside a captured CUDA graph: tests/test_gpu.py.)"""
import ctypes.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from minivae.gpu import cublas


@pytest.fixture
def gemm(fake_lib_path, monkeypatch):
    # NumPy arrays stand for CuPy's (also where CuPy is installed without a GPU), host memory
    # for device memory
    monkeypatch.setattr(cublas, "cp", types.SimpleNamespace(ndarray=np.ndarray))
    monkeypatch.setattr(cublas, "_device_pointer", lambda x: x.ctypes.data)
    monkeypatch.setattr(cublas, "_current_stream", lambda: 7)
    lib = cublas.load_library([fake_lib_path])
    g = cublas.Gemm(library=lib, workspace_bytes=0)
    yield g, lib
    g.close()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transa", [False, True])
@pytest.mark.parametrize("transb", [False, True])
def test_row_major_products_equal_numpy(gemm, dtype, transa, transb):
    g, lib = gemm
    rng = np.random.default_rng(3)
    m, k, n = 5, 7, 3  # all different: a swapped dimension or leading dimension shows
    a = rng.standard_normal((k, m) if transa else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if transb else (k, n)).astype(dtype)
    out = rng.standard_normal((m, n)).astype(dtype)
    before = out.copy()
    want = 0.5 * (a.T if transa else a) @ (b.T if transb else b) + 2.0 * before
    assert g.gemm(a, b, out, transa=transa, transb=transb, alpha=0.5, beta=2.0) is out
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    assert lib.fake_last_stream() == 7  # the handle follows the current stream at every call


def test_beta_zero_ignores_what_out_held(gemm):
    g, _ = gemm
    a, b = np.ones((2, 3)), np.ones((3, 4))
    out = np.full((2, 4), np.nan)
    g.gemm(a, b, out)
    np.testing.assert_array_equal(out, np.full((2, 4), 3.0))


def test_bad_arguments_raise_clear_errors(gemm):
    g, _ = gemm
    a, b, out = np.ones((2, 3)), np.ones((3, 4)), np.ones((2, 4))
    with pytest.raises(ValueError, match="do not match"):
        g.gemm(a, b, np.ones((4, 2)))
    with pytest.raises(ValueError, match="do not match"):
        g.gemm(a, b, out, transb=True)
    with pytest.raises(TypeError, match="dtype"):
        g.gemm(a.astype(np.float32), b, out)
    for dtype in (np.int32, np.float16):
        with pytest.raises(TypeError, match="float32 or float64"):
            g.gemm(a.astype(dtype), b.astype(dtype), out.astype(dtype))
    with pytest.raises(ValueError, match="C-contiguous"):
        g.gemm(np.ones((3, 2)).T, b, out)
    with pytest.raises(ValueError, match="2-D"):
        g.gemm(np.ones(3), b, out)


def test_handle_is_destroyed_once(fake_lib_path, monkeypatch):
    lib = cublas.load_library([fake_lib_path])
    live = lib.fake_live_handles()
    g = cublas.Gemm(library=lib, workspace_bytes=0)
    assert lib.fake_live_handles() == live + 1
    g.close()
    g.close()
    assert lib.fake_live_handles() == live
    with pytest.raises(RuntimeError, match="closed"):
        g.gemm(np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1)))


def test_the_workspace_outlives_every_stream_change(fake_cublas):
    """cublasSetStream puts the handle back on cuBLAS's own workspace pool; the user workspace
    (allocated before any capture, so that cuBLAS allocates nothing during one) is set again
    after it at every call."""
    g = cublas.Gemm()  # fake_cublas: the stand-in library and a NumPy stand-in for CuPy
    assert fake_cublas.fake_workspace() == cublas.WORKSPACE_BYTES
    g.gemm(np.ones((2, 3)), np.ones((3, 4)), np.ones((2, 4)))
    assert fake_cublas.fake_last_stream() == 7
    assert fake_cublas.fake_workspace() == cublas.WORKSPACE_BYTES
    g.close()


@pytest.mark.parametrize("function, status, named", [("cublasDgemm_v2", 13, "EXECUTION_FAILED"),
                                                     ("cublasDgemm_v2", 1, "NOT_INITIALIZED"),
                                                     ("cublasSetStream_v2", 7, "INVALID_VALUE")])
def test_a_failing_status_names_it(gemm, function, status, named):
    g, real = gemm

    class Failing:  # the real library, except that ``function`` reports ``status``
        def __getattr__(self, name):
            return (lambda *args: status) if name == function else getattr(real, name)

    g._lib = Failing()
    with pytest.raises(RuntimeError, match=f"{function} failed: CUBLAS_STATUS_{named}"):
        g.gemm(np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1)))


def test_missing_library_is_one_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="libcublas was not found.*MINIVAE_CUBLAS"):
        cublas.load_library([str(tmp_path / "libcublas.so.13"), "libcublas_no_such_name.so.0"])


def test_candidates_prefer_the_environment_and_the_cuda_major(monkeypatch, tmp_path):
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcublas.so.13").write_bytes(b"")
    monkeypatch.setenv("MINIVAE_CUBLAS", "/opt/x/libcublas.so")
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    cands = cublas.library_candidates(13)
    assert cands[0] == "/opt/x/libcublas.so"
    assert cands[1] == str(lib / "libcublas.so.13")
    assert "libcublas.so.13" in cands  # the loader's own search comes last


def test_the_cuda_major_s_library_comes_before_the_newest(monkeypatch, tmp_path):
    """Where a folder holds the libraries of CUDA 12 and 13, CuPy built for CUDA 12 gets 12's."""
    lib = tmp_path / "cuda" / "lib64"
    lib.mkdir(parents=True)
    for name in ("libcublas.so.13", "libcublas.so.12"):
        (lib / name).write_bytes(b"")
    monkeypatch.delenv("MINIVAE_CUBLAS", raising=False)
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "cuda"))
    monkeypatch.setattr("sys.path", [])
    assert cublas.library_candidates(12)[0] == str(lib / "libcublas.so.12")
    assert cublas.library_candidates(13)[0] == str(lib / "libcublas.so.13")


def test_a_library_without_the_functions_is_passed_over_and_named(fake_lib_path):
    """A file that loads but is no libcublas of ours (MINIVAE_CUBLAS naming libcublasLt, or a
    cuBLAS older than cublasSetWorkspace_v2) is tried like one that does not load: the next
    candidate is taken, or the one error lists it with the symbol it lacks."""
    other = ctypes.util.find_library("c")
    if other is None:
        pytest.skip("no C library to stand for a library without cuBLAS's functions")
    with pytest.raises(RuntimeError, match=rf"tried {re.escape(other)} \(loads, but lacks .*cublasCreate_v2"):
        cublas.load_library([other])
    assert cublas.load_library([other, fake_lib_path])._name == fake_lib_path


#: A stand-in libcublas that needs a symbol of libcublasLt as it loads (a pointer to its data,
#: resolved when the library is loaded, however lazily functions are bound) without naming
#: libcublasLt as a dependency, and defines the functions ``_declare`` looks up.
NEEDS_LT = ("extern int minivae_lt_marker;\nint *minivae_lt = &minivae_lt_marker;\n"
            + "".join(f"int {name}(void) {{ return 0; }}\n" for name in (
                "cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2",
                "cublasSgemm_v2", "cublasDgemm_v2")))


def _in_a_fresh_process(code):
    """Run ``code`` in a new Python: a library loaded with RTLD_GLOBAL stays for the life of a
    process, so a load with the companion and one without cannot share one."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_libcublaslt_is_loaded_first_from_the_folder_of_libcublas(tmp_path):
    """libcublas needs libcublasLt's symbols as it loads; a pip wheel or a toolkit folder that
    is on no search path has both side by side, so load_library loads the companion of the
    same folder first (globally, where libcublas finds it). Without it, the stand-in here fails
    to load with its missing symbol named."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler: cannot build the stand-in libraries")
    (tmp_path / "lt.c").write_text("int minivae_lt_marker = 42;\n")
    (tmp_path / "cublas.c").write_text(NEEDS_LT)
    lt, lib = tmp_path / "libcublasLt.so.99", tmp_path / "libcublas.so.99"
    for source, out in (("lt.c", lt), ("cublas.c", lib)):
        proc = subprocess.run([cc, "-shared", "-fPIC", "-Wall", "-Werror", str(tmp_path / source), "-o", str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    alone = _in_a_fresh_process(f"import ctypes; ctypes.CDLL({str(lib)!r})")
    assert alone.returncode != 0 and "minivae_lt_marker" in alone.stderr  # it needs the companion
    loaded = _in_a_fresh_process("from minivae.gpu import cublas\n"
                                 f"print(cublas.load_library([{str(lib)!r}])._name)")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == str(lib)
