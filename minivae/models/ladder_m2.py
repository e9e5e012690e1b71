"""Ladder M2: the semi-supervised M2 model (Kingma et al. 2014) with a Ladder VAE's inference and
generative networks (Sonderby et al. 2016), the model the reference implementation
(wohlert/semi-supervised-pytorch, ``LadderDeepGenerativeModel``) trains in its semi-supervised
MNIST example.

Latents: a label y in {0..K-1} and L stochastic layers z_1 (bottom) ... z_L (top).

Generative model:
    p(y) = 1/K,  p(z_L) = N(0, I),  p(z_{L-1} | z_L, y),  p(z_l | z_{l+1}) for l < L-1,  p(x | z_1, y),
every p(z_l | .) a diagonal Gaussian, p(x | .) Bernoulli. The label conditions the top of the
generative hierarchy (the first step of the top-down pass, which shapes every layer below it)
and the likelihood, as M2's p(x | y, z) does; with L = 1 this is M2's p(x | y, z_1).

Inference model, the Ladder VAE's with y:
1. the classifier q(y | x) (an MLP on x, as in M2 and the reference);
2. a deterministic bottom-up pass d_l = MLP_l(d_{l-1}) (d_0 = x) gives at every layer an
   estimate N(mu_hat_l, var_hat_l); y joins the last block, d_L = MLP_L(d_{L-1}, y), so the
   top estimate is q(z_L | x, y) (this is where the reference feeds y: its top ladder encoder
   reads [d_{L-1}, y]);
3. the top-down pass (``ladder.top_down``, shared with the Ladder VAE) draws z_L ~ q(z_L | x, y),
   then for l = L-1 ... 1 merges the bottom-up estimate with the generative p(z_l | z_{l+1}[, y])
   by precision weighting (``F.precision_weighted_merge``) and draws z_l. Every merged layer
   depends on y through the layers above it.

The bounds are those of ``semisupervised`` (Kingma et al.'s Eqs. 6, 7 and 9): the labelled bound
L(x, y), the unlabelled bound U(x) = sum_y q(y | x) L(x, y) + H(q(y | x)) with all K labels
enumerated in one batched pass, and alpha * E[-log q(y | x)] on the labelled batch. Inside
L(x, y) the latent term is the sum of the layers' closed-form KLs (each given a draw of the layer
above), as in the Ladder VAE:

    L(x, y) = E_q [log p(x | z_1, y) - beta (KL(q(z_L | x, y) || N(0, I))
              + sum_{l<L} KL(q(z_l | .) || p(z_l | z_{l+1}[, y])))] - log K.

Batch normalization and the enumerated labels. As in the Ladder VAE paper every deterministic
layer of the bottom-up and top-down networks is batch normalized (not the classifier, as in M2
and the reference). In the unlabelled bound each image meets all K labels in one pass, and every
batch-normalized layer that sees y (the top bottom-up block, the whole top-down pass, the
likelihood) takes its statistics over all rows of that pass (K * B in the top bottom-up block,
which comes before the draws, K * S * B after them), not over the rows of each label
separately. Per-label statistics would erase the label: where y enters a layer its
contribution y W_y is the same for all B rows of a label, so a per-label batch mean subtracts it
exactly and the per-label variance never sees it; the first normalized layer after y would give
the same output for every label in training mode (q(z_L | x, y) would not depend on y while
training, and would in eval mode, with running statistics). Over the enumerated batch the label
shifts are differences between rows and survive. This is also what the reference computes: it
repeats x K times and runs one batch of K * B rows. The bottom-up blocks below the label are
computed once, on the B images: K identical copies of a batch have the same mean and (biased)
variance as one copy, so this equals the repeated batch at 1/K of the cost (only the n / (n - 1)
factor of the running variance's update differs). The labelled batch is a pass of its own, with
its own statistics (as in the reference), and both passes update the running statistics that
evaluation uses. So in training mode a label's bound depends on the other labels' rows through
the statistics: the enumerated bound equals an explicit loop over labels in eval mode (every row
normalized by constants) or without batch normalization, and a loop that stacks the labels as
one K * B batch (the reference's way) in training mode too (see tests/test_ladder_m2.py).

Sizes: ``hidden`` lists one width per stochastic layer (its length is L), ``mlp_layers`` dense
layers of that width sit between layer l and l+1 both ways, ``z_dims`` are the latent sizes
(default 64, 32, 16, 8, 4 cut to L, as for ``ladder``); ``z_dim`` is accepted for the trainer's
common settings and ignored. The classifier has one hidden layer of ``hidden[0]`` units unless
``classifier_hidden`` is given. The defaults are the reference example's ladder blocks (three
layers of 128 units, one dense layer per block, batch normalization, leaky ReLU); its example
also uses z_dims 32, 16, 8, 100 labels, Adam at lr 3e-4, batches of 100, a KL warm-up over 200
epochs and 251 epochs:
``minivae train --model ladder-m2 --n-labelled 100 --hidden 128 128 128 --set z_dims=[32,16,8]
--activation leaky_relu --lr 3e-4 --lr-schedule constant --warmup 200 --epochs 251``.
Where we differ from the reference: y also conditions p(z_{L-1} | z_L, y) (its generative
hierarchy is label-free); p(x | z_1, y) mirrors the first ladder block (its likelihood is a
three-layer ReLU MLP without batch norm); variances are exp(logvar), not exp(softplus(.)) (which
keeps them above 1); the merge is the stable op, not a division of precisions; the KLs are
analytic, not single-sample estimates.

Cost: the bottom-up blocks below the label and the classifier run once per image; the top
bottom-up block runs on K * B rows (K = 10 labels), the top-down pass and the likelihood on
K * S * B rows (S = ``mc_samples``).
"""
from .. import functional as F
from .. import nn
from ..checks import check_bool, check_integer, check_sizes
from ..distributions import sample_bernoulli, standard_normal
from .base import check_noise
from .common import MLP, GaussianHead, GaussianLayer, JointMLP, rsample
from .ladder import check_ladder_sizes, kl_terms, log_ratio, top_down
from .semisupervised import SemiSupervised


class JointGaussianLayer(nn.Module):
    """A diagonal Gaussian conditioned on several inputs that broadcast (e.g. z and a label grid):
    (mu, logvar) = GaussianHead(JointMLP(inputs))."""

    def __init__(self, in_sizes, hidden, n_out, activation="relu", batch_norm=False, rng=None):
        super().__init__()
        self.trunk = JointMLP(in_sizes, hidden, activation, batch_norm, rng=rng)
        self.head = GaussianHead(tuple(hidden)[-1], n_out, rng=rng)

    def forward(self, *xs):
        """Return (mu, logvar)."""
        return self.head(self.trunk(*xs))


class LadderM2(SemiSupervised):
    """M2 with a Ladder VAE encoder/decoder of ``len(hidden)`` stochastic layers (see the module
    docstring): classifier q(y|x), bottom-up pass with y at its top, top-down pass with
    precision-weighted posteriors, p(z_{L-1} | z_L, y), p(x | z_1, y).

    ``alpha`` (None: 0.1 N / N_l), ``alpha_scale``, ``labelled_weight``, ``beta`` and ``mc_samples``
    are those of ``SemiSupervised``; ``iw_k`` is accepted for the trainer's common settings and must be 1.
    """

    unused_settings = {"z_dim": "its latent sizes are --set z_dims"}

    def __init__(self, x_dim=784, z_dims: tuple[int, ...] | None = None, hidden=(128, 128, 128),
                 mlp_layers=1, activation="leaky_relu", batch_norm=True, num_classes=10,
                 classifier_hidden: tuple[int, ...] | None = None, alpha: float | None = None,
                 alpha_scale=0.1, beta=1.0, mc_samples=1, iw_k=1, labelled_weight="batch", z_dim=None,
                 rng=None):
        super().__init__(num_classes, alpha, alpha_scale, beta, mc_samples, labelled_weight)
        rng = nn.init.get_rng(rng)  # one generator for all the layers (see models.base)
        if iw_k != 1:
            raise ValueError("ladder-m2 trains on the ELBO-based bounds; iw_k must be 1")
        hidden, z_dims = check_ladder_sizes("ladder-m2", hidden, z_dims)
        self.x_dim, self.z_dims = check_integer(x_dim, "x_dim", minimum=1), z_dims
        n, k, z = len(hidden), self.num_classes, self.z_dims
        mlp_layers = check_integer(mlp_layers, "mlp_layers", minimum=1)
        blocks = [(h,) * mlp_layers for h in hidden]
        inputs = (x_dim,) + hidden[:-1]
        classifier_hidden = ((hidden[0],) if classifier_hidden is None
                             else check_sizes(classifier_hidden, "classifier_hidden"))
        self.classifier = nn.Sequential(MLP((x_dim,) + classifier_hidden, activation, rng=rng),
                                        nn.Linear(classifier_hidden[-1], k, rng=rng))
        # Bottom-up: label-free blocks, then the top block reads (d_{L-1}, y).
        up = [MLP((n_in,) + b, activation, batch_norm=batch_norm, rng=rng)
              for n_in, b in zip(inputs[:-1], blocks[:-1])]
        up.append(JointMLP((inputs[-1], k), blocks[-1], activation, batch_norm, rng=rng))
        self.up = nn.ModuleList(up)
        self.up_heads = nn.ModuleList([GaussianHead(h, d, rng=rng) for h, d in zip(hidden, z)])
        # Top-down (generative): p(z_l | z_{l+1}) mirror the blocks; the top one also reads y.
        priors = [GaussianLayer(z[l + 1], blocks[l + 1][::-1], z[l], activation, batch_norm, rng=rng)
                  for l in range(n - 2)]
        if n > 1:
            priors.append(JointGaussianLayer((z[-1], k), blocks[-1][::-1], z[-2], activation,
                                             batch_norm, rng=rng))
        self.priors = nn.ModuleList(priors)
        self.likelihood = JointMLP((z[0], k), blocks[0][::-1], activation, batch_norm, rng=rng)
        self.likelihood_logits = nn.Linear(hidden[0], x_dim, rng=rng)

    @property
    def z_dim(self):
        """The size of the top layer z_L."""
        return self.z_dims[-1]

    # ----- the networks ------------------------------------------------------------------------
    def bottom_up(self, x, y):
        """Each layer's bottom-up estimate (mu_hat, logvar_hat), bottom to top; the top one is
        q(z_L | x, y). y is one-hot, (B, K), or a label grid (L, 1, B or 1, K): the estimates
        below the top are (B, d_l), the top one carries y's leading axes."""
        d, out = x, []
        top = len(self.up) - 1
        for l, (net, head) in enumerate(zip(self.up, self.up_heads)):
            d = net(d, y) if l == top else net(d)
            out.append(head(d))
        return out

    def prior(self, l, z_above, y):
        """(mu, logvar) of p(z_l | z_{l+1}) for 0-based l < L - 1 (with y for the top step, l = L - 2)."""
        if l == len(self.z_dims) - 2:
            return self.priors[l](z_above, y)
        return self.priors[l](z_above)

    def logits(self, z_bottom, y):
        """The Bernoulli logits of p(x | z_1, y)."""
        return self.likelihood_logits(self.likelihood(z_bottom, y))

    def decode(self, z_top, y):
        """Bernoulli logits of p(x | .) from z_L and y through the conditional means below
        (z_l = mean of p(z_l | z_{l+1}[, y])): the deterministic decoder, for pictures."""
        z = z_top
        for l in reversed(range(len(self.z_dims) - 1)):
            z = self.prior(l, z, y)[0]
        return self.logits(z, y)

    def posterior(self, x, y, samples, noise):
        """``samples`` draws from q(z_1..z_L | x, y) for labels y of shape (L, 1, B or 1, K): z, q and
        p per layer, bottom to top, as ``ladder.top_down`` returns them; z_l is (L, samples, B, d_l)."""
        bottom_up = self.bottom_up(x, y)
        shape = (y.shape[0], samples, x.shape[0], self.z_dims[-1])
        return top_down(bottom_up, lambda l, z_above: self.prior(l, z_above, y), noise, shape)

    # ----- what SemiSupervised needs -------------------------------------------------------------
    def _context(self, x, samples, noise, mean=False):
        return {"samples": samples}  # nothing is drawn before y

    def _class_logits(self, x, context):
        return self.classifier(x).reshape(1, x.shape[0], self.num_classes)

    def _terms(self, x, y, context, noise, analytic=True):
        """log p(x | z_1, y) and the latent part: minus the sum of the layers' analytic KLs, or
        log p(z_1..z_L | y) - log q(z_1..z_L | x, y) at the draws; each (L, S, B) or broadcastable."""
        zs, q, p = self.posterior(x, y, context["samples"], noise)
        rec = F.bernoulli_log_prob(self.logits(zs[0], y), x)
        if not analytic:
            return rec, log_ratio(zs, q, p)
        kls = kl_terms(q, p)
        latent = -kls[-1]  # the top layer's KL, (L, 1, B): q(z_L | x, y) does not depend on the draw
        for term in kls[:-1]:
            latent = latent - term
        return rec, latent

    def sample(self, n, noise, probabilities=True, labels=None):
        """n images by ancestral sampling from z_L ~ N(0, I) down, with labels 0, 1, ..., K-1, 0, ...
        (or ``labels``). Runs in eval mode (running statistics, left unchanged)."""
        check_noise(noise)
        probabilities = check_bool(probabilities, "probabilities")
        param = next(iter(self.parameters()))
        y = self.sample_labels(n, labels, param)
        with nn.evaluating(self):
            z = standard_normal(noise, (n, self.z_dims[-1]), param)
            for l in reversed(range(len(self.z_dims) - 1)):
                z = rsample(*self.prior(l, z, y), noise)
            probs = F.sigmoid(self.logits(z, y)).data
        return probs if probabilities else sample_bernoulli(probs, noise)
