"""Planar normalizing flows (Rezende & Mohamed 2015), with their log-det-Jacobian per example.

A planar transform moves z along a direction u by an amount that depends on one projection:

    f(z) = z + u_hat h(w^T z + b),   h = tanh,

and has the Jacobian determinant (matrix determinant lemma)

    det df/dz = 1 + u_hat^T psi(z),  psi(z) = h'(w^T z + b) w = (1 - h^2) w.

It is invertible when w^T u_hat >= -1, which the constraint of the paper's appendix enforces:

    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2,   m(a) = -1 + softplus(a),

so that w^T u_hat = m(w^T u) > -1. Then, with s = softplus(w^T u) > 0,

    1 + u_hat^T psi = 1 + (1 - h^2) m(w^T u) = h^2 + (1 - h^2) s > 0,

and the log-determinant is computed in that last form: written as 1 + (1 - h^2)(-1 + s), the sum
-1 + s rounds to exactly -1 for w^T u below about -37 (float64; -17 in float32), and
log(h^2) is -inf where h = 0.
Chaining K transforms z_K = f_K o ... o f_1 (z_0) gives the density
log q_K(z_K) = log q_0(z_0) - sum_k log |det df_k/dz_{k-1}| used in the bound.

Everything is per example: u, w, b may differ between the examples of a batch (amortized flows,
predicted by the encoder as in the paper) and the log-determinant has one value per sample and
example, shape (S, B) for z of shape (S, B, D); it is never summed over the batch.
"""
from . import functional as F
from . import nn
from .autograd import tensor
from .backend import get_array_module
from .checks import check_integer


def constrain_u(u, w):
    """u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 with m(a) = -1 + softplus(a), per row
    (the last axis is the latent dimension), so that w^T u_hat = m(w^T u) > -1."""
    wu = F.sum(w * u, axis=-1, keepdims=True)
    w_norm2 = F.sum(w * w, axis=-1, keepdims=True)
    return u + (F.softplus(wu) - 1.0 - wu) * w / w_norm2


def planar_flow(z, u, w, b):
    """One planar transform: (f(z), log |det df/dz|) for z of shape (..., D).

    ``u`` and ``w`` (..., D) and ``b`` (...) broadcast against z without its last axis (one
    transform per example, shared by its samples); ``u`` is constrained here (``constrain_u``).
    The log-determinant, log(h^2 + (1 - h^2) softplus(w^T u)) (the module docstring), has z's
    shape without the last axis: one value per sample and example.
    """
    u_hat = constrain_u(u, w)
    h = F.tanh(F.sum(w * z, axis=-1) + b)  # (...): one projection per sample and example
    h2 = h * h
    log_det = F.log(h2 + (1.0 - h2) * F.softplus(F.sum(w * u, axis=-1)))
    return z + u_hat * F.reshape(h, h.shape + (1,)), log_det


class AmortizedPlanarFlows(nn.Module):
    """K planar transforms whose parameters (u_k, w_k, b_k) are predicted from the encoder's
    features for every example (Rezende & Mohamed's amortized flows).

    The parameters come from one linear layer of the encoder's last hidden features, built with
    the model, so they are ordinary model parameters (an optimizer made from
    ``model.parameters()`` trains them). ``forward(h, z0)`` returns (z_K, sum_k log |det J_k|),
    the second of shape z0.shape[:-1]. ``z_dim`` is an integer of at least 1, ``n_flows`` of at
    least 0 (no transform: the identity).
    """

    def __init__(self, n_features, z_dim, n_flows, rng=None):
        super().__init__()
        # Read with int(), z_dim 3.7 built flows of width 3 without a word.
        self.z_dim = check_integer(z_dim, "z_dim", minimum=1)
        self.n_flows = check_integer(n_flows, "n_flows", minimum=0)
        self.params = nn.Linear(n_features, self.n_flows * (2 * self.z_dim + 1), rng=rng)

    def forward(self, h, z):
        """Apply the K transforms to z (..., B, D) with parameters from features h (B, F)."""
        if self.n_flows == 0:  # the identity: log-determinant 0
            return z, tensor(get_array_module(z.data).zeros(z.shape[:-1], dtype=z.dtype))
        p, total = self.params(h), None
        D, step = self.z_dim, 2 * self.z_dim + 1
        for k in range(self.n_flows):
            base = k * step
            u, w, b = p[:, base:base + D], p[:, base + D:base + 2 * D], p[:, base + 2 * D]
            z, log_det = planar_flow(z, u, w, b)
            total = log_det if total is None else total + log_det
        return z, total

    def extra_repr(self):
        """The settings shown by repr."""
        return f"z_dim={self.z_dim}, n_flows={self.n_flows}"
