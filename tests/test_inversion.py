"""Model inversion with a shadow model and a TCNN (Chapter 5): shapes, defences, splits, errors."""
import pytest
import torch

from leakutils import data, inversion as inv, metrics


@pytest.fixture(scope="module")
def digits32():
    d = data.load("mnist", 400, size=32)
    return d.images.float(), d.labels


def test_disjoint_splits():
    sp = inv.disjoint_splits(100, {"target": 40, "shadow": 40, "val": 10, "test": 10}, seed=3)
    assert [len(v) for v in sp.values()] == [40, 40, 10, 10]
    allidx = torch.cat(list(sp.values()))
    assert allidx.unique().numel() == 100
    again = inv.disjoint_splits(100, {"target": 40, "shadow": 40, "val": 10, "test": 10}, seed=3)
    assert all(torch.equal(sp[k], again[k]) for k in sp)
    with pytest.raises(ValueError, match="more than"):
        inv.disjoint_splits(10, {"a": 6, "b": 5})
    with pytest.raises(ValueError, match="positive"):
        inv.disjoint_splits(10, {"a": 0})


def test_classifier_and_inverse_shapes():
    torch.manual_seed(0)
    clf = inv.Classifier()
    x = torch.rand(4, 1, 32, 32)
    assert clf(x).shape == (4, 10) and clf.last_linear(x).shape == (4, 50)
    assert inv.Classifier(channels=(4, 4, 4), image_size=16)(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    for F in (10, 50, 1024, 1084):
        out = inv.InverseTCNN(F).eval()(torch.randn(3, F)).detach()
        assert out.shape == (3, 1, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="multiple of 8"):
        inv.Classifier(image_size=28)
    with pytest.raises(ValueError, match=r"\(B, 10\)"):
        inv.InverseTCNN(10)(torch.randn(2, 50))
    with pytest.raises(ValueError):
        inv.InverseTCNN(0)


def test_defences():
    o = torch.tensor([[1.234, -0.5, 3.9, 0.1], [0.0, 2.0, -1.0, 1.5]])
    assert torch.equal(inv.round_outputs(o, 1), torch.tensor([[1.2, -0.5, 3.9, 0.1], [0.0, 2.0, -1.0, 1.5]]))
    assert torch.equal(inv.top_k(o, 2), torch.tensor([[1.234, 0.0, 3.9, 0.0], [0.0, 2.0, 0.0, 1.5]]))
    assert torch.equal(inv.top_k(o, 4), o)
    for k, error in ((0, ValueError), (5, ValueError), (2.0, TypeError)):
        with pytest.raises(error, match="k must be"):
            inv.top_k(o, k)
    with pytest.raises(ValueError, match="decimals"):
        inv.round_outputs(o, -1)


def test_last_layer_activations_map_to_the_outputs():
    torch.manual_seed(0)
    clf = inv.Classifier().eval()
    o = clf(torch.rand(5, 1, 32, 32)).detach()
    a = inv.last_layer_activations(clf, o)
    assert a.shape == (5, 50)
    assert torch.allclose(clf.out(a), o, atol=1e-4)
    kept = inv.last_layer_activations(clf, inv.top_k(o, 3), k=3)
    top = o.topk(3, dim=1).indices
    assert torch.allclose(clf.out(kept).gather(1, top), o.gather(1, top), atol=1e-4)


def test_class_averages_and_bad_images(digits32):
    x, y = digits32
    avg = inv.class_averages(x, y)
    assert avg.shape == (10, 1, 32, 32)
    assert torch.allclose(avg[3], x[y == 3].mean(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inv.class_averages(x * 255, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inv.train_inverse(inv.InverseTCNN(10), torch.randn(4, 10), torch.rand(4, 1, 32, 32) * 2)
    with pytest.raises(ValueError, match=r"\(N, 10\)"):
        inv.train_inverse(inv.InverseTCNN(10), torch.randn(4, 50), torch.rand(4, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inv.gradient_reconstruction(inv.Classifier(), torch.zeros(2, 10), -torch.ones(2, 1, 32, 32))


def test_gradient_reconstruction_moves_towards_the_logits(digits32):
    x, y = digits32
    torch.manual_seed(0)
    clf = inv.Classifier()
    inv.train_classifier(clf, x[:300], y[:300], epochs=2)
    o = inv.outputs(clf, x[300:310])
    avg = inv.class_averages(x[:300], y[:300])
    init = avg[o.argmax(1)]
    xt = inv.gradient_reconstruction(clf, o, init, steps=30)
    before = (inv.outputs(clf, init) - o).pow(2).mean()
    after = (inv.outputs(clf, xt) - o).pow(2).mean()
    assert xt.shape == init.shape and float(xt.min()) >= 0 and float(xt.max()) <= 1
    assert float(after) < float(before)
    assert all(p.requires_grad for p in clf.parameters())  # the shadow is left trainable


def test_training_loops_return_histories_and_learn(digits32):
    x, y = digits32
    torch.manual_seed(0)
    clf = inv.Classifier()
    h = inv.train_classifier(clf, x[:300], y[:300], epochs=3, seed=0)
    assert len(h["loss"]) == 3 and h["loss"][-1] < h["loss"][0]
    assert inv.accuracy(clf, x[300:], y[300:]) > 0.5
    feats = inv.outputs(clf, x[:300])
    torch.manual_seed(0)
    tc = inv.InverseTCNN(10, widths=(16, 8, 4))
    hi = inv.train_inverse(tc, feats, x[:300], epochs=3, batch_size=32)
    assert len(hi["loss"]) == 3 and hi["loss"][-1] < hi["loss"][0]
    rec = inv.invert(tc, feats[:5])
    assert rec.shape == (5, 1, 32, 32)


def test_features_and_identity_score(digits32):
    x, y = digits32
    parts = {"O": torch.zeros(4, 10), "A": torch.zeros(4, 50), "X": torch.zeros(4, 1, 32, 32)}
    assert inv.features(parts, "O+X").shape == (4, 1034)
    assert inv.features(parts, "O+A+X").shape == (4, 1084)
    with pytest.raises(ValueError, match="combination"):
        inv.features(parts, "X+O")
    with pytest.raises(ValueError, match="missing"):
        inv.features({"O": parts["O"]}, "O+A")
    assert inv.identity_score(x[:50], x[:50], y[:50]) == 1.0
    avg = inv.class_averages(x[:50], y[:50])[y[:50]]
    assert inv.identity_score(avg, x[:50], y[:50]) < 0.5


def test_gaussian_ssim_option():
    a = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    assert torch.allclose(metrics.ssim(a, a, gaussian=True), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(a[..., :8, :8], a[..., :8, :8], gaussian=True)


def _small_lab(x, y):
    """Target (digits 0-149) and shadow (150-299) narrow classifiers, one epoch each, in a Lab."""
    torch.manual_seed(0)
    target, shadow = inv.Classifier(channels=(4, 8, 8)), inv.Classifier(channels=(4, 8, 8))
    inv.train_classifier(target, x[:150], y[:150], epochs=1, seed=0)
    inv.train_classifier(shadow, x[150:300], y[150:300], epochs=1, seed=1)
    return target, shadow, inv.Lab(target, shadow, inv.class_averages(x[150:300], y[150:300]), steps=3)


def test_lab_and_panel(digits32):
    from leakutils import widgets

    x, y = digits32
    target, shadow, lab = _small_lab(x, y)
    parts = lab.parts(inv.outputs(shadow, x[150:200]))
    sc = inv.FeatureScaler(parts)
    f = inv.features(parts, "O+X", sc)
    assert f.shape == (50, 1034) and abs(float(f[:, :10].mean())) < 1e-5  # O standardised
    tc = inv.InverseTCNN(1034, widths=(8, 4, 4))
    inv.train_inverse(tc, f, x[150:200], epochs=1)
    lab.add(10, "O+X", tc, sc)
    o = lab.observe(x[300:304], decimals=1, k=3)
    assert int((o != 0).sum(1).max()) <= 3
    demo = widgets.inversion_demo(lab, x[300:310], index=2, decimals=1)
    assert set(demo) == {"original", "O+X", "X~", "class average", "ssim"}
    assert all(-1 <= v <= 1 for v in demo["ssim"].values())
    with pytest.raises(ValueError, match="k = 3"):
        widgets.inversion_demo(lab, x[300:310], index=0, k=3)
    with pytest.raises(ValueError, match="index"):
        widgets.inversion_demo(lab, x[300:310], index=10)
    with pytest.raises(ValueError, match="combination"):
        lab.add(10, "Z", tc, sc)
    import ipywidgets  # part of the test extra

    assert isinstance(widgets.inversion_panel(lab, x[300:310]), ipywidgets.VBox)


def test_top_k_with_negative_logits_keeps_the_true_top_k():
    # the case: kept logits below zero; the old _kept re-read the top k of the truncated
    # vector, where the zeros of dropped entries outrank the kept negatives
    o = torch.tensor([[2.0, -1.0, -3.0, -0.5, -4.0]])
    t, kept = inv.top_k(o, 3, return_mask=True)
    assert kept[0].nonzero().flatten().tolist() == [0, 1, 3]
    assert torch.equal(inv.kept_entries(t, 3), kept)
    with pytest.raises(ValueError, match="non-zero"):
        inv.kept_entries(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 2)


def test_lab_parts_use_the_kept_set():
    torch.manual_seed(0)
    clf = inv.Classifier(channels=(2, 2, 2), hidden=12, image_size=8).eval()
    lab = inv.Lab(clf, clf, torch.rand(10, 1, 8, 8), steps=1)
    o = torch.randn(6, 10) * 3 - 4  # mostly negative logits
    t, kept = inv.top_k(o, 5, return_mask=True)
    a = lab.parts(t, 5, kept)["A"]
    with torch.no_grad():
        assert torch.allclose(clf.out(a)[kept], o[kept], atol=1e-3)
    assert torch.allclose(lab.parts(t, 5)["A"], a)


def _bad_inversion_cases():
    torch.manual_seed(0)
    clf = inv.Classifier(channels=(2, 2, 2), hidden=12)
    x = torch.rand(4, 1, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    o = torch.randn(4, 10)
    nan_o = o.clone()
    nan_o[0, 0] = float("nan")
    return [
        (lambda: clf(torch.rand(2, 1, 28, 28)), ValueError, "32, 32"),
        (lambda: clf([1, 2]), TypeError, "torch.Tensor"),
        (lambda: inv.train_classifier(clf, x, y.float(), epochs=1), TypeError, "integers"),
        (lambda: inv.train_classifier(clf, x, torch.tensor([0, 1, 2, 10]), epochs=1), ValueError, r"\[0, 10\)"),
        (lambda: inv.train_classifier(clf, x, y[:3], epochs=1), ValueError, "one label per image"),
        (lambda: inv.train_classifier(clf, x, y, epochs=0), ValueError, "epochs"),
        (lambda: inv.train_classifier(clf, x, y, lr=float("nan")), ValueError, "lr"),
        (lambda: inv.train_classifier(torch.nn.Linear(2, 2), x, y), TypeError, "Classifier"),
        (lambda: inv.identity_score(x[:3], x, y), ValueError, "same shape"),
        (lambda: inv.identity_score(x * float("nan"), x, y), ValueError, "NaN"),
        (lambda: inv.identity_score(x, x, y.float()), TypeError, "integers"),
        (lambda: inv.last_layer_activations(clf, nan_o), ValueError, "NaN"),
        (lambda: inv.last_layer_activations(clf, torch.randn(4, 7)), ValueError, r"\(N, 10\)"),
        (lambda: inv.last_layer_activations(torch.nn.Linear(2, 2), o), TypeError, "out"),
        (lambda: inv.last_layer_activations(clf, o, kept=torch.ones(4, 10)), ValueError, "bool"),
        (lambda: inv.gradient_reconstruction(clf, nan_o, x), ValueError, "NaN"),
        (lambda: inv.gradient_reconstruction(clf, o, x, k=3), ValueError, "non-zero"),
        (lambda: inv.top_k(o.numpy(), 2), TypeError, "torch.Tensor"),
        (lambda: inv.top_k(nan_o, 2), ValueError, "NaN"),
        (lambda: inv.top_k(o, True), TypeError, "k must be"),
        (lambda: inv.round_outputs(nan_o, 1), ValueError, "NaN"),
        (lambda: inv.class_averages(x, y.float()), TypeError, "integers"),
        (lambda: inv.class_averages(x, torch.tensor([0, 1, 2, 12])), ValueError, r"\[0, 10\)"),
        (lambda: inv.class_averages(x.numpy(), y), TypeError, "torch.Tensor"),
        (lambda: inv.total_variation(torch.rand(3, 3)), ValueError, r"\(B, C, H, W\)"),
        (lambda: inv.features({"O": o}, "O+A"), ValueError, "missing"),
        (lambda: inv.features({"O": o}, "Q"), ValueError, "combination"),
        (lambda: inv.disjoint_splits(10, {"a": 11}), ValueError, "more than"),
        (lambda: inv.InverseTCNN(10)(torch.randn(2, 50)), ValueError, r"\(B, 10\)"),
        (lambda: inv.InverseTCNN(10)([0.0] * 10), TypeError, "torch.Tensor"),
        (lambda: inv.outputs("model", x), TypeError, "nn.Module"),
        (lambda: inv.outputs(clf, x, batch_size=0), ValueError, "batch_size"),
        (lambda: inv.accuracy(clf, x, y.float()), TypeError, "integers"),
        (lambda: inv.accuracy(clf, x, y[:2]), ValueError, "one label per image"),
        (lambda: inv.invert(inv.InverseTCNN(10), torch.full((2, 10), float("nan"))), ValueError, "NaN"),
        (lambda: inv.invert(clf, o), TypeError, "InverseTCNN"),
        (lambda: inv.train_inverse(inv.InverseTCNN(10), nan_o, x), ValueError, "NaN"),
        (lambda: inv.train_inverse(clf, o, x), TypeError, "InverseTCNN"),
        (lambda: inv.disjoint_splits(0, {"a": 1}), ValueError, "n must be"),
        (lambda: inv.disjoint_splits(10, [("a", 1)]), TypeError, "dict"),
        (lambda: inv.FeatureScaler({"O": nan_o}), ValueError, "NaN"),
        (lambda: inv.FeatureScaler([o]), TypeError, "dict"),
        (lambda: inv.features([o], "O"), TypeError, "dict"),
        (lambda: inv.Lab(clf, clf, torch.rand(10, 1, 32, 32), steps=0), ValueError, "steps"),
        (lambda: inv.Lab(clf, "shadow", torch.rand(10, 1, 32, 32)), TypeError, "shadow"),
        (lambda: inv.Lab(clf, clf, torch.rand(10, 1, 32, 32)).invert(x, k=3), ValueError, "no inverse model"),
        (lambda: inv.kept_entries(o, 0), ValueError, "k must be"),
    ]


N_BAD_INVERSION = 47


def test_every_bad_case_is_listed():
    assert len(_bad_inversion_cases()) == N_BAD_INVERSION


@pytest.mark.parametrize("case", range(N_BAD_INVERSION))
def test_bad_inputs_give_clear_errors(case):
    call, exc, match = _bad_inversion_cases()[case]
    with pytest.raises(exc, match=match):
        call()


def test_gaussian_ssim_is_pytorch_msssim_values_and_gradients():
    from pytorch_msssim import ssim as reference

    from leakutils.inversion_loss import gaussian_ssim

    g = torch.Generator().manual_seed(0)
    for shape, dtype in (((5, 1, 32, 32), torch.float32), ((3, 3, 20, 27), torch.float64)):
        x = torch.rand(shape, generator=g, dtype=dtype).requires_grad_(True)
        y = (0.7 * x.detach() + 0.3 * torch.rand(shape, generator=g, dtype=dtype)).requires_grad_(True)
        ours, theirs = gaussian_ssim(x, y), reference(x, y, data_range=1.0)
        assert ours.dtype == dtype and abs(float((ours - theirs).detach())) < 1e-6
        for a, b in zip(torch.autograd.grad(ours, (x, y)), torch.autograd.grad(theirs, (x, y))):
            assert torch.allclose(a, b, atol=1e-7, rtol=1e-4)
    # the course's reported score (scikit-image, one image at a time) is the same number
    x = torch.rand(6, 1, 32, 32, generator=g, dtype=torch.float64)
    y = 0.6 * x + 0.4 * torch.rand(6, 1, 32, 32, generator=g, dtype=torch.float64)
    assert abs(float(gaussian_ssim(x, y)) - float(metrics.ssim(x, y, gaussian=True).mean())) < 1e-12
    a = torch.rand(2, 1, 16, 16, generator=g)
    assert abs(float(gaussian_ssim(a, a)) - 1) < 1e-6 and float(gaussian_ssim(a, 1 - a)) < 0.5
    assert abs(float(gaussian_ssim(a * 255, a * 255, data_range=255)) - 1) < 1e-6
    with pytest.raises(ValueError, match="H, W >= 11"):
        gaussian_ssim(a[..., :10, :], a[..., :10, :])
    with pytest.raises(TypeError, match="floating-point"):
        gaussian_ssim(a, a.long())
    with pytest.raises(ValueError, match="data_range"):
        gaussian_ssim(a, a, data_range=0)


def test_inverse_first_layer_is_its_transposed_convolution_and_fused_classifier_agrees(digits32):
    x, y = digits32
    torch.manual_seed(0)
    tc = inv.InverseTCNN(1034, widths=(8, 4, 4)).eval()
    f = torch.randn(6, 1034)
    with torch.no_grad():
        assert torch.allclose(tc(f), tc.net(f[:, :, None, None]), atol=1e-6)
    clf = inv.Classifier(channels=(4, 8, 8))
    inv.train_classifier(clf, x[:100], y[:100], epochs=1, seed=0)
    frozen = clf.fused()
    assert not any(p.requires_grad for p in frozen.parameters()) and all(p.requires_grad for p in clf.parameters())
    with torch.no_grad():
        assert torch.allclose(frozen(x[100:140]), clf.eval()(x[100:140]), atol=1e-4)
    # X~ through the folded copy leaves the shadow as it was
    o = inv.outputs(clf, x[100:104])
    inv.gradient_reconstruction(clf, o, x[104:108], steps=2)
    assert all(p.requires_grad for p in clf.parameters()) and not clf.training


def test_inversion_twin_steps_through_k_without_retraining(digits32):
    import re

    from leakutils import widgets

    x, y = digits32
    target, shadow, lab = _small_lab(x, y)
    o_s = inv.outputs(shadow, x[150:300])
    for k in (10, 1):
        parts = {"O": o_s if k == 10 else inv.top_k(o_s, k)}
        sc = inv.FeatureScaler(parts)
        tc = inv.InverseTCNN(10, widths=(8, 4, 4))
        inv.train_inverse(tc, inv.features(parts, "O", sc), x[150:300], epochs=2)
        lab.add(k, "O", tc, sc)
    tc_x = inv.InverseTCNN(1024, widths=(8, 4, 4))
    lab.add(10, "X", tc_x, None)  # only at k = 10: not a row of the twin
    before = {n: p.detach().clone() for n, p in tc.named_parameters()}
    twin = widgets.inversion_twin(lab, x[300:320], digits=5, dpi=40)
    frames = re.findall(r'frames\[\d+\] = "data:image/png;base64,([^"]+)"', twin.html)
    assert twin.values == (10, 1) and len(frames) == 2 and len(set(frames)) == 2 and twin.label == "top k"
    assert all(torch.equal(p, before[n]) for n, p in tc.named_parameters())
    for frame, k in zip(twin.results, (10, 1)):
        assert frame["k"] == k and list(frame["images"]) == ["original", "class average", "X~", "TCNN(O)"]
        assert all(v.shape == (5, 1, 32, 32) for v in frame["images"].values())
        assert all(-1 <= s <= 1 for s in frame["ssim"].values()) and set(frame["distance"]) == {"X~", "TCNN(O)"}
    # the class average of the predicted class: the top-1 logit survives every truncation
    assert torch.equal(twin.results[0]["images"]["class average"], twin.results[1]["images"]["class average"])
    assert not torch.equal(twin.results[0]["images"]["TCNN(O)"], twin.results[1]["images"]["TCNN(O)"])
    first = twin.results[0]
    assert twin.captions[0] == (f"top k = 10:  TCNN(O): SSIM {first['ssim']['TCNN(O)']:.3f}, distance to the "
                                f"class average {first['distance']['TCNN(O)']:.3f} (mean of 5 digits)")
    with pytest.raises(ValueError, match="no inverse model was trained for k = 3"):
        widgets.inversion_twin(lab, x[300:320], ks=(10, 3))
    with pytest.raises(ValueError, match="digits"):
        widgets.inversion_twin(lab, x[300:320], digits=21)
    with pytest.raises(ValueError, match="2..40 values"):
        widgets.inversion_twin(lab, x[300:320], ks=(10,))
