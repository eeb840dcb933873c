"""Learned weight extraction (Chapter 6): populations, meta-model, seed 004's metrics, alignment."""
import math

import pytest
import torch

from leakutils import data, metamodel as mm, models

S = mm.Sizes(64, 8, 10)


@pytest.fixture(scope="module")
def digits():
    ds = data.load("digits")
    return ds.images.reshape(len(ds), -1).float(), ds.labels


def test_metrics_by_hand():
    true, pred = torch.tensor([3.0, 3.0, 3.0]), torch.tensor([1.0, 3.0, 5.0])
    assert mm.aae(pred, true) == pytest.approx(4 / 3)
    assert mm.aape(pred, true) == pytest.approx(4 / 9)
    # the floor on the denominator: |0.01 - 0| / 1e-3 = 10, |1 - 1| / 1 = 0
    assert mm.aape(torch.tensor([0.01, 1.0]), torch.tensor([0.0, 1.0])) == pytest.approx(5.0)
    assert mm.aape(torch.tensor([0.01, 1.0]), torch.tensor([0.0, 1.0]), eps=0.1) == pytest.approx(0.05)
    assert math.isinf(mm.aape(torch.tensor([0.01, 1.0]), torch.tensor([0.0, 1.0]), eps=0))
    with pytest.raises(ValueError, match="shape"):
        mm.aae(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="eps"):
        mm.aape(true, true, eps=-1)


def test_accuracy_difference_by_hand():
    s = mm.Sizes(2, 2, 2)
    # unit 0 = relu(x0), unit 1 = relu(x1); the true network predicts argmax(x0, x1), the other the opposite
    W, b = torch.eye(2), torch.zeros(2)
    true = mm.flatten(W, b, torch.eye(2), torch.zeros(2))
    pred = mm.flatten(W, b, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.zeros(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 3.0]])
    y = torch.tensor([0, 1, 0, 0])  # the true network gets 3 of 4, the other 1 of 4
    assert mm.accuracy(true[None], x, y, s).tolist() == [0.75]
    assert mm.accuracy_difference(pred, true, x, y, s) == pytest.approx(0.5)
    sc = mm.scores(pred[None], true[None], x, y, s)
    assert sc["accuracy_true"] == 0.75 and sc["accuracy_pred"] == 0.25
    # swapping the two hidden units of the prediction is undone by alignment; the function is not changed
    swapped = mm.flatten(W[[1, 0]], b, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2))
    sw = mm.scores(swapped[None], pred[None], x, y, s)
    assert sw["aae"] > 0 and sw["aae_aligned"] == 0 and sw["accuracy_difference"] == 0


def test_flatten_matches_mlp_state_dict_and_forward():
    torch.manual_seed(0)
    net = models.MLP((64,), (8,))
    flat = torch.cat([p.detach().reshape(-1) for p in net.state_dict().values()])
    assert flat.numel() == S.n_params == 8 * 65 + 10 * 9
    x = torch.rand(5, 64)
    assert torch.allclose(mm.forward(flat[None], x, S)[0], net(x), atol=1e-6)
    m = mm.to_model(flat, S, dtype=torch.float32)
    assert torch.allclose(m(x), net(x), atol=1e-6)
    with pytest.raises(ValueError, match="entries"):
        mm.unflatten(flat[:-1], S)
    with pytest.raises(ValueError, match="features"):
        mm.forward(flat[None], torch.rand(5, 63), S)
    with pytest.raises(ValueError, match="positive"):
        mm.Sizes(0, 8, 10)


def test_alignment_undoes_a_permutation_and_keeps_the_function():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(3, S.n_params, generator=g)
    W, b, A, c = mm.unflatten(true, S)
    perm = torch.randperm(S.N, generator=g)
    shuffled = mm.flatten(W[:, perm], b[:, perm], A[:, :, perm], c)
    x = torch.randn(7, S.D, generator=g)
    assert torch.allclose(mm.forward(shuffled, x, S), mm.forward(true, x, S), atol=1e-5)
    assert mm.aae(shuffled, true) > 0.5
    aligned = mm.align_units(shuffled, true, S)
    assert torch.equal(aligned, true)
    # noisy prediction: alignment can only lower the error
    noisy = shuffled + 0.1 * torch.randn(shuffled.shape, generator=g)
    assert mm.aae(mm.align_units(noisy, true, S), true) < 0.1 < mm.aae(noisy, true)


def test_population_trained_together_equals_networks_trained_alone(digits):
    x, y = digits
    pop = mm.train_population(3, x[:300], y[:300], x[300:310], sizes=S, epochs=2, batch_size=50, seed=7,
                              test=(x[1000:], y[1000:]))
    assert pop.weights.shape == (3, S.n_params) and pop.outputs.shape == (3, 10, 10)
    p = 1  # network seed 8, trained alone with the same initialisation and batch order
    net = models.MLP((64,), (8,))
    init = mm.init_population(1, S, [8])[0]
    W, b, A, c = mm.unflatten(init, S)
    with torch.no_grad():
        for prm, v in zip(net.parameters(), (W, b, A, c)):
            prm.copy_(v)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(8)
    for _ in range(2):
        order = torch.randperm(300, generator=g)
        for i in range(0, 300, 50):
            idx = order[i:i + 50]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    alone = torch.cat([prm.detach().reshape(-1) for prm in net.parameters()])
    assert torch.allclose(pop.weights[p], alone, atol=1e-5)
    assert (pop.weights[p] - init).abs().max() > 1e-3  # it did train
    with pytest.raises(ValueError, match="features"):
        mm.train_population(2, x[:, :10], y, x[:5], sizes=S)
    with pytest.raises(ValueError, match="labels"):
        mm.train_population(2, x[:20], y[:20] + 10, x[:5], sizes=S)


@pytest.fixture(scope="module")
def small_lab(digits):
    x, y = digits
    test = (x[1400:], y[1400:])
    kw = dict(sizes=S, epochs=20, lr=1e-2, test=test)
    pop = mm.train_population(120, x[:600], y[:600], x[1300:1340], **kw)
    tgt = mm.train_population(20, x[600:1200], y[600:1200], x[1300:1340], seed=1000, **kw)
    assert pop.accuracy.mean() > 0.6 and tgt.accuracy.mean() > 0.6
    return pop, tgt, test


def test_seed_bug_detached_similarity_changes_nothing(small_lab):
    pop, tgt, _ = small_lab
    kw = dict(epochs=3, hidden=32, latent=8)
    plain, _ = mm.train_metamodel(pop, **kw)
    seeds_version, hist = mm.train_metamodel(pop, similarity=10.0, detach_similarity=True, **kw)
    working, _ = mm.train_metamodel(pop, similarity=10.0, **kw)
    with torch.no_grad():
        a, b, c = plain(tgt.outputs), seeds_version(tgt.outputs), working(tgt.outputs)
    assert hist["similarity_loss"][-1] > 0  # reported ...
    assert torch.equal(a, b)  # ... but without gradient it has no effect
    assert not torch.allclose(a, c)


def test_similarity_loss_makes_the_predicted_network_work(small_lab):
    pop, tgt, test = small_lab
    kw = dict(epochs=60, hidden=64, latent=16)
    preds = {}
    for sim in (0.0, 10.0):
        meta, hist = mm.train_metamodel(pop, similarity=sim, **kw)
        key = "similarity_loss" if sim else "weight_loss"
        assert hist[key][-1] < hist[key][0]
        with torch.no_grad():
            preds[sim] = meta(tgt.outputs)
    base = mm.scores(mm.init_population(len(tgt), S, range(5000, 5000 + len(tgt))), tgt.weights, *test, S)
    plain, got = (mm.scores(preds[k], tgt.weights, *test, S) for k in (0.0, 10.0))
    assert got["accuracy_difference"] < 0.2 * base["accuracy_difference"]
    assert got["accuracy_difference"] < 0.5 * plain["accuracy_difference"]
    assert got["aae_aligned"] < got["aae"]
    with pytest.raises(ValueError, match="queries"):
        mm.train_metamodel(pop, epochs=1)[0](tgt.outputs[:, :5])


def test_canonical_order_keeps_functions_and_gathers_units(small_lab):
    pop, _, _ = small_lab
    w = pop.weights[:30]
    c = mm.canonical_order(w, S)
    x = torch.rand(5, S.D)
    assert torch.allclose(mm.forward(c, x, S), mm.forward(w, x, S), atol=1e-5)
    spread = lambda v: (v - v.mean(0)).abs().mean()  # noqa: E731
    assert spread(c) < spread(w)
    with pytest.raises(ValueError, match="rounds"):
        mm.canonical_order(w, S, rounds=0)


def test_metamodel_bad_input(small_lab):
    pop, _, _ = small_lab
    with pytest.raises(ValueError, match="at least 2"):
        mm.train_metamodel(pop.subset([0]))
    with pytest.raises(ValueError, match="similarity"):
        mm.train_metamodel(pop, similarity=-1.0)


def _bad_metamodel_cases():
    s = mm.Sizes(6, 3, 2)
    w = mm.init_population(2, s, [0, 1])
    nan_w = w.clone()
    nan_w[0, 0] = float("nan")
    x, y = torch.rand(5, 6), torch.tensor([0, 1, 0, 1, 0])
    return [
        (lambda: mm.scores(nan_w, w, x, y, s), ValueError, "NaN"),
        (lambda: mm.scores(w, nan_w, x, y, s), ValueError, "NaN"),
        (lambda: mm.scores(w[:, :5], w, x, y, s), ValueError, "entries per network"),
        (lambda: mm.scores(w, w[:1], x, y, s), ValueError, "differ in shape"),
        (lambda: mm.scores(w.numpy(), w, x, y, s), TypeError, "torch.Tensor"),
        (lambda: mm.scores(w, w, x, y.float(), s), TypeError, "integer"),
        (lambda: mm.scores(w, w, x * float("nan"), y, s), ValueError, "NaN"),
        (lambda: mm.scores(w, w, x, y, "6-3-2"), TypeError, "sizes"),
        (lambda: mm.aae(nan_w, w), ValueError, "NaN"),
        (lambda: mm.aape(w, w, eps=-1.0), ValueError, "eps"),
        (lambda: mm.aape(w.long(), w), TypeError, "float"),
        (lambda: mm.align_units(nan_w, w, s), ValueError, "NaN"),
        (lambda: mm.accuracy(nan_w, x, y, s), ValueError, "NaN"),
        (lambda: mm.accuracy(w, torch.rand(5, 7), y, s), ValueError, "features"),
        (lambda: mm.unflatten(w[:, :4], s), ValueError, "entries"),
        (lambda: mm.Sizes(0, 3, 2), ValueError, "positive"),
        (lambda: mm.train_population(0, x, y, x, sizes=s), ValueError, "n_nets"),
        (lambda: mm.train_population(1, x, torch.tensor([0, 1, 0, 1, 5]), x, sizes=s), ValueError, "labels"),
        (lambda: mm.init_population(2, s, [0]), ValueError, "one seed per network"),
        (lambda: mm.canonical_order(w, s, rounds=0), ValueError, "rounds"),
        (lambda: mm.forward(w, x.double(), s), TypeError, "dtype"),
        (lambda: mm.forward(nan_w, x, s), ValueError, "NaN"),
        (lambda: mm.MetaModel(s, 0), ValueError, "n_queries"),
        (lambda: mm.train_metamodel("pop"), TypeError, "Population"),
        (lambda: mm.similarity_loss(w, torch.randn(2, 4, 3), x, s), ValueError, "outputs"),
        (lambda: mm.similarity_loss(w, torch.randn(2, 4, 2), x, s), ValueError, "same 5 queries"),
        (lambda: mm.accuracy_difference(nan_w, w, x, y, s), ValueError, "NaN"),
        (lambda: mm.unflatten(w.numpy(), s), TypeError, "torch.Tensor"),
        (lambda: mm.flatten(*mm.unflatten(w[0], s)[:3], torch.zeros(5)), ValueError, "do not form a network"),
        (lambda: mm.to_model(w, s), ValueError, "one network"),
        (lambda: mm.to_model(w[0], s, input_shape=(1, 28, 28)), ValueError, "input_shape"),
    ]


N_BAD_METAMODEL = 31


def test_every_bad_case_is_listed():
    assert len(_bad_metamodel_cases()) == N_BAD_METAMODEL


@pytest.mark.parametrize("case", range(N_BAD_METAMODEL))
def test_bad_inputs_give_clear_errors(case):
    call, exc, match = _bad_metamodel_cases()[case]
    with pytest.raises(exc, match=match):
        call()
