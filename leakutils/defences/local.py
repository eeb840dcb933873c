"""Local training (FedAvg): the server sees weights, from which it reads a pseudo-gradient.

In FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017) a client takes several SGD steps on its data and returns
its new weights. The server (Flower's strategies, for one) holds the weights it sent and the
weights it got back; an attack reads the pseudo-gradient

    g = (w_sent - w_returned) / lr

which for one full-batch step equals the FedSGD gradient of
:func:`~leakutils.capture.client_update` exactly (up to round-off), and for ``T`` steps is
the *sum* of the ``T`` gradients taken along the client's path: about ``T`` times a mean
gradient at weights that drifted. Several steps, minibatches and epochs are what make
gradient inversion harder here; this module produces the pseudo-gradient of such local
training and the one of any pair of weights.
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..capture import client_update, unwrap_opacus
from ..core import Update
from ..validate import check_int, check_module, check_number, check_seed, check_shape

__all__ = ["fedavg_update", "update_from_weights"]

#: The prefix Opacus' ``GradSampleModule`` puts before every parameter name.
_OPACUS_PREFIX = "_module."


def fedavg_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float,
                  local_steps: int | None = None, local_batch: int | None = None,
                  epochs: int | None = None, seed: int = 0) -> Update:
    """The FedAvg pseudo-gradient ``(w_sent - w_returned) / lr`` of a client's local training.

    A deep copy of ``model`` (the given model is untouched) trains with plain SGD (no
    momentum, no weight decay) on the mean cross-entropy, in the model's own mode:

    * ``local_batch=None``: full-batch steps on all of ``x``, ``local_steps`` of them (or
      ``epochs``, one step each); the default is one step, whose pseudo-gradient is the
      FedSGD gradient.
    * ``local_batch=B``: each epoch visits ``x`` in a fresh random order (a generator seeded
      with ``seed``) in minibatches of ``B`` (the last one smaller when ``B`` does not divide
      ``M``); it runs ``epochs`` epochs (default 1), or exactly ``local_steps`` minibatch
      steps, starting new epochs as needed.

    Parameters
    ----------
    model : nn.Module
        The global model, as the server sent it.
    x : torch.Tensor
        ``(M, *input_shape)``, the model's dtype.
    y : torch.Tensor
        ``(M,)`` int64 labels.
    lr : float
        The client's learning rate, ``> 0``; the server knows it (it sets it).
    local_steps : int, optional
        ``>= 1`` steps; give at most one of ``local_steps`` and ``epochs``.
    local_batch : int, optional
        Minibatch size ``1..M``.
    epochs : int, optional
        ``>= 1`` passes over ``x``.
    seed : int
        Seed of the minibatch order (unused for full-batch steps).

    Returns
    -------
    Update
        ``gradients`` ``(w_sent - w_returned) / lr`` per trainable parameter (plain names),
        ``batch_size`` M (every example the client trained on), ``loss`` the mean loss of the
        first step's batch at the sent weights, ``input_shape`` ``x.shape[1:]``. Round-off:
        each entry is off by about ``eps * |w| / lr`` (``eps`` of the dtype), so use float64
        and a learning rate that is not tiny.

    Raises
    ------
    TypeError
        Inputs as :func:`~leakutils.capture.client_update`; a parameter of the wrong kind.
    ValueError
        Inputs as :func:`~leakutils.capture.client_update`; ``lr <= 0``; both ``local_steps``
        and ``epochs`` given; a count below 1; ``local_batch`` above ``M``.
    """
    first = client_update(model, x, y)
    lr = check_number("lr", lr, 0.0, lo_open=True)
    m = first.batch_size
    if local_steps is not None and epochs is not None:
        raise ValueError("give local_steps or epochs, not both: local_steps counts SGD steps, epochs counts passes "
                         "over the data")
    if local_steps is not None:
        local_steps = check_int("local_steps", local_steps, 1)
    if epochs is not None:
        epochs = check_int("epochs", epochs, 1)
    if local_batch is not None:
        local_batch = check_int("local_batch", local_batch, 1, m)
    seed = check_seed("seed", seed)

    batches = _batches(m, local_steps, local_batch, epochs, seed)
    net = copy.deepcopy(unwrap_opacus(model))
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    sent = {n: p.detach().clone() for n, p in params}
    optimizer = torch.optim.SGD([p for _, p in params], lr=lr)
    for rows in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[rows]), y[rows]).backward()
        optimizer.step()
    returned = {n: p.detach().clone() for n, p in params}
    loss = first.loss if batches[0].numel() == m else client_update(model, x[batches[0]], y[batches[0]]).loss
    return update_from_weights(sent, returned, lr=lr, batch_size=m, input_shape=first.input_shape, loss=loss)


def _batches(m: int, local_steps, local_batch, epochs, seed: int) -> list[torch.Tensor]:
    """The row indices of every local step, in order."""
    if local_batch is None:
        return [torch.arange(m)] * (local_steps or epochs or 1)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(m / local_batch)
    wanted = local_steps if local_steps is not None else per_epoch * (epochs or 1)
    out: list[torch.Tensor] = []
    while len(out) < wanted:
        order = torch.randperm(m, generator=gen)
        out += list(order.split(local_batch))
    return out[:wanted]


def update_from_weights(sent, returned, *, lr: float, batch_size: int, input_shape,
                        loss: float = math.nan, names: Sequence[str] | nn.Module | None = None) -> Update:
    """The pseudo-gradient a server reads from the weights it sent and got back: ``(sent - returned) / lr``.

    Sign convention: SGD moves the weights *against* the gradient (``returned = sent - lr *
    g`` for one step), so ``sent - returned`` points along the gradient and the attacks
    (label recovery included) read it as a client update.

    Parameters
    ----------
    sent, returned : dict, Flower ``ArrayRecord`` or sequence
        The weights, either mappings of parameter name to tensor, NumPy array or Flower
        ``Array`` (a ``state_dict``, or Flower's ``ArrayRecord`` as a ``ServerApp`` receives
        it), with the same names; or sequences of tensors/arrays in the order of ``names``
        (Flower's ``NDArrays``). A ``_module.`` prefix (Opacus' wrapper) is stripped from
        names. Same shapes, floating dtypes, finite values.
    lr : float
        The client's learning rate, ``> 0``.
    batch_size : int
        Number of examples the client trained on (``>= 1``), e.g. Flower's ``num_examples``.
    input_shape : int or tuple of int
        One sample's shape, e.g. ``(1, 28, 28)``.
    loss : float
        The client's loss if it reported one; NaN (the default) when unknown.
    names : sequence of str or nn.Module, optional
        Required for sequences: the parameter names in order, or the model whose trainable
        parameters (``named_parameters()``) or whole ``state_dict()`` they follow. Given a
        model, only its trainable parameters are kept (buffers such as batch-norm statistics
        and frozen weights are dropped) and each of them must be present.

    Returns
    -------
    Update
        ``gradients`` ``(sent - returned) / lr`` in the weights' dtype (NumPy arrays become
        tensors).

    Raises
    ------
    TypeError
        Weights that are neither dicts nor sequences, entries that are not floating
        tensors/arrays, sequences without ``names``, a parameter of the wrong kind.
    ValueError
        Different names, shapes or dtypes between ``sent`` and ``returned``; a length other
        than ``len(names)`` (or, for a model, than its parameter or ``state_dict`` count); a
        trainable parameter of ``names`` missing; non-finite weights; ``lr <= 0``;
        ``batch_size < 1``.
    """
    lr = check_number("lr", lr, 0.0, lo_open=True)
    batch_size = check_int("batch_size", batch_size, 1)
    input_shape = check_shape("input_shape", input_shape)
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise TypeError(f"loss must be a number (NaN when unknown), got {type(loss).__name__}")
    a = _kept("sent", _named("sent", sent, names), names)
    b = _kept("returned", _named("returned", returned, names), names)
    if set(a) != set(b):
        raise ValueError(f"sent and returned must hold the same parameters: only in sent {sorted(set(a) - set(b))}, "
                         f"only in returned {sorted(set(b) - set(a))}")
    gradients = {}
    for name, w in a.items():
        v = b[name]
        if w.shape != v.shape or w.dtype != v.dtype:
            raise ValueError(f"{name!r} is {tuple(w.shape)} {w.dtype} in sent but {tuple(v.shape)} {v.dtype} in "
                             f"returned: the weights must come from the same model")
        gradients[name] = (w - v) / lr
    return Update(gradients, batch_size, loss, input_shape)


def _named(what: str, weights, names) -> dict[str, torch.Tensor]:
    """Weights as a dict of plain names to finite floating tensors."""
    if isinstance(weights, Mapping):
        items = list(weights.items())
    elif isinstance(weights, Sequence) and not isinstance(weights, (str, bytes)):
        if names is None:
            raise TypeError(f"{what} is a sequence of weights, so pass names= (the parameter names in order, or "
                            f"the model whose named_parameters() they follow)")
        if isinstance(names, nn.Module):
            order = _module_order(check_module("names", names), len(weights))
        elif isinstance(names, Sequence) and not isinstance(names, str) and all(isinstance(n, str) for n in names):
            order = list(names)
        else:
            raise TypeError(f"names must be a sequence of parameter names or an nn.Module, got {type(names).__name__}")
        if len(order) != len(weights):
            raise ValueError(f"{what} holds {len(weights)} tensors but names gives {len(order)} parameters")
        items = list(zip(order, weights))
    else:
        raise TypeError(f"{what} must be a dict of name -> tensor or a list of tensors, got {type(weights).__name__}")
    out: dict[str, torch.Tensor] = {}
    # with a model as names, buffers (e.g. batch-norm counters) and frozen weights are not read
    keep = set(_trainable(names)) if isinstance(names, nn.Module) else None
    for name, w in items:
        if not isinstance(name, str):
            raise TypeError(f"{what} keys must be parameter names (str), got {type(name).__name__}")
        if keep is not None and (name[len(_OPACUS_PREFIX):] if name.startswith(_OPACUS_PREFIX) else name) not in keep:
            continue
        if not isinstance(w, (torch.Tensor, np.ndarray)) and callable(getattr(w, "numpy", None)):
            # a Flower Array (the values of an ArrayRecord)
            w = w.numpy()
        if isinstance(w, np.ndarray):
            w = torch.tensor(w)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"{what}[{name!r}] must be a floating tensor or array, got "
                            f"{getattr(w, 'dtype', type(w).__name__)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"{what}[{name!r}] contains NaN or infinite values")
        plain = name[len(_OPACUS_PREFIX):] if name.startswith(_OPACUS_PREFIX) else name
        if plain in out:
            raise ValueError(f"{what} names {plain!r} twice (with and without the {_OPACUS_PREFIX!r} prefix)")
        out[plain] = w.detach()
    if not out:
        raise ValueError(f"{what} holds no weights")
    return out


def _trainable(model: nn.Module) -> list[str]:
    return [n for n, p in unwrap_opacus(model).named_parameters() if p.requires_grad]


def _module_order(model: nn.Module, count: int) -> list[str]:
    """The names a sequence of ``count`` weights follows: the trainable parameters or the whole state_dict."""
    params, state = _trainable(model), list(unwrap_opacus(model).state_dict().keys())
    if count == len(params):
        return params
    if count == len(state):
        return state
    raise ValueError(f"the weights hold {count} tensors but the model has {len(params)} trainable parameters and "
                     f"{len(state)} state_dict entries: give the weights in named_parameters() or state_dict() order")


def _kept(what: str, weights: dict[str, torch.Tensor], names) -> dict[str, torch.Tensor]:
    """With a model as ``names``: its trainable parameters only, every one of them present."""
    if not isinstance(names, nn.Module):
        return weights
    params = _trainable(names)
    missing = [n for n in params if n not in weights]
    if missing:
        raise ValueError(f"{what} lacks the model's parameters {missing}: the weights must come from this model")
    return {n: weights[n] for n in params}
