"""The networks of Chapter 5's model inversion: the target/shadow classifier and the inverse TCNN.

Both follow the seed study "Shadow Reconstructions" (TU/e BEP, 2024): a three-block CNN with
a 50-unit last hidden layer, and a transposed CNN from a feature vector to a 32x32 image.
Also the input checks shared by :mod:`leakutils.inversion` (images in [0, 1], integer labels,
training settings).
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

__all__ = ["Classifier", "InverseTCNN", "PAPER_CHANNELS", "PAPER_WIDTHS", "check_images", "check_labels",
           "check_training"]

#: Channel widths of the seed's classifier (the paper-scale setting).
PAPER_CHANNELS = (128, 256, 512)
#: Widths of the seed's inverse TCNN (the paper-scale setting).
PAPER_WIDTHS = (512, 256, 128)


def check_images(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Images: a finite tensor ``(B, C, H, W)``, B >= 1, with values in [0, 1]; raises TypeError/ValueError."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a tensor of shape (B, C, H, W) with B >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (got {float(x.min()):.3g}..{float(x.max()):.3g}); "
                         f"scale them first, e.g. leakutils.data.load returns [0, 1]")
    return x


def check_labels(labels, n: int, num_classes: int) -> torch.Tensor:
    """Class labels: an integer tensor ``(n,)`` with values in ``[0, num_classes)``; raises TypeError/ValueError."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor (N,) of int64, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be integers (int64 class indices), got {labels.dtype}; use labels.long()")
    if labels.shape != (n,):
        raise ValueError(f"need one label per image: labels have shape {tuple(labels.shape)} for {n} images")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")
    return labels


def check_training(n_inputs: int, n_targets: int, epochs: int, batch_size: int, lr: float, what: str) -> None:
    """Shared checks of the training loops: matching lengths and positive settings."""
    if n_inputs != n_targets:
        raise ValueError(f"{what} must have the same length")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")


class Classifier(nn.Module):
    """The seed's target/shadow classifier: three conv blocks, a 50-unit linear layer, 10 logits.

    Each block is ``Conv2d(k3, s1, p1) -> BatchNorm2d -> MaxPool2d(2) -> ReLU``; then
    ``Flatten -> Linear(hidden) -> Dropout -> Linear(num_classes)``.

    Parameters
    ----------
    channels : (int, int, int)
        Filters of the three blocks: :data:`PAPER_CHANNELS` (128, 256, 512) in the seed; the
        default (16, 32, 64) trains on 2 CPU cores in seconds.
    hidden : int
        Units of the last hidden linear layer ``fc`` (its output is ``A^L``), 50 in the seed.
    num_classes : int
    in_channels : int
    image_size : int
        Side of the square input, divisible by 8 (32 in the seed: MNIST resized).
    dropout : float
        Dropout after ``fc``, in [0, 1).

    Raises
    ------
    ValueError
        Non-positive sizes, an image size not divisible by 8, a dropout outside [0, 1).
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), hidden: int = 50, num_classes: int = 10,
                 in_channels: int = 1, image_size: int = 32, dropout: float = 0.5):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 3 or min(channels) < 1 or hidden < 1 or num_classes < 2 or in_channels < 1:
            raise ValueError("channels must be three positive widths; hidden, num_classes and in_channels positive")
        if image_size < 8 or image_size % 8:
            raise ValueError(f"image_size must be a positive multiple of 8 (three 2x2 poolings), got {image_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        blocks, c = [], in_channels
        for i, f in enumerate(channels, start=1):
            blocks.append((f"block{i}", nn.Sequential(OrderedDict(
                conv=nn.Conv2d(c, f, 3, 1, 1), bn=nn.BatchNorm2d(f), pool=nn.MaxPool2d(2), act=nn.ReLU()))))
            c = f
        self.features = nn.Sequential(OrderedDict(blocks))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c * (image_size // 8) ** 2, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)
        self.input_shape = (in_channels, image_size, image_size)

    def _check_input(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the classifier takes a torch.Tensor (B, C, H, W), got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            c, s, _ = self.input_shape
            raise ValueError(
                f"this classifier takes images (B, {c}, {s}, {s}), got {tuple(x.shape)}. Resize them, e.g. "
                f"leakutils.data.load(name, size={s}) or torch.nn.functional.interpolate(x, size=({s}, {s}), "
                f"mode='bilinear'), or build Classifier(image_size=...) for this size (a multiple of 8)")
        return x

    def last_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``A^L``: the output of ``fc`` (before dropout), shape ``(B, hidden)``.

        Raises
        ------
        ValueError
            Images of another shape than ``(B, *input_shape)`` (e.g. 28x28 for a 32x32 model).
        """
        return self.fc(self.flatten(self.features(self._check_input(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.out(self.drop(self.last_linear(x)))

    def fused(self) -> "Classifier":
        """A frozen copy for inference: each block's batch normalisation folded into its convolution.

        Computes the eval-mode outputs of this model (to float rounding) in about three quarters
        of the time, forward and backward; its parameters do not require gradients. Used where a
        trained model is only queried or differentiated with respect to its input (X~).
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        frozen = copy.deepcopy(self).eval()
        for block in frozen.features:
            block.conv, block.bn = fuse_conv_bn_eval(block.conv, block.bn), nn.Identity()
        return frozen.requires_grad_(False)


class InverseTCNN(nn.Module):
    """The seed's inverse model: a feature vector of any length F to a 32x32 image.

    ``(B, F) -> (B, F, 1, 1) -> ConvT(F->w0, k4, s1, p0) 4x4 -> BN -> Tanh -> Dropout(0.3)
    -> ConvT(w0->w1, k4, s2, p1) 8x8 -> BN -> Tanh -> Dropout(0.5) -> ConvT(w1->w2) 16x16 ->
    BN -> Tanh -> Dropout(0.5) -> ConvT(w2->C, k4, s2, p1) 32x32 -> Sigmoid``: images in [0, 1].

    Parameters
    ----------
    in_features : int
        F: 10 for O, 50 for A^L, 1024 for X~ (32x32), or their sums.
    widths : (int, int, int)
        :data:`PAPER_WIDTHS` (512, 256, 128) in the seed; default (64, 32, 16).
    out_channels : int

    Raises
    ------
    ValueError
        Non-positive sizes; in ``forward``, a feature length other than ``in_features``.
    """

    def __init__(self, in_features: int, widths: Sequence[int] = (64, 32, 16), out_channels: int = 1):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not isinstance(in_features, int) or in_features < 1 or len(widths) != 3 or min(widths) < 1:
            raise ValueError("in_features must be a positive integer and widths three positive integers")
        w0, w1, w2 = widths
        self.in_features = in_features
        self.net = nn.Sequential(
            nn.ConvTranspose2d(in_features, w0, 4, 1, 0), nn.BatchNorm2d(w0), nn.Tanh(), nn.Dropout(0.3),
            nn.ConvTranspose2d(w0, w1, 4, 2, 1), nn.BatchNorm2d(w1), nn.Tanh(), nn.Dropout(0.5),
            nn.ConvTranspose2d(w1, w2, 4, 2, 1), nn.BatchNorm2d(w2), nn.Tanh(), nn.Dropout(0.5),
            nn.ConvTranspose2d(w2, out_channels, 4, 2, 1), nn.Sigmoid())

    def forward(self, f: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"the inverse model takes a torch.Tensor (B, {self.in_features}), got {type(f).__name__}")
        if f.ndim != 2 or f.shape[1] != self.in_features:
            raise ValueError(f"this inverse model takes features of shape (B, {self.in_features}), got "
                             f"{tuple(f.shape)}; build one with InverseTCNN({f.shape[-1]}) for these")
        # the first layer sees a 1x1 input, so its transposed convolution is one matrix product
        # (the same numbers as self.net[0], several times faster on a CPU for long features)
        first = self.net[0]
        h = (f @ first.weight.flatten(1)).view(f.shape[0], *first.weight.shape[1:]) + first.bias[:, None, None]
        return self.net[1:](h)
