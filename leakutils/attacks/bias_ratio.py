"""Bias-ratio inversion of a fully connected layer (Phong et al. 2018; R-GAP; R-CONV).

For a linear layer ``z = W x + b`` and one sample, the chain rule gives
``dl/dW[m, :] = dl/dz_m * x`` and ``dl/db_m = dl/dz_m``. Every row ``m`` with
``dl/db_m != 0`` therefore holds the input, scaled: ``x = dl/dW[m, :] / dl/db_m``.
:func:`reconstruct` uses all rows whose bias gradient is above a tolerance and solves the
least-squares problem ``min_x sum_m ||dl/dW[m, :] - dl/db_m x||^2``, whose solution is

    x = sum_m dl/db_m dl/dW[m, :] / sum_m (dl/db_m)^2.

For a batch of M samples averaged together (FedSGD), row ``m`` holds
``sum_i g_im x_i / sum_i g_im``: a mixture of the batch, different for every row.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..core import Reconstruction, Update
from ._common import check_model_update, check_rtol, feeds_on_input, find_layer, layer_gradient
from .labels import recover_labels

__all__ = ["reconstruct", "row_inputs", "layer_input_gradient"]

_HINT = "The bias ratio inverts a fully connected layer (nn.Linear); for conv layers see Chapter 3."


def _layer_gradients(model, update, layer):
    check_model_update(model, update)
    name, lin = find_layer(model, layer, nn.Linear, hint=_HINT)
    if lin.bias is None:
        raise ValueError(
            f"layer {name!r} has no bias, so there is no dl/db to divide by. Attack a layer with a "
            f"bias, or, for bias-free networks, use the ExAN attack (Chapter 4).")
    dW = layer_gradient(update, f"{name}.weight", lin.weight)
    db = layer_gradient(update, f"{name}.bias", lin.bias)
    return name, lin, dW, db


def _rows(db: torch.Tensor, name: str, rtol: float) -> torch.Tensor:
    scale = float(db.abs().max())
    if scale == 0.0:
        raise ValueError(
            f"the bias gradient of {name!r} is zero: no row carries the input (every unit dead for "
            f"this input, or a loss of exactly zero). Try another layer or another model state.")
    return torch.nonzero(db.abs() > rtol * scale).flatten()


def reconstruct(model: nn.Module, update: Update, layer: str | None = None, *, rtol: float = 1e-6,
                allow_batch: bool = False, labels: bool = True, diagnose: bool = True) -> Reconstruction:
    """Rebuild the input of a fully connected layer from its weight and bias gradients.

    Parameters
    ----------
    model : nn.Module
        The attacked model, with the weights the update was computed at.
    update : Update
        What the client shared (:func:`leakutils.capture.client_update`).
    layer : str, optional
        Name of the ``nn.Linear`` layer to invert; default: the model's first one.
    rtol : float
        Rows with ``|dl/db_m| <= rtol * max_m |dl/db_m|`` are left out (dead units give 0/0).
    allow_batch : bool
        The bias ratio recovers one sample. For an update averaged over M > 1 samples it
        returns a mixture of the batch; pass True to get that mixture anyway (Chapter 1
        shows it), otherwise a ValueError is raised.
    labels : bool
        Also recover labels from the output layer (:func:`leakutils.attacks.labels.recover_labels`).
    diagnose : bool
        Compute the numerical rank of ``[dl/dW | dl/db]`` (one SVD): 1 for one sample, up to M
        for a batch of M.

    Returns
    -------
    Reconstruction
        ``images`` float64 of shape ``(1, *update.input_shape)`` when the layer sees the model's
        input (only parameter-free modules such as ``Flatten`` before it), else ``(1, in_features)``;
        ``labels`` as described; ``determined`` all True (every input value appears in every
        used row). ``diagnostics``: ``layer``, ``rows_used`` (int64 indices), ``n_rows_used``,
        ``n_rows``, ``residual`` (relative Frobenius residual of the used rows: ~1e-16 for one
        sample, large for a mixture), ``gradient_rank`` (if ``diagnose``), ``batch_size``,
        ``seconds`` (wall time), ``dtype`` ("float64"), ``label_method``, ``label_count``.

    Raises
    ------
    TypeError
        ``model``/``update`` of the wrong type; the named layer is not ``nn.Linear``.
    ValueError
        A layer without bias; a zero bias gradient; gradients missing, of the wrong shape or
        not finite; an update of a batch (M > 1) without ``allow_batch=True``; a bad ``rtol``.

    References
    ----------
    Phong et al., "Privacy-preserving deep learning via additively homomorphic encryption",
    IEEE TIFS 2018; Zhu & Blaschko, "R-GAP", ICLR 2021; Eltaras et al., "R-CONV", 2024.
    """
    t0 = time.perf_counter()
    rtol = check_rtol(rtol)
    name, lin, dW, db = _layer_gradients(model, update, layer)
    if update.batch_size > 1 and not allow_batch:
        raise ValueError(
            f"this update averages {update.batch_size} samples; the bias ratio recovers one sample and "
            f"would return a mixture of the batch. Pass allow_batch=True to see that mixture, or use "
            f"the ExAN attack (Chapter 4) to separate the samples.")
    rows = _rows(db, name, rtol)
    w, G = db[rows], dW[rows]
    x = (w @ G) / (w @ w)  # w @ w >= (rtol * max|db|)^2 > 0: a guarded division
    norm = float(torch.linalg.vector_norm(G))
    residual = float(torch.linalg.vector_norm(G - w[:, None] * x[None, :])) / norm if norm > 0 else 0.0
    diagnostics = {
        "layer": name, "rows_used": rows, "n_rows_used": int(rows.numel()), "n_rows": int(db.numel()),
        "residual": residual, "batch_size": update.batch_size, "dtype": "float64", "rtol": rtol,
    }
    if diagnose:
        s = torch.linalg.svdvals(torch.cat([dW, db[:, None]], dim=1))
        diagnostics["gradient_rank"] = int((s > s[0] * 1e-9).sum()) if s[0] > 0 else 0
    if feeds_on_input(model, name, lin.in_features, update.input_shape):
        images = x.reshape(1, *update.input_shape)
    else:
        images = x.reshape(1, -1)
    rec_labels = None
    if labels:
        found = recover_labels(model, update)
        rec_labels = found.labels
        diagnostics.update(label_method=found.method, label_count=found.count)
    diagnostics["seconds"] = time.perf_counter() - t0
    return Reconstruction(images=images, labels=rec_labels, determined=torch.ones_like(images, dtype=torch.bool),
                          diagnostics=diagnostics, attack="bias_ratio")


def row_inputs(model: nn.Module, update: Update, layer: str | None = None, *,
               rtol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Each usable row's own bias ratio ``dl/dW[m, :] / dl/db_m``.

    For one sample every row gives the same input. For a batch, row ``m`` gives the mixture
    ``sum_i g_im x_i / sum_i g_im``; a row that only one sample reaches (a ReLU unit active
    for that sample alone) gives that sample exactly.

    Parameters
    ----------
    model, update, layer, rtol
        As in :func:`reconstruct`; batches are accepted.

    Returns
    -------
    (inputs, rows) : (torch.Tensor, torch.Tensor)
        ``inputs`` float64 of shape ``(R, in_features)``; ``rows`` int64 indices ``(R,)`` of the
        rows used, with ``|dl/db_m| > rtol * max|dl/db|``.

    Raises
    ------
    TypeError, ValueError
        As :func:`reconstruct`.
    """
    rtol = check_rtol(rtol)
    name, _, dW, db = _layer_gradients(model, update, layer)
    rows = _rows(db, name, rtol)
    return dW[rows] / db[rows, None], rows


def layer_input_gradient(model: nn.Module, update: Update, layer: str | None = None) -> torch.Tensor:
    """Gradient of the loss with respect to a linear layer's input, ``W^T dl/db`` (one sample).

    This is what the attack carries down to the layer below (Chapter 2). It is exact for
    one sample; for a batch it is the batch average of the per-sample gradients.

    Returns
    -------
    torch.Tensor
        float64, shape ``(in_features,)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`reconstruct`.
    """
    name, lin, _, db = _layer_gradients(model, update, layer)
    return lin.weight.detach().to(torch.float64).T @ db
