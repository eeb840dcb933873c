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


# --------------------------------------------------------------------------- never confidently wrong


def test_panel_with_stride_above_kernel_counts_only_pixels_under_a_window():
    # Chapter 3's panel at 32 filters, kernel 3, stride 4 (widgets.conv_demo's model): only the
    # 121 pixels of 256 under a window are fixed; round-off once counted as rank 184.
    ds = data.load("mnist", 1, size=16, dtype=torch.float64)
    x, y = ds[0]
    net = models.init_weights(models.ConvNet(1, 16, [(32, 3, 4, 1, "tanh")], dtype=torch.float64), "uniform", seed=0)
    rec = conv.reconstruct(net, capture.client_update(net, x, y))
    layer = rec.diagnostics["layers"][0]
    assert layer["rank"] == 121 and layer["deficiency"] == 135 and int(rec.determined.sum()) == 121
    det = rec.determined
    assert torch.allclose(rec.images[det], x[det], atol=1e-9)
    counts = conv.count_constraints(net.conv1, (1, 16, 16), net.act1)
    assert counts["rank"] == 121 and counts["determined"] == 121 / 256


@pytest.mark.parametrize("filters", range(1, 17))
def test_count_constraints_reports_the_true_rank_when_stride_equals_kernel(filters):
    # k3 s3 p0, C 2, H 12: the counts say 9 filters suffice, the rank needs 16
    c = conv.count_constraints(nn.Conv2d(2, filters, 3, 3, 0).double(), (2, 12, 12))
    assert c["rank"] == 288 - (16 - filters) * (18 - filters)
    assert c["determined"] == (1.0 if filters == 16 else c["determined"]) and (filters == 16) == (c["rank"] == 288)


class _FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.fc = nn.Conv2d(1, 8, 5, 2, 2), nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv1(x)).flatten(1))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(1, 4, 3, 1, 1), nn.Tanh()
        self.conv2, self.act2 = nn.Conv2d(4, 4, 3, 1, 1), nn.Tanh()
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        h = self.act1(self.conv1(x))
        return self.fc((self.act2(self.conv2(h)) + h).flatten(1))


class _InlineNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act1, self.fc = nn.Conv2d(1, 8, 5, 2, 2), nn.Tanh(), nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = (x - x.mean()) / (x.std() + 1e-5)
        return self.fc(self.act1(self.conv1(x)).flatten(1))


@pytest.mark.parametrize("cls, where", [(_FunctionalReLU, "module 'conv1' and module 'fc'"),
                                        (_Residual, "module 'act2' and module 'fc'"),
                                        (_InlineNorm, "the model's input and module 'conv1'")])
def test_forward_that_modules_do_not_show_is_refused(digit, cls, where):
    x, y = digit
    torch.manual_seed(0)
    net = cls().double()
    with pytest.raises(ValueError, match=f"changes the values between {where}.*Write every operation"):
        conv.reconstruct(net, capture.client_update(net, x, y))


def test_batchnorm_in_training_mode_is_refused(digit):
    x, y = digit
    net = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                        nn.Linear(4 * 784, 10)).double().train()
    with pytest.raises(TypeError, match="BatchNorm2d"):
        conv.reconstruct(net, capture.client_update(net, x, y))


@pytest.mark.parametrize("level, confirmed", [(1e-3, False), (1e-6, False), (1e-12, True)])
def test_noisy_gradients_are_not_marked_determined(digit, level, confirmed):
    x, y = digit
    net = lenet(1, 28, "sigmoid")
    gen = torch.Generator().manual_seed(0)
    u = capture.client_update(net, x, y).map(
        lambda n, g: g + level * g.abs().max() * torch.randn(g.shape, generator=gen, dtype=g.dtype))
    rec = conv.reconstruct(net, u)
    assert rec.diagnostics["determined_by_equations"] == 1.0  # the equations alone would claim everything
    assert bool(rec.determined.all()) is confirmed and bool(rec.determined.any()) is confirmed
    assert rec.diagnostics["check"]["consistent"] is confirmed
    if confirmed:
        assert float(metrics.psnr(rec.images, x)) >= 150
    else:
        assert "do not" in rec.diagnostics["check"]["reason"]


# --------------------------------------------------------------------------- R-GAP


def test_rgap_is_exact_on_leaky_relu_cnn_with_its_rank_analysis(digit):
    x, y = digit
    net = lenet(1, 28, "leaky_relu", negative_slope=0.2)
    rec = conv.reconstruct(net, capture.client_update(net, x, y), method="rgap")
    assert rec.attack == "conv/rgap" and rec.determined.all() and float(metrics.psnr(rec.images, x)) >= 150
    top, mid, bottom = rec.diagnostics["layers"]
    # inputs 1 x 28 x 28, 12 x 14 x 14, 12 x 7 x 7; padding 2 on each side
    ra = bottom["rank_analysis"]
    assert ra == {"gradient_rows": 12 * 25, "forward_rows": 12 * 14 * 14, "padding_rows": 32 * 32 - 28 * 28,
                  "rows": 300 + 2352 + 240, "unknowns": 32 * 32, "rank": 32 * 32, "deficiency": 0}
    assert mid["rank_analysis"]["unknowns"] == 12 * 18 * 18 and mid["rank_analysis"]["deficiency"] == 0
    assert top["rank_analysis"]["padding_rows"] == 12 * (11 * 11 - 7 * 7)


def test_rgap_rank_deficiency_marks_free_pixels():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    net = models.init_weights(models.ConvNet(1, 12, [(2, 3, 2, 1, "leaky_relu")], dtype=torch.float64), "uniform",
                              seed=0)
    rec = conv.reconstruct(net, capture.client_update(net, x, torch.tensor([3])), method="rgap")
    ra = rec.diagnostics["layers"][0]["rank_analysis"]
    # 2 x 9 gradient rows and 2 x 36 forward rows for 144 pixels: at most 90 independent
    assert ra["rows"] == 18 + 72 + 196 - 144 and ra["rank"] - ra["padding_rows"] <= 90
    assert ra["deficiency"] == ra["unknowns"] - ra["rank"] >= 144 - 90
    assert not rec.determined.all()
    det = rec.determined
    assert torch.allclose(rec.images[det], x[det], atol=1e-9)


def test_rgap_refuses_relu_where_rconv_is_exact():
    ds = data.load("mnist", 1, size=16, dtype=torch.float64)
    x, y = ds[0]
    net = models.init_weights(models.ConvNet(1, 16, [(8, 5, 2, 2, "relu"), (12, 5, 1, 2, "leaky_relu")],
                                             dtype=torch.float64), "default", seed=0)
    u = capture.client_update(net, x, y)
    with pytest.raises(ValueError, match="R-GAP's rows need an invertible activation.*method='rconv'"):
        conv.reconstruct(net, u, method="rgap")
    rec = conv.reconstruct(net, u)
    assert rec.determined.all() and float(metrics.psnr(rec.images, x)) >= 150


def test_rgap_and_rconv_agree_on_sigmoid_lenet(digit):
    x, y = digit
    net = lenet(1, 28, "sigmoid")
    u = capture.client_update(net, x, y)
    rgap, rconv = (conv.reconstruct(net, u, method=m) for m in ("rgap", "rconv"))
    assert rgap.determined.all() and rconv.determined.all()
    assert torch.allclose(rgap.images, rconv.images, atol=1e-9)


# --------------------------------------------------------------------------- bad input

_LAYER = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
_NET = models.ConvNet(1, 8, [(4, 3, 1, 1, "tanh")], dtype=torch.float64)
_UPDATE = capture.client_update(_NET, torch.rand(1, 1, 8, 8, dtype=torch.float64), torch.tensor([1]))


@pytest.mark.parametrize("call, err, match", [
    (lambda: conv.reconstruct("net", _UPDATE), TypeError, "nn.Module"),
    (lambda: conv.reconstruct(_NET, {}), TypeError, "Update"),
    (lambda: conv.reconstruct(_NET, _UPDATE, method=3), ValueError, "method must be one of"),
    (lambda: conv.reconstruct(_NET, _UPDATE, rtol=2.0), ValueError, "rtol"),
    (lambda: conv.reconstruct(_NET, _UPDATE, dense_limit=0), ValueError, "dense_limit"),
    (lambda: conv.reconstruct(_NET, _UPDATE, labels="yes"), TypeError, "labels"),
    (lambda: conv.reconstruct(_NET, _UPDATE.map(lambda n, g: g * float("nan"))), ValueError, "NaN"),
    (lambda: conv.parse_cnn([], (1, 8, 8)), TypeError, "nn.Module"),
    (lambda: conv.parse_cnn(_NET, (8, 8)), ValueError, "input_shape"),
    (lambda: conv.parse_cnn(_NET, (1, 5, 5, 5)), ValueError, "input_shape"),
    (lambda: conv.parse_cnn(_NET, (3, 8, 8)), ValueError, "does not accept"),
    (lambda: conv.gradient_matrix(nn.Linear(2, 2), np.zeros((3, 4, 4)), (7, 7)), TypeError, "nn.Conv2d"),
    (lambda: conv.gradient_matrix(_LAYER, [[0.0]], (7, 7)), TypeError, "numpy array"),
    (lambda: conv.gradient_matrix(_LAYER, np.zeros((3, 3, 3)), (7, 7)), ValueError, r"\(3, 4, 4\)"),
    (lambda: conv.gradient_matrix(_LAYER, np.full((3, 4, 4), np.nan), (7, 7)), ValueError, "NaN"),
    (lambda: conv.gradient_matrix(_LAYER, np.zeros((3, 4, 4)), (7,)), ValueError, "in_hw"),
    (lambda: conv.gradient_matrix(_LAYER, np.zeros((3, 1, 1)), (0, 0)), ValueError, "positive"),
    (lambda: conv.forward_matrix(nn.ReLU(), (2, 7, 7)), TypeError, "nn.Conv2d"),
    (lambda: conv.forward_matrix(_LAYER, (3, 7, 7)), ValueError, "input channels"),
    (lambda: conv.forward_matrix(_LAYER, "2x7x7"), ValueError, "in_shape"),
    (lambda: conv.forward_matrix(_LAYER, (2, 7, 7), rows=np.ones((3, 4, 4))), ValueError, "bool array"),
    (lambda: conv.forward_matrix(nn.Conv2d(2, 3, 3, dilation=2), (2, 7, 7)), ValueError, "dilation"),
    (lambda: conv.count_constraints(nn.Linear(2, 2), (1, 4, 4)), TypeError, "nn.Conv2d"),
    (lambda: conv.count_constraints(_LAYER, (3, 8, 8)), ValueError, "input channels"),
    (lambda: conv.count_constraints(nn.Conv2d(2, 3, 5), (2, 3, 3)), ValueError, "smaller than"),
    (lambda: conv.count_constraints(_LAYER, (2, 8, 8), nn.SiLU()), TypeError, "SiLU"),
    (lambda: conv.count_constraints(_LAYER, (2, 8, 8), seed=-1), ValueError, "seed"),
    (lambda: conv.count_constraints(_LAYER, (2, 8, 8), seed=1.5), TypeError, "seed"),
    (lambda: conv.count_constraints(_LAYER, (2, 8, 8), rtol=0), ValueError, "rtol"),
    (lambda: conv.check_forward_structure(None, (1, 8, 8)), TypeError, "nn.Module"),
    (lambda: conv.check_forward_structure(_NET, (1, 8)), ValueError, "input_shape"),
    (lambda: conv.check_forward_structure(_NET, (1, 8, 8), seed=-2), ValueError, "seed"),
    (lambda: conv.check_forward_structure(nn.ReLU(), (1, 8, 8)), ValueError, "no parameters"),
    (lambda: conv.layer_tolerance(torch.int64), TypeError, "floating"),
    (lambda: conv.layer_tolerance("float64"), TypeError, "floating"),
])
def test_every_public_function_refuses_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_partial_image_keeps_the_pixels_its_equations_fix_and_they_are_exact():
    # ReLU after a 12-filter image layer: only part of the image is fixed; the layers above
    # are checked by the gradient residual from the lowest wholly rebuilt input, the image
    # layer by its own rows, so the fixed pixels stay marked, and they are exact
    xc, yc = data.load("patches", 1, dtype=torch.float64)[0]
    net = models.ConvNet(3, 32, [(12, 5, 2, 2, "relu"), (12, 5, 2, 2, "leaky_relu"),
                                 (12, 5, 1, 2, "leaky_relu")], dtype=torch.float64)
    net = models.init_weights(net, "default", seed=0)
    update = capture.client_update(net, xc, yc)
    rec = conv.reconstruct(net, update)
    assert 0 < rec.fraction_determined < 0.5
    assert rec.diagnostics["check"]["consistent"] and rec.diagnostics["check"]["checked_from"] == "conv2"
    assert float((rec.images - xc).abs()[rec.determined].max()) < 1e-9
    # a noisy update is not checked out, so nothing is marked
    g = torch.Generator().manual_seed(0)
    noisy = update.map(lambda n, t: t + 1e-6 * t.abs().max() * torch.randn(t.shape, generator=g, dtype=t.dtype))
    assert not conv.reconstruct(net, noisy).determined.any()
