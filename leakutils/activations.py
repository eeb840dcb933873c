"""Activations seen from above: derivatives in terms of the output, and inverses.

An attack that has just rebuilt the *output* ``X = A(O)`` of an activation (the input of
the layer above) and the gradient ``dl/dX`` carries the gradient one step down with

    dl/dO = dl/dX * A'(O),

which needs ``A'(O)`` written as a function of ``X`` (R-CONV, Eltaras et al. 2024, Table 1).
Where ``A`` is invertible, ``O = A^{-1}(X)`` is known too, and the layer below gains its
forward equations. This module holds both, for every activation of R-CONV's table:

=============  ==========================  ===========================================
activation     A'(O) in terms of X         O from X
=============  ==========================  ===========================================
Sigmoid        X (1 - X)                   log(X / (1 - X)), where 0 < X < 1
Tanh           1 - X^2                     atanh(X), where |X| < 1
ArcTan         1 / (1 + tan^2 X)           tan(X)
SoftPlus(b)    1 - exp(-b X)               X + log(1 - exp(-b X)) / b, where X > 0
ReLU           1 if X > 0 else 0           X where X > 0; unknown (<= 0) where X = 0
LeakyReLU(a)   1 if X >= 0 else a          X if X >= 0 else X / a
PReLU(a)       1 if X >= 0 else a          X if X >= 0 else X / a (a learned, per channel)
ELU(a)         1 if X >= 0 else X + a      X if X >= 0 else log(1 + X / a)
=============  ==========================  ===========================================

(Seed 003 writes SoftPlus's derivative as ``1 / (1 + e^{-X})``: that is ``A'`` in terms of
the input ``O``, not of the output ``X``. In terms of ``X`` it is ``1 - e^{-X}``.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .models import ArcTan
from .validate import check_module, check_number, check_tensor

__all__ = ["RULES", "ActivationRule", "rule_for", "derivative_from_output", "propagate", "invert",
           "is_invertible", "snap_to_range"]


@dataclass(frozen=True)
class ActivationRule:
    """How an attack sees one activation from above.

    Attributes
    ----------
    name : str
        Short name, as in :data:`leakutils.models.ACTIVATIONS`.
    derivative : str
        ``A'(O)`` written in terms of the output ``X`` (plain text).
    inverse : str
        ``O`` in terms of ``X``, and where it is defined (plain text).
    invertible : bool
        Whether ``O`` is recoverable from ``X`` everywhere (in exact arithmetic).
    """

    name: str
    derivative: str
    inverse: str
    invertible: bool


#: The rules of R-CONV's Table 1 (SoftPlus corrected), by activation name.
RULES = {
    "sigmoid": ActivationRule("sigmoid", "X (1 - X)", "log(X / (1 - X))", True),
    "tanh": ActivationRule("tanh", "1 - X^2", "atanh(X)", True),
    "arctan": ActivationRule("arctan", "1 / (1 + tan^2 X)", "tan(X)", True),
    "softplus": ActivationRule("softplus", "1 - exp(-beta X)", "X + log(1 - exp(-beta X)) / beta", True),
    "relu": ActivationRule("relu", "1 if X > 0 else 0", "X where X > 0; lost where X = 0", False),
    "leaky_relu": ActivationRule("leaky_relu", "1 if X >= 0 else a", "X if X >= 0 else X / a", True),
    "prelu": ActivationRule("prelu", "1 if X >= 0 else a", "X if X >= 0 else X / a", True),
    "elu": ActivationRule("elu", "1 if X >= 0 else X + alpha", "X if X >= 0 else log(1 + X / alpha)", True),
    "identity": ActivationRule("identity", "1", "X", True),
}

_TYPES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", ArcTan: "arctan", nn.Softplus: "softplus",
          nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu", nn.ELU: "elu",
          nn.Identity: "identity"}


def rule_for(activation: nn.Module) -> ActivationRule:
    """The :class:`ActivationRule` of an activation module.

    Raises
    ------
    TypeError
        Not an ``nn.Module``, or not one of the supported modules (the message lists them);
        e.g. ``nn.SiLU``, whose derivative is not a function of its output because SiLU is
        not monotonic.
    """
    check_module("activation", activation)
    for cls, name in _TYPES.items():
        if type(activation) is cls:
            return RULES[name]
    supported = ", ".join(sorted(c.__name__ for c in _TYPES))
    raise TypeError(f"no rule for {type(activation).__name__}: its derivative must be a function of its "
                    f"output. Supported activations: {supported}")


def _slope(activation: nn.Module, X: torch.Tensor) -> torch.Tensor | float:
    """Negative-side slope of LeakyReLU / PReLU, broadcastable to X (channels on axis 1)."""
    if isinstance(activation, nn.LeakyReLU):
        a = float(activation.negative_slope)
        if a <= 0:
            raise ValueError(f"LeakyReLU with negative_slope={a} is not invertible; use a positive slope")
        return a
    a = activation.weight.detach().to(torch.float64)
    if a.numel() == 1:
        value = float(a)
        if value == 0:
            raise ValueError("PReLU with weight 0 is a ReLU; its inverse is lost where X = 0")
        return value
    if X.ndim < 2 or X.shape[1] != a.numel():
        raise ValueError(f"PReLU has {a.numel()} channel weights but X has shape {tuple(X.shape)}; "
                         f"channels must be on axis 1")
    if (a == 0).any():
        raise ValueError("a PReLU channel weight is 0, so that channel cannot be inverted where X < 0")
    return a.view(1, -1, *([1] * (X.ndim - 2)))


def _check_output(activation, X):
    check_module("activation", activation)
    check_tensor("X", X, kind="real", shape="(the activation's output)")
    return X.to(torch.float64)


def derivative_from_output(activation: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``A'(O)`` computed from the output ``X = A(O)`` alone.

    Parameters
    ----------
    activation : nn.Module
        One of the modules of :data:`RULES` (with its parameters: slope, alpha, beta).
    X : torch.Tensor
        The activation's output, any shape (channels on axis 1 for a per-channel PReLU).

    Returns
    -------
    torch.Tensor
        float64, the shape of ``X``. Exact for every rule (SoftPlus follows PyTorch's switch to
        the identity where ``beta * X > threshold``).

    Raises
    ------
    TypeError
        Unsupported activation, non-tensor input, or a complex or bool ``X``.
    ValueError
        ``X`` outside the activation's range (e.g. a sigmoid output outside [0, 1]), NaN or
        infinite entries, an empty ``X``.
    """
    X = _check_output(activation, X)
    name = rule_for(activation).name
    if name == "sigmoid":
        _in_range(X, 0.0, 1.0, "sigmoid")
        return X * (1 - X)
    if name == "tanh":
        _in_range(X, -1.0, 1.0, "tanh")
        return 1 - X * X
    if name == "arctan":
        _in_range(X, -math.pi / 2, math.pi / 2, "arctan")
        return torch.cos(X) ** 2  # = 1 / (1 + tan^2 X), without the overflow of tan near pi/2
    if name == "softplus":
        _in_range(X, 0.0, math.inf, "softplus")
        beta, linear = float(activation.beta), float(activation.beta) * X > float(activation.threshold)
        return torch.where(linear, torch.ones_like(X), -torch.expm1(-beta * X))  # = 1 - exp(-beta X)
    if name == "relu":
        _in_range(X, 0.0, math.inf, "relu")
        return (X > 0).to(torch.float64)
    if name in ("leaky_relu", "prelu"):
        a = _slope(activation, X)
        return torch.where(X >= 0, torch.ones_like(X), a * torch.ones_like(X))
    if name == "elu":
        alpha = float(activation.alpha)
        _in_range(X, -alpha, math.inf, "elu")
        return torch.where(X >= 0, torch.ones_like(X), X + alpha)
    return torch.ones_like(X)  # identity


def propagate(activation: nn.Module, X: torch.Tensor, grad_X: torch.Tensor) -> torch.Tensor:
    """Carry a gradient through an activation: ``dl/dO = dl/dX * A'(O)``, from ``X`` alone.

    Parameters
    ----------
    activation : nn.Module
    X : torch.Tensor
        The activation's output.
    grad_X : torch.Tensor
        ``dl/dX``, the same shape as ``X``.

    Returns
    -------
    torch.Tensor
        ``dl/dO``, float64, the shape of ``X``.

    Raises
    ------
    TypeError, ValueError
        As :func:`derivative_from_output`; ``grad_X`` not a real tensor, of another shape
        than ``X`` or not finite.
    """
    X = _check_output(activation, X)
    check_tensor("grad_X", grad_X, kind="real", shape="(the shape of X)")
    if grad_X.shape != X.shape:
        raise ValueError(f"grad_X must have the shape of X {tuple(X.shape)}, got {tuple(grad_X.shape)}")
    return grad_X.to(torch.float64) * derivative_from_output(activation, X)


def invert(activation: nn.Module, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover the pre-activation ``O`` from the output ``X`` wherever it is determined.

    Returns
    -------
    (O, determined) : (torch.Tensor, torch.Tensor)
        ``O`` float64 with the shape of ``X`` (0 where not determined); ``determined`` a bool
        mask. ReLU loses ``O`` wherever ``X = 0``; sigmoid and tanh lose it where the output
        saturated to exactly 0, 1 or +-1 in floating point; SoftPlus where ``X = 0``.

    Raises
    ------
    TypeError, ValueError
        As :func:`derivative_from_output`.
    """
    X = _check_output(activation, X)
    name = rule_for(activation).name
    ones = torch.ones_like(X, dtype=torch.bool)
    if name == "sigmoid":
        _in_range(X, 0.0, 1.0, "sigmoid")
        det = (X > 0) & (X < 1)
        Xs = torch.where(det, X, torch.full_like(X, 0.5))
        return torch.where(det, torch.log(Xs) - torch.log1p(-Xs), torch.zeros_like(X)), det
    if name == "tanh":
        _in_range(X, -1.0, 1.0, "tanh")
        det = X.abs() < 1
        return torch.where(det, torch.atanh(torch.where(det, X, torch.zeros_like(X))), torch.zeros_like(X)), det
    if name == "arctan":
        _in_range(X, -math.pi / 2, math.pi / 2, "arctan")
        det = X.abs() < math.pi / 2
        return torch.where(det, torch.tan(X), torch.zeros_like(X)), det
    if name == "softplus":
        _in_range(X, 0.0, math.inf, "softplus")
        beta, linear = float(activation.beta), float(activation.beta) * X > float(activation.threshold)
        det = X > 0
        Xs = torch.where(det, X, torch.ones_like(X))
        O = torch.where(linear, X, Xs + torch.log(-torch.expm1(-beta * Xs)) / beta)
        return torch.where(det, O, torch.zeros_like(X)), det
    if name == "relu":
        _in_range(X, 0.0, math.inf, "relu")
        det = X > 0
        return torch.where(det, X, torch.zeros_like(X)), det
    if name in ("leaky_relu", "prelu"):
        a = _slope(activation, X)
        return torch.where(X >= 0, X, X / a), ones
    if name == "elu":
        alpha = float(activation.alpha)
        _in_range(X, -alpha, math.inf, "elu")
        det = X > -alpha
        Xs = torch.where(det, X, torch.zeros_like(X))
        return torch.where(X >= 0, X, torch.log1p(Xs / alpha)), det
    return X.clone(), ones


def is_invertible(activation: nn.Module) -> bool:
    """Whether the activation's pre-activation is recoverable from its output everywhere.

    Raises
    ------
    TypeError
        Not an ``nn.Module``, or an unsupported activation (see :func:`rule_for`).
    """
    check_module("activation", activation)
    if isinstance(activation, nn.LeakyReLU) and activation.negative_slope <= 0:
        return False
    if isinstance(activation, nn.PReLU) and bool((activation.weight == 0).any()):
        return False
    return rule_for(activation).invertible


def snap_to_range(activation: nn.Module, X: torch.Tensor, rtol: float = 1e-9) -> torch.Tensor:
    """Put a rebuilt activation output back into the activation's range.

    Round-off can leave a rebuilt output a hair outside the range (a sigmoid output of
    ``1 + 1e-16``, a ReLU output of ``-1e-15``). This clamps it; for ReLU, outputs within
    ``rtol * max|X|`` of zero become exactly zero (an inactive unit), so that the derivative
    ``1 if X > 0 else 0`` does not flip on noise.

    Parameters
    ----------
    activation : nn.Module
    X : torch.Tensor
        The rebuilt output, any shape, finite.
    rtol : float
        Relative tolerance in ``[0, 1)`` (ReLU only).

    Returns
    -------
    torch.Tensor
        float64, the shape of ``X``.

    Raises
    ------
    TypeError
        Unsupported activation, non-tensor input, ``rtol`` not a number.
    ValueError
        NaN or infinite ``X``, an empty ``X``, ``rtol`` outside ``[0, 1)``.
    """
    X = _check_output(activation, X)
    rtol = check_number("rtol", rtol, 0.0, 1.0, hi_open=True)
    name = rule_for(activation).name
    if name == "relu":
        tol = rtol * float(X.abs().max() or 1.0)
        return torch.where(X > tol, X, torch.zeros_like(X))
    if name == "sigmoid":
        return X.clamp(0.0, 1.0)
    if name == "tanh":
        return X.clamp(-1.0, 1.0)
    if name == "softplus":
        return X.clamp_min(0.0)
    if name == "elu":
        return X.clamp_min(-float(activation.alpha))
    if name == "arctan":
        return X.clamp(-math.pi / 2, math.pi / 2)
    return X


def _in_range(X: torch.Tensor, low: float, high: float, name: str) -> None:
    if float(X.min()) < low or float(X.max()) > high:
        raise ValueError(f"values in [{float(X.min()):.3g}, {float(X.max()):.3g}] cannot be {name} outputs "
                         f"(range [{low:.3g}, {high:.3g}]); is X the output of this activation?")
