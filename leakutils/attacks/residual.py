"""The gradient-residual check: does a reconstruction reproduce the shared update?

Every gradient attack of the course ends with this check, and a student can apply it to
any reconstruction. Given the model, the shared :class:`~leakutils.core.Update` and a
candidate batch (images and labels), :func:`gradient_residual` recomputes the update that
batch would produce (mean-reduced, as :func:`leakutils.capture.client_update`), in float64
on a copy of the model, and compares it with the shared one, parameter by parameter:

    r_p = || g_hat_p - g_p ||,    relative residual  r_p / || g_p ||.

A parameter is *consistent* when ``r_p`` is below an absolute tolerance made of two parts:

- round-off: ``ROUNDOFF_FACTOR * eps * max|g_p| * sqrt(n_p)``, with ``eps`` the machine
  epsilon of the dtype the client computed in (float32: 1.2e-7, float64: 2.2e-16) and
  ``n_p`` the number of entries of parameter ``p``;
- noise: ``NOISE_FACTOR * noise * sqrt(n_p)``, with ``noise`` the per-entry standard
  deviation of noise added to the update (given by the caller or estimated by the attack;
  0 for a clean update). ``sqrt(n_p) * noise`` is the expected norm of that noise.

What the check proves: a reconstruction that passes reproduces every checked gradient of
the update within round-off and the stated noise, so it is *consistent* with the whole
update; a batch mixture, a wrong activation model (a ``torch.relu`` written in ``forward``
that the attack did not see), a blend of samples or a wrong label fails it. What it does
not prove: uniqueness. Another batch may reproduce the same gradients (a rank-deficient
system, or noise large enough to hide the difference), and a check restricted to some
``parameters`` says nothing about the others.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Update
from ._common import check_model_update, trace_leaves

__all__ = ["GradientResidual", "ParameterResidual", "gradient_residual",
           "ROUNDOFF_FACTOR", "NOISE_FACTOR"]

#: Multiple of ``eps * max|g_p| * sqrt(n_p)`` allowed for round-off. The client's own
#: gradient carries round-off of the dtype it computed in, accumulated over sums of a few
#: hundred terms, and the reconstruction inherits it; 64 covers the float32 MLPs and conv
#: nets of the course (measured worst: about 6) with a wide margin, while a batch mixture
#: or a wrong label leaves a relative residual of 1e-2 to 1.
ROUNDOFF_FACTOR = 64.0
#: Multiple of the expected noise norm ``noise * sqrt(n_p)`` allowed per parameter. The
#: norm of ``n_p`` Gaussian entries rarely exceeds 1.5 times its expectation; a
#: reconstruction made from the noisy update also carries some of that noise into the
#: recomputed gradients, hence 3.
NOISE_FACTOR = 3.0


_EPS_NAMES = {torch.finfo(t).eps: str(t).replace("torch.", "")
              for t in (torch.bfloat16, torch.float16, torch.float32, torch.float64)}


@dataclass(frozen=True)
class ParameterResidual:
    """The residual of one parameter's gradient.

    Attributes
    ----------
    absolute : float
        ``||g_hat - g||`` (Frobenius), in the gradient's units (loss per parameter unit).
    relative : float
        ``absolute / ||g||``; ``inf`` when the shared gradient is zero and the recomputed one
        is not, 0 when both are zero.
    tolerance : float
        Absolute tolerance (round-off plus noise, see the module docstring).
    norm : float
        ``||g||`` of the shared gradient.
    size : int
        Number of entries.
    consistent : bool
        ``absolute <= tolerance``.
    """

    absolute: float
    relative: float
    tolerance: float
    norm: float
    size: int
    consistent: bool


@dataclass(frozen=True)
class GradientResidual:
    """The outcome of :func:`gradient_residual`.

    Attributes
    ----------
    consistent : bool
        True when every checked parameter is consistent: the reconstruction reproduces the
        update within round-off and noise. It does not prove the reconstruction unique.
    relative : float
        Overall relative residual ``||g_hat - g|| / ||g||`` over all checked parameters.
    absolute : float
        Overall ``||g_hat - g||``.
    tolerance : float
        Overall tolerance ``sqrt(sum_p tolerance_p^2)`` (for display; the decision is per
        parameter).
    per_parameter : dict[str, ParameterResidual]
        One entry per checked parameter, in the model's parameter order.
    worst_parameter : str
        The parameter with the largest ``absolute / tolerance``.
    labels : torch.Tensor
        int64 ``(N,)``: the labels used (the best ones when they were searched).
    noise : float
        The per-entry noise standard deviation the tolerance allowed for.
    scale : float
        The factor applied to the recomputed gradients before comparing: 1.0, or with
        ``fit_scale=True`` the least-squares factor (a clipped or rescaled update).
    dtype : str
        The dtype whose epsilon set the round-off tolerance.
    label_search : dict[int, float]
        When labels were searched: class -> overall relative residual; else empty.
    norm : float
        Overall ``||g||`` of the checked shared gradients.
    """

    consistent: bool
    relative: float
    absolute: float
    tolerance: float
    per_parameter: Mapping[str, ParameterResidual]
    worst_parameter: str
    labels: torch.Tensor
    noise: float
    scale: float
    dtype: str
    label_search: Mapping[int, float] = field(default_factory=dict)
    norm: float = math.nan

    @property
    def relative_tolerance(self) -> float:
        """``tolerance / norm``: how large a relative residual the check lets through."""
        return self.tolerance / self.norm if self.norm > 0 else math.inf

    def __str__(self) -> str:
        verdict = "consistent" if self.consistent else "NOT consistent"
        return (f"{verdict} with the update: relative residual {self.relative:.2e} "
                f"(absolute {self.absolute:.2e}, tolerance {self.tolerance:.2e}; "
                f"worst parameter {self.worst_parameter!r})")


def gradient_residual(model: nn.Module, update: Update, images: torch.Tensor,
                      labels: torch.Tensor | None = None, *,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                      noise: float | None = None, parameters: Iterable[str] | None = None,
                      layer: str | None = None, fit_scale: bool = False) -> GradientResidual:
    """Check that a reconstruction reproduces the shared update (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The attacked model with the weights the update was computed at (float32 or float64;
        it is not changed: a float64 deep copy is used).
    update : Update
        The shared update (:func:`leakutils.capture.client_update`).
    images : torch.Tensor
        The reconstruction, floating point, shape ``(N, *update.input_shape)``, or
        ``(N, in_features)`` with ``layer``. ``N`` is the update's batch size (the
        reconstruction claims to be the whole batch) or 1 (one sample claimed to explain
        the update alone: true only when every sample of the batch is that sample).
    labels : torch.Tensor, optional
        int64 ``(N,)`` class indices. None with ``N == 1``: every class is tried (one
        forward and backward pass each) and the best is reported in ``labels`` and
        ``label_search``.
    loss_fn : callable, optional
        ``loss_fn(logits, labels)`` returning the mean loss; default softmax cross-entropy,
        as the client used.
    noise : float, optional
        Per-entry standard deviation of noise in the update, in gradient units (absolute,
        >= 0), known to the caller or estimated by the attack. Default 0.
    parameters : iterable of str, optional
        Parameter names to compare; default all trainable parameters of the model (with
        ``layer``: those of the modules called at or after that layer).
    layer : str, optional
        ``images`` are the input of this module instead of the model's input (an attack on
        a deeper layer). A zero input runs through the layers before it, and its input is
        replaced by ``images``; only gradients of the layers from it on mean anything then.
    fit_scale : bool
        Compare ``s * g_hat`` with ``g`` for the least-squares ``s > 0`` (an update that was
        clipped or rescaled as a whole). The factor is reported in ``scale``.

    Returns
    -------
    GradientResidual

    Raises
    ------
    TypeError
        ``model``/``update`` of the wrong type, ``images`` not a floating tensor, ``labels``
        not an int64 tensor, ``noise`` not a number.
    ValueError
        Shapes that do not match the update (``N`` neither 1 nor the batch size, a sample
        shape other than ``update.input_shape``), NaN or infinite images, labels outside
        the model's classes or of the wrong length, ``labels=None`` for several images, a
        negative noise level, unknown parameter or layer names, a model that cannot run the
        reconstruction (e.g. BatchNorm in training mode on one sample).

    References
    ----------
    The check follows the gradient-matching objective of Zhu et al., "Deep Leakage from
    Gradients", NeurIPS 2019, used here as a certificate rather than a loss.
    """
    check_model_update(model, update)
    images = _check_images(images, update, layer)
    noise = _check_noise(noise)
    net = copy.deepcopy(model).to(torch.float64)
    for p in net.parameters():
        p.grad = None
    names = _parameter_names(net, update, parameters, layer)
    classes = _num_classes(net, images, update, layer)
    loss_fn = _cross_entropy if loss_fn is None else loss_fn
    eps = max(torch.finfo(update.gradients[n].dtype).eps for n in names)
    eps = max(eps, torch.finfo(next(model.parameters()).dtype).eps)
    shared = {n: update.gradients[n].detach().to(torch.float64) for n in names}
    for n, g in shared.items():
        if not torch.isfinite(g).all():
            raise ValueError(f"the shared gradient of {n!r} contains NaN or infinite values")

    if labels is None:
        if images.shape[0] != 1:
            raise ValueError(f"labels=None searches every class for one image; give labels for "
                             f"{images.shape[0]} images (int64 tensor of shape ({images.shape[0]},))")
        results = {c: _compare(net, names, shared, images, torch.tensor([c]), loss_fn, noise, eps,
                               layer, update, fit_scale) for c in range(classes)}
        best = min(results, key=lambda c: results[c].relative)
        search = {c: r.relative for c, r in results.items()}
        r = results[best]
        return GradientResidual(**{**r.__dict__, "label_search": search})
    labels = _check_labels(labels, images.shape[0], classes)
    return _compare(net, names, shared, images, labels, loss_fn, noise, eps, layer, update, fit_scale)


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def _check_images(images, update: Update, layer) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor of shape (N, *input_shape), got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (float32 or float64), got {images.dtype}; "
                        f"convert with images.double()")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch (N, ...), got shape {tuple(images.shape)}")
    n, M = images.shape[0], update.batch_size
    if n not in (1, M):
        raise ValueError(f"{n} images for an update of {M} samples: the check compares a reconstruction "
                         f"of the whole batch ({M} images) or of one sample; a partial reconstruction "
                         f"needs the remainder of the update accounted for")
    if layer is None and tuple(images.shape[1:]) != tuple(update.input_shape):
        raise ValueError(f"images have sample shape {tuple(images.shape[1:])} but the update's inputs "
                         f"have shape {tuple(update.input_shape)}; for a deeper layer's input pass layer=")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values; a reconstruction must be finite")
    return images.detach().to(torch.float64)


def _check_noise(noise) -> float:
    if noise is None:
        return 0.0
    if isinstance(noise, bool) or not isinstance(noise, (int, float)):
        raise TypeError(f"noise must be a number (per-entry standard deviation), got {type(noise).__name__}")
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (absolute per-entry std), got {noise!r}")
    return float(noise)


def _check_labels(labels, n: int, classes: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be an int64 tensor of shape ({n},), got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64 class indices, got {labels.dtype}")
    labels = labels.reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"{labels.numel()} labels for {n} images: give one label per image")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(f"labels must lie in [0, {classes}) for a model with {classes} outputs, "
                         f"got {labels.tolist()}")
    return labels


def _layer_order(net: nn.Module, update: Update) -> list[nn.Module]:
    return [mod for mod, _, _ in trace_leaves(net, update.input_shape)]


def _parameter_names(net: nn.Module, update: Update, parameters, layer) -> list[str]:
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    if layer is not None:
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a module name such as 'fc2', got {type(layer).__name__}")
        try:
            target = net.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"the model has no module named {layer!r}") from None
    if parameters is None:
        if layer is None:
            names = trainable
        else:
            order = _layer_order(net, update)
            if target not in order:
                raise ValueError(f"module {layer!r} is not called by the model's forward pass")
            after = order[order.index(target):]
            owner = {id(p): m for m in after for p in m.parameters(recurse=False)}
            names = [n for n, p in net.named_parameters() if p.requires_grad and id(p) in owner]
    else:
        if isinstance(parameters, str):
            parameters = [parameters]
        names = list(parameters)
        unknown = [n for n in names if n not in trainable]
        if unknown:
            raise ValueError(f"unknown parameters {unknown}; the model's trainable parameters are {trainable}")
    if not names:
        raise ValueError("no parameter to compare: the model (after that layer) has no trainable parameters")
    missing = [n for n in names if n not in update.gradients]
    if missing:
        raise ValueError(f"the update has no gradients for {missing}; was it captured from this model?")
    for n in names:
        if tuple(update.gradients[n].shape) != tuple(net.get_parameter(n).shape):
            raise ValueError(f"the gradient of {n!r} has shape {tuple(update.gradients[n].shape)}, the "
                             f"parameter {tuple(net.get_parameter(n).shape)}: not this model's update")
    return names


def _forward(net: nn.Module, images: torch.Tensor, update: Update, layer) -> torch.Tensor:
    if layer is None:
        return _run(net, images)
    target = net.get_submodule(layer)
    calls = []

    def inject(module, args):
        calls.append(1)
        if args[0].shape[0] != images.shape[0] or args[0][0].numel() != images[0].numel():
            raise ValueError(f"layer {layer!r} takes inputs of shape {tuple(args[0].shape[1:])}, the "
                             f"reconstruction has {tuple(images.shape[1:])}")
        return (images.reshape(args[0].shape),) + tuple(args[1:])

    hook = target.register_forward_pre_hook(inject)
    try:
        out = _run(net, torch.zeros(images.shape[0], *update.input_shape, dtype=torch.float64))
    finally:
        hook.remove()
    if len(calls) != 1:
        raise ValueError(f"layer {layer!r} is called {len(calls)} times in one forward pass; the check "
                         f"can replace the input of a layer called exactly once")
    return out


def _run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        out = net(x)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"the model cannot run the reconstruction of shape {tuple(x.shape)} "
                         f"(BatchNorm in training mode on one sample?): {err}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError("the model must return logits of shape (N, classes) for the gradient check")
    return out


def _num_classes(net, images, update, layer) -> int:
    with torch.no_grad():
        return int(_forward(net, images, update, layer).shape[-1])


def _compare(net, names, shared, images, labels, loss_fn, noise, eps, layer, update,
             fit_scale) -> GradientResidual:
    params = [net.get_parameter(n) for n in names]
    logits = _forward(net, images, update, layer)
    loss = loss_fn(logits, labels)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not torch.isfinite(loss):
        raise ValueError("loss_fn must return a finite 0-dim tensor (the mean loss over the batch)")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    recomputed = {n: (g if g is not None else torch.zeros_like(p)).detach()
                  for n, p, g in zip(names, params, grads)}
    scale = 1.0
    if fit_scale:
        num = sum(float((recomputed[n] * shared[n]).sum()) for n in names)
        den = sum(float((recomputed[n] ** 2).sum()) for n in names)
        # den > 0 unless the recomputed update vanishes; a non-positive factor is no rescaling
        scale = num / den if den > 0 and num > 0 else 1.0
    per: dict[str, ParameterResidual] = {}
    total_abs = total_norm = total_tol = 0.0
    worst, worst_ratio = names[0], -1.0
    for n in names:
        g = shared[n]
        diff = float(torch.linalg.vector_norm(scale * recomputed[n] - g))
        norm = float(torch.linalg.vector_norm(g))
        size = g.numel()
        peak = float(g.abs().max()) if size else 0.0
        tol = math.sqrt(size) * (ROUNDOFF_FACTOR * eps * peak + NOISE_FACTOR * noise)
        rel = diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
        per[n] = ParameterResidual(absolute=diff, relative=rel, tolerance=tol, norm=norm, size=size,
                                   consistent=diff <= tol)
        ratio = diff / tol if tol > 0 else (0.0 if diff == 0 else math.inf)
        if ratio > worst_ratio:
            worst, worst_ratio = n, ratio
        total_abs += diff ** 2
        total_norm += norm ** 2
        total_tol += tol ** 2
    total_abs, total_norm = math.sqrt(total_abs), math.sqrt(total_norm)
    relative = total_abs / total_norm if total_norm > 0 else (0.0 if total_abs == 0 else math.inf)
    return GradientResidual(consistent=all(r.consistent for r in per.values()), relative=relative,
                            absolute=total_abs, tolerance=math.sqrt(total_tol), per_parameter=per,
                            worst_parameter=worst, labels=labels.detach().to(torch.int64).clone(),
                            noise=noise, scale=scale, dtype=_EPS_NAMES.get(eps, str(eps)), norm=total_norm)
