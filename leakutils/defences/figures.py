"""Figures of the defence matrix (Chapter 7): the attack x defence heatmap and the privacy-utility plane.

Both read the rows of :func:`leakutils.defences.matrix.run_matrix` (median PSNR in dB, data
range 1, per attack, defence and strength). PSNR runs from about 5 dB (nothing learnt) to
round-off (300 dB, exact); the figures show every value from 60 dB up alike, and mark 100 dB
or more as exact. Like :mod:`leakutils.plot`, each function returns a figure that pyplot no
longer tracks (:func:`leakutils.plot.detach`).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from ..plot import detach
from .matrix import THRESHOLDS, best_rows

__all__ = ["heatmap", "privacy_utility", "strength_label", "SHOWN_UP_TO"]

#: PSNR (dB) from which the figures show every value alike (well beyond a perfect-looking image).
SHOWN_UP_TO = 60.0


def strength_label(strength) -> str:
    """A strength as the figures and tables print it: ``-`` for none, ``%g`` for numbers."""
    if strength is None:
        return "-"
    if isinstance(strength, float):
        return f"{strength:g}"
    return str(strength)


def _check_rows(rows) -> list[dict]:
    need = {"defence", "strength", "attack", "psnr_median"}
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and need <= set(r) for r in rows):
        raise TypeError("rows must be the non-empty list of dicts that matrix.run_matrix returns")
    return rows


def _shown(psnr) -> float:
    """A median PSNR as the plane draws it: refused (None) at 0, at most :data:`SHOWN_UP_TO`."""
    return 0.0 if psnr is None else min(psnr, SHOWN_UP_TO)


def _cell_text(psnr) -> str:
    if psnr is None or (isinstance(psnr, float) and math.isnan(psnr)):
        return "ref"
    return "exact" if psnr >= THRESHOLDS[-1] else f"{psnr:.0f}"


def heatmap(rows: list[dict], *, title: str | None = None):
    """The attack x defence matrix: median PSNR of each attack (rows) at each defence and strength (columns).

    The last row is the best attack per setting (:func:`~leakutils.defences.matrix.best_rows`).
    A cell reads the median in dB, ``exact`` from 100 dB, ``ref`` where the attack refused
    every update of that setting (scored as a blank image), and stays empty where the attack
    was not run. Colour: 0 to :data:`SHOWN_UP_TO` dB (viridis); a white frame marks the best
    attack's cells below 20 dB, where the defence holds.

    Parameters
    ----------
    rows : list of dict
        :func:`~leakutils.defences.matrix.run_matrix` rows (any subset of defences and attacks).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        ``rows`` not a non-empty list of run_matrix rows.
    """
    rows = _check_rows(rows)
    settings = list(dict.fromkeys((r["defence"], repr(r["strength"])) for r in rows))
    strengths = {(r["defence"], repr(r["strength"])): r["strength"] for r in rows}
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    best = {(r["defence"], repr(r["strength"])): r for r in best_rows(rows)}
    names = attacks + ["best"]
    values = np.full((len(names), len(settings)), np.nan)
    text = [["" for _ in settings] for _ in names]
    for r in rows:
        i, j = attacks.index(r["attack"]), settings.index((r["defence"], repr(r["strength"])))
        text[i][j] = _cell_text(r["psnr_median"])
        if r["psnr_median"] is not None:
            values[i, j] = r["psnr_median"]
    for j, key in enumerate(settings):
        b = best[key]
        text[-1][j] = _cell_text(b["psnr_median"])
        values[-1, j] = np.nan if b["psnr_median"] is None else b["psnr_median"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.36 * len(settings) + 2.0), 0.42 * len(names) + 2.3))
    shown = np.ma.masked_invalid(np.minimum(values, SHOWN_UP_TO))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=SHOWN_UP_TO, aspect="auto")
    for i in range(len(names)):
        for j in range(len(settings)):
            v = values[i, j]
            dark = not np.isnan(v) and min(v, SHOWN_UP_TO) < 0.55 * SHOWN_UP_TO
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=5 if len(text[i][j]) > 3 else 6.5,
                    color="white" if dark else "black")
    for j, key in enumerate(settings):
        b = best[key]["psnr_median"]
        if b is None or b < THRESHOLDS[0]:
            ax.add_patch(plt.Rectangle((j - 0.5, len(names) - 1.5), 1, 1, fill=False, edgecolor="white", lw=1.6))
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_xticks(range(len(settings)),
                  [f"{d.replace('_', ' ')} {strength_label(strengths[(d, s)])}" for d, s in settings],
                  rotation=90, fontsize=7)
    ax.axhline(len(names) - 1.5, color="black", lw=1.2)
    # a thin line between defences
    for j in range(1, len(settings)):
        if settings[j][0] != settings[j - 1][0]:
            ax.axvline(j - 0.5, color="black", lw=0.6)
    cbar = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    cbar.set_label(f"median PSNR (dB; {SHOWN_UP_TO:.0f}+ alike)", fontsize=7)
    cbar.ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return detach(fig)


def privacy_utility(rows: list[dict], utility: dict, *, title: str | None = None):
    """The privacy-utility plane: best attack's median PSNR and SSIM against test accuracy; DP-SGD against epsilon.

    Left, each defence is a line through its strengths (weakest first, labelled), at the
    test accuracy of the model trained under it and the best attack's median PSNR there
    (shown up to :data:`SHOWN_UP_TO` dB; exact as "100+"); the dashed line is 20 dB, below
    which an image is no longer recognisable. Middle, the same with the median SSIM (0..1).
    Right, for DP-SGD (when present), the best attack's PSNR against epsilon (log scale,
    ``delta = 1e-5``): the one step the attacked client spends and the whole training run.

    Parameters
    ----------
    rows : list of dict
        :func:`~leakutils.defences.matrix.run_matrix` rows.
    utility : dict
        ``(defence, strength) -> {"accuracy": float in [0, 1], "epsilon": float or None}``
        (epsilon of the training run, DP-SGD only); settings without an entry are left out.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        ``rows`` not run_matrix rows; ``utility`` not a dict of such entries.
    ValueError
        No setting of ``rows`` has a utility entry.
    """
    rows = _check_rows(rows)
    if not isinstance(utility, dict) or not all(isinstance(v, dict) and "accuracy" in v for v in utility.values()):
        raise TypeError("utility must be a dict (defence, strength) -> {'accuracy': ..., 'epsilon': ...}")
    points: dict[str, list] = {}
    for b in best_rows(rows):
        u = utility.get((b["defence"], b["strength"]))
        if u is None:
            continue
        points.setdefault(b["defence"], []).append((b, u))
    if not points:
        raise ValueError("no setting of rows has an entry in utility: key it by (defence, strength) as in the rows")
    dp = points.get("dp_sgd", [])
    fig, axes = plt.subplots(1, 3 if dp else 2, figsize=(13.0 if dp else 9.0, 4.6))
    colours = plt.get_cmap("tab10")
    for k, (name, pts) in enumerate(points.items()):
        acc = [100 * u["accuracy"] for _, u in pts]
        psnr = [_shown(b["psnr_median"]) for b, _ in pts]
        ssim = [0.0 if b.get("ssim_median") is None else b["ssim_median"] for b, _ in pts]
        style = {"marker": "*" if name == "none" else "o", "ms": 11 if name == "none" else 5,
                 "color": colours(k % 10), "label": name.replace("_", " ")}
        axes[0].plot(acc, psnr, "-", **style)
        axes[1].plot(acc, ssim, "-", **style)
        for (b, _), a, p in zip(pts, acc, psnr):
            if b["strength"] is not None:
                axes[0].annotate(strength_label(b["strength"]), (a, p), fontsize=6, xytext=(3, 2),
                                 textcoords="offset points", color=colours(k % 10))
    axes[0].axhline(THRESHOLDS[0], ls="--", color="grey", lw=1)
    axes[0].set_ylim(0, SHOWN_UP_TO + 4)
    axes[0].set_yticks([0, 10, 20, 30, 40, 50, SHOWN_UP_TO], ["0", "10", "20", "30", "40", "50",
                                                              f"{SHOWN_UP_TO:.0f}+"])
    axes[0].set_ylabel("best attack: median PSNR (dB)")
    axes[1].set_ylabel("best attack: median SSIM")
    axes[1].set_ylim(-0.05, 1.05)
    for ax in axes[:2]:
        ax.set_xlabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if dp:
        step = [(b["epsilon"], b["psnr_median"]) for b, _ in dp if b.get("epsilon") is not None]
        run = [(u["epsilon"], b["psnr_median"]) for b, u in dp if u.get("epsilon") is not None]
        for series, label, marker in ((step, "one step (the attacked update)", "o"),
                                      (run, "whole training run", "s")):
            if series:
                e, p = zip(*sorted(series))
                axes[2].semilogx(e, [_shown(v) for v in p], marker=marker, label=label)
        axes[2].axhline(THRESHOLDS[0], ls="--", color="grey", lw=1)
        axes[2].set_xlabel("epsilon (delta = 1e-5)")
        axes[2].set_ylabel("best attack: median PSNR (dB)")
        axes[2].set_title("DP-SGD", fontsize=9)
        axes[2].set_ylim(0, SHOWN_UP_TO + 4)
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 10), fontsize=7, frameon=False)
    return detach(fig)
