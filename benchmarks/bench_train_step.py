"""One MNIST VAE training step, side by side: minivae, a hand-written NumPy VAE, PyTorch CPU.

A step is what the trainer does per batch: draw eps, forward, backward, Adam update (and read
the loss as a Python number). The model is the default VAE (784-512-256, z 50, mirrored
decoder, Bernoulli likelihood, analytic KL) in float32, at batch 100 and 1000:

* minivae: ``model.loss(x, noise)``, ``zero_grad``, ``backward``, ``Adam.step`` (as in
  ``minivae.train``; eps is drawn with minivae's Philox generator);
* numpy: ``benchmarks/reference_numpy_vae.py``, the same math with explicit forward and
  backward (eps from NumPy's generator); its gradients are tested equal to minivae's;
* torch: the same model in PyTorch with ``torch.optim.Adam`` (defaults), when ``import torch``
  works, with the same number of threads;
* numpy-noflush: the reference without the subnormal flush (to see what the flush buys);
* torch-flush (CPU): PyTorch with ``torch.set_flush_denormal(True)`` during its steps, PyTorch's
  own remedy for subnormal numbers, next to its default;
* minivae-graph (``--device gpu``): minivae's graph mode, the trainer's step captured once in a
  CUDA graph (``minivae.graph_steps``) and replayed, each batch copied into its input buffer;
* torch-graph (``--device gpu``): PyTorch with the whole step (forward, backward,
  ``Adam(capturable=True)``) captured once in a CUDA graph (``torch.cuda.graph``) and replayed;
  eps is drawn inside the graph and the loss stays on the device (read once per timed block).

On the GPU, "numpy" is the same reference code run on CuPy (the CuPy reference step), and the
batch sizes are 100, 1000 and 10000.

Forward and backward alone (CPU, unless ``--skip-fwd-bwd``): the same libraries without the
optimizer, from a fresh initialization (no warm-up, so no subnormal moments), to separate the
engine's cost from the optimizer's.

Steady state. Border pixels of MNIST are zero in every image, so some weights get exactly zero
gradients and their Adam moments decay geometrically into the subnormal range (slow on some CPUs)
after some hundred steps. Before timing, ``--warmup-steps`` Adam steps (default 1000, plain
Adam without any flush) are run once with the reference on real MNIST batches of 100; every
library then starts from the same weights and moments (those a long run has), and minivae and
the reference apply their remedy (flushing subnormal moments every 10 steps) as they would in
a real run. Running 1000 steps per library and batch size would take minutes on two cores for
the same state.

Timing. Each measurement is a block of ``--block`` steps (a multiple of 10, so the periodic
flush is included at its real rate); the libraries take turns block by block, in a new random
order each round, so load from other processes hits them alike, and so does the library before:
PyTorch's OpenMP threads keep spinning after its block, and with a fixed rotation the library
after it always paid for that (19% at two threads). Reported: median (and min, quartiles) ms
per step over ``--repeat`` blocks, images per second, and the ratio of each library to minivae.
Before timing, the three are checked to compute the same loss and gradients on one batch.

Also per library: minor page faults per step (memory the allocator gave back to the OS and
touches again) and the time to draw eps alone.

A library that fails -- its runner raises (a step that cannot be captured, a CUDA error), or it
does not compute minivae's loss and gradients -- is dropped from the rest of the run, the reason
kept in the JSON's ``errors``, and the others go on without it. The JSON is written after each
batch size (``finished`` false until the end), so a run cut short keeps what it measured.

Memory, per library, for one step after timing: the peak of the bytes allocated during the
step and alive at once, seen by tracemalloc (NumPy and minivae; PyTorch's allocator is not
visible to it), and the rise of the process's peak resident set size during the step (Linux:
``/proc/self/clear_refs`` resets VmHWM), the median of three steps.

    python benchmarks/bench_train_step.py                 # writes results/train_step_<machine>_t<threads>.json
    python benchmarks/bench_train_step.py --threads 1
    python benchmarks/bench_train_step.py --device gpu    # results/train_step_<gpu>_t<threads>_gpu.json
    python benchmarks/bench_train_step.py --retain-freed-memory   # glibc keeps freed memory
"""
import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import random
import re
import resource
import statistics
import sys
import time
import traceback
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import minivae as mv  # noqa: E402
import reference_numpy_vae as ref  # noqa: E402
from machine import (command_line, default_machine_name, git_commit, gpu_info, machine_info,  # noqa: E402
                     thread_limits)
from minivae import optim  # noqa: E402
from minivae.backend import DeviceError, cupy_module, to_device  # noqa: E402
from minivae.data import MinibatchLoader, load_mnist  # noqa: E402
from minivae.models import VAE  # noqa: E402
from minivae.random import Generator  # noqa: E402

try:
    import torch
except ImportError:  # the benchmark runs without PyTorch; its column is then absent
    torch = None
try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None

LR = 1e-3
Z_DIM = 50
LIBS = ("minivae", "numpy", "torch", "numpy-noflush", "torch-flush", "minivae-graph", "torch-graph")
CPU_LIBS = ("minivae", "numpy", "torch", "torch-flush", "numpy-noflush")
GPU_LIBS = ("minivae", "minivae-graph", "numpy", "torch", "torch-graph")


# ----- the libraries ------------------------------------------------------------------------
class MinivaeRunner:
    """minivae's VAE and Adam, stepped as ``minivae.train.Trainer`` steps them."""
    name = "minivae"

    def __init__(self, state, device, seed):
        mv.nn.init.manual_seed(0)
        self.device = device
        self.model = VAE(z_dim=Z_DIM).to(device)
        params = list(self.model.parameters())
        for p, a in zip(params, state["params"]):
            p.data[...] = to_device(a, device)
        self.opt = optim.Adam(params, lr=LR)
        if state["t"]:
            for i, (m, v) in enumerate(zip(state["m"], state["v"])):
                self.opt.state[i] = {"step": state["t"], "exp_avg": to_device(m.copy(), device),
                                     "exp_avg_sq": to_device(v.copy(), device)}
        self.noise = Generator(seed)

    def batch(self, x):
        """The batch on the runner's device (a copy on the GPU; a NumPy batch as it is on the CPU)."""
        return to_device(x, self.device)

    def fwd_bwd(self, xb):
        """Forward and backward without the optimizer step; returns the loss as a Python float.

        Read back every step, as the other libraries' runners read theirs and as the trainer
        reads a step's statistics: on the GPU that waits for the device, so no library's host
        work runs ahead of its kernels."""
        loss, stats = self.model.loss(mv.tensor(xb), self.noise)
        self.model.zero_grad()
        loss.backward()
        return float(stats["loss"])

    def step(self, xb):
        """fwd_bwd, then minivae's Adam step; returns the loss (a Python float)."""
        loss = self.fwd_bwd(xb)
        self.opt.step()
        return loss

    def draw_eps(self, b):
        """One draw of eps, (1, b, Z_DIM) float32 from the runner's Philox generator; on the GPU
        ``minivae.gpu.normal`` draws it on the device, from the same Philox address."""
        if self.device != "gpu":
            return self.noise.normal((1, b, Z_DIM), dtype=np.float32)
        from minivae import gpu  # the GPU draws with its own kernel, from the same address

        n = self.noise.next_noise()
        return gpu.normal((1, b, Z_DIM), n.seed, n.offset, np.float32, n.stream)

    def loss_and_grads(self, xb, seed):
        """Loss and gradients (NumPy, minivae's layout) with eps = Generator(seed)'s first draw."""
        self.model.zero_grad()
        loss, _ = self.model.loss(mv.tensor(xb), Generator(seed))
        loss.backward()
        grads = [to_device(p.grad, "cpu") for p in self.model.parameters()]
        self.model.zero_grad()
        return loss.item(), grads

    def sync(self):
        """CuPy: waits for the device; nothing on the CPU."""
        if self.device == "gpu":
            cupy_module().cuda.Device().synchronize()


class MinivaeGraphRunner(MinivaeRunner):
    """minivae's graph mode (``--device gpu``): a ``Trainer`` whose model, optimizer and noise are
    this runner's takes its first step eagerly, captures the step (``minivae.graph_steps``), and
    then each step copies its batch into the graph's input buffer and replays it. The loss stays
    on the device (summed there, as in training)."""
    name = "minivae-graph"

    def __init__(self, state, device, seed):
        if device != "gpu":
            raise ValueError("minivae-graph needs --device gpu")
        super().__init__(state, device, seed)
        self.trainer = None

    def _capture(self, xb, steps=100_000):
        import tempfile
        import types

        from minivae.runs import TrainConfig
        from minivae.train import Trainer

        b = xb.shape[0]
        host = to_device(xb, "cpu")
        data = types.SimpleNamespace(x_train=host, y_train=np.zeros(b, np.int64), x_valid=host[:1])
        config = TrainConfig(z_dim=Z_DIM, lr=LR, lr_schedule="constant", warmup=0, batch_size=b,
                             epochs=steps, device="gpu", eval_k=0, out=tempfile.mkdtemp())
        notes = []  # the trainer's note says why a step cannot be captured
        trainer = Trainer(config, data=data, progress=False, log=notes.append)
        trainer.model, trainer.optimizer, trainer.noise = self.model, self.opt, self.noise
        # Eager; sets graph mode up for the steps after it. Each epoch here is one batch, so the
        # schedule captured holds step 1 alone: the replays after it keep its scalars, the same work.
        trainer._run_step(xb, 1.0, 0)
        if trainer.graph is None:
            raise RuntimeError(" ".join(["minivae's step could not be captured."] + notes))
        self.trainer, self.t = trainer, 1

    def step(self, xb):
        """Replay the captured step on ``xb`` (capturing it on the first call and on a new batch
        shape); returns None: the loss stays on the device."""
        if self.trainer is None or xb.shape != self.trainer.graph.x.shape:
            self._capture(xb)
        self.trainer.graph.step(xb, self.t)
        self.t += 1

    def fwd_bwd(self, xb):
        """Not available: graph mode captures the whole step only (raises NotImplementedError)."""
        raise NotImplementedError("minivae-graph captures the whole step only")

    def graph_nodes(self):
        """The nodes of the captured step's graph, without and with the moments' flush (CUDA's own
        count, to set beside tests/test_device_calls.py's estimate), or the error that hid it."""
        try:
            graphs = self.trainer.graph.graphs
            return {("with_flush" if flush else "step"): graph.nodes() for flush, graph in graphs.items()}
        except Exception as exc:  # (an older CuPy without Graph.debug_dot_str)
            return {"error": repr(exc)}


class NumpyRunner:
    """The hand-written reference (``reference_numpy_vae.py``); on the GPU the same code on CuPy."""
    name = "numpy"

    def __init__(self, state, device, seed, flush_every=10):
        self.xp = cupy_module() if device == "gpu" else np
        params = [self.xp.array(a) for a in state["params"]]
        self.model = ref.ReferenceVAE(params)
        self.opt = ref.ReferenceAdam(params, lr=LR, flush_every=flush_every)
        if state["t"]:
            self.opt.m = [self.xp.array(m) for m in state["m"]]
            self.opt.v = [self.xp.array(v) for v in state["v"]]
            self.opt.t = state["t"]
        self.rng = self.xp.random.default_rng(seed) if device == "gpu" else np.random.default_rng(seed)

    def batch(self, x):
        """The batch as an array of the runner's module (NumPy; a CuPy copy on the GPU)."""
        return self.xp.asarray(x)

    def draw_eps(self, b):
        """One draw of eps, (b, Z_DIM) float32 from NumPy's (on the GPU CuPy's) seeded default_rng."""
        return self.rng.standard_normal((b, Z_DIM), dtype=np.float32)

    def fwd_bwd(self, xb):
        """Forward and backward without the optimizer step; returns the loss and gradients."""
        loss, _, grads = self.model.loss_and_grads(xb, self.draw_eps(xb.shape[0]))
        return loss, grads

    def step(self, xb):
        """fwd_bwd, then the reference Adam (flushing subnormal moments every ``flush_every`` steps);
        returns the loss as a Python float."""
        loss, grads = self.fwd_bwd(xb)
        self.opt.step(grads)
        return loss

    def loss_and_grads(self, xb, eps):
        """Loss and gradients (NumPy) of the reference with the given eps, for the agreement check."""
        loss, _, grads = self.model.loss_and_grads(xb, self.xp.asarray(eps))
        return loss, [to_device(g, "cpu") for g in grads]

    def state(self):
        """Weights and Adam moments as NumPy copies (to start the other libraries from)."""
        host = lambda arrays: [to_device(a, "cpu").copy() for a in arrays]  # noqa: E731
        return {"params": host(self.model.params), "m": host(self.opt.m), "v": host(self.opt.v),
                "t": self.opt.t}

    def sync(self):
        """CuPy: waits for the device; nothing on NumPy."""
        if self.xp is not np:
            self.xp.cuda.Device().synchronize()


if torch is not None:
    class TorchVAE(torch.nn.Module):
        """The same VAE in PyTorch, written as a PyTorch user would."""

        def __init__(self, hidden=(512, 256), x_dim=784, z_dim=Z_DIM):
            super().__init__()
            L = torch.nn.Linear
            enc = (x_dim,) + hidden
            self.enc = torch.nn.ModuleList(L(a, b) for a, b in zip(enc, enc[1:]))
            self.mu, self.logvar = L(hidden[-1], z_dim), L(hidden[-1], z_dim)
            dec = (z_dim,) + hidden[::-1] + (x_dim,)
            self.dec = torch.nn.ModuleList(L(a, b) for a, b in zip(dec, dec[1:]))

        def ordered_linears(self):
            """The linear layers in minivae's parameter order."""
            return list(self.enc) + [self.mu, self.logvar] + list(self.dec)

        def loss(self, x, eps):
            """The negative ELBO with the given eps, averaged over the batch: mean KL minus mean Bernoulli
            log-likelihood."""
            h = x
            for layer in self.enc:
                h = torch.relu(layer(h))
            mu, logvar = self.mu(h), self.logvar(h)
            z = mu + torch.exp(0.5 * logvar) * eps
            a = z
            for i, layer in enumerate(self.dec):
                a = layer(a)
                if i < len(self.dec) - 1:
                    a = torch.relu(a)
            rec = -torch.nn.functional.binary_cross_entropy_with_logits(a, x, reduction="none").sum(-1)
            kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(-1)
            return kl.mean() - rec.mean()


class TorchRunner:
    """PyTorch (CPU, or CUDA with ``--device gpu``) with ``torch.optim.Adam``'s defaults."""
    name = "torch"

    def __init__(self, state, device, seed):
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        self.model = TorchVAE().to(self.dev)
        # minivae's weight is (in, out); torch.nn.Linear's is (out, in): transpose weights
        # (and their moments) on the way in, and weight gradients on the way out.
        self.params = [t for lin in self.model.ordered_linears() for t in (lin.weight, lin.bias)]
        with torch.no_grad():
            for p, a in zip(self.params, state["params"]):
                p.copy_(torch.from_numpy(np.ascontiguousarray(a.T)))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        if state["t"]:
            for p, m, v in zip(self.params, state["m"], state["v"]):
                self.opt.state[p] = {
                    "step": torch.tensor(float(state["t"])),
                    "exp_avg": torch.from_numpy(np.ascontiguousarray(m.T)).to(self.dev),
                    "exp_avg_sq": torch.from_numpy(np.ascontiguousarray(v.T)).to(self.dev)}
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)

    def batch(self, x):
        """The batch as a tensor on the runner's device."""
        # NumPy on the CPU: shares its memory; a CuPy batch (a loader on the GPU): shares it too
        return torch.as_tensor(x, device=self.dev)

    def draw_eps(self, b):
        """One draw of eps, (b, Z_DIM) float32 from torch.randn with the runner's seeded generator."""
        return torch.randn(b, Z_DIM, generator=self.gen, device=self.dev)

    def fwd_bwd(self, xb):
        """Forward and backward without the optimizer step; returns the loss."""
        loss = self.model.loss(xb, self.draw_eps(xb.shape[0]))
        self.opt.zero_grad()
        loss.backward()
        return loss.item()

    def step(self, xb):
        """fwd_bwd, then ``torch.optim.Adam``'s step; returns the loss as a Python float."""
        loss = self.fwd_bwd(xb)
        self.opt.step()
        return loss

    def loss_and_grads(self, xb, eps):
        """Loss and gradients (NumPy) with the given eps, the weight gradients transposed to minivae's
        (in, out) layout."""
        self.opt.zero_grad()
        loss = self.model.loss(xb, torch.from_numpy(eps).to(self.dev))
        loss.backward()
        grads = [p.grad.cpu().numpy().T for p in self.params]
        self.opt.zero_grad()
        return loss.item(), grads

    def sync(self):
        """CUDA: ``torch.cuda.synchronize()``; nothing on the CPU."""
        if self.dev.type == "cuda":
            torch.cuda.synchronize()


class TorchFlushRunner(TorchRunner):
    """PyTorch on the CPU with subnormal numbers flushed to zero (``torch.set_flush_denormal``)
    during its own steps only: the setting is per thread and would also change NumPy's and
    minivae's arithmetic in this thread, so it is switched off after each step."""
    name = "torch-flush"

    def __init__(self, state, device, seed):
        if device != "cpu":
            raise ValueError("torch-flush is a CPU column")
        super().__init__(state, device, seed)

    @staticmethod
    @contextlib.contextmanager
    def _flushing():
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(False)

    def fwd_bwd(self, xb):
        """TorchRunner's forward and backward, with subnormal numbers flushed to zero during it only."""
        with self._flushing():
            return super().fwd_bwd(xb)

    def step(self, xb):
        """TorchRunner's step (forward, backward, Adam), with subnormal numbers flushed to zero during
        it only."""
        with self._flushing():
            return super().step(xb)


class TorchGraphRunner(TorchRunner):
    """PyTorch CUDA with the whole step -- eps, forward, backward, ``Adam(capturable=True)`` --
    captured once in a CUDA graph and replayed (the recipe of PyTorch's CUDA graph notes: three
    warm-up steps on a side stream, gradients set to None before the capture). Each step copies
    the batch into the graph's input buffer and replays; the loss stays on the device."""
    name = "torch-graph"

    def __init__(self, state, device, seed):
        if device != "gpu":
            raise ValueError("torch-graph needs --device gpu")
        super().__init__(state, device, seed)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, capturable=True)
        if state["t"]:
            for p, m, v in zip(self.params, state["m"], state["v"]):
                self.opt.state[p] = {
                    "step": torch.tensor(float(state["t"]), device=self.dev),  # capturable: on the device
                    "exp_avg": torch.from_numpy(np.ascontiguousarray(m.T)).to(self.dev),
                    "exp_avg_sq": torch.from_numpy(np.ascontiguousarray(v.T)).to(self.dev)}
        self.graph = self.static_x = self.static_loss = None

    def _whole_step(self):
        eps = torch.randn(self.static_x.shape[0], Z_DIM, device=self.dev)  # graph-safe generator
        loss = self.model.loss(self.static_x, eps)
        loss.backward()
        self.opt.step()
        return loss

    def _capture(self, xb):
        self.static_x = xb.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                self._whole_step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._whole_step()

    def step(self, xb):
        """Copy ``xb`` into the graph's input buffer and replay the captured step (capturing it on the
        first call and on a new batch shape); returns the loss as a device tensor, not read."""
        if self.graph is None or xb.shape != self.static_x.shape:
            self._capture(xb)
        self.static_x.copy_(xb)
        self.graph.replay()
        return self.static_loss

    def fwd_bwd(self, xb):
        """Not available: the graph captures the whole step only (raises NotImplementedError)."""
        raise NotImplementedError("torch-graph captures the whole step only")


# ----- measurements ---------------------------------------------------------------------------
def _rss_kib():
    """(VmRSS, VmHWM) of this process in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            text = f.read()
        return tuple(int(re.search(rf"^{k}:\s+(\d+)", text, re.M).group(1)) for k in ("VmRSS", "VmHWM"))
    except (OSError, AttributeError):
        return None


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure_memory(runner, batches, tracemalloc_ok=True):
    """Peak bytes allocated and alive at once during one step (tracemalloc), and the rise of
    the peak RSS during one step (median of three steps)."""
    out = {"tracemalloc_peak_mib": None, "rss_peak_rise_mib": None}
    if tracemalloc_ok:
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        runner.step(batches[0])
        runner.sync()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["tracemalloc_peak_mib"] = round(peak / 2**20, 2)
    rises = []
    for k in range(3):
        gc.collect()
        before = _rss_kib()
        if before is None or not _reset_peak_rss():
            break
        runner.step(batches[k % len(batches)])
        runner.sync()
        rises.append(_rss_kib()[1] - before[0])
    if rises:
        out["rss_peak_rise_mib"] = round(statistics.median(rises) / 1024, 2)
    return out


def count_subnormal(arrays):
    """Entries that are nonzero and below the smallest normal float32 number."""
    tiny = np.finfo(np.float32).tiny
    return int(sum(np.count_nonzero((a != 0) & (np.abs(a) < tiny)) for a in arrays))


def warm_state(data, steps, seed):
    """Weights and Adam moments after ``steps`` plain Adam steps (batch 100, real MNIST)."""
    mv.nn.init.manual_seed(0)
    params = [p.data.copy() for p in VAE(z_dim=Z_DIM).parameters()]
    state = {"params": params, "m": None, "v": None, "t": 0}
    if steps <= 0:
        return state, {"steps": 0}
    runner = NumpyRunner(state, "cpu", seed, flush_every=0)
    loader = MinibatchLoader(data.x_train, 100, seed=seed)
    t0, done, epoch = time.perf_counter(), 0, 0
    # One BLAS thread: the state does not depend on it, and an oversubscribed machine makes
    # multithreaded BLAS crawl.
    with (threadpoolctl.threadpool_limits(limits=1) if threadpoolctl is not None else contextlib.nullcontext()):
        while done < steps:
            for xb in loader.epoch(epoch):
                runner.step(xb)
                done += 1
                if done == steps:
                    break
            epoch += 1
    state = runner.state()
    n = sum(m.size for m in state["m"])
    info = {"steps": steps, "batch": 100, "seconds": round(time.perf_counter() - t0, 1),
            "subnormal_exp_avg_fraction": round(count_subnormal(state["m"]) / n, 4),
            "subnormal_exp_avg_sq_fraction": round(count_subnormal(state["v"]) / n, 4),
            "zero_exp_avg_fraction": round(sum(int(np.count_nonzero(m == 0)) for m in state["m"]) / n, 4)}
    return state, info


def check_agreement(runners, xb_host, seed, fail):
    """Max relative loss and gradient differences of each library to minivae (same weights, x,
    eps). A library that differs, or raises, is left out and passed to ``fail(name, exc)``; so is
    minivae when it raises, and then nothing is compared."""
    if "minivae" not in runners:
        return {}
    base = runners["minivae"]
    try:
        loss0, grads0 = base.loss_and_grads(base.batch(xb_host), seed)
    except Exception as exc:
        fail("minivae", exc)
        return {}
    eps = Generator(seed).normal((1, xb_host.shape[0], Z_DIM), dtype=np.float32)[0]
    out = {}
    for name, r in runners.items():
        if name == "minivae":
            continue
        try:
            loss, grads = r.loss_and_grads(r.batch(xb_host), eps)
            err = max(float(np.abs(g - g0).max() / max(np.abs(g0).max(), 1e-30)) for g, g0 in zip(grads, grads0))
            diff = {"loss_rel_diff": abs(loss - loss0) / abs(loss0), "grad_max_rel_diff": err}
            if diff["loss_rel_diff"] > 1e-4 or err > 1e-2:
                raise AssertionError(f"{name} does not compute minivae's loss and gradients: {diff}")
        except Exception as exc:
            fail(name, exc)
            continue
        out[name] = diff
    return out


def time_interleaved(runners, batches, repeat, block, budget_s=None, fail=None):
    """Median/min/quartiles of ms per step over ``repeat`` blocks of ``block`` steps each (fewer,
    but at least 3, when the untimed first round says ``repeat`` would not fit in ``budget_s``).

    With ``fail``, a library whose block raises is passed to ``fail(name, exc)`` and left out of
    the rest of the timing and of the result; without it, the exception propagates."""
    names = list(runners)
    order = random.Random(0)  # seeded: a rerun takes the same orders
    cursor = {n: 0 for n in names}
    times = {n: [] for n in names}
    faults = {n: [] for n in names}
    losses = {n: None for n in names}

    def run_block(n):
        r, bs = runners[n], batches[n]
        r.sync()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for _ in range(block):
            losses[n] = r.step(bs[cursor[n] % len(bs)])
            cursor[n] += 1
        r.sync()
        t1 = time.perf_counter()
        faults[n].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / block)
        return (t1 - t0) / block * 1e3

    def run_block_or_drop(n):
        try:
            return run_block(n)
        except Exception as exc:
            if fail is None:
                raise
            fail(n, exc)
            names.remove(n)
            return None

    t0 = time.perf_counter()
    for n in list(names):  # untimed: first-touch allocations, caches, lazy initialization, captures
        run_block_or_drop(n)
    round_s = time.perf_counter() - t0
    if budget_s is not None and round_s * repeat > budget_s:
        repeat = max(3, int(budget_s / round_s))
    for _ in range(repeat):
        for n in order.sample(names, len(names)):
            ms = run_block_or_drop(n)
            if ms is not None:
                times[n].append(ms)
    out = {"_repeat": repeat}
    for n in names:
        t = times[n]
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        out[n] = {"ms_per_step": round(statistics.median(t), 3), "ms_min": round(min(t), 3),
                  "ms_q1": round(q[0], 3), "ms_q3": round(q[2], 3),
                  # (None for minivae-graph, whose losses are only summed on the device)
                  "last_loss": None if losses[n] is None else round(float(losses[n]), 3),
                  "page_faults_per_step": round(statistics.median(faults[n][1:]), 1)}
    return out


class ForwardBackwardOnly:
    """A runner's forward and backward without its optimizer, as a runner ``time_interleaved``
    can time."""

    def __init__(self, runner):
        self.runner, self.name = runner, runner.name

    def step(self, xb):
        """The runner's fwd_bwd, no optimizer step; returns the loss (without NumpyRunner's gradients)."""
        loss = self.runner.fwd_bwd(xb)
        return loss[0] if isinstance(loss, tuple) else loss

    def sync(self):
        """The runner's sync."""
        self.runner.sync()


def time_eps(runner, b, repeat=52):
    """Mean ms to draw one batch of eps over ``repeat`` consecutive draws (minivae: Philox;
    numpy and torch: their generators). The mean is what a training step pays."""
    runner.sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        runner.draw_eps(b)
    runner.sync()
    return round((time.perf_counter() - t0) / repeat * 1e3, 4)


def retain_freed_memory():
    """Ask glibc to keep freed memory (no trimming, no mmap below 32 MiB); True if it could."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
    except (OSError, AttributeError):
        return False


def blas_info():
    """What threadpoolctl sees (BLAS and OpenMP libraries with their thread counts)."""
    if threadpoolctl is None:
        return None
    keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture", "threading_layer")
    return [{k: lib.get(k) for k in keys if k in lib} for lib in threadpoolctl.threadpool_info()]


def targets(rows, device="cpu"):
    """The targets (see benchmarks/README.md), evaluated on this run's medians."""
    out = {}
    for b, row in rows.items():
        # (minivae's targets need its row, absent when it was dropped from the run)
        mvt, res = row.get("minivae", {}).get("ms_per_step"), {}
        if mvt is not None and "numpy" in row:
            r = mvt / row["numpy"]["ms_per_step"]
            res["time_vs_numpy"] = {"value": round(r, 3), "target": "<= 1.1", "met": r <= 1.1}
            if row["minivae"].get("eps_ms") is not None and row["numpy"].get("eps_ms") is not None:
                # Not a target: the same ratio with minivae's eps draw (Philox, the GPU's twin)
                # costing what NumPy's generator costs, to show what the engine itself adds.
                same = mvt - row["minivae"]["eps_ms"] + row["numpy"]["eps_ms"]
                res["time_vs_numpy_if_eps_cost_the_same"] = {
                    "value": round(same / row["numpy"]["ms_per_step"], 3), "target": "(information)",
                    "met": None}
            mm, mn = row["minivae"].get("tracemalloc_peak_mib"), row["numpy"].get("tracemalloc_peak_mib")
            if mm and mn:
                r = mm / mn
                res["peak_memory_vs_numpy"] = {"value": round(r, 3), "target": "<= 1.5", "met": r <= 1.5}
        if mvt is not None and "torch" in row:
            if int(b) <= 100:
                r = row["torch"]["ms_per_step"] / mvt  # throughput ratio minivae / torch
                res["throughput_vs_torch"] = {"value": round(r, 3), "target": ">= 1.0", "met": r >= 1.0}
            else:
                r = mvt / row["torch"]["ms_per_step"]
                res["time_vs_torch"] = {"value": round(r, 3), "target": "<= 1.2", "met": r <= 1.2}
        # The GPU's targets: graph mode against PyTorch's whole step in a CUDA graph, and the eager
        # step against PyTorch's eager one (batch 100 and 1000; larger batches are information).
        if "minivae-graph" in row and "torch-graph" in row:
            r = row["minivae-graph"]["ms_per_step"] / row["torch-graph"]["ms_per_step"]
            goal = {100: 0.5, 1000: 0.6}.get(int(b))
            res["graph_time_vs_torch_graph"] = {"value": round(r, 3), "target": f"<= {goal}" if goal else
                                                "(information)", "met": r <= goal if goal else None}
        if mvt is not None and device == "gpu" and "torch" in row and int(b) == 100:
            r = mvt / row["torch"]["ms_per_step"]
            res["eager_time_vs_torch_eager"] = {"value": round(r, 3), "target": "<= 0.6", "met": r <= 0.6}
        out[b] = res
    return out


def drop_library(errors, name, where, exc):
    """Print why library ``name`` failed and keep it in ``errors[name]``: it is dropped from the
    rest of the run, and the others go on without it."""
    print(f"{name} failed ({where}); going on without it:", file=sys.stderr, flush=True)
    traceback.print_exception(exc)
    errors[name] = f"{where}: {exc!r}"


def build_runners(libs, makers, state, device, host_batches, fail):
    """Each library's runner, started from ``state``, and its copies of the batches; a library
    whose runner cannot be built is left out and passed to ``fail(name, exc)``."""
    runners, batches = {}, {}
    for n in libs:
        try:
            runner = makers[n](state, device, seed=3)
            batches[n] = [runner.batch(x) for x in host_batches]
            runners[n] = runner
        except Exception as exc:
            fail(n, exc)
    return runners, batches


def step_extras(runner, batches, b, device, profile):
    """What is measured of a library besides its step time: the time to draw eps, the memory of a
    step (CPU), cProfile of minivae's steps (``profile`` > 0) and the nodes of minivae's graph."""
    out = {"eps_ms": time_eps(runner, b)}
    if device == "cpu":  # (tracemalloc does not see PyTorch's allocator: no number for its columns)
        out.update(measure_memory(runner, batches, tracemalloc_ok=not runner.name.startswith("torch")))
    if profile and runner.name == "minivae":
        out["profile"] = profile_steps(runner, batches, profile)
    if runner.name == "minivae-graph":
        out["graph_nodes"] = runner.graph_nodes()
    return out


def add_ratios(row):
    """Each library's time and throughput ratios to minivae (None when minivae is not in ``row``)."""
    base = row.get("minivae", {}).get("ms_per_step")
    for v in row.values():
        v["time_ratio_to_minivae"] = round(v["ms_per_step"] / base, 3) if base else None
        v["throughput_ratio_to_minivae"] = round(base / v["ms_per_step"], 3) if base else None


def _fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}"


def profile_steps(runner, batches, steps):
    """cProfile of ``steps`` training steps of ``runner``: the 25 functions with the most own
    time. On the GPU a small step is launch-bound, so this is where its time goes."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    runner.sync()
    prof.enable()
    for i in range(steps):
        runner.step(batches[i % len(batches)])
    runner.sync()
    prof.disable()
    stats = pstats.Stats(prof)
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:25]
    return {"steps": steps, "seconds": round(stats.total_tt, 4), "top_by_own_time": [
        {"function": f"{Path(path).name}:{line}({name})", "calls": calls, "own_s": round(own, 4),
         "cumulative_s": round(cum, 4)}
        for (path, line, name), (_, calls, own, cum, _) in top]}


def main(argv=None):
    """Time a training step per library and batch size (and forward + backward alone), print the
    targets and write ``train_step_<machine>_t<threads>[_gpu][_retain].json``; returns the record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes (default 100 1000 on the CPU, 100 1000 10000 on the GPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS / PyTorch threads (default: the cores this process may use)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed blocks per library (default 20 at batch <= 200, else 8)")
    parser.add_argument("--block", type=int, default=10, help="steps per timed block (default 10)")
    parser.add_argument("--warmup-steps", type=int, default=1000,
                        help="plain Adam steps (batch 100) before timing, for the steady state")
    parser.add_argument("--libs", nargs="+", default=None, choices=LIBS,
                        help=f"default: {' '.join(CPU_LIBS)} on the CPU, {' '.join(GPU_LIBS)} on the GPU")
    parser.add_argument("--skip-fwd-bwd", action="store_true",
                        help="CPU: skip the forward+backward-only timing at a fresh initialization")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--machine", help="name in the output file (default: the GPU's with --device gpu, "
                                          "else from the CPU model)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    parser.add_argument("--no-save", action="store_true", help="print only; write no JSON")
    parser.add_argument("--max-seconds", type=float, default=170,
                        help="fewer repeats (at least 3) when the timing would take longer than this")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also run cProfile over this many minivae steps per batch size (in the JSON)")
    parser.add_argument("--retain-freed-memory", action="store_true",
                        help="glibc: never give freed memory back to the OS during the run (all libraries)")
    args = parser.parse_args(argv)
    retained = retain_freed_memory() if args.retain_freed_memory else False

    if args.device == "gpu":
        try:
            cupy_module()
        except DeviceError as exc:
            print(f"skipped: --device gpu needs CuPy and a CUDA device ({exc})")
            return None
    if args.batch is None:
        args.batch = [100, 1000, 10000] if args.device == "gpu" else [100, 1000]
    if args.libs is None:
        args.libs = list(GPU_LIBS if args.device == "gpu" else CPU_LIBS)
    wrong = set(args.libs) & {"torch-flush", "torch-graph", "minivae-graph"} - set(GPU_LIBS if args.device == "gpu" else CPU_LIBS)
    if wrong:
        parser.error(f"{', '.join(sorted(wrong))} cannot run with --device {args.device}")
    libs = [n for n in args.libs if not n.startswith("torch") or torch is not None]
    if "minivae" not in libs:
        libs.insert(0, "minivae")
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    with thread_limits(threads, torch):  # given back when main returns
        load_before = os.getloadavg()
        t_start = time.perf_counter()
        data = load_mnist(verbose=False)
        state, warm = warm_state(data, args.warmup_steps, seed=1)
        print(f"steady state after {warm['steps']} Adam steps: {json.dumps(warm)}", flush=True)
        # Timed batches: one binarized epoch (seed 2), cut into batches (views).
        host = next(iter(MinibatchLoader(data.x_train, len(data.x_train), seed=2).epoch(0))).copy()

        makers = {"minivae": MinivaeRunner, "numpy": NumpyRunner, "torch": TorchRunner,
                  "torch-flush": TorchFlushRunner, "torch-graph": TorchGraphRunner,
                  "minivae-graph": MinivaeGraphRunner,
                  "numpy-noflush": lambda state, device, seed: NumpyRunner(state, device, seed, flush_every=0)}
        info = machine_info()
        gpu = gpu_info() if args.device == "gpu" else None
        name = args.machine or default_machine_name(info, gpu)
        rows, agreement, repeats, fwd_bwd, errors = {}, {}, {}, {}, {}
        n_params = sum(a.size for a in state["params"])
        record = {
            "benchmark": "VAE training step (forward, backward, Adam), float32",
            "machine": dict(info, name=name),
            "device": args.device,
            "gpu": gpu,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "torch": torch.__version__ if torch is not None else None,
                         "threadpoolctl": threadpoolctl.__version__ if threadpoolctl is not None else None,
                         "minivae": mv.__version__, "git_commit": git_commit()},
            "threads": threads,
            "retain_freed_memory": retained,
            "blas": blas_info(),
            "torch_backends": ({"mkl": torch.backends.mkl.is_available(),
                                "mkldnn": torch.backends.mkldnn.is_available(),
                                "num_threads": torch.get_num_threads()} if torch is not None else None),
            "command": command_line(__file__, argv),
            "python_executable": sys.executable,
            "model": {"x_dim": 784, "hidden": [512, 256], "z_dim": Z_DIM, "parameters": int(n_params),
                      "dtype": "float32", "optimizer": f"Adam(lr={LR})"},
            "steady_state": warm,
            "timing": (f"ms per step: median (min, quartiles) over blocks of {args.block} steps; libraries "
                       "interleaved block by block in a random order each round (seeded)"),
            "repeats": repeats,
            "finished": False,  # true once every batch size (and the forward and backward part) is done
            "agreement": agreement,
            "results": rows,
            "forward_backward_only_fresh_init": fwd_bwd,
            "errors": errors,  # library -> where and why it failed; it was dropped from then on
        }
        suffix = ("" if args.device == "cpu" else f"_{args.device}") + ("_retain" if retained else "")
        path = None if args.no_save else Path(args.out) / f"train_step_{name}_t{threads}{suffix}.json"

        def save():
            """Bring the record's time, load and targets up to date and write it (if saving)."""
            record.update(seconds=round(time.perf_counter() - t_start, 1),
                          load_average={"before": [round(x, 2) for x in load_before],
                                        "after": [round(x, 2) for x in os.getloadavg()]},
                          targets=targets(rows, args.device))
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2) + "\n")

        for k, b in enumerate(args.batch):
            libs = [n for n in libs if n not in errors]  # a library that failed is out of the run
            host_batches = [host[i:i + b] for i in range(0, len(host) - b + 1, b)][:max(2, 20000 // b)]

            def fail(where):
                """The ``fail`` callback of a stage: a library's error at this batch size."""
                return lambda n, exc: drop_library(errors, n, f"batch {b}, {where}", exc)

            runners, batches = build_runners(libs, makers, state, args.device, host_batches, fail("setting up"))
            agreement[str(b)] = check_agreement(
                {n: r for n, r in runners.items() if n not in ("numpy-noflush", "torch-graph", "minivae-graph")},
                host_batches[0], seed=4, fail=fail("agreement check"))
            runners = {n: r for n, r in runners.items() if n not in errors}
            repeat = args.repeat or (20 if b <= 200 else 8)
            budget = (args.max_seconds - (time.perf_counter() - t_start)) / (len(args.batch) - k) * 0.8
            row = time_interleaved(runners, batches, repeat, args.block, budget_s=max(budget, 0),
                                   fail=fail("timing"))
            repeats[str(b)] = row.pop("_repeat")
            for n in list(row):
                try:
                    row[n].update(step_extras(runners[n], batches[n], b, args.device, args.profile))
                except Exception as exc:
                    drop_library(errors, n, f"batch {b}, after timing", exc)
                    del row[n]
            for v in row.values():
                v["images_per_s"] = round(b / v["ms_per_step"] * 1e3, 1)
            add_ratios(row)
            rows[str(b)] = row
            print(f"batch {b}: " + "   ".join(f"{n} {v['ms_per_step']:.2f} ms ({v['images_per_s']:.0f} img/s, "
                                             f"x{_fmt_ratio(v['time_ratio_to_minivae'])})" for n, v in row.items()),
                  flush=True)
            save()  # after each batch size: a run cut short keeps what it measured
            del runners, batches

        if args.device == "cpu" and not args.skip_fwd_bwd:
            fresh, _ = warm_state(data, 0, seed=1)
            for b in args.batch:
                host_batches = [host[i:i + b] for i in range(0, len(host) - b + 1, b)][:max(2, 20000 // b)]
                runners = {n: ForwardBackwardOnly(makers[n](fresh, "cpu", seed=3))
                           for n in libs if n in ("minivae", "numpy", "torch", "torch-flush") and n not in errors}
                batches = {n: [r.runner.batch(x) for x in host_batches] for n, r in runners.items()}
                budget = max(0.0, args.max_seconds - (time.perf_counter() - t_start)) * 0.2
                row = time_interleaved(
                    runners, batches, args.repeat or (20 if b <= 200 else 8), args.block, budget_s=budget,
                    fail=lambda n, exc: drop_library(errors, n, f"batch {b}, forward+backward only", exc))
                row.pop("_repeat")
                add_ratios(row)
                fwd_bwd[str(b)] = row
                print(f"batch {b}, forward+backward only (fresh initialization): " + "   ".join(
                    f"{n} {v['ms_per_step']:.2f} ms (x{_fmt_ratio(v['time_ratio_to_minivae'])})" for n, v in row.items()),
                    flush=True)
                del runners, batches

        record["finished"] = True
        save()
        print(json.dumps(record["targets"], indent=1))
        if errors:
            print("dropped from the run: " + json.dumps(errors, indent=1))
        if path is not None:
            print(f"wrote {path}")
        return record


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 2)  # 2: --device gpu without a GPU, nothing measured
