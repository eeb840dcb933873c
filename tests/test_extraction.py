"""Exact extraction of a one-hidden-layer ReLU network from logit queries (Chapter 6, in progress)."""
import numpy as np
import pytest
import torch

from leakutils import extraction as ex, models


def _net(D=20, N=8, seed=0):
    torch.manual_seed(seed)
    return models.MLP(D, (N,), dtype=torch.float64)


def _truth(net):
    return (net.fc1.weight.detach().numpy(), net.fc1.bias.detach().numpy(), net.out.weight.detach().numpy())


def test_extraction_is_exact_on_a_random_network():
    net = _net()
    e = ex.extract(ex.as_oracle(net), 20, 8, lines=6)
    assert e.diagnostics["units_found"] == 8 and e.queries > 0
    al = ex.align(*_truth(net), e)
    assert al["max_error"] < 1e-6
    assert sorted(al["perm"].tolist()) == list(range(8))
    X = np.random.default_rng(1).normal(size=(500, 20))
    assert np.allclose(e(X), ex.as_oracle(net)(X), atol=1e-6)
    assert (e(X).argmax(1) == ex.as_oracle(net)(X).argmax(1)).all()


def test_align_by_hand():
    W = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([5.0, -1.0])
    A = np.array([[1.0, 2.0]])
    # the same network with units swapped and each scaled to unit norm
    e = ex.Extracted(W=np.array([[1.0, 0.0], [0.6, 0.8]]), b=np.array([-1.0, 1.0]), A=np.array([[2.0, 5.0]]),
                     c=np.zeros(1), queries=0)
    al = ex.align(W, b, A, e)
    assert al["perm"].tolist() == [1, 0] and al["max_error"] < 1e-12
    x = np.array([[0.3, -0.2]])
    assert np.allclose(e(x), np.maximum(x @ W.T + b, 0) @ A.T)


def test_query_counter_counts_inputs():
    q = ex.QueryCounter(lambda x: x[:, :2])
    q(np.zeros((5, 3)))
    q(np.zeros(3))
    assert q.queries == 6


def test_mismatched_architecture_raises_clearly():
    net = _net(N=8)
    with pytest.raises(ValueError, match="more than 4 points along one line"):
        ex.extract(ex.as_oracle(net), 20, 4, lines=6)
    with pytest.raises(ValueError, match="rounded or noisy"):
        ex.extract(lambda X: np.round(ex.as_oracle(net)(X), 2), 20, 8, lines=2)
    torch.manual_seed(0)
    deep = models.MLP(20, (8, 8), dtype=torch.float64)
    with pytest.raises(ValueError, match="one-hidden-layer"):
        ex.extract(ex.as_oracle(deep), 20, 16, lines=4)
    with pytest.raises(ValueError, match="input_dim must be an integer >= 1"):
        ex.extract(ex.as_oracle(net), 0, 8)
    with pytest.raises(ValueError, match="max_lines"):
        ex.extract(ex.as_oracle(net), 20, 8, lines=4, max_lines=2)


def test_a_missed_unit_is_found_on_further_lines():
    net = _net(D=30, N=12, seed=3)
    # one short line misses units; the search goes on line by line until the output layer fits
    e = ex.extract(ex.as_oracle(net), 30, 12, lines=1, span=5.0, seed=1)
    assert e.diagnostics["complete"] and e.diagnostics["lines"] > 1 and e.diagnostics["units_found"] == 12
    assert ex.align(*_truth(net), e)["max_error"] < 1e-6


def test_extracted_model_agreement_and_partial_search():
    net = _net(D=30, N=12, seed=3)
    oracle = ex.as_oracle(net)
    e = ex.extract(oracle, 30, 12, lines=4, seed=1)
    X = np.random.default_rng(2).normal(size=(300, 30))
    ag = ex.agreement(e, oracle, X)
    assert ag["agreement"] == 1.0 and ag["max_logit_error"] < 1e-7 and ag["n"] == 300
    m = e.to_model()
    with torch.no_grad():
        assert np.allclose(m(torch.from_numpy(X)).numpy(), oracle(X), atol=1e-7)
    # too short a search: strict raises, strict=False returns what it found and says so
    with pytest.raises(ValueError, match="Search more lines"):
        ex.extract(oracle, 30, 12, lines=1, max_lines=1, span=1.0, seed=1)
    part = ex.extract(oracle, 30, 12, lines=1, max_lines=1, span=1.0, seed=1, strict=False)
    assert not part.diagnostics["complete"] and part.diagnostics["units_found"] < 12
    al = ex.align(*_truth(net), part)  # the units it did find are exact
    assert al["errors"]["W"] < 1e-6
    with pytest.raises(ValueError, match="do not fit"):
        ex.align(*_truth(_net(D=20)), e)


def _smooth_boxes():
    torch.manual_seed(0)
    tanh = models.MLP(20, (8,), activation="tanh", dtype=torch.float64)
    relu = ex.as_oracle(_net())

    def softmax(X):
        z = relu(X)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    return {"tanh": ex.as_oracle(tanh), "softmax": softmax}


@pytest.mark.parametrize("name", ["tanh", "softmax"])
def test_smooth_boxes_are_refused_after_few_queries(name):
    q = ex.QueryCounter(_smooth_boxes()[name])
    with pytest.raises(ex.NotPiecewiseLinearError, match="not a ReLU network"):
        ex.extract(q, 20, 8)
    assert q.queries < 500  # the issue saw 1.8 million


def test_query_and_time_budgets():
    net = _net()
    with pytest.raises(ex.BudgetExceededError, match=r"queries made.*max_queries=1,000"):
        ex.extract(ex.as_oracle(net), 20, 8, max_queries=1000)
    with pytest.raises(ex.BudgetExceededError, match="time budget spent"):
        ex.extract(ex.as_oracle(net), 20, 8, max_seconds=1e-9)
    # the default budget leaves room for the search
    e = ex.extract(ex.as_oracle(net), 20, 8)
    assert e.diagnostics["complete"] and e.queries < ex.QUERY_BUDGET_PER_WEIGHT * 9 * 21 + ex.QUERY_BUDGET_BASE


def test_noisy_logits_do_not_add_hyperplanes():
    # relative round-off of 1e-13 in the logits (another BLAS, another machine) made the rows
    # of one unit found on two lines differ by more than the old duplicate tolerance
    net = _net(D=60, N=16, seed=2)
    f0 = ex.as_oracle(net)
    rng = np.random.default_rng(1)
    e = ex.extract(lambda X: (lambda y: y * (1 + 1e-13 * rng.standard_normal(y.shape)))(f0(X)), 60, 16, lines=8,
                   max_lines=8, strict=False)
    assert e.diagnostics["units_found"] <= 16
    if e.diagnostics["complete"]:
        assert ex.align(*_truth(net), e)["max_error"] < 1e-4


BAD_EXTRACT = [
    (lambda X: np.asarray(X)[:, 0], {}, ex.ExtractionError, r"shape \(2,\)"),
    (lambda X: np.asarray(X)[:1, :3], {}, ex.ExtractionError, "1 rows for 2 inputs"),
    (lambda X: np.full((len(X), 3), np.nan), {}, ex.ExtractionError, "NaN"),
    (lambda X: np.full((len(X), 3), np.inf), {}, ex.ExtractionError, "infinite"),
    ("not callable", {}, TypeError, "callable"),
    (None, {"input_dim": 7}, ValueError, "input_dim"),
    (None, {"hidden": 0}, ValueError, "hidden must be an integer >= 1"),
    (None, {"lines": 2.5}, TypeError, "lines must be an integer"),
    (None, {"span": -1.0}, ValueError, "span"),
    (None, {"scale": float("nan")}, ValueError, "scale"),
    (None, {"delta": 0}, ValueError, "delta"),
    (None, {"max_queries": 0}, ValueError, "max_queries"),
    (None, {"max_seconds": -1}, ValueError, "max_seconds"),
    (None, {"seed": -1}, ValueError, "seed"),
    (None, {"fit_queries": 0}, ValueError, "fit_queries"),
]


@pytest.mark.parametrize("oracle, kw, exc, match", BAD_EXTRACT)
def test_extract_bad_inputs(oracle, kw, exc, match):
    f = ex.as_oracle(_net()) if oracle is None else oracle
    args = {"input_dim": 20, "hidden": 8, **kw}
    with pytest.raises(exc, match=match):
        ex.extract(f, args.pop("input_dim"), args.pop("hidden"), **args)


def test_other_public_functions_bad_inputs():
    net = _net()
    e = ex.extract(ex.as_oracle(net), 20, 8)
    with pytest.raises(TypeError, match="nn.Module"):
        ex.as_oracle(lambda x: x)
    with pytest.raises(TypeError, match="callable"):
        ex.QueryCounter(3)
    with pytest.raises(ValueError, match=r"\(B, 20\)"):
        ex.agreement(e, ex.as_oracle(net), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="finite"):
        ex.agreement(e, ex.as_oracle(net), np.full((3, 20), np.nan))
    with pytest.raises(ex.ExtractionError, match="NaN"):
        ex.agreement(e, lambda X: np.full((len(X), 10), np.nan), np.zeros((3, 20)))
    with pytest.raises(TypeError, match="Extracted"):
        ex.agreement("e", ex.as_oracle(net), np.zeros((3, 20)))
    with pytest.raises(TypeError, match="Extracted"):
        ex.align(*_truth(net), "e")
    W, b, A = _truth(net)
    with pytest.raises(ValueError, match="NaN"):
        ex.align(W * np.nan, b, A, e)
    with pytest.raises(ValueError, match=r"\(B, 20\)"):
        e(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="input_shape"):
        e.to_model(input_shape=(1, 28, 28))


@pytest.fixture(scope="module")
def mnist_784_32_10():
    """The network of widgets.extraction_demo(width=32, seed=0): 784-32-10 trained on 2,000 digits."""
    from leakutils import data, metamodel as mm

    ds = data.load("mnist", dtype=torch.float64)
    x, y = ds.images[:2000].reshape(2000, -1).float(), ds.labels[:2000]
    s = mm.Sizes(784, 32, 10)
    net = mm.to_model(mm.train_population(1, x, y, x[:1], sizes=s, epochs=3, seed=0).weights[0], s)
    return net, ds.images[4100:].reshape(900, -1).numpy()


@pytest.mark.parametrize("lines, noise", [(4, 0.0), (12, 0.0), (8, 1e-13)])
def test_width_32_panel_network_extracts_exactly(mnist_784_32_10, lines, noise):
    # the issue: "bends along 33 distinct hyperplanes" for 4, 8 and 12 lines. It reproduces here
    # with 1e-13 relative round-off in the logits (one unit's rows from two lines were not merged)
    net, held_out = mnist_784_32_10
    f0, rng = ex.as_oracle(net), np.random.default_rng(0)
    f = f0 if noise == 0 else (lambda X: (lambda y: y * (1 + noise * rng.standard_normal(y.shape)))(f0(X)))
    e = ex.extract(f, 784, 32, lines=lines, max_lines=lines, seed=0, strict=False)
    assert e.diagnostics["complete"] and e.diagnostics["units_found"] == 32
    err = ex.align(*_truth(net), e)["max_error"]
    assert err < (1e-7 if noise == 0 else 1e-4)
    assert ex.agreement(e, f0, held_out)["agreement"] == 1.0


def test_extraction_twin_misses_units_with_one_line_then_is_exact():
    import re

    from leakutils import widgets

    twin = widgets.extraction_twin((1, 2), width=8, dpi=40)
    frames = re.findall(r'frames\[\d+\] = "data:image/png;base64,([^"]+)"', twin.html)
    assert twin.values == (1, 2) and len(frames) == 2 and len(set(frames)) == 2
    one, two = twin.results
    assert (one.lines, two.lines) == (1, 2) and one.queries < two.queries
    assert not one.complete and one.units_found < 8 and np.isnan(one.agreement)
    assert two.complete and two.units_found == 8 and two.max_error < 1e-6 and two.agreement == 1.0
    assert twin.captions[0] == (f"lines = 1:  {one.units_found}/8 units from {one.queries:,} queries; "
                                "the output layer cannot be fitted")
    assert twin.captions[1].startswith(f"lines = 2:  8/8 units from {two.queries:,} queries; worst weight error ")
    assert twin.captions[1].endswith("agreement 100%")
    with pytest.raises(ValueError, match="lines must be an integer in 1..12"):
        widgets.extraction_twin((1, 13))
    with pytest.raises(TypeError, match="lines must be a sequence"):
        widgets.extraction_twin(4)
