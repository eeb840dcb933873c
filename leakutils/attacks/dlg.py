"""Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019): the optimisation baseline.

A dummy input (and a dummy soft label) is optimised with L-BFGS so that the gradients it
produces match the shared ones in squared L2 distance:

    min_{x', y'}  sum_params || grad(l(f(x'), softmax(y'))) - shared gradient ||^2 .

With ``labels="idlg"`` the label is read off the output layer first (iDLG, Zhao et al. 2020)
and only the input is optimised.

An optimisation fixes no value by construction, so :func:`reconstruct` ends with the
gradient-residual check (:func:`leakutils.attacks.residual.gradient_residual`): the batch
is marked determined only when the images and labels it found reproduce the shared update
within round-off (and the stated noise). Twenty L-BFGS steps rarely get there; a run that
converges on a small network does.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Reconstruction, Update
from ..validate import check_choice, check_int, check_number, check_seed
from ._common import check_model_update, layer_gradient, num_classes
from .labels import recover_labels
from .residual import _check_noise, gradient_residual

__all__ = ["reconstruct", "MAX_RELATIVE_TOLERANCE"]

#: The gradient-residual check certifies only when its overall tolerance is below this
#: fraction of the update's norm; above it the stated noise hides whether the batch found
#: reproduces the update, and nothing is marked determined (as in the bias ratio).
MAX_RELATIVE_TOLERANCE = 0.1


def reconstruct(model: nn.Module, update: Update, *, iterations: int = 300, max_iter: int = 20,
                labels: str = "optimize", seed: int = 0, lr: float = 1.0,
                noise: float | None = None, tolerance_grad: float = 1e-7,
                tolerance_change: float = 1e-9) -> Reconstruction:
    """Rebuild the client's batch by gradient matching with L-BFGS.

    Parameters
    ----------
    model : nn.Module
        The attacked model (a copy is used in float64; the model is not changed).
    update : Update
        The shared gradients (softmax cross-entropy, as :func:`leakutils.capture.client_update`).
    iterations : int
        L-BFGS steps, >= 1. DLG's code runs 300 steps.
    max_iter : int
        Inner L-BFGS iterations per step (PyTorch's ``max_iter``; DLG keeps the default 20).
        A step costs up to ``max_iter`` gradient-matching evaluations.
    labels : {"optimize", "idlg"}
        ``"optimize"``: a dummy soft label is optimised with the input (DLG).
        ``"idlg"``: the labels recovered from the output layer are used (iDLG).
    seed : int
        Seed of the dummy initialisation (standard normal, as in DLG), in ``0..2**32 - 1``.
    lr : float
        L-BFGS step size, > 0 (DLG: 1).
    noise : float, optional
        Per-entry standard deviation of noise in the update (absolute, gradient units),
        allowed for by the final gradient-residual check. Default: none (a clean update).
    tolerance_grad, tolerance_change : float
        L-BFGS's stopping tolerances (>= 0), PyTorch's defaults as in DLG's code. They are
        absolute, on the squared gradient distance, so a step stops early once that distance
        is small; 0 lets every step run its ``max_iter`` iterations, which a run that must
        reach round-off (and pass the residual check) needs.

    Returns
    -------
    Reconstruction
        ``images`` float64 ``(M, *input_shape)`` (not clipped); ``labels`` the argmax of the
        dummy label, or the iDLG labels; ``determined`` all True when the images and labels
        pass the gradient-residual check (they reproduce the whole update within round-off
        and noise: consistent, though not proved unique), all False otherwise.
        ``diagnostics``: ``steps``, ``evaluations``, ``gradient_distance`` (the best, and
        ``history`` per evaluation), ``seconds``, ``diverged`` (NaN met; the best iterate is
        returned), ``consistent`` (the check's verdict), ``gradient_residual`` (the
        :class:`~leakutils.attacks.residual.GradientResidual`, None when the check could not
        run, with ``check_error`` saying why), ``check_relative_residual``,
        ``check_relative_tolerance``.

    Raises
    ------
    TypeError
        ``model``/``update`` of the wrong type; ``iterations``, ``max_iter`` or ``seed`` not
        integers; ``lr``, ``noise`` or the tolerances not numbers; ``labels`` not a string.
    ValueError
        ``iterations < 1``, ``max_iter < 1``, a seed outside ``0..2**32 - 1``, ``lr <= 0``,
        negative noise or tolerances, an unknown ``labels`` mode, an update without gradients for the
        model's parameters (or of other shapes, or not finite), a model that does not accept
        the update's input shape or does not return ``(M, classes)`` logits, or
        (``"idlg"``) fewer recovered labels than samples.

    References
    ----------
    Zhu, Liu & Han, "Deep Leakage from Gradients", NeurIPS 2019; Zhao, Mopuri & Bilen,
    "iDLG: Improved Deep Leakage from Gradients", arXiv 2001.02610, 2020.
    """
    check_model_update(model, update)
    iterations = check_int("iterations", iterations, 1)
    max_iter = check_int("max_iter", max_iter, 1)
    labels = check_choice("labels", labels, ("optimize", "idlg"))
    seed = check_seed("seed", seed)
    lr = check_number("lr", lr, 0.0, lo_open=True)
    tolerance_grad = check_number("tolerance_grad", tolerance_grad, 0.0)
    tolerance_change = check_number("tolerance_change", tolerance_change, 0.0)
    noise = _check_noise(noise)
    t0 = time.perf_counter()
    net = _float64_copy(model)
    params = [p for p in net.parameters() if p.requires_grad]
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters, so the update holds nothing to match")
    missing = [n for n in names if n not in update.gradients]
    if missing:
        raise ValueError(f"the update has no gradients for {missing}; was it captured from this model?")
    target = [layer_gradient(update, n, p) for n, p in zip(names, params)]
    M = update.batch_size
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((M, *update.input_shape), generator=gen, dtype=torch.float64).requires_grad_(True)
    classes = num_classes(net, x, "DLG")
    if labels == "idlg":
        found = recover_labels(model, update).labels
        if found.numel() < M:
            raise ValueError(f"iDLG recovered {found.numel()} labels for {M} samples; use labels='optimize'")
        y_fixed = found[:M]
        variables = [x]
    else:
        y_soft = torch.randn((M, classes), generator=gen, dtype=torch.float64).requires_grad_(True)
        variables = [x, y_soft]
    opt = torch.optim.LBFGS(variables, lr=lr, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change)
    history: list[float] = []
    best = {"value": float("inf"), "x": x.detach().clone(), "y": None}

    def closure():
        opt.zero_grad()
        logits = net(x)
        if labels == "idlg":
            loss = F.cross_entropy(logits, y_fixed)
        else:
            loss = torch.mean(torch.sum(-F.softmax(y_soft, dim=-1) * F.log_softmax(logits, dim=-1), dim=-1))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        distance = sum(((g - t) ** 2).sum() for g, t in zip(grads, target))
        distance.backward()
        value = float(distance.detach())
        history.append(value)
        if value < best["value"]:
            best.update(value=value, x=x.detach().clone(),
                        y=y_fixed if labels == "idlg" else y_soft.detach().argmax(-1))
        return distance

    steps = 0
    for steps in range(1, iterations + 1):
        opt.step(closure)
        if history[-1] != history[-1] or history[-1] == 0.0:  # NaN, or matched exactly
            break
    diverged = any(v != v for v in history)
    y_out = best["y"] if best["y"] is not None else (y_fixed if labels == "idlg" else y_soft.detach().argmax(-1))
    images = best["x"]
    y_out = y_out.to(torch.int64)
    diagnostics = {"steps": steps, "evaluations": len(history), "gradient_distance": best["value"],
                   "history": history, "diverged": diverged, "labels": labels}
    diagnostics.update(_check(model, update, images, y_out, noise))
    diagnostics["seconds"] = time.perf_counter() - t0
    return Reconstruction(images=images, labels=y_out,
                          determined=torch.full_like(images, diagnostics["consistent"], dtype=torch.bool),
                          diagnostics=diagnostics, attack=f"dlg/{labels}")


def _check(model: nn.Module, update: Update, images: torch.Tensor, y: torch.Tensor, noise: float) -> dict:
    """The gradient-residual check of the batch found; its verdict and evidence as diagnostics."""
    try:
        check = gradient_residual(model, update, images, y, noise=noise)
    except ValueError as err:
        # e.g. BatchNorm in training mode, or non-finite images: nothing is certified
        return {"consistent": False, "gradient_residual": None, "check_error": str(err),
                "check_relative_residual": math.nan, "check_relative_tolerance": math.nan}
    resolution = check.relative_tolerance
    return {"consistent": bool(check.consistent and resolution <= MAX_RELATIVE_TOLERANCE),
            "gradient_residual": check, "check_relative_residual": check.relative,
            "check_relative_tolerance": resolution}


def _float64_copy(model: nn.Module) -> nn.Module:
    import copy

    net = copy.deepcopy(model).to(torch.float64)
    for p in net.parameters():
        p.grad = None
    return net
