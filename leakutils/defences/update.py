"""Defences that act on a shared update, between capture and attack: clip, noise, prune, quantise.

Each function takes an :class:`~leakutils.core.Update` (what
:func:`leakutils.capture.client_update` returns) and returns a new one made with
:meth:`Update.map`: the same parameter names, shapes, dtypes, batch size, loss and input
shape, the gradients changed, the per-sample gradients dropped (they no longer average to
the new gradients). Nothing is recorded elsewhere and the given update is not changed.
Computation happens in each gradient's own dtype; the random ones draw from a
``torch.Generator`` made from an explicit ``seed`` (or one given), never from torch's
global generator.

Sources: gradient clipping and Gaussian noise as in DP-FedAvg (McMahan et al., "Learning
Differentially Private Recurrent Language Models", ICLR 2018), applied here by one client to
its own update; gradient pruning as in Zhu et al., "Deep Leakage from Gradients", NeurIPS
2019, Sec. 5; 1-bit sign compression as in Bernstein et al., "signSGD: Compressed
Optimisation for Non-Convex Problems", ICML 2018, with the scale ``mean|g|`` of Karimireddy et
al., "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML 2019.
"""
from __future__ import annotations

import math

import torch

from ..core import Update
from ..validate import check_bool, check_choice, check_number, check_seed

__all__ = ["clip", "gaussian_noise", "clip_and_noise", "prune", "quantise", "global_norm", "SCHEMES"]

#: The quantisation schemes of :func:`quantise`.
SCHEMES = ("float16", "int8", "sign")

#: The largest finite float16 number; larger magnitudes overflow to infinity.
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def _check_update(update) -> Update:
    """An :class:`Update`, or a TypeError saying where one comes from."""
    if not isinstance(update, Update):
        raise TypeError(f"update must be a leakutils Update (from capture.client_update), got "
                        f"{type(update).__name__}")
    return update


def _generator(seed) -> torch.Generator:
    """A CPU ``torch.Generator``: the one given, or a new one seeded with ``seed``."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(f"seed must be a CPU torch.Generator (the noise is drawn on the CPU), got one "
                             f"on {seed.device}")
        return seed
    return torch.Generator().manual_seed(check_seed("seed", seed))


def global_norm(update: Update) -> float:
    """The L2 norm of the whole update: ``sqrt(sum over parameters of ||g||^2)``, in float64.

    Parameters
    ----------
    update : Update

    Returns
    -------
    float
        ``>= 0``, in the gradients' units.

    Raises
    ------
    TypeError
        ``update`` not an :class:`Update`.
    """
    _check_update(update)
    return math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in update.gradients.values()))


def clip(update: Update, max_norm: float) -> Update:
    """Scale the whole update so that its global L2 norm is at most ``max_norm``.

    One factor ``min(1, max_norm / ||g||)`` multiplies every parameter's gradient, with
    ``||g||`` the norm over all parameters together (:func:`global_norm`), so the update's
    direction is kept. An update already within the bound is returned unchanged (a copy);
    after clipping the norm equals ``max_norm`` up to the dtype's round-off.

    Parameters
    ----------
    update : Update
    max_norm : float
        The bound, ``> 0``, in the gradients' units.

    Returns
    -------
    Update

    Raises
    ------
    TypeError
        ``update`` not an :class:`Update`; ``max_norm`` not a number.
    ValueError
        ``max_norm`` not a finite number ``> 0``.
    """
    _check_update(update)
    max_norm = check_number("max_norm", max_norm, 0.0, lo_open=True)
    norm = global_norm(update)
    factor = 1.0 if norm <= max_norm else max_norm / norm
    return update.map(lambda name, g: g.detach() * factor)


def gaussian_noise(update: Update, std: float, *, seed=0, relative: bool = False) -> Update:
    """Add independent Gaussian noise ``N(0, sigma^2)`` to every entry of every gradient.

    Parameters
    ----------
    update : Update
    std : float
        ``>= 0``. With ``relative=False`` it is ``sigma`` itself, in the gradients' own units.
        With ``relative=True`` it is a fraction of the update's largest absolute entry (over
        all parameters): ``sigma = std * max|g|``, so ``std=0.1`` is noise at a tenth of the
        largest gradient entry whatever the model and batch (an all-zero update stays zero).
        ``0`` returns an unchanged copy.
    seed : int or torch.Generator
        Seed in ``0..2**32-1`` of a new CPU generator, or a CPU generator to draw from (and
        advance). The noise is drawn parameter by parameter in the update's order, in each
        gradient's dtype.
    relative : bool
        Read ``std`` as a fraction of ``max|g|`` (see above).

    Returns
    -------
    Update

    Raises
    ------
    TypeError
        ``update`` not an :class:`Update`; ``std`` not a number; ``seed`` neither an integer
        nor a ``torch.Generator``; ``relative`` not a bool.
    ValueError
        ``std`` negative or not finite; ``seed`` out of range or a generator off the CPU.
    """
    _check_update(update)
    std = check_number("std", std, 0.0)
    check_bool("relative", relative)
    gen = _generator(seed)
    if relative:
        std *= max(float(g.detach().abs().max()) for g in update.gradients.values())

    def noisy(name: str, g: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(g.shape, generator=gen, dtype=g.dtype)
        return g.detach() + std * noise.to(g.device)

    return update.map(noisy)


def clip_and_noise(update: Update, max_norm: float, noise_multiplier: float, seed=0) -> Update:
    """Clip the update to ``max_norm``, then add Gaussian noise of std ``noise_multiplier * max_norm``.

    The client-level Gaussian mechanism of DP-FedAvg (McMahan et al. 2018): clipping bounds
    what one client's whole update can change (its sensitivity is ``max_norm``) and the noise
    is calibrated to that bound. Here each client clips and noises its own update (no
    per-sample clipping, no trusted aggregator); in DP-FedAvg the server adds one noise draw
    of std ``noise_multiplier * max_norm`` to the *sum* of the clipped updates, i.e. ``1/K``
    of this per-entry std after averaging ``K`` clients. For per-sample clipping (DP-SGD) see
    :func:`leakutils.defences.dp.dp_sgd_update`.

    Parameters
    ----------
    update : Update
    max_norm : float
        Clipping bound ``> 0``, in the gradients' units.
    noise_multiplier : float
        ``>= 0``; the noise std is ``noise_multiplier * max_norm`` per entry.
    seed : int or torch.Generator
        As :func:`gaussian_noise`.

    Returns
    -------
    Update

    Raises
    ------
    TypeError, ValueError
        As :func:`clip` and :func:`gaussian_noise`; ``noise_multiplier`` negative or not finite.
    """
    _check_update(update)
    max_norm = check_number("max_norm", max_norm, 0.0, lo_open=True)
    noise_multiplier = check_number("noise_multiplier", noise_multiplier, 0.0)
    return gaussian_noise(clip(update, max_norm), noise_multiplier * max_norm, seed=seed)


def prune(update: Update, fraction: float) -> Update:
    """Gradient pruning (Zhu et al. 2019, Sec. 5): zero each tensor's smallest-magnitude entries.

    Per parameter tensor of ``n`` entries, the ``k = floor(fraction * n)`` entries of smallest
    ``|g|`` are set to 0 and the other ``n - k`` kept unchanged (``fraction * n`` is rounded
    down after forgiving a 1e-9 binary-rounding excess, so ``0.29 * 100`` prunes 29). Entries
    of equal magnitude are pruned in index order (a stable sort), so exactly ``k`` go. As in
    the DLG code, each tensor is pruned on its own, not the update as a whole; DLG's code
    draws the line at a percentile of ``|g|`` instead, which prunes about the same number.

    Parameters
    ----------
    update : Update
    fraction : float
        Share of each tensor's entries to prune, in ``[0, 1)``: 0 keeps everything; the
        course's chapter sweeps 0.1 .. 0.999.

    Returns
    -------
    Update

    Raises
    ------
    TypeError
        ``update`` not an :class:`Update`; ``fraction`` not a number.
    ValueError
        ``fraction`` outside ``[0, 1)``.
    """
    _check_update(update)
    fraction = check_number("fraction", fraction, 0.0, 1.0, hi_open=True)

    def pruned(name: str, g: torch.Tensor) -> torch.Tensor:
        flat = g.detach().reshape(-1)
        k = math.floor(fraction * flat.numel() + 1e-9)
        out = flat.clone()
        if k:
            size = flat.abs()
            # the k-th smallest magnitude: everything below it goes, and as many entries equal
            # to it as k still needs, first in index order (what a stable sort would prune)
            t = torch.kthvalue(size, k).values
            below = size < t
            ties = torch.nonzero(size == t).reshape(-1)[: k - int(below.sum())]
            out[below] = 0
            out[ties] = 0
        return out.reshape(g.shape)

    return update.map(pruned)


def quantise(update: Update, scheme: str) -> Update:
    """Send the update in fewer bits: each gradient rounded to a coarser number format.

    The result is dequantised back to each gradient's own dtype, i.e. what the server
    computes with after decoding.

    Schemes
    -------
    ``"float16"``
        A round trip through IEEE half precision (11 significant bits, relative error
        ``<= 2**-11`` for normal numbers; magnitudes below ``6.1e-5`` lose precision and
        below ``6e-8`` become 0). Entries beyond float16's range (``|g| > 65504``) are
        refused with a ``ValueError`` rather than sent as infinities.
    ``"int8"``
        Per-tensor uniform symmetric 8-bit: ``scale = max|g| / 127``, ``q = round(g / scale)``
        in ``-127..127``, sent ``q * scale``. Every entry is off by at most ``scale / 2``
        (plus round-off); an all-zero tensor stays zero.
    ``"sign"``
        1-bit signSGD (Bernstein et al. 2018) with the scale kept: ``sign(g) * mean|g|`` per
        tensor (Karimireddy et al. 2019), so signs are kept, zeros stay zero, and the
        tensor's L1 norm is kept when it has no zeros.

    Parameters
    ----------
    update : Update
    scheme : {"float16", "int8", "sign"}

    Returns
    -------
    Update

    Raises
    ------
    TypeError
        ``update`` not an :class:`Update`; ``scheme`` not a string.
    ValueError
        An unknown ``scheme``; with ``"float16"``, an entry beyond float16's range (clip the
        update first, e.g. :func:`clip`).
    """
    _check_update(update)
    check_choice("scheme", scheme, SCHEMES)
    if scheme == "float16":
        for name, g in update.gradients.items():
            big = float(g.detach().abs().max())
            if big > _FLOAT16_MAX:
                raise ValueError(f"the gradient of {name!r} has entries up to {big:.3g}, beyond float16's range "
                                 f"(65504): they would overflow to infinity; clip the update first")
        return update.map(lambda name, g: g.detach().to(torch.float16).to(g.dtype))
    if scheme == "int8":
        return update.map(_int8)
    return update.map(lambda name, g: torch.sign(g.detach()) * g.detach().abs().mean())


def _int8(name: str, g: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric 8-bit round trip of one gradient."""
    g = g.detach()
    scale = g.abs().max() / 127
    if scale == 0:
        return g.clone()
    return torch.clamp(torch.round(g / scale), -127, 127) * scale
