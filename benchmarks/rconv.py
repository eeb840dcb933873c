"""Benchmark of Chapter 3: R-CONV on LeNet and CNN6, against DLG, and how time grows with size.

1. For the first ``n`` images of offline MNIST (1x28x28) and of the 32x32 colour patches,
   one client each, through DLG's LeNet and R-GAP's CNN6 with ReLU, LeakyReLU(0.2), Sigmoid
   and Tanh after every conv (PyTorch's default initialisation, seed 0, float64; DLG's
   U(-0.5, 0.5) saturates the softmax of the ReLU networks in float64, so that many clients
   would send an exactly zero gradient):
   how many images are fully determined (the equations fix every pixel and the rebuilt image
   passes the whole-model gradient check), how many reach PSNR >= 100 dB,
   the median PSNR and the median seconds per image of ``attacks.conv.reconstruct``; and
   for the first ``--float32-n`` images, the same client in float32 (a float32 copy of the
   network): images determined, at >= 60 and >= 100 dB against the float64 truth, determined
   ones below 60 dB (which must be none), median PSNR.
2. On the first ``dlg_n`` images of each data set, DLG (L-BFGS, 300 steps as its code),
   R-GAP (its stacked gradient, forward and padding rows, ``method="rgap"``) and R-CONV on the
   same gradients of DLG's own setting (sigmoid LeNet, weights U(-0.5, 0.5)): median PSNR,
   median seconds, how many images each marks determined, and the speed ratio.
3. Time against image size (32, 64, 128 pixels; patches upsampled): LeNet with sigmoid
   (whose equations stop determining the image above 32 pixels) and a stride-1 network
   ``conv(3->3, k5, s1, p2) LeakyReLU conv(3->3, k5, s1, p2) Tanh fc`` that stays determined
   (its forward equations form a square sparse system at every size).

The last line printed is one JSON object with all of it. PSNR values are in dB with data
range 1 ("inf" when bit-exact); seconds are wall-clock on this machine, 2 threads.

    python benchmarks/rconv.py                 # n = 100, dlg_n = 10 (about half an hour)
    python benchmarks/rconv.py --n 5 --dlg-n 2 --sizes 32
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time

import torch
from tqdm import tqdm

from leakutils import capture, data, metrics, models
from leakutils.attacks import conv, dlg

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
ARCHITECTURES = {
    "lenet": lambda c, s, act: models.LeNet(c, s, activation=act, dtype=torch.float64),
    "cnn6": lambda c, s, act: models.cnn6(c, s, activation=act, dtype=torch.float64),
}
DATASETS = {"mnist": (1, 28), "patches": (3, 32)}


def _num(x: float):
    return "inf" if math.isinf(x) else round(x, 2)


def _model(arch: str, name: str, act: str):
    c, s = DATASETS[name]
    return models.init_weights(ARCHITECTURES[arch](c, s, act), "default", seed=0)


def _float32_client(model32, x, y):
    """(PSNR against the float64 truth, marked determined) for a float32 client, or None for a zero gradient."""
    try:
        rec = conv.reconstruct(model32, capture.client_update(model32, x.float(), y), labels=False)
    except ValueError as err:
        if "is zero" not in str(err):
            raise
        return None
    return float(metrics.psnr(rec.images, x)[0]), bool(rec.determined.all())


def _float32_summary(runs) -> dict:
    runs = [r for r in runs if r is not None]
    if not runs:
        return {"images": 0}
    psnrs = [p for p, _ in runs]
    return {"images": len(runs), "determined": sum(d for _, d in runs),
            "at_least_60_db": sum(p >= 60 for p in psnrs), "at_least_100_db": sum(p >= 100 for p in psnrs),
            "determined_below_60_db": sum(d and p < 60 for p, d in runs),
            "median_psnr_db": _num(statistics.median(psnrs))}


def accuracy(n: int, float32_n: int = 0) -> dict:
    out: dict = {}
    for name in DATASETS:
        ds = data.load(name, n, dtype=torch.float64)
        for arch in ARCHITECTURES:
            for act in ACTIVATIONS:
                model = _model(arch, name, act)
                model32 = copy.deepcopy(model).float()
                psnrs, secs, determined, silent, f32 = [], [], [], 0, []
                for i in tqdm(range(n), desc=f"{name}/{arch}/{act}", leave=False):
                    x, y = ds[i]
                    if i < float32_n:
                        f32.append(_float32_client(model32, x, y))
                    u = capture.client_update(model, x, y)
                    t0 = time.perf_counter()
                    try:
                        rec = conv.reconstruct(model, u, labels=False)
                    except ValueError as err:  # a zero gradient carries nothing: count it, go on
                        if "is zero" not in str(err):
                            raise
                        silent += 1
                        continue
                    secs.append(time.perf_counter() - t0)
                    psnrs.append(float(metrics.psnr(rec.images, x)[0]))
                    determined.append(bool(rec.determined.all()))
                out[f"{name}/{arch}/{act}"] = {
                    "images": n, "zero_gradient": silent, "determined": sum(determined),
                    "exact": sum(p >= 100 for p in psnrs),
                    "exact_when_determined": sum(p >= 100 for p, d in zip(psnrs, determined) if d),
                    "median_psnr_db": _num(statistics.median(psnrs)), "median_seconds": statistics.median(secs),
                    "float32": _float32_summary(f32),
                }
    return out


def against_dlg(n: int, steps: int) -> dict:
    out: dict = {}
    for name in DATASETS:
        ds = data.load(name, n, dtype=torch.float64)
        c, size = DATASETS[name]  # DLG's own setting: sigmoid LeNet, weights U(-0.5, 0.5)
        model = models.init_weights(models.LeNet(c, size, activation="sigmoid", dtype=torch.float64), "uniform",
                                    seed=0)
        rows = []
        for i in tqdm(range(n), desc=f"DLG {name}", leave=False):
            x, y = ds[i]
            u = capture.client_update(model, x, y)
            t0 = time.perf_counter()
            rc = conv.reconstruct(model, u, labels=False)
            t_rc = time.perf_counter() - t0
            t0 = time.perf_counter()
            rg = conv.reconstruct(model, u, method="rgap", labels=False)
            t_rg = time.perf_counter() - t0
            d = dlg.reconstruct(model, u, iterations=steps, seed=i)
            rows.append((float(metrics.psnr(rc.images, x)[0]), t_rc, float(metrics.psnr(rg.images, x)[0]), t_rg,
                         metrics.compare(d, x).mean_psnr, d.diagnostics["seconds"], bool(rc.determined.all()),
                         bool(rg.determined.all())))
        p_rc, t_rc, p_rg, t_rg, p_dlg, t_dlg = (statistics.median(c) for c in list(zip(*rows))[:6])
        out[name] = {"images": n, "model": "lenet/sigmoid, U(-0.5, 0.5)", "dlg_steps": steps,
                     "rconv_median_psnr_db": _num(p_rc), "rconv_median_seconds": t_rc,
                     "rconv_determined": sum(r[6] for r in rows),
                     "rgap_median_psnr_db": _num(p_rg), "rgap_median_seconds": t_rg,
                     "rgap_determined": sum(r[7] for r in rows),
                     "dlg_median_psnr_db": _num(p_dlg), "dlg_median_seconds": t_dlg,
                     "speed_ratio": t_dlg / t_rc}
    return out


def scaling(sizes, repeats: int = 3) -> dict:
    out: dict = {}
    nets = {
        "lenet/sigmoid": lambda s: models.LeNet(3, s, activation="sigmoid", dtype=torch.float64),
        "stride1/leaky_relu+tanh": lambda s: models.ConvNet(3, s, [(3, 5, 1, 2, "leaky_relu"),
                                                                   (3, 5, 1, 2, "tanh")], dtype=torch.float64),
    }
    for label, make in nets.items():
        for size in sizes:
            ds = data.load("patches", repeats, size=size, dtype=torch.float64)
            model = models.init_weights(make(size), "default", seed=0)
            secs, psnrs, det = [], [], []
            for i in range(repeats):
                x, y = ds[i]
                u = capture.client_update(model, x, y)
                t0 = time.perf_counter()
                rec = conv.reconstruct(model, u, labels=False)
                secs.append(time.perf_counter() - t0)
                psnrs.append(float(metrics.psnr(rec.images, x)[0]))
                det.append(rec.fraction_determined)
            out[f"{label}/{size}"] = {"pixels": size, "median_seconds": statistics.median(secs),
                                      "median_psnr_db": _num(statistics.median(psnrs)),
                                      "determined": statistics.median(det)}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per data set for part 1 (default 100)")
    parser.add_argument("--dlg-n", type=int, default=10, help="images per data set for DLG (default 10)")
    parser.add_argument("--dlg-steps", type=int, default=300, help="DLG's L-BFGS steps (default 300)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--float32-n", type=int, default=10,
                        help="images per setting also sent by a float32 client (default 10)")
    args = parser.parse_args(argv)
    if min(args.n, args.dlg_n, args.dlg_steps) < 1:
        parser.error("--n, --dlg-n and --dlg-steps must be positive")
    torch.set_num_threads(2)
    results = {"accuracy": accuracy(args.n, min(args.float32_n, args.n)), "dlg": against_dlg(args.dlg_n, args.dlg_steps),
               "scaling": scaling(args.sizes)}
    for key, r in results["accuracy"].items():
        f32 = r["float32"]
        print(f"{key:28s} determined {r['determined']:3d}/{r['images']}  exact {r['exact']:3d}/{r['images']}  "
              f"median {r['median_psnr_db']} dB  {r['median_seconds']:.3f} s  float32: determined "
              f"{f32.get('determined', 0)}/{f32['images']}, >=60 dB {f32.get('at_least_60_db', 0)}, >=100 dB "
              f"{f32.get('at_least_100_db', 0)}, median {f32.get('median_psnr_db')} dB")
    for key, r in results["dlg"].items():
        print(f"DLG {key}: R-CONV {r['rconv_median_psnr_db']} dB in {r['rconv_median_seconds']:.3f} s; "
              f"R-GAP {r['rgap_median_psnr_db']} dB in {r['rgap_median_seconds']:.3f} s; "
              f"DLG {r['dlg_median_psnr_db']} dB in {r['dlg_median_seconds']:.1f} s; ratio {r['speed_ratio']:.0f}x")
    for key, r in results["scaling"].items():
        print(f"{key:32s} {r['median_seconds']:.3f} s  {r['median_psnr_db']} dB  determined {r['determined']:.2f}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
