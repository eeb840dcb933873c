"""Checks of the book as the build executed and rendered it (``make book`` first).

The chapter notebooks are committed without outputs; ``jupyter-book build`` executes them
into ``_build/jupyter_execute/notebooks`` and renders ``_build/html/notebooks``. These tests
read those files:

- no cell shows the same picture twice (a figure returned by a cell *and* still tracked by
  pyplot is drawn by the inline backend a second time: see ``leakutils.plot.detach``);
- every chapter page holds a kernel-free panel (the precomputed slider of
  ``leakutils.widgets.static_panel``), which works in the page without a kernel;
- no chapter page carries ipywidgets state beyond a few KiB: the live panels need a kernel,
  their outputs are removed, and their state would only weigh the page down.

The build directory is ``_build`` at the repository root, or the directory named by the
environment variable ``BOOK_BUILD_DIR`` (holding ``jupyter_execute/`` and ``html/`` the same
way). A missing build fails with "run make book first"; nothing is skipped.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))

#: Picture formats of a notebook output compared for duplicates.
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")

#: The largest ipywidgets state a chapter page may carry, in bytes.
MAX_WIDGET_STATE = 4 * 1024

#: What a kernel-free panel looks like in a page: matplotlib's animation controls (a range
#: slider) over frames embedded as PNG data.
PANEL_MARKERS = ('class="animation"', 'class="anim-slider"', 'type="range"')
FRAME = re.compile(r'frames\[\d+\] = "data:image/png;base64,')

WIDGET_STATE = re.compile(r'<script type="application/vnd\.jupyter\.widget-state\+json">(.*?)</script>', re.S)


def build_dir() -> Path:
    """The book's build directory: ``$BOOK_BUILD_DIR``, or ``_build`` at the repository root."""
    return Path(os.environ.get("BOOK_BUILD_DIR") or ROOT / "_build")


def _required(path: Path, what: str) -> Path:
    if not path.is_file():
        pytest.fail(f"{what} {path} is missing: run make book first (or set BOOK_BUILD_DIR to a "
                    f"directory holding jupyter_execute/ and html/)", pytrace=False)
    return path


def executed(chapter: str) -> Path:
    """The executed notebook of ``chapter``; fails the test when the build lacks it."""
    return _required(build_dir() / "jupyter_execute" / "notebooks" / f"{chapter}.ipynb", "the executed notebook")


def page(chapter: str) -> Path:
    """The HTML page of ``chapter``; fails the test when the build lacks it."""
    return _required(build_dir() / "html" / "notebooks" / f"{chapter}.html", "the chapter page")


def repeated_images(nb) -> list[str]:
    """One line for each code cell of ``nb`` whose outputs hold the same picture twice."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        seen: dict[str, int] = {}
        for output in cell.get("outputs", []):
            for mime in IMAGE_MIMES:
                data = output.get("data", {}).get(mime)
                if data is None:
                    continue
                text = "".join(data) if isinstance(data, list) else str(data)
                key = hashlib.sha256(f"{mime}:{''.join(text.split())}".encode()).hexdigest()
                seen[key] = seen.get(key, 0) + 1
        repeats = sum(n - 1 for n in seen.values() if n > 1)
        if repeats:
            first = cell.source.strip().splitlines()[:1]
            found.append(f"cell {index} ({first[0][:60] if first else 'empty'!r}): "
                         f"{repeats} picture(s) shown twice")
    return found


def test_the_book_has_chapters():
    assert CHAPTERS, "notebooks/ holds no chapter"


@pytest.mark.book
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_no_cell_shows_a_picture_twice(chapter):
    nb = nbformat.read(executed(chapter), as_version=4)
    assert any(o.get("data", {}).keys() & set(IMAGE_MIMES) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", [])), f"{chapter}: the executed notebook shows no picture at all"
    repeats = repeated_images(nb)
    assert not repeats, f"{chapter}: " + "; ".join(repeats) + " (return a detached figure: leakutils.plot.detach)"


@pytest.mark.book
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_has_a_kernel_free_panel(chapter):
    html = page(chapter).read_text(encoding="utf-8")
    missing = [m for m in PANEL_MARKERS if m not in html]
    frames = len(FRAME.findall(html))
    assert not missing and frames >= 2, (f"{chapter}: no kernel-free panel in the page (missing {missing}, "
                                         f"{frames} frames): show the chapter's widgets.<chapter>_twin(...)")


@pytest.mark.book
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_carries_no_widget_state(chapter):
    html = page(chapter).read_text(encoding="utf-8")
    sizes = [len(s.encode()) for s in WIDGET_STATE.findall(html)]
    assert max(sizes, default=0) <= MAX_WIDGET_STATE, (
        f"{chapter}: the page carries {sum(sizes) / 1024:.1f} KiB of ipywidgets state in {len(sizes)} "
        f"script(s), more than {MAX_WIDGET_STATE // 1024} KiB: the live panels' state is unused without a kernel")


def test_the_duplicate_check_sees_a_figure_shown_twice():
    """The check itself (no build needed): one figure shown twice in a cell is caught, also when
    its base64 text is wrapped differently; two different figures, or one per cell, are not."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    def shown(data, kind="display_data"):
        extra = {"execution_count": 1} if kind == "execute_result" else {}
        return new_output(kind, data={"image/png": data, "text/plain": "<Figure>"}, **extra)

    a, b = "iVBORw0KGgoAAAANSUhEUgAA", "iVBORw0KGgoAAAANSUhEUgAB"
    twice = new_code_cell("fig", outputs=[shown(a), shown(a[:12] + "\n" + a[12:], "execute_result")])
    two = new_code_cell("fig", outputs=[shown(a), shown(b)])
    ones = [new_code_cell("fig", outputs=[shown(a)]) for _ in range(2)]
    assert repeated_images(new_notebook(cells=[two, *ones])) == []
    found = repeated_images(new_notebook(cells=[two, twice]))
    assert len(found) == 1 and found[0].startswith("cell 1 ") and "1 picture(s) shown twice" in found[0]
