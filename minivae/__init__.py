"""minivae: variational autoencoders on a small reverse-mode autodiff engine (NumPy / CuPy)."""
from . import backend, functional, ops
from .autograd import (AnomalyError, Tensor, detect_anomaly, enable_grad, is_grad_enabled, no_grad,
                       set_grad_enabled, tensor)
from .function import Function, InPlaceModificationError
from .gradcheck import GradcheckError, gradcheck

__version__ = "0.1.0"
