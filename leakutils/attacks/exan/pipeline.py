"""The steps of :func:`leakutils.attacks.exan.reconstruct`: validate, search (passes and peeling), check."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ...core import Update
from .._common import check_model_update, check_rtol
from . import noise as nz
from .analysis import Analysis, Options
from .inputs import SCALES
from .model import Grads, Net, gradients, parse
from .peeling import same_input, analyse, merge_duplicates, read_batch_size, readings, remainder
from .verify import check


def validate(model, update: Update, *, rtol, min_exans, batch_size, scale, max_rounds, dense_limit, verify, peel):
    """Check the arguments; parse the model; read the gradients. Returns ``(net, grads, dtype)``."""
    check_model_update(model, update)
    if rtol is not None:
        check_rtol(rtol)
    if not isinstance(min_exans, int) or isinstance(min_exans, bool) or min_exans < 1:
        raise ValueError(f"min_exans must be a positive integer (2 in the paper), got {min_exans!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None (unknown), got {batch_size!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 0:
        raise ValueError(f"max_rounds must be a non-negative integer, got {max_rounds!r}")
    if not isinstance(dense_limit, int) or isinstance(dense_limit, bool) or dense_limit < 1:
        raise ValueError(f"dense_limit must be a positive integer, got {dense_limit!r}")
    for name, v in (("verify", verify), ("peel", peel)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False, got {v!r}")
    net = parse(model, tuple(update.input_shape))
    g = gradients(net, update)
    _check_loss(g)
    dtype = update.gradients[f"{net.out_name}.weight"].dtype
    return net, g, dtype


def _check_loss(g: Grads) -> None:
    K = g.out.shape[0]
    if K < 2:
        raise ValueError("the output layer must have at least 2 logits for softmax cross-entropy")
    if K == 2:
        raise ValueError(
            "the output layer has 2 logits: every loss vector of a 2-class softmax is a multiple of (1, -1), so "
            "all ExAN columns are parallel whatever the sample and B.1 cannot tell samples apart (grouping and "
            "the forward check prove nothing). Give the network a head with 3 or more logits (e.g. "
            "num_classes=10 for a 2-class data set: unused classes cost nothing), or attack one sample at a "
            "time with leakutils.attacks.bias_ratio.")
    scale_ref = float(g.out.abs().max())
    if scale_ref == 0.0:
        raise ValueError("the output layer's gradient is zero (a loss of exactly zero, or every last-layer unit "
                         "dead): there is nothing to attack")
    # every loss vector softmax - onehot sums to zero, so does every column (checked in total, so that
    # noise added by a defence does not trip it)
    col_sums = float(g.out.sum().abs() / g.out.abs().sum())
    if col_sums > nz.CROSS_ENTROPY_SUM_RTOL and not nz.sums_are_noise(g.out):
        raise ValueError(
            f"the columns of the output layer's gradient do not sum to zero (relative {col_sums:.1e}): the "
            f"loss is not softmax cross-entropy on the logits, which the ExAN attack assumes")


@dataclass
class Found:
    """The samples found so far (every pass), with what each needs for the final check."""

    samples: list = field(default_factory=list)
    sets: list = field(default_factory=list)  # per sample: hidden-layer index -> ExAN units (in its pass)
    X: list = field(default_factory=list)  # per sample: input of the fully connected part, float64 (D,)
    rebuilt: list = field(default_factory=list)
    mult: dict = field(default_factory=dict)  # sample index -> multiplicity (consistent readings only)
    base: dict = field(default_factory=dict)  # sample index -> samples it was peeled against

    def add(self, an: Analysis, k: int, base: list | None = None) -> int:
        self.samples.append(an.samples[k])
        self.sets.append(an.sets[k])
        self.X.append(an.X[k])
        self.rebuilt.append(bool(an.rebuilt[k]) and an.samples[k].status == "recovered")
        m = len(self.samples) - 1
        self.base[m] = list(base or [])
        return m

    def stack(self, D: int) -> torch.Tensor:
        return torch.stack(self.X) if self.X else torch.zeros(0, D, dtype=torch.float64)


@dataclass
class Search:
    """What :func:`search` found: samples, ``M``, and counts for the diagnostics."""

    found: Found
    M: int | None
    first: Analysis
    rounds: int
    merged: int


def _refuse_smoothing(an: Analysis, K: int) -> None:
    """Raise when the rebuilt samples' loss vectors read label smoothing, significantly.

    ``an.smoothing`` holds ``(eps_s, se)`` per rebuilt sample (:func:`.inputs.smoothing_fit`).
    Refused when the inverse-variance mean ``e`` exceeds ``SMOOTHING_MIN`` and ``SMOOTHING_Z``
    of its standard error, and at least half of the samples agree with it (within 10% of ``e``
    or ``SMOOTHING_Z`` of their own error): noise alone never reads as smoothing.
    """
    fits = [(e, se) for e, se in an.smoothing if math.isfinite(e) and math.isfinite(se)]
    if not fits:
        return
    exact = [e for e, se in fits if se <= 0]
    if exact:  # no noise and a perfect fit: the readings are exact
        med, se_med = float(torch.tensor(exact).median()), 0.0
    else:
        w = [1.0 / (se * se) for _, se in fits]
        med = sum(wi * e for wi, (e, _) in zip(w, fits)) / sum(w)
        se_med = 1.0 / math.sqrt(sum(w))
    agree = sum(abs(e - med) <= max(0.1 * abs(med), nz.SMOOTHING_Z * se) for e, se in fits)
    # with 3 logits the fit has no residual (2 coefficients, 2 free entries of a sum-zero vector),
    # so a blend or an inexact input fits some e exactly: only samples agreeing with each other count
    least = 2 if K == 3 else 1
    if med > nz.SMOOTHING_MIN and med > nz.SMOOTHING_Z * se_med and 2 * agree >= len(fits) and agree >= least:
        raise ValueError(
            f"the loss vectors read off the update fit softmax(z) - (1 - e) onehot(y) - e / K with e = {med:.3f} "
            f"(standard error {se_med:.1e} given the estimated noise) for {agree} of {len(fits)} rebuilt "
            f"samples: the client used label smoothing. The ExAN attack "
            f"assumes plain softmax cross-entropy (label_smoothing=0); with smoothing, labels and the forward "
            f"check do not hold, so nothing can be marked recovered.")


def _read(net: Net, g: Grads, fd: Found, idx: list, sigma_out: float, K: int, remainder_pass: bool):
    """Readings of ``idx``; raises for a sum-reduced or scaled update (first pass only)."""
    read = readings(net, g, fd.samples, fd.sets, torch.stack(fd.X), idx)
    if remainder_pass:  # the remainder is a sum: readings are the multiplicities themselves
        out = {}
        for m, (c, p) in read.items():
            n = round(c)
            unc = nz.CHECK_Z * sigma_out * math.sqrt(K) / p if p > 0 else math.inf
            if n >= 1 and abs(c - n) <= nz.M_INTEGER_RTOL * c + unc:
                out[m] = n
            fd.samples[m].reading = c
        return out, None
    br = read_batch_size(read, sigma_out, K)
    for m, (c, _) in read.items():
        fd.samples[m].reading = c
    n_found = len(br.consistent)
    if br.M is not None and n_found >= 2 and sum(br.multiplicity[m] for m in br.consistent) > br.M:
        raise ValueError(
            f"the 1/M factor of the ExAN columns reads M = {br.M} while {n_found} distinct samples were rebuilt: "
            f"the gradient is not averaged over the batch. A sum-reduced loss (reduction='sum') or an update "
            f"scaled by a factor (e.g. a wrong learning rate in (sent - returned) / lr) gives this. The ExAN "
            f"attack needs the mean-reduced gradient: divide a summed update by the batch size.")
    if br.common is not None and len(read) >= 2 and n_found == 0:
        raise ValueError(
            f"the 1/M factor of the ExAN columns is {br.common:.6g} for every rebuilt sample, which is not 1/M "
            f"for an integer M: the update is scaled (a sum-reduced loss divided by something else, or a wrong "
            f"learning rate). The ExAN attack needs the gradient averaged over the batch.")
    return {m: br.multiplicity[m] for m in br.consistent}, br.M


def search(net: Net, model, g: Grads, opts: Options, noise: nz.NoiseEstimate, peel: bool, max_rounds: int):
    """First pass, duplicates merged, ``M`` read, then peeling rounds on the remainder."""
    sigma = noise.sigma
    H = len(net.hidden)
    K = g.out.shape[0]
    an = analyse(net, model, g, opts, sigma)
    merged = merge_duplicates(net, g, an, sigma[0], noise.eps)
    _refuse_smoothing(an, K)
    fd = Found()
    for k in range(len(an.samples)):
        fd.add(an, k)
    idx = [m for m in range(len(fd.samples)) if fd.rebuilt[m]]
    M = None
    if idx:
        fd.mult, M = _read(net, g, fd, idx, sigma[H], K, remainder_pass=False)
    rounds, last = 0, None
    while peel and M is not None and rounds < max_rounds:
        known = [m for m in range(len(fd.samples)) if m in fd.mult]
        if not known or sum(fd.mult[m] for m in known) >= M:
            break
        R = remainder(g, M, torch.stack([fd.X[m] for m in known]), [fd.samples[m].label for m in known],
                      [fd.mult[m] for m in known])
        sig_r = [M * s for s in sigma]
        nxt = analyse(net, model, R, opts, sig_r)
        merged += merge_duplicates(net, R, nxt, sig_r[0], noise.eps)
        rounds += 1
        last = (nxt, known)
        new = [k for k in range(len(nxt.samples)) if bool(nxt.rebuilt[k]) and nxt.samples[k].status == "recovered"
               and not _seen(nxt.X[k], nxt.samples[k], [(fd.X[m], fd.samples[m]) for m in known], sig_r[0],
                             noise.eps)]
        if not new:
            break
        added = []
        for k in new:
            nxt.samples[k].found_by = f"peeling (round {rounds}): " + nxt.samples[k].found_by
            added.append(fd.add(nxt, k, base=known))
        mult, _ = _read(net, R, fd, added, sig_r[H], K, remainder_pass=True)
        fd.mult.update(mult)
        if not mult:
            break
    if last is not None:  # samples the last remainder still shows but could not rebuild
        nxt, known = last
        for k in range(len(nxt.samples)):
            if not nxt.rebuilt[k] and not any(_same_report(nxt.samples[k], s) for s in fd.samples):
                fd.add(nxt, k, base=known)
    return Search(found=fd, M=M, first=an, rounds=rounds, merged=merged)


def _seen(x, s, known: list, sigma0: float, eps: float) -> bool:
    """Whether input ``x`` (of report ``s``) is one of the ``known`` ``(input, report)`` pairs."""
    return any(same_input(x, k, s, ks, sigma0, eps) or float(torch.linalg.vector_norm(k - x)) <=
               nz.SEEN_RTOL * float(torch.linalg.vector_norm(k)) for k, ks in known)


def _same_report(a, b, tol: float = nz.SEEN_RTOL) -> bool:
    """Two reports of one sample: the same label and loss-vector direction."""
    return a.label == b.label and float(torch.linalg.vector_norm(a.loss_direction - b.loss_direction)) <= tol


def verify_found(net: Net, g: Grads, sr: Search, noise: nz.NoiseEstimate) -> tuple[torch.Tensor, dict, int]:
    """The whole-update check of every rebuilt sample. Returns ``(recovered, report, rejected)``."""
    fd = sr.found
    n = len(fd.samples)
    recovered = torch.zeros(n, dtype=torch.bool)
    cand = [m for m in range(n) if fd.rebuilt[m]]
    for m in cand:
        if m not in fd.mult:
            fd.samples[m].status = "not recoverable"
            fd.samples[m].reason = ("its 1/M reading is not an integer multiple of the batch's 1/M" if sr.M else
                                    "no consistent batch-size reading to check it against the whole update")
    cand = [m for m in cand if m in fd.mult]
    if sr.M is None or not cand:
        return recovered, {"unexplained": sr.M, "output_bias": None, "total": None, "consistent": sr.M is None}, \
            sum(fd.rebuilt)
    X = fd.stack(math.prod(net.feature_shape))
    passed, report = check(net, g, sr.M, X, fd.samples, fd.sets, cand, fd.mult, noise.sigma, noise.eps, fd.base)
    recovered[passed] = True
    for m in passed:
        fd.samples[m].multiplicity = fd.mult[m]
        fd.samples[m].status, fd.samples[m].reason = "recovered", ""
    return recovered, report, sum(fd.rebuilt) - len(passed)
