"""Benchmark of Chapter 4: ExAN reconstruction of whole batches against batch size and width.

Offline MNIST (the 5,000 shipped digits) through a fully connected ReLU network with one
hidden layer of N units (float64), at PyTorch's default initialisation ("random") and after
a few hundred SGD steps on digits that are never attacked ("trained"). For every batch size
M, disjoint batches of the held-out digits are captured (FedSGD: one averaged gradient) and
attacked with ``leakutils.attacks.exan.reconstruct``, which does not know M.

Per (state, N, M) the last printed line (one JSON object) gives: ``recovered``, the fraction
of the batch's samples rebuilt with PSNR >= 100 dB (after Hungarian matching); the same for
one pass without peeling (``recovered_one_pass``); the paper's procedure alone
(``recovered_paper``: groups of 2 ExANs, no forward check, no peeling);
``label_accuracy`` (multiset); ``batch_size_correct`` (fraction of batches whose size the
attack counted right); the measured mean ExANs per sample, the activation probability p and
the estimate ``N p (1-p)^(M-1)``; the fraction of samples with at least one ExAN (the most any
ExAN attack can get); the mean seconds per batch of the attack; and ``float32``: the same
batches from float32 clients (a float32 copy of the network), the fractions of the batch
marked recovered at >= 60 and >= 100 dB against the float64 truth, the samples marked
recovered below 60 dB (``marked_wrong``) and the batches where more samples were marked than
the batch size the attack read (``batches_over_batch_size``).

    python benchmarks/exan.py                     # the full grid (a few minutes)
    python benchmarks/exan.py --widths 1024 --batch-sizes 8 --samples 16   # quick
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from tqdm import tqdm

from leakutils import capture, data, metrics, models
from leakutils.attacks import exan

EXACT_DB = 100.0
TRAIN = slice(0, 3000)  # digits used to train the "trained" networks, never attacked
ATTACK = slice(3000, 5000)  # digits the clients hold


def make_model(width: int, state: str, train_steps: int, ds, seed: int = 0) -> torch.nn.Module:
    """One-hidden-layer ReLU MLP of ``width`` units, float64, at init or after SGD on TRAIN digits."""
    torch.manual_seed(seed)
    model = models.MLP((1, 28, 28), (width,))
    if state == "trained":
        x, y = ds.images[TRAIN].float(), ds.labels[TRAIN]
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(train_steps):
            idx = torch.randint(0, x.shape[0], (64,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.double()


def float32_client(model32, x, y, M: int) -> dict:
    """The same batch from a float32 client: marked samples at >= 60 / >= 100 dB against the float64 truth."""
    rec = exan.reconstruct(model32, capture.client_update(model32, x.float(), y))
    good = rec.diagnostics["recovered"]
    psnr = metrics.compare(rec.images[good], x).psnr if good.any() else torch.zeros(0)
    return {"marked": int(good.sum()), "at_least_60": int((psnr >= 60).sum()), "at_least_100": int((psnr >= EXACT_DB).sum()),
            "wrong": int((psnr < 60).sum()), "over_batch_size": int(int(good.sum()) > rec.diagnostics["batch_size"])}


def cell(model, ds, width: int, M: int, samples: int) -> dict:
    """Attack ``max(1, samples // M)`` disjoint batches of M held-out digits (float64 clients, then float32)."""
    x_all, y_all = ds.images[ATTACK], ds.labels[ATTACK]
    batches = max(1, samples // M)
    model32 = copy.deepcopy(model).float()
    f32 = {"marked": 0, "at_least_60": 0, "at_least_100": 0, "wrong": 0, "over_batch_size": 0}
    total = ok = ok_one = ok_paper = labels_hit = size_ok = with_exan = 0
    exans, ps, seconds = [], [], []
    for b in range(batches):
        x, y = x_all[b * M:(b + 1) * M], y_all[b * M:(b + 1) * M]
        up = capture.client_update(model, x, y)
        truth = exan.count_exans(model, x)["act1"]
        exans.append(truth["exans"].double())
        ps.append(truth["p"])
        with_exan += int((truth["exans"] > 0).sum())
        t0 = time.perf_counter()
        rec = exan.reconstruct(model, up)
        seconds.append(time.perf_counter() - t0)
        one_pass = exan.reconstruct(model, up, peel=False)
        paper = exan.reconstruct(model, up, verify=False, peel=False)
        for key, value in float32_client(model32, x, y, M).items():
            f32[key] += value
        total += M
        for r, key in ((rec, "checked"), (one_pass, "one_pass"), (paper, "paper")):
            good = r.diagnostics["recovered"]
            n_ok = 0
            if good.any():
                s = metrics.compare(r.images[good], x)
                n_ok = int((s.psnr >= EXACT_DB).sum())
            if key == "checked":
                ok += n_ok
                labels_hit += round(metrics.label_accuracy(rec.labels, y) * M) if rec.labels.numel() else 0
                size_ok += int(rec.diagnostics["batch_size"] == M)
            elif key == "one_pass":
                ok_one += n_ok
            else:
                ok_paper += n_ok
    p = sum(ps) / len(ps)
    return {
        "width": width, "batch_size": M, "batches": batches, "samples": total,
        "recovered": ok / total, "recovered_one_pass": ok_one / total, "recovered_paper": ok_paper / total,
        "label_accuracy": labels_hit / total, "batch_size_correct": size_ok / batches,
        "with_exan": with_exan / total,
        "exans_mean": float(torch.cat(exans).mean()), "p": p,
        "exans_expected": exan.expected_exans(width, min(max(p, 0.0), 1.0), M),
        "seconds": sum(seconds) / len(seconds),
        "float32": {"at_least_60_db": f32["at_least_60"] / total, "at_least_100_db": f32["at_least_100"] / total,
                    "marked_wrong": f32["wrong"], "batches_over_batch_size": f32["over_batch_size"]},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--states", nargs="+", default=["random", "trained"], choices=["random", "trained"])
    parser.add_argument("--samples", type=int, default=64, help="digits attacked per cell (default 64)")
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps of the trained state")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if min(args.widths + args.batch_sizes) < 1 or args.samples < 1 or args.train_steps < 0:
        parser.error("sizes must be positive")
    if max(args.batch_sizes) > ATTACK.stop - ATTACK.start:
        parser.error("batch sizes above 2000 exceed the held-out digits")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ds = data.load("mnist", dtype=torch.float64)
    rows = []
    grid = [(s, w) for s in args.states for w in args.widths]
    for state, width in tqdm(grid, desc="networks"):
        model = make_model(width, state, args.train_steps, ds)
        for M in args.batch_sizes:
            r = cell(model, ds, width, M, args.samples)
            r["state"] = state
            rows.append(r)
            print(f"{state:7s} N={width:5d} M={M:3d}  recovered {r['recovered']:6.1%} (one pass {r['recovered_one_pass']:6.1%}, "
                  f"paper {r['recovered_paper']:6.1%}, with an ExAN {r['with_exan']:6.1%})  labels {r['label_accuracy']:6.1%}  "
                  f"size right {r['batch_size_correct']:5.0%}  ExANs {r['exans_mean']:7.1f} "
                  f"(estimate {r['exans_expected']:7.1f}, p {r['p']:.2f})  {r['seconds']:.2f} s  float32 >=100 dB "
                  f"{r['float32']['at_least_100_db']:6.1%} (wrong {r['float32']['marked_wrong']})", flush=True)

    def find(state, width, M):
        return next((r for r in rows if (r["state"], r["width"], r["batch_size"]) == (state, width, M)), None)

    goals = {}
    for state in args.states:
        a, b = find(state, 1024, 8), find(state, 4096, 32)
        goals[state] = {"batch8_width1024_all": None if a is None else a["recovered"] == 1.0,
                        "batch32_width4096_90pct": None if b is None else b["recovered"] >= 0.9}
    result = {"settings": {"data": "mnist (offline, 5000 digits; attacked: 3000-4999)", "dtype": "float64",
                           "network": "MLP 784-N-10 ReLU", "samples_per_cell": args.samples,
                           "train_steps": args.train_steps, "exact_db": EXACT_DB},
              "results": rows, "goals": goals, "seconds": time.perf_counter() - t0}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
