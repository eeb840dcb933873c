"""Numbers a chapter states about its own run, inserted into its prose (myst-nb ``glue``).

A chapter computes a value in a code cell and glues it under a key; the Markdown cites the
key (``{glue:text}`key:.1f```), so the built book cannot state a number its run did not
produce. In the book build :func:`glue` is myst-nb's own; in a plain kernel (Colab,
JupyterLab without myst-nb) it only records the value, so the notebook runs unchanged.
"""
from __future__ import annotations

from typing import Any

from .validate import check_bool

__all__ = ["glue", "glued"]

#: Every value glued in this kernel, by key (also outside the book build).
glued: dict[str, Any] = {}

try:  # the book build and the test environment have myst-nb
    from myst_nb import glue as _myst_glue
except ImportError:  # pragma: no cover - Colab without the book's tools
    _myst_glue = None


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for the chapter's prose and return it.

    Parameters
    ----------
    name : str
        The key the Markdown cites, e.g. ``"ch1_psnr"``: letters, digits and ``_`` only,
        unique within the book.
    value : Any
        A number, string or figure. Numbers are glued as Python numbers, so the prose can
        format them (``{glue:text}`ch1_psnr:.1f```).
    display : bool
        Also show the value under the cell (default False: the cell's own output shows it).

    Returns
    -------
    Any
        ``value`` itself, so ``psnr = glue("ch1_psnr", float(scores.psnr.min()))`` reads as one
        line; a NumPy or torch scalar (``np.float64``, a 0-d tensor) as the Python number it
        holds, which is also what is glued (the book formats Python numbers only).

    Raises
    ------
    TypeError
        A key that is not a string; ``display`` not a bool.
    ValueError
        A key that is empty or holds characters other than ASCII letters, digits and ``_``.
    """
    if not isinstance(name, str):
        raise TypeError(f"a glue key must be a string of letters, digits and '_', e.g. 'ch1_psnr', "
                        f"got {type(name).__name__}")
    if not name or not name.isascii() or not name.replace("_", "").isalnum():
        raise ValueError(f"a glue key must be letters, digits and '_' only, e.g. 'ch1_psnr', got {name!r}")
    check_bool("display", display)
    # a NumPy or torch scalar is glued as the Python number it holds, so the prose can format it
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    glued[name] = value
    if _myst_glue is not None:
        _myst_glue(name, value, display=display)
    return value
