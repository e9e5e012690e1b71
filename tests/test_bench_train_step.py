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
    assert r["machine"]["name"] == "test" and r["machine"]["cpu_model"]
    for v in r["results"]["20"].values():
        assert v["images_per_s"] == round(20 / v["ms_per_step"] * 1e3, 1)


def test_gpu_results_are_named_after_the_gpu():
    """Lent GPU machines share one CPU model: their results are named after the GPU, so that an
    H100's and an H200's do not overwrite each other."""
    import machine

    cpu = {"cpu_model": "Intel(R) Xeon(R) Processor", "cores": 16}
    assert machine.default_machine_name(cpu) == "intel-r-xeon-r-processor-16c"
    assert machine.default_machine_name(cpu, {"name": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert machine.default_machine_name(cpu, {"name": "NVIDIA H200"}) == "nvidia-h200"
    assert machine.default_machine_name(cpu, {"name": "NVIDIA H100 (PCIe)"}) == "nvidia-h100-pcie"


def thread_counts(torch):
    """The BLAS libraries' thread counts (threadpoolctl) and PyTorch's, as the process has them."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    np.ones((2, 2)) @ np.ones((2, 2))  # (BLAS loaded)
    return ([p["num_threads"] for p in threadpoolctl.threadpool_info()],
            torch.get_num_threads() if torch is not None else None)


def test_main_gives_its_caller_the_thread_counts_back(small_mnist):
    """main limits BLAS and PyTorch to --threads while it measures; called from Python, it gives
    the counts back when it returns (a later training's bits depend on the BLAS thread count)."""
    before = thread_counts(bench.torch)
    other = "1" if max(before[0], default=1) != 1 else "2"
    args = ARGS[:ARGS.index("--threads")] + ["--threads", other] + ARGS[ARGS.index("--threads") + 2:]
    bench.main(args + ["--no-save"])
    assert thread_counts(bench.torch) == before


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


def _step_row(ms, **extra):
    return dict(ms_per_step=ms, **extra)


def test_the_targets_divide_minivae_s_time_by_the_others_as_the_readme_states():
    rows = {"100": {"minivae": _step_row(10.0, eps_ms=1.5, tracemalloc_peak_mib=6.0),
                    "numpy": _step_row(8.8, eps_ms=0.3, tracemalloc_peak_mib=4.0),
                    "torch": _step_row(12.5), "minivae-graph": _step_row(2.0), "torch-graph": _step_row(5.0)},
            "1000": {"minivae": _step_row(100.0), "torch": _step_row(80.0)}}
    t = bench.targets(rows)
    assert t["100"]["time_vs_numpy"] == {"value": 1.136, "target": "<= 1.1", "met": False}
    assert t["100"]["time_vs_numpy_if_eps_cost_the_same"]["value"] == 1.0  # (10 - 1.5 + 0.3) / 8.8
    assert t["100"]["peak_memory_vs_numpy"] == {"value": 1.5, "target": "<= 1.5", "met": True}
    assert t["100"]["throughput_vs_torch"] == {"value": 1.25, "target": ">= 1.0", "met": True}
    assert t["100"]["graph_time_vs_torch_graph"] == {"value": 0.4, "target": "<= 0.5", "met": True}
    assert t["1000"] == {"time_vs_torch": {"value": 1.25, "target": "<= 1.2", "met": False}}
    row = {"minivae": _step_row(10.0), "numpy": _step_row(8.0)}
    bench.add_ratios(row)
    assert (row["numpy"]["time_ratio_to_minivae"], row["numpy"]["throughput_ratio_to_minivae"]) == (0.8, 1.25)


class _FakeClock:
    """perf_counter and the page-fault count of a fake process that the fake runners advance."""

    def __init__(self):
        self.now_s, self.faults = 0.0, 0

    def perf_counter(self):
        return self.now_s

    def getrusage(self, who):
        return types.SimpleNamespace(ru_minflt=self.faults)


class _FakeRunner:
    """Each block of steps costs the next of ``costs`` (seconds per step) and of ``faults`` (per step)."""

    def __init__(self, clock, costs, faults, block):
        self.clock, self.costs, self.faults, self.block, self.steps = clock, costs, faults, block, 0

    def step(self, xb):
        self.clock.now_s += self.costs[self.steps // self.block]
        self.clock.faults += self.faults[self.steps // self.block]
        self.steps += 1
        return 1.0

    def draw_eps(self, b):
        self.clock.now_s += 1e-3

    def sync(self):
        pass


def test_the_interleaved_timer_reports_the_median_quartiles_and_faults_of_the_timed_blocks(monkeypatch):
    """The first block is untimed (its one-time costs and page faults are not a step's)."""
    clock = _FakeClock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(bench, "resource", types.SimpleNamespace(getrusage=clock.getrusage, RUSAGE_SELF=0))
    runner = _FakeRunner(clock, [0.1, 1e-3, 2e-3, 3e-3, 5e-3, 9e-3], [1000, 1, 2, 3, 4, 5], block=2)
    out = bench.time_interleaved({"a": runner}, {"a": [None]}, repeat=5, block=2)
    assert out["_repeat"] == 5
    assert out["a"] == {"ms_per_step": 3.0, "ms_min": 1.0, "ms_q1": 1.5, "ms_q3": 7.0, "last_loss": 1.0,
                        "page_faults_per_step": 3.0}
    assert bench.time_eps(runner, 10, repeat=4) == 1.0  # ms per draw
    # a first round that says five would not fit in the budget: fewer, but three at least
    runner = _FakeRunner(clock, [0.1] * 20, [0] * 20, block=2)
    assert bench.time_interleaved({"a": runner}, {"a": [None]}, repeat=5, block=2, budget_s=0.1)["_repeat"] == 3


def test_subnormal_moments_are_counted_without_the_zeros():
    assert bench.count_subnormal([np.array([0.0, 1e-39, -1e-40, 1.0, -0.0], np.float32), np.zeros(3, np.float32)]) == 2


class _Agreeing:
    def __init__(self, scale):
        self.scale = scale

    def batch(self, x):
        return x

    def loss_and_grads(self, xb, seed_or_eps):
        return 1.0, [np.ones(3) * self.scale, np.ones(2)]


def test_a_library_whose_gradient_differs_by_two_percent_is_dropped():
    failed = {}
    out = bench.check_agreement({"minivae": _Agreeing(1.0), "close": _Agreeing(1.001), "far": _Agreeing(1.02)},
                                np.zeros((2, 784), np.float32), 0, lambda name, exc: failed.update({name: exc}))
    assert list(out) == ["close"] and out["close"]["grad_max_rel_diff"] == pytest.approx(1e-3)
    assert list(failed) == ["far"]


def test_the_peak_rss_rise_is_the_peak_during_the_step_less_the_rss_before(monkeypatch):
    samples = iter([(1000, 1500), (1200, 3048)] * 3)  # (VmRSS, VmHWM) in KiB before and after each step
    monkeypatch.setattr(bench, "_rss_kib", lambda: next(samples))
    monkeypatch.setattr(bench, "_reset_peak_rss", lambda: True)
    runner = _FakeRunner(_FakeClock(), [0.0] * 3, [0] * 3, block=1)
    assert bench.measure_memory(runner, [None], tracemalloc_ok=False) == {"tracemalloc_peak_mib": None,
                                                                          "rss_peak_rise_mib": 2.0}


def test_the_steady_state_gives_the_subnormal_share_of_each_moment(monkeypatch):
    m, v = np.array([1e-39, 1.0, 0.0, 0.0], np.float32), np.array([1e-39, 1e-40, 1.0, 0.0], np.float32)
    steps = []
    fake = types.SimpleNamespace(step=steps.append, state=lambda: {"params": [], "m": [m], "v": [v], "t": 3})
    monkeypatch.setattr(bench, "NumpyRunner", lambda state, device, seed, flush_every: fake)
    data = types.SimpleNamespace(x_train=np.zeros((200, 784), np.float32))
    _, info = bench.warm_state(data, 3, seed=1)
    assert len(steps) == 3
    assert (info["subnormal_exp_avg_fraction"], info["subnormal_exp_avg_sq_fraction"],
            info["zero_exp_avg_fraction"]) == (0.25, 0.5, 0.5)


def _plotted(tmp_path, stem, **fields):
    r = {"date": "2026-01-01T00:00:00+00:00", "threads": 2, "device": "cpu", "results": {}}
    r.update(fields)
    (tmp_path / f"train_step_{stem}.json").write_text(json.dumps(r))
    return r


def test_the_plot_takes_the_newest_run_of_each_kind_and_its_batches_in_order(tmp_path):
    """docs/img/step_time_vs_batch.png: the newest CPU run with the threads asked for (not one that
    kept freed memory) and the newest GPU run, by the date inside; batch sizes in numeric order."""
    import plot_step_time

    _plotted(tmp_path, "a", date="2026-01-02T00:00:00+00:00")
    cpu = _plotted(tmp_path, "b", date="2026-01-03T00:00:00+00:00", results={
        "1000": {"minivae": {"ms_per_step": 50.0}}, "100": {"minivae": {"ms_per_step": 9.0}},
        "20": {"minivae": {"ms_per_step": 2.0}, "numpy": {"ms_per_step": 1.0}}})
    _plotted(tmp_path, "c", date="2026-01-04T00:00:00+00:00", retain_freed_memory=True)
    _plotted(tmp_path, "d", date="2026-01-05T00:00:00+00:00", threads=1)
    gpu = _plotted(tmp_path, "e_gpu", date="2026-01-02T00:00:00+00:00", device="gpu")
    _plotted(tmp_path, "f_gpu", date="2026-01-01T00:00:00+00:00", device="gpu")
    assert plot_step_time.newest_runs(tmp_path, 2) == (cpu, gpu)
    assert plot_step_time.series(cpu) == {"minivae": ([20, 100, 1000], [2.0, 9.0, 50.0])}
