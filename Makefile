# Two commands: `make book` builds the HTML book, `make test` runs the tests.
# Both create the virtual environment .venv on first use (Python >= 3.10; python3 by default).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: all install book test unit notebooks structure format benchmark clean

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

# Unit tests of leakutils and nbval over every notebook, then the book's structure.
test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=300
	$(BIN)/python tools/check_book.py

unit: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests

notebooks: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=300

structure: $(STAMP)
	$(BIN)/python tools/check_book.py

# Format the notebooks at the book's width (comments above code, black at 90 characters).
format: $(STAMP)
	$(BIN)/python tools/notebook_setup.py
	$(BIN)/python tools/format_notebooks.py

benchmark: $(STAMP)
	$(BIN)/python benchmarks/bias_ratio.py

clean:
	rm -rf _build
