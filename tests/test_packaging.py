"""What an installer gets: the dependencies the code needs, at versions it works with (others
refused at import), the license metadata, and an sdist from which the tests run."""
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_numpy_is_required_from_version_2():
    """The engine relies on NumPy 2's promotion rules (NEP 50): a float32 array times a Python
    float stays float32. Under NumPy 1.24, which the pin once allowed, the first training step
    failed with "Mean.backward returned float64 for a float32 input"."""
    pins = [dep for dep in _pyproject()["project"]["dependencies"] if re.match(r"numpy\b", dep)]
    assert len(pins) == 1, pins
    floor = re.fullmatch(r"numpy>=(\d+)(?:\.\d+)*", pins[0].replace(" ", ""))
    assert floor is not None, f"numpy needs a lower bound (numpy>=2.0), got {pins[0]!r}"
    assert int(floor.group(1)) >= 2, f"NumPy 1 lacks the promotion rules minivae relies on: {pins[0]!r}"


def test_the_sdist_holds_what_the_tests_need(tmp_path):
    """Without MANIFEST.in the sdist held tests/test_*.py alone: no conftest.py (its fixtures),
    no host_shim.cpp, no docs or benchmarks, so its tests failed by the hundred."""
    pytest.importorskip("setuptools", minversion="77")  # the build-system's (the dev extra has it)
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.so", "*.egg-info")
    folders = ("minivae", "kernels", "tests", "docs", "benchmarks", "tools")
    for folder in folders:
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "sdist",
                           "--dist-dir", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (archive,) = (tmp_path / "dist").glob("minivae-*.tar.gz")
    with tarfile.open(archive) as tar:
        shipped = {Path(*Path(name).parts[1:]).as_posix() for name in tar.getnames()}
    wanted = {path.relative_to(src).as_posix() for folder in folders for path in (src / folder).rglob("*")
              if path.is_file()}
    assert not wanted - shipped, sorted(wanted - shipped)


def test_the_version_is_the_one_of_the_package():
    """pyproject.toml and minivae.__version__ each name the version: what pip installs and
    what `minivae --version` and the benchmarks' results say must agree."""
    import minivae

    assert _pyproject()["project"]["version"] == minivae.__version__


def test_the_license_is_an_spdx_expression():
    """The table form, license = { text = "MIT" }, made every build warn that setuptools stops
    building it after 2027-02-18; the SPDX string needs setuptools 77 to build."""
    pyproject = _pyproject()
    assert pyproject["project"]["license"] == "MIT" and pyproject["project"]["license-files"] == ["LICENSE"]
    requires = pyproject["build-system"]["requires"]
    assert requires == ["setuptools>=77"], requires
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    assert "setuptools>=77" in dev, "tests build an sdist in the dev venv: it needs the same setuptools"


def test_numpy_1_is_refused_at_import():
    """A NumPy 1 installed by other means than the pin (pip --no-deps, a system package) gave no
    word at import; training then stopped in its first backward pass."""
    code = ("import numpy; numpy.__version__ = '1.26.4'\n"
            "try:\n    import minivae\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "minivae needs NumPy >= 2.0, found NumPy 1.26.4: pip install 'numpy>=2'", out
