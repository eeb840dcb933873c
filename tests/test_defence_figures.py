"""The figures of the defence matrix (leakutils.defences.figures) draw what the rows say."""
import matplotlib
import pytest
from matplotlib.figure import Figure

from leakutils.defences import figures

matplotlib.use("Agg")


def _row(defence, strength, attack, psnr, ssim=None, epsilon=None):
    return {"defence": defence, "strength": strength, "attack": attack, "psnr_median": psnr,
            "ssim_median": ssim, "epsilon": epsilon}


ROWS = [
    _row("none", None, "bias_ratio", 315.0, 1.0), _row("none", None, "exan", 12.0, 0.2),
    _row("noise", 0.01, "bias_ratio", 33.0, 0.9), _row("noise", 0.01, "exan", None),
    _row("noise", 0.1, "bias_ratio", 11.0, 0.3), _row("noise", 0.1, "exan", None),
    _row("noise", 0.1, "inverting", 15.4, 0.5),
    _row("dp_sgd", 0.03, "bias_ratio", 10.0, 0.2, 632.0), _row("dp_sgd", 0.3, "bias_ratio", 9.0, 0.1, 7.0),
]


def _texts(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def test_heatmap_cells_read_the_rows_and_frame_where_the_defence_holds():
    fig = figures.heatmap(ROWS, title="t")
    assert isinstance(fig, Figure)
    texts = _texts(fig)
    # 3 attacks + best, 5 settings; inverting ran on one setting only (empty elsewhere)
    assert len(texts) == 4 * 5
    assert texts.count("exact") == 2 and texts.count("ref") == 2
    assert "15" in texts and "33" in texts
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["none -", "noise 0.01", "noise 0.1", "dp sgd 0.03", "dp sgd 0.3"]
    # the best attack is below 20 dB at noise 0.1 (15.4) and both DP settings: three frames
    frames = [p for p in fig.axes[0].patches if not p.get_fill()]
    assert len(frames) == 3


def test_privacy_utility_places_each_setting_at_its_accuracy_and_best_psnr():
    utility = {("none", None): {"accuracy": 0.9, "epsilon": None},
               ("noise", 0.01): {"accuracy": 0.89, "epsilon": None},
               ("noise", 0.1): {"accuracy": 0.85, "epsilon": None},
               ("dp_sgd", 0.03): {"accuracy": 0.7, "epsilon": 1e5},
               ("dp_sgd", 0.3): {"accuracy": 0.72, "epsilon": 50.0}}
    fig = figures.privacy_utility(ROWS, utility)
    assert len(fig.axes) == 3
    lines = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    noise = lines["noise"]
    # the best attack at noise 0.1 is Inverting Gradients (15.4 dB), not the fit (11 dB)
    assert list(noise.get_xdata()) == [89.0, 85.0] and list(noise.get_ydata()) == [33.0, 15.4]
    # exact shows at the top of the scale
    assert list(lines["none"].get_ydata()) == [figures.SHOWN_UP_TO]
    dp = {line.get_label(): line for line in fig.axes[2].get_lines() if not line.get_label().startswith("_")}
    assert list(dp["one step (the attacked update)"].get_xdata()) == [7.0, 632.0]
    assert list(dp["whole training run"].get_xdata()) == [50.0, 1e5]
    # without DP-SGD, two panels
    assert len(figures.privacy_utility(ROWS[:7], utility).axes) == 2


def test_figures_refuse_what_they_cannot_draw():
    with pytest.raises(TypeError, match="rows must be the non-empty list"):
        figures.heatmap([])
    with pytest.raises(TypeError, match="utility must be a dict"):
        figures.privacy_utility(ROWS, {("none", None): 0.9})
    with pytest.raises(ValueError, match="no setting of rows has an entry in utility"):
        figures.privacy_utility(ROWS, {("prune", 0.5): {"accuracy": 0.8}})
    assert figures.strength_label(None) == "-" and figures.strength_label(0.001) == "0.001"
    assert figures.strength_label("sign") == "sign" and figures.strength_label(64) == "64"
