"""The bias ratio of a pruned update (leakutils.attacks.pruned): exact where it says so.

Hand cases, real digits under pruning, and a property test: over random widths, seeds,
classes, activations, dtypes, images with dark pixels, and defences (pruning 0..99.9%,
quantisation, noise), every pixel marked determined equals the true pixel to round-off.
"""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leakutils import capture, data, defences, metrics, models
from leakutils.attacks import pruned
from leakutils.core import Update

SHAPE = (1, 6, 6)


def _hand_net():
    # one linear layer of 2 units on a 2x2 image, then 2 logits
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)).double()


def test_hand_case_reads_surviving_entries():
    net = _hand_net()
    # the shared layer: rows delta_m x with x = (0.25, 0.5, 0, 1), delta = (0.4, -0.2), entries pruned
    dW = torch.tensor([[0.1, 0.0, 0.0, 0.4], [0.0, -0.1, 0.0, -0.2]], dtype=torch.float64)
    db = torch.tensor([0.4, -0.2], dtype=torch.float64)
    grads = {"1.weight": dW, "1.bias": db}
    upd = Update(grads, 1, 0.0, (1, 2, 2))
    rec = pruned.reconstruct(net, upd, layer="1")
    assert rec.images.flatten().tolist() == [0.25, 0.5, 0.0, 1.0]
    # pixel 3 has no surviving entry; the others come from the strongest row that kept them
    assert rec.diagnostics["pixels_read"] == 3 and rec.diagnostics["rank_one"]
    # the layer is not the model's first (Flatten has no parameters, so it is): whole-update check runs
    assert rec.diagnostics["reproduces_update"] is False  # the other layer's gradients are not given


def test_mnist_digit_exact_under_pruning():
    mnist = data.load("mnist", dtype=torch.float64)
    x, y = mnist[0]
    torch.manual_seed(0)
    net = models.MLP((1, 28, 28), (256,), dtype=torch.float64)
    update = capture.client_update(net, x, y)
    for fraction in (0.0, 0.5, 0.9):
        rec = pruned.reconstruct(net, defences.prune(update, fraction))
        assert rec.diagnostics["consistent"], fraction
        assert float(metrics.psnr(rec.images, x)[0]) > 250
        # every bright pixel is read, and read exactly
        bright = x.flatten() > 0
        assert bool(rec.determined.flatten()[bright].all())
        assert rec.labels.tolist() == y.tolist()


def test_heavy_pruning_is_not_certified_but_bounded():
    mnist = data.load("mnist", dtype=torch.float64)
    x, y = mnist[0]
    torch.manual_seed(0)
    net = models.MLP((1, 28, 28), (256,), dtype=torch.float64)
    rec = pruned.reconstruct(net, defences.prune(capture.client_update(net, x, y), 0.999))
    # too few pixels read for the image to reproduce the whole update
    assert not rec.determined.any() and not rec.diagnostics["consistent"]
    bound, pixels = rec.diagnostics["bound"], x.flatten()
    unread = bound > 0
    assert int(unread.sum()) > 0 and bool((pixels[unread] <= bound[unread]).all()), "the bound holds"


def test_sign_quantisation_is_rank_one_but_not_certified():
    torch.manual_seed(0)
    net = models.MLP(SHAPE, (32,), dtype=torch.float64)
    x = torch.rand((1, *SHAPE), dtype=torch.float64)
    upd = defences.quantise(capture.client_update(net, x, torch.tensor([3])), "sign")
    rec = pruned.reconstruct(net, upd)
    assert rec.diagnostics["rank_one"] and not rec.diagnostics["reproduces_update"]
    assert not rec.determined.any()


def _defended(update, kind, value, seed):
    if kind == "prune":
        return defences.prune(update, value)
    if kind == "quantise":
        return defences.quantise(update, value)
    if kind == "noise":
        return defences.gaussian_noise(update, value, relative=True, seed=seed)
    return update


defence = st.one_of(
    st.tuples(st.just("none"), st.just(None)),
    st.tuples(st.just("prune"), st.floats(0.0, 0.999)),
    st.tuples(st.just("quantise"), st.sampled_from(["float16", "int8", "sign"])),
    st.tuples(st.just("noise"), st.floats(-12, -3).map(lambda e: 10.0 ** e)),
)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(4, 48), K=st.integers(2, 10),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       activation=st.sampled_from(["relu", "sigmoid", "tanh"]), dark=st.floats(0.0, 0.8),
       defended=defence)
def test_determined_pixels_are_exact(seed, width, K, dtype, activation, dark, defended):
    torch.manual_seed(seed)
    net = models.MLP(SHAPE, (width,), num_classes=K, activation=activation, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((1, *SHAPE), generator=gen, dtype=torch.float64)
    # dark pixels, as on a digit's background
    x = torch.where(torch.rand(x.shape, generator=gen, dtype=torch.float64) < dark, torch.zeros_like(x), x)
    y = torch.randint(0, K, (1,), generator=gen)
    update = _defended(capture.client_update(net, x.to(dtype), y), *defended, seed)
    try:
        rec = pruned.reconstruct(net, update)
    except ValueError as err:
        # every bias gradient zero (dead units, pruned away): an honest refusal
        assert "every bias gradient" in str(err)
        return
    if not rec.determined.any():
        return
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    err = (rec.images - x)[rec.determined].abs().max()
    assert float(err) <= tol, (float(err), defended)
