"""What a defence costs (leakutils.defences.utility) and the defence matrix (registry, matrix)."""
import math

import pytest
import torch

from leakutils import capture, data, metrics, models
from leakutils.core import Reconstruction
from leakutils.defences import matrix, registry, utility


@pytest.fixture(scope="module")
def split():
    return utility.mnist_split()


@pytest.fixture(scope="module")
def small(split):
    """1,000 training digits and the 1,000 test digits."""
    train, test = split
    return (train.images[:1000], train.labels[:1000]), test


def _mlp(width=32, dtype=None):
    torch.manual_seed(0)
    return models.MLP((1, 28, 28), (width,), dtype=dtype)


def test_mnist_split_is_disjoint_and_seeded(split):
    train, test = split
    assert (len(train), len(test)) == (utility.TRAIN_SIZE, utility.TEST_SIZE) == (4000, 1000)
    again, _ = utility.mnist_split()
    assert torch.equal(again.images, train.images)
    other, _ = utility.mnist_split(seed=1)
    assert not torch.equal(other.labels, train.labels)
    # no test digit appears in the training split
    seen = {image.numpy().tobytes() for image in train.images}
    assert not any(image.numpy().tobytes() in seen for image in test.images)


def test_plain_training_beats_chance_and_leaves_the_model_alone(small):
    train, test = small
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    start = utility.accuracy(model, test)
    net = utility.train(model, train, epochs=2, batch=32)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert next(net.parameters()).dtype == torch.float32
    assert start < 0.2 and utility.accuracy(net, test) > 0.6


def test_a_defence_that_withholds_everything_stays_at_chance(small):
    train, test = small
    model = _mlp()

    def nothing(m, x, y):
        return capture.client_update(m, x, y).map(lambda name, g: torch.zeros_like(g))

    net = utility.train(model, train, nothing, epochs=1, batch=100)
    assert utility.accuracy(net, test) == utility.accuracy(model, test) < 0.2


def test_the_plain_fast_path_equals_training_on_client_updates(small):
    train, _ = small
    model = _mlp()
    fast = utility.train(model, (train[0][:300], train[1][:300]), epochs=1, batch=50)
    slow = utility.train(model, (train[0][:300], train[1][:300]), capture.client_update, epochs=1, batch=50)
    for a, b in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_dp_sgd_training_gives_a_finite_epsilon_that_falls_with_noise(small):
    train, test = small
    model = _mlp(16)
    data_ = (train[0][:500], train[1][:500])
    eps = {}
    for sigma in (0.7, 1.5):
        net, eps[sigma] = utility.train_dp_sgd(model, data_, noise_multiplier=sigma, epochs=1, batch=50)
        # a plain model comes back: no Opacus wrapper, the capture works on it
        assert type(net) is type(model) and not hasattr(net, "_module")
        capture.client_update(net, test.images[:2], test.labels[:2])
    assert all(math.isfinite(e) and e > 0 for e in eps.values())
    assert eps[1.5] < eps[0.7]
    # the same seed gives the same run
    again, e_again = utility.train_dp_sgd(model, data_, noise_multiplier=1.5, epochs=1, batch=50)
    assert e_again == eps[1.5] and torch.equal(next(again.parameters()), next(net.parameters()))


def test_registry_strengths_and_noise_drawn_afresh_each_step(mnist):
    for d in registry.DEFENCES.values():
        assert len(d.strengths) == (1 if d.name == "none" else 3), d.name
    model = _mlp(dtype=torch.float64)
    x, y = mnist.images[:1], mnist.labels[:1]
    gen = torch.Generator().manual_seed(0)
    noise = registry.DEFENCES["noise"]
    a, b = (noise.apply(model, x, y, 0.1, gen).update for _ in range(2))
    assert not torch.equal(a.gradients["fc1.weight"], b.gradients["fc1.weight"])
    dp = registry.DEFENCES["dp_sgd"].apply(model, x, y, 0.1, 0)
    assert dp.epsilon > 0 and dp.noise == pytest.approx(0.1 * registry.CLIP_NORM)
    assert registry.DEFENCES["secure_aggregation"].images_per_update(10) == 10


def test_secure_aggregation_trains_as_the_undefended_run(small):
    train, _ = small
    model = _mlp()
    data_ = (train[0][:200], train[1][:200])
    a, _ = registry.train_under("secure_aggregation", 10, model, data_, epochs=1)
    b, _ = registry.train_under("none", None, model, data_, epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_best_attack_picks_the_exact_analytic_attack_on_one_digit(mnist):
    model = _mlp(64, torch.float64)
    x, y = mnist.images[:1], mnist.labels[:1]
    name, rec, scores, table = matrix.best_attack(model, capture.client_update(model, x, y), x, y,
                                                  options={"inverting": {"iterations": 5}})
    assert [row["attack"] for row in table] == ["bias_ratio", "pruned", "exan", "inverting"]
    best = next(row for row in table if row["attack"] == name)
    assert scores.median_psnr == best["psnr_median"] >= 100
    assert rec.attack == name
    # Inverting Gradients started from an analytic estimate, not from noise; exact ties go to the first
    assert table[3]["init"] in ("bias_ratio", "pruned", "exan") and name == "bias_ratio"


def test_best_attack_names_the_highest_median_under_noise(mnist):
    model = _mlp(64, torch.float64)
    x, y = mnist.images[:1], mnist.labels[:1]
    applied = registry.DEFENCES["noise"].apply(model, x, y, 1e-2, 0)
    name, _, scores, table = matrix.best_attack(model, applied.update, x, y, noise=applied.noise,
                                                options={"inverting": {"iterations": 20}})
    ran = [row for row in table if not row["refused"]]
    assert 20 < scores.median_psnr < 100
    assert scores.median_psnr == max(row["psnr_median"] for row in ran)
    assert name == max(ran, key=lambda row: row["psnr_median"])["attack"]


def test_best_attack_records_refusals_and_scores_missing_images_as_blank():
    digits = data.load("digits", 2, dtype=torch.float64)
    cnn = models.ConvNet(1, 8, [(4, 3, 1, 1, "leaky_relu")], num_classes=10, dtype=torch.float64)
    models.init_weights(cnn, "default", seed=0)
    x, y = digits.images, digits.labels
    one = matrix.best_attack(cnn, capture.client_update(cnn, x[:1], y[:1]), x[:1], y[:1],
                             options={"inverting": {"iterations": 5}})
    assert one[0] == "rconv" and one[2].median_psnr >= 100
    name, rec, scores, table = matrix.best_attack(cnn, capture.client_update(cnn, x, y), x, y,
                                                  options={"inverting": {"iterations": 5}})
    refused = {row["attack"]: row for row in table if row["refused"]}
    assert set(refused) == {"rconv"} and "rebuilds one sample" in refused["rconv"]["message"]
    assert refused["rconv"]["psnr_median"] is None and name == "inverting"
    # a reconstruction of one image for a batch of two: the other truth is scored as blank
    short = metrics.compare(torch.cat([x[:1], torch.zeros_like(x[:1])]), x)
    got = matrix._score(Reconstruction(x[:1], None, torch.ones_like(x[:1], dtype=torch.bool)), x, None)[0]
    assert sorted(got.psnr.tolist()) == sorted(short.psnr.tolist())


def test_every_attack_refusing_gives_no_best(mnist):
    model = _mlp(dtype=torch.float64)
    x, y = mnist.images[:2], mnist.labels[:2]
    name, rec, scores, table = matrix.best_attack(model, capture.client_update(model, x, y), x, y,
                                                  attacks=["rconv"])
    assert (name, rec, scores) == (None, None, None) and table[0]["refused"]


def test_run_matrix_rows_and_the_breaking_point(mnist):
    model = _mlp(64, torch.float64)
    x, y = mnist.images[:4], mnist.labels[:4]
    rows = matrix.run_matrix(model, x, y, defences=["none", "noise", "batch"],
                             strengths={"noise": (1e-3, 1.0), "batch": (2,)}, attacks=["bias_ratio", "exan"])
    assert [(r["defence"], r["strength"], r["attack"]) for r in rows][:2] == [("none", None, "bias_ratio"),
                                                                              ("none", None, "exan")]
    for r in rows:
        assert r["images"] == 4 and r["updates"] == (2 if r["defence"] == "batch" else 4)
        if r["psnr_median"] is None:
            # every update refused (ExAN under noise of the size of the gradient)
            assert r["refused"] == 4 and r["message"]
        else:
            assert 0 <= r["psnr_ge_100"] <= r["psnr_ge_30"] <= r["psnr_ge_20"] <= 1
    best = {(r["defence"], r["strength"]): r for r in matrix.best_rows(rows)}
    assert best[("none", None)]["psnr_median"] >= 100 and best[("none", None)]["psnr_ge_100"] == 1.0
    assert best[("noise", 1.0)]["psnr_median"] < 20 < best[("noise", 1e-3)]["psnr_median"]
    mixture = next(r for r in rows if r["defence"] == "batch" and r["attack"] == "bias_ratio")
    assert mixture["psnr_median"] < 20 and mixture["refused"] == 0
    points = matrix.breaking_points(rows)
    assert points["none"] is None and points["noise"]["strength"] == 1.0


def test_pruned_update_is_read_exactly_by_the_surviving_entries(mnist):
    model = _mlp(64, torch.float64)
    x, y = mnist.images[:1], mnist.labels[:1]
    applied = registry.DEFENCES["prune"].apply(model, x, y, 0.5, 0)
    name, rec, scores, table = matrix.best_attack(model, applied.update, x, y,
                                                  options={"inverting": {"iterations": 5}})
    by = {row["attack"]: row for row in table}
    assert name == "pruned" and scores.median_psnr >= 100 and rec.diagnostics["consistent"]
    # the plain fit reads the pruned zeros as data; Inverting Gradients starts from the certified read
    assert by["bias_ratio"]["psnr_median"] < 100 and by["inverting"]["init"] == "pruned"


def test_inverting_starts_from_the_estimate_closest_in_cosine_distance(mnist):
    from leakutils.attacks import inverting
    model = _mlp(64, torch.float64)
    x, y = mnist.images[:1], mnist.labels[:1]
    applied = registry.DEFENCES["noise"].apply(model, x, y, 3e-2, 0)
    blank = torch.zeros_like(x)
    done = {"bias_ratio": {"reconstruction": Reconstruction(x.clone(), None, torch.zeros_like(x, dtype=torch.bool))},
            "exan": {"reconstruction": Reconstruction(blank + 0.5, None, torch.zeros_like(x, dtype=torch.bool))}}
    # neither is certain: the one whose gradient points like the update wins, whatever its order
    for order in (("bias_ratio", "exan"), ("exan", "bias_ratio")):
        init, start = matrix._init_from({a: done[a] for a in order}, model, applied.update, "idlg")
        assert start == "bias_ratio" and torch.equal(init, x)
    assert inverting.cosine_distance(model, capture.client_update(model, x, y), x, y) < 1e-12
    assert inverting.cosine_distance(model, applied.update, x) < inverting.cosine_distance(model, applied.update,
                                                                                           blank + 0.5)


def test_run_matrix_attacks_at_most_the_given_clients(mnist):
    model = _mlp(64, torch.float64)
    x, y = mnist.images[:8], mnist.labels[:8]
    rows = matrix.run_matrix(model, x, y, defences=["none", "batch"], strengths={"batch": (4, 8)},
                             attacks=["bias_ratio", "exan"], clients=2)
    got = {(r["defence"], r["strength"]): (r["updates"], r["images"]) for r in rows}
    assert got == {("none", None): (2, 2), ("batch", 4): (2, 8), ("batch", 8): (1, 8)}
