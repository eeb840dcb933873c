"""Chapter 9's panel: a malicious server's imprint block against one client's batch.

The server puts an imprint block (:func:`leakutils.attacks.imprint.malicious_model`, Fowl et
al. 2022) with ``k`` bins in front of a one-hidden-layer ReLU MLP; its thresholds sit at
quantiles of the mean brightness of public data (the data set's images outside the
client's batch). The client computes one averaged gradient on its batch of ``M`` and the
server rebuilds every sample alone in its bin (:func:`leakutils.attacks.imprint.reconstruct`),
marking only those that pass the check. The expected number alone is ``M (1 - 1/k)^(M-1)``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .. import capture, metrics, plot
from ..attacks import imprint
from ..core import Reconstruction
from ..metrics import Scores
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["MaliciousDemo", "malicious_demo", "show_malicious_demo", "malicious_panel", "malicious_twin"]

#: Samples a figure of the panel draws (the first of the batch); the title counts them all.
SHOWN = 16

#: Bin counts of the kernel-free twin.
TWIN_BINS = (4, 16, 64, 256, 1024)

DTYPES = panel.DTYPES

#: Most bins a demo builds.
MAX_BINS = 4096


@dataclass
class MaliciousDemo:
    """One run of Chapter 9's panel.

    Attributes
    ----------
    images, labels : torch.Tensor
        The client's batch ``(M, C, H, W)`` float64 in [0, 1] and its labels ``(M,)``.
    classes : tuple of str
    bins : int
    sparse : bool
        The sparse block (one hardtanh unit per bin) rather than the cumulative one.
    dtype : str
        ``"float64"`` or ``"float32"``: the client's (and the model's) dtype.
    reconstruction : Reconstruction
        Everything the attack returned (mixtures of a shared bin included, unmarked).
    scores : Scores
        The marked images against the true batch (the evaluator's view).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple
    bins: int
    sparse: bool
    dtype: str
    reconstruction: Reconstruction
    scores: Scores

    @property
    def recovered(self) -> int:
        """Samples the server marks recovered."""
        return int(self.reconstruction.diagnostics["recovered"])

    @property
    def expected(self) -> float:
        """The closed form ``M (1 - 1/k)^(M-1)`` of samples alone in a bin."""
        return imprint.expected_alone(self.images.shape[0], self.bins)

    @property
    def psnr(self) -> float:
        """Lowest PSNR (dB) of a marked image against its matched true sample; NaN if none is marked."""
        return float(self.scores.psnr.min()) if self.scores.psnr.numel() else float("nan")


def malicious_demo(bins: int = 64, batch_size: int = 16, sparse: bool = False, dtype: str = "float64", *,
                   dataset: str = "mnist", index: int = 0, width: int = 64, seed: int = 0) -> MaliciousDemo:
    """Run Chapter 9's experiment: one client batch through an imprint block of ``k`` bins.

    Parameters
    ----------
    bins : int
        ``k``, 2..4096.
    batch_size : int
        The client's examples M, 1..64.
    sparse : bool
        The sparse block instead of the cumulative one.
    dtype : str
        ``"float64"`` or ``"float32"`` (the client's model and data).
    dataset : str
        One of :data:`~leakutils.widgets.panel.DEMO_DATASETS`; its images outside the batch
        are the server's public data.
    index : int
        Position of the batch's first image (>= 0).
    width : int
        Hidden width of the MLP behind the block, 1..8192.
    seed : int
        Seed of the MLP's initialisation.

    Returns
    -------
    MaliciousDemo

    Raises
    ------
    TypeError
        Non-integer sizes, index or seed; a non-bool ``sparse``; a non-string dtype or data set.
    ValueError
        Values out of the ranges above; an unknown dtype or data set; a batch past the data
        set's end; more bins than the public data has distinct brightness values.
    """
    k = panel.check_int("bins", bins, 2, MAX_BINS)
    sparse = panel.check_bool("sparse", sparse)
    kind = panel.check_choice("dtype", dtype, tuple(DTYPES))
    ds = panel.dataset(dataset)
    index, batch_size = panel.check_batch("index", index, batch_size, ds, dataset)
    width = panel.check_int("width", width, 1, panel.MAX_WIDTH)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    x, y = ds.images[index:index + batch_size], ds.labels[index:index + batch_size]
    # the server's public data: every image of the data set the client does not hold
    public = torch.cat([ds.images[:index], ds.images[index + batch_size:]])
    # a copy: the shared network is cached in float64
    net = copy.deepcopy(panel.relu_mlp(ds.shape, width, max(10, len(ds.classes)), seed)).to(DTYPES[kind])
    model = imprint.malicious_model(net, public.to(DTYPES[kind]), k, sparse=sparse)
    rec = imprint.reconstruct(model, capture.client_update(model, x.to(DTYPES[kind]), y))
    sure = rec.determined.flatten(1).all(dim=1)
    return MaliciousDemo(images=x, labels=y, classes=ds.classes, bins=k, sparse=sparse, dtype=kind,
                         reconstruction=rec, scores=metrics.compare(rec.images[sure], x))


def _status(result: MaliciousDemo) -> str:
    m = result.images.shape[0]
    return f"{result.recovered} of {m} recovered (expected alone {result.expected:.1f})"


def show_malicious_demo(result: MaliciousDemo, max_images: int = SHOWN):
    """Plot a :class:`MaliciousDemo`: the batch on top, each marked image under its match.

    Only the first ``max_images`` (>= 1, default :data:`SHOWN`) samples of the batch are
    drawn; the title counts the whole batch.

    Returns a ``matplotlib.figure.Figure``; raises TypeError for anything but a
    MaliciousDemo, TypeError or ValueError for a ``max_images`` that is not a positive integer.
    """
    panel.check_result(result, MaliciousDemo, "malicious_demo")
    n = min(panel.check_int("max_images", max_images, 1), result.images.shape[0])
    block = "sparse" if result.sparse else "cumulative"
    title = f"{result.dtype}, {block} block of {result.bins} bins: {_status(result)}"
    if n < result.images.shape[0]:
        title += f"; the first {n} shown"
    sure = result.reconstruction.determined.flatten(1).all(dim=1)
    names = [result.classes[int(c)] for c in result.labels[:n]]
    # compare_grid draws the pairs of the originals it is given and skips the others
    return plot.compare_grid(result.images[:n], result.reconstruction.images[sure], result.scores, labels=names,
                             suptitle=title, size=1.0)


def malicious_panel(width: int = 64):
    """A live panel: bins, batch size, block and dtype; see which samples come back exactly.

    Returns an ``ipywidgets.VBox`` re-running :func:`malicious_demo` on every change.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed.
    TypeError, ValueError
        A ``width`` that is not an integer in 1..8192.
    """
    width = panel.check_int("width", width, 1, panel.MAX_WIDTH)
    controls = {
        "bins": panel.Choice(TWIN_BINS, 64, "bins"),
        "batch_size": panel.Slider(16, 1, 32, "batch size"),
        "sparse": panel.Toggle(False, "sparse block"),
        "dtype": panel.Choice(tuple(DTYPES), "float64", "client dtype"),
    }
    return panel.build_panel(malicious_demo, show_malicious_demo, controls, width=width)


def _twin_caption(result: MaliciousDemo) -> str:
    worst = "" if result.recovered == 0 else f"; lowest {plot.psnr_text(result.psnr)}"
    return f"{_status(result)}{worst}"


def malicious_twin(bins=TWIN_BINS, batch_size: int = 16, sparse: bool = False, dtype: str = "float64", *,
                   width: int = 64, dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`malicious_panel`: the attack at each bin count, one slider.

    Parameters
    ----------
    bins : sequence of int
        2..40 distinct bin counts, each 2..4096 (default 4, 16, 64, 256, 1024).
    batch_size : int
        The client's examples, 1..64 (default 16).
    sparse : bool
        The sparse block.
    dtype : str
        ``"float64"`` or ``"float32"``.
    width : int
        Hidden width, 1..8192.
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are the :class:`MaliciousDemo` of each bin count.

    Raises
    ------
    TypeError, ValueError
        As :func:`malicious_demo`; fewer than 2 or repeated bin counts.
    """
    grid = check_values("bins", bins, lambda k: panel.check_int("bins", k, 2, MAX_BINS))
    return static_panel(malicious_demo, show_malicious_demo, "bins", grid, caption=_twin_caption, label="bins",
                        dpi=dpi, batch_size=batch_size, sparse=sparse, dtype=dtype, width=width)
