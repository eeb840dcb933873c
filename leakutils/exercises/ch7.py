"""Checks of Chapter 7's exercises (defences, measured)."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ._base import array, boolean, close, exercise, keyed, mnist, number, seeded_mlp, wrong

__all__ = ["DP_CLIP", "DP_SIGMA", "DP_DELTA", "FACTORS", "WIDTH"]

#: Exercise 7.1: clipping norm C, noise multiplier sigma and delta of the one DP-SGD step.
DP_CLIP, DP_SIGMA, DP_DELTA = 1.0, 2.0, 1e-5

#: Exercise 7.2: the multiples of the predicted sigma at which the fit is measured.
FACTORS = (0.5, 1.0, 2.0)

#: Exercises 7.2 and 7.3: the chapter's 784-WIDTH-10 network (seed 0) and digit mnist[0].
WIDTH = 1024


@exercise("ch7-epsilon-by-hand", "7.1",
          answers=("sensitivity", "epsilon", "bound_valid", "sigma_for_1"))
def epsilon_by_hand(sensitivity, epsilon, bound_valid, sigma_for_1) -> None:
    """Exercise 7.1: the classical Gaussian-mechanism bound for one DP-SGD step.

    Parameters
    ----------
    sensitivity : float
        The sensitivity of the clipped sum (C = 1).
    epsilon : float
        ``sqrt(2 ln(1.25 / delta)) / sigma`` for sigma = 2, delta = 1e-5.
    bound_valid : bool
        Whether the classical bound is proven at that epsilon.
    sigma_for_1 : float
        The noise multiplier the classical bound needs for epsilon = 1.

    Tolerance: 0.5% relative (three significant digits by hand).
    """
    if not close(number("sensitivity", sensitivity), DP_CLIP, atol=1e-9, rtol=5e-3):
        raise wrong("sensitivity", "how far can one sample's clipped gradient move the sum?")
    root = math.sqrt(2 * math.log(1.25 / DP_DELTA))
    eps = root / DP_SIGMA
    if not close(number("epsilon", epsilon), eps, atol=0, rtol=5e-3):
        raise wrong("epsilon", "sqrt(2 ln(1.25 / delta)) / sigma with delta = 1e-5 and sigma = 2 "
                    "(ln is the natural logarithm)")
    if boolean("bound_valid", bound_valid) != (eps < 1):
        raise wrong("bound_valid", "for which epsilon is the classical bound proved?")
    if not close(number("sigma_for_1", sigma_for_1), root, atol=0, rtol=5e-3):
        raise wrong("sigma_for_1", "solve sqrt(2 ln(1.25 / delta)) / sigma = 1 for sigma")


@lru_cache(maxsize=None)
def _digit_and_net():
    """The chapter's digit ``mnist[0]`` and its 784-1024-10 network (seed 0)."""
    x, y = mnist()[0]
    return x, y, seeded_mlp(WIDTH)


@exercise("ch7-predict", "7.2", answers=("sigma20", "measured"))
def predict(sigma20, measured) -> None:
    """Exercise 7.2: the noise predicted to bring the rank-one fit to 20 dB, and measured.

    Parameters
    ----------
    sigma20 : float
        The predicted ``sigma`` for 20 dB on the chapter's digit and network.
    measured : dict
        The rank-one fit's PSNR (dB) at ``0.5, 1, 2`` times ``sigma20`` (keys :data:`FACTORS`;
        a sequence in that order is accepted).

    Tolerance: 0.1% relative for ``sigma20``; the fit at ``sigma20`` within 2 dB of 20 and
    falling as the noise grows.
    """
    from .. import capture

    x, y, net = _digit_and_net()
    db = capture.client_update(net, x, y)["fc1.bias"]
    want = float(db.norm() / 10 / torch.sqrt(1 + (x.flatten() ** 2).mean()))
    if not close(number("sigma20", sigma20), want, atol=0, rtol=1e-3):
        raise wrong("sigma20", "set 20 log10(||delta|| / sigma) - 10 log10(1 + mean x^2) to 20 "
                    "and solve for sigma; delta is the first layer's bias gradient")
    got = keyed("measured", measured, FACTORS, what="PSNR in dB")
    if abs(got[1.0] - 20) > 2:
        raise wrong("measured", f"at sigma20 the fit gave {got[1.0]:.1f} dB: use "
                    "defences.gaussian_noise(update, sigma) and bias_ratio.reconstruct(net, "
                    "noisy, noise=sigma), and score with metrics.psnr")
    if not got[0.5] > got[1.0] > got[2.0]:
        raise wrong("measured", "more noise should give a lower PSNR: check the keys")


@exercise("ch7-soteria", "7.3", answers=("withheld", "hidden"))
def soteria(withheld, hidden) -> None:
    """Exercise 7.3: what Soteria withholds on the first layer, and what the server still reads.

    Parameters
    ----------
    withheld : array-like of 784 bools
        True for each pixel's weight-gradient column Soteria withholds
        (``prune_fraction=0.8``, the chapter's digit and network).
    hidden : array-like of 1024 floats
        The hidden activations the server reads from the defended update's output layer.

    Tolerance: the mask exact; the activations 1e-8 absolute.
    """
    from .. import defences

    x, y, net = _digit_and_net()
    _, kept = defences.soteria(net, x, y, prune_fraction=0.8, return_mask=True)
    want = ~kept.numpy()
    got = array("withheld", withheld, (784,), (28, 28), (1, 28, 28), what="784 True/False")
    if not np.isin(got, (0, 1)).all():
        raise wrong("withheld", "a mask: True where the column is withheld, False elsewhere")
    got = got.astype(bool)
    if np.array_equal(got, ~want):
        raise wrong("withheld", "that is the mask of the columns Soteria keeps")
    if not np.array_equal(got, want):
        raise wrong("withheld", "use the mask defences.soteria(..., return_mask=True) returns "
                    "for the chapter's digit and network: True where a column is not sent")
    with torch.no_grad():
        truth = torch.relu(net.fc1(x.flatten(1)))[0].numpy()
    got = array("hidden", hidden, (WIDTH,), (1, WIDTH), what=f"{WIDTH} activations")
    if not close(got, truth, atol=1e-8):
        raise wrong("hidden", "the output layer is a linear layer with a bias too: apply "
                    "Chapter 1's bias ratio to it (bias_ratio.reconstruct(..., layer='out'))")
