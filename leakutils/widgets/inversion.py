"""Chapter 5's panel: a test image's output vector inverted by every trained inverse model."""
from __future__ import annotations

import torch

from .. import metrics, plot
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["inversion_demo", "show_inversion_demo", "inversion_panel", "inversion_twin"]

#: Attack-test digits the kernel-free twin inverts on every frame (its columns).
TWIN_DIGITS = 8


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


def _twin_frame(lab, images: torch.Tensor, k: int, combos: tuple) -> dict:
    """One frame of :func:`inversion_twin`: ``images`` inverted from their top-``k`` output vectors."""
    out = lab.invert(images, k=k)
    avg = out["class average"]
    rows = {"original": images, "class average": avg, "X~": out["X~"],
            **{f"TCNN({c})": out[c] for c in combos}}
    score = {name: float(metrics.ssim(img.double(), images.double(), gaussian=True).mean())
             for name, img in rows.items() if name != "original"}
    distance = {name: float(metrics.mse(img.double(), avg.double()).mean())
                for name, img in rows.items() if name not in ("original", "class average")}
    return {"k": k, "images": rows, "ssim": score, "distance": distance}


def _strip(images: torch.Tensor, gap: int = 3) -> torch.Tensor:
    """Images ``(n, C, H, W)`` side by side as one image ``(C, H, n * W + (n - 1) * gap)``, white gaps."""
    white = torch.ones(*images.shape[1:-1], gap, dtype=images.dtype)
    parts = [p for img in images for p in (img, white)][:-1]
    return torch.cat(parts, dim=-1)


def _show_twin_frame(frame: dict):
    """Draw a frame of :func:`inversion_twin`: one row per image kind, its mean SSIM beside it."""
    import matplotlib.pyplot as plt

    rows = frame["images"]
    n = rows["original"].shape[0]
    # one strip per row (a few axes draw far faster than one per digit)
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.9 * n + 1.3, 0.95 * len(rows)), squeeze=False)
    for ax, (name, imgs) in zip(axes[:, 0], rows.items()):
        plot.show_image(ax, _strip(imgs))
        label = name if name == "original" else f"{name}\nSSIM {frame['ssim'][name]:.3f}"
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=plot.FONT)
    fig.tight_layout()
    return plot.detach(fig)


def inversion_twin(lab, images: torch.Tensor, ks=None, *, digits: int = TWIN_DIGITS,
                   dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`inversion_panel`: top-k truncation, one slider.

    For each ``k`` of ``ks`` the target's output vectors of the first ``digits`` images are
    truncated to their top ``k`` logits and inverted with the inverse models ``lab`` holds for
    that ``k`` (nothing is retrained). Each frame shows, one row each, the originals, the
    class average of the predicted class, X~ and every combination trained for all ``k`` of
    the grid (in Chapter 5: TCNN(O)), with the mean SSIM (Gaussian window) of each row against
    the originals. Its caption gives ``k``, the first TCNN row's mean SSIM and its mean
    squared distance to the class-average images: the distance that shrinks as truncation
    leaves the inverse model little beyond the predicted class. About 0.5 s per frame on one
    core for 8 digits.

    Parameters
    ----------
    lab : leakutils.inversion.Lab
        The trained attack, with inverse models for every ``k`` of ``ks``.
    images : torch.Tensor
        The attack-test images ``(N, 1, 32, 32)`` in [0, 1].
    ks : sequence of int, optional
        2..40 distinct ``k`` in slider order (default: every ``k`` the lab has inverse models
        for, largest first).
    digits : int
        Images inverted per frame, ``1..N``.
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are one dict per ``k``: ``"k"``; ``"images"``, row name to images
        ``(digits, 1, 32, 32)`` (``"original"``, ``"class average"``, ``"X~"``,
        ``"TCNN(<combination>)"``); ``"ssim"``, row name to mean SSIM in [-1, 1] against the
        originals; ``"distance"``, row name to mean squared distance (per pixel, images in
        [0, 1]) to the class-average images.

    Raises
    ------
    TypeError
        ``lab`` not a Lab, ``images`` not a tensor, ``ks`` not a sequence, a non-integer
        ``k`` or ``digits``.
    ValueError
        An empty batch, fewer than 2 or more than 40 ``k`` or a repeated one, a ``k`` without
        inverse models, no combination trained for every ``k``, ``digits`` or dpi out of
        range.
    """
    _check_lab_images(lab, images)
    trained = _trained_ks(lab)
    if not trained:
        raise ValueError("the lab has no inverse model: train one and register it with lab.add(...) first")

    def check_k(k):
        k = panel.check_int("k", k, 1)
        if k not in trained:
            raise ValueError(f"no inverse model was trained for k = {k}; the lab has models for k in {trained}")
        return k

    ks = check_values("ks", trained if ks is None else ks, check_k)
    from ..inversion import COMBINATIONS

    combos = tuple(c for c in COMBINATIONS if all((k, c) in lab.inverses for k in ks))
    if not combos:
        raise ValueError(f"no combination has inverse models for every k in {ks}: train one for each k")
    digits = panel.check_int("digits", digits, 1, images.shape[0])
    first = f"TCNN({combos[0]})"

    def caption(frame: dict) -> str:
        return (f"{first}: SSIM {frame['ssim'][first]:.3f}, distance to the class average "
                f"{frame['distance'][first]:.3f} (mean of {digits} digits)")

    return static_panel(lambda k: _twin_frame(lab, images[:digits], k, combos), _show_twin_frame, "k", ks,
                        caption=caption, label="top k", dpi=dpi)
