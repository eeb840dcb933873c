"""Property tests of the conv attack: never confidently wrong, exact where the rows suffice.

Random small CNNs (1-2 conv layers, 1-16 filters, kernel 3-5, stride 1-3, activations of
Chapter 2's table, float32 or float64 clients, gradient noise 0 or 1e-12..1e-2 of the
largest entry, 12x12 or 16x16 inputs).
"""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakutils import capture, metrics, models
from leakutils.attacks import conv

ACTIVATIONS = ("sigmoid", "tanh", "leaky_relu", "elu", "softplus", "arctan", "relu")
INVERTIBLE = ("sigmoid", "tanh", "leaky_relu", "elu", "arctan")

#: A determined pixel may be off by at most ERROR_FACTOR * (noise + eps of the client's dtype)
#: times the product of the layer systems' condition numbers (a relative error of the rows
#: reaches the solution multiplied by at most the condition number); the noise is relative
#: to the largest gradient entry, so smaller entries carry more (measured: up to about 40x).
ERROR_FACTOR = 1e3


def _network(data, layers, dtype):
    size = data.draw(st.sampled_from((12, 16)), label="size")
    specs = []
    for _ in range(layers):
        k = data.draw(st.integers(3, 5), label="kernel")
        specs.append((data.draw(st.integers(1, 16), label="filters"), k, data.draw(st.integers(1, 3), label="stride"),
                      k // 2, data.draw(st.sampled_from(ACTIVATIONS), label="activation")))
    net = models.ConvNet(1, size, specs, num_classes=10, dtype=dtype)
    return models.init_weights(net, "default", seed=data.draw(st.integers(0, 10 ** 6), label="seed")), size


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), layers=st.integers(1, 2), double=st.booleans(),
       noise=st.one_of(st.just(0.0), st.floats(-12, -2).map(lambda e: 10.0 ** e)))
def test_determined_pixels_are_close_to_the_truth(data, layers, double, noise):
    dtype = torch.float64 if double else torch.float32
    net, size = _network(data, layers, dtype)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 10 ** 6), label="image seed"))
    x = torch.rand(1, 1, size, size, generator=gen, dtype=torch.float64)
    u = capture.client_update(net, x.to(dtype), torch.tensor([data.draw(st.integers(0, 9), label="label")]))
    if noise:
        u = u.map(lambda n, g: g + noise * g.abs().max() * torch.randn(g.shape, generator=gen, dtype=g.dtype))
    try:
        rec = conv.reconstruct(net, u)
    except ValueError as err:  # a zero gradient carries nothing: refused with a clear error
        assert "zero" in str(err)
        return
    det = rec.determined
    assert rec.images.dtype == torch.float64 and torch.isfinite(rec.images).all()
    if det.any():
        assert rec.diagnostics["check"]["consistent"]
        err = float((rec.images[det] - x[det]).abs().max())
        kappa = math.prod(max(1.0, L["condition"] or 1.0) for L in rec.diagnostics["layers"])
        assert err <= ERROR_FACTOR * (noise + float(torch.finfo(dtype).eps)) * kappa, (err, rec.diagnostics["layers"])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), layers=st.integers(1, 2))
def test_clean_float64_with_enough_rows_is_exact(data, layers):
    # stride 1, as many filters as input channels and an invertible activation: at least
    # C H W forward rows for the C H W pixels of every layer
    size = data.draw(st.sampled_from((12, 16)), label="size")
    specs, channels = [], 1
    for _ in range(layers):
        k = data.draw(st.sampled_from((3, 5)), label="kernel")
        channels = data.draw(st.integers(channels, 16), label="filters")
        specs.append((channels, k, 1, k // 2, data.draw(st.sampled_from(INVERTIBLE), label="activation")))
    net = models.init_weights(models.ConvNet(1, size, specs, dtype=torch.float64), "default",
                              seed=data.draw(st.integers(0, 10 ** 6), label="seed"))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 10 ** 6), label="image seed"))
    x = torch.rand(1, 1, size, size, generator=gen, dtype=torch.float64)
    rec = conv.reconstruct(net, capture.client_update(net, x, torch.tensor([1])))
    assert rec.determined.all(), rec.diagnostics["check"]
    assert float(metrics.psnr(rec.images, x)[0]) >= 100 or math.isinf(float(metrics.psnr(rec.images, x)[0]))
