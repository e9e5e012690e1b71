"""The VAE family. Each model exposes ``loss(x, noise, beta)`` and ``log_weights(x, k, noise)``."""
from .common import MLP, GaussianHead, iwae_bound
from .vae import VAE
from .auxiliary import ADGM, SDGM, SemiSupervisedADGM, SemiSupervisedSDGM
from .m2 import M2
from .m1m2 import M1M2
from .flow import FlowVAE
from .gumbel import GumbelSoftmaxVAE
from .iwae import TwoLayerVAE, iwae
from .ladder import LadderVAE
from .ladder_m2 import LadderM2

MODELS = {
    # unsupervised (iwae is a factory: the one-layer VAE(iw_k=k) or TwoLayerVAE)
    "vae": VAE, "iwae": iwae, "ladder": LadderVAE, "flow": FlowVAE, "gumbel": GumbelSoftmaxVAE,
    "adgm": ADGM, "sdgm": SDGM,
    # semi-supervised (class attribute semi_supervised = True): trained with labels too
    "m2": M2, "adgm-ssl": SemiSupervisedADGM, "sdgm-ssl": SemiSupervisedSDGM, "ladder-m2": LadderM2,
    "m1m2": M1M2,  # M2 on the latent features of a trained VAE (--set m1=RUN)
}


def registered(name):
    """The constructor registered as ``name`` in ``MODELS`` (a class, or for ``iwae`` a function
    that makes one); ValueError naming the registered ones for another name."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None


def build_model(name, **kwargs):
    """Make the model registered as ``name`` (see ``MODELS``) with its keyword arguments."""
    return registered(name)(**kwargs)
