"""Properties of every registered model that hold for any input (hypothesis), on the small
instances of ``test_loss_statistics.CASES``.

The noise is counter-addressed (``minivae.random``): element i of a draw depends only on (seed,
offset, stream, i), and a model's draws have shape (labels, samples, batch, ...) in C order, so
with the same generator state row b of a batch gets the same noise whatever the other rows hold.
Hence:

* no leakage: changing image j leaves every per-example quantity of the other images (and the
  gradient of the loss with respect to them) bit for bit the same, in training mode for the
  models without batch statistics and in eval mode for all;
* the loss is the mean of per-example terms that the models expose (``elbo``, ``log_weights``,
  the two semi-supervised bounds), drawn in the documented order;
* a sub-batch made of the first m rows gets the same noise for those rows when a draw has one
  sample per example and no label axis in front of the batch axis, so each example's value can
  be recomputed from the prefix of the batch that ends with it. With several samples or with the
  enumerated labels of the unlabelled bound, the batch axis is not the leading one and row b's
  noise depends on the batch size: there the same addressing is met by tiling instead;
* S samples of a batch of B are the single samples of the batch tiled S times (row s*B + b is
  sample s of example b), for ``elbo``, ``log_weights`` and the semi-supervised bounds.

The semi-supervised loss draws the unlabelled bound's noise first and the labelled bound's next,
a fixed number of draws each, so neither depends on the other batch's content or size.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import minivae as mv
from minivae.models import ADGM, M1M2, M2, FlowVAE, GumbelSoftmaxVAE, LadderM2, LadderVAE
from minivae.models.common import iwae_bound
from minivae.models.iwae import TwoLayerVAE
from minivae.models.semisupervised import SemiSupervised
from minivae.random import Generator, Noise

from test_loss_statistics import CASES, D, K
from test_m2 import m2_label_terms, np_log_softmax

NAMES = sorted(CASES)
#: More settings of some models, for the properties that hold for any settings.
VARIANTS = {
    "flow-0": lambda: FlowVAE(x_dim=D, z_dim=3, hidden=(6,), flows=0),
    "flow-iwae": lambda: FlowVAE(x_dim=D, z_dim=3, hidden=(6,), flows=3, iw_k=3),
    "adgm-iwae": lambda: ADGM(x_dim=D, a_dim=2, z_dim=3, hidden=(6, 5), iw_k=3),
    "two-layer-mc2": lambda: TwoLayerVAE(x_dim=D, z_dims=(4, 3), blocks=((6,), (5,)), mc_samples=2),
    "ladder-3-layers": lambda: LadderVAE(x_dim=D, hidden=(8, 6, 5), z_dims=(4, 3, 2), mlp_layers=2),
    "ladder-m2-no-bn": lambda: LadderM2(x_dim=D, hidden=(8, 6, 5), z_dims=(4, 3, 2), num_classes=K,
                                        batch_norm=False, alpha=1.0, mc_samples=2),
    "m2-gaussian": lambda: M2(x_dim=D, z_dim=3, hidden=(6, 5), num_classes=K, alpha=1.0,
                              likelihood="gaussian"),
    "gumbel-no-hidden": lambda: GumbelSoftmaxVAE(x_dim=D, hidden=(), n_vars=2, n_classes=3, mc_samples=2),
}
MODELS = {**{name: make for name, (_, make) in CASES.items()}, **VARIANTS}
ALL = sorted(MODELS)
#: Models whose training mode normalizes with batch statistics: their examples meet there.
BATCH_NORM = {"ladder", "ladder-m2", "ladder-3-layers"}
SETTINGS = settings(max_examples=8, deadline=None)

pixels = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
seeds = st.integers(0, 2**32 - 1)


@st.composite
def images(draw, min_rows=2, max_rows=5):
    """A (B, D) float64 batch of intensities in [0, 1], binary pixels often."""
    rows = draw(st.integers(min_rows, max_rows))
    return draw(hnp.arrays(np.float64, (rows, D), elements=pixels))


def build(name, dtype=np.float64, training=True):
    mv.nn.init.manual_seed(0)
    return MODELS[name]().astype(dtype).train(training)


def modes(name):
    """The modes in which the model's examples do not meet: eval, and training without batch norm."""
    return [False] if name in BATCH_NORM else [False, True]


def per_example(model, x, seed, labels):
    """Every per-example quantity ``model`` exposes for the batch ``x`` (a NumPy array), each with
    the batch on its first axis, drawn from Generator(seed)."""
    t = mv.tensor(x)
    rec, kl = model.elbo(t, Generator(seed))
    out = {"rec": rec.data, "kl": kl.data, "log_weights": model.log_weights(t, 3, Generator(seed)).data.T}
    if model.classifies:
        out["class_probabilities"] = model.class_probabilities(t)
    if isinstance(model, SemiSupervised):  # M1+M2 has no bounds of its own
        bound, class_loss = model.labelled_bound(t, labels, Generator(seed))
        out.update(unlabelled=model.unlabelled_bound(t, Generator(seed)).data, labelled=bound.data,
                   class_loss=class_loss.data)
    return out


def loss_terms(model, x, seed, beta, labelled=None):
    """The per-example terms whose means make ``model.loss`` on Generator(seed), computed with the
    models' per-example methods in the order the loss draws its noise: (unlabelled terms (B,),
    labelled terms (B_l,) or None)."""
    g, t = Generator(seed), mv.tensor(x)
    if isinstance(model, M1M2):  # M1+M2: the labelled batch's features are drawn first
        if labelled is not None:
            labelled = (model.features(mv.tensor(labelled[0]), g).data, labelled[1])
        return loss_terms_with(model.m2, model.features(t, g), g, beta, labelled)
    return loss_terms_with(model, t, g, beta, labelled)


def loss_terms_with(model, x, g, beta, labelled):
    if model.semi_supervised:
        unlabelled = -model.unlabelled_bound(x, g, beta).data
        if labelled is None:
            return unlabelled, None
        bound, class_loss = model.labelled_bound(mv.tensor(labelled[0]), labelled[1], g, beta)
        return unlabelled, -bound.data + model.alpha * class_loss.data
    if model.iw_k > 1:
        return -iwae_bound(model.log_weights(x, model.iw_k, g)).data, None
    rec, kl = model.elbo(x, g)
    return beta * kl.data - rec.data, None


def labelled_batch(model, rng, rows=K):
    if not model.semi_supervised:
        return None
    return (rng.random((rows, D)) < 0.5).astype(np.float64), rng.integers(0, K, rows)


# ----- 1. no leakage across examples ----------------------------------------------------------
def one_image_changed(name, data, x):
    """(the model ``name`` in a drawn mode, a drawn row j, x with image j drawn afresh)."""
    model = build(name, training=data.draw(st.sampled_from(modes(name)), "training"))
    j = data.draw(st.integers(0, len(x) - 1), "j")
    other = x.copy()
    other[j] = data.draw(hnp.arrays(np.float64, D, elements=pixels), "new image")
    return model, j, other


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(data=st.data(), x=images(), seed=seeds)
def test_changing_one_image_leaves_the_others_bit_for_bit(name, data, x, seed):
    model, j, other = one_image_changed(name, data, x)
    labels = np.arange(len(x)) % K
    before, after = per_example(model, x, seed, labels), per_example(model, other, seed, labels)
    rest = np.arange(len(x)) != j
    for key in before:
        np.testing.assert_array_equal(before[key][rest], after[key][rest], err_msg=key)


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(x=images(), seed=seeds, beta=st.sampled_from([0.0, 0.3, 1.0, 2.5]))
def test_the_loss_is_the_mean_of_per_example_terms(name, x, seed, beta):
    """In training mode, batch norm included: the per-example terms are computed on the same batch."""
    model = build(name)
    labelled = labelled_batch(model, np.random.default_rng(seed))
    extra = {} if labelled is None else {"labelled": (mv.tensor(labelled[0]), labelled[1])}
    loss, _ = model.loss(mv.tensor(x), Generator(seed), beta=beta, **extra)
    unlabelled, labelled_terms = loss_terms(model, x, seed, beta, labelled)
    expected = unlabelled.mean() + (0.0 if labelled_terms is None else labelled_terms.mean())
    np.testing.assert_allclose(loss.data, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(data=st.data(), x=images(), seed=seeds)
def test_the_input_gradient_of_one_image_ignores_the_others(name, data, x, seed):
    model, j, other = one_image_changed(name, data, x)
    labelled = labelled_batch(model, np.random.default_rng(seed))
    grads = []
    for batch in (x, other):
        t = mv.tensor(batch, requires_grad=True)
        extra = {} if labelled is None else {"labelled": (mv.tensor(labelled[0]), labelled[1])}
        model.loss(t, Generator(seed), **extra)[0].backward()
        grads.append(t.grad)
    if name == "m1m2":  # M2 reads M1's features as constants: the frozen M1 gets no gradient
        assert grads == [None, None]
        return
    rest = np.arange(len(x)) != j
    np.testing.assert_array_equal(grads[0][rest], grads[1][rest])


# ----- 2. sub-batches -------------------------------------------------------------------------
def has_a_bound_of_its_own(name):
    """Whether the model has the per-example values the prefix property below is about: any
    unsupervised model, and a semi-supervised one with a labelled bound (not M1+M2, whose
    bounds are its M2's, on features drawn by its M1)."""
    model = MODELS[name]()
    return not model.semi_supervised or isinstance(model, SemiSupervised)


@pytest.mark.parametrize("name", [n for n in ALL if has_a_bound_of_its_own(n)])
@SETTINGS
@given(x=images(min_rows=1), seed=seeds)
def test_each_example_is_its_value_in_the_prefix_of_the_batch_that_ends_with_it(name, x, seed):
    """With one sample per example the first m rows of a batch get the same noise as the batch of
    those m rows alone. For the semi-supervised models only the labelled bound (one label per
    example) has that addressing, with one sample (so a model of several is set to one); their
    unlabelled bound puts the label axis in front of the batch axis, so its noise depends on the
    batch size."""
    model = build(name, training=False)
    if model.semi_supervised:
        model.mc_samples = 1
    labels = np.arange(len(x)) % K

    def values(batch, rows):
        t = mv.tensor(batch)
        if not model.semi_supervised:
            rec, kl = model.elbo(t, Generator(seed), samples=1)
            return {"rec": rec.data, "kl": kl.data,
                    "log_weights": model.log_weights(t, 1, Generator(seed)).data[0]}
        return {"labelled": model.labelled_bound(t, labels[:rows], Generator(seed))[0].data}

    whole = values(x, len(x))
    for m in range(1, len(x) + 1):
        prefix = values(x[:m], m)
        for key in prefix:
            np.testing.assert_allclose(prefix[key][m - 1], whole[key][m - 1], rtol=1e-12, atol=1e-12,
                                       err_msg=key)


def one_sample_loss(name):
    model = MODELS[name]()
    return not model.semi_supervised and model.mc_samples == model.iw_k == 1


@pytest.mark.parametrize("name", [n for n in ALL if one_sample_loss(n)])
@SETTINGS
@given(x=images(min_rows=1), seed=seeds, beta=st.sampled_from([0.0, 1.0, 1.7]))
def test_the_loss_is_the_mean_of_values_from_prefix_sub_batches(name, x, seed, beta):
    """For a loss of one sample per example: example i's term taken from the batch x[:i+1]."""
    model = build(name, training=name not in BATCH_NORM)
    loss, _ = model.loss(mv.tensor(x), Generator(seed), beta=beta)
    terms = [loss_terms(model, x[:i + 1], seed, beta)[0][i] for i in range(len(x))]
    np.testing.assert_allclose(loss.data, np.mean(terms), rtol=1e-12, atol=1e-12)


# ----- 3. the semi-supervised bounds ------------------------------------------------------------
SEMI_SUPERVISED = [n for n in ALL if MODELS[n]().semi_supervised]


@pytest.mark.parametrize("name", SEMI_SUPERVISED)
@SETTINGS
@given(x=images(), other=images(), seed=seeds, labels_seed=seeds, training=st.booleans())
def test_the_labelled_and_unlabelled_terms_do_not_depend_on_each_others_batch(
        name, x, other, seed, labels_seed, training):
    """Content and size of the other batch; in training mode too (the labelled batch is a batch
    norm pass of its own)."""
    model = build(name, training=training)
    rng = np.random.default_rng(labels_seed)
    lab = labelled_batch(model, rng, rows=rng.integers(2, 6))
    lab_other = labelled_batch(model, rng, rows=rng.integers(2, 6))

    def stats(unlabelled, labelled):
        return model.loss(mv.tensor(unlabelled), Generator(seed),
                          labelled=(mv.tensor(labelled[0]), labelled[1]))[1]

    base = stats(x, lab)
    changed_unlabelled, changed_labelled = stats(other, lab), stats(x, lab_other)
    for key in ("labelled_bound", "class_loss"):
        np.testing.assert_array_equal(changed_unlabelled[key], base[key], err_msg=key)
    np.testing.assert_array_equal(changed_labelled["elbo"], base["elbo"])
    if name != "m1m2":  # M1+M2 draws the labelled batch's features before the unlabelled one's
        alone = model.loss(mv.tensor(x), Generator(seed))[1]
        np.testing.assert_array_equal(alone["elbo"], base["elbo"])


@pytest.mark.parametrize("name", [n for n in SEMI_SUPERVISED if n != "m1m2"])  # M1+M2's loss is its M2's
def test_the_default_labelled_weight_gives_the_bits_of_the_plain_sum_of_the_bounds(name):
    """labelled_weight "batch" (w = 1): the loss is -mean U(x) - mean L(x_l, y_l) + alpha
    mean(-log q(y_l | x_l)), added in that order, bit for bit, and so are its gradients: the
    default weight changes no bit of a training step."""
    model = build(name)
    rng = np.random.default_rng(0)
    x, (x_l, labels) = mv.tensor((rng.random((5, D)) < 0.5).astype(np.float64)), labelled_batch(model, rng)
    loss, _ = model.loss(x, Generator(3), labelled=(mv.tensor(x_l), labels))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad()
    g = Generator(3)  # the loss draws the unlabelled noise first, then the labelled noise
    unlabelled = model.unlabelled_bound(x, g)
    bound, class_loss = model.labelled_bound(mv.tensor(x_l), labels, g)
    plain = -unlabelled.mean() - bound.mean() + model.alpha * class_loss.mean()
    plain.backward()
    assert loss.data.tobytes() == plain.data.tobytes()
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(grads[n], p.grad, err_msg=n)


def test_m1m2_unlabelled_bound_equals_a_loop_over_labels():
    """M1+M2's U is M2's (Gaussian likelihood) at M1's features, label by label."""
    model = build("m1m2", training=False)
    m2, s, b = model.m2, model.m2.mc_samples, 5
    x = (np.random.default_rng(2).random((b, D)) < 0.5).astype(np.float64)
    features = model.features(mv.tensor(x))
    eps = Generator(7).normal((K, s, b, m2.z_dim), dtype=np.float64)
    log_q = np_log_softmax(m2.classifier(features).data)
    expected = np.zeros(b)
    for label in range(K):
        rec, latent = m2_label_terms(m2, features, np.full(b, label), eps[label])
        bound = rec.mean(0) + latent - math.log(K)
        expected += np.exp(log_q[:, label]) * (bound - log_q[:, label])
    rec, kl = model.elbo(mv.tensor(x), Generator(7))
    np.testing.assert_allclose((rec - kl).data, expected, rtol=1e-12)


# ----- 4. determinism and precision ---------------------------------------------------------------
def _float32_noise(mp):
    """Make every draw of a ``Noise`` the float32 one, cast to the dtype asked for: float32
    uniforms have 23 bits against float64's 32, which moves the normal of a small Philox word
    (the radius of word 57934 by 1e-4, of word 0 by 15%), so float32 and float64 models are
    compared on the same noise."""
    for kind in ("normal", "uniform", "gumbel"):
        draw = getattr(Noise, kind)
        mp.setattr(Noise, kind, lambda self, shape, dtype=np.float32, start=0, draw=draw:
                   draw(self, shape, np.float32, start).astype(dtype))


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(x=images(), seed=seeds)
def test_the_same_seed_gives_the_same_bits_and_float32_agrees_with_float64(name, x, seed):
    """In eval mode for the models with batch norm: in training mode two nearly equal images (say
    all pixels 1e-5 apart) make a nearly constant channel, whose normalization magnifies the
    float32 rounding of the layer before it (a property of the data, not of the code). Both
    dtypes draw the float32 noise (``_float32_noise``)."""
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        _float32_noise(mp)
        for dtype in (np.float64, np.float32, np.float64):
            model = build(name, dtype, training=name not in BATCH_NORM)
            labelled = labelled_batch(model, np.random.default_rng(seed))
            extra = {} if labelled is None else {"labelled": (mv.tensor(labelled[0].astype(dtype)), labelled[1])}
            loss, stats = model.loss(mv.tensor(x.astype(dtype)), Generator(seed), **extra)
            loss.backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
            if dtype in results:  # a fresh model, the same seed: the same bits
                assert loss.data.tobytes() == results[dtype][0].data.tobytes()
                for n, grad in grads.items():
                    np.testing.assert_array_equal(grad, results[dtype][2][n], err_msg=n)
            results[dtype] = loss, stats, grads
    (l64, _, _), (l32, s32, _) = results[np.float64], results[np.float32]
    assert l32.dtype == np.float32 and all(v.dtype == np.float32 for v in s32.values())
    np.testing.assert_allclose(l32.data, l64.data, rtol=1e-5)


# ----- 5. the KL weight, samples and the two bounds -------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(x=images(), seed=seeds, beta=st.floats(0.0, 5.0))
def test_the_loss_is_affine_in_beta_and_the_statistics_ignore_it(name, x, seed, beta):
    """beta only weights the KL terms: loss(beta) = loss(0) + beta (loss(1) - loss(0)), and the
    reported bounds are those at beta = 1; with iw_k > 1 beta does not apply at all."""
    runs = {}
    for b in (0.0, 1.0, beta):
        model = build(name)
        labelled = labelled_batch(model, np.random.default_rng(seed))
        extra = {} if labelled is None else {"labelled": (mv.tensor(labelled[0]), labelled[1])}
        runs[b] = model.loss(mv.tensor(x), Generator(seed), beta=b, **extra)
    (l0, s0), (l1, _), (lb, sb) = runs[0.0], runs[1.0], runs[beta]
    for key in s0.keys() - {"loss"}:
        np.testing.assert_array_equal(sb[key], s0[key], err_msg=key)
    if model.iw_k > 1:
        assert lb.data == l0.data == l1.data
    np.testing.assert_allclose(lb.data, l0.data + beta * (l1.data - l0.data), rtol=1e-12, atol=1e-12)
    if not model.semi_supervised and model.iw_k == 1:  # beta = 0: the KL term is gone exactly
        rec, _ = build(name).elbo(mv.tensor(x), Generator(seed))
        assert l0.data == (-rec.data).mean()


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(data=st.data(), x=images(min_rows=1, max_rows=3), seed=seeds, samples=st.integers(1, 4))
def test_samples_are_single_samples_of_the_tiled_batch(name, data, x, seed, samples):
    """Sample s of example b is drawn where row s*B + b of the batch tiled S times is."""
    model = build(name, training=data.draw(st.sampled_from(modes(name)), "training"))
    b, tiled = len(x), mv.tensor(np.tile(x, (samples, 1)))
    rec, kl = model.elbo(mv.tensor(x), Generator(seed), samples=samples)
    rec1, kl1 = model.elbo(tiled, Generator(seed), samples=1)
    np.testing.assert_allclose(rec.data, rec1.data.reshape(samples, b).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kl.data, kl1.data.reshape(samples, b).mean(0), rtol=1e-12, atol=1e-12)
    log_w = model.log_weights(mv.tensor(x), samples, Generator(seed)).data
    np.testing.assert_allclose(log_w, model.log_weights(tiled, 1, Generator(seed)).data.reshape(samples, b),
                               rtol=1e-12, atol=1e-12)


def mc_samples(name):
    """The model's ELBO samples (1 for M1+M2, whose M2 draws one feature per image first)."""
    return getattr(MODELS[name](), "mc_samples", 1)


@pytest.mark.parametrize("name", [n for n in ALL if mc_samples(n) > 1])
@SETTINGS
@given(x=images(max_rows=3), seed=seeds, beta=st.sampled_from([0.0, 0.5, 1.0]))
def test_a_loss_of_s_samples_is_the_loss_of_one_sample_on_the_tiled_batches(name, x, seed, beta):
    """Both batches tiled S times (a semi-supervised loss draws the unlabelled bound first, then
    the labelled one, each with its own addressing): the mean of S single-sample losses."""
    model = build(name, training=name not in BATCH_NORM)
    s = mc_samples(name)
    labelled = labelled_batch(model, np.random.default_rng(seed))
    extra = {} if labelled is None else {"labelled": (mv.tensor(labelled[0]), labelled[1])}
    loss, _ = model.loss(mv.tensor(x), Generator(seed), beta=beta, **extra)
    model.mc_samples = 1
    if labelled is not None:
        extra = {"labelled": (mv.tensor(np.tile(labelled[0], (s, 1))), np.tile(labelled[1], s))}
    tiled, _ = model.loss(mv.tensor(np.tile(x, (s, 1))), Generator(seed), beta=beta, **extra)
    np.testing.assert_allclose(loss.data, tiled.data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SEMI_SUPERVISED)
@SETTINGS
@given(x=images(min_rows=1, max_rows=3), seed=seeds, k=st.integers(1, 7), rows=st.integers(1, 40))
def test_chunked_log_weights_are_the_draws_of_successive_calls(name, x, seed, k, rows):
    """log_weights draws at most ``max_rows`` rows at a time: the same numbers as calls of one
    chunk each on one generator (which is how the evaluation merges its chunks)."""
    model = build(name, training=False)
    chunking = getattr(model, "m2", model)  # M1+M2: its M2 draws the log-weights
    chunking.max_rows = rows
    per_chunk = max(1, rows // (K * len(x)))
    chunked = model.log_weights(mv.tensor(x), k, Generator(seed)).data
    chunking.max_rows = 10**9
    g = Generator(seed)
    calls = [model.log_weights(mv.tensor(x), min(per_chunk, k - i), g).data for i in range(0, k, per_chunk)]
    np.testing.assert_array_equal(chunked, np.concatenate(calls))


@pytest.mark.parametrize("name", [n for n in ALL if n not in BATCH_NORM])
@SETTINGS
@given(x=images(), seed=seeds)
def test_without_batch_norm_the_mode_changes_nothing_but_the_gumbel_relaxation(name, x, seed):
    """Training and eval mode give the same bits, except the Gumbel-softmax ELBO (relaxed codes
    in training, exact ones in eval; its ``hard`` argument chooses)."""
    values = []
    for training in (True, False):
        model, t = build(name, training=training), mv.tensor(x)
        hard = {"hard": True} if isinstance(model, GumbelSoftmaxVAE) else {}
        values.append([*(v.data for v in model.elbo(t, Generator(seed), **hard)),
                       model.log_weights(t, 2, Generator(seed)).data])
    for before, after in zip(*values):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(data=st.data(), n=st.integers(1, 6), seed=seeds, probabilities=st.booleans())
def test_sampled_image_i_depends_on_neither_the_count_nor_the_other_labels(name, data, n, seed,
                                                                              probabilities):
    model = build(name)
    m = data.draw(st.integers(0, n), "m")
    images_n = model.sample(n, Generator(seed), probabilities=probabilities)
    np.testing.assert_allclose(model.sample(m, Generator(seed), probabilities=probabilities),
                               images_n[:m], rtol=1e-12, atol=1e-15)
    if model.semi_supervised:
        labels = np.array(data.draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n), "labels"))
        j = data.draw(st.integers(0, n - 1), "j")
        other = labels.copy()
        other[j] = (labels[j] + 1) % K
        a = model.sample(n, Generator(seed), probabilities, labels=labels)
        b = model.sample(n, Generator(seed), probabilities, labels=other)
        rest = np.arange(n) != j
        np.testing.assert_array_equal(a[rest], b[rest])


@pytest.mark.parametrize("name", NAMES)
def test_the_log_weights_average_to_the_elbo(name):
    """E_q[log w] is the ELBO itself for the unsupervised models (whatever part of the KL is in
    closed form), and at least the unlabelled bound U(x) for the semi-supervised ones, whose
    log-weights sum the label out exactly (a tighter bound). 4000 draws per image, within 4.5
    standard errors."""
    model, n = build(name, training=False), 4000
    x = (np.random.default_rng(0).random((3, D)) < 0.5).astype(np.float64)
    tiled = mv.tensor(np.tile(x, (n, 1)))
    with mv.no_grad():
        rec, kl = model.elbo(tiled, Generator(1), samples=1)
        bound = (rec.data - kl.data).reshape(n, 3)
        log_w = model.log_weights(tiled, 1, Generator(2)).data.reshape(n, 3)
    difference = log_w.mean(0) - bound.mean(0)
    stderr = np.sqrt((log_w.var(0) + bound.var(0)) / n)
    if model.semi_supervised:
        assert np.all(difference > -4.5 * stderr)
    else:
        assert np.all(np.abs(difference) < 4.5 * stderr), difference / stderr
