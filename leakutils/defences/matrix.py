"""The defence matrix: every defence at three strengths against the best of the course's attacks.

The defences and their strengths are :data:`leakutils.defences.registry.DEFENCES`
(re-exported here). :func:`best_attack` runs every applicable attack on
one defended update and scores each against the true batch; :func:`run_matrix` does so
over many clients for every defence and strength and returns one tidy row per attack,
defence and strength; :func:`best_rows` and :func:`breaking_points` read the best attack
per setting and the weakest strength that stops it.

The evaluator knows the true images and uses them only to score: every attack sees what
the server sees (the model, the defended update and the defence's public parameters, such
as the noise level of DP), and every choice an attack makes (which estimate to start from,
which labels to use) comes from that alone. "Best" is therefore the best the evaluator
sees among attacks that an attacker could run side by side, an upper bound on what one
attacker who cannot check against the truth would pick.

Scoring: each true image is paired with a reconstruction (Hungarian matching on MSE,
:func:`leakutils.metrics.compare`); when an attack returns fewer images than the batch
holds, or refuses the update (a ``ValueError``: a batch for a single-sample attack, a
defended gradient it cannot read), the images it has nothing for are scored against a
blank (all-zero) image: the attacker has nothing for them. PSNR in dB with data range 1;
100 dB is "exact", below 20 dB an image is not recognisably rebuilt.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import nn

from .. import metrics
from ..attacks import bias_ratio, conv, dlg, exan, forward, inverting, pruned
from ..attacks.labels import recover_labels
from ..core import Reconstruction, Update
from ..validate import check_int, check_labels, check_module, check_seed, check_tensor
from .registry import DEFENCES, Defence, defence as _defence

__all__ = ["DEFENCES", "ATTACKS", "THRESHOLDS", "DEFAULT_LIMITS", "best_attack", "run_matrix", "best_rows",
           "breaking_points", "default_attacks"]

#: PSNR thresholds (dB) whose fractions each row reports: recognisable, good, exact.
THRESHOLDS = (20.0, 30.0, 100.0)
#: Images the costly optimisation attacks are run on per setting (the analytic ones see all).
DEFAULT_LIMITS = {"inverting": 8, "dlg": 8}


# --------------------------------------------------------------------------- attacks


def _attacker_labels(model, update: Update):
    """Labels for Inverting Gradients from the update alone: iDLG, its classes repeated for a batch."""
    found = recover_labels(model, update).labels
    m = update.batch_size
    if found.numel() == 0 or found.numel() >= m:
        return "idlg"
    # iDLG reveals each class of the batch once: repeat them, most certain first
    return found.repeat(math.ceil(m / found.numel()))[:m].clone()


def _bias_ratio(model, update, noise, init, options):
    return bias_ratio.reconstruct(model, update, **{"allow_batch": True, "noise": noise, "diagnose": False, **options})


def _pruned(model, update, noise, init, options):
    # the surviving entries only: meaningful when zeros are missing values (pruning, Soteria)
    return pruned.reconstruct(model, update, **options)


def _forward(model, update, noise, init, options):
    # the next layer's activations, forward equations and the data range (against Soteria)
    return forward.reconstruct(model, update, **options)


def _exan(model, update, noise, init, options):
    # ExAN estimates the noise from the update itself (no noise option)
    return exan.reconstruct(model, update, **options)


def _rconv(model, update, noise, init, options):
    return conv.reconstruct(model, update, **options)


def _inverting(model, update, noise, init, options):
    # labels: iDLG's, read once by _run_attacks (or the caller's own)
    kwargs = {"init": init, "noise": noise, **options}
    return inverting.reconstruct(model, update, **kwargs)


def _dlg(model, update, noise, init, options):
    return dlg.reconstruct(model, update, **{"noise": noise, **options})


#: The attacks :func:`best_attack` can run, by name: ``run(model, update, noise, init,
#: options) -> Reconstruction``. Analytic ones first: Inverting Gradients starts from their
#: estimate. ``forward`` (forward equations from the next layer's activations, with the data
#: range as a box; seconds per image on a wide layer) is not among :func:`default_attacks`:
#: name it to run it.
ATTACKS: dict[str, Callable[..., Reconstruction]] = {
    "bias_ratio": _bias_ratio, "pruned": _pruned, "forward": _forward, "exan": _exan, "rconv": _rconv,
    "inverting": _inverting, "dlg": _dlg}
_ANALYTIC = ("bias_ratio", "pruned", "forward", "exan", "rconv")


def default_attacks(model: nn.Module) -> tuple[str, ...]:
    """The attacks that apply to ``model``: R-CONV and Inverting Gradients for a network with
    conv layers, else the bias ratio, the surviving-entries ratio (``pruned``), ExAN and
    Inverting Gradients.

    Raises
    ------
    TypeError
        ``model`` not an ``nn.Module``.
    """
    check_module("model", model)
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return ("rconv", "inverting")
    return ("bias_ratio", "pruned", "exan", "inverting")


def _check_attacks(attacks, model) -> list[str]:
    if attacks is None:
        return list(default_attacks(model))
    if isinstance(attacks, str) or not isinstance(attacks, Sequence) or not attacks:
        raise TypeError(f"attacks must be a non-empty list of names from {list(ATTACKS)}, got {attacks!r}")
    for a in attacks:
        if a not in ATTACKS:
            raise ValueError(f"unknown attack {a!r}; choose from {list(ATTACKS)}")
    # analytic estimates first, so that the optimisation can start from them
    return sorted(dict.fromkeys(attacks), key=lambda a: list(ATTACKS).index(a))


def _check_options(options, attacks) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise TypeError("options must be a dict of attack name -> dict of keyword arguments, e.g. "
                        "{'inverting': {'iterations': 300}}")
    for a in options:
        if a not in ATTACKS:
            raise ValueError(f"options names an unknown attack {a!r}; choose from {list(ATTACKS)}")
    return options


def _score(rec: Reconstruction, images: torch.Tensor, labels) -> tuple[metrics.Scores, float | None]:
    """Scores of every true image (missing ones against a blank image) and the label accuracy."""
    got = torch.nan_to_num(rec.images.detach().to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    truth = images.detach().to(torch.float64)
    if tuple(got.shape[1:]) != tuple(truth.shape[1:]):
        raise ValueError(f"the attack rebuilt samples of shape {tuple(got.shape[1:])} (a deeper layer's "
                         f"input?), not the images {tuple(truth.shape[1:])}")
    if got.shape[0] < truth.shape[0]:
        got = torch.cat([got, got.new_zeros(truth.shape[0] - got.shape[0], *got.shape[1:])])
    scores = metrics.compare(got, truth)
    acc = None
    if labels is not None and rec.labels is not None and rec.labels.numel():
        acc = metrics.label_accuracy(rec.labels, labels)
    return scores, acc


def _blank(images: torch.Tensor) -> metrics.Scores:
    return metrics.compare(torch.zeros_like(images, dtype=torch.float64), images.to(torch.float64))


def _init_from(done: dict, model, update: Update, labels):
    """The analytic estimate Inverting Gradients starts from: one image per sample, clamped to [0, 1].

    An estimate marked wholly determined, or one its attack certifies as reproducing the whole
    update (``diagnostics["consistent"]``, e.g. the surviving-entries ratio), wins; otherwise
    the one whose gradient is closest to the update in cosine distance (the attacker's own
    criterion, no truth involved).
    """
    shape = (update.batch_size, *update.input_shape)
    recs = [(a, r["reconstruction"]) for a, r in done.items() if a in _ANALYTIC and r["reconstruction"] is not None]
    usable = [(a, torch.nan_to_num(r.images.detach(), nan=0.5).clamp(0.0, 1.0), r) for a, r in recs
              if tuple(r.images.shape) == shape]
    if not usable:
        return None, "random"
    certain = [(a, img) for a, img, r in usable
               if bool(r.determined.all()) or (r.diagnostics or {}).get("consistent") is True]
    if certain:
        name, img = certain[0]
        return img, name
    if len(usable) == 1:
        return usable[0][1], usable[0][0]
    distances = [inverting.cosine_distance(model, update, img, labels) for _, img, _ in usable]
    best = min(range(len(usable)), key=lambda i: distances[i])
    return usable[best][1], usable[best][0]


def _run_attacks(model, update, images, labels, attacks, noise, options) -> dict:
    """Every attack on one update: name -> dict(reconstruction, scores, label_accuracy, seconds, message, init)."""
    done: dict = {}
    for a in attacks:
        init, start = (None, "")
        opts = dict(options.get(a, {}))
        if a == "inverting":
            opts.setdefault("labels", _attacker_labels(model, update))
            init, start = _init_from(done, model, update, opts["labels"])
        t0 = time.perf_counter()
        try:
            rec = ATTACKS[a](model, update, noise, init, opts)
            scores, acc = _score(rec, images, labels)
            message = ""
        except ValueError as err:
            rec, scores, acc, message = None, None, None, str(err)
        done[a] = {"reconstruction": rec, "scores": scores, "label_accuracy": acc,
                   "seconds": time.perf_counter() - t0, "message": message, "init": start}
    return done


def _check_truth(images, labels):
    check_tensor("images", images, min_ndim=2, shape="(M, C, H, W)")
    if labels is not None:
        check_labels("labels", labels, images.shape[0])


def best_attack(model: nn.Module, update: Update, images: torch.Tensor, labels=None, attacks=None, *,
                noise: float | None = None, options: dict | None = None):
    """Run every applicable attack on one (defended) update; return the best by median PSNR.

    Attacks run in the order of :data:`ATTACKS` (analytic first): the bias ratio (with
    ``allow_batch=True``: a batch gives a blend), the surviving-entries ratio, ExAN, R-CONV, then Inverting Gradients
    started from an analytic estimate that has one image per sample (one marked determined
    or certified consistent if any, else the one whose gradient is closest to the update in
    cosine distance; clamped to [0, 1]), else from random noise, with iDLG's labels (for a batch
    with repeated classes, the revealed classes repeated). ``noise`` is passed to the
    attacks that allow for it (bias ratio, Inverting Gradients, DLG). Each reconstruction
    is scored against the truth (see the module's docstring); an attack that raises
    ``ValueError`` is recorded as refused, with its message. Medians of 100 dB or more
    count as equal (exact), so the first exact attack in that order is named best.

    Parameters
    ----------
    model : nn.Module
        The attacked model, with the weights the update was computed at.
    update : Update
        What the server received.
    images : torch.Tensor
        The true batch ``(M, C, H, W)`` in ``[0, 1]`` (the evaluator's, for scoring only).
    labels : torch.Tensor, optional
        The true labels ``(M,)`` int64, for the label accuracy.
    attacks : sequence of str, optional
        Names from :data:`ATTACKS`; default :func:`default_attacks`.
    noise : float, optional
        Per-entry noise std the server knows of (e.g. :attr:`Applied.noise`).
    options : dict, optional
        Attack name -> keyword arguments, e.g. ``{"inverting": {"iterations": 300}}``.

    Returns
    -------
    (str or None, Reconstruction or None, Scores or None, list of dict)
        The best attack's name, reconstruction and :class:`~leakutils.metrics.Scores` (every
        true image paired; missing ones against a blank image), or three Nones when every
        attack refused; and the table, one dict per attack: ``attack``, ``psnr_median``,
        ``ssim_median``, ``psnr_ge_20``, ``psnr_ge_30``, ``psnr_ge_100`` (fractions of the
        batch), ``label_accuracy``, ``seconds``, ``refused`` (bool), ``message`` (the
        refusal), ``init`` (what Inverting Gradients started from).

    Raises
    ------
    TypeError
        ``model``/``update``/``images`` of the wrong kind; ``attacks`` not a list of names;
        ``options`` not a dict of dicts; an attack given a model it does not support.
    ValueError
        An unknown attack name; ``images`` whose count differs from the update's batch size;
        NaN images or bad labels.
    """
    check_module("model", model)
    if not isinstance(update, Update):
        raise TypeError(f"update must be a leakutils Update, got {type(update).__name__}")
    _check_truth(images, labels)
    if images.shape[0] != update.batch_size:
        raise ValueError(f"images holds {images.shape[0]} samples but the update averages {update.batch_size}: "
                         f"give the batch the update was computed on")
    attacks = _check_attacks(attacks, model)
    options = _check_options(options, attacks)
    done = _run_attacks(model, update, images, labels, attacks, noise, options)
    table = []
    for a, r in done.items():
        s = r["scores"]
        table.append({"attack": a, **_summary(None if s is None else s.psnr, None if s is None else s.ssim),
                      "label_accuracy": r["label_accuracy"], "seconds": r["seconds"],
                      "refused": s is None, "message": r["message"], "init": r["init"]})
    ran = [row for row in table if not row["refused"]]
    if not ran:
        return None, None, None, table
    best = max(ran, key=_rank)["attack"]
    return best, done[best]["reconstruction"], done[best]["scores"], table


def _rank(row: dict) -> float:
    """Median PSNR, with every exact one (>= 100 dB, round-off beyond) equal: the first such attack wins."""
    return -math.inf if row["psnr_median"] is None else min(row["psnr_median"], THRESHOLDS[-1])


def _summary(psnr, ssim) -> dict:
    if psnr is None or psnr.numel() == 0:
        return {"psnr_median": None, "ssim_median": None,
                **{f"psnr_ge_{t:g}": None for t in THRESHOLDS}}
    return {"psnr_median": metrics._median(psnr), "ssim_median": metrics._median(ssim) if ssim.numel() else None,
            **{f"psnr_ge_{t:g}": float((psnr >= t).double().mean()) for t in THRESHOLDS}}


def run_matrix(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, defences=None,
               strengths: dict | None = None, attacks=None, options: dict | None = None,
               limits: dict | None = None, clients: int | None = None, seed: int = 0) -> list[dict]:
    """Every attack against every defence and strength, over many clients: a tidy list of rows.

    For each defence and strength, the images are split into client batches of
    ``images_per_update(strength)`` (1 for most defences; a trailing remainder is left out),
    each batch is defended (seed ``seed + i`` for client ``i``) and attacked as in
    :func:`best_attack`. The costly attacks run on the first clients only, until they have
    seen ``limits[attack]`` images (default :data:`DEFAULT_LIMITS`: 8 for Inverting
    Gradients and DLG); the analytic ones on all, or on the first ``clients`` updates.

    Parameters
    ----------
    model : nn.Module
        The attacked model (float64 for exact analytic attacks).
    images : torch.Tensor
        ``(N, C, H, W)`` in ``[0, 1]``, the model's dtype.
    labels : torch.Tensor
        ``(N,)`` int64.
    defences : sequence of str, optional
        Keys of :data:`DEFENCES`; default all, in its order.
    strengths : dict, optional
        Defence name -> strengths to use instead of the registry's.
    attacks, options
        As :func:`best_attack`.
    limits : dict, optional
        Attack name -> most images it is run on per setting (``None`` for all).
    clients : int, optional
        Most updates (clients) attacked per setting, ``>= 1``; default all that the images
        fill. A quick look at every setting: ``clients=2`` attacks two one-image clients, or
        one batch of 64 when only one fits.
    seed : int
        Seed of the first client's defence.

    Returns
    -------
    list of dict
        One row per (defence, strength, attack): ``defence``, ``strength``, ``attack``,
        ``updates`` (clients attacked), ``images`` (images scored), ``psnr_median``,
        ``psnr_ge_20``, ``psnr_ge_30``, ``psnr_ge_100``, ``ssim_median`` (None when every
        update was refused), ``label_accuracy`` (mean over the updates that returned
        labels, or None), ``seconds`` (mean attack seconds per update), ``refused`` (images
        of refused updates, scored as blank), ``message`` (the first refusal), ``noise``
        (median noise std known to the attacks, or None), ``epsilon`` (DP-SGD: one step's
        epsilon at sample rate M / 4000, else None).

    Raises
    ------
    TypeError, ValueError
        As :func:`best_attack`; an unknown defence; fewer images than one update needs;
        ``strengths``, ``limits`` or ``clients`` of the wrong kind or range.
    """
    check_module("model", model)
    _check_truth(images, labels)
    check_labels("labels", labels, images.shape[0])
    seed = check_seed("seed", seed)
    names = list(DEFENCES) if defences is None else defences
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"defences must be a list of names from {list(DEFENCES)}, got {defences!r}")
    plan = [_defence(n) for n in names]
    strengths = {} if strengths is None else strengths
    if not isinstance(strengths, dict):
        raise TypeError("strengths must be a dict of defence name -> list of strengths")
    for n in strengths:
        _defence(n)
    attacks = _check_attacks(attacks, model)
    options = _check_options(options, attacks)
    limits = {**DEFAULT_LIMITS, **({} if limits is None else limits)}
    for a, v in limits.items():
        if v is not None:
            check_int(f"limits[{a!r}]", v, 1)
    if clients is not None:
        clients = check_int("clients", clients, 1)
    rows = []
    for d in plan:
        for s in strengths.get(d.name, d.strengths):
            rows += _setting(model, images, labels, d, s, attacks, options, limits, clients, seed)
    return rows


def _setting(model, images, labels, d: Defence, strength, attacks, options, limits, clients, seed) -> list[dict]:
    """The rows of one defence at one strength."""
    k = d.images_per_update(strength)
    n = images.shape[0] // k
    if n < 1:
        raise ValueError(f"{d.name} at {strength} puts {k} images in one update, but only {images.shape[0]} "
                         f"images were given")
    n = n if clients is None else min(n, clients)
    acc = {a: {"psnr": [], "ssim": [], "labels": [], "seconds": [], "refused": 0, "message": ""} for a in attacks}
    noises, epsilons = [], []
    for i in range(n):
        x, y = images[i * k:(i + 1) * k], labels[i * k:(i + 1) * k]
        applied = d.apply(model, x, y, strength, seed + i)
        if applied.noise is not None:
            noises.append(applied.noise)
        if applied.epsilon is not None:
            epsilons.append(applied.epsilon)
        # the costly attacks stop once they have seen their limit of images
        here = [a for a in attacks if limits.get(a) is None or sum(t.numel() for t in acc[a]["psnr"]) < limits[a]]
        done = _run_attacks(model, applied.update, x, y, here, applied.noise, options)
        for a, r in done.items():
            s = r["scores"]
            if s is None:
                s = _blank(x)
                acc[a]["refused"] += k
                acc[a]["message"] = acc[a]["message"] or r["message"]
            acc[a]["psnr"].append(s.psnr)
            acc[a]["ssim"].append(s.ssim)
            acc[a]["seconds"].append(r["seconds"])
            if r["label_accuracy"] is not None:
                acc[a]["labels"].append(r["label_accuracy"])
    rows = []
    for a in attacks:
        v = acc[a]
        psnr = torch.cat(v["psnr"]) if v["psnr"] else torch.empty(0)
        ssim = torch.cat(v["ssim"]) if v["ssim"] else torch.empty(0)
        summary = _summary(psnr, ssim) if v["refused"] < psnr.numel() else _summary(None, None)
        rows.append({"defence": d.name, "strength": strength, "attack": a, "updates": len(v["seconds"]),
                     "images": int(psnr.numel()), **summary,
                     "label_accuracy": sum(v["labels"]) / len(v["labels"]) if v["labels"] else None,
                     "seconds": sum(v["seconds"]) / len(v["seconds"]) if v["seconds"] else None,
                     "refused": v["refused"], "message": v["message"],
                     "noise": metrics._median(torch.tensor(noises, dtype=torch.float64)) if noises else None,
                     "epsilon": metrics._median(torch.tensor(epsilons, dtype=torch.float64)) if epsilons else None})
    return rows


def best_rows(rows: list[dict]) -> list[dict]:
    """The best attack's row per (defence, strength), by median PSNR, in the order the rows came.

    Medians of 100 dB or more count as equal (exact: the rest is round-off), so the first
    exact attack in the rows' order (the analytic one) is named. A setting where every
    attack refused keeps its first row with ``attack`` set to None.

    Raises
    ------
    TypeError
        ``rows`` not a list of :func:`run_matrix` rows.
    """
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"defence", "strength", "psnr_median"} <= set(r)
                                             for r in rows):
        raise TypeError("rows must be the list of dicts that run_matrix returns")
    best: dict = {}
    for r in rows:
        key = (r["defence"], repr(r["strength"]))
        old = best.get(key)
        if r["psnr_median"] is not None and (old is None or _rank(r) > _rank(old)):
            best[key] = r
        elif old is None:
            best[key] = {**r, "attack": None}
    return list(best.values())


def breaking_points(rows: list[dict], threshold: float = THRESHOLDS[0]) -> dict:
    """Per defence, the weakest strength whose best attack falls below ``threshold`` dB median PSNR.

    Parameters
    ----------
    rows : list of dict
        :func:`run_matrix` rows (all attacks; the best is taken per setting) in the order of
        the strengths, weakest first.
    threshold : float
        In dB (default 20: no longer recognisable).

    Returns
    -------
    dict
        Defence name -> the best row at that strength, or None when every strength tried
        leaves the best attack at or above the threshold. A setting where every attack
        refused counts as stopped.

    Raises
    ------
    TypeError
        ``rows`` not :func:`run_matrix` rows; ``threshold`` not a number.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number of dB, got {type(threshold).__name__}")
    out: dict = {}
    for r in best_rows(rows):
        out.setdefault(r["defence"], None)
        if out[r["defence"]] is None and (r["psnr_median"] is None or r["psnr_median"] < threshold):
            out[r["defence"]] = r
    return out
