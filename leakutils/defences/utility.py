"""What a defence costs: test accuracy of a model trained with the defence on every step.

Federated training in its simplest form (FedSGD with one client per round): each step, a
client computes its update on a batch, the defence changes what it sends, and the server
moves the weights against what it received,

    w <- w - lr * update.

:func:`train` runs that loop with any defence written as a callable ``defence(model, x, y)
-> Update`` (:func:`leakutils.capture.client_update` when there is none), so the accuracy
of the result (:func:`accuracy`) is the defence's price in utility, measured on the same
footing for every defence. DP-SGD is trained with Opacus' own loop instead
(:func:`train_dp_sgd`): Poisson-sampled batches, per-sample clipping and noise, and the
(epsilon, delta) of the whole run from its accountant.

The data are the course's offline MNIST digits, split once into 4,000 training and 1,000
test digits (:func:`mnist_split`). Training runs in float32 on a copy of the model; the
model given is never changed.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as _data
from ..capture import unwrap_opacus
from ..core import Update
from ..validate import check_callable, check_int, check_labels, check_module, check_number, check_seed, \
    check_tensor

__all__ = ["mnist_split", "train", "train_dp_sgd", "accuracy", "TRAIN_SIZE", "TEST_SIZE", "LR"]

#: Digits of the offline MNIST set used for training and for testing (5,000 in all).
TRAIN_SIZE = 4000
TEST_SIZE = 1000
#: The default learning rate of :func:`train` and :func:`train_dp_sgd` (plain SGD).
LR = 0.1
#: Images scored at once by :func:`accuracy`.
_EVAL_BATCH = 1000


def mnist_split(seed: int = 0) -> tuple[_data.ImageData, _data.ImageData]:
    """The offline MNIST digits split at random into 4,000 training and 1,000 test digits.

    Parameters
    ----------
    seed : int
        Seed of the permutation, ``0..2**32-1``: the same seed gives the same split.

    Returns
    -------
    (ImageData, ImageData)
        Training and test sets, images ``(N, 1, 28, 28)`` float32 in ``[0, 1]``, labels int64
        ``0..9``; disjoint.

    Raises
    ------
    TypeError, ValueError
        ``seed`` not an integer in range.
    """
    seed = check_seed("seed", seed)
    ds = _data.load("mnist", TRAIN_SIZE + TEST_SIZE)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    parts = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
    return tuple(_data.ImageData(ds.images[p], ds.labels[p], ds.classes, ds.name,
                                 f"{ds.source}; {what} split of seed {seed}")
                 for p, what in zip(parts, ("training", "test")))


def _pair(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of an ImageData or an ``(images, labels)`` pair, checked."""
    if isinstance(data, _data.ImageData):
        return data.images, data.labels
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data must be an ImageData (e.g. from mnist_split) or a pair (images, labels), got "
                        f"{type(data).__name__}")
    x, y = data
    check_tensor("images", x, min_ndim=2, shape="(N, *input_shape)")
    check_labels("labels", y, x.shape[0])
    return x, y


def _float32_copy(model: nn.Module) -> nn.Module:
    """A float32 deep copy of a plain (unwrapped) model."""
    check_module("model", model)
    net = copy.deepcopy(unwrap_opacus(model)).float()
    if not any(p.requires_grad for p in net.parameters()):
        raise ValueError("the model has no trainable parameters, so there is nothing to train")
    return net


def train(model: nn.Module, data, defence=None, *, epochs: int = 3, batch: int = 64, lr: float = LR,
          seed: int = 0) -> nn.Module:
    """Train a float32 copy of ``model`` with plain SGD on what ``defence`` lets through each step.

    Each epoch visits the training images in a fresh random order (a generator seeded with
    ``seed``) in batches of ``batch`` (the last one smaller when ``batch`` does not divide
    the data). For every batch ``(x, y)`` the server receives ``defence(net, x, y)`` and
    applies ``w <- w - lr * g`` to every parameter named in it: plain SGD at the server, no
    momentum, no weight decay. The mean cross-entropy is the loss.

    Parameters
    ----------
    model : nn.Module
        The initial model (any dtype; trained in float32). It is not changed.
    data : ImageData or (torch.Tensor, torch.Tensor)
        Training images ``(N, *input_shape)`` floating and labels ``(N,)`` int64.
    defence : callable, optional
        ``defence(model, x, y) -> Update`` (or a tuple whose first element is the
        :class:`~leakutils.core.Update`, e.g. ``dp_sgd_update``'s), called with the float32
        model being trained and a float32 batch. Default: the plain FedSGD update,
        :func:`~leakutils.capture.client_update`. A defence that draws noise should draw it
        from a generator it advances (a fixed seed would add the same noise every step).
    epochs : int
        Passes over the data, ``>= 1``.
    batch : int
        Client batch size, ``1..N``.
    lr : float
        Server step size, ``> 0``.
    seed : int
        Seed of the batch order.

    Returns
    -------
    nn.Module
        The trained copy, float32, in the given model's mode.

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``; ``data`` neither an ImageData nor a pair of tensors;
        ``defence`` not callable or returning something other than an Update; a parameter
        of the wrong kind.
    ValueError
        A parameter out of range; labels outside the model's classes; a defended update
        without a trainable parameter's gradient or of another shape; non-finite weights
        after training (a defence sending NaN, or steps too large).
    """
    net = _float32_copy(model)
    x, y = _pair(data)
    if defence is not None:
        check_callable("defence", defence, "defence(model, x, y) -> Update")
    epochs = check_int("epochs", epochs, 1)
    batch = check_int("batch", batch, 1, x.shape[0])
    lr = check_number("lr", lr, 0.0, lo_open=True)
    seed = check_seed("seed", seed)
    x = x.float()
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    if defence is None:
        # the plain update, as client_update computes it, without its per-call checks (3x faster)
        check_labels("labels", y, x.shape[0], _num_classes(net, x[:1]))
        tensors = [p for _, p in params]
        for _ in range(epochs):
            for rows in torch.randperm(x.shape[0], generator=gen).split(batch):
                grads = torch.autograd.grad(F.cross_entropy(net(x[rows]), y[rows]), tensors)
                with torch.no_grad():
                    for p, g in zip(tensors, grads):
                        p -= lr * g
        return _finite(net, params, lr)
    for _ in range(epochs):
        for rows in torch.randperm(x.shape[0], generator=gen).split(batch):
            update = defence(net, x[rows], y[rows])
            if isinstance(update, tuple) and update:
                update = update[0]
            if not isinstance(update, Update):
                raise TypeError(f"defence must return an Update (or a tuple starting with one), got "
                                f"{type(update).__name__}")
            with torch.no_grad():
                for name, p in params:
                    g = update.gradients.get(name)
                    if g is None or g.shape != p.shape:
                        raise ValueError(f"the defence's update has no gradient of shape {tuple(p.shape)} for "
                                         f"{name!r}: it must hold every trainable parameter")
                    p -= lr * g.to(p.dtype)
    return _finite(net, params, lr)


def _finite(net: nn.Module, params, lr: float) -> nn.Module:
    """``net``, or a ValueError when training left a weight NaN or infinite."""
    bad = [name for name, p in params if not bool(torch.isfinite(p).all())]
    if bad:
        raise ValueError(f"training left non-finite weights in {bad}: the defence sent NaN or infinite updates, "
                         f"or the steps are too large for lr={lr:g}")
    return net


def _num_classes(net: nn.Module, x: torch.Tensor) -> int:
    """The number of logits ``net`` returns for ``x``, or a ValueError saying what it returned."""
    try:
        with torch.no_grad():
            out = net(x)
    except (RuntimeError, ValueError, IndexError) as err:
        raise ValueError(f"the model does not accept images of shape {tuple(x.shape)}: {err}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"the model must return logits (N, classes); got {tuple(getattr(out, 'shape', ()))}")
    return int(out.shape[1])


def train_dp_sgd(model: nn.Module, data, *, noise_multiplier: float, max_grad_norm: float = 1.0,
                 epochs: int = 3, batch: int = 64, lr: float = LR, delta: float = 1e-5,
                 seed: int = 0) -> tuple[nn.Module, float]:
    """Train a float32 copy of ``model`` with DP-SGD in Opacus' own loop; return it and its epsilon.

    ``PrivacyEngine(accountant="rdp").make_private`` wraps the copy, a plain SGD optimiser,
    the mean cross-entropy and a ``DataLoader`` of batch ``batch``, with Opacus' default
    Poisson sampling: each step takes every training image independently with probability
    ``q = batch / N`` (a step whose batch comes out empty is skipped). Opacus' ghost
    clipping (``grad_sample_mode="ghost"``) computes the per-sample norms without storing
    per-sample gradients: the same step as its default mode, an order of magnitude faster.
    Every sample's gradient is clipped to L2 norm ``max_grad_norm``, noise of std
    ``noise_multiplier * max_grad_norm`` is added to their sum, and the result is divided by
    the expected batch size (Abadi et al. 2016). After ``epochs`` passes (``epochs * N /
    batch`` steps) the RDP accountant gives the run's epsilon for ``delta``.
    Randomness (sampling and noise) comes from generators seeded by ``seed``; torch's global
    generator is left as it was.

    Parameters
    ----------
    model : nn.Module
        The initial model, with layers Opacus can compute per-sample gradients for (no
        BatchNorm). Not changed.
    data : ImageData or (torch.Tensor, torch.Tensor)
        As :func:`train`.
    noise_multiplier : float
        ``sigma >= 0``; 0 gives no privacy (epsilon ``inf``).
    max_grad_norm : float
        ``C > 0``, the per-sample clipping bound.
    epochs : int
        ``>= 1``.
    batch : int
        Expected batch size, ``1..N``.
    lr : float
        ``> 0``.
    delta : float
        In ``(0, 1)``; below ``1 / N`` (2.5e-4 for 4,000 digits) as is customary.
    seed : int

    Returns
    -------
    (nn.Module, float)
        The trained copy (float32, no Opacus wrapper or hooks) and epsilon ``>= 0`` (``inf``
        without noise).

    Raises
    ------
    TypeError
        A parameter of the wrong kind (as :func:`train`).
    ValueError
        A parameter out of range; a model Opacus cannot make private (the message says why).
    """
    net = _float32_copy(model)
    x, y = _pair(data)
    noise_multiplier = check_number("noise_multiplier", noise_multiplier, 0.0)
    max_grad_norm = check_number("max_grad_norm", max_grad_norm, 0.0, lo_open=True)
    epochs = check_int("epochs", epochs, 1)
    batch = check_int("batch", batch, 1, x.shape[0])
    lr = check_number("lr", lr, 0.0, lo_open=True)
    delta = check_number("delta", delta, 0.0, 1.0, lo_open=True, hi_open=True)
    seed = check_seed("seed", seed)
    try:
        from opacus import PrivacyEngine
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("DP-SGD needs Opacus: pip install 'opacus>=1.5'") from None
    from torch.utils.data import DataLoader, TensorDataset

    trained = copy.deepcopy(net)
    net.train()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
    loader = DataLoader(TensorDataset(x.float(), y), batch_size=batch)
    noise = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Poisson sampling draws from torch's global generator (secure_mode=False): seed it here only
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message=".*full backward hook.*")
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        try:
            # ghost clipping: the per-sample norms without the per-sample gradients, the same
            # clipped and noised step as Opacus' default hooks, ten times faster on the MLP
            private, optimizer, criterion, loader = engine.make_private(
                module=net, optimizer=optimizer, data_loader=loader, criterion=nn.CrossEntropyLoss(),
                noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, noise_generator=noise,
                grad_sample_mode="ghost")
        except (ValueError, NotImplementedError, RuntimeError) as err:
            raise ValueError(f"Opacus cannot make this model private: {err}") from None
        for _ in range(epochs):
            for xb, yb in loader:
                if xb.shape[0] == 0:
                    # an empty Poisson batch (chance (1 - q)^N): no data, no step
                    continue
                optimizer.zero_grad(set_to_none=True)
                criterion(private(xb), yb).backward()
                optimizer.step()
        epsilon = math.inf if noise_multiplier == 0 else float(engine.get_epsilon(delta))
    trained.load_state_dict(unwrap_opacus(private).state_dict())
    trained.train(model.training)
    return trained, epsilon


def accuracy(model: nn.Module, data) -> float:
    """Fraction of ``data`` that ``model`` classifies right (argmax of its logits).

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``(N, classes)``; used in its current mode, in its
        own dtype (the images are converted to it), without gradients.
    data : ImageData or (torch.Tensor, torch.Tensor)
        Test images and int64 labels.

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``; ``data`` of the wrong kind.
    ValueError
        A model that does not return ``(N, classes)`` logits for these images.
    """
    check_module("model", model)
    x, y = _pair(data)
    dtype = next((p.dtype for p in model.parameters()), x.dtype)
    right = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], _EVAL_BATCH):
            xb = x[start:start + _EVAL_BATCH].to(dtype)
            _num_classes(model, xb[:1])
            right += int((model(xb).argmax(1) == y[start:start + _EVAL_BATCH]).sum())
    return right / x.shape[0]
