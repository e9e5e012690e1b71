"""Clustering of the latent space: how well do a model's posterior means separate the digits?

A VAE never sees a label, yet the means of q(z | x) of the test images fall into groups that
are mostly digits. ``latent_clusters`` measures this: k-means (scikit-learn's ``KMeans``, an
optional extra: ``pip install 'minivae[cluster]'``) groups the means into k clusters, and the
clusters are scored against the labels by three numbers that each answer a different question:

    accuracy   the fraction of images whose cluster, matched one to one to a label, names their
               label: the matching maximizes the agreement (the Hungarian algorithm on the
               clusters-by-labels count table, scipy's ``linear_sum_assignment``), the
               "unsupervised clustering accuracy" of the deep clustering literature. With more
               clusters than labels the unmatched clusters count as wrong.
    nmi        normalized mutual information between clusters and labels (0: independent,
               1: the same partition up to names); no matching needed.
    ari        adjusted Rand index: agreement on pairs of images (same group or not),
               0 for a random partition, 1 for the labels' own.

The clusters are of the Gaussian that ``model.encode`` returns (``model.encoded_gaussian``), as
for the other latent statistics (``minivae.analysis``).
"""
import numpy as np

from .analysis import encode_dataset
from .checks import check_integer, check_points, check_sklearn_seed
from .evaluate import host_array


def _require_sklearn():
    """scikit-learn's KMeans and its two scores; ImportError naming the extra when absent."""
    try:
        from sklearn.cluster import KMeans
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    except ImportError:
        raise ImportError("clustering needs scikit-learn, an optional extra: "
                          "pip install 'minivae[cluster]'") from None
    return KMeans, adjusted_rand_score, normalized_mutual_info_score


def _integer_labels(values, name, n=None):
    """``values`` (NumPy, CuPy, a Tensor or a list: ``host_array``) as an integer NumPy array of
    one label per point, shape (N,) with N >= 1 (N = ``n`` when given): ValueError for another
    shape, TypeError for labels that are no integers."""
    values = host_array(values, name)  # scikit-learn and scipy count on the host
    if values.ndim != 1 or len(values) == 0 or (n is not None and len(values) != n):
        want = "(N,) with N >= 1" if n is None else f"({n},)"
        raise ValueError(f"{name} must hold one label per point, shape {want}; got shape {values.shape}")
    if values.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {values.dtype}")
    return values


def _pair(labels, clusters):
    """``labels`` and ``clusters`` checked by ``_integer_labels``, one of each per point."""
    labels = _integer_labels(labels, "labels")
    return labels, _integer_labels(clusters, "clusters", len(labels))


def _check_n_clusters(n_clusters, n):
    """``n_clusters`` as a Python int from 1 to ``n``, the number of points to cluster."""
    n_clusters = check_integer(n_clusters, "n_clusters", minimum=1)
    if n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} is more than the {n} points")
    return n_clusters


def kmeans(points, n_clusters=10, seed=0):
    """The cluster (0 .. n_clusters - 1) of each of the (N, D) ``points`` (NumPy or CuPy, or a
    Tensor: ``host_array``), a NumPy array of shape (N,), by scikit-learn's KMeans (k-means++
    starts, the best of 10 runs), seeded by ``seed``. ``n_clusters`` is an integer from 1 to N."""
    KMeans, _, _ = _require_sklearn()
    # scikit-learn runs on the host: a CuPy array is copied there, not refused by np.asarray.
    points = np.asarray(host_array(points, "points"), dtype=np.float64)
    check_points(points, "points")
    n_clusters = _check_n_clusters(n_clusters, len(points))
    seed = check_sklearn_seed(seed)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(points)


def cluster_accuracy(labels, clusters):
    """The fraction of points whose cluster names their label once each cluster is matched to at
    most one label and each label to at most one cluster, by the matching that maximizes the
    number of such points (see the module docstring). ``labels`` and ``clusters`` are integer
    arrays of shape (N,), NumPy or CuPy."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # as for scikit-learn, which brings scipy: the extra, not a bare module name
        raise ImportError("cluster_accuracy needs scipy, which comes with scikit-learn, an optional "
                          "extra: pip install 'minivae[cluster]'") from None

    labels, clusters = _pair(labels, clusters)
    _, label_index = np.unique(labels, return_inverse=True)
    _, cluster_index = np.unique(clusters, return_inverse=True)
    counts = np.zeros((cluster_index.max() + 1, label_index.max() + 1), dtype=np.int64)
    np.add.at(counts, (cluster_index, label_index), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def clustering_scores(labels, clusters):
    """``{"accuracy", "nmi", "ari"}`` of the partition ``clusters`` against ``labels`` (integer
    arrays of shape (N,), NumPy or CuPy), each a float; see the module docstring for what each
    measures."""
    _, adjusted_rand_score, normalized_mutual_info_score = _require_sklearn()
    labels, clusters = _pair(labels, clusters)
    return {"accuracy": cluster_accuracy(labels, clusters),
            "nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters))}


def latent_clusters(model, x, labels, n_clusters=10, seed=0, batch_size=500):
    """k-means on the posterior means of ``model`` for the images ``x`` (N, x_dim), scored against
    their integer ``labels`` (N,): ``{"encoded_gaussian", "n", "n_clusters", "seed", "accuracy",
    "nmi", "ari"}``. The model must have a Gaussian encoder (``model.gaussian_encoder``)."""
    # Everything is checked before the encoding pass, not after it.
    _require_sklearn()
    labels = _integer_labels(labels, "labels", len(x))
    n_clusters = _check_n_clusters(n_clusters, len(labels))
    seed = check_sklearn_seed(seed)
    mu, _ = encode_dataset(model, x, batch_size=batch_size)
    clusters = kmeans(mu, n_clusters, seed)
    return {"encoded_gaussian": model.encoded_gaussian, "n": len(mu), "n_clusters": n_clusters,
            "seed": seed, **clustering_scores(labels, clusters)}
