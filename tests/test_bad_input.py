"""One registry of bad input over every public callable of ``leakutils``.

``CASES`` lists ``(callable, build, exception type, message fragment)``: ``build()``
returns the bad ``(args, kwargs)``, and calling the callable with them must raise that
exception with that fragment in its message (a clear error, not a raw one from deep
inside torch, numpy or scipy). ``EXEMPT`` names, with a reason, the public callables that
take no input to validate (exception classes, result records, argument-free panels);
``UNVALIDATED`` names the known gaps, with the bad input and what happens, until their
owners close them. :func:`test_every_public_callable_is_covered` walks every module of the
package, reads its ``__all__`` and fails for a public callable in none of the three, so a
new public function without a bad-input case fails the suite.

Inputs are tiny (a 1x4x4 image, a 16-6-3 network) to keep the file fast.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import leakutils
from leakutils import (activations, blackbox, book, capture, core, critical_points, data, defences, extraction,
                       flatnets, inversion, inversion_loss, inversion_models, metamodel, metrics, models, plot,
                       validate)
from leakutils import exercises, fl
from leakutils.attacks import (bias_ratio, conv, dlg, exan, fedavg, fishing, forward, imprint, inverting, labels,
                               pruned, residual)
from leakutils.defences import detect
from leakutils.defences import figures as d_figures
from leakutils.defences import matrix as d_matrix
from leakutils.defences import output as output_defences
from leakutils.defences import registry as d_registry
from leakutils.defences import utility as d_utility
from leakutils.widgets import activations as w_activations
from leakutils.widgets import fedavg as w_fedavg
from leakutils.widgets import bias_ratio as w_bias_ratio
from leakutils.widgets import conv as w_conv
from leakutils.widgets import defences as w_defences
from leakutils.widgets import exan as w_exan
from leakutils.widgets import extraction as w_extraction
from leakutils.widgets import inversion as w_inversion
from leakutils.widgets import malicious as w_malicious
from leakutils.widgets import panel
from leakutils.widgets import static as w_static

NAN = float("nan")


def A(*args, **kwargs) -> tuple[tuple, dict]:
    """The bad arguments of one call."""
    return args, kwargs


@dataclass(frozen=True)
class Case:
    """One bad call: ``target(*args, **kwargs)`` with ``(args, kwargs) = build()`` raises ``exc``."""

    target: Callable
    build: Callable[[], tuple[tuple, dict]]
    exc: type
    fragment: str


# --------------------------------------------------------------------------- tiny inputs


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@lru_cache(maxsize=None)
def x() -> torch.Tensor:
    """Two 1x4x4 images in [0, 1], float64."""
    return torch.rand(2, 1, 4, 4, generator=_rng(), dtype=torch.float64)


def y() -> torch.Tensor:
    return torch.tensor([0, 2])


@lru_cache(maxsize=None)
def mlp() -> models.MLP:
    torch.manual_seed(0)
    return models.MLP((1, 4, 4), (6,), num_classes=3, dtype=torch.float64)


@lru_cache(maxsize=None)
def update() -> core.Update:
    """One sample's update of :func:`mlp`."""
    return capture.client_update(mlp(), x()[:1], y()[:1])


@lru_cache(maxsize=None)
def batch_update() -> core.Update:
    return capture.client_update(mlp(), x(), y())


def reconstruction() -> core.Reconstruction:
    return core.Reconstruction(x()[:1], torch.tensor([0]), torch.ones(1, 1, 4, 4, dtype=torch.bool))


@lru_cache(maxsize=None)
def digits() -> data.ImageData:
    return data.load("digits", 4, dtype=torch.float64)


@lru_cache(maxsize=None)
def cnn() -> models.ConvNet:
    torch.manual_seed(0)
    return models.ConvNet(1, 4, [(4, 3, 1, 1, "tanh")], num_classes=3, dtype=torch.float64)


@lru_cache(maxsize=None)
def cnn_update() -> core.Update:
    return capture.client_update(cnn(), x()[:1], y()[:1])


SIZES = flatnets.Sizes(4, 3, 2)


@lru_cache(maxsize=None)
def nets() -> torch.Tensor:
    """Two flattened 4-3-2 networks."""
    return flatnets.init_population(2, SIZES, [0, 1])


def imgs8() -> torch.Tensor:
    """Four 1x8x8 images in [0, 1], float32 (Chapter 5's classifiers)."""
    return torch.rand(4, 1, 8, 8, generator=_rng())


@lru_cache(maxsize=None)
def classifier() -> inversion.Classifier:
    torch.manual_seed(0)
    return inversion.Classifier(image_size=8, num_classes=2)


def vectors() -> torch.Tensor:
    """Three output vectors of 5 classes."""
    return torch.randn(3, 5, generator=_rng())


def linear_box(z: np.ndarray) -> np.ndarray:
    """A 4 -> 2 black box (linear, so a ReLU network with all units active)."""
    return z @ np.ones((4, 2))


# --------------------------------------------------------------------------- the registry

CASES: list[Case] = [
    # ---- leakutils.validate
    Case(validate.check_int, lambda: A("width", 2.0, 1), TypeError, "width must be an integer, got float"),
    Case(validate.check_int, lambda: A("width", True, 1), TypeError, "width must be an integer, got bool"),
    Case(validate.check_int, lambda: A("width", 0, 1), ValueError, "width must be an integer >= 1, got 0"),
    Case(validate.check_number, lambda: A("lr", NAN), ValueError, "lr must be a finite number"),
    Case(validate.check_number, lambda: A("lr", "0.1"), TypeError, "lr must be a real number"),
    Case(validate.check_number, lambda: A("lr", 0.0, 0.0, lo_open=True), ValueError, "lr must be a number in (0, inf]"),
    Case(validate.check_fraction, lambda: A("p", 1.5), ValueError, "p must be a number in [0, 1]"),
    Case(validate.check_fraction, lambda: A("p", None), TypeError, "p must be a real number"),
    Case(validate.check_choice, lambda: A("method", "x", ("a", "b")), ValueError, "method must be one of ('a', 'b')"),
    Case(validate.check_choice, lambda: A("method", 1, ("a",)), TypeError, "method must be a string"),
    Case(validate.check_bool, lambda: A("peel", 1), TypeError, "peel must be True or False, got int 1"),
    Case(validate.check_seed, lambda: A("seed", -1), ValueError, "seed must be an integer in 0..4294967295"),
    Case(validate.check_seed, lambda: A("seed", 2**32), ValueError, "seed must be an integer in 0..4294967295"),
    Case(validate.check_module, lambda: A("model", models.MLP), TypeError, "build it first"),
    Case(validate.check_module, lambda: A("model", {}), TypeError, "model must be a torch.nn.Module, got dict"),
    Case(validate.check_callable, lambda: A("oracle", 3), TypeError, "oracle must be a callable"),
    Case(validate.check_tensor, lambda: A("x", np.zeros(3)), TypeError, "convert with torch.as_tensor"),
    Case(validate.check_tensor, lambda: A("x", torch.zeros(0, 3)), ValueError, "x is empty"),
    Case(validate.check_tensor, lambda: A("x", torch.tensor([1.0, NAN])), ValueError,
         "x contains NaN or infinite values (1 of 2 entries)"),
    Case(validate.check_tensor, lambda: A("x", torch.ones(3, dtype=torch.int64)), TypeError,
         "x must have a floating dtype"),
    Case(validate.check_tensor, lambda: A("x", torch.ones(3), ndim=2), ValueError, "x must have 2 axes"),
    Case(validate.check_tensor, lambda: A("x", torch.ones(3), kind="complex"), ValueError, "kind must be one of"),
    Case(validate.check_labels, lambda: A("y", torch.tensor([0.0])), TypeError, "convert with .long()"),
    Case(validate.check_labels, lambda: A("y", torch.tensor([0, 5]), 2, 3), ValueError, "y must lie in [0, 3)"),
    Case(validate.check_labels, lambda: A("y", torch.tensor([0]), 2), ValueError, "2 samples, 1 labels"),
    Case(validate.check_labels, lambda: A("y", [0, 1]), TypeError, "y must be an int64 tensor"),
    Case(validate.check_shape, lambda: A("input_shape", "28"), TypeError, "input_shape must be an int or a tuple"),
    Case(validate.check_shape, lambda: A("input_shape", (1, 0)), ValueError, "non-empty and positive"),
    Case(validate.check_shape, lambda: A("input_shape", (1, 2.5)), TypeError, "must hold integers"),
    Case(validate.check_dtype, lambda: A("dtype", "float64"), TypeError,
         "dtype must be torch.float32 or torch.float64"),

    # ---- leakutils.core
    Case(core.Update, lambda: A({"w": [1.0]}, 1, 0.1, (3,)), TypeError,
         "gradients['w'] must be a floating torch tensor"),
    Case(core.Update, lambda: A({"w": torch.ones(2)}, 0, 0.1, (3,)), ValueError, "batch_size must be an integer >= 1"),
    Case(core.Update, lambda: A({}, 1, 0.1, (3,)), ValueError, "gradients is empty"),
    Case(core.Update, lambda: A({"w": torch.ones(2)}, 1, "0.1", (3,)), TypeError, "loss must be a number"),
    Case(core.Update, lambda: A({"w": torch.ones(2)}, 1, 0.1, (3, -1)), ValueError, "input_shape must be non-empty"),
    Case(core.Update, lambda: A({"w": torch.ones(2)}, 2, 0.1, (3,), {"w": torch.ones(3, 2)}), ValueError,
         "per_sample['w'] must have shape"),
    Case(core.Update.map, lambda: A(update(), "double"), TypeError, "fn must be a callable"),
    Case(core.Update.map, lambda: A(update(), lambda n, g: g[:1]), ValueError,
         "must return a tensor of the same shape"),
    Case(core.Reconstruction, lambda: A(x(), None, torch.ones(2, 1, 4, 4)), TypeError,
         "determined must be a torch.bool tensor"),
    Case(core.Reconstruction, lambda: A(x(), None, torch.ones(2, 16, dtype=torch.bool)), ValueError,
         "determined mask shape"),
    Case(core.Reconstruction, lambda: A(x().numpy(), None, torch.ones(2, 1, 4, 4, dtype=torch.bool)), TypeError,
         "images must be a floating torch tensor"),
    Case(core.Reconstruction, lambda: A(x(), torch.tensor([0.5, 1.0]), torch.ones(2, 1, 4, 4, dtype=torch.bool)),
         TypeError, "labels must be None or an integer tensor"),
    Case(core.Reconstruction, lambda: A(x() * NAN, None, torch.ones(2, 1, 4, 4, dtype=torch.bool)), ValueError,
         "values marked determined are NaN"),

    # ---- leakutils.capture
    Case(capture.client_update, lambda: A("model", x(), y()), TypeError, "model must be a torch.nn.Module"),
    Case(capture.client_update, lambda: A(mlp(), x().float(), y()), TypeError, "convert one of them"),
    Case(capture.client_update, lambda: A(mlp(), x()[:0], y()[:0]), ValueError, "x is empty"),
    Case(capture.client_update, lambda: A(mlp(), x() * NAN, y()), ValueError, "x contains NaN"),
    Case(capture.client_update, lambda: A(mlp(), x(), y()[:1]), ValueError, "one entry per sample"),
    Case(capture.client_update, lambda: A(mlp(), x(), y() + 3), ValueError, "labels must lie in [0, 3)"),
    Case(capture.client_update, lambda: A(mlp(), x(), y().float()), TypeError, "int64 class indices"),
    Case(capture.client_update, lambda: A(mlp(), x()[:, :, :2], y()), ValueError, "does not accept inputs of shape"),
    Case(capture.client_update, lambda: A(mlp(), x(), y(), per_sample="yes"), TypeError, "per_sample must be True"),

    # ---- leakutils.activations
    Case(activations.rule_for, lambda: A(nn.SiLU()), TypeError, "no rule for SiLU"),
    Case(activations.rule_for, lambda: A("sigmoid"), TypeError, "activation must be a torch.nn.Module"),
    Case(activations.derivative_from_output, lambda: A(nn.Sigmoid(), torch.tensor([1.5])), ValueError,
         "cannot be sigmoid outputs"),
    Case(activations.derivative_from_output, lambda: A(nn.Tanh(), torch.tensor([NAN])), ValueError,
         "X contains NaN"),
    Case(activations.derivative_from_output, lambda: A(nn.Tanh(), torch.zeros(0)), ValueError, "X is empty"),
    Case(activations.derivative_from_output, lambda: A(nn.Tanh(), [0.1]), TypeError, "X must be a torch tensor"),
    Case(activations.propagate, lambda: A(nn.Tanh(), torch.zeros(3), torch.zeros(2)), ValueError,
         "grad_X must have the shape of X"),
    Case(activations.propagate, lambda: A(nn.Tanh(), torch.zeros(2), torch.tensor([0.0, NAN])), ValueError,
         "grad_X contains NaN"),
    Case(activations.invert, lambda: A(nn.LeakyReLU(0.0), torch.tensor([-1.0])), ValueError, "not invertible"),
    Case(activations.invert, lambda: A(nn.ReLU(), torch.tensor([-1.0])), ValueError, "cannot be relu outputs"),
    Case(activations.is_invertible, lambda: A(nn.GELU()), TypeError, "no rule for GELU"),
    Case(activations.is_invertible, lambda: A(None), TypeError, "activation must be a torch.nn.Module"),
    Case(activations.snap_to_range, lambda: A(nn.ReLU(), torch.ones(2), rtol=2.0), ValueError,
         "rtol must be a number in [0, 1)"),
    Case(activations.snap_to_range, lambda: A(nn.ReLU(), torch.tensor([float("inf")])), ValueError,
         "X contains NaN or infinite"),

    # ---- leakutils.models
    Case(models.ArcTan(), lambda: A([0.5]), TypeError, "ArcTan takes a floating torch tensor"),
    Case(models.make_activation, lambda: A("swish"), ValueError, "unknown activation 'swish'"),
    Case(models.make_activation, lambda: A(nn.ReLU), TypeError, "activation must be a name"),
    Case(models.make_activation, lambda: A("relu", slope=1), TypeError, "does not accept ['slope']"),
    Case(models.MLP, lambda: A((1, 4, 4), (2.5,)), TypeError, "widths must be an integer"),
    Case(models.MLP, lambda: A((1, 4, 4), (0,)), ValueError, "widths must be an integer >= 1"),
    Case(models.MLP, lambda: A((1, 4, 4), 8), TypeError, "widths must be a sequence"),
    Case(models.MLP, lambda: A((1, 4, 4), bias=1), TypeError, "bias must be True or False"),
    Case(models.MLP, lambda: A("28"), TypeError, "input_shape must be an int or a tuple"),
    Case(models.MLP, lambda: A(4, dtype=torch.float16), TypeError, "dtype must be torch.float32"),
    Case(models.LeNet, lambda: A(1, 16, width=0), ValueError, "width must be an integer >= 1"),
    Case(models.LeNet, lambda: A(1, (16, 16, 16)), ValueError, "image_size must be an int or a pair"),
    Case(models.LeNet, lambda: A(1.0, 16), TypeError, "in_channels must be an integer"),
    Case(models.LeNet(1, 16).forward, lambda: A(torch.zeros(1, 1, 8, 8)), ValueError, "LeNet was built for inputs"),
    Case(models.MLP((1, 4, 4), (2,)).forward, lambda: A(torch.zeros(1, 5)), ValueError, "MLP was built for inputs"),
    Case(cnn().forward, lambda: A(x().float()), TypeError, "convert one of them"),
    Case(models.ConvNet, lambda: A(1, 8, [(4, 3.0, 1, 1, "relu")]), TypeError, "kernel must be an integer"),
    Case(models.ConvNet, lambda: A(1, 8, []), ValueError, "at least one conv layer"),
    Case(models.ConvNet, lambda: A(1, 8, 4), TypeError, "convs must be a sequence"),
    Case(models.ConvNet, lambda: A(1, 8, [(4, 9, 1, 0, "relu")]), ValueError, "do not fit"),
    Case(models.ConvNet, lambda: A(1, 8, [(4, 3, 1, 1)]), ValueError, "must be (filters, kernel, stride, padding"),
    Case(models.lenet_o, lambda: A(1, 16, activation="swish"), ValueError, "unknown activation"),
    Case(models.cnn6, lambda: A(1, 16, last_filters=0), ValueError, "filters = 0"),
    Case(models.cnn6_o, lambda: A(1, -16), ValueError, "image_size must be an integer >= 1"),
    Case(models.rconv_net, lambda: A(0, 16), ValueError, "in_channels must be an integer >= 1"),
    Case(models.lenet_4_relu, lambda: A(1, 16, num_classes=0), ValueError, "num_classes must be an integer >= 1"),
    Case(models.lenet_all_relu, lambda: A(1, 16, first_filters=2.0), TypeError, "filters must be an integer"),
    Case(models.vgg_small, lambda: A(1, 8, channels=(8, 8)), ValueError, "three conv widths"),
    Case(models.vgg_small, lambda: A(1, 8, head_width=0), ValueError, "head_width must be an integer >= 1"),
    Case(models.init_weights, lambda: A(mlp(), "orthogonal"), ValueError, "scheme must be one of"),
    Case(models.init_weights, lambda: A(mlp(), low=1.0, high=0.0), ValueError, "low < high"),
    Case(models.init_weights, lambda: A(mlp(), "normal", std=0.0), ValueError, "std must be a number in (0, inf]"),
    Case(models.init_weights, lambda: A(mlp(), seed=-1), ValueError, "seed must be an integer in 0..4294967295"),
    Case(models.init_weights, lambda: A("net"), TypeError, "model must be a torch.nn.Module"),
    Case(models.init_weights, lambda: A(nn.ReLU()), ValueError, "no linear or convolutional layer"),
    Case(models.count_parameters, lambda: A({"w": torch.ones(2)}), TypeError, "model must be a torch.nn.Module"),

    # ---- leakutils.data
    Case(data.load, lambda: A("cifar11"), ValueError, "unknown data set 'cifar11'"),
    Case(data.load, lambda: A(3), TypeError, "name must be a string"),
    Case(data.load, lambda: A("digits", 0), ValueError, "n must be an integer >= 1"),
    Case(data.load, lambda: A("digits", 2.0), TypeError, "n must be an integer"),
    Case(data.load, lambda: A("digits", 5000), ValueError, "fewer than the n=5000"),
    Case(data.load, lambda: A("digits", 2, size=(4, 0)), ValueError, "size must be an integer >= 1"),
    Case(data.load, lambda: A("digits", 2, size="big"), TypeError, "size must be an int or a pair"),
    Case(data.load, lambda: A("digits", 2, channels=2), ValueError, "channels must be 1 (grey), 3 (colour)"),
    Case(data.load, lambda: A("digits", 2, dtype=torch.int64), TypeError, "dtype must be torch.float32"),
    Case(data.load, lambda: A("digits", 2, split="test"), ValueError, "single split"),
    Case(data.load, lambda: A("digits", 2, split="dev"), ValueError, "split must be one of"),
    Case(data.load, lambda: A("cifar10", root=3), TypeError, "root must be a folder path"),
    Case(data.ImageData, lambda: A(x(), y() + 1, ("a", "b", "c"), "toy", "random"), ValueError,
         "labels must lie in [0, 3)"),
    Case(data.ImageData, lambda: A(x(), y(), "abc", "toy", "random"), TypeError, "classes must be a tuple"),
    Case(data.ImageData, lambda: A(x()[:, 0], y(), ("a", "b", "c"), "toy", "random"), ValueError,
         "images must have 4 axes"),
    Case(data.ImageData.__getitem__, lambda: A(digits(), 10), IndexError, "out of range for 4 images"),
    Case(data.ImageData.__getitem__, lambda: A(digits(), "0"), TypeError, "index must be an int"),

    # ---- leakutils.book
    Case(book.glue, lambda: A("ch1 psnr", 1.0), ValueError, "letters, digits and '_' only"),
    Case(book.footprint, lambda: A(0), ValueError, "chapter must be"),
    Case(book.footprint, lambda: A("1"), TypeError, "chapter must be"),
    Case(leakutils.threads.configure, lambda: A(0), ValueError, "positive integer number of threads"),
    Case(leakutils.threads.configure, lambda: A("two"), ValueError, "unset LEAKUTILS_THREADS"),
    Case(book.glue, lambda: A(1, 1.0), TypeError, "a glue key must be a string"),
    Case(book.glue, lambda: A("ch1_psnr", 1.0, display="no"), TypeError, "display must be True or False"),

    # ---- leakutils.exercises
    Case(exercises.check, lambda: A("ch1-no-such"), ValueError, "unknown exercise label"),
    Case(exercises.check, lambda: A(1), TypeError, "must be an exercise label string"),
    Case(exercises.check, lambda: A("ch1-by-hand", xhat=1), TypeError, "got unexpected ['xhat']"),
    Case(exercises.get, lambda: A("ch0"), ValueError, "unknown exercise label"),
    Case(exercises.get, lambda: A(None), TypeError, "must be an exercise label string"),

    # ---- leakutils.plot
    Case(plot.to_display, lambda: A(x()), ValueError, "an image must have shape"),
    Case(plot.to_display, lambda: A(x()[0].numpy()), TypeError, "image must be a torch tensor"),
    Case(plot.show_image, lambda: A("ax", x()[0]), TypeError, "ax must be a matplotlib Axes"),
    Case(plot.image_grid, lambda: A(x()[0]), ValueError, "non-empty tensor of shape (N, C, H, W)"),
    Case(plot.image_grid, lambda: A(x(), titles=["a"]), ValueError, "got 1 titles for 2 images"),
    Case(plot.compare_grid, lambda: A(x(), "rec"), TypeError, "must be tensors (or a Reconstruction)"),
    Case(plot.compare_grid, lambda: A(x(), x()[:1]), ValueError, "need the same batch size"),
    Case(plot.federated_round, lambda: A("image"), TypeError, "image must be a torch tensor"),

    # ---- leakutils.metrics
    Case(metrics.mse, lambda: A(x(), x()[:1]), ValueError, "must have the same shape"),
    Case(metrics.mse, lambda: A(x(), x() * NAN), ValueError, "contain NaN or infinite values"),
    Case(metrics.psnr, lambda: A(x(), x(), data_range=0), ValueError, "data_range must be a number in (0, inf]"),
    Case(metrics.psnr, lambda: A(x(), x(), data_range=float("inf")), ValueError, "data_range must be a finite number"),
    Case(metrics.psnr, lambda: A(x(), x(), data_range=True), TypeError, "data_range must be a real number"),
    Case(metrics.psnr, lambda: A(x(), (x() * 255).to(torch.uint8)), TypeError, "mix an integer dtype"),
    Case(metrics.ssim, lambda: A(x()[:, 0], x()[:, 0]), ValueError, "ssim needs images of shape (B, C, H, W)"),
    Case(metrics.label_accuracy, lambda: A(torch.zeros(2, 2), torch.zeros(2, 2)), ValueError, "one-dimensional"),
    Case(metrics.match, lambda: A(x().numpy(), x()), TypeError, "must be torch tensors with a batch axis"),
    Case(metrics.compare, lambda: A("rec", x()), TypeError, "reconstruction must be a Reconstruction or a tensor"),
    Case(metrics.compare, lambda: A(x()[:1], x()[:1] * 300), ValueError, "outside [0, 1]"),

    # ---- leakutils.attacks.residual
    Case(residual.gradient_residual, lambda: A(mlp(), update(), x()[:1] * NAN, y()[:1]), ValueError,
         "images contain NaN"),
    Case(residual.gradient_residual, lambda: A(mlp(), update(), x()[:1], y()[:1].float()), TypeError,
         "labels must be int64"),
    Case(residual.gradient_residual, lambda: A(mlp(), update(), x()[:1], y()[:1], noise=-1.0), ValueError,
         "noise must be a finite number >= 0"),
    Case(residual.gradient_residual, lambda: A(mlp(), update(), x()[:1], y()[:1], parameters=["nope"]),
         ValueError, "unknown parameters ['nope']"),
    Case(residual.gradient_residual, lambda: A(mlp(), "update", x()[:1]), TypeError,
         "update must be a leakutils Update"),

    # ---- leakutils.attacks.labels
    Case(labels.recover_labels, lambda: A(mlp(), update(), rtol=2.0), ValueError, "rtol must be a number in (0, 1)"),
    Case(labels.recover_labels, lambda: A(mlp(), update(), "act1"), TypeError, "not a Linear"),
    Case(labels.recover_labels, lambda: A(mlp(), {"out.weight": 0}), TypeError, "update must be a leakutils Update"),

    # ---- leakutils.attacks.bias_ratio
    Case(bias_ratio.reconstruct, lambda: A(mlp(), batch_update()), ValueError, "Pass allow_batch=True"),
    Case(bias_ratio.reconstruct, lambda: A(mlp(), update(), "nope"), ValueError, "has no layer named 'nope'"),
    Case(bias_ratio.reconstruct, lambda: A(mlp(), update(), rtol=0), ValueError, "rtol must be a number in (0, 1)"),
    Case(bias_ratio.reconstruct, lambda: A(mlp(), update(), noise="small"), TypeError, "noise must be a number"),
    Case(bias_ratio.reconstruct, lambda: A(models.MLP((1, 4, 4), (6,), 3, bias=False, dtype=torch.float64),
                                           update()), ValueError, "has no bias"),
    Case(bias_ratio.row_inputs, lambda: A(mlp(), update().map(lambda n, g: g * NAN)), ValueError,
         "contains NaN or infinite values"),
    Case(bias_ratio.row_inputs, lambda: A(nn.Conv2d(1, 1, 3), update()), ValueError, "has no Linear layer"),
    Case(bias_ratio.layer_input_gradient, lambda: A(mlp(), update(), 3), TypeError, "layer must be a module name"),

    # ---- leakutils.attacks.pruned
    Case(pruned.reconstruct, lambda: A(mlp(), batch_update()), ValueError, "Use the ExAN attack"),
    Case(pruned.reconstruct, lambda: A(mlp(), update().map(lambda n, g: g * 0)), ValueError,
         "every bias gradient of 'fc1' is 0"),
    Case(pruned.reconstruct, lambda: A(models.MLP((1, 4, 4), (6,), 3, bias=False, dtype=torch.float64),
                                       update()), ValueError, "has no bias"),
    Case(pruned.reconstruct, lambda: A("net", update()), TypeError, "model must be a torch.nn.Module"),

    # ---- leakutils.attacks.dlg
    Case(dlg.reconstruct, lambda: A(mlp(), update(), iterations=0), ValueError, "iterations must be an integer >= 1"),
    Case(dlg.reconstruct, lambda: A(mlp(), update(), labels="guess"), ValueError, "labels must be one of"),
    Case(dlg.reconstruct, lambda: A(mlp(), update(), seed=1.5), TypeError, "seed must be an integer"),
    Case(dlg.reconstruct, lambda: A(mlp(), update(), lr=-1.0), ValueError, "lr must be a number in (0, inf]"),
    Case(dlg.reconstruct, lambda: A(mlp(), update(), noise=NAN), ValueError, "noise must be a finite number"),
    Case(dlg.reconstruct, lambda: A(mlp(), update().map(lambda n, g: g * NAN), iterations=1), ValueError,
         "contains NaN or infinite values"),
    Case(dlg.reconstruct, lambda: A(models.MLP((1, 4, 4), (5,), 3, dtype=torch.float64), update()), ValueError,
         "the update does not come from this model"),
    Case(dlg.reconstruct, lambda: A(mlp, update()), TypeError, "model must be a torch.nn.Module"),

    # ---- leakutils.attacks.inverting
    Case(forward.reconstruct, lambda: A(mlp(), update(), bounds=(1.0, 0.0)), ValueError, "lo < hi"),
    Case(forward.reconstruct, lambda: A(mlp(), update(), bounds="01"), TypeError, "bounds must be two numbers"),
    Case(inverting.cosine_distance, lambda: A(mlp(), update(), None), TypeError,
         "images must be a floating tensor of shape (M, *input_shape)"),
    Case(inverting.cosine_distance, lambda: A(mlp(), update(), x()), ValueError, "init must have shape (1, 1, 4, 4)"),
    Case(inverting.reconstruct, lambda: A(mlp(), update(), iterations=0), ValueError,
         "iterations must be an integer >= 1"),
    Case(inverting.reconstruct, lambda: A(mlp(), update(), tv=-1.0), ValueError, "tv must be a number in [0, inf]"),
    Case(inverting.reconstruct, lambda: A(mlp(), update(), init="zeros"), ValueError, "init must be None, 'random'"),
    Case(inverting.reconstruct, lambda: A(mlp(), update(), init=x()), ValueError, "init must have shape (1, 1, 4, 4)"),
    Case(inverting.reconstruct, lambda: A(mlp(), update(), labels=torch.tensor([5])), ValueError,
         "labels must lie in [0, 3)"),
    Case(inverting.reconstruct, lambda: A(mlp(), update(), boxed="yes"), TypeError, "boxed must be True or False"),
    Case(inverting.reconstruct, lambda: A(mlp(), update().map(lambda n, g: 0 * g)), ValueError, "the update is zero"),
    Case(inverting.reconstruct, lambda: A("model", update()), TypeError, "model must be a torch.nn.Module"),
    Case(inverting.total_variation, lambda: A(torch.zeros(3)), ValueError, "total variation needs"),
    Case(inverting.total_variation, lambda: A(y()), TypeError, "images must be a floating torch tensor"),

    # ---- leakutils.attacks.conv (R-CONV, R-GAP and the equation builders)
    Case(conv.reconstruct, lambda: A(cnn(), cnn_update(), method="x"), ValueError, "method must be one of"),
    Case(conv.reconstruct, lambda: A(cnn(), cnn_update(), rtol=-1), ValueError, "rtol must be a number in (0, 1)"),
    Case(conv.reconstruct, lambda: A(cnn(), cnn_update(), dense_limit=0), ValueError,
         "dense_limit must be an integer >= 1"),
    Case(conv.reconstruct, lambda: A(cnn(), cnn_update(), labels="yes"), TypeError, "labels must be True or False"),
    Case(conv.reconstruct, lambda: A(cnn(), cnn_update().map(lambda n, g: g * NAN)), ValueError, "contains NaN"),
    Case(conv.reconstruct, lambda: A(mlp(), update()), ValueError, "has no Conv2d layer"),
    Case(conv.reconstruct, lambda: A(cnn(), capture.client_update(cnn(), x(), y())), ValueError, "rebuilds one sample"),
    Case(conv.parse_cnn, lambda: A(cnn(), (1, 9)), ValueError, "input_shape must be (C, H, W)"),
    Case(conv.parse_cnn, lambda: A("model", (1, 4, 4)), TypeError, "model must be a torch.nn.Module"),
    Case(conv.count_constraints, lambda: A(nn.Conv2d(1, 2, 3), (2, 8, 8)), ValueError, "input channels"),
    Case(conv.count_constraints, lambda: A("conv", (1, 8, 8)), TypeError, "conv must be an nn.Conv2d"),
    Case(conv.gradient_matrix, lambda: A(nn.Conv2d(1, 2, 3), np.zeros((3, 3, 3)), (8, 8)), ValueError,
         "grad_out must have shape (F, O_h, O_w)"),
    Case(conv.forward_matrix, lambda: A("conv", (1, 8, 8)), TypeError, "conv must be an nn.Conv2d"),
    Case(conv.check_forward_structure, lambda: A(cnn(), (1, 4, 4), upto="a"), TypeError,
         "upto must be an integer, got str"),
    Case(conv.check_forward_structure, lambda: A(cnn(), (1, 4, 4), upto=-1), ValueError,
         "upto must be an integer >= 0"),
    Case(conv.layer_tolerance, lambda: A("float64"), TypeError, "dtype must be a floating torch dtype"),
    Case(conv.equations.output_size, lambda: A(nn.Conv2d(1, 2, 3), (1, 1)), ValueError, "smaller than the layer's"),
    Case(conv.equations.padding_count, lambda: A(nn.Conv2d(1, 2, 3), "ab"), TypeError,
         "in_hw must be (height, width)"),
    Case(conv.equations.padding_count, lambda: A(nn.Conv2d(1, 2, 3), (4, 4, 4)), ValueError,
         "in_hw must be (height, width)"),

    # ---- leakutils.attacks.exan (exclusively activated neurons)
    Case(exan.reconstruct, lambda: A(mlp(), batch_update(), rtol=5.0), ValueError, "rtol must be a number in (0, 1)"),
    Case(exan.reconstruct, lambda: A(mlp(), batch_update(), min_exans=0), ValueError, "min_exans must be a positive"),
    Case(exan.reconstruct, lambda: A(mlp(), batch_update(), batch_size=0), ValueError, "batch_size must be a positive"),
    Case(exan.reconstruct, lambda: A(mlp(), batch_update(), verify="y"), TypeError, "verify must be True or False"),
    Case(exan.reconstruct, lambda: A(mlp(), batch_update(), scale="zz"), ValueError, "scale must be one of"),
    Case(exan.reconstruct, lambda: A(mlp(), batch_update().map(lambda n, g: g * NAN)), ValueError, "contains NaN"),
    Case(exan.reconstruct, lambda: A("model", batch_update()), TypeError, "model must be a torch.nn.Module"),
    Case(exan.group_exans, lambda: A("cols"), ValueError, "columns must be a tensor of shape (K, N)"),
    Case(exan.group_exans, lambda: A(torch.randn(3, 5, generator=_rng()), rtol=-1), ValueError,
         "rtol must be a number in (0, 1)"),
    Case(exan.group_exans, lambda: A(torch.full((3, 5), NAN)), ValueError, "columns holds NaN"),
    Case(exan.group_exans, lambda: A(torch.randn(3, 5, generator=_rng()), rtol=NAN), ValueError,
         "rtol must be a finite number"),
    Case(exan.grouping.loss_vector_ratios, lambda: A("c"), TypeError, "column must be a tensor"),
    Case(exan.grouping.loss_vector_ratios, lambda: A(torch.zeros(3)), ValueError, "the column is zero"),
    Case(exan.count_exans, lambda: A(mlp(), x().float()), TypeError, "convert one"),
    Case(exan.count_exans, lambda: A(mlp(), x() * NAN), ValueError, "x contains NaN"),
    Case(exan.count_exans, lambda: A("model", x()), TypeError, "takes an nn.Module and a tensor batch"),
    Case(exan.expected_exans, lambda: A(10, 1.5, 2), ValueError, "p must be a number in [0, 1]"),
    Case(exan.expected_exans, lambda: A(0, 0.5, 2), ValueError, "must be positive integers"),

    # ---- leakutils.blackbox, critical_points, extraction (Chapter 6)
    Case(blackbox.QueryCounter, lambda: A(3), TypeError, "the black box must be a callable"),
    Case(blackbox.as_oracle, lambda: A("model"), TypeError, "as_oracle wraps a torch.nn.Module"),
    Case(blackbox.Guard, lambda: A("counter", 4, 10, 1.0, str), TypeError, "counter must be a QueryCounter"),
    Case(blackbox.Guard, lambda: A(blackbox.QueryCounter(linear_box), 0, 10, 1.0, str), ValueError,
         "input_dim must be an integer >= 1"),
    Case(blackbox.Guard, lambda: A(blackbox.QueryCounter(linear_box), 4, 10, 0.0, str), ValueError,
         "max_seconds must be a number in (0, inf]"),
    Case(blackbox.Guard, lambda: A(blackbox.QueryCounter(linear_box), 4, 10, 1.0, "state"), TypeError,
         "state must be a callable"),
    Case(critical_points.jacobian, lambda: A("f", np.zeros(4), 1e-3), TypeError, "f must be a callable"),
    Case(critical_points.jacobian, lambda: A(linear_box, np.zeros((2, 4)), 1e-3), ValueError,
         "x must have shape (D,)"),
    Case(critical_points.jacobian, lambda: A(linear_box, [0.0, 0.0], 1e-3), TypeError, "np.asarray"),
    Case(critical_points.jacobian, lambda: A(linear_box, np.zeros(4), 0.0), ValueError, "h must be a number in (0"),
    Case(critical_points.search_line, lambda: A("f", np.zeros(4), np.ones(4), 1.0, 2, 0.1, 1e-3, [], [], []),
         TypeError, "f must be a callable"),
    Case(critical_points.search_line, lambda: A(linear_box, np.zeros(4), np.ones(3), 1.0, 2, 0.1, 1e-3, [], [], []),
         ValueError, "d must have shape (4,)"),
    Case(critical_points.search_line,
         lambda: A(linear_box, np.full(4, NAN), np.ones(4), 1.0, 2, 0.1, 1e-3, [], [], []), ValueError,
         "x0 contains NaN"),
    Case(critical_points.search_line, lambda: A(linear_box, np.zeros(4), np.ones(4), 1.0, 0, 0.1, 1e-3, [], [], []),
         ValueError, "hidden must be an integer >= 1"),
    Case(critical_points.search_line, lambda: A(linear_box, np.zeros(4), np.ones(4), 1.0, 2, 0.1, 1e-3, (), [], []),
         TypeError, "rows must be a list"),
    Case(blackbox.check_output, lambda: A(np.zeros(3), 3, None), blackbox.ExtractionError, "must return a 2-D array"),
    Case(blackbox.check_output, lambda: A(np.full((1, 2), NAN), 1, None), blackbox.ExtractionError,
         "returned NaN in 1"),
    Case(extraction.extract, lambda: A(3, 4, 2), TypeError, "oracle must be a callable"),
    Case(extraction.extract, lambda: A(linear_box, 0, 2), ValueError, "input_dim must be an integer >= 1"),
    Case(extraction.extract, lambda: A(linear_box, 4, 0), ValueError, "hidden must be an integer >= 1"),
    Case(extraction.extract, lambda: A(linear_box, 4, 2, lines=0), ValueError, "lines must be an integer >= 1"),
    Case(extraction.extract, lambda: A(linear_box, 4, 2, seed=-1), ValueError,
         "seed must be an integer in 0..4294967295"),
    Case(extraction.extract, lambda: A(lambda z: z.sum(1), 4, 2), blackbox.ExtractionError, "must return a 2-D array"),
    Case(extraction.extract, lambda: A(linear_box, 3, 2), ValueError, "Check input_dim"),
    Case(extraction.extract, lambda: A(lambda z: np.full((len(z), 2), NAN), 4, 2), blackbox.ExtractionError,
         "returned NaN"),
    Case(extraction.align, lambda: A(np.zeros((2, 4)), np.zeros(2), np.zeros((2, 2)), "ex"), TypeError,
         "ex must be an Extracted"),
    Case(extraction.agreement, lambda: A("ex", linear_box, np.zeros((2, 4))), TypeError, "ex must be an Extracted"),

    # ---- leakutils.flatnets, metamodel (Chapter 6, the meta-model)
    Case(flatnets.Sizes, lambda: A(0, 3, 2), ValueError, "D must be a positive integer"),
    Case(flatnets.Sizes, lambda: A(2.5), TypeError, "D must be a positive integer, got float"),
    Case(flatnets.as_sizes, lambda: A("x"), TypeError, "sizes must be a Sizes or a tuple"),
    Case(flatnets.unflatten, lambda: A([1.0], SIZES), TypeError, "flat must be a torch.Tensor"),
    Case(flatnets.unflatten, lambda: A(nets()[:, :3], SIZES), ValueError, "must have 23 entries"),
    Case(flatnets.flatten, lambda: A(np.zeros(3), 1, 1, 1), TypeError, "must be torch tensors"),
    Case(flatnets.forward, lambda: A(nets(), torch.zeros(2, 5, dtype=nets().dtype), SIZES), ValueError,
         "the networks expect D = 4"),
    Case(flatnets.to_model, lambda: A(nets(), SIZES), ValueError, "to_model takes one network"),
    Case(flatnets.to_model, lambda: A(nets()[0] * NAN, SIZES), ValueError, "contains NaN or infinite values"),
    Case(flatnets.init_population, lambda: A(2, SIZES, [0]), ValueError, "need one seed per network"),
    Case(flatnets.init_population, lambda: A(0, SIZES, []), ValueError, "n_nets must be an integer >= 1"),
    Case(flatnets.init_population, lambda: A(2.0, SIZES, [0, 1]), TypeError, "n_nets must be an integer"),
    Case(flatnets.init_population, lambda: A(2, SIZES, [0, -1]), ValueError, "seeds[1] must be an integer in 0.."),
    Case(flatnets.forward, lambda: A(nets(), torch.full((2, 4), NAN, dtype=nets().dtype), SIZES), ValueError,
         "x contains NaN"),
    Case(flatnets.accuracy, lambda: A(nets(), torch.zeros(3, 4), torch.zeros(3), SIZES), TypeError,
         "labels must be integer class indices"),
    Case(flatnets.check_weights, lambda: A(nets() * NAN, "w", SIZES), ValueError, "w contains NaN"),
    Case(flatnets.check_xy, lambda: A(torch.zeros(3, 4), torch.zeros(3), 4, "images"), TypeError, "use labels.long()"),
    Case(metamodel.aae, lambda: A(torch.zeros(3), torch.zeros(4)), ValueError, "differ in shape"),
    Case(metamodel.aae, lambda: A(torch.full((3,), NAN), torch.zeros(3)), ValueError, "contains NaN"),
    Case(metamodel.aape, lambda: A(torch.zeros(3), torch.zeros(3), eps=-1), ValueError, "eps must be >= 0"),
    Case(metamodel.accuracy_difference,
         lambda: A(nets(), nets()[:, :3], torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), SIZES), ValueError,
         "must have 23 entries"),
    Case(metamodel.align_units, lambda: A(nets(), nets()[:, :3], SIZES), ValueError, "must have 23 entries"),
    Case(metamodel.canonical_order, lambda: A(nets(), SIZES, rounds=0), ValueError, "rounds must be an integer >= 1"),
    Case(metamodel.scores,
         lambda: A(nets() * NAN, nets(), torch.zeros(3, 4, dtype=nets().dtype), torch.zeros(3, dtype=torch.long),
                   SIZES), ValueError, "contains NaN"),
    Case(metamodel.similarity_loss, lambda: A(nets(), torch.zeros(3), torch.zeros(3, 4), SIZES), ValueError,
         "outputs must be finite logits"),
    Case(metamodel.MetaModel, lambda: A(SIZES, 0), ValueError, "n_queries must be an integer >= 1"),
    Case(metamodel.MetaModel, lambda: A("s", 3), TypeError, "sizes must be a Sizes or a tuple"),
    Case(metamodel.train_metamodel, lambda: A("pop"), TypeError, "pop must be a Population"),
    Case(metamodel.train_population,
         lambda: A(2, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), torch.rand(2, 4), sizes=SIZES, epochs=0),
         ValueError, "epochs must be an integer >= 1"),
    Case(metamodel.train_population,
         lambda: A(2, torch.rand(3, 4), torch.tensor([0, 1, 5]), torch.rand(2, 4), sizes=SIZES), ValueError,
         "labels must lie in [0, 2)"),

    # ---- leakutils.inversion, inversion_models, defences.output (Chapter 5)
    Case(inversion.Classifier, lambda: A(image_size=28), ValueError, "image_size must be a positive multiple of 8"),
    Case(inversion.Classifier, lambda: A(dropout=1.5), ValueError, "dropout must lie in [0, 1)"),
    Case(inversion.Classifier.forward, lambda: A(classifier(), torch.rand(2, 1, 28, 28)), ValueError,
         "this classifier takes images (B, 1, 8, 8)"),
    Case(inversion.InverseTCNN, lambda: A(0), ValueError, "in_features must be a positive integer"),
    Case(inversion.train_classifier, lambda: A(classifier(), imgs8(), torch.tensor([0, 1, 0, 1]).float()),
         TypeError, "use labels.long()"),
    Case(inversion.train_classifier, lambda: A(classifier(), imgs8(), torch.tensor([5, 6, 5, 6])), ValueError,
         "labels must lie in [0, 2)"),
    Case(inversion.train_classifier, lambda: A("m", imgs8(), torch.tensor([0, 1, 0, 1])), TypeError,
         "model must be a leakutils.inversion.Classifier"),
    Case(inversion.accuracy, lambda: A(classifier(), imgs8(), torch.zeros(4)), TypeError, "use labels.long()"),
    Case(inversion.outputs, lambda: A(classifier(), imgs8() * NAN), ValueError, "images must lie in [0, 1]"),
    Case(inversion.outputs, lambda: A(classifier(), imgs8(), batch_size=0), ValueError,
         "batch_size must be a positive integer"),
    Case(inversion.train_inverse, lambda: A("inv", torch.zeros(4, 3), imgs8()), TypeError,
         "inverse must be an InverseTCNN"),
    Case(inversion.invert, lambda: A(inversion.InverseTCNN(3), torch.zeros(4, 5)), ValueError,
         "this inverse model takes features of shape (B, 3)"),
    Case(inversion.invert, lambda: A(inversion.InverseTCNN(3), torch.zeros(4, 3), batch_size=0), ValueError,
         "batch_size must be an integer >= 1"),
    Case(inversion.class_averages, lambda: A(imgs8(), torch.zeros(4)), TypeError, "use labels.long()"),
    Case(inversion.class_averages, lambda: A(imgs8(), torch.zeros(4, dtype=torch.long), num_classes=0), ValueError,
         "num_classes must be a positive integer"),
    Case(inversion.gradient_reconstruction, lambda: A(classifier(), torch.randn(2, 2), imgs8()), ValueError,
         "init and o must have the same length"),
    Case(inversion.gradient_reconstruction, lambda: A(classifier(), torch.randn(2, 2), imgs8()[:2], steps=0),
         ValueError, "steps, lr and clip must be positive"),
    Case(inversion.gradient_reconstruction, lambda: A(classifier(), torch.randn(2, 2), imgs8()[:2], k=9),
         ValueError, "k must be an integer in 1..2"),
    Case(inversion.gradient_reconstruction, lambda: A(classifier(), torch.randn(2, 2), imgs8()[:2], batch_size=0),
         ValueError, "batch_size must be an integer >= 1"),
    Case(inversion.last_layer_activations, lambda: A(classifier(), torch.full((2, 2), NAN)), ValueError,
         "o contains NaN"),
    Case(inversion.last_layer_activations, lambda: A(classifier(), torch.randn(2, 2), k=0), ValueError,
         "k must be an integer in 1..2"),
    Case(inversion.disjoint_splits, lambda: A(10, {"a": 20}), ValueError, "more than the 10 items available"),
    Case(inversion.disjoint_splits, lambda: A(0, {"a": 2}), ValueError, "n must be a positive integer"),
    Case(inversion.disjoint_splits, lambda: A(10, {"a": 2}, seed=-1), ValueError,
         "seed must be an integer in 0..4294967295"),
    Case(inversion.features, lambda: A({}, "zzz"), ValueError, "combination must be one of"),
    Case(inversion.FeatureScaler, lambda: A("parts"), TypeError, "parts must be a dict"),
    Case(inversion.FeatureScaler, lambda: A({"O": torch.full((3, 2), NAN)}), ValueError, "must be a finite float"),
    Case(inversion.total_variation, lambda: A(np.zeros((1, 1, 4, 4))), TypeError, "x must be a torch.Tensor"),
    Case(inversion.total_variation, lambda: A(torch.zeros(1, 4, 4)), ValueError, "x must have shape (B, C, H, W)"),
    Case(inversion.identity_score, lambda: A(imgs8(), imgs8()[:2], torch.zeros(4, dtype=torch.long)), ValueError,
         "must have the same shape"),
    Case(inversion.identity_score, lambda: A(imgs8() * NAN, imgs8(), torch.zeros(4, dtype=torch.long)), ValueError,
         "reconstructed contains NaN"),
    Case(inversion.Lab, lambda: A("target", "shadow", imgs8()), TypeError, "target must be a torch.nn.Module"),
    Case(inversion.Lab, lambda: A(classifier(), classifier(), imgs8(), steps=0), ValueError,
         "steps must be a positive integer"),
    Case(inversion_models.check_images, lambda: A(imgs8() * 3), ValueError, "images must lie in [0, 1]"),
    Case(inversion_models.check_labels, lambda: A(torch.zeros(4), 4, 10), TypeError, "use labels.long()"),
    Case(inversion_models.check_training, lambda: A(3, 3, 1, 1, -1.0, "x"), ValueError, "lr must be a finite number"),
    Case(output_defences.round_outputs, lambda: A(vectors(), -1), ValueError, "decimals must be a non-negative"),
    Case(output_defences.round_outputs, lambda: A(vectors() * NAN, 1), ValueError, "o contains NaN"),
    Case(output_defences.top_k, lambda: A(vectors(), 0), ValueError, "k must be an integer in 1..5"),
    Case(output_defences.kept_entries, lambda: A(vectors(), 9), ValueError, "k must be an integer in 1..5"),
    Case(output_defences.kept_mask, lambda: A(vectors(), 2, torch.ones(3, 5)), ValueError, "kept must be a bool"),
    Case(output_defences.check_vectors, lambda: A(torch.ones(3, 5, dtype=torch.int64)), TypeError,
         "o must be a float tensor"),
    Case(output_defences.check_vectors, lambda: A(torch.ones(2, 3, 5)), ValueError, "got shape (2, 3, 5)"),
    Case(output_defences.top_k, lambda: A(vectors(), 2.0), TypeError, "k must be an integer, got float"),
    Case(output_defences.kept_mask, lambda: A(vectors(), 9, None), ValueError, "k must be an integer in 1..5"),

    # ---- leakutils.defences (Chapter 7) and capture of an Opacus-wrapped model
    Case(capture.unwrap_opacus, lambda: A("model"), TypeError, "model must be a torch.nn.Module"),
    Case(defences.clip, lambda: A("u", 1.0), TypeError, "update must be a leakutils Update"),
    Case(defences.clip, lambda: A(update(), 0.0), ValueError, "max_norm must be a number in (0, inf]"),
    Case(defences.clip, lambda: A(update(), "1"), TypeError, "max_norm must be a real number"),
    Case(defences.global_norm, lambda: A({}), TypeError, "update must be a leakutils Update"),
    Case(defences.gaussian_noise, lambda: A(update(), -1.0), ValueError, "std must be a number in [0, inf]"),
    Case(defences.gaussian_noise, lambda: A(update(), 0.1, seed=-1), ValueError,
         "seed must be an integer in 0..4294967295"),
    Case(defences.gaussian_noise, lambda: A(update(), 0.1, seed=1.5), TypeError, "seed must be an integer"),
    Case(defences.gaussian_noise, lambda: A(update(), 0.1, relative=1), TypeError, "relative must be True or False"),
    Case(defences.clip_and_noise, lambda: A(update(), 1.0, -1.0), ValueError,
         "noise_multiplier must be a number in [0, inf]"),
    Case(defences.prune, lambda: A(update(), 1.0), ValueError, "fraction must be a number in [0, 1)"),
    Case(defences.prune, lambda: A(update(), NAN), ValueError, "fraction must be a finite number"),
    Case(defences.quantise, lambda: A(update(), "int4"), ValueError, "scheme must be one of"),
    Case(defences.quantise, lambda: A(update(), 8), TypeError, "scheme must be a string"),
    Case(defences.secure_aggregation, lambda: A([]), ValueError, "updates is empty"),
    Case(defences.secure_aggregation, lambda: A(update()), TypeError, "updates must be a list of Update"),
    Case(defences.secure_aggregation, lambda: A([update(), cnn_update()]), ValueError, "other parameter names"),
    Case(defences.secure_aggregation, lambda: A([update(), update().map(lambda n, g: g.float())]), ValueError,
         "every client must send an update of the same model"),
    Case(defences.secure_aggregation,
         lambda: A([update(), core.Update(update().gradients, 1, 0.0, (16,))]), ValueError, "has input_shape (16,)"),
    Case(defences.secure_aggregation, lambda: A([update(), batch_update()], weights=[1.0]), ValueError,
         "weights must have one entry per update"),
    Case(defences.secure_aggregation, lambda: A([update(), batch_update()], weights=[-1.0, 1.0]), ValueError,
         "weights must be finite and non-negative"),
    Case(defences.client_updates, lambda: A(mlp(), x(), y(), 3), ValueError, "clients must be an integer in 1..2"),
    Case(defences.client_updates, lambda: A(mlp(), torch.rand(3, 1, 4, 4, dtype=torch.float64),
                                            torch.tensor([0, 1, 2]), 2), ValueError, "clients must divide"),
    Case(defences.client_updates, lambda: A(mlp(), x(), [0, 2], 1), TypeError, "y must be a torch tensor"),
    Case(defences.dp_sgd_update, lambda: A(mlp(), x(), y(), noise_multiplier=-1.0), ValueError,
         "noise_multiplier must be a number in [0, inf]"),
    Case(defences.dp_sgd_update, lambda: A(mlp(), x(), y(), noise_multiplier=1.0, max_grad_norm=0.0), ValueError,
         "max_grad_norm must be a number in (0, inf]"),
    Case(defences.dp_sgd_update, lambda: A(mlp(), x(), y(), noise_multiplier=1.0, dataset_size=1), ValueError,
         "dataset_size (1) must be at least the batch size (2)"),
    Case(defences.dp_sgd_update, lambda: A(mlp(), x(), y(), noise_multiplier=1.0, accountant="gdp"), ValueError,
         "accountant must be one of"),
    Case(defences.dp_sgd_update, lambda: A(mlp(), x().float(), y(), noise_multiplier=1.0), TypeError,
         "convert one of them"),
    Case(defences.epsilon, lambda: A(1.0, 0.0, 1, 1e-5), ValueError, "sample_rate must be a number in (0, 1]"),
    Case(defences.epsilon, lambda: A(1.0, 0.1, 0, 1e-5), ValueError, "steps must be an integer >= 1"),
    Case(defences.epsilon, lambda: A(1.0, 0.1, 1, 1.0), ValueError, "delta must be a number in (0, 1)"),
    Case(defences.epsilon, lambda: A(1.0, 0.1, 1, 1e-5, "moments"), ValueError, "accountant must be one of"),
    Case(defences.fedavg_update, lambda: A(mlp(), x(), y(), lr=0.0), ValueError, "lr must be a number in (0, inf]"),
    Case(defences.fedavg_update, lambda: A(mlp(), x(), y(), lr=0.1, local_steps=2, epochs=2), ValueError,
         "give local_steps or epochs, not both"),
    Case(defences.fedavg_update, lambda: A(mlp(), x(), y(), lr=0.1, local_batch=3), ValueError,
         "local_batch must be an integer in 1..2"),
    Case(defences.fedavg_update, lambda: A(mlp(), x(), y(), lr=0.1, local_steps=1.0), TypeError,
         "local_steps must be an integer"),
    Case(defences.update_from_weights, lambda: A({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, lr=1.0,
                                                 batch_size=1, input_shape=2), ValueError,
         "sent and returned must hold the same parameters"),
    Case(defences.update_from_weights, lambda: A([torch.zeros(2)], [torch.zeros(2)], lr=1.0, batch_size=1,
                                                 input_shape=2), TypeError, "pass names="),
    Case(defences.update_from_weights, lambda: A({"a": torch.zeros(2)}, {"a": torch.zeros(3)}, lr=1.0,
                                                 batch_size=1, input_shape=2), ValueError,
         "the weights must come from the same model"),
    Case(defences.update_from_weights, lambda: A({"a": torch.zeros(2)}, {"a": torch.full((2,), NAN)}, lr=1.0,
                                                 batch_size=1, input_shape=2), ValueError, "contains NaN"),
    Case(defences.update_from_weights, lambda: A({"a": np.zeros(2, dtype=int)}, {"a": np.zeros(2, dtype=int)},
                                                 lr=1.0, batch_size=1, input_shape=2), TypeError,
         "must be a floating tensor or array"),
    Case(defences.update_from_weights, lambda: A({"a": torch.zeros(2)}, {"a": torch.zeros(2)}, lr=-1.0,
                                                 batch_size=1, input_shape=2), ValueError, "lr must be a number"),
    Case(defences.soteria, lambda: A(mlp(), x(), y(), prune_fraction=1.0), ValueError,
         "prune_fraction must be a number in [0, 1)"),
    Case(defences.soteria, lambda: A(mlp(), x(), y(), layer="act1"), TypeError, "not a Linear"),
    Case(defences.soteria, lambda: A(mlp(), x(), y(), layer="fc9"), ValueError, "the model has no layer named"),
    Case(defences.soteria, lambda: A(mlp(), x(), y(), return_mask="yes"), TypeError,
         "return_mask must be True or False"),
    Case(defences.feature_scores, lambda: A(mlp(), x().float()), TypeError, "convert one of them"),
    Case(defences.feature_scores, lambda: A(mlp(), x(), layer=3), TypeError, "layer must be a module name"),

    # ---- leakutils.defences.utility / matrix
    Case(d_utility.mnist_split, lambda: A(seed=-1), ValueError, "seed must be an integer in 0..4294967295"),
    Case(d_utility.train, lambda: A(mlp(), "mnist"), TypeError, "data must be an ImageData"),
    Case(d_utility.train, lambda: A(mlp(), (x(), y()), "noise"), TypeError, "defence must be a callable"),
    Case(d_utility.train, lambda: A(mlp(), (x(), y()), batch=3), ValueError, "batch must be an integer in 1..2"),
    Case(d_utility.train, lambda: A(mlp(), (x(), y().float())), TypeError, "labels must be int64"),
    Case(d_utility.train, lambda: A(mlp(), (x(), torch.tensor([0, 5])), batch=2), ValueError,
         "labels must lie in [0, 3)"),
    Case(d_utility.train, lambda: A(mlp(), (x(), y()), lambda m, a, b: "update", batch=2), TypeError,
         "defence must return an Update"),
    Case(d_utility.train, lambda: A(mlp(), (x(), y()), lambda m, a, b: core.Update({"w": torch.zeros(1)}, 2, 0.0,
                                                                                  (1, 4, 4)), batch=2),
         ValueError, "the defence's update has no gradient"),
    Case(d_utility.train_dp_sgd, lambda: A(mlp(), (x(), y()), noise_multiplier=-1.0), ValueError,
         "noise_multiplier must be a number in [0, inf]"),
    Case(d_utility.train_dp_sgd, lambda: A(mlp(), (x(), y()), noise_multiplier=1.0, batch=2, delta=0.0), ValueError,
         "delta must be a number in (0, 1)"),
    Case(d_utility.accuracy, lambda: A(mlp(), (torch.rand(2, 3, dtype=torch.float64), y())), ValueError,
         "the model does not accept images"),
    Case(d_utility.accuracy, lambda: A(mlp(), [x()]), TypeError, "data must be an ImageData"),
    Case(d_registry.defence, lambda: A(3), TypeError, "a defence is named by a string"),
    Case(d_registry.train_under, lambda: A("gzip", 1, mlp(), (x(), y())), ValueError, "unknown defence 'gzip'"),
    Case(d_registry.train_under, lambda: A("prune", 1.5, mlp(), (x(), y()), epochs=1, batch=2), ValueError,
         "fraction must be a number in [0, 1)"),
    Case(d_matrix.default_attacks, lambda: A("mlp"), TypeError, "model must be a torch.nn.Module"),
    Case(d_matrix.best_attack, lambda: A(mlp(), update(), x()), ValueError,
         "images holds 2 samples but the update averages 1"),
    Case(d_matrix.best_attack, lambda: A(mlp(), update(), x()[:1], attacks=["gia"]), ValueError,
         "unknown attack 'gia'"),
    Case(d_matrix.best_attack, lambda: A(mlp(), update(), x()[:1], attacks="exan"), TypeError,
         "attacks must be a non-empty list"),
    Case(d_matrix.best_attack, lambda: A(mlp(), update(), x()[:1], options={"exan": 3}), TypeError,
         "options must be a dict of attack name"),
    Case(d_matrix.best_attack, lambda: A(mlp(), "update", x()[:1]), TypeError, "update must be a leakutils Update"),
    Case(d_matrix.run_matrix, lambda: A(mlp(), x(), y(), strengths={"secure_aggregation": (10,)},
                                        defences=["secure_aggregation"]), ValueError,
         "secure_aggregation at 10 puts 10 images in one update, but only 2 images were given"),
    Case(d_matrix.run_matrix, lambda: A(mlp(), x(), y(), limits={"inverting": 0}), ValueError,
         "limits['inverting'] must be an integer >= 1"),
    Case(d_matrix.run_matrix, lambda: A(mlp(), x(), y(), clients=0), ValueError,
         "clients must be an integer >= 1"),
    Case(d_matrix.run_matrix, lambda: A(mlp(), x(), y(), defences="none"), TypeError,
         "defences must be a list of names"),
    Case(d_matrix.run_matrix, lambda: A(mlp(), x(), y(), strengths=[1]), TypeError, "strengths must be a dict"),
    Case(d_matrix.run_matrix, lambda: A(mlp(), x(), None), TypeError, "labels must be an int64 tensor"),
    Case(d_matrix.best_rows, lambda: A("rows"), TypeError, "rows must be the list of dicts"),
    Case(d_figures.heatmap, lambda: A([{"defence": "none"}]), TypeError, "rows must be the non-empty list"),
    Case(d_figures.privacy_utility, lambda: A([{"defence": "none", "strength": None, "attack": "exan",
                                                "psnr_median": 20.0}], {("none", None): 0.5}), TypeError,
         "utility must be a dict (defence, strength) ->"),
    Case(d_matrix.breaking_points, lambda: A([], threshold="20"), TypeError, "threshold must be a number"),

    # ---- leakutils.widgets (demo functions and panels; the panels validate before building widgets)
    Case(panel.check_int, lambda: A("width", 1.5, 1), TypeError, "width must be an integer"),
    Case(panel.check_choice, lambda: A("dataset", "cifar10", panel.DEMO_DATASETS), ValueError,
         "dataset must be one of"),
    Case(panel.check_bool, lambda: A("peel", "yes"), TypeError, "peel must be True or False"),
    Case(panel.check_batch, lambda: A("start", 3, 2, digits(), "digits"), ValueError, "runs past the end"),
    Case(panel.check_result, lambda: A({}, w_bias_ratio.BiasRatioDemo, "bias_ratio_demo"), TypeError,
         "expected the BiasRatioDemo"),
    Case(panel.dataset, lambda: A("cifar10"), ValueError, "dataset must be one of"),
    Case(panel.build_panel, lambda: A("demo", print, {}), TypeError, "demo and show must be callables"),
    Case(panel.build_panel, lambda: A(print, print, {}), ValueError, "controls must be a non-empty dict"),
    Case(w_static.static_panel, lambda: A("demo", print, "x", (1, 2)), TypeError, "must be callables"),
    Case(w_static.static_panel, lambda: A(print, print, 3, (1, 2)), TypeError, "control must be the name"),
    Case(w_static.static_panel, lambda: A(print, print, "x", (1,)), ValueError, "values must hold 2..40 values"),
    Case(w_static.static_panel, lambda: A(print, print, "x", (1, 1)), ValueError, "values must not repeat"),
    Case(plot.psnr_text, lambda: A("x"), TypeError, "psnr must be"),
    Case(plot.psnr_text, lambda: A(NAN), ValueError, "psnr"),
    Case(w_static.static_panel, lambda: A(print, print, "x", (1, 2), dpi=5), ValueError, "dpi"),
    Case(w_static.check_values, lambda: A("sizes", "12", int), TypeError, "sizes must be a sequence"),
    Case(w_static.check_values, lambda: A("sizes", (1, 2, 1), int), ValueError, "sizes must not repeat"),
    Case(plot.detach, lambda: A("fig"), TypeError, "must be a matplotlib Figure"),
    Case(w_bias_ratio.bias_ratio_demo, lambda: A("cifar10", 0, 1), ValueError, "dataset must be one of"),
    Case(w_bias_ratio.show_bias_ratio_demo, lambda: A({}), TypeError, "expected the BiasRatioDemo"),
    Case(w_bias_ratio.bias_ratio_panel, lambda: A(width=0), ValueError, "width must be an integer in 1..8192"),
    Case(w_activations.propagation_demo, lambda: A("gelu"), ValueError, "activation must be one of"),
    Case(w_activations.show_propagation_demo, lambda: A(None), TypeError, "expected the PropagationDemo"),
    Case(w_conv.conv_demo, lambda: A(filters=0), ValueError, "filters must be an integer"),
    Case(w_conv.show_conv_demo, lambda: A("demo"), TypeError, "expected the ConvDemo"),
    Case(w_bias_ratio.bias_ratio_twin, lambda: A("digits", 0, (1, 65)), ValueError,
         "batch_size must be an integer in 1..64"),
    Case(w_activations.propagation_twin, lambda: A(activations=("relu", "gelu")), ValueError,
         "activation must be one of"),
    Case(w_conv.conv_twin, lambda: A((4,)), ValueError, "filter_counts must hold 2..40 values"),
    Case(w_exan.exan_demo, lambda: A(batch_size=0), ValueError, "batch_size must be an integer in 1..64"),
    Case(w_exan.show_exan_demo, lambda: A([]), TypeError, "expected the ExanDemo"),
    Case(w_extraction.extraction_demo, lambda: A(width=0), ValueError, "width must be an integer"),
    Case(w_extraction.train_target, lambda: A(1, 0), ValueError, "width must be an integer"),
    Case(w_extraction.train_target, lambda: A(16, -1), ValueError, "seed must be an integer"),
    Case(w_extraction.show_extraction_demo, lambda: A(1), TypeError, "expected the ExtractionDemo"),
    Case(w_inversion.inversion_demo, lambda: A("lab", x()), TypeError, "Lab"),
    Case(w_inversion.show_inversion_demo, lambda: A(None), TypeError, "dict"),
    Case(w_inversion.inversion_panel, lambda: A("lab", x()), TypeError, "Lab"),
    Case(w_exan.exan_twin, lambda: A((1, 65)), ValueError, "batch_size must be an integer in 1..64"),
    Case(w_inversion.inversion_twin, lambda: A("lab", x()), TypeError, "Lab"),
    Case(w_extraction.extraction_twin, lambda: A((0, 4)), ValueError, "lines must be an integer in 1..12"),
    Case(inversion_loss.gaussian_ssim, lambda: A(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)), ValueError,
         "H, W >= 11"),
    Case(w_defences.defence_demo, lambda: A("noise 1"), ValueError, "setting must be one of"),
    Case(w_defences.defence_demo, lambda: A("secure aggregation K=32", "digits", 1780), ValueError,
         "runs past the end"),
    Case(w_defences.defence_demo, lambda: A("none", width=8), ValueError, "width must be an integer in 16..4096"),
    Case(w_defences.show_defence_demo, lambda: A(None), TypeError, "expected the DefenceDemo"),
    Case(w_defences.defence_panel, lambda: A(width=5000), ValueError, "width must be an integer in 16..4096"),
    Case(w_defences.defence_twin, lambda: A(("none", "none")), ValueError, "must not repeat a value"),
    Case(w_defences.defence_twin, lambda: A(("none", "prune 12%")), ValueError, "setting must be one of"),
    Case(fedavg.certify, lambda: A(mlp(), update(), "image", lr=0.1, local_steps=1), TypeError,
         "reconstruction must be a leakutils Reconstruction"),
    Case(fedavg.certify, lambda: A(mlp(), update(), None, lr=0.1, local_steps=0), ValueError,
         "local_steps must be an integer"),
    Case(fedavg.replay_tolerance, lambda: A(mlp(), update(), lr=0.0, local_steps=1), ValueError,
         "lr must be a number in (0, inf]"),
    Case(fedavg.replay_tolerance, lambda: A(mlp(), {"w": 1}, lr=0.1, local_steps=1), TypeError,
         "update must be a leakutils Update"),
    Case(w_fedavg.fedavg_demo, lambda: A(0), ValueError, "local_steps must be an integer in 1..50"),
    Case(w_fedavg.fedavg_demo, lambda: A(1, 1, "float16"), ValueError, "dtype must be one of"),
    Case(w_fedavg.fedavg_demo, lambda: A(1, lr=0.0), ValueError, "lr must be a number in (0, 10]"),
    Case(w_fedavg.show_fedavg_demo, lambda: A(None), TypeError, "expected the FedAvgDemo"),
    Case(w_fedavg.fedavg_panel, lambda: A(width=0), ValueError, "width must be an integer in 1..8192"),
    Case(w_fedavg.fedavg_twin, lambda: A((1, 1)), ValueError, "must not repeat a value"),
    Case(fedavg.reconstruct, lambda: A(mlp(), update(), lr=0.1, local_steps=2, iterations=0), ValueError,
         "iterations must be an integer"),
    Case(fedavg.reconstruct, lambda: A(mlp(), update(), lr=0.1, local_steps=1, init="zeros"), ValueError,
         "init must be None, 'random'"),
    Case(imprint.ImprintBlock, lambda: A((1, 2, 2), torch.tensor([0.5, 0.2])), ValueError, "strictly increasing"),
    Case(imprint.ImprintBlock, lambda: A((1, 2, 2), torch.tensor([0.1, 0.2]), torch.ones(3)), ValueError,
         "measurement must have 4 values"),
    Case(imprint.thresholds, lambda: A(torch.rand(10, 1, 2, 2), 1), ValueError, "bins must be an integer"),
    Case(imprint.thresholds, lambda: A(torch.zeros(10, 1, 2, 2), 4), ValueError, "too few distinct values"),
    Case(imprint.malicious_model, lambda: A("net", torch.rand(10, 1, 4, 4), 4), TypeError, "model must be"),
    Case(imprint.expected_alone, lambda: A(0, 4), ValueError, "batch_size must be an integer"),
    Case(imprint.reconstruct, lambda: A(mlp(), update()), ValueError, "holds no ImprintBlock"),
    Case(imprint.reconstruct, lambda: A(mlp(), "update"), TypeError, "update must be a leakutils Update"),
    Case(imprint.thresholds, lambda: A(torch.rand(10, 1, 2, 2), 0, sparse=True), ValueError,
         "bins must be an integer in 1..100000"),
    Case(imprint.ImprintBlock, lambda: A((1, 2, 2), torch.tensor([0.3]), sparse=True), ValueError,
         "k + 1 >= 2 strictly increasing bin edges"),
    Case(fishing.fish, lambda: A("net", 0), TypeError, "model must be a torch.nn.Module"),
    Case(fishing.fish, lambda: A(mlp(), 3), ValueError, "target_class must be an integer in 0..2"),
    Case(fishing.fish, lambda: A(mlp(), 0, gap=-5), ValueError, "gap must be a number in (0, inf]"),
    Case(fishing.reconstruct, lambda: A(mlp(), batch_update(), target_class=0), ValueError,
         "is not fished for class 0"),
    Case(fishing.reconstruct, lambda: A(fishing.fish(mlp(), 0), "update", target_class=0), TypeError,
         "update must be a leakutils Update"),
    Case(fishing.expected_isolated, lambda: A(0, 10), ValueError, "batch_size must be an integer >= 1"),
    Case(fishing.expected_isolated, lambda: A(16, 10, 1.5), ValueError, "class_prob must be a number in [0, 1]"),
    Case(w_malicious.malicious_demo, lambda: A(1), ValueError, "bins must be an integer in 2..4096"),
    Case(w_malicious.malicious_demo, lambda: A(16, 8, "yes"), TypeError, "sparse must be"),
    Case(w_malicious.malicious_demo, lambda: A(16, 8, False, "float16"), ValueError, "dtype must be one of"),
    Case(w_malicious.show_malicious_demo, lambda: A(None), TypeError, "expected the MaliciousDemo"),
    Case(w_malicious.malicious_panel, lambda: A(width=0), ValueError, "width must be an integer in 1..8192"),
    Case(w_malicious.malicious_twin, lambda: A((4, 4)), ValueError, "must not repeat a value"),
    Case(detect.inspect_model, lambda: A(mlp().state_dict(), x()), TypeError, "model must be a torch.nn.Module"),
    Case(detect.inspect_model, lambda: A(mlp(), x().numpy()), TypeError, "client_images must be a torch tensor"),
    Case(detect.inspect_model, lambda: A(mlp(), x().long()), TypeError, "client_images must have a floating dtype"),
    Case(detect.inspect_model, lambda: A(mlp(), x() * NAN), ValueError, "client_images contains NaN"),
    Case(detect.inspect_model, lambda: A(mlp(), x()[:, :, :2]), ValueError, "was built for inputs"),
    Case(detect.inspect_model, lambda: A(nn.Sequential(nn.Flatten(), nn.Linear(5, 3)).double(), x()), ValueError,
         "the model cannot take client_images"),
    Case(detect.inspect_model, lambda: A(nn.Flatten(), x()), ValueError, "no nn.Linear or nn.Conv2d layer"),
    Case(detect.inspect_model, lambda: A(mlp(), x(), previous=[1.0]), TypeError,
         "previous must be the last round's global model"),
    Case(detect.separation, lambda: A(mlp(), [mlp()], x()), TypeError, "honest_models must be a list of nn.Module"),
    Case(detect.separation, lambda: A([mlp()], [], x()), ValueError, "malicious_models is empty"),
    Case(detect.separation, lambda: A([mlp()], [None], x()), TypeError,
         "malicious_models[0] must be a torch.nn.Module"),
    Case(detect.separation, lambda: A([mlp()], [mlp()], x()[:0]), ValueError, "client_images is empty"),
    Case(fl.default_attack, lambda: A(mlp(), None), TypeError, "update must be"),
    Case(fl.CuriousStrategy, lambda: A("mlp"), TypeError, "model must be"),
    Case(fl.CuriousStrategy, lambda: A(mlp(), strategy="FedAvg"), TypeError, "strategy must be a Flower Strategy"),
    Case(fl.CuriousStrategy, lambda: A(mlp(), lr=0.0), ValueError, "lr must be a number in (0, inf]"),
    Case(fl.CuriousStrategy, lambda: A(nn.Linear(2, 2)), ValueError, "pass input_shape="),
]

#: Public callables with no input to validate, by qualified name (any public path or the
#: defining module's), with the reason.
EXEMPT: dict[str, str] = {
    "leakutils.book.Footprint": "a result record, built by footprint()",
    "leakutils.threads.available_cpus": "takes no arguments",
    "leakutils.widgets.panel.preload": "takes no arguments",
    "leakutils.exercises.labels": "takes no arguments",
    "leakutils.exercises.Exercise": "a record of the exercise registry, built only by its decorator",
    "leakutils.exercises.WrongAnswer": "an exception class",
    "leakutils.exercises.NotAnswered": "an exception class",
    "leakutils.data.available": "takes no arguments",
    "leakutils.data.cache_dir": "takes no arguments",
    "leakutils.defences.figures.strength_label": "prints any value (None, a number or a format name) as text",
    "leakutils.data.DatasetUnavailableError": "an exception class",
    "leakutils.activations.ActivationRule": "a frozen record of four strings/flags, built only by the module",
    "leakutils.attacks.labels.LabelRecovery": "a result record built only by recover_labels",
    "leakutils.attacks.residual.GradientResidual": "a result record built only by gradient_residual",
    "leakutils.attacks.residual.ParameterResidual": "a result record built only by gradient_residual",
    "leakutils.metrics.Scores": "a result record built only by metrics.compare",
    "leakutils.widgets.panel.Slider": "a plain control description, validated by ipywidgets when built",
    "leakutils.widgets.panel.Choice": "a plain control description, validated by ipywidgets when built",
    "leakutils.widgets.panel.Toggle": "a plain control description, validated by ipywidgets when built",
    "leakutils.widgets.panel.require_ipywidgets": "takes no arguments",
    "leakutils.widgets.static.StaticPanel": "a result record built only by static_panel",
    "leakutils.widgets.panel.relu_mlp": "a cached internal factory of the demos, called with checked values",
    "leakutils.widgets.activations.propagation_panel": "takes no arguments (an ipywidgets panel)",
    "leakutils.widgets.conv.conv_panel": "takes no arguments (an ipywidgets panel)",
    "leakutils.widgets.exan.exan_panel": "takes no arguments (an ipywidgets panel)",
    "leakutils.widgets.extraction.extraction_panel": "takes no arguments (an ipywidgets panel)",
    "leakutils.widgets.bias_ratio.BiasRatioDemo": "a result record built only by bias_ratio_demo",
    "leakutils.widgets.defences.DefenceDemo": "a result record built only by defence_demo",
    "leakutils.widgets.fedavg.FedAvgDemo": "a result record built only by fedavg_demo",
    "leakutils.widgets.malicious.MaliciousDemo": "a result record built only by malicious_demo",
    "leakutils.defences.detect.Inspection": "a result record built only by inspect_model",
    "leakutils.defences.Inspection": "a result record built only by inspect_model",
    "leakutils.widgets.activations.PropagationDemo": "a result record built only by propagation_demo",
    "leakutils.widgets.conv.ConvDemo": "a result record built only by conv_demo",
    "leakutils.widgets.exan.ExanDemo": "a result record built only by exan_demo",
    "leakutils.widgets.extraction.ExtractionDemo": "a result record built only by extraction_demo",
    "leakutils.blackbox.ExtractionError": "an exception class",
    "leakutils.blackbox.NotPiecewiseLinearError": "an exception class",
    "leakutils.blackbox.BudgetExceededError": "an exception class",
    "leakutils.extraction.Extracted": "a result record built only by extraction.extract",
    "leakutils.metamodel.Population": "a result record built only by metamodel.train_population",
    "leakutils.attacks.conv.ConvLayer": "a parsed-layer record built only by conv.parse_cnn",
    "leakutils.attacks.exan.Sample": "a result record built only by exan.reconstruct",
    "leakutils.attacks.exan.ExanDiagnostics": "a result record built only by exan.reconstruct",
    "leakutils.attacks.exan.NoiseEstimate": "a result record built only by exan.reconstruct",
    "leakutils.defences.dp.DPReport": "a result record built only by dp_sgd_update",
    "leakutils.defences.registry.Defence": "a record of the defence registry, built only in the module",
    "leakutils.defences.registry.Applied": "a result record built only by the registry's defences",
}

#: Public callables that do not yet refuse bad input clearly, by qualified name, with the
#: bad input and what happens. Each is a gap reported to the module's owner; when it is
#: closed, its case moves to ``CASES`` and its entry leaves this dict.
UNVALIDATED: dict[str, str] = {}


def test_the_checks_return_what_they_accepted():
    assert validate.check_int("n", np.int64(3), 1) == 3 and type(validate.check_int("n", np.int64(3))) is int
    assert validate.check_number("lr", torch.tensor(0.5), 0.0, lo_open=True) == 0.5
    assert validate.check_number("t", float("inf"), 0.0, finite=False) == float("inf")
    assert validate.check_fraction("p", 1) == 1.0 and validate.check_seed("seed", 2**32 - 1) == 2**32 - 1
    assert validate.check_shape("input_shape", 4) == (4,) and validate.check_shape("s", torch.Size([1, 2])) == (1, 2)
    assert validate.check_labels("y", y(), 2, 3) is not None
    assert validate.check_tensor("x", torch.zeros(0), nonempty=False).numel() == 0
    assert validate.check_dtype("dtype", None, optional=True) is None


def _case_id(case: Case) -> str:
    target = case.target
    name = getattr(target, "__qualname__", type(target).__qualname__)
    return f"{name}:{case.fragment[:40]}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_gets_a_clear_error(case: Case):
    args, kwargs = case.build()
    with pytest.raises(case.exc, match=re.escape(case.fragment)):
        case.target(*args, **kwargs)


# --------------------------------------------------------------------------- completeness


def _public_callables() -> dict[int, tuple[Any, set[str]]]:
    """id -> (object, every name it is public under), over every module's ``__all__``."""
    found: dict[int, tuple[Any, set[str]]] = {}
    modules = [leakutils] + [importlib.import_module(m.name)
                             for m in pkgutil.walk_packages(leakutils.__path__, "leakutils.")]
    for module in modules:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue  # submodules and constants: nothing to call
            names = found.setdefault(id(obj), (obj, set()))[1]
            names.add(f"{module.__name__}.{name}")
            names.add(f"{obj.__module__}.{obj.__qualname__}")
    return found


def _covered_ids() -> set[int]:
    """The objects the table calls: functions, classes, and the class of a bound method or instance."""
    ids = set()
    for case in CASES:
        target = case.target
        ids.add(id(target))
        owner = getattr(target, "__self__", None)
        if owner is not None:
            ids.add(id(type(owner)))
        elif not inspect.isfunction(target) and not inspect.isclass(target) and isinstance(target, nn.Module):
            ids.add(id(type(target)))
        qualname = getattr(target, "__qualname__", "")
        if inspect.isfunction(target) and "." in qualname:  # an unbound method: its class
            cls = getattr(inspect.getmodule(target), qualname.split(".")[0], None)
            if cls is not None:
                ids.add(id(cls))
    return ids


def test_every_public_callable_is_covered():
    public = _public_callables()
    covered = _covered_ids()
    allowed = EXEMPT.keys() | UNVALIDATED.keys()
    missing = sorted(min(names) for key, (obj, names) in public.items()
                     if key not in covered and not names & allowed)
    assert not missing, (f"public callables without a bad-input case in tests/test_bad_input.py "
                         f"(add one to CASES, or a reason to EXEMPT): {missing}")


def test_exemptions_name_public_callables():
    names = set().union(*(n for _, n in _public_callables().values()))
    stale = sorted((set(EXEMPT) | set(UNVALIDATED)) - names)
    assert not stale, f"EXEMPT/UNVALIDATED name callables that are not public (renamed or removed?): {stale}"
    assert not set(EXEMPT) & set(UNVALIDATED)
    both = sorted(n for obj_id, (obj, n) in _public_callables().items()
                  if obj_id in _covered_ids() and n & (EXEMPT.keys() | UNVALIDATED.keys()))
    assert not both, f"callables both tested and exempt (drop the exemption): {both}"
