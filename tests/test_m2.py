"""M2 (Kingma et al. 2014) and the semi-supervised trainer, on small made-up data.

The reference values are written out in NumPy from the model's own networks, one label at a
time, so the batched enumeration of the labels is compared with an explicit loop.
"""
import json
import math

import numpy as np
import pytest

import minivae as mv
from minivae.gradcheck_cases import MODEL_SIZES, SMALL_MODEL
from minivae.models import M2, MODELS, build_model
from minivae.distributions import one_hot
from minivae.models.common import JointMLP
from minivae.random import Generator
from minivae.evaluate import classification_error
from minivae.runs import METRICS, TrainConfig
from minivae.train import LabelledBatches, Trainer

from test_train import check_exact_resume, small_data

LOG_2PI = math.log(2 * math.pi)


# ----- NumPy references (float64) -------------------------------------------------------------
def np_bernoulli(logits, x):
    """log Bernoulli(x; sigmoid(logits)) summed over the last axis."""
    return (x * logits - np.logaddexp(0.0, logits)).sum(-1)


def np_log_normal(z, mu, logvar):
    """log N(z; mu, e^logvar) summed over the last axis."""
    return -0.5 * ((z - mu) ** 2 * np.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def np_kl_std(mu, logvar):
    """KL(N(mu, e^logvar) || N(0, I)) summed over the last axis."""
    return 0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar).sum(-1)


def np_log_softmax(logits):
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def np_logsumexp(a, axis=0):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def binary(rng, shape):
    return mv.tensor((rng.random(shape) < 0.5).astype(np.float64))


def small_m2(k=4, s=2, **kw):
    mv.nn.init.manual_seed(0)
    return M2(x_dim=10, z_dim=3, hidden=(6,), num_classes=k, mc_samples=s, **kw).astype(np.float64)


def m2_label_terms(model, x, label, eps, analytic=True):
    """(log p(x | y, z), latent part) of M2 for one label per example, by hand; eps (S, B, D)."""
    y = one_hot(label, model.num_classes, x)
    mu, logvar = (t.data for t in model.encode(x, y))
    z = mu + np.exp(0.5 * logvar) * eps
    out = model.decode(mv.tensor(z), y)
    if model.likelihood == "gaussian":
        rec = np_log_normal(x.data, out[0].data, out[1].data)
    else:
        rec = np_bernoulli(out.data, x.data)
    if analytic:
        return rec, -np_kl_std(mu, logvar)
    return rec, np_log_normal(z, 0.0, 0.0) - np_log_normal(z, mu, logvar)


# ----- the model ------------------------------------------------------------------------------
def test_the_label_prior_is_minus_log_k_per_example():
    model = small_m2(k=4)
    x = binary(np.random.default_rng(0), (5, 10))
    log_py = model.log_prior_y(x)
    assert log_py.shape == (5,)  # a vector, one value per example, not a scalar
    np.testing.assert_array_equal(log_py.data, np.full(5, -math.log(4)))


def test_joint_mlp_is_one_linear_on_the_concatenation():
    mv.nn.init.manual_seed(0)
    net = JointMLP((5, 3), (4,), activation="tanh").astype(np.float64)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 6, 5)), rng.standard_normal((6, 3))
    W = np.concatenate([net.inputs[0].weight.data, net.inputs[1].weight.data])
    expected = np.tanh(np.concatenate([a, np.broadcast_to(b, (2, 6, 3))], -1) @ W + net.inputs[0].bias.data)
    np.testing.assert_allclose(net(mv.tensor(a), mv.tensor(b)).data, expected, rtol=1e-12)
    assert net.inputs[1].bias is None  # one bias for the sum


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_enumerated_unlabelled_bound_equals_a_loop_over_labels(likelihood):
    k, s, b = 4, 2, 5
    model = small_m2(k, s, likelihood=likelihood)
    rng = np.random.default_rng(1)
    x = binary(rng, (b, 10)) if likelihood == "bernoulli" else mv.tensor(rng.standard_normal((b, 10)))
    got = model.unlabelled_bound(x, Generator(7)).data
    eps = Generator(7).normal((k, s, b, 3), dtype=np.float64)
    log_q = np_log_softmax(model.classifier(x).data)
    expected = np.zeros(b)
    for label in range(k):  # U(x) = sum_y q(y|x) [L(x, y) - log q(y|x)]
        rec, latent = m2_label_terms(model, x, np.full(b, label), eps[label])
        bound = rec.mean(0) + latent - math.log(k)
        expected += np.exp(log_q[:, label]) * (bound - log_q[:, label])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    rec, kl = model.elbo(x, Generator(7))  # the same bound, split for the evaluation code
    np.testing.assert_allclose((rec - kl).data, expected, rtol=1e-12)


def test_labelled_bound_and_classification_loss_by_hand():
    k, s, b = 4, 3, 6
    model = small_m2(k, s)
    x = binary(np.random.default_rng(2), (b, 10))
    labels = np.array([0, 3, 1, 1, 2, 3])
    bound, class_loss = model.labelled_bound(x, labels, Generator(3), beta=0.5)
    eps = Generator(3).normal((1, s, b, 3), dtype=np.float64)[0]
    rec, latent = m2_label_terms(model, x, labels, eps)
    np.testing.assert_allclose(bound.data, rec.mean(0) + 0.5 * latent - math.log(k), rtol=1e-12)
    log_q = np_log_softmax(model.classifier(x).data)
    np.testing.assert_allclose(class_loss.data, -log_q[np.arange(b), labels], rtol=1e-12)


def test_loss_combines_the_bounds_with_alpha():
    model = small_m2(alpha=7.0)
    rng = np.random.default_rng(3)
    x, xl, labels = binary(rng, (5, 10)), binary(rng, (4, 10)), np.array([0, 1, 2, 3])
    loss, stats = model.loss(x, Generator(4), labelled=(xl, labels))
    g = Generator(4)  # the loss draws the unlabelled noise first, then the labelled noise
    u = model.unlabelled_bound(x, g).data.mean()
    bound, ce = model.labelled_bound(xl, labels, g)
    np.testing.assert_allclose(loss.data, -u - bound.data.mean() + 7.0 * ce.data.mean(), rtol=1e-12)
    assert stats["loss"] == pytest.approx(loss.item()) and stats["elbo"] == pytest.approx(u)
    with pytest.raises(ValueError, match="alpha"):
        small_m2().loss(x, Generator(4), labelled=(xl, labels))


def test_labelled_weight_image_weighs_each_labelled_image_as_one_unlabelled_image():
    """labelled_weight "image": the labelled terms scaled by N_l / N, so that the classifier's
    weight is alpha_scale (0.1) and the labelled bound's N_l / N, as in Kingma et al. 2014's
    objective divided by N; before set_data_sizes the loss refuses to guess the sizes."""
    rng = np.random.default_rng(3)
    x, xl, labels = binary(rng, (5, 10)), binary(rng, (4, 10)), np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"labelled_weight 'image' .* call set_data_sizes\(N, N_labelled\)"):
        small_m2(labelled_weight="image", alpha=7.0).loss(x, Generator(4), labelled=(xl, labels))
    model = small_m2(labelled_weight="image")
    model.set_data_sizes(200, 8)
    loss, _ = model.loss(x, Generator(4), labelled=(xl, labels))
    g = Generator(4)
    u = model.unlabelled_bound(x, g).data.mean()
    bound, ce = model.labelled_bound(xl, labels, g)
    np.testing.assert_allclose(loss.data, -u - 8 / 200 * bound.data.mean() + 0.1 * ce.data.mean(), rtol=1e-12)
    with pytest.raises(ValueError, match="labelled_weight must be one of 'batch', 'image', got 'images'"):
        small_m2(labelled_weight="images")


def test_log_weights_sum_the_labels_out_exactly():
    k, b, n = 4, 5, 3
    model = small_m2(k)
    x = binary(np.random.default_rng(4), (b, 10))
    got = model.log_weights(x, n, Generator(5)).data
    eps = Generator(5).normal((k, n, b, 3), dtype=np.float64)
    per_label = np.stack([sum(m2_label_terms(model, x, np.full(b, y), eps[y], analytic=False))
                          for y in range(k)]) - math.log(k)
    np.testing.assert_allclose(got, np_logsumexp(per_label, axis=0), rtol=1e-12)
    # In chunks of one sample each: chunk j is the one-sample draw at generator offset j.
    model.max_rows = k * b
    chunked = model.log_weights(x, n, Generator(5)).data
    for j in range(n):
        np.testing.assert_array_equal(chunked[j], model.log_weights(x, 1, Generator(5, offset=j)).data[0])


def test_m2_loss_gradients_match_finite_differences():
    mv.nn.init.manual_seed(0)
    model = M2(x_dim=6, z_dim=2, hidden=(4,), num_classes=3, alpha=2.0, mc_samples=2).astype(np.float64)
    rng = np.random.default_rng(5)
    x, xl, labels = binary(rng, (4, 6)), binary(rng, (3, 6)), np.array([2, 0, 1])
    for name, p in model.named_parameters():
        mv.gradcheck(lambda p_: model.loss(x, Generator(9), beta=0.7, labelled=(xl, labels))[0], p)


def test_classify_and_the_classification_error():
    model = small_m2(k=4)
    x = binary(np.random.default_rng(6), (10, 10))
    predicted = model.classify(x)
    np.testing.assert_array_equal(predicted, model.classifier(x).data.argmax(-1))
    labels = predicted.copy()
    labels[[1, 4, 9]] = (labels[[1, 4, 9]] + 1) % 4  # three wrong labels out of ten
    for batch_size in (3, 10, 100):
        assert classification_error(model, x.data, labels, batch_size=batch_size) == pytest.approx(0.3)


def small_semi_supervised(name):
    mv.nn.init.manual_seed(0)  # M1+M2 builds its M1 with the global initializer
    model = build_model(name, **dict(SMALL_MODEL, **MODEL_SIZES.get(name, {})),
                        rng=np.random.default_rng(0)).astype(np.float64)
    model.set_data_sizes(100, 10)
    return model


@pytest.mark.parametrize("name", sorted(n for n, cls in MODELS.items() if getattr(cls, "semi_supervised", False)))
def test_labels_must_be_one_per_row(name):
    # One label for five rows would broadcast: every row scored (or compared) with that label.
    model = small_semi_supervised(name)
    x = binary(np.random.default_rng(1), (5, model.x_dim))
    for labels in (np.array([1]), np.array([1, 2, 0])):
        message = f"5 rows but {len(labels)} labels: give one label per row"
        with pytest.raises(ValueError, match=message):
            model.loss(x, Generator(0), labelled=(x, labels))
        with pytest.raises(ValueError, match=message):
            classification_error(model, x.data, labels)
        with pytest.raises(ValueError, match=f"4 rows but {len(labels)} labels"):
            model.sample(4, Generator(0), labels=labels)
    with pytest.raises(TypeError, match=r"labelled must be a pair \(x_l, labels\), got a Tensor"):
        model.loss(x, Generator(0), labelled=x)
    with pytest.raises(TypeError, match=r"labelled must be a pair \(x_l, labels\), got a tuple"):
        model.loss(x, Generator(0), labelled=(x, np.arange(5) % 4, None))


def test_sample_cycles_through_the_labels():
    model = small_m2(k=4)
    images = model.sample(6, Generator(0))
    assert images.shape == (6, 10) and np.all((images > 0) & (images < 1))
    binary_images = model.sample(6, Generator(0), probabilities=False)
    assert set(np.unique(binary_images)) <= {0.0, 1.0}


# ----- the trainer ----------------------------------------------------------------------------
def ssl_config(tmp_path, **kw):
    base = dict(model="m2", epochs=2, batch_size=50, hidden=(32,), z_dim=4, eval_k=0, n_labelled=25,
                out=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


def test_labelled_batches_are_a_function_of_seed_and_step():
    data = small_data()
    idx = np.arange(0, 60, 2)
    a = LabelledBatches(data.x_train[idx], data.y_train[idx], 10, seed=3)
    b = LabelledBatches(data.x_train[idx], data.y_train[idx], 10, seed=3)
    for step in (5, 0, 4, 3):  # any order: no state carried from one step to the next
        np.testing.assert_array_equal(a(step)[0], b(step)[0])
    pass_labels = np.sort(np.concatenate([a(step)[1] for step in range(3)]))
    np.testing.assert_array_equal(pass_labels, np.sort(data.y_train[idx]))  # one pass: every label once
    assert not np.array_equal(a(0)[0], a(3)[0])  # the next pass: new order and new binarization


def test_the_labelled_batches_draw_from_a_seed_of_their_own():
    """The labelled loader is seeded with SeedSequence([seed, streams.LABELLED_LOADER]), not with
    the run's seed, which keys the unlabelled loader's Philox order and bits: over the same
    images the two would draw the same orders and the same bits."""
    from minivae import streams
    from minivae.data import MinibatchLoader

    data = small_data()
    idx = np.arange(0, 60, 2)
    x, y = data.x_train[idx], data.y_train[idx]
    batches = LabelledBatches(x, y, 10, seed=3)
    derived = int(np.random.SeedSequence([3, streams.LABELLED_LOADER]).generate_state(1)[0])
    for step, (xb, yb) in enumerate(MinibatchLoader(x, 10, seed=derived, y=y).epoch(0)):
        np.testing.assert_array_equal(batches(step)[0], xb)
        np.testing.assert_array_equal(batches(step)[1], yb)
    xr, yr = next(iter(MinibatchLoader(x, 10, seed=3, y=y).epoch(0)))
    assert not np.array_equal(batches(0)[1], yr)


def test_the_trainer_takes_the_labelled_batches_of_the_runs_step_count(tmp_path, monkeypatch):
    """Step t of the run (0-based, counted over all its epochs) gets the labelled batch of step t,
    so each pass over the unlabelled images meets labelled batches not seen before (numbered
    within the epoch, the second pass would repeat the first's batches in the same order)."""
    trainer = Trainer(ssl_config(tmp_path), data=small_data(), progress=False, log=lambda m: None)
    asked, batch_of_step = [], LabelledBatches.__call__
    monkeypatch.setattr(LabelledBatches, "__call__", lambda self, step: asked.append(step) or batch_of_step(self, step))
    trainer.fit()
    assert asked == list(range(12))  # 2 epochs of 300 images in batches of 50


def test_semi_supervised_training_reduces_the_loss_and_reports_errors(tmp_path):
    data = small_data()
    trainer = Trainer(ssl_config(tmp_path, epochs=4), data=data, progress=False, log=lambda m: None)
    assert trainer.model.alpha == pytest.approx(0.1 * 300 / 25)  # 0.1 N / N_l
    trainer.fit()
    lines = [json.loads(l) for l in (trainer.run_dir / METRICS).read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["valid_elbo"] > lines[0]["valid_elbo"]
    assert {"train_class_loss", "train_labelled_bound", "valid_error"} <= set(lines[0])
    assert lines[-1]["valid_error"] <= lines[0]["valid_error"]
    results = trainer.final_evaluation()
    assert 0.0 <= results["test_error"] < 0.5 and np.isfinite(results["test_elbo"])


@pytest.mark.parametrize("labelled_batch_size, labelled_sizes", [
    (None, [30, 10, 30, 10, 30]),  # by default as many as an unlabelled batch
    (7, [7, 7, 7, 7, 7])])  # of 40: 7, 7, 7, 7, 7, 5 a pass, the 5 in the second epoch
def test_semi_supervised_train_statistics_are_means_over_the_images_of_each_stream(tmp_path, labelled_batch_size,
                                                                                   labelled_sizes):
    """130 images in batches of 30 (30, 30, 30, 30, 10) and 40 labels in labelled batches of 30
    (30, 10, 30, 10, ...), or of the labelled_batch_size given: train_elbo and train_loss are
    means over the unlabelled images, train_labelled_bound and train_class_loss over the labelled
    ones, each image counted once."""
    trainer = Trainer(ssl_config(tmp_path, epochs=2, batch_size=30, n_labelled=40, warmup=0,
                                 labelled_batch_size=labelled_batch_size),
                      data=small_data(n_train=130), progress=False, log=lambda m: None)
    model, steps = trainer.model, []
    loss = model.loss

    def recording(x, noise, beta=None, labelled=None):
        out = loss(x, noise, beta, labelled)  # only the training steps call it
        steps.append((len(x), len(labelled[0]), {k: float(v) for k, v in out[1].items()}))
        return out
    model.loss = recording
    trainer.fit()
    assert [(n, n_l) for n, n_l, _ in steps[:5]] == list(zip([30, 30, 30, 30, 10], labelled_sizes))
    for epoch, line in enumerate(mv.runs.read_metrics(trainer.run_dir)):
        epoch_steps = steps[5 * epoch:5 * epoch + 5]
        for name, labelled in (("loss", False), ("elbo", False), ("labelled_bound", True), ("class_loss", True)):
            sizes = np.array([n_l if labelled else n for n, n_l, _ in epoch_steps])
            want = np.dot(sizes, [stats[name] for _, _, stats in epoch_steps]) / sizes.sum()
            assert line[f"train_{name}"] == pytest.approx(want, rel=1e-9), (epoch, name)


def test_the_labelled_subset_comes_from_the_training_labels_only(tmp_path, monkeypatch):
    from minivae import train as train_module

    seen = {}

    def spy(labels, n_labelled, seed):
        seen.update(labels=labels, n=n_labelled, seed=seed)
        return np.arange(n_labelled)

    monkeypatch.setattr(train_module, "balanced_labelled_subset", spy)
    data = small_data()
    Trainer(ssl_config(tmp_path, seed=4), data=data, progress=False, log=lambda m: None)
    assert seen["labels"] is data.y_train and seen["n"] == 25 and seen["seed"] == 4


@pytest.mark.parametrize("stop_after", [3, 6])  # inside epoch 1, inside epoch 2
@pytest.mark.parametrize("labelled_batch_size", [None, 1])
def test_semi_supervised_resume_gives_exactly_the_uninterrupted_parameters(tmp_path, stop_after, labelled_batch_size):
    data = small_data(n_train=200, n_eval=20)  # 4 batches per epoch
    check_exact_resume(lambda name: ssl_config(tmp_path / name, warmup=2, labelled_batch_size=labelled_batch_size),
                       data, stop_after)


def _labelled_batches_fed(trainer):
    """Record the labels of the labelled batch that every training step of ``trainer`` hands its
    model's loss, into the returned list."""
    fed, loss = [], trainer.model.loss

    def recording(x, noise, beta=None, labelled=None):
        fed.append(np.array(labelled[1]))
        return loss(x, noise, beta, labelled)
    trainer.model.loss = recording
    return fed


def test_a_labelled_batch_size_of_1_feeds_one_labelled_image_every_step(tmp_path):
    """labelled_batch_size 1 (the M2 authors' code): each of the 12 steps (2 epochs of 300 images
    in batches of 50) takes 50 unlabelled images and 1 labelled one; the first 10 steps take the
    10 labelled images once each."""
    trainer = Trainer(ssl_config(tmp_path, n_labelled=10, labelled_batch_size=1), data=small_data(),
                      progress=False, log=lambda m: None)
    fed = _labelled_batches_fed(trainer)
    trainer.fit()
    assert [len(labels) for labels in fed] == [1] * 12
    np.testing.assert_array_equal(np.sort(np.concatenate(fed[:10])), np.sort(trainer.labelled.loader.y))


@pytest.mark.parametrize("batch_size, n_labelled, sizes", [(50, 25, {25}), (20, 30, {20, 10})])
def test_the_default_labelled_batch_is_the_unlabelled_batch_or_all_the_labels(tmp_path, batch_size, n_labelled,
                                                                              sizes):
    """Not given (None, as in every config saved before the setting existed), the labelled batch
    holds min(batch_size, n_labelled) images (the last of a pass fewer): the run ends with the
    bits of the run given that size, and a run given another size ends elsewhere."""
    def fit(folder, **settings):
        trainer = Trainer(ssl_config(tmp_path / folder, batch_size=batch_size, n_labelled=n_labelled, **settings),
                          data=small_data(), progress=False, log=lambda m: None)
        fed = _labelled_batches_fed(trainer)
        trainer.fit()
        return [len(labels) for labels in fed], trainer.model.state_dict()

    (default_sizes, default), (given_sizes, given) = fit("default"), fit("given", labelled_batch_size=max(sizes))
    assert default_sizes == given_sizes and set(default_sizes) == sizes
    for name, value in default.items():
        np.testing.assert_array_equal(given[name], value, err_msg=name)
    other = fit("other", labelled_batch_size=max(sizes) - 1)[1]
    assert any(not np.array_equal(other[name], value) for name, value in default.items())


def test_cli_trains_m2_with_n_labelled_and_reports_the_test_error(tmp_path, monkeypatch, capsys):
    from minivae import cli, train as train_module
    import minivae.data as data_module

    data = small_data(n_train=100, n_eval=20)
    monkeypatch.setattr(train_module, "load_mnist", lambda verbose=True: data)
    monkeypatch.setattr(data_module, "load_mnist", lambda verbose=True: data)
    out = tmp_path / "cli"
    code = cli.main(["train", "--model", "m2", "--n-labelled", "10", "--epochs", "1", "--hidden", "16",
                     "--z-dim", "2", "--batch-size", "50", "--out", str(out), "--eval-k", "3",
                     "--set", "alpha=1.5", "--no-progress"])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["n_labelled"] == 10
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["test_error"] <= 1.0 and results["test_nll"] > 0
    assert "valid error" in capsys.readouterr().out
    assert cli.main(["eval", str(out), "--k", "2", "--no-progress"]) == 0
    assert "test_error" in json.loads((out / "eval_k2.json").read_text())
    assert build_model("m2", alpha=1.5).alpha == 1.5
    # minivae sample draws one class per row of its grid (it drew 0, 1, ..., 9, 0, ... into
    # rows of 8, as no row or column held one class).
    drawn = []
    real = M2.sample
    monkeypatch.setattr(M2, "sample", lambda self, n, noise, labels=None: drawn.append(labels) or real(
        self, n, noise, labels=labels))
    assert cli.main(["sample", str(out), "--n", "20"]) == 0
    np.testing.assert_array_equal(drawn[-1], np.arange(20) // 2)


def test_the_data_sizes_are_positive_integers():
    model = M2(x_dim=12, z_dim=2, hidden=(8,), rng=0)
    with pytest.raises(ValueError, match="^n_labelled must be at least 1, got 0"):
        model.set_data_sizes(100, 0)  # (a ZeroDivisionError before)
    with pytest.raises(TypeError, match="^n_total must be an integer, got 100.5"):
        model.set_data_sizes(100.5, 10)
