"""Exclusively activated neurons (ExAN): whole batches from averaged gradients.

Pan, Zhang, Yan, Zhu and Yang, "Exploring the Security Boundary of Data Reconstruction
via Neuron Exclusivity Analysis", USENIX Security 2022 (arXiv 2010.13356).

Network: ``a_0 = x``, ``a_h = ReLU(W_h a_{h-1} + b_h)`` for the hidden layers ``h = 1..H``,
logits ``z = W_o a_H + b_o``, softmax cross-entropy. The loss vector of sample ``m`` is
``g^m = softmax(z^m) - onehot(y_m)``; the client sends gradients averaged over its batch of
``M`` samples, e.g. ``dl/dW_o = (1/M) sum_m g^m (a_H^m)^T``.

A ReLU unit is an **exclusively activated neuron** (ExAN) of sample ``m`` when it is active
for ``m`` and for no other sample of the batch. Then everything the averaged gradient
holds about that unit comes from ``m`` alone: its column of ``dl/dW_o`` is parallel to
``m``'s loss vector, its row of the weight gradient below is parallel to ``m``'s input of
that layer, and with a bias, the row over the bias gradient is that input (the bias ratio).

The package, one concern per module:

- :mod:`.model`: parsing the network, its float64 weights and gradients;
- :mod:`.noise`: the noise level estimated from the update and every tolerance, named;
- :mod:`.grouping`: B.1's links, components and cliques, :func:`group_exans`,
  :func:`loss_vector_ratios`;
- :mod:`.linking`: the connected groups of linked unit vectors without the ``n x n`` matrix
  (random-projection splits, a clique test, chunked pairs);
- :mod:`.analysis`: B.1-B.3 (samples, labels, activation patterns downwards);
- :mod:`.inputs`: inputs per sample (bias ratio, pseudo-inverse, :data:`SCALES`);
- :mod:`.peeling`: one pass, duplicates merged, the batch size and multiplicities from the
  1/M factor, the remainder for peeling;
- :mod:`.verify`: the whole-update check every recovered sample passes;
- :mod:`.conv_part`: conv layers under the head, per sample, by forward equations;
- :mod:`.truth`: :func:`count_exans`, :func:`expected_exans` (teaching aids: they read the
  true inputs);
- :mod:`.records`: :class:`Sample` and :class:`ExanDiagnostics`;
- :mod:`.pipeline`: the steps :func:`reconstruct` calls.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ...core import Reconstruction, Update
from . import noise as _noise
from .analysis import Options
from .conv_part import invert_convs
from .grouping import group_exans, loss_vector_ratios
from .inputs import SCALES
from .noise import NoiseEstimate
from .pipeline import search, validate, verify_found
from .records import ExanDiagnostics, Sample
from .truth import count_exans, expected_exans

__all__ = ["reconstruct", "group_exans", "loss_vector_ratios", "count_exans", "expected_exans", "Sample",
           "SCALES", "ExanDiagnostics", "NoiseEstimate"]


def reconstruct(model: nn.Module, update: Update, *, rtol: float | None = None, min_exans: int = 2,
                batch_size: int | None = None, verify: bool = True, peel: bool = True, max_rounds: int = 8,
                scale: str = "auto", dense_limit: int = 4096) -> Reconstruction:
    """Rebuild every sample of a batch from its averaged gradients through exclusively activated neurons.

    What is marked recovered has passed the **whole-update check** (:mod:`.verify`): the
    attacker recomputes each rebuilt sample's own gradient (it has the weights) and, with the
    batch size ``M`` and multiplicities read off the 1/M factor, ``M G - sum_r n_r grad(x_r)``
    must vanish on every recovered sample's ExAN columns and rows within the estimated noise,
    jointly, and be the gradient of ``M - sum_r n_r`` unrecovered samples. Samples that fail
    are reported as not recoverable, with the reason: lost, never returned wrong.

    Parameters
    ----------
    model : nn.Module
        A fully connected ReLU network ``[Flatten] -> Linear -> ReLU -> ... -> Linear`` (logits,
        no softmax layer, at least 3 logits), or conv layers with activations, ``Flatten``,
        then such a head; with the weights the update was computed at (float32 or float64:
        the attack computes in float64). Softmax cross-entropy, mean-reduced, no smoothing.
    update : Update
        The gradients averaged over the client's batch (:func:`leakutils.capture.client_update`),
        float32 or float64, possibly noisy. Its ``batch_size`` is **not** used.
    rtol : float, optional
        Grouping tolerance for "parallel" (unit vectors within ``rtol``, plus each unit's
        noise allowance). Default: ``RTOL_PER_EPS * eps`` of the gradients' dtype (1.2e-5 for
        float32, 2.2e-14 for float64, which the grouping resolves only down to ``COS_RESOLUTION`` =
        1e-7). A larger value finds more candidate groups; it never
        loosens the whole-update check, whose tolerances come from the noise estimate only.
    min_exans : int
        ExANs a sample needs in the last hidden layer to be told apart from units shared by
        several samples (2, as in the paper). Lower layers need 1 once the batch is known to be
        complete, else ``min_exans`` too.
    batch_size : int, optional
        The batch size, if the server knows it; used only for ``missed``.
    verify : bool
        With biases in every hidden layer, also accept a **single** ExAN whose bias-ratio input,
        run forward, activates the unit and reproduces its own output column (last hidden
        layer) or the sample's known activations one layer up. False: the paper's B.1-B.3.
    peel : bool
        Subtract the recovered samples' own gradients, ``M G - sum_r n_r grad(x_r)``, and run
        again on that remainder, where units shared only with recovered samples have become
        exclusive; up to ``max_rounds`` times. False: one pass.
    max_rounds : int
        Most peeling rounds (>= 0).
    scale : {"auto", "softmax", "bias", "uniform"}
        How the bias-free route fixes each input's positive factor (see :data:`SCALES`).
        ``"uniform"`` is the paper's guess: those images are returned (right up to a factor)
        with status ``"up to scale"``, never marked recovered or determined.
    dense_limit : int
        Largest number of unknowns of a conv layer solved densely (CNNs only).

    Returns
    -------
    Reconstruction
        ``images`` float64 ``(M_found, *update.input_shape)``, one per distinct sample found,
        in the data's own range; zeros for samples not recovered (except ``"up to scale"``).
        ``labels`` int64 ``(M_found,)`` (-1 where no label was read). ``determined``: all True
        for a recovered sample of an MLP, all False otherwise; for CNNs, the pixels the conv
        layers' forward equations fix. ``diagnostics``: a dict of the fields of
        :class:`ExanDiagnostics` (documented there), plus ``"record"``, that typed record
        itself; among others:

        - ``batch_size``: ``M`` from the 1/M factor (consistent over samples, multiplicities
          counted), else the samples found; ``batch_size_from`` says which;
          ``batch_size_complete``: True only when that reading is consistent, the recovered
          multiplicities add up to ``M`` and nothing remains beyond the noise;
        - ``recovered`` bool ``(M_found,)``, ``samples`` (:class:`Sample`: label, ExANs,
          status, reason, multiplicity, reading, residual, noise PSNR), ``multiplicities``,
          ``found``, ``missed`` (>= 0, when ``batch_size`` is given);
        - ``noise``: the estimated noise per layer, relative level, dtype eps and ``rtol``;
          ``remainder``: the batch-level check; ``merged``, ``rejected``;
        - ``live_units``, ``dead_units``, ``grouped_units``, ``found_by_b1``,
          ``found_by_check``, ``found_by_peeling``, ``peeling_rounds``, ``layers``, ``exans``,
          ``pseudo_inverse``, ``conv``, ``rtol``, ``dtype``, ``seconds``.

    Raises
    ------
    TypeError
        Wrong argument types; a module the attack does not support (an activation other than
        ReLU in the fully connected part, dropout in training mode, pooling or normalisation).
    ValueError
        No hidden ReLU layer; a softmax layer at the end; 2 logits (the loss vectors cannot
        separate samples); a loss that is not softmax cross-entropy (columns not summing to
        zero), label smoothing, or a sum-reduced or scaled update (the 1/M reading gives
        ``M`` below the samples found, or no integer); gradients missing, of the wrong shape,
        or not finite; bad ``rtol``, ``min_exans``, ``batch_size``, ``scale``, ``max_rounds``.

    References
    ----------
    Pan et al., "Exploring the Security Boundary of Data Reconstruction via Neuron
    Exclusivity Analysis", USENIX Security 2022 (arXiv 2010.13356); Phong et al. 2018 (bias
    ratio); Zhu & Blaschko, "R-GAP", ICLR 2021 (forward equations of conv layers).
    """
    t0 = time.perf_counter()
    net, g, dtype = validate(model, update, rtol=rtol, min_exans=min_exans, batch_size=batch_size, scale=scale,
                             max_rounds=max_rounds, dense_limit=dense_limit, verify=verify, peel=peel)
    noise = _noise.estimate(g, dtype, rtol)
    opts = Options(rtol=noise.rtol, min_exans=min_exans, verify=verify, scale=scale, dense_limit=dense_limit)
    sr = search(net, model, g, opts, noise, peel, max_rounds)
    recovered, report, rejected = verify_found(net, g, sr, noise)
    return _result(net, update, sr, recovered, report, rejected, noise, batch_size, dense_limit, t0)


def _result(net, update, sr, recovered, report, rejected, noise, batch_size, dense_limit, t0) -> Reconstruction:
    """Images, labels, the determined mask and the diagnostics record."""
    fd = sr.found
    samples = fd.samples
    Mf = len(samples)
    shape = tuple(update.input_shape)
    X = fd.stack(math.prod(net.feature_shape))
    conv_info = None
    if net.convs:
        images, determined, conv_info = invert_convs(net.convs, shape, X, recovered, dense_limit)
    else:
        determined = recovered.reshape(Mf, *([1] * len(shape))).expand(Mf, *shape).clone()
        keep = recovered | torch.tensor([s.status == "up to scale" for s in samples], dtype=torch.bool)
        images = X.reshape(Mf, *shape) * keep.reshape(Mf, *([1] * len(shape))).to(torch.float64)
    for m, s in enumerate(samples):
        if not recovered[m] and s.status == "recovered":
            s.status = "not recoverable"
        if not recovered[m] and not s.reason:
            s.reason = "no ExAN in the first layer, and the batch is not fully explained for the pseudo-inverse"
    mult = [s.multiplicity if recovered[m] else 0 for m, s in enumerate(samples)]
    complete = _complete(sr, report, sum(mult))
    an = sr.first
    n_first = len(an.samples)
    diag = ExanDiagnostics(
        batch_size=sr.M if sr.M is not None else Mf,
        batch_size_from="the 1/M factor of the ExAN columns" if sr.M is not None else "samples found",
        batch_size_complete=complete, found=Mf,
        missed=None if batch_size is None else max(0, batch_size - sum(mult)),
        recovered=recovered, samples=samples, multiplicities=mult,
        live_units=int(an.live.sum()), dead_units=int((~an.live).sum()), grouped_units=an.grouped,
        found_by_b1=an.n_paper, found_by_check=n_first - an.n_paper,
        found_by_peeling=sum(s.found_by.startswith("peeling") for s in samples), peeling_rounds=sr.rounds,
        merged=sr.merged, rejected=rejected, layers=[n for n, _ in net.hidden],
        exans=[[int(s.exans[n].numel()) if n in s.exans else 0 for n, _ in net.hidden] for s in samples],
        pseudo_inverse=an.pinv_info, conv=conv_info, noise=noise.as_dict(), remainder=report, rtol=noise.rtol,
        dtype="float64", seconds=time.perf_counter() - t0)
    labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
    return Reconstruction(images=images, labels=labels, determined=determined,
                          diagnostics={**diag.as_dict(), "record": diag}, attack="exan")


def _complete(sr, report: dict, n_recovered: int) -> bool | None:
    """``batch_size_complete``: only from a consistent 1/M reading (see :class:`ExanDiagnostics`)."""
    if sr.M is None:
        return False if sr.first.complete is not True or not sr.found.samples else None
    return bool(n_recovered == sr.M and report.get("consistent") and report.get("unexplained") == 0)
