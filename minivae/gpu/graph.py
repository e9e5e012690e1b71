"""Graph mode: a training step captured once as a CUDA graph and replayed at every step.

A CUDA graph records the kernels a stream runs, with their arguments, and replays all of them with
one launch: Python, the engine and CuPy then cost nothing per step. But a replay passes the very
arguments that were captured, so whatever a step changes from one step to the next must be read
from device memory. In a training step that is:

* the step's scalars: the optimizer's ``eps_s``, ``neg_step`` and ``decay`` (Adam's hold the bias
  corrections and the learning-rate schedule, RMSprop's the schedule) and the KL weight of
  warm-up. ``StepSchedule`` holds them for the steps a captured graph replays (those of an epoch)
  as a table in device memory, computed on the host by the code the eager trainer uses, so both
  get the same numbers; the step's first kernel (``mv_step_advance``, in kernels/step.cu) copies
  the step's row to ``current`` and advances the step counter;
* the step's noise: ``StepNoise`` hands out draw ``j`` of the step as ``Noise(seed, j, stream,
  offset_from=schedule.offset)``: the kernels add the step's first offset, read from memory, so
  the draws of step t are those the eager trainer's generator gives step t;
* the batch: an input buffer of fixed address that the trainer fills before each replay.

``CapturedStep(fn)`` records ``fn()`` on a stream of its own, with the memory of the capture from
a pool of its own that lives as long as the graph: an array freed during the capture is reused
only by later work of the same capture, in stream order, never by work outside the graph.
``replay()`` launches the graph on the current stream, after the work already queued there (such
as the copy of the next batch into the input buffer).

Nothing here runs without CuPy; the trainer (``minivae.train``) decides when to use it.
"""
from __future__ import annotations

import re

import numpy as np

from ..backend import cupy_module
from ..random import Generator, Noise

__all__ = ["COLUMNS", "StepSchedule", "StepNoise", "CapturedStep"]

#: The per-step scalars of a table row, in order: the optimizer's eps_s, neg_step and decay (the
#: three that the Adam kernel, kernels/adam.cu, and RMSprop's update read from memory), then the
#: KL weight.
COLUMNS = ("eps_s", "neg_step", "decay", "kl_weight")


class StepSchedule:
    """The per-step scalars and noise offsets of ``len(rows)`` consecutive training steps, in
    device memory, and the counter that selects the current step's.

    ``rows``: float64 (steps, len(COLUMNS)); ``offsets``: the noise offset of each step's first
    draw. ``advance()`` (the first launch of a step) copies the next row to ``current`` and the
    next offset to ``offset``; the trainer never advances past the last row.
    """

    def __init__(self, rows, offsets):
        cp = cupy_module()
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        offsets = np.ascontiguousarray(offsets, dtype=np.uint64)
        if rows.ndim != 2 or rows.shape[1] != len(COLUMNS) or offsets.shape != (len(rows),):
            raise ValueError(f"a schedule needs rows of shape (steps, {len(COLUMNS)}) and one offset "
                             f"a step, got {rows.shape} and {offsets.shape}")
        self.steps = len(rows)
        self.table, self.offsets = cp.asarray(rows), cp.asarray(offsets)
        self.counter = cp.zeros(1, dtype=cp.int64)
        self.current = cp.zeros(len(COLUMNS), dtype=cp.float64)
        self.offset = cp.zeros(1, dtype=cp.uint64)
        from .kernels import get_function  # deferred: it imports CuPy

        # Compiled and loaded now, before any capture: a capture should record launches only.
        self._advance = get_function("mv_step_advance")

    def advance(self):
        """Select the next step's row and offset (one launch of ``mv_step_advance``)."""
        self._advance((1,), (1,), (self.table, self.offsets, np.int64(len(COLUMNS)), np.int64(self.steps),
                                   self.counter, self.current, self.offset))

    @property
    def optimizer_scalars(self):
        """The current step's (eps_s, neg_step, decay): what the optimizer's ``step_scalars``
        take (``minivae.optim``)."""
        return self.current[:3]

    def kl_weight(self, dtype):
        """The current step's KL weight as a 0-d array of ``dtype`` (read when the step runs)."""
        return self.current[3].astype(dtype)


class StepNoise(Generator):
    """The noise generator of a captured step: a ``Generator`` whose ``j``-th draw of a step is
    ``Noise(seed, j, stream, offset_from=schedule.offset)``, offset j past the step's first
    offset, which is read from memory when the kernels run.

    Its host draws (``normal``, ``uniform``, ``gumbel``) are refused (ValueError), saying so: a
    model that draws noise on the host cannot be captured, since the graph would replay the
    numbers of the capture's draw at every step.
    ``offset`` counts the draws since ``reset()``.
    """

    def __init__(self, seed, stream, offset_from):
        super().__init__(seed, 0, stream)
        self.offset_from = offset_from

    def _draw(self, kind, shape, dtype):
        """Refuse a host draw (see the class docstring): the error says why, where that of the
        ``Noise`` would only say that its offset lives in device memory."""
        raise ValueError(f"the step draws {kind} noise on the host (noise.{kind}), which a CUDA graph would "
                         "replay as the same numbers at every step; only noise that the GPU kernels "
                         "generate (noise.next_noise()) can be captured")

    def reset(self):
        """Start a step: its first draw is offset 0 past the step's first offset."""
        self._offset = 0

    def next_noise(self):
        """The address of the step's next draw."""
        noise = Noise(self.seed, self._offset, self.stream, offset_from=self.offset_from)
        self._offset += 1
        return noise


class CapturedStep:
    """``fn()`` captured once as a CUDA graph (see the module docstring); ``replay()`` runs it.

    A capture runs the Python side of ``fn`` once but executes none of its kernels. When ``fn``
    does something a capture refuses (a copy to the host, a cuBLAS call through CuPy, a host
    draw of noise), the error is raised here and nothing was executed.
    """

    def __init__(self, fn):
        cp = cupy_module()
        self.pool = cp.cuda.MemoryPool()
        self.stream = cp.cuda.Stream(non_blocking=True)
        cp.cuda.get_current_stream().synchronize()  # nothing queued may still use the pool's memory
        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            self.stream.begin_capture()
            try:
                fn()
            except BaseException:
                _end_capture_after_error(self.stream)
                raise
            self.graph = self.stream.end_capture()

    def replay(self):
        """Launch the graph on the current stream."""
        cp = cupy_module()
        self.graph.launch(cp.cuda.get_current_stream())

    def nodes(self):
        """The number of nodes of the graph (kernels, memsets, copies: what a replay runs), counted
        in CUDA's DOT description of it, where each node is named "graph_<i>_node_<j>"."""
        return len(set(re.findall(r'"(graph_\d+_node_\d+)"', self.graph.debug_dot_str())))


def _end_capture_after_error(stream):
    """End a capture that ``fn`` broke off, so that the stream is usable again; its own error (an
    invalidated capture) would only hide the one that says why, which the caller re-raises."""
    try:
        stream.end_capture()
    except Exception:
        pass
