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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import Update
from ._common import check_model_update, check_rtol, find_layer, layer_gradient

__all__ = ["LabelRecovery", "recover_labels"]


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
    """

    labels: torch.Tensor
    count: int
    statistic: torch.Tensor
    method: str
    consistent: bool


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
    name, lin = find_layer(model, layer, nn.Linear, last=True)
    if lin.bias is not None and f"{name}.bias" in update.gradients:
        stat = layer_gradient(update, f"{name}.bias", lin.bias)
        method = "sign of the output bias gradient (iDLG)"
    else:
        stat = layer_gradient(update, f"{name}.weight", lin.weight).sum(dim=1)
        method = "sign of the output weight-gradient row sums (iDLG; assumes non-negative layer inputs)"
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
    return LabelRecovery(labels=labels.to(torch.int64), count=count, statistic=stat, method=method,
                         consistent=consistent)
