"""A hand-written VAE in pure NumPy: the yardstick for minivae's training step.

The same model and objective as ``minivae.models.VAE`` with one Monte Carlo sample: an MLP
encoder ``784 -> 512 -> 256`` (ReLU) with two linear heads for the mean and log-variance of
q(z | x) (z-dim 50), the reparameterized sample ``z = mu + exp(logvar / 2) * eps``, a mirrored
decoder ``50 -> 256 -> 512 -> 784`` (ReLU, no final activation) giving Bernoulli logits, and

    loss = beta * mean_b KL(q(z | x_b) || N(0, I)) - mean_b log p(x_b | z_b)

with the analytic KL and the Bernoulli log-likelihood in its stable form
``sum_j [x_j l_j - softplus(l_j)]``. There is no engine here: the forward pass keeps what the
backward pass needs, and the backward pass is written out layer by layer. It is written with
care, as one would by hand (ReLU, bias and the loss's elementwise passes in place, Adam in place
with ``out=``), but without tricks an engine could not use.

Parameters are a list of arrays in minivae's order (``model.parameters()``): for each layer the
weight (in, out) and then the bias, encoder layers, then the mu head, the logvar head, then the
decoder layers. ``tests/test_reference_vae.py`` checks in float64 that the loss and every
gradient equal minivae's for the same weights and eps, and that ``ReferenceAdam`` makes the same
update as ``minivae.optim.Adam``.
"""
import math
import sys

import numpy as np

__all__ = ["ReferenceVAE", "ReferenceAdam", "init_params", "param_shapes"]


def param_shapes(x_dim=784, z_dim=50, hidden=(512, 256)):
    """The parameter shapes in minivae's order (see the module docstring)."""
    shapes = []
    enc = (x_dim,) + tuple(hidden)
    for n_in, n_out in zip(enc, enc[1:]):
        shapes += [(n_in, n_out), (n_out,)]
    shapes += [(hidden[-1], z_dim), (z_dim,)] * 2
    dec = (z_dim,) + tuple(hidden[::-1]) + (x_dim,)
    for n_in, n_out in zip(dec, dec[1:]):
        shapes += [(n_in, n_out), (n_out,)]
    return shapes


def init_params(seed=0, dtype=np.float32, **sizes):
    """PyTorch's default Linear initialization, U(-1/sqrt(in), 1/sqrt(in)) for weight and bias."""
    rng = np.random.default_rng(seed)
    params = []
    for shape in param_shapes(**sizes):
        if len(shape) == 2:
            bound = 1 / math.sqrt(shape[0])
        params.append(rng.uniform(-bound, bound, shape).astype(dtype))
    return params


def _xp(array):
    """NumPy, or CuPy for a CuPy array (the same code then runs on the GPU for ``--device gpu``)."""
    return sys.modules["cupy"] if type(array).__module__.startswith("cupy") else np


def _relu_backward(xp, g, out):
    """g * [out > 0] in place (``out`` is the ReLU's output; out > 0 exactly where its input is)."""
    xp.multiply(g, out > 0, out=g)
    return g


class ReferenceVAE:
    """The VAE's loss and gradients by hand; ``params`` is a list of arrays (kept, not copied)."""

    def __init__(self, params, beta=1.0):
        self.params = list(params)
        self.beta = float(beta)
        n = len(self.params) // 2  # linear layers: n_hidden (encoder) + 2 heads + n_hidden + 1
        self.n_enc = (n - 3) // 2
        self.dtype = self.params[0].dtype

    def _layers(self):
        p = self.params
        pairs = [(p[i], p[i + 1]) for i in range(0, len(p), 2)]
        k = self.n_enc
        return pairs[:k], pairs[k], pairs[k + 1], pairs[k + 2:]

    def loss_and_grads(self, x, eps):
        """(loss as a Python float, {"rec", "kl"} means, gradients in parameter order).

        ``x`` is the (B, x_dim) batch, ``eps`` the (B, z_dim) standard normals of the sample (a
        leading sample axis of size 1 is accepted, as minivae draws it).
        """
        enc, (Wm, bm), (Wl, bl), dec = self._layers()
        xp = _xp(x)
        B = x.shape[0]
        eps = eps.reshape(B, -1)
        beta = self.beta

        # ----- forward: keep each layer's input (the previous ReLU's output) -----
        enc_in, h = [], x
        for W, b in enc:
            enc_in.append(h)
            h = h @ W
            h += b
            xp.maximum(h, 0, out=h)
        mu = h @ Wm
        mu += bm
        logvar = h @ Wl
        logvar += bl
        std = xp.multiply(logvar, 0.5)
        xp.exp(std, out=std)
        noise = std * eps  # z - mu; d z / d logvar = noise / 2
        z = mu + noise
        dec_in, a = [], z
        for i, (W, b) in enumerate(dec):
            dec_in.append(a)
            a = a @ W
            a += b
            if i < len(dec) - 1:
                xp.maximum(a, 0, out=a)
        logits = a

        # Bernoulli log-likelihood: x l - softplus(l), softplus(l) = max(l, 0) + log1p(exp(-|l|)),
        # in place; sum(x l) is one dot product.
        tmp = xp.abs(logits)
        xp.negative(tmp, out=tmp)
        xp.exp(tmp, out=tmp)
        xp.log1p(tmp, out=tmp)
        softplus = xp.maximum(logits, 0)
        softplus += tmp
        rec_mean = (float(xp.vdot(x, logits)) - float(softplus.sum(dtype=self.dtype))) / B
        var = std * std
        kl_terms = mu * mu
        kl_terms += var
        kl_terms -= logvar
        kl_mean = 0.5 * (float(kl_terms.sum(dtype=self.dtype)) - kl_terms.size) / B
        loss = beta * kl_mean - rec_mean

        # ----- backward -----
        # d loss / d logits = (sigmoid(l) - x) / B, sigmoid(l) = (1 + tanh(l / 2)) / 2, in place
        # (np.where would be the obvious select, but it is several times slower than tanh)
        g = xp.multiply(logits, 0.5, out=tmp)
        xp.tanh(g, out=g)
        g += 1
        g *= 0.5
        g -= x
        g *= 1 / B
        grads_dec = []
        for i in range(len(dec) - 1, -1, -1):
            W, a_in = dec[i][0], dec_in[i]
            grads_dec += [g.sum(axis=0), a_in.T @ g]  # reversed below: weight, bias
            g_in = g @ W.T
            g = _relu_backward(xp, g_in, a_in) if i > 0 else g_in
        grads_dec.reverse()
        dz = g
        # z = mu + noise: d mu = dz + beta mu / B; d logvar = dz noise / 2 + beta (var - 1) / (2 B)
        dmu = xp.multiply(mu, beta / B)
        dmu += dz
        dlogvar = var
        dlogvar -= 1
        dlogvar *= beta * 0.5 / B
        dz *= noise
        dz *= 0.5
        dlogvar += dz
        h2 = h  # the encoder's last ReLU output feeds both heads
        grads_heads = [h2.T @ dmu, dmu.sum(axis=0), h2.T @ dlogvar, dlogvar.sum(axis=0)]
        g = dmu @ Wm.T
        g += dlogvar @ Wl.T
        _relu_backward(xp, g, h2)
        grads_enc = []
        for i in range(len(enc) - 1, -1, -1):
            W, a_in = enc[i][0], enc_in[i]
            grads_enc += [g.sum(axis=0), a_in.T @ g]
            if i > 0:
                g = _relu_backward(xp, g @ W.T, a_in)
        grads_enc.reverse()
        grads = grads_enc + grads_heads + grads_dec
        return loss, {"rec": rec_mean, "kl": kl_mean}, grads


class ReferenceAdam:
    """Adam exactly as ``minivae.optim.Adam`` computes it, in place with ``out=``:

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p = p + (m / (sqrt(v) + eps s)) * -(lr s / c1),  c1 = 1 - b1^t, s = sqrt(1 - b2^t)

    and, every ``flush_every`` steps (0: never), moment entries below the smallest normal number
    set to zero (the remedy for subnormal slowdown; see ``minivae.optim``).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, flush_every=10):
        self.params = list(params)
        self.lr, (self.b1, self.b2), self.eps = float(lr), betas, float(eps)
        self.flush_every = int(flush_every)
        xp = _xp(self.params[0])
        self.m = [xp.zeros_like(p) for p in self.params]
        self.v = [xp.zeros_like(p) for p in self.params]
        self.t = 0
        self._buf = xp.empty(max(p.size for p in self.params), dtype=self.params[0].dtype)
        self._mask = xp.empty(self._buf.size, dtype=bool)

    def step(self, grads):
        """Update every parameter in place from ``grads`` (read only)."""
        self.t += 1
        b1, b2, t = self.b1, self.b2, self.t
        s = math.sqrt(1 - b2 ** t)
        step_size = -(self.lr * s / (1 - b1 ** t))
        eps = self.eps * s
        flush = self.flush_every and t % self.flush_every == 0
        xp = _xp(self._buf)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            buf = self._buf[:p.size].reshape(p.shape)
            m *= b1
            xp.multiply(g, 1 - b1, out=buf)
            m += buf
            v *= b2
            xp.multiply(g, 1 - b2, out=buf)
            buf *= g
            v += buf
            xp.sqrt(v, out=buf)
            buf += eps
            xp.divide(m, buf, out=buf)
            buf *= step_size
            p += buf
            if flush:
                tiny = np.finfo(p.dtype).tiny
                mask = self._mask[:p.size].reshape(p.shape)
                for state in (m, v):  # = copyto(state, 0, where=|state| < tiny), faster
                    xp.abs(state, out=buf)
                    xp.greater_equal(buf, tiny, out=mask)
                    xp.multiply(state, mask, out=state)
                    state += 0.0  # -0 + 0 = +0
