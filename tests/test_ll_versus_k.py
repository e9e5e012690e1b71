"""benchmarks/ll_versus_k.py on a tiny run of made-up data: one row per k and seed, seed 0 with the
noise of ``minivae eval``, and one line naming each bad argument."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import minivae.train
from minivae.cli import main as minivae_main
from minivae.evaluate import log_likelihood_and_ess
from minivae.runs import load_run
from test_train import small_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ll_versus_k  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return small_data(n_train=100, n_eval=20)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """A finished one-epoch run of a tiny VAE, trained by the CLI on the made-up data."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(minivae.train, "load_mnist", lambda verbose=True: data)
        assert minivae_main(["train", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--batch-size", "50",
                             "--eval-k", "0", "--out", str(out), "--no-progress"]) == 0
    return out


def test_one_row_per_k_and_seed_seed_0_as_minivae_eval(run, data, tmp_path, monkeypatch):
    monkeypatch.setattr(ll_versus_k, "load_mnist", lambda verbose=True: data)
    ll_versus_k.main([str(run), "--n", "7", "--k", "3", "40", "--seeds", "3", "1", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("ll_versus_k_tiny_*.json")
    result = json.loads(path.read_text())
    assert [(r["k"], r["seed"]) for r in result["rows"]] == [(3, 0), (3, 1), (3, 2), (40, 0)]
    assert result["n_test"] == 7 and result["config"]["z_dim"] == 2
    ll, ess = log_likelihood_and_ess(load_run(run)[1], ll_versus_k.binarize_eval(data.x_test, "test")[:7], k=40)
    row = result["rows"][3]
    assert row["test_nll"] == pytest.approx(-ll.mean(), rel=1e-12)
    assert row["ess_median"] == pytest.approx(np.median(ess), rel=1e-12)
    assert result["rows"][0]["test_nll"] != result["rows"][1]["test_nll"]  # seeds give other noise
    assert result["mean_test_nll_by_k"]["3"] == pytest.approx(  # the mean, not the median
        sum(r["test_nll"] for r in result["rows"][:3]) / 3, rel=1e-12)


@pytest.mark.parametrize("args, named", [
    (["--k", "5", "50", "500", "--seeds", "1", "2"], "--seeds gives 2 counts for 3 values of --k"),
    (["--k", "0"], "--k 0"),
    (["--k", "5", "--seeds", "0"], "--seeds 0"),
    (["--n", "0"], "--n 0"),
    (["--n", "10001"], "--n 10001"),
    (["--k", "5", "50", "5"], "--k 5 is given more than once"),
])
def test_bad_arguments_are_named(run, capsys, args, named):
    with pytest.raises(SystemExit) as exit_info:
        ll_versus_k.parse_args([str(run), *args])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_one_count_of_seeds_serves_every_k(run):
    assert ll_versus_k.parse_args([str(run), "--k", "5", "50"]).seeds == [1, 1]
    assert ll_versus_k.parse_args([str(run), "--k", "5", "50", "--seeds", "3"]).seeds == [3, 3]


def test_a_folder_without_a_run_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ll_versus_k.parse_args([str(tmp_path)])
    assert f"{tmp_path} is not a run folder" in capsys.readouterr().err
