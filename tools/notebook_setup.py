"""Keep the first cell of every notebook: the Colab set-up, derived from ``_config.yml``.

The cell installs the course's release,
``leakutils[data,online,widgets] @ git+<url>@v<version>``, with ``<url>`` the repository
URL in ``_config.yml`` (``repository.url``) and ``<version>`` the package version in
``pyproject.toml``; when pip fails it raises an error that quotes pip. The same URL and
``repository.branch`` drive the book's launch buttons, so a fork changes one setting; a
release bumps the version and pushes the tag ``v<version>``. ``tools/readme_badges.py``
keeps the README's "Open in Colab" badges on the same URL and tag.

    python tools/notebook_setup.py          # write the cell into every notebook, clear outputs
    python tools/notebook_setup.py --check  # exit 1 if a notebook's first cell is not current
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "colab-setup"
#: The extras the Colab cell installs: offline and online data sets, the live panels.
EXTRAS = ("data", "online", "widgets")

#: Further extras of the chapters that need them: Opacus (DP-SGD) and Flower (with Ray).
CHAPTER_EXTRAS = {"07_defences": ("defences",), "08_flower": ("defences", "fl")}


def extras_for(path: Path | str | None) -> tuple:
    """The extras the set-up cell of notebook ``path`` installs (:data:`EXTRAS` and its chapter's)."""
    return EXTRAS + CHAPTER_EXTRAS.get(Path(path).stem, ()) if path is not None else EXTRAS


def repository() -> tuple[str, str]:
    """Return ``(url, branch)`` from ``_config.yml`` (the branch is for the launch buttons)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config.get("repository") or {}
    url, branch = repo.get("url"), repo.get("branch", "main")
    if not url:
        raise ValueError("_config.yml has no repository.url; the Colab set-up cell is derived from it")
    return url.rstrip("/"), branch


def version() -> str:
    """The package version, ``project.version`` in ``pyproject.toml``."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10: the one line of [project] that holds the version
        project = text.split("[project]", 1)[-1].split("\n[", 1)[0]
        found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
        value = found.group(1) if found else None
    else:
        value = tomllib.loads(text).get("project", {}).get("version")
    if not value:
        raise ValueError("pyproject.toml has no project.version; the release tag is derived from it")
    return value


def release_tag() -> str:
    """The git tag of this version's release, ``v`` + the version (``v0.1.0``)."""
    return f"v{version()}"


def package_url() -> str:
    """Where pip finds the release: ``git+<repository.url>@<release tag>``."""
    return f"git+{repository()[0]}@{release_tag()}"


def requirement(source: str | None = None, extras=EXTRAS) -> str:
    """The pip requirement ``leakutils[<extras>] @ <source>`` (default: :func:`package_url`)."""
    return f"leakutils[{','.join(extras)}] @ {source or package_url()}"


def colab_url(notebook: str, ref: str | None = None) -> str:
    """The "Open in Colab" address of ``notebooks/<notebook>`` at ``ref`` (the release tag)."""
    url = repository()[0]
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        raise ValueError(f"Colab opens notebooks from GitHub; repository.url is {url!r}")
    return (f"https://colab.research.google.com/github/{url[len(prefix):]}/blob/"
            f"{ref or release_tag()}/notebooks/{Path(notebook).name}")


def colab_cell_source(source: str | None = None, extras=EXTRAS) -> str:
    """The source of the set-up cell; ``source`` is the package URL pip installs from.

    By default the release on GitHub (:func:`package_url`); a test passes another URL (a
    ``git+file://`` clone) and gets the same cell, the same pip command, around it.
    """
    source = source or package_url()
    return (
        "# Set-up for Google Colab: install the course package `leakutils`, its data sets and\n"
        "# live panels. Anywhere else (JupyterLab, the book build) this cell does nothing.\n"
        "import sys\n"
        "\n"
        "if \"google.colab\" in sys.modules:\n"
        "    import subprocess\n"
        "\n"
        "    # the course's release (a git tag) that this notebook was written for\n"
        f"    source = \"{source}\"\n"
        f"    package = f\"leakutils[{','.join(extras)}] @ {{source}}\"\n"
        "    command = [sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\", package]\n"
        "    pip = subprocess.run(command, capture_output=True, text=True)\n"
        "    if pip.returncode != 0:\n"
        "        # pip's own words: its last 3,000 characters of output\n"
        "        output = (pip.stdout + pip.stderr).strip()[-3000:]\n"
        "        raise RuntimeError(\n"
        "            f\"pip could not install {package}:\\n{output}\\n\"\n"
        "            \"Is the repository public and the tag pushed?\"\n"
        "        )"
    )


def notebooks() -> list[Path]:
    """Every chapter notebook, in reading order."""
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def is_current(nb, path: Path | str | None = None) -> bool:
    """Whether the notebook's first cell is exactly the current set-up cell (of notebook ``path``)."""
    want = colab_cell_source(extras=extras_for(path))
    return bool(nb.cells) and nb.cells[0].cell_type == "code" and nb.cells[0].source == want


def sync(path: Path) -> None:
    """Write the set-up cell first in ``path`` (replacing an older one) and clear all outputs."""
    nb = nbformat.read(path, as_version=4)
    cell = nbformat.v4.new_code_cell(colab_cell_source(extras=extras_for(path)))
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
            if not is_current(nbformat.read(path, as_version=4), path):
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
