"""The two records every chapter passes around: what the server sees and what it rebuilds.

``Update`` is the output of :func:`leakutils.capture.client_update`; ``Reconstruction`` is the
output of every ``leakutils.attacks.<attack>.reconstruct(model, update, **options)``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .validate import check_callable, check_int, check_shape

__all__ = ["Update", "Reconstruction"]


@dataclass(frozen=True)
class Update:
    """What a federated-learning server receives from one client after one FedSGD step.

    Attributes
    ----------
    gradients : dict[str, torch.Tensor]
        Parameter name (as in ``model.named_parameters()``, e.g. ``"fc1.weight"``) to the
        gradient of the loss with respect to that parameter, averaged over the batch
        (PyTorch ``mean`` reduction). Each tensor has the parameter's shape and dtype.
    batch_size : int
        Number of samples M the gradients were averaged over (>= 1).
    loss : float
        Mean loss over the batch, in the loss function's own units (nats for cross-entropy).
    input_shape : tuple[int, ...]
        Shape of one input sample, e.g. ``(1, 28, 28)``. The server designed the model, so it
        knows this shape; attacks use it to return images rather than flat vectors.
    per_sample : dict[str, torch.Tensor] or None
        Only when requested (a teaching aid, not something a real client shares): parameter
        name to the stack of per-sample gradients, shape ``(M, *param.shape)``. Their mean
        over the first axis equals ``gradients[name]``.

    Raises
    ------
    TypeError
        ``gradients`` not a mapping of names to floating tensors, ``batch_size`` not an
        integer, ``loss`` not a number, ``input_shape`` not a tuple of integers.
    ValueError
        No gradients, ``batch_size < 1``, a negative ``input_shape`` entry, per-sample
        gradients whose shapes are not ``(M, *param.shape)``.
    """

    gradients: Mapping[str, torch.Tensor]
    batch_size: int
    loss: float
    input_shape: tuple[int, ...]
    per_sample: Mapping[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        _check_gradients("gradients", self.gradients)
        if not self.gradients:
            raise ValueError("gradients is empty: an update holds at least one parameter's gradient")
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        if isinstance(self.loss, bool) or not isinstance(self.loss, numbers.Real):
            raise TypeError(f"loss must be a number (the mean loss over the batch), got {type(self.loss).__name__}")
        object.__setattr__(self, "loss", float(self.loss))
        object.__setattr__(self, "input_shape", check_shape("input_shape", self.input_shape))
        if self.per_sample is not None:
            _check_gradients("per_sample", self.per_sample)
            for name, g in self.per_sample.items():
                ref = self.gradients.get(name)
                if ref is None or tuple(g.shape) != (self.batch_size, *ref.shape):
                    raise ValueError(
                        f"per_sample[{name!r}] must have shape (batch_size, *gradient shape) = "
                        f"{(self.batch_size, *(() if ref is None else tuple(ref.shape)))}, got {tuple(g.shape)}")

    def __getitem__(self, name: str) -> torch.Tensor:
        """Return the averaged gradient of parameter ``name``.

        Raises
        ------
        KeyError
            If the update holds no gradient of that name; the message lists the names it has.
        """
        try:
            return self.gradients[name]
        except KeyError:
            raise KeyError(
                f"the update has no gradient named {name!r}; it has {sorted(self.gradients)}"
            ) from None

    def map(self, fn) -> "Update":
        """Return a copy whose averaged gradients are ``fn(name, gradient)``.

        Used by defences (noise, clipping, pruning) that act between capture and attack.
        Per-sample gradients are dropped, because they no longer match the new averages.

        Parameters
        ----------
        fn : callable
            ``fn(name, gradient) -> tensor`` of the gradient's shape.

        Raises
        ------
        TypeError
            ``fn`` not callable, or returning something other than a floating tensor.
        ValueError
            ``fn`` returning a tensor of another shape.
        """
        check_callable("fn", fn, "fn(name, gradient) -> tensor")
        new = {name: fn(name, g) for name, g in self.gradients.items()}
        for name, g in new.items():
            if not isinstance(g, torch.Tensor) or g.shape != self.gradients[name].shape:
                raise ValueError(
                    f"the function given to Update.map must return a tensor of the same shape "
                    f"for {name!r} ({tuple(self.gradients[name].shape)})"
                )
        return Update(new, self.batch_size, self.loss, self.input_shape, None)


@dataclass
class Reconstruction:
    """What an attack rebuilds, with the evidence of how well-determined it is.

    Attributes
    ----------
    images : torch.Tensor
        Reconstructed inputs, shape ``(B, C, H, W)`` for image inputs (``(B, D)`` when the
        attacked layer sits deeper in the network and its input is a feature vector), in the
        data's own range (``[0, 1]`` for the course's data sets, not clipped). float64 for the
        analytic attacks.
    labels : torch.Tensor or None
        Recovered labels, int64. For one sample, shape ``(1,)``. For a batch, the distinct
        classes the gradients reveal (see :mod:`leakutils.attacks.labels`), so possibly fewer
        than the batch size.
    determined : torch.Tensor
        Boolean mask of the same shape as ``images``: True where the attack's equations fix
        the value; False where the system was rank-deficient (the value returned there is the
        minimum-norm least-squares choice, not information about the data).
    diagnostics : dict[str, Any]
        Attack-specific evidence: equations used, rank, condition number, residual, seconds,
        rows used, and so on. Each attack documents its keys.
    attack : str
        Name of the attack that produced this reconstruction.

    Raises
    ------
    TypeError
        ``images`` not a floating tensor, ``determined`` not a bool tensor, ``labels`` neither
        None nor an integer tensor, ``diagnostics`` not a dict, ``attack`` not a string.
    ValueError
        ``determined`` of another shape than ``images``; values marked determined that are
        NaN or infinite (an attack is never sure of a non-finite value).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    determined: torch.Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)
    attack: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or not self.images.is_floating_point():
            raise TypeError(f"images must be a floating torch tensor, got "
                            f"{getattr(self.images, 'dtype', type(self.images).__name__)}")
        if not isinstance(self.determined, torch.Tensor) or self.determined.dtype != torch.bool:
            raise TypeError(f"determined must be a torch.bool tensor (True where the attack fixes the "
                            f"value), got {getattr(self.determined, 'dtype', type(self.determined).__name__)}")
        if self.labels is not None and (not isinstance(self.labels, torch.Tensor) or self.labels.is_floating_point()
                                        or self.labels.dtype == torch.bool):
            raise TypeError(f"labels must be None or an integer tensor of class indices, got "
                            f"{getattr(self.labels, 'dtype', type(self.labels).__name__)}")
        if not isinstance(self.diagnostics, dict):
            raise TypeError(f"diagnostics must be a dict, got {type(self.diagnostics).__name__}")
        if not isinstance(self.attack, str):
            raise TypeError(f"attack must be the attack's name (a string), got {type(self.attack).__name__}")
        if self.determined.shape != self.images.shape:
            raise ValueError(
                f"determined mask shape {tuple(self.determined.shape)} must equal images shape "
                f"{tuple(self.images.shape)}"
            )
        if self.determined.any() and not bool(torch.isfinite(self.images[self.determined]).all()):
            raise ValueError("values marked determined are NaN or infinite; an attack marks only finite "
                             "values it is sure of")

    @property
    def fraction_determined(self) -> float:
        """Fraction of image values fixed by the attack's equations, in [0, 1]."""
        return float(self.determined.double().mean()) if self.determined.numel() else 0.0


def _check_gradients(name: str, grads) -> None:
    """A mapping of parameter names (str) to floating tensors."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"{name} must be a dict of parameter name to gradient tensor, got {type(grads).__name__}")
    for key, g in grads.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be parameter names (str), got {type(key).__name__} {key!r}")
        if not isinstance(g, torch.Tensor) or not g.is_floating_point():
            raise TypeError(f"{name}[{key!r}] must be a floating torch tensor, got "
                            f"{getattr(g, 'dtype', type(g).__name__)}")
