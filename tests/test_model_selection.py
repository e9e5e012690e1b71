"""Model selection by the validation split (``--keep-best``): the final evaluation scores the
model of the epoch best on it, kept in best.npz, through resumes, crashes and overwrites, and the
commands that read a run's model (eval, cluster, sample, plot, graph) read it unless given --last."""
import fnmatch
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import minivae.train
from minivae import checkpoint
from minivae.cli import main
from minivae.runs import BEST, CHECKPOINT, RESULTS, RUN_FILE_PATTERNS, ResumeMismatchError, TrainConfig
from minivae.train import Trainer, train

from test_train import _interrupt_after, config, small_data

QUIET = dict(progress=False, log=lambda m: None)
STEPS_PER_EPOCH = 6  # small_data(): 300 training images in batches of 50


def scripted_validation(monkeypatch, **scores):
    """Make the validation scores of epoch e (1-based) ``scores[name][e - 1]`` for each name
    given (``valid_elbo``, ``valid_error``), whatever the training did: a function of the epoch,
    so that a resumed run sees the same scores as one not interrupted."""
    real = Trainer._epoch

    def epoch(self):
        metrics = real(self)
        for name, values in scores.items():
            metrics[name] = values[metrics["epoch"] - 1]
        return metrics
    monkeypatch.setattr(Trainer, "_epoch", epoch)


def model_arrays(path):
    """The model's arrays of the checkpoint file ``path``."""
    return {name: a for name, a in checkpoint.load(path)[0].items() if name.startswith("model/")}


def assert_same_arrays(got, want):
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("scores, best", [([-200.0, -100.0, -150.0], 2),   # a later epoch is worse
                                          ([-100.0, -100.0, -150.0], 1),   # a tie keeps the earlier one
                                          ([-300.0, -200.0, -100.0], 3)])
def test_the_final_evaluation_scores_the_epoch_best_on_the_validation_split(tmp_path, monkeypatch, scores,
                                                                             best):
    """best.npz holds the model of the epoch with the highest validation ELBO, the very model of
    a run of that many epochs (a constant rate: the same steps), and the final numbers are that
    model's; checkpoint.npz goes on holding the last epoch, which a resume continues from."""
    data, lines = small_data(), []
    scripted_validation(monkeypatch, valid_elbo=scores)
    kept = config(tmp_path / "kept", epochs=3, lr_schedule="constant", eval_k=2, keep_best=True)
    results = train(kept, data=data, progress=False, log=lines.append)
    short = train(config(tmp_path / "short", epochs=best, lr_schedule="constant", eval_k=2), data=data,
                  **QUIET)
    run = tmp_path / "kept" / "run"
    assert_same_arrays(model_arrays(run / BEST), model_arrays(tmp_path / "short" / "run" / CHECKPOINT))
    selected = {"epoch": best, "by": "valid_elbo", "score": scores[best - 1]}
    assert results == dict(short, epochs=3, selected=selected)
    assert json.loads((run / RESULTS).read_text()) == results
    assert f"scoring the model of epoch {best} of 3, the best by valid_elbo" in "\n".join(lines)
    best_document = checkpoint.load_document(run / BEST)
    assert {k: best_document[k] for k in ("epoch", "batch", "by", "score")} == dict(selected, batch=0)
    last = checkpoint.load_document(run / CHECKPOINT)
    assert (last["epoch"], last["best"], best_document["run_id"]) == (3, selected, last["run_id"])


def test_a_model_that_classifies_is_selected_by_its_validation_error(tmp_path, monkeypatch):
    """The ELBO rises every epoch here, but the classifier's error is lowest after epoch 2."""
    scripted_validation(monkeypatch, valid_elbo=[-300.0, -200.0, -100.0], valid_error=[0.5, 0.3, 0.4])
    results = train(config(tmp_path, model="m2", n_labelled=20, epochs=3, keep_best=True), data=small_data(),
                    **QUIET)
    assert results["selected"] == {"epoch": 2, "by": "valid_error", "score": 0.3}
    assert "test_error" in results


def _crash_at_the_checkpoint_of_epoch(trainer, epoch):
    """Make ``trainer`` stop, as a killed process would, when it is about to save the checkpoint
    at the end of ``epoch``: after its best.npz, before its checkpoint."""
    save = trainer.save

    def crashing():
        if (trainer.epoch, trainer.batch) == (epoch, 0):
            raise RuntimeError("killed")
        save()
    trainer.save = crashing


@pytest.mark.parametrize("cut", ["between the writes of epoch 2", "inside epoch 3"])
def test_a_resumed_run_ends_with_the_best_npz_and_results_of_one_not_interrupted(tmp_path, monkeypatch, cut):
    """Epoch 2 is the best and epoch 3 worse. Killed between best.npz and the checkpoint of
    epoch 2, the run resumes at the end of epoch 1 and writes epoch 2's best.npz again; cut inside
    epoch 3, it goes on comparing with the best that its checkpoint records (a resume that
    forgot it would take epoch 3 for the best)."""
    data = small_data()
    scripted_validation(monkeypatch, valid_elbo=[-200.0, -100.0, -150.0])

    def make(name):
        return config(tmp_path / name, epochs=3, keep_best=True, eval_k=2)
    ref = train(make("ref"), data=data, **QUIET)
    trainer = Trainer(make("cut"), data=data, **QUIET)
    run = tmp_path / "cut" / "run"
    if cut == "inside epoch 3":
        _interrupt_after(trainer, 2 * STEPS_PER_EPOCH + 2)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    else:
        _crash_at_the_checkpoint_of_epoch(trainer, 2)
        with pytest.raises(RuntimeError, match="killed"):
            trainer.fit()
        written = [checkpoint.load_document(run / name)["epoch"] for name in (BEST, CHECKPOINT)]
        assert written == [2, 1]
    assert train(make("cut"), resume=True, data=data, **QUIET) == ref
    assert ref["selected"]["epoch"] == 2
    assert_same_arrays(model_arrays(run / BEST), model_arrays(tmp_path / "ref" / "run" / BEST))
    documents = [checkpoint.load_document(folder / BEST) for folder in (run, tmp_path / "ref" / "run")]
    for document in documents:
        del document["run_id"], document["config"]["out"]  # the two runs' own
    assert documents[0] == documents[1]


def test_a_best_npz_of_an_epoch_the_checkpoint_does_not_record_is_not_scored(tmp_path, monkeypatch):
    """Killed between the writes of epoch 2, then resumed on another path (here other scores;
    another --device or --epochs can do it) where epoch 2 is no longer the best: best.npz still
    holds epoch 2, and the final evaluation says so instead of scoring it as epoch 1."""
    data = small_data()
    scripted_validation(monkeypatch, valid_elbo=[-200.0, -100.0, -150.0])
    trainer = Trainer(config(tmp_path, epochs=3, keep_best=True), data=data, **QUIET)
    _crash_at_the_checkpoint_of_epoch(trainer, 2)
    with pytest.raises(RuntimeError, match="killed"):
        trainer.fit()
    scripted_validation(monkeypatch, valid_elbo=[-200.0, -300.0, -250.0])
    with pytest.raises(checkpoint.CheckpointError) as error:
        train(config(tmp_path, epochs=3, keep_best=True), resume=True, data=data, **QUIET)
    message = str(error.value)
    assert str(tmp_path / "run" / BEST) in message and "holds epoch 2" in message and "not epoch 1" in message
    assert f"`minivae eval --last {tmp_path / 'run'}`" in message and "\n" not in message
    assert not (tmp_path / "run" / RESULTS).exists()


@pytest.mark.parametrize("before, after", [(False, True), (True, False)])
def test_a_resume_cannot_change_keep_best(tmp_path, before, after):
    data = small_data()
    Trainer(config(tmp_path, epochs=1, keep_best=before), data=data, **QUIET).fit()
    with pytest.raises(ResumeMismatchError, match=f"keep_best: {before} -> {after}"):
        Trainer(config(tmp_path, epochs=2, keep_best=after), data=data, **QUIET).fit(resume=True)


@pytest.mark.parametrize("best, problem", [(None, "its best None"),
                                           ({"epoch": 2, "by": "valid_elbo", "score": 1.0}, "'epoch': 2"),
                                           ({"epoch": 1, "by": "loss", "score": 1.0}, "'loss'"),
                                           ({"epoch": 1, "by": "valid_elbo", "score": "high"}, "'high'")])
def test_a_checkpoint_without_a_valid_best_record_is_not_resumed(tmp_path, best, problem):
    """A run with keep_best saved after epoch 1 records its best epoch so far; without a valid
    record a resume would select among the later epochs only."""
    data = small_data()
    trainer = Trainer(config(tmp_path, epochs=2, keep_best=True), data=data, **QUIET)
    _interrupt_after(trainer, STEPS_PER_EPOCH + 2)  # inside epoch 2
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    path = tmp_path / "run" / CHECKPOINT
    arrays, meta = checkpoint.load(path)
    meta["best"] = best
    checkpoint.save(path, arrays, meta)
    with pytest.raises(checkpoint.CheckpointError, match="is damaged: its best") as error:
        Trainer(config(tmp_path, epochs=2, keep_best=True), data=data, **QUIET).fit(resume=True)
    assert problem in str(error.value)


def test_overwrite_removes_best_npz_and_a_run_without_keep_best_writes_none(tmp_path):
    data = small_data()
    run = tmp_path / "run"
    train(config(tmp_path, epochs=1, keep_best=True), data=data, **QUIET)
    assert (run / BEST).is_file()
    results = train(config(tmp_path, epochs=1), overwrite=True, data=data, **QUIET)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "config.json", "metrics.jsonl",
                                                      "results.json"]
    assert "selected" not in results and "best" not in checkpoint.load_document(run / CHECKPOINT)


def test_train_keep_best_on_the_command_line(tmp_path, monkeypatch, capsys):
    """--keep-best says which epoch it scored; a resume keeps the run's choice, and refuses to
    change it, in one line."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    tiny = ["--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "0", "--no-progress"]
    out = tmp_path / "kept"
    assert main(["train", "--epochs", "1", "--out", str(out), "--keep-best", *tiny]) == 0
    assert "scoring the model of epoch 1 of 1" in capsys.readouterr().out
    assert main(["train", "--epochs", "2", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["keep_best"] is True
    assert json.loads((out / RESULTS).read_text())["selected"]["epoch"] in (1, 2)
    other = tmp_path / "other"
    assert main(["train", "--epochs", "1", "--out", str(other), *tiny]) == 0
    capsys.readouterr()
    assert main(["train", "--epochs", "2", "--out", str(other), "--resume", "--keep-best",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and "keep_best: False -> True" in err[0], err


# ----- early stopping -----------------------------------------------------------------------------

def epochs_recorded(run):
    """The epochs of the run folder ``run``'s metrics.jsonl, in order."""
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("scores, ends", [([-200.0, -100.0, -150.0, -160.0, -170.0, -180.0], 4),
                                          # a new best (epoch 4) starts the count again
                                          ([-200.0, -100.0, -150.0, -90.0, -95.0, -96.0], 6),
                                          # a tie is no improvement
                                          ([-200.0, -100.0, -100.0, -100.0, -150.0, -160.0], 4)])
def test_early_stopping_ends_the_run_patience_epochs_after_the_best(tmp_path, monkeypatch, scores, ends):
    """With patience 2 the run ends after the second epoch in a row that did not beat the best,
    and its results are those of the run trained through all its epochs (the same schedule, so
    the same model at the best epoch), but for the epochs done."""
    data, lines = small_data(), []
    scripted_validation(monkeypatch, valid_elbo=scores)
    stopped = train(config(tmp_path / "stopped", epochs=6, keep_best=True, patience=2, eval_k=2), data=data,
                    progress=False, log=lines.append)
    assert epochs_recorded(tmp_path / "stopped" / "run") == list(range(1, ends + 1))
    assert checkpoint.load_document(tmp_path / "stopped" / "run" / CHECKPOINT)["epoch"] == ends
    if ends < 6:
        full = train(config(tmp_path / "full", epochs=6, keep_best=True, eval_k=2), data=data, **QUIET)
        assert full["selected"] == stopped["selected"]
        assert stopped == dict(full, epochs=ends)
        best = stopped["selected"]["epoch"]
        assert (f"early stopping: no epoch beat epoch {best}'s valid_elbo in the {ends - best} after it "
                f"(patience 2); the run ends at epoch {ends} of 6") in lines
    else:
        assert stopped["epochs"] == 6 and not any(line.startswith("early stopping") for line in lines)


def test_a_run_stopped_early_resumes_only_with_more_patience(tmp_path, monkeypatch):
    """Resumed as it was, a run stopped early trains nothing and its results stand; given more
    patience it trains on from where it ended, and with none, through all its epochs."""
    data, lines = small_data(), []
    scripted_validation(monkeypatch, valid_elbo=[-200.0, -100.0, -150.0, -160.0, -170.0, -180.0])
    run = tmp_path / "run"

    def resume(patience):
        return train(config(tmp_path, epochs=6, keep_best=True, patience=patience, eval_k=2), resume=True,
                     data=data, progress=False, log=lines.append)
    first = train(config(tmp_path, epochs=6, keep_best=True, patience=1, eval_k=2), data=data, **QUIET)
    assert first["epochs"] == 3
    assert resume(1) == first and f"{run} had ended at epoch 3: nothing to train" in "\n".join(lines)
    assert resume(3)["epochs"] == 5 and epochs_recorded(run) == [1, 2, 3, 4, 5]
    assert resume(0) == dict(first, epochs=6) and epochs_recorded(run) == [1, 2, 3, 4, 5, 6]


def test_a_run_with_patience_cut_inside_an_epoch_resumes_to_the_same_end(tmp_path, monkeypatch):
    """Cut inside epoch 3, before the run would stop at the end of epoch 4: the resume counts
    the epochs since the best from the checkpoint's record, and stops where the uncut run did."""
    data = small_data()
    scripted_validation(monkeypatch, valid_elbo=[-200.0, -100.0, -150.0, -160.0, -170.0, -180.0])

    def make(name):
        return config(tmp_path / name, epochs=6, keep_best=True, patience=2, eval_k=2)
    ref = train(make("ref"), data=data, **QUIET)
    trainer = Trainer(make("cut"), data=data, **QUIET)
    _interrupt_after(trainer, 2 * STEPS_PER_EPOCH + 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert train(make("cut"), resume=True, data=data, **QUIET) == ref
    assert ref["epochs"] == 4 and epochs_recorded(tmp_path / "cut" / "run") == [1, 2, 3, 4]


@pytest.mark.parametrize("settings, problem", [(dict(patience=2), "patience 2 stops the run on the best epoch"),
                                               (dict(patience=-1, keep_best=True), "patience"),
                                               (dict(patience=1.5, keep_best=True), "patience")])
def test_patience_is_a_count_and_needs_keep_best(tmp_path, settings, problem):
    with pytest.raises((TypeError, ValueError), match=problem):
        Trainer(config(tmp_path, **settings), data=small_data(), **QUIET)
    assert not (tmp_path / "run").exists()


def test_patience_on_the_command_line(tmp_path, monkeypatch, capsys):
    """--patience without --keep-best is refused in one line, and so is a resume that gives it to a
    run trained without; given with it, the run may stop early."""
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    tiny = ["--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "0", "--no-progress"]
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--patience", "2", *tiny]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["minivae: error: --patience 2 ends the run on the best epoch that --keep-best keeps; give "
                   "--keep-best too"], err
    assert not out.exists()
    assert main(["train", "--epochs", "1", "--out", str(out), *tiny]) == 0
    capsys.readouterr()
    assert main(["train", "--epochs", "2", "--out", str(out), "--resume", "--patience", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"minivae: error: --patience 1 ends the run on the best epoch that --keep-best keeps; {out} was "
                   "trained without --keep-best, which a resume cannot add: leave --patience out, or start "
                   "again with --overwrite --keep-best"], err
    assert main(["train", "--epochs", "3", "--out", str(tmp_path / "kept"), "--keep-best", "--patience", "1",
                 *tiny]) == 0
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["patience"] == 1


# ----- the commands that read a run's model: the one it selected, or with --last the last one ----

@pytest.fixture(scope="module")
def selecting_run(tmp_path_factory):
    """A run of 3 epochs trained with keep_best whose epoch 2 is the best (its final evaluation
    with k = 2 in results.json), and the small data it was trained and scored on."""
    data, out = small_data(), tmp_path_factory.mktemp("selecting")
    with pytest.MonkeyPatch.context() as mp:
        scripted_validation(mp, valid_elbo=[-200.0, -100.0, -150.0])
        train(config(out, epochs=3, eval_k=2, keep_best=True), data=data, **QUIET)
    return out / "run", data


@pytest.fixture
def run(selecting_run, tmp_path, monkeypatch):
    """A private copy of ``selecting_run``'s folder, which a test may change; the commands read
    its data as MNIST."""
    import minivae.data
    import minivae.viz

    folder, data = selecting_run
    for module in (minivae.data, minivae.viz):
        monkeypatch.setattr(module, "load_mnist", lambda verbose=True: data)
    return Path(shutil.copytree(folder, tmp_path / "run"))


def scores_of(path, data, k=2):
    """What ``minivae eval --k k`` reports for the model of the checkpoint file ``path`` (of the
    run of ``data``), scored directly."""
    from minivae.data import binarize_eval
    from minivae.evaluate import test_set_scores
    from minivae.runs import build_run_model

    config = TrainConfig.from_dict(checkpoint.load_document(path)["config"])
    model = build_run_model(config)
    model.load_state_dict(checkpoint.split_prefix(checkpoint.load(path)[0], "model/"))
    return test_set_scores(model, binarize_eval(data.x_test, "test"), data.y_test, k)


def evaluated(capsys, argv):
    """Run ``minivae eval ... --k 2 --no-progress``; return its exit status and error output."""
    capsys.readouterr()
    code = main(["eval", *argv, "--k", "2", "--no-progress"])
    return code, capsys.readouterr().err


def test_eval_of_a_run_with_keep_best_scores_the_model_it_selected(run, selecting_run, capsys):
    """The numbers are those of best.npz's model, which the run's results scored too, and the
    result records its epoch and the selection; --last scores the last epoch's model, whose
    numbers differ, into a file of its own."""
    data = selecting_run[1]
    assert evaluated(capsys, [str(run)])[0] == 0
    best = json.loads((run / "eval_k2.json").read_text())
    selected = {"epoch": 2, "by": "valid_elbo", "score": -100.0}
    assert best == {"run": str(run), "epochs": 2, "batch": 0, "selected": selected, **scores_of(run / BEST, data)}
    assert evaluated(capsys, [str(run), "--last"])[0] == 0
    last = json.loads((run / "eval_k2_last.json").read_text())
    assert last == {"run": str(run), "epochs": 3, "batch": 0, **scores_of(run / CHECKPOINT, data)}
    assert best["test_elbo"] != last["test_elbo"]
    results = json.loads((run / RESULTS).read_text())
    assert results["selected"] == selected
    assert (results["test_elbo"], results["test_nll"]) == (best["test_elbo"], best["test_nll"])


def test_last_on_a_run_without_keep_best_is_the_model_it_always_scores(tmp_path, capsys, monkeypatch):
    import minivae.data

    data = small_data()
    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: data)
    train(config(tmp_path, epochs=1), data=data, **QUIET)
    run = tmp_path / "run"
    assert evaluated(capsys, [str(run), "--last"])[0] == 0
    assert sorted(p.name for p in run.glob("eval_k*.json")) == ["eval_k2.json"]
    result = json.loads((run / "eval_k2.json").read_text())
    assert result == {"run": str(run), "epochs": 1, "batch": 0, **scores_of(run / CHECKPOINT, data)}
    assert evaluated(capsys, [str(run)])[0] == 0
    assert json.loads((run / "eval_k2.json").read_text()) == result


def test_cluster_records_the_model_it_clustered(run, capsys, monkeypatch):
    """(k-means and scikit-learn stood in for: the record and the model are checked here.)"""
    import minivae.clustering

    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    clustered = []
    monkeypatch.setattr(minivae.clustering, "latent_clusters",
                        lambda model, *args, **kwargs: clustered.append(model.state_dict()) or {"accuracy": 1.0})
    assert main(["cluster", str(run), "--clusters", "2"]) == 0
    assert json.loads((run / "clusters_2.json").read_text()) == {
        "run": str(run), "epochs": 2, "batch": 0, "accuracy": 1.0,
        "selected": {"epoch": 2, "by": "valid_elbo", "score": -100.0}}
    assert_same_arrays({f"model/{k}": v for k, v in clustered.pop().items()}, model_arrays(run / BEST))
    assert main(["cluster", str(run), "--clusters", "2", "--n", "10", "--last"]) == 0
    assert json.loads((run / "clusters_2_last_first10.json").read_text()) == {
        "run": str(run), "epochs": 3, "batch": 0, "accuracy": 1.0}
    assert_same_arrays({f"model/{k}": v for k, v in clustered.pop().items()}, model_arrays(run / CHECKPOINT))


@pytest.mark.parametrize("command", ["sample", "plot", "graph"])
def test_the_pictures_are_of_the_model_the_run_selected(run, monkeypatch, command):
    """sample, plot (its samples, reconstructions and latent pictures) and graph draw best.npz's
    model, or with --last the checkpoint's."""
    import minivae.graph
    import minivae.viz

    drawn = []
    function = {"sample": (minivae.viz, "prior_samples"), "plot": (minivae.viz, "encode_dataset"),
                "graph": (minivae.graph, "model_loss_graph")}[command]
    real = getattr(*function)

    def drawing(model, *args, **kwargs):
        drawn.append({f"model/{k}": v for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)
    monkeypatch.setattr(*function, drawing)
    monkeypatch.setattr(minivae.graph, "svg_available", lambda: False)
    extra = ["--data", "random"] if command == "graph" else []
    for last, name in (([], BEST), (["--last"], CHECKPOINT)):
        assert main([command, str(run), *extra, *last]) == 0
        assert_same_arrays(drawn.pop(), model_arrays(run / name))
    assert not drawn


#: The files each command draws of a run's model, without --last and with it on a run trained with
#: keep_best (plot drawn by ``drawn``: with t-SNE, without UMAP or gradient norms); the learning
#: curves are of the run's metrics.jsonl, whichever model is drawn.
SELECTED_FILES = {"sample": ["samples.png"],
                  "plot": ["samples.png", "reconstructions.png", "latent_pca.png", "latent_tsne.png",
                           "traversal.png", "kl_per_dim.png", "curves.png"],
                  "graph": ["graph.dot", "graph.svg"]}
LAST_FILES = {"sample": ["samples_last.png"],
              "plot": ["samples_last.png", "reconstructions_last.png", "latent_pca_last.png",
                       "latent_tsne_last.png", "traversal_last.png", "kl_per_dim_last.png", "curves.png"],
              "graph": ["graph_last.dot", "graph_last.svg"]}


def drawn(capsys, monkeypatch, command, run, *options):
    """The files that ``minivae COMMAND RUN OPTIONS...`` writes, as it prints them: graph of random
    images, with a stand-in for Graphviz; plot with a stand-in t-SNE and no UMAP, so that each
    draws the same files whatever is installed."""
    import minivae.graph
    import minivae.viz

    monkeypatch.setattr(minivae.graph, "svg_available", lambda: True)
    monkeypatch.setattr(minivae.graph, "render_svg", lambda dot: "<svg/>")
    monkeypatch.setattr(minivae.viz, "_embeddings", lambda points, seed: iter([("tsne", points[:, :2])]))
    capsys.readouterr()
    assert main([command, str(run), *(["--data", "random"] if command == "graph" else []), *options]) == 0
    return [Path(line) for line in capsys.readouterr().out.splitlines()]


def pictures_in(run):
    """{name: (contents, modification time)} of the pictures and graphs in the folder ``run``."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()
            if p.suffix in (".png", ".dot", ".svg")}


@pytest.mark.parametrize("command", ["sample", "plot", "graph"])
def test_the_pictures_of_last_on_a_run_with_keep_best_have_files_of_their_own(run, monkeypatch, capsys,
                                                                             command):
    """With --last, the pictures of the last checkpoint's model go to files named ..._last, which
    train --overwrite removes with the run, and those of the model the run selected stay as they
    were; the learning curves keep their one name. An --out is used as given."""
    assert drawn(capsys, monkeypatch, command, run) == [run / name for name in SELECTED_FILES[command]]
    selected = pictures_in(run)
    assert drawn(capsys, monkeypatch, command, run, "--last") == [run / name for name in LAST_FILES[command]]
    pictures = pictures_in(run)
    assert sorted(pictures) == sorted(set(SELECTED_FILES[command] + LAST_FILES[command]))
    for name in set(SELECTED_FILES[command]) - set(LAST_FILES[command]):
        assert pictures[name] == selected[name], name
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in RUN_FILE_PATTERNS) for name in pictures)
    out = {"sample": "mine.png", "plot": None, "graph": "mine.dot"}[command]
    if out:
        assert drawn(capsys, monkeypatch, command, run, "--last", "--out", str(run / out))[0] == run / out


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A run of one epoch trained without keep_best, whose only model is the last."""
    out = tmp_path_factory.mktemp("plain")
    train(config(out, epochs=1), data=small_data(), **QUIET)
    return out / "run"


@pytest.mark.parametrize("command", ["sample", "plot", "graph"])
def test_the_pictures_of_last_on_a_run_without_keep_best_keep_their_names(plain_run, tmp_path, monkeypatch,
                                                                          capsys, command):
    import minivae.viz

    monkeypatch.setattr(minivae.viz, "load_mnist", lambda verbose=True: small_data())
    run = Path(shutil.copytree(plain_run, tmp_path / "run"))
    written = drawn(capsys, monkeypatch, command, run, "--last")
    assert written == [run / name for name in SELECTED_FILES[command]]
    assert sorted(pictures_in(run)) == sorted(SELECTED_FILES[command])


def test_plot_reads_the_run_once(run, monkeypatch, capsys):
    """plot checks the run before anything else and draws the model it read then: each file of
    the model is read once, and only that model's arrays (of the model the run selected, those of
    best.npz: of the checkpoint only its document, not the last epoch's model and moments)."""
    read, real = [], checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda path: read.append(Path(path).name) or real(path))
    for last, files in (([], [BEST]), (["--last"], [CHECKPOINT])):
        drawn(capsys, monkeypatch, "plot", run, *last)
        assert read == files, last
        read.clear()


def test_plot_run_refuses_a_read_of_the_other_model(run):
    from minivae.runs import read_run_model
    from minivae.viz import plot_run

    for last in (False, True):
        with pytest.raises(ValueError, match=f"read_run_model\\(run_dir, last={last}\\)") as error:
            plot_run(run, last=last, read=read_run_model(run, not last))
        assert (BEST if last else CHECKPOINT) in str(error.value)
    assert not [p for p in run.iterdir() if p.suffix == ".png"]


def test_graph_takes_last_only_with_a_run(capsys):
    assert main(["graph", "--model", "vae", "--last"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--last" in err and "run folder" in err


def _refused(capsys, run, *named):
    """Assert that eval of ``run`` ends in one error line naming each of ``named`` and writes
    nothing, and that ``--last`` scores the run all the same."""
    code, err = evaluated(capsys, [str(run)])
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in named:
        assert text in err, (text, err)
    assert not (run / "eval_k2.json").exists()
    assert evaluated(capsys, [str(run), "--last"])[0] == 0


def test_a_best_npz_of_another_run_is_refused(run, tmp_path, capsys):
    arrays, meta = checkpoint.load(run / BEST)
    checkpoint.save(run / BEST, arrays, dict(meta, run_id="0123456789abcdef"))
    _refused(capsys, run, str(run / BEST), "another run", "'0123456789abcdef'", "--last")


def test_a_missing_best_npz_is_named(run, capsys):
    (run / BEST).unlink()
    _refused(capsys, run, f"{run} holds no {BEST}", "first epoch has not ended yet", "--last")


def test_a_damaged_best_npz_is_named(run, capsys):
    arrays, meta = checkpoint.load(run / BEST)
    del meta["by"]
    checkpoint.save(run / BEST, arrays, meta)
    _refused(capsys, run, f"checkpoint {run / BEST} is damaged", "'by': None")
    (run / BEST).write_bytes((run / BEST).read_bytes()[:100])
    _refused(capsys, run, f"checkpoint {run / BEST} is unreadable or corrupt")


def test_a_best_npz_of_an_epoch_the_run_no_longer_selects_is_refused(run, capsys):
    """The checkpoint after epoch 3 records epoch 1 as the best (a training stopped between the
    writes of epoch 2, then resumed to other scores, leaves that): best.npz of epoch 2 is none of
    the run's."""
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    checkpoint.save(run / CHECKPOINT, arrays, dict(meta, best={"epoch": 1, "by": "valid_elbo", "score": -200.0}))
    _refused(capsys, run, str(run / BEST), "holds epoch 2, which is neither epoch 1",
             "nor one ended after the epoch 3", "--last")


def test_a_best_npz_written_after_the_checkpoint_read_is_the_runs_best_so_far(tmp_path, capsys, monkeypatch):
    """Training writes best.npz of an epoch before its checkpoint: read between the two, best.npz
    holds a later epoch than the checkpoint, and is scored (here: stopped between the two writes
    of epoch 2, as a reader would find it); before the first epoch ends, there is none yet."""
    import minivae.data

    data = small_data()
    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: data)
    scripted_validation(monkeypatch, valid_elbo=[-200.0, -100.0, -150.0])
    trainer = Trainer(config(tmp_path, epochs=3, keep_best=True), data=data, **QUIET)
    _crash_at_the_checkpoint_of_epoch(trainer, 2)
    with pytest.raises(RuntimeError, match="killed"):
        trainer.fit()
    run = tmp_path / "run"
    assert evaluated(capsys, [str(run)])[0] == 0
    result = json.loads((run / "eval_k2.json").read_text())
    assert (result["epochs"], result["selected"]["epoch"]) == (2, 2)
    assert result["test_elbo"] == scores_of(run / BEST, data)["test_elbo"]
    started = Trainer(config(tmp_path / "started", epochs=1, keep_best=True), data=data, **QUIET)
    _interrupt_after(started, 2)
    with pytest.raises(KeyboardInterrupt):
        started.fit()
    code, err = evaluated(capsys, [str(tmp_path / "started" / "run")])
    assert code == 2 and "first epoch has not ended yet" in err and "--last" in err


def test_overwrite_removes_the_scores_and_pictures_of_the_last_epoch_too(run, tmp_path, capsys, monkeypatch):
    """The scores and pictures of --last have names of their own, which train --overwrite removes
    as the others."""
    import minivae.clustering
    import minivae.train

    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setattr(minivae.clustering, "latent_clusters", lambda *args, **kwargs: {"accuracy": 1.0})
    monkeypatch.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data())
    assert evaluated(capsys, [str(run), "--last", "--n", "10"])[0] == 0
    assert main(["cluster", str(run), "--clusters", "2", "--last"]) == 0
    for command in ("sample", "graph"):
        drawn(capsys, monkeypatch, command, run, "--last")
    assert {"eval_k2_last_first10.json", "clusters_2_last.json", "samples_last.png", "graph_last.dot",
            "graph_last.svg"} <= {p.name for p in run.iterdir()}
    assert main(["train", "--epochs", "1", "--hidden", "32", "--z-dim", "4", "--batch-size", "50",
                 "--eval-k", "0", "--out", str(run), "--overwrite", "--no-progress"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "config.json", "metrics.jsonl",
                                                      "results.json"]


def test_plot_run_takes_last_as_true_or_false(run):
    from minivae.viz import plot_run

    with pytest.raises(TypeError, match="last must be True or False, got 'False'"):
        plot_run(run, last="False")


# ----- a model built on another run (M1+M2's M1) takes the model that run selected ---------------

def m1m2_on(run):
    """The config of a new M1+M2 run on the VAE run ``run`` as M1."""
    return TrainConfig(model="m1m2", z_dim=3, hidden=(8,), n_labelled=10, model_options={"m1": str(run)})


def test_m1m2_is_built_on_the_model_its_m1_run_selected(run):
    """M1's weights are those of the epoch best on M1's validation split (best.npz), not of its
    last epoch, as every command that reads the run takes them."""
    from minivae.runs import build_run_model

    m1 = build_run_model(m1m2_on(run)).m1.state_dict()
    assert_same_arrays({f"model/{name}": value for name, value in m1.items()}, model_arrays(run / BEST))
    last = model_arrays(run / CHECKPOINT)
    assert any(not np.array_equal(m1[name[len("model/"):]], value) for name, value in last.items())


def test_m1m2_on_a_run_without_its_best_npz_is_refused_without_offering_last(run):
    """No --last in train: the error names the missing file and offers nothing train cannot do."""
    from minivae.runs import RunFolderError, build_run_model

    (run / BEST).unlink()
    with pytest.raises(RunFolderError, match=f"holds no {BEST}") as raised:
        build_run_model(m1m2_on(run))
    assert "--last" not in str(raised.value)
