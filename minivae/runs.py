"""The run folder: its settings, its files, and the rules that keep a run from being lost.

A run lives in one folder::

    config.json      the settings (a ``TrainConfig``), written when training starts
    metrics.jsonl    one JSON line per epoch (and per traced step, with ``--trace-every``)
    checkpoint.npz   model, optimizer, noise generator and loop position (``minivae.checkpoint``)
    best.npz         with ``--keep-best``: the model of the epoch best on the validation split,
                     which ``minivae eval``, ``cluster``, ``sample``, ``plot`` and ``graph`` use
                     unless given ``--last`` (``read_run_model``)
    results.json     the test numbers, written at the end
    eval_k*.json     the results of ``minivae eval`` (``eval_results_path``)
    clusters_*.json  the results of ``minivae cluster`` (``cluster_results_path``)
    *.png, graph*    the pictures of ``minivae sample``, ``plot`` and ``graph`` (``PICTURES``)

The results and pictures of the model of the last checkpoint (``--last``) of a run trained with
``keep_best`` are named ``..._last`` (``eval_k1000_last.json``, ``samples_last.png``,
``graph_last.dot``: ``model_file_name``), so that they never replace those of the model it selected.

Rules:

* training never starts over a folder that holds a run, unless told to continue it (``resume``)
  or to start again (``overwrite``, which first removes the files a run writes);
* a cut-off last line of ``metrics.jsonl`` (a full disk, a kill while appending) is dropped on
  read, so it never blocks a resume or a plot;
* JSON files are written atomically (a temporary file moved into place), and a failed write
  raises ``RunWriteError``, one line naming the file and the reason;
* leftover ``checkpoint.npz.*.tmp`` files of an interrupted save are removed at the next start;
* one process at a time trains in a folder: ``claim_run_dir`` holds an exclusive lock on it
  (``flock`` on the folder itself, so no lock file is left behind; released when the process
  ends, however it ends), and a second one is refused;
* ``minivae eval``, ``cluster``, ``sample``, ``plot`` and ``graph`` take no lock, so that a run
  can be scored and drawn while it trains on (a score records the position of the model
  scored), but write their results and pictures only while the folder holds the run they read:
  each run has an identity (``run_id``, kept by a resume, new when it starts again), checked
  before and after each write (``writing_for_run``).

Errors about a run folder are ``RunFolderError`` (a ``ValueError``): one line naming the folder and
what would be valid.
"""
import contextlib
import dataclasses
import errno
import itertools
import json
import os
import secrets
import warnings
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows has no flock: there, run folders are not locked
    fcntl = None

from . import checkpoint
from .data import num_batches
from .files import atomic_write_text
from .models import MODELS, build_model
from .models.settings import COMMON, INTERNAL, model_settings
from .nn import StateDictError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
METRICS = "metrics.jsonl"
RESULTS = "results.json"


def model_file_name(name, last=False):
    """The name in the run folder of the result or picture ``name`` (``STEM.SUFFIX``) of a run's
    model: ``name``, or with ``last``, for the model of the last checkpoint of a run that selected
    another (``keep_best``), ``STEM_last.SUFFIX``, so that neither replaces the other."""
    name = Path(name)
    return f"{name.stem}_last{name.suffix}" if last else name.name


def names_last(config, last):
    """Whether the results and pictures of the model that a command given ``last`` (--last) reads
    of the run of ``config`` take ``_last`` names (``model_file_name``): only when that model is
    not the one the run selected, which only a run trained with ``keep_best`` has."""
    return bool(last and config.keep_best)


#: The pictures of a run's model that ``minivae sample``, ``plot`` and ``graph`` draw into its folder,
#: without --last (``model_file_name``).
MODEL_PICTURES = ("samples.png", "reconstructions.png", "latent_pca.png", "latent_tsne.png",
                  "latent_umap.png", "traversal.png", "kl_per_dim.png", "graph.dot", "graph.svg")
#: The pictures ``minivae plot`` draws of a run's metrics.jsonl, the same whichever model it reads.
CURVES = ("curves.png", "grad_norms.png")
#: The pictures ``minivae plot``, ``sample`` and ``graph`` draw into a run folder.
PICTURES = MODEL_PICTURES + tuple(model_file_name(name, last=True) for name in MODEL_PICTURES) + CURVES
#: The files of a run, by name and by pattern; ``overwrite`` removes these and nothing else.
RUN_FILES = (CONFIG, CHECKPOINT, BEST, METRICS, RESULTS)
RUN_FILE_PATTERNS = ("eval_k*.json", "clusters_*.json") + PICTURES
#: The temporary files of an interrupted atomic write of any of those files (``checkpoint.save``,
#: ``write_json``, the pictures of ``minivae.viz`` and ``minivae graph`` name them
#: ``<file>.<random>.tmp``).
STRAY_PATTERNS = tuple(f"{name}.*.tmp" for name in RUN_FILES + RUN_FILE_PATTERNS)


class RunFolderError(ValueError):
    """A run folder cannot be used as asked; the message names the folder and what would be valid."""


class RunExistsError(RunFolderError):
    """Training was asked to start in a folder that already holds a run."""


class NotARunError(RunFolderError):
    """A folder that should hold a run (a checkpoint) does not."""


class ResumeMismatchError(RunFolderError):
    """``resume`` with settings that differ from those of the run's checkpoint."""


class RunBusyError(RunFolderError):
    """Another process is training in the run folder."""


class RunWriteError(RunFolderError):
    """A file of a run folder could not be written (a full disk, a read-only folder, ...)."""


class RunReplacedError(RunFolderError):
    """A run folder no longer holds the run a command read from it (started again, or removed)."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run (saved as ``config.json`` and inside each checkpoint)."""
    model: str = "vae"
    epochs: int = 150
    batch_size: int = 100
    lr: float = 1e-3
    # "cosine" (down to lr_min after the last step), "stages" (the IWAE paper's: 3^i epochs at
    # lr * 10^(-i/7), i = 0, 1, ...; its 8 stages are 3280 epochs), "step" (lr * lr_gamma every
    # lr_step epochs, as the auxiliary models' paper anneals it) or "constant"
    lr_schedule: str = "cosine"
    lr_min: float = 1e-4
    lr_step: int = 200  # the epochs between two decays of the "step" schedule
    lr_gamma: float = 0.75  # the factor of each decay of the "step" schedule
    # "adam" or "rmsprop" (torch.optim.RMSprop's alpha 0.99 and eps 1e-8, with ``momentum``)
    optimizer: str = "adam"
    momentum: float = 0.0  # RMSprop's (0: none); Adam's first moment is its own momentum
    adam_eps: float = 1e-8  # Adam's epsilon (the IWAE paper's 1e-4 shortens the steps of small gradients)
    # Gradient clipping before each update (0: none): the joint norm of all gradients to at most
    # clip_norm, then every entry to [-clip_value, clip_value], as the Ladder VAE authors' code does.
    clip_norm: float = 0.0
    clip_value: float = 0.0
    # The coupled L2 term: weight_decay * w is added to each parameter's gradient (0: none). With
    # the loss a mean over images, 1 / (training images) is a N(0, 1) prior on every parameter.
    weight_decay: float = 0.0
    z_dim: int = 50
    hidden: tuple = (512, 256)
    activation: str = "relu"
    beta: float = 1.0
    # Linear KL warm-up over ``warmup`` epochs, or optimizer steps (0: none): the KL weight of epoch
    # (or step) u = 0, 1, ... is beta * min(1, warmup_start + u / warmup). A warmup_start of None
    # (the default, and that of a config saved before it existed) is 1 / warmup: beta / warmup in
    # the first. warmup_unit "epoch" counts epochs, "step" optimizer steps over the whole run.
    warmup: int = 10
    warmup_start: float | None = None
    warmup_unit: str = "epoch"
    mc_samples: int = 1
    iw_k: int = 1
    seed: int = 0
    out: str = "runs/vae"
    device: str = "cpu"
    eval_k: int = 1000  # importance samples for the test log-likelihood at the end (0: skip)
    n_labelled: int = 100  # labels a semi-supervised model learns from (balanced over classes)
    # The labelled images of each step of a semi-supervised model, next to batch_size unlabelled
    # ones, at most n_labelled. None (not given, as in configs saved before it existed): as many as
    # batch_size, or all n_labelled when fewer (``train.labelled_batch_size``).
    labelled_batch_size: int | None = None
    model_options: dict = dataclasses.field(default_factory=dict)  # model-specific settings
    # The models of the runs that model options name (M1+M2's m1) as {option: {"model": name,
    # "kwargs": constructor arguments}}, recorded when the run starts: the run's own checkpoint
    # holds their weights, so with these it is rebuilt without those folders. Empty for runs
    # saved before it existed (rebuilt from the folders, which must then still hold them).
    run_models: dict = dataclasses.field(default_factory=dict)
    trace_every: int = 0  # log gradient norms and update ratios every N steps (0: off)
    eager: bool = False  # on the GPU: every step from Python, not replays of a captured CUDA graph
    # The generator of the training data's order and bits: "philox" (minivae.data, the same on
    # the CPU and the GPU). A config saved before it existed reads "pcg64": such a run was
    # trained on other batches, so it can be evaluated but not resumed.
    data_rng: str = "philox"
    # Model selection by the validation split: the final evaluation scores the model of the epoch
    # best on it (best.npz), not that of the last epoch (checkpoint.npz).
    keep_best: bool = False
    # The statistics a batch normalization scores with (evaluation mode): "running", the running
    # averages of the training batches (PyTorch's); "pass", those of one batch of all the training
    # images, set at the end of every epoch, as the Ladder VAE authors' code collects them.
    bn_statistics: str = "running"
    # Early stopping (with keep_best): the run ends once this many epochs in a row have not beaten
    # the best on the validation split (0: it trains all its epochs). The learning rate keeps the
    # schedule of all ``epochs``: stopping leaves it where it stands.
    patience: int = 0

    #: Settings that may change when a run is resumed; any other change makes another run.
    RESUMABLE_CHANGES = ("epochs", "out", "device", "eval_k", "trace_every", "eager", "patience")

    def model_kwargs(self):
        """The keyword arguments of the model constructor (common ones, then ``model_options``).

        Raises ValueError for a model option that is a common setting (``z_dim``: the config's
        own field) or an internal one (``x_dim``, ``rng``): it would override what the config
        records, so that config.json would describe another model than the one trained.
        """
        for name in self.model_options:
            if name in COMMON:
                raise ValueError(f"model_options holds {name!r}, which is the config's own setting "
                                 f"{name} ({COMMON[name]}); set it there, not in model_options")
            if name in INTERNAL:
                raise ValueError(f"model_options holds {name!r}, which no run sets: the data gives "
                                 "the image size, and seed the initial weights")
        common = dict(z_dim=self.z_dim, hidden=tuple(self.hidden), activation=self.activation,
                      beta=self.beta, mc_samples=self.mc_samples, iw_k=self.iw_k)
        return dict(common, **self.model_options)

    def to_dict(self):
        """The JSON form of the config (what ``config.json`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """Rebuild a config from its JSON form (unknown keys are an error, so typos surface)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        for name, value in d.items():
            _check_config_type(name, value, fields[name].type)
        for name, record in d.get("run_models", {}).items():
            if not (isinstance(record, dict) and isinstance(record.get("model"), str)
                    and record["model"] in MODELS and isinstance(record.get("kwargs"), dict)):
                raise ValueError(f"run_models.{name} is {record!r}, not {{'model': a model name, "
                                 "'kwargs': a dict}")
        d = dict(d)
        d.setdefault("data_rng", "pcg64")
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)

    def _run_defining(self):
        """The settings that define the run (all but ``RESUMABLE_CHANGES``) by name, the model
        options with their defaults filled in and their run folders absolute, so that equal
        settings compare equal however they were given."""
        config = with_absolute_run_folders(self)
        defaults = {name: setting.default for name, setting in model_settings(self.model).items()}
        # run_models is a record of the run, not a setting: a resume takes it from the checkpoint.
        defining = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                    if f.name not in self.RESUMABLE_CHANGES and f.name not in ("model_options", "run_models")}
        options = dict(defaults, **config.model_options)
        defining.update({f"--set {name}": value for name, value in options.items()})
        return {name: _comparable(value) for name, value in defining.items()}

    def check_resumable(self, saved, position):
        """Raise ResumeMismatchError unless this config continues the run of ``saved`` (a
        TrainConfig), checkpointed at ``position`` = (epochs done, batches done of the next)."""
        epoch, batch = position
        begun = epoch + (batch > 0)
        if self.epochs < begun:
            done = f"{epoch} epochs" + (f" and {batch} batches of the next" if batch else "")
            raise ResumeMismatchError(f"cannot resume {self.out} with --epochs {self.epochs}: it has done "
                                      f"{done}; give --epochs {begun} or more")
        if saved.data_rng != self.data_rng:
            raise ResumeMismatchError(
                f"cannot resume {self.out}: it was trained on batches drawn by {saved.data_rng!r}, and "
                f"this minivae draws them with {self.data_rng!r}, so the run could not continue as it "
                "began; evaluate it as it is (minivae eval), or start again with --overwrite")
        before, after = saved._run_defining(), self._run_defining()
        names = list(dict.fromkeys([*before, *after]))  # another model has other --set keys
        mismatched = [name for name in names if before.get(name) != after.get(name)]
        if mismatched:
            changes = ", ".join(f"{name}: {before.get(name)!r} -> {after.get(name)!r}" for name in mismatched)
            raise ResumeMismatchError(
                f"cannot resume {self.out} with other settings ({changes}); only "
                f"{', '.join(resumable_options())} may change, or start again with --overwrite")


def _comparable(value):
    """``value`` with its lists made tuples, at any depth, for comparing settings: JSON (a
    checkpoint's config) and ``--set`` give a sequence as a list, TrainConfig and the models'
    defaults as a tuple, and ``hidden=[512, 256]`` is the same setting as ``(512, 256)``."""
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(item) for item in value)
    return value


def resumable_options():
    """The command-line options of ``TrainConfig.RESUMABLE_CHANGES`` (``--eval-k`` for eval_k),
    but ``--out``, which names the run rather than changing it."""
    return [f"--{name.replace('_', '-')}" for name in TrainConfig.RESUMABLE_CHANGES if name != "out"]


#: The JSON values each type of a TrainConfig field is read from (a float may be written 1; a
#: setting that may be not given, ``int | None`` or ``float | None``, null).
_JSON_TYPES = {bool: (bool,), int: (int,), int | None: (int, type(None)), float: (int, float),
               float | None: (int, float, type(None)), str: (str,), tuple: (list, tuple), dict: (dict,)}


def _check_config_type(name, value, kind):
    """Raise ValueError naming the key when a config value read from JSON is not of the field's
    type (``hidden`` a list of integers, ``warmup_start`` a number or null)."""
    is_bool = isinstance(value, bool)
    ok = isinstance(value, _JSON_TYPES[kind]) and (kind is bool or not is_bool)
    if ok and kind is tuple:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        expected = "a list of integers" if kind is tuple else f"of type {getattr(kind, '__name__', kind)}"
        raise ValueError(f"{name} is {value!r}, not {expected}")


# ----- the model of a run ------------------------------------------------------------------------

def run_folder_options(config):
    """The options of ``config`` that name other run folders (those its model class lists in
    ``run_options``, e.g. M1+M2's ``m1``), as a dict name -> folder."""
    # MODELS holds classes and one factory function (iwae), which has no run options.
    names = getattr(MODELS.get(config.model), "run_options", ())
    return {name: config.model_options[name] for name in names
            if isinstance(config.model_options.get(name), (str, os.PathLike))}


def with_absolute_run_folders(config):
    """``config`` with the run folders of its options made absolute, so that the run can be
    rebuilt from any current folder (a relative one read from a config is taken as relative to
    the current folder, as runs saved with one were)."""
    folders = {name: str(Path(folder).resolve()) for name, folder in run_folder_options(config).items()}
    return dataclasses.replace(config, model_options=dict(config.model_options, **folders))


def build_run_model(config):
    """The (untrained) model that ``config`` describes.

    Options that name other run folders (``run_folder_options``) are replaced by models: built
    from ``config.run_models`` when recorded there (untrained: the run's own checkpoint holds
    their weights), else (a new run) the trained models those runs hold: the model each selected
    (``read_run_model``), that of the epoch best on the validation split for a run trained with
    ``keep_best``.
    """
    kwargs = config.model_kwargs()
    for name, folder in run_folder_options(config).items():
        recorded = config.run_models.get(name)
        if recorded is not None:
            kwargs[name] = build_model(recorded["model"], **recorded["kwargs"])
        else:
            kwargs[name] = read_run_model(folder, offer_last=False)[1]
    return build_model(config.model, **kwargs)


def with_run_models(config):
    """``config`` with ``run_models`` recorded from the run folders its options name (their
    configs), for a run that starts: see ``TrainConfig.run_models``."""
    recorded = {}
    for name, folder in run_folder_options(config).items():
        other = read_checkpoint_document(folder)[1]
        recorded[name] = {"model": other.model, "kwargs": other.model_kwargs()}
    return dataclasses.replace(config, run_models=recorded)


def read_checkpoint(run):
    """The checkpoint of the run folder ``run`` as (arrays, meta, config), its document checked.

    Raises NotARunError naming the folder when it holds no checkpoint, and CheckpointError, one
    line naming the file and the problem, when the file or its document (a dict holding a valid
    ``config``) is damaged.
    """
    path, (arrays, meta) = _read_run_file(run, CHECKPOINT, checkpoint.load, _no_checkpoint)
    return arrays, meta, _checked_config(path, meta)


def read_checkpoint_document(run):
    """(meta, config) of the checkpoint of the run folder ``run``, as ``read_checkpoint`` gives
    them (and refuses them), without reading its arrays."""
    path, meta = _read_run_file(run, CHECKPOINT, checkpoint.load_document, _no_checkpoint)
    return meta, _checked_config(path, meta)


def _read_run_file(run, name, read, missing):
    """(path, ``read(path)``) for the checkpoint file ``path`` named ``name`` (``CHECKPOINT`` or
    ``BEST``) of the run folder ``run``, ``read`` being ``checkpoint.load`` or
    ``checkpoint.load_document``; ``missing(run)``, the error for a folder without the file, when
    it holds none, also when it is removed while it is read.

    The commands that score or draw a run take no lock, so ``train --overwrite`` may remove the
    file between the check that it is there and the end of the read, which opens the file more
    than once: the read then fails as if the file were damaged."""
    path = Path(run) / name
    if not path.is_file():
        raise missing(Path(run))
    try:
        return path, read(path)
    except checkpoint.CheckpointError:
        if path.is_file():
            raise
        raise missing(Path(run)) from None


def _checked_config(path, meta):
    """The TrainConfig that ``meta``, the document of the checkpoint ``path``, holds; CheckpointError
    naming the file when the document is no dict or holds no valid config."""
    if not isinstance(meta, dict):
        raise damaged(path, f"its document is a {type(meta).__name__}, not a dict")
    if not isinstance(meta.get("config"), dict):
        raise damaged(path, "its document holds no config")
    try:
        return TrainConfig.from_dict(meta["config"])
    except ValueError as exc:
        raise damaged(path, f"its config is invalid: {exc}") from None


def _no_checkpoint(run):
    """NotARunError for ``run``, which holds no checkpoint: what it is instead and what to give
    or do. A training stopped before its first checkpoint leaves a run that can only start again:
    ``train --out RUN`` alone would be refused for the run it holds, and ``--resume`` for the
    missing checkpoint."""
    if run.is_file():
        holder = f", here {run.parent}" if (run.parent / CHECKPOINT).is_file() else ""
        return NotARunError(f"{run} is a file, not a run folder; give the folder of a run{holder}")
    if holds_run(run):
        return NotARunError(f"{run} holds no {CHECKPOINT}: its training stopped before saving one; "
                            f"train it again with `minivae train --out {run} --overwrite` and the "
                            f"settings in its {CONFIG}")
    return NotARunError(f"{run} is not a run folder: it has no {CHECKPOINT} (train one with "
                        f"`minivae train --out {run}`)")


def _no_best(run, offer_last=True):
    """RunFolderError for ``run``, a run trained with ``keep_best`` that holds no best.npz; with
    ``offer_last``, the message offers the model of its checkpoint (``_use_last``)."""
    return RunFolderError(f"{run} holds no {BEST}, the model its training selects (--keep-best): its first "
                          f"epoch has not ended yet, or the file was removed{_use_last(run, offer_last)}")


def _use_last(run, offer_last):
    """The end of an error about the model that the run in the folder ``run`` selected: with
    ``offer_last`` (the commands that score or draw a run have --last) the way to use its last
    checkpoint's model instead; else nothing (a model built on the run can use no other)."""
    if not offer_last:
        return ""
    return f"; give --last to use the model of its last checkpoint, {Path(run) / CHECKPOINT}"


#: What a checkpoint's document holds besides the config, for a resume, and the type of each.
RESUME_STATE = {"epoch": int, "batch": int, "sums": dict, "noise": dict, "optim": dict}
#: What a checkpoint's document holds since it was recorded, and the type of each: checkpoints
#: saved before lack it and resume without its check. ``n_train``: the number of training images;
#: ``images``: the images each of the ``sums`` is over (before, the sums were of batch means);
#: ``run_id``: the identity of the run (``new_run_id``); ``piece``: how many trainings (the one
#: that started the run, then each resume) have trained it, the one that saved it included.
RECORDED_STATE = {"n_train": int, "images": dict, "run_id": str, "piece": int}
#: The validation scores by which ``keep_best`` selects an epoch, each with whether a higher one is
#: better: ``valid_error`` for a model that classifies, else ``valid_elbo``.
SELECTION_SCORES = {"valid_elbo": True, "valid_error": False}


def check_resume_state(arrays, meta, path, config, n_train=None):
    """Raise CheckpointError naming the checkpoint at ``path`` unless its document ``meta``
    holds the state a resume continues from (``RESUME_STATE``, and ``RECORDED_STATE`` of the
    right types where present), at a loop position of the run of ``config``, the config it was
    saved with (``check_position``; ``n_train``, the training images, where ``meta`` does not
    record them), and its optimizer state (the ``optim/`` arrays) is finite (training never
    saves it otherwise, so the file is damaged)."""
    for key, kind in RESUME_STATE.items():
        if type(meta.get(key)) is not kind:
            raise damaged(path, f"its document holds no {key!r} ({kind.__name__}) to resume from")
    for key, kind in RECORDED_STATE.items():
        if key in meta and type(meta[key]) is not kind:
            raise damaged(path, f"its {key!r} is {meta[key]!r}, not of type {kind.__name__}")
    check_position(meta, path, config, meta.get("n_train", n_train))
    _check_best(meta, path, config)
    for name, array in checkpoint.split_prefix(arrays, "optim/").items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise damaged(path, f"the optimizer state {name} holds NaN or infinite values")


def _check_best(meta, path, config):
    """Raise CheckpointError naming the checkpoint at ``path`` unless its document ``meta``
    records the best epoch so far as training with ``config`` saves it: with ``keep_best``, once
    an epoch is done, ``best`` = {"epoch": an epoch done, "by": a name of ``SELECTION_SCORES``,
    "score": a number}. Resumed without it, a run would select among its later epochs only."""
    if config.keep_best and meta["epoch"] > 0:
        _check_best_record(meta.get("best"), meta["epoch"], path, "its best")


def _check_best_record(best, last, path, what):
    """Raise CheckpointError naming the file at ``path`` unless ``best`` (``what`` names it in the
    message) records a best epoch as training saves it: {"epoch": 1 to ``last``, "by": a name of
    ``SELECTION_SCORES``, "score": a number}."""
    valid = (isinstance(best, dict) and type(best.get("epoch")) is int and 1 <= best["epoch"] <= last
             and isinstance(best.get("by"), str) and best["by"] in SELECTION_SCORES
             and type(best.get("score")) in (int, float))
    if not valid:
        names = " or ".join(map(repr, SELECTION_SCORES))
        raise damaged(path, f"{what} {best!r} is no record of the best epoch so far, which would be "
                            f"{{'epoch': 1 to {last}, 'by': {names}, 'score': a number}}")


def checkpoint_position(meta, path, config):
    """{"epochs": epochs done, "batch": batches done of the next epoch} of a checkpoint's
    document ``meta``: what a score of its model records. CheckpointError naming the checkpoint
    at ``path`` when the document holds no position (training always saves one), or one that
    training as ``config`` does not pass through (``_check_loop_position``)."""
    for key in ("epoch", "batch"):
        if type(meta.get(key)) is not RESUME_STATE[key]:
            raise damaged(path, f"its document holds no {key!r} (int): the position of its model")
    _check_loop_position(meta["epoch"], meta["batch"], path, config)
    return {"epochs": meta["epoch"], "batch": meta["batch"]}


def new_run_id():
    """The identity of a new run, saved in each of its checkpoints as ``run_id`` and kept by a
    resume. Random, so that a run started again in the same folder (``--overwrite``), or in a
    folder removed and made again, never has the identity of the run it replaced. A run saved
    before runs had one has none (``run_id`` absent), and keeps none when resumed: given one
    then, it would look replaced to a command that read it before."""
    return secrets.token_hex(8)


def check_same_run(run, run_id, command, picture=None):
    """Raise RunReplacedError, one line naming the folder, unless the run folder ``run`` still
    holds the run of identity ``run_id`` (``new_run_id``; None for a run saved before runs had
    one) that ``minivae command`` read: its checkpoint still records that identity. A run that
    trains on meanwhile (resumed, or not yet finished) keeps it; one started again in the
    folder, or removed, does not, and a result or a picture of the model read would be taken for
    one of the run the folder holds now. ``picture`` is the file of the picture (or graph) the
    command draws of the run, which the message names; None for the result of a score."""
    try:
        same = read_checkpoint_document(run)[0].get("run_id") == run_id
    except NotARunError:  # removed; a run started again saves its first checkpoint after an epoch
        same = False
    if not same:
        did, do, output = ("scored", "score", "the result") if picture is None else ("drawn", "draw", picture)
        raise RunReplacedError(
            f"{run} no longer holds the run that was {did}: it was trained again (or removed) "
            f"meanwhile, so {output} is not written; to {do} the run it holds now, run "
            f"`minivae {command} {run}` again once that run has saved a checkpoint")


@contextlib.contextmanager
def writing_for_run(run, run_id, command, path, drawn=False):
    """Hold the ``with`` block that writes the file ``path``, a result (or, ``drawn``, a picture)
    that ``minivae command`` made of the run of identity ``run_id`` it read from the folder
    ``run``, to the rule that keeps it out of a run trained again meanwhile; yield ``path``.

    ``check_same_run`` before the block, which then does not run, and again after it: the
    overwrite that started the new run may have removed the old run's files before the block
    wrote ``path``, which is then removed here. One written before the overwrite removed the
    checkpoint goes with the old run's files (``_remove_run_files``). A write that fails is
    checked too: the overwrite also removes the temporary files in the folder, this write's
    among them, and the error would then say only that a file is missing."""
    picture = path if drawn else None
    check_same_run(run, run_id, command, picture)
    try:
        yield path
    except (OSError, RunWriteError):
        check_same_run(run, run_id, command, picture)
        raise
    try:
        check_same_run(run, run_id, command, picture)
    except RunReplacedError:
        Path(path).unlink(missing_ok=True)
        raise


def _check_loop_position(epoch, batch, path, config, n_train=None):
    """Raise CheckpointError naming the checkpoint at ``path`` unless ``epoch`` epochs done and
    ``batch`` batches done of the next are a loop position of training as ``config``: ``epoch``
    0 to ``config.epochs``, ``batch`` 0 to the batches of an epoch of ``n_train`` images
    (without ``n_train``, at least 0), and 0 once every epoch is done."""
    if not 0 <= epoch <= config.epochs:
        raise damaged(path, f"its epoch {epoch} lies outside its run of {config.epochs} epochs; "
                            f"an epoch from 0 to {config.epochs} would be valid")
    if epoch == config.epochs and batch != 0:
        raise damaged(path, f"its batch {batch} follows the last of its run's {config.epochs} epochs, "
                            "where only batch 0 would be valid")
    batches = None if n_train is None else num_batches(n_train, config.batch_size)
    if batch < 0 or (batches is not None and batch > batches):
        valid = "at least 0" if batches is None else (f"0 to {batches}, the batches of {config.batch_size} "
                                                      f"in an epoch of {n_train} images")
        raise damaged(path, f"its batch {batch} lies outside an epoch; a batch {valid} would be valid")


def check_position(meta, path, config, n_train=None):
    """Raise CheckpointError naming the checkpoint at ``path`` unless the loop position in its
    document ``meta`` is one that training as ``config`` says passes through
    (``_check_loop_position``: all the batches of an epoch done is one, stopped after its last
    step, before its metrics); its ``sums`` numbers, and its ``images`` (where recorded) a count
    for each statistic of the sums, at least 1 once a batch is done. Training never saves
    anything else; resumed from another position, a run would skip or repeat steps without a
    word, or fail inside the loop."""
    batch = meta["batch"]
    _check_loop_position(meta["epoch"], batch, path, config, n_train)
    for name, value in meta["sums"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise damaged(path, f"its sums[{name!r}] is {value!r}, not a number")
    if "images" in meta:  # each step of the epoch so far was over at least one image
        statistics, images, least = sorted(set(meta["sums"]) - {"seconds"}), meta["images"], 1 if batch else 0
        if sorted(images) != statistics or any(type(n) is not int or n < least for n in images.values()):
            raise damaged(path, f"its images {images!r} are not a count of at least {least} for each "
                                f"statistic of its sums, {statistics}")


def damaged(path, problem):
    """CheckpointError: the checkpoint at ``path`` is damaged, for the reason ``problem``."""
    return checkpoint.CheckpointError(f"checkpoint {path} is damaged: {problem}")


def load_run(run):
    """Rebuild the model of a run folder from its checkpoint; return (config, model). The model is
    that of the checkpoint also for a run trained with ``keep_best`` (``read_run_model`` reads the
    one it selected).

    Raises NotARunError naming the folder when it (or a run its model is built on) holds no
    checkpoint, and CheckpointError naming the checkpoint when it is damaged (see
    ``read_checkpoint``) or does not fit the model its config describes.
    """
    arrays, _, config = read_checkpoint(run)
    return config, run_model(run, arrays, config)


def run_model(run, arrays, config, name=CHECKPOINT):
    """The model of the run folder ``run`` rebuilt from the ``arrays`` of its checkpoint file
    ``name`` (``CHECKPOINT`` as ``read_checkpoint`` read it, or ``BEST``) and the ``config`` of
    its checkpoint; raises as ``load_run`` does, naming that file."""
    path = Path(run) / name
    try:
        # The weights all come from the checkpoint: of the runs the model is built on, a run saved
        # before it recorded them (``run_models``) takes their settings only, as a new run records them.
        model = build_run_model(config if config.run_models else with_run_models(config))
    except RunFolderError:
        raise  # a run the model is built on is missing; the error names it
    except (ValueError, TypeError) as exc:  # the constructor's checks
        raise _misfit(path, config, str(exc)) from None
    load_model_state(model, arrays, path, config)
    return model


def read_run_model(run, last=False, offer_last=True):
    """The model of the run folder ``run`` that the commands which score or draw a run use, as
    (config, model, meta, trained): for a run trained with ``keep_best``, the model it selected
    (``read_best``, whose ``trained`` a score records of it); otherwise, or with ``last``, the
    model of its checkpoint (``trained`` None: its position, ``checkpoint_position``, is needed
    only where a score records it). ``config`` and ``meta`` are always those of the
    checkpoint: the run's settings, and its identity (``run_id``), which a command checks the
    folder still holds when it writes a result or a picture (``writing_for_run``). Raises as
    ``load_run`` and ``read_best`` do (``offer_last``: see ``read_best``).

    The model that a keep-best run selected is read from best.npz alone: its checkpoint's arrays
    (the last epoch's model and the optimizer's moments, three times the model's size) are not
    read."""
    meta, config = read_checkpoint_document(run)
    if config.keep_best and not last:
        arrays, trained = read_best(run, meta, config, offer_last)
        return config, run_model(run, arrays, config, name=BEST), meta, trained
    # The document again, with the arrays: a training may have replaced the file since.
    arrays, meta, config = read_checkpoint(run)
    return config, run_model(run, arrays, config), meta, None


def read_best(run, meta, config, offer_last=True):
    """The model that the run in the folder ``run``, trained with ``keep_best``, selected so far,
    read from its best.npz after its checkpoint (whose document ``meta`` and ``config`` are
    given), as (arrays, trained): ``trained`` is what a score of the model records of it, its
    position (``checkpoint_position``) and ``selected`` = {"epoch", "by", "score"}, as the
    results of training record the model they score.

    Readers take no lock, and training writes best.npz of an epoch before the checkpoint of that
    epoch, each atomically: best.npz of the run holds the epoch that its checkpoint records as the
    best, or a later one than the checkpoint's, ended since the checkpoint was read. Anything else
    is no model the run selects: RunFolderError naming the folder when best.npz is missing (the
    first epoch has not ended, or it was removed); CheckpointError naming the file when it is
    damaged, of another run (its ``run_id``; a run saved before runs had one has none in either
    file), or of an epoch that the run no longer selects (left by a training stopped between the
    two writes, then resumed to other scores). With ``offer_last``, each message offers the
    model of the checkpoint instead (the commands that score or draw a run have --last).
    """
    saved = Path(run) / CHECKPOINT
    done = checkpoint_position(meta, saved, config)["epochs"]
    _check_best(meta, saved, config)
    path, (arrays, document) = _read_run_file(run, BEST, checkpoint.load,
                                              lambda folder: _no_best(folder, offer_last))
    held = _checked_config(path, document)
    instead = _use_last(run, offer_last)
    if document.get("run_id") != meta.get("run_id"):
        raise checkpoint.CheckpointError(f"{path} is the model of another run than {run}: its run_id is "
                                         f"{document.get('run_id')!r}, and {saved} records "
                                         f"{meta.get('run_id')!r}{instead}")
    position = checkpoint_position(document, path, held)
    selected = {key: document.get(key) for key in ("epoch", "by", "score")}
    _check_best_record(selected, held.epochs, path, "its selection")
    best = meta.get("best")  # None before the first epoch ends: then best.npz is later anyway
    if selected["epoch"] <= done and selected["epoch"] != best["epoch"]:
        raise checkpoint.CheckpointError(
            f"{path} holds epoch {selected['epoch']}, which is neither epoch {best['epoch']}, the best by "
            f"{best['by']} that {saved} records, nor one ended after the epoch {done} it records{instead}")
    return arrays, dict(position, selected=selected)


def load_model_state(model, arrays, path, config):
    """Load the ``model/`` arrays of the checkpoint at ``path`` (of a run with ``config``) into
    ``model``; raise CheckpointError, one line naming the checkpoint, when they do not fit it or
    hold a value that is not finite (training never saves one, so the file is damaged)."""
    state = checkpoint.split_prefix(arrays, "model/")
    for name, array in state.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise damaged(path, f"the parameter {name} holds NaN or infinite values")
    try:
        model.load_state_dict(state)
    except StateDictError as exc:
        raise _misfit(path, config, "; ".join(line.strip() for line in str(exc).splitlines()[1:])) from None


def _misfit(path, config, problem):
    """CheckpointError: the checkpoint at ``path`` does not fit the model of its ``config``; a
    model built on other runs may not fit because one of those runs was trained again since."""
    folders = ", ".join(f"{name}={folder}" for name, folder in run_folder_options(config).items()
                        if name not in config.run_models)
    since = (f"; the model is built on the run {folders}, which no longer holds the model it was "
             "trained with (trained again with other settings?)") if folders else ""
    return checkpoint.CheckpointError(
        f"checkpoint {path} does not fit the model its config describes: {problem}{since}")


# ----- claiming a folder for training -------------------------------------------------------------

def holds_run(run_dir):
    """Whether ``run_dir`` holds any file of a run (config, checkpoint, metrics or results)."""
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def is_run_file(path):
    """Whether ``path`` is one of the files that make a run (``RUN_FILES``) in a folder that holds
    one: writing anything else there would destroy the run."""
    path = Path(path).resolve()
    return path.name in RUN_FILES and holds_run(path.parent)


def remove_stray_files(run_dir):
    """Delete the temporary files that an interrupted atomic write left in ``run_dir``."""
    for pattern in STRAY_PATTERNS:
        for path in Path(run_dir).glob(pattern):
            path.unlink()


def check_run_dir(run_dir, resume=False, overwrite=False):
    """Raise RunFolderError when ``run_dir`` may not be used for training as asked; change nothing.

    A folder that holds a run is refused unless ``resume`` (it must hold a checkpoint) or
    ``overwrite``.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunFolderError(f"{run_dir}: choose --resume (continue the run) or --overwrite "
                             "(start it again), not both")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a run folder; give --out a folder")
    if resume and not (run_dir / CHECKPOINT).is_file():
        way = "start it again with --overwrite" if holds_run(run_dir) else "train without --resume"
        raise NotARunError(f"cannot resume {run_dir}: it has no {CHECKPOINT}; {way}")
    if not resume and holds_run(run_dir) and not overwrite:
        raise RunExistsError(f"{run_dir} already holds a run; continue it with --resume, start "
                             "it again with --overwrite, or choose another --out")


@contextlib.contextmanager
def claim_run_dir(run_dir, resume=False, overwrite=False):
    """Make ``run_dir`` ready for training and hold it for the ``with`` block; raise
    RunFolderError when it may not be used as asked.

    The checks of ``check_run_dir``; then a new or empty folder is created and locked
    (RunBusyError when another process holds it: nothing is removed then), the checks are made
    again under the lock, with ``overwrite`` the run's files are removed, and stray temporary
    files of an interrupted save are removed in every case.
    """
    check_run_dir(run_dir, resume, overwrite)
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        folder = os.open(run_dir, os.O_RDONLY) if fcntl is not None else None
    except OSError as exc:
        raise RunWriteError(f"cannot use {run_dir} as a run folder: {exc.strerror or exc}") from None
    try:
        try:
            if folder is not None:
                fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(f"{run_dir} is being trained by another process; wait for it to end "
                               "(or stop it), or choose another --out") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
                raise RunWriteError(f"cannot lock {run_dir} for training: {exc.strerror or exc}") from None
            # A file system without locks (some network mounts): train unlocked, as on Windows.
            warnings.warn(f"{run_dir} cannot be locked on this file system ({exc.strerror}): "
                          "training unlocked, so train no other process into it meanwhile",
                          RuntimeWarning, stacklevel=3)
        # Again, now that no other training can change the folder: one may have trained a run
        # into it, start to end, after the first check (made before the folder is created, so
        # that a refused request leaves nothing behind) and before the lock.
        check_run_dir(run_dir, resume, overwrite)
        try:
            if overwrite:
                _remove_run_files(run_dir)
            remove_stray_files(run_dir)
        except OSError as exc:
            raise RunWriteError(f"cannot use {run_dir} as a run folder: {exc.strerror or exc}") from None
        yield
    finally:
        if folder is not None:
            os.close(folder)  # releases the lock


def _remove_run_files(run_dir):
    """Delete the files a run writes (``RUN_FILES``, ``RUN_FILE_PATTERNS``), if there are any.

    The scores and pictures go first, the files that make the folder a run (``holds_run``) last:
    stopped in between (Ctrl-C, a kill, a file that cannot be removed), the folder still holds a
    run, so no new run starts there without --overwrite beside the old run's scores, which would
    then read as its own. The scores and pictures go once more at the end: the commands that
    score and draw a run take no lock, and one that checked the run (``writing_for_run``) before
    its checkpoint went may have written its result or picture since; one that checks after finds
    the checkpoint gone and removes its file itself."""
    _remove_scores_and_pictures(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    _remove_scores_and_pictures(run_dir)


def _remove_scores_and_pictures(run_dir):
    """Delete the files of ``RUN_FILE_PATTERNS`` in ``run_dir``: the scores and pictures of a run."""
    for pattern in RUN_FILE_PATTERNS:
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)  # a command may remove its own result or picture meanwhile


def _run_dir_names(base):
    """``base``, then ``base-2``, ``base-3``, ...: the folders a new run named after ``base`` may take."""
    base = Path(base)
    yield base
    for n in itertools.count(2):
        yield base.with_name(f"{base.name}-{n}")


def _takes_new_run(folder):
    """Whether a new run may start in ``folder`` without --overwrite: it holds no run, and is no file."""
    return not holds_run(folder) and not (folder.exists() and not folder.is_dir())


def next_free_run_dir(base):
    """``base`` if it holds no run, else the first of ``base-2``, ``base-3``, ... that holds none.

    The default ``--out`` of ``minivae train``: training twice makes two runs.
    """
    return next(folder for folder in _run_dir_names(base) if _takes_new_run(folder))


@contextlib.contextmanager
def claim_free_run_dir(base):
    """Claim for a new run the first of ``base``, ``base-2``, ... that holds no run and that no
    other process trains in (``claim_run_dir``), and hold it for the ``with`` block; yield it.

    ``next_free_run_dir`` names the folder before the work starts (loading the data takes
    seconds), so two trainings started together name the same one; the second to claim it finds
    it taken, by the other's lock or by the other's run, and goes on to the next.
    """
    with contextlib.ExitStack() as claimed:
        for folder in _run_dir_names(base):
            if not _takes_new_run(folder):
                continue
            try:
                claimed.enter_context(claim_run_dir(folder))
            except (RunBusyError, RunExistsError):  # taken since it was named
                continue
            yield folder
            return


# ----- writing and reading the run's files --------------------------------------------------------

def _write_error(path, exc, kept=""):
    """RunWriteError for a failed write of ``path``: the short reason of the OSError ("No space
    left on device", without the chained traceback) and where the numbers are still found."""
    return RunWriteError(f"could not write {path}: {exc.strerror or exc}" + (f"; {kept}" if kept else ""))


def _replace_text(path, text, kept=""):
    """Replace the file ``path`` by ``text`` atomically (``files.atomic_write_text``); a failure
    raises RunWriteError, saying where the numbers are ``kept``."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise _write_error(path, exc, kept) from None


def write_json(path, obj, kept=""):
    """Write ``obj`` as indented JSON to ``path`` atomically; raise RunWriteError on failure.

    ``kept`` says in that error where the numbers are still to be found (e.g. "printed above").
    """
    _replace_text(Path(path), json.dumps(obj, indent=2), kept)


def save_checkpoint(run_dir, arrays, meta, name=CHECKPOINT):
    """``checkpoint.save`` into the file ``name`` of the run folder (its checkpoint, or ``BEST``);
    a failed write raises RunWriteError and leaves the previous file as it was (the save is
    atomic)."""
    path = Path(run_dir) / name
    try:
        checkpoint.save(path, arrays, meta)
    except OSError as exc:
        # Where training goes on from: best.npz is written before the epoch's checkpoint.
        saved = (Path(run_dir) / CHECKPOINT).is_file()
        kept = "the previous checkpoint is kept" if saved else f"{run_dir} has no checkpoint yet"
        raise _write_error(path, exc, kept) from None


def append_metrics(run_dir, record):
    """Append ``record`` as one line of ``metrics.jsonl`` (one write: a line and its newline)."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise _write_error(path, exc) from None


def read_metrics(run_dir):
    """The lines of ``metrics.jsonl`` in ``run_dir`` as a list of dicts ([] if the file is absent).

    A last line cut off by a crash (no newline, not valid JSON) is dropped; any other line that is
    not JSON, or is JSON but not an object (a list, a number), raises RunFolderError naming the
    file and the line.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    # Bytes that are not UTF-8 are damage too: read as U+FFFD, their line is not JSON (named below).
    text = path.read_bytes().decode("utf-8", errors="replace")
    # The last line is "" when the file ends with a newline, as every complete write does.
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # cut off while it was being written: the epoch it belonged to runs again
            raise RunFolderError(f"{path} line {number} is not JSON: {line[:60]!r}") from None
        if not isinstance(record, dict):  # every reader looks its values up by name
            raise RunFolderError(f"{path} line {number} is not a JSON object: {line[:60]!r}")
        records.append(record)
    return records


def rewrite_metrics(run_dir, keep):
    """Keep only the metrics lines for which ``keep(record)`` is true (a cut-off last line goes
    too); the file is replaced atomically."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    kept = [record for record in read_metrics(run_dir) if keep(record)]
    _replace_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def eval_results_path(run_dir, k, last=False):
    """Where ``minivae eval --k K`` writes its result: ``RUN/eval_kK.json``, with ``last``
    ``RUN/eval_kK_last.json`` (``model_file_name``)."""
    return Path(run_dir) / model_file_name(f"eval_k{int(k)}.json", last)


def cluster_results_path(run_dir, n_clusters, last=False):
    """Where ``minivae cluster --clusters C`` writes its result: ``RUN/clusters_C.json``, with
    ``last`` ``RUN/clusters_C_last.json`` (``model_file_name``)."""
    return Path(run_dir) / model_file_name(f"clusters_{int(n_clusters)}.json", last)
