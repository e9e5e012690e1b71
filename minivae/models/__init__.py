"""The VAE family. Each model exposes ``loss(x, noise, beta)`` and ``log_weights(x, k, noise)``."""
from .common import MLP, GaussianHead, iwae_bound
from .vae import VAE
from .auxiliary import ADGM, SDGM, SemiSupervisedADGM, SemiSupervisedSDGM
from .m2 import M2
from .flow import FlowVAE
from .gumbel import GumbelSoftmaxVAE
from .iwae import TwoLayerVAE, iwae
from .ladder import LadderVAE
from .ladder_m2 import LadderM2

MODELS = {"vae": VAE}
# Semi-supervised models (class attribute semi_supervised = True) train with labels too.
MODELS.update({"m2": M2, "adgm": ADGM, "sdgm": SDGM, "adgm-ssl": SemiSupervisedADGM,
               "sdgm-ssl": SemiSupervisedSDGM})
# Unsupervised models beyond the VAE (iwae is a factory: one-layer VAE(iw_k=k) or TwoLayerVAE).
MODELS.update({"iwae": iwae, "ladder": LadderVAE, "flow": FlowVAE, "gumbel": GumbelSoftmaxVAE})
MODELS["ladder-m2"] = LadderM2  # semi-supervised too: M2 with a Ladder VAE encoder/decoder


def build_model(name, **kwargs):
    """Make the model registered as ``name`` (see ``MODELS``) with its keyword arguments."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None
    return cls(**kwargs)
