# `make demo` and `make test` each set up .venv on a fresh clone (pip install -e ".[dev]"),
# then run the offline demo or the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/icm demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

docs: $(STAMP)  # the site in site/, offline (executed notebooks: scripts/execute_notebooks.py)
	$(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) demo_out .pytest_cache site
