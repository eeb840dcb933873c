"""A chapter's assertions tell a student who changed something what to change back.

Every ``assert`` in a chapter notebook carries a message; a bare ``AssertionError`` after a
student's experiment says nothing. Chapters are listed as their assertions are given
messages (:data:`WITH_MESSAGES`); the test fails for a listed chapter with a bare one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Chapters whose every assertion has a message.
WITH_MESSAGES = ("01_bias_ratio", "02_activations", "03_conv_linear_systems", "04_exan",
                 "05_inversion", "06_extraction", "07_defences", "08_flower", "09_malicious")


def bare_asserts(path: Path) -> list[str]:
    """The assertions without a message in a notebook's code cells (their source, shortened)."""
    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        found += [ast.get_source_segment(cell.source, node)[:80] for node in ast.walk(tree)
                  if isinstance(node, ast.Assert) and node.msg is None]
    return found


@pytest.mark.parametrize("name", WITH_MESSAGES)
def test_every_assertion_says_what_to_change(name):
    bare = bare_asserts(ROOT / "notebooks" / f"{name}.ipynb")
    assert not bare, f"{name}: give these assertions a message that says what to change: {bare}"


def test_the_check_finds_a_bare_assertion(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1\nassert x == 1\nassert x, 'x must be set'")]
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert bare_asserts(tmp_path / "n.ipynb") == ["assert x == 1"]
