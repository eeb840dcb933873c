"""A malicious server's imprint block and its attack (Fowl et al., "Robbing the Fed", ICLR 2022).

A server that may change the model puts a block in front of it: a linear layer ``imprint``
of ``k`` identical rows ``w`` (a statistic of the input, by default its mean brightness)
with biases ``-t_0 > -t_1 > ... > -t_{k-1}`` at quantiles of that statistic over public
data, a ReLU, and a linear layer ``spread`` of all-ones weights back to the input's size.
For a sample ``x`` with statistic ``s = w . x``, unit ``j`` is active iff ``s > t_j``,
and since every unit feeds ``spread`` with the same weights, the loss's derivative
``c(x, y)`` is the same for every active unit. Over a batch of ``M`` the mean gradients are

    dW_j = (1/M) sum_{i: s_i > t_j} c_i x_i,        db_j = (1/M) sum_{i: s_i > t_j} c_i,

so the difference of consecutive units holds the samples with ``t_j < s_i <= t_{j+1}``
only: a sample alone in its bin comes back exactly as ``(dW_j - dW_{j+1}) / (db_j -
db_{j+1})``, whatever the batch size. Several samples in one bin give their weighted mean.

What is marked recovered has passed a check no mean of two samples passes by more than
chance: the attacker recomputes the candidate's own ``c(x, y)`` for every label ``y`` and
requires ``M (db_j - db_{j+1})`` to equal one of them (which also gives the label).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Reconstruction, Update
from ..validate import check_int, check_module, check_shape, check_tensor

__all__ = ["ImprintBlock", "thresholds", "malicious_model", "expected_alone", "reconstruct"]

#: Round-off allowance of the label check, in units of the dtype's eps.
CHECK_EPS_FACTOR = 1e4


class ImprintBlock(nn.Module):
    """``flatten -> imprint (k identical rows) -> ReLU -> spread (all ones) -> reshape``.

    Parameters
    ----------
    input_shape : tuple of int
        One sample's shape, e.g. ``(1, 28, 28)``; ``D`` its number of values.
    cuts : torch.Tensor
        ``(k,)`` increasing thresholds ``t_j`` of the statistic (:func:`thresholds`), ``k >= 2``.
    measurement : torch.Tensor, optional
        ``(D,)`` the row ``w``; default ``1 / D`` everywhere (mean brightness).
    dtype : torch.dtype
        Of the block's weights (float64 for exact recovery).

    Raises
    ------
    TypeError, ValueError
        A bad shape, thresholds not increasing or not finite, a measurement of the wrong
        size.
    """

    def __init__(self, input_shape, cuts: torch.Tensor, measurement: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.input_shape = check_shape("input_shape", input_shape)
        d = math.prod(self.input_shape)
        cuts = check_tensor("cuts", cuts, min_ndim=1, shape="(k,)").to(dtype)
        if cuts.ndim != 1 or cuts.numel() < 2 or not bool((cuts[1:] > cuts[:-1]).all()):
            raise ValueError("cuts must be k >= 2 strictly increasing thresholds (use thresholds(public_images, k))")
        if measurement is None:
            measurement = torch.full((d,), 1.0 / d, dtype=dtype)
        measurement = check_tensor("measurement", measurement, min_ndim=1, shape="(D,)").to(dtype).flatten()
        if measurement.numel() != d:
            raise ValueError(f"measurement must have {d} values (one per input value), got {measurement.numel()}")
        k = cuts.numel()
        self.imprint = nn.Linear(d, k, dtype=dtype)
        self.spread = nn.Linear(k, d, dtype=dtype)
        with torch.no_grad():
            self.imprint.weight.copy_(measurement.expand(k, d))
            self.imprint.bias.copy_(-cuts)
            self.spread.weight.fill_(1.0)
            self.spread.bias.zero_()

    @property
    def bins(self) -> int:
        """The number of bins ``k``."""
        return self.imprint.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.imprint(x.flatten(1)))
        return self.spread(h).reshape(x.shape[0], *self.input_shape)


def thresholds(public_images: torch.Tensor, bins: int, measurement: torch.Tensor | None = None) -> torch.Tensor:
    """Thresholds at the quantiles ``j / k`` of the statistic over public data, so each bin holds ``1/k`` of it.

    Parameters
    ----------
    public_images : torch.Tensor
        ``(N, *input_shape)``, N >= 2, data the server may hold (not the clients').
    bins : int
        ``k``, 2..100000.
    measurement : torch.Tensor, optional
        As :class:`ImprintBlock`; default the mean brightness.

    Returns
    -------
    torch.Tensor
        ``(k,)`` float64, strictly increasing; ``t_0`` lies below every public value.

    Raises
    ------
    TypeError, ValueError
        Bad images or a bin count out of range; too few distinct values for ``k`` bins.
    """
    x = check_tensor("public_images", public_images, min_ndim=2, shape="(N, *input_shape)").double().flatten(1)
    k = check_int("bins", bins, 2, 100_000)
    if x.shape[0] < 2:
        raise ValueError("public_images needs at least 2 images to estimate quantiles")
    w = torch.full((x.shape[1],), 1.0 / x.shape[1], dtype=torch.float64) if measurement is None \
        else measurement.double().flatten()
    s = x @ w
    q = torch.quantile(s, torch.arange(k, dtype=torch.float64) / k)
    span = float(s.max() - s.min()) or 1.0
    q[0] = s.min() - span
    if not bool((q[1:] > q[:-1]).all()):
        raise ValueError(f"the public data's statistic has too few distinct values for {k} bins; use fewer bins")
    return q


def malicious_model(model: nn.Module, public_images: torch.Tensor, bins: int,
                    measurement: torch.Tensor | None = None) -> nn.Sequential:
    """``nn.Sequential(ImprintBlock, model)``: the model a malicious server sends.

    Parameters
    ----------
    model : nn.Module
        Any model taking ``(B, *input_shape)`` inputs (its dtype is the block's).
    public_images : torch.Tensor
        ``(N, *input_shape)`` public data for the thresholds.
    bins : int
        ``k`` bins, 2..100000.
    measurement : torch.Tensor, optional
        As :class:`ImprintBlock`.

    Returns
    -------
    nn.Sequential
        Children ``"0"`` (the block; parameters ``0.imprint.weight`` etc.) and ``"1"`` (model).

    Raises
    ------
    TypeError, ValueError
        As :func:`thresholds` and :class:`ImprintBlock`; a model without parameters.
    """
    check_module("model", model)
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters; give the network the block is put in front of")
    shape = tuple(public_images.shape[1:]) if isinstance(public_images, torch.Tensor) else ()
    cuts = thresholds(public_images, bins, measurement)
    return nn.Sequential(ImprintBlock(shape, cuts, measurement, dtype=params[0].dtype), model)


def expected_alone(batch_size: int, bins: int) -> float:
    """Expected number of a batch's samples alone in their bin: ``M (1 - 1/k)^(M-1)``.

    With bins of equal mass ``1/k`` (thresholds at the data's quantiles) and ``M`` samples
    drawn independently from the same distribution, a sample shares its bin with none of
    the other ``M - 1`` with probability ``(1 - 1/k)^(M-1)``.

    Raises
    ------
    TypeError, ValueError
        ``batch_size`` or ``bins`` not an integer >= 1 (bins >= 2).
    """
    m = check_int("batch_size", batch_size, 1)
    k = check_int("bins", bins, 2)
    return m * (1.0 - 1.0 / k) ** (m - 1)


def _find_block(model: nn.Module) -> tuple[str, ImprintBlock]:
    for name, module in model.named_modules():
        if isinstance(module, ImprintBlock):
            return name, module
    raise ValueError("the model holds no ImprintBlock: the imprint attack needs the malicious model "
                     "(malicious_model(model, public_images, bins))")


def _grad_name(prefix: str, leaf: str) -> str:
    return f"{prefix}.imprint.{leaf}" if prefix else f"imprint.{leaf}"


def reconstruct(model: nn.Module, update: Update, *, num_classes: int | None = None) -> Reconstruction:
    """Rebuild every sample alone in its bin from the imprint block's gradients.

    Parameters
    ----------
    model : nn.Module
        The malicious model (with an :class:`ImprintBlock`, e.g. :func:`malicious_model`),
        at the weights the update was computed at; softmax cross-entropy, mean-reduced.
    update : Update
        The client's averaged gradients (float32 or float64; the attack computes in
        float64); its ``batch_size`` M is used by the check.
    num_classes : int, optional
        Labels tried by the check; default the model's number of outputs.

    Returns
    -------
    Reconstruction
        One image per bin difference that holds data (``(R, *input_shape)``, float64),
        ``labels`` ``(R,)`` (-1 where the check found none), ``determined`` True for the
        samples that passed the check. ``diagnostics``: ``bins``, ``occupied`` (bin
        differences holding data), ``recovered``, ``expected_alone`` (for the update's
        ``M``), ``check`` (per image: relative mismatch of the best label), ``batch_size``.

    Raises
    ------
    TypeError
        ``model``/``update`` of the wrong kind.
    ValueError
        No ImprintBlock; the update lacks its gradients.
    """
    check_module("model", model)
    if not isinstance(update, Update):
        raise TypeError(f"update must be a leakutils Update, got {type(update).__name__}")
    prefix, block = _find_block(model)
    try:
        dw = update.gradients[_grad_name(prefix, "weight")].double()
        db = update.gradients[_grad_name(prefix, "bias")].double()
    except KeyError:
        raise ValueError(f"the update has no gradients of {_grad_name(prefix, 'weight')!r} and "
                         f"{_grad_name(prefix, 'bias')!r}: was it captured from this malicious model?") from None
    eps = torch.finfo(update.gradients[_grad_name(prefix, "bias")].dtype).eps
    # bin j holds the samples between t_j and t_{j+1}: consecutive differences, the last unit alone
    ddw = torch.cat([dw[:-1] - dw[1:], dw[-1:]])
    ddb = torch.cat([db[:-1] - db[1:], db[-1:]])
    floor = CHECK_EPS_FACTOR * eps * float(db.abs().max())
    occupied = (ddb.abs() > floor).nonzero().flatten()
    images = (ddw[occupied] / ddb[occupied, None]).reshape(-1, *block.input_shape)
    labels, sure, mismatch = _check(model, block, update, images, ddb[occupied], eps, num_classes)
    determined = sure.reshape(-1, *([1] * len(block.input_shape))).expand_as(images).clone()
    return Reconstruction(images=images, labels=labels, determined=determined,
                          diagnostics={"bins": block.bins, "occupied": int(occupied.numel()),
                                       "recovered": int(sure.sum()), "batch_size": update.batch_size,
                                       "expected_alone": expected_alone(update.batch_size, block.bins),
                                       "check": mismatch, "bin_index": occupied.tolist()},
                          attack="imprint")


def _check(model, block: ImprintBlock, update: Update, images: torch.Tensor, diffs: torch.Tensor, eps: float,
           num_classes):
    """For each candidate: the label whose own c(x, y) equals M times its bin difference, if any."""
    net_dtype = next(model.parameters()).dtype
    n = images.shape[0]
    labels = torch.full((n,), -1, dtype=torch.int64)
    sure = torch.zeros(n, dtype=torch.bool)
    mismatch: list[float] = []
    if n == 0:
        return labels, sure, mismatch
    with torch.no_grad():
        out = model(images.to(net_dtype))
    classes = out.shape[1] if num_classes is None else check_int("num_classes", num_classes, 2)
    for r in range(n):
        x = images[r:r + 1].to(net_dtype).requires_grad_(True)
        best = math.inf
        for y in range(classes):
            loss = F.cross_entropy(model(x), torch.tensor([y]))
            # c(x, y): the derivative of the loss with respect to any active unit's output
            (g,) = torch.autograd.grad(loss, block.imprint.bias)
            c = float(g[g != 0][0]) if bool((g != 0).any()) else 0.0
            target = update.batch_size * float(diffs[r])
            rel = abs(c - target) / max(abs(target), 1e-300)
            if rel < best:
                best, labels[r] = rel, y
        mismatch.append(best)
        sure[r] = best <= CHECK_EPS_FACTOR * eps
    labels[~sure] = -1
    return labels, sure, mismatch
