"""Chapter 6's panel starts from a network trained once: shipped, or cached after its first training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from leakutils import metamodel as mm
from leakutils.widgets import extraction as ex


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, and no network remembered in memory."""
    monkeypatch.setenv("LEAKUTILS_DATA", str(tmp_path))
    ex.trained_mlp.cache_clear()
    yield tmp_path / "trained"
    ex.trained_mlp.cache_clear()


def _no_training(*args, **kwargs):
    raise AssertionError("the network was trained again instead of read")


def test_shipped_weights_are_what_the_recipe_trains():
    shipped = np.load(ex.SHIPPED / ex._weights_file(16, 0))
    fresh = ex.train_target(16, 0)
    assert shipped.dtype == np.float32 and shipped.shape == (mm.Sizes(784, 16, 10).n_params,)
    # the same recipe on the same data; only the order of float32 sums may differ between
    # PyTorch builds
    assert np.abs(shipped - fresh).max() < 1e-4


def test_the_default_target_is_read_not_trained(cache, monkeypatch):
    monkeypatch.setattr(ex, "train_target", _no_training)
    net = ex.trained_mlp(16, 0)
    shipped = torch.from_numpy(np.load(ex.SHIPPED / ex._weights_file(16, 0)))
    assert net.fc1.weight.dtype == torch.float64
    assert torch.equal(net.fc1.weight.reshape(-1), shipped[: 784 * 16].double())
    assert not cache.exists()


def test_a_new_setting_is_trained_once_then_read(cache, monkeypatch):
    first = ex.trained_mlp(4, 3)
    assert (cache / ex._weights_file(4, 3)).is_file()
    ex.trained_mlp.cache_clear()
    monkeypatch.setattr(ex, "train_target", _no_training)
    again = ex.trained_mlp(4, 3)
    assert torch.equal(first.fc1.weight, again.fc1.weight) and torch.equal(first.out.bias, again.out.bias)


@pytest.mark.parametrize("bad", [np.zeros(7, np.float32), np.full(784 * 4 + 4 + 40 + 10, np.nan, np.float32),
                                 np.zeros(784 * 4 + 4 + 40 + 10, np.float64)])
def test_a_damaged_cache_file_is_replaced(cache, bad):
    cache.mkdir(parents=True)
    path = cache / ex._weights_file(4, 5)
    np.save(path, bad)
    net = ex.trained_mlp(4, 5)
    stored = np.load(path)
    assert stored.dtype == np.float32 and np.isfinite(stored).all() and stored.shape == (mm.Sizes(784, 4, 10).n_params,)
    assert torch.equal(net.fc1.weight.reshape(-1), torch.from_numpy(stored[: 784 * 4]).double())


def test_an_unwritable_cache_still_gives_the_network(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LEAKUTILS_DATA", str(blocker))
    ex.trained_mlp.cache_clear()
    try:
        net = ex.trained_mlp(2, 7)
    finally:
        ex.trained_mlp.cache_clear()
    assert net.fc1.weight.shape == (2, 784)


def test_the_panel_builds_without_training(cache, monkeypatch):
    monkeypatch.setattr(ex, "train_target", _no_training)
    box = ex.extraction_panel()
    assert box.error is None
