import math

import numpy as np
import pytest
import torch

from leakutils import metrics
from leakutils.core import Reconstruction


def test_psnr_uses_the_data_range():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.full((2, 1, 4, 4), 0.1)
    assert torch.allclose(metrics.mse(a, b), torch.full((2,), 0.01, dtype=torch.float64))
    assert torch.allclose(metrics.psnr(a, b), torch.full((2,), 20.0, dtype=torch.float64))
    # The R-CONV code's convention (range 255 on [0, 1] images) adds 48.13 dB.
    gap = float(metrics.psnr(a, b, data_range=255.0)[0] - metrics.psnr(a, b)[0])
    assert abs(gap - 20 * math.log10(255)) < 1e-9 and abs(gap - 48.13) < 0.01


def test_psnr_is_infinite_for_identical_images():
    x = torch.rand(3, 1, 5, 5)
    assert torch.isinf(metrics.psnr(x, x.clone())).all()


def test_ssim_identical_and_different(mnist):
    x = mnist.images[:3]
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert (metrics.ssim(x, torch.roll(x, 1, 0)) < 0.9).all()


def test_ssim_small_images_and_colour():
    assert metrics.ssim(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)).shape == (2,)
    assert metrics.ssim(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)).shape == (1,)


def test_label_accuracy_is_a_multiset_score():
    assert metrics.label_accuracy([3], [3]) == 1.0
    assert metrics.label_accuracy([3, 7], [3, 3, 7]) == pytest.approx(2 / 3)
    assert metrics.label_accuracy(torch.tensor([1]), torch.tensor([2])) == 0.0


def test_match_recovers_a_permutation(mnist):
    x = mnist.images[:6]
    perm = torch.tensor([4, 0, 5, 1, 3, 2])
    rec_idx, true_idx = metrics.match(x[perm] + 1e-3, x)
    assert np.array_equal(true_idx, np.arange(6)) and torch.equal(perm[rec_idx], torch.arange(6))


def test_compare_matches_before_scoring(mnist):
    x, y = mnist.images[:4], mnist.labels[:4]
    rec = Reconstruction(images=x.flip(0), labels=y.flip(0), determined=torch.ones_like(x, dtype=torch.bool))
    s = metrics.compare(rec, x, y)
    assert torch.isinf(s.psnr).all() and s.label_accuracy == 1.0 and s.mean_ssim == pytest.approx(1.0)
    unmatched = metrics.compare(rec.images, x, match_order=False)
    assert unmatched.mean_psnr < 30
    assert "PSNR" in str(s) and set(s.as_dict()) >= {"mse", "psnr_db", "ssim"}


def test_compare_fewer_reconstructions_than_samples(mnist):
    s = metrics.compare(mnist.images[2:3], mnist.images[:5])
    assert s.true_idx.tolist() == [2] and math.isinf(s.min_psnr)


@pytest.mark.parametrize("call, err, match", [
    (lambda: metrics.mse(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, "same shape"),
    (lambda: metrics.mse(torch.zeros(3), torch.zeros(3)), ValueError, "batch axis"),
    (lambda: metrics.mse(np.zeros((2, 2)), torch.zeros(2, 2)), TypeError, "torch tensors"),
    (lambda: metrics.mse(torch.full((1, 2), float("nan")), torch.zeros(1, 2)), ValueError, "NaN"),
    (lambda: metrics.psnr(torch.zeros(1, 2), torch.zeros(1, 2), data_range=0), ValueError, "data_range"),
    (lambda: metrics.ssim(torch.zeros(1, 4), torch.zeros(1, 4)), ValueError, r"\(B, C, H, W\)"),
    (lambda: metrics.ssim(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)), ValueError, "3x3"),
    (lambda: metrics.label_accuracy([1], []), ValueError, "empty"),
    (lambda: metrics.label_accuracy([[1]], [[1]]), ValueError, "one-dimensional"),
    (lambda: metrics.match(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, "same shape"),
    (lambda: metrics.match(torch.zeros(0, 3), torch.zeros(2, 3)), ValueError, "empty"),
    (lambda: metrics.match([1], torch.zeros(2, 3)), TypeError, "tensors"),
    (lambda: metrics.compare("img", torch.zeros(1, 3)), TypeError, "Reconstruction"),
    (lambda: metrics.compare(torch.zeros(1, 3), [0.0]), TypeError, "images must be a torch tensor"),
    (lambda: metrics.compare(torch.zeros(1, 3), torch.zeros(1, 4)), ValueError, "differ in shape"),
    (lambda: metrics.compare(torch.zeros(1, 3), torch.zeros(2, 3), match_order=False), ValueError, "same batch"),
    (lambda: metrics.compare(torch.zeros(1, 3), torch.zeros(1, 3), [1]), ValueError, "recovered none"),
])
def test_bad_inputs(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_uint8_against_float_and_0_255_range_are_refused():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    x255 = (x * 255).round()
    with pytest.raises(TypeError, match="data_range"):
        metrics.psnr(x, x255.to(torch.uint8))
    with pytest.raises(ValueError, match="data_range=255"):
        metrics.psnr(x255 + 1, x255)
    with pytest.raises(ValueError, match="data_range=255"):
        metrics.compare(x255 + 1, x255)
    assert float(metrics.psnr(x255 + 1, x255, data_range=255).min()) == pytest.approx(48.13, abs=0.01)
    # a reconstruction (first argument) may leave the range: it is not clipped
    assert torch.isfinite(metrics.psnr(x * 1.5, x)).all()
    assert float(metrics.psnr(x255.clamp(max=254).to(torch.uint8), (x255.clamp(max=254) + 1).to(torch.uint8), 255)[0]) == pytest.approx(48.13, abs=0.01)


def test_three_dimensional_batches_are_refused_not_nan():
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(ValueError, match="unsqueeze"):
        metrics.compare(x, x)
    with pytest.raises(ValueError, match="unsqueeze"):
        metrics.ssim(x, x)
    s = metrics.compare(x.unsqueeze(1), x.unsqueeze(1))
    assert s.mean_ssim == pytest.approx(1.0)


def test_medians_next_to_means():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rec = x.clone()
    rec[0] += 0.1
    rec[1] += 0.01
    s = metrics.compare(rec, x, match_order=False)
    assert s.median_psnr == float("inf") and s.mean_psnr == float("inf")
    rec[2] += 0.001
    s = metrics.compare(rec, x, match_order=False)
    assert s.median_psnr == pytest.approx(50.0) and s.median_mse == pytest.approx(5.05e-5)
    assert 0 < s.median_ssim <= 1 and "median_psnr_db" in s.as_dict()
    feats = metrics.compare(rec.flatten(1), x.flatten(1), match_order=False)
    assert "SSIM" not in str(feats)


@pytest.mark.parametrize("call, exc, fragment", [
    (lambda x: metrics.mse(x.numpy(), x), TypeError, "torch tensors"),
    (lambda x: metrics.mse(x, x[:1]), ValueError, "same shape"),
    (lambda x: metrics.mse(x[0, 0, 0], x[0, 0, 0]), ValueError, "batch axis"),
    (lambda x: metrics.mse(x[:0], x[:0]), ValueError, "empty"),
    (lambda x: metrics.mse(x * float("nan"), x), ValueError, "NaN"),
    (lambda x: metrics.mse(x, (x * 255).to(torch.uint8)), TypeError, "integer"),
    (lambda x: metrics.psnr(x, x, data_range=0), ValueError, "data_range"),
    (lambda x: metrics.psnr(x, x * 255), ValueError, "data_range=255"),
    (lambda x: metrics.psnr(x, x - 0.5), ValueError, "outside [0, 1]"),
    (lambda x: metrics.ssim(x, x, data_range=-1), ValueError, "data_range"),
    (lambda x: metrics.ssim(x[:, :, :2, :2], x[:, :, :2, :2]), ValueError, "3x3"),
    (lambda x: metrics.ssim(x, x, gaussian=True), ValueError, "11x11"),
    (lambda x: metrics.ssim(x[:, 0], x[:, 0]), ValueError, "unsqueeze"),
    (lambda x: metrics.label_accuracy([[1]], [1]), ValueError, "one-dimensional"),
    (lambda x: metrics.label_accuracy([1], []), ValueError, "empty"),
    (lambda x: metrics.match(x, x[:, :, :4]), ValueError, "same shape"),
    (lambda x: metrics.match(x[:0], x), ValueError, "empty"),
    (lambda x: metrics.match(x.tolist(), x), TypeError, "torch tensors"),
    (lambda x: metrics.compare("rec", x), TypeError, "Reconstruction or a tensor"),
    (lambda x: metrics.compare(x, x.numpy()), TypeError, "torch tensor"),
    (lambda x: metrics.compare(x, x[:, :, :4]), ValueError, "differ in shape"),
    (lambda x: metrics.compare(x, x, [1, 2]), ValueError, "recovered none"),
    (lambda x: metrics.compare(x[:1], x, match_order=False), ValueError, "same batch size"),
])
def test_bad_input_is_refused_clearly(call, exc, fragment):
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(exc) as info:
        call(x)
    assert fragment in str(info.value)


def test_an_empty_reconstruction_scores_no_pair():
    truth = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nothing = torch.empty(0, 1, 4, 4, dtype=torch.float64)
    scores = metrics.compare(nothing, truth)
    assert scores.psnr.numel() == 0 and scores.as_dict()["pairs"] == 0
    assert math.isnan(scores.median_psnr) and math.isnan(scores.min_psnr) and math.isnan(scores.mean_psnr)
    assert str(scores) == "nothing matched: the reconstruction is empty"
    refused = Reconstruction(nothing, None, torch.zeros_like(nothing, dtype=torch.bool))
    assert metrics.compare(refused, truth, labels=torch.tensor([1, 2, 3])).label_accuracy == 0.0
    with pytest.raises(ValueError, match="the true batch is empty"):
        metrics.compare(truth, truth[:0])
