"""The imprint block of a malicious server (Fowl et al. 2022) and its attack."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakutils import capture, data, metrics, models
from leakutils.attacks import imprint


@pytest.fixture(scope="module")
def mnist():
    return data.load("mnist", dtype=torch.float64)


def _malicious(mnist, bins, dtype=torch.float64):
    torch.manual_seed(0)
    net = models.MLP((1, 28, 28), (64,), dtype=dtype)
    # thresholds from digits the clients do not hold
    return imprint.malicious_model(net, mnist.images[4000:].to(dtype), bins)


def test_thresholds_split_public_data_into_equal_bins(mnist):
    public = mnist.images[4000:]
    cuts = imprint.thresholds(public, 10)
    s = public.flatten(1).mean(1)
    counts = torch.bincount(torch.bucketize(s, cuts, right=True) - 1, minlength=10)
    assert cuts.shape == (10,) and bool((cuts[1:] > cuts[:-1]).all()) and float(cuts[0]) < float(s.min())
    assert int(counts.min()) >= 95 and int(counts.max()) <= 105


def test_a_batch_of_eight_in_64_bins_comes_back_exactly(mnist):
    model = _malicious(mnist, 64)
    x, y = mnist.images[:8], mnist.labels[:8]
    rec = imprint.reconstruct(model, capture.client_update(model, x, y))
    sure = rec.determined.flatten(1).all(dim=1)
    # which digits are alone in their bin, from the statistic itself
    s = x.flatten(1).mean(1)
    cuts = model[0].imprint.bias.detach().neg()
    bins = torch.bucketize(s, cuts, right=True) - 1
    alone = int((torch.bincount(bins, minlength=64)[bins] == 1).sum())
    assert int(sure.sum()) == alone >= 6
    scores = metrics.compare(rec.images[sure], x)
    assert float(scores.psnr.min()) > 250
    assert sorted(rec.labels[sure].tolist()) == sorted(y[torch.bincount(bins, minlength=64)[bins] == 1].tolist())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 48), bins=st.sampled_from([4, 16, 64, 256]), start=st.integers(0, 3900),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_marked_samples_are_exact_and_mixtures_are_never_marked(mnist, m, bins, start, dtype):
    model = _malicious(mnist, bins, dtype)
    x, y = mnist.images[start:start + m], mnist.labels[start:start + m]
    rec = imprint.reconstruct(model, capture.client_update(model, x.to(dtype), y))
    sure = rec.determined.flatten(1).all(dim=1)
    s = x.to(dtype).double().flatten(1) @ model[0].imprint.weight[0].detach().double()
    cuts = model[0].imprint.bias.detach().neg().double()
    which = torch.bucketize(s, cuts, right=True) - 1
    alone = int((torch.bincount(which, minlength=bins)[which] == 1).sum())
    assert int(sure.sum()) <= alone
    if sure.any():
        psnr = metrics.compare(rec.images[sure], x).psnr
        assert float(psnr.min()) >= (60 if dtype == torch.float32 else 100)
    if dtype == torch.float64:
        assert int(sure.sum()) == alone


def test_expected_alone_matches_the_count_on_average(mnist):
    model = _malicious(mnist, 32)
    m, counts = 16, []
    for b in range(30):
        x, y = mnist.images[b * m:(b + 1) * m], mnist.labels[b * m:(b + 1) * m]
        counts.append(imprint.reconstruct(model, capture.client_update(model, x, y)).diagnostics["recovered"])
    mean = sum(counts) / len(counts)
    assert abs(mean - imprint.expected_alone(m, 32)) < 2.0, (mean, imprint.expected_alone(m, 32))


def test_bad_input_is_named(mnist):
    with pytest.raises(ValueError, match="ImprintBlock"):
        imprint.reconstruct(models.MLP((1, 28, 28), (8,)), capture.client_update(
            models.MLP((1, 28, 28), (8,)), mnist.images[:1].float(), mnist.labels[:1]))
    with pytest.raises(ValueError, match="strictly increasing"):
        imprint.ImprintBlock((1, 2, 2), torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match="bins must be an integer"):
        imprint.thresholds(mnist.images[:10], 1)
