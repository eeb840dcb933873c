"""R-GAP's layer system (Zhu & Blaschko, "R-GAP: Recursive Gradient Attack on Privacy", ICLR 2021).

R-GAP's code (``cnn_reconstruction`` in ``recursive_attack.py``) rebuilds the input of one
conv layer from three kinds of rows over the *padded* input ``x_pad`` (``C (H + 2P_h)
(W + 2P_w)`` unknowns), stacked and solved by one least-squares problem:

- **gradient rows** (``aggregate_g``): ``F C K^2`` rows, one per weight, with ``dl/dO`` as
  coefficients: ``dl/dW[f, c, u, v] = sum_{p,q} dl/dO[f, p, q] x_pad[c, pS + u, qS + v]``;
- **forward rows** (``circulant_w``): ``F O_h O_w`` rows ``W * x_pad = O``, with ``O`` the
  pre-activation, obtained by inverting the activation at the rebuilt output;
- **padding rows** (``padding_constraints``): ``x_pad = 0`` at every padding pixel.

``dl/dO`` comes from the layer above by the chain rule through the activation, so R-GAP
needs an activation that is invertible everywhere (its code implements LeakyReLU, sigmoid
and identity). Its rank analysis compares the rank of the stacked rows with the number of
unknowns, per layer: the *rank deficiency* ``unknowns - rank`` is what the rows leave open.

Here the padding rows are eliminated exactly (they pin known zeros): the rank over the
padded unknowns is the number of padding rows plus the rank over the image pixels, and the
least-squares solution of consistent rows is the same. The stacked system is solved in
float64 by its normal equations (Cholesky, condition estimate, two steps of iterative
refinement on the stacked rows) when they certify full column rank; otherwise the exact rank
and the free pixels come from the null-space elimination of :mod:`.solve` (the gradient rows
are ``C`` copies of one shared matrix), whose solution on consistent rows is again R-GAP's.

What R-CONV adds (Eltaras et al. 2024): the gradient rows alone, with ``dl/dO`` propagated
from the layer's output through Chapter 2's table, need no inverse of the activation, so a
ReLU layer keeps all its gradient rows (with the zeros of ``dl/dO``) and the forward rows
where the output is positive; R-GAP refuses such a layer.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from . import solve as S
from .equations import padding_count

__all__: list[str] = []


def stacked_system(A_g: np.ndarray | None, B: np.ndarray | None, Fw, r, C: int, n: int):
    """R-GAP's stacked rows over the image pixels: ``[I_C kron A_g ; Fw]`` and its right-hand side.

    Returns
    -------
    (scipy.sparse.csr_matrix, numpy.ndarray)
        Shape ``(C * rows(A_g) + rows(Fw), C * n)`` and the stacked right-hand side
        ``[dl/dW per channel ; O - b]``, float64.
    """
    blocks, rhs = [], []
    if A_g is not None and A_g.shape[0]:
        blocks.append(sp.kron(sp.identity(C, format="csr"), sp.csr_matrix(A_g), format="csr"))
        rhs.append(B.T.reshape(-1))  # channel-major, as the block diagonal
    if Fw is not None and Fw.shape[0]:
        blocks.append(Fw)
        rhs.append(r)
    if not blocks:
        return sp.csr_matrix((0, C * n)), np.zeros(0)
    return sp.vstack(blocks, format="csr"), np.concatenate(rhs)


def _normal_equations(Sm: sp.csr_matrix, b: np.ndarray):
    """Least squares by Cholesky of ``S^T S``; returns (x, condition estimate of S^T S) or None."""
    G = (Sm.T @ Sm).toarray()
    try:
        cf = scipy.linalg.cho_factor(G, check_finite=False)
    except np.linalg.LinAlgError:
        return None  # not positive definite: rank-deficient
    rcond, info = scipy.linalg.lapack.dpocon(cf[0], np.abs(G).sum(0).max(), uplo="L" if cf[1] else "U")
    if info != 0 or not rcond > 0:
        return None
    x = scipy.linalg.cho_solve(cf, Sm.T @ b, check_finite=False)
    for _ in range(2):
        x = x + scipy.linalg.cho_solve(cf, Sm.T @ (b - Sm @ x), check_finite=False)
    return x, 1.0 / rcond


def solve_rgap_layer(conv, in_shape, A_g, B, Fw, r, rtol: float, dense_limit: int):
    """Solve one layer with R-GAP's rows; returns x ``(C, n)``, the determined mask and diagnostics.

    Parameters
    ----------
    conv : nn.Conv2d
    in_shape : (C, H, W)
    A_g, B : shared gradient matrix ``(F K^2, H W)`` and its right-hand sides ``(F K^2, C)``
        (None when ``dl/dO`` is unknown)
    Fw, r : forward rows (sparse) and ``O - b`` (None when no pre-activation is known)
    rtol : float
        Relative rank tolerance of the data matrices.
    dense_limit : int
        Largest ``C H W`` solved densely (the normal equations are ``C H W`` square).

    Returns
    -------
    (x, mask, info)
        ``info`` has the keys of every conv layer (``unknowns`` = ``C H W``, ``rank`` over the
        image pixels, ``condition``, ``residual``, ``solver``) and ``rank_analysis``:
        R-GAP's count over the padded input, ``gradient_rows``, ``forward_rows``,
        ``padding_rows``, ``rows``, ``unknowns`` (padded), ``rank``, ``deficiency``.
    """
    C, H, W = in_shape
    n = H * W
    pad = C * padding_count(conv, (H, W))
    g_rows = 0 if A_g is None else C * A_g.shape[0]
    f_rows = 0 if Fw is None else Fw.shape[0]
    info: dict = {"unknowns": C * n, "gradient_equations": g_rows, "forward_equations": f_rows}
    Sm, b = stacked_system(A_g, B, Fw, r, C, n)
    x = mask = None
    if Sm.shape[0] >= C * n and C * n <= dense_limit:
        done = _normal_equations(Sm, b)
        if done is not None and done[1] <= S.MAX_CONDITION and np.all(np.isfinite(done[0])):
            x, mask = done[0].reshape(C, n), np.ones((C, n), bool)
            info.update(solver="R-GAP rows (least squares, normal equations)", rank=C * n,
                        condition=float(np.sqrt(done[1])))
    if x is None:
        x, mask = _by_elimination(A_g, B, Fw, r, C, n, rtol, dense_limit, info)
    if info.get("rank") is not None:
        info["residual"] = S.rel(Sm @ x.reshape(-1) - b, b) if b.size else 0.0
    else:
        info["residual"] = None
    rank = info.get("rank")
    info["rank_analysis"] = {
        "gradient_rows": g_rows, "forward_rows": f_rows, "padding_rows": pad, "rows": g_rows + f_rows + pad,
        "unknowns": C * n + pad, "rank": None if rank is None else rank + pad,
        "deficiency": None if rank is None else C * n - rank,
    }
    return x, mask, info


def _by_elimination(A_g, B, Fw, r, C, n, rtol, dense_limit, info):
    """Exact rank and free pixels of the stacked rows through the shared gradient matrix."""
    xp, N, rg, s, kappa = S.gradient_nullspace(A_g, B, C, n, rtol)
    d = N.shape[1]
    info["gradient_rank"] = rg
    if d == 0:
        info.update(solver="R-GAP rows (gradient rows fix the layer; shared SVD)", rank=C * n, condition=kappa)
        return xp, np.ones((C, n), bool)
    if Fw is None or Fw.shape[0] == 0:
        info.update(solver="R-GAP rows, rank-deficient (gradient rows only; minimum norm)", rank=C * rg,
                    condition=kappa if rg else None)
        return xp, np.broadcast_to(np.linalg.norm(N, axis=1) < S.FREE_TOL, (C, n)).copy()
    if C * d > dense_limit:
        info.update(solver="not analysed: the reduced system is too large for a dense rank analysis "
                           "(raise dense_limit)", rank=None, condition=None)
        return xp.copy(), np.zeros((C, n), bool)
    x, mask, rm, cond = S.eliminate(Fw, r, xp, N, C, rtol, kappa)
    info.update(solver="R-GAP rows (least squares by null-space elimination)", rank=C * rg + rm, condition=cond)
    return x, mask
