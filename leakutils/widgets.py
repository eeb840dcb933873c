"""Live panels of the chapters, and the plain functions behind them.

Each panel is a thin ipywidgets wrapper around a function that a plain notebook cell also
calls (and asserts on), so the logic is tested even though widget callbacks swallow
exceptions. ``ipywidgets`` is imported only when a panel is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from . import data, metrics, models, plot
from .attacks import bias_ratio
from .capture import client_update
from .core import Reconstruction
from .metrics import Scores

__all__ = ["BiasRatioDemo", "bias_ratio_demo", "show_bias_ratio_demo", "bias_ratio_panel"]

#: Data sets offered by the Chapter 1 panel.
DEMO_DATASETS = ("mnist", "lfw", "patches", "retina", "digits")


@dataclass
class BiasRatioDemo:
    """Everything one run of the Chapter 1 experiment produced.

    Attributes
    ----------
    images, labels : torch.Tensor
        The client's batch ``(M, C, H, W)`` float64 in [0, 1] and its labels ``(M,)``.
    classes : tuple of str
    reconstruction : Reconstruction
        The bias-ratio least-squares reconstruction (one image; a mixture when M > 1).
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


@lru_cache(maxsize=8)
def _model(shape: tuple, width: int, num_classes: int, seed: int):
    torch.manual_seed(seed)
    return models.MLP(shape, (width,), num_classes=num_classes, activation="relu", dtype=torch.float64)


def bias_ratio_demo(dataset: str = "mnist", index: int = 0, batch_size: int = 1, *, width: int = 256,
                    seed: int = 0) -> BiasRatioDemo:
    """Run Chapter 1's experiment: a client batch through ``MLP(width, ReLU)``, attacked by the bias ratio.

    Parameters
    ----------
    dataset : str
        An offline data set name (see :data:`DEMO_DATASETS`).
    index : int
        Position of the first image of the batch in the data set (>= 0).
    batch_size : int
        Client batch size M, 1..64.
    width : int
        Width of the hidden layer.
    seed : int
        Seed of the model's initialisation (PyTorch default scheme).

    Returns
    -------
    BiasRatioDemo

    Raises
    ------
    ValueError
        Unknown data set, ``batch_size`` outside 1..64, or a batch running past the data set's end.
    """
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"dataset must be one of {DEMO_DATASETS}, got {dataset!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 64:
        raise ValueError(f"batch_size must be an integer in 1..64, got {batch_size!r}")
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    ds = data.load(dataset, dtype=torch.float64)
    if index + batch_size > len(ds):
        raise ValueError(f"{dataset!r} has {len(ds)} images; a batch of {batch_size} from index {index} runs past the end")
    x, y = ds.images[index:index + batch_size], ds.labels[index:index + batch_size]
    model = _model(ds.shape, width, max(10, len(ds.classes)), seed)
    update = client_update(model, x, y)
    rec = bias_ratio.reconstruct(model, update, allow_batch=True)
    scores = metrics.compare(rec, x, y)
    rows, _ = bias_ratio.row_inputs(model, update)
    flat = x.flatten(1)
    # For each sample, the closest single-row ratio (in MSE), as PSNR.
    err = torch.cdist(flat, rows, compute_mode="donot_use_mm_for_euclid_dist").pow(2).min(dim=1).values / flat.shape[1]
    row_psnr = torch.where(err > 0, 10 * torch.log10(1.0 / err.clamp_min(1e-300)), torch.tensor(float("inf")))
    return BiasRatioDemo(images=x, labels=y, classes=ds.classes, reconstruction=rec, scores=scores,
                         row_psnr=row_psnr.to(torch.float64))


def show_bias_ratio_demo(result: BiasRatioDemo):
    """Plot a :class:`BiasRatioDemo`: the batch on top, the reconstruction under its closest sample."""
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

    Returns an ``ipywidgets.VBox``; it re-runs :func:`bias_ratio_demo` on every change.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed (``pip install ipywidgets``).
    """
    try:
        import ipywidgets as W
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the live panels need ipywidgets: pip install ipywidgets") from err
    import matplotlib.pyplot as plt

    ds = W.Dropdown(options=DEMO_DATASETS, value="mnist", description="data set")
    idx = W.IntSlider(value=0, min=0, max=99, description="image")
    bs = W.IntSlider(value=1, min=1, max=8, description="batch size")

    def draw(dataset, index, batch_size):
        result = bias_ratio_demo(dataset, index, batch_size, width=width)
        show_bias_ratio_demo(result)
        plt.show()

    out = W.interactive_output(draw, {"dataset": ds, "index": idx, "batch_size": bs})
    return W.VBox([W.HBox([ds, idx, bs]), out])
