"""Build the classroom kit: the student edition and the autograder, with otter-grader.

Each chapter notebook is translated into an otter-grader assignment (otter's notebook
format, "v1"), and otter's assign (``otter.assign.main``, what ``otter assign`` runs, here
in one process for all chapters) writes its two versions:

    python tools/student.py                      # every chapter (make student)
    python tools/student.py 01_bias_ratio        # some chapters

Outputs, all under ``_build/``:

- ``student/<chapter>/<chapter>.ipynb`` with ``tests/`` beside it: the chapter without its
  solutions (set-up cell kept, outputs cleared); each checked exercise ends with a cell of
  answer stubs (``x_hat = ...``) and ``grader.check("ch1-by-hand")``, which runs the
  exercise's test from ``tests/`` locally, no server needed;
- ``autograder/<chapter>/``: the notebook with solutions and ``<chapter>-autograder.zip``,
  the configuration ``otter run`` (``tools/grade.py``) grades with;
- ``student.zip``: the student folders in one file, for a learning platform;
- ``classroom/``: the otter-format master notebooks (intermediate).

The translation: the book's sphinx-exercise fences become otter's question blocks
(``# BEGIN QUESTION`` ... ``# END QUESTION``, one point each); the exercise text is the
question; the solution's prose and code go in a ``# BEGIN SOLUTION`` block (otter deletes
prose and replaces code by ``...``), preceded by a prompt cell for the student's own
reasoning; in the solution's last cell, the check cell, each answer assignment is marked
``# SOLUTION`` (otter turns it into ``name = ...``; an assignment over several lines becomes
a ``name = ...`` line and a ``# BEGIN SOLUTION NO PROMPT`` block) and the book's
``exercises.check(...)`` call is marked ``# BEGIN IGNORE`` (the student runs
``grader.check`` instead); the test is an otter exception-based test calling the same
:func:`leakutils.exercises.check`. The stripping itself is otter's.
"""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakutils import exercises  # noqa: E402
from tools import notebook_setup  # noqa: E402

BUILD = ROOT / "_build"

#: The four sphinx-exercise fences of a gated exercise and its solution.
FENCE = re.compile(r"```\{(exercise-start|exercise-end|solution-start|solution-end)\}"
                   r"([^\n]*)\n((?::[^\n]*\n)*)```[ \t]*")
PROMPT = "_Type your answer here, replacing this text._"


def chapters() -> list[Path]:
    """Every chapter notebook, in reading order."""
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


# --------------------------------------------------------------------------- parsing the book


@dataclass
class Exercise:
    """One exercise of a chapter: its text, its solution's prose and code, in order."""

    label: str
    text: list[str] = field(default_factory=list)
    solution: list[nbformat.NotebookNode] = field(default_factory=list)


def parse(nb) -> list:
    """The chapter as a list of cells outside exercises and :class:`Exercise` objects."""
    out: list = []
    state, current = None, None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            if state == "exercise":
                raise ValueError(f"cell {index}: a code cell inside the text of {current.label}")
            (current.solution if state == "solution" else out).append(cell)
            continue
        if not FENCE.search(cell.source):
            # a cell without fences goes where it stands, as it is (its id and metadata kept)
            if state == "exercise":
                current.text.append(cell.source.strip())
            else:
                (current.solution if state == "solution" else out).append(cell)
            continue
        pos = 0
        pieces = []
        for m in FENCE.finditer(cell.source):
            pieces.append((cell.source[pos:m.start()], m))
            pos = m.end()
        pieces.append((cell.source[pos:], None))
        for text, fence in pieces:
            if text.strip():
                if state == "exercise":
                    current.text.append(text.strip())
                elif state == "solution":
                    current.solution.append(nbformat.v4.new_markdown_cell(text.strip()))
                else:
                    out.append(nbformat.v4.new_markdown_cell(text.strip()))
            if fence is None:
                continue
            kind, arg, options = fence.group(1), fence.group(2).strip(), fence.group(3)
            if kind == "exercise-start":
                label = re.search(r":label:\s*(\S+)", options)
                if state is not None or label is None:
                    raise ValueError(f"cell {index}: exercise-start without a label, or inside another")
                current, state = Exercise(label.group(1)), "exercise"
                out.append(current)
            elif kind == "exercise-end":
                state = None
            elif kind == "solution-start":
                if current is None or arg != current.label or state is not None:
                    raise ValueError(f"cell {index}: solution-start {arg!r} does not follow its exercise")
                state = "solution"
            else:
                state = None
    if state is not None:
        raise ValueError(f"the notebook ends inside {current.label}")
    return out


# --------------------------------------------------------------------------- the otter master


def raw(source: str):
    """A raw cell: otter's block markers and configuration live in raw cells."""
    return nbformat.v4.new_raw_cell(source)


def marked_check_cell(label: str, source: str) -> str:
    """The check cell with otter's markers: answers ``# SOLUTION``, the book's check ignored."""
    ex = exercises.get(label)
    tree = ast.parse(source)
    lines = source.split("\n")
    edits = []  # (first line, last line, replacement lines), 0-based inclusive
    assigned = []
    for stmt in tree.body:
        first, last = stmt.lineno - 1, stmt.end_lineno - 1
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id in ex.answers:
            name = stmt.targets[0].id
            assigned.append(name)
            if first == last:
                edits.append((first, last, [lines[first] + "  # SOLUTION"]))
            else:
                edits.append((first, last, [f"{name} = ...", "# BEGIN SOLUTION NO PROMPT",
                                            *lines[first:last + 1], "# END SOLUTION"]))
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) \
                and ast.unparse(stmt.value.func) == "exercises.check":
            args = stmt.value.args
            if not args or not isinstance(args[0], ast.Constant) or args[0].value != label:
                raise ValueError(f"{label}: the check cell checks another exercise")
            names = sorted(k.arg for k in stmt.value.keywords)
            if names != sorted(ex.names):
                raise ValueError(f"{label}: the check cell passes {names}, the check takes {sorted(ex.names)}")
            edits.append((first, last, ["# BEGIN IGNORE", *lines[first:last + 1], "# END IGNORE"]))
        else:
            raise ValueError(f"{label}: line {first + 1} of the check cell is neither an answer "
                             "assignment nor the check; compute in the solution's cells above")
    if sorted(assigned) != sorted(ex.answers):
        raise ValueError(f"{label}: the check cell assigns {sorted(assigned)}, the exercise's "
                         f"answers are {sorted(ex.answers)}")
    for first, last, replacement in reversed(edits):
        lines[first:last + 1] = replacement
    return "\n".join(lines)


def test_cell(label: str) -> str:
    """Otter's exception-based test of ``label``: the same check, fed from the notebook."""
    ex = exercises.get(label)
    params = ", ".join(ex.names)
    args = ", ".join(f"{n}={n}" for n in ex.names)
    func = "test_" + re.sub(r"\W", "_", label)
    return (f"def {func}({params}):\n"
            f"    from leakutils import exercises\n\n"
            f'    exercises.check("{label}", {args})')


def question_cells(ex: Exercise) -> list:
    """The otter question block of one exercise."""
    if ex.label not in exercises.REGISTRY:
        raise ValueError(f"{ex.label} has no check in leakutils.exercises")
    code = [c for c in ex.solution if c.cell_type == "code"]
    if not code or "exercises.check(" not in code[-1].source:
        raise ValueError(f"{ex.label}: the solution must end with its check cell")
    cells = [raw(f"# BEGIN QUESTION\nname: {ex.label}\npoints: 1"),
             nbformat.v4.new_markdown_cell("\n\n".join(ex.text))]
    if any(c.cell_type == "markdown" for c in ex.solution):
        cells += [raw("# BEGIN PROMPT"), nbformat.v4.new_markdown_cell(PROMPT), raw("# END PROMPT")]
    cells.append(raw("# BEGIN SOLUTION"))
    for cell in ex.solution:
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(cell.source))
        elif cell is code[-1]:
            cells.append(nbformat.v4.new_code_cell(marked_check_cell(ex.label, cell.source)))
        else:
            cells.append(nbformat.v4.new_code_cell(f"# BEGIN SOLUTION\n{cell.source}\n# END SOLUTION"))
    cells += [raw("# END SOLUTION"), raw("# BEGIN TESTS"),
              nbformat.v4.new_code_cell(test_cell(ex.label)), raw("# END TESTS"),
              raw("# END QUESTION")]
    return cells


def assignment_config(stem: str) -> str:
    """The ``# ASSIGNMENT CONFIG`` cell of one chapter."""
    config = {
        "name": stem,
        "requirements": "requirements.txt",
        "init_cell": False,
        "check_all_cell": False,
        "export_cell": False,
        "run_tests": False,
        "solutions_pdf": False,
        "generate": True,
        "tests": {"files": True, "ok_format": False},
    }
    return "# ASSIGNMENT CONFIG\n" + yaml.safe_dump(config, sort_keys=False).strip()


def init_cell(stem: str):
    """Otter's initialisation, after the set-up cell (so that Colab installs otter first)."""
    cell = nbformat.v4.new_code_cell(
        "# Otter checks your answers: grader.check(label) runs that exercise's test from tests/\n"
        f'import otter\n\ngrader = otter.Notebook("{stem}.ipynb")')
    cell.metadata.update({"editable": False, "deletable": False})
    return cell


def master(path: Path):
    """The otter-format master notebook of one book chapter."""
    nb = nbformat.read(path, as_version=4)
    parts = parse(nb)
    setup = parts[0]
    if not (getattr(setup, "cell_type", None) == "code"
            and notebook_setup.TAG in setup.metadata.get("tags", [])):
        raise ValueError(f"{path.name}: the first cell is not the Colab set-up cell")
    setup = nbformat.from_dict(setup)
    # the student edition also installs otter-grader on Colab
    setup.source = with_extras(setup.source, ("classroom",))
    cells = [raw(assignment_config(path.stem)), setup, init_cell(path.stem)]
    for part in parts[1:]:
        if isinstance(part, Exercise):
            cells += question_cells(part)
        else:
            cell = nbformat.from_dict(part)
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            cells.append(cell)
    out = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    nbformat.validate(out)
    return out


# --------------------------------------------------------------------------- otter assign


#: ``leakutils[extras]`` in the set-up cell's pip requirement.
REQUIREMENT = re.compile(r"leakutils\[([^\]]*)\]")


def with_extras(source: str, extras: tuple[str, ...]) -> str:
    """``source`` with ``extras`` added to the first ``leakutils[...]`` requirement in it."""
    m = REQUIREMENT.search(source)
    if m is None:
        raise ValueError("the Colab set-up cell no longer installs leakutils[...]: update tools/student.py")
    have = [e.strip() for e in m.group(1).split(",") if e.strip()]
    extras = ",".join(have + [e for e in extras if e not in have])
    return source[:m.start()] + f"leakutils[{extras}]" + source[m.end():]


def requirements(setup_source: str) -> str:
    """What a grading image installs: the set-up cell's leakutils, with every chapter's extras."""
    source = re.search(r"git\+[^\s\"']+", setup_source)
    if source is None or not REQUIREMENT.search(setup_source):
        raise ValueError("the Colab set-up cell no longer installs leakutils from git: update tools/student.py")
    spec = f"leakutils[] @ {source.group(0)}"
    return with_extras(spec, ("data", "online", "widgets", "defences", "fl", "classroom")) + "\n"


def assign(path: Path, build: Path = BUILD) -> None:
    """Write the master of ``path``, run otter assign on it and place its two versions."""
    from otter.assign import main as otter_assign  # otter's ``otter assign``, in this process

    stem, work = path.stem, build / "classroom"
    masters = work / "masters"
    masters.mkdir(parents=True, exist_ok=True)
    nb = master(path)
    (masters / "requirements.txt").write_text(requirements(nb.cells[1].source))
    master_path = masters / f"{stem}.ipynb"
    nbformat.write(nb, master_path)
    result = work / stem
    shutil.rmtree(result, ignore_errors=True)
    otter_assign(str(master_path), str(result), no_pdfs=True, no_run_tests=True)
    for src, dst in ((result / "student", build / "student" / stem),
                     (result / "autograder", build / "autograder" / stem)):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    (zip_path,) = (build / "autograder" / stem).glob(f"{stem}-autograder_*.zip")
    zip_path.rename(autograder_zip(stem, build))


def autograder_zip(stem: str, build: Path = BUILD) -> Path:
    """The autograder configuration of chapter ``stem`` (after ``make student``)."""
    return build / "autograder" / stem / f"{stem}-autograder.zip"


def write_zip(build: Path = BUILD) -> Path:
    """``student.zip`` in ``build``: every chapter folder of the student edition."""
    student, target = build / "student", build / "student.zip"
    target.unlink(missing_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(student.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(student))
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter stems, e.g. 01_bias_ratio (default: all)")
    parser.add_argument("--out", type=Path, default=BUILD, help=f"the build folder (default {BUILD})")
    args = parser.parse_args(argv)
    paths = chapters()
    if args.chapters:
        unknown = set(args.chapters) - {p.stem for p in paths}
        if unknown:
            parser.error(f"no such chapter: {sorted(unknown)}; chapters: {[p.stem for p in paths]}")
        paths = [p for p in paths if p.stem in args.chapters]
    t0 = time.perf_counter()
    for path in paths:
        assign(path, args.out)
        print(f"{path.stem}: {args.out / 'student' / path.stem}", flush=True)
    target = write_zip(args.out)
    print(f"{len(paths)} chapters in {time.perf_counter() - t0:.0f} s; {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
