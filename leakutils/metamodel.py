"""Learned weight extraction: a meta-model that maps a black box's outputs to its weights.

The attacker knows the architecture of the target, here a one-hidden-layer ReLU network
``f(x) = A ReLU(W x + b) + c`` (784-64-10 on MNIST in seed 004), but not its weights. It
trains a *population* of white-box networks of that architecture itself, each from its
own seed, records their outputs on a fixed *query set*, and trains a *meta-model* (the
"reverse model" of seed 004) that maps those outputs to the flattened weights. At attack
time the target is queried on the same set and the meta-model predicts its weights.

Three metrics compare predicted and true weights (seed 004): the average absolute error
(AAE), the average absolute percentage error (AAPE; denominators below ``eps`` are raised
to ``eps``) and the accuracy difference ``|acc(true) - acc(predicted)|`` on held-out
images. Hidden units can be permuted without changing the function, so the weights are
also compared after aligning the predicted units to the true ones (scipy's linear sum
assignment); the accuracy difference does not change under alignment.

The "prediction similarity" loss of seed 004 asks the predicted network to reproduce the
target's outputs on the queries. In the seed's code it was computed outside the autograd
graph and so had no effect; here it is part of the graph (``similarity > 0``), and the
seed's version can be reproduced with ``detach_similarity=True`` to show that it changes
nothing.

Reference: Oh, Augustin, Fritz, Schiele, "Towards Reverse-Engineering Black-Box Neural
Networks", ICLR 2018 (meta-models over a population of white-box networks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from tqdm.auto import tqdm

from .flatnets import (Sizes, accuracy, as_sizes, check_weights, check_xy, flatten, forward, init_population,
                       to_model, unflatten)
from .validate import check_int

__all__ = ["Sizes", "Population", "train_population", "init_population", "unflatten", "flatten", "forward",
           "to_model", "MetaModel", "train_metamodel", "aae", "aape", "accuracy", "accuracy_difference",
           "align_units", "canonical_order", "scores", "similarity_loss", "AAPE_EPS"]

AAPE_EPS = 1e-3
"""Floor of the AAPE's denominator: ``|w_hat - w| / max(|w|, AAPE_EPS)``. PyTorch's default
initialisation draws first-layer weights of a 784-input layer uniformly from about
``[-0.036, 0.036]``, so 1e-3 only touches the 3% of weights closest to zero."""


@dataclass
class Population:
    """White-box networks of one architecture with their outputs on the query set.

    Attributes
    ----------
    weights : torch.Tensor
        ``(P, n_params)`` float32 flattened weights (see :class:`Sizes`).
    outputs : torch.Tensor
        ``(P, Q, K)`` float32 logits on the query set.
    accuracy : torch.Tensor
        ``(P,)`` float64 accuracy in ``[0, 1]`` on the test images given to
        :func:`train_population` (NaN without them).
    seeds : list of int
        Each network's seed (its initialisation and its order of training batches).
    sizes : Sizes
    queries : torch.Tensor
        ``(Q, D)`` float32 query inputs.
    info : dict
        Training settings.
    """

    weights: torch.Tensor
    outputs: torch.Tensor
    accuracy: torch.Tensor
    seeds: list
    sizes: Sizes
    queries: torch.Tensor
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    def subset(self, index) -> "Population":
        """The networks at ``index`` (a slice, list or tensor of indices)."""
        idx = torch.arange(len(self))[index]
        return Population(self.weights[idx], self.outputs[idx], self.accuracy[idx],
                          [self.seeds[i] for i in idx.tolist()], self.sizes, self.queries, dict(self.info))




def train_population(n_nets: int, images, labels, queries, *, sizes=Sizes(), epochs: int = 1, lr: float = 1e-3,
                     batch_size: int = 100, seed: int = 0, test=None, progress: bool = False) -> Population:
    """Train ``n_nets`` white-box networks, each from its own seed, all at once.

    Network ``p`` (seed ``seed + p``) starts from PyTorch's default initialisation and runs
    ``epochs`` epochs of Adam (``lr``, batches of ``batch_size`` in its own random order) on
    the cross-entropy of ``(images, labels)``, as in seed 004 (one epoch, Adam 1e-3, batch
    100). The networks are stacked into one tensor and trained together: the loss is the
    sum of their losses, so each network receives exactly its own gradient, and Adam works
    entry by entry, so every network follows the same path as if trained alone.

    Parameters
    ----------
    n_nets : int
    images, labels : torch.Tensor
        ``(n, D)`` or ``(n, C, H, W)`` float in ``[0, 1]``; ``(n,)`` int64 in ``[0, K)``.
    queries : torch.Tensor
        ``(Q, D)`` (or images): the fixed query set whose logits are recorded.
    sizes : Sizes or (D, N, K)
    epochs, lr, batch_size, seed : training settings.
    test : (images, labels), optional
        Held-out images for each network's accuracy.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    Population

    Raises
    ------
    TypeError
        Counts that are not integers.
    ValueError
        Non-positive counts, inputs of the wrong size, labels outside ``[0, K)``.
    """
    s = as_sizes(sizes)
    n_nets, epochs, batch_size = (check_int(name, v, 1) for name, v in
                                  (("n_nets", n_nets), ("epochs", epochs), ("batch_size", batch_size)))
    x, y = check_xy(images, labels, s.D, "training images")
    if y.min() < 0 or y.max() >= s.K:
        raise ValueError(f"labels must lie in [0, {s.K}), got {int(y.min())}..{int(y.max())}")
    q = torch.as_tensor(queries).reshape(len(queries), -1).float()
    if q.shape[1] != s.D:
        raise ValueError(f"queries have {q.shape[1]} features, the networks expect D = {s.D}")
    seeds = [seed + p for p in range(n_nets)]
    flat = init_population(n_nets, s, seeds).requires_grad_(True)
    opt = torch.optim.Adam([flat], lr=lr)
    gens = [torch.Generator().manual_seed(sd) for sd in seeds]
    n = x.shape[0]
    steps = math.ceil(n / batch_size)
    bar = tqdm(total=epochs * steps, desc="white-box networks", disable=not progress)
    for _ in range(epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens])  # (P, n)
        for i in range(steps):
            idx = order[:, i * batch_size:(i + 1) * batch_size]
            logits = forward(flat, x[idx], s)  # (P, B, K)
            loss = nn.functional.cross_entropy(logits.transpose(1, 2), y[idx], reduction="none").mean(1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update()
    bar.close()
    weights = flat.detach()
    with torch.no_grad():
        outputs = forward(weights, q, s)
    acc = accuracy(weights, *test, s) if test is not None else torch.full((n_nets,), float("nan"), dtype=torch.float64)
    return Population(weights, outputs, acc, seeds, s, q,
                      {"epochs": epochs, "lr": lr, "batch_size": batch_size, "train_images": n})


class MetaModel(nn.Module):
    """Encoder-decoder from query outputs ``(P, Q, K)`` to flattened weights ``(P, n_params)``.

    The outputs are standardised per entry (mean and standard deviation over the training
    population), encoded by ``Q K -> hidden -> latent`` and decoded by
    ``latent -> hidden -> n_params`` (ReLU between layers) into standardised weights, which
    are mapped back with the population's per-weight mean and standard deviation. This is
    the bottleneck shape of seed 004's second version without its sampling step.

    Parameters
    ----------
    sizes : Sizes or (D, N, K)
    n_queries : int
        Q.
    hidden, latent : int
        Widths.
    """

    def __init__(self, sizes, n_queries: int, hidden: int = 256, latent: int = 64):
        super().__init__()
        n_queries, hidden, latent = (check_int(name, v, 1) for name, v in
                                     (("n_queries", n_queries), ("hidden", hidden), ("latent", latent)))
        self.sizes = as_sizes(sizes)
        n_in = n_queries * self.sizes.K
        self.encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(latent, hidden), nn.ReLU(),
                                     nn.Linear(hidden, self.sizes.n_params))
        for name, n in (("in_mean", n_in), ("in_std", n_in), ("w_mean", self.sizes.n_params),
                        ("w_std", self.sizes.n_params)):
            self.register_buffer(name, torch.zeros(n) if "mean" in name else torch.ones(n))

    def fit_scalers(self, pop: Population) -> None:
        """Set the standardisation from a training population."""
        o = pop.outputs.reshape(len(pop), -1)
        self.in_mean.copy_(o.mean(0))
        self.in_std.copy_(o.std(0).clamp_min(1e-6))
        self.w_mean.copy_(pop.weights.mean(0))
        self.w_std.copy_(pop.weights.std(0).clamp_min(1e-6))

    def standardised(self, outputs: torch.Tensor) -> torch.Tensor:
        """Predicted weights in units of the population's spread, ``(P, n_params)``."""
        o = outputs.reshape(outputs.shape[0], -1)
        if o.shape[1] != self.in_mean.numel():
            raise ValueError(f"expected outputs on {self.in_mean.numel() // self.sizes.K} queries x {self.sizes.K} "
                             f"logits, got {tuple(outputs.shape)}")
        return self.decoder(self.encoder((o - self.in_mean) / self.in_std))

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        """Predicted flattened weights ``(P, n_params)`` float32 from logits ``(P, Q, K)``."""
        return self.standardised(outputs) * self.w_std + self.w_mean


def similarity_loss(flat: torch.Tensor, outputs: torch.Tensor, queries: torch.Tensor, sizes) -> torch.Tensor:
    """Seed 004's *prediction similarity* loss, differentiable in the predicted weights.

    The KL divergence from the softmax of the observed logits to the softmax of the
    logits of the networks ``flat`` on the same queries, summed over classes and averaged
    over networks and queries.

    Parameters
    ----------
    flat : torch.Tensor
        ``(P, n_params)`` predicted weights (a meta-model's output).
    outputs : torch.Tensor
        ``(P, Q, K)`` observed logits of the networks being predicted.
    queries : torch.Tensor
        ``(Q, D)`` the query inputs.

    Returns
    -------
    torch.Tensor
        A scalar >= 0 (0 when the predicted networks reproduce the observed softmax).
    """
    s = as_sizes(sizes)
    check_weights(flat, "flat", s)
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 3 or outputs.shape[0] != flat.shape[0] \
            or outputs.shape[2] != s.K or not bool(torch.isfinite(outputs).all()):
        raise ValueError(f"outputs must be finite logits (P, Q, {s.K}) for P = {flat.shape[0]} networks, got "
                         f"{tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__}")
    logits = forward(flat, queries, s)
    if logits.shape != outputs.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} must be on the same {logits.shape[1]} queries")
    return nn.functional.kl_div(torch.log_softmax(logits, -1), torch.softmax(outputs, -1),
                                reduction="none").sum(-1).mean()


def train_metamodel(pop: Population, *, similarity: float = 0.0, detach_similarity: bool = False,
                    align_targets: bool = False, epochs: int = 200, lr: float = 1e-3, batch_size: int = 32, hidden: int = 256,
                    latent: int = 64, seed: int = 0, progress: bool = False) -> tuple[MetaModel, dict]:
    """Train a :class:`MetaModel` on a population of white-box networks.

    The loss per network is the mean absolute error of the standardised weights plus
    ``similarity`` times the *prediction similarity* loss: the KL divergence from the
    white-box network's softmax outputs on the query set to those of the predicted network
    (whose weights are the meta-model's output, so the term carries gradient to the
    meta-model).

    Parameters
    ----------
    pop : Population
        Training networks.
    similarity : float
        Weight of the prediction similarity loss (0: weights alone).
    detach_similarity : bool
        Compute the similarity loss on detached predicted weights, as seed 004's code did:
        the loss is reported but has no gradient, so training is the same as with
        ``similarity = 0``.
    align_targets : bool
        Train on the population in :func:`canonical_order` instead of the order in which
        its units happened to be initialised.
    epochs, lr, batch_size, hidden, latent, seed : training settings (Adam).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    (MetaModel, dict)
        The trained model (eval mode) and the history: ``weight_loss`` and ``similarity_loss``
        per epoch (means over the population).

    Raises
    ------
    ValueError
        Fewer than 2 networks, a negative ``similarity``, non-positive counts.
    """
    if not isinstance(pop, Population):
        raise TypeError(f"pop must be a Population (from train_population), got {type(pop).__name__}")
    if not isinstance(similarity, (int, float)) or not math.isfinite(similarity):
        raise ValueError(f"similarity must be a finite number >= 0, got {similarity!r}")
    if len(pop) < 2:
        raise ValueError("a meta-model needs a population of at least 2 white-box networks")
    if similarity < 0:
        raise ValueError(f"similarity must be >= 0, got {similarity}")
    epochs, batch_size = check_int("epochs", epochs, 1), check_int("batch_size", batch_size, 1)
    torch.manual_seed(seed)
    s = pop.sizes
    if align_targets:
        pop = Population(canonical_order(pop.weights, s), pop.outputs, pop.accuracy, pop.seeds, s, pop.queries,
                         pop.info)
    meta = MetaModel(s, pop.outputs.shape[1], hidden, latent)
    meta.fit_scalers(pop)
    opt = torch.optim.Adam(meta.parameters(), lr=lr)
    target = (pop.weights - meta.w_mean) / meta.w_std
    g = torch.Generator().manual_seed(seed)
    hist = {"weight_loss": [], "similarity_loss": []}
    for _ in tqdm(range(epochs), desc="meta-model", disable=not progress):
        perm = torch.randperm(len(pop), generator=g)
        wl = sl = 0.0
        for i in range(0, len(pop), batch_size):
            idx = perm[i:i + batch_size]
            z = meta.standardised(pop.outputs[idx])
            loss_w = (z - target[idx]).abs().mean()
            loss = loss_w
            flat = z * meta.w_std + meta.w_mean
            if similarity > 0 or detach_similarity:
                loss_s = similarity_loss(flat.detach() if detach_similarity else flat, pop.outputs[idx],
                                         pop.queries, s)
                loss = loss + similarity * loss_s
                sl += float(loss_s.detach()) * len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            wl += float(loss_w.detach()) * len(idx)
        hist["weight_loss"].append(wl / len(pop))
        hist["similarity_loss"].append(sl / len(pop))
    return meta.eval(), hist


def aae(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Average absolute error ``mean |w_hat - w|`` over all entries (seed 004's first metric).

    Example: true ``(3, 3, 3)``, predicted ``(1, 3, 5)``: ``(2 + 0 + 2) / 3 = 1.333``.

    Raises
    ------
    ValueError
        Different shapes, NaN or infinite weights.
    TypeError
        Non-tensor or non-float weights.
    """
    check_weights(pred, "pred"), check_weights(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"predicted {tuple(pred.shape)} and true {tuple(true.shape)} weights differ in shape")
    return float((pred.double() - true.double()).abs().mean())


def aape(pred: torch.Tensor, true: torch.Tensor, eps: float = AAPE_EPS) -> float:
    """Average absolute percentage error ``mean |w_hat - w| / max(|w|, eps)``, as a fraction.

    Example: true ``(3, 3, 3)``, predicted ``(1, 3, 5)``: ``(2/3 + 0 + 2/3) / 3 = 0.444``.
    The floor ``eps`` (:data:`AAPE_EPS`) keeps weights that are (almost) zero from
    dominating the mean; pass ``eps=0`` for the unguarded ratio (infinite if a true weight
    is exactly 0).

    Raises
    ------
    ValueError
        Different shapes, negative ``eps``, NaN or infinite weights.
    TypeError
        Non-tensor or non-float weights.
    """
    check_weights(pred, "pred"), check_weights(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"predicted {tuple(pred.shape)} and true {tuple(true.shape)} weights differ in shape")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    t = true.double()
    den = t.abs().clamp_min(eps) if eps > 0 else t.abs()
    return float(((pred.double() - t).abs() / den).mean())


def accuracy_difference(pred: torch.Tensor, true: torch.Tensor, images, labels, sizes) -> float:
    """Mean over networks of ``|acc(true) - acc(predicted)|`` on ``images`` (seed 004's third metric).

    ``pred`` and ``true`` are ``(P, n_params)`` (or ``(n_params,)``). In ``[0, 1]``.
    """
    pred, true = pred.reshape(-1, pred.shape[-1]), true.reshape(-1, true.shape[-1])
    return float((accuracy(true, images, labels, sizes) - accuracy(pred, images, labels, sizes)).abs().mean())


def align_units(pred: torch.Tensor, true: torch.Tensor, sizes) -> torch.Tensor:
    """Permute each predicted network's hidden units to best match the true network's.

    For every pair, unit ``i`` of the prediction and unit ``j`` of the truth cost
    ``sum |W_i - W_j| + |b_i - b_j| + sum_k |A_ki - A_kj|`` (the L1 distance of all weights
    that belong to the unit), and scipy's ``linear_sum_assignment`` picks the permutation
    of least total cost. Permuting hidden units does not change the function a network
    computes, so this only removes a difference that no black-box attack can see.

    Parameters
    ----------
    pred, true : torch.Tensor
        ``(P, n_params)`` or ``(n_params,)``.

    Returns
    -------
    torch.Tensor
        ``pred`` with its units permuted, same shape and dtype.
    """
    s = as_sizes(sizes)
    pred, true = check_weights(pred, "pred", s), check_weights(true, "true", s)
    shape = pred.shape
    pred, true = pred.reshape(-1, s.n_params), true.reshape(-1, s.n_params)
    if pred.shape != true.shape:
        raise ValueError(f"predicted {tuple(pred.shape)} and true {tuple(true.shape)} weights differ in shape")
    Wp, bp, Ap, cp = unflatten(pred, s)
    Wt, bt, At, _ = unflatten(true, s)
    out = []
    for p in range(pred.shape[0]):
        up = torch.cat([Wp[p], bp[p][:, None], Ap[p].T], 1).double()  # (N, D + 1 + K)
        ut = torch.cat([Wt[p], bt[p][:, None], At[p].T], 1).double()
        cost = torch.cdist(up, ut, p=1).numpy()
        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(s.N, dtype=np.int64)
        perm[cols] = rows  # true unit j is matched by predicted unit perm[j]
        pi = torch.from_numpy(perm)
        out.append(flatten(Wp[p][pi], bp[p][pi], Ap[p][:, pi], cp[p]))
    return torch.stack(out).reshape(shape)


def canonical_order(weights: torch.Tensor, sizes, rounds: int = 3) -> torch.Tensor:
    """Put the hidden units of every network of a population into one common order.

    Each network is aligned (:func:`align_units`) to a reference: network 0 first, then the
    mean of the aligned population, ``rounds`` times. Unit ``j`` of every network then plays
    a similar role, so the per-weight mean of the population is a meaningful network (in the
    random order of training it is close to zero) and a meta-model trained on these targets
    does not have to guess an order that no output reveals.

    Parameters
    ----------
    weights : torch.Tensor
        ``(P, n_params)``.
    rounds : int
        Alignment rounds (>= 1).

    Returns
    -------
    torch.Tensor
        ``(P, n_params)``: the same networks (same functions), units reordered.
    """
    s = as_sizes(sizes)
    rounds = check_int("rounds", rounds, 1)
    ref = weights[0]
    for _ in range(rounds):
        weights = align_units(weights, ref.expand_as(weights).contiguous(), s)
        ref = weights.mean(0)
    return weights


def scores(pred: torch.Tensor, true: torch.Tensor, images, labels, sizes, *, eps: float = AAPE_EPS) -> dict:
    """Seed 004's three metrics for predicted vs true weights ``(P, n_params)``, raw and aligned.

    Returns
    -------
    dict
        ``aae``, ``aape`` (fractions, over all weights of all networks), the same after
        :func:`align_units` (``aae_aligned``, ``aape_aligned``), ``accuracy_difference`` (mean
        over networks; alignment does not change it), ``accuracy_true`` and ``accuracy_pred``
        (means).

    Raises
    ------
    TypeError
        Non-tensor or non-float weights; ``sizes`` not a Sizes or (D, N, K).
    ValueError
        Weights with NaN or infinite values, of another length than ``sizes.n_params`` or of
        different shapes; test images of the wrong size, NaN, or one label per image missing.
    """
    s = as_sizes(sizes)
    pred, true = check_weights(pred, "pred", s), check_weights(true, "true", s)
    pred, true = pred.reshape(-1, s.n_params).contiguous(), true.reshape(-1, s.n_params)
    if pred.shape != true.shape:
        raise ValueError(f"predicted {tuple(pred.shape)} and true {tuple(true.shape)} weights differ in shape")
    aligned = align_units(pred, true, s)
    acc_t, acc_p = accuracy(true, images, labels, s), accuracy(pred, images, labels, s)
    return {"aae": aae(pred, true), "aape": aape(pred, true, eps),
            "aae_aligned": aae(aligned, true), "aape_aligned": aape(aligned, true, eps),
            "accuracy_difference": float((acc_t - acc_p).abs().mean()),
            "accuracy_true": float(acc_t.mean()), "accuracy_pred": float(acc_p.mean())}
