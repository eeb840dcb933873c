"""One pass of the attack, duplicates merged, the batch size from the 1/M factor, and peeling.

Once a sample ``x`` is rebuilt, the attacker computes its own gradient (it has the weights):
an ExAN column ``j`` of ``x`` in the update is ``(n / M) h_j(x) g(x)`` with ``n`` the number of
times ``x`` occurs in the batch, so the least-squares factor ``c = n / M`` of the computed
columns against the shared ones reads the batch size. Readings of different samples must be
integer multiples of one ``1 / M`` (:func:`read_batch_size`). Subtracting the rebuilt
samples' gradients, ``M G - sum_r n_r grad(x_r)`` is the summed gradient of the samples still
unknown, where units shared only with rebuilt samples have become exclusive: the attack runs
again on that remainder (:func:`peel`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .analysis import Analysis, Options, b1, b3, explained
from .inputs import bias_ratio_inputs, loss_check, noise_psnr_of, pseudo_inverse, smoothing_fit
from .model import Grads, Net, head_forward, head_gradients, loss_vectors
from .noise import CHECK_Z, M_INTEGER_RTOL, RTOL_PER_EPS, SAME_INPUT_Z

#: Largest batch size a reading is taken for (a reading of 1/M below 1e-6 is a column of noise).
MAX_BATCH_SIZE = 10 ** 6


def analyse(net: Net, model, g: Grads, opts: Options, sigma: list) -> Analysis:
    """B.1-B.3 and the inputs of the fully connected part from one set of (remainder) gradients."""
    H = len(net.hidden)
    T = H - 1
    samples, sets, live, n_paper, groups = b1(net, g, opts, sigma)
    complete, coeff = explained(g, samples, opts.rtol, sigma[H])
    # loss-vector scale sigma_m = ||g^m|| / M from the ExAN bias gradients of the last hidden layer
    for m, s in enumerate(samples):
        if g.Gb[T] is not None and s.label >= 0:
            v = g.W[H].T[sets[m][T]] @ s.loss_direction  # (W_o^T d)_j
            ok = v.abs() > opts.rtol * v.abs().max()
            if ok.any():
                s.scale = float((g.Gb[T][sets[m][T]][ok] @ v[ok]) / (v[ok] @ v[ok]))
    patterns = b3(net, g, opts, samples, sets, complete, coeff, sigma)
    Mf = len(samples)
    X = torch.zeros(Mf, math.prod(net.feature_shape), dtype=torch.float64)
    rebuilt = torch.zeros(Mf, dtype=torch.bool)
    bias_ratio_inputs(g, samples, sets, X, rebuilt, opts.rtol, sigma[0])
    pinv_info = None
    todo = [m for m in range(Mf) if not rebuilt[m] and samples[m].label >= 0]
    if todo:
        ctx = {"samples": samples, "patterns": patterns, "complete": complete, "X": X, "rebuilt": rebuilt}
        pinv_info = pseudo_inverse(net, model, g, ctx, todo, opts, sigma[0])
    smoothing = smoothing_fit(g, samples, X, rebuilt, sets, sigma[H])
    loss_check(g, samples, X, rebuilt, opts.rtol, sigma[H])
    return Analysis(samples=samples, X=X, rebuilt=rebuilt, sets=sets, live=live,
                    grouped=int(sum(grp.numel() for grp in groups)), n_paper=n_paper, complete=complete,
                    pinv_info=pinv_info, smoothing=smoothing)


def merge_duplicates(net: Net, g: Grads, an: Analysis, sigma0: float, eps: float) -> int:
    """Merge, in place, reports whose rebuilt inputs agree (one sample split by noise). Returns merges."""
    idx = [m for m in range(len(an.samples)) if an.rebuilt[m] and an.samples[m].status == "recovered"]
    drop: set = set()
    merges = 0
    for a_, m in enumerate(idx):
        if m in drop:
            continue
        for k in idx[a_ + 1:]:
            if k in drop or an.samples[k].label != an.samples[m].label:
                continue
            if same_input(an.X[m], an.X[k], an.samples[m], an.samples[k], sigma0, eps):
                _absorb(net, g, an, m, k, sigma0)
                drop.add(k)
                merges += 1
    if drop:
        keep = [m for m in range(len(an.samples)) if m not in drop]
        an.samples = [an.samples[m] for m in keep]
        an.sets = [an.sets[m] for m in keep]
        an.X, an.rebuilt = an.X[keep], an.rebuilt[keep]
    return merges


def same_input(x1, x2, s1, s2, sigma0, eps) -> bool:
    """Within ``SAME_INPUT_Z`` noise standard deviations (from both estimates) or rounding."""
    d = float(torch.linalg.vector_norm(x1 - x2))
    scale = float(torch.linalg.vector_norm(x1))
    allowed = RTOL_PER_EPS * eps * scale  # rounding, as the grouping tolerance
    errs = []
    for s in (s1, s2):
        if s.noise_psnr is not None:
            errs.append(10 ** (-s.noise_psnr / 20.0) * math.sqrt(x1.numel()))
    if errs:
        allowed += SAME_INPUT_Z * math.sqrt(sum(e * e for e in errs))
    return d <= allowed


def _absorb(net: Net, g: Grads, an: Analysis, m: int, k: int, sigma0: float) -> None:
    """Sample k is sample m: unite their ExAN sets and rebuild m from all of them.

    The noise PSNR is computed again from the united rows (:func:`.inputs.noise_psnr_of`): their
    scatter around the rank-one fit, not only the two estimates combined, so a merge of reports
    that differ by more than noise does not claim more than the rows show.
    """
    sm, sk = an.samples[m], an.samples[k]
    for h, units in an.sets[k].items():
        both = torch.unique(torch.cat([an.sets[m].get(h, units[:0]), units]))
        an.sets[m][h] = both
        sm.exans[net.hidden[h][0]] = both
    if sm.method == "bias ratio" and 0 in an.sets[m] and g.Gb[0] is not None:
        grp = an.sets[m][0]
        w = g.Gb[0][grp]
        an.X[m] = (w @ g.G[0][grp]) / (w @ w)
        if sm.noise_psnr is not None and sk.noise_psnr is not None:
            sm.noise_psnr = noise_psnr_of(g.G[0][grp], w, an.X[m], sigma0)
    sm.found_by = sm.found_by + " (+ merged)"


def readings(net: Net, g: Grads, samples, sets, X, idx: list) -> dict:
    """``n / M`` per rebuilt sample ``m`` in ``idx``, from its top ExAN columns, with its noise-free norm."""
    T = len(net.hidden) - 1
    out = {}
    use = [m for m in idx if T in sets[m]]
    if not use:
        return out
    h, z = head_forward(g, X[use])
    lv = loss_vectors(z, torch.tensor([samples[m].label for m in use]))
    for k, m in enumerate(use):
        E = sets[m][T]
        pred = h[k, E][None, :] * lv[k][:, None]  # (K, |E|)
        den = float((pred * pred).sum())
        if den > 0:
            out[m] = (float((pred * g.out[:, E]).sum()) / den, math.sqrt(den))
    return out


@dataclass
class BatchReading:
    """The batch size read from the samples' 1/M factors."""

    M: int | None
    multiplicity: dict  # sample index -> n
    consistent: list  # sample indices whose reading is an integer multiple of 1/M
    common: float | None  # the readings' common value when they agree (1/M for multiplicity 1)


def read_batch_size(read: dict, sigma_out: float, K: int) -> BatchReading:
    """The smallest ``M`` that makes the most readings integer multiples ``n / M`` (ties: smallest M).

    A reading ``c`` with noise-free column norm ``p`` is uncertain by ``sigma sqrt(K) / p`` (the
    noise of its columns over their size); its ``c M`` must lie within ``M_INTEGER_RTOL`` (plus
    that uncertainty times 8) of a positive integer.
    """
    if not read:
        return BatchReading(None, {}, [], None)
    cand = sorted({round(1.0 / c) for c, _ in read.values() if c > 0 and 1.0 / c < MAX_BATCH_SIZE} - {0})
    best = None
    for M in cand:
        ok, mult = [], {}
        for m, (c, p) in read.items():
            n = round(c * M)
            unc = CHECK_Z * sigma_out * math.sqrt(K * 1.0) / p * M if p > 0 else float("inf")
            if n >= 1 and abs(c * M - n) <= M_INTEGER_RTOL * max(1.0, c * M) + unc:
                ok.append(m)
                mult[m] = n
        if best is None or len(ok) > len(best.consistent):
            best = BatchReading(M, mult, ok, None)
    cs = [c for c, _ in read.values()]
    agree = max(cs) - min(cs) <= M_INTEGER_RTOL * max(abs(v) for v in cs) if cs else False
    if best is None:
        return BatchReading(None, {}, [], cs[0] if agree else None)
    best.common = cs[0] if agree else None
    return best


def remainder(g: Grads, M: int, feats: torch.Tensor, labels: list, mult: list) -> Grads:
    """``M G - sum_r n_r grad(x_r)``: the summed gradient of the samples not yet rebuilt."""
    S, Sb = head_gradients(g, feats, torch.tensor(labels, dtype=torch.int64),
                           torch.tensor(mult, dtype=torch.float64))
    Gr = [M * G - s for G, s in zip(g.G, S)]
    Gbr = [None if G is None else M * G - s for G, s in zip(g.Gb, Sb)]
    return g.with_gradients(Gr, Gbr)
