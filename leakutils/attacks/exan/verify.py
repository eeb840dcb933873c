"""The whole-update check: a sample is marked recovered only if the update agrees with it.

The attacker has the weights, so it computes the gradient each rebuilt sample would produce.
With ``M`` read from the 1/M factor and multiplicities ``n_r``, the remainder
``R = M G - sum_r n_r grad(x_r)`` must be the summed gradient of the samples *not* recovered.
Tested, each against the estimated noise (``noise (sqrt(d) + CHECK_Z)`` for ``d`` entries,
scaled by ``M``, plus ``CHECK_REL_PER_EPS eps`` of rounding relative to what was subtracted):

1. **alone**: on each sample's own ExAN units (its output-gradient columns and its rows in
   every layer where ExANs were found), no other sample contributes; ``M G`` minus that
   sample's own ``n_r grad(x_r)`` must vanish there. A blend, a wrong scale or brightness, a
   wrong ``M`` or multiplicity leaves a remainder of the size of the signal.
2. **jointly**: with every sample that passed (1) subtracted, each one's ExAN units must
   still vanish: a second report of the same input, or a sample that activates units the
   update shows as another's alone, breaks it; the report with the larger residual goes.
3. **the batch**: ``sum n_r <= M``; the remainder's output-bias gradient is a sum of
   ``U = M - sum n_r`` loss vectors, so each entry lies in ``[-U, U]`` and its negative entries
   add up to at most ``U``; when ``U = 0`` the whole remainder must vanish in every layer.
   Only then is the batch complete.
   When this fails, no sample passes: the samples and the remainder together do not explain
   the update, so the batch-size reading or one of them is wrong.
"""
from __future__ import annotations

import math

import torch

from .model import Grads, Net, Terms, perturbed, terms
from .noise import CHECK_REL_PER_EPS, CHECK_Z, PROPAGATION_DRAWS, PROPAGATION_SEED, PROPAGATION_Z


def _allowance(d: int, sigma: float, M: int, ref: float, eps: float) -> float:
    """Noise allowance of a remainder block of ``d`` entries, ``ref`` the norm of what it came from."""
    return M * sigma * (math.sqrt(d) + CHECK_Z) + CHECK_REL_PER_EPS * eps * ref


class _Samples:
    """The candidates' gradient factors, and those of their perturbed inputs, for block sums."""

    def __init__(self, g: Grads, X, samples, cand: list, mult: dict):
        self.g, self.cand = g, cand
        self.pos = {m: k for k, m in enumerate(cand)}
        self.n = torch.tensor([float(mult[m]) for m in cand], dtype=torch.float64)
        labels = torch.tensor([samples[m].label for m in cand], dtype=torch.int64)
        self.T = terms(g, X[cand], labels)
        xs, who = [], []
        for m in cand:
            for xp in perturbed(X[m], samples[m].input_error, PROPAGATION_DRAWS, PROPAGATION_SEED):
                xs.append(xp)
                who.append(self.pos[m])
        self.who = torch.tensor(who, dtype=torch.int64)
        self.Tp = terms(g, torch.stack(xs), labels[self.who]) if xs else None

    def weights(self, members: list) -> torch.Tensor:
        w = torch.zeros(len(self.cand), dtype=torch.float64)
        for m in members:
            w[self.pos[m]] = self.n[self.pos[m]]
        return w

    def blocks(self, sets_m: dict):
        """(layer, units, is_column) of one sample's ExAN blocks."""
        H = len(self.g.W) - 1
        for h, units in sets_m.items():
            if units.numel():
                yield h, units, False
                if h == H - 1:
                    yield H, units, True

    def shared(self, h: int, units, column: bool) -> torch.Tensor:
        return self.g.out[:, units] if column else self.g.rows(h, units)

    def summed(self, T: Terms, w: torch.Tensor, h: int, units, column: bool) -> torch.Tensor:
        """``sum_r w_r`` of the samples' gradient block (rows of ``units`` in layer h, or output columns)."""
        if column:
            return (T.delta[-1] * w[:, None]).T @ T.inp[-1][:, units]
        a = T.inp[h]
        if self.g.Gb[h] is not None:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
        return (T.delta[h][:, units] * w[:, None]).T @ a

    def spread(self, m: int, h: int, units, column: bool) -> float:
        """Largest change of sample m's own block when its input is perturbed by its estimated error."""
        if self.Tp is None:
            return 0.0
        rows = torch.nonzero(self.who == self.pos[m]).flatten()
        if rows.numel() == 0:
            return 0.0
        k = self.pos[m]
        base = self.summed(self.T, self.weights([m]), h, units, column)
        worst = 0.0
        for r in rows.tolist():
            w = torch.zeros(self.who.numel(), dtype=torch.float64)
            w[r] = self.n[k]
            worst = max(worst, float(torch.linalg.vector_norm(self.summed(self.Tp, w, h, units, column) - base)))
        return worst


def _residual(S: _Samples, m: int, members: list, M: int, sigma: list, eps: float, spreads: dict) -> float:
    """Largest remainder over sample m's ExAN blocks with ``members`` subtracted, in allowance units."""
    w = S.weights(members)
    worst = 0.0
    for k, (h, units, column) in enumerate(S.blocks(S.sets[m])):
        shared = S.shared(h, units, column)
        rem = M * shared - S.summed(S.T, w, h, units, column)
        allowed = _allowance(rem.numel(), sigma[h], M, M * float(torch.linalg.vector_norm(shared)), eps) \
            + PROPAGATION_Z * spreads[m][k]
        worst = max(worst, float(torch.linalg.vector_norm(rem)) / allowed if allowed > 0 else math.inf)
    return worst


def check(net: Net, g: Grads, M: int, X: torch.Tensor, samples: list, sets: list, cand: list,
          mult: dict, sigma: list, eps: float, base: dict | None = None) -> tuple[list, dict]:
    """Run the whole-update check on the samples ``cand`` (indices into ``samples``).

    Returns ``(passed, report)``: the indices that pass, and the batch-level report
    (``unexplained``, ``output_bias``, ``total``, ``consistent``); sets ``residual`` and, for
    those that fail, ``status`` and ``reason`` on each sample. ``base[m]`` lists the samples
    that ``m`` was peeled against: its units are exclusive only once they are subtracted too.
    """
    base = base or {}
    S = _Samples(g, X, samples, cand, mult)
    S.sets = sets
    spreads = {m: [S.spread(m, h, u, c) for h, u, c in S.blocks(sets[m])] for m in cand}
    alone = {}
    for m in cand:
        alone[m] = _residual(S, m, [m] + [b for b in base.get(m, []) if b in S.pos], M, sigma, eps, spreads)
        samples[m].residual = alone[m]
    passed = [m for m in cand if alone[m] <= 1.0]
    for m in cand:
        if m not in passed:
            _fail(samples[m], f"the update is not explained on its own ExANs (remainder {alone[m]:.1f} x the "
                              f"noise allowance): a blend, a wrong scale or a wrong batch-size reading")
    while passed:  # jointly: drop the worst offender until every kept sample explains its own units
        joint = {m: _residual(S, m, passed, M, sigma, eps, spreads) for m in passed}
        bad = [m for m in passed if joint[m] > 1.0]
        if not bad:
            break
        worst = max(bad, key=lambda m: (alone[m], m))
        passed.remove(worst)
        samples[worst].residual = joint[worst]
        _fail(samples[worst], "with the other recovered samples subtracted, its ExANs are no longer explained "
                              "(a second report of one input, or a sample that activates another's ExANs)")
    while passed and sum(mult[m] for m in passed) > M:
        worst = max(passed, key=lambda m: (alone[m], m))
        passed.remove(worst)
        _fail(samples[worst], f"the recovered multiplicities exceed the batch size {M}")
    report = _batch(S, M, passed, sigma, eps)
    if passed and not report["consistent"]:
        # each sample explains its own ExANs, yet together they and the remainder do not explain
        # the update: the batch-size reading or one of them is wrong, and nothing says which
        for m in passed:
            _fail(samples[m], f"each passes on its own ExANs, but with the batch size read as {M} the remainder "
                              f"is not the gradient of {report['unexplained']} unrecovered samples "
                              f"({report['total']:.1f} x the noise allowance): the batch-size reading or a "
                              f"sample is wrong")
        passed = []
    return passed, report


def _fail(s, why: str) -> None:
    s.status, s.reason = "not recoverable", why


def _full_blocks(S: _Samples, T: Terms, w: torch.Tensor) -> list:
    """Every layer's (weight, bias) gradient summed over the samples with weights ``w``."""
    out = []
    for h in range(len(S.g.W)):
        d = T.delta[h] * w[:, None]
        out.append(d.T @ T.inp[h])
        out.append(d.sum(0) if S.g.Gb[h] is not None else None)
    return out


def _change_norms(S: _Samples, m: int) -> list:
    """Per block, the largest Frobenius norm of sample m's own gradient change over its perturbations,
    from the factors (no cancellation: ``d'a'^T - d a^T = (d' - d) a'^T + d (a' - a)^T``)."""
    k = S.pos[m]
    out = [0.0] * (2 * len(S.g.W))
    if S.Tp is None:
        return out
    for r in torch.nonzero(S.who == k).flatten().tolist():
        for h in range(len(S.g.W)):
            d, a = S.T.delta[h][k], S.T.inp[h][k]
            dd, da = S.Tp.delta[h][r] - d, S.Tp.inp[h][r] - a
            ap = a + da
            sq = float((dd @ dd) * (ap @ ap) + (d @ d) * (da @ da) + 2 * (dd @ d) * (ap @ da))
            out[2 * h] = max(out[2 * h], float(S.n[k]) * math.sqrt(max(sq, 0.0)))
            out[2 * h + 1] = max(out[2 * h + 1], float(S.n[k]) * float(torch.linalg.vector_norm(dd)))
    return out


def _batch(S: _Samples, M: int, passed: list, sigma: list, eps: float) -> dict:
    """Check 3: the remainder is the gradient of ``U`` unrecovered samples (all zero when ``U = 0``).

    The allowance of each block adds, in quadrature over the recovered samples, the change of
    that block when each sample's input is perturbed by its own estimated error.
    """
    g = S.g
    U = M - int(sum(float(S.n[S.pos[m]]) for m in passed))
    sub = _full_blocks(S, S.T, S.weights(passed))
    shared = [blk for h in range(len(g.W)) for blk in (g.G[h], g.Gb[h])]
    prop = [0.0] * len(shared)
    for m in passed:
        prop = [p + c * c for p, c in zip(prop, _change_norms(S, m))]
    H = len(g.W) - 1
    report = {"unexplained": U, "output_bias": None, "total": None, "consistent": True}
    total = 0.0
    for k, (G, s_) in enumerate(zip(shared, sub)):
        if G is None:
            continue
        rem = M * G - s_
        allowed = _allowance(rem.numel(), sigma[k // 2], M, M * float(torch.linalg.vector_norm(G)), eps) \
            + PROPAGATION_Z * math.sqrt(prop[k])
        ratio = float(torch.linalg.vector_norm(rem)) / allowed
        total = max(total, ratio)
        if k == 2 * H + 1:  # the output bias: a sum of U loss vectors
            report["output_bias"] = ratio
            tol = allowed / math.sqrt(rem.numel())
            neg = float(torch.clamp(-rem, min=0).sum())
            if float(rem.abs().max()) > U + tol or neg > U + rem.numel() * tol:
                report["consistent"] = False
    report["total"] = total
    if U == 0 and total > 1.0:
        report["consistent"] = False
    return report
