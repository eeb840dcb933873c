"""A reconstruction checked against a FedAvg pseudo-gradient by re-running the client's local steps.

After ``T`` local SGD steps the server reads ``g = (w_sent - w_returned) / lr``, the sum of
``T`` gradients taken at weights that drift (McMahan et al. 2017). The gradient-residual
check of every attack (:mod:`leakutils.attacks.residual`) compares a reconstruction's *one*
gradient with ``g`` and so rejects even an exact sample. The server, which chose ``lr`` and
``T``, can instead replay the client's training on the reconstructed batch and compare the
pseudo-gradient it gets with ``g`` (the check Dimitrov et al., "Data Leakage in Federated
Averaging", TMLR 2022, build their attack around). With full-batch local steps (always the
case for a client with one example) the replay is deterministic, so agreement to round-off
means the reconstruction explains the whole update.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..core import Reconstruction, Update
from ..validate import check_int, check_module, check_number

__all__ = ["certify", "replay_tolerance"]

#: Round-off allowance, in units of the dtype's eps times the pseudo-gradient's scale.
REPLAY_EPS_FACTOR = 64.0


def replay_tolerance(model: nn.Module, update: Update, *, lr: float, local_steps: int) -> float:
    """The largest entrywise difference two replays of the same local training may show.

    Each pseudo-gradient entry ``(w_sent - w_returned) / lr`` loses ``eps * |w| / lr`` to the
    weights' round-off, and each of ``T`` steps adds ``eps * |g|``: the allowance is
    ``REPLAY_EPS_FACTOR * eps * (max|w| / lr + T * max|g|)``, in gradient units.

    Parameters
    ----------
    model : nn.Module
        The model at the sent weights (their dtype sets ``eps``).
    update : Update
        The pseudo-gradient.
    lr : float
        The clients' learning rate, ``> 0``.
    local_steps : int
        ``T >= 1``.

    Returns
    -------
    float
        The tolerance, ``> 0``.

    Raises
    ------
    TypeError, ValueError
        As :func:`certify`.
    """
    check_module("model", model)
    if not isinstance(update, Update):
        raise TypeError(f"update must be a leakutils Update, got {type(update).__name__}")
    lr = check_number("lr", lr, 0.0, lo_open=True)
    steps = check_int("local_steps", local_steps, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    eps = max(torch.finfo(p.dtype).eps for p in params)
    w = max(float(p.detach().abs().max()) for p in params)
    g = max(float(t.abs().max()) for t in update.gradients.values())
    return REPLAY_EPS_FACTOR * eps * (w / lr + steps * g)


def certify(model: nn.Module, update: Update, reconstruction: Reconstruction, *, lr: float,
            local_steps: int) -> Reconstruction:
    """Mark a reconstruction recovered if replaying ``T`` full-batch local steps on it gives the update.

    The replay (:func:`leakutils.defences.fedavg_update`, plain SGD on the mean
    cross-entropy, full batch) runs on the reconstructed images (in the model's dtype) with
    the reconstructed labels. Every entry of its pseudo-gradient must match ``update`` within
    :func:`replay_tolerance`; then every value is marked determined, otherwise none is.

    Parameters
    ----------
    model : nn.Module
        The model at the weights the server sent, float32 or float64.
    update : Update
        The pseudo-gradient ``(w_sent - w_returned) / lr`` (e.g. from
        :func:`leakutils.defences.update_from_weights`), over ``M`` examples.
    reconstruction : Reconstruction
        ``M`` images of the model's input shape with ``M`` labels (e.g. from the bias ratio).
    lr : float
        The learning rate the server sent, ``> 0``.
    local_steps : int
        The number of full-batch local steps ``T >= 1`` the server configured.

    Returns
    -------
    Reconstruction
        A copy with ``determined`` all True or all False and ``diagnostics["replay"]``: a dict
        with ``local_steps``, ``residual`` (largest entrywise difference, gradient units),
        ``tolerance`` and ``consistent`` (bool), or ``reason`` when no replay was possible
        (image or label count other than ``M``), in which case nothing is marked determined.

    Raises
    ------
    TypeError
        ``model``/``update``/``reconstruction`` of the wrong kind.
    ValueError
        ``lr <= 0``; ``local_steps < 1``.
    """
    from ..defences.local import fedavg_update

    tol = replay_tolerance(model, update, lr=lr, local_steps=local_steps)
    if not isinstance(reconstruction, Reconstruction):
        raise TypeError(f"reconstruction must be a leakutils Reconstruction, got {type(reconstruction).__name__}")
    images, labels = reconstruction.images, reconstruction.labels
    m = update.batch_size
    if images.shape[0] != m or labels is None or labels.numel() != m or \
            tuple(images.shape[1:]) != tuple(update.input_shape):
        return _marked(reconstruction, False, {"local_steps": local_steps, "consistent": False,
                                               "reason": f"a replay needs {m} images of shape {update.input_shape} "
                                                         f"and {m} labels"})
    dtype = next(p for p in model.parameters() if p.requires_grad).dtype
    replay = fedavg_update(model, images.detach().to(dtype), labels.long(), lr=lr, local_steps=local_steps)
    residual = max(float((replay[n] - g).abs().max()) for n, g in update.gradients.items())
    consistent = residual <= tol
    return _marked(reconstruction, consistent, {"local_steps": local_steps, "residual": residual,
                                                "tolerance": tol, "consistent": consistent})


def _marked(rec: Reconstruction, sure: bool, note: dict) -> Reconstruction:
    mask = torch.full_like(rec.determined, sure) if sure else torch.zeros_like(rec.determined)
    if sure and not bool(torch.isfinite(rec.images).all()):
        mask = torch.zeros_like(rec.determined)
        note = {**note, "consistent": False, "reason": "non-finite images"}
    return dataclasses.replace(rec, determined=mask, diagnostics={**rec.diagnostics, "replay": note})
