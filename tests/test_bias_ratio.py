import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leakutils import capture, data, metrics, models
from leakutils.attacks import bias_ratio


@pytest.mark.parametrize("name", sorted(data.OFFLINE))
def test_exact_on_every_offline_data_set(name):
    ds = data.load(name, 3, dtype=torch.float64)
    torch.manual_seed(0)
    model = models.MLP(ds.shape, (128,), dtype=torch.float64)
    for i in range(3):
        x, y = ds[i]
        rec = bias_ratio.reconstruct(model, capture.client_update(model, x, y))
        assert rec.images.shape == x.shape and rec.images.dtype == torch.float64
        assert float(metrics.psnr(rec.images, x)) >= 100
        assert rec.labels.tolist() == y.tolist() and rec.determined.all()
        assert rec.diagnostics["gradient_rank"] == 1 and rec.diagnostics["residual"] < 1e-12


def test_dead_rows_are_left_out(mlp, mnist):
    x, y = mnist[0]
    u = capture.client_update(mlp, x, y)
    rec = bias_ratio.reconstruct(mlp, u)
    live = torch.nonzero(u["fc1.bias"] != 0).flatten()
    assert torch.equal(rec.diagnostics["rows_used"], live) and 0 < live.numel() < 64
    assert rec.diagnostics["n_rows_used"] == live.numel() and rec.diagnostics["n_rows"] == 64


def test_deeper_layer_gives_its_input_features(mnist):
    torch.manual_seed(0)
    model = models.MLP((1, 28, 28), (64, 32), activation="sigmoid", dtype=torch.float64)
    x, y = mnist[1]
    rec = bias_ratio.reconstruct(model, capture.client_update(model, x, y), layer="fc2")
    hidden = torch.sigmoid(model.fc1(x.flatten(1)))
    assert rec.images.shape == (1, 64) and torch.allclose(rec.images, hidden, atol=1e-12)


def test_float32_model_is_attacked_in_float64(mnist):
    torch.manual_seed(0)
    model = models.MLP((1, 28, 28), (64,))
    x, y = mnist[0]
    rec = bias_ratio.reconstruct(model, capture.client_update(model, x.float(), y))
    assert rec.images.dtype == torch.float64 and float(metrics.psnr(rec.images, x)) > 100


def test_batch_needs_opt_in_and_gives_a_mixture(mlp, mnist):
    x, y = mnist.images[:4], mnist.labels[:4]
    u = capture.client_update(mlp, x, y)
    with pytest.raises(ValueError, match="allow_batch=True"):
        bias_ratio.reconstruct(mlp, u)
    rec = bias_ratio.reconstruct(mlp, u, allow_batch=True)
    assert rec.diagnostics["gradient_rank"] == 4 and rec.diagnostics["residual"] > 0.1
    assert metrics.compare(rec, x).mean_psnr < 30
    assert set(rec.labels.tolist()) <= set(y.tolist())


def test_row_inputs_single_sample_all_equal(mlp, mnist):
    x, y = mnist[0]
    rows, idx = bias_ratio.row_inputs(mlp, capture.client_update(mlp, x, y))
    assert rows.shape == (idx.numel(), 784)
    assert torch.allclose(rows, x.flatten().expand_as(rows), atol=1e-10)


def test_layer_input_gradient_matches_autograd(mlp, mnist):
    x, y = mnist[0]
    u = capture.client_update(mlp, x, y)
    h = torch.relu(mlp.fc1(x.flatten(1))).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(mlp.out(h), y), h)
    assert torch.allclose(bias_ratio.layer_input_gradient(mlp, u, "out"), g[0], atol=1e-14)


def test_error_layer_without_bias(mnist):
    model = models.MLP((1, 28, 28), (16,), bias=False, dtype=torch.float64)
    u = capture.client_update(model, *mnist[0])
    with pytest.raises(ValueError, match="has no bias"):
        bias_ratio.reconstruct(model, u)
    with pytest.raises(ValueError, match="has no bias"):
        bias_ratio.row_inputs(model, u)
    with pytest.raises(ValueError, match="has no bias"):
        bias_ratio.layer_input_gradient(model, u)


def test_error_zero_gradient(mlp, mnist):
    u = capture.client_update(mlp, *mnist[0]).map(lambda n, g: torch.zeros_like(g))
    with pytest.raises(ValueError, match="bias gradient of 'fc1' is zero"):
        bias_ratio.reconstruct(mlp, u)


def test_error_update_from_another_model(mlp, mnist):
    other = models.MLP((1, 28, 28), (32,), dtype=torch.float64)
    u = capture.client_update(other, *mnist[0])
    with pytest.raises(ValueError, match="does not come from this model"):
        bias_ratio.reconstruct(mlp, u)


def test_error_missing_gradient(mlp, mnist):
    u = capture.client_update(mlp, *mnist[0])
    partial = type(u)({k: v for k, v in u.gradients.items() if k != "fc1.bias"}, 1, u.loss, u.input_shape)
    with pytest.raises(ValueError, match="no gradient for 'fc1.bias'"):
        bias_ratio.reconstruct(mlp, partial)


def test_error_non_finite_gradient(mlp, mnist):
    u = capture.client_update(mlp, *mnist[0]).map(lambda n, g: g * float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        bias_ratio.reconstruct(mlp, u)


def test_error_layer_names_and_kinds(mlp, mnist):
    u = capture.client_update(mlp, *mnist[0])
    with pytest.raises(ValueError, match="no layer named 'fc9'"):
        bias_ratio.reconstruct(mlp, u, layer="fc9")
    with pytest.raises(TypeError, match="is a ReLU, not a Linear"):
        bias_ratio.reconstruct(mlp, u, layer="act1")
    with pytest.raises(TypeError, match="module name"):
        bias_ratio.reconstruct(mlp, u, layer=1)


def test_error_model_without_linear_layer(mnist):
    conv = nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten()).double()  # 10 logits, no nn.Linear
    u = capture.client_update(conv, *mnist[0])
    with pytest.raises(ValueError, match="no Linear layer"):
        bias_ratio.reconstruct(conv, u)


@pytest.mark.parametrize("rtol, err", [(0, ValueError), (1, ValueError), (-1e-3, ValueError),
                                       (float("nan"), ValueError), ("small", TypeError)])
def test_error_bad_tolerance(mlp, mnist, rtol, err):
    with pytest.raises(err, match="rtol"):
        bias_ratio.reconstruct(mlp, capture.client_update(mlp, *mnist[0]), rtol=rtol)


def test_error_wrong_argument_types(mlp, mnist):
    u = capture.client_update(mlp, *mnist[0])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        bias_ratio.reconstruct("model", u)
    with pytest.raises(TypeError, match="leakutils Update"):
        bias_ratio.reconstruct(mlp, dict(u.gradients))
    with pytest.raises(TypeError, match="leakutils Update"):
        bias_ratio.layer_input_gradient(mlp, None)


def test_batch_mixture_is_not_determined_but_identical_samples_are(mlp, mnist):
    for M in (2, 5):
        u = capture.client_update(mlp, mnist.images[:M], mnist.labels[:M])
        rec = bias_ratio.reconstruct(mlp, u, allow_batch=True)
        assert not rec.determined.any() and rec.diagnostics["consistent"] is False
        assert rec.diagnostics["check_relative_residual"] > 0.1
    x, y = mnist[0]
    u = capture.client_update(mlp, torch.cat([x, x]), torch.cat([y, y]))
    rec = bias_ratio.reconstruct(mlp, u, allow_batch=True)
    assert rec.determined.all() and float(metrics.psnr(rec.images, x)) >= 100


def test_layers_declared_out_of_call_order(mnist):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(100, 10)
            self.fc1 = nn.Linear(784, 100)

        def forward(self, x):
            return self.out(torch.relu(self.fc1(x.flatten(1))))

    torch.manual_seed(0)
    net = Net().double()
    x, y = mnist[0]
    rec = bias_ratio.reconstruct(net, capture.client_update(net, x, y))
    assert rec.diagnostics["layer"] == "fc1" and rec.labels.tolist() == y.tolist()
    assert rec.images.shape == x.shape and rec.determined.all()
    assert float(metrics.psnr(rec.images, x)) >= 100


def test_batchnorm_in_training_mode_is_refused(mnist):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(),
                        nn.Linear(32, 10)).double()
    u = capture.client_update(net, mnist.images[:2], mnist.labels[:2])
    with pytest.raises(ValueError, match="BatchNorm1d in training mode"):
        bias_ratio.reconstruct(net, u, allow_batch=True)
    assert net.training and net[2].num_batches_tracked == 1  # the check traced without side effects
    net.eval()
    x, y = mnist[0]
    rec = bias_ratio.reconstruct(net, capture.client_update(net, x, y))
    assert rec.determined.all() and float(metrics.psnr(rec.images, x)) >= 100


def test_wrong_activation_model_is_not_determined(mnist):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(784, 64), nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x):
            return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))

    torch.manual_seed(0)
    net = Net().double()
    x, y = mnist[1]
    u = capture.client_update(net, x, y)
    rec = bias_ratio.reconstruct(net, u, layer="fc2")
    hidden = torch.relu(net.fc1(x.flatten(1)))
    assert rec.determined.all() and torch.allclose(rec.images, hidden, atol=1e-12)
    # a reconstruction that the update does not support: the check says so
    tampered = u.map(lambda n, g: g * 1.5 if n == "out.weight" else g)
    rec = bias_ratio.reconstruct(net, tampered, layer="fc2")
    assert not rec.determined.any() and not rec.diagnostics["consistent"]


def test_noise_is_allowed_for_when_given(mlp, mnist):
    x, y = mnist[2]
    u = capture.client_update(mlp, x, y)
    gen = torch.Generator().manual_seed(0)
    sigma = 1e-8
    noisy = u.map(lambda n, g: g + sigma * torch.randn(g.shape, generator=gen, dtype=g.dtype))
    assert not bias_ratio.reconstruct(mlp, noisy).determined.any()
    rec = bias_ratio.reconstruct(mlp, noisy, noise=sigma)
    assert rec.determined.all() and float(metrics.psnr(rec.images, x)) > 60


def test_clipped_update_is_determined_with_its_scale(mlp, mnist):
    x, y = mnist[3]
    u = capture.client_update(mlp, x, y).map(lambda n, g: 1e-3 * g)
    rec = bias_ratio.reconstruct(mlp, u)
    assert rec.determined.all() and abs(rec.diagnostics["check_scale"] - 1e-3) < 1e-12


def _functional_net():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 8)

        def forward(self, x):
            return self.fc1(x.flatten(1))

    torch.manual_seed(0)
    return Net().double()


@pytest.mark.parametrize("call, exc, fragment", [
    (lambda m, u: bias_ratio.reconstruct("m", u), TypeError, "nn.Module"),
    (lambda m, u: bias_ratio.reconstruct(m, "u"), TypeError, "Update"),
    (lambda m, u: bias_ratio.reconstruct(m, u, layer=1), TypeError, "module name"),
    (lambda m, u: bias_ratio.reconstruct(m, u, layer="act1"), TypeError, "not a Linear"),
    (lambda m, u: bias_ratio.reconstruct(m, u, layer="nope"), ValueError, "no layer named"),
    (lambda m, u: bias_ratio.reconstruct(m, u, rtol=0), ValueError, "rtol"),
    (lambda m, u: bias_ratio.reconstruct(m, u, noise=-1.0), ValueError, "noise"),
    (lambda m, u: bias_ratio.reconstruct(m, u.map(lambda n, g: g * float("nan"))), ValueError, "NaN"),
    (lambda m, u: bias_ratio.reconstruct(m, u.map(lambda n, g: 0 * g)), ValueError, "zero up to round-off"),
    (lambda m, u: bias_ratio.row_inputs(m, u, rtol=2), ValueError, "rtol"),
    (lambda m, u: bias_ratio.row_inputs("m", u), TypeError, "nn.Module"),
    (lambda m, u: bias_ratio.layer_input_gradient(m, "u"), TypeError, "Update"),
    (lambda m, u: bias_ratio.layer_input_gradient(m, u, layer="nope"), ValueError, "no layer named"),
    (lambda m, u: bias_ratio.reconstruct(models.MLP((1, 28, 28), (8,), bias=False, dtype=torch.float64), u),
     ValueError, "no bias"),
])
def test_bad_input_is_refused_clearly(mlp, mnist, call, exc, fragment):
    x, y = mnist[0]
    u = capture.client_update(mlp, x, y)
    with pytest.raises(exc) as info:
        call(mlp, u)
    assert fragment in str(info.value)


@pytest.mark.parametrize("activation, K, determined", [("relu", 2, False), ("sigmoid", 2, True),
                                                       ("relu", 5, True)])
def test_batch_of_one_image_is_certified_only_where_the_update_can_tell(activation, K, determined):
    """Two distinct samples in one linear region of a ReLU network with 2 logits give a rank-one
    update whose ratio is their blend (14 dB from each, seed 9): never determined, and then not
    even a batch of one image repeated can be told from it. Smooth activations or 3+ logits
    move the output-gradient direction, and a repeated image is certified."""
    torch.manual_seed(9)
    model = models.MLP((1, 6, 6), (4,), num_classes=K, activation=activation, dtype=torch.float32)
    gen = torch.Generator().manual_seed(10)
    x = torch.rand((2, 1, 6, 6), generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (2,), generator=gen)
    mixed = bias_ratio.reconstruct(model, capture.client_update(model, x.float(), y), allow_batch=True)
    assert not mixed.determined.any()
    same = capture.client_update(model, x[:1].expand(2, 1, 6, 6).float(), y[:1].expand(2))
    rec = bias_ratio.reconstruct(model, same, allow_batch=True)
    assert rec.diagnostics["direction_fixed"] is (not determined)
    assert bool(rec.determined.all()) is determined
    if determined:
        assert float(metrics.psnr(rec.images, x[:1])) >= 100


# ---- the rank-one fit: equal to the row ratio on clean updates, better under noise

def _least_squares(update, layer="fc1"):
    """The former estimate: bias-weighted least squares over rows with |db| > 1e-6 max|db|."""
    dW, db = update[f"{layer}.weight"], update[f"{layer}.bias"]
    rows = db.abs() > 1e-6 * db.abs().max()
    w, G = db[rows], dW[rows]
    return (w @ G) / (w @ w)


def _with_noise(update, rel, seed):
    """The update plus Gaussian noise of std ``rel * max|g|`` (max over every gradient), and that std."""
    sigma = rel * max(float(g.abs().max()) for g in update.gradients.values())
    gen = torch.Generator().manual_seed(seed)
    return update.map(lambda n, g: g + sigma * torch.randn(g.shape, generator=gen, dtype=g.dtype)), sigma


@pytest.mark.parametrize("name", sorted(data.OFFLINE))
def test_rank_one_fit_equals_least_squares_on_clean_updates(name):
    ds = data.load(name, 3, dtype=torch.float64)
    torch.manual_seed(0)
    model = models.MLP(ds.shape, (128,), dtype=torch.float64)
    for i in range(3):
        u = capture.client_update(model, *ds[i])
        rec = bias_ratio.reconstruct(model, u, labels=False)
        assert float((rec.images.flatten() - _least_squares(u)).abs().max()) < 1e-12
        assert rec.diagnostics["fit"] == "rank-one SVD" and rec.diagnostics["scale_determined"]
        assert rec.diagnostics["fit_method"] == "power iteration"
        sv = rec.diagnostics["singular_values"]
        assert len(sv) == 5 and sv[1] < 1e-12 * sv[0]
        assert float(rec.diagnostics["standard_error"].max()) < 1e-13


NOISE_GRID = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2)


@pytest.mark.parametrize("name, index, width", [("mnist", 0, 1024), ("lfw", 3, 512)])
def test_rank_one_fit_beats_least_squares_under_noise(name, index, width):
    """First layer of an MLP (the fit sees the image itself), noise std relative to max|g|.

    To first order in the noise both estimates have the per-pixel error
    ``sigma sqrt(1 + x^2) / ||db||``, so at 1e-4 and 1e-3 they agree within a dB either way
    (measured: -0.8 to +3 dB); above, noise on ``dl/db`` shrinks the least-squares image
    towards black (about 10 dB at 3e-2) while the rank-one fit stays above 20 dB.
    """
    ds = data.load(name, index + 1, dtype=torch.float64)
    x, y = ds[index]
    torch.manual_seed(0)
    model = models.MLP(ds.shape, (width,), dtype=torch.float64)
    u = capture.client_update(model, x, y)
    for rel in NOISE_GRID:
        noisy, sigma = _with_noise(u, rel, 1)
        old = float(metrics.psnr(_least_squares(noisy).reshape(x.shape), x))
        rec = bias_ratio.reconstruct(model, noisy, noise=sigma, labels=False)
        new = float(metrics.psnr(rec.images, x))
        assert rec.diagnostics["layer"] == "fc1" and rec.images.shape == x.shape
        if max(old, new) > 10:
            assert new >= old - 1.0, (rel, old, new)
        if rel >= 3e-3:
            assert new >= old + 3.0, (rel, old, new)
        # the first-order standard error predicts the error actually made
        rmse = float((rec.images - x).pow(2).mean().sqrt())
        predicted = float(rec.diagnostics["standard_error"].pow(2).mean().sqrt())
        assert 0.5 < rmse / predicted < 2.0, (rel, rmse, predicted)
        assert abs(rec.diagnostics["noise_level"] / sigma - 1) < 0.1
    assert new > 20, "3e-2 of max|g|: the digit or face is still recognisable"


def test_drowned_bias_gradient_gives_an_undetermined_direction(mlp, mnist):
    x, y = mnist[0]
    noisy, sigma = _with_noise(capture.client_update(mlp, x, y), 1.0, 0)
    for noise in (sigma, None):
        rec = bias_ratio.reconstruct(mlp, noisy, noise=noise)
        d = rec.diagnostics
        assert not rec.determined.any() and torch.isfinite(rec.images).all()
        if noise is not None:
            assert d["scale_determined"] is False and "not fixed" in d["fit_note"]
            assert d["noise_level"] >= sigma
            # the least-squares estimate over all rows, shrunk towards 0 by the noise on db
            db, dW = noisy["fc1.bias"], noisy["fc1.weight"]
            assert torch.allclose(rec.images.flatten(), (db @ dW) / (db @ db), rtol=0, atol=1e-12)


def test_noisy_single_sample_is_determined_only_with_the_noise_stated(mnist):
    torch.manual_seed(0)
    model = models.MLP((1, 28, 28), (1024,), dtype=torch.float64)
    x, y = mnist[2]
    noisy, sigma = _with_noise(capture.client_update(model, x, y), 1e-4, 3)
    assert not bias_ratio.reconstruct(model, noisy).determined.any()
    rec = bias_ratio.reconstruct(model, noisy, noise=sigma)
    assert rec.determined.all() and float(metrics.psnr(rec.images, x)) > 60
    # a noisy batch is never certified, whatever the fit
    batch, sigma = _with_noise(capture.client_update(model, mnist.images[:2], mnist.labels[:2]), 1e-4, 3)
    assert not bias_ratio.reconstruct(model, batch, noise=sigma, allow_batch=True).determined.any()


@pytest.mark.parametrize("gap", [0.0, 0.3, 0.97])
def test_top_singular_pair_matches_the_full_svd(gap):
    from leakutils.attacks import _rank_one

    gen = torch.Generator().manual_seed(0)
    Q1, _ = torch.linalg.qr(torch.randn(300, 3, generator=gen, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(201, 3, generator=gen, dtype=torch.float64))
    A = Q1 @ torch.diag(torch.tensor([1.0, gap, gap / 2], dtype=torch.float64)) @ Q2.T
    for M in (A, A.T.contiguous()):
        f = _rank_one.fit(M, 0.0, torch.finfo(torch.float64).eps, estimate_noise=False)
        _, S, Vh = torch.linalg.svd(M, full_matrices=False)
        v = Vh[0] * torch.sign(Vh[0, -1] * f.v[-1])
        assert float((f.v - v).abs().max()) < 1e-10 and float((f.singular_values - S).abs().max()) < 1e-12
        assert f.method == ("full SVD" if gap > 0.9 else "power iteration")
        assert f.scale_determined and torch.allclose(f.x, v[:-1] / v[-1], rtol=0, atol=1e-9 / float(v[-1].abs()))
        # a rank-one model's noise estimate is s_2 here: v_last = 0.013 is within it, not divided by
        if gap > 0:
            rough = _rank_one.fit(M, 0.0, torch.finfo(torch.float64).eps)
            assert not rough.scale_determined and torch.isfinite(rough.x).all()
