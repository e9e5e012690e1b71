"""M1+M2 (Kingma et al. 2014): M2 with a Gaussian likelihood on the features of a frozen VAE."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import minivae as mv
from minivae.models import VAE, M1M2, build_model
from minivae.random import Generator
from minivae.runs import NotARunError, TrainConfig, build_run_model, load_run
from minivae.train import Trainer, train

from test_m2 import np_log_softmax
from test_train import check_exact_resume, small_data


def small_m1m2(**kw):
    mv.nn.init.manual_seed(0)
    m1 = VAE(x_dim=10, z_dim=4, hidden=(6,)).astype(np.float64)
    return M1M2(m1=m1, z_dim=3, hidden=(5,), num_classes=4, **kw).astype(np.float64)


def np_features(m1, x, eps=None):
    """M1's z1 by hand: the one-hidden-layer ReLU encoder, then mu (+ sigma * eps)."""
    lin = m1.encoder.net[0]
    h = np.maximum(x @ lin.weight.data + lin.bias.data, 0.0)
    mu = h @ m1.q_z.mu.weight.data + m1.q_z.mu.bias.data
    logvar = h @ m1.q_z.logvar.weight.data + m1.q_z.logvar.bias.data
    return mu if eps is None else mu + np.exp(0.5 * logvar) * eps


def test_loss_is_m2_on_m1_features_computed_by_hand():
    model = small_m1m2(alpha=2.0)
    rng = np.random.default_rng(3)
    x = (rng.random((5, 10)) < 0.5).astype(np.float64)
    xl, labels = (rng.random((4, 10)) < 0.5).astype(np.float64), np.array([0, 1, 2, 3])
    loss, _ = model.loss(mv.tensor(x), Generator(4), labelled=(mv.tensor(xl), labels))
    g = Generator(4)  # the labelled batch's z1 is drawn first, then the unlabelled one, then M2's noise
    fl = np_features(model.m1, xl, g.normal((4, 4), dtype=np.float64))
    f = np_features(model.m1, x, g.normal((5, 4), dtype=np.float64))
    expected, _ = model.m2.loss(mv.tensor(f), g, labelled=(mv.tensor(fl), labels))
    np.testing.assert_allclose(loss.data, expected.data, rtol=1e-12)


def test_m1_stays_frozen_while_m2_trains():
    model = small_m1m2(alpha=1.0)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = mv.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    x = mv.tensor((rng.random((8, 10)) < 0.5).astype(np.float64))
    loss, _ = model.loss(x, Generator(1), labelled=(x, np.arange(8) % 4))
    loss.backward()
    opt.step()
    assert all(p.grad is None and not p.requires_grad for p in model.m1.parameters())
    after = model.state_dict()
    for name, value in before.items():
        if name.startswith("m1."):
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert all(not np.array_equal(after[n], before[n]) for n in before if n.startswith("m2.") and "weight" in n)


def test_classification_uses_the_mean_of_q_z1():
    model = small_m1m2()
    x = (np.random.default_rng(5).random((7, 10)) < 0.5).astype(np.float64)
    probs = model.class_probabilities(mv.tensor(x))
    expected = np.exp(np_log_softmax(model.m2.classifier(mv.tensor(np_features(model.m1, x))).data))
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    np.testing.assert_array_equal(model.classify(mv.tensor(x)), expected.argmax(-1))


def test_evaluation_is_m2_at_the_mean_of_q_z1():
    # One fixed feature per image: the k-sample estimate is of log p(z1) for that z1, however
    # its samples are chunked (tests/test_evaluate.py checks the chunking for every model).
    model = small_m1m2()
    x = (np.random.default_rng(6).random((5, 10)) < 0.5).astype(np.float64)
    z1 = mv.tensor(np_features(model.m1, x))
    np.testing.assert_allclose(model.log_weights(mv.tensor(x), 6, Generator(3)).data,
                               model.m2.log_weights(z1, 6, Generator(3)).data, rtol=1e-12)
    for got, expected in zip(model.elbo(mv.tensor(x), Generator(3)), model.m2.elbo(z1, Generator(3))):
        np.testing.assert_allclose(got.data, expected.data, rtol=1e-12)


def test_the_scores_say_the_nll_is_of_the_features_not_of_the_images():
    from minivae.evaluate import test_set_scores

    x = (np.random.default_rng(6).random((5, 10)) < 0.5).astype(np.float64)
    scores = test_set_scores(small_m1m2(), x, np.arange(5) % 4, k=2)
    assert "z1" in scores["likelihood"] and "not log p(x)" in scores["likelihood"]
    assert test_set_scores(small_m1m2().m1, x, None, k=2)["likelihood"] == "log p(x)"


def test_samples_are_images_decoded_by_m1():
    model = small_m1m2()
    images = model.sample(6, Generator(2))
    assert images.shape == (6, 10) and np.all((images > 0) & (images < 1))
    binary = model.sample(6, Generator(2), probabilities=False)
    assert set(np.unique(binary)) <= {0.0, 1.0}


def test_gradcheck_covers_m2_and_not_the_frozen_m1():
    from minivae.cli import main
    from minivae.gradcheck_cases import model_case

    names, _, _ = model_case("m1m2")
    assert names and all(n.startswith("m2.") for n in names)
    assert main(["gradcheck", "--model", "m1m2"]) == 0


def _vae_run(tmp_path, data, name="m1", model="vae"):
    config = TrainConfig(model=model, epochs=1, batch_size=50, hidden=(16,), z_dim=4, eval_k=0,
                         n_labelled=25, out=str(tmp_path / name))
    Trainer(config, data=data, progress=False, log=lambda m: None).fit()
    return tmp_path / name


def test_m1_comes_from_a_run_folder_and_bad_m1_is_named(tmp_path):
    data = small_data(n_train=100, n_eval=20)
    run = _vae_run(tmp_path, data)
    def m1m2_config(m1):
        return TrainConfig(model="m1m2", z_dim=3, hidden=(8,), model_options={"m1": str(m1)})

    model = build_run_model(m1m2_config(run))  # the run layer loads the VAE of the run folder
    _, vae = load_run(run)
    for name, value in vae.state_dict().items():
        np.testing.assert_array_equal(model.m1.state_dict()[name], value)
    assert model.x_dim == 784
    with pytest.raises(ValueError, match="--set m1=RUN"):
        build_model("m1m2")
    with pytest.raises(NotARunError, match="missing is not a run folder"):
        build_run_model(m1m2_config(tmp_path / "missing"))
    m2_run = _vae_run(tmp_path, data, name="m2run", model="m2")
    with pytest.raises(ValueError, match="one-layer VAE.*got M2"):
        build_run_model(m1m2_config(m2_run))
    with pytest.raises(ValueError, match="x_dim"):
        M1M2(m1=vae, x_dim=10)


def test_resume_is_exact_and_the_cli_reports_the_test_error(tmp_path, monkeypatch):
    from minivae import cli, train as train_module
    import minivae.data as data_module

    data = small_data(n_train=200, n_eval=20)
    run = _vae_run(tmp_path, data)
    check_exact_resume(lambda name: TrainConfig(model="m1m2", epochs=2, batch_size=50, hidden=(16,), z_dim=3,
                                                eval_k=0, n_labelled=25, out=str(tmp_path / name),
                                                model_options={"m1": str(run)}), data, 3)
    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: data)
    monkeypatch.setattr(data_module, "load_mnist", lambda verbose=True: data)
    out = tmp_path / "cli"
    assert cli.main(["train", "--model", "m1m2", "--set", f"m1={run}", "--n-labelled", "10", "--epochs", "1",
                     "--hidden", "16", "--z-dim", "2", "--batch-size", "50", "--out", str(out),
                     "--eval-k", "0", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["test_error"] <= 1.0
    assert cli.main(["eval", str(out), "--k", "2", "--no-progress"]) == 0


def _m1m2_run(data, m1, out):
    """A one-epoch M1+M2 run in ``out`` on the VAE run ``m1``."""
    config = TrainConfig(model="m1m2", epochs=1, batch_size=50, hidden=(8,), z_dim=3, eval_k=0, n_labelled=10,
                         out=str(out), model_options={"m1": str(m1)})
    Trainer(config, data=data, progress=False, log=lambda m: None).fit()
    return Path(out)


def test_an_m1m2_run_is_rebuilt_without_its_m1_folder(tmp_path, monkeypatch):
    """The run records M1's settings when it starts and its checkpoint holds M1's weights: the M1
    folder trained again with other sizes, or removed, changes nothing for eval, sample and a
    resume (a run folder is self-contained, and may move to another machine alone)."""
    from minivae import cli, train as train_module

    data = small_data(n_train=100, n_eval=20)
    m1 = _vae_run(tmp_path, data)
    run = _m1m2_run(data, m1, tmp_path / "m1m2")
    assert json.loads((run / "config.json").read_text())["run_models"]["m1"]["kwargs"]["z_dim"] == 4
    before = load_run(run)[1].state_dict()
    again = TrainConfig(epochs=1, batch_size=50, hidden=(16,), z_dim=5, eval_k=0, out=str(m1))
    Trainer(again, data=data, progress=False, log=lambda m: None).fit(overwrite=True)
    shutil.rmtree(m1)
    after = load_run(run)[1].state_dict()
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    assert cli.main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 0
    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: data)
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((run / "results.json").read_text())["epochs"] == 2


def test_the_record_of_run_models_is_checked(tmp_path, capsys):
    """A damaged record is a damaged checkpoint (one line); a new run never starts from a record,
    which would give it an untrained M1."""
    import dataclasses

    from minivae import checkpoint, cli

    data = small_data(n_train=100, n_eval=20)
    m1 = _vae_run(tmp_path, data)
    run = _m1m2_run(data, m1, tmp_path / "m1m2")
    config = load_run(run)[0]
    with pytest.raises(ValueError, match="new run records its own run_models"):
        Trainer(dataclasses.replace(config, out=str(tmp_path / "new")), data=data, progress=False,
                log=lambda m: None).fit()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ValueError, match="new run records its own run_models"):  # before removing
        train(config, overwrite=True, data=data, progress=False, log=lambda m: None)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    arrays, meta = checkpoint.load(run / "checkpoint.npz")
    for damaged in ({"m1": {"model": "vae"}}, {"m1": {"model": ["vae"], "kwargs": {}}}):
        meta["config"]["run_models"] = damaged
        checkpoint.save(run / "checkpoint.npz", arrays, meta)
        assert cli.main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "damaged" in err and "run_models.m1" in err


def test_an_m1m2_run_saved_before_run_models_names_a_retrained_m1_in_one_line(tmp_path, capsys):
    """Such a run is rebuilt from its M1 folder: M1 trained again with other sizes is named."""
    from minivae import checkpoint, cli
    from minivae.checkpoint import CheckpointError

    data = small_data(n_train=100, n_eval=20)
    m1 = _vae_run(tmp_path, data)
    run = _m1m2_run(data, m1, tmp_path / "m1m2")
    arrays, meta = checkpoint.load(run / "checkpoint.npz")
    del meta["config"]["run_models"]
    checkpoint.save(run / "checkpoint.npz", arrays, meta)
    again = TrainConfig(epochs=1, batch_size=50, hidden=(16,), z_dim=5, eval_k=0, out=str(m1))
    Trainer(again, data=data, progress=False, log=lambda m: None).fit(overwrite=True)
    with pytest.raises(CheckpointError) as exc:
        load_run(run)
    message = str(exc.value)
    assert "\n" not in message and str(run / "checkpoint.npz") in message and f"m1={m1}" in message
    assert cli.main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"m1={m1}" in err


def test_an_m1m2_run_saved_before_run_models_needs_only_the_settings_of_its_m1(tmp_path):
    """Its checkpoint holds M1's weights: M1's folder gives only its settings, so an M1 trained
    with --keep-best whose best.npz is gone (the model it selects) does not stop the rebuild."""
    from minivae import checkpoint

    data = small_data(n_train=100, n_eval=20)
    m1 = tmp_path / "m1"
    Trainer(TrainConfig(epochs=1, batch_size=50, hidden=(16,), z_dim=4, eval_k=0, keep_best=True, out=str(m1)),
            data=data, progress=False, log=lambda m: None).fit()
    run = _m1m2_run(data, m1, tmp_path / "m1m2")
    arrays, meta = checkpoint.load(run / "checkpoint.npz")
    del meta["config"]["run_models"]
    checkpoint.save(run / "checkpoint.npz", arrays, meta)
    (m1 / "best.npz").unlink()
    state = load_run(run)[1].state_dict()
    for name, value in checkpoint.split_prefix(arrays, "model/").items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_a_checkpoint_that_does_not_fit_its_recorded_m1_blames_no_m1_folder(tmp_path):
    """A run that records its M1 (``run_models``) is rebuilt without the M1 folder: a checkpoint of
    it that does not fit its model is named alone, not the M1 run, which played no part."""
    from minivae import checkpoint
    from minivae.checkpoint import CheckpointError

    data = small_data(n_train=100, n_eval=20)
    m1 = _vae_run(tmp_path, data)
    run = _m1m2_run(data, m1, tmp_path / "m1m2")
    arrays, meta = checkpoint.load(run / "checkpoint.npz")
    del arrays[next(name for name in arrays if name.startswith("model/"))]
    checkpoint.save(run / "checkpoint.npz", arrays, meta)
    with pytest.raises(CheckpointError) as exc:
        load_run(run)
    message = str(exc.value)
    assert "does not fit the model its config describes" in message
    assert f"m1={m1}" not in message and "built on the run" not in message


def test_a_resume_keeps_the_record_of_m1_that_its_config_lacks(tmp_path):
    """``run_models`` is a record of the run, which a resume takes from the checkpoint: resumed
    through the API with the settings it was started with (no record), the run still records its
    M1, and is rebuilt without the M1 folder afterwards."""
    import dataclasses

    from minivae import checkpoint

    data = small_data(n_train=100, n_eval=20)
    m1 = _vae_run(tmp_path, data)
    run = _m1m2_run(data, m1, tmp_path / "m1m2")
    started = dataclasses.replace(load_run(run)[0], run_models={}, epochs=2)
    train(started, resume=True, data=data, progress=False, log=lambda m: None)
    for recorded in (json.loads((run / "config.json").read_text()),
                     checkpoint.load(run / "checkpoint.npz")[1]["config"]):
        assert recorded["run_models"]["m1"]["kwargs"]["z_dim"] == 4
    shutil.rmtree(m1)
    assert load_run(run)[0].epochs == 2


def test_the_m1_folder_is_kept_absolute_and_relative_ones_of_older_runs_still_load(tmp_path, monkeypatch):
    from minivae import checkpoint

    data = small_data(n_train=100, n_eval=20)
    m1 = _vae_run(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    run = _m1m2_run(data, "m1", "m1m2")
    assert json.loads((run / "config.json").read_text())["model_options"]["m1"] == str(m1)
    monkeypatch.chdir(m1)  # another current folder
    load_run(tmp_path / "m1m2")
    # A run saved with a folder relative to the current one (as runs were) is read from there,
    # and resuming it with the same --set m1 is no change of settings.
    arrays, meta = checkpoint.load(tmp_path / "m1m2" / "checkpoint.npz")
    meta["config"]["model_options"]["m1"] = "m1"
    checkpoint.save(tmp_path / "m1m2" / "checkpoint.npz", arrays, meta)
    monkeypatch.chdir(tmp_path)
    config, _ = load_run("m1m2")
    config.check_resumable(TrainConfig.from_dict(dict(meta["config"], model_options={"m1": str(m1)})),
                           (meta["epoch"], meta["batch"]))
