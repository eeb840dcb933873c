"""Checks for the book's exercises: a student runs them, the book build runs the solutions.

Every chapter ends with exercises; each exercise with an answer that can be checked (a
number by hand, a coding result, a yes/no question) has a check here, registered under the
exercise's label. A check computes what is right from the exercise's own data (with NumPy
and ``leakutils``), compares, and either says the answer is right or raises
:class:`WrongAnswer` (an ``AssertionError``) with a hint that says where to look and never
contains the answer::

    from leakutils import exercises
    exercises.check("ch1-by-hand", row_images=rows, x_hat=x_hat, x_dead=x_dead)
    # 'Exercise 1.1 (ch1-by-hand): right.'  or  WrongAnswer: `x_hat`: ...hint...

A missing answer (``None``, or ``...`` as the student edition leaves it) raises
:class:`NotAnswered`, "not answered yet: set `x_hat`". The student edition
(``make student``, ``tools/student.py``) calls the same checks from otter-grader's test
files, so ``grader.check("ch1-by-hand")`` and the autograder agree with the book.

One module per chapter (``ch1`` ... ``ch9``) holds that chapter's checks; their docstrings
say what each answer is (name, shape, type) and the tolerance.
"""
from __future__ import annotations

from typing import Any

from . import ch1, ch2, ch3, ch4, ch5, ch6, ch7, ch8, ch9  # noqa: F401  (they register)
from ._base import REGISTRY, Exercise, NotAnswered, WrongAnswer, is_missing

__all__ = ["check", "labels", "get", "Exercise", "WrongAnswer", "NotAnswered"]


class _Passed(str):
    """The message of a passed check; shown without quotes as a cell's last value."""

    def __repr__(self) -> str:
        return str(self)


def labels() -> list[str]:
    """Every checked exercise's label, in book order (``"ch1-by-hand"``, ...)."""
    return sorted(REGISTRY, key=lambda label: tuple(int(p) for p in REGISTRY[label].number.split(".")))


def get(label: str) -> Exercise:
    """The registered :class:`Exercise` of ``label`` (its number and the names it takes).

    Raises
    ------
    TypeError
        ``label`` is not a string.
    ValueError
        No exercise has this label (the message says where the labels are listed).
    """
    if not isinstance(label, str):
        raise TypeError(f"label must be an exercise label string such as 'ch1-by-hand', "
                        f"got {type(label).__name__}")
    if label not in REGISTRY:
        raise ValueError(f"unknown exercise label {label!r}; exercises.labels() lists the "
                         f"{len(REGISTRY)} checked exercises")
    return REGISTRY[label]


def check(label: str, /, **answers: Any) -> str:
    """Check the answers to exercise ``label``; return a short message if they are right.

    Parameters
    ----------
    label : str
        The exercise's label, as in the book (``"ch1-by-hand"``); ``labels()`` lists them.
    **answers
        The answers by name, as the exercise asks for them (``x_hat=...``); the check's
        docstring (``help(exercises.get(label).func)``) gives each one's shape and type.
        A few checks also take chapter variables by name (``exercises.get(label).context``).

    Returns
    -------
    str
        ``"Exercise 1.1 (ch1-by-hand): right."``, shown without quotes as a cell's value.

    Raises
    ------
    NotAnswered
        An answer or chapter variable is missing, ``None`` or ``...``.
    WrongAnswer
        An answer is wrong or malformed; the message is a hint without the answer.
    TypeError
        ``label`` is not a string, or a keyword is not a name this exercise takes.
    ValueError
        ``label`` is not a checked exercise.
    """
    ex = get(label)
    unexpected = sorted(set(answers) - set(ex.names))
    if unexpected:
        raise TypeError(f"{label} takes the answers {list(ex.answers)}"
                        + (f" and the chapter's {list(ex.context)}" if ex.context else "")
                        + f", got unexpected {unexpected}")
    for name in ex.answers:
        if is_missing(answers.get(name)):
            raise NotAnswered(f"not answered yet: set `{name}`")
    for name in ex.context:
        if is_missing(answers.get(name)):
            raise NotAnswered(f"`{name}` is missing: run the chapter's cells above this exercise first")
    ex.func(**{name: answers[name] for name in ex.names})
    return _Passed(f"Exercise {ex.number} ({label}): right.")
