"""What the ExAN attack reports: one :class:`Sample` per sample found, and :class:`ExanDiagnostics`.

``ExanDiagnostics`` is a typed record with every field documented. A
:class:`~leakutils.core.Reconstruction` holds a plain dict (as for every attack): the
record's fields as keys (``rec.diagnostics["batch_size"]``), plus ``"record"``, the record
itself (``rec.diagnostics["record"].batch_size``). The record also reads like a dict (a
read-only :class:`collections.abc.Mapping` over its fields), and ``as_dict()`` copies it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch


@dataclass
class Sample:
    """What the attack found about one sample of the batch.

    Attributes
    ----------
    label : int
        Recovered label (the negative entry of the loss vector), in ``[0, K)``; -1 if none.
    loss_direction : torch.Tensor
        Unit loss-vector direction ``g / ||g||``, float64, shape ``(K,)``.
    exans : dict[str, torch.Tensor]
        Hidden-layer name to the int64 indices of this sample's ExANs found there (from the
        top layer down; a layer is missing when the chain stopped above it).
    status : str
        ``"recovered"`` (passed the whole-update check), ``"up to scale"`` (bias-free route with
        ``scale="uniform"``: the image is right up to a positive factor and is returned, but
        not marked recovered) or ``"not recoverable"``.
    reason : str
        Why not (empty when recovered).
    method : str
        How the input was obtained: ``"bias ratio"``, ``"pseudo-inverse"`` or ``""``.
    scale : float or None
        ``sigma = ||g|| / M``: the loss vector's length over the batch size, when known.
    found_by : str
        ``"B.1"`` (a group of ``min_exans`` parallel units), ``"forward check"`` (a single
        verified ExAN), prefixed by ``"peeling (round r): "`` when found in a remainder.
    multiplicity : int
        How many times this input occurs in the batch, read off the 1/M factor (an image
        held twice gives 2); 1 until the batch size is known.
    reading : float or None
        ``n / M`` read off this sample's ExAN columns (its multiplicity over the batch size).
    residual : float or None
        Whole-update check: the largest norm of the remainder over this sample's ExAN
        columns and rows, in units of the noise allowance (<= 1 passes).
    noise_psnr : float or None
        The PSNR (dB, data range 1) the estimated noise allows for this input by the bias
        ratio: ``-20 log10(s sqrt(1 + mean x^2) / ||bias gradients||)``, with ``s`` the larger
        of the update's noise estimate and the scatter of the sample's first-layer ExAN rows
        around their rank-one fit (so noise scaled up for that layer, or a unit shared with
        another sample, lowers it); None when not estimated (pseudo-inverse) or for a clean
        update (infinite). An **estimate** from the noise model, not a bound: a single ExAN has
        no scatter to show, and the estimate itself varies. Measured on MNIST digits 0..7,
        width 1024, noise 1e-6..1e-4 of the largest entry, rtol default / 1e-3 / 1e-2, three
        seeds: at most 2.1 dB above the true PSNR (5.1 dB before the rows' scatter was used).
    """

    label: int
    loss_direction: torch.Tensor
    exans: dict = field(default_factory=dict)
    status: str = "not recoverable"
    reason: str = ""
    method: str = ""
    scale: float | None = None
    found_by: str = "B.1"
    multiplicity: int = 1
    reading: float | None = None
    residual: float | None = None
    noise_psnr: float | None = None

    @property
    def input_error(self) -> float | None:
        """The rms error per input value the estimated noise implies (from ``noise_psnr``), or None."""
        return None if self.noise_psnr is None else 10.0 ** (-self.noise_psnr / 20.0)


@dataclass
class ExanDiagnostics(Mapping):
    """Diagnostics of :func:`leakutils.attacks.exan.reconstruct`, readable as ``diag["key"]``.

    Attributes
    ----------
    batch_size : int
        ``M``: read off the ExAN columns' 1/M factor once samples are rebuilt (consistent
        across samples, counting multiplicities), else the number of samples found.
    batch_size_from : str
        ``"the 1/M factor of the ExAN columns"`` or ``"samples found"``.
    batch_size_complete : bool or None
        True only when the 1/M reading is consistent, the recovered multiplicities add up to
        ``M`` and the remainder after subtracting them vanishes within the noise; False when
        something is known to be missing; None when it cannot be checked (no reading and
        ``M_found >= K - 1``).
    found : int
        Samples listed (``M_found``), recovered or not.
    missed : int or None
        ``batch_size`` (the argument, if given) minus the recovered multiplicities, >= 0.
    recovered : torch.Tensor
        bool ``(M_found,)``: passed the whole-update check.
    samples : list of Sample
    multiplicities : list of int
        Per sample found, how often its input occurs in the batch (0 for a sample not
        recovered: unknown).
    live_units, dead_units, grouped_units : int
        Last hidden layer: units with a (not noise-dominated) gradient, the others, and units
        in B.1 groups (first pass).
    found_by_b1, found_by_check, found_by_peeling : int
        Samples found by B.1 groups, by single verified ExANs (first pass), after peeling.
    peeling_rounds : int
    merged : int
        Reports of one input merged into one sample (groups split by noise or rounding).
    rejected : int
        Samples whose input was rebuilt but failed the whole-update check.
    layers : list of str
        Hidden-layer names, bottom to top.
    exans : list of list of int
        Per sample, per hidden layer, the number of ExANs found.
    pseudo_inverse : dict or None
        ``used``, ``rank``, ``condition``, ``residual``, ``samples``, ``reason`` of the
        bias-free route (the last pass that tried it).
    conv : list or None
        Per sample, Chapter 3's per-layer diagnostics of the conv part (CNNs only).
    noise : dict
        :class:`leakutils.attacks.exan.noise.NoiseEstimate` as a dict: per-layer ``sigma``,
        ``sigma_columns``, ``relative``, ``eps``, ``dtype``, ``rtol``.
    remainder : dict
        The whole-update check of the batch: ``unexplained`` (samples not recovered, by the
        1/M reading), ``output_bias`` (norm of the remainder's output-bias gradient in noise
        units), ``total`` (largest layer norm of the remainder in noise units, meaningful when
        every sample is recovered), ``consistent`` (bool).
    rtol : float
        The grouping tolerance used.
    dtype : str
        ``"float64"``: the attack's arithmetic.
    seconds : float
    """

    batch_size: int
    batch_size_from: str
    batch_size_complete: bool | None
    found: int
    missed: int | None
    recovered: torch.Tensor
    samples: list
    multiplicities: list
    live_units: int
    dead_units: int
    grouped_units: int
    found_by_b1: int
    found_by_check: int
    found_by_peeling: int
    peeling_rounds: int
    merged: int
    rejected: int
    layers: list
    exans: list
    pseudo_inverse: dict | None
    conv: list | None
    noise: dict
    remainder: dict
    rtol: float
    dtype: str = "float64"
    seconds: float = 0.0

    def __getitem__(self, key: str):
        if not isinstance(key, str) or key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict:
        """A plain dict of every field (shallow)."""
        return {k: getattr(self, k) for k in self._names()}
