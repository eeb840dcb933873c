"""Property tests of the black-box attacks: never confidently wrong (extraction, top-k inversion)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from leakutils import extraction as ex, inversion as inv, models


def _relu_net(D, N, K, seed):
    torch.manual_seed(seed)
    return models.MLP(D, (N,), num_classes=K, dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(D=st.integers(5, 50), N=st.integers(2, 16), K=st.integers(2, 10), seed=st.integers(0, 10_000),
       lines=st.integers(1, 6))
def test_extract_is_exact_or_raises(D, N, K, seed, lines):
    net = _relu_net(D, N, K, seed)
    oracle = ex.as_oracle(net)
    try:
        e = ex.extract(oracle, D, N, lines=lines, seed=seed)
    except ex.ExtractionError:
        return  # a documented refusal
    X = np.random.default_rng(seed).normal(size=(400, D)) * 3
    ag = ex.agreement(e, oracle, X)
    assert e.diagnostics["complete"]
    assert ag["agreement"] == 1.0 and ag["max_logit_error"] < 1e-6 * max(1.0, float(np.abs(oracle(X)).max()))


@settings(max_examples=20, deadline=None)
@given(D=st.integers(5, 50), N=st.integers(2, 16), K=st.integers(2, 10), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["tanh", "sigmoid", "softmax"]))
def test_smooth_boxes_are_refused(D, N, K, seed, kind):
    if kind == "softmax":
        relu = ex.as_oracle(_relu_net(D, N, K, seed))

        def box(X):
            z = relu(X)
            p = np.exp(z - z.max(1, keepdims=True))
            return p / p.sum(1, keepdims=True)
    else:
        torch.manual_seed(seed)
        box = ex.as_oracle(models.MLP(D, (N,), num_classes=K, activation=kind, dtype=torch.float64))
    q = ex.QueryCounter(box)
    with pytest.raises(ex.ExtractionError):
        ex.extract(q, D, N, lines=2, max_lines=2)
    assert q.queries < 2_000


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 6), K=st.integers(2, 12), data=st.data(), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.float64]), shift=st.floats(-5, 5))
def test_top_k_keeps_exactly_the_top_k(N, K, data, seed, dtype, shift):
    k = data.draw(st.integers(1, K))
    o = (torch.randn(N, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3 + shift).to(dtype)
    t, kept = inv.top_k(o, k, return_mask=True)
    ref = torch.zeros_like(kept).scatter_(1, o.topk(k, dim=1).indices, True)
    assert torch.equal(kept, ref) and torch.equal(kept.sum(1), torch.full((N,), k))
    assert torch.equal(t[kept], o[kept]) and bool((t[~kept] == 0).all())
    # the kept set read back from the truncated vectors is the same (no logit is exactly 0 here)
    assert torch.equal(inv.kept_entries(t, k), kept)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 9), shift=st.floats(-8, 8))
def test_last_layer_activations_use_the_kept_equations(seed, k, shift):
    torch.manual_seed(seed % 1000)
    clf = inv.Classifier(channels=(2, 2, 2), hidden=12, image_size=8).eval()
    o = torch.randn(4, 10, generator=torch.Generator().manual_seed(seed)) * 4 + shift
    t, kept = inv.top_k(o, k, return_mask=True)
    for a in (inv.last_layer_activations(clf, t, k=k), inv.last_layer_activations(clf, t, kept=kept)):
        with torch.no_grad():
            back = clf.out(a)
        # the kept logits of the original vector are reproduced; the dropped ones are free
        assert torch.allclose(back[kept], o[kept], atol=1e-3 * (1 + float(o.abs().max())))
