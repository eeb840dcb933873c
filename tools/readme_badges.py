"""Keep the README's "Open in Colab" badges derived from ``_config.yml`` and the version.

Each chapter row of the README's table links ``notebooks/<file>.ipynb`` and carries a badge
whose address is ``notebook_setup.colab_url(<file>)``: the repository in ``repository.url``,
at the release tag ``v<version>`` (the release the notebook's set-up cell installs). The
README's other mentions of the release follow too: ``git+<url>@v<version>`` in its pip
lines and ``git tag v<version> && git push origin v<version>``.

    python tools/readme_badges.py          # rewrite every Colab address in README.md
    python tools/readme_badges.py --check  # exit 1 if a badge is missing or out of date
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import notebook_setup  # noqa: E402

README = ROOT / "README.md"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
#: Any Colab address of a notebook of this course, whatever its repository or ref.
COLAB = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]*?/notebooks/([\w.-]+\.ipynb)")
#: A pip source of a release on GitHub, and the commands that push a release tag.
GIT_URL = re.compile(r"git\+https://github\.com/[^\s\"'@]+@v\d[\w.]*")
TAG_PUSH = re.compile(r"git tag v\d[\w.]* && git push origin v\d[\w.]*")


def _releases():
    """(pattern, what it must read) for every mention of the release other than the badges."""
    tag = notebook_setup.release_tag()
    return [(GIT_URL, notebook_setup.package_url()), (TAG_PUSH, f"git tag {tag} && git push origin {tag}")]


def badge(notebook: str) -> str:
    """The Markdown of the badge that opens ``notebooks/<notebook>`` in Colab."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({notebook_setup.colab_url(notebook)})"


def problems(text: str) -> list[str]:
    """What is wrong with the badges in the README ``text`` (empty: nothing)."""
    out = []
    for path in notebook_setup.notebooks():
        rows = [ln for ln in text.splitlines() if f"](notebooks/{path.name})" in ln]
        if not rows:
            out.append(f"{path.name}: no row of the chapter table links it")
        elif not any(badge(path.name) in row for row in rows):
            out.append(f"{path.name}: its row lacks the badge {badge(path.name)}")
    for match in COLAB.finditer(text):
        want = notebook_setup.colab_url(match.group(1))
        if match.group(0) != want:
            out.append(f"{match.group(0)} should be {want}")
    for pattern, want in _releases():
        out += [f"{m.group(0)} should be {want}" for m in pattern.finditer(text) if m.group(0) != want]
    return out


def rewrite(text: str) -> str:
    """``text`` with every Colab notebook address derived anew from the configuration."""
    text = COLAB.sub(lambda m: notebook_setup.colab_url(m.group(1)), text)
    for pattern, want in _releases():
        text = pattern.sub(want, text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, change nothing")
    args = parser.parse_args(argv)
    text = README.read_text()
    if not args.check:
        new = rewrite(text)
        if new != text:
            README.write_text(new)
        text = new
    found = problems(text)
    if found:
        print("README.md's Colab badges:", *found, "run: python tools/readme_badges.py "
              "(a chapter row without a badge needs one added by hand)", sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
