"""Benchmark of Chapter 5: model inversion with a shadow model and a transposed-CNN inverse model.

The offline protocol: the 5,000 shipped MNIST digits, resized to 32x32, split into disjoint
sets: target-train (2,000), shadow-train (2,000), shadow-validation (500) and attack-test
(500). The target and the shadow (the seed's classifier, narrow channels by default) are
trained on their own halves; the attacker trains inverse TCNNs on the shadow's features of
the shadow-train images and tests them on the target's output vectors for the attack-test
images. The last printed line is one JSON object with, per input combination (O, A, X and
their sums), the SSIM (11x11 Gaussian window, scikit-image) and MSE against the originals,
mean and std over the seeds; the baselines (the class-average image of the predicted class,
and X~ alone); the rounding and top-k results with the class-average distance and the
identity score that show the collapse; accuracies and agreement; and the wall time.

    python benchmarks/inversion.py                 # 3 seeds, about 30 minutes on 2 cores
    python benchmarks/inversion.py --quick         # a smoke test of the whole pipeline
    python benchmarks/inversion.py --sections topk # only the top-k truncation
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from leakutils import data, inversion as inv, metrics


def scores(rec: torch.Tensor, truth: torch.Tensor) -> dict:
    """Mean SSIM (Gaussian window) and MSE of a batch of reconstructions."""
    return {"ssim": float(metrics.ssim(rec.double(), truth.double(), gaussian=True).mean()),
            "mse": float(metrics.mse(rec.double(), truth.double()).mean())}


def summary(runs: list[dict]) -> dict:
    out = {}
    for key in runs[0]:
        vals = [r[key] for r in runs]
        out[key] = statistics.fmean(vals)
        out[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument("--inverse-epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100, help="X~ optimisation steps (the seed: 400)")
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 5, 3, 1])
    parser.add_argument("--decimals", type=int, nargs="+", default=[1, 0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to test the pipeline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sections", nargs="+", choices=("main", "topk"), default=["main", "topk"],
                        help="main: every input combination, the unscaled O and rounding; topk: top-k "
                             "truncation (each runs alone in about half the time)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    sizes = {"target": 2000, "shadow": 2000, "val": 500, "test": 500}
    if args.quick:
        sizes = {"target": 300, "shadow": 300, "val": 50, "test": 50}
        args.seeds, args.classifier_epochs, args.inverse_epochs, args.steps = 2, 2, 2, 5
        args.ks, args.decimals = [10, 1], [1]
    ds = data.load("mnist", size=32)
    x, y = ds.images.float(), ds.labels
    sp = inv.disjoint_splits(len(x), sizes, seed=0)
    xs, ys, xt, yt = x[sp["shadow"]], y[sp["shadow"]], x[sp["test"]], y[sp["test"]]

    torch.manual_seed(0)
    target = inv.Classifier()
    inv.train_classifier(target, x[sp["target"]], y[sp["target"]], epochs=args.classifier_epochs, seed=0)
    torch.manual_seed(1)
    shadow = inv.Classifier()
    inv.train_classifier(shadow, xs, ys, epochs=args.classifier_epochs, seed=1)
    pred_t, pred_s = inv.outputs(target, xt).argmax(1), inv.outputs(shadow, xt).argmax(1)
    models = {"target_accuracy": float((pred_t == yt).double().mean()),
              "shadow_accuracy": float((pred_s == yt).double().mean()),
              "shadow_val_accuracy": inv.accuracy(shadow, x[sp["val"]], y[sp["val"]]),
              "agreement": float((pred_t == pred_s).double().mean())}
    print(models, flush=True)
    avg = inv.class_averages(xs, ys)

    parts = inv.Lab(target, shadow, avg, steps=args.steps).parts

    o_s, o_t = inv.outputs(shadow, xs), inv.outputs(target, xt)
    train, test = parts(o_s, None), parts(o_t, None)
    scaler = inv.FeatureScaler(train)
    baselines = {"class_average": scores(avg[o_t.argmax(1)], xt), "x_tilde_alone": scores(test["X"], xt)}
    print(baselines, flush=True)

    def fit(combo, train_parts, seed, sc):
        f = inv.features(train_parts, combo, sc)
        torch.manual_seed(seed)
        tc = inv.InverseTCNN(f.shape[1])
        inv.train_inverse(tc, f, xs, epochs=args.inverse_epochs, seed=seed)
        return tc

    rq1, kept, rounding = {}, {}, {}
    if "main" in args.sections:
        for combo in inv.COMBINATIONS:
            runs = []
            for seed in range(args.seeds):
                tc = fit(combo, train, seed, scaler)
                runs.append(scores(inv.invert(tc, inv.features(test, combo, scaler)), xt))
                if combo in ("O", "X") and seed == 0:
                    kept[combo] = tc
            rq1[combo] = summary(runs)
            print(combo, rq1[combo], flush=True)
        runs = []
        for seed in range(args.seeds):
            tc = fit("O", train, seed, None)
            runs.append(scores(inv.invert(tc, inv.features(test, "O")), xt))
        rq1["O (unscaled)"] = summary(runs)
        print("O (unscaled)", rq1["O (unscaled)"], flush=True)

        for d in args.decimals:
            o_r = inv.round_outputs(o_t, d)
            p_r = parts(o_r, None)
            rounding[str(d)] = {c: scores(inv.invert(kept[c], inv.features(p_r, c, scaler)), xt) for c in ("O", "X")}
            print("round", d, rounding[str(d)], flush=True)

    truncation = {}
    if "topk" in args.sections:
        for k in args.ks:
            # the kept set travels with the truncated vectors (a kept logit can be below the zeros)
            tr_k, te_k = (train, test) if k == o_s.shape[1] else \
                tuple(parts(t, k, kept) for t, kept in (inv.top_k(o, k, return_mask=True) for o in (o_s, o_t)))
            sc_k = inv.FeatureScaler(tr_k)
            res = {}
            for combo in ("O", "X"):
                runs, ident, dist = [], [], []
                for seed in range(args.seeds):
                    tc = fit(combo, tr_k, seed, sc_k)
                    rec = inv.invert(tc, inv.features(te_k, combo, sc_k))
                    runs.append(scores(rec, xt))
                    ident.append(inv.identity_score(rec, xt, yt))
                    dist.append(float(metrics.mse(rec.double(), avg[o_t.argmax(1)].double()).mean()))
                res[combo] = summary(runs)
                res[combo].update(identity=statistics.fmean(ident), class_average_mse=statistics.fmean(dist))
            truncation[str(k)] = res
            print("top", k, res, flush=True)
    originals = {"identity": inv.identity_score(xt, xt, yt),
                 "class_average_identity": inv.identity_score(avg[o_t.argmax(1)], xt, yt)}

    goals = {}
    if rq1:
        goals = {c: rq1[c]["ssim"] > inv.SEED_RESULTS[c]["ssim"] for c in inv.COMBINATIONS}
        goals["above_class_average"] = {c: rq1[c]["ssim"] > baselines["class_average"]["ssim"]
                                        for c in inv.COMBINATIONS}
        goals["x_beats_o"] = rq1["X"]["ssim"] > rq1["O"]["ssim"]
    result = {"settings": {"sizes": sizes, "seeds": args.seeds, "classifier_epochs": args.classifier_epochs,
                           "inverse_epochs": args.inverse_epochs, "x_tilde_steps": args.steps,
                           "channels": [16, 32, 64], "tcnn_widths": [64, 32, 16],
                           "ssim": "11x11 Gaussian window, sigma 1.5 (scikit-image)"},
              "models": models, "rq1": rq1, "baselines": baselines, "rounding": rounding,
              "truncation": truncation, "reference": originals, "seed_results": inv.SEED_RESULTS,
              "goals": goals, "seconds": time.perf_counter() - t_start}
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
