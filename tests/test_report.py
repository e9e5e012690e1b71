"""The README's results rows are generated from each run's recorded config, so that each row's
command trains that very run with today's defaults."""
import dataclasses
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from minivae.cli import _config_from_args, build_parser
from minivae.runs import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402

RUNS = sorted(RESULTS.glob("mnist_*.json")) + sorted(RESULTS.glob("run_*.json"))


def config_of(command):
    """The TrainConfig that ``minivae train ...`` (after any VAR=value prefix) would train with."""
    words = shlex.split(command.split(" && ")[0])
    words = words[words.index("minivae") + 1:]
    args = build_parser().parse_args(words)
    return dataclasses.asdict(_config_from_args(args, args.out or TrainConfig().out, TrainConfig()))


@pytest.mark.parametrize("path", RUNS, ids=[p.stem for p in RUNS])
def test_row_command_trains_the_recorded_config(path):
    recorded = json.loads(path.read_text())["config"]
    parsed = config_of(report.train_command(recorded))
    for key, value in recorded.items():
        if key == "out":
            assert Path(parsed[key]).name == Path(value).name
        elif key == "model_options" and "m1" in value:
            assert Path(parsed[key].pop("m1")).name == Path(value["m1"]).name
            assert parsed[key] == {k: v for k, v in value.items() if k != "m1"}
        else:
            assert parsed[key] == (tuple(value) if isinstance(value, list) and key == "hidden" else value), key


def test_warmup_zero_rows_say_so():
    """A run trained without warm-up (today's default is 10 epochs) shows --warmup 0."""
    row = next(line for line in report.models_table().splitlines() if "`minivae train --warmup 0" in line)
    assert "vae, KL warm-up 0 epochs" in row


def test_a_separate_evaluation_is_part_of_the_command():
    c = json.loads((RESULTS / "mnist_vae_150ep_amd-epyc-2c.json").read_text())
    assert report._row_command(c, 5000).endswith(" && minivae eval runs/A --k 5000")
    assert " && " not in report._row_command(c, 0)


def test_command_cells_hold_only_commands():
    """Notes go outside the backticks, so every command cell can be pasted as it is."""
    for line in report.models_table().splitlines()[2:]:
        command = line.split("`")[1]
        assert "(" not in command and ")" not in command, command


def test_readme_has_the_generated_model_table():
    assert report.models_table() in (ROOT / "README.md").read_text(), \
        "README.md's results are stale: run `python benchmarks/report.py --readme`"


def _comparable(config, keys):
    """``config`` restricted to ``keys``, with lists as tuples and M1 run folders by name."""
    out = {}
    for key in keys:
        value = config[key]
        if key == "model_options":
            value = {k: Path(v).name if k == "m1" else v for k, v in value.items()}
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def test_results_doc_commands_train_recorded_runs():
    """Each command in docs/results.md's tables (written after `minivae train`) gives the config of
    one recorded run (a run_*.json, or the clusters_*.json of a run clustered), apart from where
    it ran and its final evaluation."""
    recorded = [json.loads(p.read_text())["config"] for p in RUNS + sorted(RESULTS.glob("clusters_*.json"))]
    text = (ROOT / "docs" / "results.md").read_text()
    spans = [s for line in text.splitlines() if line.startswith("|")
             for s in re.findall(r"`([^`]*)`", line) if s.startswith(("--", "minivae train"))]
    assert len(spans) >= 15
    for span in spans:
        parsed = config_of("minivae train " + span.replace("minivae train", ""))
        matches = [c for c in recorded
                   if _comparable(parsed, set(c) - {"out", "eval_k"}) == _comparable(c, set(c) - {"out", "eval_k"})]
        assert matches, f"docs/results.md: `{span}` trains none of the recorded runs"


def test_rows_of_a_partial_evaluation_say_how_many_images():
    """A row scored on part of the test set gives ``--n`` in its eval command, so that pasting it
    scores the same images; a row of all of them gives none."""
    for path in RUNS:
        r = json.loads(path.read_text())
        row = report._model_row(path)
        n = r.get("results", r).get("n_test", 10000)
        assert (f" --n {n}`" in row) == (n < 10000), path.name
    assert any(json.loads(p.read_text()).get("results", {}).get("n_test", 10000) < 10000 for p in RUNS)


def test_rows_give_the_effective_sample_size_when_it_was_recorded():
    path = RESULTS / "run_vae16_16ep_first1000_amd-epyc-2c.json"
    res = json.loads(path.read_text())["results"]
    assert (f"effective sample size median {res['ess_median']:.0f}, min {res['ess_min']:.1f}"
            in report._model_row(path))
    assert "effective sample size" not in report._model_row(RESULTS / "run_ladder5_16ep_amd-epyc-2c.json")


def _run_folder(tmp_path, results):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "vae", "epochs": 2}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "valid_elbo": -100.0, "seconds": 2.0 + e})
                                               + "\n" for e in (1, 2)))
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.mark.parametrize("eval_has_ess", [True, False])
def test_record_run_takes_the_evaluation_s_scores(tmp_path, monkeypatch, eval_has_ess):
    """``--eval`` replaces the training's own test scores, its effective sample sizes too (they
    were of another k): with the evaluation's where it gives them, else with none."""
    import record_run

    run = _run_folder(tmp_path, {"test_elbo": -99.0, "test_rec": -70.0, "test_kl": 29.0, "test_nll": 95.0,
                                 "eval_k": 100, "n_test": 10000, "ess_median": 40.0, "ess_min": 2.0})
    ev = {"n_test": 1000, "k": 5000, "test_elbo": -98.0, "test_nll": 94.0, "test_nll_stderr": 0.5}
    if eval_has_ess:
        ev.update(ess_median=15.0, ess_min=1.5)
    (run / "eval.json").write_text(json.dumps(ev))
    written = {}
    monkeypatch.setattr(record_run, "write_result", lambda name, payload, out=None: written.update(payload) or name)
    record_run.main([str(run), "--name", "x", "--command", "minivae train --epochs 2",
                     "--eval", str(run / "eval.json"), "--eval-command", "minivae eval run --k 5000 --n 1000"])
    expected = {"test_elbo": -98.0, "test_nll": 94.0, "test_nll_stderr": 0.5, "eval_k": 5000, "n_test": 1000}
    if eval_has_ess:
        expected.update(ess_median=15.0, ess_min=1.5)
    assert written["results"] == expected
    assert (written["epochs"], written["train_seconds_all_epochs"], written["seconds_per_epoch_median"]) == (2, 7.0, 3.5)


def test_a_gpu_recipe_cut_short_is_recorded_with_its_epochs_and_gpu(tmp_path, monkeypatch):
    """benchmarks/gpu_check.sh records its recipe on the GPU machine into its own folder, even when
    it stopped before the final evaluation: the row says so, and names the GPU."""
    import record_run

    run = tmp_path / "recipe_gpu_150ep"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "vae", "epochs": 150, "warmup": 10, "device": "gpu",
                                                  "data_rng": "philox", "out": str(run)}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "valid_elbo": -100.0, "seconds": 0.25})
                                               + "\n" for e in (1, 2)))
    monkeypatch.setattr(record_run, "gpu_info", lambda: {"name": "NVIDIA H200", "cupy": "14.2.0"})
    args = [str(run), "--command", "minivae train --device gpu --epochs 150 (stopped at its time limit)",
            "--out", str(tmp_path / "out"), "--wall-seconds", "130"]
    with pytest.raises(SystemExit):  # a run without results.json is recorded only when asked to
        record_run.main(args)
    record_run.main(args + ["--allow-unfinished"])
    path = tmp_path / "out" / "run_recipe_gpu_150ep_nvidia-h200.json"
    r = json.loads(path.read_text())
    assert (r["finished"], r["device"], r["gpu"]["name"], r["epochs"]) == (False, "gpu", "NVIDIA H200", 2)
    assert [m["epoch"] for m in r["epoch_metrics"]] == [1, 2] and r["train_seconds_all_epochs"] == 0.5
    assert {"date", "command", "machine", "versions"} <= set(r) and "git_commit" in r["versions"]
    row = report._model_row(path)
    assert "| 0 s on NVIDIA H200 (0.25 s median epoch; the whole command 130 s; stopped at its time limit) |" in row
    assert "not evaluated: stopped after 2 of 150 epochs" in row


def test_record_clusters_keeps_every_score_with_the_command_that_writes_it(tmp_path, monkeypatch):
    import record_clusters

    run = _run_folder(tmp_path, {"test_elbo": -99.0})
    for c in (10, 20):
        (run / f"clusters_{c}.json").write_text(json.dumps(
            {"run": "/elsewhere/run", "encoded_gaussian": "q(z | x)", "n": 10000, "n_clusters": c,
             "seed": 0, "accuracy": 0.5, "nmi": 0.4, "ari": 0.3}))
    written = {}
    monkeypatch.setattr(record_clusters, "write_result", lambda name, payload, out=None: written.update(payload) or name)
    record_clusters.main([str(run), "--name", "x", "--command", "minivae train --epochs 2"])
    assert written["run_command"] == "minivae train --epochs 2" and written["results"] == {"test_elbo": -99.0}
    assert [s["cluster_command"] for s in written["clusters"]] == [
        f"minivae cluster run --clusters {c} --n 10000 --seed 0" for c in (10, 20)]
    assert all("run" not in s and s["accuracy"] == 0.5 for s in written["clusters"])
    assert "git_commit" in written["versions"] and "sklearn" in written["versions"]
    (run / "clusters_10.json").unlink()
    (run / "clusters_20.json").unlink()
    with pytest.raises(SystemExit):  # nothing to record
        record_clusters.main([str(run), "--command", "minivae train --epochs 2"])


@pytest.mark.parametrize("missing", ["None", "absent"])
def test_a_kernel_result_without_a_peak_bandwidth_is_rendered(tmp_path, missing):
    """bench_kernels records a peak of None where neither the device nor a datasheet gives one
    (and older results may lack the field): the section said ``peak {None:.0f}`` and crashed."""
    path = max(RESULTS.glob("kernels_*.json"))
    r = json.loads(path.read_text())
    if missing == "None":
        r["device"].update(peak_bandwidth_gbps=None, peak_bandwidth_source=None)
    else:
        del r["device"]["peak_bandwidth_gbps"], r["device"]["peak_bandwidth_source"]
    for row in r["results"]:
        row.pop("share_of_peak", None)
    r["summary"].pop("fused_share_of_peak_from_1e7", None)
    copy = tmp_path / path.name
    copy.write_text(json.dumps(r))
    text = report.kernels_section(copy)
    assert f"{r['device']['name']} (peak bandwidth unknown; a device-to-device copy measured" in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ x \d+ \|", line)]
    assert rows and all(re.search(r"\| \d+ \|$", line) for line in rows)  # fused GB/s, no share of peak
