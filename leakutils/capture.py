"""What a federated-learning client sends: the FedSGD update.

In FedSGD (McMahan et al. 2017) a client computes the gradient of its mean loss over its
batch at the current global weights and sends it to the server. That gradient is all the
gradient-inversion attacks of the course see.
"""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .core import Update
from .validate import check_bool, check_callable, check_labels, check_module, check_tensor

__all__ = ["client_update", "unwrap_opacus"]


def client_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  *, per_sample: bool = False) -> Update:
    """Compute the update a client shares: every parameter's gradient averaged over the batch.

    The model's weights are not changed and its ``.grad`` fields are left untouched; the
    model is used in whatever mode (``train``/``eval``) it is in. A model wrapped by Opacus
    (``GradSampleModule``, from ``PrivacyEngine.make_private``) is read through the module it
    wraps: the same forward pass and weights, parameter names without Opacus' ``_module.``
    prefix (so attacks see the plain model's names), and no per-sample hooks fired.

    Parameters
    ----------
    model : nn.Module
        The global model, as the server sent it (plain or wrapped by Opacus).
    x : torch.Tensor
        The client's private batch, shape ``(M, *input_shape)``, same floating dtype as the
        model (use ``torch.float64`` for exact analytic attacks), values in the data's range.
    y : torch.Tensor
        Labels, shape ``(M,)``, int64 class indices in ``[0, num_classes)`` for the default
        loss; whatever ``loss_fn`` expects otherwise.
    loss_fn : callable, optional
        ``loss_fn(logits, y)`` returning the *mean* loss over the batch (a 0-dim tensor).
        Default: softmax cross-entropy, ``torch.nn.functional.cross_entropy``.
    per_sample : bool
        Also return each sample's own gradient (a teaching aid: a real client sends only the
        average). Costs one backward pass per sample.

    Returns
    -------
    Update
        ``gradients`` (name -> averaged gradient, the parameter's shape and dtype),
        ``batch_size`` M, ``loss`` (mean loss, float), ``input_shape`` and, if requested,
        ``per_sample`` (name -> tensor of shape ``(M, *param.shape)``).

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``; ``x``/``y`` not tensors; ``x`` of a dtype other than the
        model's; labels not int64 (default loss); ``loss_fn`` not callable; ``per_sample`` not
        a bool.
    ValueError
        Empty batch, ``x`` and ``y`` of different lengths, NaN or infinite inputs, labels
        outside the number of classes, a model without trainable parameters, a model that
        does not accept ``x``'s shape or does not return ``(M, classes)`` logits (default
        loss), a loss that is not a finite scalar, gradients that are not finite.
    """
    check_module("model", model)
    wrapper, model = model, unwrap_opacus(model)
    check_tensor("x", x, min_ndim=2, kind=None, finite=False, shape="(M, *input_shape)")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch tensor of labels (M,), got {type(y).__name__}")
    check_bool("per_sample", per_sample)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters, so there is no gradient to share")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have one entry per sample: x has {x.shape[0]}, y has shape {tuple(y.shape)}")
    dtype = params[0][1].dtype
    if x.dtype != dtype:
        raise TypeError(
            f"x is {x.dtype} but the model is {dtype}: convert one of them, e.g. x.to({dtype}) "
            f"or model.to({x.dtype})")
    check_tensor("x", x, shape="(M, *input_shape)")
    if y.is_floating_point() and not torch.isfinite(y).all():
        raise ValueError("y contains NaN or infinite values")
    if loss_fn is None:
        if y.dtype != torch.int64:
            raise TypeError(f"labels for cross-entropy must be int64 class indices, got {y.dtype}; "
                            f"convert with y.long()")
        check_labels("y", y, x.shape[0])
        loss_fn = _cross_entropy
    else:
        check_callable("loss_fn", loss_fn, "loss_fn(logits, y) -> mean loss")

    names = [n for n, _ in params]
    tensors = [p for _, p in params]

    def grads_of(xb, yb):
        try:
            out = model(xb)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(f"the model does not accept inputs of shape {tuple(xb.shape)}: {err}") from None
        loss = loss_fn(out, yb)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError("loss_fn must return a 0-dim tensor: the mean loss over the batch")
        if not torch.isfinite(loss):
            raise ValueError(f"the loss is not finite ({float(loss.detach())}); check the inputs and weights")
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None and not torch.isfinite(g).all():
                raise ValueError(f"the gradient of {n!r} is not finite although the loss is; "
                                 f"check the weights for overflow (use float64)")
        return loss, grads

    with _opacus_hooks_off(wrapper):
        loss, grads = grads_of(x, y)
        gradients = {n: (g if g is not None else torch.zeros_like(p)).detach()
                     for n, p, g in zip(names, tensors, grads)}
        per = None
        if per_sample:
            stacks = {n: [] for n in names}
            for i in range(x.shape[0]):
                _, gi = grads_of(x[i:i + 1], y[i:i + 1])
                for n, p, g in zip(names, tensors, gi):
                    stacks[n].append((g if g is not None else torch.zeros_like(p)).detach())
            per = {n: torch.stack(v) for n, v in stacks.items()}
    return Update(gradients=gradients, batch_size=int(x.shape[0]), loss=float(loss.detach()),
                  input_shape=tuple(x.shape[1:]), per_sample=per)


def unwrap_opacus(model: nn.Module) -> nn.Module:
    """Return the module an Opacus ``GradSampleModule`` wraps, or ``model`` itself.

    The wrapper's forward pass is the wrapped module's, and its parameters are the same
    tensors under names prefixed ``_module.``. Opacus is only looked up if already imported
    (a model cannot be wrapped otherwise), so this costs nothing without it. The wrapper's
    hooks stay registered on the wrapped layers; :func:`client_update` switches them off
    while it runs.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    nn.Module
        The innermost wrapped module (wrappers of wrappers are unwrapped too).

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``.
    """
    check_module("model", model)
    base = sys.modules.get("opacus.grad_sample.gsm_base")
    while base is not None and isinstance(model, base.AbstractGradSampleModule):
        model = model._module
    return model


@contextmanager
def _opacus_hooks_off(model: nn.Module):
    """Switch an Opacus wrapper's per-sample hooks off for the block (no ``grad_sample`` left behind)."""
    enabled = getattr(model, "hooks_enabled", None) if model is not unwrap_opacus(model) else None
    if enabled is None:
        yield
        return
    model.hooks_enabled = False
    try:
        with warnings.catch_warnings():
            # the switched-off full backward hooks still fire; torch notes that x needs no grad
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield
    finally:
        model.hooks_enabled = enabled


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy, with a clear error for labels outside the logits."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"cross-entropy needs logits of shape (M, classes) from the model, got "
                         f"{tuple(getattr(logits, 'shape', ()))}; pass loss_fn for another output")
    check_labels("labels", y, num_classes=logits.shape[-1])
    return F.cross_entropy(logits, y)
