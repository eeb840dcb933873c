"""Checks of Chapter 8's exercises (auditing a Flower deployment)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ._base import array, boolean, close, exercise, flags, integer, mnist, number, seeded_mlp, wrong

__all__ = ["DELTAS", "X_HAND", "LR", "WIDTH", "DP_SIGMAS", "SETTINGS"]

#: Exercise 8.1: the two local steps' output gradients of the first layer, and the example.
DELTAS = np.array([[0.3, -0.1], [0.2, 0.05]])
X_HAND = np.array([0.5, 0.8])

#: The chapter's learning rate and the width of its 784-WIDTH-10 network (seed 0).
LR, WIDTH = 0.1, 256

#: Exercise 8.3: the noise multipliers to try.
DP_SIGMAS = (0.001, 0.003, 0.01, 0.03, 0.1)

#: Exercise 8.2: the keys of ``image_changes``, the two mistakes.
SETTINGS = ("wrong_lr", "swapped")


@exercise("ch8-rank-one-by-hand", "8.1", answers=("hand_gb", "hand_GW", "hand_rows", "rank_after_10"))
def rank_one_by_hand(hand_gb, hand_GW, hand_rows, rank_after_10) -> None:
    """Exercise 8.1: one example after two local steps, and the rank after ten.

    Parameters
    ----------
    hand_gb : array-like of 2 floats
        The first layer's bias pseudo-gradient.
    hand_GW : array-like, (2, 2)
        Its weight pseudo-gradient for ``x = (0.5, 0.8)``.
    hand_rows : array-like, (2, 2)
        Row ``m``: row ``m`` of ``hand_GW`` divided by ``hand_gb[m]``.
    rank_after_10 : int
        The numerical rank (singular values above 1e-12 times the largest) of
        ``[G_W | g_b]`` for the chapter's digit after 10 local steps at its learning rate.

    Tolerance: 1e-6 absolute; the rank exact.
    """
    want_b = DELTAS.sum(0)
    if not close(array("hand_gb", hand_gb, (2,), what="2 numbers"), want_b, atol=1e-6):
        raise wrong("hand_gb", "the server sees the two steps' output gradients added up")
    want_W = np.outer(want_b, X_HAND)
    if not close(array("hand_GW", hand_GW, (2, 2), what="a 2x2 matrix"), want_W, atol=1e-6):
        raise wrong("hand_GW", "each step adds its delta times x^T: factor out x")
    if not close(array("hand_rows", hand_rows, (2, 2), what="2 rows of 2"), want_W / want_b[:, None],
                 atol=1e-6):
        raise wrong("hand_rows", "divide row m of G_W by the m-th bias entry")
    if integer("rank_after_10", rank_after_10) != _rank_after(10):
        raise wrong("rank_after_10", "take defences.fedavg_update(net, x, y, lr=LR, "
                    "local_steps=10), stack [fc1.weight | fc1.bias] and count the singular "
                    "values above 1e-12 times the largest")


@lru_cache(maxsize=None)
def _rank_after(steps: int) -> int:
    """Numerical rank of the first layer's pseudo-gradient for mnist[0] after ``steps`` steps."""
    from .. import defences

    x, y = mnist()[0]
    update = defences.fedavg_update(seeded_mlp(WIDTH), x, y, lr=LR, local_steps=steps)
    s = torch.linalg.svdvals(torch.cat([update["fc1.weight"], update["fc1.bias"][:, None]], 1))
    return int((s > 1e-12 * s[0]).sum())


@exercise("ch8-wrong-settings", "8.2",
          answers=("batch_wrong_lr", "image_changes", "labels_right_swapped"))
def wrong_settings(batch_wrong_lr, image_changes, labels_right_swapped) -> None:
    """Exercise 8.2: what a wrong learning rate and swapped weights do (batch of 8, one step).

    Parameters
    ----------
    batch_wrong_lr : int
        The batch size ExAN reads when the server divides by 1.0 instead of 0.1.
    image_changes : dict
        Keys ``"wrong_lr"``, ``"swapped"`` (:data:`SETTINGS`): whether that mistake changes
        the bias ratio's image.
    labels_right_swapped : bool
        Whether the recovered labels are still right with sent and returned swapped.
    """
    batch, wrong_lr = 8, 1.0
    # the pseudo-gradient is (sent - returned) / lr: dividing by 1.0 instead of LR scales it
    # by LR / 1.0, and ExAN reads M from its 1/M factor
    scale = LR / wrong_lr
    if integer("batch_wrong_lr", batch_wrong_lr) != round(batch / scale):
        raise wrong("batch_wrong_lr", "a wrong learning rate multiplies the whole pseudo-"
                    "gradient by one factor; ExAN reads M from the 1/M factor of the gradient")
    got = flags("image_changes", image_changes, SETTINGS)
    # the bias ratio of a one-sample layer, its pseudo-gradient scaled by each mistake's factor
    rng = np.random.default_rng(0)
    x, delta = rng.random(4), rng.standard_normal(3)
    for key, factor in (("wrong_lr", scale), ("swapped", -1.0)):
        ratio = factor * np.outer(delta, x) / (factor * delta)[:, None]
        changes = not np.allclose(ratio, x)
        if got[key] != changes:
            raise wrong(f"image_changes[{key!r}]", "what does multiplying every gradient by one "
                        "number do to the ratio of a weight gradient and a bias gradient?")
    if boolean("labels_right_swapped", labels_right_swapped):
        raise wrong("labels_right_swapped", "the label is the sign pattern of the output "
                    "layer's bias gradient: what does swapping sent and returned do to a sign?")


@lru_cache(maxsize=None)
def _dp_audit() -> tuple[dict, dict]:
    """The rank-one fit's PSNR (dB, clamped to [0, 1]) and Opacus' epsilon per multiplier."""
    from .. import defences, metrics
    from ..attacks import bias_ratio

    x, y = mnist()[0]
    net = seeded_mlp(WIDTH)
    sent = {n: w.detach().clone() for n, w in net.state_dict().items()}
    psnrs, eps = {}, {}
    for sigma in DP_SIGMAS:
        noisy, report = defences.dp_sgd_update(net, x, y, noise_multiplier=sigma, max_grad_norm=1.0)
        back = {n: w - LR * noisy[n] for n, w in sent.items()}
        u = defences.update_from_weights(sent, back, lr=LR, batch_size=1, input_shape=(1, 28, 28))
        fit = bias_ratio.reconstruct(net, u, noise=report.noise_std)
        psnrs[sigma] = float(metrics.psnr(fit.images.clamp(0, 1), x)[0])
        eps[sigma] = float(report.epsilon)
    return psnrs, eps


@exercise("ch8-dp-audit", "8.3", answers=("holds", "eps_at_holds"))
def dp_audit(holds, eps_at_holds) -> None:
    """Exercise 8.3: the smallest noise multiplier at which the fit stays below 20 dB.

    Parameters
    ----------
    holds : float
        The smallest of 0.001, 0.003, 0.01, 0.03, 0.1 at which the server's rank-one fit of a
        one-example DP-SGD client (``defences.dp_sgd_update`` with its default seed,
        ``max_grad_norm=1``) stays below 20 dB.
    eps_at_holds : float
        The epsilon Opacus reports for that step.

    Tolerance: ``holds`` exact; epsilon 1% relative.
    """
    psnrs, eps = _dp_audit()
    want = min(s for s in DP_SIGMAS if psnrs[s] < 20)
    got = number("holds", holds)
    if not any(close(got, s, atol=1e-12) for s in DP_SIGMAS):
        raise wrong("holds", f"one of the multipliers to try: {list(DP_SIGMAS)}")
    if not close(got, want, atol=1e-12):
        direction = "a smaller one already holds" if got > want else "the fit is still above 20 dB there"
        raise wrong("holds", f"{direction}: clamp the fit to [0, 1] and score it with "
                    "metrics.psnr against the digit")
    if not close(number("eps_at_holds", eps_at_holds), eps[want], atol=0, rtol=1e-2):
        raise wrong("eps_at_holds", "the epsilon of the DPReport that dp_sgd_update returns "
                    "for that multiplier")
