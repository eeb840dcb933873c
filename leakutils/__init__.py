"""leakutils: the shared package of the course "Data Reconstruction from Gradients".

One data flow through every chapter::

    data.load(...)                                  -> ImageData (images in [0, 1], labels)
    models.<Arch>(...)                              -> the attacked network
    capture.client_update(model, x, y)              -> Update (what the server sees)
    defences.<defence>(update or model, x, y, ...)  -> Update (clipped, noised, pruned, DP-SGD, ...)
    attacks.<attack>.reconstruct(model, update)     -> Reconstruction
    metrics.compare(reconstruction, x, y)           -> Scores (MSE, PSNR, SSIM, labels)
    plot.* / widgets.*                              -> figures and live panels

Every gradient attack ends with the gradient-residual check
(:func:`leakutils.attacks.residual.gradient_residual`): what it marks determined or recovered
reproduces the shared update; what it is not sure of it reports, never returns as certain.

Without gradients: ``inversion`` (Chapter 5, model inversion from output vectors; its parts
in ``inversion_models``, ``inversion_features`` and ``defences.output``), ``metamodel`` and
``extraction`` (Chapter 6, a black box's weights from its outputs; ``flatnets``,
``blackbox`` and ``critical_points`` hold their parts). Shared input checks: ``validate``;
numbers glued into a chapter's prose: ``book``. PyTorch's thread count is chosen for the
machine on import (``threads``; ``LEAKUTILS_THREADS=1`` on a shared teaching server).
"""
import warnings as _warnings

from . import attacks, capture, data, defences, metrics, models, threads
from .capture import client_update
from .core import Reconstruction, Update

__version__ = "0.1.0"

try:
    threads.configure()
except ValueError as _err:
    _warnings.warn(f"{_err}; leaving PyTorch's default thread count", RuntimeWarning, stacklevel=2)
__all__ = ["attacks", "capture", "data", "defences", "metrics", "models", "client_update", "Reconstruction", "Update",
           "threads", "__version__"]
