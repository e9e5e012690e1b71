"""What pyproject.toml promises an installer: the dependencies the code needs, at versions it
works with."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _project():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_numpy_is_required_from_version_2():
    """The engine relies on NumPy 2's promotion rules (NEP 50): a float32 array times a Python
    float stays float32. Under NumPy 1.24, which the pin once allowed, the first training step
    failed with "Mean.backward returned float64 for a float32 input"."""
    pins = [dep for dep in _project()["dependencies"] if re.match(r"numpy\b", dep)]
    assert len(pins) == 1, pins
    floor = re.fullmatch(r"numpy>=(\d+)(?:\.\d+)*", pins[0].replace(" ", ""))
    assert floor is not None, f"numpy needs a lower bound (numpy>=2.0), got {pins[0]!r}"
    assert int(floor.group(1)) >= 2, f"NumPy 1 lacks the promotion rules minivae relies on: {pins[0]!r}"
