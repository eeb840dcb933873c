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

This is the one-hidden-layer case of the differential attack of Carlini, Jagielski and
Mironov, "Cryptanalytic Extraction of Neural Network Models", CRYPTO 2020, in the spirit of
the equation-solving attacks of Tramer et al., "Stealing Machine Learning Models via
Prediction APIs", USENIX Security 2016.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = ["QueryCounter", "Extracted", "extract", "align", "agreement", "as_oracle"]


class QueryCounter:
    """Wrap a black box ``f: (B, D) float64 -> (B, K)`` and count the inputs it was asked about."""

    def __init__(self, f: Callable[[np.ndarray], np.ndarray]):
        self.f, self.queries = f, 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        self.queries += x.shape[0]
        return np.asarray(self.f(x), dtype=np.float64)


def as_oracle(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A black box of a torch model: numpy float64 inputs ``(B, D)`` to logits ``(B, K)``, in float64."""
    m = copy.deepcopy(model).double().eval()

    def f(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return m(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return f


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
        of the output layer's least squares, ``outputs`` (K), ``complete`` (residual <= 1e-6).
    """

    W: np.ndarray
    b: np.ndarray
    A: np.ndarray
    c: np.ndarray
    queries: int
    diagnostics: dict = field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The extracted network's logits for ``x`` ``(B, D)``."""
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


def _jacobian(f, x: np.ndarray, h: float) -> np.ndarray:
    """Forward-difference Jacobian ``(K, D)``: exact on a linear piece wider than ``h``."""
    D = x.shape[0]
    pts = np.vstack([x, x + h * np.eye(D)])
    y = f(pts)
    return (y[1:] - y[0]).T / h


class _TooManyKinks(Exception):
    pass


def _kinks(f, x0, d, t0, t1, tol, limit, found=None, depth=0, ends=None) -> list:
    """Critical points of ``t -> f(x0 + t d)`` in ``[t0, t1]`` by recursive bisection.

    A line crosses each hidden unit's hyperplane at most once, so more than ``limit`` points
    raise :class:`_TooManyKinks` (rounded or noisy outputs bend everywhere).
    """
    found = [] if found is None else found
    if ends is None:
        ends = f(np.vstack([x0 + t0 * d, x0 + t1 * d]))
    y0, y1 = ends
    tm = 0.5 * (t0 + t1)
    ym = f((x0 + tm * d)[None])[0]
    lin = 0.5 * (y0 + y1)
    scale = max(1.0, float(np.abs(ym).max()))
    if np.abs(ym - lin).max() <= 1e-12 * scale and depth > 3:
        return found
    if t1 - t0 <= tol:
        found.append(tm)
        if len(found) > limit:
            raise _TooManyKinks
        return found
    _kinks(f, x0, d, t0, tm, tol, limit, found, depth + 1, (y0, ym))
    return _kinks(f, x0, d, tm, t1, tol, limit, found, depth + 1, (ym, y1))


def _refine(f, x0, d, t, delta):
    """Place a critical point to rounding precision: intersect the two linear pieces beside it.

    Bisection leaves ``t`` uncertain by its tolerance; the pieces ``y(t) = y_L + s_L (t - t_L)``
    on the left and right are each exact from two queries, and their crossing is the kink.
    """
    ts = t + delta * np.array([-2.0, -1.0, 1.0, 2.0])
    y = f(x0 + ts[:, None] * d)
    sL, sR = (y[1] - y[0]) / delta, (y[3] - y[2]) / delta
    ds = sL - sR
    den = float(ds @ ds)
    if den <= 1e-24 * max(1.0, float(sL @ sL)):
        return t  # no measurable bend: keep the bisection's estimate
    # y[1] + sL (tau - ts[1]) = y[2] + sR (tau - ts[2]), in least squares over the K outputs
    rhs = (y[2] - sR * ts[2]) - (y[1] - sL * ts[1])
    tau = float(ds @ rhs) / den
    return tau if abs(tau - t) <= delta else t


def _search_line(f, x0, d, span, hidden, delta, h, rows: list, biases: list) -> int:
    """Find the critical points on ``x0 + t d`` and append each new unit's row and bias.

    Returns the number of critical points on the line.
    """
    try:
        ts = np.array(_kinks(f, x0, d, -span, span, 1e-9 * span, hidden))
    except _TooManyKinks:
        raise ValueError(
            f"the black box bends at more than {hidden} points along one line, but a one-hidden-layer ReLU "
            f"network of width {hidden} crosses each unit's hyperplane at most once: it is wider or deeper "
            f"than assumed, or its outputs are rounded or noisy (this attack needs exact logits)") from None
    gaps = np.diff(np.concatenate([[-np.inf], ts, [np.inf]]))
    for k, t in enumerate(ts):
        # stencils stay inside the two pieces beside this kink: a quarter of the gap to its neighbours
        dk = min(delta, 0.25 * float(min(gaps[k], gaps[k + 1])))
        if dk < 1e-6:
            continue  # two kinks almost coincide on this line; other lines will cross these units
        if rows:  # a known unit's hyperplane? Then no Jacobians are needed (they cost 2 (D + 1) queries)
            Wk, bk = np.array(rows), np.array(biases)
            with np.errstate(divide="ignore", invalid="ignore"):
                tk = -(Wk @ x0 + bk) / (Wk @ d)
            if np.any(np.abs(tk - t) <= 1e-6 * span):
                continue
        t = _refine(f, x0, d, t, dk)
        hk = min(h, 0.01 * dk)
        M = _jacobian(f, x0 + (t + dk) * d, hk) - _jacobian(f, x0 + (t - dk) * d, hk)
        _, sv, Vt = np.linalg.svd(M, full_matrices=False)
        if sv[0] == 0 or (len(sv) > 1 and sv[1] > 1e-6 * sv[0]):
            continue  # two units bend at once (or noise): skip this point
        w = Vt[0]  # orientation (which side is active) is settled by the fit in extract
        bias = -float(w @ (x0 + t * d))
        if any(abs(abs(float(w @ r)) - 1.0) < 1e-6 and abs(bias - np.sign(float(w @ r)) * br) < 1e-6 * (1 + abs(br))
               for r, br in zip(rows, biases)):
            continue  # a unit seen before
        rows.append(w)
        biases.append(bias)
    return len(ts)


def extract(oracle: Callable[[np.ndarray], np.ndarray], input_dim: int, hidden: int, *, lines: int = 4,
            max_lines: int | None = None,
            span: float | None = None, scale: float = 1.0, seed: int = 0, fit_queries: int | None = None,
            delta: float = 1e-2, h: float = 1e-4, strict: bool = True) -> Extracted:
    """Recover ``W, b, A, c`` of ``f(x) = A ReLU(W x + b) + c`` from queries, in float64.

    Parameters
    ----------
    oracle : callable
        The black box: numpy ``(B, D)`` float64 to logits ``(B, K)``. Wrap it in a
        :class:`QueryCounter` to count queries (done here if it is not one).
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
    seed : int
    fit_queries : int, optional
        Random inputs for the output layer's least squares (default ``2 (hidden + D + 1)``).
    delta, h : float
        Jacobians are taken ``delta`` to each side of a critical point along the line, by
        forward differences of step ``h`` (exact on a linear piece; larger steps lose fewer
        digits to rounding, but must stay inside the piece: a stencil that crosses another
        unit's hyperplane gives a jump of rank above one, and the point is skipped).
    strict : bool
        With False, a search that found too few units returns what it found (with
        ``diagnostics["complete"] = False`` and the fit residual) instead of raising; the
        Chapter 6 panel uses this to show a search with too few lines.

    Returns
    -------
    Extracted

    Raises
    ------
    ValueError
        The black box does not behave like the assumed architecture: more critical points
        on one line, or more distinct critical hyperplanes, than ``hidden`` units (also the
        sign of rounded or noisy outputs), too few found to explain it, or an output
        layer that the least squares cannot fit (relative residual above 1e-6). Also bad sizes.
    """
    if not isinstance(input_dim, int) or input_dim < 1 or not isinstance(hidden, int) or hidden < 1:
        raise ValueError("input_dim and hidden must be positive integers")
    max_lines = 4 * lines if max_lines is None else max_lines
    if not isinstance(lines, int) or lines < 1 or not isinstance(max_lines, int) or max_lines < lines:
        raise ValueError(f"need integers 1 <= lines <= max_lines, got lines={lines!r}, max_lines={max_lines!r}")
    f = oracle if isinstance(oracle, QueryCounter) else QueryCounter(oracle)
    span = 4.0 * np.sqrt(input_dim) * scale if span is None else float(span)
    rng = np.random.default_rng(seed)
    K = f(np.zeros((1, input_dim))).shape[1]
    rows, biases = [], []
    found = 0

    def search_line():
        x0 = rng.normal(0.0, scale, input_dim)
        d = rng.normal(size=input_dim)
        d /= np.linalg.norm(d)
        return _search_line(f, x0, d, span, hidden, delta, h, rows, biases)

    def fit():
        """Orient the rows and fit the output layer; returns (W, b, A, c, relative residual)."""
        W, b = np.array(rows).reshape(-1, input_dim), np.array(biases)
        n_units = W.shape[0]
        # The jump of the Jacobian fixes a_i w_i^T but not which side of the hyperplane is active:
        # a ReLU(z) and a ReLU(-z) = a ReLU(z) - a z differ by a linear term. Fit the linear terms
        # too; a unit whose orientation is wrong shows up as -a_i w_i^T in them.
        H = np.hstack([np.maximum(X @ W.T + b, 0.0), X, np.ones((n_fit, 1))])
        sol, *_ = np.linalg.lstsq(H, Y, rcond=None)
        A0, L = sol[:n_units].T, sol[n_units:n_units + input_dim].T  # (K, N), (K, D)
        basis = np.stack([np.outer(A0[:, i], W[i]).ravel() for i in range(n_units)], 1)
        gamma, _, rank, _ = np.linalg.lstsq(basis, L.ravel(), rcond=None)
        flip = gamma < -0.5
        if rank < n_units:  # fewer linear-term equations (K D) than units: the flips are a small binary problem
            if n_units > 16:
                raise ValueError(f"cannot orient {n_units} units from {basis.shape[0]} linear-term equations (K D < N)")
            subsets = (np.arange(2 ** n_units)[:, None] >> np.arange(n_units)) & 1
            resid_flip = np.linalg.norm(L.ravel()[None] + subsets @ basis.T, axis=1)
            flip = subsets[int(np.argmin(resid_flip))].astype(bool)
        W[flip], b[flip] = -W[flip], -b[flip]
        H = np.hstack([np.maximum(X @ W.T + b, 0.0), np.ones((n_fit, 1))])
        sol, *_ = np.linalg.lstsq(H, Y, rcond=None)
        resid = float(np.linalg.norm(H @ sol - Y) / max(np.linalg.norm(Y), 1e-300))
        return W, b, sol[:-1].T, sol[-1], resid

    n_fit = fit_queries or 2 * (hidden + input_dim + 1)
    X, Y = None, None
    used, resid = 0, np.inf
    while True:
        while used < lines:
            found += search_line()
            used += 1
        if len(rows) > hidden:
            raise ValueError(f"the black box bends along {len(rows)} distinct hyperplanes, more than the {hidden} "
                             f"hidden units assumed: it is not a one-hidden-layer ReLU network of width {hidden}")
        if rows:
            if X is None:
                X = rng.normal(0.0, scale, (n_fit, input_dim))
                Y = f(X)
            W, b, A, c, resid = fit()
        if resid <= 1e-6 or used >= max_lines:
            break
        lines = used + 1  # a unit may have been missed: search one more line
    if not rows:
        raise ValueError("no critical point found: the black box is linear along every line searched. Increase "
                         "span or scale, or it has no active ReLU units")
    if resid > 1e-6 and strict:
        raise ValueError(f"the output layer does not fit the recovered hidden units (relative residual {resid:.1e}): "
                         f"found {len(rows)} of {hidden} units in {used} lines. Search more lines (max_lines), or "
                         f"the black box is not a one-hidden-layer ReLU network of width {hidden}")
    return Extracted(W=W, b=b, A=A, c=c, queries=f.queries,
                     diagnostics={"lines": used, "critical_points": found, "units_found": len(rows),
                                  "fit_residual": resid, "outputs": K, "complete": resid <= 1e-6})


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
    W_true, b_true, A_true = (np.asarray(a, dtype=np.float64) for a in (W_true, b_true, A_true))
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

    Returns
    -------
    dict
        ``agreement``: fraction of inputs with the same top-1 class, in [0, 1];
        ``max_logit_error``: the largest absolute logit difference; ``n``: B.
    """
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    f = oracle.f if isinstance(oracle, QueryCounter) else oracle
    y, y_hat = f(X), ex(X)
    return {"agreement": float((y.argmax(1) == y_hat.argmax(1)).mean()),
            "max_logit_error": float(np.abs(y - y_hat).max()), "n": int(X.shape[0])}
