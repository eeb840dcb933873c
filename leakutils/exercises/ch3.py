"""Checks of Chapter 3's exercises (convolutional layers as linear systems)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from ._base import WrongAnswer, array, boolean, exercise, integer, wrong

__all__ = ["COLUMNS", "STRIDE_INPUT"]

#: Exercise 3.1: the columns of ``counts``.
COLUMNS = ("unknowns", "forward equations", "gradient equations")

#: Exercise 3.3: the input of the kernel-3, stride-3 layer without padding.
STRIDE_INPUT = (2, 12, 12)


def _out(size: int, conv: nn.Conv2d) -> int:
    """Output side of ``conv`` on a square input of side ``size``."""
    return (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


def _lenet_counts() -> np.ndarray:
    """(3, 3): unknowns C H^2, forward F O^2, gradient C F K^2 of LeNet's convs on 3x32x32."""
    from .. import models

    body = models.LeNet(3, 32).body
    rows, size = [], 32
    for conv in (body.conv1, body.conv2, body.conv3):
        c, f, k, o = conv.in_channels, conv.out_channels, conv.kernel_size[0], _out(size, conv)
        rows.append((c * size**2, f * o**2, c * f * k**2))
        size = o
    return np.array(rows, dtype=np.float64)


@exercise("ch3-count", "3.1", answers=("counts", "any_layer_safe"))
def count(counts, any_layer_safe) -> None:
    """Exercise 3.1: unknowns and equations of DLG's LeNet on a 3x32x32 image.

    Parameters
    ----------
    counts : array-like, (3, 3) of whole numbers
        Row ``i`` for conv ``i + 1``: its input's unknowns ``C H^2``, its forward equations
        ``F O^2`` and its weight-gradient equations over all channels ``C F K^2``.
    any_layer_safe : bool
        Whether any layer passes the bound ``|X| > |A| + |B|``.

    Tolerance: exact.
    """
    got = array("counts", counts, (3, 3), what="a 3x3 table (rows conv1..conv3, columns "
                "unknowns, forward, gradient)")
    want = _lenet_counts()
    formulas = {0: "C H^2 of the layer's input (C channels, H x H pixels)",
                1: "F O^2, one per filter and output pixel, with O = (H + 2P - K) // S + 1",
                2: "C F K^2, one per weight of the layer (all channels together)"}
    for i in range(3):
        for j in range(3):
            if got[i, j] != want[i, j]:
                raise wrong("counts", f"conv{i + 1}, {COLUMNS[j]}: {formulas[j]}; the input of "
                            "conv2 and conv3 is the output of the layer before")
    safe = bool(np.any(want[:, 0] > want[:, 1] + want[:, 2]))
    if boolean("any_layer_safe", any_layer_safe) != safe:
        raise wrong("any_layer_safe", "compare, layer by layer, the unknowns with forward plus "
                    "gradient equations")


@lru_cache(maxsize=None)
def _smallest_exact(activation: str) -> int:
    """The fewest filters (5x5, stride 2) with which R-CONV rebuilds the 16x16 digit exactly."""
    from ..widgets import conv_demo

    return next(f for f in range(1, 65) if conv_demo(f, 5, 2, activation).psnr >= 100)


@exercise("ch3-relu-filters", "3.2", answers=("filters_tanh", "filters_relu", "filters_by_count"))
def relu_filters(filters_tanh, filters_relu, filters_by_count) -> None:
    """Exercise 3.2: the fewest filters that rebuild the digit, with Tanh and with ReLU.

    Parameters
    ----------
    filters_tanh, filters_relu : int
        The smallest number of filters (5x5, stride 2, 16x16 digit) at which
        ``widgets.conv_demo(F, 5, 2, activation)`` reaches 100 dB.
    filters_by_count : int
        The smallest ``F`` at which forward plus gradient equations reach the 256 unknowns.

    Tolerance: exact.
    """
    for name, value, act in (("filters_tanh", filters_tanh, "tanh"),
                             ("filters_relu", filters_relu, "relu")):
        got, want = integer(name, value), _smallest_exact(act)
        if got < want:
            raise wrong(name, f"at {got} filters the digit is not yet exact (below 100 dB "
                        f"with {act}): try more")
        if got > want:
            raise wrong(name, f"fewer than {got} filters already rebuild the digit with {act}: "
                        "find the smallest")
    # a 5x5 kernel with padding 2 and stride 2 on 16 pixels gives an 8x8 output
    o, k, unknowns = (16 + 4 - 5) // 2 + 1, 5, 16 * 16
    by_count = next(f for f in range(1, 65) if f * o * o + f * k * k >= unknowns)
    if integer("filters_by_count", filters_by_count) != by_count:
        raise wrong("filters_by_count", "F O^2 forward plus F K^2 gradient equations (one "
                    "channel) against 16 x 16 unknowns; O = (16 + 2*2 - 5) // 2 + 1")


def _stride_rank(filters: int) -> int:
    """Rank of both equation families of conv(2 -> filters, k3, s3) + tanh on 2x12x12."""
    from ..attacks import conv

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = nn.Conv2d(STRIDE_INPUT[0], filters, 3, stride=3)
    return int(conv.count_constraints(layer, STRIDE_INPUT, nn.Tanh())["rank"])


@exercise("ch3-stride-kernel", "3.3", answers=("by_count", "by_rank"))
def stride_kernel(by_count, by_rank) -> None:
    """Exercise 3.3: where the counts reach the 288 unknowns, and where the rank does.

    Parameters
    ----------
    by_count : int
        The smallest number of filters at which forward plus gradient equations of the
        kernel-3, stride-3 layer (no padding, tanh) on a 2x12x12 input reach 288.
    by_rank : int
        The smallest number of filters at which their rank (``conv.count_constraints``)
        reaches 288.

    Tolerance: exact.
    """
    c, h, _ = STRIDE_INPUT
    unknowns, o = c * h * h, (h - 3) // 3 + 1
    want = next(f for f in range(1, 100) if f * o * o + c * f * 9 >= unknowns)
    got = integer("by_count", by_count)
    if got != want:
        raise wrong("by_count", "count F O^2 forward and C F K^2 gradient equations with "
                    "O = (12 - 3) // 3 + 1, and find the first F at which they reach 288")
    got = integer("by_rank", by_rank)
    if not 1 <= got <= 64:
        raise wrong("by_rank", "a number of filters between 1 and 64")
    if _stride_rank(got) < unknowns:
        raise wrong("by_rank", f"at {got} filters the rank is still below 288: measure it for "
                    "more filters")
    if got > 1 and _stride_rank(got - 1) == unknowns:
        raise wrong("by_rank", f"fewer than {got} filters already reach rank 288: find the "
                    "smallest")


@exercise("ch3-defence", "3.4", answers=("layer", "first_layer_enough"))
def defence(layer, first_layer_enough) -> None:
    """Exercise 3.4: a first layer for 3x32x32 images that passes ``|X| > |A| + |B|``.

    Parameters
    ----------
    layer : nn.Conv2d
        3 input channels; ``conv.count_constraints(layer, (3, 32, 32), nn.Tanh())`` must
        report ``bound_safe``.
    first_layer_enough : bool
        Whether a first layer that passes the bound makes the network safe.
    """
    from ..attacks import conv

    if not isinstance(layer, nn.Conv2d):
        raise wrong("layer", f"should be an nn.Conv2d, got a {type(layer).__name__}")
    if layer.in_channels != 3:
        raise wrong("layer", "the first layer of a colour network takes 3 input channels")
    try:
        c = conv.count_constraints(layer, (3, 32, 32), nn.Tanh())
    except (TypeError, ValueError) as err:
        raise WrongAnswer(f"`layer`: conv.count_constraints refuses it: {err}") from None
    if not c["bound_safe"]:
        raise wrong("layer", f"{c['forward_equations']} forward and {c['gradient_equations']} "
                    f"gradient equations for {c['unknowns']} unknowns: the bound needs more "
                    "unknowns than both together (fewer filters, a larger stride)")
    if boolean("first_layer_enough", first_layer_enough):
        raise wrong("first_layer_enough", "what about the layers above it, and the head's "
                    "input (Chapter 1)? And is an undetermined input private?")
