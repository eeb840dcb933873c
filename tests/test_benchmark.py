import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bias_ratio_benchmark_prints_one_json_line_last():
    # one thread: the timing must not depend on other work sharing the cores
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bias_ratio.py"), "--n", "5",
                          "--datasets", "mnist", "digits"], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) == {"mnist", "digits"}
    for r in result.values():
        assert r["images"] == 5 and r["exact"] == 5 and r["label_accuracy"] == 1.0
        assert r["median_seconds"] < 1.0
        # float32 clients: read to float32's own precision, well above 100 dB
        assert r["float32"]["at_least_60_db"] == 5 and r["float32"]["exact"] == 5
        assert 120 < r["float32"]["median_psnr_db"] < 250


def test_exan_benchmark_prints_one_json_line_last():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "exan.py"), "--widths", "512",
                          "--batch-sizes", "1", "8", "--samples", "8", "--train-steps", "20"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = result["results"]
    assert {(r["state"], r["batch_size"]) for r in rows} == {(s, m) for s in ("random", "trained") for m in (1, 8)}
    for r in rows:
        assert 0.0 <= r["recovered_paper"] <= r["recovered_one_pass"] <= r["recovered"] <= 1.0
        assert r["recovered_one_pass"] <= r["with_exan"]  # one pass needs an ExAN per sample
    assert all(r["recovered"] == 1.0 and r["batch_size_correct"] == 1.0 for r in rows if r["batch_size"] == 1)
    assert set(result["goals"]) == {"random", "trained"}
    # float32 clients: nothing marked wrong, never more marked than the batch size read
    for r in rows:
        assert r["float32"]["marked_wrong"] == 0 and r["float32"]["batches_over_batch_size"] == 0
        assert 0.0 <= r["float32"]["at_least_100_db"] <= r["float32"]["at_least_60_db"] <= 1.0


def test_inversion_benchmark_quick_prints_one_json_line_last():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inversion.py"), "--quick"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["rq1"]) == {"O", "A", "X", "O+A", "O+X", "A+X", "O+A+X", "O (unscaled)"}
    for r in result["rq1"].values():
        assert -1 <= r["ssim"] <= 1 and r["mse"] >= 0 and r["ssim_std"] >= 0
    assert set(result["truncation"]) == {"10", "1"} and set(result["rounding"]) == {"1"}
    assert result["reference"]["identity"] == 1.0
    assert set(result["baselines"]) == {"class_average", "x_tilde_alone"}


def test_extraction_benchmark_quick_prints_one_json_line_last():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "extraction.py"), "--quick"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["baselines"]) == {"untrained", "population_mean", "canonical_mean"}
    assert set(result["metamodel"]) == {"weights_only", "seed_detached_similarity", "similarity",
                                        "similarity_aligned_targets"}
    # the seed's detached similarity loss has no gradient: the same meta-model as weights only
    assert result["metamodel"]["seed_detached_similarity"] == result["metamodel"]["weights_only"]
    for r in list(result["baselines"].values()) + list(result["metamodel"].values()):
        assert r["aae_aligned"] <= r["aae"] + 1e-12 and 0 <= r["accuracy_difference"] <= 1
    assert result["exact"]["max_error"] < 1e-6 and result["exact"]["agreement_min"] == 1.0
    assert result["goals"]["exact_error_below_1e-6"] and result["goals"]["exact_agreement_100"]


def test_defences_benchmark_quick_prints_one_json_line_last():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "defences.py"), "--quick"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) == {"settings", "results", "best", "utility", "headline", "seconds"}
    assert result["settings"]["quick"] and set(result["results"]) == {"mnist"}
    rows = result["results"]["mnist"]
    assert {(r["defence"], r["attack"]) for r in rows} >= {("none", "bias_ratio"), ("noise", "exan"),
                                                           ("quantise", "inverting")}
    best = {(r["defence"], r["strength"]): r for r in result["best"]["mnist"]}
    assert len(best) == 7
    # one digit per client, undefended: the best attack is exact; noise at 1% of the largest entry is not
    none = best[("none", None)]
    assert none["psnr_ge_100"] == 1.0 and (none["psnr_median"] == "inf" or none["psnr_median"] >= 100)
    assert 20 <= best[("noise", 0.01)]["psnr_median"] < 100 and best[("noise", 0.01)]["psnr_ge_100"] == 0.0
    # noise of a tenth of the largest entry stops it: the headline names that strength
    assert result["headline"]["mnist"]["noise"]["strength"] == 0.1 and result["headline"]["mnist"]["none"] is None
    accuracy = result["utility"]
    assert accuracy["untrained"]["accuracy"] < 0.2 < accuracy["none"]["-"]["accuracy"] <= 1
    assert set(accuracy["quantise"]) == {"float16", "int8", "sign"}


def test_fedavg_benchmark_quick_prints_one_json_line_last():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fedavg.py"), "--quick"],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {(r["dtype"], r["batch_size"], r["local_steps"]): r for r in result["settings"]}
    assert set(rows) == {(d, m, t) for d in ("float32", "float64") for m in (1, 8) for t in (1, 5, 10)}
    # one example: exact after any number of local steps, float32 and float64 alike
    for d in ("float32", "float64"):
        for t in (1, 5, 10):
            assert rows[d, 1, t]["recovered"] == 1.0 and rows[d, 1, t]["at_least_100_db"] == 1.0
    # a batch of 8 in one step: ExAN; after five steps nothing is certified
    assert rows["float64", 8, 1]["recovered"] == 1.0 and rows["float64", 8, 5]["recovered"] == 0.0
    assert [r["local_steps"] for r in result["replay"]] == [1, 5, 10]
    # minibatch epochs: whatever is marked recovered is right
    assert len(result["epochs"]) == 6 and all(r["marked_below_60_db"] == 0 for r in result["epochs"])


def test_malicious_benchmark_quick_prints_one_json_line_last(tmp_path):
    figure = tmp_path / "malicious.png"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "malicious.py"), "--quick", "--figure",
                          str(figure)], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = result["imprint"]
    assert len(rows) == 2 * 2 * 2 * 2 and figure.stat().st_size > 10_000
    for r in rows:
        # nothing marked is wrong; float64 marks exactly the digits alone in a bin
        assert r["marked_below_60_db"] == 0 and r["recovered"] <= r["alone"]
        if r["dtype"] == "float64":
            assert r["recovered_equals_alone"] and r["at_least_100_db"] == r["recovered"]
    by = {(r["dtype"], r["sparse"], r["bins"], r["batch_size"]): r for r in rows}
    assert by["float64", False, 1024, 64]["recovered"] > by["float64", False, 16, 64]["recovered"]
    assert all(r["recovered_equals_alone"] and r["marked_below_60_db"] == 0 for r in result["secure_aggregation"])
    assert all(r["marked_below_60_db"] == 0 and r["target_recovered"] == r["isolated"] for r in result["fishing"])
    # breaching is optional: either skipped with its reason, or measured
    assert "skipped" in result["breaching"] or len(result["breaching"]["settings"]) == 2
