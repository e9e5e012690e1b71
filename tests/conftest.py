"""Shared fixtures: a seeded generator and input factories that keep values away from kinks."""
import numpy as np
import pytest

from minivae import Tensor
from minivae.gradcheck_cases import away_from, distinct  # noqa: F401  (used by the tests)


@pytest.fixture
def rng():
    """A fresh, seeded generator per test, so every test is reproducible on its own."""
    return np.random.default_rng(1234)


@pytest.fixture
def t64(rng):
    """Factory: a float64 Tensor requiring grad, uniform in [low, high]."""
    def make(*shape, low=-1.0, high=1.0, requires_grad=True):
        return Tensor(rng.uniform(low, high, shape), requires_grad=requires_grad)
    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying why, where CuPy or a CUDA device is missing (they are
    deselected by default; ``pytest -m gpu`` selects them)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import minivae.gpu

    if not minivae.gpu.is_available():
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)
