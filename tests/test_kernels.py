"""The CUDA kernels, checked on a machine without a GPU.

1. Every kernels/*.cu compiles to PTX with nvcc for sm_80 and sm_90, and to CUBIN with NVRTC,
   the compiler CuPy runs at a kernel's first use, where CuPy and NVRTC are installed (the
   ``nvrtc`` extra; it needs no GPU). With MINIVAE_REQUIRE_NVRTC=1 a missing NVRTC fails
   instead of skipping, as in CI.
2. The __host__ __device__ headers are built for the host with g++ into a shared library
   (tests/host_shim.cpp) and called through ctypes: Philox words bit-exact against the NumPy
   twin, uniforms bit-exact, normals / reparameterization / KL to float tolerance, and a
   sequential replay of each kernel's thread loops (the same per-chunk functions the GPU runs).
3. The CuPy launch wrappers (minivae/gpu/kernels.py) run against a fake CuPy whose kernels
   are those replays, with every argument checked against the C signature in the .cu source.
"""
import contextlib
import ctypes
import decimal
import math
import os
import re
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

import minivae.random as mr
from minivae.gpu import _source

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
SHIM_SRC = Path(__file__).resolve().parent / "host_shim.cpp"
CU_FILES = sorted(p.name for p in KERNELS.glob("*.cu"))
NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")

ENTRY_POINTS = {
    "random.cu": ["mv_philox_words", "mv_normal_f32", "mv_normal_f64", "mv_uniform_f32", "mv_uniform_f64",
                  "mv_gumbel_f32", "mv_gumbel_f64"],
    "reparam.cu": ["mv_reparam_fwd_f32", "mv_reparam_fwd_f64", "mv_reparam_bwd_f32", "mv_reparam_bwd_f64"],
    "kl.cu": ["mv_kl_fwd_f32", "mv_kl_fwd_f64", "mv_kl_bwd_f32", "mv_kl_bwd_f64"],
    "fused.cu": ["mv_reparam_kl_fwd_f32", "mv_reparam_kl_fwd_f64",
                 "mv_reparam_kl_bwd_f32", "mv_reparam_kl_bwd_f64"],
    "bernoulli.cu": ["mv_bernoulli_fwd_f32", "mv_bernoulli_fwd_f64", "mv_bernoulli_bwd_f32", "mv_bernoulli_bwd_f64"],
    "gaussian.cu": ["mv_gaussian_fwd_f32", "mv_gaussian_fwd_f64", "mv_gaussian_bwd_f32", "mv_gaussian_bwd_f64"],
    "dense.cu": ["mv_bias_act_f32", "mv_bias_act_f64", "mv_relu_grad_f32", "mv_relu_grad_f64",
                 "mv_bias_grad_f32", "mv_bias_grad_f64"],
    "logsumexp.cu": ["mv_logsumexp_fwd_f32", "mv_logsumexp_fwd_f64", "mv_logsumexp_bwd_f32", "mv_logsumexp_bwd_f64",
                     "mv_log_softmax_fwd_f32", "mv_log_softmax_fwd_f64", "mv_log_softmax_bwd_f32",
                     "mv_log_softmax_bwd_f64"],
    "adam.cu": ["mv_adam_f32", "mv_adam_f64"],
    "step.cu": ["mv_step_advance"],
}

# Tolerances (named, not per-test guesses). Float32 results of the host build differ from the
# float64 NumPy reference by a few float32 ulps (logf/sqrtf/expf each <= 1 ulp, products).
F32_RTOL, F32_ATOL = 4e-6, 2e-6
F64_RTOL, F64_ATOL = 1e-13, 1e-13
TOL = {np.float32: (F32_RTOL, F32_ATOL), np.float64: (F64_RTOL, F64_ATOL)}
# Gumbel samples -log(-log(u)) are computed in float64 on both sides and rounded once: float32 ones
# are equal bit for bit; float64 ones differ where NumPy's log and the C library's differ by an ulp
# (about 0.4% of the first logs), by at most an ulp of max(1, |g|) as measured (an ulp of -log(u)
# near 1, where log cancels, is many ulps of g near 0): allowed here up to four.
GUMBEL_F64_TOL = 4 * np.finfo(np.float64).eps


def assert_same_gumbel(got, want):
    """Gumbel samples of the host build (or the wrappers) against minivae.random's: float32 bit
    for bit, float64 to GUMBEL_F64_TOL of max(1, |g|)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == np.float32:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=GUMBEL_F64_TOL, atol=GUMBEL_F64_TOL)


def test_the_wrappers_launch_constants_are_the_kernels():
    """BLOCK, TILE and COLUMNS of minivae.gpu.kernels are the #defines the kernels are built with."""
    from minivae.gpu import kernels

    defines = dict(re.findall(r"^#define (MV_\w+) (\d+)", (KERNELS / "device.cuh").read_text()
                              + (KERNELS / "chunks.cuh").read_text(), flags=re.M))
    assert (kernels.BLOCK, kernels.TILE, kernels.COLUMNS) == tuple(
        int(defines[name]) for name in ("MV_BLOCK", "MV_TILE", "MV_COLUMNS"))


def test_kernel_files_are_known():
    assert CU_FILES == sorted(ENTRY_POINTS) == sorted(_source.KERNEL_FILES)
    for name in ["philox.cuh", "vae_math.cuh", "chunks.cuh", "device.cuh", "adam.cuh", "step.cuh"]:
        assert (KERNELS / name).is_file()


# ------------------------------------------------------------------------------ nvcc -> PTX
@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not found on PATH: cannot compile the kernels to PTX here")
    out = tmp_path_factory.mktemp("ptx")
    procs = {}
    for cu in CU_FILES:  # compile concurrently: 8 short nvcc runs
        for arch in ("80", "90"):
            dst = out / f"{cu}.sm_{arch}.ptx"
            cmd = [NVCC, "-ptx", f"-arch=sm_{arch}", "-std=c++14", "-Werror", "all-warnings",
                   "-I", str(KERNELS), "-o", str(dst), str(KERNELS / cu)]
            procs[(cu, arch)] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True), dst)
    result = {}
    for key, (proc, dst) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        result[key] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), dst)
    return result


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("cu", CU_FILES)
def test_cu_compiles_to_ptx(ptx, cu, arch):
    proc, dst = ptx[(cu, arch)]
    assert proc.returncode == 0, f"nvcc failed on {cu} for sm_{arch}:\n{proc.stderr}"
    text = dst.read_text()
    assert f".target sm_{arch}" in text
    entries = set(re.findall(r"\.entry\s+(\w+)", text))
    assert entries == set(ENTRY_POINTS[cu])  # extern "C": unmangled, nothing else exported


def _ab_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ab_row_kernels", ROOT / "benchmarks" / "ab_row_kernels.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    return ab


FAST_MATH_SIGNS = ("lg2.approx", "sqrt.approx", "sin.approx", "cos.approx")


def test_row_forward_variants_compile(tmp_path):
    """Every candidate design of the forward row kernels (benchmarks/ab_row_kernels.py) compiles
    to PTX for sm_80 and sm_90 without a warning, with the same entry points and IEEE math."""
    if NVCC is None:
        pytest.skip("nvcc not found on PATH")
    procs = []
    for name, opts in _ab_script().VARIANTS.items():
        for cu in ("kl.cu", "fused.cu", "bernoulli.cu", "gaussian.cu"):
            for arch in ("80", "90"):
                dst = tmp_path / f"{name}.{cu}.sm_{arch}.ptx"
                cmd = [NVCC, "-ptx", f"-arch=sm_{arch}", "-std=c++14", "-Werror", "all-warnings", *opts,
                       "-I", str(KERNELS), "-o", str(dst), str(KERNELS / cu)]
                procs.append((name, cu, dst, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                              text=True)))
    for name, cu, dst, proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} {cu}:\n{err}"
        text = dst.read_text()
        assert set(re.findall(r"\.entry\s+(\w+)", text)) == set(ENTRY_POINTS[cu])
        assert not [a for a in FAST_MATH_SIGNS if a in text], (name, dst.name)
        if cu == "fused.cu":
            assert "sqrt.rn.f32" in text and "sqrt.rn.f64" in text, (name, dst.name)


def test_row_forward_design_must_be_a_known_one(tmp_path):
    """A misspelt design (-DMV_ROW_FWD=warp: an unknown name, 0 in #if) stops the compile, and so
    does a tile that is no multiple of the threads sharing it."""
    if NVCC is None:
        pytest.skip("nvcc not found on PATH")
    for opts, message in ((["-DMV_ROW_FWD=warp"], "MV_ROW_FWD must be MV_REGTILES or MV_WARPTILES"),
                          (["-DMV_ROW_FWD=MV_WARPTILES", "-DMV_TILE=500"], "MV_TILE must be a multiple"),
                          (["-DMV_ROW_FWD=MV_WARPTILES", "-DMV_TILE=4096"], "48 KiB")):
        proc = subprocess.run([NVCC, "-ptx", "-arch=sm_90", "-std=c++14", *opts, "-I", str(KERNELS),
                               "-o", str(tmp_path / "x.ptx"), str(KERNELS / "fused.cu")],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, (opts, proc.stderr)


def test_no_fast_math_in_ptx(ptx):
    """--use_fast_math would replace logf/sqrtf/sinf by approximate instructions (lg2.approx,
    sqrt.approx, sin.approx) with flush-to-zero; the IEEE build has sqrt.rn and none of those.
    (The accurate expf itself uses ex2.approx after an exact range reduction: not a sign.)"""
    for arch in ("80", "90"):
        proc, dst = ptx[("fused.cu", arch)]
        assert proc.returncode == 0
        text = dst.read_text()
        for approx in FAST_MATH_SIGNS:
            assert approx not in text, approx
        assert "sqrt.rn.f32" in text and "sqrt.rn.f64" in text


def test_kernel_source_is_self_contained():
    for cu in CU_FILES:
        src = _source.kernel_source(cu)
        assert not re.search(r'^\s*#\s*include\s+"', src, re.MULTILINE), cu
        assert src.count("#define MINIVAE_PHILOX_CUH") == 1
        assert 'extern "C" __global__' in src
    assert _source.kernel_dir() == KERNELS or (_source.kernel_dir() / "philox.cuh").is_file()


@pytest.fixture
def kernel_folder(tmp_path, monkeypatch):
    """``tmp_path`` as the kernel folder (``$MINIVAE_KERNELS_DIR``), with the caches of
    ``minivae.gpu._source`` emptied before and after."""
    (tmp_path / "philox.cuh").write_text("// the header the folder is recognised by\n")
    monkeypatch.setenv("MINIVAE_KERNELS_DIR", str(tmp_path))
    for cached in (_source.kernel_dir, _source.kernel_source):
        cached.cache_clear()
    yield tmp_path
    for cached in (_source.kernel_dir, _source.kernel_source):
        cached.cache_clear()


def test_kernel_source_inlines_each_local_header_once(kernel_folder):
    """Local headers (#include "x", written with any spaces the preprocessor takes) are inlined
    where they are first included, each once, however many files include them; a system header
    (#include <x>) is left to the compiler."""
    (kernel_folder / "a.cuh").write_text('#include "b.cuh"\nint a;\n')
    (kernel_folder / "b.cuh").write_text("int b;\n")
    (kernel_folder / "k.cu").write_text('#include "a.cuh"\n  #  include "b.cuh"\n#include <math.h>\nint k;\n')
    src = _source.kernel_source("k.cu")
    assert src.count("int b;") == 1 and src.count("int a;") == 1
    assert src.index("int b;") < src.index("int a;") < src.index("int k;")
    assert not re.search(r'^\s*#\s*include\s+"', src, re.M) and "#include <math.h>" in src
    assert '// (#include "b.cuh": already inlined)' in src


def test_kernel_source_names_a_missing_file_or_an_include_cycle(kernel_folder):
    """(Headers that include each other are inlined once each, as include guards would have it;
    a header that includes the file being assembled is a cycle.)"""
    (kernel_folder / "c.cuh").write_text('#include "d.cuh"\n')
    (kernel_folder / "d.cuh").write_text('#include "c.cuh"\n#include "cycle.cu"\n')
    (kernel_folder / "cycle.cu").write_text('#include "c.cuh"\n')
    (kernel_folder / "missing.cu").write_text('#include "nowhere.cuh"\n')
    with pytest.raises(ValueError, match="include cycle: cycle.cu -> c.cuh -> d.cuh -> cycle.cu"):
        _source.kernel_source("cycle.cu")
    with pytest.raises(FileNotFoundError, match='missing.cu: #include "nowhere.cuh" not found in'):
        _source.kernel_source("missing.cu")
    with pytest.raises(FileNotFoundError, match="no kernel source nothing.cu in"):
        _source.kernel_source("nothing.cu")


def test_the_kernel_folder_is_the_first_that_holds_the_sources(kernel_folder, tmp_path_factory, monkeypatch):
    """$MINIVAE_KERNELS_DIR is taken when it holds philox.cuh; a folder without it is passed over
    (for the sources that ship with minivae)."""
    assert _source.kernel_dir() == kernel_folder
    monkeypatch.setenv("MINIVAE_KERNELS_DIR", str(tmp_path_factory.mktemp("empty")))
    _source.kernel_dir.cache_clear()
    assert (_source.kernel_dir() / "philox.cuh").read_text() == (KERNELS / "philox.cuh").read_text()


def test_the_kernel_folder_is_the_one_beside_the_imported_minivae(tmp_path, monkeypatch):
    """With minivae imported from one checkout (PYTHONPATH, a worktree) and another one installed
    editable, whose finder maps ``minivae.kernels`` to its own kernels/, the kernels of the other
    checkout were compiled in silence."""
    import importlib.util
    import sys

    import minivae

    other = tmp_path / "other_checkout" / "kernels"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    (other / "philox.cuh").write_text("// another checkout's header\n")

    class EditableFinder:  # as setuptools' editable install puts it at the end of sys.meta_path
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "minivae.kernels":
                return None
            return importlib.util.spec_from_file_location(name, other / "__init__.py",
                                                          submodule_search_locations=[str(other)])

    monkeypatch.delenv("MINIVAE_KERNELS_DIR", raising=False)
    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, EditableFinder])
    monkeypatch.delitem(sys.modules, "minivae.kernels", raising=False)
    monkeypatch.delattr(minivae, "kernels", raising=False)
    _source.kernel_dir.cache_clear()
    try:
        beside = Path(minivae.__file__).resolve().parent
        assert _source.kernel_dir() in (beside / "kernels", beside.parent / "kernels")
    finally:
        _source.kernel_dir.cache_clear()


def _need_nvrtc():
    """Skip where CuPy's NVRTC is absent (the nvcc tests above still ran); fail instead under
    MINIVAE_REQUIRE_NVRTC=1."""
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:
        missing = f"CuPy's NVRTC is not available here ({type(exc).__name__}: {exc})"
        if os.environ.get("MINIVAE_REQUIRE_NVRTC") == "1":
            pytest.fail(missing + "; MINIVAE_REQUIRE_NVRTC=1 asks for it (pip install -e '.[nvrtc]')")
        pytest.skip(missing)


def test_nvrtc_compiles_sources():
    """NVRTC (what cupy.RawModule runs at first use) compiles every kernel without a GPU."""
    _need_nvrtc()
    for cu in CU_FILES:
        for arch in ("80", "90"):
            assert len(_source.nvrtc_compile(cu, arch)) > 1000


def test_the_checked_build_flushes_float32_subnormals_as_cupy_builds_it():
    """CuPy appends -ftz=true to the options of every kernel it compiles (see
    minivae/gpu/_source.py): the installed CuPy still does, and nvrtc_compile checks that very
    build, whose float32 arithmetic flushes subnormals to zero and whose float64 does not."""
    _need_nvrtc()
    import inspect

    from cupy.cuda import compiler

    assert "'-ftz=true'" in inspect.getsource(compiler._compile_with_cache_cuda)
    ptx = _source.nvrtc_compile("adam.cu", "90", cubin=False).decode()
    ops = set(re.findall(r"\b(?:add|mul|div|sqrt)\.rn(?:\.ftz)?\.f(?:32|64)", ptx))
    assert ops == {"add.rn.ftz.f32", "mul.rn.ftz.f32", "div.rn.ftz.f32", "sqrt.rn.ftz.f32",
                   "add.rn.f64", "mul.rn.f64", "div.rn.f64", "sqrt.rn.f64"}, ops


# ------------------------------------------------------------------------------ host build
@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return _build_shim(tmp_path_factory)


def _build_shim(tmp_path_factory, *defines):
    if CXX is None:
        pytest.skip("no C++ compiler (g++) found: cannot build the host shim")
    out = tmp_path_factory.mktemp("shim") / "libminivae_shim.so"
    proc = subprocess.run(
        [CXX, "-O2", "-std=c++14", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", *defines,
         "-I", str(KERNELS), str(SHIM_SRC), "-o", str(out)],
        capture_output=True, text=True)
    assert proc.returncode == 0, f"host build failed:\n{proc.stderr}"
    lib = ctypes.CDLL(str(out))
    assert lib.shim_abi_version() == 18
    return lib


def test_headers_compile_as_cuda_host_code(tmp_path):
    """nvcc -x cu: the same shim with MV_HD = __host__ __device__ __forceinline__."""
    if NVCC is None:
        pytest.skip("nvcc not found on PATH")
    proc = subprocess.run(
        [NVCC, "-x", "cu", "-std=c++14", "-c", "-Werror", "all-warnings", "-I", str(KERNELS),
         str(SHIM_SRC), "-o", str(tmp_path / "shim.o")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


_I64, _U64, _U32, _INT = ctypes.c_longlong, ctypes.c_ulonglong, ctypes.c_uint, ctypes.c_int


def _ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def _sfx(dtype):
    return "f32" if np.dtype(dtype) == np.float32 else "f64"


def call(lib, name, *args):
    """Call a shim function, converting arrays to pointers and ints to their C types."""
    fn = getattr(lib, name)
    fn.restype = None
    cargs = []
    for a in args:
        if isinstance(a, np.ndarray) or a is None:
            cargs.append(_ptr(a))
        else:
            cargs.append(a)
    fn(*cargs)


def test_host_philox_known_answers(shim):
    from test_random import KAT_PHILOX4X32, _hex

    for rounds in (7, 10):
        rows = [(c, k, w) for r, c, k, w in KAT_PHILOX4X32 if r == rounds]
        ctr = np.ascontiguousarray(np.stack([_hex(c) for c, _, _ in rows]))
        key = np.ascontiguousarray(np.stack([_hex(k) for _, k, _ in rows]))
        out = np.zeros_like(ctr)
        call(shim, "shim_philox4x32", ctr, key, out, _I64(len(rows)), _INT(rounds))
        np.testing.assert_array_equal(out, np.stack([_hex(w) for _, _, w in rows]))


def test_host_philox_bit_exact_random_inputs(shim):
    rng = np.random.default_rng(1)
    ctr = rng.integers(0, 1 << 32, size=(5000, 4), dtype=np.uint64).astype(np.uint32)
    key = rng.integers(0, 1 << 32, size=(5000, 2), dtype=np.uint64).astype(np.uint32)
    out = np.zeros_like(ctr)
    call(shim, "shim_philox4x32", ctr, key, out, _I64(5000), _INT(10))
    np.testing.assert_array_equal(out, mr.philox4x32(ctr, key))


@pytest.mark.parametrize("seed,offset,stream,start", [
    (0, 0, 0, 0), (0xDEADBEEFCAFEF00D, 0x123456789, 3, 5), ((1 << 64) - 1, (1 << 64) - 1, (1 << 32) - 1, 1 << 33)])
def test_host_words_bit_exact(shim, seed, offset, stream, start):
    n = 1001
    out = np.zeros(n, np.uint32)
    call(shim, "shim_philox_words", out, _I64(n), _U64(seed), _U64(offset), _U32(stream), _I64(start))
    np.testing.assert_array_equal(out, mr.philox_words(n, seed, offset, stream, start))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_uniform_bit_exact(shim, dtype):
    w = np.concatenate([np.array([0, 1, 511, 512, 0xFFFFFE00, 0xFFFFFFFF], np.uint32),
                        mr.philox_words(4000, 3)])
    out = np.zeros(w.size, dtype)
    call(shim, f"shim_uniform_words_{_sfx(dtype)}", w, out, _I64(w.size))
    np.testing.assert_array_equal(out, mr.uniform_from_words(w, dtype))
    assert out.min() > 0 and out.max() < 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_normals_match_twin(shim, dtype):
    edge = np.array([[0, 0, 0xFFFFFFFF, 0xFFFFFFFF], [0, 0xFFFFFFFF, 0xFFFFFFFF, 0],
                     [0x80000000, 0x40000000, 0x7FFFFFFF, 0xC0000000]], np.uint32)
    w = np.ascontiguousarray(np.concatenate([edge, mr.philox_words(40000, 12).reshape(-1, 4)]))
    out = np.zeros(w.shape, dtype)
    call(shim, f"shim_normal_words_{_sfx(dtype)}", w, out, _I64(w.shape[0]))
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(out, mr.normal_from_words(w, dtype), rtol=rtol, atol=atol)
    # element addressing: normal of element i alone == element i of the draw
    idx = np.array([0, 1, 2, 3, 4, 4097, (1 << 34) - 1, 12345678901], np.int64)
    got = np.zeros(idx.size, dtype)
    call(shim, f"shim_normal_at_{_sfx(dtype)}", idx, got, _I64(idx.size), _U64(9), _U64(4), _U32(1))
    np.testing.assert_allclose(got, mr.normal_at(idx, 9, 4, dtype, stream=1), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_gumbel_is_the_twins_recipe(shim, dtype):
    """-log(-log(u)) of the uniform of the dtype, in float64, rounded once (minivae.random.gumbel),
    at the extreme words (the smallest and largest uniforms), over a draw's words and, in float32,
    for every one of the 2**23 uniforms (the words w << 9)."""
    w = np.concatenate([np.array([0, 1, 511, 512, 0xFFFFFE00, 0xFFFFFFFF], np.uint32),
                        mr.philox_words(40000, 5, 2, 1)])
    if dtype == np.float32:
        w = np.concatenate([w, np.arange(1 << 23, dtype=np.uint32) << np.uint32(9)])
    out = np.zeros(w.size, dtype)
    call(shim, f"shim_gumbel_words_{_sfx(dtype)}", w, out, _I64(w.size))
    u = mr.uniform_from_words(w, dtype).astype(np.float64)
    assert_same_gumbel(out, (-np.log(-np.log(u))).astype(dtype))
    assert np.isfinite(out).all()
    assert_same_gumbel(out[6:40006], mr.gumbel(40000, 5, 2, dtype, 1))


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=shape).astype(dtype)
    logvar = rng.uniform(-4, 2, size=shape).astype(dtype)
    return mu, logvar


def _ref_reparam(mu, logvar, seed, offset, stream=0):
    eps = mr.normal(mu.shape, seed, offset, mu.dtype, stream).astype(np.float64)
    std = np.exp(0.5 * logvar.astype(np.float64))
    return mu + std * eps, eps, std


def _ref_kl_terms(mu, logvar):
    m, lv = mu.astype(np.float64), logvar.astype(np.float64)
    return 0.5 * (m * m + np.expm1(lv) - lv)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_elementwise_math(shim, dtype):
    mu, logvar = _inputs((3000,), dtype, 1)
    logvar[:4] = np.array([0.0, 1e-7, -1e-7, 30.0], dtype)  # expm1 near 0; large variance
    eps = mr.normal(3000, 4, 0, dtype)
    dz = _inputs((3000,), dtype, 2)[0]
    rtol, atol = TOL[dtype]
    m, lv, e, g = (a.astype(np.float64) for a in (mu, logvar, eps, dz))
    refs = {
        0: (mu, logvar, eps, m + np.exp(0.5 * lv) * e),
        1: (dz, logvar, eps, g * e * 0.5 * np.exp(0.5 * lv)),
        2: (mu, logvar, eps, _ref_kl_terms(mu, logvar)),
        3: (dz, mu, eps, g * m),
        4: (dz, logvar, eps, g * 0.5 * np.expm1(lv)),
        5: (mu, (eps > 0).astype(dtype), eps, _ref_bernoulli_terms(mu, eps > 0)),  # |mu| < 5: no cancelling
        6: (dz, mu, logvar / 4 + 0.5, g * (lv / 4 + 0.5 - 1 / (1 + np.exp(-m)))),
    }
    for which, (a, b, c, want) in refs.items():
        out = np.zeros(3000, dtype)
        call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(which), a, b, c, out, _I64(3000))
        np.testing.assert_allclose(out, want, rtol=rtol, atol=atol, err_msg=f"op {which}")
    # near logvar = 0 the expm1 form has an absolute error of a few ulp(logvar), where the naive
    # exp(logvar) - 1 - logvar would lose ulp(1) ~ 6e-8 in float32
    x = np.array([1e-3, -2e-4, 3e-6], dtype)
    out = np.zeros(3, dtype)
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(2), np.zeros(3, dtype), x, np.zeros(3, dtype),
         out, _I64(3))
    want = 0.5 * (np.expm1(x.astype(np.float64)) - x.astype(np.float64))
    ulp = np.spacing(np.abs(x)).astype(np.float64)
    assert np.all(np.abs(out - want) <= 2 * ulp), (out, want)


# ------------------------------------------------------------------------------ kernel replays
FLAT_SIZES = [1, 3, 4, 5, 1023, 1024, 1025, 4097]
# (the forward tiles: 80 rows of D = 50, 2048 of D = 2, 1364 of D = 3, one of D = 1025; rows
# past 4093 elements are summed in segments, 4101 and 9001 odd so that rows start off a chunk
# boundary)
ROW_SHAPES = [(1, 1), (3, 2), (2050, 2), (5, 3), (1370, 3), (7, 50), (170, 50), (4, 64), (9, 1001),
              (3, 1025), (3, 2050), (2, 4101), (3, 9001), (5, 784), (7, 1024)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", FLAT_SIZES)
def test_replay_generate(shim, dtype, n):
    for dist, twin in ((0, mr.normal), (1, mr.uniform), (2, mr.gumbel)):
        out = np.full(n, np.nan, dtype)
        call(shim, f"shim_generate_{_sfx(dtype)}", out, _I64(n), _INT(dist), _U64(21), _U64(2), None, _U32(0))
        want = twin(n, 21, 2, dtype)
        if dist == 0:
            np.testing.assert_allclose(out, want, rtol=TOL[dtype][0], atol=TOL[dtype][1])
        elif dist == 1:
            np.testing.assert_array_equal(out, want)
        else:
            assert_same_gumbel(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", FLAT_SIZES)
def test_replay_reparam(shim, dtype, n):
    rtol, atol = TOL[dtype]
    seed, offset, stream = 1234, 7, 2
    mu, logvar = _inputs((n,), dtype, n)
    z = np.full(n, np.nan, dtype)
    # the offset from device memory (offset 3 + a counter holding 4) draws the noise of offset 7
    call(shim, f"shim_reparam_fwd_{_sfx(dtype)}", mu, logvar, z, _I64(n), _U64(seed), _U64(offset - 4),
         np.array([4], np.uint64), _U32(stream))
    want, eps, std = _ref_reparam(mu, logvar, seed, offset, stream)
    np.testing.assert_allclose(z, want, rtol=rtol, atol=atol)
    dz = _inputs((n,), dtype, n + 1)[0]
    for with_dmu in (True, False):
        dmu = np.full(n, np.nan, dtype) if with_dmu else None
        dlv = np.full(n, np.nan, dtype)
        call(shim, f"shim_reparam_bwd_{_sfx(dtype)}", dz, logvar, dmu, dlv, _I64(n), _U64(seed),
             _U64(offset), None, _U32(stream))
        if with_dmu:
            np.testing.assert_array_equal(dmu, dz)
        np.testing.assert_allclose(dlv, dz * eps * std * 0.5, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replays_write_nothing_past_the_end_of_their_outputs(shim, dtype):
    """The last chunk of n elements (n not a multiple of 4) holds elements past the end: the
    kernels' stores leave them alone. Each output is the start of a longer array whose tail must
    keep its values: the flat stores (a draw, the fused backward), the tiles' (the fused forward's
    z) and a row kernel's sums."""
    seed, offset, stream = 5, 1, 0
    sfx = _sfx(dtype)
    for B, D in [(1, 1), (3, 3), (5, 7), (2, 4101)]:
        n = B * D
        mu, logvar = _inputs((B, D), dtype, n)
        g = _inputs((B,), dtype, n + 1)[0]
        outputs = [np.full(n + 4, 7, dtype) for _ in range(5)]  # (kl's tail longer than needed)
        draw, z, dmu, dlv = (a[:n] for a in outputs[:4])
        kl = outputs[4][:B]
        call(shim, f"shim_generate_{sfx}", draw, _I64(n), _INT(0), _U64(seed), _U64(offset), None, _U32(stream))
        call(shim, f"shim_reparam_kl_fwd_{sfx}", mu, logvar, z, kl, _I64(B), _I64(D), _U64(seed), _U64(offset),
             None, _U32(stream))
        call(shim, f"shim_reparam_kl_bwd_{sfx}", mu, g, mu, logvar, dmu, dlv, _I64(B), _I64(D), _U64(seed),
             _U64(offset), None, _U32(stream))
        for a in outputs[:4]:
            np.testing.assert_array_equal(a[n:], np.full(4, 7, dtype), err_msg=str((B, D)))
        np.testing.assert_array_equal(outputs[4][B:], np.full(n + 4 - B, 7, dtype), err_msg=str((B, D)))


def _ref_bernoulli_terms(logits, x):
    """x l - softplus(l) in float64, softplus in its stable form."""
    l, t = logits.astype(np.float64), x.astype(np.float64)
    return t * l - (np.maximum(l, 0) + np.log1p(np.exp(-np.abs(l))))


def _bernoulli_inputs(shape, dtype, seed):
    """Logits of all sizes (some far past where exp overflows, and 0) and targets in [0, 1] (the
    binary pixels of training, and grey values)."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape) * rng.choice([0.1, 3, 40], shape)).astype(dtype)
    logits.flat[::17] = 0
    logits.flat[5::23] = 120
    logits.flat[9::29] = -120
    x = np.where(rng.random(shape) < 0.3, rng.random(shape), rng.random(shape) < 0.5).astype(dtype)
    return logits, x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("samples", [0, 3])
def test_replay_bernoulli_kernels(shim, dtype, shape, samples):
    """The Bernoulli log-likelihood per row and its gradient, replayed on the host: the row sums
    equal the device's own terms summed in the documented order bit for bit, and the float64
    reference to rounding; finite for logits of any size. With ``samples``, the logits are
    (samples, B, D) and the images (B, D) repeat under them."""
    rtol, atol = TOL[dtype]
    B, D = shape
    x = _bernoulli_inputs(shape, dtype, B * D)[1]
    lshape = (samples,) + shape if samples else shape
    logits = _bernoulli_inputs(lshape, dtype, B * D + 1)[0]
    rows = logits.size // D if D else 0
    xs = np.broadcast_to(x, lshape)
    sfx = _sfx(dtype)
    terms = np.empty(logits.size, dtype)
    call(shim, f"shim_elementwise_{sfx}", _INT(5), logits.ravel(), np.ascontiguousarray(xs).ravel(), None, terms,
         _I64(logits.size))
    # x l - softplus(l) cancels where x = 1 and l >> 0: its error is a few ulp of l, not of the result
    ulp_l = 4 * np.finfo(dtype).eps * (np.abs(logits.astype(np.float64)) + 1)
    want = _ref_bernoulli_terms(logits, xs)
    assert np.all(np.abs(terms - want.ravel()) <= rtol * np.abs(want.ravel()) + ulp_l.ravel())
    P = _row_tiling(shim, D)[1]
    ordered = np.array([_documented_row_sum(terms[r * D:(r + 1) * D], P, r * D) for r in range(rows)], dtype)

    out = np.full(lshape[:-1], np.nan, dtype)
    call(shim, f"shim_bernoulli_fwd_{sfx}", logits, x, _I64(x.size), out, _I64(rows), _I64(D))
    np.testing.assert_array_equal(out.ravel(), ordered)
    bound = rtol * max(1, D) ** 0.5 * 4 * np.abs(want).sum(-1) + ulp_l.sum(-1)
    assert np.all(np.abs(out - want.sum(-1)) <= bound)

    g = _inputs(lshape[:-1], dtype, B + D)[0]
    d = np.full(lshape, np.nan, dtype)
    call(shim, f"shim_bernoulli_bwd_{sfx}", g, logits, x, d, _I64(rows), _I64(D), _I64(x.size))
    assert np.isfinite(d).all()
    l64 = logits.astype(np.float64)
    np.testing.assert_allclose(d, g[..., None] * (xs - 1 / (1 + np.exp(-l64))), rtol=rtol, atol=atol)
    own = np.empty(logits.size, dtype)
    call(shim, f"shim_elementwise_{sfx}", _INT(6), np.ascontiguousarray(np.broadcast_to(g[..., None], lshape)).ravel(),
         logits.ravel(), np.ascontiguousarray(xs).ravel(), own, _I64(logits.size))
    np.testing.assert_array_equal(d.ravel(), own)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_bernoulli_gradient_at_negative_logits(shim, dtype):
    """d/dl = g (x - sigmoid(l)) to a few ulp of itself where sigmoid(l) is tiny: the kernels
    computed sigmoid as (tanh(l / 2) + 1) / 2, which cancels (0 at l = -20 in float32, -40 in
    float64) where x = 0 and x - sigmoid(l) is -2.06e-9 (-4.2e-18), as PyTorch gives it."""
    logits = np.array([-0.5, -5.0, -10.0, -20.0, -40.0, -80.0, 3.0, 0.0], dtype)
    x = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.3, 1.0], dtype)
    g = np.linspace(0.5, 2.0, x.size).astype(dtype)
    d = np.full(x.size, np.nan, dtype)
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(6), g, logits, x, d, _I64(x.size))
    want = g * (x - 1 / (1 + np.exp(-logits.astype(np.float64))))
    np.testing.assert_allclose(d, want, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_bernoulli_gradient_where_sigmoid_rounds_to_one(shim, dtype):
    """d/dl = g (x - sigmoid(l)) to a few ulp of itself where sigmoid(l) is near 1: x - sigmoid(l)
    cancelled there (0 at x = 1, l = 20 in float32, l = 40 in float64, where it is 2.06e-9 and
    4.2e-18); the kernels compute it around sigmoid(-|l|), as BernoulliLogProb's backward does."""
    logits = np.array([0.5, 5.0, 10.0, 20.0, 40.0, 80.0, -3.0, 0.0, 20.0, 40.0, -20.0], dtype)
    x = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.0, 1.0], dtype)
    l64 = logits.astype(np.float64)
    # forms with no cancellation: sigmoid(-l) at x = 1, -tanh(l / 2) / 2 at x = 1/2, -sigmoid(l) at x = 0
    want = np.where(x == 1, 1 / (1 + np.exp(l64)),
                    np.where(x == 0.5, -0.5 * np.tanh(0.5 * l64), -1 / (1 + np.exp(-l64))))
    g = np.linspace(0.5, 2.0, x.size).astype(dtype)
    d = np.full(x.size, np.nan, dtype)
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(6), g, logits, x, d, _I64(x.size))
    np.testing.assert_allclose(d, g * want, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_bernoulli_gradient_at_a_zero_logit_is_the_ops(shim, dtype):
    """At l = 0 (and -0) the gradient takes the branch of l >= 0, (x - 1) + 1/2, as
    BernoulliLogProb's backward does: the op's bits for grey pixels x < 1/2, where x - 1 rounds
    and the other branch, x - 1/2, would not."""
    from minivae.ops.vae import _x_minus_sigmoid

    rng = np.random.default_rng(6)
    x = np.concatenate([rng.uniform(0, 0.5, 200), [0.0, 0.5, 1.0, 0.3]]).astype(dtype)
    logits = np.where(np.arange(x.size) % 2, dtype(-0.0), dtype(0.0)).astype(dtype)
    g = rng.uniform(0.5, 2.0, x.size).astype(dtype)
    d = np.full(x.size, np.nan, dtype)
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(6), g, logits, x, d, _I64(x.size))
    np.testing.assert_array_equal(d, g * _x_minus_sigmoid(np, x, logits))
    assert not np.array_equal(d, g * (x - dtype(0.5)))  # (the cases where the branches differ)


def _ref_gaussian(x, mu, logvar):
    """The float64 halved bracket (log(2 pi) + logvar + t^2) / 2 (t = (x - mu) e^(-logvar / 2)), and t."""
    x, mu, lv = (np.asarray(a, np.float64) for a in (x, mu, logvar))
    t = (x - mu) * np.exp(-0.5 * lv)
    return 0.5 * (np.log(2 * np.pi) + lv + t * t), t


#: (x's shape, mu's, logvar's): the same shape, a sample's parameters under 3 samples, one row
#: of parameters for all, one value for all (0-d, as a standard normal's), and mixed periods
GAUSSIAN_SHAPES = [((7, 50), (7, 50), (7, 50)), ((3, 7, 50), (7, 50), (7, 50)), ((5, 13), (13,), (13,)),
                   ((3, 5, 13), (), ()), ((2, 4101), (2, 4101), ()), ((9, 3), (9, 3), (9, 3)),
                   ((3, 5, 13), (13,), (5, 13))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", GAUSSIAN_SHAPES)
def test_replay_gaussian_kernels(shim, dtype, shapes):
    """The Gaussian log-density per row and its gradients, replayed on the host: the row sums
    equal minus the device's own (halved) terms summed in the documented order, bit for bit, and the
    float64 reference to rounding, with mu and logvar repeated under x as their shapes say (one
    value for all where 0-d); each gradient written only where asked for, of x's shape."""
    rtol, atol = TOL[dtype]
    xs, ms, ls = shapes
    D = xs[-1]
    rows = int(np.prod(xs[:-1]))
    rng = np.random.default_rng(sum(xs))
    x = rng.normal(size=xs).astype(dtype)
    mu = np.asarray(0.5 * rng.normal(size=ms), dtype)
    lv = np.asarray(rng.uniform(-3, 2, size=ls), dtype)
    mub, lvb = np.broadcast_to(mu, xs), np.broadcast_to(lv, xs)
    sfx = _sfx(dtype)
    terms = np.empty(x.size, dtype)
    call(shim, f"shim_elementwise_{sfx}", _INT(7), x.ravel(), np.ascontiguousarray(mub).ravel(),
         np.ascontiguousarray(lvb).ravel(), terms, _I64(x.size))
    want, t = _ref_gaussian(x, mub, lvb)
    np.testing.assert_allclose(terms.reshape(xs), want, rtol=rtol, atol=atol)
    P = _row_tiling(shim, D)[1]
    ordered = np.array([-_documented_row_sum(terms[r * D:(r + 1) * D], P, r * D) for r in range(rows)], dtype)

    out = np.full(xs[:-1], np.nan, dtype)
    call(shim, f"shim_gaussian_fwd_{sfx}", x, mu, _I64(mu.size), lv, _I64(lv.size), out, _I64(rows), _I64(D))
    np.testing.assert_array_equal(out.ravel(), ordered)
    np.testing.assert_allclose(out, -want.sum(-1), rtol=rtol * D ** 0.5 * 4, atol=atol)

    g = rng.normal(size=xs[:-1]).astype(dtype)
    inv_std = np.exp(-0.5 * lvb.astype(np.float64))
    gs = g[..., None] * t * inv_std
    for needs in ((True, True, True), (False, True, False), (True, False, True)):
        grads = [np.full(xs, np.nan, dtype) if need else None for need in needs]
        call(shim, f"shim_gaussian_bwd_{sfx}", g, x, mu, _I64(mu.size), lv, _I64(lv.size), *grads,
             _I64(rows), _I64(D))
        for got, ref in zip(grads, (-gs, gs, g[..., None] * 0.5 * (t * t - 1))):
            if got is not None:
                np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_gaussian_gradient_is_finite_where_the_product_is(shim, dtype):
    """d/dmu = -d/dx = g t exp(-logvar / 2), taken as (g t) exp(-logvar / 2): finite for a
    collapsed variance and a small upstream, where t exp(-logvar / 2) = (x - mu) exp(-logvar)
    overflows (e^100 in float32, e^800 in float64) though the product does not."""
    lv, g = (-100.0, 1e-30) if dtype == np.float32 else (-800.0, 1e-300)
    x, mu, logvar = (np.array([v], dtype) for v in (1.0, -0.5, lv))
    gs = np.array([g], dtype)
    dx, dmu = np.full(1, np.nan, dtype), np.full(1, np.nan, dtype)
    call(shim, f"shim_gaussian_bwd_{_sfx(dtype)}", gs, x, mu, _I64(1), logvar, _I64(1), dx, dmu, None,
         _I64(1), _I64(1))
    with decimal.localcontext() as ctx:  # g (x - mu) e^-logvar to 40 digits, where e^800 fits
        ctx.prec = 40
        D = decimal.Decimal
        want = float(D(float(gs[0])) * (-D(float(logvar[0]))).exp() * D(1.5))
    assert want < np.finfo(dtype).max
    np.testing.assert_allclose(dmu, [want], rtol=8 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_array_equal(dx, -dmu)


# (x, logvar, upstream g) of one-term rows of a Gaussian log-density with mu = 0: t^2 =
# x^2 e^-logvar overflows but the log-density and d/dlogvar do not (two rows); the log-density is
# past the lowest number but d/dlogvar, for a small g, is finite; and g = 0 there (a sample that
# logsumexp gives no weight)
WIDE_GAUSSIAN_ROWS = {np.float32: [(1.0, -88.9, 1.0), (2e19, 0.0, 1.0), (1.0, -90.0, 1e-3), (1.0, -95.0, 0.0)],
                      np.float64: [(1.0, -709.9, 1.0), (1.4e154, 0.0, 1.0), (1.0, -712.0, 1e-3),
                                   (1.0, -720.0, 0.0)]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gaussian_kernels_and_the_numpy_op_are_finite_where_the_values_are(fake_gpu, dtype):
    """Rows whose log-density or d/dlogvar is finite although t^2 overflows: the kernels give the
    NumPy op's values there, finite, to a few ulp (the libraries' exp may differ in the last
    bit), -inf where the log-density is past the lowest number, and d/dlogvar 0 where g is 0."""
    import minivae as mv
    from minivae import functional as F

    K, _ = fake_gpu
    x, logvar, g = (np.array([[row[i]] for row in WIDE_GAUSSIAN_ROWS[dtype]], dtype) for i in range(3))
    lv = mv.Tensor(logvar, requires_grad=True)
    lp = F.gaussian_log_prob(mv.Tensor(x), 0.0, lv)
    lp.backward(g[:, 0])
    assert np.isfinite(lv.grad).all() and lv.grad[-1, 0] == 0 and np.isneginf(lp.data[2:]).all()
    zero = np.zeros((), dtype)
    rtol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(K.gaussian_log_prob_forward(x, zero, logvar), lp.data, rtol=rtol, atol=0)
    np.testing.assert_allclose(K.gaussian_log_prob_backward(g[:, 0], x, zero, logvar)[2], lv.grad, rtol=rtol,
                               atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", FLAT_SIZES)
@pytest.mark.parametrize("N", [1, 3, 4, 50, 784])
def test_replay_dense_bias_relu_and_its_gradient(shim, dtype, n, N):
    """out = relu(out + b) in place and d = g * (y > 0), bit for bit NumPy's `out += b`,
    `maximum(out, 0)` and `g * (y > 0)`: with and without a bias or the ReLU, the bias's columns
    wrapping inside chunks (N = 1, 3, 50 are not multiples of 4), NaN kept by the ReLU and by its
    gradient, and 0 at the kink."""
    rows = -(-n // N)
    prod = _inputs((rows, N), dtype, n + N)[0]
    prod.flat[::7] = 0
    prod.flat[3::11] = np.nan
    b = _inputs((N,), dtype, N)[0]
    for bias in (b, None):
        for relu in (1, 0):
            want = prod.copy()
            if bias is not None:
                want += bias
            if relu:
                np.maximum(want, 0, out=want)
            out = prod.copy()  # in place
            call(shim, f"shim_bias_act_{_sfx(dtype)}", out, bias, out, _I64(out.size), _I64(N), _INT(relu))
            np.testing.assert_array_equal(out, want)
            out = np.full_like(prod, 7)  # into another array
            call(shim, f"shim_bias_act_{_sfx(dtype)}", prod, bias, out, _I64(out.size), _I64(N), _INT(relu))
            np.testing.assert_array_equal(out, want)
    y = np.maximum(prod + b, 0)
    g = _inputs((rows, N), dtype, n)[0]
    g.flat[5::13] = np.nan
    d = np.full_like(g, 7)
    call(shim, f"shim_relu_grad_{_sfx(dtype)}", g, y, d, _I64(g.size))
    np.testing.assert_array_equal(d, g * (y > 0))
    if g.size > 13:  # the cases the data holds
        assert np.isnan(d).any() and (d == 0).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_relu_of_negative_zero_is_numpys_positive_zero(shim, dtype):
    """NumPy's maximum(-0.0, 0) is +0.0: the ReLU kernel gives the same bits, the sign of each zero
    included (which assert_array_equal does not compare), with and without a bias of -0.0."""
    x = np.array([-0.0, 0.0, -0.0, 0.0, -1.5, 2.5, -0.0], dtype)
    uint = np.uint32 if dtype == np.float32 else np.uint64
    for bias in (None, np.array([-0.0], dtype)):
        want = x + bias if bias is not None else x.copy()
        np.maximum(want, 0, out=want)
        out = np.full_like(x, 7)
        call(shim, f"shim_bias_act_{_sfx(dtype)}", x, bias, out, _I64(x.size), _I64(1), _INT(1))
        np.testing.assert_array_equal(out.view(uint), want.view(uint))


def _documented_column_sums(d):
    """The column sums of kernels/chunks.cuh ("column reductions"): each column of d summed by 32
    lanes (lane l adds rows l, l + 32, ... left to right), their partials added by the halving
    tree; the order of a row segment's sum with P = 32 over the column's values."""
    return np.array([_documented_row_sum(d[:, c], 32, tile=10 ** 9) for c in range(d.shape[1])], d.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("R, N", [(0, 5), (1, 1), (3, 7), (31, 8), (32, 9), (33, 50), (100, 512), (257, 3)])
def test_replay_bias_gradient_sums_columns_in_the_documented_order(shim, dtype, R, N):
    """db = the column sums of d, bit for bit in the documented order, with d = g (nothing else
    written) or d = g * (y > 0) behind a ReLU (written, bit for bit NumPy's): rows fewer than,
    equal to and more than the 32 lanes, columns that fill a block of 8 partly, NaN kept, 0 at
    the kink. Values of mixed magnitudes, so that another order would give other bits."""
    rng = np.random.default_rng(R * 1000 + N)
    g = (rng.standard_normal((R, N)) * 10.0 ** rng.integers(-6, 6, (R, N))).astype(dtype)
    y = np.maximum(rng.standard_normal((R, N)), 0).astype(dtype)
    y.flat[::5] = 0
    if R * N > 20:
        g.flat[17] = np.nan
    db = np.full(N, 7, dtype)
    call(shim, f"shim_bias_grad_{_sfx(dtype)}", g, None, None, db, _I64(R), _I64(N))
    np.testing.assert_array_equal(db, _documented_column_sums(g))
    d = np.full_like(g, 7)
    call(shim, f"shim_bias_grad_{_sfx(dtype)}", g, y, d, db, _I64(R), _I64(N))
    np.testing.assert_array_equal(d, g * (y > 0))
    np.testing.assert_array_equal(db, _documented_column_sums(g * (y > 0)))
    if R >= 64:  # more than one value per lane: the order is not NumPy's
        assert not np.array_equal(_documented_column_sums(g), g.sum(axis=0), equal_nan=True)
    exact = (g * (y > 0)).astype(np.float64)
    bound = R * np.finfo(dtype).eps * np.abs(exact).sum(axis=0)  # a sum's rounding, any order
    assert np.all((np.abs(db - exact.sum(axis=0)) <= bound) | np.isnan(db))


def _documented_lse_parts(shim, x):
    """The parts of the log-sum-exp of each column of x (R, N) in the order of kernels/chunks.cuh,
    from the host build's own terms: the shift s (the maximum where finite, else 0) and the
    documented column sums of exp(x - s)."""
    m = np.max(x, axis=0)
    shift = np.where(np.isfinite(m), m, 0).astype(x.dtype)
    terms = np.zeros_like(x)
    call(shim, f"shim_elementwise_{_sfx(x.dtype)}", _INT(8), x, np.ascontiguousarray(np.broadcast_to(shift, x.shape)),
         None, terms, _I64(x.size))
    return shift, _documented_column_sums(terms)


def _documented_logsumexp(shim, x):
    """The log-sum-exp of each column of x (R, N) in the documented order: s + log(sum) from the
    host build's parts."""
    shift, sums = _documented_lse_parts(shim, x)
    out = np.zeros_like(shift)
    call(shim, f"shim_elementwise_{_sfx(x.dtype)}", _INT(9), shift, sums, None, out, _I64(out.size))
    return out


def _host_log_softmax(shim, x):
    """The host build's log-softmax over the last axis of x (B, C)."""
    out = np.full_like(x, 7)
    call(shim, f"shim_log_softmax_fwd_{_sfx(x.dtype)}", x, out, _I64(x.shape[0]), _I64(x.shape[1]))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("R, N", [(1, 1), (3, 7), (31, 8), (32, 9), (33, 50), (100, 5), (257, 3), (5000, 2)])
def test_replay_logsumexp_over_columns_in_the_documented_order(shim, dtype, R, N):
    """log(sum(exp(x), axis=0)), bit for bit in the documented order from the host build's own
    terms, and to rounding the float64 value, with its parts shift and log_sum (out = shift +
    log_sum); its gradient g * exp((x - shift) - log_sum) bit for bit from the host build's
    log-softmax and exp, and to rounding the float64 value. Columns of ordinary values, of values
    far apart (exp would overflow without the shift), with a -inf, all -inf (gives -inf), with
    +inf (gives +inf), with a NaN (gives NaN)."""
    rng = np.random.default_rng(R * 100 + N)
    x = (rng.standard_normal((R, N)) * 30).astype(dtype)
    x[:, 0] += 500
    specials = {1: -np.inf, 2: np.inf, 3: np.nan}
    for col, value in specials.items():
        if col < N:
            x[R // 2, col] = value
    if N > 4:
        x[:, 4] = -np.inf
    out, shift, log_sum = np.full(N, 7, dtype), np.full(N, 7, dtype), np.full(N, 7, dtype)
    call(shim, f"shim_logsumexp_fwd_{_sfx(dtype)}", x, out, shift, log_sum, _I64(R), _I64(N))
    np.testing.assert_array_equal(out, _documented_logsumexp(shim, x))
    want_shift, sums = _documented_lse_parts(shim, x)
    nan = np.isnan(x).any(axis=0)  # (the maximum need not propagate a NaN: the sum does)
    np.testing.assert_array_equal(shift[~nan], want_shift[~nan])
    want_log_sum = np.zeros_like(sums)  # log(sum) as the host build's 0 + log(sum)
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(9), np.zeros_like(sums), sums, None, want_log_sum,
         _I64(N))
    np.testing.assert_array_equal(log_sum, want_log_sum)
    np.testing.assert_array_equal(out, shift + log_sum)
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=0)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = m + np.log(np.exp(x64 - m).sum(axis=0))
    np.testing.assert_allclose(out, want, rtol=TOL[dtype][0] * (1 + np.log2(R)), atol=TOL[dtype][1])
    if N > 4:  # the special columns
        assert np.isnan(out[3]) and out[2] == np.inf and out[4] == -np.inf
    g = rng.standard_normal(N).astype(dtype)
    d = np.full_like(x, 7)
    call(shim, f"shim_logsumexp_bwd_{_sfx(dtype)}", g, x, shift, log_sum, d, _I64(x.size), _I64(N))
    log_softmax = np.zeros_like(x)  # (x - shift) - log(sum), the host build's
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(10), x, np.ascontiguousarray(np.broadcast_to(shift, x.shape)),
         np.ascontiguousarray(np.broadcast_to(sums, x.shape)), log_softmax, _I64(x.size))
    e = np.zeros_like(x)  # its exp, the host build's
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(8), log_softmax, np.zeros_like(x), None, e, _I64(x.size))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(d, g * e)
        np.testing.assert_allclose(d, g * np.exp(x64 - want), rtol=TOL[dtype][0], atol=TOL[dtype][1])


def test_replay_log_softmax_keeps_float32_precision_for_logits_far_from_0(shim):
    """Logits near -90 in float32 against the float64 formula, as the NumPy op's test: within an
    ulp or two of each result, where x - (s + log(sum)) rounds the log-sum-exp next to s = -90
    and is off by ulps of 90 (2e-6)."""
    x = np.array([[0.0, -1.0, -2.0]], np.float32) - 90
    x64 = x.astype(np.float64)
    want = (x64 - x64.max()) - np.log(np.exp(x64 - x64.max()).sum())
    np.testing.assert_allclose(_host_log_softmax(shim, x), want, rtol=2 * np.finfo(np.float32).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, C", [(1, 1), (7, 10), (9, 33), (20, 100), (3, 5000)])
def test_replay_log_softmax_over_the_classes_in_the_documented_order(shim, dtype, B, C):
    """(x - s) - log(sum(exp(x - s))) over the last axis (the classes of each row): bit for bit
    from the parts of each row's log-sum-exp in the documented order, from the host build's own
    terms (a row's C classes are the column of the reduction), and to rounding the float64 value;
    the gradient g - exp(out) sum(g), its sum in the documented order; rows with -inf, +inf and
    NaN logits."""
    rng = np.random.default_rng(B * 100 + C)
    x = (rng.standard_normal((B, C)) * 30).astype(dtype)
    x[0] += 400
    for row, value in {1: -np.inf, 2: np.inf, 3: np.nan}.items():
        if row < B:
            x[row, C // 2] = value
    out = _host_log_softmax(shim, x)
    shift, sums = _documented_lse_parts(shim, np.ascontiguousarray(x.T))
    want = np.zeros_like(x)
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(10), x, np.ascontiguousarray(np.broadcast_to(shift[:, None], x.shape)),
         np.ascontiguousarray(np.broadcast_to(sums[:, None], x.shape)), want, _I64(x.size))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(out, want)
        x64 = x.astype(np.float64)
        m = np.max(x64, axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        want = x64 - (m + np.log(np.exp(x64 - m).sum(axis=1, keepdims=True)))
    finite = np.isfinite(want)
    # x - lse cancels where x is the row's maximum: an error of a few ulp of x, not of the result
    err = np.abs(out[finite] - want[finite])
    assert np.all(err <= TOL[dtype][0] * (1 + np.log2(C)) * np.abs(want[finite])
                  + 4 * np.finfo(dtype).eps * np.abs(x64[finite]) + TOL[dtype][1])
    assert np.array_equal(np.isnan(out), np.isnan(want)) and np.array_equal(np.isinf(out), np.isinf(want))
    g = (rng.standard_normal((B, C)) * 10.0 ** rng.integers(-4, 4, (B, C))).astype(dtype)
    d = np.full_like(g, 7)
    call(shim, f"shim_log_softmax_bwd_{_sfx(dtype)}", g, out, d, _I64(B), _I64(C))
    e = np.zeros_like(out)  # exp(out), the host build's
    call(shim, f"shim_elementwise_{_sfx(dtype)}", _INT(8), out, np.zeros_like(out), None, e, _I64(out.size))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(d, g - e * _documented_column_sums(np.ascontiguousarray(g.T))[:, None])


def _row_tiling(shim, D):
    rows, lanes = _I64(0), _INT(0)
    shim.shim_row_tiling(_I64(D), ctypes.byref(rows), ctypes.byref(lanes))
    return rows.value, lanes.value


def _documented_row_sum(terms, P, start=0, tile=4096):
    """The KL of the row whose terms are ``terms``, starting at element ``start`` of the array,
    in the order documented in kernels/chunks.cuh, in the terms' dtype: segments in order, the
    first ending ``tile`` elements past the chunk boundary at or before ``start``, each next one
    ``tile`` further; in a segment, lane p adds terms p, p + P, ... left to right, then the lanes'
    partials are added by the halving tree (i += i + P/2, ..., i += i + 1)."""
    zero = terms.dtype.type(0)
    total = zero
    cuts = list(range(start - start % 4 + tile - start, len(terms), tile))
    for s0, s1 in zip([0] + cuts, cuts + [len(terms)]):
        seg = terms[s0:s1]
        part = [zero] * P
        for p in range(P):
            for v in seg[p::P]:
                part[p] = part[p] + v
        o = P // 2
        while o:
            for i in range(o):
                part[i] = part[i] + part[i + o]
            o //= 2
        total = total + part[0]
    return total


def test_row_tiling(shim):
    """Tiles of whole rows start on chunk boundaries (R*D % 4 == 0) and fill the shared buffer
    (less than the next multiple of 4 / gcd(D, 4) rows left out); a row segment summed by the
    fewest lanes that take 8 terms or fewer each (up to 32): the lanes fix the order of the sums."""
    from minivae.gpu.kernels import BLOCK, TILE

    assert TILE == 4096 and TILE % (4 * BLOCK) == 0  # MV_TILE, MV_TILE_CHUNKS = 4 chunks a thread
    for D in [1, 2, 3, 5, 8, 10, 16, 17, 50, 64, 100, 256, 784, 1001, 1024, 1025, 2048, 2049, 4101, 10 ** 6]:
        R, P = _row_tiling(shim, D)
        m = 4 // math.gcd(D, 4)
        assert R >= 1 and P & (P - 1) == 0 and 1 <= P <= 32 and BLOCK % P == 0
        if m * D <= TILE:
            assert R % m == 0 and R * D <= TILE < (R + m) * D
        else:
            assert R == 1
        assert 8 * P >= min(D, TILE) or P == 32
        assert P == 1 or 8 * (P // 2) < min(D, TILE), (D, P)  # half as many would take more than 8
    assert _row_tiling(shim, 50) == (80, 8) and _row_tiling(shim, 784) == (5, 32)
    assert _row_tiling(shim, 10) == (408, 2) and _row_tiling(shim, 1025) == (1, 32)


def test_chunk_division_is_exact_past_32_bits(shim):
    """mv_div, which gives a chunk's row (its upstream) and its place in a repeating input, divides
    in 32 bits only where both numbers fit: the quotient is exact on either side of 2**31 and
    2**32 (arrays of 2**31 elements and more fit on a GPU of 80 GB)."""
    shim.shim_div.restype = ctypes.c_longlong
    for e in [0, 1, 7, 2 ** 31 - 2, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 5, 2 ** 40 + 3, 2 ** 62 + 1]:
        for D in [1, 3, 4, 784, 2 ** 31 - 1, 2 ** 31, 2 ** 32 + 1, 2 ** 33 + 1]:
            assert shim.shim_div(_I64(e), _I64(D)) == e // D, (e, D)


def test_launch_grid_has_one_block_per_tile(shim):
    """The wrappers' copy of the tiling (for the grid size) equals the kernels' own."""
    from minivae.gpu.kernels import rows_per_tile

    for D in list(range(1, 1100)) + [2047, 2048, 2049, 4095, 4096, 4097, 4101, 10 ** 6]:
        assert rows_per_tile(D) == _row_tiling(shim, D)[0], D


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_replay_row_kernels(shim, dtype, shape):
    rtol, atol = TOL[dtype]
    B, D = shape
    seed, offset, stream = 99, 3, 0
    mu, logvar = _inputs(shape, dtype, B * D)
    dz = _inputs(shape, dtype, B * D + 1)[0]
    gkl = _inputs((B,), dtype, B * D + 2)[0]
    want_z, eps, std = _ref_reparam(mu, logvar, seed, offset, stream)
    want_kl = _ref_kl_terms(mu, logvar).sum(axis=1)
    m, lv = mu.astype(np.float64), logvar.astype(np.float64)
    kl_rtol = rtol * max(1, D) ** 0.5 * 4
    sfx = _sfx(dtype)
    # the device's own terms, summed in the documented order: the replay must equal it exactly
    terms = np.empty(B * D, dtype)
    call(shim, f"shim_elementwise_{sfx}", _INT(2), mu.ravel(), logvar.ravel(), None, terms, _I64(B * D))
    P = _row_tiling(shim, D)[1]
    ordered = np.array([_documented_row_sum(terms[r * D:(r + 1) * D], P, r * D) for r in range(B)], dtype)

    kl = np.full(B, np.nan, dtype)
    call(shim, f"shim_kl_fwd_{sfx}", mu, logvar, kl, _I64(B), _I64(D))
    np.testing.assert_allclose(kl, want_kl, rtol=kl_rtol, atol=atol)
    np.testing.assert_array_equal(kl, ordered)

    dmu, dlv = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
    call(shim, f"shim_kl_bwd_{sfx}", gkl, mu, logvar, dmu, dlv, _I64(B), _I64(D))
    np.testing.assert_allclose(dmu, gkl[:, None] * m, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dlv, gkl[:, None] * 0.5 * np.expm1(lv), rtol=rtol, atol=atol)

    z, kl = np.full(shape, np.nan, dtype), np.full(B, np.nan, dtype)
    call(shim, f"shim_reparam_kl_fwd_{sfx}", mu, logvar, z, kl, _I64(B), _I64(D),
         _U64(seed), _U64(offset), None, _U32(stream))
    np.testing.assert_allclose(z, want_z, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(kl, ordered)

    for g in (gkl, None):
        dmu, dlv = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
        # the offset from device memory: 0 + a counter holding it
        call(shim, f"shim_reparam_kl_bwd_{sfx}", dz, g, mu, logvar, dmu, dlv, _I64(B), _I64(D),
             _U64(seed), _U64(0), np.array([offset], np.uint64), _U32(stream))
        gg = np.zeros(B) if g is None else g.astype(np.float64)
        np.testing.assert_allclose(dmu, dz + gg[:, None] * m, rtol=rtol, atol=atol)
        np.testing.assert_allclose(
            dlv, dz * eps * std * 0.5 + gg[:, None] * 0.5 * np.expm1(lv), rtol=rtol, atol=10 * atol)


@pytest.fixture(scope="module")
def tile_shims(shim, tmp_path_factory):
    """MV_TILE -> the host shim built with it: the default's, and those of every tile among the
    candidate designs of benchmarks/ab_row_kernels.py (a tile's replay is that of every design
    that runs it, a block or a warp per tile)."""
    libs = {TILE_DEFAULT: shim}
    for opts in _ab_script().VARIANTS.values():
        for o in opts:
            if o.startswith("-DMV_TILE=") and int(o.split("=", 1)[1]) not in libs:
                libs[int(o.split("=", 1)[1])] = _build_shim(tmp_path_factory, o)
    for tile, lib in libs.items():
        lib.shim_tile.restype = ctypes.c_longlong
        assert lib.shim_tile() == tile
    return libs


TILE_DEFAULT = 4096
# rows shorter and longer than the candidates' tiles (512, 256), starting on and off chunk
# boundaries, and the empty array
OTHER_TILE_SHAPES = [(0, 50), (1, 1), (5, 3), (1370, 3), (7, 50), (170, 50), (4, 64), (3, 253), (3, 254),
                     (5, 509), (5, 510), (3, 513), (5, 784), (3, 1025), (2, 5000), (3, 5001)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_row_kernels_of_other_tiles(tile_shims, dtype):
    """The forward row kernels of each candidate tile, replayed on the host: kl in the documented
    order of that tile bit for bit (rows cut at every `tile` elements), equal to the default's
    where a row is one segment of both (D <= tile - 3), z bit for bit the reparameterization
    kernel's."""
    rtol, atol = TOL[dtype]
    seed, offset, stream = 99, 3, 1
    sfx = _sfx(dtype)
    base = tile_shims[TILE_DEFAULT]
    assert set(tile_shims) > {TILE_DEFAULT}
    for B, D in OTHER_TILE_SHAPES:
        mu, logvar = _inputs((B, D), dtype, B * D + 7)
        terms = np.empty(B * D, dtype)
        call(base, f"shim_elementwise_{sfx}", _INT(2), mu.ravel(), logvar.ravel(), None, terms, _I64(B * D))
        z_flat = np.full(B * D, np.nan, dtype)
        call(base, f"shim_reparam_fwd_{sfx}", mu, logvar, z_flat, _I64(B * D), _U64(seed), _U64(offset),
             None, _U32(stream))
        kl_default = np.full(B, np.nan, dtype)
        call(base, f"shim_kl_fwd_{sfx}", mu, logvar, kl_default, _I64(B), _I64(D))
        for tile, lib in tile_shims.items():
            P = _row_tiling(lib, D)[1]
            want = np.array([_documented_row_sum(terms[r * D:(r + 1) * D], P, r * D, tile) for r in range(B)], dtype)
            kl = np.full(B, np.nan, dtype)
            call(lib, f"shim_kl_fwd_{sfx}", mu, logvar, kl, _I64(B), _I64(D))
            np.testing.assert_array_equal(kl, want, err_msg=f"tile {tile}, {(B, D)}")
            np.testing.assert_allclose(kl, _ref_kl_terms(mu, logvar).sum(axis=1),
                                       rtol=rtol * max(1, D) ** 0.5 * 4, atol=atol)
            if D <= tile - 3:
                np.testing.assert_array_equal(kl, kl_default, err_msg=f"tile {tile}, {(B, D)}")
            z, kl2 = np.full((B, D), np.nan, dtype), np.full(B, np.nan, dtype)
            call(lib, f"shim_reparam_kl_fwd_{sfx}", mu, logvar, z, kl2, _I64(B), _I64(D), _U64(seed),
                 _U64(offset), None, _U32(stream))
            np.testing.assert_array_equal(z.ravel(), z_flat, err_msg=f"tile {tile}, {(B, D)}")
            np.testing.assert_array_equal(kl2, want, err_msg=f"tile {tile}, {(B, D)}")


def test_other_tiles_cut_long_rows_elsewhere(tile_shims):
    """The order does depend on the tile where rows are longer: terms whose rounding shows the
    grouping give a different float32 kl for some row (so the bit-for-bit checks above could fail)."""
    B, D = 40, 5001
    rng = np.random.default_rng(3)
    mu = (rng.standard_normal((B, D)) * 10.0 ** rng.integers(-3, 4, (B, D))).astype(np.float32)
    logvar = np.zeros((B, D), np.float32)
    kls = {}
    for tile, lib in tile_shims.items():
        kls[tile] = np.full(B, np.nan, np.float32)
        call(lib, "shim_kl_fwd_f32", mu, logvar, kls[tile], _I64(B), _I64(D))
    for tile in kls:
        if tile != TILE_DEFAULT:
            assert not np.array_equal(kls[tile], kls[TILE_DEFAULT]), tile


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segment_sum_order_is_the_documented_one(shim, dtype):
    """The shared order function itself, on terms where the order shows in the rounding."""
    rng = np.random.default_rng(5)
    terms = (rng.standard_normal(3000) * 10.0 ** rng.integers(-8, 8, 3000)).astype(dtype)
    fn = getattr(shim, f"shim_segment_sum_{_sfx(dtype)}")
    fn.restype = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    for n, P in [(1, 1), (7, 1), (50, 8), (100, 16), (784, 32), (2048, 32)]:
        got = dtype(fn(_ptr(terms), _I64(n), _INT(P)))
        assert got == _documented_row_sum(terms[:n], P, tile=10 ** 9), (n, P)


# ------------------------------------------------------------------------------ wrappers on a fake CuPy
_CTYPES = {"mv_i64": np.int64, "mv_u64": np.uint64, "mv_u32": np.uint32, "int": np.int32,
           "float": np.float32, "double": np.float64}
_CSCALAR = {"mv_i64": ctypes.c_longlong, "mv_u64": ctypes.c_ulonglong, "mv_u32": ctypes.c_uint, "int": ctypes.c_int,
            "float": ctypes.c_float, "double": ctypes.c_double}
_PTR = {"float": np.float32, "double": np.float64, "mv_u32": np.uint32, "mv_u64": np.uint64, "mv_i64": np.int64}


def _signatures():
    sigs = {}
    for cu in CU_FILES:
        text = (KERNELS / cu).read_text()
        for name, params in re.findall(r'extern "C" __global__ void\s+(?:MV_ROW_FWD_BOUNDS\s+)?(\w+)\(([^)]*)\)', text):
            plist = []
            for p in params.split(","):
                p = " ".join(p.split())
                m = re.match(r"(?:const )?(\w+)\s*(\*?)\s*(\w+)$", p)
                assert m, p
                plist.append((m.group(1), m.group(2) == "*", m.group(3)))
            sigs[name] = plist
    return sigs


#: MV_COLUMNS of kernels/chunks.cuh: the columns a block of a column reduction takes
MV_COLUMNS = int(re.search(r"^#define MV_COLUMNS (\d+)", (KERNELS / "chunks.cuh").read_text(), re.M).group(1))


class _FakeKernel:
    """Checks each argument against the C signature and the grid of a column reduction, then runs
    the host replay."""

    #: The column reductions and the parameter that counts their columns: they have no grid-stride
    #: loop, a block reduces MV_COLUMNS columns (kernels/device.cuh), so their grid must be
    #: ceil(columns / MV_COLUMNS) blocks (a smaller one leaves columns unwritten on the device,
    #: which the host replay, run whole, would not show)
    COLUMN_REDUCTIONS = {"mv_bias_grad": "N", "mv_logsumexp_fwd": "N", "mv_log_softmax_fwd": "B",
                         "mv_log_softmax_bwd": "B"}

    REPLAY = {
        "mv_philox_words": ("shim_philox_words", lambda a: a + [_I64(0)]),
        "mv_normal": ("shim_generate", lambda a: a[:2] + [_INT(0)] + a[2:]),
        "mv_uniform": ("shim_generate", lambda a: a[:2] + [_INT(1)] + a[2:]),
        "mv_gumbel": ("shim_generate", lambda a: a[:2] + [_INT(2)] + a[2:]),
    }

    def __init__(self, lib, name, sig, calls, replay=None):
        self.lib, self.name, self.sig, self.calls = lib, name, sig, calls
        self.replay = replay  # a function of the C arguments, instead of the shim's default replay

    def __call__(self, grid, block, args):
        assert len(args) == len(self.sig), f"{self.name}: {len(args)} args for {len(self.sig)} params"
        assert len(grid) == 1 and grid[0] >= 1
        # MV_BLOCK (the row kernels' tiles assume it too); the step counter runs on one thread
        assert block == ((1,) if self.name == "mv_step_advance" else (256,))
        cargs = []
        for a, (ctype, is_ptr, pname) in zip(args, self.sig):
            if is_ptr:
                if isinstance(a, np.ndarray):
                    assert a.dtype == _PTR[ctype], f"{self.name}.{pname}: {a.dtype} for {ctype}*"
                    assert a.flags.c_contiguous
                    cargs.append(_ptr(a))
                else:  # a null pointer must be an 8-byte zero
                    assert type(a) is np.uint64 and a == 0, f"{self.name}.{pname}: {a!r}"
                    cargs.append(None)
            else:
                assert type(a) is _CTYPES[ctype], f"{self.name}.{pname}: {type(a)} for {ctype}"
                cargs.append(_CSCALAR[ctype](a.item()))
        base = re.sub(r"_f(32|64)$", "", self.name)
        sfx = self.name[len(base):]
        if base in self.COLUMN_REDUCTIONS:
            columns = args[[pname for _, _, pname in self.sig].index(self.COLUMN_REDUCTIONS[base])]
            assert grid == (-(-int(columns) // MV_COLUMNS),), f"{self.name}: grid {grid} for {columns} columns"
        if self.replay is not None:
            self.replay(cargs)
        else:
            if base in self.REPLAY:
                shim_name, conv = self.REPLAY[base]
                cargs = conv(cargs)
            else:
                shim_name = "shim_" + base[len("mv_"):]
            fn = getattr(self.lib, shim_name + sfx)
            fn.restype = None
            fn(*cargs)
        self.calls.append((self.name, grid, block))


@pytest.fixture
def fake_gpu(shim, monkeypatch):
    import minivae.gpu.kernels as K

    fake_cp = types.SimpleNamespace(
        ndarray=np.ndarray, ascontiguousarray=np.ascontiguousarray, empty=np.empty,
        empty_like=np.empty_like, zeros=np.zeros, zeros_like=np.zeros_like, uint32=np.uint32)
    sigs = _signatures()
    calls = []
    monkeypatch.setattr(K, "cp", fake_cp)
    monkeypatch.setattr(K, "require", lambda: None)
    monkeypatch.setattr(K, "_max_grid", lambda: 4)
    monkeypatch.setattr(K, "get_function", lambda base, dtype=None: _FakeKernel(
        shim, base if dtype is None else f"{base}_{K._SUFFIX[np.dtype(dtype)]}",
        sigs[base if dtype is None else f"{base}_{K._SUFFIX[np.dtype(dtype)]}"], calls))
    return K, calls


def test_signatures_parsed():
    sigs = _signatures()
    assert set(sigs) == {e for v in ENTRY_POINTS.values() for e in v}
    assert [p[2] for p in sigs["mv_reparam_kl_bwd_f32"]] == [
        "dz", "gkl", "mu", "logvar", "dmu", "dlogvar", "B", "D", "seed", "offset", "offset_from", "stream"]


def test_each_kernel_is_loaded_from_its_file_by_its_name_once_per_device(monkeypatch):
    """get_function asks the module of the file that defines a kernel for it by its full name
    (base_f32 or base_f64 with a dtype), compiles each file once per device, and caches each
    kernel by that name and the device: a float64 kernel asked for after the float32 one is the
    float64 one, and each device gets kernels of its own module (a CUDA module is loaded on one
    device). Every entry point of the sources can be asked for."""
    import minivae.gpu.kernels as K

    device, compiled = [0], []

    class RawModule:  # cupy.RawModule as the wrappers use it
        def __init__(self, code, options):
            self.file = re.match(r"// minivae kernel source: (\S+) ", code).group(1)
            self.device = device[0]
            compiled.append((self.file, self.device))
            assert options == _source.NVRTC_OPTIONS

        def get_function(self, name):
            assert name in ENTRY_POINTS[self.file], f"{self.file} defines no {name}"
            return self.file, self.device, name

    runtime = types.SimpleNamespace(getDevice=lambda: device[0])
    cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setattr(K, "cp", types.SimpleNamespace(RawModule=RawModule, cuda=cuda))
    monkeypatch.setattr(K, "require", lambda: None)
    monkeypatch.setattr(K, "_modules", {})
    monkeypatch.setattr(K, "_functions", {})
    entry_points = {name: cu for cu, names in ENTRY_POINTS.items() for name in names}
    for device[0] in (0, 1):
        asked = set()
        for base in K._FUNC_FILE:
            for dtype in [None] if base in entry_points else [np.float32, np.float64]:
                name = base if dtype is None else f"{base}_{_sfx(dtype)}"
                for _ in range(2):  # the second time from the cache
                    assert K.get_function(base, dtype) == (entry_points[name], device[0], name)
                asked.add(name)
        assert asked == set(entry_points)
    assert sorted(compiled) == sorted((cu, d) for cu in ENTRY_POINTS for d in (0, 1))


def test_the_gpu_path_is_refused_without_cupy_or_a_device(monkeypatch):
    """is_available is False, and require raises the error that says why, where CuPy is missing,
    sees no device, or cannot ask the driver (no driver: CuPy raises); require passes once a
    device is seen."""
    import minivae.gpu.kernels as K

    count = [0]

    def device_count():
        if count[0] is None:
            raise RuntimeError("cudaErrorInsufficientDriver")
        return count[0]

    monkeypatch.setattr(K, "_ready", False)
    monkeypatch.setattr(K, "cp", None)
    assert not K.is_available()
    with pytest.raises(RuntimeError, match="minivae.gpu needs CuPy"):
        K.require()
    runtime = types.SimpleNamespace(getDeviceCount=device_count)
    monkeypatch.setattr(K, "cp", types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))
    for count[0] in (0, None):
        assert not K.is_available()
        with pytest.raises(RuntimeError, match="CuPy is installed but no CUDA device is visible"):
            K.require()
    count[0] = 1
    assert K.is_available()
    K.require()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wrappers_on_fake_gpu(fake_gpu, dtype):
    K, calls = fake_gpu
    rtol, atol = TOL[dtype]
    seed, offset = (1 << 64) - 3, (1 << 40) + 1
    np.testing.assert_array_equal(K.philox_words(13, seed, offset, 5), mr.philox_words(13, seed, offset, 5))
    np.testing.assert_allclose(K.normal((3, 7), seed, offset, dtype), mr.normal((3, 7), seed, offset, dtype),
                               rtol=rtol, atol=atol)
    np.testing.assert_array_equal(K.uniform(9, seed, offset, dtype), mr.uniform(9, seed, offset, dtype))
    assert_same_gumbel(K.gumbel((5, 3, 7), seed, offset, dtype, stream=2),
                       mr.gumbel((5, 3, 7), seed, offset, dtype, stream=2))

    shape = (6, 5, 50)  # (samples, batch, D): 30 rows of D = 50, reduced over the last axis
    mu, logvar = _inputs(shape, dtype, 3)
    dz = _inputs(shape, dtype, 4)[0]
    gkl = _inputs((6, 5), dtype, 5)[0]
    want_z, eps, std = _ref_reparam(mu, logvar, seed, offset)
    want_kl = _ref_kl_terms(mu, logvar).sum(-1)

    z = K.reparameterize_forward(mu, logvar, seed, offset)
    assert z.shape == shape and z.dtype == dtype
    np.testing.assert_allclose(z, want_z, rtol=rtol, atol=atol)
    dmu, dlv = K.reparameterize_backward(dz, logvar, seed, offset)
    assert dmu is dz
    np.testing.assert_allclose(dlv, dz * eps * std * 0.5, rtol=rtol, atol=atol)
    dmu, _ = K.reparameterize_backward(dz, logvar, seed, offset, copy_dmu=True)
    assert dmu is not dz and np.array_equal(dmu, dz)

    kl = K.kl_normal_std_forward(mu, logvar)
    assert kl.shape == (6, 5)
    np.testing.assert_allclose(kl, want_kl, rtol=10 * rtol, atol=atol)
    dmu, dlv = K.kl_normal_std_backward(gkl, mu, logvar)
    np.testing.assert_allclose(dmu, gkl[..., None] * mu, rtol=rtol, atol=atol)

    z2, kl2 = K.reparameterize_kl_forward(mu, logvar, seed, offset)
    np.testing.assert_array_equal(z2, z)  # the same eps bits and the same formula
    np.testing.assert_allclose(kl2, want_kl, rtol=10 * rtol, atol=atol)
    dmu, dlv = K.reparameterize_kl_backward(dz, gkl, mu, logvar, seed, offset)
    g = gkl.astype(np.float64)[..., None]
    np.testing.assert_allclose(dmu, dz + g * mu, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dlv, dz * eps * std * 0.5 + g * 0.5 * np.expm1(logvar.astype(np.float64)),
                               rtol=rtol, atol=10 * atol)
    dmu_none, _ = K.reparameterize_kl_backward(dz, None, mu, logvar, seed, offset)
    np.testing.assert_allclose(dmu_none, dz, rtol=0, atol=0)
    assert {c[0] for c in calls} >= {f"mv_reparam_kl_bwd_{_sfx(dtype)}", f"mv_kl_fwd_{_sfx(dtype)}"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_draws_offset_from_device_memory_is_added_to_its_offset(fake_gpu, dtype):
    """offset_from (a one-value uint64 array the kernel reads when it runs) plus offset names the
    draw: offset 3 with a counter holding 2**40 draws the noise of offset 2**40 + 3, through each
    wrapper that takes a draw; a wrong array is refused before any launch."""
    K, calls = fake_gpu
    seed, offset = 77, (1 << 40) + 3
    counter = np.array([1 << 40], np.uint64)
    mu, logvar = _inputs((4, 50), dtype, 8)
    dz, gkl = _inputs((4, 50), dtype, 9)[0], _inputs((4,), dtype, 10)[0]
    pairs = [(K.reparameterize_forward(mu, logvar, seed, offset),
              K.reparameterize_forward(mu, logvar, seed, 3, offset_from=counter)),
             (K.reparameterize_backward(dz, logvar, seed, offset)[1],
              K.reparameterize_backward(dz, logvar, seed, 3, offset_from=counter)[1]),
             (K.reparameterize_kl_forward(mu, logvar, seed, offset)[0],
              K.reparameterize_kl_forward(mu, logvar, seed, 3, offset_from=counter)[0]),
             (K.reparameterize_kl_backward(dz, gkl, mu, logvar, seed, offset)[1],
              K.reparameterize_kl_backward(dz, gkl, mu, logvar, seed, 3, offset_from=counter)[1]),
             *((draw((4, 50), seed, offset, dtype), draw((4, 50), seed, 3, dtype, offset_from=counter))
               for draw in (K.normal, K.uniform, K.gumbel))]
    for want, got in pairs:
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(K.reparameterize_forward(mu, logvar, seed, 3), pairs[0][0])
    np.testing.assert_allclose(pairs[-3][1], mr.normal((4, 50), seed, offset, dtype), *TOL[dtype])
    np.testing.assert_array_equal(pairs[-2][1], mr.uniform((4, 50), seed, offset, dtype))
    assert_same_gumbel(pairs[-1][1], mr.gumbel((4, 50), seed, offset, dtype))
    n = len(calls)
    for bad in (np.array([1], np.int64), np.array([1, 2], np.uint64), 5):
        with pytest.raises(ValueError, match="offset_from"):
            K.reparameterize_forward(mu, logvar, seed, 3, offset_from=bad)
        for draw in (K.normal, K.uniform, K.gumbel):
            with pytest.raises(ValueError, match="offset_from"):
                draw((4, 50), seed, 3, dtype, offset_from=bad)
    assert len(calls) == n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kl_kernels_and_the_numpy_op_agree_near_the_prior(fake_gpu, dtype):
    """One KL term per row at logvar near 0, where e^logvar - 1 - logvar cancels: the kernels and
    kl_normal_std's NumPy code compute it with the same operations (expm1(logvar) - logvar), so
    the KL agrees to a few ulp(logvar) (the libraries' expm1 may differ in the last bit), not
    to ulp(1) as exp(logvar) - 1 - logvar would; d/dlogvar to a few ulp of itself."""
    import minivae as mv
    from minivae import functional as F

    K, _ = fake_gpu
    logvar = np.array([[0.1, 1e-3, -2e-4, 1e-4, 3e-6, -3e-6, 1e-8, 0.0]], dtype).T
    mu = np.zeros_like(logvar)
    mu[0] = 0.25
    gkl = np.linspace(0.5, 2.0, len(logvar)).astype(dtype)
    lv = mv.Tensor(logvar, requires_grad=True)
    kl = F.kl_normal_std(mv.Tensor(mu), lv)
    kl.backward(gkl)
    eps = np.finfo(dtype).eps
    assert (np.abs(K.kl_normal_std_forward(mu, logvar) - kl.data) <= 4 * eps * np.abs(logvar[:, 0])).all()
    np.testing.assert_allclose(K.kl_normal_std_backward(gkl, mu, logvar)[1], lv.grad, rtol=4 * eps, atol=0)


# (mu, logvar) of one-term rows where mu^2 or e^logvar - 1 overflows but the KL, their sum halved,
# does not; the last row's KL is past the largest number
WIDE_KL_ROWS = {np.float32: [(0.0, 88.75), (0.0, 89.0), (1e3, 89.4), (2.5e19, 0.0), (0.0, 89.5)],
                np.float64: [(0.0, 709.8), (0.0, 710.0), (1e3, 710.45), (1.5e154, 0.0), (0.0, 710.5)]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kl_kernels_and_the_numpy_op_are_finite_where_the_kl_is(fake_gpu, dtype):
    """Rows whose KL term is finite although e^logvar - 1 or mu^2 overflows (logvar in [88.72,
    89.42] in float32): the kernels, fused or not, give kl_normal_std's KL and d/dlogvar there,
    finite, to a few ulp (the libraries' expm1 may differ in the last bit); past the largest
    number both give inf."""
    import minivae as mv
    from minivae import functional as F

    K, _ = fake_gpu
    mu, logvar = (np.array([[row[i]] for row in WIDE_KL_ROWS[dtype]], dtype) for i in (0, 1))
    gkl = np.ones(len(mu), dtype)
    lv = mv.Tensor(logvar, requires_grad=True)
    kl = F.kl_normal_std(mv.Tensor(mu), lv)
    kl.backward(gkl)
    assert np.isfinite(kl.data[:-1]).all() and np.isfinite(lv.grad[:-1]).all()
    rtol = 4 * np.finfo(dtype).eps
    for got_kl, got_dlv in ((K.kl_normal_std_forward(mu, logvar),
                             K.kl_normal_std_backward(gkl, mu, logvar)[1]),
                            (K.reparameterize_kl_forward(mu, logvar, 5, 0)[1],
                             K.reparameterize_kl_backward(np.zeros_like(mu), gkl, mu, logvar, 5, 0)[1])):
        np.testing.assert_allclose(got_kl, kl.data, rtol=rtol, atol=0)
        np.testing.assert_allclose(got_dlv, lv.grad, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_backward_without_a_kl_gradient_adds_no_kl_terms(fake_gpu, dtype):
    """With no gradient for the KL (gkl None: a model that uses z alone, as the IWAE's second
    layer), the fused backward is the reparameterization's: dmu = dz and its dlogvar, bit for
    bit, finite where the KL's terms would be 0 * inf (mu infinite, exp(logvar) overflowing)."""
    K, _ = fake_gpu
    seed, offset = 5, 11
    mu, logvar = _inputs((6, 7), dtype, 12)
    mu[0, :3] = [np.inf, -np.inf, 1.0]
    logvar[1, :3] = 100.0 if dtype == np.float32 else 800.0  # exp overflows, exp(logvar / 2) does not
    dz = _inputs((6, 7), dtype, 13)[0]
    dmu, dlogvar = K.reparameterize_kl_backward(dz, None, mu, logvar, seed, offset)
    np.testing.assert_array_equal(dmu, dz)
    np.testing.assert_array_equal(dlogvar, K.reparameterize_backward(dz, logvar, seed, offset)[1])
    assert np.all(np.isfinite(dlogvar))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_reads_the_steps_scalars_from_device_memory(fake_gpu, dtype):
    """With step_scalars = (eps_s, neg_step, decay) in a float64 array, the kernel ignores those
    arguments and gives the bits it gives when they are passed as arguments."""
    K, calls = fake_gpu
    rng = np.random.default_rng(3)
    p0, g, m0, v0 = (rng.standard_normal(300).astype(dtype) for _ in range(4))
    v0 = np.abs(v0)
    hyper = dict(b1=0.9, b2=0.999, weight_decay=0.0)
    scalars = dict(eps_s=1e-8 * 0.0316, neg_step=-1e-3 * 0.0316 / 0.1, decay=1 - 1e-3 * 0.01)
    results = []
    for device in (False, True):
        p, m, v = p0.copy(), m0.copy(), v0.copy()
        if device:
            K.adam_update(p, g, m, v, None, **hyper, eps_s=0.5, neg_step=7.0, decay=0.25,
                          step_scalars=np.array([scalars["eps_s"], scalars["neg_step"], scalars["decay"]]))
        else:
            K.adam_update(p, g, m, v, None, **hyper, **scalars)
        results.append((p, m, v))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    for bad in (np.zeros(3, np.float32), np.zeros(6)[::2]):  # another dtype; three values 16 bytes apart
        with pytest.raises(ValueError, match="step_scalars"):
            K.adam_update(p, g, m, v, None, **hyper, **scalars, step_scalars=bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_sums_of_empty_rows_are_zero(fake_gpu, dtype):
    """The forward row kernels write every row's kl (no memset first); rows of D = 0, which no
    kernel runs on, sum to 0."""
    K, calls = fake_gpu
    empty = np.zeros((3, 0), dtype)
    np.testing.assert_array_equal(K.kl_normal_std_forward(empty, empty), np.zeros(3, dtype))
    z, kl = K.reparameterize_kl_forward(empty, empty, 1, 2)
    assert z.shape == (3, 0)
    np.testing.assert_array_equal(kl, np.zeros(3, dtype))
    assert not calls


def test_wrappers_validate(fake_gpu):
    K, _ = fake_gpu
    mu, logvar = _inputs((4, 3), np.float32)
    with pytest.raises(TypeError, match="logvar: dtype float64 differs from float32"):
        K.reparameterize_forward(mu, logvar.astype(np.float64), 0)
    with pytest.raises(ValueError, match=r"logvar: shape \(2, 3\) differs from \(4, 3\)"):
        K.reparameterize_forward(mu, logvar[:2], 0)
    with pytest.raises(ValueError, match="seed must be at least 0, got -1"):
        K.reparameterize_forward(mu, logvar, -1)
    with pytest.raises(TypeError, match="mu: dtype must be float32 or float64, got int32"):
        K.kl_normal_std_forward(mu.astype(np.int32), logvar)
    with pytest.raises(ValueError, match="dz and gkl are both None"):
        K.reparameterize_kl_backward(None, None, mu, logvar, 0)
    with pytest.raises(ValueError, match=r"gkl: shape \(4, 3\) differs from \(4,\)"):  # one value a row
        K.reparameterize_kl_backward(mu, mu, mu, logvar, 0)
    with pytest.raises(TypeError, match="gkl: dtype float64 differs from float32"):
        K.reparameterize_kl_backward(mu, np.zeros(4), mu, logvar, 0)
    assert K.reparameterize_forward(mu[:0], logvar[:0], 0).shape == (0, 3)
    assert K.reparameterize_forward(mu[0, 0, ...], logvar[0, 0, ...], 0).shape == ()
    assert K.kl_normal_std_forward(np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32)).tolist() == [0, 0, 0]
    assert K.kl_normal_std_forward(np.ones(4, np.float32), np.zeros(4, np.float32)).shape == ()
    with pytest.raises(ValueError, match="row ops reduce over the last axis: a 0-d array has none"):
        K.kl_normal_std_forward(np.ones((), np.float32), np.zeros((), np.float32))
    logits = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"x: shape \(2, 3\) is not \(2, 4, 3\) or that of its trailing axes"):
        K.bernoulli_log_prob_forward(logits, np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="x: dtype"):
        K.bernoulli_log_prob_forward(logits, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="g: shape"):
        K.bernoulli_log_prob_backward(np.zeros(4, np.float32), logits, np.zeros((4, 3), np.float32))
    np.testing.assert_allclose(K.bernoulli_log_prob_forward(logits, np.zeros((4, 3), np.float32)),
                               np.full((2, 4), -3 * np.log(2)), rtol=1e-6)
    assert K.bernoulli_log_prob_forward(logits[:, :0], np.zeros((0, 3), np.float32)).shape == (2, 0)
    with pytest.raises(ValueError, match="mu: shape"):
        K.gaussian_log_prob_forward(logits, np.zeros((2, 4), np.float32), np.zeros((), np.float32))
    with pytest.raises(TypeError, match="logvar: dtype"):
        K.gaussian_log_prob_forward(logits, np.zeros((), np.float32), np.zeros(3))
    zero = np.zeros((), np.float32)
    np.testing.assert_allclose(K.gaussian_log_prob_forward(logits, zero, zero),
                               np.full((2, 4), -1.5 * np.log(2 * np.pi)), rtol=1e-6)
    dx, dmu, dlv = K.gaussian_log_prob_backward(np.ones((2, 4), np.float32), logits, zero, zero,
                                                needs=(True, False, False))
    assert dmu is None and dlv is None and dx.shape == logits.shape
    out, b = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="b: shape"):
        K.bias_act(out, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="b: dtype"):
        K.bias_act(out, b.astype(np.float64))
    with pytest.raises(ValueError, match="in place"):  # a copy would take the bias and be lost
        K.bias_act(out.T, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="0-d"):
        K.bias_act(np.ones((), np.float32))
    assert K.bias_act(out[:0], b).shape == (0, 3)
    with pytest.raises(ValueError, match="g: shape"):
        K.relu_grad(np.ones((3, 4), np.float32), out)
    with pytest.raises(ValueError, match="y: shape"):
        K.bias_grad(out, np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="y: dtype"):
        K.bias_grad(out, out.astype(np.float64))
    with pytest.raises(ValueError, match="0-d"):
        K.bias_grad(np.ones((), np.float32))
    d, db = K.bias_grad(np.ones((0, 3), np.float32))  # no rows: zero sums
    np.testing.assert_array_equal(db, np.zeros(3, np.float32))
    assert K.bias_grad(np.ones((4, 0), np.float32))[1].shape == (0,)
    with pytest.raises(ValueError, match="0-d"):
        K.logsumexp_forward(np.ones((), np.float32))
    with pytest.raises(ValueError, match="zero rows"):
        K.logsumexp_forward(np.ones((0, 3), np.float32))
    parts = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="g: shape"):
        K.logsumexp_backward(np.ones(4, np.float32), out, *parts)
    with pytest.raises(TypeError, match="shift: dtype"):
        K.logsumexp_backward(np.ones(3, np.float32), out, np.zeros(3), parts[1])
    with pytest.raises(ValueError, match="log_sum: shape"):
        K.logsumexp_backward(np.ones(3, np.float32), out, parts[0], np.ones(4, np.float32))
    assert [a.shape for a in K.logsumexp_forward(np.ones((4, 0), np.float32))] == [(0,)] * 3
    with pytest.raises(ValueError, match="no classes"):
        K.log_softmax_forward(np.ones((3, 0), np.float32))
    with pytest.raises(ValueError, match="g: shape"):
        K.log_softmax_backward(np.ones((3, 4), np.float32), out)
    assert K.log_softmax_forward(np.ones((0, 3), np.float32)).shape == (0, 3)
    np.testing.assert_allclose(K.log_softmax_forward(np.zeros((2, 4), np.float32)), np.full((2, 4), -np.log(4)),
                               rtol=1e-6)
    lse, shift, log_sum = K.logsumexp_forward(np.zeros((4, 2, 3), np.float32))
    np.testing.assert_allclose(lse, np.full((2, 3), np.log(4)), rtol=1e-6)
    np.testing.assert_array_equal(shift, np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(log_sum, lse)
    # non-contiguous inputs are made contiguous before the launch
    np.testing.assert_array_equal(K.relu_grad(np.asfortranarray(mu), out), mu)
    d, db = K.bias_grad(np.asfortranarray(mu), out)
    np.testing.assert_array_equal(d, mu)
    np.testing.assert_allclose(db, mu.sum(axis=0), rtol=1e-6)
    z = K.reparameterize_forward(np.asfortranarray(mu), logvar, 8)
    np.testing.assert_array_equal(z, K.reparameterize_forward(mu, logvar, 8))


# rows of D = 12 (a multiple of the four elements of a vector), 13 (rows start off the vectors'
# boundaries) and 4099 (rows cut into segments)
OFFSET_VIEW_SHAPES = [(6, 12), (6, 13), (2, 4099)]


def check_offset_views(G, xp, host, dtype):
    """The launch wrappers ``G`` on C-contiguous views that start an element or two past an
    aligned allocation, off a 16-byte boundary (as ``x[1:]`` of rows of odd length does),
    against fresh copies of the same values: the same bits. Such views reach the kernels as they
    are (they are C-contiguous), so on the device every whole chunk of them fails the 16-byte
    alignment test of the float4 / double2 loads and stores (mv_chunk_whole) and takes the
    element-wise path; in-place updates land in the view itself. ``xp`` allocates the arrays and
    ``host`` reads results back."""

    def pointer(a):
        return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr

    def shifted(a):
        flat = xp.empty(a.size + 2, dtype=a.dtype)
        k = 1 if (pointer(flat) + a.itemsize) % 16 else 2  # (a float64 allocation may start at 8 mod 16)
        view = flat[k:k + a.size].reshape(a.shape)
        assert pointer(view) % 16
        view[...] = xp.asarray(a)
        return view

    def same(got, want):
        if isinstance(want, tuple):
            for g, w in zip(got, want):
                same(g, w)
        elif want is not None:
            np.testing.assert_array_equal(host(got), host(want))

    def both(fn, *arrays):
        """fn on the shifted views and on aligned copies (the arrays, then the other arguments)."""
        return fn(*(shifted(a) for a in arrays)), fn(*(xp.asarray(a) for a in arrays))

    rng = np.random.default_rng(31)
    for B, D in OFFSET_VIEW_SHAPES:
        mu, logvar = _inputs((B, D), dtype, B * D)
        dz, g_rows = rng.standard_normal((B, D)).astype(dtype), rng.standard_normal(B).astype(dtype)
        address = (7, 5, 2)
        same(*both(lambda m, lv: G.reparameterize_forward(m, lv, *address), mu, logvar))
        same(*both(lambda d, lv: G.reparameterize_backward(d, lv, *address, copy_dmu=True), dz, logvar))
        same(*both(G.kl_normal_std_forward, mu, logvar))
        same(*both(G.kl_normal_std_backward, g_rows, mu, logvar))
        same(*both(lambda m, lv: G.reparameterize_kl_forward(m, lv, *address), mu, logvar))
        same(*both(lambda d, g, m, lv: G.reparameterize_kl_backward(d, g, m, lv, *address), dz, g_rows, mu, logvar))
        logits, x = _bernoulli_inputs((3, B, D), dtype, D)
        x = x[0]  # the images, repeated under three samples' logits
        g_samples = rng.standard_normal((3, B)).astype(dtype)
        same(*both(G.bernoulli_log_prob_forward, logits, x))
        same(*both(G.bernoulli_log_prob_backward, g_samples, logits, x))
        same(*both(G.gaussian_log_prob_forward, logits, mu[0], logvar[0]))
        same(*both(G.gaussian_log_prob_backward, g_samples, logits, mu[0], logvar[0]))
        same(*both(lambda a, b: G.bias_act(a, b, relu=True, out=xp.empty(a.shape, a.dtype)), dz, mu[0]))
        view = shifted(dz)
        assert G.bias_act(view, shifted(mu[0]), relu=True) is view  # in place, into the view
        same(view, G.bias_act(xp.asarray(dz), xp.asarray(mu[0]), relu=True))
        same(*both(G.relu_grad, dz, mu))
        same(*both(G.bias_grad, dz, mu))
        same(*both(G.bias_grad, dz))
        same(*both(G.logsumexp_forward, mu))
        _, shift, log_sum = G.logsumexp_forward(xp.asarray(mu))
        same(*both(G.logsumexp_backward, mu[0], mu, host(shift), host(log_sum)))
        same(*both(G.log_softmax_forward, mu))
        same(*both(G.log_softmax_backward, dz, host(G.log_softmax_forward(xp.asarray(mu)))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wrappers_take_views_that_start_off_a_vector_boundary(fake_gpu, dtype):
    """Views that start off a 16-byte boundary give the bits of aligned copies, an in-place bias
    lands in the view (the host replay: the wrappers' side; tests/test_gpu.py runs the same check
    on the device, where it is the vector loads' alignment test that is checked)."""
    K, calls = fake_gpu
    check_offset_views(K, np, np.asarray, dtype)
    assert calls


def test_imports_do_not_need_cupy():
    """`import minivae` and minivae.random never import CuPy; minivae.gpu imports without it
    (and then says clearly that the GPU path cannot run)."""
    import sys

    code = ("import sys, minivae, minivae.random; assert 'cupy' not in sys.modules; "
            "import minivae.gpu as g; "
            "assert g.is_available() or g.kernels.cp is None or 'cupy' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_minivae_gpu_offers_every_launch_wrapper():
    """minivae.gpu takes each public name of minivae.gpu.kernels from it at first use, and lists
    it in its __all__; the module itself too, when it is the first name asked for."""
    import sys

    import minivae.gpu as G
    from minivae.gpu import kernels

    first = subprocess.run([sys.executable, "-c", "import minivae.gpu as g; print(g.kernels.__name__)"],
                           capture_output=True, text=True)
    assert first.stdout == "minivae.gpu.kernels\n", first.stderr
    assert G.kernels is kernels
    for name in kernels.__all__:
        assert getattr(G, name) is getattr(kernels, name), name
    assert set(kernels.__all__) <= set(G.__all__)


def test_kernels_ship_with_the_package(tmp_path):
    """A non-editable build (setuptools build_py, as `pip install .` runs it) puts the kernel
    sources in minivae/kernels/, and minivae.gpu finds them there."""
    import sys

    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
    shutil.copytree(ROOT / "minivae", src / "minivae", ignore=ignore)
    shutil.copytree(KERNELS, src / "kernels", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
    (src / "README.md").write_text("minivae\n")
    lib = tmp_path / "lib"
    proc = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "build_py",
                           "--build-lib", str(lib)], cwd=src, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shipped = {p.name for p in (lib / "minivae" / "kernels").glob("*.cu*")}
    assert shipped == {p.name for p in KERNELS.glob("*.cu*")}, (
        "kernels/*.cu and *.cuh must ship as package data of minivae.kernels "
        "(pyproject: package-dir mapping and package-data)")
    code = ("import minivae, minivae.gpu as g; "
            f"assert minivae.__file__.startswith({str(lib)!r}), minivae.__file__; "
            f"assert str(g.kernel_dir()).startswith({str(lib)!r}), g.kernel_dir(); "
            "assert 'extern \"C\" __global__' in g.kernel_source('fused.cu'); print('ok')")
    env = {k: v for k, v in __import__("os").environ.items() if k != "MINIVAE_KERNELS_DIR"}
    env["PYTHONPATH"] = str(lib)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_pyproject_lists_every_package():
    """pyproject lists its packages (find cannot rename kernels/ to minivae.kernels): a new
    subpackage missing from the list would be left out of non-editable installs."""
    tomllib = pytest.importorskip("tomllib")
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = conf.get("packages", [])
    assert isinstance(listed, list), (
        "pyproject: kernels/ ships as minivae.kernels only with an explicit packages list "
        "and [tool.setuptools.package-dir] \"minivae.kernels\" = \"kernels\" (packages.find cannot map it)")
    listed = set(listed)
    found = {"minivae"} | {
        "minivae." + ".".join(p.parent.relative_to(ROOT / "minivae").parts)
        for p in (ROOT / "minivae").rglob("__init__.py") if p.parent != ROOT / "minivae"}
    assert found | {"minivae.kernels"} <= listed, sorted(found | {"minivae.kernels"} - listed)
    assert conf["package-dir"]["minivae.kernels"] == "kernels"
    assert set(conf["package-data"]["minivae.kernels"]) >= {"*.cu", "*.cuh"}


ADAM_SETTINGS = [dict(), dict(weight_decay=0.1), dict(amsgrad=True),
                 dict(weight_decay=0.05, decoupled_weight_decay=True),
                 dict(weight_decay=0.05, decoupled_weight_decay=True, amsgrad=True)]
ADAM_IDS = ["adam", "l2", "amsgrad", "adamw", "adamw-amsgrad"]


def adam_case(dtype, shapes=((7, 5), (5,), (1,)), steps=6, seed=0):
    """Starting parameters and the gradients of ``steps`` Adam steps for the device comparisons:
    gradients from 1e-6 to 1e2 in size, a fifth of them exactly zero (where the first update is
    ~lr * sign(g) and a rounding difference would show)."""
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[(rng.standard_normal(a.shape) * 10.0 ** rng.integers(-6, 3, a.shape)
               * (rng.uniform(size=a.shape) > 0.2)).astype(dtype) for a in start] for _ in range(steps)]
    return start, grads


def assert_same_adam_state(params, states, want_params, want_states):
    """Parameters and every state array of two Adam runs are the same bits (NumPy arrays)."""
    for a, b in zip(params, want_params):
        np.testing.assert_array_equal(a, b)
    for got, want in zip(states, want_states):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@contextlib.contextmanager
def dispatch_table(monkeypatch, on):
    """Inside: with ``on``, the dispatch table takes the NumPy arrays for CuPy's (its kernels run
    their host build, ``fake_gpu``); without, the ops run their xp code."""
    from minivae.gpu import dispatch

    with monkeypatch.context() as mp:
        if on:
            mp.setattr(dispatch, "is_gpu_array", lambda array: True)
        yield


def run_adam(monkeypatch, start, grads, gpu, **kw):
    """(parameters, state) after ``Adam(lr=1e-2, **kw)`` takes the steps ``grads`` (a list of
    gradients a step, None for a parameter without one) from ``start``, with the dispatch table
    on (``gpu``: the table takes the NumPy arrays for CuPy's, the kernel runs its host build) or
    off (the optimizer's xp code)."""
    import minivae as mv
    from minivae import optim

    params = [mv.Tensor(a.copy(), requires_grad=True) for a in start]
    opt = optim.Adam(params, lr=1e-2, **kw)
    with dispatch_table(monkeypatch, gpu):
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g
            opt.step()
    return [p.data for p in params], opt.state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", ADAM_SETTINGS, ids=ADAM_IDS)
def test_adam_kernel_equals_the_numpy_optimizer_bit_for_bit(fake_gpu, monkeypatch, dtype, kw):
    """minivae.optim.Adam's GPU path (its scalars, the dispatch table's row, the wrapper, adam.cu's
    per-entry update, here built for the host) against its xp code on NumPy: the same bits after
    six steps, with one launch per step for all parameters (one flat buffer)."""
    K, calls = fake_gpu
    start, grads = adam_case(dtype)
    finals = [run_adam(monkeypatch, start, grads, gpu, flush_every=0, **kw) for gpu in (True, False)]
    assert sum(c[0] == f"mv_adam_{_sfx(dtype)}" for c in calls) == len(grads)
    assert_same_adam_state(*finals[0], *finals[1])


def test_adam_kernel_path_flushes_subnormals_like_the_numpy_optimizer(fake_gpu, monkeypatch):
    """With a flush every second step, the kernel path (one flush over the flat moments, its work
    array the gathered gradient) and the xp path (one flush per parameter after its update) leave
    the same bits, and no subnormal moment where the run without flushes has some."""
    start, grads = adam_case(np.float32, steps=4)
    grads = [[g * np.float32(1e-20) for g in step] for step in grads]  # g^2 (1 - b2) is subnormal
    finals = {(gpu, flush_every): run_adam(monkeypatch, start, grads, gpu, flush_every=flush_every)
              for gpu, flush_every in ((True, 2), (False, 2), (False, 0))}

    def subnormals(state):
        tiny = np.finfo(np.float32).tiny
        return sum(int(((s[k] != 0) & (np.abs(s[k]) < tiny)).sum()) for s in state for k in ("exp_avg_sq",))

    assert subnormals(finals[False, 0][1]) > 0
    assert subnormals(finals[True, 2][1]) == 0
    assert_same_adam_state(*finals[True, 2], *finals[False, 2])


def test_adam_kernel_refuses_arrays_it_cannot_update_in_place(fake_gpu):
    K, _ = fake_gpu
    p = np.zeros((4, 3), np.float32)
    ok = dict(b1=0.9, b2=0.999, eps_s=1e-8, neg_step=-1e-3)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.adam_update(p, p.copy(), np.zeros((3, 4), np.float32).T, p.copy(), None, **ok)
    with pytest.raises(ValueError, match="does not match"):
        K.adam_update(p, p.copy(), np.zeros((4, 3), np.float64), p.copy(), None, **ok)
    with pytest.raises(ValueError, match="shape"):
        K.adam_update(p, np.zeros(12, np.float32), p.copy(), p.copy(), None, **ok)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):  # amsgrad's running maximum too
        K.adam_update(p, p.copy(), p.copy(), p.copy(), np.zeros(12, np.float32), **ok)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_kernel_equals_the_xp_update_on_any_state(fake_gpu, dtype):
    """The kernel against the optimizer's xp update itself (minivae.optim._adam_update), for what
    Adam never passes or reaches but the wrapper takes: a coupled weight_decay together with
    AdamW's decay (the decay is applied instead), and NaN and inf in the gradient and in the
    moments, a NaN running maximum where v is finite included (NumPy's maximum: NaN wins)."""
    from minivae.optim import _adam_update

    K, _ = fake_gpu
    rng = np.random.default_rng(8)
    n = 40
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = np.abs(rng.standard_normal(n)).astype(dtype)
    vmax = v + np.abs(rng.standard_normal(n)).astype(dtype)
    g[:3] = np.nan, np.inf, -np.inf
    m[3], v[4], vmax[5:7] = np.nan, np.inf, (np.nan, np.inf)
    steps = dict(b1=0.9, b2=0.999, eps_s=1e-8 * 0.0316, neg_step=-1e-3 * 0.0316 / 0.1)
    for decays in (dict(weight_decay=0.1, decay=1 - 1e-3 * 0.1), dict(weight_decay=0.1, decay=None)):
        for amsgrad in (True, False):
            got, want = ([a.copy() for a in (p, m, v, vmax)] for _ in range(2))
            K.adam_update(got[0], g, got[1], got[2], got[3] if amsgrad else None, **steps, **decays)
            with np.errstate(invalid="ignore", over="ignore"):
                _adam_update(want[0], g.copy(), want[1], want[2], want[3] if amsgrad else None, **steps, **decays,
                             work=(np.empty_like(p), np.empty_like(p)))
            for a, b, name in zip(got, want, ("p", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}, {decays}, amsgrad {amsgrad}")


def test_host_step_counter_selects_its_steps_row_and_nothing_outside_the_run(shim):
    """mv_step_advance (kernels/step.cuh): at step t in [0, steps) the table's row t and the
    offset t are copied to current and offset; a counter outside (below 0, at steps or past it)
    writes nothing; the counter advances by one either way. The table and the offsets are views
    of arrays one step longer, so that a read past their end would show."""
    steps, width = 3, 4
    padded_table = np.arange((steps + 1) * width, dtype=np.float64) + 0.5
    padded_offsets = np.array([10, 20, 30, 99], np.uint64)
    table, offsets = padded_table[:steps * width], padded_offsets[:steps]
    step, current, offset = np.array([-2], np.int64), np.full(width, -1.0), np.array([7], np.uint64)

    def advance(want_step, want_row, want_offset):
        call(shim, "shim_step_advance", table, offsets, _I64(width), _I64(steps), step, current, offset)
        assert step[0] == want_step
        np.testing.assert_array_equal(current, np.full(width, -1.0) if want_row is None
                                      else table[want_row * width:(want_row + 1) * width])
        assert offset[0] == want_offset

    advance(-1, None, 7)
    advance(0, None, 7)
    for t in range(steps):
        advance(t + 1, t, offsets[t])
    advance(steps + 1, steps - 1, offsets[-1])
    advance(steps + 2, steps - 1, offsets[-1])


@pytest.mark.parametrize("op", ["relu", "linear_relu"])
def test_a_change_through_a_detached_relu_output_is_refused_on_the_gpu_rows(
        fake_gpu, fake_cublas, monkeypatch, op):
    """The rows read the ReLU's mask off its output: a change of the output made through a
    detached view (an optimizer refining it) must stop the backward, as on the CPU, rather
    than give the gradient of another mask."""
    import minivae as mv
    from minivae import functional as F, optim
    from minivae.function import InPlaceModificationError
    from minivae.gpu import dispatch

    monkeypatch.setattr(dispatch, "is_gpu_array", lambda array: True)
    rng = np.random.default_rng(0)
    x = mv.tensor(rng.standard_normal((4, 6)).astype(np.float32), requires_grad=True)
    W = mv.tensor(rng.standard_normal((6, 6)).astype(np.float32), requires_grad=True)
    h = F.relu(x) if op == "relu" else F.linear_relu(x, W)
    d = h.detach()
    d.requires_grad, d.grad = True, -np.ones(h.shape, np.float32)
    optim.SGD([d], lr=10.0).step()  # every output now positive: another mask
    with pytest.raises(InPlaceModificationError):
        h.sum().backward()


@pytest.mark.parametrize("mc_samples", [1, 3])
def test_vae_training_step_runs_the_fused_kernels_through_the_table(fake_gpu, fake_cublas, monkeypatch,
                                                                   mc_samples):
    """A VAE training step with the dispatch table taking every array for a CuPy array: the
    loss's ReparameterizeKL node runs the fused forward and backward kernels (host builds, through
    the launch wrappers), the dense layers their products on the stand-in cuBLAS (one per layer
    forward, two backward, one for the first layer, whose input needs no gradient) and Adam one
    launch; loss, gradients and weights agree with the CPU step."""
    import minivae as mv
    from minivae import optim
    from minivae.models import VAE

    K, calls = fake_gpu
    x = (np.random.default_rng(0).uniform(size=(6, 12)) < 0.5).astype(np.float32)
    out = []
    for gpu in (True, False):
        model = VAE(x_dim=12, z_dim=3, hidden=(8,), mc_samples=mc_samples, rng=np.random.default_rng(1))
        opt = optim.Adam(model.parameters(), lr=1e-2)
        with dispatch_table(monkeypatch, gpu):
            loss, _ = model.loss(mv.tensor(x), mr.Generator(seed=4, offset=2))
            loss.backward()
            grads = [p.grad.copy() for p in model.parameters()]
            opt.step()
        out.append((loss.item(), grads, [p.data.copy() for p in model.parameters()]))
    names = [c[0] for c in calls]
    assert names.count("mv_reparam_kl_fwd_f32") == names.count("mv_reparam_kl_bwd_f32") == 1
    assert names.count("mv_adam_f32") == 1
    layers = sum(isinstance(m, (mv.nn.Linear, mv.nn.LinearReLU)) for m in model.modules())
    assert names.count("mv_bias_act_f32") == names.count("mv_bias_grad_f32") == layers
    assert "mv_relu_grad_f32" not in names  # (each ReLU's gradient comes with its layer's bias's)
    assert names.count("mv_bernoulli_fwd_f32") == names.count("mv_bernoulli_bwd_f32") == 1
    assert "mv_gaussian_fwd_f32" not in names  # (the VAE's ELBO takes its KL analytically)
    assert len(fake_cublas.calls) == 3 * layers - 1
    (loss_g, grads_g, w_g), (loss_c, grads_c, w_c) = out
    assert loss_g == pytest.approx(loss_c, rel=1e-5)
    for a, b in zip(grads_g + w_g, grads_c + w_c):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ the A/B benchmark on a fake CuPy
class _FakeModule:
    """cupy.RawModule of the fake: kernels checked against their C signatures, run by the host
    replays of a shim built with the module's -DMV_TILE (``libs``: MV_TILE -> shim)."""

    def __init__(self, libs, calls, code, options):
        assert code.startswith("// minivae kernel source:") and "--std=c++14" in options
        tiles = [int(o.split("=", 1)[1]) for o in options if o.startswith("-DMV_TILE=")]
        self.lib = libs[tiles[-1] if tiles else 4096]
        self.calls, self.sigs = calls, _signatures()

    def get_function(self, name):
        return _FakeKernel(self.lib, name, self.sigs[name], self.calls)


def _fake_cupy(libs, calls):
    class Event:
        def record(self):
            pass

        def synchronize(self):
            pass

    class RandomState:
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def standard_normal(self, size, dtype=np.float64):
            return self.rng.standard_normal(size).astype(dtype)

        def uniform(self, low, high, size):
            return self.rng.uniform(low, high, size)

    pool = types.SimpleNamespace(free_all_blocks=lambda: None)
    cuda = types.SimpleNamespace(
        Event=Event, get_elapsed_time=lambda a, b: 0.5,
        Device=lambda: types.SimpleNamespace(attributes={"MultiProcessorCount": 2}, synchronize=lambda: None),
        runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceProperties=lambda d: {"name": b"Fake GPU"}))
    return types.SimpleNamespace(
        __version__="fake", cuda=cuda, random=types.SimpleNamespace(RandomState=RandomState),
        RawModule=lambda code, options: _FakeModule(libs, calls, code, options),
        get_default_memory_pool=lambda: pool, float32=np.float32, float64=np.float64,
        ones=np.ones, empty=np.empty, empty_like=np.empty_like, full=np.full, abs=np.abs,
        maximum=np.maximum, expm1=np.expm1, array_equal=np.array_equal, asnumpy=np.asarray)


def test_ab_row_kernels_on_fake_gpu(tile_shims, tmp_path):
    """benchmarks/ab_row_kernels.py end to end on a fake CuPy (every launch's arguments checked
    against the C signature, kernels replayed on the host with the variant's tile): every variant
    passes its checks and is timed, with the default's kl bit for bit, and one JSON is written."""
    import json

    ab = _ab_script()
    calls = []
    res = ab.main(["--sizes", "600,3000", "--D", "2,3,50,784", "--repeats", "2", "--copy-mib", "1", "--out", str(tmp_path)],
                  cp=_fake_cupy(tile_shims, calls))
    assert set(res["variants"]) == set(ab.VARIANTS) and ab.DEFAULT in ab.VARIANTS
    for name, info in res["variants"].items():
        assert info["edge_checks_passed"], (name, info["failures"])
    assert len(res["rows"]) == 2 * 4 * (len(ab.VARIANTS) * 2 + 1)  # and the flat reparameterization
    flat = [r for r in res["rows"] if r["variant"] == ab.FLAT]
    assert len(flat) == 8 and all(r["kernel"] == "reparam_fwd" and r["us"] > 0 for r in flat)
    assert set(res["worst_share_of_copy"]) == set(ab.VARIANTS) | {ab.FLAT}
    for r in res["rows"]:
        if r["variant"] == ab.FLAT:
            continue
        assert "error" not in r and r["us"] > 0 and r["kl_max_rel_err"] <= 1e-5, r
        if r["variant"] == ab.DEFAULT:
            assert r["kl_bit_identical_to_default"] is None
        elif r["D"] <= ab.tile_of(r["variant"]) - 3:  # one segment in both: the same order
            assert r["kl_bit_identical_to_default"] is True, r
    assert {c[0] for c in calls} >= {"mv_kl_fwd_f32", "mv_reparam_kl_fwd_f64", "mv_reparam_fwd_f32"}
    files = list(tmp_path.glob("ab_row_kernels_fake-gpu_*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["rows"] == res["rows"]
    assert res["complete"] and set(res["copy_gbps"]) == {"start", "end"}
    # what every benchmark JSON records: the machine, the versions, the date and the command
    assert res["machine"]["cpu_model"] and res["date"] and res["command"].startswith("ab_row_kernels.py --sizes")
    assert {"python", "numpy", "minivae", "git_commit"} <= set(res["versions"]) and res["versions"]["cupy"] == "fake"
    cut = ab.main(["--sizes", "600", "--D", "2,50", "--variants", "regtiles,warptiles", "--copy-mib", "1",
                   "--max-seconds", "0", "--out", str(tmp_path / "cut")], cp=_fake_cupy(tile_shims, calls))
    assert not cut["complete"] and cut["rows"] == [] and len(cut["skipped_cases"]) == 2
    # regtiles: one block per tile; warptiles: one block per 8 tiles (a warp each), at most 32 a
    # multiprocessor (their warps stride over the rest)
    assert ab.launch_grid("regtiles", 1000, 50, 2) == 13 and ab.launch_grid("regtiles", 3, 9001, 2) == 3
    assert ab.launch_grid("warptiles", 1000, 50, 2) == 13  # 100 tiles of 10 rows
    assert ab.launch_grid("warptiles-256", 1000, 50, 2) == 32  # 250 tiles of 4 rows
    assert ab.launch_grid("warptiles", 10 ** 6, 50, 2) == 64 and ab.launch_grid("warptiles", 10 ** 6, 50, 132) == 4224
    assert ab.launch_grid("warptiles", 3, 9001, 2) == 1
    from minivae.gpu.kernels import rows_per_tile

    for D in (1, 2, 3, 10, 50, 784, 1025, 4101):
        assert ab.launch_grid("regtiles", 10 ** 6, D, 2) == -(-10 ** 6 // rows_per_tile(D))


def test_ab_row_kernels_without_a_gpu_measures_nothing(tmp_path, monkeypatch, capsys):
    """Without CuPy (or a device) the A/B exits with status 2 and one line, writing no file."""
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(SystemExit) as exc:
        _ab_script().main(["--out", str(tmp_path)])
    assert exc.value.code == 2 and "nothing measured" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_ab_row_kernels_reports_a_failing_variant(tile_shims, tmp_path, monkeypatch):
    """A variant whose kl is wrong is reported with its failures and not timed."""
    ab = _ab_script()
    calls = []
    fake = _fake_cupy(tile_shims, calls)
    real = fake.RawModule

    def broken(code, options):
        mod = real(code, options)
        if "-DMV_TILE=256" in options:  # warptiles-256
            get = mod.get_function

            def get_function(name):
                k = get(name)
                if name.startswith("mv_kl_fwd_"):
                    def wrong(a):  # one row's kl never written
                        shim_fn = getattr(mod.lib, "shim_kl_fwd_" + name[-3:])
                        shim_fn.restype = None
                        shim_fn(a[0], a[1], a[2], _I64(a[3].value - 1), a[4])
                    k.replay = wrong
                return k
            mod.get_function = get_function
        return mod

    fake.RawModule = broken
    res = ab.main(["--sizes", "600", "--D", "50", "--repeats", "2", "--copy-mib", "1", "--out", str(tmp_path)], cp=fake)
    bad = "warptiles-256"
    assert not res["variants"][bad]["edge_checks_passed"]
    assert any("kl relative error nan" in f for f in res["variants"][bad]["failures"])
    assert res["worst_share_of_copy"][bad].startswith("failed")
    assert all(r["variant"] != bad for r in res["rows"]) and any(r["variant"] == ab.FLAT for r in res["rows"])
    assert res["variants"]["regtiles"]["edge_checks_passed"]
    assert res["variants"]["warptiles"]["edge_checks_passed"]


@pytest.mark.parametrize("draw, named", [
    (lambda K: K.normal((2.5, 3), 1), r"shape\[0\] must be an integer, got 2.5"),
    (lambda K: K.uniform("23", 1), "shape must be a sequence of integers, got '23'"),
    (lambda K: K.normal((2, 3), 1.5), "seed must be an integer, got 1.5"),
    (lambda K: K.philox_words(2.5, 1), "n must be an integer, got 2.5"),
    (lambda K: K.reparameterize_forward(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), True),
     "seed must be an integer, got True"),
    (lambda K: K.normal(4, 1, stream=2**32), r"stream must be an integer in \[0, 2\*\*32\)"),
    (lambda K: K.gumbel((2, 1.5), 1), r"shape\[1\] must be an integer, got 1.5"),
    (lambda K: K.gumbel(4, 1, offset=-1), "offset must be at least 0, got -1"),
    (lambda K: K.gumbel(4, 1, dtype=np.float16), "dtype must be float32 or float64, got float16"),
    (lambda K: K.philox_words(2**62, 1), r"a draw holds at most 2\*\*34 elements"),
    (lambda K: K.uniform((2**31, 2**31), 1), r"a draw holds at most 2\*\*34 elements"),
], ids=["float size", "string shape", "float seed", "float count", "bool seed", "stream of 33 bits",
        "gumbel: float size", "gumbel: negative offset", "gumbel: float16", "words past the draw",
        "uniforms past the draw"])
def test_the_gpu_draws_check_their_address_and_shape_as_the_cpu_draws(fake_gpu, draw, named):
    """The wrappers took int() of each: shape (2.5, 3) drew (2, 3), "23" the shape (2, 3), and
    seed 1.5 or True named the noise of seed 1, where minivae.random refuses them. A draw of more
    elements than a draw holds is refused before its output is allocated."""
    with pytest.raises((TypeError, ValueError), match=named):
        draw(fake_gpu[0])


class _HugeArray:
    """A stand-in for a C-contiguous float32 CuPy array of ``shape``, (2**32, 5) unless given:
    what the launch wrappers read of an array before allocating their outputs, and no memory."""
    dtype, flags = np.dtype(np.float32), types.SimpleNamespace(c_contiguous=True)

    def __init__(self, shape=(2**32, 5)):
        self.shape, self.ndim, self.size = shape, len(shape), math.prod(shape)


def _forbid_allocation(K, monkeypatch):
    """Let the wrappers of ``K`` take ``_HugeArray`` stand-ins for CuPy arrays, and fail the test
    when they allocate an output."""
    def no_allocation(*args, **kwargs):
        raise AssertionError("an output was allocated")

    monkeypatch.setattr(K.cp, "ndarray", _HugeArray)
    monkeypatch.setattr(K.cp, "empty", no_allocation)
    monkeypatch.setattr(K.cp, "empty_like", no_allocation)


@pytest.mark.parametrize("launch", [
    lambda K, big: K.reparameterize_forward(big, big, 1),
    lambda K, big: K.reparameterize_backward(big, big, 1),
    lambda K, big: K.reparameterize_kl_forward(big, big, 1),
    lambda K, big: K.reparameterize_kl_backward(big, None, big, big, 1),
], ids=["reparameterize_forward", "reparameterize_backward", "reparameterize_kl_forward",
        "reparameterize_kl_backward"])
def test_the_reparameterization_wrappers_refuse_more_elements_than_a_draw_holds(fake_gpu, monkeypatch, launch):
    """eps is element i of a draw, which holds at most 2**34 elements (the element's block is a
    32-bit counter word), so the wrappers refuse larger arrays before allocating their outputs.
    The arrays are stand-ins (``_HugeArray``), and an allocation of the outputs fails the test."""
    K, calls = fake_gpu
    _forbid_allocation(K, monkeypatch)
    with pytest.raises(ValueError, match=r"^a draw holds at most 2\*\*34 elements, asked for elements "
                                         r"\[0, 21474836480\)$"):
        launch(K, _HugeArray())
    assert not calls


@pytest.mark.parametrize("launch, shape, name, what", [
    (lambda K, big: K.bias_grad(big), lambda n: (3, n), "g", "columns"),
    (lambda K, big: K.bias_grad(big, big), lambda n: (3, n), "g", "columns"),
    (lambda K, big: K.logsumexp_forward(big), lambda n: (3, n), "x", "columns"),
    (lambda K, big: K.log_softmax_forward(big), lambda n: (n, 10), "x", "rows"),
    (lambda K, big: K.log_softmax_backward(big, big), lambda n: (n, 10), "out", "rows"),
], ids=["bias_grad", "bias_grad behind a relu", "logsumexp_forward", "log_softmax_forward",
        "log_softmax_backward"])
def test_the_column_reductions_refuse_more_columns_than_one_grid_holds(
        fake_gpu, monkeypatch, launch, shape, name, what):
    """A column reduction takes a block per 8 columns (the rows of a log-softmax) and has no
    grid-stride loop, so more than 8 (2**31 - 1) columns asked for a grid past CUDA's 2**31 - 1
    blocks, which CUDA refuses at the launch with an error naming neither the wrapper nor the
    size. They are refused by name before the outputs are allocated; one column fewer reaches
    the allocation."""
    K, calls = fake_gpu
    _forbid_allocation(K, monkeypatch)
    most = 8 * (2**31 - 1)
    with pytest.raises(ValueError, match=rf"^{name}: one launch takes at most {most} {what} \(8 per "
                                         rf"block, 2\*\*31 - 1 blocks\), got {most + 1}$"):
        launch(K, _HugeArray(shape(most + 1)))
    with pytest.raises(AssertionError, match="an output was allocated"):
        launch(K, _HugeArray(shape(most)))
    assert not calls
