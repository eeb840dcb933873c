"""Secure aggregation: the server sees only the weighted average of its clients' updates.

Under secure aggregation (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017) the clients mask their updates so that the
server can decode only their sum. In FedSGD with example-weighted averaging, what the server
holds is then the gradient of the mean loss over the union of the clients' batches, one
update of ``sum_k M_k`` samples: a batch attack faces a larger batch, nothing more. This
module computes that update from per-client updates (the masking cancels exactly, so it is
not simulated) and splits one batch into client batches to make them.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn

from ..capture import client_update
from ..core import Update
from ..validate import check_int, check_tensor

__all__ = ["secure_aggregation", "client_updates"]


def secure_aggregation(updates: Sequence[Update], *, weights: Sequence[float] | None = None) -> Update:
    """What the server decodes under secure aggregation: the weighted average of the updates.

    ``g = sum_k w_k g_k / sum_k w_k`` per parameter, with ``w_k = M_k`` (the client's batch
    size, FedSGD's example weighting) unless ``weights`` are given. With the default weights
    the result is the gradient of the mean loss over all ``sum_k M_k`` samples, exactly what
    :func:`~leakutils.capture.client_update` returns for the concatenated batch (up to
    round-off).

    Parameters
    ----------
    updates : sequence of Update
        ``K >= 1`` client updates of the same model: the same parameter names, shapes and
        dtypes, and the same ``input_shape``.
    weights : sequence of float, optional
        ``K`` non-negative finite weights with a positive sum (e.g. ``[1] * K`` for an
        unweighted mean). Default: the batch sizes ``M_k``.

    Returns
    -------
    Update
        ``gradients`` the weighted average (the first update's dtypes), ``batch_size`` ``sum_k
        M_k`` (whatever the weights), ``loss`` the weighted mean of the clients' losses,
        ``input_shape`` theirs. ``per_sample`` is the concatenation of the clients'
        per-sample gradients when every update has them and the default weights are used
        (their mean is then the averaged gradient), else None.

    Raises
    ------
    TypeError
        ``updates`` not a sequence of :class:`Update`; ``weights`` not a sequence of numbers.
    ValueError
        No updates; updates of different parameter names, shapes, dtypes or input shapes;
        ``weights`` of another length than ``updates``, negative, not finite, or summing to 0.
    """
    if isinstance(updates, Update) or not isinstance(updates, Sequence) or isinstance(updates, (str, bytes)):
        raise TypeError(f"updates must be a list of Update objects (one per client), got {type(updates).__name__}")
    updates = list(updates)
    if not updates:
        raise ValueError("updates is empty: secure aggregation needs at least one client's update")
    for k, u in enumerate(updates):
        if not isinstance(u, Update):
            raise TypeError(f"updates[{k}] must be a leakutils Update (from capture.client_update), got "
                            f"{type(u).__name__}")
    first = updates[0]
    for k, u in enumerate(updates[1:], start=1):
        _check_same(first, u, k)
    w = _weights(weights, updates)
    total = math.fsum(w)
    gradients = {}
    for name, g0 in first.gradients.items():
        acc = torch.zeros_like(g0, dtype=torch.float64)
        for wk, u in zip(w, updates):
            acc += wk * u.gradients[name].detach().double()
        gradients[name] = (acc / total).to(g0.dtype)
    loss = math.fsum(wk * u.loss for wk, u in zip(w, updates)) / total
    per_sample = None
    if weights is None and all(u.per_sample is not None for u in updates) \
            and all(set(u.per_sample) == set(first.gradients) for u in updates):
        per_sample = {name: torch.cat([u.per_sample[name] for u in updates]) for name in first.gradients}
    return Update(gradients, sum(u.batch_size for u in updates), loss, first.input_shape, per_sample)


def _check_same(first: Update, other: Update, k: int) -> None:
    """Refuse an update that does not come from the same model as the first."""
    if set(other.gradients) != set(first.gradients):
        missing = sorted(set(first.gradients) - set(other.gradients))
        extra = sorted(set(other.gradients) - set(first.gradients))
        raise ValueError(f"updates[{k}] has other parameter names than updates[0] (missing {missing}, extra "
                         f"{extra}): every client must send an update of the same model")
    for name, g in first.gradients.items():
        h = other.gradients[name]
        if h.shape != g.shape or h.dtype != g.dtype:
            raise ValueError(f"updates[{k}][{name!r}] is {tuple(h.shape)} {h.dtype} but updates[0][{name!r}] is "
                             f"{tuple(g.shape)} {g.dtype}: every client must send an update of the same model")
    if other.input_shape != first.input_shape:
        raise ValueError(f"updates[{k}] has input_shape {other.input_shape} but updates[0] has "
                         f"{first.input_shape}: every client must train on inputs of the same shape")


def _weights(weights, updates: list[Update]) -> list[float]:
    """The aggregation weights: the batch sizes, or the given ones checked."""
    if weights is None:
        return [float(u.batch_size) for u in updates]
    if isinstance(weights, torch.Tensor):
        weights = weights.tolist()
    if not isinstance(weights, Sequence) or isinstance(weights, (str, bytes)):
        raise TypeError(f"weights must be a sequence of numbers (one per update), got {type(weights).__name__}")
    if len(weights) != len(updates):
        raise ValueError(f"weights must have one entry per update: {len(updates)} updates, {len(weights)} weights")
    out = []
    for k, wk in enumerate(weights):
        if isinstance(wk, bool) or not isinstance(wk, numbers.Real):
            raise TypeError(f"weights[{k}] must be a number, got {type(wk).__name__}")
        if not math.isfinite(wk) or wk < 0:
            raise ValueError(f"weights must be finite and non-negative, got weights[{k}] = {wk}")
        out.append(float(wk))
    if math.fsum(out) <= 0:
        raise ValueError("weights sum to 0: give at least one client a positive weight")
    return out


def client_updates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clients: int) -> list[Update]:
    """Split one batch into ``clients`` equal client batches and capture each client's update.

    Client ``k`` (``0..K-1``) holds the contiguous rows ``x[k*M/K : (k+1)*M/K]`` (no
    shuffling: shuffle ``x`` and ``y`` together first for random clients). Each update is
    :func:`~leakutils.capture.client_update` of its rows with the default cross-entropy, so
    ``secure_aggregation(client_updates(model, x, y, K))`` equals ``client_update(model, x,
    y)`` up to round-off.

    Parameters
    ----------
    model : nn.Module
        The global model every client receives.
    x : torch.Tensor
        ``(M, *input_shape)``, the model's dtype.
    y : torch.Tensor
        ``(M,)`` int64 labels.
    clients : int
        ``K``, from 1 to ``M``, dividing ``M``.

    Returns
    -------
    list of Update
        ``K`` updates of ``M / K`` samples each, in client order.

    Raises
    ------
    TypeError
        ``clients`` not an integer; the inputs as :func:`~leakutils.capture.client_update`.
    ValueError
        ``clients`` outside ``1..M`` or not dividing ``M``; the inputs as
        :func:`~leakutils.capture.client_update`.
    """
    check_tensor("x", x, min_ndim=2, kind=None, finite=False, shape="(M, *input_shape)")
    m = int(x.shape[0])
    clients = check_int("clients", clients, 1, m)
    if m % clients:
        raise ValueError(f"clients must divide the batch size: {m} samples cannot be split into {clients} equal "
                         f"client batches; use a divisor of {m} or trim the batch")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch tensor of labels (M,), got {type(y).__name__}")
    if y.ndim == 0 or y.shape[0] != m:
        raise ValueError(f"y must have one entry per sample: x has {m}, y has shape {tuple(y.shape)}")
    size = m // clients
    return [client_update(model, x[k * size:(k + 1) * size], y[k * size:(k + 1) * size]) for k in range(clients)]
