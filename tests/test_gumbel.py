"""The Gumbel-softmax VAE: Philox Gumbel noise, relaxed and exact codes, the categorical KL and prior,
the temperature schedule, and training."""
import json
import math

import numpy as np
import pytest
from test_kernels import fake_gpu, shim  # noqa: F401  (fixtures)
from test_train import config, small_data

import minivae as mv
from minivae.gradcheck import gradcheck
from minivae.models import GumbelSoftmaxVAE, build_model
from minivae.models.gumbel import temperature
from minivae.random import Generator
from minivae.runs import METRICS
from minivae.train import Trainer


def small(**kw):
    mv.nn.init.manual_seed(0)
    kw = dict(dict(x_dim=10, hidden=(6,), n_vars=3, n_classes=4, activation="tanh"), **kw)
    return GumbelSoftmaxVAE(**kw).astype(np.float64)


def binary(rng, n, d=10):
    return mv.tensor((rng.random((n, d)) < 0.5).astype(np.float64))


def softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_relaxed_codes_use_philox_gumbel_noise_and_the_temperature(rng):
    model = small()
    model.tau = 0.7
    logits = model.logits(binary(rng, 2))
    y = model.sample_codes(logits, 3, Generator(11), hard=False).data
    g = Generator(11).gumbel((3, 2, 3, 4), dtype=np.float64)
    np.testing.assert_allclose(y, softmax((logits.data + g) / 0.7), rtol=1e-12)
    hard = model.sample_codes(logits, 3, Generator(11), hard=True).data
    np.testing.assert_array_equal(hard, np.eye(4)[(logits.data + g).argmax(-1)])
    model.tau = 1e-5  # the relaxation approaches the exact one-hot sample
    np.testing.assert_allclose(model.sample_codes(logits, 3, Generator(11), hard=False).data, hard, atol=1e-6)


def test_exact_codes_follow_the_categorical_distribution():
    model = small()
    logits = mv.tensor(np.log(np.array([[[0.1, 0.2, 0.3, 0.4]] * 3])))
    y = model.sample_codes(logits, 40000, Generator(2), hard=True).data
    np.testing.assert_allclose(y.mean(axis=0)[0], [[0.1, 0.2, 0.3, 0.4]] * 3, atol=0.01)


def test_kl_to_the_uniform_prior_is_analytic_and_per_example(rng):
    model = small()
    logits = rng.normal(size=(5, 3, 4))
    q = softmax(logits)
    expected = (q * (np.log(q) + np.log(4))).sum(axis=(1, 2))
    kl = model.kl(mv.tensor(logits))
    assert kl.shape == (5,)
    np.testing.assert_allclose(kl.data, expected, rtol=1e-12)
    np.testing.assert_allclose(model.kl(mv.tensor(np.zeros((2, 3, 4)))).data, 0, atol=1e-15)


def test_log_weights_of_the_discrete_model_by_hand(rng):
    model = small().eval()
    x = binary(rng, 4)
    log_w = model.log_weights(x, 2, Generator(5)).data
    logits = model.logits(x).data
    g = Generator(5).gumbel((2, 4, 3, 4), dtype=np.float64)
    y = np.eye(4)[(logits + g).argmax(-1)]
    px = model.decode(mv.tensor(y)).data
    log_px = (x.data * px - np.logaddexp(0, px)).sum(-1)
    log_q = (y * (logits - np.log(np.exp(logits).sum(-1, keepdims=True)))).sum(axis=(-2, -1))
    log_prior = -3 * math.log(4)  # -log K per variable, a vector with one entry per example
    np.testing.assert_allclose(log_w, log_px + log_prior - log_q, rtol=1e-12)
    assert log_w.shape == (2, 4)
    # k = 1 in eval mode is the discrete ELBO's integrand: its mean matches elbo() on average.
    rec, kl = model.elbo(x, Generator(6), samples=20000)
    np.testing.assert_allclose(model.log_weights(x, 20000, Generator(7)).data.mean(0), (rec - kl).data, atol=0.1)


def test_training_mode_uses_relaxed_codes_and_eval_mode_exact_ones(rng):
    model = small()
    x = binary(rng, 3)
    relaxed, _ = model.elbo(x, Generator(1))
    model.eval()
    exact, _ = model.elbo(x, Generator(1))
    assert not np.allclose(relaxed.data, exact.data)
    np.testing.assert_array_equal(model.elbo(x, Generator(1), hard=False)[0].data, relaxed.data)
    for hard in ("False", 0, 1.0):  # before: read by their truth (the string "False" gave exact codes)
        with pytest.raises(TypeError, match=f"^hard must be True or False, got {hard!r}$"):
            model.elbo(x, Generator(1), hard=hard)


def test_temperature_schedule():
    assert temperature(0) == 1.0
    np.testing.assert_allclose(temperature(10), math.exp(-3e-5 * 500 * 10))
    taus = [temperature(e) for e in range(200)]
    assert all(a >= b for a, b in zip(taus, taus[1:])) and min(taus) == 0.5
    model = small(tau0=2.0, tau_min=0.1, anneal_rate=1e-3, steps_per_epoch=100)
    assert model.tau == 2.0  # before any set_epoch: the schedule's start, tau0
    model.set_epoch(3)
    assert model.tau == pytest.approx(2.0 * math.exp(-0.3))


@pytest.mark.parametrize("options, error, message", [
    (dict(tau0=0), ValueError, "invalid tau0 0: it must be > 0 and finite"),
    (dict(tau0=math.inf), ValueError, "invalid tau0 inf: it must be > 0 and finite"),
    (dict(tau_min=0.0), ValueError, "invalid tau_min 0.0: it must be > 0 and finite"),
    (dict(tau_min=math.nan), ValueError, "invalid tau_min nan: it must be > 0 and finite"),
    (dict(anneal_rate=-3e-5), ValueError, "invalid anneal_rate -3e-05: it must be >= 0 and finite"),
    (dict(tau0="1"), TypeError, "tau0 must be a real number, got '1'"),
    (dict(tau0=0.5, tau_min=0.8), ValueError, "tau_min=0.8 is above tau0=0.5"),
    (dict(steps_per_epoch=0), ValueError, "steps_per_epoch must be at least 1, got 0"),
    (dict(steps_per_epoch=2.5), TypeError, "steps_per_epoch must be an integer, got 2.5"),
], ids=["tau0 0", "tau0 inf", "tau_min 0", "tau_min NaN", "negative rate", "string tau0",
        "tau_min above tau0", "no steps", "fractional steps"])
def test_the_temperature_schedule_is_checked(options, error, message):
    # Before: a temperature of 0 divided by zero and trained on NaN, a negative rate or step
    # count heated the relaxation up, tau_min above tau0 skipped the annealing: all silently.
    with pytest.raises(error, match=message):
        small(**options)


@pytest.mark.parametrize("args, options, error, message", [
    ((-1,), {}, ValueError, "epoch must be at least 0, got -1"),
    ((2.5,), {}, TypeError, "epoch must be an integer, got 2.5"),
    ((3,), dict(tau0=0), ValueError, "temperature: invalid tau0 0: it must be > 0 and finite"),
    ((3,), dict(tau0=0.5, tau_min=0.8), ValueError, "tau_min=0.8 is above tau0=0.5"),
    ((3,), dict(steps_per_epoch=0), ValueError, "steps_per_epoch must be at least 1, got 0"),
], ids=["negative epoch", "fractional epoch", "tau0 0", "tau_min above tau0", "no steps"])
def test_the_temperature_function_checks_its_arguments(args, options, error, message):
    # Before: a negative epoch heated the relaxation above tau0, tau0=0 gave a temperature of
    # tau_min, tau_min above tau0 a constant one: all without a word.
    with pytest.raises(error, match=message):
        temperature(*args, **options)


def test_iw_training_is_refused():
    with pytest.raises(ValueError, match="iw_k"):
        GumbelSoftmaxVAE(iw_k=5)


def test_gumbel_loss_gradients_match_finite_differences(rng):
    model = small()
    model.tau = 0.8
    x = binary(rng, 4)
    for _, p in model.named_parameters():
        gradcheck(lambda p_: model.loss(x, Generator(9))[0], p)


def test_trainer_anneals_the_temperature_per_epoch(tmp_path):
    cfg = config(tmp_path, model="gumbel", epochs=3, eval_k=5,
                 model_options={"n_vars": 4, "n_classes": 5, "anneal_rate": 1e-3, "steps_per_epoch": 100})
    trainer = Trainer(cfg, data=small_data(), progress=False, log=lambda m: None)
    trainer.fit()
    lines = [json.loads(l) for l in (trainer.run_dir / METRICS).read_text().splitlines()]
    np.testing.assert_allclose([m["train_tau"] for m in lines], [1.0, math.exp(-0.1), math.exp(-0.2)])
    assert np.isfinite(trainer.final_evaluation()["test_nll"])
    assert isinstance(build_model("gumbel"), GumbelSoftmaxVAE)


def test_the_gpu_path_draws_the_noise_with_the_kernel_and_gives_the_cpu_loss(fake_gpu, fake_cublas, monkeypatch):
    """With the model's arrays taken for CuPy's, the Gumbel noise of the loss is drawn by the
    kernel (its host build, through minivae.gpu.gumbel), one launch, from the generator's next
    draw: the loss, its statistics and the generator's offset are the CPU step's, and so are the
    exact codes of evaluation."""
    import minivae.distributions
    from minivae.gpu import dispatch

    K, calls = fake_gpu
    x = (np.random.default_rng(0).uniform(size=(6, 10)) < 0.5).astype(np.float32)
    out = []
    for gpu in (True, False):
        mv.nn.init.manual_seed(0)
        model = GumbelSoftmaxVAE(x_dim=10, hidden=(8,), n_vars=3, n_classes=4)
        noise = Generator(4, offset=2)
        with monkeypatch.context() as mp:
            if gpu:
                mp.setattr(dispatch, "is_gpu_array", lambda array: True)
                mp.setattr(minivae.distributions, "is_gpu_array", lambda array: True)
            loss, stats = model.loss(mv.tensor(x), noise)
            codes = model.eval().sample_codes(model.logits(mv.tensor(x)), 5, noise, hard=True).data
        out.append((loss.item(), {k: float(v) for k, v in stats.items()}, codes, noise.offset))
    assert [c[0] for c in calls].count("mv_gumbel_f32") == 2  # the loss's draw, the codes' draw
    (loss_g, stats_g, codes_g, offset_g), (loss_c, stats_c, codes_c, offset_c) = out
    assert offset_g == offset_c == 4
    assert loss_g == pytest.approx(loss_c, rel=1e-6)
    assert stats_g == pytest.approx(stats_c, rel=1e-6)
    np.testing.assert_array_equal(codes_g, codes_c)
