import pytest
import torch

from leakutils import capture, data, metrics, models
from leakutils.attacks import dlg


@pytest.fixture(scope="module")
def setting():
    ds = data.load("digits", 1, dtype=torch.float64, size=16)
    torch.manual_seed(0)
    net = models.init_weights(models.LeNet(1, 16, activation="sigmoid", dtype=torch.float64), "uniform", seed=0)
    x, y = ds[0]
    return net, x, y, capture.client_update(net, x, y)


def test_dlg_reduces_the_gradient_distance(setting):
    net, x, y, u = setting
    short = dlg.reconstruct(net, u, iterations=2, max_iter=2, labels="idlg")
    longer = dlg.reconstruct(net, u, iterations=30, labels="idlg")
    assert longer.diagnostics["gradient_distance"] < short.diagnostics["gradient_distance"]
    assert longer.images.shape == x.shape and not longer.determined.any()
    assert metrics.compare(longer, x, y).mean_psnr > metrics.compare(short, x, y).mean_psnr
    assert longer.labels.tolist() == y.tolist()


def test_dlg_optimises_labels_and_is_reproducible(setting):
    net, x, y, u = setting
    a = dlg.reconstruct(net, u, iterations=3, seed=1)
    b = dlg.reconstruct(net, u, iterations=3, seed=1)
    assert torch.equal(a.images, b.images) and a.labels.shape == (1,)
    assert a.diagnostics["steps"] == 3 and len(a.diagnostics["history"]) == a.diagnostics["evaluations"]


def test_dlg_leaves_the_model_alone(setting):
    net, x, y, u = setting
    before = [p.clone() for p in net.parameters()]
    dlg.reconstruct(net, u, iterations=1, max_iter=1)
    assert all(torch.equal(p, q) and p.grad is None for p, q in zip(net.parameters(), before))


@pytest.mark.parametrize("kwargs, match", [
    (dict(iterations=0), "iterations"),
    (dict(max_iter=0), "max_iter"),
    (dict(labels="guess"), "labels must be"),
])
def test_dlg_bad_arguments(setting, kwargs, match):
    net, x, y, u = setting
    with pytest.raises(ValueError, match=match):
        dlg.reconstruct(net, u, **kwargs)


def test_dlg_update_from_another_model(setting):
    net, x, y, u = setting
    other = models.MLP((1, 16, 16), (8,), dtype=torch.float64)
    with pytest.raises(ValueError, match="no gradients for"):
        dlg.reconstruct(other, u)
    with pytest.raises(TypeError):
        dlg.reconstruct(net, "update")
