# Two commands: `make book` builds the HTML book, `make test` builds it and runs every test.
# Both create the virtual environment .venv on first use (Python >= 3.10; python3 by default).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: all install book test unit notebooks structure format benchmark student grade clean

all: book

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Execute every notebook and write _build/html; any Sphinx warning fails the build.
book: $(STAMP)
	$(BIN)/jupyter-book build . --all -W --keep-going

# The book as readers see it, then every test (about 15-20 minutes on 2 cores):
# 1. `make book`: executes every notebook (a failing cell fails the build) and builds the HTML
#    with Sphinx warnings as errors (cross-references, citations, glossary, glue keys);
# 2. pytest over tests/: unit tests, the tests of the executed notebooks and of the built
#    HTML (marker `book`), among them the offline browser test (tests/test_browser.py).
test: book
	$(BIN)/python -m pytest -p no:cacheprovider --durations=15 tests

# Tests that need no built book (marker `book` deselected), about 7 minutes; among them
# tests/test_colab_path.py, which needs git and PyPI.
unit: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests -m "not book"

# nbval over every notebook: each cell executed and its output compared (lax).
notebooks: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=300

# The book's structure without executing the notebooks (a quick check while writing prose).
structure: $(STAMP)
	$(BIN)/python tools/check_book.py

# Format the notebooks at the book's width (comments above code, black at 90 characters);
# the Colab set-up cell and the README's Colab badges follow _config.yml and the version.
format: $(STAMP)
	$(BIN)/python tools/notebook_setup.py
	$(BIN)/python tools/readme_badges.py
	$(BIN)/python tools/format_notebooks.py

# The classroom kit with otter-grader: the student edition (_build/student/<chapter>/, the
# notebook without solutions and its tests/ for grader.check), the autograder
# (_build/autograder/<chapter>/) and _build/student.zip for a learning platform.
student: $(STAMP)
	$(BIN)/python tools/student.py

# Grade a folder of submitted notebooks locally (otter run, no Docker) into _build/grades.csv;
# needs `make student` first (the autograder of each chapter).
grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=folder-of-notebooks"; exit 2; }
	$(BIN)/python tools/grade.py "$(SUBMISSIONS)"

benchmark: $(STAMP)
	$(BIN)/python benchmarks/bias_ratio.py

clean:
	rm -rf _build
