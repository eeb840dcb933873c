"""Checks of the notebooks as files: the Colab cell, no outputs, assertions, the table of contents."""
import re
import subprocess
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
    assert notebook_setup.is_current(nb, path), f"run: python tools/notebook_setup.py ({path.name})"
    url, _ = notebook_setup.repository()
    assert f'"git+{url}@{notebook_setup.release_tag()}"' in nb.cells[0].source
    assert nb.cells[0].metadata.get("tags") == [notebook_setup.TAG, "remove-cell"]


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


def _run_setup_cell(monkeypatch, in_colab, returncode=0, stderr=""):
    calls = []

    def run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr("subprocess.run", run)
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(notebook_setup.colab_cell_source(), {})
    return calls


def test_setup_cell_installs_the_release_only_on_colab(monkeypatch):
    assert _run_setup_cell(monkeypatch, in_colab=False) == []
    calls = _run_setup_cell(monkeypatch, in_colab=True)
    url, _ = notebook_setup.repository()
    assert len(calls) == 1
    cmd, kwargs = calls[0]
    assert cmd[-1] == notebook_setup.requirement()
    assert cmd[-1] == f"leakutils[data,online,widgets] @ git+{url}@{notebook_setup.release_tag()}"
    assert kwargs == {"capture_output": True, "text": True}


def test_setup_cell_says_what_pip_said(monkeypatch):
    message = "ERROR: could not find tag v0.1.0 in the repository"
    with pytest.raises(RuntimeError) as err:
        _run_setup_cell(monkeypatch, in_colab=True, returncode=1, stderr=message)
    text = str(err.value)
    assert notebook_setup.requirement() in text and message in text
    assert "Is the repository public and the tag pushed?" in text


def test_release_tag_is_the_package_version():
    import tomllib

    import leakutils

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert notebook_setup.release_tag() == "v" + project["version"]
    assert leakutils.__version__ == project["version"], "leakutils.__version__ != pyproject.toml"


def test_setup_cell_source_takes_another_package_url():
    local = "git+file:///tmp/clone@v0.1.0"
    cell = notebook_setup.colab_cell_source(local)
    assert cell == notebook_setup.colab_cell_source().replace(notebook_setup.package_url(), local)
    assert notebook_setup.package_url() not in cell


def test_readme_colab_badges_follow_the_config():
    from tools import readme_badges

    assert readme_badges.problems(readme_badges.README.read_text()) == [], "run: python tools/readme_badges.py"


def test_readme_badge_check_finds_drift():
    from tools import readme_badges

    text = readme_badges.README.read_text()
    stale = text.replace(f"/blob/{notebook_setup.release_tag()}/", "/blob/v0.0.1/", 1)
    stale = stale.replace(notebook_setup.package_url(), "git+https://github.com/someone/else@v9.9.9")
    found = readme_badges.problems(stale)
    # the stale badge (its row and its address) and the stale pip line
    assert len(found) == 3 and any("someone/else" in p for p in found), found
    assert readme_badges.rewrite(stale) == text
    no_badge = text.replace(readme_badges.badge("01_bias_ratio.ipynb"), "")
    assert any(p.startswith("01_bias_ratio.ipynb") for p in readme_badges.problems(no_badge))


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


def test_chapters_that_need_more_install_it_on_colab():
    """A chapter whose code runs DP-SGD (Opacus) or Flower installs that extra in its set-up cell."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        extras = re.search(r"leakutils\[([a-z,]+)\]", nb.cells[0].source).group(1).split(",")
        code = "\n".join(c.source for c in nb.cells[1:] if c.cell_type == "code")
        needs_dp = any(word in code for word in ("dp_sgd", "opacus", "defence_panel", "defence_demo"))
        assert ("defences" in extras) == needs_dp, f"{path.name}: extras {extras}"
        assert ("fl" in extras) == ("flwr" in code), f"{path.name}: extras {extras}"
