"""Every control of every chapter's live panel answers within a second (tools/panel_latency.py).

The time is from the change of a control to the redrawn figure, drawn to PNG as a kernel's
inline backend draws it. Each control is swept over its range from the defaults, with the
sliders at their largest values, and in the heaviest combination found. Panels whose demo
takes seconds by nature (Chapters 4, 6 and 7) have a run button: their controls compute
nothing, and the button is pressed once at the defaults to check that it runs.
"""
from __future__ import annotations

import pytest

from tools import panel_latency as pl

#: A run button's demo at the panel's defaults (seconds): the attack, not the whole range.
RUN_BUDGET_S = 30.0


@pytest.fixture(scope="module", autouse=True)
def inline_rendering():
    import IPython.display

    shown = IPython.display.display
    pl.use_inline_rendering()
    yield
    IPython.display.display = shown


@pytest.mark.parametrize("chapter", sorted(pl.panels()))
def test_every_control_answers_within_budget(chapter):
    box = pl.panels()[chapter]()
    slowest = pl.measure(box, clicks=False)
    print(f"Chapter {chapter}:", {k: f"{v * 1e3:.0f} ms" for k, v in slowest.items()})
    controls = {k: v for k, v in slowest.items() if k != "run"}
    assert controls, f"Chapter {chapter}'s panel has no controls the measurement recognises"
    late = {k: f"{v * 1e3:.0f} ms" for k, v in controls.items() if v > pl.BUDGET_S}
    assert not late, (f"Chapter {chapter}: controls slower than {pl.BUDGET_S:.0f} s to redraw: {late}; make the "
                      f"demo or its figure cheaper, or give the panel a run button (build_panel(run_button=...))")
    if "run" in slowest:
        assert slowest["run"] <= RUN_BUDGET_S, f"Chapter {chapter}: the run button took {slowest['run']:.1f} s"
        assert getattr(box, "error", None) is None


def test_a_failing_setting_is_shown_as_text_not_raised():
    from leakutils.widgets import panel

    def demo(n):
        if n > 2:
            raise ValueError(f"n = {n} is too large; use n <= 2")
        return n

    box = panel.build_panel(demo, lambda r: None, {"n": panel.Slider(1, 1, 5, "n")})
    assert box.error is None
    pl.controls(box)[0].value = 4
    assert box.error == "ValueError: n = 4 is too large; use n <= 2"
    pl.controls(box)[0].value = 2
    assert box.error is None


def test_run_button_panels_compute_only_on_request():
    from leakutils.widgets import panel

    calls = []
    box = panel.build_panel(lambda n: calls.append(n) or n, lambda r: None, {"n": panel.Slider(1, 1, 5, "n")},
                            run_button="Run")
    assert calls == [1]
    pl.controls(box)[0].value = 3
    assert calls == [1] and "press the button" in box.children[-2].children[1].value
    pl.run_button(box).click()
    assert calls == [1, 3] and box.children[-2].children[1].value == ""
    assert pl.controls(box)[0].continuous_update is False
