"""benchmarks/bench_engine.py on one op: its JSON records what every benchmark's does."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_engine  # noqa: E402


def test_the_result_names_the_machine_versions_date_command_and_commit(tmp_path):
    record = bench_engine.main(["--ops", "add", "--repeat", "1", "--machine", "test", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "engine_test.json").read_text()) == record
    assert record["machine"]["name"] == "test" and record["date"] and record["command"]
    assert {"python", "numpy", "minivae", "torch"} <= set(record["versions"])
    assert "git_commit" in record["versions"]  # (None only where neither git nor the environment says)
    assert list(record["results"]) == ["add"]


def test_pytorch_s_timed_call_does_the_op_alone(monkeypatch):
    """The index of "getitem (repeated rows)" is made once for PyTorch, as the NumPy array is for
    minivae and NumPy: converting it in every timed call added that conversion to PyTorch's time."""
    torch = bench_engine.torch
    if torch is None:
        pytest.skip("PyTorch is not installed")
    a = torch.rand(4, 4, requires_grad=True)
    monkeypatch.setattr(torch, "as_tensor", lambda *args, **kwargs: 1 / 0)
    torch_forward = bench_engine.OPS["getitem (repeated rows)"][3]
    assert torch_forward(a).shape == (4, 4)
