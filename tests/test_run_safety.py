"""No run is ever lost: refusal to train over a run, crash-consistent run folders, the divergence
guard, failed writes, and kill -9 at random times."""
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minivae import checkpoint, cli, runs
from minivae.runs import (BEST, CHECKPOINT, METRICS, RESULTS, NotARunError, RunBusyError, RunExistsError,
                          RunFolderError, RunWriteError)
from minivae.train import DataMismatchError, Trainer, TrainingDiverged, train

from test_train import _interrupt_after, config, params, small_data

QUIET = dict(progress=False, log=lambda m: None)
STEPS_PER_EPOCH = 6  # small_data(): 300 training images in batches of 50


def files(run):
    """Every file of a folder with its bytes."""
    return {p.name: p.read_bytes() for p in Path(run).iterdir()}


def one_line(exc):
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


# ----- training into an existing run ------------------------------------------------------------

def test_training_into_a_finished_run_is_refused_and_changes_nothing(tmp_path):
    data = small_data()
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    before = files(tmp_path / "run")
    with pytest.raises(RunExistsError) as exc:
        train(config(tmp_path, epochs=1), data=data, **QUIET)
    message = one_line(exc)
    assert str(tmp_path / "run") in message and "--resume" in message and "--overwrite" in message
    assert files(tmp_path / "run") == before


@pytest.mark.parametrize("stop_after, saved", [(4, "epoch 1, batch 4"), (6, "epoch 1, batch 6")])
def test_ctrl_c_inside_an_epoch_says_which_batch_was_saved(tmp_path, stop_after, saved):
    lines = []
    trainer = Trainer(config(tmp_path, epochs=2), data=small_data(), progress=False, log=lines.append)
    _interrupt_after(trainer, stop_after)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    run = tmp_path / "run"
    assert lines[-1] == f"interrupted: saved {saved} to {run / CHECKPOINT}; continue with --resume --out {run}"


@pytest.mark.parametrize("epoch", [1, 2])
def test_ctrl_c_between_epochs_says_which_epoch_was_saved(tmp_path, epoch):
    """A Ctrl-C during an epoch's validation or checkpoint is honoured once the epoch is saved;
    the message names that epoch, not the next (an epoch 3 of a run of 2)."""
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith(f"epoch {epoch:>3}"):  # logged after the epoch's checkpoint
            trainer.stop_requested.set()
    trainer = Trainer(config(tmp_path, epochs=2), data=small_data(), progress=False, log=log)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert lines[-1] == (f"interrupted: saved the end of epoch {epoch} to {tmp_path / 'run' / CHECKPOINT}; "
                         f"continue with --resume --out {tmp_path / 'run'}")
    assert checkpoint.load(tmp_path / "run" / CHECKPOINT)[1]["epoch"] == epoch


@pytest.mark.parametrize("keep_best", [False, True])
def test_ctrl_c_during_the_final_evaluation_says_the_training_is_saved(tmp_path, monkeypatch, keep_best):
    """And where the model it scores is: with --keep-best, best.npz, which `minivae eval` scores too."""
    from minivae import train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "log_likelihood_and_ess", interrupted)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, epochs=1, eval_k=2, keep_best=keep_best), data=small_data(), progress=False,
              log=lines.append)
    run = tmp_path / "run"
    held = (f"{run / BEST} holds the model of the epoch best on the validation split" if keep_best
            else f"{run / CHECKPOINT} holds the trained model")
    assert lines[-1] == (f"interrupted during the final evaluation: {held}; --resume --out {run} evaluates "
                         f"it (or `minivae eval {run}`)")
    monkeypatch.undo()
    results = train(config(tmp_path, epochs=1, eval_k=2, keep_best=keep_best), resume=True, data=small_data(),
                    **QUIET)
    assert results["epochs"] == 1 and results["eval_k"] == 2 and ("selected" in results) == keep_best


def test_the_advice_after_ctrl_c_resumes_the_run_in_the_default_folder_it_went_to(
        tmp_path, monkeypatch, capsys):
    """Without --out a second run goes to runs/vae-2; "continue with --resume" alone resumed
    runs/vae, the first run, and extended it with the epochs given. The advice names the folder."""
    from minivae import train as train_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: small_data())
    tiny = ["train", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "0", "--no-progress"]
    assert cli.main(tiny + ["--epochs", "1"]) == 0
    first = files(tmp_path / "runs" / "vae")
    real_step = Trainer._step

    def step_then_ctrl_c(self, *args):
        out = real_step(self, *args)
        self.stop_requested.set()
        return out
    monkeypatch.setattr(Trainer, "_step", step_then_ctrl_c)
    capsys.readouterr()
    assert cli.main(tiny + ["--epochs", "2"]) == 130
    advice = capsys.readouterr().out.splitlines()[-1].split("continue with ")[1]
    assert advice == f"--resume --out {Path('runs', 'vae-2')}"
    monkeypatch.setattr(Trainer, "_step", real_step)
    assert cli.main(["train", *advice.split(), "--no-progress"]) == 0
    assert json.loads((tmp_path / "runs" / "vae-2" / RESULTS).read_text())["epochs"] == 2
    assert files(tmp_path / "runs" / "vae") == first


@pytest.mark.parametrize("taken", ["being trained", "trained"])
def test_a_training_without_out_goes_on_to_the_next_free_folder_when_its_own_is_taken(
        tmp_path, monkeypatch, capsys, taken):
    """Two `minivae train` without --out started together both name runs/vae while loading the
    data; the second to claim it found it taken (locked by the other, or holding the other's run
    by then) and was refused, where it goes on to runs/vae-2, as it does when the other's run is
    written before it starts. The advice after Ctrl-C names that folder; --out runs/vae given
    stays refused."""
    from minivae import train as train_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: small_data())
    first = tmp_path / "runs" / "vae"
    first.mkdir(parents=True)
    other = os.open(first, os.O_RDONLY)  # the other process's claim, once the folder is named
    real_check, real_step = cli.check_train, Trainer._step

    def step_then_ctrl_c(self, *args):
        out = real_step(self, *args)
        self.stop_requested.set()
        return out

    def checked_then_taken(args):
        checked = real_check(args)
        if taken == "being trained":
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            train(config(tmp_path, epochs=1, out=str(Path("runs", "vae"))), data=small_data(), **QUIET)
        monkeypatch.setattr(Trainer, "_step", step_then_ctrl_c)  # this training: Ctrl-C after a step
        return checked
    monkeypatch.setattr(cli, "check_train", checked_then_taken)
    tiny = ["train", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "0", "--no-progress"]
    try:
        assert cli.main(tiny + ["--epochs", "2"]) == 130
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"training a new run in {Path('runs', 'vae-2')}"
        advice = out[-1].split("continue with ")[1]
        assert advice == f"--resume --out {Path('runs', 'vae-2')}"
        if taken == "being trained":
            assert list(first.iterdir()) == []
            assert cli.main(tiny + ["--out", str(Path("runs", "vae"))]) == 2
            assert f"{Path('runs', 'vae')} is being trained by another process" in capsys.readouterr().err
    finally:
        os.close(other)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: small_data())
    assert cli.main(["train", *advice.split(), "--no-progress"]) == 0
    assert json.loads((tmp_path / "runs" / "vae-2" / RESULTS).read_text())["epochs"] == 2


@pytest.mark.parametrize("asked", [dict(resume=True), dict(overwrite=True)])
def test_a_free_folder_is_chosen_for_a_new_run_only(tmp_path, asked):
    """``free_of`` names the folders a new run may take: with a resume or an overwrite, which
    name their folder, it is refused before anything is written."""
    with pytest.raises(ValueError, match="free_of names the folder of a new run; give it without resume "
                                         "and overwrite"):
        train(config(tmp_path), data=small_data(), free_of=str(tmp_path / "runs"), **asked, **QUIET)
    assert list(tmp_path.iterdir()) == []


def test_a_new_run_names_its_folder_when_it_starts(tmp_path, monkeypatch, capsys):
    """Without --out a run goes to the first free folder of runs/vae, runs/vae-2, ...; the folder
    was named only on an interrupt, so a run left training could not be found (or resumed)."""
    from minivae import train as train_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: small_data())
    tiny = ["train", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "0", "--no-progress",
            "--epochs", "1"]
    for folder in ("vae", "vae-2"):
        assert cli.main(tiny) == 0
        assert capsys.readouterr().out.splitlines()[0] == f"training a new run in {Path('runs', folder)}"
    lines = []
    train(config(tmp_path, epochs=1), data=small_data(), progress=False, log=lines.append)
    assert lines[0] == f"training a new run in {tmp_path / 'run'}"


def test_a_sigterm_that_training_stops_at_exits_143_and_ctrl_c_130(tmp_path, monkeypatch, capsys):
    """A process ended by signal N has status 128 + N, as `timeout` and job schedulers read it: a
    SIGTERM that training turned into a checkpoint exited 130, the status of a Ctrl-C."""
    from minivae import train as train_module

    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: small_data())
    real_step = Trainer._step
    for signum, status, said in [(signal.SIGTERM, 143, "interrupted by SIGTERM"), (signal.SIGINT, 130, "interrupted")]:
        def step_then_signal(self, *args):
            out = real_step(self, *args)
            os.kill(os.getpid(), signum)  # to this process: training's own handler takes it
            return out
        monkeypatch.setattr(Trainer, "_step", step_then_signal)
        run = tmp_path / signum.name
        assert cli.main(["train", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "0",
                         "--no-progress", "--epochs", "2", "--out", str(run)]) == status
        out, err = capsys.readouterr()
        assert err == f"minivae: {said}\n"
        assert out.splitlines()[-1].startswith(f"interrupted: saved epoch 1, batch 1 to {run / CHECKPOINT}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_the_last_stop_check_skips_the_final_evaluation(tmp_path, monkeypatch, capsys, signum):
    """A Ctrl-C or SIGTERM after the loop's last check for one, before its handlers were given
    back, was taken by them and acted on by nothing: the final evaluation ran as if no signal had
    come (minutes with --eval-k 5000; a second signal ended the process). Training is done and
    saved then: the evaluation is skipped as after a signal in the loop, and --resume does it."""
    from minivae import train as train_module

    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: small_data())
    real_deferred = train_module._deferred_interrupt

    @contextlib.contextmanager
    def signalled_at_the_end(flag):
        with real_deferred(flag):
            yield
            signal.raise_signal(signum)  # the loop is over; its handlers take the signal
    monkeypatch.setattr(train_module, "_deferred_interrupt", signalled_at_the_end)
    run = tmp_path / "run"
    argv = ["train", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "2", "--no-progress",
            "--epochs", "1", "--out", str(run)]
    assert cli.main(argv) == 128 + signum
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"interrupted: saved the end of epoch 1 to {run / CHECKPOINT}; continue with --resume --out {run}")
    assert not (run / RESULTS).exists()
    monkeypatch.setattr(train_module, "_deferred_interrupt", real_deferred)
    assert cli.main([*argv, "--resume"]) == 0
    assert json.loads((run / RESULTS).read_text())["eval_k"] == 2


_TERMINATED_CHILD = """
import os, signal, sys
from pathlib import Path
from minivae.train import Stopped, Trainer
from test_train import config, small_data

trainer = Trainer(config(Path(sys.argv[1]), epochs=2), data=small_data(), progress=False, log=print)
step = trainer._step

def step_then_terminated(xb, beta, t):
    out = step(xb, beta, t)
    if t == 3:  # as `kill PID`, `timeout` or a job scheduler stopping the job would
        os.kill(os.getpid(), signal.SIGTERM)
    return out
trainer._step = step_then_terminated
try:
    trainer.fit()
except Stopped as exc:
    sys.exit(128 + exc.signum)
"""


def test_sigterm_inside_an_epoch_saves_the_batch_and_resumes_to_the_same_bits(tmp_path):
    """SIGTERM stops training as Ctrl-C does: at the end of the step, with a checkpoint of it (it
    ended the process at once, losing every step since the last epoch's checkpoint)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run([sys.executable, "-c", _TERMINATED_CHILD, str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=120)
    run = tmp_path / "run"
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    assert child.stdout.splitlines()[-1] == (f"interrupted: saved epoch 1, batch 4 to {run / CHECKPOINT}; "
                                             f"continue with --resume --out {run}")
    resumed = Trainer(config(tmp_path, epochs=2), data=small_data(), **QUIET)
    resumed.fit(resume=True)
    ref = Trainer(config(tmp_path / "ref", epochs=2), data=small_data(), **QUIET)
    ref.fit()
    for name, value in params(ref.model).items():
        np.testing.assert_array_equal(params(resumed.model)[name], value, err_msg=name)


def test_ctrl_c_after_starting_in_a_finished_run_leaves_it_as_it_was(tmp_path):
    data = small_data()
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    before = files(tmp_path / "run")
    trainer = Trainer(config(tmp_path, epochs=1), data=data, **QUIET)
    _interrupt_after(trainer, 1)  # a Ctrl-C after one step would save a checkpoint at batch 1
    with pytest.raises(RunExistsError):
        trainer.fit()
    assert files(tmp_path / "run") == before


def test_overwrite_starts_again_and_leaves_no_old_results(tmp_path):
    data = small_data()
    run = tmp_path / "run"
    train(config(tmp_path, epochs=2, eval_k=2), data=data, **QUIET)
    (run / "eval_k4.json").write_text("{}")
    (run / "clusters_10_first500.json").write_text("{}")
    (run / "samples.png").write_bytes(b"an old picture")
    (run / "notes.txt").write_text("mine")  # not a file of the run: kept
    trainer = Trainer(config(tmp_path, epochs=1), data=data, **QUIET)
    trainer.fit(overwrite=True)
    fresh = Trainer(config(tmp_path / "fresh", epochs=1), data=data, **QUIET)
    fresh.fit()
    for name, value in params(fresh.model).items():
        np.testing.assert_array_equal(params(trainer.model)[name], value, err_msg=name)
    assert [json.loads(line)["epoch"] for line in (run / METRICS).read_text().splitlines()] == [1]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "config.json", "metrics.jsonl",
                                                      "notes.txt"]


@pytest.mark.parametrize("stopped_at", range(1, 8))
def test_an_overwrite_stopped_while_removing_never_leaves_old_scores_outside_a_run(tmp_path, monkeypatch,
                                                                                  stopped_at):
    """Ctrl-C at any file the overwrite removes: either the folder still holds a run (a new one
    is refused there without --overwrite) or none of the old run's scores and pictures is left.
    (The run's own files went first: the old eval_k4.json then stayed in a folder that a new
    run took without a word, and read as that run's score.)"""
    data = small_data()
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1, eval_k=2), data=data, **QUIET)
    for name in ("eval_k4.json", "clusters_10.json", "samples.png"):
        (run / name).write_text("of the old run")
    real_unlink, removed = Path.unlink, []

    def unlink(path, missing_ok=False):
        if len(removed) + 1 == stopped_at:
            raise KeyboardInterrupt
        real_unlink(path, missing_ok=missing_ok)
        removed.append(path.name)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tmp_path, epochs=1), data=data, **QUIET).fit(overwrite=True)
    monkeypatch.undo()
    left = {p.name for p in run.iterdir()}
    assert runs.holds_run(run) or not left & {"eval_k4.json", "clusters_10.json", "samples.png"}, left


def test_resume_and_out_are_checked_before_training(tmp_path):
    data = small_data()
    with pytest.raises(NotARunError, match="no checkpoint.npz; train without --resume"):
        Trainer(config(tmp_path), data=data, **QUIET).fit(resume=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # killed before its first checkpoint
    with pytest.raises(NotARunError, match="no checkpoint.npz; start it again with --overwrite"):
        Trainer(config(tmp_path), data=data, **QUIET).fit(resume=True)
    with pytest.raises(RunFolderError, match="not both"):
        Trainer(config(tmp_path), data=data, **QUIET).fit(resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        Trainer(config(tmp_path, out=str(tmp_path / "file")), data=data, **QUIET).fit()


def test_a_folder_another_process_trains_in_is_refused_and_left_as_it_is(tmp_path):
    data = small_data()
    run = tmp_path / "run"
    Trainer(config(tmp_path, epochs=1), data=data, **QUIET).fit()
    before = files(run)
    other = os.open(run, os.O_RDONLY)  # stands for the other process's claim (flock conflicts
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # between open files, even in one process)
    try:
        for kw in (dict(resume=True), dict(overwrite=True)):
            with pytest.raises(RunBusyError, match=f"{run} is being trained by another process"):
                train(config(tmp_path, epochs=2), data=data, **kw, **QUIET)
        assert files(run) == before
    finally:
        os.close(other)
    train(config(tmp_path, epochs=2), data=data, resume=True, **QUIET)  # released: free again
    assert json.loads((run / RESULTS).read_text())["epochs"] == 2


def test_a_run_trained_into_the_folder_between_the_check_and_the_lock_is_refused(tmp_path, monkeypatch):
    """Two trainings started together into one folder both found it free; the one that took the
    lock second, after the other had trained its run to the end (a process stopped in between,
    by Ctrl-Z or a busy machine), trained a new run over it without --overwrite."""
    data = small_data()
    run = tmp_path / "run"
    real_check = runs.check_run_dir
    def check_then_another_trains(run_dir, resume=False, overwrite=False):
        real_check(run_dir, resume, overwrite)
        monkeypatch.setattr(runs, "check_run_dir", real_check)
        train(config(tmp_path, epochs=1), data=data, **QUIET)  # the other process, start to end
    monkeypatch.setattr(runs, "check_run_dir", check_then_another_trains)
    with pytest.raises(RunExistsError, match=f"{run} already holds a run"):
        train(config(tmp_path, epochs=2, seed=1), data=data, **QUIET)
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    assert json.loads((run / RESULTS).read_text())["epochs"] == 1


def test_a_new_run_goes_on_when_its_free_folder_is_trained_into_before_the_lock(tmp_path, monkeypatch):
    """A run without --out takes the first free folder; another training may run start to end in
    it after it was found free and before the lock is taken. The new run goes on to the next
    folder, as it does when it finds the folder locked, and the other run is left as it is."""
    data = small_data()
    base = tmp_path / "runs" / "vae"
    real_check = runs.check_run_dir
    def check_then_another_trains(run_dir, resume=False, overwrite=False):
        real_check(run_dir, resume, overwrite)
        monkeypatch.setattr(runs, "check_run_dir", real_check)
        train(config(tmp_path, epochs=1, out=str(base)), data=data, **QUIET)  # the other process
    monkeypatch.setattr(runs, "check_run_dir", check_then_another_trains)
    train(config(tmp_path, epochs=2, seed=1), data=data, free_of=str(base), **QUIET)
    assert json.loads((base / RESULTS).read_text())["epochs"] == 1
    assert json.loads((tmp_path / "runs" / "vae-2" / RESULTS).read_text())["epochs"] == 2


@pytest.mark.parametrize("error, trains", [(errno.ENOLCK, True), (errno.EIO, False)])
def test_a_file_system_without_locks_trains_unlocked_and_other_lock_errors_are_named(
        tmp_path, monkeypatch, error, trains):
    def flock(fd, operation):
        raise OSError(error, os.strerror(error))
    monkeypatch.setattr(runs.fcntl, "flock", flock)
    trainer = Trainer(config(tmp_path, epochs=1), data=small_data(), **QUIET)
    if trains:
        with pytest.warns(RuntimeWarning, match=f"{tmp_path / 'run'} cannot be locked on this file "
                          r"system \(No locks available\): training unlocked"):
            trainer.fit()
        assert (tmp_path / "run" / CHECKPOINT).exists()
    else:
        with pytest.raises(RunWriteError, match=f"cannot lock {tmp_path / 'run'} for training"):
            trainer.fit()


def test_next_free_run_dir_counts_up_past_folders_that_hold_runs(tmp_path):
    base = tmp_path / "runs" / "vae"
    assert runs.next_free_run_dir(base) == base
    base.mkdir(parents=True)
    assert runs.next_free_run_dir(base) == base  # an empty folder holds no run
    (base / "config.json").write_text("{}")
    assert runs.next_free_run_dir(base) == tmp_path / "runs" / "vae-2"
    (tmp_path / "runs" / "vae-2").mkdir()
    (tmp_path / "runs" / "vae-2" / METRICS).write_text("")
    assert runs.next_free_run_dir(base) == tmp_path / "runs" / "vae-3"
    (tmp_path / "runs" / "vae-3").write_text("a file, where no run can go")
    assert runs.next_free_run_dir(base) == tmp_path / "runs" / "vae-4"


# ----- crash-consistent run folders -------------------------------------------------------------

def test_a_cut_off_last_metrics_line_never_blocks_resume_or_reading(tmp_path):
    data = small_data()
    run = tmp_path / "run"
    cut = Trainer(config(tmp_path), data=data, **QUIET)
    _interrupt_after(cut, STEPS_PER_EPOCH + 2)  # inside epoch 2
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    with open(run / METRICS, "a") as f:
        f.write('{"epoch": 2, "beta": 0.1, "train_lo')  # a kill while appending
    assert [m["epoch"] for m in runs.read_metrics(run)] == [1]
    Trainer(config(tmp_path), data=data, **QUIET).fit(resume=True)
    lines = (run / METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


@pytest.mark.parametrize("broken", [b'{"epo', b'\xff\xfe\x00garbage'])
def test_a_broken_metrics_line_inside_the_file_is_named(tmp_path, broken):
    """Text that is not JSON, or bytes that are not even UTF-8: one error naming file and line."""
    (tmp_path / METRICS).write_bytes(b'{"epoch": 1}\n' + broken + b'\n{"epoch": 2}\n')
    with pytest.raises(RunFolderError, match=f"{METRICS} line 2 is not JSON"):
        runs.read_metrics(tmp_path)


def test_a_broken_last_line_that_was_written_whole_is_named(tmp_path):
    """Only a last line without its newline can be a write cut off: one that ends in a newline
    was written whole, so text there that is not JSON is damage."""
    (tmp_path / METRICS).write_bytes(b'{"epoch": 1}\n{"epo\n')
    with pytest.raises(RunFolderError, match=f"{METRICS} line 2 is not JSON"):
        runs.read_metrics(tmp_path)


@pytest.mark.parametrize("line", [b'[1, 2]', b'3', b'"epoch"'])
@pytest.mark.parametrize("last", [False, True])
def test_a_metrics_line_that_is_no_json_object_is_named(tmp_path, capsys, line, last):
    """JSON, but no record to look a value up in (`minivae plot` ended in an AttributeError from
    inside the plots): one error naming file and line, also as the last line without its
    newline (no cut-off record reads as a list or a number)."""
    end = b'' if last else b'\n{"epoch": 2}\n'
    (tmp_path / METRICS).write_bytes(b'{"epoch": 1}\n' + line + end)
    with pytest.raises(RunFolderError, match=f"{METRICS} line 2 is not a JSON object"):
        runs.read_metrics(tmp_path)


def test_rewriting_the_metrics_of_a_folder_without_them_writes_no_file(tmp_path):
    """A run stopped inside its first epoch has no metrics.jsonl, and its resume drops the lines
    written after the checkpoint (``rewrite_metrics``): where there are none, no file is made; an
    empty metrics.jsonl would make a folder hold a run (``holds_run``)."""
    runs.rewrite_metrics(tmp_path, lambda record: True)
    assert list(tmp_path.iterdir()) == [] and not runs.holds_run(tmp_path)


@pytest.mark.parametrize("line", ['{"valid_elbo": -90.0}', '{"epoch": "1"}', '{"epoch": true}',
                                  '{"step": 2.0, "grad_norm/w": 1.0}'])
def test_a_metrics_line_without_an_integer_position_is_named_at_resume(tmp_path, line):
    """A line that holds no integer epoch or step cannot be placed before or after the
    checkpoint (a KeyError or a TypeError from comparing a string with a number came out of the
    resume): one error naming the file and the line, and the folder left as it was."""
    data = small_data()
    run = tmp_path / "run"
    cut = Trainer(config(tmp_path), data=data, **QUIET)
    _interrupt_after(cut, STEPS_PER_EPOCH + 2)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    with open(run / METRICS, "a") as f:
        f.write(line + "\n")
    before = files(run)
    with pytest.raises(RunFolderError) as exc:
        Trainer(config(tmp_path), data=data, **QUIET).fit(resume=True)
    message = one_line(exc)
    assert str(run / METRICS) in message and line[:20] in message and "'step' or 'epoch'" in message
    assert files(run) == before


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_files_of_a_run_get_the_permissions_of_the_umask(tmp_path, umask):
    """Written atomically through a private temporary file, they still get what a plain open
    would give them (others may read a run on a shared machine)."""
    old = os.umask(umask)
    try:
        train(config(tmp_path, epochs=1, eval_k=2), data=small_data(), **QUIET)
    finally:
        os.umask(old)
    run = tmp_path / "run"
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert modes == dict.fromkeys([CHECKPOINT, "config.json", METRICS, RESULTS], 0o666 & ~umask)


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from minivae.files import atomic_write

    path = tmp_path / "f.json"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError, match="No space") as exc:
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    assert exc.value.filename == str(path)  # a write into the open file names none itself


def test_an_atomic_write_that_cannot_make_or_move_its_temporary_file_names_the_target(tmp_path):
    """A folder that does not exist (the temporary file cannot be made) and a target that is a
    folder (the temporary file cannot be moved onto it): the error named the temporary file,
    ``<name>.<random>.tmp``, a file the user never asked for."""
    from minivae.files import atomic_write

    for path, error in [(tmp_path / "missing" / "f.json", FileNotFoundError),
                        (tmp_path / "folder", IsADirectoryError if os.name == "posix" else OSError)]:
        if path.name == "folder":
            path.mkdir()
        with pytest.raises(error) as exc:
            atomic_write(path, lambda f: f.write(b"new"))
        assert exc.value.filename == str(path) and ".tmp" not in str(exc.value), exc.value
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


@pytest.mark.skipif(os.name != "posix", reason="folders are synced on POSIX only")
def test_an_atomic_write_syncs_the_file_then_the_folder_after_the_move(tmp_path, monkeypatch):
    from minivae import files

    folder, target = os.stat(tmp_path), tmp_path / "f.json"
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        is_folder = (st.st_dev, st.st_ino) == (folder.st_dev, folder.st_ino)
        synced.append(("folder" if is_folder else "file", target.exists()))
        real_fsync(fd)
    monkeypatch.setattr(files.os, "fsync", fsync)
    files.atomic_write(target, lambda f: f.write(b"new"))
    assert synced == [("file", False), ("folder", True)]  # the folder once the file is moved in



def test_a_checkpoint_array_named_as_its_document_is_refused_and_the_old_file_kept(tmp_path):
    """An array called __meta__ would be replaced by the JSON document without a word."""
    path = tmp_path / CHECKPOINT
    checkpoint.save(path, {"w": np.ones(2)}, {"epoch": 1})
    good = path.read_bytes()
    with pytest.raises(ValueError, match="'__meta__' is reserved for the JSON document"):
        checkpoint.save(path, {checkpoint.META_KEY: np.zeros(2)}, {"epoch": 2})
    assert path.read_bytes() == good


def test_a_damaged_compressed_checkpoint_is_named_as_corrupt(tmp_path):
    """(A compressed .npz, as np.savez_compressed writes, with a damaged deflate stream met a bare
    zlib.error: "Error -3 while decompressing data: invalid block type".)"""
    path = tmp_path / CHECKPOINT
    np.savez_compressed(path, w=np.arange(1000.0), **{checkpoint.META_KEY: np.array(json.dumps({"epoch": 1}))})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("w.npy")
    # The member's data follows its local header (30 bytes, then its name and extra field).
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    data[member.header_offset + 30 + name_length + extra_length] = 0xFF  # deflate block type 3: invalid
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=f"^checkpoint {path} is unreadable or corrupt: "):
        checkpoint.load(path)


def _checkpoint_with_member(path, shape, data, method=zipfile.ZIP_STORED, directory_size=None):
    """Write at ``path`` a checkpoint whose array ``w`` is a float64 .npy header of ``shape``
    followed by the bytes ``data`` (whatever their number), its member compressed by ``method``;
    ``directory_size``, when given, is written into the zip's directory as the member's size."""
    from io import BytesIO

    header = BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    meta = BytesIO()
    np.lib.format.write_array(meta, np.array(json.dumps({"epoch": 1})))
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("w.npy", header.getvalue() + data)
        archive.writestr(checkpoint.META_KEY + ".npy", meta.getvalue())
    if directory_size is not None:
        raw = bytearray(path.read_bytes())
        entry = raw.index(b"PK\x01\x02")  # the directory's entry of w.npy, the first member
        raw[entry + 24:entry + 28] = struct.pack("<I", len(header.getvalue()) + directory_size)
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("shape, data, held", [
    ((2**40,), np.arange(2.0).tobytes(), 16),  # 8 TiB described
    ((5, 5), np.arange(30.0).tobytes(), 240),  # fewer described: np.load read the first 25 values
], ids=["more", "fewer"])
def test_a_checkpoint_array_is_refused_when_its_header_describes_other_bytes_than_it_holds(
        tmp_path, shape, data, held):
    """np.load allocates the array a header describes before it reads its data (and the zip's CRC
    once it has read it): a damaged or crafted header of shape (2**40,) raised MemoryError,
    naming no file, and one of a smaller shape loaded the first values as the array."""
    path = tmp_path / CHECKPOINT
    _checkpoint_with_member(path, shape, data)
    described = 8 * int(np.prod(shape))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(
            f"checkpoint {path} is unreadable or corrupt: w.npy describes an array of shape {shape} "
            f"and dtype float64 ({described} bytes) but holds {held} bytes")):
        checkpoint.load(path)


def test_a_checkpoint_array_is_refused_unread_when_the_zip_directory_agrees_with_its_header(tmp_path):
    """The size the zip's directory gives a compressed member is checked only as the member is
    read: a header of 800 MB that the directory agrees with had np.load allocate them (and fail
    to read them). Counting the member's bytes a chunk at a time allocates no such array."""
    import tracemalloc

    path = tmp_path / CHECKPOINT
    _checkpoint_with_member(path, (10**8,), np.arange(2.0).tobytes(), zipfile.ZIP_DEFLATED,
                            directory_size=8 * 10**8)
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("w.npy").file_size > 8 * 10**8
    tracemalloc.start()
    try:
        with pytest.raises(checkpoint.CheckpointError, match=re.escape(
                f"checkpoint {path} is unreadable or corrupt: w.npy describes an array of shape (100000000,) "
                "and dtype float64 (800000000 bytes) but holds 16 bytes")):
            checkpoint.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak


def test_a_checkpoint_still_loads_whatever_its_arrays(tmp_path):
    """Every array of a checkpoint passes the size check: empty, 0-d, strings, Fortran order,
    compressed (as np.savez_compressed writes)."""
    arrays = {"empty": np.zeros((0, 3)), "scalar": np.array(2.5), "text": np.array(["ab", "cde"]),
              "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "ints": np.arange(5, dtype=np.int8)}
    path = tmp_path / CHECKPOINT
    checkpoint.save(path, arrays, {"epoch": 1})
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **arrays, **{checkpoint.META_KEY: np.array(json.dumps({"epoch": 1}))})
    for written in (path, compressed):
        loaded, meta = checkpoint.load(written)
        assert meta == {"epoch": 1} and sorted(loaded) == sorted(arrays)
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[name], array)


def test_split_prefix_takes_the_names_that_begin_with_the_prefix_only():
    arrays = {"optim/m": 1, "model/optim/x": 2, "optim/v": 3, "optim": 4}
    assert checkpoint.split_prefix(arrays, "optim/") == {"m": 1, "v": 3}


def test_an_npz_holds_the_same_bytes_whatever_the_layout_of_its_arrays():
    """write_npz writes C order: a Fortran-ordered or strided array gives the bytes of its C copy
    (np.save would record the Fortran order instead), and reads back equal."""
    from io import BytesIO

    from minivae.files import write_npz

    a = np.arange(12.0).reshape(3, 4)
    written = {}
    layouts = {"c": a, "fortran": np.asfortranarray(a), "strided": np.repeat(a, 2, axis=1)[:, ::2]}
    for name, layout in layouts.items():
        f = BytesIO()
        write_npz(f, {"w": layout})
        written[name] = f.getvalue()
        with np.load(BytesIO(written[name])) as z:
            np.testing.assert_array_equal(z["w"], a)
    assert written["fortran"] == written["c"] == written["strided"]

def test_stray_tmp_files_are_removed_at_the_next_start(tmp_path):
    data = small_data()
    run = tmp_path / "run"
    cut = Trainer(config(tmp_path), data=data, **QUIET)
    _interrupt_after(cut, 3)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    stray = [run / "checkpoint.npz.k2j3h4.tmp", run / "metrics.jsonl.abc.tmp", run / "results.json.x.tmp"]
    for path in stray:
        path.write_bytes(b"\0" * 1000)  # what kill -9 during an atomic write leaves
    (run / "mine.tmp").write_text("a user's file")
    Trainer(config(tmp_path), data=data, **QUIET).fit(resume=True)
    assert not any(path.exists() for path in stray)
    assert (run / "mine.tmp").exists()


def test_stray_files_of_the_results_of_eval_and_cluster_and_of_pictures_are_removed_too(tmp_path):
    stray = ["eval_k1000.json.3fa9c1.tmp", "clusters_10.json.b0b0b0.tmp", "clusters_10_first100.json.x.tmp",
             "samples.png.5e5e5e.tmp", "curves.png.c0ffee.tmp", "graph.dot.1a2b3c.tmp", "graph.svg.4d5e6f.tmp"]
    kept = ["eval_k1000.json", "clusters_10.json", "samples.png", "mine.tmp", "notes.json.x.tmp", "mine.png.x.tmp"]
    for name in stray + kept:
        (tmp_path / name).write_text("")
    runs.remove_stray_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def _full_disk_on_call(n):
    """A stand-in for the writer of a checkpoint's bytes (``checkpoint.write_npz``) that fails
    like a full disk on its ``n``-th call (1-based)."""
    real, calls = checkpoint.write_npz, [0]

    def write(f, payload):
        calls[0] += 1
        if calls[0] == n:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, payload)
    return write


def test_a_full_disk_gives_one_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    data = small_data()  # a constant rate: the cosine schedule would bend with the new length
    run = tmp_path / "run"
    Trainer(config(tmp_path, epochs=1, lr_schedule="constant"), data=data, **QUIET).fit()
    before = (run / CHECKPOINT).read_bytes()
    monkeypatch.setattr(checkpoint, "write_npz", _full_disk_on_call(1))
    with pytest.raises(RunWriteError) as exc:
        Trainer(config(tmp_path, epochs=2, lr_schedule="constant"), data=data, **QUIET).fit(resume=True)
    message = one_line(exc)
    assert os.strerror(errno.ENOSPC) in message and str(run / CHECKPOINT) in message
    assert "previous checkpoint is kept" in message
    assert (run / CHECKPOINT).read_bytes() == before
    assert not list(run.glob("*.tmp"))
    monkeypatch.undo()  # space again: the run goes on from the kept checkpoint
    resumed = Trainer(config(tmp_path, epochs=2, lr_schedule="constant"), data=data, **QUIET)
    resumed.fit(resume=True)
    ref = Trainer(config(tmp_path / "ref", epochs=2, lr_schedule="constant"), data=data, **QUIET)
    ref.fit()
    for name, value in params(ref.model).items():
        np.testing.assert_array_equal(params(resumed.model)[name], value, err_msg=name)


def test_eval_prints_its_result_before_writing_it(tmp_path, monkeypatch, capsys):
    import minivae.data as data_module

    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    monkeypatch.setattr(data_module, "load_mnist", lambda verbose=True: data)
    real_write = runs.atomic_write_text

    def read_only(path, text):  # the run folder refuses new files
        if Path(path).parent == run:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_write(path, text)
    monkeypatch.setattr(runs, "atomic_write_text", read_only)
    capsys.readouterr()
    try:
        code = cli.main(["eval", str(run), "--k", "3", "--no-progress"])
        captured = capsys.readouterr()
        message, out = captured.err, captured.out
        assert code == 2
    except RunWriteError as exc:
        message, out = str(exc), capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["k"] == 3 and np.isfinite(result["test_nll"])
    assert "eval_k3.json" in message and os.strerror(errno.EROFS) in message and "printed above" in message
    assert not (run / "eval_k3.json").exists()


# ----- scoring a run while it trains on, or is trained again --------------------------------------

def _score_with(command, run, meanwhile, monkeypatch, data):
    """``minivae eval RUN`` or ``minivae cluster RUN`` on ``data``, calling ``meanwhile()`` while
    the model is scored (the minutes of k = 5000), as another process would act then; the exit
    status. The clustering is stood in for: only when and where its result is written counts."""
    import types

    import minivae.clustering
    import minivae.data
    import minivae.evaluate

    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: data)
    real_scores = minivae.evaluate.test_set_scores

    def scores_meanwhile(*args, **kwargs):
        meanwhile()
        return real_scores(*args, **kwargs)

    def clusters_meanwhile(*args, **kwargs):
        meanwhile()
        return {"accuracy": 1.0}
    monkeypatch.setattr(minivae.evaluate, "test_set_scores", scores_meanwhile)
    monkeypatch.setattr(minivae.clustering, "latent_clusters", clusters_meanwhile)
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    options = ["--k", "2", "--no-progress"] if command == "eval" else ["--clusters", "2"]
    return cli.main([command, str(run), *options])


def _results_in(run):
    """The names of the results of ``eval`` and ``cluster`` in the folder ``run``."""
    return sorted(p.name for pattern in ("eval_k*.json", "clusters_*.json") for p in run.glob(pattern))


def _without_run_id(run):
    """Make the checkpoint of ``run`` one saved before runs had an identity."""
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    del meta["run_id"]
    checkpoint.save(run / CHECKPOINT, arrays, meta)


def _another_training(tmp_path, data, how, new_run):
    """A function that trains the run of ``config(tmp_path)`` again with --overwrite, as another
    process would: to its end (``how`` "trained again"), or only started ("started again": in its
    first epoch, without a checkpoint yet; the folder stays claimed by ``new_run``, an ExitStack)."""
    run = tmp_path / "run"

    def train_again():
        if how == "started again":
            new_run.enter_context(runs.claim_run_dir(run, overwrite=True))
            runs.write_json(run / runs.CONFIG, config(tmp_path, epochs=1, seed=1).to_dict())
        else:
            train(config(tmp_path, epochs=1, seed=1), overwrite=True, data=data, **QUIET)
    return train_again


@pytest.mark.parametrize("command", ["eval", "cluster"])
@pytest.mark.parametrize("meanwhile", ["trained again", "started again",
                                       "trained again, saved without an identity"])
def test_a_score_of_a_run_trained_again_meanwhile_is_not_written(tmp_path, monkeypatch, capsys, command,
                                                                 meanwhile):
    """``train --out RUN --overwrite`` while RUN was scored (eval and cluster take no lock): the
    result of the old run's model was written into the new run, whose score it then read as,
    with the old run's position. It is refused in one line; the new run is scored as it says."""
    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    if meanwhile.endswith("without an identity"):
        _without_run_id(run)
    new_run = contextlib.ExitStack()
    train_again = _another_training(tmp_path, data, meanwhile, new_run)
    with new_run:
        capsys.readouterr()
        assert _score_with(command, run, train_again, monkeypatch, data) == 2
        out, err = capsys.readouterr()
        assert err.splitlines()[-1] == (
            f"minivae: error: {run} no longer holds the run that was scored: it was trained again (or removed) "
            "meanwhile, so the result is not written; to score the run it holds now, run "
            f"`minivae {command} {run}` again once that run has saved a checkpoint")
        assert out == "" and _results_in(run) == []
    if meanwhile != "started again":
        monkeypatch.undo()
        assert _score_with(command, run, lambda: None, monkeypatch, data) == 0
        assert len(_results_in(run)) == 1


@pytest.mark.parametrize("command", ["eval", "cluster"])
@pytest.mark.parametrize("saved_without_an_identity", [False, True])
def test_a_run_scored_while_it_trains_on_gets_its_score(tmp_path, monkeypatch, capsys, command,
                                                        saved_without_an_identity):
    """A resume while the run is scored replaces its checkpoint, but the run is the same: its
    result is written, naming the position of the checkpoint scored. So for a run saved before
    runs had an identity, which the resume keeps without one."""
    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    if saved_without_an_identity:
        _without_run_id(run)

    def resume():
        train(config(tmp_path, epochs=2), resume=True, data=data, **QUIET)
    assert _score_with(command, run, resume, monkeypatch, data) == 0
    result = json.loads((run / _results_in(run)[0]).read_text())
    assert (result["epochs"], result["batch"]) == (1, 0)
    assert checkpoint.load(run / CHECKPOINT)[1]["epoch"] == 2
    assert ("run_id" in checkpoint.load(run / CHECKPOINT)[1]) == (not saved_without_an_identity)


def test_the_identity_of_a_run_is_read_from_its_checkpoint_document_alone(tmp_path, monkeypatch):
    """A command checks a run's identity before and after each file it writes (a ``plot`` up to 18
    times): from the checkpoint's document, without reading its arrays each time."""
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=small_data(n_train=100, n_eval=20), **QUIET)
    run_id = checkpoint.load(run / CHECKPOINT)[1]["run_id"]

    def arrays_read(path):
        raise AssertionError(f"the arrays of {path} were read")
    monkeypatch.setattr(checkpoint, "load", arrays_read)
    runs.check_same_run(run, run_id, "eval")
    with pytest.raises(runs.RunReplacedError, match="no longer holds the run that was scored"):
        runs.check_same_run(run, "another run", "eval")


def test_a_checkpoint_removed_while_it_is_read_is_no_checkpoint(tmp_path, monkeypatch):
    """``train --overwrite`` may remove a run's checkpoint while a command that takes no lock reads
    it (eval and plot read the run's identity around each file they write): the folder then holds
    no checkpoint (NotARunError; for the identity, RunReplacedError), not a checkpoint that is
    "unreadable or corrupt", as the failed read (the file is opened more than once) would say."""
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=small_data(n_train=100, n_eval=20), **QUIET)
    saved = (run / CHECKPOINT).read_bytes()
    run_id = checkpoint.load(run / CHECKPOINT)[1]["run_id"]
    real_check = checkpoint._check_array_sizes

    def removed_meanwhile(path, archive, members):
        Path(path).unlink()  # by the overwrite, once the zip's directory was read
        real_check(path, archive, members)
    monkeypatch.setattr(checkpoint, "_check_array_sizes", removed_meanwhile)
    for read in (runs.read_checkpoint, runs.read_checkpoint_document):
        (run / CHECKPOINT).write_bytes(saved)
        with pytest.raises(NotARunError, match=f"holds no {CHECKPOINT}"):
            read(run)
    (run / CHECKPOINT).write_bytes(saved)
    with pytest.raises(runs.RunReplacedError, match="no longer holds the run that was scored"):
        runs.check_same_run(run, run_id, "eval")


def test_a_score_written_as_its_run_is_trained_again_is_removed(tmp_path, monkeypatch, capsys):
    """The overwrite between the check before the write and the write itself: the result is
    found by the check after it, and removed."""
    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    real_write = runs.atomic_write_text

    def trained_again_then_written(path, text):
        if Path(path).name == "eval_k2.json":
            train(config(tmp_path, epochs=1, seed=1), overwrite=True, data=data, **QUIET)
        real_write(path, text)
    monkeypatch.setattr(runs, "atomic_write_text", trained_again_then_written)
    assert _score_with("eval", run, lambda: None, monkeypatch, data) == 2
    assert "no longer holds the run that was scored" in capsys.readouterr().err
    assert _results_in(run) == []


def test_a_score_written_while_an_overwrite_removes_the_run_goes_with_it(tmp_path, monkeypatch):
    """An evaluation of the old run that checked it before its checkpoint went may write its
    result after the old scores were removed: the overwrite removes the scores again once the
    checkpoint is gone (an evaluation that checks after that finds it gone)."""
    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    real_unlink = Path.unlink

    def written_first(path, missing_ok=False):
        if path.name == runs.CONFIG:  # the first file of the run to go, after its scores
            (run / "eval_k2.json").write_text("of the old run")
        real_unlink(path, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", written_first)
    Trainer(config(tmp_path, epochs=1, seed=1), data=data, **QUIET).fit(overwrite=True)
    assert _results_in(run) == []


@pytest.mark.parametrize("command, written", [("eval", "eval_k2.json"), ("sample", "samples.png"),
                                               ("plot", "samples.png"), ("graph", "graph.dot")])
def test_a_write_cut_short_by_the_overwrite_of_its_run_is_refused_as_such(tmp_path, monkeypatch, capsys,
                                                                            command, written):
    """The overwrite that starts a new run in the folder removes the temporary files it holds,
    among them that of a result or picture being written of the old run: the write fails, and
    the error says that the run was trained again, not that a file is missing."""
    from minivae import files, viz

    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    real_write = files.atomic_write

    def trained_again_while_written(path, write):
        def write_meanwhile(f):
            if Path(path) == run / written:
                train(config(tmp_path, epochs=1, seed=1), overwrite=True, data=data, **QUIET)
            write(f)
        real_write(path, write_meanwhile)
    for module in (files, viz):  # viz's pictures, and the files of atomic_write_text
        monkeypatch.setattr(module, "atomic_write", trained_again_while_written)
    capsys.readouterr()
    if command == "eval":
        assert _score_with(command, run, lambda: None, monkeypatch, data) == 2
    else:
        assert _draw_with(command, run, lambda: None, monkeypatch, data) == 2
    err = capsys.readouterr().err
    did = "scored" if command == "eval" else "drawn"
    assert f"no longer holds the run that was {did}: it was trained again" in err.splitlines()[-1]
    assert written not in os.listdir(run)


# ----- drawing a run while it trains on, or is trained again --------------------------------------

#: The picture of each command that ``_draw_with`` writes after ``meanwhile``, the first refused when
#: the run was trained again then (plot's samples, reconstructions and PCA are written before).
DRAWN_AFTER = {"sample": "samples.png", "plot": "traversal.png", "graph": "graph.dot"}


def _draw_with(command, run, meanwhile, monkeypatch, data):
    """``minivae sample RUN``, ``plot RUN`` or ``graph RUN`` on ``data``, calling ``meanwhile()``
    while the pictures are drawn, as another process would act then (for plot, where t-SNE runs:
    its first three pictures are written by then); the exit status. Plot's embedders are left
    out (its ``_embeddings`` yields none, whatever is installed or already imported), so that
    plot stays quick and draws the same pictures everywhere."""
    import minivae.graph
    from minivae import viz

    monkeypatch.setattr(viz, "load_mnist", lambda verbose=True: data)
    module, name = {"sample": (viz, "prior_samples"), "plot": (viz, "_embeddings"),
                    "graph": (minivae.graph, "model_loss_graph")}[command]
    real = getattr(module, name) if command != "plot" else (lambda points, seed: iter(()))

    def drawn_meanwhile(*args, **kwargs):
        meanwhile()
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, drawn_meanwhile)
    options = {"sample": ["--n", "4"], "plot": [], "graph": ["--data", "random"]}[command]
    return cli.main([command, str(run), *options])


def _pictures_in(run):
    """The names of the pictures and graphs in the folder ``run``."""
    return sorted(p.name for p in run.iterdir() if p.suffix in (".png", ".dot", ".svg"))


@pytest.mark.parametrize("command", ["sample", "plot", "graph"])
@pytest.mark.parametrize("meanwhile", ["trained again", "started again"])
def test_a_picture_of_a_run_trained_again_meanwhile_is_not_written(tmp_path, monkeypatch, capsys, command,
                                                                   meanwhile):
    """``train --out RUN --overwrite`` while RUN was drawn (sample, plot and graph take no lock,
    and plot's t-SNE takes minutes): the pictures of the old run's model were written into the
    new run, where they read as its own. The picture at hand is refused in one line naming it,
    those plot wrote before went with the old run, and the new run is drawn as the line says."""
    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    new_run = contextlib.ExitStack()
    train_again = _another_training(tmp_path, data, meanwhile, new_run)
    with new_run:
        capsys.readouterr()
        assert _draw_with(command, run, train_again, monkeypatch, data) == 2
        out, err = capsys.readouterr()
        assert err.splitlines()[-1] == (
            f"minivae: error: {run} no longer holds the run that was drawn: it was trained again (or removed) "
            f"meanwhile, so {run / DRAWN_AFTER[command]} is not written; to draw the run it holds now, "
            f"run `minivae {command} {run}` again once that run has saved a checkpoint")
        assert out == "" and _pictures_in(run) == []
    if meanwhile == "trained again":
        monkeypatch.undo()
        assert _draw_with(command, run, lambda: None, monkeypatch, data) == 0
        assert DRAWN_AFTER[command] in _pictures_in(run)


@pytest.mark.parametrize("command", ["sample", "plot", "graph"])
def test_a_picture_written_as_its_run_is_trained_again_is_removed(tmp_path, monkeypatch, capsys, command):
    """The overwrite between the check before a picture is written and its write: the picture is
    found by the check after it, and removed."""
    from minivae import viz

    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    module, name = (cli, "atomic_write_text") if command == "graph" else (viz, "atomic_write")
    real_write = getattr(module, name)

    def trained_again_then_written(path, *args):
        if Path(path).parent == run:
            train(config(tmp_path, epochs=1, seed=1), overwrite=True, data=data, **QUIET)
        real_write(path, *args)
    monkeypatch.setattr(module, name, trained_again_then_written)
    assert _draw_with(command, run, lambda: None, monkeypatch, data) == 2
    assert "no longer holds the run that was drawn" in capsys.readouterr().err
    assert _pictures_in(run) == []


@pytest.mark.parametrize("command", ["sample", "plot", "graph"])
def test_a_run_drawn_while_it_trains_on_gets_its_pictures(tmp_path, monkeypatch, command):
    """A resume while the run is drawn replaces its checkpoint, but the run is the same: its
    pictures are written."""
    data = small_data(n_train=100, n_eval=20)
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1), data=data, **QUIET)

    def resume():
        train(config(tmp_path, epochs=2), resume=True, data=data, **QUIET)
    assert _draw_with(command, run, resume, monkeypatch, data) == 0
    assert DRAWN_AFTER[command] in _pictures_in(run)
    assert checkpoint.load(run / CHECKPOINT)[1]["epoch"] == 2


# ----- the divergence guard ---------------------------------------------------------------------

def _bad_gradient_at(trainer, step, value):
    """Make one parameter's gradient ``value`` everywhere (with a finite loss) at optimizer step
    ``step`` (1-based, counted from this trainer's start)."""
    real, count = trainer.optimizer.step, [0]

    def bad_step():
        count[0] += 1
        if count[0] == step:
            p = next(iter(trainer.model.parameters()))
            p.grad = np.full_like(p.grad, value)
        real()
    trainer.optimizer.step = bad_step


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflows under test
def test_an_infinite_gradient_on_the_last_step_before_a_save_keeps_the_good_checkpoint(tmp_path):
    data = small_data()
    run = tmp_path / "run"
    Trainer(config(tmp_path, epochs=1), data=data, **QUIET).fit()
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    trainer = Trainer(config(tmp_path, epochs=2), data=data, **QUIET)
    _bad_gradient_at(trainer, STEPS_PER_EPOCH, np.inf)  # the last step of epoch 2
    with pytest.raises(TrainingDiverged) as exc:
        trainer.fit(resume=True)
    assert f"{run / CHECKPOINT} still holds the last good state, at the end of epoch 1" in one_line(exc)
    # Before: "Try a smaller --lr", which a resume cannot change: it would diverge at the same step.
    assert one_line(exc).endswith("A resume would repeat the same steps: start again with --overwrite "
                                  "and a smaller --lr or a KL --warmup.")
    # The same state; the resume recorded its new length at once, as the run's second training.
    arrays_now, meta_now = checkpoint.load(run / CHECKPOINT)
    assert arrays_now.keys() == arrays.keys() and all(np.array_equal(arrays[k], arrays_now[k]) for k in arrays)
    meta["config"]["epochs"], meta["piece"] = 2, 2
    assert meta_now == meta


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflows under test
def test_an_infinite_adam_moment_is_never_saved(tmp_path):
    # A gradient of 1e30 is finite, but its square overflows float32: the second moment becomes
    # inf and the update m / sqrt(v) is 0, so loss and weights stay finite while that parameter
    # is frozen for good. Such a state must not be saved as if it were good.
    data = small_data()
    trainer = Trainer(config(tmp_path, epochs=1), data=data, **QUIET)
    _bad_gradient_at(trainer, 2, 1e30)
    with pytest.raises(TrainingDiverged) as exc:
        trainer.fit()
    message = one_line(exc)
    assert "optim/" in message and "no checkpoint yet" in message
    assert not (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflows under test
@pytest.mark.parametrize("lr", [2.0, 150.0])
def test_a_huge_learning_rate_never_ends_with_a_non_finite_checkpoint(tmp_path, lr):
    """Where the loss overflows depends on the machine's arithmetic (here lr 2 overflows in epoch
    2, after epoch 1 was saved, and lr 150 in epoch 1, before any save). Whichever it is, the
    message says what is on disk, and what is on disk is finite. (A divergence after a save at
    a chosen step is tested deterministically above.)"""
    data = small_data()
    with pytest.raises(TrainingDiverged) as exc:
        train(config(tmp_path, epochs=3, lr=lr, warmup=0, lr_schedule="constant"), data=data, **QUIET)
    message = one_line(exc)
    path = tmp_path / "run" / CHECKPOINT
    if not path.exists():
        assert "has no checkpoint yet" in message and "still holds" not in message
        return
    arrays, meta = checkpoint.load(path)
    assert meta["batch"] == 0
    assert f"{path} still holds the last good state, at the end of epoch {meta['epoch']}" in message
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


def test_divergence_before_the_first_save_says_there_is_no_checkpoint(tmp_path):
    trainer = Trainer(config(tmp_path), data=small_data(), **QUIET)
    trainer.model.decoder.net[-1].bias.data[:] = np.nan
    with pytest.raises(TrainingDiverged) as exc:
        trainer.fit()
    message = one_line(exc)
    assert "no checkpoint yet" in message and "still holds" not in message
    assert not (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.parametrize("damage, named", [
    (lambda meta: meta.pop("epoch"), "'epoch'"), (lambda meta: meta.pop("noise"), "'noise'"),
    (lambda meta: meta.update(noise={}), "Generator state"), (lambda meta: meta.update(batch="0"), "'batch'"),
    (lambda meta: meta["optim"].pop("lr"), "'lr'"), (lambda meta: meta.update(n_train="300"), "'n_train'"),
    (lambda meta: meta.update(images=[100]), "its 'images' is [100], not of type dict"),
    (lambda meta: meta.update(run_id=7), "its 'run_id' is 7, not of type str"),
    (lambda meta: meta.update(piece="1"), "its 'piece' is '1', not of type int"),
])
def test_a_checkpoint_without_the_state_to_resume_from_is_named_and_left_as_it_is(tmp_path, damage, named):
    data = small_data()
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    arrays, meta = checkpoint.load(tmp_path / "run" / CHECKPOINT)
    damage(meta)
    checkpoint.save(tmp_path / "run" / CHECKPOINT, arrays, meta)
    before = files(tmp_path / "run")
    with pytest.raises(checkpoint.CheckpointError) as exc:
        Trainer(config(tmp_path, epochs=2), data=data, **QUIET).fit(resume=True)
    message = one_line(exc)
    assert str(tmp_path / "run" / CHECKPOINT) in message and named in message
    assert files(tmp_path / "run") == before


@pytest.mark.parametrize("position, named", [
    (dict(epoch=-1), "its epoch -1 lies outside its run of 1 epochs; an epoch from 0 to 1"),
    (dict(epoch=2), "its epoch 2 lies outside its run of 1 epochs"),
    (dict(batch=3), "its batch 3 follows the last of its run's 1 epochs"),
    (dict(epoch=0, batch=7), "its batch 7 lies outside an epoch; a batch 0 to 6, the batches of 50 in an "
                             "epoch of 300 images"),
    (dict(epoch=0, batch=-1), "its batch -1 lies outside an epoch"),
    (dict(epoch=0, batch=2, sums={"loss": "1.5"}, images={"loss": 100}), "its sums['loss'] is '1.5', not a number"),
    (dict(epoch=0, batch=2, sums={"loss": 1.5, "elbo": -1.5}, images={"loss": 100}),
     "its images {'loss': 100} are not a count of at least 1 for each statistic of its sums, ['elbo', 'loss']"),
    (dict(epoch=0, batch=2, sums={"loss": 1.5}, images={"loss": 0}), "its images {'loss': 0}"),
])
def test_a_checkpoint_position_outside_its_run_is_named_and_left_as_it_is(tmp_path, position, named):
    """Training never saves a position its run does not pass through. Resumed, an epoch past the
    run's trained nothing and a batch past an epoch's skipped it, without a word; a negative one
    failed in the loader, or repeated steps."""
    data = small_data()
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    arrays, meta = checkpoint.load(tmp_path / "run" / CHECKPOINT)
    meta.update(position)
    checkpoint.save(tmp_path / "run" / CHECKPOINT, arrays, meta)
    before = files(tmp_path / "run")
    with pytest.raises(checkpoint.CheckpointError) as exc:
        Trainer(config(tmp_path, epochs=2), data=data, **QUIET).fit(resume=True)
    message = one_line(exc)
    assert f"checkpoint {tmp_path / 'run' / CHECKPOINT} is damaged: {named}" in message
    assert files(tmp_path / "run") == before


@pytest.mark.parametrize("position, named", [
    (dict(epoch=-1, batch=0), "its epoch -1 lies outside its run of 2 epochs; an epoch from 0 to 2"),
    (dict(epoch=3, batch=0), "its epoch 3 lies outside its run of 2 epochs"),
    (dict(epoch=0, batch=-4), "its batch -4 lies outside an epoch; a batch at least 0 would be valid"),
    (dict(epoch=2, batch=1), "its batch 1 follows the last of its run's 2 epochs"),
])
def test_the_position_a_score_records_is_one_its_run_passes_through(tmp_path, position, named):
    """``eval`` and ``cluster`` record the checkpoint's position with their scores: one outside
    its run (a negative epoch or batch, say) was recorded as it was, as if the model had been
    trained that far."""
    path = tmp_path / "run" / CHECKPOINT
    with pytest.raises(checkpoint.CheckpointError, match=f"^checkpoint {re.escape(str(path))} is damaged: {named}"):
        runs.checkpoint_position(position, path, config(tmp_path))
    assert runs.checkpoint_position(dict(epoch=1, batch=3), path, config(tmp_path)) == {"epochs": 1, "batch": 3}


def test_a_resume_on_training_data_of_another_size_is_refused_and_changes_nothing(tmp_path):
    """The checkpoint's position counts batches of the images it was trained on: on another
    number of images it would name other batches, so the resume is refused."""
    trainer = Trainer(config(tmp_path, epochs=2), data=small_data(n_train=300), **QUIET)
    _interrupt_after(trainer, 4)  # inside epoch 1 of 6 batches
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    before = files(tmp_path / "run")
    with pytest.raises(runs.ResumeMismatchError) as exc:
        Trainer(config(tmp_path, epochs=2), data=small_data(n_train=100), **QUIET).fit(resume=True)
    assert "trained on 300 training images, and data.x_train holds 100" in one_line(exc)
    assert files(tmp_path / "run") == before


def test_a_checkpoint_saved_before_the_data_size_was_recorded_still_resumes(tmp_path):
    data = small_data()
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    arrays, meta = checkpoint.load(tmp_path / "run" / CHECKPOINT)
    del meta["n_train"]
    checkpoint.save(tmp_path / "run" / CHECKPOINT, arrays, meta)
    Trainer(config(tmp_path, epochs=2), data=data, **QUIET).fit(resume=True)
    assert checkpoint.load(tmp_path / "run" / CHECKPOINT)[1]["n_train"] == 300


@pytest.mark.parametrize("n_train, batch_size, what", [(101, 50, "the last batch of the 101 training images"),
                                                       (100, 1, "every batch of the 100 training images")])
def test_a_batch_of_one_image_for_batch_normalization_is_found_before_anything_is_written(tmp_path, n_train,
                                                                                         batch_size, what):
    from minivae.train import DataMismatchError

    with pytest.raises(DataMismatchError) as exc:
        train(config(tmp_path, model="ladder", hidden=(8, 8), batch_size=batch_size), data=small_data(n_train=n_train),
              **QUIET)
    assert what in one_line(exc)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["train", "valid"])
def test_images_of_another_width_are_found_before_anything_is_written(tmp_path, split):
    from minivae.train import DataMismatchError

    data = small_data()
    setattr(data, f"x_{split}", getattr(data, f"x_{split}")[:, :100])
    with pytest.raises(DataMismatchError) as exc:
        train(config(tmp_path), data=data, **QUIET)
    assert f"data.x_{split} has shape ({len(getattr(data, f'x_{split}'))}, 100)" in one_line(exc)
    assert "rows of 784 pixels" in str(exc.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["train", "valid"])
def test_a_split_without_images_is_found_before_anything_is_written(tmp_path, split):
    """An empty validation set would fail only when it is scored, after the first epoch."""
    data = small_data()
    setattr(data, f"x_{split}", getattr(data, f"x_{split}")[:0])
    with pytest.raises(DataMismatchError) as exc:
        train(config(tmp_path, lr_schedule="constant"), data=data, **QUIET)
    assert one_line(exc) == f"data.x_{split} has shape (0, 784), no image: give at least one"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split, n_labels", [("train", 250), ("train", 350), ("valid", 50)])
def test_labels_that_do_not_match_the_images_are_found_before_anything_is_written(tmp_path, split, n_labels):
    """Too few training labels used to read as too few images of a class, and validation labels
    failed after the first epoch."""
    data = small_data()
    setattr(data, f"y_{split}", np.resize(getattr(data, f"y_{split}"), n_labels))
    with pytest.raises(DataMismatchError) as exc:
        train(config(tmp_path, model="m2", n_labelled=20), data=data, **QUIET)
    n_images = len(getattr(data, f"x_{split}"))
    assert one_line(exc) == (f"data.y_{split} holds {n_labels} labels for the {n_images} images of "
                             f"data.x_{split}: give one label per image")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("labels, says", [
    (lambda y: y + 10, "labels must be integers in [0, 10), got values from {lo} to {hi}"),
    (lambda y: y.astype(np.float32), "labels must be integers, got an array of dtype float32"),
    (lambda y: y[:, None], "labels must be a 1-D array, got shape ({n}, 1)"),
])
def test_validation_labels_that_cannot_be_scored_are_found_before_anything_is_written(tmp_path, labels, says):
    """The validation error is scored after every epoch: labels outside the classes, floats or a
    column were refused there, after the first epoch's training."""
    data = small_data()
    data.y_valid = labels(np.asarray(data.y_valid))
    with pytest.raises(DataMismatchError) as exc:
        train(config(tmp_path, model="m2", n_labelled=20), data=data, **QUIET)
    y = data.y_valid
    said = says.format(lo=y.min(), hi=y.max(), n=len(y))
    assert one_line(exc) == f"data.y_valid cannot be scored: {said}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("labels, says", [
    (lambda y: y.astype(np.float32), "labels must be integers, got an array of dtype float32"),
    (lambda y: y % 2 == 1, "labels must be integers, got an array of dtype bool"),
    (lambda y: y[:, None], "labels must be a 1-D array, got shape ({n}, 1)"),
])
def test_training_labels_that_cannot_be_one_hot_are_found_before_anything_is_written(tmp_path, labels, says):
    """A semi-supervised model one-hots its training labels at every step: booleans were refused
    there, at the first step, once the run folder was written; floats were refused by the
    labelled subset's own TypeError, and a column was blamed on --n-labelled."""
    data = small_data()
    data.y_train = labels(np.asarray(data.y_train))
    with pytest.raises(DataMismatchError) as exc:
        train(config(tmp_path, model="m2", n_labelled=20), data=data, **QUIET)
    assert one_line(exc) == f"data.y_train cannot be used: {says.format(n=len(data.y_train))}"
    assert not (tmp_path / "run").exists()


# ----- kill -9 at random times ------------------------------------------------------------------

EPOCHS, MIN_KILLS = 6, 2
_CHILD = f"""
EPOCHS = {EPOCHS}
import sys
from pathlib import Path
from minivae.runs import CHECKPOINT, TrainConfig
from minivae.train import train
from test_train import small_data

out = Path(sys.argv[1])
resume = (out / CHECKPOINT).exists()
config = TrainConfig(epochs=EPOCHS, batch_size=50, hidden=(32,), z_dim=4, eval_k=2, warmup=2, trace_every=5,
                     out=str(out))
train(config, resume=resume, overwrite=not resume, data=small_data(n_train=600), progress=False,
      log=lambda m: None)
"""


@pytest.mark.slow
def test_kill_9_at_random_times_always_resumes_to_the_same_bits(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH", "")]))

    def run(out, kill_after=None):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], env=env)
        if kill_after is None:
            return child.wait(timeout=120)
        try:
            return child.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait()
            return None

    start = time.monotonic()
    assert run(tmp_path / "ref") == 0
    whole = time.monotonic() - start  # start-up and training: kills land anywhere in a run
    rng = np.random.default_rng(0)
    out = tmp_path / "killed"
    for _ in range(5):  # a machine faster than the first run may finish before enough kills
        shutil.rmtree(out, ignore_errors=True)
        kills, stalls, last = 0, 0, None
        # A kill lands anywhere in a run; a run that made no progress (killed before its next
        # checkpoint, as under a heavy machine load) gets a longer time before the next kill.
        while (code := run(out, kill_after=float(rng.uniform(0.2, 0.9) * whole * (1 + stalls)))) is None:
            kills += 1
            saved = (out / CHECKPOINT).read_bytes() if (out / CHECKPOINT).exists() else None
            stalls, last = (stalls + 1 if saved == last else 0), saved
            assert kills < 40, "the killed run makes no progress"
        assert code == 0
        if kills >= MIN_KILLS:
            break
        whole /= 2
    assert kills >= MIN_KILLS
    ref, _ = checkpoint.load(tmp_path / "ref" / CHECKPOINT)
    got, meta = checkpoint.load(out / CHECKPOINT)
    assert meta["epoch"] == EPOCHS and sorted(got) == sorted(ref)
    for name, value in ref.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    lines = runs.read_metrics(out)
    assert [m["epoch"] for m in lines if "valid_elbo" in m] == list(range(1, EPOCHS + 1))
    assert [m["step"] for m in lines if "step" in m] == list(range(0, 12 * EPOCHS, 5))
    assert json.loads((out / RESULTS).read_text()) == json.loads((tmp_path / "ref" / RESULTS).read_text())
    assert not list(out.glob("*.tmp"))


def test_a_run_folder_moved_to_another_place_resumes_in_a_new_process_to_the_same_bits(tmp_path):
    """A long run may be trained in pieces on several machines: the run folder, interrupted here
    and moved to another path (the old one gone), is resumed by a fresh Python process there and
    ends with the bits of a run that was never interrupted."""
    from minivae.runs import TrainConfig

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    child = [sys.executable, "-c", _CHILD]
    assert subprocess.run(child + [str(tmp_path / "ref")], env=env, timeout=120).returncode == 0
    first = tmp_path / "machine1" / "run"
    config = TrainConfig(epochs=EPOCHS, batch_size=50, hidden=(32,), z_dim=4, eval_k=2, warmup=2, trace_every=5,
                         out=str(first))
    trainer = Trainer(config, data=small_data(n_train=600), **QUIET)
    _interrupt_after(trainer, 17)  # in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    second = tmp_path / "machine2" / "elsewhere"
    shutil.copytree(first, second)
    shutil.rmtree(tmp_path / "machine1")
    assert subprocess.run(child + [str(second)], env=env, timeout=120, cwd=tmp_path).returncode == 0
    ref, _ = checkpoint.load(tmp_path / "ref" / CHECKPOINT)
    got, meta = checkpoint.load(second / CHECKPOINT)
    assert meta["epoch"] == EPOCHS and sorted(got) == sorted(ref)
    for name, value in ref.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
