"""ADGM and SDGM (Maaloe et al. 2016), unsupervised and semi-supervised, on small made-up data.

The references are written out in NumPy with each graphical model's parents spelled out:
    ADGM  p(x | z[, y]),    p(a | z[, y], x);      SDGM  p(x | z[, y], a),  p(a | z[, y]);
    both  q(a | x), q(z | x, a[, y]), q(y | x, a).
"""
import json
import math

import numpy as np
import pytest

import minivae as mv
from minivae.models import ADGM, SDGM, SemiSupervisedADGM, SemiSupervisedSDGM
from minivae.distributions import one_hot
from minivae.random import Generator
from minivae.train import Trainer

from test_m2 import binary, np_bernoulli, np_kl_std, np_log_normal, np_log_softmax, np_logsumexp, ssl_config
from test_train import small_data

A, Z, D = 2, 3, 10


def small(cls, **kw):
    mv.nn.init.manual_seed(0)
    return cls(x_dim=D, a_dim=A, z_dim=Z, hidden=(6, 5), **kw).astype(np.float64)


def hand_terms(model, x, y, eps_a, eps_z, analytic):
    """(log p(x | ...), log p(a | ...) - log q(a | x) + z part) by hand; y one-hot (B, K) or None."""
    t = mv.tensor
    mu_a, logvar_a = (v.data for v in model.q_a(model.q_a_net(x)))
    a = mu_a + np.exp(0.5 * logvar_a) * eps_a                        # (S, B, A)
    with_y = [] if y is None else [y]
    mu_z, logvar_z = (v.data for v in model.q_z(model.q_z_net(x, t(a), *with_y)))
    z = mu_z + np.exp(0.5 * logvar_z) * eps_z                        # (S, B, Z)
    if model.skip:   # SDGM: p(x | z, y, a), p(a | z, y)
        logits = model.logits(model.p_x_net(t(z), *with_y, t(a))).data
        mu_pa, logvar_pa = (v.data for v in model.p_a(model.p_a_net(t(z), *with_y)))
    else:            # ADGM: p(x | z, y), p(a | z, y, x)
        logits = model.logits(model.p_x_net(t(z), *with_y)).data
        mu_pa, logvar_pa = (v.data for v in model.p_a(model.p_a_net(t(z), *with_y, x)))
    latent = np_log_normal(a, mu_pa, logvar_pa) - np_log_normal(a, mu_a, logvar_a)
    if analytic:
        latent = latent - np_kl_std(mu_z, logvar_z)
    else:
        latent = latent + np_log_normal(z, 0.0, 0.0) - np_log_normal(z, mu_z, logvar_z)
    return np_bernoulli(logits, x.data), latent, a


@pytest.mark.parametrize("cls", [ADGM, SDGM])
def test_unsupervised_log_weights_and_elbo_by_hand(cls):
    model = small(cls)
    x = binary(np.random.default_rng(0), (4, D))
    g = Generator(3)
    eps_a, eps_z = g.normal((5, 4, A), dtype=np.float64), g.normal((5, 4, Z), dtype=np.float64)
    rec, latent, _ = hand_terms(model, x, None, eps_a, eps_z, analytic=False)
    np.testing.assert_allclose(model.log_weights(x, 5, Generator(3)).data, rec + latent, rtol=1e-12)
    rec, latent, _ = hand_terms(model, x, None, eps_a, eps_z, analytic=True)
    got_rec, got_kl = model.elbo(x, Generator(3), samples=5)
    np.testing.assert_allclose(got_rec.data, rec.mean(0), rtol=1e-12)
    np.testing.assert_allclose(got_kl.data, -latent.mean(0), rtol=1e-12)


@pytest.mark.parametrize("cls", [SemiSupervisedADGM, SemiSupervisedSDGM])
def test_semi_supervised_bounds_equal_a_loop_over_labels(cls):
    k, s, b = 3, 2, 4
    model = small(cls, num_classes=k, mc_samples=s)
    x = binary(np.random.default_rng(1), (b, D))
    g = Generator(7)  # a is drawn first (shared by all labels), then z for every label
    eps_a, eps_z = g.normal((s, b, A), dtype=np.float64), g.normal((k, s, b, Z), dtype=np.float64)
    per_label = []
    for label in range(k):
        rec, latent, a = hand_terms(model, x, one_hot(np.full(b, label), k, x), eps_a, eps_z[label], True)
        per_label.append(rec + latent - math.log(k))                 # L(x, y) per sample, (S, B)
    log_q = np_log_softmax(model.class_logits(model.classifier(x, mv.tensor(a))).data)  # (S, B, K)
    expected = sum(np.exp(log_q[..., y]) * (per_label[y] - log_q[..., y]) for y in range(k)).mean(0)
    np.testing.assert_allclose(model.unlabelled_bound(x, Generator(7)).data, expected, rtol=1e-12)

    labels = np.array([2, 0, 1, 1])
    bound, class_loss = model.labelled_bound(x, labels, Generator(7))
    g = Generator(7)
    eps_a, eps_z = g.normal((s, b, A), dtype=np.float64), g.normal((1, s, b, Z), dtype=np.float64)[0]
    rec, latent, _ = hand_terms(model, x, one_hot(labels, k, x), eps_a, eps_z, True)
    np.testing.assert_allclose(bound.data, (rec + latent).mean(0) - math.log(k), rtol=1e-12)
    np.testing.assert_allclose(class_loss.data, -log_q[:, np.arange(b), labels].mean(0), rtol=1e-12)


@pytest.mark.parametrize("cls", [SemiSupervisedADGM, SemiSupervisedSDGM])
def test_semi_supervised_log_weights_sum_the_labels_out_with_a_shared(cls):
    k, n, b = 3, 4, 2
    model = small(cls, num_classes=k)
    x = binary(np.random.default_rng(2), (b, D))
    g = Generator(5)
    eps_a, eps_z = g.normal((n, b, A), dtype=np.float64), g.normal((k, n, b, Z), dtype=np.float64)
    per_label = np.stack([
        sum(hand_terms(model, x, one_hot(np.full(b, y), k, x), eps_a, eps_z[y], False)[:2]) for y in range(k)
    ]) - math.log(k)
    np.testing.assert_allclose(model.log_weights(x, n, Generator(5)).data, np_logsumexp(per_label), rtol=1e-12)


def test_classify_uses_the_mean_of_q_a():
    model = small(SemiSupervisedSDGM, num_classes=3)
    x = binary(np.random.default_rng(3), (5, D))
    mu_a = model.q_a(model.q_a_net(x))[0]
    expected = model.class_logits(model.classifier(x, mu_a)).data.argmax(-1)
    np.testing.assert_array_equal(model.classify(x), expected)


@pytest.mark.parametrize("cls", [SemiSupervisedADGM, SemiSupervisedSDGM])
def test_class_probabilities_are_q_y_at_the_mean_of_q_a_by_hand(cls):
    """q(y | a, x) at a = the mean of q(a | x), written out with the weights (relu, the hidden
    layers 6 and 5): an argmax alone agrees with too many wrong inputs to show one."""
    model = small(cls, num_classes=3)
    x = binary(np.random.default_rng(3), (5, D))
    p = model.state_dict()
    relu = lambda v: np.maximum(v, 0)
    h = relu(relu(x.data @ p["q_a_net.net.0.weight"] + p["q_a_net.net.0.bias"])
             @ p["q_a_net.net.2.weight"] + p["q_a_net.net.2.bias"])
    mu_a, logvar_a = (h @ p[f"q_a.{v}.weight"] + p[f"q_a.{v}.bias"] for v in ("mu", "logvar"))
    assert np.abs(mu_a - logvar_a).max() > 0.1  # the two differ, so using the wrong one shows
    h = relu(x.data @ p["classifier.inputs.0.weight"] + mu_a @ p["classifier.inputs.1.weight"]
             + p["classifier.inputs.0.bias"])
    h = relu(h @ p["classifier.rest.net.0.weight"] + p["classifier.rest.net.0.bias"])
    logits = h @ p["class_logits.weight"] + p["class_logits.bias"]
    np.testing.assert_allclose(model.class_probabilities(x), np.exp(np_log_softmax(logits)), rtol=1e-12)


@pytest.mark.parametrize("cls, kw", [(ADGM, {}), (SDGM, {"iw_k": 2}), (SemiSupervisedADGM, {"alpha": 3.0}),
                                     (SemiSupervisedSDGM, {"alpha": 3.0})])
def test_auxiliary_loss_gradients_match_finite_differences(cls, kw):
    mv.nn.init.manual_seed(0)
    extra = {"num_classes": 3} if cls.semi_supervised else {}
    model = cls(x_dim=5, a_dim=2, z_dim=2, hidden=(3,), **extra, **kw).astype(np.float64)
    rng = np.random.default_rng(4)
    x = binary(rng, (3, 5))
    labelled = (binary(rng, (2, 5)), np.array([2, 0])) if cls.semi_supervised else None
    for name, p in model.named_parameters():
        fn = ((lambda p_: model.loss(x, Generator(9), beta=0.8, labelled=labelled)[0]) if labelled
              else (lambda p_: model.loss(x, Generator(9), beta=0.8)[0]))
        mv.gradcheck(fn, p)


def test_the_skip_connection_is_where_the_paper_puts_it():
    adgm, sdgm = small(SemiSupervisedADGM, num_classes=4), small(SemiSupervisedSDGM, num_classes=4)
    assert adgm.p_x_net.in_sizes == (Z, 4) and adgm.p_a_net.in_sizes == (Z, 4, D)
    assert sdgm.p_x_net.in_sizes == (Z, 4, A) and sdgm.p_a_net.in_sizes == (Z, 4)
    assert sdgm.q_z_net.in_sizes == (D, A, 4) and sdgm.classifier.in_sizes == (D, A)
    assert small(SDGM).p_x_net.in_sizes == (Z, A) and small(ADGM).p_a_net.in_sizes == (Z, D)
    images = sdgm.sample(8, Generator(0), probabilities=False)
    assert images.shape == (8, D) and set(np.unique(images)) <= {0.0, 1.0}


def test_sdgm_semi_supervised_training_reduces_the_loss(tmp_path):
    data = small_data(n_train=200, n_eval=40)
    trainer = Trainer(ssl_config(tmp_path, model="sdgm-ssl", epochs=3, model_options={"a_dim": 4}),
                      data=data, progress=False, log=lambda m: None)
    trainer.fit()
    lines = [json.loads(l) for l in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"] and "valid_error" in lines[-1]
