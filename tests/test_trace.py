"""minivae.trace: gradient norms, update-to-weight ratios and the latent (posterior-collapse) summary."""
import json

import numpy as np
import pytest

import minivae as mv
from minivae import optim
from minivae.models import VAE, build_model
from minivae.random import Generator
from minivae.analysis import latent_summary
from minivae.trace import GRAD_PREFIX, RATIO_PREFIX, gradient_norms, snapshot, update_ratios
from minivae.viz import has_grad_norms


@pytest.fixture
def model_and_batch():
    model = VAE(x_dim=10, z_dim=4, hidden=(6,), rng=np.random.default_rng(0))
    x = (np.random.default_rng(1).uniform(size=(32, 10)) < 0.5).astype(np.float32)
    return model, x


def test_gradient_norms(model_and_batch):
    model, x = model_and_batch
    assert gradient_norms(model) == {}                      # no gradient yet: nothing reported
    loss, _ = model.loss(mv.tensor(x), Generator(0))
    loss.backward()
    norms = gradient_norms(model)
    assert set(norms) == {GRAD_PREFIX + name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert norms[GRAD_PREFIX + name] == pytest.approx(np.linalg.norm(p.grad.astype(np.float64)))
    assert all(isinstance(v, float) for v in norms.values())
    json.dumps(norms)                                       # ready for metrics.jsonl
    assert has_grad_norms([norms])                          # and for minivae.viz's plot


def test_update_ratios_of_an_sgd_step(model_and_batch):
    model, x = model_and_batch
    loss, _ = model.loss(mv.tensor(x), Generator(0))
    loss.backward()
    before = snapshot(model)
    lr = 0.1
    optim.SGD(model.parameters(), lr=lr).step()
    ratios = update_ratios(before, snapshot(model))
    assert ratios == update_ratios(before, model)           # a model works as "after" too
    for name, p in model.named_parameters():
        expected = lr * np.linalg.norm(p.grad.astype(np.float64)) / np.linalg.norm(before[name].astype(np.float64))
        assert ratios[RATIO_PREFIX + name] == pytest.approx(expected, rel=1e-4)
    assert before["encoder.net.0.weight"] is not model.encoder.net[0].weight.data   # a copy


def test_a_frozen_part_has_neither_a_gradient_norm_nor_an_update_ratio():
    """M1+M2's M1 is frozen: no gradient, and no ratio of 0 at every traced step either."""
    model = build_model("m1m2", x_dim=10, z_dim=3, hidden=(6,), rng=np.random.default_rng(0),
                        m1=dict(x_dim=10, z_dim=4, hidden=(6,)))
    model.set_data_sizes(32, 4)
    x = (np.random.default_rng(1).uniform(size=(32, 10)) < 0.5).astype(np.float32)
    loss, _ = model.loss(mv.tensor(x), Generator(0), labelled=(mv.tensor(x[:4]), np.arange(4)))
    loss.backward()
    before = snapshot(model)
    optim.Adam(model.parameters(), lr=1e-3).step()
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(trained) < len(list(model.named_parameters()))   # the M1 is there, frozen
    assert sorted(before) == sorted(trained)
    assert sorted(update_ratios(before, model)) == sorted(RATIO_PREFIX + name for name in trained)
    assert sorted(gradient_norms(model)) == sorted(GRAD_PREFIX + name for name in trained)


def test_update_ratio_of_zero_weights():
    before = {"b": np.zeros(3), "w": np.zeros(2), "v": np.array([3.0, 4.0])}
    after = {"b": np.array([0.0, 0.3, 0.4]), "w": np.zeros(2), "v": np.array([3.0, 4.5])}
    ratios = update_ratios(before, after)
    assert ratios == {RATIO_PREFIX + "b": 1.0, RATIO_PREFIX + "w": 0.0, RATIO_PREFIX + "v": pytest.approx(0.1)}


def test_norms_of_float32_arrays_are_accumulated_in_float64():
    """An exploding gradient (1e20 per element, the case tracing is for) has a finite norm:
    its squares overflow float32 (1e40), not float64; so do the update ratios' norms."""
    model = VAE(x_dim=10, z_dim=4, hidden=(6,), rng=np.random.default_rng(0))
    for p in model.parameters():
        p.grad = np.full(p.shape, 1e20, dtype=np.float32)
    norms = gradient_norms(model)
    for name, p in model.named_parameters():
        assert norms[GRAD_PREFIX + name] == pytest.approx(1e20 * np.sqrt(p.data.size), rel=1e-6)
    before = {"w": np.full(4, 1e20, dtype=np.float32)}
    assert update_ratios(before, {"w": before["w"] * 3}) == {RATIO_PREFIX + "w": pytest.approx(2.0)}


def test_latent_summary_finds_dead_units(model_and_batch):
    model, x = model_and_batch
    # dimensions 0 and 2 vary strongly with x; 1 and 3 ignore it: constant posterior mean
    # (inactive) equal to the prior (zero KL)
    model.q_z.mu.weight.data[:, [0, 2]] *= 20
    for layer in (model.q_z.mu, model.q_z.logvar):
        layer.weight.data[:, [1, 3]] = 0
        layer.bias.data[[1, 3]] = 0
    summary = latent_summary(model, x)
    assert summary["active_units"] == 2
    kl = summary["kl_per_dim"]
    assert len(kl) == 4 and kl[1] == 0.0 and kl[3] == 0.0 and kl[0] > 0 and kl[2] > 0
    # the per-dimension KLs add up to the model's (analytic) KL term
    with mv.no_grad():
        mu, logvar = model.encode(mv.tensor(x))
        total = float(mv.functional.kl_normal_std(mu, logvar).data.mean())
    assert sum(kl) == pytest.approx(total, rel=1e-5)
    json.dumps(summary)
