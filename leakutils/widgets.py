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

__all__ = ["BiasRatioDemo", "bias_ratio_demo", "show_bias_ratio_demo", "bias_ratio_panel",
           "PropagationDemo", "propagation_demo", "show_propagation_demo", "propagation_panel",
           "ConvDemo", "conv_demo", "show_conv_demo", "conv_panel",
           "ExanDemo", "exan_demo", "show_exan_demo", "exan_panel",
           "inversion_demo", "show_inversion_demo", "inversion_panel",
           "ExtractionDemo", "extraction_demo", "show_extraction_demo", "extraction_panel"]

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


def _ipywidgets():
    """Import ipywidgets for a panel, with an error that says how to get it."""
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the live panels need ipywidgets: pip install ipywidgets") from err
    return ipywidgets


def _panel(controls: dict, show, rows: tuple = (None,)):
    """Wire ``controls`` (name to ipywidget) to ``show(**values)``, which draws a figure.

    ``rows`` gives the number of controls per row (``None``: the rest). Returns an ``ipywidgets.VBox``.
    """
    W = _ipywidgets()
    import matplotlib.pyplot as plt

    def draw(**values):
        show(**values)
        plt.show()

    items, boxes, start = list(controls.values()), [], 0
    for n in rows:
        stop = len(items) if n is None else start + n
        boxes.append(W.HBox(items[start:stop]))
        start = stop
    return W.VBox(boxes + [W.interactive_output(draw, controls)])


@lru_cache(maxsize=len(DEMO_DATASETS))
def _dataset(name: str):
    """A data set in float64, loaded once per session: the panels call back on every slider move."""
    return data.load(name, dtype=torch.float64)


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
    ds = _dataset(dataset)
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
    W = _ipywidgets()
    controls = {
        "dataset": W.Dropdown(options=DEMO_DATASETS, value="mnist", description="data set"),
        "index": W.IntSlider(value=0, min=0, max=99, description="image"),
        "batch_size": W.IntSlider(value=1, min=1, max=8, description="batch size"),
    }
    return _panel(controls, lambda **v: show_bias_ratio_demo(bias_ratio_demo(**v, width=width)))


# --------------------------------------------------------------------------- Chapter 2

#: Activations offered by the Chapter 2 panel, with the parameters the course uses.
DEMO_ACTIVATIONS = {
    "sigmoid": {}, "tanh": {}, "arctan": {}, "softplus": {}, "relu": {},
    "leaky_relu": {"negative_slope": 0.2}, "prelu": {}, "elu": {},
}


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
        Fraction of units whose pre-activation cannot be recovered from ``X`` (ReLU: X = 0).
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
    initialisation with ``seed``. The propagated ``dl/dO`` is compared with the shared bias
    gradient of ``fc1``, which equals the true ``dl/dO``.

    Raises
    ------
    ValueError
        Unknown activation or data set, an index past the data set's end.
    """
    from . import activations

    if activation not in DEMO_ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(DEMO_ACTIVATIONS)}, got {activation!r}")
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"dataset must be one of {DEMO_DATASETS}, got {dataset!r}")
    ds = _dataset(dataset)
    if not isinstance(index, int) or not 0 <= index < len(ds):
        raise ValueError(f"index must be in 0..{len(ds) - 1}, got {index!r}")
    torch.manual_seed(seed)
    model = models.MLP(ds.shape, (width, width), num_classes=max(10, len(ds.classes)), activation=activation,
                       dtype=torch.float64, **DEMO_ACTIVATIONS[activation])
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
    """Plot a :class:`PropagationDemo`: propagated against true ``dl/dO``, and the error per unit."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    t, p = result.true.numpy(), result.propagated.numpy()
    a.scatter(t, p, s=10)
    lim = float(max(abs(t).max(), abs(p).max())) * 1.05 or 1.0
    a.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
    a.set_xlabel(r"true $\partial\ell/\partial O$ (shared bias gradient)")
    a.set_ylabel(r"propagated from $X$")
    a.set_title(f"{result.activation}: max relative error {result.max_error:.1e}", fontsize=9)
    b.bar(range(len(t)), abs(p - t), color="firebrick")
    b.set_xlabel("unit")
    b.set_ylabel("absolute error")
    b.set_title(f"pre-activation lost for {result.lost:.0%} of the units", fontsize=9)
    fig.tight_layout()
    return fig


def propagation_panel():
    """A live panel: choose the activation, the data set and the image; see the propagated gradient.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed.
    """
    W = _ipywidgets()
    controls = {
        "activation": W.Dropdown(options=list(DEMO_ACTIVATIONS), value="sigmoid", description="activation"),
        "dataset": W.Dropdown(options=DEMO_DATASETS, value="mnist", description="data set"),
        "index": W.IntSlider(value=0, min=0, max=99, description="image"),
    }
    return _panel(controls, lambda **v: show_propagation_demo(propagation_demo(**v)))


# --------------------------------------------------------------------------- Chapter 3


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

    The image is resized to ``size x size`` so that the dense rank analysis stays instant;
    weights are drawn from U(-0.5, 0.5) as in DLG and R-CONV, float64.

    Raises
    ------
    ValueError
        Sizes out of range (filters 1..64, kernel 1..9, stride 1..4), an unknown activation,
        data set or method.
    """
    from .attacks import conv as conv_attack

    if not (isinstance(filters, int) and 1 <= filters <= 64):
        raise ValueError(f"filters must be an integer in 1..64, got {filters!r}")
    if not (isinstance(kernel, int) and 1 <= kernel <= 9) or not (isinstance(stride, int) and 1 <= stride <= 4):
        raise ValueError(f"kernel must be in 1..9 and stride in 1..4, got {kernel!r}, {stride!r}")
    if activation not in DEMO_ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(DEMO_ACTIVATIONS)}, got {activation!r}")
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"dataset must be one of {DEMO_DATASETS}, got {dataset!r}")
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
    """Plot a :class:`ConvDemo`: the image, the reconstruction and what the equations fix."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    L = result.layer
    det = result.reconstruction.determined[0].double().mean(0)
    plot._show(axes[0], result.image[0], "original")
    psnr = "exact" if result.psnr == float("inf") else f"{result.psnr:.1f} dB"
    plot._show(axes[1], result.reconstruction.images[0], f"R-CONV: {psnr}")
    axes[2].imshow(det.numpy(), cmap="Greens", vmin=0, vmax=1)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title(f"determined: {float(det.mean()):.0%}", fontsize=plot.FONT)
    fig.suptitle(f"rank {L['rank']} of {L['unknowns']} unknowns; {L['gradient_equations']} weight-gradient and "
                 f"{L['forward_equations']} forward equations", fontsize=plot.FONT)
    fig.tight_layout()
    return fig


def conv_panel():
    """A live panel: filters, kernel, stride and activation of one conv layer; see rank, PSNR, image.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed.
    """
    W = _ipywidgets()
    controls = {
        "filters": W.IntSlider(value=4, min=1, max=32, description="filters"),
        "kernel": W.IntSlider(value=5, min=1, max=7, step=2, description="kernel"),
        "stride": W.IntSlider(value=2, min=1, max=4, description="stride"),
        "activation": W.Dropdown(options=list(DEMO_ACTIVATIONS), value="tanh", description="activation"),
    }

    return _panel(controls, lambda **v: show_conv_demo(conv_demo(**v)), rows=(2, None))


# --------------------------------------------------------------------------- Chapter 4


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
    reconstruction : Reconstruction
        What :func:`leakutils.attacks.exan.reconstruct` returned.
    scores : Scores or None
        The recovered samples against the batch (Hungarian matching); None if none recovered.
    exact : torch.Tensor
        bool ``(M,)``: which samples of the batch came back with PSNR >= 100 dB.
    """

    images: torch.Tensor
    labels: torch.Tensor
    exans: torch.Tensor
    reconstruction: Reconstruction
    scores: Scores | None
    exact: torch.Tensor

    @property
    def fraction_exact(self) -> float:
        """Fraction of the batch rebuilt with PSNR >= 100 dB, in [0, 1]."""
        return float(self.exact.double().mean())


def exan_demo(batch_size: int = 8, width: int = 1024, *, dataset: str = "mnist", start: int = 0,
              peel: bool = True, verify: bool = True, seed: int = 0) -> ExanDemo:
    """Attack a batch of ``batch_size`` images through ``MLP(width ReLU)`` with the ExAN attack.

    Parameters
    ----------
    batch_size : int
        ``M``, 1..64.
    width : int
        Hidden units, 16..8192.
    dataset : str
        One of :data:`DEMO_DATASETS`.
    start : int
        Index of the batch's first image in the data set.
    peel, verify : bool
        Passed to :func:`leakutils.attacks.exan.reconstruct` (False, False: the paper's B.1-B.3).
    seed : int
        Seed of PyTorch's default initialisation of the network (float64).

    Raises
    ------
    ValueError
        Sizes out of range, an unknown data set, a batch that runs past the data set.
    """
    from .attacks import exan

    if not (isinstance(batch_size, int) and 1 <= batch_size <= 64):
        raise ValueError(f"batch_size must be an integer in 1..64, got {batch_size!r}")
    if not (isinstance(width, int) and 16 <= width <= 8192):
        raise ValueError(f"width must be an integer in 16..8192, got {width!r}")
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"dataset must be one of {DEMO_DATASETS}, got {dataset!r}")
    ds = _dataset(dataset)
    if not isinstance(start, int) or start < 0 or start + batch_size > len(ds):
        raise ValueError(f"start must be in 0..{len(ds) - batch_size} for {batch_size} images of {dataset!r}")
    x, y = ds.images[start:start + batch_size], ds.labels[start:start + batch_size]
    net = _model(tuple(ds.shape), width, max(10, len(ds.classes)), seed)
    update = client_update(net, x, y)
    rec = exan.reconstruct(net, update, peel=peel, verify=verify)
    exans = exan.count_exans(net, x)["act1"]["exans"]
    ok = rec.diagnostics["recovered"]
    exact = torch.zeros(batch_size, dtype=torch.bool)
    scores = None
    if ok.any():
        sub = Reconstruction(rec.images[ok], rec.labels[ok], rec.determined[ok], rec.diagnostics, rec.attack)
        scores = metrics.compare(sub, x, y)
        exact[torch.as_tensor(scores.true_idx)] = scores.psnr >= 100
    return ExanDemo(images=x, labels=y, exans=exans, reconstruction=rec, scores=scores, exact=exact)


def show_exan_demo(result: ExanDemo, max_images: int = 16):
    """Plot an :class:`ExanDemo`: originals titled with their ExAN count, reconstructions below."""
    n = min(max_images, result.images.shape[0])
    ok = result.reconstruction.diagnostics["recovered"]
    rec = result.reconstruction.images[ok]
    titles = [f"{int(e)} ExAN{'s' if int(e) != 1 else ''}" for e in result.exans[:n]]
    d = result.reconstruction.diagnostics
    head = (f"batch of {result.images.shape[0]}: {int(result.exact.sum())} rebuilt exactly; "
            f"batch size read as {d['batch_size']}")
    if result.scores is None or rec.shape[0] == 0:
        fig = plot.image_grid(result.images[:n], titles)
        fig.suptitle(head + " (nothing recovered)", fontsize=plot.FONT)
        return fig
    keep = [k for k, t in enumerate(result.scores.true_idx) if t < n]
    sub = metrics.Scores(mse=result.scores.mse[keep], psnr=result.scores.psnr[keep], ssim=result.scores.ssim[keep],
                         rec_idx=result.scores.rec_idx[keep], true_idx=result.scores.true_idx[keep])
    return plot.compare_grid(result.images[:n], rec, sub, labels=titles, size=1.1, suptitle=head)


def exan_panel():
    """A live panel: batch size and width sliders; see ExAN counts, what is recovered, the images.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed.
    """
    W = _ipywidgets()
    controls = {
        "batch_size": W.IntSlider(value=8, min=1, max=64, description="batch size"),
        "width": W.Dropdown(options=[64, 128, 256, 512, 1024, 2048, 4096], value=1024, description="width"),
        "dataset": W.Dropdown(options=list(DEMO_DATASETS), value="mnist", description="data"),
        "peel": W.Checkbox(value=True, description="peeling"),
    }

    return _panel(controls, lambda **v: show_exan_demo(exan_demo(**v)), rows=(2, None))


# --------------------------------------------------------------------------- Chapter 5


def inversion_demo(lab, images: torch.Tensor, index: int = 0, *, decimals: int | None = None,
                   k: int | None = None) -> dict:
    """Invert the target's output vector for ``images[index]`` with every inverse model of ``lab``.

    Parameters
    ----------
    lab : leakutils.inversion.Lab
    images : torch.Tensor
        The attack-test images ``(N, 1, 32, 32)`` in [0, 1].
    index : int
    decimals : int, optional
        Round the output vector first.
    k : int, optional
        Keep only its top ``k`` entries (inverse models trained for that ``k`` are used).

    Returns
    -------
    dict
        ``"original"`` and one entry per inverse model, ``"X~"`` and ``"class average"``: images
        ``(1, 1, 32, 32)``; ``"ssim"``: the SSIM (Gaussian window) of each against the original.

    Raises
    ------
    ValueError
        An index out of range, or a ``k`` without trained inverse models.
    """
    if not isinstance(index, int) or not 0 <= index < images.shape[0]:
        raise ValueError(f"index must be in 0..{images.shape[0] - 1}, got {index!r}")
    x = images[index:index + 1]
    out = lab.invert(x, decimals=decimals, k=k)
    out = {"original": x, **out}
    out["ssim"] = {name: float(metrics.ssim(img.double(), x.double(), gaussian=True)[0])
                   for name, img in out.items() if name != "original"}
    return out


def show_inversion_demo(result: dict):
    """Plot an :func:`inversion_demo` result: the original and each reconstruction with its SSIM."""
    names = [n for n in result if n not in ("ssim",)]
    titles = [n if n == "original" else f"{n}\nSSIM {result['ssim'][n]:.2f}" for n in names]
    return plot.image_grid(torch.cat([result[n] for n in names]), titles, ncols=len(names))


def inversion_panel(lab, images: torch.Tensor):
    """A live panel: choose a test image, rounding and k; see what each inverse model returns.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed.
    """
    W = _ipywidgets()
    ks = sorted({kv for kv, _ in lab.inverses}, reverse=True)
    controls = {
        "index": W.IntSlider(value=0, min=0, max=images.shape[0] - 1, description="test image"),
        "decimals": W.Dropdown(options=[("none", None), ("2", 2), ("1", 1), ("0", 0)], value=None,
                               description="rounding"),
        "k": W.Dropdown(options=ks, value=ks[0], description="top k"),
    }

    return _panel(controls, lambda **v: show_inversion_demo(inversion_demo(lab, images, **v)))


# --------------------------------------------------------------------------- Chapter 6


@dataclass
class ExtractionDemo:
    """One exact extraction of a trained 784-N-10 ReLU network (Chapter 6).

    Attributes
    ----------
    width, lines : int
        N and the random lines searched.
    queries : int
        Inputs sent to the black box.
    units_found : int
    complete : bool
        All units found and the output layer fits (relative residual <= 1e-6).
    max_error : float
        Worst absolute weight error after aligning units (over the units found).
    agreement : float
        Fraction of 900 held-out MNIST digits with the same top-1 class (NaN if incomplete).
    true_rows, rows : torch.Tensor
        ``(n, 1, 28, 28)`` float64: the first units' true rows (unit norm, sign of the
        extracted one) and the extracted rows, mapped to [0, 1] for display.
    seconds : float
    """

    width: int
    lines: int
    queries: int
    units_found: int
    complete: bool
    max_error: float
    agreement: float
    true_rows: torch.Tensor
    rows: torch.Tensor
    seconds: float


@lru_cache(maxsize=8)
def _trained_mlp(width: int, seed: int):
    """A 784-width-10 ReLU MLP trained for 3 epochs (Adam 1e-3) on MNIST digits 0-1999."""
    from . import metamodel as mm

    ds = _dataset("mnist")
    x, y = ds.images[:2000].reshape(2000, -1).float(), ds.labels[:2000]
    s = mm.Sizes(784, width, 10)
    pop = mm.train_population(1, x, y, x[:1], sizes=s, epochs=3, seed=seed)
    return mm.to_model(pop.weights[0], s)


def extraction_demo(width: int = 16, lines: int = 4, *, seed: int = 0) -> ExtractionDemo:
    """Extract a trained MNIST MLP ``784-width-10`` from logit queries and measure the result.

    Parameters
    ----------
    width : int
        Hidden units, 2..128.
    lines : int
        Random lines searched for critical points, 1..12. Too few lines miss units: the
        result is then marked incomplete instead of raising.
    seed : int
        Seed of the target's training and of the search.

    Raises
    ------
    ValueError
        Sizes out of range.
    """
    import time

    import numpy as np

    from . import extraction as ex

    if not (isinstance(width, int) and 2 <= width <= 128):
        raise ValueError(f"width must be an integer in 2..128, got {width!r}")
    if not (isinstance(lines, int) and 1 <= lines <= 12):
        raise ValueError(f"lines must be an integer in 1..12, got {lines!r}")
    net = _trained_mlp(width, seed)
    oracle = ex.as_oracle(net)
    t0 = time.perf_counter()
    e = ex.extract(oracle, 784, width, lines=lines, max_lines=lines, seed=seed, strict=False)
    seconds = time.perf_counter() - t0
    W, b, A = (p.detach().numpy() for p in (net.fc1.weight, net.fc1.bias, net.out.weight))
    al = ex.align(W, b, A, e)
    complete = bool(e.diagnostics["complete"])
    held_out = _dataset("mnist").images[4100:].reshape(900, -1).numpy()
    agree = ex.agreement(e, oracle, held_out)["agreement"] if complete else float("nan")
    n = min(6, e.W.shape[0])
    true = W[al["perm"][:n]] / np.linalg.norm(W[al["perm"][:n]], axis=1, keepdims=True)
    true *= np.sign(np.sum(true * e.W[:n], axis=1, keepdims=True))

    def show(r):
        r = torch.from_numpy(np.ascontiguousarray(r)).reshape(-1, 1, 28, 28)
        m = r.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        return 0.5 + 0.5 * r / m

    return ExtractionDemo(width=width, lines=lines, queries=e.queries, units_found=e.W.shape[0], complete=complete,
                          max_error=al["max_error"] if complete else al["errors"]["W"], agreement=agree,
                          true_rows=show(true), rows=show(e.W[:n]), seconds=seconds)


def show_extraction_demo(result: ExtractionDemo):
    """Plot an :class:`ExtractionDemo`: true rows above extracted rows (grey = 0), numbers in the title."""
    n = result.rows.shape[0]
    if result.complete:
        head = (f"{result.queries:,} queries, {result.units_found}/{result.width} units, worst weight error "
                f"{result.max_error:.1e}, agreement {result.agreement:.1%} ({result.seconds:.1f} s)")
    else:
        head = (f"{result.queries:,} queries: only {result.units_found}/{result.width} units found, so the output "
                f"layer cannot be fitted; search more lines (row error {result.max_error:.1e})")
    titles = [f"true unit {k}" for k in range(n)] + [f"extracted {k}" for k in range(n)]
    return plot.image_grid(torch.cat([result.true_rows, result.rows]), titles, ncols=n, size=1.3, suptitle=head)


def extraction_panel():
    """A live panel: hidden width and number of search lines; see queries, units found, weight error.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed.
    """
    W = _ipywidgets()
    controls = {
        "width": W.Dropdown(options=[4, 8, 16, 32, 64, 128], value=16, description="width"),
        "lines": W.IntSlider(value=4, min=1, max=12, description="lines"),
    }
    return _panel(controls, lambda **v: show_extraction_demo(extraction_demo(**v)))
