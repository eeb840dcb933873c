"""The two families of linear equations a conv layer gives about its input.

- **Weight-gradient equations** (R-CONV's "gradient constraints", R-GAP's gradient rows):
  ``dl/dW[f, c, u, v] = sum_{p,q} dl/dO[f, p, q] * x_pad[c, pS + u, qS + v]``; for each input
  channel ``c`` these are ``F K^2`` equations in the ``H W`` pixels of that channel, with one
  coefficient matrix (built from ``dl/dO``) shared by every channel.
- **Forward equations** (R-GAP's "weight constraints"): ``W * x + b = O``, usable where the
  pre-activation ``O`` is known.

Padding pixels are known zeros and get no column. References: Eltaras et al. 2024
(arXiv 2406.04227); Zhu & Blaschko, "R-GAP", ICLR 2021.
"""
from __future__ import annotations

import operator

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

__all__ = ["gradient_matrix", "forward_matrix", "output_size", "padding_count"]


def _check_conv(conv) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or isinstance(conv.padding, str) \
            or conv.padding_mode != "zeros":
        raise ValueError("the conv layer uses groups, dilation, string or non-zero padding; the equations are "
                         "written for a plain nn.Conv2d (groups=1, dilation=1, integer zero padding)")


def _check_hw(in_hw, name: str = "in_hw") -> tuple[int, int]:
    """``(H, W)``: two positive integers (Python, NumPy or integer-tensor scalars).

    TypeError for anything else (a string, floats, a scalar); ValueError for a wrong count or
    a size below 1.
    """
    if isinstance(in_hw, (str, bytes)) or not hasattr(in_hw, "__len__") or \
            any(isinstance(s, bool) or not hasattr(s, "__index__") for s in in_hw):
        raise TypeError(f"{name} must be (height, width) as two integers, got {in_hw!r}")
    if len(in_hw) != 2:
        raise ValueError(f"{name} must be (height, width) as two integers, got {in_hw!r}")
    H, W = (operator.index(s) for s in in_hw)
    if H < 1 or W < 1:
        raise ValueError(f"{name} must be positive, got {in_hw!r}")
    return H, W


def _geometry(conv: nn.Conv2d):
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    return kh, kw, sh, sw, ph, pw


def output_size(conv: nn.Conv2d, in_hw) -> tuple[int, int]:
    """``(O_h, O_w)`` of the layer's output for an input of ``in_hw`` pixels.

    Raises
    ------
    TypeError
        ``conv`` not an ``nn.Conv2d``.
    ValueError
        A layer the equations do not cover, or an input smaller than the padded kernel.
    """
    _check_conv(conv)
    H, W = _check_hw(in_hw)
    kh, kw, sh, sw, ph, pw = _geometry(conv)
    oh, ow = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"a {H}x{W} input is smaller than the layer's {kh}x{kw} kernel (padding {ph}, {pw})")
    return oh, ow


def padding_count(conv: nn.Conv2d, in_hw) -> int:
    """Padding pixels per channel: ``(H + 2P_h)(W + 2P_w) - H W``, R-GAP's padding rows per channel."""
    H, W = _check_hw(in_hw)
    _, _, _, _, ph, pw = _geometry(conv)
    return (H + 2 * ph) * (W + 2 * pw) - H * W


def gradient_matrix(conv: nn.Conv2d, grad_out: np.ndarray, in_hw: tuple) -> np.ndarray:
    """Coefficients of the weight-gradient equations, shared by every input channel.

    Row ``(f, u, v)``, column ``(i, j)`` (an input pixel; padding pixels, known zeros, have
    no column) holds the sum of ``dl/dO[f, p, q]`` over the outputs ``(p, q)`` whose window
    puts kernel tap ``(u, v)`` on pixel ``(i, j)``. Then ``A @ x[c].ravel()`` is
    ``dl/dW[:, c].ravel()`` for every channel ``c``.

    Parameters
    ----------
    conv : nn.Conv2d
        A plain convolution (groups 1, dilation 1, integer zero padding).
    grad_out : numpy.ndarray
        ``dl/dO`` of shape ``(F, O_h, O_w)``, finite; used in float64.
    in_hw : (int, int)
        Input height and width in pixels.

    Returns
    -------
    numpy.ndarray
        Shape ``(F * K_h * K_w, H * W)``, float64.

    Raises
    ------
    TypeError
        ``conv`` not an ``nn.Conv2d``, ``grad_out`` not an array or tensor.
    ValueError
        ``grad_out`` of the wrong shape or not finite; a layer the equations do not cover.
    """
    oh, ow = output_size(conv, in_hw)
    if isinstance(grad_out, torch.Tensor):
        grad_out = grad_out.detach().cpu().numpy()
    if not isinstance(grad_out, np.ndarray):
        raise TypeError(f"grad_out must be a numpy array (F, O_h, O_w), got {type(grad_out).__name__}")
    F_ = conv.out_channels
    if grad_out.shape != (F_, oh, ow):
        raise ValueError(f"grad_out must have shape (F, O_h, O_w) = {(F_, oh, ow)} for this layer and input, "
                         f"got {grad_out.shape}")
    grad_out = grad_out.astype(np.float64, copy=False)
    if not np.all(np.isfinite(grad_out)):
        raise ValueError("grad_out contains NaN or infinite values")
    kh, kw, sh, sw, ph, pw = _geometry(conv)
    H, W = _check_hw(in_hw)
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
        A plain convolution (groups 1, dilation 1, integer zero padding).
    in_shape : (C, H, W)
        Shape of one input; ``C`` must be the layer's input channels.
    rows : bool numpy.ndarray of shape ``(F, O_h, O_w)``, optional
        Keep only these outputs (those whose pre-activation is known).

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(number of rows kept, C * H * W)``, float64.

    Raises
    ------
    TypeError
        ``conv`` not an ``nn.Conv2d``.
    ValueError
        ``in_shape`` not ``(C, H, W)`` of this layer, ``rows`` of the wrong shape, weights not finite.
    """
    _check_conv(conv)
    try:
        C, H, W = (int(s) for s in in_shape)
    except (TypeError, ValueError):
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape!r}") from None
    if C != conv.in_channels:
        raise ValueError(f"the layer has {conv.in_channels} input channels, in_shape has {C}")
    oh, ow = output_size(conv, (H, W))
    w = conv.weight.detach().to(torch.float64).cpu().numpy()
    if not np.all(np.isfinite(w)):
        raise ValueError("the conv layer's weights contain NaN or infinite values")
    kh, kw, sh, sw, ph, pw = _geometry(conv)
    F_ = w.shape[0]
    f, c, u, v, p, q = np.meshgrid(np.arange(F_), np.arange(C), np.arange(kh), np.arange(kw), np.arange(oh),
                                   np.arange(ow), indexing="ij")
    i, j = p * sh + u - ph, q * sw + v - pw
    ok = (i >= 0) & (i < H) & (j >= 0) & (j < W)
    out_index = (f * oh + p) * ow + q
    M = sp.csr_matrix((w[f, c, u, v][ok], (out_index[ok], ((c * H + i) * W + j)[ok])),
                      shape=(F_ * oh * ow, C * H * W))
    if rows is not None:
        rows = np.asarray(rows)
        if rows.shape != (F_, oh, ow) or rows.dtype != bool:
            raise ValueError(f"rows must be a bool array of shape {(F_, oh, ow)}, got {rows.dtype} {rows.shape}")
        M = M[np.flatnonzero(rows.reshape(-1))]
    return M
