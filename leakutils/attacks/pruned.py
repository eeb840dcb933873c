"""The bias ratio of a pruned update: read only the entries that survived.

Gradient pruning (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019, Sec. 5) sets the
smallest entries of each shared gradient to exactly 0. Those zeros are *missing values*,
not measurements. For one sample through ``z = W x + b`` every entry is a product,
``dl/dW[m, j] = dl/db_m x_j``, so each entry that survived in a row whose bias gradient also
survived gives a pixel exactly: ``x_j = dl/dW[m, j] / dl/db_m``. Magnitude pruning removes
the smallest products first, so the pixels with no surviving entry are bounded:
``|x_j| <= t / max_m |dl/db_m|``, with ``t`` the largest magnitude pruned (at most the
smallest kept).

:func:`reconstruct` takes each pixel from its surviving entry in the row with the largest
surviving ``|dl/db_m|`` and sets the others to 0. It certifies only what the update
proves: the surviving entries must be explained by one rank-one product ``dl/db x^T`` to
round-off, and the image with the best label must reproduce the whole update as pruning
would leave it: every surviving entry of every layer to round-off, every pruned entry no
larger than the smallest entry kept in its tensor. A batch, noise, quantisation (a 1-bit
update is rank-one too, with the wrong magnitudes) or too many unread pixels fail that, and
nothing is determined; otherwise exactly the pixels with a surviving entry are, and the
others are reported with their bound.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Reconstruction, Update
from ._common import check_model_update, feeds_on_input, find_layer, layer_gradient
from .labels import recover_labels

__all__ = ["reconstruct", "ROUNDOFF_FACTOR"]

#: A surviving entry agrees with the rank-one product when it differs from
#: ``dl/db_m x_j`` by at most this many ``eps`` (of the update's dtype) times ``|dl/dW[m, j]|``
#: plus ``eps`` times the row's largest entry.
ROUNDOFF_FACTOR = 64.0


def reconstruct(model: nn.Module, update: Update, layer: str | None = None) -> Reconstruction:
    """Rebuild one sample from a pruned update of a fully connected layer.

    Parameters
    ----------
    model : nn.Module
        The attacked model (the layer's shape and position are read from it).
    update : Update
        One client's update of one sample, possibly pruned (exact zeros are missing values).
    layer : str, optional
        Name of the ``nn.Linear`` layer to read; default: the first one the forward pass calls.

    Returns
    -------
    Reconstruction
        ``images`` float64 ``(1, *update.input_shape)`` when the layer sees the model's input,
        else ``(1, in_features)``; ``labels`` None; ``determined`` True at the pixels with a
        surviving entry, and only when every surviving entry of the live rows agrees with the
        rank-one product (:data:`ROUNDOFF_FACTOR`) and the image reproduces the pruned update
        (see the module's docstring); all False otherwise. When the layer sees the model's
        input, ``labels`` is the label that reproduces the update best, int64 ``(1,)``.
        ``diagnostics``: ``layer``, ``live_rows`` (rows whose bias gradient survived),
        ``pixels_read`` (pixels with a surviving entry), ``rank_one`` (the first check),
        ``reproduces_update`` (the second; None when the layer is not the model's first),
        ``consistent`` (both), ``worst_relative_disagreement`` (largest
        ``|dl/dW[m, j] - dl/db_m x_j|`` over ``|dl/dW[m, j]|`` among surviving entries),
        ``bound`` (float64 ``(in_features,)``: 0 where read, else the largest ``|x_j|`` that
        magnitude pruning allows, ``inf`` where nothing bounds it), ``seconds``.

    Raises
    ------
    TypeError
        ``model``/``update`` of the wrong type; the named layer is not ``nn.Linear``.
    ValueError
        A layer without bias; an update of more than one sample (the products then mix
        samples; use ExAN); every bias gradient pruned or zero; gradients missing or of the
        wrong shape.
    """
    t0 = time.perf_counter()
    check_model_update(model, update)
    name, lin = find_layer(model, layer, nn.Linear, input_shape=update.input_shape,
                           hint="The pruned ratio reads a fully connected layer (nn.Linear).")
    if lin.bias is None:
        raise ValueError(f"layer {name!r} has no bias, so no entry can be divided by dl/db; attack a layer "
                         f"with a bias")
    if update.batch_size != 1:
        raise ValueError(f"this update averages {update.batch_size} samples: its entries mix them, so no "
                         f"single entry gives a pixel. Use the ExAN attack (Chapter 4) for batches.")
    dW = layer_gradient(update, f"{name}.weight", lin.weight)
    db = layer_gradient(update, f"{name}.bias", lin.bias)
    live = db != 0
    if not bool(live.any()):
        raise ValueError(f"every bias gradient of {name!r} is 0 (pruned, or every unit dead): no row can "
                         f"be divided; try another layer")
    alive = (dW != 0) & live[:, None]
    # each pixel's surviving entry in the row with the strongest surviving bias gradient
    strength = torch.where(alive, db.abs()[:, None].expand_as(dW), torch.zeros_like(dW))
    best = strength.argmax(0)
    cols = torch.arange(dW.shape[1])
    read = alive[best, cols]
    x = torch.where(read, dW[best, cols] / torch.where(live[best], db[best], torch.ones_like(db[best])),
                    torch.zeros(dW.shape[1], dtype=dW.dtype))
    eps = torch.finfo(update.gradients[f"{name}.weight"].dtype).eps
    # every surviving entry of a live row against the rank-one product
    predicted = db[:, None] * x[None, :]
    gap = (dW - predicted).abs()
    allow = ROUNDOFF_FACTOR * eps * (dW.abs() + dW.abs().amax(1, keepdim=True))
    worst = float((gap / dW.abs().clamp_min(torch.finfo(dW.dtype).tiny))[alive].max()) if alive.any() else 0.0
    rank_one = bool((gap <= allow)[alive].all())
    bound = _bound(dW, db, read)
    on_input = feeds_on_input(model, name, lin.in_features, update.input_shape)
    images = x.reshape(1, *update.input_shape) if on_input else x.reshape(1, -1)
    label, reproduces = None, None
    if on_input:
        label, reproduces = _reproduces(model, update, images)
    consistent = rank_one and reproduces is not False
    determined = (read & consistent).reshape(images.shape)
    diagnostics = {"layer": name, "live_rows": int(live.sum()), "pixels_read": int(read.sum()),
                   "rank_one": rank_one, "reproduces_update": reproduces, "consistent": consistent,
                   "worst_relative_disagreement": worst, "bound": bound, "seconds": time.perf_counter() - t0}
    return Reconstruction(images=images, labels=label, determined=determined, diagnostics=diagnostics,
                          attack="pruned_ratio")


def _reproduces(model: nn.Module, update: Update, images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The label whose update best matches the shared one, and whether it reproduces it as pruned.

    Every class is tried (softmax cross-entropy); the update of ``(images, label)`` must equal
    each surviving (non-zero) shared entry to ``ROUNDOFF_FACTOR`` eps of the tensor's largest
    entry, and stay within the smallest kept magnitude of its tensor where the shared entry
    is 0 (pruned, or exactly 0).
    """
    net = copy.deepcopy(model).to(torch.float64)
    params = dict(net.named_parameters())
    names = [n for n in update.gradients if n in params]
    with torch.no_grad():
        classes = net(images).shape[-1]
    # per shared tensor, once: its surviving entries and the allowances of both checks
    checks = []
    for n in names:
        shared = update.gradients[n].detach().to(torch.float64)
        eps = torch.finfo(update.gradients[n].dtype).eps
        top = float(shared.abs().max())
        kept = shared != 0
        ceiling = float(shared.abs()[kept].min()) if bool(kept.any()) else 0.0
        checks.append((shared, kept, bool(kept.any()), bool((~kept).any()), eps, top, ceiling))
    best, best_gap = None, float("inf")
    # the label the output layer's gradient reveals first (iDLG), then every other class;
    # a label that reproduces the update ends the search (two labels cannot both: their
    # output-layer gradients differ by 1 in two entries)
    for k in _label_order(model, update, classes):
        label = torch.tensor([k])
        loss = F.cross_entropy(net(images), label)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        worst = 0.0
        for g, (shared, kept, any_kept, any_pruned, eps, top, ceiling) in zip(grads, checks):
            g = torch.zeros_like(shared) if g is None else g.detach()
            gap = (g - shared).abs()
            if any_kept:
                tol = ROUNDOFF_FACTOR * eps * top + 1e-300
                worst = max(worst, float(gap[kept].max()) / tol)
            if any_pruned:
                tol = ceiling + ROUNDOFF_FACTOR * eps * max(top, float(g.abs().max()))
                worst = max(worst, float(g.abs()[~kept].max()) / (tol + 1e-300))
        if worst < best_gap:
            best, best_gap = label, worst
        if best_gap <= 1.0:
            break
    return best, best_gap <= 1.0


def _label_order(model: nn.Module, update: Update, classes: int) -> list[int]:
    """Every class, the ones the output layer's gradient reveals (iDLG) first."""
    try:
        first = [int(k) for k in recover_labels(model, update).labels.tolist() if 0 <= int(k) < classes]
    except (TypeError, ValueError):
        # no readable output layer (pruned to nothing, or none): try the classes in order
        first = []
    return first + [k for k in range(classes) if k not in first]


def _bound(dW: torch.Tensor, db: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """Largest ``|x_j|`` magnitude pruning allows at each unread pixel (0 where read)."""
    kept = dW[dW != 0].abs()
    if kept.numel() == 0 or not bool((dW == 0).any()):
        return torch.where(read, torch.zeros_like(read, dtype=dW.dtype), torch.full_like(read, float("inf"), dtype=dW.dtype))
    # a pruned entry was no larger than the smallest kept one
    threshold = float(kept.min())
    top = float(db.abs().max())
    limit = threshold / top if top > 0 else float("inf")
    return torch.where(read, torch.zeros(read.shape, dtype=dW.dtype),
                       torch.full(read.shape, limit, dtype=dW.dtype))
