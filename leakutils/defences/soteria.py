"""Soteria: prune the gradient of one fully connected layer where its input reveals the most.

Sun et al., "Soteria: Provable Defense against Privacy Leakage in Federated Learning from
Representation Perspective", CVPR 2021. The input ``r`` of a fully connected layer (the
"representation") is what its weight gradient leaks: for one sample ``dL/dW = (dL/dz) r^T``,
so each column ``i`` of the weight gradient is ``r_i`` times a vector. Soteria scores each
feature ``i`` by how much the input ``x`` must move to change ``r_i`` relative to ``r_i``
itself, and withholds the columns of the features that tell most about ``x``.

The rule, as the authors' code computes it (``GS_attack/reconstruct_image.py`` of
github.com/jeremy313/Soteria, the Inverting-Gradients experiments), for a batch ``x_1..x_M``::

    s_i = sum_m ||d r_mi / d x_m|| / (r_mi + 0.1)

(one backward pass of the one-hot ``e_i`` per feature); the features with ``s_i`` below the
``prune_fraction`` percentile of ``s`` (NumPy's linear interpolation) have their weight-
gradient column set to 0, the others are kept. Small ``s_i`` means a large ``r_i / ||dr_i/dx||``,
the paper's ``||r (dr/dx)^-1||``: a feature whose value ``x`` pins down tightly. The authors'
DLG notebook divides by ``r_mi`` alone; the ``+ 0.1`` guards against features at 0. One
deliberate change: this module divides by ``|r_mi| + 0.1``, which is the same for the
non-negative features the paper uses (after ReLU or sigmoid, or image pixels) and stays
finite where a feature is near ``-0.1``.

For the first layer of an MLP the representation is the flattened image itself, ``r_i =
x_i``: ``d r_i / d x`` is the unit vector ``e_i``, so ``s_i = sum_m 1 / (x_mi + 0.1)`` and
Soteria withholds the columns of the brightest pixels.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attacks._common import find_layer
from ..capture import client_update, unwrap_opacus
from ..core import Update
from ..validate import check_bool, check_number, check_tensor

__all__ = ["soteria", "feature_scores"]

#: Added to ``|r|`` in the score's denominator, as in the authors' code.
OFFSET = 0.1

#: Entries of the batched input gradients held at once (``chunk * M * input size``).
_CHUNK_ENTRIES = 2**24


def feature_scores(model: nn.Module, x: torch.Tensor, *, layer: str | None = None) -> tuple[str, torch.Tensor]:
    """Soteria's score of each input feature of one ``nn.Linear``: ``s_i = sum_m ||dr_mi/dx_m|| / (|r_mi| + 0.1)``.

    Samples are assumed independent (no BatchNorm in train mode), as in the authors' code,
    which backpropagates one one-hot over the whole batch per feature. The model is used in
    its current mode and is not changed.

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor
        ``(M, *input_shape)``, the model's floating dtype, finite.
    layer : str, optional
        Name of the ``nn.Linear`` (as in ``model.named_modules()``). Default: the first one
        the forward pass calls (for an MLP its first layer; for a CNN its first fully
        connected layer, whose input is the flattened feature maps).

    Returns
    -------
    (str, torch.Tensor)
        The layer's name and the scores, shape ``(in_features,)``, ``x``'s dtype, ``>= 0``;
        a feature that does not depend on ``x`` scores 0.

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``; ``x`` not a floating tensor of the model's dtype;
        ``layer`` not a string or not naming an ``nn.Linear``.
    ValueError
        NaN or infinite ``x``; no ``nn.Linear``; an unknown layer name; a layer the forward
        pass calls other than once, or whose input is not ``(M, in_features)``.
    """
    model = unwrap_opacus(model)
    check_tensor("x", x, min_ndim=2, shape="(M, *input_shape)")
    dtype = next((p.dtype for p in model.parameters()), x.dtype)
    if x.dtype != dtype:
        raise TypeError(f"x is {x.dtype} but the model is {dtype}: convert one of them, e.g. x.to({dtype})")
    name, lin = find_layer(model, layer, nn.Linear, input_shape=tuple(x.shape[1:]),
                           hint="Soteria perturbs the gradient of a fully connected layer.")
    seen: list[torch.Tensor] = []
    hook = lin.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0]))
    xg = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            model(xg)
    finally:
        hook.remove()
    if len(seen) != 1:
        raise ValueError(f"the forward pass calls layer {name!r} {len(seen)} times; Soteria needs a layer called once")
    r = seen[0]
    m = x.shape[0]
    if r.ndim != 2 or r.shape[0] != m:
        raise ValueError(f"layer {name!r} receives inputs of shape {tuple(r.shape)}; Soteria needs (M, in_features)")
    if not r.requires_grad:
        return name, torch.zeros(r.shape[1], dtype=x.dtype)
    # the layer reads the input itself (an MLP's first layer): dr_i/dx is a unit vector, norm 1
    norms = torch.ones_like(r.detach()) if _is_input_view(r, xg) else _input_gradient_norms(r, xg)
    scores = (norms / (r.detach().abs() + OFFSET)).sum(0)
    return name, scores.detach()


#: Autograd nodes that only reshape: through them ``r`` is the input itself, reshaped.
_VIEW_NODES = ("ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "AliasBackward0")


def _is_input_view(r: torch.Tensor, xg: torch.Tensor) -> bool:
    """Whether ``r`` is ``xg`` reshaped to ``(M, F)`` by view operations only (so ``dr/dx = I``)."""
    node = r.grad_fn
    while node is not None and type(node).__name__ in _VIEW_NODES:
        parents = [n for n, _ in node.next_functions if n is not None]
        if len(parents) != 1:
            return False
        node = parents[0]
    return (node is not None and type(node).__name__ == "AccumulateGrad" and node.variable is xg
            and r.shape[1] == xg[0].numel())


def _input_gradient_norms(r: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
    """``(M, F)``: ``||d r[m, i] / d x[m]||`` for every sample ``m`` and feature ``i``."""
    m, features = r.shape
    size = xg[0].numel()
    chunk = max(1, min(features, _CHUNK_ENTRIES // max(1, m * size)))
    out = torch.empty(m, features, dtype=r.dtype)
    for start in range(0, features, chunk):
        stop = min(features, start + chunk)
        one_hot = torch.zeros(stop - start, m, features, dtype=r.dtype)
        one_hot[torch.arange(stop - start), :, torch.arange(start, stop)] = 1
        (gx,) = torch.autograd.grad(r, xg, grad_outputs=one_hot, is_grads_batched=True, retain_graph=True,
                                    allow_unused=True)
        if gx is None:
            out[:, start:stop] = 0
        else:
            out[:, start:stop] = gx.reshape(stop - start, m, size).norm(dim=2).T
    return out


def soteria(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, prune_fraction: float = 0.8,
            layer: str | None = None, return_mask: bool = False):
    """The client's update with Soteria applied: one layer's weight-gradient columns withheld.

    The update is :func:`~leakutils.capture.client_update` of ``(x, y)``; then the columns
    of ``<layer>.weight``'s gradient whose :func:`feature_scores` fall below the
    ``prune_fraction`` quantile (``torch.quantile``, linear interpolation like the authors'
    ``np.percentile``) are set to 0. Every other gradient, the layer's bias included, is
    sent unchanged. With ties or ``prune_fraction`` between quantile points the number
    withheld is the number of scores strictly below the threshold, about ``prune_fraction *
    in_features`` (0 for ``prune_fraction=0``).

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor
        ``(M, *input_shape)``, the model's dtype.
    y : torch.Tensor
        ``(M,)`` int64 labels.
    prune_fraction : float
        In ``[0, 1)``; the paper's experiments prune 0.8 or more of the features.
    layer : str, optional
        The ``nn.Linear`` to defend (default: the first one called, see
        :func:`feature_scores`).
    return_mask : bool
        Also return the kept features.

    Returns
    -------
    Update or (Update, torch.Tensor)
        The defended update (per-sample gradients dropped), and with ``return_mask`` a bool
        tensor ``(in_features,)``, True for the columns sent.

    Raises
    ------
    TypeError, ValueError
        Inputs as :func:`~leakutils.capture.client_update` and :func:`feature_scores`;
        ``prune_fraction`` outside ``[0, 1)``; ``return_mask`` not a bool.
    """
    update = client_update(model, x, y)
    prune_fraction = check_number("prune_fraction", prune_fraction, 0.0, 1.0, hi_open=True)
    check_bool("return_mask", return_mask)
    name, scores = feature_scores(model, x, layer=layer)
    threshold = torch.quantile(scores.double(), prune_fraction)
    keep = scores.double() >= threshold
    key = f"{name}.weight"
    if key not in update.gradients:
        raise ValueError(f"the weight of layer {name!r} is not trainable, so its gradient is not shared; "
                         f"pick a trainable layer")

    def defended(pname: str, g: torch.Tensor) -> torch.Tensor:
        return g.detach() * keep.to(g.dtype) if pname == key else g.detach().clone()

    out: Update = update.map(defended)
    return (out, keep) if return_mask else out
