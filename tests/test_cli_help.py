"""What a new user reads: help text on every argument with its default, the models and their
``--set`` keys, ``--version``, gradcheck tables that name inputs, ``graph`` without Graphviz and
``eval``'s time estimate."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import minivae
import minivae.data
import minivae.evaluate
import minivae.train
from minivae.cli import EVAL_K, build_parser, main
from minivae.models import MODELS
from minivae.models.settings import COMMON, model_settings
from test_cli_errors import trained_run  # noqa: F401  (a fixture)
from test_train import small_data


def subparsers():
    """(name, parser) of every subcommand."""
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices.items())


@pytest.mark.parametrize("name, parser", subparsers(), ids=[n for n, _ in subparsers()])
def test_every_argument_has_help_text(name, parser):
    for action in parser._actions:
        assert action.help, f"minivae {name} {'/'.join(action.option_strings) or action.dest} has no help text"


def test_train_help_lists_models_activations_devices_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "{" + ",".join(MODELS) + "}" in out
    assert "{relu,leaky_relu,elu,tanh" in out and "{cpu,gpu,cuda,auto}" in out
    for text in ("--batch-size BATCH_SIZE images per optimizer step (default: 100)",
                 "--z-dim Z_DIM size of the latent code z (default: 50)",
                 "--epochs EPOCHS passes over the 50k training images (default: 150)",
                 "default runs/vae, or runs/vae-2, runs/vae-3, ... when it holds a run",
                 "--overwrite", "`minivae models`"):
        assert text in out


@pytest.mark.parametrize("name, parser", subparsers(), ids=[n for n, _ in subparsers()])
def test_help_shows_a_default_of_zero(name, parser):
    """0 == False in Python: a default of 0 (--seed, --trace-every) is shown like any other, and
    only a flag, an option off unless given (None) or an empty list shows none."""
    help_text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.default is False or action.default is None or action.default == [] or not action.option_strings:
            continue
        if action.default is argparse.SUPPRESS or "%(default)" in (action.help or ""):
            continue
        shown = f"{action.help} (default: {action.default})"
        assert " ".join(shown.split()) in help_text, f"minivae {name} {action.option_strings[0]} hides its default"
    if name == "train":
        assert "a captured CUDA graph (default: 0)" in help_text and "the noise (default: 0)" in help_text


def test_train_help_for_a_model_lists_its_set_keys(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "gumbel", "--help"])
    out = capsys.readouterr().out
    for setting in model_settings("gumbel").values():
        assert f"  {setting.describe()}\n" in out
    assert "tau0 (float > 0, default 1.0)" in out


def test_models_command_lists_every_model_and_setting(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        assert f"\n{name}: " in "\n" + out
        for setting in model_settings(name).values():
            assert f"--set {setting.describe()}" in out
    assert "flows (int >= 0, default 8)" in out and "hidden2 (list of int >= 1, default 100,100)" in out
    assert "m1 (run folder, required)" in out  # not "default none": M1+M2 cannot do without it
    assert "\nladder: " in out and "    no --z-dim (its latent sizes are --set z_dims)\n" in out
    assert ", ".join(COMMON.values()) in out


def test_eval_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {EVAL_K})" in out and "(default: 10000)" in out and "5000" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"minivae {minivae.__version__}"


def test_gradcheck_tables_name_the_inputs(capsys):
    assert main(["gradcheck", "--op", "reparameterize"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  all inputs")]
    assert [row[2] for row in rows] == ["mu", "logvar", "eps"]


def test_graph_without_graphviz_says_an_svg_needs_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "vae.dot"
    assert main(["graph", "--model", "vae", "--data", "random", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.read_text().startswith("digraph") and not out.with_suffix(".svg").exists()
    assert captured.out.strip() == str(out)
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "SVG needs Graphviz" in lines[0] and str(out) in lines[0]


def test_graph_that_fails_to_be_written_keeps_the_old_file(capsys, tmp_path, monkeypatch):
    """A full disk halfway through the write of graph.dot: the old graph is kept whole (a plain
    write truncated it first), and no temporary file is left."""
    import errno
    import io

    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "vae.dot"
    out.write_text("digraph { old }")
    real_open = io.open

    class HalfWrite:
        """A file whose first write stops halfway, as on a full disk."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWrite(f) if "w" in mode else f
    monkeypatch.setattr(io, "open", open_full_disk)
    assert main(["graph", "--model", "vae", "--data", "random", "--out", str(out)]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "no space left" in err, err
    assert out.read_text() == "digraph { old }"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.dot"]


def test_eval_estimates_the_time_and_shows_progress(capsys, monkeypatch, trained_run):  # noqa: F811
    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    calls = []
    real = minivae.evaluate.log_likelihood_and_ess

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(minivae.evaluate, "log_likelihood_and_ess", spy)
    assert main(["eval", str(trained_run), "--k", "3", "--out", str(trained_run / "e.json")]) == 0
    captured = capsys.readouterr()
    estimate = [line for line in captured.err.splitlines() if "importance samples on 20 images: about" in line]
    assert estimate and estimate[0].startswith("minivae: log p(x) with k=3")
    assert captured.err.index(estimate[0]) < captured.err.index("wrote")
    assert calls[-1]["progress"] is True and calls[-1]["k"] == 3   # the bar (tqdm) of the real evaluation
    result = json.loads(captured.out)
    assert result == json.loads((trained_run / "e.json").read_text()) and result["k"] == 3
    assert 1 <= result["ess_min"] <= result["ess_median"] <= 3  # the weights' effective sample sizes


def test_eval_estimates_the_time_of_a_short_last_batch_too(capsys, monkeypatch, trained_run):  # noqa: F811
    """The estimate is the time of one batch of 100 images times the batches of the images
    scored, a shorter last one included: 20 images are one batch, not none. (The clock reads
    40 s more at each call, so a timed batch takes 40 s.)"""
    import types

    from minivae import cli

    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    ticks = iter(range(0, 4000, 40))
    monkeypatch.setattr(cli, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert main(["eval", str(trained_run), "--k", "2", "--no-progress", "--out", str(trained_run / "e.json")]) == 0
    assert "importance samples on 20 images: about 40 s here" in capsys.readouterr().err


def test_eval_of_part_of_the_test_set_gets_its_own_file(capsys, monkeypatch, trained_run):  # noqa: F811
    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    assert main(["eval", str(trained_run), "--k", "2", "--n", "10", "--no-progress"]) == 0
    assert json.loads((trained_run / "eval_k2_first10.json").read_text())["n_test"] == 10


def test_a_score_names_the_checkpoint_it_scored(capsys, monkeypatch, tmp_path, trained_run):  # noqa: F811
    """A run resumed for more epochs keeps the scores of its earlier checkpoint beside the new
    ones: each names the epochs done (and the batches of the next) of the model it scored."""
    data = small_data(n_train=100, n_eval=20)
    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: data)
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: data)
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    assert main(["eval", str(run), "--k", "2", "--no-progress"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert main(["eval", str(run), "--k", "2", "--no-progress", "--out", str(run / "again.json")]) == 0
    before, after = (json.loads((run / name).read_text()) for name in ("eval_k2.json", "again.json"))
    assert (before["epochs"], before["batch"]) == (1, 0)
    assert (after["epochs"], after["batch"]) == (2, 0)


def test_a_checkpoint_without_its_position_is_scored_by_no_command_that_records_it(
        capsys, monkeypatch, tmp_path, trained_run):  # noqa: F811
    """Training always saves the loop position; a checkpoint without one is damaged for the
    commands whose results record it (one line naming the file), and still serves the others."""
    from minivae import checkpoint
    from minivae.runs import CHECKPOINT

    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    del meta["epoch"]
    checkpoint.save(run / CHECKPOINT, arrays, meta)
    assert main(["eval", str(run), "--k", "2", "--no-progress"]) == 2
    assert f"{run / CHECKPOINT}" in capsys.readouterr().err and not (run / "eval_k2.json").exists()
    monkeypatch.setattr("minivae.graph.svg_available", lambda: False)
    assert main(["graph", str(run), "--data", "random"]) == 0


def test_a_clustering_names_the_checkpoint_it_scored(capsys, monkeypatch, tmp_path, trained_run):  # noqa: F811
    """As an evaluation: the clusters of a run's means name the epochs its model had trained
    (scikit-learn and the k-means are stood in for: only the record is checked here)."""
    import types

    import minivae.clustering

    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setattr(minivae.clustering, "latent_clusters", lambda *args, **kwargs: {"accuracy": 1.0})
    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    out = tmp_path / "clusters.json"
    assert main(["cluster", str(trained_run), "--clusters", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"run": str(trained_run), "epochs": 1, "batch": 0, "accuracy": 1.0}


def test_output_into_a_pipe_closed_early_ends_without_a_traceback():
    """`minivae train --help | head -1`: the reader leaves early; no traceback, no error line."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for args in (["train", "--model", "flow", "--help"], ["models"]):
        proc = subprocess.Popen([sys.executable, "-m", "minivae", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        proc.stdout.readline()
        proc.stdout.close()  # the reader leaves before the rest is written
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
        assert "Traceback" not in err and "error" not in err, err
