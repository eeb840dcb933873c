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


def test_bias_free_tanh_network_gives_no_label(mnist):
    torch.manual_seed(0)
    net = models.MLP((1, 28, 28), (64,), activation="tanh", bias=False, dtype=torch.float64)
    x, y = mnist[0]
    found = labels.recover_labels(net, capture.client_update(net, x, y))
    assert found.labels.numel() == 0 and not found.certain and not found.consistent
    assert "non-negative" in found.note and found.candidate.numel() == 1
    relu = models.MLP((1, 28, 28), (64,), bias=False, dtype=torch.float64)
    found = labels.recover_labels(relu, capture.client_update(relu, x, y))
    assert found.certain and found.labels.tolist() == y.tolist() and found.note == ""


def test_output_layer_found_in_call_order(mnist):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Linear(32, 10)
            self.fc1 = torch.nn.Linear(784, 32)

        def forward(self, x):
            return self.out(torch.sigmoid(self.fc1(x.flatten(1))))

    torch.manual_seed(0)
    net = Net().double()
    x, y = mnist[5]
    found = labels.recover_labels(net, capture.client_update(net, x, y))
    assert found.labels.tolist() == y.tolist() and found.certain


@pytest.mark.parametrize("kwargs, exc, fragment", [
    (dict(model="m"), TypeError, "nn.Module"),
    (dict(update=3), TypeError, "Update"),
    (dict(layer=5), TypeError, "module name"),
    (dict(layer="fc9"), ValueError, "no layer named"),
    (dict(layer="act1"), TypeError, "not a Linear"),
    (dict(rtol=-1), ValueError, "rtol"),
    (dict(rtol="x"), TypeError, "rtol"),
    (dict(rtol=float("nan")), ValueError, "rtol"),
])
def test_bad_input_is_refused_clearly(mlp, mnist, kwargs, exc, fragment):
    x, y = mnist[0]
    args = dict(model=mlp, update=capture.client_update(mlp, x, y))
    args.update(kwargs)
    with pytest.raises(exc) as info:
        labels.recover_labels(args.pop("model"), args.pop("update"), **args)
    assert fragment in str(info.value)
