"""minivae.clustering and ``minivae cluster``: k-means on the posterior means, scored against the
labels. The accuracy's matching is checked against a brute force over every matching; k-means
against blobs it must separate; the command on a tiny run made by the CLI itself."""
import itertools
import json
import math
import sys
import types

import numpy as np
import pytest

import minivae as mv
import minivae.data
from minivae import clustering
from minivae.cli import main
from minivae.models import M2, VAE
from test_cli_errors import trained_run, user_error  # noqa: F401  (trained_run is a fixture)
from test_train import small_data


def brute_force_accuracy(labels, clusters):
    """The best fraction of agreeing points over every one-to-one matching of clusters to labels
    (clusters left over are wrong), by trying them all: an independent check of the Hungarian
    matching."""
    names, classes = np.unique(clusters), np.unique(labels)
    best = 0
    for chosen in itertools.permutations(list(classes) + [None] * len(names), len(names)):
        match = dict(zip(names, chosen))
        best = max(best, sum(match[c] == y for c, y in zip(clusters, labels)))
    return best / len(labels)


@pytest.mark.parametrize("n_labels, n_clusters", [(3, 3), (4, 4), (3, 5), (5, 3)])
def test_cluster_accuracy_is_the_best_one_to_one_matching(n_labels, n_clusters):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(n_labels * 10 + n_clusters)
    for _ in range(20):
        labels = rng.integers(0, n_labels, 30)
        clusters = rng.integers(0, n_clusters, 30) * 7 + 3  # cluster names need not be 0..C-1
        assert clustering.cluster_accuracy(labels, clusters) == pytest.approx(
            brute_force_accuracy(labels, clusters), abs=1e-12)


def test_a_renamed_partition_scores_1_and_a_constant_one_scores_its_largest_class():
    pytest.importorskip("sklearn")
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    renamed = np.array([5, 5, 0, 0, 0, 9, 9, 9, 9])
    assert clustering.clustering_scores(labels, renamed) == {"accuracy": 1.0, "nmi": 1.0, "ari": 1.0}
    constant = clustering.clustering_scores(labels, np.zeros(9, dtype=np.int64))
    assert constant["accuracy"] == pytest.approx(4 / 9) and constant["nmi"] == 0 and constant["ari"] == 0



def scores_by_hand(labels, clusters):
    """NMI (mutual information over the arithmetic mean of the two entropies, in nats) and ARI
    (pair counts against their expectation) from the count table, by their textbook formulas."""
    n = len(labels)
    table = {}
    for y, c in zip(labels, clusters):
        table[y, c] = table.get((y, c), 0) + 1
    rows = {y: sum(k for (a, _), k in table.items() if a == y) for y in set(labels)}
    cols = {c: sum(k for (_, b), k in table.items() if b == c) for c in set(clusters)}
    mi = sum(k / n * math.log(k * n / (rows[y] * cols[c])) for (y, c), k in table.items())
    entropy = lambda counts: -sum(k / n * math.log(k / n) for k in counts.values())
    nmi = mi / ((entropy(rows) + entropy(cols)) / 2)
    index = sum(math.comb(k, 2) for k in table.values())
    a, b = sum(math.comb(k, 2) for k in rows.values()), sum(math.comb(k, 2) for k in cols.values())
    expected = a * b / math.comb(n, 2)
    return nmi, (index - expected) / ((a + b) / 2 - expected)


def test_nmi_and_ari_are_what_their_names_say():
    pytest.importorskip("sklearn")
    labels = [0, 0, 0, 1, 1, 1, 2, 2]
    clusters = [0, 0, 1, 1, 2, 2, 2, 2]
    nmi, ari = scores_by_hand(labels, clusters)
    assert abs(nmi - ari) > 0.1
    scores = clustering.clustering_scores(np.array(labels), np.array(clusters))
    assert scores["nmi"] == pytest.approx(nmi, rel=1e-12) and scores["ari"] == pytest.approx(ari, rel=1e-12)


def blobs(n_per=40, centres=((0, 0), (10, 0), (0, 10)), seed=0):
    rng = np.random.default_rng(seed)
    points = np.concatenate([np.asarray(c) + rng.standard_normal((n_per, 2)) for c in centres])
    return points, np.repeat(np.arange(len(centres)), n_per)


def test_kmeans_separates_blobs_and_is_fixed_by_its_seed():
    pytest.importorskip("sklearn")
    points, labels = blobs()
    clusters = clustering.kmeans(points, n_clusters=3, seed=4)
    assert clusters.shape == (120,) and clustering.cluster_accuracy(labels, clusters) == 1.0
    np.testing.assert_array_equal(clusters, clustering.kmeans(points, n_clusters=3, seed=4))


class _DeviceArray:
    """Stands for a CuPy array: minivae.backend tells devices apart by the module of the type, and
    CuPy refuses np.asarray (no implicit copy to the host); ``get()`` is the explicit copy."""

    def __init__(self, array):
        self._array = np.asarray(array)

    def get(self):
        return self._array.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly.")


_DeviceArray.__module__ = "cupy.stand_in"


def test_kmeans_and_the_scores_take_arrays_on_the_gpu():
    """The means and labels of a model on the GPU are CuPy arrays; scikit-learn runs on the host."""
    pytest.importorskip("sklearn")
    points, labels = blobs()
    clusters = clustering.kmeans(_DeviceArray(points), n_clusters=3, seed=4)
    np.testing.assert_array_equal(clusters, clustering.kmeans(points, n_clusters=3, seed=4))
    assert clustering.clustering_scores(_DeviceArray(labels), _DeviceArray(clusters)) == \
        clustering.clustering_scores(labels, clusters)
    assert clustering.cluster_accuracy(_DeviceArray(labels), _DeviceArray(clusters)) == 1.0



def test_kmeans_and_the_scores_take_tensors_and_refuse_masked_arrays():
    """A model's means as a Tensor are read by their data (NumPy read a Tensor as a sequence of
    0-d Tensors and failed); a masked array is refused by name rather than read under its mask."""
    pytest.importorskip("sklearn")
    points, labels = blobs()
    clusters = clustering.kmeans(mv.tensor(points), n_clusters=3, seed=4)
    np.testing.assert_array_equal(clusters, clustering.kmeans(points, n_clusters=3, seed=4))
    assert clustering.clustering_scores(mv.tensor(labels), mv.tensor(clusters)) == \
        clustering.clustering_scores(labels, clusters)
    with pytest.raises(TypeError, match=r"^labels.*masked"):
        clustering.cluster_accuracy(np.ma.masked_array(labels), clusters)

class _StandInKMeans:
    """Records what KMeans is given; its clusters are the points' positions modulo k."""
    calls = []

    def __init__(self, **settings):
        self.settings = settings

    def fit_predict(self, points):
        _StandInKMeans.calls.append((self.settings, points))
        return np.arange(len(points)) % self.settings["n_clusters"]


def _best_matching(counts, maximize):
    """scipy's linear_sum_assignment (maximize=True) by trying every matching: small tables only."""
    assert maximize
    if counts.shape[0] > counts.shape[1]:
        cols, rows = _best_matching(counts.T, maximize)
        order = np.argsort(rows)
        return rows[order], cols[order]
    rows = np.arange(counts.shape[0])
    best = max(itertools.permutations(range(counts.shape[1]), len(rows)),
               key=lambda cols: counts[rows, list(cols)].sum())
    return rows, np.array(best)


@pytest.fixture
def stand_in_extras(monkeypatch):
    """scikit-learn's KMeans and scores and scipy's matching, by stand-ins: what minivae counts
    and hands them is tested where the extras are not installed."""
    for name in ("sklearn", "sklearn.cluster", "sklearn.metrics", "scipy", "scipy.optimize"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["sklearn.cluster"].KMeans = _StandInKMeans
    sys.modules["sklearn.metrics"].adjusted_rand_score = lambda labels, clusters: 0.0
    sys.modules["sklearn.metrics"].normalized_mutual_info_score = lambda labels, clusters: 0.0
    sys.modules["scipy.optimize"].linear_sum_assignment = _best_matching
    monkeypatch.setattr(_StandInKMeans, "calls", [])


def test_kmeans_hands_scikit_learn_float64_host_points_and_its_settings(stand_in_extras):
    points = blobs()[0].astype(np.float32)
    clustering.kmeans(_DeviceArray(points), n_clusters=3, seed=4)
    (settings, given), = _StandInKMeans.calls
    assert settings == {"n_clusters": 3, "n_init": 10, "random_state": 4}
    assert type(given) is np.ndarray and given.dtype == np.float64
    np.testing.assert_array_equal(given, points)


def test_cluster_accuracy_counts_more_points_than_a_small_integer_holds(stand_in_extras):
    labels = np.repeat([0, 1], [300, 100])
    clusters = np.repeat([7, 3], [300, 100])
    assert clustering.cluster_accuracy(_DeviceArray(labels), _DeviceArray(clusters)) == 1.0
    assert clustering.cluster_accuracy(labels, np.full(400, 5)) == 0.75


def test_latent_clusters_checks_the_seed_and_the_extra_before_encoding(monkeypatch, stand_in_extras):
    model = VAE(x_dim=4, z_dim=2, hidden=(3,), rng=0)
    monkeypatch.setattr(model, "encode", lambda x: pytest.fail("the images were encoded"))
    x, labels = np.zeros((10, 4), dtype=np.float32), np.arange(10) % 2
    with pytest.raises(ValueError, match=r"^seed must be below 2\*\*32"):
        clustering.latent_clusters(model, x, labels, n_clusters=2, seed=2**32)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)  # an import of it fails, as when absent
    with pytest.raises(ImportError, match="^clustering needs scikit-learn"):
        clustering.latent_clusters(model, x, labels, n_clusters=2)


@pytest.mark.parametrize("call, error, message", [
    (lambda p: clustering.kmeans(p, n_clusters=0), ValueError, "n_clusters must be at least 1, got 0"),
    (lambda p: clustering.kmeans(p, n_clusters=2.5), TypeError, "n_clusters must be an integer, got 2.5"),
    (lambda p: clustering.kmeans(p[:4], n_clusters=5), ValueError, "n_clusters=5 is more than the 4 points"),
    (lambda p: clustering.kmeans(p, seed=2**32), ValueError, r"seed must be below 2\*\*32"),
    (lambda p: clustering.kmeans(p[:, 0]), ValueError, r"points must be \(N, D\) with N >= 1, got shape \(120,\)"),
    (lambda p: clustering.cluster_accuracy([0, 1, 1], [0, 1]), ValueError,
     r"clusters must hold one label per point, shape \(3,\); got shape \(2,\)"),
    (lambda p: clustering.cluster_accuracy([0.0, 1.0], [0, 1]), TypeError, "labels must be integers, got dtype float64"),
    (lambda p: clustering.cluster_accuracy([], []), ValueError, r"labels must hold one label per point, shape \(N,\) with N >= 1"),
], ids=["no clusters", "fractional clusters", "more clusters than points", "seed too large",
        "1-D points", "fewer clusters than labels", "float labels", "no points"])
def test_bad_arguments_are_named(call, error, message, stand_in_extras):
    # minivae's own checks, made before scikit-learn or scipy is used: they run without either.
    with pytest.raises(error, match=f"^{message}"):
        call(blobs()[0])


def test_without_scikit_learn_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # an import of it fails, as when absent
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(ImportError, match=r"^clustering needs scikit-learn, an optional extra: "
                                          r"pip install 'minivae\[cluster\]'$"):
        clustering.kmeans(blobs()[0])


def test_without_scipy_the_extra_is_named(monkeypatch):
    """(cluster_accuracy, which needs no scikit-learn itself, met "No module named 'scipy'".)"""
    monkeypatch.setitem(sys.modules, "scipy", None)  # an import of it fails, as when absent
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r"^cluster_accuracy needs scipy, which comes with scikit-learn, "
                                          r"an optional extra: pip install 'minivae\[cluster\]'$"):
        clustering.cluster_accuracy([0, 1, 1], [1, 0, 0])


def test_latent_clusters_of_a_vae():
    pytest.importorskip("sklearn")
    data = small_data(n_eval=50)
    model = VAE(x_dim=784, z_dim=3, hidden=(16,), rng=0)
    result = clustering.latent_clusters(model, data.x_test, data.y_test, n_clusters=5, seed=1)
    assert result["encoded_gaussian"] == model.encoded_gaussian
    assert (result["n"], result["n_clusters"], result["seed"]) == (50, 5, 1)
    assert 0 < result["accuracy"] <= 1 and -1 <= result["ari"] <= 1 and 0 <= result["nmi"] <= 1
    assert json.loads(json.dumps(result)) == result  # plain Python numbers, ready for a JSON file
    with pytest.raises(ValueError, match=r"labels must hold one label per point, shape \(50,\)"):
        clustering.latent_clusters(model, data.x_test, data.y_test[:10])
    with pytest.raises(TypeError, match="M2 cannot be used for latent statistics"):
        clustering.latent_clusters(M2(x_dim=784, z_dim=3, hidden=(8,)), data.x_test, data.y_test)


def test_kmeans_takes_as_many_clusters_as_points():
    pytest.importorskip("sklearn")
    clusters = clustering.kmeans(np.array([[0.0], [1.0], [5.0]]), n_clusters=3)
    assert sorted(clusters.tolist()) == [0, 1, 2]


def test_latent_clusters_groups_the_means_not_the_log_variances(monkeypatch):
    """Means in three far blobs, log-variances of no structure: the clusters are the blobs."""
    pytest.importorskip("sklearn")
    points, labels = blobs()
    noise = np.random.default_rng(1).normal(size=points.shape)
    monkeypatch.setattr(clustering, "encode_dataset", lambda model, x, batch_size: (points, noise))
    model = VAE(x_dim=4, z_dim=2, hidden=(3,), rng=0)
    result = clustering.latent_clusters(model, np.zeros((len(points), 4)), labels, n_clusters=3)
    assert result["accuracy"] == 1.0 and result["n"] == len(points)


def test_latent_clusters_checks_the_number_of_clusters_before_encoding(monkeypatch):
    """More clusters than images is refused before the pass that encodes them, not after it."""
    pytest.importorskip("sklearn")
    data = small_data(n_eval=50)
    model = VAE(x_dim=784, z_dim=3, hidden=(16,), rng=0)
    monkeypatch.setattr(model, "encode", lambda x: pytest.fail("the images were encoded"))
    with pytest.raises(ValueError, match="^n_clusters=20 is more than the 10 points$"):
        clustering.latent_clusters(model, data.x_test[:10], data.y_test[:10], n_clusters=20)


# ----- the command ------------------------------------------------------------------------------

def test_cluster_command_writes_its_scores(capsys, monkeypatch, trained_run):  # noqa: F811
    pytest.importorskip("sklearn")
    monkeypatch.setattr(minivae.data, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
    assert main(["cluster", str(trained_run), "--clusters", "5", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result == json.loads((trained_run / "clusters_5.json").read_text())
    assert (result["n"], result["n_clusters"], result["seed"]) == (20, 5, 3)
    assert f"wrote {trained_run / 'clusters_5.json'}" in captured.err
    assert main(["cluster", str(trained_run), "--clusters", "2", "--n", "10"]) == 0
    assert json.loads((trained_run / "clusters_2_first10.json").read_text())["n"] == 10


def test_cluster_command_mistakes_are_one_line(capsys, monkeypatch, tmp_path, trained_run):  # noqa: F811
    # scikit-learn is checked before the output file is claimed (claiming makes its folder); a
    # stand-in lets the mistakes after that check be named where scikit-learn is absent too.
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    user_error(capsys, ["cluster", str(trained_run), "--clusters", "20", "--n", "10"],
               "--clusters 20 is more than the 10 images to cluster (--n); give at most 10")
    user_error(capsys, ["cluster", str(trained_run), "--n", "20000"], "--n", "20000", "[1, 10000]")
    user_error(capsys, ["cluster", str(trained_run), "--seed", "-1"], "--seed", "[0, 2**32)")
    user_error(capsys, ["cluster", str(trained_run), "--out", str(tmp_path / "c.png")], "give a .json file")
    user_error(capsys, ["cluster", str(tmp_path / "none")], "does not exist")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    user_error(capsys, ["cluster", str(trained_run)], "pip install 'minivae[cluster]'")


def test_cluster_command_refuses_a_model_without_a_gaussian_encoder(capsys, tmp_path):
    out = tmp_path / "m2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(minivae.train, "load_mnist", lambda verbose=True: small_data(n_train=100, n_eval=20))
        assert main(["train", "--model", "m2", "--epochs", "1", "--hidden", "8", "--z-dim", "2",
                     "--batch-size", "50", "--n-labelled", "50", "--eval-k", "0", "--out", str(out),
                     "--no-progress"]) == 0
    user_error(capsys, ["cluster", str(out)], "the m2 model of", "has no Gaussian encoder")
