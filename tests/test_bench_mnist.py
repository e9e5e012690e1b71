"""benchmarks/bench_mnist.py on made-up data: it trains as ``minivae train`` would, and its result
names the command that made it."""
import sys
from pathlib import Path

import pytest

from test_train import small_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_mnist  # noqa: E402


def test_a_tiny_run_is_trained_scored_and_written(tmp_path, monkeypatch):
    """The options of ``minivae train`` become the run's config (``check_train``), and the
    result holds its test NLL and the command that made it, which also trained the run: called
    from Python, argv, not the caller's sys.argv (pytest's)."""
    data = small_data(n_train=100, n_eval=20)
    monkeypatch.setattr(bench_mnist, "load_mnist", lambda verbose=True: data)
    written = {}
    monkeypatch.setattr(bench_mnist, "write_result",
                        lambda name, payload, out_dir=None, command=None:
                        written.update(payload, command=command) or name)
    argv = ["--epochs", "1", "--hidden", "8", "--z-dim", "2", "--batch-size", "50",
            "--out", str(tmp_path / "tiny"), "--no-progress", "--nll-k", "2", "--eval-n", "5"]
    bench_mnist.main(argv)
    assert written["command"] == written["run_command"] == "bench_mnist.py " + " ".join(argv)
    assert written["config"]["z_dim"] == 2 and written["epochs"] == 1 and written["nll_n_test"] == 5
    assert written["test_nll"] > 0


def test_a_mistake_in_the_options_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_mnist.main(["--epochs", "1", "--beta", "2", "--model", "iwae", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "--beta 2: model 'iwae' trains on the" in capsys.readouterr().err
