"""Checks of Chapter 2's exercises (propagating gradients through activations)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ._base import array, boolean, close, exercise, flags, number, wrong

__all__ = ["ELU_X", "ELU_GRAD_X", "ELU_ALPHA", "RELU_KEYS"]

#: Exercise 2.1 (3): the ELU unit's output X, its incoming gradient dl/dX and alpha.
ELU_X, ELU_GRAD_X, ELU_ALPHA = -0.5, 2.0, 1.0

#: Exercise 2.3: the keys of ``relu``.
RELU_KEYS = ("colleague_right", "gradient_passes_exactly", "loses_forward_equations")


@exercise("ch2-by-hand", "2.1",
          answers=("deriv_true", "deriv_slides", "slides_right", "elu_grad_O", "elu_O"))
def by_hand(deriv_true, deriv_slides, slides_right, elu_grad_O, elu_O) -> None:
    """Exercise 2.1: SoftPlus' derivative from its output, and an ELU unit inverted.

    Parameters
    ----------
    deriv_true : float
        ``1 - exp(-X)`` at ``O = 0`` (SoftPlus' derivative written in its output X).
    deriv_slides : float
        The slides' ``1 / (1 + exp(-X))`` at the same point.
    slides_right : bool
        Whether the slides' formula gives SoftPlus' derivative there.
    elu_grad_O : float
        ``dl/dO`` of the ELU unit (alpha 1) with output -0.5 and ``dl/dX = 2``.
    elu_O : float
        That unit's pre-activation O.

    Tolerance: 5e-3 absolute (three decimals by hand).
    """
    X = float(torch.nn.functional.softplus(torch.zeros((), dtype=torch.float64)))
    true = float(torch.sigmoid(torch.zeros((), dtype=torch.float64)))
    if not close(number("deriv_true", deriv_true), 1 - math.exp(-X), atol=5e-3):
        raise wrong("deriv_true", "evaluate 1 - exp(-X) at the output X = A(0) = log 2, not at O")
    slides = 1 / (1 + math.exp(-X))
    if not close(number("deriv_slides", deriv_slides), slides, atol=5e-3):
        raise wrong("deriv_slides", "evaluate 1 / (1 + exp(-X)) at the output X = A(0), not at O")
    if boolean("slides_right", slides_right) != bool(abs(slides - true) < 1e-9):
        raise wrong("slides_right", "compare each formula with SoftPlus' true derivative at 0, "
                    "the sigmoid of 0")
    # ELU: X = alpha (e^O - 1) for O < 0, so A'(O) = alpha e^O = X + alpha
    grad_O = ELU_GRAD_X * (ELU_X + ELU_ALPHA)
    if not close(number("elu_grad_O", elu_grad_O), grad_O, atol=5e-3):
        raise wrong("elu_grad_O", "dl/dO = dl/dX * A'(O), and for ELU below zero A'(O) is a "
                    "function of X alone: write alpha e^O in terms of X")
    if not close(number("elu_O", elu_O), math.log1p(ELU_X / ELU_ALPHA), atol=5e-3):
        raise wrong("elu_O", "solve X = alpha (e^O - 1) for O")


def _silu_and_slope(o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SiLU and its derivative at ``o`` (float64, by autograd)."""
    t = torch.tensor(o, dtype=torch.float64, requires_grad=True)
    out = nn.functional.silu(t)
    (slope,) = torch.autograd.grad(out.sum(), t)
    return out.detach().numpy(), slope.numpy()


def _non_monotonic(fn) -> bool:
    """Whether ``fn`` decreases somewhere on [-6, 6] (then one output has two pre-images)."""
    grid = torch.linspace(-6, 6, 2401, dtype=torch.float64)
    return bool((torch.diff(fn(grid)) < 0).any() and (torch.diff(fn(grid)) > 0).any())


@exercise("ch2-silu", "2.2", answers=("O_pair", "gelu_too"))
def silu(O_pair, gelu_too) -> None:
    """Exercise 2.2: two SiLU pre-activations with one output and different derivatives.

    Parameters
    ----------
    O_pair : array-like of 2 floats
        ``(O1, O2)`` with ``O1 != O2`` (by more than 1e-3), ``SiLU(O1) == SiLU(O2)`` within
        1e-9 and derivatives that differ (by more than 1e-6).
    gelu_too : bool
        Whether GELU has the same problem.
    """
    o = array("O_pair", O_pair, (2,), what="2 pre-activations")
    if abs(o[0] - o[1]) <= 1e-3:
        raise wrong("O_pair", "the two pre-activations must be different numbers")
    out, slope = _silu_and_slope(o)
    if abs(out[0] - out[1]) > 1e-9:
        raise wrong("O_pair", f"their outputs differ by {abs(out[0] - out[1]):.1e}: keep one "
                    "and bisect for the other on the other side of SiLU's minimum, to 1e-9")
    if abs(slope[0] - slope[1]) <= 1e-6:
        raise wrong("O_pair", "same output and same derivative: take the two points on opposite "
                    "sides of SiLU's minimum")
    if boolean("gelu_too", gelu_too) != _non_monotonic(nn.functional.gelu):
        raise wrong("gelu_too", "plot GELU for O in [-3, 1]: does every output have one "
                    "pre-activation?")


@exercise("ch2-defence", "2.3", answers=("relu",))
def defence(relu) -> None:
    """Exercise 2.3: what ReLU does and does not hide.

    Parameters
    ----------
    relu : dict
        Keys :data:`RELU_KEYS`: ``"colleague_right"`` (ReLU everywhere stops the gradient
        from being carried down), ``"gradient_passes_exactly"`` (dl/dO follows exactly from
        ReLU's output and dl/dX), ``"loses_forward_equations"`` (ReLU hides some
        pre-activations, hence forward equations of the layer below); each True or False.
    """
    from .. import activations

    got = flags("relu", relu, RELU_KEYS)
    g = torch.Generator().manual_seed(0)
    O = torch.randn(64, generator=g, dtype=torch.float64, requires_grad=True)
    X = torch.relu(O)
    grad_X = torch.randn(64, generator=g, dtype=torch.float64)
    (grad_O,) = torch.autograd.grad(X, O, grad_X)
    exact = bool(torch.equal(activations.propagate(nn.ReLU(), X.detach(), grad_X), grad_O))
    # a zero output has many pre-images: the forward equation of that unit is gone
    lost = bool((X == 0).any())
    truth = {"colleague_right": not exact, "gradient_passes_exactly": exact,
             "loses_forward_equations": lost}
    hints = {
        "colleague_right": "is ReLU's derivative a function of its output? Then dl/dO follows "
                           "from the output and dl/dX",
        "gradient_passes_exactly": "ReLU's derivative is 1 or 0: can you tell which from the "
                                   "output alone?",
        "loses_forward_equations": "an output of 0: which pre-activation produced it?",
    }
    for key in RELU_KEYS:
        if got[key] != truth[key]:
            raise wrong(f"relu[{key!r}]", hints[key])
