"""The networks the chapters attack, and the weight initialisations the papers use.

Layers carry readable names (``fc1``, ``act1``, ``conv2``, ``out`` ...), so a gradient in an
:class:`leakutils.core.Update` is found as ``update["fc1.weight"]``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .validate import check_bool, check_dtype, check_int, check_shape
from .initialisation import count_parameters, init_weights

__all__ = ["ACTIVATIONS", "ArcTan", "make_activation", "MLP", "LeNet", "ConvNet", "lenet_o", "cnn6", "cnn6_o",
           "rconv_net", "lenet_4_relu", "lenet_all_relu", "vgg_small", "init_weights", "count_parameters"]


class ArcTan(nn.Module):
    """Elementwise ``arctan``: output in ``(-pi/2, pi/2)``, derivative ``1 / (1 + O^2)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``arctan(x)`` elementwise; ``x`` a floating tensor of any shape.

        Raises
        ------
        TypeError
            ``x`` not a floating tensor.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"ArcTan takes a floating torch tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        return torch.atan(x)


#: Activation names accepted by :func:`make_activation` and the models' ``activation`` argument.
ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "arctan": ArcTan,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}


def make_activation(name: str, **kwargs) -> nn.Module:
    """Build an activation module by name.

    Parameters
    ----------
    name : str
        One of :data:`ACTIVATIONS`.
    **kwargs
        Passed to the module, e.g. ``negative_slope`` for ``"leaky_relu"``, ``alpha`` for
        ``"elu"``, ``init`` for ``"prelu"``. The course's ``"leaky_relu"`` has slope 0.2 unless
        told otherwise, as in R-GAP and R-CONV (PyTorch's own default is 0.01).

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    TypeError
        ``name`` not a string; keyword arguments the activation does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name (str), one of {sorted(ACTIVATIONS)}, got {type(name).__name__}")
    if name.lower() not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    if name.lower() == "leaky_relu":
        kwargs.setdefault("negative_slope", 0.2)
    try:
        return ACTIVATIONS[name.lower()](**kwargs)
    except TypeError as err:
        raise TypeError(f"activation {name!r} does not accept {sorted(kwargs)}: {err}") from None


def _check_shape(input_shape) -> tuple[int, ...]:
    return check_shape("input_shape", input_shape)


def _check_dtype(dtype):
    check_dtype("dtype", dtype, optional=True)


def _check_image(in_channels, image_size) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``in_channels`` and ``image_size`` (an int or a pair)."""
    in_channels = check_int("in_channels", in_channels, 1)
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        h, w = image_size
    elif isinstance(image_size, (tuple, list)):
        raise ValueError(f"image_size must be an int or a pair (H, W), got {image_size!r}")
    else:
        h = w = image_size
    return in_channels, check_int("image_size", h, 1), check_int("image_size", w, 1)


def _check_input(model: nn.Module, x) -> None:
    """Refuse an input the network cannot take, with the shape and dtype it was built for."""
    name = type(model).__name__
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} takes a floating tensor (N, *{model.input_shape}), got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    dtype = next(model.parameters()).dtype
    if x.dtype != dtype:
        raise TypeError(f"x is {x.dtype} but the {name} is {dtype}: convert one of them, e.g. x.to({dtype})")
    if x.ndim < 2 or x[0].numel() != math.prod(model.input_shape):
        raise ValueError(f"{name} was built for inputs (N, *{model.input_shape}), got {tuple(x.shape)}")


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        check_int(name, value, 1)


class _CheckedSequential(nn.Sequential):
    """Named layers run in order, with every input checked against ``input_shape`` and the dtype."""

    def __init__(self, layers: list, shape: tuple, dtype: torch.dtype | None):
        super().__init__(OrderedDict(layers))
        self.input_shape = shape
        if dtype is not None:
            self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for ``x`` of shape ``(N, *input_shape)`` (an MLP also takes ``(N, D)``).

        Raises
        ------
        TypeError
            ``x`` not a floating tensor of the network's dtype.
        ValueError
            Samples of another size than ``input_shape``.
        """
        _check_input(self, x)
        return super().forward(x)


class MLP(_CheckedSequential):
    """A fully connected network ``flatten -> fc1 -> act1 -> ... -> out`` for classification.

    Parameters
    ----------
    input_shape : int or tuple of int
        Shape of one input, e.g. ``(1, 28, 28)`` for MNIST; it is flattened first.
    widths : sequence of int
        Hidden layer widths, e.g. ``(256,)``; may be empty (a linear classifier).
    num_classes : int
        Number of logits of the output layer ``out``.
    activation : str
        Activation after every hidden layer (see :data:`ACTIVATIONS`).
    bias : bool
        Whether every linear layer has a bias. The bias ratio needs one (Chapter 1).
    dtype : torch.dtype, optional
        ``torch.float64`` for exact analytic attacks.
    **activation_kwargs
        Passed to :func:`make_activation`.

    Attributes
    ----------
    input_shape : tuple of int

    Raises
    ------
    ValueError, TypeError
        Non-positive sizes, unknown activation, unsupported dtype.
    """

    def __init__(self, input_shape, widths: Sequence[int] = (256,), num_classes: int = 10,
                 activation: str = "relu", bias: bool = True, dtype: torch.dtype | None = None,
                 **activation_kwargs):
        shape = _check_shape(input_shape)
        _check_dtype(dtype)
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
            raise TypeError(f"widths must be a sequence of hidden widths such as (256,), got {widths!r}")
        widths = tuple(check_int("widths", w, 1) for w in widths)
        _check_sizes(num_classes=num_classes)
        check_bool("bias", bias)
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = math.prod(shape)
        for i, w in enumerate(widths, start=1):
            layers.append((f"fc{i}", nn.Linear(width, w, bias=bias)))
            layers.append((f"act{i}", make_activation(activation, **activation_kwargs)))
            width = w
        layers.append(("out", nn.Linear(width, num_classes, bias=bias)))
        super().__init__(layers, shape, dtype)


class LeNet(nn.Module):
    """The LeNet variant of DLG (Zhu et al. 2019), the standard target of gradient attacks.

    ``conv1(C->12, k5, s2, p2) act1 conv2(12->12, k5, s2, p2) act2 conv3(12->12, k5, s1, p2) act3
    flatten fc(12*H/4*W/4 -> classes)``; for a 3x32x32 input the linear layer has 768 inputs.
    DLG uses sigmoid activations and weights drawn from U(-0.5, 0.5)
    (``init_weights(model, "uniform")``).

    Parameters
    ----------
    in_channels : int
        1 for grey images, 3 for colour.
    image_size : int or (int, int)
        Input height and width in pixels.
    num_classes : int
        Number of logits.
    activation : str
        Activation after each conv layer (DLG: ``"sigmoid"``).
    width : int
        Filters per conv layer (DLG: 12).
    bias : bool
        Whether the layers have biases.
    dtype : torch.dtype, optional
        ``torch.float64`` for exact analytic attacks.

    Raises
    ------
    TypeError
        Non-integer sizes, an unsupported dtype, an activation name that is not a string.
    ValueError
        Non-positive sizes, an unknown activation, an image too small for three convs.
    """

    def __init__(self, in_channels: int = 3, image_size=32, num_classes: int = 10,
                 activation: str = "sigmoid", width: int = 12, bias: bool = True,
                 dtype: torch.dtype | None = None, **activation_kwargs):
        super().__init__()
        _check_dtype(dtype)
        self.input_shape = _check_image(in_channels, image_size)
        _check_sizes(width=width, num_classes=num_classes)
        check_bool("bias", bias)
        act = lambda: make_activation(activation, **activation_kwargs)  # noqa: E731
        self.body = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, width, 5, stride=2, padding=2, bias=bias)), ("act1", act()),
            ("conv2", nn.Conv2d(width, width, 5, stride=2, padding=2, bias=bias)), ("act2", act()),
            ("conv3", nn.Conv2d(width, width, 5, stride=1, padding=2, bias=bias)), ("act3", act()),
        ]))
        with torch.no_grad():
            features = self.body(torch.zeros(1, *self.input_shape)).numel()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(features, num_classes, bias=bias)
        if dtype is not None:
            self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, *input_shape)``.

        Raises
        ------
        TypeError
            ``x`` not a floating tensor of the network's dtype.
        ValueError
            Samples of another size than ``input_shape``.
        """
        _check_input(self, x)
        return self.fc(self.flatten(self.body(x)))


class ConvNet(_CheckedSequential):
    """A plain CNN ``conv1 act1 conv2 act2 ... flatten fc``: the shape of every network of Chapter 3.

    Parameters
    ----------
    in_channels : int
    image_size : int or (int, int)
    convs : sequence of (filters, kernel, stride, padding, activation)
        One tuple per conv layer; ``activation`` is a name of :data:`ACTIVATIONS`
        (``"leaky_relu"`` means slope 0.2, as R-GAP and R-CONV use).
    num_classes : int
        Outputs of the linear head ``fc``.
    bias : bool
        Biases in the conv layers.
    head_bias : bool
        Bias in ``fc``; the attacks of Chapter 3 start with the bias ratio, which needs it.
    dtype : torch.dtype, optional

    Attributes
    ----------
    input_shape : tuple of int

    Raises
    ------
    TypeError
        ``convs`` not a sequence, non-integer sizes, an unsupported dtype.
    ValueError
        Empty ``convs``, a spec that is not a 5-tuple, non-positive sizes, an unknown
        activation, or layers that shrink the image to nothing.
    """

    def __init__(self, in_channels: int, image_size, convs, num_classes: int = 10, *, bias: bool = True,
                 head_bias: bool = True, dtype: torch.dtype | None = None):
        _check_dtype(dtype)
        shape = _check_image(in_channels, image_size)
        h, w = shape[1:]
        _check_sizes(num_classes=num_classes)
        check_bool("bias", bias)
        check_bool("head_bias", head_bias)
        if isinstance(convs, (str, bytes)) or not hasattr(convs, "__iter__"):
            raise TypeError(f"convs must be a sequence of (filters, kernel, stride, padding, activation), "
                            f"got {convs!r}")
        convs = list(convs)
        if not convs:
            raise ValueError("convs must list at least one conv layer")
        layers: list[tuple[str, nn.Module]] = []
        c = in_channels
        for i, spec in enumerate(convs, start=1):
            try:
                filters, k, stride, pad, act = spec
            except (TypeError, ValueError):
                raise ValueError(f"conv {i} must be (filters, kernel, stride, padding, activation), got {spec!r}") \
                    from None
            for what, v, lo in (("filters", filters, 1), ("kernel", k, 1), ("stride", stride, 1), ("padding", pad, 0)):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError(f"conv {i}: {what} must be an integer, got {v!r} in {spec!r}")
                if v < lo:
                    raise ValueError(f"conv {i} has a non-positive size: {what} = {v} in {spec!r}")
            layers.append((f"conv{i}", nn.Conv2d(c, filters, k, stride=stride, padding=pad, bias=bias)))
            layers.append((f"act{i}", make_activation(act)))
            c = filters
        body = nn.Sequential(OrderedDict(layers))
        with torch.no_grad():
            try:
                features = body(torch.zeros(1, *shape)).numel()
            except RuntimeError as err:
                raise ValueError(f"the conv layers do not fit a {h}x{w} input: {err}") from None
        layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(features, num_classes, bias=head_bias))]
        super().__init__(layers, shape, dtype)


def lenet_o(in_channels: int = 3, image_size=32, num_classes: int = 10, activation: str = "sigmoid",
            **kwargs) -> ConvNet:
    """LeNet-O of R-CONV: DLG's LeNet with only 3 filters in its last conv layer.

    ``conv(C->12, k5, s2, p2) conv(12->12, k5, s2, p2) conv(12->3, k5, s1, p2) fc(3*H/4*W/4)``;
    the head of a 32x32 input has 192 inputs, as in R-CONV's reference network. (The R-CONV
    README says "fewer filters"; 3 in the last layer is the choice of its CNN6-O and of its
    reference network.) Keyword arguments go to :class:`ConvNet`.
    """
    a = activation
    return ConvNet(in_channels, image_size, [(12, 5, 2, 2, a), (12, 5, 2, 2, a), (3, 5, 1, 2, a)], num_classes,
                   **kwargs)


def cnn6(in_channels: int = 3, image_size=32, num_classes: int = 10, activation: str = "leaky_relu",
         last_filters: int = 128, bias: bool = False, **kwargs) -> ConvNet:
    """CNN6 of R-GAP (Zhu & Blaschko 2021): six convs without biases, LeakyReLU(0.2).

    ``conv(C->12, k4, s2, p2) conv(12->36, k3, s2, p1) conv(36->36, k3, s1, p1) conv(36->36, k3, s1, p1)
    conv(36->64, k3, s2, p1) conv(64->last_filters, k3, s1, p1) fc``: 17x17, 9x9, 9x9, 9x9, 5x5, 5x5
    for a 32x32 input. R-GAP's head is a single logit with a logistic loss and no bias; here
    the head has ``num_classes`` logits and a bias (cross-entropy), so that the attack can
    start with the bias ratio.
    """
    a = activation
    return ConvNet(in_channels, image_size,
                   [(12, 4, 2, 2, a), (36, 3, 2, 1, a), (36, 3, 1, 1, a), (36, 3, 1, 1, a), (64, 3, 2, 1, a),
                    (last_filters, 3, 1, 1, a)], num_classes, bias=bias, **kwargs)


def cnn6_o(in_channels: int = 3, image_size=32, num_classes: int = 10, activation: str = "leaky_relu",
           **kwargs) -> ConvNet:
    """CNN6-O of R-CONV: CNN6 with 3 filters in the last conv instead of 128."""
    return cnn6(in_channels, image_size, num_classes, activation, last_filters=3, **kwargs)


def rconv_net(in_channels: int = 3, image_size=32, num_classes: int = 10, activation: str = "leaky_relu",
              **kwargs) -> ConvNet:
    """The reference network of R-CONV's ``main.py`` (weights U(-0.5, 0.5) there, float64).

    ``conv(C->12, k5, s2, p2) LeakyReLU(0.2) conv(12->16, k5, s2, p2) LeakyReLU(0.2)
    conv(16->12, k5, s1, p2) act conv(12->3, k5, s1, p2) act fc(192)`` for a 32x32 input.
    """
    a = activation
    return ConvNet(in_channels, image_size, [(12, 5, 2, 2, "leaky_relu"), (16, 5, 2, 2, "leaky_relu"),
                                             (12, 5, 1, 2, a), (3, 5, 1, 2, a)], num_classes, **kwargs)


def lenet_4_relu(in_channels: int = 3, image_size=32, num_classes: int = 10, **kwargs) -> ConvNet:
    """LeNet-4-ReLU of R-CONV: the four-conv reference network with ReLU after convs 2 to 4.

    The first conv keeps LeakyReLU(0.2), so the image layer keeps its forward equations.
    """
    return ConvNet(in_channels, image_size, [(12, 5, 2, 2, "leaky_relu"), (16, 5, 2, 2, "relu"), (12, 5, 1, 2, "relu"),
                                             (3, 5, 1, 2, "relu")], num_classes, **kwargs)


def lenet_all_relu(in_channels: int = 3, image_size=32, num_classes: int = 10, first_filters: int = 64,
                   **kwargs) -> ConvNet:
    """LeNet-All-ReLU of R-CONV: ReLU after every conv, many filters in the first layer.

    With ReLU after the first conv, half its forward equations are lost, and the image must
    come mostly from the weight-gradient equations: ``first_filters * 25`` per channel for
    ``H W`` pixels.
    """
    return ConvNet(in_channels, image_size, [(first_filters, 5, 2, 2, "relu"), (16, 5, 2, 2, "relu"),
                                             (12, 5, 1, 2, "relu"), (3, 5, 1, 2, "relu")], num_classes, **kwargs)


def vgg_small(in_channels: int = 3, image_size=32, num_classes: int = 10, *, channels=(8, 48, 48),
              head_width: int = 1024, conv_activation: str = "leaky_relu", dtype: torch.dtype | None = None
              ) -> nn.Sequential:
    """A VGG-style CNN scaled to a CPU: 3x3 convs, a fully connected ReLU head.

    ``conv1 (3x3, stride 1) -> conv2 (3x3, stride 2) -> conv3 (3x3, stride 1) -> flatten ->
    fc1 (head_width) -> ReLU -> out``, every conv followed by ``conv_activation``. It stands in
    for the VGG-13 of the ExAN paper's ISIC figure (Chapter 4): stride 2 replaces max-pooling,
    which the conv solver of Chapter 3 does not invert, and the default widths keep every
    conv layer's forward equations square or tall (``F O_h O_w >= C H W``), so with an
    invertible activation each layer's input is fixed by its output.

    Parameters
    ----------
    in_channels : int
    image_size : int or (int, int)
    num_classes : int
    channels : (int, int, int)
        Filters of conv1, conv2, conv3.
    head_width : int
        Units of the hidden ReLU layer ``fc1``.
    conv_activation : str
        Activation after each conv (:data:`ACTIVATIONS`); ``"relu"`` as in VGG.
    dtype : torch.dtype, optional

    Returns
    -------
    nn.Sequential
        With ``input_shape`` set.

    Raises
    ------
    TypeError, ValueError
        Bad sizes or dtype (see :class:`ConvNet`).
    """
    _check_dtype(dtype)
    if isinstance(channels, (str, bytes)) or not hasattr(channels, "__iter__"):
        raise TypeError(f"channels must be three conv widths such as (8, 48, 48), got {channels!r}")
    channels = tuple(channels)
    if len(channels) != 3:
        raise ValueError(f"channels must give three conv widths, got {channels!r}")
    _check_sizes(head_width=head_width)
    body = ConvNet(in_channels, image_size, [(channels[0], 3, 1, 1, conv_activation),
                                             (channels[1], 3, 2, 1, conv_activation),
                                             (channels[2], 3, 1, 1, conv_activation)], num_classes)
    layers = [(n, m) for n, m in body.named_children() if n != "fc"]
    features = body.fc.in_features
    layers += [("fc1", nn.Linear(features, head_width)), ("fc_act1", nn.ReLU()),
               ("out", nn.Linear(head_width, num_classes))]
    model = nn.Sequential(OrderedDict(layers))
    model.input_shape = body.input_shape
    if dtype is not None:
        _check_dtype(dtype)
        model.to(dtype)
    return model
