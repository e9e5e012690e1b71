"""benchmarks/paper_runs.py: the papers' recipes are valid commands with the papers' settings,
and a long run is trained in pieces of bounded time, each resuming the folder the last one left."""
import json
import os
import re
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from minivae import checkpoint
from minivae.cli import build_parser, check_train
from minivae.runs import CHECKPOINT, RESULTS, TrainConfig, read_metrics
from minivae.train import train

from test_train import small_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import paper_runs  # noqa: E402


@pytest.mark.parametrize("name", ["vae-1layer", "iwae-1layer-k50", "iwae-2layer-k50"])
def test_each_iwae_recipe_is_a_valid_command_with_the_iwae_paper_s_training(tmp_path, name):
    config = check_train(build_parser().parse_args(paper_runs.command(name, tmp_path / name, "cpu")))
    assert (config.lr, config.lr_schedule, config.adam_eps, config.batch_size, config.epochs) == \
        (1e-3, "stages", 1e-4, 20, 3280)
    assert (config.hidden, config.activation, config.z_dim, config.warmup) == ((200, 200), "tanh", 50, 0)
    assert config.keep_best and config.eval_k == 5000


@pytest.mark.parametrize("name", ["sdgm-ssl-100", "adgm-ssl-100"])
def test_each_auxiliary_recipe_is_a_valid_command_with_the_authors_training(tmp_path, name):
    config = check_train(build_parser().parse_args(paper_runs.command(name, tmp_path / name, "cpu", seed=2)))
    assert (config.lr, config.lr_schedule, config.lr_step, config.lr_gamma, config.epochs) == \
        (3e-4, "step", 200, 0.75, 1000)
    assert (config.hidden, config.activation, config.z_dim, config.model_options, config.batch_size) == \
        ((500, 500), "relu", 100, {"a_dim": 100}, 100)
    assert (config.n_labelled, config.warmup, config.seed) == (100, 0, 2)
    assert config.keep_best and config.eval_k == 0


def train_small_m1(folder):
    """A small trained VAE run in ``folder``, as M1."""
    train(TrainConfig(epochs=1, batch_size=50, hidden=(8,), z_dim=2, eval_k=0, out=str(folder)),
          data=small_data(n_train=100, n_eval=20), progress=False, log=lambda m: None)


def recipe_config(name, folder, seed=0):
    """The TrainConfig of the recipe ``name`` as the command line checks it, its run in ``folder``."""
    return check_train(build_parser().parse_args(paper_runs.command(name, folder, "cpu", seed=seed)))


def test_the_ladder_recipe_is_the_authors_five_layer_training(tmp_path):
    config = recipe_config("ladder-5layer", tmp_path / "ladder")
    assert (config.model, config.hidden, config.activation) == \
        ("ladder", (512, 256, 128, 64, 32), "leaky_relu")
    assert config.model_options == {"z_dims": [64, 32, 16, 8, 4], "mlp_layers": 2, "batch_norm": True,
                                    "up_input": "mean", "variance": "softplus", "batch_norm_heads": True}
    assert (config.lr, config.lr_schedule, config.adam_eps, config.batch_size, config.epochs, config.warmup) == \
        (2e-4, "constant", 1e-4, 256, 2000, 200)
    assert (config.clip_norm, config.clip_value, config.bn_statistics) == (4.0, 0.9, "pass")
    assert (config.warmup_start, config.warmup_unit) == (0.0, "epoch")  # min(1, e / 200), as their code
    assert config.keep_best and config.eval_k == 5000


def test_the_ladder_recipe_names_only_what_still_differs_from_the_authors_code():
    """The settings that follow the authors' code (its three model settings, its warm-up from 0,
    its pass for the batch-norm statistics) are no longer differences; what remains is."""
    differences = paper_runs.RECIPES["ladder-5layer"].differences
    for gone in ("mean of the one below", "through a softplus", "mean and variance layers", "none of these",
                 "warm-up", "once per epoch", "running averages"):
        assert gone not in differences
    for kept in ("ladder_share_params False", "variance floor", "Glorot", "1e-10", "biased",
                 "60,000"):
        assert kept in differences


def test_the_planar_flow_recipe_has_80_flows_the_annealed_free_energy_and_rmsprop(tmp_path):
    config = recipe_config("flow-planar-k80", tmp_path / "flow")
    assert (config.model, config.model_options, config.z_dim, config.hidden, config.activation) == \
        ("flow", {"flows": 80, "annealing": "joint"}, 40, (400, 400), "relu")
    assert (config.optimizer, config.momentum, config.lr, config.lr_schedule) == ("rmsprop", 0.9, 1e-5, "constant")
    # beta_t = min(1, 0.01 + t / 10000) at every step t = 1, 2, ..., as the reproduction anneals it
    assert (config.batch_size, config.warmup, config.warmup_unit, config.warmup_start, config.epochs) == \
        (100, 10000, "step", 0.0101, 1000)
    assert config.keep_best and config.eval_k == 5000
    differences = paper_runs.RECIPES["flow-planar-k80"].differences
    for gone in ("warm-up", "RMSprop", "Adam", "cosine"):  # the paper's, now the recipe's
        assert gone not in differences
    assert "second-hand" in differences


@pytest.mark.parametrize("name, model, hidden", [("m2-ssl-100", "m2", (500,)), ("m1m2-ssl-100", "m1m2", (300,))])
def test_each_m2_recipe_has_the_authors_training(tmp_path, name, model, hidden):
    train_small_m1(tmp_path / "runs" / "m1-vae-seed0")  # M1+M2 is checked on the model of its M1 run
    config = recipe_config(name, tmp_path / "runs" / name, seed=2)
    assert (config.model, config.hidden, config.activation, config.z_dim, config.n_labelled, config.seed) == \
        (model, hidden, "softplus", 50, 100, 2)
    assert (config.lr, config.lr_schedule, config.batch_size, config.epochs, config.warmup) == \
        (3e-4, "constant", 500, 3000, 0)
    assert config.weight_decay == 2e-5  # the weight prior N(0, 1) over 50,000 images
    assert config.model_options["labelled_weight"] == "image"  # the paper's objective, per image
    assert config.labelled_batch_size == 1  # 1 labelled image a step, as in the authors' code
    assert config.keep_best and config.eval_k == 0
    differences = paper_runs.RECIPES[name].differences
    assert "we take 100" not in differences and "499 unlabelled images and 1 labelled, ours 500 and 1" in differences


def test_m1m2_is_built_on_the_m1_recipe_of_seed_0_beside_it(tmp_path):
    """Every label draw of M1+M2 takes one M1, the run of the m1-vae recipe of seed 0."""
    config = recipe_config("m1-vae", tmp_path / "m1")
    assert (config.model, config.hidden, config.activation, config.z_dim, config.batch_size, config.lr) == \
        ("vae", (500, 500), "softplus", 50, 1000, 3e-4)
    assert (config.adam_eps, config.weight_decay) == (1e-10, 2e-5)
    assert config.keep_best
    argv = paper_runs.command("m1m2-ssl-100", tmp_path / "runs" / "m1m2-ssl-100-seed4", "cpu", seed=4)
    assert argv[argv.index(f"m1={tmp_path / 'runs' / 'm1-vae-seed0'}") - 1] == "--set"


def test_list_says_how_many_steps_each_recipe_takes(capsys):
    """A run's steps size its GPU time: the IWAE paper's 3,280 epochs of batches of 20 are 8.2
    million; the Ladder VAE's batches of 256 leave a last batch of 80 images (196 an epoch)."""
    assert paper_runs.steps("vae-1layer") == (3280, 2500, 8_200_000)
    assert paper_runs.steps("ladder-5layer") == (2000, 196, 392_000)
    assert paper_runs.main(["list"]) == 0
    assert "    steps: 3000 epochs of 100, 300,000 in all\n" in capsys.readouterr().out


#: ``python -m minivae`` for the pieces of the test: the command line on the small data of the
#: training tests instead of MNIST (a new process cannot be handed a monkeypatched loader). Each
#: piece ends as the deadline would end it, by SIGTERM, but sent by the trainer to itself after
#: its ``STOP_AFTER_STEPS``-th step: so the pieces end where the test says on a machine of any
#: speed (a deadline of a few seconds, on a loaded machine, came before the trainer had started).
FAKE_MINIVAE = """
import os
import signal
import sys
import minivae.train
from minivae.cli import main
from test_train import small_data
minivae.train.load_mnist = lambda verbose=True: small_data()
run_step, steps = minivae.train.Trainer._run_step, []

def step_then_terminated(self, xb, beta, t):
    out = run_step(self, xb, beta, t)
    steps.append(t)
    if len(steps) == int(os.environ["STOP_AFTER_STEPS"]):
        os.kill(os.getpid(), signal.SIGTERM)
    return out
minivae.train.Trainer._run_step = step_then_terminated
sys.exit(main(sys.argv[1:]))
"""


def test_a_piece_stops_the_trainer_with_sigterm_at_its_time():
    """At its time a piece sends the trainer SIGTERM and returns its exit status (here a process
    without a handler for it, which SIGTERM ends however soon it comes)."""
    start = time.monotonic()
    assert paper_runs.train_for(["-c", "import time; time.sleep(600)"], 1, [sys.executable]) == -signal.SIGTERM
    assert time.monotonic() - start < 300
    assert paper_runs.train_for(["-c", "raise SystemExit(3)"], 300, [sys.executable]) == 3


def test_a_piece_stopped_before_the_trainer_handles_sigterm_exits_143(tmp_path):
    """A trainer still starting when its time comes is ended by SIGTERM itself: the piece's exit
    status is 143 all the same (not 241, -15 as a byte), and there is no run to pack."""
    sleeping = [sys.executable, "-c", "import time; time.sleep(600)"]
    assert paper_runs.piece("vae-1layer", 1, tmp_path / "runs", tmp_path / "out", "cpu", sleeping) == 143
    assert not any((tmp_path / "out").iterdir())


def test_a_long_run_is_trained_in_pieces_each_resuming_the_last(tmp_path, monkeypatch):
    """A first piece starts the run and is stopped with SIGTERM (exit 143), its checkpoint saved
    inside epoch 2; the folder, packed, unpacked elsewhere (another machine), is resumed by the
    next piece, stopped inside epoch 3; each piece records the run and packs it."""
    tiny = ["--model", "vae", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--epochs", "100000",
            "--lr-schedule", "constant", "--eval-k", "0"]
    monkeypatch.setitem(paper_runs.RECIPES, "tiny", paper_runs.Recipe(tiny, "1.00 (a made-up figure; read nowhere)", "-"))
    fake = tmp_path / "fake_minivae.py"
    fake.write_text(FAKE_MINIVAE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("STOP_AFTER_STEPS", "8")  # of the 6 steps of an epoch of 300 images
    launcher = [sys.executable, str(fake)]
    first, second = tmp_path / "machine1", tmp_path / "machine2"

    def piece(runs, out):  # (its time only bounds a piece that does not stop)
        return paper_runs.piece("tiny", 300.0, runs, out, "cpu", launcher)  # (a float, as --seconds gives it)

    assert piece(first, first / "out") == 143
    done = checkpoint.load_document(first / "tiny-seed0" / CHECKPOINT)
    assert (done["epoch"], done["batch"], done["piece"]) == (1, 2, 1)
    record = json.loads((first / "out" / "run_tiny-seed0.json").read_text())
    assert not record["finished"] and record["pieces"] == 1 and record["epochs"] == 1
    assert "(in pieces of at most 300 s)" in record["run_command"]
    assert record["paper"] == "1.00 (a made-up figure; read nowhere)"  # what the report sets it beside
    assert record["command_wall_seconds"] is None  # a piece's time is not the run's
    second.mkdir()
    with tarfile.open(first / "out" / "tiny-seed0.tar") as tar:
        # (the "data" filter, which Python 3.14 makes the default, where it exists)
        tar.extractall(second, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    arrays = checkpoint.load(second / "tiny-seed0" / CHECKPOINT)[0]
    for name, value in checkpoint.load(first / "tiny-seed0" / CHECKPOINT)[0].items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    assert piece(second, second / "out") == 143
    resumed = checkpoint.load_document(second / "tiny-seed0" / CHECKPOINT)
    assert (resumed["epoch"], resumed["batch"], resumed["piece"]) == (2, 4, 2)
    assert resumed["run_id"] == done["run_id"]
    epochs = [line for line in read_metrics(second / "tiny-seed0") if "valid_elbo" in line]
    assert [(line["epoch"], line["piece"]) for line in epochs] == [(1, 1), (2, 2)]
    assert json.loads((second / "out" / "run_tiny-seed0.json").read_text())["pieces"] == 2
    # A folder with the files of a run but no checkpoint (stopped before it could save one) holds
    # nothing trained: the next piece starts the run again.
    third = tmp_path / "machine3" / "tiny-seed0"
    third.mkdir(parents=True)
    (third / "config.json").write_text((second / "tiny-seed0" / "config.json").read_text())
    assert piece(third.parent, third.parent / "out") == 143
    again = checkpoint.load_document(third / CHECKPOINT)
    assert (again["epoch"], again["batch"], again["piece"]) == (1, 2, 1) and again["run_id"] != done["run_id"]
    # Another seed is another run, in a folder of its own.
    assert paper_runs.piece("tiny", 300, tmp_path / "m4", tmp_path / "m4" / "out", "cpu", launcher, seed=3) == 143
    assert checkpoint.load_document(tmp_path / "m4" / "tiny-seed3" / CHECKPOINT)["config"]["seed"] == 3


def test_a_recipe_built_on_another_starts_once_that_run_has_finished(tmp_path, monkeypatch, capsys):
    """M1+M2 needs its M1 trained: before, a piece says in one line what readies it (unpack or
    train it) and starts nothing; after, it trains on the model of that run, and resumes in a
    moved folder (the run holds M1, whose folder is named where the run started)."""
    tiny_m1m2 = ["--model", "m1m2", "--hidden", "8", "--z-dim", "2", "--n-labelled", "10", "--batch-size", "50",
                 "--epochs", "3", "--lr-schedule", "constant", "--eval-k", "0"]
    monkeypatch.setitem(paper_runs.RECIPES, "tiny-m1m2", paper_runs.Recipe(tiny_m1m2, "-", "-", {"m1": "tiny-m1"}))
    monkeypatch.setitem(paper_runs.RECIPES, "tiny-m1", paper_runs.Recipe([], "-", "-"))  # (trained here directly)
    fake = tmp_path / "fake_minivae.py"
    fake.write_text(FAKE_MINIVAE)
    monkeypatch.setenv("PYTHONPATH",
                       os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("STOP_AFTER_STEPS", "8")  # of the 6 steps of an epoch of 300 images
    runs, out, m1 = tmp_path / "runs", tmp_path / "out", tmp_path / "runs" / "tiny-m1-seed0"
    train_m1 = f"python benchmarks/paper_runs.py piece tiny-m1 --seconds 300 --seed 0 --runs {runs} --out {out}"

    def piece(folder=runs):
        return paper_runs.piece("tiny-m1m2", 300, folder, out, "cpu", [sys.executable, str(fake)], seed=1)

    def refused(problem):
        capsys.readouterr()
        assert piece() == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [f"paper_runs.py: tiny-m1m2 is built on the run of tiny-m1 in {m1}, {problem}"]
        assert not (runs / "tiny-m1m2-seed1").exists() and not out.exists()

    refused(f"which holds none: unpack it there if it was trained elsewhere (tar -xf tiny-m1-seed0.tar -C {runs}), "
            f"else train it first ({train_m1})")
    train_small_m1(m1)
    finished = (m1 / RESULTS).read_bytes()
    (m1 / RESULTS).unlink()  # a run that has not finished
    refused(f"which has not finished (no {RESULTS}): train its pieces first ({train_m1})")
    (m1 / RESULTS).write_bytes(finished)
    assert piece() == 143  # stopped inside epoch 2
    config = json.loads((runs / "tiny-m1m2-seed1" / "config.json").read_text())
    assert config["model_options"]["m1"] == str(m1.resolve()) and config["seed"] == 1
    moved = tmp_path / "elsewhere" / "runs"
    shutil.move(runs, moved)
    assert piece(moved) == 143  # resumed, stopped inside epoch 3
    resumed = checkpoint.load_document(moved / "tiny-m1m2-seed1" / CHECKPOINT)
    assert (resumed["epoch"], resumed["piece"]) == (2, 2)
    # where each run stands, for choosing the next piece
    (moved / "not-a-recipe-seed0").mkdir()
    assert [re.sub(r"[0-9.]+ s on cpu", "S s on cpu", line) for line in paper_runs.status(moved)] == [
        "tiny-m1-seed0: 1 of 1 epochs and 0 batches, 1 piece(s), S s on cpu; finished",
        "tiny-m1m2-seed1: 2 of 3 epochs and 4 batches, 2 piece(s), S s on cpu; not finished"]
