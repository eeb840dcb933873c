"""Chapter 8's panel: one FedAvg client's local training, read back by a curious server.

The client trains a one-hidden-layer ReLU MLP for ``T`` full-batch SGD steps on its batch
and returns its weights; the server reads the pseudo-gradient ``(w_sent - w_returned) / lr``
(:func:`leakutils.defences.fedavg_update`, exactly what :class:`leakutils.fl.CuriousStrategy`
reads from a Flower reply) and runs the analytic attacks
(:func:`leakutils.attacks.fedavg.analytic`: ExAN, else the bias ratio); after more than one
step, what it returns counts as recovered only if replaying the ``T`` steps on it gives the
update (:func:`leakutils.attacks.fedavg.certify`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .. import defences, metrics, plot
from ..attacks import fedavg
from ..core import Reconstruction
from ..metrics import Scores
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["FedAvgDemo", "fedavg_demo", "show_fedavg_demo", "fedavg_panel", "fedavg_twin"]

#: Local steps of the kernel-free twin.
TWIN_STEPS = (1, 2, 3, 5, 10)

DTYPES = panel.DTYPES

#: Most local steps a demo runs.
MAX_STEPS = 50


@dataclass
class FedAvgDemo:
    """One run of Chapter 8's panel.

    Attributes
    ----------
    images, labels : torch.Tensor
        The client's batch ``(M, C, H, W)`` float64 in [0, 1] and its labels ``(M,)``.
    classes : tuple of str
    local_steps : int
    dtype : str
        ``"float64"`` or ``"float32"``: the client's (and the model's) dtype.
    reconstruction : Reconstruction
        What the server's analytic attack returned, its mask set by the replay check when
        ``local_steps > 1``.
    scores : Scores
        Against the true batch (the evaluator's view).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple
    local_steps: int
    dtype: str
    reconstruction: Reconstruction
    scores: Scores

    @property
    def recovered(self) -> int:
        """Samples the server marks recovered (every value determined)."""
        rec = self.reconstruction
        return int(rec.determined.flatten(1).all(dim=1).sum()) if rec.images.shape[0] else 0

    @property
    def psnr(self) -> float:
        """Median PSNR (dB) of the server's images against their matched true samples."""
        return float(self.scores.psnr.median()) if self.scores.psnr.numel() else float("nan")


def fedavg_demo(local_steps: int = 1, batch_size: int = 1, dtype: str = "float64", *, dataset: str = "mnist",
                index: int = 0, width: int = 256, lr: float = 0.1, seed: int = 0) -> FedAvgDemo:
    """Run Chapter 8's experiment: ``T`` local steps on a client batch, attacked from the weights.

    Parameters
    ----------
    local_steps : int
        Full-batch local SGD steps ``T``, 1..50.
    batch_size : int
        The client's examples M, 1..64.
    dtype : str
        ``"float64"`` or ``"float32"`` (the client's model and data).
    dataset : str
        One of :data:`~leakutils.widgets.panel.DEMO_DATASETS`.
    index : int
        Position of the batch's first image (>= 0).
    width : int
        Hidden width, 1..8192.
    lr : float
        The learning rate the server sends, in (0, 10].
    seed : int
        Seed of the model's initialisation.

    Returns
    -------
    FedAvgDemo

    Raises
    ------
    TypeError
        Non-integer sizes, steps, index or seed; a non-string dtype or data set.
    ValueError
        Values out of the ranges above; an unknown dtype or data set; a batch past the data
        set's end.
    """
    steps = panel.check_int("local_steps", local_steps, 1, MAX_STEPS)
    kind = panel.check_choice("dtype", dtype, tuple(DTYPES))
    ds = panel.dataset(dataset)
    index, batch_size = panel.check_batch("index", index, batch_size, ds, dataset)
    width = panel.check_int("width", width, 1, panel.MAX_WIDTH)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 10:
        raise ValueError(f"lr must be a number in (0, 10], got {lr!r}")
    x, y = ds.images[index:index + batch_size], ds.labels[index:index + batch_size]
    # a copy: the shared network is cached in float64
    model = copy.deepcopy(panel.relu_mlp(ds.shape, width, max(10, len(ds.classes)), seed)).to(DTYPES[kind])
    update = defences.fedavg_update(model, x.to(DTYPES[kind]), y, lr=float(lr), local_steps=steps)
    rec = fedavg.analytic(model, update)
    if steps > 1:
        rec = fedavg.certify(model, update, rec, lr=float(lr), local_steps=steps)
    return FedAvgDemo(images=x, labels=y, classes=ds.classes, local_steps=steps, dtype=kind, reconstruction=rec,
                      scores=metrics.compare(rec, x, y))


def _status(result: FedAvgDemo) -> str:
    m, rec = result.images.shape[0], result.reconstruction
    replayed = rec.diagnostics.get("replay", {}).get("consistent", False)
    how = "replay of the local steps" if replayed else ("ExAN's own check" if rec.attack == "exan" else "check")
    if result.recovered:
        return f"{result.recovered} of {m} recovered and certified ({how})"
    return f"nothing certified ({rec.attack.replace('_', ' ')}: best effort)"


def show_fedavg_demo(result: FedAvgDemo):
    """Plot a :class:`FedAvgDemo`: the batch on top, the server's images under their matches.

    Returns a ``matplotlib.figure.Figure``; raises TypeError for anything but a FedAvgDemo.
    """
    panel.check_result(result, FedAvgDemo, "fedavg_demo")
    m = result.images.shape[0]
    title = (f"{result.dtype} client, batch of {m}, {result.local_steps} local step"
             f"{'s' if result.local_steps > 1 else ''}: {_status(result)}")
    names = [result.classes[int(c)] for c in result.labels]
    return plot.compare_grid(result.images, result.reconstruction, result.scores, labels=names, suptitle=title)


def fedavg_panel(width: int = 256):
    """A live panel: local steps, batch size and the client's dtype; see what the server reads back.

    Returns an ``ipywidgets.VBox`` re-running :func:`fedavg_demo` on every change.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed.
    TypeError, ValueError
        A ``width`` that is not an integer in 1..8192.
    """
    width = panel.check_int("width", width, 1, panel.MAX_WIDTH)
    controls = {
        "local_steps": panel.Slider(1, 1, 10, "local steps"),
        "batch_size": panel.Slider(1, 1, 8, "batch size"),
        "dtype": panel.Choice(tuple(DTYPES), "float64", "client dtype"),
    }
    return panel.build_panel(fedavg_demo, show_fedavg_demo, controls, width=width)


def _twin_caption(result: FedAvgDemo) -> str:
    return f"median {plot.psnr_text(result.psnr)}; {_status(result)}"


def fedavg_twin(local_steps=TWIN_STEPS, batch_size: int = 8, dtype: str = "float64", *, width: int = 256,
                dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`fedavg_panel`: the attack at each number of local steps, one slider.

    Parameters
    ----------
    local_steps : sequence of int
        2..40 distinct step counts, each 1..50 (default 1, 2, 3, 5, 10).
    batch_size : int
        The client's examples, 1..64 (default 8: ExAN's batch, which local steps defeat).
    dtype : str
        ``"float64"`` or ``"float32"``.
    width : int
        Hidden width, 1..8192.
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are the :class:`FedAvgDemo` of each step count.

    Raises
    ------
    TypeError, ValueError
        As :func:`fedavg_demo`; fewer than 2 or repeated step counts.
    """
    steps = check_values("local_steps", local_steps, lambda t: panel.check_int("local_steps", t, 1, MAX_STEPS))
    return static_panel(fedavg_demo, show_fedavg_demo, "local_steps", steps, caption=_twin_caption,
                        label="local steps", dpi=dpi, batch_size=batch_size, dtype=dtype, width=width)
