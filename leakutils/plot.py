"""Figures: image grids, originals against reconstructions, and the federated round.

Every function returns a ``matplotlib.figure.Figure`` that pyplot no longer tracks
(:func:`detach`): a notebook shows it once, as the value of the cell's last line (or with
``display(fig)``), never a second time when the cell ends. Images are displayed clipped to
``[0, 1]``; the scores are computed on the unclipped values.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .validate import check_number

__all__ = ["detach", "psnr_text", "to_display", "show_image", "image_grid", "compare_grid", "federated_round"]


def detach(fig):
    """Close ``fig`` in pyplot and return it, so a notebook shows it once.

    The inline backend draws every figure pyplot still tracks when a cell ends, and also the
    figure a cell returns: a function that builds a figure with pyplot and returns it would be
    shown twice. A detached figure stays complete: ``display(fig)``, ``fig.savefig`` and the
    cell's value still draw it.

    Raises
    ------
    TypeError
        ``fig`` is not a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    plt.close(fig)
    return fig


def psnr_text(psnr: float) -> str:
    """A PSNR (dB, a real number or +-inf) as a figure reads it: ``"exact"`` when +inf, no decimals
    from 100 dB, one below. Raises TypeError for a non-number, ValueError for NaN."""
    psnr = check_number("psnr", psnr, finite=False)
    if math.isinf(psnr) and psnr > 0:
        return "exact"
    return f"{psnr:.0f} dB" if psnr >= 100 else f"{psnr:.1f} dB"


def to_display(image: torch.Tensor) -> np.ndarray:
    """One image ``(C, H, W)`` (C = 1 or 3) or ``(H, W)`` as a numpy array for ``imshow``.

    Returns ``(H, W)`` for grey, ``(H, W, 3)`` for colour, float64 clipped to ``[0, 1]``.

    Raises
    ------
    TypeError
        Not a tensor.
    ValueError
        Another shape or channel count.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch tensor, got {type(image).__name__}")
    img = image.detach().to(torch.float64).cpu()
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    elif img.ndim == 3 and img.shape[0] == 3:
        img = img.permute(1, 2, 0)
    elif img.ndim != 2:
        raise ValueError(f"an image must have shape (1, H, W), (3, H, W) or (H, W), got {tuple(image.shape)}")
    return np.clip(img.numpy(), 0.0, 1.0)


FONT = 10  # points: readable when a figure is shown at the width of a book page


def show_image(ax, image: torch.Tensor, title: str | None = None, below: str | None = None) -> None:
    """Draw one image on a matplotlib ``Axes``, without ticks, as every figure of the book does.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    image : torch.Tensor
        ``(1, H, W)`` (grey), ``(3, H, W)`` (colour) or ``(H, W)``; displayed clipped to
        ``[0, 1]`` with nearest-neighbour pixels (see :func:`to_display`).
    title : str, optional
        Written above the image.
    below : str, optional
        Written under the image (e.g. its PSNR).

    Raises
    ------
    TypeError
        ``image`` is not a tensor, or ``ax`` is not a matplotlib ``Axes``.
    ValueError
        Another image shape or channel count.
    """
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (e.g. from plt.subplots), got {type(ax).__name__}")
    arr = to_display(image)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT)
    if below:
        ax.set_xlabel(below, fontsize=FONT)


#: Alias of :func:`show_image`, kept for callers of its earlier private name.
_show = show_image


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, *, ncols: int | None = None,
               size: float = 1.5, suptitle: str | None = None):
    """Show a batch ``(N, C, H, W)`` as a grid.

    Parameters
    ----------
    images : torch.Tensor
        Shape ``(N, C, H, W)`` with C = 1 or 3, values in ``[0, 1]``.
    titles : sequence of str, optional
        One per image.
    ncols : int, optional
        Columns (default: up to 6).
    size : float
        Inches per image.
    suptitle : str, optional

    Raises
    ------
    ValueError
        Not a 4-D batch, an empty batch, or a number of titles other than N.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError("images must be a non-empty tensor of shape (N, C, H, W)")
    n = images.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")
    ncols = ncols or min(n, 6)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.35) * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            show_image(ax, images[k], titles[k] if titles else None)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=FONT + 1)
    fig.tight_layout()
    return detach(fig)


def compare_grid(truth: torch.Tensor, reconstructed: torch.Tensor, scores=None, *,
                 labels: Sequence[str] | None = None, size: float = 1.4, suptitle: str | None = None):
    """Originals (top row) above their reconstructions (bottom row), scores under each.

    Parameters
    ----------
    truth : torch.Tensor
        Shape ``(N, C, H, W)``.
    reconstructed : torch.Tensor or Reconstruction
        Shape ``(R, C, H, W)``. When ``scores`` is given, its pairing (``rec_idx``,
        ``true_idx``) decides which reconstruction sits under which original; otherwise
        they are paired in order.
    scores : leakutils.metrics.Scores, optional
        PSNR (dB) and SSIM are written under each reconstruction; an original without a
        reconstruction (a batch attacked for one image) says "(no match)".
    labels : sequence of str, optional
        Titles of the originals (e.g. class names), one per original.
    size : float
        Inches per image.
    suptitle : str, optional

    Raises
    ------
    ValueError
        Shapes that do not fit, or a number of labels other than N.
    """
    rec = getattr(reconstructed, "images", reconstructed)
    if not isinstance(truth, torch.Tensor) or not isinstance(rec, torch.Tensor):
        raise TypeError("truth and reconstructed must be tensors (or a Reconstruction)")
    if truth.ndim != 4 or rec.ndim != 4 or truth.shape[1:] != rec.shape[1:]:
        raise ValueError(f"truth {tuple(truth.shape)} and reconstruction {tuple(rec.shape)} must be image "
                         f"batches (N, C, H, W) of the same image shape")
    n = truth.shape[0]
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} originals")
    if scores is not None:
        pairs = {int(t): (int(r), k) for k, (r, t) in enumerate(zip(scores.rec_idx, scores.true_idx))}
    else:
        if rec.shape[0] != n:
            raise ValueError("without scores, truth and reconstruction need the same batch size")
        pairs = {i: (i, None) for i in range(n)}
    fig, axes = plt.subplots(2, n, figsize=(size * max(n, 2) + 0.4, 2 * size + 1.0 + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i in range(n):
        show_image(axes[0, i], truth[i], labels[i] if labels is not None else None)
        if i in pairs:
            r, k = pairs[i]
            below = None
            if k is not None:
                p = float(scores.psnr[k])
                below = psnr_text(p)
                if scores.ssim.numel():
                    below += f"\nSSIM {float(scores.ssim[k]):.2f}"
            show_image(axes[1, i], rec[r], below=below)
        else:
            axes[1, i].set_xticks([])
            axes[1, i].set_yticks([])
            for spine in axes[1, i].spines.values():
                spine.set_visible(False)
            axes[1, i].set_xlabel("(no match)", fontsize=FONT, color="grey")
    axes[0, 0].set_ylabel("original", fontsize=FONT)
    axes[1, 0].set_ylabel("rebuilt", fontsize=FONT)
    if suptitle:
        fig.suptitle(suptitle, fontsize=FONT + 1)
    fig.tight_layout()
    return detach(fig)


def federated_round(image: torch.Tensor | None = None):
    """A diagram of one FedSGD round: the server sends weights, a client returns gradients.

    Parameters
    ----------
    image : torch.Tensor, optional
        One private image ``(C, H, W)`` drawn inside the client.
    """
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 3.4)
    ax.axis("off")
    for x0, label, colour in ((0.2, "server\n(attacker)", "#f4cccc"), (6.6, "client", "#d9ead3")):
        ax.add_patch(FancyBboxPatch((x0, 0.4), 3.2, 2.5, boxstyle="round,pad=0.05", fc=colour, ec="black"))
        ax.text(x0 + 1.6, 2.55, label, ha="center", va="center", fontsize=10)
    ax.text(1.8, 1.3, "model $W, b$\nsees $\\nabla W, \\nabla b$", ha="center", va="center", fontsize=9)
    ax.text(7.35, 1.3, "private batch\n$(x, y)$", ha="center", va="center", fontsize=9)
    if image is not None:
        sub = ax.inset_axes([8.7, 0.7, 1.0, 1.5], transform=ax.transData)
        show_image(sub, image)
    ax.add_patch(FancyArrowPatch((3.5, 2.3), (6.5, 2.3), arrowstyle="-|>", mutation_scale=15))
    ax.text(5.0, 2.5, "global weights $W, b$", ha="center", fontsize=9)
    ax.add_patch(FancyArrowPatch((6.5, 1.0), (3.5, 1.0), arrowstyle="-|>", mutation_scale=15, color="firebrick"))
    ax.text(5.0, 1.2, "update: $\\nabla_W \\ell, \\nabla_b \\ell$ (batch mean)", ha="center", fontsize=9,
            color="firebrick")
    fig.tight_layout()
    return detach(fig)
