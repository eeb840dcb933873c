"""Convolutional layers as linear systems: R-CONV and a forward-only (R-GAP-style) variant.

For one sample, a CNN made of conv layers with activations, then ``Flatten`` and a fully
connected head, is rebuilt layer by layer from the top (Eltaras et al. 2024, "R-CONV"):

1. the head's input by the bias ratio (Chapter 1), and ``dl/dX = W^T dl/db``;
2. for each conv layer from the top: ``dl/dO = dl/dX * A'(O)`` from the rebuilt output ``X``
   (Chapter 2); then the layer's input ``x`` from linear equations:

   - **weight-gradient equations** ``dl/dW[f, c, u, v] = sum_{p,q} dl/dO[f, p, q] *
     x_pad[c, pS + u, qS + v]``: for each input channel ``c``, ``F K^2`` equations in the
     ``H W`` pixels of that channel, with one coefficient matrix (built from ``dl/dO``)
     shared by every channel, factored once; padding pixels are known zeros;
   - **forward equations** ``W * x + b = O`` where the activation above is invertible, so
     that ``O = A^{-1}(X)`` is known (Zhu & Blaschko 2021, "R-GAP");

   and ``dl/dx = conv_transpose(dl/dO, W)`` carries the gradient one layer further down.

Every system is solved by least squares in float64 with its rank and condition number
reported; where it is rank-deficient, the minimum-norm solution is returned and the pixels
the equations do not fix are marked in ``Reconstruction.determined``. Nothing divides by a
gradient without a tolerance, and no singular system raises.

Solvers, chosen per layer (see ``_solve_layer``): the weight-gradient equations alone when
their shared ``F K^2 x H W`` matrix has full column rank (one SVD); a square forward system
by sparse LU; both families together, densely, once the gradient equations leave few
unknowns (they fix each channel up to the null space of the shared matrix, and the forward
equations are solved for the null-space coordinates); a tall forward system by its normal
equations. Sparse solutions are accepted only with small residuals and a condition
estimate below 1e12; otherwise the dense analysis decides, within ``dense_limit``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn

from .. import activations as acts
from ..core import Reconstruction, Update
from ._common import check_model_update, check_rtol, layer_gradient, trace_leaves
from .bias_ratio import reconstruct as bias_ratio_reconstruct
from .labels import recover_labels

__all__ = ["reconstruct", "ConvLayer", "parse_cnn", "count_constraints", "METHODS"]

#: ``"rconv"``: weight-gradient and forward equations; ``"forward"``: forward equations only
#: (the R-GAP approach; needs invertible activations); ``"gradient"``: weight-gradient
#: equations only.
METHODS = ("rconv", "forward", "gradient")

_ALLOWED = (nn.Conv2d, nn.Flatten, nn.Linear, nn.Identity) + tuple(acts._TYPES)


@dataclass
class ConvLayer:
    """One conv layer of a parsed CNN, with the activation that follows it.

    Attributes
    ----------
    name : str
        Module name of the conv layer (e.g. ``"body.conv2"``).
    conv : nn.Conv2d
    activation : nn.Module
        The activation after it (``nn.Identity()`` when there is none).
    in_shape, out_shape : tuple of int
        ``(C, H, W)`` of its input and ``(F, O_h, O_w)`` of its output.
    """

    name: str
    conv: nn.Conv2d
    activation: nn.Module
    in_shape: tuple
    out_shape: tuple


@dataclass
class _Parsed:
    layers: list  # ConvLayer, bottom to top
    head_name: str
    head: nn.Linear


def parse_cnn(model: nn.Module, input_shape) -> tuple[list[ConvLayer], str]:
    """Split a CNN into its conv layers (with activations) and the name of its head.

    The model must run ``conv -> [activation] -> ... -> conv -> [activation] -> Flatten ->
    Linear -> ...``; what follows the first ``Linear`` (the head) is free.

    Parameters
    ----------
    model : nn.Module
    input_shape : tuple of int
        ``(C, H, W)`` of one input.

    Returns
    -------
    (layers, head) : (list of ConvLayer, str)
        Conv layers from the input upwards, and the name of the head's ``nn.Linear``.

    Raises
    ------
    TypeError
        A module the attack does not support before the head (pooling, normalisation,
        dropout, a conv with groups or dilation), with its name.
    ValueError
        No conv layer, or no ``Flatten -> Linear`` head.
    """
    parsed = _parse(model, tuple(input_shape))
    return parsed.layers, parsed.head_name


def _parse(model: nn.Module, input_shape: tuple) -> _Parsed:
    names = {id(m): n for n, m in model.named_modules()}
    order = trace_leaves(model, input_shape)
    layers: list[ConvLayer] = []
    k = 0
    while k < len(order):
        mod, ins, outs = order[k]
        name = names.get(id(mod), type(mod).__name__)
        if isinstance(mod, nn.Linear):
            break
        if not isinstance(mod, _ALLOWED):
            raise TypeError(f"module {name!r} ({type(mod).__name__}) is not supported below the head: the attack "
                            f"handles Conv2d layers with activations, then Flatten and Linear")
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or mod.dilation not in ((1, 1), 1) or mod.padding_mode != "zeros" \
                    or isinstance(mod.padding, str):
                raise TypeError(f"conv layer {name!r} uses groups, dilation, string or non-zero padding; "
                                f"use a plain nn.Conv2d (groups=1, dilation=1, integer zero padding)")
            act: nn.Module = nn.Identity()
            if k + 1 < len(order) and isinstance(order[k + 1][0], tuple(acts._TYPES)) \
                    and not isinstance(order[k + 1][0], nn.Identity):
                act = order[k + 1][0]
                k += 1
            layers.append(ConvLayer(name, mod, act, ins, outs))
        elif layers and isinstance(mod, tuple(acts._TYPES)) and not isinstance(mod, nn.Identity):
            raise TypeError(f"two activations in a row at {name!r}; the attack expects one per conv layer")
        k += 1
    if not layers:
        raise ValueError("the model has no Conv2d layer; for fully connected networks use attacks.bias_ratio")
    if k >= len(order) or not isinstance(order[k][0], nn.Linear):
        raise ValueError("the conv layers must be followed by Flatten and a Linear head")
    head = order[k][0]
    return _Parsed(layers, names[id(head)], head)


# --------------------------------------------------------------------------- equations


def _geometry(conv: nn.Conv2d):
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    return kh, kw, sh, sw, ph, pw


def gradient_matrix(conv: nn.Conv2d, grad_out: np.ndarray, in_hw: tuple) -> np.ndarray:
    """Coefficients of the weight-gradient equations, shared by every input channel.

    Row ``(f, u, v)``, column ``(i, j)`` (an input pixel; padding pixels, known zeros, have
    no column) holds the sum of ``dl/dO[f, p, q]`` over the outputs ``(p, q)`` whose window
    puts kernel tap ``(u, v)`` on pixel ``(i, j)``.

    Parameters
    ----------
    conv : nn.Conv2d
    grad_out : numpy.ndarray
        ``dl/dO`` of shape ``(F, O_h, O_w)``, float64.
    in_hw : (int, int)
        Input height and width.

    Returns
    -------
    numpy.ndarray
        Shape ``(F * K_h * K_w, H * W)``, float64.
    """
    kh, kw, sh, sw, ph, pw = _geometry(conv)
    F_, oh, ow = grad_out.shape
    H, W = in_hw
    f, u, v, p, q = np.meshgrid(np.arange(F_), np.arange(kh), np.arange(kw), np.arange(oh), np.arange(ow),
                                indexing="ij")
    i, j = p * sh + u - ph, q * sw + v - pw
    ok = (i >= 0) & (i < H) & (j >= 0) & (j < W)
    A = np.zeros((F_ * kh * kw, H * W))
    A[((f * kh + u) * kw + v)[ok], (i * W + j)[ok]] = grad_out[f[ok], p[ok], q[ok]]
    return A


def forward_matrix(conv: nn.Conv2d, in_shape: tuple, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """The conv layer as a sparse matrix: ``O[f, p, q] - b[f] = (M @ x.ravel())[(f, p, q)]``.

    Parameters
    ----------
    conv : nn.Conv2d
    in_shape : (C, H, W)
    rows : bool numpy.ndarray of shape ``(F, O_h, O_w)``, optional
        Keep only these outputs (those whose pre-activation is known).

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(number of rows kept, C * H * W)``, float64.
    """
    kh, kw, sh, sw, ph, pw = _geometry(conv)
    C, H, W = in_shape
    w = conv.weight.detach().to(torch.float64).numpy()
    F_ = w.shape[0]
    oh, ow = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    f, c, u, v, p, q = np.meshgrid(np.arange(F_), np.arange(C), np.arange(kh), np.arange(kw), np.arange(oh),
                                   np.arange(ow), indexing="ij")
    i, j = p * sh + u - ph, q * sw + v - pw
    ok = (i >= 0) & (i < H) & (j >= 0) & (j < W)
    out_index = (f * oh + p) * ow + q
    M = sp.csr_matrix((w[f, c, u, v][ok], (out_index[ok], ((c * H + i) * W + j)[ok])), shape=(F_ * oh * ow, C * H * W))
    if rows is not None:
        M = M[np.flatnonzero(rows.reshape(-1))]
    return M


def _svd(a: np.ndarray, full_matrices: bool = True, compute_uv: bool = True):
    """SVD with a fallback: LAPACK's divide-and-conquer (gesdd) rarely fails to converge on
    nearly degenerate matrices; the slower QR-iteration driver (gesvd) then takes over."""
    if not np.all(np.isfinite(a)):
        raise np.linalg.LinAlgError("the system contains NaN or infinite coefficients")
    try:
        return np.linalg.svd(a, full_matrices=full_matrices, compute_uv=compute_uv)
    except np.linalg.LinAlgError:
        return scipy.linalg.svd(a, full_matrices=full_matrices, compute_uv=compute_uv, lapack_driver="gesvd")


def _svd_rank(s: np.ndarray, rtol: float) -> int:
    return int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0


# A sparse solution is accepted only if its condition estimate leaves float64 enough digits.
_MAX_CONDITION = 1e12


def _solve_layer(A_g, B, forward, C: int, n: int, rtol: float, dense_limit: int) \
        -> tuple[np.ndarray, np.ndarray, dict]:
    """Solve one layer; returns x (C, n), determined mask (C, n) and diagnostics.

    ``forward`` is a callable returning the forward equations ``(Fw, r)`` (or ``(None, None)``);
    it is called only when the weight-gradient equations alone do not settle the layer.
    Order of the solvers:

    1. weight-gradient equations alone (one reduced SVD of the shared matrix), if full rank;
    2. a square forward system by sparse LU, if well conditioned;
    3. both together, densely, once the gradient equations leave few unknowns (null-space
       elimination; exact ranks and the mask of undetermined pixels);
    4. a tall forward system by the normal equations, if well conditioned;
    5. step 3 with the full SVD of the shared matrix, within ``dense_limit``.
    """
    info: dict = {"unknowns": C * n, "gradient_equations": 0 if A_g is None else C * A_g.shape[0]}
    svd = None
    if A_g is not None and A_g.shape[0] >= n:
        svd = _svd(A_g, full_matrices=False)  # Vt is n x n
        U, s, Vt = svd
        rank = _svd_rank(s, rtol)
        info.update(gradient_rank=rank)
        if rank == n:  # 1.
            x = (Vt.T @ ((U.T @ B) / s[:, None])).T
            info.update(solver="gradient equations (shared SVD)", rank=C * n, condition=float(s[0] / s[-1]),
                        residual=_rel(A_g @ x.T - B, B), forward_equations=0)
            return x, np.ones((C, n), bool), info
    Fw, r = forward()
    info["forward_equations"] = 0 if Fw is None else Fw.shape[0]
    if Fw is not None and Fw.shape[0] == C * n:  # 2.
        done = _try_sparse(Fw, r, A_g, B, C, n, info)
        if done is not None:
            return done
    if svd is not None and C * (n - info["gradient_rank"]) <= min(dense_limit, 1024):  # 3.
        return _dense(A_g, B, Fw, r, C, n, rtol, svd, info)
    if Fw is not None and Fw.shape[0] > C * n:  # 4.
        done = _try_sparse(Fw, r, A_g, B, C, n, info)
        if done is not None:
            return done
    return _dense(A_g, B, Fw, r, C, n, rtol, svd, info, dense_limit)  # 5.


def _try_sparse(Fw, r, A_g, B, C, n, info):
    try:
        x, cond = _sparse_solve(Fw, r)
    except RuntimeError:  # exactly singular
        return None
    if not np.all(np.isfinite(x)) or (cond is not None and cond > _MAX_CONDITION):
        return None
    res_f = _rel(Fw @ x - r, r)
    res_g = _rel(A_g @ x.reshape(C, n).T - B, B) if A_g is not None else 0.0
    if res_f > 1e-8 or res_g > 1e-6:
        return None
    kind = "sparse LU" if Fw.shape[0] == Fw.shape[1] else "sparse normal equations" if cond else "LSMR"
    info.update(solver=f"forward equations ({kind})", rank=C * n, condition=cond, residual=max(res_f, res_g))
    return x.reshape(C, n), np.ones((C, n), bool), info


def _dense(A_g, B, Fw, r, C, n, rtol, svd, info, dense_limit=None):
    """Both families densely: the gradient equations fix each channel up to the null space N of
    the shared matrix; the forward equations are solved for the null-space coordinates."""
    if A_g is not None and A_g.shape[0]:
        if svd is None or svd[2].shape[0] < n:
            svd = _svd(A_g, full_matrices=A_g.shape[0] < n)  # Vt is n x n either way
        U, s, Vt = svd
        rg = _svd_rank(s, rtol)
        info.setdefault("gradient_rank", rg)
        xp = (Vt[:rg].T @ ((U[:, :rg].T @ B) / s[:rg, None])).T  # (C, n) particular, min-norm
        N = Vt[rg:].T  # (n, d) null space of the shared matrix
    else:
        rg, s, xp, N = 0, None, np.zeros((C, n)), np.eye(n)
    d = N.shape[1]
    grad_res = _rel(A_g @ xp.T - B, B) if A_g is not None else None
    if d == 0:  # determined by the gradient equations after all
        info.update(solver="gradient equations (shared SVD)", rank=C * n, condition=float(s[0] / s[rg - 1]),
                    residual=grad_res)
        return xp, np.ones((C, n), bool), info
    if Fw is None or Fw.shape[0] == 0:
        mask = np.broadcast_to(np.linalg.norm(N, axis=1) < 1e-8, (C, n)).copy()
        info.update(solver="gradient equations, rank-deficient (minimum norm)", rank=C * rg,
                    condition=float(s[0] / s[rg - 1]) if rg else None, residual=grad_res)
        return xp, mask, info
    if dense_limit is not None and C * d > dense_limit:
        info.update(solver="not analysed: the reduced system is too large for a dense rank analysis "
                           "(raise dense_limit)", rank=None, condition=None, residual=None)
        return xp.copy(), np.zeros((C, n), bool), info
    Fc = Fw.tocsc()
    cols = [Fc[:, c * n:(c + 1) * n] for c in range(C)]
    Mz = np.hstack([np.asarray(blk @ N) for blk in cols])  # (nf, C d)
    rhs = r - sum(np.asarray(blk @ xp[c]).ravel() for c, blk in enumerate(cols))
    Um, sm, Vmt = _svd(Mz, full_matrices=Mz.shape[0] < Mz.shape[1])
    rm = _svd_rank(sm, rtol)
    z = Vmt[:rm].T @ ((Um[:, :rm].T @ rhs) / sm[:rm]) if rm else np.zeros(C * d)
    x = xp + np.stack([N @ z[c * d:(c + 1) * d] for c in range(C)])
    null = Vmt[rm:].T  # (C d, k)
    free = np.concatenate([np.linalg.norm(N @ null[c * d:(c + 1) * d], axis=1) for c in range(C)])
    mask = (free < 1e-8).reshape(C, n)
    res = [_rel(Fw @ x.reshape(-1) - r, r)] + ([_rel(A_g @ x.T - B, B)] if A_g is not None else [])
    info.update(solver="gradient and forward equations (dense, null-space elimination)", rank=C * rg + rm,
                condition=float(sm[0] / sm[rm - 1]) if rm else None, residual=max(res))
    return x, mask, info


def _sparse_solve(Fw: sp.csr_matrix, r: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Solve a square or tall sparse system; returns x and a 1-norm condition estimate.

    Square: sparse LU. Tall and small (<= 8192 unknowns): LU of the normal equations with two
    steps of iterative refinement. Tall and large: LSMR (no condition estimate); the caller
    checks the residual either way.
    """
    m, n = Fw.shape
    if m == n:
        A = Fw.tocsc()
        lu = spla.splu(A)
        x = lu.solve(r)
    elif n <= 8192:
        A = (Fw.T @ Fw).tocsc()
        lu = spla.splu(A)
        x = lu.solve(Fw.T @ r)
        for _ in range(2):
            x = x + lu.solve(Fw.T @ (r - Fw @ x))
    else:
        x = spla.lsmr(Fw, r, atol=1e-15, btol=1e-15, maxiter=20 * n)[0]
        return x, None
    inv = spla.LinearOperator((n, n), matvec=lu.solve, rmatvec=lambda y: lu.solve(y, trans="T"), dtype=float)
    cond = float(spla.norm(A, 1) * spla.onenormest(inv))
    return x, cond


def _rel(residual: np.ndarray, rhs: np.ndarray) -> float:
    scale = float(np.linalg.norm(rhs))
    return float(np.linalg.norm(residual)) / scale if scale > 0 else float(np.linalg.norm(residual))


# --------------------------------------------------------------------------- the attack


def reconstruct(model: nn.Module, update: Update, *, method: str = "rconv", rtol: float = 1e-10,
                dense_limit: int = 4096, labels: bool = True) -> Reconstruction:
    """Rebuild one input image of a CNN from its gradients, layer by layer from the top.

    Parameters
    ----------
    model : nn.Module
        ``conv -> activation -> ... -> Flatten -> Linear (with bias) -> ...``, with the weights
        the update was computed at (float32 or float64; the attack computes in float64).
        Supported activations: those of :mod:`leakutils.activations`.
    update : Update
        From :func:`leakutils.capture.client_update` on **one** sample.
    method : {"rconv", "forward", "gradient"}
        Which equations to use (:data:`METHODS`). ``"forward"`` is the R-GAP approach and
        needs an invertible activation after every conv layer.
    rtol : float
        Singular values below ``rtol * largest`` count as zero (rank decisions).
    dense_limit : int
        Largest number of unknowns left for the dense rank analysis once the weight-gradient
        equations have fixed what they can (``C`` times the null-space dimension of the shared
        matrix); above it, a layer the fast solvers cannot settle keeps the minimum-norm
        solution of its weight-gradient equations and is marked undetermined.
    labels : bool
        Also recover the label from the output layer (iDLG).

    Returns
    -------
    Reconstruction
        ``images`` float64 ``(1, C, H, W)``; ``determined`` marks the pixels the equations fix;
        ``diagnostics["layers"]`` lists, from the top, one dict per conv layer: ``layer``,
        ``unknowns``, ``gradient_equations``, ``forward_equations``, ``rank``,
        ``condition``, ``residual``, ``solver``, ``determined`` (fraction), ``seconds``;
        plus ``head`` (the bias-ratio diagnostics), ``method`` and ``seconds``.

    Raises
    ------
    TypeError
        Wrong argument types; unsupported modules or activations.
    ValueError
        An update of more than one sample; an unknown method; ``"forward"`` with a
        non-invertible activation; a head without bias; gradients missing or of the wrong shape.

    References
    ----------
    Eltaras et al., "R-CONV: An Analytical Approach for Efficient Data Reconstruction via
    Convolutional Gradients", 2024 (arXiv 2406.04227); Zhu & Blaschko, "R-GAP: Recursive
    Gradient Attack on Privacy", ICLR 2021.
    """
    t_start = time.perf_counter()
    check_model_update(model, update)
    rtol = check_rtol(rtol)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if update.batch_size != 1:
        raise ValueError(f"this attack rebuilds one sample; the update averages {update.batch_size}. "
                         f"Capture the update of a single image (batch size 1).")
    if len(update.input_shape) != 3:
        raise ValueError(f"the model input must be an image (C, H, W), got {update.input_shape}")
    parsed = _parse(model, update.input_shape)
    if method == "forward":
        bad = [L.name for L in parsed.layers if not acts.is_invertible(L.activation)]
        if bad:
            raise ValueError(f"the forward equations (R-GAP) need invertible activations, but the activation after "
                             f"{bad} is not; use method='rconv'")
    head = bias_ratio_reconstruct(model, update, layer=parsed.head_name, labels=False, diagnose=False)
    top = parsed.layers[-1]
    X = head.images.reshape(top.out_shape).to(torch.float64)
    gX = (parsed.head.weight.detach().to(torch.float64).T @ layer_gradient(
        update, f"{parsed.head_name}.bias", parsed.head.bias)).reshape(top.out_shape)
    X_known = torch.ones(top.out_shape, dtype=torch.bool)
    gX_known = torch.ones(top.out_shape, dtype=torch.bool)
    layer_info = []
    for L in reversed(parsed.layers):
        t0 = time.perf_counter()
        X, x_known_in, gX, gX_known, info = _invert_layer(L, update, X, X_known, gX, gX_known, method, rtol,
                                                          dense_limit)
        X_known = x_known_in
        info.update(layer=L.name, determined=float(X_known.double().mean()), seconds=time.perf_counter() - t0)
        layer_info.append(info)
    images = X.reshape(1, *update.input_shape)
    determined = X_known.reshape(1, *update.input_shape)
    rec_labels = recover_labels(model, update).labels if labels else None
    diagnostics = {"method": method, "head": {k: v for k, v in head.diagnostics.items() if k != "rows_used"},
                   "layers": layer_info, "dtype": "float64", "seconds": time.perf_counter() - t_start}
    return Reconstruction(images=images, labels=rec_labels, determined=determined, diagnostics=diagnostics,
                          attack=f"conv/{method}")


def _invert_layer(L: ConvLayer, update: Update, X, X_known, gX, gX_known, method, rtol, dense_limit):
    """Rebuild the input of conv layer L from its output X (and dl/dX)."""
    conv, act = L.conv, L.activation
    C, H, W = L.in_shape
    X = acts.snap_to_range(act, X)
    dO = acts.propagate(act, X[None], gX[None])[0]
    dO_known = X_known & gX_known
    dW = layer_gradient(update, f"{L.name}.weight", conv.weight)
    A_g = B = None
    if method in ("rconv", "gradient"):
        usable = dO_known.flatten(1).all(1).numpy()  # filters whose dl/dO is fully known
        if usable.any():
            A_full = gradient_matrix(conv, dO.numpy(), (H, W))
            kk = conv.kernel_size[0] * conv.kernel_size[1]
            keep = np.repeat(usable, kk)
            A_g = A_full[keep]
            B = dW.permute(0, 2, 3, 1).reshape(-1, C).numpy()[keep]

    def forward():
        if method not in ("rconv", "forward"):
            return None, None
        O, O_det = acts.invert(act, X[None])
        rows = (O_det[0] & X_known).numpy()
        if not rows.any():
            return None, None
        bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else \
            torch.zeros(conv.out_channels, dtype=torch.float64)
        return forward_matrix(conv, L.in_shape, rows), (O[0] - bias[:, None, None]).numpy()[rows]

    try:
        x, mask, info = _solve_layer(A_g, B, forward, C, H * W, rtol, dense_limit)
    except np.linalg.LinAlgError as err:  # report, never crash: nothing below this layer is known
        x, mask = np.zeros((C, H * W)), np.zeros((C, H * W), bool)
        info = {"unknowns": C * H * W, "gradient_equations": 0 if A_g is None else C * A_g.shape[0],
                "forward_equations": None, "rank": None, "condition": None, "residual": None,
                "solver": f"failed: {err}"}
    x_in = torch.from_numpy(np.ascontiguousarray(x)).reshape(C, H, W)
    known_in = torch.from_numpy(mask).reshape(C, H, W)
    # Carry the gradient down: dl/dx = conv_transpose(dl/dO, W); unknown dl/dO spoils what it touches.
    w = conv.weight.detach().to(torch.float64)
    g_in = torch.nn.grad.conv2d_input((1, C, H, W), w, dO[None], stride=conv.stride, padding=conv.padding)[0]
    touched = torch.nn.grad.conv2d_input((1, C, H, W), (w != 0).double(), (~dO_known).double()[None],
                                         stride=conv.stride, padding=conv.padding)[0] > 0
    return x_in, known_in, g_in, ~touched, info


# --------------------------------------------------------------------------- counting


def count_constraints(conv: nn.Conv2d, input_shape, activation: nn.Module | None = None, *, seed: int = 0,
                      rtol: float = 1e-10) -> dict:
    """Count the unknowns and equations of one conv layer, and measure the rank they reach.

    Parameters
    ----------
    conv : nn.Conv2d
    input_shape : (C, H, W)
    activation : nn.Module, optional
        The activation after the layer (default: identity). It decides which forward
        equations exist (invertible outputs) and how many ``dl/dO`` entries are zero.
    seed : int
        The rank is measured on a random instance (input ``U(0, 1)``, ``dl/dX ~ N(0, 1)``) with
        the attack's own solvers, so large layers are measured as fast as they are attacked.
    rtol : float
        Relative tolerance of the rank decisions.

    Returns
    -------
    dict
        ``unknowns`` (``C H W``), ``forward_equations`` (``F O_h O_w``, the R-CONV bound's
        ``|A|``), ``gradient_equations`` (``C F K^2``; per channel ``F K^2``, the bound's
        ``|B|``), ``forward_available`` (forward equations whose pre-activation is known),
        ``gradient_rank_per_channel``, ``rank`` (of both together), ``determined`` (fraction
        of input pixels fixed), ``bound_safe``: the R-CONV defence bound ``|X| > |A| + |B|``
        with totals, ``C H W > F O_h O_w + C F K^2`` (more unknowns than equations of both
        kinds, so the layer cannot be solved whatever the ranks).

    Raises
    ------
    TypeError
        ``conv`` not an ``nn.Conv2d``, or an unsupported activation.
    ValueError
        An input shape that does not fit the layer.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    act = activation if activation is not None else nn.Identity()
    acts.rule_for(act)
    try:
        C, H, W = (int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}") from None
    if C != conv.in_channels:
        raise ValueError(f"the layer has {conv.in_channels} input channels, input_shape has {C}")
    gen = torch.Generator().manual_seed(seed)
    conv64 = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       bias=conv.bias is not None).double()
    conv64.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    x = torch.rand(1, C, H, W, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        O = conv64(x)
        X = copy.deepcopy(act).double()(O)
    gX = torch.randn(X.shape, generator=gen, dtype=torch.float64)
    dO = acts.propagate(act, X, gX)[0]
    O_pre, O_det = acts.invert(act, X)
    A_g = gradient_matrix(conv64, dO.numpy(), (H, W))
    B = A_g @ x[0].reshape(C, H * W).numpy().T
    rows = O_det[0].numpy()
    Fw = forward_matrix(conv64, (C, H, W), rows)
    bias = conv64.bias.detach() if conv64.bias is not None else torch.zeros(conv64.out_channels, dtype=torch.float64)
    r = (O_pre[0] - bias[:, None, None]).numpy()[rows]
    s_g = _svd(A_g, compute_uv=False)
    rank_g = _svd_rank(s_g, rtol)
    _, mask, info = _solve_layer(A_g, B, lambda: (Fw, r) if Fw.shape[0] else (None, None), C, H * W, rtol,
                                 dense_limit=10 ** 9)
    rank = info["rank"]
    F_, oh, ow = O.shape[1:]
    unknowns = C * H * W
    A_count, B_count = F_ * oh * ow, F_ * conv.kernel_size[0] * conv.kernel_size[1]
    return {
        "unknowns": unknowns, "forward_equations": A_count, "gradient_equations": C * B_count,
        "forward_available": int(Fw.shape[0]), "gradient_rank_per_channel": rank_g, "rank": rank,
        "determined": float(mask.mean()),
        "bound_safe": unknowns > A_count + C * B_count,
    }
