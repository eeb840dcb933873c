"""Reading a CNN as the attack sees it: conv layers with activations, then a linear head.

Module tracing sees only modules. What ``forward()`` does between them (``torch.relu`` as a
function, a skip connection, a normalisation written inline) is invisible to it, and an
attack that ignores it is confidently wrong. :func:`check_forward_structure` therefore runs
the model on random inputs and checks that every traced module receives exactly what the
previous one returned (up to a reshape), from the input up to the head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ... import activations as acts
from .._common import trace_leaves
from ...validate import check_int, check_seed

__all__ = ["ConvLayer", "parse_cnn", "check_forward_structure", "STRUCTURE_RTOL"]

_ALLOWED = (nn.Conv2d, nn.Flatten, nn.Linear, nn.Identity) + tuple(acts._TYPES)

#: Relative tolerance (in units of the model dtype's machine epsilon) of the structure check:
#: a module's input must equal the previous module's output within ``STRUCTURE_RTOL * eps``
#: times the largest magnitude (the values are the same tensors, so they agree exactly).
STRUCTURE_RTOL = 64.0


@dataclass
class ConvLayer:
    """One conv layer of a parsed CNN, with the activation that follows it.

    Attributes
    ----------
    name : str
        Module name of the conv layer (e.g. ``"body.conv2"``).
    conv : nn.Conv2d
    activation : nn.Module
        The activation after it (``nn.Identity()`` when there is none).
    in_shape, out_shape : tuple of int
        ``(C, H, W)`` of its input and ``(F, O_h, O_w)`` of its output.
    """

    name: str
    conv: nn.Conv2d
    activation: nn.Module
    in_shape: tuple
    out_shape: tuple


@dataclass
class _Parsed:
    layers: list  # ConvLayer, bottom to top
    head_name: str
    head: nn.Linear


def _check_shape(input_shape) -> tuple:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (C, H, W) as integers, got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) of positive sizes, got {input_shape!r}")
    return shape


def parse_cnn(model: nn.Module, input_shape) -> tuple[list[ConvLayer], str]:
    """Split a CNN into its conv layers (with activations) and the name of its head.

    The model must run ``conv -> [activation] -> ... -> conv -> [activation] -> Flatten ->
    Linear -> ...``, every operation below the head a module (checked by
    :func:`check_forward_structure`); what follows the first ``Linear`` (the head) is free.

    Parameters
    ----------
    model : nn.Module
    input_shape : tuple of int
        ``(C, H, W)`` of one input.

    Returns
    -------
    (layers, head) : (list of ConvLayer, str)
        Conv layers from the input upwards, and the name of the head's ``nn.Linear``.

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``; a module the attack does not support before the head
        (pooling, normalisation, dropout, a conv with groups or dilation), with its name.
    ValueError
        A bad ``input_shape``; no conv layer, or no ``Flatten -> Linear`` head; a ``forward()``
        that changes values between modules (functional activation, skip connection, inline
        normalisation).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    parsed = _parse(model, _check_shape(input_shape))
    return parsed.layers, parsed.head_name


def _parse(model: nn.Module, input_shape: tuple, check_structure: bool = True) -> _Parsed:
    names = {id(m): n for n, m in model.named_modules()}
    order = trace_leaves(model, input_shape)
    layers: list[ConvLayer] = []
    k = 0
    while k < len(order):
        mod, ins, outs = order[k]
        name = names.get(id(mod), type(mod).__name__)
        if isinstance(mod, nn.Linear):
            break
        if not isinstance(mod, _ALLOWED):
            raise TypeError(f"module {name!r} ({type(mod).__name__}) is not supported below the head: the attack "
                            f"handles Conv2d layers with activations, then Flatten and Linear")
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or mod.dilation not in ((1, 1), 1) or mod.padding_mode != "zeros" \
                    or isinstance(mod.padding, str):
                raise TypeError(f"conv layer {name!r} uses groups, dilation, string or non-zero padding; "
                                f"use a plain nn.Conv2d (groups=1, dilation=1, integer zero padding)")
            act: nn.Module = nn.Identity()
            if k + 1 < len(order) and isinstance(order[k + 1][0], tuple(acts._TYPES)) \
                    and not isinstance(order[k + 1][0], nn.Identity):
                act = order[k + 1][0]
                k += 1
            layers.append(ConvLayer(name, mod, act, ins, outs))
        elif layers and isinstance(mod, tuple(acts._TYPES)) and not isinstance(mod, nn.Identity):
            raise TypeError(f"two activations in a row at {name!r}; the attack expects one per conv layer")
        k += 1
    if not layers:
        raise ValueError("the model has no Conv2d layer; for fully connected networks use attacks.bias_ratio")
    if k >= len(order) or not isinstance(order[k][0], nn.Linear):
        raise ValueError("the conv layers must be followed by Flatten and a Linear head")
    head = order[k][0]
    if check_structure:
        check_forward_structure(model, input_shape, upto=k)
    return _Parsed(layers, names[id(head)], head)


def check_forward_structure(model: nn.Module, input_shape, *, upto: int | None = None, seed: int = 0) -> None:
    """Check that ``forward()`` is the composition of its traced modules, from the input up.

    Runs two random inputs (``U(0, 1)``, seeded, the model's dtype) and records every leaf
    module's input and output in call order. The first module must receive the input itself,
    and each following one the previous module's output (a reshape such as ``x.view(n, -1)``
    is allowed). A functional activation (``torch.relu(x)``), a skip connection (``x + y``),
    a normalisation written in ``forward()`` or any other operation between modules breaks
    this, and the conv attack, which reads the network from its modules, would solve the
    wrong equations.

    Parameters
    ----------
    model : nn.Module
    input_shape : (C, H, W)
    upto : int, optional
        Check the modules up to this index in call order (the head; default: all).
    seed : int
        Seed of the random inputs.

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``.
    ValueError
        The module that receives something other than the previous module's output, and
        what to do instead (write the operation as a module, or use an optimisation attack);
        a bad ``input_shape``, ``upto`` or ``seed``; a model without parameters, or one that
        does not run on inputs of ``input_shape``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    input_shape = _check_shape(input_shape)
    if upto is not None:
        upto = check_int("upto", upto, 0)
    seed = check_seed("seed", seed)
    if next(model.parameters(), None) is None:
        raise ValueError("the model has no parameters")
    calls: list = []
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.append((mod, i[0].detach(), o.detach())))
             for m in leaves]
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, *input_shape, generator=gen, dtype=torch.float64).to(param.dtype)
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as err:
        raise ValueError(f"the model does not run on inputs of shape {input_shape}: {err}") from None
    finally:
        for h in hooks:
            h.remove()
    names = {id(m): n for n, m in model.named_modules()}
    eps = float(torch.finfo(param.dtype).eps)
    prev, prev_name = x, "the model's input"
    for k, (mod, inp, out) in enumerate(calls if upto is None else calls[:upto + 1]):
        name = names.get(id(mod), type(mod).__name__)
        same = inp.shape[0] == prev.shape[0] and inp[0].numel() == prev[0].numel()
        if same:
            a, b = inp.reshape(prev.shape[0], -1).double(), prev.reshape(prev.shape[0], -1).double()
            scale = max(float(b.abs().max()), float(a.abs().max()), 1e-300)
            same = float((a - b).abs().max()) <= STRUCTURE_RTOL * eps * scale
        if not same:
            raise ValueError(
                f"the model's forward() changes the values between {prev_name} and module {name!r}: an operation "
                f"that is not a module (a functional activation such as torch.relu, a skip connection, a "
                f"normalisation written in forward()). The conv attack reads the network from its modules, so it "
                f"would solve the wrong equations. Write every operation below the head as a module "
                f"(nn.ReLU(), nn.Flatten(), ...) in an nn.Sequential, or use an optimisation attack (attacks.dlg).")
        prev, prev_name = out, f"module {name!r}"
