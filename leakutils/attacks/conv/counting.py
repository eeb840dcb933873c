"""Counting one conv layer's unknowns and equations, and measuring the rank they reach."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ... import activations as acts
from ...validate import check_seed
from .._common import check_rtol
from . import solve as S
from .equations import forward_matrix, gradient_matrix, output_size

__all__ = ["count_constraints"]


def count_constraints(conv: nn.Conv2d, input_shape, activation: nn.Module | None = None, *, seed: int = 0,
                      rtol: float = S.DEFAULT_RTOL) -> dict:
    """Count the unknowns and equations of one conv layer, and measure the rank they reach.

    Parameters
    ----------
    conv : nn.Conv2d
        A plain convolution (groups 1, dilation 1, integer zero padding), finite weights.
    input_shape : (C, H, W)
        ``C`` the layer's input channels.
    activation : nn.Module, optional
        The activation after the layer (default: identity). It decides which forward
        equations exist (invertible outputs) and how many ``dl/dO`` entries are zero.
    seed : int
        Non-negative. The rank is measured on a random instance (input ``U(0, 1)``,
        ``dl/dX ~ N(0, 1)``) with the attack's own solvers and rank tolerances, so the count
        is the true rank of the stacked equations, not the number of rows.
    rtol : float
        In (0, 1): relative tolerance of the rank decisions.

    Returns
    -------
    dict
        ``unknowns`` (``C H W``), ``forward_equations`` (``F O_h O_w``, the R-CONV bound's
        ``|A|``), ``gradient_equations`` (``C F K^2``; per channel ``F K^2``, the bound's
        ``|B|``), ``forward_available`` (forward equations whose pre-activation is known),
        ``gradient_rank_per_channel``, ``rank`` (of both together), ``deficiency``
        (``unknowns - rank``), ``determined`` (fraction of input pixels fixed), ``bound_safe``:
        the R-CONV defence bound ``|X| > |A| + |B|`` with totals, ``C H W > F O_h O_w + C F K^2``
        (more unknowns than equations of both kinds, so the layer cannot be solved whatever
        the ranks).

    Raises
    ------
    TypeError
        ``conv`` not an ``nn.Conv2d``, an unsupported activation, a non-integer seed.
    ValueError
        An input shape that does not fit the layer, a negative seed, a bad ``rtol``.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    act = activation if activation is not None else nn.Identity()
    acts.rule_for(act)
    seed = check_seed("seed", seed)
    rtol = check_rtol(rtol)
    try:
        C, H, W = (int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}") from None
    if C != conv.in_channels:
        raise ValueError(f"the layer has {conv.in_channels} input channels, input_shape has {C}")
    output_size(conv, (H, W))
    gen = torch.Generator().manual_seed(seed)
    conv64 = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       bias=conv.bias is not None).double()
    conv64.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    x = torch.rand(1, C, H, W, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        O = conv64(x)
        X = copy.deepcopy(act).double()(O)
    gX = torch.randn(X.shape, generator=gen, dtype=torch.float64)
    dO = acts.propagate(act, X, gX)[0]
    O_pre, O_det = acts.invert(act, X)
    A_g = gradient_matrix(conv64, dO.numpy(), (H, W))
    B = A_g @ x[0].reshape(C, H * W).numpy().T
    rows = O_det[0].numpy()
    Fw = forward_matrix(conv64, (C, H, W), rows)
    bias = conv64.bias.detach() if conv64.bias is not None else torch.zeros(conv64.out_channels, dtype=torch.float64)
    r = (O_pre[0] - bias[:, None, None]).numpy()[rows]
    rank_g = S.svd_rank(S.svd(A_g, compute_uv=False), rtol)
    _, mask, info = S.solve_layer(A_g, B, lambda: (Fw, r) if Fw.shape[0] else (None, None), C, H * W, rtol,
                                  dense_limit=10 ** 9)
    rank = info["rank"]
    F_, oh, ow = O.shape[1:]
    unknowns = C * H * W
    A_count, B_count = F_ * oh * ow, F_ * conv.kernel_size[0] * conv.kernel_size[1]
    return {
        "unknowns": unknowns, "forward_equations": A_count, "gradient_equations": C * B_count,
        "forward_available": int(Fw.shape[0]), "gradient_rank_per_channel": rank_g, "rank": rank,
        "deficiency": None if rank is None else unknowns - rank, "determined": float(np.mean(mask)),
        "bound_safe": unknowns > A_count + C * B_count,
    }
