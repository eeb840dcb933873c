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
    return imprint.malicious_model(net, mnist.images[3000:].to(dtype), bins)


def test_thresholds_split_public_data_into_equal_bins(mnist):
    public = mnist.images[3000:]
    cuts = imprint.thresholds(public, 10)
    s = public.flatten(1).mean(1)
    counts = torch.bincount(torch.bucketize(s, cuts, right=True) - 1, minlength=10)
    assert cuts.shape == (10,) and bool((cuts[1:] > cuts[:-1]).all()) and float(cuts[0]) < float(s.min())
    assert int(counts.min()) >= 195 and int(counts.max()) <= 205


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
    assert int(sure.sum()) == alone >= 5
    scores = metrics.compare(rec.images[sure], x)
    assert float(scores.psnr.min()) > 250
    assert sorted(rec.labels[sure].tolist()) == sorted(y[torch.bincount(bins, minlength=64)[bins] == 1].tolist())


def _alone(model, x):
    """How many of the batch are alone in a bin of the block, from the statistic itself."""
    block = model[0]
    which = block.bin_index(x)
    inside = (which >= 0) & (which < block.bins)
    counts = torch.bincount(which[inside], minlength=block.bins)
    return int((counts[which[inside]] == 1).sum())


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 256), bins=st.sampled_from([4, 16, 64, 256, 1024]), start=st.integers(0, 2744),
       dtype=st.sampled_from([torch.float32, torch.float64]), sparse=st.booleans())
def test_marked_samples_are_exact_and_mixtures_are_never_marked(mnist, m, bins, start, dtype, sparse):
    torch.manual_seed(0)
    net = models.MLP((1, 28, 28), (64,), dtype=dtype)
    model = imprint.malicious_model(net, mnist.images[3000:].to(dtype), bins, sparse=sparse)
    x, y = mnist.images[start:start + m].to(dtype), mnist.labels[start:start + m]
    rec = imprint.reconstruct(model, capture.client_update(model, x, y))
    sure = rec.determined.flatten(1).all(dim=1)
    alone = _alone(model, x)
    assert int(sure.sum()) <= alone
    if sure.any():
        psnr = metrics.compare(rec.images[sure], x.double()).psnr
        assert float(psnr.min()) >= (60 if dtype == torch.float32 else 100)
        assert set(rec.labels[sure].tolist()) <= set(y.tolist())
    if dtype == torch.float64:
        assert int(sure.sum()) == alone


def test_sparse_block_keeps_one_bin_per_unit(mnist):
    model = _malicious(mnist, 64)
    sparse = imprint.malicious_model(model[1], mnist.images[3000:], 64, sparse=True)
    x = mnist.images[:200]
    units = sparse[0].units(x)
    # a sample's gradient reaches one unit only: the one whose slope is non-zero
    slope = ((sparse[0].imprint(x.flatten(1)) > 0) & (sparse[0].imprint(x.flatten(1)) < 1)).sum(1)
    assert sparse[0].cuts.shape == (65,) and bool((slope <= 1).all()) and int((slope == 1).sum()) >= 195
    assert bool((units >= 0).all()) and bool((units <= 1).all())


def test_secure_aggregation_of_many_clients_still_gives_the_lone_samples(mnist):
    from leakutils import defences
    model = _malicious(mnist, 256)
    x, y = mnist.images[:80], mnist.labels[:80]
    # ten clients of eight digits; the server decodes only their average
    aggregate = defences.secure_aggregation(defences.client_updates(model, x, y, 10))
    rec = imprint.reconstruct(model, aggregate)
    sure = rec.determined.flatten(1).all(dim=1)
    assert aggregate.batch_size == 80 and int(sure.sum()) == _alone(model, x) >= 50
    # each marked image is one of the 80 digits, whichever client held it
    nearest = (rec.images[sure].flatten(1)[:, None] - x.flatten(1)[None]).pow(2).sum(-1).argmin(dim=1)
    assert float(metrics.compare(rec.images[sure], x[nearest]).psnr.min()) > 250


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


@pytest.mark.parametrize("sparse", [False, True])
def test_turned_rows_never_give_a_wrong_mark(mnist, sparse):
    # a server that turns both layers' rows to pass a client's parallel-row check
    model = _malicious(mnist, 256)
    model = imprint.malicious_model(model[1], mnist.images[3000:], 256, sparse=sparse)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w, spread = model[0].imprint.weight, model[0].spread.weight
        w += 0.1 * w.norm(dim=1, keepdim=True) * torch.randn(w.shape, generator=g, dtype=w.dtype) / 28
        spread += 0.1 * spread * torch.randn(spread.shape, generator=g, dtype=spread.dtype)
    x, y = mnist.images[:64], mnist.labels[:64]
    rec = imprint.reconstruct(model, capture.client_update(model, x, y))
    sure = rec.determined.flatten(1).all(dim=1)
    if sure.any():
        assert float(metrics.compare(rec.images[sure], x).psnr.min()) > 250
    # the sparse block's units stay separate bins; the cumulative differences no longer cancel
    assert int(sure.sum()) >= 30 if sparse else int(sure.sum()) <= 3
