"""Critical points of a black box along a line, and the hidden unit behind each (Chapter 6).

Along ``x(t) = x0 + t d`` the logits of a one-hidden-layer ReLU network are piecewise linear
in ``t``; they bend where a unit's pre-activation crosses zero. Breadth-first bisection finds
the bends (a smooth box bends everywhere and is refused early, with a second-difference
test that tells it from a wider or deeper ReLU network), and the rank-one jump of the
Jacobian at each bend gives the unit's row. Carlini, Jagielski and Mironov, "Cryptanalytic
Extraction of Neural Network Models", CRYPTO 2020.
"""
from __future__ import annotations

import numpy as np

from .blackbox import ExtractionError, NotPiecewiseLinearError
from .validate import check_callable, check_int, check_number

__all__ = ["search_line", "jacobian", "LINEAR_RTOL", "MIN_DEPTH", "SMOOTH_PROBE_STEP", "SMOOTH_PROBE_AT",
           "SMOOTH_RATIO_BAND", "NOISE_EPS", "DUPLICATE_ANGLE", "DUPLICATE_DISTANCE_RTOL", "RANK_ONE_RTOL"]

#: A segment counts as linear when its midpoint lies on the chord to this relative precision
#: (relative to ``max(1, |f|)``): float64 logits of a 784-wide network agree across batch
#: compositions to about 1e-15, so 1e-12 leaves three digits of margin for round-off.
LINEAR_RTOL = 1e-12
#: Segments are always split this many times before the linearity test may stop the search
#: (a segment whose midpoint happens to lie on the chord is not trusted at the coarsest levels).
MIN_DEPTH = 3
#: Step of the smoothness probe, as a fraction of the line's half-length ``span``.
SMOOTH_PROBE_STEP = 1e-3
#: Positions of the smoothness probe on a line, as fractions of ``span``.
SMOOTH_PROBE_AT = (-0.37, -0.21, -0.06, 0.11, 0.26, 0.43)
#: A smooth function's second difference shrinks by 4 when the step halves; a piecewise-linear
#: one's by 2 (a kink inside the stencil) or to 0 (no kink). Ratios inside this band vote "smooth".
SMOOTH_RATIO_BAND = (3.2, 4.8)
#: Second differences below this many float64 epsilons of ``max(1, |f|)`` are round-off.
NOISE_EPS = 256
#: Two critical points belong to the same unit when their rows differ by less than this angle
#: (radians) and the new point lies on the known hyperplane to this relative distance
#: (relative to ``1 + |x|``). Rows are recovered to ~1e-9 from exact float64 logits and to
#: ~1e-6 when the logits carry 1e-13 relative round-off; distinct units of a network are far
#: further apart.
DUPLICATE_ANGLE = 1e-4
DUPLICATE_DISTANCE_RTOL = 1e-4
#: A Jacobian jump is accepted as one unit's (rank one) when its second singular value is below
#: this fraction of the first.
RANK_ONE_RTOL = 1e-6


def jacobian(f, x: np.ndarray, h: float) -> np.ndarray:
    """Forward-difference Jacobian ``(K, D)`` of ``f`` at ``x`` ``(D,)``: exact on a linear piece wider than ``h``.

    Parameters
    ----------
    f : callable
        The black box (usually a :class:`leakutils.blackbox.Guard`): float64 ``(B, D)`` to ``(B, K)``.
    x : numpy.ndarray
        The point, float64 ``(D,)``, finite.
    h : float
        The step, a finite number > 0 (input units).

    Raises
    ------
    TypeError
        ``f`` not callable, ``x`` not a numpy array, ``h`` not a number.
    ValueError
        ``x`` not one-dimensional or not finite, ``h`` not positive.
    """
    check_callable("f", f, "mapping a float64 array (B, D) to logits (B, K)")
    x = _check_point("x", x)
    h = check_number("h", h, 0.0, lo_open=True)
    D = x.shape[0]
    pts = np.vstack([x, x + h * np.eye(D)])
    y = f(pts)
    return (y[1:] - y[0]).T / h


def _check_point(name: str, value, dim: int | None = None) -> np.ndarray:
    """A finite one-dimensional numpy array (of ``dim`` entries when given), as float64."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (D,), got {type(value).__name__}; "
                        f"convert with np.asarray(...)")
    if value.ndim != 1 or value.size == 0 or (dim is not None and value.shape[0] != dim):
        want = f"({dim},)" if dim is not None else "(D,) with D >= 1"
        raise ValueError(f"{name} must have shape {want}, got {value.shape}")
    if not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
        raise TypeError(f"{name} must be a real numpy array, got dtype {value.dtype}")
    value = value.astype(np.float64, copy=False)
    if not np.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return value


class _TooManyKinks(Exception):
    pass


def _kinks(f, x0, d, t0, t1, tol, limit) -> list:
    """Critical points of ``t -> f(x0 + t d)`` in ``[t0, t1]`` by breadth-first bisection.

    A segment whose midpoint lies on its chord (to :data:`LINEAR_RTOL`) holds no critical
    point; the others are halved until shorter than ``tol``. Each bending segment holds a
    critical point, and a line crosses each hidden unit's hyperplane at most once, so more
    than ``limit`` bending segments on one level raise :class:`_TooManyKinks`: a smooth box
    bends everywhere and is stopped after about ``4 limit`` queries.
    """
    y = f(np.vstack([x0 + t0 * d, x0 + t1 * d]))
    level, found, depth = [(t0, t1, y[0], y[1])], [], 0
    while level:
        tm = np.array([0.5 * (a + b) for a, b, _, _ in level])
        ym = f(x0 + tm[:, None] * d)
        nxt, bends = [], 0
        for (a, b, ya, yb), m, y_m in zip(level, tm, ym):
            scale = max(1.0, float(np.abs(y_m).max()))
            if np.abs(y_m - 0.5 * (ya + yb)).max() <= LINEAR_RTOL * scale:
                if depth > MIN_DEPTH:
                    continue
            else:
                bends += 1
            if b - a <= tol:
                found.append(float(m))
            else:
                nxt += [(a, m, ya, y_m), (m, b, y_m, yb)]
        if bends > limit:
            raise _TooManyKinks
        level, depth = nxt, depth + 1
    return sorted(found)


def _smooth_votes(f, x0, d, span) -> int:
    """How many probe points of the line see a smooth function (second differences ~ step^2).

    At each point of :data:`SMOOTH_PROBE_AT` the second differences at steps ``h``, ``h/2``,
    ``h/4`` are compared: a smooth function's shrink by 4 per halving, a piecewise-linear
    function's vanish (no kink in the stencil) or shrink by about 2 (a kink inside).
    """
    h = SMOOTH_PROBE_STEP * span
    offsets = h * np.array([0.0, -1.0, 1.0, -0.5, 0.5, -0.25, 0.25])
    ts = (np.array(SMOOTH_PROBE_AT) * span)[:, None] + offsets[None]
    y = f(x0 + ts.reshape(-1, 1) * d).reshape(len(SMOOTH_PROBE_AT), len(offsets), -1)
    noise = NOISE_EPS * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(y).max(axis=(1, 2)))
    d2 = [np.linalg.norm(y[:, i] + y[:, i + 1] - 2 * y[:, 0], axis=1) for i in (1, 3, 5)]
    lo, hi = SMOOTH_RATIO_BAND
    with np.errstate(divide="ignore", invalid="ignore"):
        r1, r2 = d2[0] / d2[1], d2[1] / d2[2]
    smooth = (d2[2] > noise) & (r1 >= lo) & (r1 <= hi) & (r2 >= lo) & (r2 <= hi)
    return int(smooth.sum())


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


def _known(w, bias, x, rows, biases) -> bool:
    """Whether the hyperplane ``w . x + bias = 0`` through ``x`` is one already found."""
    for r, br in zip(rows, biases):
        s = 1.0 if float(w @ r) >= 0 else -1.0
        if np.linalg.norm(w - s * r) <= DUPLICATE_ANGLE and \
                abs(float(r @ x) + br) <= DUPLICATE_DISTANCE_RTOL * (1.0 + float(np.linalg.norm(x))):
            return True
    return False


def search_line(f, x0, d, span, hidden, delta, h, rows: list, biases: list, points: list) -> int:
    """Find the critical points on ``x0 + t d`` and append each new unit's row, bias and point.

    Parameters
    ----------
    f : callable
        The black box, a :class:`leakutils.blackbox.Guard` (its ``used`` count goes into messages).
    x0, d : numpy.ndarray
        A point and a direction, finite float64 ``(D,)``.
    span : float
        The line runs over ``t`` in ``[-span, span]``; a finite number > 0.
    hidden : int
        Number of hidden units assumed, >= 1.
    delta, h : float
        Offset of the Jacobian stencils beside a kink and their finite-difference step; > 0.
    rows, biases, points : list
        The units found so far (rows ``(D,)``, biases, points on their hyperplanes); appended to.

    Returns the number of critical points on the line.

    Raises
    ------
    TypeError, ValueError
        Arguments of the wrong kind or value (as above).
    NotPiecewiseLinearError
        The box bends everywhere on the line like a smooth function.
    ExtractionError
        More than ``hidden`` critical points on the line.
    """
    check_callable("f", f, "mapping a float64 array (B, D) to logits (B, K)")
    x0 = _check_point("x0", x0)
    d = _check_point("d", d, x0.shape[0])
    span, delta, h = (check_number(n, v, 0.0, lo_open=True) for n, v in (("span", span), ("delta", delta), ("h", h)))
    hidden = check_int("hidden", hidden, 1)
    for name, value in (("rows", rows), ("biases", biases), ("points", points)):
        if not isinstance(value, list):
            raise TypeError(f"{name} must be a list (the units found so far, appended to), got {type(value).__name__}")
    try:
        ts = np.array(_kinks(f, x0, d, -span, span, 1e-9 * span, hidden))
    except _TooManyKinks:
        votes = _smooth_votes(f, x0, d, span)
        if 2 * votes >= len(SMOOTH_PROBE_AT):
            raise NotPiecewiseLinearError(
                f"not a ReLU network (piecewise linear in its input): along a line the black box bends "
                f"everywhere, and at {votes} of {len(SMOOTH_PROBE_AT)} probe points its second differences "
                f"shrink as the square of the step, as a smooth function's do (tanh or sigmoid units, softmax "
                f"probabilities?). This attack needs the logits of a ReLU network; refused after {f.used:,} "
                f"queries") from None
        raise ExtractionError(
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
        M = jacobian(f, x0 + (t + dk) * d, hk) - jacobian(f, x0 + (t - dk) * d, hk)
        _, sv, Vt = np.linalg.svd(M, full_matrices=False)
        if sv[0] == 0 or (len(sv) > 1 and sv[1] > RANK_ONE_RTOL * sv[0]):
            continue  # two units bend at once (or noise): skip this point
        w = Vt[0]  # orientation (which side is active) is settled by the fit in extract
        x = x0 + t * d
        bias = -float(w @ x)
        if _known(w, bias, x, rows, biases):
            continue
        rows.append(w)
        biases.append(bias)
        points.append(x)
    return len(ts)
