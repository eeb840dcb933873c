"""The attacker's features of an observed output vector (Chapter 5): A^L and X~.

``A^L`` is the minimum-norm activation of the shadow's last hidden layer that its output
layer maps to the observed vector; ``X~`` is an image optimised through the shadow so that
its logits match the vector (L2 and total-variation priors, started from a class-average
image). With top-k truncation only the kept entries count (:mod:`leakutils.defences.output`).
The seed study "Shadow Reconstructions" (TU/e BEP, 2024); Fredrikson et al., CCS 2015.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .defences.output import check_vectors, kept_mask
from .inversion_models import Classifier, check_images, check_labels
from .validate import check_int

__all__ = ["class_averages", "total_variation", "gradient_reconstruction", "last_layer_activations"]


def class_averages(images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Mean image per class, ``(num_classes, C, H, W)``; a class without images gets the overall mean.

    Raises
    ------
    TypeError
        Labels that are not integers.
    ValueError
        Images outside [0, 1], lengths that differ, labels outside ``[0, num_classes)``.
    """
    check_images(images)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_labels(labels, images.shape[0], num_classes)
    overall = images.mean(0)
    return torch.stack([images[labels == c].mean(0) if bool((labels == c).any()) else overall
                        for c in range(num_classes)])


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image, ``(B,)``: sum of absolute neighbour differences.

    Raises
    ------
    TypeError, ValueError
        ``x`` not a tensor ``(B, C, H, W)``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    return (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1) + \
        (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)


def gradient_reconstruction(shadow: nn.Module, o: torch.Tensor, init: torch.Tensor, *, steps: int = 400,
                            lr: float = 0.01, l2: float = 4.43e-5, tv: float = 9.49e-3, clip: float = 1.0,
                            k: int | None = None, kept: torch.Tensor | None = None, batch_size: int = 500,
                            progress: bool = False) -> torch.Tensor:
    """``X~``: images optimised through the shadow so that its logits match the observed ``o``.

    Minimises ``mean (shadow(x) - o)^2 + l2 ||x||^2 + tv TV(x)`` over ``x`` with Adam,
    clipping the gradient norm to ``clip`` and clamping ``x`` to [0, 1] after each step,
    from ``init`` (the seed: the class average of the predicted class). Every image is
    optimised independently (the shadow is in eval mode; the batch is only for speed).

    Parameters
    ----------
    shadow : nn.Module
    o : torch.Tensor
        Observed output vectors ``(N, K)``.
    init : torch.Tensor
        Starting images ``(N, C, H, W)`` in [0, 1].
    steps, lr, l2, tv, clip
        The seed's values by default (400 steps, 0.01, 4.43e-5, 9.49e-3, 1).
    k : int, optional
        When the outputs were truncated to their top ``k`` (:func:`top_k`), match only those
        (read as :func:`kept_entries`, the non-zero entries).
    kept : torch.Tensor, optional
        ``(N, K)`` bool: the kept entries, from ``top_k(..., return_mask=True)``; overrides ``k``.
    batch_size : int
    progress : bool

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)`` in [0, 1], detached.

    Raises
    ------
    ValueError
        ``init`` outside [0, 1] or of another length than ``o``; non-finite ``o``; non-positive
        settings; ``k`` outside ``1..K``; a kept set that cannot be read from ``o`` (see
        :func:`kept_entries`).
    """
    check_images(init, "init")
    o = check_vectors(o)
    if o.ndim != 2 or init.shape[0] != o.shape[0]:
        raise ValueError("init and o must have the same length")
    if steps < 1 or lr <= 0 or clip <= 0 or l2 < 0 or tv < 0:
        raise ValueError("steps, lr and clip must be positive; l2 and tv non-negative")
    batch_size = check_int("batch_size", batch_size, 1)
    shadow.eval()
    # a Classifier is queried through a frozen copy with its batch norms folded (faster)
    model = shadow.fused() if isinstance(shadow, Classifier) else shadow
    for p in model.parameters():
        p.requires_grad_(False)
    mask = kept_mask(o, k, kept).to(o.dtype)
    out = []
    try:
        for i in tqdm(range(0, o.shape[0], batch_size), desc="X~", disable=not progress, leave=False):
            target, m = o[i:i + batch_size], mask[i:i + batch_size]
            x = init[i:i + batch_size].clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                fit = ((model(x) - target).pow(2) * m).sum(1) / m.sum(1)
                loss = (fit + l2 * x.pow(2).flatten(1).sum(1) + tv * total_variation(x)).sum()
                loss.backward()
                # clip each image's gradient norm, so that images stay independent
                g = x.grad.flatten(1)
                scale = (clip / g.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                x.grad.mul_(scale[:, None, None, None])
                opt.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
            out.append(x.detach())
    finally:
        for p in shadow.parameters() if model is shadow else ():
            p.requires_grad_(True)
    return torch.cat(out)


def last_layer_activations(shadow: Classifier, o: torch.Tensor, *, k: int | None = None,
                           kept: torch.Tensor | None = None) -> torch.Tensor:
    """``A^L``: the minimum-norm vector that the shadow's output layer maps to ``o``.

    ``out(a) = W a + b = o`` has ``K`` equations for ``hidden`` unknowns (10 for 50 in the
    seed), so it is solved by least squares with the smallest norm: where gradient descent
    from zero, as in the seed, converges. With top-k truncation only the kept equations count:
    ``kept`` (from ``top_k(..., return_mask=True)``) or, with ``k`` alone, the non-zero entries
    (:func:`kept_entries`).

    Parameters
    ----------
    shadow : Classifier
    o : torch.Tensor
        ``(N, K)`` finite output vectors.
    k : int, optional
    kept : torch.Tensor, optional
        ``(N, K)`` bool.

    Returns
    -------
    torch.Tensor
        ``(N, hidden)``, float32.

    Raises
    ------
    TypeError
        A model without an ``out`` linear layer; ``o`` not a tensor.
    ValueError
        ``o`` not ``(N, K)`` for the shadow's K outputs, NaN or infinite entries; a kept set that
        cannot be read (see :func:`kept_entries`).
    """
    if not isinstance(getattr(shadow, "out", None), nn.Linear):
        raise TypeError("the shadow must have an output layer `out` (nn.Linear), as leakutils.inversion.Classifier")
    o = check_vectors(o)
    if o.ndim != 2 or o.shape[1] != shadow.out.out_features:
        raise ValueError(f"o must have shape (N, {shadow.out.out_features}) for this shadow, got {tuple(o.shape)}")
    W = shadow.out.weight.detach().double()
    b = shadow.out.bias.detach().double() if shadow.out.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype)
    mask = kept_mask(o, k, kept)
    rows = []
    for oi, mi in zip(o.double(), mask):
        rows.append(torch.linalg.pinv(W[mi]) @ (oi[mi] - b[mi]))
    return torch.stack(rows).float()
