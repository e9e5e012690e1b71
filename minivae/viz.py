"""Pictures of a trained run: samples, reconstructions, the latent space, traversals, curves.

``minivae plot RUN`` calls :func:`plot_run`, which writes PNG files into the run folder::

    samples.png          an 8 x 8 grid of Bernoulli means decoded from z ~ N(0, I) (a model with a
                         label y: one row per class, 8 draws each; ``prior_samples``)
    reconstructions.png  test inputs next to the Bernoulli means decoded from their posterior means
    latent_pca.png       test-set posterior means E_q[z|x] projected to 2-D by PCA, coloured by label
    latent_tsne.png      the same points embedded by t-SNE (only when scikit-learn is installed)
    latent_umap.png      ... and by UMAP (only when umap-learn is installed)
    traversal.png        z-dim 2: decoded grid over the Gaussian quantiles; otherwise one row per
                         high-KL dimension, swept from -3 to 3 with the others at 0
    kl_per_dim.png       mean KL(q(z_d|x) || N(0,1)) per latent dimension, active units marked
    curves.png           learning curves from metrics.jsonl (ELBO or bound, validation ELBO, KL or
                         the validation error)
    grad_norms.png       per-layer gradient norms, when metrics.jsonl has ``grad_norm/...`` keys

With ``last`` (``minivae plot RUN --last``) on a run trained with ``keep_best``, the pictures of the
model of its last checkpoint take ``_last`` before their suffix (``samples_last.png``,
``reconstructions_last.png``, ...: ``runs.model_file_name``), beside those of the model the run
selected; curves.png and grad_norms.png are drawn from metrics.jsonl, not from a model, and keep
their names.

The reconstructions and the latent pictures (PCA to KL per dimension) are drawn for the models
with one Gaussian latent q(z | x) (the VAE family: ``vae``, ``flow``'s base posterior); the
others (two-layer IWAE, Ladder, Gumbel, ADGM/SDGM, M2, ...) get the samples and the curves.

matplotlib is an optional extra (``pip install 'minivae[viz]'``) and is imported inside the
functions that need it. Figures are drawn with matplotlib's object-oriented API
(``matplotlib.figure.Figure``, rendered by Agg) and never through ``pyplot``, so no screen is
needed, no global backend is switched under a user's notebook, and no figure stays alive in
pyplot's registry after it is saved.

The latent statistics (KL per dimension, active units) are computed by ``minivae.analysis``.
"""
import math
import statistics
from pathlib import Path

import numpy as np

from . import functional as F
from . import streams
from .analysis import ACTIVE_UNIT_THRESHOLD, encode_dataset, kl_per_dimension, latent_activity
from .autograd import tensor
from .backend import to_device
from .checks import (NON_NEGATIVE, POSITIVE, check_bool, check_float, check_integer, check_points, check_ranges,
                     check_sklearn_seed)
from .data import binarize_eval, load_mnist
from .evaluate import host_array
from .files import atomic_write
from .models import VAE
from .nn import evaluating
from .random import Generator
from .runs import (BEST, CHECKPOINT, model_file_name, names_last, read_metrics, read_run_model,
                   writing_for_run)
from .trace import GRAD_PREFIX, RATIO_PREFIX

# Grey between tiles: visible against both the black background and the white strokes of digits.
_PAD_VALUE = 0.5


def _require_matplotlib():
    """Import matplotlib (Agg only, through the Figure API) or explain how to install it."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
        import matplotlib.image as mpimg
    except ImportError as exc:
        raise ImportError(
            "minivae's pictures need matplotlib, an optional extra: pip install 'minivae[viz]'"
        ) from exc
    return Figure, mpimg


# ----- plain NumPy --------------------------------------------------------------------------------

def pca_2d(points):
    """Project (N, D) points onto their first two principal components with an SVD.

    Returns ``(projected (N, 2), explained variance ratio (2,))``. With D == 1 the second
    coordinate is zero. The sign of each component is fixed (largest loading positive) so the
    picture does not flip between runs of the same model. ``points`` must be finite, N >= 1:
    NumPy or CuPy, a Tensor, or anything ``np.asarray`` takes (``host_array``).
    """
    x = np.asarray(host_array(points, "points"), dtype=np.float64)
    check_points(x, "points")
    if not np.isfinite(x).all():  # else the SVD fails to converge, naming nothing
        raise ValueError("points contain NaN or infinite values (a diverged model's latent means?)")
    x = x - x.mean(axis=0)
    # Economy SVD of the centred data: rows of vt are the principal directions, s**2 / (N - 1)
    # their variances. N x D with D <= a few hundred, so this is cheap.
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(2, vt.shape[0])
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    proj = np.zeros((len(x), 2))
    proj[:, :k] = x @ vt.T
    total = float((s ** 2).sum())
    ratio = np.zeros(2)
    if total > 0:
        ratio[:k] = s[:k] ** 2 / total
    return proj, ratio


# ----- image grids -----------------------------------------------------------------------------

def _as_images(images):
    """(N, 784) or (N, H, W) array-like (NumPy or CuPy, or a Tensor: ``host_array``) -> float
    (N, H, W) NumPy array."""
    x = np.asarray(host_array(images, "images"), dtype=np.float64)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"cannot reshape rows of length {x.shape[1]} into square images")
        x = x.reshape(len(x), side, side)
    if x.ndim != 3:
        raise ValueError(f"images must be (N, H*W) or (N, H, W), got shape {x.shape}")
    return x


def _check_pixels(images, name):
    """Refuse integer images before a picture that shows [0, 1] as black to white clips them."""
    # The dtype alone: no copy of a CuPy array to the host (_as_images makes the one copy).
    check_float(images if hasattr(images, "dtype") else np.asarray(images), name, use="a picture")


def tile_images(images, nrow=None, pad=2, pad_value=_PAD_VALUE):
    """Arrange images into one 2-D array: ``nrow`` images per row (default ceil(sqrt(N))).

    ``images`` is (N, H*W) with square images or (N, H, W); ``pad`` pixels of ``pad_value``
    separate the tiles and frame the grid. Empty cells of the last row stay ``pad_value``.
    ``nrow`` is an integer of at least 1, ``pad`` of at least 0.
    """
    x = _as_images(images)
    n, h, w = x.shape
    if n == 0:
        raise ValueError("no images to tile")
    ncol = math.ceil(math.sqrt(n)) if nrow is None else check_integer(nrow, "nrow", minimum=1)
    pad = check_integer(pad, "pad", minimum=0)
    ncol = min(ncol, n)
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = x[i]
    return grid


def save_image_grid(images, path, nrow=None, pad=2, scale=1):
    """Write images with values in [0, 1] as one grey-scale PNG grid; return the path.

    ``images``: (N, 784) or (N, 28, 28) (NumPy or CuPy). ``nrow``: images per row (default
    ceil(sqrt(N)), as torchvision's ``make_grid``). Each pixel of the grid is one pixel of the PNG,
    magnified ``scale`` times (an integer of at least 1) by pixel repetition (nearest neighbour
    keeps the pixels sharp). Values are clipped to [0, 1] and shown 0 = black, 1 = white; an
    integer dtype (uint8 pixels 0..255) is refused with a TypeError, NaN or infinite values (a
    diverged model's images) with a ValueError.
    """
    _, mpimg = _require_matplotlib()
    _check_pixels(images, "images")
    scale = check_integer(scale, "scale", minimum=1)
    grid = tile_images(images, nrow=nrow, pad=pad)
    _check_finite(grid, "images")
    grid = np.clip(grid, 0.0, 1.0)
    if scale != 1:
        grid = np.kron(grid, np.ones((scale, scale)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: mpimg.imsave(f, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png"))
    return path


def _check_finite(values, name):
    """Refuse NaN or infinite values, which a picture would draw as blank tiles or missing bars
    without a word."""
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values; give finite ones")


# ----- model queries (no graph, eval mode) ------------------------------------------------------

def prior_samples(model, n, seed):
    """``n`` images drawn from the prior of ``model`` (Bernoulli means of its decoder) and how
    many to show per row: a model with a label y draws its classes in blocks of ceil(n / K), one
    block per row of the grid, the others ceil(sqrt(n)) per row. The draws are those of
    ``minivae sample --seed``; the model runs in eval mode, since ``sample`` itself only turns
    the graph off (batch-norm layers must use their running statistics)."""
    n = check_integer(n, "n", minimum=1)
    noise = Generator(seed=seed, stream=streams.SAMPLE_IMAGES)
    with evaluating(model):
        if model.semi_supervised:
            per_class = math.ceil(n / model.num_classes)
            labels = np.repeat(np.arange(model.num_classes), per_class)[:n]
            return model.sample(n, noise, labels=labels), per_class
        return model.sample(n, noise), math.ceil(math.sqrt(n))


def decode_means(model, z, batch_size=500):
    """Bernoulli means sigmoid(decode(z)) for latent points ``z`` (N, D), as NumPy (N, x_dim).

    No points (N = 0) give no images, an empty (0, x_dim) array. ``z`` must be finite;
    ``batch_size`` is an integer of at least 1.
    """
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    param = next(iter(model.parameters()))
    z = np.asarray(z, dtype=param.dtype)
    # Models of several latent layers have no z_dim: they decode their top layer, of any width here.
    z_dim = getattr(model, "z_dim", None)
    if z.ndim != 2 or (z_dim is not None and z.shape[1] != z_dim):
        raise ValueError(f"z must be latent points of shape (N, {z_dim or 'D'}), got shape {z.shape}")
    _check_finite(z, "z")
    out = []
    with evaluating(model):
        for start in range(0, len(z), batch_size):
            zb = tensor(to_device(z[start:start + batch_size], param.device))
            out.append(F.sigmoid(model.decode(zb)).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.x_dim), dtype=param.dtype)


# ----- figures ------------------------------------------------------------------------------

def _save(fig, path):
    """Write ``fig`` to ``path`` in the format its suffix names (PNG without one), atomically as
    every picture: a write that fails (a full disk) or is cut off keeps the picture that was
    there (a plain write truncates it first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # as save_image_grid: every picture alike
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format=path.suffix[1:] or None))
    return path


def _gray_axes(ax, grid):
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reconstructions(x, recon, path, n=32, ncol=8):
    """Side-by-side grids: ``n`` inputs (left) and their reconstructions (right), same positions,
    ``ncol`` per row (both integers of at least 1). Both are finite float intensities in [0, 1]."""
    Figure, _ = _require_matplotlib()
    _check_pixels(x, "x")
    _check_pixels(recon, "recon")
    if np.shape(x) != np.shape(recon):  # the panels pair the images by position
        raise ValueError(f"x and recon must have the same shape, one reconstruction per input; "
                         f"got {np.shape(x)} and {np.shape(recon)}")
    n = min(check_integer(n, "n", minimum=1), len(x))
    ncol = check_integer(ncol, "ncol", minimum=1)
    grids = (tile_images(x[:n], nrow=ncol), tile_images(recon[:n], nrow=ncol))
    _check_finite(grids[0], "x")
    _check_finite(grids[1], "recon")
    # Height from the grids' aspect (ncol x ceil(n/ncol) tiles per panel) plus room for titles.
    fig = Figure(figsize=(8, 0.5 + 3.9 * math.ceil(n / ncol) / ncol))
    for ax, grid, title in zip(fig.subplots(1, 2), grids,
                               ("input (binarized test images)", "reconstruction (Bernoulli means)")):
        _gray_axes(ax, grid)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _point_labels(labels, n, name="labels"):
    """``labels`` as a NumPy array of one integer label per point, shape (``n``,), refused
    otherwise with ``name`` in the message (the colour of a point is C(label mod 10))."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must hold one label per point, shape ({n},), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers (digit classes), got dtype {labels.dtype}")
    return labels


def plot_latent_scatter(points, labels, path, title, xlabel, ylabel):
    """A 2-D scatter of latent points coloured by digit label (tab10, with a legend).

    ``points`` is (N, 2); ``labels`` None (one colour) or one integer label per point, shape (N,).
    The points are drawn in one fixed shuffled order, so where digits overlap none covers the
    others.
    """
    Figure, _ = _require_matplotlib()
    from matplotlib.lines import Line2D
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got shape {points.shape}")
    labels = None if labels is None else _point_labels(labels, len(points))
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.6)
    else:
        # One scatter call in a shuffled order: a call per class would paint the last digits
        # over the first wherever they overlap, and so would points sorted by label. The order
        # is fixed, so the same points give the same picture.
        order = np.random.default_rng(0).permutation(len(points))
        ax.scatter(points[order, 0], points[order, 1], s=3, alpha=0.6,
                   color=[f"C{int(c) % 10}" for c in labels[order]])
        # The legend names every digit with its colour, from one marker per digit.
        handles = [Line2D([], [], linestyle="", marker="o", markersize=7, alpha=0.6,
                          color=f"C{int(c) % 10}", label=str(c)) for c in np.unique(labels)]
        ax.legend(handles=handles, fontsize=8, loc="best", title="label", title_fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)


def _sweep(lo, hi, n):
    """``n`` evenly spaced values from ``lo`` to ``hi``; for n = 1 the one value between them
    (``np.linspace`` gives ``lo``: a traversal of one image would show an edge, not the middle)."""
    return np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])


def _gaussian_quantiles(n, lo=0.05, hi=0.95):
    # Equal steps in probability, mapped through the inverse normal CDF (Kingma & Welling 2014,
    # figure 4): the grid covers the prior's mass evenly instead of over-sampling its tails.
    nd = statistics.NormalDist()
    return np.array([nd.inv_cdf(p) for p in _sweep(lo, hi, n)])


def plot_traversal(model, path, kl=None, n=15, n_dims=8, span=3.0):
    """Decode a latent traversal and save it.

    z-dim 2: an n x n grid over the Gaussian quantiles of both axes (z1 left to right, z2 bottom
    to top, as in a scatter plot). Otherwise: one row per latent dimension, the ``n_dims``
    dimensions with the largest mean KL (``kl``, shape (D,); the first ones when None), each swept
    over ``n`` values from -span to span while the other dimensions stay at 0, the prior mean.
    With ``n`` = 1 the one image of each axis is at its centre, 0.
    ``n`` and ``n_dims`` are integers of at least 1, ``span`` a number above 0, ``kl`` finite.
    """
    Figure, _ = _require_matplotlib()
    n = check_integer(n, "n", minimum=1)
    n_dims = check_integer(n_dims, "n_dims", minimum=1)
    check_ranges(plot_traversal, {"span": POSITIVE}, span=span)
    d = model.z_dim
    if d == 2:
        q = _gaussian_quantiles(n)
        # Row r holds z2 = q[n-1-r] so that z2 grows upwards, matching the latent scatter.
        z = np.array([[z1, z2] for z2 in q[::-1] for z1 in q])
        grid = tile_images(decode_means(model, z), nrow=n, pad=1)
        fig = Figure(figsize=(7, 7.3))
        ax = fig.subplots()
        _gray_axes(ax, grid)
        ax.set_title("decoded latent grid over N(0,1) quantiles (z1 right, z2 up)", fontsize=10)
        fig.tight_layout()
        return _save(fig, path)
    if kl is not None and np.shape(kl) != (d,):  # else argsort would rank fewer dims, or others
        raise ValueError(f"kl must hold one value per latent dimension, shape ({d},), got shape "
                         f"{np.shape(kl)}")
    if kl is not None:  # argsort would rank a NaN last, and its row would read "(nan)"
        _check_finite(kl, "kl")
    order = np.arange(d) if kl is None else np.argsort(-np.asarray(kl), kind="stable")
    dims = order[:min(n_dims, d)]
    values = _sweep(-span, span, n)
    z = np.zeros((len(dims) * n, d))
    for r, dim in enumerate(dims):
        z[r * n:(r + 1) * n, dim] = values
    images = decode_means(model, z)
    h = math.isqrt(images.shape[1])
    pad = 1
    grid = tile_images(images, nrow=n, pad=pad)
    fig = Figure(figsize=(7, 1.0 + 6.4 * grid.shape[0] / grid.shape[1]))
    ax = fig.subplots()
    _gray_axes(ax, grid)
    # Label each row with its dimension (and KL), the columns with the swept values.
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(dims))])
    ax.set_yticklabels([f"z{int(k)}" + ("" if kl is None else f" ({kl[k]:.2f})") for k in dims],
                       fontsize=8)
    ticks = [0, n // 2, n - 1]
    ax.set_xticks([pad + c * (h + pad) + h / 2 for c in ticks])
    ax.set_xticklabels([f"{values[c]:g}" for c in ticks], fontsize=8)
    ax.set_title("traversal of the highest-KL dimensions (KL in nats), others at 0", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_kl_per_dim(kl, activity, path, threshold=ACTIVE_UNIT_THRESHOLD):
    """Bar plot of the mean KL per latent dimension; active units (activity > threshold) in colour.

    ``kl`` and ``activity`` hold one finite value per latent dimension, both of shape (D,);
    ``threshold`` is a real number >= 0 and finite, as ``minivae.analysis.active_units`` takes it.
    """
    Figure, _ = _require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    kl, activity = np.asarray(kl), np.asarray(activity)
    # matplotlib would cycle a shorter list of bar colours: the grey bars would be the wrong ones.
    if kl.ndim != 1 or activity.shape != kl.shape:
        raise ValueError(f"kl and activity must hold one value per latent dimension, both of shape "
                         f"(D,), got {kl.shape} and {activity.shape}")
    _check_finite(kl, "kl")  # a NaN draws no bar and a total of "nan nats"
    _check_finite(activity, "activity")  # a NaN would be drawn as an inactive unit
    check_ranges(plot_kl_per_dim, {"threshold": NON_NEGATIVE}, threshold=threshold)  # NaN: all grey
    active = activity > threshold
    fig = Figure(figsize=(max(6.0, 0.16 * len(kl) + 2), 3.6))
    ax = fig.subplots()
    colors = np.where(active, "C0", "0.7")
    ax.bar(np.arange(len(kl)), kl, color=colors, width=0.8)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("mean KL (nats)")
    ax.set_xlim(-0.8, len(kl) - 0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no dimension 0.5 between two bars
    ax.set_title(f"KL per dimension: total {kl.sum():.2f} nats\nactive units "
                 f"{int(active.sum())}/{len(kl)} (Cov_x E_q[z] > {threshold:g}, grey = inactive)",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _epoch_lines(metrics):
    """The per-epoch summary lines of ``metrics``; gradient-trace lines (if any) may share the file."""
    return [m for m in metrics if "epoch" in m and ("valid_elbo" in m or "train_loss" in m)]


def _series(lines, key, x_key="epoch"):
    pts = [(m[x_key], m[key]) for m in lines if m.get(key) is not None and x_key in m]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None


def plot_curves(metrics, path):
    """Learning curves: train ELBO (or IWAE bound) and validation ELBO per epoch; train KL, or the
    validation error of a model with a classifier.

    ``metrics`` is the list of dicts ``minivae.runs.read_metrics`` returns; without one per-epoch
    line (``epoch`` with ``train_loss`` or ``valid_elbo``) there is nothing to draw (ValueError).
    """
    Figure, _ = _require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    lines = _epoch_lines(metrics)
    if not lines:
        raise ValueError("metrics has no per-epoch line (a dict with 'epoch' and 'train_loss' or "
                         "'valid_elbo'), so no curve to draw: pass the list read_metrics(run) returns")
    fig = Figure(figsize=(10, 3.8))
    ax_b, ax_kl = fig.subplots(1, 2)
    style = dict(marker="o", markersize=3)  # markers, so a one-epoch run still shows its point
    for key, label in (("train_elbo", "train ELBO"), ("train_bound", "train bound"),
                       ("valid_elbo", "validation ELBO")):
        s = _series(lines, key)
        if s:
            ax_b.plot(*s, label=label, **style)
    ax_b.set_xlabel("epoch")
    ax_b.set_ylabel("nats per image")
    ax_b.set_title("bound (higher is better)", fontsize=10)
    if ax_b.lines:
        ax_b.legend(fontsize=8)
    errors, s = _series(lines, "valid_error"), _series(lines, "train_kl")
    ax_kl.set_ylabel("nats per image")
    if errors:  # a classifier's run: its validation error is the curve to watch
        ax_kl.plot(errors[0], [100 * e for e in errors[1]], label="validation error", color="C3", **style)
        ax_kl.set_title("classification error (lower is better)", fontsize=10)
        ax_kl.set_ylabel("% of validation images")
    elif s:
        ax_kl.plot(*s, label="train KL", color="C3", **style)
        ax_kl.set_title("KL(q(z|x) || p(z))", fontsize=10)
    else:
        ax_kl.set_title("no KL logged (IWAE objective)", fontsize=10)
    if ax_kl.lines:
        ax_kl.legend(fontsize=8)
    ax_kl.set_xlabel("epoch")
    for ax in (ax_b, ax_kl):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    return _save(fig, path)


def has_grad_norms(metrics):
    """True when any metrics line holds a ``grad_norm/...`` entry."""
    return any(k.startswith(GRAD_PREFIX) for m in metrics for k in m)


# The gradient norms' legend: the names one column holds in the figure's height, and the line
# styles that tell apart layers of one colour.
_LEGEND_ROWS = 25
_LINE_STYLES = ("-", "--", ":", "-.")


def plot_grad_norms(metrics, path):
    """Per-layer gradient norms (``grad_norm/NAME`` keys) on a log scale, one line per name.

    The x axis is ``step`` when the lines have it, else ``epoch``, else the line number. When
    ``update_ratio/NAME`` keys are present they get a second panel (update-to-weight ratios).
    Without either key there is nothing to draw (ValueError).
    """
    Figure, _ = _require_matplotlib()
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    # Trace lines only (epoch summaries may share the file); ratios may sit on lines of their own.
    lines = [m for m in metrics if any(k.startswith((GRAD_PREFIX, RATIO_PREFIX)) for k in m)]
    if not lines:
        raise ValueError(f"metrics has no '{GRAD_PREFIX}...' or '{RATIO_PREFIX}...' entry, so no "
                         "gradient norm to draw")
    x_key = "step" if all("step" in m for m in lines) else "epoch" if all("epoch" in m for m in lines) else None
    xs = [m[x_key] for m in lines] if x_key else list(range(1, len(lines) + 1))
    panels = [(GRAD_PREFIX, "gradient norm")]
    if any(k.startswith(RATIO_PREFIX) for m in lines for k in m):
        panels.append((RATIO_PREFIX, "update / weight norm"))
    # One colour per layer name, shared by both panels, so the single legend is right for both.
    layers = sorted({k.split("/", 1)[1] for m in lines for k in m
                     if k.startswith((GRAD_PREFIX, RATIO_PREFIX))})
    # Beyond 20 layers (a ladder VAE has 46 parameters) the colours repeat: each round of 20
    # gets a line style of its own, so no two layers are drawn alike.
    palette = "tab10" if len(layers) <= 10 else "tab20"
    styles = {name: (matplotlib.colormaps[palette](i % 20), _LINE_STYLES[i // 20 % len(_LINE_STYLES)])
              for i, name in enumerate(layers)}
    # The legend gets a column per _LEGEND_ROWS names and the figure the width of its columns:
    # one column of 46 names ran off the top and the bottom of the figure.
    ncol = math.ceil(len(layers) / _LEGEND_ROWS)
    legend_width = 2.3 * ncol
    fig = Figure(figsize=(6.5 * len(panels) + 0.2 + legend_width, 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (prefix, ylabel) in zip(axes, panels):
        for layer in layers:
            pts = [(x, m[prefix + layer]) for x, m in zip(xs, lines) if m.get(prefix + layer) is not None]
            if pts:
                color, linestyle = styles[layer]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linestyle=linestyle,
                        marker="o" if len(pts) < 3 else None, markersize=3)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps, epochs, records: whole numbers
        ax.set_xlabel(x_key or "record")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel + " per layer", fontsize=10)
    # One shared legend outside the panels: layer names are long.
    handles = [Line2D([], [], color=styles[name][0], linestyle=styles[name][1]) for name in layers]
    fig.legend(handles, layers, loc="center right", fontsize=7, ncol=ncol)
    fig.tight_layout(rect=(0, 0, 1 - legend_width / fig.get_figwidth(), 1))
    return _save(fig, path)


# The fewest points t-SNE embeds: its perplexity, (N - 1) / 3 here, must be positive.
_MIN_EMBED = 2


def _embeddings(points, seed):
    """Yield (name, 2-D embedding) for each optional embedder that is installed."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        TSNE = None
    if TSNE is not None:
        perplexity = min(30.0, (len(points) - 1) / 3.0)
        # PCA's start takes two components, which points of one coordinate (z-dim 1) lack.
        init = "pca" if points.shape[1] >= 2 else "random"
        yield "tsne", TSNE(n_components=2, perplexity=perplexity, init=init,
                           random_state=seed).fit_transform(points)
    try:
        import umap
    except ImportError:
        umap = None
    if umap is not None:
        yield "umap", umap.UMAP(n_components=2, random_state=seed).fit_transform(points)


def plot_run(run_dir, n_latent=5000, data=None, n_embed=2000, seed=0, embeddings=True, last=False, *,
             read=None):
    """Draw every picture of a trained run into its folder; return the list of PNG paths.

    ``run_dir`` is a folder written by ``minivae train`` (``checkpoint.npz``, ``metrics.jsonl``).
    The model is the one the run selected (``runs.read_run_model``: that of best.npz for a run
    trained with ``keep_best``), or with ``last`` that of its checkpoint; a caller that has read
    it already passes what ``read_run_model(run_dir, last)`` returned as ``read``, so that it is
    not read twice (``minivae plot`` reads it to check the run before anything else; a read of the
    other model is refused, ValueError). The curves
    are those of every epoch, from ``metrics.jsonl``. The test images come from ``data`` (any
    object with ``x_test`` and ``y_test``, default ``minivae.data.load_mnist()``), binarized by the
    fixed evaluation draw. ``n_latent`` test images are encoded for the latent pictures, the KL per
    dimension and the active units; t-SNE / UMAP (when installed) run on a seeded subsample of
    ``n_embed`` of them to stay fast (``embeddings=False`` skips them, as does a test set of one
    image). ``n_latent`` is an integer of at least 1, ``n_embed`` of at least 2, ``embeddings``
    True or False (``embeddings="False"`` would run t-SNE). The sample grid
    uses the Philox generator (``seed``, stream 3), as ``minivae sample`` does; with
    ``embeddings`` the seed also seeds t-SNE and UMAP, so it must be below 2**32 (scikit-learn's
    seeds; ``check_sklearn_seed``), whether they are installed or not. See the module
    docstring for the list of files, and their names with ``last``.

    Each picture is written only while the folder holds the run drawn (``runs.writing_for_run``):
    ``RunReplacedError`` when it was trained again meanwhile (``minivae train --overwrite`` while
    t-SNE ran), and the pictures written before go with the run it replaced.
    """
    _require_matplotlib()
    n_latent = check_integer(n_latent, "n_latent", minimum=1)
    n_embed = check_integer(n_embed, "n_embed", minimum=_MIN_EMBED)
    embeddings = check_bool(embeddings, "embeddings")
    last = check_bool(last, "last")
    if embeddings:  # before the first picture: t-SNE would refuse it after the samples are drawn
        seed = check_sklearn_seed(seed)
    run_dir = Path(run_dir)
    config, model, meta = _model_to_draw(run_dir, last, read)

    def run_picture(name):
        """Hold the ``with`` block that writes the picture ``name`` into the run folder; yield its path."""
        return writing_for_run(run_dir, meta.get("run_id"), "plot", run_dir / name, drawn=True)

    def picture(name):
        """``run_picture`` of the picture ``name`` of the model, named as the model's
        (``runs.model_file_name``: ``..._last`` for the last checkpoint's of a run that selected another)."""
        return run_picture(model_file_name(name, last=names_last(config, last)))

    data = data if data is not None else load_mnist(verbose=False)
    n = min(n_latent, len(data.x_test))
    x_test = binarize_eval(np.asarray(data.x_test[:n]), "test")
    y_test = getattr(data, "y_test", None)
    if y_test is not None:  # checked before the first picture, not by the scatters after the samples
        y_test = _point_labels(y_test, len(data.x_test), "data.y_test")[:n]
    paths = []

    # A model with a label: one row per class, 8 draws of the other latents each.
    images, nrow = prior_samples(model, 8 * model.num_classes if model.semi_supervised else 64, seed)
    with picture("samples.png") as path:
        paths.append(save_image_grid(images, path, nrow=nrow))

    if isinstance(model, VAE):  # the latent pictures need the one Gaussian latent q(z | x) of a VAE
        paths += _latent_pictures(model, picture, x_test, y_test, n_embed, seed, embeddings)

    # The curves are drawn from metrics.jsonl, not from the model: the same picture whichever model
    # is drawn, so one file each (a ``curves_last.png`` would only be a copy of curves.png).
    metrics = read_metrics(run_dir)
    if _epoch_lines(metrics):
        with run_picture("curves.png") as path:
            paths.append(plot_curves(metrics, path))
    if has_grad_norms(metrics):
        with run_picture("grad_norms.png") as path:
            paths.append(plot_grad_norms(metrics, path))
    return paths


def _model_to_draw(run_dir, last, read):
    """(config, model, meta) of the run in ``run_dir`` that ``plot_run`` draws: from ``read``, what
    ``runs.read_run_model(run_dir, last)`` returned, or read here when it is None. A read of the
    other model of a run trained with ``keep_best`` is refused (ValueError naming its file): its
    pictures would take the names of the other's."""
    if read is None:
        read = read_run_model(run_dir, last)
    config, model, meta, trained = read
    if config.keep_best and (trained is None) != last:  # only the model of best.npz has ``trained``
        held = run_dir / (CHECKPOINT if trained is None else BEST)
        raise ValueError(f"read holds the model of {held}, not the one drawn with last={last}; "
                         f"give what read_run_model(run_dir, last={last}) returns")
    return config, model, meta


def _latent_pictures(model, picture, x_test, y_test, n_embed, seed, embeddings):
    """Reconstructions, PCA (t-SNE, UMAP), traversal and KL-per-dimension pictures of a VAE,
    each written in the ``with`` block of ``picture(name)`` (see ``plot_run``)."""
    paths, n = [], len(x_test)
    mu, logvar = encode_dataset(model, x_test)
    # Reconstruct from the model's deterministic latent point (the posterior mean; for flows, the
    # mean of q_0 pushed through them): the picture the encoder+decoder pair converges to,
    # without sampling noise.
    with evaluating(model):
        param = next(iter(model.parameters()))
        z = model.reconstruction_latent(tensor(to_device(x_test[:32].astype(param.dtype), param.device)))
    recon = decode_means(model, z.numpy())
    with picture("reconstructions.png") as path:
        paths.append(plot_reconstructions(x_test[:32], recon, path))

    proj, ratio = pca_2d(mu)
    with picture("latent_pca.png") as path:
        paths.append(plot_latent_scatter(
            proj, y_test, path,
            f"test-set means of {model.encoded_gaussian} (z-dim {mu.shape[1]}, n={n}), PCA",
            f"PC1 ({100 * ratio[0]:.0f}% of variance)", f"PC2 ({100 * ratio[1]:.0f}% of variance)"))

    if embeddings and n >= _MIN_EMBED:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(n, size=min(n_embed, n), replace=False))
        for name, emb in _embeddings(mu[idx], seed):
            with picture(f"latent_{name}.png") as path:
                paths.append(plot_latent_scatter(
                    np.asarray(emb), None if y_test is None else y_test[idx], path,
                    f"test-set means of {model.encoded_gaussian}, {name.upper()} (n={len(idx)})",
                    f"{name} 1", f"{name} 2"))

    kl = kl_per_dimension(mu, logvar)
    with picture("traversal.png") as path:
        paths.append(plot_traversal(model, path, kl=kl))
    with picture("kl_per_dim.png") as path:
        paths.append(plot_kl_per_dim(kl, latent_activity(mu), path))
    return paths
