"""Through a withheld layer: its input from the next layer's activations, by forward equations and a box.

A defence that withholds a fully connected layer's weight gradient (Soteria on an MLP's
first layer: Sun et al., "Soteria: Provable Defense against Privacy Leakage in Federated
Learning from Representation Perspective", CVPR 2021) leaves the layers above it. For one
sample through ``z = W x + b``, ``h = ReLU(z)`` and a next ``nn.Linear`` with a bias, that
layer's weight and bias gradients give ``h`` exactly (its bias ratio, Chapter 1). Each
active unit (``h_i > 0``) then gives one *forward equation* ``W_i x = h_i - b_i`` (Chapter
3), each inactive unit an inequality ``W_i x + b_i <= 0``. Pixels whose weight-gradient
column survived the defence are read directly, ``x_j = dl/dW[m, j] / dl/db_m`` (Chapter
1); the others solve bounded least squares over the data range ``[lo, hi]`` (a prior the
attacker knows: images lie in ``[0, 1]``), with SciPy's BVLS.

With fewer active units than unknown pixels the equations alone leave a whole subspace
open, yet the box often pins the image: most pixels of a digit sit at 0, its lower bound.
The attack says when it does. The solution ``z`` is the *only* point of the polytope
``{A z = r, lo <= z <= hi}`` exactly when no direction ``d != 0`` keeps it feasible:
``A d = 0``, ``d_j >= 0`` where ``z_j`` is at ``lo``, ``d_j <= 0`` where it is at ``hi``.
One linear program (HiGHS, over the null space of ``A``) maximises how far such a direction
moves off the bounds; when that is 0, the pixels strictly inside the box must satisfy
``A_free d = 0`` alone, and are fixed exactly when ``A_free`` has full column rank. The inactive units' inequalities are
left out of the certificate (it only gets more conservative). ``determined`` is True only
for a certified unique image that also reproduces ``h`` (residual at round-off, inactive
units inactive).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from scipy.optimize import linprog, lsq_linear
from torch import nn

from ..core import Reconstruction, Update
from ..validate import check_number
from . import bias_ratio
from ._common import called_after, check_model_update, feeds_on_input, find_layer, layer_gradient
from .labels import recover_labels

__all__ = ["reconstruct", "LP_TOLERANCE"]

#: A direction that moves the solution off its bounds by less than this (summed over the
#: pixels at a bound, for null-space coordinates boxed to ``[-1, 1]``) counts as none:
#: HiGHS' feasibility tolerance is 1e-7.
LP_TOLERANCE = 1e-6


def reconstruct(model: nn.Module, update: Update, layer: str | None = None, *,
                bounds: tuple[float, float] = (0.0, 1.0)) -> Reconstruction:
    """Rebuild one sample's input to a fully connected ReLU layer whose weight gradient may be withheld.

    Parameters
    ----------
    model : nn.Module
        The attacked model: ``layer`` (an ``nn.Linear`` with bias) followed by ``nn.ReLU``
        and then an ``nn.Linear`` with bias whose gradients the update holds.
    update : Update
        One sample's update (batch size 1), the layer's weight gradient possibly withheld
        (columns set to 0, as Soteria does) or pruned.
    layer : str, optional
        Name of the layer; default the first ``nn.Linear`` the forward pass calls.
    bounds : (float, float)
        The data range ``lo < hi`` every input value lies in (the prior), default ``(0, 1)``.

    Returns
    -------
    Reconstruction
        ``images`` float64 ``(1, *update.input_shape)`` when the layer sees the model's input,
        else ``(1, in_features)``; ``labels`` from iDLG (int64 ``(1,)``, or None when the
        output layer gives none); ``determined`` all True when the image is certified unique
        and consistent (see the module's docstring), else all False. ``diagnostics``:
        ``layer``, ``next_layer``, ``active_units``, ``read_pixels`` (columns that survived),
        ``unknown_pixels``, ``residual`` (largest ``|W_i x + b_i - h_i|`` over the active
        units, read pixels included), ``residual_tolerance``,
        ``inactive_violation`` (largest ``W_i x + b_i`` over inactive units, ``<= 0`` when
        they stay inactive), ``at_bounds``, ``free_pixels``, ``free_rank``,
        ``lp_movement`` (the LP's optimum; None when no pixel is at a bound), ``unique``,
        ``consistent``, ``activations_determined`` (the next layer's bias ratio certified
        ``h``), ``seconds``.

    Raises
    ------
    TypeError
        ``model``/``update`` of the wrong type; ``layer`` not an ``nn.Linear``; ``bounds``
        not two numbers.
    ValueError
        A batch (the forward equations are one sample's; use ExAN); a layer without bias,
        or not followed by ``nn.ReLU`` and an ``nn.Linear`` with bias; ``lo >= hi``; gradients
        missing or of the wrong shape; the next layer's gradients all zero.
    """
    t0 = time.perf_counter()
    check_model_update(model, update)
    lo, hi = _check_bounds(bounds)
    name, lin = find_layer(model, layer, nn.Linear, input_shape=update.input_shape,
                           hint="The forward equations read a fully connected layer (nn.Linear).")
    if lin.bias is None:
        raise ValueError(f"layer {name!r} has no bias; the forward equations here need W x + b with b known")
    if update.batch_size != 1:
        raise ValueError(f"this update averages {update.batch_size} samples; the next layer's ratio then mixes "
                         f"them. Use the ExAN attack (Chapter 4) for batches.")
    next_name = _next_linear(model, lin, name, update.input_shape)
    h_rec = bias_ratio.reconstruct(model, update, layer=next_name, labels=False, diagnose=False)
    h = h_rec.images.reshape(-1).to(torch.float64)
    W, b = lin.weight.detach().to(torch.float64), lin.bias.detach().to(torch.float64)
    dW = layer_gradient(update, f"{name}.weight", lin.weight)
    db = layer_gradient(update, f"{name}.bias", lin.bias)
    x, read = _read_surviving(dW, db)
    eps = torch.finfo(torch.float64).eps
    active = h > 1e3 * eps * float(h.abs().max())
    unknown = ~read
    A = W[active][:, unknown].numpy()
    r = (h[active] - b[active] - W[active][:, read] @ x[read]).numpy()
    diag = {"layer": name, "next_layer": next_name, "active_units": int(active.sum()),
            "read_pixels": int(read.sum()), "unknown_pixels": int(unknown.sum()),
            "activations_determined": bool(h_rec.determined.all())}
    if unknown.any():
        z = _solve(A, r, lo, hi, int(unknown.sum()))
        x[unknown] = torch.from_numpy(z)
        unique, cert = _unique(A, z, lo, hi)
    else:
        z, unique, cert = np.zeros(0), True, {"at_bounds": 0, "free_pixels": 0, "free_rank": 0, "lp_movement": None}
    # every active unit's forward equation, read pixels included: W_i x + b_i = h_i
    z_all = W @ x + b
    gap = (z_all - h)[active]
    residual = float(gap.abs().max()) if gap.numel() else 0.0
    rows = W[active].abs().sum(1)
    scale = (float(rows.max()) if rows.numel() else 0.0) * max(abs(lo), abs(hi), float(x.abs().max())) + \
        (float(h.abs().max()) if h.numel() else 0.0) + float(b.abs().max())
    # round-off of float64, or the client's coarser dtype (a float32 update's ratio carries ~1e-7)
    sent = torch.finfo(update.gradients[f"{name}.bias"].dtype).eps
    tolerance = max(float(np.sqrt(eps)), 1e3 * sent) * max(scale, float(torch.finfo(torch.float64).tiny))
    inactive_violation = float(z_all[~active].max()) if bool((~active).any()) else float("-inf")
    consistent = residual <= tolerance and inactive_violation <= tolerance and diag["activations_determined"]
    diag.update({"residual": residual, "residual_tolerance": tolerance, "inactive_violation": inactive_violation,
                 **cert, "unique": unique, "consistent": consistent})
    on_input = feeds_on_input(model, name, lin.in_features, update.input_shape)
    images = x.reshape(1, *update.input_shape) if on_input else x.reshape(1, -1)
    labels = recover_labels(model, update).labels[:1].clone() if on_input else None
    if labels is not None and labels.numel() == 0:
        labels = None
    diag["seconds"] = time.perf_counter() - t0
    return Reconstruction(images=images, labels=labels,
                          determined=torch.full(images.shape, unique and consistent, dtype=torch.bool),
                          diagnostics=diag, attack="forward_equations_box")


def _check_bounds(bounds) -> tuple[float, float]:
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"bounds must be two numbers (lo, hi), the data range, got {bounds!r}")
    lo = check_number("bounds[0]", bounds[0])
    hi = check_number("bounds[1]", bounds[1])
    if not lo < hi:
        raise ValueError(f"bounds must have lo < hi (the data range, e.g. (0.0, 1.0)), got {bounds!r}")
    return lo, hi


def _next_linear(model: nn.Module, lin: nn.Linear, name: str, input_shape) -> str:
    """Name of the ``nn.Linear`` after ``lin``, checking that only an ``nn.ReLU`` sits between them."""
    after = called_after(model, lin, tuple(input_shape))
    if len(after) < 2 or not isinstance(after[0], nn.ReLU) or not isinstance(after[1], nn.Linear) \
            or after[1].bias is None:
        raise ValueError(f"layer {name!r} must be followed by nn.ReLU and an nn.Linear with bias (an MLP's "
                         f"hidden layer); this attack reads the activations from that next layer")
    return next(n for n, m in model.named_modules() if m is after[1])


def _read_surviving(dW: torch.Tensor, db: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels read from the row with the largest ``|dl/db|``, where its entry survived; the rest 0."""
    x = torch.zeros(dW.shape[1], dtype=torch.float64)
    if not bool((db != 0).any()):
        return x, torch.zeros(dW.shape[1], dtype=torch.bool)
    m = int(db.abs().argmax())
    read = dW[m] != 0
    x[read] = dW[m, read] / db[m]
    return x, read


def _solve(A: np.ndarray, r: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """Bounded least squares ``min ||A z - r||`` over ``lo <= z <= hi`` (BVLS)."""
    if A.shape[0] == 0:
        return np.full(n, lo)
    return np.clip(lsq_linear(A, r, bounds=(lo, hi), method="bvls", tol=1e-13).x, lo, hi)


def _unique(A: np.ndarray, z: np.ndarray, lo: float, hi: float) -> tuple[bool, dict]:
    """Whether ``z`` is the only point of ``{A z = r, lo <= z <= hi}``: one LP and one rank.

    The directions with ``A d = 0`` are ``d = N c`` for an orthonormal basis ``N`` of A's null
    space (SVD), so the LP runs over ``c`` (the null space's dimension, not the pixels'):
    maximise how far ``N c`` moves the pixels at a bound into the box, subject to moving none
    of them out, ``|c_k| <= 1``.
    """
    near = float(np.sqrt(np.finfo(np.float64).eps)) * (hi - lo)
    at_lo, at_hi = z <= lo + near, z >= hi - near
    free = ~(at_lo | at_hi)
    n = A.shape[1]
    if A.shape[0]:
        _, s, vt = np.linalg.svd(A)
        rank = int((s > max(A.shape) * np.finfo(np.float64).eps * s[0]).sum()) if s.size and s[0] > 0 else 0
        null = vt[rank:].T
    else:
        null = np.eye(n)
    movement = None
    if bool((at_lo | at_hi).any()):
        movement = 0.0
        if null.shape[1]:
            # rows: each bound pixel's movement into the box, which must not be negative
            S = np.vstack([null[at_lo], -null[at_hi]])
            lp = linprog(-S.sum(0), A_ub=-S, b_ub=np.zeros(S.shape[0]), bounds=[(-1.0, 1.0)] * null.shape[1],
                         method="highs")
            movement = float(-lp.fun) if lp.status == 0 else float("inf")
    free_rank = 0
    if bool(free.any()):
        sf = np.linalg.svd(A[:, free], compute_uv=False) if A.shape[0] else np.zeros(0)
        tol = max(A.shape) * np.finfo(np.float64).eps * (sf[0] if sf.size else 0.0)
        free_rank = int((sf > tol).sum())
    fixed_bounds = movement is None or movement <= LP_TOLERANCE
    unique = fixed_bounds and free_rank == int(free.sum())
    return unique, {"at_bounds": int((at_lo | at_hi).sum()), "free_pixels": int(free.sum()),
                    "free_rank": free_rank, "lp_movement": movement}
