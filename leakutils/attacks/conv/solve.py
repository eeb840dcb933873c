"""Solving one conv layer's equations in float64, with ranks that round-off cannot inflate.

Solvers, chosen per layer by :func:`solve_layer`: the weight-gradient equations alone when
their shared ``F K^2 x H W`` matrix has full column rank (one SVD); a square forward system
by sparse LU; both families together, densely, once the gradient equations leave few
unknowns (they fix each channel up to the null space ``N`` of the shared matrix, and the
forward equations are solved for the null-space coordinates); a tall forward system by its
normal equations. Sparse solutions are accepted only with small residuals and a condition
estimate below :data:`MAX_CONDITION`; otherwise the dense analysis decides, within
``dense_limit``.

Rank decisions
--------------
- A matrix built from the data (the shared gradient matrix): singular values below
  ``rtol`` times its largest count as zero (``rtol`` defaults to :data:`DEFAULT_RTOL`).
- A product such as ``Fw @ N`` (the forward equations restricted to the null space of the
  gradient equations) is exactly zero where the equations do not reach, so its computed
  singular values there are pure round-off and must not be measured against its own
  largest one. They are measured against the norms of the factors:
  :func:`product_tolerance` = ``max(rtol, NULLSPACE_ROUNDOFF * eps * max(shape) * kappa)
  * ||Fw||_2 * ||N||_2``, where ``kappa`` is the condition number of the kept part of the
  shared matrix (the accuracy of its computed null space).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["DEFAULT_RTOL", "MAX_CONDITION", "FREE_TOL", "NULLSPACE_ROUNDOFF"]

#: Default relative rank tolerance for a matrix built from the data.
DEFAULT_RTOL = 1e-10
#: A sparse solution is accepted only if its condition estimate leaves float64 enough digits.
MAX_CONDITION = 1e12
#: A pixel is free (undetermined) when a unit vector of the null space has a component above this.
FREE_TOL = 1e-8
#: Multiple of ``eps * max(shape) * kappa`` below which a product's singular value is round-off.
NULLSPACE_ROUNDOFF = 10.0
#: Residuals under which a sparse forward / gradient solution is accepted (relative).
SPARSE_FORWARD_RESIDUAL = 1e-8
SPARSE_GRADIENT_RESIDUAL = 1e-6
#: Largest reduced system analysed densely before the sparse solvers are tried.
EAGER_DENSE = 1024

_EPS = float(np.finfo(np.float64).eps)


def svd(a: np.ndarray, full_matrices: bool = True, compute_uv: bool = True):
    """SVD with a fallback: LAPACK's divide-and-conquer (gesdd) rarely fails to converge on
    nearly degenerate matrices; the slower QR-iteration driver (gesvd) then takes over."""
    if not np.all(np.isfinite(a)):
        raise np.linalg.LinAlgError("the system contains NaN or infinite coefficients")
    try:
        return np.linalg.svd(a, full_matrices=full_matrices, compute_uv=compute_uv)
    except np.linalg.LinAlgError:
        return scipy.linalg.svd(a, full_matrices=full_matrices, compute_uv=compute_uv, lapack_driver="gesvd")


def svd_rank(s: np.ndarray, rtol: float) -> int:
    """Singular values above ``rtol`` times the largest (a matrix built from the data)."""
    return int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0


def sparse_norm2_bound(M) -> float:
    """An upper bound of the spectral norm: ``sqrt(||M||_1 ||M||_inf)``."""
    if sp.issparse(M):
        return float(np.sqrt(spla.norm(M, 1) * spla.norm(M, np.inf))) if M.nnz else 0.0
    M = np.asarray(M)
    return float(np.sqrt(np.abs(M).sum(0).max() * np.abs(M).sum(1).max())) if M.size else 0.0


def product_tolerance(rtol: float, shape: tuple, norm_left: float, norm_right: float, kappa: float) -> float:
    """Absolute rank tolerance of a product ``L @ R`` from the norms of its factors.

    Parameters
    ----------
    rtol : float
        The relative rank tolerance of the attack.
    shape : (int, int)
        Shape of the product.
    norm_left, norm_right : float
        Spectral norms (or upper bounds) of the factors.
    kappa : float
        Condition number of the matrix whose null space is the right factor (1 if exact).

    Returns
    -------
    float
        ``max(rtol, NULLSPACE_ROUNDOFF * eps * max(shape) * kappa) * norm_left * norm_right``.
    """
    return max(rtol, NULLSPACE_ROUNDOFF * _EPS * max(shape) * kappa) * norm_left * norm_right


def rel(residual: np.ndarray, rhs: np.ndarray) -> float:
    """``||residual|| / ||rhs||`` (the absolute norm when the right-hand side is zero)."""
    scale = float(np.linalg.norm(rhs))
    return float(np.linalg.norm(residual)) / scale if scale > 0 else float(np.linalg.norm(residual))


def solve_layer(A_g, B, forward, C: int, n: int, rtol: float, dense_limit: int) \
        -> tuple[np.ndarray, np.ndarray, dict]:
    """Solve one layer; returns x ``(C, n)``, the determined mask ``(C, n)`` and diagnostics.

    ``A_g`` is the shared gradient matrix (or None), ``B`` its right-hand sides ``(rows, C)``;
    ``forward`` a callable returning the forward equations ``(Fw, r)`` (or ``(None, None)``),
    called only when the weight-gradient equations alone do not settle the layer. Order:

    1. weight-gradient equations alone (one reduced SVD of the shared matrix), if full rank;
    2. a square forward system by sparse LU, if well conditioned;
    3. both together, densely, once the gradient equations leave few unknowns;
    4. a tall forward system by the normal equations, if well conditioned;
    5. step 3 with the full SVD of the shared matrix, within ``dense_limit``.
    """
    info: dict = {"unknowns": C * n, "gradient_equations": 0 if A_g is None else C * A_g.shape[0]}
    dec = None
    if A_g is not None and A_g.shape[0] >= n:
        dec = svd(A_g, full_matrices=False)  # Vt is n x n
        U, s, Vt = dec
        rank = svd_rank(s, rtol)
        info.update(gradient_rank=rank)
        if rank == n:  # 1.
            x = (Vt.T @ ((U.T @ B) / s[:, None])).T
            info.update(solver="gradient equations (shared SVD)", rank=C * n, condition=float(s[0] / s[-1]),
                        residual=rel(A_g @ x.T - B, B), forward_equations=0)
            return x, np.ones((C, n), bool), info
    Fw, r = forward()
    info["forward_equations"] = 0 if Fw is None else Fw.shape[0]
    if Fw is not None and Fw.shape[0] == C * n:  # 2.
        done = try_sparse(Fw, r, A_g, B, C, n, info)
        if done is not None:
            return done
    if dec is not None and C * (n - info["gradient_rank"]) <= min(dense_limit, EAGER_DENSE):  # 3.
        return dense(A_g, B, Fw, r, C, n, rtol, dec, info)
    if Fw is not None and Fw.shape[0] > C * n:  # 4.
        done = try_sparse(Fw, r, A_g, B, C, n, info)
        if done is not None:
            return done
    return dense(A_g, B, Fw, r, C, n, rtol, dec, info, dense_limit)  # 5.


def try_sparse(Fw, r, A_g, B, C, n, info):
    """A sparse solve of the forward equations, accepted only if well conditioned and consistent."""
    try:
        x, cond = sparse_solve(Fw, r)
    except RuntimeError:  # exactly singular
        return None
    if not np.all(np.isfinite(x)) or (cond is not None and cond > MAX_CONDITION):
        return None
    res_f = rel(Fw @ x - r, r)
    res_g = rel(A_g @ x.reshape(C, n).T - B, B) if A_g is not None else 0.0
    if res_f > SPARSE_FORWARD_RESIDUAL or res_g > SPARSE_GRADIENT_RESIDUAL:
        return None
    kind = "sparse LU" if Fw.shape[0] == Fw.shape[1] else "sparse normal equations" if cond else "LSMR"
    info.update(solver=f"forward equations ({kind})", rank=C * n, condition=cond, residual=max(res_f, res_g))
    return x.reshape(C, n), np.ones((C, n), bool), info


def gradient_nullspace(A_g, B, C, n, rtol, dec=None):
    """Minimum-norm solution of the gradient equations and the null space of the shared matrix.

    Returns ``(xp (C, n), N (n, d), rank, s, kappa)``; ``kappa`` is the condition number of
    the kept part (the accuracy of ``N``).
    """
    if A_g is None or not A_g.shape[0]:
        return np.zeros((C, n)), np.eye(n), 0, None, 1.0
    if dec is None or dec[2].shape[0] < n:
        dec = svd(A_g, full_matrices=A_g.shape[0] < n)  # Vt is n x n either way
    U, s, Vt = dec
    rg = svd_rank(s, rtol)
    xp = (Vt[:rg].T @ ((U[:, :rg].T @ B) / s[:rg, None])).T if rg else np.zeros((C, n))
    kappa = float(s[0] / s[rg - 1]) if rg else 1.0
    return xp, Vt[rg:].T, rg, s, kappa


def dense(A_g, B, Fw, r, C, n, rtol, dec, info, dense_limit=None):
    """Both families densely: the gradient equations fix each channel up to the null space N of
    the shared matrix; the forward equations are solved for the null-space coordinates."""
    xp, N, rg, s, kappa = gradient_nullspace(A_g, B, C, n, rtol, dec)
    info.setdefault("gradient_rank", rg)
    d = N.shape[1]
    grad_res = rel(A_g @ xp.T - B, B) if A_g is not None else None
    if d == 0:  # determined by the gradient equations after all
        info.update(solver="gradient equations (shared SVD)", rank=C * n, condition=kappa, residual=grad_res)
        return xp, np.ones((C, n), bool), info
    if Fw is None or Fw.shape[0] == 0:
        mask = np.broadcast_to(np.linalg.norm(N, axis=1) < FREE_TOL, (C, n)).copy()
        info.update(solver="gradient equations, rank-deficient (minimum norm)", rank=C * rg,
                    condition=kappa if rg else None, residual=grad_res)
        return xp, mask, info
    if dense_limit is not None and C * d > dense_limit:
        info.update(solver="not analysed: the reduced system is too large for a dense rank analysis "
                           "(raise dense_limit)", rank=None, condition=None, residual=None)
        return xp.copy(), np.zeros((C, n), bool), info
    x, mask, rm, cond = eliminate(Fw, r, xp, N, C, rtol, kappa)
    res = [rel(Fw @ x.reshape(-1) - r, r)] + ([rel(A_g @ x.T - B, B)] if A_g is not None else [])
    info.update(solver="gradient and forward equations (dense, null-space elimination)", rank=C * rg + rm,
                condition=cond, residual=max(res))
    return x, mask, info


def eliminate(Fw, r, xp, N, C, rtol, kappa):
    """Solve ``Fw x = r`` for ``x = xp + N z`` (per channel); returns x, mask, rank of ``Fw N``, condition.

    The rank of ``Fw N`` is decided by :func:`product_tolerance` (norms of ``Fw`` and ``N``),
    never relative to the product's own largest singular value.
    """
    n, d = N.shape
    Fc = Fw.tocsc()
    cols = [Fc[:, c * n:(c + 1) * n] for c in range(C)]
    Mz = np.hstack([np.asarray(blk @ N) for blk in cols])  # (nf, C d)
    rhs = r - sum(np.asarray(blk @ xp[c]).ravel() for c, blk in enumerate(cols))
    Um, sm, Vmt = svd(Mz, full_matrices=Mz.shape[0] < Mz.shape[1])
    tol = product_tolerance(rtol, Mz.shape, sparse_norm2_bound(Fw), 1.0, kappa)  # N has orthonormal columns
    rm = int((sm > tol).sum())
    z = Vmt[:rm].T @ ((Um[:, :rm].T @ rhs) / sm[:rm]) if rm else np.zeros(C * d)
    x = xp + np.stack([N @ z[c * d:(c + 1) * d] for c in range(C)])
    null = Vmt[rm:].T  # (C d, k)
    free = np.concatenate([np.linalg.norm(N @ null[c * d:(c + 1) * d], axis=1) for c in range(C)])
    mask = (free < FREE_TOL).reshape(C, n)
    return x, mask, rm, (float(sm[0] / sm[rm - 1]) if rm else None)


def sparse_solve(Fw: sp.csr_matrix, r: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Solve a square or tall sparse system; returns x and a 1-norm condition estimate.

    Square: sparse LU. Tall and small (<= 8192 unknowns): LU of the normal equations with two
    steps of iterative refinement. Tall and large: LSMR (no condition estimate); the caller
    checks the residual either way.
    """
    m, n = Fw.shape
    if m == n:
        A = Fw.tocsc()
        lu = spla.splu(A)
        x = lu.solve(r)
    elif n <= 8192:
        A = (Fw.T @ Fw).tocsc()
        lu = spla.splu(A)
        x = lu.solve(Fw.T @ r)
        for _ in range(2):
            x = x + lu.solve(Fw.T @ (r - Fw @ x))
    else:
        x = spla.lsmr(Fw, r, atol=1e-15, btol=1e-15, maxiter=20 * n)[0]
        return x, None
    inv = spla.LinearOperator((n, n), matvec=lu.solve, rmatvec=lambda y: lu.solve(y, trans="T"), dtype=float)
    cond = float(spla.norm(A, 1) * spla.onenormest(inv))
    return x, cond
