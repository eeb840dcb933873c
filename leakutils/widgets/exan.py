"""Chapter 4's panel: a batch through a one-hidden-layer ReLU MLP, attacked by ExAN.

The network's head has the data set's own number of classes unless the caller asks for a
wider one. With two classes (LFW: face or not) the attack refuses: every loss vector of a
2-class softmax points along ``(1, -1)``, so the ExAN columns of different samples are all
parallel and nothing separates the samples. The demo then records the refusal and its reason
instead of a reconstruction.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import torch

from .. import metrics, plot
from ..capture import client_update
from ..core import Reconstruction
from ..metrics import Scores
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["ExanDemo", "exan_demo", "show_exan_demo", "exan_panel", "exan_twin"]

#: The text of the panel's run button: its demo can take seconds, so it runs on request.
RUN = "Run the attack"

#: Hidden widths the Chapter 4 demo accepts.
EXAN_WIDTHS = (16, panel.MAX_WIDTH)

#: Most logits the demo's head may have (a wider head than the data's classes is a server's choice).
MAX_LOGITS = 1000

#: Logits of the panel's wider head (as many as MNIST's classes, the most of any demo data set).
WIDE_HEAD = 10

#: Width (characters) at which a refusal's reason is wrapped in the figure's title.
REASON_WRAP = 110

#: Batch sizes of the kernel-free twin: the live panel's slider range 1..64, densest where
#: 1024 hidden units stop rebuilding every digit of an MNIST batch.
TWIN_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 48, 56, 58, 60, 62, 64)

#: Samples drawn on each frame of the twin (its caption counts the whole batch).
TWIN_IMAGES = 8


@dataclass
class ExanDemo:
    """One run of Chapter 4's panel: a batch through a one-hidden-layer ReLU network, attacked by ExAN.

    Attributes
    ----------
    images, labels : torch.Tensor
        The client's batch ``(M, C, H, W)`` float64 in [0, 1] and its labels ``(M,)``.
    exans : torch.Tensor
        int64 ``(M,)``: each sample's true number of ExANs in the hidden layer (what the
        attacker cannot see).
    reconstruction : Reconstruction or None
        What :func:`leakutils.attacks.exan.reconstruct` returned; None when it refused.
    scores : Scores or None
        The recovered samples against the batch (Hungarian matching); None if none recovered.
    exact : torch.Tensor
        bool ``(M,)``: which samples of the batch came back with PSNR >= 100 dB.
    num_classes : int
        Logits of the attacked network's head (the data set's classes unless a wider head was
        asked for).
    refused : str or None
        The attack's reason when it refused the network or the update (e.g. a 2-logit head),
        None when it ran.
    """

    images: torch.Tensor
    labels: torch.Tensor
    exans: torch.Tensor
    reconstruction: Reconstruction | None
    scores: Scores | None
    exact: torch.Tensor
    num_classes: int = 10
    refused: str | None = None

    @property
    def fraction_exact(self) -> float:
        """Fraction of the batch rebuilt with PSNR >= 100 dB, in [0, 1]."""
        return float(self.exact.double().mean())


def exan_demo(batch_size: int = 8, width: int = 1024, *, dataset: str = "mnist", start: int = 0,
              peel: bool = True, verify: bool = True, seed: int = 0,
              num_classes: int | None = None) -> ExanDemo:
    """Attack a batch of ``batch_size`` images through ``MLP(width ReLU)`` with the ExAN attack.

    The attack is :func:`leakutils.attacks.exan.reconstruct` (Pan et al., USENIX Security
    2022); the network is float64 with ``num_classes`` logits (default: the data set's own
    classes, so LFW gets its true 2-logit head). When the attack refuses (a 2-logit head: every
    loss vector points along ``(1, -1)``, so grouping cannot tell samples apart), the result
    holds the reason in ``refused`` and no reconstruction.

    Parameters
    ----------
    batch_size : int
        ``M``, 1..64.
    width : int
        Hidden units, 16..8192.
    dataset : str
        One of :data:`DEMO_DATASETS`.
    start : int
        Index of the batch's first image in the data set, ``0..len(data set) - batch_size``.
    peel, verify : bool
        Passed to :func:`leakutils.attacks.exan.reconstruct` (False, False: the paper's B.1-B.3).
    seed : int
        Seed of PyTorch's default initialisation of the network, 0..2**32 - 1.
    num_classes : int, optional
        Logits of the head, from the data set's number of classes to :data:`MAX_LOGITS`.
        None: the data set's number of classes. A wider head is a choice of whoever defines
        the model (in federated learning, the server): the unused logits make the loss
        vectors of different samples point different ways.

    Returns
    -------
    ExanDemo
        With ``refused`` set (and ``reconstruction`` None) when the attack refused.

    Raises
    ------
    TypeError
        A non-integer size, start, seed or ``num_classes``, a non-string data set, a non-bool
        ``peel`` or ``verify``.
    ValueError
        Sizes out of range, an unknown data set, a batch that runs past the data set, fewer
        logits than the data set has classes.
    """
    from ..attacks import exan

    ds = panel.dataset(dataset)
    start, batch_size = panel.check_batch("start", start, batch_size, ds, dataset)
    width = panel.check_int("width", width, *EXAN_WIDTHS)
    peel, verify = panel.check_bool("peel", peel), panel.check_bool("verify", verify)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    classes = len(ds.classes)
    K = classes if num_classes is None else panel.check_int("num_classes", num_classes, classes, MAX_LOGITS)
    x, y = ds.images[start:start + batch_size], ds.labels[start:start + batch_size]
    net = panel.relu_mlp(tuple(ds.shape), width, K, seed)
    update = client_update(net, x, y)
    exans = exan.count_exans(net, x)["act1"]["exans"]
    try:
        rec = exan.reconstruct(net, update, peel=peel, verify=verify)
    except ValueError as err:  # the attack refuses what it cannot do honestly (e.g. 2 logits)
        return ExanDemo(images=x, labels=y, exans=exans, reconstruction=None, scores=None,
                        exact=torch.zeros(x.shape[0], dtype=torch.bool), num_classes=K, refused=str(err))
    scores, exact = _score_recovered(rec, x, y)
    return ExanDemo(images=x, labels=y, exans=exans, reconstruction=rec, scores=scores, exact=exact,
                    num_classes=K)


def _score_recovered(rec: Reconstruction, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """Scores of the samples ``rec`` marks recovered against the batch, and which came back exact."""
    ok = rec.diagnostics["recovered"]
    exact = torch.zeros(x.shape[0], dtype=torch.bool)
    if not ok.any():
        return None, exact
    sub = Reconstruction(rec.images[ok], rec.labels[ok], rec.determined[ok], rec.diagnostics, rec.attack)
    scores = metrics.compare(sub, x, y)
    exact[torch.as_tensor(scores.true_idx)] = scores.psnr >= 100
    return scores, exact


def show_exan_demo(result: ExanDemo, max_images: int = 16):
    """Plot an :class:`ExanDemo`: originals titled with their ExAN count, reconstructions below.

    Shows the first ``max_images`` (>= 1) samples of the batch. Returns a
    ``matplotlib.figure.Figure``; raises TypeError for anything but an ExanDemo.
    """
    panel.check_result(result, ExanDemo, "exan_demo")
    n = min(panel.check_int("max_images", max_images, 1), result.images.shape[0])
    titles = [f"{int(e)} ExAN{'s' if int(e) != 1 else ''}" for e in result.exans[:n]]
    if result.refused is not None:
        fig = plot.image_grid(result.images[:n], titles)
        reason = textwrap.fill(result.refused, REASON_WRAP)
        fig.suptitle(f"{result.num_classes} logits: the attack refuses\n{reason}", fontsize=plot.FONT - 2)
        return fig
    ok = result.reconstruction.diagnostics["recovered"]
    rec = result.reconstruction.images[ok]
    d = result.reconstruction.diagnostics
    head = (f"batch of {result.images.shape[0]}: {int(result.exact.sum())} rebuilt exactly; "
            f"batch size read as {d['batch_size']}")
    if result.scores is None or rec.shape[0] == 0:
        fig = plot.image_grid(result.images[:n], titles)
        fig.suptitle(head + " (nothing recovered)", fontsize=plot.FONT)
        return fig
    # compare_grid draws the pairs of the originals it is given and skips the others
    return plot.compare_grid(result.images[:n], rec, result.scores, labels=titles, size=1.1, suptitle=head)


def exan_panel():
    """A live panel: batch size and width sliders; see ExAN counts, what is recovered, the images.

    Returns an ``ipywidgets.VBox`` that re-runs :func:`exan_demo` when its button is pressed
    (a batch of 64 through 4,096 units of a colour image takes seconds). The
    "10 logits" toggle gives the head :data:`WIDE_HEAD` logits instead of the data set's own
    classes (LFW: 2, which the attack refuses, with the reason shown).

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed (``pip install ipywidgets``).
    """
    panel.preload()
    controls = {
        "batch_size": panel.Slider(8, 1, 64, "batch size"),
        "width": panel.Choice([64, 128, 256, 512, 1024, 2048, 4096], 1024, "width"),
        "dataset": panel.Choice(panel.DEMO_DATASETS, "mnist", "data"),
        "peel": panel.Toggle(True, "peeling"),
        "wide_head": panel.Toggle(False, "10 logits"),
    }
    return panel.build_panel(_panel_demo, show_exan_demo, controls, rows=(2, None), run_button=RUN)


def _panel_demo(wide_head: bool = False, **values) -> ExanDemo:
    """:func:`exan_demo` with the head the panel's toggle picks (the data's classes, or 10 logits)."""
    return exan_demo(num_classes=WIDE_HEAD if wide_head else None, **values)


def _twin_caption(result: ExanDemo) -> str:
    """One frame's score: samples rebuilt exactly, and the batch size the attack read."""
    m = result.images.shape[0]
    if result.refused is not None:
        return f"the attack refuses ({result.num_classes} logits)"
    read = result.reconstruction.diagnostics["batch_size"]
    return f"{int(result.exact.sum())} of {m} rebuilt exactly; batch size read as {read}"


def exan_twin(batch_sizes=TWIN_BATCH_SIZES, width: int = 1024, *, dataset: str = "mnist", start: int = 0,
              peel: bool = True, seed: int = 0, max_images: int = TWIN_IMAGES,
              dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`exan_panel`: the ExAN attack at every batch size, one slider.

    Runs :func:`exan_demo` for each batch size M of ``batch_sizes`` (images ``start .. start +
    M - 1`` of ``dataset`` through ``MLP(width ReLU)`` with the data set's own classes) and
    draws each with :func:`show_exan_demo` (the first ``max_images`` originals titled with
    their ExAN count, the reconstructions below with their PSNR). Each frame's caption gives
    M, how many of the M samples came back exactly (PSNR >= 100 dB) and the batch size the
    attack read from the update. About 0.5 s per frame at M = 8 and 2 s at M = 64 on one
    core at ``width=1024``.

    Parameters
    ----------
    batch_sizes : sequence of int
        2..40 distinct batch sizes, each 1..64, in slider order (default
        :data:`TWIN_BATCH_SIZES`); the largest batch must fit in the data set from ``start``.
    width : int
        Hidden units, 16..8192.
    dataset : str
        One of :data:`DEMO_DATASETS` (LFW's 2-logit head is refused on every frame).
    start : int
        Index of every batch's first image, >= 0.
    peel : bool
        Peel recovered samples off the update (see :func:`exan_demo`).
    seed : int
        Seed of the network's initialisation, 0..2**32 - 1.
    max_images : int
        Samples drawn per frame, >= 1 (default :data:`TWIN_IMAGES`; the caption counts the
        whole batch).
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are the :class:`ExanDemo` of each batch size, in order.

    Raises
    ------
    TypeError
        ``batch_sizes`` not a sequence; a non-integer size, width, start, seed or
        ``max_images``; a non-string data set; a non-bool ``peel``.
    ValueError
        Unknown data set, fewer than 2 or more than 40 batch sizes or a repeated one, a size
        outside 1..64, a batch running past the data set's end, a negative start, a width,
        seed, ``max_images`` or dpi out of range.
    """
    ds = panel.dataset(dataset)
    sizes = check_values("batch_sizes", batch_sizes, lambda m: panel.check_batch("start", start, m, ds, dataset)[1])
    width = panel.check_int("width", width, *EXAN_WIDTHS)
    peel = panel.check_bool("peel", peel)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    max_images = panel.check_int("max_images", max_images, 1)
    return static_panel(exan_demo, lambda r: show_exan_demo(r, max_images), "batch_size", sizes,
                        caption=_twin_caption, label="batch size", dpi=dpi, width=width, dataset=dataset,
                        start=start, peel=peel, seed=seed)
