"""The classroom kit: the exercise checks, the student edition and the autograder.

- every checked exercise of the book is numbered alike in book and notebook, unnumbered by
  sphinx-exercise, and its solution ends with its check;
- every check passes the right answer, fails a wrong one with a hint that does not contain
  the answer, and says "not answered yet" for a missing one (``...``, the student stub);
- ``tools/student.py`` (``make student``), built into a temporary folder: one student
  notebook per chapter with no solution left, the set-up cell kept, outputs cleared, the
  tests of its exercises beside it; the autograder configuration of each chapter; the zip;
- end to end on Chapter 1 with ``tools/grade.py`` (``make grade``, ``otter run``): the
  teacher's solutions get full marks, the untouched student edition gets zero, without
  crashing.

About 1.5 minutes on 2 idle cores (measured 81 s), most of it the two gradings of Chapter 1.
"""
from __future__ import annotations

import csv
import re
import shutil
import zipfile
from pathlib import Path
from types import FunctionType

import nbformat
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from leakutils import exercises
from leakutils.exercises import NotAnswered, WrongAnswer
from tools import grade, notebook_setup, student

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [p.stem for p in student.chapters()]
N = np.array([16, 32, 64])


def chapter_labels(stem: str) -> list[str]:
    """The checked exercises of chapter ``stem`` ("01_bias_ratio" -> ch1-...)."""
    return [lab for lab in exercises.labels() if lab.startswith(f"ch{int(stem[:2])}-")]


# --------------------------------------------------------------------------- right answers


def _mnist():
    from leakutils.exercises._base import mnist

    return mnist()


def _peel_right():
    from leakutils.exercises.ch4 import _peel_truth

    xb, counts = _peel_truth()
    return dict(batch_size_read=24, new_images=torch.tensor(xb[counts == 0][:3]).reshape(-1, 1, 28, 28))


def _baseline_context():
    g = torch.Generator().manual_seed(0)
    xt = torch.rand(12, 1, 16, 16, generator=g)
    class_avg = torch.rand(10, 1, 16, 16, generator=g)
    yt = torch.arange(12) % 10
    o_t = torch.nn.functional.one_hot(yt, 10).float()
    o_t[0, 5] = 5.0  # one misclassified digit
    from leakutils import metrics

    ssim = lambda imgs: float(metrics.ssim(imgs.double(), xt.double(), gaussian=True).mean())  # noqa: E731
    return dict(ssim_pred=ssim(class_avg[o_t.argmax(1)]), ssim_true=ssim(class_avg[yt]),
                misclassified=1 / 12, o_t=o_t, yt=yt, xt=xt, class_avg=class_avg)


def _predict_right():
    from leakutils import capture
    from leakutils.exercises.ch7 import _digit_and_net

    x, y, net = _digit_and_net()
    db = capture.client_update(net, x, y)["fc1.bias"]
    sigma = float(db.norm() / 10 / torch.sqrt(1 + (x.flatten() ** 2).mean()))
    return dict(sigma20=sigma, measured={0.5: 26.1, 1.0: 20.2, 2.0: 14.3})


def _soteria_right():
    from leakutils import defences
    from leakutils.attacks import bias_ratio
    from leakutils.exercises.ch7 import _digit_and_net

    x, y, net = _digit_and_net()
    defended, kept = defences.soteria(net, x, y, prune_fraction=0.8, return_mask=True)
    hidden = bias_ratio.reconstruct(net, defended, layer="out", labels=False).images[0]
    return dict(withheld=~kept, hidden=hidden)


def _dp_right():
    from leakutils.exercises.ch8 import DP_SIGMAS, _dp_audit

    psnrs, eps = _dp_audit()
    holds = min(s for s in DP_SIGMAS if psnrs[s] < 20)
    return dict(holds=holds, eps_at_holds=eps[holds])


def _evade_right():
    from leakutils.exercises.ch9 import _evade_truth

    return dict(flagged={1e-3: False, 1e-1: False, 1.0: False}, honest_cos=_evade_truth()[1],
                marked_exact=True)


#: label -> a function returning the right answers (the book's values, or cheap truths).
RIGHT = {
    "ch1-by-hand": lambda: dict(row_images=[[0.25, 0.5, 0, 1]] * 2, x_hat=[0.25, 0.5, 0, 1],
                                x_dead=np.array([[0.25, 0.5], [0, 1]])),
    "ch1-labels-without-bias": lambda: dict(labels_found=_mnist().labels[:50].tolist(),
                                            digit0=_mnist().images[0]),
    "ch1-defences": lambda: dict(stops=dict(clipping=False, noise=True, secure_aggregation=False,
                                            batch_of_32=False)),
    "ch2-by-hand": lambda: dict(deriv_true=0.5, deriv_slides=0.667, slides_right=False,
                                elu_grad_O=1.0, elu_O=-0.693),
    "ch2-silu": lambda: dict(O_pair=_silu_pair(), gelu_too=True),
    "ch2-defence": lambda: dict(relu=dict(colleague_right=False, gradient_passes_exactly=True,
                                          loses_forward_equations=True)),
    "ch3-count": lambda: dict(counts=[[3072, 3072, 900], [3072, 768, 3600], [768, 768, 3600]],
                              any_layer_safe=False),
    "ch3-relu-filters": lambda: dict(filters_tanh=3, filters_relu=6, filters_by_count=3),
    "ch3-stride-kernel": lambda: dict(by_count=9, by_rank=16),
    "ch3-defence": lambda: dict(layer=nn.Conv2d(3, 2, 5, stride=4, padding=2), first_layer_enough=False),
    "ch4-by-hand": lambda: dict(dead={4}, parallel=[1, 2], n_identified=1, sample_label=0,
                                smallest_ratio_class=2),
    "ch4-peel": _peel_right,
    "ch4-estimate": lambda: dict(p_threshold=0.32, at_half=1024 / 2**16),
    "ch5-al": lambda: dict(a_min=[1, 0, 1], a_other=torch.tensor([2.0, 1.0, 0.0]), gd_finds_min_norm=True),
    "ch5-baseline": _baseline_context,
    "ch5-defence": lambda: dict(computable=dict(O=True, A=True, X=True), rounding_defends=False),
    "ch6-kink": lambda: dict(critical_points=[1, 3], slopes=[1, 3, 2],
                             units=[[1, -1, 2], [-1, 3, -1]], offset=1),
    "ch6-queries": lambda: dict(predicted=2 * N * 785 + 2 * (N + 785), jacobians_dominate=True),
    "ch6-defence": lambda: dict(rounding=dict(stops_exact_extraction=True, stops_metamodel=False)),
    "ch7-epsilon-by-hand": lambda: dict(sensitivity=1, epsilon=2.42, bound_valid=False, sigma_for_1=4.845),
    "ch7-predict": _predict_right,
    "ch7-soteria": _soteria_right,
    "ch8-rank-one-by-hand": lambda: dict(hand_gb=[0.5, -0.05], hand_GW=[[0.25, 0.4], [-0.025, -0.04]],
                                         hand_rows=[[0.5, 0.8], [0.5, 0.8]], rank_after_10=1),
    "ch8-wrong-settings": lambda: dict(batch_wrong_lr=80, image_changes=dict(wrong_lr=False, swapped=False),
                                       labels_right_swapped=False),
    "ch8-dp-audit": _dp_right,
    "ch9-by-hand": lambda: dict(grad_b=np.array([-0.4, 0.1, 0]) / 3,
                                grad_W=np.array([[-0.6, 0.1], [-0.1, 0.1], [0, 0]]) / 3,
                                alone={0}, bin0=[1, 0], bin1=[-1, 1]),
    "ch9-choose-bins": lambda: dict(k90=599, fraction_k90=0.9, fraction_half=0.81),
    "ch9-evade": _evade_right,
}


def _silu_pair():
    """Two SiLU pre-activations with one output, by bisection on the right branch."""
    left = torch.tensor(-3.0, dtype=torch.float64)
    target = nn.functional.silu(left)
    lo, hi = torch.tensor(-1.278, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if nn.functional.silu(mid) < target else (lo, mid)
    return [float(left), float((lo + hi) / 2)]


#: label -> (answer to change, a wrong value): one typical mistake per exercise.
WRONG = {
    "ch1-by-hand": ("row_images", [[0.25, 0.5, 0, 1], [-0.25, -0.5, 0, -1]]),
    "ch1-labels-without-bias": ("digit0", lambda r: 0.5 * torch.as_tensor(r["digit0"])),
    "ch1-defences": ("stops", dict(clipping=True, noise=True, secure_aggregation=False, batch_of_32=False)),
    "ch2-by-hand": ("elu_O", -0.5),
    "ch2-silu": ("O_pair", [-3.0, -0.5]),
    "ch2-defence": ("relu", dict(colleague_right=True, gradient_passes_exactly=False,
                                 loses_forward_equations=True)),
    "ch3-count": ("counts", [[3072, 3072, 300], [3072, 768, 3600], [768, 768, 3600]]),
    "ch3-relu-filters": ("filters_relu", 3),
    "ch3-stride-kernel": ("by_rank", 9),
    "ch3-defence": ("layer", nn.Conv2d(3, 64, 3, padding=1)),
    "ch4-by-hand": ("smallest_ratio_class", 0),
    "ch4-peel": ("batch_size_read", 25),
    "ch4-estimate": ("p_threshold", 0.1),
    "ch5-al": ("a_min", [2, 1, 0]),
    "ch5-baseline": ("misclassified", 100 / 12),
    "ch5-defence": ("rounding_defends", True),
    "ch6-kink": ("units", [[1, -1, 2], [1, -3, -1]]),
    "ch6-queries": ("predicted", 2 * N * 784),
    "ch6-defence": ("rounding", dict(stops_exact_extraction=False, stops_metamodel=False)),
    "ch7-epsilon-by-hand": ("epsilon", 1.21),
    "ch7-predict": ("sigma20", lambda r: 10 * r["sigma20"]),
    "ch7-soteria": ("withheld", lambda r: ~torch.as_tensor(r["withheld"])),
    "ch8-rank-one-by-hand": ("hand_gb", [0.3, -0.1]),
    "ch8-wrong-settings": ("batch_wrong_lr", 8),
    "ch8-dp-audit": ("holds", 0.1),
    "ch9-by-hand": ("bin1", [0, 1]),
    "ch9-choose-bins": ("k90", 600),
    "ch9-evade": ("honest_cos", 0.5),
}

_cache: dict = {}


def right(label: str) -> dict:
    if label not in _cache:
        _cache[label] = RIGHT[label]()
    return dict(_cache[label])


def _strings(value) -> set[str]:
    """How an answer could appear in a message: each distinctive number, formatted."""
    if isinstance(value, dict):
        out = set()
        for v in value.values():
            out |= _strings(v)
        return out
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (set, nn.Module)):
        return set()
    arr = np.asarray(torch.as_tensor(value).detach() if not isinstance(value, np.ndarray) else value,
                     dtype=np.float64).reshape(-1)
    if arr.size > 16:
        return set()
    found = set()
    for v in arr:
        for text in (f"{v:g}", f"{v:.2f}", f"{v:.3f}", f"{v:.4g}", repr(float(v))):
            text = text.lstrip("-")
            # short numbers (0, 1, 2, 0.5) also name rows, classes and formulas in hints
            if len(text.replace(".", "").strip("0")) >= 3:
                found.add(text)
    return found


def test_every_exercise_of_the_book_is_checked():
    found = {}
    for path in student.chapters():
        text = "".join(c.source for c in nbformat.read(path, as_version=4).cells)
        for label in re.findall(r":label: (ch\d-[a-z0-9-]+)", text):
            found[label] = path.stem
    assert sorted(found) == sorted(exercises.labels()), "every exercise has a check, every check an exercise"
    assert len(found) == 28
    assert set(RIGHT) == set(WRONG) == set(exercises.labels())


@pytest.mark.parametrize("stem", CHAPTERS)
def test_book_and_notebook_share_one_numbering(stem):
    """``Exercise 1.2`` in the bold words of the text, the same as the check; no global number."""
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for label in chapter_labels(stem):
        fence = re.search(r"```\{exercise-start\}\n:label: " + label + r"\n((?::[^\n]*\n)*)```", text)
        assert fence and ":nonumber:" in fence.group(1), f"{label}: add :nonumber: to its exercise-start"
        after = text[fence.end():]
        number = exercises.get(label).number
        assert re.match(r"\s*\*\*Exercise " + re.escape(number) + r" \(", after), f"{label} is not Exercise {number}"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_solution_ends_with_its_check(stem):
    parts = student.parse(nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4))
    found = [p for p in parts if isinstance(p, student.Exercise)]
    assert [e.label for e in found] == chapter_labels(stem)
    for ex in found:
        last = [c for c in ex.solution if c.cell_type == "code"][-1]
        assert re.search(r'exercises\.check\(\s*"' + re.escape(ex.label) + '"', last.source), ex.label
        student.marked_check_cell(ex.label, last.source)  # answers assigned, one per line or block


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("label", sorted(RIGHT))
def test_the_right_answer_passes(label):
    assert exercises.check(label, **right(label)) == f"Exercise {exercises.get(label).number} ({label}): right."


@pytest.mark.parametrize("label", sorted(WRONG))
def test_a_wrong_answer_fails_with_a_hint_without_the_answer(label):
    answers = right(label)
    name, bad = WRONG[label]
    answers[name] = bad(answers) if isinstance(bad, FunctionType) else bad
    with pytest.raises(WrongAnswer) as err:
        exercises.check(label, **answers)
    message = str(err.value)
    assert not isinstance(err.value, NotAnswered)
    assert f"`{name}" in message and len(message) > 30, message
    leaked = [s for s in _strings(right(label)[name]) if s in message]
    assert not leaked, f"{label}: the hint gives away {leaked}: {message}"
    assert "True" not in message and "False" not in message, message


@pytest.mark.parametrize("label", sorted(RIGHT))
@pytest.mark.parametrize("missing", [Ellipsis, None])
def test_a_missing_answer_is_not_answered_yet(label, missing):
    answers = right(label)
    name = exercises.get(label).answers[-1]
    answers[name] = missing
    with pytest.raises(NotAnswered, match=re.escape(f"not answered yet: set `{name}`")):
        exercises.check(label, **answers)
    del answers[name]
    with pytest.raises(NotAnswered, match=re.escape(f"not answered yet: set `{name}`")):
        exercises.check(label, **answers)


def test_checks_refuse_a_malformed_answer_with_a_hint():
    with pytest.raises(WrongAnswer, match=r"`x_hat` should be 4 pixels"):
        exercises.check("ch1-by-hand", **{**right("ch1-by-hand"), "x_hat": [1, 2, 3]})
    with pytest.raises(WrongAnswer, match=r"`stops` should have exactly the keys"):
        exercises.check("ch1-defences", stops={"clipping": False})
    with pytest.raises(WrongAnswer, match=r"should be True or False"):
        exercises.check("ch5-al", **{**right("ch5-al"), "gd_finds_min_norm": "yes"})
    with pytest.raises(NotAnswered, match="run the chapter's cells"):
        exercises.check("ch5-baseline", **{**right("ch5-baseline"), "o_t": None})


def test_check_refuses_unknown_labels_and_names():
    with pytest.raises(ValueError, match="unknown exercise label"):
        exercises.check("ch1-nope", x=1)
    with pytest.raises(TypeError, match="exercise label string"):
        exercises.check(1)
    with pytest.raises(TypeError, match="unexpected"):
        exercises.check("ch1-by-hand", **right("ch1-by-hand"), x_hta=1)


def test_a_check_leaves_the_kernels_random_state_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    exercises.check("ch4-peel", **right("ch4-peel"))
    assert torch.equal(torch.rand(3), before)


@settings(max_examples=60, deadline=None)
@given(pixel=st.integers(0, 3), delta=st.floats(1e-5, 10) | st.floats(-10, -1e-5))
def test_property_x_hat_off_by_more_than_the_tolerance_fails_without_the_answer(pixel, delta):
    x = np.array([0.25, 0.5, 0.0, 1.0])
    x[pixel] += delta
    with pytest.raises(WrongAnswer) as err:
        exercises.check("ch1-by-hand", **{**right("ch1-by-hand"), "x_hat": x})
    assert "0.25" not in str(err.value) and "x_hat" in str(err.value)


@settings(max_examples=60, deadline=None)
@given(delta=st.floats(-1e-7, 1e-7))
def test_property_x_hat_within_the_tolerance_passes(delta):
    exercises.check("ch1-by-hand", **{**right("ch1-by-hand"), "x_hat": np.array([0.25, 0.5, 0, 1]) + delta})


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 10**6).filter(lambda k: k != 599))
def test_property_any_other_bin_count_fails_with_the_same_hint(k):
    with pytest.raises(WrongAnswer) as err:
        exercises.check("ch9-choose-bins", **{**right("ch9-choose-bins"), "k90": k})
    assert "599" not in str(err.value) and "598" not in str(err.value)


@settings(max_examples=60, deadline=None)
@given(eps=st.floats(0.01, 100).filter(lambda e: abs(e / 2.4225 - 1) > 0.01))
def test_property_a_wrong_epsilon_fails_without_the_answer(eps):
    with pytest.raises(WrongAnswer) as err:
        exercises.check("ch7-epsilon-by-hand", **{**right("ch7-epsilon-by-hand"), "epsilon": eps})
    assert "2.42" not in str(err.value)


# --------------------------------------------------------------------------- the student edition


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    """``tools/student.py`` (what ``make student`` runs) into a temporary build folder."""
    out = tmp_path_factory.mktemp("classroom")
    assert student.main(["--out", str(out)]) == 0
    return out


def _student_nb(kit, stem):
    return nbformat.read(kit / "student" / stem / f"{stem}.ipynb", as_version=4)


def test_make_student_runs_the_tool():
    assert "tools/student.py" in (ROOT / "Makefile").read_text().split("\nstudent:")[1].split("\n\n")[0]


@pytest.mark.parametrize("stem", CHAPTERS)
def test_student_edition_has_no_solution_left(kit, stem):
    nb = _student_nb(kit, stem)
    text = "\n".join(c.source for c in nb.cells)
    for fence in ("solution-start", "solution-end", "exercise-start", "exercise-end", "BEGIN SOLUTION",
                  "END SOLUTION", "# SOLUTION", "BEGIN QUESTION"):
        assert fence not in text, f"{stem}: {fence!r} left in the student edition"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "exercises.check(" not in code, "the book's checks are the student's grader.check"
    book = student.parse(nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4))
    # what the book shows outside the solutions (a solution may repeat a line of the chapter)
    shown = "\n".join(p.source for p in book if not isinstance(p, student.Exercise))
    shown += "\n".join(t for p in book if isinstance(p, student.Exercise) for t in p.text)
    for ex in (p for p in book if isinstance(p, student.Exercise)):
        for cell in ex.solution:
            # every line of the solution's prose, and every line of its code but the comments
            lines = [ln.strip() for ln in cell.source.split("\n")]
            lines = [ln for ln in lines if len(ln) > 25 and not ln.startswith("#") and ln not in shown]
            leaked = [ln for ln in lines if ln in text]
            assert not leaked, f"{stem}, {ex.label}: solution text left: {leaked[:2]}"
        stub = [c.source for c in nb.cells if c.source.startswith("# the answers to Exercise")]
        assert any(all(f"{n} = ..." in s for n in exercises.get(ex.label).answers) for s in stub), ex.label
        assert f'grader.check("{ex.label}")' in text


@pytest.mark.parametrize("stem", CHAPTERS)
def test_student_edition_keeps_the_setup_cell_and_clears_outputs(kit, stem):
    nb = _student_nb(kit, stem)
    first = nb.cells[0]
    book = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4).cells[0]
    assert first.cell_type == "code" and notebook_setup.TAG in first.metadata.get("tags", [])
    assert first.metadata.get("tags") == book.metadata.get("tags")
    # the book's set-up cell, which also installs otter-grader (leakutils[...,classroom])
    assert first.source == student.with_extras(book.source, ("classroom",)) != book.source
    assert re.search(r"leakutils\[[^\]]*classroom\]", first.source)
    assert f'grader = otter.Notebook("{stem}.ipynb")' in nb.cells[1].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["otter"]["assignment_name"] == stem


@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_checked_exercise_has_its_test_beside_the_notebook(kit, stem):
    tests = {p.stem for p in (kit / "student" / stem / "tests").glob("*.py")}
    assert tests == set(chapter_labels(stem))
    for label in tests:
        source = (kit / "student" / stem / "tests" / f"{label}.py").read_text()
        assert "exercises.check(" in source and f"name = \"{label}\"" in source
    assert student.autograder_zip(stem, kit).is_file()
    with zipfile.ZipFile(student.autograder_zip(stem, kit)) as zf:
        assert {f"tests/{lab}.py" for lab in tests} <= set(zf.namelist())


def test_student_zip_holds_every_chapter(kit):
    with zipfile.ZipFile(kit / "student.zip") as zf:
        names = set(zf.namelist())
    for stem in CHAPTERS:
        assert f"{stem}/{stem}.ipynb" in names
        assert {f"{stem}/tests/{lab}.py" for lab in chapter_labels(stem)} <= names


def test_the_check_cell_may_only_assign_answers():
    with pytest.raises(ValueError, match="neither an answer assignment nor the check"):
        student.marked_check_cell("ch1-by-hand", "x_hat = x\ny = 2\nexercises.check(\"ch1-by-hand\")")
    marked = student.marked_check_cell(
        "ch1-defences", 'stops = {\n    "clipping": False,\n}\nexercises.check("ch1-defences", stops=stops)')
    assert marked.startswith("stops = ...\n# BEGIN SOLUTION NO PROMPT") and "# BEGIN IGNORE" in marked


# --------------------------------------------------------------------------- grading, end to end


def test_grading_chapter_1_full_marks_for_the_solutions_zero_for_the_stubs(kit, tmp_path):
    """``make grade`` on two submissions of Chapter 1: the teacher's and an untouched one."""
    subs = tmp_path / "submissions"
    (subs / "teacher").mkdir(parents=True)
    (subs / "student").mkdir()
    stem = "01_bias_ratio"
    shutil.copy(kit / "autograder" / stem / f"{stem}.ipynb", subs / "teacher" / f"{stem}.ipynb")
    shutil.copy(kit / "student" / stem / f"{stem}.ipynb", subs / "student" / "my-work.ipynb")
    out = tmp_path / "grades.csv"
    assert grade.main([str(subs), "--out", str(out), "--build", str(kit), "--timeout", "600"]) == 0
    rows = {Path(r["submission"]).parent.name: r for r in csv.DictReader(out.open())}
    labels = chapter_labels(stem)
    teacher, untouched = rows["teacher"], rows["student"]
    assert teacher["error"] == "" and untouched["error"] == "", (teacher["error"], untouched["error"])
    assert teacher["chapter"] == untouched["chapter"] == stem
    assert float(teacher["score"]) == float(teacher["possible"]) == len(labels)
    assert all(float(teacher[lab]) == 1 for lab in labels)
    assert float(untouched["score"]) == 0 and float(untouched["possible"]) == len(labels)
    assert all(float(untouched[lab]) == 0 for lab in labels)
    results = (tmp_path / "grading" / "student__my-work.ipynb.json").read_text()
    assert results.count("not answered yet") >= len(labels)
