"""Benchmark of Chapter 9: what a malicious server rebuilds with an imprint block and by fishing.

The server holds the last 2,000 of the 5,000 offline MNIST digits as public data and puts
an imprint block (Fowl et al. 2022) with thresholds at the quantiles of their mean
brightness in front of the 784-256-10 ReLU network of Chapters 1, 4 and 7 (PyTorch's
default initialisation, seed 0). Clients hold batches of the other 3,000 digits (batch
``r`` of size ``M`` starts at a seeded random offset) and send the mean gradient of one
step, in float32 or float64.

Per setting, over ``--trials`` batches: the fraction of the batch marked recovered, the
fraction at >= 100 dB (each marked image scored against the digit it matches), how many
marked images are below 60 dB (must be none), the number of digits alone in their bin
counted from the digits themselves, the closed form ``expected_alone(M, k) / M`` (bins of
equal mass) and the exact expectation for batches drawn from the 3,000 private digits with
the counts the bins actually hold of them (thresholds estimated from 2,000 public digits
are not exact quantiles of the private ones).

1. Batch size ``M`` 8..512 against bins ``k`` 16..1024, the cumulative and the sparse
   block, float32 and float64.
2. Secure aggregation: ``K`` clients of 8 digits each (1..100), the server decodes only
   their average (``defences.secure_aggregation``), 1,024 bins.
3. Class fishing (Wen et al. 2022) on the plain network, the target class cycling through
   the ten digits: the fraction of batches where the one digit of the target class comes
   back marked and >= 100 dB, against ``M`` 8..512, the fraction where the class occurs
   exactly once, and the closed form ``fishing.expected_isolated(M, 10)``.
4. Where ``breaching`` is installed (``pip install --no-deps breaching`` plus
   ``hydra-core omegaconf antlr4-python3-runtime``), its imprint block on the same digits
   (64 bins, batch 8, float32 and float64); skipped with a message otherwise.

The last line printed is one JSON object with every number.

    python benchmarks/malicious.py                  # 10 trials per setting (about 4 minutes)
    python benchmarks/malicious.py --quick          # 2 trials, a small grid (seconds)
    python benchmarks/malicious.py --figure f.png   # also draw measured against expected
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from leakutils import capture, data, defences, metrics, models
from leakutils.attacks import fishing, imprint

PUBLIC = slice(3000, 5000)
PRIVATE = 3000


def _network(dtype):
    torch.manual_seed(0)
    return models.MLP((1, 28, 28), (256,), dtype=dtype)


def _batch(mnist, m: int, trial: int, dtype):
    g = torch.Generator().manual_seed(1000 * m + trial)
    idx = torch.randperm(PRIVATE, generator=g)[:m]
    return mnist.images[idx].to(dtype), mnist.labels[idx]


def _scored(rec, x) -> tuple[int, int, int]:
    """(marked, marked at >= 100 dB, marked below 60 dB), each marked image against the digit it matches."""
    sure = rec.determined.flatten(1).all(dim=1)
    if not bool(sure.any()):
        return 0, 0, 0
    psnr = metrics.compare(rec.images[sure], x.double()).psnr
    return int(sure.sum()), int((psnr >= 100).sum()), int((psnr < 60).sum())


def _alone(block, x) -> int:
    """Digits alone in a bin of the block, counted from the digits' own statistic."""
    which = block.bin_index(x)
    inside = (which >= 0) & (which < block.bins)
    counts = torch.bincount(which[inside], minlength=block.bins)
    return int((counts[which[inside]] == 1).sum())


def _expected_with_masses(mnist, block, n: int) -> float:
    """The expected fraction alone for batches of ``n`` drawn from the private digits, with the bins they fill.

    The closed form ``(1 - 1/k)^(n-1)`` assumes bins of equal mass; thresholds estimated from
    2,000 public digits give the 3,000 private ones bins of unequal counts ``n_j``. For a
    batch drawn without replacement from them, a digit of bin ``j`` is alone with
    probability ``C(N - n_j, n - 1) / C(N - 1, n - 1)``, so the expected fraction is the sum
    over bins of ``n_j / N`` times that.
    """
    which = block.bin_index(mnist.images[:PRIVATE])
    inside = which[(which >= 0) & (which < block.bins)]
    counts = torch.bincount(inside, minlength=block.bins).double()
    counts = counts[counts > 0]
    big_n = float(PRIVATE)
    rest = big_n - counts
    # log C(N - n_j, n - 1) - log C(N - 1, n - 1), zero where fewer than n - 1 digits are left
    left = (rest - n + 2).clamp_min(1.0)
    log_ratio = torch.lgamma(rest + 1) - torch.lgamma(left) + math.lgamma(big_n - n + 1) - math.lgamma(big_n)
    ratio = torch.where(rest >= n - 1, torch.exp(log_ratio), torch.zeros_like(rest))
    return float((counts / big_n * ratio).sum())


def _summary(n: int, marked, good, bad, alone, expected: float, seconds, with_masses: float) -> dict:
    total = n * len(marked)
    return {"recovered": sum(marked) / total, "at_least_100_db": sum(good) / total, "marked_below_60_db": sum(bad),
            "alone": sum(alone) / total, "expected_alone": expected / n, "expected_alone_bin_masses": with_masses,
            "recovered_equals_alone": all(a == b for a, b in zip(marked, alone)),
            "median_seconds": statistics.median(seconds)}


def imprint_setting(mnist, m: int, bins: int, dtype, sparse: bool, trials: int) -> dict:
    model = imprint.malicious_model(_network(dtype), mnist.images[PUBLIC].to(dtype), bins, sparse=sparse)
    marked, good, bad, alone, seconds = [], [], [], [], []
    for t in range(trials):
        x, y = _batch(mnist, m, t, dtype)
        update = capture.client_update(model, x, y)
        t0 = time.perf_counter()
        rec = imprint.reconstruct(model, update)
        seconds.append(time.perf_counter() - t0)
        k, g, b = _scored(rec, x)
        marked.append(k), good.append(g), bad.append(b), alone.append(_alone(model[0], x))
    return {"batch_size": m, "bins": bins, "dtype": str(dtype).removeprefix("torch."), "sparse": sparse,
            **_summary(m, marked, good, bad, alone, imprint.expected_alone(m, bins), seconds,
                       _expected_with_masses(mnist, model[0], m))}


def secagg_setting(mnist, clients: int, bins: int, trials: int, m: int = 8) -> dict:
    model = imprint.malicious_model(_network(torch.float64), mnist.images[PUBLIC], bins)
    n = clients * m
    marked, good, bad, alone, seconds = [], [], [], [], []
    for t in range(trials):
        x, y = _batch(mnist, n, t, torch.float64)
        # each client trains on its own 8 digits; the server decodes only the average
        aggregate = defences.secure_aggregation(defences.client_updates(model, x, y, clients))
        t0 = time.perf_counter()
        rec = imprint.reconstruct(model, aggregate)
        seconds.append(time.perf_counter() - t0)
        k, g, b = _scored(rec, x)
        marked.append(k), good.append(g), bad.append(b), alone.append(_alone(model[0], x))
    return {"clients": clients, "batch_per_client": m, "bins": bins,
            **_summary(n, marked, good, bad, alone, imprint.expected_alone(n, bins), seconds,
                       _expected_with_masses(mnist, model[0], n))}


def fishing_setting(mnist, m: int, trials: int) -> dict:
    net = _network(torch.float64)
    hit, wrong, isolated, marked, seconds = 0, 0, 0, 0, []
    for t in range(trials):
        x, y = _batch(mnist, m, t, torch.float64)
        # the server's target class, cycling through the ten digits
        target = t % 10
        fished = fishing.fish(net, target)
        update = capture.client_update(fished, x, y)
        t0 = time.perf_counter()
        rec = fishing.reconstruct(fished, update, target_class=target)
        seconds.append(time.perf_counter() - t0)
        isolated += int((y == target).sum()) == 1
        if rec.images.shape[0] and bool(rec.determined.all()):
            marked += 1
            psnr = float(metrics.compare(rec.images, x[y == target]).psnr.max())
            hit += psnr >= 100
            wrong += psnr < 60
    return {"batch_size": m, "target_recovered": hit / trials, "marked": marked / trials,
            "marked_below_60_db": wrong, "isolated": isolated / trials,
            "expected_isolated": fishing.expected_isolated(m, 10), "median_seconds": statistics.median(seconds)}


def breaching_side_by_side(mnist, trials: int, m: int = 8, bins: int = 64) -> dict:
    """breaching's own imprint block and attacker on the same digits, if it is installed.

    breaching places its thresholds at standard-normal quantiles, for data normalised so
    that the statistic is about N(0, 1): the digits are standardised by the public digits'
    mean brightness and its spread before they enter either block, and breaching's images
    are mapped back. Its attacker returns exactly ``M`` images (padding or trimming) and
    marks none: each is scored against the digit it matches.
    """
    try:
        import breaching
        from breaching.cases.malicious_modifications.imprint import ImprintBlock as BreachingBlock
        from omegaconf import OmegaConf
    except ImportError:
        print("breaching is not installed: side-by-side skipped (pip install --no-deps breaching "
              "hydra-core omegaconf antlr4-python3-runtime)")
        return {"skipped": "breaching not installed"}
    s = mnist.images[PUBLIC].flatten(1).mean(1)
    mu, sd = float(s.mean()), float(s.std())
    out = []
    for dtype in (torch.float32, torch.float64):
        cfg = breaching.get_attack_config("imprint")
        cfg.impl.dtype = "float" if dtype == torch.float32 else "double"
        theirs, ours, seconds = [], [], []
        for t in range(trials):
            x, y = _batch(mnist, m, t, dtype)
            z = (x - mu) / sd
            torch.manual_seed(0)
            model = torch.nn.Sequential(BreachingBlock((1, 28, 28), bins, linfunc="avg"), _network(dtype)).to(dtype)
            update = capture.client_update(model, z, y)
            names = [n for n, _ in model.named_parameters()]
            meta = OmegaConf.create(dict(shape=(1, 28, 28), modality="vision", mean=[mu], std=[sd]))
            payload = [dict(parameters=[p.detach() for p in model.parameters()], buffers=None, metadata=meta)]
            shared = [dict(gradients=[update.gradients[n] for n in names], buffers=None,
                           metadata=dict(num_data_points=m, labels=y, local_hyperparams=None))]
            secrets = {"ImprintBlock": dict(weight_idx=0, bias_idx=1, shape=(1, 28, 28), structure="cumulative")}
            attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg,
                                                        dict(dtype=dtype, device=torch.device("cpu")))
            t0 = time.perf_counter()
            rec, _ = attacker.reconstruct(payload, shared, secrets)
            seconds.append(time.perf_counter() - t0)
            theirs += metrics.compare((rec["data"].double() * sd + mu).clamp(0, 1), x.double()).psnr.tolist()
            # the course's attack on the course's block, same digits
            mine = imprint.malicious_model(_network(dtype), mnist.images[PUBLIC].to(dtype), bins)
            k, g, b = _scored(imprint.reconstruct(mine, capture.client_update(mine, x, y)), x)
            ours.append((k, g, b))
        n = m * trials
        out.append({"dtype": str(dtype).removeprefix("torch."), "batch_size": m, "bins": bins,
                    "breaching_returned": n, "breaching_at_least_100_db": sum(p >= 100 for p in theirs) / n,
                    "breaching_below_60_db": sum(p < 60 for p in theirs),
                    "breaching_median_psnr_db": statistics.median(theirs),
                    "breaching_median_seconds": statistics.median(seconds),
                    "ours_marked": sum(o[0] for o in ours) / n, "ours_at_least_100_db": sum(o[1] for o in ours) / n,
                    "ours_marked_below_60_db": sum(o[2] for o in ours)})
    return {"settings": out}


def _figure(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    rows = [r for r in result["imprint"] if r["dtype"] == "float64" and not r["sparse"]]
    for k in sorted({r["bins"] for r in rows}):
        r = sorted((r for r in rows if r["bins"] == k), key=lambda r: r["batch_size"])
        ms = [q["batch_size"] for q in r]
        line, = axes[0].plot(ms, [q["expected_alone"] for q in r], "-", label=f"{k} bins, closed form")
        axes[0].plot(ms, [q["expected_alone_bin_masses"] for q in r], "--", color=line.get_color())
        axes[0].plot(ms, [q["at_least_100_db"] for q in r], "o", color=line.get_color())
    axes[0].set(xscale="log", xlabel="batch size M", ylabel="fraction >= 100 dB",
                title="imprint (float64); dashed: the bins' counts")
    axes[0].legend(fontsize=7)
    s = result["secure_aggregation"]
    axes[1].plot([r["clients"] for r in s], [r["expected_alone"] for r in s], "-", label="closed form")
    axes[1].plot([r["clients"] for r in s], [r["expected_alone_bin_masses"] for r in s], "--",
                 label="with the bins' counts")
    axes[1].plot([r["clients"] for r in s], [r["at_least_100_db"] for r in s], "o", label="measured")
    axes[1].set(xscale="log", xlabel="clients K (8 digits each)", title="secure aggregation, 1,024 bins")
    axes[1].legend(fontsize=7)
    f = result["fishing"]
    axes[2].plot([r["batch_size"] for r in f], [r["expected_isolated"] for r in f], "-", label="expected")
    axes[2].plot([r["batch_size"] for r in f], [r["target_recovered"] for r in f], "o", label="measured")
    axes[2].set(xscale="log", xlabel="batch size M", ylabel="target recovered", title="class fishing")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials on a small grid")
    parser.add_argument("--trials", type=int, default=10, help="batches per setting")
    parser.add_argument("--figure", help="also save measured against expected to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(2)
    mnist = data.load("mnist", dtype=torch.float64)
    trials = 2 if args.quick else args.trials
    sizes = (8, 64) if args.quick else (8, 16, 32, 64, 128, 256, 512)
    bins = (16, 1024) if args.quick else (16, 64, 256, 1024)
    clients = (1, 10) if args.quick else (1, 2, 5, 10, 20, 50, 100)
    t0 = time.perf_counter()
    result = {"trials": trials, "imprint": [], "secure_aggregation": [], "fishing": []}
    for dtype in (torch.float64, torch.float32):
        for sparse in (False, True):
            for k in bins:
                for m in sizes:
                    row = imprint_setting(mnist, m, k, dtype, sparse, trials)
                    print(json.dumps(row))
                    result["imprint"].append(row)
    for c in clients:
        row = secagg_setting(mnist, c, 1024, trials)
        print(json.dumps(row))
        result["secure_aggregation"].append(row)
    for m in sizes:
        row = fishing_setting(mnist, m, max(trials, 2) * 5)
        print(json.dumps(row))
        result["fishing"].append(row)
    result["breaching"] = breaching_side_by_side(mnist, trials)
    result["seconds"] = time.perf_counter() - t0
    if args.figure:
        _figure(result, args.figure)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
