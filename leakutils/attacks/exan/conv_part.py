"""The conv part of a CNN under an ExAN head: each conv layer per sample by its forward equations.

Once the head's input (the top conv layer's output, per sample) is rebuilt, each conv layer's
input follows from its forward equations ``W * x + b = O``, with ``O = A^{-1}(X)`` wherever the
activation is invertible at the rebuilt output (Zhu & Blaschko 2021, "R-GAP"; Chapter 3).
The weight-gradient equations of Chapter 3 are not available: the conv gradients average
the whole batch. Each system is solved densely by SVD (least squares, minimum norm), with its
rank and condition reported; pixels in the null space of the rows used are marked
undetermined, and nothing below them can be fixed either.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse.linalg as spla
import torch

from ... import activations as acts
from ..conv import forward_matrix

#: Singular values below this fraction of the largest count as zero: the forward matrix holds
#: the conv weights in float64 exactly, so 1e-10 leaves ample room above rounding (~1e-15).
CONV_RANK_RTOL = 1e-10

#: A pixel is determined when its row of the null-space basis is below this (unit-norm basis
#: vectors; rounding leaves ~1e-15 where the pixel is fixed).
CONV_NULL_TOL = 1e-8


#: A sparse LU solution (square or normal equations) is accepted when the one-norm condition
#: estimate of the factored matrix stays below this: float64 then keeps ~4 significant digits
#: even in the worst case, and the residual is checked too; otherwise the dense SVD decides.
SPARSE_MAX_CONDITION = 1e12

#: Relative residual a sparse solution must reach (float64 rounding of a well-conditioned system).
SPARSE_MAX_RESIDUAL = 1e-10


def _sparse(L, rows: torch.Tensor, r: torch.Tensor):
    """Fast path: the forward system by sparse LU (square) or its normal equations (tall); None if
    not square or tall, singular, ill-conditioned or inaccurate."""
    A = forward_matrix(L.conv, L.in_shape, rows.reshape(L.out_shape).numpy())
    n = A.shape[1]
    if A.shape[0] < n:
        return None
    S = A if A.shape[0] == n else (A.T @ A).tocsc()
    rhs = r.numpy() if A.shape[0] == n else A.T @ r.numpy()
    try:
        lu = spla.splu(S.tocsc())
        inv = spla.LinearOperator(S.shape, matvec=lu.solve, rmatvec=lambda v: lu.solve(v, trans="T"))
        cond = spla.onenormest(S) * spla.onenormest(inv)
    except (RuntimeError, ValueError):
        return None
    x = lu.solve(rhs)
    res = float(np.linalg.norm(A @ x - r.numpy())) / max(float(np.linalg.norm(r.numpy())), np.finfo(np.float64).tiny)
    if not np.isfinite(x).all() or cond > SPARSE_MAX_CONDITION or res > SPARSE_MAX_RESIDUAL:
        return None
    return torch.from_numpy(x), float(cond), res


def _forward_operator(conv: torch.nn.Conv2d, in_shape: tuple) -> torch.Tensor:
    """The conv layer (without bias) as a dense matrix ``(F O_h O_w, C H W)``, float64."""
    n = 1
    for s in in_shape:
        n *= s
    w = conv.weight.detach().to(torch.float64)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    out = torch.nn.functional.conv2d(eye, w, None, stride=conv.stride, padding=conv.padding)
    return out.reshape(n, -1).T


def _invert(L, X: torch.Tensor, known: torch.Tensor, dense_limit: int):
    """Input of conv layer ``L`` from its rebuilt output ``X`` (where ``known``)."""
    C, H, W = L.in_shape
    n = C * H * W
    info = {"unknowns": n, "gradient_equations": 0, "forward_equations": 0, "rank": None, "condition": None,
            "residual": None, "solver": ""}
    X = acts.snap_to_range(L.activation, X)
    O, O_det = acts.invert(L.activation, X[None])
    rows = (O_det[0] & known).flatten()
    info["forward_equations"] = int(rows.sum())
    bias = L.conv.bias.detach().to(torch.float64) if L.conv.bias is not None else \
        torch.zeros(L.conv.out_channels, dtype=torch.float64)
    r = (O[0] - bias[:, None, None]).flatten()[rows]
    fast = _sparse(L, rows, r) if bool(rows.any()) else None
    if fast is not None:
        x, cond, res = fast
        info.update(rank=n, condition=cond, residual=res, solver="forward equations (sparse LU)")
        return x.reshape(L.in_shape), torch.ones(L.in_shape, dtype=torch.bool), info
    if n > dense_limit or not bool(rows.any()):
        info["solver"] = (f"none: {n} unknowns exceed dense_limit={dense_limit}" if n > dense_limit
                          else "none: no forward equation (activation not invertible where known)")
        return torch.zeros(L.in_shape, dtype=torch.float64), torch.zeros(L.in_shape, dtype=torch.bool), info
    A = _forward_operator(L.conv, L.in_shape)[rows]
    U, S, Vh = torch.linalg.svd(A, full_matrices=True)
    rank = int((S > S[0] * CONV_RANK_RTOL).sum()) if S.numel() and S[0] > 0 else 0
    x = Vh[:rank].T @ ((U[:, :rank].T @ r) / S[:rank]) if rank else torch.zeros(n, dtype=torch.float64)
    null = Vh[rank:]
    det = torch.linalg.vector_norm(null, dim=0) <= CONV_NULL_TOL if null.shape[0] else torch.ones(n, dtype=torch.bool)
    res = float(torch.linalg.vector_norm(A @ x - r)) / max(float(torch.linalg.vector_norm(r)), np.finfo(np.float64).tiny)
    info.update(rank=rank, condition=float(S[0] / S[rank - 1]) if rank else float("inf"), residual=res,
                solver="forward equations (dense SVD)")
    return x.reshape(L.in_shape), det.reshape(L.in_shape), info


def invert_convs(convs: list, input_shape: tuple, X: torch.Tensor, recovered: torch.Tensor, dense_limit: int):
    """Images from the head inputs ``X`` ``(M_found, D)`` of recovered samples.

    Returns ``(images, determined, info)``: float64 ``(M_found, *input_shape)``, the bool mask
    of pixels the equations fix, and per sample a list of per-layer dicts from the top
    (``layer``, ``unknowns``, ``forward_equations``, ``gradient_equations``, ``rank``,
    ``condition``, ``residual``, ``solver``, ``determined``, ``seconds``), None if not recovered.
    """
    Mf = X.shape[0]
    images = torch.zeros(Mf, *input_shape, dtype=torch.float64)
    determined = torch.zeros(Mf, *input_shape, dtype=torch.bool)
    info: list = []
    top = convs[-1]
    for m in range(Mf):
        if not recovered[m]:
            info.append(None)
            continue
        Xm = X[m].reshape(top.out_shape)
        known = torch.ones(top.out_shape, dtype=torch.bool)
        layers = []
        for L in reversed(convs):
            t = time.perf_counter()
            Xm, known, li = _invert(L, Xm, known, dense_limit)
            li.update(layer=L.name, determined=float(known.double().mean()), seconds=time.perf_counter() - t)
            layers.append(li)
        images[m] = Xm.reshape(input_shape)
        determined[m] = known.reshape(input_shape)
        info.append(layers)
    return images, determined, info
