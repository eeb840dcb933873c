"""What a client can check about the model a server sends, before training on it.

A malicious server that may change the model can make the client's update leak its data:
the imprint block of Fowl et al. ("Robbing the Fed", ICLR 2022; :mod:`~leakutils.attacks.imprint`)
and the fishing classifier of Wen et al. ("Fishing for User Data", ICML 2022). The client
holds the model's weights and its own images, so it can look for their signatures first.
:func:`inspect_model` runs four checks on every ``nn.Linear`` and ``nn.Conv2d`` (a conv's
filters flattened to rows), in float64:

- ``duplicate_rows``: the largest fraction, over layers, of a layer's rows that are parallel
  to another of its rows (cosine ``>= 1 - sqrt(eps)`` of the layer's dtype; zero rows and
  layers of fan-in below 4 are left out). Random or trained rows are never parallel; the
  imprint block's rows are all identical, and rows that share one direction at different
  scales (a "sparse" imprint, ``row_j = w / width_j``) are parallel too. Two parallel rows
  with different biases already cut out the samples between two thresholds, so one pair
  flags (:data:`DUPLICATE_MAX`).
- ``data_quantiles``: for each layer that reads the input itself, the fraction of the
  client's images on which each unit (of its parallel rows, if it has two or more, else of
  all) is positive, sorted, and its Kolmogorov-Smirnov distance from the uniform grid.
  Biases at the quantiles of the rows' statistic give ``1/k, 2/k, ..., 1``: distance about
  ``1/k`` plus sampling noise. On 600 client digits the tests measure 0.05 to 0.08 for
  imprint blocks of 16 to 256 bins, but also 0.08 to 0.31 for honest first layers: alone it
  would flag 6 of 13 honest models. It flags only with parallel rows in the same layer
  (distance ``<=`` :data:`QUANTILE_MAX`): it names the imprint block, and catches no model
  that (a) misses.
- ``dead_classes``: on the last ``nn.Linear`` run, and the model's output read as logits:
  a class whose mean softmax probability over the client's images is below ``1e-30``
  (:data:`CLASS_MASS_LOG10_MIN`), or output biases spread over more than
  :data:`BIAS_SPREAD_MAX` logits. Fishing sets the non-target rows to 0 with bias ~1000:
  the target class gets ``~e^-1000``, 10^-435 (honest models in the tests: at least 10^-2,
  spread below 0.25).
- ``distance`` (with ``previous``, the last round's global model or its ``state_dict``): per
  layer ``||w - w_prev|| / ||w_prev||`` over its parameters; a parameter added, removed or
  reshaped counts as infinite. Measured on MNIST at lr 0.1 from initialisation: one SGD
  step moves an MLP's layers by at most 1% and LeNet's head by 9%, 3 to 5 minibatch steps
  by at most 17%, 20 steps an MLP's by 22%; a layer drawn afresh moves by 1.4 and fishing's
  by 1600, so :data:`DISTANCE_MAX` is 0.5.

What these checks do NOT catch. They are heuristics, and an adaptive server can try to
evade each one. Rows perturbed by 1e-3 in direction are no longer parallel, yet move each
unit's pre-activation far less than a bin's width (in the tests 599 of 600 digits keep
their bins), so the block still sorts the samples. An imprint built into a convolution
whose filters are not parallel as flattened rows (one measurement spread over positions or
channels) escapes (a); a block in a layer that does not read the input, or after a
normalisation, escapes the quantile check, and so do client data unlike the server's public
data. A fishing bias of +20 instead of +1000 stays below both thresholds of (c). A malicious
model sent in the first round has nothing to be compared with, and a server that moves the
model slowly over many rounds stays below any per-round distance. Passing the checks is no
proof of honesty; failing one is strong evidence against it.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..validate import check_module, check_tensor

__all__ = ["BIAS_SPREAD_MAX", "CLASS_MASS_LOG10_MIN", "DISTANCE_MAX", "DUPLICATE_MAX", "MIN_FAN_IN", "QUANTILE_MAX",
           "Inspection", "inspect_model", "separation"]

#: ``duplicate_rows`` flags a layer with more than this fraction of rows parallel to another (any pair).
DUPLICATE_MAX = 0.0
#: ``data_quantiles`` flags a first layer with parallel rows whose KS distance is at most this.
QUANTILE_MAX = 0.15
#: ``dead_classes`` flags a class with mean softmax probability below ``10 ** CLASS_MASS_LOG10_MIN``.
CLASS_MASS_LOG10_MIN = -30.0
#: ``dead_classes`` flags output biases spread (max - min) over more than this many logits.
BIAS_SPREAD_MAX = 50.0
#: ``distance`` flags a layer whose parameters moved by more than this fraction of their norm.
DISTANCE_MAX = 0.5
#: Layers whose rows have fewer values than this are left out of ``duplicate_rows``.
MIN_FAN_IN = 4


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_model` found: the verdict, its reasons and the raw scores.

    Attributes
    ----------
    flagged : bool
        Whether any check failed.
    reasons : list of str
        One readable sentence per failed check, in the order of ``failed``.
    failed : tuple of str
        The failed checks: ``"duplicate_rows"``, ``"data_quantiles"``, ``"dead_classes"``, ``"distance"``.
    duplicate_rows : dict of str to float
        Per layer (qualified name) the fraction of rows, in ``[0, 1]``, parallel to another row.
    quantile_distance : dict of str to float
        Per layer that reads the input: KS distance in ``[0, 1]`` of its units' sorted
        activation fractions from the uniform grid.
    class_mass_log10 : float
        ``log10`` of the smallest mean softmax probability of a class (``<= log10(1/K)``);
        NaN when the output is not ``(N, K)`` logits with ``K >= 2``.
    bias_spread : float
        ``max - min`` of the last ``nn.Linear``'s bias, ``>= 0`` (0 without a bias).
    distance : dict of str to float
        Per layer the relative change from ``previous`` (``inf`` when added, removed or
        reshaped); empty without ``previous``.
    """

    flagged: bool
    reasons: list[str]
    failed: tuple[str, ...]
    duplicate_rows: dict[str, float]
    quantile_distance: dict[str, float]
    class_mass_log10: float
    bias_spread: float
    distance: dict[str, float]

    @property
    def scores(self) -> dict[str, float]:
        """One number per score for the whole model (NaN where not measured): the worst layer's."""
        return {"duplicate_rows": max(self.duplicate_rows.values(), default=0.0),
                "quantile_distance": min(self.quantile_distance.values(), default=math.nan),
                "class_mass_log10": self.class_mass_log10, "bias_spread": self.bias_spread,
                "distance": max(self.distance.values(), default=math.nan)}


def _parallel(w: torch.Tensor, tol: float, chunk: int = 2048) -> torch.Tensor:
    """``(k,)`` bool: rows with another non-zero row at cosine ``>= 1 - tol``."""
    norms = w.norm(dim=1)
    live = norms > 0
    # identical unit rows collapse first (an imprint block's are all identical), then cosines among the rest
    unit, inverse, counts = torch.unique(w[live] / norms[live, None], dim=0, return_inverse=True, return_counts=True)
    hit = counts > 1
    for start in range(0, unit.shape[0], chunk):
        cos = unit[start:start + chunk] @ unit.T
        idx = torch.arange(cos.shape[0])
        cos[idx, idx + start] = -2.0
        hit[start:start + chunk] |= (cos >= 1.0 - tol).any(dim=1)
    out = torch.zeros(w.shape[0], dtype=torch.bool)
    out[live] = hit[inverse]
    return out


def _ks_uniform(p: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of the values ``p`` in [0, 1] from the uniform distribution."""
    p, k = p.sort().values, p.numel()
    i = torch.arange(k, dtype=torch.float64)
    return float(torch.maximum((i + 1) / k - p, p - i / k).max())


def _state(previous) -> Mapping[str, torch.Tensor]:
    if isinstance(previous, nn.Module):
        return previous.state_dict()
    if not isinstance(previous, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in previous.items()):
        raise TypeError(f"previous must be the last round's global model (an nn.Module) or its state_dict() "
                        f"(names to tensors), got {type(previous).__name__}")
    return previous


def _distance(model: nn.Module, previous) -> dict[str, float]:
    """Per layer ``||w - w_prev|| / ||w_prev||``; inf for parameters added, removed or reshaped."""
    prev = _state(previous)
    current = model.state_dict()
    sums: dict[str, list[float]] = {}
    for name, p in model.named_parameters():
        layer = name.rpartition(".")[0] or "(model)"
        delta, base = sums.setdefault(layer, [0.0, 0.0])
        q = prev.get(name)
        if q is None or tuple(q.shape) != tuple(p.shape):
            sums[layer] = [math.inf, base]
            continue
        p64, q64 = p.detach().to(torch.float64), q.detach().to(torch.float64)
        sums[layer] = [delta + float((p64 - q64).square().sum()), base + float(q64.square().sum())]
    for name, q in prev.items():
        if q.is_floating_point() and name not in current:
            sums[(name.rpartition(".")[0] or "(model)") + " (removed)"] = [math.inf, 0.0]
    return {layer: (0.0 if d == 0 else math.inf if b == 0 else math.sqrt(d / b)) for layer, (d, b) in sums.items()}


def inspect_model(model: nn.Module, client_images: torch.Tensor, *, previous=None) -> Inspection:
    """Check the model a server sent for the signatures of a malicious server, before training on it.

    Parameters
    ----------
    model : nn.Module
        The model as received, float32 or float64, holding ``nn.Linear``/``nn.Conv2d``
        layers; its output is read as logits ``(N, K)``. It is not changed: a float64
        copy in eval mode runs once on all the images (memory grows with ``N``).
    client_images : torch.Tensor
        ``(N, *input_shape)`` finite floats, ``N >= 1``: the client's own data (a few
        hundred or more for the quantile check).
    previous : nn.Module or mapping of str to torch.Tensor, optional
        The last round's global model, or its ``state_dict()``, for the ``distance`` check.

    Returns
    -------
    Inspection
        ``flagged``, one reason per failed check and the raw scores (see the module's
        docstring for the checks and their thresholds).

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module`` instance; ``client_images`` not a float tensor;
        ``previous`` neither a module nor a state dict.
    ValueError
        A model without ``nn.Linear``/``nn.Conv2d`` layers; images with NaN, empty, or of a
        shape the model cannot take.
    """
    check_module("model", model)
    x = check_tensor("client_images", client_images, min_ndim=2, shape="(N, *input_shape)").detach()
    layers = [(name or "(model)", m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ValueError("model has no nn.Linear or nn.Conv2d layer to inspect; give the network the server sent")
    prev_state = None if previous is None else _state(previous)
    duplicate, parallel = {}, {}
    for name, m in layers:
        w = m.weight.detach().to(torch.float64).flatten(1)
        if w.shape[0] >= 2 and w.shape[1] >= MIN_FAN_IN:
            parallel[name] = _parallel(w, math.sqrt(torch.finfo(m.weight.dtype).eps))
            duplicate[name] = float(parallel[name].double().mean())
    fractions, out, order = _forward(model, x)
    quantile = {}
    for name, p in fractions.items():
        mask = parallel.get(name)
        use = p[mask] if mask is not None and int(mask.sum()) >= 2 and mask.numel() == p.numel() else p
        quantile[name] = _ks_uniform(use)
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] >= 2:
        mass = torch.logsumexp(F.log_softmax(out, dim=1), dim=0) - math.log(out.shape[0])
        class_mass = float(mass.min()) / math.log(10)
    else:
        class_mass = math.nan
    last = [m for m in order if isinstance(m, nn.Linear)]
    bias = last[-1].bias if last else None
    spread = float(bias.detach().max() - bias.detach().min()) if bias is not None else 0.0
    distance = {} if prev_state is None else _distance(model, prev_state)
    return _verdict(duplicate, quantile, class_mass, spread, distance)


def _forward(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[nn.Module]]:
    """One float64 forward pass of a copy: per layer that reads the input, its units' positive fractions
    ``(units,)``; the output; the linear and conv layers in the order they ran."""
    net = copy.deepcopy(model).to(torch.float64).eval()
    names = {id(m): name for name, m in net.named_modules()}
    x64 = x.to(next(net.parameters()).device, torch.float64)
    flat = x64.reshape(x64.shape[0], -1)
    fractions: dict[str, torch.Tensor] = {}
    order: list[nn.Module] = []

    def hook(module, inputs, output):
        order.append(module)
        inp = inputs[0] if inputs else None
        if isinstance(inp, torch.Tensor) and inp.numel() == flat.numel() and inp.shape[0] == flat.shape[0] \
                and torch.equal(inp.reshape(flat.shape), flat):
            pos = (output > 0).to(torch.float64)
            per_unit = pos.mean(0) if pos.ndim == 2 else pos.transpose(0, 1).flatten(1).mean(1)
            fractions[names[id(module)] or "(model)"] = per_unit

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            out = net(x64)
    except RuntimeError as err:
        raise ValueError(f"the model cannot take client_images of shape {tuple(x.shape)}; give images of the "
                         f"model's input shape: {err}") from None
    finally:
        for h in handles:
            h.remove()
    return fractions, out, order


def _verdict(duplicate, quantile, class_mass, spread, distance) -> Inspection:
    failed, reasons = [], []
    dup = {n: v for n, v in duplicate.items() if v > DUPLICATE_MAX}
    if dup:
        failed.append("duplicate_rows")
        reasons.append("parallel rows (an imprint block's signature): " +
                       ", ".join(f"{n} {v:.0%} of its rows" for n, v in dup.items()))
    quant = {n: v for n, v in quantile.items() if n in dup and v <= QUANTILE_MAX}
    if quant:
        failed.append("data_quantiles")
        reasons.append("parallel rows whose biases cut the client's images at equal quantiles (KS distance " +
                       ", ".join(f"{n} {v:.3f}" for n, v in quant.items()) + f" <= {QUANTILE_MAX}): "
                       "the imprint block of Fowl et al. 2022")
    dead = ([f"a class gets 10^{class_mass:.0f} of the softmax mass (< 10^{CLASS_MASS_LOG10_MIN:.0f})"]
            if class_mass < CLASS_MASS_LOG10_MIN else [])
    dead += [f"the output biases spread over {spread:.3g} logits (> {BIAS_SPREAD_MAX:g})"] \
        if spread > BIAS_SPREAD_MAX else []
    if dead:
        failed.append("dead_classes")
        reasons.append(" and ".join(dead) + ": the fishing signature of Wen et al. 2022")
    moved = {n: v for n, v in distance.items() if v > DISTANCE_MAX}
    if moved:
        failed.append("distance")
        reasons.append(f"layers moved by more than {DISTANCE_MAX:.0%} since the previous round: " +
                       ", ".join(f"{n} {v:.3g}" for n, v in moved.items()))
    return Inspection(bool(failed), reasons, tuple(failed), duplicate, quantile, class_mass, spread, distance)


#: For each score of :attr:`Inspection.scores` compared by :func:`separation`: whether high is suspicious, its flag.
_RULES = {"duplicate_rows": (True, lambda s: s > DUPLICATE_MAX),
          "quantile_distance": (False, lambda s: s <= QUANTILE_MAX),
          "class_mass_log10": (False, lambda s: s < CLASS_MASS_LOG10_MIN),
          "bias_spread": (True, lambda s: s > BIAS_SPREAD_MAX)}


def _models(name: str, models) -> list[nn.Module]:
    if isinstance(models, (nn.Module, str)) or not isinstance(models, Sequence):
        raise TypeError(f"{name} must be a list of nn.Module models, got {type(models).__name__}")
    if not models:
        raise ValueError(f"{name} is empty; give at least one model")
    return [check_module(f"{name}[{i}]", m) for i, m in enumerate(models)]


def separation(honest_models: Sequence[nn.Module], malicious_models: Sequence[nn.Module],
               client_images: torch.Tensor) -> dict:
    """Each score of :func:`inspect_model` over two families of models, and whether a threshold separates them.

    Parameters
    ----------
    honest_models, malicious_models : list of nn.Module
        Non-empty; each must take ``client_images``.
    client_images : torch.Tensor
        ``(N, *input_shape)``, as :func:`inspect_model`.

    Returns
    -------
    dict
        Per score (``"duplicate_rows"``, ``"quantile_distance"``, ``"class_mass_log10"``,
        ``"bias_spread"``): ``honest`` and ``malicious`` (lists of floats, one per model),
        ``separable`` (every finite malicious score is beyond every finite honest one, in the
        suspicious direction), ``true_positives`` and ``false_positives`` (models beyond the
        default threshold of that score alone). Under ``"flagged"``: ``true_positives`` and
        ``false_positives`` of the whole verdict, ``honest`` and ``malicious`` (family sizes).

    Raises
    ------
    TypeError
        Not lists of ``nn.Module`` instances; as :func:`inspect_model`.
    ValueError
        An empty list; as :func:`inspect_model`.
    """
    families = _models("honest_models", honest_models), _models("malicious_models", malicious_models)
    honest, malicious = ([inspect_model(m, client_images) for m in family] for family in families)
    out: dict = {}
    for key, (high, flags) in _RULES.items():
        h, s = ([r.scores[key] for r in family] for family in (honest, malicious))
        hf, sf = [v for v in h if math.isfinite(v)], [v for v in s if math.isfinite(v)]
        apart = bool(hf and sf) and (min(sf) > max(hf) if high else max(sf) < min(hf))
        out[key] = {"honest": h, "malicious": s, "separable": apart, "true_positives": sum(map(flags, s)),
                    "false_positives": sum(map(flags, h))}  # NaN (not measured) never flags
    out["flagged"] = {"true_positives": sum(r.flagged for r in malicious),
                      "false_positives": sum(r.flagged for r in honest),
                      "honest": len(honest), "malicious": len(malicious)}
    return out
