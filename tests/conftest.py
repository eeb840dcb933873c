"""Shared fixtures: small float64 models and real images, seeded."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
from hypothesis import settings

# The property tests replay the same examples on every run (CI included); set
# HYPOTHESIS_PROFILE=explore to search new random examples.
settings.register_profile("course", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "course"))

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
