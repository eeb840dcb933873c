"""Chapter 3's panel: one conv layer attacked by R-CONV, with its rank and what it determines."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import data, metrics, models, plot
from ..capture import client_update
from ..core import Reconstruction
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["ConvDemo", "conv_demo", "show_conv_demo", "conv_panel", "conv_twin"]

#: Limits of the Chapter 3 layer: filters, kernel, stride and image side (pixels). The image
#: side is kept small so that the dense rank analysis answers within a second.
CONV_LIMITS = {"filters": (1, 64), "kernel": (1, 9), "stride": (1, 4), "size": (4, 32)}

#: Filter counts of the kernel-free twin: from an under-determined layer to a determined one
#: (with the default kernel 5, stride 2 and tanh, the counts reach the 256 unknowns at 3).
TWIN_FILTERS = tuple(range(1, 9))


@dataclass
class ConvDemo:
    """One run of Chapter 3's panel: a one-conv-layer network attacked by R-CONV.

    Attributes
    ----------
    image : torch.Tensor
        The client's image ``(1, C, H, W)``, float64.
    reconstruction : Reconstruction
    psnr : float
        dB, data range 1 (``inf`` when bit-exact).
    layer : dict
        The conv layer's diagnostics (unknowns, equations, rank, condition, solver).
    counts : dict
        :func:`leakutils.attacks.conv.count_constraints` of the layer.
    """

    image: torch.Tensor
    reconstruction: Reconstruction
    psnr: float
    layer: dict
    counts: dict


def conv_demo(filters: int = 4, kernel: int = 5, stride: int = 2, activation: str = "tanh", *,
              dataset: str = "mnist", index: int = 0, size: int = 16, method: str = "rconv",
              seed: int = 0) -> ConvDemo:
    """Attack ``conv(C->filters, kernel, stride, padding=kernel//2) -> activation -> fc`` with R-CONV.

    R-CONV is Eltaras et al. 2024 (:func:`leakutils.attacks.conv.reconstruct`). The image is
    resized to ``size x size`` so that the dense rank analysis stays instant; weights are
    drawn from U(-0.5, 0.5) as in DLG and R-CONV, float64.

    Parameters
    ----------
    filters, kernel, stride : int
        The conv layer: filters 1..64, kernel 1..9, stride 1..4.
    activation : str
        One of :data:`DEMO_ACTIVATIONS`.
    dataset : str
        One of :data:`DEMO_DATASETS`.
    index : int
        The image, ``0..len(data set) - 1``.
    size : int
        Side of the resized image in pixels, 4..32.
    method : str
        Passed to :func:`leakutils.attacks.conv.reconstruct` (``"rconv"``, ``"forward"``,
        ``"gradient"``); the attack refuses any other.
    seed : int
        Seed of the weights, 0..2**32 - 1.

    Returns
    -------
    ConvDemo

    Raises
    ------
    TypeError
        A non-integer size, index or seed, a non-string activation or data set.
    ValueError
        Sizes out of range, an unknown activation, data set or method, an index past the data
        set's end.
    """
    from ..attacks import conv as conv_attack

    sizes = {name: panel.check_int(name, value, *CONV_LIMITS[name])
             for name, value in (("filters", filters), ("kernel", kernel), ("stride", stride), ("size", size))}
    panel.check_choice("activation", activation, panel.DEMO_ACTIVATIONS)
    index = panel.check_int("index", index, 0, len(panel.dataset(dataset)) - 1)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    filters, kernel, stride, size = sizes["filters"], sizes["kernel"], sizes["stride"], sizes["size"]
    ds = data.load(dataset, index + 1, size=size, dtype=torch.float64)
    x, y = ds[index]
    net = models.ConvNet(ds.shape[0], size, [(filters, kernel, stride, kernel // 2, activation)],
                         num_classes=max(10, len(ds.classes)), dtype=torch.float64)
    models.init_weights(net, "uniform", seed=seed)
    update = client_update(net, x, y)
    rec = conv_attack.reconstruct(net, update, method=method)
    counts = conv_attack.count_constraints(net.conv1, ds.shape, net.act1, seed=seed)
    return ConvDemo(image=x, reconstruction=rec, psnr=float(metrics.psnr(rec.images, x)[0]),
                    layer=rec.diagnostics["layers"][0], counts=counts)


def show_conv_demo(result: ConvDemo):
    """Plot a :class:`ConvDemo`: the image, the reconstruction and what the equations fix.

    Returns a ``matplotlib.figure.Figure``; raises TypeError for anything but a ConvDemo.
    """
    import matplotlib.pyplot as plt

    panel.check_result(result, ConvDemo, "conv_demo")
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    L = result.layer
    det = result.reconstruction.determined[0].double().mean(0)
    plot.show_image(axes[0], result.image[0], "original")
    psnr = plot.psnr_text(result.psnr)
    plot.show_image(axes[1], result.reconstruction.images[0], f"R-CONV: {psnr}")
    axes[2].imshow(det.numpy(), cmap="Greens", vmin=0, vmax=1)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title(f"determined: {float(det.mean()):.0%}", fontsize=plot.FONT)
    fig.suptitle(f"rank {L['rank']} of {L['unknowns']} unknowns; {L['gradient_equations']} weight-gradient and "
                 f"{L['forward_equations']} forward equations", fontsize=plot.FONT)
    fig.tight_layout()
    return plot.detach(fig)


def conv_panel():
    """A live panel: filters, kernel, stride and activation of one conv layer; see rank, PSNR, image.

    Returns an ``ipywidgets.VBox`` that re-runs :func:`conv_demo` on every change.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed (``pip install ipywidgets``).
    """
    controls = {
        "filters": panel.Slider(4, 1, 32, "filters"),
        "kernel": panel.Slider(5, 1, 7, "kernel", step=2),
        "stride": panel.Slider(2, 1, 4, "stride"),
        "activation": panel.Choice(list(panel.DEMO_ACTIVATIONS), "tanh", "activation"),
    }
    return panel.build_panel(conv_demo, show_conv_demo, controls, rows=(2, None))


def _twin_caption(result: ConvDemo) -> str:
    """One frame's score: the rank against the unknowns, the share of pixels fixed, the PSNR."""
    L = result.layer
    det = float(result.reconstruction.determined.double().mean())
    return f"rank {L['rank']} of {L['unknowns']}; determined {det:.0%}; PSNR {plot.psnr_text(result.psnr)}"


def conv_twin(filter_counts=TWIN_FILTERS, kernel: int = 5, stride: int = 2, activation: str = "tanh", *,
              dataset: str = "mnist", index: int = 0, size: int = 16, method: str = "rconv", seed: int = 0,
              dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`conv_panel`: the layer's number of filters, one slider.

    Runs :func:`conv_demo` for each number of filters in ``filter_counts`` (all other
    arguments fixed) and draws each with :func:`show_conv_demo` (the image, the R-CONV
    reconstruction with its PSNR, and the pixels the equations fix). Each frame's caption gives
    the number of filters, the rank of the layer's equations against its unknowns (``C H W``
    pixels), the share of pixels determined and the PSNR (dB, data range 1; "exact" when
    bit-exact). With the defaults the layer goes from under-determined (1-2 filters) to
    determined. About 0.2 s per frame on one core at ``size=16``.

    Parameters
    ----------
    filter_counts : sequence of int
        2..40 distinct numbers of filters, each 1..64, in slider order (default 1..8).
    kernel, stride : int
        The conv layer: kernel 1..9, stride 1..4 (padding ``kernel // 2``).
    activation : str
        One of :data:`DEMO_ACTIVATIONS`.
    dataset, index, size, method, seed
        As for :func:`conv_demo`: data set, image, side of the resized image (4..32 pixels),
        R-CONV's solver and the seed of the weights.
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are the :class:`ConvDemo` of each number of filters, in order.

    Raises
    ------
    TypeError
        ``filter_counts`` not a sequence, a non-integer size, count, index or seed, a
        non-string activation or data set.
    ValueError
        Fewer than 2 or more than 40 filter counts or a repeated one, sizes out of range, an
        unknown activation, data set or method, an index past the data set's end.
    """
    counts = check_values("filter_counts", filter_counts,
                          lambda f: panel.check_int("filters", f, *CONV_LIMITS["filters"]))
    kernel, stride, size = (panel.check_int(name, value, *CONV_LIMITS[name])
                            for name, value in (("kernel", kernel), ("stride", stride), ("size", size)))
    panel.check_choice("activation", activation, panel.DEMO_ACTIVATIONS)
    index = panel.check_int("index", index, 0, len(panel.dataset(dataset)) - 1)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    return static_panel(conv_demo, show_conv_demo, "filters", counts, caption=_twin_caption, label="filters",
                        dpi=dpi, kernel=kernel, stride=stride, activation=activation, dataset=dataset,
                        index=index, size=size, method=method, seed=seed)
