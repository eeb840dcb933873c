import matplotlib.figure
import pytest
import torch

from leakutils import metrics, plot, widgets


def test_to_display_shapes():
    assert plot.to_display(torch.rand(1, 5, 6)).shape == (5, 6)
    assert plot.to_display(torch.rand(3, 5, 6)).shape == (5, 6, 3)
    assert plot.to_display(torch.full((4, 4), 2.0)).max() == 1.0  # clipped for display
    with pytest.raises(ValueError, match="an image must have shape"):
        plot.to_display(torch.rand(2, 5, 6))
    with pytest.raises(TypeError):
        plot.to_display([[0.0]])


def test_image_grid_and_errors(mnist):
    fig = plot.image_grid(mnist.images[:5], [str(i) for i in range(5)], ncols=3, suptitle="s")
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 6
    with pytest.raises(ValueError, match="titles"):
        plot.image_grid(mnist.images[:2], ["a"])
    with pytest.raises(ValueError, match="non-empty"):
        plot.image_grid(mnist.images[0, 0])


def test_compare_grid_puts_scores_in_titles(mnist):
    truth = mnist.images[:3]
    rec = truth.flip(0) + 0.01
    scores = metrics.compare(rec, truth)
    fig = plot.compare_grid(truth, rec, scores, labels=["a", "b", "c"])
    below = [ax.get_xlabel() for ax in fig.axes]
    assert sum("40.0 dB" in t for t in below) == 3 and "a" in [ax.get_title() for ax in fig.axes]
    assert fig.axes[0].get_ylabel() == "original" and fig.axes[3].get_ylabel() == "rebuilt"
    partial = plot.compare_grid(truth, truth[1:2], metrics.compare(truth[1:2], truth))
    assert [ax.get_xlabel() for ax in partial.axes[3:]].count("(no match)") == 2
    with pytest.raises(ValueError, match="same image shape"):
        plot.compare_grid(truth, torch.rand(3, 1, 5, 5))
    with pytest.raises(ValueError, match="labels"):
        plot.compare_grid(truth, rec, labels=["a"])
    with pytest.raises(ValueError, match="same batch size"):
        plot.compare_grid(truth, rec[:2])


def test_federated_round_draws(mnist):
    assert isinstance(plot.federated_round(mnist.images[0]), matplotlib.figure.Figure)
    assert isinstance(plot.federated_round(), matplotlib.figure.Figure)
    with pytest.raises(ValueError, match="an image must have shape"):
        plot.federated_round(mnist.images[:2])


def test_bias_ratio_demo_single_and_batch():
    single = widgets.bias_ratio_demo("lfw", 4, 1, width=64)
    assert single.scores.min_psnr >= 100 and single.scores.label_accuracy == 1.0
    assert single.rows_isolating_a_sample == 1
    batch = widgets.bias_ratio_demo("digits", 0, 5, width=64)
    assert batch.scores.mean_psnr < 30 and batch.reconstruction.diagnostics["gradient_rank"] == 5
    assert batch.row_psnr.shape == (5,)
    assert isinstance(widgets.show_bias_ratio_demo(batch), matplotlib.figure.Figure)


@pytest.mark.parametrize("args, match", [
    (("cifar10", 0, 1), "dataset must be one of"),
    (("mnist", 0, 0), "batch_size"),
    (("mnist", -1, 1), "index"),
    (("lfw", 199, 2), "runs past the end"),
])
def test_bias_ratio_demo_errors(args, match):
    with pytest.raises(ValueError, match=match):
        widgets.bias_ratio_demo(*args)


@pytest.mark.parametrize("activation", sorted(widgets.DEMO_ACTIVATIONS))
def test_propagation_demo_is_exact_for_every_activation(activation):
    r = widgets.propagation_demo(activation, "digits", 5, width=32)
    assert r.max_error < 1e-12 and r.propagated.shape == (32,)
    assert (r.lost > 0) == (activation == "relu")


def test_propagation_demo_plot_and_errors():
    r = widgets.propagation_demo("tanh", "lfw", 0, width=16)
    assert isinstance(widgets.show_propagation_demo(r), matplotlib.figure.Figure)
    with pytest.raises(ValueError, match="activation must be one of"):
        widgets.propagation_demo("silu")
    with pytest.raises(ValueError, match="dataset must be one of"):
        widgets.propagation_demo("tanh", "cifar10")
    with pytest.raises(ValueError, match="index must be in"):
        widgets.propagation_demo("tanh", "lfw", 200)
    import ipywidgets  # part of the test extra

    assert isinstance(widgets.propagation_panel(), ipywidgets.VBox)


def test_conv_demo_boundary_and_plot():
    few = widgets.conv_demo(filters=2, kernel=5, stride=2, activation="tanh", size=12)
    enough = widgets.conv_demo(filters=6, kernel=5, stride=2, activation="tanh", size=12)
    assert few.layer["rank"] < few.layer["unknowns"] and not few.reconstruction.determined.all()
    assert enough.psnr >= 100 and enough.reconstruction.determined.all()
    assert few.counts["bound_safe"] and not enough.counts["bound_safe"]
    assert isinstance(widgets.show_conv_demo(enough), matplotlib.figure.Figure)


@pytest.mark.parametrize("kwargs, match", [
    (dict(filters=0), "filters"),
    (dict(kernel=10), "kernel"),
    (dict(activation="silu"), "activation"),
    (dict(dataset="cifar10"), "dataset"),
])
def test_conv_demo_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.conv_demo(**kwargs)


def test_exan_demo_and_plot():
    small = widgets.exan_demo(batch_size=4, width=256)
    assert small.fraction_exact == 1.0 and small.scores.label_accuracy == 1.0
    assert small.reconstruction.diagnostics["batch_size"] == 4
    paper = widgets.exan_demo(batch_size=24, width=128, peel=False, verify=False)
    assert paper.fraction_exact <= float((paper.exans >= 2).double().mean())
    assert isinstance(widgets.show_exan_demo(small), matplotlib.figure.Figure)
    assert isinstance(widgets.show_exan_demo(paper), matplotlib.figure.Figure)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(width=8), "width"),
    (dict(dataset="cifar10"), "dataset"),
    (dict(start=4999), "start"),
])
def test_exan_demo_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.exan_demo(**kwargs)


def test_extraction_demo_complete_and_short_search():
    full = widgets.extraction_demo(width=8, lines=4)
    assert full.complete and full.units_found == 8 and full.max_error < 1e-6 and full.agreement == 1.0
    assert full.rows.shape == full.true_rows.shape == (6, 1, 28, 28)
    assert float(full.rows.min()) >= 0 and float(full.rows.max()) <= 1
    short = widgets.extraction_demo(width=16, lines=1)
    assert not short.complete and short.units_found < 16 and short.agreement != short.agreement  # NaN
    assert short.queries < widgets.extraction_demo(width=16, lines=4).queries
    for r in (full, short):
        assert isinstance(widgets.show_extraction_demo(r), matplotlib.figure.Figure)


@pytest.mark.parametrize("kwargs, match", [(dict(width=1), "width"), (dict(lines=0), "lines")])
def test_extraction_demo_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.extraction_demo(**kwargs)


@pytest.mark.parametrize("make", [lambda: widgets.bias_ratio_panel(width=32), widgets.conv_panel,
                                  widgets.exan_panel, widgets.extraction_panel])
def test_panel_builds(make):
    import ipywidgets  # part of the test extra

    assert isinstance(make(), ipywidgets.VBox)
