import pytest
import torch

from leakutils import capture, models
from leakutils.attacks import labels


def test_single_sample_every_class_including_the_first(mlp, mnist):
    seen = set()
    for i in range(16):
        x, y = mnist[i]
        found = labels.recover_labels(mlp, capture.client_update(mlp, x, y))
        assert found.labels.tolist() == y.tolist() and found.count == 1 and found.consistent
        seen.add(int(y))
    assert 0 in seen


def test_without_bias_uses_weight_row_sums(mnist):
    torch.manual_seed(0)
    model = models.MLP((1, 28, 28), (32,), bias=False, dtype=torch.float64)
    for i in range(8):
        x, y = mnist[i]
        found = labels.recover_labels(model, capture.client_update(model, x, y))
        assert found.labels.tolist() == y.tolist() and "row sums" in found.method


def test_batch_gives_the_classes_present(mlp, mnist):
    x, y = mnist.images[:6], mnist.labels[:6]
    found = labels.recover_labels(mlp, capture.client_update(mlp, x, y))
    assert set(found.labels.tolist()) <= set(y.tolist()) and found.count == len(found.labels)
    assert found.count == len(set(y.tolist()))
    stat = found.statistic[found.labels]
    assert torch.all(stat[:-1] <= stat[1:])  # most negative first


def test_named_output_layer_and_errors(mlp, mnist):
    u = capture.client_update(mlp, *mnist[0])
    assert labels.recover_labels(mlp, u, layer="out").labels.tolist() == mnist[0][1].tolist()
    with pytest.raises(TypeError, match="not a Linear"):
        labels.recover_labels(mlp, u, layer="act1")
    with pytest.raises(ValueError, match="reveals no label"):
        labels.recover_labels(mlp, u.map(lambda n, g: torch.zeros_like(g)))
    with pytest.raises(ValueError, match="rtol"):
        labels.recover_labels(mlp, u, rtol=2)
    with pytest.raises(TypeError):
        labels.recover_labels(mlp, "update")
