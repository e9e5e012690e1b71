"""The GPU trainer's graph mode: the rest of a run's steps as replays of one captured CUDA graph.

``Trainer`` (minivae.train) runs the first step of a GPU run eagerly, from Python: it compiles the
kernels, builds the optimizer's flat buffers and counts the step's noise draws. Then
``GraphSteps`` takes over: it computes the scalars of the steps to the end of the epoch on the
host, with the very code of the eager step (``Trainer.learning_rate``, the optimizer's
``update_scalars``, ``Trainer.kl_weight_of_step``), into a ``StepSchedule`` in device memory, and
captures one step that reads them (``minivae.gpu.graph``): the engine's forward and backward, the
gradient clipping of the run's settings, the optimizer, and the sums of the step's statistics, all
on the device. Each later step copies its batch into the input buffer and replays the graph. So N
replays give the parameters of N eager steps bit for bit.

Two graphs are captured, one whose optimizer clears its moments of subnormals and one that does
not (the optimizer does it every ``flush_every`` steps), and both again at the start of every
epoch, so that a model's per-epoch settings (``set_epoch``) are those of the epoch; each capture
reads a schedule of its epoch's steps. (One schedule of all the run's steps, made once, would be 8.2
million rows for the IWAE paper's 3,280 epochs of batches of 20, at about 2.6 s and 250 MB of
host time and memory per million rows on a 2-core machine, at the start of every training.)

Nothing is read back per step. The statistics are summed on the device and read when the
progress bar or the epoch's metrics need them. So are the losses, in a sum of their own that
stays NaN or infinite once a step's loss was: it is read at the same times and before every
checkpoint, so a step that produced NaN or Inf never reaches a saved checkpoint.
"""
from __future__ import annotations

import math

from . import streams
from .autograd import tensor
from .gpu.graph import COLUMNS, CapturedStep, StepNoise, StepSchedule


class GraphSteps:
    """Graph mode for the steps ``first_step`` ... the last of ``trainer``'s run (see the module
    docstring). ``draws`` is the number of noise draws a step makes, ``keys`` the names of its
    statistics (both as the eager first step found them)."""

    def __init__(self, trainer, first_step, draws, keys):
        import cupy as cp  # graph mode exists on the GPU only

        self.cp, self.trainer = cp, trainer
        self.model, self.optimizer = trainer.model, trainer.optimizer
        self.first_step, self.draws = int(first_step), int(draws)
        self.noise_start = trainer.noise.offset  # the generator's offset at first_step
        self.flush_every = self.optimizer.flush_every
        self.schedule = self.noise = None  # those of the steps a capture replays (``capture``)
        loader = trainer.loader
        self.dtype = next(iter(self.model.parameters())).dtype  # the KL weight's and the sums'
        self.x = cp.zeros((loader.batch_size, loader.x.shape[1]), dtype=loader.x.dtype)
        self.labelled = None
        if trainer.labelled is not None:
            xl, yl = trainer.labelled(0)
            self.labelled = (cp.zeros_like(xl), cp.zeros_like(yl))
        self.keys = list(keys)
        self.sums = cp.zeros(len(self.keys), dtype=self.dtype)  # the statistics, in the order of keys
        # The images of each replayed step, (unlabelled, labelled): every replay has the batches
        # of the input buffers' shapes, so the host weighs the summed batch means by these.
        self.batch_sizes = (len(self.x), 0 if self.labelled is None else len(self.labelled[0]))
        self.steps_summed = 0  # replays since the last clear_sums
        self.loss_sum = cp.zeros((), dtype=self.dtype)  # NaN or infinite once a loss was
        self.graphs = {}

    def _row(self, t):
        """The scalars of step ``t`` (0-based, over the whole run), in the order of ``COLUMNS``."""
        trainer = self.trainer
        scalars = self.optimizer.update_scalars(t + 1, trainer.learning_rate(t))
        decay = 1.0 if scalars["decay"] is None else scalars["decay"]
        row = dict(eps_s=scalars["eps_s"], neg_step=scalars["neg_step"], decay=decay,
                   kl_weight=trainer.kl_weight_of_step(t))
        return [row[c] for c in COLUMNS]

    # ----- the captured step ----------------------------------------------------------------------
    def _step(self, flush):
        """One training step on the device, reading everything that changes from memory."""
        cp = self.cp
        self.schedule.advance()
        self.noise.reset()
        extra = {}
        if self.labelled is not None:
            extra["labelled"] = (tensor(self.labelled[0]), self.labelled[1])
        loss, stats = self.model.loss(tensor(self.x), self.noise, beta=self.schedule.kl_weight(self.dtype),
                                      **extra)
        self.model.zero_grad()
        loss.backward()
        self.trainer.clip_gradients()
        self.optimizer.step_scalars = self.schedule.optimizer_scalars  # the update reads them from memory
        try:
            self.optimizer.step(flush=flush)
        finally:
            self.optimizer.step_scalars = None
        if self.keys:
            cp.add(self.sums, cp.stack([stats[k] for k in self.keys]), out=self.sums)
        cp.add(self.loss_sum, loss.data, out=self.loss_sum)

    def _schedule_from(self, t):
        """Make the schedule and the noise of the steps from ``t`` to the end of its epoch (or of
        the run): the steps that a graph captured before step ``t`` replays."""
        per_epoch = len(self.trainer.loader)
        steps = range(t, min((t // per_epoch + 1) * per_epoch, self.trainer.total_steps))
        self.schedule = StepSchedule([self._row(s) for s in steps],
                                     [self.noise_start + (s - self.first_step) * self.draws for s in steps])
        self.noise = StepNoise(self.trainer.noise.seed, streams.TRAIN_NOISE, self.schedule.offset)

    def capture(self, t):
        """Capture the step with and without the flush, to run the steps from ``t`` to the end of
        its epoch (at the start of each epoch, and after the eager first step)."""
        self._schedule_from(t)
        counts = [state.get("step") for state in self.optimizer.state]
        try:
            self.graphs = {flush: CapturedStep(lambda flush=flush: self._step(flush)) for flush in (False, True)}
        finally:  # the captures ran the Python side of two steps that did not happen
            for state, count in zip(self.optimizer.state, counts):
                if count is not None:
                    state["step"] = count
            self.model.zero_grad()

    def takes(self, xb, t):
        """Whether the graph can run step ``t`` on batch ``xb``: whether its batches have the
        shapes of the input buffers. A shorter last batch of an epoch, or of a pass over the
        labelled images, runs eagerly instead, followed by ``skip_step``."""
        if xb.shape != self.x.shape:
            return False
        return self.labelled is None or self.trainer.labelled(t)[0].shape == self.labelled[0].shape

    def step(self, xb, t):
        """Run step ``t`` on batch ``xb``: copy it into the input buffer, replay the graph."""
        cp = self.cp
        cp.copyto(self.x, xb)
        if self.labelled is not None:
            xl, yl = self.trainer.labelled(t)
            cp.copyto(self.labelled[0], xl)
            cp.copyto(self.labelled[1], yl)
        self.graphs[bool(self.flush_every) and (t + 1) % self.flush_every == 0].replay()
        self.steps_summed += 1

    def skip_step(self):
        """Pass over the schedule's row of a step that ran eagerly."""
        self.schedule.advance()

    # ----- what the host reads ---------------------------------------------------------------------
    def read_sums(self):
        """The statistics summed since the last ``clear_sums``: the sums of the batch means of
        ``steps_summed`` steps on batches of ``batch_sizes`` (one read from the device)."""
        return dict(zip(self.keys, self.cp.asnumpy(self.sums).tolist()))

    def clear_sums(self):
        """Start new sums (after the host has read them)."""
        self.sums.fill(0)
        self.loss_sum.fill(0)
        self.steps_summed = 0

    def has_diverged(self):
        """Whether a step's loss since the last ``clear_sums`` was NaN or infinite (one read from
        the device: the sum of the losses)."""
        return not math.isfinite(float(self.cp.asnumpy(self.loss_sum)))

    def sync_host(self, steps_done):
        """Record on the host what the device did, before a checkpoint: the optimizer's step
        count and the noise generator's offset after ``steps_done`` steps of the run."""
        self.optimizer.set_steps(steps_done)
        self.trainer.noise.load_state_dict({
            "seed": self.trainer.noise.seed, "stream": self.trainer.noise.stream,
            "offset": self.noise_start + (steps_done - self.first_step) * self.draws})
