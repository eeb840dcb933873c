"""The Colab path, tested without Colab and without GitHub.

Chapter 1's own set-up cell (the first cell of ``notebooks/01_bias_ratio.ipynb``, checked to
be the one ``tools/notebook_setup.py`` generates) runs its Colab branch in a fresh virtual
environment that holds only what Colab preinstalls and this course relies on: torch,
torchvision, numpy, matplotlib, ipywidgets and ipykernel, with their dependencies. Only the
package URL changes: ``git+file://`` of a clean clone of this checkout (HEAD plus the
working tree's changes, committed and tagged with the release tag), so pip clones, builds
and installs ``leakutils[data,online,widgets]`` exactly as on Colab, and fetches the rest
(scipy, scikit-image, mlxtend, ...) from PyPI. Then Chapter 1 runs in that environment's
kernel, and ``leakutils`` must come from the fresh environment, not from this checkout.

The preinstalled packages are not downloaded (torch is over 2 GB): every file of their
distributions (from their RECORD, ``.dist-info`` included) is symlinked from this
environment's site-packages, so pip sees them installed and leaves them alone.

Needs git, network access to PyPI (or a mirror set with PIP_INDEX_URL) and the packages
above in the running environment (``make install``); it fails, never skips, without them.
About 2-4 minutes on 2 cores (pip's cache makes later runs faster); ``pytest -s`` shows the
time of each step.
"""
from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools import notebook_setup

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_bias_ratio.ipynb"
#: What a Colab runtime brings that matters here (pip runs the cell's install).
PREINSTALLED = ("torch", "torchvision", "numpy", "matplotlib", "ipywidgets", "ipykernel", "pip")
#: Seconds per cell (the set-up cell downloads and installs the rest from PyPI).
CELL_TIMEOUT = 900
FAKE_COLAB = 'import sys, types\n\nsys.modules["google.colab"] = types.ModuleType("google.colab")'
REPORT = (
    "import json, sys\n\nimport leakutils, torch\n\n"
    'print(json.dumps({"leakutils": leakutils.__file__, "torch": torch.__file__, '
    '"python": sys.executable}))'
)


def _step(name: str, start: float) -> None:
    print(f"[colab path] {name}: {time.perf_counter() - start:.1f} s", flush=True)


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if res.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


# --------------------------------------------------------------------------- the clone


def _git(*args, cwd: Path) -> str:
    quiet = ["-c", "user.name=colab-path test", "-c", "user.email=test@localhost",
             "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "core.hooksPath=/dev/null",
             "-c", "safe.directory=*"]
    return _run(["git", *quiet, *args], cwd=cwd).stdout


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> str:
    """``git+file://<clone>@<release tag>``: HEAD plus the working tree, committed and tagged."""
    if shutil.which("git") is None:
        pytest.fail("the Colab path test needs git (Debian: apt-get install git)")
    start = time.perf_counter()
    clone = tmp_path_factory.mktemp("release") / "repository"
    _git("clone", "--quiet", "--no-local", str(ROOT), str(clone), cwd=ROOT)
    # the working tree as it is: tracked and untracked files that git does not ignore
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        src, dst = ROOT / name, clone / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.is_file():
            dst.unlink()  # deleted in the working tree, not yet in a commit
    _git("add", "--all", cwd=clone)
    _git("commit", "--quiet", "--allow-empty", "--no-verify", "-m", "the working tree", cwd=clone)
    tag = notebook_setup.release_tag()
    _git("tag", "--force", tag, cwd=clone)
    _step(f"clone of the checkout, tagged {tag}", start)
    return f"git+{clone.as_uri()}@{tag}"


# --------------------------------------------------------------------------- the environment


def _closure(names) -> dict[str, metadata.Distribution]:
    """The installed distributions ``names`` need, themselves included, by canonical name."""
    found: dict[str, metadata.Distribution] = {}
    # (name, one extra or "" for the base requirements); extras pull in their own requirements
    todo, seen = [(name, "") for name in names], set()
    while todo:
        name, extra = todo.pop()
        key = canonicalize_name(name)
        if (key, extra) in seen:
            continue
        seen.add((key, extra))
        try:
            dist = found.get(key) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed in {sys.prefix}, yet the Colab path test takes it "
                        "from there (make install)")
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if not req.marker or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, e) for e in ("", *sorted(req.extras))]
    return found


def _link(dists, site: Path) -> int:
    """Symlink every file of ``dists`` into ``site`` (directories real); return the count."""
    count = 0
    for dist in dists:
        if dist.files is None:
            pytest.fail(f"{dist.metadata['Name']} has no RECORD; cannot tell which files are its own")
        for file in dist.files:
            if file.is_absolute() or file.parts[0] == "..":
                continue  # scripts in bin/: the cell runs pip as `python -m pip`
            src = Path(dist.locate_file(file))
            if not src.is_file():
                continue
            dst = site / file
            if dst.is_symlink() or dst.exists():
                continue  # a file two distributions share (a namespace's __init__.py)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
            count += 1
    return count


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A fresh virtual environment holding only the preinstalled packages, and its kernel."""
    start = time.perf_counter()
    dists = _closure(PREINSTALLED)
    assert "leakutils" not in dists
    venv = tmp_path_factory.mktemp("colab") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    assert site.is_dir() and not any(site.iterdir()), f"{site} is not empty"
    files = _link(dists.values(), site)
    _step(f"fresh environment: {len(dists)} distributions, {files} files linked", start)
    kernels = venv.parent / "kernels" / "colab"
    kernels.mkdir(parents=True)
    spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Colab (fresh venv)", "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps(spec))
    # the kernel's environment: nothing of this checkout or of .venv on its paths
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MPLBACKEND", "PYTHONSTARTUP"}}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               VIRTUAL_ENV=str(venv))
    work = venv.parent / "content"  # Colab's working directory, empty
    work.mkdir()
    yield {"python": python, "site": site, "dists": dists, "kernels": kernels.parent,
           "env": env, "work": work}
    # pip put some 300 MB there; the links only point into this environment
    shutil.rmtree(venv.parent, ignore_errors=True)


def _cell_seconds(cell) -> float:
    """How long the kernel took over ``cell`` (nbclient records it), 0 where not recorded."""
    from datetime import datetime

    times = cell.metadata.get("execution", {})
    try:
        begin, end = (datetime.fromisoformat(times[k].rstrip("Z"))
                      for k in ("iopub.execute_input", "shell.execute_reply"))
    except (KeyError, ValueError):
        return 0.0
    return (end - begin).total_seconds()


def _tmp(text: str) -> str:
    """``text`` with pip's temporary directories (a new name every run) replaced by ``<tmp>``."""
    return re.sub(r"/\S*pip-[\w-]+/\S*", "<tmp>", text)


def _setup_cell(source: str) -> str:
    """Chapter 1's set-up cell, installing from ``source`` instead of the release on GitHub."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = nb.cells[0]
    assert cell.cell_type == "code" and notebook_setup.TAG in cell.metadata.get("tags", [])
    assert cell.source == notebook_setup.colab_cell_source(), (
        f"{NOTEBOOK.name}'s set-up cell is not the generated one: run python tools/notebook_setup.py")
    local = cell.source.replace(notebook_setup.package_url(), source)
    assert local != cell.source and local == notebook_setup.colab_cell_source(source)
    return local


# --------------------------------------------------------------------------- the tests


def test_a_setup_cell_that_pip_cannot_install_from_says_what_pip_said(colab, tmp_path):
    missing = f"git+{(tmp_path / 'no-such-repository').as_uri()}@{notebook_setup.release_tag()}"
    cell = _setup_cell(missing)
    start = time.perf_counter()
    res = subprocess.run([colab["python"], "-c", FAKE_COLAB + "\n" + cell], capture_output=True,
                         text=True, env=colab["env"], cwd=colab["work"], timeout=300)
    _step("failing set-up cell", start)
    assert res.returncode != 0, "the set-up cell ran without error against a missing repository"
    assert "CalledProcessError" not in res.stderr
    # pip's own message, as pip itself gives it for the same requirement
    pip = subprocess.run([colab["python"], "-m", "pip", "install", "--quiet",
                          notebook_setup.requirement(missing)],
                         capture_output=True, text=True, env=colab["env"], cwd=colab["work"])
    said = [_tmp(ln.strip()) for ln in pip.stderr.splitlines()
            if ln.strip().startswith(("ERROR", "fatal", "error"))]
    assert pip.returncode != 0 and said, pip.stderr
    assert f"RuntimeError: pip could not install {notebook_setup.requirement(missing)}:" in res.stderr
    assert all(line in _tmp(res.stderr) for line in said), (said, res.stderr)
    # git's own words about the missing repository reach the reader
    assert "does not appear to be a git repository" in res.stderr, res.stderr
    assert "Is the repository public and the tag pushed?" in res.stderr


def test_chapter_1_runs_after_its_setup_cell_in_a_fresh_environment(colab, release):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup = _setup_cell(release)
    nb.cells[0].source = setup
    nb.cells.insert(0, nbformat.v4.new_code_cell(FAKE_COLAB))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    km = AsyncKernelManager(kernel_name="colab",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(colab["kernels"])]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(colab["work"])}})
    start = time.perf_counter()
    client.execute(env=colab["env"])
    _step("kernel start, set-up cell and Chapter 1", start)
    seconds = [_cell_seconds(cell) for cell in nb.cells]
    print(f"[colab path] the set-up cell (pip install): {seconds[1]:.1f} s; the chapter's "
          f"{len(nb.cells) - 3} cells: {sum(seconds[2:-1]):.1f} s", flush=True)

    # the set-up cell shows nothing when pip succeeds
    assert not [o for o in nb.cells[1].outputs if o.get("name") == "stderr" or o.output_type == "error"], \
        nb.cells[1].outputs
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    where = json.loads(text.strip().splitlines()[-1])
    site = colab["site"]
    assert Path(where["python"]) == colab["python"]
    # leakutils installed by pip into the fresh environment, not this checkout
    leakutils = Path(where["leakutils"])
    assert leakutils.parent == site / "leakutils", where
    assert not leakutils.is_symlink() and ROOT not in leakutils.resolve().parents, where
    # torch is the preinstalled one, still a link: pip downloaded no torch
    assert Path(where["torch"]).parent == site / "torch" and Path(where["torch"]).is_symlink()
    for dist in colab["dists"].values():
        (record,) = [f for f in dist.files if f.name == "RECORD" and len(f.parts) == 2
                     and f.parts[0].endswith(".dist-info")]
        assert (site / record).is_symlink(), f"pip replaced the preinstalled {dist.metadata['Name']}"
    installed = _run([colab["python"], "-m", "pip", "list", "--format=json"], env=colab["env"])
    names = {canonicalize_name(p["name"]) for p in json.loads(installed.stdout)}
    assert {"leakutils", "scipy", "scikit-image", "mlxtend", "medmnist"} <= names
