"""Class fishing: a malicious server isolates one class of a large batch (Wen et al., ICML 2022).

The server changes the classifier (the last linear layer, ``C`` outputs) before sending the
model: the rows of every class ``c != t`` get weight 0 and a large bias ``B``; the row of the
target class ``t`` keeps its weights ``w_t`` and bias. Every logit but ``z_t`` is then ``B``,
so ``p_t = softmax(z)_t ~ exp(z_t - B)`` underflows to 0 in the model's dtype. For a sample of
class ``y != t``, ``dl/dz_t = p_t = 0`` and, the other rows being 0, nothing flows back
(``dl/dh = W^T dl/dz = w_t p_t = 0``); a sample of class ``t`` has ``dl/dz_t = p_t - 1 = -1``.
Every parameter upstream of the classifier (and its row ``t``) therefore sees the target-class
samples only. With exactly one of them, ``x``, in a batch of ``M``, the first linear layer's
mean gradients are

    dW_j = (1/M) d_j x,        db_j = (1/M) d_j,

so ``x = dW_j / db_j`` for any unit with ``db_j != 0``, whatever ``M`` (the bias ratio of
Chapter 1, on a magnified update). :func:`reconstruct` fits ``x`` to all rows by least squares
and marks it recovered only if the fished model's own gradient at ``(x, t)``, times ``1/M``,
reproduces the update on every parameter upstream of the classifier and on the classifier's
row ``t``: two target-class samples give a mixture that fails this check.

Reference: Wen, Geiping, Fowl, Goldblum, Goldstein, "Fishing for User Data in Large-Batch
Federated Learning via Gradient Magnification", ICML 2022.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core import Reconstruction, Update
from ..validate import check_fraction, check_int, check_module, check_number
from ._common import called_after, called_before, check_model_update, feeds_on_input, find_layer, layer_gradient

__all__ = ["expected_isolated", "fish", "reconstruct"]

#: The check certifies a reconstruction when the relative gradient residual is at most this
#: multiple of the update dtype's eps (2.2e-12 in float64, 1.2e-3 in float32).
CHECK_EPS_FACTOR = 1e4
#: The first layer's bias gradient counts as zero (no target-class sample) below this multiple
#: of eps times the update's largest gradient entry.
ZERO_EPS_FACTOR = 64.0
#: Singular values of ``[dW | db]`` above this multiple of eps times the largest one count for the rank.
RANK_EPS_FACTOR = 1e3
#: The default gap is this multiple of ``-log(smallest subnormal)`` (744.4 in float64, 103.3 in float32).
GAP_MARGIN = 2.0


def _default_gap(dtype: torch.dtype) -> float:
    """``GAP_MARGIN * -log(smallest positive subnormal)``, rounded up: 1489 for float64, 207 for float32."""
    info = torch.finfo(dtype)
    return float(math.ceil(-GAP_MARGIN * math.log(info.tiny * info.eps)))


def _classifier(model: nn.Module, input_shape) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` called (traced on a zero input when ``input_shape`` is known), with a bias."""
    name, lin = find_layer(model, None, nn.Linear, last=True, input_shape=input_shape,
                           hint="Class fishing changes the classifier, the model's last nn.Linear layer.")
    if lin.bias is None:
        raise ValueError(f"the classifier {name!r} has no bias: fishing raises the other classes' logits "
                         f"through it; build the model with a biased output layer (e.g. MLP(..., bias=True))")
    if lin.out_features < 2:
        raise ValueError(f"the classifier {name!r} has {lin.out_features} output; fishing needs at least 2 classes")
    if input_shape is not None:
        after = [m for m in called_after(model, lin, input_shape) if any(True for _ in m.parameters(recurse=False))]
        if after:
            raise ValueError(f"the last nn.Linear {name!r} is followed by a {type(after[0]).__name__} with "
                             f"parameters: fishing needs the classifier to produce the logits")
    return name, lin


def fish(model: nn.Module, target_class: int, *, gap: float | None = None) -> nn.Module:
    """The model a fishing server sends: a deep copy with the classifier set to isolate one class.

    The classifier is the last ``nn.Linear`` the forward pass calls, traced on a zero input of
    ``model.input_shape`` when the model has that attribute (the course's models do), else the
    last ``nn.Linear`` in module order (``named_modules``). Its rows ``c != target_class`` get
    weight 0 and bias ``gap``; row ``target_class`` is kept. ``model`` itself is not changed.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``(B, C)``, ``C >= 2``, float32 or float64, whose last
        ``nn.Linear`` has a bias and produces those logits.
    target_class : int
        The class ``t`` to isolate, in ``0..C-1``.
    gap : float, optional
        The bias of the other classes, > 0, in logit units. The target's probability is about
        ``exp(z_t - gap)``, exactly 0 once ``gap - z_t`` exceeds ``-log`` of the dtype's smallest
        subnormal (744.4 in float64, 103.3 in float32). Default: twice that, rounded up (1489 for
        float64, 207 for float32), so logits ``z_t`` up to that margin still give exact zeros.

    Returns
    -------
    nn.Module
        The fished copy, same class, dtype and mode as ``model``.

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``; ``target_class`` not an integer; ``gap`` not a number.
    ValueError
        No ``nn.Linear``; a classifier without bias, with fewer than 2 outputs, or followed by
        a layer with parameters; ``target_class`` outside ``0..C-1``; ``gap <= 0`` or not finite.
    """
    check_module("model", model)
    shape = getattr(model, "input_shape", None)
    name, lin = _classifier(model, tuple(shape) if shape is not None else None)
    t = check_int("target_class", target_class, 0, lin.out_features - 1)
    gap = _default_gap(lin.weight.dtype) if gap is None else check_number("gap", gap, 0, lo_open=True)
    fished = copy.deepcopy(model)
    out = fished.get_submodule(name)
    with torch.no_grad():
        keep_w, keep_b = out.weight[t].clone(), out.bias[t].clone()
        out.weight.zero_()
        out.bias.fill_(gap)
        out.weight[t], out.bias[t] = keep_w, keep_b
    return fished


def expected_isolated(batch_size: int, num_classes: int, class_prob: float | None = None) -> float:
    """Probability that the target class occurs exactly once in a batch: ``M p (1 - p)^(M-1)``.

    Parameters
    ----------
    batch_size : int
        ``M >= 1`` samples drawn independently.
    num_classes : int
        ``C >= 2``; the default class probability is ``p = 1/C``.
    class_prob : float, optional
        ``p`` in ``[0, 1]``, the target class's frequency in the clients' data.

    Returns
    -------
    float
        In ``[0, 1]``; the chance that one fishing round recovers a sample. Largest near ``M = 1/p``.

    Raises
    ------
    TypeError
        An argument that is not a number (integers for ``batch_size`` and ``num_classes``).
    ValueError
        ``batch_size < 1``, ``num_classes < 2``, ``class_prob`` outside ``[0, 1]``.
    """
    m = check_int("batch_size", batch_size, 1)
    c = check_int("num_classes", num_classes, 2)
    p = 1.0 / c if class_prob is None else check_fraction("class_prob", class_prob)
    return m * p * (1.0 - p) ** (m - 1)


def _refuse_training_batchnorm(model: nn.Module, classifier: nn.Module, input_shape) -> None:
    for mod in called_before(model, classifier, input_shape):
        if isinstance(mod, _BatchNorm) and mod.training:
            raise ValueError(f"a {type(mod).__name__} in training mode sits upstream of the classifier: it mixes "
                             f"the batch's samples, so the other classes' gradients do not vanish. Put the "
                             f"model in eval mode (model.eval()) before the client computes its update")


def reconstruct(model: nn.Module, update: Update, *, target_class: int, layer: str | None = None) -> Reconstruction:
    """Rebuild the one target-class sample of a batch from a fished model's update.

    Parameters
    ----------
    model : nn.Module
        The fished model (:func:`fish`) at the weights the update was computed at; softmax
        cross-entropy, mean-reduced. Its first attacked ``nn.Linear`` must see the input
        (only parameter-free modules such as ``Flatten`` before it).
    update : Update
        The client's averaged gradients (float32 or float64; computed here in float64),
        over ``M = update.batch_size`` samples.
    target_class : int
        The class the model was fished for, ``0..C-1``.
    layer : str, optional
        Name of the ``nn.Linear`` to invert; default the first one the forward pass calls.
        When that is the classifier itself (a linear model), only its row ``target_class`` is used.

    Returns
    -------
    Reconstruction
        No target-class sample reached the layer (its bias gradient is zero up to round-off):
        ``images`` float64 ``(0, *input_shape)``, ``labels`` int64 ``(0,)``, nothing determined.
        Otherwise ``images`` float64 ``(1, *input_shape)`` (values in the data's range, not
        clipped), ``labels`` ``tensor([target_class])``, ``determined`` all True iff the check
        passed (else the image is the weighted mixture of the target-class samples, all False).
        ``diagnostics``: ``target_class``, ``batch_size``, ``residual`` (relative residual of
        the check, NaN when nothing was found), ``tolerance``, ``rank`` (numerical rank of the
        layer's ``[dW | db]``: 1 for one sample), ``passed``, ``expected_isolated`` (for ``M``
        and ``p = 1/C``), ``target_count`` (``-M dl/db_t`` of the classifier: the number of
        target-class samples, a float), ``layer``, ``classifier``, ``note``.

    Raises
    ------
    TypeError
        ``model`` or ``update`` of the wrong type; ``target_class`` not an integer; ``layer``
        not a string or not an ``nn.Linear``.
    ValueError
        ``target_class`` out of range; a classifier not fished for it (rows other than
        ``target_class`` with non-zero weights); a layer without bias or that does not see the
        input; a BatchNorm in training mode upstream; an update lacking the layer's gradients
        (the message names the keys) or with gradients of the wrong shape or not finite.
    """
    check_model_update(model, update)
    shape = update.input_shape
    cname, out = _classifier(model, shape)
    t = check_int("target_class", target_class, 0, out.out_features - 1)
    others = torch.ones(out.out_features, dtype=torch.bool)
    others[t] = False
    if bool((out.weight.detach()[others] != 0).any()):
        raise ValueError(f"the classifier {cname!r} is not fished for class {t}: rows other than {t} have non-zero "
                         f"weights. Send fish(model, {t}) to the client and attack that model and its update")
    _refuse_training_batchnorm(model, out, shape)
    name, lin = find_layer(model, layer, nn.Linear, input_shape=shape,
                           hint="Fishing reads the sample from the first fully connected layer's gradient.")
    if lin.bias is None:
        raise ValueError(f"layer {name!r} has no bias, so there is no dl/db to divide by; attack a biased layer")
    if not feeds_on_input(model, name, lin.in_features, shape):
        raise ValueError(f"layer {name!r} does not see the model's input (a layer with parameters comes first); "
                         f"fishing recovers the input from the first fully connected layer, e.g. of an MLP")
    keys = [f"{name}.weight", f"{name}.bias"]
    if any(k not in update.gradients for k in keys):
        raise ValueError(f"the update lacks the gradients {keys} of the first linear layer; was it captured "
                         f"from this fished model? It has {sorted(update.gradients)}")
    dW, db = layer_gradient(update, keys[0], lin.weight), layer_gradient(update, keys[1], lin.bias)
    if lin is out:  # a linear classifier: only the target row sees the target class alone
        dW, db = dW[t:t + 1], db[t:t + 1]
    m, c = update.batch_size, out.out_features
    eps = torch.finfo(update.gradients[keys[1]].dtype).eps
    tol = CHECK_EPS_FACTOR * eps
    bias_key = f"{cname}.bias"
    count = 0.0 - m * float(update.gradients[bias_key][t]) if bias_key in update.gradients else float("nan")
    diagnostics = {"target_class": t, "batch_size": m, "expected_isolated": expected_isolated(m, c),
                   "layer": name, "classifier": cname, "target_count": count, "tolerance": tol}
    scale = max(float(g.detach().abs().max()) for g in update.gradients.values() if g.numel())
    if float(db.abs().max()) <= ZERO_EPS_FACTOR * eps * scale:
        empty = torch.zeros(0, *shape, dtype=torch.float64)
        diagnostics.update(residual=float("nan"), rank=0, passed=False,
                           note=f"the bias gradient of {name!r} is zero: no sample of class {t} in the batch "
                                f"(or every unit of {name!r} inactive for it)")
        return Reconstruction(empty, torch.zeros(0, dtype=torch.int64), torch.zeros_like(empty, dtype=torch.bool),
                              diagnostics, attack="fishing")
    sv = torch.linalg.svdvals(torch.cat([dW, db[:, None]], dim=1))
    rank = int((sv > RANK_EPS_FACTOR * eps * sv[0]).sum())
    x = (db @ dW) / (db @ db)
    images = x.reshape(1, *shape)
    residual = _residual(model, update, images, t, name=cname)
    passed = residual <= tol
    note = "" if passed else (f"the image does not reproduce the update (rank {rank}): a mixture of several "
                              f"samples of class {t}, not one sample")
    diagnostics.update(residual=residual, rank=rank, passed=passed, note=note)
    return Reconstruction(images, torch.tensor([t]), torch.full_like(images, passed, dtype=torch.bool),
                          diagnostics, attack="fishing")


def _residual(model: nn.Module, update: Update, images: torch.Tensor, t: int, name: str) -> float:
    """Relative residual ``|u - g(x, t)/M| / |u|`` over the parameters upstream of the classifier
    ``name`` and the classifier's row and bias entry ``t`` (those in the update), in float64."""
    net = copy.deepcopy(model).to(torch.float64)
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad and n in update.gradients]
    if not params:
        return float("inf")
    try:
        loss = F.cross_entropy(net(images), torch.tensor([t]))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"the fished model cannot run the reconstruction alone: {err}") from None
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    diff, ref = [], []
    for (n, p), g in zip(params, grads):
        g = torch.zeros_like(p) if g is None else g.detach()
        u = update.gradients[n].detach().to(torch.float64)
        if n in (f"{name}.weight", f"{name}.bias"):
            g, u = g[t], u[t]
        diff.append((u - g / update.batch_size).flatten())
        ref.append(u.flatten())
    norm = float(torch.linalg.vector_norm(torch.cat(ref)))
    res = float(torch.linalg.vector_norm(torch.cat(diff)))
    return res / norm if norm > 0 else float("inf")
