"""The defences of ``leakutils.defences``: hand-computed cases, properties, and Opacus itself.

Hand cases use tensors small enough to check by eye; properties (Hypothesis, few examples)
cover clipping, pruning, quantisation and aggregation; DP-SGD is checked against the plain
gradient, against per-sample clipping done by hand, and against Opacus' own accountant.
"""
import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leakutils import capture, defences, models
from leakutils.attacks import labels
from leakutils.core import Update
from leakutils.defences import dp

SMALL = (1, 6, 6)


def hand_update(dtype=torch.float64) -> Update:
    """Two parameters with global norm 5: a = [3, 0], b = [[4]]."""
    grads = {"a": torch.tensor([3.0, 0.0], dtype=dtype), "b": torch.tensor([[4.0]], dtype=dtype)}
    return Update(grads, batch_size=2, loss=0.5, input_shape=(2,))


def random_update(seed: int, shapes=((3, 4), (4,), (2, 3)), dtype=torch.float64, scale=1.0) -> Update:
    gen = torch.Generator().manual_seed(seed)
    grads = {f"p{i}": scale * torch.randn(s, generator=gen, dtype=dtype) for i, s in enumerate(shapes)}
    return Update(grads, batch_size=3, loss=1.0, input_shape=(4,))


def small_case(seed=0, m=4, widths=(8,), k=3):
    torch.manual_seed(seed)
    model = models.MLP(SMALL, widths, num_classes=k, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((m, *SMALL), generator=gen, dtype=torch.float64)
    y = torch.randint(0, k, (m,), generator=gen)
    return model, x, y


def assert_updates_close(a: Update, b: Update, atol: float):
    assert set(a.gradients) == set(b.gradients)
    for name in a.gradients:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        err = float((a[name] - b[name]).abs().max())
        assert err <= atol, f"{name}: {err:.3g} > {atol:.3g}"


# --------------------------------------------------------------------------- clip and noise


def test_clip_by_hand():
    u = hand_update()
    c = defences.clip(u, 1.0)
    assert torch.allclose(c["a"], torch.tensor([0.6, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.allclose(c["b"], torch.tensor([[0.8]], dtype=torch.float64), rtol=0, atol=1e-15)
    assert (c.batch_size, c.loss, c.input_shape) == (2, 0.5, (2,))
    same = defences.clip(u, 10.0)
    assert all(torch.equal(same[n], u[n]) for n in u.gradients) and same is not u
    assert defences.global_norm(u) == 5.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), log_scale=st.floats(-6, 6), max_norm=st.floats(1e-3, 1e3),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_clip_never_exceeds_max_norm_and_keeps_direction(seed, log_scale, max_norm, dtype):
    u = random_update(seed, dtype=dtype, scale=10.0 ** log_scale)
    c = defences.clip(u, max_norm)
    eps = torch.finfo(dtype).eps
    assert defences.global_norm(c) <= max_norm * (1 + 16 * eps)
    factor = min(1.0, max_norm / defences.global_norm(u))
    for n in u.gradients:
        assert c[n].dtype == dtype
        assert torch.allclose(c[n], u[n] * factor, rtol=8 * eps, atol=0)


def test_gaussian_noise_is_seeded_and_has_its_std():
    u = Update({"w": torch.zeros(200, 500, dtype=torch.float64)}, 1, 0.0, (500,))
    state = torch.random.get_rng_state()
    a = defences.gaussian_noise(u, 0.3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a["w"], defences.gaussian_noise(u, 0.3, seed=7)["w"])
    assert not torch.equal(a["w"], defences.gaussian_noise(u, 0.3, seed=8)["w"])
    # 100,000 draws: the sample std is within 1% of 0.3 (its own spread is 0.22%)
    assert abs(float(a["w"].std()) - 0.3) < 0.003 and abs(float(a["w"].mean())) < 0.005
    assert torch.equal(defences.gaussian_noise(u, 0.0)["w"], u["w"])


def test_relative_noise_scales_with_the_largest_entry():
    g = torch.zeros(200, 500, dtype=torch.float64)
    g[0, 0] = -4.0
    u = Update({"w": g}, 1, 0.0, (500,))
    noise = defences.gaussian_noise(u, 0.1, seed=1, relative=True)["w"] - g
    assert abs(float(noise.std()) - 0.4) < 0.004
    gen = torch.Generator().manual_seed(1)
    first = defences.gaussian_noise(u, 0.1, seed=gen, relative=True)
    assert torch.equal(first["w"], defences.gaussian_noise(u, 0.1, seed=1, relative=True)["w"])
    assert not torch.equal(first["w"], defences.gaussian_noise(u, 0.1, seed=gen, relative=True)["w"])


def test_clip_and_noise_is_clip_then_noise_of_std_z_times_c():
    u = random_update(3)
    got = defences.clip_and_noise(u, 0.5, 2.0, seed=4)
    want = defences.gaussian_noise(defences.clip(u, 0.5), 1.0, seed=4)
    assert_updates_close(got, want, 0.0)
    assert_updates_close(defences.clip_and_noise(u, 0.5, 0.0), defences.clip(u, 0.5), 0.0)


# --------------------------------------------------------------------------- prune


def test_prune_by_hand_per_tensor():
    u = Update({"a": torch.tensor([0.1, -3.0, 0.2, 2.0, -0.05], dtype=torch.float64),
                "b": torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)}, 1, 0.0, (5,))
    p = defences.prune(u, 0.4)
    # floor(0.4 * 5) = 2 smallest |a| go; floor(0.4 * 4) = 1 entry of b, the first of the ties
    assert p["a"].tolist() == [0.0, -3.0, 0.2, 2.0, 0.0]
    assert p["b"].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    assert torch.count_nonzero(defences.prune(random_update(0, shapes=((100,),)), 0.29)["p0"]) == 71
    assert_updates_close(defences.prune(u, 0.0), u, 0.0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), fraction=st.floats(0.0, 0.999))
def test_prune_keeps_exactly_n_minus_floor_fraction_n(seed, n, fraction):
    u = random_update(seed, shapes=((n,),))
    g, p = u["p0"], defences.prune(u, fraction)["p0"]
    k = math.floor(fraction * n + 1e-9)
    kept = p != 0
    assert int(kept.sum()) == n - k
    assert torch.equal(p[kept], g[kept])
    if 0 < k < n:
        assert float(g[kept].abs().min()) >= float(g[~kept].abs().max())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), fraction=st.floats(0.0, 0.999),
       levels=st.integers(1, 6))
def test_prune_with_ties_equals_a_stable_sort(seed, n, fraction, levels):
    # few distinct magnitudes: many ties, pruned first in index order
    g = torch.randint(-levels, levels + 1, (n,), generator=torch.Generator().manual_seed(seed)).double()
    k = math.floor(fraction * n + 1e-9)
    want = g.clone()
    want[torch.sort(g.abs(), stable=True).indices[:k]] = 0
    got = defences.prune(Update({"w": g}, 1, 0.0, (n,)), fraction)["w"]
    assert torch.equal(got, want)


# --------------------------------------------------------------------------- quantise


def test_quantise_by_hand():
    u = Update({"w": torch.tensor([1.27, -0.5, 0.004, 0.0], dtype=torch.float64)}, 1, 0.0, (4,))
    assert torch.allclose(defences.quantise(u, "int8")["w"], torch.tensor([1.27, -0.5, 0.0, 0.0],
                          dtype=torch.float64), rtol=0, atol=1e-15)
    assert defences.quantise(u, "sign")["w"].tolist() == pytest.approx([0.4435, -0.4435, 0.4435, 0.0])
    third = Update({"w": torch.tensor([1 / 3], dtype=torch.float64)}, 1, 0.0, (1,))
    half = defences.quantise(third, "float16")["w"]
    assert half.dtype == torch.float64 and float(half) == 0.333251953125
    f32 = defences.quantise(hand_update(torch.float32), "int8")
    assert f32["a"].dtype == torch.float32
    with pytest.raises(ValueError, match="beyond float16's range"):
        defences.quantise(hand_update().map(lambda n, g: g * 2e4), "float16")
    zero = Update({"w": torch.zeros(3, dtype=torch.float64)}, 1, 0.0, (3,))
    assert torch.equal(defences.quantise(zero, "int8")["w"], zero["w"])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), log_scale=st.floats(-8, 4))
def test_int8_error_is_at_most_half_a_step_and_sign_keeps_signs(seed, log_scale):
    u = random_update(seed, scale=10.0 ** log_scale)
    q8, qs = defences.quantise(u, "int8"), defences.quantise(u, "sign")
    for n, g in u.gradients.items():
        scale = float(g.abs().max()) / 127
        assert float((q8[n] - g).abs().max()) <= scale / 2 * (1 + 1e-9)
        assert len(torch.unique(q8[n] / scale).round()) <= 255
        assert torch.equal(torch.sign(qs[n]), torch.sign(g))
        assert torch.allclose(qs[n].abs().sum(), g.abs().sum(), rtol=1e-12)


# --------------------------------------------------------------------------- secure aggregation


def test_secure_aggregation_by_hand():
    a = Update({"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}, 1, 1.0, (2,))
    b = Update({"w": torch.tensor([0.0, 2.0], dtype=torch.float64)}, 3, 3.0, (2,))
    s = defences.secure_aggregation([a, b])
    assert s["w"].tolist() == [0.25, 1.5] and s.batch_size == 4 and s.loss == 2.5
    e = defences.secure_aggregation([a, b], weights=[1, 1])
    assert e["w"].tolist() == [0.5, 1.0] and e.batch_size == 4 and e.loss == 2.0
    one = defences.secure_aggregation([b])
    assert torch.equal(one["w"], b["w"]) and (one.batch_size, one.loss, one.input_shape) == (3, 3.0, (2,))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6))
def test_secure_aggregation_of_copies_is_the_update(seed, k):
    u = random_update(seed)
    s = defences.secure_aggregation([u] * k)
    assert_updates_close(s, u, 4 * torch.finfo(torch.float64).eps * max(float(g.abs().max()) for g in
                                                                          u.gradients.values()))
    assert s.batch_size == k * u.batch_size and s.loss == pytest.approx(u.loss, rel=1e-15)


def test_clients_aggregate_to_the_whole_batch():
    model, x, y = small_case(m=6)
    whole = capture.client_update(model, x, y, per_sample=True)
    parts = defences.client_updates(model, x, y, 3)
    assert [p.batch_size for p in parts] == [2, 2, 2]
    assert_updates_close(parts[1], capture.client_update(model, x[2:4], y[2:4]), 0.0)
    agg = defences.secure_aggregation(parts)
    assert_updates_close(agg, whole, 1e-15)
    assert agg.batch_size == 6 and agg.loss == pytest.approx(whole.loss, rel=1e-14)
    with_samples = defences.secure_aggregation([capture.client_update(model, x[i:i + 3], y[i:i + 3],
                                                                      per_sample=True) for i in (0, 3)])
    for n in whole.gradients:
        assert torch.allclose(with_samples.per_sample[n], whole.per_sample[n], rtol=0, atol=1e-15)
    assert defences.secure_aggregation([parts[0]], weights=[2.0])["out.bias"].equal(parts[0]["out.bias"])


# --------------------------------------------------------------------------- DP-SGD with Opacus


@pytest.fixture(scope="module")
def dp_case():
    return small_case(seed=2, m=5, widths=(16,), k=4)


def test_dp_without_noise_or_clipping_is_the_plain_update(dp_case):
    model, x, y = dp_case
    before = copy.deepcopy(model.state_dict())
    u, report = defences.dp_sgd_update(model, x, y, noise_multiplier=0.0, max_grad_norm=1e6)
    assert_updates_close(u, capture.client_update(model, x, y), 1e-15)
    assert report.epsilon == math.inf and report.clipped == 0 and report.noise_std == 0.0
    assert report.sample_rate == 5 / 60000 and report.steps == 1 and report.accountant == "rdp"
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    assert all(p.grad is None and not hasattr(p, "grad_sample") for p in model.parameters())


def test_dp_clipping_is_the_mean_of_per_sample_clipped_gradients(dp_case):
    model, x, y = dp_case
    plain = capture.client_update(model, x, y, per_sample=True)
    norms = torch.stack([g.reshape(5, -1).norm(dim=1) for g in plain.per_sample.values()], 1).norm(dim=1)
    c = 0.5 * float(norms.min())
    u, report = defences.dp_sgd_update(model, x, y, noise_multiplier=0.0, max_grad_norm=c)
    assert report.clipped == 5
    # Opacus' factor C / (||g|| + 1e-6): to round-off; the textbook min(1, C/||g||): to 1e-6 relative
    opacus_factor = (c / (norms + 1e-6)).clamp(max=1.0)
    textbook = (c / norms).clamp(max=1.0)
    for n, per in plain.per_sample.items():
        shape = (5,) + (1,) * (per.ndim - 1)
        assert torch.allclose(u[n], (per * opacus_factor.view(shape)).mean(0), rtol=1e-12, atol=1e-17)
        assert torch.allclose(u[n], (per * textbook.view(shape)).mean(0), rtol=1e-5, atol=0)
    assert not torch.allclose(u["out.bias"], plain["out.bias"], rtol=1e-3)


def test_dp_noise_is_seeded_and_averaged_over_the_batch(mnist):
    torch.manual_seed(0)
    model = models.MLP((1, 28, 28), (32,), dtype=torch.float64)
    x, y = mnist.images[:4], mnist.labels[:4]
    state = torch.random.get_rng_state()
    clean, _ = defences.dp_sgd_update(model, x, y, noise_multiplier=0.0, max_grad_norm=0.1)
    noisy, report = defences.dp_sgd_update(model, x, y, noise_multiplier=2.0, max_grad_norm=0.1, seed=5)
    again, _ = defences.dp_sgd_update(model, x, y, noise_multiplier=2.0, max_grad_norm=0.1, seed=5)
    other, _ = defences.dp_sgd_update(model, x, y, noise_multiplier=2.0, max_grad_norm=0.1, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert_updates_close(noisy, again, 0.0)
    assert not torch.equal(noisy["fc1.weight"], other["fc1.weight"])
    # 25,088 noise entries: the sample std is within 3% of sigma * C / M = 0.05 (its spread: 0.45%)
    noise = noisy["fc1.weight"] - clean["fc1.weight"]
    assert report.noise_std == pytest.approx(2.0 * 0.1 / 4)
    assert abs(float(noise.std()) / report.noise_std - 1) < 0.03
    assert set(noisy.gradients) == {"fc1.weight", "fc1.bias", "out.weight", "out.bias"}


def test_dp_update_is_what_the_private_optimizer_applies(dp_case):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model, x, y = dp_case
    net, lr = copy.deepcopy(model), 0.37
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
            module=net, optimizer=torch.optim.SGD(net.parameters(), lr=lr),
            data_loader=DataLoader(TensorDataset(x, y), batch_size=5), noise_multiplier=1.5, max_grad_norm=0.2,
            poisson_sampling=False, noise_generator=torch.Generator().manual_seed(9))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(private(x), y).backward()
        optimizer.step()
    u, _ = defences.dp_sgd_update(model, x, y, noise_multiplier=1.5, max_grad_norm=0.2, seed=9)
    for n, p in net.named_parameters():
        assert torch.allclose((before[n] - p.detach()) / lr, u[n], rtol=0, atol=1e-15)


def test_epsilon_is_opacus_own_and_falls_as_noise_grows(dp_case):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(3):
        acc.step(noise_multiplier=1.3, sample_rate=0.02)
    assert dp.epsilon(1.3, 0.02, 3, 1e-5) == acc.get_epsilon(delta=1e-5)
    model, x, y = dp_case
    _, report = defences.dp_sgd_update(model, x, y, noise_multiplier=1.3, max_grad_norm=1.0, sample_rate=0.02,
                                       steps=3)
    assert report.epsilon == acc.get_epsilon(delta=1e-5)
    for accountant in ("rdp", "prv"):
        eps = [dp.epsilon(s, 0.01, 100, 1e-5, accountant) for s in (0.7, 1.0, 2.0, 4.0)]
        assert all(a > b > 0 for a, b in zip(eps, eps[1:])), (accountant, eps)
    assert dp.epsilon(0.0, 0.01, 1, 1e-5, "prv") == math.inf
    assert dp.epsilon(1.0, 0.01, 100, 1e-5, "prv") < dp.epsilon(1.0, 0.01, 100, 1e-5, "rdp")
    with pytest.warns(UserWarning, match="PRV accountant is unreliable at sample_rate 1"):
        assert dp.epsilon(1.0, 1.0, 1, 1e-5, "prv") == dp.epsilon(1.0, 1.0, 1, 1e-5, "rdp")


def test_dp_refuses_a_model_opacus_cannot_make_private(dp_case):
    _, x, y = dp_case
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 6), nn.BatchNorm1d(6), nn.Linear(6, 4)).double()
    with pytest.raises(ValueError, match="Opacus cannot make this model private: .*BatchNorm"):
        defences.dp_sgd_update(net, x, y, noise_multiplier=1.0)


def test_capture_reads_an_opacus_wrapped_model(dp_case):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model, x, y = dp_case
    net = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, _, _ = PrivacyEngine(accountant="rdp").make_private(
            module=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            data_loader=DataLoader(TensorDataset(x, y), batch_size=5), noise_multiplier=0.0, max_grad_norm=1.0,
            poisson_sampling=False)
    assert next(iter(private.state_dict())).startswith("_module.")
    u = capture.client_update(private, x, y)
    assert_updates_close(u, capture.client_update(model, x, y), 0.0)
    assert capture.unwrap_opacus(private) is net and capture.unwrap_opacus(model) is model
    assert all(getattr(p, "grad_sample", None) is None for p in private.parameters())
    assert private.hooks_enabled


# --------------------------------------------------------------------------- FedAvg pseudo-gradient


def test_one_fedavg_step_is_the_fedsgd_gradient():
    model, x, y = small_case()
    before = copy.deepcopy(model.state_dict())
    u = defences.fedavg_update(model, x, y, lr=0.1)
    plain = capture.client_update(model, x, y)
    assert_updates_close(u, plain, 1e-15)
    assert u.batch_size == 4 and u.loss == plain.loss and u.input_shape == SMALL
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


def test_several_fedavg_steps_sum_the_gradients_along_the_path():
    model, x, y = small_case()
    lr, walker, total = 0.5, copy.deepcopy(model), None
    for _ in range(3):
        g = capture.client_update(walker, x, y)
        total = g.gradients if total is None else {n: total[n] + g[n] for n in total}
        with torch.no_grad():
            for n, p in walker.named_parameters():
                p -= lr * g[n]
    u = defences.fedavg_update(model, x, y, lr=lr, local_steps=3)
    assert_updates_close(u, Update(total, 4, 0.0, SMALL), 1e-14)
    assert_updates_close(defences.fedavg_update(model, x, y, lr=lr, epochs=3), u, 0.0)
    plain = capture.client_update(model, x, y)
    assert float((u["out.bias"] - 3 * plain["out.bias"]).abs().max()) > 1e-4


def test_minibatch_fedavg_is_seeded():
    model, x, y = small_case(m=8)
    a = defences.fedavg_update(model, x, y, lr=0.1, local_batch=3, epochs=2, seed=1)
    assert_updates_close(a, defences.fedavg_update(model, x, y, lr=0.1, local_batch=3, local_steps=6, seed=1), 0.0)
    b = defences.fedavg_update(model, x, y, lr=0.1, local_batch=3, epochs=2, seed=2)
    assert not torch.equal(a["fc1.weight"], b["fc1.weight"]) and a.batch_size == 8
    full = defences.fedavg_update(model, x, y, lr=0.1, local_batch=8)
    assert_updates_close(full, capture.client_update(model, x, y), 1e-15)


def test_weights_give_the_gradient_with_the_right_sign():
    model, x, y = small_case(m=1, k=5)
    lr = 0.2
    sent = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain = capture.client_update(model, x, y)
    returned = {n: w - lr * plain[n] for n, w in sent.items()}
    u = defences.update_from_weights(sent, returned, lr=lr, batch_size=1, input_shape=SMALL)
    assert_updates_close(u, plain, 1e-15) and math.isnan(u.loss)
    assert labels.recover_labels(model, u).labels.tolist() == y.tolist()
    backwards = defences.update_from_weights(returned, sent, lr=lr, batch_size=1, input_shape=SMALL)
    assert labels.recover_labels(model, backwards).labels.tolist() != y.tolist()
    # Opacus' prefix, lists in named_parameters order, NumPy arrays (as Flower sends them)
    wrapped = {"_module." + n: w for n, w in sent.items()}
    assert_updates_close(defences.update_from_weights(wrapped, returned, lr=lr, batch_size=1, input_shape=SMALL),
                         u, 0.0)
    as_lists = defences.update_from_weights([w.numpy() for w in sent.values()], list(returned.values()), lr=lr,
                                            batch_size=1, input_shape=SMALL, names=model, loss=0.3)
    assert_updates_close(as_lists, u, 0.0) and as_lists.loss == 0.3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_real_sgd_step_read_back_from_the_weights(dtype):
    # what a server receives: the weights after the client's own optimizer step
    model, x, y = small_case(m=3)
    model = model.to(dtype)
    x = x.to(dtype)
    lr = 0.05
    sent = {n: w.detach().clone() for n, w in model.state_dict().items()}
    plain = capture.client_update(model, x, y)
    client = copy.deepcopy(model)
    opt = torch.optim.SGD(client.parameters(), lr=lr)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(client(x), y).backward()
    opt.step()
    returned = [w.detach().numpy() for w in client.state_dict().values()]
    u = defences.update_from_weights(list(sent.values()), returned, lr=lr, batch_size=3, input_shape=SMALL,
                                      names=model)
    # (sent - returned) / lr loses the digits the weights carry beyond the step: eps * |w| / lr
    eps = torch.finfo(dtype).eps
    for n, g in plain.gradients.items():
        bound = 4 * eps * float(sent[n].abs().max()) / lr + 4 * eps * float(g.abs().max())
        assert u[n].dtype == dtype and float((u[n] - g).abs().max()) <= bound, n


# --------------------------------------------------------------------------- Soteria


def test_soteria_on_the_first_layer_withholds_the_brightest_pixels():
    torch.manual_seed(0)
    model = models.MLP((1, 2, 2), (3,), num_classes=2, dtype=torch.float64)
    x = torch.tensor([[[[0.0, 0.5], [1.0, 0.2]]]], dtype=torch.float64)
    y = torch.tensor([1])
    name, scores = defences.feature_scores(model, x)
    # r = x, dr_i/dx = e_i: s_i = 1 / (x_i + 0.1)
    assert name == "fc1"
    assert torch.allclose(scores, torch.tensor([10.0, 1 / 0.6, 1 / 1.1, 1 / 0.3], dtype=torch.float64))
    # the median of s is (1/0.6 + 1/0.3) / 2 = 2.5: pixels 1 and 2 fall below it
    u, keep = defences.soteria(model, x, y, prune_fraction=0.5, return_mask=True)
    assert keep.tolist() == [True, False, False, True]
    plain = capture.client_update(model, x, y)
    assert torch.equal(u["fc1.weight"][:, [1, 2]], torch.zeros(3, 2, dtype=torch.float64))
    assert torch.equal(u["fc1.weight"][:, [0, 3]], plain["fc1.weight"][:, [0, 3]])
    for n in ("fc1.bias", "out.weight", "out.bias"):
        assert torch.equal(u[n], plain[n])
    assert_updates_close(defences.soteria(model, x, y, prune_fraction=0.0), plain, 0.0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(1, 4), side=st.integers(2, 6),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_soteria_first_layer_shortcut_equals_autograd(seed, m, side, dtype):
    import sys
    module = sys.modules["leakutils.defences.soteria"]
    torch.manual_seed(seed)
    model = models.MLP((1, side, side), (5,), num_classes=3, dtype=dtype)
    x = torch.rand(m, 1, side, side, dtype=dtype)
    name, fast = defences.feature_scores(model, x)
    # the input reaches fc1 through a view only: the shortcut (unit input gradients) applies
    assert name == "fc1"
    r = x.flatten(1)
    xg = x.clone().requires_grad_(True)
    norms = module._input_gradient_norms(xg.flatten(1), xg)
    assert torch.allclose(norms, torch.ones_like(norms))
    assert torch.allclose(fast, (norms / (r.abs() + module.OFFSET)).sum(0), rtol=1e-6 if dtype == torch.float32
                          else 1e-15, atol=0)
    # a layer whose input is not the image itself takes the autograd path
    assert not module._is_input_view(torch.relu(xg.flatten(1)), xg)


def test_soteria_scores_follow_the_authors_loop_on_a_cnn():
    torch.manual_seed(1)
    model = models.ConvNet(1, 6, [(3, 3, 2, 1, "relu")], num_classes=3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 6, 6, generator=gen, dtype=torch.float64)
    name, scores = defences.feature_scores(model, x)
    assert name == "fc"
    # the authors' code: one backward pass of a one-hot per feature over the whole batch
    xg = x.clone().requires_grad_(True)
    r = xg
    for layer in list(model)[:-1]:
        r = layer(r)
    want = torch.zeros(r.shape[1], dtype=torch.float64)
    for f in range(r.shape[1]):
        (gx,) = torch.autograd.grad(r[:, f].sum(), xg, retain_graph=True)
        want[f] = (gx.reshape(3, -1).norm(dim=1) / (r[:, f].detach() + 0.1)).sum()
    assert torch.allclose(scores, want, rtol=1e-13, atol=0)
    u, keep = defences.soteria(model, x, torch.tensor([0, 1, 2]), prune_fraction=0.8, return_mask=True)
    assert int((~keep).sum()) == int((scores < torch.quantile(scores, 0.8)).sum())
    assert torch.equal(u["fc.weight"][:, ~keep], torch.zeros_like(u["fc.weight"][:, ~keep]))


def test_weights_of_a_batch_norm_model_skip_its_buffers():
    # a state_dict holds batch-norm statistics and an int64 counter: not gradients
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6),
                              torch.nn.ReLU(), torch.nn.Linear(6, 3)).double()
    x, y = torch.rand(5, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    sent = [w.detach().clone() for w in net.state_dict().values()]
    plain = capture.client_update(net, x, y)
    client = copy.deepcopy(net)
    opt = torch.optim.SGD(client.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(client(x), y).backward()
    opt.step()
    returned = [w.detach().numpy() for w in client.state_dict().values()]
    u = defences.update_from_weights(sent, returned, lr=0.1, batch_size=5, input_shape=(1, 2, 2), names=net)
    assert set(u.gradients) == set(plain.gradients)
    for n, g in plain.gradients.items():
        assert float((u[n] - g).abs().max()) < 1e-12, n
