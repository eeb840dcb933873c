"""Checks of Chapter 9's exercises (the malicious server)."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ._base import array, boolean, close, exercise, integer, integers, keyed, mnist, number, seeded_mlp, wrong

__all__ = ["IMPRINT_X", "IMPRINT_S", "IMPRINT_C", "IMPRINT_T", "BATCH", "TARGET", "RHOS"]

#: Exercise 9.1: the batch (one sample per row), its statistics, loss derivatives ...
IMPRINT_X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
IMPRINT_S = np.array([0.15, 0.42, 0.43])
IMPRINT_C = np.array([-0.5, 0.2, -0.1])
#: ... and the imprint layer's thresholds.
IMPRINT_T = np.array([0.0, 0.3, 0.45])

#: Exercise 9.2: the batch size and the fraction of it the server wants back.
BATCH, TARGET = 64, 0.9

#: Exercise 9.3: the amounts by which the rows are turned.
RHOS = (1e-3, 1e-1, 1.0)


def _imprint_gradients() -> tuple[np.ndarray, np.ndarray]:
    """The imprint layer's bias gradients (3,) and weight gradients (3, 2), averaged over M."""
    active = (IMPRINT_S[:, None] > IMPRINT_T[None, :]).astype(np.float64)
    m = len(IMPRINT_S)
    grad_b = (IMPRINT_C[:, None] * active).sum(0) / m
    grad_W = np.einsum("i,ij,id->jd", IMPRINT_C, active, IMPRINT_X) / m
    return grad_b, grad_W


@exercise("ch9-by-hand", "9.1", answers=("grad_b", "grad_W", "alone", "bin0", "bin1"))
def by_hand(grad_b, grad_W, alone, bin0, bin1) -> None:
    """Exercise 9.1: an imprint layer's gradients by hand, and what its bins give.

    Parameters
    ----------
    grad_b : array-like of 3 floats
        The bias gradients of units 0, 1, 2 (averaged over the batch of 3).
    grad_W : array-like, (3, 2)
        Their weight gradients, one row per unit.
    alone : set of int
        The bins (0, 1, 2) that hold exactly one sample; bin ``j`` holds the samples with
        ``t_j < s <= t_{j+1}`` (the last bin: ``s > t_2``).
    bin0, bin1 : array-like of 2 floats
        What bins 0 and 1 give: the difference of consecutive units' weight gradients
        divided by that of their bias gradients.

    Tolerance: 1e-6 absolute.
    """
    want_b, want_W = _imprint_gradients()
    if not close(array("grad_b", grad_b, (3,), what="3 bias gradients"), want_b, atol=1e-6):
        raise wrong("grad_b", "unit j's bias gradient is (1/M) times the sum of c_i over the "
                    "samples it is active for (s_i > t_j)")
    if not close(array("grad_W", grad_W, (3, 2), what="3 rows of 2"), want_W, atol=1e-6):
        raise wrong("grad_W", "unit j's weight gradient is (1/M) times the sum of c_i x_i over "
                    "the same samples")
    edges = np.append(IMPRINT_T, np.inf)
    counts = [int(((IMPRINT_S > edges[j]) & (IMPRINT_S <= edges[j + 1])).sum()) for j in range(3)]
    if integers("alone", alone, what="bin numbers 0..2") != {j for j in range(3) if counts[j] == 1}:
        raise wrong("alone", "place each sample's statistic s between the thresholds: bin j "
                    "runs from t_j to t_{j+1}")
    for j, (name, value) in enumerate((("bin0", bin0), ("bin1", bin1))):
        want = (want_W[j] - want_W[j + 1]) / (want_b[j] - want_b[j + 1])
        if not close(array(name, value, (2,), what="2 pixels"), want, atol=1e-6):
            raise wrong(name, f"(grad_W[{j}] - grad_W[{j + 1}]) / (grad_b[{j}] - grad_b[{j + 1}])")


@exercise("ch9-choose-bins", "9.2", answers=("k90", "fraction_k90", "fraction_half"))
def choose_bins(k90, fraction_k90, fraction_half) -> None:
    """Exercise 9.2: the fewest bins for 90% of a batch of 64, and the measured fractions.

    Parameters
    ----------
    k90 : int
        The smallest ``k`` with ``(1 - 1/k)^63 >= 0.9``.
    fraction_k90, fraction_half : float
        The mean fraction of 20 random batches of 64 private digits rebuilt exactly with
        ``k90`` bins and with ``k90 // 2`` bins.

    Tolerance: ``k90`` exact; each fraction within 0.05 of the closed form
    ``(1 - 1/k)^63``, and fewer bins giving less.
    """
    want = math.ceil(1 / (1 - TARGET ** (1 / (BATCH - 1))))
    got = integer("k90", k90)
    if got != want:
        raise wrong("k90", "solve (1 - 1/k)^63 >= 0.9 for k in closed form and round up")
    for name, value, bins in (("fraction_k90", fraction_k90, want),
                              ("fraction_half", fraction_half, want // 2)):
        closed = (1 - 1 / bins) ** (BATCH - 1)
        if abs(number(name, value) - closed) > 0.05:
            raise wrong(name, "the mean over 20 batches of (digits marked recovered) / 64, with "
                        "run_batch(imprint.malicious_model(net256, public, bins), 64, trial)")
    if not number("fraction_half", fraction_half) < number("fraction_k90", fraction_k90):
        raise wrong("fraction_half", "with half the bins more digits share a bin")


@lru_cache(maxsize=None)
def _evade_truth() -> tuple[dict, float]:
    """Whether inspect_model flags each turned sparse block; the honest layer's largest cosine."""
    from .. import defences
    from ..attacks import imprint

    digits = mnist().images
    net = seeded_mlp(256)
    flagged = {}
    for rho in RHOS:
        turned = imprint.malicious_model(net, digits[3000:], 256, sparse=True)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            w, sp = turned[0].imprint.weight, turned[0].spread.weight
            w += rho * w.norm(dim=1, keepdim=True) * torch.randn(w.shape, generator=g, dtype=w.dtype) / 28
            sp += rho * sp * torch.randn(sp.shape, generator=g, dtype=sp.dtype)
        flagged[rho] = bool(defences.inspect_model(turned, digits[:600]).flagged)
    rows = torch.nn.functional.normalize(net.fc1.weight.detach(), dim=1)
    honest = float((rows @ rows.T - 2 * torch.eye(len(rows), dtype=rows.dtype)).max())
    return flagged, honest


@exercise("ch9-evade", "9.3", answers=("flagged", "honest_cos", "marked_exact"))
def evade(flagged, honest_cos, marked_exact) -> None:
    """Exercise 9.3: turned imprint rows against the client's check.

    Parameters
    ----------
    flagged : dict
        Keys ``1e-3, 1e-1, 1.0`` (:data:`RHOS`; a sequence in that order is accepted): whether
        ``defences.inspect_model(turned, client_digits)`` flags the turned sparse block.
    honest_cos : float
        The largest cosine between two rows of the honest first layer (``net256``).
    marked_exact : bool
        Whether the digits the imprint attack marks on the turned blocks are exact.

    Tolerance: ``honest_cos`` 1e-9 absolute.
    """
    want_flags, want_cos = _evade_truth()
    if isinstance(flagged, dict):
        flagged = {k: float(boolean(f"flagged[{k!r}]", v)) for k, v in flagged.items()}
    got = keyed("flagged", flagged, RHOS, what="True/False per rho")
    for rho in RHOS:
        if bool(got[rho]) != want_flags[rho]:
            raise wrong(f"flagged[{rho!r}]", "run defences.inspect_model(turned, client_digits) "
                        "and read its .flagged")
    if not close(number("honest_cos", honest_cos), want_cos, atol=1e-9):
        raise wrong("honest_cos", "normalise net256.fc1's rows, take all pairwise cosines and "
                    "the largest off the diagonal")
    if not boolean("marked_exact", marked_exact):
        raise wrong("marked_exact", "score the marked digits against x64 with metrics.compare: "
                    "what is the lowest PSNR?")
