"""DP-SGD on the client, with Opacus: per-sample clipping, Gaussian noise, and its epsilon.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016: each sample's gradient is
clipped to L2 norm ``C`` (``max_grad_norm``), the clipped gradients are summed, Gaussian
noise of std ``sigma * C`` (``sigma`` the noise multiplier) is added to the sum, and the
result is divided by the batch size. The privacy this buys is an (epsilon, delta) pair from
an accountant that composes ``steps`` such steps at sampling rate ``q``. The real Opacus
(Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021)
does the step and the accounting here, so the course measures the defence practitioners
deploy. Opacus is imported when first needed (``pip install opacus``).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import client_update, unwrap_opacus
from ..core import Update
from ..validate import check_choice, check_int, check_number, check_seed

__all__ = ["DPReport", "dp_sgd_update", "epsilon", "ACCOUNTANTS"]

#: Opacus' accountants that :func:`epsilon` can ask: Renyi DP (Mironov 2017; Abadi et al.
#: 2016's moments accountant) and the numerical PRV accountant (Gopi et al. 2021).
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class DPReport:
    """The privacy parameters of one DP-SGD client step and the guarantee they give.

    Attributes
    ----------
    noise_multiplier : float
        ``sigma >= 0``: the noise std divided by ``max_grad_norm``.
    max_grad_norm : float
        ``C > 0``: each sample's gradient is clipped to this L2 norm (all parameters together).
    sample_rate : float
        ``q`` in ``(0, 1]``: the chance that one example is in a batch, as the accountant
        assumes.
    steps : int
        Number of such steps the guarantee covers (``>= 1``).
    delta : float
        ``delta`` in ``(0, 1)`` of the (epsilon, delta) guarantee.
    epsilon : float
        ``epsilon >= 0`` from the accountant; ``inf`` without noise.
    accountant : str
        ``"rdp"`` or ``"prv"``: which Opacus accountant gave ``epsilon``.
    batch_size : int
        ``M``, the samples the noisy gradient averages.
    noise_std : float
        Std of the noise on every entry of the returned (averaged) gradient:
        ``noise_multiplier * max_grad_norm / M``, in the gradients' units.
    clipped : int
        How many of the ``M`` per-sample gradients were longer than ``max_grad_norm`` and so
        were scaled down.
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    accountant: str
    batch_size: int
    noise_std: float
    clipped: int


def _opacus():
    """Import Opacus, or say how to install it."""
    try:
        import opacus
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("DP-SGD needs Opacus: pip install 'opacus>=1.5'") from None
    return opacus


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: str = "rdp") -> float:
    """The epsilon of ``steps`` DP-SGD steps at ``sample_rate`` and ``noise_multiplier``, for ``delta``.

    A thin wrapper of Opacus' accountants (``RDPAccountant``, ``PRVAccountant``) fed the
    history ``[(noise_multiplier, sample_rate, steps)]``; the number is Opacus' own.

    Parameters
    ----------
    noise_multiplier : float
        ``sigma >= 0``. ``0`` (no noise) gives ``inf``: no finite guarantee.
    sample_rate : float
        ``q`` in ``(0, 1]``: the batch size over the data set size (Poisson sampling
        assumed).
    steps : int
        ``>= 1``.
    delta : float
        In ``(0, 1)``, conventionally below ``1 / dataset size``.
    accountant : {"rdp", "prv"}
        ``"rdp"``: Renyi DP over Opacus' default orders (a valid upper bound, loose when
        Opacus warns that the optimal order is the smallest one). ``"prv"``: the tighter
        numerical accountant; at ``sample_rate == 1`` its privacy-loss distribution is
        degenerate (Opacus divides by zero in a logarithm), so there it warns and falls
        back to ``"rdp"``.

    Returns
    -------
    float
        ``epsilon >= 0`` (or ``inf``).

    Raises
    ------
    TypeError
        A parameter of the wrong kind.
    ValueError
        A parameter out of range; an unknown accountant; the PRV accountant failing on
        extreme parameters (the message suggests ``"rdp"``).
    """
    noise_multiplier = check_number("noise_multiplier", noise_multiplier, 0.0)
    sample_rate = check_number("sample_rate", sample_rate, 0.0, 1.0, lo_open=True)
    steps = check_int("steps", steps, 1)
    delta = check_number("delta", delta, 0.0, 1.0, lo_open=True, hi_open=True)
    check_choice("accountant", accountant, ACCOUNTANTS)
    return _epsilon(noise_multiplier, sample_rate, steps, delta, accountant)[0]


def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
             accountant: str) -> tuple[float, str]:
    """Checked parameters -> (epsilon, accountant actually used)."""
    _opacus()
    from opacus.accountants import PRVAccountant, RDPAccountant

    if noise_multiplier == 0:
        return math.inf, accountant
    if accountant == "prv" and sample_rate == 1.0:
        warnings.warn("the PRV accountant is unreliable at sample_rate 1 (its privacy-loss distribution is "
                      "degenerate); epsilon comes from the RDP accountant instead", stacklevel=3)
        accountant = "rdp"
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    try:
        eps = float(acc.get_epsilon(delta=delta))
    except (OverflowError, ValueError, RuntimeError, FloatingPointError) as err:
        raise ValueError(f"Opacus' {accountant.upper()} accountant failed for noise_multiplier={noise_multiplier}, "
                         f"sample_rate={sample_rate}, steps={steps}: {err}; try accountant='rdp'") from None
    return eps, accountant


def dp_sgd_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, noise_multiplier: float,
                  max_grad_norm: float = 1.0, seed=0, sample_rate: float | None = None,
                  dataset_size: int = 60000, steps: int = 1, delta: float = 1e-5,
                  accountant: str = "rdp") -> tuple[Update, DPReport]:
    """One DP-SGD client step with Opacus: the noisy, clipped mean gradient and its guarantee.

    A deep copy of ``model`` (the given model is untouched) goes through Opacus'
    ``PrivacyEngine.make_private(module, optimizer, data_loader, noise_multiplier,
    max_grad_norm, poisson_sampling=False, noise_generator=...)`` with plain SGD, the batch
    ``(x, y)`` as its one fixed batch and the mean cross-entropy as the loss. After
    ``loss.backward()`` and the private optimizer's ``step()``, every ``p.grad`` holds what
    the optimizer applied::

        (sum_i clip_C(g_i) + N(0, (sigma C)^2 I)) / M

    with ``clip_C(g) = g * min(1, C / (||g|| + 1e-6))`` (Opacus' flat clipping, the norm over
    all parameters of one sample), which this function returns. The learning rate plays no
    part. The copy runs in train mode (Opacus records per-sample gradients only there); the
    reported loss is the given model's, in its own mode. With ``noise_multiplier=0`` and a
    huge ``max_grad_norm`` the update is the plain FedSGD gradient of
    :func:`~leakutils.capture.client_update`.

    Parameters
    ----------
    model : nn.Module
        The global model (plain, not already wrapped by Opacus; a wrapped one is unwrapped).
        Its layers must be ones Opacus computes per-sample gradients for (no BatchNorm:
        ``opacus.validators.ModuleValidator.fix`` swaps it for GroupNorm).
    x : torch.Tensor
        ``(M, *input_shape)``, the model's dtype.
    y : torch.Tensor
        ``(M,)`` int64 class labels.
    noise_multiplier : float
        ``sigma >= 0``.
    max_grad_norm : float
        ``C > 0``, in the gradients' units.
    seed : int or torch.Generator
        Seeds the CPU generator Opacus draws the noise from (``secure_mode=False``: the noise
        is reproducible, not cryptographically secure). torch's global generator is left as
        it was.
    sample_rate : float, optional
        ``q`` in ``(0, 1]`` for the accountant. Default ``M / dataset_size``.
    dataset_size : int
        Size of the client's data set for the default ``sample_rate``: 60000 (MNIST's
        training set), ``>= M``.
    steps : int
        Number of such steps the reported epsilon covers (one round: 1; a training run:
        rounds times local steps). Only the accounting uses it.
    delta : float
        In ``(0, 1)``.
    accountant : {"rdp", "prv"}
        As :func:`epsilon`.

    Returns
    -------
    (Update, DPReport)
        The update: the model's parameter names (no ``_module.`` prefix), shapes and dtype,
        ``batch_size`` M, ``loss`` the mean cross-entropy before the step (not private: a DP
        client would not send it). The report: the parameters, epsilon and the noise std.

    Raises
    ------
    TypeError
        ``model``, ``x`` or ``y`` of the wrong kind (as
        :func:`~leakutils.capture.client_update`); a parameter of the wrong kind.
    ValueError
        Bad inputs (as :func:`~leakutils.capture.client_update`); a parameter out of range;
        ``dataset_size < M``; a model Opacus cannot make private (the message says why).
    """
    # validate the model and batch exactly as a plain capture does (and get the loss)
    plain = client_update(model, x, y)
    noise_multiplier = check_number("noise_multiplier", noise_multiplier, 0.0)
    max_grad_norm = check_number("max_grad_norm", max_grad_norm, 0.0, lo_open=True)
    m = plain.batch_size
    dataset_size = check_int("dataset_size", dataset_size, 1)
    if dataset_size < m:
        raise ValueError(f"dataset_size ({dataset_size}) must be at least the batch size ({m})")
    if sample_rate is None:
        sample_rate = m / dataset_size
    sample_rate = check_number("sample_rate", sample_rate, 0.0, 1.0, lo_open=True)
    steps = check_int("steps", steps, 1)
    delta = check_number("delta", delta, 0.0, 1.0, lo_open=True, hi_open=True)
    check_choice("accountant", accountant, ACCOUNTANTS)
    if isinstance(seed, torch.Generator):
        gen = seed
    else:
        gen = torch.Generator(device=x.device).manual_seed(check_seed("seed", seed))
    eps, used = _epsilon(noise_multiplier, sample_rate, steps, delta, accountant)

    grads, clipped = _private_step(unwrap_opacus(model), x, y, noise_multiplier, max_grad_norm, gen)
    update = Update(grads, m, plain.loss, plain.input_shape)
    report = DPReport(noise_multiplier, max_grad_norm, sample_rate, steps, delta, eps, used, m,
                      noise_multiplier * max_grad_norm / m, clipped)
    return update, report


def _private_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise_multiplier: float,
                  max_grad_norm: float, gen: torch.Generator) -> tuple[dict, int]:
    """Opacus' step on a deep copy: (name -> noisy mean gradient, number of clipped samples)."""
    _opacus()
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    net = copy.deepcopy(model).train()
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    for _, p in params:
        p.grad = None
    optimizer = torch.optim.SGD([p for _, p in params], lr=1.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=x.shape[0])
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message=".*full backward hook.*")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        try:
            private, optimizer, _ = engine.make_private(
                module=net, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm, poisson_sampling=False, noise_generator=gen)
        except (ValueError, NotImplementedError, RuntimeError) as err:
            # e.g. opacus' UnsupportedModuleError (a ValueError) for BatchNorm
            raise ValueError(f"Opacus cannot make this model private: {err}") from None
        optimizer.zero_grad()
        F.cross_entropy(private(x), y).backward()
        norms = torch.stack([p.grad_sample.reshape(x.shape[0], -1).norm(dim=1) for _, p in params], 1).norm(dim=1)
        optimizer.step()
    grads = {name: p.grad.detach().clone() for name, p in params}
    return grads, int((norms > max_grad_norm).sum())
