"""Every user mistake on the command line ends in one line, ``minivae: error: ...``, naming the
bad value (and what would be valid), with exit status 2 and no traceback; all of them are caught
before any work starts: MNIST is never loaded here (``no_mnist`` makes loading it fail the test)."""
import errno
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

import minivae.data
import minivae.train
import minivae.viz
from minivae import checkpoint, cli
from minivae.cli import UsageError, main
from minivae.train import CHECKPOINT
from test_train import small_data

ROOT = Path(__file__).resolve().parents[1]


def _no_mnist(*args, **kwargs):
    raise AssertionError("MNIST was loaded before the arguments were checked")


@pytest.fixture(autouse=True)
def no_mnist(monkeypatch):
    """Loading MNIST fails the test: every error below must be found before the data is touched.

    ``load_mnist`` is replaced in every minivae module that holds it by name: minivae.data and
    each module that imported it from there (minivae.train, minivae.viz, imported above so that
    a command importing it later does not bind the stand-in for good)."""
    original = minivae.data.load_mnist
    for name, module in list(sys.modules.items()):
        if name.startswith("minivae.") and getattr(module, "load_mnist", None) is original:
            monkeypatch.setattr(module, "load_mnist", _no_mnist)


def user_error(capsys, argv, *named):
    """Run ``minivae argv``; assert exit status 2 and one line ``minivae: error: ...`` containing
    every string of ``named``, and no traceback; return the line."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("minivae: error: "), err
    assert "Traceback" not in err
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished one-epoch run of a tiny VAE (made by the CLI itself, on small made-up data)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
        code = main(["train", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--batch-size", "50",
                     "--eval-k", "0", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.fixture
def run(trained_run, tmp_path):
    """A private copy of ``trained_run`` that a test may damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def tiny(out, *extra):
    """The arguments of a tiny training run into ``out`` (None: the default folder)."""
    return ["train", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--batch-size", "50",
            "--eval-k", "0", *([] if out is None else ["--out", str(out)]), "--no-progress", *extra]


# ----- unknown names ----------------------------------------------------------------------------

def test_unknown_model_lists_the_models(capsys, tmp_path):
    user_error(capsys, ["train", "--model", "vea", "--out", str(tmp_path / "r")], "'vea'", "'vae'", "'flow'", "'m1m2'")


def test_unknown_activation_lists_the_activations(capsys, tmp_path):
    user_error(capsys, ["train", "--activation", "rleu", "--out", str(tmp_path / "r")], "'rleu'", "'relu'", "'tanh'")


def test_unknown_device_lists_the_devices(capsys, tmp_path):
    user_error(capsys, ["train", "--device", "tpu", "--out", str(tmp_path / "r")], "'tpu'", "'cpu'", "'gpu'")


def test_unknown_device_for_eval(capsys, run):
    user_error(capsys, ["eval", str(run), "--device", "cuda0"], "'cuda0'", "'cpu'", "'gpu'")


def test_unknown_model_for_gradcheck_and_graph(capsys):
    user_error(capsys, ["gradcheck", "--model", "vea"], "'vea'", "'vae'")
    user_error(capsys, ["graph", "--model", "vea"], "'vea'", "'vae'")


def test_unknown_op_for_gradcheck(capsys):
    user_error(capsys, ["gradcheck", "--op", "softpuls"], "'softpuls'")


def test_unknown_command(capsys):
    user_error(capsys, ["trian"], "'trian'", "'train'")


# ----- run folders ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["eval", "sample", "plot", "graph"])
def test_missing_run_folder(capsys, tmp_path, command):
    user_error(capsys, [command, str(tmp_path / "nope")], str(tmp_path / "nope"), "does not exist")


def test_no_mnist_covers_a_command_that_loads_it_through_viz(run):
    """``plot`` loads MNIST in minivae.viz, which imported load_mnist by name: the fixture's
    stand-in is met there too, not the cached files."""
    with pytest.raises(AssertionError, match="^MNIST was loaded before the arguments were checked$"):
        main(["plot", str(run)])


def test_a_folder_without_a_run(capsys, tmp_path):
    user_error(capsys, ["eval", str(tmp_path)], str(tmp_path), "not a run folder", CHECKPOINT)


@pytest.mark.parametrize("command", ["eval", "sample", "plot", "graph"])
def test_a_file_of_a_run_given_as_the_run_folder_points_to_its_folder(capsys, run, command):
    """Not "train one with --out RUN/checkpoint.npz", which would be refused for the file."""
    line = user_error(capsys, [command, str(run / CHECKPOINT)], f"{run / CHECKPOINT} is a file", f"here {run}")
    assert "train one" not in line


def test_a_run_stopped_before_its_first_checkpoint_is_to_be_trained_again(capsys, run, monkeypatch):
    """Its config.json makes it a run, which `train --out RUN` refuses and `--resume` cannot go
    on from: the line says what works."""
    (run / CHECKPOINT).unlink()
    line = user_error(capsys, ["eval", str(run)], str(run), f"holds no {CHECKPOINT}")
    assert f"`minivae train --out {run} --overwrite`" in line
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    assert main(tiny(run, "--overwrite")) == 0


def test_resume_without_a_run(capsys, tmp_path):
    user_error(capsys, tiny(tmp_path / "empty", "--resume"), str(tmp_path / "empty"), "cannot resume", CHECKPOINT)


def test_resume_with_changed_settings(capsys, run):
    line = user_error(capsys, tiny(run, "--resume", "--z-dim", "3", "--lr", "0.01"), "cannot resume",
                      "z_dim: 2 -> 3", "lr: 0.001 -> 0.01")
    assert "--epochs, --device" in line and "--overwrite" in line  # what may change, how to start again


def test_resume_with_fewer_epochs_than_done_is_refused(capsys, run, monkeypatch):
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    assert main(tiny(run, "--resume", "--epochs", "2")) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    user_error(capsys, tiny(run, "--resume"), "--epochs 1", "done 2 epochs", "--epochs 2 or more")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_with_a_setting_given_at_its_default_is_no_change(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    out = tmp_path / "flow"
    assert main(tiny(out, "--model", "flow")) == 0
    assert main(tiny(out, "--model", "flow", "--resume", "--epochs", "2", "--set", "flows=8")) == 0
    user_error(capsys, tiny(out, "--model", "flow", "--resume", "--epochs", "2", "--set", "flows=4"),
               "--set flows: 8 -> 4")


def test_resume_keeps_the_settings_of_the_run_but_those_given(capsys, tmp_path, monkeypatch):
    """`train --out RUN --resume` continues the run as it was configured: a setting left out is
    the run's own, not train's default (a forgotten --epochs never makes a run of 1 epoch one of
    150), and one given is a change (checked as any other)."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    out = tmp_path / "flow"
    assert main(tiny(out, "--model", "flow", "--set", "flows=3", "--seed", "7", "--warmup", "1",
                     "--lr-schedule", "constant", "--eager")) == 0
    first = json.loads((out / "config.json").read_text())
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text()) == first
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-eager", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text()) == dict(first, epochs=2, eager=False)
    user_error(capsys, ["train", "--out", str(out), "--resume", "--set", "flows=4"], "--set flows: 3 -> 4")
    user_error(capsys, ["train", "--out", str(out), "--resume", "--model", "vae"], "model: 'flow' -> 'vae'")


def test_resuming_a_finished_run_keeps_its_results(capsys, tmp_path, monkeypatch):
    """Nothing to train: results.json stands (the log-likelihood can take minutes to compute),
    unless it lacks what is asked (another --eval-k) or is missing (an interrupted evaluation)."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    out = tmp_path / "r"
    assert main(tiny(out, "--eval-k", "2")) == 0
    results = (out / "results.json").read_bytes()
    capsys.readouterr()
    for extra in ([], ["--eval-k", "0"]):
        assert main(["train", "--out", str(out), "--resume", "--no-progress", *extra]) == 0
        assert (out / "results.json").read_bytes() == results
    printed = capsys.readouterr().out
    assert "at the end of epoch 1" in printed and "had ended at epoch 1: nothing to train" in printed
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--eval-k", "3"]) == 0
    assert json.loads((out / "results.json").read_text())["eval_k"] == 3
    (out / "results.json").unlink()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["eval_k"] == 3


def test_resuming_a_gpu_run_where_no_gpu_can_be_used_says_where_gpu_came_from(capsys, run):
    from minivae import backend, runs

    try:
        backend.resolve_device("gpu")
        pytest.skip("a GPU can be used here")
    except backend.DeviceError:
        pass
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    meta["config"]["device"] = "gpu"
    runs.save_checkpoint(run, arrays, meta)
    user_error(capsys, ["train", "--out", str(run), "--resume", "--epochs", "2"],
               f"{run} was trained with --device gpu", "give --device cpu")


def test_resume_of_a_run_trained_on_the_former_batches(capsys, run):
    """A checkpoint whose config predates ``data_rng`` was trained on PCG64 batches: resuming it
    would switch generators mid-run, so it is refused, saying why and what can be done."""
    from minivae import runs

    arrays, meta = checkpoint.load(run / CHECKPOINT)
    del meta["config"]["data_rng"]
    runs.save_checkpoint(run, arrays, meta)
    user_error(capsys, tiny(run, "--resume"), "cannot resume", "'pcg64'", "'philox'", "minivae eval",
               "--overwrite")


def test_resume_may_change_the_length(capsys, run, monkeypatch):
    """The check above does not refuse what a resume may change (here it gets as far as the data)."""
    with pytest.raises(AssertionError, match="MNIST was loaded"):
        main(tiny(run, "--resume", "--epochs", "2", "--eval-k", "3"))


def test_training_into_a_finished_run_is_refused(capsys, run):
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    user_error(capsys, tiny(run), str(run), "already holds a run", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_and_overwrite_together(capsys, run):
    user_error(capsys, tiny(run, "--resume", "--overwrite"), "--resume", "--overwrite")


def test_overwrite_removes_the_old_run_only_once_training_can_start(capsys, run, monkeypatch):
    """--overwrite: data that cannot be loaded, or a mistake that only the loaded data shows,
    leaves the old run as it was; a run that can start replaces it."""
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(AssertionError, match="MNIST was loaded"):
        main(tiny(run, "--overwrite"))
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    user_error(capsys, tiny(run, "--overwrite", "--model", "m2", "--n-labelled", "1000"), "--n-labelled 1000")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert main(tiny(run, "--overwrite", "--z-dim", "3")) == 0
    assert json.loads((run / "config.json").read_text())["z_dim"] == 3


def test_training_twice_makes_two_runs(capsys, tmp_path, monkeypatch):
    """Without --out: runs/vae, then runs/vae-2; --resume without --out continues runs/vae."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    assert main(tiny(None)) == 0 and main(tiny(None)) == 0
    assert (tmp_path / "runs" / "vae" / "results.json").exists()
    assert (tmp_path / "runs" / "vae-2" / "results.json").exists()
    assert not (tmp_path / "runs" / "vae-3").exists()
    assert main(tiny(None, "--resume", "--epochs", "2")) == 0
    assert json.loads((tmp_path / "runs" / "vae" / "results.json").read_text())["epochs"] == 2


def test_overwrite_without_out_is_refused(capsys, tmp_path, monkeypatch):
    """--overwrite starts again the run in --out; without --out there is none to start again (the
    default folder is a free one), so the option would silently do nothing."""
    monkeypatch.chdir(tmp_path)
    user_error(capsys, tiny(None, "--overwrite"), "--overwrite", "--out")
    assert not (tmp_path / "runs").exists()


def test_truncated_checkpoint(capsys, run):
    path = run / CHECKPOINT
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    user_error(capsys, ["eval", str(run)], str(path), "corrupt")
    user_error(capsys, ["sample", str(run)], str(path))
    user_error(capsys, tiny(run, "--resume"), str(path))


@pytest.mark.parametrize("content", ["text", "npy"])
def test_a_file_that_is_no_checkpoint_is_named_so(capsys, run, content):
    import numpy as np

    path = run / CHECKPOINT
    if content == "text":
        path.write_text("not a checkpoint")
    else:
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    line = user_error(capsys, ["sample", str(run)], str(path), "not a checkpoint")
    assert "allow_pickle" not in line


def test_checkpoint_cut_anywhere_raises_checkpoint_error(tmp_path):
    """Whatever byte a file is cut at, loading raises the project's CheckpointError (not the
    BadZipFile, EOFError or NotImplementedError of the layers below)."""
    import numpy as np

    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.arange(30.0).reshape(5, 6)}, {"epoch": 1})
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(checkpoint.CheckpointError, match="unreadable or corrupt"):
            checkpoint.load(cut)


def test_damaged_header_raises_checkpoint_error(tmp_path):
    """Bytes overwritten inside the arrays' headers (parsed by NumPy's tokenizer) are a CheckpointError too."""
    import numpy as np

    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.arange(30.0).reshape(5, 6)}, {"epoch": 1})
    data = bytearray(path.read_bytes())
    start = data.index(b"{'descr'")
    for i in range(start, data.index(b"}", start) + 1):
        for byte in b"(['\x00":
            if data[i] == byte:  # no damage
                continue
            damaged = bytearray(data)
            damaged[i] = byte
            path.write_bytes(bytes(damaged))
            with pytest.raises(checkpoint.CheckpointError, match="unreadable or corrupt"):
                checkpoint.load(path)


def test_a_document_read_checks_the_document_and_reads_no_array(tmp_path):
    """``load_document`` gives ``load``'s document, with its checks on that member alone: a
    damaged array leaves it readable, a damaged document or none is refused as ``load`` refuses it."""
    import numpy as np

    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.arange(30.0).reshape(5, 6)}, {"epoch": 1})
    assert checkpoint.load_document(path) == checkpoint.load(path)[1] == {"epoch": 1}
    data = path.read_bytes()
    w_data = data.index(np.arange(30.0).tobytes())
    for at, reader in ((w_data, checkpoint.load), (data.rindex(b"{'descr'") + 2, checkpoint.load_document)):
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        path.write_bytes(bytes(damaged))
        with pytest.raises(checkpoint.CheckpointError, match="unreadable or corrupt"):
            reader(path)
        if reader is checkpoint.load:
            assert checkpoint.load_document(path) == {"epoch": 1}
    np.savez(path, w=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match="not written by minivae"):
        checkpoint.load_document(path)


def _config_with(key, value):
    """A damage: the config's ``key`` set to ``value``."""
    return lambda arrays, meta: dict(meta, config=dict(meta["config"], **{key: value}))


def _first_weight(change):
    """A damage: the first model array removed (``change`` None) or replaced by ``change(array)``."""
    def damage(arrays, meta):
        name = sorted(name for name in arrays if name.startswith("model/"))[0]
        if change is None:
            del arrays[name]
        else:
            arrays[name] = change(arrays[name])
        return meta
    return damage


#: Ways the contents of a checkpoint can be damaged (each changes the arrays in place and
#: returns the document), and what the error must name.
DAMAGES = {
    "no config": (lambda arrays, meta: {k: v for k, v in meta.items() if k != "config"}, "no config"),
    "unknown config key": (_config_with("typo", 1), "typo"),
    "unknown model": (_config_with("model", "nope"), "'nope'"),
    "epochs a string": (_config_with("epochs", "3"), "epochs is '3'"),
    "hidden a number": (_config_with("hidden", 5), "hidden is 5"),
    "missing array": (_first_weight(None), "missing key"),
    "wrong dtype": (_first_weight(lambda a: a.astype("float64")), "float64"),
    "NaN weights": (_first_weight(lambda a: a * float("nan")), "NaN"),
    "document a list": (lambda arrays, meta: [1, 2], "a list, not a dict"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_checkpoint_with_damaged_contents_is_named_in_one_line(capsys, run, damage):
    change, named = DAMAGES[damage]
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    checkpoint.save(run / CHECKPOINT, arrays, change(arrays, meta))
    for command in (["sample", str(run)], ["eval", str(run)], tiny(run, "--resume")):
        user_error(capsys, command, str(run / CHECKPOINT), named)


def test_a_non_finite_optimizer_state_is_named_before_a_resume(capsys, run):
    """Training never saves one, so the file is damaged: resuming from it is refused (not trained
    on until the loss turns NaN), naming the file and the state."""
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    arrays["optim/state.0.exp_avg"] = arrays["optim/state.0.exp_avg"] * float("nan")
    checkpoint.save(run / CHECKPOINT, arrays, meta)
    user_error(capsys, tiny(run, "--resume"), str(run / CHECKPOINT), "damaged",
               "optimizer state state.0.exp_avg holds NaN")


def test_a_checkpoint_position_past_its_run_is_named_before_a_resume(capsys, run):
    """Not "give --epochs 5 or more": the run has 1 epoch, so the file is damaged."""
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    meta["epoch"] = 5
    checkpoint.save(run / CHECKPOINT, arrays, meta)
    line = user_error(capsys, tiny(run, "--resume"), str(run / CHECKPOINT), "damaged",
                      "its epoch 5 lies outside its run of 1 epochs")
    assert "--epochs" not in line


def test_a_resume_reads_the_checkpoint_once_to_check_it_and_once_to_go_on(run, monkeypatch):
    """A checkpoint can be large: ``train --resume`` reads it once for every check made before
    the data is loaded, and once more where training holds the folder (the state it goes on
    from, which another process may have changed in between)."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    reads, load = [], checkpoint.load

    def counted_load(path):
        reads.append(Path(path))
        return load(path)

    monkeypatch.setattr(checkpoint, "load", counted_load)
    assert main(tiny(run, "--resume", "--epochs", "2")) == 0
    assert reads == [run / CHECKPOINT] * 2


def test_a_checkpoint_damaged_after_the_checks_of_a_resume_is_not_trained_on(capsys, run, monkeypatch):
    """The state a resume goes on from is the one checked: a checkpoint changed between the
    checks and the start of training (here while the data loads) is checked again as read."""
    arrays, meta = checkpoint.load(run / CHECKPOINT)

    def damage_then_load(verbose=True):
        arrays["optim/state.0.exp_avg"] = arrays["optim/state.0.exp_avg"] * float("nan")
        checkpoint.save(run / CHECKPOINT, arrays, meta)
        return small_data(n_train=100, n_eval=20)

    monkeypatch.setattr(minivae.train, "load_mnist", damage_then_load)
    user_error(capsys, tiny(run, "--resume", "--epochs", "2"), str(run / CHECKPOINT), "damaged",
               "optimizer state state.0.exp_avg holds NaN")
    assert not (run / "metrics.jsonl").read_text().count('"epoch": 2')


def test_npz_files_that_are_no_checkpoints_are_named(capsys, run, tmp_path):
    import numpy as np

    np.savez(run / CHECKPOINT, w=np.zeros(3))  # arrays, but no document
    user_error(capsys, ["sample", str(run)], str(run / CHECKPOINT), "not written by minivae")


# ----- --set ------------------------------------------------------------------------------------

def test_unknown_set_key_lists_the_models_keys(capsys, tmp_path):
    user_error(capsys, ["train", "--model", "flow", "--set", "flow=8", "--out", str(tmp_path / "r")],
               "flow=8", "'flow'", "flows (int >= 0, default 8)")


def test_set_key_of_a_model_without_settings(capsys, tmp_path):
    user_error(capsys, ["train", "--set", "flows=8", "--out", str(tmp_path / "r")], "flows=8", "no --set settings")


def test_set_value_that_is_not_a_number(capsys, tmp_path):
    user_error(capsys, ["train", "--model", "flow", "--set", "flows=abc", "--out", str(tmp_path / "r")],
               "flows=abc", "not an integer", "int")


def test_set_float_for_an_int_is_an_error(capsys, tmp_path):
    user_error(capsys, ["train", "--model", "flow", "--set", "flows=2.5", "--out", str(tmp_path / "r")],
               "flows=2.5", "not an integer")


@pytest.mark.parametrize("model, pair, valid", [
    ("ladder", "z_dims=0", "list of int >= 1"), ("ladder", "z_dims=4,0", "list of int >= 1"),
    ("ladder", "mlp_layers=0", "int >= 1"), ("gumbel", "n_vars=0", "int >= 1"), ("adgm", "a_dim=0", "int >= 1"),
    ("ladder-m2", "classifier_hidden=0", "list of int >= 1"), ("flow", "flows=-1", "int >= 0"),
    ("m2", "alpha=-1", "float >= 0"), ("m2", "alpha_scale=-1", "float >= 0"), ("gumbel", "tau0=-1", "float > 0"),
    ("gumbel", "tau0=0", "float > 0"), ("gumbel", "steps_per_epoch=0", "int >= 1"),
    ("gumbel", "anneal_rate=-5", "float >= 0"), ("m2", "num_classes=1", "int >= 2"),
])
def test_set_value_out_of_range_names_the_range(capsys, tmp_path, model, pair, valid):
    user_error(capsys, ["train", "--model", model, "--set", pair, "--out", str(tmp_path / "r")],
               f"--set {pair}", "out of range", valid)


def test_every_numeric_setting_has_a_minimum():
    from minivae.models import MODELS
    from minivae.models.settings import model_settings

    for model in MODELS:
        for setting in model_settings(model).values():
            if (setting.item or setting.type) in (int, float):
                assert setting.minimum is not None, (model, setting.name)


def test_the_real_settings_have_the_ranges_the_models_check():
    """``--set`` refuses a real number below its minimum, the model's constructor one outside its
    range (``SETTING_RANGES``): the two must draw the line at the same place, so that the command
    line neither refuses what a model takes nor passes on what it refuses."""
    from minivae.models import MODELS
    from minivae.models.base import SETTING_RANGES
    from minivae.models.settings import model_settings

    for model in MODELS:
        for setting in model_settings(model).values():
            if setting.type is float:
                test = SETTING_RANGES[setting.name][0]
                low, inclusive = setting.minimum
                assert test(low) == inclusive, (model, setting.name)
                assert not test(math.nextafter(low, -math.inf)), (model, setting.name)
                assert test(math.nextafter(low, math.inf)) and not test(math.inf), (model, setting.name)


def test_set_a_setting_that_has_its_own_option(capsys, tmp_path):
    """``--set z_dim=5`` would contradict ``--z-dim`` (and config.json): refused, naming the option."""
    user_error(capsys, ["train", "--z-dim", "2", "--set", "z_dim=5", "--out", str(tmp_path / "r")],
               "z_dim=5", "--z-dim")


@pytest.mark.parametrize("model, instead", [("ladder", "--set z_dims"), ("ladder-m2", "--set z_dims"),
                                            ("gumbel", "--set n_vars")])
def test_a_common_option_the_model_does_not_use_is_refused_not_ignored(capsys, tmp_path, model, instead):
    """The Ladder VAEs' latent sizes are z_dims and the Gumbel VAE's latent n_vars categorical
    variables: --z-dim would change nothing, so it is refused, saying what to give instead."""
    user_error(capsys, ["train", "--model", model, "--z-dim", "7", "--out", str(tmp_path / "r")],
               "--z-dim 7", f"model {model!r} does not use it", instead)


def test_set_without_equals(capsys, tmp_path):
    user_error(capsys, ["train", "--model", "flow", "--set", "flows", "--out", str(tmp_path / "r")],
               "flows", "KEY=VALUE")


@pytest.mark.parametrize("model, pair, message", [
    ("iwae", "layers=3", "layers must be 1 or 2, got 3"),
    ("gumbel", "tau_min=2", "tau_min=2.0 is above tau0=1.0"),
])
def test_set_value_the_model_refuses(capsys, tmp_path, model, pair, message):
    user_error(capsys, ["train", "--model", model, "--set", pair, "--out", str(tmp_path / "r")], message)


@pytest.mark.parametrize("pair", ["hidden2=50,50", "z1_dim=20"])
def test_a_setting_of_the_two_layer_iwae_alone_is_refused_not_ignored(capsys, tmp_path, pair):
    # Before: iwae with its default layers=1 trained the one-layer VAE and recorded the setting.
    key = pair.split("=")[0]
    user_error(capsys, tiny(tmp_path / "r", "--model", "iwae", "--set", pair),
               f"--set {key}: model 'iwae' uses it only with --set layers=2", f"leave {key} out")
    user_error(capsys, tiny(tmp_path / "r", "--model", "iwae", "--set", "layers=1", "--set", pair),
               f"--set {key}: model 'iwae' uses it only with --set layers=2")


def test_semi_supervised_labels_must_be_balanced(capsys, tmp_path, monkeypatch):
    user_error(capsys, ["train", "--model", "m2", "--n-labelled", "105", "--out", str(tmp_path / "r")],
               "--n-labelled", "105", "multiple of the 10 classes")
    # Before: more labels than the digit with the fewest images holds were refused only once
    # MNIST was loaded.
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: pytest.fail("data loaded"))
    user_error(capsys, ["train", "--model", "m2", "--n-labelled", "45070", "--out", str(tmp_path / "r")],
               "--n-labelled: 45070", "4506 of digit 5", "give at most 45060")


@pytest.mark.parametrize("model, batch_size, what", [
    ("ladder", "49999", "the last batch of the 50000 training images"),
    ("ladder-m2", "99", "the last batch of the 100 labelled images"),
    # Before: 50000 % 1 is 0, so batches of one image were let through, and the first step failed.
    ("ladder", "1", "every batch of the 50000 training images")])
def test_a_batch_of_one_image_for_batch_normalization_is_refused_up_front(capsys, tmp_path, model, batch_size, what):
    user_error(capsys, ["train", "--model", model, "--batch-size", batch_size, "--out", str(tmp_path / "r")],
               f"--batch-size {batch_size}", what, "one image")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, named", [
    # Given to a model without labels, it would be ignored without a word.
    (["--labelled-batch-size", "1"], ["--labelled-batch-size 1: model 'vae' is not semi-supervised",
                                      "leave --labelled-batch-size out"]),
    (["--model", "m2", "--n-labelled", "20", "--labelled-batch-size", "21"],
     ["argument --labelled-batch-size: 21 is more than the 20 labelled images", "give at most 20"]),
    (["--model", "ladder-m2", "--labelled-batch-size", "1"],
     ["--labelled-batch-size 1: every batch of the 100 labelled images would hold one image", "batch normalization",
      "give another --labelled-batch-size"]),
    (["--model", "ladder-m2", "--labelled-batch-size", "33"],
     ["--labelled-batch-size 33: the last batch of the 100 labelled images would hold one image"]),
], ids=["model without labels", "more than the labels", "one image for batch norm", "last of one for batch norm"])
def test_a_labelled_batch_size_that_cannot_be_used_is_refused_up_front(capsys, tmp_path, monkeypatch, args, named):
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: pytest.fail("data loaded"))
    user_error(capsys, ["train", *args, "--out", str(tmp_path / "r")], *named)
    assert not (tmp_path / "r").exists()


def test_a_resume_keeps_the_labelled_batch_size_of_the_run(capsys, tmp_path, monkeypatch):
    """The labelled batches define the run: a resume takes the run's own size, and refuses another."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    out, m2 = tmp_path / "m2", ["--model", "m2", "--n-labelled", "10"]
    assert main(tiny(out, *m2, "--labelled-batch-size", "2")) == 0
    assert main(tiny(out, *m2, "--resume", "--epochs", "2")) == 0
    assert json.loads((out / "config.json").read_text())["labelled_batch_size"] == 2
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    user_error(capsys, tiny(out, *m2, "--resume", "--epochs", "3", "--labelled-batch-size", "3"), "cannot resume",
               "labelled_batch_size: 2 -> 3")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_fewer_classes_than_mnist_has_are_refused_up_front(capsys, tmp_path):
    user_error(capsys, ["train", "--model", "m2", "--set", "num_classes=3", "--out", str(tmp_path / "r")],
               "num_classes=3", "num_classes=10")


def test_too_few_images_of_a_class_found_with_the_data_is_one_line_and_blocks_nothing(capsys, tmp_path, monkeypatch):
    """A mismatch only the loaded data shows: one line, and the folder can be used again as it is."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    user_error(capsys, tiny(tmp_path / "r", "--model", "m2", "--n-labelled", "1000"), "--n-labelled 1000",
               "asks for 200 examples of each class", "give at most 70")
    assert main(tiny(tmp_path / "r", "--model", "m2", "--n-labelled", "10")) == 0


def test_m1m2_with_a_missing_m1_run(capsys, tmp_path):
    user_error(capsys, ["train", "--model", "m1m2", "--set", f"m1={tmp_path / 'nope'}",
                        "--out", str(tmp_path / "r")], str(tmp_path / "nope"))


def test_m1m2_with_an_empty_m1_is_refused_not_read_as_the_current_folder(capsys, run, tmp_path, monkeypatch):
    monkeypatch.chdir(run)  # a VAE run: an empty path would name it
    user_error(capsys, ["train", "--model", "m1m2", "--set", "m1=", "--out", str(tmp_path / "r")],
               "--set m1=", "an empty path", "the folder of a `minivae train` run")


def test_m1m2_never_starts_again_in_its_m1_run(capsys, run):
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    user_error(capsys, ["train", "--model", "m1m2", "--set", f"m1={run}", "--out", str(run), "--overwrite"],
               f"--out {run}", f"m1={run}")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# ----- numbers out of range ---------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("--z-dim", "0"), ("--batch-size", "0"), ("--epochs", "0"), ("--epochs", "-1"), ("--eval-k", "-1"),
    ("--mc-samples", "0"), ("--iw-k", "0"), ("--warmup", "-2"), ("--lr", "0"), ("--lr", "nan"),
    ("--beta", "-1"), ("--hidden", "0"), ("--seed", "-1"), ("--n-labelled", "0"), ("--epochs", "2.5"),
    ("--seed", str(2**64)), ("--adam-eps", "0"), ("--adam-eps", "-0.5"), ("--clip-norm", "-1"),
    ("--clip-value", "inf"), ("--clip-value", "nan"), ("--weight-decay", "-0.5"), ("--warmup-start", "1.5"),
    ("--warmup-start", "-0.1"), ("--warmup-start", "nan"), ("--momentum", "-0.1"),
    ("--labelled-batch-size", "0"), ("--labelled-batch-size", "2.5"),
])
def test_train_number_out_of_range(capsys, tmp_path, option, value):
    user_error(capsys, ["train", option, value, "--out", str(tmp_path / "r")], f"argument {option}", value)


def test_a_model_too_large_for_memory_is_one_line(capsys, tmp_path, monkeypatch):
    """(The allocation fails as NumPy fails it, without trying to take the memory.)"""
    def too_large(config):
        raise MemoryError("Unable to allocate 2.85 TiB for an array with shape (1000000000, 784) "
                          "and data type float32")
    monkeypatch.setattr(cli, "build_run_model", too_large)
    user_error(capsys, ["train", "--hidden", "1000000000", "--out", str(tmp_path / "r")],
               "--hidden 1000000000 --z-dim 50", "does not fit in memory", "2.85 TiB", "smaller sizes")
    assert not (tmp_path / "r").exists()
    # A size given as a model setting is named too.
    user_error(capsys, ["train", "--model", "sdgm", "--set", "a_dim=1000000000", "--out",
                        str(tmp_path / "r")], "--set a_dim=1000000000", "does not fit in memory")


def test_a_warning_is_one_line_naming_the_command(capsys, tmp_path, monkeypatch):
    def check_train(args):
        warnings.warn("the MNIST cache cannot be written", RuntimeWarning)
        raise UsageError("stop here")
    monkeypatch.setattr(cli, "check_train", check_train)
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "minivae: warning: the MNIST cache cannot be written", "minivae: error: stop here"]


@pytest.mark.parametrize("args, named", [
    (["--momentum", "0.9"], ["--momentum 0.9 is RMSprop's", "--optimizer rmsprop"]),
    (["--optimizer", "rmsprop", "--momentum", "1"], ["argument --momentum: 1 is not below 1", "[0, 1)"]),
    (["--optimizer", "rmsprop", "--adam-eps", "1e-4"], ["--adam-eps 0.0001 is Adam's", "leave --adam-eps out"]),
    (["--optimizer", "sgd"], ["argument --optimizer", "'sgd'", "'adam', 'rmsprop'"]),
], ids=["momentum with adam", "momentum of 1", "adam-eps with rmsprop", "unknown optimizer"])
def test_a_setting_of_the_other_optimizer_is_refused(capsys, tmp_path, args, named):
    """(Given to the optimizer it is not for, it would be ignored without a word.)"""
    user_error(capsys, ["train", *args, "--out", str(tmp_path / "r")], *named)
    assert not (tmp_path / "r").exists()


def test_a_warmup_start_needs_a_warmup_and_a_unit_is_a_word_of_two(capsys, tmp_path):
    """A start given without a warm-up would be silently left unused; a unit other than epoch or
    step is named with the two."""
    user_error(capsys, ["train", "--warmup", "0", "--warmup-start", "0.5", "--out", str(tmp_path / "r")],
               "--warmup-start 0.5 starts a KL warm-up, and --warmup is 0 (none)", "give --warmup N too")
    user_error(capsys, ["train", "--warmup-unit", "batch", "--out", str(tmp_path / "r")],
               "argument --warmup-unit", "'batch'", "'epoch'", "'step'")


def test_a_warmup_by_steps_needs_a_warmup(capsys, tmp_path):
    """--warmup-unit step without a warm-up would be silently left unused, as a start would."""
    user_error(capsys, ["train", "--warmup", "0", "--warmup-unit", "step", "--out", str(tmp_path / "r")],
               "--warmup-unit step counts the steps of a KL warm-up, and --warmup is 0 (none)",
               "give --warmup N too")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option, value, change", [("--warmup-unit", "step", "warmup_unit: 'epoch' -> 'step'"),
                                                   ("--warmup-start", "0.5", "warmup_start: None -> 0.5")])
def test_a_resume_keeps_the_warmup_of_its_run(capsys, run, option, value, change):
    user_error(capsys, tiny(run, "--resume", "--epochs", "2", option, value), "cannot resume", change)


def test_labels_for_a_model_that_takes_none_are_refused(capsys, tmp_path):
    """(A VAE would train without them, and its config.json record them as if it had.)"""
    user_error(capsys, ["train", "--n-labelled", "50", "--out", str(tmp_path / "r")],
               "--n-labelled 50: model 'vae' is not semi-supervised", "leave --n-labelled out")
    assert not (tmp_path / "r").exists()


def test_a_batch_norm_pass_for_a_model_without_batch_norm_is_refused(capsys, tmp_path):
    """(It would be ignored without a word.)"""
    user_error(capsys, ["train", "--bn-statistics", "pass", "--out", str(tmp_path / "r")],
               "--bn-statistics pass: model 'vae' has no batch normalization", "leave --bn-statistics out")
    user_error(capsys, ["train", "--bn-statistics", "collected", "--out", str(tmp_path / "r")],
               "argument --bn-statistics", "'collected'", "'running', 'pass'")
    assert not (tmp_path / "r").exists()


def test_a_cosine_schedule_never_rises(capsys, tmp_path):
    user_error(capsys, ["train", "--lr", "1e-5", "--lr-min", "1e-4", "--out", str(tmp_path / "r")],
               "--lr 1e-05", "--lr-min 0.0001")


@pytest.mark.parametrize("argv, named", [
    (["--iw-k", "5", "--beta", "4"], "--beta 4"), (["--model", "iwae", "--beta", "0.5"], "--beta 0.5"),
    (["--iw-k", "5", "--warmup", "3"], "--warmup 3"), (["--model", "iwae", "--warmup", "10"], "--warmup 10"),
    (["--model", "iwae", "--warmup-start", "0"], "--warmup-start 0"),
    (["--iw-k", "5", "--warmup-unit", "step"], "--warmup-unit step"),
])
def test_no_kl_weight_or_warmup_for_the_iwae_bound(capsys, tmp_path, argv, named):
    user_error(capsys, ["train", *argv, "--out", str(tmp_path / "r")], named, "IWAE bound", "no KL term")


@pytest.mark.parametrize("option, value", [("--k", "0"), ("--n", "0"), ("--k", "-5"), ("--n", "ten")])
def test_eval_number_out_of_range(capsys, run, option, value):
    user_error(capsys, ["eval", str(run), option, value], f"argument {option}", value)


def test_eval_scores_no_more_images_than_the_test_set_has(capsys, run):
    """--n 20000 is refused, not scored as the 10000 there are without a word."""
    user_error(capsys, ["eval", str(run), "--n", "20000"], "argument --n", "20000", "[1, 10000]")


def test_sample_and_graph_numbers_out_of_range(capsys, run):
    user_error(capsys, ["sample", str(run), "--n", "0"], "argument --n", "0")
    user_error(capsys, ["sample", str(run), "--n", "10001"], "argument --n", "10001", "[1, 10000]")
    for size in ("0", "10001", "100000000"):  # no more images than the test set; no MemoryError
        user_error(capsys, ["graph", "--model", "vae", "--batch-size", size], "argument --batch-size",
                   size, "[1, 10000]")
    for argv in (["sample", str(run)], ["graph", "--model", "vae"]):  # Philox's key has 64 bits
        user_error(capsys, [*argv, "--seed", str(2**64)], "argument --seed", str(2**64), "[0, 2**64)")


@pytest.mark.parametrize("command", ["sample", "plot"])
def test_pictures_without_matplotlib_name_the_extra_before_the_run_is_read(capsys, run, monkeypatch, command):
    # Before: `minivae sample` loaded the run and drew the samples, then ended in an ImportError
    # traceback with exit status 1.
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it fails, as when absent
    monkeypatch.setattr(cli, "_load_run", lambda run: pytest.fail("the run was read before the check"))
    user_error(capsys, [command, str(run)],
               f"{command} needs matplotlib, an optional extra: pip install 'minivae[viz]'")


@pytest.mark.parametrize("argv, dest, value", [
    (["train", "--seed", str(2**64 - 1)], "seed", 2**64 - 1), (["train", "--warmup", "0"], "warmup", 0),
    (["eval", "RUN", "--n", "10000"], "n", 10000), (["sample", "RUN", "--n", "10000"], "n", 10000),
    (["cluster", "RUN", "--seed", str(2**32 - 1)], "seed", 2**32 - 1),
    (["graph", "--model", "vae", "--batch-size", "10000"], "batch_size", 10000),
    (["train", "--lr-min", "0"], "lr_min", 0.0), (["train", "--warmup-start", "0"], "warmup_start", 0.0),
    (["train", "--warmup-start", "1"], "warmup_start", 1.0)])
def test_the_ends_of_the_ranges_are_accepted(argv, dest, value):
    """The ranges the errors name include their ends: the largest seed, all the test images."""
    assert getattr(cli.build_parser().parse_args(argv), dest) == value


def test_graph_of_a_model_that_needs_settings_points_to_a_run_folder(capsys):
    """m1m2 needs --set m1=RUN, which graph does not take: the line says what graph does take."""
    user_error(capsys, ["graph", "--model", "m1m2"], "graph --model m1m2", "takes no --set",
               "minivae graph RUN")


# ----- output folders ---------------------------------------------------------------------------

def test_out_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    user_error(capsys, ["train", "--out", str(tmp_path / "file")], str(tmp_path / "file"), "not a folder")
    user_error(capsys, ["train", "--out", str(tmp_path / "file" / "run")], str(tmp_path / "file"), "not a folder")


def test_output_file_is_a_folder(capsys, run, tmp_path):
    user_error(capsys, ["sample", str(run), "--out", str(tmp_path)], str(tmp_path), "is a folder")
    user_error(capsys, ["eval", str(run), "--out", str(tmp_path)], str(tmp_path), "is a folder")


def test_the_file_in_the_way_of_an_output_file_is_named(capsys, run, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "x.json"
    line = user_error(capsys, ["eval", str(run), "--out", str(out)], f"--out {out}: {tmp_path / 'file'} is a file")
    assert "this is a file" not in line  # x.json is no file: the folder it would go in is


@pytest.mark.parametrize("argv", [["train", "--out", ""], ["eval", ""], ["sample", "RUN", "--out", ""],
                                  ["graph", "--model", "vae", "--out", ""]])
def test_an_empty_path_is_refused(capsys, run, argv):
    """Not read as "not given" (train would go to runs/vae, sample to RUN/samples.png)."""
    argv = [str(run) if a == "RUN" else a for a in argv]
    user_error(capsys, argv, "an empty path")


@pytest.mark.parametrize("command", ["eval", "sample", "graph"])
@pytest.mark.parametrize("name", ["checkpoint.npz", "config.json", "metrics.jsonl", "results.json"])
def test_an_output_file_is_never_a_file_of_a_run(capsys, run, command, name):
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    user_error(capsys, [command, str(run), "--out", str(run / name)], str(run / name), "file of the run")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_an_output_file_named_as_a_file_of_a_run_may_go_where_no_run_is(capsys, run, tmp_path):
    """Only a folder that holds a run keeps its files' names for them: results.json in a folder
    of scores is a .json output like any other (its checks pass, so MNIST is loaded next)."""
    with pytest.raises(AssertionError, match="MNIST was loaded"):
        main(["eval", str(run), "--out", str(tmp_path / "scores" / "results.json")])


@pytest.mark.parametrize("command, name, kind", [("sample", "eval_k3.json", ".png"), ("sample", "grid.jpg", ".png"),
                                                 ("eval", "samples.png", ".json"), ("eval", "result", ".json")])
def test_an_output_file_is_of_the_kind_the_command_writes(capsys, run, command, name, kind):
    """A PNG is never written over an evaluation's result, nor JSON over a picture, nor either
    into a file whose name says it is something else."""
    (run / "eval_k3.json").write_text("{}")
    (run / "samples.png").write_bytes(b"a picture")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    user_error(capsys, [command, str(run), "--out", str(run / name)], f"--out {run / name}", f"give a {kind} file")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_the_folder_of_an_output_file_is_made_before_the_work(capsys, run, tmp_path):
    """eval, sample and graph alike create a missing folder of --out first (eval before loading
    the data), so the write at the end never fails for it."""
    with pytest.raises(AssertionError, match="MNIST was loaded"):
        main(["eval", str(run), "--out", str(tmp_path / "new1" / "res.json")])
    assert (tmp_path / "new1").is_dir()
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "new2" / "s.png")]) == 0
    assert main(["graph", str(run), "--data", "random", "--out", str(tmp_path / "new3" / "g.dot")]) == 0
    assert (tmp_path / "new2" / "s.png").is_file() and (tmp_path / "new3" / "g.dot").is_file()


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A read-only folder. chmod does not stop root, so there the operating system's answer to a
    write in that folder (EACCES) is given by the temporary-file call the check makes."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(folder, os.W_OK):  # root
        real = tempfile.TemporaryFile

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real(*args, dir=dir, **kwargs)
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    yield folder
    folder.chmod(stat.S_IRWXU)


def test_out_in_a_read_only_folder(capsys, read_only):
    user_error(capsys, ["train", "--out", str(read_only / "run")], str(read_only), "cannot write")
    user_error(capsys, ["train", "--out", str(read_only)], str(read_only), "cannot write")


def test_eval_of_a_read_only_run_is_refused_before_computing(capsys, run, read_only):
    shutil.copy(run / CHECKPOINT, read_only / CHECKPOINT)
    user_error(capsys, ["eval", str(read_only)], str(read_only), "cannot write", "--out FILE")


@pytest.mark.parametrize("command, what", [("sample", "the picture"), ("graph", "the graph file")])
def test_a_default_output_file_in_a_read_only_run_points_to_out(capsys, run, read_only, command, what):
    """No --out was given: the line names the file the command would write, and --out FILE as
    the way to write it elsewhere, not an "--out" the user never gave."""
    shutil.copy(run / CHECKPOINT, read_only / CHECKPOINT)
    line = user_error(capsys, [command, str(read_only)], f"{what} {read_only}", "cannot write", "--out FILE")
    assert not line.startswith("minivae: error: --out")


def test_full_disk_is_one_line(capsys, tmp_path, monkeypatch):
    """A disk that fills up during training (the checkpoint's fsync fails with ENOSPC)."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    line = user_error(capsys, tiny(tmp_path / "r"))
    assert "no space left" in line.lower()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_met_by_a_command_is_one_line(capsys, run, monkeypatch, code):
    """An error of the operating system that no library message names (here the PNG of
    `sample`): a full disk and a used-up quota get the same line, naming the file."""
    import minivae.viz

    def full(images, path, nrow):
        raise OSError(code, os.strerror(code), str(path))
    monkeypatch.setattr(minivae.viz, "save_image_grid", full)
    user_error(capsys, ["sample", str(run)], "no space left on the device", str(run / "samples.png"),
               "--resume")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflows of the divergence
def test_a_diverged_training_is_one_line_and_status_1(capsys, tmp_path, monkeypatch):
    """A run that diverges is no mistake in the command line (status 2) but a failure of the
    run: one line that says what is on disk, and exit status 1."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    capsys.readouterr()
    assert main(tiny(tmp_path / "r", "--lr", "1e30", "--lr-schedule", "constant")) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("minivae: error: the loss became nan"), err
    assert err[0].endswith("start again with --overwrite and a smaller --lr or a KL --warmup.")


def test_a_first_checkpoint_that_cannot_be_written_claims_no_earlier_one(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint, "write_npz", full)
    line = user_error(capsys, tiny(tmp_path / "r"), "checkpoint.npz", "No space left")
    assert line.endswith(f"{tmp_path / 'r'} has no checkpoint yet")


# ----- graph ------------------------------------------------------------------------------------

def test_graph_needs_a_run_or_a_model(capsys, run):
    user_error(capsys, ["graph"], "--model")
    user_error(capsys, ["graph", str(run), "--model", "vae"], "--model")


@pytest.mark.parametrize("name", ["graph.png", "graph"])
def test_graph_output_is_a_dot_or_svg_file(capsys, tmp_path, name):
    """DOT text is never written into a file whose name says it is something else."""
    out = tmp_path / name
    user_error(capsys, ["graph", "--model", "vae", "--data", "random", "--out", str(out)],
               f"--out {out}", "give a .dot or an .svg file")
    assert not out.exists()


@pytest.mark.parametrize("model", ["ladder", "ladder-m2"])
def test_graph_of_one_image_for_batch_normalization_is_one_line(capsys, tmp_path, model):
    """The graph is of a training step's loss, which batch normalization cannot take on one image."""
    out = tmp_path / "g.dot"
    user_error(capsys, ["graph", "--model", model, "--batch-size", "1", "--data", "random", "--out", str(out)],
               "--batch-size 1", f"model {model}", "batch normalization", "--batch-size 2")
    assert not out.exists()
    assert main(["graph", "--model", model, "--batch-size", "2", "--data", "random", "--out", str(out)]) == 0


def test_graph_svg_without_graphviz(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    user_error(capsys, ["graph", "--model", "vae", "--data", "random", "--out", str(tmp_path / "g.svg")],
               "g.svg", "Graphviz")


# ----- the error path itself --------------------------------------------------------------------

def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        main(["eval", str(tmp_path / "nope"), "--debug"])


def test_a_bug_is_not_hidden(monkeypatch, run):
    """Only the known user errors become one line; anything else keeps its traceback."""
    def broken(args):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(cli, "cmd_sample", broken)
    with pytest.raises(ZeroDivisionError):
        main(["sample", str(run)])


def test_python_dash_m_prints_one_line_and_exits_2(tmp_path):
    """The real command, in a fresh process: exit status 2, one line on stderr, nothing on stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "minivae", "train", "--z-dim", "0", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["minivae: error: argument --z-dim: 0 is out of range; give an integer >= 1"]
    assert not (tmp_path / "r").exists()


def test_ctrl_c_is_one_line_and_status_130(capsys, monkeypatch, run):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_sample", interrupted)
    assert main(["sample", str(run)]) == 130
    assert capsys.readouterr().err == "minivae: interrupted\n"


@pytest.mark.parametrize("pairs, named", [
    (["flows=8", "flows=4"], ["--set flows is given twice", "--set flows=8", "--set flows=4", "give it once"]),
    (["flows=8", "flows=2", "flows=8"], ["--set flows is given twice", "--set flows=8", "--set flows=2"]),
])
def test_a_set_key_given_twice_with_two_values_is_refused(capsys, tmp_path, pairs, named):
    """``--set flows=8 --set flows=4`` trained with the last value without a word: which one was
    meant is a guess, so the two are named instead."""
    argv = ["train", "--model", "flow", "--out", str(tmp_path / "r")]
    for pair in pairs:
        argv += ["--set", pair]
    user_error(capsys, argv, *named)


def test_a_set_key_given_twice_with_one_value_is_one_setting():
    """The same value twice (as ``-`` or ``_`` in the key) is no contradiction, as a repeated
    ``--op`` is one op."""
    assert cli._parse_options("iwae", ["z1_dim=20", "z1-dim=20"]) == {"z1_dim": 20}


def test_a_picture_that_fills_the_disk_is_named_in_the_line(capsys, run, monkeypatch):
    """A write into the open file of a picture (matplotlib's, here the PNG of `sample`) fails
    with an error that names no file: the line still names the picture."""
    import matplotlib.image

    def full(f, *args, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(matplotlib.image, "imsave", full)
    user_error(capsys, ["sample", str(run)], "no space left on the device", str(run / "samples.png"))
