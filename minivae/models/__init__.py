"""The VAE family. Each model exposes ``loss(x, noise, beta)`` and ``log_weights(x, k, noise)``."""
from .common import MLP, GaussianHead, iwae_bound
from .vae import VAE

MODELS = {"vae": VAE}


def build_model(name, **kwargs):
    """Make the model registered as ``name`` (see ``MODELS``) with its keyword arguments."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None
    return cls(**kwargs)
