"""Grade a folder of submitted chapter notebooks into one CSV, with otter-grader, locally.

    python tools/grade.py SUBMISSIONS [--out _build/grades.csv]   (make grade SUBMISSIONS=dir)

Every ``*.ipynb`` under ``SUBMISSIONS`` (any depth) is graded with ``otter run``, otter's
non-containerized grader: the notebook is executed in this environment (no Docker, no
server) against the autograder configuration ``make student`` wrote for its chapter, and
each exercise's test gives 1 point or 0. The chapter is the ``otter.assignment_name`` the
student edition carries in its metadata (or, failing that, a chapter name in the file
name). One CSV row per submission: the file, the chapter, the score, the points possible,
one column per checked exercise of the book (empty where the chapter does not have it) and
``error`` (why a submission could not be graded; it then scores 0). Each run's log and otter's
results (each test's message) are kept in ``grading/`` beside the CSV.

A submission runs for as long as its chapter does (about 30 s to a few minutes on 2 cores);
they are graded one after another.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakutils import exercises  # noqa: E402
from tools.student import BUILD, autograder_zip, chapters  # noqa: E402

OUT = BUILD / "grades.csv"


def chapter_of(path: Path) -> str | None:
    """The chapter a submitted notebook belongs to, or None."""
    stems = [p.stem for p in chapters()]
    try:
        name = nbformat.read(path, as_version=4).metadata.get("otter", {}).get("assignment_name")
    except Exception:  # an unreadable notebook: let otter say why
        name = None
    if name in stems:
        return name
    found = [s for s in stems if s in path.name]
    return found[0] if len(found) == 1 else None


def grade_one(path: Path, timeout: int, build: Path, log: Path) -> dict:
    """Run ``otter run`` on one notebook (its output to ``log``); its row of the CSV."""
    row = {"submission": str(path), "chapter": "", "score": 0, "possible": "", "error": ""}
    stem = chapter_of(path)
    if stem is None:
        row["error"] = "no chapter: neither otter.assignment_name in the metadata nor a chapter name in the file name"
        return row
    row["chapter"] = stem
    zip_path = autograder_zip(stem, build)
    if not zip_path.is_file():
        row["error"] = f"{zip_path} is missing: run make student first"
        return row
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "otter", "run", "--no-logo", "-a", str(zip_path), "-o", out,
               str(path)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            row["error"] = f"grading took longer than {timeout} s"
            return row
        log.write_text(res.stdout + res.stderr)
        results = Path(out) / "results.json"
        if res.returncode != 0 or not results.is_file():
            row["error"] = f"otter run failed (exit {res.returncode}); see {log}"
            return row
        shutil.copy(results, log.with_suffix(".json"))
        tests = json.loads(results.read_text()).get("tests", [])
    by_name = {t["name"]: t for t in tests if t.get("name") in exercises.REGISTRY}
    if not by_name:
        row["error"] = f"no exercise was graded; see {log}"
        return row
    for name, t in by_name.items():
        row[name] = t.get("score", 0)
    row["score"] = float(sum(t.get("score", 0) for t in by_name.values()))
    row["possible"] = sum(t.get("max_score", 0) for t in by_name.values())
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submissions", type=Path, help="a folder of submitted notebooks")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the CSV to write (default {OUT})")
    parser.add_argument("--build", type=Path, default=BUILD,
                        help=f"where make student wrote autograder/ (default {BUILD})")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per submission")
    args = parser.parse_args(argv)
    if not args.submissions.is_dir():
        parser.error(f"{args.submissions} is not a folder of notebooks")
    paths = sorted(p for p in args.submissions.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not paths:
        parser.error(f"no .ipynb file under {args.submissions}")
    rows = []
    for path in paths:
        t0 = time.perf_counter()
        log = args.out.parent / "grading" / ("__".join(path.relative_to(args.submissions).parts) + ".log")
        row = grade_one(path, args.timeout, args.build, log)
        rows.append(row)
        print(f"{path}: {row['score']}/{row['possible'] or '?'} {row['error']} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["submission", "chapter", "score", "possible", *exercises.labels(), "error"]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} submissions -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
