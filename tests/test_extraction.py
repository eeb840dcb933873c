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
    with pytest.raises(ValueError, match="positive"):
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
