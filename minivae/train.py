"""The training loop: progress, per-epoch metrics, atomic checkpoints and exact resume.

A run lives in one folder (``minivae.runs``): ``config.json`` (the settings), ``metrics.jsonl``
(one JSON line per epoch), ``checkpoint.npz`` (model, optimizer, noise generator and loop
position; see ``minivae.checkpoint``) and, at the end, ``results.json``. An epoch's ``train_*``
statistics are means over its training images, as ``valid_elbo`` is over the validation images:
a shorter last batch weighs as many images as it holds (a semi-supervised model's labelled
statistics, over the labelled images its steps took). Training refuses a
folder that holds a run unless asked to resume it or to overwrite it. Everything random is a function of
the seed and a position: the batch order and binarization of epoch e depend only on
(seed, e), and the reparameterization noise on the Philox generator's offset, which the
checkpoint stores. So ``--resume`` after an interruption, even in the middle of an epoch, ends
with exactly the parameters of an uninterrupted run. The checkpoint also records the number of
training images, and a resume on data of another size is refused.

Model selection (``keep_best``): after each epoch, the model of the epoch best on the validation
split so far is kept in ``best.npz``, and the final evaluation scores that model instead of the
last one (the test set only gives the final numbers, as papers report them). Early stopping
(``patience``, with ``keep_best``): the run ends, before its last epoch if need be, once
``patience`` epochs in a row have not beaten the best; a resume of an ended run trains nothing
unless it is given more patience (or more epochs, when they were what ended it).

Divergence guard: a non-finite loss stops training, in eager mode before its step; in graph
mode, which reads nothing back per step (``minivae.graph_steps``), at the next read of the
device's sums (every 20 steps under a progress bar, at the end of the epoch, before every
checkpoint), after the steps in between ran. No checkpoint is ever written with a non-finite
parameter or optimizer moment (an infinite gradient with a finite loss shows there); the error
says which checkpoint, if any, holds the last good state.

Semi-supervised models (``semi_supervised = True``: M2, M1+M2, ADGM/SDGM with labels, Ladder-M2) learn from
``n_labelled`` labels, ``balanced_labelled_subset(y_train, n_labelled, seed)``, chosen from the
training set only (the test set never takes part in training or model selection). Each step
feeds them the usual unlabelled batch of all training images plus a labelled batch
(``labelled_batch_size``: by default as many images as the unlabelled batch, or all the labelled
ones when fewer); the labelled batches are a pure function of (seed, optimizer step), so resuming
stays exact. Models that classify (``classifies = True``) get ``valid_error`` per epoch and
``test_error`` at the end.
"""
import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from . import checkpoint, nn, optim, runs, streams, trace
from .analysis import latent_summary
from .autograd import no_grad, tensor
from .backend import get_array_module, gpu_model, resolve_device, to_device
from .checks import check_choice, check_integer, check_real
from .data import MinibatchLoader, balanced_labelled_subset, binarize_eval, load_mnist
from .distributions import check_labels
from .evaluate import classification_error, elbo, log_likelihood_and_ess, nll_summary
from .graph_steps import GraphSteps
from .models import registered
from .random import Generator, check_address
from .runs import BEST, CHECKPOINT, CONFIG, RESULTS


class TrainingDiverged(RuntimeError):
    """The loss, a parameter or an optimizer moment became NaN or infinite; nothing non-finite
    was saved, and the message says which checkpoint (if any) holds the last good state."""


#: What to do after a divergence. Not a resume: it is bit for bit, with the run's own --lr, so it
#: would take the same steps to the same NaN.
_DIVERGED_ADVICE = ("A resume would repeat the same steps: start again with --overwrite and a "
                    "smaller --lr or a KL --warmup.")


class DataMismatchError(ValueError):
    """The training data cannot train the model as the config says (a batch of one image for
    batch normalization, labels the model has no class for, too few labels of a class); the
    message names the setting and what would be valid."""


#: The optimizers ``minivae train`` offers (``TrainConfig.optimizer``).
OPTIMIZERS = ("adam", "rmsprop")
#: Where the statistics of a batch normalization in evaluation mode come from
#: (``TrainConfig.bn_statistics``; ``Trainer.batch_norm_statistics_from_a_pass``).
BN_STATISTICS = ("running", "pass")


def check_loop_settings(config):
    """Raise TypeError or ValueError naming the setting unless the counts the loop reads itself
    are integers as the command line takes them: ``epochs`` at least 1; ``warmup``, ``eval_k``
    and ``trace_every`` at least 0 (the model, the loader and the optimizer check the others).
    Given through the Python API, an ``eval_k`` of -1 or 2.5 failed only in the final
    evaluation, after the whole training; a ``trace_every`` of -1 traced every step; and
    ``epochs`` below 1 trained nothing, without a word under a constant learning rate.
    ``patience`` (at least 0) stops on the best epoch that ``keep_best`` keeps, and needs it.
    ``adam_eps`` must be a positive number: Adam divides by the root of the second moment plus
    it, so at 0 a weight whose gradients were all 0 so far (one from a pixel that is 0 in every
    image of a batch, as MNIST's corners are) became 0/0 = NaN at its first step, reported as a
    divergence after the run folder was written. ``clip_norm``, ``clip_value`` and
    ``weight_decay`` are finite numbers >= 0 (0: none): a negative one would turn steps uphill.
    ``optimizer`` is one of ``OPTIMIZERS``; ``momentum``, in [0, 1), is RMSprop's, and ``adam_eps``
    Adam's: each given to the other optimizer would be ignored without a word, so it is refused.
    ``warmup_unit`` is one of ``WARMUP_UNITS``; ``warmup_start`` is None or a number in [0, 1];
    both a start and the unit "step" only with a warm-up (``warmup`` above 0), which alone reads them.
    Nor may the cosine schedule's ``lr`` lie below its ``lr_min``, as on the command line: the
    decay would be a rise (an lr of 5e-5 with the default lr_min of 1e-4). ``labelled_batch_size``,
    when given (not None), is an integer from 1 to ``n_labelled`` for a semi-supervised model:
    another model would ignore it without a word, and a batch of more than the labelled images
    would hold them all, fewer than asked. ``seed`` is the key
    of every Philox draw of the run, an integer in [0, 2**64) (``random.check_address``): it
    seeds the initial weights first, where NumPy refused -1 as "expected non-negative integer",
    naming no setting, and 2.5 as entropy that SeedSequence does not take."""
    model = registered(config.model)  # an unknown name now, not once the data is loaded
    check_address(config.seed, 0, 0)
    check_integer(config.epochs, "epochs", minimum=1)
    for name in ("warmup", "eval_k", "trace_every", "patience"):
        check_integer(getattr(config, name), name, minimum=0)
    check_choice(config.warmup_unit, "warmup_unit", WARMUP_UNITS)
    if config.warmup_start is not None:
        if not 0 <= check_real(config.warmup_start, "warmup_start") <= 1:
            raise ValueError(f"warmup_start {config.warmup_start!r}: give a number in [0, 1], the fraction "
                             "of beta that the KL warm-up starts from (None: 1 / warmup)")
        if config.warmup == 0:
            raise ValueError(f"warmup_start {config.warmup_start!r} starts a KL warm-up, and warmup is 0 "
                             "(none); give a warmup above 0 too, or leave warmup_start None")
    if config.warmup_unit == "step" and config.warmup == 0:
        raise ValueError("warmup_unit 'step' counts the steps of a KL warm-up, and warmup is 0 (none); give a "
                         "warmup above 0 too, or leave warmup_unit 'epoch'")
    check_integer(config.lr_step, "lr_step", minimum=1)
    if config.patience and not config.keep_best:
        raise ValueError(f"patience {config.patience} stops the run on the best epoch by the validation "
                         "split, which only keep_best keeps; set keep_best too")
    for name, zero in (("clip_norm", "no clipping"), ("clip_value", "no clipping"), ("weight_decay", "none")):
        if not 0 <= check_real(getattr(config, name), name) < math.inf:
            raise ValueError(f"{name} {getattr(config, name)!r}: give a finite number >= 0 (0: {zero})")
    check_choice(config.optimizer, "optimizer", OPTIMIZERS)
    check_choice(config.bn_statistics, "bn_statistics", BN_STATISTICS)
    if not 0 <= check_real(config.momentum, "momentum") < 1:
        raise ValueError(f"momentum {config.momentum!r}: give a number in [0, 1) (0: none)")
    if config.optimizer != "rmsprop" and config.momentum:
        raise ValueError(f"momentum {config.momentum!r} is RMSprop's (optimizer 'rmsprop'); Adam's first "
                         "moment is its momentum: give momentum 0 with optimizer 'adam'")
    if config.optimizer == "rmsprop" and config.adam_eps != runs.TrainConfig.adam_eps:
        raise ValueError(f"adam_eps {config.adam_eps!r} is Adam's epsilon; optimizer 'rmsprop' takes "
                         f"PyTorch's eps 1e-8: leave adam_eps at {runs.TrainConfig.adam_eps:g}")
    if not 0 < check_real(config.adam_eps, "adam_eps") < math.inf:
        raise ValueError(f"adam_eps {config.adam_eps!r}: Adam divides by the root of the second moment "
                         "plus adam_eps, so without a positive one a weight whose gradient is 0 becomes NaN; "
                         "give a positive finite adam_eps (1e-8 by default, the IWAE paper's 1e-4)")
    if config.lr_schedule == "cosine" and config.lr < config.lr_min:
        raise ValueError(f"lr {config.lr:g} is below lr_min {config.lr_min:g}: the cosine schedule "
                         "would raise the rate; give an lr of at least lr_min")
    if config.labelled_batch_size is not None:
        size = check_integer(config.labelled_batch_size, "labelled_batch_size", minimum=1)
        if not getattr(model, "semi_supervised", False):
            raise ValueError(f"labelled_batch_size {size}: model {config.model!r} is not semi-supervised and "
                             "takes no labelled images, so it would be ignored; leave labelled_batch_size None")
        n_labelled = check_integer(config.n_labelled, "n_labelled", minimum=1)
        if size > n_labelled:
            raise ValueError(f"labelled_batch_size {size} is more than the {n_labelled} labelled images "
                             f"(n_labelled); give at most {n_labelled}")


def labelled_batch_size(config):
    """The labelled images of each step of a semi-supervised run (the last batch of a pass over
    them may hold fewer): ``labelled_batch_size``, or when it is not given (None) as many as the
    unlabelled batch, ``batch_size``, or all ``n_labelled`` when fewer."""
    if config.labelled_batch_size is None:
        return min(config.batch_size, config.n_labelled)
    return config.labelled_batch_size


def make_optimizer(config, params):
    """The optimizer of the run ``config`` over ``params``: Adam with ``adam_eps``, or RMSprop with
    PyTorch's alpha 0.99 and eps 1e-8 and ``momentum``; both with ``weight_decay`` as a coupled L2
    term, both able to run in a step captured as a CUDA graph (``update_scalars``)."""
    if config.optimizer == "rmsprop":
        return optim.RMSprop(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return optim.Adam(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def has_batch_norm(model):
    """Whether ``model`` has a batch normalization layer, which cannot train on a batch of one
    image (its variance is 0)."""
    return any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def check_batch_norm_statistics(config, model):
    """Raise DataMismatchError when ``config`` asks for the batch normalizations' statistics from
    a pass over the training images (``bn_statistics`` "pass") for a model without one: the
    setting would be ignored without a word."""
    if config.bn_statistics == "pass" and not has_batch_norm(model):
        raise DataMismatchError(f"--bn-statistics pass: model {config.model!r} has no batch normalization "
                                "(for the Ladder VAE: --set batch_norm=true); leave --bn-statistics out")


def check_batches(config, model, n_train):
    """Raise DataMismatchError when training ``model`` on ``n_train`` images as ``config`` says
    would hand a model with batch normalization a batch of one image (whose variance is 0): every
    batch, at a batch size of 1, or else the last training batch, or the last labelled batch of a
    semi-supervised model."""
    if not has_batch_norm(model):
        return
    # For each kind of batch: the setting that sizes it, the images, and the batch size.
    batches = {"training images": ("batch_size", n_train, config.batch_size)}
    if model.semi_supervised:
        sized_by = "batch_size" if config.labelled_batch_size is None else "labelled_batch_size"
        batches["labelled images"] = (sized_by, config.n_labelled, labelled_batch_size(config))
    for what, (name, n, size) in batches.items():
        if size == 1 or n % size == 1:  # (at a size of 1, n % size is 0, and every batch holds one)
            which = "every batch" if size == 1 else "the last batch"
            option = "--" + name.replace("_", "-")
            raise DataMismatchError(
                f"{option} {getattr(config, name)}: {which} of the {n} {what} would hold one "
                f"image, on which the batch normalization of model {config.model!r} cannot train; "
                f"give another {option}")


def check_image_widths(model, data):
    """Raise DataMismatchError unless the training and validation images of ``data`` are rows of
    the ``model.x_dim`` pixels the model is built for (MNIST's 784), at least one of each. Found
    later, a training set of other images fails at the first step, deep inside an op, once the
    run folder is claimed, and a validation set (an empty one too) after the first epoch, whose
    training is lost. (The test set is not read before the final evaluation, which checks it.)"""
    for split in ("train", "valid"):
        shape = np.shape(getattr(data, f"x_{split}"))
        if len(shape) != 2 or shape[1] != model.x_dim:
            raise DataMismatchError(f"data.x_{split} has shape {shape}, but the model takes rows of "
                                    f"{model.x_dim} pixels: give images of shape (N, {model.x_dim})")
        if shape[0] == 0:  # the validation set is scored after every epoch
            raise DataMismatchError(f"data.x_{split} has shape {shape}, no image: give at least one")


def check_label_counts(model, data):
    """Raise DataMismatchError unless ``data`` holds one label per image where training reads
    labels: the training labels of a semi-supervised model (its labelled subset is drawn from
    them) and the validation labels of a model that classifies (scored after every epoch), these
    also as ``classification_error`` scores them (``check_labels``: integers of one axis, in the
    model's classes). Found later, too few training labels read as too few images of a class,
    too many index past the images, and validation labels fail after the first epoch, whose
    training is lost."""
    splits = (["train"] if model.semi_supervised else []) + (["valid"] if model.classifies else [])
    for split in splits:
        n_labels, n_images = len(getattr(data, f"y_{split}")), len(getattr(data, f"x_{split}"))
        if n_labels != n_images:
            raise DataMismatchError(f"data.y_{split} holds {n_labels} labels for the {n_images} images "
                                    f"of data.x_{split}: give one label per image")
    if model.classifies:
        try:
            check_labels(data.y_valid, model.num_classes)
        except (TypeError, ValueError) as exc:
            raise DataMismatchError(f"data.y_valid cannot be scored: {exc}") from None


def labelled_subset(config, model, labels):
    """The indices of the labelled training images of a semi-supervised run (see
    ``balanced_labelled_subset``); raises DataMismatchError when ``labels`` (all training
    labels) lie outside the model's classes, are no integer class indices of one axis
    (``check_labels``, as every step's one-hot takes them) or hold too few images of a class."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu" and labels.size and (labels.min() < 0 or labels.max() >= model.num_classes):
        raise DataMismatchError(f"the training labels run from {labels.min()} to {labels.max()}, outside "
                                f"the {model.num_classes} classes of the model; give --set "
                                f"num_classes={labels.max() + 1} or more")
    # Found later, booleans fail at the first step, once the run folder is written, and a
    # column would be blamed on --n-labelled.
    try:
        check_labels(labels, model.num_classes)
    except (TypeError, ValueError) as exc:
        raise DataMismatchError(f"data.y_train cannot be used: {exc}") from None
    try:
        return balanced_labelled_subset(labels, config.n_labelled, seed=config.seed)
    except ValueError as exc:
        raise DataMismatchError(f"--n-labelled {config.n_labelled}: {exc}") from None


#: What a KL warm-up counts (``TrainConfig.warmup_unit``): epochs, or optimizer steps over the whole run.
WARMUP_UNITS = ("epoch", "step")


def kl_weight(config, u):
    """The KL weight at ``u``, the epoch or the optimizer step of the run (0-based) as
    ``config.warmup_unit`` says (``Trainer.kl_weight_of_step`` picks it): beta * min(1,
    warmup_start + u / warmup), a linear ramp to beta over ``warmup`` of them; beta throughout
    without a warm-up (``warmup`` 0). ``warmup_start`` None is 1 / warmup: beta / warmup at u = 0.
    The Ladder VAE authors' code starts from 0 by epochs (``min(1, e / 200)``), the planar-flows
    paper from 0.01 by steps (``min(1, 0.01 + t / 10000)``)."""
    if config.warmup <= 0:
        return config.beta
    if config.warmup_start is None:
        # 1 / warmup + u / warmup, as one quotient: the bits of the runs trained before warmup_start
        # existed (the sum of two quotients rounds otherwise, e.g. at warmup 3 and u 4).
        fraction = (u + 1) / config.warmup
    else:
        fraction = config.warmup_start + u / config.warmup
    return config.beta * min(1.0, fraction)


#: The signals that stop training as Ctrl-C does: SIGINT (Ctrl-C) and SIGTERM, what ``kill PID``,
#: ``timeout`` and a job scheduler that stops or preempts a job send. By default SIGTERM ends the
#: process at once, losing every step since the last checkpoint, up to a whole epoch.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """Training stopped at the end of a step by the signal ``signum`` (one of ``STOP_SIGNALS``),
    after saving its checkpoint. A KeyboardInterrupt, so that code that handles Ctrl-C handles
    it; ``signum`` lets the command line exit as a shell reports a process ended by that signal
    (128 + signum: 130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum):
        self.signum = signal.Signals(signum)
        super().__init__(self.signum.name)


class StopRequest:
    """A request to stop training at the end of the current step: ``set(signum)`` makes it (the
    signal handler of ``_deferred_interrupt``), ``signum`` is the signal that made it."""

    def __init__(self):
        self.signum = None

    def set(self, signum=signal.SIGINT):
        """Ask the loop to stop, as the signal ``signum`` (Ctrl-C unless said) would."""
        self.signum = signal.Signals(signum)

    def is_set(self):
        """Whether a stop was asked for."""
        return self.signum is not None


@contextlib.contextmanager
def _deferred_interrupt(flag):
    """Turn Ctrl-C and SIGTERM (``STOP_SIGNALS``) into a request (``flag.set(signum)``, a
    ``StopRequest``) that the loop honours between two steps, by saving a checkpoint and raising
    ``Stopped``.

    A KeyboardInterrupt raised inside an optimizer step would leave half the parameters updated;
    deferring it makes every saved checkpoint a state that an uninterrupted run passes through.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, lambda signum, frame: flag.set(signum)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, unit="batch")


class LabelledBatches:
    """The labelled minibatch of every optimizer step, a pure function of (seed, step).

    Step t takes batch t mod n of "labelled epoch" t // n (n batches of ``batch_size`` images per
    pass over the labelled subset, the last of fewer when batch_size does not divide it): each
    pass reshuffles and re-binarizes the subset (``MinibatchLoader``), so the few labelled images
    are seen in ever new orders and draws without any state to checkpoint. Its seed is derived
    from the run's with ``SeedSequence``, so its streams are not those of the unlabelled loader.
    """

    def __init__(self, x, y, batch_size, seed, device="cpu"):
        derived = int(np.random.SeedSequence([seed, streams.LABELLED_LOADER]).generate_state(1)[0])
        self.loader = MinibatchLoader(x, batch_size, seed=derived, y=y, device=device)
        self._epoch, self._batches = None, []

    def __call__(self, step):
        """(x_l, y_l) of optimizer step ``step`` (0-based, counted over the whole run)."""
        epoch, i = divmod(step, len(self.loader))
        if epoch != self._epoch:  # copies: the loader's buffer is overwritten by its next epoch
            self._batches = [(xb.copy(), yb.copy()) for xb, yb in self.loader.epoch(epoch)]
            self._epoch = epoch
        return self._batches[i]

    def batch_size(self, step):
        """The number of images in the labelled batch of step ``step``: the batch size, or fewer
        for the last batch of a pass over the labelled images."""
        i = step % len(self.loader)
        return min(self.loader.batch_size, self.loader.num_examples - i * self.loader.batch_size)


class Trainer:
    """Runs one training job described by a TrainConfig (see the module docstring)."""

    def __init__(self, config, data=None, progress=True, log=print):
        check_loop_settings(config)
        self.config = runs.with_absolute_run_folders(config)  # as config.json and checkpoints keep it
        self.run_dir = Path(config.out)
        self.progress, self.log = progress, log
        self.device = resolve_device(config.device)
        # Which GPU trains here: the pieces of a long run may train on several kinds of GPU.
        self.gpu = gpu_model() if self.device == "gpu" else None
        self.data = data if data is not None else load_mnist(verbose=progress)
        nn.init.manual_seed(config.seed)
        self.model = runs.build_run_model(config).to(self.device)
        check_image_widths(self.model, self.data)
        check_label_counts(self.model, self.data)
        check_batches(config, self.model, len(self.data.x_train))
        check_batch_norm_statistics(config, self.model)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.noise = Generator(seed=config.seed, stream=streams.TRAIN_NOISE)
        if config.data_rng != "philox":
            raise ValueError(f"this minivae draws the training batches with 'philox', not {config.data_rng!r}")
        # The training images live on the training device: each epoch is shuffled and binarized there.
        self.loader = MinibatchLoader(self.data.x_train, config.batch_size, seed=config.seed,
                                      device=self.device)
        if config.lr_schedule == "cosine":
            self.schedule = optim.CosineLR(self.optimizer, self.total_steps, min_lr=config.lr_min)
        elif config.lr_schedule == "stages":
            self.schedule = optim.StagedLR(self.optimizer, len(self.loader))  # stages of 1, 3, 9, ... epochs
        elif config.lr_schedule == "step":
            self.schedule = optim.StepLR(self.optimizer, config.lr_step * len(self.loader), gamma=config.lr_gamma)
        elif config.lr_schedule == "constant":
            self.schedule = None
        else:
            raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; use 'cosine', 'stages', 'step' or "
                             "'constant'")
        self.labelled = None
        if self.model.semi_supervised:
            idx = labelled_subset(config, self.model, self.data.y_train)
            self.labelled = LabelledBatches(self.data.x_train[idx], np.asarray(self.data.y_train)[idx],
                                            labelled_batch_size(config), config.seed, self.device)
            self.model.set_data_sizes(len(self.data.x_train), len(idx))
        self.x_valid = binarize_eval(self.data.x_valid, "valid")
        # The loop position: epochs done, batches done of the next, and that epoch's statistics so
        # far as sums over images (with "seconds", its training time) and the images each is over.
        self.epoch, self.batch, self.sums, self.images = 0, 0, {}, {}
        # Graph mode (minivae.graph_steps): on the GPU, unless asked to run eagerly. Set up after
        # the first step.
        self.use_graph = self.device == "gpu" and not config.eager
        if self.use_graph and config.trace_every:  # a replay cannot stop at a step for the host
            self.log("note: --trace-every reads the gradients on the host at the traced steps, which "
                     "a step captured as a CUDA graph cannot; training eagerly")
            self.use_graph = False
        self.graph = None
        self.saved = None  # (epoch, batch) of the checkpoint in the run folder, once there is one
        # With keep_best: {"epoch", "by", "score"} of the epoch best on the validation split so far
        # (``_keep_if_best``), whose model is in best.npz; None before the first epoch ends.
        self.best = None
        self.run_id = runs.new_run_id()  # a resume takes the run's own (``restore``)
        # Which training of the run this is: 1 for a new run, one more at each resume. A long run
        # may be trained in pieces on several machines, and its record says how many.
        self.piece = 1
        self.steps_at_start = 0  # steps done when ``fit`` began (more when resumed)
        self.stop_requested = StopRequest()

    @property
    def total_steps(self):
        """Optimizer steps in the whole run."""
        return self.config.epochs * len(self.loader)

    @property
    def steps_done(self):
        """Optimizer steps taken so far in the run (the position ``epoch``, ``batch``)."""
        return self.epoch * len(self.loader) + self.batch

    def patience_spent(self):
        """Whether early stopping ends the run here: at the end of an epoch, ``patience`` or more
        epochs after the best so far (never without ``patience``)."""
        return (self.config.patience > 0 and self.batch == 0 and self.best is not None
                and self.epoch - self.best["epoch"] >= self.config.patience)

    def kl_weight_of_step(self, step):
        """The KL weight of optimizer step ``step`` (0-based, over the whole run): ``kl_weight`` at
        the step or at its epoch, as ``warmup_unit`` says, or beta throughout for a model trained
        on the IWAE bound, which has no KL term for a weight or a warm-up to apply to. The eager
        step and graph mode's schedule both take it from here."""
        if self.model.iw_k > 1:
            return self.config.beta
        u = step if self.config.warmup_unit == "step" else step // len(self.loader)
        return kl_weight(self.config, u)

    def learning_rate(self, step):
        """The learning rate of optimizer step ``step``: ``lr``, the cosine schedule's
        (``optim.CosineLR``, from lr down to lr_min at the step after the last, as PyTorch's
        ``CosineAnnealingLR``: the last step runs just above lr_min), the IWAE paper's stages
        (``optim.StagedLR``: 3^i epochs at lr * 10^(-i/7)), or a decay by lr_gamma every lr_step
        epochs (``optim.StepLR``)."""
        return self.config.lr if self.schedule is None else self.schedule.lr_at(step)

    # ----- checkpoints -----------------------------------------------------------------------
    def save(self):
        """Write the checkpoint for the current position atomically.

        Raises TrainingDiverged, and writes nothing, when a parameter or an optimizer moment is
        not finite: a checkpoint always holds a state training can go on from.
        """
        self._fold_graph()
        arrays = self._model_arrays()
        numbers = {}
        for k, v in self.optimizer.state_dict().items():
            if isinstance(v, np.ndarray):
                arrays[f"optim/{k}"] = v
            else:
                numbers[k] = v
        self._check_finite(arrays)
        meta = dict(self._document(), sums=self.sums, images=self.images, noise=self.noise.state_dict(),
                    optim=numbers, n_train=len(self.data.x_train), piece=self.piece)
        if self.best is not None:  # so that a resume goes on comparing the epochs with it
            meta["best"] = self.best
        runs.save_checkpoint(self.run_dir, arrays, meta)
        self.saved = (self.epoch, self.batch)

    def _model_arrays(self):
        """The model's state as the arrays of a checkpoint (``model/`` and its names)."""
        return {f"model/{k}": v for k, v in self.model.state_dict().items()}

    def _check_finite(self, arrays):
        """Raise TrainingDiverged, naming them, when any of the checkpoint ``arrays`` holds a
        value that is not finite: no file of the run ever holds a state training cannot go on from."""
        bad = [name for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise TrainingDiverged(
                f"non-finite values in {shown} at {_position(self.epoch, self.batch)} (an infinite "
                f"gradient or update); {self._last_good()}. {_DIVERGED_ADVICE}")

    def _document(self):
        """What each file of the run's model records of it: its settings, the loop position of the
        model and the run's identity (none for a run saved before runs had one, which keeps none)."""
        meta = {"config": self.config.to_dict(), "epoch": self.epoch, "batch": self.batch}
        if self.run_id is not None:
            meta["run_id"] = self.run_id
        return meta

    def _keep_if_best(self, metrics):
        """With ``keep_best``, after an epoch (its ``metrics``) and before its checkpoint: when its
        validation score beats the best so far (``_beats``), write its model to best.npz and
        make it the best, which the checkpoint then records.

        A crash between the two writes leaves best.npz of an epoch that the checkpoint does not
        include: the resume trains that epoch again, from the checkpoint before, to the same bits,
        and writes the same best.npz again (``_load_best`` refuses one of an epoch not recorded)."""
        by = "valid_error" if self.model.classifies else "valid_elbo"
        score = metrics[by]
        if not _beats(score, self.best):
            return
        arrays = self._model_arrays()
        self._check_finite(arrays)
        meta = dict(self._document(), by=by, score=score)
        runs.save_checkpoint(self.run_dir, arrays, meta, name=BEST)
        self.best = {"epoch": self.epoch, "by": by, "score": score}

    def _load_best(self):
        """Load the model of best.npz, the epoch best on the validation split, into the trained
        model. CheckpointError naming the file unless it holds the epoch that the checkpoint
        records as the best, of this run (a best.npz written by a crashed run that then went on
        another way, with another --epochs or --device, holds another)."""
        path = self.run_dir / BEST
        arrays, meta = checkpoint.load(path)
        held = (meta.get("run_id"), meta.get("epoch")) if isinstance(meta, dict) else (None, None)
        if held != (self.run_id, self.best["epoch"]):
            raise checkpoint.CheckpointError(
                f"{path} holds epoch {held[1]} of run {held[0]}, not epoch {self.best['epoch']} of run "
                f"{self.run_id}, the best by {self.best['by']} that {self.run_dir / CHECKPOINT} records; "
                f"score the last epoch with `minivae eval --last {self.run_dir}`, or start again with "
                "--overwrite")
        runs.load_model_state(self.model, arrays, path, self.config)

    def _last_good(self):
        """Where the last good state is, for the divergence errors (truthfully: there may be none)."""
        if self.saved is None:
            return f"stopped without saving; {self.run_dir} has no checkpoint yet"
        return (f"stopped without saving, so {self.run_dir / CHECKPOINT} still holds the last good "
                f"state, at {_position(*self.saved)}")

    def restore(self):
        """Load the run folder's checkpoint into the model, optimizer, generator and position;
        return the config it was saved with. Called with the folder claimed, so that the state
        checked here is the state trained on: no other process can replace it in between."""
        arrays, meta, saved = runs.read_checkpoint(self.run_dir)
        path = self.run_dir / CHECKPOINT
        runs.check_resume_state(arrays, meta, path, saved, len(self.data.x_train))
        self.config.check_resumable(saved, (meta["epoch"], meta["batch"]))
        self._check_data_size(meta.get("n_train"))  # None: a checkpoint saved before it was recorded
        self.config = dataclasses.replace(self.config, run_models=saved.run_models)  # the run's record
        runs.load_model_state(self.model, arrays, path, saved)
        try:  # each checks its state before it changes anything
            self.optimizer.load_state_dict(dict(meta["optim"], **checkpoint.split_prefix(arrays, "optim/")))
            self.noise.load_state_dict(meta["noise"])
        except (KeyError, TypeError, ValueError) as exc:
            raise runs.damaged(path, f"cannot resume from it: {exc.args[0] if exc.args else exc}") from None
        self.epoch, self.batch = meta["epoch"], meta["batch"]
        self.run_id = meta.get("run_id")
        self.best = meta.get("best")
        self.piece = meta.get("piece", 1) + 1  # (a run saved before pieces were counted: as one)
        if "images" in meta:
            self.sums, self.images = meta["sums"], meta["images"]
        else:
            self._load_sums_of_batch_means(meta["sums"])
        self.saved = (self.epoch, self.batch)
        if saved.epochs != self.config.epochs and self.config.lr_schedule == "cosine":
            # The cosine schedule spans the whole run, so a new length bends the remaining rates.
            # Said only now that the checkpoint is loaded: a refused resume changes nothing.
            self.log(f"note: --epochs changed from {saved.epochs} to {self.config.epochs}; the cosine "
                     "learning-rate schedule is recomputed for the new length")
        return saved

    def _load_sums_of_batch_means(self, sums):
        """Load the ``sums`` of a checkpoint saved before they were sums over images: the sums of
        the batch means of the epoch's first ``batch`` steps. Every batch of an epoch but its
        last is full, so each of those means is taken as one over ``batch_size`` images (a
        labelled one over a full labelled batch). That is exact for a checkpoint saved inside an
        epoch, but for labelled statistics where a pass over the labelled images ended in a
        shorter batch; those, and all statistics of a checkpoint saved after an epoch's last
        step, come out as the means of their batch means, as they would have before."""
        self.sums = {"seconds": sums["seconds"]} if "seconds" in sums else {}
        self.images = {}
        full = (self.loader.batch_size, 0 if self.labelled is None else self.labelled.loader.batch_size)
        self._add_statistics({k: v for k, v in sums.items() if k != "seconds"}, full, self.batch)

    def _check_data_size(self, n_train):
        """Raise ResumeMismatchError unless the training data has the ``n_train`` images the run
        was trained on: on another number the position in the checkpoint would count other
        batches, and a resume would go on from a state no run on these images passes through."""
        if n_train is not None and n_train != len(self.data.x_train):
            raise runs.ResumeMismatchError(
                f"cannot resume {self.run_dir}: it was trained on {n_train} training images, and "
                f"data.x_train holds {len(self.data.x_train)}; resume it with the data it was "
                "trained on, or start again with --overwrite")

    def _truncate_metrics(self):
        """Drop metric lines written after the checkpoint (epoch summaries of a crash between the
        two writes, gradient traces of steps that will run again, a line cut off by a crash)."""
        done = self.steps_done  # optimizer steps in the checkpoint
        path = self.run_dir / runs.METRICS
        runs.rewrite_metrics(self.run_dir, lambda line: _kept(line, self.epoch, done, path))

    # ----- graph mode ------------------------------------------------------------------------
    def _run_step(self, xb, beta, step):
        """Step ``step``: from Python (``_step``), or as a replay of the captured graph. Returns
        the step's statistics, or None when they are summed on the device. The first step of a
        GPU run is eager; it sets graph mode up for the rest (see minivae.graph_steps)."""
        if self.graph is not None:
            if self.graph.takes(xb, step):
                return self.graph.step(xb, step)
            # A shorter batch (unlabelled or labelled): this step runs eagerly, from the host's
            # copy of the state.
            self._fold_graph()
            stats = self._step(xb, beta, step)
            self.graph.skip_step()
            return stats
        before = self.noise.offset
        stats = self._step(xb, beta, step)
        if self.use_graph and step + 1 < self.total_steps:
            self.graph = GraphSteps(self, step + 1, self.noise.offset - before, list(stats))
            self._capture(step + 1)
        return stats

    def _capture(self, step):
        """(Re)capture the graphs of the step, to run from optimizer step ``step`` to the end of its
        epoch, or say why the model cannot be and go on eagerly."""
        try:
            self.graph.capture(step)
        except Exception as exc:  # whatever the capture refused; the reason is in the message
            self.log(f"note: the {self.config.model} step cannot be captured as a CUDA graph "
                     f"({type(exc).__name__}: {exc}); training eagerly")
            self.graph, self.use_graph = None, False

    def _fold_graph(self):
        """Bring graph mode's device-side state to the host: stop on a non-finite loss, add the
        device's sums of the statistics to ``sums``, and record the optimizer's step count, the
        noise generator's offset and the learning rate of the steps replayed so far."""
        if self.graph is None:
            return
        if self.graph.has_diverged():
            raise TrainingDiverged(
                f"the loss became NaN or infinite before {_position(self.epoch, self.batch)}; "
                f"{self._last_good()}. {_DIVERGED_ADVICE}")
        if self.graph.steps_summed:
            self._add_statistics(self.graph.read_sums(), self.graph.batch_sizes, self.graph.steps_summed)
        self.graph.clear_sums()
        self.graph.sync_host(self.steps_done)
        self.optimizer.lr = self.learning_rate(max(self.steps_done - 1, 0))

    # ----- the loop --------------------------------------------------------------------------
    def _batch_sizes(self, xb, step):
        """The images of step ``step`` on the batch ``xb``: (unlabelled, labelled), the second 0
        for a model without labels."""
        return len(xb), 0 if self.labelled is None else self.labelled.batch_size(step)

    def _add_statistics(self, stats, sizes, steps=1):
        """Add ``stats`` to the epoch's sums as sums over images: each the sum of ``steps`` batch
        means over batches of ``sizes`` = (unlabelled, labelled) images, the second for the
        model's ``labelled_statistics``. So an epoch's statistics are means over its images, and
        a shorter last batch weighs as many images as it holds, not as many as a full one."""
        for k, v in stats.items():
            size = sizes[1] if k in self.model.labelled_statistics else sizes[0]
            self.sums[k] = self.sums.get(k, 0.0) + v * size
            self.images[k] = self.images.get(k, 0) + steps * size

    def _means(self):
        """The epoch's statistics so far, each the mean over the images it was computed on."""
        return {k: v / self.images[k] for k, v in self.sums.items() if k != "seconds"}

    def _step(self, xb, beta, step):
        self.optimizer.lr = self.learning_rate(step)
        extra = {}
        if self.labelled is not None:
            xl, yl = self.labelled(step)
            extra["labelled"] = (tensor(xl), yl)  # the loaders serve batches on the training device
        loss, stats = self.model.loss(tensor(xb), self.noise, beta=beta, **extra)
        stats = _read_statistics(stats)
        if not math.isfinite(stats["loss"]):
            raise TrainingDiverged(
                f"the loss became {stats['loss']} at epoch {self.epoch + 1}, batch {self.batch + 1}; "
                f"{self._last_good()}. {_DIVERGED_ADVICE}")
        self.model.zero_grad()
        loss.backward()
        self.clip_gradients()
        if self.config.trace_every and step % self.config.trace_every == 0:
            record = {"step": step, "epoch": self.epoch + 1, **trace.gradient_norms(self.model)}
            before = trace.snapshot(self.model)
            self.optimizer.step()
            record.update(trace.update_ratios(before, self.model))
            runs.append_metrics(self.run_dir, record)
        else:
            self.optimizer.step()
        return stats

    def clip_gradients(self):
        """Clip the step's gradients as the config says (none by default): their joint norm to
        ``clip_norm``, then each entry to ``clip_value``. On the device, with nothing read back,
        so that graph mode's captured step clips in the same way. The parameters are the
        optimizer's list of the model's, not a walk of the module tree at every step."""
        params = self.optimizer.params
        if self.config.clip_norm:
            optim.clip_grad_norm_(params, self.config.clip_norm)
        if self.config.clip_value:
            optim.clip_grad_value_(params, self.config.clip_value)

    def _epoch(self):
        config, epoch = self.config, self.epoch
        self.model.set_epoch(epoch)  # per-epoch schedules of a model (e.g. a temperature)
        n_batches = len(self.loader)
        bar = _progress_bar(n_batches, f"epoch {epoch + 1}/{config.epochs}", self.progress)
        if bar is not None:
            bar.update(self.batch)
        start = time.perf_counter() - self.sums.get("seconds", 0.0)
        self.model.train()
        if self.graph is not None:  # again for this epoch: its model settings are captured too
            self._capture(self.steps_done)
        for i, xb in enumerate(self.loader.epoch(epoch)):
            if i < self.batch:  # resuming inside this epoch: these batches were done already
                continue
            step = epoch * n_batches + i
            stats = self._run_step(xb, self.kl_weight_of_step(step), step)
            if stats is not None:  # else summed on the device (graph mode), added by _fold_graph
                self._add_statistics(stats, self._batch_sizes(xb, step))
            self.batch = i + 1
            self.sums["seconds"] = time.perf_counter() - start
            if self.stop_requested.is_set():
                raise Stopped(self.stop_requested.signum)
            if bar is not None:
                bar.update(1)
                if i % 20 == 0:
                    self._fold_graph()
                    shown = {k: f"{v:.2f}" for k, v in self._means().items() if k in ("loss", "elbo", "kl")}
                    bar.set_postfix(shown, refresh=False)
        if bar is not None:
            bar.close()
        self._fold_graph()
        seconds = time.perf_counter() - start
        # The training and the device (and GPU) that finished the epoch: a run's time by piece and device.
        metrics = {"epoch": epoch + 1, "lr": self.optimizer.lr, "piece": self.piece, "device": self.device}
        if self.gpu is not None:
            metrics["gpu"] = self.gpu
        if self.model.iw_k == 1:  # the IWAE bound has no KL weight to log
            # That of the epoch's last step (of each of its steps, for a warm-up by epochs), as
            # "lr" is the last step's rate.
            metrics["beta"] = self.kl_weight_of_step((epoch + 1) * n_batches - 1)
        metrics.update({f"train_{k}": v for k, v in self._means().items()})
        if config.bn_statistics == "pass":  # before anything is scored, and the checkpoint saved
            self.batch_norm_statistics_from_a_pass(epoch)
        valid, _, _ = elbo(self.model, self.x_valid)
        metrics.update(valid_elbo=float(valid.mean()), seconds=seconds,
                       images_per_second=self.loader.num_examples / seconds)
        if self.model.gaussian_encoder:  # posterior collapse summary
            metrics.update(latent_summary(self.model, self.x_valid[:2000]))
        if self.model.classifies:
            metrics["valid_error"] = classification_error(self.model, self.x_valid, self.data.y_valid)
        return metrics

    def batch_norm_statistics_from_a_pass(self, epoch):
        """Set every batch normalization's running mean and variance to those of one batch of all
        the training images, as the steps of ``epoch`` saw them (their order and bits): the model's
        training loss is computed once on that batch, in training mode and without a graph, with
        each batch normalization's momentum 1, so that it keeps the batch's statistics (the
        variance unbiased, as PyTorch keeps it). Each layer's are then those of the whole training
        set, the layers below normalized by theirs: what the Ladder VAE authors' code collects in
        one pass before it scores. The noise of the pass is its own (``streams.BATCH_NORM_PASS``),
        the same at every pass, so a resumed run makes the same statistics. The pass is no training
        step: each batch normalization's momentum and count of batches (``num_batches_tracked``)
        come back as they were."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.BatchNorm1d) and m.track_running_stats]
        kept = [(m.momentum, m.num_batches_tracked.copy()) for m in norms]
        images, _ = self.loader.epoch_data(epoch)  # the loader's epoch buffer, used up here
        self.model.train()
        try:
            for m in norms:
                m.momentum = 1.0
            with no_grad():
                self.model.loss(tensor(images), Generator(seed=self.config.seed, stream=streams.BATCH_NORM_PASS))
        finally:
            for m, (momentum, count) in zip(norms, kept):
                m.momentum = momentum
                m.num_batches_tracked[...] = count  # in place: graph mode's captured step counts into it

    def fit(self, resume=False, overwrite=False):
        """Train to ``config.epochs``, or until early stopping ends the run; return the run folder.

        A folder that holds a run is refused (``runs.RunExistsError``) before anything is written,
        unless ``resume`` (continue from its checkpoint) or ``overwrite`` (remove its files and
        start again); so is one that another process trains in (``runs.RunBusyError``). A resume
        that changes a setting (``TrainConfig.RESUMABLE_CHANGES``) saves the checkpoint with it at
        once, so that the next resume continues with it.
        """
        with self._claim(resume, overwrite):
            return self._fit_claimed(resume)

    @contextlib.contextmanager
    def _claim(self, resume, overwrite, free_of=None):
        """Hold the run folder for the ``with`` block, once the config is known to fit a new run:
        ``runs.claim_run_dir``, or for a new run with ``free_of``, ``runs.claim_free_run_dir``,
        and the run goes to the folder claimed."""
        if not resume and self.config.run_models:  # the models were built untrained, from it
            raise ValueError("a new run records its own run_models: start it from a config "
                             "without them (they are the record of an existing run)")
        if free_of is None:
            with runs.claim_run_dir(self.run_dir, resume=resume, overwrite=overwrite):
                yield
            return
        if resume or overwrite:
            raise ValueError("free_of names the folder of a new run; give it without resume and overwrite")
        with runs.claim_free_run_dir(free_of) as folder:
            self.run_dir, self.config = folder, dataclasses.replace(self.config, out=str(folder))
            yield

    def _fit_claimed(self, resume):
        """``fit`` in a run folder claimed for this process."""
        if not resume:  # the models of the runs it is built on, so that it never needs them again
            self.config = runs.with_run_models(self.config)
            # Said first: without --out the folder is the first free one of runs/vae, runs/vae-2, ...
            self.log(f"training a new run in {self.run_dir}")
        if resume:
            saved = self.restore()
            self._truncate_metrics()
            self.log(f"resumed {self.run_dir} at {_position(self.epoch, self.batch)}")
            if saved != self.config:  # the checkpoint records the settings the run goes on with
                self.save()
        self.steps_at_start = self.steps_done
        runs.write_json(self.run_dir / CONFIG, self.config.to_dict())
        try:
            with _deferred_interrupt(self.stop_requested):
                while (self.epoch < self.config.epochs and not self.patience_spent()
                       and not self.stop_requested.is_set()):
                    metrics = self._epoch()
                    runs.append_metrics(self.run_dir, metrics)
                    self.epoch, self.batch, self.sums, self.images = self.epoch + 1, 0, {}, {}
                    if self.config.keep_best:
                        self._keep_if_best(metrics)
                    self.save()
                    self.log(_epoch_line(metrics))
            # Checked once the handlers are back: a signal between two epochs, or after the last
            # check of the loop, would otherwise let the final evaluation run as if none came.
            if self.stop_requested.is_set():
                raise Stopped(self.stop_requested.signum)
            if self.patience_spent() and self.epoch < self.config.epochs:
                self.log(f"early stopping: no epoch beat epoch {self.best['epoch']}'s {self.best['by']} in the "
                         f"{self.epoch - self.best['epoch']} after it (patience {self.config.patience}); the "
                         f"run ends at epoch {self.epoch} of {self.config.epochs}")
        except KeyboardInterrupt:
            self.save()
            self.log(f"interrupted: saved {_position(self.epoch, self.batch)} to "
                     f"{self.run_dir / CHECKPOINT}; continue with --resume --out {self.run_dir}")
            raise
        return self.run_dir

    def final_evaluation(self):
        """Test ELBO, test error (models that classify) and (if eval_k > 0) the importance-sampled
        test log-likelihood (``model.estimated_log_likelihood`` says of what); logs them, then
        writes results.json (so a failed write loses nothing). With ``keep_best`` it scores the
        model of the epoch best on the validation split, loaded into ``model`` from best.npz, and
        the results record that epoch as ``selected``."""
        if self.config.keep_best:
            self._load_best()
            self.log(f"scoring the model of epoch {self.best['epoch']} of {self.epoch}, the best by "
                     f"{self.best['by']} ({self.best['score']:.4f}), from {self.run_dir / BEST}")
        x_test = binarize_eval(self.data.x_test, "test")
        bound, rec, kl = elbo(self.model, x_test)
        results = {"epochs": self.epoch, "test_elbo": float(bound.mean()), "test_rec": float(rec.mean()),
                   "test_kl": float(kl.mean())}
        if self.config.keep_best:
            results["selected"] = self.best
        if self.model.classifies:
            results["test_error"] = classification_error(self.model, x_test, self.data.y_test)
        if self.config.eval_k:
            ll, ess = log_likelihood_and_ess(self.model, x_test, k=self.config.eval_k, progress=self.progress)
            results.update(nll_summary(ll, ess), eval_k=self.config.eval_k,
                           likelihood=self.model.estimated_log_likelihood)
        self.log(json.dumps(results))
        runs.write_json(self.run_dir / RESULTS, results, kept="the results are printed above")
        return results


def _beats(score, best):
    """Whether an epoch's validation ``score`` beats the ``best`` so far (None before the first
    epoch), both by the same ``runs.SELECTION_SCORES``: a higher ELBO, a lower error. A tie keeps
    the earlier epoch."""
    if best is None:
        return True
    return score > best["score"] if runs.SELECTION_SCORES[best["by"]] else score < best["score"]


def _read_statistics(stats):
    """A step's statistics (0-d arrays, see ``Model.loss``) as Python floats, in one read.

    They are stacked into one small array on their device first, so a GPU step waits for the
    device once, not once per statistic.
    """
    names, values = list(stats), list(stats.values())
    for name, value in zip(names, values):
        if getattr(value, "ndim", None) != 0:
            raise TypeError(f"model.loss returned the statistic {name!r} as {type(value).__name__}; "
                            "statistics must be 0-d arrays on the model's device")
    stacked = get_array_module(*values).stack(values)
    return dict(zip(names, to_device(stacked, "cpu").tolist()))


def _kept(line, epoch, steps, path):
    """Whether a metrics line belongs to a run checkpointed after ``epoch`` epochs and ``steps`` steps.

    Training writes an integer ``step`` (a gradient trace) or ``epoch`` (an epoch's summary) in
    every line; a line of the file at ``path`` without either is damage, and raises
    RunFolderError naming the file and the line (it cannot be placed before or after the
    checkpoint, and a KeyError or a comparison of a string with a number said nothing)."""
    key = "step" if "step" in line else "epoch"
    if type(line.get(key)) is not int:
        raise runs.RunFolderError(f"{path} holds the line {json.dumps(line)[:60]!r}, without the integer "
                                  "'step' or 'epoch' that training writes in every line; remove the line "
                                  "to resume, or start again with --overwrite")
    return line[key] < steps if key == "step" else line[key] <= epoch


def _position(epoch, batch):
    """A checkpoint position (``epoch`` epochs and ``batch`` batches done) in words."""
    if batch == 0:
        return f"the end of epoch {epoch}" if epoch else "the start of training"
    return f"epoch {epoch + 1}, batch {batch}"


def _epoch_line(m):
    parts = [f"epoch {m['epoch']:>3}"]
    for key, label in (("train_elbo", "train ELBO"), ("train_bound", "train bound"),
                       ("train_kl", "KL"), ("valid_elbo", "valid ELBO")):
        if m.get(key) is not None:
            parts.append(f"{label} {m[key]:8.2f}")
    if m.get("valid_error") is not None:
        parts.append(f"valid error {100 * m['valid_error']:5.2f}%")
    parts.append(f"{m['seconds']:.1f} s")
    return " | ".join(parts)


def train(config, resume=False, overwrite=False, progress=True, data=None, log=print, free_of=None):
    """Train a model as ``config`` says, evaluate it on the test set and return the results dict.

    ``config.out`` must not hold a run unless ``resume`` (continue it) or ``overwrite`` (start it
    again); see ``Trainer.fit``. A resumed run that had ended (its epochs done, or stopped early)
    returns the results it holds (results.json), without evaluating again, when they hold what
    ``config`` asks.
    With ``free_of``, a folder name, a new run goes instead to the first of ``free_of``,
    ``free_of-2``, ... that is free when training starts (``runs.claim_free_run_dir``), as
    ``minivae train`` without --out does.
    """
    trainer = Trainer(config, data=data, progress=progress, log=log)
    # The folder stays claimed through the evaluation, whose results.json belongs to this run.
    with trainer._claim(resume, overwrite, free_of):
        trainer._fit_claimed(resume)
        if resume and trainer.steps_done == trainer.steps_at_start:
            # Nothing was trained: the results of the ended run stand, unless they lack what was
            # asked (results.json missing or damaged, another --eval-k): the evaluation can take
            # minutes.
            kept = _results_of_finished_run(trainer.run_dir, trainer.config, trainer.epoch)
            if kept is not None:
                log(f"{trainer.run_dir} had ended at epoch {trainer.epoch}: nothing to train; its "
                    f"results stand in {RESULTS} (score it again with `minivae eval {trainer.run_dir}`)")
                return kept
        try:
            return trainer.final_evaluation()
        except KeyboardInterrupt:  # training is done and saved; only the scores are missing
            run = trainer.run_dir
            held = (f"{run / BEST} holds the model of the epoch best on the validation split"
                    if trainer.config.keep_best else f"{run / CHECKPOINT} holds the trained model")
            log(f"interrupted during the final evaluation: {held}; --resume --out {run} evaluates it "
                f"(or `minivae eval {run}`)")
            raise


def _results_of_finished_run(run_dir, config, epochs):
    """The results.json of a run that ended after ``epochs`` epochs, when it holds what the
    final evaluation of ``config`` would (the log-likelihood of ``config.eval_k`` samples, if
    any), else None."""
    try:
        results = json.loads((Path(run_dir) / RESULTS).read_text())
    except (OSError, ValueError):  # missing (interrupted evaluation) or damaged: evaluate again
        return None
    if not isinstance(results, dict) or results.get("epochs") != epochs:
        return None
    if config.eval_k and results.get("eval_k") != config.eval_k:
        return None
    return results
