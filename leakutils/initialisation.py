"""Reproducible weight initialisations of the papers (U(-0.5, 0.5) of DLG and R-CONV, normal,
Glorot, He) and a parameter count; re-exported by :mod:`leakutils.models`."""
from __future__ import annotations

import math

import torch
from torch import nn

from .validate import check_choice, check_module, check_number, check_seed

__all__ = ["init_weights", "count_parameters"]


def init_weights(model: nn.Module, scheme: str = "uniform", *, low: float = -0.5, high: float = 0.5,
                 std: float = 0.1, seed: int = 0) -> nn.Module:
    """Re-initialise every linear and conv layer in place, reproducibly; returns the model.

    Parameters
    ----------
    model : nn.Module
    scheme : {"uniform", "normal", "xavier", "kaiming", "default"}
        ``"uniform"``: weights and biases from U(low, high), as DLG and R-CONV do with
        (-0.5, 0.5). ``"normal"``: N(0, std^2). ``"xavier"``/``"kaiming"``: Glorot / He
        uniform weights with zero biases. ``"default"``: PyTorch's own ``reset_parameters``.
    low, high : float
        Bounds of the uniform scheme, ``low < high``.
    std : float
        Standard deviation of the normal scheme, > 0.
    seed : int
        Seed of the random generator, so the same call gives the same weights.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``; ``scheme`` not a string; ``low``, ``high``, ``std``
        not numbers; ``seed`` not an integer.
    ValueError
        Unknown scheme, ``low >= high``, ``std <= 0``, non-finite bounds, a seed outside
        ``0..2**32 - 1``, or a model with no linear/conv layer.
    """
    check_module("model", model)
    check_choice("scheme", scheme, ("uniform", "normal", "xavier", "kaiming", "default"))
    low, high = check_number("low", low), check_number("high", high)
    if not low < high:
        raise ValueError(f"the uniform scheme needs low < high, got low={low}, high={high}")
    std = check_number("std", std, 0.0, lo_open=True)
    seed = check_seed("seed", seed)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d))]
    if not layers:
        raise ValueError("the model has no linear or convolutional layer to initialise")
    gen = torch.Generator().manual_seed(seed)
    if scheme == "default":
        torch.manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            if scheme == "default":
                layer.reset_parameters()
                continue
            for pname in ("weight", "bias"):
                p = getattr(layer, pname)
                if p is None:
                    continue
                if scheme == "uniform":
                    values = torch.rand(p.shape, generator=gen, dtype=torch.float64) * (high - low) + low
                elif scheme == "normal":
                    values = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std
                elif pname == "bias":
                    values = torch.zeros(p.shape, dtype=torch.float64)
                else:
                    fan_out, fan_in = p.shape[0] * p[0, 0].numel(), p[0].numel()
                    if scheme == "xavier":
                        bound = math.sqrt(6.0 / (fan_in + fan_out))
                    else:
                        bound = math.sqrt(6.0 / fan_in)
                    values = (torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
                p.copy_(values.to(p.dtype))
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``.
    """
    check_module("model", model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
