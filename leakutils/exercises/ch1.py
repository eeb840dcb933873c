"""Checks of Chapter 1's exercises (bias-ratio inversion)."""
from __future__ import annotations

import numpy as np

from ._base import array, close, exercise, flags, mnist, wrong

__all__ = ["BY_HAND_DW", "BY_HAND_DB", "DEFENCES"]

#: Exercise 1.1: the weight gradient of a 2-unit layer on a 2x2 image flattened row by row.
BY_HAND_DW = np.array([[0.1, 0.2, 0.0, 0.4], [-0.05, -0.1, 0.0, -0.2]])
#: Exercise 1.1: the bias gradient of the same layer.
BY_HAND_DB = np.array([0.4, -0.2])

#: Exercise 1.3: the keys of ``stops``, one per defence, in the order of the exercise.
DEFENCES = ("clipping", "noise", "secure_aggregation", "batch_of_32")


def _least_squares(dW: np.ndarray, db: np.ndarray) -> np.ndarray:
    """The chapter's estimate: sum_m db_m dW_m / sum_m db_m^2 (rows with db_m = 0 add nothing)."""
    return db @ dW / (db @ db)


@exercise("ch1-by-hand", "1.1", answers=("row_images", "x_hat", "x_dead"))
def by_hand(row_images, x_hat, x_dead) -> None:
    """Exercise 1.1: the image from each row, the least-squares estimate, a dead unit.

    Parameters
    ----------
    row_images : array-like, (2, 4) or (2, 2, 2)
        Row ``m``: the image that row ``m`` of the weight gradient gives (4 pixels in the
        order x1..x4, or a 2x2 image).
    x_hat : array-like, (4,) or (2, 2)
        The least-squares estimate of the chapter's formula.
    x_dead : array-like, (4,) or (2, 2)
        The least-squares estimate once unit 2 is an inactive ReLU (a zero second row and
        bias gradient).

    Tolerance: 1e-6 absolute per pixel.
    """
    rows = array("row_images", row_images, (2, 4), (2, 2, 2), what="2 images of 4 pixels (2x4)")
    for m in range(2):
        want = BY_HAND_DW[m] / BY_HAND_DB[m]
        if close(rows[m], want, atol=1e-6):
            continue
        if close(rows[m], -want, atol=1e-6):
            raise wrong("row_images", f"row {m + 1}: every pixel has the wrong sign; divide the "
                        "weight row by its own bias gradient, the sign cancels")
        if close(rows[m], BY_HAND_DW[m], atol=1e-6):
            raise wrong("row_images", f"row {m + 1} is still the gradient: divide it by that "
                        "row's bias gradient")
        raise wrong("row_images", f"row {m + 1}: divide each entry of the weight-gradient row by "
                    "the bias gradient of the same row")
    x = array("x_hat", x_hat, (4,), (2, 2), what="4 pixels (or a 2x2 image)")
    want = _least_squares(BY_HAND_DW, BY_HAND_DB)
    if not close(x, want, atol=1e-6):
        if close(x, BY_HAND_DB @ BY_HAND_DW, atol=1e-6):
            raise wrong("x_hat", "that is the numerator only: divide by the sum of the squared "
                        "bias gradients")
        raise wrong("x_hat", "weight each row of dl/dW by its own bias gradient, add the rows, "
                    "and divide by the sum of the squared bias gradients")
    x = array("x_dead", x_dead, (4,), (2, 2), what="4 pixels (or a 2x2 image)")
    dead_W, dead_b = BY_HAND_DW * [[1], [0]], BY_HAND_DB * [1, 0]
    if not close(x, _least_squares(dead_W, dead_b), atol=1e-6):
        raise wrong("x_dead", "with unit 2 inactive its row and bias gradient are zero: the "
                    "least-squares sums run over the rows that are left")


@exercise("ch1-labels-without-bias", "1.2", answers=("labels_found", "digit0"))
def labels_without_bias(labels_found, digit0) -> None:
    """Exercise 1.2: labels from the output weight gradient; the first digit without a bias.

    Parameters
    ----------
    labels_found : array-like of 50 ints
        The label recovered for each of the first 50 MNIST digits (one client each), from
        ``update["out.weight"]`` alone.
    digit0 : array-like, 784 pixels ((784,), (28, 28), (1, 28, 28) or (1, 1, 28, 28))
        The first digit, ``mnist[0]``, rebuilt from one row of ``update["fc1.weight"]`` of
        the bias-free network: signed and scaled with the fact that MNIST's brightest
        pixel is 1.

    Tolerance: labels exact; pixels 1e-6 absolute.
    """
    truth = mnist().labels[:50].numpy()
    found = array("labels_found", labels_found, (50,), what="50 labels, one per digit")
    if not np.array_equal(found, found.round()):
        raise wrong("labels_found", "labels are whole numbers 0..9: take the argmin of the row "
                    "sums, not the sums")
    bad = np.nonzero(found != truth)[0]
    if len(bad):
        raise wrong("labels_found", f"{len(bad)} of 50 are wrong (the first: digit {bad[0]}); "
                    "the true class is the row of the output weight gradient whose sum has the "
                    "sign no other row has")
    x = mnist().images[0].reshape(-1).numpy()
    shapes = [(784,), (28, 28), (1, 28, 28), (1, 1, 28, 28)]
    got = array("digit0", digit0, *shapes, what="the first digit's 784 pixels")
    if close(got, x, atol=1e-6):
        return
    cos = float(got @ x / (np.linalg.norm(got) * np.linalg.norm(x) + 1e-300))
    if cos < -0.999999:
        raise wrong("digit0", "the right digit with the wrong sign: pixels are never negative, "
                    "so flip the row by the sign of its largest-magnitude entry")
    if cos > 0.999999:
        raise wrong("digit0", "the right digit at the wrong scale: the row is the digit times "
                    "one unknown number; MNIST's brightest pixel fixes it")
    raise wrong("digit0", "this is not the first digit: take a non-zero row of the first "
                "layer's weight gradient of the client holding mnist[0]")


@exercise("ch1-defences", "1.3", answers=("stops",))
def defences(stops) -> None:
    """Exercise 1.3: which defences keep every image from the bias ratio.

    Parameters
    ----------
    stops : dict
        Keys ``"clipping"``, ``"noise"``, ``"secure_aggregation"``, ``"batch_of_32"``
        (:data:`DEFENCES`); each value True if that defence, strong enough, leaves the
        server no client's image exactly, False if some image still comes back.
    """
    got = flags("stops", stops, DEFENCES)
    # the chapter's measurements: clipping scales numerator and denominator alike; noise
    # grows until the digit is gone; rows that one client (or one digit) reaches alone
    # still give it exactly, in an aggregate of 10 and in a batch of 32
    truth = {"clipping": False, "noise": True, "secure_aggregation": False, "batch_of_32": False}
    hints = {
        "clipping": "clipping multiplies every gradient by one factor: what happens to a ratio "
                    "of two of them? Try it with Update.map",
        "noise": "noise enters numerator and denominator: measure the PSNR as sigma grows "
                 "to 1e-1",
        "secure_aggregation": "the sum of 10 updates is one batch of 10: is there a row that "
                              "only one client's image reaches? (bias_ratio.row_inputs)",
        "batch_of_32": "the same question as for secure aggregation: a unit active for just "
                       "one digit of the 32",
    }
    for key in DEFENCES:
        if got[key] != truth[key]:
            raise wrong(f"stops[{key!r}]", hints[key])
