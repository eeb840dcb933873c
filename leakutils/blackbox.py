"""The black box of Chapter 6 as the extraction attack sees it: counted, validated, within budgets.

A black box is any callable from a numpy float64 array ``(B, D)`` to logits ``(B, K)``.
:class:`QueryCounter` counts the inputs sent; :class:`Guard` checks every answer (a finite
2-D array with one row per input; NaN is named as NaN) and stops the attack with a
:class:`BudgetExceededError` when the query or time budget is spent. Used by
:func:`leakutils.extraction.extract` (Carlini, Jagielski and Mironov, CRYPTO 2020).
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from .validate import check_callable, check_int, check_number

__all__ = ["QueryCounter", "as_oracle", "Guard", "check_output", "ExtractionError", "NotPiecewiseLinearError",
           "BudgetExceededError", "QUERY_BUDGET_PER_WEIGHT", "QUERY_BUDGET_BASE", "DEFAULT_MAX_SECONDS"]

#: Default query budget: ``QUERY_BUDGET_PER_WEIGHT (N + 1) (D + 1) + QUERY_BUDGET_BASE``. The
#: attack needs about ``2 N (D + 1)`` queries for the Jacobians plus a few thousand for the
#: line searches and the fit (784-16-10: ~30,000; 784-64-10: ~120,000), so the default leaves
#: a margin of about four.
QUERY_BUDGET_PER_WEIGHT = 8
QUERY_BUDGET_BASE = 20_000
#: Default time budget in seconds (784-64-10 takes about 11 s on one CPU core).
DEFAULT_MAX_SECONDS = 600.0


class ExtractionError(ValueError):
    """The black box does not behave like the assumed network, or the search could not finish."""


class NotPiecewiseLinearError(ExtractionError):
    """The black box is smooth along a line: not the logits of a ReLU network."""


class BudgetExceededError(ExtractionError):
    """The query or time budget of :func:`extract` was spent before the search finished."""


class QueryCounter:
    """Wrap a black box ``f: (B, D) float64 -> (B, K)`` and count the inputs it was asked about.

    Raises
    ------
    TypeError
        ``f`` is not callable.
    """

    def __init__(self, f: Callable[[np.ndarray], np.ndarray]):
        if not callable(f):
            raise TypeError(f"the black box must be a callable (B, D) -> (B, K), got {type(f).__name__}")
        self.f, self.queries = f, 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        self.queries += x.shape[0]
        return np.asarray(self.f(x), dtype=np.float64)


def as_oracle(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A black box of a torch model: numpy float64 inputs ``(B, D)`` to logits ``(B, K)``, in float64.

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"as_oracle wraps a torch.nn.Module, got {type(model).__name__}")
    m = copy.deepcopy(model).double().eval()

    def f(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return m(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return f


def check_output(y: np.ndarray, B: int, K: int | None) -> np.ndarray:
    """Validate one answer of the oracle for ``B`` inputs: a finite ``(B, K)`` float64 array.

    Raises
    ------
    ExtractionError
        Not 2-D, another number of rows than ``B``, another number of outputs than ``K``
        (when given), NaN (named) or infinite values.
    """
    if y.ndim != 2:
        raise ExtractionError(
            f"the black box returned an array of shape {y.shape} for {B} inputs; it must return a 2-D array "
            f"(B, K) of logits, one row per input (reshape a single output to (B, 1))")
    if y.shape[0] != B:
        raise ExtractionError(f"the black box returned {y.shape[0]} rows for {B} inputs; it must return one row "
                              f"of logits per input row")
    if K is not None and y.shape[1] != K:
        raise ExtractionError(f"the black box returned {y.shape[1]} outputs per input, earlier {K}")
    if not np.isfinite(y).all():
        nan, inf = int(np.isnan(y).any(1).sum()), int(np.isinf(y).any(1).sum())
        raise ExtractionError(
            f"the black box returned NaN in {nan} and infinite values in {inf} of {B} rows; this attack needs "
            f"finite logits (float64). Check the model (an overflow, a log of 0?) and the inputs")
    return y


class Guard:
    """The oracle as the attack sees it: counted, validated on every answer, within the budgets.

    Parameters
    ----------
    counter : QueryCounter
    input_dim : int
    max_queries : int
        Queries allowed from now on.
    max_seconds : float
        Seconds allowed from now on.
    state : callable
        Returns a short description of the attack's progress for the budget messages.

    Raises (on a call)
    ------------------
    BudgetExceededError
        A budget spent; says how many queries and seconds were used.
    ValueError
        The first query fails inside the black box (e.g. a wrong ``input_dim``).
    ExtractionError
        An answer that :func:`check_output` refuses.
    """

    def __init__(self, counter: QueryCounter, input_dim: int, max_queries: int, max_seconds: float, state):
        if not isinstance(counter, QueryCounter):
            raise TypeError(f"counter must be a QueryCounter (wrap the black box with QueryCounter(oracle)), "
                            f"got {type(counter).__name__}")
        input_dim = check_int("input_dim", input_dim, 1)
        max_queries = check_int("max_queries", max_queries, 1)
        max_seconds = check_number("max_seconds", max_seconds, 0.0, lo_open=True, finite=False)
        check_callable("state", state, "taking no arguments and returning a str")
        self.counter, self.D, self.K = counter, input_dim, None
        self.start, self.t0 = counter.queries, time.perf_counter()
        self.max_queries, self.max_seconds, self.state = max_queries, max_seconds, state

    @property
    def used(self) -> int:
        return self.counter.queries - self.start

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        B = x.shape[0]
        if self.used + B > self.max_queries:
            raise BudgetExceededError(
                f"query budget spent: {self.used:,} queries made, the next {B} would pass max_queries="
                f"{self.max_queries:,} ({self.state()}). Raise max_queries, or check input_dim and hidden: "
                f"the box may be larger than assumed")
        seconds = time.perf_counter() - self.t0
        if seconds > self.max_seconds:
            raise BudgetExceededError(
                f"time budget spent: {seconds:.0f} s of max_seconds={self.max_seconds:g} after {self.used:,} "
                f"queries ({self.state()}). Raise max_seconds, or check that the black box answers quickly")
        try:
            y = self.counter(x)
        except Exception as err:  # the first query checks that the box takes (B, D) float64 arrays
            if self.K is not None:
                raise
            raise ValueError(
                f"the black box failed on its first query, a float64 array of shape {x.shape}: "
                f"{type(err).__name__}: {err}. Check input_dim (the number of input features it takes) and "
                f"that it maps a numpy array (B, D) to logits (B, K)") from err
        y = check_output(y, B, self.K)
        self.K = y.shape[1]
        return y

