"""Chapter 5's panel: a test image's output vector inverted by every trained inverse model."""
from __future__ import annotations

import torch

from .. import metrics, plot
from . import panel

__all__ = ["inversion_demo", "show_inversion_demo", "inversion_panel"]


def _check_lab_images(lab, images) -> None:
    """Raise TypeError/ValueError unless ``lab`` is an inversion Lab and ``images`` a non-empty batch."""
    from .. import inversion

    if not isinstance(lab, inversion.Lab):
        raise TypeError(f"lab must be a leakutils.inversion.Lab (the trained attack), got {type(lab).__name__}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor (N, 1, 32, 32), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch (N, C, H, W), got shape {tuple(images.shape)}")


def _trained_ks(lab) -> list:
    """The ``k`` values (top-k truncations) that ``lab`` has inverse models for, largest first."""
    return sorted({kv for kv, _ in lab.inverses}, reverse=True)


def inversion_demo(lab, images: torch.Tensor, index: int = 0, *, decimals: int | None = None,
                   k: int | None = None) -> dict:
    """Invert the target's output vector for ``images[index]`` with every inverse model of ``lab``.

    The attack is the gray-box TCNN inversion of :mod:`leakutils.inversion` (Yang et al.,
    CCS 2019, with the shadow-model features of Chapter 5).

    Parameters
    ----------
    lab : leakutils.inversion.Lab
    images : torch.Tensor
        The attack-test images ``(N, 1, 32, 32)`` in [0, 1].
    index : int
        ``0..N - 1``.
    decimals : int, optional
        Round the output vector to this many decimals (>= 0) first.
    k : int, optional
        Keep only its top ``k`` entries (inverse models trained for that ``k`` are used).

    Returns
    -------
    dict
        ``"original"`` and one entry per inverse model, ``"X~"`` and ``"class average"``: images
        ``(1, 1, 32, 32)``; ``"ssim"``: the SSIM (Gaussian window) of each against the original.

    Raises
    ------
    TypeError
        ``lab`` not a Lab, ``images`` not a tensor, a non-integer index, ``decimals`` or ``k``.
    ValueError
        An index out of range, a negative ``decimals``, or a ``k`` without trained inverse models.
    """
    _check_lab_images(lab, images)
    index = panel.check_int("index", index, 0, images.shape[0] - 1)
    if decimals is not None:
        panel.check_int("decimals", decimals, 0)
    if k is not None:
        panel.check_int("k", k, 1)
    x = images[index:index + 1]
    out = lab.invert(x, decimals=decimals, k=k)
    out = {"original": x, **out}
    out["ssim"] = {name: float(metrics.ssim(img.double(), x.double(), gaussian=True)[0])
                   for name, img in out.items() if name != "original"}
    return out


def show_inversion_demo(result: dict):
    """Plot an :func:`inversion_demo` result: the original and each reconstruction with its SSIM.

    Returns a ``matplotlib.figure.Figure``.

    Raises
    ------
    TypeError
        ``result`` is not the dict :func:`inversion_demo` returns (with ``"original"`` and
        ``"ssim"``).
    """
    if not isinstance(result, dict) or "original" not in result or "ssim" not in result:
        raise TypeError("expected the dict that inversion_demo(...) returns, with 'original' and 'ssim'")
    names = [n for n in result if n not in ("ssim",)]
    titles = [n if n == "original" else f"{n}\nSSIM {result['ssim'][n]:.2f}" for n in names]
    return plot.image_grid(torch.cat([result[n] for n in names]), titles, ncols=len(names))


def inversion_panel(lab, images: torch.Tensor):
    """A live panel: choose a test image, rounding and k; see what each inverse model returns.

    Parameters
    ----------
    lab : leakutils.inversion.Lab
        With at least one inverse model registered.
    images : torch.Tensor
        The attack-test images ``(N, 1, 32, 32)`` in [0, 1].

    Returns
    -------
    ipywidgets.VBox
        Re-runs :func:`inversion_demo` on every change.

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed (``pip install ipywidgets``).
    TypeError, ValueError
        ``lab`` or ``images`` as :func:`inversion_demo` refuses them, or a lab without
        inverse models.
    """
    _check_lab_images(lab, images)
    ks = _trained_ks(lab)
    if not ks:
        raise ValueError("the lab has no inverse model: train one and register it with lab.add(...) first")
    controls = {
        "index": panel.Slider(0, 0, images.shape[0] - 1, "test image"),
        "decimals": panel.Choice([("none", None), ("2", 2), ("1", 1), ("0", 0)], None, "rounding"),
        "k": panel.Choice(ks, ks[0], "top k"),
    }
    return panel.build_panel(lambda **v: inversion_demo(lab, images, **v), show_inversion_demo, controls)
