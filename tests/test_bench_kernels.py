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


def test_the_result_names_the_python_and_library_versions(tmp_path):
    r = bench_kernels.main(["--no-gpu", "--no-torch", "--no-philox-cpu", "--sizes", "1e3", "--mnist", "",
                            "--repeats", "3", "--budget", "0.05", "--out", str(tmp_path)])
    assert {"python", "numpy", "minivae", "git_commit"} <= set(r["versions"])
    assert r["machine"]["cpu_model"] and r["date"] and r["command"].startswith("bench_kernels.py --no-gpu")
    assert [row["impl"] for row in r["results"]] == ["numpy"]
