"""The README's results rows are generated from each run's recorded config, so that each row's
command trains that very run with today's defaults."""
import dataclasses
import json
import os
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


@pytest.mark.parametrize("settings", [dict(keep_best=True, patience=5), dict(eager=True, device="gpu"),
                                      dict(lr_schedule="stages", adam_eps=1e-4, batch_size=20, epochs=3280)])
def test_the_command_of_a_config_trains_that_config(settings):
    """Switches are given as flags (a `--keep-best True` was refused by the command line)."""
    config = dataclasses.asdict(TrainConfig(out="runs/x", **settings))
    assert config_of(report.train_command(config)) == dict(config, hidden=tuple(config["hidden"]))


def test_the_command_of_a_run_built_on_another_leaves_out_its_record_of_that_run():
    """M1+M2's config records the model of its M1 run (run_models), which no option takes: a new
    run records its own from --set m1=RUN. (It was given as '--run-models {...}', refused.)"""
    config = dataclasses.asdict(TrainConfig(model="m1m2", out="/elsewhere/runs/x",
                                            model_options={"m1": "/elsewhere/runs/m1"},
                                            run_models={"m1": {"model": "vae", "kwargs": {"z_dim": 50}}}))
    command = report.train_command(config)
    assert command == "minivae train --model m1m2 --set m1=runs/m1 --out runs/x"
    assert config_of(command) == dict(config, hidden=tuple(config["hidden"]), out="runs/x",
                                      model_options={"m1": "runs/m1"}, run_models={})


def test_warmup_zero_rows_say_so():
    """A run trained without warm-up (today's default is 10 epochs) shows --warmup 0."""
    row = next(line for line in report.models_table().splitlines() if "`minivae train --warmup 0" in line)
    assert "vae, KL warm-up 0 epochs" in row


def test_a_warmup_by_steps_or_from_a_start_of_its_own_says_so(tmp_path):
    """The planar-flows paper's warm-up is 10000 steps from 0.01, not 10000 epochs; a run of the
    default warm-up reads as before."""
    assert ", KL warm-up 10000 steps from 0.01 |" in report._model_row(
        _run_result(tmp_path, "flow", model="flow", warmup=10000, warmup_unit="step", warmup_start=0.01))
    assert ", KL warm-up 200 epochs from 0 |" in report._model_row(
        _run_result(tmp_path, "ladder", model="ladder", warmup=200, warmup_start=0.0))
    assert "| vae, KL warm-up 10 epochs |" in report._model_row(_run_result(tmp_path, "vae"))


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
    monkeypatch.setattr(record_run, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    record_run.main([str(run), "--name", "x", "--command", "minivae train --epochs 2",
                     "--eval", str(run / "eval.json"), "--eval-command", "minivae eval run --k 5000 --n 1000"])
    expected = {"test_elbo": -98.0, "test_nll": 94.0, "test_nll_stderr": 0.5, "eval_k": 5000, "n_test": 1000}
    if eval_has_ess:
        expected.update(ess_median=15.0, ess_min=1.5)
    assert written["results"] == expected
    assert (written["epochs"], written["train_seconds_all_epochs"], written["seconds_per_epoch_median"]) == (2, 7.0, 3.5)


def test_record_run_takes_a_run_whose_last_metrics_line_was_cut_off(tmp_path, monkeypatch):
    """A run killed while writing its metrics leaves a last line without its end; the run is
    recorded with the epochs before it (before: a JSONDecodeError)."""
    import record_run

    run = _run_folder(tmp_path, {"test_elbo": -99.0})
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "valid_elbo": -9')
    written = {}
    monkeypatch.setattr(record_run, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    record_run.main([str(run), "--command", "minivae train --epochs 2"])
    assert written["epochs"] == 2 and [m["epoch"] for m in written["epoch_metrics"]] == [1, 2]


def test_record_run_counts_the_pieces_a_run_was_trained_in_and_its_seconds_by_device(tmp_path, monkeypatch):
    """A long run resumed in pieces, on another device: the pieces are those up to the one that
    finished the last epoch (epoch lines name theirs), the seconds summed per device; a run whose
    lines name neither (recorded before they did) gets None for both."""
    import record_run

    run = _run_folder(tmp_path, {"test_elbo": -99.0})
    lines = [{"epoch": 1, "valid_elbo": -100.0, "seconds": 30.0, "piece": 1, "device": "cpu"},
             {"epoch": 2, "valid_elbo": -100.0, "seconds": 2.0, "piece": 3, "device": "gpu"},
             {"epoch": 3, "valid_elbo": -100.0, "seconds": 1.5, "piece": 3, "device": "gpu"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    written = {}
    monkeypatch.setattr(record_run, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    record_run.main([str(run), "--command", "minivae train --epochs 3"])
    assert (written["pieces"], written["seconds_by_device"]) == (3, {"cpu": 30.0, "gpu": 3.5})
    # Lines that name their GPU: the seconds of each kind of GPU apart (a line before they did: "gpu").
    named = [lines[0], dict(lines[1], gpu="NVIDIA H100"), dict(lines[2], gpu="NVIDIA H200"), dict(lines[2], epoch=4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in named))
    record_run.main([str(run), "--command", "minivae train --epochs 4"])
    assert written["seconds_by_device"] == {"cpu": 30.0, "NVIDIA H100": 2.0, "NVIDIA H200": 1.5, "gpu": 1.5}
    # Short epochs (a GPU's) are summed before the total is rounded, as the run's total is.
    short = [dict(line, epoch=e, seconds=0.12) for e, line in enumerate([lines[0]] * 150, 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in short))
    record_run.main([str(run), "--command", "minivae train --epochs 150"])
    assert written["seconds_by_device"] == {"cpu": written["train_seconds_all_epochs"]} == {"cpu": 18.0}
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in line.items() if k != "piece"}) + "\n"
                                               for line in lines))
    record_run.main([str(run), "--command", "minivae train --epochs 3"])
    assert (written["pieces"], written["seconds_by_device"]) == (None, None)


def test_record_run_refuses_the_evaluation_of_an_earlier_checkpoint(tmp_path, monkeypatch, capsys):
    """An evaluation written before the run was resumed for more epochs scored another model, and
    so did one of a checkpoint saved inside an epoch: refused, naming the position and the run's
    epochs; one that names none (written before evaluations did) is taken."""
    import record_run

    run = _run_folder(tmp_path, {"test_elbo": -99.0})
    written = {}
    monkeypatch.setattr(record_run, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    ev = {"n_test": 10000, "k": 5000, "test_elbo": -98.0, "test_nll": 94.0, "test_nll_stderr": 0.5}
    args = [str(run), "--command", "minivae train --epochs 2", "--eval", str(run / "eval.json"),
            "--eval-command", "minivae eval run --k 5000"]
    (run / "eval.json").write_text(json.dumps(dict(ev, epochs=1, batch=0)))
    with pytest.raises(SystemExit):
        record_run.main(args)
    assert "scored the run after 1 of its 2 epochs" in capsys.readouterr().err
    assert not written
    # A run stopped inside its third epoch: its checkpoint's model trained 50 batches past the
    # two epochs recorded.
    (run / "eval.json").write_text(json.dumps(dict(ev, epochs=2, batch=50)))
    with pytest.raises(SystemExit):
        record_run.main(args)
    assert "scored the run after 2 epochs and 50 batches of its 2 epochs" in capsys.readouterr().err
    assert not written
    for recorded in (dict(ev, epochs=2, batch=0), ev):
        (run / "eval.json").write_text(json.dumps(recorded))
        record_run.main(args)
        assert written["results"]["test_nll"] == 94.0


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
    assert r["command"] == "record_run.py " + " ".join(args + ["--allow-unfinished"])  # not pytest's argv
    row = report._model_row(path)
    assert "| 0 s on NVIDIA H200 (0.25 s median epoch; the whole command 130 s; stopped at its time limit) |" in row
    assert "not evaluated: stopped after 2 of 150 epochs" in row


def test_record_clusters_keeps_every_score_with_the_command_that_writes_it(tmp_path, monkeypatch):
    import record_clusters

    run = _run_folder(tmp_path, {"test_elbo": -99.0})
    for c in (100, 20, 10):
        (run / f"clusters_{c}.json").write_text(json.dumps(
            {"run": "/elsewhere/run", "encoded_gaussian": "q(z | x)", "n": 10000, "n_clusters": c,
             "seed": 0, "accuracy": 0.5, "nmi": 0.4, "ari": 0.3}))
    written = {}
    monkeypatch.setattr(record_clusters, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    record_clusters.main([str(run), "--name", "x", "--command", "minivae train --epochs 2"])
    assert written["run_command"] == "minivae train --epochs 2" and written["results"] == {"test_elbo": -99.0}
    assert [s["cluster_command"] for s in written["clusters"]] == [
        f"minivae cluster run --clusters {c} --n 10000 --seed 0" for c in (10, 20, 100)]
    assert all("run" not in s and s["accuracy"] == 0.5 for s in written["clusters"])
    assert "git_commit" in written["versions"] and "sklearn" in written["versions"]
    for c in (10, 20, 100):
        (run / f"clusters_{c}.json").unlink()
    with pytest.raises(SystemExit):  # nothing to record
        record_clusters.main([str(run), "--command", "minivae train --epochs 2"])


def test_record_clusters_refuses_the_clustering_of_an_earlier_checkpoint(tmp_path, monkeypatch, capsys):
    """A clustering written before the run was resumed for more epochs encoded with another
    model, and so did one of a checkpoint saved inside an epoch: refused, naming the position and
    the run's epochs; one that names the run's epochs is taken."""
    import record_clusters

    run = _run_folder(tmp_path, {"test_elbo": -99.0})
    written = {}
    monkeypatch.setattr(record_clusters, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    scores = {"n": 100, "n_clusters": 10, "seed": 0, "accuracy": 0.5, "nmi": 0.4, "ari": 0.3}
    (run / "clusters_10.json").write_text(json.dumps(dict(scores, epochs=1, batch=0)))
    with pytest.raises(SystemExit):
        record_clusters.main([str(run), "--command", "minivae train --epochs 2"])
    assert "clustered the run after 1 of its 2 epochs" in capsys.readouterr().err
    assert not written
    (run / "clusters_10.json").write_text(json.dumps(dict(scores, epochs=2, batch=50)))
    with pytest.raises(SystemExit):
        record_clusters.main([str(run), "--command", "minivae train --epochs 2"])
    assert "clustered the run after 2 epochs and 50 batches of its 2 epochs" in capsys.readouterr().err
    assert not written
    (run / "clusters_10.json").write_text(json.dumps(dict(scores, epochs=2, batch=0)))
    record_clusters.main([str(run), "--command", "minivae train --epochs 2"])
    assert written["clusters"][0]["epochs"] == 2


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


def test_the_generated_sections_of_both_readmes_are_today_s_tables():
    """Every table of benchmarks/README.md and the whole results section of README.md (not only
    its model table) are what report.py makes of the recorded results."""
    bench = (ROOT / "benchmarks" / "README.md").read_text()
    assert f"{report.BEGIN}\n\n{report.render()}\n{report.END}" in bench, \
        "benchmarks/README.md is stale: run `python benchmarks/report.py --write`"
    top = (ROOT / "README.md").read_text()
    assert f"{report.TOP_BEGIN}\n{report.summary()}{report.TOP_END}" in top, \
        "README.md's results are stale: run `python benchmarks/report.py --readme`"


def _step_result(**changes):
    """A bench_train_step result with made-up numbers: batch 100, minivae 10 ms, numpy 8 ms."""
    r = {"model": {"dtype": "float32", "parameters": 1234567},
         "steady_state": {"steps": 1000, "subnormal_exp_avg_fraction": 0.0984},
         "machine": {"cpu_model": "Made-up CPU", "cores": 2}, "threads": 1, "date": "2026-01-02T03:04:05+00:00",
         "command": "python benchmarks/bench_train_step.py", "load_average": {"before": [0.5, 0, 0], "after": [1.25, 0, 0]},
         "blas": [{"user_api": "blas", "internal_api": "openblas", "version": "0.3", "num_threads": 1}],
         "results": {"100": {
             "minivae": {"ms_per_step": 10.0, "ms_min": 9.0, "images_per_s": 10000.0, "time_ratio_to_minivae": 1.0,
                         "throughput_ratio_to_minivae": 1.0, "tracemalloc_peak_mib": 5.43, "rss_peak_rise_mib": 0.0,
                         "page_faults_per_step": 2.0, "eps_ms": 0.1314},
             "numpy": {"ms_per_step": 8.0, "ms_min": 7.0, "images_per_s": 12500.0, "time_ratio_to_minivae": 0.8,
                       "throughput_ratio_to_minivae": 1.25, "tracemalloc_peak_mib": 6.0, "rss_peak_rise_mib": 0.5,
                       "page_faults_per_step": 0.0, "eps_ms": 0.045}}},
         "targets": {"100": {"time_vs_numpy": {"value": 1.25, "target": "<= 1.1", "met": False}}}}
    r.update(changes)
    return r


def test_the_training_step_table_has_each_library_s_measured_numbers():
    text = report.train_step_tables(_step_result())
    assert ("Training step, float32, 1,234,567 parameters, steady state after 1000 Adam steps (9.8% of Adam's "
            "first moments subnormal). Made-up CPU (2 cores), 1 thread(s), 2026-01-02, load average 0.5 before "
            "/ 1.2 after; `python benchmarks/bench_train_step.py`. NumPy BLAS: openblas 0.3 (1 threads).") in text
    assert "| 100 | minivae | 10.00 | 10000 | 1.00 | 5.4 | 0.0 | 2 | 0.131 |" in text
    assert "| 100 | numpy | 8.00 | 12500 | 0.80 | 6.0 | 0.5 | 0 | 0.045 |" in text
    assert "| 100 | minivae time / NumPy reference time | <= 1.1 | 1.250 | **no** |" in text
    assert "cut short" not in text  # (results written before `finished` was recorded are whole runs)
    assert "cut short" in report.train_step_tables(_step_result(finished=False))
    dropped = report.train_step_tables(_step_result(errors={"torch": "batch 100, timing: RuntimeError('x')"}))
    assert ("Dropped from this run (the library failed; the others went on without it): torch: batch 100, "
            "timing: RuntimeError('x').") in dropped


def test_every_target_the_step_benchmark_computes_has_a_name_in_the_table():
    """The targets of a GPU run (graph mode and eager against PyTorch's) and of a CPU run are
    each shown by name, never by their JSON key."""
    from bench_train_step import targets

    row = {lib: {"ms_per_step": ms, "eps_ms": 0.01, "tracemalloc_peak_mib": 2.0}
           for lib, ms in [("minivae", 0.5), ("minivae-graph", 0.2), ("numpy", 0.6), ("torch", 1.0),
                           ("torch-graph", 0.4)]}
    computed = {**targets({"100": row}, device="gpu"), "1000": targets({"1000": row})["1000"]}
    keys = {key for per_batch in computed.values() for key in per_batch}
    assert {"graph_time_vs_torch_graph", "eager_time_vs_torch_eager", "time_vs_torch"} <= keys
    text = report.train_step_tables(_step_result(targets=computed))
    rows = [line for line in text.splitlines() if line.startswith(("| 100 |", "| 1000 |")) and "minivae" in line]
    assert not [key for key in keys if key in text], text
    assert "| 100 | minivae graph-mode time / PyTorch CUDA-graph time | <= 0.5 | 0.500 | yes |" in rows
    assert "| 100 | minivae eager time / PyTorch eager time | <= 0.6 | 0.500 | yes |" in rows


def test_the_readme_summary_takes_each_step_row_from_its_own_run(tmp_path):
    (tmp_path / "train_step_a_t1.json").write_text(json.dumps(_step_result()))
    gpu = _step_result(device="gpu", gpu={"name": "Made-up GPU"})
    gpu["results"]["100"]["numpy"].update(ms_per_step=2.5, time_ratio_to_minivae=0.25)
    (tmp_path / "train_step_b_gpu.json").write_text(json.dumps(gpu))
    rows = [line for line in report.summary(tmp_path).splitlines() if line.startswith("| `train_step")]
    assert rows == ["| `train_step_a_t1` (CPU, 1 thread(s)) | 100 | 10.00 | - | 8.00 (0.80x minivae's time) | - | - |",
                    "| `train_step_b_gpu` (GPU: Made-up GPU) | 100 | 10.00 | - | 2.50 (0.25x minivae's time) | - | - |"]


def test_the_epoch_table_has_each_library_s_seconds_and_ratio():
    r = {"train_images": 50000, "batch": 100, "steps_per_epoch": 500, "prepare_batches_seconds_per_epoch": 0.456,
         "epochs": 2, "machine": {"cpu_model": "Made-up CPU", "cores": 2}, "threads": 2,
         "date": "2026-01-02T03:04:05+00:00", "command": "python benchmarks/bench_epoch.py",
         "results": {"minivae": {"seconds_per_epoch": 20.0, "images_per_s": 2500.0, "time_ratio_to_minivae": 1.0},
                     "torch": {"seconds_per_epoch": 25.0, "images_per_s": 2000.0, "time_ratio_to_minivae": 1.25}}}
    text = report.epoch_table(r)
    assert text.startswith("One MNIST epoch (50,000 images, batch 100, 500 steps; batch preparation 0.46 s")
    assert "| minivae | 20.00 | 2500 | 1.00 |\n| torch | 25.00 | 2000 | 1.25 |" in text


def test_the_engine_line_gives_minivae_s_and_pytorch_s_medians(tmp_path):
    (tmp_path / "engine_x.json").write_text(json.dumps({
        "machine": {"cpu_model": "Made-up CPU"}, "date": "2026-01-02T03:04:05+00:00", "command": "bench_engine.py",
        "summary": {"median_minivae_overhead_us": 12.34, "median_torch_overhead_us": 23.45,
                    "ops_where_minivae_overhead_below_torch": 7, "ops": 9}}))
    text = report.engine_table(tmp_path)
    assert "12.3 us for minivae vs 23.4 us for PyTorch; minivae lower on 7 of 9 ops." in text


def _kernel_result(date, command="bench_kernels.py"):
    return {"date": date, "command": command, "versions": {"cupy": "1"},
            "device": {"name": "Made-up GPU", "peak_bandwidth_gbps": 1000.0, "peak_bandwidth_source": "datasheet",
                       "measured_copy_gbps": 800.0},
            "results": [{"impl": "minivae-fused", "B": 100, "D": 50, "n": 5000, "us_fwd_bwd": 5.0, "gbps": 3.4}],
            "summary": {"mnist_speedup_fused_vs_cupy_unfused": 4.2, "mnist_speedup_target_met": True,
                        "mnist_speedup_fused_vs_numpy_cpu": 9.9,
                        "fused_share_of_peak_from_1e7": {"10000000": 0.775}, "fused_peak_target_met": False},
            "kernels_alone": [{"kernel": "kl_fwd", "n": 10 ** 7, "D": 50, "share_of_copy": 0.9}]}


def test_the_kernel_section_gives_the_speedup_and_shares_of_its_run(tmp_path):
    path = tmp_path / "kernels_x.json"
    r = _kernel_result("2026-01-02T03:04:05+00:00")
    r["summary"]["kernels_alone"] = {"row_kernels_target_met": False}
    path.write_text(json.dumps(r))
    text = report.kernels_section(path)
    assert "- fused vs unfused CuPy at MNIST size (100 x 50): 4.2x (target >= 3: yes)" in text
    assert "- fused share of peak bandwidth from 1e7 elements: 1e+07 elements 78% (target >= 80%: **no**)" in text
    assert "as a share of the 800.0 GB/s copy of the same run" in text
    assert "KL and fused kernels at >= 85% of the copy in every case: **no**" in text


def test_the_readme_shows_the_newest_kernel_run_that_timed_every_implementation(tmp_path):
    for stem, date, command in (("kernels_a", "2026-01-01T00:00:00+00:00", "bench_kernels.py"),
                                ("kernels_b", "2026-01-03T00:00:00+00:00", "bench_kernels.py"),
                                ("kernels_c", "2026-01-05T00:00:00+00:00", "bench_kernels.py --impls minivae-fused")):
        (tmp_path / f"{stem}.json").write_text(json.dumps(_kernel_result(date, command)))
    assert report._latest_full_kernel_run(tmp_path) == tmp_path / "kernels_b.json"


def test_record_run_counts_the_epochs_of_a_traced_run_and_takes_their_median(tmp_path, monkeypatch):
    """metrics.jsonl holds a line per epoch and, with --trace-every, lines of gradient norms: the
    epochs alone are counted, their seconds summed, the median is the middle epoch's (not the
    mean), and the final epoch is the last; the evaluation's command is kept with its scores."""
    import record_run

    run = _run_folder(tmp_path, {"test_elbo": -99.0})
    lines = [{"epoch": 1, "valid_elbo": -101.0, "seconds": 1.0}, {"step": 0, "epoch": 1, "grad_norm": 2.0},
             {"epoch": 2, "valid_elbo": -100.0, "seconds": 2.0}, {"epoch": 3, "valid_elbo": -99.5, "seconds": 6.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run / "eval.json").write_text(json.dumps({"n_test": 10000, "k": 5000, "test_elbo": -98.0, "test_nll": 94.0}))
    written = {}
    monkeypatch.setattr(record_run, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    record_run.main([str(run), "--command", "minivae train --epochs 3", "--eval", str(run / "eval.json"),
                     "--eval-command", "minivae eval run --k 5000"])
    assert (written["epochs"], written["train_seconds_all_epochs"], written["seconds_per_epoch_median"]) == (3, 9.0, 2.0)
    assert written["final_epoch"]["epoch"] == 3 and [m["epoch"] for m in written["epoch_metrics"]] == [1, 2, 3]
    assert written["eval_command"] == "minivae eval run --k 5000"


def test_results_name_the_commit_the_environment_gives(monkeypatch):
    """On a lent GPU machine the tree is a copy whose .git may be stale: MINIVAE_GIT_COMMIT wins."""
    import machine

    monkeypatch.setenv("MINIVAE_GIT_COMMIT", "0123abc")
    assert machine.versions()["git_commit"] == "0123abc"
    info = machine.machine_info()
    assert info["cores"] == os.cpu_count() and info["cpu_model"]


def test_a_results_gpu_is_named_as_the_trainer_names_it(monkeypatch):
    """The GPU of a result and of the trainer's metrics lines is one name (``backend.gpu_model``),
    the driver's bytes decoded, so that a run's seconds by GPU and the result's machine agree."""
    import types

    import machine
    import minivae.backend

    runtime = types.SimpleNamespace(
        getDevice=lambda: 0, runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000,
        getDeviceProperties=lambda device: {"name": b"NVIDIA H200", "major": 9, "minor": 0,
                                            "multiProcessorCount": 132, "totalGlobalMem": 2 ** 37})
    device = types.SimpleNamespace(id=0)
    fake_cp = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime, Device=lambda: device),
                                    __version__="14.2.0")
    monkeypatch.setitem(sys.modules, "cupy", fake_cp)
    monkeypatch.setattr(minivae.backend, "cupy_module", lambda: fake_cp)
    assert minivae.backend.gpu_model() == "NVIDIA H200"  # the driver's bytes, decoded
    monkeypatch.setattr(machine, "gpu_model", lambda: "the trainer's name")
    info = machine.gpu_info()
    assert info["name"] == "the trainer's name"
    assert (info["compute_capability"], info["cupy"]) == ("9.0", "14.2.0")



def test_a_written_result_names_the_command_that_made_it(tmp_path, monkeypatch):
    import machine

    monkeypatch.setattr(sys, "argv", ["benchmarks/record_run.py", "runs/A", "--command", "minivae train"])
    path = machine.write_result("run_x", {"epochs": 2, "command_wall_seconds": None}, tmp_path)
    r = json.loads(path.read_text())
    assert r["command"] == f"{Path(sys.executable).name} benchmarks/record_run.py runs/A --command minivae train"
    assert (r["epochs"], path.name) == (2, "run_x.json") and r["machine"]["cpu_model"] and r["date"]
    assert machine.command_line("/somewhere/benchmarks/record_run.py", ["runs/B", "--name", "b"]) == \
        "record_run.py runs/B --name b"  # its main called from Python: its own arguments


def test_an_engine_result_measured_without_pytorch_is_rendered(tmp_path):
    """bench_engine.py runs without PyTorch and then records minivae's median alone: the line said
    ``s['median_torch_overhead_us']`` and report.py stopped with a KeyError."""
    (tmp_path / "engine_x.json").write_text(json.dumps({
        "machine": {"cpu_model": "Made-up CPU"}, "date": "2026-01-02T03:04:05+00:00", "command": "bench_engine.py",
        "summary": {"median_minivae_overhead_us": 12.34}}))
    assert report.engine_table(tmp_path).endswith("12.3 us for minivae (PyTorch not measured).")


def test_the_engine_line_names_the_dtype_that_was_measured(tmp_path):
    """bench_engine.py --dtype float64 records its dtype: the line said float32 for every run."""
    (tmp_path / "engine_x.json").write_text(json.dumps({
        "machine": {"cpu_model": "Made-up CPU"}, "date": "2026-01-02T03:04:05+00:00", "command": "bench_engine.py",
        "shape": [4, 4], "dtype": "float64", "summary": {"median_minivae_overhead_us": 12.34}}))
    assert "(forward + backward, (4,4) float64) 12.3 us" in report.engine_table(tmp_path)


def test_the_kernel_section_names_the_dtype_when_its_first_case_failed(tmp_path):
    """A case that failed is recorded without its dtype: a float64 run whose first case failed was
    labelled float32."""
    r = _kernel_result("2026-01-02T03:04:05+00:00", "bench_kernels.py --dtype float64")
    r["results"] = [{"impl": "numpy", "device": "cpu", "B": 100, "D": 50, "n": 5000, "error": "MemoryError()"},
                    dict(r["results"][0], dtype="float64")]
    path = tmp_path / "kernels_x.json"
    path.write_text(json.dumps(r))
    assert "reparameterization + KL, forward + backward, float64, microseconds" in report.kernels_section(path)


def _run_result(folder, name, seed=0, results=None, device="cpu", **config):
    """A record_run result of a made-up run ``name`` (2 epochs of 45 s on a made-up 2-core CPU,
    or a made-up GPU) written into ``folder``; ``config`` changes its settings."""
    config = dataclasses.asdict(TrainConfig(**dict(dict(epochs=2, seed=seed, device=device,
                                                        out=f"/elsewhere/runs/{name}"), **config)))
    r = {"run_command": "minivae train", "config": config, "device": device,
         "gpu": {"name": "Made-up GPU"} if device == "gpu" else None,
         "machine": {"cpu_model": "Made-up CPU", "cores": 2}, "epochs": 2, "train_seconds_all_epochs": 90.0,
         "seconds_per_epoch_median": 45.0, "command_wall_seconds": None,
         "results": results or {"epochs": 2, "test_elbo": -99.0}}
    path = folder / f"run_{name}.json"
    path.write_text(json.dumps(r))
    return path


def test_each_row_names_the_device_its_run_trained_on(tmp_path):
    """A CPU row said only its time (the machine was in the table's header); a GPU row whose GPU
    was not recorded said nothing of the device."""
    assert "| 1.5 min on a 2-core Made-up CPU (45.0 s median epoch) |" in report._model_row(
        _run_result(tmp_path, "a"))
    assert "| 1.5 min on Made-up GPU (45.0 s median epoch) |" in report._model_row(
        _run_result(tmp_path, "b", device="gpu"))
    unnamed = _run_result(tmp_path, "c", device="gpu")
    unnamed.write_text(json.dumps(dict(json.loads(unnamed.read_text()), gpu=None)))
    assert "| 1.5 min on a GPU whose name was not recorded (45.0 s median epoch) |" in report._model_row(unnamed)


def test_a_row_says_in_how_many_pieces_its_run_was_trained_and_on_which_devices(tmp_path):
    """Pieces (resumes) and the seconds on each device when there were several; nothing for a
    run trained in one piece, or recorded before pieces were."""
    path = _run_result(tmp_path, "a", device="gpu")
    r = json.loads(path.read_text())
    for pieces, by_device, said in ((3, {"cpu": 30.0, "gpu": 60.0}, ", in 3 pieces: 30 s on the cpu, 1.0 min on the gpu"),
                                    (2, {"gpu": 90.0}, ", in 2 pieces"), (1, {"gpu": 90.0}, ""), (None, None, "")):
        path.write_text(json.dumps(dict(r, pieces=pieces, seconds_by_device=by_device)))
        assert f"| 1.5 min on Made-up GPU{said} (45.0 s median epoch) |" in report._model_row(path)


def test_a_run_of_a_papers_recipe_is_set_beside_the_figure_it_records(tmp_path):
    """A run of benchmarks/paper_runs.py records its recipe's figure: the M1 of M1+M2, a VAE of
    other sizes than the IWAE paper's, is not set beside that paper's VAE."""
    path = _run_result(tmp_path, "m1", model="vae")
    assert report._model_row(path).endswith("| 86.76 (1-layer VAE, 2x200 tanh, Burda et al. 2015 Table 1; "
                                            "read in the paper) |")
    path.write_text(json.dumps(dict(json.loads(path.read_text()), paper="- (the M1 of m1m2-ssl-100)")))
    assert report._model_row(path).endswith("| - (the M1 of m1m2-ssl-100) |")


def _rows(folder):
    return report.models_table(folder).splitlines()[2:]


def test_semi_supervised_runs_of_several_label_draws_are_one_row(tmp_path):
    """Runs that differ only in their seed, which draws the labelled images, were one row each;
    the papers give the mean and standard deviation over label draws."""
    for seed, error in ((2, 0.14), (0, 0.10), (1, 0.12)):
        _run_result(tmp_path, f"m2_s{seed}", seed, {"epochs": 2, "test_elbo": -99.0, "test_error": error},
                    model="m2")
    [row] = _rows(tmp_path)
    assert "| test error 12.00% ± 2.00 (mean ± standard deviation over 3 label draws) |" in row
    assert ("| `minivae train --model m2 --epochs 2 --out runs/m2_s0`; "
            "`minivae train --model m2 --epochs 2 --seed 1 --out runs/m2_s1`; "
            "`minivae train --model m2 --epochs 2 --seed 2 --out runs/m2_s2` |") in row
    assert "| 1.5 min per run, 4.5 min in all on a 2-core Made-up CPU (45.0 s median epoch) |" in row
    (tmp_path / "run_m2_s1.json").unlink(), (tmp_path / "run_m2_s2.json").unlink()
    [row] = _rows(tmp_path)
    assert "| test error 10.00% (1 label draw) |" in row
    cut = _run_result(tmp_path, "m2_cut", 1, {"epochs": 1}, model="m2")  # stopped: no test error to tell
    cut.write_text(json.dumps(dict(json.loads(cut.read_text()), epochs=1)))
    assert "| not evaluated: stopped after 1 of 2 epochs (1 label draw) |" in _rows(tmp_path)[0]  # (runs/m2_cut)


def test_label_draws_of_m1m2_started_on_machines_of_other_paths_are_one_row(tmp_path):
    """The M1 folder of an M1+M2 run is named where the run started: two label draws started in
    other folders, on one M1 recipe, are one row; an M1 of other sizes makes a row of its own."""
    m1 = {"model": "vae", "kwargs": {"z_dim": 50, "hidden": [500, 500]}}
    for seed, error, where in ((0, 0.10, "/machine1/runs"), (1, 0.12, "/machine2/work/runs")):
        _run_result(tmp_path, f"m1m2_s{seed}", seed, {"epochs": 2, "test_elbo": -99.0, "test_error": error},
                    model="m1m2", model_options={"m1": f"{where}/m1-vae-seed0"}, run_models={"m1": m1})
    [row] = _rows(tmp_path)
    assert "| test error 11.00% ± 1.41 (mean ± standard deviation over 2 label draws) |" in row
    other = {"model": "vae", "kwargs": {"z_dim": 50, "hidden": [600, 600]}}
    _run_result(tmp_path, "m1m2_s2", 2, {"epochs": 2, "test_elbo": -99.0, "test_error": 0.2}, model="m1m2",
                model_options={"m1": "/machine1/runs/m1-vae-seed0"}, run_models={"m1": other})
    assert len(_rows(tmp_path)) == 2


def test_the_nll_of_several_seeds_is_their_mean_and_standard_deviation(tmp_path):
    """Over several seeds the spread is the seeds' standard deviation (each estimate's standard
    error said beside it); one seed keeps its estimate's standard error."""
    for seed, nll, stderr in ((0, 90.0, 0.2), (1, 91.0, 0.3)):
        _run_result(tmp_path, f"vae_s{seed}", seed, {"epochs": 2, "test_elbo": -90.0 - 2 * seed, "test_nll": nll,
                                                     "test_nll_stderr": stderr, "eval_k": 5000, "n_test": 10000},
                    eval_k=5000)
    [row] = _rows(tmp_path)
    assert ("| test NLL 90.50 ± 0.71 (k=5000, 10000 images; mean ± standard deviation over 2 seeds; each "
            "estimate's standard error at most 0.30); test ELBO -91.00 ± 1.41 |") in row
    (tmp_path / "run_vae_s1.json").unlink()
    [row] = _rows(tmp_path)
    assert ("| test NLL 90.00 ± 0.20 (k=5000, 10000 images; 1 seed, ± the estimate's standard error); "
            "test ELBO -90.00 |") in row


def test_runs_that_differ_in_more_than_their_seed_are_rows_of_their_own(tmp_path):
    """Another setting, device, number of epochs trained or evaluation makes another row, and so
    does a second run of a seed a row holds already (it is no other draw)."""
    _run_result(tmp_path, "a", 0)
    _run_result(tmp_path, "b", 1, lr=3e-4)
    _run_result(tmp_path, "c", 1, device="gpu")
    _run_result(tmp_path, "d", 1, results={"epochs": 2, "test_elbo": -99.0, "test_nll": 95.0, "eval_k": 100})
    _run_result(tmp_path, "e", 0)
    unfinished = _run_result(tmp_path, "f", 1)
    unfinished.write_text(json.dumps(dict(json.loads(unfinished.read_text()), epochs=1, results={"epochs": 1})))
    assert len(_rows(tmp_path)) == 6
    _run_result(tmp_path, "g", 1)  # joins a (seed 0), not e, which also has seed 0
    rows = _rows(tmp_path)
    assert len(rows) == 6 and "2 seeds" in rows[0] and "(no importance-sampled NLL; 1 seed) |" in rows[4]


def test_the_time_of_a_row_of_several_runs_names_each_device_and_the_range_of_their_epochs(tmp_path):
    """Seeds trained on different GPUs are one row (the same settings on the same kind of device):
    it names both GPUs, the mean and total time, the range of the median epochs, each command's
    wall time, and the effective sample sizes of the worst run."""
    for seed, gpu, median, wall, ess in ((0, "Made-up GPU", 0.25, 130.0, (15.0, 1.5)),
                                         (1, "Other GPU", 0.5, 150.0, (12.0, 2.0))):
        path = _run_result(tmp_path, f"g{seed}", seed, {"epochs": 2, "test_elbo": -90.0, "test_nll": 88.0,
                                                        "eval_k": 5000, "n_test": 1000, "ess_median": ess[0],
                                                        "ess_min": ess[1]}, device="gpu")
        r = json.loads(path.read_text())
        r.update(gpu={"name": gpu}, seconds_per_epoch_median=median, command_wall_seconds=wall,
                 train_seconds_all_epochs=2 * median, run_command=f"minivae train --device gpu (piece {seed})")
        path.write_text(json.dumps(r))
    [row] = _rows(tmp_path)
    assert ("| 1 s per run, 2 s in all on Made-up GPU and Other GPU (0.25 s to 0.50 s median epoch; the whole "
            "commands 130 s, 150 s; piece 0; piece 1) |") in row
    assert ("(k=5000, 1000 images, effective sample size (the least over the runs) median 12, "
            "min 1.5; mean ± standard deviation over 2 seeds)") in row


def test_the_epochs_cell_says_where_early_stopping_ended_the_runs_and_which_epochs_were_scored(tmp_path):
    """Seeds that early stopping ended at different epochs are one row (their validation scores
    chose the epochs, not a setting); the cell gives each run's epochs, of how many, and the
    epochs the final evaluation scored (the best by the validation split)."""
    for seed, (done, best) in enumerate(((40, 30), (55, 45), (60, 60))):
        path = _run_result(tmp_path, f"es{seed}", seed, {"epochs": done, "test_elbo": -99.0,
                                                         "selected": {"epoch": best, "by": "valid_elbo",
                                                                      "score": -98.0}},
                           epochs=60, keep_best=True, patience=10)
        path.write_text(json.dumps(dict(json.loads(path.read_text()), epochs=done)))
    [row] = _rows(tmp_path)
    assert ("| 40, 55, 60 of 60 (early stopping, patience 10); scored: epochs 30, 45, 60, best by validation "
            "ELBO |") in row
    for seed in (1, 2):
        (tmp_path / f"run_es{seed}.json").unlink()
    assert "| 40 of 60 (early stopping, patience 10); scored: epoch 30, best by validation ELBO |" in _rows(tmp_path)[0]
    _run_result(tmp_path, "kept", 0, {"epochs": 2, "test_elbo": -99.0, "test_error": 0.1,
                                      "selected": {"epoch": 1, "by": "valid_error", "score": 0.2}},
                model="m2", keep_best=True)
    assert "| 2; scored: epoch 1, best by validation error |" in _rows(tmp_path)[1]
    _run_result(tmp_path, "plain", 0)
    assert "| 2 |" in _rows(tmp_path)[2]


def _selecting_run(tmp_path, finished=True):
    """A run folder of 2 epochs trained with --keep-best that selected epoch 1: in results.json
    when ``finished``, else only in its checkpoint (its final evaluation not yet run)."""
    from minivae import checkpoint

    run = _run_folder(tmp_path, {"test_elbo": -99.0, "selected": {"epoch": 1, "by": "valid_elbo", "score": -98.0}})
    (run / "config.json").write_text(json.dumps({"model": "vae", "epochs": 2, "keep_best": True}))
    if not finished:
        (run / "results.json").unlink()
        checkpoint.save(run / "checkpoint.npz", {}, {
            "config": TrainConfig(epochs=2, keep_best=True, out=str(run)).to_dict(), "epoch": 2, "batch": 0,
            "best": {"epoch": 1, "by": "valid_elbo", "score": -98.0}})
    return run


@pytest.mark.parametrize("finished", [True, False])
def test_record_run_takes_the_evaluation_of_the_epoch_a_run_selected_and_no_other(tmp_path, monkeypatch, capsys,
                                                                                  finished):
    """A run trained with --keep-best is scored at the epoch it selected, which `minivae eval`
    reads: that evaluation is taken (it was refused as one of an earlier checkpoint), and one of
    the last epoch (--last) is refused, as the evaluation of another model than the run's."""
    import record_run

    run = _selecting_run(tmp_path, finished)
    written = {}
    monkeypatch.setattr(record_run, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    ev = {"n_test": 10000, "k": 5000, "test_elbo": -98.0, "test_nll": 94.0, "test_nll_stderr": 0.5}
    args = [str(run), "--command", "minivae train --epochs 2 --keep-best", "--eval", str(run / "eval.json"),
            "--eval-command", "minivae eval run --k 5000", *([] if finished else ["--allow-unfinished"])]
    (run / "eval.json").write_text(json.dumps(dict(ev, epochs=2, batch=0)))
    with pytest.raises(SystemExit):
        record_run.main(args)
    assert ("scored the run at its last checkpoint (--last), not the epoch it selected, 1, the best by "
            "valid_elbo") in capsys.readouterr().err
    assert not written
    (run / "eval.json").write_text(json.dumps(dict(ev, epochs=1, batch=0, selected={"epoch": 1, "by": "valid_elbo",
                                                                                  "score": -98.0})))
    record_run.main(args)
    assert written["results"]["test_nll"] == 94.0


def test_record_clusters_leaves_out_a_clustering_of_another_model_than_the_run_s(tmp_path, monkeypatch, capsys):
    """Beside the clustering of the epoch a --keep-best run selected, a clustering with --last
    is left out, saying so; given by name it is refused."""
    import record_clusters

    run = _selecting_run(tmp_path)
    written = {}
    monkeypatch.setattr(record_clusters, "write_result", lambda name, payload, out=None, command=None: written.update(payload) or name)
    scores = {"n": 100, "n_clusters": 10, "seed": 0, "accuracy": 0.5, "nmi": 0.4, "ari": 0.3}
    (run / "clusters_10.json").write_text(json.dumps(dict(scores, epochs=1, batch=0, selected={"epoch": 1})))
    (run / "clusters_10_last.json").write_text(json.dumps(dict(scores, epochs=2, batch=0, accuracy=0.1)))
    record_clusters.main([str(run), "--command", "minivae train --epochs 2 --keep-best"])
    assert [s["accuracy"] for s in written["clusters"]] == [0.5]
    assert f"left out {run / 'clusters_10_last.json'}: it clustered the run at its last checkpoint" in \
        capsys.readouterr().err
    written.clear()
    with pytest.raises(SystemExit):
        record_clusters.main([str(run), "--command", "minivae train", "--clusters", str(run / "clusters_10_last.json")])
    assert not written
