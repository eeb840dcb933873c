"""Convolutional layers as linear systems: R-CONV, R-GAP and two single-family variants.

For one sample, a CNN made of conv layers with activations, then ``Flatten`` and a fully
connected head, is rebuilt layer by layer from the top (Eltaras et al. 2024, "R-CONV"):

1. the head's input by the bias ratio (Chapter 1), and ``dl/dX = W^T dl/db``;
2. for each conv layer from the top: ``dl/dO = dl/dX * A'(O)`` from the rebuilt output ``X``
   (Chapter 2); then the layer's input ``x`` from linear equations (:mod:`.equations`):
   weight-gradient equations, shared by every input channel, and forward equations
   ``W * x + b = O`` where the activation above is invertible, so that ``O = A^{-1}(X)``;
   ``dl/dx = conv_transpose(dl/dO, W)`` carries the gradient one layer further down;
3. the gradient-residual check: the rebuilt image and label must reproduce the whole update.

Methods (:data:`METHODS`): ``"rconv"`` (R-CONV: gradient equations plus the forward
equations that exist, so ReLU layers are handled), ``"rgap"`` (R-GAP, Zhu & Blaschko 2021:
gradient, forward and padding rows stacked and solved by least squares, with its per-layer
rank analysis; needs invertible activations, :mod:`.rgap`), ``"forward"`` (forward
equations only, a simplified variant) and ``"gradient"`` (weight-gradient equations only).

Every system is solved in float64 with its rank and condition number reported
(:mod:`.solve`); where it is rank-deficient, the minimum-norm solution is returned and the
pixels the equations do not fix are marked in ``Reconstruction.determined``. Nothing divides
by a gradient without a tolerance, and no singular system raises. Models whose ``forward()``
does something its modules do not show are refused (:func:`check_forward_structure`).

Modules: :mod:`.parse` (reading the model), :mod:`.equations` (the matrices),
:mod:`.solve` (solvers and rank tolerances), :mod:`.rgap` (R-GAP's layer system),
:mod:`.attack` (``reconstruct``), :mod:`.counting` (``count_constraints``).
"""
from .attack import ERROR_BOUND_LIMIT, METHODS, _invert_layer, error_bound, layer_tolerance, reconstruct
from .counting import count_constraints
from .equations import forward_matrix, gradient_matrix
from .parse import ConvLayer, _parse, check_forward_structure, parse_cnn

__all__ = ["reconstruct", "ConvLayer", "parse_cnn", "count_constraints", "METHODS", "gradient_matrix",
           "forward_matrix", "check_forward_structure", "layer_tolerance"]
