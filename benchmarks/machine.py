"""What every benchmark JSON records: the machine, library versions, date and command."""
import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from minivae.backend import gpu_model

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """Platform, CPU model, core counts, and the BLAS NumPy uses (via threadpoolctl when installed)."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = None
    return info


def gpu_info():
    """Name, compute capability, memory, driver and CUDA runtime of the current CUDA device (CuPy)."""
    import cupy as cp

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    return {"name": gpu_model(), "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": props["multiProcessorCount"], "memory_bytes": props["totalGlobalMem"],
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "cuda_driver": cp.cuda.runtime.driverGetVersion(),
            "cupy": cp.__version__}


def slug(text):
    """``text`` as part of a file name: lower case, each run of other characters one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_machine_name(info=None, gpu=None):
    """A short file-name slug for this machine: the GPU's name (e.g. ``nvidia-h200``) for results
    measured on the GPU (``gpu``: what ``gpu_info()`` returned; lent GPU machines share one
    CPU model), else the CPU model and cores (e.g. ``amd-epyc-2c``)."""
    if gpu:
        return slug(gpu["name"])
    info = info or machine_info()
    return f"{slug(info['cpu_model'])}-{info['cores']}c"


def git_commit():
    """The checkout's commit: ``$MINIVAE_GIT_COMMIT`` when set (a copy of the tree, as on a lent
    GPU machine, may carry a stale ``.git``), else ``git rev-parse HEAD``; None when neither says."""
    if os.environ.get("MINIVAE_GIT_COMMIT"):
        return os.environ["MINIVAE_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=RESULTS.parent, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(*modules):
    """Python, NumPy and minivae versions, plus those of the named optional modules when importable."""
    import minivae

    out = {"python": platform.python_version(), "numpy": np.__version__, "minivae": minivae.__version__,
           "git_commit": git_commit()}
    for name in modules:
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


@contextlib.contextmanager
def thread_limits(threads, torch=None):
    """Limit BLAS (through threadpoolctl, when installed) and ``torch`` (when given) to
    ``threads`` threads inside the block, and give both their former counts back after it: a
    benchmark's ``main`` called from Python leaves its caller's process as it found it (a
    training's bits depend on the BLAS thread count)."""
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        with (threadpoolctl.threadpool_limits(limits=threads) if threadpoolctl is not None
              else contextlib.nullcontext()):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def command_line(script, argv=None):
    """The command that made a result, for its JSON: the interpreter and ``sys.argv`` when
    ``script`` ran from the shell (``argv`` None); when its ``main`` was called from Python with
    ``argv``, the script's file name and those arguments (``sys.argv`` is then the caller's)."""
    if argv is None:
        return " ".join([Path(sys.executable).name] + sys.argv)
    return " ".join([Path(script).name] + list(argv))


def write_result(name, payload, out_dir=None, command=None):
    """Write ``payload`` plus machine, versions, date and ``command`` (``command_line``; by
    default that of the script run from the shell) as JSON; return the path."""
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": command if command is not None else command_line(sys.argv[0]),
              "machine": machine_info()}
    record.update(payload)
    path = Path(out_dir or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
