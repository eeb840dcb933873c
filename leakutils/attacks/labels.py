"""Label recovery from the output layer's gradient (iDLG, Zhao et al. 2020).

With softmax cross-entropy the gradient of the logits of one sample is its loss vector
``g = softmax(z) - onehot(y)``: every entry is positive except the true class's, which is
``p_y - 1 < 0``. The output layer's bias gradient is ``g`` itself, so the label is the one
negative entry. Without a bias, the weight-gradient row ``c`` is ``g_c a^T`` with ``a`` the
layer's input; when ``a >= 0`` (after ReLU or sigmoid) the row sums have the signs of ``g``.

For a batch the averaged bias gradient is ``mean_i g^i``: a class absent from the batch has a
positive entry, so every negative entry is a class of the batch. Their count is a lower
bound on the number of distinct labels (a class can be masked when the model already
predicts it with high probability for other samples).

The row-sum rule of a bias-free output layer needs non-negative layer inputs. It is applied
only when the module the forward pass calls just before the output layer (looking through
sign-preserving modules such as ``Flatten``, ``Dropout`` or pooling) is one of
:data:`NONNEGATIVE`; otherwise (tanh, LeakyReLU, a ``torch.relu`` written in ``forward`` that
no module shows) no label is returned and the result says why.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import Update
from ._common import called_before, check_model_update, check_rtol, find_layer, layer_gradient

__all__ = ["LabelRecovery", "recover_labels", "NONNEGATIVE"]

#: Activation modules whose outputs are never negative: after them the iDLG row-sum rule holds.
NONNEGATIVE = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, nn.Softmax)
#: Modules that keep the sign of every value (looked through when finding the activation).
_SIGN_PRESERVING = (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d,
                    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class LabelRecovery:
    """Labels read off the output layer's gradient.

    Attributes
    ----------
    labels : torch.Tensor
        int64. One sample: shape ``(1,)``. Batch: the distinct classes with a negative
        statistic, most negative first.
    count : int
        Number of negative entries (the number of distinct labels revealed).
    statistic : torch.Tensor
        float64, shape ``(num_classes,)``: the bias gradient, or the weight-gradient row sums.
    method : str
        Which rule was used.
    consistent : bool
        For one sample: whether exactly one entry was negative, as softmax cross-entropy
        guarantees. False hints at another loss or at inputs to the layer that can be negative.
    certain : bool
        Whether the sign rule applies: always with an output bias; without one, only when the
        layer's inputs are known to be non-negative. When False, ``labels`` is empty (no
        label is claimed) and ``candidate`` holds what the rule would have said.
    candidate : torch.Tensor
        int64: the label(s) the sign rule gives, whether or not it applies.
    note : str
        Why the result is uncertain; empty when certain.
    """

    labels: torch.Tensor
    count: int
    statistic: torch.Tensor
    method: str
    consistent: bool
    certain: bool = True
    candidate: torch.Tensor | None = None
    note: str = ""


def recover_labels(model: nn.Module, update: Update, layer: str | None = None, *,
                   rtol: float = 1e-10) -> LabelRecovery:
    """Recover the labels of the batch behind ``update`` from the output layer's gradient.

    Parameters
    ----------
    model : nn.Module
        The attacked model (its output layer is its last ``nn.Linear`` unless ``layer``).
    update : Update
        From :func:`leakutils.capture.client_update` with softmax cross-entropy.
    layer : str, optional
        Name of the output layer.
    rtol : float
        An entry counts as negative when below ``-rtol * max|statistic|``.

    Returns
    -------
    LabelRecovery
        ``labels`` empty and ``certain`` False when the layer has no bias and its inputs may
        be negative (the sign rule does not hold there).

    Raises
    ------
    TypeError
        Wrong argument types; the named layer is not ``nn.Linear``.
    ValueError
        No output layer, a gradient missing or of the wrong shape, or a zero gradient (no
        label information at all).
    """
    check_model_update(model, update)
    rtol = check_rtol(rtol)
    name, lin = find_layer(model, layer, nn.Linear, last=True, input_shape=update.input_shape)
    note = ""
    if lin.bias is not None and f"{name}.bias" in update.gradients:
        stat = layer_gradient(update, f"{name}.bias", lin.bias)
        method = "sign of the output bias gradient (iDLG)"
    else:
        stat = layer_gradient(update, f"{name}.weight", lin.weight).sum(dim=1)
        method = "sign of the output weight-gradient row sums (iDLG; assumes non-negative layer inputs)"
        note = _nonnegative_inputs(model, lin, name, update.input_shape)
    scale = float(stat.abs().max())
    if scale == 0.0:
        raise ValueError(f"the gradient of the output layer {name!r} is zero, so it reveals no label "
                         f"(a loss of exactly zero?)")
    negative = torch.nonzero(stat < -rtol * scale).flatten()
    negative = negative[torch.argsort(stat[negative])]
    count = int(negative.numel())
    if update.batch_size == 1:
        labels = torch.argmin(stat).reshape(1)
        consistent = count == 1
    else:
        labels = negative
        method = method.replace("(iDLG", "(negative entries, iDLG")
        consistent = count <= update.batch_size
    candidate = labels.to(torch.int64)
    if note:
        labels = torch.empty(0, dtype=torch.int64)
        consistent = False
    return LabelRecovery(labels=labels.to(torch.int64), count=count, statistic=stat, method=method,
                         consistent=consistent, certain=not note, candidate=candidate, note=note)


def _nonnegative_inputs(model: nn.Module, lin: nn.Module, name: str, input_shape) -> str:
    """Empty when the output layer's inputs are known to be >= 0; else the reason they are not."""
    for mod in called_before(model, lin, input_shape):
        if isinstance(mod, NONNEGATIVE):
            return ""
        if not isinstance(mod, _SIGN_PRESERVING):
            return (f"the output layer {name!r} has no bias and its inputs come from a "
                    f"{type(mod).__name__}, which can be negative: the sign of the row sums does not "
                    f"give the label (iDLG needs non-negative inputs), so no label is returned")
    return (f"the output layer {name!r} has no bias and no non-negative activation module feeds it: "
            f"the row-sum rule of iDLG needs non-negative inputs, so no label is returned")
