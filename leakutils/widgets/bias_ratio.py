"""Chapter 1's panel: a client batch through a one-hidden-layer ReLU MLP, attacked by the bias ratio."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import metrics, plot
from ..attacks import bias_ratio
from ..capture import client_update
from ..core import Reconstruction
from ..metrics import Scores
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["BiasRatioDemo", "bias_ratio_demo", "show_bias_ratio_demo", "bias_ratio_panel", "bias_ratio_twin"]

#: Batch sizes of the kernel-free twin: the live panel's slider, 1..8.
TWIN_BATCH_SIZES = tuple(range(1, 9))


@dataclass
class BiasRatioDemo:
    """Everything one run of the Chapter 1 experiment produced.

    Attributes
    ----------
    images, labels : torch.Tensor
        The client's batch ``(M, C, H, W)`` float64 in [0, 1] and its labels ``(M,)``.
    classes : tuple of str
    reconstruction : Reconstruction
        The bias-ratio reconstruction, a rank-one fit (one image; a mixture when M > 1).
    scores : Scores
        Against the closest sample of the batch.
    row_psnr : torch.Tensor
        ``(M,)`` float64: for each sample, the best PSNR (dB) that any single row's bias ratio
        reaches; >= 100 dB means some row isolates that sample exactly.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple
    reconstruction: Reconstruction
    scores: Scores
    row_psnr: torch.Tensor

    @property
    def rows_isolating_a_sample(self) -> int:
        """Number of samples of the batch that some single row recovers exactly (>= 100 dB)."""
        return int((self.row_psnr >= 100).sum())


def bias_ratio_demo(dataset: str = "mnist", index: int = 0, batch_size: int = 1, *, width: int = 256,
                    seed: int = 0) -> BiasRatioDemo:
    """Run Chapter 1's experiment: a client batch through ``MLP(width, ReLU)``, attacked by the bias ratio.

    The network is float64 with PyTorch's default initialisation under ``seed`` and
    ``max(10, classes)`` logits; the attack is :func:`leakutils.attacks.bias_ratio.reconstruct`
    (Phong et al. 2018) with ``allow_batch=True``.

    Parameters
    ----------
    dataset : str
        An offline data set name (see :data:`DEMO_DATASETS`).
    index : int
        Position of the first image of the batch in the data set (>= 0).
    batch_size : int
        Client batch size M, 1..64.
    width : int
        Width of the hidden layer, 1..8192.
    seed : int
        Seed of the model's initialisation, 0..2**32 - 1.

    Returns
    -------
    BiasRatioDemo

    Raises
    ------
    TypeError
        A non-string data set, a non-integer size, index or seed.
    ValueError
        Unknown data set, ``batch_size`` outside 1..64, a negative index, a batch running past
        the data set's end, ``width`` outside 1..8192, a seed out of range.
    """
    ds = panel.dataset(dataset)
    index, batch_size = panel.check_batch("index", index, batch_size, ds, dataset)
    width = panel.check_int("width", width, 1, panel.MAX_WIDTH)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    x, y = ds.images[index:index + batch_size], ds.labels[index:index + batch_size]
    model = panel.relu_mlp(ds.shape, width, max(10, len(ds.classes)), seed)
    update = client_update(model, x, y)
    rec = bias_ratio.reconstruct(model, update, allow_batch=True)
    scores = metrics.compare(rec, x, y)
    rows, _ = bias_ratio.row_inputs(model, update)
    return BiasRatioDemo(images=x, labels=y, classes=ds.classes, reconstruction=rec, scores=scores,
                         row_psnr=_closest_row_psnr(x, rows))


def _closest_row_psnr(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each sample of ``x`` (data range 1), the PSNR (dB) of the closest row of ``rows`` in MSE."""
    flat = x.flatten(1)
    err = torch.cdist(flat, rows, compute_mode="donot_use_mm_for_euclid_dist").pow(2).min(dim=1).values
    err = err / flat.shape[1]
    psnr = torch.where(err > 0, 10 * torch.log10(1.0 / err.clamp_min(1e-300)), torch.tensor(float("inf")))
    return psnr.to(torch.float64)


def show_bias_ratio_demo(result: BiasRatioDemo):
    """Plot a :class:`BiasRatioDemo`: the batch on top, the reconstruction under its closest sample.

    Returns a ``matplotlib.figure.Figure``; raises TypeError for anything but a BiasRatioDemo.
    """
    panel.check_result(result, BiasRatioDemo, "bias_ratio_demo")
    rec = result.reconstruction
    m = result.images.shape[0]
    distinct = len(set(result.labels.tolist()))
    title = (f"batch of {m}: bias ratio {result.scores.mean_psnr:.1f} dB vs the closest sample; "
             f"{rec.diagnostics['label_count']} of {distinct} distinct labels recovered; "
             f"gradient rank {rec.diagnostics['gradient_rank']}")
    names = [result.classes[int(c)] for c in result.labels]
    return plot.compare_grid(result.images, rec, result.scores, labels=names, suptitle=title)


def bias_ratio_panel(width: int = 256):
    """A live panel: choose the data set, the first image and the batch size; see the attack.

    Returns an ``ipywidgets.VBox``; it re-runs :func:`bias_ratio_demo` (hidden ``width``,
    1..8192) on every change.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed (``pip install ipywidgets``).
    TypeError, ValueError
        A ``width`` that is not an integer in 1..8192.
    """
    width = panel.check_int("width", width, 1, panel.MAX_WIDTH)
    panel.preload()
    controls = {
        "dataset": panel.Choice(panel.DEMO_DATASETS, "mnist", "data set"),
        "index": panel.Slider(0, 0, 99, "image"),
        "batch_size": panel.Slider(1, 1, 8, "batch size"),
    }
    return panel.build_panel(bias_ratio_demo, show_bias_ratio_demo, controls, width=width)


def _twin_caption(result: BiasRatioDemo) -> str:
    """One frame's score: PSNR against the closest sample, and how many samples one row isolates."""
    m, psnr = result.images.shape[0], result.scores.mean_psnr
    kind = "exact, " if psnr >= 100 else ("a mixture, " if m > 1 else "")
    return (f"{kind}{plot.psnr_text(psnr)} vs the closest sample; a single row isolates "
            f"{result.rows_isolating_a_sample} of {m}")


def bias_ratio_twin(dataset: str = "mnist", index: int = 0, batch_sizes=TWIN_BATCH_SIZES, *,
                    width: int = 256, seed: int = 0, dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`bias_ratio_panel`: the attack at every batch size, one slider.

    Runs :func:`bias_ratio_demo` for each batch size M of ``batch_sizes`` (the batch is images
    ``index .. index + M - 1`` of ``dataset``) and draws each with :func:`show_bias_ratio_demo`
    (the batch, and the reconstruction under its closest sample with its PSNR). Each frame's
    caption gives M, the PSNR (dB) against the closest sample ("exact" from 100 dB, "a mixture"
    below it when M > 1) and how many of the M samples some single row of the layer rebuilds exactly.
    About 1.5 s per frame on one core at ``width=256``.

    Parameters
    ----------
    dataset : str
        One of :data:`DEMO_DATASETS`.
    index : int
        Position of the first image of every batch (>= 0).
    batch_sizes : sequence of int
        2..40 distinct batch sizes, each 1..64, in slider order (default 1..8); the largest
        batch must fit in the data set from ``index``.
    width, seed : int
        The hidden layer's width (1..8192) and the initialisation seed (0..2**32 - 1), as for
        :func:`bias_ratio_demo`.
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are the :class:`BiasRatioDemo` of each batch size, in order.

    Raises
    ------
    TypeError
        A non-string data set, ``batch_sizes`` not a sequence, a non-integer size, index,
        width or seed.
    ValueError
        Unknown data set, fewer than 2 or more than 40 batch sizes or a repeated one, a size
        outside 1..64, a batch running past the data set's end, a negative index, a width,
        seed or dpi out of range.
    """
    ds = panel.dataset(dataset)
    sizes = check_values("batch_sizes", batch_sizes,
                         lambda m: panel.check_batch("index", index, m, ds, dataset)[1])
    width = panel.check_int("width", width, 1, panel.MAX_WIDTH)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    return static_panel(bias_ratio_demo, show_bias_ratio_demo, "batch_size", sizes, caption=_twin_caption,
                        label="batch size", dpi=dpi, dataset=dataset, index=index, width=width, seed=seed)
