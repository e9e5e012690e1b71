"""benchmarks/bench_epoch.py on 200 made-up images with a made-up clock: each library's epoch is
the mean over the epochs of its own steps plus the batch preparation, counted for every library,
and the ratios and images per second follow from it."""
import sys
import types
from pathlib import Path

import pytest

import minivae.data
from test_bench_train_step import thread_counts
from test_train import small_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_epoch  # noqa: E402


def test_an_epoch_is_the_library_s_steps_plus_the_batch_preparation(monkeypatch, tmp_path):
    clock = types.SimpleNamespace(now_s=0.0)
    monkeypatch.setattr(bench_epoch, "time", types.SimpleNamespace(perf_counter=lambda: clock.now_s))
    monkeypatch.setattr(bench_epoch, "load_mnist", lambda verbose: small_data(n_train=200, n_eval=20))

    calls = []

    def costing(function, seconds):
        def timed(*args, **kwargs):
            calls.append(function.__qualname__)
            clock.now_s += seconds
            return function(*args, **kwargs)
        return timed

    # a step of minivae costs 0.25 s, one of the reference 0.5 s, preparing an epoch's batches 0.125 s
    monkeypatch.setattr(bench_epoch.TrainerStep, "__call__", costing(bench_epoch.TrainerStep.__call__, 0.25))
    monkeypatch.setattr(bench_epoch.bts.NumpyRunner, "step", costing(bench_epoch.bts.NumpyRunner.step, 0.5))
    monkeypatch.setattr(minivae.data.MinibatchLoader, "epoch", costing(minivae.data.MinibatchLoader.epoch, 0.125))
    before = thread_counts(bench_epoch.torch)
    threads = "1" if max(before[0], default=1) != 1 else "2"
    payload = bench_epoch.main(["--batch", "50", "--chunk", "2", "--epochs", "2", "--libs", "minivae", "numpy", "--threads",
                                threads, "--no-save"])
    assert thread_counts(bench_epoch.torch) == before  # given back: later trainings' bits depend on them
    assert (payload["train_images"], payload["steps_per_epoch"], payload["errors"]) == (200, 4, {})
    assert payload["prepare_batches_seconds_per_epoch"] == 0.125
    # one untimed chunk of two steps each (the one-time costs), then two epochs of four steps
    assert (calls.count("TrainerStep.__call__"), calls.count("NumpyRunner.step")) == (10, 10)
    assert payload["results"] == {
        "minivae": {"seconds_per_epoch": 1.12, "images_per_s": pytest.approx(200 / 1.12, abs=0.05),
                    "time_ratio_to_minivae": 1.0},
        "numpy": {"seconds_per_epoch": 2.12, "images_per_s": pytest.approx(200 / 2.12, abs=0.05),
                  "time_ratio_to_minivae": pytest.approx(2.12 / 1.12, abs=1e-3)}}
