"""The Ladder VAE: the precision-weighted combination op against its closed form, and the model."""
import json

import numpy as np
import pytest
from test_cli_errors import user_error
from test_train import config, small_data

import minivae as mv
from minivae import nn
from minivae.gradcheck import check_float32, gradcheck
from minivae.gradcheck_cases import model_case
from minivae.models import LadderVAE, build_model
from minivae.ops.ladder import PrecisionWeightedMerge, precision_weighted_merge
from minivae.random import Generator
from minivae.runs import METRICS
from minivae.train import Trainer


def closed_form(mu_hat, var_hat, mu_p, var_p):
    """The textbook formulas, in variances: 1/var_q = 1/var_hat + 1/var_p, mu_q = (mu_hat/var_hat + mu_p/var_p) var_q."""
    var_q = 1 / (1 / var_hat + 1 / var_p)
    return (mu_hat / var_hat + mu_p / var_p) * var_q, var_q


def test_merge_matches_the_closed_form(rng):
    mu_hat, mu_p = rng.normal(0, 2, (2, 5, 4))
    logvar_hat, logvar_p = rng.uniform(-4, 4, (2, 5, 4))
    mu_q, logvar_q = precision_weighted_merge(*(mv.tensor(a) for a in (mu_hat, logvar_hat, mu_p, logvar_p)))
    mu_ref, var_ref = closed_form(mu_hat, np.exp(logvar_hat), mu_p, np.exp(logvar_p))
    np.testing.assert_allclose(mu_q.data, mu_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.exp(logvar_q.data), var_ref, rtol=1e-12)


def test_merge_special_cases():
    # Equal variances: the mean is the average and the variance halves.
    mu_q, logvar_q = precision_weighted_merge(*(mv.tensor(np.array([v])) for v in (1.0, 0.3, 3.0, 0.3)))
    np.testing.assert_allclose([mu_q.item(), logvar_q.item()], [2.0, 0.3 - np.log(2)], rtol=1e-14)
    # A far more precise bottom-up estimate wins, without overflow (log-variances of +-300).
    mu_q, logvar_q = precision_weighted_merge(*(mv.tensor(np.array([v])) for v in (1.0, -300.0, 3.0, 300.0)))
    assert mu_q.item() == 1.0 and logvar_q.item() == -300.0


# The log-variances may broadcast less far than the means (one top-down variance for every
# sample's mean): logvar_q still takes the shape of all four inputs.
@pytest.mark.parametrize("logvar_p_shape", [(5, 3, 4), (3, 4)])
def test_merge_broadcasts_bottom_up_against_samples(rng, logvar_p_shape):
    mu_hat, logvar_hat = (mv.tensor(rng.normal(size=(3, 4)), requires_grad=True) for _ in range(2))
    mu_p = mv.tensor(rng.normal(size=(5, 3, 4)), requires_grad=True)
    logvar_p = mv.tensor(rng.normal(size=logvar_p_shape), requires_grad=True)
    mu_q, logvar_q = precision_weighted_merge(mu_hat, logvar_hat, mu_p, logvar_p)
    assert mu_q.shape == logvar_q.shape == (5, 3, 4)
    mu_ref, var_ref = closed_form(mu_hat.data, np.exp(logvar_hat.data), mu_p.data, np.exp(logvar_p.data))
    np.testing.assert_allclose(mu_q.data, mu_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.exp(logvar_q.data), np.broadcast_to(var_ref, (5, 3, 4)), rtol=1e-12)
    (mu_q * mv.tensor(rng.normal(size=mu_q.shape)) + logvar_q * mv.tensor(rng.normal(size=mu_q.shape))).sum().backward()
    assert mu_hat.grad.shape == (3, 4) and mu_p.grad.shape == (5, 3, 4) and logvar_p.grad.shape == logvar_p_shape
    assert gradcheck(precision_weighted_merge, mu_hat, logvar_hat, mu_p, logvar_p)


@pytest.mark.parametrize("scale", [1.0, 6.0])  # moderate and very unequal precisions
def test_merge_gradcheck(rng, scale):
    inputs = [mv.tensor(rng.uniform(-scale, scale, (4, 3)), requires_grad=True) for _ in range(4)]
    assert gradcheck(precision_weighted_merge, *inputs)
    assert check_float32(precision_weighted_merge, *inputs)
    assert gradcheck(lambda *a: precision_weighted_merge(*a)[0] * precision_weighted_merge(*a)[1], *inputs)


#: The settings that follow the authors' code, all on.
AUTHORS = dict(up_input="mean", variance="softplus", batch_norm_heads=True)


def small_ladder(layers=3, **kw):
    mv.nn.init.manual_seed(0)
    kw = dict(dict(x_dim=12, hidden=(10, 8, 6, 5, 4)[:layers], z_dims=(4, 3, 3, 2, 2)[:layers],
                   activation="tanh"), **kw)
    return LadderVAE(**kw).astype(np.float64)


def binary(rng, n, d=12):
    return mv.tensor((rng.random((n, d)) < 0.5).astype(np.float64))


def test_ladder_has_batch_norm_and_defaults_as_in_the_paper():
    model = LadderVAE()
    assert model.z_dims == (64, 32, 16, 8, 4)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2 * 5 + 2 * 5  # up + down MLPs
    assert LadderVAE(hidden=(512, 256)).z_dims == (64, 32)  # the trainer's default --hidden: 2 layers
    with pytest.raises(ValueError, match="z_dims"):
        LadderVAE(hidden=(8, 4), z_dims=(2,))


@pytest.mark.parametrize("layers", [2, 5])
def test_log_weights_are_per_sample_and_per_example(rng, layers):
    model = small_ladder(layers).eval()
    x = binary(rng, 6)
    log_w = model.log_weights(x, 4, Generator(1)).data
    assert log_w.shape == (4, 6) and np.isfinite(log_w).all()
    assert len(np.unique(log_w[:, 0])) == 4  # k independent draws, not one repeated
    # In eval mode (running statistics) an example's weights do not depend on the rest of the batch.
    other = x.data.copy()
    other[1:] = 1 - other[1:]
    again = model.log_weights(mv.tensor(other), 4, Generator(1)).data
    np.testing.assert_array_equal(again[:, 0], log_w[:, 0])
    assert not np.allclose(again[:, 1:], log_w[:, 1:])


def test_analytic_kls_equal_the_sampled_kl_on_average(rng):
    model = small_ladder(3).eval()
    x = binary(rng, 3)
    rec, kl = model.elbo(x, Generator(4), samples=20000)
    mc = model.log_weights(x, 20000, Generator(5)).data.mean(axis=0)
    np.testing.assert_allclose(mc, (rec - kl).data, atol=0.1)
    assert kl.shape == (3,) and (kl.data > 0).all()


def test_posterior_variance_is_exp_logvar_and_can_be_below_one(rng):
    """var = exp(logvar): a softplus on the log-variance would keep every variance above 1."""
    model = small_ladder(2).eval()
    model.up_heads[1].logvar.bias.data[:] = -4.0  # top layer: var_hat = e^-4 (times e^(W h))
    model.up_heads[1].logvar.weight.data[:] = 0.0
    x = binary(rng, 1)
    zs, q, _ = model._posterior(x, 20000, Generator(6))
    np.testing.assert_allclose(zs[-1].data.var(axis=0)[0], np.exp(-4.0), rtol=0.05)
    # The merged layer: (z - mu_q) / exp(logvar_q / 2) is standard normal.
    r = (zs[0].data - q[0][0].data) / np.exp(q[0][1].data / 2)
    np.testing.assert_allclose([r.mean(), r.var()], [0.0, 1.0], atol=0.02)


def test_beta_weights_the_kl_for_warm_up(rng):
    model = small_ladder(2)
    x = binary(rng, 5)
    full, s1 = model.loss(x, Generator(7))
    none, s0 = model.loss(x, Generator(7), beta=0.0)
    assert s0["loss"] == pytest.approx(-s0["rec"]) and s1["loss"] == pytest.approx(s1["kl"] - s1["rec"])
    assert full.item() > none.item()


def test_ladder_loss_gradients_match_finite_differences(rng):
    model = small_ladder(3, hidden=(5, 4, 3), z_dims=(3, 2, 2), mlp_layers=1)
    x = binary(rng, 4)
    for _, p in model.named_parameters():
        gradcheck(lambda p_: model.loss(x, Generator(9))[0], p)
    iw = small_ladder(2, hidden=(5, 4), z_dims=(3, 2), mlp_layers=1, iw_k=3)
    for _, p in iw.named_parameters():
        gradcheck(lambda p_: iw.loss(x, Generator(9))[0], p)


def test_ladder_trains_with_warm_up_from_the_trainer(tmp_path):
    cfg = config(tmp_path, model="ladder", hidden=(16, 8), warmup=2, eval_k=5)
    trainer = Trainer(cfg, data=small_data(), progress=False, log=lambda m: None)
    trainer.fit()
    lines = [json.loads(l) for l in (trainer.run_dir / METRICS).read_text().splitlines()]
    assert [m["beta"] for m in lines] == [0.5, 1.0]
    assert isinstance(build_model("ladder", hidden=(16, 8)), LadderVAE)
    assert np.isfinite(trainer.final_evaluation()["test_nll"])


def test_merge_is_one_op_in_the_graph():
    mu_q, logvar_q = precision_weighted_merge(*(mv.tensor(np.ones(2), requires_grad=True) for _ in range(4)))
    assert mu_q._node is logvar_q._node and mu_q._node.fn is PrecisionWeightedMerge


def test_sampling_uses_running_statistics_and_leaves_them_alone():
    model = small_ladder(3)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    images = model.sample(7, Generator(3))
    assert images.shape == (7, 12) and ((images > 0) & (images < 1)).all()
    assert model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


@pytest.mark.parametrize("options", [{}, AUTHORS], ids=["defaults", "authors"])
def test_encode_and_decode_describe_the_top_layer(rng, options):
    model = small_ladder(3, **options).eval()
    x = binary(rng, 4)
    mu, logvar = model.encode(x)
    zs, q, _ = model._posterior(x, 1, Generator(0))
    assert model.z_dim == 3 and mu.shape == (4, 3)
    np.testing.assert_array_equal(mu.data, q[-1][0].data)
    assert model.decode(mu).shape == (4, 12)


# ----- the authors' settings: up_input, variance, batch_norm_heads ---------------------------------
def test_defaults_keep_the_parameters_and_the_numbers_of_the_model_before_these_settings():
    """The defaults are the model that existing runs and checkpoints hold: the same parameter
    names and shapes, the same initialization, loss and log-weights (numbers recorded from the
    model before ``up_input``, ``variance`` and ``batch_norm_heads`` existed)."""
    sizes = dict(x_dim=12, hidden=(5, 4), z_dims=(3, 2), mlp_layers=1, activation="tanh")
    mv.nn.init.manual_seed(0)
    model = LadderVAE(**sizes).astype(np.float64)
    mv.nn.init.manual_seed(0)
    spelled = LadderVAE(**sizes, up_input="features", variance="exp", batch_norm_heads=False).astype(np.float64)
    for (name, a), (same, b) in zip(model.state_dict().items(), spelled.state_dict().items(), strict=True):
        assert name == same and a.tobytes() == b.tobytes(), name
    shapes = {name: p.shape for name, p in model.named_parameters()}
    up = {"up.0.net.0.weight": (12, 5), "up.0.net.0.bias": (5,), "up.0.net.1.weight": (5,),
          "up.0.net.1.bias": (5,), "up.1.net.0.weight": (5, 4), "up.1.net.0.bias": (4,),
          "up.1.net.1.weight": (4,), "up.1.net.1.bias": (4,)}
    heads = {f"{name}.{v}.{w}": (n_in, d) if w == "weight" else (d,)
             for name, n_in, d in [("up_heads.0", 5, 3), ("up_heads.1", 4, 2),
                                   ("generator.priors.0.head", 4, 3)]
             for v in ("mu", "logvar") for w in ("weight", "bias")}
    generator = {"generator.priors.0.trunk.net.0.weight": (2, 4), "generator.priors.0.trunk.net.0.bias": (4,),
                 "generator.priors.0.trunk.net.1.weight": (4,), "generator.priors.0.trunk.net.1.bias": (4,),
                 "generator.likelihood.net.0.weight": (3, 5), "generator.likelihood.net.0.bias": (5,),
                 "generator.likelihood.net.1.weight": (5,), "generator.likelihood.net.1.bias": (5,),
                 "generator.likelihood.net.3.weight": (5, 12), "generator.likelihood.net.3.bias": (12,)}
    assert shapes == {**up, **heads, **generator}
    total = sum(float(p.data.sum()) for p in model.parameters())  # the same initialization
    assert total == pytest.approx(28.257610865102833, rel=1e-13)
    x = mv.tensor((np.random.default_rng(0).random((3, 12)) < 0.5).astype(np.float64))
    assert model.loss(x, Generator(9))[0].item() == pytest.approx(8.971243286343668, rel=1e-12)
    log_w = model.eval().log_weights(x, 2, Generator(3)).data.ravel()
    before = [-9.895219473334365, -8.812221203991545, -9.052227160754569,
              -10.508763296909795, -8.478263899882403, -8.865404196442757]
    np.testing.assert_allclose(log_w, before, rtol=1e-12)


def np_batch_norm(p, name, h, training):
    """BatchNorm1d ``name`` over the rows of h (its leading axes flattened): the batch's mean and
    biased variance in training mode, the running ones in eval mode; then its scale and shift."""
    rows = h.reshape(-1, h.shape[-1])
    mean, var = ((rows.mean(axis=0), rows.var(axis=0)) if training
                 else (p[name + ".running_mean"], p[name + ".running_var"]))
    return (h - mean) / np.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]


def np_mlp(p, name, h, layers, training, final=True):
    """An ``MLP`` of ``layers`` linear layers: each Linear -> BatchNorm1d -> tanh (not the last
    one's normalization and tanh unless ``final``)."""
    for i in range(layers):
        h = h @ p[f"{name}.net.{3 * i}.weight"] + p[f"{name}.net.{3 * i}.bias"]
        if final or i < layers - 1:
            h = np.tanh(np_batch_norm(p, f"{name}.net.{3 * i + 1}", h, training))
    return h


def np_softplus_head(p, name, h, training):
    """(mean, variance) of a batch-normalized softplus head: BN(h W + b), and
    softplus(BN(h W' + b')) + 1e-5."""
    mu, a = (np_batch_norm(p, f"{name}.{v}.1", h @ p[f"{name}.{v}.0.weight"] + p[f"{name}.{v}.0.bias"],
                           training) for v in ("mu", "logvar"))
    return mu, np.logaddexp(0.0, a) + 1e-5


def np_log_normal(z, mu, var):
    return -0.5 * (np.log(2 * np.pi * var) + (z - mu) ** 2 / var).sum(-1)


@pytest.mark.parametrize("training", [True, False])
def test_log_weights_with_the_authors_settings_match_numpy(rng, training):
    """Three layers, each bottom-up MLP above the first reading the mean estimate below, every
    head batch-normalized with variance softplus(a) + 1e-5, written out in NumPy from the
    parameters: in training mode (batch statistics, over the k * B rows of the samples in the
    generative heads) and in eval mode (running statistics, made unlike 0 and 1)."""
    model = small_ladder(3, mlp_layers=2, **AUTHORS)
    assert model.up[1].net[0].weight.shape == (4, 8) and model.up[2].net[0].weight.shape == (3, 6)
    draw = np.random.default_rng(5)
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):  # away from 0 and 1
        norm.weight.data[...], norm.running_var[...] = draw.uniform(0.5, 2.0, (2, norm.num_features))
        norm.bias.data[...], norm.running_mean[...] = draw.normal(0.0, 0.5, (2, norm.num_features))
    model.train(training)
    p = {k: v.copy() for k, v in model.state_dict().items()}
    x, k = binary(rng, 5), 3
    log_w = model.log_weights(x, k, Generator(4)).data

    estimates, d = [], x.data
    for l in range(3):  # bottom-up: the mean estimate feeds the next MLP
        estimates.append(np_softplus_head(p, f"up_heads.{l}", np_mlp(p, f"up.{l}", d, 2, training), training))
        d = estimates[-1][0]
    g = Generator(4)
    mu, var = estimates[-1]
    z = mu + np.sqrt(var) * g.normal((k, 5, model.z_dims[-1]), dtype=np.float64)
    expected = np_log_normal(z, 0.0, 1.0) - np_log_normal(z, mu, var)
    for l in (1, 0):  # top-down: p(z_l | z_{l+1}) merged with the estimate by precision weighting
        mu_p, var_p = np_softplus_head(p, f"generator.priors.{l}.head",
                                       np_mlp(p, f"generator.priors.{l}.trunk", z, 2, training), training)
        mu_q, var_q = closed_form(*estimates[l], mu_p, var_p)
        z = mu_q + np.sqrt(var_q) * g.normal(mu_q.shape, dtype=np.float64)
        expected += np_log_normal(z, mu_p, var_p) - np_log_normal(z, mu_q, var_q)
    logits = np_mlp(p, "generator.likelihood", z, 3, training, final=False)
    expected += (x.data * logits - np.logaddexp(0.0, logits)).sum(-1)
    np.testing.assert_allclose(log_w, expected, rtol=1e-10)


def test_loss_gradients_with_the_authors_settings_match_finite_differences():
    names, loss, inputs = model_case("ladder", activation="tanh", **AUTHORS)
    assert "up_heads.0.logvar.1.weight" in names and "generator.priors.0.head.mu.1.bias" in names
    assert gradcheck(loss, *inputs)


def test_softplus_heads_start_their_variance_bias_at_one():
    """The authors' initialization: softplus(1) + 1e-5 where the features are 0."""
    model = small_ladder(2, variance="softplus")
    for head in (*model.up_heads, model.generator.priors[0].head):
        np.testing.assert_array_equal(head.logvar.bias.data, 1.0)
        _, logvar = head(mv.tensor(np.zeros((1, head.mu.weight.shape[0]))))
        np.testing.assert_allclose(logvar.data, np.log(np.logaddexp(0.0, 1.0) + 1e-5), rtol=1e-15)


@pytest.mark.parametrize("setting, value, message", [
    ("up_input", "mu", "up_input must be one of 'features', 'mean', got 'mu'"),
    ("variance", "exp(logvar)", r"variance must be one of 'exp', 'softplus', got 'exp\(logvar\)'"),
    ("batch_norm_heads", "true", "batch_norm_heads must be True or False, got 'true'"),
])
def test_bad_values_of_the_authors_settings_are_refused_by_name(setting, value, message):
    error = TypeError if setting == "batch_norm_heads" else ValueError
    with pytest.raises(error, match=f"^{message}$"):
        LadderVAE(x_dim=12, hidden=(5, 4), **{setting: value})


@pytest.mark.parametrize("pair, named", [
    ("up_input=mu", "up_input must be one of 'features', 'mean', got 'mu'"),
    ("variance=Softplus", "variance must be one of 'exp', 'softplus', got 'Softplus'"),
    ("batch_norm_heads=yes", "--set batch_norm_heads=yes: 'yes' is not true or false"),
])
def test_bad_values_on_the_command_line_are_one_line(capsys, tmp_path, pair, named):
    user_error(capsys, ["train", "--model", "ladder", "--set", pair, "--out", str(tmp_path / "r")], named)
    assert not (tmp_path / "r").exists()
