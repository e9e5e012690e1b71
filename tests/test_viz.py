"""Tests of minivae.viz: image grids, the NumPy latent statistics, and ``plot_run`` on real runs.

The run folders are made by the real trainer on a few hundred images the test makes (ten noisy
class templates, so labels mean something), one with z-dim 2 and one with z-dim 3; ``plot_run``
gets that data through its ``data=`` argument, so no test loads MNIST. matplotlib is in the dev
extra, so these tests run in CI; they are skipped where it is absent.
"""
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.image as mpimg  # noqa: E402

import minivae as mv  # noqa: E402
from minivae import viz  # noqa: E402
from minivae.data import binarize_eval  # noqa: E402
from minivae.nn import evaluating  # noqa: E402
from minivae.models import VAE  # noqa: E402
from minivae.runs import METRICS, PICTURES, TrainConfig, load_run  # noqa: E402
from minivae.train import Trainer  # noqa: E402
from test_clustering import _DeviceArray  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    """Check the PNG signature and decode the file; return the (H, W, channels) array."""
    path = Path(path)
    assert path.exists(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return mpimg.imread(path)


def _fake_mnist(n_train=300, n_valid=100, n_test=100, seed=0):
    """Binary-ish 28x28 images: one random blob template per class plus pixel noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    templates = (rng.random((10, 784)) < 0.15).astype(np.float32) * 0.9

    def split(n):
        y = rng.integers(0, 10, n)
        x = np.clip(templates[y] + 0.1 * rng.random((n, 784)), 0, 1).astype(np.float32)
        return x, y.astype(np.int64)

    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = split(n_train), split(n_valid), split(n_test)
    return types.SimpleNamespace(x_train=x_train, y_train=y_train, x_valid=x_valid, y_valid=y_valid,
                                 x_test=x_test, y_test=y_test)


@pytest.fixture(scope="module")
def data():
    return _fake_mnist()


def _train_run(out, data, z_dim):
    config = TrainConfig(epochs=2, batch_size=50, hidden=(32,), z_dim=z_dim, eval_k=0, out=str(out), seed=1)
    Trainer(config, data=data, progress=False, log=lambda *a, **k: None).fit()
    return Path(out)


@pytest.fixture(scope="module")
def run_z2(tmp_path_factory, data):
    return _train_run(tmp_path_factory.mktemp("viz") / "z2", data, 2)


@pytest.fixture(scope="module")
def run_z3(tmp_path_factory, data):
    return _train_run(tmp_path_factory.mktemp("viz") / "z3", data, 3)


def viz_model(run):
    """The model of a run folder, rebuilt as ``minivae plot`` does."""
    return load_run(run)[1]


def _copy_run(run, tmp_path):
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    return dst


# ----- image grids ---------------------------------------------------------------------------------

def test_save_image_grid_flat_rows_default_layout(tmp_path):
    # 10 images -> ceil(sqrt(10)) = 4 per row, 3 rows; each tile 28 px plus a 2 px border.
    images = np.zeros((10, 784))
    images[0] = 1.0  # the first tile white, the rest black
    path = viz.save_image_grid(images, tmp_path / "sub" / "grid.png")
    img = _read_png(path)
    assert img.shape[:2] == (3 * 30 + 2, 4 * 30 + 2)
    rgb = img[..., :3]
    assert np.allclose(rgb[2:30, 2:30], 1.0)           # first tile: white
    assert np.allclose(rgb[2:30, 32:60], 0.0)          # second tile: black
    assert np.allclose(rgb[0, :], rgb[0, 0])           # border: one grey value
    assert 0.3 < rgb[0, 0, 0] < 0.7


def _full_disk_png_writer(monkeypatch):
    """Make PIL's ``Image.save``, which writes every PNG of matplotlib, fail like a full disk
    halfway, as it would: a file named by its path is opened (truncated) first."""
    import errno
    import os

    import PIL.Image

    def save(image, fp, format=None, **params):
        f = open(fp, "w+b") if isinstance(fp, (str, os.PathLike)) else fp
        f.write(PNG_MAGIC + b"half a picture")
        if f is not fp:
            f.close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(PIL.Image.Image, "save", save)


@pytest.mark.parametrize("draw", ["grid", "curves"])
def test_a_picture_that_fails_to_be_written_keeps_the_old_one_and_no_temporary_file(tmp_path, monkeypatch,
                                                                                   draw):
    """A full disk while a picture is written: the old picture is kept whole (it was truncated
    first), and no temporary file is left beside it."""
    path = tmp_path / f"{draw}.png"
    metrics = [{"epoch": 1, "train_elbo": -120.0, "train_kl": 5.0, "valid_elbo": -118.0}]

    def write():
        if draw == "grid":
            viz.save_image_grid(np.zeros((4, 784)), path)
        else:
            viz.plot_curves(metrics, path)
    write()
    old = path.read_bytes()
    _full_disk_png_writer(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write()
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_image_grid_square_input_nrow_scale_and_clipping(tmp_path):
    images = np.full((6, 28, 28), 2.0)  # out of range: clipped to white, not an error
    img = _read_png(viz.save_image_grid(images, tmp_path / "g.png", nrow=3, scale=2))
    assert img.shape[:2] == (2 * (2 * 30 + 2), 2 * (3 * 30 + 2))
    assert np.allclose(img[4:60, 4:60, :3], 1.0)


def test_tile_images_places_tiles_row_major():
    images = np.arange(5)[:, None, None] * np.ones((5, 2, 2))
    grid = viz.tile_images(images, nrow=2, pad=1, pad_value=-1)
    assert grid.shape == (3 * 3 + 1, 2 * 3 + 1)
    assert grid[1, 1] == 0 and grid[1, 4] == 1 and grid[4, 1] == 2 and grid[7, 1] == 4
    assert grid[7, 4] == -1  # the empty last cell keeps the pad value


def test_tile_images_of_fewer_images_than_a_row_holds_is_one_row_of_them():
    assert viz.tile_images(np.zeros((3, 2, 2)), nrow=8, pad=1).shape == (4, 10)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
@pytest.mark.parametrize("name", ["images", "x", "recon"])
def test_integer_pixels_are_refused_not_drawn_white(tmp_path, dtype, name):
    """(Pixels 0..255 were clipped to [0, 1]: every pixel with any ink came out white.)"""
    pixels = np.arange(4 * 16).reshape(4, 16).astype(dtype)
    floats = pixels / 255.0
    draws = {
        "images": lambda: viz.save_image_grid(pixels, tmp_path / "g.png"),
        "x": lambda: viz.plot_reconstructions(pixels, floats, tmp_path / "r.png"),
        "recon": lambda: viz.plot_reconstructions(floats, pixels, tmp_path / "r.png"),
    }
    with pytest.raises(TypeError, match=rf"{name} has dtype {np.dtype(dtype)}: a picture takes float "
                                        r"intensities in \[0, 1\]; divide uint8 pixels by 255 first"):
        draws[name]()



def test_tile_images_keeps_tiles_of_any_height_and_width_upright():
    """(N, H, W) tiles with H != W: each lies as given, W pixels wide, at its place in the grid."""
    images = np.arange(5)[:, None, None] * 10 + np.arange(6).reshape(2, 3)
    grid = viz.tile_images(images, nrow=2, pad=1, pad_value=-1)
    assert grid.shape == (3 * (2 + 1) + 1, 2 * (3 + 1) + 1)
    for i, image in enumerate(images):
        r, c = divmod(i, 2)
        np.testing.assert_array_equal(grid[1 + 3 * r:3 + 3 * r, 1 + 4 * c:4 + 4 * c], image)


def test_tile_images_rejects_non_square_rows():
    with pytest.raises(ValueError, match="square"):
        viz.tile_images(np.zeros((2, 10)))


# ----- NumPy statistics, against hand computations ----------------------------------------------

def test_pca_2d_finds_the_main_direction(rng):
    direction = np.array([3.0, 4.0, 0.0]) / 5.0
    t = rng.normal(size=200) * 3
    points = t[:, None] * direction + 0.01 * rng.normal(size=(200, 3)) + 7.0
    proj, ratio = viz.pca_2d(points)
    assert ratio[0] > 0.999 and ratio.sum() <= 1.0 + 1e-12
    # The first coordinate is t up to the sign fixed by pca_2d (largest loading positive: +t here).
    assert np.allclose(proj[:, 0], t - t.mean(), atol=0.05)
    one_d, r1 = viz.pca_2d(rng.normal(size=(20, 1)))
    assert np.all(one_d[:, 1] == 0) and r1[0] == pytest.approx(1.0)



def test_pca_2d_turns_each_direction_so_its_largest_loading_is_positive(rng):
    """Whatever sign the SVD returns, the picture is the same: each principal direction, recovered
    here from the projection by least squares, has its largest loading (in absolute value) > 0."""
    for _ in range(10):
        directions = np.linalg.qr(rng.normal(size=(4, 2)))[0].T  # two orthonormal directions
        t = rng.normal(size=(300, 2)) * [5.0, 2.0]
        points = t @ directions + 0.01 * rng.normal(size=(300, 4))
        proj, _ = viz.pca_2d(points)
        loadings = np.linalg.lstsq(points - points.mean(axis=0), proj, rcond=None)[0].T
        for v in loadings:
            assert v[np.abs(v).argmax()] > 0, v


@pytest.mark.parametrize("points, match", [
    (np.arange(5.0), r"points must be \(N, D\) with N >= 1, got shape \(5,\)"),
    (np.zeros((0, 3)), r"points must be \(N, D\) with N >= 1, got shape \(0, 3\)"),
    (np.array([[np.nan, 0.0], [1.0, 2.0], [3.0, 4.0]]), "points contain NaN or infinite values"),
], ids=["1-D", "no points", "NaN"])
def test_pca_2d_refuses_points_it_cannot_project(points, match):
    with pytest.raises(ValueError, match=match):
        viz.pca_2d(points)


@pytest.mark.parametrize("wrap", [_DeviceArray, mv.tensor], ids=["gpu array", "tensor"])
def test_pca_2d_and_the_image_grids_take_arrays_on_the_gpu_and_tensors(rng, wrap):
    """NumPy cannot read a CuPy array (CuPy refuses with a TypeError), and it read a Tensor as a
    sequence of tensors, failing with "setting an array element with a sequence": pca_2d failed
    on both, the image grids on a Tensor. Both are brought to the host."""
    points, images = rng.normal(size=(6, 3)), rng.random((4, 9))
    for got, want in zip(viz.pca_2d(wrap(points)), viz.pca_2d(points)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(viz.tile_images(wrap(images)), viz.tile_images(images))


def test_pca_2d_of_one_point_or_identical_points_is_the_origin():
    for points in (np.ones((1, 3)), np.ones((5, 3))):
        proj, ratio = viz.pca_2d(points)
        assert proj.shape == (len(points), 2) and not proj.any() and not ratio.any()


def test_gaussian_quantile_grid_is_symmetric():
    q = viz._gaussian_quantiles(5)
    assert q[2] == pytest.approx(0.0, abs=1e-12) and np.allclose(q, -q[::-1])
    assert q[-1] == pytest.approx(1.6448536, rel=1e-6)  # the 95% quantile of N(0, 1)


# ----- model queries -----------------------------------------------------------------------------

@pytest.fixture
def small_vae():
    return VAE(x_dim=16, z_dim=3, hidden=(4,))


def test_decode_means_of_no_latent_points_is_no_images(small_vae):
    images = viz.decode_means(small_vae, np.zeros((0, 3)))
    assert images.shape == (0, 16) and images.dtype == np.float32



def test_decode_means_are_the_sigmoid_of_the_decoder_logits(small_vae):
    z = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with evaluating(small_vae):
        logits = small_vae.decode(mv.tensor(z)).numpy().astype(np.float64)
    means = viz.decode_means(small_vae, z, batch_size=2)  # batches of 2, 2 and 1
    np.testing.assert_allclose(means, 1 / (1 + np.exp(-logits)), rtol=1e-6)


@pytest.mark.parametrize("z, match", [
    (np.zeros((4, 2)), r"z must be latent points of shape \(N, 3\), got shape \(4, 2\)"),
    (np.zeros(3), r"z must be latent points of shape \(N, 3\), got shape \(3,\)"),
], ids=["wrong width", "one point as a 1-D array"])
def test_decode_means_needs_z_of_the_models_latent_width(small_vae, z, match):
    with pytest.raises(ValueError, match=match):
        viz.decode_means(small_vae, z)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_decode_means_batch_size_must_be_a_positive_integer(small_vae, bad, error):
    with pytest.raises(error, match="batch_size must be"):
        viz.decode_means(small_vae, np.zeros((2, 3)), batch_size=bad)


@pytest.mark.parametrize("draw, match", [
    (lambda m, path: viz.decode_means(m, np.array([[0.0, np.nan, 0.0]])), "z contains NaN or infinite"),
    (lambda m, path: viz.plot_traversal(m, path, kl=[0.5, np.nan, 1.0]), "kl contains NaN or infinite"),
    (lambda m, path: viz.plot_traversal(m, path, span=np.nan), "plot_traversal: invalid span nan"),
    (lambda m, path: viz.plot_traversal(m, path, span=np.inf), "plot_traversal: invalid span inf"),
    (lambda m, path: viz.plot_kl_per_dim([0.5, np.inf], [1.0, 1.0], path), "kl contains NaN or infinite"),
    (lambda m, path: viz.plot_kl_per_dim([0.5, 0.2], [1.0, np.nan], path), "activity contains NaN"),
    (lambda m, path: viz.plot_kl_per_dim([0.5, 0.2], [1.0, 0.0], path, threshold=np.nan),
     "plot_kl_per_dim: invalid threshold nan"),
    (lambda m, path: viz.save_image_grid(np.array([[0.5] * 4, [np.nan] * 4]), path),
     "images contains NaN or infinite"),
    (lambda m, path: viz.plot_reconstructions(np.full((2, 4), 0.5), np.array([[0.5] * 4, [np.nan] * 4]), path),
     "recon contains NaN or infinite"),
    (lambda m, path: viz.plot_reconstructions(np.array([[np.inf] * 4, [0.5] * 4]), np.full((2, 4), 0.5), path),
     "x contains NaN or infinite"),
], ids=["z", "traversal kl", "span nan", "span inf", "kl per dim", "activity", "threshold", "image grid",
        "reconstructions", "inputs"])
def test_nan_or_infinite_latent_values_are_refused_not_drawn(small_vae, tmp_path, draw, match):
    """(They were drawn without a word: blank tiles, a row labelled "(nan)", a missing bar and a
    total of "nan nats", a NaN activity as an inactive unit, every unit grey at a NaN threshold,
    a NaN image as a transparent tile.)"""
    with pytest.raises(ValueError, match=match):
        draw(small_vae, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


# ----- figures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("draw, argument, bad, error", [
    ("tile", "nrow", 0, ValueError), ("tile", "nrow", 2.5, TypeError),
    ("tile", "pad", -1, ValueError), ("tile", "pad", 1.5, TypeError),
    ("save", "scale", 0, ValueError), ("save", "scale", 1.5, TypeError),
    ("reconstructions", "n", 0, ValueError), ("reconstructions", "n", -1, ValueError),
    ("reconstructions", "ncol", 0, ValueError),
    ("traversal", "n", 0, ValueError), ("traversal", "n", 2.5, TypeError),
    ("traversal", "n_dims", 0, ValueError), ("traversal", "n_dims", -1, ValueError),
])
def test_the_counts_of_the_pictures_are_positive_integers(small_vae, tmp_path, draw, argument, bad, error):
    """(A negative n or n_dims sliced off the last images or dimensions, a scale of 1.5 was
    rounded down, a pad of -1 or an ncol of 0 failed inside NumPy or in a division.)"""
    images = np.zeros((4, 16))
    draws = {
        "tile": lambda **kw: viz.tile_images(images, **kw),
        "save": lambda **kw: viz.save_image_grid(images, tmp_path / "g.png", **kw),
        "reconstructions": lambda **kw: viz.plot_reconstructions(images, images, tmp_path / "r.png", **kw),
        "traversal": lambda **kw: viz.plot_traversal(small_vae, tmp_path / "t.png", **kw),
    }
    with pytest.raises(error, match=f"^{argument} must be"):
        draws[draw](**{argument: bad})


@pytest.mark.parametrize("points, labels, match", [
    (np.zeros((10, 2)), np.arange(5), r"labels must hold one label per point, shape \(10,\), got shape \(5,\)"),
    (np.zeros((10, 2)), np.arange(10)[:, None], r"labels must .* got shape \(10, 1\)"),
    (np.zeros((10, 3)), None, r"points must be \(N, 2\), got shape \(10, 3\)"),  # not two of them
    (np.zeros(10), None, r"points must be \(N, 2\), got shape \(10,\)"),
], ids=["too few labels", "a column of labels", "three coordinates", "1-D points"])
def test_plot_latent_scatter_checks_points_and_labels(tmp_path, points, labels, match):
    with pytest.raises(ValueError, match=match):
        viz.plot_latent_scatter(points, labels, tmp_path / "s.png", "t", "x", "y")


@pytest.mark.parametrize("labels", [np.array(["3", "7", "3"]), np.array([0.0, 1.5, 1.0]), np.array([True, False, True])],
                         ids=["strings", "floats", "bools"])
def test_plot_latent_scatter_needs_integer_labels(tmp_path, labels):
    """(String labels failed in int() with "invalid literal", floats were coloured by their
    integer part and named by their full value.)"""
    with pytest.raises(TypeError, match=f"^labels must be integers \\(digit classes\\), got dtype {labels.dtype}$"):
        viz.plot_latent_scatter(np.zeros((3, 2)), labels, tmp_path / "s.png", "t", "x", "y")


def test_plot_reconstructions_needs_one_reconstruction_per_input(tmp_path):
    """(Fewer reconstructions than inputs drew panels of different sizes, pairing nothing.)"""
    with pytest.raises(ValueError, match=r"^x and recon must have the same shape, one reconstruction "
                                         r"per input; got \(8, 16\) and \(5, 16\)$"):
        viz.plot_reconstructions(np.zeros((8, 16)), np.zeros((5, 16)), tmp_path / "r.png")


def _drawn_figures(monkeypatch):
    """The figures the pictures draw, in order, each still written to its file."""
    figures, real = [], viz._save
    monkeypatch.setattr(viz, "_save", lambda fig, path: figures.append(fig) or real(fig, path))
    return figures


def test_reconstructions_of_fewer_images_than_n_are_as_tall_as_their_rows(tmp_path, monkeypatch):
    figures = _drawn_figures(monkeypatch)
    viz.plot_reconstructions(np.zeros((4, 16)), np.zeros((4, 16)), tmp_path / "r.png", n=32, ncol=8)
    assert figures[0].get_figheight() == pytest.approx(0.5 + 3.9 / 8)  # one row of tiles, not four


def test_a_unit_at_the_threshold_is_inactive(tmp_path, monkeypatch):
    figures = _drawn_figures(monkeypatch)
    viz.plot_kl_per_dim([1.0, 1.0, 1.0], [0.02, 0.01, 0.0], tmp_path / "k.png", threshold=0.01)
    assert "active units 1/3" in figures[0].axes[0].get_title()


def test_curves_skip_missing_values_and_show_the_error_in_percent(tmp_path, monkeypatch):
    figures = _drawn_figures(monkeypatch)
    viz.plot_curves([{"epoch": 1, "train_elbo": -100.0, "valid_elbo": None, "valid_error": 0.1},
                     {"epoch": 2, "train_elbo": -90.0, "valid_elbo": -95.0, "valid_error": 0.05}],
                    tmp_path / "c.png")
    ax_bound, ax_error = figures[0].axes
    assert [list(line.get_xdata()) for line in ax_bound.lines] == [[1, 2], [2]]
    assert list(ax_error.lines[0].get_ydata()) == [10.0, 5.0]
    assert ax_error.get_ylabel() == "% of validation images"


def test_grad_norms_use_epochs_where_not_every_line_has_a_step(tmp_path, monkeypatch):
    figures = _drawn_figures(monkeypatch)
    viz.plot_grad_norms([{"epoch": 1, "step": 10, "grad_norm/w": 1.0}, {"epoch": 2, "grad_norm/w": 2.0}],
                        tmp_path / "g.png")
    ax, = figures[0].axes
    assert ax.get_xlabel() == "epoch" and list(ax.lines[0].get_xdata()) == [1, 2]


def test_plot_latent_scatter_takes_lists(tmp_path):
    _read_png(viz.plot_latent_scatter([[0, 1], [1, 0], [2, 2]], [0, 1, 1], tmp_path / "s.png", "t", "x", "y"))


def test_plot_latent_scatter_mixes_the_digits_in_its_drawing_order(tmp_path, monkeypatch):
    """Points drawn digit after digit would put the last digits over all the others where they
    overlap: the picture would show a region of 9s where 4s and 9s are mixed."""
    figures, real = [], viz._save
    monkeypatch.setattr(viz, "_save", lambda fig, path: figures.append(fig) or real(fig, path))
    labels = np.repeat(np.arange(10), 20)  # sorted by label, as a per-digit loop would draw them
    points = np.random.default_rng(0).standard_normal((200, 2))
    viz.plot_latent_scatter(points, labels, tmp_path / "s.png", "t", "x", "y")
    ax, = figures[0].axes
    # The colour of every point in drawing order (a collection of one colour stores it once).
    drawn = np.concatenate([np.broadcast_to(c.get_facecolors()[:, :3], (len(c.get_offsets()), 3))
                            for c in ax.collections])
    assert len(drawn) == 200
    changes = int(np.any(drawn[1:] != drawn[:-1], axis=1).sum())
    assert changes > 100, f"the colour changes {changes} times along the drawing order"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [str(d) for d in range(10)]


@pytest.mark.parametrize("kl, activity, shapes", [
    ([1.0, 2.0, 3.0], [0.5, 0.0], r"\(3,\) and \(2,\)"),
    (1.0, 1.0, r"\(\) and \(\)"),
], ids=["fewer activities", "scalars"])
def test_plot_kl_per_dim_needs_one_activity_per_kl_value(tmp_path, kl, activity, shapes):
    """(Two activities for three dimensions coloured the bars by matplotlib's cycle of the two.)"""
    with pytest.raises(ValueError, match=r"kl and activity must hold one value per latent dimension, "
                                         r"both of shape \(D,\), got " + shapes):
        viz.plot_kl_per_dim(kl, activity, tmp_path / "k.png")


@pytest.mark.parametrize("draw", [
    lambda path: viz.plot_kl_per_dim([0.5, 0.2], [1.0, 0.0], path),
    lambda path: viz.plot_grad_norms([{"step": s, "grad_norm/w": 1.0 / s} for s in (10, 20, 30)], path),
    lambda path: viz.plot_grad_norms([{"epoch": e, "grad_norm/w": 1.0 / e} for e in (1, 2, 3)], path),
], ids=["latent dimensions", "steps", "epochs"])
def test_axes_of_whole_numbers_have_whole_number_ticks(tmp_path, monkeypatch, draw):
    """No latent dimension 0.5 between two bars, no step 12.5 or epoch 1.25."""
    figures, real = [], viz._save
    monkeypatch.setattr(viz, "_save", lambda fig, path: figures.append(fig) or real(fig, path))
    draw(tmp_path / "p.png")
    for ax in figures[0].axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(ticks) >= 2 and all(t == int(t) for t in ticks), ticks


def test_grad_norms_of_many_layers_draw_each_alike_nowhere_and_show_every_name(tmp_path, monkeypatch):
    """A ladder VAE has 46 parameters: tab20 gave layers i and i + 20 one colour, and the one
    legend column ran off the figure, its first and last names cut away."""
    figures, real = [], viz._save
    monkeypatch.setattr(viz, "_save", lambda fig, path: figures.append(fig) or real(fig, path))
    names = [f"layer{i:02d}.weight" for i in range(46)]
    metrics = [{"step": s, **{f"grad_norm/{n}": 1.0 + i for i, n in enumerate(names)}} for s in (10, 20)]
    viz.plot_grad_norms(metrics, tmp_path / "g.png")
    fig = figures[0]
    ax = fig.axes[0]
    looks = {(tuple(line.get_color()), line.get_linestyle()) for line in ax.lines}
    assert len(ax.lines) == 46 and len(looks) == 46
    legend, = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == names
    box, frame = legend.get_window_extent(), fig.bbox
    assert frame.y0 <= box.y0 and box.y1 <= frame.y1 and frame.x0 <= box.x0 and box.x1 <= frame.x1


def test_every_picture_creates_its_folder(tmp_path):
    """A figure written into a folder not yet made, as save_image_grid's grid is."""
    pytest.importorskip("matplotlib")
    path = viz.plot_kl_per_dim(np.array([0.5, 0.0]), np.array([1.0, 0.0]), tmp_path / "new" / "k.png")
    assert path.is_file()


@pytest.mark.parametrize("draw, metrics, match", [
    ("curves", [], "metrics has no per-epoch line"),
    ("curves", [{"step": 10, "grad_norm/w": 1.0}], "metrics has no per-epoch line"),
    ("curves", "metrics.jsonl", "pass the list read_metrics"),  # a path, not its lines
    ("grad_norms", [], "metrics has no 'grad_norm/...' or 'update_ratio/...' entry"),
    ("grad_norms", [{"epoch": 1, "train_loss": 90.0}], "no gradient norm to draw"),
], ids=["no lines", "trace lines only", "a path", "no lines", "epoch lines only"])
def test_metrics_without_the_lines_to_draw_are_refused(tmp_path, draw, metrics, match):
    """(They gave empty axes, a picture without a curve and without a word.)"""
    plot = viz.plot_curves if draw == "curves" else viz.plot_grad_norms
    with pytest.raises(ValueError, match=match):
        plot(metrics, tmp_path / "c.png")


# ----- plot_run on trained runs -----------------------------------------------------------------------

EXPECTED = ["samples.png", "reconstructions.png", "latent_pca.png", "traversal.png",
            "kl_per_dim.png", "curves.png"]


@pytest.mark.parametrize("run_name", ["run_z2", "run_z3"])
def test_plot_run_writes_every_picture(request, run_name, data, tmp_path):
    run = _copy_run(request.getfixturevalue(run_name), tmp_path)
    paths = viz.plot_run(run, data=data, embeddings=False)
    assert [p.name for p in paths] == EXPECTED
    assert all(p.parent == run for p in paths)
    images = {p.name: _read_png(p) for p in paths}
    assert images["samples.png"].shape[:2] == (8 * 30 + 2, 8 * 30 + 2)
    assert images["curves.png"].shape[:2] == (380, 1000)      # Figure(10 x 3.8 in) at 100 dpi
    assert images["kl_per_dim.png"].shape[:2] == (360, 600)
    for name, img in images.items():
        assert img.ndim == 3 and img.shape[2] in (3, 4), name
        assert np.isfinite(img).all() and img[..., :3].std() > 0.01, f"{name} is blank"


@pytest.mark.parametrize("model", ["m2", "ladder"])
def test_plot_run_draws_samples_and_curves_for_models_without_one_gaussian_latent(model, data, tmp_path):
    config = TrainConfig(model=model, epochs=2, batch_size=50, hidden=(16, 8), z_dim=3, eval_k=0,
                         n_labelled=20, out=str(tmp_path / model), seed=1)
    Trainer(config, data=data, progress=False, log=lambda *a, **k: None).fit()
    paths = viz.plot_run(tmp_path / model, data=data, embeddings=False)
    assert [p.name for p in paths] == ["samples.png", "curves.png"]
    images = {p.name: _read_png(p) for p in paths}
    rows = 10 if model == "m2" else 8  # a model with labels: one row per class
    assert images["samples.png"].shape[:2] == (rows * 30 + 2, 8 * 30 + 2)
    for name, img in images.items():
        assert np.isfinite(img).all() and img[..., :3].std() > 0.01, f"{name} is blank"


def test_a_flow_run_is_reconstructed_through_its_flows(data, tmp_path, monkeypatch):
    """The reconstructions decode the mean of q_0 pushed through the flows, not the mean of q_0
    (the Gaussian before them)."""
    config = TrainConfig(model="flow", epochs=1, batch_size=50, hidden=(16,), z_dim=3, eval_k=0,
                         out=str(tmp_path / "flow"), seed=1)
    Trainer(config, data=data, progress=False, log=lambda *a, **k: None).fit()
    decoded, real = [], viz.decode_means
    monkeypatch.setattr(viz, "decode_means", lambda model, z, **kw: decoded.append(z) or real(model, z, **kw))
    viz.plot_run(tmp_path / "flow", data=data, embeddings=False)
    _, model = load_run(tmp_path / "flow")
    x = mv.tensor(binarize_eval(np.asarray(data.x_test[:32]), "test"))
    with evaluating(model):
        h = model.encoder(x)
        mu = model.q_z(h)[0].data
        expected = model.flows(h, mv.tensor(mu[None]))[0].data[0]
    np.testing.assert_allclose(decoded[0], expected, rtol=1e-6)
    assert not np.allclose(decoded[0], mu)


def test_plot_run_traversal_shape_depends_on_z_dim(run_z2, run_z3, data, tmp_path):
    # z-dim 2: a square 15 x 15 grid; z-dim 3: three rows (one per dimension) of 15 images.
    for run, square in ((run_z2, True), (run_z3, False)):
        run = _copy_run(run, tmp_path)
        img = _read_png(viz.plot_traversal(viz_model(run), run / "t.png"))
        h, w = img.shape[:2]
        assert (abs(h - w) < 0.1 * w) == square, (run.name, h, w)


@pytest.mark.parametrize("z_dim", [2, 3])
def test_a_traversal_of_one_image_per_axis_shows_the_centre(monkeypatch, tmp_path, z_dim):
    """np.linspace(-span, span, 1) is [-span]: n = 1 drew z = -3 (and z = -1.64, the 5% quantile,
    on the grid of z-dim 2) under a tick labelled as the one value, instead of the prior mean."""
    decoded = []
    decode = viz.decode_means
    monkeypatch.setattr(viz, "decode_means", lambda model, z: decoded.append(z) or decode(model, z))
    viz.plot_traversal(VAE(x_dim=16, z_dim=z_dim, hidden=(4,)), tmp_path / "t.png", n=1)
    np.testing.assert_array_equal(decoded[0], np.zeros((1 if z_dim == 2 else z_dim, z_dim)))



def _traversal_points(monkeypatch, tmp_path, z_dim, **options):
    """The latent points plot_traversal decodes, in the order of its tiles."""
    decoded = []
    decode = viz.decode_means
    monkeypatch.setattr(viz, "decode_means", lambda model, z: decoded.append(z) or decode(model, z))
    viz.plot_traversal(VAE(x_dim=16, z_dim=z_dim, hidden=(4,)), tmp_path / "t.png", **options)
    return decoded[0]


def test_the_grid_of_two_latents_runs_z1_to_the_right_and_z2_up(monkeypatch, tmp_path):
    z = _traversal_points(monkeypatch, tmp_path, 2, n=3)
    q = viz._gaussian_quantiles(3)
    np.testing.assert_array_equal(z, [[q[0], q[2]], [q[1], q[2]], [q[2], q[2]],   # top row: z2 highest
                                      [q[0], q[1]], [q[1], q[1]], [q[2], q[1]],
                                      [q[0], q[0]], [q[1], q[0]], [q[2], q[0]]])


def test_a_traversal_sweeps_the_dimensions_of_highest_kl_first(monkeypatch, tmp_path):
    """One row per dimension, highest KL first; each row moves its own dimension only."""
    z = _traversal_points(monkeypatch, tmp_path, 4, kl=[0.1, 2.0, 0.5, 1.0], n=3, n_dims=2, span=2.0)
    want = np.zeros((6, 4))
    want[0:3, 1] = want[3:6, 3] = [-2.0, 0.0, 2.0]
    np.testing.assert_array_equal(z, want)


def test_a_traversal_needs_one_kl_value_per_latent_dimension(run_z3, tmp_path):
    """(With two values for three dimensions it drew two rows, ranked from the wrong list.)"""
    with pytest.raises(ValueError, match=r"kl must hold one value per latent dimension, shape \(3,\), "
                                         r"got shape \(2,\)"):
        viz.plot_traversal(viz_model(run_z3), tmp_path / "t.png", kl=[0.5, 0.1])


def test_plot_run_grad_norms_when_logged(run_z3, data, tmp_path):
    run = _copy_run(run_z3, tmp_path)
    with open(run / METRICS, "a") as f:  # gradient-trace lines next to the epoch lines
        for step in (10, 20, 30):
            f.write(json.dumps({"step": step, "grad_norm/encoder.net.0.weight": 1.0 / step,
                                "grad_norm/decoder.net.2.bias": 0.1 + step,
                                "update_ratio/encoder.net.0.weight": 1e-3}) + "\n")
    paths = viz.plot_run(run, data=data, embeddings=False)
    assert [p.name for p in paths] == EXPECTED + ["grad_norms.png"]
    assert _read_png(run / "grad_norms.png").shape[:2] == (420, 1550)  # two panels: (6.5*2+2.5) x 4.2 in


def test_plot_run_without_grad_norms_or_metrics(run_z2, data, tmp_path):
    run = _copy_run(run_z2, tmp_path)
    (run / METRICS).unlink()
    names = [p.name for p in viz.plot_run(run, data=data, embeddings=False)]
    assert "curves.png" not in names and "grad_norms.png" not in names


def test_plot_run_of_gradient_traces_without_epoch_lines_draws_no_curves(run_z2, data, tmp_path):
    run = _copy_run(run_z2, tmp_path)
    (run / METRICS).write_text(json.dumps({"step": 10, "grad_norm/encoder.net.0.weight": 0.5}) + "\n")
    names = [p.name for p in viz.plot_run(run, data=data, embeddings=False)]
    assert "curves.png" not in names and "grad_norms.png" in names


@pytest.fixture
def fake_tsne(monkeypatch):
    """A stand-in sklearn.manifold.TSNE (and no UMAP): checks the optional path without installing
    scikit-learn. It refuses a perplexity outside (0, N) as scikit-learn does; returns what it saw."""
    seen = {}

    class FakeTSNE:
        def __init__(self, n_components, perplexity, init, random_state):
            seen.update(perplexity=perplexity, random_state=random_state)

        def fit_transform(self, x):
            seen["n"] = len(x)
            if not 0 < seen["perplexity"] < len(x):
                raise ValueError(f"perplexity must be in (0, n_samples), got {seen['perplexity']}")
            return np.asarray(x)[:, :2] * 10

    sklearn = types.ModuleType("sklearn")
    manifold = types.ModuleType("sklearn.manifold")
    manifold.TSNE = FakeTSNE
    sklearn.manifold = manifold
    monkeypatch.setitem(sys.modules, "sklearn", sklearn)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", manifold)
    monkeypatch.setitem(sys.modules, "umap", None)  # "not installed", even where it is
    return seen


def test_plot_run_embeds_with_tsne_when_installed(run_z3, data, tmp_path, fake_tsne):
    run = _copy_run(run_z3, tmp_path)
    names = [p.name for p in viz.plot_run(run, data=data, n_embed=60, seed=4)]
    assert "latent_tsne.png" in names and "latent_umap.png" not in names
    assert set(EXPECTED + ["grad_norms.png", "latent_umap.png"] + names) <= set(PICTURES)  # all known
    assert fake_tsne == {"perplexity": pytest.approx(59 / 3), "random_state": 4, "n": 60}
    _read_png(run / "latent_tsne.png")


@pytest.mark.parametrize("n_test", [1, 2])
def test_plot_run_of_a_tiny_test_set(run_z3, data, tmp_path, fake_tsne, n_test):
    """One test image is no t-SNE (its perplexity would be 0), two are; the rest is drawn."""
    tiny = types.SimpleNamespace(x_test=data.x_test[:n_test], y_test=data.y_test[:n_test])
    names = [p.name for p in viz.plot_run(_copy_run(run_z3, tmp_path), data=tiny)]
    assert set(EXPECTED) <= set(names) and ("latent_tsne.png" in names) == (n_test > 1)


def test_plot_run_embeds_the_means_of_a_one_dimensional_latent_with_tsne(data, tmp_path):
    """scikit-learn's t-SNE starts from two principal components, which z-dim 1 lacks."""
    pytest.importorskip("sklearn")
    run = _train_run(tmp_path / "z1", data, 1)
    names = [p.name for p in viz.plot_run(run, data=data, n_embed=60)]
    assert set(EXPECTED) <= set(names) and "latent_tsne.png" in names
    _read_png(run / "latent_tsne.png")


@pytest.mark.parametrize("argument, bad, error", [
    ("n_latent", 0, ValueError), ("n_latent", -5, ValueError), ("n_latent", 10.0, TypeError),
    ("n_embed", 1, ValueError), ("n_embed", 0, ValueError),
    ("embeddings", "False", TypeError), ("embeddings", None, TypeError),
    ("seed", 2**32, ValueError), ("seed", -1, ValueError),
])
def test_plot_run_checks_its_subset_sizes(run_z3, data, tmp_path, argument, bad, error):
    """(embeddings="False" ran t-SNE, as the string is true; a seed of 2**32 was refused by
    t-SNE after the samples, reconstructions and PCA pictures were written.)"""
    run = _copy_run(run_z3, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(error, match=f"{argument} must be"):
        viz.plot_run(run, data=data, **{argument: bad})
    assert sorted(p.name for p in run.iterdir()) == before  # refused before any picture is drawn



@pytest.mark.parametrize("y_test, error, message", [
    (lambda y: y[:-1], ValueError, r"^data\.y_test must hold one label per point, shape \((\d+),\), got shape "
                                   r"\((\d+),\)$"),
    (lambda y: y.astype(np.float64), TypeError, r"^data\.y_test must be integers \(digit classes\), got dtype "
                                                r"float64$"),
], ids=["one label short", "float labels"])
def test_plot_run_checks_its_test_labels_before_any_picture(run_z3, data, tmp_path, y_test, error, message):
    """Labels that are not one integer per test image were refused by the latent scatter, after
    the samples and reconstructions were written."""
    run = _copy_run(run_z3, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    bad = types.SimpleNamespace(x_test=data.x_test, y_test=y_test(np.asarray(data.y_test)))
    with pytest.raises(error, match=message):
        viz.plot_run(run, data=bad, embeddings=False)
    assert sorted(p.name for p in run.iterdir()) == before


def test_plot_run_encodes_the_first_n_latent_test_images(run_z3, data, tmp_path, monkeypatch):
    encoded = []
    encode = viz.encode_dataset
    monkeypatch.setattr(viz, "encode_dataset", lambda model, x: encoded.append(x) or encode(model, x))
    viz.plot_run(_copy_run(run_z3, tmp_path), data=data, n_latent=40, embeddings=False)
    np.testing.assert_array_equal(encoded[0], binarize_eval(data.x_test[:40], "test"))


def test_plot_run_shows_each_reconstruction_next_to_its_input(run_z3, data, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(viz, "plot_reconstructions", lambda x, recon, path: drawn.append((x, recon)) or path)
    viz.plot_run(_copy_run(run_z3, tmp_path), data=data, embeddings=False)
    (x, recon), = drawn
    model = viz_model(run_z3)
    with evaluating(model):
        z = model.reconstruction_latent(mv.tensor(x[:2])).numpy()
    np.testing.assert_allclose(recon[:2], viz.decode_means(model, z), rtol=1e-5, atol=1e-6)


def test_plot_run_uses_eval_mode_and_records_no_graph(run_z3, data, tmp_path, monkeypatch):
    # Spy on the loaded model's encode/decode: every call must happen in eval mode and return a
    # tensor outside any graph; afterwards the model is back in its previous (training) mode.
    calls, models = [], []
    real = viz.read_run_model

    def spy_load(run, last):
        config, model, meta, selected = real(run, last)
        for name in ("encode", "decode"):
            method = getattr(model, name)

            def wrapped(x, _method=method, _name=name):
                out = _method(x)
                first = out[0] if isinstance(out, tuple) else out
                calls.append((_name, model.training, first.requires_grad))
                return out

            setattr(model, name, wrapped)
        models.append(model)
        return config, model, meta, selected

    monkeypatch.setattr(viz, "read_run_model", spy_load)
    viz.plot_run(_copy_run(run_z3, tmp_path), data=data, embeddings=False)
    assert {name for name, _, _ in calls} == {"encode", "decode"}
    assert all(not training and not needs_grad for _, training, needs_grad in calls), calls
    assert models[0].training


def test_missing_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'minivae\[viz\]'"):
        viz.save_image_grid(np.zeros((1, 784)), tmp_path / "x.png")
    with pytest.raises(ImportError, match="minivae"):
        viz.plot_run(tmp_path)


@pytest.mark.parametrize("n, per_row", [(64, 7), (20, 2), (5, 1)])
def test_prior_samples_of_a_model_with_labels_give_each_class_a_row(n, per_row, monkeypatch):
    """(minivae sample drew the labels 0, 1, ..., 9, 0, ... into rows of 8, so no column and no
    row held one class; minivae plot drew its own blocks.)"""
    from minivae.models import M2

    model = M2(x_dim=16, z_dim=2, hidden=(8,), rng=0)
    asked = {}
    real = model.sample
    monkeypatch.setattr(model, "sample", lambda k, noise, labels=None: asked.update(labels=labels) or real(k, noise, labels=labels))
    images, nrow = viz.prior_samples(model, n, seed=0)
    assert nrow == per_row and len(images) == n
    np.testing.assert_array_equal(asked["labels"], np.arange(n) // per_row)  # row r holds class r


def test_prior_samples_of_a_model_without_labels_are_a_square_grid(small_vae):
    images, nrow = viz.prior_samples(small_vae, 20, seed=3)
    assert nrow == 5 and len(images) == 20
    again, _ = viz.prior_samples(small_vae, 20, seed=3)
    np.testing.assert_array_equal(np.asarray(images), np.asarray(again))  # fixed by the seed
