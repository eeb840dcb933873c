"""Forward equations with a box (leakutils.attacks.forward): exact and certified when the box pins the
image, never marked determined when it does not."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leakutils import capture, data, defences, metrics, models
from leakutils.attacks import forward


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", 40, dtype=torch.float64)


def _mlp(width, seed=0):
    torch.manual_seed(seed)
    return models.MLP((1, 8, 8), (width,), num_classes=10, dtype=torch.float64)


def test_soteria_withholding_the_whole_image_is_undone_on_a_wide_layer(digits):
    model = _mlp(256)
    x, y = digits.images[:1], digits.labels[:1]
    defended, kept = defences.soteria(model, x, y, prune_fraction=0.6, return_mask=True)
    assert int((~kept & (x.flatten() > 0)).sum()) > 0
    rec = forward.reconstruct(model, defended)
    d = rec.diagnostics
    assert bool(rec.determined.all()) and d["unique"] and d["consistent"]
    assert float(metrics.psnr(rec.images, x)[0]) > 250
    assert rec.labels.tolist() == y.tolist()
    assert d["read_pixels"] + d["unknown_pixels"] == 64 and d["active_units"] >= d["free_pixels"]


def test_a_narrow_layer_leaves_the_image_open_and_says_so(digits):
    model = _mlp(8)
    x, y = digits.images[1:2], digits.labels[1:2]
    rec = forward.reconstruct(model, defences.soteria(model, x, y, prune_fraction=0.6))
    # 8 units cannot pin 64 pixels: an estimate, nothing determined
    assert not rec.diagnostics["unique"] and not bool(rec.determined.any())
    assert rec.images.shape == (1, 1, 8, 8) and bool(((rec.images >= 0) & (rec.images <= 1)).all())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(2, 160), index=st.integers(0, 39),
       fraction=st.sampled_from([0.0, 0.1, 0.3, 0.6, 0.9]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_determined_means_exact(digits, seed, width, index, fraction, dtype):
    model = _mlp(width, seed).to(dtype)
    x, y = digits.images[index:index + 1].to(dtype), digits.labels[index:index + 1]
    update = defences.soteria(model, x, y, prune_fraction=fraction) if fraction else capture.client_update(model, x, y)
    rec = forward.reconstruct(model, update)
    assert bool(((rec.images >= 0) & (rec.images <= 1)).all())
    if bool(rec.determined.any()):
        # a certified image is the client's, to the precision of the client's dtype
        tol = 1e-9 if dtype == torch.float64 else 2e-3
        assert float((rec.images - x.double()).abs().max()) < tol


def test_forward_refuses_what_it_cannot_read(digits):
    model = _mlp(32)
    x, y = digits.images[:2], digits.labels[:2]
    with pytest.raises(ValueError, match="averages 2 samples"):
        forward.reconstruct(model, capture.client_update(model, x, y))
    one = capture.client_update(model, x[:1], y[:1])
    with pytest.raises(ValueError, match="lo < hi"):
        forward.reconstruct(model, one, bounds=(1.0, 0.0))
    with pytest.raises(TypeError, match="bounds must be two numbers"):
        forward.reconstruct(model, one, bounds=1.0)
    torch.manual_seed(0)
    sig = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Sigmoid(), nn.Linear(16, 10)).double()
    with pytest.raises(ValueError, match="must be followed by nn.ReLU"):
        forward.reconstruct(sig, capture.client_update(sig, x[:1], y[:1]))


def test_a_float32_client_is_read_to_float32_precision(digits):
    model = _mlp(256).float()
    x, y = digits.images[2:3].float(), digits.labels[2:3]
    rec = forward.reconstruct(model, defences.soteria(model, x, y, prune_fraction=0.6))
    assert bool(rec.determined.all())
    assert float((rec.images - x.double()).abs().max()) < 1e-4


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.sampled_from([32, 128, 256]), index=st.integers(0, 39),
       noise=st.sampled_from([1e-12, 1e-9, 1e-6, 1e-3]))
def test_a_noisy_update_is_never_certified_wrong(digits, seed, width, index, noise):
    model = _mlp(width, seed)
    x, y = digits.images[index:index + 1], digits.labels[index:index + 1]
    defended = defences.soteria(model, x, y, prune_fraction=0.6)
    noisy = defences.gaussian_noise(defended, noise, relative=True, seed=seed)
    rec = forward.reconstruct(model, noisy)
    if bool(rec.determined.any()):
        # certified only when the noise is too small to move the image visibly
        assert float((rec.images - x).abs().max()) < 1e-4
