"""The command line: ``minivae train | eval | cluster | sample | plot | models | gradcheck | graph``
(also ``python -m minivae``).

One error path: every mistake a user can make (an unknown model, a value out of range, a
missing or damaged run folder, a device that cannot be used, a folder that cannot be written, a
full disk) ends in one line, ``minivae: error: ...``, naming the bad value and what would be
valid, and exit status 2. Each command checks all of its arguments before any work starts (before
MNIST is loaded or a step is taken). A traceback appears only with ``--debug``, or for a bug.
"""
import argparse
import dataclasses
import errno
import importlib
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__, streams
from .backend import DeviceError, resolve_device
from .checkpoint import CheckpointError
from .data.mnist import SPLIT_SIZES, TRAIN_CLASS_COUNTS, MNISTError
from .files import atomic_write_text
from .models import MODELS, build_model
from .models.settings import COMMON, model_settings, parse_setting
from .nn import ACTIVATIONS
from .runs import (CHECKPOINT, RUN_FILES, RunFolderError, TrainConfig, build_run_model, check_resume_state,
                   check_run_dir, checkpoint_position, cluster_results_path, eval_results_path, is_run_file,
                   model_file_name, names_last, next_free_run_dir, read_checkpoint, read_run_model,
                   resumable_options, run_folder_options, run_model, write_json, writing_for_run)
from .train import (BN_STATISTICS, OPTIMIZERS, WARMUP_UNITS, DataMismatchError, Stopped, TrainingDiverged,
                    check_batch_norm_statistics, check_batches, has_batch_norm)

PROG = "minivae"
#: The devices ``--device`` accepts ("cuda" is another name for "gpu").
DEVICES = ("cpu", "gpu", "cuda", "auto")
#: Labels a semi-supervised model learns from are balanced over MNIST's ten classes.
N_CLASSES = 10


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


#: Errors of the library that describe a problem with the user's input or machine, not a bug:
#: printed as one line (their message names the file or value), exit status 2.
USER_ERRORS = (UsageError, DeviceError, CheckpointError, MNISTError, RunFolderError, DataMismatchError)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised (as UsageError), so ``main`` prints them as one line."""

    def error(self, message):
        """Raise the message as a UsageError instead of printing the usage and exiting."""
        raise UsageError(message)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with every default shown, and the description's line breaks kept."""

    def _fill_text(self, text, width, indent):
        return "\n".join(indent + line for line in text.splitlines())

    def _get_help_string(self, action):
        # A flag, or an option that is off unless given, shows no default. Identity, not ``in``: a
        # default of 0 or 0.0 equals False, and would lose its "(default: 0)". A setting of a run
        # (``train``) shows TrainConfig's value: its own default, None, means "not given".
        default = getattr(action, "config_default", action.default)
        if default is None or default is False or (isinstance(default, list) and not default):
            return action.help
        if not hasattr(action, "config_default"):
            return super()._get_help_string(action)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        return f"{action.help} (default: {shown})"


# ----- argument types: each refuses a bad value with a message naming it --------------------------

def _integer(low, what, high=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give {what}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {what}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


def _number(low, inclusive, what, high=math.inf):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive) or value > high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {what}")
        return value
    parse.__name__ = what
    return parse


def nonempty_path(text):
    """A file or folder name; an empty one is a mistake (it would read as "not given")."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return text


positive_int = _integer(1, "an integer >= 1")
count = _integer(0, "an integer >= 0")
#: Philox's key is 64 bits wide.
philox_seed = _integer(0, "an integer in [0, 2**64)", high=2**64 - 1)
#: A number of MNIST test images: a batch of them, or the first N, has at most the whole test set.
test_images = _integer(1, f"an integer in [1, {SPLIT_SIZES['test']}]", high=SPLIT_SIZES["test"])
positive_float = _number(0.0, False, "a number > 0")
nonnegative_float = _number(0.0, True, "a number >= 0")
fraction = _number(0.0, True, "a number in [0, 1]", high=1.0)


# ----- checks shared by the commands -------------------------------------------------------------

def _check_writable_folder(folder, option, hint="give a folder you can write to", label=None):
    """Refuse a folder that is a file, or that cannot be created or written, before any work.

    ``label`` starts the message (default: ``option folder``)."""
    folder = Path(folder)
    this = "this" if label is None else str(folder)  # a label names a file in the folder
    label = label or f"{option} {folder}"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{label}: {this} is a file, not a folder; give a folder")
    existing = next(p for p in [folder, *folder.parents] if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise UsageError(f"{label}: {existing} is a file, not a folder")
    try:  # os.access says yes to root even on a read-only mount: try to write instead
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(f"{label}: cannot write in {existing} ({exc.strerror or exc}); {hint}") from None


#: The kinds of output file: the suffixes the name of one may end in, and the kind in words.
PNG_FILE = ((".png",), "a .png file")
JSON_FILE = ((".json",), "a .json file")
GRAPH_FILE = ((".dot", ".svg"), "a .dot or an .svg file")


def _claim_output_file(path, option, kind, hint="give a folder you can write to"):
    """Refuse an output file that is a folder, one of the files of a run, a file whose name
    does not end in one of the suffixes of ``kind`` (e.g. ``PNG_FILE``), or in a folder that
    cannot be written; then create its folder, so that the write at the end cannot fail for a
    missing one after all the work."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: this is a folder; give a file name")
    if is_run_file(path):
        raise UsageError(f"{option} {path}: this is a file of the run in {path.parent}, which writing "
                         f"it would destroy; give a file name other than {', '.join(RUN_FILES)}")
    suffixes, words = kind
    if path.suffix not in suffixes:  # a picture written as eval_k1000.json would destroy the result
        raise UsageError(f"{option} {path}: give {words}")
    _check_writable_folder(path.parent, option, hint, label=f"{option} {path}")
    path.parent.mkdir(parents=True, exist_ok=True)


def _claim_out(args, default, kind, what):
    """The output file of a command: ``args.out``, or ``default`` when no --out is given,
    claimed by ``_claim_output_file``; a message about the default calls it ``what`` (the user
    gave no --out) and says how to write it elsewhere."""
    if args.out:
        path = Path(args.out)
        _claim_output_file(path, "--out", kind)
    else:
        path = Path(default)
        _claim_output_file(path, what, kind, hint="write it elsewhere with --out FILE")
    return path


def _check_run_folder(run):
    """One UsageError naming the run folder ``run`` when it does not exist."""
    if not Path(run).exists():
        raise UsageError(f"run folder {run} does not exist (train one with `minivae train --out {run}`)")


def _load_run(run, last=False):
    """(config, model, meta, trained) of a run folder, as ``read_run_model`` reads them: the
    model the run selected (``--keep-best``), or with ``last`` that of its checkpoint; ``meta`` is
    the document of its checkpoint, whose ``run_id`` is the identity of the run, which a command
    checks the folder still holds when it writes a result or a picture of the model
    (``writing_for_run``). ``_check_run_folder``'s UsageError, NotARunError when it holds no run
    (``read_checkpoint`` says what it holds instead)."""
    _check_run_folder(run)
    return read_run_model(run, last)  # a damaged checkpoint raises CheckpointError


def _load_scored_run(run, last):
    """(config, model, trained, run_id) of a run folder, as ``_load_run``; ``trained`` is what a
    result of the model records of it: its position (``checkpoint_position``; a resumed run
    trains on, and its earlier results stay), and ``selected`` for the model the run selected."""
    config, model, meta, trained = _load_run(run, last)
    if trained is None:  # the model of the checkpoint
        trained = checkpoint_position(meta, Path(run) / CHECKPOINT, config)
    return config, model, trained, meta.get("run_id")


# ----- train ------------------------------------------------------------------------------------

def _unused_lines(model):
    """One line for each option of ``settings.COMMON`` that ``model`` does not use (its
    ``unused_settings``): ``no --z-dim (its latent sizes are --set z_dims)``."""
    return [f"no {COMMON[name]} ({instead})"
            for name, instead in getattr(MODELS[model], "unused_settings", {}).items()]


def _settings_text(model):
    """The lines of help listing the ``--set`` keys of ``model`` with their types and defaults,
    and the common options it does not use."""
    settings = model_settings(model)
    lines = ([f"--set KEY=VALUE settings of model {model!r} (type, default):"]
             + [f"  {s.describe()}" for s in settings.values()] if settings
             else [f"model {model!r} has no --set settings"])
    return "\n".join(lines + [f"model {model!r} takes {line}" for line in _unused_lines(model)])


class _TrainHelp(argparse.Action):
    """``-h``: the usual help, then the ``--set`` keys of the ``--model`` given before it."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        print("\n" + _settings_text(namespace.model or TrainConfig.model))
        parser.exit()


def _add_train_args(p):
    """The options of ``train``. Each setting of a run defaults to None, "not given": a new run
    takes TrainConfig's value and a resumed run keeps its own (``_config_from_args``), so that a
    resume changes only what is given; the help shows TrainConfig's value."""
    d = TrainConfig()

    def setting(*flags, **kw):
        action = p.add_argument(*flags, **kw)
        action.config_default = getattr(d, action.dest)

    setting("--model", choices=list(MODELS), help="model family (each one's --set keys: `minivae models`)")
    setting("--epochs", type=positive_int, help="passes over the 50k training images")
    setting("--batch-size", type=positive_int, help="images per optimizer step")
    setting("--optimizer", choices=OPTIMIZERS,
            help="adam, or rmsprop (PyTorch's: alpha 0.99, eps 1e-8; the planar-flow paper's, with "
                 "--momentum 0.9)")
    setting("--momentum", type=nonnegative_float, help="RMSprop's momentum, below 1 (0: none)")
    setting("--lr", type=positive_float, help="learning rate (peak of the schedule)")
    setting("--lr-schedule", choices=("cosine", "stages", "step", "constant"),
            help="cosine: from --lr down to --lr-min after the last step (the last step runs just "
                 "above it); stages: the IWAE paper's, 3^i epochs at --lr * 10^(-i/7) for i = 0, 1, ... "
                 "(its 8 stages are --epochs 3280); step: --lr times --lr-gamma every --lr-step epochs; "
                 "constant: --lr throughout")
    setting("--lr-min", type=nonnegative_float, help="the rate the cosine schedule decays to")
    setting("--lr-step", type=positive_int, help="the epochs between two decays of the step schedule")
    setting("--lr-gamma", type=nonnegative_float, help="the factor of each decay of the step schedule")
    setting("--adam-eps", type=positive_float,
            help="Adam's epsilon, added to the root of the second moment (the IWAE paper's: 1e-4); "
                 "above 0, or a weight whose gradient is 0 becomes NaN")
    setting("--clip-norm", type=nonnegative_float,
            help="before each update, scale the gradients together so that their joint norm is at "
                 "most this (0: no clipping)")
    setting("--clip-value", type=nonnegative_float,
            help="before each update (after --clip-norm), clip every gradient entry to "
                 "[-this, this] (0: no clipping)")
    setting("--weight-decay", type=nonnegative_float,
            help="L2 weight decay: the optimizer adds this times each parameter to its gradient (0: none); "
                 "1 / 50000, 2e-5, is a N(0, 1) prior on the parameters")
    setting("--z-dim", type=positive_int, help="size of the latent code z")
    setting("--hidden", type=positive_int, nargs="+", help="encoder hidden sizes; the decoder mirrors them")
    setting("--activation", choices=list(ACTIVATIONS), help="nonlinearity between the hidden layers")
    setting("--beta", type=nonnegative_float,
            help="KL weight (beta-VAE when > 1); 1 for a model trained on the IWAE bound "
                 "(--iw-k above 1, --model iwae), which has no KL term to weight")
    p.add_argument("--warmup", type=count,
                   help=f"epochs (with --warmup-unit step: optimizer steps) of linear KL warm-up (0: none); "
                        f"default {d.warmup}, and none for a model trained on the IWAE bound (--iw-k above "
                        "1, --model iwae), which has no KL term to warm up: there it may only be 0")
    setting("--warmup-start", type=fraction,
            help="the KL weight of the warm-up's first epoch (or step) as a fraction of --beta; it rises by "
                 "1 / --warmup an epoch (or step): beta * min(1, start + u / warmup) at u = 0, 1, ...; "
                 "default 1 / --warmup")
    setting("--warmup-unit", choices=WARMUP_UNITS,
            help="what --warmup counts: epochs (the KL weight changes once an epoch) or optimizer "
                 "steps over the whole run (it changes at every step)")
    setting("--mc-samples", type=positive_int, help="Monte Carlo samples of the ELBO per image")
    setting("--iw-k", type=positive_int, help="train on the k-sample IWAE bound when > 1")
    setting("--n-labelled", type=positive_int,
            help="labels (balanced over the classes, chosen by --seed from the training set) a "
                 "semi-supervised model (m2, m1m2, adgm-ssl, sdgm-ssl, ladder-m2) learns from; "
                 "a multiple of 10")
    setting("--labelled-batch-size", type=positive_int,
            help="labelled images per optimizer step of a semi-supervised model, next to the --batch-size "
                 "unlabelled ones, at most --n-labelled (the M2 authors' code takes 1); default: as many "
                 "as --batch-size, or all --n-labelled when fewer")
    setting("--seed", type=philox_seed,
            help="seed of the initial weights, the batch order, the binarization and the noise")
    p.add_argument("--out", type=nonempty_path,
                   help=f"run folder (config, checkpoint, metrics, results, pictures, and with --keep-best "
                        f"the best epoch's model); default {d.out}, or {d.out}-2, {d.out}-3, ... when it "
                        f"holds a run or another training takes it first ({d.out} itself with --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with its own settings but for "
                        "those given (only " + ", ".join(resumable_options()) + " may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds a run (its files are removed first)")
    setting("--device", choices=DEVICES, help="where to train; auto: the GPU when CuPy and a device are usable")
    setting("--eager", action=argparse.BooleanOptionalAction,
            help="on the GPU, run every step from Python (the oracle of graph mode, for study) "
                 "instead of replaying the step captured as one CUDA graph")
    setting("--eval-k", type=count, help="importance samples for the final test log-likelihood (0 skips it)")
    setting("--keep-best", action="store_true", default=None,
            help="model selection: keep the model of the epoch best on the validation split (its ELBO, "
                 "or a classifier's error) in RUN/best.npz, and score that one on the test set at the end; "
                 "eval, cluster, sample, plot and graph then read it too, unless given --last")
    setting("--bn-statistics", choices=BN_STATISTICS,
            help="what a batch normalization scores with: running averages of the training batches, or "
                 "the statistics of one batch of all the training images, set at the end of every epoch "
                 "(the Ladder VAE authors' code)")
    setting("--patience", type=count,
            help="early stopping (with --keep-best): end the run once that many epochs in a row have not "
                 "beaten the best on the validation split (0: train every epoch); the learning rate keeps "
                 "the schedule of all --epochs")
    setting("--trace-every", type=count,
            help="log per-layer gradient norms (those the update takes: after any clipping) and "
                 "update ratios every N steps (0: off); on "
                 "the GPU the steps then run eagerly, not as a captured CUDA graph")
    p.add_argument("--set", dest="model_options", action="append", metavar="KEY=VALUE",
                   help="a model-specific setting (repeatable, one value per key), e.g. --set flows=8; the keys of a model "
                        "and their types: `minivae models` or `minivae train --model NAME --help`. The "
                        "settings with an option of their own (" + ", ".join(COMMON.values()) + ") are "
                        "given through it, never through --set")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_options(model, pairs):
    """The ``--set`` pairs as a dict of typed values (see ``minivae.models.settings``). A key
    given twice with two values is refused: which one the user meant is not ours to guess (the
    same value twice is one setting, as a repeated ``--op`` is one op)."""
    options, given_as = {}, {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair}: expected KEY=VALUE, e.g. --set flows=8")
        key = key.replace("-", "_")
        try:
            parsed = parse_setting(model, key, value)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if key in options and options[key] != parsed:
            raise UsageError(f"--set {key} is given twice, as --set {given_as[key]} and --set {pair}; "
                             "give it once")
        options[key], given_as[key] = parsed, pair
    return options


def _default_out(resume):
    """The run folder of ``train`` without ``--out``: ``runs/vae`` to resume, else the first of
    ``runs/vae``, ``runs/vae-2``, ... that holds no run (training twice makes two runs)."""
    base = TrainConfig().out
    return base if resume else str(next_free_run_dir(base))


def _config_from_args(args, out, base):
    """The TrainConfig of ``train``'s options for the run folder ``out``: the settings given, over
    those of ``base``: the config of the run when resuming (so a resume changes only what is
    given; ``check_resumable`` then says whether it may), else TrainConfig's defaults. ``--set``
    pairs add to the run's model options."""
    values = dataclasses.asdict(base)
    values["data_rng"] = TrainConfig.data_rng  # the generator of this library, not the run's
    for name in values.keys() & vars(args).keys():
        given = getattr(args, name)
        values[name] = getattr(base, name) if given is None else given
    values["out"] = out
    values["hidden"] = tuple(values["hidden"])
    # Another --model has other --set keys: then the run's options are not carried over (the
    # change of model is refused by check_resumable, in one line).
    inherited = base.model_options if values["model"] == base.model else {}
    values["model_options"] = dict(inherited, **_parse_options(values["model"], args.model_options or []))
    return TrainConfig(**values)


def _checkpoint_to_resume(out, args):
    """The checkpoint of the run in ``out`` that ``--resume`` continues, as ``read_checkpoint``
    returns it: (arrays, meta, config). One line naming the folder when it holds no run, or when
    --overwrite is given too; CheckpointError when the checkpoint is damaged, its model state
    included."""
    check_run_dir(out, resume=True, overwrite=args.overwrite)
    arrays, meta, saved = read_checkpoint(out)
    run_model(out, arrays, saved)  # built only to check that the arrays fit the saved config
    return arrays, meta, saved


def _check_kl_weight(config, model, args):
    """A model trained on the IWAE bound (``model.iw_k`` > 1) has no KL term: refuse a --beta
    other than 1, a --warmup above 0, a --warmup-start and --warmup-unit step, and record no
    warm-up unless one was given."""
    if model.iw_k == 1:
        return
    bound = f"model {config.model!r} trains on the {model.iw_k}-sample IWAE bound, which has no KL term"
    elbo = "train on the ELBO (--iw-k 1; --set k=1 for model iwae)"
    if config.beta != 1:
        raise UsageError(f"--beta {config.beta:g}: {bound} to weight; give --beta 1, or {elbo}")
    if args.warmup is not None and config.warmup:
        raise UsageError(f"--warmup {config.warmup}: {bound} to warm up; leave --warmup out, or {elbo}")
    if args.warmup_start is not None:
        raise UsageError(f"--warmup-start {args.warmup_start:g}: {bound} to warm up; leave --warmup-start "
                         f"out, or {elbo}")
    if config.warmup_unit == "step":
        raise UsageError(f"--warmup-unit step: {bound} to warm up; leave --warmup-unit out, or {elbo}")
    config.warmup = 0


def _check_resume(config, model, warmup_given, resumed):
    """Refuse ``--resume`` from the checkpoint ``resumed`` (``_checkpoint_to_resume``) when it
    lacks the state to go on from or the run was not trained with the settings of ``config``."""
    arrays, meta, saved = resumed
    check_resume_state(arrays, meta, Path(config.out) / CHECKPOINT, saved)
    if model.iw_k > 1 and not warmup_given:
        # Runs on the IWAE bound once recorded the default warm-up, which never applied to them.
        config.warmup = saved.warmup
    config.check_resumable(saved, (meta["epoch"], meta["batch"]))


def _check_out_is_no_run_option(config):
    """Refuse an --out that is a run the model is built on (M1+M2's m1): starting again there
    would remove the very run the new model needs."""
    out = Path(config.out).resolve()
    for name, folder in run_folder_options(config).items():
        if Path(folder).resolve() == out:
            raise UsageError(f"--out {config.out}: this is the run {name}={folder} that model "
                             f"{config.model!r} is built on; give another --out")


def check_train(args):
    """Every check of ``minivae train``; returns the TrainConfig. Nothing is loaded or trained."""
    if args.overwrite and args.out is None and not args.resume:
        # Without --out the run goes to a free folder, so --overwrite would start nothing again.
        raise UsageError(f"--overwrite starts again the run in --out, and no --out was given; give "
                         f"the run folder, e.g. --out {TrainConfig().out} --overwrite")
    out = args.out or _default_out(args.resume)
    # A checkpoint can be large, so a resume reads it once here: for the settings the run goes on
    # with, and for the checks of its state once those of the options have passed. Training
    # reads it again where it holds the folder, so that it goes on from the state it checks.
    resumed = _checkpoint_to_resume(out, args) if args.resume else None
    config = _config_from_args(args, out, base=resumed[2] if args.resume else TrainConfig())
    try:
        resolve_device(config.device)  # DeviceError now when the GPU cannot be used
    except DeviceError as exc:
        if args.device is not None:
            raise
        # The run's own device, not asked for here (a run folder copied to another machine).
        raise UsageError(f"{config.out} was trained with --device {config.device}, which cannot be "
                         f"used here ({exc}); give --device cpu to go on on the CPU") from None
    if config.lr_schedule == "cosine" and config.lr < config.lr_min:
        raise UsageError(f"--lr {config.lr:g} is below --lr-min {config.lr_min:g}: the cosine schedule "
                         "would raise the rate; give an --lr of at least --lr-min")
    if config.momentum >= 1:
        raise UsageError(f"argument --momentum: {config.momentum:g} is not below 1, and the steps would "
                         "grow without end; give a momentum in [0, 1) (0: none)")
    if config.momentum and config.optimizer != "rmsprop":
        raise UsageError(f"--momentum {config.momentum:g} is RMSprop's: give --optimizer rmsprop too, or leave "
                         "--momentum out (Adam's first moment is its momentum)")
    if config.optimizer == "rmsprop" and config.adam_eps != TrainConfig.adam_eps:
        raise UsageError(f"--adam-eps {config.adam_eps:g} is Adam's: --optimizer rmsprop takes PyTorch's eps "
                         "1e-8; leave --adam-eps out")
    if config.warmup_start is not None and config.warmup == 0:
        raise UsageError(f"--warmup-start {config.warmup_start:g} starts a KL warm-up, and --warmup is 0 "
                         "(none); give --warmup N too, or leave --warmup-start out")
    if config.warmup_unit == "step" and config.warmup == 0:
        raise UsageError("--warmup-unit step counts the steps of a KL warm-up, and --warmup is 0 (none); give "
                         "--warmup N too, or leave --warmup-unit out")
    if config.patience and not config.keep_best:
        kept = (f"{config.out} was trained without --keep-best, which a resume cannot add: leave --patience "
                "out, or start again with --overwrite --keep-best" if args.resume else "give --keep-best too")
        raise UsageError(f"--patience {config.patience} ends the run on the best epoch that --keep-best "
                         f"keeps; {kept}")
    for name, instead in getattr(MODELS[config.model], "unused_settings", {}).items():
        if getattr(args, name) is not None:  # given: the model would leave it unused
            raise UsageError(f"{COMMON[name]} {getattr(args, name)}: model {config.model!r} does not use "
                             f"it ({instead}); leave {COMMON[name]} out")
    given = _parse_options(config.model, args.model_options or [])  # this command's, not a run's
    for name, (other, value) in getattr(MODELS[config.model], "conditional_settings", {}).items():
        chosen = config.model_options.get(other, model_settings(config.model)[other].default)
        if name in given and chosen != value:
            raise UsageError(f"--set {name}: model {config.model!r} uses it only with --set {other}={value}, "
                             f"and would leave it unused; give --set {other}={value} too, or leave {name} out")
    semi_supervised = getattr(MODELS[config.model], "semi_supervised", False)
    for option, value in (("--n-labelled", args.n_labelled), ("--labelled-batch-size", args.labelled_batch_size)):
        if value is not None and not semi_supervised:
            raise UsageError(f"{option} {value}: model {config.model!r} is not semi-supervised and would leave "
                             f"it unused; leave {option} out")
    if semi_supervised and config.n_labelled % N_CLASSES:
        raise UsageError(f"argument --n-labelled: {config.n_labelled} is not a multiple of the "
                         f"{N_CLASSES} classes; give e.g. 100")
    fewest = min(TRAIN_CLASS_COUNTS)
    if semi_supervised and config.n_labelled > N_CLASSES * fewest:
        raise UsageError(f"argument --n-labelled: {config.n_labelled} is more than a subset balanced over "
                         f"the digits can hold (the training images hold {fewest} of digit "
                         f"{TRAIN_CLASS_COUNTS.index(fewest)}); give at most {N_CLASSES * fewest}")
    size = config.labelled_batch_size
    if size is not None and size > config.n_labelled:
        raise UsageError(f"argument --labelled-batch-size: {size} is more than the {config.n_labelled} "
                         f"labelled images (--n-labelled); give at most {config.n_labelled}")
    try:  # the constructor's own checks (e.g. iwae's layers, ladder's z_dims), on a throw-away model
        model = build_run_model(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except MemoryError as exc:  # NumPy says how much: "Unable to allocate 2.85 TiB for an array ..."
        sizes = " ".join([f"--hidden {' '.join(map(str, config.hidden))} --z-dim {config.z_dim}"]
                         + [f"--set {name}={value}" for name, value in config.model_options.items()])
        raise UsageError(f"{sizes}: the model does not fit in memory ({exc}); give smaller sizes") from None
    if semi_supervised and model.num_classes < N_CLASSES:
        raise UsageError(f"--set num_classes={model.num_classes}: MNIST's labels are 0 to "
                         f"{N_CLASSES - 1}; give num_classes={N_CLASSES} or more")
    check_batches(config, model, SPLIT_SIZES["train"])  # and again on the data that is loaded
    check_batch_norm_statistics(config, model)
    _check_kl_weight(config, model, args)
    _check_out_is_no_run_option(config)
    _check_writable_folder(config.out, "--out")
    # Refuse a folder holding a run unless --resume or --overwrite, so that no data is loaded for
    # a run that cannot start. Nothing is removed yet: with --overwrite the old run's files go
    # only once the trainer is built (the data loaded, the labels drawn), so that a mistake found
    # there leaves the old run as it was.
    check_run_dir(config.out, resume=args.resume, overwrite=args.overwrite)
    if args.resume:
        _check_resume(config, model, args.warmup is not None, resumed)
    return config


def cmd_train(args):
    """Train (or resume) a run and print its test results."""
    from .train import train

    config = check_train(args)
    # Without --out the run goes to the first free folder of runs/vae, runs/vae-2, ... when it
    # starts: another training started meanwhile may have taken the one the checks found free.
    free_of = TrainConfig().out if args.out is None and not args.resume else None
    try:
        train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
              free_of=free_of)
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _summary(obj):
    """The first sentence of ``obj``'s docstring, on one line."""
    paragraph = " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split()).replace("``", "")
    return re.split(r"(?<! al)\. (?=[A-Z])", paragraph)[0].rstrip(".") + "."


def cmd_models(args):
    """List the models, a sentence about each, and their ``--set`` keys (types and defaults)."""
    for name, cls in MODELS.items():
        print(f"{name}: {_summary(cls)}")
        for setting in model_settings(name).values():
            print(f"    --set {setting.describe()}")
        for line in _unused_lines(name):
            print(f"    {line}")
    print("\nEvery model also takes " + ", ".join(COMMON.values()) + " (see `minivae train --help`), "
          "except an option listed under it with \"no\".")
    return 0


# ----- eval -------------------------------------------------------------------------------------

#: ``minivae eval``'s default number of importance samples: the training's own final evaluation
#: uses it too. The papers' k = 5000 takes five times as long (give --k 5000).
EVAL_K = 1000


def _estimate_line(model, x, k, batch_size=100):
    """Time the log-likelihood of one batch (with noise of its own) and say how long all of ``x`` takes."""
    from .evaluate import log_likelihood
    from .random import Generator

    noise = Generator(seed=0, stream=streams.EVAL_TIME_ESTIMATE)
    log_likelihood(model, x[:1], k=1, noise=noise)  # first calls (GPU kernels compile) are not timed
    start = time.perf_counter()
    log_likelihood(model, x[:batch_size], k=k, noise=noise, batch_size=batch_size)
    seconds = (time.perf_counter() - start) * math.ceil(len(x) / batch_size)
    took = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return (f"{PROG}: {model.estimated_log_likelihood} with k={k} importance samples on {len(x)} images: "
            f"about {took} here (fewer with a smaller --k or --n)")


def _result_file(args, default):
    """The JSON file of a command's result on the first ``args.n`` test images (``_claim_out``):
    ``args.out``, else ``default`` in the run folder, named ``..._firstN.json`` for part of the
    test set, so that a score of part of it never replaces one of all of it."""
    if args.n < SPLIT_SIZES["test"]:
        default = default.with_name(f"{default.stem}_first{args.n}.json")
    return _claim_out(args, default, JSON_FILE, "the result file")


def _require_extra(command, module, package, extra):
    """Refuse ``command`` in one line, naming the extra that installs ``package``, when its
    optional ``module`` cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{command} needs {package}, an optional extra: pip install 'minivae[{extra}]'") from None


def _test_images(n):
    """The first ``n`` MNIST test images, binarized as every score binarizes them (the fixed
    draw of ``binarize_eval``), and their labels."""
    from .data import binarize_eval, load_mnist

    data = load_mnist(verbose=False)
    return binarize_eval(data.x_test, "test")[:n], data.y_test[:n]


def _report(args, out, result, run_id):
    """Print ``result`` of the command ``args`` on the run ``args.run`` as one JSON line, then
    write it to ``out``: printed first, so that a failed write (RunWriteError) loses nothing.

    Neither happens when the folder no longer holds the run of identity ``run_id`` that was
    scored (``writing_for_run``; trained again with --overwrite during the minutes of scoring):
    the result would be taken for one of the run it holds now."""
    with writing_for_run(args.run, run_id, args.command, out):
        print(json.dumps(result))
        write_json(out, result, kept="the result is printed above")
    print(f"{PROG}: wrote {out}", file=sys.stderr)


def cmd_eval(args):
    """Score a trained run on the test set: ELBO, k-sample log-likelihood (and a classifier's error)."""
    device = resolve_device(args.device)
    config, model, trained, run_id = _load_scored_run(args.run, args.last)
    out = _result_file(args, eval_results_path(args.run, args.k, last=names_last(config, args.last)))
    from .evaluate import test_set_scores

    model.to(device)  # the evaluation follows the model's device
    x_test, y_test = _test_images(args.n)
    print(_estimate_line(model, x_test, args.k), file=sys.stderr)
    scores = test_set_scores(model, x_test, y_test, args.k, progress=not args.no_progress)
    _report(args, out, {"run": str(args.run), **trained, **scores}, run_id)
    return 0


# ----- cluster ----------------------------------------------------------------------------------

def cmd_cluster(args):
    """Cluster a run's test-set posterior means by k-means; score the clusters against the labels."""
    if args.clusters > args.n:
        raise UsageError(f"--clusters {args.clusters} is more than the {args.n} images to cluster "
                         f"(--n); give at most {args.n}")
    device = resolve_device(args.device)
    config, model, trained, run_id = _load_scored_run(args.run, args.last)
    if not model.gaussian_encoder:
        raise UsageError(f"the {config.model} model of {args.run} has no Gaussian encoder (encode(x) -> "
                         "(mu, logvar)) whose means could be clustered; give a run of a VAE")
    _require_extra("cluster", "sklearn", "scikit-learn", "cluster")
    out = _result_file(args, cluster_results_path(args.run, args.clusters,
                                                  last=names_last(config, args.last)))
    from .clustering import latent_clusters

    model.to(device)  # the encoding follows the model's device
    x_test, y_test = _test_images(args.n)
    clusters = latent_clusters(model, x_test, y_test, n_clusters=args.clusters, seed=args.seed)
    _report(args, out, {"run": str(args.run), **trained, **clusters}, run_id)
    return 0


# ----- sample and plot --------------------------------------------------------------------------

def cmd_sample(args):
    """Save a grid of samples from the prior as a PNG."""
    _require_extra("sample", "matplotlib", "matplotlib", "viz")
    config, model, meta, _ = _load_run(args.run, args.last)
    default = Path(args.run) / model_file_name("samples.png", last=names_last(config, args.last))
    path = _claim_out(args, default, PNG_FILE, "the picture")
    from .viz import prior_samples, save_image_grid

    images, nrow = prior_samples(model, args.n, args.seed)  # a model with labels: a class per row
    with writing_for_run(args.run, meta.get("run_id"), "sample", path, drawn=True):
        save_image_grid(np.asarray(images), path, nrow=nrow)
    print(path)
    return 0


def cmd_plot(args):
    """Draw the run's pictures (samples, reconstructions, latent space, curves) as PNGs."""
    _require_extra("plot", "matplotlib", "matplotlib", "viz")
    read = _load_run(args.run, args.last)  # the run's errors come before those of its folder
    _check_writable_folder(args.run, "the run folder")
    from .viz import plot_run

    for path in plot_run(args.run, last=args.last, read=read):
        print(path)
    return 0


def _add_last_option(p):
    """``--last`` of the commands that read a run's model (``_load_run``)."""
    p.add_argument("--last", action="store_true",
                   help="use the model of the run's last checkpoint (RUN/checkpoint.npz), not the one of "
                        "the epoch best on the validation split that a run trained with --keep-best "
                        "selects (RUN/best.npz); its results and pictures then go to files of their own "
                        "beside those of the selected model, named ..._last (RUN/eval_kK_last.json, "
                        "RUN/samples_last.png, ...). A run trained without --keep-best has only the last, "
                        "whose files keep their names")


def build_parser():
    """The argparse parser of the ``minivae`` command."""
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name, func, help, **kw):
        p = sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=_Formatter, **kw)
        p.set_defaults(func=func)
        return p

    p = command("train", cmd_train, "train a VAE on MNIST into a run folder", add_help=False)
    p.add_argument("-h", "--help", action=_TrainHelp,
                   help="show this help and the --set keys of the --model given before it, then exit")
    _add_train_args(p)
    p = command("eval", cmd_eval, "test ELBO and importance-sampled log-likelihood of a run "
                                  "(prints an estimate of the time first)")
    p.add_argument("run", type=nonempty_path, help="a run folder written by `minivae train`")
    p.add_argument("--k", type=positive_int, default=EVAL_K,
                   help="importance samples per image (the papers use 5000: five times slower)")
    p.add_argument("--n", type=test_images, default=SPLIT_SIZES["test"], help="score the first N test images")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where to compute (k = 5000 takes "
                                                                      "seconds on a GPU)")
    p.add_argument("--out", type=nonempty_path,
                   help="the JSON file of the result (default: RUN/eval_kK.json, or "
                        "RUN/eval_kK_firstN.json for part of the test set; with --last on a run trained "
                        "with --keep-best, RUN/eval_kK_last.json or RUN/eval_kK_last_firstN.json)")
    _add_last_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = command("cluster", cmd_cluster, "k-means on a run's test-set posterior means, scored against "
                                        "the digit labels (accuracy, NMI, ARI)")
    p.add_argument("run", type=nonempty_path, help="a run folder written by `minivae train`")
    p.add_argument("--clusters", type=positive_int, default=10, help="how many clusters")
    p.add_argument("--n", type=test_images, default=SPLIT_SIZES["test"], help="cluster the first N test images")
    p.add_argument("--seed", type=_integer(0, "an integer in [0, 2**32)", high=2**32 - 1), default=0,
                   help="seed of k-means' starting centres")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where to encode the images")
    p.add_argument("--out", type=nonempty_path,
                   help="the JSON file of the result (default: RUN/clusters_C.json, or "
                        "RUN/clusters_C_firstN.json for part of the test set; with --last on a run trained "
                        "with --keep-best, RUN/clusters_C_last.json or RUN/clusters_C_last_firstN.json)")
    _add_last_option(p)
    p = command("sample", cmd_sample, "a grid of images sampled from a trained model, as a PNG")
    p.add_argument("run", type=nonempty_path, help="a run folder written by `minivae train`")
    p.add_argument("--n", type=_integer(1, "an integer in [1, 10000]", high=10000), default=64,
                   help="how many images (one grid in one PNG)")
    p.add_argument("--seed", type=philox_seed, default=0, help="seed of the samples")
    p.add_argument("--out", type=nonempty_path,
                   help="the PNG file (default: RUN/samples.png; with --last on a run trained with "
                        "--keep-best, RUN/samples_last.png)")
    _add_last_option(p)
    p = command("plot", cmd_plot, "pictures of a run (PNG files in the run folder)")
    p.add_argument("run", type=nonempty_path, help="a run folder written by `minivae train`")
    _add_last_option(p)
    command("models", cmd_models, "the models and their --set keys, with types and defaults")
    _add_gradient_commands(command)
    return parser


def _os_error_line(exc):
    """One line for an error of the operating system (a full disk, a folder that cannot be written)."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device{where}; free some space and run the command again "
                "(a training run continues from its last checkpoint with --resume)")
    return f"{exc.strerror or exc}{where}"


def main(argv=None):
    """Entry point of the ``minivae`` command; returns the exit status (2 for a user error;
    130 after Ctrl-C, 143 after a SIGTERM that training stopped at, as a shell reports them)."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _run(argv)
    except BrokenPipeError:  # the reader of our output left early (`minivae models | head`)
        # Point stdout at /dev/null so that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(argv):
    """``main`` without the closed-pipe case: parse, run the command, map errors to one line."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _error(str(exc))
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        return _error(str(exc))
    except BrokenPipeError:
        raise
    except OSError as exc:  # a full disk, a folder that cannot be written: the machine, not a bug
        if args.debug:
            raise
        return _error(_os_error_line(exc))
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: no traceback; training has said what it saved
        if args.debug:
            raise
        # The status a shell gives a process ended by signal N, 128 + N, as `timeout` and job
        # schedulers read it: 130 for Ctrl-C, 143 for a SIGTERM that training stopped at.
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        said = "" if signum == signal.SIGINT else f" by {signum.name}"
        print(f"{PROG}: interrupted{said}", file=sys.stderr)
        return 128 + signum


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Print a warning as ``minivae: warning: message``: the user of a command needs what it
    says, not the line of library code that raised it."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _error(message):
    """Print ``minivae: error: message`` and return the exit status of a user error, 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


# ----- studying gradients: `minivae gradcheck` and `minivae graph` (see minivae.gradcheck_cases,
# minivae.graph and docs/gradients.md) ---------------------------------------------------------

def _add_gradient_commands(command):
    """Register the ``gradcheck`` and ``graph`` subcommands through ``command`` (see build_parser)."""
    p = command("gradcheck", cmd_gradcheck, "finite-difference checks of every op (or a model), as tables")
    p.add_argument("--op", action="append", metavar="NAME",
                   help="check only this op (class or function name, e.g. softplus; repeatable, "
                        "each op checked once)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="float64: the exact check; float32: float32 backward vs float64 differences, "
                        "with the error rounding alone would leave")
    p.add_argument("--model", metavar="NAME", choices=list(MODELS),
                   help="check a small instance of this model's loss w.r.t. every parameter "
                        "(only the model unless --op is given too); one of " + ", ".join(MODELS))
    p = command("graph", cmd_graph, "the computation graph of one loss evaluation, as Graphviz DOT (+ SVG)")
    p.add_argument("run", nargs="?", type=nonempty_path,
                   help="a run folder (the model it selected with --keep-best, else its checkpoint's); or "
                        "give --model")
    p.add_argument("--model", metavar="NAME", choices=list(MODELS),
                   help="a freshly initialized model with the train defaults; one of " + ", ".join(MODELS))
    p.add_argument("--grad", action="store_true", help="label every node with its gradient norm")
    _add_last_option(p)
    p.add_argument("--out", type=nonempty_path,
                   help="output file: .dot (an .svg is written next to it when Graphviz is "
                        "installed) or .svg; default RUN/graph.dot (with --last on a run trained with "
                        "--keep-best, RUN/graph_last.dot), or NAME_graph.dot")
    # A random batch bigger than the test set would only exhaust the memory.
    p.add_argument("--batch-size", type=test_images, default=16, help="images in the batch")
    p.add_argument("--data", choices=("auto", "mnist", "random"), default="auto",
                   help="the batch: the first test images of a cached MNIST, or random binary "
                        "images (auto: MNIST when cached)")
    p.add_argument("--seed", type=philox_seed, default=0,
                   help="seed of the noise (a training run's first-step noise with this seed) and of random data")


def cmd_gradcheck(args):
    """Print per-op (and per-model) tables of analytic vs numeric gradient errors; exit 1 on a failure."""
    from .gradcheck_cases import CASES, criteria, find_op, format_table, public_name, report_model, report_op

    try:
        # dict.fromkeys keeps the first of repeated names (softplus and Softplus are one op).
        named = list(dict.fromkeys(find_op(name) for name in args.op or ()))
        ops = named if args.op else ([] if args.model else list(CASES))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    missing = [op.__name__ for op in ops if op not in CASES]
    if missing:
        raise UsageError(f"--op {missing[0]}: this op has no gradcheck case")
    print(criteria(args.dtype))
    failed, total = [], 0
    for op in ops:
        rows = report_op(op, args.dtype)
        total += len(rows)
        failed += [f"{op.__name__} / {case} / input {label}" for case, label, r in rows if not r["passed"]]
        name = public_name(op)
        print("\n" + format_table(f"{op.__name__}" + (f" (F.{name})" if name else "") +
                                  f": {len(CASES[op])} case{'s' if len(CASES[op]) != 1 else ''}, {args.dtype}", rows, args.dtype))
    if args.model:
        rows = report_model(args.model, args.dtype)
        total += len(rows)
        failed += [f"model {args.model} / {label}" for _, label, r in rows if not r["passed"]]
        print("\n" + format_table(f"model {args.model}: the loss w.r.t. every parameter, {args.dtype}",
                                  rows, args.dtype))
    print(f"\n{total - len(failed)} of {total} checks passed" + (": FAILED " + "; ".join(failed) if failed else ""))
    return 1 if failed else 0


def _graph_batch(args, x_dim):
    """The batch of ``minivae graph``: cached MNIST test images, or seeded random binary images."""
    if args.data != "random":
        from .data import binarize_eval, load_mnist
        from .data.mnist import MNISTUnavailableError

        try:
            x = binarize_eval(load_mnist(sources=("cache",), verbose=False).x_test, "test")
            if x.shape[1] == x_dim:
                return x[: args.batch_size], "MNIST test images"
        except MNISTUnavailableError:
            if args.data == "mnist":
                raise UsageError("--data mnist: no cached MNIST (run `minivae train` once, or use "
                                 "--data random)") from None
    rng = np.random.default_rng(args.seed)
    return (rng.uniform(size=(args.batch_size, x_dim)) < 0.5).astype(np.float32), "random binary images"


def _write_graph(args, run_id, path, text):
    """Write ``text`` (DOT or SVG) of ``minivae graph`` to ``path`` and print its name: a graph
    of the run of identity ``run_id`` in the folder ``args.run`` only while the folder holds that
    run (``writing_for_run``); a graph of ``--model`` belongs to no run."""
    if args.run is None:
        atomic_write_text(path, text)
    else:
        with writing_for_run(args.run, run_id, "graph", path, drawn=True):
            atomic_write_text(path, text)
    print(path)


def cmd_graph(args):
    """Write the graph of one loss evaluation as DOT (and SVG when Graphviz is installed)."""
    from .graph import model_loss_graph, render_svg, svg_available
    from .random import Generator

    if (args.run is None) == (args.model is None):
        raise UsageError("graph: give a run folder or --model NAME (one of the two)")
    if args.last and args.run is None:
        raise UsageError(f"--last: --model {args.model} is a freshly initialized model, which has no "
                         "checkpoints; give --last with a run folder only")
    run_id = None  # the identity of the run drawn (``_write_graph``); a --model belongs to none
    if args.run is not None:
        config, model, meta, _ = _load_run(args.run, args.last)
        run_id = meta.get("run_id")
        source = f"run {args.run}"
        default_out = Path(args.run) / model_file_name("graph.dot", last=names_last(config, args.last))
    else:
        try:
            model = build_model(args.model, **TrainConfig(model=args.model).model_kwargs())
        except ValueError as exc:  # e.g. m1m2, which needs a trained M1: only from a run folder
            raise UsageError(f"graph --model {args.model}: {exc}; graph builds a model with the train "
                             "defaults only (it takes no --set): give a run folder of this model "
                             "instead, `minivae graph RUN`") from None
        source, default_out = f"model {args.model} (initial weights)", Path(f"{args.model}_graph.dot")
    if args.batch_size == 1 and has_batch_norm(model):  # the graph is of a training step's loss
        raise UsageError(f"--batch-size 1: {source} has batch normalization, which cannot train on one "
                         "image; give --batch-size 2 or more")
    if args.out and Path(args.out).suffix == ".svg" and not svg_available():
        raise UsageError(f"--out {args.out}: an SVG needs Graphviz's `dot` program, which is not installed; "
                         "give a .dot file instead")
    out = _claim_out(args, default_out, GRAPH_FILE, "the graph file")
    x, what = _graph_batch(args, model.x_dim)
    title = f"{source}: loss on {len(x)} {what}" + (", |grad| = norm of d loss / d node" if args.grad else "")
    # The noise of a training run's first step with this seed: a Generator, so that each draw of
    # the loss (a and z of ADGM, each layer of a ladder) gets its own numbers, as in training.
    noise = Generator(seed=args.seed, stream=streams.TRAIN_NOISE)
    _, dot = model_loss_graph(model, x, noise, grad=args.grad, title=title)
    if out.suffix == ".svg":
        _write_graph(args, run_id, out, render_svg(dot))
        return 0
    _write_graph(args, run_id, out, dot)
    if svg_available():
        _write_graph(args, run_id, out.with_suffix(".svg"), render_svg(dot))
    else:
        print(f"{PROG}: note: no SVG written: an SVG needs Graphviz's `dot` program "
              f"(apt-get install graphviz; then `dot -Tsvg {out} -o {out.with_suffix('.svg')}`)", file=sys.stderr)
    return 0
