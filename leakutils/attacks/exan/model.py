"""Model parsing for the ExAN attack: the fully connected ReLU head, its weights and gradients.

A network is accepted when its call order is ``[conv -> activation -> ... -> Flatten] ->
Linear -> ReLU -> ... -> Linear`` (logits, no softmax layer). The conv part, if any, is
split off with :func:`leakutils.attacks.conv.parse_cnn`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...core import Update
from .._common import layer_gradient, trace_leaves

HINT = ("The ExAN attack needs a fully connected ReLU network (Linear -> ReLU -> ... -> Linear, "
        "e.g. leakutils.models.MLP(..., activation='relu')), optionally after conv layers "
        "(Conv2d -> activation -> ... -> Flatten), trained with softmax cross-entropy on the logits.")


@dataclass
class Net:
    """The parsed network.

    Attributes
    ----------
    hidden : list of (str, nn.Linear)
        The fully connected layers followed by a ReLU, bottom to top.
    out_name : str
        Name of the output layer.
    out : nn.Linear
        The output layer (logits).
    convs : list
        :class:`leakutils.attacks.conv.ConvLayer` from the input upwards; empty for an MLP.
    feature_shape : tuple of int
        Shape of one input of the first fully connected layer.
    """

    hidden: list
    out_name: str
    out: nn.Linear
    convs: list
    feature_shape: tuple

    @property
    def names(self) -> list:
        """Names of the fully connected layers, hidden ones first, the output layer last."""
        return [n for n, _ in self.hidden] + [self.out_name]


@dataclass
class Grads:
    """Weights and gradients of the fully connected part, float64, indexed bottom to top.

    ``W[h]``, ``b[h]`` (None without a bias), ``G[h]``, ``Gb[h]`` (None without a bias) for the
    hidden layers ``h = 0..H-1`` and the output layer ``h = H``. ``G`` are the gradients as
    shared (averaged over the batch), or a remainder of them after peeling.
    """

    W: list
    b: list
    G: list
    Gb: list

    @property
    def out(self) -> torch.Tensor:
        """The output layer's weight gradient ``(K, N_H)``."""
        return self.G[-1]

    def rows(self, h: int, units: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``h``'s weight-gradient rows with the bias gradient appended, ``(N_h, D_h [+ 1])``.

        With ``units`` (indices), only those rows, without copying the whole layer first.
        """
        G = self.G[h] if units is None else self.G[h][units]
        if self.Gb[h] is None:
            return G
        Gb = self.Gb[h] if units is None else self.Gb[h][units]
        return torch.cat([G, Gb[:, None]], 1)

    def with_gradients(self, G: list, Gb: list) -> "Grads":
        """The same weights with other gradients (a remainder)."""
        return Grads(self.W, self.b, G, Gb)

    @property
    def biased(self) -> bool:
        """Whether every hidden layer has a bias."""
        return all(g is not None for g in self.Gb[:-1])


def parse(model: nn.Module, input_shape: tuple) -> Net:
    """Split ``model`` into its conv part and its fully connected ReLU head.

    Raises
    ------
    TypeError
        A module the attack does not support (an activation other than ReLU in the fully
        connected part, dropout in training mode, normalisation, pooling), with its name.
    ValueError
        No hidden ReLU layer; a softmax layer at the end.
    """
    from ..conv import parse_cnn

    names = {id(m): n for n, m in model.named_modules()}
    order = [mod for mod, _, _ in trace_leaves(model, input_shape)]
    convs: list = []
    feature_shape = input_shape
    if any(isinstance(m, nn.Conv2d) for m in order):
        convs, head_name = parse_cnn(model, input_shape)
        feature_shape = convs[-1].out_shape
        head = model.get_submodule(head_name)
        start = next(k for k, m in enumerate(order) if m is head)
        order = order[start:]
    seq = [m for m in order if not isinstance(m, (nn.Flatten, nn.Identity))
           and not (isinstance(m, nn.Dropout) and not m.training)]
    for m in seq:
        _check_module(m, names.get(id(m), type(m).__name__))
    hidden = []
    k = 0
    while k < len(seq) - 1:
        m, nxt = seq[k], seq[k + 1]
        name = names.get(id(m), type(m).__name__)
        if not isinstance(m, nn.Linear):
            raise TypeError(f"expected a Linear layer at {name!r}, found {type(m).__name__}. " + HINT)
        if not isinstance(nxt, nn.ReLU):
            raise TypeError(f"the layer after {name!r} is {type(nxt).__name__}; every hidden Linear layer must be "
                            f"followed by one ReLU. " + HINT)
        hidden.append((name, m))
        k += 2
    if not seq or not isinstance(seq[-1], nn.Linear) or k != len(seq) - 1:
        raise TypeError("the model must end in a Linear layer that returns the logits. " + HINT)
    if not hidden:
        raise ValueError("the model has no hidden ReLU layer, so no unit can be exclusively activated. " + HINT)
    out = seq[-1]
    return Net(hidden=hidden, out_name=names[id(out)], out=out, convs=convs, feature_shape=tuple(feature_shape))


def _check_module(m: nn.Module, name: str) -> None:
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        raise ValueError(
            f"the model ends in {type(m).__name__} ({name!r}). Cross-entropy applies the softmax itself; a "
            f"softmax layer in the model breaks the loss vector softmax(z) - onehot(y) that the attack reads. "
            f"Remove it and return the logits.")
    if isinstance(m, nn.Dropout):
        raise TypeError(f"dropout layer {name!r} is active (training mode): the gradient then depends on a "
                        f"random mask. Call model.eval() or remove it.")
    if not isinstance(m, (nn.Linear, nn.ReLU)):
        raise TypeError(f"module {name!r} ({type(m).__name__}) is not supported in the fully connected part. "
                        + HINT)


def gradients(net: Net, update: Update) -> Grads:
    """The fully connected part's weights and shared gradients in float64 (checked shapes, finite)."""
    layers = net.hidden + [(net.out_name, net.out)]
    W = [lin.weight.detach().to(torch.float64) for _, lin in layers]
    b = [lin.bias.detach().to(torch.float64) if lin.bias is not None else None for _, lin in layers]
    G = [layer_gradient(update, f"{n}.weight", lin.weight) for n, lin in layers]
    Gb = [layer_gradient(update, f"{n}.bias", lin.bias) if lin.bias is not None else None for n, lin in layers]
    return Grads(W, b, G, Gb)


def head_forward(grads: Grads, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fully connected part in float64 for flat features ``(n, D)``: (last hidden output, logits)."""
    a = feats
    for Wh, bh in zip(grads.W[:-1], grads.b[:-1]):
        a = torch.relu(a @ Wh.T + (bh if bh is not None else 0.0))
    return a, a @ grads.W[-1].T + (grads.b[-1] if grads.b[-1] is not None else 0.0)


def loss_vectors(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``softmax(z) - onehot(labels)`` for logits ``z`` ``(n, K)``: the loss vectors, float64."""
    g = torch.softmax(z, 1)
    g[torch.arange(g.shape[0]), labels] -= 1.0
    return g


def head_gradients(grads: Grads, feats: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> tuple:
    """``sum_r weights_r * grad(feats_r, labels_r)`` of the fully connected part (weights and biases).

    What the attacker computes from its own reconstruction (it has the weights): each sample's
    gradient of the softmax cross-entropy, summed with ``weights`` (the multiplicities).
    Returns ``(G, Gb)`` lists like :class:`Grads`, float64.
    """
    params = []
    for Wh, bh in zip(grads.W, grads.b):
        params.append(Wh.clone().requires_grad_(True))
        params.append(bh.clone().requires_grad_(True) if bh is not None else None)
    with torch.enable_grad():
        a = feats.to(torch.float64)
        n = len(grads.W)
        for h in range(n):
            Wp, bp = params[2 * h], params[2 * h + 1]
            a = a @ Wp.T + (bp if bp is not None else 0.0)
            if h < n - 1:
                a = torch.relu(a)
        loss = (torch.nn.functional.cross_entropy(a, labels, reduction="none") * weights.to(torch.float64)).sum()
        req = [p for p in params if p is not None]
        out = torch.autograd.grad(loss, req, allow_unused=True)
    it = iter(out)
    flat = [next(it) if p is not None else None for p in params]
    flat = [torch.zeros_like(p) if (g is None and p is not None) else g for g, p in zip(flat, params)]
    return [f.detach() for f in flat[0::2]], [None if f is None else f.detach() for f in flat[1::2]]


def perturbed(x: torch.Tensor, rms: float | None, draws: int, seed: int) -> list:
    """``draws`` copies of ``x`` plus Gaussian noise of standard deviation ``rms`` (seeded); [] if none."""
    if rms is None or not rms > 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    return [x + rms * torch.randn(x.shape, generator=gen, dtype=x.dtype) for _ in range(draws)]


@dataclass
class Terms:
    """Per-sample factors of the fully connected part's gradients, float64.

    For sample ``r`` and layer ``h`` (hidden layers, then the output layer), its gradient is the
    outer product ``delta[h][r] (x) inp[h][r]``: ``dl/dW_h = delta inp^T`` and ``dl/db_h = delta``.
    ``delta[h]`` has shape ``(n, N_h)`` (for the output layer, the loss vectors) and ``inp[h]``
    ``(n, D_h)``. Blocks of any set of units follow without forming whole gradients.
    """

    delta: list
    inp: list

    def rows(self, h: int, units: torch.Tensor, biased: bool) -> torch.Tensor:
        """``(n, |units|, D_h [+ 1])``: each sample's weight-gradient rows of ``units`` (bias appended)."""
        a = self.inp[h]
        if biased:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
        return self.delta[h][:, units, None] * a[:, None, :]

    def columns(self, units: torch.Tensor) -> torch.Tensor:
        """``(n, K, |units|)``: each sample's output-layer weight-gradient columns of ``units``."""
        return self.delta[-1][:, :, None] * self.inp[-1][:, None, units]


def terms(grads: Grads, feats: torch.Tensor, labels: torch.Tensor) -> Terms:
    """:class:`Terms` of ``n`` samples (flat features ``(n, D)``), by one forward and backward pass."""
    inp, masks = [], []
    a = feats.to(torch.float64)
    n_layers = len(grads.W)
    for h in range(n_layers):
        inp.append(a)
        z = a @ grads.W[h].T + (grads.b[h] if grads.b[h] is not None else 0.0)
        if h < n_layers - 1:
            masks.append((z > 0).to(torch.float64))
            a = torch.relu(z)
    delta = [None] * n_layers
    d = loss_vectors(z, labels)
    delta[-1] = d
    for h in range(n_layers - 2, -1, -1):
        d = (d @ grads.W[h + 1]) * masks[h]
        delta[h] = d
    return Terms(delta=delta, inp=inp)
