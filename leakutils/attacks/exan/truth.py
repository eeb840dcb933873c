"""Ground-truth helpers (teaching aids): they read the true batch, which an attacker never has.

:func:`count_exans` counts each sample's ExANs from the true inputs, and
:func:`expected_exans` gives the independent-activation estimate of that count. Chapter 4
uses them to draw the attack's boundary; the attack itself never calls them.
"""
from __future__ import annotations

import torch
from torch import nn


def count_exans(model: nn.Module, x: torch.Tensor) -> dict:
    """Count each sample's ExANs in every ReLU layer from the true batch (what the attacker cannot see).

    Parameters
    ----------
    model : nn.Module
        Any network with ``nn.ReLU`` modules (each is one layer of units).
    x : torch.Tensor
        The batch ``(M, *input_shape)``, floating point, of the model's dtype.

    Returns
    -------
    dict
        ReLU module name to a dict with ``exans`` (int64 ``(M,)``: units active for that
        sample alone), ``active`` (bool ``(M, N)``, flattened units) and ``p`` (the fraction of
        (sample, unit) pairs active, in [0, 1]).

    Raises
    ------
    TypeError
        ``model`` or ``x`` of the wrong type; ``x`` of another dtype than the model's
        parameters (convert with ``x.to(dtype)`` or ``model.to(dtype)``).
    ValueError
        A model without ``nn.ReLU`` modules or without parameters; ``x`` without a batch
        dimension, empty, or not finite.
    """
    if not isinstance(model, nn.Module) or not isinstance(x, torch.Tensor):
        raise TypeError("count_exans(model, x) takes an nn.Module and a tensor batch")
    relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("the model has no nn.ReLU module: exclusivity is defined for ReLU units")
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError("the model has no parameters")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point batch, got {x.dtype}; convert with x.to({param.dtype})")
    if x.dtype != param.dtype:
        raise TypeError(f"x is {x.dtype} but the model's parameters are {param.dtype}: convert one, e.g. "
                        f"x.to({param.dtype}) or model.to({x.dtype})")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (M, *input_shape), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    seen: dict = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o.detach().flatten(1) > 0))
             for n, m in relus]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, _ in relus:
        act = seen[n]
        excl = act & (act.sum(0, keepdim=True) == 1)
        out[n] = {"exans": excl.sum(1).to(torch.int64), "active": act, "p": float(act.double().mean())}
    return out


def expected_exans(width: int, p: float, batch_size: int) -> float:
    """The simple estimate ``N p (1 - p)^(M - 1)`` of one sample's ExANs in a layer of ``N`` units.

    Assumes every unit is active with probability ``p`` independently for every sample. It
    is largest at ``p = 1/M``, where it is about ``N / (e M)``.

    Parameters
    ----------
    width : int
        ``N``, units in the layer (>= 1).
    p : float
        Activation probability in [0, 1].
    batch_size : int
        ``M`` (>= 1).

    Returns
    -------
    float
        Expected ExANs per sample, in ``[0, N]``.

    Raises
    ------
    ValueError
        Out-of-range arguments.
    """
    if not isinstance(width, int) or width < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("width and batch_size must be positive integers")
    if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must be a number in [0, 1], got {p!r}")
    return width * float(p) * (1.0 - float(p)) ** (batch_size - 1)
