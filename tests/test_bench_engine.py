"""benchmarks/bench_engine.py: its JSON records what every benchmark's does, its NumPy floor computes
minivae's gradients for every op, and its medians and overheads are the stated ones."""
import json
import sys
import types
from pathlib import Path

import numpy as np
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


def test_every_op_s_numpy_baseline_computes_minivae_s_gradients(monkeypatch):
    """Each op's hand-written NumPy backward (the floor the overhead is measured from) is checked
    against minivae's gradients (and PyTorch's) before timing: here for every op, with the timing
    made up, so that the overhead is the median time less NumPy's median."""
    fake = {"minivae": (10.0, 8.0), "numpy": (3.0, 2.0), "torch": (20.0, 15.0)}
    monkeypatch.setattr(bench_engine, "_time_interleaved", lambda fns, repeat: {n: fake[n] for n in fns})
    for i, (name, spec) in enumerate(bench_engine.OPS.items()):
        row = bench_engine._bench_op(name, spec, np.float64, 1, np.random.default_rng(i))
        assert (row["minivae_us"], row["minivae_min_us"], row["minivae_overhead_us"]) == (10.0, 8.0, 7.0), name
        if "torch_us" in row:
            assert row["torch_overhead_us"] == 17.0


def test_the_summary_counts_the_ops_where_minivae_s_overhead_is_below_pytorch_s(monkeypatch, tmp_path):
    if bench_engine.torch is None:
        pytest.skip("PyTorch is not installed")
    overheads = {"add": (1.0, 2.0), "mul": (5.0, 4.0), "div": (3.0, 6.0)}
    monkeypatch.setattr(bench_engine, "_bench_op", lambda name, spec, dtype, repeat, rng: {
        "minivae_us": 9.0, "numpy_us": 1.0, "torch_us": 9.0, "minivae_overhead_us": overheads[name][0],
        "torch_overhead_us": overheads[name][1]})
    record = bench_engine.main(["--ops", "add", "mul", "div", "--machine", "test", "--out", str(tmp_path)])
    assert record["summary"] == {"median_minivae_overhead_us": 3.0, "median_torch_overhead_us": 4.0,
                                 "ops_where_minivae_overhead_below_torch": 2, "ops": 3}


def test_the_timer_gives_the_median_and_the_minimum_per_call(monkeypatch):
    """Calibration doubles the loop until it takes a fifth of 10 ms (32 calls of 0.1 ms), then sizes
    it to 10 ms (100 calls); three repeats at 0.1, 0.2 and 0.5 ms a call."""
    costs = iter([1e-4] * 5 + [1e-4, 2e-4, 5e-4])

    class Timer:
        def __init__(self, fn):
            pass

        def timeit(self, number):
            return number * next(costs)

    monkeypatch.setattr(bench_engine, "timeit", types.SimpleNamespace(Timer=Timer))
    median, best = bench_engine._time_interleaved({"f": None}, 3)["f"]
    assert median == pytest.approx(200.0) and best == pytest.approx(100.0)
