"""The best rank-one fit of a linear layer's gradient ``A = [dl/dW | dl/db]`` (the bias ratio's core).

For one sample, row ``m`` of ``A`` is ``dl/dz_m [x, 1]``: ``A = g [x, 1]^T`` has rank one, and
its top right singular vector is ``v = c [x, 1]``, so ``x = v[:-1] / v[-1]``. The top singular
triplet is the best rank-one approximation of ``A`` in the Frobenius norm (Eckart-Young), so
under i.i.d. noise on every entry it averages the noise of all rows, dead ones included,
instead of dividing by it (total least squares: noise on ``dl/db`` does not shrink ``x``, as
it does in a least-squares fit ``x = (w @ G) / (w @ w)``).

First-order error (noise of standard deviation ``sigma`` per entry, ``A = s u v^T + E``): the
top vector moves by ``dv = (I - v v^T) E^T u / s``, and since ``v_j = x_j v_last`` the
projection cancels in ``dx_j = (dv_j - x_j dv_last) / v_last``, leaving

    std(x_j) = sigma sqrt(1 + x_j^2) / (s_1 |v_last|),

where ``s_1 |v_last|`` is the norm of the fitted bias gradient. The division by ``v_last`` is
guarded: below ``GUARD_FACTOR`` times its own standard deviation (``sigma / s_1``, plus
round-off) the sign and scale of ``x`` are noise, and the fit says so instead of dividing; it
returns the least-squares estimate ``(db @ dW) / (db @ db)`` then, which noise on ``db``
shrinks towards zero rather than blowing up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: ``v_last`` must exceed this many standard deviations of its noise (``sigma / s_1``) and of
#: round-off (``ROUNDOFF_FACTOR * eps``) for the scale of ``x`` to count as determined.
GUARD_FACTOR = 4.0
ROUNDOFF_FACTOR = 64.0
#: Power-iteration steps before falling back to a full SVD; each step costs two matrix-vector
#: products. The error shrinks by ``(s_2 / s_1)^2`` per step: 1 step for a clean sample, ~25
#: at ``s_2 / s_1 = 0.5``.
MAX_POWER_STEPS = 60
#: Singular values reported in the diagnostics.
REPORTED_VALUES = 5


@dataclass(frozen=True)
class RankOneFit:
    """The top singular triplet of ``A`` (m, n + 1) and the input it implies.

    ``x`` float64 (n,); ``singular_values`` float64, all of them, descending; ``u`` (m,),
    ``v`` (n + 1,) unit vectors; ``scale_determined``: ``|v_last|`` above its guard (else ``x``
    is the least-squares estimate ``(db @ dW) / (db @ db)`` over all rows: finite, shrunk
    towards 0 by the noise on ``db``, without a reliable sign or scale); ``noise_level``: the per-entry ``sigma`` used for the guard and ``standard_error`` (float64 (n,),
    same units as ``x``); ``noise_estimate``: ``s_2 / (sqrt(m) + sqrt(n + 1))``, the noise
    level the second singular value implies for one sample; ``method``: how the triplet was
    found; ``steps``: power-iteration steps (0 for the full SVD).
    """

    x: torch.Tensor
    singular_values: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    scale_determined: bool
    noise_level: float
    noise_estimate: float
    standard_error: torch.Tensor
    method: str
    steps: int


def fit(A: torch.Tensor, noise: float, eps: float, estimate_noise: bool = True) -> RankOneFit:
    """Best rank-one fit of ``A = [dl/dW | dl/db]`` (float64, (m, n + 1), last column nonzero).

    ``noise``: stated per-entry standard deviation (>= 0, gradient units); ``eps``: machine
    epsilon of the dtype the gradient was computed in; ``estimate_noise``: ``A`` should have
    rank one (one sample), so its second singular value is noise, and the noise it implies
    counts when larger than the stated one (for a batch, pass False: ``s_2`` is a sample). One ``svdvals`` of the tall orientation
    gives every singular value (rank and rank-one test); the top vectors come from power
    iteration started at the bias column (exact after one step for a clean sample), or from a
    full SVD when the gap ``s_2 / s_1`` is too small for it to converge.
    """
    m, n1 = A.shape
    sv = torch.linalg.svdvals(A if m >= n1 else A.T)
    s1 = float(sv[0])
    s2 = float(sv[1]) if sv.numel() > 1 else 0.0
    u, v, steps = _power(A)
    method = "power iteration"
    if u is None:
        # the gap is too small for power iteration: the full decomposition (twice svdvals' cost)
        if m >= n1:
            U, _, Vh = torch.linalg.svd(A, full_matrices=False)
            u, v = U[:, 0], Vh[0]
        else:
            U, _, Vh = torch.linalg.svd(A.T, full_matrices=False)
            u, v = Vh[0], U[:, 0]
        method, steps = "full SVD", 0
    estimate = s2 / (math.sqrt(m) + math.sqrt(n1))
    sigma = max(noise, estimate) if estimate_noise else noise
    last = float(v[-1])
    guard = GUARD_FACTOR * (sigma / s1 + ROUNDOFF_FACTOR * eps) if s1 > 0 else math.inf
    determined = abs(last) > guard
    if determined:
        # |v_last| > guard > 0: a guarded division
        x = v[:-1] / last
    else:
        # the scale is noise: the least-squares estimate over all rows, which noise on the
        # bias column shrinks towards 0 (|db|^2 > 0: the caller refuses a zero bias column)
        db = A[:, -1]
        x = (db @ A[:, :-1]) / (db @ db)
    error = sigma * torch.sqrt(1 + x * x) / (s1 * max(abs(last), guard)) if s1 > 0 else torch.full_like(x, math.inf)
    return RankOneFit(x=x, singular_values=sv, u=u, v=v, scale_determined=determined, noise_level=sigma,
                      noise_estimate=estimate, standard_error=error, method=method, steps=steps)


def _power(A: torch.Tensor):
    """Top singular vectors by power iteration from the bias column; ``(None, None, k)`` if not converged.

    Converged when ``v`` moves by less than ``ROUNDOFF_FACTOR`` float64 epsilons in a step.
    """
    u = A[:, -1] / torch.linalg.vector_norm(A[:, -1])
    v_old = None
    tol = ROUNDOFF_FACTOR * torch.finfo(A.dtype).eps
    for k in range(1, MAX_POWER_STEPS + 1):
        v = A.T @ u
        v = v / torch.linalg.vector_norm(v)
        w = A @ v
        u = w / torch.linalg.vector_norm(w)
        if v_old is not None and float(torch.linalg.vector_norm(v - v_old)) <= tol:
            return u, v, k
        v_old = v
    return None, None, MAX_POWER_STEPS
