"""Attacks. Each module offers ``reconstruct(model, update, **options) -> Reconstruction``.

- :mod:`leakutils.attacks.bias_ratio`: one sample through a fully connected layer (Chapter 1).
- :mod:`leakutils.attacks.labels`: labels from the output layer's gradient (iDLG).
"""
from . import bias_ratio, labels

__all__ = ["bias_ratio", "labels"]
