"""Layers: Linear, LinearReLU, BatchNorm1d and the activation modules (thin wrappers over
``minivae.ops``)."""
import math

import numpy as np

from .. import ops as F
from ..backend import get_default_dtype
from ..checks import FINITE, check_bool, check_integer, check_ranges
from ..ops.norm import SETTING_RANGES, batch_norm
from . import init
from .module import Module, Parameter


def _dtype(dtype):
    return np.dtype(get_default_dtype() if dtype is None else dtype)


class Linear(Module):
    """y = x @ W + b with W of shape (in_features, out_features) (the layout of ``F.linear``).

    Default initialization as in PyTorch: W by ``kaiming_uniform_(a=sqrt(5))``, i.e.
    U(-1/sqrt(in), 1/sqrt(in)), and b from U(-1/sqrt(in), 1/sqrt(in)); drawn from ``rng``
    (None: ``nn.init``'s default generator; an int seed; or a Generator), weight first.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=None, rng=None):
        super().__init__()
        dtype = _dtype(dtype)
        self.in_features = check_integer(in_features, "in_features", minimum=0)
        self.out_features = check_integer(out_features, "out_features", minimum=0)
        self.weight = Parameter(np.empty((self.in_features, self.out_features), dtype=dtype))
        if check_bool(bias, "bias"):
            self.bias = Parameter(np.empty(self.out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng=None):
        """Draw the default initialization again from ``rng`` (see the class docstring)."""
        rng = init.get_rng(rng)
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=rng)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound, rng=rng)

    def forward(self, x):
        """x @ W + b as one fused op."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        """The settings shown by repr."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LinearReLU(Linear):
    """y = max(x @ W + b, 0): a ``Linear`` layer and its ReLU as one fused op (``F.linear_relu``).

    The same numbers as ``Sequential(Linear(...), ReLU())``, with one array and one graph node
    fewer per layer; the parameters (and their initialization) are those of ``Linear``.
    """

    def forward(self, x):
        """max(x @ W + b, 0) as one fused op."""
        return F.linear_relu(x, self.weight, self.bias)


class BatchNorm1d(Module):
    """Batch normalization (Ioffe & Szegedy 2015) of (N, C) or (N, C, L) input over the batch.

    Training mode: normalize with the batch mean and (biased) variance in one fused op and update
    ``running_mean`` / ``running_var`` with ``momentum`` (the unbiased batch variance, as in
    PyTorch); ``momentum=None`` gives a cumulative average over ``num_batches_tracked`` batches.
    Evaluation mode: normalize with the running statistics. ``affine`` adds the learned
    per-channel scale ``weight`` (ones) and shift ``bias`` (zeros). With
    ``track_running_stats=False`` batch statistics are used in both modes.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=None):
        super().__init__()
        dtype = _dtype(dtype)
        check_ranges(type(self), SETTING_RANGES, eps=eps)
        if momentum is not None:  # None: the cumulative average
            check_ranges(type(self), SETTING_RANGES, momentum=momentum)
        self.num_features = check_integer(num_features, "num_features", minimum=1)
        self.eps, self.momentum = float(eps), None if momentum is None else float(momentum)
        self.affine = check_bool(affine, "affine")
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats")
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(self.num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(self.num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self):
        """Running mean 0, running variance 1, batch counter 0 (in place)."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def forward(self, x):
        """Normalize ``x`` per channel (see the class docstring for the two modes)."""
        if x.ndim not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm1d({self.num_features}) expects input of shape (N, "
                             f"{self.num_features}) or (N, {self.num_features}, L), got {tuple(x.shape)}")
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                              training=False, eps=self.eps)
        momentum = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1  # in place: the buffer array stays the same object
            momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                        else self.momentum)
        update = self.training and self.track_running_stats
        return batch_norm(x, self.weight, self.bias,
                          self.running_mean if update else None,
                          self.running_var if update else None,
                          training=True, momentum=momentum, eps=self.eps)

    def extra_repr(self):
        """The settings shown by repr."""
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class Identity(Module):
    """Returns its input unchanged (a placeholder, e.g. for "no activation")."""

    def forward(self, x):
        """Return ``x``."""
        return x


class ReLU(Module):
    """max(x, 0) elementwise."""

    def forward(self, x):
        """Apply ``F.relu``."""
        return F.relu(x)


class LeakyReLU(Module):
    """x for x > 0, else ``negative_slope`` * x."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        check_ranges(type(self), {"negative_slope": FINITE}, negative_slope=negative_slope)
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        """Apply ``F.leaky_relu``."""
        return F.leaky_relu(x, slope=self.negative_slope)

    def extra_repr(self):
        """The settings shown by repr."""
        return f"negative_slope={self.negative_slope}"


class ELU(Module):
    """x for x > 0, else ``alpha`` * (e^x - 1)."""

    def __init__(self, alpha=1.0):
        super().__init__()
        check_ranges(type(self), {"alpha": FINITE}, alpha=alpha)
        self.alpha = float(alpha)

    def forward(self, x):
        """Apply ``F.elu``."""
        return F.elu(x, alpha=self.alpha)

    def extra_repr(self):
        """The settings shown by repr."""
        return f"alpha={self.alpha}"


class Tanh(Module):
    """tanh(x) elementwise."""

    def forward(self, x):
        """Apply ``F.tanh``."""
        return F.tanh(x)


class Sigmoid(Module):
    """1 / (1 + e^-x) elementwise."""

    def forward(self, x):
        """Apply ``F.sigmoid``."""
        return F.sigmoid(x)


class Softplus(Module):
    """log(1 + e^x) elementwise (computed stably)."""

    def forward(self, x):
        """Apply ``F.softplus``."""
        return F.softplus(x)


#: Activation modules by name, for configuration strings (``--activation relu``).
ACTIVATIONS = {"relu": ReLU, "leaky_relu": LeakyReLU, "elu": ELU, "tanh": Tanh,
               "sigmoid": Sigmoid, "softplus": Softplus, "identity": Identity}


def activation(name):
    """A new activation module from its name (a key of ``ACTIVATIONS``, case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name, one of {', '.join(ACTIVATIONS)}; got {name!r}")
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None
