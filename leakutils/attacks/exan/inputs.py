"""Inputs of the fully connected part, per sample: bias ratio, pseudo-inverse, and scale.

- **Bias ratio**: with a bias in the first layer, a first-layer ExAN ``j`` of sample ``m`` has
  row ``(1/M) delta_j^m x_m`` and bias gradient ``(1/M) delta_j^m``: ``x_m`` is their ratio,
  exactly, by least squares over all of ``m``'s first-layer ExANs.
- **Pseudo-inverse** (bias-free first layer): ``dl/dW_1 = (1/M) Delta X^T`` with ``Delta`` the
  samples' first-layer errors, known from their activation patterns and loss directions up
  to a positive factor per sample; ``X^T`` follows from the pseudo-inverse of ``Delta`` when
  its rank is ``M`` (rank and condition reported).
- **Scale** of the pseudo-inverse route (:data:`SCALES`): an ExAN bias gradient, the softmax
  of a positively homogeneous network (``z(c x) = c z(x)``: the logits' spread fixes ``c``),
  or the paper's uniform guess, which leaves a per-sample factor (reported ``"up to scale"``).
"""
from __future__ import annotations

import math

import torch

from .analysis import Options
from .grouping import unit_rows
from .model import Grads, Net, head_forward, loss_vectors, perturbed
from .noise import CHECK_Z, MIN_NOISE_PSNR_DB, PROPAGATION_DRAWS, PROPAGATION_SEED, PROPAGATION_Z

#: How the bias-free pseudo-inverse fixes each sample's positive scale: ``"auto"`` (a bias if
#: the network has one, else the softmax), ``"softmax"``, ``"bias"``, or ``"uniform"`` (the
#: paper's kind of guess: the loss vector of a uniform prediction, ``|g_y| = 1 - 1/K``, and
#: the batch size found).
SCALES = ("auto", "softmax", "bias", "uniform")

#: Singular values of ``Delta`` below this fraction of the largest count as zero: ``Delta`` is
#: built in float64 from exact patterns and weights, so its rounding is ~1e-15 relative; 1e-10
#: leaves five orders of magnitude for ill-conditioning before the rank drops.
PINV_RANK_RTOL = 1e-10

#: The pseudo-inverse is accepted when it explains the first layer's gradient to this many
#: grouping tolerances (relative residual), plus the noise.
PINV_RESIDUAL_PER_RTOL = 100.0

#: Logits whose centred spread is below this fraction of their size cannot fix a softmax scale
#: (a relative variance of 1e-24 is float64 rounding of the logits squared).
SOFTMAX_SPREAD_MIN = 1e-24

#: The smoothing fit's two columns ``p - onehot(y)`` and ``onehot(y) - 1/K`` are parallel when
#: ``p`` is uniform over the other classes; beyond this condition number (float64 loses ~8 of
#: its 16 digits in the normal equations) the reading gets an infinite standard error.
SMOOTHING_COND_MAX = 1e8

#: A rebuilt input must reproduce its own loss-vector direction (run forward) within this many
#: grouping tolerances, plus the noise of the direction: a blend of two samples does not.
LOSS_CHECK_PER_RTOL = 10.0


def bias_ratio_inputs(g: Grads, samples, sets, X, rebuilt, rtol: float, sigma0: float) -> None:
    """Rebuild, in place, every sample with first-layer ExANs by the bias ratio; set its noise PSNR."""
    for m, s in enumerate(samples):
        if s.label < 0 or g.Gb[0] is None or 0 not in sets[m]:
            continue
        grp = sets[m][0]
        w, R = g.Gb[0][grp], g.G[0][grp]
        ww = float(w @ w)
        if ww <= (rtol * float(g.Gb[0].abs().max())) ** 2 or ww <= sigma0 ** 2:
            continue
        X[m] = (w @ R) / ww
        rebuilt[m] = True
        s.status, s.method, s.reason = "recovered", "bias ratio", ""
        s.noise_psnr = noise_psnr_of(R, w, X[m], sigma0)


def noise_psnr_of(R, w, x, sigma0: float) -> float | None:
    """PSNR (dB, range 1) the noise allows for the bias-ratio input ``x = w R / ||w||^2``.

    ``R`` ``(n, D)`` and ``w`` ``(n,)``: the group's first-layer rows and bias gradients;
    ``sigma0`` the estimated noise per entry. ``-20 log10(s sqrt(1 + mean x^2) / ||w||)`` with
    ``s`` from :func:`_rows_noise`; None when that error is zero.
    """
    ww = float(w @ w)
    if not ww > 0:
        return None
    err = _rows_noise(R, w, x, sigma0) * math.sqrt(1.0 + float((x * x).mean())) / math.sqrt(ww)
    return None if err <= 0 else -20.0 * math.log10(err)


def _rows_noise(R, w, x, sigma0: float) -> float:
    """Noise per entry of a group's first-layer rows: the estimate ``sigma0``, or more.

    With ``n >= 2`` ExANs the rows must be ``w_j x`` (rank one): their scatter around that fit,
    ``||R - w x^T|| / sqrt((n - 1) D)``, measures the noise actually present (noise scaled up for
    this layer, or a unit shared with another sample, which a loose ``rtol`` lets in). The
    larger of the two is used, so the noise PSNR does not claim more than the rows show.
    """
    n, D = R.shape
    if n < 2:
        return sigma0
    scatter = float(torch.linalg.vector_norm(R - w[:, None] * x[None, :])) / math.sqrt((n - 1) * D)
    return max(sigma0, scatter)


def _errors(W, patterns_m, direction, H):
    """First-layer error direction u^m = D_1 W_2^T D_2 ... W_o^T d (per unit loss vector)."""
    u = W[H].T @ direction
    for h in range(H - 1, 0, -1):
        u = W[h].T @ (u * patterns_m[h])
    return u * patterns_m[0]


def pseudo_inverse(net: Net, model, g: Grads, ctx: dict, todo: list, opts: Options, sigma0: float) -> dict:
    """The bias-free route for the samples in ``todo`` (in place on ``ctx["X"]``, ``ctx["rebuilt"]``).

    ``ctx`` holds ``samples``, ``patterns``, ``complete``, ``X``, ``rebuilt``. Returns the
    route's diagnostics: ``used``, ``rank``, ``condition``, ``residual``, ``samples``, ``reason``.
    """
    samples, patterns, X, rebuilt = ctx["samples"], ctx["patterns"], ctx["X"], ctx["rebuilt"]
    H = len(net.hidden)
    Mf = len(samples)
    info = {"used": False, "reason": ""}
    full = [m for m in range(Mf) if all(h in patterns[m] for h in range(H)) and samples[m].label >= 0]
    if ctx["complete"] is not True or len(full) != Mf:
        why = ("the found samples do not explain the whole output gradient (a sample was missed or the loss "
               "vectors are not independent: needs fewer than K - 1 samples)" if ctx["complete"] is not True else
               "a sample's activation pattern is unknown in some layer")
        info["reason"] = why
        for m in todo:
            if not samples[m].reason:
                samples[m].reason = "no first-layer ExAN with a bias, and no pseudo-inverse: " + why
        return info
    U = torch.stack([_errors(g.W, patterns[m], samples[m].loss_direction, H) for m in range(Mf)], 1)
    rhs = g.rows(0)
    sv = torch.linalg.svdvals(U)
    rank = int((sv > sv[0] * PINV_RANK_RTOL).sum()) if sv.numel() and sv[0] > 0 else 0
    cond = float(sv[0] / sv[-1]) if rank == Mf else float("inf")
    info.update(used=True, rank=rank, condition=cond, samples=Mf)
    if rank < Mf:
        info["reason"] = f"Delta has rank {rank} < {Mf}: the first-layer errors do not separate the samples"
        for m in todo:
            samples[m].reason = info["reason"]
        return info
    Y = torch.linalg.lstsq(U, rhs).solution  # (Mf, D[+1]): sigma_m [x_m, 1]
    norm = float(torch.linalg.vector_norm(rhs))
    res = float(torch.linalg.vector_norm(rhs - U @ Y)) / max(norm, torch.finfo(torch.float64).tiny)
    info["residual"] = res
    allowed = PINV_RESIDUAL_PER_RTOL * opts.rtol + sigma0 * (rhs.numel() ** 0.5) / max(norm, torch.finfo(torch.float64).tiny)
    if res > allowed:
        info["reason"] = f"the first layer's gradient is not explained by the samples (residual {res:.1e})"
        for m in todo:
            samples[m].reason = info["reason"]
        return info
    for m in todo:
        _scale_one(net, model, g, samples, m, Y, X, rebuilt, opts)
    return info


def _scale_one(net, model, g, samples, m, Y, X, rebuilt, opts) -> None:
    s = samples[m]
    if g.Gb[0] is not None:
        den = float(Y[m, -1])
        if abs(den) <= opts.rtol * float(Y[:, -1].abs().max()):
            s.reason = "its bias coordinate in the pseudo-inverse is zero"
            return
        X[m], s.scale = Y[m, :-1] / den, den
    else:
        x, sigma, why = fix_scale(net, model, g, s, Y[m], opts.scale, len(samples))
        if x is None:
            s.reason = why
            return
        X[m], s.scale = x, sigma
        if opts.scale == "uniform":
            s.status, s.method = "up to scale", "pseudo-inverse"
            s.reason = "scale='uniform' guesses each input's brightness: right up to a positive factor"
            rebuilt[m] = True
            return
    rebuilt[m] = True
    s.status, s.method, s.reason = "recovered", "pseudo-inverse", ""


def fix_scale(net: Net, model, g: Grads, s, y, scale: str, Mf: int):
    """Resolve ``y = sigma_m x_m`` for one sample of the bias-free route: ``(x, sigma, why)``."""
    K = s.loss_direction.numel()
    mode = scale
    if mode == "auto":
        mode = "bias" if s.scale is not None else "softmax"
    if mode == "bias":
        if s.scale is None:
            return None, None, "scale='bias' but no ExAN bias gradient fixes this sample's loss-vector length"
        return y / s.scale, s.scale, ""
    if mode == "uniform":
        sigma = (1 - 1 / K) / abs(float(s.loss_direction[s.label])) / Mf
        return y / sigma, sigma, ""
    # softmax: logits of a bias-free ReLU network scale with the input, z(c x) = c z(x)
    if any(lin.bias is not None for _, lin in net.hidden) or net.out.bias is not None or net.convs:
        return None, None, "scale='softmax' needs a bias-free ReLU network (positively homogeneous)"
    _, z = head_forward(g, y.reshape(1, -1))
    z = z[0]
    d = s.loss_direction
    keep = [c for c in range(K) if c != s.label and float(d[c]) > 0]
    if len(keep) < 2:
        return None, None, "the loss vector has fewer than two non-zero non-label entries to read the softmax from"
    zc, lc = z[keep], torch.log(d[keep])
    zc0, lc0 = zc - zc.mean(), lc - lc.mean()
    den = float(zc0 @ zc0)
    if den <= SOFTMAX_SPREAD_MIN * max(1.0, float(zc @ zc)):
        return None, None, "the logits of the rebuilt direction are all equal: the softmax does not fix the scale"
    kappa = float(zc0 @ lc0) / den  # log p_c = kappa z_c + const, c != y
    if not kappa > 0:
        return None, None, f"the softmax fit gave a non-positive scale ({kappa:.3g})"
    return y * kappa, 1.0 / kappa, ""


def loss_check(g: Grads, samples, X, rebuilt, rtol: float, sigma_out: float) -> None:
    """Reject, in place, rebuilt inputs that do not reproduce their own loss-vector direction.

    A group of units shared by two samples with nearly equal loss vectors (same label) gives a
    blend, which fails. Samples ``"up to scale"`` are skipped (their guessed brightness changes
    the softmax on purpose; they are never marked recovered).
    """
    idx = [m for m in torch.nonzero(rebuilt).flatten().tolist() if samples[m].status == "recovered"]
    K = g.out.shape[0]
    for m in idx:
        s = samples[m]
        lab = torch.tensor([s.label])
        err = _direction_error(g, X[m], lab, s.loss_direction)
        grp = next(iter(s.exans.values()), None)
        col_norm = float(torch.linalg.vector_norm(g.out[:, grp])) if grp is not None and grp.numel() else 0.0
        allowed = LOSS_CHECK_PER_RTOL * rtol + (CHECK_Z * sigma_out * K ** 0.5 / col_norm if col_norm > 0 else 0.0)
        spread = [abs(_direction_error(g, xp, lab, s.loss_direction) - err)
                  for xp in perturbed(X[m], s.input_error, PROPAGATION_DRAWS, PROPAGATION_SEED)]
        allowed += PROPAGATION_Z * max(spread, default=0.0)
        if s.noise_psnr is not None and s.noise_psnr < MIN_NOISE_PSNR_DB:
            why = (f"the noise allows its input only to {s.noise_psnr:.0f} dB (below {MIN_NOISE_PSNR_DB:.0f} dB): "
                   f"too uncertain to tell from a blend")
        elif err > allowed:
            why = (f"its rebuilt input does not reproduce its loss vector (off by {err:.1e}): "
                   f"the units taken for its ExANs are shared by several samples")
        else:
            continue
        rebuilt[m] = False
        X[m] = 0.0
        s.status, s.method, s.reason = "not recoverable", "", why


def _direction_error(g: Grads, x, label, direction) -> float:
    _, z = head_forward(g, x[None])
    return float(torch.linalg.vector_norm(unit_rows(loss_vectors(z, label))[0][0] - direction))


def smoothing_fit(g: Grads, samples, X, rebuilt, sets=None, sigma_out: float = 0.0) -> list:
    """Per rebuilt sample, ``(eps_s, se)`` of the fit ``d ~ a (p - onehot(y)) + a eps_s (onehot(y) - 1/K)``.

    ``d`` is the sample's loss direction read off the update and ``p`` the softmax of its rebuilt
    input run forward. Plain cross-entropy gives ``eps_s = 0`` up to rounding and noise; label
    smoothing ``eps`` gives ``eps_s = eps``. ``se`` is the reading's standard error: the
    least-squares covariance of ``(a, a eps_s)`` (delta method for the ratio) with a per-entry
    error of ``d`` that is the larger of the noise carried by the ExAN columns
    (``sigma_out sqrt(n) / ||sum of the n columns||``, ``sets`` giving the units) and the fit's
    own residual (``||r|| / sqrt(K - 2)``, which also holds the error of ``p`` from an inexact
    input). Must run before :func:`loss_check`, which rejects such samples.
    """
    idx = [m for m in torch.nonzero(rebuilt).flatten().tolist() if samples[m].status == "recovered"]
    if not idx:
        return []
    _, z = head_forward(g, X[idx])
    p = torch.softmax(z, 1)
    K = p.shape[1]
    T = len(g.W) - 2
    out = []
    for k, m in enumerate(idx):
        y = samples[m].label
        e = torch.zeros(K, dtype=torch.float64)
        e[y] = 1.0
        A = torch.stack([p[k] - e, e - 1.0 / K], 1)
        d = samples[m].loss_direction.to(torch.float64)
        coef = torch.linalg.lstsq(A, d[:, None]).solution[:, 0]
        a, b = float(coef[0]), float(coef[1])
        if not a > 0:
            continue
        out.append((b / a, _smoothing_se(A, d, coef, g, sets, m, T, sigma_out)))
    return out


def _smoothing_se(A, d, coef, g: Grads, sets, m: int, T: int, sigma_out: float) -> float:
    """Standard error of ``eps_s = coef[1] / coef[0]`` (see :func:`smoothing_fit`)."""
    K = A.shape[0]
    resid = float(torch.linalg.vector_norm(A @ coef - d))
    s_d = resid / math.sqrt(K - 2) if K > 2 else 0.0
    if sets is not None and sigma_out > 0 and T in sets[m] and sets[m][T].numel():
        units = sets[m][T]
        total = float(torch.linalg.vector_norm(g.out[:, units].sum(1)))
        if total > 0:
            s_d = max(s_d, sigma_out * math.sqrt(units.numel()) / total)
    AtA = A.T @ A
    if not float(torch.linalg.cond(A)) < SMOOTHING_COND_MAX:
        return math.inf  # p - onehot and onehot - 1/K (nearly) parallel: the reading is undetermined
    cov = torch.linalg.inv(AtA) * s_d ** 2
    a, b = float(coef[0]), float(coef[1])
    r = b / a
    var = (float(cov[1, 1]) + r * r * float(cov[0, 0]) - 2 * r * float(cov[0, 1])) / (a * a)
    return math.sqrt(max(var, 0.0))
