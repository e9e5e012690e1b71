"""Shared fixtures: a seeded generator and input factories that keep values away from kinks."""
import numpy as np
import pytest

from minivae import Tensor


def away_from(rng, shape, points=(0.0,), margin=0.1, low=-2.0, high=2.0):
    """Uniform values in [low, high] pushed at least ``margin`` away from every point in ``points``
    (relu/abs at 0, clip at its bounds), so a finite difference never straddles a kink."""
    x = rng.uniform(low, high, shape)
    for p in points:
        near = np.abs(x - p) < margin
        x = np.where(near, p + np.where(x >= p, margin, -margin) * rng.uniform(1, 2, shape), x)
    return x


def distinct(rng, shape, spacing=0.1):
    """Values at least ``spacing`` apart in random order: no ties for max."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * spacing + rng.uniform(0, spacing / 4, n) - n * spacing / 2).reshape(shape)


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
