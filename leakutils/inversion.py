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

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .defences.output import check_vectors, kept_entries, kept_mask, round_outputs, top_k
from .inversion_models import (PAPER_CHANNELS, PAPER_WIDTHS, Classifier, InverseTCNN, check_images, check_labels,
                               check_training)
from .inversion_features import class_averages, gradient_reconstruction, last_layer_activations, total_variation
from .inversion_loss import gaussian_ssim
from .validate import check_int, check_seed

__all__ = ["Classifier", "InverseTCNN", "PAPER_CHANNELS", "PAPER_WIDTHS", "COMBINATIONS", "SEED_RESULTS",
           "train_classifier", "accuracy", "outputs", "train_inverse", "invert", "class_averages",
           "gradient_reconstruction", "last_layer_activations", "round_outputs", "top_k", "kept_entries",
           "disjoint_splits", "features", "FeatureScaler", "total_variation", "identity_score", "Lab"]

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


def _check_module(m, name: str) -> None:
    if not isinstance(m, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")


def _check_features(f, name: str = "feats") -> torch.Tensor:
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, F), got {type(f).__name__}")
    if f.ndim != 2 or not f.is_floating_point() or not bool(torch.isfinite(f).all()):
        raise ValueError(f"{name} must be a finite float tensor (N, F), got {f.dtype} {tuple(f.shape)}"
                         f"{'' if f.ndim != 2 or not f.is_floating_point() else ' with NaN or infinite entries'}")
    return f


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
    TypeError
        ``model`` not a :class:`Classifier`; labels that are not integers (e.g. float).
    ValueError
        Images outside [0, 1] or of the wrong size, labels outside ``[0, num_classes)`` or of
        another length, non-positive sizes.
    """
    if not isinstance(model, Classifier):
        raise TypeError(f"model must be a leakutils.inversion.Classifier, got {type(model).__name__}")
    check_images(images)
    model._check_input(images)
    check_labels(labels, images.shape[0], model.out.out_features)
    check_training(images.shape[0], labels.shape[0], epochs, batch_size, lr, "images and labels")
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
    """The model's output vectors (logits) in eval mode, ``(N, K)`` float32.

    Raises
    ------
    TypeError
        ``model`` not a ``torch.nn.Module``; ``images`` not a tensor.
    ValueError
        ``images`` not ``(N, C, H, W)`` in [0, 1]; ``batch_size`` not a positive integer.
    """
    _check_module(model, "model")
    check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` ``(N, C, H, W)`` classified as ``labels`` ``(N,)``, in [0, 1].

    Raises
    ------
    TypeError, ValueError
        As :func:`outputs`; labels that are not integers, not one per image, or outside the
        model's classes.
    """
    o = outputs(model, images)
    check_labels(labels, images.shape[0], o.shape[1])
    return float((o.argmax(1) == labels).double().mean())


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
        if not isinstance(parts, dict) or not any(n in parts for n in ("O", "A")):
            raise TypeError("parts must be a dict holding 'O' and/or 'A' feature tensors (N, F)")
        for name in ("O", "A"):
            if name in parts:
                _check_features(parts[name], f"parts[{name!r}]")
                if parts[name].shape[0] < 2:
                    raise ValueError(f"parts[{name!r}] needs at least 2 vectors for a standard deviation")
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
    if not isinstance(parts, dict):
        raise TypeError(f"parts must be a dict with 'O', 'A', 'X' tensors, got {type(parts).__name__}")
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

    The differentiable SSIM is :func:`leakutils.inversion_loss.gaussian_ssim` (the number
    ``pytorch_msssim.ssim`` computes, four times faster); scores reported by the course use
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
    if not isinstance(inverse, InverseTCNN):
        raise TypeError(f"inverse must be an InverseTCNN, got {type(inverse).__name__}")
    check_images(images)
    if isinstance(feats, torch.Tensor) and feats.ndim == 2 and feats.shape[1] == inverse.in_features:
        _check_features(feats)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[1] != inverse.in_features:
        raise ValueError(f"feats must have shape (N, {inverse.in_features}), got "
                         f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
    check_training(feats.shape[0], images.shape[0], epochs, batch_size, lr, "feats and images")
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
            out = inverse(feats[idx])
            loss = 1 - gaussian_ssim(out, images[idx].to(out.dtype))
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        history["loss"].append(total / feats.shape[0])
    inverse.eval()
    return history


@torch.no_grad()
def invert(inverse: InverseTCNN, feats: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Images from features ``(N, F)`` with a trained inverse model, ``(N, C, 32, 32)`` in [0, 1].

    Raises
    ------
    TypeError
        ``inverse`` not an :class:`InverseTCNN`; ``feats`` not a tensor.
    ValueError
        ``feats`` not a finite ``(N, inverse.in_features)`` float tensor; ``batch_size < 1``.
    """
    if not isinstance(inverse, InverseTCNN):
        raise TypeError(f"inverse must be an InverseTCNN, got {type(inverse).__name__}")
    _check_features(feats)
    batch_size = check_int("batch_size", batch_size, 1)
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
        ``0..2**32 - 1``.

    Returns
    -------
    dict[str, torch.Tensor]
        Name to sorted int64 indices; pairwise disjoint (checked).

    Raises
    ------
    TypeError
        ``sizes`` not a dict; ``seed`` not an integer.
    ValueError
        Sizes that are not positive or sum to more than ``n``; a negative ``seed``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(sizes, dict) or not sizes:
        raise TypeError(f"sizes must be a non-empty dict name -> size, got {sizes!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes.values()):
        raise ValueError(f"every size must be a positive integer, got {sizes}")
    if sum(sizes.values()) > n:
        raise ValueError(f"the sizes sum to {sum(sizes.values())}, more than the {n} items available")
    seed = check_seed("seed", seed)
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

    Parameters
    ----------
    reconstructed, images : torch.Tensor
        ``(N, C, H, W)`` of the same shape, finite.
    labels : torch.Tensor
        ``(N,)`` integer classes.

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    TypeError
        Non-tensors; labels that are not integers.
    ValueError
        Shapes that differ, NaN or infinite values (a NaN distance would count as a miss or a
        hit at random), no images.
    """
    for name, v in (("reconstructed", reconstructed), ("images", images)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (N, C, H, W), got {type(v).__name__}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} contains NaN or infinite values; the score needs finite images")
    if reconstructed.shape != images.shape or images.ndim < 2 or images.shape[0] < 1:
        raise ValueError(f"reconstructed {tuple(reconstructed.shape)} and images {tuple(images.shape)} must have "
                         f"the same shape (N, ...) with N >= 1, one reconstruction per image")
    check_labels(labels, images.shape[0], 1 << 62)
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
    Raises
    ------
    TypeError
        ``target`` or ``shadow`` not a ``torch.nn.Module``; ``class_avg`` not a tensor.
    ValueError
        ``class_avg`` not ``(K, C, H, W)`` in [0, 1]; ``steps`` not a positive integer.
    """

    def __init__(self, target: Classifier, shadow: Classifier, class_avg: torch.Tensor, steps: int = 100):
        _check_module(target, "target")
        _check_module(shadow, "shadow")
        check_images(class_avg, "class_avg")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.target, self.shadow, self.class_avg, self.steps = target, shadow, class_avg, steps
        self.inverses: dict = {}

    def add(self, k: int, combination: str, inverse: InverseTCNN, scaler: FeatureScaler | None) -> None:
        """Register an inverse model trained for outputs truncated to their top ``k``."""
        if combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}")
        self.inverses[(k, combination)] = (inverse, scaler)

    def observe(self, images: torch.Tensor, decimals: int | None = None, k: int | None = None, *,
                return_mask: bool = False):
        """The target's output vectors for ``images``, after the defences (rounding, then top-k).

        With ``return_mask``, also the ``(N, K)`` bool mask of the entries kept by top-k.
        """
        o = outputs(self.target, check_images(images))
        if decimals is not None:
            o = round_outputs(o, decimals)
        kept = torch.ones_like(o, dtype=torch.bool)
        if k is not None and k < o.shape[1]:
            o, kept = top_k(o, k, return_mask=True)
        return (o, kept) if return_mask else o

    def parts(self, o: torch.Tensor, k: int | None = None, kept: torch.Tensor | None = None) -> dict:
        """The attacker's features of observed vectors ``o``: ``O``, ``A`` (A^L) and ``X`` (X~).

        ``kept`` (from ``top_k(..., return_mask=True)`` or :meth:`observe`) names the entries that
        survived top-k truncation; with ``k`` alone they are read as :func:`kept_entries`.
        """
        o = check_vectors(o)
        kk = None if k is None or k >= o.shape[-1] else k
        mask = kept_mask(o, kk, kept)
        # X~ starts from the class average of the predicted class: the largest kept entry
        init = self.class_avg[o.masked_fill(~mask, float("-inf")).argmax(1)]
        return {"O": o, "A": last_layer_activations(self.shadow, o, kept=mask),
                "X": gradient_reconstruction(self.shadow, o, init, steps=self.steps, kept=mask)}

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
        o, kept = self.observe(images, decimals, kk, return_mask=True)
        p = self.parts(o, kk, kept)
        out = {c: invert(tc, features(p, c, sc)) for c, (tc, sc) in models_k.items()}
        out["X~"] = p["X"]
        out["class average"] = self.class_avg[o.masked_fill(~kept, float("-inf")).argmax(1)]
        return out
