"""The training loop: progress, per-epoch metrics, atomic checkpoints and exact resume.

A run lives in one folder: ``config.json`` (the settings), ``metrics.jsonl`` (one JSON line per
epoch), ``checkpoint.npz`` (model, optimizer, noise generator and loop position; see
``minivae.checkpoint``) and, at the end, ``results.json``. Everything random is a function of
the seed and a position: the batch order and binarization of epoch e depend only on
(seed, e), and the reparameterization noise on the Philox generator's offset, which the
checkpoint stores. So ``--resume`` after an interruption, even in the middle of an epoch, ends
with exactly the parameters of an uninterrupted run.

Semi-supervised models (``semi_supervised = True``: M2, M1+M2, ADGM/SDGM with labels, Ladder-M2) learn from
``n_labelled`` labels, ``balanced_labelled_subset(y_train, n_labelled, seed)``, chosen from the
training set only (the test set never takes part in training or model selection). Each step
feeds them the usual unlabelled batch of all training images plus a labelled batch; the labelled
batches are a pure function of (seed, optimizer step), so resuming stays exact. Models with a
``classify`` method get ``valid_error`` per epoch and ``test_error`` at the end.
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

from . import checkpoint, nn, optim, trace
from .analysis import latent_summary
from .autograd import tensor
from .backend import resolve_device, to_device
from .data import MinibatchLoader, balanced_labelled_subset, binarize_eval, load_mnist
from .evaluate import elbo, evaluating, log_likelihood, nll_summary
from .models import build_model
from .random import Generator

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run (saved as ``config.json`` and inside each checkpoint)."""
    model: str = "vae"
    epochs: int = 150
    batch_size: int = 100
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" (to lr_min at the last step) or "constant"
    lr_min: float = 1e-4
    z_dim: int = 50
    hidden: tuple = (512, 256)
    activation: str = "relu"
    beta: float = 1.0
    warmup: int = 10  # epochs of linear KL warm-up from 0 to beta (0: none)
    mc_samples: int = 1
    iw_k: int = 1
    seed: int = 0
    out: str = "runs/vae"
    device: str = "cpu"
    eval_k: int = 1000  # importance samples for the test log-likelihood at the end (0: skip)
    n_labelled: int = 100  # labels a semi-supervised model learns from (balanced over classes)
    model_options: dict = dataclasses.field(default_factory=dict)  # model-specific settings
    trace_every: int = 0  # log gradient norms and update ratios every N steps (0: off)

    def model_kwargs(self):
        """The keyword arguments of the model constructor (common ones, then ``model_options``)."""
        common = dict(z_dim=self.z_dim, hidden=tuple(self.hidden), activation=self.activation,
                      beta=self.beta, mc_samples=self.mc_samples, iw_k=self.iw_k)
        return dict(common, **self.model_options)

    @classmethod
    def from_dict(cls, d):
        """Rebuild a config from its JSON form (unknown keys are an error, so typos surface)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


def kl_weight(config, epoch):
    """The KL weight in ``epoch`` (0-based): beta, ramped linearly from beta/warmup over ``warmup`` epochs."""
    if config.warmup <= 0:
        return config.beta
    return config.beta * min(1.0, (epoch + 1) / config.warmup)


def learning_rate(config, step, total_steps):
    """The learning rate at optimizer step ``step``: constant, or a half cosine from lr to lr_min."""
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; use 'cosine' or 'constant'")
    progress = min(1.0, step / max(1, total_steps))
    return config.lr_min + (config.lr - config.lr_min) * 0.5 * (1 + math.cos(math.pi * progress))


@contextlib.contextmanager
def _deferred_interrupt(flag):
    """Turn Ctrl-C into a request (``flag.set()``) that the loop honours between two steps.

    A KeyboardInterrupt raised inside an optimizer step would leave half the parameters updated;
    deferring it makes every saved checkpoint a state that an uninterrupted run passes through.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, unit="batch")


def classification_error(model, x, labels, batch_size=500):
    """The fraction of the examples of ``x`` (NumPy (N, D)) whose ``model.classify`` differs from
    ``labels``: (1/N) sum_n [argmax_y q(y | x_n) != y_n], in eval mode and in batches."""
    device = next(iter(model.parameters())).device
    wrong = 0
    with evaluating(model):
        for start in range(0, len(x), batch_size):
            xb = tensor(to_device(x[start:start + batch_size], device))
            predicted = to_device(model.classify(xb), "cpu")
            wrong += int((predicted != np.asarray(labels[start:start + batch_size])).sum())
    return wrong / max(1, len(x))


class LabelledBatches:
    """The labelled minibatch of every optimizer step, a pure function of (seed, step).

    Step t takes batch t mod n of "labelled epoch" t // n (n batches per pass over the labelled
    subset): each pass reshuffles and re-binarizes the subset (``MinibatchLoader``), so the few
    labelled images are seen in ever new orders and draws without any state to checkpoint. Its
    seed is derived from the run's with ``SeedSequence``, so its streams are not those of the
    unlabelled loader.
    """

    def __init__(self, x, y, batch_size, seed):
        derived = int(np.random.SeedSequence([seed, 4]).generate_state(1)[0])
        self.loader = MinibatchLoader(x, min(batch_size, len(x)), seed=derived, y=y)
        self._epoch, self._batches = None, []

    def __call__(self, step):
        """(x_l, y_l) of optimizer step ``step`` (0-based, counted over the whole run)."""
        epoch, i = divmod(step, len(self.loader))
        if epoch != self._epoch:  # copies: the loader's buffer is overwritten by its next epoch
            self._batches = [(xb.copy(), yb.copy()) for xb, yb in self.loader.epoch(epoch)]
            self._epoch = epoch
        return self._batches[i]


class Trainer:
    """Runs one training job described by a TrainConfig (see the module docstring)."""

    def __init__(self, config, data=None, progress=True, log=print):
        self.config = config
        self.run_dir = Path(config.out)
        self.progress, self.log = progress, log
        self.device = resolve_device(config.device)
        self.data = data if data is not None else load_mnist(verbose=progress)
        nn.init.manual_seed(config.seed)
        self.model = build_model(config.model, **config.model_kwargs()).to(self.device)
        self.optimizer = optim.Adam(self.model.parameters(), lr=config.lr)
        self.noise = Generator(seed=config.seed)
        self.loader = MinibatchLoader(self.data.x_train, config.batch_size, seed=config.seed)
        self.labelled = None
        if getattr(self.model, "semi_supervised", False):
            idx = balanced_labelled_subset(self.data.y_train, config.n_labelled, seed=config.seed)
            self.labelled = LabelledBatches(self.data.x_train[idx], self.data.y_train[idx],
                                            config.batch_size, config.seed)
            self.model.set_data_sizes(len(self.data.x_train), len(idx))
        self.x_valid = binarize_eval(self.data.x_valid, "valid")
        self.epoch, self.batch, self.sums = 0, 0, {}
        self.stop_requested = threading.Event()

    @property
    def total_steps(self):
        """Optimizer steps in the whole run."""
        return self.config.epochs * len(self.loader)

    # ----- checkpoints -----------------------------------------------------------------------
    def save(self):
        """Write the checkpoint for the current position atomically."""
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        numbers = {}
        for k, v in self.optimizer.state_dict().items():
            if isinstance(v, np.ndarray):
                arrays[f"optim/{k}"] = v
            else:
                numbers[k] = v
        meta = {"config": dataclasses.asdict(self.config), "epoch": self.epoch, "batch": self.batch,
                "sums": self.sums, "noise": self.noise.state_dict(), "optim": numbers}
        checkpoint.save(self.run_dir / CHECKPOINT, arrays, meta)

    def restore(self):
        """Load the run folder's checkpoint into the model, optimizer, generator and position."""
        arrays, meta = checkpoint.load(self.run_dir / CHECKPOINT)
        saved = TrainConfig.from_dict(meta["config"])
        # Only the length of the run may change on resume; anything else would not be the same run.
        mismatched = [f.name for f in dataclasses.fields(TrainConfig)
                      if f.name not in ("epochs", "out", "device", "eval_k", "trace_every")
                      and getattr(saved, f.name) != getattr(self.config, f.name)]
        if mismatched:
            raise checkpoint.CheckpointError(
                f"--resume with settings that differ from the checkpoint's: {mismatched}")
        if saved.epochs != self.config.epochs and self.config.lr_schedule == "cosine":
            # The cosine schedule spans the whole run, so a new length bends the remaining rates.
            self.log(f"note: --epochs changed from {saved.epochs} to {self.config.epochs}; the cosine "
                     "learning-rate schedule is recomputed for the new length")
        self.model.load_state_dict(checkpoint.split_prefix(arrays, "model/"))
        state = dict(meta["optim"], **checkpoint.split_prefix(arrays, "optim/"))
        self.optimizer.load_state_dict(state)
        self.noise.load_state_dict(meta["noise"])
        self.epoch, self.batch, self.sums = meta["epoch"], meta["batch"], meta["sums"]

    def _truncate_metrics(self):
        """Drop metric lines written after the checkpoint (epoch summaries of a crash between the
        two writes, and gradient traces of steps that will run again)."""
        path = self.run_dir / METRICS
        if path.exists():
            done = self.epoch * len(self.loader) + self.batch  # optimizer steps in the checkpoint
            lines = [line for line in path.read_text().splitlines() if line.strip()
                     and _kept(json.loads(line), self.epoch, done)]
            path.write_text("".join(line + "\n" for line in lines))

    # ----- the loop --------------------------------------------------------------------------
    def _step(self, xb, beta, step):
        self.optimizer.lr = learning_rate(self.config, step, self.total_steps)
        extra = {}
        if self.labelled is not None:
            xl, yl = self.labelled(step)
            extra["labelled"] = (tensor(to_device(xl, self.device)), to_device(yl, self.device))
        loss, stats = self.model.loss(tensor(to_device(xb, self.device)), self.noise, beta=beta, **extra)
        if not math.isfinite(stats["loss"]):
            raise TrainingDiverged(
                f"the loss became {stats['loss']} at epoch {self.epoch + 1}, batch {self.batch + 1}; "
                f"stopped without saving, so {self.run_dir / CHECKPOINT} still holds the last good "
                "state. Try a smaller --lr or a KL --warmup.")
        self.model.zero_grad()
        loss.backward()
        if self.config.trace_every and step % self.config.trace_every == 0:
            record = {"step": step, "epoch": self.epoch + 1, **trace.gradient_norms(self.model)}
            before = trace.snapshot(self.model)
            self.optimizer.step()
            record.update(trace.update_ratios(before, self.model))
            with open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        else:
            self.optimizer.step()
        return stats

    def _epoch(self):
        config, epoch = self.config, self.epoch
        beta = kl_weight(config, epoch)
        if hasattr(self.model, "set_epoch"):  # per-epoch schedules of a model (e.g. a temperature)
            self.model.set_epoch(epoch)
        n_batches = len(self.loader)
        bar = _progress_bar(n_batches, f"epoch {epoch + 1}/{config.epochs}", self.progress)
        if bar is not None:
            bar.update(self.batch)
        start = time.perf_counter() - self.sums.get("seconds", 0.0)
        self.model.train()
        for i, xb in enumerate(self.loader.epoch(epoch)):
            if i < self.batch:  # resuming inside this epoch: these batches were done already
                continue
            stats = self._step(xb, beta, epoch * n_batches + i)
            for k, v in stats.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.batch = i + 1
            self.sums["seconds"] = time.perf_counter() - start
            if self.stop_requested.is_set():
                raise KeyboardInterrupt
            if bar is not None:
                bar.update(1)
                if i % 20 == 0:
                    shown = {k: f"{v / self.batch:.2f}" for k, v in self.sums.items()
                             if k in ("loss", "elbo", "kl")}
                    bar.set_postfix(shown, refresh=False)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        metrics = {"epoch": epoch + 1, "beta": beta, "lr": self.optimizer.lr}
        metrics.update({f"train_{k}": v / n_batches for k, v in self.sums.items() if k != "seconds"})
        valid, _, _ = elbo(self.model, self.x_valid)
        metrics.update(valid_elbo=float(valid.mean()), seconds=seconds,
                       images_per_second=self.loader.num_examples / seconds)
        if hasattr(self.model, "encode") and self.labelled is None:  # posterior collapse summary
            metrics.update(latent_summary(self.model, self.x_valid[:2000]))
        if hasattr(self.model, "classify"):
            metrics["valid_error"] = classification_error(self.model, self.x_valid, self.data.y_valid)
        return metrics

    def fit(self, resume=False):
        """Train to ``config.epochs`` (continuing from the checkpoint when ``resume``); return the run folder."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.restore()
            self._truncate_metrics()
            self.log(f"resumed {self.run_dir} at epoch {self.epoch + 1}, batch {self.batch}")
        (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        try:
            with _deferred_interrupt(self.stop_requested):
                while self.epoch < self.config.epochs:
                    metrics = self._epoch()
                    with open(self.run_dir / METRICS, "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                    self.epoch, self.batch, self.sums = self.epoch + 1, 0, {}
                    self.save()
                    self.log(_epoch_line(metrics))
                    if self.stop_requested.is_set():
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.save()
            self.log(f"interrupted: saved epoch {self.epoch + 1}, batch {self.batch} to "
                     f"{self.run_dir / CHECKPOINT}; continue with --resume")
            raise
        return self.run_dir

    def final_evaluation(self):
        """Test ELBO, test error (models with ``classify``) and (if eval_k > 0) the
        importance-sampled test log-likelihood; writes results.json."""
        x_test = binarize_eval(self.data.x_test, "test")
        bound, rec, kl = elbo(self.model, x_test)
        results = {"epochs": self.epoch, "test_elbo": float(bound.mean()), "test_rec": float(rec.mean()),
                   "test_kl": float(kl.mean())}
        if hasattr(self.model, "classify"):
            results["test_error"] = classification_error(self.model, x_test, self.data.y_test)
        if self.config.eval_k:
            ll = log_likelihood(self.model, x_test, k=self.config.eval_k, progress=self.progress)
            results.update(nll_summary(ll), eval_k=self.config.eval_k)
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        return results


def _kept(line, epoch, steps):
    """Whether a metrics line belongs to a run checkpointed after ``epoch`` epochs and ``steps`` steps."""
    return line["step"] < steps if "step" in line else line["epoch"] <= epoch


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


def load_run(run):
    """Rebuild the model of a run folder from its checkpoint; return (config, model).

    Raises FileNotFoundError naming the folder when it holds no checkpoint."""
    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not a run folder: {path} does not exist (train one with "
                                f"`minivae train --out {run}`)")
    arrays, meta = checkpoint.load(path)
    config = TrainConfig.from_dict(meta["config"])
    model = build_model(config.model, **config.model_kwargs())
    model.load_state_dict(checkpoint.split_prefix(arrays, "model/"))
    return config, model


def train(config, resume=False, progress=True, data=None, log=print):
    """Train a model as ``config`` says, evaluate it on the test set and return the results dict."""
    trainer = Trainer(config, data=data, progress=progress, log=log)
    trainer.fit(resume=resume)
    results = trainer.final_evaluation()
    log(json.dumps(results))
    return results
