"""Input checks shared by every module: one clear error for each kind of bad argument.

Every public function of ``leakutils`` validates its arguments at the boundary
(scikit-learn's convention) and raises a ``TypeError`` (wrong kind of object: a list for a
tensor, a float for an integer, a float tensor for labels) or a ``ValueError`` (right kind,
wrong value: a negative width, a NaN pixel, an empty batch, a label outside the classes).
Each message names the argument, says what it must be and what was given, and where there
is an obvious fix, says it (``x.double()``, ``labels.long()``). This module holds those
checks so that the wording is the same everywhere::

    from leakutils.validate import check_int, check_tensor
    width = check_int("width", width, 1)
    x = check_tensor("x", x, min_ndim=2, kind="float")

Every check returns the value it accepted (converted where said: a Python ``int``, a
``float``, a tuple), so a function can validate and assign in one line.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["MAX_SEED", "check_int", "check_number", "check_fraction", "check_choice", "check_bool",
           "check_seed", "check_module", "check_callable", "check_tensor", "check_labels",
           "check_shape", "check_dtype"]

#: Seeds are integers in ``0..MAX_SEED``: what both ``torch.Generator.manual_seed`` and
#: ``numpy.random.default_rng`` accept, so a seed works with either library.
MAX_SEED = 2**32 - 1

#: The tensor kinds :func:`check_tensor` tells apart, with the dtypes of each.
_KINDS = {
    "float": "a floating dtype (float32 or float64)",
    "int": "an integer dtype (int64 for class indices)",
    "bool": "torch.bool",
    "real": "a real dtype (integer or floating)",
}


def _shown(value: Any) -> str:
    """A short description of a given value for an error message: its type and repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking it is an integer (not a bool) in ``lo..hi``.

    Parameters
    ----------
    name : str
        The argument's name, as the caller's signature spells it.
    value : Any
        What was given. Python and NumPy integers are accepted; floats (even ``2.0``),
        bools and strings are not.
    lo, hi : int, optional
        Inclusive bounds; ``None`` for no bound.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        Not an integer.
    ValueError
        Outside ``lo..hi``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_shown(value)}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            span = f">= {lo}"
        elif lo is None:
            span = f"<= {hi}"
        else:
            span = f"in {lo}..{hi}"
        raise ValueError(f"{name} must be an integer {span}, got {value}")
    return value


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, finite: bool = True) -> float:
    """Return ``value`` as a ``float`` after checking it is a real number within bounds.

    Parameters
    ----------
    name : str
    value : Any
        A Python or NumPy real number, or a 0-dim real tensor. Bools are refused.
    lo, hi : float, optional
        Bounds; ``None`` for none.
    lo_open, hi_open : bool
        Exclude the bound itself (``lo < value`` instead of ``lo <= value``).
    finite : bool
        Refuse NaN and infinities (default). With ``False`` an infinite bound-respecting
        value passes; NaN never does.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        Not a real number.
    ValueError
        NaN, infinite (with ``finite``), or out of bounds.
    """
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_complex() \
            and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_shown(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
        raise ValueError(f"{name} must be a number in {span}, got {value:g}")
    return value


def check_fraction(name: str, value, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """A probability or fraction: a real number in ``[0, 1]`` (ends excluded as asked).

    Raises
    ------
    TypeError, ValueError
        As :func:`check_number`.
    """
    return check_number(name, value, 0.0, 1.0, lo_open=lo_open, hi_open=hi_open)


def check_choice(name: str, value, options: Iterable[str]) -> str:
    """Check that ``value`` is one of the strings ``options``.

    Raises
    ------
    TypeError
        Not a string.
    ValueError
        Not among ``options`` (the message lists them).
    """
    shown = tuple(options)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {shown}, got {_shown(value)}")
    if value not in shown:
        raise ValueError(f"{name} must be one of {shown}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """Check that ``value`` is ``True`` or ``False`` (not 0/1, not a string).

    Raises
    ------
    TypeError
        Anything but a bool.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_shown(value)}")
    return value


def check_seed(name: str, value) -> int:
    """A random seed: an integer in ``0..MAX_SEED``.

    Raises
    ------
    TypeError
        Not an integer (a float, a bool, a ``torch.Generator``).
    ValueError
        Negative or above :data:`MAX_SEED`.
    """
    return check_int(name, value, 0, MAX_SEED)


def check_module(name: str, value) -> nn.Module:
    """Check that ``value`` is a ``torch.nn.Module`` (the attacked or trained network).

    Raises
    ------
    TypeError
        Anything else (a function, a state dict, a class instead of an instance).
    """
    if isinstance(value, type) and issubclass(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module instance, got the class {value.__name__}; "
                        f"build it first, e.g. {value.__name__}(...)")
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def check_callable(name: str, value, what: str = "") -> Any:
    """Check that ``value`` is callable; ``what`` describes the expected signature.

    Raises
    ------
    TypeError
        Not callable.
    """
    if not callable(value):
        raise TypeError(f"{name} must be a callable{' ' + what if what else ''}, got {type(value).__name__}")
    return value


def check_tensor(name: str, value, *, ndim: int | None = None, min_ndim: int | None = None,
                 kind: str | None = "float", finite: bool = True, nonempty: bool = True,
                 shape: str = "") -> torch.Tensor:
    """Check a tensor argument: type, number of axes, dtype kind, finiteness, non-empty batch.

    Parameters
    ----------
    name : str
    value : Any
        The argument; NumPy arrays and lists are refused (convert with ``torch.as_tensor``).
    ndim : int, optional
        Exact number of axes.
    min_ndim : int, optional
        Least number of axes (e.g. 2 for a batch ``(M, ...)``).
    kind : {"float", "int", "bool", "real", None}
        Required dtype kind; None accepts any dtype.
    finite : bool
        Refuse NaN and infinite entries (floating tensors only).
    nonempty : bool
        Refuse a tensor with no entries (an empty batch).
    shape : str
        The expected shape in words, e.g. ``"(M, C, H, W)"``, quoted in the messages.

    Returns
    -------
    torch.Tensor
        ``value`` unchanged.

    Raises
    ------
    TypeError
        Not a tensor, or a dtype of another kind.
    ValueError
        Wrong number of axes, no entries, NaN or infinite entries.
    """
    where = f" of shape {shape}" if shape else ""
    if not isinstance(value, torch.Tensor):
        hint = "; convert with torch.as_tensor(...)" if hasattr(value, "__array__") or \
            isinstance(value, (list, tuple)) else ""
        raise TypeError(f"{name} must be a torch tensor{where}, got {type(value).__name__}{hint}")
    if kind is not None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {tuple(_KINDS)} or None, got {kind!r}")
        ok = {"float": value.is_floating_point(),
              "int": not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool,
              "bool": value.dtype == torch.bool,
              "real": not value.is_complex() and value.dtype != torch.bool}[kind]
        if not ok:
            fix = {"float": "; convert with .double() or .float()", "int": "; convert with .long()",
                   "bool": "; compare, e.g. mask > 0", "real": ""}[kind]
            raise TypeError(f"{name} must have {_KINDS[kind]}, got {value.dtype}{fix}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes{where}, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes{where}, got shape {tuple(value.shape)}")
    if nonempty and value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)}); give at least one sample")
    if finite and value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains NaN or infinite values ({bad} of {value.numel()} entries)")
    return value


def check_labels(name: str, labels, n: int | None = None, num_classes: int | None = None) -> torch.Tensor:
    """Class labels: an int64 tensor of shape ``(n,)`` with values in ``[0, num_classes)``.

    Parameters
    ----------
    name : str
    labels : Any
    n : int, optional
        Required number of labels (one per sample).
    num_classes : int, optional
        Number of classes K (the model's logits).

    Returns
    -------
    torch.Tensor
        ``labels`` unchanged.

    Raises
    ------
    TypeError
        Not a tensor, or not int64 (a float or int32 tensor: convert with ``.long()``).
    ValueError
        Not one-dimensional, the wrong length, or values outside ``[0, num_classes)``.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an int64 tensor of class indices, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 class indices, got {labels.dtype}; convert with .long()")
    if labels.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one class index per sample), got shape "
                         f"{tuple(labels.shape)}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"{name} must have one entry per sample: {n} samples, {labels.shape[0]} labels")
    if num_classes is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}) for {num_classes} classes, "
                         f"got values {int(labels.min())}..{int(labels.max())}")
    return labels


def check_shape(name: str, value) -> tuple[int, ...]:
    """A sample shape: a positive int, or a non-empty tuple of positive ints such as ``(1, 28, 28)``.

    Returns
    -------
    tuple of int

    Raises
    ------
    TypeError
        Not an int or a sequence of ints (a string, a float, a tensor of floats).
    ValueError
        Empty, or an entry below 1.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be an int or a tuple such as (1, 28, 28), got {_shown(value)}")
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in value):
        raise TypeError(f"{name} must hold integers, such as (1, 28, 28), got {value!r}")
    shape = tuple(int(s) for s in value)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{name} must be non-empty and positive, such as (1, 28, 28), got {value!r}")
    return shape


def check_dtype(name: str, value, allowed=(torch.float32, torch.float64), *, optional: bool = False):
    """Check that ``value`` is one of the torch dtypes ``allowed`` (or None with ``optional``).

    Raises
    ------
    TypeError
        Another dtype, or something that is not a dtype (e.g. the string ``"float64"``).
    """
    if value is None and optional:
        return None
    if value not in tuple(allowed):
        names = " or ".join(str(d) for d in allowed) + (" or None" if optional else "")
        raise TypeError(f"{name} must be {names}, got {_shown(value)}")
    return value
