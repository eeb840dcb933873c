"""Checks of the notebooks as files: the Colab cell, no outputs, assertions, the table of contents."""
import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml

from tools import notebook_setup

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no chapter"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_is_the_colab_setup_from_the_config(path):
    nb = nbformat.read(path, as_version=4)
    assert notebook_setup.is_current(nb), f"run: python tools/notebook_setup.py ({path.name})"
    url, branch = notebook_setup.repository()
    assert f"git+{url}@{branch}" in nb.cells[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_asserting(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs"
    assert any("assert " in c.source for c in code), "a cell must assert the chapter's result"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_every_notebook_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in toc


def test_launch_buttons_use_the_one_repository_setting():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"].startswith("https://github.com/")
    assert config["launch_buttons"]["colab_url"] and config["launch_buttons"]["binderhub_url"]
    assert config["execute"]["execute_notebooks"] == "force"
    assert "sphinx_exercise" in config["sphinx"]["extra_extensions"]


def _run_setup_cell(monkeypatch, in_colab):
    calls = []
    monkeypatch.setattr("subprocess.run", lambda cmd, check: calls.append(cmd))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(notebook_setup.colab_cell_source(*notebook_setup.repository()), {})
    return calls


def test_setup_cell_installs_only_on_colab(monkeypatch):
    assert _run_setup_cell(monkeypatch, in_colab=False) == []
    calls = _run_setup_cell(monkeypatch, in_colab=True)
    url, branch = notebook_setup.repository()
    assert len(calls) == 1 and calls[0][-1] == f"leakutils[data,online] @ git+{url}@{branch}"


_GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([A-Za-z0-9_]+)")
_GLUE_CALL = re.compile(r"""\bglue\(\s*["']([A-Za-z0-9_]+)["']""")


def _glue_keys(nb) -> tuple[set, list]:
    """(keys cited by the Markdown, keys glued by the code cells in order) of one notebook."""
    cited = {k for c in nb.cells if c.cell_type == "markdown" for k in _GLUE_ROLE.findall(c.source)}
    glued = [k for c in nb.cells if c.cell_type == "code" for k in _GLUE_CALL.findall(c.source)]
    return cited, glued


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_number_the_prose_cites_is_glued_by_its_own_notebook(path):
    cited, glued = _glue_keys(nbformat.read(path, as_version=4))
    missing = sorted(cited - set(glued))
    assert not missing, f"{path.name} cites glue keys no cell glues: {missing}"


def test_glue_keys_are_unique_across_the_book():
    seen: dict = {}
    for path in NOTEBOOKS:
        for key in _glue_keys(nbformat.read(path, as_version=4))[1]:
            assert seen.setdefault(key, path.name) == path.name, f"glue key {key!r} in {seen[key]} and {path.name}"


def test_glue_outside_the_book_records_the_value():
    from leakutils.book import glue, glued
    assert glue("test_key_1", 2.5) == 2.5 and glued["test_key_1"] == 2.5
    # NumPy and torch scalars are glued as Python numbers, which the book's format specs accept
    import numpy as np
    import torch
    assert type(glue("test_key_2", np.float64(0.25))) is float and type(glued["test_key_2"]) is float
    assert type(glue("test_key_3", torch.tensor(3))) is int
    with pytest.raises(ValueError, match="letters, digits"):
        glue("bad key", 1)


def test_notebooks_are_formatted_at_the_books_width():
    """Code cells as the book shows them: black at 90 characters, no comment after code."""
    from tools import format_notebooks
    assert format_notebooks.main(["--check"]) == 0, "run: make format"


def test_trailing_comments_are_found():
    from tools.format_notebooks import lift_comments, trailing_comments
    src = 'x = f(  # a "#" in a string\n    1,\n)  # after\n!pip list  # a shell line\ny = "#"'
    assert [r for r, _ in trailing_comments(src)] == [0, 2]
    lifted = lift_comments(src)
    assert trailing_comments(lifted) == [] and lifted.splitlines()[0] == '# a "#" in a string'
