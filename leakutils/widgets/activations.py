"""Chapter 2's panel: a gradient carried down through an activation from its rebuilt output."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import models, plot
from ..attacks import bias_ratio
from ..capture import client_update
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["PropagationDemo", "propagation_demo", "show_propagation_demo", "propagation_panel",
           "propagation_twin"]

#: Widest hidden layer of the Chapter 2 network (two ``width x width`` layers in float64).
MAX_PROPAGATION_WIDTH = 2048


@dataclass
class PropagationDemo:
    """One run of Chapter 2's experiment: a gradient carried through an activation.

    Attributes
    ----------
    activation : str
    X : torch.Tensor
        ``(width,)`` float64: the activation's output, rebuilt by the bias ratio of ``fc2``.
    propagated : torch.Tensor
        ``(width,)``: ``dl/dO`` computed from ``X`` and ``dl/dX = W2^T dl/db2`` alone.
    true : torch.Tensor
        ``(width,)``: the true ``dl/dO``, which is the shared bias gradient of ``fc1``.
    max_error : float
        ``max |propagated - true| / max |true|``.
    lost : float
        Fraction of units whose pre-activation cannot be recovered from ``X`` (ReLU: X = 0),
        in [0, 1].
    """

    activation: str
    X: torch.Tensor
    propagated: torch.Tensor
    true: torch.Tensor
    max_error: float
    lost: float


def propagation_demo(activation: str = "sigmoid", dataset: str = "mnist", index: int = 0, *,
                     width: int = 128, seed: int = 0) -> PropagationDemo:
    """Rebuild ``X = A(fc1(x))`` by the bias ratio of ``fc2`` and carry ``dl/dX`` through ``A``.

    The network is ``MLP(shape, (width, width), activation)`` in float64, PyTorch's default
    initialisation with ``seed``. The propagated ``dl/dO = dl/dX * A'(O)``, with ``A'(O)``
    written in terms of ``X`` (R-CONV, Eltaras et al. 2024, Table 1), is compared with the
    shared bias gradient of ``fc1``, which equals the true ``dl/dO``.

    Parameters
    ----------
    activation : str
        One of :data:`DEMO_ACTIVATIONS`.
    dataset : str
        One of :data:`DEMO_DATASETS`.
    index : int
        The image, ``0..len(data set) - 1``.
    width : int
        Units of each hidden layer, 1..2048.
    seed : int
        Seed of the initialisation, 0..2**32 - 1.

    Returns
    -------
    PropagationDemo

    Raises
    ------
    TypeError
        A non-string activation or data set, a non-integer index, width or seed.
    ValueError
        Unknown activation or data set, an index past the data set's end, a width or seed
        out of range.
    """
    from .. import activations

    panel.check_choice("activation", activation, panel.DEMO_ACTIVATIONS)
    ds = panel.dataset(dataset)
    index = panel.check_int("index", index, 0, len(ds) - 1)
    width = panel.check_int("width", width, 1, MAX_PROPAGATION_WIDTH)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    torch.manual_seed(seed)
    model = models.MLP(ds.shape, (width, width), num_classes=max(10, len(ds.classes)), activation=activation,
                       dtype=torch.float64, **panel.DEMO_ACTIVATIONS[activation])
    x, y = ds[index]
    update = client_update(model, x, y)
    X = bias_ratio.reconstruct(model, update, layer="fc2", labels=False).images[0]
    grad_X = bias_ratio.layer_input_gradient(model, update, "fc2")
    X = activations.snap_to_range(model.act1, X)
    propagated = activations.propagate(model.act1, X, grad_X)
    true = update["fc1.bias"].to(torch.float64)
    scale = float(true.abs().max()) or 1.0
    _, determined = activations.invert(model.act1, X)
    return PropagationDemo(activation=activation, X=X, propagated=propagated, true=true,
                           max_error=float((propagated - true).abs().max()) / scale,
                           lost=1.0 - float(determined.double().mean()))


def show_propagation_demo(result: PropagationDemo):
    """Plot a :class:`PropagationDemo`: propagated against true ``dl/dO``, and the error per unit.

    Returns a ``matplotlib.figure.Figure``; raises TypeError for anything but a PropagationDemo.
    """
    import matplotlib.pyplot as plt

    panel.check_result(result, PropagationDemo, "propagation_demo")
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    t, p = result.true.numpy(), result.propagated.numpy()
    a.scatter(t, p, s=10)
    lim = float(max(abs(t).max(), abs(p).max())) * 1.05 or 1.0
    a.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
    a.set_xlabel(r"true $\partial\ell/\partial O$ (shared bias gradient)")
    a.set_ylabel(r"propagated from $X$")
    a.set_title(f"{result.activation}: max relative error {result.max_error:.1e}", fontsize=9)
    # one line per unit, drawn as one collection (a bar chart of hundreds of units draws slowly)
    b.vlines(range(len(t)), 0, abs(p - t), color="firebrick", lw=1.5)
    b.set_ylim(bottom=0)
    b.set_xlabel("unit")
    b.set_ylabel("absolute error")
    b.set_title(f"pre-activation lost for {result.lost:.0%} of the units", fontsize=9)
    fig.tight_layout()
    return plot.detach(fig)


def propagation_panel():
    """A live panel: choose the activation, the data set and the image; see the propagated gradient.

    Returns an ``ipywidgets.VBox`` that re-runs :func:`propagation_demo` on every change.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed (``pip install ipywidgets``).
    """
    panel.preload()
    controls = {
        "activation": panel.Choice(list(panel.DEMO_ACTIVATIONS), "sigmoid", "activation"),
        "dataset": panel.Choice(panel.DEMO_DATASETS, "mnist", "data set"),
        "index": panel.Slider(0, 0, 99, "image"),
    }
    return panel.build_panel(propagation_demo, show_propagation_demo, controls)


def _twin_caption(result: PropagationDemo) -> str:
    """One frame's score: the largest relative error and the units whose pre-activation is lost."""
    return f"max relative error {result.max_error:.1e}; pre-activation lost for {result.lost:.0%} of the units"


def propagation_twin(dataset: str = "mnist", index: int = 0, activations=None, *, width: int = 128,
                     seed: int = 0, dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`propagation_panel`: every activation, one slider.

    Runs :func:`propagation_demo` on image ``index`` of ``dataset`` for each activation and
    draws each with :func:`show_propagation_demo` (the gradient propagated from the rebuilt
    ``X`` against the true one, and the error per unit). Each frame's caption gives the
    activation, the largest relative error and the share of units whose pre-activation ``X``
    cannot give back (ReLU's zeros). About 0.5 s per frame on one core at ``width=128``.

    Parameters
    ----------
    dataset : str
        One of :data:`DEMO_DATASETS`.
    index : int
        The image, ``0..len(data set) - 1``.
    activations : sequence of str, optional
        2..40 distinct names of :data:`DEMO_ACTIVATIONS`, in slider order (default: all 8).
    width, seed : int
        Units of each hidden layer (1..2048) and the initialisation seed (0..2**32 - 1), as
        for :func:`propagation_demo`.
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are the :class:`PropagationDemo` of each activation, in order.

    Raises
    ------
    TypeError
        A non-string data set or activation, ``activations`` not a sequence, a non-integer
        index, width or seed.
    ValueError
        Unknown data set or activation, fewer than 2 activations or a repeated one, an index,
        width, seed or dpi out of range.
    """
    names = check_values("activations", tuple(panel.DEMO_ACTIVATIONS) if activations is None else activations,
                         lambda a: panel.check_choice("activation", a, panel.DEMO_ACTIVATIONS))
    index = panel.check_int("index", index, 0, len(panel.dataset(dataset)) - 1)
    width = panel.check_int("width", width, 1, MAX_PROPAGATION_WIDTH)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    return static_panel(propagation_demo, show_propagation_demo, "activation", names, caption=_twin_caption,
                        label="activation", dpi=dpi, dataset=dataset, index=index, width=width, seed=seed)
