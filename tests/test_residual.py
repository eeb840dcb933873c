"""The gradient-residual check: consistent for the truth, not for mixtures or wrong labels."""
import copy

import pytest
import torch
from torch import nn

from leakutils import capture, models
from leakutils.attacks import residual
from leakutils.attacks.residual import gradient_residual


def test_truth_is_consistent_in_float64_and_float32(mlp, mnist):
    x, y = mnist[0]
    u = capture.client_update(mlp, x, y)
    r = gradient_residual(mlp, u, x, y)
    assert r.consistent and r.relative < 1e-15 and r.dtype == "float64"
    assert set(r.per_parameter) == {"fc1.weight", "fc1.bias", "out.weight", "out.bias"}
    m32 = copy.deepcopy(mlp).float()
    u32 = capture.client_update(m32, x.float(), y)
    r32 = gradient_residual(m32, u32, x, y)
    assert r32.consistent and r32.dtype == "float32" and 1e-9 < r32.relative < 1e-5
    assert next(m32.parameters()).dtype == torch.float32  # the model is not converted


def test_whole_batch_consistent_mixture_and_one_sample_not(mlp, mnist):
    x, y = mnist.images[:4], mnist.labels[:4]
    u = capture.client_update(mlp, x, y)
    assert gradient_residual(mlp, u, x, y).consistent
    shuffled = gradient_residual(mlp, u, x.flip(0), y.flip(0))
    assert shuffled.consistent  # the order of a batch does not matter
    mixture = x.mean(0, keepdim=True)
    best = gradient_residual(mlp, u, mixture)
    assert not best.consistent and best.relative > 0.1 and len(best.label_search) == 10
    one = gradient_residual(mlp, u, x[:1], y[:1])
    assert not one.consistent and one.worst_parameter in one.per_parameter


def test_repeated_sample_is_explained_by_one_image(mlp, mnist):
    x, y = mnist[2]
    u = capture.client_update(mlp, torch.cat([x, x, x]), torch.cat([y, y, y]))
    assert gradient_residual(mlp, u, x, y).consistent


def test_wrong_label_is_found_by_the_search(mlp, mnist):
    x, y = mnist[3]
    u = capture.client_update(mlp, x, y)
    wrong = (y + 1) % 10
    assert not gradient_residual(mlp, u, x, wrong).consistent
    r = gradient_residual(mlp, u, x)
    assert r.consistent and r.labels.tolist() == y.tolist()
    assert min(r.label_search, key=r.label_search.get) == int(y)


def test_noise_level_sets_the_tolerance(mlp, mnist):
    x, y = mnist[4]
    u = capture.client_update(mlp, x, y)
    gen = torch.Generator().manual_seed(0)
    sigma = 1e-6
    noisy = u.map(lambda n, g: g + sigma * torch.randn(g.shape, generator=gen, dtype=g.dtype))
    assert not gradient_residual(mlp, noisy, x, y).consistent  # no noise allowed for
    r = gradient_residual(mlp, noisy, x, y, noise=sigma)
    assert r.consistent and r.noise == sigma
    assert not gradient_residual(mlp, noisy, mnist[5][0], y, noise=sigma).consistent


def test_clipped_update_needs_fit_scale(mlp, mnist):
    x, y = mnist[6]
    u = capture.client_update(mlp, x, y).map(lambda n, g: 0.25 * g)
    assert not gradient_residual(mlp, u, x, y).consistent
    r = gradient_residual(mlp, u, x, y, fit_scale=True)
    assert r.consistent and abs(r.scale - 0.25) < 1e-12


def test_deeper_layer_input_with_functional_relu(mnist):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(784, 64), nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x):
            return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))

    torch.manual_seed(0)
    net = Net().double()
    x, y = mnist[0]
    u = capture.client_update(net, x, y)
    hidden = torch.relu(net.fc1(x.flatten(1))).detach()
    r = gradient_residual(net, u, hidden, y, layer="fc2")
    assert r.consistent and set(r.per_parameter) == {"fc2.weight", "fc2.bias", "out.weight", "out.bias"}
    # the pre-activation is not what fc2 sees: the functional ReLU makes it inconsistent
    pre = net.fc1(x.flatten(1)).detach()
    assert not gradient_residual(net, u, pre, y, layer="fc2").consistent


def test_parameters_subset(mlp, mnist):
    x, y = mnist[0]
    u = capture.client_update(mlp, x, y)
    r = gradient_residual(mlp, u, x, y, parameters=["out.bias"])
    assert list(r.per_parameter) == ["out.bias"] and r.consistent


def test_constants_are_documented():
    assert residual.ROUNDOFF_FACTOR > 1 and residual.NOISE_FACTOR >= 1
    assert "uniqueness" in residual.__doc__


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 10)).double()


@pytest.mark.parametrize("kwargs, exc, fragment", [
    (dict(images="x"), TypeError, "torch tensor"),
    (dict(images=torch.zeros(1, 1, 28, 28, dtype=torch.int64)), TypeError, "floating point"),
    (dict(images=torch.zeros(0, 1, 28, 28)), ValueError, "non-empty"),
    (dict(images=torch.zeros(3, 1, 28, 28)), ValueError, "3 images for an update of 2"),
    (dict(images=torch.zeros(1, 1, 14, 14)), ValueError, "sample shape"),
    (dict(images=torch.full((1, 1, 28, 28), float("nan"))), ValueError, "NaN"),
    (dict(labels=[1]), TypeError, "int64 tensor"),
    (dict(labels=torch.tensor([1.0])), TypeError, "int64"),
    (dict(labels=torch.tensor([1, 2])), ValueError, "one label per image"),
    (dict(labels=torch.tensor([10])), ValueError, "[0, 10)"),
    (dict(images=torch.zeros(2, 1, 28, 28), labels=None), ValueError, "give labels"),
    (dict(noise=-1.0), ValueError, "noise"),
    (dict(noise="big"), TypeError, "noise"),
    (dict(noise=float("nan")), ValueError, "noise"),
    (dict(parameters=["nope"]), ValueError, "unknown parameters"),
    (dict(layer="nope"), ValueError, "no module named"),
    (dict(layer=3), TypeError, "module name"),
    (dict(model="net"), TypeError, "nn.Module"),
    (dict(update="u"), TypeError, "Update"),
])
def test_bad_input_is_refused_clearly(mlp, mnist, kwargs, exc, fragment):
    x, y = mnist.images[:2], mnist.labels[:2]
    u = capture.client_update(mlp, x, y)
    args = dict(model=mlp, update=u, images=x[:1], labels=y[:1])
    args.update(kwargs)
    with pytest.raises(exc, match=None) as info:
        gradient_residual(args.pop("model"), args.pop("update"), args.pop("images"), args.pop("labels"),
                          **args)
    assert fragment in str(info.value)


def test_batchnorm_training_on_one_sample_is_a_clear_error(mnist):
    net = _bn_net()
    u = capture.client_update(net, mnist.images[:2], mnist.labels[:2])
    with pytest.raises(ValueError, match="BatchNorm"):
        gradient_residual(net, u, mnist.images[:1], mnist.labels[:1])
    assert gradient_residual(net, u, mnist.images[:2], mnist.labels[:2]).consistent
