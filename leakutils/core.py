"""The two records every chapter passes around: what the server sees and what it rebuilds.

``Update`` is the output of :func:`leakutils.capture.client_update`; ``Reconstruction`` is the
output of every ``leakutils.attacks.<attack>.reconstruct(model, update, **options)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

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
    """

    gradients: Mapping[str, torch.Tensor]
    batch_size: int
    loss: float
    input_shape: tuple[int, ...]
    per_sample: Mapping[str, torch.Tensor] | None = None

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
        """
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
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    determined: torch.Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)
    attack: str = ""

    def __post_init__(self) -> None:
        if self.determined.shape != self.images.shape:
            raise ValueError(
                f"determined mask shape {tuple(self.determined.shape)} must equal images shape "
                f"{tuple(self.images.shape)}"
            )

    @property
    def fraction_determined(self) -> float:
        """Fraction of image values fixed by the attack's equations, in [0, 1]."""
        return float(self.determined.double().mean()) if self.determined.numel() else 0.0
