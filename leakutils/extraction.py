"""Exact weight extraction of a one-hidden-layer ReLU network from logit queries (black box).

The attacker can query ``f(x) = A ReLU(W x + b) + c`` (logits, float64) and knows the
architecture (input size D, hidden width N, K logits), not the weights. Along a line
``x(t) = x0 + t d`` the function is piecewise linear in ``t``; it bends exactly where one
hidden unit's pre-activation ``w_i . x + b_i`` crosses zero (a *critical point*). There the
Jacobian of ``f`` jumps by a rank-one matrix,

    J(t* + 0) - J(t* - 0) = sign(w_i . d) a_i w_i^T ,

so the jump gives the row ``w_i`` up to a positive scale, with its orientation (the side
on which the unit is active), and ``b_i = -w_i . x(t*)``. With every row known, the output
layer ``A, c`` follows from a least-squares fit on further queries. Weights are
identifiable only up to a permutation of the hidden units and a positive scale per unit
(``ReLU(s z) = s ReLU(z)``): rows are returned with unit norm.

The attack checks its own assumptions and refuses rather than guess: the oracle's outputs
must be finite ``(B, K)`` arrays; the box must be piecewise linear along a line (second
differences vanish between critical points; a smooth box such as a tanh layer or softmax
probabilities is refused after a few hundred queries); it may bend at most ``N`` times on a
line and along at most ``N`` distinct hyperplanes; the output layer must fit the recovered
units on fresh queries. A query budget and a time budget bound the whole search.

This is the one-hidden-layer case of the differential attack of Carlini, Jagielski and
Mironov, "Cryptanalytic Extraction of Neural Network Models", CRYPTO 2020, in the spirit of
the equation-solving attacks of Tramer et al., "Stealing Machine Learning Models via
Prediction APIs", USENIX Security 2016.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .blackbox import (DEFAULT_MAX_SECONDS, QUERY_BUDGET_BASE, QUERY_BUDGET_PER_WEIGHT, BudgetExceededError,
                       ExtractionError, Guard, NotPiecewiseLinearError, QueryCounter, as_oracle, check_output)
from .critical_points import LINEAR_RTOL, search_line
from .validate import check_int, check_seed

__all__ = ["QueryCounter", "Extracted", "extract", "align", "agreement", "as_oracle", "ExtractionError",
           "NotPiecewiseLinearError", "BudgetExceededError", "LINEAR_RTOL", "QUERY_BUDGET_PER_WEIGHT",
           "QUERY_BUDGET_BASE", "DEFAULT_MAX_SECONDS", "FIT_RTOL"]

#: The output layer fits when the relative least-squares residual on the fit queries is below this.
FIT_RTOL = 1e-6


@dataclass
class Extracted:
    """Weights recovered from queries.

    Attributes
    ----------
    W : numpy.ndarray
        ``(N, D)`` float64 hidden-layer rows, each of unit Euclidean norm.
    b : numpy.ndarray
        ``(N,)`` hidden biases, on the same scale.
    A : numpy.ndarray
        ``(K, N)`` output weights (absorbing each unit's scale).
    c : numpy.ndarray
        ``(K,)`` output biases.
    queries : int
        Inputs sent to the black box.
    diagnostics : dict
        ``lines`` used, ``critical_points`` found, ``units_found``, ``fit_residual`` (relative)
        of the output layer's least squares, ``fit_rank`` and ``fit_condition`` of its matrix
        (``units + 1`` columns), ``outputs`` (K), ``seconds``, ``complete`` (residual <=
        :data:`FIT_RTOL` and full rank: every weight is determined by the queries).
    """

    W: np.ndarray
    b: np.ndarray
    A: np.ndarray
    c: np.ndarray
    queries: int
    diagnostics: dict = field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The extracted network's logits ``(B, K)`` for ``x`` ``(B, D)``.

        Raises
        ------
        ValueError
            ``x`` without ``D`` features per row.
        """
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != self.W.shape[1]:
            raise ValueError(f"inputs must have shape (B, {self.W.shape[1]}), got {x.shape}")
        return np.maximum(x @ self.W.T + self.b, 0.0) @ self.A.T + self.c

    def to_model(self, input_shape=None) -> nn.Module:
        """A float64 :class:`leakutils.models.MLP` (``fc1``, ``act1`` ReLU, ``out``) holding these weights.

        ``input_shape`` defaults to ``(D,)``; pass e.g. ``(1, 28, 28)`` to feed images. The model
        computes the same function as the black box, with hidden units permuted and rescaled.
        """
        from . import metamodel as mm

        (N, D), K = self.W.shape, self.A.shape[0]
        flat = mm.flatten(*(torch.from_numpy(np.ascontiguousarray(v)) for v in (self.W, self.b, self.A, self.c)))
        return mm.to_model(flat, mm.Sizes(D, N, K), input_shape)


def _positive_real(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _orient_and_fit(rows, biases, X, Y, input_dim):
    """Orient the rows and fit the output layer on ``X, Y``; returns (W, b, A, c, residual, rank, cond).

    The Jacobian's jump fixes ``a_i w_i^T`` but not which side of the hyperplane is active:
    ``a ReLU(z)`` and ``a ReLU(-z) = a ReLU(z) - a z`` differ by a linear term. The linear
    terms are fitted too; a unit whose orientation is wrong shows up as ``-a_i w_i^T`` in them.
    """
    W, b = np.array(rows).reshape(-1, input_dim), np.array(biases)
    n_units, n_fit = W.shape[0], X.shape[0]
    H = np.hstack([np.maximum(X @ W.T + b, 0.0), X, np.ones((n_fit, 1))])
    sol, *_ = np.linalg.lstsq(H, Y, rcond=None)
    A0, L = sol[:n_units].T, sol[n_units:n_units + input_dim].T  # (K, N), (K, D)
    basis = np.stack([np.outer(A0[:, i], W[i]).ravel() for i in range(n_units)], 1)
    gamma, _, rank, _ = np.linalg.lstsq(basis, L.ravel(), rcond=None)
    flip = gamma < -0.5
    if rank < n_units:  # fewer linear-term equations (K D) than units: the flips are a small binary problem
        if n_units > 16:
            raise ExtractionError(f"cannot orient {n_units} units from {basis.shape[0]} linear-term equations "
                                  f"(K D < N)")
        subsets = (np.arange(2 ** n_units)[:, None] >> np.arange(n_units)) & 1
        resid_flip = np.linalg.norm(L.ravel()[None] + subsets @ basis.T, axis=1)
        flip = subsets[int(np.argmin(resid_flip))].astype(bool)
    W[flip], b[flip] = -W[flip], -b[flip]
    H = np.hstack([np.maximum(X @ W.T + b, 0.0), np.ones((n_fit, 1))])
    sol, _, rank, sv = np.linalg.lstsq(H, Y, rcond=None)
    resid = float(np.linalg.norm(H @ sol - Y) / max(np.linalg.norm(Y), 1e-300))
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
    return W, b, sol[:-1].T, sol[-1], resid, int(rank), cond


def extract(oracle: Callable[[np.ndarray], np.ndarray], input_dim: int, hidden: int, *, lines: int = 4,
            max_lines: int | None = None, span: float | None = None, scale: float = 1.0, seed: int = 0,
            fit_queries: int | None = None, delta: float = 1e-2, h: float = 1e-4, strict: bool = True,
            max_queries: int | None = None, max_seconds: float = DEFAULT_MAX_SECONDS) -> Extracted:
    """Recover ``W, b, A, c`` of ``f(x) = A ReLU(W x + b) + c`` from queries, in float64.

    Parameters
    ----------
    oracle : callable
        The black box: numpy ``(B, D)`` float64 to logits ``(B, K)``. Wrap it in a
        :class:`QueryCounter` to count queries (done here if it is not one). Every answer is
        checked: a 2-D finite array with one row per input.
    input_dim : int
        D.
    hidden : int
        N, the assumed hidden width.
    lines : int
        Random lines ``x0 + t d`` searched for critical points before the first fit.
    max_lines : int, optional
        While the output layer does not fit (a unit was missed), one more line is searched,
        up to ``max_lines`` in all (default ``4 lines``).
    span : float, optional
        ``t`` ranges over ``[-span, span]``; ``x0 ~ N(0, scale^2)``, ``d`` uniform on the sphere.
        Default ``4 sqrt(D) scale``: a hyperplane ``w . x + b = 0`` is crossed at
        ``|t| ~ |w . x0| / |w . d| ~ sqrt(D) scale``.
    scale : float
        > 0, in the input's units.
    seed : int
    fit_queries : int, optional
        Random inputs for the output layer's least squares (default ``2 (hidden + D + 1)``);
        two more per unit are placed beside its hyperplane, so that every unit is active in the fit.
    delta, h : float
        Jacobians are taken ``delta`` to each side of a critical point along the line, by
        forward differences of step ``h`` (exact on a linear piece; larger steps lose fewer
        digits to rounding, but must stay inside the piece: a stencil that crosses another
        unit's hyperplane gives a jump of rank above one, and the point is skipped).
    strict : bool
        With False, a search that found too few units returns what it found (with
        ``diagnostics["complete"] = False`` and the fit residual) instead of raising; the
        Chapter 6 panel uses this to show a search with too few lines.
    max_queries : int, optional
        Query budget; default ``QUERY_BUDGET_PER_WEIGHT (N + 1) (D + 1) + QUERY_BUDGET_BASE``
        (126,760 for 784-16-10, 428,200 for 784-64-10: about four times the 29,710 and 113,634 they took).
    max_seconds : float
        Time budget in seconds (default :data:`DEFAULT_MAX_SECONDS`).

    Returns
    -------
    Extracted
        With ``diagnostics["complete"]`` True only when the output layer fits every fit query
        (relative residual <= :data:`FIT_RTOL`) with a full-rank system.

    Raises
    ------
    TypeError
        ``oracle`` is not callable; a size, ``lines``, ``fit_queries``, ``max_queries`` or ``seed``
        that is not an integer.
    ValueError
        Bad sizes or settings; the oracle fails on its first query (e.g. a wrong ``input_dim``).
    ExtractionError (a ValueError)
        The oracle's answers are not finite ``(B, K)`` arrays (NaN is named); the black box does
        not behave like the assumed architecture: more critical points on one line, or more
        distinct hyperplanes, than ``hidden`` units (also the sign of rounded or noisy
        outputs), or (with ``strict``) an output layer that does not fit.
    NotPiecewiseLinearError (an ExtractionError)
        The box is smooth along a line (tanh units, softmax probabilities): not a ReLU network.
    BudgetExceededError (an ExtractionError)
        ``max_queries`` or ``max_seconds`` spent; the message says how many were used.
    """
    if not callable(oracle):
        raise TypeError(f"oracle must be a callable (B, D) -> (B, K), got {type(oracle).__name__}")
    input_dim, hidden = check_int("input_dim", input_dim, 1), check_int("hidden", hidden, 1)
    lines = check_int("lines", lines, 1)
    max_lines = 4 * lines if max_lines is None else max_lines
    if isinstance(max_lines, bool) or not isinstance(max_lines, Integral) or max_lines < lines:
        raise ValueError(f"need integers 1 <= lines <= max_lines, got lines={lines!r}, max_lines={max_lines!r}")
    scale, delta, h = _positive_real("scale", scale), _positive_real("delta", delta), _positive_real("h", h)
    span = 4.0 * np.sqrt(input_dim) * scale if span is None else _positive_real("span", span)
    n_fit = 2 * (hidden + input_dim + 1) if fit_queries is None else check_int("fit_queries", fit_queries, 1)
    if max_queries is None:
        max_queries = QUERY_BUDGET_PER_WEIGHT * (hidden + 1) * (input_dim + 1) + QUERY_BUDGET_BASE
    max_queries, max_seconds = check_int("max_queries", max_queries, 1), _positive_real("max_seconds", max_seconds)
    seed = check_seed("seed", seed)
    counter = oracle if isinstance(oracle, QueryCounter) else QueryCounter(oracle)
    rng = np.random.default_rng(seed)
    rows, biases, points = [], [], []
    used = 0
    f = Guard(counter, input_dim, max_queries, max_seconds,
              lambda: f"{len(rows)} of {hidden} units found on {used} lines")
    t_start = time.perf_counter()
    f(np.vstack([np.zeros(input_dim), np.full(input_dim, scale)]))  # checks the box on 2 inputs
    K = f.K
    found = 0
    Xr = Yr = None
    XN, YN = np.zeros((0, input_dim)), np.zeros((0, K))
    resid, rank, cond = np.inf, 0, np.inf
    while True:
        while used < lines:
            x0 = rng.normal(0.0, scale, input_dim)
            d = rng.normal(size=input_dim)
            d /= np.linalg.norm(d)
            found += search_line(f, x0, d, span, hidden, delta, h, rows, biases, points)
            used += 1
        if len(rows) > hidden:
            raise ExtractionError(
                f"the black box bends along {len(rows)} distinct hyperplanes, more than the {hidden} hidden units "
                f"assumed: it is not a one-hidden-layer ReLU network of width {hidden}")
        if rows:
            if Xr is None:
                Xr = rng.normal(0.0, scale, (n_fit, input_dim))
                Yr = f(Xr)
            if XN.shape[0] < 2 * len(rows):  # two queries beside each new unit's hyperplane
                P, Wn = np.array(points[XN.shape[0] // 2:]), np.array(rows[XN.shape[0] // 2:])
                Xn = np.vstack([P + delta * Wn, P - delta * Wn])
                XN, YN = np.vstack([XN, Xn]), np.vstack([YN, f(Xn)])
            X, Y = np.vstack([Xr, XN]), np.vstack([Yr, YN])
            W, b, A, c, resid, rank, cond = _orient_and_fit(rows, biases, X, Y, input_dim)
        if (resid <= FIT_RTOL and rank == len(rows) + 1) or used >= max_lines:
            break
        lines = used + 1  # a unit may have been missed: search one more line
    if not rows:
        raise ExtractionError("no critical point found: the black box is linear along every line searched. "
                              "Increase span or scale, or it has no active ReLU units")
    complete = bool(resid <= FIT_RTOL and rank == len(rows) + 1)
    if not complete and strict:
        raise ExtractionError(
            f"the output layer does not fit the recovered hidden units (relative residual {resid:.1e}, rank {rank} "
            f"of {len(rows) + 1}): found {len(rows)} of {hidden} units in {used} lines. Search more lines "
            f"(max_lines), or the black box is not a one-hidden-layer ReLU network of width {hidden}")
    return Extracted(W=W, b=b, A=A, c=c, queries=counter.queries,
                     diagnostics={"lines": used, "critical_points": found, "units_found": len(rows),
                                  "fit_residual": resid, "fit_rank": rank, "fit_condition": cond, "outputs": K,
                                  "seconds": time.perf_counter() - t_start, "complete": complete})


def align(W_true: np.ndarray, b_true: np.ndarray, A_true: np.ndarray, ex: Extracted) -> dict:
    """Compare extracted weights with the true ones after matching hidden units and their scales.

    Each true row is scaled to unit norm (its scale moved into ``A``: the network computes
    the same function), then units are paired with scipy's linear sum assignment on
    ``1 - |cos|`` of the rows. Errors are therefore on the scale of unit-norm rows.

    Parameters
    ----------
    W_true, b_true, A_true : numpy.ndarray
        The true ``(N, D)``, ``(N,)`` and ``(K, N)`` weights (float64).
    ex : Extracted
        With ``n <= N`` units (fewer when the search was incomplete).

    Returns
    -------
    dict
        ``perm`` ``(n,)`` int (true unit of each extracted unit), ``max_error`` (worst absolute
        error over W, b and A after alignment), ``errors`` per tensor.

    Raises
    ------
    ValueError
        Shapes that do not fit together, or a true row of (near) zero norm: such a unit never
        bends the function, so it cannot be extracted, and its direction is undefined.
    """
    if not isinstance(ex, Extracted):
        raise TypeError(f"ex must be an Extracted (the result of extract), got {type(ex).__name__}")
    W_true, b_true, A_true = (np.asarray(a, dtype=np.float64) for a in (W_true, b_true, A_true))
    if not all(np.isfinite(a).all() for a in (W_true, b_true, A_true)):
        raise ValueError("the true weights contain NaN or infinite values")
    if W_true.ndim != 2 or W_true.shape[1] != ex.W.shape[1] or b_true.shape != (W_true.shape[0],) \
            or A_true.shape != (ex.A.shape[0], W_true.shape[0]) or ex.W.shape[0] > W_true.shape[0]:
        raise ValueError(f"true weights W {W_true.shape}, b {b_true.shape}, A {A_true.shape} do not fit the "
                         f"extracted W {ex.W.shape}, A {ex.A.shape}")
    n = np.linalg.norm(W_true, axis=1)
    if n.min() <= 1e-12 * max(n.max(), 1e-300):
        raise ValueError("a true hidden unit has an all-zero weight row; drop it before aligning")
    Wt, bt, At = W_true / n[:, None], b_true / n, A_true * n[None, :]
    cost = 1.0 - np.abs(ex.W @ Wt.T)
    r, cidx = linear_sum_assignment(cost)
    perm = np.empty(ex.W.shape[0], dtype=int)
    perm[r] = cidx
    errs = {"W": float(np.abs(ex.W - Wt[perm]).max()), "b": float(np.abs(ex.b - bt[perm]).max()),
            "A": float(np.abs(ex.A - At[:, perm]).max())}
    return {"perm": perm, "errors": errs, "max_error": max(errs.values())}


def agreement(ex: Extracted, oracle: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> dict:
    """Functional agreement of the extracted network with the black box on inputs ``X`` ``(B, D)``.

    The queries made here are not counted against the attack (``X`` is held-out data used
    only to judge it).

    Raises
    ------
    TypeError
        ``ex`` is not an :class:`Extracted` or ``oracle`` is not callable.
    ValueError
        ``X`` not of shape ``(B, D)`` with B >= 1, or not finite.

    Returns
    -------
    dict
        ``agreement``: fraction of inputs with the same top-1 class, in [0, 1];
        ``max_logit_error``: the largest absolute logit difference; ``n``: B.
    """
    if not isinstance(ex, Extracted):
        raise TypeError(f"ex must be an Extracted (the result of extract), got {type(ex).__name__}")
    if not callable(oracle):
        raise TypeError(f"oracle must be a callable (B, D) -> (B, K), got {type(oracle).__name__}")
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] != ex.W.shape[1] or not np.isfinite(X).all():
        raise ValueError(f"X must be a finite array (B, {ex.W.shape[1]}) with B >= 1, got shape {X.shape}")
    f = oracle.f if isinstance(oracle, QueryCounter) else oracle
    y = check_output(np.asarray(f(X), dtype=np.float64), X.shape[0], ex.A.shape[0])
    y_hat = ex(X)
    return {"agreement": float((y.argmax(1) == y_hat.argmax(1)).mean()),
            "max_logit_error": float(np.abs(y - y_hat).max()), "n": int(X.shape[0])}
