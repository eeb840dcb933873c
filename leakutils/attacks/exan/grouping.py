"""B.1 of Pan et al. 2022: units whose gradient vectors are parallel, grouped into samples.

Vectors are compared as unit vectors (nothing is divided by a gradient entry): two units are
*linked* when their unit vectors lie within a tolerance of each other, where the tolerance
is the grouping ``rtol`` (rounding) plus, per unit, the noise-to-signal ratio of its vector
(see :mod:`.noise`). A group is a connected set of linked units that is also a clique (all
pairs linked), so a chain of near-misses never becomes one sample. Groups are found without
the ``n x n`` matrix of pairs (:mod:`.linking`).
"""
from __future__ import annotations

import numpy as np
import torch

from .._common import check_rtol
from .linking import COS_RESOLUTION, link_block  # COS_RESOLUTION: part of this module's API
from .linking import components as _components
from .noise import LINK_Z, MAX_UNIT_NSR


def unit_rows(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``v`` scaled to unit length (rows of zeros stay zero) and their norms."""
    n = torch.linalg.vector_norm(v, dim=1)
    return v / torch.where(n > 0, n, torch.ones_like(n))[:, None], n


def _tol(u: torch.Tensor, rtol: float, spread: torch.Tensor | None) -> torch.Tensor:
    return torch.full((u.shape[0],), rtol / 2, dtype=u.dtype) if spread is None else rtol / 2 + spread


def links(u: torch.Tensor, rtol: float, *, signed: bool, spread: torch.Tensor | None = None) -> np.ndarray:
    """Boolean matrix: unit rows ``i, j`` within ``rtol + spread_i + spread_j`` (up to sign unless ``signed``).

    Distances come from ``||u_i - u_j||^2 = 2 - 2 cos`` (one matrix product), which resolves them
    only down to ``COS_RESOLUTION``: closer pairs are linked whatever the tolerance (the
    whole-update check, not the grouping, decides what is recovered). Memory ``n^2``: for
    small sets (teaching, tests); :func:`components` never forms this matrix.
    """
    tol = _tol(u, rtol, spread)
    return link_block(u, u, tol, tol, signed).numpy()


def components(u: torch.Tensor, rtol: float, *, signed: bool,
               spread: torch.Tensor | None = None) -> list[tuple[np.ndarray, bool]]:
    """Connected groups of linked rows of ``u``, each with whether it is a clique.

    The same groups as :func:`links` would give, in memory linear in the rows and near-linear
    time when the rows form tight clusters (:mod:`.linking`).
    """
    return _components(u.to(torch.float64), _tol(u, rtol, spread).to(torch.float64), signed=signed)


def cliques(u: torch.Tensor, rtol: float, *, signed: bool, min_size: int,
            spread: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Index sets of rows of ``u`` that are all linked to each other (size >= ``min_size``)."""
    return [torch.from_numpy(m) for m, clique in components(u, rtol, signed=signed, spread=spread)
            if m.size >= min_size and clique]


def _spread(norms: torch.Tensor, noise: float | None, dim: int) -> torch.Tensor | None:
    if noise is None or noise <= 0:
        return None
    return LINK_Z * noise * dim ** 0.5 / torch.where(norms > 0, norms, torch.ones_like(norms))


def group_exans(columns: torch.Tensor, rows: torch.Tensor | None = None, *, rtol: float = 1e-5,
                min_size: int = 2, column_noise: float | None = None,
                row_noise: float | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Group units whose gradient vectors are parallel: the ExAN groups of B.1.

    Parameters
    ----------
    columns : torch.Tensor
        Shape ``(K, N)``: per unit ``j``, a vector that is positively proportional to one
        sample's loss vector when ``j`` is an ExAN (the columns of the output layer's weight
        gradient). Any float dtype; compared in float64.
    rows : torch.Tensor, optional
        Shape ``(N, D)``: per unit, a second vector that is proportional (either sign) to the
        sample's input of the layer (the rows of that layer's weight gradient, with the bias
        gradient appended). Units must agree in both to be grouped.
    rtol : float
        Two units are linked when their unit vectors differ by at most ``rtol`` in Euclidean
        norm (columns), respectively up to sign (rows), plus the noise allowance below.
        ``1e-5`` sits far above float32 rounding (~1e-7) and far below the distance between
        different samples' vectors.
    min_size : int
        Smallest group returned as a sample (the paper needs 2: one unit alone cannot be told
        from a unit shared by several samples).
    column_noise, row_noise : float, optional
        Estimated standard deviation of the noise per entry of ``columns`` / ``rows`` (absolute
        units, see :mod:`leakutils.attacks.exan.noise`). Each unit's tolerance then grows by
        ``LINK_Z * noise * sqrt(dim) / ||vector||``, and units whose column is noise-dominated
        (ratio above ``MAX_UNIT_NSR``) are not live. None: a clean update.

    Returns
    -------
    (groups, live) : (list of torch.Tensor, torch.Tensor)
        ``groups``: int64 unit indices per group, largest first (ties: lowest index first);
        ``live``: bool ``(N,)``, units with a non-zero (not noise-dominated) column and row.
        Units dead for the whole batch have zero gradients (0/0 for a ratio) and are masked out.

    Raises
    ------
    ValueError
        Mismatched shapes, a bad ``rtol``, ``min_size`` or noise level.
    """
    rtol = check_rtol(rtol)
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    for name, v in (("column_noise", column_noise), ("row_noise", row_noise)):
        if v is not None and (not isinstance(v, (int, float)) or not v >= 0 or v != v):
            raise ValueError(f"{name} must be a non-negative number (a standard deviation) or None, got {v!r}")
    if not isinstance(columns, torch.Tensor) or columns.ndim != 2:
        raise ValueError(f"columns must be a tensor of shape (K, N), got {getattr(columns, 'shape', columns)!r}")
    for name, t in (("columns", columns), ("rows", rows)):
        if isinstance(t, torch.Tensor) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or infinite entries: the update is corrupt (check the client's "
                             f"loss and learning rate) and no grouping can be read from it")
    cols = columns.detach().to(torch.float64).T  # (N, K)
    cu, cn = unit_rows(cols)
    c_spread = _spread(cn, column_noise, cols.shape[1])
    live = cn > 0
    if c_spread is not None:
        live &= c_spread / LINK_Z <= MAX_UNIT_NSR
    ru = r_spread = None
    if rows is not None:
        if not isinstance(rows, torch.Tensor) or rows.ndim != 2 or rows.shape[0] != cols.shape[0]:
            raise ValueError(f"rows must have shape (N, D) with N = {cols.shape[0]}, "
                             f"got {tuple(getattr(rows, 'shape', ()))}")
        ru, rn = unit_rows(rows.detach().to(torch.float64))
        r_spread = _spread(rn, row_noise, rows.shape[1])
        live &= rn > 0
        if r_spread is not None:
            live &= r_spread / LINK_Z <= MAX_UNIT_NSR
    idx = torch.nonzero(live).flatten()
    if idx.numel() == 0:
        return [], live
    groups = []
    sub_c = None if c_spread is None else c_spread[idx]
    for members in cliques(cu[idx], rtol, signed=True, min_size=min_size, spread=sub_c):
        if ru is not None:  # split each column group by its rows
            sel = idx[members]
            sub = cliques(ru[sel], rtol, signed=False, min_size=min_size,
                          spread=None if r_spread is None else r_spread[sel])
            groups.extend(sel[s] for s in sub)
        else:
            groups.append(idx[members])
    groups.sort(key=lambda g: (-g.numel(), int(g[0])))
    return groups, live


def parallel_rows(R: torch.Tensor, cand: torch.Tensor, rtol: float, need: int,
                  noise: float | None = None) -> torch.Tensor:
    """Largest set of candidate rows of ``R`` parallel to each other (either sign), or none."""
    if cand.numel() == 0:
        return cand
    ru, rn = unit_rows(R[cand])
    ok = rn > 0
    cand, ru, rn = cand[ok], ru[ok], rn[ok]
    if cand.numel() == 0:
        return cand
    members, clique = max(components(ru, rtol, signed=False, spread=_spread(rn, noise, R.shape[1])),
                          key=lambda mc: mc[0].size)
    if members.size < need or not clique:
        return cand[:0]
    return cand[torch.from_numpy(members)]


def loss_vector_ratios(column: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The paper's ratio vector ``r_c = g_c / g_d`` of one gradient column, with a safe denominator.

    The denominator class ``d`` is the column's entry of largest magnitude (never a zero
    entry). For a loss vector that is the true class (``|p_y - 1| = sum_{c != y} p_c`` is the
    largest entry), so the ratio is ``1`` at the label and ``p_c / (p_y - 1) <= 0`` elsewhere:
    no division by zero, and no sign flip when the label is the first class (the reproduction
    of seed 000 divided by class 1 and took the argmin).

    Parameters
    ----------
    column : torch.Tensor
        Shape ``(K,)``, a column of the output layer's weight gradient.

    Returns
    -------
    (ratios, denominator) : (torch.Tensor float64 of shape (K,), int)

    Raises
    ------
    TypeError
        Not a tensor.
    ValueError
        A column that is not one-dimensional, or zero.
    """
    if not isinstance(column, torch.Tensor):
        raise TypeError(f"column must be a tensor, got {type(column).__name__}")
    c = column.detach().to(torch.float64)
    if c.ndim != 1:
        raise ValueError(f"column must be one-dimensional (K,), got shape {tuple(c.shape)}")
    d = int(torch.argmax(c.abs()))
    if not float(c[d].abs()) > 0:
        raise ValueError("the column is zero (a unit that no sample activates): it has no ratio; mask it out")
    return c / c[d], d
