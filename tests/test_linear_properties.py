"""Property tests of the bias ratio: never confidently wrong, exact on clean single samples.

Random MLP widths, seeds, batch sizes 1..8, classes 2..10, float32 and float64, and noise
of 0 or 1e-12..1e-2 of the largest gradient entry, known to the attacker or not.
"""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leakutils import capture, metrics, models
from leakutils.attacks import bias_ratio

SHAPE = (1, 6, 6)
#: Slack between the error predicted from the noise and the error accepted.
ERROR_SLACK = 10.0


def _case(seed, widths, M, K, dtype, activation="relu", distinct=True):
    torch.manual_seed(seed)
    model = models.MLP(SHAPE, widths, num_classes=K, activation=activation, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((M, *SHAPE), generator=gen, dtype=torch.float64)
    if not distinct:
        x = x[:1].expand(M, *SHAPE).clone()
    y = torch.randint(0, K, (M,), generator=gen)
    if not distinct:
        y = y[:1].expand(M).clone()
    return model, x, y, capture.client_update(model, x.to(dtype), y)


def _noisy(u, rel, seed):
    peak = max(float(g.abs().max()) for g in u.gradients.values())
    sigma = rel * peak
    gen = torch.Generator().manual_seed(seed + 2)
    return u.map(lambda n, g: g + sigma * torch.randn(g.shape, generator=gen, dtype=torch.float64)
                 .to(g.dtype)), sigma


def _attack(model, u, noise):
    try:
        return bias_ratio.reconstruct(model, u, allow_batch=True, noise=noise)
    except ValueError as err:  # a refusal is honest; only "nothing carries the input" is expected
        assert "zero up to round-off" in str(err)
        return None


noise_levels = st.one_of(st.just(0.0), st.floats(-12, -2).map(lambda e: 10.0 ** e))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(4, 48), depth=st.integers(1, 2),
       M=st.integers(1, 8), K=st.integers(2, 10), dtype=st.sampled_from([torch.float32, torch.float64]),
       rel=noise_levels, known=st.booleans(),
       activation=st.sampled_from(["relu", "sigmoid", "tanh"]))
def test_never_confidently_wrong(seed, width, depth, M, K, dtype, rel, known, activation):
    model, x, y, u = _case(seed, (width,) * depth, M, K, dtype, activation)
    u, sigma = _noisy(u, rel, seed) if rel > 0 else (u, 0.0)
    rec = _attack(model, u, sigma if known else None)
    if rec is None or not rec.determined.any():
        return
    assert rec.determined.all()
    assert M == 1, f"a mixture of {M} distinct samples was marked determined"
    # error of the bias ratio: noise (or round-off) per entry over the norm of the bias gradient
    name = rec.diagnostics["layer"]
    db = u[f"{name}.bias"].double()[rec.diagnostics["rows_used"]]
    dW = u[f"{name}.weight"].double()
    roundoff = 64 * torch.finfo(dtype).eps * float(dW.abs().max())
    error = ERROR_SLACK * (sigma + roundoff) / float(db.norm())
    threshold = -20 * math.log10(error)
    psnr = float(metrics.psnr(rec.images, x))
    assert psnr >= min(threshold, 100.0), (psnr, threshold)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(8, 64), K=st.integers(2, 10),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       activation=st.sampled_from(["sigmoid", "tanh"]))
def test_exact_and_determined_on_clean_single_samples(seed, width, K, dtype, activation):
    # smooth activations: no unit is dead, so a row always carries the input
    model, x, y, u = _case(seed, (width,), 1, K, dtype, activation)
    rec = bias_ratio.reconstruct(model, u)
    assert rec.determined.all() and rec.diagnostics["consistent"]
    psnr = float(metrics.psnr(rec.images, x))
    assert psnr >= (100.0 if dtype == torch.float32 else 250.0)
    assert rec.labels.tolist() == y.tolist()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(8, 48), M=st.integers(2, 8), K=st.integers(2, 10))
def test_identical_samples_are_one_sample(seed, width, M, K):
    model, x, y, u = _case(seed, (width,), M, K, torch.float64, "sigmoid", distinct=False)
    rec = bias_ratio.reconstruct(model, u, allow_batch=True)
    assert rec.determined.all() and float(metrics.psnr(rec.images, x[:1])) >= 100
