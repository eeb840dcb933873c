"""How long every control of every chapter's live panel takes to answer.

A panel (:func:`leakutils.widgets.panel.build_panel`) redraws when a control's value changes.
Outside a running kernel the change is handled synchronously, so the time from setting
``control.value`` to the return of that assignment is the time from the change to the
redrawn output (the demo, the drawing, and handing the figure to the output area).

Each control is swept in two states: from the panel's defaults, and with every other slider
at its largest value (where the demos are heaviest). A slider takes its smallest, middle and
largest values; a drop-down or check box every option. The slowest change per control is
reported.

    python tools/panel_latency.py               # every panel, a table in milliseconds
    python tools/panel_latency.py 1 3           # Chapters 1 and 3 only
    python tools/panel_latency.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: What a live panel may take to answer one control change, in seconds (on 2 cores).
BUDGET_S = 1.0


def _inversion_panel():
    """Chapter 5's panel on a lab of the notebook's sizes (untrained: the cost is the same)."""
    import torch

    from leakutils import data, inversion as inv, widgets

    pool = data.load("mnist", size=32)
    x = pool.images[:1000].float()
    torch.manual_seed(0)
    target, shadow = inv.Classifier(channels=(16, 32, 64)), inv.Classifier(channels=(16, 32, 64))
    lab = inv.Lab(target, shadow, inv.class_averages(x, pool.labels[:1000]), steps=20)
    parts = lab.parts(inv.outputs(shadow, x[:200]))
    scaler = inv.FeatureScaler(parts)
    for k in (10, 5, 3, 1):
        for combo in ("O", "A", "X", "O+X") if k == 10 else ("O",):
            f = inv.features(parts, combo, scaler)
            lab.add(k, combo, inv.InverseTCNN(f.shape[1], widths=(32, 16, 8)), scaler)
    return widgets.inversion_panel(lab, x[:200])


def panels() -> dict:
    """Chapter number to a function that builds that chapter's panel as its notebook does."""
    from leakutils import widgets

    return {
        1: widgets.bias_ratio_panel,
        2: widgets.propagation_panel,
        3: widgets.conv_panel,
        4: widgets.exan_panel,
        5: _inversion_panel,
        6: widgets.extraction_panel,
        7: widgets.defence_panel,
        8: widgets.fedavg_panel,
        9: widgets.malicious_panel,
    }


def controls(box) -> list:
    """The value widgets of a panel (an ``ipywidgets.VBox`` of rows of controls), in order."""
    import ipywidgets as W

    kinds = (W.IntSlider, W.Dropdown, W.Checkbox)
    return [c for row in box.children if isinstance(row, W.HBox) for c in row.children if isinstance(c, kinds)]


def run_button(box):
    """The panel's run button, or None when its controls redraw by themselves."""
    import ipywidgets as W

    found = [c for row in box.children if isinstance(row, W.HBox) for c in row.children if isinstance(c, W.Button)]
    return found[0] if found else None


def _values(control) -> list:
    """The values one control is swept through."""
    import ipywidgets as W

    if isinstance(control, W.IntSlider):
        lo, hi, step = control.min, control.max, control.step
        mid = lo + ((hi - lo) // 2 // step) * step
        return list(dict.fromkeys([lo, mid, hi]))
    if isinstance(control, W.Checkbox):
        return [not control.value, control.value]
    if isinstance(control, W.Dropdown):
        return list(control._options_values)
    raise TypeError(f"no sweep for a {type(control).__name__}")


def _render(*objs, **_):
    """What the inline backend does with a displayed figure: draw it to PNG (bounding box tight)."""
    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    for obj in objs:
        if isinstance(obj, Figure):
            print_figure(obj, "png", bbox_inches="tight")


def _timed(action) -> float:
    """The seconds ``action()`` takes (a control change, or a click, until the panel has redrawn)."""
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    action()
    seconds = time.perf_counter() - t0
    plt.close("all")
    return seconds


def _change(c, value, retry: bool) -> float:
    """Seconds for ``c.value = value`` to redraw; over budget and ``retry``, the better of two tries."""
    seconds = _timed(lambda: setattr(c, "value", value))
    if retry and seconds > BUDGET_S:
        # a second try from another value tells a slow setting from a moment of load
        other = next((v for v in _values(c) if v != value), None)
        if other is not None:
            c.value = other
            seconds = min(seconds, _timed(lambda: setattr(c, "value", value)))
    return seconds


def measure(box, *, clicks: bool = True, retry: bool = True) -> dict:
    """The slowest change of every control of ``box``, in seconds, keyed by the control's label.

    Each control is swept from the defaults; with every slider at its largest value; and
    then with every other control at the value that was slowest so far as well (the
    heaviest combination found). For a panel with a run button, changing a control computes
    nothing, and the slowest click is reported under ``"run"``: after every change when
    ``clicks``, otherwise once, at the defaults. With ``retry``, a change over
    :data:`BUDGET_S` is timed a second time and the better time kept.

    Raises
    ------
    RuntimeError
        When a setting failed (the panel shows an error instead of a figure).
    """
    import ipywidgets as W

    ctrls, button = controls(box), run_button(box)
    defaults = {c: c.value for c in ctrls}
    slowest = {c.description: 0.0 for c in ctrls}
    if button is not None:
        slowest["run"] = _timed(button.click)
    heaviest = {c: c.max for c in ctrls if isinstance(c, W.IntSlider)}
    for state in ({}, heaviest, heaviest):
        for c in ctrls:
            c.value = state.get(c, defaults[c])
        for c in ctrls:
            worst = (-1.0, c.value)
            for value in _values(c):
                seconds = _change(c, value, retry)
                slowest[c.description] = max(slowest[c.description], seconds)
                if button is not None and clicks:
                    seconds = _timed(button.click)
                    slowest["run"] = max(slowest["run"], seconds)
                if getattr(box, "error", None):
                    raise RuntimeError(f"{c.description} = {value!r}: {box.error}")
                worst = max(worst, (seconds, value), key=lambda t: t[0])
            if not isinstance(c, W.IntSlider) and state:
                heaviest[c] = worst[1]
            c.value = state.get(c, defaults[c])
    return slowest


def use_inline_rendering() -> None:
    """Make ``IPython.display.display`` draw figures to PNG, as a kernel's inline backend does."""
    import IPython.display
    import matplotlib

    matplotlib.use("Agg")
    IPython.display.display = _render


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", type=int, help="chapter numbers (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    use_inline_rendering()
    table = {}
    for chapter, build in panels().items():
        if args.chapters and chapter not in args.chapters:
            continue
        t0 = time.perf_counter()
        box = build()
        built = time.perf_counter() - t0
        slowest = measure(box, retry=False)
        table[chapter] = {"build_s": built, "controls_s": slowest}
        worst = max(slowest, key=slowest.get)
        print(f"Chapter {chapter}: built in {built * 1e3:7.0f} ms; slowest control {worst!r} "
              f"{slowest[worst] * 1e3:6.0f} ms; " + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in slowest.items()),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
