"""The machinery of the exercise checks: the registry, the two failures, reading answers.

A check is a function registered with :func:`exercise` under its exercise's label. It takes
the student's answers by name, computes what is right from the exercise's own data, and
either returns (right) or raises :class:`WrongAnswer` with a hint. A hint says what to look
at, never what the answer is. This module turns whatever a student typed (a list, a NumPy
array, a tensor, a dict, a set) into NumPy values, or says plainly what it expected.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch


class WrongAnswer(AssertionError):
    """An answer that is not right; the message is a hint that does not contain the answer."""


class NotAnswered(WrongAnswer):
    """An answer that is still missing: ``None``, ``...`` (the student edition's stub), unset."""


@dataclass(frozen=True)
class Exercise:
    """One checked exercise of the book, as :func:`exercise` registers it.

    Attributes
    ----------
    label : str
        The exercise's label in the book, e.g. ``"ch1-by-hand"``.
    number : str
        Its number in the book and the notebooks, e.g. ``"1.1"``.
    answers : tuple of str
        The names of the answers the check takes.
    context : tuple of str
        Names of the chapter's own variables the check also needs (data it cannot rebuild
        cheaply, e.g. a trained model's outputs); empty for most exercises.
    func : callable
        The check itself, called with every name of ``answers`` and ``context``.
    """

    label: str
    number: str
    answers: tuple[str, ...]
    context: tuple[str, ...]
    func: Callable[..., None]

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the check takes: the answers, then the context."""
        return self.answers + self.context


#: Every registered exercise, by label, in the order the chapter modules register them.
REGISTRY: dict[str, Exercise] = {}


def exercise(label: str, number: str, answers: tuple[str, ...], context: tuple[str, ...] = ()):
    """Register the decorated function as the check of exercise ``label`` (number ``number``)."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        if label in REGISTRY:
            raise ValueError(f"exercise label {label!r} registered twice")
        REGISTRY[label] = Exercise(label, number, tuple(answers), tuple(context), func)
        return func

    return register


def is_missing(value: Any) -> bool:
    """Whether ``value`` is no answer at all: ``None`` or ``...``."""
    return value is None or value is Ellipsis


# --------------------------------------------------------------------------- reading answers


def _kind(value: Any) -> str:
    """A short description of what a student gave, for a hint."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"an array of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def array(name: str, value: Any, *shapes: tuple[int, ...], what: str) -> np.ndarray:
    """Return ``value`` as a float64 array of the first of ``shapes`` (any of them accepted).

    ``what`` says in words what the answer holds (e.g. ``"4 pixels"``) for the hint.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise WrongAnswer(f"`{name}` should be {what} (a list, NumPy array or tensor), "
                          f"got {_kind(value)}") from None
    if arr.shape not in [tuple(s) for s in shapes]:
        raise WrongAnswer(f"`{name}` should be {what}, got {_kind(arr)}")
    if not np.all(np.isfinite(arr)):
        raise WrongAnswer(f"`{name}` holds NaN or infinite values: a division by zero somewhere?")
    return arr.reshape(shapes[0])


def samples(name: str, value: Any, pixels: int, *, what: str) -> np.ndarray:
    """Return ``value`` (a batch tensor or array, or a list of images) as a ``(K, pixels)`` array."""
    if isinstance(value, (list, tuple)):
        value = [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in value]
        try:
            value = [np.asarray(v, dtype=np.float64).reshape(-1) for v in value]
        except (TypeError, ValueError):
            raise WrongAnswer(f"`{name}` should be {what}, got a list of something else") from None
        value = np.stack(value) if value else np.zeros((0, pixels))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise WrongAnswer(f"`{name}` should be {what}, got {_kind(value)}") from None
    if arr.ndim == 0 or arr.size != arr.shape[0] * pixels:
        raise WrongAnswer(f"`{name}` should be {what} ({pixels} pixels each), got {_kind(arr)}")
    if not np.all(np.isfinite(arr)):
        raise WrongAnswer(f"`{name}` holds NaN or infinite values: a division by zero somewhere?")
    return arr.reshape(arr.shape[0], pixels)


def number(name: str, value: Any, *, what: str = "a number") -> float:
    """Return ``value`` (a Python, NumPy or one-element torch number) as a finite float."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, np.generic) \
            or (isinstance(value, np.ndarray) and value.size == 1):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise WrongAnswer(f"`{name}` should be {what}, got {_kind(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise WrongAnswer(f"`{name}` is NaN or infinite: a division by zero somewhere?")
    return value


def integer(name: str, value: Any, *, what: str = "a whole number") -> int:
    """Return ``value`` as an ``int``; a float that is a whole number (``24.0``) is accepted."""
    x = number(name, value, what=what)
    if x != round(x):
        raise WrongAnswer(f"`{name}` should be {what}, got {x:g}")
    return int(round(x))


def boolean(name: str, value: Any) -> bool:
    """Return ``value`` as a bool: ``True``/``False``, a NumPy bool or a one-element bool tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype == torch.bool:
        value = bool(value.item())
    if isinstance(value, np.bool_):
        value = bool(value)
    if not isinstance(value, bool):
        raise WrongAnswer(f"`{name}` should be True or False, got {_kind(value)}")
    return value


def flags(name: str, value: Any, keys: tuple[str, ...]) -> dict[str, bool]:
    """Return ``value``, a dict with exactly the string ``keys``, each True or False."""
    if not isinstance(value, dict):
        raise WrongAnswer(f"`{name}` should be a dict with the keys {list(keys)}, got {_kind(value)}")
    if set(value) != set(keys):
        raise WrongAnswer(f"`{name}` should have exactly the keys {list(keys)}, got {list(value)}")
    return {k: boolean(f"{name}[{k!r}]", value[k]) for k in keys}


def integers(name: str, value: Any, *, what: str) -> set[int]:
    """Return ``value`` (a set, list, tuple or 1-d array of whole numbers) as a set of ints."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.reshape(-1).tolist()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (set, frozenset, list, tuple)):
        raise WrongAnswer(f"`{name}` should be {what} (a set or list), got {_kind(value)}")
    return {integer(f"an entry of `{name}`", v) for v in value}


def keyed(name: str, value: Any, keys: tuple[float, ...], *, what: str) -> dict[float, float]:
    """Return ``value``, a dict keyed by the numbers ``keys`` (or a sequence in that order)."""
    if isinstance(value, dict):
        found = {float(k): v for k, v in value.items() if isinstance(k, numbers.Real)}
        missing = [k for k in keys if float(k) not in found]
        if missing or len(value) != len(keys):
            raise WrongAnswer(f"`{name}` should have exactly the keys {list(keys)}, got {list(value)}")
        return {k: number(f"{name}[{k!r}]", found[float(k)], what=what) for k in keys}
    values = array(name, value, (len(keys),), what=f"{len(keys)} numbers ({what}, keys {list(keys)})")
    return dict(zip(keys, values.tolist(), strict=True))


def close(got: Any, want: Any, *, atol: float, rtol: float = 0.0) -> bool:
    """Whether ``got`` and ``want`` agree entrywise within ``atol + rtol * |want|``."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= atol + rtol * np.abs(want)))


def wrong(name: str, hint: str) -> WrongAnswer:
    """The failure of answer ``name``, with its hint."""
    return WrongAnswer(f"`{name}`: {hint}")


# --------------------------------------------------------------------------- the chapters' data


@lru_cache(maxsize=None)
def mnist() -> Any:
    """The 5,000 offline MNIST digits in float64, as every chapter loads them."""
    from .. import data

    return data.load("mnist", dtype=torch.float64)


def seeded_mlp(width: int, seed: int = 0) -> torch.nn.Module:
    """``models.MLP((1, 28, 28), (width,), float64)`` after ``torch.manual_seed(seed)``.

    The chapters build their networks this way; the global random state of the caller's
    kernel is left as it was.
    """
    from .. import models

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.MLP((1, 28, 28), (width,), dtype=torch.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of ``a`` against ``b`` for data in ``[0, 1]`` (infinite when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else -10 * math.log10(mse)
