import pytest
import torch
from torch import nn

from leakutils import models


@pytest.mark.parametrize("name", sorted(models.ACTIVATIONS))
def test_every_activation_builds_and_runs(name):
    act = models.make_activation(name)
    out = act(torch.linspace(-2, 2, 5))
    assert out.shape == (5,) and torch.isfinite(out).all()


def test_activation_kwargs_and_errors():
    assert models.make_activation("leaky_relu", negative_slope=0.2).negative_slope == 0.2
    assert torch.allclose(models.make_activation("arctan")(torch.tensor([1.0])), torch.tensor([torch.pi / 4]))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        models.make_activation("swish")
    with pytest.raises(TypeError, match="does not accept"):
        models.make_activation("relu", slope=3)


def test_mlp_layout_names_and_dtype():
    m = models.MLP((1, 28, 28), widths=(32, 16), num_classes=5, activation="tanh", dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
    assert m.fc1.in_features == 784 and isinstance(m.act2, nn.Tanh) and m.input_shape == (1, 28, 28)
    out = m(torch.rand(3, 1, 28, 28, dtype=torch.float64))
    assert out.shape == (3, 5) and out.dtype == torch.float64


def test_mlp_without_bias_and_linear_classifier():
    m = models.MLP(10, widths=(), bias=False)
    assert [n for n, _ in m.named_parameters()] == ["out.weight"]


@pytest.mark.parametrize("kwargs, err", [
    (dict(input_shape=(0, 3)), ValueError),
    (dict(input_shape="28"), TypeError),
    (dict(input_shape=4, widths=(0,)), ValueError),
    (dict(input_shape=4, num_classes=0), ValueError),
    (dict(input_shape=4, dtype=torch.float16), TypeError),
    (dict(input_shape=4, activation="gelu"), ValueError),
])
def test_mlp_bad_arguments(kwargs, err):
    with pytest.raises(err):
        models.MLP(**kwargs)


@pytest.mark.parametrize("channels, size, fc_in", [(3, 32, 768), (1, 28, 588)])
def test_lenet_is_dlg_lenet(channels, size, fc_in):
    net = models.LeNet(channels, size, num_classes=10, dtype=torch.float64)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding, c.out_channels) for c in convs] == [
        ((5, 5), (2, 2), (2, 2), 12), ((5, 5), (2, 2), (2, 2), 12), ((5, 5), (1, 1), (2, 2), 12)]
    assert isinstance(net.body.act1, nn.Sigmoid) and net.fc.in_features == fc_in
    assert net(torch.rand(2, channels, size, size, dtype=torch.float64)).shape == (2, 10)


def test_lenet_bad_arguments():
    with pytest.raises(ValueError):
        models.LeNet(width=0)
    with pytest.raises(TypeError):
        models.LeNet(dtype=torch.int32)


def test_init_uniform_bounds_and_reproducible():
    a = models.init_weights(models.MLP(20, (30,)), "uniform", seed=3)
    b = models.init_weights(models.MLP(20, (30,)), "uniform", seed=3)
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q) and float(p.detach().min()) >= -0.5 and float(p.detach().max()) <= 0.5
    assert float(a.fc1.weight.detach().std()) > 0.25  # U(-0.5, 0.5) has std 0.289


@pytest.mark.parametrize("scheme", ["normal", "xavier", "kaiming", "default"])
def test_init_other_schemes(scheme):
    m = models.init_weights(models.LeNet(1, 28), scheme, seed=1)
    assert all(torch.isfinite(p).all() for p in m.parameters())
    if scheme in ("xavier", "kaiming"):
        assert float(m.fc.bias.detach().abs().max()) == 0.0


def test_init_errors():
    with pytest.raises(TypeError):
        models.init_weights("net")
    with pytest.raises(ValueError, match="scheme must be one of"):
        models.init_weights(models.MLP(4), "orthogonal")
    with pytest.raises(ValueError, match="low < high"):
        models.init_weights(models.MLP(4), low=1, high=0)
    with pytest.raises(ValueError, match=r"std must be a number in \(0, inf\]"):
        models.init_weights(models.MLP(4), "normal", std=0)
    with pytest.raises(ValueError, match="no linear or convolutional"):
        models.init_weights(nn.ReLU())


def test_count_parameters():
    assert models.count_parameters(models.MLP(784, (64,), 10)) == 784 * 64 + 64 + 64 * 10 + 10


def test_count_parameters_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        models.count_parameters([torch.zeros(3)])


@pytest.mark.parametrize("factory, convs, head_in", [
    (models.lenet_o, [(12, 5, 2, 2), (12, 5, 2, 2), (3, 5, 1, 2)], 192),
    (models.cnn6, [(12, 4, 2, 2), (36, 3, 2, 1), (36, 3, 1, 1), (36, 3, 1, 1), (64, 3, 2, 1), (128, 3, 1, 1)], 3200),
    (models.cnn6_o, [(12, 4, 2, 2), (36, 3, 2, 1), (36, 3, 1, 1), (36, 3, 1, 1), (64, 3, 2, 1), (3, 3, 1, 1)], 75),
    (models.rconv_net, [(12, 5, 2, 2), (16, 5, 2, 2), (12, 5, 1, 2), (3, 5, 1, 2)], 192),
    (models.lenet_4_relu, [(12, 5, 2, 2), (16, 5, 2, 2), (12, 5, 1, 2), (3, 5, 1, 2)], 192),
    (models.lenet_all_relu, [(64, 5, 2, 2), (16, 5, 2, 2), (12, 5, 1, 2), (3, 5, 1, 2)], 192),
])
def test_paper_architectures(factory, convs, head_in):
    net = factory(3, 32, dtype=torch.float64)
    found = [(m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in net.modules()
             if isinstance(m, nn.Conv2d)]
    assert found == convs and net.fc.in_features == head_in and net.input_shape == (3, 32, 32)
    assert net(torch.rand(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 10)


def test_cnn6_has_no_conv_biases_and_leaky_relu():
    net = models.cnn6()
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(net.act1, nn.LeakyReLU) and net.act1.negative_slope == 0.2 and net.fc.bias is not None


def test_relu_variants_activations():
    assert isinstance(models.lenet_4_relu().act1, nn.LeakyReLU) and isinstance(models.lenet_4_relu().act2, nn.ReLU)
    assert all(isinstance(getattr(models.lenet_all_relu(), f"act{i}"), nn.ReLU) for i in range(1, 5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(convs=[]), "at least one"),
    (dict(convs=[(4, 3, 1)]), "must be"),
    (dict(convs=[(0, 3, 1, 1, "relu")]), "non-positive"),
    (dict(convs=[(4, 40, 1, 0, "relu")]), "do not fit"),
])
def test_convnet_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.ConvNet(1, 28, **kwargs)
