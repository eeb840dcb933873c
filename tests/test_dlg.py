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


@pytest.fixture(scope="module")
def tiny():
    ds = data.load("digits", 1, dtype=torch.float64, size=4)
    torch.manual_seed(0)
    net = models.MLP((1, 4, 4), (6,), num_classes=3, activation="sigmoid", dtype=torch.float64)
    x, y = ds.images[:1], torch.tensor([1])
    return net, x, y, capture.client_update(net, x, y)


def test_dlg_marks_determined_only_what_passes_the_residual_check(tiny):
    net, x, y, u = tiny
    # run to round-off: every L-BFGS step does its max_iter iterations
    done = dlg.reconstruct(net, u, iterations=4, labels="idlg", tolerance_grad=0.0, tolerance_change=0.0)
    assert done.diagnostics["consistent"] and done.determined.all()
    assert done.diagnostics["gradient_residual"].consistent
    assert float((done.images - x).abs().max()) < 1e-12 and done.labels.tolist() == y.tolist()
    # two steps: within 1e-12 of the image, yet the update is not reproduced within round-off
    close = dlg.reconstruct(net, u, iterations=2, labels="idlg", tolerance_grad=0.0, tolerance_change=0.0)
    assert close.diagnostics["check_relative_residual"] > close.diagnostics["check_relative_tolerance"]
    assert not close.diagnostics["consistent"] and not close.determined.any()
    # PyTorch's default tolerances stop L-BFGS at a relative residual near 1e-5
    early = dlg.reconstruct(net, u, iterations=4, labels="idlg")
    assert early.diagnostics["check_relative_residual"] > 1e-8 and not early.determined.any()


def test_dlg_noise_level_too_large_certifies_nothing(tiny):
    net, x, y, u = tiny
    done = dlg.reconstruct(net, u, iterations=4, labels="idlg", tolerance_grad=0.0, tolerance_change=0.0,
                           noise=1.0)
    assert done.diagnostics["check_relative_tolerance"] > dlg.MAX_RELATIVE_TOLERANCE
    assert not done.diagnostics["consistent"] and not done.determined.any()


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(iterations=0), ValueError, "iterations must be an integer >= 1"),
    (dict(iterations=2.0), TypeError, "iterations must be an integer"),
    (dict(iterations=True), TypeError, "iterations must be an integer"),
    (dict(max_iter=0), ValueError, "max_iter"),
    (dict(labels="guess"), ValueError, "labels must be one of"),
    (dict(labels=None), TypeError, "labels must be a string"),
    (dict(seed=-1), ValueError, "seed must be an integer in 0..4294967295"),
    (dict(seed=0.5), TypeError, "seed must be an integer"),
    (dict(lr=0.0), ValueError, r"lr must be a number in \(0, inf\]"),
    (dict(lr=float("nan")), ValueError, "lr must be a finite number"),
    (dict(lr="1"), TypeError, "lr must be a real number"),
    (dict(noise=-1.0), ValueError, "noise must be a finite number >= 0"),
    (dict(tolerance_grad=-1.0), ValueError, "tolerance_grad"),
])
def test_dlg_bad_arguments(setting, kwargs, err, match):
    net, x, y, u = setting
    with pytest.raises(err, match=match):
        dlg.reconstruct(net, u, **kwargs)


def test_dlg_bad_updates(setting):
    net, x, y, u = setting
    nan = u.map(lambda name, g: g * float("nan"))
    with pytest.raises(ValueError, match="contains NaN or infinite"):
        dlg.reconstruct(net, nan, iterations=1)
    shapes = type(u)(u.gradients, u.batch_size, u.loss, (1, 9, 9))
    with pytest.raises(ValueError, match="does not accept inputs of the update's shape"):
        dlg.reconstruct(net, shapes, iterations=1)


def test_dlg_update_from_another_model(setting):
    net, x, y, u = setting
    other = models.MLP((1, 16, 16), (8,), dtype=torch.float64)
    with pytest.raises(ValueError, match="no gradients for"):
        dlg.reconstruct(other, u)
    with pytest.raises(TypeError):
        dlg.reconstruct(net, "update")
