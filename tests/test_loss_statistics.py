"""What every model's ``loss`` returns and takes, for a training step that never waits on the host.

A captured GPU step may not copy anything back to the host, and the KL weight changes between its
replays, so every model's loss (1) returns its statistics as 0-d arrays of its float dtype,
made without a host read, and (2) takes ``beta`` as a Python number or as a 0-d array, with the
same bits either way. The host-read check runs on the CPU: parameters, buffers and inputs are
viewed as ``HostReadGuard``, an ndarray whose conversions to Python values raise; NumPy's
ufuncs, reductions and methods hand the subclass on to their results, so a ``float(...)``,
``.item()`` or ``if array:`` anywhere on their path raises ``HostRead``.

What the guard cannot see: code that first turns an array into a plain ndarray (``np.asarray``,
``np.where``, ``np.einsum`` and other functions that are not ufuncs return plain arrays) and only
then reads it; arrays made afresh from Python values (the noise, constants) until they meet a
guarded one; and labels, which stay plain integer arrays here because ``one_hot`` checks their
range on the host (a read a captured step must leave out). The guard reaches the loss and every
gradient but those in ``UNGUARDED_GRADIENTS`` (``test_the_guard_reaches_the_loss_and_every_gradient``).
"""
import numpy as np
import pytest

import minivae as mv
from minivae import backend, train
from minivae.models import (ADGM, M1M2, M2, MODELS, SDGM, VAE, FlowVAE, GumbelSoftmaxVAE,
                            LadderM2, LadderVAE, SemiSupervisedADGM, SemiSupervisedSDGM)
from minivae.models.iwae import TwoLayerVAE
from minivae.random import Generator
from minivae.train import Trainer

D, K = 10, 4

#: name -> (what ``minivae models`` calls it, constructor); every registered model appears.
CASES = {
    "vae": ("vae", lambda: VAE(x_dim=D, z_dim=3, hidden=(6,))),
    "beta-vae": ("vae", lambda: VAE(x_dim=D, z_dim=3, hidden=(6,), beta=4.0)),
    "vae-mc3": ("vae", lambda: VAE(x_dim=D, z_dim=3, hidden=(6,), mc_samples=3)),
    "iwae-k4": ("iwae", lambda: VAE(x_dim=D, z_dim=3, hidden=(6,), iw_k=4)),
    "iwae-2-layers": ("iwae", lambda: TwoLayerVAE(x_dim=D, z_dims=(4, 3), blocks=((6,), (5,)), iw_k=3)),
    "two-layer-elbo": ("iwae", lambda: TwoLayerVAE(x_dim=D, z_dims=(4, 3), blocks=((6,), (5,)))),
    "ladder": ("ladder", lambda: LadderVAE(x_dim=D, hidden=(8, 6), z_dims=(4, 3), activation="tanh")),
    "flow": ("flow", lambda: FlowVAE(x_dim=D, z_dim=3, hidden=(6,), flows=2)),
    "gumbel": ("gumbel", lambda: GumbelSoftmaxVAE(x_dim=D, hidden=(6,), n_vars=3, n_classes=K)),
    "adgm": ("adgm", lambda: ADGM(x_dim=D, a_dim=2, z_dim=3, hidden=(6, 5))),
    "sdgm": ("sdgm", lambda: SDGM(x_dim=D, a_dim=2, z_dim=3, hidden=(6, 5), mc_samples=2)),
    "m2": ("m2", lambda: M2(x_dim=D, z_dim=3, hidden=(6,), num_classes=K, alpha=2.0, mc_samples=2)),
    "adgm-ssl": ("adgm-ssl", lambda: SemiSupervisedADGM(x_dim=D, a_dim=2, z_dim=3, hidden=(6, 5),
                                                        num_classes=K, alpha=2.0)),
    "sdgm-ssl": ("sdgm-ssl", lambda: SemiSupervisedSDGM(x_dim=D, a_dim=2, z_dim=3, hidden=(6, 5),
                                                        num_classes=K, alpha=2.0)),
    "ladder-m2": ("ladder-m2", lambda: LadderM2(x_dim=D, hidden=(8, 6), z_dims=(4, 3), num_classes=K,
                                                activation="tanh", alpha=2.0)),
    "m1m2": ("m1m2", lambda: M1M2(m1=VAE(x_dim=D, z_dim=4, hidden=(6,)), z_dim=3, hidden=(5,),
                                  num_classes=K, alpha=2.0)),
}
DTYPES = [np.float32, np.float64]


class HostRead(AssertionError):
    """A model's loss or backward converted an array to a Python value (a device-to-host read)."""


def _refused(name):
    """ndarray's method ``name``, raising ``HostRead`` instead while ``HostReadGuard.refusing``."""

    def read(self, *args):
        if HostReadGuard.refusing:
            raise HostRead(f"{name} of a {self.dtype} array of shape {self.shape}: a host read")
        return getattr(np.ndarray, name)(self, *args)

    return read


class HostReadGuard(np.ndarray):
    """An ndarray standing for a device array: its conversions to Python values raise
    ``HostRead`` (see the module docstring) while ``refusing`` is set (always, but where a test
    turns it off outside the code it watches), and its indexing gives 0-d arrays where NumPy's
    gives scalars, as CuPy's does, so that an element read stays watched."""

    refusing = True
    item, tolist, __float__, __int__, __index__, __bool__, __complex__ = map(_refused, (
        "item", "tolist", "__float__", "__int__", "__index__", "__bool__", "__complex__"))

    def __getitem__(self, index):
        out = super().__getitem__(index)
        return out if isinstance(out, np.ndarray) else guard(np.asarray(out))


def guard(array):
    return array.view(HostReadGuard)


def build(name, dtype):
    mv.nn.init.manual_seed(0)
    return CASES[name][1]().astype(dtype)


def batch(model, dtype, guarded=False, device="cpu"):
    """x and the arguments of ``model.loss`` after the noise: a labelled batch for the models with
    labels (the labels stay NumPy integers, as the trainer's labelled batches may)."""
    rng = np.random.default_rng(1)
    x = (rng.random((5, D)) < 0.5).astype(dtype)
    x_l = (rng.random((K, D)) < 0.5).astype(dtype)
    wrap = guard if guarded else (lambda a: a)
    extra = {"labelled": (mv.tensor(wrap(x_l)).to(device), np.arange(K))} if model.semi_supervised else {}
    return mv.tensor(wrap(x)).to(device), extra


def step(model, dtype, beta, guarded=False, device="cpu"):
    """loss, statistics and gradients of one loss and backward on a fixed batch and noise."""
    x, extra = batch(model, dtype, guarded, device)
    model.zero_grad()
    loss, stats = model.loss(x, Generator(3), beta=beta, **extra)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss, stats, grads


def test_every_registered_model_is_covered():
    assert {registered for registered, _ in CASES.values()} == set(MODELS)


@pytest.mark.parametrize("name", CASES)
def test_the_labelled_statistics_are_those_a_labelled_batch_adds(name):
    """``labelled_statistics`` name the statistics that are means over the labelled batch, which
    the trainer averages over the labelled images: those a labelled batch adds to the loss's."""
    model = build(name, np.float64)
    x, extra = batch(model, np.float64)
    with_labels = model.loss(x, Generator(3), **extra)[1]
    without = model.loss(x, Generator(3))[1]
    assert set(model.labelled_statistics) == set(with_labels) - set(without)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_statistics_are_0d_arrays_of_the_model_dtype(name, dtype):
    model = build(name, dtype)
    loss, stats, _ = step(model, dtype, beta=None)
    for key, value in stats.items():
        assert type(value) is np.ndarray and value.shape == () and value.dtype == dtype, key
    assert stats["loss"] == loss.data
    if model.semi_supervised:
        assert set(stats) == {"elbo", "labelled_bound", "class_loss", "loss"}
    elif model.iw_k > 1:
        assert set(stats) == {"loss", "bound"} and stats["bound"] == -stats["loss"]
    else:
        assert {"loss", "elbo", "rec", "kl"} <= set(stats)
        rec, kl = model.elbo(batch(model, dtype)[0], Generator(3))
        assert stats["rec"] == rec.data.mean() and stats["kl"] == kl.data.mean()
        assert stats["elbo"] == stats["rec"] - stats["kl"]


@pytest.mark.parametrize("name", sorted(n for n in CASES if not n.startswith("iwae")))
def test_the_statistics_are_the_bounds_whatever_the_kl_weight(name):
    """Warm-up and beta weight the KL terms of the loss only: "elbo" (and a semi-supervised
    model's "labelled_bound") are the bounds themselves, the same bits at any weight."""
    model = build(name, np.float64)
    loss_1, stats_1, _ = step(model, np.float64, 1.0)
    loss_w, stats_w, _ = step(model, np.float64, 0.3)
    assert loss_w.data != loss_1.data
    del stats_1["loss"], stats_w["loss"]
    assert "elbo" in stats_1 and {k: bits(v) for k, v in stats_w.items()} == {k: bits(v) for k, v in stats_1.items()}


@pytest.mark.parametrize("name", sorted(n for n in CASES if not n.startswith("iwae")))
def test_the_elbo_is_the_bound_whatever_the_models_kl_weight(name):
    """``elbo`` (what evaluation and the validation ELBO report) gives the bound itself: a model
    built with a KL weight (beta-VAE) gives the bits of the same model at beta = 1."""
    model = build(name, np.float64)
    x, _ = batch(model, np.float64)
    model.beta = 1.0
    want = [t.data for t in model.elbo(x, Generator(3))]
    model.beta = 0.3
    got = [t.data for t in model.elbo(x, Generator(3))]
    assert [bits(a) for a in got] == [bits(a) for a in want]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_beta_as_a_0d_array_gives_the_bits_of_the_number(name, dtype):
    """The warm-up path: the trainer overrides the model's beta, as a number on the CPU and as a
    0-d device array in a captured GPU step. 0.3 is not a float32 number: both forms round it
    the same way."""
    assert_beta_forms_agree(build(name, dtype), dtype, np)


def bits(array):
    return backend.to_device(array, "cpu").tobytes()


def assert_beta_forms_agree(model, dtype, xp, device="cpu"):
    """Loss, statistics and gradients with beta = 0.3 as a number and as a 0-d ``xp`` array are
    the same bits, in the model's dtype; and beta matters (unless the loss is the IWAE bound)."""
    loss, stats, grads = step(model, dtype, 0.3, device=device)
    loss_a, stats_a, grads_a = step(model, dtype, xp.asarray(0.3, dtype=dtype), device=device)
    assert loss_a.dtype == dtype and bits(loss.data) == bits(loss_a.data)
    assert {k: bits(v) for k, v in stats.items()} == {k: bits(v) for k, v in stats_a.items()}
    assert grads.keys() == grads_a.keys()
    for n in grads:
        assert grads_a[n].dtype == dtype and bits(grads[n]) == bits(grads_a[n]), n
    other = step(model, dtype, xp.asarray(0.6, dtype=dtype), device=device)[0]
    if getattr(model, "iw_k", 1) > 1:  # minus the IWAE bound: beta does not apply
        assert bits(other.data) == bits(loss.data)
    else:  # beta reaches the loss, so the comparison above could fail
        assert bits(other.data) != bits(loss.data)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["vae", "vae-mc3", "iwae-k4", "gumbel", "m2", "sdgm-ssl"])
def test_on_the_gpu_beta_may_live_in_device_memory(name, dtype):
    """The same with CuPy: a 0-d device array multiplies the KL through the Tensor's own operator,
    and the statistics are 0-d device arrays."""
    cp = pytest.importorskip("cupy")
    model = build(name, dtype).to("gpu")
    assert_beta_forms_agree(model, dtype, cp, device="gpu")
    _, stats, _ = step(model, dtype, cp.asarray(0.3, dtype=dtype), device="gpu")
    assert all(type(v) is cp.ndarray and v.shape == () and v.dtype == dtype for v in stats.values())


@pytest.mark.parametrize("name", ["vae", "m2"])
def test_beta_of_another_dtype_or_with_axes_is_refused(name):
    model = build(name, np.float32)
    with pytest.raises(TypeError, match="float64 array cannot be combined with a float32"):
        step(model, np.float32, beta=np.asarray(0.5))  # never a silent upcast to float64
    with pytest.raises(ValueError, match=r"beta must be a number or a 0-d array, got .* \(5,\)"):
        step(model, np.float32, beta=np.full(5, 0.5, dtype=np.float32))


@pytest.mark.parametrize("name", ["vae", "m2"])
def test_beta_that_is_not_a_number_is_refused(name):
    # Before: a list became a weight per example, "2" was used as 2.0 and True as 1.0 (and
    # NumPy's True, taken for a 0-d array, too).
    model = build(name, np.float32)
    for beta in ([0.5], list(range(5)), "2", True, np.True_):
        with pytest.raises(TypeError, match=rf"beta must be a number or a 0-d array, got {type(beta).__name__}"):
            step(model, np.float32, beta=beta)
    assert bits(step(model, np.float32, 2)[0].data) == bits(step(model, np.float32, 2.0)[0].data)


# The three ways into a model's scores: its loss, its per-example ELBO and its log-weights.
SCORES = {"loss": lambda model, x, extra: model.loss(x, Generator(3), **extra),
          "elbo": lambda model, x, extra: model.elbo(x, Generator(3)),
          "log_weights": lambda model, x, extra: model.log_weights(x, 2, Generator(3))}


@pytest.mark.parametrize("score", sorted(SCORES))
def test_a_loss_or_bound_refuses_an_empty_batch(score):
    # Before: NaN statistics and "Mean of empty slice" warnings from a loss; a semi-supervised
    # model's log_weights divided by zero (the bounds of the others came back empty).
    for name in sorted(CASES):
        model = build(name, np.float32)
        x, extra = batch(model, np.float32)
        with pytest.raises(ValueError, match="^x is an empty batch"):
            SCORES[score](model, x[:0], extra)
        if model.semi_supervised and score == "loss":
            x_l, labels = extra["labelled"]
            with pytest.raises(ValueError, match="^x_l is an empty batch"):
                model.loss(x, Generator(3), labelled=(x_l[:0], labels[:0]))


@pytest.mark.parametrize("score", sorted(SCORES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_loss_or_bound_refuses_a_batch_that_is_no_float_rows(name, score):
    # Before: integer pixels were scored as Bernoulli outcomes (255 as 255), and one image
    # without its batch axis gave a loss over a 0-d ELBO; M1+M2 checked only its features;
    # elbo and log_weights checked neither.
    model = build(name, np.float32)
    x, extra = batch(model, np.float32)
    with pytest.raises(TypeError, match="^x has dtype int64: a model takes float intensities"):
        SCORES[score](model, x.astype(np.int64), extra)
    with pytest.raises(ValueError, match=r"^x must be a batch of rows, shape \(B, D\), got shape \(\d+,\)$"):
        SCORES[score](model, x[0], extra)
    # a list failed with AttributeError: 'list' object has no attribute 'ndim'
    with pytest.raises(TypeError, match=r"^x must be an array or a Tensor, shape \(B, D\), got list$"):
        SCORES[score](model, x.data.tolist(), extra)
    if model.semi_supervised and score == "loss":
        x_l, labels = extra["labelled"]
        with pytest.raises(TypeError, match="^x_l has dtype uint8: a model takes float intensities"):
            model.loss(x, Generator(3), labelled=((x_l * 255).astype(np.uint8), labels))
        with pytest.raises(TypeError, match=r"^x_l must be an array or a Tensor, shape \(B, D\), got list$"):
            model.loss(x, Generator(3), labelled=(x_l.data.tolist(), labels))


BOUNDS = {"labelled_bound": lambda model, x: model.labelled_bound(x, np.zeros(len(x), int), Generator(3)),
          "unlabelled_bound": lambda model, x: model.unlabelled_bound(x, Generator(3))}


@pytest.mark.parametrize("bound", sorted(BOUNDS))
@pytest.mark.parametrize("name", ["adgm-ssl", "ladder-m2", "m2", "sdgm-ssl"])  # M1+M2 has no such bounds
def test_a_semi_supervised_bound_refuses_a_batch_that_is_no_float_rows(name, bound):
    # Before: one image without its batch axis was read as D rows of one pixel by labelled_bound
    # ("10 rows but 1 labels") and failed inside a reshape in unlabelled_bound; integer pixels
    # failed in log_uniform_categorical, naming its dtype argument.
    model = build(name, np.float32)
    x, _ = batch(model, np.float32)
    with pytest.raises(TypeError, match="^x has dtype int64: a model takes float intensities"):
        BOUNDS[bound](model, x.astype(np.int64))
    with pytest.raises(ValueError, match=r"^x must be a batch of rows, shape \(B, D\), got shape \(\d+,\)$"):
        BOUNDS[bound](model, x[0])
    with pytest.raises(ValueError, match="^x is an empty batch"):
        BOUNDS[bound](model, x[:0])


@pytest.mark.parametrize("method", ["classify", "class_probabilities"])
@pytest.mark.parametrize("name", [name for name in sorted(CASES) if build(name, np.float32).classifies])
def test_the_classifier_refuses_a_batch_that_is_no_float_rows(name, method):
    # Before: integer pixels 0..255 were classified as if they were intensities, and one image
    # without its batch axis gave one label (a 0-d array) from the ADGM and SDGM, a reshape
    # error from the others.
    model = build(name, np.float32)
    x, _ = batch(model, np.float32)
    classify = getattr(model, method)
    with pytest.raises(TypeError, match="^x has dtype int64: a model takes float intensities"):
        classify(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"^x must be a batch of rows, shape \(B, D\), got shape \(\d+,\)$"):
        classify(x[0])
    with pytest.raises(ValueError, match="^x is an empty batch"):
        classify(x[:0])


@pytest.mark.parametrize("bound", ["labelled_bound", "unlabelled_bound"])
def test_a_semi_supervised_bound_refuses_its_weight_before_it_draws(bound):
    # Before: the weight was checked after the whole pass, whose draw the generator had handed
    # out, so the corrected call drew other noise.
    model = build("m2", np.float32)
    x, _ = batch(model, np.float32)
    args = (x, np.zeros(len(x), int)) if bound == "labelled_bound" else (x,)
    generator = Generator(3)
    with pytest.raises(ValueError, match="beta"):
        getattr(model, bound)(*args, generator, beta=-1.0)
    assert generator.offset == 0


def guarded_step(model, dtype, beta):
    """``step`` with the parameters, the buffers (batch-norm statistics), the inputs and a given
    ``beta`` viewed as ``HostReadGuard``."""
    for p in model.parameters():
        p.data = guard(p.data)
    for m in model.modules():
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = guard(b)
    return step(model, dtype, beta, guarded=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_backward_read_nothing_back_to_the_host(name, dtype):
    model = build(name, dtype)
    guarded_step(model, dtype, beta=guard(np.asarray(0.3, dtype=dtype)))


#: Gradients the guard does not reach: the backward of indexing writes into fresh zeros, so the
#: gradient of the flow parameters' layer output (sliced into u, w, b) is a plain array, and so
#: is the bias gradient summed from it alone (the weight's meets the guarded features).
UNGUARDED_GRADIENTS = {"flow": {"flows.params.bias"}}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_guard_reaches_the_loss_and_every_gradient(name):
    """The guard travels from the inputs through the whole forward pass and back into every
    gradient (but those listed above), so the previous test watched the ops on that path."""
    model = build(name, np.float64)
    loss, _, grads = guarded_step(model, np.float64, beta=None)
    assert isinstance(loss.data, HostReadGuard)
    plain = {n for n, g in grads.items() if not isinstance(g, HostReadGuard)}
    assert grads and plain == UNGUARDED_GRADIENTS.get(name, set())


def test_the_guard_catches_a_host_read():
    """A loss that reads a statistic back as a float, as the models once did, fails the check."""

    class ReadingVAE(VAE):
        def loss(self, x, noise, beta=None):
            loss, stats = super().loss(x, noise, beta)
            return loss, dict(stats, loss=loss.item())

    mv.nn.init.manual_seed(0)
    model = ReadingVAE(x_dim=D, z_dim=3, hidden=(6,)).astype(np.float64)
    with pytest.raises(HostRead):
        guarded_step(model, np.float64, beta=None)
    for convert in (float, int, bool, lambda a: a.item(), lambda a: a.tolist(), lambda a: [0][a]):
        with pytest.raises(HostRead):
            convert(guard(np.asarray(1.0)).astype(int))


@pytest.mark.parametrize("model, extra", [("vae", {}), ("m2", {"n_labelled": 20}), ("iwae", {})])
def test_the_trainer_reads_a_steps_statistics_once(tmp_path, monkeypatch, model, extra):
    """``Trainer._step`` turns the statistics into floats with one copy to the host, whatever
    their number, and gives the values the arrays hold."""
    from test_train import config, small_data

    trainer = Trainer(config(tmp_path, model=model, **extra), data=small_data(), progress=False,
                      log=lambda *a: None)
    returned, reads = [], []

    def loss(*args, **kwargs):  # the model's loss, keeping what it returned
        out = type(trainer.model).loss(trainer.model, *args, **kwargs)
        returned.append(out[1])
        return out

    def to_device(array, device):
        reads.append(device)
        return backend.to_device(array, device)

    monkeypatch.setattr(trainer.model, "loss", loss, raising=False)
    monkeypatch.setattr(train, "to_device", to_device)
    stats = trainer._step(next(iter(trainer.loader.epoch(0))), 0.5, 0)
    assert reads == ["cpu"]
    assert len(stats) >= 2 and stats == {k: float(v) for k, v in returned[0].items()}
    assert all(type(v) is float for v in stats.values())


def test_the_trainer_refuses_statistics_that_are_not_0d_arrays():
    with pytest.raises(TypeError, match="statistic 'kl' as float; statistics must be 0-d arrays"):
        train._read_statistics({"loss": np.asarray(1.0), "kl": 2.0})
    with pytest.raises(TypeError, match="statistic 'loss' as ndarray"):
        train._read_statistics({"loss": np.ones(2)})
