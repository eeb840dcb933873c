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

__all__ = ["MAX_COLUMNS", "MAX_WIDTH_IN", "detach", "psnr_text", "to_display", "show_image", "image_grid", "compare_grid",
           "federated_round"]


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


#: Most images in one row of :func:`image_grid` and :func:`compare_grid`; longer batches wrap.
MAX_COLUMNS = 16

#: Widest grid (inches): wider rows get smaller images (a page shows about this much anyway).
MAX_WIDTH_IN = 14.0


def _strip(images: Sequence, h: int, w: int, gap: int) -> np.ndarray:
    """Images ``h x w`` side by side (None leaves a blank tile) as one RGBA array, transparent elsewhere."""
    strip = np.zeros((h, len(images) * (w + gap) - gap, 4))
    for k, im in enumerate(images):
        if im is None:
            continue
        arr = to_display(im)
        rgb = np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr
        x0 = k * (w + gap)
        strip[:, x0:x0 + w, :3] = rgb
        strip[:, x0:x0 + w, 3] = 1.0
    return strip


def _tile_row(ax, images: Sequence, hw: tuple, above: Sequence | None, below: Sequence | None,
              ylabel: str | None = None, greyed: Sequence = ()) -> None:
    """One row of tiles drawn as a single image on ``ax``, with text above or under each tile.

    One image per row, not one Axes per tile: a batch of 32 draws in a tenth of the time.
    The texts are the x tick labels (on top for ``above``); tiles ``greyed`` get theirs in
    grey (e.g. "(no match)").
    """
    h, w = hw
    gap = max(2, w // 12)
    ax.imshow(_strip(images, h, w, gap), interpolation="nearest", extent=(-0.5, len(images) * (w + gap) - gap - 0.5,
                                                                    h - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    # the texts are tick labels, so the layout makes room for them
    texts = above if above is not None else below
    if texts is not None:
        ks = [k for k in range(len(images)) if texts[k]]
        ax.set_xticks([k * (w + gap) + (w - 1) / 2 for k in ks], [texts[k] for k in ks], fontsize=FONT)
        on_top = above is not None
        # a row with texts above sits low in its space, one with texts under it high
        ax.set_anchor("S" if on_top else "N")
        ax.tick_params(axis="x", length=0, top=on_top, labeltop=on_top, bottom=not on_top, labelbottom=not on_top)
        for k, label in zip(ks, ax.get_xticklabels()):
            if k in greyed:
                label.set_color("grey")
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT)


def _text_lines(texts: Sequence | None) -> int:
    """Most lines among ``texts`` (0 when there are none)."""
    return max((str(t).count("\n") + 1 for t in texts or () if t), default=0)


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, *, ncols: int | None = None,
               size: float = 1.5, suptitle: str | None = None):
    """Show a batch ``(N, C, H, W)`` as a grid, each row of images drawn as one picture.

    Parameters
    ----------
    images : torch.Tensor
        Shape ``(N, C, H, W)`` with C = 1 or 3, values in ``[0, 1]`` (shown clipped).
    titles : sequence of str, optional
        One per image, written above it.
    ncols : int, optional
        Columns (default: up to 6; at most :data:`MAX_COLUMNS`).
    size : float
        Inches per image.
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        One Axes per row of images; each title is a text of its row's Axes.

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
    ncols = min(ncols or min(n, 6), MAX_COLUMNS)
    nrows = math.ceil(n / ncols)
    size = min(size, MAX_WIDTH_IN / ncols)
    text_h = 0.24 * _text_lines(titles)
    fig, axes = plt.subplots(nrows, 1, figsize=(size * ncols, (size + text_h + 0.1) * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for r in range(nrows):
        idx = range(r * ncols, (r + 1) * ncols)
        tiles = [images[k] if k < n else None for k in idx]
        _tile_row(axes[r, 0], tiles, images.shape[-2:], [titles[k] if titles and k < n else None for k in idx], None)
    if suptitle:
        fig.suptitle(suptitle, fontsize=FONT + 1)
    fig.tight_layout()
    return detach(fig)


def compare_grid(truth: torch.Tensor, reconstructed: torch.Tensor, scores=None, *,
                 labels: Sequence[str] | None = None, size: float = 1.4, suptitle: str | None = None):
    """Originals (top row) above their reconstructions (bottom row), scores under each.

    A batch of more than :data:`MAX_COLUMNS` wraps into further pairs of rows; each row of
    images is drawn as one picture (one Axes per row, labelled "original" or "rebuilt").

    Parameters
    ----------
    truth : torch.Tensor
        Shape ``(N, C, H, W)``.
    reconstructed : torch.Tensor or Reconstruction
        Shape ``(R, C, H, W)``. When ``scores`` is given, its pairing (``rec_idx``,
        ``true_idx``) decides which reconstruction sits under which original (pairs of
        originals beyond N, e.g. of a batch drawn in part, are skipped); otherwise they are
        paired in order.
    scores : leakutils.metrics.Scores, optional
        PSNR (dB) and SSIM are written under each reconstruction; an original without a
        reconstruction (a batch attacked for one image) says "(no match)".
    labels : sequence of str, optional
        Titles of the originals (e.g. class names), one per original.
    size : float
        Inches per image.
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure

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
    under, shown = [], []
    for i in range(n):
        r, k = pairs.get(i, (None, None))
        shown.append(rec[r] if r is not None else None)
        if r is None:
            under.append("(no match)")
        elif k is None:
            under.append(None)
        else:
            text = psnr_text(float(scores.psnr[k]))
            under.append(text + (f"\nSSIM {float(scores.ssim[k]):.2f}" if scores.ssim.numel() else ""))
    ncols = min(n, MAX_COLUMNS)
    chunks = math.ceil(n / ncols)
    size = min(size, (MAX_WIDTH_IN - 0.4) / max(ncols, 2))
    top_h, low_h = 0.24 * _text_lines(labels), 0.24 * _text_lines(under)
    fig, axes = plt.subplots(2 * chunks, 1, squeeze=False, figsize=(
        size * max(ncols, 2) + 0.4, chunks * (2 * size + top_h + low_h + 0.2) + (0.4 if suptitle else 0)))
    for c in range(chunks):
        idx = range(c * ncols, (c + 1) * ncols)
        top = [labels[i] if labels is not None and i < n else None for i in idx]
        hw = tuple(truth.shape[-2:])
        _tile_row(axes[2 * c, 0], [truth[i] if i < n else None for i in idx], hw, top, None, "original")
        greyed = [k for k, i in enumerate(idx) if i < n and shown[i] is None]
        _tile_row(axes[2 * c + 1, 0], [shown[i] if i < n else None for i in idx], hw, None,
                  [under[i] if i < n else None for i in idx], "rebuilt", greyed=greyed)
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
