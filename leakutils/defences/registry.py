"""The defences of the matrix (Chapter 7): each with its strengths, where it acts and how to apply it.

:data:`DEFENCES` names every defence the course measures with the three strengths it shows
(weakest first), what the strength means, where the defence acts, how to apply it to one
client's batch (:class:`Defence`, returning an :class:`Applied`: the update the server
receives, the noise level it knows of, DP's epsilon) and how to train under it
(:func:`train_under`, for its cost in accuracy). The attacks and the scoring are in
:mod:`leakutils.defences.matrix`.

Every client attacked holds one image unless the defence is the batch (``M`` images) or
secure aggregation (``K`` clients of one image each, averaged). Client-side parameters:
the clipping bound :data:`CLIP_NORM` of clip_and_noise and DP-SGD, the learning rate
:data:`leakutils.defences.utility.LR` of FedAvg's local steps, and the data set size 4,000
(the training split of :func:`leakutils.defences.utility.mnist_split`) for DP-SGD's sample
rate ``M / 4000``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..capture import client_update
from ..core import Update
from ..validate import check_seed
from . import utility
from .aggregation import client_updates, secure_aggregation
from .dp import dp_sgd_update
from .local import fedavg_update
from .soteria import soteria
from .update import clip_and_noise, gaussian_noise, prune, quantise

__all__ = ["Defence", "Applied", "DEFENCES", "CLIP_NORM", "train_under", "defence"]

#: The clipping bound ``C`` of clip_and_noise and DP-SGD, in gradient units (a digit's
#: whole-update norm through the course's MLP at initialisation is about 4.5).
CLIP_NORM = 1.0


@dataclass(frozen=True)
class Applied:
    """One client's batch after a defence: what the server receives, and what it knows of it.

    Attributes
    ----------
    update : Update
        What the server receives.
    noise : float or None
        Per-entry standard deviation of the noise the defence added, in gradient units (a
        public parameter of the defence; the attacks that allow for noise are told it), or
        None for a noise-free defence.
    epsilon : float or None
        DP-SGD only: epsilon of this one step (Opacus' RDP accountant, ``delta = 1e-5``,
        sample rate ``M / 4000``).
    """

    update: Update
    noise: float | None = None
    epsilon: float | None = None


@dataclass(frozen=True)
class Defence:
    """One defence of the matrix.

    Attributes
    ----------
    name : str
    description : str
        One line.
    acts_on : str
        Where it acts: ``"update"`` (between capture and attack), ``"client step"``
        (needs the model and the private batch), ``"server"`` (across clients) or
        ``"client batch"`` (how much data one update covers).
    parameter : str
        What the strength is, in words.
    strengths : tuple
        The three strengths the course shows, weakest first (``(None,)`` for no defence).
    apply : callable
        ``apply(model, x, y, strength, seed) -> Applied``; ``seed`` an int or a CPU
        ``torch.Generator`` (advanced by the random defences).
    images_per_update : callable
        ``images_per_update(strength) -> int``: how many images one update covers (1 but for
        the batch-size and secure-aggregation defences).
    training : str
        How :func:`train_under` trains under it: ``"step"`` (the defence on every step),
        ``"dp_sgd"`` (Opacus' loop), ``"batch"`` (the strength is the batch size),
        ``"plain"`` (the server applies what it would without the defence).
    """

    name: str
    description: str
    acts_on: str
    parameter: str
    strengths: tuple
    apply: Callable[..., Applied]
    images_per_update: Callable[[object], int] = lambda strength: 1
    training: str = "step"


def _max_entry(update: Update) -> float:
    return max(float(g.detach().abs().max()) for g in update.gradients.values())


def _none(model, x, y, strength, seed) -> Applied:
    return Applied(client_update(model, x, y))


def _noise(model, x, y, strength, seed) -> Applied:
    u = client_update(model, x, y)
    return Applied(gaussian_noise(u, strength, seed=seed, relative=True), noise=strength * _max_entry(u))


def _clip_noise(model, x, y, strength, seed) -> Applied:
    u = clip_and_noise(client_update(model, x, y), CLIP_NORM, strength, seed=seed)
    return Applied(u, noise=strength * CLIP_NORM)


def _dp_sgd(model, x, y, strength, seed) -> Applied:
    with warnings.catch_warnings():
        # at these noise levels RDP's best order is its smallest: a valid, loose bound
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        u, report = dp_sgd_update(model, x, y, noise_multiplier=strength, max_grad_norm=CLIP_NORM, seed=seed,
                                  dataset_size=utility.TRAIN_SIZE)
    return Applied(u, noise=report.noise_std, epsilon=report.epsilon)


def _prune(model, x, y, strength, seed) -> Applied:
    return Applied(prune(client_update(model, x, y), strength))


def _quantise(model, x, y, strength, seed) -> Applied:
    return Applied(quantise(client_update(model, x, y), strength))


def _secagg(model, x, y, strength, seed) -> Applied:
    return Applied(secure_aggregation(client_updates(model, x, y, strength)))


def _fedavg(model, x, y, strength, seed) -> Applied:
    return Applied(fedavg_update(model, x, y, lr=utility.LR, local_steps=strength))


def _soteria(model, x, y, strength, seed) -> Applied:
    return Applied(soteria(model, x, y, prune_fraction=strength))


def _same(strength) -> int:
    return int(strength)


#: The defences of the matrix, in the order of the course's table.
DEFENCES: dict[str, Defence] = {d.name: d for d in (
    Defence("none", "the plain FedSGD update of one image", "update", "-", (None,), _none),
    Defence("noise", "Gaussian noise on every entry, std relative to the largest entry", "update",
            "relative std", (1e-3, 1e-2, 1e-1), _noise),
    Defence("clip_and_noise", f"clip the update to norm {CLIP_NORM:g}, add noise of std z * {CLIP_NORM:g} "
            "(DP-FedAvg's client-level mechanism)", "update", "noise multiplier z", (3e-3, 3e-2, 3e-1),
            _clip_noise),
    Defence("dp_sgd", f"per-sample clipping to {CLIP_NORM:g} and noise with Opacus (DP-SGD)", "client step",
            "noise multiplier", (3e-3, 3e-2, 3e-1), _dp_sgd, training="dp_sgd"),
    Defence("prune", "zero each tensor's smallest-magnitude entries (DLG, Sec. 5)", "update",
            "fraction pruned", (0.5, 0.9, 0.999), _prune),
    Defence("quantise", "send the update in fewer bits", "update", "format", ("float16", "int8", "sign"),
            _quantise),
    Defence("secure_aggregation", "the server decodes only the average of K clients of one image each",
            "server", "clients K", (2, 10, 100), _secagg, _same, training="plain"),
    Defence("batch", "the client averages its gradient over a batch of M images", "client batch",
            "batch size M", (1, 8, 64), _none, _same, training="batch"),
    Defence("fedavg", f"several local SGD steps (lr {utility.LR:g}) on the client's image; the server "
            "reads (w_sent - w_returned) / lr", "client step", "local steps", (1, 5, 10), _fedavg),
    Defence("soteria", "withhold the first linear layer's weight-gradient columns that reveal most "
            "(Soteria)", "client step", "fraction withheld", (0.05, 0.1, 0.2), _soteria),
)}


def defence(name: str) -> Defence:
    """The :class:`Defence` of :data:`DEFENCES` called ``name``.

    Raises
    ------
    TypeError
        ``name`` not a string.
    ValueError
        An unknown name (the message lists the defences).
    """
    if not isinstance(name, str):
        raise TypeError(f"a defence is named by a string, one of {list(DEFENCES)}; got {type(name).__name__}")
    if name not in DEFENCES:
        raise ValueError(f"unknown defence {name!r}; choose one of {list(DEFENCES)}")
    return DEFENCES[name]


def train_under(name: str, strength, model: nn.Module, data, *, epochs: int = 3, batch: int = 64,
                seed: int = 0) -> tuple[nn.Module, float | None]:
    """Train a float32 copy of ``model`` under defence ``name`` at ``strength``: the defence's utility.

    ``"step"`` defences act on every step of :func:`~leakutils.defences.utility.train`
    (noise drawn from one generator seeded with ``seed`` and advanced step by step); DP-SGD
    trains in Opacus' loop (:func:`~leakutils.defences.utility.train_dp_sgd`, ``C =``
    :data:`CLIP_NORM`); the batch-size defence trains with batch ``strength``; secure
    aggregation trains as without it (the server applies the same average, masked or not).
    The learning rate is :data:`leakutils.defences.utility.LR` (FedAvg's client uses the same).

    Parameters
    ----------
    name : str
        A key of :data:`DEFENCES`.
    strength
        The defence's strength (any value its underlying function accepts).
    model : nn.Module
    data : ImageData or (torch.Tensor, torch.Tensor)
        Training data, as :func:`~leakutils.defences.utility.train`.
    epochs, batch, seed : int
        As :func:`~leakutils.defences.utility.train`.

    Returns
    -------
    (nn.Module, float or None)
        The trained copy and, for DP-SGD, the run's epsilon (``delta = 1e-5``).

    Raises
    ------
    TypeError, ValueError
        An unknown defence; the errors of the training functions and of the defence.
    """
    d = defence(name)
    if d.training == "dp_sgd":
        return utility.train_dp_sgd(model, data, noise_multiplier=strength, max_grad_norm=CLIP_NORM,
                                    epochs=epochs, batch=batch, seed=seed)
    if d.training == "batch":
        return utility.train(model, data, epochs=epochs, batch=_same(strength), seed=seed), None
    if d.training == "plain" or strength is None:
        return utility.train(model, data, epochs=epochs, batch=batch, seed=seed), None
    gen = torch.Generator().manual_seed(check_seed("seed", seed))
    return utility.train(model, data, lambda m, x, y: d.apply(m, x, y, strength, gen).update, epochs=epochs,
                         batch=batch, seed=seed), None
