"""Numbers a chapter states about its own run, inserted into its prose (myst-nb ``glue``).

A chapter computes a value in a code cell and glues it under a key; the Markdown cites the
key (``{glue:text}`key:.1f```), so the built book cannot state a number its run did not
produce. In the book build :func:`glue` is myst-nb's own; in a plain kernel (Colab,
JupyterLab without myst-nb) it only records the value, so the notebook runs unchanged.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from .validate import check_bool, check_int

__all__ = ["glue", "glued", "Footprint", "footprint"]

#: When this kernel imported leakutils (``time.perf_counter()``): a chapter's clock starts here.
STARTED = time.perf_counter()

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


@dataclass(frozen=True)
class Footprint:
    """What running a chapter cost its kernel.

    Attributes
    ----------
    seconds : float
        Wall-clock seconds since the kernel imported leakutils (the chapter's first cells).
    peak_mib : float or None
        The kernel's peak resident memory in MiB (None where the operating system does not
        report it, e.g. Windows).
    threads : int
        PyTorch's intra-op threads (see :mod:`leakutils.threads`).
    """

    seconds: float
    peak_mib: float | None
    threads: int


def _peak_mib() -> float | None:
    """This process's peak resident memory in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def footprint(chapter: int | None = None) -> Footprint:
    """Time and peak memory of this kernel so far; with ``chapter``, glued as ``ch<N>_seconds`` etc.

    Parameters
    ----------
    chapter : int, optional
        1..99: also glue ``ch<N>_seconds``, ``ch<N>_peak_mib`` and ``ch<N>_threads`` (the
        teacher's guide cites them from every chapter).

    Returns
    -------
    Footprint

    Raises
    ------
    TypeError, ValueError
        ``chapter`` that is not an integer in 1..99.
    """
    import torch

    result = Footprint(seconds=time.perf_counter() - STARTED, peak_mib=_peak_mib(), threads=torch.get_num_threads())
    if chapter is not None:
        n = check_int("chapter", chapter, 1, 99)
        glue(f"ch{n}_seconds", round(result.seconds, 1))
        # NaN where the system does not report it: the prose formats every value as a number
        glue(f"ch{n}_peak_mib", round(result.peak_mib) if result.peak_mib is not None else float("nan"))
        glue(f"ch{n}_threads", result.threads)
    return result
