"""Checks of Chapter 6's exercises (reverse-engineering the weights of a black box)."""
from __future__ import annotations

import itertools

import numpy as np

from ._base import array, boolean, close, exercise, flags, wrong

__all__ = ["QUERY_INPUTS", "QUERY_WIDTHS", "ROUNDING_KEYS"]

#: Exercise 6.2: the input dimension D and the hidden widths N of the prediction.
QUERY_INPUTS, QUERY_WIDTHS = 784, (16, 32, 64)

#: Exercise 6.3: the keys of ``rounding``.
ROUNDING_KEYS = ("stops_exact_extraction", "stops_metamodel")


def kink_box(x):
    """Exercise 6.1's black box, ``f(x) = 2 ReLU(x - 1) - ReLU(3 - x) + 1``, on NumPy input."""
    x = np.asarray(x, dtype=np.float64)
    return 2 * np.maximum(x - 1, 0) - np.maximum(3 - x, 0) + 1


def _kink_truth() -> dict:
    """What the attack recovers, found from queries of :func:`kink_box` alone.

    Critical points: where the slope between grid points changes; units: a = the slope's
    jump (with |w| = 1 a unit adds its a to the jump whichever side it is active on), the
    side from the slopes at both ends, b = -w t; offset: f minus the units.
    """
    grid = np.arange(-20 * 64, 20 * 64 + 1) / 64
    slope = np.diff(kink_box(grid)) * 64
    change = np.nonzero(np.abs(np.diff(slope)) > 1e-9)[0]
    points = grid[change + 1]
    slopes = np.concatenate([slope[:1], slope[change + 1]])
    jumps = np.diff(slopes)
    for signs in itertools.product((1.0, -1.0), repeat=len(points)):
        w = np.array(signs)
        right = sum(a for a, s in zip(jumps, w, strict=True) if s > 0)
        left = -sum(a for a, s in zip(jumps, w, strict=True) if s < 0)
        if np.isclose(right, slopes[-1]) and np.isclose(left, slopes[0]):
            break
    b = -w * points
    c = kink_box(0.0) - np.sum(jumps * np.maximum(w * 0.0 + b, 0))
    return dict(points=points, slopes=slopes, units=np.stack([w, b, jumps], 1), offset=c)


@exercise("ch6-kink", "6.1", answers=("critical_points", "slopes", "units", "offset"))
def kink(critical_points, slopes, units, offset) -> None:
    """Exercise 6.1: critical points, slopes and the weights the attack recovers.

    Parameters
    ----------
    critical_points : array-like of 2 floats
        The critical points, in increasing order.
    slopes : array-like of 3 floats
        The slope left of the first point, between them, and right of the second.
    units : array-like, (2, 3)
        One row ``(w, b, a)`` per unit with ``|w| = 1``, rows in the order of the critical
        points: the unit computes ``a ReLU(w x + b)``.
    offset : float
        The constant ``c`` of ``f(x) = sum a ReLU(w x + b) + c``.

    Tolerance: 1e-6 absolute.
    """
    truth = _kink_truth()
    got = array("critical_points", critical_points, (2,), what="2 critical points")
    if not close(np.sort(got), truth["points"], atol=1e-6):
        raise wrong("critical_points", "where does one of the ReLUs switch? Each ReLU(w x + b) "
                    "has its kink where w x + b = 0")
    if not close(got, truth["points"], atol=1e-6):
        raise wrong("critical_points", "give them in increasing order")
    got = array("slopes", slopes, (3,), what="3 slopes (left, middle, right)")
    if not close(got, truth["slopes"], atol=1e-6):
        raise wrong("slopes", "write f as a line on each piece: which ReLUs are active there?")
    got = array("units", units, (2, 3), what="2 rows (w, b, a)")
    for i in range(2):
        w, b, a = got[i]
        tw, tb, ta = truth["units"][i]
        if abs(abs(w) - 1) > 1e-6:
            raise wrong("units", f"row {i + 1}: the attack fixes |w| = 1 (the scale is not "
                        "identifiable)")
        if not close(w, tw, atol=1e-6):
            raise wrong("units", f"row {i + 1}: w's sign says on which side of its critical "
                        "point the unit is active")
        if not close(a, ta, atol=1e-6):
            raise wrong("units", f"row {i + 1}: a is the jump of the slope at the unit's "
                        "critical point")
        if not close(b, tb, atol=1e-6):
            raise wrong("units", f"row {i + 1}: the unit switches where w x + b = 0")
    got = array("offset", offset, (), (1,), what="one number")
    if not close(got, truth["offset"], atol=1e-6):
        raise wrong("offset", "evaluate f at one point and subtract the units' outputs there")


@exercise("ch6-queries", "6.2", answers=("predicted", "jacobians_dominate"))
def queries(predicted, jacobians_dominate) -> None:
    """Exercise 6.2: the predicted query count of the exact attack for D = 784.

    Parameters
    ----------
    predicted : array-like of 3 whole numbers
        The Jacobians' and the fit's queries for ``N = 16, 32, 64`` hidden units (two
        Jacobians of ``D + 1`` queries per unit, plus the least-squares fit's
        ``2 (N + D + 1)``).
    jacobians_dominate : bool
        Whether the Jacobians' term is the larger one.

    Tolerance: exact.
    """
    d = QUERY_INPUTS
    n = np.array(QUERY_WIDTHS)
    jacobians, fit = 2 * n * (d + 1), 2 * (n + d + 1)
    got = array("predicted", predicted, (3,), what="3 counts (N = 16, 32, 64)")
    if not close(got, jacobians + fit, atol=0.5):
        raise wrong("predicted", "two Jacobians of D + 1 queries for each of the N units, plus "
                    "2 (N + D + 1) for the fit, with D = 784")
    if boolean("jacobians_dominate", jacobians_dominate) != bool(np.all(jacobians > fit)):
        raise wrong("jacobians_dominate", "compare 2 N (D + 1) with 2 (N + D + 1) for these N")


@exercise("ch6-defence", "6.3", answers=("rounding",))
def defence(rounding) -> None:
    """Exercise 6.3: what rounding the logits to two decimals stops.

    Parameters
    ----------
    rounding : dict
        Keys :data:`ROUNDING_KEYS`: ``"stops_exact_extraction"`` (the exact attack cannot
        return weights; ``extract`` refuses), ``"stops_metamodel"`` (the meta-model can no
        longer be trained or used); each True or False.
    """
    got = flags("rounding", rounding, ROUNDING_KEYS)
    # the chapter runs extract on rounded logits and it refuses; the meta-model needs only
    # coarse outputs
    if not got["stops_exact_extraction"]:
        raise wrong("rounding['stops_exact_extraction']", "the bisection and the "
                    "finite-difference Jacobians assume exact outputs: run extract on rounded "
                    "logits and see what it does")
    if got["stops_metamodel"]:
        raise wrong("rounding['stops_metamodel']", "how precise must the outputs be for the "
                    "meta-model's similarity loss?")
