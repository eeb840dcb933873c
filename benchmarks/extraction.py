"""Benchmark of Chapter 6: learned (meta-model) against exact extraction of a black box's weights.

Seed 004's setting on the shipped MNIST digits: 784-64-10 ReLU networks, each trained from
its own seed with Adam 1e-3 in batches of 100. The attacker's white-box networks train on
digits 0-1999, the victims' on digits 2000-3999; the query set is digits 4000-4099 (the
attacker's), and digits 4100-4999 are held out to score accuracy and agreement.

Printed last, as one JSON object:

- ``baselines``: seed 004's untrained network (a fresh initialisation), the population
  mean and the canonical mean (the mean after putting every white-box network's units in
  one order), each with AAE, AAPE (denominator floored at 1e-3), accuracy difference, and
  AAE / AAPE after aligning hidden units;
- ``metamodel``: the same for the meta-model trained on weights only, with the seed's
  detached similarity loss (no gradient: identical to weights only), with the similarity
  loss in the graph, and with it on targets in the canonical order;
- ``exact``: exact extraction of victim networks: queries, worst-case weight error after
  aligning units, agreement (top-1) and largest logit error on the held-out digits;
- ``goals``: the meta-model with the similarity loss beats the untrained baseline on all three
  metrics; exact extraction reaches worst-case error < 1e-6 and 100% agreement;
- ``seconds``.

    python benchmarks/extraction.py            # 784-64-10, 1,000 white-box networks (~16 min on 2 cores)
    python benchmarks/extraction.py --quick    # 784-16-10, 60 networks, to test the pipeline
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from leakutils import data, extraction as ex, metamodel as mm


def row(pred: torch.Tensor, truth: torch.Tensor, test, sizes) -> dict:
    sc = mm.scores(pred, truth, *test, sizes)
    return {k: sc[k] for k in ("aae", "aape", "accuracy_difference", "accuracy_pred", "aae_aligned", "aape_aligned")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--white-box", type=int, default=1000, help="white-box networks (the meta-model's data)")
    parser.add_argument("--victims", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of every network")
    parser.add_argument("--meta-epochs", type=int, default=40)
    parser.add_argument("--similarity", type=float, default=10.0)
    parser.add_argument("--extract", type=int, default=10, help="victim networks extracted exactly")
    parser.add_argument("--lines", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to test the pipeline")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.white_box, args.victims, args.meta_epochs, args.extract = 16, 60, 10, 5, 2
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    digits = data.load("mnist")
    x = digits.images.reshape(len(digits), -1).float()
    y = digits.labels
    queries, test = x[4000:4100], (x[4100:], y[4100:])
    sizes = mm.Sizes(784, args.hidden, 10)
    white = mm.train_population(args.white_box, x[:2000], y[:2000], queries, sizes=sizes, epochs=args.epochs,
                                test=test, progress=True)
    victims = mm.train_population(args.victims, x[2000:4000], y[2000:4000], queries, sizes=sizes,
                                  epochs=args.epochs, test=test, seed=100_000)
    truth = victims.weights
    n = len(victims)
    baselines = {
        "untrained": row(mm.init_population(n, sizes, range(200_000, 200_000 + n)), truth, test, sizes),
        "population_mean": row(white.weights.mean(0).expand(n, -1), truth, test, sizes),
        "canonical_mean": row(mm.canonical_order(white.weights, sizes).mean(0).expand(n, -1), truth, test, sizes),
    }
    variants = {
        "weights_only": dict(similarity=0.0),
        "seed_detached_similarity": dict(similarity=args.similarity, detach_similarity=True),
        "similarity": dict(similarity=args.similarity),
        "similarity_aligned_targets": dict(similarity=args.similarity, align_targets=True),
    }
    meta_rows, meta_seconds = {}, {}
    for name, opts in variants.items():
        t0 = time.perf_counter()
        meta, _ = mm.train_metamodel(white, epochs=args.meta_epochs, hidden=256, latent=64, progress=True, **opts)
        with torch.no_grad():
            meta_rows[name] = row(meta(victims.outputs), truth, test, sizes)
        meta_seconds[name] = time.perf_counter() - t0

    exact = []
    held_out = test[0].double().numpy()
    for v in range(min(args.extract, n)):
        net = mm.to_model(truth[v], sizes)
        oracle = ex.QueryCounter(ex.as_oracle(net))
        t0 = time.perf_counter()
        try:
            e = ex.extract(oracle, 784, args.hidden, lines=args.lines, seed=v)
        except ValueError as err:  # counted as a failure, with its reason
            exact.append({"failed": str(err), "queries": oracle.queries, "max_error": float("inf"),
                          "agreement": 0.0, "max_logit_error": float("inf"), "seconds": time.perf_counter() - t0})
            continue
        sec = time.perf_counter() - t0
        W, b, A, _ = (t.double().numpy() for t in mm.unflatten(truth[v], sizes))
        ag = ex.agreement(e, oracle, held_out)
        exact.append({"queries": e.queries, "max_error": ex.align(W, b, A, e)["max_error"],
                      "agreement": ag["agreement"], "max_logit_error": ag["max_logit_error"], "seconds": sec})

    base, sim = baselines["untrained"], meta_rows["similarity"]
    goals = {
        "metamodel_beats_untrained": all(sim[k] < base[k] for k in ("aae", "aape", "accuracy_difference")),
        "exact_error_below_1e-6": max(r["max_error"] for r in exact) < 1e-6,
        "exact_agreement_100": min(r["agreement"] for r in exact) == 1.0,
    }
    result = {
        "architecture": f"784-{args.hidden}-10", "parameters": sizes.n_params, "white_box": len(white),
        "victims": n, "epochs": args.epochs, "queries_for_metamodel": int(queries.shape[0]),
        "accuracy_white_box": float(white.accuracy.mean()), "accuracy_victims": float(victims.accuracy.mean()),
        "aape_eps": mm.AAPE_EPS, "baselines": baselines, "metamodel": meta_rows,
        "metamodel_seconds": meta_seconds,
        "exact": {"networks": len(exact), "failed": [r["failed"] for r in exact if "failed" in r],
                  "held_out_digits": int(held_out.shape[0]),
                  "queries_median": float(np.median([r["queries"] for r in exact])),
                  "queries_max": max(r["queries"] for r in exact),
                  "max_error": max(r["max_error"] for r in exact),
                  "agreement_min": min(r["agreement"] for r in exact),
                  "max_logit_error": max(r["max_logit_error"] for r in exact),
                  "seconds_median": float(np.median([r["seconds"] for r in exact]))},
        "goals": goals, "seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
