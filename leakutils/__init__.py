"""leakutils: the shared package of the course "Data Reconstruction from Gradients".

One data flow through every chapter::

    data.load(...)                                  -> ImageData (images in [0, 1], labels)
    models.<Arch>(...)                              -> the attacked network
    capture.client_update(model, x, y)              -> Update (what the server sees)
    attacks.<attack>.reconstruct(model, update)     -> Reconstruction
    metrics.compare(reconstruction, x, y)           -> Scores (MSE, PSNR, SSIM, labels)
    plot.* / widgets.*                              -> figures and live panels

Without gradients: ``inversion`` (Chapter 5, model inversion from output vectors),
``metamodel`` and ``extraction`` (Chapter 6, a black box's weights from its outputs).
"""
from . import attacks, capture, data, metrics, models
from .capture import client_update
from .core import Reconstruction, Update

__version__ = "0.1.0"
__all__ = ["attacks", "capture", "data", "metrics", "models", "client_update", "Reconstruction", "Update",
           "__version__"]
