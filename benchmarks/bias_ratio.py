"""Benchmark of Chapter 1: bias-ratio inversion on the first images of every offline data set.

Each image is sent by its own client (batch size 1) through a fully connected ReLU network
(one hidden layer of 256 units, PyTorch's default initialisation, float64) and rebuilt from
the shared gradient with ``leakutils.attacks.bias_ratio.reconstruct``. The last line printed
is one JSON object: per data set, the number of images with PSNR >= 100 dB, the median PSNR
(dB, data range 1; "inf" when more than half are bit-exact) and the median seconds per image
of the attack alone (capture excluded), with the number of images and the label accuracy.
Under ``float32`` the same images are sent by float32 clients (a float32 copy of the same
network, the normal case in deployments) and scored against the float64 truth: the images
at >= 60 dB and >= 100 dB and the median PSNR.

    python benchmarks/bias_ratio.py            # the first 100 images of each data set
    python benchmarks/bias_ratio.py --n 10     # a quick run
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
from leakutils.attacks import bias_ratio

EXACT_DB = 100.0


def run(name: str, n: int, width: int = 256, seed: int = 0) -> dict:
    """Attack the first ``n`` images of data set ``name`` one at a time; return the summary."""
    ds = data.load(name, n, dtype=torch.float64)
    torch.manual_seed(seed)
    model = models.MLP(ds.shape, widths=(width,), num_classes=max(10, len(ds.classes)), dtype=torch.float64)
    single = copy.deepcopy(model).float()
    psnrs, psnrs32, seconds, labels_ok = [], [], [], 0
    for i in tqdm(range(n), desc=name, leave=False):
        x, y = ds[i]
        update = capture.client_update(model, x, y)
        t0 = time.perf_counter()
        rec = bias_ratio.reconstruct(model, update, diagnose=False)
        seconds.append(time.perf_counter() - t0)
        psnrs.append(float(metrics.psnr(rec.images, x)[0]))
        labels_ok += int(rec.labels[0]) == int(y[0])
        # the same image from a float32 client, scored against the float64 truth
        rec32 = bias_ratio.reconstruct(single, capture.client_update(single, x.float(), y), diagnose=False)
        psnrs32.append(float(metrics.psnr(rec32.images.double(), x)[0]))
    median = statistics.median(psnrs)
    median32 = statistics.median(psnrs32)
    return {
        "images": n,
        "exact": sum(p >= EXACT_DB for p in psnrs),
        "median_psnr_db": "inf" if math.isinf(median) else round(median, 2),
        "min_psnr_db": "inf" if math.isinf(min(psnrs)) else round(min(psnrs), 2),
        "median_seconds": statistics.median(seconds),
        "label_accuracy": labels_ok / n,
        "float32": {"at_least_60_db": sum(p >= 60.0 for p in psnrs32), "exact": sum(p >= EXACT_DB for p in psnrs32),
                    "median_psnr_db": "inf" if math.isinf(median32) else round(median32, 2)},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per data set (default 100)")
    parser.add_argument("--datasets", nargs="+", default=list(data.OFFLINE), choices=list(data.OFFLINE))
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be positive")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = {name: run(name, args.n) for name in args.datasets}
    for name, r in results.items():
        f32 = r["float32"]
        print(f"{name:8s} exact {r['exact']}/{r['images']}  median PSNR {r['median_psnr_db']} dB  "
              f"median {r['median_seconds'] * 1e3:.2f} ms/image  labels {r['label_accuracy']:.0%}  "
              f"float32: >= 60 dB {f32['at_least_60_db']}/{r['images']}, exact {f32['exact']}, "
              f"median {f32['median_psnr_db']} dB")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
