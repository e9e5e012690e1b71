"""benchmarks/bench_train_step.py on the CPU, with a library made to fail: the run goes on
without it, and its JSON keeps the other libraries, the error, and what was measured before a
run is cut short. (The GPU's failures -- a step that cannot be captured, a CUDA error -- take
the same path; its graph runner is timed in tests/test_graph_mode.py.)"""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_train_step as bench  # noqa: E402

ARGS = ["--batch", "20", "40", "--libs", "minivae", "numpy", "--warmup-steps", "0", "--repeat", "3",
        "--skip-fwd-bwd", "--max-seconds", "5", "--threads", "2", "--machine", "test"]


@pytest.fixture
def small_mnist(monkeypatch):
    """400 random images in place of MNIST (the benchmark binarizes them)."""
    x = np.random.default_rng(0).random((400, 784), dtype=np.float32)
    monkeypatch.setattr(bench, "load_mnist", lambda verbose: types.SimpleNamespace(x_train=x))


def failing_numpy(monkeypatch, method, exc, at_batch=20):
    """Make the reference runner's ``method`` raise ``exc`` on batches of ``at_batch`` images or
    more (its constructor: always)."""
    original = getattr(bench.NumpyRunner, method)

    def broken(self, *args, **kwargs):
        if method == "__init__" or args[0].shape[0] >= at_batch:
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(bench.NumpyRunner, method, broken)


def result(tmp_path):
    return json.loads((tmp_path / "train_step_test_t2.json").read_text())


@pytest.mark.parametrize("method, stage", [("__init__", "setting up"), ("loss_and_grads", "agreement check"),
                                           ("step", "timing")])
def test_a_failing_library_is_dropped_and_the_others_are_kept(small_mnist, monkeypatch, tmp_path, method, stage):
    """A runner that raises while being built, checked or timed (as a capture that fails, or a
    CUDA error, would) is left out of every batch size; minivae is timed at both, and the JSON
    names the error."""
    failing_numpy(monkeypatch, method, RuntimeError("the step cannot be captured"))
    bench.main(ARGS + ["--out", str(tmp_path)])
    r = result(tmp_path)
    assert r["finished"]
    assert [list(r["results"][b]) for b in ("20", "40")] == [["minivae"], ["minivae"]]
    assert r["errors"] == {"numpy": f"batch 20, {stage}: RuntimeError('the step cannot be captured')"}
    assert r["results"]["20"]["minivae"]["time_ratio_to_minivae"] == 1.0


def test_a_library_that_disagrees_with_minivae_is_dropped(small_mnist, monkeypatch, tmp_path):
    original = bench.NumpyRunner.loss_and_grads
    monkeypatch.setattr(bench.NumpyRunner, "loss_and_grads",
                        lambda self, xb, eps: (lambda loss, grads: (2 * loss, grads))(*original(self, xb, eps)))
    bench.main(ARGS + ["--out", str(tmp_path)])
    r = result(tmp_path)
    assert list(r["results"]["40"]) == ["minivae"]
    assert "does not compute minivae's loss and gradients" in r["errors"]["numpy"]


def test_without_minivae_the_others_are_timed_without_ratios(small_mnist, monkeypatch, tmp_path):
    monkeypatch.setattr(bench.MinivaeRunner, "loss_and_grads", lambda self, xb, seed: 1 / 0)
    bench.main(ARGS + ["--out", str(tmp_path)])
    r = result(tmp_path)
    assert list(r["results"]["40"]) == ["numpy"]
    assert r["results"]["40"]["numpy"]["time_ratio_to_minivae"] is None
    assert r["errors"]["minivae"].startswith("batch 20, agreement check: ZeroDivisionError")
    assert r["targets"] == {"20": {}, "40": {}}


def test_a_run_cut_short_keeps_the_batch_sizes_it_measured(small_mnist, monkeypatch, tmp_path):
    """The JSON is written after each batch size: a run stopped during the second (here by an
    interrupt, on the GPU machine by a timeout) leaves the first, marked unfinished."""
    failing_numpy(monkeypatch, "step", KeyboardInterrupt(), at_batch=40)
    with pytest.raises(KeyboardInterrupt):
        bench.main(ARGS + ["--out", str(tmp_path)])
    r = result(tmp_path)
    assert not r["finished"]
    assert list(r["results"]) == ["20"] and set(r["results"]["20"]) == {"minivae", "numpy"}
    assert r["errors"] == {}


def test_gpu_results_are_named_after_the_gpu():
    """Lent GPU machines share one CPU model: their results are named after the GPU, so that an
    H100's and an H200's do not overwrite each other."""
    import machine

    cpu = {"cpu_model": "Intel(R) Xeon(R) Processor", "cores": 16}
    assert machine.default_machine_name(cpu) == "intel-r-xeon-r-processor-16c"
    assert machine.default_machine_name(cpu, {"name": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert machine.default_machine_name(cpu, {"name": "NVIDIA H200"}) == "nvidia-h200"


def test_no_tracemalloc_number_for_any_pytorch_column(small_mnist, tmp_path):
    """tracemalloc sees NumPy's allocations, not PyTorch's: no PyTorch column (torch-flush
    included) gets a peak from it, while minivae's is measured."""
    if bench.torch is None:
        pytest.skip("PyTorch is not installed")
    bench.main(["--batch", "20", "--libs", "minivae", "torch", "torch-flush", "--warmup-steps", "0",
                "--repeat", "3", "--skip-fwd-bwd", "--max-seconds", "5", "--threads", "2", "--machine", "test",
                "--out", str(tmp_path)])
    row = result(tmp_path)["results"]["20"]
    assert set(row) == {"minivae", "torch", "torch-flush"}
    assert row["minivae"]["tracemalloc_peak_mib"] > 0
    assert row["torch"]["tracemalloc_peak_mib"] is None
    assert row["torch-flush"]["tracemalloc_peak_mib"] is None
