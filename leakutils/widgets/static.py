"""Kernel-free twins of the live panels: precomputed results scrubbed with a slider.

A live panel (:func:`leakutils.widgets.panel.build_panel`) needs a running kernel. Its twin
runs the chapter's demo once for each value of the panel's main control while the notebook
executes, draws every result with the chapter's own show function, and stores the pictures
in one HTML animation made by matplotlib (:meth:`matplotlib.animation.Animation.to_jshtml`):
a slider with step buttons that works in any browser, with no kernel and no network. Each
frame carries a caption line naming the control's value and the score of that run, so the
reader sees the reconstruction and its score change together.

Each chapter module builds its twin with a function of its own (``bias_ratio_twin``,
``propagation_twin``, ``conv_twin``, ...) that fixes the grid, the caption and the label,
and checks the whole grid (:func:`check_values`) before any demo runs.
"""
from __future__ import annotations

import io
import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..validate import check_int

__all__ = ["StaticPanel", "static_panel"]

# The chapter modules' twins also use the unexported helper check_values below (a twin's grid
# of control values, checked before any demo runs).

#: Resolution of the frames (dots per inch): the figures of the show functions are 7-8 inches
#: wide, so 80 dpi gives frames of about 600 pixels, 20-60 KiB each as PNG.
FRAME_DPI = 80

#: Height of the caption strip above each frame, in pixels.
CAPTION_PX = 26

#: Most frames one twin may hold (the page embeds every frame).
MAX_FRAMES = 40


@dataclass
class StaticPanel:
    """A precomputed, kernel-free panel; a notebook shows it as HTML (``_repr_html_``).

    Attributes
    ----------
    html : str
        Self-contained HTML: the frames as embedded PNG images, matplotlib's animation
        controls (slider, step buttons) and their inline script; no network access.
    values : tuple
        The control's value of each frame, in order.
    captions : tuple of str
        The caption line of each frame (control value and score).
    label : str
        The control's name as shown.
    results : tuple
        What the demo returned for each value (for asserting on them in the notebook).
    seconds : float
        Wall time spent running the demos and drawing the frames.
    """

    html: str
    values: tuple
    captions: tuple
    label: str
    results: tuple
    seconds: float

    def _repr_html_(self) -> str:
        return self.html


def _rasterise(fig, dpi: int) -> np.ndarray:
    """RGBA float array ``(H, W, 4)`` in [0, 1] of a figure saved as PNG at ``dpi``."""
    import matplotlib.image as mpimg

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.1)
    buf.seek(0)
    return mpimg.imread(buf, format="png")


def _pad(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``img`` centred on a white ``(h, w, 4)`` canvas."""
    out = np.ones((h, w, 4), dtype=img.dtype)
    top, left = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
    out[top:top + img.shape[0], left:left + img.shape[1]] = img
    return out


#: matplotlib's animation controls draw their button icons with Font Awesome from a CDN; the
#: twin must work offline, so the stylesheet link goes and each icon becomes a text glyph (from
#: blocks common fonts cover: the media-control symbols U+23EE/U+23ED often show as empty boxes).
_GLYPHS = {"fa fa-minus": "\u2212", "fa fa-fast-backward": "\u21e4", "fa fa-step-backward": "\u25c1",
           "fa fa-play fa-flip-horizontal": "\u25c0", "fa fa-pause": "\u275a\u275a", "fa fa-play": "\u25b6",
           "fa fa-step-forward": "\u25b7", "fa fa-fast-forward": "\u21e5", "fa fa-plus": "+"}


def _offline(html: str) -> str:
    """matplotlib's animation HTML without its one network resource (see :data:`_GLYPHS`)."""
    import re

    html = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">', "", html)
    for cls, glyph in _GLYPHS.items():
        html = html.replace(f'<i class="{cls}"></i>', glyph)
    return html


def check_values(name: str, values, check: Callable[[Any], Any]) -> tuple:
    """The grid of a twin: ``values`` as a tuple of ``check(v)``, 2..``MAX_FRAMES`` distinct ones.

    A twin checks its whole grid before running any demo, so a bad last value fails at once
    and names the twin's argument rather than the demo's.

    Raises
    ------
    TypeError
        ``values`` is a string or not iterable; whatever ``check`` raises for a value.
    ValueError
        Fewer than 2 or more than ``MAX_FRAMES`` values, a value given twice; whatever
        ``check`` raises for a value.
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of values (e.g. a tuple or a range), got {values!r}")
    # one value past the limit is enough to refuse a grid (a long range is never expanded)
    checked = tuple(check(v) for v in itertools.islice(values, MAX_FRAMES + 1))
    if not 2 <= len(checked) <= MAX_FRAMES:
        got = len(checked) if len(checked) <= MAX_FRAMES else f"more than {MAX_FRAMES}"
        raise ValueError(f"{name} must hold 2..{MAX_FRAMES} values (one frame each), got {got}")
    if len(set(checked)) != len(checked):
        raise ValueError(f"{name} must not repeat a value (each is one frame), got {checked}")
    return checked


def static_panel(demo: Callable, show: Callable, control: str, values: Sequence, *,
                 caption: Callable[[Any], str] | None = None, label: str | None = None,
                 dpi: int = FRAME_DPI, **fixed) -> StaticPanel:
    """Run ``show(demo(**{control: v}, **fixed))`` for every ``v`` in ``values``; one slider over them.

    Parameters
    ----------
    demo, show : callable
        The chapter's demo function and the function drawing its result (returns a
        ``matplotlib.figure.Figure``), as for :func:`~leakutils.widgets.panel.build_panel`.
    control : str
        The keyword argument of ``demo`` the slider steps through (the panel's main control).
    values : sequence
        Its values, 2..``MAX_FRAMES`` distinct ones (hashable), in slider order.
    caption : callable, optional
        ``caption(result) -> str``: the score of one run (e.g. ``"PSNR 14.2 dB"``), shown after
        the control's value above the frame. Default: no score line beyond the value.
    label : str, optional
        How the control is named on the frames (default: ``control``).
    dpi : int
        Resolution of the frames, 30..200 dots per inch.
    **fixed
        Keyword arguments passed to ``demo`` unchanged.

    Returns
    -------
    StaticPanel
        Its ``html`` is about (frames x 20-60 KiB) of embedded PNG plus matplotlib's controls.

    Raises
    ------
    TypeError
        ``demo`` or ``show`` (or ``caption``) not callable, ``control`` not a string, ``show``
        not returning a matplotlib Figure.
    ValueError
        Fewer than 2 or more than ``MAX_FRAMES`` values, a value given twice, or a ``dpi`` out
        of range; whatever ``demo`` raises for a value.
    """
    from matplotlib.animation import ArtistAnimation
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not callable(demo) or not callable(show) or (caption is not None and not callable(caption)):
        raise TypeError("demo, show and caption must be callables (the chapter's demo and show functions)")
    if not isinstance(control, str):
        raise TypeError(f"control must be the name of demo's keyword argument, got {control!r}")
    values = check_values("values", values, lambda v: v)
    dpi = check_int("dpi", dpi, 30, 200)
    label = control if label is None else str(label)
    t0 = time.perf_counter()
    frames, captions, results = [], [], []
    for v in values:
        result = demo(**{control: v}, **fixed)
        fig = show(result)
        if not isinstance(fig, Figure):
            raise TypeError(f"show must return a matplotlib Figure, got {type(fig).__name__}")
        frames.append(_rasterise(fig, dpi))
        captions.append(f"{label} = {v}" + (f":  {caption(result)}" if caption else ""))
        results.append(result)
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    canvas = Figure(figsize=(w / dpi, (h + CAPTION_PX) / dpi), dpi=dpi)
    FigureCanvasAgg(canvas)
    ax = canvas.add_axes((0, 0, 1, h / (h + CAPTION_PX)))
    ax.set_axis_off()
    artists = []
    for img, text in zip(frames, captions):
        shown = ax.imshow(_pad(img, h, w), interpolation="nearest", animated=True)
        note = canvas.text(0.01, 1 - 0.5 * CAPTION_PX / (h + CAPTION_PX), text, va="center", ha="left",
                           fontsize=10, animated=True)
        artists.append([shown, note])
    anim = ArtistAnimation(canvas, artists, interval=900, repeat=False)
    html = _offline(anim.to_jshtml(default_mode="once"))
    return StaticPanel(html=html, values=values, captions=tuple(captions), label=label,
                       results=tuple(results), seconds=time.perf_counter() - t0)
