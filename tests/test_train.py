"""The VAE, the training loop, checkpoints, resume, evaluation and the CLI, on small made-up data."""
import errno
import json
import math
import os
import signal
import types

import numpy as np
import pytest

import minivae as mv
from minivae import checkpoint
from minivae.evaluate import log_likelihood, logmeanexp
from minivae.models import VAE, iwae_bound
from minivae.random import Generator
from minivae.runs import CHECKPOINT, METRICS, ResumeMismatchError, TrainConfig
from minivae.train import DataMismatchError, Trainer, TrainingDiverged, kl_weight


def small_data(seed=0, n_train=300, n_eval=60, dim=784):
    """Grey images with structure (a few prototypes plus noise), intensities in [0, 1]."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 1, (5, dim)) ** 3
    def make(n):
        labels = rng.integers(0, 5, n)
        x = np.clip(protos[labels] + 0.1 * rng.standard_normal((n, dim)), 0, 1).astype(np.float32)
        return x, labels
    (xt, yt), (xv, yv), (xs, ys) = make(n_train), make(n_eval), make(n_eval)
    return types.SimpleNamespace(x_train=xt, y_train=yt, x_valid=xv, y_valid=yv, x_test=xs, y_test=ys)


def config(tmp_path, **kw):
    base = dict(epochs=2, batch_size=50, hidden=(32,), z_dim=4, eval_k=0, out=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


def params(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_iwae_bound_at_k1_is_the_single_sample_elbo():
    nn_seed = mv.nn.init.manual_seed(0)
    model = VAE(x_dim=20, z_dim=3, hidden=(8,))
    x = mv.tensor((np.random.default_rng(1).random((6, 20)) < 0.5).astype(np.float64))
    model.astype(np.float64)
    log_w = model.log_weights(x, 1, Generator(5))
    # The same eps by hand: log p(x|z) + log p(z) - log q(z|x), with z = mu + sigma * eps.
    mu, logvar = model.encode(x)
    eps = Generator(5).normal((1,) + mu.shape, dtype=np.float64)
    z = mu.data + np.exp(0.5 * logvar.data) * eps
    logits = model.decode(mv.tensor(z)).data
    log_px = (x.data * logits - np.logaddexp(0, logits)).sum(-1)
    log_pz = (-0.5 * (z ** 2 + np.log(2 * np.pi))).sum(-1)
    log_qz = (-0.5 * (eps ** 2 + logvar.data + np.log(2 * np.pi))).sum(-1)
    np.testing.assert_allclose(log_w.data, log_px + log_pz - log_qz, rtol=1e-10)
    np.testing.assert_array_equal(iwae_bound(log_w).data, log_w.data[0])
    assert nn_seed is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_sample_elbo_equals_the_elbo_of_a_one_sample_axis(dtype):
    """With one sample the ELBO keeps the batch shape (no sample axis, no mean over it); the
    reconstruction term must be bit for bit the (1, B) one averaged over its sample axis."""
    mv.nn.init.manual_seed(0)
    model = VAE(x_dim=20, z_dim=3, hidden=(8,)).astype(dtype)
    x = mv.tensor((np.random.default_rng(1).random((6, 20)) < 0.5).astype(dtype))
    rec, kl = model.elbo(x, Generator(5))
    mu, logvar = model.encode(x)
    z = mv.functional.reparameterize(mu, logvar, Generator(5).next_noise(), shape=(1,) + mu.shape)
    rec_axis = mv.functional.bernoulli_log_prob(model.decode(z), x).mean(axis=0)
    assert rec.shape == kl.shape == (6,)
    np.testing.assert_array_equal(rec.data, rec_axis.data)
    assert rec.data.dtype == dtype


def test_analytic_and_sampled_kl_agree_on_average():
    mv.nn.init.manual_seed(0)
    model = VAE(x_dim=20, z_dim=3, hidden=(8,)).astype(np.float64)
    x = mv.tensor((np.random.default_rng(1).random((4, 20)) < 0.5).astype(np.float64))
    rec, kl = model.elbo(x, Generator(3), samples=20000)
    sampled = iwae_bound(model.log_weights(x, 1, Generator(3))).data  # one draw: noisy
    mc = model.log_weights(x, 20000, Generator(4)).data.mean(axis=0)
    np.testing.assert_allclose(mc, (rec - kl).data, atol=0.05)
    assert sampled.shape == (4,)


def test_iwae_bound_increases_with_k():
    mv.nn.init.manual_seed(0)
    model = VAE(x_dim=20, z_dim=3, hidden=(8,)).astype(np.float64)
    x = mv.tensor((np.random.default_rng(1).random((8, 20)) < 0.5).astype(np.float64))
    bounds = [float(np.mean([iwae_bound(model.log_weights(x, k, Generator(s))).data.mean()
                             for s in range(40)])) for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2]


def test_vae_loss_gradients_match_finite_differences():
    mv.nn.init.manual_seed(0)
    model = VAE(x_dim=12, z_dim=3, hidden=(5,), iw_k=3).astype(np.float64)
    x = mv.tensor((np.random.default_rng(1).random((4, 12)) < 0.5).astype(np.float64))
    for name, p in model.named_parameters():
        mv.gradcheck(lambda p_: model.loss(x, Generator(9))[0], p)


def test_logmeanexp_is_stable_for_large_magnitudes():
    a = np.array([[-1e4, -1e4 + 1.0], [1e4, 1e4 - 2.0], [-np.inf, 0.0]]).T
    expected = [-1e4 + math.log((1 + math.e) / 2), 1e4 + math.log((1 + math.exp(-2)) / 2), math.log(0.5)]
    np.testing.assert_allclose(logmeanexp(a, axis=0), expected, rtol=1e-12)
    assert logmeanexp(np.full((3, 1), -np.inf), axis=0)[0] == -np.inf


class StandInModel:
    """What the evaluators need of a model besides its scores: a parameter (for the device) and
    the training/eval mode switch."""

    training = False

    def parameters(self):
        return iter([mv.tensor(np.zeros(1))])

    def train(self, mode=True):
        self.training = mode

    def eval(self):
        self.train(False)


class FixedWeights(StandInModel):
    """A stand-in model whose log_weights hand out the rows of one fixed (K, N) array in order,
    chunk after chunk (wrapping round for each batch), for each example the column its one-hot
    row of ``x`` names: the estimate from them is known in closed form."""

    def __init__(self, log_w):
        self.log_w, self.done = log_w, 0
        self.x_dim = log_w.shape[1]

    def log_weights(self, x, k, noise):
        rows = x.data.argmax(axis=1)  # each example's column
        out = self.log_w[self.done:self.done + k][:, rows]
        self.done = (self.done + k) % len(self.log_w)
        return mv.tensor(out)


@pytest.mark.parametrize("chunk_rows", [10, 70, 10000])
def test_log_likelihood_merges_chunks_exactly(chunk_rows):
    offsets = np.array([-3000.0, 2500.0, 1.5])
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    ll = log_likelihood(FixedWeights(np.tile(offsets, (37, 1))), x, k=37, batch_size=2, chunk_rows=chunk_rows)
    np.testing.assert_allclose(ll, offsets[[0, 1, 2, 1]], rtol=1e-12)


def test_log_likelihood_is_above_the_elbo_and_stable_across_chunkings():
    mv.nn.init.manual_seed(0)
    model = VAE(x_dim=20, z_dim=3, hidden=(8,))
    x = (np.random.default_rng(2).random((30, 20)) < 0.5).astype(np.float32)
    a = log_likelihood(model, x, k=500, noise=Generator(1), batch_size=10, chunk_rows=5000)
    b = log_likelihood(model, x, k=500, noise=Generator(2), batch_size=10, chunk_rows=100)
    assert abs(a.mean() - b.mean()) < 0.05
    from minivae.evaluate import elbo
    bound, _, _ = elbo(model, x)
    assert a.mean() > bound.mean()


def test_checkpoint_round_trip_and_no_pickle(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"a": np.arange(3.0)}, {"epoch": 3, "nested": {"x": [1, 2]}})
    arrays, meta = checkpoint.load(path)
    np.testing.assert_array_equal(arrays["a"], np.arange(3.0))
    assert meta == {"epoch": 3, "nested": {"x": [1, 2]}}
    # A pickled array must be refused, in a file that is otherwise a checkpoint, and named as
    # pickled: its bytes are a pickle, not an array of the wrong size.
    np.savez(path, a=np.array([object()], dtype=object), **{checkpoint.META_KEY: np.array(json.dumps({}))})
    with pytest.raises(checkpoint.CheckpointError, match="is unreadable or corrupt: .*allow_pickle=False"):
        checkpoint.load(path)
    path.write_bytes(b"truncated")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(path)


def test_checkpoint_save_makes_the_folder_it_writes_into(tmp_path):
    """A checkpoint may be saved where no folder is yet: save makes the folders of its path."""
    path = tmp_path / "new" / "run" / "c.npz"
    checkpoint.save(path, {"a": np.arange(3.0)}, {"epoch": 1})
    np.testing.assert_array_equal(checkpoint.load(path)[0]["a"], np.arange(3.0))


def test_checkpoint_names_are_data_not_arguments(tmp_path):
    # np.savez(f, **arrays) took these two for its own arguments (dropped one, crashed on the other).
    path = tmp_path / "c.npz"
    arrays = {"file": np.arange(2.0), "allow_pickle": np.ones(3), "w": np.zeros(1)}
    checkpoint.save(path, arrays, {})
    loaded, _ = checkpoint.load(path)
    assert sorted(loaded) == ["allow_pickle", "file", "w"]
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_checkpoint_load_names_a_folder_and_an_unreadable_file(tmp_path, monkeypatch):
    with pytest.raises(checkpoint.CheckpointError, match=f"{tmp_path} is a folder .*not a checkpoint file"):
        checkpoint.load(tmp_path)
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.ones(2)}, {})

    def unreadable(*args, **kwargs):  # (chmod 0 would not stop root)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    monkeypatch.setattr(checkpoint, "open", unreadable, raising=False)
    with pytest.raises(checkpoint.CheckpointError, match=f"cannot read checkpoint {path}: Permission denied"):
        checkpoint.load(path)


@pytest.mark.parametrize("name, value, error, match", [
    ("extra", {"mu": np.zeros(2)}, ValueError, "extra: .*pickle"),
    ("w", None, ValueError, "w: .*pickle"),
    ("ragged", [[1.0], [1.0, 2.0]], ValueError, "ragged: .*inhomogeneous"),
    ("w", mv.nn.Parameter(np.ones(2)), TypeError, r"w: .*\.numpy\(\)"),
    (1, np.ones(2), TypeError, "names must be strings"),
], ids=["dict", "None", "ragged list", "Parameter", "int name"])
def test_checkpoint_save_refuses_what_needs_pickle_and_keeps_the_old_file(tmp_path, name, value,
                                                                          error, match):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.ones(3)}, {"epoch": 1})
    good = path.read_bytes()
    with pytest.raises(error, match=match):
        checkpoint.save(path, {"w": np.ones(3), name: value}, {"epoch": 2})
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_training_reduces_the_loss_and_writes_the_run_folder(tmp_path):
    data = small_data()
    trainer = Trainer(config(tmp_path, epochs=3), data=data, progress=False, log=lambda m: None)
    trainer.fit()
    lines = [json.loads(l) for l in (trainer.run_dir / METRICS).read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert lines[-1]["valid_elbo"] > lines[0]["valid_elbo"]
    assert {"train_elbo", "train_rec", "train_kl", "valid_elbo", "seconds"} <= set(lines[0])
    results = trainer.final_evaluation()
    assert np.isfinite(results["test_elbo"])


def test_the_epochs_train_statistics_are_the_means_of_its_steps(tmp_path):
    """train_loss, train_elbo, ... of an epoch are the means of that epoch's step statistics
    (not of every step so far, nor divided by another count)."""
    trainer = Trainer(config(tmp_path, epochs=2, batch_size=100), data=small_data(), progress=False,
                      log=lambda m: None)
    step, steps = trainer._step, []
    trainer._step = lambda *args: steps.append(step(*args)) or steps[-1]
    trainer.fit()
    lines = [json.loads(l) for l in (trainer.run_dir / METRICS).read_text().splitlines()]
    assert len(steps) == 6 and len(lines) == 2  # 3 batches of 100 per epoch
    for epoch, line in enumerate(lines):
        for name in ("loss", "elbo", "rec", "kl"):
            want = np.mean([s[name] for s in steps[3 * epoch:3 * epoch + 3]])
            assert line[f"train_{name}"] == pytest.approx(want, rel=1e-12), (epoch, name)


def _record_per_image_terms(trainer):
    """Record the per-image (reconstruction, KL) of every training step of ``trainer``'s VAE, in
    the order of its steps, into the returned list (the evaluation's calls, in eval mode, not)."""
    model, terms = trainer.model, []
    elbo = model.elbo

    def recording(x, noise, samples=None):
        rec, kl = elbo(x, noise, samples)
        if model.training:
            terms.append((rec.numpy().astype(np.float64), kl.numpy().astype(np.float64)))
        return rec, kl
    model.elbo = recording
    return terms


def _means_over_images(terms, n_train, epochs):
    """train_loss, train_elbo, train_rec and train_kl of each epoch (KL weight 1), averaged by
    hand over the epoch's ``n_train`` images from the per-image terms of its steps."""
    rec, kl = (np.concatenate([t[i] for t in terms]) for i in (0, 1))
    assert len(rec) == n_train * epochs
    return [{"loss": (kl - rec)[e].mean(), "elbo": (rec - kl)[e].mean(), "rec": rec[e].mean(),
             "kl": kl[e].mean()} for e in (slice(n * n_train, (n + 1) * n_train) for n in range(epochs))]


def test_the_epochs_train_statistics_are_means_over_its_images(tmp_path):
    """With a shorter last batch (250 images in batches of 80: 80, 80, 80, 10), each image counts
    once: not the mean of the four batch means, where the 10 images of the last weigh as much as
    the 80 of another."""
    trainer = Trainer(config(tmp_path, epochs=2, batch_size=80, warmup=0), data=small_data(n_train=250),
                      progress=False, log=lambda m: None)
    terms = _record_per_image_terms(trainer)
    trainer.fit()
    lines = mv.runs.read_metrics(trainer.run_dir)
    for line, want in zip(lines, _means_over_images(terms, 250, 2), strict=True):
        for name, value in want.items():
            assert line[f"train_{name}"] == pytest.approx(value, rel=1e-6), (line["epoch"], name)


def _check_the_same_train_statistics(lines, other):
    assert len(lines) == len(other)
    for line, got in zip(lines, other):
        names = [name for name in line if name.startswith("train_")]
        assert names and names == [name for name in got if name.startswith("train_")]
        for name in names:
            assert got[name] == pytest.approx(line[name], rel=1e-12), (line["epoch"], name)


def test_an_interrupted_epoch_resumes_to_the_statistics_of_the_whole_one(tmp_path):
    """Cut inside epoch 1 (after 2 of its 80, 80, 80, 10 batches) and resumed: each epoch's
    statistics are those of the run not interrupted."""
    data, quiet = small_data(n_train=250), dict(progress=False, log=lambda m: None)
    whole = Trainer(config(tmp_path / "whole", batch_size=80), data=data, **quiet)
    whole.fit()
    cut = Trainer(config(tmp_path / "cut", batch_size=80), data=data, **quiet)
    _interrupt_after(cut, 2)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    Trainer(config(tmp_path / "cut", batch_size=80), data=data, **quiet).fit(resume=True)
    _check_the_same_train_statistics(mv.runs.read_metrics(whole.run_dir), mv.runs.read_metrics(cut.run_dir))


def test_a_checkpoint_with_sums_of_batch_means_resumes_to_the_same_statistics(tmp_path):
    """A checkpoint saved inside an epoch before its sums were over images holds the sums of the
    batch means of its steps, and no ``images``: it still resumes, to the same statistics (its
    batches were full ones)."""
    data, quiet = small_data(n_train=250), dict(progress=False, log=lambda m: None)
    whole = Trainer(config(tmp_path / "whole", batch_size=80), data=data, **quiet)
    whole.fit()
    cut = Trainer(config(tmp_path / "cut", batch_size=80), data=data, **quiet)
    _interrupt_after(cut, 6)  # epoch 2, batch 2
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    path = tmp_path / "cut" / "run" / CHECKPOINT
    arrays, meta = checkpoint.load(path)
    images = meta.pop("images")
    assert images == {name: 160 for name in ("loss", "elbo", "rec", "kl")}
    meta["sums"] = {k: v if k == "seconds" else v / 80 for k, v in meta["sums"].items()}
    checkpoint.save(path, arrays, meta)
    resumed = Trainer(config(tmp_path / "cut", batch_size=80), data=data, **quiet)
    resumed.fit(resume=True)
    _check_the_same_train_statistics(mv.runs.read_metrics(whole.run_dir), mv.runs.read_metrics(resumed.run_dir))


def test_the_progress_bar_shows_the_means_over_the_images(tmp_path, monkeypatch):
    """The progress bar shows the running means every 20 batches: at the 21st and last batch of
    an epoch of 201 images in batches of 10 (the last of one image), the means over the 201."""
    from minivae import train as train_module

    shown = []

    class Bar:
        def update(self, n):
            pass

        def set_postfix(self, values, refresh=True):
            shown.append(values)

        def close(self):
            pass

    monkeypatch.setattr(train_module, "_progress_bar", lambda total, desc, enabled: Bar())
    trainer = Trainer(config(tmp_path, epochs=1, batch_size=10, warmup=0), data=small_data(n_train=201),
                      log=lambda m: None)
    terms = _record_per_image_terms(trainer)
    trainer.fit()
    assert len(shown) == 2  # batches 1 and 21
    (want,) = _means_over_images(terms, 201, 1)
    assert shown[-1].keys() == {"loss", "elbo", "kl"}
    for name, value in shown[-1].items():
        assert float(value) == pytest.approx(want[name], abs=0.006), name


def test_the_progress_bar_of_a_resumed_epoch_starts_at_the_batches_done(tmp_path, monkeypatch):
    """Resumed after 3 of its 6 batches, epoch 1's bar starts at 3 and ends full, as epoch 2's."""
    from minivae import train as train_module

    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.n = total, 0

        def update(self, n):
            self.n += n

        def set_postfix(self, values, refresh=True):
            pass

        def close(self):
            pass

    monkeypatch.setattr(train_module, "_progress_bar",
                        lambda total, desc, enabled: bars.append(Bar(total)) or bars[-1])
    cut = Trainer(config(tmp_path), data=small_data(), log=lambda m: None)
    _interrupt_after(cut, 3)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    bars.clear()
    Trainer(config(tmp_path), data=small_data(), log=lambda m: None).fit(resume=True)
    assert [(bar.total, bar.n) for bar in bars] == [(6, 6), (6, 6)]


def _interrupt_after(trainer, n_steps):
    """Make the trainer see a Ctrl-C after ``n_steps`` optimizer steps (as the SIGINT handler would)."""
    step, count = trainer._step, [0]

    def counting(*args):
        out = step(*args)
        count[0] += 1
        if count[0] == n_steps:
            trainer.stop_requested.set()
        return out
    trainer._step = counting


def check_exact_resume(make_config, data, stop_after):
    """Train once straight through and once cut by Ctrl-C after ``stop_after`` steps and resumed:
    the parameters (and buffers) must be bit-identical. ``make_config(name)`` gives each run's
    config; returns the resumed trainer."""
    quiet = dict(data=data, progress=False, log=lambda m: None)
    ref = Trainer(make_config("ref"), **quiet)
    ref.fit()
    cut = Trainer(make_config("cut"), **quiet)
    _interrupt_after(cut, stop_after)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    resumed = Trainer(make_config("cut"), **quiet)
    resumed.fit(resume=True)
    expected = params(ref.model)
    for name, value in expected.items():
        np.testing.assert_array_equal(params(resumed.model)[name], value, err_msg=name)
    return resumed


@pytest.mark.parametrize("stop_after", [3, 6, 8])  # inside epoch 1, at its end, inside epoch 2
def test_resume_after_interrupt_gives_exactly_the_uninterrupted_parameters(tmp_path, stop_after):
    resumed = check_exact_resume(lambda name: config(tmp_path / name, warmup=2), small_data(), stop_after)
    epochs = [json.loads(l)["epoch"] for l in (resumed.run_dir / METRICS).read_text().splitlines()]
    assert epochs == [1, 2]


@pytest.mark.parametrize("stop_after", [3, 8])  # inside epoch 1, inside epoch 2
def test_a_resumed_epoch_reports_the_means_over_all_its_steps(tmp_path, stop_after):
    """The train_* statistics of an epoch cut by Ctrl-C and resumed are those of the run not
    interrupted: the sums of the steps before the cut come back from the checkpoint and join those
    after it, and their mean is over the epoch's 6 steps (a resume that started the sums afresh
    would report a third of the epoch's loss)."""
    check_exact_resume(lambda name: config(tmp_path / name), small_data(), stop_after)

    def summaries(name):
        return [json.loads(l) for l in (tmp_path / name / "run" / METRICS).read_text().splitlines()]

    for want, got in zip(summaries("ref"), summaries("cut"), strict=True):
        train_keys = sorted(k for k in want if k.startswith("train_"))
        assert train_keys and sorted(k for k in got if k.startswith("train_")) == train_keys
        for key in train_keys:
            assert got[key] == pytest.approx(want[key], rel=1e-12), (want["epoch"], key)


def test_resume_extends_a_finished_run(tmp_path):
    data = small_data()
    quiet = dict(data=data, progress=False, log=lambda m: None)
    ref = Trainer(config(tmp_path / "ref", epochs=2, lr_schedule="constant"), **quiet)
    ref.fit()
    short = Trainer(config(tmp_path / "s", epochs=1, lr_schedule="constant"), **quiet)
    short.fit()
    longer = Trainer(config(tmp_path / "s", epochs=2, lr_schedule="constant"), **quiet)
    longer.fit(resume=True)
    for name, value in params(ref.model).items():
        np.testing.assert_array_equal(params(longer.model)[name], value, err_msg=name)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_resume_notes_a_new_length_only_where_it_bends_the_schedule(tmp_path, schedule):
    """The cosine schedule spans the whole run, so a resume with more epochs recomputes it and
    says so; a constant rate does not depend on the length, and nothing is said."""
    data, lines = small_data(), []
    Trainer(config(tmp_path, epochs=1, lr_schedule=schedule), data=data, progress=False, log=lines.append).fit()
    Trainer(config(tmp_path, epochs=2, lr_schedule=schedule), data=data, progress=False,
            log=lines.append).fit(resume=True)
    notes = [line for line in lines if "schedule is recomputed" in line]
    assert len(notes) == (schedule == "cosine")
    if notes:
        assert notes[0].startswith("note: --epochs changed from 1 to 2")


def test_a_refused_resume_notes_no_new_length(tmp_path):
    """The note on a new --epochs came before the checkpoint's model state was loaded: a resume
    refused there (a damaged parameter) printed it, as if the run went on with the new length."""
    data, lines = small_data(), []
    Trainer(config(tmp_path, epochs=1), data=data, progress=False, log=lambda m: None).fit()
    path = tmp_path / "run" / "checkpoint.npz"
    arrays, meta = checkpoint.load(path)
    name = next(name for name in arrays if name.startswith("model/"))
    arrays[name] = np.full_like(arrays[name], np.nan)
    checkpoint.save(path, arrays, meta)
    with pytest.raises(checkpoint.CheckpointError, match="NaN"):
        Trainer(config(tmp_path, epochs=2), data=data, progress=False, log=lines.append).fit(resume=True)
    assert lines == []


def test_a_finished_run_whose_results_are_of_fewer_epochs_is_evaluated_again(tmp_path):
    """A run of 1 epoch extended to 2 and interrupted in its final evaluation keeps the
    results.json of 1 epoch: resumed again, with nothing left to train, it is evaluated anew
    instead of returning the results of the shorter run."""
    from minivae.runs import RESULTS
    from minivae.train import train

    data, quiet = small_data(n_train=100, n_eval=20), dict(progress=False, log=lambda m: None)
    assert train(config(tmp_path, epochs=1), data=data, **quiet)["epochs"] == 1
    Trainer(config(tmp_path, epochs=2), data=data, **quiet).fit(resume=True)  # no final evaluation
    results = train(config(tmp_path, epochs=2), resume=True, data=data, **quiet)
    assert results["epochs"] == 2
    assert json.loads((tmp_path / "run" / RESULTS).read_text())["epochs"] == 2


def test_each_epoch_names_the_training_of_the_run_and_the_device_that_finished_it(tmp_path):
    """A long run may be trained in pieces, on several machines: each epoch's line says which
    training of the run finished it (1, then one more at each resume) and on which device, and
    the checkpoint records the count; a run saved before pieces were counted resumes as its
    second. An epoch cut and resumed is the resume's."""
    data, quiet = small_data(), dict(progress=False, log=lambda m: None)
    run = tmp_path / "run"

    def pieces():  # (a line names a GPU only when one trained the epoch)
        return [(line["epoch"], line["piece"], line["device"], line.get("gpu")) for line in
                map(json.loads, (run / METRICS).read_text().splitlines())]
    Trainer(config(tmp_path, epochs=1), data=data, **quiet).fit()
    assert pieces() == [(1, 1, "cpu", None)] and checkpoint.load(run / CHECKPOINT)[1]["piece"] == 1
    cut = Trainer(config(tmp_path, epochs=3), data=data, **quiet)
    _interrupt_after(cut, 3)  # inside epoch 2
    with pytest.raises(KeyboardInterrupt):
        cut.fit(resume=True)
    Trainer(config(tmp_path, epochs=3), data=data, **quiet).fit(resume=True)
    assert pieces() == [(1, 1, "cpu", None), (2, 3, "cpu", None), (3, 3, "cpu", None)]
    assert checkpoint.load(run / CHECKPOINT)[1]["piece"] == 3
    arrays, meta = checkpoint.load(run / CHECKPOINT)
    del meta["piece"]
    checkpoint.save(run / CHECKPOINT, arrays, meta)
    Trainer(config(tmp_path, epochs=4), data=data, **quiet).fit(resume=True)
    assert pieces()[-1] == (4, 2, "cpu", None)


def test_a_resumed_epoch_counts_the_seconds_before_the_interruption(tmp_path):
    """An epoch cut by Ctrl-C and resumed reports its whole training time: the seconds saved
    in the checkpoint (made 1000 here) plus those after the resume, and its speed over both."""
    data, quiet = small_data(), dict(progress=False, log=lambda m: None)
    cut = Trainer(config(tmp_path), data=data, **quiet)
    _interrupt_after(cut, 3)  # inside epoch 1
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    arrays, meta = checkpoint.load(tmp_path / "run" / CHECKPOINT)
    assert (meta["epoch"], meta["batch"]) == (0, 3) and meta["sums"]["seconds"] < 1000
    meta["sums"]["seconds"] = 1000.0
    checkpoint.save(tmp_path / "run" / CHECKPOINT, arrays, meta)
    Trainer(config(tmp_path), data=data, **quiet).fit(resume=True)
    first = json.loads((tmp_path / "run" / METRICS).read_text().splitlines()[0])
    assert first["epoch"] == 1 and 1000 < first["seconds"] < 1000 + 600
    assert first["images_per_second"] == pytest.approx(300 / first["seconds"])


def test_resume_refuses_a_different_configuration(tmp_path):
    data = small_data()
    quiet = dict(data=data, progress=False, log=lambda m: None)
    Trainer(config(tmp_path, epochs=1), **quiet).fit()
    with pytest.raises(ResumeMismatchError, match="z_dim: 4 -> 5"):
        Trainer(config(tmp_path, epochs=2, z_dim=5), **quiet).fit(resume=True)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    data = small_data()
    trainer = Trainer(config(tmp_path, epochs=2), data=data, progress=False, log=lambda m: None)
    trainer.fit()
    before = (trainer.run_dir / CHECKPOINT).read_bytes()
    again = Trainer(config(tmp_path, epochs=3), data=data, progress=False, log=lambda m: None)
    again.restore()
    again.model.decoder.net[-1].bias.data[:] = np.nan  # a diverged model
    again.restore = lambda: None
    with pytest.raises(TrainingDiverged, match="last good"):
        again.fit(resume=True)
    assert (trainer.run_dir / CHECKPOINT).read_bytes() == before


def test_the_learning_rate_follows_the_cosine_schedule_or_stays_constant(tmp_path):
    data = small_data()
    cosine = Trainer(config(tmp_path, lr=1e-3, lr_min=1e-4), data=data, progress=False, log=lambda m: None)
    total = cosine.total_steps
    assert cosine.learning_rate(0) == 1e-3 and cosine.learning_rate(total) == pytest.approx(1e-4)
    assert cosine.learning_rate(total // 2) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert cosine.learning_rate(2 * total) == cosine.learning_rate(total)  # constant after the end
    constant = Trainer(config(tmp_path, lr_schedule="constant"), data=data, progress=False, log=lambda m: None)
    assert {constant.learning_rate(t) for t in (0, 5, 10 * total)} == {constant.config.lr}
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        Trainer(config(tmp_path, lr_schedule="linear"), data=data, progress=False, log=lambda m: None)
    # The default lr_min of 1e-4 with a smaller lr would make the "decay" a rise.
    with pytest.raises(ValueError, match=r"^lr 5e-05 is below lr_min 0.0001: the cosine schedule would raise"):
        Trainer(config(tmp_path, lr=5e-5), data=data, progress=False, log=lambda m: None)
    assert Trainer(config(tmp_path, lr=5e-5, lr_schedule="constant"), data=data, progress=False).learning_rate(0) == 5e-5
    # An lr equal to lr_min is no rise: the cosine schedule stays at it.
    flat = Trainer(config(tmp_path, lr=1e-4, lr_min=1e-4), data=data, progress=False, log=lambda m: None)
    assert {flat.learning_rate(t) for t in range(flat.total_steps + 1)} == {1e-4}


def test_the_cosine_schedule_spans_the_steps_of_all_the_epochs(tmp_path):
    """The rate each optimizer step runs with: lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2 at
    step t, with T = 12 the steps of the run (2 epochs of 300 images in batches of 50), counted
    here from the settings rather than read from the trainer (whose own count the schedule uses)."""
    trainer = Trainer(config(tmp_path, lr=1e-3, lr_min=1e-4), data=small_data(), progress=False,
                      log=lambda m: None)
    rates, step = [], trainer.optimizer.step
    trainer.optimizer.step = lambda *args, **kw: rates.append(trainer.optimizer.lr) or step(*args, **kw)
    trainer.fit()
    want = [1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * t / 12)) / 2 for t in range(12)]
    assert rates == pytest.approx(want, rel=1e-12)


def test_the_staged_schedule_runs_stages_of_1_3_9_epochs_and_adam_takes_the_run_s_epsilon(tmp_path):
    """With lr_schedule "stages" the steps of epoch 1 run at lr, of epochs 2-4 at lr 10^(-1/7)
    and of epochs 5-13 at lr 10^(-2/7) (the IWAE paper's schedule, whatever the number of
    epochs); the optimizer steps with the run's adam_eps."""
    trainer = Trainer(config(tmp_path, epochs=5, lr=1e-3, lr_schedule="stages", adam_eps=1e-4), data=small_data(),
                      progress=False, log=lambda m: None)
    rates, step = [], trainer.optimizer.step
    trainer.optimizer.step = lambda *args, **kw: rates.append(trainer.optimizer.lr) or step(*args, **kw)
    trainer.fit()
    stage_of_epoch = [0, 1, 1, 1, 2]
    want = [1e-3 * 10 ** (-stage_of_epoch[t // 6] / 7) for t in range(30)]  # 6 steps an epoch
    assert rates == pytest.approx(want, rel=1e-14)
    assert trainer.optimizer.eps == 1e-4
    default = Trainer(config(tmp_path / "default"), data=small_data(), progress=False, log=lambda m: None)
    assert default.optimizer.eps == 1e-8


@pytest.mark.parametrize("clip", [dict(clip_norm=0.05), dict(clip_value=1e-3), dict(clip_norm=0.05, clip_value=1e-3)])
def test_the_optimizer_steps_on_the_gradients_clipped_as_the_run_says(tmp_path, clip):
    """Every update sees gradients of joint norm at most clip_norm (norm first) and entries within
    [-clip_value, clip_value]; the same run unclipped has larger gradients, and ends elsewhere."""
    def fit_recording(folder, **settings):
        trainer = Trainer(config(tmp_path / folder, epochs=2, **settings), data=small_data(),
                          progress=False, log=lambda m: None)
        seen, step = [], trainer.optimizer.step

        def recording(*args, **kw):
            grads = [p.grad for p in trainer.model.parameters()]
            seen.append((math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads)),
                         max(float(np.abs(g).max()) for g in grads)))
            return step(*args, **kw)
        trainer.optimizer.step = recording
        trainer.fit()
        return np.array(seen), np.concatenate([p.data.ravel() for p in trainer.model.parameters()])

    (norms, largest), weights = (a.T if a.ndim == 2 else a for a in fit_recording("clipped", **clip))
    (free_norms, free_largest), free_weights = (a.T if a.ndim == 2 else a for a in fit_recording("free"))
    assert len(norms) == len(free_norms) == 12  # 6 steps an epoch
    if "clip_norm" in clip:
        assert (norms <= clip["clip_norm"] * (1 + 1e-5)).all() and (free_norms > clip["clip_norm"]).all()
    if "clip_value" in clip:
        # (the float32 bound rounds up)
        assert (largest <= clip["clip_value"] * (1 + 1e-7)).all() and (free_largest > clip["clip_value"]).all()
    assert not np.array_equal(weights, free_weights)


def test_adam_decays_the_weights_by_the_run_s_weight_decay(tmp_path):
    """weight_decay is Adam's coupled L2 term (tests/test_optim.py checks its update against
    PyTorch's): the trainer's Adam takes it, and its weights end smaller than without it."""
    def fit(folder, **settings):
        trainer = Trainer(config(tmp_path / folder, epochs=2, **settings), data=small_data(), progress=False,
                          log=lambda m: None)
        trainer.fit()
        return trainer
    decayed, free = fit("decayed", weight_decay=50.0), fit("free")
    assert (decayed.optimizer.weight_decay, free.optimizer.weight_decay) == (50.0, 0.0)
    norms = [math.sqrt(sum(float((p.data.astype(np.float64) ** 2).sum()) for p in t.model.parameters()))
             for t in (decayed, free)]
    assert norms[0] < 0.99 * norms[1]


def test_a_run_with_rmsprop_steps_with_it_and_resumes_to_the_same_bits(tmp_path):
    """optimizer "rmsprop": the trainer's optimizer is RMSprop with the run's momentum and weight
    decay (tests/test_optim.py checks its update against PyTorch's), whose two state arrays a
    checkpoint carries: a run cut inside its second epoch and resumed ends with the bits of the
    uninterrupted one."""
    settings = dict(optimizer="rmsprop", momentum=0.9, weight_decay=1e-4, lr=1e-3, warmup=2)
    resumed = check_exact_resume(lambda name: config(tmp_path / name, **settings), small_data(), 8)
    opt = resumed.optimizer
    assert isinstance(opt, mv.optim.RMSprop) and (opt.momentum, opt.weight_decay, opt.eps) == (0.9, 1e-4, 1e-8)
    assert all(set(s) == {"step", "square_avg", "momentum_buffer"} for s in opt.state)


LADDER = dict(model="ladder", hidden=(16, 8), model_options={"z_dims": (4, 3)})


def test_a_pass_sets_each_batch_norm_to_the_statistics_of_all_the_training_images(tmp_path, monkeypatch):
    """bn_statistics "pass": at the end of each epoch, every batch normalization of the Ladder VAE
    holds the mean and the unbiased variance of its input over one batch of all the training
    images (recorded as the pass feeds them in, and computed here in float64); the validation
    ELBO of that epoch and its checkpoint are of those statistics."""
    seen, forward = [], mv.nn.BatchNorm1d.forward

    def recording(self, x):
        if self.momentum == 1.0:  # the pass
            seen.append((self, np.array(x.data, dtype=np.float64)))
        return forward(self, x)
    monkeypatch.setattr(mv.nn.BatchNorm1d, "forward", recording)
    trainer = Trainer(config(tmp_path, epochs=1, bn_statistics="pass", **LADDER), data=small_data(),
                      progress=False, log=lambda m: None)
    trainer.fit()
    norms = [m for m in trainer.model.modules() if isinstance(m, mv.nn.BatchNorm1d)]
    assert norms and {id(m) for m, _ in seen} == {id(m) for m in norms} and len(seen) == len(norms)
    for m, x in seen:
        assert len(x) == 300 and m.momentum == 0.1  # every training image; the momentum restored
        np.testing.assert_allclose(m.running_mean, x.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m.running_var, x.var(0, ddof=1), rtol=1e-4, atol=1e-6)
    arrays, _ = checkpoint.load(trainer.run_dir / CHECKPOINT)
    for name, buffer in trainer.model.named_buffers():
        np.testing.assert_array_equal(arrays[f"model/{name}"], buffer)


def test_the_running_statistics_are_not_those_of_a_pass(tmp_path):
    """The default keeps PyTorch's running averages: at the end of the run they are not the
    statistics of the pass, which a run with bn_statistics "pass" holds (so the setting shows)."""
    def norms(**kw):
        trainer = Trainer(config(tmp_path / str(len(kw)), epochs=1, **LADDER, **kw), data=small_data(),
                          progress=False, log=lambda m: None)
        trainer.fit()
        return [m.running_var.copy() for m in trainer.model.modules() if isinstance(m, mv.nn.BatchNorm1d)]
    for running, passed in zip(norms(), norms(bn_statistics="pass")):
        assert np.abs(running - passed).max() > 1e-3


def test_a_batch_norm_pass_is_not_counted_as_a_training_batch(tmp_path):
    """The pass sets the statistics and is no step: after 2 epochs of 6 steps each batch
    normalization has tracked 12 batches, as in a run without the pass, and its checkpoint says
    so (the pass at the end of each epoch made it 14)."""
    trainer = Trainer(config(tmp_path, epochs=2, bn_statistics="pass", **LADDER), data=small_data(),
                      progress=False, log=lambda m: None)
    trainer.fit()
    arrays, _ = checkpoint.load(trainer.run_dir / CHECKPOINT)
    counts = {name: int(a) for name, a in arrays.items() if name.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {2 * len(trainer.loader)} == {12}


@pytest.mark.parametrize("stop_after", [3, 8])  # inside epoch 1, inside epoch 2
def test_a_run_with_a_batch_norm_pass_resumes_to_the_same_bits(tmp_path, stop_after):
    check_exact_resume(lambda name: config(tmp_path / name, bn_statistics="pass", **LADDER), small_data(),
                       stop_after)


def test_a_batch_norm_pass_for_a_model_without_batch_norm_is_refused(tmp_path):
    """(It would be ignored without a word.)"""
    with pytest.raises(DataMismatchError, match="^--bn-statistics pass: model 'vae' has no batch normalization"):
        Trainer(config(tmp_path, bn_statistics="pass"), data=small_data(), progress=False)
    assert not (tmp_path / "run").exists()


def test_the_step_schedule_decays_by_lr_gamma_every_lr_step_epochs(tmp_path):
    """lr_schedule "step": the steps of epochs 1-2 run at lr, of epochs 3-4 at lr * lr_gamma, of
    epoch 5 at lr * lr_gamma^2 (the auxiliary models' paper anneals by 0.75 every 200 epochs)."""
    trainer = Trainer(config(tmp_path, epochs=5, lr=1e-3, lr_schedule="step", lr_step=2, lr_gamma=0.5),
                      data=small_data(), progress=False, log=lambda m: None)
    rates, step = [], trainer.optimizer.step
    trainer.optimizer.step = lambda *args, **kw: rates.append(trainer.optimizer.lr) or step(*args, **kw)
    trainer.fit()
    assert rates == [1e-3] * 12 + [5e-4] * 12 + [2.5e-4] * 6  # 6 steps an epoch


@pytest.mark.parametrize("setting, error", [
    (dict(eval_k=-1), "eval_k must be at least 0, got -1"),
    (dict(lr_step=0), "lr_step must be at least 1, got 0"), (dict(eval_k=2.5), "eval_k must be an integer, got 2.5"),
    (dict(trace_every=-1), "trace_every must be at least 0, got -1"),
    (dict(epochs=0, lr_schedule="constant"), "epochs must be at least 1, got 0"),
    (dict(warmup=1.5), "warmup must be an integer, got 1.5"),
    (dict(seed=-1), "seed must be at least 0, got -1"), (dict(seed=2.5), "seed must be an integer, got 2.5"),
    (dict(seed=2**64), r"seed must be an integer in \[0, 2\*\*64\), got 18446744073709551616"),
    # Adam's step of a weight whose gradients were all 0 so far (from a pixel that is 0 in every
    # image of the batch) is 0 / (0 + eps): NaN at eps 0, a divergence after the folder was written.
    (dict(adam_eps=0.0), r"adam_eps 0.0: Adam divides by the root of the second moment plus adam_eps, so "
                         r"without a positive one a weight whose gradient is 0 becomes NaN; give a positive "
                         r"finite adam_eps \(1e-8 by default, the IWAE paper's 1e-4\)"),
    (dict(adam_eps=math.inf), r"adam_eps inf: .*; give a positive finite adam_eps .*"),
    (dict(adam_eps="1e-4"), "adam_eps must be a real number, got '1e-4'"),
    (dict(clip_norm=-1.0), r"clip_norm -1.0: give a finite number >= 0 \(0: no clipping\)"),
    (dict(clip_value=math.nan), r"clip_value nan: give a finite number >= 0 \(0: no clipping\)"),
    (dict(clip_value="1"), "clip_value must be a real number, got '1'"),
    (dict(weight_decay=-1e-5), r"weight_decay -1e-05: give a finite number >= 0 \(0: none\)"),
    (dict(optimizer="sgd"), "optimizer must be one of 'adam', 'rmsprop', got 'sgd'"),
    (dict(optimizer="rmsprop", momentum=1.0), r"momentum 1.0: give a number in \[0, 1\) \(0: none\)"),
    # Each optimizer's setting given to the other would be ignored without a word.
    (dict(momentum=0.9), "momentum 0.9 is RMSprop's .*: give momentum 0 with optimizer 'adam'"),
    (dict(optimizer="rmsprop", adam_eps=1e-4), "adam_eps 0.0001 is Adam's epsilon; optimizer 'rmsprop' takes "
                                               "PyTorch's eps 1e-8: leave adam_eps at 1e-08"),
    (dict(warmup_start=1.5), r"warmup_start 1.5: give a number in \[0, 1\], the fraction of beta that the KL "
                             r"warm-up starts from \(None: 1 / warmup\)"),
    (dict(warmup_start=math.nan), r"warmup_start nan: give a number in \[0, 1\], .*"),
    (dict(warmup_start="0"), "warmup_start must be a real number, got '0'"),
    (dict(warmup=0, warmup_start=0.0), r"warmup_start 0.0 starts a KL warm-up, and warmup is 0 \(none\); give "
                                       r"a warmup above 0 too, or leave warmup_start None"),
    (dict(warmup_unit="batch"), "warmup_unit must be one of 'epoch', 'step', got 'batch'"),
    (dict(warmup=0, warmup_unit="step"), r"warmup_unit 'step' counts the steps of a KL warm-up, and warmup is 0 "
                                         r"\(none\); give a warmup above 0 too, or leave warmup_unit 'epoch'"),
    # A model without labels would ignore it without a word.
    (dict(labelled_batch_size=1), "labelled_batch_size 1: model 'vae' is not semi-supervised and takes no "
                                  "labelled images, so it would be ignored; leave labelled_batch_size None"),
    (dict(model="m2", n_labelled=20, labelled_batch_size=21),
     r"labelled_batch_size 21 is more than the 20 labelled images \(n_labelled\); give at most 20"),
    (dict(model="m2", labelled_batch_size=0), "labelled_batch_size must be at least 1, got 0"),
    (dict(model="m2", labelled_batch_size=2.0), "labelled_batch_size must be an integer, got 2.0"),
    (dict(model="nope"), r"unknown model 'nope'; choose from \[.*\]"),
    (dict(bn_statistics="collected"), "bn_statistics must be one of 'running', 'pass', got 'collected'"),
    (dict(model="nope", labelled_batch_size=1), r"unknown model 'nope'; choose from \[.*\]")])
def test_the_counts_of_the_loop_are_checked_before_anything_is_loaded(tmp_path, monkeypatch, setting, error):
    """As the command line checks them; a bad eval_k used to fail after the whole training."""
    from minivae import train as train_module

    def no_data(verbose=True):
        raise AssertionError("data loaded for a config that cannot train")
    monkeypatch.setattr(train_module, "load_mnist", no_data)
    with pytest.raises((TypeError, ValueError), match=f"^{error}$"):
        Trainer(config(tmp_path, **setting), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_config_of_batches_drawn_by_another_generator_is_refused(tmp_path):
    """A config.json of a run whose batches were drawn with PCG64 (before Philox) cannot start a
    run here: its batches would not be those its name promises."""
    with pytest.raises(ValueError, match="^this minivae draws the training batches with 'philox', not 'pcg64'$"):
        Trainer(config(tmp_path, data_rng="pcg64"), data=small_data(), progress=False)


def test_the_validation_images_are_scored_on_their_own_fixed_draw(tmp_path):
    """Each epoch's valid_elbo is over the validation set's one fixed binarization, not the test
    set's draw: with the same grey images in both splits, the two draws differ."""
    from minivae.data import binarize_eval

    data = small_data(n_train=100, n_eval=20)
    data.x_test = data.x_valid
    trainer = Trainer(config(tmp_path), data=data, progress=False, log=lambda m: None)
    np.testing.assert_array_equal(trainer.x_valid, binarize_eval(data.x_valid, "valid"))
    assert not np.array_equal(trainer.x_valid, binarize_eval(data.x_test, "test"))


def test_kl_warmup_counts_epochs():
    c = TrainConfig(beta=2.0, warmup=4)
    assert [kl_weight(c, e) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kl_weight(TrainConfig(beta=3.0, warmup=0), 0) == 3.0


def test_the_default_warmup_start_keeps_the_bits_of_the_runs_before_it():
    """Without a warmup_start the weight is beta * min(1, (u + 1) / warmup) to the bit, as it was
    before the setting existed: 1 / warmup + u / warmup rounds otherwise (at warmup 3, u 4), and
    a resumed run would leave the bits of its first piece."""
    for beta in (1.0, 0.5, 3.0):
        for warmup in range(1, 60):
            c = TrainConfig(beta=beta, warmup=warmup)
            assert [kl_weight(c, u) for u in range(200)] == [beta * min(1.0, (u + 1) / warmup) for u in range(200)]


@pytest.mark.parametrize("settings, unit_steps, schedule", [
    # The Ladder VAE authors' code: once an epoch, from 0, min(1, e / 200).
    (dict(warmup=200, warmup_start=0.0), False, lambda e: min(1, e / 200)),
    # Rezende & Mohamed (2015), planar flows: at every step t of the run, min(1, 0.01 + t / 10000).
    (dict(warmup=10000, warmup_unit="step", warmup_start=0.01), True, lambda t: min(1, 0.01 + t / 10000))],
    ids=["ladder-vae", "planar-flows"])
def test_the_warmup_follows_the_papers_schedules(tmp_path, settings, unit_steps, schedule):
    """Each optimizer step's KL weight is the paper's number, by the epoch of the step (6 steps an
    epoch here) or by the step itself."""
    trainer = Trainer(config(tmp_path, **settings), data=small_data(), progress=False, log=lambda m: None)
    steps = range(12_000)
    assert [trainer.kl_weight_of_step(t) for t in steps] == [schedule(t if unit_steps else t // 6) for t in steps]


def _record_betas(trainer):
    """Record the KL weight that ``trainer``'s model is given at each training step, into the
    returned list."""
    betas, loss = [], trainer.model.loss

    def recording(x, noise, beta=None, **labelled):
        betas.append(beta)
        return loss(x, noise, beta, **labelled)
    trainer.model.loss = recording
    return betas


@pytest.mark.parametrize("settings, betas, logged", [
    (dict(warmup=8, warmup_unit="step", warmup_start=0.25), [2 * min(1, 0.25 + t / 8) for t in range(12)],
     [1.75, 2.0]),
    (dict(warmup=4), [0.5] * 6 + [1.0] * 6, [0.5, 1.0])], ids=["by-step", "by-epoch"])
def test_the_model_s_loss_gets_the_kl_weight_of_each_step(tmp_path, settings, betas, logged):
    """Warm-up by steps: every step's loss is weighted by its own KL weight (by epochs: that of
    its epoch); an epoch's metrics log that of its last step, beta = 2."""
    trainer = Trainer(config(tmp_path, beta=2.0, **settings), data=small_data(), progress=False,
                      log=lambda m: None)
    seen = _record_betas(trainer)
    trainer.fit()
    assert seen == betas  # 6 steps an epoch
    assert [line["beta"] for line in mv.runs.read_metrics(trainer.run_dir)] == logged


@pytest.mark.parametrize("stop_after", [3, 8])  # inside epoch 1, inside epoch 2
def test_a_run_warmed_up_by_steps_resumes_inside_an_epoch_to_the_same_bits(tmp_path, stop_after):
    check_exact_resume(lambda name: config(tmp_path / name, warmup=8, warmup_unit="step", warmup_start=0.1),
                       small_data(), stop_after)


def test_a_run_saved_before_the_warmup_start_and_unit_resumes_as_it_would_have(tmp_path, monkeypatch):
    """A config.json and checkpoint without warmup_start and warmup_unit (a run trained before
    they existed) read as the default warm-up, by epochs from 1 / warmup: its resume records them
    so and ends with the bits of the same run not interrupted."""
    from minivae import cli, runs, train as train_module

    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    argv = ["train", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "0",
            "--lr-schedule", "constant", "--no-progress"]
    assert cli.main([*argv, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    old = tmp_path / "old"
    assert cli.main([*argv, "--epochs", "1", "--out", str(old)]) == 0
    arrays, meta = checkpoint.load(old / CHECKPOINT)
    saved = json.loads((old / "config.json").read_text())
    for document in (meta["config"], saved):
        assert (document.pop("warmup_start"), document.pop("warmup_unit")) == (None, "epoch")
    checkpoint.save(old / CHECKPOINT, arrays, meta)
    (old / "config.json").write_text(json.dumps(saved))
    assert cli.main(["train", "--out", str(old), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert json.loads((old / "config.json").read_text()) == dict(saved, epochs=3, warmup_start=None,
                                                                  warmup_unit="epoch")
    resumed, whole = (runs.read_checkpoint(folder)[0] for folder in (old, tmp_path / "whole"))
    assert resumed.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)


def test_the_iwae_bound_gets_no_kl_warmup_and_logs_no_beta(tmp_path, monkeypatch):
    """The IWAE bound has no KL term: the default `train --model iwae` records no warm-up and logs
    no beta; a warm-up in a config is not applied; a run that recorded the old default resumes."""
    from minivae import cli, runs, train as train_module

    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    out = tmp_path / "iwae"
    argv = ["train", "--model", "iwae", "--hidden", "8", "--z-dim", "2", "--batch-size", "50", "--eval-k", "0",
            "--out", str(out), "--no-progress"]
    assert cli.main([*argv, "--epochs", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["warmup"] == 0
    assert [line for line in runs.read_metrics(out) if "beta" in line] == []
    arrays, meta = checkpoint.load(out / CHECKPOINT)
    meta["config"]["warmup"] = 10
    checkpoint.save(out / CHECKPOINT, arrays, meta)
    assert cli.main([*argv, "--epochs", "2", "--resume"]) == 0
    trainer = Trainer(config(tmp_path, iw_k=3, warmup=4), data=small_data(), progress=False, log=lambda m: None)
    assert {trainer.kl_weight_of_step(step) for step in range(30)} == {1.0}


def test_cli_train_one_short_epoch_and_eval(tmp_path, monkeypatch, capsys):
    from minivae import cli, train as train_module

    data = small_data(n_train=100, n_eval=20)
    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: data)
    out = tmp_path / "cli"
    code = cli.main(["train", "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--batch-size", "50",
                     "--out", str(out), "--eval-k", "5", "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["eval_k"] == 5 and results["test_nll"] > 0
    assert "epoch   1" in capsys.readouterr().out
    import minivae.data as data_module
    monkeypatch.setattr(data_module, "load_mnist", lambda verbose=True: data)
    assert cli.main(["eval", str(out), "--k", "4", "--no-progress"]) == 0
    first = json.loads((out / "eval_k4.json").read_text())
    assert first["n_test"] == 20
    assert cli.main(["eval", str(out), "--k", "4", "--device", "cpu", "--no-progress"]) == 0
    assert json.loads((out / "eval_k4.json").read_text()) == first  # the same noise, the same numbers
    import minivae.gpu
    if not minivae.gpu.is_available():  # --device gpu where there is none: one error line, exit 2
        capsys.readouterr()
        assert cli.main(["eval", str(out), "--k", "4", "--device", "gpu", "--no-progress"]) == 2
        assert capsys.readouterr().err.startswith("minivae: error: the GPU was asked for but")


def test_gradient_tracing_logs_norms_and_survives_resume(tmp_path):
    data = small_data()
    quiet = dict(data=data, progress=False, log=lambda m: None)
    cut = Trainer(config(tmp_path, trace_every=2), **quiet)
    _interrupt_after(cut, 9)  # inside epoch 2 (6 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    Trainer(config(tmp_path, trace_every=2), **quiet).fit(resume=True)
    lines = [json.loads(l) for l in (tmp_path / "run" / METRICS).read_text().splitlines()]
    traces = [m for m in lines if "step" in m]
    assert [m["step"] for m in traces] == [0, 2, 4, 6, 8, 10]  # once each, none lost or repeated
    assert all(v > 0 for k, v in traces[0].items() if k.startswith(("grad_norm/", "update_ratio/")))
    summaries = [m for m in lines if "valid_elbo" in m]
    assert [m["epoch"] for m in summaries] == [1, 2]
    assert 0 <= summaries[-1]["active_units"] <= 4 and len(summaries[-1]["kl_per_dim"]) == 4


def test_traces_written_after_the_checkpoint_by_a_crashed_process_are_not_kept(tmp_path):
    """A process that dies (no Ctrl-C, no save) in epoch 2 has traced its steps 6 and 8 after the
    checkpoint of step 6: the resume drops those lines, step 6 included, and writes them again."""
    data = small_data()
    quiet = dict(data=data, progress=False, log=lambda m: None)
    crashed = Trainer(config(tmp_path, trace_every=2), **quiet)
    step = crashed._step

    def dies_after_step_8(xb, beta, t):
        out = step(xb, beta, t)
        if t == 8:
            raise RuntimeError("killed")
        return out
    crashed._step = dies_after_step_8
    with pytest.raises(RuntimeError, match="killed"):
        crashed.fit()
    assert [m.get("step") for m in map(json.loads, (tmp_path / "run" / METRICS).read_text().splitlines())
            ] == [0, 2, 4, None, 6, 8]
    Trainer(config(tmp_path, trace_every=2), **quiet).fit(resume=True)
    lines = [json.loads(l) for l in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert [m["step"] for m in lines if "step" in m] == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_training_gives_ctrl_c_back_to_the_handler_it_found(tmp_path, signum):
    """The loop defers Ctrl-C (and SIGTERM) to the end of a step only while it runs: afterwards
    (the final evaluation, the caller's code) the signal goes to the handler that was there before."""
    def handler(signum, frame):
        pass
    previous = signal.signal(signum, handler)
    try:
        Trainer(config(tmp_path, epochs=1), data=small_data(n_train=100, n_eval=20), progress=False,
                log=lambda m: None).fit()
        assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, previous)


class _GuardedTestSet(types.SimpleNamespace):
    """MNIST-like data whose test arrays record every read (``reads``)."""

    def __getattribute__(self, name):
        if name in ("x_test", "y_test"):
            object.__getattribute__(self, "reads").append(name)
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("model, extra", [("vae", {}), ("m2", {"n_labelled": 20})])
def test_training_never_reads_the_test_set(tmp_path, model, extra):
    # Model selection and early monitoring may use the validation split only; the test images
    # and labels are read once, by the final evaluation.
    data = _GuardedTestSet(reads=[], **vars(small_data()))
    trainer = Trainer(config(tmp_path, model=model, **extra), data=data, progress=False, log=lambda *a: None)
    trainer.fit()
    assert data.reads == []
    results = trainer.final_evaluation()
    assert "x_test" in data.reads and math.isfinite(results["test_elbo"])


@pytest.mark.parametrize("label, span", [(12, "0 to 12"), (10, "0 to 10"), (-1, "-1 to 3")])
def test_training_labels_outside_the_models_classes_are_refused(tmp_path, label, span):
    """A semi-supervised run checks its labels once, when it picks the labelled subset (the
    per-step one-hot of labels already on the GPU does not check them). The classes of a model
    of 10 are 0 to 9: a label of 10 is one past them."""
    data = small_data(n_train=100, n_eval=20)
    data.y_train = np.where(data.y_train == 4, label, data.y_train)
    with pytest.raises(ValueError, match=rf"training labels run from {span}, outside the 10 classes"):
        Trainer(config(tmp_path, model="m2", n_labelled=20), data=data, progress=False)
