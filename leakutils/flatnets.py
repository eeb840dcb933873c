"""One-hidden-layer ReLU networks as flat weight vectors: the parametrisation of Chapter 6.

A network ``D -> N (ReLU) -> K`` is the vector ``[W (N*D), b (N), A (K*N), c (K)]`` (the
order of :class:`leakutils.models.MLP`'s ``state_dict``); a population is a ``(P, n_params)``
tensor, evaluated all at once by :func:`forward`. Used by the meta-model of Oh et al.,
"Towards Reverse-Engineering Black-Box Neural Networks", ICLR 2018
(:mod:`leakutils.metamodel`) and by the exact extraction (:mod:`leakutils.extraction`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import models
from .validate import check_int, check_seed, check_tensor

__all__ = ["Sizes", "as_sizes", "unflatten", "flatten", "forward", "to_model", "init_population", "accuracy",
           "check_weights", "check_xy"]


@dataclass(frozen=True)
class Sizes:
    """Architecture ``D -> N (ReLU) -> K`` of a one-hidden-layer network.

    Flattened weights are ``[W (N*D), b (N), A (K*N), c (K)]``, the order of
    :class:`leakutils.models.MLP`'s ``state_dict`` (``fc1.weight, fc1.bias, out.weight, out.bias``).
    """

    D: int = 784
    N: int = 64
    K: int = 10

    def __post_init__(self):
        for name in ("D", "N", "K"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be a positive integer, got {type(v).__name__} {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

    @property
    def n_params(self) -> int:
        """Number of weights and biases: ``N (D + 1) + K (N + 1)`` (50,890 for 784-64-10)."""
        return self.N * (self.D + 1) + self.K * (self.N + 1)


def as_sizes(sizes) -> Sizes:
    """A :class:`Sizes` from a Sizes or a tuple ``(D, N, K)``; TypeError otherwise."""
    if isinstance(sizes, Sizes):
        return sizes
    if isinstance(sizes, (tuple, list)) and len(sizes) == 3:
        return Sizes(*sizes)
    raise TypeError(f"sizes must be a Sizes or a tuple (D, N, K), got {sizes!r}")


def unflatten(flat: torch.Tensor, sizes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split flattened weights ``(..., n_params)`` into ``W (..., N, D)``, ``b (..., N)``, ``A (..., K, N)``, ``c (..., K)``.

    Raises
    ------
    ValueError
        The last axis is not ``sizes.n_params`` long.
    """
    s = as_sizes(sizes)
    if not isinstance(flat, torch.Tensor):
        raise TypeError(f"flat must be a torch.Tensor (..., n_params), got {type(flat).__name__}")
    if flat.ndim == 0 or flat.shape[-1] != s.n_params:
        raise ValueError(f"flattened weights must have {s.n_params} entries for a {s.D}-{s.N}-{s.K} network, "
                         f"got {flat.shape[-1]}")
    lead = flat.shape[:-1]
    i = 0
    out = []
    for shape in ((s.N, s.D), (s.N,), (s.K, s.N), (s.K,)):
        n = math.prod(shape)
        out.append(flat[..., i:i + n].reshape(*lead, *shape))
        i += n
    return tuple(out)  # type: ignore[return-value]


def flatten(W: torch.Tensor, b: torch.Tensor, A: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`unflatten`: ``W (..., N, D)``, ``b (..., N)``, ``A (..., K, N)``, ``c (..., K)`` to ``(..., n_params)``.

    Raises
    ------
    TypeError
        Arguments that are not tensors.
    ValueError
        Shapes that do not fit one ``D -> N -> K`` network (or a stack of them).
    """
    if not all(isinstance(t, torch.Tensor) for t in (W, b, A, c)):
        raise TypeError("W, b, A and c must be torch tensors")
    if W.ndim < 2 or b.shape != W.shape[:-1] or A.shape[:-2] != W.shape[:-2] or A.shape[-1] != W.shape[-2] \
            or c.shape != A.shape[:-1]:
        raise ValueError(f"shapes W {tuple(W.shape)}, b {tuple(b.shape)}, A {tuple(A.shape)}, c {tuple(c.shape)} do "
                         f"not form a network: need W (..., N, D), b (..., N), A (..., K, N), c (..., K)")
    lead = W.shape[:-2]
    return torch.cat([W.reshape(*lead, -1), b, A.reshape(*lead, -1), c], dim=-1)


def forward(flat: torch.Tensor, x: torch.Tensor, sizes) -> torch.Tensor:
    """Logits of P networks given by flattened weights, differentiable in both arguments.

    Parameters
    ----------
    flat : torch.Tensor
        ``(P, n_params)``.
    x : torch.Tensor
        Inputs shared by all networks ``(B, D)`` (or ``(B, C, H, W)``, flattened), or one
        batch per network ``(P, B, D)``; same dtype as ``flat``.

    Returns
    -------
    torch.Tensor
        ``(P, B, K)`` logits.
    Raises
    ------
    TypeError
        ``x`` not a tensor of ``flat``'s dtype.
    ValueError
        ``flat`` not ``(P, n_params)`` finite; ``x`` empty, with NaN or infinite entries, or
        without ``D`` features.
    """
    s = as_sizes(sizes)
    W, b, A, c = unflatten(check_weights(flat, "flat", s).reshape(-1, s.n_params), s)
    if not isinstance(x, torch.Tensor) or x.dtype != flat.dtype:
        raise TypeError(f"x must be a torch.Tensor of the weights' dtype {flat.dtype}, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    check_tensor("x", x, min_ndim=2, shape="(B, D), (B, C, H, W) or (P, B, D)")
    if x.dim() != 3 or x.shape[0] != flat.shape[0]:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != s.D:
            raise ValueError(f"inputs have {x.shape[1]} features, the networks expect D = {s.D}")
        h = torch.relu(torch.einsum("bd,pnd->pbn", x, W) + b[:, None, :])
    else:
        h = torch.relu(torch.bmm(x, W.transpose(1, 2)) + b[:, None, :])
    return torch.bmm(h, A.transpose(1, 2)) + c[:, None, :]


def to_model(flat: torch.Tensor, sizes, input_shape=None, dtype: torch.dtype = torch.float64) -> models.MLP:
    """A :class:`leakutils.models.MLP` holding one network's flattened weights ``(n_params,)``.

    ``input_shape`` defaults to ``(D,)``; pass ``(1, 28, 28)`` to feed images directly.

    Raises
    ------
    TypeError, ValueError
        ``flat`` not a finite float tensor of ``n_params`` entries; an ``input_shape`` whose
        size is not ``D``.
    """
    s = as_sizes(sizes)
    check_weights(flat, "flat", s)
    if flat.numel() != s.n_params:
        raise ValueError(f"to_model takes one network ({s.n_params} weights), got shape {tuple(flat.shape)}")
    if input_shape is not None and math.prod(tuple(input_shape)) != s.D:
        raise ValueError(f"input_shape {tuple(input_shape)} has {math.prod(tuple(input_shape))} entries, the "
                         f"network takes D = {s.D}")
    m = models.MLP(input_shape or (s.D,), (s.N,), s.K, dtype=dtype)
    W, b, A, c = unflatten(flat.detach().reshape(-1), s)
    with torch.no_grad():
        m.fc1.weight.copy_(W)
        m.fc1.bias.copy_(b)
        m.out.weight.copy_(A)
        m.out.bias.copy_(c)
    return m


def init_population(n_nets: int, sizes, seeds) -> torch.Tensor:
    """PyTorch's default ``nn.Linear`` initialisation for each network, from its own seed.

    Every weight and bias of a layer with ``fan_in`` inputs is drawn from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, as ``nn.Linear.reset_parameters`` does.

    Returns
    -------
    torch.Tensor
        ``(n_nets, n_params)`` float32.

    Raises
    ------
    TypeError
        ``n_nets`` or a seed not an integer.
    ValueError
        ``n_nets < 1``, a seed outside ``0..2**32 - 1``, or not one seed per network.
    """
    n_nets = check_int("n_nets", n_nets, 1)
    s = as_sizes(sizes)
    seeds = [check_seed(f"seeds[{i}]", sd) for i, sd in enumerate(seeds)]
    if len(seeds) != n_nets:
        raise ValueError(f"need one seed per network: {n_nets} networks, {len(seeds)} seeds")
    out = torch.empty(n_nets, s.n_params)
    for p, sd in enumerate(seeds):
        g = torch.Generator().manual_seed(int(sd))
        parts = []
        for shape, fan_in in (((s.N, s.D), s.D), ((s.N,), s.D), ((s.K, s.N), s.N), ((s.K,), s.N)):
            bound = 1.0 / math.sqrt(fan_in)
            parts.append((torch.rand(shape, generator=g) * 2 - 1).mul_(bound).reshape(-1))
        out[p] = torch.cat(parts)
    return out



def check_weights(flat, name: str, s: Sizes | None = None) -> torch.Tensor:
    """Flattened weights: a finite float tensor, ``(..., n_params)`` when ``s`` is given."""
    if not isinstance(flat, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of flattened weights, got {type(flat).__name__}")
    if not flat.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {flat.dtype}")
    if s is not None and (flat.ndim == 0 or flat.shape[-1] != s.n_params):
        raise ValueError(f"{name} must have {s.n_params} entries per network for a {s.D}-{s.N}-{s.K} network, "
                         f"got shape {tuple(flat.shape)}")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{name} contains NaN or infinite values ({int((~torch.isfinite(flat)).sum())} entries); "
                         f"the metrics need finite weights (a diverged training?)")
    return flat


def check_xy(images, labels, D, what):
    """Images ``(n, D)`` (or ``(n, C, H, W)``, flattened) as float32 and integer labels ``(n,)`` as int64.

    Raises
    ------
    TypeError
        Labels that are not integers.
    ValueError
        Another number of features than ``D``, not one label per image, NaN or infinite images.
    """
    y = torch.as_tensor(labels)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{what}: labels must be integer class indices, got {y.dtype}; use labels.long()")
    x = torch.as_tensor(images).reshape(len(images), -1).float()
    y = y.long()
    if x.shape[1] != D:
        raise ValueError(f"{what} have {x.shape[1]} features, the networks expect D = {D}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{what}: need one label per image, got {tuple(y.shape)} labels for {x.shape[0]} images")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x, y


def accuracy(flat: torch.Tensor, images, labels, sizes, chunk: int = 64) -> torch.Tensor:
    """Accuracy in ``[0, 1]`` of each network ``(P, n_params)`` on ``images``; float64 ``(P,)``."""
    s = as_sizes(sizes)
    flat = check_weights(flat, "flat", s).reshape(-1, s.n_params)
    x, y = check_xy(images, labels, s.D, "test images")
    out = []
    with torch.no_grad():
        for i in range(0, flat.shape[0], chunk):
            logits = forward(flat[i:i + chunk].float(), x, s)
            out.append((logits.argmax(-1) == y).double().mean(1))
    return torch.cat(out)

