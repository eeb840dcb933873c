"""Validation shared by the attacks: types, layers, gradients, tolerances."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core import Update
from ..validate import check_number


def check_model_update(model, update) -> None:
    """Raise TypeError unless ``model`` is an nn.Module and ``update`` an Update."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(update, Update):
        raise TypeError(
            f"update must be a leakutils Update (from capture.client_update), got {type(update).__name__}")


def find_layer(model: nn.Module, layer: str | None, kind=nn.Linear, *, last: bool = False,
               hint: str = "", input_shape: tuple | None = None) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` of the named layer, or of the first (``last``: last) of ``kind``.

    "First" and "last" follow the order in which the forward pass *calls* the layers when
    ``input_shape`` (one sample's shape) is given: a zero input is traced through the model as
    :func:`trace_leaves` does, so a network that declares ``out`` before ``fc1`` still has
    ``fc1`` first. Without ``input_shape`` the definition order (``named_modules``) is used.

    Raises
    ------
    TypeError
        ``layer`` not a string, or the named module not of ``kind``.
    ValueError
        No layer of ``kind`` (called by the forward pass), an unknown name, or a model that
        does not accept inputs of ``input_shape``.
    """
    if layer is None:
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
        if input_shape is not None and found:
            called = [mod for mod, _, _ in trace_leaves(model, tuple(input_shape))]
            names = {id(m): n for n, m in found}
            found, seen = [], set()
            for mod in called:
                if id(mod) in names and id(mod) not in seen:
                    seen.add(id(mod))
                    found.append((names[id(mod)], mod))
        if not found:
            raise ValueError(f"the model has no {kind.__name__} layer to attack. {hint}".strip())
        return found[-1] if last else found[0]
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name such as 'fc1', got {type(layer).__name__}")
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        names = [n for n, m in model.named_modules() if isinstance(m, kind)]
        raise ValueError(f"the model has no layer named {layer!r}; its {kind.__name__} layers are {names}") from None
    if not isinstance(module, kind):
        raise TypeError(f"layer {layer!r} is a {type(module).__name__}, not a {kind.__name__}. {hint}".strip())
    return layer, module


def called_after(model: nn.Module, module: nn.Module, input_shape: tuple) -> list:
    """The leaf modules the forward pass calls after ``module`` (call order, traced once)."""
    order = [mod for mod, _, _ in trace_leaves(model, tuple(input_shape))]
    if module not in order:
        return []
    return order[order.index(module) + 1:]


def called_before(model: nn.Module, module: nn.Module, input_shape: tuple) -> list:
    """The leaf modules the forward pass calls before ``module``, nearest first."""
    order = [mod for mod, _, _ in trace_leaves(model, tuple(input_shape))]
    if module not in order:
        return []
    return order[:order.index(module)][::-1]


def layer_gradient(update: Update, name: str, param: torch.Tensor) -> torch.Tensor:
    """The update's gradient of parameter ``name`` in float64, checked against ``param``."""
    if name not in update.gradients:
        raise ValueError(f"the update has no gradient for {name!r}; was it captured from this model? "
                         f"It has {sorted(update.gradients)}")
    g = update.gradients[name]
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"the gradient of {name!r} must be a tensor, got {type(g).__name__}")
    if g.shape != param.shape:
        raise ValueError(f"the gradient of {name!r} has shape {tuple(g.shape)} but the parameter has "
                         f"shape {tuple(param.shape)}: the update does not come from this model")
    g = g.detach().to(torch.float64)
    if not torch.isfinite(g).all():
        raise ValueError(f"the gradient of {name!r} contains NaN or infinite values")
    return g


def feeds_on_input(model: nn.Module, name: str, in_features: int, input_shape) -> bool:
    """True when layer ``name`` sees the model's input: no module with parameters is called
    before it (call order, traced on a zero input) and its width is that of the input."""
    module = model.get_submodule(name)
    order = [mod for mod, _, _ in trace_leaves(model, tuple(input_shape))]
    before = order[:order.index(module)] if module in order else []
    if any(any(True for _ in m.parameters(recurse=False)) for m in before):
        return False
    return math.prod(input_shape) == in_features


def trace_leaves(model: nn.Module, input_shape: tuple) -> list:
    """Run one zero input through ``model``; return ``(module, in_shape, out_shape)`` per leaf module called,
    in call order (shapes per sample).

    Raises
    ------
    ValueError
        A model without parameters, or one that does not accept inputs of ``input_shape``.
    """
    order: list = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append((mod, tuple(i[0].shape[1:]), tuple(o.shape[1:]))))
             for m in model.modules() if not any(True for _ in m.children())]
    # eval mode for the trace: one zero sample must neither update BatchNorm's running
    # statistics nor fail its "more than one value per channel" check; call order is the same
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=param.dtype))
    except StopIteration:
        raise ValueError("the model has no parameters") from None
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"the model does not accept inputs of shape {input_shape}: {err}") from None
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return order


def check_rtol(rtol: float) -> float:
    """A relative tolerance as a float in the open interval (0, 1), e.g. ``1e-6``.

    Raises TypeError for a value that is not a real number, ValueError for NaN or one out of range.
    """
    return check_number("rtol", rtol, 0, 1, lo_open=True, hi_open=True)


def num_classes(net: nn.Module, x: torch.Tensor, attack: str) -> int:
    """Number of logits of ``net`` on the dummy batch ``x``; clear errors for a model that does not fit.

    Raises
    ------
    ValueError
        The model does not accept ``x``'s shape, or does not return logits ``(M, classes)``
        (``attack`` names the gradient-matching attack in the message).
    """
    try:
        with torch.no_grad():
            out = net(x)
    except (RuntimeError, ValueError, IndexError) as err:
        raise ValueError(f"the model does not accept inputs of the update's shape {tuple(x.shape[1:])}: "
                         f"{err}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError(f"{attack} matches a softmax cross-entropy update: the model must return logits of "
                         f"shape (M, classes)")
    return int(out.shape[-1])
