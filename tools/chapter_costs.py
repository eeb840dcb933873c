"""Time and peak memory of each chapter notebook's kernel, executed as the book build does.

Each notebook runs in a fresh kernel (nbclient); after its last cell, one more cell asks the
kernel for its peak resident memory. Wall time covers the whole execution.

    python tools/chapter_costs.py                 # every chapter
    python tools/chapter_costs.py 1 4 --json c.json
    LEAKUTILS_THREADS=1 python tools/chapter_costs.py 1   # with one thread
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PEAK = ("import resource, sys, torch\n"
        "_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('PEAK_MIB', _kib / 2**20 if sys.platform == 'darwin' else _kib / 2**10, "
        "'THREADS', torch.get_num_threads())")


def run(path: Path, timeout: int = 900) -> dict:
    """Execute ``path`` in a fresh kernel; return seconds, peak MiB and PyTorch threads."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    words = text.split()
    return {"seconds": seconds, "peak_mib": float(words[words.index("PEAK_MIB") + 1]),
            "threads": int(words[words.index("THREADS") + 1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", type=int, help="chapter numbers (default: all)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose notebooks run")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    table = {}
    for path in sorted((args.root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        chapter = int(path.name[:2])
        if args.chapters and chapter not in args.chapters:
            continue
        table[chapter] = run(path)
        r = table[chapter]
        print(f"Chapter {chapter}: {r['seconds']:.0f} s, peak {r['peak_mib']:.0f} MiB, {r['threads']} threads",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
