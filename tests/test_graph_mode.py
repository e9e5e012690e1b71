"""Graph mode's bookkeeping, checked on the CPU: the GPU trainer's code with NumPy standing in
for CuPy, the kernels' host builds and the stand-in cuBLAS (as in tests/test_kernels.py).

What a CUDA graph does is not simulated: a "capture" here runs the step's Python side once and
gives the device arrays it wrote their values back, and a "replay" runs the Python side again.
What is checked is everything graph mode computes instead of the eager step: the
table of per-step scalars (Adam's, from the learning-rate schedule and the bias corrections, and
the KL weight of warm-up), the step's noise offsets read from memory, the flush of the moments
every ten steps, the shorter last batch, the statistics summed on the device, and what a
checkpoint records. A run in graph mode must end with the bits of the same run with --eager, and
a graph-mode run interrupted and resumed with those of an uninterrupted one. The stand-in's
device arrays refuse to be read on the host while a capture or a replay runs the step's Python
side, as a real capture does. (The same comparison on a real GPU, with real captures: tests/test_gpu.py.)
"""
import json
import numbers
import sys
import types

import numpy as np
import pytest

import minivae.backend
import minivae.distributions
import minivae.gpu.cublas
import minivae.gpu.graph
import minivae.gpu.kernels
import minivae.graph_steps
from minivae import checkpoint, runs
from minivae.gpu import dispatch
from minivae.models import MODELS, VAE
from minivae.train import CHECKPOINT, Trainer
from test_kernels import fake_gpu, shim  # noqa: F401  (fixtures)
from test_loss_statistics import HostRead, HostReadGuard, guard
from test_train import config, small_data


def _host_state(graph_steps):
    """The host-side numbers a training step reads or changes (not its arrays): the learning rate
    and step counts of the optimizer, the noise generator's offset, the trainer's position, and
    the numbers the model's modules hold (per-epoch settings such as a temperature)."""
    trainer, opt = graph_steps.trainer, graph_steps.optimizer
    settings = [(m, {k: v for k, v in vars(m).items() if isinstance(v, numbers.Number)})
                for m in graph_steps.model.modules()]
    return (opt.lr, [dict(s).get("step") for s in opt.state], trainer.noise.offset, trainer.epoch, trainer.batch,
            settings)


def _set_host_state(graph_steps, state):
    trainer, opt = graph_steps.trainer, graph_steps.optimizer
    opt.lr, steps, offset, trainer.epoch, trainer.batch, settings = state
    for s, step in zip(opt.state, steps):
        if step is not None:
            s["step"] = step
    trainer.noise.load_state_dict(dict(trainer.noise.state_dict(), offset=offset))
    for module, values in settings:
        for name, value in values.items():
            setattr(module, name, value)


def _on_device(make):
    """``make`` (a NumPy array constructor), returning a ``HostReadGuard``."""
    return lambda *args, **kwargs: guard(make(*args, **kwargs))


def _asnumpy(a):
    """CuPy's copy to the host, refused during a capture."""
    if HostReadGuard.refusing:
        raise HostRead(f"cupy.asnumpy of an array of shape {np.shape(a)}: a host read")
    return np.asarray(a)


def _written_arrays(graph_steps):
    """The device arrays a training step writes, by name: the parameters (views of Adam's flat
    arrays), Adam's moments, the model's buffers (batch-norm statistics), the schedule's counter,
    row and offset, and the device's sums."""
    model, schedule = graph_steps.model, graph_steps.schedule
    arrays = {f"parameter {n}": p.data for n, p in model.named_parameters()}
    arrays.update({f"buffer {n}": b for n, b in model.named_buffers()})
    for i, state in enumerate(graph_steps.optimizer.state):
        arrays.update({f"moment {k} of parameter {i}": v for k, v in state.items() if k != "step"})
    arrays.update(counter=schedule.counter, current=schedule.current, offset=schedule.offset,
                  sums=graph_steps.sums, loss_sum=graph_steps.loss_sum)
    return arrays


class _Replayed:
    """Stands for CapturedStep. The capture runs the function's Python side once, as a real one
    does, refusing host reads (a capture raises on them, and so on a host draw of noise, which
    the trainer then reports), but it executes nothing: the device arrays the step wrote get
    their values back. A step that rebinds one of them (a new array where it should write in
    place) is refused: a graph would read the old one at every replay.

    A replay runs the Python side again, as it was at the capture: with the host-side numbers of
    that moment (a graph replays the arguments it captured), and leaving the host's numbers as
    they were (a replay changes device memory only). So a step that took a number from the host
    where it should read device memory ends with other bits than the eager steps."""

    capturing = False  # while a capture runs the Python side (tests that count a step's calls skip it)

    def __init__(self, fn):
        self.fn = fn
        self.graph_steps = fn.__closure__[0].cell_contents  # the GraphSteps whose _step fn calls
        self.at_capture = _host_state(self.graph_steps)
        self.replays = 0
        before = _written_arrays(self.graph_steps)
        values = {name: np.array(a, copy=True) for name, a in before.items()}
        HostReadGuard.refusing = _Replayed.capturing = True
        try:
            fn()
        finally:
            HostReadGuard.refusing = _Replayed.capturing = False
            for name, a in before.items():
                np.copyto(a, values[name])
        rebound = [name for name, a in _written_arrays(self.graph_steps).items() if a is not before.get(name)]
        if rebound:
            raise AssertionError(f"the step rebinds {rebound} instead of writing them in place: "
                                 "its replays would read the arrays of the capture")

    def replay(self):
        self.replays += 1
        live = _host_state(self.graph_steps)
        _set_host_state(self.graph_steps, self.at_capture)
        HostReadGuard.refusing = True  # the Python side runs as it did during the capture
        try:
            self.fn()
        finally:
            HostReadGuard.refusing = False
            _set_host_state(self.graph_steps, live)


@pytest.fixture
def fake_device(fake_gpu, fake_cublas, monkeypatch):
    """The GPU code paths of the trainer on NumPy arrays (see the module docstring), which refuse
    host reads while the step is captured or replayed."""
    fake_cp = types.SimpleNamespace(
        asarray=_on_device(np.asarray), asnumpy=_asnumpy, zeros=_on_device(np.zeros),
        zeros_like=_on_device(np.zeros_like), full=_on_device(np.full), empty=_on_device(np.empty),
        stack=_on_device(np.stack), copyto=np.copyto, add=np.add, logical_or=np.logical_or,
        isfinite=np.isfinite, int64=np.int64, uint64=np.uint64, float64=np.float64, bool_=np.bool_,
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(
            getDevice=lambda: 0, getDeviceProperties=lambda device: {"name": b"Stand-in GPU"})))
    kernels = fake_gpu[0]
    for name in ("empty", "empty_like", "zeros", "zeros_like", "ascontiguousarray"):
        monkeypatch.setattr(kernels.cp, name, _on_device(getattr(np, name)))
    monkeypatch.setattr(minivae.gpu.cublas.cp, "empty", _on_device(np.empty))
    monkeypatch.setattr(HostReadGuard, "refusing", False)  # but while the step is captured or replayed
    for module in (minivae.backend, minivae.distributions, minivae.gpu.graph):
        monkeypatch.setattr(module, "cupy_module", lambda: fake_cp)
    monkeypatch.setitem(sys.modules, "cupy", fake_cp)
    monkeypatch.setattr(dispatch, "is_gpu_array", lambda array: True)
    monkeypatch.setattr(minivae.distributions, "is_gpu_array", lambda array: True)
    monkeypatch.setattr(minivae.graph_steps, "CapturedStep", _Replayed)
    return fake_gpu[1]


def run(tmp_path, name, data, **kw):
    """A run of 3 epochs of batches of 80 on the GPU (the stand-in), KL warm-up over 2 (unless
    ``kw`` says otherwise). No step may say that it cannot be captured."""
    cfg = config(tmp_path / name, **{"device": "gpu", "epochs": 3, "batch_size": 80, "warmup": 2, **kw})
    lines = []
    trainer = Trainer(cfg, data=data, progress=False, log=lines.append)
    trainer.fit()
    assert not [line for line in lines if "cannot be captured" in line], lines
    return trainer


def final_state(trainer):
    arrays, meta = checkpoint.load(trainer.run_dir / CHECKPOINT)
    return arrays, {k: meta[k] for k in ("epoch", "batch", "noise")}


def assert_same_final_state(trainer, reference):
    """``trainer``'s checkpoint holds the bits of ``reference``'s: parameters, moments, position
    and the noise generator's offset."""
    (arrays, meta), (expected_arrays, expected_meta) = final_state(trainer), final_state(reference)
    assert meta == expected_meta
    assert arrays.keys() == expected_arrays.keys()
    for key in expected_arrays:
        np.testing.assert_array_equal(arrays[key], expected_arrays[key], err_msg=key)


def fit_until_interrupted(trainer, monkeypatch, step):
    """Run ``trainer.fit`` and stop it at optimizer step ``step``, as a Ctrl-C there would."""
    original = trainer._run_step

    def interrupt(xb, beta, s):
        if s == step:
            trainer.stop_requested.set()
        return original(xb, beta, s)

    monkeypatch.setattr(trainer, "_run_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


#: Each registered model's case: small settings (each case runs in a few seconds) and the number
#: of training images (300: each epoch ends with a batch of 60, which runs eagerly). A model
#: registered later gets the trainer's settings and 300 images until it is given its own here.
GRAPH_SETTINGS = {
    "vae": ({}, 300), "iwae": ({"iw_k": 3}, 320),
    "ladder": ({"hidden": (16, 8), "model_options": {"z_dims": (4, 3)}}, 300),
    "flow": ({"model_options": {"flows": 2}}, 320),
    "gumbel": ({"model_options": {"n_vars": 3, "n_classes": 4}}, 300),
    "adgm": ({"model_options": {"a_dim": 3}}, 300), "sdgm": ({}, 320),
    "m2": ({"n_labelled": 20}, 300), "adgm-ssl": ({"n_labelled": 20, "model_options": {"a_dim": 3}}, 320),
    "sdgm-ssl": ({"n_labelled": 20}, 320),
    "ladder-m2": ({"n_labelled": 20, "hidden": (16, 8), "model_options": {"z_dims": (4, 3)}}, 320),
    "m1m2": ({"n_labelled": 20}, 300),  # and M1, a VAE run trained first (``_m1_run``)
}
GRAPH_CASES = [(name, *GRAPH_SETTINGS.get(name, ({}, 300))) for name in MODELS] + [
    ("vae", {"mc_samples": 2, "beta": 0.5}, 320),
    ("vae", {"clip_norm": 2.0, "clip_value": 0.05, "weight_decay": 0.01}, 300),
    ("flow", {"optimizer": "rmsprop", "momentum": 0.9, "weight_decay": 0.01,
              "model_options": {"flows": 2, "annealing": "joint"}}, 300),
    ("vae", {"warmup": 10, "warmup_unit": "step", "warmup_start": 0.05}, 300),  # a KL weight per step
    ("m2", {"n_labelled": 20, "model_options": {"labelled_weight": "image"}}, 320),
    ("m2", {"n_labelled": 20, "labelled_batch_size": 1}, 300),  # the input buffer of one labelled image
    ("iwae", {"iw_k": 3, "model_options": {"layers": 2, "z1_dim": 6, "hidden2": (8,)}}, 300),
    ("ladder", {"hidden": (16, 8), "model_options": {"z_dims": (4, 3), "up_input": "mean",
                                                     "variance": "softplus", "batch_norm_heads": True}}, 300),
    ("ladder", {"hidden": (16, 8), "bn_statistics": "pass", "model_options": {"z_dims": (4, 3)}}, 300)]


def _m1_run(tmp_path, data):
    """The folder of a VAE run (one epoch on the CPU), M1 of an M1+M2 case."""
    Trainer(config(tmp_path / "m1", epochs=1, batch_size=80, z_dim=6), data=data, progress=False,
            log=lambda *a: None).fit()
    return str(tmp_path / "m1" / "run")


def test_every_graph_setting_is_of_a_registered_model():
    assert set(GRAPH_SETTINGS) <= set(MODELS)


def eager_and_graph_runs(tmp_path, model, extra, n_train):
    """The eager and the graph-mode run of a ``GRAPH_CASES`` case, checked to end with the same
    bits: parameters, moments, position and noise offset. The graph-mode run's step is captured
    and says nothing about a capture. (Shared with tests/test_gpu.py, which runs it with real
    captures.)"""
    data = small_data(n_train=n_train, n_eval=20)
    if model == "m1m2":
        extra = dict(extra, model_options={"m1": _m1_run(tmp_path, data)})
    eager = run(tmp_path, "eager", data, model=model, eager=True, **extra)
    graph = run(tmp_path, "graph", data, model=model, **extra)
    assert eager.graph is None and graph.graph is not None
    assert_same_final_state(graph, eager)
    return eager, graph


@pytest.mark.parametrize("model, extra, n_train", GRAPH_CASES)
def test_graph_mode_ends_with_the_bits_of_eager_steps(fake_device, tmp_path, model, extra, n_train):
    """Every registered model: 3 epochs of 4 batches of 80 (with 300 images the last is 60, and
    runs eagerly), KL warm-up over 2 epochs, a cosine learning rate and a flush of the moments
    at step 10. The graph-mode run replays the captured step and ends with the bits of the eager
    run."""
    eager, graph = eager_and_graph_runs(tmp_path, model, extra, n_train)
    full_batches = n_train // 80  # replayed in the last epoch
    assert sum(g.replays for g in graph.graph.graphs.values()) == full_batches
    metrics = [[line for line in t.run_dir.joinpath("metrics.jsonl").read_text().splitlines()] for t in (eager, graph)]
    assert len(metrics[0]) == len(metrics[1]) == 3
    for le, lg in zip(*metrics):
        e, g = json.loads(le), json.loads(lg)
        assert g["lr"] == e["lr"] and g.get("beta") == e.get("beta")  # (no KL weight for the IWAE bound)
        assert g["device"] == e["device"] == "gpu" and g["gpu"] == e["gpu"] == "Stand-in GPU"  # its name
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-5)  # summed in float32 on the device


def _record_steps(trainer):
    """Record (unlabelled images, labelled images, statistics) of every training step of
    ``trainer`` run eagerly, into the returned list."""
    model, steps = trainer.model, []
    loss = model.loss

    def recording(x, noise, beta=None, **labelled):
        out = loss(x, noise, beta, **labelled)
        n_labelled = len(labelled["labelled"][0]) if labelled else 0
        steps.append((len(x), n_labelled, {k: float(v) for k, v in out[1].items()}))
        return out
    model.loss = recording
    return steps


@pytest.mark.parametrize("model, extra, batch_size", [("vae", {}, 80), ("m2", {"n_labelled": 40}, 30),
                                                      ("m2", {"n_labelled": 20}, 80),
                                                      ("m2", {"n_labelled": 40, "labelled_batch_size": 7}, 30)])
def test_graph_mode_train_statistics_are_means_over_the_images(fake_device, tmp_path, model, extra, batch_size):
    """250 images in batches of 80: the three full batches of an epoch are replayed, their
    statistics summed on the device, and the last, of 10 images, runs eagerly (for M2 in batches
    of 30 also the steps whose labelled batch is the 10 left of 40 labels, or with labelled
    batches of 7 the 5 left; with 20 labels in batches of 80, every replay has 20 labelled images
    and 80 unlabelled ones); each epoch's statistics are still means over its images, as the
    eager run's steps give them, weighted by hand."""
    data = small_data(n_train=250, n_eval=20)
    kw = dict(device="gpu", model=model, epochs=2, batch_size=batch_size, warmup=0, **extra)
    eager = Trainer(config(tmp_path / "eager", eager=True, **kw), data=data, progress=False, log=lambda *a: None)
    steps = _record_steps(eager)
    eager.fit()
    graph = Trainer(config(tmp_path / "graph", **kw), data=data, progress=False, log=lambda *a: None)
    graph.fit()
    assert sum(g.replays for g in graph.graph.graphs.values()) > 0
    per_epoch = len(eager.loader)
    for epoch, line in enumerate(runs.read_metrics(graph.run_dir)):
        epoch_steps = steps[per_epoch * epoch:per_epoch * (epoch + 1)]
        for name in epoch_steps[0][2]:
            sizes = np.array([n_l if name in graph.model.labelled_statistics else n for n, n_l, _ in epoch_steps])
            want = np.dot(sizes, [stats[name] for _, _, stats in epoch_steps]) / sizes.sum()
            assert line[f"train_{name}"] == pytest.approx(want, rel=1e-5), (epoch, name)  # float32 sums


class _AnnealedVAE(VAE):
    """A VAE with a per-epoch setting, as the Gumbel-softmax VAE's temperature: a factor on the
    KL weight that ``set_epoch`` changes, a Python number, which a graph captures as it was."""

    factor = 1.0

    def set_epoch(self, epoch):
        self.factor = 1.0 / (epoch + 1)

    def loss(self, x, noise, beta=None):
        return super().loss(x, noise, beta=self.factor * (self.beta if beta is None else beta))


def test_a_per_epoch_setting_holds_in_the_graphs_of_its_epoch(fake_device, tmp_path, monkeypatch):
    """The step is captured again at the start of every epoch, so replays run with the settings
    ``set_epoch`` gave the model for that epoch: the bits of the eager run."""
    monkeypatch.setitem(MODELS, "vae", _AnnealedVAE)
    data = small_data(n_train=320, n_eval=20)
    eager = run(tmp_path, "eager", data, eager=True)
    graph = run(tmp_path, "graph", data)
    assert isinstance(graph.model, _AnnealedVAE) and graph.model.factor == 1 / 3
    assert_same_final_state(graph, eager)


def test_each_capture_holds_the_schedule_of_its_epoch_only(fake_device, tmp_path, monkeypatch):
    """The schedule in device memory holds the steps from the capture to the end of its epoch (3
    epochs of 4 batches: the first step eager, then steps 1-3, 4-7, 8-11), not the rest of the
    run, which for the IWAE paper's 3,280 epochs of batches of 20 was 8.2 million rows built on the
    host at the start of every training; and the run ends with the bits of the eager one."""
    from minivae.graph_steps import GraphSteps

    captured, capture = [], GraphSteps.capture

    def recording(self, t):
        capture(self, t)
        captured.append((t, self.schedule.steps))
    monkeypatch.setattr(GraphSteps, "capture", recording)
    data = small_data(n_train=320, n_eval=20)
    graph = run(tmp_path, "graph", data, lr_schedule="stages")
    assert captured == [(1, 3), (4, 4), (8, 4)]
    assert_same_final_state(graph, run(tmp_path, "eager", data, lr_schedule="stages", eager=True))


@pytest.mark.parametrize("n_labelled", [20, 25])
def test_a_shorter_labelled_batch_runs_eagerly(fake_device, tmp_path, n_labelled):
    """Batches of 8 over 80 images, all of one size, but the labelled ones come 8, 8, 4 (20) or
    8, 8, 8, 1 (25): a step with a shorter labelled batch runs eagerly, so the run ends with the
    bits of the eager run."""
    data = small_data(n_train=80, n_eval=20)
    kw = dict(device="gpu", model="m2", n_labelled=n_labelled, epochs=1, batch_size=8)
    eager = Trainer(config(tmp_path / "eager", eager=True, **kw), data=data, progress=False, log=lambda *a: None)
    graph = Trainer(config(tmp_path / "graph", **kw), data=data, progress=False, log=lambda *a: None)
    eager.fit()
    graph.fit()
    assert graph.graph is not None
    assert_same_final_state(graph, eager)


def test_the_flush_graph_runs_on_the_tenth_step(fake_device, tmp_path):
    data = small_data(n_train=300, n_eval=20)
    trainer = Trainer(config(tmp_path, device="gpu", epochs=3, batch_size=80), data=data, progress=False,
                      log=lambda *a: None)
    flushes = []
    original = trainer.optimizer.step

    def step(flush=None):
        if not _Replayed.capturing:
            flushes.append(flush)
        return original(flush=flush)

    trainer.optimizer.step = step
    trainer.fit()
    # Steps 1 .. 12: the first and each epoch's last (60 images) run eagerly, where the optimizer
    # decides (None); the replays pass the flush of their graph: the one with it at step 10.
    eager = {1, 4, 8, 12}
    assert flushes == [None if t in eager else t == 10 for t in range(1, 13)]


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("model, extra, n_train", GRAPH_CASES)
def test_every_model_resumes_to_the_bits_of_the_run_not_interrupted(request, tmp_path, monkeypatch, model, extra,
                                                                     n_train, device):
    """Interrupted in the middle of epoch 2 and resumed: the bits of the run that was not
    interrupted, for every registered model, on the CPU and in graph mode (on the stand-in: a
    checkpoint of replayed steps)."""
    if device == "gpu":
        request.getfixturevalue("fake_device")
    data = small_data(n_train=n_train, n_eval=20)
    if model == "m1m2":
        extra = dict(extra, model_options={"m1": _m1_run(tmp_path, data)})

    def trainer(name):
        settings = {"device": device, "epochs": 3, "batch_size": 80, "warmup": 2, "model": model, **extra}
        cfg = config(tmp_path / name, **settings)
        return Trainer(cfg, data=data, progress=False, log=lambda *a: None)

    whole, cut = trainer("whole"), trainer("cut")
    whole.fit()
    fit_until_interrupted(cut, monkeypatch, 6)
    assert (cut.epoch, cut.batch) == (1, 3)
    resumed = trainer("cut")
    resumed.fit(resume=True)
    assert_same_final_state(resumed, whole)


def test_a_last_step_run_first_is_run_eagerly_and_nothing_is_captured(fake_device, tmp_path, monkeypatch):
    """A GPU run of one step (one batch of 80, one epoch), and a resume with one step left, have
    no step to replay after the eager one: nothing is captured, and the runs end with the bits
    of the same runs with --eager."""
    data = small_data(n_train=80, n_eval=20)

    def trainer(name, epochs, **kw):
        cfg = config(tmp_path / name, device="gpu", epochs=epochs, batch_size=80, **kw)
        return Trainer(cfg, data=data, progress=False, log=lambda *a: None)

    eager, graph = trainer("eager", 1, eager=True), trainer("graph", 1)
    eager.fit()
    graph.fit()
    assert graph.graph is None
    assert_same_final_state(graph, eager)
    whole, cut = trainer("whole", 3, eager=True), trainer("cut", 3)
    whole.fit()
    fit_until_interrupted(cut, monkeypatch, 1)
    assert (cut.epoch, cut.batch) == (1, 1) and cut.graph is not None  # step 1 was a replay
    resumed = trainer("cut", 3)
    resumed.fit(resume=True)
    assert resumed.graph is None
    assert_same_final_state(resumed, whole)


def test_a_step_that_cannot_be_captured_trains_eagerly_and_says_why(fake_device, tmp_path, monkeypatch):
    data = small_data(n_train=300, n_eval=20)
    eager = run(tmp_path, "eager", data, eager=True)

    def refuse(fn):
        raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")

    monkeypatch.setattr(minivae.graph_steps, "CapturedStep", refuse)
    lines = []
    trainer = Trainer(config(tmp_path / "g", device="gpu", epochs=3, batch_size=80, warmup=2), data=data,
                      progress=False, log=lines.append)
    trainer.fit()
    notes = [line for line in lines if "cannot be captured" in line]
    assert len(notes) == 1 and "cuBLAS API during stream capture" in notes[0] and "training eagerly" in notes[0]
    assert trainer.graph is None
    (a_eager, _), (a_graph, _) = final_state(eager), final_state(trainer)
    for key in a_eager:
        np.testing.assert_array_equal(a_graph[key], a_eager[key], err_msg=key)


def test_tracing_gradients_trains_eagerly_and_says_so(fake_device, tmp_path):
    lines = []
    trainer = Trainer(config(tmp_path, device="gpu", epochs=1, batch_size=80, trace_every=2),
                      data=small_data(n_train=160, n_eval=20), progress=False, log=lines.append)
    trainer.fit()
    notes = [line for line in lines if "--trace-every" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and notes[0].endswith("training eagerly")
    assert trainer.graph is None


def test_a_non_finite_loss_in_a_replayed_step_never_reaches_a_checkpoint(fake_device, tmp_path, monkeypatch):
    """The sum of the losses on the device is read before every checkpoint: a NaN loss in a
    replay of epoch 2 stops the run at the end of that epoch, and the checkpoint on disk stays
    the one of epoch 1."""
    from minivae.train import TrainingDiverged

    data = small_data(n_train=320, n_eval=20)
    trainer = Trainer(config(tmp_path, device="gpu", epochs=3, batch_size=80, warmup=2), data=data,
                      progress=False, log=lambda *a: None)
    calls = {"n": 0}
    original = trainer.model.loss

    def loss(*args, **kwargs):
        if not _Replayed.capturing:
            calls["n"] += 1
        value, stats = original(*args, **kwargs)
        return (value * float("nan") if calls["n"] == 6 else value), stats

    monkeypatch.setattr(trainer.model, "loss", loss)
    with pytest.raises(TrainingDiverged, match="NaN or infinite before epoch 2, batch 4.*at the end of epoch 1"):
        trainer.fit()
    arrays, meta = checkpoint.load(trainer.run_dir / CHECKPOINT)
    assert (meta["epoch"], meta["batch"]) == (1, 0)
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


@pytest.mark.parametrize("kind", ["normal", "uniform", "gumbel"])
def test_a_host_draw_in_a_captured_step_is_refused_saying_why(kind):
    """A captured step's noise comes from the kernels, with its offset in device memory: a host
    draw (noise.normal, noise.uniform, noise.gumbel) is refused, and the error, which the
    trainer's note quotes, says what the step did and why a graph cannot do it."""
    noise = minivae.gpu.graph.StepNoise(3, 1, offset_from=np.zeros(1, dtype=np.uint64))
    with pytest.raises(ValueError, match=rf"draws {kind} noise on the host \(noise\.{kind}\), which a "
                                         "CUDA graph would replay as the same numbers at every step"):
        getattr(noise, kind)((2, 3))
    assert noise.offset == 0  # the refused draw took no offset


def test_the_loaders_gpu_path_serves_the_cpu_batches(fake_device):
    """MinibatchLoader(device="gpu") on the stand-in: its epoch order comes from the Philox kernel
    (host build) and equals the CPU loader's, batch for batch and label for label. (On a real GPU,
    with the bits drawn there too: tests/test_gpu.py.)"""
    from minivae.data import MinibatchLoader

    data = small_data(n_train=300, n_eval=20)
    cpu = MinibatchLoader(data.x_train, 64, seed=3, y=data.y_train)
    gpu = MinibatchLoader(data.x_train, 64, seed=3, y=data.y_train, device="gpu")
    for epoch in (0, 5):
        got, want = list(gpu.epoch(epoch)), list(cpu.epoch(epoch))
        assert len(got) == len(want) == 5
        for (xg, yg), (xc, yc) in zip(got, want):
            np.testing.assert_array_equal(xg, xc)
            np.testing.assert_array_equal(yg, yc)
    assert any(call[0] == "mv_philox_words" for call in fake_device)


class _FakeCapturingCuPy:
    """The CuPy calls CapturedStep makes, recorded in order (no GPU)."""

    def __init__(self):
        self.events = []
        events = self.events

        class Stream:
            def __init__(self, non_blocking=False):
                self.name = "side" if non_blocking else "current"

            def __enter__(self):
                events.append(f"enter {self.name}")

            def __exit__(self, *exc):
                events.append(f"exit {self.name}")

            def synchronize(self):
                events.append(f"synchronize {self.name}")

            def begin_capture(self):
                events.append("begin_capture")

            def end_capture(self):
                events.append("end_capture")
                return Graph()

        class Graph:
            def launch(self, stream):
                events.append(f"launch on {stream.name}")

            def debug_dot_str(self):  # cudaGraphDebugDotPrint's form: a node, its label, the edges
                return DOT_OF_THREE_NODES

        class Allocator:
            def __init__(self, malloc):
                self.malloc = malloc

            def __enter__(self):
                events.append("pool allocator on")

            def __exit__(self, *exc):
                events.append("pool allocator off")

        class MemoryPool:
            def malloc(self, size):
                return size

        current = Stream()
        self.cuda = types.SimpleNamespace(MemoryPool=MemoryPool, Stream=Stream, using_allocator=Allocator,
                                          get_current_stream=lambda: current)


def test_captured_step_records_fn_on_its_stream_and_pool_and_replays_on_the_current(monkeypatch):
    fake = _FakeCapturingCuPy()
    monkeypatch.setattr(minivae.gpu.graph, "cupy_module", lambda: fake)
    step = minivae.gpu.graph.CapturedStep(lambda: fake.events.append("fn"))
    step.replay()
    assert fake.events == ["synchronize current", "pool allocator on", "enter side", "begin_capture", "fn",
                           "end_capture", "exit side", "pool allocator off", "launch on current"]


#: CUDA's DOT description of a graph of three nodes (the form of cudaGraphDebugDotPrint)
DOT_OF_THREE_NODES = """digraph dot {
subgraph cluster_1 {
label="graph_1" graph[style="dashed"];
"graph_1_node_0"[style="bold" shape="record" label="{KERNEL
| {ID | 0 (topoId: 2) | mv_bias_act_f32\\<\\<\\<25,256,0\\>\\>\\>}
}"];
"graph_1_node_1"[style="solid" shape="record" label="{
MEMSET
| {ID | 1 (topoId: 1)}
}"];
"graph_1_node_2"[style="bold" shape="record" label="{KERNEL
| {ID | 2 (topoId: 0) | mv_adam_f32\\<\\<\\<528,256,0\\>\\>\\>}
}"];
"graph_1_node_0" -> "graph_1_node_1";
"graph_1_node_1" -> "graph_1_node_2";
}
}
"""


def test_a_captured_step_counts_the_nodes_of_its_graph(monkeypatch):
    fake = _FakeCapturingCuPy()
    monkeypatch.setattr(minivae.gpu.graph, "cupy_module", lambda: fake)
    assert minivae.gpu.graph.CapturedStep(lambda: None).nodes() == 3


@pytest.mark.parametrize("error", [NotImplementedError("calling cuBLAS API during stream capture is currently "
                                                       "unsupported"), KeyboardInterrupt("during stream capture")])
def test_a_capture_that_fails_ends_the_capture_and_raises_the_reason(monkeypatch, error):
    """(An interrupt too: the stream is left usable for what the trainer does next.)"""
    fake = _FakeCapturingCuPy()
    monkeypatch.setattr(minivae.gpu.graph, "cupy_module", lambda: fake)

    def refused():
        raise error

    with pytest.raises(type(error), match="during stream capture"):
        minivae.gpu.graph.CapturedStep(refused)
    assert fake.events[-3:] == ["end_capture", "exit side", "pool allocator off"]


def test_a_schedule_loads_its_kernel_when_made_and_needs_an_offset_a_step(monkeypatch):
    """StepSchedule loads mv_step_advance when it is made, before any capture (a capture should
    record launches only), and refuses offsets that are not one per row of scalars."""
    loaded = []
    fake_cp = types.SimpleNamespace(asarray=np.asarray, zeros=np.zeros, int64=np.int64, float64=np.float64,
                                    uint64=np.uint64)
    monkeypatch.setattr(minivae.gpu.graph, "cupy_module", lambda: fake_cp)
    monkeypatch.setattr(minivae.gpu.kernels, "get_function", lambda name: loaded.append(name) or (lambda *args: None))
    rows = np.zeros((3, len(minivae.gpu.graph.COLUMNS)))
    assert minivae.gpu.graph.StepSchedule(rows, np.arange(3)).steps == 3
    assert loaded == ["mv_step_advance"]
    with pytest.raises(ValueError, match=r"one offset a step, got \(3, 4\) and \(2,\)"):
        minivae.gpu.graph.StepSchedule(rows, np.arange(2))


def _benchmark(name, monkeypatch):
    """The script benchmarks/<name>.py as a module, on the fake device (whose synchronize has
    nothing to wait for: the fake runs each call at once)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    device = types.SimpleNamespace(synchronize=lambda: None)
    monkeypatch.setattr(sys.modules["cupy"].cuda, "Device", lambda: device, raising=False)
    return bench


def test_the_step_benchmark_times_graph_mode(fake_device, monkeypatch):
    """benchmarks/bench_train_step.py's minivae-graph runner (the trainer's step captured, then
    replayed) goes through the benchmark's timing loop: its loss is only summed on the device,
    so no last loss is reported, and the replays train (the parameters move)."""
    bench = _benchmark("bench_train_step", monkeypatch)
    state, _ = bench.warm_state(None, 0, seed=0)
    runner = bench.MinivaeGraphRunner(state, "gpu", seed=0)
    x = (np.random.default_rng(0).random((3, 4, 784)) < 0.5).astype(np.float32)
    before = [p.data.copy() for p in runner.model.parameters()]
    out = bench.time_interleaved({"minivae-graph": runner}, {"minivae-graph": [runner.batch(b) for b in x]},
                                 repeat=1, block=2)
    row = out["minivae-graph"]
    assert row["last_loss"] is None and row["ms_per_step"] > 0
    assert runner.t == 5  # the step count: the eager step of the capture, then a replay per call
    assert any(not np.array_equal(p.data, b) for p, b in zip(runner.model.parameters(), before))


@pytest.mark.parametrize("captured", [True, False])
def test_the_epoch_benchmark_reports_graph_mode_only_when_it_ran(fake_device, monkeypatch, captured):
    """benchmarks/bench_epoch.py's minivae-graph row is graph mode's epoch: when the step cannot
    be captured (the trainer then trains eagerly), the row is dropped and the trainer's note kept."""
    bench = _benchmark("bench_epoch", monkeypatch)
    monkeypatch.setattr(sys.modules["cupy"], "__version__", "fake", raising=False)
    monkeypatch.setattr(bench, "gpu_info", lambda: {"name": "fake"})
    monkeypatch.setattr(bench, "load_mnist", lambda verbose: small_data(n_train=100, n_eval=20))
    if not captured:
        def refused(fn):
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        monkeypatch.setattr(minivae.graph_steps, "CapturedStep", refused)
    r = bench.main(["--device", "gpu", "--libs", "minivae", "minivae-graph", "--batch", "20", "--chunk", "2",
                    "--no-save"])
    assert r["graph_mode"]["active"] == captured
    if captured:
        assert set(r["results"]) == {"minivae", "minivae-graph"} and r["errors"] == {}
    else:
        assert set(r["results"]) == {"minivae"}
        assert "cannot be captured" in r["errors"]["minivae-graph"]
        assert any("cuBLAS API during stream capture" in note for note in r["graph_mode"]["notes"])
