import math

import pytest
import torch
from torch import nn

from leakutils import activations, models

CASES = {
    "sigmoid": nn.Sigmoid(),
    "tanh": nn.Tanh(),
    "arctan": models.ArcTan(),
    "softplus": nn.Softplus(),
    "softplus_beta2": nn.Softplus(beta=2.0, threshold=5.0),
    "relu": nn.ReLU(),
    "leaky_relu": nn.LeakyReLU(0.2),
    "prelu": nn.PReLU(),
    "prelu_channels": nn.PReLU(3, init=0.3),
    "elu": nn.ELU(alpha=0.7),
    "identity": nn.Identity(),
}


def pre_activations():
    g = torch.Generator().manual_seed(0)
    O = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 3
    O[0, 0, 0, 0] = 12.0  # above SoftPlus(beta=2, threshold=5)'s switch to the identity
    return O


@pytest.mark.parametrize("name", sorted(CASES))
def test_derivative_from_output_matches_autograd(name):
    act = CASES[name].double()
    O = pre_activations().requires_grad_(True)
    X = act(O)
    (dX_dO,) = torch.autograd.grad(X.sum(), O)
    got = activations.derivative_from_output(act, X.detach())
    assert got.dtype == torch.float64
    assert torch.allclose(got, dX_dO, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_propagate_matches_autograd(name):
    act = CASES[name].double()
    O = pre_activations().requires_grad_(True)
    X = act(O)
    grad_X = torch.randn_like(X)
    (grad_O,) = torch.autograd.grad(X, O, grad_X)
    assert torch.allclose(activations.propagate(act, X.detach(), grad_X), grad_O, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_invert_where_determined(name):
    act = CASES[name].double()
    O = pre_activations()
    with torch.no_grad():
        X = act(O)
    O_hat, det = activations.invert(act, X)
    with torch.no_grad():
        assert torch.allclose(act(O_hat)[det], X[det], rtol=1e-14, atol=1e-14)  # consistent everywhere
    moderate = det & (O.abs() < 6)  # near saturation the inverse is ill-conditioned (tanh(12) = 1 - 8e-11)
    assert torch.allclose(O_hat[moderate], O[moderate], rtol=1e-9, atol=1e-9)
    if activations.rule_for(act).invertible:
        assert det.float().mean() > 0.99  # all but floating-point saturation
    else:  # ReLU: exactly the negative pre-activations are lost
        assert torch.equal(det, O > 0)


def test_rule_table_flags():
    assert not activations.RULES["relu"].invertible and activations.RULES["sigmoid"].invertible
    assert activations.is_invertible(nn.LeakyReLU(0.2)) and not activations.is_invertible(nn.LeakyReLU(0.0))
    assert not activations.is_invertible(nn.ReLU())


def test_softplus_row_of_seed_003_is_the_derivative_in_the_input():
    O = torch.linspace(-3, 3, 7, dtype=torch.float64)
    X = nn.functional.softplus(O)
    seed_formula = 1 / (1 + torch.exp(-X))  # what seed 003's table writes, in X
    true = torch.sigmoid(O)
    assert torch.allclose(1 / (1 + torch.exp(-O)), true)  # it is A'(O) in terms of O ...
    assert not torch.allclose(seed_formula, true, atol=1e-3)  # ... not in terms of X
    assert torch.allclose(activations.derivative_from_output(nn.Softplus(), X), true)


def test_relu_zero_output_gives_zero_gradient_and_no_pre_activation():
    X = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    assert activations.propagate(nn.ReLU(), X, torch.ones_like(X)).tolist() == [[0.0, 1.0]]
    O, det = activations.invert(nn.ReLU(), X)
    assert det.tolist() == [[False, True]] and O[0, 1] == 2.0


@pytest.mark.parametrize("act, X, err, match", [
    (nn.SiLU(), torch.zeros(2), TypeError, "no rule for SiLU"),
    ("sigmoid", torch.zeros(2), TypeError, "torch.nn.Module"),
    (nn.Sigmoid(), [0.5], TypeError, "torch tensor"),
    (nn.Sigmoid(), torch.tensor([1.5]), ValueError, "cannot be sigmoid outputs"),
    (nn.Tanh(), torch.tensor([-2.0]), ValueError, "tanh"),
    (nn.ReLU(), torch.tensor([-0.1]), ValueError, "relu"),
    (nn.ELU(alpha=1.0), torch.tensor([-1.5]), ValueError, "elu"),
    (models.ArcTan(), torch.tensor([2.0]), ValueError, "arctan"),
    (nn.Sigmoid(), torch.tensor([math.nan]), ValueError, "NaN"),
    (nn.LeakyReLU(0.0), torch.tensor([-1.0]), ValueError, "not invertible"),
    (nn.PReLU(3), torch.zeros(2, 4), ValueError, "channel weights"),
])
def test_bad_inputs(act, X, err, match):
    with pytest.raises(err, match=match):
        activations.derivative_from_output(act, X)


def test_bad_gradient_shape():
    with pytest.raises(ValueError, match="shape of X"):
        activations.propagate(nn.Tanh(), torch.zeros(3), torch.zeros(2))


def test_snap_to_range():
    X = torch.tensor([[-1e-15, 1e-14, 0.5]], dtype=torch.float64)
    assert activations.snap_to_range(nn.ReLU(), X).tolist() == [[0.0, 0.0, 0.5]]
    assert float(activations.snap_to_range(nn.Sigmoid(), torch.tensor([1 + 1e-15]))) == 1.0
    assert float(activations.snap_to_range(nn.ELU(alpha=0.5), torch.tensor([-0.6]))) == -0.5
    with pytest.raises(TypeError, match="no rule"):
        activations.snap_to_range(nn.SiLU(), X)
