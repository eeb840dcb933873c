import numpy as np
import pytest
import torch
from torch import nn

from leakutils import capture, data, metrics, models
from leakutils.attacks import conv


@pytest.fixture(scope="module")
def digit():
    return data.load("mnist", 1, dtype=torch.float64)[0]


@pytest.fixture(scope="module")
def patch():
    return data.load("patches", 1, dtype=torch.float64)[0]


def lenet(channels, size, activation, **kw):
    net = models.LeNet(channels, size, activation=activation, dtype=torch.float64, **kw)
    return models.init_weights(net, "uniform", seed=0)


@pytest.mark.parametrize("activation, kw", [("sigmoid", {}), ("tanh", {}), ("leaky_relu", {"negative_slope": 0.2}),
                                            ("elu", {}), ("softplus", {}), ("arctan", {})])
def test_rconv_exact_on_lenet_with_invertible_activations(digit, activation, kw):
    x, y = digit
    net = lenet(1, 28, activation, **kw)
    rec = conv.reconstruct(net, capture.client_update(net, x, y))
    assert rec.images.shape == x.shape and rec.determined.all()
    assert float(metrics.psnr(rec.images, x)) >= 100 and rec.labels.tolist() == y.tolist()
    assert [L["layer"] for L in rec.diagnostics["layers"]] == ["body.conv3", "body.conv2", "body.conv1"]
    assert all(L["rank"] == L["unknowns"] for L in rec.diagnostics["layers"])


def test_rconv_exact_on_colour_patch(patch):
    x, y = patch
    net = lenet(3, 32, "sigmoid")
    rec = conv.reconstruct(net, capture.client_update(net, x, y))
    assert float(metrics.psnr(rec.images, x)) >= 100


def test_gradient_equations_alone_solve_upper_layers(digit):
    x, y = digit
    net = lenet(1, 28, "sigmoid")
    rec = conv.reconstruct(net, capture.client_update(net, x, y), method="gradient")
    top = rec.diagnostics["layers"][0]
    assert top["solver"].startswith("gradient equations") and top["rank"] == top["unknowns"]
    # the first layer has 12*25 = 300 equations per channel for 784 pixels: not determined
    assert rec.diagnostics["layers"][-1]["determined"] < 0.5 and not rec.determined.all()


def test_forward_only_needs_invertible_activations(digit):
    x, y = digit
    net = lenet(1, 28, "relu")
    with pytest.raises(ValueError, match="invertible"):
        conv.reconstruct(net, capture.client_update(net, x, y), method="forward")


def test_forward_only_is_underdetermined_on_lenet(digit):
    x, y = digit
    net = lenet(1, 28, "tanh")
    rec = conv.reconstruct(net, capture.client_update(net, x, y), method="forward")
    conv2 = rec.diagnostics["layers"][1]
    assert conv2["rank"] < conv2["unknowns"]  # 12*7*7 forward equations for 12*14*14 unknowns
    assert rec.fraction_determined < 0.5


def test_forward_only_exact_when_filters_suffice(digit):
    x, y = digit
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, 1, 1), nn.Tanh(),
                        nn.Flatten(), nn.Linear(8 * 28 * 28, 10)).double()
    rec = conv.reconstruct(net, capture.client_update(net, x, y), method="forward")
    assert float(metrics.psnr(rec.images, x)) >= 100 and rec.determined.all()


def test_relu_everywhere_marks_what_is_lost(patch):
    x, y = patch
    net = lenet(3, 32, "relu")
    rec = conv.reconstruct(net, capture.client_update(net, x, y))
    assert not rec.determined.all()
    det = rec.determined
    if det.any():  # what is marked determined is right
        assert torch.allclose(rec.images[det], x[det], atol=1e-6)


def test_bias_free_convs_and_float32_model(digit):
    x, y = digit
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 6, 5, 2, 2, bias=False), nn.Sigmoid(), nn.Conv2d(6, 16, 3, 1, 1, bias=False),
                        nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
    rec = conv.reconstruct(net, capture.client_update(net, x.float(), y))
    assert rec.images.dtype == torch.float64 and float(metrics.psnr(rec.images, x)) > 60


def test_rectangular_kernels_and_strides():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 12, 10, dtype=torch.float64)
    net = nn.Sequential(nn.Conv2d(2, 10, (3, 5), (1, 2), (1, 2)), nn.Tanh(), nn.Flatten(),
                        nn.Linear(10 * 12 * 5, 4)).double()
    rec = conv.reconstruct(net, capture.client_update(net, x, torch.tensor([1])))
    assert float(metrics.psnr(rec.images, x)) >= 100


def test_gradient_matrix_reproduces_the_weight_gradient():
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    x = torch.rand(1, 2, 7, 7, dtype=torch.float64)
    out = layer(x)
    g = torch.randn_like(out)
    (dW,) = torch.autograd.grad(out, layer.weight, g)
    A = conv.gradient_matrix(layer, g[0].detach().numpy(), (7, 7))
    predicted = A @ x[0].reshape(2, -1).T.numpy()  # (F*K*K, C)
    assert np.allclose(predicted, dW.permute(0, 2, 3, 1).reshape(-1, 2).numpy(), atol=1e-12)
    M = conv.forward_matrix(layer, (2, 7, 7))
    pre = (out - layer.bias[None, :, None, None]).detach()
    assert np.allclose(M @ x.reshape(-1).numpy(), pre.reshape(-1).numpy(), atol=1e-12)


def test_count_constraints_and_bound():
    few = conv.count_constraints(nn.Conv2d(1, 2, 3, 2, 1), (1, 12, 12))
    assert few["unknowns"] == 144 and few["forward_equations"] == 2 * 36 and few["gradient_equations"] == 18
    assert few["bound_safe"] and few["determined"] < 1.0 and few["rank"] <= 90
    many = conv.count_constraints(nn.Conv2d(1, 12, 3, 1, 1), (1, 12, 12), nn.Tanh())
    assert not many["bound_safe"] and many["rank"] == 144 and many["determined"] == 1.0
    relu = conv.count_constraints(nn.Conv2d(1, 4, 3, 1, 1), (1, 12, 12), nn.ReLU())
    assert relu["forward_available"] < relu["forward_equations"]


def test_parse_cnn_names_layers(digit):
    layers, head = conv.parse_cnn(lenet(1, 28, "sigmoid"), (1, 28, 28))
    assert [L.name for L in layers] == ["body.conv1", "body.conv2", "body.conv3"] and head == "fc"
    assert layers[0].in_shape == (1, 28, 28) and layers[0].out_shape == (12, 14, 14)


@pytest.mark.parametrize("net, err, match", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 10)), TypeError,
     "MaxPool2d"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)), TypeError,
     "BatchNorm2d"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, groups=1, dilation=2), nn.Flatten(), nn.Linear(4 * 24 * 24, 10)), TypeError,
     "dilation"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)), TypeError, "SiLU"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), ValueError, "no Conv2d"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, bias=True), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10, bias=False)),
     ValueError, "has no bias"),
])
def test_unsupported_models(digit, net, err, match):
    x, y = digit
    net = net.double()
    with pytest.raises(err, match=match):
        conv.reconstruct(net, capture.client_update(net, x, y))


def test_bad_arguments(digit):
    x, y = digit
    net = lenet(1, 28, "sigmoid")
    u = capture.client_update(net, x, y)
    with pytest.raises(ValueError, match="method must be one of"):
        conv.reconstruct(net, u, method="dlg")
    with pytest.raises(ValueError, match="rtol"):
        conv.reconstruct(net, u, rtol=0)
    with pytest.raises(TypeError, match="Update"):
        conv.reconstruct(net, u.gradients)
    batch = data.load("mnist", 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="rebuilds one sample"):
        conv.reconstruct(net, capture.client_update(net, batch.images, batch.labels))
    other = lenet(1, 28, "sigmoid", width=6)
    with pytest.raises(ValueError, match="does not come from this model"):
        conv.reconstruct(net, capture.client_update(other, x, y))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        conv.count_constraints(nn.Linear(2, 2), (1, 4, 4))
    with pytest.raises(ValueError, match="input channels"):
        conv.count_constraints(nn.Conv2d(3, 2, 3), (1, 8, 8))


@pytest.mark.parametrize("factory, kwargs", [
    (models.lenet_o, {"activation": "tanh"}),
    (models.cnn6, {}),
    (models.cnn6_o, {}),
    (models.rconv_net, {"activation": "sigmoid"}),
    (models.lenet_4_relu, {}),
    (models.lenet_all_relu, {"first_filters": 32}),
])
def test_every_paper_architecture_is_attacked_consistently(digit, factory, kwargs):
    x, y = digit
    net = models.init_weights(factory(1, 28, dtype=torch.float64, **kwargs), "default", seed=0)
    rec = conv.reconstruct(net, capture.client_update(net, x, y))
    assert len(rec.diagnostics["layers"]) == sum(isinstance(m, nn.Conv2d) for m in net.modules())
    det = rec.determined
    assert torch.allclose(rec.images[det], x[det], atol=1e-6)  # what is marked fixed is right
    if det.all():
        assert float(metrics.psnr(rec.images, x)) >= 100
    if factory in (models.lenet_o, models.cnn6, models.rconv_net):  # invertible activations: exact
        assert det.all()
