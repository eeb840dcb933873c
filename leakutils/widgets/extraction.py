"""Chapter 6's panel: a trained MNIST MLP's weights extracted exactly from logit queries."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .. import plot
from . import panel
from .static import FRAME_DPI, StaticPanel, check_values, static_panel

__all__ = ["ExtractionDemo", "train_target", "extraction_demo", "show_extraction_demo", "extraction_panel", "extraction_twin"]

#: The text of the panel's run button: its demo can take seconds, so it runs on request.
RUN = "Run the attack"

#: Limits of the Chapter 6 demo: hidden width and random search lines.
EXTRACTION_LIMITS = {"width": (2, 128), "lines": (1, 12)}

#: Rows shown by :func:`show_extraction_demo`.
ROWS_SHOWN = 6

#: Lines searched on the frames of the kernel-free twin: at width 16, one or two lines miss
#: units and three find them all.
TWIN_LINES = (1, 2, 3, 4, 6, 8, 12)


@dataclass
class ExtractionDemo:
    """One exact extraction of a trained 784-N-10 ReLU network (Chapter 6).

    Attributes
    ----------
    width, lines : int
        N and the random lines searched.
    queries : int
        Inputs sent to the black box.
    units_found : int
    complete : bool
        All units found and the output layer fits (relative residual <= 1e-6).
    max_error : float
        Worst absolute weight error after aligning units (over the units found).
    agreement : float
        Fraction of 900 held-out MNIST digits with the same top-1 class (NaN if incomplete).
    true_rows, rows : torch.Tensor
        ``(n, 1, 28, 28)`` float64: the first units' true rows (unit norm, sign of the
        extracted one) and the extracted rows, mapped to [0, 1] for display.
    seconds : float
    """

    width: int
    lines: int
    queries: int
    units_found: int
    complete: bool
    max_error: float
    agreement: float
    true_rows: torch.Tensor
    rows: torch.Tensor
    seconds: float


#: Trained targets shipped with the package: the panel's default (width 16, seed 0).
SHIPPED = Path(__file__).with_name("trained")


def train_target(width: int, seed: int) -> np.ndarray:
    """Train the panel's target: a 784-width-10 ReLU MLP, 3 epochs of Adam (1e-3, batches of
    100) on MNIST digits 0-1999 in float32, from PyTorch's initialisation under ``seed``.

    Returns
    -------
    numpy.ndarray
        ``(n_params,)`` float32, flattened as :class:`leakutils.metamodel.Sizes` orders them.
    """
    from .. import metamodel as mm

    width = panel.check_int("width", width, *EXTRACTION_LIMITS["width"])
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    ds = panel.dataset("mnist")
    x, y = ds.images[:2000].reshape(2000, -1).float(), ds.labels[:2000]
    pop = mm.train_population(1, x, y, x[:1], sizes=mm.Sizes(784, width, 10), epochs=3, seed=seed)
    return pop.weights[0].numpy().astype(np.float32)


def _weights_file(width: int, seed: int) -> str:
    """The file name of a trained target's weights (in :data:`SHIPPED` or the cache)."""
    return f"mnist-mlp-784-{width}-10-seed{seed}.npy"


@lru_cache(maxsize=8)
def trained_mlp(width: int, seed: int):
    """The panel's target network (see :func:`train_target`) as a float64 ``models.MLP``.

    Trained once: the weights come from the package (:data:`SHIPPED`) or from
    ``leakutils.data.cache_dir() / "trained"``; a setting met for the first time is trained
    (about a second at width 16, ten at width 128) and written there. A stored file of the
    wrong size or with non-finite values is ignored and replaced.
    """
    from .. import data
    from .. import metamodel as mm

    sizes = mm.Sizes(784, width, 10)
    name = _weights_file(width, seed)
    cache = data.cache_dir() / "trained"
    for folder in (SHIPPED, cache):
        flat = _read_weights(folder / name, sizes.n_params)
        if flat is not None:
            break
    else:
        flat = train_target(width, seed)
        _write_weights(cache / name, flat)
    return mm.to_model(torch.from_numpy(flat), sizes)


def _read_weights(path: Path, n_params: int) -> np.ndarray | None:
    """Stored float32 weights of the expected size, all finite; None for anything else."""
    try:
        flat = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if flat.dtype != np.float32 or flat.shape != (n_params,) or not np.isfinite(flat).all():
        return None
    return flat


def _write_weights(path: Path, flat: np.ndarray) -> None:
    """Write atomically; a folder that cannot be written only means training again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        with open(partial, "wb") as f:
            np.save(f, flat)
        os.replace(partial, path)
    except OSError:
        pass


def extraction_demo(width: int = 16, lines: int = 4, *, seed: int = 0) -> ExtractionDemo:
    """Extract a trained MNIST MLP ``784-width-10`` from logit queries and measure the result.

    The attack is :func:`leakutils.extraction.extract`, the one-hidden-layer case of
    Carlini, Jagielski and Mironov (CRYPTO 2020).

    Parameters
    ----------
    width : int
        Hidden units, 2..128.
    lines : int
        Random lines searched for critical points, 1..12. Too few lines miss units: the
        result is then marked incomplete instead of raising.
    seed : int
        Seed of the target's training and of the search, 0..2**32 - 1.

    Returns
    -------
    ExtractionDemo

    Raises
    ------
    TypeError
        A non-integer width, lines or seed.
    ValueError
        Sizes or seed out of range.
    """
    from .. import extraction as ex

    width = panel.check_int("width", width, *EXTRACTION_LIMITS["width"])
    lines = panel.check_int("lines", lines, *EXTRACTION_LIMITS["lines"])
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    net = trained_mlp(width, seed)
    oracle = ex.as_oracle(net)
    t0 = time.perf_counter()
    e = ex.extract(oracle, 784, width, lines=lines, max_lines=lines, seed=seed, strict=False)
    seconds = time.perf_counter() - t0
    W, b, A = (p.detach().numpy() for p in (net.fc1.weight, net.fc1.bias, net.out.weight))
    al = ex.align(W, b, A, e)
    complete = bool(e.diagnostics["complete"])
    held_out = panel.dataset("mnist").images[4100:].reshape(900, -1).numpy()
    agree = ex.agreement(e, oracle, held_out)["agreement"] if complete else float("nan")
    n = min(ROWS_SHOWN, e.W.shape[0])
    true = W[al["perm"][:n]] / np.linalg.norm(W[al["perm"][:n]], axis=1, keepdims=True)
    true *= np.sign(np.sum(true * e.W[:n], axis=1, keepdims=True))
    return ExtractionDemo(width=width, lines=lines, queries=e.queries, units_found=e.W.shape[0], complete=complete,
                          max_error=al["max_error"] if complete else al["errors"]["W"], agreement=agree,
                          true_rows=_rows_as_images(true), rows=_rows_as_images(e.W[:n]), seconds=seconds)


def _rows_as_images(rows: np.ndarray) -> torch.Tensor:
    """Weight rows ``(n, 784)`` as images ``(n, 1, 28, 28)`` in [0, 1], 0.5 for a zero weight."""
    r = torch.from_numpy(np.ascontiguousarray(rows)).reshape(-1, 1, 28, 28)
    m = r.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return 0.5 + 0.5 * r / m


def show_extraction_demo(result: ExtractionDemo):
    """Plot an :class:`ExtractionDemo`: true rows above extracted rows (grey = 0), numbers in the title.

    Returns a ``matplotlib.figure.Figure``; raises TypeError for anything but an ExtractionDemo.
    """
    panel.check_result(result, ExtractionDemo, "extraction_demo")
    n = result.rows.shape[0]
    if result.complete:
        head = (f"{result.queries:,} queries, {result.units_found}/{result.width} units, worst weight error "
                f"{result.max_error:.1e}, agreement {result.agreement:.1%} ({result.seconds:.1f} s)")
    else:
        head = (f"{result.queries:,} queries: only {result.units_found}/{result.width} units found, so the output "
                f"layer cannot be fitted; search more lines (row error {result.max_error:.1e})")
    titles = [f"true unit {k}" for k in range(n)] + [f"extracted {k}" for k in range(n)]
    return plot.image_grid(torch.cat([result.true_rows, result.rows]), titles, ncols=n, size=1.3, suptitle=head)


def extraction_panel():
    """A live panel: hidden width and number of search lines; see queries, units found, weight error.

    Returns an ``ipywidgets.VBox`` that re-runs :func:`extraction_demo` when its button is
    pressed (thousands of queries take seconds).

    Raises
    ------
    ImportError
        When ``ipywidgets`` is not installed (``pip install ipywidgets``).
    """
    controls = {
        "width": panel.Choice([4, 8, 16, 32, 64, 128], 16, "width"),
        "lines": panel.Slider(4, 1, 12, "lines"),
    }
    return panel.build_panel(extraction_demo, show_extraction_demo, controls, run_button=RUN)


def _twin_caption(result: ExtractionDemo) -> str:
    """One frame's score: units found, queries, and the weight error and agreement when complete."""
    found = f"{result.units_found}/{result.width} units from {result.queries:,} queries"
    if not result.complete:
        return f"{found}; the output layer cannot be fitted"
    return f"{found}; worst weight error {result.max_error:.0e}, agreement {result.agreement:.0%}"


def extraction_twin(lines=TWIN_LINES, width: int = 16, *, seed: int = 0, dpi: int = FRAME_DPI) -> StaticPanel:
    """The kernel-free twin of :func:`extraction_panel`: the number of lines searched, one slider.

    Runs :func:`extraction_demo` for each number of random search lines in ``lines`` on the
    same trained ``784-width-10`` MNIST network and draws each with
    :func:`show_extraction_demo` (true rows above extracted rows). Each frame's caption gives
    the lines, the units found out of ``width``, the queries sent, and, once every unit is
    found and the output layer fits, the worst weight error and the agreement of the
    extracted network with the real one on held-out digits. About 1 s per frame on one core
    at width 16, plus the target's training (a few seconds, shared with the demo).

    Parameters
    ----------
    lines : sequence of int
        2..40 distinct numbers of lines, each 1..12, in slider order (default
        :data:`TWIN_LINES`).
    width : int
        Hidden units of the target, 2..128.
    seed : int
        Seed of the target's training and of the search, 0..2**32 - 1.
    dpi : int
        Resolution of the frames, 30..200.

    Returns
    -------
    StaticPanel
        Its ``results`` are the :class:`ExtractionDemo` of each number of lines, in order.

    Raises
    ------
    TypeError
        ``lines`` not a sequence; a non-integer number of lines, width or seed.
    ValueError
        Fewer than 2 or more than 40 values or a repeated one, lines, width, seed or dpi out
        of range.
    """
    counts = check_values("lines", lines, lambda n: panel.check_int("lines", n, *EXTRACTION_LIMITS["lines"]))
    width = panel.check_int("width", width, *EXTRACTION_LIMITS["width"])
    seed = panel.check_int("seed", seed, 0, panel.MAX_SEED)
    return static_panel(extraction_demo, show_extraction_demo, "lines", counts, caption=_twin_caption,
                        label="lines", dpi=dpi, width=width, seed=seed)
