"""Every model's ``sample`` recomputed by hand in float64 NumPy from its parameters.

Ancestral sampling draws from the generator in a fixed order: the top latent from its prior,
then each latent below it from its conditional given the draws above, then (for binary images)
one uniform per pixel, a pixel being 1 where its uniform is below its Bernoulli mean. The
semi-supervised models take the labels 0, 1, ..., K-1, 0, ... unless given. Each test writes
the networks out as matrix products of the model's weights (batch normalization, where the
model has it, with its running statistics, as sampling runs in eval mode), so a wrong input,
a log-variance used as a mean or a label left out changes the numbers compared here.
"""
import numpy as np
import pytest

import minivae as mv
from minivae.models import (ADGM, M1M2, M2, SDGM, VAE, GumbelSoftmaxVAE, LadderM2, LadderVAE,
                            SemiSupervisedADGM, SemiSupervisedSDGM)
from minivae.random import Generator

D, K = 10, 4


def build(cls, **kw):
    mv.nn.init.manual_seed(0)
    return cls(**dict(dict(x_dim=D, activation="tanh"), **kw)).astype(np.float64)


def state(model):
    """The model's parameters and buffers by name, with running statistics that are not 0 and 1,
    so that a sample made with the batch's statistics (or none) would not match."""
    rng = np.random.default_rng(1)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer[...] = rng.normal(size=buffer.shape)
        elif name.endswith("running_var"):
            buffer[...] = rng.uniform(0.5, 2.0, size=buffer.shape)
    return model.state_dict()


def dense(p, name, x):
    """x W + b of the linear layer ``name`` (no b where it has no bias)."""
    out = x @ p[name + ".weight"]
    return out + p[name + ".bias"] if name + ".bias" in p else out


def normalized(p, name, h):
    """Batch normalization ``name`` with its running statistics, where the layer exists."""
    if name + ".running_mean" not in p:
        return h
    return ((h - p[name + ".running_mean"]) / np.sqrt(p[name + ".running_var"] + 1e-5)
            * p[name + ".weight"] + p[name + ".bias"])


def mlp(p, name, h, final=True):
    """An ``MLP`` named ``name``: its linear layers in order, each followed by batch
    normalization where it has one and tanh (the last one only when ``final``)."""
    positions = sorted(int(k.split(".")[-2]) for k in p
                       if k.startswith(name + ".net.") and k.endswith(".weight")
                       and name + f".net.{k.split('.')[-2]}.running_mean" not in p)
    for i, position in enumerate(positions):
        h = dense(p, f"{name}.net.{position}", h)
        if final or i < len(positions) - 1:
            h = np.tanh(normalized(p, f"{name}.net.{position + 1}", h))
    return h


def joint(p, name, *xs):
    """A ``JointMLP``: tanh(sum_i x_i W_i + b) [normalized], then its remaining layers."""
    h = sum(dense(p, f"{name}.inputs.{i}", x) for i, x in enumerate(xs))
    h = np.tanh(normalized(p, f"{name}.norm", h))
    return mlp(p, f"{name}.rest", h) if any(k.startswith(name + ".rest.") for k in p) else h


def gaussian(p, name, h, noise):
    """A draw mu + e^(logvar / 2) eps from the Gaussian head ``name`` at features h, eps the
    generator's next normals."""
    mu, logvar = dense(p, f"{name}.mu", h), dense(p, f"{name}.logvar", h)
    return mu + np.exp(logvar / 2) * noise.normal(mu.shape, dtype=np.float64)


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def check(model, n, by_hand, **kw):
    """``model.sample`` equals ``by_hand(p, g)`` (the means; g a Generator(5) that the hand draws
    from) and its binary images are the pixels of those means drawn with the next uniforms."""
    p = state(model)
    g = Generator(5)
    means = by_hand(p, g)
    pixels = (g.uniform(means.shape, dtype=np.float64) < means).astype(np.float64)
    np.testing.assert_allclose(model.sample(n, Generator(5), **kw), means, rtol=1e-11, atol=1e-14)
    np.testing.assert_array_equal(model.sample(n, Generator(5), probabilities=False, **kw), pixels)
    assert 0 < pixels.sum() < pixels.size


def labels_of(n, labels=None):
    """The one-hot labels a semi-supervised sample uses: ``labels``, or 0, 1, ..., K-1, 0, ..."""
    return np.eye(K)[np.arange(n) % K if labels is None else labels]


def test_vae_decodes_a_standard_normal_z():
    model = build(VAE, z_dim=3, hidden=(6, 5))
    check(model, 7, lambda p, g: sigmoid(mlp(p, "decoder", g.normal((7, 3), dtype=np.float64), final=False)))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_ladder_vae_samples_down_its_prior_hierarchy(batch_norm):
    model = build(LadderVAE, hidden=(8, 6, 5), z_dims=(4, 3, 2), mlp_layers=1, batch_norm=batch_norm)

    def by_hand(p, g):
        z = g.normal((6, 2), dtype=np.float64)
        for l in (1, 0):
            z = gaussian(p, f"generator.priors.{l}.head", mlp(p, f"generator.priors.{l}.trunk", z), g)
        return sigmoid(mlp(p, "generator.likelihood", z, final=False))

    check(model, 6, by_hand)


def test_the_gumbel_vae_decodes_uniform_one_hot_codes():
    model = build(GumbelSoftmaxVAE, hidden=(6,), n_vars=3, n_classes=K)

    def by_hand(p, g):
        codes = np.eye(K)[g.gumbel((9, 3, K), dtype=np.float64).argmax(-1)]
        return sigmoid(mlp(p, "decoder", codes.reshape(9, 3 * K), final=False))

    check(model, 9, by_hand)


@pytest.mark.parametrize("cls", [ADGM, SDGM])
def test_the_unsupervised_auxiliary_models_sample_z_and_for_the_sdgm_a(cls):
    model = build(cls, a_dim=2, z_dim=3, hidden=(6, 5))

    def by_hand(p, g):
        z = g.normal((5, 3), dtype=np.float64)
        if cls is ADGM:  # p(x | z): a is no part of the generative model's path to x
            return sigmoid(dense(p, "logits", joint(p, "p_x_net", z)))
        a = gaussian(p, "p_a", joint(p, "p_a_net", z), g)  # p(a | z), then p(x | z, a)
        return sigmoid(dense(p, "logits", joint(p, "p_x_net", z, a)))

    check(model, 5, by_hand)


@pytest.mark.parametrize("cls", [SemiSupervisedADGM, SemiSupervisedSDGM])
@pytest.mark.parametrize("labels", [None, np.array([3, 3, 1, 0, 2, 1])])
def test_the_semi_supervised_auxiliary_models_sample_with_the_labels(cls, labels):
    model = build(cls, a_dim=2, z_dim=3, hidden=(6, 5), num_classes=K)

    def by_hand(p, g):
        y, z = labels_of(6, labels), g.normal((6, 3), dtype=np.float64)
        if cls is SemiSupervisedADGM:
            return sigmoid(dense(p, "logits", joint(p, "p_x_net", z, y)))
        a = gaussian(p, "p_a", joint(p, "p_a_net", z, y), g)
        return sigmoid(dense(p, "logits", joint(p, "p_x_net", z, y, a)))

    check(model, 6, by_hand, labels=labels)


@pytest.mark.parametrize("labels", [None, np.array([2, 0, 0, 3, 1, 2])])
def test_m2_decodes_z_with_the_labels(labels):
    model = build(M2, z_dim=3, hidden=(6, 5), num_classes=K)

    def by_hand(p, g):
        z = g.normal((6, 3), dtype=np.float64)
        return sigmoid(dense(p, "out", joint(p, "decoder", z, labels_of(6, labels))))

    check(model, 6, by_hand, labels=labels)


def test_the_gaussian_m2_gives_the_means_of_its_likelihood():
    model = build(M2, z_dim=3, hidden=(6,), num_classes=K, likelihood="gaussian")
    p = state(model)
    z = Generator(5).normal((6, 3), dtype=np.float64)
    want = dense(p, "out.mu", joint(p, "decoder", z, labels_of(6)))
    np.testing.assert_allclose(model.sample(6, Generator(5)), want, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("labels", [None, np.array([1, 1, 0, 3, 2, 0])])
def test_the_ladder_m2_samples_down_its_hierarchy_with_the_labels(batch_norm, labels):
    model = build(LadderM2, hidden=(8, 6, 5), z_dims=(4, 3, 2), num_classes=K, batch_norm=batch_norm)

    def by_hand(p, g):
        y, z = labels_of(6, labels), g.normal((6, 2), dtype=np.float64)
        z = gaussian(p, "priors.1.head", joint(p, "priors.1.trunk", z, y), g)  # p(z_2 | z_3, y)
        z = gaussian(p, "priors.0.head", mlp(p, "priors.0.trunk", z), g)  # p(z_1 | z_2)
        return sigmoid(dense(p, "likelihood_logits", joint(p, "likelihood", z, y)))

    check(model, 6, by_hand, labels=labels)


@pytest.mark.parametrize("labels", [None, np.array([0, 2, 2, 1, 3, 3])])
def test_m1m2_decodes_the_mean_of_p_z1_with_m1(labels):
    mv.nn.init.manual_seed(0)
    m1 = VAE(x_dim=D, z_dim=4, hidden=(6,), activation="tanh")
    model = M1M2(m1=m1, z_dim=3, hidden=(5,), num_classes=K, activation="tanh").astype(np.float64)

    def by_hand(p, g):
        z2 = g.normal((6, 3), dtype=np.float64)
        z1 = dense(p, "m2.out.mu", joint(p, "m2.decoder", z2, labels_of(6, labels)))
        return sigmoid(mlp(p, "m1.decoder", z1, final=False))

    check(model, 6, by_hand, labels=labels)
