import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leakutils import capture, models


def test_gradients_are_the_batch_mean(mlp, mnist):
    x, y = mnist.images[:4], mnist.labels[:4]
    u = capture.client_update(mlp, x, y, per_sample=True)
    ref = torch.autograd.grad(F.cross_entropy(mlp(x), y), list(mlp.parameters()))
    for (name, _), g in zip(mlp.named_parameters(), ref):
        assert torch.allclose(u[name], g, atol=1e-14)
        assert torch.allclose(u.per_sample[name].mean(0), g, atol=1e-14)
        assert u.per_sample[name].shape == (4, *g.shape)
    assert u.batch_size == 4 and u.input_shape == (1, 28, 28)
    assert abs(u.loss - float(F.cross_entropy(mlp(x), y).detach())) < 1e-12


def test_model_untouched(mlp, mnist):
    before = {n: p.clone() for n, p in mlp.named_parameters()}
    capture.client_update(mlp, mnist.images[:2], mnist.labels[:2])
    for n, p in mlp.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None


def test_custom_loss_and_unused_parameters():
    torch.manual_seed(0)
    net = nn.ModuleDict({"used": nn.Linear(3, 1), "unused": nn.Linear(3, 1)}).double()

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net["used"](x).squeeze(1)

    u = capture.client_update(Wrapper(), torch.rand(5, 3, dtype=torch.float64),
                              torch.rand(5, dtype=torch.float64), loss_fn=F.mse_loss)
    assert torch.count_nonzero(u["net.unused.weight"]) == 0 and torch.count_nonzero(u["net.used.weight"]) > 0


@pytest.mark.parametrize("args, err, match", [
    (lambda m, x, y: ("model", x, y), TypeError, "torch.nn.Module"),
    (lambda m, x, y: (m, x.numpy(), y), TypeError, "x must be a torch tensor"),
    (lambda m, x, y: (m, x.float(), y), TypeError, "convert one of them"),
    (lambda m, x, y: (m, x, y[:1]), ValueError, "one entry per sample"),
    (lambda m, x, y: (m, x[:0], y[:0]), ValueError, "x is empty"),
    (lambda m, x, y: (m, x, y + 10), ValueError, r"labels must lie in \[0, 10\)"),
    (lambda m, x, y: (m, x, y.double()), TypeError, "int64 class indices"),
    (lambda m, x, y: (m, x * float("nan"), y), ValueError, "x contains NaN"),
    (lambda m, x, y: (m, x[:, :, :10], y), ValueError, "does not accept inputs of shape"),
    (lambda m, x, y: (m, x[0, 0, 0], y), ValueError, "at least 2 axes"),
    (lambda m, x, y: (m, x, y[:, None]), ValueError, "one-dimensional"),
    (lambda m, x, y: (m, x, y, "mse"), TypeError, "loss_fn must be a callable"),
    (lambda m, x, y: (m, x, y.tolist()), TypeError, "y must be a torch tensor"),
    (lambda m, x, y: (models.MLP, x, y), TypeError, "build it first"),
])
def test_bad_inputs(mlp, mnist, args, err, match):
    with pytest.raises(err, match=match):
        capture.client_update(*args(mlp, mnist.images[:2], mnist.labels[:2]))


def test_per_sample_must_be_a_bool(mlp, mnist):
    with pytest.raises(TypeError, match="per_sample must be True or False"):
        capture.client_update(mlp, mnist.images[:2], mnist.labels[:2], per_sample=1)


def test_model_without_trainable_parameters(mnist):
    m = models.MLP((1, 28, 28), (4,), dtype=torch.float64).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        capture.client_update(m, mnist.images[:1], mnist.labels[:1])


def test_loss_must_be_scalar(mlp, mnist):
    with pytest.raises(ValueError, match="0-dim"):
        capture.client_update(mlp, mnist.images[:2], mnist.labels[:2],
                              loss_fn=lambda z, y: F.cross_entropy(z, y, reduction="none"))
