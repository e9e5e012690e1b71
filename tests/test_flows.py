"""Planar flows: log-det-Jacobian against a numerical Jacobian, per example, invertible, gradchecked;
the flow VAE's bound and its training."""
import numpy as np
import pytest
from test_train import config, small_data

import minivae as mv
from minivae import optim
from minivae.flows import AmortizedPlanarFlows, constrain_u, planar_flow
from minivae.gradcheck import gradcheck
from minivae.models import VAE, FlowVAE, build_model
from minivae.random import Generator
from minivae.train import Trainer


def t(a, grad=False):
    return mv.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def numerical_log_det(z, u, w, b, eps=1e-6):
    """log |det df/dz| of one example from central differences and np.linalg.slogdet."""
    f = lambda v: planar_flow(t(v), t(u), t(w), t(b))[0].data
    jac = np.stack([(f(z + eps * e) - f(z - eps * e)) / (2 * eps) for e in np.eye(len(z))], axis=1)
    sign, log_abs = np.linalg.slogdet(jac)
    assert sign > 0
    return log_abs


def test_log_det_matches_the_numerical_jacobian_per_example(rng):
    B, D = 5, 4
    z, u, w = rng.normal(size=(3, B, D))
    u[0] = -3 * w[0]  # an example whose raw u would make the map non-invertible
    b = rng.normal(size=B)
    _, log_det = planar_flow(t(z), t(u), t(w), t(b))
    assert log_det.shape == (B,)
    expected = [numerical_log_det(z[i], u[i], w[i], b[i]) for i in range(B)]
    np.testing.assert_allclose(log_det.data, expected, rtol=1e-7, atol=1e-8)


def test_log_det_is_per_sample_and_example_not_summed_over_the_batch(rng):
    S, B, D = 3, 4, 2
    z = rng.normal(size=(S, B, D))
    u, w = rng.normal(size=(2, B, D))
    b = rng.normal(size=B)
    f, log_det = planar_flow(t(z), t(u), t(w), t(b))
    assert f.shape == (S, B, D) and log_det.shape == (S, B)
    moved = z.copy()
    moved[:, 1:] += 1.0  # change every other example: example 0's log-det must not move
    _, again = planar_flow(t(moved), t(u), t(w), t(b))
    np.testing.assert_array_equal(again.data[:, 0], log_det.data[:, 0])
    for s in range(S):
        np.testing.assert_allclose(log_det.data[s, 2], numerical_log_det(z[s, 2], u[2], w[2], b[2]),
                                   rtol=1e-7, atol=1e-8)


def test_constraint_makes_every_transform_invertible(rng):
    w = rng.normal(size=(200, 3))
    u = -rng.uniform(0.5, 20, (200, 1)) * w + rng.normal(size=(200, 3))  # many with w.u << -1
    wu = (w * u).sum(-1)
    u_hat = constrain_u(t(u), t(w)).data
    wu_hat = (w * u_hat).sum(-1)
    assert (wu < -1).sum() > 100
    np.testing.assert_allclose(wu_hat, -1 + np.logaddexp(0, wu), atol=1e-12)  # w.u_hat = m(w.u) >= -1
    # Along w the map is a -> a + (w.u_hat) tanh(a + b): increasing, hence one-to-one.
    a = np.linspace(-6, 6, 2001)
    for i in np.flatnonzero(wu_hat > -0.999)[:20]:
        assert (np.diff(a + wu_hat[i] * np.tanh(a + 0.3)) > 0).all()
    # u changes only along w (u_hat - u is parallel to w).
    diff = u_hat - u
    cross = diff[:, None, :] * w[:, :, None] - diff[:, :, None] * w[:, None, :]
    np.testing.assert_allclose(cross, 0, atol=1e-9)


def test_log_det_stays_finite_where_the_constraint_saturates():
    """w.u = -60: m(w.u) = -1 + 9e-27 is -1 in floating point, and at h = 0 the naive
    log(1 + (1 - h^2) m) would be log(0); the stable form gives log(softplus(-60)) = -60."""
    w = np.array([[1.0, 0.0]])
    u = np.array([[-60.0, 0.0]])
    z = np.array([[0.5, 2.0]])
    _, log_det = planar_flow(t(z), t(u), t(w), t(np.array([-0.5])))
    np.testing.assert_allclose(log_det.data, [-60.0], rtol=1e-12)


def test_planar_flow_gradcheck(rng):
    z = t(rng.normal(size=(2, 3, 4)), grad=True)
    u, w = (t(rng.normal(size=(3, 4)), grad=True) for _ in range(2))
    b = t(rng.normal(size=3), grad=True)
    assert gradcheck(lambda *a: planar_flow(*a)[0], z, u, w, b)
    assert gradcheck(lambda *a: planar_flow(*a)[1], z, u, w, b)


def test_amortized_flows_chain_the_transforms(rng):
    mv.nn.init.manual_seed(0)
    flows = AmortizedPlanarFlows(5, 3, 4).astype(np.float64)
    h, z0 = t(rng.normal(size=(2, 5))), t(rng.normal(size=(6, 2, 3)))
    zk, total = flows(h, z0)
    p = flows.params(h).data
    z, expected = z0, 0
    for k in range(4):
        c = p[:, 7 * k:7 * (k + 1)]
        z, ld = planar_flow(z, t(c[:, :3]), t(c[:, 3:6]), t(c[:, 6]))
        expected = expected + ld.data
    np.testing.assert_allclose(zk.data, z.data, rtol=1e-12)
    np.testing.assert_allclose(total.data, expected, rtol=1e-12)
    assert total.shape == (6, 2)
    same, zero = AmortizedPlanarFlows(5, 3, 0)(h, z0)
    assert same is z0 and zero.shape == (6, 2) and not zero.data.any()


def small_flow(**kw):
    mv.nn.init.manual_seed(0)
    return FlowVAE(**dict(dict(x_dim=10, z_dim=3, hidden=(6,), activation="tanh", flows=3), **kw)).astype(np.float64)


def binary(rng, n, d=10):
    return mv.tensor((rng.random((n, d)) < 0.5).astype(np.float64))


def test_flow_log_weights_by_hand(rng):
    model = small_flow()
    x = binary(rng, 4)
    log_w = model.log_weights(x, 2, Generator(3)).data
    h = model.encoder(x)
    mu, logvar = model.q_z(h)
    eps = Generator(3).normal((2, 4, 3), dtype=np.float64)
    z0 = mu.data + np.exp(logvar.data / 2) * eps
    zk, log_det = model.flows(h, t(z0))
    logits = model.decode(zk).data
    log_px = (x.data * logits - np.logaddexp(0, logits)).sum(-1)
    log_pz = -0.5 * (zk.data ** 2 + np.log(2 * np.pi)).sum(-1)
    log_q0 = -0.5 * (eps ** 2 + logvar.data + np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(log_w, log_px + log_pz - (log_q0 - log_det.data), rtol=1e-10)


def _bound_terms_by_hand(model, x, seed, samples):
    """The flow VAE's terms from the draws of ``Generator(seed)`` (``samples`` per image), in
    NumPy: log p(x | z_K) and log p(z_K), (samples, B), the closed-form entropy of q_0, (B,), and
    sum_k log |det J_k|, (samples, B)."""
    h = model.encoder(x)
    mu, logvar = model.q_z(h)
    z0 = mu.data + np.exp(logvar.data / 2) * Generator(seed).normal((samples, *mu.shape), dtype=np.float64)
    zk, log_det = model.flows(h, t(z0))
    logits = model.decode(zk).data
    log_px = (x.data * logits - np.logaddexp(0, logits)).sum(-1)
    log_pz = -0.5 * (zk.data ** 2 + np.log(2 * np.pi)).sum(-1)
    entropy = 0.5 * (logvar.data + 1 + np.log(2 * np.pi)).sum(-1)
    return log_px, log_pz, entropy, log_det.data


@pytest.mark.parametrize("flows", [1, 3])
def test_flow_elbo_by_hand(rng, flows):
    """The bound's terms from the same draws as the log-weights: the reconstruction at z_K, and
    KL = -H[q_0] - E[sum_k log |det J_k| + log p(z_K)] with the Gaussian entropy in closed form,
    for one flow as for several (only without flows is the KL the VAE's analytic one)."""
    model = small_flow(flows=flows)
    x = binary(rng, 4)
    rec, kl = model.elbo(x, Generator(3), samples=2)
    log_px, log_pz, entropy, log_det = _bound_terms_by_hand(model, x, 3, 2)
    np.testing.assert_allclose(rec.data, log_px.mean(0), rtol=1e-12)
    np.testing.assert_allclose(kl.data, -entropy - (log_det + log_pz).mean(0), rtol=1e-12)


@pytest.mark.parametrize("flows", [0, 2])
def test_the_joint_annealing_weighs_log_p_x_z_by_beta(rng, flows):
    """annealing "joint" (the paper's eq. 20): the loss is the batch mean of -beta (log p(x | z_K)
    + log p(z_K)) - H[q_0] - sum_k log |det J_k| from the same draws as the bound's terms (also
    without flows: then the entropy of q_0 is the closed form's, not the VAE's analytic KL); its
    statistics are the unweighted bound's, as with the default annealing."""
    model = small_flow(flows=flows, annealing="joint", mc_samples=2)
    x = binary(rng, 4)
    loss, stats = model.loss(x, Generator(3), beta=0.25)
    log_px, log_pz, entropy, log_det = _bound_terms_by_hand(model, x, 3, 2)
    log_px = log_px.mean(0)
    expected = (-0.25 * (log_px + log_pz.mean(0)) - entropy - log_det.mean(0)).mean()
    np.testing.assert_allclose(loss.data, expected, rtol=1e-12)
    kl = -entropy - (log_det + log_pz).mean(0)
    np.testing.assert_allclose([stats["rec"], stats["kl"], stats["elbo"]],
                               [log_px.mean(), kl.mean(), (log_px - kl).mean()], rtol=1e-12)
    assert abs(float(loss.data) - float(stats["loss"])) == 0


def test_the_joint_annealing_at_beta_1_is_the_bound_and_differs_below(rng):
    """At beta = 1 both annealings train on minus the bound (the same loss, up to rounding, and
    the same gradients); at beta < 1 the joint one is another loss, so the setting shows."""
    x = binary(rng, 4)
    kl_model, joint = small_flow(), small_flow(annealing="joint")
    joint.load_state_dict(kl_model.state_dict())
    grads = []
    for model in (kl_model, joint):
        loss, _ = model.loss(x, Generator(5), beta=1.0)
        model.zero_grad()
        loss.backward()
        grads.append([p.grad.copy() for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    low = [float(model.loss(x, Generator(5), beta=0.1)[0].data) for model in (kl_model, joint)]
    assert abs(low[0] - low[1]) > 1e-3


def test_the_joint_annealing_gradients_match_finite_differences(rng):
    x = binary(rng, 4)
    model = small_flow(annealing="joint")
    for _, p in model.named_parameters():
        gradcheck(lambda p_: model.loss(x, Generator(9), beta=0.3)[0], p)


@pytest.mark.parametrize("kw, error, message", [
    (dict(annealing="entropy"), ValueError, "annealing must be one of 'kl', 'joint', got 'entropy'"),
    (dict(annealing="joint", iw_k=3), ValueError, r"annealing 'joint' weighs the bound's terms by the warm-up's "
                                                  r"beta, which the IWAE bound \(iw_k 3\) does not take"),
])
def test_an_annealing_that_is_none_or_that_the_bound_would_ignore_is_refused(kw, error, message):
    with pytest.raises(error, match=f"^{message}"):
        small_flow(**kw)


def test_the_reconstruction_latent_is_the_mean_of_q0_pushed_through_the_flows(rng):
    """The point the pictures decode an image from: for the VAE the mean of q(z | x) (not its
    log-variance, not a draw), for the flow VAE that mean pushed through the flows, the
    transforms' parameters predicted from the encoder's features (written out with the weights:
    tanh, one hidden layer)."""
    x = binary(rng, 4)
    model = small_flow()
    p = model.state_dict()
    h = np.tanh(x.data @ p["encoder.net.0.weight"] + p["encoder.net.0.bias"])
    mu = h @ p["q_z.mu.weight"] + p["q_z.mu.bias"]
    vae = VAE(x_dim=10, z_dim=3, hidden=(6,), activation="tanh").astype(np.float64)
    vae.load_state_dict({k: v for k, v in p.items() if not k.startswith("flows.")})
    np.testing.assert_allclose(vae.reconstruction_latent(x).data, mu, rtol=1e-12)
    c = h @ p["flows.params.weight"] + p["flows.params.bias"]
    z = t(mu)
    for k in range(3):
        z, _ = planar_flow(z, t(c[:, 7 * k:7 * k + 3]), t(c[:, 7 * k + 3:7 * k + 6]), t(c[:, 7 * k + 6]))
    assert np.abs(z.data - mu).max() > 0.01  # the flows move it, so leaving them out shows
    np.testing.assert_allclose(model.reconstruction_latent(x).data, z.data, rtol=1e-12)


def test_zero_flows_is_the_vae_and_the_elbo_matches_the_weights_on_average(rng):
    x = binary(rng, 3)
    flow0, vae = small_flow(flows=0), VAE(x_dim=10, z_dim=3, hidden=(6,), activation="tanh").astype(np.float64)
    vae.load_state_dict({k: v for k, v in flow0.state_dict().items() if not k.startswith("flows.")})
    np.testing.assert_allclose(flow0.log_weights(x, 5, Generator(1)).data,
                               vae.log_weights(x, 5, Generator(1)).data, rtol=1e-12)
    model = small_flow()
    rec, kl = model.elbo(x, Generator(2), samples=20000)
    mc = model.log_weights(x, 20000, Generator(3)).data.mean(axis=0)
    np.testing.assert_allclose(mc, (rec - kl).data, atol=0.05)


def test_zero_flows_gives_the_vae_elbo_with_its_analytic_kl(rng):
    """Without flows the KL of q to the prior has a closed form: a one-draw estimate of it
    (which can be negative) would only add variance to the same bound."""
    x = binary(rng, 4)
    flow0, vae = small_flow(flows=0), VAE(x_dim=10, z_dim=3, hidden=(6,), activation="tanh").astype(np.float64)
    vae.load_state_dict({k: v for k, v in flow0.state_dict().items() if not k.startswith("flows.")})
    rec, kl = flow0.elbo(x, Generator(4))
    vae_rec, vae_kl = vae.elbo(x, Generator(4))
    np.testing.assert_array_equal(rec.data, vae_rec.data)
    np.testing.assert_allclose(kl.data, vae_kl.data, rtol=1e-12)
    assert (kl.data >= 0).all()


def test_flow_vae_gradients_match_finite_differences(rng):
    x = binary(rng, 4)
    for kw in ({}, {"iw_k": 3}):
        model = small_flow(**kw)
        for _, p in model.named_parameters():
            gradcheck(lambda p_: model.loss(x, Generator(9))[0], p)


def test_an_optimizer_made_before_training_trains_the_flow_parameters(rng):
    """The flows are built with the model, so an optimizer made from model.parameters() right
    after construction holds their parameters and a step moves them."""
    model = build_model("flow", x_dim=10, z_dim=3, hidden=(6,), flows=2)
    opt = optim.Adam(model.parameters(), lr=0.01)
    flow_params = [p for name, p in model.named_parameters() if name.startswith("flows.")]
    assert flow_params and {id(p) for p in model.parameters()} == {id(p) for p in opt.params}
    before = [p.data.copy() for p in flow_params]
    loss, _ = model.loss(mv.tensor((rng.random((8, 10)) < 0.5).astype(np.float32)), Generator(0))
    model.zero_grad()
    loss.backward()
    opt.step()
    assert all(p.grad is not None and np.abs(p.grad).sum() > 0 for p in flow_params)
    assert all(not np.array_equal(b, p.data) for b, p in zip(before, flow_params))


def test_flow_model_trains_from_the_cli_settings(tmp_path):
    cfg = config(tmp_path, model="flow", model_options={"flows": 2}, eval_k=5, epochs=2)
    trainer = Trainer(cfg, data=small_data(), progress=False, log=lambda m: None)
    trainer.fit()
    assert trainer.model.flows.n_flows == 2
    assert np.isfinite(trainer.final_evaluation()["test_nll"])


@pytest.mark.parametrize("z_dim, n_flows, error, message", [
    (3.7, 2, TypeError, "z_dim must be an integer, got 3.7"),
    (3, 2.5, TypeError, "n_flows must be an integer, got 2.5"),
    (3, True, TypeError, "n_flows must be an integer, got True"),
    (0, 2, ValueError, "z_dim must be at least 1, got 0"),
    (3, -1, ValueError, "n_flows must be at least 0, got -1"),
])
def test_amortized_flows_take_whole_sizes_only(z_dim, n_flows, error, message):
    """A width 3.7 or a count 2.5 was rounded down without a word, and n_flows=-1 was named as
    the linear layer's "out_features ... -7"."""
    with pytest.raises(error, match=f"^{message}$"):
        AmortizedPlanarFlows(5, z_dim, n_flows)
