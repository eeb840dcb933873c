"""Checks of Chapter 4's exercises (exclusively activated neurons)."""
from __future__ import annotations

import numpy as np

from ._base import close, exercise, integer, integers, mnist, number, psnr, samples, seeded_mlp, wrong

__all__ = ["BY_HAND_G", "PEEL_BATCH", "PEEL_WIDTH", "ESTIMATE_WIDTH", "ESTIMATE_BATCH"]

#: Exercise 4.1: the output weight gradient (3 classes x 4 units; columns are units 1..4).
BY_HAND_G = np.array([[-0.4, -0.2, 0.3, 0.0], [0.1, 0.05, -0.5, 0.0], [0.3, 0.15, 0.2, 0.0]])

#: Exercise 4.2: the batch (the first digits of MNIST) and the hidden width.
PEEL_BATCH, PEEL_WIDTH = 24, 256

#: Exercise 4.3: the width and batch size of the defender's question.
ESTIMATE_WIDTH, ESTIMATE_BATCH = 1024, 16


def _by_hand_truth() -> dict:
    """Dead units, the parallel group (1-based units), its label and the 'smallest ratio' pick."""
    G = BY_HAND_G
    norms = np.linalg.norm(G, axis=0)
    dead = {j + 1 for j in range(G.shape[1]) if norms[j] == 0}
    live = [j for j in range(G.shape[1]) if norms[j] > 0]
    unit = G[:, live] / norms[live]
    cos = unit.T @ unit
    groups = []
    for a in range(len(live)):
        members = {live[b] + 1 for b in range(len(live)) if cos[a, b] > 1 - 1e-12}
        if len(members) >= 2 and members not in groups:
            groups.append(members)
    (group,) = groups
    first = min(group) - 1
    label = int(np.nonzero(G[:, first] < 0)[0][0])
    ratios = G[:, first] / G[0, first]
    return dict(dead=dead, parallel=group, n_identified=len(groups), label=label,
                smallest_ratio_class=int(np.argmin(ratios)))


@exercise("ch4-by-hand", "4.1",
          answers=("dead", "parallel", "n_identified", "sample_label", "smallest_ratio_class"))
def by_hand(dead, parallel, n_identified, sample_label, smallest_ratio_class) -> None:
    """Exercise 4.1: dead units, parallel columns, and the label of the one sure sample.

    Units are numbered 1 to 4 as in the exercise's text, classes 0 to 2.

    Parameters
    ----------
    dead : set of int
        The units dead for the whole batch.
    parallel : set of int
        The units whose columns are parallel (one group of two ExANs).
    n_identified : int
        How many samples are identified for sure (groups of at least two ExANs).
    sample_label : int
        The label of that sample.
    smallest_ratio_class : int
        The class the rule "the smallest of the ratios G[c, j] / G[0, j]" picks for it.

    Tolerance: exact.
    """
    truth = _by_hand_truth()
    hint_units = " (units are numbered 1 to 4, as in the text)"
    got = integers("dead", dead, what="unit numbers")
    if got != truth["dead"]:
        raise wrong("dead", "a unit dead for the whole batch has a zero column" + hint_units)
    got = integers("parallel", parallel, what="unit numbers")
    if got != truth["parallel"]:
        raise wrong("parallel", "two columns are parallel when one is a multiple of the other"
                    + hint_units)
    if integer("n_identified", n_identified) != truth["n_identified"]:
        raise wrong("n_identified", "count only the groups of at least two parallel columns: "
                    "a single column may be shared by several samples")
    if integer("sample_label", sample_label) != truth["label"]:
        raise wrong("sample_label", "the loss vector softmax - onehot is negative at the true class "
                    "only (classes 0 to 2)")
    if integer("smallest_ratio_class", smallest_ratio_class) != truth["smallest_ratio_class"]:
        raise wrong("smallest_ratio_class", "divide the group's column by its entry for class 0 "
                    "and take the class with the smallest ratio (classes 0 to 2)")


def _peel_truth() -> tuple[np.ndarray, np.ndarray]:
    """The batch (24, 784) and, per digit, its number of ExANs in the 256-unit layer."""
    from ..attacks import exan

    xb = mnist().images[:PEEL_BATCH]
    net = seeded_mlp(PEEL_WIDTH)
    counts = exan.count_exans(net, xb)["act1"]["exans"]
    return xb.reshape(PEEL_BATCH, -1).numpy(), np.asarray(counts)


@exercise("ch4-peel", "4.2", answers=("batch_size_read", "new_images"))
def peel(batch_size_read, new_images) -> None:
    """Exercise 4.2: the batch size read off an ExAN column, and the samples peeling adds.

    Parameters
    ----------
    batch_size_read : int
        ``M`` read off one rebuilt sample's ExAN column (rounded).
    new_images : array-like, (K, 1, 28, 28) or (K, 784), K >= 1
        The samples found in the remainder after subtracting the one-pass samples (only
        those that passed the check).

    Every new image must be a digit of the batch at 100 dB or more, and at least one of
    them a digit with no ExAN of its own in the batch (the one-pass attack cannot reach
    those).
    """
    xb, counts = _peel_truth()
    if integer("batch_size_read", batch_size_read) != PEEL_BATCH:
        raise wrong("batch_size_read", "the ExAN column is (1/M) h_j g: solve for M with the "
                    "rebuilt sample's own h_j and loss vector g, then round")
    imgs = samples("new_images", new_images, 784, what="new samples, each 1x28x28")
    if len(imgs) == 0:
        raise wrong("new_images", "no new sample: peel the one-pass samples off and look at "
                    "the remainder")
    matched = []
    for i, img in enumerate(imgs):
        scores = [psnr(img, x) for x in xb]
        best = int(np.argmax(scores))
        if scores[best] < 100:
            raise wrong("new_images", f"new image {i} is no digit of the batch (best "
                        f"{scores[best]:.0f} dB): keep only candidates whose own gradient "
                        "reproduces the remainder on their units")
        matched.append(best)
    if not any(counts[j] == 0 for j in matched):
        raise wrong("new_images", "every one of these has an ExAN of its own in the batch: the "
                    "peel should reach a digit that has none")


@exercise("ch4-estimate", "4.3", answers=("p_threshold", "at_half"))
def estimate(p_threshold, at_half) -> None:
    """Exercise 4.3 (b): the activation rate above which fewer than one ExAN is expected.

    Parameters
    ----------
    p_threshold : float
        The ``p`` above ``1/16`` at which ``1024 p (1 - p)^15`` falls to 1 (beyond it, fewer
        than one ExAN per sample in expectation).
    at_half : float
        ``1024 p (1 - p)^15`` at ``p = 0.5``.

    Tolerance: 0.005 absolute for ``p_threshold``, 1% relative for ``at_half``.
    """
    from scipy.optimize import brentq

    n, m = ESTIMATE_WIDTH, ESTIMATE_BATCH

    def expected(p: float) -> float:
        return n * p * (1 - p) ** (m - 1)

    want = brentq(lambda p: expected(p) - 1, 1 / m, 0.99)
    if not close(number("p_threshold", p_threshold), want, atol=5e-3):
        raise wrong("p_threshold", "solve 1024 p (1 - p)^15 = 1 for p above 1/16 (where the "
                    "estimate is largest), e.g. with scipy.optimize.brentq")
    if not close(number("at_half", at_half), expected(0.5), atol=0, rtol=1e-2):
        raise wrong("at_half", "evaluate 1024 p (1 - p)^15 at p = 1/2")
