"""Properties of every registered model over its configuration space (hypothesis): small random
sizes (hidden widths, latent sizes, stochastic layers, flows, classes), samples or importance
samples, KL and classifier weights, activations, float32 and float64, batches of one or more.

``test_model_properties`` checks the noise addressing and the loss's decomposition on a fixed
set of small instances; here the instances are drawn, and each is checked for

* the documented shapes and dtypes of what the model returns (loss and statistics, ``elbo``,
  ``log_weights``, ``sample``, ``encode`` and ``decode``, the classifier), all finite;
* a loss whose gradient reaches every parameter it depends on;
* the loss as the mean of the per-example terms the model exposes, affine in the KL weight;
* the bounds' relations that hold for any parameters on the same draws: the IWAE bound at
  least the mean log-weight (equal at k = 1), and a semi-supervised model's unlabelled bound
  the q(y | x)-weighted labelled bounds plus the entropy of q(y | x);
* the same bits from the same seed, and float32 within float32 rounding of float64.

The float64 finite-difference checks at the end cover configurations that the models' own
gradient checks (tests/test_<model>.py, ``minivae gradcheck --model``) leave out.
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minivae as mv
from minivae import nn
from minivae.models import MODELS, build_model
from minivae.models.common import JointMLP, iwae_bound
from minivae.random import Generator

from test_model_properties import _float32_noise, loss_terms

D = 6
NAMES = sorted(MODELS)
SETTINGS = settings(max_examples=6, deadline=None)
#: Activations without flat pieces, for the gradient's reach: a ReLU unit that is off for every
#: example of a tiny batch leaves the weights into it without a gradient, rightly.
SMOOTH = ("tanh", "leaky_relu", "elu", "softplus", "sigmoid")
seeds = st.integers(0, 2**32 - 1)


def sizes(min_size=1, max_size=2):
    return st.lists(st.integers(1, 4), min_size=min_size, max_size=max_size).map(tuple)


def one_bound(draw, iw=True):
    """mc_samples or (where the model may train on it) iw_k, never both above 1."""
    count = draw(st.integers(1, 3))
    if iw and draw(st.booleans()):
        return {"iw_k": count}
    return {"mc_samples": count}


def semi_supervised(draw):
    return {"num_classes": draw(st.integers(2, 4)), "alpha": draw(st.floats(0.0, 3.0))}


def ladder(draw):
    layers = draw(st.integers(1, 3))
    return {"hidden": draw(sizes(layers, layers)), "z_dims": draw(sizes(layers, layers)),
            "mlp_layers": draw(st.integers(1, 2)), "batch_norm": draw(st.booleans())}


def ladder_heads(draw):
    """The Ladder VAE's settings that follow its authors' code."""
    return {"up_input": draw(st.sampled_from(["features", "mean"])),
            "variance": draw(st.sampled_from(["exp", "softplus"])), "batch_norm_heads": draw(st.booleans())}


def auxiliary(draw):
    return {"a_dim": draw(st.integers(1, 3)), "z_dim": draw(st.integers(1, 3)), "hidden": draw(sizes())}


def iwae_options(draw):
    k = draw(st.integers(1, 3))
    options = {"k": k, "z_dim": draw(st.integers(1, 3)), "hidden": draw(sizes())}
    if k == 1:
        options["mc_samples"] = draw(st.integers(1, 2))
    if draw(st.booleans()):
        options.update(layers=2, z1_dim=draw(st.integers(1, 3)), hidden2=draw(sizes()))
    return options


#: The model-specific settings of each registered model, drawn.
OPTIONS = {
    "vae": lambda draw: {"z_dim": draw(st.integers(1, 3)), "hidden": draw(sizes()), **one_bound(draw)},
    "iwae": iwae_options,
    "ladder": lambda draw: {**ladder(draw), **ladder_heads(draw), **one_bound(draw)},
    "flow": lambda draw: {"flows": draw(st.integers(0, 3)), "z_dim": draw(st.integers(1, 3)),
                          "hidden": draw(sizes()), **one_bound(draw)},
    "gumbel": lambda draw: {"hidden": draw(sizes(0)), "n_vars": draw(st.integers(1, 3)),
                            "n_classes": draw(st.integers(2, 4)), **one_bound(draw, iw=False)},
    "adgm": lambda draw: {**auxiliary(draw), **one_bound(draw)},
    "sdgm": lambda draw: {**auxiliary(draw), **one_bound(draw)},
    "m2": lambda draw: {"z_dim": draw(st.integers(1, 3)), "hidden": draw(sizes()),
                        "likelihood": draw(st.sampled_from(["bernoulli", "gaussian"])),
                        **semi_supervised(draw), **one_bound(draw, iw=False)},
    "adgm-ssl": lambda draw: {**auxiliary(draw), **semi_supervised(draw), **one_bound(draw, iw=False)},
    "sdgm-ssl": lambda draw: {**auxiliary(draw), **semi_supervised(draw), **one_bound(draw, iw=False)},
    "ladder-m2": lambda draw: {**ladder(draw), **semi_supervised(draw), **one_bound(draw, iw=False),
                               "classifier_hidden": draw(st.none() | sizes())},
    "m1m2": lambda draw: {"m1": {"x_dim": D, "z_dim": draw(st.integers(1, 3)), "hidden": draw(sizes())},
                          "z_dim": draw(st.integers(1, 3)), "hidden": draw(sizes()),
                          **semi_supervised(draw), **one_bound(draw, iw=False)},
}


def test_every_registered_model_has_its_options_drawn():
    assert set(OPTIONS) == set(MODELS)


def has_batch_norm(model):
    return any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


@st.composite
def instances(draw, name, activations=tuple(nn.ACTIVATIONS), dtypes=(np.float32, np.float64),
              beta=st.floats(0.0, 3.0)):
    """(model, x, labelled batch or None): the model ``name`` with drawn settings and dtype, in a
    drawn mode, and batches for it of 1 to 4 binary images. Batch normalization in training mode
    needs two rows or more (one row has no variance), so a batch of one is scored in eval mode."""
    options = dict(OPTIONS[name](draw), x_dim=D, beta=draw(beta), activation=draw(st.sampled_from(activations)))
    dtype = draw(st.sampled_from(dtypes))
    mv.nn.init.manual_seed(draw(st.integers(0, 100), "init seed"))
    model = build_model(name, **options).astype(dtype)
    rows, labelled_rows = draw(st.integers(1, 4), "rows"), draw(st.integers(1, 4), "labelled rows")
    smallest = min(rows, labelled_rows) if model.semi_supervised else rows
    model.train(draw(st.booleans(), "training") and not (has_batch_norm(model) and smallest < 2))
    rng = np.random.default_rng(draw(seeds, "data seed"))
    x = (rng.random((rows, D)) < 0.5).astype(dtype)
    labelled = None
    if model.semi_supervised:
        labelled = ((rng.random((labelled_rows, D)) < 0.5).astype(dtype),
                    rng.integers(0, model.num_classes, labelled_rows))
    return model, x, labelled


def loss_of(model, x, labelled, seed, beta=None):
    extra = {} if labelled is None else {"labelled": (mv.tensor(labelled[0]), labelled[1])}
    return model.loss(mv.tensor(x), Generator(seed), beta=beta, **extra)


def assert_finite_array(value, shape, dtype, what):
    assert value.shape == shape, f"{what}: shape {value.shape}, expected {shape}"
    assert value.dtype == dtype, f"{what}: dtype {value.dtype}, expected {dtype}"
    assert np.all(np.isfinite(value)), f"{what}: {value}"


# ----- 1. what the models return ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data(), seed=seeds, k=st.integers(1, 3), n=st.integers(0, 3))
def test_outputs_have_the_documented_shapes_and_dtypes_and_are_finite(name, data, seed, k, n):
    model, x, labelled = data.draw(instances(name))
    dtype, (rows, _) = x.dtype, x.shape
    if labelled is not None:
        model.set_data_sizes(100, 10)
    loss, stats = loss_of(model, x, labelled, seed)
    assert_finite_array(loss.data, (), dtype, "loss")
    for key, value in stats.items():
        assert_finite_array(value, (), dtype, key)
    rec, kl = model.elbo(mv.tensor(x), Generator(seed))
    assert_finite_array(rec.data, (rows,), dtype, "reconstruction")
    assert_finite_array(kl.data, (rows,), dtype, "KL")
    assert_finite_array(model.log_weights(mv.tensor(x), k, Generator(seed)).data, (k, rows), dtype, "log_weights")

    means = model.sample(n, Generator(seed))
    assert_finite_array(means, (n, D), dtype, "sample")
    if getattr(model, "likelihood", "bernoulli") == "bernoulli":  # M2's Gaussian gives its means
        assert np.all((means >= 0) & (means <= 1))
        pixels = model.sample(n, Generator(seed), probabilities=False)
        assert pixels.shape == (n, D) and pixels.dtype == dtype and set(np.unique(pixels)) <= {0, 1}
    if model.gaussian_encoder:
        mu, logvar = model.encode(mv.tensor(x))
        assert_finite_array(mu.data, (rows, model.z_dim), dtype, "mu")
        assert_finite_array(logvar.data, (rows, model.z_dim), dtype, "logvar")
        assert_finite_array(model.decode(mu).data, (rows, D), dtype, "decoded logits")
    if model.classifies:
        probabilities = model.class_probabilities(mv.tensor(x))
        assert_finite_array(probabilities, (rows, model.num_classes), dtype, "class probabilities")
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        predicted = model.classify(mv.tensor(x))
        assert predicted.shape == (rows,) and predicted.dtype.kind == "i"
        np.testing.assert_array_equal(predicted, probabilities.argmax(axis=1))


# ----- 2. the gradient reaches every parameter ------------------------------------------------------
def biases_before_batch_norm(model):
    """The biases of the linear layers whose output is batch normalized: the normalization
    subtracts the batch mean, so such a bias shifts nothing, and its gradient is 0 up to
    rounding."""
    out = set()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            layers = list(module.children())
            out |= {id(a.bias) for a, b in zip(layers, layers[1:])
                    if isinstance(a, nn.Linear) and isinstance(b, nn.BatchNorm1d) and a.bias is not None}
        if isinstance(module, JointMLP) and module.norm is not None:
            out |= {id(layer.bias) for layer in module.inputs if layer.bias is not None}
    return out


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data(), seed=seeds)
def test_the_loss_gradient_reaches_every_parameter(name, data, seed):
    """With smooth activations and a KL weight above 0 (at 0 the generative prior of an auxiliary
    variable or of a lower layer weighs nothing). A parameter without elements (the flows'
    output layer with no flows) gets none; a frozen one (M1+M2's M1) none either."""
    model, x, labelled = data.draw(instances(name, activations=SMOOTH, dtypes=(np.float64,),
                                             beta=st.floats(0.1, 3.0)))
    assume(x.any())  # images without ink give the first layers' weights a gradient of zeros
    # Normalized by the statistics of its batch, a channel of two rows is -1 and 1 whatever
    # they are (up to eps), and equal rows cancel the weights' gradients: three distinct rows.
    if has_batch_norm(model) and model.training:
        assume(len({row.tobytes() for row in x}) == len(x) >= 3)
    loss, _ = loss_of(model, x, labelled, seed)
    loss.backward()
    no_shift = biases_before_batch_norm(model)
    for n, p in model.named_parameters():
        if not p.requires_grad or p.size == 0:
            assert p.grad is None, n
            continue
        assert p.grad is not None, f"{n} gets no gradient"
        assert np.all(np.isfinite(p.grad)), n
        if id(p) not in no_shift:
            assert np.any(p.grad != 0), f"{n} gets a gradient of zeros"


# ----- 3. the loss and the bounds ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data(), seed=seeds, beta=st.floats(0.0, 3.0))
def test_the_loss_is_the_mean_of_per_example_terms_and_affine_in_beta(name, data, seed, beta):
    model, x, labelled = data.draw(instances(name, dtypes=(np.float64,)))
    losses = {b: loss_of(model, x, labelled, seed, beta=b)[0].data for b in (0.0, 1.0, beta)}
    np.testing.assert_allclose(losses[beta], losses[0.0] + beta * (losses[1.0] - losses[0.0]),
                               rtol=1e-12, atol=1e-12)
    unlabelled, labelled_terms = loss_terms(model, x, seed, beta, labelled)
    expected = unlabelled.mean() + (0.0 if labelled_terms is None else labelled_terms.mean())
    np.testing.assert_allclose(losses[beta], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data(), seed=seeds, k=st.integers(1, 5))
def test_the_iwae_bound_is_at_least_the_mean_log_weight_of_its_draws(name, data, seed, k):
    """log (1/k) sum_i w_i >= (1/k) sum_i log w_i per example (Jensen), equal at k = 1."""
    model, x, _ = data.draw(instances(name, dtypes=(np.float64,)))
    log_w = model.log_weights(mv.tensor(x), k, Generator(seed))
    bound, mean = iwae_bound(log_w).data, log_w.data.mean(axis=0)
    assert np.all(bound >= mean - 1e-12 * np.abs(mean)), (bound, mean)
    if k == 1:
        np.testing.assert_allclose(bound, mean, rtol=1e-15, atol=0)


SSL_WITH_LABEL_ADDRESSING = ["m2", "ladder-m2", "m1m2"]


@pytest.mark.parametrize("name", SSL_WITH_LABEL_ADDRESSING)
@SETTINGS
@given(data=st.data(), seed=seeds)
def test_the_unlabelled_bound_weighs_the_labelled_bounds_by_the_classifier(name, data, seed):
    """U(x) = sum_y q(y | x) (L(x, y) - log q(y | x)) on the same draws, and so
    min_y L(x, y) <= U(x) <= log sum_y exp L(x, y).

    With one sample, the K labels of the unlabelled bound are drawn where the labelled bound
    of the batch tiled K times (label-major) draws them, for the models that draw nothing
    before the label (the auxiliary models draw a first, per row of the batch). The label-free
    batch-normalized layers see K copies of the batch in the tiled pass, whose statistics are
    those of one copy.
    """
    model, x, _ = data.draw(instances(name, dtypes=(np.float64,)))
    m2 = getattr(model, "m2", model)  # M1+M2: the bounds of its M2, on M1's features
    m2.mc_samples = 1
    if m2 is not model:
        model.eval()  # the features: the mean of q(z1 | x), where a training step draws them
        x = model.features(mv.tensor(x)).data
    k, rows = m2.num_classes, len(x)
    unlabelled = m2.unlabelled_bound(mv.tensor(x), Generator(seed)).data
    tiled = mv.tensor(np.tile(x, (k, 1)))
    labelled, _ = m2.labelled_bound(tiled, np.repeat(np.arange(k), rows), Generator(seed))
    labelled = labelled.data.reshape(k, rows)
    q = m2.class_probabilities(mv.tensor(x)).T
    log_q = np.log(q)
    np.testing.assert_allclose(unlabelled, (q * (labelled - log_q)).sum(axis=0), rtol=1e-10, atol=1e-10)
    tolerance = 1e-10 * np.abs(unlabelled)
    assert np.all(labelled.min(axis=0) <= unlabelled + tolerance)
    assert np.all(unlabelled <= np.logaddexp.reduce(labelled, axis=0) + tolerance)


# ----- 4. determinism and precision ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data(), seed=seeds)
def test_the_same_seed_gives_the_same_bits_and_float32_agrees_with_float64(name, data, seed):
    """A model, its float32 copy and a second float64 copy, on the same batch and the float32
    noise (``test_model_properties._float32_noise``). Without batch normalization in training
    mode, where two nearly equal rows magnify float32 rounding (a property of the data); and for
    planar flows, the tolerance grows with the cancellation in their w (``_flow_cancellation``)."""
    model, x, labelled = data.draw(instances(name, dtypes=(np.float64,)))
    if has_batch_norm(model):
        model.eval()
    state = {n: p.data.copy() for n, p in model.named_parameters()}
    results = []
    with pytest.MonkeyPatch.context() as mp:
        _float32_noise(mp)
        for dtype in (np.float64, np.float32, np.float64):
            model.astype(dtype)
            for n, p in model.named_parameters():
                p.data = state[n].astype(dtype)
            model.zero_grad()
            batch = None if labelled is None else (labelled[0].astype(dtype), labelled[1])
            loss, _ = loss_of(model, x.astype(dtype), batch, seed)
            loss.backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            results.append((loss.data, grads))
    (l64, g64), (l32, g32), (again, g_again) = results
    assert l64.tobytes() == again.tobytes()
    for n in g64:
        np.testing.assert_array_equal(g_again[n], g64[n], err_msg=n)
    assert l32.dtype == np.float32
    rtol = 1e-4 + 4 * np.finfo(np.float32).eps * _flow_cancellation(model, x)
    np.testing.assert_allclose(l32, l64, rtol=rtol, atol=1e-4)


def _flow_cancellation(model, x):
    """1 for a model without planar flows; else the largest ratio, over the examples of ``x`` and
    the flows, of the size of the terms that sum to a flow's w (its features times the weights,
    and the bias) to the size of w. The constraint on u divides by ||w||^2 (``flows.constrain_u``),
    so where those terms cancel to a small w, z_K moves by about 1 / ||w||, and the float32
    rounding of w, relative to its terms, is magnified by this ratio (twice in z_K^2) in the loss
    (drawn: w = -2.5e-4 of terms 1.07, a 1-D latent, a KL of 7e4 nats, float32 and float64 losses
    1.1e-4 apart)."""
    flows = getattr(model, "flows", None)
    if flows is None or flows.n_flows == 0:
        return 1.0
    h = model.encoder(mv.tensor(x.astype(np.float64))).data  # the model is back in float64
    W, b = flows.params.weight.data, flows.params.bias.data
    value, terms = h @ W + b, np.abs(h) @ np.abs(W) + np.abs(b)
    D, step = flows.z_dim, 2 * flows.z_dim + 1
    ratios = [np.linalg.norm(terms[:, k + D:k + 2 * D], axis=1) / np.linalg.norm(value[:, k + D:k + 2 * D], axis=1)
              for k in range(0, flows.n_flows * step, step)]
    return max(1.0, float(np.max(ratios)))


# ----- 5. finite differences for the configurations the models' own checks leave out -------------------
#: Each model's own float64 check covers its default shape; these are the settings it does not:
#: one stochastic layer, no batch normalization, several samples, a Gaussian likelihood, no
#: hidden layer, a classifier of its own sizes, a labelled batch for M1+M2.
GRADCHECKED = {
    "m2-gaussian": ("m2", dict(z_dim=2, hidden=(3,), likelihood="gaussian")),
    "ladder-m2-one-layer": ("ladder-m2", dict(hidden=(4,), z_dims=(2,))),
    "ladder-m2-no-bn": ("ladder-m2", dict(hidden=(4, 3), z_dims=(2, 2), batch_norm=False,
                                          classifier_hidden=(3, 2), mc_samples=2)),
    "ladder-one-layer": ("ladder", dict(hidden=(4,), z_dims=(2,))),
    "ladder-no-bn-mc2": ("ladder", dict(hidden=(4, 3), z_dims=(2, 1), batch_norm=False, mc_samples=2)),
    "gumbel-no-hidden-mc2": ("gumbel", dict(hidden=(), n_vars=2, n_classes=3, mc_samples=2)),
    "two-layer-elbo-mc2": ("iwae", dict(layers=2, k=1, z_dim=2, z1_dim=3, hidden=(4,), hidden2=(3,),
                                        mc_samples=2)),
    "adgm-mc2": ("adgm", dict(a_dim=2, z_dim=2, hidden=(3,), mc_samples=2)),
    "sdgm-ssl-mc2": ("sdgm-ssl", dict(a_dim=2, z_dim=2, hidden=(3,), mc_samples=2)),
    "flow-mc2": ("flow", dict(z_dim=2, hidden=(3,), flows=2, mc_samples=2)),
    "m1m2-labelled-mc2": ("m1m2", dict(m1=dict(x_dim=5, z_dim=3, hidden=(4,)), z_dim=2, hidden=(3,),
                                       mc_samples=2)),
}


@pytest.mark.parametrize("case", sorted(GRADCHECKED))
def test_the_loss_gradient_matches_finite_differences(case):
    """The whole loss (with a labelled batch where the model has labels), in training mode, tanh
    units (smooth), a KL weight other than 1, every trainable parameter element by element."""
    name, options = GRADCHECKED[case]
    mv.nn.init.manual_seed(0)
    extra = dict(num_classes=3, alpha=2.0) if getattr(MODELS[name], "semi_supervised", False) else {}
    model = build_model(name, x_dim=5, activation="tanh", **options, **extra).astype(np.float64)
    rng = np.random.default_rng(3)
    x = (rng.random((3, 5)) < 0.5).astype(np.float64)
    labelled = None
    if model.semi_supervised:
        labelled = ((rng.random((3, 5)) < 0.5).astype(np.float64), np.array([2, 0, 1]))
    checked = 0
    for _, p in model.named_parameters():
        if p.requires_grad:
            assert mv.gradcheck(lambda p_: loss_of(model, x, labelled, 9, beta=0.7)[0], p)
            checked += 1
    assert checked > 0
