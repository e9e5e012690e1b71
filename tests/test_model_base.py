"""Every registered model declares its capabilities (models.base.Model) truthfully."""
import math

import numpy as np
import pytest

import minivae as mv
from minivae.models import MODELS, build_model
from minivae.gradcheck_cases import MODEL_SIZES, SMALL_MODEL
from minivae.models.base import Model
from minivae.random import Generator, Noise
from minivae.runs import TrainConfig, build_run_model


def small_model(name):
    options = {"m1": {"z_dim": 3, "hidden": (8,)}} if name == "m1m2" else {}
    return build_run_model(TrainConfig(model=name, hidden=(8, 8), z_dim=2, model_options=options))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_declared_capabilities_match_the_methods(name):
    model = small_model(name)
    assert isinstance(model, Model)
    assert model.classifies == callable(getattr(model, "classify", None))
    if model.semi_supervised:
        model.set_data_sizes(100, 10)
    x = mv.tensor((np.random.default_rng(0).random((3, model.x_dim)) < 0.5).astype(np.float32))
    assert model.gaussian_encoder == isinstance(model.encoded_gaussian, str)  # it names what encode gives
    if model.gaussian_encoder:
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (3, model.z_dim)
    if model.classifies:
        assert model.classify(x).shape == (3,)
    model.set_epoch(0)  # every model takes the per-epoch call


def test_the_run_options_are_declared_by_the_models_that_load_runs():
    assert {name for name, cls in MODELS.items() if getattr(cls, "run_options", ())} == {"m1m2"}


def test_what_needs_a_capability_refuses_a_model_without_it():
    # Before: M2.encode() missing 1 required positional argument, 'GumbelSoftmaxVAE' object has
    # no attribute 'encode', 'VAE' object has no attribute 'classify'.
    from minivae.analysis import encode_dataset, latent_summary
    from minivae.evaluate import classification_error

    x = np.zeros((3, 12), np.float32)
    for name in ("m2", "gumbel"):
        model = build_model(name, x_dim=12, z_dim=2, hidden=(8,))
        for summarize in (encode_dataset, latent_summary):
            with pytest.raises(TypeError, match=rf"{type(model).__name__} cannot be used for latent statistics "
                                                rf".*: it does not declare gaussian_encoder"):
                summarize(model, x)
    with pytest.raises(TypeError, match="VAE cannot be used for a classification error: it does not declare "
                                        r"classifies \(VAE.classifies is False\)"):
        classification_error(build_model("vae", x_dim=12, z_dim=2, hidden=(8,)), x, np.arange(3))


def _small_model_and_batch(name):
    """A small model ``name``, ready for a loss, and a batch of 3 binary images for it."""
    model = small_model(name)
    if model.semi_supervised:
        model.set_data_sizes(100, 10)
    return model, mv.tensor((np.random.default_rng(0).random((3, model.x_dim)) < 0.5).astype(np.float32))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_methods_take_sample_counts_as_integers(name):
    # Before: k=2.5 drew 2 samples, samples=0 meant the default, n=-1 failed in the Philox draw.
    model, x = _small_model_and_batch(name)
    for bad, error, problem in ((2.5, TypeError, "an integer, got 2.5"), (0, ValueError, "at least 1, got 0")):
        with pytest.raises(error, match=f"^k must be {problem}"):
            model.log_weights(x, bad, Generator(0))
        with pytest.raises(error, match=f"^samples must be {problem}"):
            model.elbo(x, Generator(0), samples=bad)
    with pytest.raises(TypeError, match="^n must be an integer, got 2.5"):
        model.sample(2.5, Generator(0))
    with pytest.raises(ValueError, match="^n must be at least 0, got -1"):
        model.sample(-1, Generator(0))
    assert model.log_weights(x, np.int64(2), Generator(0)).shape == (2, 3)  # NumPy integers are integers


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sample_takes_probabilities_as_a_bool(name):
    # Before: labels passed third, model.sample(1, g, np.array([2])), were read as
    # probabilities=True and the image was drawn with the default label 0; with more labels NumPy
    # raised "The truth value of an array ... is ambiguous"; the string "False" gave means.
    model, _ = _small_model_and_batch(name)
    for bad in (np.array([2]), np.array([0, 1]), "False", 0):
        generator = Generator(0)
        with pytest.raises(TypeError, match="^probabilities must be True or False, got "):
            model.sample(2, generator, bad)
        assert generator.offset == 0  # refused before a draw
    assert model.sample(2, Generator(0), np.True_).shape == (2, model.x_dim)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_constructors_take_sample_counts_as_integers(name):
    options = dict(SMALL_MODEL, **MODEL_SIZES.get(name, {}))
    with pytest.raises(TypeError, match="^mc_samples must be an integer, got 2.7"):
        build_model(name, **options, mc_samples=2.7)
    with pytest.raises(ValueError, match="^mc_samples must be at least 1, got 0"):
        build_model(name, **options, mc_samples=0)
    if name in ("vae", "iwae", "flow", "ladder", "adgm", "sdgm"):  # those that may train on the IWAE bound
        with pytest.raises(TypeError, match="^iw_k must be an integer, got 1.5"):
            build_model(name, **options, iw_k=1.5)
    if name == "iwae":
        with pytest.raises(TypeError, match="^k must be an integer, got 2.7"):
            build_model(name, **options, k=2.7)


@pytest.mark.parametrize("name, layers", [(name, {}) for name in sorted(MODELS)] + [("iwae", {"layers": 2})])
def test_an_int_rng_seeds_one_generator_for_all_the_layers(name, layers):
    # Before: every layer made its own default_rng(0), so layers of one shape (mu and logvar
    # heads, mirrored encoder and decoder layers) started with the same weights.
    options = dict(SMALL_MODEL, **MODEL_SIZES.get(name, {}), **layers)

    def weights(rng):  # M1+M2's frozen M1 is built apart, from the global generator
        model = build_model(name, **options, rng=rng)
        return {n: p.data for n, p in model.named_parameters() if p.requires_grad and p.ndim == 2}

    seeded = weights(0)
    np.testing.assert_equal(seeded, weights(np.random.default_rng(0)))
    same = [(a, b) for a in seeded for b in seeded
            if a < b and seeded[a].shape == seeded[b].shape and np.array_equal(seeded[a], seeded[b])]
    assert not same


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_fixed_noise_address_is_refused(name):
    # Before: a Noise gave every draw of one call the same numbers (ADGM's eps_a == eps_z, the
    # chunks of M2's log_weights repeated, sample's pixels drawn from the words that made z).
    model, x = _small_model_and_batch(name)
    calls = [lambda noise: model.loss(x, noise), lambda noise: model.elbo(x, noise),
             lambda noise: model.log_weights(x, 2, noise), lambda noise: model.sample(2, noise)]
    for call in calls:
        with pytest.raises(TypeError, match="noise must be a minivae.random.Generator, not a Noise"):
            call(Noise(seed=1))
        call(Generator(seed=1))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_noise_that_is_no_philox_generator_is_refused(name):
    # Before: NumPy's generator met "normal() got an unexpected keyword argument 'dtype'" in
    # sample(), "noise must be a minivae.random.Noise or Generator, got Generator" in the VAE's
    # loss, or "shape= applies to counter-addressed noise" in M2's; a seed or None an
    # AttributeError.
    model, x = _small_model_and_batch(name)
    calls = [lambda noise: model.loss(x, noise), lambda noise: model.elbo(x, noise),
             lambda noise: model.log_weights(x, 2, noise), lambda noise: model.sample(2, noise)]
    for noise, kind in ((np.random.default_rng(0), "numpy.random._generator.Generator"), (3, "builtins.int"),
                        (None, "builtins.NoneType")):
        for call in calls:
            with pytest.raises(TypeError, match=rf"noise must be a minivae.random.Generator \(Generator\(seed\)\), "
                                                rf"got an object of type {kind}$"):
                call(noise)


@pytest.mark.parametrize("hidden, error, message", [
    ((), ValueError, "hidden is empty: give at least one size"),
    ((8, 0), ValueError, r"hidden\[1\] must be at least 1, got 0"),
    ((8, -3), ValueError, r"hidden\[1\] must be at least 1, got -3"),
    ((8, 4.5), TypeError, r"hidden\[1\] must be an integer, got 4.5"),
    ((8, True), TypeError, r"hidden\[1\] must be an integer, got True"),
    ((8, "4"), TypeError, r"hidden\[1\] must be an integer, got '4'"),
    ("84", TypeError, "hidden must be a sequence of integers, got '84'"),
    (8, TypeError, "hidden must be a sequence of integers, got 8"),
])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_constructors_check_the_hidden_widths(name, hidden, error, message):
    # Before: () raised IndexError (hidden[-1]), 0 built a layer of no units, 4.5 a layer of 4,
    # True one of 1, "84" layers of 8 and 4 units (its characters), -3 "negative dimensions".
    options = {**SMALL_MODEL, **MODEL_SIZES.get(name, {}), "hidden": hidden}
    if name == "gumbel" and hidden == ():  # no hidden layer: linear encoder and decoder
        build_model(name, **options)
        return
    with pytest.raises(error, match=f"^{message}$"):
        build_model(name, **options)


@pytest.mark.parametrize("name, options, error, message", [
    ("iwae", dict(layers=2, hidden2=()), ValueError, "hidden2 is empty"),
    ("iwae", dict(layers=2, hidden2=(8, 0)), ValueError, r"hidden2\[1\] must be at least 1, got 0"),
    ("ladder", dict(z_dims=(3, 0)), ValueError, r"z_dims\[1\] must be at least 1, got 0"),
    ("ladder", dict(z_dims=(3, 2.5)), TypeError, r"z_dims\[1\] must be an integer, got 2.5"),
    ("ladder-m2", dict(z_dims=(3, -2)), ValueError, r"z_dims\[1\] must be at least 1, got -2"),
    ("ladder-m2", dict(classifier_hidden=()), ValueError, "classifier_hidden is empty"),
    ("ladder-m2", dict(classifier_hidden=(8, 0.5)), TypeError, r"classifier_hidden\[1\] must be an integer"),
])
def test_constructors_check_their_other_lists_of_sizes(name, options, error, message):
    # Before: an empty list raised IndexError deep in a layer, a 0 built an empty layer.
    with pytest.raises(error, match=f"^{message}"):
        build_model(name, **{**SMALL_MODEL, **MODEL_SIZES.get(name, {}), **options})


@pytest.mark.parametrize("blocks, error, message", [
    (((8,), ()), ValueError, r"blocks\[1\] is empty"),
    ((8, 8), TypeError, r"blocks\[0\] must be a sequence of integers, got 8"),
    (5, TypeError, r"blocks must be a sequence of lists of hidden sizes, got 5"),
    (((8,), (0,)), ValueError, r"blocks\[1\]\[0\] must be at least 1, got 0"),
])
def test_two_layer_vae_checks_its_blocks(blocks, error, message):
    with pytest.raises(error, match=f"^{message}"):
        mv.models.TwoLayerVAE(x_dim=12, z_dims=(3, 2), blocks=blocks)


def test_a_gumbel_model_without_hidden_layers_trains():
    model = build_model("gumbel", x_dim=12, hidden=(), n_vars=2, n_classes=3, rng=0)
    x = mv.tensor((np.random.default_rng(0).random((3, 12)) < 0.5).astype(np.float32))
    loss, _ = model.loss(x, Generator(0))
    loss.backward()
    assert np.isfinite(float(loss.data))


#: (option, bad value, error, message) of the sizes most models take.
SIZE_CASES = [("x_dim", 0, ValueError, "x_dim must be at least 1, got 0"),
              ("x_dim", 12.0, TypeError, "x_dim must be an integer, got 12.0"),
              ("z_dim", 0, ValueError, "z_dim must be at least 1, got 0"),
              ("z_dim", -1, ValueError, "z_dim must be at least 1, got -1"),
              ("z_dim", 2.5, TypeError, "z_dim must be an integer, got 2.5")]
#: Models without a size of their own: the Ladder models and the Gumbel VAE take z_dim and
#: ignore it. (M1+M2's x_dim is M1's, checked as a size and refused when it differs.)
NOT_THEIRS = {("ladder", "z_dim"), ("ladder-m2", "z_dim"), ("gumbel", "z_dim")}


@pytest.mark.parametrize("name, option, value, error, message", [
    (name, *case) for name in sorted(MODELS) for case in SIZE_CASES if (name, case[0]) not in NOT_THEIRS])
def test_constructors_check_the_data_and_latent_sizes(name, option, value, error, message):
    # Before: a size of 0 built a model of empty layers, 2.5 one of 2 units, -1 failed with
    # NumPy's "negative dimensions are not allowed".
    with pytest.raises(error, match=f"^{message}$"):
        build_model(name, **{**SMALL_MODEL, **MODEL_SIZES.get(name, {}), option: value})


@pytest.mark.parametrize("name, options, error, message", [
    ("iwae", dict(layers=True), TypeError, "layers must be an integer, got True"),
    ("iwae", dict(layers=2, z1_dim=0), ValueError, "z1_dim must be at least 1, got 0"),
    ("ladder", dict(mlp_layers=0), ValueError, "mlp_layers must be at least 1, got 0"),
    ("ladder-m2", dict(mlp_layers=1.5), TypeError, "mlp_layers must be an integer, got 1.5"),
    ("flow", dict(flows=-1), ValueError, "flows must be at least 0, got -1"),
    ("flow", dict(flows=2.5), TypeError, "flows must be an integer, got 2.5"),
    ("gumbel", dict(n_vars=0), ValueError, "n_vars must be at least 1, got 0"),
    ("gumbel", dict(n_classes=1), ValueError, "n_classes must be at least 2, got 1"),
    ("adgm", dict(a_dim=0), ValueError, "a_dim must be at least 1, got 0"),
    ("sdgm-ssl", dict(a_dim=2.5), TypeError, "a_dim must be an integer, got 2.5"),
    ("m2", dict(num_classes=2.5), TypeError, "num_classes must be an integer, got 2.5"),
    ("ladder-m2", dict(num_classes="10"), TypeError, "num_classes must be an integer, got '10'"),
    ("m1m2", dict(z_dim=0), ValueError, "z_dim must be at least 1, got 0"),
])
def test_constructors_check_their_other_sizes(name, options, error, message):
    # Before: layers=True built the one-layer VAE, mlp_layers=0 and z1_dim=0 raised IndexError
    # or built empty layers, 2.5 flows were 2, one class gave a latent that carries nothing.
    with pytest.raises(error, match=f"^{message}$"):
        build_model(name, **{**SMALL_MODEL, **MODEL_SIZES.get(name, {}), **options})


@pytest.mark.parametrize("name, value", [("ladder", "false"), ("ladder", 0), ("ladder-m2", "no")])
def test_constructors_refuse_a_switch_that_is_no_bool(name, value):
    # Before: batch_norm="false" (truthy) built the model with batch normalization, 0 without.
    with pytest.raises(TypeError, match=f"^batch_norm must be True or False, got {value!r}$"):
        build_model(name, **{**SMALL_MODEL, **MODEL_SIZES.get(name, {}), "batch_norm": value})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_constructors_refuse_an_activation_that_is_no_name(name):
    # Before: AttributeError: 'NoneType' object has no attribute 'lower', from inside MLP.
    with pytest.raises(TypeError, match="^activation must be a name, one of relu, .*; got None$"):
        build_model(name, **{**SMALL_MODEL, **MODEL_SIZES.get(name, {}), "activation": None})


def test_an_unknown_activation_is_refused_where_no_layer_is_activated():
    # Before: a Gumbel VAE without hidden layers (one Linear each way) took any name.
    with pytest.raises(ValueError, match="^unknown activation 'swishy'; choose one of relu"):
        build_model("gumbel", x_dim=12, hidden=(), activation="swishy")


@pytest.mark.parametrize("name, options", [
    ("vae", {}), ("flow", {}), ("iwae", {"layers": 1}), ("iwae", {"layers": 2}), ("ladder", {}),
    ("adgm", {}), ("sdgm", {})])
def test_models_that_train_on_one_bound_refuse_mc_samples_with_iw_k(name, options):
    options = {**SMALL_MODEL, **MODEL_SIZES.get(name, {}), **options, "mc_samples": 2, "iw_k": 3}
    with pytest.raises(ValueError, match=r"^choose either mc_samples \(ELBO\) or iw_k \(IWAE bound\), not both$"):
        build_model(name, **options)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("beta", [-0.5, math.nan, math.inf], ids=["negative", "NaN", "inf"])
def test_a_kl_weight_out_of_range_is_refused_by_constructors_and_losses(name, beta):
    # Before: the constructors took any float, a loss any Python number: a negative beta
    # rewarded the posterior for leaving the prior, NaN or inf made the loss NaN. A NumPy
    # scalar (np.float32(-0.5)) was taken as a 0-d array, whose value is never read: unchecked.
    message = rf"invalid beta {beta}: it must be >= 0 and finite$"
    with pytest.raises(ValueError, match=message):
        build_model(name, **{**SMALL_MODEL, **MODEL_SIZES.get(name, {}), "beta": beta})
    model, x = _small_model_and_batch(name)
    for weight in (beta, np.float32(beta), np.float64(beta)):  # a NumPy scalar is a number too
        with pytest.raises(ValueError, match=message):
            model.loss(x, Generator(0), beta=weight)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("beta", ["1", True, None], ids=["string", "bool", "None"])
def test_constructors_refuse_a_kl_weight_that_is_no_number(name, beta):
    # Before: "1" was parsed and True taken as 1; None failed in float() without a name.
    with pytest.raises(TypeError, match=f"^beta must be a real number, got {beta!r}$"):
        build_model(name, **{**SMALL_MODEL, **MODEL_SIZES.get(name, {}), "beta": beta})


SEMI_SUPERVISED = [name for name in sorted(MODELS) if getattr(MODELS[name], "semi_supervised", False)]


@pytest.mark.parametrize("name", SEMI_SUPERVISED)
@pytest.mark.parametrize("option, value, error, message", [
    ("alpha", -1.0, ValueError, "invalid alpha -1.0: it must be >= 0 and finite"),
    ("alpha", math.nan, ValueError, "invalid alpha nan: it must be >= 0 and finite"),
    ("alpha_scale", -0.1, ValueError, "invalid alpha_scale -0.1: it must be >= 0 and finite"),
    ("alpha_scale", math.inf, ValueError, "invalid alpha_scale inf: it must be >= 0 and finite"),
    ("alpha", "0.1", TypeError, "alpha must be a real number, got '0.1'"),
], ids=["negative alpha", "NaN alpha", "negative alpha_scale", "inf alpha_scale", "string alpha"])
def test_semi_supervised_models_check_the_classifier_weight(name, option, value, error, message):
    # Before: a negative alpha (given, or from a negative alpha_scale) pushed the classifier's
    # loss the wrong way, NaN made the loss NaN, "0.1" was parsed.
    with pytest.raises(error, match=f"{message}$"):
        build_model(name, **{**SMALL_MODEL, **MODEL_SIZES.get(name, {}), option: value})
