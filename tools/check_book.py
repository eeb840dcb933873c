"""Check the book's structure without executing the notebooks.

Builds the HTML with Sphinx warnings as errors (table of contents, cross-references,
citations, glossary terms, exercise labels) from a copy of ``_config.yml`` whose only change
is ``execute.execute_notebooks: off``: a check in about a minute while writing prose
(``make structure``). ``make test`` builds the executed book with the same ``-W`` instead.

    python tools/check_book.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "_build" / "structure"


def main() -> int:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    # Without execution no cell has glued its values; tests/test_notebooks.py checks statically
    # that every key the prose cites is glued by a cell of the same notebook.
    sphinx = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx["suppress_warnings"] = list(sphinx.get("suppress_warnings", [])) + ["mystnb.glue"]
    # jupyter-book resolves the paths of local extensions against the config file's folder.
    local = config["sphinx"].get("local_extensions") or {}
    config["sphinx"]["local_extensions"] = {name: str((ROOT / path).resolve())
                                            for name, path in local.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = OUT / "_config.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--config", str(cfg),
           "--path-output", str(OUT), "--all", "-W", "--keep-going", "-q"]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
