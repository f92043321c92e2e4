# On a fresh machine (Python 3.11, root, nothing else installed):
#   make run    - the main job
#   make test   - the whole test suite
#   make docs   - the API reference from the docstrings (build/docs/index.html), warnings as errors
# Each creates .venv, installs gfortran where missing (escnn's py3nj builds with it), torch 2.13.0
# (CPU build, before anything that could pull a CUDA build) and the package with its test extras.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-installed-stamp

.PHONY: install run test docs bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@command -v gfortran >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq gfortran; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,export]"
	touch $(STAMP)

run: $(STAMP)
	bash scripts/main_job.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

# -E: a fresh environment every time, so that every docstring is read and checked again.
docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -E -W --keep-going -q -b html docs/api build/docs

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) *.egg-info
