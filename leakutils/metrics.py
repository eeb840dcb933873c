"""Scores of a reconstruction against the truth: MSE, PSNR, SSIM, label accuracy.

PSNR uses the data range of the images, ``R = 1`` for images in ``[0, 1]``:
``PSNR = 10 log10(R^2 / MSE)``. (The public R-CONV code uses ``R = 255`` on images in
``[0, 1]``, which adds ``20 log10 255 = 48.13`` dB to every score.) SSIM is scikit-image's
``structural_similarity`` (Wang et al. 2004). Reconstructions of a batch come in arbitrary
order, so :func:`compare` first matches them to the true samples (Hungarian assignment on
pairwise MSE, ``scipy.optimize.linear_sum_assignment``), as the breaching framework does.

Input rules (so that a score is never silently meaningless):

- both arguments floating point, or both integer: an integer image (uint8, 0..255) against
  a float one is refused; convert with ``.double()`` and pass the matching ``data_range``;
- for images (3 or more axes), :func:`psnr`, :func:`ssim` and :func:`compare` refuse a TRUE
  image (the second argument) with values outside ``[0, data_range]`` by more than
  :data:`RANGE_MARGIN` of the range (images in 0..255 with the default ``data_range=1``);
  reconstructions are not clipped and may exceed the range freely;
- SSIM needs ``(B, C, H, W)``; a 3-D batch is ambiguous (``(N, H, W)`` or ``(C, H, W)``) and
  is refused by :func:`compare` and :func:`ssim` with the reshaping to use.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

from .core import Reconstruction
from .validate import check_number

__all__ = ["mse", "psnr", "ssim", "label_accuracy", "match", "compare", "Scores", "RANGE_MARGIN"]

#: Fraction of ``data_range`` by which true images may leave ``[0, data_range]`` (round-off of
#: a normalisation) before PSNR/SSIM refuse them as being in another range.
RANGE_MARGIN = 0.01


def _pair(a, b, what: str = "images") -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{what} must be torch tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}; "
                         f"match a batch first with metrics.match or use metrics.compare")
    if a.ndim < 2:
        raise ValueError(f"{what} need a batch axis: shape (B, C, H, W) or (B, D), got {tuple(a.shape)}")
    if a.numel() == 0:
        raise ValueError(f"{what} are empty (shape {tuple(a.shape)}); there is nothing to score")
    if a.is_floating_point() != b.is_floating_point():
        raise TypeError(f"{what} mix an integer dtype and a floating one ({a.dtype} and {b.dtype}): "
                        f"convert both to floating point, e.g. x.double(), and give the data_range "
                        f"of the images (255 for 0..255, 1.0 for [0, 1])")
    if a.is_complex() or b.is_complex():
        raise TypeError(f"{what} must be real, got {a.dtype} and {b.dtype}")
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(f"{what} contain NaN or infinite values; a reconstruction should never do so")
    return a, b


def _check_range(data_range: float) -> float:
    """``data_range``: a finite real number > 0 (1.0 for images in [0, 1], 255 for 0..255)."""
    return check_number("data_range", data_range, 0.0, lo_open=True)


def _check_true_range(true: torch.Tensor, r: float) -> None:
    """Refuse true images (3+ axes) outside [0, r] by more than RANGE_MARGIN * r."""
    if true.ndim < 3:
        return
    low, high = float(true.min()), float(true.max())
    if low < -RANGE_MARGIN * r or high > (1 + RANGE_MARGIN) * r:
        hint = " (images in 0..255: pass data_range=255)" if r < 255 and 1.5 < high <= 255 else ""
        raise ValueError(f"the true images take values in [{low:.4g}, {high:.4g}], outside [0, {r:g}] = "
                         f"[0, data_range]{hint}; give the data_range of the true images")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample.

    Parameters
    ----------
    a, b : torch.Tensor
        Same shape ``(B, ...)``.

    Returns
    -------
    torch.Tensor
        Shape ``(B,)``, float64, in squared data units (>= 0).

    Raises
    ------
    TypeError, ValueError
        Non-tensors, different shapes, no batch axis, NaN or infinite values.
    """
    a, b = _pair(a, b)
    return ((a - b) ** 2).flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample, ``10 log10(data_range^2 / MSE)`` in dB.

    Parameters
    ----------
    a, b : torch.Tensor
        Same shape ``(B, ...)``: ``a`` the reconstruction (any values), ``b`` the truth (for
        images, within ``[0, data_range]`` up to :data:`RANGE_MARGIN`). Both floating point
        or both integer.
    data_range : float
        Peak-to-peak range of the images: 1.0 for ``[0, 1]`` (the course's convention),
        255 only for images stored as 0..255.

    Returns
    -------
    torch.Tensor
        Shape ``(B,)``, float64, in dB; ``inf`` where the two agree exactly. In float64,
        round-off alone gives about 300 dB; 100 dB (MSE 1e-10) is the course's "exact".

    Raises
    ------
    TypeError, ValueError
        As :func:`mse`; an integer image against a float one; a non-positive ``data_range``;
        true images outside ``[0, data_range]``.
    """
    r = _check_range(data_range)
    _, truth = _pair(a, b)
    _check_true_range(truth, r)
    m = mse(a, b)
    out = torch.full_like(m, float("inf"))
    nz = m > 0
    out[nz] = 10.0 * torch.log10(r * r / m[nz])
    return out


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, *, gaussian: bool = False) -> torch.Tensor:
    """Structural similarity per image (scikit-image's ``structural_similarity``).

    Parameters
    ----------
    a, b : torch.Tensor
        Same shape ``(B, C, H, W)``; ``a`` is compared with ``b`` channel by channel.
    data_range : float
        As in :func:`psnr`.
    gaussian : bool
        Use Wang et al.'s 11x11 Gaussian window (sigma 1.5, population covariances), the
        definition of the SSIM loss most model-inversion papers train and report with
        (Chapter 5), instead of scikit-image's default uniform 7x7 window.

    Returns
    -------
    torch.Tensor
        Shape ``(B,)``, float64, in ``[-1, 1]`` (1: identical). Uniform 7x7 window
        (scikit-image's default), shrunk to the largest odd size that fits small images;
        or the Gaussian window (images of at least 11x11 pixels).

    Raises
    ------
    TypeError, ValueError
        As :func:`psnr`; images not of shape ``(B, C, H, W)`` (a 3-D batch: add the channel
        axis with ``x.unsqueeze(1)``) or smaller than 3x3.
    """
    r = _check_range(data_range)
    a, b = _pair(a, b)
    if a.ndim != 4:
        raise ValueError(f"ssim needs images of shape (B, C, H, W), got {tuple(a.shape)}; for a batch "
                         f"of grey images (B, H, W) add the channel axis with x.unsqueeze(1)")
    _check_true_range(b, r)
    side = min(a.shape[2], a.shape[3])
    if side < 3:
        raise ValueError(f"ssim needs images of at least 3x3 pixels, got {a.shape[2]}x{a.shape[3]}")
    if gaussian:
        if side < 11:
            raise ValueError(f"the Gaussian SSIM window needs images of at least 11x11 pixels, got {side}")
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    else:
        kw = dict(win_size=min(7, side if side % 2 else side - 1))
    out = [structural_similarity(x.numpy(), y.numpy(), data_range=r, channel_axis=0, **kw)
           for x, y in zip(a, b)]
    return torch.tensor(out, dtype=torch.float64)


def label_accuracy(predicted, true) -> float:
    """Fraction of the true labels that were recovered, counted as multisets.

    For one sample this is 1.0 or 0.0. For a batch, labels are order-free: the score is
    ``|multiset(predicted) & multiset(true)| / len(true)``, so recovering the classes
    ``{3, 7}`` of a batch labelled ``[3, 3, 7]`` scores 2/3.

    Parameters
    ----------
    predicted, true : sequence of int or 1-D tensor

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    ValueError
        ``true`` is empty or either is not one-dimensional.
    """
    p, t = torch.as_tensor(predicted), torch.as_tensor(true)
    p, t = (v.reshape(1) if v.ndim == 0 else v for v in (p, t))
    if p.ndim != 1 or t.ndim != 1:
        raise ValueError("labels must be one-dimensional sequences of class indices")
    if t.numel() == 0:
        raise ValueError("the true labels are empty; there is nothing to score")
    common = Counter(p.tolist()) & Counter(t.tolist())
    return sum(common.values()) / t.numel()


def match(reconstructed: torch.Tensor, true: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Pair reconstructed samples with true ones, minimising the total MSE (Hungarian).

    Parameters
    ----------
    reconstructed : torch.Tensor
        Shape ``(R, ...)``.
    true : torch.Tensor
        Shape ``(T, ...)`` with the same sample shape; ``R`` and ``T`` may differ, then
        ``min(R, T)`` pairs are formed.

    Returns
    -------
    (rec_idx, true_idx) : tuple of int arrays
        ``reconstructed[rec_idx[k]]`` is paired with ``true[true_idx[k]]``, ``true_idx`` sorted.

    Raises
    ------
    TypeError, ValueError
        Non-tensors, empty inputs, or different sample shapes.
    """
    if not isinstance(reconstructed, torch.Tensor) or not isinstance(true, torch.Tensor):
        raise TypeError("reconstructed and true must be torch tensors with a batch axis")
    if reconstructed.ndim < 2 or true.ndim < 2 or reconstructed.shape[1:] != true.shape[1:]:
        raise ValueError(f"samples must have the same shape, got {tuple(reconstructed.shape)} and {tuple(true.shape)}")
    if reconstructed.shape[0] == 0 or true.shape[0] == 0:
        raise ValueError("cannot match an empty batch")
    r = reconstructed.detach().to(torch.float64).flatten(1)
    t = true.detach().to(torch.float64).flatten(1)
    cost = torch.cdist(r, t, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy() / r.shape[1]
    rec_idx, true_idx = linear_sum_assignment(cost.T)[::-1]
    order = np.argsort(true_idx)
    return rec_idx[order], true_idx[order]


def _median(values: torch.Tensor) -> float:
    """Median as the mean of the two middle values (an even count), exact for ``inf`` PSNRs."""
    v = torch.sort(values.flatten()).values
    n = v.numel()
    if n == 0:
        return float("nan")
    lo, hi = float(v[(n - 1) // 2]), float(v[n // 2])
    return lo if lo == hi else (lo + hi) / 2


@dataclass
class Scores:
    """Per-sample scores of matched pairs, with their means.

    Attributes
    ----------
    mse, psnr, ssim : torch.Tensor
        Shape ``(P,)`` float64, one per matched pair (PSNR in dB). ``ssim`` is empty for
        feature vectors ``(B, D)``, which are not images.
    rec_idx, true_idx : numpy.ndarray
        The pairing from :func:`match`.
    label_accuracy : float or None
        See :func:`label_accuracy`; ``None`` when no labels were compared.
    """

    mse: torch.Tensor
    psnr: torch.Tensor
    ssim: torch.Tensor
    rec_idx: np.ndarray
    true_idx: np.ndarray
    label_accuracy: float | None = None

    @property
    def mean_psnr(self) -> float:
        """Mean PSNR in dB over the pairs (``inf`` if any pair is exact to the last bit)."""
        return float(self.psnr.mean())

    @property
    def min_psnr(self) -> float:
        """Worst pair's PSNR in dB (NaN when nothing was matched)."""
        return float(self.psnr.min()) if self.psnr.numel() else float("nan")

    @property
    def median_psnr(self) -> float:
        """Median PSNR in dB over the pairs (robust to a few exact or failed pairs)."""
        return _median(self.psnr)

    @property
    def median_mse(self) -> float:
        """Median MSE over the pairs."""
        return _median(self.mse)

    @property
    def median_ssim(self) -> float:
        """Median SSIM over the pairs (NaN for feature vectors, where SSIM is not computed)."""
        return _median(self.ssim) if self.ssim.numel() else float("nan")

    @property
    def mean_ssim(self) -> float:
        """Mean SSIM over the pairs (NaN when SSIM was not computed)."""
        return float(self.ssim.mean()) if self.ssim.numel() else float("nan")

    @property
    def mean_mse(self) -> float:
        """Mean MSE over the pairs."""
        return float(self.mse.mean())

    def as_dict(self) -> dict:
        """Means as plain floats, for tables and JSON."""
        return {"mse": self.mean_mse, "psnr_db": self.mean_psnr, "ssim": self.mean_ssim,
                "median_mse": self.median_mse, "median_psnr_db": self.median_psnr,
                "median_ssim": self.median_ssim,
                "label_accuracy": self.label_accuracy, "pairs": int(len(self.true_idx))}

    def __str__(self) -> str:
        if self.psnr.numel() == 0:
            return "nothing matched: the reconstruction is empty"
        s = f"MSE {self.mean_mse:.3g}, PSNR {self.mean_psnr:.1f} dB"
        if self.ssim.numel():
            s += f", SSIM {self.mean_ssim:.3f}"
        if self.label_accuracy is not None:
            s += f", label accuracy {self.label_accuracy:.0%}"
        return s


def compare(reconstruction, images: torch.Tensor, labels=None, *, data_range: float = 1.0,
            match_order: bool = True) -> Scores:
    """Score a reconstruction against the true batch.

    Parameters
    ----------
    reconstruction : Reconstruction or torch.Tensor
        What an attack returned, or its images ``(R, C, H, W)``.
    images : torch.Tensor
        The true inputs ``(T, C, H, W)``, same sample shape.
    labels : sequence of int or tensor, optional
        The true labels; scored against ``reconstruction.labels`` with :func:`label_accuracy`.
    data_range : float
        Passed to :func:`psnr` and :func:`ssim` (1.0 for images in ``[0, 1]``).
    match_order : bool
        Pair samples with :func:`match` first (default). With False, pairs are taken in order
        and ``R`` must equal ``T``.

    Returns
    -------
    Scores
        With no pair at all when the reconstruction is empty (an attack that returned
        nothing): empty per-pair tensors, means and medians NaN, ``pairs`` 0, and a label
        accuracy of 0 when labels were given and none recovered.

    Raises
    ------
    TypeError, ValueError
        Wrong types, shapes that cannot be paired, an empty true batch, NaN values, labels
        requested from a non-empty reconstruction without labels.
    """
    if isinstance(reconstruction, Reconstruction):
        rec, rec_labels = reconstruction.images, reconstruction.labels
    elif isinstance(reconstruction, torch.Tensor):
        rec, rec_labels = reconstruction, None
    else:
        raise TypeError(f"reconstruction must be a Reconstruction or a tensor, got {type(reconstruction).__name__}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor, got {type(images).__name__}")
    if rec.shape[1:] != images.shape[1:]:
        raise ValueError(f"reconstructed samples {tuple(rec.shape[1:])} and true samples "
                         f"{tuple(images.shape[1:])} differ in shape")
    if images.ndim == 3:
        raise ValueError(f"images of shape {tuple(images.shape)} are ambiguous: give a batch of "
                         f"images (B, C, H, W) (grey images (B, H, W): x.unsqueeze(1)) or feature "
                         f"vectors (B, D)")
    if images.shape[0] == 0:
        raise ValueError("the true batch is empty; there is nothing to score")
    if rec.shape[0] == 0:
        # the attack returned nothing (it refused every sample): no pair, scored as such
        none = torch.empty(0, dtype=torch.float64)
        acc = None
        if labels is not None and rec_labels is not None and rec_labels.numel():
            acc = label_accuracy(rec_labels, labels)
        elif labels is not None:
            acc = 0.0
        return Scores(mse=none, psnr=none.clone(), ssim=none.clone(), rec_idx=np.zeros(0, dtype=np.int64),
                      true_idx=np.zeros(0, dtype=np.int64), label_accuracy=acc)
    if match_order:
        rec_idx, true_idx = match(rec, images)
    else:
        if rec.shape[0] != images.shape[0]:
            raise ValueError("without matching, the reconstruction and the truth need the same batch size")
        rec_idx = true_idx = np.arange(rec.shape[0])
    a, b = rec[rec_idx], images[true_idx]
    m, p = mse(a, b), psnr(a, b, data_range)
    s = ssim(a, b, data_range) if a.ndim == 4 else torch.empty(0, dtype=torch.float64)
    acc = None
    if labels is not None:
        if rec_labels is None:
            raise ValueError("true labels were given but the reconstruction recovered none")
        acc = label_accuracy(rec_labels, labels)
    return Scores(mse=m, psnr=p, ssim=s, rec_idx=rec_idx, true_idx=true_idx, label_accuracy=acc)
