"""Model inversion from output vectors: a shadow model and a transposed-CNN inverse model (gray box).

The attacker knows the target classifier's architecture, not its weights, and sees only
its output vectors ``O`` (the logits) for private images. It trains a **shadow model** of
the same architecture on disjoint data from the same distribution, and an **inverse
model** (a transposed CNN, TCNN) that maps features of an output vector back to an image:

- ``O``: the output vector itself (10 numbers);
- ``A``: the shadow's last-linear-layer activations ``A^L`` that its output layer maps to
  ``O`` (50 numbers; 10 equations for 50 unknowns, so the minimum-norm solution);
- ``X``: an image ``X~`` optimised through the shadow so that its logits match ``O`` (with
  L2 and total-variation priors, started from the class-average image of the predicted class).

The TCNN is trained on the shadow's features of the shadow's own training images (the
attacker's data) and tested on features of the target's outputs for images neither model
saw. Defences act on the output vector: rounding and top-k truncation.

References: the seed study "Shadow Reconstructions" (TU/e BEP, 2024) for the architectures,
priors and protocol; Yang et al., "Neural Network Inversion in Adversarial Setting via
Background Knowledge Alignment", CCS 2019 (inverse models, truncation); Fredrikson et al.,
"Model Inversion Attacks that Exploit Confidence Information", CCS 2015 (optimisation,
rounding as a countermeasure).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["Classifier", "InverseTCNN", "PAPER_CHANNELS", "PAPER_WIDTHS", "COMBINATIONS", "SEED_RESULTS",
           "train_classifier", "accuracy", "outputs", "train_inverse", "invert", "class_averages",
           "gradient_reconstruction", "last_layer_activations", "round_outputs", "top_k", "disjoint_splits",
           "features", "FeatureScaler", "total_variation", "identity_score", "Lab"]

#: Channel widths of the seed's classifier (the paper-scale setting).
PAPER_CHANNELS = (128, 256, 512)
#: Widths of the seed's inverse TCNN (the paper-scale setting).
PAPER_WIDTHS = (512, 256, 128)
#: Input combinations of the TCNN: O (output vector), A (A^L), X (X~) and their sums.
COMBINATIONS = ("O", "A", "X", "O+A", "O+X", "A+X", "O+A+X")
#: The seed's results on its test set D_F: SSIM and MSE (std over 5 retrainings where given).
SEED_RESULTS = {
    "O": {"ssim": 0.2298, "ssim_std": 0.0041, "mse": 0.0966},
    "A": {"ssim": 0.1218, "mse": 0.1077},
    "X": {"ssim": 0.3727, "ssim_std": 0.0030, "mse": 0.0649},
    "O+A": {"ssim": 0.1619},
    "O+X": {"ssim": 0.2467},
    "A+X": {"ssim": 0.1822},
    "O+A+X": {"ssim": 0.2194},
    "X~ alone": {"ssim": 0.2409, "ssim_std": 0.0068, "mse": 0.0672},
    "top-k, X": {10: 0.3747, 5: 0.4084, 3: 0.4172, 1: 0.4296},
}


def _check_images(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{name} must be a tensor of shape (B, C, H, W)")
    if not torch.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (got {float(x.min()):.3g}..{float(x.max()):.3g}); "
                         f"scale them first, e.g. leakutils.data.load returns [0, 1]")
    return x


def _check_training(n_inputs: int, n_targets: int, epochs: int, batch_size: int, lr: float, what: str) -> None:
    """Shared checks of the training loops: matching lengths and positive settings."""
    if n_inputs != n_targets:
        raise ValueError(f"{what} must have the same length")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs, batch_size and lr must be positive")


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

    def last_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``A^L``: the output of ``fc`` (before dropout), shape ``(B, hidden)``."""
        return self.fc(self.flatten(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.out(self.drop(self.last_linear(x)))


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
        if f.ndim != 2 or f.shape[1] != self.in_features:
            raise ValueError(f"this inverse model takes features of shape (B, {self.in_features}), got "
                             f"{tuple(f.shape)}; build one with InverseTCNN({f.shape[-1]}) for these")
        return self.net(f[:, :, None, None])


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def train_classifier(model: Classifier, images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 5,
                     batch_size: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> dict:
    """Train a classifier with cross-entropy and Adam, as the seed does (its setting: 20 epochs).

    Parameters
    ----------
    model : Classifier
    images : torch.Tensor
        ``(N, C, H, W)`` float32 in [0, 1].
    labels : torch.Tensor
        ``(N,)`` int64.
    epochs, batch_size, lr, seed
        Seeded shuffling; the model's own initialisation is the caller's (seed it before).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    dict
        ``loss`` (mean cross-entropy per epoch, nats) and ``accuracy`` (training accuracy per
        epoch, in [0, 1]). The model is left in eval mode.

    Raises
    ------
    ValueError
        Images outside [0, 1], mismatched lengths, non-positive sizes.
    """
    _check_images(images)
    _check_training(images.shape[0], labels.shape[0], epochs, batch_size, lr, "images and labels")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"loss": [], "accuracy": []}
    model.train()
    for _ in tqdm(range(epochs), desc="classifier", disable=not progress, leave=False):
        total = correct = 0.0
        for idx in _batches(images.shape[0], batch_size, gen):
            opt.zero_grad()
            logits = model(images[idx])
            loss = F.cross_entropy(logits, labels[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            correct += float((logits.argmax(1) == labels[idx]).sum())
        history["loss"].append(total / images.shape[0])
        history["accuracy"].append(correct / images.shape[0])
    model.eval()
    return history


@torch.no_grad()
def outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The model's output vectors (logits) in eval mode, ``(N, K)`` float32."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``, in [0, 1]."""
    return float((outputs(model, images).argmax(1) == labels).double().mean())


def round_outputs(o: torch.Tensor, decimals: int) -> torch.Tensor:
    """Defence: round every entry of the output vectors to ``decimals`` decimals (>= 0)."""
    if not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"decimals must be a non-negative integer, got {decimals!r}")
    return torch.round(o, decimals=decimals)


def top_k(o: torch.Tensor, k: int) -> torch.Tensor:
    """Defence: keep the ``k`` largest entries of each output vector, set the others to 0.

    Raises
    ------
    ValueError
        ``k`` outside ``1..K`` for vectors of length ``K``.
    """
    K = o.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= K:
        raise ValueError(f"k must be an integer in 1..{K} for output vectors of length {K}, got {k!r}")
    keep = torch.zeros_like(o, dtype=torch.bool).scatter_(-1, o.topk(k, dim=-1).indices, True)
    return torch.where(keep, o, torch.zeros_like(o))


def _kept(o: torch.Tensor, k: int | None) -> torch.Tensor:
    """Mask of the entries the attacker sees: all, or the top k (known k, as in the seed)."""
    if k is None:
        return torch.ones_like(o, dtype=torch.bool)
    return torch.zeros_like(o, dtype=torch.bool).scatter_(-1, o.topk(k, dim=-1).indices, True)


def class_averages(images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Mean image per class, ``(num_classes, C, H, W)``; a class without images gets the overall mean.

    Raises
    ------
    ValueError
        Images outside [0, 1] or lengths that differ.
    """
    _check_images(images)
    if labels.shape[0] != images.shape[0]:
        raise ValueError("images and labels must have the same length")
    overall = images.mean(0)
    return torch.stack([images[labels == c].mean(0) if bool((labels == c).any()) else overall
                        for c in range(num_classes)])


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image, ``(B,)``: sum of absolute neighbour differences."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1) + \
        (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)


def gradient_reconstruction(shadow: nn.Module, o: torch.Tensor, init: torch.Tensor, *, steps: int = 400,
                            lr: float = 0.01, l2: float = 4.43e-5, tv: float = 9.49e-3, clip: float = 1.0,
                            k: int | None = None, batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """``X~``: images optimised through the shadow so that its logits match the observed ``o``.

    Minimises ``mean (shadow(x) - o)^2 + l2 ||x||^2 + tv TV(x)`` over ``x`` with Adam,
    clipping the gradient norm to ``clip`` and clamping ``x`` to [0, 1] after each step,
    from ``init`` (the seed: the class average of the predicted class). Every image is
    optimised independently (the shadow is in eval mode; the batch is only for speed).

    Parameters
    ----------
    shadow : nn.Module
    o : torch.Tensor
        Observed output vectors ``(N, K)``.
    init : torch.Tensor
        Starting images ``(N, C, H, W)`` in [0, 1].
    steps, lr, l2, tv, clip
        The seed's values by default (400 steps, 0.01, 4.43e-5, 9.49e-3, 1).
    k : int, optional
        When the outputs were truncated to their top ``k`` (:func:`top_k`), match only those.
    batch_size : int
    progress : bool

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)`` in [0, 1], detached.

    Raises
    ------
    ValueError
        ``init`` outside [0, 1] or of another length than ``o``; non-positive settings.
    """
    _check_images(init, "init")
    if init.shape[0] != o.shape[0]:
        raise ValueError("init and o must have the same length")
    if steps < 1 or lr <= 0 or clip <= 0 or l2 < 0 or tv < 0:
        raise ValueError("steps, lr and clip must be positive; l2 and tv non-negative")
    shadow.eval()
    for p in shadow.parameters():
        p.requires_grad_(False)
    mask = _kept(o, k).to(o.dtype)
    out = []
    try:
        for i in tqdm(range(0, o.shape[0], batch_size), desc="X~", disable=not progress, leave=False):
            target, m = o[i:i + batch_size], mask[i:i + batch_size]
            x = init[i:i + batch_size].clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                fit = ((shadow(x) - target).pow(2) * m).sum(1) / m.sum(1)
                loss = (fit + l2 * x.pow(2).flatten(1).sum(1) + tv * total_variation(x)).sum()
                loss.backward()
                # clip each image's gradient norm, so that images stay independent
                g = x.grad.flatten(1)
                scale = (clip / g.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                x.grad.mul_(scale[:, None, None, None])
                opt.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
            out.append(x.detach())
    finally:
        for p in shadow.parameters():
            p.requires_grad_(True)
    return torch.cat(out)


def last_layer_activations(shadow: Classifier, o: torch.Tensor, *, k: int | None = None) -> torch.Tensor:
    """``A^L``: the minimum-norm vector that the shadow's output layer maps to ``o``.

    ``out(a) = W a + b = o`` has ``K`` equations for ``hidden`` unknowns (10 for 50 in the
    seed), so it is solved by least squares with the smallest norm: where gradient descent
    from zero, as in the seed, converges. With top-k truncation only the kept equations count.

    Returns
    -------
    torch.Tensor
        ``(N, hidden)``, float32.

    Raises
    ------
    TypeError
        A model without an ``out`` linear layer.
    """
    if not isinstance(getattr(shadow, "out", None), nn.Linear):
        raise TypeError("the shadow must have an output layer `out` (nn.Linear), as leakutils.inversion.Classifier")
    W = shadow.out.weight.detach().double()
    b = shadow.out.bias.detach().double() if shadow.out.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype)
    mask = _kept(o, k)
    rows = []
    for oi, mi in zip(o.double(), mask):
        rows.append(torch.linalg.pinv(W[mi]) @ (oi[mi] - b[mi]))
    return torch.stack(rows).float()


class FeatureScaler:
    """Standardise the vector parts (``O``, ``A``) with statistics of the attacker's own features.

    The shadow's logits and the target's logits differ in scale (two models, two
    trainings); an inverse model trained on raw shadow logits transfers poorly to the
    target's. Each entry of ``O`` and ``A`` is shifted and scaled by its mean and standard
    deviation over the shadow's features (the seed feeds raw vectors; Chapter 5 measures
    the difference). Images ``X`` stay in [0, 1].

    Parameters
    ----------
    parts : dict
        The attacker's training parts (``"O"``, ``"A"``, ``"X"``), from the shadow model.
    """

    def __init__(self, parts: dict):
        self.stats = {}
        for name in ("O", "A"):
            if name in parts:
                v = parts[name].float()
                self.stats[name] = (v.mean(0), v.std(0).clamp_min(1e-6))

    def __call__(self, parts: dict) -> dict:
        """Return a copy of ``parts`` with ``O`` and ``A`` standardised."""
        out = dict(parts)
        for name, (mu, sd) in self.stats.items():
            if name in out:
                out[name] = (out[name].float() - mu) / sd
        return out


def features(parts: dict, combination: str, scaler: FeatureScaler | None = None) -> torch.Tensor:
    """Concatenate the named parts, e.g. ``"O+X"``: ``O`` (N, K), ``A`` (N, hidden), ``X`` (N, C, H, W).

    Parameters
    ----------
    parts : dict
    combination : str
        One of :data:`COMBINATIONS`.
    scaler : FeatureScaler, optional
        Applied to ``parts`` first.

    Returns
    -------
    torch.Tensor
        ``(N, F)`` float32.

    Raises
    ------
    ValueError
        An unknown combination or a missing part.
    """
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}")
    names = combination.split("+")
    missing = [n for n in names if n not in parts]
    if missing:
        raise ValueError(f"parts {missing} are missing for {combination!r}; give {names}")
    if scaler is not None:
        parts = scaler(parts)
    return torch.cat([parts[n].flatten(1).float() for n in names], 1)


def train_inverse(inverse: InverseTCNN, feats: torch.Tensor, images: torch.Tensor, *, epochs: int = 20,
                  batch_size: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> dict:
    """Train the inverse model with the seed's loss ``1 - SSIM`` (11x11 Gaussian window, sigma 1.5).

    The differentiable SSIM is ``pytorch_msssim.ssim``; scores reported by the course use
    scikit-image (:func:`leakutils.metrics.ssim` with ``gaussian=True``).

    Parameters
    ----------
    inverse : InverseTCNN
    feats : torch.Tensor
        ``(N, F)`` with ``F = inverse.in_features``.
    images : torch.Tensor
        ``(N, C, 32, 32)`` in [0, 1]: the images the features came from.
    epochs, batch_size, lr, seed, progress
        The seed: 20 epochs, batch 32, Adam 1e-3.

    Returns
    -------
    dict
        ``loss``: mean ``1 - SSIM`` per epoch. The model is left in eval mode.

    Raises
    ------
    ValueError
        Images outside [0, 1], a feature length that does not fit, lengths that differ.
    """
    from pytorch_msssim import ssim as ssim_torch

    _check_images(images)
    if feats.ndim != 2 or feats.shape[1] != inverse.in_features:
        raise ValueError(f"feats must have shape (N, {inverse.in_features}), got {tuple(feats.shape)}")
    _check_training(feats.shape[0], images.shape[0], epochs, batch_size, lr, "feats and images")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(inverse.parameters(), lr=lr)
    history = {"loss": []}
    inverse.train()
    for _ in tqdm(range(epochs), desc="inverse", disable=not progress, leave=False):
        total = 0.0
        for idx in _batches(feats.shape[0], batch_size, gen):
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            opt.zero_grad()
            loss = 1 - ssim_torch(inverse(feats[idx]), images[idx], data_range=1.0, size_average=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        history["loss"].append(total / feats.shape[0])
    inverse.eval()
    return history


@torch.no_grad()
def invert(inverse: InverseTCNN, feats: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Images from features with a trained inverse model, ``(N, C, 32, 32)`` in [0, 1]."""
    inverse.eval()
    return torch.cat([inverse(feats[i:i + batch_size]) for i in range(0, feats.shape[0], batch_size)])


def disjoint_splits(n: int, sizes: dict, seed: int = 0) -> dict:
    """Random disjoint index sets, e.g. target-train, shadow-train, shadow-validation, attack-test.

    Parameters
    ----------
    n : int
        Number of items to split (indices ``0..n-1``).
    sizes : dict[str, int]
        Name to size; the sizes may sum to at most ``n``.
    seed : int

    Returns
    -------
    dict[str, torch.Tensor]
        Name to sorted int64 indices; pairwise disjoint (checked).

    Raises
    ------
    ValueError
        Sizes that are not positive or sum to more than ``n``.
    """
    if any(not isinstance(v, int) or v < 1 for v in sizes.values()):
        raise ValueError(f"every size must be a positive integer, got {sizes}")
    if sum(sizes.values()) > n:
        raise ValueError(f"the sizes sum to {sum(sizes.values())}, more than the {n} items available")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = perm[start:start + size].sort().values
        start += size
    seen = torch.zeros(n, dtype=torch.int64)
    for idx in out.values():
        seen[idx] += 1
    if int(seen.max()) > 1:  # pragma: no cover - guaranteed by construction, checked anyway
        raise RuntimeError("the splits overlap")
    return out


def identity_score(reconstructed: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> float:
    """How often a reconstruction is closer (MSE) to its own original than to any other image of its class.

    A reconstruction that collapsed to the class average identifies nobody: the score then
    falls to about ``1 / (images per class)``.

    Returns
    -------
    float
        In [0, 1].
    """
    hits = 0
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        d = torch.cdist(reconstructed[idx].flatten(1).double(), images[idx].flatten(1).double())
        hits += int((d.argmin(1) == torch.arange(idx.numel())).sum())
    return hits / labels.numel()



class Lab:
    """A trained gray-box attack, ready to invert new output vectors (the Chapter 5 panel uses it).

    Parameters
    ----------
    target, shadow : Classifier
        The trained target (queried) and the attacker's shadow.
    class_avg : torch.Tensor
        ``(K, C, H, W)``: the attacker's class-average images (X~'s starting points).
    steps : int
        X~ optimisation steps.

    Attributes
    ----------
    inverses : dict
        ``(k, combination)`` to ``(InverseTCNN, FeatureScaler)``; ``k = K`` means no truncation.
    """

    def __init__(self, target: Classifier, shadow: Classifier, class_avg: torch.Tensor, steps: int = 100):
        self.target, self.shadow, self.class_avg, self.steps = target, shadow, class_avg, steps
        self.inverses: dict = {}

    def add(self, k: int, combination: str, inverse: InverseTCNN, scaler: FeatureScaler | None) -> None:
        """Register an inverse model trained for outputs truncated to their top ``k``."""
        if combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}")
        self.inverses[(k, combination)] = (inverse, scaler)

    def observe(self, images: torch.Tensor, decimals: int | None = None, k: int | None = None) -> torch.Tensor:
        """The target's output vectors for ``images``, after the defences (rounding, then top-k)."""
        o = outputs(self.target, _check_images(images))
        if decimals is not None:
            o = round_outputs(o, decimals)
        if k is not None and k < o.shape[1]:
            o = top_k(o, k)
        return o

    def parts(self, o: torch.Tensor, k: int | None = None) -> dict:
        """The attacker's features of observed vectors ``o``: ``O``, ``A`` (A^L) and ``X`` (X~)."""
        kk = None if k is None or k >= o.shape[1] else k
        init = self.class_avg[o.argmax(1)]
        return {"O": o, "A": last_layer_activations(self.shadow, o, k=kk),
                "X": gradient_reconstruction(self.shadow, o, init, steps=self.steps, k=kk)}

    def invert(self, images: torch.Tensor, decimals: int | None = None, k: int | None = None) -> dict:
        """Every registered inverse model's reconstructions of ``images`` for this ``k``.

        Returns
        -------
        dict
            Combination to images ``(N, C, 32, 32)``, plus ``"X~"`` (the optimised images) and
            ``"class average"`` (of the predicted class).

        Raises
        ------
        ValueError
            No inverse model registered for this ``k``.
        """
        K = self.class_avg.shape[0]
        kk = K if k is None else k
        models_k = {c: v for (kv, c), v in self.inverses.items() if kv == kk}
        if not models_k:
            raise ValueError(f"no inverse model was trained for k = {kk}; trained: {sorted({kv for kv, _ in self.inverses})}")
        o = self.observe(images, decimals, kk)
        p = self.parts(o, kk)
        out = {c: invert(tc, features(p, c, sc)) for c, (tc, sc) in models_k.items()}
        out["X~"] = p["X"]
        out["class average"] = self.class_avg[o.argmax(1)]
        return out
