"""benchmarks/paper_runs.py: the papers' recipes are valid commands with the papers' settings,
and a long run is trained in pieces of bounded time, each resuming the folder the last one left."""
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minivae import checkpoint
from minivae.cli import build_parser, check_train
from minivae.runs import CHECKPOINT, read_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import paper_runs  # noqa: E402


@pytest.mark.parametrize("name", list(paper_runs.RECIPES))
def test_each_recipe_is_a_valid_command_with_the_iwae_paper_s_training(tmp_path, name):
    args = build_parser().parse_args(paper_runs.command(name, tmp_path / name, "cpu"))
    config = check_train(args)
    assert (config.lr, config.lr_schedule, config.adam_eps, config.batch_size, config.epochs) == \
        (1e-3, "stages", 1e-4, 20, 3280)
    assert (config.hidden, config.activation, config.z_dim, config.warmup) == ((200, 200), "tanh", 50, 0)
    assert config.keep_best and config.eval_k == 5000


#: ``python -m minivae`` for the pieces of the test: the command line on the small data of the
#: training tests instead of MNIST (a new process cannot be handed a monkeypatched loader).
FAKE_MINIVAE = """
import sys
import minivae.train
from minivae.cli import main
from test_train import small_data
minivae.train.load_mnist = lambda verbose=True: small_data()
sys.exit(main(sys.argv[1:]))
"""


def test_a_long_run_is_trained_in_pieces_each_resuming_the_last(tmp_path, monkeypatch):
    """A first piece starts the run and is stopped at its time with SIGTERM (exit 143), its
    checkpoint saved; the folder, packed, unpacked elsewhere (another machine), is resumed by
    the next piece; each piece records the run and packs it."""
    tiny = ["--model", "vae", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--epochs", "100000",
            "--lr-schedule", "constant", "--eval-k", "0"]
    monkeypatch.setitem(paper_runs.RECIPES, "tiny", paper_runs.Recipe(tiny, "-", "-"))
    fake = tmp_path / "fake_minivae.py"
    fake.write_text(FAKE_MINIVAE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    launcher = [sys.executable, str(fake)]
    first, second = tmp_path / "machine1", tmp_path / "machine2"

    def piece(runs, out):
        return paper_runs.piece("tiny", 6, runs, out, "cpu", launcher)

    assert piece(first, first / "out") == 143
    done = checkpoint.load_document(first / "tiny" / CHECKPOINT)
    assert done["epoch"] >= 1 and done["piece"] == 1
    record = json.loads((first / "out" / "run_tiny.json").read_text())
    assert not record["finished"] and record["pieces"] == 1 and record["epochs"] == done["epoch"]
    assert "(in pieces of at most 6 s)" in record["run_command"]
    assert record["command_wall_seconds"] is None  # a piece's time is not the run's
    second.mkdir()
    with tarfile.open(first / "out" / "tiny.tar") as tar:
        # (the "data" filter, which Python 3.14 makes the default, where it exists)
        tar.extractall(second, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    arrays = checkpoint.load(second / "tiny" / CHECKPOINT)[0]
    for name, value in checkpoint.load(first / "tiny" / CHECKPOINT)[0].items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    assert piece(second, second / "out") == 143
    resumed = checkpoint.load_document(second / "tiny" / CHECKPOINT)
    assert resumed["piece"] == 2 and resumed["run_id"] == done["run_id"]
    assert resumed["epoch"] * 1000 + resumed["batch"] > done["epoch"] * 1000 + done["batch"]
    epochs = [line for line in read_metrics(second / "tiny") if "valid_elbo" in line]
    assert [line["epoch"] for line in epochs] == list(range(1, len(epochs) + 1))
    assert {line["piece"] for line in epochs} == {1, 2}
    assert json.loads((second / "out" / "run_tiny.json").read_text())["pieces"] == 2
