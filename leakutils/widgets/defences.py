"""Chapter 7's panel: one client's image through a one-hidden-layer ReLU MLP, a defence, the best analytic attack.

The client trains on one image (or, under secure aggregation, each of ``K`` clients on one);
the chosen defence changes what the server receives; the server runs the course's analytic
attacks on it and keeps the best: the bias ratio (a rank-one fit of the first layer's
weight and bias gradients, Chapter 1), the same ratio read only from the entries that
survive pruning (:mod:`leakutils.attacks.pruned`), and ExAN (Chapter 4) when the update
covers several samples. Every attack runs with the noise level the server knows (DP-SGD publishes
its noise multiplier; the relative noise is stated), so nothing is certified that the noise
could fake, and the scores compare with the true image, which only the evaluator knows.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .. import defences, metrics, plot
from ..attacks import bias_ratio, exan, pruned
from ..capture import client_update
from ..core import Reconstruction, Update
from ..metrics import Scores
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["SETTINGS", "TWIN_SETTINGS", "DefenceDemo", "defence_demo", "show_defence_demo", "defence_panel",
           "defence_twin"]

#: The text of the panel's run button: its demo can take seconds, so it runs on request.
RUN = "Run the attack"

#: The panel's settings, weakest first within each defence: label -> (defence, strength).
#: Strengths: relative noise std (fraction of the update's largest entry), DP-SGD noise
#: multiplier (clipping norm C = 1), fraction pruned, quantisation scheme, clients K under
#: secure aggregation, Soteria's fraction of withheld features.
SETTINGS = {
    "none": ("none", None),
    "noise 1e-4": ("noise", 1e-4), "noise 1e-3": ("noise", 1e-3), "noise 1e-2": ("noise", 1e-2),
    "noise 3e-2": ("noise", 3e-2),
    "DP-SGD 0.001": ("dp_sgd", 0.001), "DP-SGD 0.003": ("dp_sgd", 0.003), "DP-SGD 0.01": ("dp_sgd", 0.01),
    "DP-SGD 0.1": ("dp_sgd", 0.1),
    "prune 50%": ("prune", 0.5), "prune 90%": ("prune", 0.9), "prune 99%": ("prune", 0.99),
    "prune 99.9%": ("prune", 0.999),
    "float16": ("quantise", "float16"), "int8": ("quantise", "int8"), "sign (1 bit)": ("quantise", "sign"),
    "secure aggregation K=2": ("secure_aggregation", 2), "secure aggregation K=8": ("secure_aggregation", 8),
    "secure aggregation K=32": ("secure_aggregation", 32),
    "Soteria 50%": ("soteria", 0.5), "Soteria 80%": ("soteria", 0.8), "Soteria 95%": ("soteria", 0.95),
}

#: Settings of the kernel-free twin: one or two per defence, in the panel's order.
TWIN_SETTINGS = ("none", "noise 1e-3", "noise 1e-2", "DP-SGD 0.003", "DP-SGD 0.1", "prune 90%", "prune 99.9%",
                 "int8", "sign (1 bit)", "secure aggregation K=8", "secure aggregation K=32", "Soteria 80%")

#: Hidden widths the demo accepts.
DEFENCE_WIDTHS = (16, 4096)


@dataclass
class DefenceDemo:
    """One run of Chapter 7's panel.

    Attributes
    ----------
    setting : str
        The key of :data:`SETTINGS` that was applied.
    image, label : torch.Tensor
        The attacked client's image ``(1, C, H, W)`` float64 in [0, 1] and its label ``(1,)``.
    attacks : dict[str, float]
        Each attack tried to its PSNR (dB) against the image (``-inf`` when it refused).
    best : str
        Name of the attack with the highest PSNR.
    reconstruction : Reconstruction
        The best attack's reconstruction, one image ``(1, C, H, W)``.
    scores : Scores
        The best reconstruction against the client's image.
    noise_std : float
        Per-entry noise standard deviation the server knows (0 without noise), gradient units.
    epsilon : float or None
        DP-SGD's epsilon at delta 1e-5 for this one step (Opacus' RDP accountant, sample rate
        1 / 60,000); None for the other defences.
    """

    setting: str
    image: torch.Tensor
    label: torch.Tensor
    attacks: dict
    best: str
    reconstruction: Reconstruction
    scores: Scores
    noise_std: float = 0.0
    epsilon: float | None = None

    @property
    def psnr(self) -> float:
        """PSNR (dB) of the best attack against the client's image."""
        return float(self.scores.psnr[0])


def _defended(kind: str, strength, net, x, y, k_images, seed: int) -> tuple[Update, float, float | None]:
    """The update the server receives under one defence, its known noise std, DP epsilon."""
    if kind == "dp_sgd":
        with warnings.catch_warnings():
            # Opacus' accountant warns that its best order is the largest it tries, at tiny sample rates
            warnings.simplefilter("ignore")
            upd, report = defences.dp_sgd_update(net, x, y, noise_multiplier=strength, max_grad_norm=1.0,
                                                 seed=seed)
        return upd, report.noise_std, report.epsilon
    if kind == "secure_aggregation":
        return defences.secure_aggregation(defences.client_updates(net, k_images[0], k_images[1], strength)), 0.0, None
    if kind == "soteria":
        return defences.soteria(net, x, y, prune_fraction=strength), 0.0, None
    upd = client_update(net, x, y)
    if kind == "noise":
        scale = max(float(g.abs().max()) for g in upd.gradients.values())
        return defences.gaussian_noise(upd, strength, relative=True, seed=seed), strength * scale, None
    if kind == "prune":
        return defences.prune(upd, strength), 0.0, None
    if kind == "quantise":
        return defences.quantise(upd, strength), 0.0, None
    return upd, 0.0, None


def _attacks(net, upd: Update, x, y, noise: float) -> dict[str, Reconstruction]:
    """Every applicable analytic attack on ``upd``; an attack that refuses is left out."""
    out = {}
    try:
        out["bias ratio"] = bias_ratio.reconstruct(net, upd, allow_batch=True, noise=noise or None)
    except ValueError:
        pass
    try:
        if upd.batch_size == 1:
            out["bias ratio, surviving entries"] = pruned.reconstruct(net, upd)
        else:
            out["ExAN"] = exan.reconstruct(net, upd)
    except ValueError:
        pass
    return out


def _best_match(rec: Reconstruction, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The reconstructed image closest to ``x`` (1, C, H, W), boxed to [0, 1], and its PSNR."""
    imgs = rec.images
    if "recovered" in rec.diagnostics:
        # ExAN: only the samples it marks recovered
        imgs = imgs[rec.diagnostics["recovered"]]
    if imgs.shape[0] == 0 or imgs.shape[1:] != x.shape[1:]:
        return torch.zeros_like(x), float("-inf")
    boxed = imgs.clamp(0, 1)
    p = metrics.psnr(boxed, x.expand_as(boxed))
    k = int(torch.argmax(p))
    return boxed[k:k + 1], float(p[k])


def defence_demo(setting: str = "none", dataset: str = "mnist", index: int = 0, *, width: int = 1024,
                 seed: int = 0) -> DefenceDemo:
    """Run Chapter 7's experiment: one image, one defence, the best of the analytic attacks.

    The network is ``MLP(width ReLU)`` in float64 with PyTorch's default initialisation under
    ``seed`` and ``max(10, classes)`` logits. The client's image is number ``index`` of
    ``dataset``; under secure aggregation with ``K`` clients, clients 2..K hold images
    ``index + 1 .. index + K - 1`` and the server sees only the average of the K updates.
    Reconstructions are boxed to the data range [0, 1] (the server knows it) before scoring.

    Parameters
    ----------
    setting : str
        A key of :data:`SETTINGS` (e.g. ``"DP-SGD 0.01"``, ``"prune 99%"``).
    dataset : str
        One of :data:`~leakutils.widgets.panel.DEMO_DATASETS`.
    index : int
        The attacked client's image, ``0..len(data set) - K``.
    width : int
        Hidden units, 16..4096.
    seed : int
        Seed of the initialisation and of the defence's noise, 0..2**32 - 1.

    Returns
    -------
    DefenceDemo

    Raises
    ------
    TypeError
        A non-string setting or data set; a non-integer index, width or seed.
    ValueError
        An unknown setting (the message lists them) or data set, an index whose clients run
        past the data set's end, a width or seed out of range.
    """
    setting = panel.check_choice("setting", setting, tuple(SETTINGS))
    kind, strength = SETTINGS[setting]
    ds = panel.dataset(dataset)
    k = strength if kind == "secure_aggregation" else 1
    index, _ = panel.check_batch("index", index, k, ds, dataset)
    width = panel.check_int("width", width, *DEFENCE_WIDTHS)
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    net = panel.relu_mlp(tuple(ds.shape), width, max(10, len(ds.classes)), seed)
    x, y = ds.images[index:index + 1], ds.labels[index:index + 1]
    clients = (ds.images[index:index + k], ds.labels[index:index + k])
    upd, noise, eps = _defended(kind, strength, net, x, y, clients, seed)
    found = _attacks(net, upd, x, y, noise)
    psnrs, best_img = {}, {}
    for name, rec in found.items():
        best_img[name], psnrs[name] = _best_match(rec, x)
    best = max(psnrs, key=psnrs.get)
    shown = Reconstruction(images=best_img[best], labels=None,
                           determined=torch.zeros_like(best_img[best], dtype=torch.bool), attack=best)
    return DefenceDemo(setting=setting, image=x, label=y, attacks=psnrs, best=best, reconstruction=shown,
                       scores=metrics.compare(shown, x), noise_std=noise, epsilon=eps)


def show_defence_demo(result: DefenceDemo):
    """Plot a :class:`DefenceDemo`: the client's image, the best reconstruction, every attack's PSNR.

    Returns a ``matplotlib.figure.Figure``; raises TypeError for anything but a DefenceDemo.
    """
    import matplotlib.pyplot as plt

    panel.check_result(result, DefenceDemo, "defence_demo")
    fig, axes = plt.subplots(1, 3, figsize=(7.6, 2.4), gridspec_kw={"width_ratios": [1, 1, 1.8]})
    plot.show_image(axes[0], result.image[0], "client's image")
    plot.show_image(axes[1], result.reconstruction.images[0], result.best,
                    below=plot.psnr_text(result.psnr))
    names = list(result.attacks)
    values = [max(result.attacks[n], 0.0) for n in names]
    axes[2].barh(range(len(names)), values, color="tab:blue")
    axes[2].set_yticks(range(len(names)), [n.replace(", ", ",\n") for n in names], fontsize=plot.FONT - 2)
    axes[2].axvline(20, color="grey", lw=0.8, ls="--")
    axes[2].set_xlabel("PSNR (dB), boxed to [0, 1]", fontsize=plot.FONT - 2)
    axes[2].invert_yaxis()
    extra = "" if result.epsilon is None else f", epsilon {result.epsilon:.3g}"
    fig.suptitle(f"defence: {result.setting}{extra}", fontsize=plot.FONT)
    fig.tight_layout()
    return plot.detach(fig)


def defence_panel(width: int = 1024):
    """A live panel: choose the defence and its strength, the data set and the image.

    Returns an ``ipywidgets.VBox`` that re-runs :func:`defence_demo` when its button is
    pressed (DP-SGD's accountant and ExAN under secure aggregation take seconds).

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed (``pip install ipywidgets``).
    TypeError, ValueError
        A ``width`` that is not an integer in 16..4096.
    """
    width = panel.check_int("width", width, *DEFENCE_WIDTHS)
    panel.preload()
    controls = {
        "setting": panel.Choice(tuple(SETTINGS), "none", "defence"),
        "dataset": panel.Choice(panel.DEMO_DATASETS, "mnist", "data set"),
        "index": panel.Slider(0, 0, 99, "image"),
    }
    return panel.build_panel(defence_demo, show_defence_demo, controls, width=width, run_button=RUN)


def _twin_caption(result: DefenceDemo) -> str:
    """One frame's score: the best attack and its PSNR."""
    return f"best attack {result.best}, {plot.psnr_text(result.psnr)}"


def defence_twin(settings=TWIN_SETTINGS, dataset: str = "mnist", index: int = 0, *, width: int = 1024,
                 seed: int = 0, dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`defence_panel`: the best attack under each setting, one slider.

    Parameters
    ----------
    settings : sequence of str
        2..40 distinct keys of :data:`SETTINGS`, in slider order (default :data:`TWIN_SETTINGS`).
    dataset, index, width, seed
        As for :func:`defence_demo`.
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are the :class:`DefenceDemo` of each setting, in order.

    Raises
    ------
    TypeError, ValueError
        As :func:`defence_demo`; fewer than 2 or more than 40 settings, or a repeated one.
    """
    values = check_values("settings", settings, lambda s: panel.check_choice("setting", s, tuple(SETTINGS)))
    return static_panel(defence_demo, show_defence_demo, "setting", values, caption=_twin_caption,
                        label="defence", dpi=dpi, dataset=dataset, index=index, width=width, seed=seed)
