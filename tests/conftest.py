"""Shared fixtures: small float64 models and real images, seeded."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

from leakutils import data, models


@pytest.fixture(scope="session")
def mnist():
    return data.load("mnist", 16, dtype=torch.float64)


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return models.MLP((1, 28, 28), widths=(64,), dtype=torch.float64)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
