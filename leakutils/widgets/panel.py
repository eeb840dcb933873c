"""The panel factory every chapter's live panel is built with, and what the demos share.

A chapter's panel is three pieces: a *demo* function that runs the experiment and returns a
small record (a plain notebook cell calls it and asserts on it), a *show* function that draws
that record, and a set of controls. :func:`build_panel` wires them: every change of a control
calls ``show(demo(**values))``. Controls are described by :class:`Slider`, :class:`Choice`
and :class:`Toggle`, plain records that need no ipywidgets; ``ipywidgets`` is imported only
when a panel is built (:func:`require_ipywidgets`).

Also here: the data sets and the ReLU network the demos share (loaded once per session,
because a panel calls back on every slider move) and the checks every demo applies to its
arguments, so that a bad value raises a clear error in a plain cell.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch

from .. import data, models
# the shared checks of leakutils.validate, re-exported for the demos
from ..validate import check_bool, check_choice, check_int

__all__ = ["DEMO_DATASETS", "DEMO_ACTIVATIONS", "DTYPES", "MAX_BATCH", "MAX_WIDTH", "MAX_SEED", "Slider", "Choice", "Toggle",
           "require_ipywidgets", "build_panel", "dataset", "preload", "relu_mlp", "check_int", "check_choice",
           "check_bool", "check_batch", "check_result"]

#: Offline data sets the demos accept (see :data:`leakutils.data.OFFLINE`).
DEMO_DATASETS = ("mnist", "lfw", "patches", "retina", "digits")

#: The client dtypes the demos with a dtype control accept.
DTYPES = {"float64": torch.float64, "float32": torch.float32}

#: Activations the demos accept, with the parameters the course uses for each.
DEMO_ACTIVATIONS = {
    "sigmoid": {}, "tanh": {}, "arctan": {}, "softplus": {}, "relu": {},
    "leaky_relu": {"negative_slope": 0.2}, "prelu": {}, "elu": {},
}

#: Largest client batch a demo accepts (the Chapter 4 panel's slider reaches it).
MAX_BATCH = 64

#: Widest hidden layer a demo builds (float64 weights of 784 x 8192 take 51 MB).
MAX_WIDTH = 8192

#: Seeds are integers in ``0..MAX_SEED`` (what both PyTorch and NumPy accept).
MAX_SEED = 2**32 - 1


# --------------------------------------------------------------------------- controls


@dataclass(frozen=True)
class Slider:
    """An integer slider: ``value`` in ``lo..hi`` by ``step``, labelled ``label``."""

    value: int
    lo: int
    hi: int
    label: str
    step: int = 1


@dataclass(frozen=True)
class Choice:
    """A drop-down list of ``options`` (values, or ``(text, value)`` pairs) starting at ``value``."""

    options: Sequence
    value: Any
    label: str


@dataclass(frozen=True)
class Toggle:
    """A check box starting at ``value`` (bool)."""

    value: bool
    label: str


def require_ipywidgets():
    """Import and return ``ipywidgets``.

    Raises
    ------
    ImportError
        When ipywidgets is not installed; the message says ``pip install ipywidgets``.
    """
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the live panels need ipywidgets: pip install ipywidgets "
                          "(or pip install 'leakutils[widgets]')") from err
    return ipywidgets


def _make_control(W, spec):
    """The ipywidget of one control description (a slider answers when it is released)."""
    if isinstance(spec, Slider):
        return W.IntSlider(value=spec.value, min=spec.lo, max=spec.hi, step=spec.step, description=spec.label,
                           continuous_update=False)
    if isinstance(spec, Choice):
        return W.Dropdown(options=list(spec.options), value=spec.value, description=spec.label)
    if isinstance(spec, Toggle):
        return W.Checkbox(value=spec.value, description=spec.label)
    raise TypeError(f"a control must be a Slider, Choice or Toggle, got {type(spec).__name__}")


def build_panel(demo: Callable, show: Callable, controls: dict, *, rows: Sequence = (None,),
                run_button: str | None = None, **fixed):
    """A live panel that redraws ``show(demo(**values, **fixed))`` whenever a control changes.

    A setting that fails does not leave an empty output: the error's type and message are
    shown as text in the panel (and kept in the returned box's ``error`` attribute, None
    after a successful redraw).

    Parameters
    ----------
    demo : callable
        The chapter's demo function; it receives the controls' values as keyword arguments
        (named as the keys of ``controls``) and the ``fixed`` keyword arguments.
    show : callable
        Draws what ``demo`` returns (a matplotlib figure).
    controls : dict
        Argument name to :class:`Slider`, :class:`Choice` or :class:`Toggle`. Sliders answer
        when released, not at every value they pass.
    rows : sequence of int or None
        Controls per row, in order; ``None`` takes the rest. Default: one row.
    run_button : str, optional
        For a demo that can take seconds: the text of a button that runs it. Changing a
        control then only says that the figure is out of date.
    **fixed
        Keyword arguments passed to ``demo`` unchanged on every call.

    Returns
    -------
    ipywidgets.VBox
        The rows of controls (and the run button) above the figure's output area, its last child.

    Raises
    ------
    ImportError
        When ipywidgets is not installed (``pip install ipywidgets``).
    TypeError
        A control that is not a :class:`Slider`, :class:`Choice` or :class:`Toggle`, or a
        ``demo``/``show`` that is not callable.
    ValueError
        No controls, or ``rows`` that do not cover them.
    """
    if not callable(demo) or not callable(show):
        raise TypeError("demo and show must be callables (the chapter's demo and show functions)")
    if not isinstance(controls, dict) or not controls:
        raise ValueError("controls must be a non-empty dict of argument name to Slider, Choice or Toggle")
    W = require_ipywidgets()
    widgets = {name: _make_control(W, spec) for name, spec in controls.items()}
    items, boxes, start = list(widgets.values()), [], 0
    for n in rows:
        stop = len(items) if n is None else start + n
        boxes.append(W.HBox(items[start:stop]))
        start = stop
    if start != len(items):
        raise ValueError(f"rows {tuple(rows)} place {start} of {len(items)} controls; end them with None")
    out, note = W.Output(), W.HTML()
    if run_button is not None:
        button = W.Button(description=str(run_button), button_style="primary")
        boxes.append(W.HBox([button, note]))
    box = W.VBox(boxes + [out])
    box.error = None

    def draw(*_):
        values = {name: w.value for name, w in widgets.items()}
        note.value = "<i>running...</i>" if run_button is not None else ""
        with out:
            out.clear_output(wait=True)
            box.error = _draw(demo, show, values, fixed)
        note.value = ""

    def stale(_):
        note.value = "<i>settings changed: press the button to run them</i>"

    for w in widgets.values():
        w.observe(draw if run_button is None else stale, names="value")
    if run_button is not None:
        button.on_click(draw)
    draw()
    return box


def _draw(demo: Callable, show: Callable, values: dict, fixed: dict) -> str | None:
    """Display ``show(demo(...))``; on failure print the error as text and return it."""
    from IPython.display import display

    try:
        figure = show(demo(**values, **fixed))
    except Exception as err:  # noqa: BLE001 - a panel shows every failure to its reader
        message = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        settings = ", ".join(f"{k} = {v!r}" for k, v in values.items())
        print(f"These settings ({settings}) did not run.\n{message}")
        return message
    # show() returns a figure pyplot no longer tracks (leakutils.plot.detach): display it once
    display(figure)
    return None


# --------------------------------------------------------------------------- shared data and models


def dataset(name: str) -> data.ImageData:
    """The offline data set ``name`` in float64, loaded once per session (cached).

    Raises
    ------
    TypeError
        ``name`` is not a string.
    ValueError
        ``name`` is not one of :data:`DEMO_DATASETS`.
    """
    return _load(check_choice("dataset", name, DEMO_DATASETS))


def preload() -> None:
    """Load every data set of :data:`DEMO_DATASETS` now (a few seconds once per session), so a
    panel's data-set control answers without loading one."""
    for name in DEMO_DATASETS:
        _load(name)


@lru_cache(maxsize=len(DEMO_DATASETS))
def _load(name: str) -> data.ImageData:
    return data.load(name, dtype=torch.float64)


@lru_cache(maxsize=8)
def relu_mlp(shape: tuple, width: int, num_classes: int, seed: int) -> models.MLP:
    """``MLP(shape, (width,), ReLU)`` in float64 with PyTorch's default initialisation under ``seed``.

    Cached: the returned network is shared between calls, so callers must not train it.
    """
    torch.manual_seed(seed)
    return models.MLP(shape, (width,), num_classes=num_classes, activation="relu", dtype=torch.float64)


# --------------------------------------------------------------------------- argument checks


def check_batch(name: str, start, batch_size, ds: data.ImageData, dataset_name: str) -> tuple[int, int]:
    """Check a batch of ``batch_size`` (1..:data:`MAX_BATCH`) images from position ``start`` of ``ds``.

    Returns
    -------
    (start, batch_size) : tuple of int

    Raises
    ------
    TypeError
        Non-integer ``start`` or ``batch_size``.
    ValueError
        ``batch_size`` outside 1..MAX_BATCH, a negative ``start``, or a batch that runs past
        the data set's end (the message gives the valid range of ``start``).
    """
    batch_size = check_int("batch_size", batch_size, 1, MAX_BATCH)
    start = check_int(name, start, 0)
    if start + batch_size > len(ds):
        raise ValueError(f"{dataset_name!r} has {len(ds)} images: a batch of {batch_size} from {name} = {start} "
                         f"runs past the end; {name} must be in 0..{len(ds) - batch_size}")
    return start, batch_size


def check_result(result, kind: type, demo: str):
    """Raise TypeError unless ``result`` is a ``kind`` (what ``demo`` returns)."""
    if not isinstance(result, kind):
        raise TypeError(f"expected the {kind.__name__} that {demo}(...) returns, got {type(result).__name__}")
    return result
