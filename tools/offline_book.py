"""Sphinx extension: the HTML book as a reader without a kernel or a network opens it.

Listed in ``_config.yml`` (``sphinx.local_extensions``). Three things, all on the HTML only:

- The live ipywidgets panels run only with a kernel; the book removes their outputs
  (``remove-output``) and shows a kernel-free twin instead. myst-nb still embeds the executed
  notebook's widget state (tens of KiB of JSON per page) and, unless ``nb_ipywidgets_js`` is
  empty, the widget JavaScript from a CDN. This extension drops the state script from every
  page; ``_config.yml`` empties ``nb_ipywidgets_js``.
- ``sphinx-mathjax-offline`` serves MathJax 3 from ``_static/mathjax`` but copies every
  MathJax bundle (about 24 MB). The book loads ``tex-chtml.js`` only, which loads TeX
  extensions, the accessibility modules, the SVG renderer (from its menu) and the fonts on
  demand; the other combined bundles are deleted after the build (about 14 MB less).
- Sphinx 7 writes an inline script that an extension registers while the documents are read
  twice into every page (once more from its registry when writing starts). sphinx-thebe's
  ``const THEBE_JS_URL = ...`` declared twice is a JavaScript error on every page, so each
  page keeps the first copy of every inline script only.
"""
from __future__ import annotations

import shutil
from pathlib import Path

#: The MIME type of the script tag in which myst-nb embeds a notebook's widget state.
WIDGET_STATE_MIMETYPE = "application/vnd.jupyter.widget-state+json"

#: What ``_static/mathjax`` keeps: the bundle the pages load and what it loads on demand.
MATHJAX_KEEP = {"tex-chtml.js", "input", "output", "ui", "a11y", "sre", "adaptors"}


def tidy_scripts(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context`` handler: no widget state, no second copy of an inline script."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    kept, seen = [], set()
    for js in scripts:
        attributes = getattr(js, "attributes", {})
        if attributes.get("type") == WIDGET_STATE_MIMETYPE:
            continue
        if not getattr(js, "filename", None):
            key = tuple(sorted(attributes.items()))
            if key in seen:
                continue
            seen.add(key)
        kept.append(js)
    scripts[:] = kept


def prune_mathjax(app, exception) -> None:
    """``build-finished`` handler: delete the MathJax bundles the pages never load."""
    root = Path(app.outdir) / "_static" / "mathjax"
    if exception is not None or app.builder.format != "html" or not root.is_dir():
        return
    if not (root / "tex-chtml.js").is_file():
        raise RuntimeError(f"{root} has no tex-chtml.js: is sphinx-mathjax-offline installed?")
    for path in root.iterdir():
        if path.name not in MATHJAX_KEEP:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def setup(app):
    # after myst-nb (priority 500) has added the page's notebook scripts
    app.connect("html-page-context", tidy_scripts, priority=900)
    # after sphinx-mathjax-offline (priority 500) has copied MathJax
    app.connect("build-finished", prune_mathjax, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
