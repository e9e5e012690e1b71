"""Finding and assembling the CUDA sources (no CuPy needed here).

The kernels ship as source (``kernels/*.cu`` and ``*.cuh``, installed as the package data
of ``minivae.kernels``) and are compiled at first use by NVRTC through ``cupy.RawModule``.
NVRTC gets one self-contained string: :func:`kernel_source` inlines the local
``#include "x.cuh"`` lines, each header once. Inlining (instead of ``-I dir``) also makes the
source string change whenever a header changes, so CuPy's kernel cache, which is keyed by
the source and the options, never serves a binary built from stale headers.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

__all__ = ["CUPY_ADDED_OPTIONS", "KERNEL_FILES", "NVRTC_OPTIONS", "kernel_dir", "kernel_source",
           "nvrtc_compile"]

#: The compiled translation units (each becomes one ``cupy.RawModule``).
KERNEL_FILES = ("random.cu", "reparam.cu", "kl.cu", "fused.cu", "bernoulli.cu", "gaussian.cu", "dense.cu",
                "logsumexp.cu", "adam.cu", "step.cu")

#: NVRTC options of ours: C++14, accurate math (no ``--use_fast_math``: division and square root
#: IEEE-rounded, FMA contraction on, as in nvcc's default). The host build in the tests uses the
#: same headers without fast-math.
NVRTC_OPTIONS = ("--std=c++14",)

#: The options ``cupy.RawModule`` adds after ours, for every kernel it compiles, CuPy's own ones
#: included (``cupy/cuda/compiler.py``). The last ``-ftz`` wins, so on the device float32
#: subnormal inputs and results (below 2**-126, about 1.2e-38) are flushed to zero; float64 keeps
#: them. NumPy and the host build keep them too: the devices agree wherever no float32 value of
#: a kernel is subnormal.
CUPY_ADDED_OPTIONS = ("--device-as-default-execution-space", "-ftz=true")

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


def _candidates():
    env = os.environ.get("MINIVAE_KERNELS_DIR")
    if env:
        yield Path(env)
    # The folders beside the imported minivae come before the import system's minivae.kernels:
    # an editable install of another checkout maps that name to its own kernels/, which would
    # otherwise be compiled in place of this checkout's.
    package = Path(__file__).resolve().parents[1]
    yield package / "kernels"  # installed package data: <site-packages>/minivae/kernels
    yield package.parent / "kernels"  # a source checkout: <repo>/kernels beside <repo>/minivae
    try:  # an unusual install (a zip archive): the package data through the import system
        from importlib.resources import files

        yield files("minivae.kernels")
    except (ImportError, TypeError, ValueError):
        pass


@lru_cache(maxsize=None)
def kernel_dir():
    """The directory holding the ``.cu``/``.cuh`` files (a ``Path``, or an
    ``importlib.resources`` Traversable for unusual installs).

    Searched in order: ``$MINIVAE_KERNELS_DIR``, the installed package data beside the imported
    minivae (``minivae/kernels``), ``<source checkout>/kernels``, ``minivae.kernels`` as the import
    system finds it.
    """
    tried = []
    for cand in _candidates():
        tried.append(str(cand))
        try:
            if cand.joinpath("philox.cuh").is_file():
                return cand
        except OSError:
            continue
    raise FileNotFoundError(
        "minivae: the CUDA kernel sources (philox.cuh, *.cu) were not found; looked in: "
        + ", ".join(tried)
        + ". Reinstall minivae (they ship as package data of minivae.kernels) or set "
        "MINIVAE_KERNELS_DIR."
    )


def _inline(folder, name: str, seen: set, stack: tuple) -> str:
    if name in stack:
        raise ValueError(f"include cycle: {' -> '.join(stack + (name,))}")
    text = folder.joinpath(name).read_text(encoding="utf-8")

    def repl(m):
        inc = m.group(1)
        if not folder.joinpath(inc).is_file():
            raise FileNotFoundError(f"{name}: #include \"{inc}\" not found in {folder}")
        if inc in seen:
            return f"// (#include \"{inc}\": already inlined)"
        seen.add(inc)
        body = _inline(folder, inc, seen, stack + (name,))
        return f"// ---- begin {inc} ----\n{body}\n// ---- end {inc} ----"

    return _INCLUDE.sub(repl, text)


@lru_cache(maxsize=None)
def kernel_source(name: str) -> str:
    """The self-contained source of ``kernels/<name>`` with its local headers inlined."""
    folder = kernel_dir()
    if not folder.joinpath(name).is_file():
        raise FileNotFoundError(f"no kernel source {name} in {folder}")
    return f"// minivae kernel source: {name} (headers inlined)\n" + _inline(folder, name, set(), ())


def nvrtc_compile(name: str, arch: str = "80", options=NVRTC_OPTIONS, cubin: bool = True) -> bytes:
    """Compile ``kernels/<name>`` with NVRTC for compute capability ``arch`` ("80", "90", ...)
    and return the CUBIN (``cubin=True``: NVRTC runs ptxas too) or the PTX.

    Needs CuPy and the NVRTC library, not a GPU: it checks the kernels with the very compiler
    that ``cupy.RawModule`` uses at run time, with the options CuPy adds
    (``CUPY_ADDED_OPTIONS``), so that what is checked is what runs. Raises ``RuntimeError``
    with the log on failure.
    """
    from cupy.cuda import nvrtc  # deferred: CuPy is optional

    target = f"sm_{arch}" if cubin else f"compute_{arch}"
    opts = tuple(options) + (f"--gpu-architecture={target}",) + CUPY_ADDED_OPTIONS
    prog = nvrtc.createProgram(kernel_source(name), name, (), ())
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise RuntimeError(f"NVRTC failed on {name} ({target}): {exc}\n{log}") from None
        return nvrtc.getCUBIN(prog) if cubin else nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
