"""Exclusively activated neurons (ExAN): whole batches from averaged gradients.

Pan, Zhang, Yan, Zhu and Yang, "Exploring the Security Boundary of Data Reconstruction
via Neuron Exclusivity Analysis", USENIX Security 2022 (arXiv 2010.13356).

Network: ``a_0 = x``, ``a_h = ReLU(W_h a_{h-1} + b_h)`` for the hidden layers ``h = 1..H``,
logits ``z = W_o a_H + b_o``, softmax cross-entropy. The loss vector of sample ``m`` is
``g^m = softmax(z^m) - onehot(y_m)``; the client sends gradients averaged over its batch of
``M`` samples, e.g. ``dl/dW_o = (1/M) sum_m g^m (a_H^m)^T``.

A ReLU unit is an **exclusively activated neuron** (ExAN) of sample ``m`` when it is active
for ``m`` and for no other sample of the batch. Then everything the averaged gradient
holds about that unit comes from ``m`` alone:

- its column of ``dl/dW_o`` is ``(1/M) a_{H,j}^m g^m``: parallel to ``m``'s loss vector;
- its row of the weight gradient below is ``(1/M) delta_j^m a_{h-1}^m``: parallel to ``m``'s
  input of that layer, whose zero pattern is ``m``'s activation pattern there;
- with a bias, the row divided by the bias gradient is ``a_{h-1}^m`` itself (Chapter 1's bias
  ratio, one sample at a time).

The attack (the paper's B.1-B.3 and its input recovery, made robust):

1. **B.1** Units of the last hidden layer whose output-gradient columns *and* weight-gradient
   rows are parallel (within a relative tolerance, compared as unit vectors, so nothing is
   divided by a gradient entry) form one sample's ExAN group. Groups of at least
   ``min_exans`` units are samples: their number estimates the batch size ``M`` and each
   group's column direction is that sample's loss-vector direction.
2. **B.2** The label is the one negative entry of the loss vector (``p_y - 1 < 0``, all
   other entries ``p_c >= 0``), for every class including the first.
3. **B.3** From the top down, the rows of a sample's ExANs give its activation pattern one
   layer lower; units active for that sample and for no other found sample are its ExANs
   there, checked again by parallel rows.
4. **Inputs.** With a bias in the first layer, the first-layer ExAN rows give the input by
   the bias ratio, exactly. Otherwise ``dl/dW_1 = (1/M) Delta X^T`` with ``Delta`` the
   samples' first-layer errors, so ``X^T`` follows from the pseudo-inverse of ``Delta``,
   which needs every sample's whole error vector (its pattern in every layer and its loss
   vector, known only up to a positive scale): each input comes out up to a positive factor.
   :func:`reconstruct` resolves it with an output bias or an ExAN bias where there is one, and
   for bias-free ReLU networks (``z(c x) = c z(x)``) from the softmax itself, whose shape
   fixes the logits' scale (``scale="softmax"``); ``scale="uniform"`` instead guesses it as
   the paper does, from a fixed loss-vector entry, and leaves the per-sample factor that the
   chapter measures.

For a CNN with a fully connected ReLU head, the head's input (the top conv layer's output)
is recovered per sample as above, then each conv layer per sample from its forward
equations (Chapter 3's linear systems; exact where the conv activations are invertible).

Samples without enough ExANs are reported, with the reason, and returned as zeros marked
undetermined: never as a mixture of the batch.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from torch import nn

from ..core import Reconstruction, Update
from ._common import check_model_update, check_rtol, layer_gradient, trace_leaves

__all__ = ["reconstruct", "group_exans", "loss_vector_ratios", "count_exans", "expected_exans", "Sample",
           "SCALES"]

#: How the bias-free pseudo-inverse fixes each sample's positive scale: ``"auto"`` (a bias if
#: the network has one, else the softmax), ``"softmax"``, ``"bias"``, or ``"uniform"`` (the
#: paper's kind of guess: the loss vector of a uniform prediction, ``|g_y| = 1 - 1/K``, and
#: the batch size found).
SCALES = ("auto", "softmax", "bias", "uniform")

_HINT = ("The ExAN attack needs a fully connected ReLU network (Linear -> ReLU -> ... -> Linear, "
         "e.g. leakutils.models.MLP(..., activation='relu')), optionally after conv layers "
         "(Conv2d -> activation -> ... -> Flatten), trained with softmax cross-entropy on the logits.")


@dataclass
class Sample:
    """What the attack found about one sample of the batch.

    Attributes
    ----------
    label : int
        Recovered label (the negative entry of the loss vector), in ``[0, K)``.
    loss_direction : torch.Tensor
        Unit loss-vector direction ``g / ||g||``, float64, shape ``(K,)``.
    exans : dict[str, torch.Tensor]
        Hidden-layer name to the int64 indices of this sample's ExANs found there (from the
        top layer down; a layer is missing when the chain stopped above it).
    status : str
        ``"recovered"`` or ``"not recoverable"``.
    reason : str
        Why not (empty when recovered).
    method : str
        How the input was obtained: ``"bias ratio"``, ``"pseudo-inverse"`` or ``""``.
    scale : float or None
        ``sigma = ||g|| / M``: the loss vector's length over the batch size, when known.
    found_by : str
        ``"B.1"`` (a group of ``min_exans`` parallel units) or ``"forward check"`` (a single
        verified ExAN, see ``verify`` in :func:`reconstruct`).
    """

    label: int
    loss_direction: torch.Tensor
    exans: dict = field(default_factory=dict)
    status: str = "not recoverable"
    reason: str = ""
    method: str = ""
    scale: float | None = None
    found_by: str = "B.1"


# --------------------------------------------------------------------------- the model


@dataclass
class _Net:
    hidden: list  # [(name, nn.Linear)] bottom to top: the FC layers followed by ReLU
    out_name: str
    out: nn.Linear
    convs: list  # conv.ConvLayer list (bottom to top), empty for an MLP
    feature_shape: tuple  # shape of the first FC layer's input, per sample


def _parse(model: nn.Module, input_shape: tuple) -> _Net:
    names = {id(m): n for n, m in model.named_modules()}
    order = [mod for mod, _, _ in trace_leaves(model, input_shape)]
    convs: list = []
    feature_shape = input_shape
    if any(isinstance(m, nn.Conv2d) for m in order):
        from .conv import _parse as parse_conv
        parsed = parse_conv(model, input_shape)
        convs = parsed.layers
        feature_shape = convs[-1].out_shape
        start = next(k for k, m in enumerate(order) if m is parsed.head)
        order = order[start:]
    seq = [m for m in order if not isinstance(m, (nn.Flatten, nn.Identity))
           and not (isinstance(m, nn.Dropout) and not m.training)]
    for m in seq:
        name = names.get(id(m), type(m).__name__)
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
                            + _HINT)
    hidden = []
    k = 0
    while k < len(seq):
        m = seq[k]
        name = names.get(id(m), type(m).__name__)
        if not isinstance(m, nn.Linear):
            raise TypeError(f"expected a Linear layer at {name!r}, found {type(m).__name__}. " + _HINT)
        if k == len(seq) - 1:
            break
        nxt = seq[k + 1]
        if not isinstance(nxt, nn.ReLU):
            raise TypeError(f"the layer after {name!r} is {type(nxt).__name__}; every hidden Linear layer must be "
                            f"followed by one ReLU. " + _HINT)
        hidden.append((name, m))
        k += 2
    if not seq or not isinstance(seq[-1], nn.Linear) or k != len(seq) - 1:
        raise TypeError("the model must end in a Linear layer that returns the logits. " + _HINT)
    if not hidden:
        raise ValueError("the model has no hidden ReLU layer, so no unit can be exclusively activated. " + _HINT)
    out = seq[-1]
    return _Net(hidden=hidden, out_name=names[id(out)], out=out, convs=convs, feature_shape=tuple(feature_shape))


# --------------------------------------------------------------------------- building blocks


def _unit(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``v`` scaled to unit length (rows of zeros stay zero) and their norms."""
    n = torch.linalg.vector_norm(v, dim=1)
    return v / torch.where(n > 0, n, torch.ones_like(n))[:, None], n


def _links(u: torch.Tensor, rtol: float, *, signed: bool) -> np.ndarray:
    """Boolean matrix: unit rows ``i, j`` within distance ``rtol`` (up to sign unless ``signed``)."""
    cos = u @ u.T
    if not signed:
        cos = cos.abs()
    # ||u_i - u_j||^2 = 2 - 2 cos: compare without a square root of a rounding error
    return (2.0 - 2.0 * cos <= rtol * rtol).numpy()


def _components(u: torch.Tensor, rtol: float, *, signed: bool) -> list[tuple[np.ndarray, bool]]:
    """Connected groups of rows of ``u`` linked within ``rtol``, each with whether it is a clique
    (all pairs linked: one direction, not a chain of near-misses)."""
    link = _links(u, rtol, signed=signed)
    n_comp, comp = connected_components(sp.csr_matrix(link), directed=False)
    out = []
    for c in range(n_comp):
        members = np.flatnonzero(comp == c)
        out.append((members, bool(link[np.ix_(members, members)].all())))
    return out


def _cliques(u: torch.Tensor, rtol: float, *, signed: bool, min_size: int) -> list[torch.Tensor]:
    """Index sets of rows of ``u`` that are all within ``rtol`` of each other (size >= min_size)."""
    return [torch.from_numpy(m) for m, clique in _components(u, rtol, signed=signed)
            if m.size >= min_size and clique]


def group_exans(columns: torch.Tensor, rows: torch.Tensor | None = None, *, rtol: float = 1e-5,
                min_size: int = 2) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Group units whose gradient vectors are parallel: the ExAN groups of B.1.

    Parameters
    ----------
    columns : torch.Tensor
        Shape ``(K, N)``: per unit ``j``, a vector that is positively proportional to one
        sample's loss vector when ``j`` is an ExAN (the columns of the output layer's weight
        gradient). Any float dtype; compared in float64.
    rows : torch.Tensor, optional
        Shape ``(N, D)``: per unit, a second vector that is proportional (either sign) to the
        sample's input of the layer (the rows of that layer's weight gradient, with the bias
        gradient appended). Units must agree in both to be grouped.
    rtol : float
        Two units are linked when their unit vectors differ by at most ``rtol`` in Euclidean
        norm (columns), respectively up to sign (rows). ``1e-5`` sits far above float32
        rounding (~1e-7) and far below the distance between different samples' vectors.
    min_size : int
        Smallest group returned as a sample (the paper needs 2: one unit alone cannot be told
        from a unit shared by several samples).

    Returns
    -------
    (groups, live) : (list of torch.Tensor, torch.Tensor)
        ``groups``: int64 unit indices per group, largest first (ties: lowest index first);
        ``live``: bool ``(N,)``, units with a non-zero column (and row). Units dead for the
        whole batch have zero gradients (0/0 for a ratio) and are masked out.

    Raises
    ------
    ValueError
        Mismatched shapes, a bad ``rtol`` or ``min_size``.
    """
    rtol = check_rtol(rtol)
    if not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    if columns.ndim != 2:
        raise ValueError(f"columns must have shape (K, N), got {tuple(columns.shape)}")
    cols = columns.detach().to(torch.float64).T  # (N, K)
    cu, cn = _unit(cols)
    live = cn > 0
    ru = None
    if rows is not None:
        if rows.ndim != 2 or rows.shape[0] != cols.shape[0]:
            raise ValueError(f"rows must have shape (N, D) with N = {cols.shape[0]}, got {tuple(rows.shape)}")
        ru, rn = _unit(rows.detach().to(torch.float64))
        live &= rn > 0
    idx = torch.nonzero(live).flatten()
    if idx.numel() == 0:
        return [], live
    groups = []
    for members in _cliques(cu[idx], rtol, signed=True, min_size=min_size):
        if ru is not None:  # split each column group by its rows
            sub = _cliques(ru[idx[members]], rtol, signed=False, min_size=min_size)
            groups.extend(idx[members[s]] for s in sub)
        else:
            groups.append(idx[members])
    groups.sort(key=lambda g: (-g.numel(), int(g[0])))
    return groups, live


def loss_vector_ratios(column: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The paper's ratio vector ``r_c = g_c / g_d`` of one gradient column, with a safe denominator.

    The denominator class ``d`` is the column's entry of largest magnitude (never a zero
    entry). For a loss vector that is the true class (``|p_y - 1| = sum_{c != y} p_c`` is the
    largest entry), so the ratio is ``1`` at the label and ``p_c / (p_y - 1) <= 0`` elsewhere:
    no division by zero, and no sign flip when the label is the first class (the reproduction
    of seed 000 divided by class 1 and took the argmin).

    Parameters
    ----------
    column : torch.Tensor
        Shape ``(K,)``, a column of the output layer's weight gradient.
    Returns
    -------
    (ratios, denominator) : (torch.Tensor float64 of shape (K,), int)

    Raises
    ------
    ValueError
        A column that is not one-dimensional, or zero.
    """
    if not isinstance(column, torch.Tensor):
        raise TypeError(f"column must be a tensor, got {type(column).__name__}")
    c = column.detach().to(torch.float64)
    if c.ndim != 1:
        raise ValueError(f"column must be one-dimensional (K,), got shape {tuple(c.shape)}")
    d = int(torch.argmax(c.abs()))
    if not float(c[d].abs()) > 0:
        raise ValueError("the column is zero (a unit that no sample activates): it has no ratio; mask it out")
    return c / c[d], d


def _loss_vectors(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``softmax(z) - onehot(labels)`` for logits ``z`` ``(n, K)``."""
    g = torch.softmax(z, 1)
    g[torch.arange(g.shape[0]), labels] -= 1.0
    return g


def _label(direction: torch.Tensor) -> tuple[int | None, str]:
    neg = torch.nonzero(direction < 0).flatten()
    if neg.numel() != 1:
        return None, (f"its loss-vector direction has {neg.numel()} negative entries; a loss vector "
                      f"softmax(z) - onehot(y) has exactly one")
    return int(neg[0]), ""


def _bias_ratios(G_h, Gb_h, units, rtol):
    """Per unit, its row of ``G_h`` over its bias gradient; units with a near-zero bias gradient dropped."""
    if units.numel() == 0:
        return units, G_h[:0]
    w = Gb_h[units]
    ok = w.abs() > rtol * float(Gb_h.abs().max())
    units = units[ok]
    return units, G_h[units] / w[ok, None]


def _verified_top(groups, live, G, Gb, W, bvec, T, rtol):
    """Add samples found from single ExANs of the last hidden layer, checked by a forward pass."""
    grouped = torch.zeros_like(live)
    for g in groups:
        grouped[g] = True
    units, cand = _bias_ratios(G[T], Gb[T], torch.nonzero(live & ~grouped).flatten(), rtol)
    if units.numel() == 0:
        return groups
    h = torch.relu(cand @ W[T].T + bvec[T])  # (n, N_T): the layer's output for each candidate input
    z = h @ W[T + 1].T + (bvec[T + 1] if bvec[T + 1] is not None else 0.0)
    col = _unit(G[T + 1][:, units].T)[0]  # (n, K)
    neg = col < 0
    one = neg.sum(1) == 1
    label = torch.argmax(neg.to(torch.int64), 1)
    g = _loss_vectors(z, label)
    rows = torch.arange(units.numel())
    close = torch.linalg.vector_norm(_unit(g)[0] - col, dim=1) <= rtol
    # and in size: column / bias gradient = h_j g / delta_j, with delta_j = (W_o^T g)_j (the 1/M cancels)
    delta = (g @ W[T + 1])[rows, units]
    lhs = G[T + 1][:, units].T / Gb[T][units, None]
    safe = delta.abs() > 0
    rhs = h[rows, units][:, None] * g / torch.where(safe, delta, torch.ones_like(delta))[:, None]
    sized = safe & (torch.linalg.vector_norm(lhs - rhs, dim=1) <= rtol * torch.linalg.vector_norm(lhs, dim=1))
    active = h[rows, units] > 0
    ok = one & close & sized & active
    units, cand = units[ok], cand[ok]
    if units.numel() == 0:
        return groups
    # one sample per distinct candidate; join an existing group whose own input agrees
    base = []
    for g_ in groups:
        u, c = _bias_ratios(G[T], Gb[T], g_, rtol)
        base.append(c.mean(0) if u.numel() else None)
    new = []
    for members in _cliques(_unit(cand)[0], rtol, signed=True, min_size=1):
        x = cand[members].mean(0)
        for k, b in enumerate(base):
            if b is not None and float(torch.linalg.vector_norm(x - b)) <= rtol * float(torch.linalg.vector_norm(b)):
                groups[k] = torch.cat([groups[k], units[members]])
                break
        else:
            new.append(units[members])
    new.sort(key=lambda g_: (-g_.numel(), int(g_[0])))
    return groups + new


def _forward_check(cand, G_h, Gb_h, W_h, b_h, target, rtol):
    """Units of ``cand`` whose bias-ratio input reproduces ``target`` (the layer's known output)."""
    units, inputs = _bias_ratios(G_h, Gb_h, cand, rtol)
    if units.numel() == 0:
        return units
    out = torch.relu(inputs @ W_h.T + b_h)
    err = torch.linalg.vector_norm(out - target, dim=1)
    return units[err <= rtol * float(torch.linalg.vector_norm(target))]


def _parallel_rows(R: torch.Tensor, cand: torch.Tensor, rtol: float, need: int):
    """Largest set of candidate rows parallel to each other (either sign)."""
    if cand.numel() == 0:
        return cand
    ru, rn = _unit(R[cand])
    ok = rn > 0
    cand, ru = cand[ok], ru[ok]
    if cand.numel() == 0:
        return cand
    members, clique = max(_components(ru, rtol, signed=False), key=lambda mc: mc[0].size)
    if members.size < need or not clique:
        return cand[:0]
    return cand[torch.from_numpy(members)]


# --------------------------------------------------------------------------- the attack


def reconstruct(model: nn.Module, update: Update, *, rtol: float = 1e-5, min_exans: int = 2,
                batch_size: int | None = None, verify: bool = True, peel: bool = True, max_rounds: int = 8,
                scale: str = "auto", dense_limit: int = 4096) -> Reconstruction:
    """Rebuild every sample of a batch from its averaged gradients through exclusively activated neurons.

    Parameters
    ----------
    model : nn.Module
        A fully connected ReLU network ``[Flatten] -> Linear -> ReLU -> ... -> Linear`` (logits,
        no softmax layer), or conv layers with activations, ``Flatten``, then such a head; with
        the weights the update was computed at (float32 or float64: the attack computes in
        float64). Softmax cross-entropy loss.
    update : Update
        The gradients averaged over the client's batch (:func:`leakutils.capture.client_update`).
        Its ``batch_size`` is **not** used: the attacker counts the samples.
    rtol : float
        Relative tolerance for "parallel": unit vectors within ``rtol`` of each other. The
        default ``1e-5`` works for float32 and float64 gradients.
    min_exans : int
        ExANs a sample needs in the last hidden layer to be told apart from units shared by
        several samples (2, as in the paper). Lower layers need 1 once the batch is known to be
        complete, else ``min_exans`` too.
    batch_size : int, optional
        The batch size, if the server knows it (FedSGD servers often set it). Used only to
        report how many samples were missed; the attack never needs it.
    verify : bool
        With biases in every hidden layer, also accept a **single** ExAN, checked by a forward
        pass (the attacker knows the weights): the bias ratio of its row is a candidate input
        of its layer, and it is accepted when that candidate, run forward, activates the unit
        and reproduces the sample's loss-vector direction (last hidden layer) or the sample's
        known activations one layer up (lower layers), within ``rtol``. A unit shared
        by several samples gives a blend of their inputs, which fails the check. False: the
        paper's procedure only (groups of ``min_exans`` parallel units, then exclusion of the
        other samples' patterns).
    peel : bool
        Once some samples are rebuilt exactly, the attacker knows their own gradients (it has
        the weights) and the batch size ``M`` (every ExAN column is ``(1/M) h_j(x) g(x)``, all of
        it computable from the rebuilt ``x``). Subtracting them, ``M G - sum_known grad(x_m)``,
        leaves the gradient of the samples still unknown, where units shared only with known
        samples have become exclusive; the attack runs again on that remainder, up to
        ``max_rounds`` times (for a CNN, with the samples whose conv layers were solved). False:
        one pass.
    max_rounds : int
        Most peeling rounds.
    scale : {"auto", "softmax", "bias", "uniform"}
        How the bias-free route fixes each input's positive factor (see :data:`SCALES`).
        Unused when the first layer has a bias and the sample has a first-layer ExAN.
    dense_limit : int
        Passed to the conv-layer solver of Chapter 3 (CNNs only).

    Returns
    -------
    Reconstruction
        ``images`` float64 of shape ``(M_found, *update.input_shape)``, one per sample found, in
        the data's own range; samples that could not be recovered are zeros. ``labels`` int64
        ``(M_found,)``. ``determined``: all True for a recovered sample of an MLP, all False for
        one that was not; for CNNs, the pixels the conv layers' equations fix. ``diagnostics``:

        - ``batch_size``: ``M`` read off the ExAN columns once a sample is rebuilt (an integer
          check of the whole analysis), else the number of samples found; ``batch_size_from``
          says which; ``found``: samples listed (``M_found``); ``batch_size_complete``: True if
          every sample was rebuilt (with ``M`` known) or the found loss vectors explain every
          column of the output gradient, False if not, None when that cannot be checked
          (``M_found >= K - 1`` without ``M``); ``missed``: ``batch_size`` minus the samples
          rebuilt, when ``batch_size`` is given;
        - ``recovered``: bool ``(M_found,)``; ``samples``: list of :class:`Sample`;
        - ``live_units``, ``dead_units``, ``grouped_units`` (last hidden layer);
          ``found_by_b1``, ``found_by_check``, ``found_by_peeling``: samples found by B.1 groups,
          by single verified ExANs (first pass) and after peeling; ``peeling_rounds``;
        - ``layers``: hidden-layer names, bottom to top; ``exans``: per sample, per layer, the
          number of ExANs found;
        - ``pseudo_inverse``: ``rank``, ``condition``, ``residual`` of ``Delta`` when used;
        - ``conv``: per sample, Chapter 3's per-layer diagnostics (CNNs only);
        - ``rtol``, ``dtype`` ("float64"), ``seconds``.

    Raises
    ------
    TypeError
        Wrong argument types; a module the attack does not support (an activation other than
        ReLU in the fully connected part, dropout in training mode, pooling or normalisation).
    ValueError
        No hidden ReLU layer; a softmax layer at the end; a gradient that is not from softmax
        cross-entropy (output-gradient columns that do not sum to zero); gradients missing, of
        the wrong shape, or not finite; bad ``rtol``, ``min_exans``, ``batch_size`` or ``scale``.

    References
    ----------
    Pan et al., "Exploring the Security Boundary of Data Reconstruction via Neuron
    Exclusivity Analysis", USENIX Security 2022 (arXiv 2010.13356); Phong et al. 2018 (bias
    ratio); Zhu & Blaschko, "R-GAP", ICLR 2021 (forward equations of conv layers).
    """
    t0 = time.perf_counter()
    check_model_update(model, update)
    rtol = check_rtol(rtol)
    if not isinstance(min_exans, int) or isinstance(min_exans, bool) or min_exans < 1:
        raise ValueError(f"min_exans must be a positive integer (2 in the paper), got {min_exans!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None (unknown), got {batch_size!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not isinstance(max_rounds, int) or max_rounds < 0:
        raise ValueError(f"max_rounds must be a non-negative integer, got {max_rounds!r}")
    net = _parse(model, tuple(update.input_shape))
    H = len(net.hidden)
    layers = net.hidden + [(net.out_name, net.out)]
    W = [lin.weight.detach().to(torch.float64) for _, lin in layers]
    bvec = [lin.bias.detach().to(torch.float64) if lin.bias is not None else None for _, lin in layers]
    G = [layer_gradient(update, f"{n}.weight", lin.weight) for n, lin in net.hidden] + \
        [layer_gradient(update, f"{net.out_name}.weight", net.out.weight)]
    Gb = [layer_gradient(update, f"{n}.bias", lin.bias) if lin.bias is not None else None for n, lin in layers]
    Gout = G[H]
    K = Gout.shape[0]
    if K < 2:
        raise ValueError("the output layer must have at least 2 logits for softmax cross-entropy")
    scale_ref = float(Gout.abs().max())
    if scale_ref == 0.0:
        raise ValueError("the output layer's gradient is zero (a loss of exactly zero, or every last-layer unit "
                         "dead): there is nothing to attack")
    # every loss vector softmax - onehot sums to zero, so does every column (checked in total, so that
    # noise added by a defence does not trip it)
    col_sums = float(Gout.sum().abs() / Gout.abs().sum())
    if col_sums > 1e-3:
        raise ValueError(
            f"the columns of the output layer's gradient do not sum to zero (relative {col_sums:.1e}): the "
            f"loss is not softmax cross-entropy on the logits, which the ExAN attack assumes")

    an = _analyse(net, model, W, bvec, G, Gb, rtol, min_exans, verify, scale)
    found_first = len(an.samples)
    M_est, rounds = None, 0
    found = _Found(list(an.samples), an.X, an.recovered, *_inputs(net, update, an.X, an.recovered, rtol, dense_limit))
    if peel and bool(an.recovered.any()):
        M_est = _batch_size(net, W, bvec, G[H], an, rtol)
        last = an
        while M_est is not None and rounds < max_rounds:
            known = torch.nonzero(found.recovered & found.determined.flatten(1).all(1)).flatten()
            if known.numel() == 0 or known.numel() >= M_est:
                break
            Gr, Gbr = _residual(net, model, G, Gb, M_est, found.images[known],
                                [found.samples[k].label for k in known])
            nxt = _analyse(net, model, W, bvec, Gr, Gbr, rtol, min_exans, verify, scale)
            rounds += 1
            last = nxt
            new = [k for k in torch.nonzero(nxt.recovered).flatten().tolist()
                   if not _seen(nxt.X[k], found.X[found.recovered])]
            if not new:
                break
            for k in new:
                nxt.samples[k].found_by = f"peeling (round {rounds}): " + nxt.samples[k].found_by
            ok = torch.ones(len(new), dtype=torch.bool)
            found = found.take(torch.nonzero(found.recovered).flatten().tolist()) + _Found(
                [nxt.samples[k] for k in new], nxt.X[new], ok, *_inputs(net, update, nxt.X[new], ok, rtol, dense_limit))
        if rounds:  # samples the last remainder still shows but could not rebuild
            rest = [k for k in range(len(last.samples)) if not last.recovered[k]
                    and not any(_same_sample(last.samples[k], s) for s in found.samples)]
            found = found + _Found.unrecovered([last.samples[k] for k in rest], last.X[rest], found)
    complete = an.complete
    if M_est is not None:
        complete = int((found.recovered & found.determined.flatten(1).all(1)).sum()) == M_est
        if complete:  # every sample rebuilt: the rest were not samples
            found = found.take(torch.nonzero(found.recovered).flatten().tolist())
    samples, recovered, images, determined, conv_info = (found.samples, found.recovered, found.images,
                                                         found.determined, found.conv)
    Mf = len(samples)

    for m, s in enumerate(samples):
        if not recovered[m] and not s.reason:
            s.reason = "no ExAN in the first layer, and the batch is not fully explained for the pseudo-inverse"
    diagnostics = {
        "batch_size": M_est if M_est is not None else Mf,
        "batch_size_from": "the 1/M factor of the ExAN columns" if M_est is not None else "samples found",
        "batch_size_complete": complete, "found": Mf,
        "missed": None if batch_size is None else batch_size - int(recovered.sum()),
        "recovered": recovered, "samples": samples,
        "live_units": int(an.live.sum()), "dead_units": int((~an.live).sum()), "grouped_units": an.grouped,
        "found_by_b1": an.n_paper, "found_by_check": found_first - an.n_paper,
        "found_by_peeling": sum(s.found_by.startswith("peeling") for s in samples), "peeling_rounds": rounds,
        "layers": [n for n, _ in net.hidden],
        "exans": [[int(s.exans[n].numel()) if n in s.exans else 0 for n, _ in net.hidden] for s in samples],
        "pseudo_inverse": an.pinv_info, "conv": conv_info,
        "rtol": rtol, "dtype": "float64", "seconds": time.perf_counter() - t0,
    }
    labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
    return Reconstruction(images=images, labels=labels, determined=determined, diagnostics=diagnostics,
                          attack="exan")


def _head_forward(W, bvec, feats):
    """The fully connected part in float64: (last hidden layer's output, logits) for flat features."""
    a = feats
    for Wh, bh in zip(W[:-1], bvec[:-1]):
        a = torch.relu(a @ Wh.T + (bh if bh is not None else 0.0))
    return a, a @ W[-1].T + (bvec[-1] if bvec[-1] is not None else 0.0)


def _batch_size(net, W, bvec, Gout, an, rtol):
    """M from rebuilt samples: an ExAN column j of sample m is (1/M) h_j(x_m) g(x_m)."""
    T = len(net.hidden) - 1
    top = net.hidden[T][0]
    idx = [m for m in range(len(an.samples)) if an.recovered[m] and top in an.samples[m].exans]
    if not idx:
        return None
    h, z = _head_forward(W, bvec, an.X[idx])
    g = _loss_vectors(z, torch.tensor([an.samples[m].label for m in idx]))
    estimates = []
    for k, m in enumerate(idx):
        E = an.samples[m].exans[top]
        pred = h[k, E][None, :] * g[k][:, None]  # (K, |E|)
        den = float((pred * pred).sum())
        if den > 0:
            estimates.append(float((pred * Gout[:, E]).sum()) / den)  # = 1/M
    inv = [1.0 / e for e in estimates if e > 0]
    if not inv:
        return None
    M = round(float(np.median(inv)))
    tol = max(1e-3, 100 * rtol)
    if M < 1 or any(abs(v - M) > tol * M for v in inv):
        return None  # the samples disagree: do not build on it
    return M


def _seen(x, X_known, tol=1e-6):
    """Whether ``x`` equals (within ``tol`` relative) a row of ``X_known``."""
    if X_known.shape[0] == 0:
        return False
    d = torch.linalg.vector_norm(X_known - x, dim=1)
    return bool((d <= tol * torch.linalg.vector_norm(x).clamp_min(1e-300)).any())


def _same_sample(a: Sample, b: Sample, tol: float = 1e-6) -> bool:
    """Two reports of one sample: the same label and loss-vector direction."""
    return a.label == b.label and float(torch.linalg.vector_norm(a.loss_direction - b.loss_direction)) <= tol


def _inputs(net, update, X, recovered, rtol, dense_limit):
    """Model inputs from the fully connected part's inputs: reshape (MLP) or the conv layers (CNN)."""
    M = X.shape[0]
    shape = tuple(update.input_shape)
    if net.convs:
        return _conv_part(net, update, X, recovered, rtol, dense_limit)
    images = X.reshape(M, *shape)
    determined = recovered.reshape(M, *([1] * len(shape))).expand_as(images).clone()
    return images * determined, determined, None


def _residual(net, model, G, Gb, M, images, labels):
    """M G - the known samples' own gradients: the summed gradient of the samples still unknown."""
    from ..capture import client_update
    m64 = copy.deepcopy(model).double()
    up = client_update(m64, images, torch.tensor(labels, dtype=torch.int64))
    k = len(labels)
    names = [n for n, _ in net.hidden] + [net.out_name]
    Gr = [M * G[i] - k * up.gradients[f"{n}.weight"] for i, n in enumerate(names)]
    Gbr = [None if Gb[i] is None else M * Gb[i] - k * up.gradients[f"{n}.bias"] for i, n in enumerate(names)]
    return Gr, Gbr


@dataclass
class _Found:
    """The samples found so far, with their parallel records (one entry per sample)."""

    samples: list
    X: torch.Tensor  # inputs of the fully connected part
    recovered: torch.Tensor
    images: torch.Tensor
    determined: torch.Tensor
    conv: list | None  # Chapter 3's per-layer diagnostics per sample (CNNs only)

    def take(self, idx: list) -> "_Found":
        return _Found([self.samples[k] for k in idx], self.X[idx], self.recovered[idx], self.images[idx],
                      self.determined[idx], None if self.conv is None else [self.conv[k] for k in idx])

    def __add__(self, other: "_Found") -> "_Found":
        return _Found(self.samples + other.samples, torch.cat([self.X, other.X]),
                      torch.cat([self.recovered, other.recovered]), torch.cat([self.images, other.images]),
                      torch.cat([self.determined, other.determined]),
                      None if self.conv is None else self.conv + other.conv)

    @staticmethod
    def unrecovered(samples: list, X: torch.Tensor, like: "_Found") -> "_Found":
        """Samples reported as not recoverable: zero images, nothing determined."""
        n = len(samples)
        return _Found(samples, X, torch.zeros(n, dtype=torch.bool),
                      torch.zeros(n, *like.images.shape[1:], dtype=like.images.dtype),
                      torch.zeros(n, *like.determined.shape[1:], dtype=torch.bool),
                      None if like.conv is None else [None] * n)


@dataclass
class _Analysis:
    samples: list
    X: torch.Tensor
    recovered: torch.Tensor
    live: torch.Tensor
    grouped: int
    n_paper: int
    complete: bool | None
    pinv_info: dict | None


def _analyse(net, model, W, bvec, G, Gb, rtol, min_exans, verify, scale) -> _Analysis:
    """B.1-B.3 and the inputs of the fully connected part, from one set of (residual) gradients."""
    H = len(net.hidden)
    Gout = G[H]
    K = Gout.shape[0]
    # ---- B.1: ExAN groups of the last hidden layer -> samples, batch size, loss directions
    T = H - 1  # index of the last hidden layer
    biased = all(g is not None for g in Gb[:H])
    top_rows = G[T] if Gb[T] is None else torch.cat([G[T], Gb[T][:, None]], 1)
    groups, live = group_exans(Gout, top_rows, rtol=rtol, min_size=min_exans)
    n_paper = len(groups)
    if verify and biased:
        groups = _verified_top(groups, live, G, Gb, W, bvec, T, rtol)
    samples: list[Sample] = []
    ex_sets: list[dict] = []
    for k, grp in enumerate(groups):
        d = _unit(Gout[:, grp].T)[0].mean(0)
        d = d / torch.linalg.vector_norm(d)
        label, why = _label(d)
        s = Sample(label=-1 if label is None else label, loss_direction=d,
                   exans={net.hidden[T][0]: grp}, found_by="B.1" if k < n_paper else "forward check")
        if label is None:
            s.reason = why
        samples.append(s)
        ex_sets.append({T: grp})
    Mf = len(samples)
    D = torch.stack([s.loss_direction for s in samples], 1) if Mf else torch.zeros(K, 0, dtype=torch.float64)
    # completeness: do the found loss vectors explain every live column?
    complete = None
    coeff = None
    if Mf and Mf < K - 1:
        coeff = torch.linalg.lstsq(D, Gout).solution  # (Mf, N): a_{H,j}^m sigma_m where unit j is active for m
        res = torch.linalg.vector_norm(Gout - D @ coeff, dim=0)
        complete = bool((res <= 10 * rtol * torch.linalg.vector_norm(Gout, dim=0)).all())
    elif Mf == 0:
        complete = False

    # loss-vector scale sigma_m = ||g^m|| / M from the ExAN bias gradients of the last hidden layer
    for m, s in enumerate(samples):
        if Gb[T] is not None and s.label >= 0:
            grp = ex_sets[m][T]
            v = W[H].T[grp] @ s.loss_direction  # (W_o^T d)_j
            ok = v.abs() > rtol * v.abs().max()
            if ok.any():
                s.scale = float((Gb[T][grp][ok] @ v[ok]) / (v[ok] @ v[ok]))

    # ---- B.3: activation patterns downwards
    patterns: list[dict] = [dict() for _ in samples]  # hidden layer h -> bool mask of m's active units
    acts_: list[dict] = [dict() for _ in samples]  # hidden layer h -> m's activation vector (with biases)
    if coeff is not None and complete:
        tol = rtol * torch.linalg.vector_norm(Gout, dim=0)
        for m in range(Mf):
            patterns[m][T] = coeff[m] > tol
    alive = [s.label >= 0 for s in samples]
    for h in range(T, 0, -1):  # layer h's ExAN rows give layer h-1's pattern (and activations)
        for m in range(Mf):
            if not alive[m] or h not in ex_sets[m]:
                continue
            rows = G[h][ex_sets[m][h]]
            patterns[m][h - 1] = (rows != 0).any(0)
            if Gb[h] is not None:
                w = Gb[h][ex_sets[m][h]]
                if float(w @ w) > 0:
                    acts_[m][h - 1] = (w @ rows) / (w @ w)
        known = [m for m in range(Mf) if alive[m] and (h - 1) in patterns[m]]
        all_known = complete is True and len(known) == Mf
        R = G[h - 1] if Gb[h - 1] is None else torch.cat([G[h - 1], Gb[h - 1][:, None]], 1)
        for m in known:
            cand = torch.nonzero(patterns[m][h - 1]).flatten()
            if verify and biased and (h - 1) in acts_[m]:
                chosen = _forward_check(cand, G[h - 1], Gb[h - 1], W[h - 1], bvec[h - 1], acts_[m][h - 1], rtol)
            else:
                others = torch.zeros_like(patterns[m][h - 1])
                for m2 in known:
                    if m2 != m:
                        others |= patterns[m2][h - 1]
                cand = torch.nonzero(patterns[m][h - 1] & ~others).flatten()
                chosen = _parallel_rows(R, cand, rtol, 1 if all_known else min_exans)
                if all_known and chosen.numel() != cand.numel():
                    chosen = cand[:0]  # exclusive by construction: rows that disagree mean a wrong pattern
            if chosen.numel():
                ex_sets[m][h - 1] = chosen
                samples[m].exans[net.hidden[h - 1][0]] = chosen
    for m, s in enumerate(samples):
        for h in range(T, 0, -1):
            if alive[m] and h - 1 not in ex_sets[m] and h in ex_sets[m] and not s.reason:
                s.reason = f"no ExAN found in layer {net.hidden[h - 1][0]!r}"

    # ---- inputs of the fully connected part
    Dfeat = math.prod(net.feature_shape)
    X = torch.zeros(Mf, Dfeat, dtype=torch.float64)
    recovered = torch.zeros(Mf, dtype=torch.bool)
    for m, s in enumerate(samples):
        if s.label < 0 or Gb[0] is None or 0 not in ex_sets[m]:
            continue
        grp = ex_sets[m][0]
        w, R = Gb[0][grp], G[0][grp]
        ww = float(w @ w)
        if ww <= (rtol * float(Gb[0].abs().max())) ** 2:
            continue
        X[m] = (w @ R) / ww
        recovered[m] = True
        s.status, s.method, s.reason = "recovered", "bias ratio", ""
    pinv_info = None
    todo = [m for m in range(Mf) if not recovered[m] and samples[m].label >= 0]
    if todo:
        X, recovered, pinv_info = _pseudo_inverse(net, model, W, G, Gb, samples, patterns, ex_sets, complete,
                                                  X, recovered, todo, scale, rtol)
    # every rebuilt input must reproduce its own loss-vector direction when run forward: a group of
    # units shared by two samples with nearly equal loss vectors (same label) gives a blend, which fails
    # (not for scale="uniform", whose guessed brightness changes the softmax on purpose)
    idx = torch.tensor([m for m in torch.nonzero(recovered).flatten().tolist()
                        if not (samples[m].method == "pseudo-inverse" and scale == "uniform")], dtype=torch.int64)
    if idx.numel():
        _, z = _head_forward(W, bvec, X[idx])
        g = _loss_vectors(z, torch.tensor([samples[m].label for m in idx.tolist()]))
        dirs = torch.stack([samples[m].loss_direction for m in idx.tolist()])
        err = torch.linalg.vector_norm(_unit(g)[0] - dirs, dim=1)
        for k, m in enumerate(idx.tolist()):
            if float(err[k]) > 10 * rtol:
                recovered[m] = False
                X[m] = 0.0
                s_ = samples[m]
                s_.status, s_.method = "not recoverable", ""
                s_.reason = (f"its rebuilt input does not reproduce its loss vector (off by {float(err[k]):.1e}): "
                             f"the units taken for its ExANs are shared by several samples")
    return _Analysis(samples=samples, X=X, recovered=recovered, live=live,
                     grouped=int(sum(g.numel() for g in groups)), n_paper=n_paper, complete=complete,
                     pinv_info=pinv_info)


def _errors(W, patterns_m, direction, H):
    """First-layer error direction u^m = D_1 W_2^T D_2 ... W_o^T d (per unit loss vector)."""
    u = W[H].T @ direction
    for h in range(H - 1, 0, -1):
        u = W[h].T @ (u * patterns_m[h])
    return u * patterns_m[0]


def _pseudo_inverse(net, model, W, G, Gb, samples, patterns, ex_sets, complete, X, recovered, todo, scale, rtol):
    H = len(net.hidden)
    Mf = len(samples)
    info = {"used": False, "reason": ""}
    full = [m for m in range(Mf) if all(h in patterns[m] for h in range(H)) and samples[m].label >= 0]
    if complete is not True or len(full) != Mf:
        why = ("the found samples do not explain the whole output gradient (a sample was missed or the loss "
               "vectors are not independent: needs fewer than K - 1 samples)" if complete is not True else
               "a sample's activation pattern is unknown in some layer")
        info["reason"] = why
        for m in todo:
            if not samples[m].reason:
                samples[m].reason = "no first-layer ExAN with a bias, and no pseudo-inverse: " + why
        return X, recovered, info
    U = torch.stack([_errors(W, patterns[m], samples[m].loss_direction, H) for m in range(Mf)], 1)  # (N1, Mf)
    rhs = G[0] if Gb[0] is None else torch.cat([G[0], Gb[0][:, None]], 1)
    sv = torch.linalg.svdvals(U)
    rank = int((sv > sv[0] * 1e-10).sum()) if sv.numel() and sv[0] > 0 else 0
    cond = float(sv[0] / sv[-1]) if rank == Mf else float("inf")
    info.update(used=True, rank=rank, condition=cond, samples=Mf)
    if rank < Mf:
        info["reason"] = f"Delta has rank {rank} < {Mf}: the first-layer errors do not separate the samples"
        for m in todo:
            samples[m].reason = info["reason"]
        return X, recovered, info
    Y = torch.linalg.lstsq(U, rhs).solution  # (Mf, D[+1]): sigma_m [x_m, 1]
    res = float(torch.linalg.vector_norm(rhs - U @ Y) / torch.linalg.vector_norm(rhs).clamp_min(1e-300))
    info["residual"] = res
    if res > 100 * rtol:
        info["reason"] = f"the first layer's gradient is not explained by the samples (residual {res:.1e})"
        for m in todo:
            samples[m].reason = info["reason"]
        return X, recovered, info
    for m in todo:
        s = samples[m]
        if Gb[0] is not None:
            den = float(Y[m, -1])
            if abs(den) <= rtol * float(Y[:, -1].abs().max()):
                s.reason = "its bias coordinate in the pseudo-inverse is zero"
                continue
            X[m] = Y[m, :-1] / den
            s.scale = den
        else:
            x, sigma, why = _fix_scale(net, model, W, Gb, samples, m, Y[m], scale, Mf)
            if x is None:
                s.reason = why
                continue
            X[m] = x
            s.scale = sigma
        recovered[m] = True
        s.status, s.method, s.reason = "recovered", "pseudo-inverse", ""
    return X, recovered, info


def _fix_scale(net, model, W, Gb, samples, m, y, scale, Mf):
    """Resolve y = sigma_m x_m for one sample of the bias-free route."""
    s = samples[m]
    K = s.loss_direction.numel()
    mode = scale
    if mode == "auto":
        mode = "bias" if s.scale is not None else "softmax"
    if mode == "bias":
        if s.scale is None:
            return None, None, "scale='bias' but no ExAN bias gradient fixes this sample's loss-vector length"
        return y / s.scale, s.scale, ""
    if mode == "uniform":
        sigma = (1 - 1 / K) / abs(float(s.loss_direction[s.label])) / Mf
        return y / sigma, sigma, ""
    # softmax: logits of a bias-free ReLU network scale with the input, z(c x) = c z(x)
    if any(lin.bias is not None for _, lin in net.hidden) or net.out.bias is not None or net.convs:
        return None, None, "scale='softmax' needs a bias-free ReLU network (positively homogeneous)"
    with torch.no_grad():
        p = next(model.parameters())
        z = model(y.reshape(1, -1).to(p.dtype).reshape(1, *net.feature_shape)).double()[0]
    d = s.loss_direction
    keep = [c for c in range(K) if c != s.label and float(d[c]) > 0]
    if len(keep) < 2:
        return None, None, "the loss vector has fewer than two non-zero non-label entries to read the softmax from"
    zc = z[keep]
    lc = torch.log(d[keep])
    zc0, lc0 = zc - zc.mean(), lc - lc.mean()
    den = float(zc0 @ zc0)
    if den <= 1e-24 * max(1.0, float(zc @ zc)):
        return None, None, "the logits of the rebuilt direction are all equal: the softmax does not fix the scale"
    kappa = float(zc0 @ lc0) / den  # log p_c = kappa z_c + const, c != y
    if not kappa > 0:
        return None, None, f"the softmax fit gave a non-positive scale ({kappa:.3g})"
    return y * kappa, 1.0 / kappa, ""


def _conv_part(net, update, X, recovered, rtol, dense_limit):
    from .conv import _invert_layer
    Mf = X.shape[0]
    shape = tuple(update.input_shape)
    images = torch.zeros(Mf, *shape, dtype=torch.float64)
    determined = torch.zeros(Mf, *shape, dtype=torch.bool)
    info = []
    top = net.convs[-1]
    for m in range(Mf):
        if not recovered[m]:
            info.append(None)
            continue
        Xm = X[m].reshape(top.out_shape)
        known = torch.ones(top.out_shape, dtype=torch.bool)
        gX = torch.zeros(top.out_shape, dtype=torch.float64)
        g_known = torch.zeros(top.out_shape, dtype=torch.bool)
        layers = []
        for L in reversed(net.convs):
            t = time.perf_counter()
            Xm, known, gX, g_known, li = _invert_layer(L, update, Xm, known, gX, g_known, "forward", 1e-10,
                                                       dense_limit)
            li.update(layer=L.name, determined=float(known.double().mean()), seconds=time.perf_counter() - t)
            layers.append(li)
        images[m] = Xm.reshape(shape)
        determined[m] = known.reshape(shape)
        info.append(layers)
    return images, determined, info


# --------------------------------------------------------------------------- ground truth (teaching)


def count_exans(model: nn.Module, x: torch.Tensor) -> dict:
    """Count each sample's ExANs in every ReLU layer from the true batch (what the attacker cannot see).

    Parameters
    ----------
    model : nn.Module
        Any network with ``nn.ReLU`` modules (each is one layer of units).
    x : torch.Tensor
        The batch ``(M, *input_shape)``, the model's dtype.

    Returns
    -------
    dict
        ReLU module name to a dict with ``exans`` (int64 ``(M,)``: units active for that
        sample alone), ``active`` (bool ``(M, N)``, flattened units) and ``p`` (the fraction of
        (sample, unit) pairs active, in [0, 1]).

    Raises
    ------
    TypeError
        ``model`` or ``x`` of the wrong type.
    ValueError
        A model without ``nn.ReLU`` modules.
    """
    if not isinstance(model, nn.Module) or not isinstance(x, torch.Tensor):
        raise TypeError("count_exans(model, x) takes an nn.Module and a tensor batch")
    relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("the model has no nn.ReLU module: exclusivity is defined for ReLU units")
    seen: dict = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o.detach().flatten(1) > 0))
             for n, m in relus]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, _ in relus:
        act = seen[n]
        excl = act & (act.sum(0, keepdim=True) == 1)
        out[n] = {"exans": excl.sum(1).to(torch.int64), "active": act, "p": float(act.double().mean())}
    return out


def expected_exans(width: int, p: float, batch_size: int) -> float:
    """The simple estimate ``N p (1 - p)^(M - 1)`` of one sample's ExANs in a layer of ``N`` units.

    Assumes every unit is active with probability ``p`` independently for every sample. It
    is largest at ``p = 1/M``, where it is about ``N / (e M)``.

    Parameters
    ----------
    width : int
        ``N``, units in the layer (>= 1).
    p : float
        Activation probability in [0, 1].
    batch_size : int
        ``M`` (>= 1).

    Raises
    ------
    ValueError
        Out-of-range arguments.
    """
    if not isinstance(width, int) or width < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("width and batch_size must be positive integers")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    return width * float(p) * (1.0 - float(p)) ** (batch_size - 1)
