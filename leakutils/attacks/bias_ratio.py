"""Bias-ratio inversion of a fully connected layer (Phong et al. 2018; R-GAP; R-CONV).

For a linear layer ``z = W x + b`` and one sample, the chain rule gives
``dl/dW[m, :] = dl/dz_m * x`` and ``dl/db_m = dl/dz_m``. Every row ``m`` with
``dl/db_m != 0`` therefore holds the input, scaled: ``x = dl/dW[m, :] / dl/db_m``, and the
matrix ``A = [dl/dW | dl/db]`` has rank one, ``A = dl/dz [x, 1]^T``.

:func:`reconstruct` fits that rank-one model to all rows at once: the top singular triplet
``A ~ s_1 u v^T`` gives ``v = c [x, 1]``, so

    x = v[:-1] / v[-1].

On a clean update this is the same input as every row's ratio (to round-off, ~1e-15 in
float64). Under noise it is the best rank-one fit in the Frobenius norm (total least
squares): the noise of every row, dead ones included, is averaged instead of divided, and
noise on ``dl/db`` does not shrink the image towards zero as the bias-weighted least squares
``x = sum_m dl/db_m dl/dW[m, :] / sum_m (dl/db_m)^2`` does. Its first-order standard error
per pixel is ``sigma sqrt(1 + x_j^2) / (s_1 |v[-1]|)`` (``sigma`` the per-entry noise), see
:mod:`leakutils.attacks._rank_one`.

For a batch of M samples averaged together (FedSGD), row ``m`` holds
``sum_i g_im x_i / sum_i g_im``: a mixture of the batch, different for every row, and ``A``
has rank up to M; the fit returns one blend of the batch.

:func:`reconstruct` ends with the gradient-residual check
(:func:`leakutils.attacks.residual.gradient_residual`): the reconstruction is marked
determined only when the update it would produce reproduces the shared one. A batch
mixture, an activation the layer's algebra does not see, or a layer whose bias is cancelled
by what follows fails the check, and ``determined`` is then all False.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core import Reconstruction, Update
from ._common import called_after, check_model_update, check_rtol, feeds_on_input, find_layer, layer_gradient
from ._rank_one import REPORTED_VALUES, fit as _fit_rank_one
from .labels import recover_labels
from .residual import _check_noise, _forward, gradient_residual

#: The bias gradient must exceed this multiple of ``eps * max|dl/dW| `` (eps of the update's
#: dtype) to be more than round-off; below it the division would amplify round-off only.
BIAS_ROUNDOFF_FACTOR = 64.0
#: The gradient-residual check certifies only when its overall tolerance is below this
#: fraction of the update's norm: above it, noise hides a batch mixture (relative residuals
#: of mixtures measured 0.1 to 1.2), so nothing is marked determined.
MAX_RELATIVE_TOLERANCE = 0.1
#: A second singular value of ``[dl/dW | dl/db]`` above this multiple of the noise floor
#: ``noise * (sqrt(rows) + sqrt(cols)) + ROUNDOFF * eps * s_1`` shows a second sample.
RANK_MARGIN = 2.0

#: The direction probe of a batch update: inputs moved by this fraction of their rms value (or
#: of 1), ``DIRECTION_DRAWS`` times; a unit-vector change below ``DIRECTION_RTOL`` is round-off
#: (float64), so the direction is fixed. A smooth activation or 3+ logits move it by ~1e-4.
DIRECTION_STEP = 1e-3
DIRECTION_DRAWS = 2
DIRECTION_RTOL = 1e-9

__all__ = ["reconstruct", "row_inputs", "layer_input_gradient"]

_HINT = "The bias ratio inverts a fully connected layer (nn.Linear); for conv layers see Chapter 3."


def _layer_gradients(model, update, layer):
    check_model_update(model, update)
    name, lin = find_layer(model, layer, nn.Linear, hint=_HINT, input_shape=update.input_shape)
    if lin.bias is None:
        raise ValueError(
            f"layer {name!r} has no bias, so there is no dl/db to divide by. Attack a layer with a "
            f"bias, or, for bias-free networks, use the ExAN attack (Chapter 4).")
    _refuse_training_batchnorm(model, lin, name, update.input_shape)
    dW = layer_gradient(update, f"{name}.weight", lin.weight)
    db = layer_gradient(update, f"{name}.bias", lin.bias)
    eps = torch.finfo(update.gradients[f"{name}.weight"].dtype).eps
    if float(db.abs().max()) <= BIAS_ROUNDOFF_FACTOR * eps * float(dW.abs().max()):
        raise ValueError(
            f"the bias gradient of {name!r} is zero up to round-off (max |dl/db| "
            f"{float(db.abs().max()):.2e} against max |dl/dW| {float(dW.abs().max()):.2e}): no row "
            f"carries the input (every unit dead for this input, a loss of exactly zero, or a "
            f"normalisation that cancels the bias). Try another layer or another model state.")
    return name, lin, dW, db


def _refuse_training_batchnorm(model, lin, name, input_shape) -> None:
    """BatchNorm in training mode right after the layer subtracts the batch mean: dl/db = 0."""
    for mod in called_after(model, lin, input_shape):
        if isinstance(mod, _BatchNorm) and mod.training:
            raise ValueError(
                f"a {type(mod).__name__} in training mode follows layer {name!r}: it subtracts the "
                f"batch mean, which cancels the layer's bias (dl/db is round-off) and couples the "
                f"samples, so the bias ratio does not apply. Attack a model whose BatchNorm layers "
                f"were in eval mode when the update was computed, or another layer.")
        if isinstance(mod, nn.Linear) or any(True for _ in mod.parameters(recurse=False)):
            return


def _rows(db: torch.Tensor, name: str, rtol: float) -> torch.Tensor:
    scale = float(db.abs().max())
    return torch.nonzero(db.abs() > rtol * scale).flatten()


def reconstruct(model: nn.Module, update: Update, layer: str | None = None, *, rtol: float = 1e-6,
                allow_batch: bool = False, labels: bool = True, diagnose: bool = True,
                noise: float | None = None) -> Reconstruction:
    """Rebuild the input of a fully connected layer from its weight and bias gradients.

    Parameters
    ----------
    model : nn.Module
        The attacked model, with the weights the update was computed at.
    update : Update
        What the client shared (:func:`leakutils.capture.client_update`).
    layer : str, optional
        Name of the ``nn.Linear`` layer to invert; default: the first one the forward pass
        calls.
    rtol : float
        Rows with ``|dl/db_m| <= rtol * max_m |dl/db_m|`` are not counted as used (dead units)
        in ``rows_used`` and ``residual``; the rank-one fit itself uses every row (a dead row
        is zero and adds nothing; under noise it adds noise that the fit averages).
    allow_batch : bool
        The bias ratio recovers one sample. For an update averaged over M > 1 samples it
        returns a mixture of the batch; pass True to get that mixture anyway (Chapter 1
        shows it), otherwise a ValueError is raised.
    labels : bool
        Also recover labels from the output layer (:func:`leakutils.attacks.labels.recover_labels`).
    diagnose : bool
        Compute the numerical rank of ``[dl/dW | dl/db]`` (one SVD): 1 for one sample, up to M
        for a batch of M.
    noise : float, optional
        Per-entry standard deviation of noise added to the update (absolute, in gradient
        units; e.g. a DP noise level the server knows), allowed for by the final gradient-
        residual check and by the standard error and the guard of the fit. Default: none (a
        clean update; round-off only).

    Returns
    -------
    Reconstruction
        ``images`` float64 of shape ``(1, *update.input_shape)`` when the layer sees the model's
        input (only parameter-free modules such as ``Flatten`` before it), else ``(1, in_features)``;
        ``labels`` as described; ``determined`` all True when the reconstruction passes the
        gradient-residual check (every input value appears in every used row), all False
        when it does not (a batch mixture, an activation or normalisation the algebra does not
        see, a bias gradient drowned in noise). ``diagnostics``: ``consistent`` (the check's verdict), ``gradient_residual``
        (the :class:`~leakutils.attacks.residual.GradientResidual`; for a deeper layer it
        covers the layers from the attacked one on), ``check_relative_residual``,
        ``check_scale`` (1.0, or the factor of a clipped update), ``layer``, ``rows_used`` (int64 indices), ``n_rows_used``,
        ``n_rows``, ``residual`` (relative Frobenius residual of the used rows: ~1e-16 for one
        sample, large for a mixture), ``fit`` ("rank-one SVD"), ``fit_method`` ("power
        iteration" from the bias column, or "full SVD" when the singular gap is small),
        ``singular_values`` (the largest five of ``[dl/dW | dl/db]``, floats),
        ``standard_error`` (float64, shape of ``images``: first-order per-pixel standard error
        ``sigma sqrt(1 + x^2) / (s_1 |v[-1]|)`` in the input's units), ``noise_level`` (the
        ``sigma`` used there and in the guard below: the stated ``noise`` or, for one sample
        and when larger, ``noise_estimate``),
        ``noise_estimate`` (``s_2 / (sqrt(rows) + sqrt(cols))``: the per-entry noise that the
        second singular value implies for one sample; for a batch it measures the second
        sample instead), ``scale_determined`` (False when ``|v[-1]|`` is within
        ``leakutils.attacks._rank_one.GUARD_FACTOR`` standard deviations of zero: the bias gradient is drowned,
        ``images`` is then the least-squares estimate ``(db @ dW) / (db @ db)`` over all rows, not
        determined), ``fit_note``
        (why, or empty), ``gradient_rank`` (if ``diagnose``), ``batch_size``,
        ``seconds`` (wall time), ``dtype`` ("float64"), ``label_method``, ``label_count``,
        ``direction_fixed`` (for a batch, M > 1: True when the layer's output-gradient direction
        does not move with its input, as in a ReLU network with 2 logits; a blend of samples in
        one linear region then reproduces the update, so nothing is marked determined; None
        when not probed), ``batch_note`` (why a batch's single image is not certified: the
        direction above, or noise; empty otherwise).

    Raises
    ------
    TypeError
        ``model``/``update`` of the wrong type; the named layer is not ``nn.Linear``.
    ValueError
        A layer without bias; a bias gradient that is zero up to round-off (also: BatchNorm
        in training mode right after the layer); gradients missing, of the wrong shape or
        not finite; an update of a batch (M > 1) without ``allow_batch=True``; a bad ``rtol``
        or ``noise``.

    References
    ----------
    Phong et al., "Privacy-preserving deep learning via additively homomorphic encryption",
    IEEE TIFS 2018; Zhu & Blaschko, "R-GAP", ICLR 2021; Eltaras et al., "R-CONV", 2024.
    """
    t0 = time.perf_counter()
    rtol = check_rtol(rtol)
    noise = _check_noise(noise)
    name, lin, dW, db = _layer_gradients(model, update, layer)
    if update.batch_size > 1 and not allow_batch:
        raise ValueError(
            f"this update averages {update.batch_size} samples; the bias ratio recovers one sample and "
            f"would return a mixture of the batch. Pass allow_batch=True to see that mixture, or use "
            f"the ExAN attack (Chapter 4) to separate the samples.")
    rows = _rows(db, name, rtol)
    eps = torch.finfo(update.gradients[f"{name}.weight"].dtype).eps
    # the top singular triplet of [dW | db] over all rows, with every singular value (one SVD)
    fit = _fit_rank_one(torch.cat([dW, db[:, None]], dim=1), noise, eps, update.batch_size == 1)
    sv, x = fit.singular_values, fit.x
    w, G = db[rows], dW[rows]
    norm = float(torch.linalg.vector_norm(G))
    residual = float(torch.linalg.vector_norm(G - w[:, None] * x[None, :])) / norm if norm > 0 else 0.0
    diagnostics = {
        "layer": name, "rows_used": rows, "n_rows_used": int(rows.numel()), "n_rows": int(db.numel()),
        "residual": residual, "batch_size": update.batch_size, "dtype": "float64", "rtol": rtol,
        "fit": "rank-one SVD", "fit_method": fit.method,
        "singular_values": [float(v) for v in sv[:REPORTED_VALUES]],
        "scale_determined": fit.scale_determined, "noise_level": fit.noise_level,
        "noise_estimate": fit.noise_estimate, "fit_note": "",
    }
    if not fit.scale_determined:
        diagnostics["fit_note"] = (
            f"|v[-1]| = {abs(float(fit.v[-1])):.2e} of the top singular vector is within the noise "
            f"(noise level {fit.noise_level:.2e} per entry): the bias gradient is drowned, so the "
            f"image's sign and scale are not fixed; the least-squares estimate is returned, not determined")
    if diagnose:
        diagnostics["gradient_rank"] = int((sv > sv[0] * 1e-9).sum()) if sv[0] > 0 else 0
    on_input = feeds_on_input(model, name, lin.in_features, update.input_shape)
    images = x.reshape(1, *update.input_shape) if on_input else x.reshape(1, -1)
    diagnostics["standard_error"] = fit.standard_error.reshape(images.shape)
    rec_labels = None
    if labels:
        found = recover_labels(model, update)
        rec_labels = found.labels
        diagnostics.update(label_method=found.method, label_count=found.count,
                           label_certain=found.certain)
    try:
        check = _check(model, update, images, rec_labels, None if on_input else name, noise)
    except ValueError as err:
        # the model cannot even run the reconstruction alone (e.g. BatchNorm in training
        # mode further up): nothing is certified
        check, diagnostics["check_error"] = None, str(err)
    consistent = check is not None and check.consistent
    if check is not None:
        resolution = check.relative_tolerance
        diagnostics["check_relative_tolerance"] = resolution
        consistent = consistent and resolution <= MAX_RELATIVE_TOLERANCE
    rank_one = _rank_one(sv, dW.shape, update, name, noise)
    diagnostics["second_singular_value_ratio"] = rank_one
    consistent = consistent and rank_one <= 1.0 and fit.scale_determined
    diagnostics["direction_fixed"], diagnostics["batch_note"] = None, ""
    if consistent and update.batch_size > 1:
        # M > 1 and one image: right only if every sample is this image. The rank-one test shows
        # that only on a clean update, where the layer's output-gradient direction moves with its
        # input; under noise a blend of close samples passes it as well
        if noise > 0:
            consistent = False
            diagnostics["batch_note"] = ("a noisy update of a batch: a blend of samples close enough for the "
                                         "noise to hide the difference passes every test; not certified")
        else:
            fixed = _direction_fixed(model, update, x, check.labels, name, on_input)
            diagnostics["direction_fixed"] = fixed
            consistent = not fixed
            if fixed:
                diagnostics["batch_note"] = ("the output-gradient direction does not move with the input (e.g. "
                                             "ReLU and 2 logits): a blend of samples in one linear region "
                                             "reproduces the update; not certified")
    diagnostics.update(consistent=consistent, gradient_residual=check,
                       check_relative_residual=check.relative if check else float("nan"),
                       check_scale=check.scale if check else float("nan"))
    diagnostics["seconds"] = time.perf_counter() - t0
    determined = torch.full_like(images, consistent, dtype=torch.bool)
    return Reconstruction(images=images, labels=rec_labels, determined=determined,
                          diagnostics=diagnostics, attack="bias_ratio")


def _rank_one(s, shape, update, name, noise) -> float:
    """Second singular value ``s[1]`` of [dW | db] (``dW`` of ``shape``) over RANK_MARGIN times its noise
    floor (<= 1: one sample)."""
    if s.numel() < 2 or s[0] == 0:
        return 0.0
    eps = torch.finfo(update.gradients[f"{name}.weight"].dtype).eps
    floor = noise * (shape[0] ** 0.5 + (shape[1] + 1) ** 0.5) + BIAS_ROUNDOFF_FACTOR * eps * float(s[0])
    return float(s[1]) / (RANK_MARGIN * floor)


def _direction_fixed(model, update, x, label, name, on_input) -> bool:
    """Whether the direction of ``dl/dz`` at layer ``name`` stays put when its input ``x`` moves.

    Row ``m`` of ``[dW | db]`` is ``sum_i dl/dz_m(x_i) [x_i, 1]``. If the direction of
    ``dl/dz(x)`` is the same for nearby inputs (a piecewise-linear network with 2 logits: every
    loss vector is a multiple of (1, -1)), a batch of samples in one linear region gives a
    rank-one ``[dW | db]`` whose ratio is their blend, and the blend reproduces the update up to
    scale: nothing in the update tells it from a batch of identical samples. Probed at ``x`` and
    at ``DIRECTION_DRAWS`` seeded points ``DIRECTION_STEP`` (relative) away, in float64.
    """
    net = copy.deepcopy(model).to(torch.float64)
    layer = net.get_submodule(name)
    gen = torch.Generator().manual_seed(0)
    x = x.reshape(1, -1)
    step = DIRECTION_STEP * max(float(x.norm()) / x.numel() ** 0.5, 1.0)
    a = torch.cat([x, x + step * torch.randn(DIRECTION_DRAWS, x.shape[1], generator=gen, dtype=x.dtype)])
    out = {}

    def keep(module, args, z):
        z.retain_grad()
        out["z"] = z

    hook = layer.register_forward_hook(keep)
    try:
        images = a.reshape(-1, *update.input_shape) if on_input else a
        logits = _forward(net, images, update, None if on_input else name)
        y = label.reshape(-1)[:1].expand(a.shape[0])
        torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()
    finally:
        hook.remove()
    v = out["z"].grad.reshape(a.shape[0], -1)
    norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        return True
    u = v / norms
    return float(torch.linalg.vector_norm(u[1:] - u[:1], dim=1).max()) <= DIRECTION_RTOL


def _check(model, update, images, rec_labels, layer, noise):
    """The gradient-residual check with the recovered label, or every label when unknown."""
    use = rec_labels if rec_labels is not None and rec_labels.numel() == 1 else None
    return gradient_residual(model, update, images, use, noise=noise, layer=layer, fit_scale=True)


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
