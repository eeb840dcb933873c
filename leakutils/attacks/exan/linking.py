"""Connected groups of linked unit vectors, in memory linear in the number of vectors.

Two unit rows ``u_i, u_j`` are *linked* when ``||u_i - u_j|| <= lim_ij`` (up to sign unless
``signed``), ``lim_ij = max(tol_i + tol_j, COS_RESOLUTION)``, measured as ``2 - 2 cos`` (see
:func:`.grouping.links`). :func:`components` returns the connected groups of the link graph,
each with whether it is a clique, without forming the ``n x n`` matrix:

1. **split**: project the rows on a seeded random unit direction ``r`` (for ``signed=False``
   the absolute value): linked rows project within ``lim_ij <= L`` of each other
   (``|r.u_i - r.u_j| <= ||u_i - u_j||``, and ``||a| - |b|| <= min(|a - b|, |a + b|)``), so a
   gap above ``L`` in the sorted projections separates rows no link joins. Blocks are split
   again along fresh directions (``SPLIT_TRIES``);
2. **clique test**: a block whose rows all lie within ``tol_i`` of their mean (oriented by
   sign when unsigned; minus a rounding margin), or all within ``COS_RESOLUTION / 2``, is a
   clique by the triangle inequality: one component, found in ``O(n K)``. With a small batch
   (M = 1, 2) nearly every unit is an ExAN of one of one or two samples and this is the usual
   case;
3. **exact fallback**: any other block gets the pairwise links in chunks of ``CHUNK_PAIRS``
   entries (the connectivity carried between chunks as labels), then a count of linked
   pairs per component for the clique flag: memory ``O(CHUNK_PAIRS + n)``.

The result is the same grouping as the all-pairs matrix: splits only separate unlinked rows
(with a margin for the rounding of ``2 - 2 cos``), the clique test is a sufficient condition
in exact arithmetic, and the fallback computes the same links. The one difference: a pair
whose ``2 - 2 cos`` lies within rounding (~``K eps``) of ``lim_ij^2`` inside a block that
passes the clique test is linked, where the matrix may have rounded it either way.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

#: float64 machine epsilon (the rows are compared in float64).
EPS64 = 2.0 ** -52

#: Smallest distance the ``2 - 2 cos`` formula resolves in float64 (``sqrt(4 eps)`` ~ 3e-8, with
#: margin): below it, candidate pairs are linked whatever the tolerance.
COS_RESOLUTION = 1e-7

#: Rounding margin of the clique test's distances to the mean (float64 rows of unit length:
#: a distance is computed to ~1e-15; 1e-13 leaves a wide margin).
MEAN_DISTANCE_MARGIN = 1e-13

#: Rounding of ``2 - 2 cos`` per dimension, in units of float64 eps: a dot product of ``K``
#: terms errs by up to ``K eps``; 64 K eps is far beyond it. A projection gap separates rows
#: only beyond ``sqrt(L^2 + COS_ROUNDING_PER_DIM K eps)``, so no pair that rounding links is cut.
COS_ROUNDING_PER_DIM = 64.0

#: Fresh random directions tried on a block that neither passes the clique test nor splits.
SPLIT_TRIES = 3

#: Seed of the random projection directions (the grouping is deterministic).
SPLIT_SEED = 0

#: Entries of the pairwise link matrix computed at once by the exact fallback (~32 MB float64).
CHUNK_PAIRS = 1 << 22


def link_block(ua: torch.Tensor, ub: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor, signed: bool) -> torch.Tensor:
    """Boolean ``(len(ua), len(ub))``: linked pairs by ``2 - 2 cos <= max(t_a + t_b, COS_RESOLUTION)^2``."""
    cos = ua @ ub.T
    if not signed:
        cos = cos.abs()
    lim = torch.clamp(ta[:, None] + tb[None, :], min=COS_RESOLUTION)
    return 2.0 - 2.0 * cos <= lim * lim


def components(u: torch.Tensor, tol: torch.Tensor, *, signed: bool) -> list[tuple[np.ndarray, bool]]:
    """Connected groups of linked rows of ``u`` (unit rows, float64), each with whether it is a clique.

    Parameters
    ----------
    u : torch.Tensor
        ``(n, K)`` float64 rows of unit length (or zero).
    tol : torch.Tensor
        ``(n,)`` float64 per-row tolerances ``tol_i`` (half the grouping ``rtol`` plus the
        row's noise allowance).
    signed : bool
        Compare directions with sign (columns) or up to sign (rows).

    Returns
    -------
    list of (numpy int64 array, bool)
        Member indices (ascending) and the clique flag, ordered by smallest member.
    """
    n = u.shape[0]
    if n == 0:
        return []
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    out: list = []
    single: list = []
    stack = [(torch.arange(n), 0)]
    while stack:
        idx, tries = stack.pop()
        if idx.numel() == 1:
            single.append(int(idx[0]))
            continue
        if _is_clique(u[idx], tol[idx], signed):
            out.append((np.sort(idx.numpy()), True))
            continue
        parts = _split(u[idx], tol[idx], signed, gen)
        if len(parts) > 1:
            stack.extend((idx[p], 0) for p in parts)
        elif tries + 1 < SPLIT_TRIES:
            stack.append((idx, tries + 1))
        else:
            out.extend((np.sort(idx.numpy()[m]), c) for m, c in _exact(u[idx], tol[idx], signed))
    if single:  # a row is linked to itself unless it is zero (as the all-pairs matrix says)
        s = torch.tensor(single)
        cos = (u[s] * u[s]).sum(1)
        lim = torch.clamp(2 * tol[s], min=COS_RESOLUTION)
        self_linked = (2.0 - 2.0 * (cos if signed else cos.abs()) <= lim * lim).tolist()
        out.extend((np.array([i]), ok) for i, ok in zip(single, self_linked))
    out.sort(key=lambda mc: int(mc[0][0]))
    return out


def _is_clique(u: torch.Tensor, tol: torch.Tensor, signed: bool) -> bool:
    """Sufficient test: every row within ``tol_i`` (or all within ``COS_RESOLUTION / 2``) of one point."""
    if not signed:  # orient by the first row; any orientation that passes proves the links
        s = torch.where(u @ u[0] < 0, -1.0, 1.0).to(u.dtype)
        u = u * s[:, None]
    delta = torch.linalg.vector_norm(u - u.mean(0), dim=1) + MEAN_DISTANCE_MARGIN
    return bool((delta <= tol).all()) or bool((delta <= COS_RESOLUTION / 2).all())


def _split(u: torch.Tensor, tol: torch.Tensor, signed: bool, gen: torch.Generator) -> list[torch.Tensor]:
    """Index sets of ``u`` that no link joins, from gaps in one random projection."""
    r = torch.randn(u.shape[1], generator=gen, dtype=u.dtype)
    r = r / torch.linalg.vector_norm(r)
    p = u @ r
    if not signed:
        p = p.abs()
    L = max(2.0 * float(tol.max()), COS_RESOLUTION)
    gap = math.sqrt(L * L + COS_ROUNDING_PER_DIM * u.shape[1] * EPS64) + MEAN_DISTANCE_MARGIN
    order = torch.argsort(p)
    cut = torch.nonzero(torch.diff(p[order]) > gap).flatten() + 1
    bounds = [0] + cut.tolist() + [order.numel()]
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]


def _exact(u: torch.Tensor, tol: torch.Tensor, signed: bool) -> list[tuple[np.ndarray, bool]]:
    """All pairwise links, computed in chunks: components and clique flags."""
    n = u.shape[0]
    rows = max(1, CHUNK_PAIRS // n)
    labels = np.arange(n)
    for a in range(0, n, rows):
        blk = link_block(u[a:a + rows], u, tol[a:a + rows], tol, signed).numpy()
        i, j = np.nonzero(blk)
        # carry the connectivity found so far as edges to each label's representative
        src = np.concatenate([i + a, np.arange(n)])
        dst = np.concatenate([j, labels])
        graph = sp.coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        first = np.full(labels.max() + 1, n)
        np.minimum.at(first, labels, np.arange(n))
        labels = first[labels]
    pairs = np.zeros(n, dtype=np.int64)
    for a in range(0, n, rows):
        blk = link_block(u[a:a + rows], u, tol[a:a + rows], tol, signed).numpy()
        i, j = np.nonzero(blk)
        same = labels[i + a] == labels[j]
        pairs += np.bincount(labels[i + a][same], minlength=n)
    out = []
    for lab in np.unique(labels):
        members = np.flatnonzero(labels == lab)
        out.append((members, bool(pairs[lab] == members.size ** 2)))
    return out
