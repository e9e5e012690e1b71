"""Ladder M2 (M2 with a Ladder VAE encoder/decoder) on small made-up data.

The reference bounds are an explicit loop over the labels, one label at a time through the
model's own networks, with the top-down pass (precision-weighted merges, draws, KLs) written out
in NumPy. With batch normalization in training mode the statistics of the enumerated pass are
taken over all K * B rows, so a label's value depends on the other labels' rows: the per-label
loop is compared in eval mode (running statistics) or without batch normalization, and the
training-mode pass against the reference implementation's way (x repeated K times, one batch).
"""
import json
import math

import numpy as np
import pytest
from test_m2 import (binary, np_bernoulli, np_kl_std, np_log_normal, np_log_softmax, np_logsumexp,
                     ssl_config)
from test_train import check_exact_resume, params, small_data

import minivae as mv
from minivae import nn
from minivae.cli import main
from minivae.models import M2, LadderM2, build_model
from minivae.distributions import one_hot
from minivae.models.common import JointMLP
from minivae.random import Generator
from minivae.evaluate import classification_error
from minivae.runs import METRICS
from minivae.train import Trainer


def np_kl_normal(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) summed over the last axis."""
    return 0.5 * (logvar_p - logvar_q + (np.exp(logvar_q) + (mu_q - mu_p) ** 2) * np.exp(-logvar_p)
                  - 1.0).sum(-1)


def small_ladder_m2(k=4, s=2, layers=3, **kw):
    mv.nn.init.manual_seed(0)
    kw = dict(dict(x_dim=10, hidden=(8, 6, 5)[:layers], z_dims=(4, 3, 2)[:layers], num_classes=k,
                   mc_samples=s, activation="tanh"), **kw)
    return LadderM2(**kw).astype(np.float64)


def label_terms(model, x, label, eps):
    """For one label per example, by hand: (log p(x | z_1, y), -sum of the KLs, log p(z) - log q(z))
    per sample and example, (S, B). ``eps`` lists the noise of each layer, top first, (S, B, d_l)."""
    y = one_hot(np.full(x.shape[0], label), model.num_classes, x)
    bottom_up = [(mu.data, lv.data) for mu, lv in model.bottom_up(x, y)]
    mu, lv = bottom_up[-1]
    z = mu + np.exp(0.5 * lv) * eps[0]
    kl = np_kl_std(mu, lv)
    log_ratio = np_log_normal(z, 0.0, 0.0) - np_log_normal(z, mu, lv)
    for l, e in zip(reversed(range(len(bottom_up) - 1)), eps[1:]):
        mu_p, lv_p = (t.data for t in model.prior(l, mv.tensor(z), y))
        mu_hat, lv_hat = bottom_up[l]
        var_q = 1.0 / (np.exp(-lv_hat) + np.exp(-lv_p))  # precision weighting, the textbook form
        mu_q, lv_q = (mu_hat * np.exp(-lv_hat) + mu_p * np.exp(-lv_p)) * var_q, np.log(var_q)
        kl = kl + np_kl_normal(mu_q, lv_q, mu_p, lv_p)
        z = mu_q + np.exp(0.5 * lv_q) * e
        log_ratio = log_ratio + np_log_normal(z, mu_p, lv_p) - np_log_normal(z, mu_q, lv_q)
    rec = np_bernoulli(model.logits(mv.tensor(z), y).data, x.data)
    return rec, -kl, log_ratio


def enumerated_noise(seed, model, s, b):
    """The noise of one enumerated pass, top layer first: (K, S, B, d_l) per layer."""
    g = Generator(seed)
    return [g.normal((model.num_classes, s, b, d), dtype=np.float64) for d in model.z_dims[::-1]]


def loop_bounds(model, x, seed, s, beta=1.0):
    """U(x) and the (S, B) log-weights with the labels summed out, by an explicit loop over labels."""
    k, b = model.num_classes, x.shape[0]
    eps = enumerated_noise(seed, model, s, b)
    log_q = np_log_softmax(model.classifier(x).data)
    u, per_label_w = np.zeros(b), []
    for label in range(k):  # U(x) = sum_y q(y|x) [L(x, y) - log q(y|x)]
        rec, neg_kl, log_ratio = label_terms(model, x, label, [e[label] for e in eps])
        bound = (rec + beta * neg_kl).mean(0) - math.log(k)
        u += np.exp(log_q[:, label]) * (bound - log_q[:, label])
        per_label_w.append(rec + log_ratio - math.log(k))
    return u, np_logsumexp(np.stack(per_label_w), axis=0)


def warm_running_statistics(model, x):
    """A few training-mode passes, so the running statistics are not the initial 0 and 1."""
    for seed in range(3):
        model.unlabelled_bound(mv.tensor(x.data[::-1] * 0.8 + 0.1 * seed), Generator(seed))


# ----- the bounds -----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_norm", [False, True])
def test_enumerated_unlabelled_bound_equals_a_loop_over_labels(batch_norm):
    """Without batch norm every row is computed on its own in training mode too; with it, eval
    mode (running statistics) makes each row independent of the others, as the loop assumes."""
    k, s, b = 4, 2, 5
    model = small_ladder_m2(k, s, batch_norm=batch_norm)
    x = binary(np.random.default_rng(1), (b, 10))
    if batch_norm:
        warm_running_statistics(model, x)
        model.eval()
    got = model.unlabelled_bound(x, Generator(7), beta=0.6).data
    expected, _ = loop_bounds(model, x, 7, s, beta=0.6)
    np.testing.assert_allclose(got, expected, rtol=1e-11)
    rec, kl = model.elbo(x, Generator(7))  # beta 1, split for the evaluation code
    np.testing.assert_allclose((rec - kl).data, loop_bounds(model, x, 7, s)[0], rtol=1e-11)
    # The importance log-weights sum the labels out exactly (sampled latent terms, not the KLs).
    _, log_w = loop_bounds(model, x, 5, 3)
    np.testing.assert_allclose(model.log_weights(x, 3, Generator(5)).data, log_w, rtol=1e-11)


def test_training_mode_statistics_are_those_of_the_repeated_batch():
    """Batch norm over the enumerated K * B rows: the same as the reference implementation's
    x.repeat(K) batch with labels 0..0, 1..1, ... (one sample, so the noise lines up)."""
    k, b = 4, 5
    model = small_ladder_m2(k, 1)
    x = binary(np.random.default_rng(2), (b, 10))
    rec, latent, _, _ = model._enumerated(x, Generator(3), 1)
    per_label = model._per_label(x, rec, latent, 0.5)
    x_rep = mv.tensor(np.tile(x.data, (k, 1)))
    y_rep = one_hot(np.repeat(np.arange(k), b), k, x).reshape(1, 1, k * b, k)
    rec, latent = model._terms(x_rep, y_rep, {"samples": 1}, Generator(3))
    stacked = (rec + 0.5 * latent).data.reshape(k, 1, b) - math.log(k)
    np.testing.assert_allclose(per_label.data, stacked, rtol=1e-10)
    # Not a per-label loop: in training mode each label's rows see the other labels' statistics.
    eps = enumerated_noise(3, model, 1, b)
    rec0, neg_kl0, _ = label_terms(model, x, 0, [e[0] for e in eps])
    assert not np.allclose(per_label.data[0], rec0 + 0.5 * neg_kl0 - math.log(k))


def test_per_label_statistics_would_erase_the_label():
    """Why the statistics are taken over the enumerated batch: y adds the same y W_y to every row
    of a one-label batch, which that batch's mean subtracts exactly."""
    model = small_ladder_m2(4, 1)
    x = binary(np.random.default_rng(3), (6, 10))
    tops = [model.bottom_up(x, one_hot(np.full(6, label), 4, x))[-1][0].data for label in range(4)]
    for top in tops[1:]:
        np.testing.assert_allclose(top, tops[0], rtol=1e-10, atol=1e-12)  # the label is gone
    enumerated = model.bottom_up(x, mv.tensor(np.eye(4).reshape(4, 1, 1, 4)))[-1][0].data
    assert enumerated.shape == (4, 1, 6, 2)
    assert not np.allclose(enumerated[0], enumerated[1])  # over K * B rows it survives


def test_labelled_bound_by_hand():
    k, s, b = 4, 3, 6
    model = small_ladder_m2(k, s, batch_norm=False)
    x = binary(np.random.default_rng(4), (b, 10))
    labels = np.array([0, 3, 1, 1, 2, 3])
    bound, class_loss = model.labelled_bound(x, labels, Generator(3), beta=0.5)
    g = Generator(3)
    eps = [g.normal((1, s, b, d), dtype=np.float64)[0] for d in model.z_dims[::-1]]
    # No batch norm, so each row is its own: compute the examples of each label together.
    rec, neg_kl = np.zeros((s, b)), np.zeros((s, b))
    for label in range(k):
        rows = labels == label
        r, n, _ = label_terms(model, mv.tensor(x.data[rows]), label, [e[:, rows] for e in eps])
        rec[:, rows], neg_kl[:, rows] = r, n
    np.testing.assert_allclose(bound.data, (rec + 0.5 * neg_kl).mean(0) - math.log(k), rtol=1e-11)
    log_q = np_log_softmax(model.classifier(x).data)
    np.testing.assert_allclose(class_loss.data, -log_q[np.arange(b), labels], rtol=1e-12)


def test_one_layer_without_batch_norm_is_m2():
    """L = 1: q(z|x,y) is the top bottom-up block, p(x|z,y) the likelihood; M2's networks exactly."""
    mv.nn.init.manual_seed(0)
    ladder = LadderM2(x_dim=10, hidden=(6,), z_dims=(3,), num_classes=4, activation="relu",
                      batch_norm=False, alpha=2.0, mc_samples=2).astype(np.float64)
    m2 = M2(x_dim=10, z_dim=3, hidden=(6,), num_classes=4, activation="relu", alpha=2.0,
            mc_samples=2).astype(np.float64)
    for (_, p), (_, q) in zip(ladder.named_parameters(), m2.named_parameters(), strict=True):
        assert p.shape == q.shape
        q.data[...] = p.data
    rng = np.random.default_rng(5)
    x, xl, labels = binary(rng, (5, 10)), binary(rng, (4, 10)), np.array([0, 1, 2, 3])
    got = ladder.loss(x, Generator(4), beta=0.3, labelled=(xl, labels))[0].item()
    assert got == pytest.approx(m2.loss(x, Generator(4), beta=0.3, labelled=(xl, labels))[0].item(), rel=1e-12)
    np.testing.assert_allclose(ladder.log_weights(x, 3, Generator(1)).data,
                               m2.log_weights(x, 3, Generator(1)).data, rtol=1e-12)


def test_ladder_m2_loss_gradients_match_finite_differences():
    """The whole loss (unlabelled + labelled + alpha * classification), batch norm in training
    mode, two stochastic layers, two samples."""
    mv.nn.init.manual_seed(0)
    model = LadderM2(x_dim=6, hidden=(4, 3), z_dims=(2, 2), num_classes=3, activation="tanh",
                     alpha=2.0, mc_samples=2).astype(np.float64)
    rng = np.random.default_rng(6)
    x, xl, labels = binary(rng, (4, 6)), binary(rng, (3, 6)), np.array([2, 0, 1])
    for _, p in model.named_parameters():
        assert mv.gradcheck(lambda p_: model.loss(x, Generator(9), beta=0.7, labelled=(xl, labels))[0], p)


def test_gradcheck_cli_checks_ladder_m2(capsys):
    assert main(["gradcheck", "--model", "ladder-m2"]) == 0
    out = capsys.readouterr().out
    assert "model ladder-m2" in out and "FAIL" not in out


# ----- the model ------------------------------------------------------------------------------
def test_where_the_label_enters_and_batch_norm():
    model = build_model("ladder-m2")
    assert isinstance(model, LadderM2) and model.semi_supervised
    assert model.z_dims == (64, 32, 16)
    joint = {name: m.in_sizes for name, m in model.named_modules() if isinstance(m, JointMLP)}
    # q(z_L | d_2, y) at the top of the bottom-up pass, p(z_2 | z_3, y), p(x | z_1, y).
    assert joint == {"up.2": (128, 10), "priors.1.trunk": (16, 10), "likelihood": (64, 10)}
    # Batch norm in every ladder block (3 up, 2 priors, the likelihood), not in the classifier.
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 6
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.classifier.modules())
    with pytest.raises(ValueError, match="z_dims"):
        LadderM2(hidden=(8, 4), z_dims=(2,))
    with pytest.raises(ValueError, match="iw_k"):
        LadderM2(iw_k=2)


def test_decode_goes_through_the_conditional_means_with_the_label():
    """decode(z_3, y), the deterministic decoder: z_2 = the mean of p(z_2 | z_3, y), z_1 = the mean
    of p(z_1 | z_2), then the logits of p(x | z_1, y), written out with the weights (tanh, one
    hidden layer per block, no batch normalization)."""
    model = small_ladder_m2(k=4, batch_norm=False)
    p = model.state_dict()
    z3 = np.random.default_rng(8).normal(size=(5, 2))
    y = one_hot(np.array([3, 0, 2, 2, 1]), 4, mv.tensor(z3))

    def dense(name, h):
        return h @ p[f"{name}.weight"] + p[f"{name}.bias"] if f"{name}.bias" in p else h @ p[f"{name}.weight"]

    h = np.tanh(dense("priors.1.trunk.inputs.0", z3) + dense("priors.1.trunk.inputs.1", y.data))
    z2 = dense("priors.1.head.mu", h)
    z1 = dense("priors.0.head.mu", np.tanh(dense("priors.0.trunk.net.0", z2)))
    h = np.tanh(dense("likelihood.inputs.0", z1) + dense("likelihood.inputs.1", y.data))
    np.testing.assert_allclose(model.decode(mv.tensor(z3), y).data, dense("likelihood_logits", h), rtol=1e-12)


def test_classify_and_the_classification_error():
    model = small_ladder_m2(k=4)
    x = binary(np.random.default_rng(7), (10, 10))
    probs = model.class_probabilities(x)
    assert probs.shape == (10, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.log(probs), np_log_softmax(model.classifier(x).data), rtol=1e-10)
    predicted = model.classify(x)
    assert predicted.shape == (10,) and predicted.dtype.kind == "i"
    np.testing.assert_array_equal(predicted, probs.argmax(-1))
    labels = predicted.copy()
    labels[[0, 5]] = (labels[[0, 5]] + 1) % 4  # two wrong labels out of ten
    assert classification_error(model, x.data, labels, batch_size=3) == pytest.approx(0.2)


def test_sample_uses_the_labels_and_leaves_the_running_statistics_alone():
    model = small_ladder_m2(k=4)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    images = model.sample(8, Generator(0))
    assert images.shape == (8, 10) and ((images > 0) & (images < 1)).all() and model.training
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    other = model.sample(8, Generator(0), labels=np.full(8, 2))
    assert not np.allclose(images, other)
    assert set(np.unique(model.sample(4, Generator(1), probabilities=False))) <= {0.0, 1.0}


# ----- the trainer ----------------------------------------------------------------------------
def test_ladder_m2_trains_from_the_trainer(tmp_path):
    cfg = ssl_config(tmp_path, model="ladder-m2", epochs=4, hidden=(32, 16), warmup=2, eval_k=3,
                     model_options={"z_dims": [4, 2]})
    trainer = Trainer(cfg, data=small_data(), progress=False, log=lambda m: None)
    assert isinstance(trainer.model, LadderM2) and trainer.model.z_dims == (4, 2)
    trainer.fit()
    lines = [json.loads(l) for l in (trainer.run_dir / METRICS).read_text().splitlines()]
    assert [m["beta"] for m in lines] == [0.5, 1.0, 1.0, 1.0]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["valid_elbo"] > lines[0]["valid_elbo"]
    assert {"train_class_loss", "train_labelled_bound", "valid_error"} <= set(lines[0])
    assert lines[-1]["valid_error"] <= lines[0]["valid_error"]
    results = trainer.final_evaluation()
    assert 0.0 <= results["test_error"] <= 1.0 and np.isfinite(results["test_nll"])


def test_resume_restores_the_running_statistics_too(tmp_path):
    """Batch norm's running statistics are buffers of the checkpoint: a run cut inside epoch 2
    and resumed ends with exactly the parameters and statistics of an uninterrupted one."""
    data = small_data(n_train=200, n_eval=20)  # 4 batches per epoch
    cfg = dict(model="ladder-m2", hidden=(16, 8), model_options={"z_dims": [3, 2]})
    resumed = check_exact_resume(lambda name: ssl_config(tmp_path / name, **cfg), data, 6)
    assert any("running_var" in name for name in params(resumed.model))
