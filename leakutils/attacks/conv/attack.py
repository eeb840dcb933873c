"""The conv attack: one image rebuilt layer by layer from the top, then checked against the update."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from ... import activations as acts
from ...core import Reconstruction, Update
from ...validate import check_int
from .._common import check_model_update, check_rtol, layer_gradient
from ..bias_ratio import reconstruct as bias_ratio_reconstruct
from ..labels import recover_labels
from . import solve as S
from .equations import forward_matrix, gradient_matrix
from .parse import ConvLayer, _parse
from .rgap import solve_rgap_layer

__all__ = ["reconstruct", "METHODS", "layer_tolerance", "ERROR_BOUND_LIMIT"]

#: ``"rconv"``: weight-gradient and forward equations, the forward ones where the activation
#: can be inverted (R-CONV); ``"rgap"``: R-GAP's stacked gradient, forward and padding rows
#: by least squares (needs invertible activations); ``"forward"``: forward equations only (a
#: simplified variant, not R-GAP; needs invertible activations); ``"gradient"``:
#: weight-gradient equations only.
METHODS = ("rconv", "rgap", "forward", "gradient")


#: Largest first-order relative error bound of a reconstruction whose pixels are marked
#: determined: ``eps * prod(condition numbers)`` (:func:`error_bound`).
#: Above it the layer systems amplify the update's round-off or noise too much to vouch for
#: any pixel (a float32 client through a layer of condition 1e7, say).
ERROR_BOUND_LIMIT = 1e-3


def layer_tolerance(dtype: torch.dtype) -> float:
    """Largest relative residual of a layer's own equations that still counts as consistent.

    ``sqrt(eps)`` of the update's dtype (1.5e-8 for float64, 3.5e-4 for float32): the rows are
    built from the update and from the layers rebuilt above, whose rounding errors reach the
    residual multiplied by condition numbers; a residual above it means the update is noisy or
    the model is not what the equations describe.

    Raises
    ------
    TypeError
        ``dtype`` not a floating torch dtype.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype such as torch.float64, got {dtype!r}")
    return math.sqrt(float(torch.finfo(dtype).eps))


def reconstruct(model: nn.Module, update: Update, *, method: str = "rconv", rtol: float = S.DEFAULT_RTOL,
                dense_limit: int = 4096, labels: bool = True) -> Reconstruction:
    """Rebuild one input image of a CNN from its gradients, layer by layer from the top.

    The head's input comes from the bias ratio (Chapter 1) and ``dl/dX = W^T dl/db``; then for
    each conv layer from the top, ``dl/dO = dl/dX * A'(O)`` from the rebuilt output (Chapter 2)
    and the layer's input from its linear equations (see :data:`METHODS`); ``dl/dx =
    conv_transpose(dl/dO, W)`` carries the gradient down. Every system is solved by least
    squares in float64 with its rank and condition reported. The reconstruction ends with the
    gradient-residual check: the gradients the rebuilt image and label produce through the
    whole model must reproduce the shared update, or nothing is marked determined.

    Parameters
    ----------
    model : nn.Module
        ``conv -> activation -> ... -> Flatten -> Linear (with bias) -> ...``, every operation
        below the head a module, with the weights the update was computed at (float32 or
        float64; the attack computes in float64). Supported activations: those of
        :mod:`leakutils.activations`.
    update : Update
        From :func:`leakutils.capture.client_update` on **one** sample.
    method : {"rconv", "rgap", "forward", "gradient"}
        Which rows to use (:data:`METHODS`). ``"rgap"`` and ``"forward"`` need an invertible
        activation after every conv layer.
    rtol : float
        In (0, 1). Singular values of a data matrix below ``rtol * largest`` count as zero;
        products of matrices use a tolerance from the norms of their factors.
    dense_limit : int
        Largest number of unknowns left for a dense rank analysis (positive); above it, a
        layer the fast solvers cannot settle is marked undetermined.
    labels : bool
        Return the label recovered from the output layer (iDLG). The check uses it either way.

    Returns
    -------
    Reconstruction
        ``images`` float64 ``(1, C, H, W)``; ``determined`` marks the pixels the equations fix,
        all False when a layer's rows or the whole-model check disagree with the update. ``diagnostics``:

        - ``layers``: from the top, one dict per conv layer: ``layer``, ``unknowns`` (``C H W``),
          ``gradient_equations``, ``forward_equations``, ``rank``, ``deficiency``
          (``unknowns - rank``), ``condition``, ``residual`` (relative, of the layer's own
          rows), ``consistent`` (residual within :func:`layer_tolerance`), ``solver``,
          ``determined`` (fraction), ``seconds``; with ``method="rgap"`` also ``rank_analysis``
          (R-GAP's count over the padded input: ``gradient_rows``, ``forward_rows``,
          ``padding_rows``, ``rows``, ``unknowns``, ``rank``, ``deficiency``);
        - ``check``: the gradient residual (``consistent``, ``relative``, ``absolute``, ``rtol``,
          ``worst_parameter``, ``checked_from``, ``reason``): through the whole model when every
          pixel is determined; for a partial image, from the lowest module whose input was
          rebuilt wholly (``checked_from``), the layers below it answering by their own rows;
        - ``determined_by_equations``: fraction the layer equations fixed before the check;
        - ``error_bound``: :func:`error_bound`; nothing is marked determined above
          :data:`ERROR_BOUND_LIMIT`;
        - ``head`` (bias-ratio diagnostics), ``method``, ``dtype``, ``seconds``.

    Raises
    ------
    TypeError
        Wrong argument types; unsupported modules or activations.
    ValueError
        An update of more than one sample; an unknown method; ``"rgap"``/``"forward"`` with a
        non-invertible activation; a head without bias; gradients missing or of the wrong
        shape; a ``forward()`` doing something its modules do not show (functional
        activation, skip connection, inline normalisation).

    References
    ----------
    Eltaras et al., "R-CONV: An Analytical Approach for Efficient Data Reconstruction via
    Convolutional Gradients", 2024 (arXiv 2406.04227); Zhu & Blaschko, "R-GAP: Recursive
    Gradient Attack on Privacy", ICLR 2021.
    """
    t_start = time.perf_counter()
    check_model_update(model, update)
    rtol = check_rtol(rtol)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dense_limit = check_int("dense_limit", dense_limit, 1)
    if not isinstance(labels, bool):
        raise TypeError(f"labels must be True or False, got {type(labels).__name__}")
    if update.batch_size != 1:
        raise ValueError(f"this attack rebuilds one sample; the update averages {update.batch_size}. "
                         f"Capture the update of a single image (batch size 1).")
    if len(update.input_shape) != 3:
        raise ValueError(f"the model input must be an image (C, H, W), got {update.input_shape}")
    parsed = _parse(model, update.input_shape)
    if method in ("rgap", "forward"):
        bad = [L.name for L in parsed.layers if not acts.is_invertible(L.activation)]
        if bad:
            what = "R-GAP's rows" if method == "rgap" else "the forward equations"
            raise ValueError(f"{what} need an invertible activation after every conv layer, but the activation "
                             f"after {bad} is not (R-GAP inverts it to get the pre-activation); use method='rconv', "
                             f"which propagates the gradient through the activation without inverting it")
    head = bias_ratio_reconstruct(model, update, layer=parsed.head_name, labels=False, diagnose=False)
    top = parsed.layers[-1]
    X = head.images.reshape(top.out_shape).to(torch.float64)
    gX = (parsed.head.weight.detach().to(torch.float64).T @ layer_gradient(
        update, f"{parsed.head_name}.bias", parsed.head.bias)).reshape(top.out_shape)
    X_known = torch.ones(top.out_shape, dtype=torch.bool)
    gX_known = torch.ones(top.out_shape, dtype=torch.bool)
    layer_info = []
    # the input of the lowest module whose input is wholly known: the head's, to begin with
    checked_from, checked_input = parsed.head_name, X.reshape(1, -1)
    for L in reversed(parsed.layers):
        t0 = time.perf_counter()
        X, X_known, gX, gX_known, info = _invert_layer(L, update, X, X_known, gX, gX_known, method, rtol,
                                                       dense_limit)
        info.update(layer=L.name, determined=float(X_known.double().mean()), seconds=time.perf_counter() - t0)
        layer_info.append(info)
        if bool(X_known.all()):
            checked_from, checked_input = L.name, X.reshape(1, *L.in_shape)
    images = X.reshape(1, *update.input_shape)
    determined = X_known.reshape(1, *update.input_shape)
    found = recover_labels(model, update).labels
    if bool(determined.all()):
        check = _whole_model_check(model, update, images, found)
    else:
        # A partial image cannot be run through the model (its undetermined pixels are
        # arbitrary): the layers from the lowest wholly rebuilt input up are checked by the
        # gradient residual, the layers below by their own rows (``consistent`` per layer).
        check = _whole_model_check(model, update, checked_input, found, layer=checked_from)
    by_equations = float(determined.double().mean())
    bad = [L["layer"] for L in layer_info if not L["consistent"] and L["rank"] is not None]
    if bad and check["consistent"]:
        check = {**check, "consistent": False,
                 "reason": f"the rows of {bad} do not agree within {layer_tolerance(_gdtype(update)):.2g}: a "
                           f"noisy update or a model the equations do not describe"}
    bound = error_bound(update, check, layer_info)
    if check["consistent"] and not bound <= ERROR_BOUND_LIMIT:
        check = {**check, "consistent": False,
                 "reason": f"the layer systems are too ill-conditioned for the update's precision: relative error "
                           f"bound {bound:.2g} above {ERROR_BOUND_LIMIT:g}"}
    if not check["consistent"]:
        determined = torch.zeros_like(determined)
    diagnostics = {"method": method, "head": {k: v for k, v in head.diagnostics.items() if k != "rows_used"},
                   "layers": layer_info, "check": check, "error_bound": bound, "determined_by_equations": by_equations,
                   "dtype": "float64", "seconds": time.perf_counter() - t_start}
    return Reconstruction(images=images, labels=found if labels else None, determined=determined,
                          diagnostics=diagnostics, attack=f"conv/{method}")


def error_bound(update: Update, check: dict, layer_info: list) -> float:
    """First-order relative error bound of the rebuilt image from the client's round-off.

    ``eps * prod_l max(1, kappa_l)``: ``eps`` of the client's dtype and ``kappa_l`` the
    condition numbers of the layer systems (a relative error of the rows reaches the solution
    multiplied by at most ``kappa``). Noise beyond round-off is the whole-model check's
    business (it lets through relative gradient residuals up to :func:`layer_tolerance`);
    ``inf`` when the check could not run.
    """
    if check.get("relative") is None or not math.isfinite(check["relative"]):
        return math.inf
    eps = float(torch.finfo(_gdtype(update)).eps)
    return eps * math.prod(max(1.0, float(L["condition"])) for L in layer_info if L.get("condition") is not None)


def _gdtype(update: Update) -> torch.dtype:
    """The dtype the client computed its gradients in (the widest of the update's tensors)."""
    return max((g.dtype for g in update.gradients.values()), key=lambda d: torch.finfo(d).bits)


def _whole_model_check(model: nn.Module, update: Update, images: torch.Tensor, labels: torch.Tensor,
                       layer: str | None = None) -> dict:
    """The gradient-residual check of a reconstruction through the whole model.

    With ``layer``, ``images`` are the input of that module (the lowest one whose input the
    attack rebuilt wholly) and only the parameters from that module on are compared; the key
    ``checked_from`` names it (None: the whole model).

    Recomputes, with :func:`leakutils.attacks.residual.gradient_residual`, the gradients the
    rebuilt image and label produce through the whole model and compares them with the
    shared update, parameter by parameter. A parameter passes when its residual is within
    the residual module's round-off tolerance, or within :func:`layer_tolerance` (``sqrt(eps)``
    of the update's dtype) of its gradient's norm: the attack solves systems with condition
    numbers of 1e2 to 1e6 in float64, so an exact reconstruction carries round-off beyond the
    client's own, while a wrong model, a noisy update or a wrong label leaves relative
    residuals of 1e-6 to 1.

    Returns
    -------
    dict
        ``consistent`` (bool), ``relative`` and ``absolute`` residual over all parameters,
        ``rtol`` (the relative floor used), ``worst_parameter`` (None where the check could
        not run) and ``reason`` (why it failed; empty when consistent).
    """
    from ..residual import gradient_residual

    rtol = layer_tolerance(_gdtype(update))
    empty = {"consistent": False, "relative": None, "absolute": None, "rtol": rtol, "worst_parameter": None}
    if not torch.isfinite(images).all():
        return {**empty, "reason": "the reconstruction contains NaN or infinite values"}
    try:
        res = gradient_residual(model, update, images, labels, layer=layer)
    except (ValueError, TypeError) as err:
        return {**empty, "checked_from": layer, "reason": f"check not run: {err}"}
    ratio = {n: p.absolute / max(p.tolerance, rtol * p.norm, 1e-300) for n, p in res.per_parameter.items()}
    worst = max(ratio, key=ratio.get)
    consistent = ratio[worst] <= 1.0
    reason = "" if consistent else (
        f"the rebuilt image and label do not reproduce the update: relative gradient residual "
        f"{res.per_parameter[worst].relative:.3g} in {worst!r} (allowed {rtol:.2g} or round-off)")
    return {"consistent": bool(consistent), "relative": float(res.relative), "absolute": float(res.absolute),
            "rtol": rtol, "worst_parameter": worst, "checked_from": layer, "reason": reason}


def _gradient_rows(L: ConvLayer, update: Update, dO, dO_known, method):
    """The shared gradient matrix over the filters whose ``dl/dO`` is fully known, and its right-hand sides."""
    conv = L.conv
    C, H, W = L.in_shape
    dW = layer_gradient(update, f"{L.name}.weight", conv.weight)
    gdtype = update.gradients[f"{L.name}.weight"].dtype
    if method not in ("rconv", "gradient", "rgap"):
        return None, None, gdtype
    usable = dO_known.flatten(1).all(1).numpy()
    if not usable.any():
        return None, None, gdtype
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    keep = np.repeat(usable, kk)
    A_g = gradient_matrix(conv, dO.numpy(), (H, W))[keep]
    B = dW.permute(0, 2, 3, 1).reshape(-1, C).numpy()[keep]
    return A_g, B, gdtype


def _forward_rows(L: ConvLayer, X, X_known, method):
    """Forward equations where the pre-activation is known (the activation inverted at ``X``)."""
    if method not in ("rconv", "forward", "rgap"):
        return None, None
    conv = L.conv
    O, O_det = acts.invert(L.activation, X[None])
    rows = (O_det[0] & X_known).numpy()
    if not rows.any():
        return None, None
    bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else \
        torch.zeros(conv.out_channels, dtype=torch.float64)
    return forward_matrix(conv, L.in_shape, rows), (O[0] - bias[:, None, None]).numpy()[rows]


def _invert_layer(L: ConvLayer, update: Update, X, X_known, gX, gX_known, method, rtol, dense_limit):
    """Rebuild the input of conv layer L from its output X (and dl/dX).

    Returns ``(x, x_known, dl/dx, dl/dx_known, info)``. ``x_known`` is what the layer's rows
    fix; ``info["consistent"]`` says whether those rows agree within :func:`layer_tolerance`
    (the caller decides what an inconsistent layer means; ``reconstruct`` then marks nothing
    determined, but keeps solving downwards for a best effort).
    """
    conv, act = L.conv, L.activation
    C, H, W = L.in_shape
    X = acts.snap_to_range(act, X)
    dO = acts.propagate(act, X[None], gX[None])[0]
    dO_known = X_known & gX_known
    A_g, B, gdtype = _gradient_rows(L, update, dO, dO_known, method)
    try:
        if method == "rgap":
            Fw, r = _forward_rows(L, X, X_known, method)
            x, mask, info = solve_rgap_layer(conv, L.in_shape, A_g, B, Fw, r, rtol, dense_limit)
        else:
            x, mask, info = S.solve_layer(A_g, B, lambda: _forward_rows(L, X, X_known, method), C, H * W, rtol,
                                          dense_limit)
    except np.linalg.LinAlgError as err:  # report, never crash: nothing below this layer is known
        x, mask = np.zeros((C, H * W)), np.zeros((C, H * W), bool)
        info = {"unknowns": C * H * W, "gradient_equations": 0 if A_g is None else C * A_g.shape[0],
                "forward_equations": None, "rank": None, "condition": None, "residual": None,
                "solver": f"failed: {err}"}
    tol = layer_tolerance(gdtype)
    info["deficiency"] = None if info.get("rank") is None else info["unknowns"] - info["rank"]
    info["consistent"] = info.get("residual") is not None and info["residual"] <= tol
    x_in = torch.from_numpy(np.ascontiguousarray(x)).reshape(C, H, W)
    known_in = torch.from_numpy(mask).reshape(C, H, W)
    # Carry the gradient down: dl/dx = conv_transpose(dl/dO, W); unknown dl/dO spoils what it touches.
    w = conv.weight.detach().to(torch.float64)
    g_in = torch.nn.grad.conv2d_input((1, C, H, W), w, dO[None], stride=conv.stride, padding=conv.padding)[0]
    touched = torch.nn.grad.conv2d_input((1, C, H, W), (w != 0).double(), (~dO_known).double()[None],
                                         stride=conv.stride, padding=conv.padding)[0] > 0
    return x_in, known_in, g_in, ~touched, info
