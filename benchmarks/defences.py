"""Benchmark of Chapter 7: every defence at three strengths against the best attack, and its price.

Privacy: for each data set, the first ``n`` images (offline MNIST: the 1,000 test digits of
``utility.mnist_split``, never trained on; the 32x32 colour patches) are sent by clients
through a fully connected ReLU network with one hidden layer of 256 units (PyTorch's
default initialisation, seed 0, float64; the network of Chapters 1 and 4), one image per
client unless the defence is the batch size (M images) or secure aggregation (K clients).
Every defence of ``leakutils.defences.registry.DEFENCES`` at each of its strengths defends
each client's update, and every attack that applies (bias ratio, the ratio of the
surviving entries, ExAN, Inverting Gradients started from the analytic estimate) attacks it
(``matrix.run_matrix``). Inverting
Gradients is costly: it runs on the first ``--ig-images`` images of each setting only
(default 8, with ``--ig-iterations`` 100 steps each: its whole step-size schedule,
shortened), the analytic attacks on all ``n``. With ``--patches-model lenet`` the patches
go through DLG's sigmoid LeNet instead and R-CONV replaces the bias ratio and ExAN
(slower: seconds per image under most defences).

Utility: for every defence and strength, a float32 copy of the same MNIST network is
trained with the defence on every step (plain SGD, lr 0.1, batch 64, ``--epochs`` epochs on
the 4,000 training digits; DP-SGD in Opacus' loop with Poisson sampling) and its accuracy
on the 1,000 test digits measured (``defences.registry.train_under``); DP-SGD's epsilon for
the whole run (delta 1e-5) beside the one step's epsilon the attacked client spends.

The table gives, per data set, defence and strength, the median PSNR of every attack (dB,
data range 1, "ref" when it refused every update), the best attack with its fractions of
images at >= 30 and >= 100 dB and median SSIM, the accuracy and epsilon. Then, per defence,
the weakest strength at which the best attack falls below 20 dB median PSNR, with the
accuracy there. The last line printed is one JSON object with all of it.

    python benchmarks/defences.py             # 100 images per setting, both data sets
    python benchmarks/defences.py --quick     # 4 digits, 3 defences, 1 epoch on 1000 digits (a minute)
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
from tqdm import tqdm

from leakutils import data, models
from leakutils.defences import matrix, registry, utility
from leakutils.defences.figures import strength_label as label

DATASETS = ("mnist", "patches")
QUICK = {"n": 4, "datasets": ["mnist"], "defences": ["none", "noise", "quantise"], "ig_images": 1,
         "ig_iterations": 10, "epochs": 1, "train_size": 1000}


def _clean(value):
    """JSON-safe: infinities and NaN as strings, floats rounded, containers recursed."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return round(value, 4)
    return value


def attacked(name: str, n: int, patches_model: str):
    """The model, images and labels of one data set's clients (float64)."""
    if name == "mnist":
        _, test = utility.mnist_split()
        images, labels = test.images[:n].double(), test.labels[:n]
    else:
        ds = data.load(name, n, dtype=torch.float64)
        images, labels = ds.images, ds.labels
    if name == "patches" and patches_model == "lenet":
        model = models.init_weights(models.LeNet(3, 32, activation="sigmoid", dtype=torch.float64), "default",
                                    seed=0)
    else:
        torch.manual_seed(0)
        model = models.MLP(tuple(images.shape[1:]), (256,), num_classes=10, dtype=torch.float64)
    return model, images, labels


def utility_table(names, strengths, epochs: int, train_size: int) -> dict:
    """Accuracy (and DP-SGD's epsilon) of the MNIST network trained under each defence and strength."""
    train, test = utility.mnist_split()
    train = (train.images[:train_size], train.labels[:train_size])
    torch.manual_seed(0)
    model = models.MLP((1, 28, 28), (256,))
    out = {"untrained": {"accuracy": utility.accuracy(model, test)}}
    plan = [(d, s) for d in names for s in strengths[d]]
    for d, s in tqdm(plan, desc="utility", leave=False):
        t0 = time.perf_counter()
        net, eps = registry.train_under(d, s, model, train, epochs=epochs)
        out.setdefault(d, {})[label(s)] = {"accuracy": utility.accuracy(net, test), "epsilon": eps,
                                           "seconds": time.perf_counter() - t0}
    return out


def _cell(row) -> str:
    if row["psnr_median"] is None:
        return "   ref"
    return f"{row['psnr_median']:6.1f}"


def print_table(name: str, rows: list, acc: dict) -> None:
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    print(f"\n{name}: median PSNR (dB) per attack; the best with its fractions >= 30 / >= 100 dB and SSIM; "
          f"MNIST accuracy and epsilon (one step / training run)")
    print(f"{'defence':19s} {'strength':>8s} " + " ".join(f"{a[:10]:>10s}" for a in attacks)
          + f" {'best':>10s} {'>=30':>5s} {'>=100':>5s} {'SSIM':>5s} {'acc':>6s} {'epsilon':>17s}")
    for best in matrix.best_rows(rows):
        d, s = best["defence"], best["strength"]
        cells = [_cell(r) for r in rows if r["defence"] == d and r["strength"] == s]
        u = acc.get(d, {}).get(label(s), {})
        eps = ""
        if best["epsilon"] is not None:
            eps = f"{best['epsilon']:.3g}/{u.get('epsilon', float('nan')):.3g}"
        fr = (lambda k: "  -  " if best[k] is None else f"{best[k]:5.0%}")
        ssim = "  -  " if best["ssim_median"] is None else f"{best['ssim_median']:5.2f}"
        accuracy = f"{u['accuracy']:6.1%}" if "accuracy" in u else "   -  "
        print(f"{d:19s} {label(s):>8s} " + " ".join(f"{c:>10s}" for c in cells)
              + f" {str(best['attack']):>10s} {fr('psnr_ge_30')} {fr('psnr_ge_100')} {ssim} {accuracy} {eps:>17s}")


def headline(rows: list, acc: dict) -> dict:
    out = {}
    for d, row in matrix.breaking_points(rows).items():
        if row is None:
            out[d] = None
            continue
        u = acc.get(d, {}).get(label(row["strength"]), {})
        out[d] = {"strength": row["strength"], "best_attack": row["attack"], "psnr_median": row["psnr_median"],
                  "accuracy": u.get("accuracy"), "epsilon_run": u.get("epsilon")}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images attacked per setting (default 100)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--defences", nargs="+", default=list(registry.DEFENCES), choices=list(registry.DEFENCES))
    parser.add_argument("--ig-images", type=int, default=8, help="images per setting for Inverting Gradients")
    parser.add_argument("--ig-iterations", type=int, default=100, help="Inverting Gradients' steps")
    parser.add_argument("--epochs", type=int, default=3, help="utility training epochs")
    parser.add_argument("--train-size", type=int, default=utility.TRAIN_SIZE,
                        help="training digits of the utility runs (default all 4000)")
    parser.add_argument("--patches-model", choices=["mlp", "lenet"], default="mlp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 digits, none/noise/quantise, short runs (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if min(args.n, args.ig_images, args.ig_iterations, args.epochs, args.threads, args.train_size) < 1:
        parser.error("counts must be positive")
    if args.train_size > utility.TRAIN_SIZE:
        parser.error(f"--train-size is at most {utility.TRAIN_SIZE}")
    # a strength that puts more images in one update than n are given is left out (e.g. K = 100 for n < 100)
    strengths = {d: tuple(s for s in registry.DEFENCES[d].strengths
                          if registry.DEFENCES[d].images_per_update(s) <= args.n) for d in args.defences}
    for d in args.defences:
        left_out = [label(s) for s in registry.DEFENCES[d].strengths if s not in strengths[d]]
        if left_out:
            print(f"{d}: strengths {left_out} need more than n = {args.n} images per update; left out")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    acc = utility_table(args.defences, strengths, args.epochs, args.train_size)
    results, best, heads, seconds = {}, {}, {}, {"utility": time.perf_counter() - t0}
    for name in args.datasets:
        t1 = time.perf_counter()
        model, images, labels = attacked(name, args.n, args.patches_model)
        rows = []
        for d in tqdm(args.defences, desc=name, leave=False):
            rows += matrix.run_matrix(model, images, labels, defences=[d], strengths=strengths,
                                      limits={"inverting": args.ig_images},
                                      options={"inverting": {"iterations": args.ig_iterations}})
        print_table(name, rows, acc)
        results[name], best[name], heads[name] = rows, matrix.best_rows(rows), headline(rows, acc)
        seconds[name] = time.perf_counter() - t1
        print(f"\n{name}: the weakest strength at which the best attack falls below 20 dB (median PSNR)")
        for d, h in heads[name].items():
            if h is None:
                print(f"  {d:19s} never: the best attack stays at or above 20 dB at every strength")
            else:
                a = "-" if h["accuracy"] is None else f"{h['accuracy']:.1%}"
                print(f"  {d:19s} {label(h['strength']):>8s}  (best: {h['best_attack']}, "
                      f"{'refused' if h['psnr_median'] is None else format(h['psnr_median'], '.1f') + ' dB'}), "
                      f"accuracy {a}")
    result = {"settings": {"n": args.n, "datasets": args.datasets, "network": "MLP in-256-10 ReLU, float64, seed 0"
                           + (" (patches: sigmoid LeNet)" if args.patches_model == "lenet" else ""),
                           "attacked": "mnist: the first n test digits of mnist_split(0); patches: the first n",
                           "inverting_gradients": f"first {args.ig_images} images of each setting, "
                                                  f"{args.ig_iterations} iterations",
                           "utility": f"MNIST MLP 784-256-10 float32, {args.epochs} epochs, batch 64, lr "
                                      f"{utility.LR}, {args.train_size} train / 1000 test digits",
                           "clip_norm": registry.CLIP_NORM, "quick": args.quick,
                           "strengths": {d: [label(s) for s in strengths[d]] for d in args.defences}},
              "results": results, "best": best, "utility": acc, "headline": heads,
              "seconds": {**seconds, "total": time.perf_counter() - t0}}
    print(json.dumps(_clean(result)))
    return result


if __name__ == "__main__":
    main()
