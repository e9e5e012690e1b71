"""minivae.analysis: KL per latent dimension and active units, by hand."""
import math

import numpy as np
import pytest

from minivae import analysis, tensor
from test_clustering import _DeviceArray


def test_kl_per_dimension_by_hand():
    mu = np.array([[1.0, 0.0], [0.0, 2.0]])
    logvar = np.array([[0.0, math.log(2.0)], [0.0, 0.0]])
    # 0.5 (mu^2 + exp(logvar) - 1 - logvar) per element:
    # row 1: 0.5 (1 + 1 - 1) = 0.5 and 0.5 (2 - 1 - log 2); row 2: 0 and 0.5 (4 + 1 - 1) = 2.
    expected = [(0.5 + 0.0) / 2, (0.5 * (1 - math.log(2.0)) + 2.0) / 2]
    assert np.allclose(analysis.kl_per_dimension(mu, logvar), expected)


def test_kl_per_dimension_sums_to_the_models_kl(rng):
    from minivae import functional as F
    from minivae import tensor

    mu, logvar = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    total = F.kl_normal_std(tensor(mu), tensor(logvar)).numpy().mean()
    assert analysis.kl_per_dimension(mu, logvar).sum() == pytest.approx(total, rel=1e-10)


def test_kl_per_dimension_of_a_collapsed_dimension_is_its_small_positive_value():
    # Near the prior, e^lv - 1 - lv = lv^2 / 2 + lv^3 / 6 + ...; written as exp(lv) - 1.0 - lv in
    # float64 it cancelled to -5.9e-17 at lv = 1e-8, a negative KL, where the KL is 2.5e-17.
    for lv in (1e-8, -1e-8, 3e-6):
        want = 0.5 * (lv ** 2 / 2 + lv ** 3 / 6 + lv ** 4 / 24)
        assert analysis.kl_per_dimension(np.zeros((1, 1)), np.full((1, 1), lv))[0] == pytest.approx(want, rel=1e-6, abs=0)


def test_kl_per_dimension_is_zero_at_the_prior():
    assert np.allclose(analysis.kl_per_dimension(np.zeros((3, 2)), np.zeros((3, 2))), 0.0)
    with pytest.raises(ValueError, match=r"must both be \(N, D\) with N >= 1, got \(3, 2\) and \(3, 3\)"):
        analysis.kl_per_dimension(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"got \(2,\) and \(2,\)"):  # one example, not (1, D)
        analysis.kl_per_dimension(np.zeros(2), np.zeros(2))


def test_active_units_by_hand():
    # Columns alternating +-a over 4 examples have population variance a^2.
    signs = np.array([1.0, -1.0, 1.0, -1.0])[:, None]
    mu = signs * np.array([0.0, 0.05, 1.0, 0.2]) + np.array([5.0, 0.0, -3.0, 0.0])  # offsets do not matter
    assert np.allclose(analysis.latent_activity(mu), [0.0, 0.0025, 1.0, 0.04])
    assert analysis.active_units(mu) == 2                     # 1.0 and 0.04 exceed 1e-2
    assert analysis.active_units(mu, threshold=1e-3) == 3
    assert analysis.active_units(mu, threshold=2.0) == 0


@pytest.mark.parametrize("wrap", [_DeviceArray, tensor], ids=["gpu array", "tensor"])
def test_the_latent_statistics_take_arrays_on_the_gpu_and_tensors(rng, wrap):
    """A model on the GPU gives CuPy means and log-variances, which NumPy cannot read (CuPy
    refuses with a TypeError), and NumPy read a Tensor as a sequence of tensors, failing with
    "setting an array element with a sequence": both are brought to the host."""
    mu, logvar = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    np.testing.assert_array_equal(analysis.kl_per_dimension(wrap(mu), wrap(logvar)),
                                  analysis.kl_per_dimension(mu, logvar))
    np.testing.assert_array_equal(analysis.latent_activity(wrap(mu)), analysis.latent_activity(mu))
    assert analysis.active_units(wrap(mu), threshold=0.5) == analysis.active_units(mu, threshold=0.5)


def test_the_latent_statistics_refuse_a_masked_array():
    """np.asarray dropped the mask: the numbers under it were counted as means."""
    mu = np.ma.masked_array(np.ones((2, 2)), mask=[[False, True], [False, False]])
    with pytest.raises(TypeError, match="^mu is a masked array"):
        analysis.latent_activity(mu)
    with pytest.raises(TypeError, match="^logvar is a masked array"):
        analysis.kl_per_dimension(mu.data, mu)


@pytest.mark.parametrize("name, options", [
    ("vae", {}), ("iwae", {}), ("flow", {"flows": 2}),
    ("iwae", {"layers": 2, "z1_dim": 4, "hidden2": (6,)}),
    ("ladder", {"hidden": (8, 6), "z_dims": (3, 2)}),
])
def test_latent_summary_names_the_gaussian_it_measures(name, options):
    # Only where encode gives the whole posterior (a VAE's q(z | x)) is kl_per_dim the ELBO's KL
    # term per dimension; otherwise the summary must say which part of the posterior it measures.
    from minivae.evaluate import elbo
    from minivae.models import build_model

    model = build_model(name, **dict(dict(x_dim=12, z_dim=3, hidden=(8,)), **options)).astype(np.float64)
    assert model.gaussian_encoder
    x = (np.random.default_rng(0).random((200, 12)) < 0.4).astype(np.float64)
    summary = analysis.latent_summary(model, x)
    assert summary["encoded_gaussian"] == model.encoded_gaussian
    _, _, kl = elbo(model, x)
    is_elbo_kl = sum(summary["kl_per_dim"]) == pytest.approx(kl.mean(), rel=1e-9)
    assert is_elbo_kl == (model.encoded_gaussian == "q(z | x)"), model.encoded_gaussian


@pytest.mark.parametrize("bad, error", [(2.5, TypeError), (0, ValueError)])
def test_the_batch_size_must_be_a_positive_integer(bad, error):
    from minivae.models import VAE

    model, x = VAE(x_dim=6, z_dim=2, hidden=(4,)), np.ones((3, 6), np.float32)
    for summarize in (analysis.encode_dataset, analysis.latent_summary):
        with pytest.raises(error, match="batch_size must be"):
            summarize(model, x, batch_size=bad)


def test_x_is_checked_and_converted_to_the_models_dtype():
    from minivae.models import VAE

    model = VAE(x_dim=6, z_dim=2, hidden=(4,)).astype(np.float64)
    x = (np.random.default_rng(0).random((5, 6)) < 0.5).astype(np.float32)
    for summarize in (analysis.encode_dataset, analysis.latent_summary):
        with pytest.raises(ValueError, match=r"x must be a batch of shape \(B, 6\), got shape \(6,\)"):
            summarize(model, x[0])
        with pytest.raises(TypeError, match="divide uint8 pixels by 255 first"):
            summarize(model, (x * 255).astype(np.uint8))
    np.testing.assert_equal(analysis.encode_dataset(model, x), analysis.encode_dataset(model, x.astype(np.float64)))


@pytest.mark.parametrize("measure", [lambda mu: analysis.kl_per_dimension(mu, mu), analysis.latent_activity,
                                     analysis.active_units], ids=["kl_per_dimension", "latent_activity",
                                                                  "active_units"])
def test_latent_statistics_of_no_examples_are_refused(measure):
    """A mean over no examples is NaN (and 0 active units): refused, naming the shape."""
    with pytest.raises(ValueError, match=r"N >= 1, got .*\(0, 3\)"):
        measure(np.zeros((0, 3)))


def test_a_unit_at_the_threshold_is_not_active():
    """Active means an activity above the threshold (Burda et al.: Cov > 1e-2), not equal to it."""
    mu = np.array([[0.5], [-0.5]])  # population variance 0.25, exactly
    assert analysis.active_units(mu, threshold=0.25) == 0
    assert analysis.active_units(mu, threshold=np.nextafter(0.25, 0)) == 1


@pytest.mark.parametrize("threshold, error, says", [
    (math.nan, ValueError, "invalid threshold nan: it must be >= 0 and finite"),
    (math.inf, ValueError, "invalid threshold inf: it must be >= 0 and finite"),
    (-0.01, ValueError, "invalid threshold -0.01: it must be >= 0 and finite"),
    ("0.01", TypeError, "threshold must be a real number, got '0.01'"),
], ids=["nan", "inf", "negative", "string"])
def test_a_threshold_that_no_activity_can_be_measured_against_is_refused(threshold, error, says):
    """(A NaN threshold counted 0 active units, as if the posterior had collapsed, a negative one
    counted a dead unit as active, and a string met NumPy's "ufunc 'greater' did not contain a
    loop".)"""
    from minivae.models import VAE

    mu = np.array([[0.5, 0.0], [-0.5, 0.0]])
    with pytest.raises(error, match=f"{says}$"):
        analysis.active_units(mu, threshold=threshold)
    model = VAE(x_dim=6, z_dim=2, hidden=(4,))
    encoded = []
    model.encode = lambda x: encoded.append(x)  # refused before the encoding pass
    with pytest.raises(error, match=f"{says}$"):
        analysis.latent_summary(model, np.zeros((3, 6), np.float32), threshold=threshold)
    assert encoded == []


def test_the_summary_counts_active_units_at_its_threshold_over_every_example():
    from minivae.models import VAE

    model = VAE(x_dim=6, z_dim=3, hidden=(4,)).astype(np.float64)
    x = (np.random.default_rng(1).random((7, 6)) < 0.5).astype(np.float64)
    mu, logvar = analysis.encode_dataset(model, x, batch_size=3)  # batches of 3, 3 and 1
    whole = analysis.encode_dataset(model, x, batch_size=500)
    assert mu.shape == logvar.shape == (7, 3)
    np.testing.assert_allclose(mu, whole[0], rtol=1e-12)
    np.testing.assert_allclose(logvar, whole[1], rtol=1e-12)
    activity = analysis.latent_activity(mu)
    for threshold in (0.0, np.median(activity), activity.max()):
        summary = analysis.latent_summary(model, x, batch_size=3, threshold=threshold)
        assert summary["active_units"] == int((activity > threshold).sum())
