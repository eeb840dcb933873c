"""Benchmark of Chapter 8: what a curious FedAvg server reads back from clients' weights.

Each client holds a batch of ``M`` offline MNIST test digits (the 1,000 of
``defences.utility.mnist_split``; client ``c`` takes digits ``c*M .. c*M + M - 1``), trains
the 784-256-10 ReLU network of Chapters 1, 4 and 7 (PyTorch's default initialisation, seed
0) for ``T`` full-batch SGD steps at learning rate 0.1 in float32 or float64, and returns
its weights. The server reads the pseudo-gradient ``(w_sent - w_returned) / lr``
(``defences.fedavg_update``) and runs what ``leakutils.fl.CuriousStrategy`` runs by default:
``attacks.fedavg.analytic`` (ExAN, else the bias ratio), with the replay check
``attacks.fedavg.certify`` after more than one step. Per setting: the fraction of the
clients' digits marked recovered, the fraction at >= 60 and >= 100 dB (each true digit
scored against its matched reconstruction, a digit the attack did not return against a
black image), the median PSNR, and the median seconds per attacked client.

For batches of 8 trained in minibatches of 2 or 4 for 1, 2 or 5 epochs, in an order the
server does not know, the analytic attacks' own marks: the fraction recovered, how many
marked samples are below 60 dB (must be none), and the median PSNR.

For the batches of 8 the replay attack ``attacks.fedavg.reconstruct`` (Inverting Gradients
through the ``T`` simulated steps; Dimitrov et al. 2022) and the same search assuming one
step run on the first ``--replay-clients`` clients with ``--iterations`` Adam steps, both
given the labels.

The last line printed is one JSON object with every number.

    python benchmarks/fedavg.py            # 50 clients per setting, replay on 5 (about 5 minutes)
    python benchmarks/fedavg.py --quick    # 3 clients, replay on 1 with 20 steps (seconds)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from leakutils import defences, metrics, models
from leakutils.attacks import fedavg
from leakutils.defences import utility

LR = 0.1


def _network(dtype):
    torch.manual_seed(0)
    return models.MLP((1, 28, 28), (256,), dtype=dtype)


def _psnr_per_digit(rec, x) -> list[float]:
    """Each true digit against its matched reconstruction; one not returned against black."""
    got = torch.nan_to_num(rec.images.detach().double()).clamp(0, 1)
    missing = got.new_zeros(max(0, len(x) - len(got)), *got.shape[1:])
    return metrics.compare(torch.cat([got, missing]), x.double()).psnr.tolist()


def analytic_setting(digits, dtype, m: int, steps: int, clients: int) -> dict:
    psnr, recovered, seconds = [], 0, []
    for c in range(clients):
        x = digits.images[c * m:(c + 1) * m].to(dtype)
        y = digits.labels[c * m:(c + 1) * m]
        net = _network(dtype)
        update = defences.fedavg_update(net, x, y, lr=LR, local_steps=steps)
        t0 = time.perf_counter()
        rec = fedavg.analytic(net, update)
        if steps > 1:
            rec = fedavg.certify(net, update, rec, lr=LR, local_steps=steps)
        seconds.append(time.perf_counter() - t0)
        recovered += int(rec.determined.flatten(1).all(dim=1).sum())
        psnr += _psnr_per_digit(rec, x)
    n = clients * m
    return {"digits": n, "recovered": recovered / n,
            "at_least_60_db": sum(p >= 60 for p in psnr) / n, "at_least_100_db": sum(p >= 100 for p in psnr) / n,
            "median_psnr_db": statistics.median(psnr), "median_seconds": statistics.median(seconds)}


def epochs_setting(digits, local_batch: int, epochs: int, clients: int, m: int = 8) -> dict:
    """Minibatch epochs (order unknown to the server): what the analytic attacks still mark, and whether it is right."""
    psnr, recovered, wrong = [], 0, 0
    for c in range(clients):
        x, y = digits.images[c * m:(c + 1) * m].double(), digits.labels[c * m:(c + 1) * m]
        net = _network(torch.float64)
        update = defences.fedavg_update(net, x, y, lr=LR, local_batch=local_batch, epochs=epochs, seed=c)
        rec = fedavg.analytic(net, update)
        whole = rec.determined.flatten(1).all(dim=1)
        recovered += int(whole.sum())
        if whole.any():
            marked = metrics.compare(rec.images[whole], x).psnr
            wrong += int((marked < 60).sum())
        psnr += _psnr_per_digit(rec, x)
    n = clients * m
    return {"digits": n, "local_batch": local_batch, "epochs": epochs, "steps": epochs * -(-m // local_batch),
            "recovered": recovered / n, "marked_below_60_db": wrong, "median_psnr_db": statistics.median(psnr)}


def replay_setting(digits, steps: int, clients: int, iterations: int, m: int = 8) -> dict:
    out = {"replay": [], "one_step_assumed": [], "seconds": []}
    for c in range(clients):
        x, y = digits.images[c * m:(c + 1) * m].double(), digits.labels[c * m:(c + 1) * m]
        net = _network(torch.float64)
        update = defences.fedavg_update(net, x, y, lr=LR, local_steps=steps)
        t0 = time.perf_counter()
        rep = fedavg.reconstruct(net, update, lr=LR, local_steps=steps, iterations=iterations, labels=y)
        out["seconds"].append(time.perf_counter() - t0)
        one = fedavg.reconstruct(net, update, lr=LR, local_steps=1, iterations=iterations, labels=y)
        out["replay"] += _psnr_per_digit(rep, x)
        out["one_step_assumed"] += _psnr_per_digit(one, x)
    return {"digits": clients * m, "replay_median_psnr_db": statistics.median(out["replay"]),
            "one_step_assumed_median_psnr_db": statistics.median(out["one_step_assumed"]),
            "replay_median_seconds": statistics.median(out["seconds"])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="clients per setting (batch 8 uses 8 digits each)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--replay-clients", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="3 clients, replay on 1 client with 20 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.replay_clients, args.iterations = 3, 1, 20
    if args.clients * 8 > 1000:
        parser.error("--clients must be at most 125: the test set holds 1,000 digits")
    _, digits = utility.mnist_split()
    result = {"settings": [], "replay": []}
    print(f"{'dtype':8s} {'batch':>5s} {'steps':>5s} {'recovered':>9s} {'>=60dB':>7s} {'>=100dB':>7s} "
          f"{'median PSNR':>11s} {'s/client':>8s}")
    for dtype in (torch.float32, torch.float64):
        for m in (1, 8):
            for steps in args.steps:
                row = analytic_setting(digits, dtype, m, steps, args.clients)
                row.update(dtype=str(dtype).replace("torch.", ""), batch_size=m, local_steps=steps)
                result["settings"].append(row)
                print(f"{row['dtype']:8s} {m:5d} {steps:5d} {row['recovered']:9.0%} {row['at_least_60_db']:7.0%} "
                      f"{row['at_least_100_db']:7.0%} {row['median_psnr_db']:9.1f} dB {row['median_seconds']:8.3f}")
    print("\nbatch of 8, float64, minibatch epochs in an order the server does not know")
    result["epochs"] = []
    for local_batch in (2, 4):
        for epochs in (1, 2, 5):
            row = epochs_setting(digits, local_batch, epochs, args.clients)
            result["epochs"].append(row)
            print(f"minibatch {local_batch}, {epochs} epoch(s) ({row['steps']} steps): recovered "
                  f"{row['recovered']:.0%} (marked below 60 dB: {row['marked_below_60_db']}), median "
                  f"{row['median_psnr_db']:.1f} dB")
    print(f"\nbatch of 8, float64, optimisation on {args.replay_clients} client(s), {args.iterations} steps")
    for steps in args.steps:
        row = replay_setting(digits, steps, args.replay_clients, args.iterations)
        row["local_steps"] = steps
        result["replay"].append(row)
        print(f"T={steps:<3d} replay {row['replay_median_psnr_db']:6.1f} dB   one step assumed "
              f"{row['one_step_assumed_median_psnr_db']:6.1f} dB   {row['replay_median_seconds']:.1f} s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
