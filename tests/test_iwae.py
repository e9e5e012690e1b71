"""The IWAE with one and two stochastic layers: the registered factory, k = 1 is the ELBO,
k independent samples per example, the bound grows with k, gradients, training."""
import re

import numpy as np
import pytest
from test_train import config, small_data

import minivae as mv
from minivae.gradcheck import gradcheck
from minivae.models import VAE, TwoLayerVAE, build_model, iwae_bound
from minivae.models.iwae import DEFAULT_K
from minivae.random import Generator
from minivae.train import Trainer


def two_layer(**kw):
    mv.nn.init.manual_seed(0)
    kw = dict(dict(x_dim=12, z_dims=(4, 2), blocks=((8,), (5,))), **kw)
    return TwoLayerVAE(**kw).astype(np.float64)


def binary(rng, n, d=12):
    return mv.tensor((rng.random((n, d)) < 0.5).astype(np.float64))


def test_factory_options():
    one = build_model("iwae", z_dim=3, hidden=(8,))
    assert isinstance(one, VAE) and one.iw_k == DEFAULT_K == 5
    assert build_model("iwae", iw_k=50).iw_k == 50 and build_model("iwae", k=1).iw_k == 1
    assert build_model("iwae", iw_k=2).iw_k == 2  # any --iw-k above 1 is the k, the smallest too
    with pytest.raises(ValueError, match="contradicts"):
        build_model("iwae", k=5, iw_k=50)
    two = build_model("iwae", layers=2, z_dim=50, hidden=(200, 200), activation="tanh")
    assert isinstance(two, TwoLayerVAE) and two.z_dims == (100, 50) and two.iw_k == 5
    shapes = {k: v.shape for k, v in two.state_dict().items() if k.endswith("weight")}
    assert shapes["q_z1.trunk.net.0.weight"] == (784, 200) and shapes["q_z2.trunk.net.0.weight"] == (100, 100)
    assert shapes["generator.priors.0.trunk.net.0.weight"] == (50, 100)
    assert shapes["generator.likelihood.net.0.weight"] == (100, 200)
    with pytest.raises(ValueError, match="layers"):
        build_model("iwae", layers=3)


def test_two_layer_log_weights_by_hand(rng):
    model = two_layer()
    x = binary(rng, 3)
    log_w = model.log_weights(x, 2, Generator(4)).data
    g = Generator(4)
    mu1, lv1 = (a.data for a in model.q_z1(x))
    e1 = g.normal((2, 3, 4), dtype=np.float64)
    z1 = mu1 + np.exp(lv1 / 2) * e1
    mu2, lv2 = (a.data for a in model.q_z2(mv.tensor(z1)))
    e2 = g.normal((2, 3, 2), dtype=np.float64)
    z2 = mu2 + np.exp(lv2 / 2) * e2

    def log_normal(z, mu, lv):
        return -0.5 * (np.log(2 * np.pi) + lv + (z - mu) ** 2 / np.exp(lv)).sum(-1)

    mu_p, lv_p = (a.data for a in model.generator.prior(0, mv.tensor(z2)))
    logits = model.generator.logits(mv.tensor(z1)).data
    log_px = (x.data * logits - np.logaddexp(0, logits)).sum(-1)
    expected = (log_px + log_normal(z1, mu_p, lv_p) + log_normal(z2, 0, 0)
                - log_normal(z1, mu1, lv1) - log_normal(z2, mu2, lv2))
    np.testing.assert_allclose(log_w, expected, rtol=1e-10)



def test_the_generative_blocks_mirror_the_inference_blocks():
    """Blocks of unequal widths show the mirror: q(z1 | x) is x -> 8 -> 6 -> z1 and q(z2 | z1)
    z1 -> 5 -> 3 -> z2, so p(z1 | z2) is z2 -> 3 -> 5 -> z1 and p(x | z1) z1 -> 6 -> 8 -> x."""
    model = two_layer(blocks=((8, 6), (5, 3)))
    shapes = {k: v.shape for k, v in model.state_dict().items() if k.endswith("weight")}
    assert [shapes[f"q_z1.trunk.net.{i}.weight"] for i in (0, 2)] == [(12, 8), (8, 6)]
    assert [shapes[f"q_z2.trunk.net.{i}.weight"] for i in (0, 2)] == [(4, 5), (5, 3)]
    assert [shapes[f"generator.priors.0.trunk.net.{i}.weight"] for i in (0, 2)] == [(2, 3), (3, 5)]
    assert shapes["generator.priors.0.head.mu.weight"] == (5, 4)
    assert [shapes[f"generator.likelihood.net.{i}.weight"] for i in (0, 2, 4)] == [(4, 6), (6, 8), (8, 12)]


def test_encode_is_q_z2_at_the_mean_of_q_z1(rng):
    """encode(x), the summary of the top layer for pictures and latent statistics, is q(z2 | z1)
    at z1 = the mean of q(z1 | x), written out with the weights (tanh, one hidden layer each)."""
    model = two_layer()
    x = binary(rng, 3)
    p = model.state_dict()

    def gaussian(name, h):
        h = np.tanh(h @ p[f"{name}.trunk.net.0.weight"] + p[f"{name}.trunk.net.0.bias"])
        return [h @ p[f"{name}.head.{v}.weight"] + p[f"{name}.head.{v}.bias"] for v in ("mu", "logvar")]

    mu1, logvar1 = gaussian("q_z1", x.data)
    assert np.abs(mu1 - logvar1).max() > 0.1  # the two differ, so using the wrong one shows
    for got, want in zip(model.encode(x), gaussian("q_z2", mu1)):
        np.testing.assert_allclose(got.data, want, rtol=1e-12)


def test_decode_goes_through_the_conditional_mean_of_z1(rng):
    """decode(z2), the deterministic decoder of the pictures, gives the logits of p(x | z1) at z1 =
    the mean of p(z1 | z2) (not at its log-variance, nor at a draw)."""
    model = two_layer()
    z2 = rng.normal(size=(3, 2))
    mu_p, logvar_p = (a.data for a in model.generator.prior(0, mv.tensor(z2)))
    assert np.abs(mu_p - logvar_p).max() > 0.1  # the two differ, so using the wrong one shows
    want = model.generator.logits(mv.tensor(mu_p)).data
    np.testing.assert_array_equal(model.decode(mv.tensor(z2)).data, want)


def test_sample_draws_z1_from_its_prior_given_z2():
    """sample() is ancestral sampling: z2 ~ N(0, I) (the generator's first draw), then z1 =
    mu_p + e^(logvar_p / 2) eps ~ p(z1 | z2) (its second draw), never the mean of p(z1 | z2),
    which decode() uses; then the Bernoulli means sigmoid(logits(z1))."""
    model = two_layer()
    g = Generator(6)
    z2 = g.normal((5, 2), dtype=np.float64)
    mu_p, logvar_p = (a.data for a in model.generator.prior(0, mv.tensor(z2)))
    z1 = mu_p + np.exp(logvar_p / 2) * g.normal((5, 4), dtype=np.float64)
    want = 1 / (1 + np.exp(-model.generator.logits(mv.tensor(z1)).data))
    np.testing.assert_allclose(model.sample(5, Generator(6)), want, rtol=1e-12)

def test_k1_bound_is_the_elbo(rng):
    """At k = 1 the IWAE bound is exactly the single-sample ELBO (log-weight), and training with
    k = 1 uses the ELBO with the closed-form KL, equal to it in expectation."""
    model = two_layer()
    x = binary(rng, 4)
    log_w = model.log_weights(x, 1, Generator(3))
    np.testing.assert_array_equal(iwae_bound(log_w).data, log_w.data[0])
    rec, kl = model.elbo(x, Generator(3), samples=20000)
    mc = model.log_weights(x, 20000, Generator(4)).data.mean(axis=0)
    np.testing.assert_allclose(mc, (rec - kl).data, atol=0.05)
    _, stats = model.loss(x, Generator(3))
    assert "elbo" in stats and "bound" not in stats
    one = build_model("iwae", k=1, x_dim=12, z_dim=2, hidden=(8,))
    assert "elbo" in one.loss(mv.tensor(x.data.astype(np.float32)), Generator(0))[1]



@pytest.mark.parametrize("k", [2, 5, 50])
def test_bound_is_the_log_mean_of_the_importance_weights(rng, k):
    """iwae_bound(log_w) = log (1/k) sum_i exp(log_w_i) per example for k > 1 (the mean of the
    weights, not their sum), against NumPy in float64, also for log-weights far below 0."""
    log_w = rng.normal(-300.0, 3.0, size=(k, 4))
    shift = log_w.max(axis=0)
    want = shift + np.log(np.exp(log_w - shift).mean(axis=0))
    np.testing.assert_allclose(iwae_bound(mv.tensor(log_w)).data, want, rtol=1e-13)

def test_k_samples_are_independent_draws_per_example(rng):
    model = two_layer()
    x = binary(rng, 3)
    (z1, z2), _, _ = model._posterior(x, 6, Generator(5))
    assert z1.shape == (6, 3, 4) and z2.shape == (6, 3, 2)
    for z in (z1.data, z2.data):
        for b in range(3):
            assert len({tuple(row) for row in z[:, b]}) == 6  # six different draws for each example
    log_w = model.log_weights(x, 6, Generator(5)).data
    assert log_w.shape == (6, 3) and len(np.unique(log_w)) == 18


@pytest.mark.parametrize("layers", [1, 2])
def test_bound_increases_with_k(rng, layers):
    mv.nn.init.manual_seed(0)
    two_layer_sizes = dict(z1_dim=3, hidden2=(5,)) if layers == 2 else {}
    model = build_model("iwae", layers=layers, x_dim=12, z_dim=2, hidden=(8,), **two_layer_sizes)
    model.astype(np.float64)
    x = binary(rng, 8)
    bounds = [np.mean([iwae_bound(model.log_weights(x, k, Generator(s))).data.mean() for s in range(30)])
              for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2]


def test_two_layer_gradients_match_finite_differences(rng):
    x = binary(rng, 4)
    for kw in ({"iw_k": 3}, {"iw_k": 1}):
        model = two_layer(**kw)
        for _, p in model.named_parameters():
            gradcheck(lambda p_: model.loss(x, Generator(9))[0], p)


def test_one_layer_iwae_gradients_match_finite_differences(rng):
    """The one-layer IWAE trains through its log-weights (``VAE.log_weights``): the gradient
    flows through the k draws z into the encoder, and into the decoder."""
    mv.nn.init.manual_seed(0)
    model = VAE(x_dim=12, z_dim=2, hidden=(5,), activation="tanh", iw_k=3).astype(np.float64)
    x = binary(rng, 4)
    for _, p in model.named_parameters():
        assert gradcheck(lambda p_: model.loss(x, Generator(9))[0], p)


def test_two_layer_iwae_trains_from_the_cli_settings(tmp_path):
    cfg = config(tmp_path, model="iwae", model_options={"layers": 2, "k": 3, "z1_dim": 6, "hidden2": [8]},
                 eval_k=5, epochs=2)
    trainer = Trainer(cfg, data=small_data(), progress=False, log=lambda m: None)
    trainer.fit()
    assert isinstance(trainer.model, TwoLayerVAE) and trainer.model.iw_k == 3
    results = trainer.final_evaluation()
    assert np.isfinite(results["test_nll"]) and results["test_nll"] < -results["test_elbo"] + 1.0
    assert 1 <= results["ess_min"] <= results["ess_median"] <= 5  # of the eval_k = 5 weights


@pytest.mark.parametrize("sizes, named", [
    (dict(z1_dim=20), "layers=1 would leave z1_dim=20 unused"),
    (dict(hidden2=[50, 50]), "layers=1 would leave hidden2=(50, 50) unused"),
    (dict(z1_dim=20, hidden2=(8,)), "layers=1 would leave z1_dim=20 and hidden2=(8,) unused"),
])
def test_the_two_layer_sizes_with_one_layer_are_refused_not_ignored(sizes, named):
    """``iwae(layers=1, z1_dim=20)`` built the one-layer VAE without a word about z1_dim (the
    command line refused it, the Python API took it)."""
    with pytest.raises(ValueError, match=re.escape(named) + ".*give layers=2"):
        build_model("iwae", layers=1, x_dim=12, z_dim=2, hidden=(8,), **sizes)


def test_the_two_layer_sizes_at_their_defaults_build_the_one_layer_model():
    model = build_model("iwae", layers=1, x_dim=12, z_dim=2, hidden=(8,), z1_dim=100, hidden2=[100, 100])
    assert not isinstance(model, TwoLayerVAE)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("options, named", [({}, "k=5 (its default)"), ({"k": 3}, "k=3")])
def test_mc_samples_with_the_iwae_bound_name_the_k_that_sets_it(layers, options, named):
    """``minivae train --model iwae --mc-samples 2`` was refused with "choose either mc_samples
    (ELBO) or iw_k (IWAE bound), not both", though no iw_k was given: the k is the factory's."""
    with pytest.raises(ValueError, match=f"^iwae: {re.escape(named)} trains on the IWAE bound, which "
                                         "would leave mc_samples=2 unused; give k=1 "):
        build_model("iwae", layers=layers, x_dim=12, z_dim=2, hidden=(8,), mc_samples=2, **options)
    model = build_model("iwae", layers=layers, x_dim=12, z_dim=2, hidden=(8,), mc_samples=2, k=1)
    assert model.mc_samples == 2 and model.iw_k == 1
