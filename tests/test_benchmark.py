import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bias_ratio_benchmark_prints_one_json_line_last():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bias_ratio.py"), "--n", "5",
                          "--datasets", "mnist", "digits"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) == {"mnist", "digits"}
    for r in result.values():
        assert r["images"] == 5 and r["exact"] == 5 and r["label_accuracy"] == 1.0
        assert r["median_seconds"] < 1.0
