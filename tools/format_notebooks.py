"""Format the chapter notebooks the way the book shows them (about 90 characters wide).

Two steps, both idempotent: comments that trail code are moved onto their own line above
it (same indentation), then ``black`` formats every code cell at line length 90 without
magic trailing commas (so calls wrapped at a narrower width are joined again).

    python tools/format_notebooks.py           # rewrite the notebooks
    python tools/format_notebooks.py --check   # exit 1 if a notebook is not formatted
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tokenize
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LINE_LENGTH = 90
BLACK = [sys.executable, "-m", "black", "--quiet", "--line-length", str(LINE_LENGTH),
         "--skip-magic-trailing-comma"]


def notebooks() -> list[Path]:
    """Every chapter notebook, in reading order."""
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def trailing_comments(source: str) -> list[tuple[int, int]]:
    """``(line, column)`` (0-based) of every comment that follows code on its line."""
    lines = source.split("\n")
    masked = "\n".join("#" + ln if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(masked).readline):
        if tok.type == tokenize.COMMENT and tok.line[: tok.start[1]].strip():
            out.append((tok.start[0] - 1, tok.start[1]))
    return out


def lift_comments(source: str) -> str:
    """Move each trailing comment onto its own line above its code line."""
    lines = source.split("\n")
    for row, col in reversed(trailing_comments(source)):
        code, comment = lines[row][:col].rstrip(), lines[row][col:]
        indent = code[: len(code) - len(code.lstrip())]
        lines[row : row + 1] = [indent + comment, code]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, change nothing")
    args = parser.parse_args(argv)
    bad = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        found = [(i, trailing_comments(c.source)) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        found = [(i, f) for i, f in found if f]
        if args.check:
            bad += [f"{path.name}: cell {i}, comment after code on line {r + 1}" for i, f in found for r, _ in f]
            continue
        for i, _ in found:
            nb.cells[i].source = lift_comments(nb.cells[i].source)
        if found:
            nbformat.write(nb, path)
    paths = [str(p) for p in notebooks()]
    res = subprocess.run(BLACK + (["--check"] if args.check else []) + paths, capture_output=True, text=True)
    if res.returncode != 0:
        bad.append(res.stderr.strip() or "black failed")
    if bad:
        print("\n".join(bad), "\nrun: python tools/format_notebooks.py (or make format)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
