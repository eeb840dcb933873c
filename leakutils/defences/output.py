"""Defences on a classifier's output vectors (Chapter 5): rounding and top-k truncation.

Top-k truncation keeps the ``k`` largest logits and sets the others to 0. A kept logit can
be negative, so the zeros can outrank kept entries: the kept set travels as a mask
(``top_k(..., return_mask=True)``) or is read back as the non-zero entries
(:func:`kept_entries`), never as "the top k of the truncated vector". Yang et al.,
"Neural Network Inversion in Adversarial Setting via Background Knowledge Alignment", CCS
2019 (truncation); Fredrikson et al., "Model Inversion Attacks that Exploit Confidence
Information", CCS 2015 (rounding).
"""
from __future__ import annotations

import torch

from ..validate import check_int

__all__ = ["round_outputs", "top_k", "kept_entries", "kept_mask", "check_vectors"]


def check_vectors(o, name: str = "o") -> torch.Tensor:
    """Output vectors: a finite float tensor ``(N, K)`` or ``(K,)``.

    Raises
    ------
    TypeError
        Not a tensor, or not of a floating dtype.
    ValueError
        Not ``(N, K)`` or ``(K,)`` with ``K >= 1``; NaN or infinite entries.
    """
    if not isinstance(o, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of output vectors (N, K), got {type(o).__name__}")
    if not o.is_floating_point():
        raise TypeError(f"{name} must be a float tensor of output vectors (N, K), got {o.dtype}; "
                        f"convert with .float() or .double()")
    if o.ndim not in (1, 2) or o.shape[-1] < 1:
        raise ValueError(f"{name} must be a float tensor of output vectors (N, K), got shape {tuple(o.shape)}")
    if not bool(torch.isfinite(o).all()):
        raise ValueError(f"{name} contains NaN or infinite values ({int((~torch.isfinite(o)).sum())} entries)")
    return o


def round_outputs(o: torch.Tensor, decimals: int) -> torch.Tensor:
    """Defence: round every entry of the output vectors ``(N, K)`` to ``decimals`` decimals (>= 0).

    Raises
    ------
    TypeError, ValueError
        ``o`` not a finite float tensor; ``decimals`` not a non-negative integer.
    """
    o = check_vectors(o)
    if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"decimals must be a non-negative integer, got {decimals!r}")
    return torch.round(o, decimals=decimals)


def top_k(o: torch.Tensor, k: int, *, return_mask: bool = False):
    """Defence: keep the ``k`` largest entries of each output vector (logits), set the others to 0.

    Truncated logits are ambiguous on their own: a kept logit can be negative, so the zeros
    of the dropped entries can be larger than kept values, and the kept set can no longer be
    read as "the top k of what is seen". The kept set therefore travels as a mask: pass it
    (``kept``) to :func:`last_layer_activations`, :func:`gradient_reconstruction` and
    :meth:`Lab.parts`, or let them read it with :func:`kept_entries` (the non-zero entries).
    Yang et al. (CCS 2019) truncate probabilities instead, whose dropped entries (0) are always
    below the kept ones (> 0); truncating logits keeps the attack's features (logits, A^L)
    on the scale the rest of Chapter 5 uses.

    Parameters
    ----------
    o : torch.Tensor
        ``(N, K)`` (or ``(K,)``) finite output vectors.
    k : int
        Entries kept per vector, ``1..K``.
    return_mask : bool
        Also return the kept set.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        The truncated vectors (same shape and dtype), and with ``return_mask`` the bool mask of
        the kept entries (the top ``k`` of the original vector).

    Raises
    ------
    TypeError
        ``o`` is not a float tensor; ``k`` not an integer.
    ValueError
        ``k`` outside ``1..K`` for vectors of length ``K``; non-finite ``o``.
    """
    o = check_vectors(o, "o")
    k = check_int("k", k, 1, o.shape[-1])
    keep = torch.zeros_like(o, dtype=torch.bool).scatter_(-1, o.topk(k, dim=-1).indices, True)
    out = torch.where(keep, o, torch.zeros_like(o))
    return (out, keep) if return_mask else out


def kept_entries(o: torch.Tensor, k: int) -> torch.Tensor:
    """The kept set of vectors truncated by :func:`top_k` to ``k`` entries: their non-zero entries.

    Parameters
    ----------
    o : torch.Tensor
        ``(N, K)`` truncated output vectors.
    k : int
        ``1..K``.

    Returns
    -------
    torch.Tensor
        ``(N, K)`` bool.

    Raises
    ------
    ValueError
        A vector without exactly ``k`` non-zero entries (a kept logit that is exactly 0, e.g.
        after rounding, or vectors not truncated to ``k``): the kept set cannot be read from
        the vector; pass the mask from ``top_k(o, k, return_mask=True)`` instead.
    """
    o = check_vectors(o, "o")
    k = check_int("k", k, 1, o.shape[-1])
    mask = o != 0
    bad = (mask.sum(-1) != k).nonzero().flatten()
    if bad.numel():
        raise ValueError(
            f"{bad.numel()} vectors (first: row {int(bad[0])}) do not have exactly {k} non-zero entries, so the "
            f"entries kept by top_k cannot be read from them; pass kept=top_k(o, k, return_mask=True)[1]")
    return mask


def kept_mask(o: torch.Tensor, k: int | None, kept: torch.Tensor | None) -> torch.Tensor:
    """Mask ``(N, K)`` bool of the entries the attacker sees: ``kept`` if given (checked), all
    (``k`` None or ``K``), or :func:`kept_entries` of ``o``.

    Raises
    ------
    TypeError
        ``k`` not an integer (or None).
    ValueError
        ``k`` outside ``1..K``; a ``kept`` that is not a bool tensor of the shape of ``o``, marks another number of
        entries than ``k``, or none in a vector; a kept set that cannot be read from ``o``.
    """
    o = check_vectors(o, "o")
    if k is not None:
        k = check_int("k", k, 1, o.shape[-1])
    if kept is not None:
        if not isinstance(kept, torch.Tensor) or kept.dtype != torch.bool or kept.shape != o.shape:
            raise ValueError(f"kept must be a bool tensor of the shape of o {tuple(o.shape)}, as top_k(o, k, "
                             f"return_mask=True) returns")
        if k is not None and bool((kept.sum(-1) != k).any()):
            raise ValueError(f"kept marks other than k = {k} entries in some vectors")
        if not bool(kept.any(-1).all()):
            raise ValueError("kept marks no entry in some vectors")
        return kept
    if k is None or k == o.shape[-1]:
        return torch.ones_like(o, dtype=torch.bool)
    return kept_entries(o, k)
