"""The dispatch table of minivae.gpu: which ops run CUDA kernels on CuPy arrays, and when.

Without a GPU the table is checked with NumPy arrays standing for CuPy's (``is_gpu_array``
patched): the choice of path and its explanation, and that consulting it imports no CuPy.
"""
import subprocess
import sys

import numpy as np
import pytest

from minivae.gpu import dispatch


@pytest.fixture
def as_gpu(monkeypatch):
    """Make the table take every array for a CuPy array."""
    monkeypatch.setattr(dispatch, "is_gpu_array", lambda array: True)


def test_numpy_inputs_run_the_xp_code():
    mu = np.zeros((4, 3))
    assert dispatch.select("KLNormalStd", mu, mu) is None
    assert dispatch.explain("KLNormalStd", mu, mu) == "xp code: no input is a CuPy array"


def test_a_kernel_runs_only_where_its_condition_holds(as_gpu):
    mu, row = np.zeros((4, 3)), np.zeros(3)
    row_kl = dispatch.select("KLNormalStd", mu, mu)
    assert row_kl is dispatch.TABLE["KLNormalStd"] and row_kl.__name__ == "KLNormalStd"
    assert dispatch.explain("KLNormalStd", mu, mu).startswith("kernel: ")
    assert dispatch.select("KLNormalStd", mu, row) is None  # broadcast shapes: the xp code, openly
    assert dispatch.explain("KLNormalStd", mu, row) == (
        "xp code on CuPy: KLNormalStd's kernel takes mu and logvar of one shape, at least 1-D")
    assert dispatch.select("Exp", mu) is None
    assert "has no kernel" in dispatch.explain("Exp", mu)


def test_the_table_names_the_registered_kernels():
    """Reparameterization (noise), KL, the fused pair and Adam, each with a stated condition
    and, for the ops, a forward and a backward launch."""
    assert {"ReparameterizeNoise", "KLNormalStd", "ReparameterizeKL", "Adam"} <= set(dispatch.TABLE)
    for name, row in dispatch.TABLE.items():
        assert row.op == name and row.takes and callable(row.forward) and callable(row.accepts)
        assert name == "Adam" or callable(row.backward)


def test_consulting_the_table_imports_no_cupy():
    code = ("import sys, minivae, minivae.optim, minivae.gpu.dispatch; "
            "assert 'cupy' not in sys.modules and 'minivae.gpu.kernels' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
