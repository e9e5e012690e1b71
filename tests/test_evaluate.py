"""Evaluation: the importance-sampled log-likelihood does not depend on how its k samples are
chunked; the per-example ELBO and the NLL summary follow their formulas."""
import dataclasses

import numpy as np
import pytest

import minivae as mv
from minivae.evaluate import log_likelihood
from minivae.gradcheck_cases import MODEL_SIZES, SMALL_MODEL
from minivae.models import MODELS, build_model
from minivae.random import Generator, Noise
from test_train import FixedWeights, StandInModel

#: Sizes chosen so that the batch axis is the only axis of size B in every draw (the chunks
#: hold 12, 5 or 2 samples; the latents have 2 to 100 dimensions and 10 classes).
B, SAMPLES = 7, 12


@dataclasses.dataclass(frozen=True)
class _ChunkDraw(Noise):
    """One draw of ``_ChunkAlignedNoise`` (see there)."""

    samples: int = 0
    done: int = 0
    fresh_offset: int = 0

    def _draw(self, kind, shape, dtype):
        shape = tuple(shape)
        axis = shape.index(B) - 1 if B in shape else -1
        if axis < 0:  # not per sample: what a Generator gives, new numbers at every call
            return getattr(Noise(self.seed, self.fresh_offset, self.stream), kind)(shape, dtype)
        assert shape[axis] == self.samples, f"a draw of shape {shape} has no axis of {self.samples} samples"
        whole = getattr(super(), kind)(shape[:axis] + (SAMPLES,) + shape[axis + 1:], dtype)
        return whole.take(range(self.done, self.done + self.samples), axis=axis)

    def normal(self, shape, dtype=np.float32, start=0):
        return self._draw("normal", shape, dtype)

    def uniform(self, shape, dtype=np.float32, start=0):
        return self._draw("uniform", shape, dtype)

    def gumbel(self, shape, dtype=np.float32, start=0):
        return self._draw("gumbel", shape, dtype)


class _ChunkAlignedNoise(Generator):
    """Noise under which chunking changes nothing for a model whose k importance samples are
    independent given x: the j-th draw of a ``log_weights`` call, shaped (..., samples, B, ...)
    as the models draw them, is the chunk's slice of one fixed draw of all SAMPLES. A draw
    without a sample axis is new at every call, as from a ``Generator``: a model that draws
    such noise and shares it among a chunk's samples (one call) gives different estimates for
    different chunkings, as it does in use."""

    def __init__(self, seed):
        super().__init__(seed, offset=2 ** 32)  # fresh draws stay clear of the fixed ones (offset j)
        self.samples, self.done, self.draw = 0, 0, 0

    def start_call(self, samples):
        self.samples, self.draw = samples, 0

    def end_call(self):
        self.done = (self.done + self.samples) % SAMPLES

    def next_noise(self):
        fresh = super().next_noise()
        self.draw += 1
        return _ChunkDraw(self.seed, self.draw - 1, self.stream, samples=self.samples, done=self.done,
                          fresh_offset=fresh.offset)


def _chunked_log_likelihood(name, chunk_rows):
    """log_likelihood of the small ``name`` model on B images, SAMPLES samples in chunks of
    ``chunk_rows // B``, under ``_ChunkAlignedNoise``."""
    mv.nn.init.manual_seed(0)  # M1+M2 builds its M1 with the global initializer
    model = build_model(name, **dict(SMALL_MODEL, **MODEL_SIZES.get(name, {})),
                        rng=np.random.default_rng(0)).astype(np.float64)
    if model.semi_supervised:
        model.set_data_sizes(100, 10)
    x = (np.random.default_rng(1).random((B, model.x_dim)) < 0.5).astype(np.float64)
    noise, log_weights = _ChunkAlignedNoise(5), model.log_weights

    def chunk_log_weights(x, k, _):
        noise.start_call(k)
        out = log_weights(x, k, noise)
        noise.end_call()
        return out

    model.log_weights = chunk_log_weights
    return log_likelihood(model, x, k=SAMPLES, noise=noise, batch_size=B, chunk_rows=chunk_rows)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_log_likelihood_does_not_depend_on_the_chunks(name):
    one_chunk = _chunked_log_likelihood(name, SAMPLES * B)
    for samples_per_chunk in (1, 5):  # chunks of 1, and of 5, 5 and 2
        np.testing.assert_allclose(_chunked_log_likelihood(name, samples_per_chunk * B), one_chunk,
                                   rtol=1e-12, err_msg=f"{samples_per_chunk} samples per chunk")


def test_elbo_is_the_reconstruction_minus_the_kl_per_example():
    """evaluate.elbo gives per example (bound, reconstruction, KL) with bound = rec - KL, rec and
    KL those of the model's own elbo under the same noise, over batches of any size."""
    from minivae.evaluate import elbo

    model = build_model("vae", x_dim=12, z_dim=3, hidden=(8,), rng=np.random.default_rng(0)).astype(np.float64)
    x = (np.random.default_rng(1).random((B, 12)) < 0.5).astype(np.float64)
    bound, rec, kl = elbo(model, x, noise=Generator(3), batch_size=B)
    with mv.no_grad():
        want_rec, want_kl = (t.data for t in model.elbo(mv.tensor(x), Generator(3)))
    np.testing.assert_array_equal(rec, want_rec)
    np.testing.assert_array_equal(kl, want_kl)
    np.testing.assert_allclose(bound, want_rec - want_kl, rtol=1e-15)
    assert (kl > 0).all()  # so bound = rec + KL would differ


def test_the_evaluators_draw_the_noise_the_recorded_scores_were_made_with():
    """Without ``noise``, ``elbo`` and ``log_likelihood`` draw from seed 12345 (``EVAL_SEED``),
    each on its own stream (``streams.EVAL_ELBO``, ``streams.EVAL_LOG_LIKELIHOOD``): every score
    of a model uses the same draws, those of the recorded results (results.json, eval_k*.json,
    docs/results.md). Another seed or stream gives other numbers (test_random pins the streams'
    numbers, and that they differ)."""
    from minivae import streams
    from minivae.evaluate import elbo

    model = build_model("vae", x_dim=12, z_dim=3, hidden=(8,), rng=np.random.default_rng(0)).astype(np.float64)
    x = (np.random.default_rng(1).random((B, 12)) < 0.5).astype(np.float64)
    recorded = elbo(model, x, noise=Generator(seed=12345, stream=streams.EVAL_ELBO))
    for got, want in zip(elbo(model, x), recorded):
        np.testing.assert_array_equal(got, want)
    recorded = log_likelihood(model, x, k=3, noise=Generator(seed=12345, stream=streams.EVAL_LOG_LIKELIHOOD))
    np.testing.assert_array_equal(log_likelihood(model, x, k=3), recorded)


class _RowModel(StandInModel):
    """A stand-in model whose per-example values depend on that example's row alone, without
    noise: log-weights x.u (the same for every sample), reconstruction x.u, KL x.v, and the
    class of the largest pixel, so that what an evaluator returns for a row is known. It
    refuses to be evaluated in training mode."""

    classifies, x_dim, num_classes = True, 3, 3
    u, v = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.25, 0.0])

    def log_weights(self, x, k, noise):
        assert not self.training
        return mv.tensor(np.tile(x.data @ self.u, (k, 1)))

    def elbo(self, x, noise):
        assert not self.training
        return mv.tensor(x.data @ self.u), mv.tensor(x.data @ self.v)

    def classify(self, x):
        assert not self.training
        return x.data.argmax(axis=1)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 6, 7, 8])
def test_the_batches_cover_every_image_once(batch_size):
    """Seven images in batches of any size, the last one short or alone: each evaluator's value
    for every image is that image's own (an image left out would keep an uninitialized value)."""
    from minivae import evaluate as E

    model, x = _RowModel(), np.random.default_rng(2).random((7, 3))
    ll, ess = E.log_likelihood_and_ess(model, x, k=4, batch_size=batch_size, chunk_rows=2 * batch_size)
    np.testing.assert_allclose(ll, x @ model.u, rtol=1e-12)
    np.testing.assert_allclose(ess, 4, rtol=1e-12)  # equal weights
    bound, rec, kl = E.elbo(model, x, batch_size=batch_size)
    np.testing.assert_allclose(rec, x @ model.u, rtol=1e-15)
    np.testing.assert_allclose(kl, x @ model.v, rtol=1e-15)
    np.testing.assert_allclose(bound, x @ (model.u - model.v), rtol=1e-12)
    labels = x.argmax(axis=1)
    labels[[0, 6]] = (labels[[0, 6]] + 1) % 3  # the first and the last image misclassified
    assert E.classification_error(model, x, labels, batch_size=batch_size) == pytest.approx(2 / 7)


def test_the_evaluators_leave_the_model_in_its_mode():
    """They evaluate in eval mode and hand the model back as they found it: in training mode
    for a trainer scoring between epochs, in eval mode for a caller that put it there."""
    from minivae import evaluate as E

    model = _RowModel()
    x = np.random.default_rng(2).random((4, 3))
    for training in (True, False):
        model.train(training)
        E.log_likelihood(model, x, k=2)
        assert model.training is training
        E.elbo(model, x)
        assert model.training is training
        E.classification_error(model, x, x.argmax(axis=1))
        assert model.training is training


def test_nll_summary_is_the_mean_and_its_standard_error():
    """test_nll = -mean(ll), test_nll_stderr = std(ll, ddof=1) / sqrt(n), from the formulas; with
    effective sample sizes also their median and minimum."""
    from minivae.evaluate import nll_summary

    ll = np.array([-1.0, -2.0, -4.0, -5.0])
    summary = nll_summary(ll)
    assert summary["test_nll"] == 3.0
    assert summary["test_nll_stderr"] == pytest.approx(np.sqrt(10 / 3) / 2, rel=1e-15)
    assert "ess_median" not in summary
    summary = nll_summary(ll, ess=np.array([40.0, 3.0, 10.0, 7.5]))
    assert (summary["ess_median"], summary["ess_min"]) == (8.75, 3.0)
    assert nll_summary(ll[:1]) == {"test_nll": 1.0, "test_nll_stderr": None}  # no spread from one image


def test_nll_summary_refuses_no_images_and_ess_of_other_images():
    """No log-likelihoods have no mean (NumPy would give NaN with a RuntimeWarning), and
    effective sample sizes of another number of images would summarize other images."""
    from minivae.evaluate import nll_summary

    with pytest.raises(ValueError, match=r"^nll_summary: ll must hold one log-likelihood per image, shape \(N,\) "
                                         r"with N >= 1, got shape \(0,\)$"):
        nll_summary([])
    with pytest.raises(ValueError, match=r"got shape \(2, 2\)$"):
        nll_summary(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"^nll_summary: ess must hold one effective sample size per image, "
                                         r"shape \(2,\) like ll, got shape \(0,\)$"):
        nll_summary([-1.0, -2.0], ess=[])


def test_a_fixed_noise_address_is_refused_by_the_log_likelihood():
    """Every chunk would draw the same samples: k = 50 would be k = 10 counted five times."""
    from minivae.evaluate import log_likelihood
    from minivae.models import VAE
    from minivae.random import Noise

    model = VAE(x_dim=6, z_dim=2, hidden=(4,))
    with pytest.raises(TypeError, match="a Noise gives every chunk the same samples"):
        log_likelihood(model, np.ones((3, 6), np.float32), k=50, noise=Noise(seed=1), chunk_rows=30)


@pytest.mark.parametrize("score", ["log_likelihood", "elbo"])
@pytest.mark.parametrize("bad", [0, False, ""])
def test_noise_that_is_false_is_refused_not_replaced_by_the_default(score, bad):
    """``noise=0`` is a mistake (a seed where a Generator belongs), not a request for the
    evaluation's own generator: the model refuses it, naming the type."""
    from minivae import evaluate
    from minivae.models import VAE

    model = VAE(x_dim=6, z_dim=2, hidden=(4,))
    with pytest.raises(TypeError, match="noise must be a minivae.random.Generator"):
        getattr(evaluate, score)(model, np.ones((3, 6), np.float32), noise=bad)


@pytest.mark.parametrize("bad, error", [(3.5, TypeError), (True, TypeError), (0, ValueError), (-1, ValueError)])
def test_sample_counts_and_batch_sizes_must_be_positive_integers(bad, error):
    """k = 3.5 drew 3 samples per chunk but divided by 3.5; k = 0 or batch_size = 0 failed with a
    math domain or a zero division error."""
    from minivae import evaluate as E

    model = build_model("m2", **SMALL_MODEL, rng=np.random.default_rng(0))  # one that classifies too
    x, y = np.ones((3, model.x_dim), np.float32), np.arange(3)
    calls = [("k", lambda: E.log_likelihood(model, x, k=bad)),
             ("k", lambda: E.log_likelihood_and_ess(model, x, k=bad)),
             ("batch_size", lambda: E.log_likelihood(model, x, k=2, batch_size=bad)),
             ("chunk_rows", lambda: E.log_likelihood(model, x, k=2, chunk_rows=bad)),
             ("batch_size", lambda: E.elbo(model, x, batch_size=bad)),
             ("batch_size", lambda: E.classification_error(model, x, y, batch_size=bad)),
             ("k", lambda: E.test_set_scores(model, x, y, k=bad))]
    for name, call in calls:
        with pytest.raises(error, match=f"{name} must be"):
            call()


def test_x_is_checked_and_converted_to_the_models_dtype():
    """A single image was taken as x_dim one-pixel examples, uint8 pixels were scored as if they
    were bits, and a float64 model could not be evaluated on float32 images (or a list)."""
    from minivae import evaluate as E

    model = build_model("m2", **SMALL_MODEL, rng=np.random.default_rng(0)).astype(np.float64)
    x = (np.random.default_rng(1).random((4, model.x_dim)) < 0.5).astype(np.float32)
    y = np.arange(4)
    evaluators = [lambda x: E.log_likelihood(model, x, k=2), lambda x: E.log_likelihood_and_ess(model, x, k=2),
                  lambda x: E.elbo(model, x), lambda x: E.classification_error(model, x, y),
                  lambda x: E.test_set_scores(model, x, y, k=2)]
    refused = [(x[0], ValueError, r"x must be a batch of shape \(B, 12\), got shape \(12,\); reshape one image"),
               (x.reshape(4, 3, 4), ValueError, r"reshape .* a batch of images with x.reshape\(len\(x\), -1\)"),
               (x[:, :6], ValueError, r"x must be a batch of shape \(B, 12\), got shape \(4, 6\)$"),
               (x[:0], ValueError, r"x has no examples"),
               ((x * 255).astype(np.uint8), TypeError, "divide uint8 pixels by 255 first"),
               (2 * x, ValueError, r"x has values in \[0, 2\]: the evaluation takes intensities in \[0, 1\]")]
    for evaluate in evaluators:
        for bad, error, message in refused:
            with pytest.raises(error, match=message):
                evaluate(bad)
        want = evaluate(x.astype(np.float64))
        for same in (x, x.tolist()):
            np.testing.assert_equal(evaluate(same), want)


def test_x_may_be_a_tensor():
    """NumPy read a Tensor as a sequence, one indexing op per pixel (seconds for a hundred
    images), into an array of dtype object that was refused as "x has dtype object"."""
    from minivae import analysis
    from minivae import evaluate as E

    model = build_model("m2", **SMALL_MODEL, rng=np.random.default_rng(0))
    x = (np.random.default_rng(1).random((4, model.x_dim)) < 0.5).astype(np.float32)
    y = np.arange(4)
    evaluators = [lambda x: E.log_likelihood_and_ess(model, x, k=2), lambda x: E.elbo(model, x),
                  lambda x: E.classification_error(model, x, y), lambda x: E.test_set_scores(model, x, y, k=2),
                  lambda x: analysis.encode_dataset(vae, x)]
    vae = build_model("vae", **SMALL_MODEL, rng=np.random.default_rng(0))
    for evaluate in evaluators:
        want = evaluate(x)
        np.testing.assert_equal(evaluate(mv.tensor(x)), want)
        np.testing.assert_equal(evaluate(mv.tensor(x, requires_grad=True)), want)


@pytest.mark.parametrize("name", ["m2", "m1m2"])
def test_the_labels_of_the_classification_error_are_checked(name):
    """A column of labels (N, 1) was compared with every prediction (an error of 3.7 for 6
    images), one-hot labels failed with NumPy's broadcasting message, and labels outside the
    model's classes or given as floats were scored without a word."""
    from minivae import evaluate as E

    mv.nn.init.manual_seed(0)  # M1+M2 builds its M1 with the global initializer
    model = build_model(name, **SMALL_MODEL, **MODEL_SIZES.get(name, {}), rng=np.random.default_rng(0))
    k = model.num_classes
    x = (np.random.default_rng(1).random((6, model.x_dim)) < 0.5).astype(np.float32)
    y = model.classify(mv.tensor(x))
    assert E.classification_error(model, x, y, batch_size=4) == 0
    refused = [(y[:, None], ValueError, r"labels must be a 1-D array, got shape \(6, 1\)"),
               (np.eye(k, dtype=np.int64)[y], ValueError, rf"labels must be a 1-D array, got shape \(6, {k}\)"),
               (y + 1.0, TypeError, "labels must be integers, got an array of dtype float64"),
               (y + k, ValueError, rf"labels must be integers in \[0, {k}\), got values from"),
               (y[:5], ValueError, "6 rows but 5 labels")]
    for labels, error, message in refused:
        with pytest.raises(error, match=message):
            E.classification_error(model, x, labels)


class _DeviceLabels(np.ndarray):
    """NumPy labels standing for labels on the GPU: ``is_gpu_array`` takes them for a CuPy
    array, and ``get()`` brings them to the host as CuPy's does."""

    __module__ = "cupy_stand_in"

    def get(self):
        return np.asarray(self)


def test_labels_on_the_gpu_are_checked_on_the_host_by_the_evaluators():
    """``check_labels`` does not read the values of labels on the GPU (a captured training step
    cannot); the evaluators, which compare on the host, scored labels outside the classes as
    errors without a word."""
    from minivae import evaluate as E

    model = build_model("m2", **SMALL_MODEL, rng=np.random.default_rng(0))
    x = (np.random.default_rng(1).random((6, model.x_dim)) < 0.5).astype(np.float32)
    y = model.classify(mv.tensor(x))
    assert E.classification_error(model, x, y.view(_DeviceLabels), batch_size=4) == 0
    assert E.classification_error(model, x, ((y + 1) % model.num_classes).view(_DeviceLabels)) == 1
    outside = (y + model.num_classes).view(_DeviceLabels)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 10\), got values from"):
        E.classification_error(model, x, outside)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 10\)"):
        E.test_set_scores(model, x, outside, k=2)


class _DeviceImages:
    """Images standing for a CuPy array: ``is_gpu_array`` takes them for one, ``get()`` brings
    them to the host, and NumPy cannot read them, as CuPy refuses it."""

    __module__ = "cupy_stand_in"

    def __init__(self, host):
        self.host = host

    def get(self):
        return self.host.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly.")


def test_images_on_the_gpu_are_scored_as_a_tensor_of_them_is():
    """The evaluators took a Tensor on the GPU and labels on the GPU to the host, but images on
    the GPU (a CuPy array) failed with CuPy's TypeError."""
    from minivae import evaluate as E

    model = build_model("m2", **SMALL_MODEL, rng=np.random.default_rng(0))
    x = (np.random.default_rng(1).random((6, model.x_dim)) < 0.5).astype(np.float32)
    y = model.classify(mv.tensor(x))
    for want, got in zip(E.elbo(model, x), E.elbo(model, _DeviceImages(x))):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(E.log_likelihood(model, _DeviceImages(x), k=3), E.log_likelihood(model, x, k=3))
    assert E.classification_error(model, _DeviceImages(x), y) == 0
    with pytest.raises(ValueError, match=r"x must be a batch of shape \(B, 12\), got shape \(6, 1, 12\)"):
        E.elbo(model, _DeviceImages(x[:, None]))


def test_the_test_set_scores_check_the_labels_before_the_passes_over_the_images():
    """Labels that the classification error refuses were found after the ELBO's pass and the
    importance-sampled one (k = 5000 for ``minivae eval``), which were then lost."""
    from minivae import evaluate as E

    model = build_model("m2", **SMALL_MODEL, rng=np.random.default_rng(0))
    x = (np.random.default_rng(1).random((4, model.x_dim)) < 0.5).astype(np.float32)

    def no_pass(*args, **kwargs):
        raise AssertionError("a pass over the images before the labels were checked")

    model.elbo = model.log_weights = no_pass
    for labels in (np.arange(4)[:, None], np.arange(3), np.arange(4) + 0.0):
        with pytest.raises((ValueError, TypeError), match="labels"):
            E.test_set_scores(model, x, labels, k=2)


@pytest.mark.parametrize("chunk_rows", [2, 6, 1000])
def test_the_effective_sample_size_is_that_of_the_weights(chunk_rows):
    """log_likelihood_and_ess gives log mean w and (sum w)^2 / sum w^2 of each example's weights,
    however the k samples are chunked: k for equal weights, about 1 when one weight dominates,
    and the formula's value for spread weights (log-weights far from 0: no overflow)."""
    from minivae.evaluate import log_likelihood_and_ess

    K = 12
    spread = np.random.default_rng(0).normal(0.0, 2.0, K) - 900.0
    log_w = np.stack([np.full(K, 700.0), np.r_[0.0, np.full(K - 1, -60.0)], spread], axis=1)
    x = np.eye(3)
    ll, ess = log_likelihood_and_ess(FixedWeights(log_w), x, k=K, batch_size=3, chunk_rows=chunk_rows)
    w = np.exp(spread - spread.max())
    np.testing.assert_allclose(ll, [700.0, np.log(np.exp(-60.0 * np.r_[0, np.ones(K - 1)]).mean()),
                                    spread.max() + np.log(w.mean())], rtol=1e-12)
    np.testing.assert_allclose(ess, [K, 1.0, w.sum() ** 2 / (w ** 2).sum()], rtol=1e-12)
    assert 1.0 < ess[2] < K
