"""Keep the first cell of every notebook: the Colab set-up, derived from ``_config.yml``.

The repository URL and branch in ``_config.yml`` (``repository.url``, ``repository.branch``)
drive both the book's launch buttons and this cell, so a fork changes one setting.

    python tools/notebook_setup.py          # write the cell into every notebook, clear outputs
    python tools/notebook_setup.py --check  # exit 1 if a notebook's first cell is not current
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "colab-setup"


def repository() -> tuple[str, str]:
    """Return ``(url, branch)`` from ``_config.yml``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config.get("repository") or {}
    url, branch = repo.get("url"), repo.get("branch", "main")
    if not url:
        raise ValueError("_config.yml has no repository.url; the Colab set-up cell is derived from it")
    return url.rstrip("/"), branch


def colab_cell_source(url: str, branch: str) -> str:
    """The source of the set-up cell for a repository URL and branch."""
    return (
        "# Set-up for Google Colab: install the course package `leakutils` and its data sets.\n"
        "# Anywhere else (JupyterLab after `make book`, the book build) this cell does nothing.\n"
        "import sys\n"
        "\n"
        "if \"google.colab\" in sys.modules:\n"
        "    import subprocess\n"
        "\n"
        f"    package = \"leakutils[data,online] @ git+{url}@{branch}\"\n"
        "    command = [sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\", package]\n"
        "    subprocess.run(command, check=True)"
    )


def notebooks() -> list[Path]:
    """Every chapter notebook, in reading order."""
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def is_current(nb) -> bool:
    """Whether the notebook's first cell is exactly the current set-up cell."""
    want = colab_cell_source(*repository())
    return bool(nb.cells) and nb.cells[0].cell_type == "code" and nb.cells[0].source == want


def sync(path: Path) -> None:
    """Write the set-up cell first in ``path`` (replacing an older one) and clear all outputs."""
    nb = nbformat.read(path, as_version=4)
    cell = nbformat.v4.new_code_cell(colab_cell_source(*repository()))
    cell.metadata["tags"] = [TAG, "remove-cell"]
    if nb.cells and TAG in nb.cells[0].metadata.get("tags", []):
        cell.id = nb.cells[0].get("id", cell.id)
        nb.cells[0] = cell
    else:
        nb.cells.insert(0, cell)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, change nothing")
    args = parser.parse_args(argv)
    stale = []
    for path in notebooks():
        if args.check:
            if not is_current(nbformat.read(path, as_version=4)):
                stale.append(path.name)
        else:
            sync(path)
    if stale:
        print("notebooks whose first cell is not the current Colab set-up cell:", ", ".join(stale),
              "\nrun: python tools/notebook_setup.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
