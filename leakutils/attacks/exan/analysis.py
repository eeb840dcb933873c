"""B.1-B.3 of Pan et al. 2022 on one set of gradients (the update, or a remainder after peeling).

1. **B.1** Units of the last hidden layer whose output-gradient columns *and* weight-gradient
   rows are parallel form one sample's ExAN group (:func:`.grouping.group_exans`); with
   ``verify``, single ExANs are added when their bias-ratio input, run forward, reproduces
   their own column (:func:`verified_top`).
2. **B.2** The label is the one negative entry of the loss vector (:func:`label_of`).
3. **B.3** From the top down, a sample's ExAN rows give its activation pattern one layer
   lower; units active for it and for no other found sample are its ExANs there.

The inputs of the fully connected part then come from :mod:`.inputs`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .grouping import cliques, group_exans, parallel_rows, unit_rows
from .model import Grads, Net, loss_vectors
from .noise import CHECK_Z
from .records import Sample

#: The found loss directions explain an output column when its least-squares residual is below
#: this many grouping tolerances of the column's norm (plus the noise): rounding of a projection
#: onto at most K - 2 directions.
EXPLAIN_PER_RTOL = 10.0


@dataclass
class Options:
    """The attack's options, validated by :func:`leakutils.attacks.exan.reconstruct`."""

    rtol: float
    min_exans: int
    verify: bool
    scale: str
    dense_limit: int


@dataclass
class Analysis:
    """One pass of B.1-B.3 and input recovery.

    ``X`` holds the rebuilt inputs of the fully connected part ``(M_found, D)`` (zeros where
    not rebuilt); ``sets[m]`` maps hidden-layer index to sample ``m``'s ExAN units;
    ``complete`` says whether the found loss vectors explain every live output column.
    """

    samples: list
    X: torch.Tensor
    rebuilt: torch.Tensor
    sets: list
    live: torch.Tensor
    grouped: int
    n_paper: int
    complete: bool | None
    pinv_info: dict | None
    smoothing: list


def label_of(direction: torch.Tensor, tol: float = 0.0) -> tuple[int | None, str]:
    """B.2: the class of the one entry below ``-tol`` of a loss-vector direction, or (None, why)."""
    neg = torch.nonzero(direction < -tol).flatten()
    if neg.numel() != 1:
        return None, (f"its loss-vector direction has {neg.numel()} negative entries; a loss vector "
                      f"softmax(z) - onehot(y) has exactly one")
    return int(neg[0]), ""


def bias_ratios(G_h, Gb_h, units, rtol):
    """Per unit, its row of ``G_h`` over its bias gradient; units with a near-zero bias gradient dropped."""
    if units.numel() == 0:
        return units, G_h[:0]
    w = Gb_h[units]
    ok = w.abs() > rtol * float(Gb_h.abs().max())
    units = units[ok]
    return units, G_h[units] / w[ok, None]


def verified_top(groups, live, g: Grads, rtol):
    """Add samples found from single ExANs of the last hidden layer, checked by a forward pass.

    A unit's bias ratio is a candidate input of its layer; it is kept when, run forward, it
    activates the unit and reproduces the unit's output-gradient column in direction and size.
    """
    T = len(g.W) - 2
    grouped = torch.zeros_like(live)
    for grp in groups:
        grouped[grp] = True
    units, cand = bias_ratios(g.G[T], g.Gb[T], torch.nonzero(live & ~grouped).flatten(), rtol)
    if units.numel() == 0:
        return groups
    col = unit_rows(g.G[T + 1][:, units].T)[0]  # (n, K)
    neg = col < 0
    # one sample's column has one negative entry (its label): only those are run forward
    one = neg.sum(1) == 1
    units, cand, col, neg = units[one], cand[one], col[one], neg[one]
    if units.numel() == 0:
        return groups
    h = torch.relu(cand @ g.W[T].T + g.b[T])  # (n, N_T): the layer's output for each candidate input
    z = h @ g.W[T + 1].T + (g.b[T + 1] if g.b[T + 1] is not None else 0.0)
    label = torch.argmax(neg.to(torch.int64), 1)
    lv = loss_vectors(z, label)
    rows = torch.arange(units.numel())
    close = torch.linalg.vector_norm(unit_rows(lv)[0] - col, dim=1) <= rtol
    # and in size: column / bias gradient = h_j g / delta_j, with delta_j = (W_o^T g)_j (the 1/M cancels)
    delta = (lv @ g.W[T + 1])[rows, units]
    lhs = g.G[T + 1][:, units].T / g.Gb[T][units, None]
    safe = delta.abs() > 0
    rhs = h[rows, units][:, None] * lv / torch.where(safe, delta, torch.ones_like(delta))[:, None]
    sized = safe & (torch.linalg.vector_norm(lhs - rhs, dim=1) <= rtol * torch.linalg.vector_norm(lhs, dim=1))
    ok = close & sized & (h[rows, units] > 0)
    units, cand = units[ok], cand[ok]
    if units.numel() == 0:
        return groups
    return _join(groups, units, cand, g, rtol)


def _join(groups, units, cand, g: Grads, rtol):
    """One sample per distinct candidate input; join an existing group whose own input agrees."""
    T = len(g.W) - 2
    base = []
    for grp in groups:
        u, c = bias_ratios(g.G[T], g.Gb[T], grp, rtol)
        base.append(c.mean(0) if u.numel() else None)
    new = []
    for members in cliques(unit_rows(cand)[0], rtol, signed=True, min_size=1):
        x = cand[members].mean(0)
        for k, b in enumerate(base):
            if b is not None and float(torch.linalg.vector_norm(x - b)) <= rtol * float(torch.linalg.vector_norm(b)):
                groups[k] = torch.cat([groups[k], units[members]])
                break
        else:
            new.append(units[members])
    new.sort(key=lambda g_: (-g_.numel(), int(g_[0])))
    return groups + new


def forward_check(cand, G_h, Gb_h, W_h, b_h, target, rtol):
    """Units of ``cand`` whose bias-ratio input reproduces ``target`` (the layer's known output)."""
    units, inputs = bias_ratios(G_h, Gb_h, cand, rtol)
    if units.numel() == 0:
        return units
    out = torch.relu(inputs @ W_h.T + b_h)
    err = torch.linalg.vector_norm(out - target, dim=1)
    return units[err <= rtol * float(torch.linalg.vector_norm(target))]


def b1(net: Net, g: Grads, opts: Options, sigma: list) -> tuple[list, list, torch.Tensor, int, list]:
    """B.1 and B.2: samples (with loss directions and labels) from the last hidden layer."""
    H = len(net.hidden)
    T = H - 1
    groups, live = group_exans(g.out, g.rows(T), rtol=opts.rtol, min_size=opts.min_exans,
                               column_noise=sigma[H], row_noise=sigma[T])
    n_paper = len(groups)
    if opts.verify and g.biased:
        groups = verified_top(groups, live, g, opts.rtol)
    samples, sets = [], []
    K = g.out.shape[0]
    for k, grp in enumerate(groups):
        # the columns' sum: each is a positive multiple of the loss vector, so larger ones (less noisy
        # relative to their size) weigh more
        d = g.out[:, grp].sum(1)
        d = d / torch.linalg.vector_norm(d)
        # entries of the direction within the noise of zero are zero (a probability ~0), not negative
        noise = sigma[H] * K ** 0.5 / float(torch.linalg.vector_norm(g.out[:, grp]))
        label, why = label_of(d, noise)
        s = Sample(label=-1 if label is None else label, loss_direction=d,
                   exans={net.hidden[T][0]: grp}, found_by="B.1" if k < n_paper else "forward check")
        s.reason = why
        samples.append(s)
        sets.append({T: grp})
    return samples, sets, live, n_paper, groups


def explained(g: Grads, samples: list, rtol: float, sigma_out: float):
    """Whether the found loss directions explain every output column (None if ``M_found >= K - 1``).

    Returns ``(complete, coeff)``, ``coeff`` ``(M_found, N)`` the least-squares coefficients.
    """
    K, N = g.out.shape
    Mf = len(samples)
    if Mf == 0:
        return False, None
    if Mf >= K - 1:
        return None, None
    D = torch.stack([s.loss_direction for s in samples], 1)
    coeff = torch.linalg.lstsq(D, g.out).solution
    res = torch.linalg.vector_norm(g.out - D @ coeff, dim=0)
    tol = EXPLAIN_PER_RTOL * rtol * torch.linalg.vector_norm(g.out, dim=0) + sigma_out * (K ** 0.5 + CHECK_Z)
    return bool((res <= tol).all()), coeff


def b3(net: Net, g: Grads, opts: Options, samples, sets, complete, coeff, sigma) -> list:
    """B.3: activation patterns and ExANs layer by layer downwards. Returns per-sample patterns."""
    H = len(net.hidden)
    T = H - 1
    Mf = len(samples)
    patterns: list = [dict() for _ in samples]  # hidden layer h -> bool mask of m's active units
    acts_: list = [dict() for _ in samples]  # hidden layer h -> m's activation vector (with biases)
    if coeff is not None and complete:
        tol = opts.rtol * torch.linalg.vector_norm(g.out, dim=0) + sigma[H] * (g.out.shape[0] ** 0.5)
        for m in range(Mf):
            patterns[m][T] = coeff[m] > tol
    alive = [s.label >= 0 for s in samples]
    for h in range(T, 0, -1):  # layer h's ExAN rows give layer h-1's pattern (and activations)
        for m in range(Mf):
            if not alive[m] or h not in sets[m]:
                continue
            rows = g.G[h][sets[m][h]]
            patterns[m][h - 1] = (rows.abs() > sigma[h] * CHECK_Z).any(0)
            if g.Gb[h] is not None:
                w = g.Gb[h][sets[m][h]]
                if float(w @ w) > 0:
                    acts_[m][h - 1] = (w @ rows) / (w @ w)
        known = [m for m in range(Mf) if alive[m] and (h - 1) in patterns[m]]
        all_known = complete is True and len(known) == Mf
        R = g.rows(h - 1)
        for m in known:
            chosen = _layer_exans(m, h, known, patterns, acts_, g, opts, all_known, R, sigma)
            if chosen.numel():
                sets[m][h - 1] = chosen
                samples[m].exans[net.hidden[h - 1][0]] = chosen
    for m, s in enumerate(samples):
        for h in range(T, 0, -1):
            if alive[m] and h - 1 not in sets[m] and h in sets[m] and not s.reason:
                s.reason = f"no ExAN found in layer {net.hidden[h - 1][0]!r}"
    return patterns


def _layer_exans(m, h, known, patterns, acts_, g: Grads, opts: Options, all_known, R, sigma):
    """Sample m's ExANs in hidden layer h - 1 (forward-checked singles, or parallel exclusive rows)."""
    cand = torch.nonzero(patterns[m][h - 1]).flatten()
    if opts.verify and g.biased and (h - 1) in acts_[m]:
        return forward_check(cand, g.G[h - 1], g.Gb[h - 1], g.W[h - 1], g.b[h - 1], acts_[m][h - 1], opts.rtol)
    others = torch.zeros_like(patterns[m][h - 1])
    for m2 in known:
        if m2 != m:
            others |= patterns[m2][h - 1]
    cand = torch.nonzero(patterns[m][h - 1] & ~others).flatten()
    chosen = parallel_rows(R, cand, opts.rtol, 1 if all_known else opts.min_exans, sigma[h - 1])
    if all_known and chosen.numel() != cand.numel():
        return cand[:0]  # exclusive by construction: rows that disagree mean a wrong pattern
    return chosen
