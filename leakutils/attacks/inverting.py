"""Inverting Gradients (Geiping, Bauermeister, Dröge & Moeller, NeurIPS 2020).

A dummy batch ``x'`` is optimised so that the gradient it produces points the same way as
the shared one, over all parameters at once, with a total-variation prior on the images:

    min_{x'}  1 - <grad l(f(x'), y), g> / (||grad l(f(x'), y)|| ||g||)  +  tv * TV(x'),

    TV(x) = mean |x[..., :, 1:] - x[..., :, :-1]| + mean |x[..., 1:, :] - x[..., :-1, :]|.

The cosine distance ignores the update's scale, so a clipped or rescaled update is matched as
well as the raw one. The labels are read off the output layer first (iDLG) or given. Like the
paper, :func:`reconstruct` runs Adam on the *signed* gradient of that loss (``x.grad.sign_()``,
the adversarial-attack step), decays the step size by 0.1 at 3/8, 5/8 and 7/8 of the
iterations and, when ``boxed``, clamps the images to the data range [0, 1] after every step.
The best iterate of each run (lowest loss) is kept, and of several restarts the one whose
gradient is closest in cosine distance (no TV term), as in the paper's code and breaching.

An optimisation fixes no value by construction, so :func:`reconstruct` ends with the
gradient-residual check (:func:`leakutils.attacks.residual.gradient_residual`, as
:mod:`leakutils.attacks.dlg`): the batch is marked determined only when the images found
reproduce the shared update within round-off and the stated noise.

Defaults and what differs from the reference implementations:

- from the paper's code (``inversefed``): ``lr=0.1``, ``tv=1e-4`` with its anisotropic TV
  above (means of absolute differences, no padding), signed gradients, ``boxed``, step decay,
  random normal start, the best iterate of a run by loss and the best restart by cosine
  distance; equal weights for every parameter's gradient.
- breaching (``invertinggradients.yaml``) computes TV with a zero-padded border and an
  ``eps`` inside, averaged over both directions, and scales it by 0.2; its ``0.2`` equals about
  ``0.1`` here. Breaching stores the iterate *after* the step whose loss was the lowest; here
  the iterate the loss was measured at.
- iterations: 24,000 in the paper and in breaching (ResNets on CIFAR-10 and ImageNet); the
  default here, 1,000, is enough for the course's small networks on 28x28 or 32x32 inputs
  (a LeNet digit reaches 50 dB in about 300 steps) and keeps a call within seconds.
- the attack computes in the model's own dtype (float32 or float64, as the client did), on a
  copy of the model; images are returned in float64, as every attack of the course.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Reconstruction, Update
from ..validate import check_bool, check_int, check_number, check_seed
from ._common import check_model_update, layer_gradient, num_classes
from .labels import recover_labels
from .residual import _check_noise, gradient_residual

__all__ = ["reconstruct", "cosine_distance", "total_variation", "MAX_RELATIVE_TOLERANCE"]

#: The gradient-residual check certifies only when its overall tolerance is below this
#: fraction of the update's norm (as in :mod:`leakutils.attacks.dlg`).
MAX_RELATIVE_TOLERANCE = 0.1
#: The loss is recorded every this many steps in ``diagnostics["history"]``.
HISTORY_EVERY = 10
#: Fractions of the iterations at which the step size is multiplied by 0.1 (MultiStepLR).
DECAY_AT = (3 / 8, 5 / 8, 7 / 8)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a batch, as in the paper's code.

    ``mean |x[..., :, 1:] - x[..., :, :-1]| + mean |x[..., 1:, :] - x[..., :-1, :]|`` over the
    last two axes (height, width) of ``images`` (shape ``(N, C, H, W)``, floating); for
    samples with one axis, ``(N, D)``, only the first term. Returns a 0-dim tensor in the
    images' units (per pixel), differentiable.

    Raises
    ------
    TypeError
        ``images`` not a floating tensor.
    ValueError
        Fewer than 2 axes, or an axis of length 1 where differences are taken.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating torch tensor (N, C, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim < 2 or images.shape[-1] < 2 or (images.ndim >= 4 and images.shape[-2] < 2):
        raise ValueError(f"total variation needs a batch of images (N, C, H, W) with H, W >= 2 or of "
                         f"vectors (N, D) with D >= 2, got shape {tuple(images.shape)}")
    tv = (images[..., 1:] - images[..., :-1]).abs().mean()
    if images.ndim >= 4:
        tv = tv + (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return tv


def reconstruct(model: nn.Module, update: Update, *, iterations: int = 1000, lr: float = 0.1,
                tv: float = 1e-4, restarts: int = 1, init=None, labels="idlg", seed: int = 0,
                boxed: bool = True, noise: float | None = None) -> Reconstruction:
    """Rebuild the client's batch by cosine gradient matching with a TV prior (Inverting Gradients).

    Parameters
    ----------
    model : nn.Module
        The attacked model with the weights the update was computed at, float32 or float64,
        any architecture that returns ``(M, classes)`` logits (MLP, LeNet, CNN). A deep copy
        is used, in its own dtype and mode; the model is not changed.
    update : Update
        The shared gradients (softmax cross-entropy, mean-reduced, as
        :func:`leakutils.capture.client_update`); every trainable parameter must be in it.
        Its ``batch_size`` M is the number of images rebuilt.
    iterations : int
        Adam steps per restart, >= 1 (the paper: 24,000 on ResNets).
    lr : float
        Adam's step size, > 0; with signed gradients, each pixel moves by about ``lr`` per
        step at first (the data range is [0, 1]). Decayed by 0.1 at 3/8, 5/8 and 7/8.
    tv : float
        Weight of :func:`total_variation`, >= 0 (the paper's code: 1e-4).
    restarts : int
        Independent runs, >= 1; the one with the lowest cosine distance is returned.
    init : None, "random", torch.Tensor or Reconstruction
        Where the first run starts: None or ``"random"``, a standard normal draw (seeded by
        ``seed``); a floating tensor ``(M, *update.input_shape)``, or a
        :class:`~leakutils.core.Reconstruction` of that shape (e.g. an analytic estimate
        such as the bias ratio's), used as given. Further restarts start from random draws.
    labels : "idlg" or torch.Tensor
        ``"idlg"``: read off the output layer (:func:`leakutils.attacks.labels.recover_labels`),
        which needs M distinct labels revealed for a batch; or an int64 tensor ``(M,)``.
    seed : int
        Seed of the random starts, in ``0..2**32 - 1``; restart ``r`` uses ``seed + r``
        (modulo ``2**32``).
    boxed : bool
        Clamp the images to [0, 1] after every step (the course's data range).
    noise : float, optional
        Per-entry standard deviation of noise in the update (absolute, gradient units),
        allowed for by the final gradient-residual check only. Default: none.

    Returns
    -------
    Reconstruction
        ``images`` float64 ``(M, *update.input_shape)``; ``labels`` int64 ``(M,)``, those used;
        ``determined`` all True when the images pass the gradient-residual check (with a fitted
        scale: they reproduce the update up to one factor, within round-off and noise), else
        all False. ``diagnostics``: ``loss`` (the returned run's lowest loss, cosine distance plus
        TV term), ``cosine_distance`` (of the returned images, no TV), ``history`` (the returned
        run's loss every ``HISTORY_EVERY`` steps), ``restart_losses``, ``restart_cosine_distances``
        (per restart, of its best iterate), ``best_restart``,
        ``iterations``, ``restarts``, ``lr``, ``tv``, ``boxed``, ``init`` ("random" or
        "given"), ``label_method``, ``dtype`` (the model's, which the attack computed in),
        ``diverged`` (a non-finite loss stopped a run), ``seconds``, ``consistent``,
        ``gradient_residual`` (the :class:`~leakutils.attacks.residual.GradientResidual`, or
        None with ``check_error``), ``check_relative_residual``, ``check_relative_tolerance``,
        ``check_scale``.

    Raises
    ------
    TypeError
        ``model``/``update`` of the wrong type; ``iterations``, ``restarts`` or ``seed`` not
        integers; ``lr``, ``tv`` or ``noise`` not numbers; ``boxed`` not a bool; ``init`` or
        ``labels`` of an unsupported kind; a model that is neither float32 nor float64.
    ValueError
        Out-of-range numbers; an unknown string for ``init`` or ``labels``; an ``init`` or
        ``labels`` of the wrong shape, non-finite, or labels outside the classes; iDLG
        revealing fewer labels than samples; an update without gradients for the model's
        parameters (or of other shapes, not finite, or all zero); a model that does not
        accept the update's input shape or does not return ``(M, classes)`` logits.

    References
    ----------
    Geiping, Bauermeister, Dröge & Moeller, "Inverting Gradients - How easy is it to break
    privacy in federated learning?", NeurIPS 2020 (arXiv 2003.14053); code: inversefed and
    breaching (github.com/JonasGeiping). Zhao, Mopuri & Bilen, "iDLG", arXiv 2001.02610, 2020.
    """
    t0 = time.perf_counter()
    check_model_update(model, update)
    iterations = check_int("iterations", iterations, 1)
    restarts = check_int("restarts", restarts, 1)
    lr = check_number("lr", lr, 0.0, lo_open=True)
    tv = check_number("tv", tv, 0.0)
    seed = check_seed("seed", seed)
    boxed = check_bool("boxed", boxed)
    noise = _check_noise(noise)
    net, names, params, target = _prepare(model, update)
    dtype = params[0].dtype
    M, shape = update.batch_size, tuple(update.input_shape)
    start = _check_init(init, M, shape, dtype)
    classes = num_classes(net, torch.zeros(M, *shape, dtype=dtype), "Inverting Gradients")
    y, label_method = _labels(labels, model, update, M, classes)
    if tv > 0:
        total_variation(torch.zeros(M, *shape, dtype=dtype))  # a shape TV can run on, else a clear error
    runs = []
    for r in range(restarts):
        if r == 0 and start is not None:
            x0 = start.clone()
        else:
            gen = torch.Generator().manual_seed((seed + r) % 2 ** 32)
            x0 = torch.randn((M, *shape), generator=gen, dtype=dtype)
        runs.append(_run(net, params, target, x0, y, iterations, lr, tv, boxed))
    # restarts are scored by the cosine distance alone, as in the paper's code and breaching
    with torch.enable_grad():
        cosines = [float(_cosine_distance(_gradients(net, params, run["x"], y, False), target)) for run in runs]
    best = min(range(restarts), key=lambda r: (not math.isfinite(cosines[r]), cosines[r]))
    images = runs[best]["x"].to(torch.float64)
    diagnostics = {
        "loss": runs[best]["loss"], "cosine_distance": cosines[best], "history": runs[best]["history"],
        "restart_losses": [run["loss"] for run in runs], "restart_cosine_distances": cosines,
        "best_restart": best, "iterations": iterations,
        "restarts": restarts, "lr": lr, "tv": tv, "boxed": boxed,
        "init": "given" if start is not None else "random", "label_method": label_method,
        "dtype": str(dtype).replace("torch.", ""), "diverged": any(run["diverged"] for run in runs),
    }
    diagnostics.update(_check(model, update, images, y, noise))
    diagnostics["seconds"] = time.perf_counter() - t0
    determined = torch.full_like(images, diagnostics["consistent"], dtype=torch.bool)
    return Reconstruction(images=images, labels=y.clone(), determined=determined, diagnostics=diagnostics,
                          attack="inverting_gradients")


def cosine_distance(model: nn.Module, update: Update, images: torch.Tensor, labels="idlg") -> float:
    """Cosine distance between the update and the gradient of a candidate batch: Inverting Gradients' loss.

    ``1 - <g, u> / (||g|| ||u||)`` over all trainable parameters together, ``g`` the gradient
    of softmax cross-entropy at ``(images, labels)``, ``u`` the shared update; no TV term. An
    attacker uses it to rank candidate reconstructions (or starting points) without the truth.

    Parameters
    ----------
    model : nn.Module
        The attacked model, float32 or float64.
    update : Update
        What the server received.
    images : torch.Tensor
        Candidate batch ``(M, *update.input_shape)``, finite, any floating dtype (cast to the
        model's).
    labels : "idlg" or torch.Tensor
        As :func:`reconstruct`.

    Returns
    -------
    float
        In ``[0, 2]``: 0 when the gradients point the same way; NaN when the candidate's
        gradient is zero.

    Raises
    ------
    TypeError, ValueError
        As :func:`reconstruct` for ``model``, ``update``, ``labels`` and ``images`` (its
        ``init``).

    References
    ----------
    Geiping et al., "Inverting Gradients", NeurIPS 2020, Eq. 4.
    """
    check_model_update(model, update)
    net, _, params, target = _prepare(model, update)
    dtype = params[0].dtype
    M, shape = update.batch_size, tuple(update.input_shape)
    x = _check_init(images, M, shape, dtype)
    if x is None:
        raise TypeError("images must be a floating tensor of shape (M, *input_shape), not None or 'random'")
    y, _ = _labels(labels, model, update, M, num_classes(net, x, "Inverting Gradients"))
    with torch.enable_grad():
        return float(_cosine_distance(_gradients(net, params, x, y, False), target))


def _prepare(model: nn.Module, update: Update):
    """A copy of the model, its trainable parameters and the shared gradients in its dtype."""
    net = copy.deepcopy(model)
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters, so the update holds nothing to match")
    dtype = named[0][1].dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the model must be float32 or float64, got {dtype}; convert it with model.float()")
    missing = [n for n, _ in named if n not in update.gradients]
    if missing:
        raise ValueError(f"the update has no gradients for {missing}; was it captured from this model?")
    for _, p in named:
        p.grad = None
    target = [layer_gradient(update, n, p).to(dtype) for n, p in named]
    if all(float(t.abs().max()) == 0.0 for t in target):
        raise ValueError("the update is zero: no direction to match (a loss of exactly zero?)")
    return net, [n for n, _ in named], [p for _, p in named], target


def _check_init(init, M: int, shape: tuple, dtype) -> torch.Tensor | None:
    if init is None or (isinstance(init, str) and init == "random"):
        return None
    if isinstance(init, str):
        raise ValueError(f"init must be None, 'random', a tensor or a Reconstruction, got the string {init!r}")
    if isinstance(init, Reconstruction):
        init = init.images
    if not isinstance(init, torch.Tensor) or not init.is_floating_point():
        raise TypeError(f"init must be None, 'random', a floating tensor (M, *input_shape) or a Reconstruction, "
                        f"got {getattr(init, 'dtype', type(init).__name__)}")
    if tuple(init.shape) != (M, *shape):
        raise ValueError(f"init must have shape {(M, *shape)} (the update's batch of {M} and input shape), got "
                         f"{tuple(init.shape)}; an estimate of a deeper layer's input cannot start the attack")
    if not bool(torch.isfinite(init).all()):
        raise ValueError("init contains NaN or infinite values; start from a finite estimate")
    return init.detach().to(dtype)


def _labels(labels, model, update: Update, M: int, classes: int):
    if isinstance(labels, str):
        if labels != "idlg":
            raise ValueError(f"labels must be 'idlg' or an int64 tensor of shape ({M},), got {labels!r}")
        found = recover_labels(model, update)
        if found.labels.numel() < M:
            raise ValueError(f"iDLG revealed {found.labels.numel()} labels for a batch of {M} "
                             f"({found.note or 'repeated or masked classes'}); pass the labels as an int64 "
                             f"tensor of shape ({M},)")
        return found.labels[:M].clone(), found.method
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise TypeError(f"labels must be 'idlg' or an int64 tensor of shape ({M},), got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    labels = labels.reshape(-1)
    if labels.numel() != M:
        raise ValueError(f"{labels.numel()} labels for a batch of {M}: give one label per sample")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(f"labels must lie in [0, {classes}) for a model with {classes} outputs, got "
                         f"{labels.tolist()}")
    return labels.clone(), "given"


def _gradients(net, params, x, y, graph: bool):
    loss = F.cross_entropy(net(x), y)
    return torch.autograd.grad(loss, params, create_graph=graph)


def _cosine_distance(grads, target) -> torch.Tensor:
    """``1 - <g, t> / (||g|| ||t||)`` over all parameters together (breaching's CosineSimilarity)."""
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    g_norm = torch.sqrt(sum((g * g).sum() for g in grads))
    t_norm = torch.sqrt(sum((t * t).sum() for t in target))
    return 1 - dot / (g_norm * t_norm)


def _run(net, params, target, x0, y, iterations, lr, tv, boxed, grads_of=None) -> dict:
    """One run of signed Adam from ``x0``; the iterate with the lowest loss and the loss history.

    ``grads_of(x)`` gives the candidate's gradients to match (differentiable in ``x``);
    default: its one gradient at the model's weights.
    """
    if grads_of is None:
        def grads_of(x):
            return _gradients(net, params, x, y, True)

    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    milestones = [int(iterations * f) for f in DECAY_AT]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    best, best_x, history, diverged = math.inf, x0.clone(), [], False
    with torch.enable_grad():
        for step in range(iterations + 1):
            loss = _cosine_distance(grads_of(x), target)
            if tv > 0:
                loss = loss + tv * total_variation(x)
            value = float(loss.detach())
            if not math.isfinite(value):
                diverged = True
                break
            if step % HISTORY_EVERY == 0:
                history.append(value)
            if value < best:
                best, best_x = value, x.detach().clone()
            if step == iterations:
                # the last iterate is measured, not moved
                break
            (grad,) = torch.autograd.grad(loss, x)
            x.grad = grad.sign()
            opt.step()
            sched.step()
            if boxed:
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
    return {"loss": best, "x": best_x, "history": history, "diverged": diverged}


def _check(model: nn.Module, update: Update, images: torch.Tensor, y: torch.Tensor, noise: float) -> dict:
    """The gradient-residual check of the batch found (scale fitted: the loss ignores it)."""
    try:
        check = gradient_residual(model, update, images, y, noise=noise, fit_scale=True)
    except ValueError as err:
        return {"consistent": False, "gradient_residual": None, "check_error": str(err),
                "check_relative_residual": math.nan, "check_relative_tolerance": math.nan,
                "check_scale": math.nan}
    resolution = check.relative_tolerance
    return {"consistent": bool(check.consistent and resolution <= MAX_RELATIVE_TOLERANCE),
            "gradient_residual": check, "check_relative_residual": check.relative,
            "check_relative_tolerance": resolution, "check_scale": check.scale}
