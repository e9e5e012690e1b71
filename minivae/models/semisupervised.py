"""What the semi-supervised models (M2, ADGM, SDGM) share: the bounds with a label y.

Notation (Kingma et al. 2014, "Semi-supervised learning with deep generative models", Sec. 3.1).
A model has a label y in {0..K-1}, continuous latents h (z for M2; a and z for ADGM/SDGM), a
uniform prior p(y) = 1/K and an inference model with a classifier q(y | x, ...). For a labelled
pair the bound is (their Eq. 6, written here as a quantity to maximize)

    L(x, y) = E_q(h|x,y) [ log p(x | y, h) + log p(y) + log p(h) - log q(h | x, y) ] <= log p(x, y),

for an unlabelled x the label is a latent variable too (their Eq. 7):

    U(x) = sum_y q(y | x) L(x, y) + H(q(y | x)) <= log p(x),

and the training objective over labelled pairs and unlabelled images adds a classification
loss that trains q(y | x) on the labels directly (their Eq. 9), here per minibatch:

    loss = -mean_u U(x) + w * (alpha * mean_l [-log q(y | x)] - mean_l L(x, y)),
    alpha = 0.1 * N / N_l by default,

with N the number of training images and N_l the number of labels. The paper's objective
(Eq. 9) weighs the classifier's mean by 0.1 N against the labelled bound's sum over the N_l
pairs; here both labelled terms are means over their batch, and 0.1 N / N_l keeps that ratio,
whatever N_l. The setting ``labelled_weight`` gives w:

* "batch" (the default): w = 1, the labelled batch weighs as much as the unlabelled one. Against
  the unlabelled bound both labelled terms then weigh N / N_l times more than in the paper's
  objective, which is how the authors' code of the ADGM (Maaloe et al. 2016) scales them;
* "image": w = N_l / N, each labelled image weighs as much as one unlabelled image, as in the
  paper's objective (Eq. 9 divided by N) and its authors' code (the classifier's weight is then
  0.1, the labelled bound's N_l / N).

The sum over y in U(x) is exact: all K labels are enumerated in one batched pass. The label is
an extra leading axis: a grid of one-hot vectors of shape (K, 1, 1, K) meets x of shape
(B, D) in the first layer of each network (``common.JointMLP``: x W_x + y W_y + b broadcasts to
(K, 1, B, H)), so x W_x is computed once for all K labels, and every per-example quantity has
shape (L, S, B): L labels (K when enumerating, 1 for a labelled batch), S samples, B examples.

A subclass provides three methods:

* ``_context(x, samples, noise, mean=False)``: what the inference model draws before y (for
  ADGM/SDGM the auxiliary a ~ q(a | x) and log q(a | x); for M2 nothing), as a dict with at
  least ``samples``;
* ``_class_logits(x, context)``: the logits of q(y | x, ...), shape (S or 1, B, K);
* ``_terms(x, y, context, noise, analytic)``: for labels y of shape (L, 1, B or 1, K), the
  reconstruction log p(x | ...) and the latent part log p(h | y) - log q(h | x, y) (the analytic
  -KL where ``analytic`` and a closed form exists), each of shape (L, S, B) or broadcastable.
"""
from .. import functional as F
from ..autograd import no_grad, tensor
from ..backend import get_array_module
from ..checks import check_choice, check_integer, check_ranges
from ..distributions import log_categorical, log_uniform_categorical, one_hot
from .base import SETTING_RANGES, Model, check_batch, check_noise, kl_weight_of

#: How the labelled terms weigh against the unlabelled bound (the module docstring's w): "batch",
#: the labelled batch as the unlabelled batch; "image", each labelled image as one unlabelled image.
LABELLED_WEIGHTS = ("batch", "image")


def label_grid(num_classes, like):
    """All K labels as one-hot rows of shape (K, 1, 1, K): the label axis leads, then samples and batch."""
    xp = get_array_module(like.data)
    return tensor(xp.eye(num_classes, dtype=like.dtype).reshape(num_classes, 1, 1, num_classes))


def split_labelled(labelled):
    """(x_l, labels) from a loss's ``labelled`` argument, which must be such a pair."""
    if not (isinstance(labelled, (tuple, list)) and len(labelled) == 2):
        raise TypeError(f"labelled must be a pair (x_l, labels), got a {type(labelled).__name__}")
    return labelled


class SemiSupervised(Model):
    """The labelled and unlabelled bounds, the loss, the log-weights and the classifier of a
    model with a label y (see the module docstring for the math and what a subclass provides).

    ``alpha`` weights the classification loss; None means 0.1 * N / N_l, fixed once the trainer
    calls ``set_data_sizes(N, N_l)`` (``alpha_scale`` replaces the 0.1). ``beta`` weights the
    continuous latents' KL terms (warm-up, beta-VAE); the label's terms are not scaled. The
    three weights are finite and at least 0 (``base.SETTING_RANGES``): a negative ``alpha``
    would train the classifier away from the given labels. ``labelled_weight`` ("batch" or
    "image", ``LABELLED_WEIGHTS``) weighs the labelled terms against the unlabelled bound (see the
    module docstring); "image" needs ``set_data_sizes`` too.
    ``mc_samples`` averages the bounds over that many draws of the continuous latents.
    """

    semi_supervised = True
    classifies = True
    labelled_statistics = ("labelled_bound", "class_loss")
    #: Rows (labels x samples x examples) one pass of ``log_weights`` may hold; more are chunked.
    max_rows = 20000

    def __init__(self, num_classes=10, alpha=None, alpha_scale=0.1, beta=1.0, mc_samples=1,
                 labelled_weight="batch"):
        super().__init__()
        self.labelled_weight = check_choice(labelled_weight, "labelled_weight", LABELLED_WEIGHTS)
        # The module docstring's w: 1, or N_l / N once set_data_sizes gives the sizes.
        self.labelled_scale = 1.0 if labelled_weight == "batch" else None
        self.num_classes = check_integer(num_classes, "num_classes", minimum=2)
        settings = dict(beta=beta, alpha_scale=alpha_scale)
        if alpha is not None:  # None: alpha_scale * N / N_l, from set_data_sizes
            settings["alpha"] = alpha
        check_ranges(type(self), SETTING_RANGES, **settings)
        self.beta = float(beta)
        self.mc_samples = check_integer(mc_samples, "mc_samples", minimum=1)
        self.alpha_given = None if alpha is None else float(alpha)
        self.alpha, self.alpha_scale = self.alpha_given, float(alpha_scale)

    # ----- what a subclass provides ------------------------------------------------------------
    def _context(self, x, samples, noise, mean=False):
        raise NotImplementedError

    def _class_logits(self, x, context):
        raise NotImplementedError

    def _terms(self, x, y, context, noise, analytic=True):
        raise NotImplementedError

    # ----- the bounds --------------------------------------------------------------------------
    def set_data_sizes(self, n_total, n_labelled):
        """Fix alpha = alpha_scale * N / N_l (Kingma et al. 2014 use alpha = 0.1 N), unless given,
        and for ``labelled_weight`` "image" the labelled terms' weight N_l / N. Both sizes are
        integers of at least 1."""
        n_total = check_integer(n_total, "n_total", minimum=1)
        n_labelled = check_integer(n_labelled, "n_labelled", minimum=1)
        if self.alpha_given is None:
            self.alpha = self.alpha_scale * n_total / n_labelled
        if self.labelled_weight == "image":
            self.labelled_scale = n_labelled / n_total

    def log_prior_y(self, x):
        """log p(y) = -log K for every example: a (B,) vector (not a scalar), for any y."""
        return log_uniform_categorical(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)

    def labelled_bound(self, x, labels, noise, beta=None):
        """L(x, y) per example, shape (B,), and the classification loss -log q(y | x, ...), (B,).

        L(x, y) = E[log p(x | y, h) + beta (log p(h) - log q(h | x, y))] + log p(y), with the
        expectation over ``mc_samples`` draws (the analytic KL where the model has one). ``x``
        is checked as ``loss`` checks it (``base.check_batch``).
        """
        check_batch(x)
        beta = kl_weight_of(self, beta)  # before the pass, which takes a draw from the generator
        rec, latent, class_loss = self._labelled_terms(x, labels, noise)
        return self._labelled(x, rec, latent, beta), class_loss

    def _labelled_terms(self, x, labels, noise):
        """The reconstruction and latent terms (1, S, B) of the given labels, and the
        classification loss (B,)."""
        check_noise(noise)  # every bound with a given label comes here
        y = one_hot(labels, self.num_classes, x, n=x.shape[0])
        context = self._context(x, self.mc_samples, noise)
        rec, latent = self._terms(x, y.reshape(1, 1, *y.shape), context, noise)
        class_loss = -log_categorical(y, self._class_logits(x, context)).mean(axis=0)
        return rec, latent, class_loss

    def _labelled(self, x, rec, latent, beta):
        """L(x, y) per example (B,) from ``_labelled_terms``' terms, the latent ones weighted by
        beta: ``_per_label``'s bound of the one given label, averaged over the samples."""
        return self._per_label(x, rec, latent, beta).mean(axis=(0, 1))

    def _enumerated(self, x, noise, samples, analytic=True):
        """The reconstruction and latent terms of every label (K, S, B), and log q(y | x, ...) and
        q(y | x, ...) as (K, S or 1, B)."""
        check_noise(noise)  # every bound over all labels (loss, elbo, log_weights) comes here
        context = self._context(x, samples, noise)
        rec, latent = self._terms(x, label_grid(self.num_classes, x), context, noise, analytic)
        log_q = F.log_softmax(self._class_logits(x, context), axis=-1).transpose(2, 0, 1)
        return rec, latent, log_q, F.exp(log_q)

    def _unlabelled(self, x, terms, beta):
        """U(x) per example (B,) from ``_enumerated``'s terms, the latent ones weighted by beta:
        sum_y q(y | x) [L(x, y) - log q(y | x)], averaged over the samples."""
        rec, latent, log_q, q = terms
        return F.sum(q * (self._per_label(x, rec, latent, beta) - log_q), axis=0).mean(axis=0)

    def _per_label(self, x, rec, latent, beta):
        """L(x, y) for each label and sample, from its terms, the latent ones weighted by beta."""
        return rec + beta * latent + self.log_prior_y(x)

    def unlabelled_bound(self, x, noise, beta=None):
        """U(x) = sum_y q(y | x) L(x, y) + H(q(y | x)) per example, shape (B,), all labels at once.

        Written as sum_y q(y | x) [L(x, y) - log q(y | x)] over the label axis, then averaged
        over the samples. ``x`` is checked as ``loss`` checks it (``base.check_batch``).
        """
        check_batch(x)
        beta = kl_weight_of(self, beta)  # before the pass, which takes a draw from the generator
        return self._unlabelled(x, self._enumerated(x, noise, self.mc_samples), beta)

    def elbo(self, x, noise, samples=None):
        """U(x) split as (reconstruction, KL) per example, each (B,): rec = sum_y q(y|x) E log p(x|y,h)
        and kl = rec - U(x), the KL of q(y, h | x) from the prior (labels included)."""
        check_batch(x)
        terms = self._enumerated(x, noise, self.elbo_samples(samples))
        rec, q = terms[0], terms[3]
        rec = F.sum(q * rec, axis=0).mean(axis=0)
        return rec, rec - self._unlabelled(x, terms, 1.0)

    def loss(self, x, noise, beta=None, labelled=None):
        """The training loss (a scalar Tensor) and per-batch statistics.

        ``x`` is an unlabelled batch; ``labelled`` an optional pair (x_l, labels) of a labelled
        batch. loss = -mean U(x) [+ w (alpha mean(-log q(y_l | x_l)) - mean L(x_l, y_l))], the latent
        terms of U and L weighted by ``beta`` (None: the model's): a Python number or a 0-d array
        of the model's float dtype on its device (``kl_weight_of``); both give the same bits for
        one value. The statistics are "elbo" (mean U(x)), with a labelled batch "labelled_bound"
        and "class_loss" (the two means above), and "loss": 0-d arrays of the model's float dtype
        on its device, made without a read back to the host. The bounds in the statistics are
        the bounds themselves (beta = 1) on the step's draws, whatever the weight the loss gives
        their KL terms, as the other models report their ELBO.
        """
        check_batch(x)
        beta = kl_weight_of(self, beta)
        terms = self._enumerated(x, noise, self.mc_samples)
        loss = -self._unlabelled(x, terms, beta).mean()
        with no_grad():
            stats = {"elbo": self._unlabelled(x, terms, 1.0).mean().data}
        if labelled is not None:
            if self.alpha is None:
                raise ValueError("alpha is not set: pass alpha= or call set_data_sizes(N, N_labelled)")
            if self.labelled_scale is None:
                raise ValueError("labelled_weight 'image' weighs the labelled terms by N_l / N: call "
                                 "set_data_sizes(N, N_labelled)")
            x_l, y_l = split_labelled(labelled)
            check_batch(x_l, "x_l")
            rec, latent, class_loss = self._labelled_terms(x_l, y_l, noise)
            class_loss = class_loss.mean()
            # Term by term, not w times their difference, and w of the classifier's term folded
            # into alpha (a number): with "batch" (w = 1) the loss, its gradients and its device
            # calls are those of the plain sum.
            w = self.labelled_scale
            bound = self._labelled(x_l, rec, latent, beta).mean()
            if self.labelled_weight == "image":
                bound = w * bound
            loss = loss - bound + w * self.alpha * class_loss
            with no_grad():
                stats.update(labelled_bound=self._labelled(x_l, rec, latent, 1.0).mean().data,
                             class_loss=class_loss.data)
        stats["loss"] = loss.data
        return loss, stats

    def log_weights(self, x, k, noise):
        """(k, B) importance log-weights with the label summed out exactly.

        For each of k independent draws, every label y gets its own z_y ~ q(z | x, y, ...) and
        log w = log sum_y p(x, y, h_y) / q(h_y | x, y) (h_y: the continuous latents; for ADGM and
        SDGM the auxiliary a ~ q(a | x) is shared by the labels and sits in the denominator).
        E[w] = sum_y p(x, y) = p(x), so log mean_k w is a valid bound on log p(x); q(y | x)
        cancels from the weight (its role, choosing y, is taken by the exact sum). Draws are
        made in chunks of at most ``max_rows`` rows, or of one sample each when the K * B rows
        of a single sample are more.
        """
        k = check_integer(k, "k", minimum=1)
        check_batch(x)  # before an empty batch divides by zero below
        per_chunk = max(1, self.max_rows // (self.num_classes * x.shape[0]))
        chunks = []
        for start in range(0, k, per_chunk):
            rec, latent, _, _ = self._enumerated(x, noise, min(per_chunk, k - start), analytic=False)
            chunks.append(F.logsumexp(self._per_label(x, rec, latent, 1.0), axis=0))
        return chunks[0] if len(chunks) == 1 else F.concatenate(chunks, axis=0)

    def sample_labels(self, n, labels, like):
        """The one-hot labels (n, K) of ``sample(n, ..., labels)``: ``labels``, one per image, or
        0, 1, ..., K-1, 0, ... when None; in ``like``'s dtype and device."""
        n = check_integer(n, "n", minimum=0)
        if labels is None:
            labels = get_array_module(like.data).arange(n) % self.num_classes
        return one_hot(labels, self.num_classes, like, n=n)

    def class_probabilities(self, x):
        """q(y | x) as a (B, K) array (for ADGM/SDGM at the mean of q(a | x)), without a graph.
        ``x`` is checked as ``loss`` checks it (``base.check_batch``)."""
        check_batch(x)
        with no_grad():
            logits = self._class_logits(x, self._context(x, 1, None, mean=True))
            return F.softmax(logits, axis=-1).data[0]

    def classify(self, x):
        """The predicted labels argmax_y q(y | x), an integer array (B,)."""
        return self.class_probabilities(x).argmax(axis=-1)

