"""Tolerances of the ExAN attack: every one named here, derived from the dtype and the noise.

The attack estimates the noise level of the update from the update itself:

- **column sums**: every loss vector ``softmax(z) - onehot(y)`` sums to zero, so every column
  of the output layer's weight gradient (and its bias gradient) sums to exactly zero for a
  clean softmax cross-entropy update. With independent noise of standard deviation ``sigma``
  per entry, a column sum has standard deviation ``sigma sqrt(K)``; the root mean square of
  the ``N_H + 1`` sums over ``sqrt(K)`` estimates ``sigma`` (rounding included);
- **dead units**: a unit that no sample activates has an exactly zero gradient row when the
  update is clean; the rows of the last hidden layer whose output-gradient column is at the
  noise level are pure noise there, and their root mean square entry estimates that layer's
  noise (a defence may scale its noise per layer);
- **rounding**: the dtype of the shared gradients (float32: ``eps = 2^-23``, float64:
  ``eps = 2^-52``) bounds what any comparison can resolve, relative to the largest entry.

Every tolerance of the attack is a multiple of these, with the factor named below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Machine epsilon per dtype of the shared gradients (the unit of rounding).
EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7, torch.float32: 2.0 ** -23, torch.float64: 2.0 ** -52}

#: Grouping tolerance (B.1) per unit of ``eps``: unit vectors of one sample's ExAN columns differ
#: only by rounding, a few ``eps`` per operation over sums of up to ~10^3 terms; 100 eps gives
#: 1.2e-5 for float32 (the paper-reproduction default) and 2.2e-14 for float64.
RTOL_PER_EPS = 100.0

#: Standard deviations of noise allowed between two noisy parallel vectors before they count as
#: different directions: a Gaussian deviation beyond 4 sigma has probability ~6e-5 per pair.
LINK_Z = 4.0

#: A unit whose output-gradient column has a noise-to-signal ratio ``sigma sqrt(K) / ||column||``
#: above this is treated as noise (not live): its direction is then uncertain by more than 0.05
#: in unit-vector distance, the spacing of loss vectors of same-label samples.
MAX_UNIT_NSR = 0.05

#: Rounding floor of the noise estimate, in units of ``eps * max |entry|`` of a layer's gradient:
#: a float64 gradient accumulated over ~10^3 terms carries errors of a few eps of its entries.
ROUNDING_PER_EPS = 4.0

#: Whole-update check: a remainder vector of ``d`` entries counts as zero (explained) when its
#: norm is below ``noise (sqrt(d) + CHECK_Z)`` plus ``CHECK_REL_PER_EPS eps`` times the norm of
#: what it was subtracted from. ``CHECK_Z = 8`` standard deviations of a chi-distributed norm;
#: 10^4 eps of relative rounding (1.2e-3 for float32, 2.2e-12 for float64) covers the
#: difference between the client's arithmetic and the attacker's float64 recomputation.
CHECK_Z = 8.0
CHECK_REL_PER_EPS = 1e4

#: How an input's own uncertainty enters the checks: the check recomputes what it compares
#: at ``PROPAGATION_DRAWS`` inputs perturbed by Gaussian noise of the input's estimated rms
#: error (seeded, ``PROPAGATION_SEED``) and allows ``PROPAGATION_Z`` times the largest change.
PROPAGATION_DRAWS = 2
PROPAGATION_Z = 6.0
PROPAGATION_SEED = 0

#: A sample whose input the noise allows to less than this PSNR (dB, data range 1) is not
#: marked recovered: its rms error would exceed ~3% of the data range, too close to the
#: error of a blend for the checks to tell them apart.
MIN_NOISE_PSNR_DB = 30.0

#: The batch size ``M`` read from the 1/M factor must lie within this relative distance of an
#: integer multiple (beyond the noise): rounding gives ~1e-12 in float64, ~1e-5 in float32;
#: 1e-3 keeps 64 well apart from 63 and 65.
M_INTEGER_RTOL = 1e-3

#: Two rebuilt inputs are one sample (merged) when they differ by less than this many noise
#: standard deviations of the inputs, or by less than ``RTOL_PER_EPS eps`` relative.
SAME_INPUT_Z = 8.0

#: A sample rebuilt again from a remainder, within this relative distance of a known input, is
#: the known one (its units vanish from the remainder only up to the known input's own error).
SEEN_RTOL = 1e-6

#: Label smoothing is reported when the loss vectors of rebuilt samples fit
#: ``softmax - (1 - eps_s) onehot - eps_s / K`` with ``eps_s`` above this (PyTorch's smallest
#: common setting is 0.05; 1e-3 sits far above what rounding produces).
SMOOTHING_MIN = 1e-3

#: ... and significant against the noise: the reading (inverse-variance mean over the rebuilt
#: samples) must exceed this many of its own standard errors, the error of each sample's reading
#: following from the noise estimate and the fit's residual (:func:`.inputs.smoothing_fit`).
#: Noise alone reads as a Gaussian deviation; beyond 6 sigma has probability ~2e-9.
SMOOTHING_Z = 6.0

#: Relative column-sum threshold beyond which the loss is not softmax cross-entropy at all
#: (MSE on one-hot targets gives order-one sums; noise of 1e-2 relative gives ~1e-4 in total).
CROSS_ENTROPY_SUM_RTOL = 1e-3


#: Column sums explained by noise: with ``sigma`` read off the entries of the quiet columns
#: (units no sample activates: pure noise), the live columns' sums of a softmax cross-entropy
#: update are ``N(0, K sigma^2)``; their root mean square may exceed ``sqrt(K) sigma`` by this
#: factor (a chi deviation this large over even one column has probability ~1e-15). A loss that
#: is not cross-entropy gives sums of the size of the columns themselves.
NOISE_SUM_Z = 8.0


def sums_are_noise(Gout: torch.Tensor) -> bool:
    """Whether the output-gradient column sums are what noise gives (see :data:`NOISE_SUM_Z`).

    ``Gout``: the output layer's weight gradient, float64, shape ``(K, N)``. Needs at least two
    quiet columns (norm within ``CHECK_Z`` standard deviations of a pure-noise column, judged
    against the median column) to estimate the noise independently of the sums; False otherwise.
    """
    K = Gout.shape[0]
    norms = torch.linalg.vector_norm(Gout, dim=0)
    order = torch.sort(norms).values
    # the quietest columns set the noise scale; a column is quiet while within CHECK_Z of it
    lowest = float(order[: max(2, norms.numel() // 8)].median())
    sig0 = lowest / math.sqrt(K)
    quiet = norms <= sig0 * (math.sqrt(K) + CHECK_Z)
    if int(quiet.sum()) < 2 or int((~quiet).sum()) == 0 or sig0 == 0.0:
        return False
    sigma = float(torch.sqrt((Gout[:, quiet] ** 2).mean()))
    live = Gout[:, ~quiet].sum(0)
    return float(torch.sqrt((live * live).mean())) <= NOISE_SUM_Z * math.sqrt(K) * sigma


def eps_of(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype`` (float64 for anything else: the attack computes in float64)."""
    return EPS.get(dtype, EPS[torch.float64])


@dataclass
class NoiseEstimate:
    """The noise level of an update, estimated from the update itself.

    Attributes
    ----------
    sigma : list of float
        Per fully connected layer (hidden layers bottom to top, then the output layer): the
        estimated standard deviation of the noise per gradient entry, in the gradient's own
        units, never below the rounding floor of that layer.
    sigma_columns : float
        The estimate from the output layer's column sums alone (absolute units).
    relative : float
        ``sigma_columns`` over the largest entry of the output layer's gradient (0 for a clean
        float64 update up to rounding, ~1e-7 for float32).
    eps : float
        Machine epsilon of the shared gradients' dtype.
    dtype : str
        That dtype, e.g. ``"float32"``.
    rtol : float
        The grouping tolerance actually used (the user's, or ``RTOL_PER_EPS * eps``).
    """

    sigma: list
    sigma_columns: float
    relative: float
    eps: float
    dtype: str
    rtol: float

    def as_dict(self) -> dict:
        """Plain dict of the fields."""
        return {"sigma": list(self.sigma), "sigma_columns": self.sigma_columns, "relative": self.relative,
                "eps": self.eps, "dtype": self.dtype, "rtol": self.rtol}


def estimate(grads, dtype: torch.dtype, rtol: float | None) -> NoiseEstimate:
    """Estimate the noise per layer from column sums, dead units and rounding (see the module docstring)."""
    eps = eps_of(dtype)
    Gout = grads.out
    K, N = Gout.shape
    sums = Gout.sum(0)
    if grads.Gb[-1] is not None:
        sums = torch.cat([sums, grads.Gb[-1].sum()[None]])
    sigma_c = float(torch.sqrt((sums * sums).mean() / K))
    floors = [ROUNDING_PER_EPS * eps * float(g.abs().max()) for g in grads.G]
    sigma = [max(sigma_c, f) for f in floors]
    # rows of last-hidden-layer units whose columns are at the noise level: noise of that layer
    T = len(grads.G) - 2
    col_norm = torch.linalg.vector_norm(Gout, dim=0)
    quiet = col_norm <= max(sigma_c, floors[-1]) * (math.sqrt(K) + CHECK_Z)
    if int(quiet.sum()) >= 2:
        rows = grads.rows(T)[quiet]
        # median of the rows' rms entries: a unit barely active for one sample is signal, not noise
        rms = torch.sqrt((rows * rows).mean(1))
        sigma[T] = max(sigma[T], float(rms.median()))
    base = float(Gout.abs().max())
    return NoiseEstimate(sigma=sigma, sigma_columns=sigma_c, relative=sigma_c / base if base > 0 else 0.0,
                         eps=eps, dtype=str(dtype).replace("torch.", ""),
                         rtol=float(rtol) if rtol is not None else RTOL_PER_EPS * eps)
