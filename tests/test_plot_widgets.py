import matplotlib.figure
import numpy as np
import pytest
import torch

from leakutils import metrics, plot, widgets
from leakutils.widgets import panel


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
    # one Axes per row of images, each row one picture, the titles as tick labels above it
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    assert [len(ax.images) for ax in fig.axes] == [1, 1]
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes] == [["0", "1", "2"], ["3", "4"]]
    assert fig.axes[1].images[0].get_array().shape[:2] == (28, 3 * 28 + 2 * 2)
    wide = plot.image_grid(torch.rand(40, 1, 6, 6), ncols=40)
    assert len(wide.axes) == 3, "rows wrap at MAX_COLUMNS images"
    with pytest.raises(ValueError, match="titles"):
        plot.image_grid(mnist.images[:2], ["a"])
    with pytest.raises(ValueError, match="non-empty"):
        plot.image_grid(mnist.images[0, 0])


def test_compare_grid_puts_scores_in_titles(mnist):
    truth = mnist.images[:3]
    rec = truth.flip(0) + 0.01
    scores = metrics.compare(rec, truth)
    fig = plot.compare_grid(truth, rec, scores, labels=["a", "b", "c"])
    top, low = ([t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes)
    assert sum("40.0 dB" in t for t in low) == 3 and top == ["a", "b", "c"]
    assert fig.axes[0].get_ylabel() == "original" and fig.axes[1].get_ylabel() == "rebuilt"
    # the reconstruction under each original is the one the scores pair with it (flipped here)
    row = fig.axes[1].images[0].get_array()
    assert np.allclose(row[:, :28, 0], np.clip(rec[int(scores.rec_idx[list(scores.true_idx).index(0)]), 0], 0, 1))
    partial = plot.compare_grid(truth, truth[1:2], metrics.compare(truth[1:2], truth))
    labels = partial.axes[1].get_xticklabels()
    assert [t.get_text() for t in labels].count("(no match)") == 2
    assert [t.get_color() for t in labels if t.get_text() == "(no match)"] == ["grey", "grey"]
    batch = torch.rand(20, 1, 6, 6)
    assert len(plot.compare_grid(batch, batch).axes) == 4, "wraps at MAX_COLUMNS"
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


@pytest.mark.parametrize("activation", sorted(widgets.DEMO_ACTIVATIONS))
def test_propagation_demo_is_exact_for_every_activation(activation):
    r = widgets.propagation_demo(activation, "digits", 5, width=32)
    assert r.max_error < 1e-12 and r.propagated.shape == (32,)
    assert (r.lost > 0) == (activation == "relu")


def test_propagation_demo_plot_and_errors():
    r = widgets.propagation_demo("tanh", "lfw", 0, width=16)
    assert isinstance(widgets.show_propagation_demo(r), matplotlib.figure.Figure)
    import ipywidgets  # part of the test extra

    assert isinstance(widgets.propagation_panel(), ipywidgets.VBox)


def test_conv_demo_boundary_and_plot():
    few = widgets.conv_demo(filters=2, kernel=5, stride=2, activation="tanh", size=12)
    enough = widgets.conv_demo(filters=6, kernel=5, stride=2, activation="tanh", size=12)
    assert few.layer["rank"] < few.layer["unknowns"] and not few.reconstruction.determined.all()
    assert enough.psnr >= 100 and enough.reconstruction.determined.all()
    assert few.counts["bound_safe"] and not enough.counts["bound_safe"]
    assert isinstance(widgets.show_conv_demo(enough), matplotlib.figure.Figure)


def test_exan_demo_and_plot():
    small = widgets.exan_demo(batch_size=4, width=256)
    assert small.fraction_exact == 1.0 and small.scores.label_accuracy == 1.0
    assert small.reconstruction.diagnostics["batch_size"] == 4
    paper = widgets.exan_demo(batch_size=24, width=128, peel=False, verify=False)
    assert paper.fraction_exact <= float((paper.exans >= 2).double().mean())
    assert isinstance(widgets.show_exan_demo(small), matplotlib.figure.Figure)
    assert isinstance(widgets.show_exan_demo(paper), matplotlib.figure.Figure)


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


@pytest.mark.parametrize("make", [lambda: widgets.bias_ratio_panel(width=32), widgets.conv_panel,
                                  widgets.exan_panel, widgets.extraction_panel,
                                  lambda: widgets.defence_panel(width=64), lambda: widgets.fedavg_panel(width=64),
                                  lambda: widgets.malicious_panel(width=16)])
def test_panel_builds(make):
    import ipywidgets  # part of the test extra

    assert isinstance(make(), ipywidgets.VBox)


def test_show_image_draws_and_refuses_bad_input(mnist):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plot.show_image(ax, mnist.images[0], "top", below="under")
    assert ax.get_title() == "top" and ax.get_xlabel() == "under" and len(ax.images) == 1
    assert plot._show is plot.show_image
    with pytest.raises(TypeError, match="matplotlib Axes"):
        plot.show_image(None, mnist.images[0])
    with pytest.raises(ValueError, match="an image must have shape"):
        plot.show_image(ax, mnist.images[:2])


@pytest.fixture(scope="module")
def lab():
    """An untrained inversion Lab with one inverse model for k = 10 (fast; for the widget wiring)."""
    from leakutils import inversion as inv

    torch.manual_seed(0)
    lab = inv.Lab(inv.Classifier((4, 4, 4), hidden=8), inv.Classifier((4, 4, 4), hidden=8),
                  torch.rand(10, 1, 32, 32), steps=1)
    lab.add(10, "O", inv.InverseTCNN(10, widths=(8, 4, 2)), None)
    return lab


@pytest.fixture(scope="module")
def digits32():
    from leakutils import data

    return data.load("mnist", 4, size=32).images


def test_inversion_demo_and_panel(lab, digits32):
    import ipywidgets  # part of the test extra

    r = widgets.inversion_demo(lab, digits32, 2)
    assert torch.equal(r["original"], digits32[2:3])
    assert set(r["ssim"]) == {"O", "X~", "class average"} and all(-1 <= v <= 1 for v in r["ssim"].values())
    assert isinstance(widgets.show_inversion_demo(r), matplotlib.figure.Figure)
    assert isinstance(widgets.inversion_panel(lab, digits32), ipywidgets.VBox)


def test_panel_factory_wires_controls_to_demo_and_show():
    calls = []
    box = panel.build_panel(lambda **v: calls.append(v) or v, lambda r: calls.append(("shown", r)),
                            {"n": panel.Slider(2, 1, 5, "n"), "name": panel.Choice(["a", "b"], "a", "name"),
                             "flag": panel.Toggle(False, "flag")}, rows=(2, None), fixed=7)
    assert [len(row.children) for row in box.children[:-1]] == [2, 1]
    assert calls[:2] == [{"n": 2, "name": "a", "flag": False, "fixed": 7},
                         ("shown", {"n": 2, "name": "a", "flag": False, "fixed": 7})]
    box.children[0].children[0].value = 4
    assert calls[-1] == ("shown", {"n": 4, "name": "a", "flag": False, "fixed": 7})


def test_package_exports_every_chapter_with_docstrings():
    chapters = ("bias_ratio", "propagation", "conv", "exan", "inversion", "extraction", "defence", "fedavg",
                "malicious")
    parts = (("", "_demo"), ("show_", "_demo"), ("", "_panel"))
    names = [f"{kind}{c}{suffix}" for c in chapters for kind, suffix in parts]
    assert set(names) | {"DEMO_DATASETS", "DEMO_ACTIVATIONS"} <= set(widgets.__all__)
    for name in widgets.__all__:
        obj = getattr(widgets, name)
        assert not callable(obj) or (obj.__doc__ and len(obj.__doc__) > 40), name
    for name in names[::3]:
        assert "Raises" in getattr(widgets, name).__doc__, name


# Each public demo, show and panel function with one bad input: (call(lab, images), error, match).
BAD_INPUTS = [
    pytest.param(lambda lab, images: widgets.bias_ratio_demo("cifar10", 0, 1),
                 ValueError, "dataset must be one of", id="bias_ratio-dataset"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo(3),
                 TypeError, "dataset must be a string", id="bias_ratio-dataset-type"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo("mnist", 0, 0),
                 ValueError, "batch_size must be an integer in 1..64", id="bias_ratio-batch0"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo("mnist", 0, 65),
                 ValueError, "batch_size", id="bias_ratio-batch65"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo("mnist", 0, 2.0),
                 TypeError, "batch_size must be an integer", id="bias_ratio-batch-float"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo("mnist", -1, 1),
                 ValueError, "index", id="bias_ratio-index"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo("lfw", 199, 2),
                 ValueError, "runs past the end", id="bias_ratio-past-end"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo(width=0),
                 ValueError, "width must be an integer in 1..8192", id="bias_ratio-width"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo(seed=-1),
                 ValueError, "seed", id="bias_ratio-seed"),
    pytest.param(lambda lab, images: widgets.bias_ratio_demo(batch_size=True),
                 TypeError, "batch_size", id="bias_ratio-batch-bool"),
    pytest.param(lambda lab, images: widgets.propagation_demo("silu"),
                 ValueError, "activation must be one of", id="propagation-activation"),
    pytest.param(lambda lab, images: widgets.propagation_demo(["relu"]),
                 TypeError, "activation must be a string", id="propagation-activation-type"),
    pytest.param(lambda lab, images: widgets.propagation_demo("tanh", "cifar10"),
                 ValueError, "dataset must be one of", id="propagation-dataset"),
    pytest.param(lambda lab, images: widgets.propagation_demo("tanh", "lfw", 200),
                 ValueError, r"index must be an integer in 0\.\.199", id="propagation-index"),
    pytest.param(lambda lab, images: widgets.propagation_demo("tanh", width=0),
                 ValueError, "width", id="propagation-width"),
    pytest.param(lambda lab, images: widgets.conv_demo(filters=0),
                 ValueError, "filters", id="conv-filters"),
    pytest.param(lambda lab, images: widgets.conv_demo(filters=True),
                 TypeError, "filters", id="conv-filters-bool"),
    pytest.param(lambda lab, images: widgets.conv_demo(kernel=10),
                 ValueError, "kernel", id="conv-kernel"),
    pytest.param(lambda lab, images: widgets.conv_demo(stride=5),
                 ValueError, "stride", id="conv-stride"),
    pytest.param(lambda lab, images: widgets.conv_demo(size=2),
                 ValueError, "size", id="conv-size"),
    pytest.param(lambda lab, images: widgets.conv_demo(activation="silu"),
                 ValueError, "activation", id="conv-activation"),
    pytest.param(lambda lab, images: widgets.conv_demo(dataset="cifar10"),
                 ValueError, "dataset", id="conv-dataset"),
    pytest.param(lambda lab, images: widgets.conv_demo(index=-1),
                 ValueError, "index", id="conv-index"),
    pytest.param(lambda lab, images: widgets.conv_demo(method="svd"),
                 ValueError, "method", id="conv-method"),
    pytest.param(lambda lab, images: widgets.exan_demo(batch_size=0),
                 ValueError, "batch_size", id="exan-batch"),
    pytest.param(lambda lab, images: widgets.exan_demo(width=8),
                 ValueError, "width", id="exan-width"),
    pytest.param(lambda lab, images: widgets.exan_demo(dataset="cifar10"),
                 ValueError, "dataset", id="exan-dataset"),
    pytest.param(lambda lab, images: widgets.exan_demo(start=4999),
                 ValueError, "start", id="exan-start"),
    pytest.param(lambda lab, images: widgets.exan_demo(peel="yes"),
                 TypeError, "peel must be True or False", id="exan-peel"),
    pytest.param(lambda lab, images: widgets.inversion_demo(None, images),
                 TypeError, "lab must be a leakutils.inversion.Lab", id="inversion-lab"),
    pytest.param(lambda lab, images: widgets.inversion_demo(lab, images.numpy()),
                 TypeError, "images must be a torch tensor", id="inversion-images-type"),
    pytest.param(lambda lab, images: widgets.inversion_demo(lab, images[0]),
                 ValueError, "non-empty batch", id="inversion-images-shape"),
    pytest.param(lambda lab, images: widgets.inversion_demo(lab, images, 4),
                 ValueError, r"index must be an integer in 0\.\.3", id="inversion-index"),
    pytest.param(lambda lab, images: widgets.inversion_demo(lab, images, decimals=-1),
                 ValueError, "decimals", id="inversion-decimals"),
    pytest.param(lambda lab, images: widgets.inversion_demo(lab, images, k=5),
                 ValueError, "no inverse model was trained for k = 5", id="inversion-k"),
    pytest.param(lambda lab, images: widgets.inversion_panel(lab, [1]),
                 TypeError, "images", id="inversion_panel-images"),
    pytest.param(lambda lab, images: widgets.inversion_panel(type(lab)(lab.target, lab.shadow, lab.class_avg),
                                                             images),
                 ValueError, "no inverse model", id="inversion_panel-no-inverse"),
    pytest.param(lambda lab, images: widgets.extraction_demo(width=1),
                 ValueError, "width", id="extraction-width"),
    pytest.param(lambda lab, images: widgets.extraction_demo(lines=0),
                 ValueError, "lines", id="extraction-lines0"),
    pytest.param(lambda lab, images: widgets.extraction_demo(lines=13),
                 ValueError, "lines", id="extraction-lines13"),
    pytest.param(lambda lab, images: widgets.extraction_demo(width=8.5),
                 TypeError, "width", id="extraction-width-float"),
    pytest.param(lambda lab, images: widgets.bias_ratio_panel(width=0),
                 ValueError, "width", id="bias_ratio_panel-width"),
    pytest.param(lambda lab, images: widgets.show_bias_ratio_demo(None),
                 TypeError, "bias_ratio_demo", id="show_bias_ratio"),
    pytest.param(lambda lab, images: widgets.show_propagation_demo({}),
                 TypeError, "propagation_demo", id="show_propagation"),
    pytest.param(lambda lab, images: widgets.show_conv_demo(None),
                 TypeError, "conv_demo", id="show_conv"),
    pytest.param(lambda lab, images: widgets.show_exan_demo(None),
                 TypeError, "exan_demo", id="show_exan"),
    pytest.param(lambda lab, images: widgets.show_extraction_demo(None),
                 TypeError, "extraction_demo", id="show_extraction"),
    pytest.param(lambda lab, images: widgets.show_inversion_demo({}),
                 TypeError, "inversion_demo", id="show_inversion"),
    pytest.param(lambda lab, images: panel.build_panel(widgets.conv_demo, widgets.show_conv_demo, {"filters": 4}),
                 TypeError, "Slider", id="build_panel-control"),
    pytest.param(lambda lab, images: panel.build_panel(widgets.conv_demo, widgets.show_conv_demo,
                                                       {"filters": panel.Slider(4, 1, 8, "f")}, rows=(0,)),
                 ValueError, "rows", id="build_panel-rows"),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUTS)
def test_every_widget_function_refuses_bad_input(call, error, match, lab, digits32):
    with pytest.raises(error, match=match):
        call(lab, digits32)


def test_exan_demo_two_logit_lfw_is_refused_and_ten_logits_are_exact():
    """LFW's own head has 2 logits: the attack refuses (nothing rebuilt); a 10-logit head works."""
    two = widgets.exan_demo(dataset="lfw")
    assert two.reconstruction is None and two.num_classes == 2
    assert two.refused is not None and "2 logits" in two.refused
    assert not two.exact.any()
    ten = widgets.exan_demo(dataset="lfw", num_classes=10)
    assert ten.refused is None and ten.num_classes == 10
    assert ten.fraction_exact == 1


def test_figures_are_detached_so_a_notebook_shows_each_once(mnist):
    """pyplot tracks no figure after a plot or show function: the inline backend would draw a
    tracked figure at the end of the cell, on top of the cell's returned value."""
    import matplotlib.pyplot as plt

    plt.close("all")
    figs = [plot.image_grid(mnist.images[:3]), plot.federated_round(mnist.images[0]),
            widgets.show_bias_ratio_demo(widgets.bias_ratio_demo(batch_size=2)),
            widgets.show_propagation_demo(widgets.propagation_demo("relu", "mnist", 0))]
    assert plt.get_fignums() == []
    assert all(isinstance(f, matplotlib.figure.Figure) and f.axes for f in figs)
    with pytest.raises(TypeError, match="matplotlib Figure"):
        plot.detach("figure")


def test_static_panel_holds_one_frame_per_value_behind_a_slider():
    import re

    sp = widgets.static_panel(widgets.bias_ratio_demo, widgets.show_bias_ratio_demo, "batch_size", (1, 2, 3),
                              caption=lambda r: f"{r.scores.mean_psnr:.1f} dB", label="batch size")
    assert sp.values == (1, 2, 3) and len(sp.results) == 3
    assert sp.captions[0].startswith("batch size = 1:") and sp.captions[0].endswith("dB")
    frames = re.findall(r'frames\[\d+\] = "data:image/png;base64,', sp.html)
    assert len(frames) == 3 and 'type="range"' in sp.html and sp._repr_html_() is sp.html
    # no network: nothing is loaded from elsewhere
    assert "://" not in sp.html and "fa fa-" not in sp.html
    # the frames differ: one sample is exact, a batch of 2 a mixture
    assert sp.results[0].scores.mean_psnr > 100 > sp.results[1].scores.mean_psnr
    for bad, err in (((1,), ValueError), ("batch_size", None)):
        if err:
            with pytest.raises(err, match="2..40 values"):
                widgets.static_panel(widgets.bias_ratio_demo, widgets.show_bias_ratio_demo, "batch_size", bad)
    with pytest.raises(TypeError, match="callables"):
        widgets.static_panel("demo", widgets.show_bias_ratio_demo, "batch_size", (1, 2))
    with pytest.raises(TypeError, match="must return a matplotlib Figure"):
        widgets.static_panel(widgets.bias_ratio_demo, lambda r: None, "batch_size", (1, 2))


def _frames(twin) -> list:
    """The base64 PNG data of each frame of a twin's HTML, in slider order."""
    import re

    return re.findall(r'frames\[\d+\] = "data:image/png;base64,([^"]+)"', twin.html)


def test_bias_ratio_twin_exact_alone_then_a_mixture():
    twin = widgets.bias_ratio_twin("digits", 0, (1, 2, 3), width=64)
    frames = _frames(twin)
    assert twin.values == (1, 2, 3) and len(frames) == 3 and len(set(frames)) == 3
    assert [r.images.shape[0] for r in twin.results] == [1, 2, 3]
    assert twin.captions[0].startswith("batch size = 1:  exact, ")
    assert all(c.startswith(f"batch size = {m}:  a mixture, ") for m, c in zip((2, 3), twin.captions[1:]))
    assert all("vs the closest sample; a single row isolates" in c for c in twin.captions)
    psnr = [r.scores.mean_psnr for r in twin.results]
    assert psnr[0] >= 100 and max(psnr[1:]) < 30
    assert "://" not in twin.html and twin.label == "batch size"


def test_propagation_twin_exact_for_each_activation_and_relu_loses_units():
    twin = widgets.propagation_twin("digits", 5, ("tanh", "relu", "elu"), width=32)
    frames = _frames(twin)
    assert twin.values == ("tanh", "relu", "elu") and len(frames) == 3 and len(set(frames)) == 3
    assert [r.activation for r in twin.results] == ["tanh", "relu", "elu"]
    assert all(r.max_error < 1e-12 for r in twin.results)
    assert [r.lost > 0 for r in twin.results] == [False, True, False]
    assert twin.captions[1].startswith("activation = relu:  max relative error ")
    assert twin.captions[0].endswith("pre-activation lost for 0% of the units")
    full = widgets.propagation_twin.__defaults__
    assert full[2] is None  # default: every activation of DEMO_ACTIVATIONS


def test_conv_twin_from_under_determined_to_exact():
    twin = widgets.conv_twin((1, 2, 6), dataset="digits", index=3, size=12)
    frames = _frames(twin)
    assert twin.values == (1, 2, 6) and len(frames) == 3 and len(set(frames)) == 3
    ranks = [r.layer["rank"] for r in twin.results]
    assert ranks == sorted(set(ranks)) and ranks[-1] == twin.results[-1].layer["unknowns"] == 144
    determined = [float(r.reconstruction.determined.double().mean()) for r in twin.results]
    assert determined[0] == 0 and determined[-1] == 1
    assert twin.results[0].psnr < 30 <= 100 <= twin.results[-1].psnr
    assert twin.captions[0].startswith("filters = 1:  rank ") and "determined 0%; PSNR" in twin.captions[0]
    assert "rank 144 of 144; determined 100%" in twin.captions[-1]


@pytest.mark.parametrize("call, error, match", [
    (lambda: widgets.bias_ratio_twin("digits", 0, (1, 2, 2)), ValueError, "must not repeat"),
    (lambda: widgets.bias_ratio_twin("lfw", 195, (1, 8)), ValueError, "runs past the end"),
    (lambda: widgets.bias_ratio_twin(batch_sizes=4), TypeError, "batch_sizes must be a sequence"),
    (lambda: widgets.propagation_twin(activations="relu"), TypeError, "activations must be a sequence"),
    (lambda: widgets.propagation_twin(activations=("relu",)), ValueError, "2..40 values"),
    (lambda: widgets.propagation_twin(width=4096), ValueError, "width"),
    (lambda: widgets.conv_twin((1, 65)), ValueError, "filters must be an integer in 1..64"),
    (lambda: widgets.conv_twin((1, 2), kernel=11), ValueError, "kernel"),
    (lambda: widgets.conv_twin((1, 2), dpi=10), ValueError, "dpi"),
    (lambda: widgets.conv_twin(range(1, 10**9)), ValueError, "got more than 40"),
])
def test_twins_refuse_bad_grids_before_running(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_psnr_text_reads_as_the_figures_do():
    from leakutils.plot import psnr_text

    assert psnr_text(float("inf")) == "exact" and psnr_text(318.4) == "318 dB" and psnr_text(12.34) == "12.3 dB"


@pytest.mark.parametrize("name", ["bias_ratio_twin", "propagation_twin", "conv_twin", "defence_twin", "fedavg_twin",
                                  "malicious_twin"])
def test_twins_are_exported_and_documented(name):
    doc = getattr(widgets, name).__doc__
    assert name in widgets.__all__ and all(part in doc for part in ("Parameters", "Returns", "Raises"))


def test_defence_demo_takes_the_best_attack_and_knows_the_defence():
    clean = widgets.defence_demo("none", width=256)
    assert clean.psnr > 250 and clean.epsilon is None and clean.noise_std == 0
    # pruning: the ratio of the surviving entries beats the rank-one fit, which reads zeros as data
    sparse = widgets.defence_demo("prune 90%", width=256)
    assert sparse.best == "bias ratio, surviving entries" and sparse.psnr > 250
    assert sparse.attacks["bias ratio"] < 30
    # DP-SGD: the noise the server knows, and a finite epsilon
    dp = widgets.defence_demo("DP-SGD 0.1", width=256)
    assert dp.psnr < 20 and 0 < dp.epsilon < float("inf") and dp.noise_std == pytest.approx(0.1)
    # secure aggregation of 8 one-image clients is a batch of 8 to ExAN
    secagg = widgets.defence_demo("secure aggregation K=8", width=1024)
    assert secagg.best == "ExAN" and secagg.psnr > 100
    assert isinstance(widgets.show_defence_demo(dp), matplotlib.figure.Figure)


def test_defence_twin_one_frame_per_setting():
    twin = widgets.defence_twin(("none", "noise 1e-2", "DP-SGD 0.1"), width=256)
    frames = _frames(twin)
    assert twin.values == ("none", "noise 1e-2", "DP-SGD 0.1") and len(set(frames)) == 3
    psnr = [r.psnr for r in twin.results]
    assert psnr[0] > psnr[1] > psnr[2]
    assert twin.captions[0].startswith("defence = none:  best attack ")


def test_fedavg_demo_one_example_stays_exact_and_a_batch_is_lost_to_local_steps():
    one = widgets.fedavg_demo(local_steps=10, batch_size=1)
    assert one.recovered == 1 and one.psnr > 250
    assert one.reconstruction.diagnostics["replay"]["consistent"]
    eight = widgets.fedavg_demo(local_steps=1, batch_size=8, dtype="float32")
    assert eight.recovered == 8 and eight.psnr > 100
    lost = widgets.fedavg_demo(local_steps=5, batch_size=8)
    assert lost.recovered == 0 and lost.reconstruction.fraction_determined == 0.0
    assert isinstance(widgets.show_fedavg_demo(lost), matplotlib.figure.Figure)


def test_fedavg_twin_one_frame_per_step_count():
    twin = widgets.fedavg_twin((1, 5), width=64)
    assert twin.values == (1, 5) and len(set(_frames(twin))) == 2
    assert twin.results[0].recovered >= twin.results[1].recovered
    assert twin.captions[1].startswith("local steps = 5:  median")


def test_malicious_demo_marks_the_samples_alone_in_their_bin():
    few = widgets.malicious_demo(bins=4, batch_size=16)
    many = widgets.malicious_demo(bins=1024, batch_size=16, sparse=True)
    assert few.recovered <= 2 < 14 <= many.recovered and many.psnr > 200
    # every marked image is one of the batch, and the count is the one of samples alone in a bin
    assert many.scores.psnr.numel() == many.recovered and float(many.scores.psnr.min()) > 200
    f32 = widgets.malicious_demo(bins=256, batch_size=16, dtype="float32")
    assert f32.recovered >= 12 and f32.psnr > 60
    assert abs(widgets.malicious_demo(bins=64, batch_size=16).expected - 16 * (63 / 64) ** 15) < 1e-12
    assert isinstance(widgets.show_malicious_demo(few), matplotlib.figure.Figure)


def test_malicious_twin_one_frame_per_bin_count():
    twin = widgets.malicious_twin((4, 256), batch_size=8, width=16)
    assert twin.values == (4, 256) and len(set(_frames(twin))) == 2
    assert twin.results[0].recovered < twin.results[1].recovered
    assert twin.captions[1].startswith("bins = 256:  ")
