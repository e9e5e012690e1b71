"""benchmarks/gpu_check.sh's steps, each shell function run alone by bash with a stand-in for
Python that prints what the real program would: a step whose GPU part cannot run must fail, not
pass with nothing measured."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"

if shutil.which("bash") is None:
    pytest.skip("bash is not installed", allow_module_level=True)


def shell_function(name):
    """The definition of the shell function ``name`` in gpu_check.sh."""
    found = re.search(rf"^{name}\(\) {{\n.*?^}}\n", SCRIPT.read_text(), re.S | re.M)
    assert found, f"gpu_check.sh defines no {name}()"
    return found.group(0)


def run_pytest_step(tmp_path, report, rc):
    """gpu_check.sh's pytest_gpu with a Python whose pytest prints ``report`` and exits with ``rc``
    (and which has no pytest-timeout); returns bash's completed process."""
    (tmp_path / "report.txt").write_text(report)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\n[ "$1" = -c ] && exit 1\ncat "{tmp_path}/report.txt"\nexit {rc}\n')
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), SCRATCH=str(tmp_path))
    return subprocess.run(["bash", "-c", shell_function("pytest_gpu") + "pytest_gpu"], env=env,
                          capture_output=True, text=True, timeout=60)


PASSED = "tests/test_gpu.py::test_adam PASSED\n===== 129 passed, 1147 deselected in 24.64s =====\n"
SKIPPED = ("tests/test_nn.py::test_batchnorm_gpu SKIPPED (needs CuPy and a CUDA device)\n"
           "=========================== short test summary info ============================\n"
           "SKIPPED [1] tests/test_gpu.py:22: CuPy is not installed (pip install 'minivae[gpu]')\n"
           "SKIPPED [1] tests/test_nn.py:363: needs CuPy and a CUDA device\n"
           "===== 2 skipped, 2824 deselected in 4.24s =====\n")


def test_the_pytest_step_passes_when_every_gpu_test_ran(tmp_path):
    proc = run_pytest_step(tmp_path, PASSED, 0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "pytest.log").read_text() == PASSED  # the report, for the summary


def test_the_pytest_step_fails_when_gpu_tests_were_skipped(tmp_path):
    """pytest exits with 0 when every selected test skips, as the GPU tests do where CuPy or the
    device cannot be used: the step fails instead, and says so."""
    proc = run_pytest_step(tmp_path, SKIPPED, 0)
    assert proc.returncode == 1
    assert "GPU tests were skipped" in proc.stdout


def test_the_pytest_step_keeps_pytest_s_exit_status(tmp_path):
    assert run_pytest_step(tmp_path, "===== 1 failed, 128 passed =====\n", 1).returncode == 1


def run_train_step(tmp_path, budget):
    """gpu_check.sh's train_gpu with a step budget of ``budget`` seconds and a Python that only
    writes down its arguments, a line per call; returns (bash's completed process, the calls)."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls.txt"\n')
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), SCRATCH=str(tmp_path), OUT=str(tmp_path), STEP_BUDGET=str(budget),
               SUMMARY=str(tmp_path / "summary.txt"), TRAIN_DEVICE="cpu", TRAIN_EPOCHS="1", TRAIN_EVAL_K="10")
    proc = subprocess.run(["bash", "-c", shell_function("train_gpu") + "train_gpu"], env=env,
                          capture_output=True, text=True, timeout=60)
    calls = tmp_path / "calls.txt"
    return proc, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("budget", [20, 29])
def test_the_train_step_is_not_started_without_time_for_it(tmp_path, budget):
    """A budget of 20 s (the least a step is given) left python `timeout 0`, which is no time
    limit at all: the recipe of 150 epochs would have run past every budget."""
    proc, calls = run_train_step(tmp_path, budget)
    assert proc.returncode == 1 and calls == [], proc.stdout + proc.stderr
    assert f"SKIP  train: a budget of {budget}s leaves python {budget - 20}s" in \
        (tmp_path / "summary.txt").read_text()


def test_the_train_step_runs_and_records_with_time_for_it(tmp_path):
    proc, calls = run_train_step(tmp_path, 30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls[0].startswith("-m minivae train --device cpu --epochs 1") and "record_run.py" in calls[1]


def test_a_recipe_whose_step_cannot_be_captured_is_stopped_recorded_with_the_reason_and_fails(tmp_path):
    """The trainer notes that graph mode is off (150 eager epochs would run past every budget): the
    run is stopped at once, recorded with the reason in its command's note, and the step fails."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls.txt"\n'
                      '[ "$1 $2 $3" = "-m minivae train" ] && {\n'
                      '  echo "note: the vae step cannot be captured as a CUDA graph"; exec sleep 30; }\nexit 0\n')
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), SCRATCH=str(tmp_path), OUT=str(tmp_path), STEP_BUDGET="60",
               SUMMARY=str(tmp_path / "summary.txt"), TRAIN_DEVICE="gpu", TRAIN_EPOCHS="150", TRAIN_EVAL_K="5000")
    proc = subprocess.run(["bash", "-c", shell_function("train_gpu") + "train_gpu"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert "record_run.py" in calls[1] and calls[1].endswith(
        "--out recipe_gpu_150ep (stopped: graph mode was off, the step could not be captured)")
    assert "train: stopped, graph mode is off" in (tmp_path / "summary.txt").read_text()


def test_a_step_gets_what_is_left_after_the_recipe_s_reserve(tmp_path):
    """seconds_left keeps RESERVED (the recipe's 150 s) and 5 s back; a step's budget is cut to it."""
    script = (shell_function("seconds_left") + shell_function("run_step")
              + 'TOTAL_SECONDS=200 RESERVED=150 SECONDS=0\nseconds_left\n'
              + 'run_step probe 100 bash -c \'echo "budget $STEP_BUDGET"\'\n')
    proc = subprocess.run(["bash", "-c", script], env=dict(os.environ, SUMMARY=str(tmp_path / "summary.txt")),
                          capture_output=True, text=True, timeout=60)
    lines = proc.stdout.split()
    assert lines[0] == "45" and "budget 45" in proc.stdout, proc.stdout + proc.stderr
    assert (tmp_path / "summary.txt").read_text().startswith("PASS  probe")


def run_steps(tmp_path, lines, **env):
    """gpu_check.sh's step functions, then the shell ``lines`` (TOTAL_SECONDS 200, none kept for
    the recipe) in ``tmp_path``; returns (bash's completed process, summary.txt). ``status`` is
    echoed last."""
    summary = tmp_path / "summary.txt"
    script = (shell_function("seconds_left") + shell_function("run_step") + shell_function("run_mnist_step")
              + "TOTAL_SECONDS=200 RESERVED=0 SECONDS=0 status=0\n" + lines + '\necho "status $status"\n')
    proc = subprocess.run(["bash", "-c", script], env=dict(os.environ, SUMMARY=str(summary), **env),
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    return proc, summary.read_text() if summary.exists() else ""


@pytest.mark.parametrize("command, budget", [("sleep 30", 1), ("bash -c 'kill -KILL $$'", 30)],
                         ids=["out of time: 124", "killed: 137"])
def test_a_step_out_of_time_fails_saying_so_and_fails_the_script(tmp_path, command, budget):
    """timeout exits with 124 when a step's budget runs out, and with 137 when the step ignored
    the TERM and was killed 10 s later (a step that kills itself stands for it here): either is
    one FAIL line naming the budget, and the script's exit status is 1."""
    proc, summary = run_steps(tmp_path, f"run_step probe {budget} {command}")
    assert re.fullmatch(rf"FAIL  probe: timed out after \d+s \(budget {budget}s\)\n", summary), proc.stdout
    assert proc.stdout.endswith("status 1\n")


def test_a_failing_step_names_its_exit_status_and_fails_the_script(tmp_path):
    proc, summary = run_steps(tmp_path, "run_step probe 30 bash -c 'exit 3'")
    assert re.fullmatch(r"FAIL  probe: exit status 3 after \d+s\n", summary), proc.stdout
    assert proc.stdout.endswith("status 1\n")


def test_a_step_without_time_or_mnist_is_skipped_and_fails_the_script(tmp_path):
    """Under 20 s left (here 15: TOTAL_SECONDS 200 less 180 s gone and 5 s kept), a step is not
    run; without the MNIST cache neither is one that trains on it. Each says so in a SKIP line and
    the script's exit status is 1: a run that measured nothing must not pass."""
    for lines, want in [("SECONDS=180\nrun_step probe 30 touch ran", "SKIP  probe: only 15s of TOTAL_SECONDS=200 left"),
                        ("HAVE_MNIST=\nrun_mnist_step probe 30 touch ran", "SKIP  probe: no MNIST cache at")]:
        proc, summary = run_steps(tmp_path, lines, MNIST="/no/mnist.npz")
        assert summary.startswith(want) and proc.stdout.endswith("status 1\n"), proc.stdout + proc.stderr
        assert not (tmp_path / "ran").exists()
        (tmp_path / "summary.txt").unlink()


@pytest.mark.parametrize("results, warned", [(5, False), (6, True)])
def test_more_files_than_a_lent_machine_brings_back_are_warned_about(tmp_path, results, warned):
    """$OUT holds gpu_check.log, summary.txt and the results: 7 files pass, an 8th is warned about."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ["gpu_check.log", "summary.txt"] + [f"result_{i}.json" for i in range(results)]:
        (out / name).write_text("")
    env = dict(os.environ, OUT=str(out), SUMMARY=str(out / "summary.txt"))
    proc = subprocess.run(["bash", "-c", shell_function("count_files") + "count_files"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    warning = f"WARNING: 8 files in {out}, more than 7: a lent machine brings back 8 at most\n"
    assert (out / "summary.txt").read_text() == (warning if warned else "")


@pytest.mark.parametrize("exit_code", [124, 137])
def test_a_recipe_stopped_at_its_time_limit_is_recorded_saying_so(tmp_path, exit_code):
    """python's own timeout exits with 124 (TERM) or 137 (KILL 5 s later): the run is recorded
    with that reason in its command's note, and the step fails with the status."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls.txt"\n'
                      f'[ "$1 $2 $3" = "-m minivae train" ] && exit {exit_code}\nexit 0\n')
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), SCRATCH=str(tmp_path), OUT=str(tmp_path), STEP_BUDGET="30",
               SUMMARY=str(tmp_path / "summary.txt"), TRAIN_DEVICE="gpu", TRAIN_EPOCHS="150", TRAIN_EVAL_K="5000")
    proc = subprocess.run(["bash", "-c", shell_function("train_gpu") + "train_gpu"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[1].endswith("--out recipe_gpu_150ep (stopped at its time limit of 10 s)")
