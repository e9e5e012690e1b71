"""Every registered model declares its capabilities (models.base.Model) truthfully."""
import numpy as np
import pytest

import minivae as mv
from minivae.models import MODELS, build_model
from minivae.models.base import Model
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
