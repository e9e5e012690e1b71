"""The kernel benchmark's GPU timers, on a fake device whose events read a clock that each timed
call advances by a known amount: the loop sizes, the unit conversions of CuPy's and PyTorch's
events (milliseconds) and the number of calls are checked without a GPU."""
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_kernels  # noqa: E402

CALL_S = 1e-3  # what one timed call costs on the fake device's clock


class _Clock:
    """The fake device: ``tick()`` is one timed call; events record the time of the last one."""

    def __init__(self):
        self.now_s = 0.0
        self.calls = 0

    def tick(self):
        self.now_s += CALL_S
        self.calls += 1

    def event(self, **_):
        clock = self

        class Event:
            def record(self):
                self.at_s = clock.now_s

            def synchronize(self):
                pass

            def elapsed_time(self, end):  # PyTorch's: milliseconds to ``end``
                return (end.at_s - self.at_s) * 1e3

        return Event()


def _fake_cupy(clock):
    cuda = types.SimpleNamespace(
        Event=clock.event,
        get_elapsed_time=lambda start, end: (end.at_s - start.at_s) * 1e3,  # milliseconds
        Device=lambda: types.SimpleNamespace(synchronize=lambda: None))
    return types.SimpleNamespace(cuda=cuda)


def _fake_torch(clock):
    return types.SimpleNamespace(cuda=types.SimpleNamespace(Event=clock.event, synchronize=lambda: None))


@pytest.mark.parametrize("timer, fake", [(bench_kernels.time_gpu, _fake_cupy),
                                         (bench_kernels.time_torch_cuda, _fake_torch)],
                         ids=["cupy", "torch"])
def test_the_event_timers_report_microseconds_per_call(timer, fake):
    clock = _Clock()
    us, inner, repeats = timer(clock.tick, 7, 10.0, fake(clock))
    assert us == pytest.approx(CALL_S * 1e6)
    assert inner == 10  # ~10 ms per timed loop
    assert repeats == 7
    assert clock.calls == 3 + 1 + inner * repeats  # warm-up, the probe, the timed loops


def test_the_event_timer_takes_fewer_loops_when_the_budget_is_short():
    clock = _Clock()
    us, inner, repeats = bench_kernels.time_gpu(clock.tick, 50, 0.1, _fake_cupy(clock))
    assert (inner, repeats) == (10, 10)  # 0.1 s of 10 ms loops
    # ... and never fewer than five
    assert bench_kernels.time_gpu(clock.tick, 50, 0.001, _fake_cupy(clock))[2] == 5


def test_with_require_gpu_a_machine_without_a_gpu_measures_nothing(tmp_path, monkeypatch, capsys):
    """benchmarks/gpu_check.sh runs the benchmark with --require-gpu: where CuPy cannot be used it
    exits with status 2 and one line, writing no file, instead of passing with the CPU rows alone."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(SystemExit) as exc:
        bench_kernels.main(["--require-gpu", "--quick", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "nothing measured" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_result_names_the_python_and_library_versions(tmp_path, monkeypatch):
    """The minivae version is that of the minivae that ran, as the other benchmarks record it:
    importlib.metadata named the installed one, which may be another checkout's."""
    import minivae

    monkeypatch.setattr(minivae, "__version__", "0.0.0+ran")
    r = bench_kernels.main(["--no-gpu", "--no-torch", "--no-philox-cpu", "--sizes", "1e3", "--mnist", "",
                            "--repeats", "3", "--budget", "0.05", "--out", str(tmp_path)])
    assert {"python", "numpy", "minivae", "git_commit"} <= set(r["versions"])
    assert r["versions"]["minivae"] == "0.0.0+ran"
    assert r["machine"]["cpu_model"] and r["date"] and r["command"].startswith("bench_kernels.py --no-gpu")
    assert [row["impl"] for row in r["results"]] == ["numpy"]


def test_the_timers_report_the_median_loop_not_the_fastest(monkeypatch):
    """Loops of different speeds: the median of the loops is reported, as the docstring says."""
    # three warm-up calls and the probe at 1 ms, then five loops of 10 calls at 1, 2, 3, 5 and 9 ms
    costs = iter([1e-3] * 4 + [c for c in (1e-3, 2e-3, 3e-3, 5e-3, 9e-3) for _ in range(10)])
    clock = _Clock()

    def call():
        clock.now_s += next(costs)

    us, inner, repeats = bench_kernels.time_gpu(call, 5, 10.0, _fake_cupy(clock))
    assert (inner, repeats) == (10, 5) and us == pytest.approx(3e3)
    now = [0.0]
    loop_costs = iter([1e-3, 1e-3] + [1e-3] * 20 + [3e-3] * 20 + [9e-3] * 20)  # warm-up, probe, three loops
    monkeypatch.setattr(bench_kernels, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    us, inner, repeats = bench_kernels.time_cpu(lambda: now.__setitem__(0, now[0] + next(loop_costs)), 3, 10.0)
    assert (inner, repeats) == (20, 3) and us == pytest.approx(3e3)
    # ... and never fewer than three loops on the CPU
    assert bench_kernels.time_cpu(lambda: now.__setitem__(0, now[0] + 1e-3), 50, 0.001)[2] == 3


def test_useful_bytes_count_every_array_read_and_written():
    """Forward: mu, logvar read, z written (3 N), kl written (B); backward: dz, mu, logvar read and
    dmu, dlogvar written (5 N), gkl read (B)."""
    assert bench_kernels.useful_bytes(100, 50, 4) == (3 * 5000 + 100 + 5 * 5000 + 100) * 4


def test_the_rows_of_a_cpu_run_give_gb_per_s_from_the_bytes_and_the_median_time(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_kernels, "time_cpu", lambda fn, repeats, budget: (8.0, 1, 3))
    r = bench_kernels.main(["--no-gpu", "--no-torch", "--no-philox-cpu", "--sizes", "1e3", "--mnist", "100x50",
                            "--cpu-max", "5000", "--out", str(tmp_path)])
    assert [(row["B"], row["D"]) for row in r["results"]] == [(100, 50), (20, 50)]
    row = r["results"][0]
    assert (row["us_fwd_bwd"], row["gbps"]) == (8.0, round((8 * 5000 + 200) * 4 / 8e-6 / 1e9, 2))


def _fused(n, share, us=1.0, B=100, D=50, impl="minivae-fused"):
    return {"impl": impl, "B": B, "D": D, "n": n, "us_fwd_bwd": us, "gbps": 100.0 * share, "share_of_peak": share}


def test_summarize_gives_the_speedup_over_unfused_cupy_and_the_shares_from_1e7():
    args = types.SimpleNamespace(mnist="100x50")
    rows = [_fused(5000, 0.1, us=2.0), _fused(5000, 0.1, us=7.0, impl="cupy-unfused"),
            _fused(5000, 0.1, us=50.0, impl="numpy"), _fused(5000, 0.1, us=60.0, impl="numpy-philox"),
            _fused(10 ** 7, 0.8, B=200000), _fused(10 ** 8, 0.9, B=2000000)]
    s = bench_kernels.summarize(rows, args)
    assert s["mnist_speedup_fused_vs_cupy_unfused"] == 3.5 and s["mnist_speedup_target_met"]
    assert s["mnist_speedup_fused_vs_numpy_cpu"] == 25.0
    assert s["fused_share_of_peak_from_1e7"] == {"10000000": 0.8, "100000000": 0.9} and s["fused_peak_target_met"]
    rows[0]["us_fwd_bwd"] = 7.0 / 3.0  # exactly the target
    assert bench_kernels.summarize(rows, args)["mnist_speedup_target_met"]
    rows[0]["us_fwd_bwd"] = 2.4
    assert not bench_kernels.summarize(rows, args)["mnist_speedup_target_met"]
    rows[4]["share_of_peak"] = 0.79
    assert not bench_kernels.summarize(rows, args)["fused_peak_target_met"]


def test_the_markdown_table_gives_the_fused_kernels_bandwidth():
    rows = [_fused(5000, 0.25, us=2.0), _fused(5000, 0.5, us=7.0, impl="minivae-separate")]
    assert bench_kernels.markdown_table(rows).splitlines()[2] == "| 100 x 50 | 2.0 | 7.0 | 25 (25%) |"


def _alone(kernel, share, n=10 ** 7, D=50):
    return {"kernel": kernel, "n": n, "D": D, "share_of_copy": share, "share_of_copy_same_size": 0.5}


def test_the_kernels_alone_summary_gives_the_worst_case_and_fails_on_an_error():
    rows = [_alone("kl_fwd", 0.9), _alone("kl_fwd", 0.85, D=2), _alone("fused_fwd", 0.95), _alone("reparam_fwd", 0.3)]
    s = bench_kernels.kernel_summary(rows)
    assert s["worst_share_of_copy"] == {"kl_fwd": 0.85, "fused_fwd": 0.95, "reparam_fwd": 0.3}
    assert s["row_kernels_target_met"]  # 85% is the target; reparameterization is not a row kernel
    rows.append({"kernel": "kl_bwd", "n": 10 ** 7, "D": 50, "error": "CUDARuntimeError"})
    assert not bench_kernels.kernel_summary(rows)["row_kernels_target_met"]
    table = bench_kernels.kernel_table(rows)
    assert table.splitlines()[0] == "| n | D | reparam_fwd | kl_fwd | fused_fwd |"
    assert "| 1e+07 | 50 | 30% | 90% | 95% |" in table


def test_the_copy_bandwidth_counts_the_bytes_read_and_written(monkeypatch):
    """A copy of N bytes in 1 ms moves 2 N bytes: read and written."""
    clock = _Clock()

    class Array:
        def __init__(self, n):
            self.nbytes = 4 * n

        def fill(self, _):
            pass

        def __setitem__(self, key, value):
            clock.tick()

    cp = types.SimpleNamespace(
        float32="float32", empty=lambda n, dtype: Array(n), empty_like=lambda a: Array(a.nbytes // 4),
        cuda=types.SimpleNamespace(Event=clock.event, get_elapsed_time=lambda s, e: (e.at_s - s.at_s) * 1e3),
        get_default_memory_pool=lambda: types.SimpleNamespace(free_all_blocks=lambda: None))
    assert bench_kernels.measured_copy_gbps(cp, 4 * 10 ** 6) == pytest.approx(2 * 4e6 / CALL_S / 1e9)


@pytest.mark.parametrize("clock_khz, bus_bits, name, peak", [(2_619_000, 5120, "NVIDIA H100 80GB HBM3", 3352.32),
                                                             (0, 0, "NVIDIA H100 80GB HBM3", 3352.0),
                                                             (0, 0, "NVIDIA H200", 4800.0)])
def test_the_peak_bandwidth_is_twice_the_memory_clock_times_the_bus_or_the_datasheet_s(
        monkeypatch, clock_khz, bus_bits, name, peak):
    """Double data rate: 2 x clock x bus width in bytes; without them the datasheet value of the
    device's name (a name that contains the table's key)."""
    monkeypatch.setattr(bench_kernels, "machine_gpu_info", lambda: {"name": name})
    device = types.SimpleNamespace(id=0, attributes={})
    props = {"memoryClockRate": clock_khz, "memoryBusWidth": bus_bits}
    cp = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Device=lambda: device, runtime=types.SimpleNamespace(getDeviceProperties=lambda i: props)))
    assert bench_kernels.gpu_info(cp)["peak_bandwidth_gbps"] == pytest.approx(peak)


def test_sizes_may_be_written_as_floats_with_spaces_and_a_trailing_comma():
    assert bench_kernels.parse_sizes("1e7, 1e8,") == [10 ** 7, 10 ** 8]
    assert bench_kernels.parse_sizes("") == []
