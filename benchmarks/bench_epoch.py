"""Seconds per MNIST training epoch: minivae's trainer vs the same model in PyTorch.

One epoch of the default VAE (784-512-256, z 50, Adam, cosine learning rate) over the 50,000
real MNIST training images at ``--batch`` (default 100), float32, from the same initial weights:

* minivae: ``minivae.train.Trainer``'s own step (learning rate, loss, NaN check, zero_grad,
  backward, Adam) on its own minibatch loader (shuffled, dynamically binarized per epoch);
* torch: the same model and Adam in PyTorch, fed the same batches (``torch.from_numpy`` views),
  the same learning-rate schedule, with the same number of threads;
* numpy: the hand-written reference of ``reference_numpy_vae.py`` (for scale).

The libraries take turns every ``--chunk`` batches over the same epoch, in a new random order
each time (so a burst of load from other processes, or PyTorch's OpenMP threads still spinning
after its turn, slows them alike); each library's epoch time is the sum of its own step times
plus the time to prepare the epoch's batches (shuffle and binarize, done once by minivae's loader
and counted for every library). Evaluation is not included.

With ``--device gpu`` the same on the GPU: minivae's trainer with ``device="gpu"`` (its loader
shuffles and binarizes each epoch on the device), eagerly (``minivae``, as ``--eager`` trains) and
in graph mode (``minivae-graph``: the first step eager, the others replays of the captured step,
``minivae.graph_steps``), PyTorch CUDA eager, and the reference on CuPy; each turn ends with a
device synchronization so that its time is complete, and so does the batch preparation (the
loader's shuffle and binarization kernels run asynchronously).

Before timing, each library runs one chunk untimed (the loader its first epoch): the one-time
costs -- kernel loads, PyTorch's first cuBLAS call, the graph trainer's eager first step and its
capture -- are not an epoch's. (The trainers are configured for one epoch more than is timed, so
that these steps stay within their run's schedules.) When the step cannot be captured, the
graph trainer would train eagerly: its row is dropped then, the trainer's note kept in the JSON
(``graph_mode``). A library that raises is dropped likewise, the others going on without it
(``errors``).

    python benchmarks/bench_epoch.py            # writes results/epoch_<machine>_t<threads>_b<batch>.json
    python benchmarks/bench_epoch.py --device gpu
"""
import argparse
import dataclasses
import os
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train_step as bts  # noqa: E402
from machine import (command_line, default_machine_name, gpu_info, machine_info, thread_limits,  # noqa: E402
                     versions, write_result)
from minivae.runs import TrainConfig  # noqa: E402
from minivae.train import Trainer  # noqa: E402
from minivae.backend import DeviceError, cupy_module  # noqa: E402
from minivae.data import load_mnist  # noqa: E402

try:
    import torch
except ImportError:
    torch = None


class TrainerStep:
    """minivae: the Trainer's own per-batch step (its graph mode's when the config asks for it)."""

    def __init__(self, config, data):
        self.notes = []  # what the trainer said, e.g. why its step cannot be captured
        self.trainer = Trainer(config, data=data, progress=False, log=self._note)
        self.steps = 0

    def _note(self, line):
        print(line, flush=True)
        self.notes.append(line)

    def params(self):
        """Copies of the model's parameter arrays (on the trainer's device), in minivae's order and
        layout: the weights the other libraries start from."""
        return [p.data.copy() for p in self.trainer.model.parameters()]

    def __call__(self, xb):
        self.trainer._run_step(xb, self.trainer.kl_weight_of_step(self.steps), self.steps)
        self.steps += 1


class ScheduledRunner:
    """A bench_train_step runner with the trainer's learning-rate schedule applied each step."""

    def __init__(self, runner, trainer):
        self.runner, self.trainer, self.steps = runner, trainer, 0

    def __call__(self, xb):
        lr = self.trainer.learning_rate(self.steps)
        if isinstance(self.runner, bts.TorchRunner):
            for group in self.runner.opt.param_groups:
                group["lr"] = lr
            self.runner.step(self.runner.batch(xb))
        else:
            self.runner.opt.lr = lr
            self.runner.step(self.runner.batch(xb))
        self.steps += 1


def main(argv=None):
    """Time ``--epochs`` epochs per library, interleaved, and write
    ``epoch_<machine>_t<threads>_b<batch>[_gpu].json``; None when ``--device gpu`` finds no GPU."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per library (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS / PyTorch threads (default: the cores this process may use)")
    parser.add_argument("--chunk", type=int, default=25, help="batches per turn (default 25)")
    parser.add_argument("--libs", nargs="+", default=None, choices=["minivae", "minivae-graph", "torch", "numpy"],
                        help="default: minivae torch numpy, and minivae-graph with --device gpu")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--machine", help="name in the output file (default: the GPU's with --device gpu, "
                                          "else from the CPU model)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no JSON")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    sync = lambda: None  # noqa: E731
    if args.device == "gpu":
        try:
            cp = cupy_module()
        except DeviceError as exc:
            print(f"skipped: --device gpu needs CuPy and a CUDA device ({exc})")
            return None

        def sync():
            cp.cuda.Device().synchronize()
            if torch is not None and torch.cuda.is_available():
                torch.cuda.synchronize()

    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    with thread_limits(threads, torch):  # given back when main returns
        if args.libs is None:
            args.libs = ["minivae", "torch", "numpy"] + (["minivae-graph"] if args.device == "gpu" else [])
        if "minivae-graph" in args.libs and args.device != "gpu":
            parser.error("minivae-graph needs --device gpu")
        libs = [n for n in args.libs if n != "torch" or torch is not None]
        load_before = os.getloadavg()

        data = load_mnist(verbose=False)
        # One epoch more than is timed: the untimed warm-up steps come on top (see the docstring).
        config = TrainConfig(batch_size=args.batch, epochs=args.epochs + 1, out="/tmp/minivae-bench-epoch",
                             device=args.device, eager=True)
        mine = TrainerStep(config, data)
        state = {"params": [bts.to_device(p, "cpu") for p in mine.params()], "m": None, "v": None, "t": 0}
        steppers = {"minivae": mine}
        if "minivae-graph" in libs:
            steppers["minivae-graph"] = TrainerStep(dataclasses.replace(config, eager=False), data)
        if "torch" in libs:
            steppers["torch"] = ScheduledRunner(bts.TorchRunner(state, args.device, seed=config.seed), mine.trainer)
        if "numpy" in libs:
            steppers["numpy"] = ScheduledRunner(bts.NumpyRunner(state, args.device, seed=config.seed), mine.trainer)
        graph = steppers.get("minivae-graph")
        errors = {}  # library -> why it was dropped

        def run_chunk(n, chunk):
            """Library ``n``'s steps over ``chunk``, from one device synchronization to the next; their
            seconds, or 0 when the library raised (then it is dropped and ``errors`` says why)."""
            try:
                sync()
                t0 = time.perf_counter()
                for xb in chunk:
                    steppers[n](xb)
                sync()
                return time.perf_counter() - t0
            except Exception as exc:
                print(f"{n} failed; going on without it:", file=sys.stderr, flush=True)
                traceback.print_exception(exc)
                errors[n] = repr(exc)
                del steppers[n]
                return 0.0

        warm = list(mine.trainer.loader.epoch(0))[:args.chunk]  # untimed: first calls and the capture
        for n in list(steppers):
            run_chunk(n, warm)
        if graph is not None and graph.trainer.graph is None and "minivae-graph" in steppers:
            # The capture failed and the trainer went on eagerly: that is not graph mode's epoch.
            errors["minivae-graph"] = "graph mode is off, its steps would run eagerly: " + " ".join(graph.notes)
            del steppers["minivae-graph"]

        seconds = {n: 0.0 for n in steppers}
        prepare = 0.0
        order = random.Random(0)  # a new random order per chunk, seeded
        for epoch in range(args.epochs):
            sync()
            t0 = time.perf_counter()
            batches = list(mine.trainer.loader.epoch(epoch))  # views of the loader's epoch buffer
            sync()  # the device's shuffle and binarization are part of the epoch
            prepare += time.perf_counter() - t0
            for start in range(0, len(batches), args.chunk):
                chunk = batches[start:start + args.chunk]
                for n in order.sample(list(steppers), len(steppers)):  # see bench_train_step.time_interleaved
                    seconds[n] += run_chunk(n, chunk)
            print(f"epoch {epoch + 1}: " + "   ".join(f"{n} {seconds[n]:.1f} s" for n in steppers), flush=True)

        per_epoch = {n: round((seconds[n] + prepare) / args.epochs, 2) for n in steppers}
        base = per_epoch.get("minivae")
        results = {n: {"seconds_per_epoch": v, "images_per_s": round(len(data.x_train) / v, 1),
                       "time_ratio_to_minivae": round(v / base, 3) if base else None} for n, v in per_epoch.items()}
        gpu = gpu_info() if args.device == "gpu" else None
        payload = {
            "benchmark": "seconds per MNIST training epoch (default VAE, float32)",
            "device": args.device, "gpu": gpu, "batch": args.batch, "epochs": args.epochs, "threads": threads,
            "train_images": int(len(data.x_train)), "steps_per_epoch": len(mine.trainer.loader),
            "versions": versions("torch", "threadpoolctl", *(["cupy"] if args.device == "gpu" else [])),
            "blas": bts.blas_info(),
            "prepare_batches_seconds_per_epoch": round(prepare / args.epochs, 3),
            "timing": (f"sum of each library's step times over the epoch, the libraries taking turns every "
                       f"{args.chunk} batches after one untimed turn each, plus the batch preparation "
                       f"(counted for each)"),
            "load_average": {"before": [round(x, 2) for x in load_before],
                             "after": [round(x, 2) for x in os.getloadavg()]},
            "graph_mode": (None if graph is None else
                           {"active": graph.trainer.graph is not None, "notes": graph.notes}),
            "errors": errors,
            "results": results,
        }
        print(results)
        if not args.no_save:
            name = args.machine or default_machine_name(machine_info(), gpu)
            suffix = "_gpu" if args.device == "gpu" else ""
            path = write_result(f"epoch_{name}_t{threads}_b{args.batch}{suffix}", payload, args.out,
                                command=command_line(__file__, argv))
            print(f"wrote {path}")
        return payload


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 2)  # 2: --device gpu without a GPU, nothing measured
