"""Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019): the optimisation baseline.

A dummy input (and a dummy soft label) is optimised with L-BFGS so that the gradients it
produces match the shared ones in squared L2 distance:

    min_{x', y'}  sum_params || grad(l(f(x'), softmax(y'))) - shared gradient ||^2 .

With ``labels="idlg"`` the label is read off the output layer first (iDLG, Zhao et al. 2020)
and only the input is optimised.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Reconstruction, Update
from ._common import check_model_update
from .labels import recover_labels

__all__ = ["reconstruct"]


def reconstruct(model: nn.Module, update: Update, *, iterations: int = 300, max_iter: int = 20,
                labels: str = "optimize", seed: int = 0, lr: float = 1.0) -> Reconstruction:
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
        Seed of the dummy initialisation (standard normal, as in DLG).
    lr : float
        L-BFGS step size (DLG: 1).

    Returns
    -------
    Reconstruction
        ``images`` float64 ``(M, *input_shape)`` (not clipped); ``labels`` the argmax of the
        dummy label, or the iDLG labels; ``determined`` all False (an optimisation fixes no
        value for certain); ``diagnostics``: ``steps``, ``evaluations``, ``gradient_distance``
        (the best, and ``history`` per evaluation), ``seconds``, ``diverged`` (NaN met; the
        best iterate is returned).

    Raises
    ------
    TypeError
        Wrong argument types.
    ValueError
        ``iterations < 1``, an unknown ``labels`` mode, an update without gradients for the
        model's parameters, or (``"idlg"``) fewer recovered labels than samples.
    """
    check_model_update(model, update)
    for name, value in (("iterations", iterations), ("max_iter", max_iter)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if labels not in ("optimize", "idlg"):
        raise ValueError(f"labels must be 'optimize' (DLG) or 'idlg', got {labels!r}")
    t0 = time.perf_counter()
    net = _float64_copy(model)
    params = [p for p in net.parameters() if p.requires_grad]
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    missing = [n for n in names if n not in update.gradients]
    if missing:
        raise ValueError(f"the update has no gradients for {missing}; was it captured from this model?")
    target = [update.gradients[n].detach().to(torch.float64) for n in names]
    M = update.batch_size
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((M, *update.input_shape), generator=gen, dtype=torch.float64).requires_grad_(True)
    with torch.no_grad():
        classes = net(x).shape[-1]
    if labels == "idlg":
        found = recover_labels(model, update).labels
        if found.numel() < M:
            raise ValueError(f"iDLG recovered {found.numel()} labels for {M} samples; use labels='optimize'")
        y_fixed = found[:M]
        variables = [x]
    else:
        y_soft = torch.randn((M, classes), generator=gen, dtype=torch.float64).requires_grad_(True)
        variables = [x, y_soft]
    opt = torch.optim.LBFGS(variables, lr=lr, max_iter=max_iter)
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
    return Reconstruction(images=images, labels=y_out.to(torch.int64),
                          determined=torch.zeros_like(images, dtype=torch.bool),
                          diagnostics={"steps": steps, "evaluations": len(history), "gradient_distance": best["value"],
                                       "history": history, "diverged": diverged, "labels": labels,
                                       "seconds": time.perf_counter() - t0},
                          attack=f"dlg/{labels}")


def _float64_copy(model: nn.Module) -> nn.Module:
    import copy

    net = copy.deepcopy(model).to(torch.float64)
    for p in net.parameters():
        p.grad = None
    return net
