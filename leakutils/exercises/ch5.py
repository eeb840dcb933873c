"""Checks of Chapter 5's exercises (model inversion with a transposed CNN)."""
from __future__ import annotations

import numpy as np
import torch

from ._base import WrongAnswer, array, boolean, close, exercise, flags, number, wrong

__all__ = ["AL_W", "AL_O", "INPUTS"]

#: Exercise 5.1: the shadow's output layer (2 logits, 3 hidden units, no bias) ...
AL_W = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
#: ... and the target's output.
AL_O = np.array([2.0, 1.0])

#: Exercise 5.3: the keys of ``computable``, the inverse models' three inputs.
INPUTS = ("O", "A", "X")


def _gradient_descent_from_zero(steps: int = 5000) -> np.ndarray:
    """Gradient descent on ||W a - O||^2 from a = 0 (the study's optimisation)."""
    a, lr = np.zeros(AL_W.shape[1]), 0.1
    for _ in range(steps):
        a -= lr * AL_W.T @ (AL_W @ a - AL_O)
    return a


@exercise("ch5-al", "5.1", answers=("a_min", "a_other", "gd_finds_min_norm"))
def al(a_min, a_other, gd_finds_min_norm) -> None:
    """Exercise 5.1: the minimum-norm last-layer activations, another solution, and GD's.

    Parameters
    ----------
    a_min : array-like of 3 floats
        The minimum-norm ``A^L`` with ``W A^L = O``.
    a_other : array-like of 3 floats
        Another solution of ``W a = O`` (any other).
    gd_finds_min_norm : bool
        Whether gradient descent from zero ends at the minimum-norm solution.

    Tolerance: 1e-6 absolute (the equations and the minimum-norm solution).
    """
    want = np.linalg.pinv(AL_W) @ AL_O
    got = array("a_min", a_min, (3,), what="3 activations")
    if not close(AL_W @ got, AL_O, atol=1e-6):
        raise wrong("a_min", "it must solve both equations W a = O")
    if not close(got, want, atol=1e-6):
        raise wrong("a_min", "it solves W a = O but is not the shortest solution: the "
                    "minimum-norm one lies in W's row space, a = W^T c")
    got = array("a_other", a_other, (3,), what="3 activations")
    if not close(AL_W @ got, AL_O, atol=1e-6):
        raise wrong("a_other", "it must solve both equations W a = O")
    if close(got, want, atol=1e-6):
        raise wrong("a_other", "that is the minimum-norm solution again: add any vector of "
                    "W's null space")
    finds = bool(close(_gradient_descent_from_zero(), want, atol=1e-9))
    if boolean("gd_finds_min_norm", gd_finds_min_norm) != finds:
        raise wrong("gd_finds_min_norm", "from a = 0, every step moves along W^T (W a - O): in "
                    "which subspace does a stay?")


def _ssim(images: torch.Tensor, truth: torch.Tensor) -> float:
    """The chapter's score: mean Gaussian SSIM in float64."""
    from .. import metrics

    return float(metrics.ssim(images.double(), truth.double(), gaussian=True).mean())


@exercise("ch5-baseline", "5.2", answers=("ssim_pred", "ssim_true", "misclassified"),
          context=("o_t", "yt", "xt", "class_avg"))
def baseline(ssim_pred, ssim_true, misclassified, *, o_t, yt, xt, class_avg) -> None:
    """Exercise 5.2: the class-average baseline with the predicted and with the true class.

    Parameters
    ----------
    ssim_pred : float
        Mean SSIM (the chapter's ``score``: Gaussian SSIM, float64) of the class average of
        the class the target predicts, against the attack-test digits.
    ssim_true : float
        The same with the true class.
    misclassified : float
        The fraction (0..1) of attack-test digits the target misclassifies.
    o_t, yt, xt, class_avg : torch.Tensor
        The chapter's target outputs, true labels and attack-test digits, and the shadow
        data's class averages (computed by the chapter's cells above).

    Tolerance: 1e-3 absolute on the SSIMs, 1e-6 on the fraction.
    """
    try:
        predicted = torch.as_tensor(o_t).argmax(1)
        yt, xt, class_avg = torch.as_tensor(yt), torch.as_tensor(xt), torch.as_tensor(class_avg)
        want_pred = _ssim(class_avg[predicted], xt)
        want_true = _ssim(class_avg[yt], xt)
    except (TypeError, ValueError, IndexError, RuntimeError) as err:
        raise WrongAnswer(f"the chapter's o_t, yt, xt or class_avg are not what its cells made "
                          f"(rerun them): {err}") from None
    if not close(number("ssim_pred", ssim_pred), want_pred, atol=1e-3):
        raise wrong("ssim_pred", "score class_avg[o_t.argmax(1)] against xt with the "
                    "chapter's score (Gaussian SSIM, averaged over the digits)")
    if not close(number("ssim_true", ssim_true), want_true, atol=1e-3):
        raise wrong("ssim_true", "score the class average of the true class, class_avg[yt], "
                    "the same way")
    wrong_frac = float((predicted != yt).double().mean())
    got = number("misclassified", misclassified)
    if got > 1 and close(got / 100, wrong_frac, atol=1e-6):
        raise wrong("misclassified", "a fraction between 0 and 1, not a percentage")
    if not close(got, wrong_frac, atol=1e-6):
        raise wrong("misclassified", "the fraction of digits whose predicted class "
                    "(o_t.argmax(1)) differs from yt")


@exercise("ch5-defence", "5.3", answers=("computable", "rounding_defends"))
def defence(computable, rounding_defends) -> None:
    """Exercise 5.3: what the attacker still computes from the top-1 label and its logit.

    Parameters
    ----------
    computable : dict
        Keys ``"O"``, ``"A"``, ``"X"`` (:data:`INPUTS`): whether the attacker can still
        compute that input of the inverse model from a top-1 output.
    rounding_defends : bool
        Whether rounding the logits (to whole numbers) lowers what the inverse models rebuild
        much, as the chapter measured.
    """
    got = flags("computable", computable, INPUTS)
    # from one logit and its position: O is a (sparse) output vector; A^L = W^+ (O - b) has a
    # minimum-norm solution for any number of equations; X~ is optimised through the shadow
    # to match whatever logits are known
    hints = {"O": "one number at one position is still an output vector, with the rest unknown",
             "A": "one equation in 50 unknowns: does it have a minimum-norm solution?",
             "X": "can an image be optimised through the shadow to match one logit?"}
    for key in INPUTS:
        if not got[key]:
            raise wrong(f"computable[{key!r}]", hints[key])
    if boolean("rounding_defends", rounding_defends):
        raise wrong("rounding_defends", "look at the chapter's rounding measurement: what "
                    "happened to the inverse models' SSIM with whole-number logits?")
